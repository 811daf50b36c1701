"""All-star fitting in tiles: later rounds with other tasks' stars subtracted.

The first round of :func:`crowdphot.pipeline.tiles.photometry_tiled` fits each task's groups
with all-star passes over the stars of that task only; stars owned by other tasks whose light
reaches its box (across a seam) are missing from its model. Later rounds refit each task with
those stars (their latest values) rendered and subtracted from its pixels, starting from the
first round's initial fluxes and local backgrounds (computed on the untouched pixels, as a
whole-image run computes them), until the neighbours stop changing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["allstar_rounds", "HALO_ROUNDS", "HALO_TOL"]


def allstar_rounds(runner, fit_task, jobs, outs, shared_psf, psf_model, fit_shape, unit,
                   kwargs, progress, shift_model=None):
    """Later rounds of an all-star tiled fit: tasks again, other tasks' stars subtracted.

    A round refits every task that some other task's star reaches (box grown by the model's
    support) with those stars' latest values subtracted from its pixels; rounds repeat, for
    the tasks whose neighbours changed by more than :data:`HALO_TOL` of their errors,
    at most :data:`HALO_ROUNDS` times (the change shrinks by the wings' fraction per round).
    With ``shift_model``, a task is also left as it is when the change of those stars' light
    on every one of its stars' stamps is below that star's all-star refit threshold
    (:func:`crowdphot.psf.allstar.fit_allstar`'s ``max(TOL_SIGMA * flux_err,
    TOL_REL * |flux|)``): the all-star passes of a whole-image run would not refit it either;
    otherwise only the groups of the stars above their thresholds are refitted, with every
    group within the model's reach of them, transitively (:func:`_refit_set`), and the task's
    other rows are kept.

    Parameters
    ----------
    runner : crowdphot.pipeline._runner.Runner
    fit_task : callable
        :func:`crowdphot.pipeline._tasks.fit_task` (its last argument takes the neighbours
        ``(m, 3)``: x, y, flux in image pixels).
    shared_psf, psf_model, fit_shape, unit, kwargs, progress
        As the first round's.
    jobs : list of (box, QTable)
        As :func:`crowdphot.pipeline._plan.fit_jobs` (the first round's tasks).
    outs : list of (QTable or None, messages)
        The first round's results, one per job.
    shift_model : callable, optional
        :func:`crowdphot.pipeline._planes.shift_model`; given, tasks whose neighbours' light
        changed by less than their stars' refit thresholds are not refitted.

    Returns
    -------
    outs : list
        The last results of each job.
    """
    from crowdphot.psf.allstar import model_reach

    reach = model_reach(psf_model) + max(fit_shape) / 2.0 + 1.0
    outs = list(outs)
    used = [None] * len(jobs)  # (ids, values) of the neighbours each job last subtracted
    for _ in range(HALO_ROUNDS):
        stars, owner = _halo_stars(outs)
        if stars is None:
            break
        todo, args, kept = [], [], []
        for j, ((box, sub), (table, _)) in enumerate(zip(jobs, outs, strict=True)):
            if table is None:
                continue
            by0, by1, bx0, bx1 = box
            sx, sy = stars[:, 1], stars[:, 2]
            near = (owner != j) & (sx > bx0 - 0.5 - reach) & (sx < bx1 - 0.5 + reach) & (
                sy > by0 - 0.5 - reach) & (sy < by1 - 0.5 + reach)
            if not near.any() or not _halo_changed(used[j], stars[near]):
                continue
            refit = None  # all of the task's stars
            if shift_model is not None:
                hit = _light_changed(psf_model, shift_model, box, table, used[j], stars[near],
                                     fit_shape)
                if not hit.any():
                    continue
                refit = _refit_set(table, hit, reach)
                if refit.all():
                    refit = None
            # the first round's starting values (computed on the untouched pixels, as a
            # whole-image run computes them), so that only the neighbours' light differs
            init = sub.copy()
            first = {int(i): k for k, i in enumerate(np.asarray(table["id"]))}
            rows = np.array([first[int(i)] for i in np.asarray(init["id"])])
            for name in ("flux_init", "local_bkg"):
                init[name] = _plain(table[name])[rows]
            if refit is not None:
                init = init[refit[rows]]
            todo.append(j)
            kept.append(None if refit is None else table[~refit])
            used[j] = stars[near]
            args.append((box, init, shared_psf, fit_shape, unit, kwargs, stars[near, 1:4]))
        if not todo:
            break
        from crowdphot.pipeline._sky import read_box

        # what each task reads (with a sky map: its sky region), sent to Dask workers
        reads = [read_box(a[0], runner.source.shape, kwargs.get("tile_sky")) for a in args]
        again = runner.map(fit_task, reads, args, progress=progress,
                           desc="Fit tiles (neighbours)")
        for j, out, old in zip(todo, again, kept, strict=True):
            outs[j] = out if old is None or out[0] is None else _combine(old, out)
    return outs


def _refit_set(table, hit, reach):
    """Rows of a task to refit: the groups of the ``hit`` stars, closed under reach.

    Every group with a member within ``reach`` (the model's support plus half a fit stamp) of
    a refitted star is refitted too, and so on: the stars left as they are receive no light
    from any star that moves, and the neighbours' light change on their own stamps is below
    their refit thresholds (``hit`` is False), so a whole-image all-star run would not move
    them either. A crowded task closes over all of its stars (a full refit).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(table)
    x, y = _plain(table["x_fit"]), _plain(table["y_fit"])
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.all() or hit.all():
        return np.ones(n, bool)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(reach, output_type="ndarray")
    gid = np.asarray(table["group_id"])
    _, ginv = np.unique(gid, return_inverse=True)
    order = np.argsort(ginv, kind="stable")  # chain each group's members
    link = ginv[order[:-1]] == ginv[order[1:]]
    i = np.concatenate([pairs[:, 0], order[:-1][link]])
    k = np.concatenate([pairs[:, 1], order[1:][link]])
    graph = coo_matrix((np.ones(i.size), (i, k)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    return np.isin(label, label[hit])


def _combine(old, out):
    """A task's rows left as they were stacked with its refitted rows (meta of the refit)."""
    from astropy.table import vstack

    table, messages = out
    meta = dict(table.meta)
    both = vstack([old, table], metadata_conflicts="silent")
    both.meta = meta
    return both, messages


#: All-star tiled fits: rounds after the first (each refits the tasks whose neighbours from
#: other tasks changed) ...
HALO_ROUNDS = 2
#: ... by more than this fraction of a neighbour's errors (x, y, flux).
HALO_TOL = 0.02


def _halo_stars(outs):
    """``(stars (m, 7): id, x, y, flux, x_err, y_err, flux_err; owner (m,))``: fitted stars."""
    from crowdphot.psf.flags import PSF_FLAGS

    failed = np.int64(PSF_FLAGS.LEFT_STAMP | PSF_FLAGS.ABSURD_VALUE)
    stars, owner = [], []
    for j, (table, _) in enumerate(outs):
        if table is None:
            continue
        x, y, f = (_plain(table[c]) for c in ("x_fit", "y_fit", "flux_fit"))
        errs = [_plain(table[c]) if c in table.colnames else np.full(len(x), np.nan)
                for c in ("x_err", "y_err", "flux_err")]
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(f) & (f != 0) & (
            (np.asarray(table["flags"]) & failed) == 0)  # failed stars are in no one's model
        stars.append(np.column_stack([np.asarray(table["id"], dtype=float), x, y, f,
                                      *errs])[ok])
        owner.append(np.full(int(ok.sum()), j))
    if not stars:
        return None, None
    return np.concatenate(stars), np.concatenate(owner)


def _halo_changed(old, new):
    """Whether a job's neighbours (rows of :func:`_halo_stars`) changed enough for a refit."""
    if old is None:
        return True
    if len(old) != len(new) or np.any(old[:, 0] != new[:, 0]):
        return True
    for k in (1, 2, 3):  # x, y, flux against their errors (columns 4, 5, 6)
        err = np.where(np.isfinite(new[:, k + 3]), new[:, k + 3], 0.0)
        floor = 1e-6 * np.abs(new[:, 3]) if k == 3 else 1e-5
        if np.any(np.abs(new[:, k] - old[:, k]) > np.maximum(HALO_TOL * err, floor)):
            return True
    return False


def _light_changed(psf_model, shift_model, box, table, old, new, fit_shape):
    """Boolean (n,): which of the task's stars see the neighbours' light on their stamps
    change by more than their refit threshold (``old``/``new``: rows of
    :func:`_halo_stars`; None: no light). All True when a position is not finite."""
    from crowdphot.core.render import render_image
    from crowdphot.psf.allstar import TOL_REL, TOL_SIGMA

    y0, y1, x0, x1 = box
    model = shift_model(psf_model, x0, y0)
    diff = render_image((y1 - y0, x1 - x0), model, new[:, 1] - x0, new[:, 2] - y0, new[:, 3])
    if old is not None and len(old):
        diff -= render_image((y1 - y0, x1 - x0), model, old[:, 1] - x0, old[:, 2] - y0,
                             old[:, 3])
    # summed |change| over each star's stamp, one pixel wider than fit_shape on every side
    cum = np.zeros((diff.shape[0] + 1, diff.shape[1] + 1))
    cum[1:, 1:] = np.abs(diff).cumsum(axis=0).cumsum(axis=1)
    x, y, f, e = (_plain(table[c]) if c in table.colnames else np.full(len(table), np.nan)
                  for c in ("x_fit", "y_fit", "flux_fit", "flux_err"))
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return np.ones(len(table), bool)
    hy, hx = (int(v) // 2 + 1 for v in np.broadcast_to(np.asarray(fit_shape), (2,)))
    ya = np.clip(np.round(y - y0).astype(np.int64) - hy, 0, diff.shape[0])
    yb = np.clip(np.round(y - y0).astype(np.int64) + hy + 1, 0, diff.shape[0])
    xa = np.clip(np.round(x - x0).astype(np.int64) - hx, 0, diff.shape[1])
    xb = np.clip(np.round(x - x0).astype(np.int64) + hx + 1, 0, diff.shape[1])
    change = cum[yb, xb] - cum[ya, xb] - cum[yb, xa] + cum[ya, xa]
    thresh = np.maximum(TOL_SIGMA * np.where(np.isfinite(e), e, 0.0),
                        TOL_REL * np.where(np.isfinite(f), np.abs(f), 0.0))
    return change > thresh


def _light_negligible(psf_model, shift_model, box, table, old, new, fit_shape):
    """Whether the neighbours' light on ``box`` changed by less than every star's refit
    threshold on its stamp (:func:`_light_changed` nowhere)."""
    return not _light_changed(psf_model, shift_model, box, table, old, new, fit_shape).any()


def _plain(col):
    return np.asarray(getattr(col, "value", col), dtype=float)
