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
