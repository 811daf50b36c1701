"""Observed-information errors, Cox-Snell bias correction and profile-likelihood errors of
maximum-likelihood fits.

Private helpers of :func:`crowdphot.psf.likelihood.fit_psf_likelihood`: per-stamp values of
an image, the refinement of isolated sources and small groups after the engine's likelihood
fit, and the profile-likelihood errors of close group members (:func:`profile_group_errors`).
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.batched import stamp_origin
from crowdphot.core.crlb import (
    VARIANCE_FLOOR_E,
    _counts,
    _cox_snell,
    _derivatives,
    _observed,
    bounds_from_fisher,
)
from crowdphot.psf.blends import candidate_pairs, psf_fwhm

#: Above this S/N (fitted flux over its expected-information error) the refinements are
#: skipped: the Cox-Snell bias is below 0.01 sigma (it falls as 1 / S/N**2, about
#: 0.8 / S/N sigma for a FWHM 2.5 px star on a sky of 10 e-/px) and the observed and expected
#: information agree to about 1 / S/N.
REFINE_SNR = 100.0


def _needs_refinement(full):
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.abs(full["flux"]) / full["flux_err"]
    return ~(snr > REFINE_SNR)  # NaN errors (fixed flux...) are refined


def stamp_values(image, xlo, ylo, fit_shape):
    """Values of ``image`` (ny, nx) over every stamp, shape (n, fy, fx), and the in-image mask.

    Pixels outside the image read 0 and are False in the mask.
    """
    ny, nx = image.shape
    fy, fx = fit_shape
    rows = ylo[:, None] + np.arange(fy)
    cols = xlo[:, None] + np.arange(fx)
    inside = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    vals = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
    return np.where(inside, vals, 0.0), inside


def refine_isolated(full, psf, counts, background, valid, gid, xlo, ylo, fshape, read_noise,
                    gain, fit_sky, bias_correction):
    """Observed-information errors and Cox-Snell bias correction of isolated sources.

    See :func:`crowdphot.core.crlb.observed_information` and
    :func:`crowdphot.core.crlb.cox_snell_bias` (one set of PSF derivatives serves both).

    In place on the result dict ``full``. ``counts`` (n, fy, fx) are the data on each fit
    stamp, sky included; ``background`` (n, fy, fx) the expectation without the star (its
    fitted sky added here); ``valid`` (n, fy, fx) the pixels of the fit. Sources whose observed
    information is not positive definite keep the expected-information errors.
    """
    _, inv, cnt = np.unique(gid, return_inverse=True, return_counts=True)
    vals = np.column_stack([full["x"], full["y"], full["flux"]])
    iso = full["fitted"] & (cnt[inv] == 1) & np.all(np.isfinite(vals), axis=1)
    iso &= _needs_refinement(full)
    idx = np.flatnonzero(iso)
    if not len(idx):
        return
    names = ("x", "y", "flux", "sky")[:4 if fit_sky else 3]
    free = np.isfinite(np.einsum("nii->ni", full["cov"][idx]))[:, :len(names)]
    for a in range(0, len(idx), 50_000):
        part = slice(a, a + 50_000)
        sel = idx[part]
        bg = background[sel]
        if fit_sky:
            bg = bg + np.nan_to_num(full["sky"][sel])[:, None, None]
        der = _derivatives(psf, vals[sel, 0], vals[sel, 1], vals[sel, 2], fshape, xlo[sel],
                           ylo[sel], gain, fit_sky)
        m = _counts(der[0], vals[sel, 2], bg, read_noise, gain)
        jo = _observed(der, m, counts[sel], read_noise, gain, valid[sel])
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
            b = _cox_snell(der, m, valid[sel], fr)
            b = np.where(fr, np.nan_to_num(b), 0.0)
            for k, name in enumerate(names):
                full[name][sel] = full[name][sel] - b[:, k]


#: Groups up to this many members (and union boxes up to ``_BOX_FACTOR`` fit stamps a side)
#: get the observed information; larger ones keep the expected information of the engine.
_GROUP_MAX = 6
_BOX_FACTOR = 3


def paint_stamps(shape, values, xlo, ylo, fit_shape, order):
    """Image holding ``values[i]`` over stamp ``i``'s pixels; where stamps overlap the first
    of ``order`` wins (the engine's owner of a shared pixel). Elsewhere 0."""
    ny, nx = shape
    fy, fx = fit_shape
    out = np.zeros(shape)
    idx = np.asarray(order)[::-1]  # later assignments win: the first in ``order`` last
    rows = ylo[idx, None, None] + np.arange(fy)[None, :, None]
    cols = xlo[idx, None, None] + np.arange(fx)[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    vals = np.broadcast_to(values[idx, None, None], inside.shape)
    r = np.broadcast_to(rows, inside.shape)[inside]
    c = np.broadcast_to(cols, inside.shape)[inside]
    out[r, c] = vals[inside]
    return out


def refine_groups(full, psf, counts, background, usable, gid, xlo, ylo, fshape, read_noise,
                  gain):
    """Observed-information covariance of the members of small groups (in place).

    ``counts`` (ny, nx) are the data, sky included; ``background`` (ny, nx) the expectation
    without the stars; ``usable`` (ny, nx) the pixels that may enter a fit. The information
    is that of the group's likelihood over the union of its members' fit stamps (a pixel
    once): ``J = sum d' m_r m_t / m**2 - (d' / m - 1) m_rt`` over all members' parameters,
    ``m_rt`` being non-zero only within a member. Members of groups whose matrix is not
    positive definite keep the expected information.
    """
    _, inv, cnt = np.unique(gid, return_inverse=True, return_counts=True)
    vals = np.column_stack([full["x"], full["y"], full["flux"]])
    ok_src = full["fitted"] & np.all(np.isfinite(vals), axis=1) & full["cov_ok"]
    bad_grp = np.bincount(inv, ~ok_src, minlength=len(cnt)) > 0
    bad_grp |= np.bincount(inv, _needs_refinement(full), minlength=len(cnt)) == 0
    fy, fx = fshape
    ny, nx = counts.shape
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.cumsum(cnt)[:-1]]
    for k in range(2, _GROUP_MAX + 1):
        groups = np.flatnonzero((cnt == k) & ~bad_grp)
        if not len(groups):
            continue
        mem = order[starts[groups][:, None] + np.arange(k)]  # (G, k) member indices
        bx0, by0 = xlo[mem].min(axis=1), ylo[mem].min(axis=1)
        bw = xlo[mem].max(axis=1) + fx - bx0
        bh = ylo[mem].max(axis=1) + fy - by0
        small = (bw <= _BOX_FACTOR * fx) & (bh <= _BOX_FACTOR * fy)
        mem, bx0, by0 = mem[small], bx0[small], by0[small]
        if not len(mem):
            continue
        shapes = bh[small] * 1000 + bw[small]  # batches of one box shape: no padding
        for key in np.unique(shapes):
            one = shapes == key
            _refine_batch(full, psf, counts, background, usable, vals, xlo, ylo, fshape,
                          read_noise, gain, mem[one], bx0[one], by0[one],
                          (int(key // 1000), int(key % 1000)))


def _refine_batch(full, psf, counts, background, usable, vals, xlo, ylo, fshape, read_noise,
                  gain, mem, bx0, by0, box):
    """:func:`refine_groups` for groups of one size ``k`` and one union box shape."""
    k = mem.shape[1]
    g_n = len(mem)
    rc, cc, valid = _union_pixels(usable, xlo, ylo, fshape, mem, bx0, by0, box)
    flat = mem.reshape(-1)
    info = _group_info(psf, counts, background, rc, cc, valid, vals[mem], bx0, by0, box,
                       read_noise, gain)
    free = np.isfinite(np.einsum("nii->ni", full["cov"][flat][:, :3, :3])).reshape(g_n,
                                                                                  3 * k)
    both = free[:, :, None] & free[:, None, :]
    info = np.where(both, info, np.eye(3 * k)[None])
    sig, cov = bounds_from_fisher(info)
    ok = np.all(np.isfinite(sig), axis=1)
    cov = np.where(both, cov, np.nan)
    for j in range(k):
        src = mem[ok, j]
        blk = cov[ok, 3 * j:3 * j + 3, 3 * j:3 * j + 3]
        full["cov"][src, :3, :3] = blk
        for q, name in enumerate(("x", "y", "flux")):
            full[f"{name}_err"][src] = np.sqrt(blk[:, q, q])


def _group_info(psf, counts, background, rc, cc, valid, params, bx0, by0, box, read_noise,
                gain):
    """Observed information (G, 3k, 3k) of groups with member parameters ``params`` (G, k, 3)
    over their fit pixels (:func:`_union_pixels`)."""
    g_n, k, _ = params.shape
    flat = params.reshape(-1, 3)
    u, d1, d2 = _derivatives(psf, flat[:, 0], flat[:, 1], flat[:, 2], box,
                             np.repeat(bx0, k), np.repeat(by0, k), gain, False)
    npix = u.shape[1]
    mu = background[rc, cc].reshape(g_n, -1) + (flat[:, 2, None] * u).reshape(
        g_n, k, npix).sum(axis=1)
    m = _counts(np.zeros((g_n, npix)), np.zeros(g_n), mu, read_noise, gain)
    dp = float(gain) * counts[rc, cc].reshape(g_n, -1) + float(read_noise) ** 2
    a = np.where(valid, dp / m**2, 0.0)
    b = np.where(valid, dp / m - 1.0, 0.0)
    big = d1.reshape(g_n, 3 * k, npix)
    info = (big * a[:, None, :]) @ big.transpose(0, 2, 1)
    curv = (d2.reshape(g_n, k, 9, npix) @ b[:, None, :, None]).reshape(g_n, k, 3, 3)
    for j in range(k):
        info[:, 3 * j:3 * j + 3, 3 * j:3 * j + 3] -= curv[:, j]
    return info


# -- profile-likelihood flux errors of close group members -------------------------------------
def _union_pixels(usable, xlo, ylo, fshape, mem, bx0, by0, box):
    """Clipped pixel indices (rc, cc) of each group's union box and its fit pixels ``valid``
    (in a member's stamp, inside the image and usable), flattened to (G, npix)."""
    fy, fx = fshape
    ny, nx = usable.shape
    rows = by0[:, None, None] + np.arange(box[0])[None, :, None]
    cols = bx0[:, None, None] + np.arange(box[1])[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    rc, cc = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    union = np.zeros(inside.shape, dtype=bool)
    for j in range(mem.shape[1]):
        y0 = ylo[mem[:, j]][:, None, None]
        x0 = xlo[mem[:, j]][:, None, None]
        union |= (rows >= y0) & (rows < y0 + fy) & (cols >= x0) & (cols < x0 + fx)
    valid = (union & inside & usable[rc, cc]).reshape(len(mem), -1)
    return rc, cc, valid


def _group_fit_terms(psf, bg, dp, valid, bx0, by0, box, params, noise, *, derivatives=True):
    """Log-likelihood (up to a constant, shape (G,)) of groups with member parameters
    ``params`` (G, k, 3) over their fit pixels and, with ``derivatives``, its score (G, 3k)
    and expected (Fisher) information (G, 3k, 3k); ``bg`` (G, npix) is the expectation
    without the members. ``noise = (read_noise, gain)``: the shifted-Poisson likelihood, ``dp``
    the shifted data ``gain * counts + read_noise**2`` and ``valid`` (G, npix) the fit pixels;
    ``noise = None``: the Gaussian one (minus half the chi-square), ``dp`` the data and
    ``valid`` the pixel weights ``1 / error**2`` (0 off the fit)."""
    g_n, k, _ = params.shape
    flat = params.reshape(-1, 3)
    bxr, byr = np.repeat(bx0, k), np.repeat(by0, k)
    if derivatives:
        u, ux, uy = psf._stamps_grad(flat[:, 0], flat[:, 1], bxr, byr, box)
    else:
        u = psf._stamps(flat[:, 0], flat[:, 1], bxr, byr, box)
    u = np.where(np.isfinite(u), u, 0.0).reshape(g_n, k, -1)
    mu = bg + np.einsum("gk,gkn->gn", params[:, :, 2], u)
    if noise is None:  # Gaussian: d m / d theta = d mu / d theta, weights 1 / error**2
        g = 1.0
        m = mu
        w = valid
        loglik = -0.5 * np.einsum("gn,gn->g", valid, (dp - mu) ** 2)
    else:
        g = float(noise[1])
        m = np.maximum(g * np.maximum(mu, 0.0) + float(noise[0]) ** 2, VARIANCE_FLOOR_E)
        w = valid / m
        loglik = np.einsum("gn,gn->g", valid, dp * np.log(m) - m)
    if not derivatives:
        return loglik
    npix = u.shape[2]
    d1 = np.empty((g_n, k, 3, npix))  # d m / d theta
    fl = g * params[:, :, 2, None]
    np.multiply(fl, np.reshape(ux, u.shape), out=d1[:, :, 0])
    np.multiply(fl, np.reshape(uy, u.shape), out=d1[:, :, 1])
    np.multiply(g, u, out=d1[:, :, 2])
    d1 = d1.reshape(g_n, 3 * k, npix)
    dw = d1 * w[:, None, :]
    score = np.einsum("gpn,gn->gp", dw, dp - m)
    fisher = np.empty((g_n, 3 * k, 3 * k))
    for a in range(3 * k):  # the symmetric matrix entry by entry: no small-matrix matmul
        fisher[:, a, a:] = np.einsum("gn,gqn->gq", dw[:, a], d1[:, a:])
        fisher[:, a:, a] = fisher[:, a, a:]
    return loglik, score, fisher


def profile_group_errors(full, psf, counts, background, usable, gid, xlo, ylo, fshape,
                         read_noise, gain, close, *, weights=None, combine="max",
                         steps=None, ltol=None):
    """Errors of close group members from the profile likelihood (in place on ``full``).

    The likelihood is the shifted-Poisson one (``read_noise``, ``gain``; the errors start
    from the observed information) or, with ``weights`` (ny, nx) = ``1 / error**2``, the
    Gaussian one, minus half the chi-square (``read_noise`` and ``gain`` unused; the errors
    start from the Fisher information, the engine's least-squares covariance).

    For every parameter ``t`` (x, y, flux) of every member flagged in ``close`` (groups of
    2 to ``_GROUP_MAX``), the group's log-likelihood is profiled at ``t +- K sigma_t``
    (:data:`PROFILE_K` = 2 Fisher errors): the other parameters start on the quadratic
    model's profile path (they move by ``cov[:, t] / cov[t, t]`` per unit of ``t``) and take
    at most ``steps`` (default :data:`PROFILE_STEPS`) Fisher-scoring steps with ``t`` held (a
    step is kept only when it raises the likelihood; a profile stops once a step gains less
    than ``ltol``, default :data:`PROFILE_LTOL`, in log-likelihood). With
    ``D = 2 (log L_fit - log L_side)`` (``K**2`` for a quadratic log-likelihood), each
    side's half-width of the ``K``-sigma profile-likelihood interval, in sigmas, is
    ``K / sqrt(D)``; the error becomes the larger half-width over ``K`` (``combine='max'``,
    the Poisson mode's) or the root mean square of the two (``'rms'``: the rms deviation
    from its mode of a split normal with those half-widths, the Gaussian mode's: 'max' left
    unflagged least-squares pairs' position pulls at 0.82-0.93), never less than the Fisher
    error (Venzon & Moolgavkar 1988; MINUIT's MINOS errors). Where a blend's likelihood is
    flatter than its curvature at the maximum (two stars < 1 FWHM apart, one faint) the
    Fisher errors are too small; ``D <= 0`` (a better
    likelihood than the fit's) caps the error at :data:`PROFILE_CAP` Fisher errors. ``cov``'s
    rows and columns are scaled alike. Groups whose union of stamps spans more than
    ``_BOX_FACTOR`` stamps a side keep their errors; groups go in chunks of bounded memory.
    """
    _, inv, cnt = np.unique(gid, return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    starts = np.r_[0, np.cumsum(cnt)[:-1]]
    fy, fx = fshape
    for k in range(2, _GROUP_MAX + 1):
        groups = np.flatnonzero(cnt == k)
        if not len(groups):
            continue
        mem = order[starts[groups][:, None] + np.arange(k)]  # (G, k)
        vals = np.stack([full["x"][mem], full["y"][mem], full["flux"][mem]], axis=-1)
        ok = np.all(np.isfinite(vals), axis=(1, 2)) & np.all(full["fitted"][mem], axis=1)
        ok &= ((xlo[mem].max(axis=1) - xlo[mem].min(axis=1) + fx <= _BOX_FACTOR * fx)
               & (ylo[mem].max(axis=1) - ylo[mem].min(axis=1) + fy <= _BOX_FACTOR * fy))
        gsel = np.flatnonzero(ok & close[mem].any(axis=1))
        if not len(gsel):
            continue
        npix = ((xlo[mem[gsel]].max(axis=1) - xlo[mem[gsel]].min(axis=1)).max() + fx) * (
            (ylo[mem[gsel]].max(axis=1) - ylo[mem[gsel]].min(axis=1)).max() + fy)
        per_chunk = max(1, int(_PROFILE_CHUNK // (9 * k * k * npix)))  # (3k)**2 per group
        for a in range(0, len(gsel), per_chunk):
            part = gsel[a:a + per_chunk]
            _profile_chunk(full, psf, counts, background, usable, xlo, ylo, fshape,
                           read_noise, gain, weights, (combine, steps, ltol), close,
                           mem[part], vals[part])


def _profile_chunk(full, psf, counts, background, usable, xlo, ylo, fshape, read_noise, gain,
                   weights, rule, close, mem, vals):
    """:func:`profile_group_errors` for groups ``mem`` (G, k) with parameters ``vals``."""
    fy, fx = fshape
    k = mem.shape[1]
    names = ("x", "y", "flux")
    bx0, by0 = xlo[mem].min(axis=1), ylo[mem].min(axis=1)
    box = (int((ylo[mem].max(axis=1) - by0).max()) + fy,
           int((xlo[mem].max(axis=1) - bx0).max()) + fx)
    rc, cc, valid = _union_pixels(usable, xlo, ylo, fshape, mem, bx0, by0, box)
    bg = background[rc, cc].reshape(len(mem), -1)
    if weights is None:  # shifted Poisson
        noise = (read_noise, gain)
        dp = float(gain) * counts[rc, cc].reshape(len(mem), -1) + float(read_noise) ** 2
    else:  # Gaussian: the weights take the place of the fit-pixel mask
        noise = None
        dp = counts[rc, cc].reshape(len(mem), -1)
        valid = np.where(valid, weights[rc, cc].reshape(len(mem), -1), 0.0)
    l_fit = _group_fit_terms(psf, bg, dp, valid, bx0, by0, box, vals, noise,
                             derivatives=False)
    free = np.isfinite(np.einsum("nii->ni", full["cov"][mem.ravel()][:, :3, :3]))
    free = free.reshape(len(mem), 3 * k)
    both = free[:, :, None] & free[:, None, :]
    if noise is None:
        info = _group_fit_terms(psf, bg, dp, valid, bx0, by0, box, vals, noise)[2]
    else:
        info = _group_info(psf, counts, background, rc, cc, valid, vals, bx0, by0, box,
                           read_noise, gain)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        _, cov = bounds_from_fisher(np.where(both, info, np.eye(3 * k)[None]))
    cov = np.where(both & np.isfinite(cov), cov, 0.0)
    sig_all = np.stack([full[f"{nm}_err"][mem] for nm in names], axis=-1).reshape(
        len(mem), 3 * k)
    todo = (np.repeat(close[mem], 3, axis=1) & free & np.isfinite(sig_all)
            & (sig_all > 0))
    g_i, col = np.nonzero(todo)  # (group, parameter column) of every profile
    p_n = len(g_i)
    rows = np.arange(p_n)
    sig = sig_all[g_i, col]
    diag = cov[g_i, col, col]
    pos = diag > 0
    step = cov[g_i, :, col] / np.where(pos, diag, 1.0)[:, None]  # (P, 3k)
    unit = np.zeros_like(step)
    unit[rows, col] = 1.0
    step = np.where(pos[:, None] & np.all(np.isfinite(step), axis=1)[:, None], step,
                    unit)
    hold = ~free[g_i]
    hold[rows, col] = True
    sub = (psf, bg[g_i], dp[g_i], valid[g_i], bx0[g_i], by0[g_i], box)
    sides = []
    for sign in (1.0, -1.0):
        theta = vals[g_i].reshape(p_n, 3 * k) + sign * PROFILE_K * sig[:, None] * step
        inb = _in_box(theta, bx0[g_i], by0[g_i], box)  # else no profile: the Fisher error
        theta = np.where(inb[:, None], theta, vals[g_i].reshape(p_n, 3 * k))
        ll = _group_fit_terms(*sub, theta.reshape(p_n, k, 3), noise, derivatives=False)
        ll[~inb] = np.nan
        _profile_scoring(sub, theta, ll, hold, k, noise, rule[1] or PROFILE_STEPS,
                         rule[2] or PROFILE_LTOL)
        dev = 2.0 * (l_fit[g_i] - ll)
        side = np.where(dev > (PROFILE_K / PROFILE_CAP) ** 2,
                        PROFILE_K / np.sqrt(np.abs(dev)), PROFILE_CAP)
        sides.append(np.where(np.isfinite(dev), side, 1.0))
    if rule[0] == "rms":  # a split normal's rms deviation from its mode
        width = np.sqrt(0.5 * (sides[0] ** 2 + sides[1] ** 2))
    else:
        width = np.maximum(*sides)
    width = np.maximum(width, 1.0)  # never below the Fisher error
    member = mem[g_i, col // 3]
    q = col % 3
    for t, nm in enumerate(names):
        sel = q == t
        full[f"{nm}_err"][member[sel]] = sig[sel] * width[sel]
        full["cov"][member[sel], t, :] *= width[sel, None]
        full["cov"][member[sel], :, t] *= width[sel, None]


#: Profile-likelihood errors: the likelihood is profiled this many Fisher errors either side.
PROFILE_K = 2.0
#: At most this many Fisher-scoring steps of the other parameters at each profiled point
#: (a profile stops once a step raises its log-likelihood by less than ``PROFILE_LTOL``).
PROFILE_STEPS = 4
PROFILE_LTOL = 2e-2
#: The Gaussian mode's profiles run closer to convergence (4 steps left 0.5 % of the widths
#: 5-7 % short of scipy's exact profile): least-squares pairs' flux pull widths 1.013 / 1.059
#: (all / < 0.7 FWHM, flags-0 as the blend test flags them) against 1.020 / 1.081 with 4 steps
#: (bench_pair_errors); the profiles cost 0.8-0.9x the plain grouped fit instead of 0.5x.
GAUSSIAN_PROFILE_STEPS = 12
GAUSSIAN_PROFILE_LTOL = 1e-3
#: Largest profile-likelihood error, in Fisher errors (a side that beats the fit's likelihood).
PROFILE_CAP = 10.0
#: Profile computations go in chunks of about this many array elements (memory bound).
_PROFILE_CHUNK = 4_000_000


def _in_box(theta, bx0, by0, box):
    """Whether every member's position in ``theta`` (P, 3k) lies on its group's union box
    (within half a pixel of its edge pixels' centres) and every value is finite; (P,)."""
    x, y = theta[:, 0::3], theta[:, 1::3]
    return (np.all(np.isfinite(theta), axis=1)
            & np.all((x >= bx0[:, None] - 0.5) & (x <= bx0[:, None] + box[1] - 0.5), axis=1)
            & np.all((y >= by0[:, None] - 0.5) & (y <= by0[:, None] + box[0] - 0.5), axis=1))


def _profile_scoring(sub, theta, ll, hold, k, noise, steps, ltol):
    """Maximise the log-likelihood over the parameters not in ``hold`` (P, 3k) by Fisher
    scoring from ``theta`` (P, 3k; in place, with its log-likelihood ``ll``): a step is kept
    when it raises the likelihood, else halved; each profile stops when its step gains less
    than ``ltol`` or after ``steps`` steps."""
    psf, bg, dp, valid, bx0, by0, box = sub
    act = np.flatnonzero(np.isfinite(ll))
    damp = np.ones(len(theta))
    for _ in range(steps):
        if not len(act):
            break
        part = (psf, bg[act], dp[act], valid[act], bx0[act], by0[act], box)
        _, score, fisher = _group_fit_terms(*part, theta[act].reshape(len(act), k, 3),
                                            noise)
        h = hold[act]
        score = np.where(h, 0.0, score)
        fisher = np.where(h[:, :, None] | h[:, None, :], np.eye(3 * k)[None], fisher)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _, fcov = bounds_from_fisher(fisher)  # NaN where singular: no step
            delta = np.einsum("gpq,gq->gp", np.where(np.isfinite(fcov), fcov, 0.0), score)
        delta = np.where(np.isfinite(delta), delta, 0.0) * damp[act, None]
        trial = theta[act] + delta
        inb = _in_box(trial, bx0[act], by0[act], box)  # a step out of the box is refused
        trial = np.where(inb[:, None], trial, theta[act])
        lt = _group_fit_terms(*part, trial.reshape(len(act), k, 3), noise,
                              derivatives=False)
        better = inb & np.isfinite(lt) & (lt > ll[act])
        gain_ll = np.where(better, lt - ll[act], 0.0)
        theta[act[better]] = trial[better]
        ll[act[better]] = lt[better]
        damp[act[~better]] *= 0.5
        act = act[(better & (gain_ll > ltol)) | (~better & (damp[act] >= 0.1))]




# -- which members get profile errors; the Gaussian (least-squares) entry point --------------
#: Group members closer than this many FWHM to a partner get profile-likelihood errors (beyond
#: it the Fisher errors of pairs at S/N ~5-10 have pull widths 0.98-1.02, bench_likelihood)...
PROFILE_SEPARATION_FWHM = 1.0
#: ... in groups where such a member has a flux S/N (Fisher) below this: pairs < 1 FWHM apart
#: with members at S/N 9-18 have Fisher pull widths 0.92-1.02, at S/N 4.6-12 1.06-1.15.
PROFILE_SNR = 10.0


def close_faint_members(psf_model, full, x_init, y_init, gid):
    """Members that get profile-likelihood errors, shape (n,) bool: those with a group partner
    closer than :data:`PROFILE_SEPARATION_FWHM` FWHM (fitted or initial positions), in groups
    where such a member has a flux S/N (``full['flux'] / full['flux_err']``) below
    :data:`PROFILE_SNR` (or undefined)."""
    n = len(gid)
    close = np.zeros(n, dtype=bool)
    _, inv, cnt = np.unique(gid, return_inverse=True, return_counts=True)
    if not np.any(cnt > 1):
        return close
    try:
        reach = PROFILE_SEPARATION_FWHM * psf_fwhm(psf_model)
    except (TypeError, ValueError):  # no usable profile: every member of a group
        close = cnt[inv] > 1
    else:
        for px, py in ((full["x"], full["y"]), (x_init, y_init)):
            pairs = candidate_pairs(np.asarray(px, dtype=float), np.asarray(py, dtype=float),
                                    np.asarray(gid), reach)
            close[pairs.ravel()] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        faint = close & ~(np.abs(full["flux"]) / full["flux_err"] >= PROFILE_SNR)
    return close & (np.bincount(inv, faint)[inv] > 0)  # groups with a faint close member


def profile_errors_gaussian(fit, data, mask, error, table, todo, *, psf_model, fit_shape):
    """Profile-likelihood errors of close faint group members of a least-squares fit (in
    place on ``fit``, a :class:`crowdphot.psf._results.SourceFit` of the batched engine).

    The Gaussian-likelihood counterpart of the Poisson mode's: members selected by
    :func:`close_faint_members` get :func:`profile_group_errors` with the chi-square of their
    group (weights ``1 / error**2`` over the union of the members' fit stamps, each pixel
    once, the engine's ``shared_pixels='once'``; ``local_bkg`` as the engine applies it).
    Fitted values are not touched; errors and ``cov`` only grow. Members that were not fitted
    or were dropped from their group's fit (left their stamp, absurd) are left out, so a
    group is profiled as the engine last fitted it. ``data``, ``error`` (ny, nx) and ``mask``
    (or None) are the arrays the engine fitted; ``table`` the initial parameters
    (``x_init``, ``y_init``, ``local_bkg``, ``group_id``) and ``todo`` (n,) the fitted rows.
    """
    keep = np.asarray(todo, dtype=bool) & (fit.reason == "")
    for name in ("left_stamp", "absurd"):
        if getattr(fit, name, None) is not None:
            keep &= ~np.asarray(getattr(fit, name), dtype=bool)
    idx = np.flatnonzero(keep)
    gid = np.asarray(table["group_id"])[idx]
    _, cnt = np.unique(gid, return_counts=True)
    if fit.cov is None or fit.cov.shape[1] != 3 or not np.any(cnt > 1):
        return

    def col(name):
        return np.asarray(getattr(table[name], "value", table[name]), dtype=float)[idx]

    full = {k: fit.values[k][idx] for k in ("x", "y", "flux")}
    full.update({f"{k}_err": fit.errors[k][idx] for k in ("x", "y", "flux")})
    full["cov"] = fit.cov[idx]
    full["fitted"] = np.ones(len(idx), dtype=bool)
    x0, y0 = col("x_init"), col("y_init")
    close = close_faint_members(psf_model, full, x0, y0, gid)
    if not np.any(close):
        return
    fshape = tuple(int(v) for v in fit_shape)
    xlo, ylo = stamp_origin(x0, y0, fshape)
    bkg = col("local_bkg")
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    err = np.asarray(error, dtype=float)
    usable = np.isfinite(data) & np.isfinite(err) & (err > 0)
    if mask is not None:
        usable &= ~np.asarray(mask, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(usable, 1.0 / err**2, 0.0)
    bg_img = paint_stamps(data.shape, bkg, xlo, ylo, fshape, np.argsort(gid, kind="stable"))
    profile_group_errors(full, psf_model, np.where(usable, data, 0.0), bg_img, usable, gid,
                         xlo, ylo, fshape, 0.0, 1.0, close, weights=weights, combine="rms",
                         steps=GAUSSIAN_PROFILE_STEPS, ltol=GAUSSIAN_PROFILE_LTOL)
    for k in ("x", "y", "flux"):
        fit.errors[k][idx] = full[f"{k}_err"]
    fit.cov[idx] = full["cov"]
