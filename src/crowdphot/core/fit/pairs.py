"""Interaction structure of a grouped fit: which PSFs reach which stamps, and which
parameter blocks of the normal matrix are non-zero.

Sources are indexed ``0..m-1`` and must be sorted by group (each group contiguous). A *pair*
``(s, t)`` says that source ``s``'s PSF is evaluated on stamp ``t`` (same group, PSF support
reaching the stamp); pairs are sorted by ``t`` then ``s`` so that per-stamp sums are
``np.add.reduceat`` calls. A *triple* is two pairs sharing a stamp; its ``3 x 3`` outer product
adds to the normal-matrix block ``(s1, s2)``. Triples are in stamp-major order (stamp, first
pair, second pair), the order of a per-stamp Gram matrix, and carry their block index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdphot.core.kernels.pairs import close_pairs

__all__ = ["Interactions", "build_interactions", "segment_products", "segment_starts"]


@dataclass(frozen=True)
class Interactions:
    """Static index arrays of a grouped fit (see module docstring); all int64."""

    ps: np.ndarray  # (P,) source of each pair
    pt: np.ndarray  # (P,) stamp of each pair, sorted
    q1: np.ndarray  # (T,) first pair of each triple
    q2: np.ndarray  # (T,) second pair
    tb: np.ndarray  # (T,) block of each triple
    bs1: np.ndarray  # (NB,) row source of each block
    bs2: np.ndarray  # (NB,) column source of each block
    diag_block: np.ndarray  # (m,) block index of (s, s)


def segment_starts(keys):
    """Start index of each run of equal values in a sorted 1D array.

    Examples
    --------
    >>> segment_starts(np.array([0, 0, 2, 2, 2, 5]))
    array([0, 2, 5])
    """
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def segment_products(starts, counts):
    """All ordered index pairs ``(i, j)`` inside each segment ``[start, start + count)``.

    Returns ``i, j`` (int64), ordered by segment, then ``i``, then ``j``.

    Examples
    --------
    >>> segment_products(np.array([0, 2]), np.array([2, 1]))
    (array([0, 0, 1, 1, 2]), array([0, 1, 0, 1, 2]))
    """
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    sq = counts * counts
    total = int(sq.sum())
    seg = np.repeat(np.arange(len(counts)), sq)
    first = np.cumsum(sq) - sq
    off = np.arange(total, dtype=np.int64) - first[seg]
    c = counts[seg]
    return starts[seg] + off // c, starts[seg] + off % c


def _pairs_all(gstart, gsize):
    # every member on every member's stamp, as photutils evaluates a group
    t, s = segment_products(gstart, gsize)
    return s, t


def _pairs_near(x, y, xlo, ylo, group, fit_shape, support_shape, margin):
    fy, fx = fit_shape
    cx = xlo + (fx - 1) / 2.0
    cy = ylo + (fy - 1) / 2.0
    if np.ndim(support_shape) == 2:  # per-source support half-widths (m, 1) or (m, 2)
        half = np.asarray(support_shape, dtype=float).reshape(len(x), -1)
        rx = fx / 2.0 + half[:, -1] + margin
        ry = fy / 2.0 + half[:, 0] + margin
        r_max = max(float(rx.max()), float(ry.max()))
    else:
        rx = fx / 2.0 + support_shape[1] / 2.0 + margin
        ry = fy / 2.0 + support_shape[0] / 2.0 + margin
        r_max = max(rx, ry)
        rx, ry = np.full(len(x), rx), np.full(len(x), ry)
    # candidates: stamp centre t and source s within r_max in both axes (Chebyshev distance)
    t, s = close_pairs(cx, cy, r_max, x2=x, y2=y, metric="chebyshev")
    keep = ((group[t] == group[s]) & (np.abs(x[s] - cx[t]) <= rx[s])
            & (np.abs(y[s] - cy[t]) <= ry[s]) & (s != t))
    m = len(x)
    s = np.concatenate([s[keep], np.arange(m)])
    t = np.concatenate([t[keep], np.arange(m)])
    order = np.lexsort((s, t))
    return s[order], t[order]


def build_interactions(x, y, xlo, ylo, group, fit_shape, *, support_shape=None, margin=1.0):
    """Build the pair / triple / block index arrays for sources sorted by group.

    Parameters
    ----------
    x, y : ndarray of shape (m,)
        Initial positions.
    xlo, ylo : ndarray of int, shape (m,)
        Stamp origins.
    group : ndarray of int, shape (m,)
        Group labels, non-decreasing.
    fit_shape : (fy, fx)
    support_shape : (sy, sx), ndarray of shape (m, 1) or None
        Extent of a PSF's non-negligible support. ``None`` couples every member of a group
        with every stamp of that group (exact photutils semantics, quadratic in group size).
        An ``(m, 1)`` array gives each source its own support *half-width* in pixels (DAOPHOT's
        PSF radius growing with flux, :func:`crowdphot.psf.allstar.flux_reach`).
    margin : float
        Extra reach in pixels, for stars moving during the fit.

    Returns
    -------
    Interactions

    Examples
    --------
    >>> it = build_interactions(np.array([5.0, 7.0]), np.array([5.0, 5.0]),
    ...                         np.array([3, 5]), np.array([3, 3]), np.array([0, 0]), (5, 5))
    >>> it.ps.tolist(), it.pt.tolist(), len(it.bs1)
    ([0, 1, 0, 1], [0, 0, 1, 1], 4)
    """
    m = len(x)
    gstart = segment_starts(group)
    gsize = np.diff(np.r_[gstart, m])
    if m == 0:
        e = np.zeros(0, dtype=np.int64)
        return Interactions(e, e, e, e, e, e, e, e)
    if gsize.max() == 1:
        ps = pt = np.arange(m, dtype=np.int64)
    elif support_shape is None:
        ps, pt = _pairs_all(gstart, gsize)
    else:
        ps, pt = _pairs_near(x, y, xlo, ylo, group, fit_shape, support_shape, margin)
    tstart = segment_starts(pt)
    tcount = np.diff(np.r_[tstart, len(pt)])
    q1, q2 = segment_products(tstart, tcount)
    key = ps[q1] * m + ps[q2]
    if len(q1) == m:  # isolated sources only: blocks are the triples themselves
        tb = np.arange(m, dtype=np.int64)
        bkeys = key
    else:
        bkeys, tb = np.unique(key, return_inverse=True)
        tb = tb.astype(np.int64)
    bs1 = bkeys // m
    bs2 = bkeys % m
    diag_block = np.searchsorted(bkeys, np.arange(m) * (m + 1))
    return Interactions(ps=ps, pt=pt, q1=q1, q2=q2, tb=tb, bs1=bs1, bs2=bs2,
                        diag_block=diag_block)
