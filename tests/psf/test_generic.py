"""Generic fitting path: any astropy model and fitter, checked against photutils 3.0."""

import threading
import time
import warnings

import numpy as np
import pytest
from astropy.modeling import Fittable2DModel, Parameter
from astropy.modeling.fitting import LevMarLSQFitter, TRFLSQFitter
from astropy.table import QTable

import crowdphot as cp
from _scenes import clear_photutils_flat_model_cache
from _scenes import column_values as _val
from crowdphot import PSFPhotometry
from crowdphot.core.validate import CrowdphotWarning

pp = pytest.importorskip("photutils.psf")

SHAPE = (56, 56)


_fresh_photutils_flat_model_cache = pytest.fixture(autouse=True)(clear_photutils_flat_model_cache)


class ToyGaussian(Fittable2DModel):
    """Photutils-free point-sampled circular Gaussian with flux/x_0/y_0 and a free sigma."""

    flux = Parameter(default=1.0)
    x_0 = Parameter(default=0.0)
    y_0 = Parameter(default=0.0)
    sigma = Parameter(default=1.2, fixed=True)

    @property
    def bounding_box(self):
        half = 5.5 * self.sigma.value
        return ((self.y_0 - half, self.y_0 + half), (self.x_0 - half, self.x_0 + half))

    @staticmethod
    def evaluate(x, y, flux, x_0, y_0, sigma):
        r2 = (x - x_0) ** 2 + (y - y_0) ** 2
        return flux / (2 * np.pi * sigma**2) * np.exp(-0.5 * r2 / sigma**2)


@pytest.fixture(scope="module")
def toy_scene():
    model = ToyGaussian(sigma=1.3)
    data, truth = cp.make_psf_model_image(SHAPE, model, 8, flux=(800, 2000), min_separation=5,
                                          seed=21, model_shape=(13, 13))
    data = data + np.random.default_rng(4).normal(0.0, 1.0, data.shape)
    init = QTable({"x": truth["x_0"] + 0.25, "y": truth["y_0"] - 0.2,
                   "flux": truth["flux"] * 1.1})
    return data, np.ones(SHAPE), truth, init


def _compare(t, tu, *, cols=None):
    assert t.colnames == tu.colnames
    for c in cols or tu.colnames:
        a, b = _val(t[c]), _val(tu[c])
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=c)
        ok = np.isfinite(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-5, atol=1e-8, err_msg=c)


@pytest.mark.parametrize("grouper", [None, 7.0], ids=["ungrouped", "grouped"])
@pytest.mark.parametrize("fitter", [TRFLSQFitter, LevMarLSQFitter], ids=["trf", "lm"])
def test_custom_model_parity(toy_scene, grouper, fitter):
    data, err, truth, init = toy_scene
    gc = {} if grouper is None else {"grouper": cp.SourceGrouper(grouper)}
    gu = {} if grouper is None else {"grouper": pp.SourceGrouper(grouper)}
    model = ToyGaussian(sigma=1.3)
    phot = PSFPhotometry(model, (5, 5), fitter=fitter(), **gc)
    photu = pp.PSFPhotometry(model.copy(), (5, 5), fitter=fitter(), **gu)
    t = phot(data, error=err, init_params=init)
    tu = photu(data, error=err, init_params=init)
    if grouper is not None:
        assert t["group_size"].max() > 1
    _compare(t, tu)
    np.testing.assert_allclose(_val(t["flux_fit"]), truth["flux"], rtol=0.05)
    np.testing.assert_allclose(phot.make_model_image(SHAPE), photu.make_model_image(SHAPE),
                               atol=1e-6 * data.max())


def test_custom_model_without_fitter_uses_generic_path(toy_scene):
    """A non-crowdphot model with fitter=None is fitted with TRFLSQFitter (photutils default)."""
    data, err, _, init = toy_scene
    t = PSFPhotometry(ToyGaussian(sigma=1.3), 5)(data, error=err, init_params=init)
    tu = pp.PSFPhotometry(ToyGaussian(sigma=1.3), 5)(data, error=err, init_params=init)
    _compare(t, tu)


@pytest.mark.parametrize("builtin", [True, False], ids=["crowdphot-model", "custom-model"])
def test_extra_free_parameter_columns(toy_scene, builtin):
    data, err, _, init = toy_scene
    if builtin:
        model, name, value = cp.CircularGaussianPRF(fwhm=3.0), "fwhm", 3.0
        modelu = pp.CircularGaussianPRF(fwhm=3.0)
        modelu.fwhm.fixed = False
    else:
        model, name, value = ToyGaussian(sigma=1.2), "sigma", 1.2
        modelu = None
    getattr(model, name).fixed = False
    modelu = modelu if modelu is not None else model.copy()
    phot = PSFPhotometry(model, (7, 7), grouper=cp.SourceGrouper(7))
    photu = pp.PSFPhotometry(modelu, (7, 7), grouper=pp.SourceGrouper(7))
    t = phot(data, error=err, init_params=init)
    tu = photu(data, error=err, init_params=init)
    # each source is rendered with its own fitted shape parameter
    np.testing.assert_allclose(phot.make_model_image(SHAPE), photu.make_model_image(SHAPE),
                               atol=1e-6 * data.max())
    assert name in phot.results_to_model_params().colnames
    for col in (f"{name}_init", f"{name}_fit", f"{name}_err"):
        assert col in t.colnames
    assert t.colnames.index(f"{name}_init") == t.colnames.index("flux_init") + 1
    np.testing.assert_array_equal(_val(t[f"{name}_init"]), value)
    if not builtin:  # the scene was drawn with sigma = 1.3
        np.testing.assert_allclose(_val(t["sigma_fit"]), 1.3, atol=0.05)
    _compare(t, tu)


def test_extra_parameter_initial_values_from_table(toy_scene):
    data, err, _, init = toy_scene
    model = ToyGaussian(sigma=1.0)
    model.sigma.fixed = False
    tbl = init.copy()
    tbl["sigma"] = 1.25
    t = PSFPhotometry(model, 7)(data, error=err, init_params=tbl)
    tu = pp.PSFPhotometry(model.copy(), 7)(data, error=err, init_params=tbl)
    np.testing.assert_array_equal(_val(t["sigma_init"]), 1.25)
    _compare(t, tu)


def test_iteration_limit_sets_no_convergence_flag(toy_scene):
    data, err, _, init = toy_scene
    model = ToyGaussian(sigma=1.3)
    phot = PSFPhotometry(model, 5, fitter=TRFLSQFitter(), fitter_maxiters=1)
    with pytest.warns(CrowdphotWarning, match="converged"):
        t = phot(data, error=err, init_params=init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tu = pp.PSFPhotometry(model.copy(), 5, fitter=TRFLSQFitter(), fitter_maxiters=1)(
            data, error=err, init_params=init)
    np.testing.assert_array_equal(np.asarray(t["flags"]), np.asarray(tu["flags"]))
    assert np.all(np.asarray(t["flags"]) & 8)
    assert phot.fit_info[0]["status"] == 0


def test_generic_xy_bounds_and_forced(toy_scene):
    data, err, truth, _ = toy_scene
    init = QTable({"x": truth["x_0"] + 0.5, "y": truth["y_0"], "flux": truth["flux"]})
    model = ToyGaussian(sigma=1.3)
    t = PSFPhotometry(model, 5, xy_bounds=(0.2, None))(data, error=err, init_params=init)
    tu = pp.PSFPhotometry(model.copy(), 5, xy_bounds=(0.2, None))(data, error=err,
                                                                 init_params=init)
    np.testing.assert_allclose(_val(t["x_fit"]) - _val(init["x"]), -0.2, atol=1e-6)
    assert np.all(np.asarray(t["flags"]) & 32)
    _compare(t, tu)
    forced = model.copy()
    forced.x_0.fixed = forced.y_0.fixed = True
    t = PSFPhotometry(forced, 5)(data, error=err, init_params=init)
    tu = pp.PSFPhotometry(forced.copy(), 5)(data, error=err, init_params=init)
    np.testing.assert_array_equal(_val(t["x_fit"]), _val(init["x"]))
    _compare(t, tu)


def test_fit_generic_direct_call_marks_unfittable(toy_scene):
    from crowdphot.psf._generic import fit_generic
    from crowdphot.psf._inputs import build_init_params

    data, err, _, init = toy_scene
    model = ToyGaussian(sigma=1.3)
    tbl = init.copy()
    tbl.add_row({"x": -50.0, "y": 3.0, "flux": 10.0})
    table, _ = build_init_params(data, None, tbl, psf_model=model)
    reason = np.full(len(table), "", dtype=object)
    fit, info = fit_generic(data, None, err, table, reason, psf_model=model,
                            main_params=("x_0", "y_0", "flux"), aliases=["x", "y", "flux"],
                            fit_shape=(5, 5), fitter=None, maxiters=100, xy_bounds=None)
    assert reason[-1] == "no_overlap" and np.isnan(fit.values["flux"][-1])
    assert (reason[:-1] == "").all() and fit.converged[:-1].all()
    assert len(info) == len(table) and "param_cov" in info[0]


class _SlowFitter(TRFLSQFitter):
    """Sleeps after each fit so that another thread's fit lands in between (race detector)."""

    def __call__(self, *args, maxiter=100, **kwargs):  # names maxiter, as photutils checks
        out = super().__call__(*args, maxiter=maxiter, **kwargs)
        time.sleep(0.003)
        return out


def test_shared_fitter_state_is_private_per_call(toy_scene):
    data, err, _, init = toy_scene
    phot = PSFPhotometry(ToyGaussian(sigma=1.3), 5, fitter=_SlowFitter())
    halves = [init[:4], init[4:]]
    refs = [_val(phot(data, error=err, init_params=h)["flux_err"]) for h in halves]
    out = {}
    barrier = threading.Barrier(2)

    def work(k):
        barrier.wait()
        out[k] = _val(phot(data, error=err, init_params=halves[k])["flux_err"])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(2):
        np.testing.assert_array_equal(out[k], refs[k])
