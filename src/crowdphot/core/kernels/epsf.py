"""Batched numerics of empirical-PSF (ePSF) building (Anderson & King 2000).

Every star's normalised residual pixels are mapped at once onto the nearest node of the
oversampled ePSF grid; the per-node sigma-clipped median is computed for all nodes together
on a dense ``(n_nodes, max_per_node)`` array (each node's values sorted once, the clipping then
only moves two indices per node). Missing nodes are filled by cubic (Clough-Tocher)
interpolation with a nearest-neighbour fallback, and the ePSF is recentred with a
centre-of-mass centroid. These are the building blocks of
:class:`crowdphot.psf.epsf_builder.EPSFBuilder` and :mod:`crowdphot.psf.empirical`.
"""

from __future__ import annotations

import numpy as np
from scipy import interpolate, spatial
from scipy.ndimage import distance_transform_cdt

from crowdphot.core.jit import njit

_BAND = 6  # samples of valid data kept around missing ones by interpolate_missing

__all__ = ["centroid_com", "clipped_median_by_node", "grid_nodes", "interpolate_missing",
           "round_half_away"]


def round_half_away(x):
    """Round to the nearest integer, halves away from zero (as a float array).

    Examples
    --------
    >>> round_half_away(np.array([-1.5, -0.5, 0.5, 1.5, 2.4])).tolist()
    [-2.0, -1.0, 1.0, 2.0, 2.0]
    """
    x = np.asarray(x, dtype=float)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def grid_nodes(dx, dy, oversampling, origin, shape):
    """Nearest oversampled-grid node of offsets from the star centres.

    Parameters
    ----------
    dx, dy : ndarray of shape (m,)
        Pixel offsets from the star centre, in detector pixels.
    oversampling : (oy, ox) ints
    origin : (x, y) floats
        ePSF sample holding the star centre.
    shape : (ny, nx) ints
        ePSF shape.

    Returns
    -------
    node : ndarray of int64, shape (m,)
        Flat node index ``iy * nx + ix`` (-1 for offsets landing outside the grid).

    Examples
    --------
    >>> grid_nodes(np.array([0.0, 0.6, 9.0]), np.array([0.0, 0.0, 0.0]), (2, 2), (2.0, 2.0),
    ...            (5, 5)).tolist()
    [12, 13, -1]
    """
    ix = round_half_away(oversampling[1] * np.asarray(dx) + origin[0])
    iy = round_half_away(oversampling[0] * np.asarray(dy) + origin[1])
    ok = (ix >= 0) & (ix < shape[1]) & (iy >= 0) & (iy < shape[0])
    node = np.where(ok, iy * shape[1] + ix, -1.0)
    return node.astype(np.int64)


def _dense_by_node(node, values, n_nodes):
    """Values grouped by node into a ``(k, width)`` NaN-padded array, each row sorted."""
    order = np.argsort(node, kind="stable")
    all_counts = np.bincount(node, minlength=n_nodes)
    present = np.flatnonzero(all_counts)
    counts = all_counts[present]
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = int(counts.max())
    row = np.repeat(np.arange(len(present)), counts)
    col = np.arange(len(node)) - np.repeat(start, counts)
    dense = np.full((len(present), width), np.nan)
    dense[row, col] = values[order]
    dense.sort(axis=1)  # NaN padding sorts last
    return present, counts, dense


def clipped_median_by_node(node, values, n_nodes, *, sigma_lower=3.0, sigma_upper=3.0,
                           maxiters=10):
    """Sigma-clipped median of the values falling on each node, for all nodes at once.

    The clipping is astropy's ``SigmaClip(cenfunc='median', stdfunc='std')``: per node, values
    outside ``[median - sigma_lower * std, median + sigma_upper * std]`` are rejected and the
    statistics recomputed until nothing changes or ``maxiters`` passes (``None``: until
    convergence); the result is the median of what remains.

    Parameters
    ----------
    node : ndarray of int64, shape (m,)
        Node of each value (negative values are ignored).
    values : ndarray of shape (m,)
        Non-finite values are ignored.
    n_nodes : int
    sigma_lower, sigma_upper : float or None
        ``None`` disables clipping on that side.
    maxiters : int or None

    Returns
    -------
    median : ndarray of shape (n_nodes,)
        NaN where a node has no values.

    Examples
    --------
    >>> med = clipped_median_by_node(np.array([0, 0, 0, 0, 0, 2]),
    ...                              np.array([1.0, 1.1, 0.9, 1.0, 50.0, 3.0]), 3)
    >>> med.tolist()
    [1.0, nan, 3.0]
    """
    node = np.asarray(node, dtype=np.int64)
    values = np.asarray(values, dtype=float)
    out = np.full(n_nodes, np.nan)
    keep = (node >= 0) & np.isfinite(values)
    if not np.any(keep):
        return out
    present, counts, dense = _dense_by_node(node[keep], values[keep], n_nodes)
    lim = -1 if maxiters is None else int(maxiters)
    out[present] = _clip_rows(dense, counts.astype(np.int64),
                              np.inf if sigma_lower is None else float(sigma_lower),
                              np.inf if sigma_upper is None else float(sigma_upper), lim)
    return out


@njit
def _clip_rows(dense, counts, sl, su, maxiters):  # pragma: no cover - compiled
    """Per row of sorted values (first ``counts[i]`` valid): sigma-clipped median."""
    n, _ = dense.shape
    med_out = np.empty(n)
    for i in range(n):
        row = dense[i]
        lo = 0
        hi = counts[i]
        it = 0
        while hi > lo and (maxiters < 0 or it < maxiters):
            it += 1
            c = hi - lo
            med = 0.5 * (row[lo + (c - 1) // 2] + row[lo + c // 2])
            mean = 0.0
            for j in range(lo, hi):
                mean += row[j]
            mean /= c
            var = 0.0
            for j in range(lo, hi):
                var += (row[j] - mean) ** 2
            std = np.sqrt(var / c)
            new_lo = lo
            new_hi = hi
            if sl != np.inf:
                bound = med - sl * std
                while new_lo < hi and row[new_lo] < bound:
                    new_lo += 1
            if su != np.inf:
                bound = med + su * std
                while new_hi > new_lo and row[new_hi - 1] > bound:
                    new_hi -= 1
            if new_lo == lo and new_hi == hi:
                break
            lo = new_lo
            hi = new_hi
        c = hi - lo
        med_out[i] = np.nan if c <= 0 else 0.5 * (row[lo + (c - 1) // 2] + row[lo + c // 2])
    return med_out


def interpolate_missing(data, mask):
    """Fill masked pixels by Clough-Tocher cubic interpolation, nearest neighbour at edges.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
    mask : ndarray of bool, shape (ny, nx)
        True where ``data`` is missing.

    Returns
    -------
    filled : ndarray of shape (ny, nx)
        A copy; all NaN when every pixel is masked.

    Examples
    --------
    >>> d = np.arange(16.0).reshape(4, 4)
    >>> m = np.zeros((4, 4), bool); m[1, 2] = m[0, 0] = True
    >>> filled = interpolate_missing(d, m)
    >>> float(np.round(filled[1, 2], 6)), bool(np.isfinite(filled[0, 0]))
    (6.0, True)
    """
    out = np.array(data, dtype=float, copy=True)
    if not np.any(mask):
        return out
    if np.all(mask):
        out[:] = np.nan
        return out
    y, x = np.indices(out.shape)
    # only valid samples near a missing one shape the interpolant there: triangulating that
    # band instead of the whole grid gives the same values at a fraction of the cost
    good = ~mask & (distance_transform_cdt(~mask, metric="chessboard") <= _BAND)
    pts = np.column_stack([x[good], y[good]])
    tri = spatial.Delaunay(pts)
    interp = interpolate.CloughTocher2DInterpolator(tri, out[good])
    miss = np.column_stack([x[mask], y[mask]]).astype(float)
    # points outside the hull get NaN from the interpolator after a slow brute-force search;
    # find them from the hull's half-planes first
    hull = spatial.ConvexHull(pts)
    inside = np.all(miss @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9, axis=1)
    vals = np.full(len(miss), np.nan)
    if np.any(inside):
        vals[inside] = interp(miss[inside])
    out[mask] = vals
    left = ~np.isfinite(out)
    if np.any(left):
        ok = ~left
        nn = interpolate.NearestNDInterpolator(np.column_stack([x[ok], y[ok]]), out[ok])
        out[left] = nn(np.column_stack([x[left], y[left]]))
    return out


def centroid_com(data, mask=None):
    """Centre of mass ``(x, y)`` of a 2D array; non-finite and masked pixels count as zero.

    Parameters
    ----------
    data : array_like of shape (ny, nx)
    mask : array_like of bool, shape (ny, nx), optional

    Returns
    -------
    xy : ndarray of shape (2,)
        NaN when the total is (about) zero.

    Examples
    --------
    >>> d = np.zeros((5, 5)); d[1, 3] = 2.0; d[3, 3] = 2.0
    >>> centroid_com(d).tolist()
    [3.0, 2.0]
    """
    data = np.array(data, dtype=float, copy=True)
    bad = ~np.isfinite(data)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError("data and mask must have the same shape")
        bad |= mask
    data[bad] = 0.0
    total = data.sum()
    if abs(total) < 1e-30:
        return np.full(data.ndim, np.nan)
    idx = np.ogrid[tuple(slice(0, n) for n in data.shape)]
    return np.array([np.sum(idx[ax] * data) / total for ax in range(data.ndim)])[::-1]
