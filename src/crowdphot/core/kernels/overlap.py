"""Pixel weights of circles and annuli on the pixel grid, for many positions at once.

Everything here is unchecked and vectorised over sources. The public aperture and
local-background classes validate their inputs and then call :func:`circle_weight_stamps`.

Geometry
--------
Pixel ``(j, i)`` spans ``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``. The exact weight of a pixel
is the area of its intersection with the disc, obtained from a closed form: for a rectangle in
the first quadrant (relative to the centre) the area is the integral over ``x`` of the length of
``[y0, y1]`` that lies below the chord height ``h(x) = sqrt(r**2 - x**2)``; rectangles that
straddle an axis are split at it and mirrored into the first quadrant. The integral of ``h``
between two abscissae is written as a trapezoid plus a circular segment, which avoids the
catastrophic cancellation of the usual ``asin`` antiderivative for large radii.

Grid arithmetic
---------------
Pixel edges, the bounding box and the "well inside / near the edge" classification reproduce
photutils' floating-point arithmetic operation for operation, so that the ``'center'`` and
``'subpixel'`` methods take the same in/out decision for sample points that lie exactly on the
circle (common with integer positions and radii).
"""

from __future__ import annotations

import math

import numpy as np

from crowdphot.core.jit import native

__all__ = [
    "METHODS",
    "annulus_values",
    "circle_sums",
    "circle_weight_stamps",
    "stamp_bbox",
]

#: Pixel-overlap methods understood by :func:`circle_weight_stamps`.
METHODS = ("exact", "center", "subpixel")


def stamp_bbox(x, y, r):
    """Minimal integer bounding box of circles of radius ``r`` at ``(x, y)`` (photutils' rule).

    Parameters
    ----------
    x, y : ndarray of shape (n,)
    r : float

    Returns
    -------
    ixmin, ixmax, iymin, iymax : ndarray of int64, shape (n,)
        Upper limits are exclusive.

    Examples
    --------
    >>> stamp_bbox(np.array([10.0]), np.array([3.3]), 2.0)
    (array([8]), array([13]), array([1]), array([6]))
    """
    ixmin = np.floor((x - r) + 0.5).astype(np.int64)
    ixmax = np.ceil((x + r) + 0.5).astype(np.int64)
    iymin = np.floor((y - r) + 0.5).astype(np.int64)
    iymax = np.ceil((y + r) + 0.5).astype(np.int64)
    return ixmin, ixmax, iymin, iymax


def _nsub(method, subpixels):
    """Samples per pixel side: 'center' is one sample at the pixel centre."""
    return 1 if method != "subpixel" else int(subpixels)


def circle_weight_stamps(x, y, r, *, r_in=None, method="exact", subpixels=5):
    """Overlap weights of circles (or annuli) at many positions, on padded common stamps.

    Parameters
    ----------
    x, y : ndarray of float, shape (n,)
        Centres in pixel coordinates.
    r : float
        (Outer) radius; it also sets the bounding box.
    r_in : float, optional
        Inner radius of an annulus (``r_in < r``); its disc weights are subtracted.
    method : {'exact', 'center', 'subpixel'}
    subpixels : int
        Samples per pixel side for ``'subpixel'``.

    Returns
    -------
    weights : ndarray of shape (n, ky, kx)
        Weight of pixel ``(iymin[k] + j, ixmin[k] + i)`` for source ``k``; zero beyond each
        source's own bounding box (``ky, kx`` are the largest box sizes).
    ixmin, iymin : ndarray of int64, shape (n,)
        Lower-left pixel of each stamp.
    nx, ny : ndarray of int64, shape (n,)
        Size of each source's own bounding box.

    Examples
    --------
    >>> w, ixmin, iymin, nx, ny = circle_weight_stamps(np.array([5.0]), np.array([5.0]), 1.0,
    ...                                                method='center')
    >>> w[0].astype(int)
    array([[0, 0, 0],
           [0, 1, 0],
           [0, 0, 0]])
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ixmin, ixmax, iymin, iymax = stamp_bbox(x, y, r)
    nx = ixmax - ixmin
    ny = iymax - iymin
    if x.size == 0:
        return np.zeros((0, 1, 1)), ixmin, iymin, nx, ny
    kx = int(nx.max())
    ky = int(ny.max())
    weights = np.zeros((x.size, ky, kx))
    native.circle_stamps(np.ascontiguousarray(x), np.ascontiguousarray(y), float(r),
                         -1.0 if r_in is None else float(r_in), _METHOD_CODE[method],
                         _nsub(method, subpixels), weights)
    return weights, ixmin, iymin, nx, ny


_METHOD_CODE = {"exact": 0, "center": 1, "subpixel": 2}


def _empty_mask():
    return np.zeros((0, 0), dtype=bool)


def annulus_values(data, excluded, x, y, r_in, r_out):
    """Centre-rule annulus pixel values of each source, packed to the left of ``(n, m)`` rows.

    Excluded and non-finite pixels are skipped. Returns ``(values, counts)``: row ``k`` holds
    ``counts[k]`` values (row-major pixel order) followed by zeros.
    """
    side = 2 * int(math.ceil(r_out)) + 2
    vals = np.zeros((x.size, side * side))
    counts = np.zeros(x.size, dtype=np.int64)
    native.annulus_gather(
        np.ascontiguousarray(data, dtype=float),
        _empty_mask() if excluded is None else np.ascontiguousarray(excluded, dtype=bool),
        np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(y, dtype=float),
        float(r_in), float(r_out), vals, counts,
    )
    return vals[:, : max(int(counts.max(initial=0)), 1)], counts


def circle_sums(data, error, excluded, x, y, r, r_in, method, subpixels):
    """Weighted sums over circles/annuli at ``(x, y)`` without building stamps.

    Returns ``(sums, errs, nonfinite)``; ``errs`` is None when ``error`` is None and
    ``nonfinite`` counts the skipped non-finite data pixels.
    """
    n = x.size
    sums = np.empty(n)
    errs = np.empty(n)
    nonfinite = native.circle_sums(
        np.ascontiguousarray(data, dtype=float),
        _empty_mask() if excluded is None else np.ascontiguousarray(excluded, dtype=bool),
        np.zeros((0, 0)) if error is None else np.ascontiguousarray(error, dtype=float),
        np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(y, dtype=float),
        float(r), -1.0 if r_in is None else float(r_in), _METHOD_CODE[method],
        _nsub(method, subpixels), sums, errs,
    )
    return sums, (None if error is None else errs), int(nonfinite)
