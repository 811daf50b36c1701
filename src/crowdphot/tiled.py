"""Tiled photometry of images larger than memory or one process, optionally over Dask.

Plan (crowdsource-style tile + overlap):

1. **Detect per tile.** Each tile is read with an overlap margin wider than the finder's
   footprint, the finder runs on it, and only detections inside the tile's *core* are kept, so
   every star is detected exactly once and with the same pixels as in a whole-image run.
2. **Group globally.** The detections (a few numbers per star) come back to the driver, which
   groups them with the KD-tree grouper over the whole image: groups never stop at seams.
3. **Fit per tile.** Each group is owned by the tile whose core holds its first member; a tile's
   task reads the bounding box of its groups plus a margin (fit stamp, PSF support, local
   background annulus) and fits them with :func:`run_psf_photometry`.

Workers read their own pixels (from a memory-mapped FITS file when ``data`` is a path), so only
the small tables cross the network. The merged catalog equals the untiled one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.table import QTable, vstack

__all__ = ["photometry_tiled", "tile_grid"]


@dataclass(frozen=True)
class Tile:
    """A core region ``[y0:y1, x0:x1]`` of the image (pixel indices, end exclusive)."""

    y0: int
    y1: int
    x0: int
    x1: int

    def holds(self, x, y):
        """Whether positions fall in this core (pixel ``j`` spans ``[j-0.5, j+0.5)``)."""
        return ((x >= self.x0 - 0.5) & (x < self.x1 - 0.5)
                & (y >= self.y0 - 0.5) & (y < self.y1 - 0.5))


def tile_grid(shape, tile_shape):
    """Cores of a regular tiling of ``shape`` into tiles of at most ``tile_shape``.

    Examples
    --------
    >>> [(t.y0, t.y1, t.x0, t.x1) for t in tile_grid((10, 7), 5)]
    [(0, 5, 0, 4), (0, 5, 4, 7), (5, 10, 0, 4), (5, 10, 4, 7)]
    """
    ny, nx = shape
    ty, tx = (tile_shape, tile_shape) if np.isscalar(tile_shape) else tile_shape
    if ty <= 0 or tx <= 0:
        raise ValueError(f"tile_shape must be positive, got {tile_shape!r}")
    nty, ntx = math.ceil(ny / ty), math.ceil(nx / tx)
    ys = np.linspace(0, ny, nty + 1).round().astype(int)
    xs = np.linspace(0, nx, ntx + 1).round().astype(int)
    return [Tile(int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1]))
            for i in range(nty) for j in range(ntx)]


class _ArrayPlanes:
    """In-memory image planes with the same ``cut`` interface as ``fitsio.FitsPlanes``."""

    def __init__(self, data, mask=None, error=None):
        self.data, self.mask, self.error = data, mask, error
        self.shape = data.shape

    def cut(self, y0, y1, x0, x1):
        def c(a):
            return None if a is None else np.asarray(a[y0:y1, x0:x1])

        return c(self.data), c(self.error), c(self.mask)


def _detect_task(source, tile, margin, finder):
    import warnings

    ny, nx = source.shape
    y0, y1 = max(tile.y0 - margin, 0), min(tile.y1 + margin, ny)
    x0, x1 = max(tile.x0 - margin, 0), min(tile.x1 + margin, nx)
    data, _, mask = source.cut(y0, y1, x0, x1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty tile is not a problem for the mosaic
        found = finder(data, mask=mask)
    if found is None or len(found) == 0:
        return None
    from ._photinit import find_column

    xcol, ycol = find_column(found, "x"), find_column(found, "y")
    x = np.asarray(found[xcol], dtype=float) + x0
    y = np.asarray(found[ycol], dtype=float) + y0
    keep = tile.holds(x, y)
    return np.column_stack([x[keep], y[keep]])


def _fit_task(source, box, init, psf_model, fit_shape, kwargs):
    from .photometry import run_psf_photometry

    y0, y1, x0, x1 = box
    data, error, mask = source.cut(y0, y1, x0, x1)
    init = init.copy()
    init["x_init"] -= x0
    init["y_init"] -= y0
    res = run_psf_photometry(data, psf_model, fit_shape, mask=mask, error=error,
                             init_params=init, **kwargs)
    table = res.results
    for name in ("x_init", "x_fit"):
        table[name] += x0
    for name in ("y_init", "y_fit"):
        table[name] += y0
    return table


def photometry_tiled(data, psf_model, fit_shape, *, finder, mask=None, error=None,
                     grouper=None, tile_shape=2048, margin=None, client=None, workers=None,
                     scheduler=None, aperture_radius=None, local_bkg_estimator=None,
                     fitter_maxiters=100, xy_bounds=None, progress_bar=False,
                     group_warning_threshold=10**9):
    """PSF photometry of a large image in tiles, locally or on a Dask cluster.

    Parameters
    ----------
    data : ndarray (ny, nx) or str
        The image, or the path of a FITS file (read memory-mapped by each task).
    psf_model, fit_shape, finder, grouper, aperture_radius, local_bkg_estimator
        As for :class:`crowdphot.PSFPhotometry`.
    mask, error : ndarray (ny, nx), optional
        Only with an array ``data`` (a FITS path brings its own ERR/DQ).
    tile_shape : int or (ty, tx)
        Core size of each tile.
    margin : int, optional
        Overlap read around each core; default: wide enough for the finder, the fit stamp,
        the PSF model and the local-background annulus.
    client : dask.distributed.Client, optional
        Run tasks on this client. ``workers=N`` starts a local cluster; ``scheduler=ADDRESS``
        connects to an existing one. Without any of them tasks run in this process.

    Returns
    -------
    table : QTable
        The merged catalog, photutils 3 columns, ids 1..n ordered by position of detection.

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
    if isinstance(fit_shape, (int, np.integer)):
        fit_shape = (int(fit_shape), int(fit_shape))
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        if mask is not None or error is not None:
            raise ValueError("mask/error cannot be given with a FITS path (it has ERR/DQ)")
        from .fitsio import FitsPlanes

        source = FitsPlanes(data)
    else:
        from ._validate import check_error, check_image, check_mask

        arr, bad = check_image("data", data)
        mask = check_mask("mask", mask, arr.shape)
        error = check_error("error", error, arr.shape)
        if bad is not None:
            mask = bad if mask is None else (mask | bad)
        source = _ArrayPlanes(arr, mask, error)
    shape = source.shape
    if margin is None:
        margin = _default_margin(psf_model, fit_shape, finder, local_bkg_estimator,
                                 aperture_radius)
    tiles = tile_grid(shape, tile_shape)
    own_client = None
    if client is None and (workers or scheduler):
        from dask.distributed import Client, LocalCluster

        if scheduler:
            client = own_client = Client(scheduler)
        else:
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1,
                                   processes=True, dashboard_address=None)
            client = own_client = Client(cluster)
    try:
        mapper = _Mapper(client, source)
        found = [f for f in mapper.map(_detect_task, [(t, margin, finder) for t in tiles])
                 if f is not None]
        if not found:
            return None
        xy = np.concatenate(found)
        order = np.lexsort((xy[:, 0], xy[:, 1]))
        xy = xy[order]
        init = QTable({"id": np.arange(1, len(xy) + 1), "x_init": xy[:, 0],
                       "y_init": xy[:, 1]})
        gid = (grouper(xy[:, 0], xy[:, 1]) if grouper is not None
               else np.arange(1, len(xy) + 1))
        init["group_id"] = np.asarray(gid, dtype=np.int64)
        kwargs = dict(aperture_radius=aperture_radius, local_bkg_estimator=local_bkg_estimator,
                      fitter_maxiters=fitter_maxiters, xy_bounds=xy_bounds,
                      group_warning_threshold=group_warning_threshold, progress_bar=False)
        jobs = _fit_jobs(init, tiles, margin, shape)
        tables = mapper.map(_fit_task, [(box, sub, psf_model, fit_shape, kwargs)
                                        for box, sub in jobs], progress=progress_bar)
    finally:
        if own_client is not None:
            cluster = getattr(own_client, "cluster", None)
            own_client.close()
            if cluster is not None:
                cluster.close()
    table = vstack(tables, metadata_conflicts="silent")
    table.sort("id")
    return table


def _fit_jobs(init, tiles, margin, shape):
    """Assign each group to the tile holding its first member; one job per non-empty tile."""
    x = np.asarray(init["x_init"])
    y = np.asarray(init["y_init"])
    gid = np.asarray(init["group_id"])
    uniq, first = np.unique(gid, return_index=True)
    anchor_tile = np.full(len(uniq), -1)
    for k, t in enumerate(tiles):
        anchor_tile[t.holds(x[first], y[first])] = k
    tile_of_source = anchor_tile[np.searchsorted(uniq, gid)]
    jobs = []
    for k in range(len(tiles)):
        sel = np.flatnonzero(tile_of_source == k)
        if sel.size == 0:
            continue
        y0 = max(int(np.floor(y[sel].min())) - margin, 0)
        y1 = min(int(np.ceil(y[sel].max())) + margin + 1, shape[0])
        x0 = max(int(np.floor(x[sel].min())) - margin, 0)
        x1 = min(int(np.ceil(x[sel].max())) + margin + 1, shape[1])
        jobs.append(((y0, y1, x0, x1), init[sel]))
    return jobs


def _default_margin(psf_model, fit_shape, finder, local_bkg_estimator, aperture_radius):
    try:
        psf_half = max(psf_model.default_stamp_shape) // 2 + 1
    except (AttributeError, ValueError):
        psf_half = 25
    half_fit = max(fit_shape) // 2 + 1
    fwhm = float(getattr(finder, "fwhm", 3.0) or 3.0)
    finder_half = int(np.ceil(3 * fwhm)) + 3
    bkg = int(np.ceil(getattr(local_bkg_estimator, "outer_radius", 0) or 0)) + 1
    ap = int(np.ceil(aperture_radius or 0)) + 1
    return int(max(half_fit + psf_half, finder_half, bkg, ap) + 2)


class _Mapper:
    """Run task functions over tiles in-process or on a Dask client."""

    def __init__(self, client, source):
        self.client = client
        self.source = source
        if client is not None and isinstance(source, _ArrayPlanes):
            # in-memory pixels go to each worker once; a FITS source ships only its path
            self.source = client.scatter(source, broadcast=True)

    def map(self, func, arg_tuples, progress=False):
        if self.client is None:
            it = arg_tuples
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(arg_tuples, desc="Tiles")
            return [func(self.source, *args) for args in it]
        futures = [self.client.submit(func, self.source, *args, pure=False)
                   for args in arg_tuples]
        return self.client.gather(futures)
