"""The tasks of a tiled run (run on workers: everything they need travels in their arguments).

:func:`detect_task` finds the stars of one tile core, :func:`fit_task` fits the groups a tile
owns on their box; :func:`detect_all` runs the detection phase and numbers the detections as a
whole-image finder would.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
from astropy.table import QTable

from crowdphot.pipeline._planes import shift_model, with_unit
from crowdphot.pipeline._threads import limit_threads

__all__ = ["detect_all", "detect_task", "fit_task"]


def detect_task(source, tile, box, finder, unit, sky=None):
    """Stars of one tile core: the finder on ``box`` (core + detection margin), sky removed.

    Returns
    -------
    found : ndarray of shape (m, 3)
        x, y (whole-image pixels) and the finder's flux of the detections the tile owns.
    """
    from crowdphot.pipeline._sky import tile_sky
    from crowdphot.psf._inputs import find_column

    limit_threads()
    y0, y1, x0, x1 = box
    data, _, mask = source.cut(y0, y1, x0, x1)
    if sky is not None:  # the finder sees the image without its sky, as a whole-image run
        data = data - tile_sky(source, box, sky)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an empty tile or a NaN pixel is not news here
        found = finder(with_unit(data, unit), mask=mask)
    if found is None or len(found) == 0:
        return np.empty((0, 3))
    xcol, ycol = find_column(found, "x"), find_column(found, "y")
    x = np.asarray(getattr(found[xcol], "value", found[xcol]), dtype=float) + x0
    y = np.asarray(getattr(found[ycol], "value", found[ycol]), dtype=float) + y0
    flux = (np.asarray(getattr(found["flux"], "value", found["flux"]), dtype=float)
            if "flux" in found.colnames else np.full(len(x), np.nan))
    keep = tile.holds(x, y)
    return np.column_stack([x[keep], y[keep], flux[keep]])


def fit_task(source, box, init, psf_model, fit_shape, unit, kwargs, halo=None):
    """Fit the groups of ``init`` (whole-image positions) on the pixels of ``box``.

    ``kwargs`` are :func:`crowdphot.psf.photometry.run_psf_photometry`'s plus ``tile_sky``
    (the task's sky spec, :mod:`crowdphot.pipeline._sky`); ``halo`` (m, 3): x, y, flux of
    other tasks' stars whose light reaches the box (all-star rounds), rendered into the sky.

    Returns
    -------
    table, messages : QTable or None, list of (category, text)
        The fitted rows in whole-image pixels and the warnings the fit raised.
    """
    from crowdphot.pipeline._sky import tile_sky
    from crowdphot.psf.photometry import run_psf_photometry

    limit_threads()
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

        stars = render_image(data.shape, shift_model(psf_model, x0, y0),
                             halo[:, 0] - x0, halo[:, 1] - y0, halo[:, 2])
        extra["sky"] = stars if sky is None else sky + stars
    init = init.copy()
    init["x_init"] -= x0
    init["y_init"] -= y0
    if unit is not None:
        for name in ("flux_init", "local_bkg"):
            if name in init.colnames:
                init[name] = with_unit(np.asarray(init[name], dtype=float), unit)
    model = shift_model(psf_model, x0, y0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_psf_photometry(with_unit(data, unit), model, fit_shape, mask=mask,
                                 error=None if kwargs.get("likelihood") == "poisson"
                                 else with_unit(error, unit), init_params=init, **kwargs,
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


def detect_all(runner, tiles, margin, shape, finder, unit, progress, sky=None):
    """The detection phase: :func:`detect_task` per tile, the finder's ``n_brightest`` over
    the whole image, rows numbered as a whole-image finder lists its peaks (QTable of ``id``,
    ``x_init``, ``y_init``; None when nothing was found)."""
    tile_finder = finder
    n_brightest = getattr(finder, "n_brightest", None)
    if n_brightest is not None:
        # the brightest n of the image are not the brightest n of each tile
        tile_finder = copy.copy(finder)
        tile_finder.n_brightest = None
    from crowdphot.pipeline._sky import read_box

    boxes = [t.box(margin, shape) for t in tiles]
    found = runner.map(detect_task, [read_box(b, shape, sky) for b in boxes],
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

