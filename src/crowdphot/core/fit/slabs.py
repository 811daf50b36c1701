"""Diagonal blocks of the inverse normal matrix of large groups, slab by slab.

A large connected group couples each source only to neighbours within a finite reach, so
cutting the group into parallel slabs (along its principal axis) at least one reach wide
makes its normal matrix *block tridiagonal*: slab ``l`` couples only to slabs ``l - 1`` and
``l + 1``. The diagonal blocks of the inverse then follow from the classic two-sweep
recursion (Schur complements forward, inverse blocks backward)::

    S_0 = D_0,            S_l = D_l - B_{l-1}^T S_{l-1}^{-1} B_{l-1}
    G_L = S_L^{-1},       G_l = S_l^{-1} + X_l G_{l+1} X_l^T,   X_l = S_l^{-1} B_l

at a cost of ``L * P**3`` (``P`` parameters per slab) instead of ``(L * P)**3`` for a dense
inverse: a 3000-star group becomes about 15 dense slabs. Groups are batched: groups with the
same padded slab size and slab count share one stack, and the loop runs over slab indices.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.fit.dense import inverse_dense

__all__ = ["slab_index", "inverse_diag_blocks_slabs"]


def slab_index(x, y, group, bs1, bs2, n_groups):
    """Slab of each source such that every coupled pair ``(bs1, bs2)`` is in the same or in
    adjacent slabs of its group.

    Sources are projected on their group's principal axis; slabs are as wide as the largest
    projected distance of a coupled pair.

    Examples
    --------
    >>> x = np.arange(6.0)
    >>> s1, s2 = np.r_[0:6, 0:5], np.r_[0:6, 1:6]  # a chain
    >>> slab_index(x, 0 * x, np.zeros(6, int), s1, s2, 1).tolist()
    [0, 0, 1, 2, 3, 4]
    """
    cnt = np.maximum(np.bincount(group, minlength=n_groups), 1)
    mx = np.bincount(group, x, minlength=n_groups) / cnt
    my = np.bincount(group, y, minlength=n_groups) / cnt
    dx, dy = x - mx[group], y - my[group]
    cxx = np.bincount(group, dx * dx, minlength=n_groups)
    cyy = np.bincount(group, dy * dy, minlength=n_groups)
    cxy = np.bincount(group, dx * dy, minlength=n_groups)
    ang = 0.5 * np.arctan2(2 * cxy, cxx - cyy)
    proj = dx * np.cos(ang)[group] + dy * np.sin(ang)[group]
    reach = np.zeros(n_groups)
    np.maximum.at(reach, group[bs1], np.abs(proj[bs1] - proj[bs2]))
    pmin = np.full(n_groups, np.inf)
    np.minimum.at(pmin, group, proj)
    # a little wider than the reach so that rounding cannot split a coupled pair by 2 slabs
    width = np.maximum(reach * (1 + 1e-9) + 1e-9, 1e-9)
    return np.floor((proj - pmin[group]) / width[group]).astype(np.int64)


def _padded(size):
    # slab stacks are padded to a multiple of 8 sources: little waste, few distinct stacks
    return int(size) if size <= 8 else 8 * int(np.ceil(size / 8))


def _spd_inverse(mats):
    """Inverse of a stack of SPD matrices (LAPACK potrf/potri: half the flops of a general
    inverse) and a per-member non-singular flag."""
    from scipy.linalg import lapack

    out = np.empty_like(mats)
    ok = np.ones(len(mats), dtype=bool)
    for i, mat in enumerate(mats):  # one LAPACK call per group slab: heavy dense work each
        chol, info = lapack.dpotrf(mat, lower=True, clean=False)
        if info == 0:
            piv = np.diag(chol) ** 2
            if piv.min() > 1e-12 * piv.max():
                inv, info = lapack.dpotri(chol, lower=True)
                if info == 0:
                    low = np.tril(inv)
                    out[i] = low + np.tril(inv, -1).T
                    continue
        inv, good = inverse_dense(mat[None])
        out[i], ok[i] = inv[0], good[0]
    return out, ok


def inverse_diag_blocks_slabs(blocks, pos1, pos2, group, slab, *, max_floats=2**25):
    """The ``K x K`` diagonal blocks of the inverse of block-tridiagonal group matrices.

    Parameters
    ----------
    blocks : ndarray of shape (nb, K, K)
        Blocks of symmetric matrices (both ``(i, j)`` and ``(j, i)`` present).
    pos1, pos2 : ndarray of int, shape (nb,)
        Row and column source (``0..N-1``) of each block.
    group : ndarray of int, shape (N,)
        Compact group label of each source (``0..G-1``); groups never couple.
    slab : ndarray of int, shape (N,)
        Slab of each source inside its group (see :func:`slab_index`).
    max_floats : int
        Bound on the floats of one padded stack of slab matrices.

    Returns
    -------
    out : ndarray of shape (N, K, K)
    ok : ndarray of bool, shape (G,)
        False for singular (or non-finite) groups, whose blocks should not be trusted.

    Examples
    --------
    >>> b = np.array([2 * np.eye(3), 4 * np.eye(3)])
    >>> out, ok = inverse_diag_blocks_slabs(b, np.array([0, 1]), np.array([0, 1]),
    ...                                     np.array([0, 0]), np.array([0, 1]))
    >>> np.round(out[:, 0, 0], 12).tolist(), ok.tolist()
    ([0.5, 0.25], [True])
    """
    n = len(group)
    n_groups = int(group.max()) + 1 if n else 0
    out = np.full((n,) + blocks.shape[1:], np.nan)
    ok = np.ones(n_groups, dtype=bool)
    if n == 0:
        return out, ok
    n_slabs = int(slab.max()) + 1
    key = group * n_slabs + slab
    order = np.argsort(key, kind="stable")
    sizes = np.bincount(key, minlength=n_groups * n_slabs).reshape(n_groups, n_slabs)
    start = np.cumsum(sizes.ravel()) - sizes.ravel()
    slot = np.empty(n, dtype=np.int64)
    slot[order] = np.arange(n) - start[key[order]]
    gsize = np.array([_padded(s) for s in sizes.max(axis=1)])
    glev = (sizes > 0).cumsum(axis=1).argmax(axis=1) + 1  # slabs used per group
    # one stack per (padded largest slab, slab count): groups share the loop over slab
    # indices; each slab index is padded to the largest slab of the stack's groups there
    stack_key = gsize * (n_slabs + 1) + glev
    for key_val in np.unique(stack_key):
        gsel_all = np.flatnonzero(stack_key == key_val)
        size, n_lev = int(gsize[gsel_all[0]]), int(glev[gsel_all[0]])
        per = max(1, max_floats // (2 * 9 * size * size * n_lev))
        for c0 in range(0, len(gsel_all), per):
            gsel = gsel_all[c0:c0 + per]
            lev_size = np.maximum(sizes[gsel, :n_lev].max(axis=0), 1)
            _run_stack(blocks, pos1, pos2, group, slab, slot, gsel, lev_size, out, ok)
    return out, ok


def _fill(mats, blocks, sel, lev_of, rank, slot1, slot2):
    """Scatter the ``blocks[sel]`` into the per-level stacks ``mats`` (views (g, P, K, Q, K))."""
    k = np.arange(blocks.shape[1])
    sel = sel[np.argsort(lev_of[sel], kind="stable")]
    bounds = np.searchsorted(lev_of[sel], np.arange(len(mats) + 1))
    for lev, mat in enumerate(mats):
        s = sel[bounds[lev]:bounds[lev + 1]]
        if len(s):
            mat[rank[s][:, None, None], slot1[s][:, None, None], k[None, :, None],
                slot2[s][:, None, None], k[None, None, :]] = blocks[s]


def _run_stack(blocks, pos1, pos2, group, slab, slot, gsel, lev_size, out, ok):
    rank = np.full(len(ok), -1, dtype=np.int64)
    rank[gsel] = np.arange(len(gsel))
    ng, n_lev = len(gsel), len(lev_size)
    sz = [int(v) for v in lev_size]
    n_k = blocks.shape[1]
    diag = [np.zeros((ng, q, n_k, q, n_k)) for q in sz]
    off = [np.zeros((ng, sz[lev], n_k, sz[lev + 1], n_k)) for lev in range(n_lev - 1)]
    for d, q in zip(diag, sz, strict=True):  # padding slots: identity, uncoupled
        d[:, np.arange(q), :, np.arange(q), :] = np.eye(n_k)
    r = rank[group[pos1]]
    use = r >= 0
    s1, s2 = slab[pos1], slab[pos2]
    args = (r, slot[pos1], slot[pos2])
    _fill(diag, blocks, np.flatnonzero(use & (s1 == s2)), s1, *args)
    _fill(off, blocks, np.flatnonzero(use & (s2 == s1 + 1)), s1, *args)
    diag = [d.reshape(ng, n_k * q, n_k * q) for d, q in zip(diag, sz, strict=True)]
    off = [o.reshape(ng, n_k * sz[lev], n_k * sz[lev + 1]) for lev, o in enumerate(off)]
    good = np.ones(ng, dtype=bool)
    for mat in diag + off:
        good &= np.isfinite(mat).all(axis=(1, 2))
    for lev in range(n_lev):
        diag[lev][~good] = np.eye(n_k * sz[lev])
        if lev < n_lev - 1:
            off[lev][~good] = 0.0
    # forward sweep: Schur complements; diag[lev] is replaced by S_l^{-1} and off[lev] by
    # X_l = S_l^{-1} B_l, the only quantities the backward sweep needs
    schur = diag[0]
    for lev in range(n_lev):
        diag[lev], g_ok = _spd_inverse(schur)
        good &= g_ok
        if lev + 1 < n_lev:
            x = np.matmul(diag[lev], off[lev])
            schur = diag[lev + 1] - np.matmul(off[lev].transpose(0, 2, 1), x)
            off[lev] = x
    src = np.flatnonzero(rank[group] >= 0)
    gr, sl, so = rank[group[src]], slab[src], slot[src]
    g_next = diag[n_lev - 1]
    res = np.empty((len(src), n_k, n_k))
    for lev in range(n_lev - 1, -1, -1):  # backward sweep: diagonal blocks of the inverse
        if lev < n_lev - 1:
            x = off[lev]
            g_next = diag[lev] + np.matmul(np.matmul(x, g_next), x.transpose(0, 2, 1))
        at = np.flatnonzero(sl == lev)
        g4 = g_next.reshape(ng, sz[lev], n_k, sz[lev], n_k)
        res[at] = g4[gr[at], so[at], :, so[at], :]
    out[src] = res
    ok[gsel] = good
