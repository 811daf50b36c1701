"""Batched Levenberg-Marquardt over all groups at once.

Every group has its own damping ``lambda`` and accepts or rejects its own steps; one model
evaluation per iteration covers every group that is still iterating (converged groups drop
out of the evaluation). Bounds are handled with an active set: a parameter on a bound whose
descent direction points outward is held for the step, the others are solved for, and what is
left of a step beyond a bound is clipped onto it.

Parameters are described by a :class:`~crowdphot.core.fit.params.ParamSet`: ``theta`` holds the
``K`` per-source parameters ``(m, K)`` and ``phi`` the ``S`` group parameters ``(G, S)`` (the
sky); with ``S = 0`` no group-parameter arithmetic is done at all.

Robust steps (DAOPHOT ALLSTAR's habits): every position step is clamped to ``MAX_SHIFT``
pixels per iteration (a trust region in pixels, on top of the Marquardt damping); a source
whose position reaches the edge of its own fit stamp -- where the stamp's pixels stop
constraining it and faint fits run away -- is *stopped* there (all its parameters held for the
rest of the fit) and reported, so that it can be flagged; and a step counts as negligible when
every component is below ``xtol`` times that parameter's error (``1 / sqrt((J^T J)_kk)``),
never relative to the parameter's value (a runaway flux of 1e100 makes any relative test pass).

Maximum likelihood for counts (``Problem.noise``, a :class:`PoissonNoise`): every evaluation
refreshes the pixel weights from the model, ``1 / V(mu)`` with ``mu = model + background`` and
``V(mu) = mu / g + (R / g)**2``, and the cost is half the deviance of the shifted-Poisson
likelihood (Snyder, Hammoud & White 1993) instead of half the chi-square. The gradient
``J^T V^-1 (d - mu)`` is then the score and ``J^T V^-1 J`` the Fisher information, so each
step is a damped Fisher-scoring step on the log-likelihood and the Marquardt acceptance test
compares log-likelihoods: one engine call maximises the likelihood (no outer reweighting
loop), and the normal matrix at the solution is the expected information there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdphot.core.crlb import VARIANCE_FLOOR_E
from crowdphot.core.fit.pairs import segment_starts
from crowdphot.core.fit.params import ParamSet
from crowdphot.core.fit.solve import scale_blocks, scale_group, solve_groups
from crowdphot.core.kernels.normal import normal_blocks_add

__all__ = ["Problem", "Evaluation", "PoissonNoise", "evaluate", "levenberg_marquardt",
           "model_weights", "MAX_SHIFT"]

#: Largest position change (pixels, per axis) of one Levenberg-Marquardt step.
MAX_SHIFT = 1.0


@dataclass(frozen=True)
class PoissonNoise:
    """Model-based pixel variances of a maximum-likelihood fit (the weight-refresh hook).

    Attributes
    ----------
    read_noise : float
        Electrons rms (>= 0).
    gain : float
        Electrons per ADU (> 0).
    background : ndarray of shape (m, npix)
        Expected light not in the fitted model on every stamp pixel (ADU): local background,
        sky map, subtracted neighbours. The problem's ``data`` are the counts minus this.
    """

    read_noise: float
    gain: float
    background: np.ndarray
    counts: np.ndarray  # (m, npix) data in shifted electrons, g * (data + background) + R**2
    const: np.ndarray  # (m, npix) the deviance's data-only part, d log(d_sat) - d_sat

    @classmethod
    def build(cls, read_noise, gain, background, data):
        """From the background-subtracted stamp ``data`` (m, npix) and ``background``."""
        d_e = gain * (data + background) + read_noise ** 2
        d_sat = np.maximum(d_e, VARIANCE_FLOOR_E)  # d <= 0: saturated at the floor
        return cls(float(read_noise), float(gain), background, d_e,
                   d_e * np.log(d_sat) - d_sat)

    def subset(self, src):
        return PoissonNoise(self.read_noise, self.gain, self.background[src], self.counts[src],
                            self.const[src])

    def weights_and_cost(self, model, stamps, mask):
        """Weights ``1 / sqrt(V(mu))`` (times ``mask``) and half the deviance per stamp.

        ``model`` (background-subtracted) holds the stamps ``stamps``; ``mask`` is the
        problem's weight there (1, or 0 on dropped or repeated pixels). Half the deviance
        ``d log(d / mu) - (d - mu) >= 0`` (shifted electrons) is half the chi-square for
        large counts.
        """
        # ``stamps`` are sorted and unique: all of them means the identity (no gathers)
        every = len(stamps) == len(self.background)

        def rows(arr):
            return arr if every else arr[stamps]

        mu_e = model + rows(self.background)
        np.maximum(mu_e, 0.0, out=mu_e)
        mu_e *= self.gain
        mu_e += self.read_noise ** 2
        np.maximum(mu_e, VARIANCE_FLOOR_E, out=mu_e)
        w = np.sqrt(mu_e)
        np.divide(self.gain, w, out=w)
        w *= mask
        dev = np.log(mu_e)
        dev *= rows(self.counts)
        np.subtract(rows(self.const), dev, out=dev)
        dev += mu_e
        dev *= mask
        return w, dev.sum(axis=1)


def model_weights(prob, resid, mask):
    """Pixel weights ``mask / sqrt(V(mu))`` at the solution of a maximum-likelihood problem,
    from the evaluation's raw residuals ``resid`` (m, npix) (``model = data - resid``)."""
    stamps = np.arange(len(prob.data))
    return prob.noise.weights_and_cost(prob.data - resid, stamps, mask)[0]


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
    free: np.ndarray  # (m, K) bool
    lo: np.ndarray  # (m, K)
    hi: np.ndarray  # (m, K)
    params: ParamSet = ParamSet()
    noise: PoissonNoise | None = None  # maximum likelihood: weights refreshed from the model


@dataclass
class Evaluation:
    """Model quantities at the current parameters for the evaluated subset.

    ``ggrad``, ``gblock`` and ``cross`` are the group parameters' gradient, diagonal block and
    coupling to each source's parameters (zero-sized when the fit has no group parameter).
    """

    cost: np.ndarray  # (G,) 0.5 * sum of squared weighted residuals per group
    grad: np.ndarray  # (m, K) J^T r per source
    blocks: np.ndarray  # (NB, K, K) J^T J blocks
    resid: np.ndarray  # (m, npix) raw residual data - model per stamp
    ggrad: np.ndarray | None = None  # (G, S) J_g^T r
    gblock: np.ndarray | None = None  # (G, S, S) J_g^T J_g
    cross: np.ndarray | None = None  # (m, K, S) J_s^T J_g


def _empty(prob, m, npix, n_groups, nb):
    k, s = prob.params.n_source, prob.params.n_group
    return Evaluation(cost=np.zeros(n_groups), grad=np.zeros((m, k)),
                      blocks=np.zeros((nb, k, k)), resid=np.zeros((m, npix)),
                      ggrad=np.zeros((n_groups, s)), gblock=np.zeros((n_groups, s, s)),
                      cross=np.zeros((m, k, s)))


def evaluate(prob, theta, gmask, phi=None):
    """Evaluate cost, gradient, normal blocks and residuals for the groups in ``gmask``.

    ``theta`` (m, K) are the per-source parameters, ``phi`` (G, S) the group parameters
    (None without any). Returns an :class:`Evaluation` of full-size arrays, zero outside the
    evaluated groups.
    """
    inter, lay = prob.inter, prob.layout
    grp = lay.group
    m, npix = prob.data.shape
    n_groups = lay.n_groups
    n_k, n_s = prob.params.n_source, prob.params.n_group
    psel = np.flatnonzero(gmask[grp[inter.pt]])
    if len(psel) == 0:
        return _empty(prob, m, npix, n_groups, len(inter.bs1))
    ps, pt = inter.ps[psel], inter.pt[psel]
    fx = theta[ps, 2]
    v, gx, gy = prob.psf._stamps_grad(theta[ps, 0], theta[ps, 1], prob.xlo[pt], prob.ylo[pt],
                                      prob.fit_shape)
    npair = len(ps)
    v = np.reshape(v, (npair, npix))
    starts = segment_starts(pt)
    stamps = pt[starts]
    model = np.add.reduceat(fx[:, None] * v, starts, axis=0)
    if n_s:  # the sky: a constant over every stamp of the group
        model = model + phi[grp[stamps], 0][:, None]
    raw = prob.data[stamps] - model
    if prob.noise is None:
        w = prob.weight[stamps]
        r = raw * w
        half = 0.5 * np.einsum("ij,ij->i", r, r)
    else:  # weights from the model; cost: half the deviance
        w, half = prob.noise.weights_and_cost(model, stamps, prob.weight[stamps])
        r = raw * w
    cost = np.bincount(grp[stamps], half, minlength=n_groups)

    stamp_of_pair = np.cumsum(np.r_[True, pt[1:] != pt[:-1]]) - 1
    wp = w[stamp_of_pair]
    jac = np.empty((npair, n_k, npix))
    jac[:, 0] = np.reshape(gx, (npair, npix)) * (fx[:, None] * wp)
    jac[:, 1] = np.reshape(gy, (npair, npix)) * (fx[:, None] * wp)
    jac[:, 2] = v * wp
    gp = np.einsum("pkn,pn->pk", jac, r[stamp_of_pair])
    grad = np.zeros((m, n_k))
    for k in range(n_k):
        grad[:, k] = np.bincount(ps, gp[:, k], minlength=m)

    tsel = np.flatnonzero(gmask[grp[inter.ps[inter.q1]]])
    blocks = _normal_blocks(jac, starts, inter.tb[tsel], len(inter.bs1))
    resid = np.zeros((m, npix))
    resid[stamps] = raw
    ev = _empty(prob, 0, npix, n_groups, 0)
    ev.cost, ev.grad, ev.blocks, ev.resid = cost, grad, blocks, resid
    ev.cross = np.zeros((m, n_k, n_s))
    if n_s:
        # d model / d sky = 1 on every pixel of the group's stamps (weighted: w)
        gs = grp[stamps]
        ev.ggrad[:, 0] = np.bincount(gs, np.einsum("ij,ij->i", r, w), minlength=n_groups)
        ev.gblock[:, 0, 0] = np.bincount(gs, np.einsum("ij,ij->i", w, w), minlength=n_groups)
        cp = np.einsum("pkn,pn->pk", jac, w[stamp_of_pair])
        for k in range(n_k):
            ev.cross[:, k, 0] = np.bincount(ps, cp[:, k], minlength=m)
    return ev


def _normal_blocks(jac, starts, tb, n_blocks):
    """Normal-matrix blocks ``sum J_s1 J_s2^T`` from the pairs' weighted Jacobians.

    ``tb`` is the block of every triple of the evaluated stamps, in stamp-major order. Stamps
    are batched by their number of pairs ``c``: the pairs of a stamp form one ``(3 c, npix)``
    matrix; its Gram matrix holds all ``c * c`` triples of the stamp, in triple order, and each
    entry is added to its block (one compiled kernel,
    :func:`crowdphot.core.kernels.normal.normal_blocks_add`; no temporaries).
    """
    npair, n_k, npix = jac.shape
    counts = np.diff(np.r_[starts, npair])
    blocks = np.zeros((n_blocks, n_k, n_k))
    if counts.max(initial=0) <= 1:  # isolated sources: one triple per stamp
        blocks[tb] = np.matmul(jac, jac.transpose(0, 2, 1))
        return blocks
    toff = np.cumsum(counts * counts) - counts * counts
    normal_blocks_add(jac, starts, counts, toff, tb, blocks)
    return blocks


def _merge(cur, new, prob, acc_groups):
    lay = prob.layout
    src = acc_groups[lay.group]
    blk = acc_groups[lay.group[lay.bs1]]
    cur.cost[acc_groups] = new.cost[acc_groups]
    cur.grad[src] = new.grad[src]
    cur.blocks[blk] = new.blocks[blk]
    cur.resid[src] = new.resid[src]
    if prob.params.n_group:
        cur.ggrad[acc_groups] = new.ggrad[acc_groups]
        cur.gblock[acc_groups] = new.gblock[acc_groups]
        cur.cross[src] = new.cross[src]


def _quadratic(ev, delta, dphi, lay):
    """``delta^T (J^T J) delta`` per group, group parameters included."""
    q = np.einsum("bk,bkl,bl->b", delta[lay.bs1], ev.blocks, delta[lay.bs2])
    out = np.bincount(lay.group[lay.bs1], q, minlength=lay.n_groups)
    if dphi is not None:
        qc = np.einsum("sk,sku,su->s", delta, ev.cross, dphi[lay.group])
        out = out + 2.0 * np.bincount(lay.group, qc, minlength=lay.n_groups)
        out = out + np.einsum("gu,guv,gv->g", dphi, ev.gblock, dphi)
    return out


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
                  hi=prob.hi[src], params=prob.params,
                  noise=None if prob.noise is None else prob.noise.subset(src))
    return sub, src, blk


_GROUP_FIELDS = ("ggrad", "gblock")


class _State:
    """Iteration state of the working (sub-)problem, with write-back to the full arrays."""

    def __init__(self, prob, theta, phi, ev, lam0):
        g = prob.layout.n_groups
        self.prob, self.theta, self.phi, self.ev = prob, theta, phi, ev
        self.lam = np.full(g, lam0)
        self.nu = np.full(g, 2.0)
        self.niter = np.zeros(g, dtype=np.int64)
        self.converged = np.zeros(g, dtype=bool)
        self.done = ~np.isfinite(ev.cost)
        self.lu = np.zeros(g, dtype=bool)  # large groups where CG stalled: LU from then on
        self.stopped = np.zeros(len(theta), dtype=bool)  # left their stamp: held from then on
        self.src = np.arange(len(theta))
        self.blk = np.arange(len(prob.layout.bs1))
        self.grp = np.arange(g)

    def write_back(self, out):
        theta, phi, ev, niter, conv, stopped = out
        theta[self.src] = self.theta
        stopped[self.src] = self.stopped
        phi[self.grp] = self.phi
        ev.cost[self.grp] = self.ev.cost
        ev.grad[self.src] = self.ev.grad
        ev.blocks[self.blk] = self.ev.blocks
        ev.resid[self.src] = self.ev.resid
        ev.cross[self.src] = self.ev.cross
        for name in _GROUP_FIELDS:
            getattr(ev, name)[self.grp] = getattr(self.ev, name)
        niter[self.grp] = self.niter
        conv[self.grp] = self.converged

    def compact(self):
        keep = ~self.done
        sub, src, blk = restrict(self.prob, keep)
        self.prob, self.theta, self.phi = sub, self.theta[src], self.phi[keep]
        self.stopped = self.stopped[src]
        self.ev = Evaluation(cost=self.ev.cost[keep], grad=self.ev.grad[src],
                             blocks=self.ev.blocks[blk], resid=self.ev.resid[src],
                             ggrad=self.ev.ggrad[keep], gblock=self.ev.gblock[keep],
                             cross=self.ev.cross[src])
        for name in ("lam", "nu", "niter", "converged", "done", "lu"):
            setattr(self, name, getattr(self, name)[keep])
        self.src, self.blk, self.grp = self.src[src], self.blk[blk], self.grp[keep]


def _free_set(prob, theta, grad, stopped):
    """Free parameters minus the active bound constraints of this step and the stopped sources.

    ``grad`` is ``J^T r``, the steepest-descent direction of the cost. A parameter sitting on
    a bound whose descent direction points outward is held for the step (identity row, zero
    right-hand side) so that the other parameters are re-optimised with it fixed, instead of
    a projected step that stops short of the constrained optimum. It is released as soon as
    the descent direction points back inside.
    """
    held = ((theta <= prob.lo) & (grad < 0)) | ((theta >= prob.hi) & (grad > 0))
    return prob.free & ~held & ~stopped[:, None]


def _stamp_box(prob):
    """``(lo, hi)`` of shape (m, 2): the (x, y) extent of each source's own fit stamp."""
    fy, fx = prob.fit_shape
    lo = np.column_stack([prob.xlo - 0.5, prob.ylo - 0.5])
    return lo, lo + np.array([fx, fy], dtype=float)


def _step(st, xtol, ftol):
    # one error-state switch per iteration: NaN / overflow in a group only marks that group
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        _step_unguarded(st, xtol, ftol)


def _solve_step(st, active):
    """The damped Gauss-Newton step of every active group.

    Returns ``delta (m, K), dphi (G, S) or None, sd (m, K), gsd (G, S) or None``; ``1 / sd``
    is each parameter's conditional error (the unit of the convergence test).
    """
    prob, cur, theta = st.prob, st.ev, st.theta
    lay = prob.layout
    grp = lay.group
    scaled, sd, usable = scale_blocks(cur.blocks, lay,
                                      _free_set(prob, theta, cur.grad, st.stopped), st.lam[grp])
    rhs = np.where(usable, cur.grad / sd, 0.0)
    if not prob.params.n_group:
        delta = solve_groups(scaled, rhs, lay, active, st.lu) / sd
        return np.where(active[grp][:, None] & usable, delta, 0.0), None, sd, None
    cross, gdiag, gsd, gusable = scale_group(cur.cross, cur.gblock, lay, usable, sd, st.lam)
    grhs = np.where(gusable, cur.ggrad / gsd, 0.0)
    z, zg = solve_groups(scaled, rhs, lay, active, st.lu, group=(cross, gdiag, grhs))
    delta = np.where(active[grp][:, None] & usable, z / sd, 0.0)
    dphi = np.where(active[:, None] & gusable, zg / gsd, 0.0)
    return delta, dphi, sd, gsd


def _step_unguarded(st, xtol, ftol):
    prob, cur, theta, phi = st.prob, st.ev, st.theta, st.phi
    lay = prob.layout
    grp = lay.group
    n_groups = lay.n_groups
    active = ~st.done
    st.niter[active] += 1
    delta, dphi, sd, gsd = _solve_step(st, active)
    # trust region in pixels: position steps clamped per iteration, positions kept on the
    # source's own stamp (reaching its edge stops the source, below)
    delta[:, :2] = np.clip(delta[:, :2], -MAX_SHIFT, MAX_SHIFT)
    cand = np.clip(theta + delta, prob.lo, prob.hi)
    box_lo, box_hi = _stamp_box(prob)
    cand[:, :2] = np.clip(cand[:, :2], box_lo, box_hi)
    delta = cand - theta
    fin_src = np.isfinite(delta).all(axis=1)
    finite = _all_in_group(fin_src, grp, n_groups)
    delta = np.where(fin_src[:, None], delta, 0.0)
    cand = theta + delta
    lin = np.bincount(grp, np.einsum("sk,sk->s", delta, cur.grad), minlength=n_groups)
    # negligible: below xtol times the parameter's (conditional) error, never relative to it
    small_src = (np.abs(delta) * sd <= xtol).all(axis=1)
    small = _all_in_group(small_src, grp, n_groups)
    cphi = phi
    if dphi is not None:
        fin_g = np.isfinite(dphi).all(axis=1)
        finite &= fin_g
        dphi = np.where(fin_g[:, None], dphi, 0.0)
        cphi = phi + dphi
        lin = lin + np.einsum("gu,gu->g", dphi, cur.ggrad)
        small &= (np.abs(dphi) * gsd <= xtol).all(axis=1)
    pred = lin - 0.5 * _quadratic(cur, delta, dphi, lay)
    # a negligible proposed step means the group sits at its minimum: stop without paying
    # for one more evaluation
    small &= finite
    evalg = active & finite & ~small
    new = evaluate(prob, cand, evalg, cphi)
    accept, rho, newly = step_verdict(cur.cost, new.cost, pred, active=active, evalg=evalg,
                                      finite=finite, small=small, ftol=ftol)
    _merge(cur, new, prob, accept)
    st.theta = np.where(accept[grp][:, None], cand, theta)
    edge = ((st.theta[:, :2] <= box_lo) | (st.theta[:, :2] >= box_hi)).any(axis=1)
    st.stopped |= edge & prob.free[:, :2].any(axis=1)
    if dphi is not None:
        st.phi = np.where(accept[:, None], cphi, phi)
    st.lam, st.nu = update_damping(st.lam, st.nu, rho, accept=accept, active=active)
    st.converged |= newly
    st.done |= newly | (st.lam > 1e16)


def step_verdict(cost, new_cost, pred, *, active, evalg, finite, small, ftol):
    """Accept a trial step and test convergence, per group (Moré's trust-region rules).

    Parameters
    ----------
    cost, new_cost, pred : ndarray of shape (g,)
        Current cost, cost at the trial point (inf/NaN where not evaluated) and the cost
        decrease the linear model predicts.
    active, evalg, finite, small : ndarray of bool, shape (g,)
        Groups still iterating, groups whose trial point was evaluated, groups whose step is
        finite, groups whose step is negligible (below ``xtol`` errors).
    ftol : float
        Relative cost-decrease tolerance.

    Returns
    -------
    accept : ndarray of bool, shape (g,)
    rho : ndarray of shape (g,)
        Actual / predicted decrease (the damping update's input).
    newly : ndarray of bool, shape (g,)
        Groups converged by this step.
    """
    actual = cost - new_cost
    accept = evalg & np.isfinite(new_cost) & (new_cost <= cost)
    rho = np.where(pred > 0, actual / np.where(pred > 0, pred, 1.0),
                   np.where(actual >= 0, 1.0, -1.0))
    tol = ftol * cost
    newly = active & (
        small
        | (accept & (((actual <= tol) & (rho > 0.25)) | (new_cost == 0)))
        | (~accept & (pred <= tol) & finite))
    return accept, rho, newly


def update_damping(lam, nu, rho, *, accept, active):
    """Nielsen's damping update per group: shrink on a good step, grow on a rejected one.

    Returns
    -------
    lam, nu : ndarray of shape (g,)
    """
    shrink = np.maximum(1.0 / 3.0, 1.0 - (2.0 * np.clip(rho, 0, 1) - 1.0) ** 3)
    rej = active & ~accept
    lam = np.where(accept, np.maximum(lam * shrink, 1e-12), np.where(rej, lam * nu, lam))
    nu = np.where(accept, 2.0, np.where(rej, nu * 2.0, nu))
    return lam, nu


def levenberg_marquardt(prob, theta0, *, phi0=None, maxiters=100, xtol=1e-6, ftol=1e-10,
                        lam0=1e-3):
    """Minimise every group's weighted sum of squares at once.

    Groups that have converged are dropped from the working problem once they are the
    majority, so late iterations only pay for the groups still iterating.

    Parameters
    ----------
    prob : Problem
    theta0 : ndarray of shape (m, K)
        Initial per-source parameters.
    phi0 : ndarray of shape (G, S), optional
        Initial group parameters (zeros by default).
    xtol : float
        A step is negligible when each component is below ``xtol`` times the parameter's
        conditional error ``1 / sqrt((J^T J)_kk)``.
    ftol : float
        Relative decrease of the cost below which a group has converged.

    Returns
    -------
    ``theta (m, K), phi (G, S), evaluation at theta, niter (G,), converged (G,),
    stopped (m,)`` -- ``stopped``: the source's position reached the edge of its fit stamp
    and was held there.
    """
    n_groups = prob.layout.n_groups
    theta = np.clip(theta0, prob.lo, prob.hi)
    phi = (np.zeros((n_groups, prob.params.n_group)) if phi0 is None
           else np.array(phi0, dtype=float))
    ev = evaluate(prob, theta, np.ones(n_groups, dtype=bool), phi)
    out = (theta.copy(), phi.copy(), ev, np.zeros(n_groups, dtype=np.int64),
           np.zeros(n_groups, dtype=bool), np.zeros(len(theta), dtype=bool))
    st = _State(prob, theta, phi, Evaluation(
        ev.cost.copy(), ev.grad.copy(), ev.blocks.copy(), ev.resid.copy(), ev.ggrad.copy(),
        ev.gblock.copy(), ev.cross.copy()), lam0)
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
