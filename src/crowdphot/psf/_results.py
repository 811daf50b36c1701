"""Assembly of the PSF-photometry catalog: columns and quality metrics.

The fitting paths return plain ``(n,)`` arrays; this module turns them into photutils 3's
results table (same columns, order and dtypes) without any per-source Python loop. The flag
bits are computed by :func:`crowdphot.psf.flags.psf_flags` from the raw diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdphot.psf.flags import psf_flags

__all__ = ["SourceFit", "assemble_results"]


@dataclass
class SourceFit:
    """Per-source fit outcome in input order; all fields are ``(n,)`` arrays.

    ``reason`` holds why a source could not be fitted ('' when it was): 'invalid_position',
    'non_finite_flux', 'no_overlap', 'fully_masked' or 'too_few_pixels'.
    ``values``/``errors`` map a parameter alias ('x', 'y', 'flux', extra names) to arrays.
    ``cov`` is ``(n, p, p)`` over the free parameters (NaN where unavailable).
    ``left_stamp`` / ``absurd`` (optional): the position left its fit stamp (fit stopped);
    an absurd value was replaced by NaN.
    """

    values: dict
    errors: dict
    n_pixels: np.ndarray
    group_size: np.ndarray
    qfit: np.ndarray
    cfit: np.ndarray
    reduced_chi2: np.ndarray
    converged: np.ndarray
    cov_ok: np.ndarray
    near_bound: np.ndarray
    reason: np.ndarray
    cov: np.ndarray | None = None
    niter: np.ndarray | None = None
    sky: np.ndarray | None = None
    sky_err: np.ndarray | None = None
    left_stamp: np.ndarray | None = None
    absurd: np.ndarray | None = None


def assemble_results(init_params, fit, *, aliases, shape, fit_shape, unit=None, meta=None):
    """Join the initial table with the fit outcome into photutils 3's results table.

    Parameters
    ----------
    init_params : QTable
        From ``build_init_params`` (``id, group_id, local_bkg, <alias>_init``...).
    fit : SourceFit
    aliases : list of str
        Fitted parameter aliases in column order, starting with 'x', 'y', 'flux'.
    unit : astropy unit or None
        Data unit re-attached to flux-like columns.

    Returns
    -------
    table : QTable
        Columns id, group_id, group_size, local_bkg, <a>_init..., <a>_fit..., <a>_err...,
        (sky_fit, sky_err with a fitted sky), n_pixels_fit, qfit, cfit, reduced_chi2, flags.
        The pre-3.0 name ``npixfit`` stays readable with a deprecation warning.
    """
    from crowdphot.utils._tables import make_deprecated_qtable

    cols = {}
    cols["id"] = np.asarray(init_params["id"])
    cols["group_id"] = np.asarray(init_params["group_id"], dtype=np.int64)
    cols["group_size"] = np.asarray(fit.group_size, dtype=np.int64)
    cols["local_bkg"] = np.asarray(init_params["local_bkg"], dtype=float)
    for a in aliases:
        cols[f"{a}_init"] = np.asarray(init_params[f"{a}_init"])
    for a in aliases:
        cols[f"{a}_fit"] = np.asarray(fit.values[a], dtype=float)
    for a in aliases:
        cols[f"{a}_err"] = np.asarray(fit.errors[a], dtype=float)
    if fit.sky is not None:  # fit_sky: each source's group sky
        cols["sky_fit"] = np.asarray(fit.sky, dtype=float)
        cols["sky_err"] = np.asarray(fit.sky_err, dtype=float)
    cols["n_pixels_fit"] = np.asarray(fit.n_pixels, dtype=np.int64)
    cols["qfit"] = np.asarray(fit.qfit, dtype=float)
    cols["cfit"] = np.asarray(fit.cfit, dtype=float)
    cols["reduced_chi2"] = np.asarray(fit.reduced_chi2, dtype=float)
    cols["flags"] = psf_flags(
        x=fit.values["x"], y=fit.values["y"], flux=fit.values["flux"], n_pixels=fit.n_pixels,
        fit_shape=fit_shape, shape=shape, reason=fit.reason, converged=fit.converged,
        cov_ok=fit.cov_ok, near_bound=fit.near_bound, local_bkg=cols["local_bkg"],
        left_stamp=fit.left_stamp, absurd=fit.absurd)
    table = make_deprecated_qtable(cols, deprecation_map={"npixfit": "n_pixels_fit"},
                                   meta=meta or {})
    if unit is not None:
        for name in ("local_bkg", "flux_init", "flux_fit", "flux_err", "sky_fit", "sky_err"):
            if name in table.colnames:
                table[name] = table[name] * unit
    return table
