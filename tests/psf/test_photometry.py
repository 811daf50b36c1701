"""PSFPhotometry shell: photutils 3.0 parity, input handling, flags and result helpers.

photutils is the oracle: the same data and the same initial parameters go through both
packages and the catalogs are compared column by column.
"""

import pickle
import threading
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.modeling.fitting import TRFLSQFitter
from astropy.nddata import NDData, StdDevUncertainty
from astropy.table import QTable, Table
from astropy.utils.exceptions import AstropyDeprecationWarning

import crowdphot as cp
from _scenes import clear_photutils_flat_model_cache
from _scenes import column_values as _val
from crowdphot import PSFPhotometry
from crowdphot.core.validate import CrowdphotWarning

pp = pytest.importorskip("photutils.psf")
pbkg = pytest.importorskip("photutils.background")

FWHM = 2.5
SHAPE = (64, 64)


_fresh_photutils_flat_model_cache = pytest.fixture(autouse=True)(clear_photutils_flat_model_cache)


# ----------------------------------------------------------------------------------------------
# scenes and helpers
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene():
    """Noisy scene of 10 stars, some close enough to be grouped at 8 px."""
    model = cp.CircularGaussianPRF(fwhm=FWHM)
    data, truth = cp.make_psf_model_image(SHAPE, model, 10, flux=(500, 2000), min_separation=5,
                                          seed=3, model_shape=(15, 15))
    rng = np.random.default_rng(7)
    data = data + rng.normal(0.0, 1.0, data.shape)
    init = QTable({"x": truth["x_0"] + 0.2, "y": truth["y_0"] - 0.15,
                   "flux": truth["flux"] * 0.9})
    return data, np.ones_like(data), truth, init


def assert_parity(t, tu, *, xy_tol=1e-3, flux_rtol=1e-4, err_rtol=0.01, metric_rtol=1e-3):
    """Column-by-column comparison of a crowdphot and a photutils results table."""
    assert t.colnames == tu.colnames
    for c in tu.colnames:
        a, b = _val(t[c]), _val(tu[c])
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=c)
        ok = np.isfinite(b)
        a, b = a[ok], b[ok]
        if c.startswith(("x_", "y_")) and not c.endswith("_err"):
            np.testing.assert_allclose(a, b, rtol=0, atol=xy_tol, err_msg=c)
        elif c.startswith("flux_"):
            rtol = err_rtol if c.endswith("_err") else flux_rtol
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-9, err_msg=c)
        elif c.endswith("_err"):
            np.testing.assert_allclose(a, b, rtol=err_rtol, err_msg=c)
        elif c in ("qfit", "cfit", "reduced_chi2"):
            np.testing.assert_allclose(a, b, rtol=metric_rtol, atol=1e-6, err_msg=c)
        else:
            np.testing.assert_array_equal(a, b, err_msg=c)
        if hasattr(tu[c], "unit"):
            assert getattr(t[c], "unit", None) == tu[c].unit, c


def run_both(data, *, kw_cp=None, kw_pu=None, model_cp=None, model_pu=None, fit_shape=(5, 5),
             **call):
    kw_cp = kw_cp or {}
    kw_pu = kw_pu or {}
    model_cp = model_cp if model_cp is not None else cp.CircularGaussianPRF(fwhm=FWHM)
    model_pu = model_pu if model_pu is not None else pp.CircularGaussianPRF(fwhm=FWHM)
    phot = PSFPhotometry(model_cp, fit_shape, **kw_cp)
    photu = pp.PSFPhotometry(model_pu, fit_shape, **kw_pu)
    t = phot(data, **call)
    tu = photu(data, **call)
    return phot, photu, t, tu


GROUPINGS = [pytest.param(None, id="ungrouped"), pytest.param(8.0, id="grouped")]
PATHS = [pytest.param(None, id="fast"), pytest.param("trf", id="generic")]


def _fitter(path):
    return None if path is None else TRFLSQFitter()


def _groupers(sep):
    if sep is None:
        return {}, {}
    return {"grouper": cp.SourceGrouper(sep)}, {"grouper": pp.SourceGrouper(sep)}


# ----------------------------------------------------------------------------------------------
# parity with photutils
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sep", GROUPINGS)
@pytest.mark.parametrize("path", PATHS)
def test_parity_gaussian(scene, path, sep):
    data, err, _, init = scene
    gc, gu = _groupers(sep)
    phot, photu, t, tu = run_both(data, kw_cp={**gc, "fitter": _fitter(path)}, kw_pu=gu,
                                  error=err, init_params=init)
    if sep is not None:
        assert t["group_size"].max() > 1  # the scene really has joint fits
    assert_parity(t, tu)
    for name in t.colnames:
        assert t[name].dtype.kind == tu[name].dtype.kind, name
    np.testing.assert_allclose(phot.make_model_image(SHAPE), photu.make_model_image(SHAPE),
                               atol=1e-4 * data.max())
    assert_param_cov_parity(phot, photu)


def assert_param_cov_parity(phot, photu):
    """fit_info covariances: same parameter order (flux, x_0, y_0) and values as photutils."""
    n_checked = 0
    for ours, theirs in zip(phot.fit_info, photu.fit_info, strict=True):
        if "param_cov" not in theirs:
            continue
        a, b = ours["param_cov"], theirs["param_cov"]
        np.testing.assert_allclose(np.diag(a), np.diag(b), rtol=0.02)
        # correlations, not raw off-diagonals: those can be ~1e-15 noise around zero
        np.testing.assert_allclose(a / np.sqrt(np.outer(np.diag(a), np.diag(a))),
                                   b / np.sqrt(np.outer(np.diag(b), np.diag(b))), atol=0.01)
        n_checked += 1
    assert n_checked > 0


@pytest.mark.parametrize("path", PATHS)
def test_parity_without_error(scene, path):
    data, _, _, init = scene
    gc, gu = _groupers(8.0)
    _, _, t, tu = run_both(data, kw_cp={**gc, "fitter": _fitter(path)}, kw_pu=gu,
                           init_params=init)
    assert np.all(np.isnan(_val(t["reduced_chi2"])))
    assert_parity(t, tu)


@pytest.fixture(scope="module")
def gridded_pair():
    from itertools import product

    gridded = pytest.importorskip("crowdphot.models.gridded")
    yy, xx = np.mgrid[:25, :25]
    psfs = []
    for i in range(4):
        s = 2.0 + 0.3 * i  # oversampled sigma, varies over the grid
        p = np.exp(-((xx - 12) ** 2 + (yy - 12) ** 2) / (2 * s**2))
        psfs.append(p / p.sum() * 4)  # oversampling 2: sums to oversampling**2
    meta = {"grid_xypos": list(product([0, 63], [0, 63])), "oversampling": 2}
    nd = NDData(np.array(psfs), meta=meta)
    return gridded.GriddedPSFModel(nd), pp.GriddedPSFModel(nd)


@pytest.mark.parametrize("path", PATHS)
def test_parity_gridded(gridded_pair, path):
    mc, mu = gridded_pair
    data, truth = cp.make_psf_model_image(SHAPE, mc, 6, flux=(800, 2000), min_separation=6,
                                          seed=11, model_shape=(11, 11))
    data = data + np.random.default_rng(2).normal(0, 1.0, data.shape)
    init = QTable({"x": truth["x_0"] - 0.2, "y": truth["y_0"] + 0.1,
                   "flux": truth["flux"] * 1.1})
    gc, gu = _groupers(7.0)
    _, _, t, tu = run_both(data, kw_cp={**gc, "fitter": _fitter(path)}, kw_pu=gu,
                           model_cp=mc.copy(), model_pu=mu.copy(), error=np.ones(SHAPE),
                           init_params=init)
    assert_parity(t, tu)


@pytest.mark.parametrize("path", PATHS)
def test_parity_forced_photometry(scene, path):
    data, err, _, init = scene
    mc, mu = cp.CircularGaussianPRF(fwhm=FWHM), pp.CircularGaussianPRF(fwhm=FWHM)
    for m in (mc, mu):
        m.x_0.fixed = m.y_0.fixed = True
    _, _, t, tu = run_both(data, kw_cp={"fitter": _fitter(path)}, model_cp=mc, model_pu=mu,
                           error=err, init_params=init)
    np.testing.assert_array_equal(_val(t["x_fit"]), _val(init["x"]))
    assert np.all(np.isnan(_val(t["x_err"])))
    assert_parity(t, tu)
    phot, photu, _, _ = run_both(data, kw_cp={"fitter": _fitter(path)}, model_cp=mc,
                                 model_pu=mu, error=err, init_params=init)
    assert phot.fit_info[0]["param_cov"].shape == (1, 1)  # only the free flux
    assert_param_cov_parity(phot, photu)


@pytest.mark.parametrize("path", PATHS)
def test_parity_bounded_flux(scene, path):
    data, err, truth, init = scene
    init = init.copy()
    init["flux"] = np.minimum(init["flux"], 1400.0)
    mc, mu = cp.CircularGaussianPRF(fwhm=FWHM), pp.CircularGaussianPRF(fwhm=FWHM)
    for m in (mc, mu):
        m.flux.bounds = (None, 1500.0)
    _, _, t, tu = run_both(data, kw_cp={"fitter": _fitter(path)}, model_cp=mc, model_pu=mu,
                           error=err, init_params=init)
    assert np.all(_val(t["flux_fit"]) <= 1500.0 + 1e-9)
    assert np.any(_val(t["flux_fit"]) > 1499.0)  # some truth fluxes are above the bound
    assert_parity(t, tu)


@pytest.mark.parametrize("path", PATHS)
def test_parity_xy_bounds_near_bound_flag(scene, path):
    data, err, truth, _ = scene
    init = QTable({"x": truth["x_0"] + 0.6, "y": truth["y_0"], "flux": truth["flux"]})
    phot, _, t, tu = run_both(data, kw_cp={"xy_bounds": 0.3, "fitter": _fitter(path)},
                              kw_pu={"xy_bounds": 0.3}, error=err, init_params=init)
    dx = _val(t["x_fit"]) - _val(init["x"])
    np.testing.assert_allclose(dx, -0.3, atol=1e-6)
    assert np.all(np.asarray(t["flags"]) & 32)
    np.testing.assert_array_equal(_val(t["flags"]), _val(tu["flags"]))
    np.testing.assert_allclose(_val(t["x_fit"]), _val(tu["x_fit"]), atol=1e-3)
    np.testing.assert_allclose(_val(t["flux_fit"]), _val(tu["flux_fit"]), rtol=1e-4)


def test_edge_masked_and_nan_parity(scene):
    data, err, _, init = scene
    data = data.copy()
    data[10:14, 10:14] = np.nan
    mask = np.zeros(SHAPE, bool)
    mask[30:40, 0:5] = True
    x = np.r_[_val(init["x"]), -20.0, 2.0]
    y = np.r_[_val(init["y"]), 30.0, 35.0]
    tbl = QTable({"x": x, "y": y, "flux": np.r_[_val(init["flux"]), 100.0, 100.0]})
    # photutils 3.0 forgets NaN pixels when a mask is also given, so pass the merged mask
    full_mask = mask | ~np.isfinite(data)
    for path in (None, "trf"):
        _, _, t, tu = run_both(data, kw_cp={"fitter": _fitter(path)}, error=err,
                               init_params=tbl, mask=full_mask)
        assert_parity(t, tu)
        flags = _val(t["flags"]).astype(int)
        assert flags[-2] & 64 and flags[-1] & 128
        assert t["n_pixels_fit"][-1] == 0 and np.isnan(_val(t["flux_fit"][-2:])).all()


# ----------------------------------------------------------------------------------------------
# output table
# ----------------------------------------------------------------------------------------------
def test_columns_and_deprecated_npixfit(scene):
    data, err, _, init = scene
    _, _, t, tu = run_both(data, error=err, init_params=init)
    assert t.colnames == ["id", "group_id", "group_size", "local_bkg", "x_init", "y_init",
                          "flux_init", "x_fit", "y_fit", "flux_fit", "x_err", "y_err",
                          "flux_err", "n_pixels_fit", "qfit", "cfit", "reduced_chi2", "flags"]
    assert t.colnames == tu.colnames
    with pytest.warns(AstropyDeprecationWarning, match="npixfit"):
        old = t["npixfit"]
    np.testing.assert_array_equal(old, t["n_pixels_fit"])
    assert list(t.meta) == list(tu.meta)
    assert t.meta["version"]["crowdphot"] == cp.__version__


@pytest.mark.parametrize("xname, yname, fname", [
    ("x", "y", "flux"), ("x_init", "y_init", "flux_init"), ("xcentroid", "ycentroid", "flux"),
    ("x_0", "y_0", "flux_0"), ("x_centroid", "y_centroid", "flux"), ("xcen", "ycen", "flux"),
    ("x_fit", "y_fit", "flux_fit"),
])
def test_init_params_column_aliases(scene, xname, yname, fname):
    data, err, _, init = scene
    ref = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5)(data, error=err,
                                                             init_params=init)
    tbl = Table({xname: init["x"], yname: init["y"], fname: init["flux"],
                 "id": np.arange(len(init)) + 101})
    t = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5)(data, error=err, init_params=tbl)
    np.testing.assert_array_equal(t["id"], np.arange(len(init)) + 101)  # user ids kept
    np.testing.assert_allclose(_val(t["flux_fit"]), _val(ref["flux_fit"]), rtol=1e-12)


def test_init_params_errors(scene):
    data, err, _, init = scene
    phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5)
    with pytest.raises(ValueError, match="x and y"):
        phot(data, init_params=QTable({"a": [1.0], "y": [2.0], "flux": [1.0]}))
    with pytest.raises(TypeError, match="init_params"):
        phot(data, init_params={"x": [1.0], "y": [2.0]})
    with pytest.raises(ValueError, match="aperture_radius"):
        phot(data, init_params=init[["x", "y"]])
    with pytest.raises(ValueError, match="finder"):
        phot(data)
    bad = init.copy()
    bad["group_id"] = 0
    with pytest.raises(ValueError, match="group_id"):
        phot(data, init_params=bad)


# ----------------------------------------------------------------------------------------------
# finder, aperture fluxes and local background
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("finder", ["DAOStarFinder", "IRAFStarFinder"])
def test_finder_path_parity(scene, finder):
    pdet = pytest.importorskip("photutils.detection")
    data, err, _, _ = scene
    gc, gu = _groupers(8.0)
    phot, photu, t, tu = run_both(
        data, kw_cp={**gc, "finder": getattr(cp, finder)(threshold=20, fwhm=FWHM),
                     "aperture_radius": 4},
        kw_pu={**gu, "finder": getattr(pdet, finder)(threshold=20, fwhm=FWHM),
               "aperture_radius": 4}, error=err)
    assert len(t) >= 8
    assert_parity(t, tu)
    assert phot.finder_results is not None and len(phot.finder_results) == len(t)
    np.testing.assert_allclose(_val(t["flux_init"]), _val(tu["flux_init"]), rtol=1e-10)


def test_local_background_flux_init_is_sky_corrected():
    """flux_init = aperture sum - local_bkg * aperture area (photutils subtracts it once).

    A noiseless star on a flat sky: the aperture sum holds ``F * EE + sky * area``; only the
    area-scaled subtraction recovers ``F * EE``. The fitted values do not depend on this start.
    """
    sky, flux, radius = 10.0, 3000.0, 6.0
    model = cp.CircularGaussianPRF(fwhm=FWHM, flux=flux, x_0=32.3, y_0=31.6)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    data = model(xx, yy) + sky
    init = QTable({"x": [32.0], "y": [32.0]})
    kw_cp = {"aperture_radius": radius, "local_bkg_estimator": cp.LocalBackground(9, 15)}
    kw_pu = {"aperture_radius": radius, "local_bkg_estimator": pbkg.LocalBackground(9, 15)}
    phot, photu, t, tu = run_both(data, kw_cp=kw_cp, kw_pu=kw_pu, init_params=init,
                                  error=np.ones(SHAPE))
    for kw in ({}, {"include_local_bkg": True, "psf_shape": (15, 15)}):
        np.testing.assert_allclose(phot.make_model_image(SHAPE, **kw),
                                   photu.make_model_image(SHAPE, **kw), atol=1e-6)
    resid = phot.make_residual_image(data, psf_shape=(25, 25), include_local_bkg=True)
    assert np.abs(resid[20:44, 20:44]).max() < 1e-6 * data.max()
    np.testing.assert_allclose(_val(t["local_bkg"]), sky, rtol=1e-9)
    np.testing.assert_allclose(_val(t["local_bkg"]), _val(tu["local_bkg"]), rtol=1e-9)
    ee = cp.CircularAperture([(32.3, 31.6)], r=radius).do_photometry(model(xx, yy))[0][0]
    np.testing.assert_allclose(_val(t["flux_init"]), ee, rtol=1e-3)
    # photutils' start is off by sky * (area - 1)
    np.testing.assert_allclose(_val(tu["flux_init"]), ee + sky * (np.pi * radius**2 - 1),
                               rtol=1e-3)
    np.testing.assert_allclose(_val(t["flux_fit"]), flux, rtol=1e-6)
    np.testing.assert_allclose(_val(t["flux_fit"]), _val(tu["flux_fit"]), rtol=1e-6)


def test_local_background_column_used_and_nonfinite_flagged(scene):
    data, err, _, init = scene
    tbl = init.copy()
    tbl["local_bkg"] = 0.0
    tbl["local_bkg"][0] = np.nan
    for path in (None, "trf"):
        _, _, t, tu = run_both(data + 0.0, kw_cp={"fitter": _fitter(path)}, error=err,
                               init_params=tbl)
        assert int(t["flags"][0]) & 2048
        assert_parity(t, tu)


# ----------------------------------------------------------------------------------------------
# units, NDData, mask and invalid sources
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_units(scene, path):
    data, err, _, init = scene
    tbl = QTable({"x": init["x"], "y": init["y"], "flux": init["flux"] * u.Jy})
    phot, photu, t, tu = run_both(data * u.Jy, kw_cp={"fitter": _fitter(path)},
                                  error=err * u.Jy, init_params=tbl)
    for name in ("local_bkg", "flux_init", "flux_fit", "flux_err"):
        assert t[name].unit == u.Jy
    assert_parity(t, tu)
    img = phot.make_model_image(SHAPE)
    assert img.unit == u.Jy
    np.testing.assert_allclose(img.value, photu.make_model_image(SHAPE).value, atol=1e-3)
    resid = phot.make_residual_image(data * u.Jy)
    assert resid.unit == u.Jy
    with pytest.raises(ValueError, match="error"):
        phot(data * u.Jy, error=err, init_params=tbl)
    with pytest.raises(ValueError, match="flux"):
        phot(data * u.Jy, error=err * u.Jy, init_params=init)  # flux without units


def test_nddata_input(scene):
    data, err, _, init = scene
    mask = np.zeros(SHAPE, bool)
    mask[:, :3] = True
    nd = NDData(data, uncertainty=StdDevUncertainty(err), mask=mask)
    _, _, t, tu = run_both(nd, init_params=init)
    ref = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5)(data, error=err, mask=mask,
                                                             init_params=init)
    assert_parity(t, tu)
    np.testing.assert_allclose(_val(t["flux_err"]), _val(ref["flux_err"]), rtol=1e-12)
    # units carried by NDData and by its uncertainty
    tbl = QTable({"x": init["x"], "y": init["y"], "flux": init["flux"] * u.Jy})
    ndu = NDData(data * u.Jy, uncertainty=StdDevUncertainty(err * 1000 * u.mJy))
    _, _, t, tu = run_both(ndu, init_params=tbl)
    assert t["flux_fit"].unit == u.Jy
    assert_parity(t, tu)


def test_nonfinite_data_warns_and_is_masked(scene):
    data, err, _, init = scene
    bad = data.copy()
    bad[int(init["y"][0]), int(init["x"][0])] = np.nan
    phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5)
    with pytest.warns(CrowdphotWarning, match="non-finite"):
        t = phot(bad, error=err, init_params=init)
    assert t["n_pixels_fit"][0] == 24 and int(t["flags"][0]) & 1
    assert np.isfinite(_val(t["flux_fit"])).all()
    mask = np.zeros(SHAPE, bool)
    mask[int(init["y"][0]), int(init["x"][0])] = True
    ref = phot(data, error=err, init_params=init, mask=mask)
    np.testing.assert_allclose(_val(t["flux_fit"]), _val(ref["flux_fit"]), rtol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_unfittable_sources_are_flagged_not_raised(scene, path):
    data, err, _, init = scene
    mask = np.zeros(SHAPE, bool)
    mask[40:49, 0:9] = True
    mask[50:55, 52:57] = True
    mask[52, 54] = mask[52, 55] = False  # leaves 2 pixels < 3 free parameters
    x = np.r_[_val(init["x"]), 200.0, 4.0, 54.0, np.nan]
    y = np.r_[_val(init["y"]), 10.0, 44.0, 52.0, 5.0]
    f = np.r_[_val(init["flux"]), 100.0, 100.0, 100.0, 100.0]
    tbl = QTable({"x": x, "y": y, "flux": f})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CrowdphotWarning)
        t = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5, fitter=_fitter(path))(
            data, error=err, mask=mask, init_params=tbl)
    flags = _val(t["flags"]).astype(int)[-4:]
    assert flags[0] & 64 and flags[1] & 128 and flags[2] & 256 and flags[3] & 512
    assert np.isnan(_val(t["flux_fit"])[-4:]).all() and np.isnan(_val(t["x_err"])[-4:]).all()
    assert np.isfinite(_val(t["flux_fit"])[:-4]).all()


# ----------------------------------------------------------------------------------------------
# argument validation
# ----------------------------------------------------------------------------------------------
def test_argument_errors(scene):
    data, err, _, init = scene
    model = cp.CircularGaussianPRF(fwhm=FWHM)
    with pytest.raises(ValueError, match="fit_shape"):
        PSFPhotometry(model, (4, 5))
    with pytest.raises(ValueError, match="fit_shape"):
        PSFPhotometry(model, 1)
    with pytest.raises(TypeError, match="fit_shape"):
        PSFPhotometry(model, "5")
    with pytest.raises(TypeError, match="psf_model"):
        PSFPhotometry(np.ones((5, 5)), 5)
    from astropy.modeling.models import Gaussian2D

    with pytest.raises(ValueError, match="flux, x_0 and y_0"):
        PSFPhotometry(Gaussian2D(), 5)
    with pytest.raises(TypeError, match="finder"):
        PSFPhotometry(model, 5, finder=3)
    with pytest.raises(TypeError, match="grouper"):
        PSFPhotometry(model, 5, grouper="x")
    for bad in (0, 2.5, np.nan):
        with pytest.raises(ValueError, match="fitter_maxiters"):
            PSFPhotometry(model, 5, fitter_maxiters=bad)
    for bad in ("10", True, [3]):
        with pytest.raises(TypeError, match="fitter_maxiters"):
            PSFPhotometry(model, 5, fitter_maxiters=bad)
    with pytest.raises(TypeError, match="aperture_radius"):
        PSFPhotometry(model, 5, aperture_radius="3")
    with pytest.raises(TypeError, match="xy_bounds"):
        PSFPhotometry(model, 5, xy_bounds="1")
    assert PSFPhotometry(model, 5, xy_bounds=(None, 2)).xy_bounds == (None, 2.0)
    assert PSFPhotometry(model, 5, xy_bounds=[None, None]).xy_bounds is None
    with pytest.raises(ValueError, match="xy_bounds"):
        PSFPhotometry(model, 5, xy_bounds=-1)
    with pytest.raises(ValueError, match="xy_bounds"):
        PSFPhotometry(model, 5, xy_bounds=(1, 2, 3))
    with pytest.raises(ValueError, match="aperture_radius"):
        PSFPhotometry(model, 5, aperture_radius=0)
    with pytest.raises(TypeError, match="local_bkg_estimator"):
        PSFPhotometry(model, 5, local_bkg_estimator=2.0)
    with pytest.raises(TypeError, match="local_bkg_estimator must be a LocalBackground instance"):
        PSFPhotometry(model, 5, local_bkg_estimator=cp.MMMBackground())  # photutils' rule
    phot = PSFPhotometry(model, 5)
    with pytest.raises(ValueError, match="Error array contains non-positive or non-finite"):
        phot(data, error=np.zeros_like(data), init_params=init)
    # photutils' rule: zero/NaN errors outside the fitted pixels are ignored
    zeros = err.copy()
    zeros[0] = 0.0
    zeros[1, :5] = np.nan
    ref = phot(data, error=np.where(np.isfinite(zeros) & (zeros > 0), zeros, 1.0),
               init_params=init)
    out = phot(data, error=zeros, init_params=init)
    np.testing.assert_array_equal(np.asarray(out["flux_fit"]), np.asarray(ref["flux_fit"]))
    stamp_zero = err.copy()
    stamp_zero[int(round(float(init["y"][0]))), int(round(float(init["x"][0])))] = 0.0
    with pytest.raises(ValueError, match="Error array contains .* fit stamps of 1 source"):
        phot(data, error=stamp_zero, init_params=init)
    with pytest.raises(ValueError, match="error"):
        phot(data, error=np.ones((3, 3)), init_params=init)
    with pytest.raises(ValueError, match="mask"):
        phot(data, mask=np.zeros((3, 3), bool), init_params=init)
    with pytest.raises(ValueError, match="data"):
        phot(np.ones(10), init_params=init)
    with pytest.raises(ValueError, match="No results"):
        PSFPhotometry(model, 5).make_model_image(SHAPE)


def test_bad_group_ids_from_grouper(scene):
    data, err, _, init = scene
    phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5,
                         grouper=lambda x, y: np.zeros(len(x), int))
    with pytest.raises(ValueError, match="group_id"):
        phot(data, init_params=init)


def test_group_warning_threshold(scene):
    data, err, _, init = scene
    phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5, grouper=cp.SourceGrouper(100),
                         group_warning_threshold=3)
    with pytest.warns(CrowdphotWarning, match="Some groups have more than 3 sources"):
        t = phot(data, error=err, init_params=init)
    assert set(t["group_size"]) == {len(init)}


def test_no_sources_found_returns_none(scene):
    data, err, _, _ = scene
    phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5,
                         finder=cp.DAOStarFinder(threshold=1e6, fwhm=FWHM), aperture_radius=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert phot(data) is None
    assert any("No sources" in str(w.message) for w in caught)  # the finder's own warning
    assert phot.results is None


# ----------------------------------------------------------------------------------------------
# result helpers
# ----------------------------------------------------------------------------------------------
def test_results_to_params_and_images(scene):
    model = cp.CircularGaussianPRF(fwhm=FWHM)
    clean, truth = cp.make_psf_model_image(SHAPE, model, 8, flux=(500, 2000), min_separation=6,
                                           seed=5, model_shape=(15, 15))
    tbl = QTable({"x": truth["x_0"] + 0.1, "y": truth["y_0"], "flux": truth["flux"]})
    tbl.add_row({"x": 500.0, "y": 10.0, "flux": 10.0})  # off the image: invalid
    phot = PSFPhotometry(model, (7, 7), grouper=cp.SourceGrouper(8))
    photu = pp.PSFPhotometry(pp.CircularGaussianPRF(fwhm=FWHM), (7, 7),
                             grouper=pp.SourceGrouper(8))
    t = phot(clean, init_params=tbl)
    photu(clean, init_params=tbl)
    np.testing.assert_allclose(_val(t["flux_fit"][:-1]), truth["flux"], rtol=1e-6)
    resid = phot.make_residual_image(clean, psf_shape=(15, 15))
    assert np.abs(resid).max() < 1e-6 * clean.max()
    for fn in ("results_to_init_params", "results_to_model_params"):
        for kw in ({}, {"remove_invalid": False}, {"reset_ids": False}):
            a = getattr(phot, fn)(**kw)
            b = getattr(photu, fn)(**kw)
            assert a.colnames == b.colnames
            assert len(a) == len(b)
            for c in b.colnames:
                np.testing.assert_allclose(_val(a[c]), _val(b[c]), rtol=1e-5, atol=1e-6)
    assert len(phot.results_to_init_params()) == len(tbl) - 1
    img = phot.make_model_image(SHAPE, psf_shape=(15, 15), include_local_bkg=True)
    np.testing.assert_allclose(img, clean, atol=1e-6 * clean.max())
    nd = phot.make_residual_image(NDData(clean), psf_shape=(15, 15))
    assert isinstance(nd, NDData) and np.abs(nd.data).max() < 1e-6 * clean.max()
    assert len(phot.fit_info) == len(tbl)
    assert phot.fit_info[0]["status"] == 1 and "param_cov" in phot.fit_info[0]
    assert phot.fit_info[-1]["status"] == -1
    names = phot.decode_flags()
    assert "no_overlap" in names[-1]
    again = phot(clean, init_params=phot.results_to_init_params())
    np.testing.assert_allclose(_val(again["flux_fit"]), truth["flux"], rtol=1e-6)


def test_progress_bar(scene, capsys):
    pytest.importorskip("tqdm")
    data, err, _, init = scene
    for fitter in (None, TRFLSQFitter()):
        phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5, progress_bar=True,
                             fitter=fitter, grouper=cp.SourceGrouper(8))
        t = phot(data, error=err, init_params=init)
        assert len(t) == len(init)
        assert "Fit source/group" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# state: threads and pickling
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
def test_threads_keep_their_own_results(scene, path):
    data, err, _, init = scene
    phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5, fitter=_fitter(path))
    halves = [init[:5], init[5:]]
    refs = [_val(phot(data, error=err, init_params=h)["flux_err"]) for h in halves]
    phot = pickle.loads(pickle.dumps(phot))  # fresh object, no main-thread result
    seen = {}
    barrier = threading.Barrier(2)

    def work(k):
        barrier.wait()
        for _ in range(3):
            phot(data, error=err, init_params=halves[k])
            seen.setdefault(k, []).append((np.asarray(phot.results["x_init"]),
                                           _val(phot.results["flux_err"])))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(2):
        assert len(seen[k]) == 3
        for x, ferr in seen[k]:
            np.testing.assert_array_equal(x, _val(halves[k]["x"]))
            # errors come from the fitter's per-call state: must not mix between threads
            np.testing.assert_array_equal(ferr, refs[k])
    assert phot.results is None  # the main thread never called it


def test_pickle_configured_object(scene):
    data, err, _, init = scene
    phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5, grouper=cp.SourceGrouper(8),
                         xy_bounds=1.0, aperture_radius=3)
    t = phot(data, error=err, init_params=init)
    clone = pickle.loads(pickle.dumps(phot))
    assert clone.results is None
    assert repr(clone) == repr(phot)
    t2 = clone(data, error=err, init_params=init)
    np.testing.assert_array_equal(_val(t2["flux_fit"]), _val(t["flux_fit"]))


def test_run_psf_photometry_is_stateless(scene):
    data, err, _, init = scene
    res = cp.run_psf_photometry(data, cp.CircularGaussianPRF(fwhm=FWHM), (5, 5), error=err,
                                init_params=init)
    assert isinstance(res, cp.PSFPhotometryResult)
    t = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5)(data, error=err, init_params=init)
    np.testing.assert_array_equal(_val(res.results["flux_fit"]), _val(t["flux_fit"]))
    assert res.init_params.colnames[:6] == ["id", "group_id", "local_bkg", "x_init", "y_init",
                                            "flux_init"]


def test_bad_error_values_on_masked_pixels_are_ignored(scene):
    data, err, _, init = scene
    mask = np.zeros(SHAPE, bool)
    mask[:, :20] = True
    bad = err.copy()
    bad[:, :10] = 0.0
    bad[:, 10:20] = np.nan
    phot = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5)
    t = phot(data, error=bad, mask=mask, init_params=init)
    ref = phot(data, error=err, mask=mask, init_params=init)
    np.testing.assert_array_equal(_val(t["flux_err"]), _val(ref["flux_err"]))


@pytest.mark.parametrize("path", PATHS)
def test_as_many_pixels_as_free_parameters(path):
    """3 unmasked pixels, 3 free parameters: fitted, no covariance, reduced_chi2 = inf."""
    model = cp.CircularGaussianPRF(fwhm=FWHM, flux=500.0, x_0=30.2, y_0=30.1)
    yy, xx = np.mgrid[:50, :50]
    data = model(xx, yy) + np.random.default_rng(1).normal(0, 1, (50, 50))
    mask = np.ones(data.shape, bool)
    mask[30, 30:32] = mask[29, 30] = False
    init = QTable({"x": [30.0], "y": [30.0], "flux": [450.0]})
    t = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5, fitter=_fitter(path))(
        data, mask=mask, error=np.ones_like(data), init_params=init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # photutils divides by zero dof
        tu = pp.PSFPhotometry(pp.CircularGaussianPRF(fwhm=FWHM), 5)(
            data, mask=mask, error=np.ones_like(data), init_params=init)
    assert int(t["flags"][0]) == 17 and t["n_pixels_fit"][0] == 3
    assert np.isinf(_val(t["reduced_chi2"])[0])
    assert_parity(t, tu)


# ----------------------------------------------------------------------------------------------
# blend_test (crowdphot extension): the post-fit test of close pairs can be turned off
# ----------------------------------------------------------------------------------------------
def test_blend_test_off_changes_only_the_blend_bit():
    # a pair 1.44 px (0.48 FWHM) apart, 290/280, that lands in a wrong minimum (seed 6,
    # tests/psf/test_blends.py): the test flags both members 32768
    psf = cp.CircularGaussianPRF(fwhm=3.0)
    t = QTable({"x_0": [20.0, 21.2], "y_0": [20.0, 20.8], "flux": [290.0, 280.0]})
    rng = np.random.default_rng(6)
    img = cp.make_model_image((41, 41), psf, t, model_shape=(15, 15))
    img = img + rng.normal(0, 5, img.shape)
    init = QTable({"x": t["x_0"] + rng.normal(0, .3, 2), "y": t["y_0"] + rng.normal(0, .3, 2)})
    err = np.full(img.shape, 5.0)
    kw = dict(aperture_radius=3, grouper=cp.SourceGrouper(6))
    on = PSFPhotometry(psf, (5, 5), **kw)(img, error=err, init_params=init)
    off_phot = PSFPhotometry(psf, (5, 5), blend_test=False, **kw)
    off = off_phot(img, error=err, init_params=init)
    blend = int(cp.PSF_FLAGS.UNRESOLVED_BLEND)
    assert np.all(np.asarray(on["flags"]) & blend)
    assert not np.any(np.asarray(off["flags"]) & blend)
    np.testing.assert_array_equal(np.asarray(off["flags"]), np.asarray(on["flags"]) & ~blend)
    for name in ("x_fit", "y_fit", "flux_fit", "flux_err"):
        np.testing.assert_array_equal(_val(off[name]), _val(on[name]))
    assert off.meta["blend_test"] is False and "blend_test" not in on.meta
    # the iterative class passes it on
    it = cp.IterativePSFPhotometry(psf, (5, 5), cp.DAOStarFinder(threshold=30, fwhm=3.0),
                                   blend_test=False, **kw)
    assert it._psfphot.blend_test is False


def test_blend_test_checked_and_ignored_with_compat():
    psf = cp.CircularGaussianPRF(fwhm=2.5)
    with pytest.raises(TypeError, match="blend_test"):
        PSFPhotometry(psf, (5, 5), blend_test="no")
    # photutils has no such test: with compat='photutils' it never runs, either way
    phot = PSFPhotometry(psf, (5, 5), blend_test=False, compat="photutils")
    img = psf.psf_stamps([20.3], [15.7], (32, 40), xlo=[0], ylo=[0])[0] * 1000.0
    tab = phot(img, init_params=QTable({"x": [20.0], "y": [16.0], "flux": [900.0]}))
    assert int(tab["flags"][0]) == 0 and "blend_test" not in tab.meta
