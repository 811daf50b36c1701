"""Tiled PSF photometry of big images, in one process or over a Dask cluster.

The image is cut into a regular grid of tile *cores*; every task reads its core plus an
overlap margin, so that everything computed for a star in the core sees exactly the pixels a
whole-image run would see. The merged catalog therefore equals the untiled one: no duplicates
and no gaps at seams.

1. **Detect per tile.** The finder runs on core + detection margin (wider than its kernel,
   peak footprint and minimum separation); only detections whose centroid falls in the core are
   kept. Cores partition the plane (the outer cores extend to infinity), so each star is kept
   exactly once.
2. **Group globally.** The detections (two floats per star) come back to the driver, which
   orders them by position and groups them with the compiled friends-of-friends grouper over
   the whole image: groups never stop at seams and their size is not capped.
3. **Fit per tile.** Each group is owned by the tile whose core holds its first member. One task
   per non-empty tile reads the bounding box of its groups plus the fit margin (fit stamp,
   aperture, local-background annulus) and fits them with :func:`run_psf_photometry`;
   position-dependent PSF grids are shifted into the cut's frame.

With ``sky=`` every task removes the image's sky from its pixels before finding and fitting
(a constant, or a map estimated on a region of the whole image's sky-box grid around its box:
:mod:`crowdphot.pipeline._sky`); with ``likelihood='poisson'`` the sky is part of the expected
counts instead.

How it spreads over a real cluster
----------------------------------
The driver never holds pixels when ``data`` is a FITS path (or a ``FitsPlanes``): it reads the
header, submits one detection task per tile, gathers the detections (16 bytes per star), groups
them (about a second for 10^6 stars), and submits one fit task per tile with the initial table
of its groups (about 60 bytes per star); each task opens the file memory-mapped and reads only
its box, so the file must be visible at the same path on every worker (shared or replicated
storage) and no pixel crosses the network. Catalog rows (about 150 bytes per star) come back
and are stacked. With an in-memory array the driver cuts each box and scatters it to the worker
that runs the task, so the pixels cross the network about twice (once per phase, times the
small overlap factor ``(T + 2m)**2 / T**2``). At most two tasks per worker are in flight, which
bounds the memory of driver and workers to a few tile boxes each (about 17 bytes per pixel:
data, error and mask; ~70 MB for a 2048 x 2048 tile). Tasks within a phase are independent;
the only synchronisation is the global grouping between the two phases. A group that
percolates over several tiles is fitted whole by one task reading its bounding box, so a field
far beyond the crowding limit with a large grouping radius degrades towards one big task.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.table import QTable, vstack

from crowdphot.core.validate import CrowdphotWarning, as_pair
from crowdphot.pipeline._halo import allstar_rounds
from crowdphot.pipeline._threads import limit_threads as _limit_threads

__all__ = ["Tile", "photometry_tiled", "tile_grid", "tile_index"]


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One tile of a grid: its core pixels and the positions it owns.

    Attributes
    ----------
    y0, y1, x0, x1 : int
        Core pixel range ``[y0:y1, x0:x1]`` (end exclusive).
    ylo, yhi, xlo, xhi : float
        Owned positions ``ylo <= y < yhi`` and ``xlo <= x < xhi``: pixel ``j`` spans
        ``[j - 0.5, j + 0.5)``, and a core on the image border extends to infinity there so
        that positions slightly outside the image still have an owner.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    ylo: float = -math.inf
    yhi: float = math.inf
    xlo: float = -math.inf
    xhi: float = math.inf

    def holds(self, x, y):
        """Boolean array: which of the positions ``x, y`` (shape (n,)) this tile owns."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        return (x >= self.xlo) & (x < self.xhi) & (y >= self.ylo) & (y < self.yhi)

    def box(self, margin, shape):
        """``(y0, y1, x0, x1)`` of the core grown by ``margin`` and clipped to ``shape``."""
        return (max(self.y0 - margin, 0), min(self.y1 + margin, shape[0]),
                max(self.x0 - margin, 0), min(self.x1 + margin, shape[1]))


def _edges(n, t):
    return np.linspace(0, n, math.ceil(n / t) + 1).round().astype(np.int64)


def _check_grid(shape, tile_shape):
    ny, nx = (int(v) for v in as_pair("shape", shape, lower_bound=0))
    ty, tx = (int(v) for v in as_pair("tile_shape", tile_shape, lower_bound=0))
    return (ny, nx), (ty, tx)


def tile_grid(shape, tile_shape):
    """Cores of a regular tiling of an image into tiles of at most ``tile_shape`` pixels.

    The cores have near-equal sizes (the remainder is spread, not left in a thin last tile)
    and are listed row by row.

    Parameters
    ----------
    shape : (ny, nx) ints
        Image shape.
    tile_shape : int or (ty, tx) ints
        Largest core size, > 0.

    Returns
    -------
    tiles : list of Tile
        ``ceil(ny / ty) * ceil(nx / tx)`` tiles.

    Examples
    --------
    >>> [(t.y0, t.y1, t.x0, t.x1) for t in tile_grid((10, 7), 5)]
    [(0, 5, 0, 4), (0, 5, 4, 7), (5, 10, 0, 4), (5, 10, 4, 7)]
    >>> tile_grid((10, 7), 5)[0].holds([3.4, 3.6, -2.0], [0.0, 0.0, -9.0]).tolist()
    [True, False, True]
    """
    (ny, nx), (ty, tx) = _check_grid(shape, tile_shape)
    ys, xs = _edges(ny, ty), _edges(nx, tx)
    yb = np.concatenate([[-np.inf], ys[1:-1] - 0.5, [np.inf]])
    xb = np.concatenate([[-np.inf], xs[1:-1] - 0.5, [np.inf]])
    return [Tile(int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1]),
                 float(yb[i]), float(yb[i + 1]), float(xb[j]), float(xb[j + 1]))
            for i in range(len(ys) - 1) for j in range(len(xs) - 1)]


def tile_index(x, y, shape, tile_shape):
    """Index in ``tile_grid(shape, tile_shape)`` of the tile owning each position.

    Parameters
    ----------
    x, y : array_like of shape (n,)
        Positions (any finite value has an owner; NaN goes to the last tile).
    shape, tile_shape
        As for :func:`tile_grid`.

    Returns
    -------
    index : ndarray of int64, shape (n,)

    Examples
    --------
    >>> tile_index([0.0, 4.0, 6.0], [0.0, 7.0, 100.0], (10, 7), 5).tolist()
    [0, 3, 3]
    """
    (ny, nx), (ty, tx) = _check_grid(shape, tile_shape)
    return _tile_index(np.asarray(x, dtype=float), np.asarray(y, dtype=float), ny, nx, ty, tx)


def _tile_index(x, y, ny, nx, ty, tx):
    ys, xs = _edges(ny, ty), _edges(nx, tx)
    iy = np.searchsorted(ys[1:-1] - 0.5, y, side="right")
    ix = np.searchsorted(xs[1:-1] - 0.5, x, side="right")
    return (iy * (len(xs) - 1) + ix).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# pixel sources
# ----------------------------------------------------------------------------------------------
class _ArrayPlanes:
    """In-memory planes (or a cut-out of them) with the ``cut`` interface of ``FitsPlanes``."""

    def __init__(self, data, mask=None, error=None, origin=(0, 0), shape=None):
        self.data, self.mask, self.error = data, mask, error
        self.origin = origin
        self.shape = data.shape if shape is None else shape

    def cut(self, y0, y1, x0, x1):
        """``(data, error, mask)`` of ``[y0:y1, x0:x1]`` in full-image pixel indices."""
        oy, ox = self.origin
        if y0 < oy or x0 < ox or y1 - oy > self.data.shape[0] or x1 - ox > self.data.shape[1]:
            raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is not inside the piece held "
                             f"(origin {self.origin}, shape {self.data.shape})")
        sl = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
        return tuple(None if a is None else np.asarray(a[sl])
                     for a in (self.data, self.error, self.mask))

    def sub(self, box):
        """A picklable piece holding only ``box`` (what one remote task needs)."""
        y0, y1, x0, x1 = box
        data, error, mask = self.cut(y0, y1, x0, x1)
        return _ArrayPlanes(np.ascontiguousarray(data), mask, error, origin=(y0, x0),
                            shape=self.shape)


def _with_unit(value, unit):
    if unit is None or value is None:
        return value
    import astropy.units as u

    return u.Quantity(value, unit, copy=False)


# ----------------------------------------------------------------------------------------------
# tasks (run on workers; everything they need travels in their arguments)
# ----------------------------------------------------------------------------------------------
def _detect_task(source, tile, box, finder, unit, sky=None):
    from crowdphot.pipeline._sky import tile_sky
    from crowdphot.psf._inputs import find_column

    _limit_threads()
    y0, y1, x0, x1 = box
    data, _, mask = source.cut(y0, y1, x0, x1)
    if sky is not None:  # the finder sees the image without its sky, as a whole-image run
        data = data - tile_sky(source, box, sky)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty tile or a NaN pixel is not news here
        found = finder(_with_unit(data, unit), mask=mask)
    if found is None or len(found) == 0:
        return np.empty((0, 3))
    xcol, ycol = find_column(found, "x"), find_column(found, "y")
    x = np.asarray(getattr(found[xcol], "value", found[xcol]), dtype=float) + x0
    y = np.asarray(getattr(found[ycol], "value", found[ycol]), dtype=float) + y0
    flux = (np.asarray(getattr(found["flux"], "value", found["flux"]), dtype=float)
            if "flux" in found.colnames else np.full(len(x), np.nan))
    keep = tile.holds(x, y)
    return np.column_stack([x[keep], y[keep], flux[keep]])


def _fit_task(source, box, init, psf_model, fit_shape, unit, kwargs, halo=None):
    from crowdphot.pipeline._sky import tile_sky
    from crowdphot.psf.photometry import run_psf_photometry

    _limit_threads()
    y0, y1, x0, x1 = box
    data, error, mask = source.cut(y0, y1, x0, x1)
    kwargs = dict(kwargs)
    # the sky in the data (photometry_tiled's sky=): handed to the fit as its sky map, so it
    # is subtracted (with likelihood='poisson' it is part of the expected counts instead)
    sky = tile_sky(source, box, kwargs.pop("tile_sky", None))
    extra = {} if sky is None else {"sky": sky}
    if halo is not None and len(halo):
        # all-star across seams: other tasks' stars that reach this box, as a sky map in the
        # data (subtracted; with likelihood='poisson' also part of the expected counts)
        from crowdphot.core.render import render_image

        stars = render_image(data.shape, _shift_model(psf_model, x0, y0),
                             halo[:, 0] - x0, halo[:, 1] - y0, halo[:, 2])
        extra["sky"] = stars if sky is None else sky + stars
    init = init.copy()
    init["x_init"] -= x0
    init["y_init"] -= y0
    if unit is not None:
        for name in ("flux_init", "local_bkg"):
            if name in init.colnames:
                init[name] = _with_unit(np.asarray(init[name], dtype=float), unit)
    model = _shift_model(psf_model, x0, y0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_psf_photometry(_with_unit(data, unit), model, fit_shape, mask=mask,
                                 error=None if kwargs.get("likelihood") == "poisson"
                                 else _with_unit(error, unit), init_params=init, **kwargs,
                                 **extra)
    messages = [(w.category, str(w.message)) for w in caught]
    if res is None:
        return None, messages
    table = res.results
    for name in ("x_init", "x_fit"):
        table[name] += x0
    for name in ("y_init", "y_fit"):
        table[name] += y0
    return table, messages


def _shift_model(psf_model, x0, y0):
    """The model as seen from a cut starting at pixel ``(y0, x0)``.

    Translation-invariant models are returned as they are. A PSF grid is copied with its ePSF
    positions moved by ``(-x0, -y0)`` and absolute bounds on the position parameters are moved
    likewise, so the cut's fit uses the same PSF and limits as the whole-image fit.
    """
    from crowdphot.psf._inputs import model_main_params

    if x0 == 0 and y0 == 0:
        return psf_model
    xname, yname, _ = model_main_params(psf_model)
    bounds = {name: getattr(psf_model, name).bounds for name in (xname, yname)}
    has_bounds = any(b is not None for pair in bounds.values() for b in pair)
    grid = getattr(psf_model, "_grid_xypos", None)
    if grid is None and not has_bounds:
        return psf_model
    model = psf_model.copy()
    if grid is not None:
        # GriddedPSFModel interpolates its ePSFs by absolute position
        model._grid_xypos = np.asarray(grid, dtype=float) - [x0, y0]
        model._xgrid = np.asarray(model._xgrid, dtype=float) - x0
        model._ygrid = np.asarray(model._ygrid, dtype=float) - y0
    for name, off in ((xname, x0), (yname, y0)):
        lo, hi = bounds[name]
        getattr(model, name).bounds = (None if lo is None else lo - off,
                                       None if hi is None else hi - off)
    return model


# ----------------------------------------------------------------------------------------------
# running tasks
# ----------------------------------------------------------------------------------------------
class _Runner:
    """Run tasks in this process or on a Dask client, results in submission order."""

    def __init__(self, client, source):
        self.client = client
        self.source = source

    def share(self, obj):
        """``obj`` itself in process; on Dask, a future of it sent once to every worker.

        A PSF grid is tens of MB: inside every task's arguments it would travel with each
        task and Dask warns of a large graph; scattered once, tasks only hold its key.
        """
        if self.client is None:
            return obj
        return self.client.scatter(obj, broadcast=True, hash=False)

    def map(self, func, boxes, arg_tuples, *, progress=False, desc=""):
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(arg_tuples), desc=desc)
        try:
            if self.client is None:
                out = []
                for args in arg_tuples:
                    out.append(func(self.source, *args))
                    if bar is not None:
                        bar.update(1)
                return out
            return self._map_dask(func, boxes, arg_tuples, bar)
        finally:
            if bar is not None:
                bar.close()

    def _map_dask(self, func, boxes, arg_tuples, bar):
        from dask.distributed import as_completed

        client = self.client
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        limit = 2 * n_workers
        results = [None] * len(arg_tuples)

        def submit(i):
            src = self.source
            if isinstance(src, _ArrayPlanes):
                # only the task's box travels, so no worker ever holds the whole image
                src = client.scatter(src.sub(boxes[i]), hash=False)
            fut = client.submit(func, src, *arg_tuples[i], pure=False)
            index[fut.key] = i
            return fut

        index = {}
        todo = iter(range(len(arg_tuples)))
        pending = as_completed([submit(i) for _, i in zip(range(limit), todo, strict=False)])
        for fut in pending:
            results[index.pop(fut.key)] = fut.result()
            fut.release()
            if bar is not None:
                bar.update(1)
            nxt = next(todo, None)
            if nxt is not None:
                pending.add(submit(nxt))
        return results


def _open_client(client, workers, scheduler):
    """``(client, owned)``: the given client, one on ``scheduler``, or a local cluster."""
    if client is not None:
        if not hasattr(client, "submit"):
            raise TypeError("client must be a dask.distributed.Client")
        return client, False
    if scheduler is None and workers is None:
        return None, False
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        if not isinstance(scheduler, str):
            raise TypeError(f"scheduler must be an address string, got {scheduler!r}")
        return Client(scheduler), True
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    new = Client(cluster)
    new.wait_for_workers(workers)
    return new, True


def _close_client(client):
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


# ----------------------------------------------------------------------------------------------
# the public function
# ----------------------------------------------------------------------------------------------
def photometry_tiled(data, psf_model, fit_shape, *, finder=None, mask=None, error=None,
                     init_params=None, grouper=None, fitter=None, fitter_maxiters=100,
                     xy_bounds=None, aperture_radius=None, local_bkg_estimator=None,
                     group_warning_threshold=25, progress_bar=False, tile_shape=2048,
                     margin=None, client=None, workers=None, scheduler=None,
                     likelihood="gaussian", read_noise=None, gain=1.0, crlb=False,
                     subtract_neighbors=False, merge_separation=None, sky=None,
                     sky_options=None):
    """PSF photometry of a large image in tiles, in this process or on a Dask cluster.

    Same result as ``PSFPhotometry(psf_model, fit_shape, finder=..., ...)(data, ...)`` on the
    whole image (same sources, positions and fluxes to rounding), but the image is processed
    in tiles with an overlap margin so that it never has to be in memory at once and the tiles
    can run in parallel. See the module docstring for the design.

    Parameters
    ----------
    data : ndarray (ny, nx), Quantity, NDData, str, os.PathLike or FitsPlanes
        The image; a FITS path (or a :class:`crowdphot.io.fits.FitsPlanes` naming the SCI,
        ERR and DQ extensions) is read memory-mapped, one tile box at a time, by each task.
    psf_model, fit_shape, finder, grouper, fitter, fitter_maxiters, xy_bounds, \
aperture_radius, local_bkg_estimator, group_warning_threshold, progress_bar
        As for :class:`crowdphot.PSFPhotometry`. The grouper runs once over the whole image.
    mask, error : ndarray (ny, nx), optional
        Only with in-memory ``data`` (a FITS file brings its own DQ and ERR).
    init_params : Table, optional
        Initial positions (and optionally fluxes and group ids) instead of running the
        finder, as for ``PSFPhotometry.__call__``.
    tile_shape : int or (ty, tx)
        Core size of each tile in pixels.
    margin : int, optional
        Pixels read around each core for detection; default: from the finder's kernel and
        minimum separation (the fit margin always follows the fit stamp, aperture and local
        background annulus).
    client : dask.distributed.Client, optional
        Run the tasks on this client.
    workers : int, optional
        Without ``client``: start a local cluster of this many single-threaded processes for
        the call.
    scheduler : str, optional
        Without ``client``: connect to the Dask scheduler at this address for the call
        (it takes precedence over ``workers``).
    likelihood, read_noise, gain, crlb
        As for :class:`crowdphot.PSFPhotometry` (maximum-likelihood fits and ``flux_crlb``).
    subtract_neighbors, merge_separation
        As for :class:`crowdphot.PSFPhotometry` (all-star fitting, merging of unresolvable
        pairs; not with a ``fitter``).
        All-star fitting runs the tile fits up to three times: each task first fits its
        groups with the stars of its own box subtracted, then again with the stars of the
        other tasks that reach its box (their latest values) subtracted from its pixels too
        (with ``likelihood='poisson'`` also part of the expected counts;
        :mod:`crowdphot.pipeline._halo`), so that neighbours across seams are modelled as
        in a whole-image run (equal to it within a small fraction of the errors, not to
        rounding: the all-star passes stop at a tolerance).

    sky : None, float or 'map', optional
        crowdphot extension: the sky contained in the image, removed before finding and
        fitting in every task (with ``likelihood='poisson'`` it is part of the expected counts
        instead, as ``PSFPhotometry.__call__``'s ``sky``). A number is a constant sky; 'map'
        estimates a sky map as :func:`crowdphot.background.sky.estimate_sky` on the whole
        image would, in each task on a region of the whole image's box grid around its box
        (:mod:`crowdphot.pipeline._sky`: equal to the whole-image map up to a small remainder
        of the region's edges). Default None: the image has no sky.
    sky_options : dict, optional
        With ``sky='map'``: keywords of :func:`~crowdphot.background.sky.estimate_sky`
        (``box_size``, ``fwhm``, ``nsigma``, ``dilate``, ``iterations``, ``filter_size``);
        the default box follows the whole image's shape.

    Without ``client``, ``workers`` or ``scheduler`` the tiles run one after another in this
    process (bounded memory, no parallelism).

    Returns
    -------
    table : QTable or None
        The merged catalog with photutils 3 columns, sorted by ``id``; detections are numbered
        by position (row of the nearest pixel, then column, as finders list their peaks), and
        group ids by first appearance in that order. None (with a warning) when nothing was
        found.

    Raises
    ------
    ValueError, TypeError
        For invalid arguments (same checks as PSFPhotometry, plus the tiling options).

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF, DAOStarFinder, make_psf_model_image
    >>> model = CircularGaussianPRF(fwhm=2.5)
    >>> data, truth = make_psf_model_image((200, 200), model, 30, flux=(800, 1000),
    ...                                    min_separation=10, seed=2, model_shape=(11, 11))
    >>> table = photometry_tiled(data, model, 5, finder=DAOStarFinder(30, 2.5), tile_shape=64,
    ...                          aperture_radius=4)
    >>> len(table)
    30
    """
    from crowdphot.psf._inputs import coerce_inputs
    from crowdphot.psf.photometry import PSFPhotometry

    # PSFPhotometry's constructor is the single source of truth for the shared checks
    config = PSFPhotometry(psf_model, fit_shape, finder=finder, grouper=grouper, fitter=fitter,
                           fitter_maxiters=fitter_maxiters, xy_bounds=xy_bounds,
                           aperture_radius=aperture_radius,
                           local_bkg_estimator=local_bkg_estimator,
                           group_warning_threshold=group_warning_threshold,
                           likelihood=likelihood, read_noise=read_noise, gain=gain, crlb=crlb,
                           subtract_neighbors=subtract_neighbors,
                           merge_separation=merge_separation)
    fit_shape = config.fit_shape
    allstar = config.subtract_neighbors or config.merge_separation is not None
    if allstar and fitter is not None:
        raise ValueError("subtract_neighbors=True and merge_separation need the batched "
                         "engine (fitter=None)")
    if init_params is None and finder is None:
        raise ValueError("finder must be given when init_params is not input")
    if workers is not None and (isinstance(workers, bool) or not isinstance(
            workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if margin is not None and (isinstance(margin, bool) or not isinstance(
            margin, (int, np.integer)) or margin < 0):
        raise ValueError(f"margin must be a non-negative integer, got {margin!r}")

    source, unit = _make_source(data, mask, error, coerce_inputs)
    shape = source.shape
    from crowdphot.pipeline._sky import check_tile_sky

    sky_spec = check_tile_sky(sky, sky_options, shape)
    (ny, nx), (ty, tx) = _check_grid(shape, tile_shape)
    tiles = tile_grid(shape, (ty, tx))
    if init_params is not None:
        init = _user_init(init_params, psf_model, unit, aperture_radius)
    else:
        _check_finder(finder)
        if aperture_radius is None:
            raise ValueError("aperture_radius must be given when init_params has no flux "
                             "column")
    det_margin = _detect_margin(finder) if margin is None else int(margin)
    fit_margin = _fit_margin(fit_shape, local_bkg_estimator, aperture_radius)

    client, owned = _open_client(client, None if workers is None else int(workers), scheduler)
    from crowdphot.pipeline._tilecache import sky_cache
    try:  # in process, each sky region is estimated once (pipeline._tilecache)
        with sky_cache(source if client is None else None):
            runner = _Runner(client, source)
            if init_params is None:
                init = _detect_all(runner, tiles, det_margin, shape, finder, unit,
                                   progress_bar, sky_spec)
                if init is None:
                    warnings.warn("no sources were found; nothing to fit", CrowdphotWarning,
                                  stacklevel=2)
                    return None
            _assign_groups(init, grouper, group_warning_threshold)
            jobs = _fit_jobs(init, (ny, nx), (ty, tx), fit_margin)
            kwargs = dict(fitter=fitter, fitter_maxiters=config.fitter_maxiters,
                          xy_bounds=config.xy_bounds, aperture_radius=aperture_radius,
                          local_bkg_estimator=local_bkg_estimator,
                          group_warning_threshold=10**9, progress_bar=False, meta=config._meta(),
                          likelihood=config.likelihood, read_noise=config.read_noise,
                          gain=config.gain, crlb=config.crlb,
                          subtract_neighbors=config.subtract_neighbors,
                          merge_separation=config.merge_separation, tile_sky=sky_spec)
            shared_psf = runner.share(psf_model)
            from crowdphot.pipeline._sky import read_box
            outs = runner.map(_fit_task, [read_box(box, shape, sky_spec) for box, _ in jobs],
                              [(box, sub, shared_psf, fit_shape, unit, kwargs)
                               for box, sub in jobs], progress=progress_bar, desc="Fit tiles")
            if config.subtract_neighbors and len(jobs) > 1:
                outs = allstar_rounds(runner, _fit_task, jobs, outs, shared_psf, psf_model,
                                      fit_shape, unit, kwargs, progress_bar, _shift_model)
    finally:
        if owned:
            _close_client(client)
    table = _merge(outs, shape, tiles, (ty, tx), fit_margin, det_margin)
    if table is not None and sky_spec is not None:
        from crowdphot.pipeline._sky import SKY_PAD_BOXES
        kind, value = sky_spec
        table.meta.update({"sky": "constant", "sky_median": value} if kind == "value" else
                          {"sky": "map", "sky_box": tuple(value["box_size"]),
                           "sky_pad_boxes": SKY_PAD_BOXES})
    return table


def _make_source(data, mask, error, coerce_inputs):
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        if mask is not None or error is not None:
            raise ValueError("mask and error cannot be given with a FITS path (the file's DQ "
                             "and ERR extensions are used)")
        from crowdphot.io.fits import FitsPlanes

        return FitsPlanes(data), None
    if hasattr(data, "cut") and hasattr(data, "shape"):
        if mask is not None or error is not None:
            raise ValueError("mask and error cannot be given with a FitsPlanes source")
        return data, None
    from crowdphot.core.validate import check_data_mask_error

    data, mask, error, unit = coerce_inputs(data, mask, error)
    # bad errors (0, NaN) only matter on fitted pixels: each tile's fit checks its stamps
    arr, mask, error = check_data_mask_error(data, mask, error, stacklevel=4, defer_error=True)
    return _ArrayPlanes(arr, mask, error), unit


def _check_finder(finder):
    if getattr(finder, "xycoords", None) is not None:
        raise ValueError("finder.xycoords is not supported by photometry_tiled; give the "
                         "positions as init_params instead")
    if np.ndim(getattr(getattr(finder, "threshold", 0), "value",
                       getattr(finder, "threshold", 0))) == 2:
        raise ValueError("a per-pixel threshold image is not supported by photometry_tiled; "
                         "give the finder a scalar threshold")


def _detect_margin(finder):
    """Pixels around a core that fix every detection inside it (kernel, peaks, stamps)."""
    kernel = getattr(finder, "kernel", None)
    if kernel is not None and hasattr(kernel, "shape"):
        k = int(max(kernel.shape))
    else:
        fwhm = float(getattr(finder, "fwhm", 3.0) or 3.0)
        k = 2 * int(np.ceil(3 * fwhm)) + 1
    sep = float(getattr(finder, "min_separation", 0.0) or 0.0)
    # convolution (k/2) + peak footprint or separation + centroid stamp (k/2) + rounding
    return int(k + max(k // 2, int(np.ceil(sep))) + 3)


def _fit_margin(fit_shape, local_bkg_estimator, aperture_radius):
    half_fit = max(fit_shape) // 2 + 1
    bkg = int(np.ceil(getattr(local_bkg_estimator, "outer_radius", 0) or 0)) + 1
    ap = int(np.ceil(aperture_radius or 0)) + 1
    return int(max(half_fit, bkg, ap) + 2)


def _detect_all(runner, tiles, margin, shape, finder, unit, progress, sky=None):
    tile_finder = finder
    n_brightest = getattr(finder, "n_brightest", None)
    if n_brightest is not None:
        # the brightest n of the image are not the brightest n of each tile
        tile_finder = copy.copy(finder)
        tile_finder.n_brightest = None
    from crowdphot.pipeline._sky import read_box

    boxes = [t.box(margin, shape) for t in tiles]
    found = runner.map(_detect_task, [read_box(b, shape, sky) for b in boxes],
                       [(t, b, tile_finder, unit, sky)
                        for t, b in zip(tiles, boxes, strict=True)],
                       progress=progress, desc="Detect tiles")
    found = np.concatenate(found) if found else np.empty((0, 3))
    if n_brightest is not None and len(found) > n_brightest:
        found = found[np.argsort(found[:, 2], kind="stable")[::-1][:n_brightest]]
    if len(found) == 0:
        return None
    x, y = found[:, 0], found[:, 1]
    # finders list peaks row by row; the nearest pixel of the centroid is that peak almost
    # always, so this reproduces the whole-image numbering
    order = np.lexsort((x, y, np.round(x), np.round(y)))
    return QTable({"id": np.arange(1, len(found) + 1), "x_init": x[order],
                   "y_init": y[order]})


def _user_init(init_params, psf_model, unit, aperture_radius):
    from crowdphot.psf._inputs import _normalise_user_table, model_main_params

    main = model_main_params(psf_model)
    extra = [p for p in psf_model.param_names if p not in main and not psf_model.fixed[p]]
    table = _normalise_user_table(init_params, extra, unit)
    if "flux_init" not in table.colnames and aperture_radius is None:
        raise ValueError("aperture_radius must be given when init_params has no flux column")
    if len(table) == 0:
        raise ValueError("init_params is empty")
    if "group_id" in table.colnames:
        from crowdphot.psf._inputs import _check_group_ids

        table["group_id"] = _check_group_ids(table["group_id"])
    return table


def _assign_groups(init, grouper, threshold):
    if "group_id" not in init.colnames:
        if grouper is not None:
            init["group_id"] = np.asarray(grouper(np.asarray(init["x_init"]),
                                                  np.asarray(init["y_init"])), dtype=np.int64)
        else:
            init["group_id"] = np.asarray(init["id"], dtype=np.int64)
    _, counts = np.unique(np.asarray(init["group_id"]), return_counts=True)
    if counts.max() > threshold:
        warnings.warn(
            f"some groups have more than {threshold} sources; crowdphot fits them jointly "
            "with a sparse solver (raise group_warning_threshold to silence)",
            CrowdphotWarning, stacklevel=3)


def _fit_jobs(init, shape, tile_shape, margin):
    """``[(box, init_rows)]``: each group goes to the tile owning its first member.

    Parameters
    ----------
    init : QTable with ``x_init``, ``y_init`` and ``group_id`` (n rows)
    shape, tile_shape : (ny, nx), (ty, tx)
    margin : int
        Pixels read around the members' positions.

    Returns
    -------
    jobs : list of ((y0, y1, x0, x1), QTable), one per tile owning at least one group
    """
    x = np.asarray(init["x_init"], dtype=float)
    y = np.asarray(init["y_init"], dtype=float)
    gid = np.asarray(init["group_id"])
    uniq, first, inverse = np.unique(gid, return_index=True, return_inverse=True)
    owner = _tile_index(x[first], y[first], *shape, *tile_shape)[inverse.ravel()]
    order = np.argsort(owner, kind="stable")
    cuts = np.flatnonzero(np.diff(owner[order])) + 1
    jobs = []
    for sel in np.split(order, cuts):
        ok = np.isfinite(x[sel]) & np.isfinite(y[sel])
        if ok.any():
            xs, ys = x[sel][ok], y[sel][ok]
            box = (int(np.clip(np.floor(ys.min()) - margin, 0, shape[0] - 1)),
                   int(np.clip(np.ceil(ys.max()) + margin + 1, 1, shape[0])),
                   int(np.clip(np.floor(xs.min()) - margin, 0, shape[1] - 1)),
                   int(np.clip(np.ceil(xs.max()) + margin + 1, 1, shape[1])))
            if box[1] <= box[0] or box[3] <= box[2]:
                box = (0, 1, 0, 1)  # every member is far outside: flagged no_overlap anyway
        else:
            box = (0, 1, 0, 1)  # only invalid positions: they are flagged, not fitted
        jobs.append((box, init[np.sort(sel)]))
    return jobs


def _merge(outs, shape, tiles, tile_shape, fit_margin, det_margin):
    from crowdphot.psf.flags import PSF_FLAGS

    tables, seen = [], set()
    for table, messages in outs:
        if table is not None:
            tables.append(table)
        for category, message in messages:
            if "may not have converged" in message:
                continue  # re-counted over the whole catalog below
            if message not in seen:
                seen.add(message)
                warnings.warn(message, category, stacklevel=3)
    if not tables:
        return None
    meta = dict(tables[0].meta)  # every tile ran the same configuration
    table = vstack(tables, metadata_conflicts="silent")
    # vstack merges metadata by concatenating sequences: fit_shape (5, 5) would become
    # (5, 5, 5, 5, ...); the tiles' common values are the catalog's
    table.meta = meta
    table.sort("id")
    # OUTSIDE_BOUNDS refers to the whole image, not to the cut a task fitted in
    flags = np.asarray(table["flags"]).copy()
    x = np.asarray(getattr(table["x_fit"], "value", table["x_fit"]), dtype=float)
    y = np.asarray(getattr(table["y_fit"], "value", table["y_fit"]), dtype=float)
    with np.errstate(invalid="ignore"):
        outside = (x < -0.5) | (y < -0.5) | (x > shape[1] - 0.5) | (y > shape[0] - 0.5)
    flags = (flags & ~np.int64(PSF_FLAGS.OUTSIDE_BOUNDS)) | np.where(
        outside, PSF_FLAGS.OUTSIDE_BOUNDS, 0)
    table["flags"] = flags
    if "n_merged" in meta:  # per-tile counts in the tables' meta: the catalog's instead
        with np.errstate(invalid="ignore"):
            gone = ((flags & PSF_FLAGS.MERGED) > 0) & ~np.isfinite(
                np.asarray(getattr(table["flux_fit"], "value", table["flux_fit"]), dtype=float))
        table.meta["n_merged"] = int(np.count_nonzero(gone))
    if "allstar_passes" in meta:
        table.meta["allstar_passes"] = max(int(t.meta.get("allstar_passes", 0)) for t in tables)
    table.meta.update({"tile_shape": tuple(int(v) for v in tile_shape),
                       "n_tiles": len(tiles), "detect_margin": det_margin,
                       "fit_margin": fit_margin})
    n_bad = int(np.count_nonzero(flags & PSF_FLAGS.NO_CONVERGENCE))
    if n_bad:
        warnings.warn(f"{n_bad} fit(s) may not have converged; check the 'flags' column "
                      "(bit 8)", CrowdphotWarning, stacklevel=3)
    return table
