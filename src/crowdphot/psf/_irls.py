"""Machinery of the reweighted maximum-likelihood fit (see :mod:`crowdphot.psf.likelihood`).

Private: fixed stamps, the expected image kept up to date, the group log-likelihood and its
step-halving safeguard, direct Gauss-Newton reweighting steps for isolated sources, and the
final observed-information / Cox-Snell refinement.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from crowdphot.core.batched import stamp_origin
from crowdphot.core.crlb import bounds_from_fisher, pixel_variance

_PARAMS = ("x", "y", "flux")


def _stamp_background(shape, local_bkg, xlo, ylo, fit_shape, use):
    """Image of the owners' local backgrounds over their fit stamps (mean where shared)."""
    ny, nx = shape
    fy, fx = fit_shape
    idx = np.flatnonzero(use & np.isfinite(local_bkg) & (local_bkg != 0))
    out = np.zeros(ny * nx)
    if not len(idx):
        return out.reshape(shape)
    rows = ylo[idx, None] + np.arange(fy)
    cols = xlo[idx, None] + np.arange(fx)
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    flat = (rows[:, :, None] * nx + cols[:, None, :])[inside]
    val = np.broadcast_to(local_bkg[idx, None, None], inside.shape)[inside]
    total = np.bincount(flat, weights=val, minlength=ny * nx)
    count = np.bincount(flat, minlength=ny * nx)
    np.divide(total, count, out=out, where=count > 0)
    return out.reshape(shape)


class _Renderer:
    """Expected image = background + every source's model on a stamp fixed at its start.

    The stamps (``render_shape``, centred on the initial positions, so that each contains the
    source's fit stamp) never move, so the image can be updated for a few sources by adding
    their new models and subtracting their old ones, exactly.
    """

    def __init__(self, psf, x, y, finite, shape, render_shape):
        ny, nx = shape
        ry, rx = render_shape
        self.psf, self.shape, self.rshape = psf, shape, (ry, rx)
        self.xlo, self.ylo = stamp_origin(np.where(finite, x, 0.0), np.where(finite, y, 0.0),
                                          (ry, rx))
        rows = self.ylo[:, None, None] + np.arange(ry)[None, :, None]
        cols = self.xlo[:, None, None] + np.arange(rx)[None, None, :]
        n = len(x)
        self.inside = (((rows >= 0) & (rows < ny)) & ((cols >= 0) & (cols < nx))).reshape(n, -1)
        self.flat = np.broadcast_to(np.clip(rows, 0, ny - 1) * nx + np.clip(cols, 0, nx - 1),
                                    (n, ry, rx)).reshape(n, -1)

    def add(self, out, theta, idx, sign=1.0):
        """Add ``sign`` times the models of sources ``idx`` (finite x, y, flux) into ``out``."""
        idx = idx[np.all(np.isfinite(theta[idx, :3]), axis=1)]
        if not len(idx):
            return out
        u = self.psf._stamps(theta[idx, 0], theta[idx, 1], self.xlo[idx], self.ylo[idx],
                             self.rshape)
        vals = (sign * theta[idx, 2])[:, None] * np.asarray(u).reshape(len(idx), -1)
        keep = self.inside[idx]
        flat = out.reshape(-1)
        if keep.sum() > flat.size // 16:  # many sources: one pass over the image
            flat += np.bincount(self.flat[idx][keep], vals[keep], minlength=flat.size)
        else:  # a few: touch only their pixels
            np.add.at(flat, self.flat[idx][keep], vals[keep])
        return out

    def full(self, theta, background):
        self.background = background
        out = np.array(background, dtype=float, copy=True, order="C")
        return self.add(out, theta, np.arange(len(theta)))

    def update(self, expect, new, old, idx):
        """``expect`` with sources ``idx`` moved from ``old`` to ``new`` parameters (a copy)."""
        if 2 * len(idx) > len(new):  # most sources moved: render them all once
            return self.full(new, self.background)
        out = expect.copy()
        self.add(out, old, idx, -1.0)
        return self.add(out, new, idx)


def _merge(full, res, sub):
    if full is None:
        return {f.name: np.array(getattr(res, f.name), copy=True)
                for f in dataclasses.fields(res)}
    for name, arr in full.items():
        arr[sub] = getattr(res, name)
    return full


#: Engine tolerances of the reweighted solves: the first only sets the next weights; the later
#: ones solve to ~1e-4 standard errors (relative chi-square change 1e-8), well inside the
#: outer stopping rule (``tol`` = 1e-3 standard errors).
_FIRST_TOL = {"xtol": 1e-8, "ftol": 1e-5}
_LATER_TOL = {"xtol": 1e-8, "ftol": 1e-8}


def _inner_tolerances(iteration, user):
    base = _FIRST_TOL if iteration == 0 else _LATER_TOL
    return {**base, **user}


def _background_with_sky(background, theta, xlo, ylo, fshape, finite, fit_sky):
    if not fit_sky:
        return background
    return background + _stamp_background(background.shape, theta[:, 3], xlo, ylo, fshape,
                                          finite)


class _StampSet:
    """Image indices and validity of every source's fit stamp (fixed for the whole fit)."""

    def __init__(self, data, mask, xlo, ylo, fshape, finite):
        ny, nx = data.shape
        fy, fx = fshape
        rows = ylo[:, None, None] + np.arange(fy)[None, :, None]
        cols = xlo[:, None, None] + np.arange(fx)[None, None, :]
        n = len(xlo)
        inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
        self.rc = np.broadcast_to(np.clip(rows, 0, ny - 1), (n, fy, fx)).reshape(n, -1)
        self.cc = np.broadcast_to(np.clip(cols, 0, nx - 1), (n, fy, fx)).reshape(n, -1)
        valid = inside.reshape(n, -1) & np.isfinite(data[self.rc, self.cc])
        valid &= finite[:, None]
        if mask is not None:
            valid &= ~np.asarray(mask, dtype=bool)[self.rc, self.cc]
        self.valid = valid
        self.xlo, self.ylo, self.shape = xlo, ylo, (fy, fx)


class _GaussNewton:
    """Direct reweighted Gauss-Newton steps for isolated sources near their solution.

    Once the engine has solved an isolated source (group of one, no finite bounds) and its
    reweighting step is below one standard error, the next reweighted weighted-least-squares
    solve is replaced by its Gauss-Newton step (the first iteration the engine would take;
    exact to second order in the step, which is < 1e-3 sigma when the outer rule stops):
    the same fixed point and stopping rule at a fraction of an engine call.
    """

    def __init__(self, psf, st, data, local_bkg, fixed_d, bounds_d, gid, n, npar, gain, rn):
        self.psf, self.st, self.npar = psf, st, npar
        self.d = data[st.rc, st.cc] - local_bkg[:, None]
        _, inv, counts = np.unique(gid, return_inverse=True, return_counts=True)
        alone = counts[inv] == 1
        if bounds_d:
            for lo, hi in bounds_d.values():
                alone &= ~(np.isfinite(lo) | np.isfinite(hi))
        self.alone = alone
        self.fixed = np.zeros((n, npar), dtype=bool)
        for k, name in enumerate(_PARAMS):
            if fixed_d and name in fixed_d:
                self.fixed[:, k] = fixed_d[name]
        self.touched = np.zeros(n, dtype=bool)
        self.gain, self.rn = gain, rn

    def eligible(self, idx, res, new):
        # the next step's size is checked when it is taken (``step`` falls back if large)
        return (self.alone[idx] & res.fitted & ~res.left_stamp & ~res.absurd & res.cov_ok
                & np.all(np.isfinite(new), axis=1))

    def _system(self, idx, theta, expect):
        st = self.st
        x, y, f = (theta[idx, k] for k in range(3))
        u, ux, uy = (np.asarray(a).reshape(len(idx), -1) for a in self.psf._stamps_grad(
            x, y, st.xlo[idx], st.ylo[idx], st.shape))
        jac = [f[:, None] * ux, f[:, None] * uy, u]
        model = f[:, None] * u
        if self.npar == 4:
            jac.append(np.ones_like(u))
            model = model + theta[idx, 3][:, None]
        jac = np.stack(jac, axis=1)
        valid = st.valid[idx]
        var = pixel_variance(expect[st.rc[idx], st.cc[idx]], self.rn, self.gain)
        w = np.where(valid, 1.0 / var, 0.0)
        resid = np.where(valid, self.d[idx] - model, 0.0)
        free = ~self.fixed[idx]
        both = free[:, :, None] & free[:, None, :]
        jw = jac * w[:, None, :]
        k = np.where(both, jw @ jac.transpose(0, 2, 1), np.eye(self.npar)[None])
        g = np.where(free, (jw @ resid[:, :, None])[:, :, 0], 0.0)
        return k, g, free, resid, w, valid

    def step(self, idx, theta, expect):
        """``(new, sigma, still_eligible)`` for sources ``idx``."""
        k, g, free, *_ = self._system(idx, theta, expect)
        self.touched[idx] = True
        _, cov = bounds_from_fisher(k)
        ok = np.all(np.isfinite(cov), axis=(1, 2))
        delta = np.einsum("npq,nq->np", np.nan_to_num(cov), g)
        sig = np.where(free, np.sqrt(np.abs(np.einsum("nii->ni", np.nan_to_num(cov)))), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            small = np.all(np.where(free, np.abs(delta) / sig, 0.0) < 1.0, axis=1)
        ok &= small
        new = theta[idx, :self.npar] + np.where(ok[:, None], delta, 0.0)
        return new, np.where(ok[:, None], sig, np.inf), ok

    def finalize(self, full, idx, theta, expect):
        """Values, expected-information errors and fit metrics at the final parameters."""
        k, _, free, resid, w, valid = self._system(idx, theta, expect)
        _, cov = bounds_from_fisher(k)
        cov = np.where(free[:, :, None] & free[:, None, :], cov, np.nan)
        names = ("x", "y", "flux", "sky")[:self.npar]
        for j, name in enumerate(names):
            full[name][idx] = theta[idx, j]
            with np.errstate(invalid="ignore"):
                full[f"{name}_err"][idx] = np.sqrt(cov[:, j, j])
        p = full["cov"].shape[1]
        full["cov"][idx] = np.nan
        full["cov"][idx, :self.npar, :self.npar] = cov[:, :p, :p]
        flux = theta[idx, 2]
        chi2 = np.einsum("nk,nk->n", resid * resid, w)
        full["chi2"][idx] = chi2
        with np.errstate(invalid="ignore", divide="ignore"):
            full["reduced_chi2"][idx] = chi2 / (full["n_pixels"][idx] - full["n_free"][idx])
            full["qfit"][idx] = np.abs(resid).sum(axis=1) / flux
            st = self.st
            fy, fx = st.shape
            x0 = st.xlo[idx] + fx // 2
            y0 = st.ylo[idx] + fy // 2
            cen = (y0 - st.ylo[idx]) * fx + (x0 - st.xlo[idx])
            rows = np.arange(len(idx))
            full["cfit"][idx] = np.where(valid[rows, cen], resid[rows, cen], np.nan) / flux


class _GroupLikelihood:
    """Shifted-Poisson log-likelihood of each group over its fit stamps (a pixel once)."""

    def __init__(self, data, xlo, ylo, fshape, gid, finite, mask, read_noise, gain):
        ny, nx = data.shape
        fy, fx = fshape
        rows = ylo[:, None, None] + np.arange(fy)[None, :, None]
        cols = xlo[:, None, None] + np.arange(fx)[None, None, :]
        inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx) & finite[:, None, None]
        flat = (np.clip(rows, 0, ny - 1) * nx + np.clip(cols, 0, nx - 1)).reshape(len(xlo), -1)
        use = inside.reshape(len(xlo), -1) & np.isfinite(data.ravel()[flat])
        if mask is not None:
            use &= ~np.asarray(mask, dtype=bool).ravel()[flat]
        _, grp = np.unique(gid, return_inverse=True)
        rr, cc = np.nonzero(use)
        key = grp[rr].astype(np.int64) * (ny * nx) + flat[rr, cc]
        _, first = np.unique(key, return_index=True)
        self.rows, self.pix, self.grp = rr[first], flat[rr[first], cc[first]], grp
        self.n_groups = int(grp.max()) + 1 if len(grp) else 0
        self.r2 = float(read_noise) ** 2
        self.gain = float(gain)
        self.d = self.gain * data.ravel()[self.pix] + self.r2

    def per_group(self, expect, groups=None, base=None):
        """Log-likelihood per group; with ``groups`` (bool per group) only those are
        recomputed and the others are taken from ``base``."""
        from crowdphot.core.crlb import VARIANCE_FLOOR_E

        pix, d, pgrp = self.pix, self.d, self.grp[self.rows]
        if groups is not None:
            sel = groups[pgrp]
            pix, d, pgrp = pix[sel], d[sel], pgrp[sel]
        mu = np.maximum(self.gain * np.maximum(expect.ravel()[pix], 0.0) + self.r2,
                        VARIANCE_FLOOR_E)
        out = np.bincount(pgrp, d * np.log(mu) - mu, minlength=self.n_groups)
        if groups is not None:
            out = np.where(groups, out, base)
        return out


def _halve_steps(ll, ll_old, theta, cand, expect, background, renderer, geom,
                 n_halvings=6):
    """Accept each group's step unless it lowers the likelihood; then halve it (unchecked).

    Returns ``(expectation, parameters, group log-likelihoods, stuck)`` of the accepted
    state; ``stuck`` marks sources whose step was cut to 1/8 or less, or that no halving made
    acceptable: the reweighting map does not contract there, and going on would only creep.
    """
    xlo, ylo, fshape, finite, fit_sky = geom
    moved = np.any(cand != theta, axis=1) & np.all(np.isfinite(cand[:, :3]), axis=1)
    if not moved.any():
        return expect, theta, ll_old, np.zeros(len(theta), dtype=bool)

    def state(par, changed):
        groups = np.zeros(ll.n_groups, dtype=bool)
        groups[ll.grp[changed]] = True
        if fit_sky:  # the fitted sky enters the background: recompute everything
            bg = _background_with_sky(background, par, xlo, ylo, fshape, finite, fit_sky)
            ex = renderer.full(par, bg)
        else:
            ex = renderer.update(expect, par, theta, np.flatnonzero(changed))
        return ex, ll.per_group(ex, groups, ll_old)

    cur = theta.copy()
    stuck = np.zeros(len(theta), dtype=bool)
    for h in range(n_halvings + 1):
        trial = cur.copy()
        trial[moved] = theta[moved] + 0.5**h * (cand[moved] - theta[moved])
        changed = np.any(trial != theta, axis=1)
        trial_expect, ll_new = state(trial, changed)
        bad_src = (ll_new < ll_old - 1e-10 * np.abs(ll_old))[ll.grp] & moved
        cur = np.where(bad_src[:, None], cur, trial)
        if h >= 3:
            stuck |= moved & ~bad_src
        if not bad_src.any():
            return trial_expect, cur, ll_new, stuck
        moved = bad_src
    # groups that no step improves stay where they were
    cur = np.where(moved[:, None], theta, cur)
    ex, ll_cur = state(cur, np.any(cur != theta, axis=1))
    return ex, cur, ll_cur, stuck | moved


def _refine_isolated(full, psf, data, background, mask, gid, xlo, ylo, fshape, read_noise,
                     gain, fit_sky, bias_correction):
    """Observed-information errors and Cox-Snell bias correction of isolated sources.

    See :func:`crowdphot.core.crlb.observed_information` and
    :func:`crowdphot.core.crlb.cox_snell_bias` (one set of PSF derivatives serves both).

    In place on the merged result ``full``; ``data`` includes the sky, ``background`` is the
    expectation without the stars. Sources whose observed information is not positive
    definite keep the expected-information errors.
    """
    _, inv, counts = np.unique(gid, return_inverse=True, return_counts=True)
    vals = np.column_stack([full["x"], full["y"], full["flux"]])
    iso = full["fitted"] & (counts[inv] == 1) & np.all(np.isfinite(vals), axis=1)
    idx = np.flatnonzero(iso)
    if not len(idx):
        return
    ny, nx = data.shape
    fy, fx = fshape
    rows = ylo[idx, None, None] + np.arange(fy)[None, :, None]
    cols = xlo[idx, None, None] + np.arange(fx)[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    rc, cc = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    valid = inside & np.isfinite(data[rc, cc])
    if mask is not None:
        valid &= ~np.asarray(mask, dtype=bool)[rc, cc]
    from crowdphot.core.crlb import _counts, _cox_snell, _derivatives, _observed

    names = ("x", "y", "flux", "sky")[:4 if fit_sky else 3]
    free = np.isfinite(np.einsum("nii->ni", full["cov"][idx]))[:, :len(names)]
    for a in range(0, len(idx), 50_000):
        part = slice(a, a + 50_000)
        sel = idx[part]
        der = _derivatives(psf, vals[sel, 0], vals[sel, 1], vals[sel, 2], fshape, xlo[sel],
                           ylo[sel], gain, fit_sky)
        m = _counts(der[0], vals[sel, 2], background[rc[part], cc[part]], read_noise, gain)
        jo = _observed(der, m, data[rc[part], cc[part]], read_noise, gain, valid[part])
        fr = free[part]
        # fixed parameters leave the information matrix
        jo = np.where(fr[:, :, None] & fr[:, None, :], jo, np.eye(len(names))[None])
        sig, cov = bounds_from_fisher(jo)
        ok = np.all(np.isfinite(sig), axis=1)  # positive definite (bounds_from_fisher)
        cov = np.where(fr[:, :, None] & fr[:, None, :], cov, np.nan)
        rows_ok = sel[ok]
        full["cov"][rows_ok] = cov[ok]
        for k, name in enumerate(names):
            full[f"{name}_err"][rows_ok] = np.where(fr[ok, k], sig[ok, k], np.nan)
        if bias_correction:
            b = _cox_snell(der, m, valid[part], fr)
            b = np.where(fr, np.nan_to_num(b), 0.0)
            for k, name in enumerate(names):
                full[name][sel] = full[name][sel] - b[:, k]
