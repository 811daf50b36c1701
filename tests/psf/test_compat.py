"""compat='photutils' (psf/_compat.py): photutils 3.0's behaviour where crowdphot differs.

photutils is the oracle: each deliberate difference of crowdphot's defaults is shown, then the
same call with ``compat='photutils'`` is compared with photutils itself.
"""

import warnings

import numpy as np
import pytest
from astropy.modeling.fitting import SimplexLSQFitter
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning

import crowdphot as cp
from crowdphot.psf._compat import check_compat, check_compat_options

pp = pytest.importorskip("photutils.psf")
pdet = pytest.importorskip("photutils.detection")


def _v(col):
    return np.asarray(getattr(col, "value", col), dtype=float)


@pytest.fixture(scope="module")
def photutils_scene():
    """photutils' own test scene (test_photometry's test_data fixture), same seed."""
    psf = cp.CircularGaussianPRF(flux=1, fwhm=2.7)
    data, _ = cp.make_psf_model_image((101, 101), psf, 10, model_shape=(9, 9),
                                      flux=(500, 700), min_separation=10, seed=0)
    data = data + cp.make_noise_image(data.shape, mean=0, stddev=0.9, seed=0)
    return data, np.full(data.shape, 0.9)


def test_runaway_refitted_as_photutils(photutils_scene):
    """A start between stars: crowdphot stops it at its stamp's edge (4096 + 8); with
    compat='photutils' the group is refitted as photutils fits it, to photutils' values."""
    data, error = photutils_scene
    init = QTable({"x": [42.0], "y": [36.0], "flux": [680.0]})
    with pytest.warns(AstropyUserWarning, match="may not have converged"):
        honest = cp.PSFPhotometry(cp.CircularGaussianPRF(fwhm=2.7), (5, 5))(
            data, error=error, init_params=init)
    assert int(honest["flags"][0]) == 4096 + 8
    phot = cp.PSFPhotometry(cp.CircularGaussianPRF(fwhm=2.7), (5, 5), compat="photutils")
    ours = phot(data, error=error, init_params=init)
    pphot = pp.PSFPhotometry(pp.CircularGaussianPRF(fwhm=2.7), (5, 5))
    theirs = pphot(data, error=error, init_params=init)
    assert int(ours["flags"][0]) == int(theirs["flags"][0]) == 0
    for name in ("x_fit", "y_fit", "flux_fit", "x_err", "y_err", "flux_err", "qfit",
                 "reduced_chi2"):
        np.testing.assert_allclose(_v(ours[name]), _v(theirs[name]), rtol=1e-6, err_msg=name)
    assert phot.fit_info[0]["status"] == 1
    np.testing.assert_allclose(phot.fit_info[0]["param_cov"], pphot.fit_info[0]["param_cov"],
                               rtol=1e-5, atol=1e-7)


def test_blank_image_keeps_start_position():
    """No signal at all: crowdphot reports NaN + absurd_value (8192); compat='photutils'
    reports photutils' start position and ~0 flux, with photutils' flags."""
    data = np.zeros((25, 25))
    init = QTable({"x_init": [12.0, np.nan, 12.0], "y_init": [12.0, 12.0, np.inf],
                   "flux_init": [500.0, 500.0, 500.0]})
    honest = cp.PSFPhotometry(cp.CircularGaussianPRF(fwhm=3.0), (5, 5))(data, init_params=init)
    assert np.isnan(_v(honest["flux_fit"])[0]) and int(honest["flags"][0]) & 8192
    ours = cp.PSFPhotometry(cp.CircularGaussianPRF(fwhm=3.0), (5, 5), compat="photutils")(
        data, init_params=init)
    theirs = pp.PSFPhotometry(pp.CircularGaussianPRF(fwhm=3.0), (5, 5))(data, init_params=init)
    np.testing.assert_array_equal(np.asarray(ours["flags"]), np.asarray(theirs["flags"]))
    np.testing.assert_array_equal(_v(ours["x_fit"]), _v(theirs["x_fit"]))
    np.testing.assert_array_equal(_v(ours["y_fit"]), _v(theirs["y_fit"]))
    assert abs(_v(ours["flux_fit"])[0]) < 1e-12  # photutils: 3.6e-15


def test_faint_field_only_photutils_bits():
    """36 faint isolated stars (S/N ~ 3): crowdphot stops the runaways; compat='photutils'
    sets no crowdphot bit and agrees with photutils wherever both report a clean fit."""
    rng = np.random.default_rng(3)
    n, side, step = 36, 6, 12
    x = (np.arange(n) % side) * step + 8 + rng.uniform(-0.5, 0.5, n)
    y = (np.arange(n) // side) * step + 8 + rng.uniform(-0.5, 0.5, n)
    shape = (side * step + 6, side * step + 6)
    psf = cp.CircularGaussianPRF(fwhm=3.3)
    data = cp.make_model_image(shape, psf, QTable({"x_0": x, "y_0": y, "flux": np.full(n, 30.)}),
                               model_shape=(13, 13)) + rng.normal(0.0, 5.0, shape)
    error = np.full(shape, 5.0)
    init = QTable({"x": x + rng.normal(0, 0.3, n), "y": y + rng.normal(0, 0.3, n),
                   "flux": np.full(n, 30.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        honest = cp.PSFPhotometry(psf, 5)(data, error=error, init_params=init)
        ours = cp.PSFPhotometry(psf, 5, compat="photutils")(data, error=error, init_params=init)
        theirs = pp.PSFPhotometry(pp.CircularGaussianPRF(fwhm=3.3), 5)(
            data, error=error, init_params=init)
    assert np.count_nonzero(np.asarray(honest["flags"]) & 4096) >= 3  # the refit path ran
    assert np.all(np.asarray(ours["flags"]) <= 4095)
    clean = (np.asarray(ours["flags"]) == 0) & (np.asarray(theirs["flags"]) == 0)
    assert np.count_nonzero(clean) >= n // 3
    for name in ("x_fit", "y_fit"):
        np.testing.assert_allclose(_v(ours[name])[clean], _v(theirs[name])[clean], atol=1e-3)
    np.testing.assert_allclose(_v(ours["flux_fit"])[clean], _v(theirs["flux_fit"])[clean],
                               rtol=1e-3)


def test_fit_shape_one():
    model = cp.CircularGaussianPRF(fwhm=1.0)
    for shape in (1, (-1, 1), (3, 1)):
        with pytest.raises(ValueError, match="fit_shape must be >= 3.*compat='photutils'"):
            cp.PSFPhotometry(model, shape)
    with pytest.raises(ValueError, match="fit_shape must have an odd value"):
        cp.PSFPhotometry(model, (0, 0))
    for shape, match in (((0, 0), "odd value"), ((4, 3), "odd value"), ((-1, 1), ">= 1")):
        with pytest.raises(ValueError, match=f"fit_shape must (have an odd value|be {match})"):
            cp.PSFPhotometry(model, shape, compat="photutils")
    data = np.zeros((15, 15))
    data[7, 7] = 100.0
    init = QTable({"x": [7.0, 3.0], "y": [7.0, 4.0], "flux": [100.0, 10.0]})
    ours = cp.PSFPhotometry(model, 1, compat="photutils")(data, init_params=init)
    theirs = pp.PSFPhotometry(pp.CircularGaussianPRF(fwhm=1.0), 1)(data, init_params=init)
    np.testing.assert_array_equal(np.asarray(ours["flags"]), np.asarray(theirs["flags"]))
    assert np.all(np.asarray(ours["flags"]) & 256)  # too_few_pixels


def test_metrics_need_residuals(photutils_scene):
    """SimplexLSQFitter returns no residuals: photutils reports NaN metrics."""
    data, error = photutils_scene
    init = QTable({"x": [38.6], "y": [11.5], "flux": [600.0]})
    kw = {"fitter": SimplexLSQFitter()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        honest = cp.PSFPhotometry(cp.CircularGaussianPRF(fwhm=2.7), (5, 5), **kw)(
            data, error=error, init_params=init)
        ours = cp.PSFPhotometry(cp.CircularGaussianPRF(fwhm=2.7), (5, 5), compat="photutils",
                                **kw)(data, error=error, init_params=init)
    for name in ("qfit", "cfit", "reduced_chi2"):
        assert np.isfinite(_v(honest[name])[0])
        assert np.isnan(_v(ours[name])[0])
    np.testing.assert_array_equal(_v(ours["flux_fit"]), _v(honest["flux_fit"]))


def test_shared_pixels_follow_compat(photutils_scene):
    data, error = photutils_scene
    model = cp.CircularGaussianPRF(fwhm=2.7)
    assert cp.PSFPhotometry(model, 5).shared_pixels == "once"
    assert cp.PSFPhotometry(model, 5, compat="photutils").shared_pixels == "photutils"
    # a blended pair whose stamps overlap: compat equals shared_pixels='photutils'
    init = QTable({"x": [30.0, 32.0], "y": [30.0, 31.0], "flux": [500.0, 400.0]})
    grouper = cp.SourceGrouper(5)
    a = cp.PSFPhotometry(model, 7, grouper=grouper, compat="photutils")(
        data, error=error, init_params=init)
    b = cp.PSFPhotometry(model, 7, grouper=grouper, shared_pixels="photutils")(
        data, error=error, init_params=init)
    for name in ("x_fit", "flux_fit", "flux_err"):
        np.testing.assert_array_equal(_v(a[name]), _v(b[name]))
    it = cp.IterativePSFPhotometry(model, 5, cp.DAOStarFinder(6.0, 2.0), aperture_radius=4,
                                   compat="photutils")
    assert it._psfphot.compat == "photutils" and it._psfphot.shared_pixels == "photutils"


def test_compat_option_checks():
    model = cp.CircularGaussianPRF(fwhm=2.7)
    assert check_compat(None) is None
    with pytest.raises(ValueError, match="compat must be None or 'photutils'"):
        cp.PSFPhotometry(model, 5, compat="astropy")
    with pytest.raises(ValueError, match="compat must be None or 'photutils'"):
        check_compat(True)
    for kw in ({"shared_pixels": "once"}, {"fit_sky": True}, {"subtract_neighbors": True},
               {"merge_separation": 1.0}, {"crlb": True, "read_noise": 1.0}):
        with pytest.raises(ValueError, match="compat='photutils' reproduces photutils"):
            cp.PSFPhotometry(model, 5, compat="photutils", **kw)
    with pytest.raises(ValueError, match="shared_pixels must be"):
        check_compat_options(None, shared_pixels="twice")
    with pytest.raises(ValueError, match="compat='photutils' reproduces photutils"):
        cp.run_psf_photometry(np.zeros((9, 9)), model, (5, 5), compat="photutils",
                              fit_sky=True, init_params=QTable({"x": [4.0], "y": [4.0]}))
