"""Observed-information errors and Cox-Snell bias correction of maximum-likelihood fits.

Private helpers of :func:`crowdphot.psf.likelihood.fit_psf_likelihood`: per-stamp values of
an image, and the refinement of isolated sources after the engine's likelihood fit.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.crlb import (
    _counts,
    _cox_snell,
    _derivatives,
    _observed,
    bounds_from_fisher,
)

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
    fy, fx = fshape
    ny, nx = counts.shape
    k = mem.shape[1]
    g_n = len(mem)
    rows = by0[:, None, None] + np.arange(box[0])[None, :, None]
    cols = bx0[:, None, None] + np.arange(box[1])[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    rc, cc = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    union = np.zeros(inside.shape, dtype=bool)
    for j in range(k):
        dy = (ylo[mem[:, j]] - by0)[:, None, None]
        dx = (xlo[mem[:, j]] - bx0)[:, None, None]
        union |= ((rows - by0[:, None, None] >= dy) & (rows - by0[:, None, None] < dy + fy)
                  & (cols - bx0[:, None, None] >= dx)
                  & (cols - bx0[:, None, None] < dx + fx))
    valid = (union & inside & usable[rc, cc]).reshape(g_n, -1)
    flat = mem.reshape(-1)
    der = _derivatives(psf, vals[flat, 0], vals[flat, 1], vals[flat, 2], box,
                       np.repeat(bx0, k), np.repeat(by0, k), gain, False)
    u, d1, d2 = der
    npix = u.shape[1]
    mu = background[rc, cc].reshape(g_n, -1) + (vals[flat, 2, None] * u).reshape(
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
