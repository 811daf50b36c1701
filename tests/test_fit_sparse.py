"""Tests of the fitting engine's building blocks: interaction pairs, dense buckets, the sparse
solver for large groups, and sparse-vs-dense agreement inside ``fit_psf``."""

import numpy as np
import pytest

from crowdphot.fit import fit_psf
from crowdphot.fit.dense import bucket_of, inverse_dense, inverse_spd, solve_dense
from crowdphot.fit.pairs import build_interactions, segment_products
from crowdphot.fit.solve import inverse_groups, make_layout, scale_blocks
from crowdphot.fit.sparse import assemble_sparse, inverse_diag_blocks_sparse, solve_sparse
from crowdphot.psf.analytic import CircularGaussianPRF
from crowdphot.psf.base import stamp_origin


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
