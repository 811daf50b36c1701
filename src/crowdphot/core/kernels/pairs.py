"""Fixed-radius neighbour pairs and friends-of-friends groups of 2D points (compiled).

The points are binned in square cells at least as wide as the radius, so a point's neighbours
are in the 3 x 3 cells around its own: time O(n log n + pairs), memory O(n + pairs), whatever
the spread of the coordinates. The distance test is exact: ``sqrt(dx*dx + dy*dy) <= r``
(``metric='euclidean'``) or ``max(|dx|, |dy|) <= r`` (``metric='chebyshev'``) in float64, the
expression the numpy code it replaces evaluated, so ties at exactly ``r`` are kept.

The kernels raise ``ValueError`` for non-finite coordinates or radius; other checks are the
callers'.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.jit import native

__all__ = ["close_pairs", "fof_labels"]

_METRICS = {"euclidean": 2, "chebyshev": 0}


def _f64(a):
    return np.ascontiguousarray(a, dtype=np.float64).reshape(-1)


def close_pairs(x, y, r, *, x2=None, y2=None, metric="euclidean"):
    """Index pairs of points within distance ``r`` of each other.

    Parameters
    ----------
    x, y : ndarray of float, shape (n,)
        Finite coordinates.
    r : float
        Radius, finite and >= 0; pairs at distance exactly ``r`` are included.
    x2, y2 : ndarray of float, shape (m,), optional
        A second point set: pairs ``(i, j)`` then join point ``i`` of ``(x, y)`` with point
        ``j`` of ``(x2, y2)``. Without it, pairs within ``(x, y)`` with ``i < j``.
    metric : {'euclidean', 'chebyshev'}
        ``sqrt(dx*dx + dy*dy)`` or ``max(|dx|, |dy|)``.

    Returns
    -------
    i, j : ndarray of int64, shape (p,)
        Sorted by ``i``, then ``j``.

    Examples
    --------
    >>> i, j = close_pairs(np.array([0.0, 3.0, 9.0]), np.array([0.0, 4.0, 0.0]), 5.0)
    >>> i.tolist(), j.tolist()
    ([0], [1])
    >>> i, j = close_pairs(np.array([0.0]), np.array([0.0]), 1.0, x2=np.array([1.0, 0.5]),
    ...                    y2=np.array([1.0, 2.0]), metric="chebyshev")
    >>> i.tolist(), j.tolist()
    ([0], [0])
    """
    xa, ya = _f64(x), _f64(y)
    self_pairs = x2 is None
    xb, yb = (xa, ya) if self_pairs else (_f64(x2), _f64(y2))
    ia, ib = native.close_pairs(xa, ya, xb, yb, float(r), _METRICS[metric], int(self_pairs))
    return np.frombuffer(ia, dtype=np.int64), np.frombuffer(ib, dtype=np.int64)


def fof_labels(x, y, r):
    """Friends-of-friends groups: connected components of the pairs within ``r``.

    Two points share a group when ``sqrt(dx*dx + dy*dy) <= r``, directly or through a chain of
    such neighbours (single linkage).

    Parameters
    ----------
    x, y : ndarray of float, shape (n,)
        Finite coordinates.
    r : float
        Linking length, finite and >= 0.

    Returns
    -------
    labels : ndarray of int64, shape (n,)
        1-based group ids numbered in order of first appearance (point 0 is in group 1, the
        first point not in group 1 starts group 2, ...).

    Examples
    --------
    >>> fof_labels(np.array([0.0, 50.0, 3.0, 53.0]), np.array([0.0, 0.0, 4.0, 4.0]), 5.0)
    array([1, 2, 1, 2])
    """
    xa, ya = _f64(x), _f64(y)
    out = np.empty(xa.size, dtype=np.int64)
    native.fof_labels(xa, ya, float(r), out)
    return out
