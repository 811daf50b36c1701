"""make_psf_model: normalisation (chunked integral) and grouped fits, against photutils 3.0."""

import warnings

import numpy as np
import pytest
from astropy.modeling.models import Gaussian2D, Moffat2D
from astropy.table import QTable

import crowdphot as cp
from crowdphot.psf import model_helpers

pp = pytest.importorskip("photutils.psf")


def test_integral_equals_brute_force_grid(monkeypatch):
    """The row-chunked integral is the midpoint sum over the full (dy, dx) grid."""
    model = Moffat2D(amplitude=3.0, x_0=0.3, y_0=-0.2, gamma=1.7, alpha=2.5)
    dx, dy, sub = 9, 7, 5
    step = 1.0 / sub
    xs = 0.3 + (np.arange(dx * sub) + 0.5) * step - dx / 2.0
    ys = -0.2 + (np.arange(dy * sub) + 0.5) * step - dy / 2.0
    xx, yy = np.meshgrid(xs, ys)
    expected = model(xx, yy).sum() * step**2
    for chunk in (1, 50, 10**7):  # one row per call, a few rows, everything at once
        monkeypatch.setattr(model_helpers, "_CHUNK", chunk)
        got = model_helpers._integrate(model, "x_0", "y_0", dx, dy, sub)
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_normalisation_matches_photutils():
    g = Gaussian2D(x_stddev=1.3, y_stddev=0.9)
    ours = cp.make_psf_model(g, x_name="x_mean", y_name="y_mean")
    theirs = pp.make_psf_model(g, x_name="x_mean", y_name="y_mean")
    assert ours.param_names == theirs.param_names
    # midpoint rule over the whole box vs photutils' trapezoid rule: same to 1e-6 here
    np.testing.assert_allclose(ours.parameters, theirs.parameters, rtol=1e-6)


def test_grouped_fit_with_compound_model_matches_photutils():
    """Members of a group are compound models: each row gets its own member's values."""
    rng = np.random.default_rng(7)
    x = np.array([20.0, 23.5, 40.2, 12.0])
    y = np.array([20.0, 21.0, 35.7, 40.0])
    flux = np.array([900.0, 600.0, 800.0, 700.0])
    data = cp.make_model_image((56, 56), cp.CircularGaussianPRF(fwhm=2.83),
                               QTable({"x_0": x, "y_0": y, "flux": flux}), model_shape=(15, 15))
    data = data + rng.normal(0.0, 1.0, data.shape)
    init = QTable({"x": x + 0.2, "y": y - 0.2, "flux": flux * 0.9})
    g = Gaussian2D(x_stddev=1.2, y_stddev=1.2)
    ours = cp.PSFPhotometry(cp.make_psf_model(g, x_name="x_mean", y_name="y_mean"), 5,
                            grouper=cp.SourceGrouper(8))(data, init_params=init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = pp.PSFPhotometry(pp.make_psf_model(g, x_name="x_mean", y_name="y_mean"), 5,
                                  grouper=pp.SourceGrouper(8))(data, init_params=init)
    assert list(np.asarray(ours["group_size"])) == [2, 2, 1, 1]
    for name in ("x_fit", "y_fit", "flux_fit", "flux_err"):
        np.testing.assert_allclose(np.asarray(ours[name]), np.asarray(theirs[name]), rtol=1e-6,
                                   err_msg=name)
    # the fit recovers each member, not one member twice
    np.testing.assert_allclose(np.asarray(ours["x_fit"]), x, atol=0.1)
    np.testing.assert_allclose(np.asarray(ours["flux_fit"]), flux, rtol=0.05)
