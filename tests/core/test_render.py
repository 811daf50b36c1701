"""Tests for crowdphot.core.render: batched rendering against a per-star brute-force oracle."""

import numpy as np
import pytest
from astropy.modeling import Fittable2DModel, Parameter
from astropy.nddata import NoOverlapError, overlap_slices
from photutils.psf import CircularGaussianPRF as PhotCircularGaussianPRF

from _scenes import LocalGaussianPSF
from crowdphot.core.render import model_stamp_shape, render_image


class ScalarOnlyPSF(Fittable2DModel):
    """A model whose evaluate cannot take array parameters (forces the per-star fallback)."""

    flux = Parameter(default=1.0)
    x_0 = Parameter(default=0.0)
    y_0 = Parameter(default=0.0)

    @staticmethod
    def evaluate(x, y, flux, x_0, y_0):
        x_0, y_0, flux = (np.asarray(v).item() for v in (x_0, y_0, flux))
        return flux * np.exp(-0.5 * ((x - x_0) ** 2 + (y - y_0) ** 2) / 2.0**2)


def brute_force(shape, model, x0, y0, flux, model_shape, local_bkg=None, extra=None):
    """One model call per star on its trimmed overlap, as photutils does it."""
    image = np.zeros(shape)
    for i in range(len(x0)):
        try:
            slc, _ = overlap_slices(shape, model_shape, (y0[i], x0[i]), mode="trim")
        except NoOverlapError:
            continue
        m = model.copy()
        m.x_0, m.y_0, m.flux = x0[i], y0[i], flux[i]
        for name, values in (extra or {}).items():
            setattr(m, name, values[i])
        yy, xx = np.mgrid[slc]
        image[slc] += m(xx, yy) + (0.0 if local_bkg is None else local_bkg[i])
    return image


@pytest.fixture
def scene(rng):
    n = 60
    shape = (70, 90)
    # spread past the edges so that some stamps are trimmed and some miss the image
    x0 = rng.uniform(-12, 102, n)
    y0 = rng.uniform(-12, 82, n)
    flux = rng.uniform(100, 1000, n)
    return shape, x0, y0, flux


def test_matches_brute_force_with_edges(scene):
    shape, x0, y0, flux = scene
    model = LocalGaussianPSF(sigma=1.7)
    image = render_image(shape, model, x0, y0, flux, model_shape=(13, 11))
    expected = brute_force(shape, model, x0, y0, flux, (13, 11))
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-10 * expected.max())
    # the scene really exercises trimming and skipping
    assert np.any((x0 < 5) | (x0 > 85)) and np.any((x0 < -7) | (y0 < -7))


def test_default_model_shape_and_chunking_invariance(scene):
    shape, x0, y0, flux = scene
    model = LocalGaussianPSF(sigma=1.2)
    assert model.default_stamp_shape == (10, 10)
    ref = render_image(shape, model, x0, y0, flux)
    expected = brute_force(shape, model, x0, y0, flux, (10, 10))
    np.testing.assert_allclose(ref, expected, rtol=0, atol=1e-10 * expected.max())
    for chunk in (1, 7, 1000):
        img = render_image(shape, model, x0, y0, flux, chunk_size=chunk)
        np.testing.assert_allclose(img, ref, rtol=0, atol=1e-12 * ref.max())


def test_local_bkg_and_out_accumulate(scene):
    shape, x0, y0, flux = scene
    model = LocalGaussianPSF(sigma=1.0)
    bkg = np.linspace(0.5, 3.0, len(x0))
    out = np.full(shape, 2.0)
    res = render_image(shape, model, x0, y0, flux, model_shape=9, local_bkg=bkg, out=out)
    assert res is out
    expected = 2.0 + brute_force(shape, model, x0, y0, flux, (9, 9), local_bkg=bkg)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-10 * expected.max())


def test_exact_edge_overlap_rules():
    # stamp origin is ceil(x0 - n/2): a 5-pixel stamp at x0 = -2.5 ends at pixel 0 (misses),
    # at x0 = -2.4 it covers pixel 0 only
    model = LocalGaussianPSF(sigma=1.0)
    img = render_image((5, 5), model, [-2.5, 2.0], [2.0, 2.0], [1.0, 0.0], model_shape=5)
    assert not img.any()
    img = render_image((5, 5), model, [-2.4], [2.0], [1.0], model_shape=5)
    assert np.count_nonzero(img) == 5 and np.all(img[:, 0] > 0)
    # high-side edge: origin == image size misses (6.51 -> origin 5), 6.5 -> origin 4
    img = render_image((5, 5), model, [6.51, 6.5], [2.0, 2.0], [1.0, 1.0], model_shape=5)
    assert np.count_nonzero(img) == 5 and np.all(img[:, 4] > 0)


def test_flux_conservation_inside():
    model = LocalGaussianPSF(sigma=1.0)
    x0, y0, flux = np.array([20.3, 40.7]), np.array([15.5, 30.2]), np.array([100.0, 300.0])
    img = render_image((50, 60), model, x0, y0, flux, model_shape=15)
    # a 15x15 stamp holds the Gaussian to ~1e-10; pixel-centre sampling sums to ~1 for sigma=1
    assert img.sum() == pytest.approx(400.0, rel=1e-6)


def test_generic_astropy_model_path(scene):
    shape, x0, y0, flux = scene
    model = PhotCircularGaussianPRF(fwhm=2.5)
    img = render_image(shape, model, x0, y0, flux, model_shape=11)
    expected = brute_force(shape, model, x0, y0, flux, (11, 11))
    np.testing.assert_allclose(img, expected, rtol=0, atol=1e-10 * expected.max())
    fwhm = np.linspace(1.5, 3.5, len(x0))
    img = render_image(shape, model, x0, y0, flux, model_shape=11, params={"fwhm": fwhm})
    expected = brute_force(shape, model, x0, y0, flux, (11, 11), extra={"fwhm": fwhm})
    np.testing.assert_allclose(img, expected, rtol=0, atol=1e-10 * expected.max())


def test_mixin_model_with_per_star_params_uses_evaluate(scene):
    shape, x0, y0, flux = scene
    model = LocalGaussianPSF()
    sigma = np.linspace(0.8, 2.0, len(x0))
    img = render_image(shape, model, x0, y0, flux, model_shape=11, params={"sigma": sigma})
    expected = brute_force(shape, model, x0, y0, flux, (11, 11), extra={"sigma": sigma})
    np.testing.assert_allclose(img, expected, rtol=0, atol=1e-10 * expected.max())


def test_scalar_only_model_fallback(scene):
    shape, x0, y0, flux = scene
    model = ScalarOnlyPSF()
    img = render_image(shape, model, x0[:10], y0[:10], flux[:10], model_shape=9)
    expected = brute_force(shape, model, x0[:10], y0[:10], flux[:10], (9, 9))
    np.testing.assert_allclose(img, expected, rtol=0, atol=1e-10 * expected.max())


def test_progress_callable_and_bar(scene, capsys):
    shape, x0, y0, flux = scene
    calls = []
    render_image(shape, LocalGaussianPSF(), x0, y0, flux, chunk_size=16,
                 progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(x0), len(x0))
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    render_image(shape, LocalGaussianPSF(), x0, y0, flux, progress=True)
    assert "Add model sources" in capsys.readouterr().err


def test_deterministic(scene):
    shape, x0, y0, flux = scene
    a = render_image(shape, LocalGaussianPSF(), x0, y0, flux)
    b = render_image(shape, LocalGaussianPSF(), x0, y0, flux)
    assert np.array_equal(a, b)


def test_model_stamp_shape():
    bb = PhotCircularGaussianPRF(fwhm=2.0).bounding_box.bounding_box()
    expected = int(np.ceil(bb[0][1] - bb[0][0]))
    assert model_stamp_shape(PhotCircularGaussianPRF(fwhm=2.0)) == (expected, expected)
    with pytest.raises(ValueError, match="model_shape must be given"):
        model_stamp_shape(ScalarOnlyPSF())


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"shape": "ab"}, TypeError, "shape"),
        ({"shape": (-3, 5)}, ValueError, "shape"),
        ({"psf_model": object()}, TypeError, "psf_model"),
        ({"flux": [1.0, 2.0]}, ValueError, "flux"),
        ({"x0": [np.nan, 1.0, 2.0]}, ValueError, "x0/y0"),
        ({"local_bkg": [1.0]}, ValueError, "local_bkg"),
        ({"out": np.zeros((3, 3))}, ValueError, "out"),
        ({"out": np.zeros((20, 20), dtype=np.float32)}, ValueError, "out"),
        ({"out": np.zeros((20, 40))[:, ::2]}, ValueError, "out must be C-contiguous"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"progress": "yes"}, TypeError, "progress"),
        ({"params": {"nope": [1, 2, 3]}}, ValueError, "params"),
        ({"model_shape": (0, 3)}, ValueError, "model_shape"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {"shape": (20, 20), "psf_model": LocalGaussianPSF(), "x0": [1.0, 5.0, 9.0],
            "y0": [2.0, 4.0, 6.0], "flux": 1.0}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        render_image(args.pop("shape"), args.pop("psf_model"), args.pop("x0"), args.pop("y0"),
                     args.pop("flux"), **args)


def test_model_without_position_parameters():
    from astropy.modeling.models import Gaussian2D

    with pytest.raises(ValueError, match="psf_model has no parameter named 'x_0'"):
        render_image((10, 10), Gaussian2D(), [1.0], [1.0], [1.0], model_shape=5)


def test_model_without_bbox_needs_model_shape():
    with pytest.raises(ValueError, match="model_shape must be given"):
        render_image((10, 10), ScalarOnlyPSF(), [1.0], [1.0], [1.0])
