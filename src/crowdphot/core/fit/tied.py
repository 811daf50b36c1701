"""Batched fits of tied source copies: one shared parameter vector per source, many copies.

A joint fit of many exposures (ALLFRAME-style) sees each source once per exposure: a *copy*
with its own ``fit_shape`` stamp, pixel grid, weights and PSF model. The copies' per-source
parameters ``theta = (x, y, flux)`` are functions of one shared vector per source ``p`` (e.g.
a sky offset ``(xi, eta)`` mapped through each exposure's WCS, and one flux per filter),
described by :class:`crowdphot.core.fit.params.TiedParams` (the local Jacobian
``d theta / d p`` of every copy).

How the general engine runs it
------------------------------
* All frames are laid side by side on one *virtual mosaic* (frame ``f`` shifted by
  ``origin[f]`` pixels in x, with gaps wider than any PSF support), so the copies are ordinary
  sources of one batched problem: :class:`FramePSF` dispatches every PSF evaluation to the
  frame's own model, :func:`crowdphot.core.fit.pairs.build_interactions` finds which copies
  reach which stamps (never across frames), and :func:`crowdphot.core.fit.lm.evaluate` gives
  the copies' gradients and ``3 x 3`` normal blocks in one batched pass.
* The chain rule turns them into the shared parameters' gradient and ``P x P`` blocks
  (:meth:`TiedParams.reduce_vector`, :meth:`TiedParams.reduce_blocks`); sources are grouped
  (a group holds all copies of its sources) and each group's system is solved by
  :func:`crowdphot.core.fit.solve.solve_groups` (dense buckets, large groups by CG).
* Levenberg-Marquardt per group as :mod:`crowdphot.core.fit.lm` (damping, acceptance and the
  convergence tests in units of each parameter's error), with the trust region in pixels of
  every copy: a step moves no copy by more than ``MAX_SHIFT`` pixels, and a source whose
  position reaches the edge of one of its copies' stamps is stopped there.

With one frame and the identity tie this is exactly the single-image grouped fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from crowdphot.core.fit.dense import bucket_of
from crowdphot.core.fit.lm import MAX_SHIFT, Problem, evaluate, step_verdict, update_damping
from crowdphot.core.fit.pairs import build_interactions
from crowdphot.core.fit.params import ParamSet
from crowdphot.core.fit.solve import Layout, inverse_groups, make_layout, scale_blocks, solve_groups
from crowdphot.core.fit.stamps import gather_stamps, shared_pixel_mask

__all__ = ["FramePSF", "TiedProblem", "TiedResult", "build_tied", "solve_tied"]

#: Fallback support (pixels) of a PSF model without a bounding box.
DEFAULT_SUPPORT = 51


class FramePSF:
    """The PSF models of several frames as one batched model on a virtual mosaic.

    Frame ``f`` occupies virtual columns ``origin[f] .. origin[f] + width[f] - 1``; an
    evaluation whose stamp starts at virtual column ``xlo`` goes to the model of the frame
    holding ``xlo`` (shifted back to the frame's own pixels).

    Parameters
    ----------
    psfs : sequence of BatchedPSFMixin, length F
    widths : sequence of int, length F
        ``nx`` of each frame.
    margin : int
        Gap between frames (larger than any PSF support plus a stamp).

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> fp = FramePSF([CircularGaussianPRF(fwhm=2.0)] * 2, [20, 20], 40)
    >>> fp.origin.tolist(), fp.frame_of(np.array([45, 100])).tolist()
    ([40, 100], [0, 1])
    """

    def __init__(self, psfs, widths, margin):
        self.psfs = list(psfs)
        widths = np.asarray(widths, dtype=np.int64)
        margin = int(margin)
        self.origin = margin + np.concatenate([[0], np.cumsum(widths + margin)[:-1]])
        self.bounds = self.origin - margin // 2
        self.margin = margin

    def frame_of(self, xlo):
        """Frame index of virtual stamp origins ``xlo``."""
        return np.searchsorted(self.bounds, xlo, side="right") - 1

    @property
    def default_stamp_shape(self):
        """The largest support of the frames' models."""
        return support_of(self.psfs)

    def _dispatch(self, name, x, y, xlo, ylo, shape):
        f = self.frame_of(xlo)
        if len(f) and f.min() == f.max():
            o = self.origin[f[0]]
            return getattr(self.psfs[f[0]], name)(x - o, y, xlo - o, ylo, shape)
        outs = None
        for k in np.unique(f):
            sel = np.flatnonzero(f == k)
            o = self.origin[k]
            res = getattr(self.psfs[k], name)(x[sel] - o, y[sel], xlo[sel] - o, ylo[sel], shape)
            single = not isinstance(res, tuple)
            res = (res,) if single else res
            if outs is None:
                outs = [np.empty((len(x), *shape)) for _ in res]
            for out, r in zip(outs, res, strict=True):
                out[sel] = r
        if outs is None:
            outs = [np.empty((0, *shape))]
        return outs[0] if single else tuple(outs)

    def _stamps(self, x, y, xlo, ylo, shape):
        return self._dispatch("_stamps", x, y, xlo, ylo, shape)

    def _stamps_grad(self, x, y, xlo, ylo, shape):
        return self._dispatch("_stamps_grad", x, y, xlo, ylo, shape)


def support_of(psfs):
    """Largest ``default_stamp_shape`` of ``psfs`` (:data:`DEFAULT_SUPPORT` without one)."""
    sy = sx = 1
    for psf in psfs:
        try:
            a, b = (int(v) for v in psf.default_stamp_shape)
        except (ValueError, NotImplementedError, AttributeError, TypeError):
            a = b = DEFAULT_SUPPORT
        sy, sx = max(sy, a), max(sx, b)
    return sy, sx


@dataclass(frozen=True)
class TiedProblem:
    """A tied fit's static inputs (see :func:`build_tied`); copies sorted by group.

    Attributes
    ----------
    prob : Problem
        The copies as sources of one batched problem on the virtual mosaic.
    psf : FramePSF
    copy : ndarray of int64, shape (m,)
        Input index of each kept copy (the fit order).
    frame, star : ndarray of int64, shape (m,)
        Frame and *fitted-source rank* of each copy.
    xoff : ndarray of float, shape (m,)
        Virtual x offset of each copy (its frame's origin).
    sources : ndarray of int64, shape (n,)
        Input index of each fitted source, in rank order (sorted by group).
    layout : Layout
        Group layout of the fitted sources' ``P x P`` blocks.
    block_index : ndarray of int64
        Source block of every copy block.
    n_pixels : ndarray of int64, shape (m,)
        Valid pixels of each copy's own stamp.
    n_pixels_fit : ndarray of int64, shape (m,)
        Of which not already held by an earlier stamp of the group in the same frame.
    data0 : ndarray of shape (m, npix)
        Stamp data before any neighbour subtraction.
    valid : ndarray of bool, shape (m, npix)
    """

    prob: Problem
    psf: FramePSF
    copy: np.ndarray
    frame: np.ndarray
    star: np.ndarray
    xoff: np.ndarray
    sources: np.ndarray
    layout: Layout
    block_index: np.ndarray
    n_pixels: np.ndarray
    n_pixels_fit: np.ndarray
    data0: np.ndarray
    valid: np.ndarray

    @property
    def n_star(self):
        return len(self.sources)


def build_tied(frames, x, y, frame, star, star_group, fit_shape, *, support_shape=None,
               support_radius=None, dense_max=64, shared_pixels="once"):
    """Gather the stamps of all copies and the interaction structure of a tied fit.

    Parameters
    ----------
    frames : sequence of (data, error or None, mask or None, psf_model), length F
        ``data`` and ``error`` of shape (ny_f, nx_f); ``mask`` True for pixels to ignore.
    x, y : ndarray of shape (m0,)
        Initial position of every candidate copy in its frame's pixels (stamps are placed
        there, as the single-image fitter places them).
    frame, star : ndarray of int, shape (m0,)
        Frame and source index of every candidate copy.
    star_group : ndarray of int, shape (n0,)
        Group label of every source (copies of sources sharing a label are fitted jointly).
    fit_shape : (fy, fx)
    support_shape : (sy, sx), optional
        Extent of a PSF's support for coupling copies to stamps (default: the largest
        ``default_stamp_shape`` of the frames' models).
    support_radius : ndarray of shape (m0,), optional
        Coupling half-width (pixels) of every candidate copy instead of ``support_shape``
        (DAOPHOT's PSF radius growing with flux, as the single-image all-star fit's
        ``support_radius``): a copy is coupled to a stamp of its group only within it.
    dense_max : int
        Groups (in sources) up to this size are solved densely.
    shared_pixels : {'once', 'photutils'}
        As :func:`crowdphot.core.fit.fit_psf`, per frame.

    Returns
    -------
    TiedProblem
        Only copies with at least one valid pixel are kept, and only sources with at least
        one kept copy are fitted.
    """
    fit_shape = tuple(int(v) for v in fit_shape)
    npix = fit_shape[0] * fit_shape[1]
    frame = np.asarray(frame, dtype=np.int64)
    star = np.asarray(star, dtype=np.int64)
    psfs = [f[3] for f in frames]
    support = tuple(support_shape) if support_shape is not None else support_of(psfs)
    # frames far enough apart that no PSF (its whole support, whatever the coupling support)
    # reaches another frame's stamps
    margin = 2 * (max(max(support), max(support_of(psfs))) + max(fit_shape)) + 8
    fpsf = FramePSF(psfs, [f[0].shape[1] for f in frames], margin)
    m0 = len(x)
    xlo = np.zeros(m0, dtype=np.int64)
    ylo = np.zeros(m0, dtype=np.int64)
    data = np.zeros((m0, npix))
    weight = np.zeros((m0, npix))
    valid = np.zeros((m0, npix), dtype=bool)
    n_pixels = np.zeros(m0, dtype=np.int64)
    ok = np.zeros(m0, dtype=bool)
    for f, (img, err, msk, _) in enumerate(frames):
        sel = np.flatnonzero(frame == f)
        if len(sel) == 0:
            continue
        st = gather_stamps(img, x[sel], y[sel], np.ones(len(sel)), fit_shape, mask=msk,
                           error=err, n_free=np.ones(len(sel), dtype=np.int64))
        xlo[sel], ylo[sel] = st.xlo, st.ylo
        data[sel], weight[sel], valid[sel] = st.data, st.weight, st.valid
        n_pixels[sel] = st.n_pixels
        ok[sel] = st.reason == 0
    kept = np.flatnonzero(ok)
    # fitted sources: those with a kept copy, sorted by group (stable)
    n0 = len(star_group)
    has = np.zeros(n0, dtype=bool)
    has[star[kept]] = True
    src = np.flatnonzero(has)
    src = src[np.argsort(np.asarray(star_group)[src], kind="stable")]
    _, sgroup = np.unique(np.asarray(star_group)[src], return_inverse=True)
    sgroup = sgroup.astype(np.int64)
    rank = np.full(n0, -1, dtype=np.int64)
    rank[src] = np.arange(len(src))
    order = kept[np.lexsort((frame[kept], rank[star[kept]]))]
    cstar = rank[star[order]]
    cgroup = sgroup[cstar]
    cframe = frame[order]
    xoff = fpsf.origin[cframe].astype(float)
    cw = weight[order]
    npix_fit = n_pixels[order].copy()
    if shared_pixels == "once":
        for f in np.unique(cframe):
            sel = np.flatnonzero(cframe == f)
            g = cgroup[sel]
            if len(np.unique(g)) == len(g):
                continue
            rep = shared_pixel_mask(xlo[order][sel], ylo[order][sel], valid[order][sel],
                                    fit_shape, g, frames[f][0].shape[1])
            cw[sel] = np.where(rep, 0.0, cw[sel])
            npix_fit[sel] -= rep.sum(axis=1)
    cxlo = xlo[order] + fpsf.origin[cframe]
    cylo = ylo[order]
    xv = np.asarray(x, dtype=float)[order] + xoff
    yv = np.asarray(y, dtype=float)[order]
    if support_radius is not None:
        support = np.asarray(support_radius, dtype=float)[order][:, None]
    inter = build_interactions(xv, yv, cxlo, cylo, cgroup, fit_shape, support_shape=support)
    clay = make_layout(cgroup, inter, dense_max=10**9)
    m = len(order)
    prob = Problem(psf=fpsf, fit_shape=fit_shape, data=data[order], weight=cw, xlo=cxlo,
                   ylo=cylo, inter=inter, layout=clay, free=np.ones((m, 3), dtype=bool),
                   lo=np.full((m, 3), -np.inf), hi=np.full((m, 3), np.inf), params=ParamSet())
    # source-level layout
    n = len(src)
    key = cstar[inter.bs1] * np.int64(max(n, 1)) + cstar[inter.bs2]
    keys, bindex = np.unique(key, return_inverse=True)
    sizes = np.bincount(sgroup, minlength=int(sgroup.max()) + 1 if n else 0)
    gstart = np.cumsum(sizes) - sizes
    slay = Layout(group=sgroup, local=np.arange(n) - gstart[sgroup],
                  bucket=bucket_of(sizes, dense_max), bs1=keys // max(n, 1),
                  bs2=keys % max(n, 1),
                  diag_block=np.searchsorted(keys, np.arange(n) * (max(n, 1) + 1)))
    return TiedProblem(prob=prob, psf=fpsf, copy=order, frame=cframe, star=cstar, xoff=xoff,
                       sources=src, layout=slay, block_index=bindex.astype(np.int64),
                       n_pixels=n_pixels[order], n_pixels_fit=npix_fit, data0=data[order],
                       valid=valid[order])


@dataclass(frozen=True)
class TiedResult:
    """Result of :func:`solve_tied` for ``n`` fitted sources (rank order) and ``m`` copies."""

    p: np.ndarray  # (n, P)
    cov: np.ndarray  # (n, P, P), NaN when unavailable
    cov_ok: np.ndarray  # (n,)
    niter: np.ndarray  # (n,) iterations of the source's group
    converged: np.ndarray  # (n,)
    stopped: np.ndarray  # (n,) reached the edge of one of its copies' stamps
    theta: np.ndarray  # (m, K) final copy parameters (frame pixels)
    resid: np.ndarray  # (m, npix) data - model on each copy's stamp
    chi2: np.ndarray  # (m,) weighted chi-square of each copy's own stamp


def _group_all(cond, grp, n_groups):
    return np.bincount(grp, ~cond, minlength=n_groups) == 0


def _reduce(tp, tie, ev):
    lay = tp.layout
    g = tie.reduce_vector(ev.grad)
    b = tie.reduce_blocks(ev.blocks, tp.prob.inter.bs1, tp.prob.inter.bs2, tp.block_index,
                          len(lay.bs1))
    return g, b


def solve_tied(tp, tie, p0, *, theta_fn=None, free=None, neighbors=None, groups=None,
               maxiters=100, xtol=1e-6, ftol=1e-10, lam0=1e-3, covariance=True,
               scale_by_chi2=False):
    """Levenberg-Marquardt over the shared parameters of a tied fit.

    Parameters
    ----------
    tp : TiedProblem
    tie : TiedParams
        ``star`` must be ``tp.star``; ``matrix`` is each copy's Jacobian ``d theta / d p`` (in
        frame pixels), used for the steps and the covariance.
    p0 : ndarray of shape (n, P)
        Start (rank order).
    theta_fn : callable, optional
        ``p (n, P) -> theta (m, K)`` in frame pixels: the exact copy parameters (e.g. through
        a non-linear WCS); default ``tie.theta``.
    free : ndarray of bool, shape (n, P), optional
        Parameters to fit (others held).
    neighbors : ndarray of shape (m, npix), optional
        Light of sources outside each copy's group on its stamp, subtracted from the data.
    groups : ndarray of bool, shape (G,), optional
        Groups to fit (others keep ``p0``; their results are still evaluated at ``p0``).
    maxiters, xtol, ftol, lam0 : as :func:`crowdphot.core.fit.lm.levenberg_marquardt`
    covariance : bool
        Compute the covariance of ``p``.
    scale_by_chi2 : bool
        Scale the covariance by each group's ``chi2 / dof`` (no error arrays).

    Returns
    -------
    TiedResult
    """
    theta_fn = tie.theta if theta_fn is None else theta_fn
    prob = tp.prob if neighbors is None else replace(tp.prob, data=tp.data0 - neighbors)
    lay = tp.layout
    grp = lay.group
    n_groups = lay.n_groups
    cgrp = prob.layout.group
    n, n_p = p0.shape
    free = np.ones((n, n_p), dtype=bool) if free is None else free
    box_lo = np.column_stack([prob.xlo - tp.xoff - 0.5, prob.ylo - 0.5])
    box_hi = box_lo + np.array(prob.fit_shape[::-1], dtype=float)

    def virtual(theta):
        th = theta.copy()
        th[:, 0] += tp.xoff
        return th

    p = np.array(p0, dtype=float)
    theta = theta_fn(p)
    ev = evaluate(prob, virtual(theta), np.ones(n_groups, dtype=bool))
    lam = np.full(n_groups, lam0)
    nu = np.full(n_groups, 2.0)
    niter = np.zeros(n_groups, dtype=np.int64)
    converged = np.zeros(n_groups, dtype=bool)
    done = ~np.isfinite(ev.cost)
    if groups is not None:
        done |= ~groups
    stopped = np.zeros(n, dtype=bool)
    mpos = tie.matrix[:, :2, :]
    pos = np.abs(mpos).sum(axis=(0, 1)) > 0  # positional shared parameters
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for _ in range(maxiters):
            active = ~done
            if not active.any():
                break
            niter[active] += 1
            g, b = _reduce(tp, tie, ev)
            scaled, sd, usable = scale_blocks(b, lay, free & ~stopped[:, None], lam[grp])
            rhs = np.where(usable, g / sd, 0.0)
            z = solve_groups(scaled, rhs, lay, active)
            delta = np.where(active[grp][:, None] & usable, z / sd, 0.0)
            # trust region: no copy moves by more than MAX_SHIFT pixels per axis
            dpix = np.abs(np.einsum("ckp,cp->ck", mpos, delta[tie.star])).max(axis=1)
            move = np.zeros(n)
            np.maximum.at(move, tie.star, dpix)
            shrink = np.where(move > MAX_SHIFT, MAX_SHIFT / np.where(move > 0, move, 1.0), 1.0)
            delta[:, pos] *= shrink[:, None]
            fin_src = np.isfinite(delta).all(axis=1)
            finite = _group_all(fin_src, grp, n_groups)
            delta = np.where(fin_src[:, None], delta, 0.0)
            small = _group_all((np.abs(delta) * sd <= xtol).all(axis=1), grp, n_groups) & finite
            lin = np.bincount(grp, np.einsum("sk,sk->s", delta, g), minlength=n_groups)
            q = np.einsum("bk,bkl,bl->b", delta[lay.bs1], b, delta[lay.bs2])
            pred = lin - 0.5 * np.bincount(grp[lay.bs1], q, minlength=n_groups)
            evalg = active & finite & ~small
            cand = p + delta
            ctheta = theta_fn(cand)
            new = evaluate(prob, virtual(ctheta), evalg)
            accept, rho, newly = step_verdict(ev.cost, new.cost, pred, active=active,
                                              evalg=evalg, finite=finite, small=small,
                                              ftol=ftol)
            acc_s = accept[grp]
            acc_c = accept[cgrp]
            p = np.where(acc_s[:, None], cand, p)
            theta = np.where(acc_c[:, None], ctheta, theta)
            ev.cost[accept] = new.cost[accept]
            ev.grad[acc_c] = new.grad[acc_c]
            ev.resid[acc_c] = new.resid[acc_c]
            blk = accept[cgrp[prob.inter.bs1]]
            ev.blocks[blk] = new.blocks[blk]
            edge = ((theta[:, :2] <= box_lo) | (theta[:, :2] >= box_hi)).any(axis=1)
            hit = np.zeros(n, dtype=bool)
            hit[tie.star[edge]] = True
            stopped |= hit & free[:, pos].any(axis=1)
            lam, nu = update_damping(lam, nu, rho, accept=accept, active=active)
            converged |= newly
            done |= newly | (lam > 1e16)

    cov = np.full((n, n_p, n_p), np.nan)
    cov_ok = np.zeros(n, dtype=bool)
    if covariance and n:
        g, b = _reduce(tp, tie, ev)
        scaled, sd, usable = scale_blocks(b, lay, free)
        inv, gok = inverse_groups(scaled, lay, np.ones(n_groups, dtype=bool))
        kk = np.arange(n_p)
        with np.errstate(invalid="ignore"):
            diag = inv[:, kk, kk]
            sane = np.where(usable, (diag > 0) & (diag < 1e12), True).all(axis=1)
        cov = inv / (sd[:, :, None] * sd[:, None, :])
        cov = np.where(usable[:, :, None] & usable[:, None, :], cov, np.nan)
        dof = (np.bincount(cgrp, tp.n_pixels_fit, minlength=n_groups)
               - np.bincount(grp, usable.sum(axis=1), minlength=n_groups))
        if scale_by_chi2:
            with np.errstate(invalid="ignore", divide="ignore"):
                factor = np.where(dof > 0, 2.0 * ev.cost / np.maximum(dof, 1), np.nan)
            cov = cov * factor[grp][:, None, None]
        cov_ok = gok[grp] & (dof[grp] > 0) & sane & usable.any(axis=1)
        cov = np.where(cov_ok[:, None, None], cov, np.nan)
    wr = np.where(tp.valid, ev.resid, 0.0) * prob.weight
    chi2 = np.einsum("ij,ij->i", wr, wr)
    return TiedResult(p=p, cov=cov, cov_ok=cov_ok, niter=niter[grp], converged=converged[grp]
                      & ~stopped, stopped=stopped, theta=theta, resid=ev.resid, chi2=chi2)
