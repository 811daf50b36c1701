"""IterativePSFPhotometry: find / fit / subtract loop, checked against photutils 3.0."""

import pickle

import astropy.units as u
import numpy as np
import pytest
from astropy.modeling.fitting import TRFLSQFitter
from astropy.nddata import NDData, StdDevUncertainty
from astropy.table import QTable

import crowdphot as cp
from _scenes import clear_photutils_flat_model_cache
from _scenes import column_values as _val
from crowdphot import IterativePSFPhotometry, PSFPhotometry
from crowdphot.psf.flags import PSF_FLAGS

pp = pytest.importorskip("photutils.psf")
pdet = pytest.importorskip("photutils.detection")

FWHM = 2.5
SHAPE = (64, 64)
# six bright stars, four of them with a faint companion 2.8 px away that the first detection
# pass blends with its primary: found only in the residual image of iteration 2
XB = np.array([12.0, 30, 50, 14, 34, 52])
YB = np.array([12.0, 14, 10, 40, 36, 50])
FB = np.array([3000.0, 4000, 2500, 3500, 3000, 4500])


_fresh_photutils_flat_model_cache = pytest.fixture(autouse=True)(clear_photutils_flat_model_cache)


@pytest.fixture(scope="module")
def blended():
    truth = QTable({"x_0": np.r_[XB, XB[:4] + 2.6], "y_0": np.r_[YB, YB[:4] + 1.0],
                    "flux": np.r_[FB, FB[:4] * 0.3]})
    data = cp.make_model_image(SHAPE, cp.CircularGaussianPRF(fwhm=FWHM), truth,
                               model_shape=(15, 15))
    data = data + np.random.default_rng(5).normal(0.0, 1.0, data.shape)
    return data, np.ones(SHAPE), truth


def _pair(mode, *, fitter=None, maxiters=3, model_cp=None, model_pu=None, threshold=20,
          **kw):
    model_cp = model_cp if model_cp is not None else cp.CircularGaussianPRF(fwhm=FWHM)
    model_pu = model_pu if model_pu is not None else pp.CircularGaussianPRF(fwhm=FWHM)
    # the blends here are closer than the stamp size: count shared pixels as photutils does
    ic = IterativePSFPhotometry(model_cp, (5, 5), cp.DAOStarFinder(threshold=threshold, fwhm=FWHM),
                                grouper=cp.SourceGrouper(6), aperture_radius=3,
                                maxiters=maxiters, mode=mode, fitter=fitter,
                                shared_pixels="photutils", **kw)
    iu = pp.IterativePSFPhotometry(model_pu, (5, 5),
                                   pdet.DAOStarFinder(threshold=threshold, fwhm=FWHM),
                                   grouper=pp.SourceGrouper(6), aperture_radius=3,
                                   maxiters=maxiters, mode=mode, **kw)
    return ic, iu


def _assert_same(t, tu, *, flux_rtol=1e-4):
    assert t.colnames == tu.colnames
    for c in ("id", "group_id", "group_size", "iter_detected", "n_pixels_fit"):
        np.testing.assert_array_equal(np.asarray(t[c]), np.asarray(tu[c]), err_msg=c)
    flags = np.asarray(t["flags"])
    if t.meta["mode"] == "new":  # see _later_companions_flagged
        flags = flags & ~PSF_FLAGS.CONTAMINATED
    np.testing.assert_array_equal(flags, np.asarray(tu["flags"]), err_msg="flags")
    for c in ("x_fit", "y_fit"):
        np.testing.assert_allclose(_val(t[c]), _val(tu[c]), atol=1e-3, err_msg=c)
    np.testing.assert_allclose(_val(t["flux_fit"]), _val(tu["flux_fit"]), rtol=flux_rtol)
    np.testing.assert_allclose(_val(t["flux_err"]), _val(tu["flux_err"]), rtol=0.01)


def _later_companions_flagged(t):
    """mode='new': the first-pass fits of the blended primaries absorbed the light of the
    companions found in the second pass; crowdphot flags them contaminated (65536), photutils
    has no such bit. The isolated stars are not flagged."""
    x, y, it = _val(t["x_fit"]), _val(t["y_fit"]), np.asarray(t["iter_detected"])
    d = np.hypot(x[:, None] - x[None, it == 2], y[:, None] - y[None, it == 2]).min(axis=1)
    primary = (it == 1) & (d < 4)
    flagged = (np.asarray(t["flags"]) & PSF_FLAGS.CONTAMINATED) > 0
    assert primary.sum() == 4
    np.testing.assert_array_equal(flagged, primary)


@pytest.mark.parametrize("mode", ["new", "all"])
def test_modes_match_photutils(blended, mode):
    data, err, truth = blended
    ic, iu = _pair(mode)
    t = ic(data, error=err)
    tu = iu(data, error=err)
    assert len(t) == len(truth)  # every companion found
    assert list(np.bincount(np.asarray(t["iter_detected"]))[1:]) == [6, 4]
    _assert_same(t, tu)
    if mode == "new":
        _later_companions_flagged(t)
    assert t.colnames.index("iter_detected") == t.colnames.index("group_size") + 1
    assert t.meta["mode"] == mode and t.meta["maxiters"] == 3
    assert len(ic.fit_results) == len(iu.fit_results) == 2
    for res in ic.fit_results:
        assert isinstance(res, cp.PSFPhotometryResult)
        assert "iter_detected" not in res.results.colnames  # per-iteration tables untouched
    if mode == "new":  # the second pass numbered its own sources from 1
        np.testing.assert_array_equal(ic.fit_results[1].results["id"], [1, 2, 3, 4])
    assert len(ic.fit_results[1].results) == (4 if mode == "new" else 10)
    np.testing.assert_allclose(ic.make_model_image(SHAPE), iu.make_model_image(SHAPE),
                               atol=1e-3 * data.max())
    resid = ic.make_residual_image(data)
    # noise is 1; 'new' keeps the first-pass fits of the blended primaries
    assert np.std(resid) < (1.5 if mode == "all" else 4.0) < np.std(data) / 5
    a, b = ic.results_to_init_params(), iu.results_to_init_params()
    assert a.colnames == b.colnames
    np.testing.assert_allclose(_val(a["flux_init"]), _val(b["flux_init"]), rtol=1e-4)
    assert ic.results_to_model_params().colnames == iu.results_to_model_params().colnames
    decoded = [[name for name in row if name != "contaminated"] for row in ic.decode_flags()]
    assert decoded == iu.decode_flags()


def test_all_mode_improves_blended_fluxes(blended):
    """Refitting everything jointly ('all') recovers the blended pairs better than 'new'."""
    data, err, truth = blended
    tn = _pair("new")[0](data, error=err)
    ta = _pair("all")[0](data, error=err)
    order = np.lexsort((truth["y_0"], truth["x_0"]))

    def flux_error(t):
        idx = np.lexsort((_val(t["y_fit"]), _val(t["x_fit"])))
        return np.abs(_val(t["flux_fit"])[idx] / truth["flux"][order] - 1)

    assert flux_error(ta).max() < 0.05
    assert flux_error(tn).max() > flux_error(ta).max()


def test_all_mode_generic_with_free_fwhm(blended):
    """Extra free parameters restart from the previous fit ('all' mode), as in photutils."""
    data, err, truth = blended
    mc, mu = cp.CircularGaussianPRF(fwhm=2.2), pp.CircularGaussianPRF(fwhm=2.2)
    for m in (mc, mu):
        m.fwhm.fixed = False
    ic, iu = _pair("all", model_cp=mc, model_pu=mu)
    t = ic(data, error=err)
    tu = iu(data, error=err)
    _assert_same(t, tu)
    for c in ("fwhm_init", "fwhm_fit", "fwhm_err"):
        np.testing.assert_allclose(_val(t[c]), _val(tu[c]), rtol=1e-4, err_msg=c)
    assert len(t) == len(truth) and "fwhm_fit" in t.colnames
    first = ic.fit_results[0].results
    n1 = len(first)
    np.testing.assert_array_equal(_val(t["fwhm_init"])[:n1], _val(first["fwhm_fit"]))
    np.testing.assert_array_equal(_val(t["fwhm_init"])[n1:], 2.2)  # new sources: model value
    np.testing.assert_allclose(_val(t["fwhm_fit"]), FWHM, atol=0.05)
    np.testing.assert_allclose(_val(t["flux_fit"]), np.sort(truth["flux"])[
        np.argsort(np.argsort(_val(t["flux_fit"])))], rtol=0.05)


def test_generic_fitter_new_mode(blended):
    data, err, _ = blended
    ic, iu = _pair("new", fitter=TRFLSQFitter())
    _assert_same(ic(data, error=err), iu(data, error=err))


def test_single_iteration_equals_psfphotometry(blended):
    data, err, _ = blended
    ic, _ = _pair("new", maxiters=1)
    t = ic(data, error=err)
    ref = PSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), (5, 5),
                        finder=cp.DAOStarFinder(threshold=20, fwhm=FWHM),
                        grouper=cp.SourceGrouper(6), aperture_radius=3)(data, error=err)
    assert np.all(np.asarray(t["iter_detected"]) == 1)
    np.testing.assert_array_equal(_val(t["flux_fit"]), _val(ref["flux_fit"]))


def test_units_and_nddata(blended):
    data, err, _ = blended
    ic, iu = _pair("all", threshold=20 * u.Jy)
    t = ic(data * u.Jy, error=err * u.Jy)
    tu = iu(data * u.Jy, error=err * u.Jy)
    assert t["flux_fit"].unit == u.Jy and t["local_bkg"].unit == u.Jy
    _assert_same(t, tu)
    assert ic.make_model_image(SHAPE).unit == u.Jy
    nd = NDData(data * u.Jy, uncertainty=StdDevUncertainty(err))
    t2 = ic(nd)
    np.testing.assert_allclose(_val(t2["flux_fit"]), _val(t["flux_fit"]), rtol=1e-10)


def test_init_params_and_no_sources(blended):
    data, err, truth = blended
    ic, _ = _pair("new", maxiters=2)
    t = ic(data, error=err, init_params=QTable({"x": XB, "y": YB, "flux": FB}))
    assert len(t) == 10
    with pytest.warns(Warning, match="(?i)no sources"):
        empty = IterativePSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5,
                                       cp.DAOStarFinder(threshold=1e6, fwhm=FWHM),
                                       aperture_radius=3)(data)
    assert empty is None


def test_argument_errors():
    model = cp.CircularGaussianPRF(fwhm=FWHM)
    finder = cp.DAOStarFinder(threshold=20, fwhm=FWHM)
    with pytest.raises(ValueError, match="finder"):
        IterativePSFPhotometry(model, 5, None, aperture_radius=3)
    with pytest.raises(ValueError, match="aperture_radius"):
        IterativePSFPhotometry(model, 5, finder)
    with pytest.raises(ValueError, match="grouper"):
        IterativePSFPhotometry(model, 5, finder, aperture_radius=3, mode="all")
    with pytest.raises(ValueError, match="mode"):
        IterativePSFPhotometry(model, 5, finder, aperture_radius=3, mode="some")
    for bad in (0, 2.5, np.inf):
        with pytest.raises(ValueError, match="maxiters"):
            IterativePSFPhotometry(model, 5, finder, aperture_radius=3, maxiters=bad)
    with pytest.raises(TypeError, match="maxiters"):
        IterativePSFPhotometry(model, 5, finder, aperture_radius=3, maxiters="3")
    with pytest.raises(ValueError, match="fit_shape"):
        IterativePSFPhotometry(model, 4, finder, aperture_radius=3)
    with pytest.raises(ValueError, match="sub_shape must be odd"):
        IterativePSFPhotometry(model, 5, finder, aperture_radius=3, sub_shape=4)
    phot = IterativePSFPhotometry(model, 5, finder, aperture_radius=3)
    assert phot.results is None and phot.fit_results == []
    with pytest.raises(ValueError, match="No results"):
        phot.make_model_image(SHAPE)


def test_pickle_and_config_attributes(blended):
    data, err, _ = blended
    ic, _ = _pair("new")
    assert ic.fit_shape == (5, 5) and ic.aperture_radius == 3
    ic(data, error=err)
    clone = pickle.loads(pickle.dumps(ic))
    assert clone.results is None and repr(clone) == repr(ic)
    np.testing.assert_array_equal(_val(clone(data, error=err)["flux_fit"]),
                                  _val(ic.results["flux_fit"]))


@pytest.mark.parametrize("mode", ["new", "all"])
def test_iraf_finder_sub_shape_and_table_details(blended, mode):
    from astropy.utils.exceptions import AstropyDeprecationWarning

    data, err, _ = blended
    kw = {"aperture_radius": 3, "maxiters": 3, "mode": mode, "sub_shape": (7, 7)}
    ic = IterativePSFPhotometry(cp.CircularGaussianPRF(fwhm=FWHM), 5,
                                cp.IRAFStarFinder(threshold=20, fwhm=FWHM),
                                grouper=cp.SourceGrouper(6), shared_pixels="photutils", **kw)
    iu = pp.IterativePSFPhotometry(pp.CircularGaussianPRF(fwhm=FWHM), 5,
                                   pdet.IRAFStarFinder(threshold=20, fwhm=FWHM),
                                   grouper=pp.SourceGrouper(6), **kw)
    t = ic(data, error=err)
    _assert_same(t, iu(data, error=err))
    assert list(t.meta) == list(iu.results.meta) and t.meta["sub_shape"] == (7, 7)
    with pytest.warns(AstropyDeprecationWarning, match="npixfit"):
        np.testing.assert_array_equal(t["npixfit"], t["n_pixels_fit"])
