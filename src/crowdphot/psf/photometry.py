"""photutils-compatible PSF photometry classes: a thin shell over the batched engine.

``PSFPhotometry`` validates and stores its configuration, then calls the pure pipeline
:func:`run_psf_photometry`, which returns an immutable :class:`PSFPhotometryResult`. For drop-in
compatibility the class also remembers the result of the latest call *in the calling thread*
(``results``, ``fit_info``, ``make_model_image`` ...), so one configured object can be shared
between threads or shipped to Dask workers without cross-talk.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
from astropy.table import QTable

from crowdphot.core.validate import CrowdphotWarning, check_data_mask_error, positive_real
from crowdphot.psf import _fastpath as _fast
from crowdphot.psf import _inputs as _photinit
from crowdphot.psf._biascorr import apply_bias_correction, check_bias_correction
from crowdphot.psf._compat import check_compat, check_compat_options
from crowdphot.psf._mlrefine import profile_errors_gaussian
from crowdphot.psf._results import FitInfo, _provenance, assemble_results
from crowdphot.psf.blends import catalog_blend_flags
from crowdphot.psf.contamination import catalog_contamination_flags
from crowdphot.psf.likelihood import (
    check_noise_options,
    expected_error_image,
    poisson_blend_flags,
    sky_map,
)
from crowdphot.utils._deprecation import renamed_argument

__all__ = ["PSFPhotometry", "PSFPhotometryResult", "run_psf_photometry"]


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------
class PSFPhotometryResult:
    """Everything one photometry call produced; immutable once built.

    Attributes
    ----------
    results : QTable
        The catalog (photutils 3 columns).
    init_params : QTable
        The initial parameters the fit started from.
    finder_results : Table or None
        The finder's table when a finder was run.
    fit_info : FitInfo
        Per-source fit diagnostics.
    """

    def __init__(self, *, results, init_params, finder_results, fit_info, psf_model,
                 main_params, unit, progress_bar=False):
        self.results = results
        self.init_params = init_params
        self.finder_results = finder_results
        self.fit_info = fit_info
        self._psf_model = psf_model
        self._main_params = main_params
        self._unit = unit
        self._progress_bar = progress_bar

    def results_to_init_params(self, *, remove_invalid=True, reset_ids=True):
        """Table of ``<name>_init`` columns from the fitted ``<name>_fit`` columns."""
        return _fit_columns_table(self.results, lambda c: c.replace("_fit", "_init"),
                                  remove_invalid, reset_ids)

    def results_to_model_params(self, *, remove_invalid=True, reset_ids=True):
        """Table of the model's parameter names (``x_0, y_0, flux`` ...) from the fit."""
        xname, yname, fname = self._main_params
        mapping = {"x": xname, "y": yname, "flux": fname}
        return _fit_columns_table(
            self.results, lambda c: mapping.get(c[: -len("_fit")], c[: -len("_fit")]),
            remove_invalid, reset_ids)

    @renamed_argument("include_localbkg", "include_local_bkg")
    def make_model_image(self, shape, *, psf_shape=None, include_local_bkg=False):
        """Render the fitted sources into an image of ``shape`` (batched).

        Parameters
        ----------
        shape : (ny, nx)
        psf_shape : (py, px) or None
            Stamp over which each source is rendered; default: the model's bounding box.
        include_local_bkg : bool
            Add each source's local background over its stamp, as photutils does.

        Returns
        -------
        image : ndarray (ny, nx) (a Quantity when the data had units)
        """
        from crowdphot.datasets.simulation import make_model_image

        params = self.results_to_model_params(remove_invalid=False)
        keep = np.all([np.isfinite(np.asarray(getattr(params[c], "value", params[c])))
                       for c in params.colnames], axis=0)
        params = params[keep]
        for c in params.colnames:
            params[c] = np.asarray(getattr(params[c], "value", params[c]))
        if include_local_bkg:
            bkg = np.asarray(getattr(self.results["local_bkg"], "value",
                                     self.results["local_bkg"]))[keep]
            params["local_bkg"] = np.where(np.isfinite(bkg), bkg, 0.0)
        xname, yname, _ = self._main_params
        image = make_model_image(tuple(shape), self._psf_model, params, model_shape=psf_shape,
                                 x_name=xname, y_name=yname, progress_bar=self._progress_bar)
        if self._unit is not None:
            image = image * self._unit
        return image

    @renamed_argument("include_localbkg", "include_local_bkg")
    def make_residual_image(self, data, *, psf_shape=None, include_local_bkg=False):
        """``data`` minus :meth:`make_model_image` (NDData in, NDData out)."""
        from astropy.nddata import NDData

        if isinstance(data, NDData):
            model = self.make_model_image(data.data.shape, psf_shape=psf_shape,
                                          include_local_bkg=include_local_bkg)
            return NDData(data.data - np.asarray(getattr(model, "value", model)),
                          mask=data.mask, uncertainty=data.uncertainty, unit=data.unit,
                          wcs=data.wcs, meta=data.meta)
        model = self.make_model_image(np.shape(data), psf_shape=psf_shape,
                                      include_local_bkg=include_local_bkg)
        return data - model


def _fit_columns_table(results, rename, remove_invalid, reset_ids):
    if results is None:
        return None
    tbl = QTable()
    for name in results.colnames:
        if name == "sky_fit":  # the fitted sky is no model parameter
            continue
        if name == "id" or "_fit" in name:
            tbl["id" if name == "id" else rename(name)] = results[name]
    if remove_invalid:
        keep = np.all([np.isfinite(np.asarray(getattr(tbl[c], "value", tbl[c])))
                       for c in tbl.colnames], axis=0)
        tbl = tbl[keep]
        if reset_ids:
            tbl["id"] = np.arange(1, len(tbl) + 1)
    return tbl


# ----------------------------------------------------------------------------------------------
# the pipeline (pure function)
# ----------------------------------------------------------------------------------------------
def run_psf_photometry(data, psf_model, fit_shape, *, mask=None, error=None, init_params=None,
                       finder=None, grouper=None, fitter=None, fitter_maxiters=100,
                       xy_bounds=None, aperture_radius=None, local_bkg_estimator=None,
                       group_warning_threshold=25, progress_bar=False, meta=None,
                       shared_pixels=None, fit_sky=False, likelihood="gaussian",
                       read_noise=None, gain=1.0, crlb=False, subtract_neighbors=False,
                       merge_separation=None, compat=None, sky=None, blend_test=True,
                       bias_correction=False, profile_errors=True):
    """Find (optionally), group and fit PSF photometry; the stateless core of PSFPhotometry.

    Parameters are those of :class:`PSFPhotometry` and its ``__call__``.

    Returns
    -------
    result : PSFPhotometryResult or None
        None when no sources were found or given.

    Examples
    --------
    >>> from astropy.table import QTable
    >>> from crowdphot import CircularGaussianPRF
    >>> psf = CircularGaussianPRF(fwhm=2.5)
    >>> img = psf.psf_stamps([20.3], [15.7], (32, 40), xlo=[0], ylo=[0])[0] * 1000.0
    >>> res = run_psf_photometry(img, psf, (5, 5),
    ...                          init_params=QTable({'x': [20.0], 'y': [16.0], 'flux': [900.0]}))
    >>> round(float(res.results['x_fit'][0]), 4), round(float(res.results['flux_fit'][0]), 2)
    (20.3, 1000.0)
    """
    likelihood, read_noise, gain, crlb = check_noise_options(likelihood, read_noise, gain, crlb)
    compat, shared_pixels = check_compat_options(
        compat, shared_pixels=shared_pixels, fit_sky=fit_sky,
        subtract_neighbors=subtract_neighbors, merge_separation=merge_separation,
        likelihood=likelihood, crlb=crlb, bias_correction=bias_correction)
    bias_correction = check_bias_correction(bias_correction, likelihood=likelihood,
                                            error_given=error is not None)
    if likelihood == "poisson" and error is not None:
        warnings.warn("error is ignored with likelihood='poisson' (the pixel variances come "
                      "from the model, read_noise and gain)", CrowdphotWarning, stacklevel=3)
        error = None
    data, mask, error, unit = _photinit.coerce_inputs(data, mask, error)
    data, mask, error = check_data_mask_error(data, mask, error, stacklevel=4,
                                              defer_error=True)
    if sky is not None:  # a sky map in the data: removed here, in the Poisson expectation
        sky = sky_map(sky, data.shape, unit)
        data = data - sky
    main_params = _photinit.model_main_params(psf_model)
    if all(psf_model.fixed[p] for p in psf_model.param_names):
        # photutils fails here inside scipy with this message
        raise ValueError("The PSF model has no free parameters to fit (photutils: `bounds` "
                         "must contain 2 elements)")
    table, finder_results = _photinit.build_init_params(
        data, mask, init_params, psf_model=psf_model, finder=finder, grouper=grouper,
        aperture_radius=aperture_radius, local_bkg_estimator=local_bkg_estimator, unit=unit,
        group_warning_threshold=group_warning_threshold)
    if table is None:
        from crowdphot.utils.exceptions import NoDetectionsWarning

        warnings.warn("No sources were found; nothing to fit", NoDetectionsWarning,
                      stacklevel=3)
        return None
    n = len(table)
    reason = _fast.prefit_reasons(table, data.shape, fit_shape)
    todo = reason == ""
    if error is not None:
        error = _fast.check_fitted_errors(error, table, todo, fit_shape)
    extra = [c[: -len("_init")] for c in table.colnames[6:]]
    aliases = ["x", "y", "flux", *extra]

    passes = n_corrected = None
    if _fast.use_fast_path(psf_model, fitter, main_params, fit_shape):
        pieces, passes = _fast.fit_fast(
            data, mask, error, table, todo, psf_model=psf_model, fit_shape=fit_shape,
            maxiters=fitter_maxiters, xy_bounds=xy_bounds, progress_bar=progress_bar,
            shared_pixels=shared_pixels, fit_sky=fit_sky,
            noise=(read_noise, gain, sky, profile_errors) if likelihood == "poisson" else None,
            subtract_neighbors=subtract_neighbors, merge_separation=merge_separation,
            drop_failed=compat is None)
        fit = _fast.collect_fast(n, todo, pieces, table, reason, xy_bounds, psf_model)
        if compat == "photutils":
            _fast.refit_as_photutils(fit, data, mask, error, table, todo, psf_model=psf_model,
                                     main_params=main_params, fit_shape=fit_shape,
                                     maxiters=fitter_maxiters, xy_bounds=xy_bounds)
        if passes is not None:
            fit.merged = np.zeros(n, dtype=bool)
            fit.merged[np.flatnonzero(todo)] = passes["merged"]
        fisher_flux_err = fit.errors["flux"].copy()  # the blend test's yardstick
        if (profile_errors and compat is None and likelihood == "gaussian" and error is not None
                and not fit_sky and not subtract_neighbors and merge_separation is None
                and shared_pixels == "once"):  # close faint pairs' errors (_mlrefine)
            profile_errors_gaussian(fit, data, mask, error, table, todo, psf_model=psf_model,
                                    fit_shape=fit_shape)
        test_blends = compat is None and blend_test  # photutils has no such test
        if test_blends and likelihood == "gaussian":  # flag 32768 (crowdphot.psf.blends)
            fit.blend = catalog_blend_flags(data, psf_model, table, fit.values,
                                            fisher_flux_err, fit_shape, error=error,
                                            mask=mask, sky=fit.sky)
        elif test_blends:  # the same test weighted with the model's variances
            fit.blend = poisson_blend_flags(data, psf_model, table, fit.values,
                                            fit.errors["flux"], fit_shape,
                                            read_noise=read_noise, gain=gain, mask=mask,
                                            sky=sky, group_sky=fit.sky)
        if compat is None:  # flags 65536 and 131072 (crowdphot.psf.contamination)
            _contamination(fit, data, psf_model, table, fit_shape, error=error, mask=mask,
                           noise=(read_noise, gain, sky) if likelihood == "poisson" else None,
                           subtract_neighbors=subtract_neighbors)
        if bias_correction:  # Cox & Snell, groups jointly (crowdphot.psf._biascorr)
            bias = apply_bias_correction(fit, table, psf_model, fit_shape, error, mask,
                                         fit_sky=fit_sky)
            n_corrected = int(np.count_nonzero(np.all(np.isfinite(bias), axis=1)))
        engine_index = {"x_0": 0, "y_0": 1, "flux": 2}
        order = [engine_index[p] for p in psf_model.param_names if not psf_model.fixed[p]]
        if fit_sky:
            order.append(3)  # the group's sky closes the covariance
        fit_info = FitInfo(fit.cov, fit.converged, fit.niter, fit.reason == "", order,
                           left_stamp=fit.left_stamp)
    else:
        if likelihood == "poisson" or crlb:
            raise ValueError("likelihood='poisson' and crlb=True need the batched engine: a "
                             "built-in crowdphot PSF model with only x_0, y_0 and flux free and "
                             "fitter=None")
        if fit_sky or bias_correction:
            raise ValueError(f"{'fit_sky' if fit_sky else 'bias_correction'}=True needs the "
                             "batched engine: a built-in crowdphot PSF model with only x_0, "
                             "y_0 and flux free and fitter=None")
        if subtract_neighbors or merge_separation is not None:
            raise ValueError("subtract_neighbors=True and merge_separation need the batched "
                             "engine: a built-in "
                             "crowdphot PSF model with only x_0, y_0 and flux free and "
                             "fitter=None")
        from crowdphot.psf._generic import fit_generic

        fit, fit_info = fit_generic(data, mask, error, table, reason, psf_model=psf_model,
                                    main_params=main_params, aliases=aliases,
                                    fit_shape=fit_shape, fitter=fitter,
                                    maxiters=fitter_maxiters, xy_bounds=xy_bounds,
                                    progress_bar=progress_bar, compat=compat)
        if compat is None and callable(getattr(psf_model, "_stamps_grad", None)):
            # a built-in model with an astropy fitter: the same tests on its fit
            _contamination(fit, data, psf_model, table, fit_shape, error=error, mask=mask,
                           noise=None, subtract_neighbors=False)
    gid = np.asarray(table["group_id"])
    _, inverse, counts = np.unique(gid, return_inverse=True, return_counts=True)
    fit.group_size = counts[inverse]
    results = assemble_results(table, fit, aliases=aliases, shape=data.shape,
                               fit_shape=fit_shape, unit=unit, meta=meta)
    if n_corrected is not None:  # rows whose bias was evaluated (0 above S/N 100)
        results.meta["n_bias_corrected"] = n_corrected
    if passes is not None:
        if subtract_neighbors:
            results.meta["allstar_passes"] = int(passes["passes"])
        if merge_separation is not None:
            results.meta["n_merged"] = int(np.count_nonzero(fit.reason == "merged"))
    if crlb:
        from crowdphot.psf.likelihood import add_crlb_column

        add_crlb_column(results, psf_model, data.shape, mask, fit_shape, read_noise, gain, unit,
                        sky=sky)
    n_bad = int(np.count_nonzero((fit.reason == "") & ~fit.converged))
    if n_bad:
        from crowdphot.utils.exceptions import FitConvergenceWarning

        warnings.warn(  # photutils' wording and class (an AstropyUserWarning)
            'One or more fit(s) may not have converged. Please check the "flags" column in '
            f"the output table ({n_bad} fit(s), flag bit 8).",
            FitConvergenceWarning, stacklevel=3)
    init_out = table.copy()
    if unit is not None:
        for name in ("local_bkg", "flux_init"):
            init_out[name] = init_out[name] * unit
    return PSFPhotometryResult(results=results, init_params=init_out,
                               finder_results=finder_results, fit_info=fit_info,
                               psf_model=psf_model, main_params=main_params, unit=unit,
                               progress_bar=progress_bar)


def _contamination(fit, data, psf_model, table, fit_shape, *, error, mask, noise,
                   subtract_neighbors):
    """Set ``fit.contaminated`` and ``fit.unconstrained`` (:mod:`crowdphot.psf.contamination`)."""
    if noise is not None:  # the Poisson fit's weights at its solution
        error = expected_error_image(data.shape, psf_model, table, fit.values, fit_shape,
                                     noise[0], noise[1], sky=noise[2], group_sky=fit.sky)
    fit.contaminated, fit.unconstrained = catalog_contamination_flags(
        data, psf_model, table, fit.values, fit.errors["flux"], fit_shape, error=error,
        mask=mask, fit_sky=fit.sky is not None,
        fixed_xy=(bool(psf_model.x_0.fixed), bool(psf_model.y_0.fixed)),
        reduced_chi2=fit.reduced_chi2, n_pixels=fit.n_pixels,
        unmodelled=not subtract_neighbors)


# ----------------------------------------------------------------------------------------------
# the photutils-compatible class
# ----------------------------------------------------------------------------------------------
class _LatestResultMixin:
    """photutils-compatible access to the result of the latest call made in this thread.

    The class keeps ``self._last = threading.local()`` (so that threads sharing one instance
    never see each other's results), stores its latest :class:`PSFPhotometryResult` (or None)
    in ``self._last.result`` and names itself in ``_run_name`` for the error message.
    """

    _run_name = ""

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_last", None)  # per-thread results never travel with the configuration
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._last = threading.local()

    def _latest(self, name):
        r = getattr(self._last, "result", None)
        return None if r is None else getattr(r, name)

    def _result(self):
        result = getattr(self._last, "result", None)
        if result is None:
            raise ValueError(f"No results available. Please run the {self._run_name} instance "
                             "first.")
        return result

    @property
    def results(self):
        """The latest results table in this thread (None before the first call)."""
        return self._latest("results")

    @property
    def fit_params(self):
        """Deprecated (photutils 3.0): the latest results table; use ``results``."""
        from astropy.utils.exceptions import AstropyDeprecationWarning

        warnings.warn("The fit_params function is deprecated and may be removed in a future "
                      "version.\n        Use results instead.", AstropyDeprecationWarning,
                      stacklevel=2)
        return self.results

    def results_to_init_params(self, *, remove_invalid=True, reset_ids=True):
        """Initial-parameter table built from the latest fit (None before the first call)."""
        if getattr(self._last, "result", None) is None:  # photutils returns None here
            return None
        return self._result().results_to_init_params(remove_invalid=remove_invalid,
                                                     reset_ids=reset_ids)

    def results_to_model_params(self, *, remove_invalid=True, reset_ids=True):
        """Model-parameter table built from the latest fit (None before the first call)."""
        if getattr(self._last, "result", None) is None:  # photutils returns None here
            return None
        return self._result().results_to_model_params(remove_invalid=remove_invalid,
                                                      reset_ids=reset_ids)

    def decode_flags(self, *, return_bit_values=False):
        """Decode the latest results' ``flags`` column (see :func:`crowdphot.decode_flags`)."""
        from crowdphot.psf.flags import decode_flags

        return decode_flags(self._result().results["flags"],
                            return_bit_values=return_bit_values)

    @renamed_argument("include_localbkg", "include_local_bkg")
    def make_model_image(self, shape, *, psf_shape=None, include_local_bkg=False):
        """Image of the sources fitted by the latest call (batched render)."""
        return self._result().make_model_image(shape, psf_shape=psf_shape,
                                               include_local_bkg=include_local_bkg)

    @renamed_argument("include_localbkg", "include_local_bkg")
    def make_residual_image(self, data, *, psf_shape=None, include_local_bkg=False):
        """``data`` minus the model image of the sources fitted by the latest call."""
        return self._result().make_residual_image(data, psf_shape=psf_shape,
                                                  include_local_bkg=include_local_bkg)


class PSFPhotometry(_LatestResultMixin):
    """PSF photometry: find (optionally), group and fit a PSF model to every source.

    Same arguments, outputs, columns and flag bits as photutils 3's ``PSFPhotometry``. Built-in
    crowdphot models with only ``x_0``, ``y_0`` and ``flux`` free (and ``fitter=None``) go
    through the batched engine (all sources and groups at once, large groups as one sparse
    system); any other astropy model or fitter takes a generic, slower per-group path.

    On the batched engine, a group member whose position leaves its fit stamp (flags
    ``left_stamp`` 4096 and no_convergence 8) or whose values are absurd (8192) is dropped
    from its group's model and the group refitted without it, as DAOPHOT's ALLSTAR deletes
    such stars, so that no partner compensates a runaway model; the failed row keeps its
    flags and reports the flux measured at its initial position on the data minus the other
    stars, and partners that may have absorbed more than their flux error of its light are
    flagged ``merged`` (16384) (:mod:`crowdphot.psf._failed`; photutils keeps such a member
    in the group's fit: ``compat='photutils'``).

    With a built-in crowdphot model (any fitter), a star whose fit stamp holds light of other
    fitted stars that was not modelled with it (other groups; every other star without a
    grouper) is flagged ``contaminated`` (65536) when, by the linear response of its fit,
    that light moves its flux by more than its flux error
    (:mod:`crowdphot.psf.contamination`; never with ``subtract_neighbors=True`` or
    ``compat='photutils'``), and a star whose flux error exceeds 10 x that of the same star
    alone on its stamp (a degenerate pair: the group's fit cannot tell its flux from its
    partners') is flagged ``unconstrained`` (131072).

    Parameters
    ----------
    psf_model : astropy Fittable2DModel
        Model with ``flux``, ``x_0``, ``y_0`` parameters. Fix ``x_0``/``y_0`` for forced
        photometry; parameter ``bounds`` are honoured.
    fit_shape : int or (ny, nx)
        Odd stamp shape (>= 3; >= 1 with ``compat='photutils'``) fitted around each source's
        initial position.
    finder : callable, optional
        ``finder(data, mask=...)`` returning a table with x/y columns.
    grouper : callable, optional
        ``grouper(x, y)`` returning 1-based group ids; grouped sources are fitted jointly.
    fitter : astropy fitter, optional
        When given, the generic path uses it; default: the batched engine.
    fitter_maxiters : int
        Iteration limit per source/group.
    xy_bounds : float or (bx, by), optional
        Maximum distance of the fitted position from the initial one.
    aperture_radius : float, optional
        Radius of the aperture giving the initial flux when ``init_params`` has none: the
        aperture sum minus ``local_bkg`` times the (unmasked) aperture area. photutils 3.0
        subtracts ``local_bkg`` only once, which overestimates the start on a sky background;
        the fitted values do not depend on it.
    local_bkg_estimator : LocalBackground, optional
        Subtracts a local background per source.
    group_warning_threshold : int
        Warn when a group has more sources than this.
    progress_bar : bool
        Show a tqdm progress bar.
    shared_pixels : {'once', 'photutils'}, optional
        crowdphot extension. How a pixel inside the fit stamps of two members of one group is
        counted (batched engine): 'once' (default) weights it once, which keeps the errors of
        blends closer than the stamp size honest; 'photutils' (the default with
        ``compat='photutils'``) counts it once per stamp, as photutils 3.0 does (identical
        results whenever stamps do not overlap).
    fit_sky : bool
        crowdphot extension (DAOPHOT ALLSTAR's sky). Fit one constant sky per group jointly
        with its members, on top of any ``local_bkg`` (batched engine only). The results
        gain ``sky_fit`` and ``sky_err`` (each source's group value) and ``fit_info``'s
        ``param_cov`` gains the sky's row and column (last). Default False: photutils'
        model, every number unchanged.
    likelihood : {'gaussian', 'poisson'}
        crowdphot extension. 'gaussian' (default): weighted least squares with ``error``, as
        photutils. 'poisson': maximum likelihood for counts (data in ADU including the sky,
        expectation = model + ``local_bkg`` + the call's ``sky``, variance = expectation /
        gain + (read_noise / gain)**2), see :mod:`crowdphot.psf.likelihood`; ``error`` is not used,
        the errors come from the Fisher information (observed information for isolated
        sources) and isolated sources are corrected for the first-order bias of the
        maximum-likelihood estimate (Cox & Snell; +2.6 % of the flux at S/N 5.6, 0.3 % at
        15). Batched engine only.
    read_noise : float, optional
        Read noise in electrons rms (needed by 'poisson' and ``crlb``; 0 for photon counting).
    gain : float
        Electrons per ADU (default 1).
    crlb : bool
        Add a ``flux_crlb`` column: the flux Cramér–Rao bound of each source at its fitted
        parameters (as if isolated, on its fit stamp, ``local_bkg`` as the sky).
    subtract_neighbors : bool
        crowdphot extension (DAOPHOT ALLSTAR). After the grouped fit, refit every group on
        the data minus the current models of all stars *outside* the group, repeating until
        no group's neighbour light changes by more than a small fraction of its members'
        flux errors (:mod:`crowdphot.psf.allstar`; at most 6 passes, the number made is
        ``results.meta['allstar_passes']``). Removes the bias from neighbours' wings on the
        fit stamps. With ``error``, the support grows with flux (DAOPHOT's PSF radius): a
        member is coupled to its group's stamps only where its PSF exceeds the median pixel
        error (at most two fit boxes) and fainter wings, down to 1 % of the error, come in as
        subtracted neighbours' light, which makes big groups with a large PSF fast; the
        passes reuse the first fit's covariance. Default False: photutils' model (only a
        group's members are modelled). Batched engine; with ``likelihood='poisson'`` the
        neighbours' light is part of every pixel's expected counts (full PSF support).
    merge_separation : float, optional
        crowdphot extension (DAOPHOT ALLSTAR). After the first fit, two members of a group
        closer than this (pixels; ALLSTAR uses ~0.37 FWHM) or than twice the error of their
        separation merge into one star (summed flux, flux-weighted position) and the group is
        refitted: the absorbing row carries the result, the absorbed row is NaN, both are
        flagged ``merged`` (16384); ``results.meta['n_merged']`` counts the absorbed rows.
        Default None: no merging (photutils).
    blend_test : bool
        crowdphot extension. After the fit, test every pair of members of a group closer
        than ~1 FWHM for a blend whose flux split the data do not pin down
        (:mod:`crowdphot.psf.blends`): both members of a pair whose fluxes a model of the pair
        near its input positions moves by more than twice their errors at a smaller cost in
        chi-square than such a shift must cost are flagged ``unresolved_blend`` (32768):
        their error bars are too small for what the data allow. The test refits every close
        pair once (batched) and costs up to ~40 % of the fit in very dense fields; False
        skips it (the flag is then never set, values and other flags unchanged). Default
        True; ignored with ``compat='photutils'`` (photutils has no such test, which then
        never runs).
    bias_correction : bool
        crowdphot extension. Subtract the first-order (Cox & Snell 1968) bias of the fit from
        x, y and flux (:mod:`crowdphot.psf._biascorr`): a free position centres on the noise
        and biases the flux high by about ``flux_err**2 / flux`` (+0.4 % at S/N 17, +4 % at
        S/N 5) whatever the fitter. Groups of up to 8 are corrected jointly, members of
        larger groups as if alone; sources under S/N 3 are left as fitted. Needs ``error``
        and the batched engine; ``likelihood='poisson'`` corrects its isolated sources
        itself. Default False: photutils' numbers.
    profile_errors : bool
        crowdphot extension. Members of groups of 2-6 closer than 1 FWHM to a partner, in
        groups with such a member below S/N 10, get profile-likelihood errors (x, y and flux
        each held at +-2 Fisher errors, the rest of the group refitted; never below the
        Fisher errors; :func:`crowdphot.psf._mlrefine.profile_group_errors`): such blends'
        likelihood is flatter than its curvature says (least-squares flux pulls 1.08 -> 1.02,
        1.21 -> 1.07 below 0.7 FWHM; bench/RESULTS.md). Only errors change (and the flags
        that compare with them, 65536 and 131072; the blend test keeps the Fisher errors as
        its yardstick). With ``error`` (absolute weights), ``shared_pixels='once'``, no
        fitted sky or subtracted neighbours, or ``likelihood='poisson'``; never with
        ``compat='photutils'``. Default True.
    compat : {None, 'photutils'}, optional
        'photutils': photutils 3.0's behaviour where crowdphot deliberately differs: only
        photutils' flag bits (1-2048); groups that crowdphot's engine stops (a position
        reaching its stamp's edge, an absurd value reported as NaN) refitted and reported as
        photutils fits them (astropy's TRFLSQFitter on the joined stamps); shared stamp
        pixels counted per stamp; ``fit_shape`` down to 1; qfit, cfit and reduced_chi2 NaN
        for fitters without residuals. The crowdphot extensions above are then refused
        (``blend_test`` is ignored).
        Default None: crowdphot's honest behaviour (docs/compat.md lists the differences).

    Examples
    --------
    >>> import numpy as np
    >>> from crowdphot import CircularGaussianPRF, PSFPhotometry, make_psf_model_image
    >>> model = CircularGaussianPRF(fwhm=2.5)
    >>> data, truth = make_psf_model_image((64, 64), model, 5, flux=(500, 1000),
    ...                                    min_separation=10, seed=0, model_shape=(11, 11))
    >>> phot = PSFPhotometry(model, (5, 5), aperture_radius=4)
    >>> table = phot(data, init_params=truth)
    >>> bool(np.allclose(table['flux_fit'], truth['flux']))
    True
    """

    @renamed_argument("localbkg_estimator", "local_bkg_estimator")
    def __init__(self, psf_model, fit_shape, *, finder=None, grouper=None, fitter=None,
                 fitter_maxiters=100, xy_bounds=None, aperture_radius=None,
                 local_bkg_estimator=None, group_warning_threshold=25, progress_bar=False,
                 shared_pixels=None, fit_sky=False, likelihood="gaussian", read_noise=None,
                 gain=1.0, crlb=False, subtract_neighbors=False, merge_separation=None,
                 blend_test=True, bias_correction=False, compat=None, profile_errors=True):
        _photinit.model_main_params(psf_model)
        self.psf_model = psf_model
        self.fit_shape = _photinit.check_fit_shape(fit_shape, check_compat(compat))
        for name, obj in (("finder", finder), ("grouper", grouper), ("fitter", fitter)):
            if obj is not None and not callable(obj):
                raise TypeError(f"'{name}' must be a callable object")
        self.finder = finder
        self.grouper = grouper
        self.fitter = fitter
        if fitter is not None and not _photinit.accepts_maxiter(fitter):
            from astropy.utils.exceptions import AstropyUserWarning

            warnings.warn("'maxiters' will be ignored because it is not accepted by the input "
                          "fitter __call__ method.", AstropyUserWarning, stacklevel=2)
        maxiters = positive_real("fitter_maxiters", fitter_maxiters)
        if int(maxiters) != maxiters:
            raise ValueError("fitter_maxiters must be a strictly-positive integer")
        self.fitter_maxiters = int(maxiters)
        self.xy_bounds = _photinit.validate_xy_bounds(xy_bounds)
        if aperture_radius is not None:
            positive_real("aperture_radius", aperture_radius)
        self.aperture_radius = aperture_radius
        if local_bkg_estimator is not None:
            from crowdphot.background.core import LocalBackground

            if not isinstance(local_bkg_estimator, LocalBackground):  # photutils' rule
                raise TypeError("local_bkg_estimator must be a LocalBackground instance")
        self.local_bkg_estimator = local_bkg_estimator
        self.group_warning_threshold = group_warning_threshold
        self.progress_bar = bool(progress_bar)
        if not isinstance(fit_sky, (bool, np.bool_)):
            raise TypeError(f"fit_sky must be True or False, got {fit_sky!r}")
        self.fit_sky = bool(fit_sky)
        if not isinstance(subtract_neighbors, (bool, np.bool_)):
            raise TypeError(f"subtract_neighbors must be True or False, got "
                            f"{subtract_neighbors!r}")
        self.subtract_neighbors = bool(subtract_neighbors)
        if merge_separation is not None:
            merge_separation = positive_real("merge_separation", merge_separation)
        self.merge_separation = merge_separation
        if not isinstance(blend_test, (bool, np.bool_)):
            raise TypeError(f"blend_test must be True or False, got {blend_test!r}")
        self.blend_test = bool(blend_test)
        if not isinstance(profile_errors, (bool, np.bool_)):
            raise TypeError(f"profile_errors must be True or False, got {profile_errors!r}")
        self.profile_errors = bool(profile_errors)
        self.likelihood, self.read_noise, self.gain, self.crlb = check_noise_options(
            likelihood, read_noise, gain, crlb)
        self.bias_correction = check_bias_correction(bias_correction,
                                                     likelihood=self.likelihood,
                                                     error_given=None)
        self.compat, self.shared_pixels = check_compat_options(
            compat, shared_pixels=shared_pixels, fit_sky=self.fit_sky,
            subtract_neighbors=self.subtract_neighbors, merge_separation=merge_separation,
            likelihood=self.likelihood, crlb=self.crlb, bias_correction=self.bias_correction)
        self._last = threading.local()

    _ATTRS = ("psf_model", "fit_shape", "finder", "grouper", "fitter", "fitter_maxiters",
              "xy_bounds", "aperture_radius", "local_bkg_estimator", "group_warning_threshold",
              "progress_bar")

    def __repr__(self):
        args = ", ".join(f"{a}={getattr(self, a)!r}" for a in self._ATTRS)
        return f"{type(self).__name__}({args})"

    def _meta(self):
        meta = _provenance()
        meta["psf_class"] = type(self).__name__
        for a in self._ATTRS:
            v = getattr(self, a)
            meta[a] = repr(v) if a in ("psf_model", "finder", "grouper", "fitter",
                                       "local_bkg_estimator") and v is not None else v
        if self.compat is not None:
            meta["compat"] = self.compat
        if self.fit_sky:
            meta["fit_sky"] = True
        if self.subtract_neighbors:
            meta["subtract_neighbors"] = True
        if self.merge_separation is not None:
            meta["merge_separation"] = self.merge_separation
        if not self.blend_test and self.compat is None:
            meta["blend_test"] = False
        if not self.profile_errors and self.compat is None:
            meta["profile_errors"] = False
        if self.bias_correction:
            meta["bias_correction"] = True
        if self.likelihood != "gaussian" or self.crlb:
            meta.update(likelihood=self.likelihood, read_noise=self.read_noise, gain=self.gain)
        return meta

    def run(self, data, *, mask=None, error=None, init_params=None, sky=None):
        """Stateless call: returns a :class:`PSFPhotometryResult` (or None)."""
        return run_psf_photometry(
            data, self.psf_model, self.fit_shape, mask=mask, error=error,
            init_params=init_params, finder=self.finder, grouper=self.grouper,
            fitter=self.fitter, fitter_maxiters=self.fitter_maxiters, xy_bounds=self.xy_bounds,
            aperture_radius=self.aperture_radius, local_bkg_estimator=self.local_bkg_estimator,
            group_warning_threshold=self.group_warning_threshold,
            progress_bar=self.progress_bar, meta=self._meta(),
            shared_pixels=self.shared_pixels, fit_sky=self.fit_sky,
            likelihood=self.likelihood, read_noise=self.read_noise, gain=self.gain,
            crlb=self.crlb, subtract_neighbors=self.subtract_neighbors,
            merge_separation=self.merge_separation, compat=self.compat, sky=sky,
            blend_test=self.blend_test, bias_correction=self.bias_correction,
            profile_errors=self.profile_errors)

    def __call__(self, data, *, mask=None, error=None, init_params=None, sky=None):
        """Run the photometry and return the results QTable (None when nothing to fit).

        ``sky`` (crowdphot extension): a sky (background) map or level contained in ``data``
        (same unit), subtracted before finding and fitting; with ``likelihood='poisson'`` it
        is part of every pixel's expectation (the variance) and of ``flux_crlb``.

        Output columns are photutils 3's; among them:

<flags column>
        """
        result = self.run(data, mask=mask, error=error, init_params=init_params, sky=sky)
        self._last.result = result
        return None if result is None else result.results

    # -- photutils-compatible access to the latest result (per thread) ----------------------
    _run_name = "PSFPhotometry"

    @property
    def fit_info(self):
        """Per-source fit diagnostics of the latest call."""
        return self._latest("fit_info")

    @property
    def finder_results(self):
        """The finder's table from the latest call (None when init_params was given)."""
        return self._latest("finder_results")

    @property
    def init_params(self):
        """The initial parameters of the latest call."""
        return self._latest("init_params")


def _document_flags():
    from crowdphot.psf.flags import flags_column_doc

    doc = PSFPhotometry.__call__.__doc__
    PSFPhotometry.__call__.__doc__ = doc.replace("<flags column>", flags_column_doc())


_document_flags()
