"""Greedy graph colouring (compiled): batches of points that keep a minimum distance.

Used by the artificial star tests to split stars into batches whose members do not crowd each
other: point ``i`` takes the lowest colour not used by any earlier neighbour.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.jit import njit

__all__ = ["greedy_colouring"]


@njit
def _greedy_colouring_nb(n, start, nbr):  # pragma: no cover - compiled
    colour = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        k = start[i + 1] - start[i]
        taken = np.zeros(k + 1, dtype=np.bool_)
        for p in range(start[i], start[i + 1]):
            c = colour[nbr[p]]
            if 0 <= c <= k:
                taken[c] = True
        c = 0
        while taken[c]:
            c += 1
        colour[i] = c
    return colour


def greedy_colouring(n, first, second):
    """Colour ``n`` nodes so that no edge joins two nodes of one colour (greedy, input order).

    Parameters
    ----------
    n : int
        Number of nodes.
    first, second : ndarray of int, shape (m,)
        Edge end points (each edge once, any order).

    Returns
    -------
    colour : ndarray of int64, shape (n,)
        Node ``i`` gets the lowest colour not used by its neighbours ``j < i``.

    Examples
    --------
    >>> greedy_colouring(4, np.array([0, 1, 0]), np.array([1, 3, 3]))
    array([0, 1, 0, 2])
    """
    first = np.asarray(first, dtype=np.int64)
    second = np.asarray(second, dtype=np.int64)
    hi = np.maximum(first, second)
    lo = np.minimum(first, second)
    order = np.argsort(hi, kind="stable")
    start = np.searchsorted(hi[order], np.arange(n + 1)).astype(np.int64)
    return _greedy_colouring_nb(int(n), start, np.ascontiguousarray(lo[order]))
