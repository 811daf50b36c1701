"""Fisher information and Cramér–Rao bounds of PSF photometry (pure functions on arrays).

Noise model (CCD/CMOS, data in ADU): a pixel holds ``k / g + r`` where ``k`` is Poisson with
mean ``g * mu`` electrons (``mu`` = expectation in ADU = PSF model + sky) and ``r`` is read noise
of ``R`` electrons rms. Its variance is

    V(mu) = mu / g + (R / g) ** 2.

The information is that of the shifted-Poisson likelihood ``g * d + R**2 ~ Poisson(g * mu +
R**2)`` (Snyder, Hammoud & White 1993, JOSA A 10, 1014; Huang et al. 2013, Nat. Methods 10, 653),
whose per-pixel Fisher information is ``(d mu / d theta)(d mu / d theta)^T / V(mu)``; for
``R = 0`` it is the exact Poisson information. With read noise the exact Poisson-Gaussian
information (Chao, Ward & Ober 2016, JOSA A 33, B36) is larger, by a factor measured by
numerical integration of ``(p(d - 1) - p(d))**2 / p(d)``: for ``R = 5 e-``, 1.019 at 0.5 e-/px,
1.007 at 10 e-/px and < 1.0002 above 100 e-/px (the approximation is poorest near ``R = 1 e-``
below 1 e-/px: 1.14). So the bounds here are within 1 % of the exact ones for sky-limited
CCD data, and they are exactly what the shifted-Poisson maximum-likelihood fit attains
(:func:`crowdphot.psf.likelihood.fit_psf_likelihood`).

Parameters are ordered ``(x, y, flux[, sky])``; ``sky`` is a constant over the stamp.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pixel_variance", "fisher_information", "bounds_from_fisher", "VARIANCE_FLOOR_E"]

#: Floor of the pixel variance in electrons^2, so that empty pixels of a photon-counting
#: (R = 0) detector keep a finite weight; irrelevant whenever R >= 0.04 e-.
VARIANCE_FLOOR_E = 1e-3


def pixel_variance(mu, read_noise, gain):
    """Variance (ADU^2) of pixels with expectation ``mu`` (ADU): ``max(mu, 0)/g + (R/g)^2``.

    Floored at ``VARIANCE_FLOOR_E / g**2``.

    Parameters
    ----------
    mu : ndarray
        Expected pixel values (model + background) in ADU.
    read_noise : float
        Read noise in electrons rms.
    gain : float
        Electrons per ADU.

    Returns
    -------
    variance : ndarray, same shape as ``mu``

    Examples
    --------
    >>> float(pixel_variance(np.array(10.0), 5.0, 1.0))
    35.0
    """
    g = float(gain)
    var_e = np.maximum(mu, 0.0) * g + float(read_noise) ** 2
    return np.maximum(var_e, VARIANCE_FLOOR_E) / (g * g)


def fisher_information(psf, x, y, flux, shape, *, sky, read_noise, gain, xlo=None, ylo=None,
                       valid=None, fit_sky=False):
    """Fisher information matrices of isolated stars on ``shape`` stamps (unchecked).

    Parameters
    ----------
    psf : BatchedPSFMixin
        PSF model (its ``_stamps_grad`` gives unit stamps and centre derivatives).
    x, y, flux : ndarray of shape (n,)
        Star positions (pixels) and fluxes (ADU).
    shape : (ny, nx)
        Stamp shape (the pixels that carry information, e.g. the fit stamp).
    sky : ndarray broadcastable to (n, ny, nx)
        Background (ADU) in every stamp pixel, e.g. ``sky[:, None, None]`` per star.
    read_noise, gain : float
        Read noise (electrons) and gain (electrons / ADU).
    xlo, ylo : ndarray of int, shape (n,), optional
        Stamp origins; default centred on each star (``stamp_origin``).
    valid : ndarray of bool broadcastable to (n, ny, nx), optional
        Pixels that are used (default all).
    fit_sky : bool
        Add the stamp's constant sky as a fourth parameter.

    Returns
    -------
    fisher : ndarray of shape (n, p, p)
        ``p = 3`` (x, y, flux) or 4 (x, y, flux, sky), in ADU/pixel units.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> f = fisher_information(CircularGaussianPRF(fwhm=2.0), np.array([5.0]), np.array([5.0]),
    ...                        np.array([1e4]), (7, 7), sky=10.0, read_noise=0.0, gain=1.0)
    >>> f.shape
    (1, 3, 3)
    """
    from crowdphot.core.batched import stamp_origin

    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    flux = np.asarray(flux, dtype=float)
    if xlo is None or ylo is None:
        xlo, ylo = stamp_origin(x, y, shape)
    u, dux, duy = psf._stamps_grad(x, y, np.asarray(xlo, dtype=np.int64),
                                   np.asarray(ylo, dtype=np.int64), tuple(shape))
    n = len(x)
    f = flux[:, None, None]
    mu = f * u + np.asarray(sky, dtype=float)
    w = 1.0 / pixel_variance(mu, read_noise, gain)
    if valid is not None:
        w = np.where(valid, w, 0.0)
    w = np.broadcast_to(w, (n, *shape)).reshape(n, -1)
    grads = [f * dux, f * duy, u]
    if fit_sky:
        grads.append(np.ones_like(u))
    jac = np.stack([np.broadcast_to(gk, (n, *shape)).reshape(n, -1) for gk in grads], axis=1)
    return np.einsum("npk,nqk,nk->npq", jac, jac, w)


def bounds_from_fisher(fisher, *, rcond=1e-12):
    """Cramér–Rao bounds (1-sigma) from Fisher matrices.

    Parameters
    ----------
    fisher : ndarray of shape (n, p, p)
    rcond : float
        Matrices whose smallest/largest eigenvalue ratio (after scaling to unit diagonal) is
        below this are singular: their bounds are NaN (e.g. the position of a zero-flux star).

    Returns
    -------
    sigma : ndarray of shape (n, p)
        ``sqrt(diag(fisher^-1))``.
    cov : ndarray of shape (n, p, p)
        ``fisher^-1`` (NaN where singular).

    Examples
    --------
    >>> s, _ = bounds_from_fisher(np.array([[[4.0, 0.0], [0.0, 1.0]]]))
    >>> s.tolist()
    [[0.5, 1.0]]
    """
    fisher = np.asarray(fisher, dtype=float)
    n, p, _ = fisher.shape
    d = np.sqrt(np.clip(np.einsum("nii->ni", fisher), 0.0, None))
    ok = np.all(np.isfinite(fisher), axis=(1, 2)) & np.all(d > 0, axis=1)
    dd = np.where(ok[:, None], d, 1.0)
    scaled = fisher / (dd[:, :, None] * dd[:, None, :])
    scaled = np.where(ok[:, None, None], scaled, np.eye(p))
    ev = np.linalg.eigvalsh(scaled)
    ok &= ev[:, 0] > rcond * ev[:, -1]
    scaled = np.where(ok[:, None, None], scaled, np.eye(p))
    cov = np.linalg.inv(scaled) / (dd[:, :, None] * dd[:, None, :])
    cov = np.where(ok[:, None, None], cov, np.nan)
    sigma = np.sqrt(np.clip(np.einsum("nii->ni", cov), 0.0, None))
    sigma = np.where(ok[:, None], sigma, np.nan)
    return sigma, cov
