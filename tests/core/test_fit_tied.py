"""Tied source copies in the batched engine (crowdphot.core.fit.tied, params.TiedParams)."""

import numpy as np

from crowdphot import CircularGaussianPRF
from crowdphot.core.fit import fit_psf
from crowdphot.core.fit.params import TiedParams
from crowdphot.core.fit.tied import FramePSF, build_tied, solve_tied
from crowdphot.core.render import render_image


def _scene(seed=3, shape=(60, 70)):
    """Isolated stars and close pairs with noise; initial values off the truth."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(8, shape[1] - 8, 13.0), np.arange(8, shape[0] - 8, 13.0))
    x = xs.ravel() + rng.uniform(-1, 1, xs.size)
    y = ys.ravel() + rng.uniform(-1, 1, xs.size)
    pair = rng.random(x.size) < 0.5
    x = np.concatenate([x, x[pair] + 3.2])
    y = np.concatenate([y, y[pair] + 0.7])
    flux = rng.uniform(500, 5000, x.size)
    psf = CircularGaussianPRF(fwhm=2.6)
    img = render_image(shape, psf, x, y, flux, model_shape=(21, 21))
    err = np.sqrt(4.0 + np.clip(img, 0, None))
    img = img + rng.normal(size=shape) * err
    gid = np.arange(x.size)
    gid[x.size - pair.sum():] = np.flatnonzero(pair)
    x0 = x + rng.uniform(-0.3, 0.3, x.size)
    y0 = y + rng.uniform(-0.3, 0.3, x.size)
    f0 = flux * rng.uniform(0.8, 1.2, x.size)
    return img, err, psf, x0, y0, f0, gid


def _identity_tie(tp, k=3):
    m = len(tp.star)
    mat = np.zeros((m, 3, k))
    mat[:, [0, 1, 2], [0, 1, 2]] = 1.0
    return TiedParams(tp.star, mat, np.zeros((m, 3)), tp.n_star, ("x", "y", "flux"))


def test_one_frame_identity_tie_equals_fit_psf():
    img, err, psf, x0, y0, f0, gid = _scene()
    tp = build_tied([(img, err, None, psf)], x0, y0, np.zeros(len(x0), int),
                    np.arange(len(x0)), gid, (5, 5))
    p0 = np.column_stack([x0, y0, f0])[tp.sources]
    res = solve_tied(tp, _identity_tie(tp), p0, xtol=1e-8)
    ref = fit_psf(img, psf, x0, y0, f0, fit_shape=5, group_id=gid, error=err, xtol=1e-8)
    s = tp.sources
    assert len(s) == len(x0) and np.all(res.converged) and np.all(res.cov_ok)
    np.testing.assert_allclose(res.p[:, 0], ref.x[s], atol=1e-7, rtol=0)
    np.testing.assert_allclose(res.p[:, 1], ref.y[s], atol=1e-7, rtol=0)
    np.testing.assert_allclose(res.p[:, 2], ref.flux[s], rtol=1e-8)
    for k, e in enumerate((ref.x_err, ref.y_err, ref.flux_err)):
        np.testing.assert_allclose(np.sqrt(res.cov[:, k, k]), e[s], rtol=1e-6)


def test_transposed_copy_halves_the_variance():
    # frame 1 is frame 0 transposed (x <-> y): the tie swaps x and y; every parameter value
    # gives the same chi-square in both frames, so the joint minimum is the single one and
    # the covariance is half of it
    img, err, psf, x0, y0, f0, gid = _scene(seed=8)
    n = len(x0)
    frames = [(img, err, None, psf), (img.T.copy(), err.T.copy(), None, psf)]
    tp = build_tied(frames, np.r_[x0, y0], np.r_[y0, x0], np.r_[np.zeros(n, int),
                    np.ones(n, int)], np.r_[np.arange(n), np.arange(n)], gid, (5, 5))
    m = len(tp.star)
    mat = np.zeros((m, 3, 3))
    f1 = tp.frame == 1
    mat[~f1, 0, 0] = mat[~f1, 1, 1] = 1.0
    mat[f1, 0, 1] = mat[f1, 1, 0] = 1.0
    mat[:, 2, 2] = 1.0
    tie = TiedParams(tp.star, mat, np.zeros((m, 3)), tp.n_star, ("x", "y", "flux"))
    p0 = np.column_stack([x0, y0, f0])[tp.sources]
    res = solve_tied(tp, tie, p0, xtol=1e-8)
    one = build_tied(frames[:1], x0, y0, np.zeros(n, int), np.arange(n), gid, (5, 5))
    ref = solve_tied(one, _identity_tie(one), p0, xtol=1e-8)
    np.testing.assert_allclose(res.p[:, :2], ref.p[:, :2], atol=1e-7, rtol=0)
    np.testing.assert_allclose(res.p[:, 2], ref.p[:, 2], rtol=1e-8)
    np.testing.assert_allclose(res.cov, ref.cov / 2, rtol=1e-6, atol=1e-12)
    # copies sit in their frames: frame 1 positions are the transposed ones
    np.testing.assert_allclose(res.theta[f1][:, 0], res.p[tp.star[f1], 1], atol=1e-12)


def test_reduce_blocks_is_the_chain_rule():
    rng = np.random.default_rng(0)
    m, k, p, n = 7, 3, 4, 3
    star = np.array([0, 0, 1, 1, 1, 2, 2])
    mat = rng.normal(size=(m, k, p))
    tie = TiedParams(star, mat, np.zeros((m, k)), n, tuple("abcd"))
    jac = rng.normal(size=(m * k, 40))  # rows: copy parameters
    full = jac @ jac.T
    bs1, bs2 = (a.ravel() for a in np.meshgrid(np.arange(m), np.arange(m), indexing="ij"))
    blocks = full.reshape(m, k, m, k)[bs1, :, bs2, :]
    sb1, sb2, idx = tie.block_map(bs1, bs2)
    out = tie.reduce_blocks(blocks, bs1, bs2, idx, len(sb1))
    t = np.zeros((m * k, n * p))
    for c in range(m):
        t[c * k:(c + 1) * k, star[c] * p:(star[c] + 1) * p] = mat[c]
    want = (t.T @ full @ t).reshape(n, p, n, p)
    np.testing.assert_allclose(out, want[sb1, :, sb2, :], rtol=1e-12, atol=1e-12)
    g = rng.normal(size=(m, k))
    np.testing.assert_allclose(tie.reduce_vector(g).ravel(), t.T @ g.ravel(), rtol=1e-12)


def test_frame_psf_dispatch_and_dropped_copies():
    a, b = CircularGaussianPRF(fwhm=2.0), CircularGaussianPRF(fwhm=3.5)
    fp = FramePSF([a, b], [30, 40], 60)
    x = np.array([5.3, 12.1])
    xlo = np.array([3, 9])
    v = fp._stamps(x + fp.origin, np.array([4.0, 6.2]), xlo + fp.origin, np.array([2, 4]),
                   (5, 5))
    np.testing.assert_allclose(v[0], a.psf_stamps(x[:1], [4.0], (5, 5), xlo=xlo[:1], ylo=[2])[0])
    np.testing.assert_allclose(v[1], b.psf_stamps(x[1:], [6.2], (5, 5), xlo=xlo[1:], ylo=[4])[0])
    # a copy off its frame is dropped; a source without copies is not fitted
    img = np.ones((20, 20))
    tp = build_tied([(img, None, None, a), (img, None, None, b)],
                    np.array([10.0, 50.0, 60.0]), np.array([10.0, 10.0, 10.0]),
                    np.array([0, 1, 1]), np.array([0, 0, 1]), np.array([0, 1]), (5, 5))
    assert tp.sources.tolist() == [0] and tp.frame.tolist() == [0]


def test_solve_tied_holds_fixed_and_unconstrained_parameters():
    img, err, psf, x0, y0, f0, gid = _scene(seed=4)
    tp = build_tied([(img, err, None, psf)], x0, y0, np.zeros(len(x0), int),
                    np.arange(len(x0)), gid, (5, 5))
    tie = _identity_tie(tp, k=4)  # a fourth shared parameter no copy depends on
    p0 = np.column_stack([x0, y0, f0, np.full(len(x0), 7.0)])[tp.sources]
    free = np.ones_like(p0, dtype=bool)
    free[:, 2] = False
    res = solve_tied(tp, tie, p0, free=free)
    np.testing.assert_array_equal(res.p[:, 2:], p0[:, 2:])
    assert np.all(np.isnan(res.cov[:, 3, 3])) and np.all(np.isnan(res.cov[:, 2, 2]))
    assert np.all(np.isfinite(res.cov[:, 0, 0]))


def test_large_groups_take_the_sparse_path():
    # every star in one connected group, above dense_max: per-group CG steps and the
    # large-group covariance, as fit_psf does with the same dense_max
    img, err, psf, x0, y0, f0, _ = _scene(seed=6)
    gid = np.zeros(len(x0), dtype=int)
    tp = build_tied([(img, err, None, psf)], x0, y0, np.zeros(len(x0), int),
                    np.arange(len(x0)), gid, (5, 5), dense_max=4)
    assert tp.layout.bucket.tolist() == [0]
    p0 = np.column_stack([x0, y0, f0])[tp.sources]
    res = solve_tied(tp, _identity_tie(tp), p0, xtol=1e-8)
    ref = fit_psf(img, psf, x0, y0, f0, fit_shape=5, group_id=gid, error=err, xtol=1e-8,
                  dense_max=4)
    s = tp.sources
    np.testing.assert_allclose(res.p[:, :2], np.column_stack([ref.x, ref.y])[s], atol=1e-6,
                               rtol=0)
    np.testing.assert_allclose(res.p[:, 2], ref.flux[s], rtol=1e-7)
    np.testing.assert_allclose(np.sqrt(res.cov[:, 2, 2]), ref.flux_err[s], rtol=1e-5)
