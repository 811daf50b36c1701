"""Tests for crowdphot.background: Background2D, the extra estimators and the interpolators.

photutils 3.0 is the oracle: the same data and options must give the same meshes, maps and
pixel counts (1e-10 relative; photutils is deterministic here).
"""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import NDData
from astropy.stats import SigmaClip
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning

import crowdphot
import crowdphot.background as cb
from crowdphot.background.interpolators import zoom_mesh
from crowdphot.core.kernels.meshstats import clip_sorted_rows, range_mad, range_stats, sparse_rows

pb = pytest.importorskip("photutils.background")

RTOL = 1e-10
ATTRS = ("background_mesh", "background_rms_mesh", "background", "background_rms",
         "background_median", "background_rms_median")


def _sky(rng, shape=(150, 205), nstars=120):
    """Sky 20 with a gradient, unit Gaussian noise and bright point-like stars."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    truth = 20.0 + 0.02 * xx - 0.01 * yy
    data = truth + rng.normal(0.0, 1.0, shape)
    ys = rng.integers(0, shape[0], nstars)
    xs = rng.integers(0, shape[1], nstars)
    data[ys, xs] += rng.uniform(50, 500, nstars)
    return data, truth


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyDeprecationWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        return func(*args, **kwargs)


def _assert_same(ours, ref, rtol=RTOL):
    for name in ATTRS:
        a = np.asanyarray(getattr(ours, name))
        b = np.asanyarray(getattr(ref, name))
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=name)
    np.testing.assert_array_equal(ours.n_pixels_mesh, ref.n_pixels_mesh)
    np.testing.assert_array_equal(ours.n_pixels_map, ref.n_pixels_map)


# ---------------------------------------------------------------------------------------------
# scalar estimators
# ---------------------------------------------------------------------------------------------
NEW_ESTIMATORS = ["SExtractorBackground", "BiweightLocationBackground", "StdBackgroundRMS",
                  "MADStdBackgroundRMS", "BiweightScaleBackgroundRMS"]


@pytest.mark.parametrize("name", NEW_ESTIMATORS)
@pytest.mark.parametrize("clip", [{}, {"sigma_clip": None},
                                  {"sigma_clip": SigmaClip(sigma=2.5, maxiters=5)}])
def test_new_estimators_match_photutils(rng, name, clip):
    data, _ = _sky(rng, shape=(40, 30))
    ours, ref = getattr(cb, name)(**clip), getattr(pb, name)(**clip)
    assert repr(ours) == repr(ref)
    for axis in (None, 0, 1):
        np.testing.assert_allclose(ours(data, axis=axis), ref(data, axis=axis), rtol=RTOL)
    masked = np.ma.MaskedArray(data, mask=rng.random(data.shape) < 0.3)
    masked.mask[:, 3] = True
    r1, r2 = ours(masked, axis=0, masked=True), ref(masked, axis=0, masked=True)
    np.testing.assert_array_equal(r1.mask, r2.mask)
    np.testing.assert_allclose(r1.compressed(), r2.compressed(), rtol=RTOL)
    assert isinstance(ours(data), float)


def test_sextractor_rule_branches():
    est = cb.SExtractorBackground(sigma_clip=None)
    assert est(np.full(10, 3.0)) == 3.0  # std == 0 -> mean
    skewed = np.concatenate([np.zeros(50), np.full(10, 10.0)])  # |mean - median|/std >= 0.3
    assert est(skewed) == 0.0
    sym = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert est(sym) == pytest.approx(2.5 * 3.5 - 1.5 * 3.5)


def test_estimator_positional_options_deprecated():
    with pytest.warns(AstropyDeprecationWarning, match="positionally"):
        est = cb.BiweightScaleBackgroundRMS(8.0)
    assert est.c == 8.0


# ---------------------------------------------------------------------------------------------
# batched clipping kernels against astropy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [SigmaClip(sigma=3.0, maxiters=10),
                                  SigmaClip(sigma_lower=2.0, sigma_upper=2.5, maxiters=None),
                                  SigmaClip(sigma=2.5, cenfunc="mean", maxiters=3),
                                  SigmaClip(sigma=3.0, stdfunc="mad_std")])
def test_clip_sorted_rows_matches_astropy(rng, clip):
    rows = rng.normal(10.0, 2.0, (60, 257))
    rows[rng.random(rows.shape) < 0.02] += 300.0
    rows[rng.random(rows.shape) < 0.1] = np.nan
    rows[3] = np.nan  # empty row
    rows[4, 3:] = np.nan  # three values
    rows[5, 7] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = clip(rows, axis=1, masked=False)
        ref_med = np.nanmedian(ref, axis=1)
        ref_mean = np.nanmean(ref, axis=1)
        ref_std = np.nanstd(ref, axis=1)
    work = rows.copy()
    lo, hi = clip_sorted_rows(work, clip)
    np.testing.assert_array_equal(hi - lo, np.count_nonzero(~np.isnan(ref), axis=1))
    med, mean, std = range_stats(work, lo, hi)
    for ours, theirs in ((med, ref_med), (mean, ref_mean), (std, ref_std)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, equal_nan=True)
    kept = ~np.isnan(ref)
    mad = np.array([np.median(np.abs(r[k] - np.median(r[k]))) if k.any() else np.nan
                    for r, k in zip(ref, kept, strict=True)])
    np.testing.assert_allclose(range_mad(work, lo, hi), mad, rtol=1e-12, equal_nan=True)


def test_clip_shrink_rule_and_kernel_checks():
    """astropy's axis=None rule keeps what survived; with an axis, all inside the last bounds."""
    rows = np.array([[2.7, -5.3, 2.0, -1.7, 1.1, 0.4, -2.3, -2.8, -2.4, 15.0]])
    clip = SigmaClip(sigma=2.0, cenfunc="mean", stdfunc="mad_std", maxiters=5)
    ref_axis = clip(rows.copy(), axis=1, masked=False)
    ref_none = clip(rows[0].copy(), masked=False)
    assert np.count_nonzero(~np.isnan(ref_axis)) == ref_none.size + 1  # -5.3 comes back
    for shrink, ref in ((False, ref_axis[~np.isnan(ref_axis)]), (True, ref_none)):
        work = rows.copy()
        lo, hi = clip_sorted_rows(work, clip, shrink=shrink)
        np.testing.assert_array_equal(work[0, lo[0]:hi[0]], np.sort(ref))
    with pytest.raises(ValueError, match="inconsistent kernel arguments"):
        range_stats(rows, np.array([0]), np.array([11]))
    from scipy import sparse

    w = sparse.csr_matrix(np.array([[0.25, 0.75]]))
    with pytest.raises(ValueError, match="inconsistent kernel arguments"):
        sparse_rows(w, np.ones((1, 3)))  # column index 1 beyond the 1-row matrix


# ---------------------------------------------------------------------------------------------
# Background2D parity
# ---------------------------------------------------------------------------------------------
CASES = {
    "default": {},
    "mask": {"mask": "mask"},
    "coverage": {"coverage_mask": "coverage", "fill_value": -1.0},
    "no-filter": {"filter_size": 1},
    "filter-5x3": {"filter_size": (5, 3)},
    "threshold": {"filter_threshold": 21.0},
    "threshold-none-above": {"filter_threshold": 1e6},
    "exclude-5": {"exclude_percentile": 5.0, "box_size": 25, "sigma_clip": None},
    "exclude-100": {"exclude_percentile": 100.0, "mask": "mask"},
    "no-clip": {"sigma_clip": None},
    "clip-mean-madstd": {"sigma_clip": SigmaClip(sigma=2.5, cenfunc="mean", stdfunc="mad_std")},
    "clip-grow": {"sigma_clip": SigmaClip(sigma=3.0, grow=1.0), "box_size": (30, 41)},
    "box-bigger-than-image": {"box_size": (400, 64)},
}


@pytest.mark.parametrize("case", list(CASES))
def test_background2d_matches_photutils(rng, case):
    data, _ = _sky(rng)
    kwargs = dict(CASES[case])
    box = kwargs.pop("box_size", (32, 47))
    masks = {"mask": rng.random(data.shape) < 0.05,
             "coverage": np.zeros(data.shape, bool)}
    masks["mask"][60:120, 80:150] = True  # whole boxes excluded -> filled from neighbours
    masks["coverage"][:, :20] = True
    for key in ("mask", "coverage_mask"):
        if key in kwargs:
            kwargs[key] = masks[kwargs[key]]
    ours = cb.Background2D(data, box, **kwargs)
    ref = pb.Background2D(data, box, **kwargs)
    _assert_same(ours, ref)


@pytest.mark.parametrize("bkg", ["MeanBackground", "MedianBackground", "MMMBackground",
                                 "SExtractorBackground", "BiweightLocationBackground"])
@pytest.mark.parametrize("rms", ["StdBackgroundRMS", "MADStdBackgroundRMS",
                                 "BiweightScaleBackgroundRMS"])
def test_background2d_estimators_match_photutils(rng, bkg, rms):
    data, _ = _sky(rng, shape=(96, 130))
    ours = cb.Background2D(data, 24, bkg_estimator=getattr(cb, bkg)(),
                           bkg_rms_estimator=getattr(cb, rms)())
    ref = pb.Background2D(data, 24, bkg_estimator=getattr(pb, bkg)(),
                          bkg_rms_estimator=getattr(pb, rms)())
    _assert_same(ours, ref)


def test_background2d_custom_callables_and_mode_estimator(rng):
    data, _ = _sky(rng, shape=(96, 130))

    def trimmed_mean(values, axis=None):
        return np.nanmean(values, axis=axis)

    ours = cb.Background2D(data, 24, bkg_estimator=trimmed_mean,
                           bkg_rms_estimator=cb.ModeEstimatorBackground(median_factor=2.0,
                                                                        mean_factor=1.0))
    ref = pb.Background2D(data, 24, bkg_estimator=trimmed_mean,
                          bkg_rms_estimator=pb.ModeEstimatorBackground(median_factor=2.0,
                                                                       mean_factor=1.0))
    _assert_same(ours, ref)


@pytest.mark.parametrize("interp", [{"order": 1}, {"order": 5}, {"order": 3, "mode": "mirror"},
                                    {"order": 3, "mode": "nearest"}, {"clip": False}])
def test_zoom_interpolator_matches_photutils(rng, interp):
    data, _ = _sky(rng)
    ours = _quiet(cb.Background2D, data, (32, 47),
                  interpolator=_quiet(cb.BkgZoomInterpolator, **interp))
    ref = _quiet(pb.Background2D, data, (32, 47),
                 interpolator=_quiet(pb.BkgZoomInterpolator, **interp))
    _assert_same(ours, ref)


def test_idw_interpolator_matches_photutils(rng):
    data, _ = _sky(rng, shape=(80, 110))
    mask = np.zeros(data.shape, bool)
    mask[:30, :30] = True  # excluded boxes -> only the good centres are used
    ours = _quiet(cb.Background2D, data, 16, mask=mask,
                  interpolator=_quiet(cb.BkgIDWInterpolator))
    ref = _quiet(pb.Background2D, data, 16, mask=mask,
                 interpolator=_quiet(pb.BkgIDWInterpolator))
    _assert_same(ours, ref)


def test_zoom_mesh_equals_scipy_zoom(rng):
    from scipy import ndimage

    mesh = rng.normal(0.0, 1.0, (7, 9))
    for order in range(6):
        for mode in ("reflect", "mirror", "grid-mirror", "nearest"):
            ref = ndimage.zoom(mesh, (13, 8), order=order, mode=mode, grid_mode=True)[:85, :70]
            np.testing.assert_allclose(zoom_mesh(mesh, (13, 8), (85, 70), order=order,
                                                 mode=mode), ref, rtol=1e-12, atol=1e-12)


def test_nonfinite_units_and_dtypes(rng):
    data, _ = _sky(rng, shape=(96, 130))
    data[10:12, 40:60] = np.nan
    data[50, 50] = np.inf
    with pytest.warns(AstropyUserWarning, match="non-finite"):
        ours = cb.Background2D(data, 24)
    with pytest.warns(AstropyUserWarning, match="non-finite"):
        ref = pb.Background2D(data, 24)
    _assert_same(ours, ref)
    # masked non-finite pixels do not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cb.Background2D(data, 24, mask=~np.isfinite(data))
    clean, _ = _sky(rng, shape=(96, 130))
    q = cb.Background2D(clean * u.Jy, 24)
    assert q.background.unit == u.Jy and q.background_median.unit == u.Jy
    assert q.background_rms_mesh.unit == u.Jy
    nd = cb.Background2D(NDData(clean, unit=u.Jy), 24)
    np.testing.assert_allclose(nd.background.value, q.background.value)
    f32 = cb.Background2D(clean.astype(np.float32), 24)
    assert f32.background.dtype == np.float32
    ref32 = pb.Background2D(clean.astype(np.float32), 24)
    np.testing.assert_allclose(f32.background, ref32.background, rtol=1e-5)
    ints = cb.Background2D(np.round(clean * 10).astype(int), 24)
    assert ints.background.dtype == np.float32


def test_recovers_gradient_sky_under_stars(rng):
    """Seeded simulate-then-recover: the map follows the true gradient within the noise."""
    data, truth = _sky(rng, shape=(256, 256), nstars=400)
    # no median filter: at the mesh's edges it biases a gradient (photutils' behaviour)
    bkg = cb.Background2D(data, 32, filter_size=1)
    # a 32x32 box statistic has error ~1/32; within the mesh centres the cubic spline of a
    # linear sky is exact, beyond them it is flat (reflect mode)
    inner = (slice(16, -16), slice(16, -16))
    resid = (bkg.background - truth)[inner]
    assert abs(np.median(resid)) < 0.05
    assert np.max(np.abs(resid)) < 0.25
    assert bkg.background_rms_median == pytest.approx(1.0, abs=0.05)


def test_errors_match_photutils(rng):
    data, _ = _sky(rng, shape=(50, 60))
    cases = [((data, 0), {}, "box_size must be > 0"),
             ((data, (1, 2, 3)), {}, "box_size must have 1 or 2 elements"),
             ((data, 2.5), {}, "box_size must have integer values"),
             ((data, 10), {"filter_size": 2}, "filter_size must have an odd value"),
             ((data, 10), {"exclude_percentile": 101}, "exclude_percentile must be between"),
             ((data, 10), {"mask": np.zeros((3, 3), bool)}, "data and mask must have the same"),
             ((data, 10), {"coverage_mask": np.zeros(5, bool)}, "coverage_mask must be a 2D"),
             ((np.full((10, 10), np.nan), 5), {}, "all non-finite"),
             ((data, 10), {"mask": np.ones(data.shape, bool)}, "All input pixels are masked"),
             ((data[0], 10), {}, "data must be a 2D array")]
    for args, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            cb.Background2D(*args, **kwargs)
        with pytest.raises(ValueError, match=match):
            pb.Background2D(*args, **kwargs)
    half = rng.random(data.shape) < 0.5
    with pytest.raises(ValueError, match="All boxes contain <= 25.0 unmasked"):
        cb.Background2D(data, 5, mask=half, exclude_percentile=0)
    with pytest.raises(TypeError, match="sigma_clip must be an astropy SigmaClip"):
        cb.Background2D(data, 10, sigma_clip=3.0)


def test_deprecations_repr_and_box_cap(rng):
    data, _ = _sky(rng, shape=(50, 60))
    with pytest.warns(AstropyDeprecationWarning, match="'bkgrms_estimator' was deprecated"):
        b = cb.Background2D(data, 10, bkgrms_estimator=cb.MADStdBackgroundRMS())
    assert isinstance(b.bkg_rms_estimator, cb.MADStdBackgroundRMS)
    with pytest.warns(AstropyDeprecationWarning, match="BkgZoomInterpolator is deprecated"):
        interp = cb.BkgZoomInterpolator()
    with pytest.warns(AstropyDeprecationWarning, match="'interpolator' was deprecated"):
        b = cb.Background2D(data, 10, interpolator=interp)
    with pytest.warns(AstropyDeprecationWarning, match="Use n_pixels_mesh instead"):
        np.testing.assert_array_equal(b.npixels_mesh, b.n_pixels_mesh)
    with pytest.warns(AstropyDeprecationWarning, match="Use n_pixels_map instead"):
        assert b.npixels_map.shape == data.shape
    plain = cb.Background2D(data, 10)
    ref = pb.Background2D(data, 10)
    assert repr(plain) == repr(ref)
    assert str(plain).splitlines()[1:] == str(ref).splitlines()[1:]
    big = cb.Background2D(data, 1000, filter_size=1)
    assert big.background_mesh.shape == (1, 1)
    assert np.all(big.background == big.background_median)
    # the user's estimator keeps its own clipping
    est = cb.SExtractorBackground()
    cb.Background2D(data, 10, bkg_estimator=est)
    assert est.sigma_clip is not None


def test_plot_meshes(rng):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, _ = _sky(rng, shape=(50, 60))
    fig, ax = plt.subplots()
    cb.Background2D(data, 10).plot_meshes(ax=ax, outlines=True)
    assert len(ax.patches) == 30
    plt.close(fig)


def test_exports():
    for name in ("Background2D", "SExtractorBackground", "BiweightLocationBackground",
                 "StdBackgroundRMS", "MADStdBackgroundRMS", "BiweightScaleBackgroundRMS",
                 "BkgZoomInterpolator", "BkgIDWInterpolator", "BackgroundRMSBase"):
        assert getattr(crowdphot, name) is getattr(cb, name)
        assert name in cb.__all__


@pytest.mark.parametrize("name", NEW_ESTIMATORS)
def test_estimators_keep_units(name):
    data = np.arange(100.0).reshape(10, 10) << u.Jy
    est = getattr(cb, name)()
    value = est(data)
    ref = getattr(pb, name)()(data)
    assert isinstance(value, u.Quantity) and value.unit == u.Jy
    assert value.value == pytest.approx(ref.value, rel=RTOL)
    assert est(data, axis=1).unit == u.Jy


def test_biweight_options_match_photutils(rng):
    data, _ = _sky(rng, shape=(96, 130))
    data[:24, :24] = 21.0  # a constant box: MAD 0 -> the location, scale 0
    for kwargs in ({"c": 4.0}, {"c": 9.0, "M": 21.5}):
        ours = cb.Background2D(data, 24, bkg_estimator=cb.BiweightLocationBackground(**kwargs),
                               bkg_rms_estimator=cb.BiweightScaleBackgroundRMS(**kwargs))
        ref = pb.Background2D(data, 24, bkg_estimator=pb.BiweightLocationBackground(**kwargs),
                              bkg_rms_estimator=pb.BiweightScaleBackgroundRMS(**kwargs))
        _assert_same(ours, ref)


def test_masked_array_input_masks_its_pixels(rng):
    data, _ = _sky(rng, shape=(100, 100))
    hidden = np.zeros(data.shape, bool)
    hidden[:50] = True
    data[:50] += 100.0  # would bias everything if the mask were ignored
    md = np.ma.MaskedArray(data, mask=hidden)
    ours = cb.Background2D(md, 25)
    _assert_same(ours, pb.Background2D(md, 25))
    assert abs(ours.background_median - 20.25) < 0.3  # the unmasked half of the gradient


def test_warnings_point_at_the_caller(rng):
    """The non-finite and deprecation warnings name the line that built the Background2D (the
    checks run in helper functions of ``background._mesh``)."""
    data, _ = _sky(rng, shape=(50, 60))
    data[3, 4] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb.Background2D(data, 10, bkgrms_estimator=cb.MADStdBackgroundRMS(),
                        interpolator=cb.BkgIDWInterpolator())
    kinds = sorted(w.category.__name__ for w in caught)
    assert kinds == ["AstropyDeprecationWarning"] * 3 + ["AstropyUserWarning"]
    assert {w.filename for w in caught} == {__file__}
