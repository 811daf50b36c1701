"""Tests for crowdphot.background.core: scalar estimators and LocalBackground."""

import warnings

import numpy as np
import pytest
from astropy.stats import SigmaClip
from astropy.utils.exceptions import AstropyUserWarning

from crowdphot.aperture.core import CircularAnnulus
from crowdphot.background.core import (
    LocalBackground,
    MeanBackground,
    MedianBackground,
    MMMBackground,
    ModeEstimatorBackground,
)

pb = pytest.importorskip("photutils.background")

ESTIMATORS = ["MeanBackground", "MedianBackground", "MMMBackground"]


def _sky_image(rng, shape=(120, 160), sky=10.0, noise=2.0, nstars=150):
    """Flat sky + Gaussian noise + bright point-like outliers (stars)."""
    data = rng.normal(sky, noise, shape)
    ys = rng.integers(0, shape[0], nstars)
    xs = rng.integers(0, shape[1], nstars)
    data[ys, xs] += rng.uniform(50, 500, nstars)
    return data


def _clips():
    return {"default": {}, "none": {"sigma_clip": None},
            "custom": {"sigma_clip": SigmaClip(sigma=2.5, maxiters=5)}}


# ---------------------------------------------------------------------------------------------
# estimators
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("clip", ["default", "none", "custom"])
def test_estimators_match_photutils(rng, name, clip):
    import crowdphot.background.core as cb

    data = _sky_image(rng, shape=(40, 30))
    ours = getattr(cb, name)(**_clips()[clip])
    ref = getattr(pb, name)(**_clips()[clip])
    for axis in (None, 0, 1):
        np.testing.assert_allclose(ours(data, axis=axis), ref(data, axis=axis), rtol=1e-10)
        np.testing.assert_allclose(ours.calc_background(data, axis=axis),
                                   ref.calc_background(data, axis=axis), rtol=1e-10)
    masked = np.ma.MaskedArray(data, mask=rng.random(data.shape) < 0.3)
    masked.mask[:, 3] = True  # an all-masked column -> NaN / masked
    r1 = ours(masked, axis=0, masked=True)
    r2 = ref(masked, axis=0, masked=True)
    assert isinstance(r1, np.ma.MaskedArray)
    np.testing.assert_array_equal(r1.mask, r2.mask)
    assert r1.mask[3]
    np.testing.assert_allclose(r1.compressed(), r2.compressed(), rtol=1e-10)
    assert np.isnan(ours(masked, axis=0)[3])
    assert isinstance(ours(data), float)


def test_mmm_is_three_median_minus_two_mean(rng):
    data = rng.exponential(3.0, 501)
    no_clip = MMMBackground(sigma_clip=None)(data)
    assert no_clip == pytest.approx(3 * np.median(data) - 2 * np.mean(data), rel=1e-12)
    # with clipping, the rule applies to the surviving values
    data = np.concatenate([rng.normal(5.0, 1.0, 400), [1e4, -1e4, 500.0]])
    kept = SigmaClip(sigma=3.0, maxiters=10)(data, masked=True).compressed()
    assert kept.size < data.size
    assert MMMBackground()(data) == pytest.approx(3 * np.median(kept) - 2 * np.mean(kept),
                                                  rel=1e-12)
    assert MedianBackground()(data) == pytest.approx(np.median(kept), rel=1e-12)
    assert MeanBackground()(data) == pytest.approx(np.mean(kept), rel=1e-12)
    mode = ModeEstimatorBackground(median_factor=2.5, mean_factor=1.5)(data)
    assert mode == pytest.approx(2.5 * np.median(kept) - 1.5 * np.mean(kept), rel=1e-12)


def test_default_sigma_clip_is_fresh_per_instance():
    a, b = MMMBackground(), MMMBackground()
    for est in (a, b):
        assert isinstance(est.sigma_clip, SigmaClip)
        assert est.sigma_clip.sigma == 3.0 and est.sigma_clip.maxiters == 10
    assert a.sigma_clip is not b.sigma_clip
    assert MedianBackground(sigma_clip=None).sigma_clip is None
    custom = SigmaClip(sigma=2.0)
    assert MeanBackground(sigma_clip=custom).sigma_clip is custom
    assert "MMMBackground(sigma_clip=" in repr(a)


def test_estimator_bad_input():
    with pytest.raises(TypeError, match="sigma_clip must be an astropy SigmaClip"):
        MedianBackground(sigma_clip=3.0)
    with pytest.raises(ValueError, match="median_factor must be a finite number"):
        ModeEstimatorBackground(median_factor=np.nan)
    from astropy.utils.exceptions import AstropyDeprecationWarning

    with pytest.warns(AstropyDeprecationWarning, match="'axis' positionally"):
        assert MedianBackground()(np.ones((2, 5)), 1).shape == (2,)


def test_all_nan_gives_nan():
    for est in (MedianBackground(sigma_clip=None), MeanBackground(sigma_clip=None),
                MMMBackground(sigma_clip=None)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.isnan(est(np.full(4, np.nan), axis=0))
            assert np.isnan(est(np.ma.MaskedArray(np.ones(4), mask=True)))
    # astropy's clipper reports the NaN input, exactly as under photutils
    with pytest.warns(AstropyUserWarning, match="invalid values"):
        assert np.isnan(MMMBackground()(np.full(4, np.nan), axis=0))


# ---------------------------------------------------------------------------------------------
# LocalBackground
# ---------------------------------------------------------------------------------------------
def _positions(rng, n, shape, margin=15.0):
    x = rng.uniform(-margin, shape[1] - 1 + margin, n)
    y = rng.uniform(-margin, shape[0] - 1 + margin, n)
    x[: n // 4], y[: n // 4] = np.round(x[: n // 4]), np.round(y[: n // 4])  # centre-rule ties
    x[0], y[0] = -40.0, -40.0  # annulus entirely off the image
    return x, y


@pytest.mark.parametrize("name", ESTIMATORS)
def test_local_background_matches_photutils(kernel_backend, rng, name):
    import crowdphot.background.core as cb

    data = _sky_image(rng)
    mask = rng.random(data.shape) < 0.03
    x, y = _positions(rng, 200, data.shape)
    for r_in, r_out, clip in [(5, 10, "default"), (3.5, 7.2, "none"), (4, 6, "custom")]:
        ours = LocalBackground(r_in, r_out, bkg_estimator=getattr(cb, name)(**_clips()[clip]))
        ref = pb.LocalBackground(r_in, r_out, bkg_estimator=getattr(pb, name)(**_clips()[clip]))
        b1 = ours(data, x, y, mask=mask)
        b2 = ref(data, x, y, mask=mask)
        assert b1.shape == (200,) and np.isnan(b2[0])
        np.testing.assert_allclose(b1, b2, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_local_background_default_and_generic_callable(kernel_backend, rng):
    data = _sky_image(rng)
    x, y = _positions(rng, 40, data.shape)
    b1 = LocalBackground(4, 9)(data, x, y)
    b2 = pb.LocalBackground(4, 9)(data, x, y)  # photutils default: sigma-clipped median
    np.testing.assert_allclose(b1, b2, rtol=1e-10, equal_nan=True)
    # a plain function goes through the per-source path (off-image annuli: NaN, no call)
    inside = np.isfinite(b2)
    b3 = LocalBackground(4, 9, bkg_estimator=np.mean)(data, x, y)
    b4 = pb.LocalBackground(4, 9, bkg_estimator=np.mean)(data, x[inside], y[inside])
    np.testing.assert_allclose(b3[inside], b4, rtol=1e-10)
    assert np.all(np.isnan(b3[~inside])) and (~inside).sum() >= 1
    # photutils estimators are accepted (and vectorised through calc_background)
    b5 = LocalBackground(4, 9, bkg_estimator=pb.MMMBackground())(data, x, y)
    b6 = pb.LocalBackground(4, 9, bkg_estimator=pb.MMMBackground())(data, x, y)
    np.testing.assert_allclose(b5, b6, rtol=1e-10, equal_nan=True)


def test_local_background_recovers_sky(kernel_backend, rng):
    sky, noise = 25.0, 3.0
    data = _sky_image(rng, sky=sky, noise=noise, nstars=300)
    x = rng.uniform(20, 140, 50)
    y = rng.uniform(20, 100, 50)
    bkg = LocalBackground(5, 10, bkg_estimator=MedianBackground())(data, x, y)
    m = CircularAnnulus(np.c_[x, y], 5, 10).area
    # median of ~235 Gaussian pixels: sigma ~ 1.25 * noise / sqrt(m); allow 5 sigma
    assert np.all(np.abs(bkg - sky) < 5 * 1.25 * noise / np.sqrt(m))
    assert abs(np.mean(bkg) - sky) < 5 * 1.25 * noise / np.sqrt(m * x.size)


def test_local_background_scalar_nan_and_masked_pixels(kernel_backend, rng):
    data = _sky_image(rng)
    lb = LocalBackground(5, 10)
    single = lb(data, 60.0, 50.0)
    assert isinstance(single, float)
    assert np.isnan(lb(data, -50.0, -50.0))
    # NaN pixels are ignored: same result as masking them
    nan_data = data.copy()
    nan_data[45:50, 52:58] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = lb(nan_data, 60.0, 50.0)
    assert got == lb(data, 60.0, 50.0, mask=np.isnan(nan_data))
    assert got != single
    # a fully masked annulus gives NaN
    assert np.isnan(lb(data, 60.0, 50.0, mask=np.ones(data.shape, bool)))
    ann = lb.to_aperture([10.0, 20.0], [30.0, 40.0])
    assert isinstance(ann, CircularAnnulus) and ann.r_in == 5 and len(ann) == 2


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((0, 5), {}, ValueError, "inner_radius must be positive"),
        ((3, -1), {}, ValueError, "outer_radius must be positive"),
        ((5, 5), {}, ValueError, "outer_radius must be greater than inner_radius"),
        ((5, 3), {}, ValueError, "outer_radius must be greater than inner_radius"),
        ((3, 5), {"bkg_estimator": "median"}, TypeError, "bkg_estimator must be callable"),
    ],
)
def test_local_background_bad_construction(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LocalBackground(*args, **kwargs)


def test_local_background_bad_call():
    lb = LocalBackground(3, 5)
    data = np.ones((20, 20))
    with pytest.raises(ValueError, match="mask must have the same shape"):
        lb(data, 5.0, 5.0, mask=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="NaN or inf"):
        lb(data, [5.0, np.nan], [5.0, 6.0])
    with pytest.raises(ValueError, match="equal length"):
        lb(data, [5.0, 6.0], [5.0])
    with pytest.raises(ValueError, match="data must be a 2D"):
        lb(np.ones(5), 1.0, 1.0)
