"""Dispatch of the per-group linear algebra to the dense buckets and the large-group solvers.

Large groups (above ``dense_max``) are solved with per-group preconditioned CG
(:func:`crowdphot.core.fit.sparse.solve_pcg`); the diagonal blocks of their inverse come from the
block-tridiagonal slab recursion (:mod:`crowdphot.core.fit.slabs`) when source positions are known.

Normal-matrix blocks are first Jacobi-scaled (unit diagonal) so that Marquardt damping is
``+ lambda`` on the diagonal and singularity tests are scale-free. Parameters that are fixed,
or that carry no information at the current point (zero diagonal, e.g. positions of a star
of zero flux), become identity rows with a zero right-hand side: their step is exactly 0.
"""

from __future__ import annotations

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

__all__ = ["Layout", "make_layout", "scale_blocks", "solve_groups", "inverse_groups"]

_K = np.arange(3)


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


def solve_groups(scaled, rhs, layout, gmask, lu_groups=None):
    """Solve the scaled systems of the groups in ``gmask``; ``rhs`` and result are (m, 3).

    Sources of other groups get a zero solution. ``lu_groups`` (G,) bool, optional: large
    groups to solve with the sparse LU instead of CG, updated in place with those where CG
    did not converge (see :func:`crowdphot.core.fit.sparse.solve_pcg`).
    """
    z = np.zeros_like(rhs)
    grp, loc = layout.group, layout.local
    for size, gsel, (rank, src, blk) in _dense_parts(layout, gmask):
        mat = assemble_dense(scaled[blk], rank[grp[layout.bs1[blk]]], loc[layout.bs1[blk]],
                             loc[layout.bs2[blk]], len(gsel), size)
        r = np.zeros((len(gsel), size, 3))
        r[rank[grp[src]], loc[src]] = rhs[src]
        sol = solve_dense(mat, r.reshape(len(gsel), -1)).reshape(len(gsel), size, 3)
        z[src] = sol[rank[grp[src]], loc[src]]
    part = _sparse_part(layout, gmask)
    if part is not None:
        src, blk, pos = part
        mat = assemble_sparse(scaled[blk], pos[layout.bs1[blk]], pos[layout.bs2[blk]], len(src),
                              fmt="csr")
        gids, gcomp = np.unique(grp[src], return_inverse=True)
        direct = None if lu_groups is None else lu_groups[gids]
        z[src] = solve_pcg(mat, rhs[src], scaled[layout.diag_block[src]], gcomp,
                           direct=direct)
        if lu_groups is not None:
            lu_groups[gids] = direct
    return z


def inverse_groups(scaled, layout, gmask, *, dense_inverse_max=2000):
    """Diagonal ``3 x 3`` blocks of each group's inverse scaled matrix.

    Returns ``(blocks (m, 3, 3), ok (G,))``; ``ok`` is False for singular groups.
    """
    m = len(layout.group)
    out = np.full((m, 3, 3), np.nan)
    ok = np.zeros(layout.n_groups, dtype=bool)
    grp, loc = layout.group, layout.local
    for size, gsel, (rank, src, blk) in _dense_parts(layout, gmask):
        mat = assemble_dense(scaled[blk], rank[grp[layout.bs1[blk]]], loc[layout.bs1[blk]],
                             loc[layout.bs2[blk]], len(gsel), size)
        inv, good = inverse_dense(mat)
        inv = inv.reshape(len(gsel), size, 3, size, 3)
        r, lo = rank[grp[src]], loc[src]
        out[src] = inv[r, lo, :, lo, :]
        ok[gsel] = good
    part = _sparse_part(layout, gmask)
    if part is None:
        return out, ok
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
        return out, ok
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
        out[src[a:a + k]] = inv.reshape(k, 3, k, 3)[kk, :, kk, :]
        ok[g] = good
    if giant.any():
        gmask2 = np.zeros(layout.n_groups, dtype=bool)
        gmask2[groups[giant]] = True
        src, blk, pos = _sparse_part(layout, gmask2)
        mat = assemble_sparse(scaled[blk], pos[layout.bs1[blk]], pos[layout.bs2[blk]], len(src))
        blocks, good = inverse_diag_blocks_sparse(mat, pos[src], loc[src])
        out[src] = blocks
        ok[groups[giant]] = good
    return out, ok
