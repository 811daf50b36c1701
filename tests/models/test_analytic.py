"""Analytic PSF models: parity with photutils 3.0, derivatives, units, errors and fitting."""

import inspect
import warnings

import astropy.units as u
import numpy as np
import photutils.psf as pu
import pytest
from astropy.modeling.fitting import TRFLSQFitter
from scipy import integrate

import crowdphot.models.analytic as cp
from crowdphot.core import profiles as _profiles

NAMES = [
    "CircularGaussianPSF",
    "GaussianPSF",
    "GaussianPRF",
    "CircularGaussianPRF",
    "CircularGaussianSigmaPRF",
    "MoffatPSF",
    "AiryDiskPSF",
]

# (model name, shape parameters): several widths, rotations (float degrees and Quantity)
PARAM_SETS = [
    ("CircularGaussianPSF", {"fwhm": 2.5}),
    ("CircularGaussianPSF", {"fwhm": 0.7}),
    ("GaussianPSF", {"x_fwhm": 3.1, "y_fwhm": 1.9}),
    ("GaussianPSF", {"x_fwhm": 3.1, "y_fwhm": 1.9, "theta": 37.0}),
    ("GaussianPSF", {"x_fwhm": 10.1, "y_fwhm": 5.82, "theta": -121.7}),
    ("GaussianPSF", {"x_fwhm": 2.0, "y_fwhm": 4.0, "theta": 90.0}),
    ("GaussianPRF", {"x_fwhm": 2.2, "y_fwhm": 3.3}),
    ("GaussianPRF", {"x_fwhm": 2.2, "y_fwhm": 3.3, "theta": 21.7}),
    ("GaussianPRF", {"x_fwhm": 0.9, "y_fwhm": 1.4, "theta": 200.0}),
    ("CircularGaussianPRF", {"fwhm": 1.8}),
    ("CircularGaussianPRF", {"fwhm": 0.001}),
    ("CircularGaussianSigmaPRF", {"sigma": 1.1}),
    ("MoffatPSF", {"alpha": 2.0, "beta": 2.5}),
    ("MoffatPSF", {"alpha": 8.1, "beta": 7.2}),
    ("AiryDiskPSF", {"radius": 2.1}),
    ("AiryDiskPSF", {"radius": 0.6}),
]
PARAM_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(PARAM_SETS)]


def _pair(name, **params):
    return getattr(cp, name)(**params), getattr(pu, name)(**params)


# --------------------------------------------------------------------------------------------
# parity with photutils
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "shape_params"), PARAM_SETS, ids=PARAM_IDS)
def test_values_match_photutils(name, shape_params, rng):
    ours, theirs = _pair(name, flux=71.4, x_0=24.3, y_0=25.2, **shape_params)
    yy, xx = np.mgrid[0:51, 0:51]
    xr = rng.uniform(10, 40, 500)
    yr = rng.uniform(10, 40, 500)
    for x, y in ((xx, yy), (xr, yr), (24.3, 25.2)):  # grid, scattered, exactly at the centre
        want = theirs(x, y)
        got = ours(x, y)
        assert np.shape(got) == np.shape(want)
        peak = np.abs(theirs(24.3, 25.2))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * peak)


@pytest.mark.parametrize("name", NAMES)
def test_signature_defaults_and_parameters_match_photutils(name):
    ours, theirs = getattr(cp, name), getattr(pu, name)
    assert inspect.signature(ours) == inspect.signature(theirs)
    assert ours.param_names == theirs.param_names
    a, b = ours(), theirs()
    np.testing.assert_array_equal(a.parameters, b.parameters)
    assert a.fixed == b.fixed
    assert a.bounds == b.bounds
    assert a.bbox_factor == b.bbox_factor
    with pytest.raises(TypeError):
        ours(1.0)  # keyword-only, as in photutils


@pytest.mark.parametrize(("name", "shape_params"), PARAM_SETS, ids=PARAM_IDS)
def test_bounding_box_and_properties_match_photutils(name, shape_params):
    ours, theirs = _pair(name, flux=3.0, x_0=-2.5, y_0=7.25, **shape_params)
    for factor in (None, 3.0, 7.5):
        if factor is not None:
            ours.bbox_factor = factor
            theirs.bbox_factor = factor
        np.testing.assert_allclose(ours.bounding_box.bounding_box(),
                                   theirs.bounding_box.bounding_box(), rtol=1e-14)
    shape = tuple(int(np.ceil(hi - lo)) for lo, hi in theirs.bounding_box.bounding_box())
    assert ours.default_stamp_shape == shape
    for prop in ("amplitude", "sigma", "x_sigma", "y_sigma", "fwhm"):
        if hasattr(theirs, prop):
            np.testing.assert_allclose(getattr(ours, prop), getattr(theirs, prop), rtol=1e-14)


def test_gaussian_bounding_box_rotation_quantity():
    ours, theirs = _pair("GaussianPSF", x_fwhm=2.0, y_fwhm=3.0, theta=30.0 * u.deg)
    np.testing.assert_allclose(ours.bounding_box.bounding_box(),
                               theirs.bounding_box.bounding_box(), rtol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_units_match_photutils(name):
    shape = {"CircularGaussianPSF": ("fwhm", 3.0), "CircularGaussianPRF": ("fwhm", 3.0),
             "CircularGaussianSigmaPRF": ("sigma", 1.3), "GaussianPSF": ("x_fwhm", 3.0),
             "GaussianPRF": ("x_fwhm", 3.0), "MoffatPSF": ("alpha", 2.5),
             "AiryDiskPSF": ("radius", 2.2)}[name]
    kwargs = {"flux": 5.0 * u.Jy, "x_0": 12.2 * u.cm, "y_0": 10.6 * u.cm,
              shape[0]: shape[1] * u.cm}
    if name.startswith("Gaussian"):
        kwargs.update(y_fwhm=2.0 * u.cm, theta=25.0 * u.deg)
    ours, theirs = _pair(name, **kwargs)
    yy, xx = np.mgrid[0:25, 0:25] * u.cm
    got, want = ours(xx, yy), theirs(xx, yy)
    assert got.unit == want.unit == u.Jy
    np.testing.assert_allclose(got.value, want.value, rtol=0, atol=1e-12 * want.value.max())
    assert ours.input_units == theirs.input_units
    inputs = {"x": u.cm, "y": u.cm}
    outputs = {"z": u.Jy}
    assert (ours._parameter_units_for_data_units(inputs, outputs)
            == theirs._parameter_units_for_data_units(inputs, outputs))


def test_units_mismatch_rejected_like_photutils():
    for name in ("GaussianPSF", "GaussianPRF", "CircularGaussianSigmaPRF"):
        model = getattr(cp, name)()
        with pytest.raises(u.UnitsError, match="Units .* inputs should match"):
            model._parameter_units_for_data_units({"x": u.m, "y": u.s}, {"z": u.Jy})


# --------------------------------------------------------------------------------------------
# derivatives
# --------------------------------------------------------------------------------------------
def _fd_params(model, x, y, h=1e-6):
    out = []
    for i in range(len(model.parameters)):
        p_hi = model.parameters.copy()
        p_lo = model.parameters.copy()
        p_hi[i] += h
        p_lo[i] -= h
        out.append((model.evaluate(x, y, *p_hi) - model.evaluate(x, y, *p_lo)) / (2 * h))
    return out


@pytest.mark.parametrize("theta", [0.0, 23.0, -140.0])
def test_gaussian_fit_deriv_matches_photutils_and_fd(theta, rng):
    params = {"flux": 3.7, "x_0": 5.2, "y_0": 4.4, "x_fwhm": 3.3, "y_fwhm": 2.1, "theta": theta}
    ours, theirs = _pair("GaussianPSF", **params)
    x, y = rng.uniform(0, 10, 300), rng.uniform(0, 10, 300)
    got = ours.fit_deriv(x, y, *ours.parameters)
    want = theirs.fit_deriv(x, y, *theirs.parameters)
    assert len(got) == len(want) == 6
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)
    for g, f in zip(got, _fd_params(ours, x, y), strict=True):
        np.testing.assert_allclose(g, f, rtol=0, atol=1e-7 * np.abs(f).max() + 1e-12)


def test_circular_gaussian_fit_deriv(rng):
    params = {"flux": 2.5, "x_0": 1.3, "y_0": -0.4, "fwhm": 2.4}
    ours, theirs = _pair("CircularGaussianPSF", **params)
    x, y = rng.uniform(-5, 5, 300), rng.uniform(-5, 5, 300)
    got = ours.fit_deriv(x, y, *ours.parameters)
    want = theirs.fit_deriv(x, y, *theirs.parameters)
    assert len(got) == len(want) == 4
    # flux and centre partials agree with photutils ...
    for g, w in zip(got[:3], want[:3], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14)
    # ... and all four agree with finite differences (photutils 3.0's d/dfwhm omits the y-axis
    # half of the derivative, so ours deliberately differs from it there)
    for g, f in zip(got, _fd_params(ours, x, y), strict=True):
        np.testing.assert_allclose(g, f, rtol=0, atol=1e-7 * np.abs(f).max())


@pytest.mark.parametrize("name", ["CircularGaussianPRF", "CircularGaussianSigmaPRF",
                                  "GaussianPRF", "MoffatPSF", "AiryDiskPSF"])
def test_no_fit_deriv_where_photutils_has_none(name):
    assert getattr(cp, name).fit_deriv is None
    assert getattr(pu, name).fit_deriv is None


def test_airy_gradient_through_the_centre():
    model = cp.AiryDiskPSF(radius=2.0)
    x0 = np.array([3.0, 3.0, 3.0])
    y0 = np.array([4.0, 4.0, 4.0])
    x = np.array([[3.0], [3.0 + 1e-9], [3.05]])
    y = np.array([[4.0], [4.0], [4.0]])
    v, gx, gy = model._unit_grad(x, y, x0, y0)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
    assert gx[0, 0] == 0.0 and gy[0, 0] == 0.0
    np.testing.assert_allclose(v[0, 0], model.evaluate(3.0, 4.0, 1.0, 3.0, 4.0, 2.0))
    # near the peak h(z) = 1 - z**2 / 8, so v = peak (1 - k**2 r**2 / 4) and
    # d v / d x0 = peak k**2 (x - x0) / 2 with k = pi R_z / radius
    k = np.pi * _profiles.AIRY_RZ / 2.0
    peak = v[0, 0]
    np.testing.assert_allclose(gx[1, 0], peak * k * k * 1e-9 / 2, rtol=1e-6)
    h = 1e-5
    fd = (model._unit(x, y, x0 + h, y0) - model._unit(x, y, x0 - h, y0)) / (2 * h)
    np.testing.assert_allclose(gx[2], fd[2], rtol=1e-7)


def test_j2_series_matches_bessel_across_switch():
    from scipy.special import jv

    z = np.array([1e-8, 1e-3, 0.05, 0.0999, 0.1, 0.1001, 0.5, 3.0, 17.0])
    np.testing.assert_allclose(_profiles._j2_over_z2(z), jv(2, z) / z**2, rtol=1e-10)
    assert _profiles._j2_over_z2(np.array([0.0]))[0] == 0.125


def test_pixel_gauss_tail_precision():
    # far in the wing an erf difference would give 0; the erfc form keeps the tail value
    val = _profiles.pixel_gauss_1d(np.array([-12.0, 12.0]), 0.5)
    exact = integrate.quad(lambda t: np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi), 11.5, 12.5,
                           epsabs=0, epsrel=1e-12)[0]
    np.testing.assert_allclose(val, exact, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# argument checking
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "bad", "match"), [
    ("CircularGaussianPSF", {"fwhm": 0.0}, "fwhm must be finite and > 0"),
    ("CircularGaussianPSF", {"fwhm": -2.0}, "fwhm must be"),
    ("CircularGaussianPRF", {"fwhm": np.nan}, "fwhm must be"),
    ("CircularGaussianSigmaPRF", {"sigma": -1.0}, "sigma must be"),
    ("GaussianPSF", {"y_fwhm": 0.0}, "y_fwhm must be"),
    ("GaussianPRF", {"x_fwhm": np.inf}, "x_fwhm must be"),
    ("GaussianPSF", {"theta": np.nan}, "theta must be finite"),
    ("MoffatPSF", {"beta": 1.0}, "beta must be finite and > 1"),
    ("MoffatPSF", {"alpha": -1.0}, "alpha must be"),
    ("AiryDiskPSF", {"radius": 0.0}, "radius must be"),
    ("CircularGaussianPSF", {"bbox_factor": -1.0}, "bbox_factor must be finite and > 0"),
])
def test_bad_parameters_raise(name, bad, match):
    with pytest.raises(ValueError, match=match):
        getattr(cp, name)(**bad)


def test_bad_bbox_factor_type():
    with pytest.raises(TypeError, match="bbox_factor must be a real number"):
        cp.MoffatPSF(bbox_factor="big")


def test_shape_parameter_made_invalid_later_is_caught_by_batched_calls():
    model = cp.CircularGaussianPRF(fwhm=2.0)
    model.fwhm = -1.0
    with pytest.raises(ValueError, match="fwhm must be"):
        model.psf_stamps([1.0], [1.0], 5)
    with pytest.raises(ValueError, match="fwhm must be"):
        model.psf_values(np.zeros((1, 3)), np.zeros((1, 3)), [0.0], [0.0])


def test_bad_stamp_arguments_raise():
    model = cp.CircularGaussianPSF(fwhm=2.0)
    with pytest.raises(ValueError, match="x0/y0: x and y must be 1D arrays of equal length"):
        model.psf_stamps([1.0, 2.0], [1.0], 5)
    with pytest.raises(ValueError, match="x0/y0: x and y must be 1D arrays"):
        model.psf_stamps(np.zeros((2, 2)), np.zeros((2, 2)), 5)
    with pytest.raises(ValueError, match="x0/y0 contain NaN or inf"):
        model.psf_stamps([np.nan], [1.0], 5)
    with pytest.raises(ValueError, match="shape must be > 0"):
        model.psf_stamps([1.0], [1.0], (0, 5))
    with pytest.raises(ValueError, match="shape must have 1 or 2 elements"):
        model.psf_stamps([1.0], [1.0], (3, 5, 7))
    with pytest.raises(ValueError, match="leading star axis"):
        model.psf_values(0.0, 0.0, [0.0], [0.0])


# --------------------------------------------------------------------------------------------
# fitting with astropy
# --------------------------------------------------------------------------------------------
def _noisy_star(model, rng, sigma_noise, size=25):
    yy, xx = np.mgrid[0:size, 0:size]
    data = model(xx, yy) + rng.normal(0, sigma_noise, xx.shape)
    return xx, yy, data


@pytest.mark.parametrize("name", ["CircularGaussianPRF", "GaussianPSF", "MoffatPSF"])
def test_fit_noisy_star_with_fixed_x0_matches_photutils(name, rng):
    shape = {"CircularGaussianPRF": {"fwhm": 2.6}, "GaussianPSF": {"x_fwhm": 2.8, "y_fwhm": 2.2,
             "theta": 15.0}, "MoffatPSF": {"alpha": 2.4, "beta": 2.8}}[name]
    truth = getattr(cp, name)(flux=2000.0, x_0=12.3, y_0=11.6, **shape)
    noise = 1.0
    xx, yy, data = _noisy_star(truth, rng, noise)
    fits = []
    for module in (cp, pu):
        init = getattr(module, name)(flux=1500.0, x_0=12.0, y_0=12.0, **shape)
        init.x_0.fixed = True
        init.flux.bounds = (0, None)
        fitter = TRFLSQFitter()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fits.append(fitter(init, xx, yy, data, weights=np.full(data.shape, 1 / noise)))
    ours, theirs = fits
    assert ours.x_0.value == 12.0  # fixed parameters stay put
    assert ours.x_0.fixed and not ours.y_0.fixed
    # x_0 is held 0.3 px off, so y_0 and flux are biased a little; the bias is the same for
    # both libraries, which must agree to optimiser precision
    np.testing.assert_allclose(ours.parameters, theirs.parameters, rtol=1e-6)
    assert abs(ours.y_0.value - 11.6) < 0.05
    assert abs(ours.flux.value - 2000.0) < 0.1 * 2000.0


def test_fit_recovers_truth_and_respects_bounds(rng):
    truth = cp.CircularGaussianPRF(flux=5000.0, x_0=10.4, y_0=9.7, fwhm=3.0)
    noise = 2.0
    xx, yy, data = _noisy_star(truth, rng, noise, size=21)
    init = cp.CircularGaussianPRF(flux=3000.0, x_0=10.0, y_0=10.0, fwhm=3.0)
    fitter = TRFLSQFitter(calc_uncertainties=True)
    fit = fitter(init, xx, yy, data, weights=np.full(data.shape, 1 / noise))
    err = np.sqrt(np.diag(fit.cov_matrix.cov_matrix))
    # within 5 sigma of the truth, sigma from the fit covariance (noise-derived)
    np.testing.assert_array_less(np.abs(fit.parameters[:3] - truth.parameters[:3]), 5 * err)
    assert fit.fwhm.value == 3.0

    # an upper bound below the true flux is honoured
    init.flux.bounds = (0, 4000.0)
    bounded = TRFLSQFitter()(init, xx, yy, data)
    assert bounded.flux.value <= 4000.0 + 1e-9
    assert bounded.flux.value > 3900.0


def test_fit_free_shape_parameter_noiseless():
    truth = cp.GaussianPSF(flux=71.4, x_0=24.3, y_0=25.2, x_fwhm=10.1, y_fwhm=5.82, theta=21.7)
    yy, xx = np.mgrid[0:51, 0:51]
    data = truth(xx, yy)
    init = cp.GaussianPSF(flux=50, x_0=20, y_0=30, x_fwhm=15, y_fwhm=8, theta=31)
    for p in ("x_fwhm", "y_fwhm", "theta"):
        getattr(init, p).fixed = False
    fit = TRFLSQFitter()(init, xx, yy, data)
    np.testing.assert_allclose(fit.parameters, truth.parameters, rtol=1e-6)

    truth = cp.CircularGaussianPSF(flux=30.0, x_0=12.2, y_0=13.1, fwhm=3.3)
    yy, xx = np.mgrid[0:25, 0:25]
    init = cp.CircularGaussianPSF(flux=20.0, x_0=12.0, y_0=13.0, fwhm=2.5)
    init.fwhm.fixed = False
    fit = TRFLSQFitter()(init, xx, yy, truth(xx, yy))
    np.testing.assert_allclose(fit.parameters, truth.parameters, rtol=1e-7)


def test_fit_with_units():
    truth = cp.CircularGaussianPRF(flux=71.4 * u.Jy, x_0=24.3 * u.m, y_0=25.2 * u.m,
                                   fwhm=10.1 * u.m)
    yy, xx = np.mgrid[0:51, 0:51] << u.m
    data = truth(xx, yy)
    assert data.unit == u.Jy
    np.testing.assert_allclose(data.sum().value, 71.4, rtol=1e-7)
    init = cp.CircularGaussianPRF(flux=50.0, x_0=20.0, y_0=30.0, fwhm=15.0)
    init.fwhm.fixed = False
    fit = TRFLSQFitter()(init, xx, yy, data)
    np.testing.assert_allclose(fit.x_0.value, 24.3, rtol=1e-6)
    np.testing.assert_allclose(fit.fwhm.value, 10.1, rtol=1e-6)
    assert fit.x_0.unit == u.m
