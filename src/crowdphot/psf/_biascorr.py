"""First-order (Cox & Snell 1968) bias of PSF fits with known pixel variances, per group.

A fit whose position is free centres on the noise: the fitted flux is the largest value of
the flux profile over the positions near the truth, so it is biased high by about
``flux_err**2 / flux`` (``1 / (S/N)**2`` of the flux: +0.36 % at S/N 16.6, +4 % at S/N 5),
whatever the fitter. Cox & Snell's first-order bias of a maximum-likelihood estimate,

    b = -1/2 K^-1 D1 W s,   s = sum_{t,u} (K^-1)_{tu} m_tu,

(``K = D1 W D1^T`` the expected information, ``D1`` (p, npix) the model's first derivatives,
``m_tu`` its second derivatives, ``W`` the inverse pixel variances) is computed here for
least-squares fits with known variances (``error**2``, Gaussian noise). The general
expression ``K^{sr} K^{tu} (k_{rt,u} + k_{rtu} / 2)`` reduces to this because two of its three
terms cancel against the symmetric ``K^{tu}``. The members of a group are one parameter vector
(their second derivatives are block diagonal), so the correction sees the pair's shared
pixels; subtracting ``b`` (evaluated at the estimate) leaves an ``O(1 / (S/N)**4)`` bias.

Used by :func:`crowdphot.psf.photometry.run_psf_photometry` with ``bias_correction=True``
(Gaussian likelihood); the Poisson likelihood corrects its isolated sources in
:mod:`crowdphot.psf._mlrefine`.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.crlb import _derivatives, bounds_from_fisher

__all__ = ["cox_snell_groups", "check_bias_correction", "apply_bias_correction",
           "correct_table", "MIN_SNR", "SKIP_SNR", "GROUP_MAX"]

#: Sources fainter than this (flux over its error) are not corrected: the expansion in
#: 1 / (S/N) behind the correction does not hold there (at S/N 3 the correction is a third of
#: the flux error and its own error is of the same order).
MIN_SNR = 3.0
#: Groups whose members all have a larger S/N are not corrected: the bias falls as
#: ``1 / (S/N)**2`` of the flux, below 0.01 of its error here.
SKIP_SNR = 100.0
#: Groups up to this many members (whose stamps fit in a box of ``_BOX_FACTOR`` stamps a side)
#: are corrected jointly; members of larger groups as if alone (their neighbours fixed).
GROUP_MAX = 8
_BOX_FACTOR = 3
_CHUNK = 20_000_000  # floats of second derivatives per batch (160 MB)


def cox_snell_groups(psf, x, y, flux, gid, xlo, ylo, fit_shape, error, mask, *,
                     free=None, fit_sky=False, snr=None):
    """First-order bias of each source's (x, y, flux), its group fitted jointly (unchecked).

    Parameters
    ----------
    psf : crowdphot PSF model
        A built-in model with the batched stamp contract (``_stamps_grad``).
    x, y, flux : ndarray of shape (n,)
        The fitted values (pixels, data units).
    gid : ndarray of shape (n,)
        Group ids: the members of a group were fitted together.
    xlo, ylo : ndarray of int, shape (n,)
        Lower-left pixel of each source's fit stamp.
    fit_shape : (fy, fx)
    error : array-like of shape (ny, nx)
        Pixel standard deviations (a memory-mapped plane is read only around the sources);
        pixels whose error is not finite and positive did not enter the fits.
    mask : array-like of bool, shape (ny, nx), or None
        True where pixels were masked.
    free : ndarray of bool, shape (n, 3), optional
        Which of (x, y, flux) were fitted; fixed ones have no bias and do not enter the
        information. Default: all free.
    fit_sky : bool
        Whether each group also fitted one constant sky (one more parameter per group).
    snr : ndarray of shape (n,), optional
        Each source's fitted ``flux / flux_err``: groups whose members all exceed
        :data:`SKIP_SNR` get a bias of 0 without computing it (it is below 0.01 sigma).

    Returns
    -------
    bias : ndarray of shape (n, 3)
        The bias of (x, y, flux) to subtract; NaN where not computed (non-finite values, S/N
        below :data:`MIN_SNR`, a singular information matrix).

    Examples
    --------
    A star at S/N 7.4 in white noise: the flux bias is about ``flux_err**2 / flux`` (1.8 %;
    1.9 % on this pixel grid).

    >>> from crowdphot import CircularGaussianPRF
    >>> psf = CircularGaussianPRF(fwhm=3.0)
    >>> b = cox_snell_groups(psf, np.array([20.2]), np.array([19.9]), np.array([100.0]),
    ...                      np.array([1]), np.array([14]), np.array([13]), (13, 13),
    ...                      np.full((41, 41), 3.0), None)
    >>> round(float(b[0, 2] / 100.0), 3)
    0.019
    """
    x, y, flux = (np.asarray(a, dtype=float) for a in (x, y, flux))
    n = len(x)
    free = np.ones((n, 3), dtype=bool) if free is None else np.asarray(free, dtype=bool)
    xlo = np.asarray(xlo, dtype=np.int64)
    ylo = np.asarray(ylo, dtype=np.int64)
    fshape = tuple(int(v) for v in fit_shape)
    w_img = (error, mask)  # weights are formed on the gathered pixels only (mosaics)
    bias = np.full((n, 3), np.nan)
    # members without finite values (failed, dropped from their group's model) leave it
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    too_faint = np.zeros(n, dtype=bool)
    if snr is not None:  # all-bright groups: |bias| < 0.01 sigma, not worth computing
        with np.errstate(invalid="ignore"):
            faint = ~(np.asarray(snr, dtype=float) > SKIP_SNR)
            # members too faint for the expansion stay in their group's model with their
            # parameters held: their near-singular terms would swamp their partners' bias
            too_faint = ok & (np.asarray(snr, dtype=float) < MIN_SNR)
        free = free & ~too_faint[:, None]
        _, ginv = np.unique(np.asarray(gid), return_inverse=True)
        bright = ok & (np.bincount(ginv, faint & ok)[ginv] == 0)
        bias[bright] = 0.0
        ok &= ~bright
    ok = np.flatnonzero(ok)
    _, inv, cnt = np.unique(np.asarray(gid)[ok], return_inverse=True, return_counts=True)
    order = ok[np.argsort(inv, kind="stable")]
    starts = np.r_[0, np.cumsum(cnt)[:-1]]
    alone = np.zeros(n, dtype=bool)
    for k in np.unique(cnt):
        groups = np.flatnonzero(cnt == k)
        mem = order[starts[groups][:, None] + np.arange(k)]  # (G, k)
        if k == 1 or k > GROUP_MAX:
            alone[mem.ravel()] = True
            continue
        fy, fx = fshape
        bx0, by0 = xlo[mem].min(axis=1), ylo[mem].min(axis=1)
        bw = xlo[mem].max(axis=1) + fx - bx0
        bh = ylo[mem].max(axis=1) + fy - by0
        small = (bw <= _BOX_FACTOR * fx) & (bh <= _BOX_FACTOR * fy)
        alone[mem[~small].ravel()] = True
        # boxes padded up to a few shapes per size (padding pixels weigh 0): few batches
        bw = np.minimum(_quantize(bw, fx), _BOX_FACTOR * fx)
        bh = np.minimum(_quantize(bh, fy), _BOX_FACTOR * fy)
        mem, bx0, by0, key = mem[small], bx0[small], by0[small], (bh * 1000 + bw)[small]
        for one in np.unique(key):
            sel = key == one
            box = (int(one // 1000), int(one % 1000))
            step = max(1, _CHUNK // (9 * k * box[0] * box[1]))
            for a in range(0, int(sel.sum()), step):
                part = slice(a, a + step)
                _group_batch(bias, psf, x, y, flux, free, xlo, ylo, fshape, w_img,
                             mem[sel][part], bx0[sel][part], by0[sel][part], box, fit_sky)
    idx = np.flatnonzero(alone)
    step = max(1, _CHUNK // (9 * fshape[0] * fshape[1]))
    for a in range(0, len(idx), step):
        sel = idx[a:a + step]
        _group_batch(bias, psf, x, y, flux, free, xlo, ylo, fshape, w_img, sel[:, None],
                     xlo[sel], ylo[sel], fshape, fit_sky)
    bias[too_faint] = np.nan
    return bias


def _quantize(size, f):
    """``size`` rounded up to ``f`` plus a multiple of ``max(2, f // 2)``."""
    q = max(2, f // 2)
    return f + -(-(size - f) // q) * q


def _group_batch(bias, psf, x, y, flux, free, xlo, ylo, fshape, w_img, mem, bx0, by0, box,
                 fit_sky):
    """Bias of groups of one size ``k`` on one union-box shape (in place on ``bias``)."""
    g_n, k = mem.shape
    fy, fx = fshape
    error, mask = w_img
    ny, nx = error.shape
    rows = by0[:, None, None] + np.arange(box[0])[None, :, None]
    cols = bx0[:, None, None] + np.arange(box[1])[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    union = np.zeros(inside.shape, dtype=bool)
    for j in range(k):
        dy = (ylo[mem[:, j]] - by0)[:, None, None]
        dx = (xlo[mem[:, j]] - bx0)[:, None, None]
        ry = rows - by0[:, None, None]
        rx = cols - bx0[:, None, None]
        union |= (ry >= dy) & (ry < dy + fy) & (rx >= dx) & (rx < dx + fx)
    rc, cc = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    err = np.asarray(error[rc, cc], dtype=float)
    use = union & inside & np.isfinite(err) & (err > 0)
    if mask is not None:
        use &= ~np.asarray(mask[rc, cc], dtype=bool)
    w = np.where(use, 1.0 / np.where(use, err, 1.0) ** 2, 0.0).reshape(g_n, -1)
    flat = mem.reshape(-1)
    _, d1, d2 = _derivatives(psf, x[flat], y[flat], flux[flat], box, np.repeat(bx0, k),
                             np.repeat(by0, k), 1.0, False)
    npix = d1.shape[2]
    fr = free[flat]  # (G k, 3)
    d1 = np.where(fr[:, :, None], d1, 0.0)
    d2 = np.where((fr[:, :, None] & fr[:, None, :])[..., None], d2, 0.0)
    p = 3 * k + (1 if fit_sky else 0)
    big = np.empty((g_n, p, npix))
    big[:, :3 * k] = d1.reshape(g_n, 3 * k, npix)
    if fit_sky:
        big[:, -1] = 1.0
    info = (big * w[:, None, :]) @ big.transpose(0, 2, 1)
    pfree = np.ones((g_n, p), dtype=bool)
    pfree[:, :3 * k] = fr.reshape(g_n, 3 * k)
    info = np.where(pfree[:, :, None] & pfree[:, None, :], info, np.eye(p)[None])
    _, kinv = bounds_from_fisher(info)
    kinv = np.where(pfree[:, :, None] & pfree[:, None, :], kinv, 0.0)
    # s(pix) = sum_tu K^tu m_tu: m_tu is non-zero only within a member (3 x 3 blocks)
    blocks = np.stack([kinv[:, 3 * j:3 * j + 3, 3 * j:3 * j + 3] for j in range(k)], axis=1)
    s = np.einsum("gjab,gjabp->gp", blocks, d2.reshape(g_n, k, 3, 3, npix))
    v = big @ (w * s)[:, :, None]
    b = -0.5 * (kinv @ v)[:, :3 * k, 0]
    b = np.where(pfree[:, :3 * k], b, 0.0).reshape(g_n * k, 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.abs(flux[flat]) / np.sqrt(kinv[:, range(2, 3 * k, 3), range(2, 3 * k, 3)]
                                           ).reshape(-1)
    snr = np.where(fr[:, 2], snr, np.inf)  # fixed flux: positions only
    good = np.all(np.isfinite(b), axis=1) & (snr >= MIN_SNR)
    bias[flat[good]] = b[good]


def check_bias_correction(bias_correction, *, likelihood, error_given):
    """Validate the ``bias_correction`` option; return it as a bool.

    Raises
    ------
    TypeError
        Not True or False.
    ValueError
        True with ``likelihood='poisson'`` (which corrects its isolated sources itself) or,
        at call time (``error_given`` False), without ``error``: the correction scales with
        the pixel variances.

    Examples
    --------
    >>> check_bias_correction(True, likelihood='gaussian', error_given=True)
    True
    """
    if not isinstance(bias_correction, (bool, np.bool_)):
        raise TypeError(f"bias_correction must be True or False, got {bias_correction!r}")
    if bias_correction and likelihood == "poisson":
        raise ValueError("bias_correction=True is for likelihood='gaussian'; the Poisson "
                         "likelihood corrects the bias of its isolated sources itself")
    if bias_correction and error_given is False:
        raise ValueError("bias_correction=True needs error (the pixel variances set the "
                         "size of the bias)")
    return bool(bias_correction)


def apply_bias_correction(fit, table, psf_model, fit_shape, error, mask, *, fit_sky=False):
    """Subtract the first-order bias from the fitted x, y and flux of ``fit`` (in place).

    ``fit`` is the photometry's per-source fit record (``values`` and ``errors`` dicts of
    (n,) arrays, ``reason`` "" for fitted rows); ``table`` the initial-parameter table (group
    ids and initial positions, which placed the fit stamps). Returns the (n, 3) bias applied
    (NaN where none was).
    """
    fitted = np.asarray(fit.reason) == ""
    x = np.where(fitted, np.asarray(fit.values["x"], dtype=float), np.nan)
    near = getattr(fit, "near_bound", None)  # stopped at an xy_bounds limit
    held = np.zeros(len(x), dtype=bool) if near is None else np.asarray(near, dtype=bool)
    bias = _bias(psf_model, x, fit.values["y"], fit.values["flux"], fit.errors["flux"],
                 table["group_id"], table["x_init"], table["y_init"], fit_shape, error, mask,
                 fit_sky, held)
    ok = np.all(np.isfinite(bias), axis=1)
    for j, k in enumerate(("x", "y", "flux")):
        fit.values[k][ok] = fit.values[k][ok] - bias[ok, j]
    return bias


def correct_table(results, psf_model, fit_shape, error, mask, *, fit_sky=False,
                  group_key=None):
    """:func:`apply_bias_correction` on a photometry results table (in place).

    For IterativePSFPhotometry, which corrects its final table once: ``group_key`` (n,)
    replaces ``group_id`` where ids repeat between iterations. Rows without finite fitted
    values are left alone. Returns the (n, 3) bias applied (NaN where none was).
    """
    def plain(name):
        col = results[name]
        return np.asarray(getattr(col, "value", col), dtype=float)

    gid = np.asarray(results["group_id"]) if group_key is None else group_key
    held = (np.asarray(results["flags"]) & 32) != 0  # near_bound: an xy_bounds limit
    bias = _bias(psf_model, plain("x_fit"), plain("y_fit"), plain("flux_fit"),
                 plain("flux_err"), gid, plain("x_init"), plain("y_init"), fit_shape, error,
                 mask, fit_sky, held)
    ok = np.all(np.isfinite(bias), axis=1)
    for j, name in enumerate(("x_fit", "y_fit", "flux_fit")):
        col = results[name]
        new = plain(name)
        new[ok] -= bias[ok, j]
        unit = getattr(col, "unit", None)
        results[name][:] = new if unit is None or not hasattr(col, "value") else new * unit
    return bias


def _bias(psf_model, x, y, flux, flux_err, gid, x_init, y_init, fit_shape, error, mask,
          fit_sky, held):
    """The bias of every row; rows ``held`` (a position stopped at its ``xy_bounds``, where
    the expansion about an interior maximum does not hold) stay in their group's model with
    their parameters held, and get a bias of 0."""
    from crowdphot.core.batched import stamp_origin

    x, y, flux, flux_err = (np.asarray(a, dtype=float) for a in (x, y, flux, flux_err))
    n = len(x)
    xlo, ylo = stamp_origin(np.asarray(x_init, dtype=float), np.asarray(y_init, dtype=float),
                            fit_shape)
    err = getattr(error, "value", error)  # a Quantity's numbers; planes stay as they are
    free = np.broadcast_to([not psf_model.x_0.fixed, not psf_model.y_0.fixed,
                            not psf_model.flux.fixed], (n, 3)) & ~held[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.abs(flux) / flux_err
    return cox_snell_groups(psf_model, x, y, flux, np.asarray(gid), xlo, ylo, fit_shape,
                            err, mask, free=free, fit_sky=fit_sky, snr=snr)
