"""Cramér–Rao bounds: brute-force Fisher oracle, analytic limits, scaling and validation."""

import numpy as np
import pytest

from crowdphot import CircularGaussianPRF, CircularGaussianPSF, cramer_rao_bound
from crowdphot.core.crlb import bounds_from_fisher, fisher_information, pixel_variance

PSF = CircularGaussianPRF(fwhm=2.5)


def _fisher_brute(psf, x, y, flux, shape, sky, rn, gain, h=1e-4):
    """Fisher matrix from finite differences of the expected stamp, one star."""
    from crowdphot.core.batched import stamp_origin

    xlo, ylo = stamp_origin(np.array([x]), np.array([y]), shape)

    def mu(p):
        u = psf.psf_stamps([p[0]], [p[1]], shape, xlo=xlo, ylo=ylo)[0]
        return p[2] * u + p[3]

    p0 = np.array([x, y, flux, sky], dtype=float)
    jac = []
    for k in range(4):
        dp = np.zeros(4)
        dp[k] = h * max(1.0, abs(p0[k]))
        jac.append(((mu(p0 + dp) - mu(p0 - dp)) / (2 * dp[k])).ravel())
    jac = np.array(jac)
    var = (np.maximum(mu(p0), 0) / gain + (rn / gain) ** 2).ravel()
    return (jac / var) @ jac.T


@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_fisher_matches_finite_difference_oracle(gain):
    for x, y, flux, sky in ((10.3, 11.8, 800.0, 12.0), (5.0, 5.0, 1e5, 0.5)):
        brute = _fisher_brute(PSF, x, y, flux, (7, 9), sky, 4.0, gain)
        got = fisher_information(PSF, np.array([x]), np.array([y]), np.array([flux]), (7, 9),
                                 sky=sky, read_noise=4.0, gain=gain, fit_sky=True)[0]
        np.testing.assert_allclose(got, brute, rtol=1e-5, atol=1e-9 * np.abs(brute).max())


def test_photon_limited_flux_bound_is_sqrt_flux():
    # no sky, no read noise, the whole PSF: the flux bound is Poisson's sqrt(F) (x, y do not
    # correlate with the flux for a symmetric, fully sampled star)
    t = cramer_rao_bound(PSF, [400.0, 1e4], 20.0, 20.0, sky=0.0, read_noise=0.0,
                         fit_shape=31)
    np.testing.assert_allclose(t["flux_crlb"], np.sqrt([400.0, 1e4]), rtol=1e-5)


def test_background_limited_gaussian_bound():
    # sky-dominated faint star, Gaussian PSF: sigma_F^2 = 4 pi s^2 (B + R^2) (effective area)
    psf = CircularGaussianPSF(fwhm=6.0)
    s = 6.0 / 2.3548200450309493
    sky, rn = 1e4, 5.0
    t = cramer_rao_bound(psf, 1.0, 30.0, 30.0, sky=sky, read_noise=rn, fit_shape=61)
    expect = np.sqrt(4 * np.pi * s**2 * (sky + rn**2))
    np.testing.assert_allclose(t["flux_crlb"][0], expect, rtol=2e-3)
    # position bound of a background-limited Gaussian: sqrt(8 pi s^4 (B + R^2)) / F
    expect_x = np.sqrt(8 * np.pi * s**4 * (sky + rn**2)) / 1.0
    np.testing.assert_allclose(t["x_crlb"][0], expect_x, rtol=5e-3)


def test_gain_changes_units_not_information():
    g = 3.0
    e = cramer_rao_bound(PSF, 2000.0, 10.2, 10.7, sky=20.0, read_noise=6.0, gain=1.0,
                         fit_shape=9)
    adu = cramer_rao_bound(PSF, 2000.0 / g, 10.2, 10.7, sky=20.0 / g, read_noise=6.0, gain=g,
                           fit_shape=9)
    np.testing.assert_allclose(adu["flux_crlb"] * g, e["flux_crlb"], rtol=1e-10)
    np.testing.assert_allclose(adu["x_crlb"], e["x_crlb"], rtol=1e-10)


def test_fitted_sky_widens_the_bounds_and_bounds_fall_with_flux():
    t3 = cramer_rao_bound(PSF, [300.0, 3000.0], 10.0, 10.0, sky=10.0, read_noise=5.0,
                          fit_shape=7)
    t4 = cramer_rao_bound(PSF, [300.0, 3000.0], 10.0, 10.0, sky=10.0, read_noise=5.0,
                          fit_shape=7, fit_sky=True)
    assert np.all(t4["flux_crlb"] > t3["flux_crlb"])
    assert "sky_crlb" in t4.colnames and "sky_crlb" not in t3.colnames
    assert t3["snr_max"][1] > t3["snr_max"][0]
    assert t3["x_crlb"][1] < t3["x_crlb"][0]


def test_default_stamp_is_the_psf_extent():
    full = cramer_rao_bound(PSF, 1000.0, 10.0, 10.0, sky=10.0, read_noise=5.0)
    small = cramer_rao_bound(PSF, 1000.0, 10.0, 10.0, sky=10.0, read_noise=5.0, fit_shape=5)
    assert full["flux_crlb"][0] < small["flux_crlb"][0]


def test_singular_information_gives_nan():
    # a zero-flux star has no position information
    sigma, cov = bounds_from_fisher(fisher_information(
        PSF, np.array([5.0]), np.array([5.0]), np.array([0.0]), (7, 7), sky=10.0,
        read_noise=5.0, gain=1.0))
    assert np.all(np.isnan(sigma)) and np.all(np.isnan(cov))


def test_variance_floor_and_values():
    assert pixel_variance(np.array(-5.0), 0.0, 1.0) == pytest.approx(1e-3)
    assert pixel_variance(np.array(20.0), 4.0, 2.0) == pytest.approx(10.0 + 4.0)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"read_noise": -1.0}, ValueError, "read_noise"),
    ({"read_noise": "5"}, TypeError, "read_noise"),
    ({"read_noise": 5.0, "gain": 0.0}, ValueError, "gain"),
    ({"read_noise": 5.0, "fit_shape": 4}, ValueError, "fit_shape"),
    ({"read_noise": 5.0, "fit_sky": "yes"}, TypeError, "fit_sky"),
])
def test_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cramer_rao_bound(PSF, 100.0, 5.0, 5.0, sky=1.0, **kwargs)


def test_validation_of_values_and_model():
    with pytest.raises(ValueError, match="flux"):
        cramer_rao_bound(PSF, [np.nan], 5.0, 5.0, sky=1.0, read_noise=1.0)
    with pytest.raises(ValueError, match="x must"):
        cramer_rao_bound(PSF, [1.0, 2.0, 3.0], [1.0, 2.0], 5.0, sky=1.0, read_noise=1.0)
    with pytest.raises(TypeError, match="psf_model"):
        cramer_rao_bound(object(), 1.0, 5.0, 5.0, sky=1.0, read_noise=1.0)


def _exact_brute(m, r):
    """Independent brute force: direct Poisson-Gaussian mixture on a fine grid."""
    from scipy.stats import norm, poisson

    k = np.arange(int(m + 12 * np.sqrt(m + 1) + 20) + 1)
    pk = poisson.pmf(k, m)
    d = np.linspace(-10 * r - 2, k[-1] + 10 * r, 20001)

    def dens(shift):
        return (pk[None, :] * norm.pdf((d[:, None] - shift - k[None, :]) / r) / r).sum(1)

    p, pm1 = dens(0.0), dens(1.0)
    return np.sum((pm1 - p) ** 2 / np.maximum(p, 1e-300)) * (d[1] - d[0]) * (m + r * r)


def test_exact_information_factor_against_brute_force():
    from crowdphot.core.crlb import exact_information_factor

    for m, r in ((0.5, 1.0), (2.0, 2.0), (10.0, 5.0), (35.0, 5.0)):
        got = float(exact_information_factor(np.array([m]), r)[0])
        assert got == pytest.approx(_exact_brute(m, r), rel=2e-4), (m, r)
    assert np.all(exact_information_factor(np.array([0.1, 50.0]), 0.0) == 1.0)


def test_exact_bounds_are_slightly_tighter():
    kw = dict(sky=10.0, read_noise=5.0, fit_shape=7)
    a = cramer_rao_bound(PSF, [150.0, 3000.0], 10.0, 10.0, **kw)
    b = cramer_rao_bound(PSF, [150.0, 3000.0], 10.0, 10.0, exact=True, **kw)
    ratio = np.asarray(b["flux_crlb"] / a["flux_crlb"])
    assert np.all(ratio < 1.0) and np.all(ratio > 0.99)
    c = cramer_rao_bound(PSF, 150.0, 10.0, 10.0, sky=10.0, read_noise=0.0, fit_shape=7)
    d = cramer_rao_bound(PSF, 150.0, 10.0, 10.0, sky=10.0, read_noise=0.0, fit_shape=7,
                         exact=True)
    assert d["flux_crlb"][0] == pytest.approx(c["flux_crlb"][0], rel=1e-12)
