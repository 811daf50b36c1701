"""Tests of the fitting engine's building blocks: interaction pairs, dense buckets, the sparse
solver for large groups, and sparse-vs-dense agreement inside ``fit_psf``."""

import numpy as np
import pytest

from crowdphot.core.batched import stamp_origin
from crowdphot.core.fit import fit_psf
from crowdphot.core.fit.dense import bucket_of, inverse_dense, inverse_spd, solve_dense
from crowdphot.core.fit.pairs import build_interactions, segment_products
from crowdphot.core.fit.slabs import inverse_diag_blocks_slabs, slab_index
from crowdphot.core.fit.solve import inverse_groups, make_layout, scale_blocks
from crowdphot.core.fit.sparse import (
    assemble_sparse,
    inverse_diag_blocks_sparse,
    solve_pcg,
    solve_sparse,
)
from crowdphot.models.analytic import CircularGaussianPRF


def random_block_system(rng, sizes):
    """Block-diagonal SPD matrix over groups of the given sizes, as 3x3 blocks."""
    blocks, r1, r2, dense = [], [], [], []
    off = 0
    for k in sizes:
        a = rng.normal(size=(3 * k, 3 * k + 5))
        m = a @ a.T + 0.1 * np.eye(3 * k)
        dense.append(m)
        for i in range(k):
            for j in range(k):
                blocks.append(m[3 * i:3 * i + 3, 3 * j:3 * j + 3])
                r1.append(off + i)
                r2.append(off + j)
        off += k
    from scipy.linalg import block_diag

    return np.array(blocks), np.array(r1), np.array(r2), block_diag(*dense)


def test_segment_products_brute_force():
    starts, counts = np.array([0, 3, 4]), np.array([3, 1, 2])
    i, j = segment_products(starts, counts)
    ref = [(s + a, s + b) for s, c in zip(starts, counts, strict=True)
           for a in range(c) for b in range(c)]
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == ref


def test_kdtree_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    n = 400
    x = rng.uniform(0, 200, n)
    y = rng.uniform(0, 200, n)
    group = np.sort(rng.integers(0, 40, n))
    xlo, ylo = stamp_origin(x, y, (5, 7))
    it = build_interactions(x, y, xlo, ylo, group, (5, 7), support_shape=(9, 11), margin=1.0)
    cx, cy = xlo + 3.0, ylo + 2.0
    s, t = np.meshgrid(np.arange(n), np.arange(n))
    s, t = s.ravel(), t.ravel()
    keep = ((group[s] == group[t]) & (np.abs(x[s] - cx[t]) <= 3.5 + 5.5 + 1.0)
            & (np.abs(y[s] - cy[t]) <= 2.5 + 4.5 + 1.0))
    ref = sorted(zip(t[keep].tolist(), s[keep].tolist(), strict=True))
    assert sorted(zip(it.pt.tolist(), it.ps.tolist(), strict=True)) == ref
    assert np.all(np.diff(it.pt) >= 0)
    # every block is reached by at least one triple, and the diagonal blocks are (s, s)
    assert set(np.unique(it.tb).tolist()) == set(range(len(it.bs1)))
    np.testing.assert_array_equal(it.bs1[it.diag_block], np.arange(n))
    np.testing.assert_array_equal(it.bs2[it.diag_block], np.arange(n))


def test_bucket_of():
    np.testing.assert_array_equal(bucket_of(np.array([1, 2, 5, 17, 64, 65]), 64),
                                  [1, 2, 6, 24, 64, 0])


def test_solve_dense_singular_fallback_and_nan():
    mats = np.array([np.diag([2.0, 4.0]), np.diag([1.0, 0.0]), np.full((2, 2), np.nan)])
    rhs = np.array([[2.0, 4.0], [3.0, 0.0], [1.0, 1.0]])
    z = solve_dense(mats, rhs)
    np.testing.assert_allclose(z[:2], [[1.0, 1.0], [3.0, 0.0]])
    assert np.isnan(z[2]).all()


def test_inverse_dense_flags_singular():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    good = a @ a.T + np.eye(6)
    sing = np.outer(a[0], a[0])
    inv, ok = inverse_dense(np.array([good, sing]))
    np.testing.assert_allclose(inv[0], np.linalg.inv(good), rtol=1e-10)
    assert ok.tolist() == [True, False]


def test_inverse_spd_matches_numpy_and_flags_singular():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(40, 50))
    m = a @ a.T
    inv, ok = inverse_spd(m)
    assert ok
    np.testing.assert_allclose(inv, np.linalg.inv(m), rtol=1e-8)
    _, ok = inverse_spd(np.outer(a[0], a[0]))
    assert not ok
    _, ok = inverse_spd(np.full((3, 3), np.nan))
    assert not ok


def test_solve_sparse_matches_dense():
    rng = np.random.default_rng(2)
    blocks, r1, r2, dense = random_block_system(rng, [1, 4, 2, 7])
    mat = assemble_sparse(blocks, r1, r2, 14)
    np.testing.assert_allclose(mat.toarray(), dense)
    rhs = rng.normal(size=(14, 3))
    np.testing.assert_allclose(solve_sparse(mat, rhs).ravel(),
                               np.linalg.solve(dense, rhs.ravel()), rtol=1e-9)
    singular = assemble_sparse(np.zeros((1, 3, 3)), np.array([0]), np.array([0]), 1)
    assert np.isnan(solve_sparse(singular, np.ones((1, 3)))).all()


@pytest.mark.parametrize("chunk", [3, 256])
def test_inverse_diag_blocks_sparse(chunk):
    rng = np.random.default_rng(3)
    sizes = [3, 1, 5, 2]
    blocks, r1, r2, dense = random_block_system(rng, sizes)
    n = sum(sizes)
    mat = assemble_sparse(blocks, r1, r2, n)
    local = np.concatenate([np.arange(k) for k in sizes])
    got, ok = inverse_diag_blocks_sparse(mat, np.arange(n), local, chunk=chunk)
    inv = np.linalg.inv(dense)
    ref = np.array([inv[3 * i:3 * i + 3, 3 * i:3 * i + 3] for i in range(n)])
    assert ok
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    bad = assemble_sparse(np.zeros((1, 3, 3)), np.array([0]), np.array([0]), 1)
    _, ok = inverse_diag_blocks_sparse(bad, np.array([0]), np.array([0]))
    assert not ok


def coupled_scene(rng, n, groups, extent=40.0):
    """Random positions, their interaction blocks and symmetric diagonally dominant blocks."""
    x = rng.uniform(0, extent, n)
    y = rng.uniform(0, extent * 0.6, n)
    group = np.sort(rng.integers(0, groups, n))
    xlo, ylo = stamp_origin(x, y, (5, 5))
    it = build_interactions(x, y, xlo, ylo, group, (5, 5), support_shape=(9, 9))
    a = rng.normal(size=(len(it.bs1), 3, 3)) * 0.05
    key = {(s1, s2): b for b, (s1, s2) in enumerate(zip(it.bs1, it.bs2, strict=True))}
    blocks = np.array([a[b] + a[key[(s2, s1)]].T for b, (s1, s2) in
                       enumerate(zip(it.bs1, it.bs2, strict=True))])
    blocks[it.diag_block] += 10 * np.eye(3)
    return x, y, group, it, blocks


def test_slab_index_couples_only_adjacent_slabs():
    rng = np.random.default_rng(12)
    x, y, group, it, _ = coupled_scene(rng, 600, 4, extent=150.0)
    slab = slab_index(x, y, group, it.bs1, it.bs2, 4)
    assert np.all(np.abs(slab[it.bs1] - slab[it.bs2]) <= 1)
    assert slab.min() == 0 and slab.max() >= 5  # the groups really are cut into many slabs
    for g in range(4):  # slabs are numbered from 0 in every group
        assert slab[group == g].min() == 0


def test_inverse_diag_blocks_slabs_matches_dense():
    rng = np.random.default_rng(13)
    x, y, group, it, blocks = coupled_scene(rng, 240, 3, extent=120.0)
    singular = blocks.copy()
    g2 = np.flatnonzero(group[it.bs1] == 2)
    singular[g2] = 0.0  # group 2 becomes singular
    slab = slab_index(x, y, group, it.bs1, it.bs2, 3)
    assert slab.max() >= 4
    dense = assemble_sparse(blocks, it.bs1, it.bs2, len(x)).toarray()
    inv = np.linalg.inv(dense)
    ref = np.array([inv[3 * i:3 * i + 3, 3 * i:3 * i + 3] for i in range(len(x))])
    got, ok = inverse_diag_blocks_slabs(blocks, it.bs1, it.bs2, group, slab)
    assert ok.all()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-14)
    got, ok = inverse_diag_blocks_slabs(singular, it.bs1, it.bs2, group, slab)
    assert ok.tolist() == [True, True, False]
    np.testing.assert_allclose(got[group < 2], ref[group < 2], rtol=1e-10, atol=1e-14)


def test_solve_pcg_matches_dense_and_falls_back():
    rng = np.random.default_rng(14)
    x, y, group, it, blocks = coupled_scene(rng, 200, 3)
    n = len(x)
    mat = assemble_sparse(blocks, it.bs1, it.bs2, n)
    rhs = rng.normal(size=(n, 3))
    rhs[group == 1] *= 1e-6  # per-group convergence: a small right-hand side is solved too
    ref = np.linalg.solve(mat.toarray(), rhs.ravel()).reshape(n, 3)
    diag = blocks[it.diag_block]
    np.testing.assert_allclose(solve_pcg(mat, rhs, diag, group), ref, rtol=1e-9, atol=0)
    # too few iterations: every group falls back to the sparse LU, same answer
    np.testing.assert_allclose(solve_pcg(mat, rhs, diag, group, maxiter=2), ref, rtol=1e-9)
    # groups flagged for the LU go there directly; fallbacks are reported back in place
    direct = np.array([False, True, False])
    np.testing.assert_allclose(solve_pcg(mat, rhs, diag, group, direct=direct), ref, rtol=1e-9)
    assert direct.tolist() == [False, True, False]
    direct = np.zeros(3, dtype=bool)
    solve_pcg(mat, rhs, diag, group, maxiter=2, direct=direct)
    assert direct.all()
    bad = mat.copy()
    bad.data[0] = np.nan
    assert np.isnan(solve_pcg(bad, rhs, diag, group)).all()


def test_inverse_groups_slab_path_matches_dense():
    # positions known (as in fit_psf): large groups take the block-tridiagonal slab recursion
    rng = np.random.default_rng(4)
    x, y, group, it, blocks = coupled_scene(rng, 60, 3)
    free = np.ones((len(x), 3), dtype=bool)
    lay_dense = make_layout(group, it, dense_max=64)
    lay_sparse = make_layout(group, it, dense_max=4, xy=np.column_stack([x, y]))
    gm = np.ones(lay_dense.n_groups, dtype=bool)
    ref, ok_ref = inverse_groups(scale_blocks(blocks, lay_dense, free)[0], lay_dense, gm)
    got, ok = inverse_groups(scale_blocks(blocks, lay_sparse, free)[0], lay_sparse, gm)
    assert ok.all() and ok_ref.all()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_inverse_groups_giant_path_matches_dense():
    rng = np.random.default_rng(4)
    n = 60
    x = rng.uniform(0, 40, n)
    y = rng.uniform(0, 40, n)
    group = np.sort(rng.integers(0, 3, n))
    xlo, ylo = stamp_origin(x, y, (5, 5))
    it = build_interactions(x, y, xlo, ylo, group, (5, 5), support_shape=(9, 9))
    lay_dense = make_layout(group, it, dense_max=64)
    lay_sparse = make_layout(group, it, dense_max=4)
    a = rng.normal(size=(len(it.bs1), 3, 3)) * 0.05
    # symmetric, diagonally dominant blocks
    key = {(s1, s2): b for b, (s1, s2) in enumerate(zip(it.bs1, it.bs2, strict=True))}
    blocks = np.array([a[b] + a[key[(s2, s1)]].T for b, (s1, s2) in
                       enumerate(zip(it.bs1, it.bs2, strict=True))])
    blocks[it.diag_block] += 10 * np.eye(3)
    free = np.ones((n, 3), dtype=bool)
    gm = np.ones(lay_dense.n_groups, dtype=bool)
    ref, ok_ref = inverse_groups(scale_blocks(blocks, lay_dense, free)[0], lay_dense, gm)
    for dmax in (1000, 5):  # per-group dense inverse, then the sparse multi-RHS path
        got, ok = inverse_groups(scale_blocks(blocks, lay_sparse, free)[0], lay_sparse, gm,
                                 dense_inverse_max=dmax)
        assert ok.all() and ok_ref.all()
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_fit_sparse_and_dense_paths_agree():
    psf = CircularGaussianPRF(fwhm=2.0)
    rng = np.random.default_rng(9)
    gx, gy = np.meshgrid(np.arange(10), np.arange(8))
    x = 8 + 4.0 * gx.ravel() + rng.uniform(-0.4, 0.4, 80)
    y = 8 + 4.0 * gy.ravel() + rng.uniform(-0.4, 0.4, 80)
    flux = rng.uniform(1000, 3000, 80)
    shape = (45, 55)
    xlo, ylo = np.round(x).astype(int) - 8, np.round(y).astype(int) - 8
    st = psf.psf_stamps(x, y, 17, xlo=xlo, ylo=ylo) * flux[:, None, None]
    yy = (ylo[:, None, None] + np.arange(17)[None, :, None]) + 0 * xlo[:, None, None]
    xx = (xlo[:, None, None] + np.arange(17)[None, None, :]) + 0 * ylo[:, None, None]
    yy, xx = np.broadcast_arrays(yy, xx)
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    img = np.zeros(shape)
    np.add.at(img, (yy[ok], xx[ok]), st[ok])
    sigma = np.sqrt(img + 9.0)
    img = img + rng.normal(size=shape) * sigma
    gid = (np.arange(80) >= 40).astype(int)  # two groups of 40
    kw = dict(fit_shape=5, group_id=gid, error=sigma)
    x0, y0 = x + rng.normal(0, 0.2, 80), y + rng.normal(0, 0.2, 80)
    sp = fit_psf(img, psf, x0, y0, flux, dense_max=16, **kw)
    de = fit_psf(img, psf, x0, y0, flux, dense_max=64, **kw)
    assert sp.converged.all() and de.converged.all() and sp.cov_ok.all()
    np.testing.assert_allclose(sp.x, de.x, atol=1e-8)
    np.testing.assert_allclose(sp.flux, de.flux, rtol=1e-9)
    np.testing.assert_allclose(sp.flux_err, de.flux_err, rtol=1e-8)
    assert np.all(np.abs(sp.x - x) < 5 * sp.x_err)


def _grid_image(psf, rng, nx, ny, step, jitter, flux_range=(2000, 5000)):
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    x = 10 + step * gx.ravel() + rng.uniform(-jitter, jitter, gx.size)
    y = 10 + step * gy.ravel() + rng.uniform(-jitter, jitter, gx.size)
    flux = rng.uniform(*flux_range, len(x))
    shape = (int(step * ny + 20), int(step * nx + 20))
    img = render(psf, shape, x, y, flux)
    sigma = np.sqrt(img + 25.0)
    return x, y, flux, img + rng.normal(size=shape) * sigma, sigma


def render(psf, shape, x, y, flux, half=10):
    size = 2 * half + 1
    xlo = np.round(x).astype(int) - half
    ylo = np.round(y).astype(int) - half
    st = psf.psf_stamps(x, y, size, xlo=xlo, ylo=ylo) * flux[:, None, None]
    yy, xx = np.broadcast_arrays(ylo[:, None, None] + np.arange(size)[None, :, None],
                                 xlo[:, None, None] + np.arange(size)[None, None, :])
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    img = np.zeros(shape)
    np.add.at(img, (yy[ok], xx[ok]), st[ok])
    return img


def test_large_group_slabs_and_pcg_match_dense_path():
    # a 140-star connected group: the dense solve (bucket 192) against the large-group path
    # (per-group preconditioned CG steps, block-tridiagonal covariance)
    psf = CircularGaussianPRF(fwhm=2.5)
    rng = np.random.default_rng(21)
    x, y, flux, img, sigma = _grid_image(psf, rng, 20, 7, 4.5, 0.5)
    n = len(x)
    kw = dict(fit_shape=5, group_id=np.zeros(n, dtype=int), error=sigma)
    x0, y0 = x + rng.normal(0, 0.2, n), y + rng.normal(0, 0.2, n)
    big = fit_psf(img, psf, x0, y0, flux * 0.9, dense_max=64, **kw)
    ref = fit_psf(img, psf, x0, y0, flux * 0.9, dense_max=192, **kw)
    assert big.converged.all() and big.cov_ok.all() and ref.cov_ok.all()
    np.testing.assert_allclose(big.x, ref.x, atol=1e-8)
    np.testing.assert_allclose(big.flux, ref.flux, rtol=1e-9)
    np.testing.assert_allclose(big.cov, ref.cov, rtol=1e-7, atol=1e-12)


def test_chain_of_1500_in_one_group():
    # a 1500-star chain (two rows; 5x5 stamps do not overlap, so pulls are honest), connected
    # by the PSF wings and fitted as one group with no size cap:
    # correctness only (timing lives in bench/bench_fit.py)
    psf = CircularGaussianPRF(fwhm=2.5)
    rng = np.random.default_rng(22)
    x, y, flux, img, sigma = _grid_image(psf, rng, 750, 2, 5.0, 0.4)
    n = len(x)
    x0, y0 = x + rng.normal(0, 0.15, n), y + rng.normal(0, 0.15, n)
    res = fit_psf(img, psf, x0, y0, flux * 1.1, fit_shape=5, error=sigma,
                  group_id=np.zeros(n, dtype=int))
    assert res.converged.all() and res.cov_ok.all()
    for val, true, err in ((res.x, x, res.x_err), (res.y, y, res.y_err),
                           (res.flux, flux, res.flux_err)):
        pull = (val - true) / err
        assert np.all(np.abs(pull) < 5.5)
        assert 0.9 < np.std(pull) < 1.1
    # the reduced chi2 of a correct fit with honest errors is ~1
    assert 0.9 < np.nanmedian(res.reduced_chi2) < 1.15


def test_normal_blocks_agree_with_brute_force():
    from crowdphot.core.fit.lm import _normal_blocks

    rng = np.random.default_rng(23)
    x, y, group, it, _ = coupled_scene(rng, 50, 3)
    npix = 6
    jac = rng.normal(size=(len(it.ps), 3, npix))
    starts = np.flatnonzero(np.r_[True, it.pt[1:] != it.pt[:-1]])
    got = _normal_blocks(jac, starts, it.tb, len(it.bs1))
    ref = np.zeros((len(it.bs1), 3, 3))
    for q1, q2, b in zip(it.q1, it.q2, it.tb, strict=True):
        ref[b] += jac[q1] @ jac[q2].T
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
