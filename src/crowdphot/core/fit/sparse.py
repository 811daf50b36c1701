"""One sparse system for all large groups at once.

The normal matrix of every large group is a block of one block-diagonal sparse matrix. The
Levenberg-Marquardt steps solve it with a per-group preconditioned conjugate gradient (linear
in the group size; the Jacobi-scaled, damped matrices are well conditioned), falling back to a
single sparse LU factorisation for groups where CG stalls. For the covariance only the ``K x K``
diagonal blocks of the inverse are needed (``K`` parameters per source, from the blocks'
shape); because groups never couple, column ``j`` of every group's inverse can be obtained
from the *same* right-hand side (one unit entry per group), so the number of right-hand sides
is ``K * max(group size)``, not ``K * n``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["assemble_sparse", "solve_sparse", "solve_pcg", "inverse_diag_blocks_sparse"]


def assemble_sparse(blocks, pos1, pos2, n_src, *, fmt="csc"):
    """CSC (or ``fmt='csr'``) matrix of shape ``(K n_src, K n_src)`` from ``(nb, K, K)`` blocks
    at source positions.

    Examples
    --------
    >>> a = assemble_sparse(np.eye(3)[None], np.array([0]), np.array([0]), 1)
    >>> a.shape, a.nnz
    ((3, 3), 9)
    """
    n_k = blocks.shape[1]
    k = np.arange(n_k)
    rows = np.broadcast_to(n_k * pos1[:, None, None] + k[None, :, None], blocks.shape)
    cols = np.broadcast_to(n_k * pos2[:, None, None] + k[None, None, :], blocks.shape)
    make = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
    return make((blocks.ravel(), (rows.ravel(), cols.ravel())),
                shape=(n_k * n_src, n_k * n_src))


def _factor(mat):
    from scipy.sparse.linalg import splu  # large groups only: not loaded by small-group fits

    try:
        # symmetric positive definite (damped normal matrix): no pivoting, symmetric ordering
        return splu(mat, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                    options={"SymmetricMode": True})
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


def solve_pcg(mat, rhs, diag, group, *, rtol=1e-13, maxiter=40, direct=None):
    """Solve the decoupled SPD group systems of ``mat`` by block-Jacobi preconditioned CG.

    Every group runs its own conjugate-gradient recursion (step lengths from per-group dot
    products), stopping when its residual is below ``rtol`` times its right-hand side; one
    sparse product per iteration serves all groups. Groups that do not converge within
    ``maxiter`` iterations (ill-conditioned: close blends; there a sparse LU of a thinly
    connected group is cheap anyway) are re-solved with the sparse LU factorisation.

    Parameters
    ----------
    mat : sparse matrix of shape (K N, K N)
    rhs : ndarray of shape (N, K)
    diag : ndarray of shape (N, K, K)
        The diagonal blocks of ``mat`` (the preconditioner).
    group : ndarray of int, shape (N,)
        Compact group label (``0..G-1``) of each source.
    direct : ndarray of bool, shape (G,), optional
        Groups to solve with the LU right away; updated in place with the groups that fell
        back, so that an iterative caller stops trying CG on them.

    Returns
    -------
    ndarray of shape (N, K), NaN for singular or non-finite groups.

    Examples
    --------
    >>> a = assemble_sparse(2 * np.eye(3)[None], np.array([0]), np.array([0]), 1)
    >>> solve_pcg(a, np.ones((1, 3)), 2 * np.eye(3)[None], np.array([0])).tolist()
    [[0.5, 0.5, 0.5]]
    """
    n = len(group)
    n_k = rhs.shape[1]
    n_groups = int(group.max()) + 1 if n else 0
    if not (np.all(np.isfinite(mat.data)) and np.all(np.isfinite(rhs))):
        return np.full(rhs.shape, np.nan)
    try:
        pinv = np.linalg.inv(diag)
    except np.linalg.LinAlgError:
        return solve_sparse(mat, rhs)
    csr = mat.tocsr()
    flat_group = np.repeat(group, n_k)

    def gdot(a, b):
        return np.bincount(flat_group, a * b, minlength=n_groups)

    def precond(v):
        return np.matmul(pinv, v.reshape(n, n_k, 1)).ravel()

    b = rhs.ravel()
    x = np.zeros_like(b)
    r = b.copy()
    z = precond(r)
    p = z.copy()
    rz = gdot(r, z)
    goal = rtol**2 * gdot(b, b)
    lu = np.zeros(n_groups, dtype=bool) if direct is None else direct
    done = (gdot(r, r) <= goal) | lu
    for _ in range(maxiter):
        if done.all():
            break
        ap = csr @ p
        pap = gdot(p, ap)
        with np.errstate(invalid="ignore", divide="ignore"):
            alpha = np.where(done | ~(pap > 0), 0.0, rz / pap)
        done |= ~(pap > 0)  # breakdown (singular): left to the LU below
        step = alpha[flat_group]
        x += step * p
        r -= step * ap
        done |= gdot(r, r) <= goal
        z = precond(r)
        rz_new = gdot(r, z)
        with np.errstate(invalid="ignore", divide="ignore"):
            beta = np.where(done, 0.0, rz_new / np.where(rz > 0, rz, 1.0))
        p = z + beta[flat_group] * p
        rz = rz_new
    x = x.reshape(n, n_k)
    bad = ~(gdot(r, r) <= goal) | lu
    if direct is not None:
        direct |= bad
    if bad.any():
        sel = bad[group]
        rows = (n_k * np.flatnonzero(sel)[:, None] + np.arange(n_k)).ravel()
        x[sel] = solve_sparse(csr[rows][:, rows].tocsc(), rhs[sel])
    return x


def inverse_diag_blocks_sparse(mat, pos, local, *, chunk=256):
    """The ``K x K`` diagonal blocks of ``inv(mat)`` for a block-diagonal set of groups.

    Parameters
    ----------
    mat : sparse matrix of shape (K N, K N)
    pos : ndarray of int, shape (N,)
        Position of each source in ``mat`` (``0..N-1``).
    local : ndarray of int, shape (N,)
        Index of each source within its group.
    chunk : int
        Right-hand sides per triangular solve (bounds memory to ``K N * chunk`` floats).

    Returns
    -------
    blocks : ndarray of shape (N, K, K)
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
    n_k = mat.shape[0] // max(n, 1)
    out = np.full((n, n_k, n_k), np.nan)
    if n == 0:
        return out, True
    if not np.all(np.isfinite(mat.data)):
        return out, False
    lu = _factor(mat)
    if lu is None:
        return out, False
    kmax = int(local.max()) + 1
    per = max(1, chunk // n_k)
    k = np.arange(n_k)
    for j0 in range(0, kmax, per):  # loop over member slots, not over groups or sources
        j1 = min(kmax, j0 + per)
        sel = np.flatnonzero((local >= j0) & (local < j1))
        rhs = np.zeros((n_k * n, n_k * (j1 - j0)))
        rows = (n_k * pos[sel])[:, None] + k
        cols = (n_k * (local[sel] - j0))[:, None] + k
        rhs[rows, cols] = 1.0
        sol = lu.solve(rhs)
        out[sel] = sol[rows[:, :, None], cols[:, None, :]]
    return out, True
