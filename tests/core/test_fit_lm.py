"""The maximum-likelihood hook of the Levenberg-Marquardt loop (``lm.PoissonNoise``)."""

import numpy as np
import pytest

from crowdphot import CircularGaussianPRF, render_image
from crowdphot.core.crlb import bounds_from_fisher, fisher_information, pixel_variance
from crowdphot.core.fit import fit_psf
from crowdphot.core.fit.lm import PoissonNoise

PSF = CircularGaussianPRF(fwhm=2.5)
SKY, RN, GAIN = 12.0, 4.0, 2.0


def _stars(n_side=5, flux=1500.0, seed=0):
    rng = np.random.default_rng(seed)
    g = (np.arange(n_side) + 0.5) * 15
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    f = np.full(x.size, flux)
    shape = (n_side * 15, n_side * 15)
    e = rng.poisson(GAIN * (render_image(shape, PSF, x, y, f, model_shape=15) + SKY))
    data = (e + rng.normal(0, RN, shape)) / GAIN
    return data, x, y, f


def test_deviance_and_weights_match_the_definitions():
    rng = np.random.default_rng(1)
    bg = rng.uniform(5, 20, (3, 9))
    data = rng.normal(0, 3, (3, 9))
    model = rng.uniform(-2, 30, (3, 9))
    mask = (rng.uniform(size=(3, 9)) > 0.2).astype(float)
    noise = PoissonNoise.build(RN, GAIN, bg, data)
    w, half = noise.weights_and_cost(model, np.arange(3), mask)
    mu = model + bg
    np.testing.assert_allclose(w, mask / np.sqrt(pixel_variance(mu, RN, GAIN)), rtol=1e-12)
    d = GAIN * (data + bg) + RN**2
    m = GAIN * np.maximum(mu, 0) + RN**2
    dev = d * np.log(d / m) - (d - m)
    np.testing.assert_allclose(half, (dev * mask).sum(axis=1), rtol=1e-12)
    assert np.all(dev >= 0)
    # a subset of stamps (not all evaluated) gathers the right rows
    w2, half2 = noise.weights_and_cost(model[[2]], np.array([2]), mask[[2]])
    np.testing.assert_allclose(half2, half[[2]], rtol=1e-12)
    np.testing.assert_allclose(w2, w[[2]], rtol=1e-12)


def test_solution_is_a_root_of_the_score_with_fisher_covariance():
    data, x, y, f = _stars()
    res = fit_psf(data, PSF, x, y, 0.8 * f, fit_shape=7, local_bkg=np.full(x.size, SKY),
                  noise=(RN, GAIN, None), xtol=1e-10)
    assert res.converged.all()
    xlo, ylo = np.ceil(x - 3.5).astype(int), np.ceil(y - 3.5).astype(int)
    u, ux, uy = PSF._stamps_grad(res.x, res.y, xlo, ylo, (7, 7))
    rows = ylo[:, None, None] + np.arange(7)[None, :, None]
    cols = xlo[:, None, None] + np.arange(7)[None, None, :]
    mu = res.flux[:, None, None] * u + SKY
    score_w = (data[rows, cols] - mu) / pixel_variance(mu, RN, GAIN)
    jac = [res.flux[:, None, None] * ux, res.flux[:, None, None] * uy, u]
    sigma = np.column_stack([res.x_err, res.y_err, res.flux_err])
    for k in range(3):
        score = np.sum(score_w * jac[k], axis=(1, 2))
        assert np.all(np.abs(score * sigma[:, k]) < 1e-5)  # the step left, in errors
    fisher = fisher_information(PSF, res.x, res.y, res.flux, (7, 7), sky=SKY, read_noise=RN,
                                gain=GAIN, xlo=xlo, ylo=ylo)
    np.testing.assert_allclose(res.cov, bounds_from_fisher(fisher)[1], rtol=1e-8)
    # Pearson's chi-square with the model's variances
    chi2 = np.sum((data[rows, cols] - mu) ** 2 / pixel_variance(mu, RN, GAIN), axis=(1, 2))
    np.testing.assert_allclose(res.chi2, chi2, rtol=1e-8)


@pytest.mark.parametrize("kwargs, match", [
    ({"noise": (RN, GAIN)}, "noise"),
    ({"noise": (RN, 0.0, None)}, "gain"),
    ({"noise": (RN, GAIN, None), "error": np.ones((75, 75))}, "error"),
    ({"noise": (RN, GAIN, np.zeros((3, 7, 7)))}, "background"),
])
def test_noise_argument_checks(kwargs, match):
    data, x, y, f = _stars()
    with pytest.raises((ValueError, TypeError), match=match):
        fit_psf(data, PSF, x, y, f, fit_shape=7, **kwargs)
