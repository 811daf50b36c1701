"""Batched dense solves for small groups: one ``(m, K n, K n)`` stack per padded group size ``n``
(``K`` parameters per source, from the blocks' shape).

The matrices handled here are Jacobi-scaled normal matrices (unit diagonal for usable
parameters, identity rows for fixed parameters and padding slots), so a plain LAPACK solve is
well conditioned; a symmetric eigen-decomposition is the fallback for (near) singular stacks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BUCKETS", "bucket_of", "assemble_dense", "solve_dense", "inverse_dense",
           "inverse_spd"]

#: Padded group sizes of the dense buckets (a group of size k goes to the first K >= k).
BUCKETS = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512])


def bucket_of(sizes, dense_max):
    """Padded dense size per group, or 0 for groups solved with the sparse solver.

    Examples
    --------
    >>> bucket_of(np.array([1, 5, 40]), 16).tolist()
    [1, 6, 0]
    """
    sizes = np.asarray(sizes)
    idx = np.searchsorted(BUCKETS, sizes)
    out = BUCKETS[np.minimum(idx, len(BUCKETS) - 1)]
    return np.where((sizes <= dense_max) & (sizes <= BUCKETS[-1]), out, 0)


def assemble_dense(blocks, rank1, loc1, loc2, n_groups, size):
    """Scatter ``(nb, K, K)`` blocks into ``(n_groups, K * size, K * size)`` matrices.

    ``rank1`` is the position of each block's group in the stack, ``loc1, loc2`` the member
    slots of its row and column source. Empty slots get an identity block.

    Examples
    --------
    >>> m = assemble_dense(2 * np.eye(3)[None], np.array([0]), np.array([0]),
    ...                    np.array([0]), 1, 2)
    >>> np.diag(m[0]).tolist()
    [2.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    """
    n_k = blocks.shape[1]
    mat = np.zeros((n_groups, size, size, n_k, n_k))
    slots = np.arange(size)
    mat[:, slots, slots] = np.eye(n_k)
    mat[rank1, loc1, loc2] = blocks
    return mat.transpose(0, 1, 3, 2, 4).reshape(n_groups, n_k * size, n_k * size)


def _eig_solve(mat, rhs, rcond=1e-14):
    w, v = np.linalg.eigh(mat)
    wmax = np.abs(w).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        winv = np.where(w > rcond * wmax, 1.0 / w, 0.0)
    proj = np.einsum("mji,mj->mi", v, rhs)
    return np.einsum("mij,mj->mi", v, proj * winv)


def solve_dense(mat, rhs):
    """Solve ``mat @ z = rhs`` for a stack; singular members get a pseudo-inverse solution.

    Examples
    --------
    >>> solve_dense(np.eye(3)[None] * 2, np.ones((1, 3))).tolist()
    [[0.5, 0.5, 0.5]]
    """
    if not (np.all(np.isfinite(mat)) and np.all(np.isfinite(rhs))):
        out = np.full(rhs.shape, np.nan)
        good = np.isfinite(mat).all(axis=(1, 2)) & np.isfinite(rhs).all(axis=1)
        if good.any():
            out[good] = solve_dense(mat[good], rhs[good])
        return out
    try:
        return np.linalg.solve(mat, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return _eig_solve(mat, rhs)


def inverse_dense(mat, rcond=1e-12):
    """Inverse of a stack of symmetric matrices and a per-matrix non-singularity flag.

    A matrix counts as singular when its smallest eigenvalue is below ``rcond`` times the
    largest; its returned inverse is then a pseudo-inverse that should not be trusted.

    Examples
    --------
    >>> inv, ok = inverse_dense(np.array([np.eye(2) * 4, np.zeros((2, 2))]))
    >>> inv[0].tolist(), ok.tolist()
    ([[0.25, 0.0], [0.0, 0.25]], [True, False])
    """
    if mat.shape[0] == 0:
        return mat.copy(), np.zeros(0, dtype=bool)
    finite = np.isfinite(mat).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], mat, np.eye(mat.shape[1]))
    try:
        # fast path: Cholesky succeeds for every (positive definite) member of the stack;
        # squared pivots bound the eigenvalue spread from below
        chol = np.linalg.cholesky(safe)
        piv = np.diagonal(chol, axis1=1, axis2=2) ** 2
        if np.all(piv.min(axis=1) > rcond * piv.max(axis=1)):
            return np.linalg.inv(safe), finite
    except np.linalg.LinAlgError:
        pass
    w, v = np.linalg.eigh(safe)
    wmax = np.abs(w).max(axis=-1, keepdims=True)
    keep = w > rcond * wmax
    ok = keep.all(axis=-1) & finite
    with np.errstate(divide="ignore", invalid="ignore"):
        winv = np.where(keep, 1.0 / w, 0.0)
    inv = np.matmul(v * winv[:, None, :], v.transpose(0, 2, 1))
    return inv, ok


def inverse_spd(mat, rcond=1e-12):
    """Inverse of one large symmetric positive (semi-)definite matrix and a non-singular flag.

    Uses LAPACK ``potrf`` / ``potri`` (Cholesky, about ``n**3`` flops, BLAS-3), falling back to
    :func:`inverse_dense` when the factorisation fails or is too ill-conditioned.

    Examples
    --------
    >>> inv, ok = inverse_spd(np.diag([2.0, 4.0]))
    >>> np.round(inv, 12).tolist(), ok
    ([[0.5, 0.0], [0.0, 0.25]], True)
    """
    from scipy.linalg import lapack

    if np.all(np.isfinite(mat)):
        chol, info = lapack.dpotrf(mat, lower=True, clean=True)
        if info == 0:
            piv = np.diag(chol) ** 2
            if piv.min() > rcond * piv.max():
                inv, info = lapack.dpotri(chol, lower=True)
                if info == 0:
                    low = np.tril(inv)
                    return low + np.tril(inv, -1).T, True
    inv, ok = inverse_dense(mat[None], rcond)
    return inv[0], bool(ok[0])
