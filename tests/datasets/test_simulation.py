"""Tests for crowdphot.datasets.simulation: same random draws and same pixels as photutils 3.0."""

import warnings

import astropy.units as u
import numpy as np
import photutils.datasets as pdata
import photutils.psf as ppsf
import pytest
from astropy.modeling.models import Gaussian2D
from astropy.table import QTable, Table
from astropy.utils.exceptions import AstropyUserWarning
from photutils.utils._coords import make_random_xycoords as phot_xycoords

from _scenes import LocalGaussianPSF
from crowdphot.datasets.simulation import (
    SimulationWarning,
    make_model_image,
    make_model_params,
    make_noise_image,
    make_psf_model_image,
    make_random_xycoords,
)


def assert_same_image(ours, theirs):
    assert ours.shape == theirs.shape
    peak = np.abs(theirs).max()
    assert peak > 0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10 * peak)


def assert_same_table(ours, theirs):
    assert ours.colnames == theirs.colnames
    for name in theirs.colnames:
        assert np.array_equal(np.asarray(ours[name]), np.asarray(theirs[name])), name


# -- random draws ------------------------------------------------------------------------------
def test_notebook_truth_table():
    params = make_model_params((2048, 2048), 500, min_separation=25, border_size=50, seed=0,
                               flux=(500, 20_000))
    assert len(params) == 500
    assert params["id"][0] == 1
    assert params["x_0"][0] == 1290.801366902193
    assert params["y_0"][0] == 1774.3778244148095
    assert params["flux"][0] == 11576.13482157921
    assert params["x_0"][-1] == 94.04531350532247
    assert params["flux"][-1] == 19299.05221739804


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("min_sep", [0, 3.0, 7.5])
def test_xycoords_match_photutils(seed, min_sep, kernel_backend):
    ours = make_random_xycoords(200, (5, 195), (0, 150), min_separation=min_sep, seed=seed)
    theirs = phot_xycoords(200, (5, 195), (0, 150), min_separation=min_sep, seed=seed)
    assert np.array_equal(ours, theirs)
    if min_sep:
        d = np.hypot(*(ours[:, None, :] - ours[None, :, :]).transpose(2, 0, 1))
        assert d[np.triu_indices(len(ours), 1)].min() > min_sep


def test_too_crowded_warns_and_returns_fewer(kernel_backend):
    match = "Unable to produce 400 coordinates.* Only .* coordinates were generated"
    with pytest.warns(SimulationWarning, match=match):
        ours = make_random_xycoords(400, (0, 100), (0, 100), min_separation=10, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        theirs = phot_xycoords(400, (0, 100), (0, 100), min_separation=10, seed=3)
    assert 0 < len(ours) < 400
    assert np.array_equal(ours, theirs)
    # photutils users filtering AstropyUserWarning keep working
    assert issubclass(SimulationWarning, AstropyUserWarning)


def test_model_params_match_photutils_with_extra_columns():
    kwargs = {"flux": (100, 500), "sigma": (1, 2), "alpha": (0, 1)}
    ours = make_model_params((100, 120), 20, min_separation=3, border_size=(10, 5), seed=4,
                             x_name="xc", y_name="yc", **kwargs)
    theirs = pdata.make_model_params((100, 120), 20, min_separation=3, border_size=(10, 5),
                                     seed=4, x_name="xc", y_name="yc", **kwargs)
    assert isinstance(ours, QTable)
    assert_same_table(ours, theirs)
    assert ours["xc"].min() >= 5 and ours["xc"].max() <= 115
    assert ours["yc"].min() >= 10 and ours["yc"].max() <= 90


def test_seed_determinism():
    a = make_psf_model_image((60, 70), LocalGaussianPSF(), 8, flux=(10, 20), seed=5)
    b = make_psf_model_image((60, 70), LocalGaussianPSF(), 8, flux=(10, 20), seed=5)
    c = make_psf_model_image((60, 70), LocalGaussianPSF(), 8, flux=(10, 20), seed=6)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


# -- rendered images ---------------------------------------------------------------------------
def test_psf_model_image_mixin_path_matches_photutils():
    model = LocalGaussianPSF(sigma=1.3)
    kw = {"flux": (100, 1000), "min_separation": 4, "seed": 2}
    data, params = make_psf_model_image((80, 100), model, 40, **kw)
    pdata_, pparams = ppsf.make_psf_model_image((80, 100), model, 40, **kw)
    assert_same_table(params, pparams)
    assert_same_image(data, pdata_)


@pytest.mark.parametrize("name", ["CircularGaussianPRF", "GaussianPSF", "MoffatPSF"])
def test_psf_model_image_crowdphot_analytic_matches_photutils(name):
    analytic = pytest.importorskip("crowdphot.models.analytic")
    ours_model = getattr(analytic, name)()
    theirs_model = getattr(ppsf, name)()
    kw = {"flux": (100, 1000), "min_separation": 5, "seed": 0, "model_shape": (15, 13)}
    data, params = make_psf_model_image((90, 110), ours_model, 30, **kw)
    pdata_, pparams = ppsf.make_psf_model_image((90, 110), theirs_model, 30, **kw)
    assert_same_table(params, pparams)
    assert_same_image(data, pdata_)


def test_psf_model_image_generic_model_and_shape_kwargs():
    # a plain astropy model with varying shape parameter (fwhm drawn per source)
    model = ppsf.CircularGaussianPRF()
    kw = {"flux": (100, 1000), "fwhm": (1.5, 3.0), "ignored": (0, 1), "seed": 9,
          "model_shape": 13}
    data, params = make_psf_model_image((70, 90), model, 25, **kw)
    pdata_, pparams = ppsf.make_psf_model_image((70, 90), model, 25, **kw)
    assert "ignored" not in params.colnames and "fwhm" in params.colnames
    assert_same_table(params, pparams)
    assert_same_image(data, pdata_)


def test_crowdphot_model_with_per_source_fwhm_matches_photutils():
    analytic = pytest.importorskip("crowdphot.models.analytic")
    kw = {"flux": (100, 1000), "fwhm": (1.5, 3.0), "seed": 3}
    data, params = make_psf_model_image((70, 90), analytic.CircularGaussianPRF(), 25, **kw)
    pdata_, pparams = ppsf.make_psf_model_image((70, 90), ppsf.CircularGaussianPRF(), 25, **kw)
    assert_same_table(params, pparams)
    assert_same_image(data, pdata_)


def test_constant_columns_do_not_touch_callers_model():
    model = LocalGaussianPSF(sigma=1.0)
    params = make_model_params((40, 40), 5, seed=2)
    params["sigma"] = 2.0
    params["flux"] = 50.0
    image = make_model_image((40, 40), model, params, model_shape=17)
    assert model.sigma.value == 1.0 and model.flux.value == 1.0
    assert_same_image(image, pdata.make_model_image((40, 40), model, params, model_shape=17))
    # the constant sigma column was used (wider PSF, lower peak than sigma=1)
    narrow = make_model_image((40, 40), model, params[["id", "x_0", "y_0", "flux"]],
                              model_shape=17)
    assert image.max() < 0.5 * narrow.max()


def test_zero_sources():
    data, params = make_psf_model_image((30, 30), LocalGaussianPSF(), 0, seed=1)
    assert len(params) == 0 and params.colnames == ["id", "x_0", "y_0"]
    assert data.shape == (30, 30) and not data.any()


def test_model_image_bbox_shapes_local_bkg_nonfinite_and_map():
    model = ppsf.CircularGaussianPRF(fwhm=2.0)
    params = make_model_params((60, 80), 30, flux=(50, 500), fwhm=(1.0, 3.0), seed=11)
    params["local_bkg"] = np.linspace(0.0, 2.0, len(params))
    params["flux"][3] = np.nan
    params.rename_column("flux", "f200w")
    params["x_0"][0] = -40.0  # entirely off the image
    # model_shape None: bounding box per source (depends on the fwhm column)
    kw = {"params_map": {"flux": "f200w"}}
    ours = make_model_image((60, 80), model, params, **kw)
    theirs = pdata.make_model_image((60, 80), model, params, **kw)
    assert_same_image(ours, theirs)


def test_model_image_mixin_bbox_default_and_model_shape_column():
    model = LocalGaussianPSF(sigma=1.1)
    params = make_model_params((50, 60), 15, flux=(50, 500), seed=12)
    assert_same_image(make_model_image((50, 60), model, params),
                      pdata.make_model_image((50, 60), model, params))
    params["model_shape"] = np.where(np.arange(len(params)) % 2, 5, 9)
    assert_same_image(make_model_image((50, 60), model, params),
                      pdata.make_model_image((50, 60), model, params))


def test_model_image_other_names_generic_model():
    model = Gaussian2D(x_stddev=1.5, y_stddev=2.5)
    params = make_model_params((50, 60), 10, x_name="x_mean", y_name="y_mean",
                               amplitude=(1, 5), theta=(0, np.pi), seed=13)
    kw = {"x_name": "x_mean", "y_name": "y_mean", "model_shape": (17, 15)}
    assert_same_image(make_model_image((50, 60), model, params, **kw),
                      pdata.make_model_image((50, 60), model, params, **kw))


def test_model_image_units():
    model = LocalGaussianPSF()
    params = make_model_params((30, 30), 4, flux=(10, 20), seed=1)
    params["flux"] = params["flux"] * u.Jy
    ours = make_model_image((30, 30), model, params, model_shape=9)
    assert ours.unit == u.Jy
    plain = make_model_image((30, 30), model, Table({"x_0": params["x_0"],
                                                     "y_0": params["y_0"],
                                                     "flux": params["flux"].value}),
                             model_shape=9)
    np.testing.assert_array_equal(ours.value, plain)
    params["local_bkg"] = [1, 2, 3, 4] * u.m
    with pytest.raises(ValueError, match="local_bkg"):
        make_model_image((30, 30), model, params, model_shape=9)


def test_progress_bar(capsys):
    make_psf_model_image((40, 40), LocalGaussianPSF(), 5, seed=1, progress_bar=True)
    err = capsys.readouterr().err
    assert "Add model sources" in err and "5/5" in err


# -- noise -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dist", "kw"), [("gaussian", {"mean": 1.0, "stddev": 0.5}),
                                         ("poisson", {"mean": 4.0})])
def test_noise_matches_photutils_and_statistics(dist, kw):
    ours = make_noise_image((300, 200), distribution=dist, seed=0, **kw)
    theirs = pdata.make_noise_image((300, 200), distribution=dist, seed=0, **kw)
    assert np.array_equal(ours, theirs) and ours.dtype == theirs.dtype
    n = ours.size
    std = kw.get("stddev", np.sqrt(kw["mean"]))
    # mean within 5 standard errors, std within 5 % (n = 60000)
    assert abs(ours.mean() - kw["mean"]) < 5 * std / np.sqrt(n)
    assert ours.std() == pytest.approx(std, rel=0.05)


def test_notebook_noise_first_values():
    noise = make_noise_image((2048, 2048), mean=0, stddev=0.5, seed=0)
    ref = np.random.default_rng(0).normal(0, 0.5, size=(2048, 2048))
    assert np.array_equal(noise, ref)


# -- bad input ---------------------------------------------------------------------------------
def test_bad_inputs():
    model = LocalGaussianPSF()
    with pytest.raises(TypeError, match="shape"):
        make_psf_model_image("ab", model, 3)
    with pytest.raises(ValueError, match="shape"):
        make_psf_model_image((-10, 20), model, 3)
    with pytest.raises(ValueError, match="psf_model must have 'x_0', 'y_0' and 'flux'"):
        make_psf_model_image((20, 20), Gaussian2D(), 3, model_shape=5)
    with pytest.raises(TypeError, match="psf_model"):
        make_psf_model_image((20, 20), "gauss", 3)
    with pytest.raises(ValueError, match="border_size"):
        make_psf_model_image((20, 20), model, 3, border_size=10)
    with pytest.raises(TypeError, match="n_sources"):
        make_model_params((20, 20), 2.5)
    with pytest.raises(ValueError, match="flux must be a"):
        make_model_params((20, 20), 2, flux=(1, 2, 3))
    with pytest.raises(ValueError, match="x_range"):
        make_random_xycoords(3, (5, 1), (0, 1))
    with pytest.raises(ValueError, match="min_separation"):
        make_random_xycoords(3, (0, 5), (0, 1), min_separation=-1)
    table = Table({"x_0": [1.0], "y_0": [2.0]})
    with pytest.raises(TypeError, match="params_table"):
        make_model_image((10, 10), model, {"x_0": [1.0]})
    with pytest.raises(ValueError, match="params_table has no column 'y_pos'"):
        make_model_image((10, 10), model, table, params_map={"y_0": "y_pos"})
    with pytest.raises(ValueError, match="params_table has no column 'x_mean'"):
        make_model_image((10, 10), Gaussian2D(), table, x_name="x_mean", y_name="y_mean")
    with pytest.raises(ValueError, match="'bogus' .* is not a model parameter"):
        make_model_image((10, 10), model, table, params_map={"bogus": "x_0"})
    with pytest.raises(TypeError, match="model must be an astropy Model"):
        make_model_image((10, 10), object(), table)
    with pytest.raises(ValueError, match="discretize_method"):
        make_model_image((10, 10), model, table, discretize_method="bilinear")
    with pytest.raises(ValueError, match="'mean' must be input"):
        make_noise_image((5, 5))
    with pytest.raises(ValueError, match="'stddev' must be input"):
        make_noise_image((5, 5), mean=1.0)
    with pytest.raises(ValueError, match="distribution"):
        make_noise_image((5, 5), distribution="uniform", mean=1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"flux": (10, 1)}, "flux range must be finite with low <= high"),
    ({"flux": (np.nan, 1)}, "flux range must be finite"),
    ({"border_size": 30}, r"border_size is too large for the given shape \(border_size \(30, 30\)"),
])
def test_bad_ranges_name_the_argument(kwargs, match):
    from crowdphot import CircularGaussianPRF

    with pytest.raises(ValueError, match=match):
        make_psf_model_image((50, 50), CircularGaussianPRF(fwhm=2.0), 3, model_shape=(9, 9),
                             **kwargs)


def test_unknown_noise_distribution_is_named():
    match = "Invalid distribution: foo. Use either 'gaussian' or 'poisson'"
    with pytest.raises(ValueError, match=match):
        make_noise_image((5, 5), distribution="foo", mean=0, stddev=1)
