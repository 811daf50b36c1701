"""Greedy one-pass selections: one-to-one matching of sorted candidate pairs, and thinning a
point list to a minimum separation.

Unchecked: callers build the sorted pair lists.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.jit import native

__all__ = ["greedy_match", "greedy_keep"]


def greedy_match(i, j, n_ref, n_src):
    """Accept pairs ``(i[k], j[k])`` in order when neither member is taken yet.

    Parameters
    ----------
    i, j : ndarray of int, shape (m,)
        Reference and source index of each candidate pair, best pair first.
    n_ref, n_src : int
        Number of references and sources.

    Returns
    -------
    accept : ndarray of bool, shape (m,)

    Examples
    --------
    >>> greedy_match(np.array([0, 0, 1]), np.array([1, 0, 1]), 2, 2)
    array([ True, False, False])
    """
    i = np.ascontiguousarray(i, dtype=np.int64)
    accept = np.zeros(i.size, dtype=bool)
    native.greedy_match(i, np.ascontiguousarray(j, dtype=np.int64), int(n_ref), int(n_src),
                        accept)
    return accept


def greedy_keep(n, first, second):
    """Keep point ``first[p]`` unless an earlier kept point dropped it; a kept point drops every
    ``second[p]`` paired with it.

    Parameters
    ----------
    n : int
        Number of points.
    first, second : ndarray of int, shape (m,)
        Close pairs with ``first < second``, sorted by ``first``.

    Returns
    -------
    keep : ndarray of bool, shape (n,)

    Examples
    --------
    >>> greedy_keep(3, np.array([0, 1]), np.array([1, 2]))
    array([ True, False,  True])
    """
    keep = np.ones(int(n), dtype=bool)
    native.greedy_keep(np.ascontiguousarray(first, dtype=np.int64),
                       np.ascontiguousarray(second, dtype=np.int64), keep)
    return keep
