"""ImagePSF: photutils parity, batched kernels vs pointwise values, gradients, errors."""

import pickle
import warnings

import numpy as np
import pytest
from astropy.modeling.fitting import TRFLSQFitter
from photutils.psf import ImagePSF as PhotutilsImagePSF

from crowdphot import ImagePSF
from crowdphot.core.kernels.spline import SplineStack, basis_table, knots


def _gaussian(shape, xc, yc, sx, sy, total=1.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.exp(-0.5 * (((xx - xc) / sx) ** 2 + ((yy - yc) / sy) ** 2))
    return img * (total / img.sum())


@pytest.fixture
def image():
    # slightly asymmetric so that x/y swaps or origin mistakes show up
    return _gaussian((27, 25), 12.3, 13.1, 3.0, 2.5) + 0.01 * _gaussian((27, 25), 15, 9, 1, 1)


@pytest.mark.parametrize("oversampling", [1, 2, 4, (4, 2)])
@pytest.mark.parametrize("origin", [None, (10.2, 14.7)])
def test_values_match_photutils(image, rng, oversampling, origin):
    kw = dict(oversampling=oversampling, origin=origin, x_0=5.3, y_0=7.1, flux=3.0)
    ours = ImagePSF(image, **kw)
    ref = PhotutilsImagePSF(image, **kw)
    # points inside, near the edges and well outside the sampled region
    x = rng.uniform(-12, 22, 600)
    y = rng.uniform(-12, 25, 600)
    expect = ref(x, y)
    np.testing.assert_allclose(ours(x, y), expect, rtol=0, atol=1e-12 * np.abs(expect).max())
    assert np.any(expect == 0)  # fill_value region exercised
    assert ours.bounding_box == ref.bounding_box
    assert repr(ours) == repr(ref)
    assert str(ours) == str(ref)
    np.testing.assert_array_equal(ours.oversampling, ref.oversampling)
    np.testing.assert_array_equal(ours.origin, ref.origin)


@pytest.mark.parametrize("fill_value", [None, -0.25])
def test_fill_value_matches_photutils(image, rng, fill_value):
    ours = ImagePSF(image, oversampling=2, fill_value=fill_value, flux=2.0)
    ref = PhotutilsImagePSF(image, oversampling=2, fill_value=fill_value, flux=2.0)
    x = rng.uniform(-15, 15, 500)
    y = rng.uniform(-15, 15, 500)
    np.testing.assert_allclose(ours(x, y), ref(x, y), rtol=0, atol=1e-14)


def test_array_parameters_broadcast_like_photutils(image):
    ours = ImagePSF(image)
    ref = PhotutilsImagePSF(image)
    x = np.linspace(-3, 3, 7)
    x0 = np.array([0.0, 0.4, -1.3])[:, None]
    np.testing.assert_allclose(ours.evaluate(x, 0.5, 2.0, x0, 0.2),
                               ref.evaluate(x, 0.5, 2.0, x0, 0.2), rtol=0, atol=1e-15)


def test_spline_coefficients_and_knots_match_scipy(rng):
    from scipy.interpolate import RectBivariateSpline

    for shape in [(4, 4), (5, 9), (12, 7)]:
        img = rng.random(shape)
        spline = RectBivariateSpline(np.arange(shape[1]), np.arange(shape[0]), img.T, kx=3,
                                     ky=3, s=0)
        np.testing.assert_array_equal(spline.tck[0], knots(shape[1]))
        np.testing.assert_array_equal(spline.tck[1], knots(shape[0]))
        table, starts = basis_table(shape[1])
        # partition of unity on every interval
        np.testing.assert_allclose(table[:, :, 0].sum(axis=1), 1.0, atol=1e-14)
        stack = SplineStack(img[None])
        xi = rng.uniform(0, shape[1] - 1, 300)
        yi = rng.uniform(0, shape[0] - 1, 300)
        vals = stack.points(xi, yi, np.zeros(300, int), np.zeros((1, 1), int), np.ones((1, 1)))
        np.testing.assert_allclose(vals, spline(xi, yi, grid=False), atol=1e-14)


@pytest.mark.parametrize("fill_value", [0.0, None, 0.05])
@pytest.mark.parametrize("oversampling", [1, 3])
def test_stamps_equal_unit_on_same_pixels(image, rng, fill_value,
                                          oversampling):
    model = ImagePSF(image, oversampling=oversampling, origin=(11.0, 14.5),
                     fill_value=fill_value)
    n, shape = 6, (21, 17)  # wider than the image at oversampling 3: edges and fill exercised
    x0 = rng.uniform(10, 30, n)
    y0 = rng.uniform(10, 30, n)
    xlo = np.floor(x0).astype(int) - 8 + rng.integers(-3, 4, n)
    ylo = np.floor(y0).astype(int) - 10 + rng.integers(-3, 4, n)
    xs = (xlo[:, None] + np.arange(shape[1]))[:, None, :].astype(float)
    ys = (ylo[:, None] + np.arange(shape[0]))[:, :, None].astype(float)
    stamps = model._stamps(x0, y0, xlo, ylo, shape)
    np.testing.assert_allclose(stamps, model._unit(xs, ys, x0, y0), rtol=0, atol=1e-15)
    v, gx, gy = model._stamps_grad(x0, y0, xlo, ylo, shape)
    uv, ugx, ugy = model._unit_grad(xs, ys, x0, y0)
    np.testing.assert_allclose(v, stamps, rtol=0, atol=1e-15)
    np.testing.assert_allclose(gx, ugx, rtol=0, atol=1e-14)
    np.testing.assert_allclose(gy, ugy, rtol=0, atol=1e-14)
    # and both equal the astropy evaluation of a unit-flux single-star model
    for i in range(n):
        single = model.copy()
        single.x_0, single.y_0 = x0[i], y0[i]
        expect = single(*np.broadcast_arrays(xs[i], ys[i]))
        np.testing.assert_allclose(stamps[i], expect, rtol=0, atol=1e-15)
    if fill_value is not None:
        assert np.any(stamps == fill_value)


@pytest.mark.parametrize("fill_value", [0.0, None])
def test_gradients_match_finite_differences(image, rng, fill_value):
    model = ImagePSF(image, oversampling=(2, 3), fill_value=fill_value)
    n, shape, h = 5, (15, 13), 1e-6
    x0 = rng.uniform(-2, 2, n)
    y0 = rng.uniform(-2, 2, n)
    xlo = np.full(n, -6)
    ylo = np.full(n, -7)
    _, gx, gy = model._stamps_grad(x0, y0, xlo, ylo, shape)
    fx = (model._stamps(x0 + h, y0, xlo, ylo, shape)
          - model._stamps(x0 - h, y0, xlo, ylo, shape)) / (2 * h)
    fy = (model._stamps(x0, y0 + h, xlo, ylo, shape)
          - model._stamps(x0, y0 - h, xlo, ylo, shape)) / (2 * h)
    scale = np.abs(fx).max()
    assert scale > 0
    np.testing.assert_allclose(gx, fx, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(gy, fy, rtol=0, atol=1e-6 * scale)


def test_fit_recovers_position_and_flux(image, rng):
    """Seeded simulate-then-recover with astropy's fitter (Parameters, fixed and bounds)."""
    truth = dict(flux=500.0, x_0=10.37, y_0=11.82)
    model = ImagePSF(image, **truth)
    yy, xx = np.mgrid[:24, :22]
    sigma = 0.05
    data = model(xx, yy) + rng.normal(0, sigma, xx.shape)
    guess = ImagePSF(image, flux=400.0, x_0=10.0, y_0=12.2, bounds={"x_0": (9.0, 11.5)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy may warn about the fit's accuracy
        fit = TRFLSQFitter()(guess, xx, yy, data)
    assert abs(fit.x_0.value - truth["x_0"]) < 5e-3
    assert abs(fit.y_0.value - truth["y_0"]) < 5e-3
    assert abs(fit.flux.value - truth["flux"]) < 2.0
    fixed = ImagePSF(image, flux=400.0, x_0=truth["x_0"], y_0=truth["y_0"],
                     fixed={"x_0": True, "y_0": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit2 = TRFLSQFitter()(fixed, xx, yy, data)
    assert fit2.x_0.value == truth["x_0"] and fit2.y_0.value == truth["y_0"]
    assert abs(fit2.flux.value - truth["flux"]) < 2.0


def test_copy_shares_data_and_cache_pickle_round_trips(image):
    model = ImagePSF(image, x_0=1.0)
    model(0.0, 0.0)  # build the spline cache
    twin = model.copy()
    assert twin.data is model.data and twin._cache is model._cache
    twin.x_0 = 4.0
    twin.flux.fixed = True
    assert model.x_0.value == 1.0 and not model.flux.fixed
    deep = model.deepcopy()
    assert deep.data is not model.data
    clone = pickle.loads(pickle.dumps(model))
    assert clone._cache.stack is not None
    np.testing.assert_array_equal(clone(np.arange(5.0), 1.0), model(np.arange(5.0), 1.0))
    # assigning new data rebuilds the spline
    model.data = 2 * image
    np.testing.assert_allclose(model(1.0, 1.5), 2 * twin.evaluate(1.0, 1.5, 1.0, 1.0, 0.0))


def test_psf_stamps_default_shape(image):
    model = ImagePSF(image, oversampling=2)
    assert model.default_stamp_shape == (14, 13)
    assert model.shape == image.shape


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(data=[[1.0] * 5] * 5), TypeError, "data must be a 2D numpy array"),
    (dict(data=np.ones((5, 5, 5))), ValueError, "data must be a 2D numpy array"),
    (dict(data=np.full((5, 5), np.nan)), ValueError, "data must contain only finite"),
    (dict(data=np.ones((3, 8))), ValueError, "at least 4 samples"),
    (dict(data=np.ones((5, 5), dtype=complex)), TypeError, "data must be numeric"),
    (dict(origin=(1.0, 2.0, 3.0)), ValueError, "origin must be a pair"),
    (dict(origin=(1.0, np.inf)), ValueError, "origin must contain finite"),
    (dict(oversampling=0), ValueError, "oversampling must be > 0"),
    (dict(oversampling=1.5), ValueError, "oversampling must have integer values"),
    (dict(oversampling=(1, 2, 3)), ValueError, "oversampling must have 1 or 2 elements"),
    (dict(fill_value="zero"), TypeError, "fill_value must be a number or None"),
])
def test_errors(kwargs, exc, match):
    args = {"data": np.ones((6, 6)), **kwargs}
    data = args.pop("data")
    with pytest.raises(exc, match=match):
        ImagePSF(data, **args)
