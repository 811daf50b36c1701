"""Generic (slow) path: any astropy Fittable2DModel and any astropy fitter, one group at a time.

The batched engine serves crowdphot's built-in models with only ``x_0, y_0, flux`` free. This
path keeps everything else working with photutils' semantics: each source's ``fit_shape`` stamp
(trimmed, masked pixels removed) is concatenated over its group, the group's model is the sum of
its members' models, and the user's astropy fitter fits it. It loops over groups by design.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np

from crowdphot.core.batched import stamp_origin

__all__ = ["fit_generic"]


def _stamp_pixels(x, y, fit_shape, shape, mask):
    """Pixel coordinates of one source's trimmed, unmasked fit stamp (and its centre index)."""
    fy, fx = fit_shape
    xlo, ylo = stamp_origin(np.array([x]), np.array([y]), fit_shape)
    xs = np.arange(xlo[0], xlo[0] + fx)
    ys = np.arange(ylo[0], ylo[0] + fy)
    xs = xs[(xs >= 0) & (xs < shape[1])]
    ys = ys[(ys >= 0) & (ys < shape[0])]
    if xs.size == 0 or ys.size == 0:
        return None, None, -1, "no_overlap"
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    if mask is not None:
        keep = ~mask[yy, xx]
        if not keep.any():
            return None, None, -1, "fully_masked"
        yy, xx = yy[keep], xx[keep]
    else:
        yy, xx = yy.ravel(), xx.ravel()
    cx, cy = int(np.ceil(x - 0.5)), int(np.ceil(y - 0.5))
    hit = np.flatnonzero((xx == cx) & (yy == cy))
    return xx, yy, (int(hit[0]) if hit.size else -1), ""


def _accepts(fitter, name):
    """Whether ``fitter(...)`` names the keyword argument ``name``."""
    import inspect

    try:
        return name in inspect.signature(fitter.__call__).parameters
    except (TypeError, ValueError):
        return False


def fit_generic(data, mask, error, table, reason, *, psf_model, main_params, aliases, fit_shape,
                fitter, maxiters, xy_bounds, progress_bar=False, compat=None):
    """Fit every group with an astropy fitter; returns ``(SourceFit, FitInfo-like list)``.

    Parameters
    ----------
    data, mask, error : ndarrays (ny, nx) (mask/error may be None)
    table : QTable
        Initial parameters (``id, group_id, local_bkg, <alias>_init``...).
    reason : ndarray of object (n,)
        Pre-fit invalidity reasons ('' = fit it); updated in place.
    compat : {None, 'photutils'}
        'photutils': qfit, cfit and reduced_chi2 stay NaN when the fitter's ``fit_info``
        holds no residual array (``fun`` or ``fvec``), as photutils; by default they are
        computed from the fitted model for any fitter.
    """
    from astropy.modeling.fitting import TRFLSQFitter

    from crowdphot.psf._results import SourceFit
    from crowdphot.psf.flags import near_xy_bound

    # astropy fitters keep per-call state (fit_info); a private copy keeps threads that share
    # one configured PSFPhotometry from reading each other's
    fitter = TRFLSQFitter() if fitter is None else copy.copy(fitter)
    # the group models are built from scratch members (below), so the fitter may fit them in
    # place instead of deep-copying each group's compound model first
    inplace = {"inplace": True} if _accepts(fitter, "inplace") else {}
    xname, yname, fname = main_params
    alias_to_param = {"x": xname, "y": yname, "flux": fname}
    for a in aliases[3:]:
        alias_to_param[a] = a
    free = [p for p in psf_model.param_names if not psf_model.fixed[p]]
    n = len(table)
    vals = {a: np.full(n, np.nan) for a in aliases}
    errs = {a: np.full(n, np.nan) for a in aliases}
    npix = np.zeros(n, dtype=np.int64)
    qfit, cfit, rchi2 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    converged = np.zeros(n, dtype=bool)
    cov_ok = np.zeros(n, dtype=bool)
    infos = [{} for _ in range(n)]
    init = {a: np.asarray(table[f"{a}_init"], dtype=float) for a in aliases}
    bkg = np.asarray(table["local_bkg"], dtype=float)
    gid = np.asarray(table["group_id"])
    groups = [np.flatnonzero(gid == g) for g in np.unique(gid)]
    pool = []
    if progress_bar:
        from tqdm.auto import tqdm

        groups = tqdm(groups, desc="Fit source/group")
    for members in groups:
        stamps = []
        for i in members:
            if reason[i]:
                continue
            xx, yy, cen, why = _stamp_pixels(init["x"][i], init["y"][i], fit_shape,
                                             data.shape, mask)
            npix[i] = 0 if xx is None else xx.size
            if why:
                reason[i] = why
            elif xx.size < len(free):
                reason[i] = "too_few_pixels"
            else:
                stamps.append((i, xx, yy, cen))
        if not stamps:
            continue
        models = []
        for k, (i, _, _, _) in enumerate(stamps):
            # a pool of scratch members (one per group slot, reused by every group) replaces a
            # deep copy of the model per source -- the main cost of this path for compound
            # models; the user's model is never touched
            if k == len(pool):
                pool.append(psf_model.copy())
            m = pool[k]
            for a in aliases:
                setattr(m, alias_to_param[a], init[a][i])
            for a, b in zip(("x", "y"), xy_bounds or (None, None), strict=True):
                if b is not None:
                    getattr(m, alias_to_param[a]).bounds = (init[a][i] - b, init[a][i] + b)
            models.append(m)
        group_model = models[0]
        for m in models[1:]:
            group_model = group_model + m
        xx = np.concatenate([s[1] for s in stamps])
        yy = np.concatenate([s[2] for s in stamps])
        zz = np.concatenate([data[s[2], s[1]] - (bkg[s[0]] if np.isfinite(bkg[s[0]]) else 0.0)
                             for s in stamps])
        weights = None if error is None else 1.0 / error[yy, xx]
        kwargs = {"maxiter": maxiters} if maxiters is not None else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fitted = fitter(group_model, xx, yy, zz, weights=weights, **kwargs, **inplace)
            except TypeError:
                fitted = fitter(group_model, xx, yy, zz, weights=weights, **inplace)
        info = getattr(fitter, "fit_info", {}) or {}
        cov = info.get("param_cov")
        status = info.get("status", info.get("ierr"))
        ok = status is None or status in (1, 2, 3, 4)
        nfree = len(free)
        # the group model's parameters are its members' in order (also when each member is
        # itself a compound model, e.g. from make_psf_model, where fitted[k] is a leaf)
        own = np.asarray(fitted.parameters, dtype=float).reshape(len(stamps), -1)
        index = {a: list(psf_model.param_names).index(alias_to_param[a]) for a in aliases}
        model_all = fitted(xx, yy)
        resid = zz - model_all
        # photutils reads the residuals from the fitter: none, no metrics
        metrics = compat != "photutils" or "fun" in info or "fvec" in info
        start = 0
        for k, (i, sx, sy, cen) in enumerate(stamps):
            for a in aliases:
                vals[a][i] = own[k, index[a]]
            if cov is not None:
                block = cov[k * nfree:(k + 1) * nfree, k * nfree:(k + 1) * nfree]
                e = np.sqrt(np.diag(block))
                for a in aliases:
                    p = alias_to_param[a]
                    if p in free:
                        errs[a][i] = e[free.index(p)]
                cov_ok[i] = True
                infos[i]["param_cov"] = block
            infos[i]["status"] = status
            infos[i]["message"] = info.get("message", "")
            converged[i] = ok
            r = resid[start:start + sx.size]
            flux = vals["flux"][i]
            if metrics and flux != 0:
                qfit[i] = np.abs(r).sum() / flux
                if cen >= 0:
                    # photutils: centre pixel of (data - model), over the flux
                    cfit[i] = r[cen] / flux
            if error is not None and metrics:
                # as photutils: inf (not a warning) when pixels == free parameters
                with np.errstate(divide="ignore", invalid="ignore"):
                    rchi2[i] = np.sum((r / error[sy, sx]) ** 2) / np.float64(sx.size - nfree)
            start += sx.size
    # the flag bits themselves come from crowdphot.psf.flags, as for the batched engine
    near = near_xy_bound((vals["x"], vals["y"]), (init["x"], init["y"]), xy_bounds)
    fit = SourceFit(values=vals, errors=errs, n_pixels=npix, group_size=None, qfit=qfit,
                    cfit=cfit, reduced_chi2=rchi2, converged=converged, cov_ok=cov_ok,
                    near_bound=near, reason=reason)
    return fit, infos
