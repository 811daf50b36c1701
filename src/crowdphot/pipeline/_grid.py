"""The tile grid of tiled photometry: tile cores and the positions each tile owns.

Internal home of :class:`Tile`, :func:`tile_grid` and :func:`tile_index` (exported by
:mod:`crowdphot.pipeline.tiles`), shared by the tiled fit, the tiled artificial-star tests and
the tiled significance cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crowdphot.core.validate import as_pair

__all__ = ["Tile", "check_grid", "owner_index", "tile_grid", "tile_index"]


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


def check_grid(shape, tile_shape):
    """``((ny, nx), (ty, tx))``: ``shape`` and ``tile_shape`` checked (positive ints)."""
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
    (ny, nx), (ty, tx) = check_grid(shape, tile_shape)
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
    (ny, nx), (ty, tx) = check_grid(shape, tile_shape)
    return owner_index(np.asarray(x, dtype=float), np.asarray(y, dtype=float), ny, nx, ty, tx)


def owner_index(x, y, ny, nx, ty, tx):
    """:func:`tile_index` without the checks (float arrays ``x, y``; plain ints)."""
    ys, xs = _edges(ny, ty), _edges(nx, tx)
    iy = np.searchsorted(ys[1:-1] - 0.5, y, side="right")
    ix = np.searchsorted(xs[1:-1] - 0.5, x, side="right")
    return (iy * (len(xs) - 1) + ix).astype(np.int64)
