"""Batched Levenberg-Marquardt over all groups at once.

Every group has its own damping ``lambda`` and accepts or rejects its own steps; one model
evaluation per iteration covers every group that is still iterating (converged groups drop
out of the evaluation). Bounds are handled with an active set: a parameter on a bound whose
descent direction points outward is held for the step, the others are solved for, and what is
left of a step beyond a bound is clipped onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdphot.core.fit.pairs import segment_starts
from crowdphot.core.fit.solve import scale_blocks, solve_groups
from crowdphot.core.jit import njit, use_numba

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
    blocks = _normal_blocks(jac, starts, inter.tb[tsel], len(inter.bs1))
    resid = np.zeros((m, npix))
    resid[stamps] = raw
    return Evaluation(cost=cost, grad=grad, blocks=blocks, resid=resid)


def _normal_blocks(jac, starts, tb, n_blocks, max_floats=2**23):
    """Normal-matrix blocks ``sum J_s1 J_s2^T`` from the pairs' weighted Jacobians.

    ``tb`` is the block of every triple of the evaluated stamps, in stamp-major order. Stamps
    are batched by their number of pairs ``c``: the pairs of a stamp form one ``(3 c, npix)``
    matrix, a batched matmul gives its Gram matrix (all ``c * c`` triples of the stamp, in
    triple order) and one ``bincount`` adds every entry to its block.
    """
    npair, _, npix = jac.shape
    counts = np.diff(np.r_[starts, npair])
    if counts.max(initial=0) <= 1:  # isolated sources: one triple per stamp
        blocks = np.zeros((n_blocks, 3, 3))
        blocks[tb] = np.matmul(jac, jac.transpose(0, 2, 1))
        return blocks
    toff = np.cumsum(counts * counts) - counts * counts
    if use_numba():
        blocks = np.zeros((n_blocks, 3, 3))
        _normal_blocks_nb(np.ascontiguousarray(jac), starts, counts, toff, tb, blocks)
        return blocks
    kl = 3 * np.arange(3)[:, None, None] + np.arange(3)  # (k, 1, l) inside a 3 x 3 block
    acc = np.zeros(n_blocks * 9)
    for c in np.unique(counts):  # a handful of distinct stamp sizes
        stamps_c = np.flatnonzero(counts == c)
        ab = (np.arange(c)[:, None] * c + np.arange(c)).astype(np.int64)
        per = max(1, max_floats // (9 * c * c + 3 * c * npix))
        for c0 in range(0, len(stamps_c), per):  # chunks bound memory; usually one
            chunk = stamps_c[c0:c0 + per]
            pad = jac[starts[chunk][:, None] + np.arange(c)].reshape(len(chunk), 3 * c, npix)
            gram = np.matmul(pad, pad.transpose(0, 2, 1))  # (stamp, a, k, b, l) flattened
            bid = 9 * tb[toff[chunk][:, None, None] + ab]  # (stamp, a, b)
            idx = bid[:, :, None, :, None] + kl[None, None, :, :, :]
            acc += np.bincount(idx.ravel(), gram.ravel(), minlength=n_blocks * 9)
    return acc.reshape(n_blocks, 3, 3)


@njit
def _normal_blocks_nb(jac, starts, counts, toff, tb, out):  # pragma: no cover - compiled
    # compiled form of _normal_blocks: no Gram / index temporaries, and the symmetry
    # G_ba = G_ab^T halves the products
    npix = jac.shape[2]
    for t in range(starts.shape[0]):
        p0, c, o = starts[t], counts[t], toff[t]
        for a in range(c):
            for b in range(a, c):
                bab = tb[o + a * c + b]
                bba = tb[o + b * c + a]
                for k in range(3):
                    for m in range(3):
                        acc = 0.0
                        for q in range(npix):
                            acc += jac[p0 + a, k, q] * jac[p0 + b, m, q]
                        out[bab, k, m] += acc
                        if b != a:
                            out[bba, m, k] += acc


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
                        bs1=sub_inter.bs1, bs2=sub_inter.bs2, diag_block=sub_inter.diag_block,
                        xy=None if lay.xy is None else lay.xy[src])
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
        self.lu = np.zeros(g, dtype=bool)  # large groups where CG stalled: LU from then on
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
        for name in ("lam", "nu", "niter", "converged", "done", "lu"):
            setattr(self, name, getattr(self, name)[keep])
        self.src, self.blk, self.grp = self.src[src], self.blk[blk], self.grp[keep]


def _free_set(prob, theta, grad):
    """Free parameters minus the active bound constraints of this step.

    ``grad`` is ``J^T r``, the steepest-descent direction of the cost. A parameter sitting on
    a bound whose descent direction points outward is held for the step (identity row, zero
    right-hand side) so that the other parameters are re-optimised with it fixed, instead of
    a projected step that stops short of the constrained optimum. It is released as soon as
    the descent direction points back inside.
    """
    held = ((theta <= prob.lo) & (grad < 0)) | ((theta >= prob.hi) & (grad > 0))
    return prob.free & ~held


def _step(st, xtol, ftol):
    # one error-state switch per iteration: NaN / overflow in a group only marks that group
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        _step_unguarded(st, xtol, ftol)


def _step_unguarded(st, xtol, ftol):
    prob, cur, theta = st.prob, st.ev, st.theta
    lay = prob.layout
    grp = lay.group
    n_groups = lay.n_groups
    active = ~st.done
    st.niter[active] += 1
    scaled, sd, usable = scale_blocks(cur.blocks, lay, _free_set(prob, theta, cur.grad),
                                      st.lam[grp])
    rhs = np.where(usable, cur.grad / sd, 0.0)
    delta = solve_groups(scaled, rhs, lay, active, st.lu) / sd
    delta = np.where(active[grp][:, None] & usable, delta, 0.0)
    cand = np.clip(theta + delta, prob.lo, prob.hi)
    delta = cand - theta
    fin_src = np.isfinite(delta).all(axis=1)
    finite = _all_in_group(fin_src, grp, n_groups)
    delta = np.where(fin_src[:, None], delta, 0.0)
    cand = theta + delta
    lin = np.bincount(grp, np.einsum("sk,sk->s", delta, cur.grad), minlength=n_groups)
    pred = lin - 0.5 * _quadratic(cur.blocks, delta, lay)
    small_src = (np.abs(delta) <= xtol * (np.abs(theta) + xtol)).all(axis=1)
    # a negligible proposed step means the group sits at its minimum: stop without paying
    # for one more evaluation
    small = finite & _all_in_group(small_src, grp, n_groups)
    evalg = active & finite & ~small
    new = evaluate(prob, cand, evalg)
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
