"""Dispatch of the per-group linear algebra to the dense buckets and the large-group solvers.

Large groups (above ``dense_max``) are solved with per-group preconditioned CG
(:func:`crowdphot.core.fit.sparse.solve_pcg`); the diagonal blocks of their inverse come from the
block-tridiagonal slab recursion (:mod:`crowdphot.core.fit.slabs`) when source positions are known.

Normal-matrix blocks are first Jacobi-scaled (unit diagonal) so that Marquardt damping is
``+ lambda`` on the diagonal and singularity tests are scale-free. Parameters that are fixed,
or that carry no information at the current point (zero diagonal, e.g. positions of a star
of zero flux), become identity rows with a zero right-hand side: their step is exactly 0.

Block sizes follow from the parameter set (:mod:`crowdphot.core.fit.params`): ``K x K`` blocks
for the per-source parameters, and, when the fit has ``S`` group parameters (the sky), a
bordered ("arrowhead") system per group: dense groups solve / invert the bordered matrix
directly, large groups eliminate the group parameters with a Schur complement on top of the
CG / sparse-LU / slab machinery of the per-source part.

The batched dense solves run with one BLAS thread (``threadpoolctl``): their matrices are
small, and extra BLAS threads competing for busy cores only inflate them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from crowdphot.core.fit.dense import (
    assemble_dense,
    bucket_of,
    inverse_dense,
    inverse_spd,
    solve_dense,
)
from crowdphot.core.fit.slabs import inverse_diag_blocks_slabs, slab_index
from crowdphot.core.fit.sparse import assemble_sparse, inverse_diag_blocks_sparse, solve_pcg

__all__ = ["Layout", "make_layout", "scale_blocks", "scale_group", "solve_groups",
           "inverse_groups", "one_blas_thread"]

_BLAS = []


def one_blas_thread():
    """Context manager limiting BLAS to one thread (no-op when threadpoolctl finds no BLAS).

    The controller is built once per process (it scans the loaded libraries).

    Examples
    --------
    >>> with one_blas_thread():
    ...     x = np.linalg.solve(np.eye(3)[None] * 2, np.ones((1, 3, 1)))
    >>> x[0, :, 0].tolist()
    [0.5, 0.5, 0.5]
    """
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        _BLAS.append(ctl if ctl.select(user_api="blas").lib_controllers else None)
    ctl = _BLAS[0]
    if ctl is None:
        return contextlib.nullcontext()
    return ctl.limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class Layout:
    """Group bookkeeping of ``m`` sources sorted by group (``G`` groups)."""

    group: np.ndarray  # (m,) compact group label
    local: np.ndarray  # (m,) index within the group
    bucket: np.ndarray  # (G,) padded dense size, 0 for the sparse solver
    bs1: np.ndarray  # (NB,) block row source
    bs2: np.ndarray  # (NB,) block column source
    diag_block: np.ndarray  # (m,)
    xy: np.ndarray | None = None  # (m, 2) source positions, for slabbing large groups

    @property
    def n_groups(self):
        return len(self.bucket)


def make_layout(group, inter, *, dense_max=16, xy=None):
    """Build the :class:`Layout` of sources sorted by compact group label.

    ``xy`` (m, 2), the source positions, lets the covariance of large groups use the
    block-tridiagonal slab recursion (:mod:`crowdphot.core.fit.slabs`).

    Examples
    --------
    >>> from crowdphot.core.fit.pairs import build_interactions
    >>> g = np.array([0, 1, 1])
    >>> it = build_interactions(np.array([1.0, 9.0, 11.0]), np.ones(3), np.array([0, 7, 9]),
    ...                         np.zeros(3, int), g, (3, 3))
    >>> make_layout(g, it).bucket.tolist()
    [1, 2]
    """
    m = len(group)
    n_groups = int(group[-1]) + 1 if m else 0
    sizes = np.bincount(group, minlength=n_groups)
    gstart = np.cumsum(sizes) - sizes
    return Layout(group=group, local=np.arange(m) - gstart[group],
                  bucket=bucket_of(sizes, dense_max), bs1=inter.bs1, bs2=inter.bs2,
                  diag_block=inter.diag_block, xy=xy)


def scale_blocks(blocks, layout, free, lam=None):
    """Jacobi-scale blocks; returns ``(scaled, sd, usable)``.

    ``scaled`` has ``1 + lam`` on the diagonal of usable parameters (``lam`` per source, 0
    when None) and identity rows elsewhere; the unscaled solution is ``z / sd``.
    """
    _K = np.arange(blocks.shape[1])
    d = blocks[layout.diag_block][:, _K, _K]
    usable = free & np.isfinite(d) & (d > 0)
    sd = np.sqrt(np.where(usable, d, 1.0))
    s1, s2 = layout.bs1, layout.bs2
    both = usable[s1][:, :, None] & usable[s2][:, None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.where(both, blocks / (sd[s1][:, :, None] * sd[s2][:, None, :]), 0.0)
    damp = 0.0 if lam is None else lam[:, None]
    scaled[layout.diag_block[:, None], _K, _K] = np.where(usable, 1.0 + damp, 1.0)
    return scaled, sd, usable


def scale_group(cross, gblock, layout, usable, sd, lam=None):
    """Jacobi-scale the group-parameter parts of the normal matrix.

    Parameters
    ----------
    cross : ndarray of shape (m, K, S)
        Coupling of each source's parameters to its group's parameters.
    gblock : ndarray of shape (G, S, S)
        The group parameters' own block.
    usable, sd : ndarray of shape (m, K)
        From :func:`scale_blocks`.
    lam : ndarray of shape (G,), optional
        Marquardt damping per group.

    Returns
    -------
    cross_s : (m, K, S), gdiag_s : (G, S, S) with ``1 + lam`` on its diagonal,
    gsd : (G, S) scales (solution ``zg / gsd``), gusable : (G, S) bool.
    """
    n_s = gblock.shape[1]
    s_idx = np.arange(n_s)
    d = gblock[:, s_idx, s_idx]
    gusable = np.isfinite(d) & (d > 0)
    gsd = np.sqrt(np.where(gusable, d, 1.0))
    grp = layout.group
    both = usable[:, :, None] & gusable[grp][:, None, :]
    gboth = gusable[:, :, None] & gusable[:, None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        cross_s = np.where(both, cross / (sd[:, :, None] * gsd[grp][:, None, :]), 0.0)
        gdiag = np.where(gboth, gblock / (gsd[:, :, None] * gsd[:, None, :]), 0.0)
    damp = 0.0 if lam is None else lam[:, None]
    gdiag[:, s_idx, s_idx] = np.where(gusable, 1.0 + damp, 1.0)
    return cross_s, gdiag, gsd, gusable


def _group_sum(idx, vals, n):
    """``out[g] = sum of vals[i] over idx[i] == g`` for ``vals`` of any trailing shape."""
    flat = vals.reshape(len(vals), -1)
    out = np.stack([np.bincount(idx, flat[:, j], minlength=n) for j in range(flat.shape[1])],
                   axis=1)
    return out.reshape((n,) + vals.shape[1:])


def _bordered(mat, cm, gdiag):
    """``[[mat, cm], [cm^T, gdiag]]`` for stacks: mat (g, P, P), cm (g, P, S), gdiag (g, S, S)."""
    top = np.concatenate([mat, cm], axis=2)
    bottom = np.concatenate([cm.transpose(0, 2, 1), gdiag], axis=2)
    return np.concatenate([top, bottom], axis=1)


def _selection(layout, gsel):
    rank = np.full(layout.n_groups, -1, dtype=np.int64)
    rank[gsel] = np.arange(len(gsel))
    src = np.flatnonzero(rank[layout.group] >= 0)
    blk = np.flatnonzero(rank[layout.group[layout.bs1]] >= 0)
    return rank, src, blk


def _dense_parts(layout, gmask, max_floats=2**24):
    # one stack per padded size, split so that a stack holds at most max_floats entries
    for size in np.unique(layout.bucket[gmask]):
        if size == 0:
            continue
        gsel_all = np.flatnonzero(gmask & (layout.bucket == size))
        per = max(1, max_floats // (9 * int(size) ** 2))
        for c0 in range(0, len(gsel_all), per):
            gsel = gsel_all[c0:c0 + per]
            yield int(size), gsel, _selection(layout, gsel)


def _sparse_part(layout, gmask):
    gsel = np.flatnonzero(gmask & (layout.bucket == 0))
    if len(gsel) == 0:
        return None
    rank, src, blk = _selection(layout, gsel)
    pos = np.full(len(layout.group), -1, dtype=np.int64)
    pos[src] = np.arange(len(src))
    return src, blk, pos


def solve_groups(scaled, rhs, layout, gmask, lu_groups=None, group=None):
    """Solve the scaled systems of the groups in ``gmask``; ``rhs`` and result are (m, K).

    Sources of other groups get a zero solution. ``lu_groups`` (G,) bool, optional: large
    groups to solve with the sparse LU instead of CG, updated in place with those where CG
    did not converge (see :func:`crowdphot.core.fit.sparse.solve_pcg`).

    ``group``, optional: ``(cross (m, K, S), gdiag (G, S, S), grhs (G, S))``, the scaled
    group-parameter parts (see :func:`scale_group`); the result is then ``(z, zg)`` with
    ``zg`` of shape (G, S). Dense groups solve the bordered matrix; large groups use the
    Schur complement ``gdiag - C^T A^-1 C`` of the per-source matrix ``A`` (``1 + S``
    solves with ``A``, one ``S x S`` solve per group).
    """
    z = np.zeros_like(rhs)
    n_k = rhs.shape[1]
    grp, loc = layout.group, layout.local
    if group is not None:
        cross, gdiag, grhs = group
        n_s = grhs.shape[1]
        zg = np.zeros_like(grhs)
    with one_blas_thread():
        for size, gsel, (rank, src, blk) in _dense_parts(layout, gmask):
            ng = len(gsel)
            mat = assemble_dense(scaled[blk], rank[grp[layout.bs1[blk]]], loc[layout.bs1[blk]],
                                 loc[layout.bs2[blk]], ng, size)
            r = np.zeros((ng, size, n_k))
            r[rank[grp[src]], loc[src]] = rhs[src]
            r = r.reshape(ng, -1)
            if group is not None:
                cm = np.zeros((ng, size, n_k, n_s))
                cm[rank[grp[src]], loc[src]] = cross[src]
                mat = _bordered(mat, cm.reshape(ng, size * n_k, n_s), gdiag[gsel])
                r = np.concatenate([r, grhs[gsel]], axis=1)
            sol = solve_dense(mat, r)
            z[src] = sol[:, :size * n_k].reshape(ng, size, n_k)[rank[grp[src]], loc[src]]
            if group is not None:
                zg[gsel] = sol[:, size * n_k:]
    part = _sparse_part(layout, gmask)
    if part is not None:
        src, blk, pos = part
        mat = assemble_sparse(scaled[blk], pos[layout.bs1[blk]], pos[layout.bs2[blk]], len(src),
                              fmt="csr")
        gids, gcomp = np.unique(grp[src], return_inverse=True)
        direct = None if lu_groups is None else lu_groups[gids]
        diag = scaled[layout.diag_block[src]]
        z[src] = solve_pcg(mat, rhs[src], diag, gcomp, direct=direct)
        if group is not None:
            # Schur complement on the group parameters: A zc = C, then
            # (gdiag - C^T zc) zg = grhs - C^T z0 and z = z0 - zc zg
            c = cross[src]
            zc = np.stack([solve_pcg(mat, c[:, :, j], diag, gcomp, direct=direct)
                           for j in range(n_s)], axis=2)
            schur = gdiag[gids] - _group_sum(gcomp, np.einsum("nku,nkv->nuv", c, zc), len(gids))
            rr = grhs[gids] - _group_sum(gcomp, np.einsum("nku,nk->nu", c, z[src]), len(gids))
            with one_blas_thread():
                zgs = solve_dense(schur, rr)
            z[src] = z[src] - np.einsum("nku,nu->nk", zc, zgs[gcomp])
            zg[gids] = zgs
        if lu_groups is not None:
            lu_groups[gids] = direct
    return z if group is None else (z, zg)


def inverse_groups(scaled, layout, gmask, *, dense_inverse_max=2000, group=None):
    """Diagonal ``K x K`` blocks of each group's inverse scaled matrix.

    Returns ``(blocks (m, K, K), ok (G,))``; ``ok`` is False for singular groups.

    ``group``, optional: ``(cross (m, K, S), gdiag (G, S, S))`` (see :func:`scale_group`). The
    inverse is then that of the bordered matrix and the result is ``(blocks, ok, gcov
    (G, S, S), xcov (m, K, S))``: the group parameters' block of the inverse and each
    source's coupling to them. Large groups use the Schur complement: with
    ``X = A^-1 C`` and ``W = (gdiag - C^T X)^-1``, ``blocks_i = (A^-1)_ii + X_i W X_i^T``,
    ``gcov = W`` and ``xcov_i = -X_i W``.
    """
    m = len(layout.group)
    n_k = scaled.shape[1]
    out = np.full((m, n_k, n_k), np.nan)
    ok = np.zeros(layout.n_groups, dtype=bool)
    grp, loc = layout.group, layout.local
    if group is not None:
        cross, gdiag = group
        n_s = gdiag.shape[1]
        gcov = np.full((layout.n_groups, n_s, n_s), np.nan)
        xcov = np.full((m, n_k, n_s), np.nan)
    with one_blas_thread():
        for size, gsel, (rank, src, blk) in _dense_parts(layout, gmask):
            ng = len(gsel)
            mat = assemble_dense(scaled[blk], rank[grp[layout.bs1[blk]]], loc[layout.bs1[blk]],
                                 loc[layout.bs2[blk]], ng, size)
            r, lo = rank[grp[src]], loc[src]
            if group is not None:
                cm = np.zeros((ng, size, n_k, n_s))
                cm[r, lo] = cross[src]
                mat = _bordered(mat, cm.reshape(ng, size * n_k, n_s), gdiag[gsel])
            inv, good = inverse_dense(mat)
            p = size * n_k
            out[src] = inv[:, :p, :p].reshape(ng, size, n_k, size, n_k)[r, lo, :, lo, :]
            ok[gsel] = good
            if group is not None:
                gcov[gsel] = inv[:, p:, p:]
                xcov[src] = inv[:, :p, p:].reshape(ng, size, n_k, n_s)[r, lo]
    part = _sparse_part(layout, gmask)
    if part is not None:
        _inverse_sparse(scaled, layout, part, out, ok, dense_inverse_max)
        if group is not None:
            _inverse_sparse_group(scaled, layout, part, cross, gdiag, out, ok, gcov, xcov)
    return (out, ok) if group is None else (out, ok, gcov, xcov)


def _inverse_sparse_group(scaled, layout, part, cross, gdiag, out, ok, gcov, xcov):
    """Bordered-inverse corrections of the large groups (Schur complement, in place)."""
    from crowdphot.core.fit.sparse import solve_sparse

    src, blk, pos = part
    grp = layout.group
    mat = assemble_sparse(scaled[blk], pos[layout.bs1[blk]], pos[layout.bs2[blk]], len(src))
    gids, gcomp = np.unique(grp[src], return_inverse=True)
    c = cross[src]
    n_s = c.shape[2]
    x = np.stack([solve_sparse(mat, c[:, :, j]) for j in range(n_s)], axis=2)
    schur = gdiag[gids] - _group_sum(gcomp, np.einsum("nku,nkv->nuv", c, x), len(gids))
    with one_blas_thread():
        w, good = inverse_dense(schur)
    xw = np.einsum("nku,nuv->nkv", x, w[gcomp])
    out[src] = out[src] + np.einsum("nku,nlu->nkl", xw, x)
    xcov[src] = -xw
    gcov[gids] = w
    bad = np.bincount(gcomp, ~np.isfinite(x).all(axis=(1, 2)), minlength=len(gids)) > 0
    ok[gids] &= good & ~bad


def _inverse_sparse(scaled, layout, part, out, ok, dense_inverse_max):
    """Diagonal blocks of the inverse of the large groups' per-source matrices (in place)."""
    n_k = scaled.shape[1]
    grp, loc = layout.group, layout.local
    src, blk, pos = part
    if layout.xy is not None:
        # large groups: block-tridiagonal slabs, about linear in the group size
        gsrc = grp[src]
        _, gcomp = np.unique(gsrc, return_inverse=True)
        p1, p2 = pos[layout.bs1[blk]], pos[layout.bs2[blk]]
        n_sub = int(gcomp.max()) + 1
        slab = slab_index(layout.xy[src, 0], layout.xy[src, 1], gcomp, p1, p2, n_sub)
        blocks, good = inverse_diag_blocks_slabs(scaled[blk], p1, p2, gcomp, slab)
        out[src] = blocks
        ok[np.unique(gsrc)] = good
        return
    gsrc, gblk = grp[src], grp[layout.bs1[blk]]
    groups, first = np.unique(gsrc, return_index=True)
    sizes = np.diff(np.r_[first, len(src)])
    bfirst = np.searchsorted(gblk, groups)
    blast = np.searchsorted(gblk, groups, side="right")
    # one dense inverse per large group is far faster than many sparse triangular solves;
    # only giant groups go through the sparse factorisation (loop over groups > dense_max)
    giant = sizes > dense_inverse_max
    for g, a, k, b0, b1 in zip(groups[~giant], first[~giant], sizes[~giant], bfirst[~giant],
                               blast[~giant], strict=True):
        b = blk[b0:b1]
        mat = assemble_dense(scaled[b], np.zeros(len(b), dtype=np.int64), loc[layout.bs1[b]],
                             loc[layout.bs2[b]], 1, int(k))
        inv, good = inverse_spd(mat[0])
        kk = np.arange(k)
        out[src[a:a + k]] = inv.reshape(k, n_k, k, n_k)[kk, :, kk, :]
        ok[g] = good
    if giant.any():
        gmask2 = np.zeros(layout.n_groups, dtype=bool)
        gmask2[groups[giant]] = True
        src, blk, pos = _sparse_part(layout, gmask2)
        mat = assemble_sparse(scaled[blk], pos[layout.bs1[blk]], pos[layout.bs2[blk]], len(src))
        blocks, good = inverse_diag_blocks_sparse(mat, pos[src], loc[src])
        out[src] = blocks
        ok[groups[giant]] = good
