"""Batched Levenberg-Marquardt over all groups at once.

Every group has its own damping ``lambda`` and accepts or rejects its own steps; one model
evaluation per iteration covers every group that is still iterating (converged groups drop
out of the evaluation). Parameter steps are projected onto the per-source bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pairs import segment_starts
from .solve import scale_blocks, solve_groups

__all__ = ["Problem", "Evaluation", "evaluate", "levenberg_marquardt"]


@dataclass(frozen=True)
class Problem:
    """Static inputs of a batched fit of ``m`` group-sorted sources (see ``engine``)."""

    psf: object
    fit_shape: tuple
    data: np.ndarray  # (m, npix) background-subtracted stamps, 0 on dropped pixels
    weight: np.ndarray  # (m, npix), 0 on dropped pixels
    xlo: np.ndarray
    ylo: np.ndarray
    inter: object  # pairs.Interactions
    layout: object  # solve.Layout
    free: np.ndarray  # (m, 3) bool
    lo: np.ndarray  # (m, 3)
    hi: np.ndarray  # (m, 3)


@dataclass
class Evaluation:
    """Model quantities at the current parameters for the evaluated subset."""

    cost: np.ndarray  # (G,) 0.5 * sum of squared weighted residuals per group
    grad: np.ndarray  # (m, 3) J^T r per source
    blocks: np.ndarray  # (NB, 3, 3) J^T J blocks
    resid: np.ndarray  # (m, npix) raw residual data - model per stamp


def evaluate(prob, theta, gmask):
    """Evaluate cost, gradient, normal blocks and residuals for the groups in ``gmask``.

    Returns an :class:`Evaluation` of full-size arrays, zero outside the evaluated groups.
    """
    inter, lay = prob.inter, prob.layout
    grp = lay.group
    m, npix = prob.data.shape
    n_groups = lay.n_groups
    psel = np.flatnonzero(gmask[grp[inter.pt]])
    if len(psel) == 0:
        return Evaluation(cost=np.zeros(n_groups), grad=np.zeros((m, 3)),
                          blocks=np.zeros((len(inter.bs1), 3, 3)), resid=np.zeros((m, npix)))
    ps, pt = inter.ps[psel], inter.pt[psel]
    fx = theta[ps, 2]
    v, gx, gy = prob.psf._stamps_grad(theta[ps, 0], theta[ps, 1], prob.xlo[pt], prob.ylo[pt],
                                      prob.fit_shape)
    npair = len(ps)
    v = np.reshape(v, (npair, npix))
    starts = segment_starts(pt)
    stamps = pt[starts]
    model = np.add.reduceat(fx[:, None] * v, starts, axis=0)
    raw = prob.data[stamps] - model
    w = prob.weight[stamps]
    r = raw * w
    cost = np.bincount(grp[stamps], 0.5 * np.einsum("ij,ij->i", r, r), minlength=n_groups)

    wp = prob.weight[pt]
    jac = np.empty((npair, 3, npix))
    jac[:, 0] = np.reshape(gx, (npair, npix)) * (fx[:, None] * wp)
    jac[:, 1] = np.reshape(gy, (npair, npix)) * (fx[:, None] * wp)
    jac[:, 2] = v * wp
    stamp_of_pair = np.cumsum(np.r_[True, pt[1:] != pt[:-1]]) - 1
    gp = np.einsum("pkn,pn->pk", jac, r[stamp_of_pair])
    grad = np.zeros((m, 3))
    for k in range(3):
        grad[:, k] = np.bincount(ps, gp[:, k], minlength=m)

    tsel = np.flatnonzero(gmask[grp[inter.ps[inter.q1]]])
    pos = np.full(len(inter.ps), -1, dtype=np.int64)
    pos[psel] = np.arange(npair)
    prod = _triple_products(jac, starts, stamp_of_pair, pos[inter.q1[tsel]],
                            pos[inter.q2[tsel]])
    tb = inter.tb[tsel]
    blocks = np.zeros((len(inter.bs1), 3, 3))
    if len(tb):
        bstart = segment_starts(tb)
        blocks[tb[bstart]] = np.add.reduceat(prod, bstart, axis=0)
    resid = np.zeros((m, npix))
    resid[stamps] = raw
    return Evaluation(cost=cost, grad=grad, blocks=blocks, resid=resid)


def _triple_products(jac, starts, stamp_of_pair, a, b, max_floats=2**23):
    """``J_a J_b^T`` (summed over the stamp's pixels) for pair pairs ``(a, b)`` sharing a stamp.

    Stamps are batched by their number of pairs ``c``: the pairs of each stamp form one
    ``(3 c, npix)`` matrix and a batched matmul gives all products of those stamps at once.
    """
    npair, _, npix = jac.shape
    counts = np.diff(np.r_[starts, npair])
    if counts.max() == 1:  # isolated sources: one pair per stamp, a == b
        return np.matmul(jac, jac.transpose(0, 2, 1))[a]
    rank = np.arange(npair) - starts[stamp_of_pair]
    ta = stamp_of_pair[a]
    prod = np.empty((len(a), 3, 3))
    tc = counts[ta]
    order = np.lexsort((ta, tc))  # triples by stamp size, then stamp
    tc_sorted = tc[order]
    for c in np.unique(counts):  # a handful of distinct stamp sizes
        stamps_c = np.flatnonzero(counts == c)
        srank = np.full(len(starts), -1, dtype=np.int64)
        srank[stamps_c] = np.arange(len(stamps_c))
        lo, hi = np.searchsorted(tc_sorted, [c, c + 1])
        sel_c = order[lo:hi]
        per = max(1, max_floats // (9 * c * c + 3 * c * npix))
        for c0 in range(0, len(stamps_c), per):  # chunks bound memory; usually one
            chunk = stamps_c[c0:c0 + per]
            pidx = starts[chunk][:, None] + np.arange(c)
            pad = jac[pidx].reshape(len(chunk), 3 * c, npix)
            gram = np.matmul(pad, pad.transpose(0, 2, 1)).reshape(len(chunk), c, 3, c, 3)
            gram = gram.transpose(0, 1, 3, 2, 4).reshape(-1, 3, 3)
            r = srank[ta[sel_c]] - c0
            sel = sel_c[(r >= 0) & (r < len(chunk))]
            flat = ((srank[ta[sel]] - c0) * c + rank[a[sel]]) * c + rank[b[sel]]
            prod[sel] = gram[flat]
    return prod


def _merge(cur, new, prob, acc_groups):
    lay = prob.layout
    src = acc_groups[lay.group]
    blk = acc_groups[lay.group[lay.bs1]]
    cur.cost[acc_groups] = new.cost[acc_groups]
    cur.grad[src] = new.grad[src]
    cur.blocks[blk] = new.blocks[blk]
    cur.resid[src] = new.resid[src]


def _quadratic(blocks, delta, lay):
    q = np.einsum("bk,bkl,bl->b", delta[lay.bs1], blocks, delta[lay.bs2])
    return np.bincount(lay.group[lay.bs1], q, minlength=lay.n_groups)


def _all_in_group(cond, grp, n_groups):
    return np.bincount(grp, ~cond, minlength=n_groups) == 0


def restrict(prob, gmask):
    """The sub-problem of the groups in ``gmask``; returns ``(sub, src, blk)`` where ``src`` and
    ``blk`` are the kept source and block indices of ``prob``."""
    inter, lay = prob.inter, prob.layout
    grp = lay.group
    src = np.flatnonzero(gmask[grp])
    smap = np.full(len(grp), -1, dtype=np.int64)
    smap[src] = np.arange(len(src))
    pk = np.flatnonzero(gmask[grp[inter.pt]])
    pmap = np.full(len(inter.pt), -1, dtype=np.int64)
    pmap[pk] = np.arange(len(pk))
    tk = np.flatnonzero(gmask[grp[inter.ps[inter.q1]]])
    blk = np.flatnonzero(gmask[grp[lay.bs1]])
    bmap = np.full(len(lay.bs1), -1, dtype=np.int64)
    bmap[blk] = np.arange(len(blk))
    gmap = np.cumsum(gmask) - 1
    sub_inter = type(inter)(ps=smap[inter.ps[pk]], pt=smap[inter.pt[pk]], q1=pmap[inter.q1[tk]],
                            q2=pmap[inter.q2[tk]], tb=bmap[inter.tb[tk]],
                            bs1=smap[lay.bs1[blk]], bs2=smap[lay.bs2[blk]],
                            diag_block=bmap[lay.diag_block[src]])
    sub_lay = type(lay)(group=gmap[grp[src]], local=lay.local[src], bucket=lay.bucket[gmask],
                        bs1=sub_inter.bs1, bs2=sub_inter.bs2, diag_block=sub_inter.diag_block)
    sub = Problem(psf=prob.psf, fit_shape=prob.fit_shape, data=prob.data[src],
                  weight=prob.weight[src], xlo=prob.xlo[src], ylo=prob.ylo[src],
                  inter=sub_inter, layout=sub_lay, free=prob.free[src], lo=prob.lo[src],
                  hi=prob.hi[src])
    return sub, src, blk


class _State:
    """Iteration state of the working (sub-)problem, with write-back to the full arrays."""

    def __init__(self, prob, theta, ev, lam0):
        g = prob.layout.n_groups
        self.prob, self.theta, self.ev = prob, theta, ev
        self.lam = np.full(g, lam0)
        self.nu = np.full(g, 2.0)
        self.niter = np.zeros(g, dtype=np.int64)
        self.converged = np.zeros(g, dtype=bool)
        self.done = ~np.isfinite(ev.cost)
        self.src = np.arange(len(theta))
        self.blk = np.arange(len(prob.layout.bs1))
        self.grp = np.arange(g)

    def write_back(self, out):
        theta, ev, niter, conv = out
        theta[self.src] = self.theta
        ev.cost[self.grp] = self.ev.cost
        ev.grad[self.src] = self.ev.grad
        ev.blocks[self.blk] = self.ev.blocks
        ev.resid[self.src] = self.ev.resid
        niter[self.grp] = self.niter
        conv[self.grp] = self.converged

    def compact(self):
        keep = ~self.done
        sub, src, blk = restrict(self.prob, keep)
        self.prob, self.theta = sub, self.theta[src]
        self.ev = Evaluation(cost=self.ev.cost[keep], grad=self.ev.grad[src],
                             blocks=self.ev.blocks[blk], resid=self.ev.resid[src])
        for name in ("lam", "nu", "niter", "converged", "done"):
            setattr(self, name, getattr(self, name)[keep])
        self.src, self.blk, self.grp = self.src[src], self.blk[blk], self.grp[keep]


def _step(st, xtol, ftol):
    prob, cur, theta = st.prob, st.ev, st.theta
    lay = prob.layout
    grp = lay.group
    n_groups = lay.n_groups
    active = ~st.done
    st.niter[active] += 1
    scaled, sd, usable = scale_blocks(cur.blocks, lay, prob.free, st.lam[grp])
    rhs = np.where(usable, cur.grad / sd, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        delta = solve_groups(scaled, rhs, lay, active) / sd
        delta = np.where(active[grp][:, None] & usable, delta, 0.0)
        cand = np.clip(theta + delta, prob.lo, prob.hi)
        delta = cand - theta
    fin_src = np.isfinite(delta).all(axis=1)
    finite = _all_in_group(fin_src, grp, n_groups)
    delta = np.where(fin_src[:, None], delta, 0.0)
    cand = theta + delta
    with np.errstate(invalid="ignore", over="ignore"):
        lin = np.bincount(grp, np.einsum("sk,sk->s", delta, cur.grad), minlength=n_groups)
        pred = lin - 0.5 * _quadratic(cur.blocks, delta, lay)
    small_src = (np.abs(delta) <= xtol * (np.abs(theta) + xtol)).all(axis=1)
    # a negligible proposed step means the group sits at its minimum: stop without paying
    # for one more evaluation
    small = finite & _all_in_group(small_src, grp, n_groups)
    evalg = active & finite & ~small
    new = evaluate(prob, cand, evalg)
    with np.errstate(invalid="ignore", over="ignore"):
        actual = cur.cost - new.cost
        accept = evalg & np.isfinite(new.cost) & (new.cost <= cur.cost)
        rho = np.where(pred > 0, actual / np.where(pred > 0, pred, 1.0),
                       np.where(actual >= 0, 1.0, -1.0))
        tol = ftol * cur.cost
    newly = active & (
        small
        | (accept & (((actual <= tol) & (rho > 0.25)) | (new.cost == 0)))
        | (~accept & (pred <= tol) & finite))
    _merge(cur, new, prob, accept)
    st.theta = np.where(accept[grp][:, None], cand, theta)
    shrink = np.maximum(1.0 / 3.0, 1.0 - (2.0 * np.clip(rho, 0, 1) - 1.0) ** 3)
    rej = active & ~accept
    st.lam = np.where(accept, np.maximum(st.lam * shrink, 1e-12),
                      np.where(rej, st.lam * st.nu, st.lam))
    st.nu = np.where(accept, 2.0, np.where(rej, st.nu * 2.0, st.nu))
    st.converged |= newly
    st.done |= newly | (st.lam > 1e16)


def levenberg_marquardt(prob, theta0, *, maxiters=100, xtol=1e-10, ftol=1e-10, lam0=1e-3):
    """Minimise every group's weighted sum of squares at once.

    Groups that have converged are dropped from the working problem once they are the
    majority, so late iterations only pay for the groups still iterating.

    Returns ``theta (m, 3), evaluation at theta, niter (G,), converged (G,)``.
    """
    n_groups = prob.layout.n_groups
    theta = np.clip(theta0, prob.lo, prob.hi)
    ev = evaluate(prob, theta, np.ones(n_groups, dtype=bool))
    out = (theta.copy(), ev, np.zeros(n_groups, dtype=np.int64), np.zeros(n_groups, dtype=bool))
    st = _State(prob, theta, Evaluation(ev.cost.copy(), ev.grad.copy(), ev.blocks.copy(),
                                        ev.resid.copy()), lam0)
    for _ in range(maxiters):
        n_active = int(np.count_nonzero(~st.done))
        if n_active == 0:
            break
        if n_active <= len(st.done) // 2:
            st.write_back(out)
            st.compact()
        _step(st, xtol, ftol)
    st.write_back(out)
    return out
