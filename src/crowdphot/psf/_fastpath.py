"""The batched-engine path of PSF photometry: which sources to fit, the fit, the collection.

:func:`run_psf_photometry` (in :mod:`crowdphot.psf.photometry`) calls these for built-in
crowdphot models with only ``x_0``, ``y_0`` and ``flux`` free and ``fitter=None``; any other
model or fitter goes through :mod:`crowdphot.psf._generic`.
"""

from __future__ import annotations

import numpy as np

from crowdphot.psf._results import SourceFit
from crowdphot.psf.flags import near_xy_bound

__all__ = ["check_fitted_errors", "collect_fast", "fit_fast", "prefit_reasons", "use_fast_path"]


def prefit_reasons(table, shape, fit_shape):
    """Why a source cannot be fitted before looking at pixels ('' = fine)."""
    x = np.asarray(table["x_init"], dtype=float)
    y = np.asarray(table["y_init"], dtype=float)
    flux = np.asarray(table["flux_init"], dtype=float)
    reason = np.full(len(table), "", dtype=object)
    margin = max(fit_shape) // 2 + 1
    with np.errstate(invalid="ignore"):
        off = (x < -margin) | (y < -margin) | (x >= shape[1] + margin) | (y >= shape[0] + margin)
    reason[off] = "no_overlap"
    reason[~np.isfinite(flux)] = "non_finite_flux"
    reason[~(np.isfinite(x) & np.isfinite(y))] = "invalid_position"
    return reason


def _bounds_for(psf_model, name, init, xy_bound):
    """Per-source (lo, hi) from the model parameter's bounds and an optional +-xy_bound."""
    lo_m, hi_m = getattr(psf_model, name).bounds
    lo = np.full(init.shape, -np.inf if lo_m is None else float(lo_m))
    hi = np.full(init.shape, np.inf if hi_m is None else float(hi_m))
    if xy_bound is not None:
        lo = np.maximum(lo, init - xy_bound)
        hi = np.minimum(hi, init + xy_bound)
    return lo, hi


def use_fast_path(psf_model, fitter, main_params, fit_shape=(3, 3)):
    """Whether the batched engine can fit this model (built-in, only x_0/y_0/flux free) on
    stamps of ``fit_shape`` (>= 3 x 3; smaller ones exist only with ``compat='photutils'``)."""
    from crowdphot.core.batched import BatchedPSFMixin

    if fitter is not None or not isinstance(psf_model, BatchedPSFMixin) or min(fit_shape) < 3:
        return False
    if tuple(main_params) != ("x_0", "y_0", "flux"):
        return False
    return all(psf_model.fixed[p] for p in psf_model.param_names if p not in main_params)


def fit_fast(data, mask, error, table, todo, *, psf_model, fit_shape, maxiters, xy_bounds,
             progress_bar, shared_pixels="once", fit_sky=False, noise=None,
             subtract_neighbors=False, merge_separation=None, drop_failed=True):
    """Fit the ``todo`` rows of ``table`` with the batched engine, in chunks of whole groups.

    With ``drop_failed`` (crowdphot's default; False under ``compat='photutils'``), a group
    member that left its stamp or went absurd is dropped from its group's model and the
    group refitted without it (:func:`crowdphot.psf._failed.refit_without_failed`; the
    all-star fit does the same itself).

    Returns ``(pieces, passes)``: a list of ``(rows among todo, engine result)`` and, for the
    all-star fit or when members were dropped, ``{'passes': int, 'merged': bool (n_todo,)}``
    (else None).
    """
    from crowdphot.core.fit import fit_psf

    if noise is not None:  # likelihood='poisson': (read_noise, gain)
        from crowdphot.psf.likelihood import engine_for

        fit_psf = engine_for(*noise)

    x0 = np.asarray(table["x_init"], dtype=float)[todo]
    y0 = np.asarray(table["y_init"], dtype=float)[todo]
    f0 = np.asarray(table["flux_init"], dtype=float)[todo]
    gid = np.asarray(table["group_id"])[todo]
    bkg = np.asarray(table["local_bkg"], dtype=float)[todo]
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    fixed = {"x": bool(psf_model.x_0.fixed), "y": bool(psf_model.y_0.fixed),
             "flux": bool(psf_model.flux.fixed)}
    bx = by = None
    if xy_bounds is not None:
        bx, by = xy_bounds
    bounds = {"x": _bounds_for(psf_model, "x_0", x0, bx),
              "y": _bounds_for(psf_model, "y_0", y0, by),
              "flux": _bounds_for(psf_model, "flux", f0, None)}

    if subtract_neighbors or merge_separation is not None:  # needs every source at once
        from crowdphot.psf.allstar import fit_allstar

        res, passes, merged = fit_allstar(
            fit_psf, data, psf_model, x0, y0, f0, fit_shape=tuple(fit_shape), group_id=gid,
            error=error, mask=mask, local_bkg=bkg, fixed=fixed, bounds=bounds,
            maxiters=maxiters, shared_pixels=shared_pixels, fit_sky=fit_sky,
            subtract=subtract_neighbors, merge_separation=merge_separation)
        return [(np.arange(len(x0)), res)], {"passes": passes, "merged": merged}
    # chunks of whole groups bound memory and drive the progress bar
    order = np.argsort(gid, kind="stable")
    _, starts = np.unique(gid[order], return_index=True)
    n_groups = len(starts)
    # with a bar, ~20 updates for big jobs; small jobs stay one batched call (each call has a
    # fixed cost, so splitting 500 stars 20 ways would make the bar cost more than the fit)
    chunk_sources = 50_000 if not progress_bar else max(5_000, min(50_000, len(x0) // 20 + 1))
    bounds_idx = [0]
    for s in starts[1:]:
        if s - bounds_idx[-1] >= chunk_sources:
            bounds_idx.append(int(s))
    bounds_idx.append(len(order))
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_groups, desc="Fit source/group")
    pieces = []
    for a, b in zip(bounds_idx[:-1], bounds_idx[1:], strict=True):
        sel = order[a:b]
        res = fit_psf(
            data, psf_model, x0[sel], y0[sel], f0[sel], fit_shape=tuple(fit_shape),
            group_id=gid[sel], error=error, mask=mask, local_bkg=bkg[sel], fixed=fixed,
            bounds={k: (lo[sel], hi[sel]) for k, (lo, hi) in bounds.items()},
            maxiters=maxiters, shared_pixels=shared_pixels, fit_sky=fit_sky)
        pieces.append((sel, res))
        if bar is not None:
            bar.update(len(np.unique(gid[sel])))
    if bar is not None:
        bar.close()
    if drop_failed and pieces:
        return _without_failed(fit_psf, data, psf_model, x0, y0, f0, pieces,
                               fit_shape=tuple(fit_shape), group_id=gid, error=error,
                               mask=mask, local_bkg=bkg, fixed=fixed, bounds=bounds,
                               maxiters=maxiters, shared_pixels=shared_pixels,
                               fit_sky=fit_sky)
    return pieces, None


def _without_failed(fit, data, psf_model, x0, y0, f0, pieces, **kwargs):
    """Pieces joined into one result with the failed members' groups refitted without them."""
    import dataclasses

    from crowdphot.psf._failed import refit_without_failed

    if not any(np.any(r.left_stamp | r.absurd) for _, r in pieces):
        return pieces, None
    rows = np.concatenate([sel for sel, _ in pieces])
    res0 = pieces[0][1]
    fields = {}
    for f in dataclasses.fields(res0):
        joined = np.concatenate([np.asarray(getattr(r, f.name)) for _, r in pieces])
        fields[f.name] = np.empty_like(joined)
        fields[f.name][rows] = joined
    absorbed = refit_without_failed(fit, data, psf_model, x0, y0, f0, fields, **kwargs)
    pieces = [(np.arange(len(x0)), type(res0)(**fields))]
    if absorbed is None:
        return pieces, None
    return pieces, {"passes": 0, "merged": absorbed}


def collect_fast(n, todo, pieces, table, reason, xy_bounds, psf_model):
    """Gather the engine's pieces into one :class:`SourceFit` of ``n`` rows (NaN if not fit)."""
    idx_all = np.flatnonzero(todo)

    def full(fill, dtype=float):
        return np.full(n, fill, dtype=dtype)

    vals = {k: full(np.nan) for k in ("x", "y", "flux")}
    errs = {k: full(np.nan) for k in ("x", "y", "flux")}
    npix = full(0, np.int64)
    qfit, cfit, rchi2 = full(np.nan), full(np.nan), full(np.nan)
    converged = full(False, bool)
    cov_ok = full(False, bool)
    niter = full(0, np.int64)
    n_cov = pieces[0][1].cov.shape[1] if pieces else 3
    cov = np.full((n, n_cov, n_cov), np.nan)
    sky, sky_err = full(np.nan), full(np.nan)
    left_stamp, absurd = full(False, bool), full(False, bool)
    for sel, res in pieces:
        rows = idx_all[sel]
        for k in ("x", "y", "flux"):
            vals[k][rows] = getattr(res, k)
            errs[k][rows] = getattr(res, f"{k}_err")
        npix[rows] = res.n_pixels
        qfit[rows], cfit[rows], rchi2[rows] = res.qfit, res.cfit, res.reduced_chi2
        converged[rows] = res.converged
        cov_ok[rows] = res.cov_ok
        niter[rows] = res.niter
        if getattr(res, "cov", None) is not None:
            cov[rows] = res.cov
        sky[rows], sky_err[rows] = res.sky, res.sky_err
        left_stamp[rows], absurd[rows] = res.left_stamp, res.absurd
        sub_reason = getattr(res, "reason", None)
        if sub_reason is not None:
            reason[rows] = np.where(np.asarray(sub_reason) == "", reason[rows], sub_reason)
    bad = reason != ""
    for k in ("x", "y", "flux"):
        vals[k][bad] = np.nan
        errs[k][bad] = np.nan
    near = near_xy_bound((vals["x"], vals["y"]),
                         (np.asarray(table["x_init"], dtype=float),
                          np.asarray(table["y_init"], dtype=float)), xy_bounds)
    fit_sky = n_cov > 3
    if fit_sky:
        sky[bad], sky_err[bad] = np.nan, np.nan
    return SourceFit(values=vals, errors=errs, n_pixels=npix, group_size=None, qfit=qfit,
                     cfit=cfit, reduced_chi2=rchi2, converged=converged, cov_ok=cov_ok,
                     near_bound=near, reason=reason, cov=cov, niter=niter,
                     sky=sky if fit_sky else None, sky_err=sky_err if fit_sky else None,
                     left_stamp=left_stamp, absurd=absurd)


def check_fitted_errors(error, table, todo, fit_shape):
    """Raise if a fitted pixel has a zero/negative/NaN error (NaN from the input check).

    Such errors elsewhere in the image are ignored, as photutils does: only the pixels of the
    fit stamps are used. Counts per stamp come from an integral image (no loop over sources).
    """
    bad = np.isnan(error)
    if not bad.any():
        return error
    from crowdphot.core.batched import stamp_origin

    ny, nx = error.shape
    integral = np.zeros((ny + 1, nx + 1))
    integral[1:, 1:] = bad.cumsum(axis=0).cumsum(axis=1)
    x = np.asarray(table["x_init"], dtype=float)[todo]
    y = np.asarray(table["y_init"], dtype=float)[todo]
    xlo, ylo = stamp_origin(x, y, fit_shape)
    x0, x1 = np.clip(xlo, 0, nx), np.clip(xlo + fit_shape[1], 0, nx)
    y0, y1 = np.clip(ylo, 0, ny), np.clip(ylo + fit_shape[0], 0, ny)
    n_bad = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    if np.any(n_bad > 0):
        raise ValueError("Error array contains non-positive or non-finite values in the fit "
                         f"stamps of {int(np.count_nonzero(n_bad > 0))} source(s); such errors "
                         "are allowed only outside the fitted pixels (or mask those pixels)")
    return np.where(bad, 1.0, error)  # never used by the fit


def refit_as_photutils(fit, data, mask, error, table, todo, *, psf_model, main_params,
                       fit_shape, maxiters, xy_bounds):
    """``compat='photutils'``: refit, as photutils does, the groups the engine stopped.

    A group with a member whose position reached its stamp's edge (``left_stamp``) or whose
    values were absurd (reported NaN) is refitted by :func:`crowdphot.psf._generic.fit_generic`
    (stamps joined, astropy's ``TRFLSQFitter``: photutils' default fitter) and its members'
    rows of ``fit`` are replaced in place; both markers are cleared there. Returns ``fit``.
    """
    from crowdphot.psf._generic import fit_generic

    failed = (fit.left_stamp | fit.absurd) & (fit.reason == "")
    if not failed.any():
        return fit
    gid = np.asarray(table["group_id"])
    rows = np.flatnonzero(np.isin(gid, np.unique(gid[failed])) & todo)
    sub = table[rows]
    sub_reason = np.full(len(rows), "", dtype=object)
    refit, infos = fit_generic(data, mask, error, sub, sub_reason, psf_model=psf_model,
                               main_params=main_params, aliases=["x", "y", "flux"],
                               fit_shape=fit_shape, fitter=None, maxiters=maxiters,
                               xy_bounds=xy_bounds)
    for k in ("x", "y", "flux"):
        fit.values[k][rows] = refit.values[k]
        fit.errors[k][rows] = refit.errors[k]
    for name in ("qfit", "cfit", "reduced_chi2", "converged", "cov_ok", "near_bound"):
        getattr(fit, name)[rows] = getattr(refit, name)
    fit.reason[rows] = np.where(sub_reason == "", fit.reason[rows], sub_reason)
    fit.left_stamp[rows] = False
    fit.absurd[rows] = False
    # the generic covariance is over the free parameters in the model's order; the engine's
    # is (x, y, flux)
    engine_index = {"x_0": 0, "y_0": 1, "flux": 2}
    order = [engine_index[p] for p in psf_model.param_names if not psf_model.fixed[p]]
    fit.cov[rows] = np.nan
    for r, info in zip(rows, infos, strict=True):
        block = info.get("param_cov")
        if block is not None:
            fit.cov[r][np.ix_(order, order)] = block
    return fit
