"""The batched PSF contract (crowdphot.core.batched), checked on every model in ``PSF_CASES``."""

import pickle

import numpy as np
import pytest

from _psf_cases import PSF_CASES, PSFCase, case_tol
from crowdphot.core.batched import stamp_origin

CASES = [PSFCase(*c) for c in PSF_CASES]
IDS = [c.id for c in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    c = request.param
    return c.factory(), case_tol(c)


def _positions(rng, tol, n=5):
    ox, oy = tol["origin"]
    r = tol["region"]
    return ox + rng.uniform(-r, r, n), oy + rng.uniform(-r, r, n)


def _grid(xlo, ylo, shape):
    """Full (n, ny, nx) coordinate arrays of the stamps with lower-left pixels xlo, ylo."""
    ny, nx = shape
    xs = xlo[:, None, None] + np.arange(nx)[None, None, :] + np.zeros((1, ny, 1))
    ys = ylo[:, None, None] + np.arange(ny)[None, :, None] + np.zeros((1, 1, nx))
    return xs.astype(float), ys.astype(float)


def test_normalisation(case, rng):
    model, tol = case
    x0, y0 = _positions(rng, tol, n=3)
    stamps = model.psf_stamps(x0, y0, tol["norm_shape"])
    np.testing.assert_allclose(stamps.sum(axis=(1, 2)), tol["norm_expect"], rtol=0,
                               atol=tol["norm"])


def test_centroid(case, rng):
    model, tol = case
    if tol["centroid"] is None:
        pytest.skip("case declares an asymmetric model")
    x0, y0 = _positions(rng, tol, n=4)
    shape = tol["norm_shape"]
    xlo, ylo = stamp_origin(x0, y0, shape)
    xs, ys = _grid(xlo, ylo, shape)
    stamps = model.psf_stamps(x0, y0, shape)
    total = stamps.sum(axis=(1, 2))
    cx = (stamps * xs).sum(axis=(1, 2)) / total
    cy = (stamps * ys).sum(axis=(1, 2)) / total
    np.testing.assert_allclose(cx, x0, rtol=0, atol=tol["centroid"])
    np.testing.assert_allclose(cy, y0, rtol=0, atol=tol["centroid"])


def test_batched_unit_matches_astropy_evaluate(case, rng):
    model, tol = case
    x0, y0 = _positions(rng, tol, n=4)
    k = 50
    xs = x0[:, None] + rng.uniform(-4, 4, (4, k))
    ys = y0[:, None] + rng.uniform(-4, 4, (4, k))
    batched = model._unit(xs, ys, x0, y0)
    assert batched.shape == (4, k)
    for i in range(4):
        single = model.copy()
        single.flux = 1.0
        single.x_0 = x0[i]
        single.y_0 = y0[i]
        expect = single(xs[i], ys[i])
        peak = np.abs(expect).max()
        np.testing.assert_allclose(batched[i], expect, rtol=0, atol=tol["value_rtol"] * peak)
    # flux scales linearly through astropy's __call__
    scaled = model.copy()
    scaled.flux = 7.5
    scaled.x_0 = x0[0]
    scaled.y_0 = y0[0]
    np.testing.assert_allclose(scaled(xs[0], ys[0]), 7.5 * batched[0], rtol=1e-12, atol=0)


def test_unit_broadcast_forms_agree(case, rng):
    model, tol = case
    x0, y0 = _positions(rng, tol, n=3)
    shape = tol["stamp_shape"]
    xlo, ylo = stamp_origin(x0, y0, shape)
    xs, ys = _grid(xlo, ylo, shape)
    full = model._unit(xs, ys, x0, y0)
    sep = model._unit(xs[:, :1, :], ys[:, :, :1], x0, y0)
    flat = model._unit(xs.reshape(3, -1), ys.reshape(3, -1), x0, y0)
    assert full.shape == sep.shape == (3, *shape)
    np.testing.assert_allclose(sep, full, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(flat.reshape(full.shape), full, rtol=1e-12, atol=1e-15)
    grads = model._unit_grad(xs[:, :1, :], ys[:, :, :1], x0, y0)
    grads_full = model._unit_grad(xs, ys, x0, y0)
    for a, b in zip(grads, grads_full, strict=True):
        assert np.shape(a) == (3, *shape)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_psf_stamps_shape_and_values(case, rng):
    model, tol = case
    x0, y0 = _positions(rng, tol, n=4)
    shape = tol["stamp_shape"]
    stamps = model.psf_stamps(x0, y0, shape)
    assert stamps.shape == (4, *shape)
    xlo, ylo = stamp_origin(x0, y0, shape)
    xs, ys = _grid(xlo, ylo, shape)
    np.testing.assert_allclose(stamps, model._unit(xs, ys, x0, y0), rtol=1e-12, atol=1e-15)

    values, dx0, dy0 = model.psf_stamps(x0, y0, shape, gradient=True)
    ref = model._unit_grad(xs, ys, x0, y0)
    for got, want in zip((values, dx0, dy0), ref, strict=True):
        assert got.shape == (4, *shape)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)

    # explicit, off-centre stamp origins
    xlo2, ylo2 = xlo - 2, ylo + 1
    shifted = model.psf_stamps(x0, y0, shape, xlo=xlo2, ylo=ylo2)
    xs2, ys2 = _grid(xlo2, ylo2, shape)
    np.testing.assert_allclose(shifted, model._unit(xs2, ys2, x0, y0), rtol=1e-12, atol=1e-15)

    # square shape given as an int, and psf_values on arbitrary points
    assert model.psf_stamps(x0, y0, 7).shape == (4, 7, 7)
    pts = model.psf_values(xs, ys, x0, y0)
    np.testing.assert_allclose(pts, stamps, rtol=1e-12, atol=1e-15)


def _central_fd(f, x0, y0, h):
    fx = (f(x0 + h, y0) - f(x0 - h, y0)) / (2 * h)
    fy = (f(x0, y0 + h) - f(x0, y0 - h)) / (2 * h)
    return fx, fy


def test_unit_grad_matches_finite_differences(case, rng):
    model, tol = case
    x0, y0 = _positions(rng, tol, n=4)
    xs = x0[:, None] + rng.uniform(-5, 5, (4, 60))
    ys = y0[:, None] + rng.uniform(-5, 5, (4, 60))
    v, gx, gy = model._unit_grad(xs, ys, x0, y0)
    np.testing.assert_allclose(v, model._unit(xs, ys, x0, y0), rtol=1e-12, atol=1e-15)
    fx, fy = _central_fd(lambda a, b: model._unit(xs, ys, a, b), x0, y0, tol["fd_step"])
    scale = max(np.abs(fx).max(), np.abs(fy).max())
    np.testing.assert_allclose(gx, fx, rtol=0, atol=tol["grad_rtol"] * scale)
    np.testing.assert_allclose(gy, fy, rtol=0, atol=tol["grad_rtol"] * scale)


def test_stamps_grad_matches_finite_differences(case, rng):
    model, tol = case
    x0, y0 = _positions(rng, tol, n=4)
    shape = tol["stamp_shape"]
    xlo, ylo = stamp_origin(x0, y0, shape)
    v, gx, gy = model._stamps_grad(x0, y0, xlo, ylo, shape)
    np.testing.assert_allclose(v, model._stamps(x0, y0, xlo, ylo, shape), rtol=1e-12, atol=1e-15)
    fx, fy = _central_fd(lambda a, b: model._stamps(a, b, xlo, ylo, shape), x0, y0,
                         tol["fd_step"])
    scale = max(np.abs(fx).max(), np.abs(fy).max())
    np.testing.assert_allclose(gx, fx, rtol=0, atol=tol["grad_rtol"] * scale)
    np.testing.assert_allclose(gy, fy, rtol=0, atol=tol["grad_rtol"] * scale)


def test_pickle_round_trip(case, rng):
    model, tol = case
    model.x_0 = tol["origin"][0] + 0.3
    model.y_0 = tol["origin"][1] - 0.2
    model.flux = 4.0
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is type(model)
    assert clone.param_names == model.param_names
    np.testing.assert_array_equal(clone.parameters, model.parameters)
    assert [clone.fixed[p] for p in clone.param_names] == [model.fixed[p] for p in
                                                           model.param_names]
    x0, y0 = _positions(rng, tol, n=3)
    shape = tol["stamp_shape"]
    np.testing.assert_array_equal(clone.psf_stamps(x0, y0, shape),
                                  model.psf_stamps(x0, y0, shape))
    yy, xx = np.mgrid[0:30, 0:30]
    np.testing.assert_array_equal(clone(xx, yy), model(xx, yy))


def test_copy_is_independent(case, rng):
    model, tol = case
    x0, y0 = _positions(rng, tol, n=2)
    shape = tol["stamp_shape"]
    before_params = model.parameters.copy()
    before = model.psf_stamps(x0, y0, shape).copy()
    clone = model.copy()
    clone.x_0 = clone.x_0.value + 1.5
    clone.flux = 3.0
    clone.x_0.fixed = True
    extra = [p for p in clone.param_names if p not in ("flux", "x_0", "y_0", "theta")]
    for name in extra:  # widen any shape parameter of the copy
        setattr(clone, name, getattr(clone, name).value * 1.25)
    np.testing.assert_array_equal(model.parameters, before_params)
    assert not model.x_0.fixed
    np.testing.assert_array_equal(model.psf_stamps(x0, y0, shape), before)
    if extra:
        assert not np.allclose(clone.psf_stamps(x0, y0, shape), before)
