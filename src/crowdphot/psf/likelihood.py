"""Maximum-likelihood PSF photometry for photon-counting data, and the Cramér–Rao bound.

Noise model (data in ADU, sky included): a pixel's expectation is ``mu = model + background``
(background = the source's ``local_bkg`` and/or a sky map) and its variance is

    V(mu) = mu / gain + (read_noise / gain) ** 2.

:func:`fit_psf_likelihood` maximises the Poisson likelihood (``read_noise = 0``) or, with read
noise, the shifted-Poisson likelihood ``gain * d + R**2 ~ Poisson(gain * mu + R**2)`` of
Snyder, Hammoud & White (1993, JOSA A 10, 1014). Both have the score equation

    sum_i (d_i - mu_i) / V(mu_i) * d mu_i / d theta = 0,

the quasi-likelihood estimating equation with variance function ``V`` (Wedderburn 1974;
McCullagh & Nelder 1989, ch. 9). It is solved inside the batched engine
(:func:`crowdphot.core.fit.fit_psf` with ``noise``, any group size): every Levenberg-Marquardt
evaluation refreshes the weights ``1 / V(mu)`` from the current model, the cost is half the
deviance, so each step is a damped Fisher-scoring step and steps are accepted when they raise
the likelihood (see :mod:`crowdphot.core.fit.lm`). At convergence the weights are those of the
solution, so the result is a root of the score equation -- the maximum-likelihood estimate,
not the biased data-weighted least squares (weights from ``sqrt(data)`` correlate with the
noise and pull faint fluxes low). Note that maximising a Gaussian likelihood with the variance
``V(mu)`` (with its ``log V`` term) would be a different, inconsistent estimator for Poisson
data; it is not what this module does.

Errors are the inverse Fisher information at the solution (absolute, never scaled by the
reduced chi-square): the observed information (minus the log-likelihood Hessian) for isolated
sources and groups of up to 6 members (the group likelihood over the union of their stamps),
which describes the estimator's scatter better at low S/N (Efron & Hinkley 1978), and the
expected information ``(D^T V^-1 D)^-1`` at the solution for larger groups, with a fitted sky,
where the observed one is not positive definite, and above S/N 100 (where the two agree to
~1 %). Members of groups of up to 6 closer than 1 FWHM to a partner, in groups with such a
member below S/N 10, get profile-likelihood errors instead (never smaller): near-degenerate
blends have a likelihood much flatter than its curvature at the maximum says, and their
Fisher errors were up to 1.2-1.4x too small (:func:`crowdphot.psf._mlrefine.profile_group_errors`).
The reduced chi-square is Pearson's statistic and should be near 1 for a correct PSF.
The flux of an isolated faint star is biased high by ``O(1 / S/N**2)`` when its position is
free (the fit centres on the noise); the first-order (Cox & Snell 1968) bias is subtracted by
default (below S/N 100; above it is < 0.01 sigma).

Limits (see bench/RESULTS.md): the bound is asymptotic. Below S/N ~10 the maximum-likelihood
position scatters more than the bound (x and y 1.066-1.07 x the bound at S/N 5.6 on 20,000
stars, robust scatter 1.01-1.02; a brute-force global maximisation of the exact likelihood per
star gives the same scatter: the excess is the estimator's own, falling as ~4 / S/N**2 in
variance), and pairs closer than ~0.7 FWHM with a member below S/N ~10 are sometimes fitted
in a distant global maximum of the likelihood (pull widths of unflagged members ~1.15 there,
1.00-1.03 over pairs 0.6-1.4 FWHM apart).
"""

from __future__ import annotations

import numbers

import numpy as np

from crowdphot.core.batched import stamp_origin
from crowdphot.core.crlb import bounds_from_fisher, fisher_information
from crowdphot.core.validate import as_pair
from crowdphot.psf._mlrefine import (
    close_faint_members,
    paint_stamps,
    profile_group_errors,
    refine_groups,
    refine_isolated,
    stamp_values,
)

__all__ = ["LIKELIHOODS", "add_crlb_column", "check_noise_options", "cramer_rao_bound",
           "engine_for", "expected_error_image", "fit_psf_likelihood", "flux_crlb_column",
           "poisson_blend_flags", "sky_map"]

LIKELIHOODS = ("gaussian", "poisson")


# -- option checks -------------------------------------------------------------------------
def _nonneg_real(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number >= 0, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _pos_real(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number > 0, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_noise_options(likelihood="gaussian", read_noise=None, gain=1.0, crlb=False):
    """Validate the photometry classes' noise options; returns them normalised.

    ``likelihood='poisson'`` and ``crlb=True`` need ``read_noise`` (0 for a photon-counting
    detector); ``gain`` is electrons per ADU.

    Returns
    -------
    likelihood : str
    read_noise : float or None
    gain : float
    crlb : bool

    Examples
    --------
    >>> check_noise_options('poisson', 5, 2)
    ('poisson', 5.0, 2.0, False)
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if not isinstance(crlb, (bool, np.bool_)):
        raise TypeError(f"crlb must be True or False, got {crlb!r}")
    gain = _pos_real("gain", gain)
    if read_noise is not None:
        read_noise = _nonneg_real("read_noise", read_noise)
    elif likelihood == "poisson" or crlb:
        what = "likelihood='poisson'" if likelihood == "poisson" else "crlb=True"
        raise ValueError(f"{what} needs read_noise (electrons rms; 0 for a photon-counting "
                         "detector)")
    return likelihood, read_noise, gain, bool(crlb)


# -- the maximum-likelihood driver ---------------------------------------------------------
def _per_source(name, value, n, dtype=float):
    arr = np.asarray(getattr(value, "value", value))
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.broadcast_to(arr, (n,)) if arr.ndim == 0 else arr
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    return arr.astype(dtype)


def fit_psf_likelihood(data, psf_model, x_init, y_init, flux_init, *, fit_shape, read_noise,
                       gain=1.0, sky=None, background=None, group_id=None, error=None,
                       mask=None, local_bkg=None, fixed=None, bounds=None, maxiters=100,
                       bias_correction=True, profile_errors=True, **engine_options):
    """Maximum-likelihood PSF fits of many sources (Poisson + read noise; see module doc).

    Same arguments and result as :func:`crowdphot.core.fit.fit_psf` (fit stamps on the initial
    positions, grouped sources fitted together), but the data are counts including the sky and
    the pixel weights come from the model: ``1 / V(mu)`` with ``mu = model + background``.

    Parameters
    ----------
    data : array_like of shape (ny, nx)
        Image in ADU, sky included (non-finite pixels ignored).
    psf_model : BatchedPSFMixin
        The PSF.
    x_init, y_init, flux_init : array_like of shape (n,)
        Initial parameters.
    fit_shape : int or (fy, fx)
        Odd fit stamp shape.
    read_noise : float
        Read noise in electrons rms (>= 0).
    gain : float, optional
        Electrons per ADU (> 0).
    sky : float or array_like of shape (ny, nx), optional
        Sky (background) map in ADU contained in ``data``: subtracted from the data and part
        of the expectation, on top of ``local_bkg``.
    background : array_like of shape (ny, nx), optional
        Sky map already subtracted from ``data`` (e.g. by :class:`crowdphot.PSFPhotometry`'s
        ``sky``): part of the expectation only.
    group_id, mask, local_bkg, fixed, bounds, maxiters
        As :func:`crowdphot.core.fit.fit_psf`; ``local_bkg`` (per source, over its stamp) is
        part of the expectation as well.
    error : None
        Not used (the variances come from the model); must be None.
    bias_correction : bool, optional
        Subtract the first-order (Cox & Snell 1968) bias of the maximum-likelihood estimate
        from isolated sources (groups of one), see :func:`crowdphot.core.crlb.cox_snell_bias`:
        the estimate of a faint star's flux is biased high by ``O(1 / S/N**2)`` when its
        position is free (+2.6 % at S/N 5.6, +0.3 % at 15, 0.01 % at 50; not applied above
        S/N 100, where it is < 0.01 sigma). Default True.
    profile_errors : bool, optional
        x, y and flux errors of group members (groups of 2 to 6) closer than 1 FWHM to a
        partner, in groups with such a member below S/N 10, from the profile likelihood: the
        larger half-width of the +-2 sigma interval over 2, never below the Fisher error
        (:func:`crowdphot.psf._mlrefine.profile_group_errors`; two constrained refits of
        the group per parameter). Near-degenerate blends have a likelihood flatter than its
        curvature at the maximum, so their Fisher errors are too small (flux pull widths
        1.2-1.4 at < 0.8 FWHM with a faint member). Default True.
    **engine_options
        Passed to :func:`crowdphot.core.fit.fit_psf` (``shared_pixels``, ``fit_sky``,
        ``xtol``...).

    Returns
    -------
    FitResult
        Errors and ``cov`` are the inverse Fisher information at the solution (absolute;
        the observed information, minus the log-likelihood's Hessian, for isolated sources
        and groups of up to 6 members; the expected information for larger groups, with a
        fitted sky, or where the observed one is not positive definite);
        ``chi2``/``reduced_chi2`` are Pearson's statistic.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> psf = CircularGaussianPRF(fwhm=2.5)
    >>> rng = np.random.default_rng(0)
    >>> img = psf.psf_stamps([20.3], [15.7], (32, 40), xlo=[0], ylo=[0])[0] * 5000.0 + 10.0
    >>> img = rng.poisson(img) + rng.normal(0.0, 5.0, img.shape)
    >>> res = fit_psf_likelihood(img, psf, [20.0], [16.0], [4000.0], fit_shape=7,
    ...                          read_noise=5.0, local_bkg=[10.0])
    >>> bool(abs(res.flux[0] - 5000.0) < 4 * res.flux_err[0]), bool(res.converged[0])
    (True, True)
    """
    import dataclasses

    from crowdphot.core.fit import fit_psf

    if error is not None:
        raise ValueError("error must be None for the likelihood fit (variances come from the "
                         "model: read_noise and gain)")
    read_noise = _nonneg_real("read_noise", read_noise)
    gain = _pos_real("gain", gain)
    arr = np.asarray(getattr(data, "value", data), dtype=float)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"data must be a non-empty 2D array, got shape {arr.shape}")
    x = np.atleast_1d(np.asarray(getattr(x_init, "value", x_init), dtype=float))
    if x.ndim != 1:
        raise ValueError(f"x_init must be 1D, got shape {x.shape}")
    n = len(x)
    y = _per_source("y_init", y_init, n)
    fshape = tuple(int(v) for v in as_pair("fit_shape", fit_shape, lower_bound=1, odd=True))
    gid = np.arange(n) if group_id is None else np.asarray(group_id)
    if gid.dtype.kind not in "iu" or gid.shape != (n,):
        raise ValueError(f"group_id must be integers of shape ({n},)")
    bkg = np.zeros(n) if local_bkg is None else _per_source("local_bkg", local_bkg, n)
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    finite = np.isfinite(x) & np.isfinite(y)
    xlo, ylo = stamp_origin(np.where(finite, x, 0.0), np.where(finite, y, 0.0), fshape)
    sky_img = None  # all sky maps, removed from ``arr`` before the fit
    if sky is not None:
        sky_img = _sky_image("sky", sky, arr.shape)
        arr = arr - sky_img
    if background is not None:  # already subtracted: the expectation only
        bg_img = _sky_image("background", background, arr.shape)
        sky_img = bg_img if sky_img is None else sky_img + bg_img
    sky_st = None if sky_img is None else stamp_values(sky_img, xlo, ylo, fshape)[0]
    res = fit_psf(arr, psf_model, x, y, flux_init,
                  fit_shape=fshape, group_id=group_id, mask=mask, local_bkg=bkg, fixed=fixed,
                  bounds=bounds, maxiters=maxiters, noise=(read_noise, gain, sky_st),
                  **engine_options)
    full = {f.name: np.array(getattr(res, f.name), copy=True) for f in dataclasses.fields(res)}
    fit_sky = bool(engine_options.get("fit_sky", False))
    counts, inside = stamp_values(arr, xlo, ylo, fshape)  # sky maps removed
    counts = counts + (0.0 if sky_st is None else sky_st)
    valid = inside & np.isfinite(counts) & finite[:, None, None]
    if mask is not None:
        valid &= ~stamp_values(np.asarray(mask, dtype=float), xlo, ylo, fshape)[0].astype(bool)
    background = bkg[:, None, None] + (0.0 if sky_st is None else sky_st)
    if engine_options.get("neighbors") is not None:  # subtracted light of other groups
        background = background + np.asarray(engine_options["neighbors"],
                                             dtype=float).reshape(n, *fshape)
    refine_isolated(full, psf_model, np.where(valid, counts, 0.0), background, valid, gid,
                    xlo, ylo, fshape, read_noise, gain, fit_sky, bias_correction)
    # small groups: observed information of the group likelihood (the union of the members'
    # stamps, a pixel once, as the engine counts it); not with a fitted sky, subtracted
    # neighbours or photutils' pixel counting, which keep the expected information
    _, cnt = np.unique(gid, return_counts=True)
    if (not fit_sky and engine_options.get("neighbors") is None and np.any(cnt > 1)
            and engine_options.get("shared_pixels", "once") == "once"):
        usable = np.isfinite(arr)
        if mask is not None:
            usable &= ~np.asarray(mask, dtype=bool)
        bg_img = paint_stamps(arr.shape, bkg, xlo, ylo, fshape, np.argsort(gid, kind="stable"))
        if sky_img is not None:
            bg_img = bg_img + sky_img
        counts_img = arr if sky_img is None else arr + sky_img
        refine_groups(full, psf_model, counts_img, bg_img, usable, gid, xlo, ylo, fshape,
                      read_noise, gain)
        if profile_errors:
            close = close_faint_members(psf_model, full, x, y, gid)
            profile_group_errors(full, psf_model, counts_img, bg_img, usable, gid, xlo, ylo,
                                 fshape, read_noise, gain, close)
    return type(res)(**full)


def sky_value(sky, unit):
    """The ``sky`` argument's numbers in the data's ``unit`` (a Quantity converted, anything
    else as given); the photometry classes' messages for a unit mismatch."""
    if hasattr(sky, "unit") and hasattr(sky, "to_value"):
        if unit is None:
            raise ValueError("sky has a unit but data has none")
        try:
            return sky.to_value(unit)
        except Exception as exc:  # astropy UnitConversionError
            raise ValueError(f"sky must have units compatible with data ({unit})") from exc
    return sky


def sky_map(sky, shape, unit=None):
    """Check the photometry classes' ``sky`` argument: a finite (ny, nx) float image in the
    data's unit (a scalar is broadcast; a Quantity is converted to ``unit``).

    Examples
    --------
    >>> sky_map(10.0, (2, 3)).shape
    (2, 3)
    """
    sky = sky_value(sky, unit)
    try:
        arr = np.asarray(sky, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError("sky must be a number or a numeric image") from exc
    return np.array(_sky_image("sky", arr, shape))


def _sky_image(name, value, shape):
    """A sky map argument as a finite (ny, nx) float image (a scalar is broadcast)."""
    val = np.asarray(getattr(value, "value", value), dtype=float)
    if val.ndim not in (0, 2) or (val.ndim == 2 and val.shape != tuple(shape)):
        raise ValueError(f"{name} must be a scalar or an image of shape {tuple(shape)}, got "
                         f"shape {val.shape}")
    if not np.all(np.isfinite(val)):
        raise ValueError(f"{name} contains NaN or inf values")
    return np.broadcast_to(val, shape)


# -- Cramér–Rao bounds -----------------------------------------------------------------------
def cramer_rao_bound(psf_model, flux, x, y, *, sky, read_noise, gain=1.0, fit_shape=None,
                     fit_sky=False, exact=False):
    """Cramér–Rao bounds of isolated stars: the smallest achievable 1-sigma errors.

    For a star of known PSF on a flat ``sky``, with Poisson photon noise and Gaussian read
    noise (shifted-Poisson information, see :mod:`crowdphot.core.crlb`), using the pixels of a
    ``fit_shape`` stamp centred on the star as a fit would. Plan exposures (how faint can I
    measure to 1 %?) or judge a catalog (``flux_err / flux_crlb`` is a fit's efficiency).

    Parameters
    ----------
    psf_model : BatchedPSFMixin
        A crowdphot PSF model.
    flux : float or array_like of shape (n,)
        Star fluxes (ADU).
    x, y : float or array_like of shape (n,)
        Positions (pixels); the sub-pixel phase matters a little.
    sky : float or array_like of shape (n,)
        Sky level per pixel (ADU).
    read_noise : float
        Read noise (electrons rms, >= 0).
    gain : float, optional
        Electrons per ADU.
    fit_shape : int or (ny, nx), optional
        Odd stamp shape; default: the PSF model's full extent (``default_stamp_shape``).
    fit_sky : bool, optional
        The sky is fitted too (a fourth, nuisance parameter that widens the bounds).
    exact : bool, optional
        Exact Poisson-Gaussian information per pixel (numerical integration, Chao, Ward &
        Ober 2016) instead of the shifted-Poisson approximation, which is what the
        ``likelihood='poisson'`` fit attains: the exact bound is lower by < 1 % in sigma
        for sky-limited CCD data (e.g. 0.3 % at 10 e-/px, R = 5 e-).

    Returns
    -------
    QTable
        Columns ``x, y, flux, x_crlb, y_crlb, flux_crlb`` (``sky_crlb`` when ``fit_sky``) and
        ``snr_max = flux / flux_crlb``.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> t = cramer_rao_bound(CircularGaussianPRF(fwhm=2.5), [500.0, 1e4], 10.0, 10.0,
    ...                      sky=10.0, read_noise=5.0, fit_shape=7)
    >>> bool(t['snr_max'][1] > t['snr_max'][0])
    True
    """
    from astropy.table import QTable

    if not callable(getattr(psf_model, "_stamps_grad", None)):
        raise TypeError("psf_model must be a crowdphot PSF model (batched interface)")
    fl = np.atleast_1d(np.asarray(getattr(flux, "value", flux), dtype=float))
    if fl.ndim != 1:
        raise ValueError(f"flux must be a scalar or 1D, got shape {fl.shape}")
    n = max(len(fl), np.size(x), np.size(y), np.size(sky))
    fl = _per_source("flux", fl if len(fl) > 1 else fl[0], n)
    xs = _per_source("x", x, n)
    ys = _per_source("y", y, n)
    sk = _per_source("sky", sky, n)
    for name, v in (("flux", fl), ("x", xs), ("y", ys), ("sky", sk)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} contains NaN or inf values")
    read_noise = _nonneg_real("read_noise", read_noise)
    gain = _pos_real("gain", gain)
    for name, flag in (("fit_sky", fit_sky), ("exact", exact)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if fit_shape is None:
        shape = tuple(int(v) for v in psf_model.default_stamp_shape)
        shape = tuple(s + 1 - s % 2 for s in shape)
    else:
        shape = tuple(int(v) for v in as_pair("fit_shape", fit_shape, lower_bound=1, odd=True))
    fisher = fisher_information(psf_model, xs, ys, fl, shape, sky=sk[:, None, None],
                                read_noise=read_noise, gain=gain, fit_sky=bool(fit_sky),
                                exact=bool(exact))
    sigma, _ = bounds_from_fisher(fisher)
    cols = {"x": xs, "y": ys, "flux": fl, "x_crlb": sigma[:, 0], "y_crlb": sigma[:, 1],
            "flux_crlb": sigma[:, 2]}
    if fit_sky:
        cols["sky_crlb"] = sigma[:, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["snr_max"] = fl / sigma[:, 2]
    return QTable(cols)


def flux_crlb_column(shape, psf_model, x_fit, y_fit, flux_fit, x_init, y_init, local_bkg, *,
                     fit_shape, read_noise, gain, mask=None, sky=None):
    """Per-source flux Cramér–Rao bound at the fitted parameters (unchecked helper).

    ``sky`` (ny, nx), optional: a sky map added to ``local_bkg`` as the stamps' background.

    The bound of the source as if isolated, on its fit stamp (placed on the initial position,
    trimmed at the image edges, masked pixels dropped), with its ``local_bkg`` as the sky.
    NaN for sources without a finite fit. For a blend this is a lower limit: the neighbours'
    parameters only widen the bound.

    Returns
    -------
    ndarray of shape (n,)
    """
    n = len(x_fit)
    out = np.full(n, np.nan)
    vals = [np.asarray(v, dtype=float) for v in (x_fit, y_fit, flux_fit, x_init, y_init)]
    bkg = np.asarray(local_bkg, dtype=float)
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    ok = np.all([np.isfinite(v) for v in vals], axis=0)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return out
    fy, fx = fit_shape
    xlo, ylo = stamp_origin(vals[3][idx], vals[4][idx], fit_shape)
    rows = ylo[:, None] + np.arange(fy)
    cols = xlo[:, None] + np.arange(fx)
    ny, nx = shape
    valid = ((rows >= 0) & (rows < ny))[:, :, None] & ((cols >= 0) & (cols < nx))[:, None, :]
    if mask is not None:
        valid &= ~np.asarray(mask)[np.clip(rows, 0, ny - 1)[:, :, None],
                                   np.clip(cols, 0, nx - 1)[:, None, :]]
    sky_px = np.broadcast_to(bkg[idx, None, None], valid.shape)
    if sky is not None:
        sky_px = sky_px + stamp_values(np.asarray(sky, dtype=float), xlo, ylo, fit_shape)[0]
    for start in range(0, len(idx), 100_000):
        part = slice(start, start + 100_000)
        fisher = fisher_information(psf_model, vals[0][idx[part]], vals[1][idx[part]],
                                    vals[2][idx[part]], fit_shape,
                                    sky=sky_px[part], read_noise=read_noise,
                                    gain=gain, xlo=xlo[part], ylo=ylo[part], valid=valid[part])
        out[idx[part]] = bounds_from_fisher(fisher)[0][:, 2]
    return out


def engine_for(read_noise, gain, background=None, profile_errors=True):
    """A drop-in for :func:`crowdphot.core.fit.fit_psf` that fits by maximum likelihood.

    The photometry shells call the returned function exactly as the engine (``error`` None)
    on data from which the sky map ``background`` (if any) was subtracted.
    ``profile_errors``: as :func:`fit_psf_likelihood`'s.

    Examples
    --------
    >>> fit = engine_for(5.0, 2.0)
    >>> fit.keywords
    {'read_noise': 5.0, 'gain': 2.0}
    """
    import functools

    extra = {} if background is None else {"background": background}
    if not profile_errors:
        extra["profile_errors"] = False
    return functools.partial(fit_psf_likelihood, read_noise=read_noise, gain=gain, **extra)


def add_crlb_column(results, psf_model, shape, mask, fit_shape, read_noise, gain, unit=None,
                    sky=None):
    """Add ``flux_crlb`` (see :func:`flux_crlb_column`) to a photometry results table in place.

    The column goes right after ``flux_err``; it carries the data unit when there is one.
    """
    def plain(name):
        col = results[name]
        return np.asarray(getattr(col, "value", col), dtype=float)

    col = flux_crlb_column(shape, psf_model, plain("x_fit"), plain("y_fit"), plain("flux_fit"),
                           plain("x_init"), plain("y_init"), plain("local_bkg"),
                           fit_shape=tuple(fit_shape), read_noise=read_noise, gain=gain,
                           mask=mask, sky=sky)
    if unit is not None:
        col = col * unit
    results.add_column(col, name="flux_crlb", index=results.colnames.index("flux_err") + 1)


# -- the unresolved-blend test with the model's variances ---------------------------------------
def expected_error_image(shape, psf_model, table, values, fit_shape, read_noise, gain, *,
                         sky=None, group_sky=None):
    """Pixel errors ``sqrt(V(mu))`` of the fitted expectation (unchecked helper).

    ``mu`` = the fitted stars (``values``: ``'x'``, ``'y'``, ``'flux'`` arrays, NaN for
    unfitted rows) + each source's ``local_bkg`` (and ``group_sky``, a fitted sky per source)
    over its fit stamp (placed on ``x_init``, ``y_init`` of ``table``) + the ``sky`` map
    (ny, nx) removed from the data. These are the Poisson fit's weights at its solution, so a
    least-squares test with this error image measures the likelihood to second order.

    Returns
    -------
    ndarray of shape (ny, nx)
    """
    from crowdphot.core.crlb import pixel_variance
    from crowdphot.core.render import render_image

    def col(name):
        return np.asarray(getattr(table[name], "value", table[name]), dtype=float)

    x, y, flux = (np.asarray(values[k], dtype=float) for k in ("x", "y", "flux"))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    mu = render_image(tuple(shape), psf_model, x[ok], y[ok], flux[ok])
    bkg = np.where(np.isfinite(col("local_bkg")), col("local_bkg"), 0.0)
    if group_sky is not None:
        bkg = bkg + np.nan_to_num(np.asarray(group_sky, dtype=float))
    xi, yi = col("x_init"), col("y_init")
    use = np.isfinite(xi) & np.isfinite(yi)
    xlo, ylo = stamp_origin(xi[use], yi[use], tuple(fit_shape))
    gid = np.asarray(table["group_id"])[use]
    mu += paint_stamps(tuple(shape), bkg[use], xlo, ylo, tuple(fit_shape),
                       np.argsort(gid, kind="stable"))
    if sky is not None:
        mu += sky
    return np.sqrt(pixel_variance(mu, read_noise, gain))


def poisson_blend_flags(data, psf_model, table, values, flux_err, fit_shape, *, read_noise,
                        gain, mask=None, sky=None, group_sky=None):
    """``unresolved_blend`` (flag 32768) for ``likelihood='poisson'`` fits (unchecked helper).

    :func:`crowdphot.psf.blends.catalog_blend_flags`' witness test, its least squares weighted
    with the fitted model's variances (:func:`expected_error_image`): the Poisson
    log-likelihood to second order around the solution. ``data`` are the fitted counts with
    the ``sky`` map removed; all False when no group has two fitted members.
    """
    from crowdphot.psf.blends import catalog_blend_flags

    x, y, flux = (np.asarray(values[k], dtype=float) for k in ("x", "y", "flux"))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    _, counts = np.unique(np.asarray(table["group_id"])[ok], return_counts=True)
    if not np.any(counts > 1):
        return np.zeros(len(x), dtype=bool)
    err = expected_error_image(np.shape(data), psf_model, table, values, fit_shape,
                               read_noise, gain, sky=sky, group_sky=group_sky)
    return catalog_blend_flags(data, psf_model, table, values, flux_err, fit_shape,
                               error=err, mask=mask, sky=group_sky)
