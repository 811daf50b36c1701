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

With an error image the support grows with flux (DAOPHOT's PSF radius, :func:`flux_reach`):
inside a group a member is coupled only to the stamps where its PSF exceeds the noise (at most
two fit boxes), and the rest of its light, on its own group's stamps too, is subtracted as
neighbours' light (out to 1 % of the noise), so big groups with a 101² PSF stay fast and the
passes converge to the fully coupled solution. Close pairs can be merged (:func:`find_merges`).

A member whose fit fails (its position leaves its fit stamp, or a value is absurd) is dropped
from the model and its group refitted without it, as ALLSTAR deletes such stars: its stopped
model (a flux of -1400 at the edge of its stamp, say) would otherwise be compensated by its
partners (one 5.6 px away came out 36x too bright with flags 0). The dropped row keeps its
flags and reports the flux measured at its initial position on the data minus every other
star; partners that may have absorbed more than their flux error of its light are flagged
``merged``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from crowdphot.core.batched import stamp_origin

__all__ = ["find_merges", "fit_allstar", "flux_reach", "model_reach", "neighbor_stamps"]

#: A group is refitted when its neighbours' light on a member's stamp changed by more than
#: this fraction of the member's flux error (summed absolute change over the stamp) ...
TOL_SIGMA = 0.02
#: ... and by more than this fraction of its flux (noiseless data have ~zero errors).
TOL_REL = 1e-6
#: Passes stop when no refitted star moved by more than this fraction of its errors.
TOL_SETTLED = 0.005
#: Passes after the first grouped fit.
MAX_PASSES = 6
#: A group couples a member to its other members' stamps where its PSF exceeds this fraction
#: of the median pixel error (support growing with flux, when an error image is given); the
#: wings beyond are subtracted as neighbours' light.
REACH_NOISE = 1.0
#: ... and at most this many fit boxes (farther wings are weak couplings: the passes take them).
COUPLING_MAX_FIT = 2.0
#: Neighbours' light (other groups, far members) is subtracted out to where a star's PSF falls
#: below this fraction of the median pixel error (when an error image is given).
NEIGHBOR_NOISE = 0.01
#: The engine's extra coupling reach (``build_interactions``' margin).
COUPLING_MARGIN = 1.0
#: Two stars also merge when closer than this many errors of their separation.
MERGE_NSIGMA = 2.0
#: Passes allowed beyond ``max_passes`` to refit groups whose members failed (left their stamp)
#: in the last pass; a group still waiting after them is flagged no_convergence.
EXTRA_PASSES = 3
#: Pairs evaluated per batch (bounds memory).
_CHUNK = 200_000


def neighbor_stamps(psf_model, x, y, flux, group, xlo, ylo, fit_shape, *, reach,
                    coupled=None, targets=None, pairs_out=None):
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
    coupled : (x_ref, y_ref, half, margin), optional
        Members of the *same* group whose light the grouped fit does not model (the engine
        couples star ``s`` to stamp ``t`` only when ``|x_ref[s] - centre[t]|`` and the same
        in y are within ``fit/2 + half[s] + margin``) are included too, so that a reduced
        support loses no light.
    targets : ndarray of int, optional
        Only these sources' stamps are computed (the others stay zero).
    pairs_out : list, optional
        Receives ``(stamp, star, weight)`` arrays of the pairs evaluated, ``weight`` the
        star's summed ``|PSF|`` over the stamp (per unit flux).

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
    tg = np.arange(n) if targets is None else np.asarray(targets, dtype=np.int64)
    if len(tg) == 0:
        return out.reshape(n, fy, fx)
    t_stamp = cKDTree(np.column_stack([cx[tg], cy[tg]]))
    t_src = cKDTree(np.column_stack([x[src], y[src]]))
    pairs = t_stamp.sparse_distance_matrix(t_src, r_max, p=np.inf, output_type="ndarray")
    tgt = tg[pairs["i"].astype(np.int64)]
    j = src[pairs["j"]]
    keep = group[tgt] != group[j]
    if coupled is not None:
        xr, yr, chalf, margin = coupled
        far = (np.abs(xr[j] - cx[tgt]) > fx / 2.0 + chalf[j] + margin) | (
            np.abs(yr[j] - cy[tgt]) > fy / 2.0 + chalf[j] + margin)
        keep |= far & (tgt != j)
    tgt, j = tgt[keep], j[keep]
    # the star's own reach plus the stamp's half-size, per axis
    keep = (np.abs(x[j] - cx[tgt]) <= reach[j] + fx / 2.0) & (
        np.abs(y[j] - cy[tgt]) <= reach[j] + fy / 2.0)
    tgt, j = tgt[keep], j[keep]
    weight = np.zeros(len(tgt)) if pairs_out is not None else None
    for a in range(0, len(tgt), _CHUNK):
        t, s = tgt[a:a + _CHUNK], j[a:a + _CHUNK]
        vals = np.asarray(psf_model._stamps(x[s], y[s], xlo[t], ylo[t], (fy, fx)))
        vals = np.where(np.isfinite(vals), vals, 0.0).reshape(len(s), -1)
        if weight is not None:
            weight[a:a + _CHUNK] = np.abs(vals).sum(axis=1)
        vals = vals * flux[s][:, None]
        order = np.argsort(t, kind="stable")
        t, vals = t[order], vals[order]
        first = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
        out[t[first]] += np.add.reduceat(vals, first, axis=0)
    if pairs_out is not None:
        pairs_out.append((tgt, j, weight))
    return out.reshape(n, fy, fx)


def flux_reach(psf_model, flux, floor):
    """Support half-width growing with flux (DAOPHOT's PSF radius), per star.

    The radius (pixels, Chebyshev) beyond which ``|flux| * PSF`` stays below ``floor`` on
    every pixel of the model's stamp (centred star); never more than :func:`model_reach`.
    Non-finite fluxes get the full support.

    Parameters
    ----------
    psf_model : BatchedPSFMixin
    flux : ndarray of shape (n,)
    floor : float
        Light per pixel below which a star's wing is neglected (e.g. a small fraction of
        the pixel noise).

    Returns
    -------
    reach : ndarray of shape (n,)

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> r = flux_reach(CircularGaussianPRF(fwhm=2.5), np.array([10.0, 1e4]), 0.01)
    >>> bool(r[0] < r[1])
    True
    """
    full = model_reach(psf_model)
    flux = np.abs(np.asarray(flux, dtype=float))
    size = 2 * int(np.ceil(full)) + 1
    c = float(size // 2)
    stamp = np.abs(np.asarray(psf_model.psf_stamps([c], [c], (size, size), xlo=[0],
                                                   ylo=[0])[0]))
    stamp = np.where(np.isfinite(stamp), stamp, 0.0)
    yy, xx = np.indices(stamp.shape)
    ring = np.maximum(np.abs(yy - c), np.abs(xx - c)).astype(int).ravel()
    peak = np.zeros(ring.max() + 1)
    np.maximum.at(peak, ring, stamp.ravel())
    tail = np.maximum.accumulate(peak[::-1])[::-1]  # max |PSF| at this ring or beyond
    # smallest ring r with flux * tail(r + 1) < floor: light beyond r is negligible
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(flux > 0, floor / flux, np.inf)
    beyond = np.r_[tail[1:], 0.0]
    idx = np.searchsorted(-beyond, -need, side="left")  # beyond is non-increasing
    reach = np.minimum(idx.astype(float) + 0.5, full)
    return np.where(np.isfinite(flux), reach, full)


def model_reach(psf_model):
    """Half-width of the model's support in pixels (its default stamp; 25 px without one)."""
    try:
        sy, sx = psf_model.default_stamp_shape
        return max(sy, sx) / 2.0
    except (ValueError, NotImplementedError, AttributeError, TypeError):
        return 25.0


_PER_SOURCE = ("local_bkg", "bounds", "support_radius")
_COV_FIELDS = ("cov", "cov_ok", "x_err", "y_err", "flux_err", "sky_err")


def _take(value, sel, n):
    if isinstance(value, dict):
        return {k: _take(v, sel, n) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_take(v, sel, n) for v in value)
    if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
        return value[sel]
    return value


def _sliced(kwargs, sel):
    """Engine keyword arguments for the sources ``sel`` (bool of shape (n,)): per-source
    ones (:data:`_PER_SOURCE`) sliced, the others as they are."""
    n = len(sel)
    return {k: (_take(v, sel, n) if k in _PER_SOURCE else v) for k, v in kwargs.items()}


def _store(fields, rows, sub, skip=()):
    """Write a refit's results ``sub`` into the rows ``rows`` of ``fields`` (iterations add
    up); fields named in ``skip`` are kept."""
    for name, arr in fields.items():
        if name in skip:
            continue
        val = getattr(sub, name)
        if name == "niter":
            arr[rows] += val
        else:
            arr[rows] = val


def find_merges(x, y, flux, x_err, y_err, group, separation):
    """Pairs of one group too close to be told apart; returns ``into`` of shape (n,).

    DAOPHOT's rule: two stars of a group merge when their separation is below
    ``separation`` (pixels, e.g. 0.37 FWHM) or below :data:`MERGE_NSIGMA` times the error of
    their separation (``sqrt(x_err1² + y_err1² + x_err2² + y_err2²)``). Closest pairs merge
    first; each star takes part in at most one merge per call. ``into[i]`` is the index of
    the star that absorbs ``i`` (-1: none); the absorbing star is the brighter one.

    Examples
    --------
    >>> find_merges(np.array([0.0, 0.5, 9.0]), np.zeros(3), np.array([10.0, 5.0, 3.0]),
    ...             np.full(3, 0.1), np.full(3, 0.1), np.zeros(3, int), 1.0).tolist()
    [-1, 0, -1]
    """
    from scipy.spatial import cKDTree

    n = len(x)
    into = np.full(n, -1, dtype=np.int64)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & np.isfinite(flux))
    if len(ok) < 2:
        return into
    ex = np.where(np.isfinite(x_err), x_err, 0.0)
    ey = np.where(np.isfinite(y_err), y_err, 0.0)
    r = max(float(separation), float(MERGE_NSIGMA * 2.0 * np.hypot(ex[ok], ey[ok]).max()))
    if r <= 0:
        return into
    pairs = cKDTree(np.column_stack([x[ok], y[ok]])).query_pairs(r, output_type="ndarray")
    if len(pairs) == 0:
        return into
    a, b = ok[pairs[:, 0]], ok[pairs[:, 1]]
    d = np.hypot(x[a] - x[b], y[a] - y[b])
    sig = np.sqrt(ex[a] ** 2 + ey[a] ** 2 + ex[b] ** 2 + ey[b] ** 2)
    keep = (group[a] == group[b]) & ((d < separation) | (d < MERGE_NSIGMA * sig))
    a, b, d = a[keep], b[keep], d[keep]
    used = np.zeros(n, dtype=bool)
    for k in np.argsort(d, kind="stable"):  # only the few close pairs: a short loop
        i, j = a[k], b[k]
        if used[i] or used[j]:
            continue
        used[i] = used[j] = True
        keep_i = abs(flux[i]) >= abs(flux[j])
        into[j if keep_i else i] = i if keep_i else j
    return into


def _settled(fields, start, sel, hold):
    """Whether every refitted star moved by <= TOL_SETTLED errors (or TOL_REL / 1e-5 px)."""
    ok = np.isfinite(fields["flux"][sel])
    for k, name in enumerate(("x", "y", "flux")):
        if hold[k]:
            continue
        new = fields[name][sel][ok]
        err = fields[f"{name}_err"][sel][ok]
        err = np.where(np.isfinite(err), err, 0.0)
        floor = TOL_REL * np.abs(new) if name == "flux" else 1e-5
        if np.any(np.abs(new - start[ok, k]) > np.maximum(TOL_SETTLED * err, floor)):
            return False
    return True


def fit_allstar(fit, data, psf_model, x, y, flux, *, fit_shape, group_id, fixed=None,
                reach=None, max_passes=MAX_PASSES, subtract=True, merge_separation=None,
                **kwargs):
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
    subtract : bool
        Subtract the stars outside each group (all-star passes); False: only the refits
        that merges need.
    merge_separation : float or None
        Merge close pairs of a group (:func:`find_merges`) after the first fit: the brighter
        star takes the summed flux and the flux-weighted position and its group is refitted;
        the other is reported not fitted (``reason`` 'merged'). None: no merging.

    Returns
    -------
    result : FitResult
        As the engine's, the values of the last fit of each group; ``niter`` sums all passes.
    passes : int
        All-star passes made (0: no group needed a refit).
    merged : ndarray of bool, shape (n,)
        Sources taking part in a merge (both the absorbing and the absorbed star) and, with
        ``subtract``, members that absorbed a failed member's light (:func:`_report_dropped`).

    Notes
    -----
    With ``subtract``, a member whose fit fails (left its stamp, absurd or non-finite
    values) is dropped from the model and its group refitted without it; such refits may
    take up to :data:`EXTRA_PASSES` passes beyond ``max_passes``, and a group still waiting
    for one after them is reported not converged.
    """
    n = len(x)
    gid = np.asarray(group_id)
    fixed = {} if fixed is None else fixed
    err_img = kwargs.get("error")
    coupled = None
    if err_img is not None and subtract:
        # DAOPHOT's PSF radius: a group couples a member to the stamps its PSF reaches above
        # the noise; the fainter wings come in with the neighbours' light, pass by pass
        floor = REACH_NOISE * float(np.median(np.asarray(err_img)[::4, ::4]))
        half = np.minimum(flux_reach(psf_model, 2.0 * np.abs(flux), floor),
                          COUPLING_MAX_FIT * max(fit_shape))
        kwargs["support_radius"] = half
        coupled = (x, y, half, COUPLING_MARGIN)
    res = fit(data, psf_model, x, y, flux, fit_shape=fit_shape, group_id=gid, fixed=fixed,
              **kwargs)
    xlo, ylo = stamp_origin(x, y, fit_shape)
    if reach is None:
        reach = model_reach(psf_model)
        if err_img is not None and subtract:  # wings below a small fraction of the noise
            fl = np.where(np.isfinite(res.flux), np.abs(res.flux), np.inf)
            reach = flux_reach(psf_model, 2.0 * fl, NEIGHBOR_NOISE * floor)
    used = np.zeros((n, *fit_shape))
    fields = {f.name: np.array(getattr(res, f.name)) for f in dataclasses.fields(res)}
    hold = np.array([bool(np.all(fixed.get(k, False))) for k in ("x", "y", "flux")])
    passes = 0
    merged = np.zeros(n, dtype=bool)
    alive = np.ones(n, dtype=bool)
    forced = np.zeros(n, dtype=bool)  # groups to refit whatever their neighbours do
    if merge_separation is not None and not hold[:2].any():
        into = find_merges(fields["x"], fields["y"], fields["flux"], fields["x_err"],
                           fields["y_err"], gid, merge_separation)
        gone = np.flatnonzero(into >= 0)
        if len(gone):
            keep = into[gone]
            f1, f2 = fields["flux"][keep], fields["flux"][gone]
            tot = f1 + f2
            w = np.where(np.abs(tot) > 0, np.abs(f1) / (np.abs(f1) + np.abs(f2)), 0.5)
            for k in ("x", "y"):
                fields[k][keep] = w * fields[k][keep] + (1 - w) * fields[k][gone]
            fields["flux"][keep] = tot
            merged[keep] = merged[gone] = True
            alive[gone] = False
            forced[np.isin(gid, gid[keep])] = True
            for arr in fields.values():
                if arr.dtype.kind == "f":
                    arr[gone] = np.nan
                elif arr.dtype == bool:
                    arr[gone] = False
            fields["reason"][gone] = "merged"
    # failed members (left their stamp, absurd values) are dropped from the model and their
    # groups refitted without them, so that no partner compensates a runaway model
    dropped = np.zeros(n, dtype=bool)
    if subtract:
        _drop_failed(fields, alive, dropped, forced, gid, hold)
    limit = max_passes if subtract else min(1, max_passes)
    light = pairs = prev = acc = None
    while passes < limit or (forced.any() and passes < limit + EXTRA_PASSES):
        cur = fields["x"], fields["y"], np.where(dropped, np.nan, fields["flux"])
        err = np.where(np.isfinite(fields["flux_err"]), fields["flux_err"], 0.0)
        ref = np.where(np.isfinite(cur[2]), np.abs(cur[2]), 0.0)
        thresh = np.maximum(TOL_SIGMA * err, TOL_REL * ref)
        if subtract:
            light, acc, pairs = _update_light(psf_model, cur, prev, light, acc, pairs, used,
                                              thresh, fields["fitted"] & ~dropped, forced,
                                              gid, xlo, ylo, fit_shape, reach, coupled)
            prev = tuple(np.array(c) for c in cur)
            new = light
        else:
            new = used
        change = np.abs(new - used).sum(axis=(1, 2))
        active = (fields["fitted"] & ~dropped & (change > thresh)) | forced
        sel = np.isin(gid, np.unique(gid[active])) & alive & ~dropped
        was_forced = bool(forced.any())
        forced[:] = False
        if not sel.any():
            break
        start = np.column_stack([c[sel] for c in cur])
        start[:, hold] = np.nan
        # with absolute errors the covariance depends on the model only, which these passes
        # change by a small fraction of the errors: it is kept from the first fit (groups
        # changed by a merge or a dropped member get a new one)
        with_cov = err_img is None or was_forced
        sub = fit(data, psf_model, x[sel], y[sel], flux[sel], fit_shape=fit_shape,
                  group_id=gid[sel], fixed=fixed, neighbors=new[sel] if subtract else None,
                  start=start, covariance=with_cov, **_sliced(kwargs, sel))
        _store(fields, sel, sub, skip=() if with_cov else _COV_FIELDS)
        used[sel] = new[sel]
        passes += 1
        if subtract:
            _drop_failed(fields, sel, dropped, forced, gid, hold)
        # stable: this pass moved no star by more than a small fraction of its errors, so the
        # neighbours' light would not change enough to refit anything
        if (subtract and not was_forced and not forced.any()
                and _settled(fields, start, sel, hold)):
            break
    if subtract:
        # a member still coupled to a failure that could not be refitted away is not trusted
        fields["converged"][forced & alive & ~dropped] = False
        if dropped.any():
            merged |= _report_dropped(fit, data, psf_model, x, y, flux, fields, dropped,
                                      alive, gid, xlo, ylo, fit_shape, reach, hold, kwargs)
    return type(res)(**fields), passes, merged


def _update_light(psf_model, cur, prev, light, acc, pairs, used, thresh, live, forced, gid,
                  xlo, ylo, fit_shape, reach, coupled):
    """Neighbours' light on every stamp at the current values, re-evaluated where needed.

    The first call evaluates every stamp (and keeps the (stamp, star, weight) pairs). Later
    calls bound each stamp's change since its last evaluation by the stars' changes since
    the previous pass (``|dflux| w + |flux| Gamma |dpos| w`` summed over the pairs, ``w`` the
    star's summed PSF on the stamp, ``Gamma`` the model's largest relative gradient, see
    :func:`_relative_gradient`) and re-evaluate only the stamps of live sources whose known
    change plus that bound could exceed their refit threshold (and forced groups'), so that
    a pass whose stars hardly moved costs no evaluation.

    Returns
    -------
    light : ndarray of shape (n, fy, fx)
        Exact where the bound could matter; elsewhere within ``acc`` of it.
    acc : ndarray of shape (n,)
        Bound on each stamp's summed ``|light - exact|``.
    pairs : (stamp, star, weight) arrays
    """
    n = len(cur[0])
    if light is None:
        out = []
        light = neighbor_stamps(psf_model, *cur, gid, xlo, ylo, fit_shape, reach=reach,
                                coupled=coupled, pairs_out=out)
        none = np.zeros(0, dtype=np.int64)
        return light, np.zeros(n), out[0] if out else (none, none, np.zeros(0))
    tgt, j, w = pairs
    with np.errstate(invalid="ignore"):
        f_old, f_new = np.nan_to_num(prev[2]), np.nan_to_num(cur[2])
        shift = np.nan_to_num(np.hypot(cur[0] - prev[0], cur[1] - prev[1]))
    d = np.abs(f_new - f_old) + np.abs(f_old) * _relative_gradient(psf_model) * shift
    acc = acc + np.bincount(tgt, w * d[j], minlength=n)
    known = np.abs(light - used).sum(axis=(1, 2))
    need = (live & (known + acc > thresh)) | np.isin(gid, gid[forced])
    todo = np.flatnonzero(need)
    if len(todo):
        light = light.copy()
        light[todo] = neighbor_stamps(psf_model, *cur, gid, xlo, ylo, fit_shape, reach=reach,
                                      coupled=coupled, targets=todo)[todo]
        acc[todo] = 0.0
    return light, acc, pairs


def _relative_gradient(psf_model):
    """Twice the largest ``(|dP/dx| + |dP/dy|) / |P|`` of the model where ``|P|`` exceeds
    1e-6 of its peak (per pixel of position change)."""
    size = 2 * int(np.ceil(min(model_reach(psf_model), 40.0))) + 1
    c = float(size // 2)
    h = 1e-3
    st = [np.asarray(psf_model.psf_stamps([c + dx], [c + dy], (size, size), xlo=[0],
                                          ylo=[0])[0])
          for dx, dy in ((0, 0), (h, 0), (0, h))]
    p = np.abs(st[0])
    ok = np.isfinite(p) & (p > 1e-6 * np.nanmax(p))
    grad = (np.abs(st[1] - st[0]) + np.abs(st[2] - st[0])) / h
    return 2.0 * float(np.max(grad[ok] / p[ok])) if ok.any() else 10.0


def _drop_failed(fields, among, dropped, forced, gid, hold):
    """Drop newly failed members from the model and mark their groups for a refit.

    A member whose position left its fit stamp (or whose values were absurd) was stopped with
    whatever flux it had then, and its group's other members were fitted around that model
    (a partner 5 px away compensating a flux of -1400 came out 36x too bright, flags 0).
    ALLSTAR deletes such a star and refits its group; here its row is kept, flagged, and
    measured at the end (:func:`_report_dropped`).
    """
    if hold[:2].all():  # positions fixed: nothing can leave its stamp
        return
    with np.errstate(invalid="ignore"):
        bad = among & fields["fitted"] & ~dropped & (
            fields["left_stamp"] | fields["absurd"] | ~np.isfinite(fields["flux"])
            | ~np.isfinite(fields["x"]) | ~np.isfinite(fields["y"]))
    if not bad.any():
        return
    dropped |= bad
    forced[np.isin(gid, gid[bad])] = True


def _report_dropped(fit, data, psf_model, x0, y0, f0, fields, dropped, alive, gid, xlo, ylo,
                    fit_shape, reach, hold, kwargs):
    """Values reported for the dropped members, and the partners that absorbed their light.

    A dropped member is measured alone at its initial position (position held, flux fitted)
    on the data minus every other star's model; its row keeps its flags (left_stamp and
    no_convergence, or absurd_value with NaN values).

    Returns
    -------
    absorbed : ndarray of bool, shape (n,)
        Members that may have absorbed more than their flux error of a dropped member's light
        (the dropped star at its initial position and the larger of its initial and
        measured |flux|, projected on the member's PSF over its stamp): their fluxes are
        those of a blend, flagged ``merged`` like the pairs merge_separation merges.
    """
    d = np.flatnonzero(dropped)
    n = len(x0)
    absurd = fields["absurd"][d] & ~fields["left_stamp"][d]
    left = fields["left_stamp"][d].copy()
    solo = gid.copy()
    solo[d] = gid.max() + 1 + np.arange(len(d))
    mflux = np.where(dropped | ~alive, np.nan, fields["flux"])
    nb = neighbor_stamps(psf_model, fields["x"], fields["y"], mflux, solo, xlo, ylo, fit_shape,
                         reach=reach, targets=d)[d]
    sel = np.zeros(n, dtype=bool)
    sel[d] = True
    kw = _sliced({k: v for k, v in kwargs.items() if k != "support_radius"}, sel)
    sub = fit(data, psf_model, x0[d], y0[d], f0[d], fit_shape=fit_shape,
              group_id=np.arange(len(d)), fixed={"x": True, "y": True, "flux": bool(hold[2])},
              neighbors=nb, **kw)
    _store(fields, d, sub)
    fields["left_stamp"][d] = left
    fields["converged"][d] = False
    fields["absurd"][d] = absurd
    bad = d[absurd]
    for name in ("x", "y", "flux", "x_err", "y_err", "flux_err", "qfit", "cfit"):
        fields[name][bad] = np.nan
    fields["cov"][bad] = np.nan
    fields["cov_ok"][bad] = False
    # light of the dropped stars on their partners' stamps, projected on the partners' PSFs
    est = np.zeros(n)
    with np.errstate(invalid="ignore"):
        est[d] = np.fmax(np.abs(f0[d]), np.abs(sub.flux))
    est[d] = np.where(np.isfinite(est[d]), est[d], 0.0)
    part = np.flatnonzero(np.isin(gid, gid[d]) & alive & ~dropped & fields["fitted"])
    absorbed = np.zeros(n, dtype=bool)
    if len(part) == 0:
        return absorbed
    light = np.where(dropped, est, np.nan)
    xs, ys = np.where(dropped, x0, fields["x"]), np.where(dropped, y0, fields["y"])
    a = neighbor_stamps(psf_model, xs, ys, light, solo, xlo, ylo, fit_shape, reach=reach,
                        targets=part)[part].reshape(len(part), -1)
    own = np.asarray(psf_model._stamps(fields["x"][part], fields["y"][part], xlo[part],
                                       ylo[part], fit_shape)).reshape(len(part), -1)
    own = np.where(np.isfinite(own), own, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        took = np.abs((a * own).sum(axis=1) / (own * own).sum(axis=1))
        err = fields["flux_err"][part]
        absorbed[part] = took > np.where(np.isfinite(err), err, 0.0)
    return absorbed
