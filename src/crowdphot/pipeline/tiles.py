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
(a constant, a map given by the user, or a map estimated on the whole image, or for large
images on a region of the whole image's sky-box grid around each task's box:
:mod:`crowdphot.pipeline._sky`);
with ``likelihood='poisson'`` the sky is part of the expected counts instead.

How it spreads over a real cluster
----------------------------------
The driver never holds pixels when ``data`` is a FITS path (or a ``FitsPlanes``): it reads the
header, submits one detection task per tile, gathers the detections (16 bytes per star), groups
them (about a second for 10^6 stars), and submits one fit task per tile with the initial table
of its groups (about 60 bytes per star); each task opens the file memory-mapped and reads only
its box, so the file must be visible at the same path on every worker (shared or replicated
storage) and no pixel crosses the network (except a sky map given as an array, or estimated
by the driver on an image of at most ``WHOLE_SKY_PIXELS``: each task receives its box of
it, 8 bytes per pixel). Catalog rows (about 150 bytes per star) come back
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

import warnings

import numpy as np

from crowdphot.core.validate import CrowdphotWarning
from crowdphot.pipeline._grid import Tile, check_grid, tile_grid, tile_index
from crowdphot.pipeline._halo import allstar_rounds
from crowdphot.pipeline._merge import merge
from crowdphot.pipeline._plan import (
    assign_groups,
    check_finder,
    detect_margin,
    fit_jobs,
    fit_margin,
    user_init,
)
from crowdphot.pipeline._planes import make_source, shift_model
from crowdphot.pipeline._runner import Runner, close_client, open_client
from crowdphot.pipeline._tasks import detect_all, fit_task

__all__ = ["Tile", "photometry_tiled", "tile_grid", "tile_index"]


def photometry_tiled(data, psf_model, fit_shape, *, finder=None, mask=None, error=None,
                     init_params=None, grouper=None, fitter=None, fitter_maxiters=100,
                     xy_bounds=None, aperture_radius=None, local_bkg_estimator=None,
                     group_warning_threshold=25, progress_bar=False, tile_shape=2048,
                     margin=None, client=None, workers=None, scheduler=None,
                     likelihood="gaussian", read_noise=None, gain=1.0, crlb=False,
                     subtract_neighbors=False, merge_separation=None, sky=None,
                     sky_options=None, bias_correction=False):
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
    bias_correction : bool
        As for :class:`crowdphot.PSFPhotometry`: each task corrects the groups it fits (a
        group is always fitted whole by one task); needs ``error`` (or a FITS ERR plane).
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

    sky : None, float, 'map' or array_like (ny, nx), optional
        crowdphot extension: the sky contained in the image, removed before finding and
        fitting in every task (with ``likelihood='poisson'`` it is part of the expected counts
        instead, as ``PSFPhotometry.__call__``'s ``sky``). A number is a constant sky; an image
        (ndarray, memory-mapped array or Quantity in the data's unit, checked as
        ``PSFPhotometry``'s ``sky``) is the sky map, each task getting its cut-out; 'map'
        estimates a sky map as :func:`crowdphot.background.sky.estimate_sky` on the whole
        image would: once on the whole image for images of at most
        :data:`crowdphot.pipeline._sky.WHOLE_SKY_PIXELS` pixels (exactly the whole-image map;
        on Dask each task gets its cut-out), else by each task on a region of the whole
        image's box grid around its box (:mod:`crowdphot.pipeline._sky`: equal to the
        whole-image map up to a small remainder of the region's edges).
        Default None: the image has no sky.
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
    from crowdphot.psf.photometry import PSFPhotometry

    # PSFPhotometry's constructor is the single source of truth for the shared checks
    config = PSFPhotometry(psf_model, fit_shape, finder=finder, grouper=grouper, fitter=fitter,
                           fitter_maxiters=fitter_maxiters, xy_bounds=xy_bounds,
                           aperture_radius=aperture_radius,
                           local_bkg_estimator=local_bkg_estimator,
                           group_warning_threshold=group_warning_threshold,
                           likelihood=likelihood, read_noise=read_noise, gain=gain, crlb=crlb,
                           subtract_neighbors=subtract_neighbors,
                           merge_separation=merge_separation, bias_correction=bias_correction)
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

    source, unit = make_source(data, mask, error)
    shape = source.shape
    if config.bias_correction:  # each task's fit checks again; fail before any work
        from crowdphot.psf._biascorr import check_bias_correction

        has_error = (getattr(source, "error", None) is not None
                     or getattr(source, "err_ext", None) is not None)
        check_bias_correction(True, likelihood=config.likelihood, error_given=has_error)
    from crowdphot.pipeline._sky import check_tile_sky

    sky_spec = check_tile_sky(sky, sky_options, shape, unit)
    (ny, nx), (ty, tx) = check_grid(shape, tile_shape)
    tiles = tile_grid(shape, (ty, tx))
    if init_params is not None:
        init = user_init(init_params, psf_model, unit, aperture_radius)
    else:
        check_finder(finder)
        if aperture_radius is None:
            raise ValueError("aperture_radius must be given when init_params has no flux "
                             "column")
    det_margin = detect_margin(finder) if margin is None else int(margin)
    fit_margin_ = fit_margin(fit_shape, local_bkg_estimator, aperture_radius)
    # what the tasks get: the sky map (given, or estimated once on a small image) travels
    # with the source; a large image's map is estimated per tile region
    source, task_sky = _task_sky(source, sky_spec)

    client, owned = open_client(client, None if workers is None else int(workers), scheduler)
    from crowdphot.pipeline._tilecache import sky_cache
    try:  # in process, each sky region is estimated once (pipeline._tilecache)
        with sky_cache(source if client is None else None):
            runner = Runner(client, source)
            if init_params is None:
                init = detect_all(runner, tiles, det_margin, shape, finder, unit,
                                   progress_bar, task_sky)
                if init is None:
                    warnings.warn("no sources were found; nothing to fit", CrowdphotWarning,
                                  stacklevel=2)
                    return None
            assign_groups(init, grouper, group_warning_threshold)
            jobs = fit_jobs(init, (ny, nx), (ty, tx), fit_margin_)
            kwargs = dict(fitter=fitter, fitter_maxiters=config.fitter_maxiters,
                          xy_bounds=config.xy_bounds, aperture_radius=aperture_radius,
                          local_bkg_estimator=local_bkg_estimator,
                          group_warning_threshold=10**9, progress_bar=False, meta=config._meta(),
                          likelihood=config.likelihood, read_noise=config.read_noise,
                          gain=config.gain, crlb=config.crlb,
                          subtract_neighbors=config.subtract_neighbors,
                          merge_separation=config.merge_separation, tile_sky=task_sky,
                          bias_correction=config.bias_correction)
            shared_psf = runner.share(psf_model)
            from crowdphot.pipeline._sky import read_box
            outs = runner.map(fit_task, [read_box(box, shape, task_sky) for box, _ in jobs],
                              [(box, sub, shared_psf, fit_shape, unit, kwargs)
                               for box, sub in jobs], progress=progress_bar, desc="Fit tiles")
            if config.subtract_neighbors and len(jobs) > 1:
                outs = allstar_rounds(runner, fit_task, jobs, outs, shared_psf, psf_model,
                                      fit_shape, unit, kwargs, progress_bar, shift_model)
    finally:
        if owned:
            close_client(client)
    table = merge(outs, shape, tiles, (ty, tx), fit_margin_, det_margin)
    if table is not None and sky_spec is not None:
        table.meta.update(_sky_meta(sky_spec, task_sky))
    return table


def _task_sky(source, spec):
    """``(source, spec)`` the tasks get for the checked ``sky`` option ``spec``."""
    from crowdphot.pipeline._planes import SkyPlanes
    from crowdphot.pipeline._sky import task_spec, whole_sky

    if spec is None or spec[0] == "value":
        return source, spec
    if spec[0] == "array":
        return SkyPlanes(source, spec[1]), ("plane", None)
    spec = task_spec(spec, source.shape)
    if spec[0] == "whole":  # one estimate, exactly the whole-image run's map
        return SkyPlanes(source, whole_sky(source, spec[1])), ("plane", None)
    return source, spec


def _sky_meta(spec, task_spec):
    from crowdphot.pipeline._sky import SKY_PAD_BOXES

    kind, value = spec[0], spec[1]
    if kind == "value":
        return {"sky": "constant", "sky_median": value}
    if kind == "array":
        return {"sky": "given map"}
    meta = {"sky": "map", "sky_box": tuple(value["box_size"])}
    if task_spec[0] == "plane":
        meta["sky_scope"] = "image"
    else:
        meta.update(sky_scope="tile", sky_pad_boxes=SKY_PAD_BOXES)
    return meta

