"""One sparse system for all large groups at once.

The normal matrix of every large group is a block of one block-diagonal sparse matrix, so a
single sparse LU factorisation solves all of them. For the covariance only the ``3 x 3``
diagonal blocks of the inverse are needed; because groups never couple, column ``j`` of every
group's inverse can be obtained from the *same* right-hand side (one unit entry per group),
so the number of right-hand sides is ``3 * max(group size)``, not ``3 * n``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

__all__ = ["assemble_sparse", "solve_sparse", "inverse_diag_blocks_sparse"]


def assemble_sparse(blocks, pos1, pos2, n_src):
    """CSC matrix of shape ``(3 n_src, 3 n_src)`` from ``(nb, 3, 3)`` blocks at source positions.

    Examples
    --------
    >>> a = assemble_sparse(np.eye(3)[None], np.array([0]), np.array([0]), 1)
    >>> a.shape, a.nnz
    ((3, 3), 9)
    """
    k = np.arange(3)
    rows = np.broadcast_to(3 * pos1[:, None, None] + k[None, :, None], blocks.shape)
    cols = np.broadcast_to(3 * pos2[:, None, None] + k[None, None, :], blocks.shape)
    return sp.csc_matrix((blocks.ravel(), (rows.ravel(), cols.ravel())),
                         shape=(3 * n_src, 3 * n_src))


def _factor(mat):
    try:
        return splu(mat, permc_spec="MMD_AT_PLUS_A")
    except RuntimeError:  # exactly singular
        return None


def solve_sparse(mat, rhs):
    """Solve ``mat @ z = rhs.ravel()``; returns ``z`` shaped like ``rhs`` (NaN when singular).

    Examples
    --------
    >>> a = assemble_sparse(2 * np.eye(3)[None], np.array([0]), np.array([0]), 1)
    >>> solve_sparse(a, np.ones((1, 3))).tolist()
    [[0.5, 0.5, 0.5]]
    """
    if not (np.all(np.isfinite(mat.data)) and np.all(np.isfinite(rhs))):
        return np.full(rhs.shape, np.nan)
    lu = _factor(mat)
    if lu is None:
        return np.full(rhs.shape, np.nan)
    return lu.solve(rhs.ravel()).reshape(rhs.shape)


def inverse_diag_blocks_sparse(mat, pos, local, *, chunk=256):
    """The ``3 x 3`` diagonal blocks of ``inv(mat)`` for a block-diagonal set of groups.

    Parameters
    ----------
    mat : sparse matrix of shape (3 N, 3 N)
    pos : ndarray of int, shape (N,)
        Position of each source in ``mat`` (``0..N-1``).
    local : ndarray of int, shape (N,)
        Index of each source within its group.
    chunk : int
        Right-hand sides per triangular solve (bounds memory to ``3 N * chunk`` floats).

    Returns
    -------
    blocks : ndarray of shape (N, 3, 3)
    ok : bool
        False when the matrix is singular or not finite (blocks are then NaN).

    Examples
    --------
    >>> a = assemble_sparse(np.array([2 * np.eye(3), 4 * np.eye(3)]), np.array([0, 1]),
    ...                     np.array([0, 1]), 2)
    >>> b, ok = inverse_diag_blocks_sparse(a, np.array([0, 1]), np.array([0, 0]))
    >>> b[:, 0, 0].tolist(), ok
    ([0.5, 0.25], True)
    """
    n = len(pos)
    out = np.full((n, 3, 3), np.nan)
    if n == 0:
        return out, True
    if not np.all(np.isfinite(mat.data)):
        return out, False
    lu = _factor(mat)
    if lu is None:
        return out, False
    kmax = int(local.max()) + 1
    per = max(1, chunk // 3)
    k = np.arange(3)
    for j0 in range(0, kmax, per):  # loop over member slots, not over groups or sources
        j1 = min(kmax, j0 + per)
        sel = np.flatnonzero((local >= j0) & (local < j1))
        rhs = np.zeros((3 * n, 3 * (j1 - j0)))
        rows = (3 * pos[sel])[:, None] + k
        cols = (3 * (local[sel] - j0))[:, None] + k
        rhs[rows, cols] = 1.0
        sol = lu.solve(rhs)
        out[sel] = sol[rows[:, :, None], cols[:, None, :]]
    return out, True
