"""Failed group members in the default grouped fit: dropped, their groups refitted without them.

The batched engine stops a source whose position reaches the edge of its fit stamp
(``left_stamp``, flag 4096 with no_convergence 8) and reports absurd values as NaN
(``absurd_value``, 8192). Such a source stays, with the model it had when stopped (a flux of
-1400 at its stamp's edge, say), in its group's fit, and its partners compensate for it: on
a faint field one partner came out at 139 +- 24 (true 57) with flags 0.

:func:`refit_without_failed` does in the grouped fit what all-star fitting
(:mod:`crowdphot.psf.allstar`) does, with the same helpers: the failed member is dropped
from the model, its group is refitted from the initial values without it (a refit whose
members fail in turn drops them too, up to :data:`~crowdphot.psf.allstar.EXTRA_PASSES`
times; a group still waiting after that is reported not converged), the dropped row keeps its
flags and reports the flux measured at its initial position on the data minus every other
star's model, and partners that may have absorbed more than their flux error of its light
are flagged ``merged`` (16384). A star alone in its group has no partner to mislead and
keeps the engine's result (stopped where it failed, flagged). ``compat='photutils'`` does
not come here: it refits such groups as photutils does
(:func:`crowdphot.psf._fastpath.refit_as_photutils`).
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.batched import stamp_origin
from crowdphot.psf.allstar import (
    EXTRA_PASSES,
    _drop_failed,
    _report_dropped,
    _sliced,
    _store,
    model_reach,
)

__all__ = ["refit_without_failed"]


def refit_without_failed(fit, data, psf_model, x0, y0, f0, fields, *, fit_shape, group_id,
                         fixed, **kwargs):
    """Drop the failed members of a grouped fit and refit their groups without them.

    Parameters
    ----------
    fit : callable
        The engine (:func:`crowdphot.core.fit.fit_psf` signature, with ``neighbors``).
    data, psf_model : as for the engine
    x0, y0, f0 : ndarray of shape (n,)
        Initial values (the refits start from them).
    fields : dict of str to ndarray
        The grouped fit's :class:`~crowdphot.core.fit.FitResult` fields (each of length
        ``n``), updated in place.
    fit_shape, group_id, fixed, **kwargs
        As given to the engine for the grouped fit; per-source arrays in ``kwargs``
        (``local_bkg``, ``bounds``) are sliced for the groups refitted.

    Returns
    -------
    absorbed : ndarray of bool, shape (n,) or None
        Members that may have absorbed more than their flux error of a dropped member's
        light (flag ``merged``); None when no member of a group of two or more failed
        (``fields`` untouched: a star alone in its group keeps the engine's result, stopped
        where it failed and flagged).

    Examples
    --------
    A faint member 3 px from a bright star is marked failed: the bright star is refitted
    alone and the failed row keeps its flag:

    >>> from crowdphot import CircularGaussianPRF
    >>> from crowdphot.core.fit import fit_psf
    >>> psf = CircularGaussianPRF(fwhm=3.0)
    >>> img = psf.psf_stamps([20.0], [20.0], (40, 40), xlo=[0], ylo=[0])[0] * 500.0
    >>> x0, y0 = np.array([20.0, 23.0]), np.array([20.0, 20.0])
    >>> f0, gid = np.array([450.0, 5.0]), np.array([1, 1])
    >>> res = fit_psf(img, psf, x0, y0, f0, fit_shape=(5, 5), group_id=gid)
    >>> fields = {k: np.array(v) for k, v in vars(res).items()}
    >>> fields['left_stamp'][1] = True  # pretend the faint one ran away
    >>> absorbed = refit_without_failed(fit_psf, img, psf, x0, y0, f0, fields,
    ...                                 fit_shape=(5, 5), group_id=gid, fixed={})
    >>> round(float(fields['flux'][0]), 3), bool(fields['left_stamp'][1])
    (500.0, True)
    """
    n = len(x0)
    gid = np.asarray(group_id)
    hold = np.array([bool(np.all(fixed.get(k, False))) for k in ("x", "y", "flux")])
    alive = np.ones(n, dtype=bool)
    dropped = np.zeros(n, dtype=bool)
    forced = np.zeros(n, dtype=bool)
    # only members with partners: a star alone in its group keeps the engine's result
    _, inv, count = np.unique(gid[fields["fitted"]], return_inverse=True, return_counts=True)
    partnered = np.zeros(n, dtype=bool)
    partnered[fields["fitted"]] = count[inv] > 1
    _drop_failed(fields, partnered, dropped, forced, gid, hold)
    if not dropped.any():
        return None
    for _ in range(1 + EXTRA_PASSES):
        sel = forced & ~dropped & fields["fitted"]
        forced[:] = False
        if not sel.any():
            break
        sub = fit(data, psf_model, x0[sel], y0[sel], f0[sel], fit_shape=fit_shape,
                  group_id=gid[sel], fixed=fixed, **_sliced(kwargs, sel))
        _store(fields, sel, sub)
        _drop_failed(fields, sel, dropped, forced, gid, hold)
    # a member whose group still has a failure that was not refitted away is not trusted
    fields["converged"][forced & ~dropped] = False
    xlo, ylo = stamp_origin(x0, y0, fit_shape)
    return _report_dropped(fit, data, psf_model, x0, y0, f0, fields, dropped, alive, gid,
                           xlo, ylo, fit_shape, model_reach(psf_model), hold, kwargs)
