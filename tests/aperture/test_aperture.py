"""Tests for crowdphot.aperture and the exact pixel/circle overlap kernels."""

import math
import warnings

import astropy.units as u
import matplotlib
import numpy as np
import pytest
from scipy import integrate

from _oracles import circle_rect_area
from crowdphot.aperture.core import (
    ApertureMask,
    BoundingBox,
    CircularAnnulus,
    CircularAperture,
    aperture_photometry,
    circular_aperture_sums,
)
from crowdphot.core.kernels.overlap import circle_weight_stamps
from crowdphot.core.validate import CrowdphotWarning

matplotlib.use("Agg")

pa = pytest.importorskip("photutils.aperture")

METHODS = ["exact", "center", "subpixel"]


def _random_positions(rng, n, nx, ny, margin=8.0):
    """Random centres, partly off the image, with integer and half-integer ties included."""
    x = rng.uniform(-margin, nx - 1 + margin, n)
    y = rng.uniform(-margin, ny - 1 + margin, n)
    k = n // 5
    x[:k], y[:k] = np.round(x[:k]), np.round(y[:k])
    x[k:2 * k] = np.round(x[k:2 * k]) + 0.5
    return x, y


# ---------------------------------------------------------------------------------------------
# exact geometry
# ---------------------------------------------------------------------------------------------
def _quad_area(x0, x1, y0, y1, r):
    """Oracle: integrate over x the length of [y0, y1] inside the disc."""
    def length(x):
        h = math.sqrt(max(r * r - x * x, 0.0))
        return max(0.0, min(y1, h) - max(y0, -h))

    lo, hi = max(x0, -r), min(x1, r)
    if hi <= lo:
        return 0.0
    pts = [p for p in (-math.sqrt(max(r * r - y0 * y0, 0)), math.sqrt(max(r * r - y0 * y0, 0)),
                       -math.sqrt(max(r * r - y1 * y1, 0)), math.sqrt(max(r * r - y1 * y1, 0)))
           if lo < p < hi]
    val, _ = integrate.quad(length, lo, hi, points=pts or None, epsabs=1e-14, epsrel=1e-13,
                            limit=200)
    return val


def test_exact_area_matches_quadrature_oracle(rng):
    n = 300
    r = rng.uniform(0.2, 30.0, n)
    x0 = rng.uniform(-1.3, 1.3, n) * r
    y0 = rng.uniform(-1.3, 1.3, n) * r
    w = rng.uniform(0.05, 2.0, n)
    h = rng.uniform(0.05, 2.0, n)
    # half of the rectangles straddle the circle
    t = rng.uniform(0, 2 * np.pi, n // 2)
    x0[: n // 2] = r[: n // 2] * np.cos(t) - w[: n // 2] * rng.random(n // 2)
    y0[: n // 2] = r[: n // 2] * np.sin(t) - h[: n // 2] * rng.random(n // 2)
    got = circle_rect_area(x0, x0 + w, y0, y0 + h, r)
    want = np.array([_quad_area(a, a + b, c, c + d, rr)
                     for a, b, c, d, rr in zip(x0, w, y0, h, r, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # the sample covers empty, full and partly covered rectangles
    partial = (got > 1e-6) & (got < w * h * (1 - 1e-6))
    assert partial.sum() > 120 and np.any(got == 0) and np.any(np.isclose(got, w * h))


def test_exact_area_matches_brute_force_subsampling():
    # 2000 x 2000 sub-samples per pixel: error ~ perimeter / 2000
    r = 2.7
    cases = [(1.5, 2.5, 1.0, 2.0), (-0.5, 0.5, 2.2, 3.2), (-2.9, -1.9, -1.1, -0.1),
             (-0.3, 0.7, -0.4, 0.6)]
    ns = 2000
    for x0, x1, y0, y1 in cases:
        xs = x0 + (np.arange(ns) + 0.5) / ns * (x1 - x0)
        ys = y0 + (np.arange(ns) + 0.5) / ns * (y1 - y0)
        frac = np.mean(xs[None, :] ** 2 + ys[:, None] ** 2 < r * r)
        got = float(circle_rect_area(x0, x1, y0, y1, r)) / ((x1 - x0) * (y1 - y0))
        assert abs(got - frac) < 2e-3


def test_exact_area_whole_disc_and_symmetry():
    for r in (0.1, 1.0, 7.3, 400.0):
        assert circle_rect_area(-r, r, -r, r, r) == pytest.approx(math.pi * r * r, rel=1e-12)
        # a quarter of the disc in each quadrant
        assert circle_rect_area(0, r, -r, 0, r) == pytest.approx(math.pi * r * r / 4, rel=1e-12)
    a = circle_rect_area(0.3, 1.3, -2.2, -1.2, 2.0)
    assert a == pytest.approx(circle_rect_area(-1.3, -0.3, 1.2, 2.2, 2.0), rel=1e-14)


@pytest.mark.parametrize("r", [0.4, 3.0, 12.5])
def test_exact_weights_sum_to_area(kernel_backend, rng, r):
    x = rng.uniform(50, 60, 20)
    y = rng.uniform(50, 60, 20)
    w, *_ = circle_weight_stamps(x, y, r, method="exact")
    np.testing.assert_allclose(w.sum(axis=(1, 2)), math.pi * r * r, rtol=1e-12)
    assert w.min() >= 0 and w.max() <= 1 + 1e-12
    w, *_ = circle_weight_stamps(x, y, r + 1.5, r_in=r, method="exact")
    np.testing.assert_allclose(w.sum(axis=(1, 2)), math.pi * ((r + 1.5) ** 2 - r * r),
                               rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# masks: parity with photutils
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("annulus", [False, True])
def test_masks_match_photutils(kernel_backend, rng, method, annulus):
    x, y = _random_positions(rng, 60, 40, 40)
    for r in (0.7, 3.0, 6.4):
        if annulus:
            ours = CircularAnnulus(np.c_[x, y], r, r + 2.5).to_mask(method=method, subpixels=4)
            ref = pa.CircularAnnulus(np.c_[x, y], r, r + 2.5).to_mask(method=method,
                                                                      subpixels=4)
        else:
            ours = CircularAperture(np.c_[x, y], r).to_mask(method=method, subpixels=4)
            ref = pa.CircularAperture(np.c_[x, y], r).to_mask(method=method, subpixels=4)
        for m1, m2 in zip(ours, ref, strict=True):
            assert (m1.bbox.ixmin, m1.bbox.ixmax, m1.bbox.iymin, m1.bbox.iymax) == (
                m2.bbox.ixmin, m2.bbox.ixmax, m2.bbox.iymin, m2.bbox.iymax)
            tol = 1e-10 if method == "exact" else 0.0
            np.testing.assert_allclose(m1.data, m2.data, rtol=0, atol=tol)


def test_aperture_mask_methods_match_photutils(rng):
    data = rng.normal(size=(30, 40))
    for pos in [(20.3, 15.6), (1.2, 0.4), (38.7, 28.9)]:
        m1 = CircularAperture(pos, 4.2).to_mask()
        m2 = pa.CircularAperture(pos, 4.2).to_mask()
        assert isinstance(m1, ApertureMask) and m1.shape == m2.shape
        np.testing.assert_allclose(m1.to_image(data.shape), m2.to_image(data.shape), atol=1e-12)
        np.testing.assert_array_equal(m1.cutout(data, fill_value=-1.0),
                                      m2.cutout(data, fill_value=-1.0))
        np.testing.assert_allclose(m1.multiply(data), m2.multiply(data), atol=1e-12)
        np.testing.assert_allclose(m1.get_values(data), m2.get_values(data), atol=1e-12)
        np.testing.assert_allclose(np.asarray(m1), m2.data, atol=1e-12)
    far = CircularAperture((-50.0, -50.0), 3.0).to_mask()
    assert far.to_image(data.shape) is None and far.cutout(data) is None
    assert far.multiply(data) is None and far.get_values(data).size == 0


def test_bounding_box():
    bb = BoundingBox(1, 10, 2, 20)
    assert bb.shape == (18, 9) and bb.center == (10.5, 5.0)
    assert bb.extent == (0.5, 9.5, 1.5, 19.5)
    assert bb == BoundingBox(1, 10, 2, 20) and bb != BoundingBox(0, 10, 2, 20)
    assert CircularAperture((10.0, 3.3), 2.0).bbox == BoundingBox(8, 13, 1, 6)
    with pytest.raises(ValueError, match="ixmin must be <= ixmax"):
        BoundingBox(5, 4, 0, 1)
    with pytest.raises(TypeError, match="must all be integers"):
        BoundingBox(1.5, 4, 0, 1)


# ---------------------------------------------------------------------------------------------
# photometry: parity with photutils
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_aperture_photometry_matches_photutils(kernel_backend, rng, method):
    data = rng.normal(10.0, 3.0, (60, 80))
    error = rng.uniform(0.5, 2.0, data.shape)
    mask = rng.random(data.shape) < 0.03
    x, y = _random_positions(rng, 150, 80, 60, margin=12.0)
    for ours, ref in [
        (CircularAperture(np.c_[x, y], 4.3), pa.CircularAperture(np.c_[x, y], 4.3)),
        (CircularAnnulus(np.c_[x, y], 3.0, 7.5), pa.CircularAnnulus(np.c_[x, y], 3.0, 7.5)),
    ]:
        t1 = aperture_photometry(data, ours, error=error, mask=mask, method=method, subpixels=3)
        t2 = pa.aperture_photometry(data, ref, error=error, mask=mask, method=method,
                                    subpixels=3)
        assert t1.colnames == ["id", "x_center", "y_center", "aperture_sum", "aperture_sum_err"]
        assert t1.colnames == t2.colnames
        np.testing.assert_array_equal(t1["id"], t2["id"])
        np.testing.assert_array_equal(t1["x_center"], t2["x_center"])
        s1, s2 = np.asarray(t1["aperture_sum"]), np.asarray(t2["aperture_sum"])
        assert np.isnan(s2).any() and not np.isnan(s2).all()  # some apertures miss the image
        np.testing.assert_allclose(s1, s2, rtol=1e-10, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(t1["aperture_sum_err"], t2["aperture_sum_err"], rtol=1e-10,
                                   equal_nan=True)


def test_area_overlap_matches_photutils(kernel_backend, rng):
    data = np.zeros((40, 50))
    mask = rng.random(data.shape) < 0.1
    x, y = _random_positions(rng, 40, 50, 40)
    ours = CircularAperture(np.c_[x, y], 5.5).area_overlap(data, mask=mask)
    ref = pa.CircularAperture(np.c_[x, y], 5.5).area_overlap(data, mask=mask)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert CircularAperture((20.0, 20.0), 3.0).area_overlap(data) == pytest.approx(9 * math.pi)


def test_multiple_apertures_and_table_details(rng):
    data = rng.normal(size=(40, 40))
    pos = [(10.0, 12.0), (25.5, 30.2)]
    apers = [CircularAperture(pos, 2.0), CircularAperture(pos, 4.0)]
    tbl = aperture_photometry(data, apers)
    assert tbl.colnames == ["id", "x_center", "y_center", "aperture_sum_0", "aperture_sum_1"]
    ref = pa.aperture_photometry(data, [pa.CircularAperture(pos, 2.0),
                                        pa.CircularAperture(pos, 4.0)])
    for c in ("aperture_sum_0", "aperture_sum_1"):
        np.testing.assert_allclose(tbl[c], ref[c], rtol=1e-10)
    assert tbl["id"].dtype == np.int64
    np.testing.assert_array_equal(tbl["xcenter"], tbl["x_center"])  # pre-3.0 name
    assert tbl.meta["aperture0_r"] == 2.0
    with pytest.raises(ValueError, match="identical positions"):
        aperture_photometry(data, [CircularAperture(pos, 2.0), CircularAperture(pos[:1], 2.0)])
    with pytest.raises(TypeError, match="CircularAperture or CircularAnnulus"):
        aperture_photometry(data, "aperture")


def test_scalar_aperture_and_quantity_data():
    data = np.ones((30, 30)) * u.Jy
    sums, errs = CircularAperture((15.0, 15.0), 3.0).do_photometry(data, error=0.1 * data)
    assert sums.unit == u.Jy and errs.unit == u.Jy
    assert sums[0].value == pytest.approx(9 * math.pi, rel=1e-12)
    assert errs[0].value == pytest.approx(0.1 * math.sqrt(9 * math.pi), rel=1e-12)
    tbl = aperture_photometry(data, CircularAperture((15.0, 15.0), 3.0))
    assert tbl["aperture_sum"].unit == u.Jy
    with pytest.raises(ValueError, match="same unit"):
        CircularAperture((15.0, 15.0), 3.0).do_photometry(data, error=np.ones((30, 30)))


def test_nan_pixels_excluded_with_warning(kernel_backend, rng):
    data = rng.normal(5.0, 1.0, (30, 30))
    data[15, 15] = np.nan
    data[3, 20] = np.inf
    aper = CircularAperture([(15.0, 15.0), (20.0, 3.0), (5.0, 25.0)], 3.0)
    with pytest.warns(CrowdphotWarning, match="non-finite"):
        sums, _ = aper.do_photometry(data)
    bad = ~np.isfinite(data)
    ref, _ = pa.CircularAperture(aper.positions, 3.0).do_photometry(np.where(bad, 0.0, data),
                                                                     mask=bad)
    np.testing.assert_allclose(sums, ref, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = aper.do_photometry(data, mask=bad)  # covered by the mask: no warning
    np.testing.assert_array_equal(again, sums)


def test_circular_aperture_sums_function(kernel_backend, rng):
    data = rng.normal(size=(50, 50))
    x, y = rng.uniform(0, 49, 10), rng.uniform(0, 49, 10)
    sums, errs = circular_aperture_sums(data, x, y, 3.5, r_in=1.5, error=np.ones_like(data))
    ref, ref_err = pa.CircularAnnulus(np.c_[x, y], 1.5, 3.5).do_photometry(
        data, error=np.ones_like(data))
    np.testing.assert_allclose(sums, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(errs, ref_err, rtol=1e-10)
    with pytest.raises(ValueError, match="greater than r_in"):
        circular_aperture_sums(data, x, y, 1.0, r_in=2.0)


def test_empty_positions(kernel_backend):
    aper = CircularAperture(np.zeros((0, 2)), 3.0)
    assert len(aper) == 0
    sums, _ = aper.do_photometry(np.ones((10, 10)))
    assert sums.shape == (0,)


# ---------------------------------------------------------------------------------------------
# construction and container behaviour
# ---------------------------------------------------------------------------------------------
def test_position_formats():
    xs, ys = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    expected = np.c_[xs, ys]
    for positions in (list(zip(xs, ys, strict=True)), tuple(zip(xs, ys, strict=True)),
                      zip(xs, ys, strict=True), ((a, b) for a, b in zip(xs, ys, strict=True)),
                      expected):
        aper = CircularAperture(positions, r=2)
        np.testing.assert_array_equal(aper.positions, expected)
        assert not aper.isscalar and len(aper) == 3 and aper.shape == (3,)
    single = CircularAperture((5, 6), 2)
    assert single.isscalar and single.positions.shape == (2,) and single.shape == ()
    assert isinstance(single.bbox, BoundingBox)
    assert isinstance(single.to_mask(), ApertureMask)
    with pytest.raises(TypeError, match="no len"):
        len(single)
    with pytest.raises(TypeError, match="cannot be indexed"):
        single[0]
    aper = CircularAnnulus(expected, 2, 4)
    sub = aper[1:]
    assert isinstance(sub, CircularAnnulus) and len(sub) == 2 and sub.r_out == 4.0
    assert aper[0].isscalar
    assert [a.positions[0] for a in aper] == xs
    assert aper == CircularAnnulus(expected, 2.0, 4.0) and aper != CircularAnnulus(expected, 2, 5)
    assert aper.copy() == aper
    assert aper.area == pytest.approx(math.pi * 12)
    assert "CircularAnnulus" in repr(aper)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        (((1, 2), 0), ValueError, "'r' must be a positive scalar"),
        (((1, 2), -1.0), ValueError, "'r' must be a positive scalar"),
        (((1, 2), np.nan), ValueError, "'r' must be a positive scalar"),
        (((1, 2), [1.0, 2.0]), ValueError, "'r' must be a positive scalar"),
        (((1, 2), "3"), TypeError, "a real number"),
        (((1, 2), 3 * u.pix), TypeError, "not a Quantity"),
        (([(1, 2, 3)], 1.0), ValueError, "positions' must be"),
        (((1, 2, 3), 1.0), ValueError, "positions' must be"),
        (([[1, 2], [np.nan, 3]], 1.0), ValueError, "non-finite"),
        (([[1, 2], [3]], 1.0), ValueError, "positions' must be"),
        ((("a", "b"), 1.0), ValueError, "positions' must be"),
        (((1, 2) * u.pix, 1.0), TypeError, "not be a Quantity"),
    ],
)
def test_aperture_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        CircularAperture(*args)


def test_annulus_and_photometry_bad_input():
    with pytest.raises(ValueError, match="'r_out' must be greater than 'r_in'"):
        CircularAnnulus((1, 2), 3, 3)
    with pytest.raises(ValueError, match="'r_in' must be a positive scalar"):
        CircularAnnulus((1, 2), 0, 3)
    aper = CircularAperture((5, 5), 2)
    data = np.ones((10, 10))
    with pytest.raises(ValueError, match="mask must have the same shape"):
        aper.do_photometry(data, mask=np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="error must have the same shape"):
        aper.do_photometry(data, error=np.ones((5, 5)))
    with pytest.raises(ValueError, match="data must be a 2D"):
        aper.do_photometry(np.ones(10))
    with pytest.raises(ValueError, match="method must be one of"):
        aper.do_photometry(data, method="fast")
    with pytest.raises(ValueError, match="subpixels must be a strictly positive integer"):
        aper.to_mask(method="subpixel", subpixels=0)
    with pytest.raises(ValueError, match="subpixels must be a strictly positive integer"):
        aperture_photometry(data, aper, method="subpixel", subpixels=2.5)


# ---------------------------------------------------------------------------------------------
# plotting
# ---------------------------------------------------------------------------------------------
def test_plot_patches():
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        aper = CircularAperture(zip([10.0, 30.0], [20.0, 40.0], strict=True), r=5)
        patches = aper.plot(ax=ax, color="red", lw=2)
        assert isinstance(patches, list) and len(patches) == 2
        assert all(isinstance(p, mpatches.Circle) for p in patches)
        assert patches[1].center == (30.0, 40.0) and patches[1].radius == 5.0
        assert not patches[0].get_fill() and patches[0].get_linewidth() == 2
        assert len(ax.patches) == 2
        shifted = CircularAperture((10.0, 20.0), 3).plot(ax=ax, origin=(5, 5))
        assert shifted[0].center == (5.0, 15.0)
        ann = CircularAnnulus((10.0, 20.0), 2.0, 6.0).plot(ax=ax)
        assert ann[0].radii == (6.0, 6.0) and ann[0].width == 4.0
        plt.sca(ax)
        assert len(CircularAperture([(1, 1), (2, 2), (3, 3)], 1).plot()) == 3  # current axes
        assert len(ax.patches) == 7
    finally:
        plt.close(fig)
