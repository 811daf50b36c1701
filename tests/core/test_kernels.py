"""The compiled kernels (crowdphot.core.kernels) against their numpy oracles (tests/_oracles.py).

Every kernel has one implementation, C built at install time. These tests compare it with the
plain numpy version on seeded random inputs (edges, masks, NaN and thread counts included),
check that wrong arguments raise instead of reading out of bounds, and that results do not
depend on the number of threads.
"""

import numpy as np
import pytest

import _oracles as O
from crowdphot.core import jit
from crowdphot.core.jit import native
from crowdphot.core.kernels import detect, greedy, normal, overlap, pairs, scatter
from crowdphot.core.kernels.spline import SplineStack


@pytest.fixture(params=[1, 2, 3])
def threads(request):
    """Run a test with 1, 2 and 3 kernel threads (results must not change)."""
    old = jit.set_num_threads(request.param)
    yield request.param
    jit.set_num_threads(old)


# -- scatter ---------------------------------------------------------------------------------
def test_scatter_matches_add_at_with_trimming(rng):
    k, shape = 40, (30, 37)
    stamps = rng.normal(size=(k, 7, 9))
    w, b = rng.uniform(0.5, 2, k), rng.normal(size=k)
    xlo = rng.integers(-12, 40, k)
    ylo = rng.integers(-10, 33, k)
    got, want = np.zeros(shape), np.zeros(shape)
    scatter.scatter_add(got, stamps, w, b, xlo, ylo)
    O.scatter_add(want, stamps, w, b, xlo, ylo)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.count_nonzero(got) > 0


def test_scatter_into_non_contiguous_output(rng):
    big = np.zeros((20, 40))
    view = big[:, ::2]  # (20, 20), not contiguous
    stamps = rng.normal(size=(3, 5, 5))
    want = np.zeros((20, 20))
    args = (stamps, np.ones(3), np.zeros(3), np.array([0, 10, 17]), np.array([2, 9, -2]))
    scatter.scatter_add(view, *args)
    O.scatter_add(want, *args)
    np.testing.assert_allclose(view, want, atol=1e-14)
    assert not big[:, 1::2].any()


# -- greedy selections -------------------------------------------------------------------------
def test_greedy_match_equals_rounds_oracle(rng):
    for _ in range(20):
        m, n_ref, n_src = 200, 60, 70
        i = rng.integers(0, n_ref, m)
        j = rng.integers(0, n_src, m)
        np.testing.assert_array_equal(greedy.greedy_match(i, j, n_ref, n_src),
                                      O.greedy_match(i, j, n_ref, n_src))


def test_greedy_keep_equals_rounds_oracle(rng):
    for _ in range(20):
        n = 80
        a, b = rng.integers(0, n, 300), rng.integers(0, n, 300)
        ok = a != b
        lo, hi = np.minimum(a, b)[ok], np.maximum(a, b)[ok]
        order = np.lexsort((hi, lo))
        first, second = lo[order], hi[order]
        np.testing.assert_array_equal(greedy.greedy_keep(n, first, second),
                                      O.greedy_keep(n, first, second))


# -- normal-matrix blocks ----------------------------------------------------------------------
# -- pairs: fixed-radius neighbours and friends-of-friends ---------------------------------
def _point_sets(rng):
    """Random, rounded (ties at the radius), duplicated, clustered and far-flung points."""
    for k in range(48):
        n = int(rng.integers(2, 160))
        scale = (1.0, 30.0, 1e3, 1e7)[k % 4]
        x = np.round(rng.uniform(-scale, scale, n), int(rng.integers(0, 3)))
        y = np.round(rng.uniform(0, scale, n), int(rng.integers(0, 3)))
        if k % 3 == 0:  # exact duplicates
            x[: n // 3], y[: n // 3] = x[0], y[0]
        if k % 8 == 5:  # one point very far away: huge span, tiny radius
            x[-1] = 1e12
        r = float(rng.choice([0.0, 0.5, 1.0, 2.0, 5.0, scale / 15]))
        yield x, y, r


@pytest.mark.parametrize("metric", ["euclidean", "chebyshev"])
def test_close_pairs_equal_brute_force(rng, metric):
    for x, y, r in _point_sets(rng):
        got = pairs.close_pairs(x, y, r, metric=metric)
        want = O.close_pairs(x, y, r, metric=metric)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == np.int64
        m = int(rng.integers(0, 40))
        x2, y2 = rng.uniform(x.min() - r - 1, x.max() + r + 1, m), rng.uniform(-2, 40, m)
        got = pairs.close_pairs(x, y, r, x2=x2, y2=y2, metric=metric)
        want = O.close_pairs(x, y, r, x2=x2, y2=y2, metric=metric)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_close_pairs_keep_ties_at_exactly_the_radius():
    # 3-4-5 triangles: the distance 5 is exact; 5 + 1 ulp is out
    x = np.array([0.0, 3.0, 10.0, 13.0, 20.0, 20.0])
    y = np.array([0.0, 4.0, 0.0, np.nextafter(4.0, 5.0), 0.0, 5.0])
    i, j = pairs.close_pairs(x, y, 5.0)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (4, 5)]
    i, j = pairs.close_pairs(x, y, 5.0, x2=np.array([25.0]), y2=np.array([5.0]),
                             metric="chebyshev")
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(4, 0), (5, 0)]


def test_fof_labels_equal_scipy_components(rng):
    for x, y, r in _point_sets(rng):
        np.testing.assert_array_equal(pairs.fof_labels(x, y, r), O.fof_labels(x, y, r))
    # dense chains on a lattice: many ties, few large groups
    x = rng.integers(0, 40, 1200).astype(float)
    y = rng.integers(0, 40, 1200).astype(float)
    for r in (1.0, np.sqrt(2.0), 0.0):
        np.testing.assert_array_equal(pairs.fof_labels(x, y, r), O.fof_labels(x, y, r))


def test_pairs_small_and_empty_inputs():
    e = np.zeros(0)
    for a in pairs.close_pairs(e, e, 1.0) + pairs.close_pairs(e, e, 1.0, x2=[1.0], y2=[2.0]):
        assert a.dtype == np.int64 and a.size == 0
    assert pairs.fof_labels(e, e, 1.0).size == 0
    one = np.array([3.0])
    np.testing.assert_array_equal(pairs.fof_labels(one, one, 1.0), [1])
    assert pairs.close_pairs(one, one, 1.0)[0].size == 0
    np.testing.assert_array_equal(pairs.fof_labels([0.0, 0.0, 9.0], [1.0, 1.0, 1.0], 0.0),
                                  [1, 1, 2])
    # numbering by first appearance, whatever the order of the cells
    np.testing.assert_array_equal(pairs.fof_labels([90.0, 0.0, 50.0, 1.0], [0.0] * 4, 2.0),
                                  [1, 2, 3, 2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pairs_reject_non_finite_input(bad):
    ok = np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        pairs.close_pairs(np.array([0.0, bad]), ok, 1.0)
    with pytest.raises(ValueError, match="finite"):
        pairs.close_pairs(ok, ok, 1.0, x2=ok, y2=np.array([bad, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        pairs.fof_labels(ok, np.array([bad, 0.0]), 1.0)
    with pytest.raises(ValueError, match="radius"):
        pairs.fof_labels(ok, ok, bad)
    with pytest.raises(ValueError, match="radius"):
        pairs.close_pairs(ok, ok, -1.0)
    with pytest.raises(ValueError, match="one length"):
        native.close_pairs(ok, ok[:1], ok, ok, 1.0, 2, 0)
    with pytest.raises(ValueError, match="one label per point"):
        native.fof_labels(ok, ok, 1.0, np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="int64"):
        native.fof_labels(ok, ok, 1.0, np.zeros(2))


def test_normal_blocks_equal_explicit_products(rng):
    counts = np.array([1, 3, 2, 4])
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    npair, k, npix = counts.sum(), 3, 25
    jac = rng.normal(size=(npair, k, npix))
    toff = np.cumsum(counts * counts) - counts * counts
    n_blocks = 12
    tb = rng.integers(0, n_blocks, int((counts * counts).sum()))
    got = np.zeros((n_blocks, k, k))
    normal.normal_blocks_add(jac, starts, counts, toff, tb, got)
    want = np.zeros((n_blocks, k, k))
    for t, c in enumerate(counts):
        for a in range(c):
            for b in range(c):
                want[tb[toff[t] + a * c + b]] += jac[starts[t] + a] @ jac[starts[t] + b].T
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# -- aperture overlap ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["exact", "center", "subpixel"])
@pytest.mark.parametrize("r_in", [None, 2.2])
def test_circle_stamps_match_numpy_geometry(rng, threads, method, r_in):
    x = rng.uniform(-3, 30, 50)
    y = rng.uniform(-3, 30, 50)
    x[:5] = np.round(x[:5])  # integer centres: samples exactly on the circle
    got = overlap.circle_weight_stamps(x, y, 4.5, r_in=r_in, method=method, subpixels=4)
    want = O.circle_weight_stamps(x, y, 4.5, r_in=r_in, method=method, subpixels=4)
    for g, w in zip(got[1:], want[1:], strict=True):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["exact", "center", "subpixel"])
def test_circle_sums_match_stamp_sums(rng, threads, method):
    data = rng.normal(10, 2, (40, 50))
    data[5, 7] = np.nan
    data[20, 20] = np.inf
    error = rng.uniform(0.5, 1.5, data.shape)
    excluded = rng.random(data.shape) < 0.05
    x = rng.uniform(-8, 58, 300)
    y = rng.uniform(-8, 48, 300)
    x[:4] = [7.0, 20.0, 20.3, -30.0]  # on the NaN, on the inf, near it, off the image
    y[:4] = [5.0, 20.0, 19.6, 5.0]
    for r_in in (None, 1.5):
        got = overlap.circle_sums(data, error, excluded, x, y, 3.7, r_in, method, 3)
        want = O.aperture_sums(data, error, excluded, x, y, 3.7, r_in, method, 3)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-10)
        assert got[2] == want[2] > 0
        assert np.isnan(got[0][3])


def test_annulus_values_match_stamp_gather(rng, threads):
    data = rng.normal(size=(40, 50))
    data[10, 10] = np.nan
    excluded = rng.random(data.shape) < 0.1
    x = rng.uniform(-5, 55, 120)
    y = rng.uniform(-5, 45, 120)
    vals, counts = overlap.annulus_values(data, excluded, x, y, 2.5, 6.0)
    want = O.annulus_values(data, excluded, x, y, 2.5, 6.0)
    # same multiset of values per source (the oracle keeps stamp column order)
    for k in range(len(x)):
        got_k = np.sort(vals[k, : counts[k]])
        want_k = np.sort(want.data[k][~want.mask[k]])
        np.testing.assert_array_equal(got_k, want_k)


# -- finder kernels ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"ratio": 0.4, "theta": 33.0}, {"fwhm": 7.0}])
def test_convolution_matches_scipy_any_threads(rng, threads, kw):
    data = rng.normal(size=(45, 130))
    kernel = detect.make_star_kernel(kw.pop("fwhm", 3.0), **kw).data
    got, seg_max = detect.convolve_zero_padded(data, kernel, return_seg_max=True)
    np.testing.assert_allclose(got, O.convolve(data, kernel), rtol=0, atol=1e-12)
    if seg_max is not None:
        pad = np.full((got.shape[0], seg_max.shape[1] * 64), -np.inf)
        pad[:, : got.shape[1]] = got
        np.testing.assert_array_equal(seg_max, pad.reshape(len(got), -1, 64).max(axis=2))


@pytest.mark.parametrize("radius", [0.0, 2.0, 3.5, 5.0])
def test_peaks_match_numpy_flags(rng, radius):
    conv = rng.normal(size=(50, 140))
    thr = rng.uniform(-0.2, 0.6, conv.shape)
    mask = rng.random(conv.shape) < 0.05
    foot = np.ones((3, 3), bool) if radius == 0 else None
    circle = detect._circle_geometry(radius) if radius else None
    for t in (thr, 0.3):
        x, y = detect.find_peak_pixels(conv, t, mask=mask, border=(1, 2), footprint=foot,
                                       min_separation=radius)
        want = O.peak_flags(conv, np.asarray(t), mask, (1, 2), foot, circle)
        wy, wx = np.nonzero(want)
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)


def test_peak_run_summary_skips_only_empty_runs(rng):
    """With the run maxima of the convolution (NaN pixels included) the peaks are unchanged."""
    data = rng.normal(size=(30, 200))
    data[3, 10] = np.nan
    kernel = detect.make_star_kernel(3.0).data
    conv, seg_max = detect.convolve_zero_padded(data, kernel, return_seg_max=True)
    a = detect.find_peak_pixels(conv, 0.5, min_separation=2.0, seg_max=seg_max)
    b = detect.find_peak_pixels(conv, 0.5, min_separation=2.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].size > 10


# -- spline evaluation -------------------------------------------------------------------------
@pytest.fixture
def stack(rng):
    yy, xx = np.mgrid[0:23, 0:19]
    imgs = [np.exp(-0.5 * (((xx - 9 - s) / 2.5) ** 2 + ((yy - 11) / 3.0) ** 2))
            for s in (0.0, 0.7, -0.5, 0.3)]
    return SplineStack(np.array(imgs) + 0.01 * rng.normal(size=(4, 23, 19)))


def _blend(rng, n, k=4):
    gidx = np.stack([rng.permutation(4)[:k] for _ in range(n)])
    gw = rng.uniform(0, 1, (n, k))
    return gidx, gw, rng.normal(size=(n, k)), rng.normal(size=(n, k))


@pytest.mark.parametrize("clamp", [False, True])
def test_spline_points_match_oracle(stack, rng, threads, clamp):
    n, p = 30, 2000
    gidx, gw, gdx, gdy = _blend(rng, n)
    xi = rng.uniform(-3, 22, p)
    yi = rng.uniform(-3, 26, p)
    xi[:3] = [np.nan, 0.0, 18.0]
    star = rng.integers(0, n, p)
    got = stack.points(xi, yi, star, gidx, gw, gdx, gdy, ox=2.0, oy=3.0, fill=0.25, clamp=clamp)
    s = stack
    want = O.spline_points(s.coeffs, s.table_x, s.starts_x, s.table_y, s.starts_y, xi, yi, star,
                           gidx, gw, gdx, gdy, 2.0, 3.0, 0.25, clamp, True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
    plain = stack.points(xi, yi, star, gidx, gw, ox=2.0, oy=3.0, fill=0.25, clamp=clamp)
    np.testing.assert_array_equal(plain, got[0])


@pytest.mark.parametrize("shape", [(5, 5), (13, 9), (1, 7)])
@pytest.mark.parametrize("grad", [False, True])
def test_spline_stamps_match_oracle(stack, rng, threads, shape, grad):
    n = 150  # several stars per parallel task, sorted by grid cell
    gidx, gw, gdx, gdy = _blend(rng, n)
    x0 = rng.uniform(-5, 15, n)
    y0 = rng.uniform(-5, 15, n)
    xlo = np.floor(x0).astype(np.int64) - shape[1] // 2 + rng.integers(-4, 5, n)
    ylo = np.floor(y0).astype(np.int64) - shape[0] // 2 + rng.integers(-4, 5, n)
    kw = {"ox": 2, "oy": 2, "orx": 9.0, "ory": 11.0, "fill": 0.5}
    s = stack
    if grad:
        got = stack.stamps(x0, y0, xlo, ylo, shape, gidx, gw, gdx, gdy, **kw)
    else:
        got = (stack.stamps(x0, y0, xlo, ylo, shape, gidx, gw, **kw),)
    want = O.spline_stamps(s.coeffs, s.table_x, s.starts_x, s.table_y, s.starts_y, 2.0, 2.0,
                           9.0, 11.0, x0, y0, xlo, ylo, gidx, gw, gdx if grad else None,
                           gdy if grad else None, shape, 0.5, False)
    want = want if grad else (want,)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)


def test_spline_empty_inputs(stack):
    gidx, gw = np.zeros((0, 1), np.int64), np.zeros((0, 1))
    out = stack.stamps(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), (5, 5), gidx, gw)
    assert out.shape == (0, 5, 5)
    assert stack.points(np.zeros(0), np.zeros(0), np.zeros(0, int), gidx, gw).shape == (0,)


# -- argument checks -------------------------------------------------------------------------
def test_bad_arguments_raise_instead_of_reading_out_of_bounds():
    img = np.zeros((5, 5))
    with pytest.raises(TypeError, match="stamps must be of dtype float64"):
        native.scatter(img, np.zeros((1, 2, 2), np.float32), np.ones(1), np.ones(1),
                       np.zeros(1, np.int64), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="one weight, bkg, xlo, ylo per stamp"):
        native.scatter(img, np.zeros((2, 2, 2)), np.ones(1), np.ones(1),
                       np.zeros(1, np.int64), np.zeros(1, np.int64))
    with pytest.raises(TypeError, match="out must be a C-contiguous writable array"):
        native.scatter(img[:, ::2], np.zeros((1, 2, 2)), np.ones(1), np.ones(1),
                       np.zeros(1, np.int64), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="index out of range"):
        greedy.greedy_match(np.array([0, 5]), np.array([0, 1]), 2, 2)
    with pytest.raises(ValueError, match="first sorted"):
        greedy.greedy_keep(3, np.array([1, 0]), np.array([2, 2]))
    with pytest.raises(ValueError, match="block index out of range"):
        normal.normal_blocks_add(np.ones((1, 1, 2)), np.array([0]), np.array([1]),
                                 np.array([0]), np.array([3]), np.zeros((2, 1, 1)))
    with pytest.raises(ValueError, match="must have 3 dimensions"):
        native.circle_stamps(np.zeros(1), np.zeros(1), 1.0, -1.0, 0, 1, np.zeros((1, 3)))
    stack = SplineStack(np.ones((1, 6, 6)))
    with pytest.raises(ValueError, match="ePSF index out of range"):
        stack.points(np.ones(1), np.ones(1), np.zeros(1, int), np.ones((1, 1), int),
                     np.ones((1, 1)))
    with pytest.raises(ValueError, match="star index out of range"):
        stack.points(np.ones(1), np.ones(1), np.ones(1, int), np.zeros((1, 1), int),
                     np.ones((1, 1)))


def test_thread_count_round_trip():
    old = jit.set_num_threads(3)
    try:
        assert jit.get_num_threads() == 3
        assert jit.set_num_threads(0) == 3 and jit.get_num_threads() == 1
    finally:
        jit.set_num_threads(old)
    assert jit.get_num_threads() == old


# -- spline coefficients -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 4), (5, 9), (12, 7), (61, 40)])
def test_spline_coefficients_equal_fitpack(rng, shape):
    """The banded collocation solve gives FITPACK's interpolating-spline coefficients."""
    from scipy.interpolate import BSpline, RectBivariateSpline

    from crowdphot.core.kernels.spline import basis_table, knots, spline_coefficients

    img = rng.normal(size=shape)
    ref = RectBivariateSpline(np.arange(shape[1]), np.arange(shape[0]), img.T, kx=3, ky=3, s=0)
    want = ref.tck[2].reshape(shape[1], shape[0]).T
    np.testing.assert_allclose(spline_coefficients(img), want, rtol=0,
                               atol=1e-13 * np.abs(want).max())
    stack = SplineStack(np.stack([img, 2 * img]))
    np.testing.assert_allclose(stack.coeffs[1], 2 * stack.coeffs[0], rtol=1e-15, atol=0)
    # the per-interval polynomial table equals scipy's basis derivatives / p!
    n = shape[1]
    table, starts = basis_table(n)
    basis = BSpline(knots(n), np.eye(n), 3)
    rows = np.arange(n - 3)
    for p, fact in enumerate((1, 1, 2, 6)):
        d = basis(starts, nu=p)
        for k in range(4):
            np.testing.assert_allclose(table[:, k, p], d[rows, rows + k] / fact, rtol=0,
                                       atol=1e-14)


def test_band_solve_rejects_a_singular_matrix():
    with pytest.raises(ValueError, match="singular collocation matrix"):
        native.band_solve(np.zeros((3, 3)), np.zeros((1, 3, 2)))


def test_band_solve_same_with_any_threads(rng, threads):
    # the stack's images are solved in parallel: each one alone gives the same coefficients
    images = rng.normal(size=(5, 23, 17))
    stack = SplineStack(images).coeffs
    jit.set_num_threads(1)
    for k in range(5):
        np.testing.assert_array_equal(stack[k], SplineStack(images[k:k + 1]).coeffs[0])


# -- cold start ----------------------------------------------------------------------------------
def test_photometry_path_loads_no_jit_plotting_interpolate_or_graph_modules(tmp_path):
    """A fresh process importing the notebook's classes and running a small grouped fit with a
    residual image loads neither numba (nothing is compiled at run time), matplotlib,
    scipy.interpolate, scipy.ndimage, nor the k-d tree / sparse-graph / dense linear algebra
    modules of scipy (neighbours and groups are compiled kernels; splu is for large groups),
    nor scipy.stats (the blend test after a grouped fit needs scipy.special only)."""
    import subprocess
    import sys

    from crowdphot.psf import CircularGaussianPRF

    # six stars, two of them a close pair (one group of two: the blend test runs)
    xs, ys = [10.0, 14.0, 40.0, 12.0, 45.0, 30.0], [10.0, 11.0, 12.0, 45.0, 44.0, 30.0]
    yy, xx = np.mgrid[:60, :60]
    data = sum(CircularGaussianPRF(flux=800.0, x_0=x0, y_0=y0, fwhm=2.5)(xx, yy)
               for x0, y0 in zip(xs, ys, strict=True))
    np.save(tmp_path / "data.npy", data)
    code = """
import sys
import numpy as np
from crowdphot.detection import IRAFStarFinder
from crowdphot.psf import CircularGaussianPRF, GriddedPSFModel, PSFPhotometry, SourceGrouper
assert 'numba' not in sys.modules, 'numba imported at import time'
data = np.load(sys.argv[1])
psf = CircularGaussianPRF(fwhm=2.5)
phot = PSFPhotometry(psf, (5, 5), finder=IRAFStarFinder(threshold=5.0, fwhm=2.5),
                     grouper=SourceGrouper(10), aperture_radius=3)
res = phot(data + 0.01, error=np.full(data.shape, 0.1))
phot.make_residual_image(data)
assert len(res) == 6, len(res)
assert max(res['group_size']) == 2, list(res['group_size'])
# a pair 2.5 px apart from given positions: a candidate pair of the blend test
from astropy.table import QTable
pair = phot(data + 0.01, error=np.full(data.shape, 0.1),
            init_params=QTable({'x': [10.0, 12.5], 'y': [10.0, 10.5]}))
assert list(pair['group_size']) == [2, 2], list(pair['group_size'])
bad = [m for m in ('numba', 'matplotlib', 'scipy.interpolate', 'scipy.ndimage', 'scipy.spatial',
                   'scipy.sparse.csgraph', 'scipy.sparse.linalg', 'scipy.linalg', 'scipy.stats')
       if m in sys.modules]
assert not bad, bad
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data.npy")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


def test_overlap_kernels_ignore_non_finite_centres():
    data = np.ones((10, 10))
    x = np.array([np.nan, 3.0, np.inf])
    y = np.array([2.0, 3.0, 1e300])
    sums, _, nonfinite = overlap.circle_sums(data, None, None, x, y, 2.0, None, "exact", 5)
    assert np.isnan(sums[[0, 2]]).all() and sums[1] == pytest.approx(4 * np.pi, rel=1e-12)
    assert nonfinite == 0
    _, counts = overlap.annulus_values(data, None, x, y, 1.0, 2.0)
    assert counts[0] == counts[2] == 0 < counts[1]
