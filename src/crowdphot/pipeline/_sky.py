"""The sky in tiled photometry: a constant, or a sky map estimated by each task on its box.

A whole-image run subtracts one sky map (:func:`crowdphot.background.sky.estimate_sky`:
``Background2D`` boxes with the stars masked, median filtered mesh, cubic-spline resize) before
finding and fitting. A tile task cannot see the whole image, so it estimates the same map on
a *region* around its box:

- the region starts and ends on the whole image's box grid (multiples of the box size, or the
  image's edge), so its boxes are the whole image's boxes and their statistics are the same;
- it extends :data:`SKY_PAD_BOXES` boxes beyond the task's box on every side (clipped to the
  image), because a box's value also depends on its neighbours (the source mask of the first
  pass, the fill of excluded boxes, the 3x3 median filter of the mesh, and the spline, whose
  coefficients feel a change ``k`` boxes away by about ``0.27**k``). Where the region meets
  the image's edge it treats that edge as the whole-image run does.

So the map a task subtracts equals the whole-image map up to a remainder that decays with
the pad (:func:`tile_sky`; measured in ``tests/pipeline/test_tiles.py``), and neighbouring tasks
agree on their overlap to the same remainder.

Images of at most :data:`WHOLE_SKY_PIXELS` pixels skip all that (:func:`task_spec`): the map
is estimated once on the whole image (exactly the whole-image run's map) and each task gets
its cut-out, as for a sky map given by the user (spec ``('plane', None)``: the source is a
:class:`crowdphot.pipeline._planes.SkyPlanes` carrying the map). The detection, fit and
``--min-snr`` tasks of a tile read different boxes, so for larger images each estimates its
own region; growing them to one shared region per tile was tried and dropped: a larger region
is not always closer to the whole-image map (the remainder is not monotonic in the region:
on the test scene one fit box went from 0.008 to 0.068 of a sky unit), so it would move
results without making them better.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["SKY_PAD_BOXES", "WHOLE_SKY_PIXELS", "check_tile_sky", "read_box",
           "remember_whole_sky", "sky_region", "task_spec", "tile_sky", "whole_sky",
           "whole_sky_applies"]

#: Boxes of the sky grid read beyond a task's box on every side to estimate its sky map.
SKY_PAD_BOXES = 3

#: Images of at most this many pixels (2048 x 2048, one JWST/NIRCam detector) get one sky map
#: estimated on the whole image (about 60 bytes per pixel while it is estimated, 250 MB at this
#: size: what an untiled run of the same image needs), larger ones one per task region.
WHOLE_SKY_PIXELS = 2**22

_MAP_OPTIONS = ("box_size", "fwhm", "nsigma", "dilate", "iterations", "filter_size")


def check_tile_sky(sky, sky_options, shape, unit=None):
    """The sky option of :func:`~crowdphot.pipeline.tiles.photometry_tiled`, normalised.

    Parameters
    ----------
    sky : None, float, 'map' or array_like of shape (ny, nx)
        A 2-D map (ndarray, memory-mapped array or Quantity) is checked as
        ``PSFPhotometry.__call__``'s ``sky`` (shape, finite values, unit) without copying it.
    sky_options : dict or None
        Keywords of :func:`crowdphot.background.sky.estimate_sky` (``box_size``, ``fwhm``,
        ``nsigma``, ``dilate``, ``iterations``, ``filter_size``); only with ``sky='map'``.
    shape : (ny, nx)
        The whole image's shape (the default box size follows it, as in a whole-image run).
    unit : astropy unit, optional
        The data's unit (a Quantity map is converted to it).

    Returns
    -------
    spec : None, ('value', float), ('map', dict) or ('array', ndarray)
        The dict has ``box_size`` as ``(by, bx)`` ints.

    Examples
    --------
    >>> check_tile_sky(20, None, (100, 100))
    ('value', 20.0)
    >>> check_tile_sky('map', {'box_size': 32}, (1000, 1000))[1]['box_size']
    (32, 32)
    >>> check_tile_sky(np.zeros((3, 4)), None, (3, 4))[0]
    'array'
    """
    if sky is None:
        if sky_options:
            raise ValueError("sky_options need sky='map'")
        return None
    if isinstance(sky, str):
        if sky != "map":
            raise ValueError(f"sky must be None, a number, 'map' or an image, got {sky!r}")
        opts = dict(sky_options or {})
        unknown = sorted(set(opts) - set(_MAP_OPTIONS))
        if unknown:
            raise TypeError(f"sky_options: unknown keyword(s) {unknown}; expected some of "
                            f"{list(_MAP_OPTIONS)}")
        box = opts.get("box_size")
        if box is None:
            from crowdphot.background.sky import auto_box_size

            box = auto_box_size(shape, fwhm=opts.get("fwhm"))
        by, bx = (int(v) for v in np.broadcast_to(np.asarray(box), (2,)))
        if by < 1 or bx < 1:
            raise ValueError(f"sky_options: box_size must be positive, got {box!r}")
        # Background2D caps the box at the image size
        opts["box_size"] = (min(by, int(shape[0])), min(bx, int(shape[1])))
        return "map", opts
    if hasattr(sky, "unit") or np.ndim(sky) > 0:
        if sky_options:
            raise ValueError("sky_options need sky='map'")
        arr = _check_sky_image(sky, shape, unit)
        return ("value", float(arr)) if arr.ndim == 0 else ("array", arr)
    if isinstance(sky, bool) or not isinstance(sky, numbers.Real) or not math.isfinite(sky):
        raise ValueError(f"sky must be None, a finite number, 'map' or an image, got {sky!r}")
    if sky_options:
        raise ValueError("sky_options need sky='map'")
    return "value", float(sky)


def _check_sky_image(sky, shape, unit):
    """A user's sky map: PSFPhotometry's checks and messages, in row blocks (no full copy)."""
    from crowdphot.psf.likelihood import sky_value

    sky = sky_value(sky, unit)
    arr = sky if isinstance(sky, np.ndarray) else np.asarray(sky)
    if arr.dtype.kind not in "biuf":
        raise TypeError("sky must be a number or a numeric image")
    if arr.ndim == 0:  # a Quantity scalar: a constant sky
        if not np.isfinite(arr):
            raise ValueError("sky contains NaN or inf values")
        return arr
    if arr.ndim != 2 or arr.shape != tuple(shape):
        raise ValueError(f"sky must be a scalar or an image of shape {tuple(shape)}, got "
                         f"shape {arr.shape}")
    step = max(1, 2**22 // max(1, arr.shape[1]))  # a memory-mapped map is read in blocks
    for y in range(0, arr.shape[0], step):
        if not np.all(np.isfinite(arr[y:y + step])):
            raise ValueError("sky contains NaN or inf values")
    return arr


def task_spec(spec, shape):
    """``spec`` as a tiled run's tasks use it: where its sky map is estimated.

    Only a ``'map'`` spec changes: on an image of at most :data:`WHOLE_SKY_PIXELS` pixels it
    becomes ``('whole', options)`` (one map on the whole image, cut for every task: exactly
    the whole-image run's map); larger images keep ``('map', options)`` (each task's own
    region). Decided once, by the driver (never by a task).

    Examples
    --------
    >>> task_spec(('map', {'box_size': (8, 8)}), (10**4, 10**4))[0]
    'map'
    >>> task_spec(('map', {'box_size': (8, 8)}), (100, 100))[0]
    'whole'
    >>> task_spec(('value', 2.0), (100, 100))
    ('value', 2.0)
    """
    if spec is None or spec[0] != "map" or not whole_sky_applies(shape):
        return spec
    return "whole", spec[1]


def whole_sky_applies(shape):
    """Whether an image of ``shape`` gets one sky map estimated on the whole image."""
    return int(shape[0]) * int(shape[1]) <= WHOLE_SKY_PIXELS


def whole_sky(source, options):
    """The whole image's sky map (:func:`crowdphot.background.sky.estimate_sky` on every
    pixel of ``source``), estimated once while ``source`` lives
    (:func:`crowdphot.pipeline._tilecache.whole_image_sky`); read-only (ny, nx) float64."""
    from crowdphot.pipeline._tilecache import whole_image_sky

    ny, nx = (int(v) for v in source.shape)
    return whole_image_sky(source, options, lambda: _estimate(source, (0, ny, 0, nx), options))


def remember_whole_sky(source, sky_options, sky):
    """Hand a whole-image map estimated elsewhere to the tiled run that will need it.

    ``crowdphot phot --tile`` estimates the sky of a central sample for its metadata and
    detection threshold; when that sample is the whole image (and the image small enough,
    :func:`whole_sky_applies`), it is the very map :func:`whole_sky` would estimate, so the
    tiled run reuses it instead of estimating it again.

    Parameters
    ----------
    source : object with ``shape``
        The image source the tiled run will read (the same object).
    sky_options : dict
        The ``sky_options`` the tiled run gets (normalised as :func:`check_tile_sky` does).
    sky : ndarray (ny, nx)
        ``estimate_sky`` of every pixel of ``source`` with those options.

    Returns
    -------
    used : bool
        Whether the map was kept.
    """
    from crowdphot.pipeline._tilecache import whole_image_sky

    shape = tuple(int(v) for v in source.shape)
    if not whole_sky_applies(shape) or np.shape(sky) != shape:
        return False
    options = check_tile_sky("map", sky_options, shape)[1]
    whole_image_sky(source, options, lambda: np.array(sky, dtype=float))
    return True


def _estimate(source, region, options):
    from crowdphot.background.sky import estimate_sky

    ry0, ry1, rx0, rx1 = region
    data, _, mask = source.cut(ry0, ry1, rx0, rx1)
    try:
        sky, _, _ = estimate_sky(data, mask=mask, **options)
    except ValueError:  # every pixel of the region is masked: nothing there to fit either
        sky = np.zeros(data.shape)
    return sky


def sky_region(box, shape, box_size, pad=SKY_PAD_BOXES):
    """Region on the whole image's sky-box grid around ``box``, ``pad`` boxes wider.

    Parameters
    ----------
    box : (y0, y1, x0, x1) ints
    shape : (ny, nx)
    box_size : (by, bx)
    pad : int

    Returns
    -------
    region : (Y0, Y1, X0, X1) ints
        Starts at multiples of the box size, ends at multiples of it or at the image's edge.

    Examples
    --------
    >>> sky_region((100, 130, 0, 10), (1000, 90), (32, 32), pad=1)
    (64, 192, 0, 64)
    """
    y0, y1, x0, x1 = box
    by, bx = box_size
    ny, nx = shape
    return (max(0, (y0 // by - pad) * by), min(ny, (-(-y1 // by) + pad) * by),
            max(0, (x0 // bx - pad) * bx), min(nx, (-(-x1 // bx) + pad) * bx))


def read_box(box, shape, spec, pad=SKY_PAD_BOXES):
    """The pixels a task on ``box`` reads: ``box``, or its sky region for a sky map.

    What a Dask run must send to a worker with an in-memory image.

    Examples
    --------
    >>> read_box((100, 130, 0, 10), (1000, 90), None)
    (100, 130, 0, 10)
    >>> read_box((100, 130, 0, 10), (1000, 90), ('map', {'box_size': (32, 32)}), pad=1)
    (64, 192, 0, 64)
    """
    if spec is None or spec[0] != "map":
        return tuple(box)
    region = sky_region(box, shape, spec[1]["box_size"], pad)
    return (min(region[0], box[0]), max(region[1], box[1]), min(region[2], box[2]),
            max(region[3], box[3]))


def tile_sky(source, box, spec, pad=SKY_PAD_BOXES):
    """The sky over ``box`` (as the whole-image map would have it), or None.

    Parameters
    ----------
    source : object with ``cut(y0, y1, x0, x1) -> (data, error, mask)`` and ``shape``
        With spec ``('plane', ...)``: a :class:`crowdphot.pipeline._planes.SkyPlanes`.
    box : (y0, y1, x0, x1) ints
    spec : None, the result of :func:`check_tile_sky` or of :func:`task_spec`, or
        ``('plane', None)``
    pad : int

    Returns
    -------
    sky : ndarray of float64, shape (y1 - y0, x1 - x0), or None
    """
    if spec is None:
        return None
    y0, y1, x0, x1 = box
    kind, value = spec[0], spec[1]
    if kind == "value":
        return np.full((y1 - y0, x1 - x0), value)
    if kind == "plane":
        return source.sky(y0, y1, x0, x1)
    if kind == "array":
        return np.array(value[y0:y1, x0:x1], dtype=float, order="C")
    if kind == "whole":
        return np.array(whole_sky(source, value)[y0:y1, x0:x1], dtype=float, order="C")
    from crowdphot.pipeline._tilecache import cached_region_sky

    ry0, ry1, rx0, rx1 = region = sky_region(box, source.shape, value["box_size"], pad)
    # in-process runs estimate each region once (pipeline._tilecache.sky_cache)
    sky = cached_region_sky(source, region, value,
                            lambda: _estimate(source, region, value))
    return np.array(sky[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0], dtype=float, order="C")
