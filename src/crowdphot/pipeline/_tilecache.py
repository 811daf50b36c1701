"""In-process cache of the sky maps that tiled tasks estimate on their sky regions.

Every task of :func:`crowdphot.pipeline.tiles.photometry_tiled` with ``sky='map'`` estimates
the sky on a region of the whole image's sky-box grid around its box
(:func:`crowdphot.pipeline._sky.tile_sky`). The detection task of a tile, its fit task and the
fit task's later all-star rounds mostly read the *same* region (regions start and end on the
box grid), and each estimate (``Background2D`` twice, median filter, spline) costs more than
the fit itself. When the tasks run in this process, :func:`sky_cache` keeps the region maps
already estimated for one image, so each region is estimated once; the values are the very
arrays a fresh estimate returns (the estimate is deterministic), so results do not change.

Dask tasks never see the cache (each worker estimates its own regions, as before).

Images small enough for one whole-image estimate (:data:`crowdphot.pipeline._sky.WHOLE_SKY_PIXELS`)
get their map from :func:`whole_image_sky` instead: estimated once per source object (and, for
a file, per state of the file) and kept while that object lives, so the ``--min-snr`` pass of
``crowdphot phot --tile`` after the tiled fit reuses the fit's map.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections import OrderedDict

__all__ = ["CACHE_BYTES", "cached_region_sky", "sky_cache", "whole_image_sky"]

#: Most bytes of region maps kept (least recently used dropped first).
CACHE_BYTES = 512 * 2**20

_ACTIVE = []  # stack of _Cache (innermost last)
_WHOLE = weakref.WeakKeyDictionary()  # source -> (key, whole-image map)


class _Cache:
    def __init__(self, source, max_bytes):
        self.source = source
        self.max_bytes = int(max_bytes)
        self.maps = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key, compute):
        hit = self.maps.get(key)
        if hit is not None:
            self.maps.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        value = compute()
        value.setflags(write=False)  # shared between tasks: nobody may change it
        if value.nbytes <= self.max_bytes:
            self.maps[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self.maps.popitem(last=False)
                self.nbytes -= old.nbytes
        return value


@contextlib.contextmanager
def sky_cache(source, max_bytes=CACHE_BYTES):
    """Within the block, tasks on ``source`` in this process share their region sky maps.

    Parameters
    ----------
    source : object
        The image the tasks read (the same object is passed to every task).
    max_bytes : int
        Most bytes of maps kept.

    Yields
    ------
    cache : object with ``hits`` and ``misses`` counts

    Examples
    --------
    >>> import numpy as np
    >>> src = object()
    >>> with sky_cache(src) as cache:
    ...     a = cached_region_sky(src, (0, 4, 0, 4), {}, lambda: np.zeros((4, 4)))
    ...     b = cached_region_sky(src, (0, 4, 0, 4), {}, lambda: np.ones((4, 4)))
    >>> (a is b, cache.hits, cache.misses)
    (True, 1, 1)
    """
    cache = _Cache(source, max_bytes)
    _ACTIVE.append(cache)
    try:
        yield cache
    finally:
        _ACTIVE.remove(cache)
        cache.maps.clear()


def cached_region_sky(source, region, options, compute):
    """The sky map of ``region`` of ``source``: from the active cache, else ``compute()``.

    Parameters
    ----------
    source : object
        The image the task reads; cached only inside :func:`sky_cache` for this same object.
    region : (Y0, Y1, X0, X1) ints
    options : dict
        The sky options (part of the key).
    compute : callable
        ``compute() -> ndarray`` estimates the map.

    Returns
    -------
    sky : ndarray
        Read-only when it came through the cache.
    """
    for cache in reversed(_ACTIVE):
        if cache.source is source:
            key = (tuple(int(v) for v in region), _freeze(options))
            return cache.get(key, compute)
    return compute()


def whole_image_sky(source, options, compute):
    """The whole-image sky map of ``source``: estimated once while ``source`` lives.

    Parameters
    ----------
    source : object
        The image (a weak reference is kept; a file's path, size and modification time are
        part of the key, so a rewritten file is estimated again).
    options : dict
        The sky options (part of the key).
    compute : callable
        ``compute() -> ndarray`` estimates the map.

    Returns
    -------
    sky : ndarray, read-only

    Examples
    --------
    >>> import numpy as np
    >>> class Src:
    ...     shape = (2, 2)
    >>> src = Src()
    >>> a = whole_image_sky(src, {}, lambda: np.zeros((2, 2)))
    >>> b = whole_image_sky(src, {}, lambda: np.ones((2, 2)))
    >>> (a is b, a.flags.writeable)
    (True, False)
    """
    key = (_freeze(options), _file_state(source))
    try:
        held = _WHOLE.get(source)
    except TypeError:  # not weakly referable: no memo
        held = None
    if held is not None and held[0] == key:
        return held[1]
    value = compute()
    value.setflags(write=False)
    with contextlib.suppress(TypeError):
        _WHOLE[source] = (key, value)
    return value


def _file_state(source):
    path = getattr(source, "path", None)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns)


def _freeze(obj):
    if isinstance(obj, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return tuple(_freeze(v) for v in obj)
    if hasattr(obj, "tolist"):
        return _freeze(obj.tolist())
    return obj
