"""All-star fitting (DAOPHOT ALLSTAR): every group fitted with all other stars subtracted.

A grouped fit models only the members of a group; light from stars of *other* groups that
falls on the group's fit stamps biases it (+0.3 % median, +11 % worst on a crowded field).
:func:`fit_allstar` removes that light: after a first grouped fit, each source's stamp sees
``data - (model of every star outside its group)`` and all groups are refitted together by
the batched engine, starting from their current values; passes repeat, refitting only the
groups whose neighbours' light changed by more than a small fraction of their flux error,
until none changes (or ``max_passes``).

The neighbours' light on each stamp is evaluated directly, pair by pair, for the (stamp,
star) pairs within reach (a k-d tree query), so no image is rendered and the cost scales with
the number of such pairs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from crowdphot.core.batched import stamp_origin

__all__ = ["fit_allstar", "neighbor_stamps"]

#: A group is refitted when its neighbours' light on a member's stamp changed by more than
#: this fraction of the member's flux error (summed absolute change over the stamp) ...
TOL_SIGMA = 0.02
#: ... and by more than this fraction of its flux (noiseless data have ~zero errors).
TOL_REL = 1e-6
#: Passes after the first grouped fit.
MAX_PASSES = 6
#: Pairs evaluated per batch (bounds memory).
_CHUNK = 200_000


def neighbor_stamps(psf_model, x, y, flux, group, xlo, ylo, fit_shape, *, reach):
    """Light of the stars of *other* groups on each source's fit stamp.

    Parameters
    ----------
    psf_model : BatchedPSFMixin
    x, y, flux : ndarray of shape (n,)
        Current star parameters (non-finite: the star contributes nothing).
    group : ndarray of int, shape (n,)
    xlo, ylo : ndarray of int, shape (n,)
        Lower-left pixel of each source's fit stamp.
    fit_shape : (fy, fx)
    reach : float or ndarray of shape (n,)
        Half-width (pixels) of each star's model support: pixels farther than this from the
        star (in x or y) receive none of its light.

    Returns
    -------
    out : ndarray of shape (n, fy, fx)

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> psf = CircularGaussianPRF(fwhm=2.0)
    >>> x, y = np.array([10.0, 13.0]), np.array([10.0, 10.0])
    >>> xlo, ylo = stamp_origin(x, y, (5, 5))
    >>> out = neighbor_stamps(psf, x, y, np.array([100.0, 50.0]), np.array([1, 2]),
    ...                       xlo, ylo, (5, 5), reach=6)
    >>> out.shape, bool(out[0].sum() > 0)
    ((2, 5, 5), True)
    """
    from scipy.spatial import cKDTree

    n = len(x)
    fy, fx = fit_shape
    out = np.zeros((n, fy * fx))
    reach = np.broadcast_to(np.asarray(reach, dtype=float), (n,))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux != 0) & (reach > 0)
    src = np.flatnonzero(ok)
    if n == 0 or len(src) == 0:
        return out.reshape(n, fy, fx)
    cx = xlo + (fx - 1) / 2.0
    cy = ylo + (fy - 1) / 2.0
    half = max(fy, fx) / 2.0
    r_max = float(reach[src].max()) + half
    t_stamp = cKDTree(np.column_stack([cx, cy]))
    t_src = cKDTree(np.column_stack([x[src], y[src]]))
    pairs = t_stamp.sparse_distance_matrix(t_src, r_max, p=np.inf, output_type="ndarray")
    tgt = pairs["i"].astype(np.int64)
    j = src[pairs["j"]]
    keep = group[tgt] != group[j]
    tgt, j = tgt[keep], j[keep]
    # the star's own reach plus the stamp's half-size, per axis
    keep = (np.abs(x[j] - cx[tgt]) <= reach[j] + fx / 2.0) & (
        np.abs(y[j] - cy[tgt]) <= reach[j] + fy / 2.0)
    tgt, j = tgt[keep], j[keep]
    for a in range(0, len(tgt), _CHUNK):
        t, s = tgt[a:a + _CHUNK], j[a:a + _CHUNK]
        vals = np.asarray(psf_model._stamps(x[s], y[s], xlo[t], ylo[t], (fy, fx)))
        vals = np.where(np.isfinite(vals), vals, 0.0).reshape(len(s), -1) * flux[s][:, None]
        np.add.at(out, t, vals)
    return out.reshape(n, fy, fx)


def model_reach(psf_model):
    """Half-width of the model's support in pixels (its default stamp; 25 px without one)."""
    try:
        sy, sx = psf_model.default_stamp_shape
        return max(sy, sx) / 2.0
    except (ValueError, NotImplementedError, AttributeError, TypeError):
        return 25.0


_PER_SOURCE = ("local_bkg", "bounds")


def _take(value, sel, n):
    if isinstance(value, dict):
        return {k: _take(v, sel, n) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_take(v, sel, n) for v in value)
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
        return value[sel]
    return value


def fit_allstar(fit, data, psf_model, x, y, flux, *, fit_shape, group_id, fixed=None,
                reach=None, max_passes=MAX_PASSES, **kwargs):
    """Grouped fit, then all-star passes with every other group's stars subtracted.

    Parameters
    ----------
    fit : callable
        The engine (:func:`crowdphot.core.fit.fit_psf` signature, with ``neighbors`` and
        ``start``).
    data, psf_model, x, y, flux, fit_shape, group_id, fixed, **kwargs
        As for the engine; per-source arrays in ``kwargs`` (``local_bkg``, ``bounds``) are
        sliced for the groups refitted.
    reach : float or ndarray of shape (n,), optional
        Support half-width of each star (default: the model's, :func:`model_reach`).
    max_passes : int
        All-star passes after the first grouped fit.

    Returns
    -------
    result : FitResult
        As the engine's, the values of the last fit of each group; ``niter`` sums all passes.
    passes : int
        All-star passes made (0: no group needed a refit).
    """
    n = len(x)
    gid = np.asarray(group_id)
    fixed = {} if fixed is None else fixed
    res = fit(data, psf_model, x, y, flux, fit_shape=fit_shape, group_id=gid, fixed=fixed,
              **kwargs)
    xlo, ylo = stamp_origin(x, y, fit_shape)
    reach = model_reach(psf_model) if reach is None else reach
    used = np.zeros((n, *fit_shape))
    fields = {f.name: np.array(getattr(res, f.name)) for f in dataclasses.fields(res)}
    hold = np.array([bool(np.all(fixed.get(k, False))) for k in ("x", "y", "flux")])
    passes = 0
    for _ in range(max_passes):
        cur = fields["x"], fields["y"], fields["flux"]
        new = neighbor_stamps(psf_model, *cur, gid, xlo, ylo, fit_shape, reach=reach)
        change = np.abs(new - used).sum(axis=(1, 2))
        err = np.where(np.isfinite(fields["flux_err"]), fields["flux_err"], 0.0)
        ref = np.where(np.isfinite(cur[2]), np.abs(cur[2]), 0.0)
        thresh = np.maximum(TOL_SIGMA * err, TOL_REL * ref)
        active = fields["fitted"] & (change > thresh)
        if not active.any():
            break
        sel = np.isin(gid, np.unique(gid[active]))
        start = np.column_stack([c[sel] for c in cur])
        start[:, hold] = np.nan
        sub = fit(data, psf_model, x[sel], y[sel], flux[sel], fit_shape=fit_shape,
                  group_id=gid[sel], fixed=fixed, neighbors=new[sel], start=start,
                  **{k: (_take(v, sel, n) if k in _PER_SOURCE else v)
                     for k, v in kwargs.items()})
        for name, arr in fields.items():
            val = getattr(sub, name)
            if name == "niter":
                arr[sel] += val
            else:
                arr[sel] = val
        used[sel] = new[sel]
        passes += 1
    return type(res)(**fields), passes
