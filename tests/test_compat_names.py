"""Names added for photutils drop-in compatibility, checked against photutils itself.

find_peaks, StarFinder, BoundingBox, sky apertures, apply_poisson_noise,
make_random_models_table, params_table_to_models, make_wcs, make_psf_model, fit_2dgaussian and
fit_fwhm: same outputs as photutils 3.0 on the same inputs (photutils is the oracle here).
"""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.modeling.models import Gaussian2D, Moffat2D
from astropy.table import QTable
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning

import crowdphot
from crowdphot.aperture import BoundingBox, SkyCircularAnnulus, SkyCircularAperture
from crowdphot.datasets import (
    apply_poisson_noise,
    make_random_models_table,
    make_wcs,
    params_table_to_models,
)
from crowdphot.detection import StarFinder, find_peaks
from crowdphot.psf import CircularGaussianPRF, fit_2dgaussian, fit_fwhm, make_psf_model
from crowdphot.utils import FitConvergenceWarning, LargeGroupWarning

pdet = pytest.importorskip("photutils.detection")
ppsf = pytest.importorskip("photutils.psf")
pap = pytest.importorskip("photutils.aperture")


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:80, :90]
    data = rng.normal(0.0, 0.3, (80, 90))
    for x, y, f in rng.uniform((5, 5, 20), (85, 75, 80), (25, 3)):
        data += f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.4**2))
    return data


@pytest.mark.parametrize("kwargs", [
    dict(box_size=3), dict(box_size=(5, 3)), dict(footprint=np.ones((4, 4), bool)),
    dict(min_separation=6.5), dict(box_size=3, border_width=(4, 9)), dict(n_peaks=5),
])
def test_find_peaks_matches_photutils(scene, kwargs):
    ours = find_peaks(scene, 2.0, **kwargs)
    ref = pdet.find_peaks(scene, 2.0, **kwargs)
    for col in ("x_peak", "y_peak", "peak_value"):
        np.testing.assert_array_equal(np.asarray(ours[col]), np.asarray(ref[col]))


def test_find_peaks_nan_and_constant(scene):
    data = scene.copy()
    data[10:20, 10:20] = np.nan
    ours, ref = find_peaks(data, 2.0), pdet.find_peaks(data, 2.0)
    np.testing.assert_array_equal(np.asarray(ours["x_peak"]), np.asarray(ref["x_peak"]))
    with pytest.warns(crowdphot.NoDetectionsWarning, match="Input data is constant"):
        assert find_peaks(np.ones((5, 5)), 0.0) is None
    with pytest.raises(ValueError, match="border_width must have integer values"):
        find_peaks(scene, 1.0, border_width=2.5)


@pytest.mark.parametrize("kwargs", [dict(), dict(min_separation=0), dict(n_brightest=4),
                                    dict(exclude_border=True, peak_max=40.0)])
def test_starfinder_matches_photutils(scene, kwargs):
    kernel = np.exp(-(np.mgrid[-3:4, -3:4] ** 2).sum(0) / (2 * 1.4**2))
    ours = StarFinder(3.0, kernel, **kwargs)(scene)
    ref = pdet.StarFinder(3.0, kernel, **kwargs)(scene)
    assert ours.colnames == ref.colnames
    for col in ref.colnames:
        np.testing.assert_allclose(np.asarray(ours[col]), np.asarray(ref[col]), rtol=1e-10,
                                   atol=1e-12)
    with pytest.warns(AstropyDeprecationWarning, match="'mask' positionally"):
        StarFinder(3.0, kernel).find_stars(scene, np.zeros(scene.shape, bool))


def test_bounding_box_operations():
    a, b = BoundingBox(1, 10, 2, 20), BoundingBox(5, 21, 7, 32)
    ra, rb = pap.BoundingBox(1, 10, 2, 20), pap.BoundingBox(5, 21, 7, 32)
    assert repr(a | b) == repr(ra | rb) and repr(a & b) == repr(ra & rb)
    assert a.intersection(BoundingBox(30, 40, 50, 60)) is None
    assert repr(BoundingBox.from_float(1.4, 10.4, 1.6, 10.6)) == repr(
        pap.BoundingBox.from_float(1.4, 10.4, 1.6, 10.6))
    with pytest.raises(TypeError, match="Can compare BoundingBox only"):
        _ = a == (1, 10, 2, 20)


def test_sky_apertures_to_pixel():
    wcs = make_wcs((100, 100))
    sky = wcs.pixel_to_world([30.0, 60.0], [40.0, 55.0])
    ours = SkyCircularAperture(sky, 0.5 * u.arcsec).to_pixel(wcs)
    ref = pap.SkyCircularAperture(sky, 0.5 * u.arcsec).to_pixel(wcs)
    np.testing.assert_allclose(ours.positions, ref.positions, atol=1e-8)
    np.testing.assert_allclose(ours.r, ref.r, rtol=1e-6)
    ann = SkyCircularAnnulus(sky[0], 0.3 * u.arcsec, 0.6 * u.arcsec).to_pixel(wcs)
    np.testing.assert_allclose([ann.r_in, ann.r_out], [3.0, 6.0], rtol=1e-6)
    with pytest.raises(ValueError, match="'r_in' must have angular units"):
        SkyCircularAnnulus(sky, 0.5 * u.pix, 7 * u.pix)
    assert isinstance(sky, SkyCoord)


def test_datasets_helpers():
    pds = pytest.importorskip("photutils.datasets")
    data = np.full((50, 50), 7.0)
    np.testing.assert_array_equal(apply_poisson_noise(data, seed=1),
                                  pds.apply_poisson_noise(data, seed=1))
    with pytest.raises(ValueError, match="must not contain any negative values"):
        apply_poisson_noise(-data)
    ranges = {"x_0": (0, 30), "flux": (1, 5)}
    ours, ref = make_random_models_table(6, ranges, seed=4), pds.make_random_models_table(
        6, ranges, seed=4)
    for col in ref.colnames:
        np.testing.assert_array_equal(np.asarray(ours[col]), np.asarray(ref[col]))
    models = params_table_to_models(QTable({"x_mean": [1.0, 2.0], "name": ["a", "b"]}),
                                    Gaussian2D())
    assert [m.x_mean.value for m in models] == [1.0, 2.0] and models[1].name == "b"
    assert make_wcs((10, 20), galactic=True).wcs.ctype[0] == "GLON-CAR"


def test_make_psf_model_matches_photutils():
    yy, xx = np.mgrid[:31, :31]
    moffat = Moffat2D(amplitude=1.0, x_0=15.2, y_0=14.7, gamma=2.2, alpha=3.1)
    ours = make_psf_model(moffat, x_name="x_0", y_name="y_0")
    ref = ppsf.make_psf_model(moffat, x_name="x_0", y_name="y_0")
    assert ours.param_names == ref.param_names
    assert (ours.x_name, ours.y_name, ours.flux_name) == (ref.x_name, ref.y_name, ref.flux_name)
    np.testing.assert_allclose(ours(xx, yy), ref(xx, yy), rtol=1e-3)
    free = [n for n in ours.param_names if not ours.fixed[n]]
    assert free == [n for n in ref.param_names if not ref.fixed[n]]


def test_fit_2dgaussian_and_fwhm_recover_truth():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:60, :60]
    truth = [(15.3, 20.8, 400.0), (44.1, 38.6, 600.0)]
    data = sum(CircularGaussianPRF(x_0=x, y_0=y, flux=f, fwhm=3.1)(xx, yy) for x, y, f in truth)
    data = data + rng.normal(0.0, 0.05, data.shape)
    tbl = fit_2dgaussian(data, xypos=[t[:2] for t in truth], fit_shape=7, fix_fwhm=False).results
    np.testing.assert_allclose(tbl["x_fit"], [t[0] for t in truth], atol=0.02)
    np.testing.assert_allclose(tbl["flux_fit"], [t[2] for t in truth], rtol=0.01)
    np.testing.assert_allclose(fit_fwhm(data, xypos=[t[:2] for t in truth], fit_shape=7),
                               3.1, rtol=0.01)
    with pytest.warns(AstropyUserWarning, match="fit_shape is None"):
        fit_2dgaussian(data[5:26, 5:26], fwhm=3)
    with pytest.raises(ValueError, match="fit_shape is required when fitting multiple"):
        fit_2dgaussian(data, xypos=[t[:2] for t in truth])


def test_warning_classes_are_astropy_user_warnings():
    assert issubclass(FitConvergenceWarning, AstropyUserWarning)
    assert issubclass(LargeGroupWarning, AstropyUserWarning)


@pytest.mark.parametrize("method", ["interp", "oversample", "integrate"])
def test_make_model_image_discretize_methods_match_photutils(method):
    pds = pytest.importorskip("photutils.datasets")
    from crowdphot.datasets import make_model_image

    params = QTable({"x_0": [20.0, 41.3], "y_0": [18.0, 30.6], "gamma": [1.7, 2.3],
                     "alpha": [2.9, 4.6]})
    # 7 x 7 stamps: 'integrate' runs a 2-D quadrature per pixel on both sides (37 s at 11 x 11)
    ours = make_model_image((50, 60), Moffat2D(amplitude=1), params, model_shape=(7, 7),
                            discretize_method=method)
    ref = pds.make_model_image((50, 60), Moffat2D(amplitude=1), params, model_shape=(7, 7),
                               discretize_method=method)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)
