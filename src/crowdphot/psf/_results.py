"""Assembly of the PSF-photometry catalog: columns and quality metrics.

The fitting paths return plain ``(n,)`` arrays; this module turns them into photutils 3's
results table (same columns, order and dtypes) without any per-source Python loop. The flag
bits are computed by :func:`crowdphot.psf.flags.psf_flags` from the raw diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdphot.psf.flags import PSF_FLAGS, psf_flags

__all__ = ["FitInfo", "SourceFit", "assemble_results"]


@dataclass
class SourceFit:
    """Per-source fit outcome in input order; all fields are ``(n,)`` arrays.

    ``reason`` holds why a source could not be fitted ('' when it was): 'invalid_position',
    'non_finite_flux', 'no_overlap', 'fully_masked' or 'too_few_pixels'.
    ``values``/``errors`` map a parameter alias ('x', 'y', 'flux', extra names) to arrays.
    ``cov`` is ``(n, p, p)`` over the free parameters (NaN where unavailable).
    ``left_stamp`` / ``absurd`` (optional): the position left its fit stamp (fit stopped);
    an absurd value was replaced by NaN. ``merged`` / ``blend`` / ``contaminated`` /
    ``unconstrained`` (optional): flag bits 16384, 32768, 65536 and 131072.
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
    merged: np.ndarray | None = None
    blend: np.ndarray | None = None
    contaminated: np.ndarray | None = None
    unconstrained: np.ndarray | None = None


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
    if fit.merged is not None:  # close pairs merged into one star (all-star fitting)
        cols["flags"][np.asarray(fit.merged, dtype=bool)] |= PSF_FLAGS.MERGED
    if fit.blend is not None:  # close pairs whose flux split is not pinned down (blends.py)
        cols["flags"][np.asarray(fit.blend, dtype=bool)] |= PSF_FLAGS.UNRESOLVED_BLEND
    if fit.contaminated is not None:  # unmodelled neighbours' light (contamination.py)
        cols["flags"][np.asarray(fit.contaminated, dtype=bool)] |= PSF_FLAGS.CONTAMINATED
    if fit.unconstrained is not None:  # flux error >> the isolated one (contamination.py)
        cols["flags"][np.asarray(fit.unconstrained, dtype=bool)] |= PSF_FLAGS.UNCONSTRAINED
    table = make_deprecated_qtable(cols, deprecation_map={"npixfit": "n_pixels_fit"},
                                   meta=meta or {})
    if unit is not None:
        for name in ("local_bkg", "flux_init", "flux_fit", "flux_err", "sky_fit", "sky_err"):
            if name in table.colnames:
                table[name] = table[name] * unit
    return table


class FitInfo(list):  # a list, as photutils' fit_info (isinstance checks), built lazily
    """Per-source fit information, built lazily: ``fit_info[i]`` is a dict.

    Keys: ``param_cov`` (covariance of the free parameters in the model's parameter order,
    e.g. flux, x_0, y_0, as photutils; absent when unavailable), ``status``
    (1 converged, 0 not converged: iteration limit reached, or stopped because the position
    left its fit stamp), ``message`` and ``niter``.
    """

    def __init__(self, cov, converged, niter, valid, order=(0, 1, 2), left_stamp=None):
        self._cov = cov
        # engine covariances are (x, y, flux); photutils reports the free parameters in the
        # model's parameter order (flux, x_0, y_0 for the built-in models)
        self._order = np.asarray(order, dtype=int)
        self._converged = converged
        self._niter = niter
        self._valid = valid
        self._left_stamp = left_stamp

    def __len__(self):
        return len(self._valid)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        info = {}
        if not self._valid[i]:
            info["message"] = "source not fitted (see flags)"
            info["status"] = -1
            return info
        cov = None if self._cov is None else self._cov[i][np.ix_(self._order, self._order)]
        if cov is not None and cov.size and np.all(np.isfinite(cov)):
            info["param_cov"] = cov
        converged = bool(self._converged[i])
        info["status"] = 1 if converged else 0
        info["message"] = ("converged" if converged
                           else "maximum number of iterations reached")
        if self._left_stamp is not None and self._left_stamp[i]:
            info["message"] = "stopped: the position left its fit stamp"
        if self._niter is not None:
            info["niter"] = int(self._niter[i])
        return info

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        return len(self) > 0

    def __repr__(self):
        return repr(list(self))

    def __eq__(self, other):
        return list(self) == list(other) if isinstance(other, list) else NotImplemented

    __hash__ = None


def _provenance():
    """``date`` (UTC) and package ``version`` entries that lead photutils' table metadata."""
    import datetime
    import sys

    import astropy
    import scipy

    from crowdphot import __version__

    versions = {"Python": sys.version.split()[0], "crowdphot": __version__,
                "astropy": astropy.__version__, "numpy": np.__version__,
                "scipy": scipy.__version__}
    now = datetime.datetime.now(datetime.UTC)
    return {"date": now.strftime("%Y-%m-%d %H:%M:%S UTC"), "version": versions}
