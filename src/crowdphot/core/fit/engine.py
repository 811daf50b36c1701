"""Batched PSF fitting: the functional core behind :class:`crowdphot.PSFPhotometry`.

Semantics follow photutils 3 ``PSFPhotometry`` with its default ``TRFLSQFitter``: each source
has a ``fit_shape`` stamp on its initial position (trimmed at the image edges, masked pixels
dropped); a group is fitted as the sum of its members' PSFs over the concatenation of the
members' stamps; residuals are ``(data - local_bkg_of_stamp_owner - model) / error``. Unlike
photutils, all groups are solved together with a batched Levenberg-Marquardt (``lm``), so
there is no Python loop per source or per group.

The engine returns raw diagnostics (``reason``, ``converged``, ``cov_ok``, ``bound_distance``,
``left_stamp``, ``absurd``); :mod:`crowdphot.psf.flags` turns them into flag bits.

Parameters tied across sources (one star seen in many exposures, ALLFRAME-style) run on the
same machinery: :mod:`crowdphot.core.fit.tied` evaluates the *copies* of each source (one per
exposure, own stamp, PSF and WCS Jacobian) with this engine's batched evaluation and solves for
the shared parameters (:class:`crowdphot.core.fit.params.TiedParams`) by the chain rule.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

import numpy as np

from crowdphot.core.fit.lm import PoissonNoise, Problem, levenberg_marquardt, model_weights
from crowdphot.core.fit.pairs import build_interactions
from crowdphot.core.fit.params import ParamSet
from crowdphot.core.fit.solve import inverse_groups, make_layout, scale_blocks, scale_group
from crowdphot.core.fit.stamps import REASONS, gather_stamps, shared_pixel_mask
from crowdphot.core.validate import as_pair, check_mask

__all__ = ["FitResult", "fit_psf"]

_PARAMS = ("x", "y", "flux")

#: A fitted |flux| above this times the stamps' peak |data| times the fit area is absurd.
ABSURD_FLUX = 1e3
#: A fitted position farther than this many fit boxes from its start is absurd.
ABSURD_BOXES = 10


@dataclass(frozen=True)
class FitResult:
    """Per-source fit results; every field is an array of length ``n`` in input order.

    Attributes
    ----------
    x, y, flux : ndarray of float
        Fitted values (NaN for sources that could not be fitted, see ``reason``).
    x_err, y_err, flux_err : ndarray of float
        ``sqrt(diag(cov))``; NaN for fixed parameters and when ``cov_ok`` is False.
    cov : ndarray of shape (n, 3, 3), or (n, 4, 4) with ``fit_sky``
        Per-source covariance block of ``(x, y, flux)`` (and the group's ``sky``) taken from
        the group's inverse normal matrix; absolute (``error`` given) or scaled by
        ``chi2 / dof`` of the group (no ``error``), as astropy's fitters do. NaN rows/columns
        for fixed parameters.
    n_pixels : ndarray of int64
        Pixels of the source's own stamp used in the fit.
    n_free : ndarray of int64
        Free parameters of the source.
    niter : ndarray of int64
        Levenberg-Marquardt iterations of the source's group.
    converged : ndarray of bool
        The group met a convergence test before ``maxiters`` (False when not fitted).
    cov_ok : ndarray of bool
        The covariance is available (group normal matrix non-singular, more pixels than free
        parameters in the group).
    bound_distance : ndarray of float
        Distance (pixels) of the fitted x or y to the nearest of its finite bounds (inf
        without bounds, NaN when not fitted); :mod:`crowdphot.psf.flags` decides what is
        "near".
    qfit : ndarray of float
        Sum of ``|data - bkg - model|`` over the own stamp divided by the fitted flux.
    cfit : ndarray of float
        ``(data - bkg - model)`` at the pixel holding the initial position, divided by the
        fitted flux (NaN when that pixel is not in the fit).
    chi2 : ndarray of float
        Sum of squared weighted residuals over the own stamp (unit weights without error).
    reduced_chi2 : ndarray of float
        ``chi2 / (n_pixels - n_free)``; NaN without ``error``.
    center_in_stamp : ndarray of bool
        The pixel holding the initial position is part of the fit.
    fitted : ndarray of bool
        The source took part in a fit (``reason == ''``).
    reason : ndarray of str (object)
        '' or why the source was not fitted: 'invalid_position', 'non_finite_flux',
        'no_overlap', 'fully_masked' or 'too_few_pixels'.
    sky, sky_err : ndarray of float
        The fitted sky of the source's group and its error (``fit_sky``; NaN otherwise).
    left_stamp : ndarray of bool
        The position reached the edge of the source's fit stamp during the fit and the
        source was stopped there (``converged`` is then False).
    absurd : ndarray of bool
        A fitted value was absurd (|flux| above ``ABSURD_FLUX`` times the largest |data| of
        the fit stamps times the stamp area, or a position more than ``ABSURD_BOXES`` fit
        boxes from its start, or not finite): the source's values and errors are NaN.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    x_err: np.ndarray
    y_err: np.ndarray
    flux_err: np.ndarray
    cov: np.ndarray
    n_pixels: np.ndarray
    n_free: np.ndarray
    niter: np.ndarray
    converged: np.ndarray
    cov_ok: np.ndarray
    bound_distance: np.ndarray
    qfit: np.ndarray
    cfit: np.ndarray
    chi2: np.ndarray
    reduced_chi2: np.ndarray
    center_in_stamp: np.ndarray
    fitted: np.ndarray
    reason: np.ndarray
    sky: np.ndarray
    sky_err: np.ndarray
    left_stamp: np.ndarray
    absurd: np.ndarray


def _support_of(psf_model, support_shape):
    if isinstance(support_shape, str):
        try:
            return tuple(int(v) for v in psf_model.default_stamp_shape)
        except (ValueError, NotImplementedError, AttributeError, TypeError):
            return None
    return support_shape


def _fit_psf(data, psf_model, x, y, flux, fit_shape, *, group_id=None, error=None, mask=None,
             local_bkg=None, fixed=None, lo=None, hi=None, maxiters=100, xtol=1e-6,
             ftol=1e-10, support_shape="auto", dense_max=64, strict_error=False,
             shared_pixels="once", fit_sky=False, neighbors=None, start=None,
             support_radius=None, covariance=True, noise=None):
    """Unchecked core of :func:`fit_psf`.

    ``fixed`` is an ``(n, 3)`` bool array and ``lo, hi`` are ``(n, 3)`` float arrays (columns
    x, y, flux); other arguments as in :func:`fit_psf`, already validated. Non-finite data
    pixels are dropped; ``strict_error`` raises on bad error values inside used stamps.
    ``covariance=False`` skips the covariance (NaN errors, ``cov_ok`` False): all-star passes
    whose errors are taken from an earlier fit.
    """
    n = len(x)
    fit_shape = tuple(int(v) for v in fit_shape)
    fixed = np.zeros((n, 3), dtype=bool) if fixed is None else fixed
    lo = np.full((n, 3), -np.inf) if lo is None else lo
    hi = np.full((n, 3), np.inf) if hi is None else hi
    params = ParamSet(group=("sky",) if fit_sky else ())
    n_free = 3 - fixed.sum(axis=1)
    st = gather_stamps(data, x, y, flux, fit_shape, mask=mask, error=error,
                       local_bkg=local_bkg, n_free=n_free, strict_error=strict_error)
    fitted = st.reason == 0
    if neighbors is not None:  # light of sources outside each group, removed from its stamps
        st = replace(st, data=st.data - np.asarray(neighbors, dtype=float).reshape(n, -1))
    theta0 = np.column_stack([x, y, flux])
    if start is not None:  # a start other than the stamp centres (all-star passes)
        theta0 = np.where(np.isfinite(start), start, theta0)

    res = {k: np.full(n, np.nan) for k in ("x", "y", "flux", "x_err", "y_err", "flux_err",
                                           "qfit", "cfit", "chi2", "reduced_chi2")}
    n_all = params.n_source + params.n_group
    cov_all = np.full((n, n_all, n_all), np.nan)
    sky = np.full(n, np.nan)
    sky_err = np.full(n, np.nan)
    niter_all = np.zeros(n, dtype=np.int64)
    conv_all = np.zeros(n, dtype=bool)
    covok_all = np.zeros(n, dtype=bool)
    stopped_all = np.zeros(n, dtype=bool)

    idx = np.flatnonzero(fitted)
    if len(idx):
        gid = np.arange(n) if group_id is None else np.asarray(group_id)
        idx = idx[np.argsort(gid[idx], kind="stable")]
        _, grp = np.unique(gid[idx], return_inverse=True)
        grp = grp.astype(np.int64)
        # the model's support only matters for groups (it can cost an astropy bounding box)
        support = _support_of(psf_model, support_shape) if len(grp) > grp[-1] + 1 else None
        if support_radius is not None and len(grp) > grp[-1] + 1:  # per-source reach
            support = np.asarray(support_radius, dtype=float)[idx][:, None]
        inter = build_interactions(x[idx], y[idx], st.xlo[idx], st.ylo[idx], grp, fit_shape,
                                   support_shape=support)
        lay = make_layout(grp, inter, dense_max=dense_max,
                          xy=np.column_stack([x[idx], y[idx]]))
        weight = st.weight[idx]
        npix_fit = st.n_pixels[idx]
        if shared_pixels == "once" and len(grp) > grp[-1] + 1:
            # a pixel in two members' stamps is one measurement: weight it once
            repeat = shared_pixel_mask(st.xlo[idx], st.ylo[idx], st.valid[idx], fit_shape,
                                       grp, data.shape[1])
            if repeat.any():
                weight = np.where(repeat, 0.0, weight)
                npix_fit = npix_fit - repeat.sum(axis=1)
        pn = None
        if noise is not None:  # maximum likelihood: weights from the model (lm.PoissonNoise)
            extra = np.zeros((n, st.data.shape[1])) if noise[2] is None else \
                np.asarray(noise[2], dtype=float).reshape(n, -1)
            if neighbors is not None:
                extra = extra + np.asarray(neighbors, dtype=float).reshape(n, -1)
            if local_bkg is not None:
                extra = extra + np.where(np.isfinite(local_bkg), local_bkg, 0.0)[:, None]
            pn = PoissonNoise.build(noise[0], noise[1], extra[idx], st.data[idx])
        prob = Problem(psf=psf_model, fit_shape=fit_shape, data=st.data[idx],
                       weight=weight, xlo=st.xlo[idx], ylo=st.ylo[idx], inter=inter,
                       layout=lay, free=~fixed[idx], lo=lo[idx], hi=hi[idx], params=params,
                       noise=pn)
        theta, phi, ev, niter, conv, stopped = levenberg_marquardt(
            prob, theta0[idx], maxiters=maxiters, xtol=xtol, ftol=ftol)
        if covariance:
            cov, cov_ok = _covariance(prob, ev, npix_fit, n_free[idx],
                                      error is None and noise is None)
        else:
            cov = np.full((len(idx), n_all, n_all), np.nan)
            cov_ok = np.zeros(len(idx), dtype=bool)
        for k, name in enumerate(_PARAMS):
            res[name][idx] = theta[:, k]
            with np.errstate(invalid="ignore"):
                res[f"{name}_err"][idx] = np.sqrt(cov[:, k, k])
        if params.n_group:
            sky[idx] = phi[grp, 0]
            with np.errstate(invalid="ignore"):
                sky_err[idx] = np.sqrt(cov[:, 3, 3])
        cov_all[idx] = cov
        niter_all[idx] = niter[grp]
        conv_all[idx] = conv[grp] & ~stopped
        stopped_all[idx] = stopped
        covok_all[idx] = cov_ok
        if noise is not None:  # chi-square (Pearson's) with the weights at the solution
            st.weight[idx] = model_weights(prob, ev.resid, st.weight[idx])
        _metrics(res, idx, ev.resid, st, theta[:, 2], n_free[idx],
                 error is not None or noise is not None)

    absurd = _absurd(res, x, y, fitted, fit_shape, st)
    for name in ("x", "y", "flux", "x_err", "y_err", "flux_err", "qfit", "cfit"):
        res[name][absurd] = np.nan
    cov_all[absurd] = np.nan
    covok_all &= ~absurd
    dist = np.full(n, np.inf)
    with np.errstate(invalid="ignore"):
        for k in range(2):
            val = res[_PARAMS[k]]
            for bound in (lo[:, k], hi[:, k]):
                d = np.abs(val - bound)
                dist = np.where(np.isfinite(bound) & (d < dist), d, dist)
    dist[~np.isfinite(res["x"]) | ~np.isfinite(res["y"])] = np.nan
    return FitResult(cov=cov_all, n_pixels=st.n_pixels, n_free=n_free.astype(np.int64),
                     niter=niter_all, converged=conv_all, cov_ok=covok_all,
                     bound_distance=dist, center_in_stamp=st.center >= 0, fitted=fitted,
                     reason=np.array(REASONS, dtype=object)[st.reason], sky=sky,
                     sky_err=sky_err, left_stamp=stopped_all, absurd=absurd, **res)


def _absurd(res, x0, y0, fitted, fit_shape, st):
    """Fitted sources whose values no data can support (see ``FitResult.absurd``)."""
    fy, fx = fit_shape
    peak = float(np.max(np.abs(st.data[fitted]), initial=0.0))
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(res["x"]) & np.isfinite(res["y"]) & np.isfinite(res["flux"]))
        bad |= np.abs(res["flux"]) > ABSURD_FLUX * peak * fy * fx
        bad |= (np.abs(res["x"] - x0) > ABSURD_BOXES * fx) | (
            np.abs(res["y"] - y0) > ABSURD_BOXES * fy)
    return fitted & bad


def _covariance(prob, ev, npix, n_free, scale_by_chi2):
    """Per-source covariance ``(m, K + S, K + S)`` (own parameters, then the group's) and a
    per-source availability flag."""
    lay = prob.layout
    grp = lay.group
    n_s = prob.params.n_group
    scaled, sd, usable = scale_blocks(ev.blocks, lay, prob.free)
    free = prob.free
    if n_s:
        cross, gdiag, gsd, gusable = scale_group(ev.cross, ev.gblock, lay, usable, sd)
        inv, gok, gcov, xcov = inverse_groups(scaled, lay, np.ones(lay.n_groups, dtype=bool),
                                              group=(cross, gdiag))
        inv = np.concatenate([np.concatenate([inv, xcov], axis=2),
                              np.concatenate([xcov.transpose(0, 2, 1), gcov[grp]], axis=2)],
                             axis=1)
        sd = np.concatenate([sd, gsd[grp]], axis=1)
        usable = np.concatenate([usable, gusable[grp]], axis=1)
        free = np.concatenate([free, np.ones((len(grp), n_s), dtype=bool)], axis=1)
    else:
        inv, gok = inverse_groups(scaled, lay, np.ones(lay.n_groups, dtype=bool))
    kk = np.arange(inv.shape[1])
    diag = inv[:, kk, kk]
    with np.errstate(invalid="ignore"):
        sane = np.where(usable, (diag > 0) & (diag < 1e12), True).all(axis=1)
    cov = inv / (sd[:, :, None] * sd[:, None, :])
    cov = np.where(free[:, :, None] & free[:, None, :], cov, np.nan)
    dof = (np.bincount(grp, npix, minlength=lay.n_groups)
           - np.bincount(grp, n_free, minlength=lay.n_groups) - n_s)
    if scale_by_chi2:
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = np.where(dof > 0, 2.0 * ev.cost / np.maximum(dof, 1), np.nan)
        cov = cov * factor[grp][:, None, None]
    ok = gok[grp] & (dof[grp] > 0) & sane & (usable == free).all(axis=1) & (n_free > 0)
    cov = np.where(ok[:, None, None], cov, np.nan)
    return cov, ok


def _metrics(res, idx, resid, st, flux, n_free, have_error):
    valid = st.valid[idx]
    raw = np.where(valid, resid, 0.0)
    wr = raw * st.weight[idx]
    chi2 = np.einsum("ij,ij->i", wr, wr)
    center = st.center[idx]
    cen = np.where(center >= 0, raw[np.arange(len(idx)), np.maximum(center, 0)], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        nz = flux != 0
        res["qfit"][idx] = np.where(nz, np.abs(raw).sum(axis=1) / np.where(nz, flux, 1), np.nan)
        res["cfit"][idx] = np.where(nz, cen / np.where(nz, flux, 1), np.nan)
        res["chi2"][idx] = chi2
        if have_error:
            res["reduced_chi2"][idx] = chi2 / (st.n_pixels[idx] - n_free)


# -- checked public wrapper ------------------------------------------------------------------
def _as_image(name, value):
    value = getattr(value, "value", value)  # astropy Quantity
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 2D numeric array") from exc
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 2D array, got shape {arr.shape}")
    return arr


def _per_source(name, value, n, dtype=float):
    arr = np.asarray(getattr(value, "value", value))
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {arr.shape}")
    return arr.astype(dtype)


def _check_dict(name, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict keyed by 'x', 'y', 'flux' or None")
    unknown = set(value) - set(_PARAMS)
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {sorted(unknown)}; use 'x', 'y', 'flux'")
    return value


def _check_fixed(fixed, n):
    fixed = _check_dict("fixed", fixed)
    out = np.zeros((n, 3), dtype=bool)
    for k, name in enumerate(_PARAMS):
        if name in fixed:
            val = np.asarray(fixed[name])
            if val.dtype != bool:
                raise TypeError(f"fixed[{name!r}] must be a bool or a bool array")
            out[:, k] = _per_source(f"fixed[{name!r}]", val, n, bool)
    return out


def _check_bounds(bounds, n):
    bounds = _check_dict("bounds", bounds)
    lo = np.full((n, 3), -np.inf)
    hi = np.full((n, 3), np.inf)
    for k, name in enumerate(_PARAMS):
        if name not in bounds:
            continue
        pair = bounds[name]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"bounds[{name!r}] must be a pair (lo, hi)")
        lo[:, k] = np.where(_isnone(pair[0]), -np.inf, _bound(name, pair[0], n))
        hi[:, k] = np.where(_isnone(pair[1]), np.inf, _bound(name, pair[1], n))
        if np.any(lo[:, k] > hi[:, k]):
            raise ValueError(f"bounds[{name!r}]: lower bound above upper bound")
    return lo, hi


def _isnone(v):
    return v is None


def _shared_pixels_arg(value):
    if value not in ("once", "photutils"):
        raise ValueError(f"shared_pixels must be 'once' or 'photutils', got {value!r}")
    return value


def _bound(name, v, n):
    if v is None:
        return np.zeros(n)
    arr = _per_source(f"bounds[{name!r}]", v, n)
    if np.any(np.isnan(arr)):
        raise ValueError(f"bounds[{name!r}] contains NaN")
    return arr


def fit_psf(data, psf_model, x_init, y_init, flux_init, *, fit_shape, group_id=None,
            error=None, mask=None, local_bkg=None, fixed=None, bounds=None, maxiters=100,
            xtol=1e-6, ftol=1e-10, support_shape="auto", dense_max=64,
            shared_pixels="once", fit_sky=False, neighbors=None, start=None,
            support_radius=None, covariance=True, noise=None):
    """Fit PSFs to many sources at once, grouped sources simultaneously.

    Parameters
    ----------
    data : array_like of shape (ny, nx)
        The image; non-finite pixels are ignored.
    psf_model : BatchedPSFMixin
        PSF model (shape parameters are used at their current values).
    x_init, y_init, flux_init : array_like of shape (n,)
        Initial parameters. Non-finite values give unfitted, flagged sources.
    fit_shape : int or (fy, fx)
        Odd stamp shape (>= 3) centred on each initial position.
    group_id : array_like of int, shape (n,), optional
        Sources sharing an id are fitted simultaneously; by default each source is alone.
    error : array_like of shape (ny, nx), optional
        1-sigma pixel errors (weights ``1 / error``; absolute covariance). Like photutils,
        only values at pixels used in a fit are checked (finite and > 0, else ValueError).
    mask : array_like of bool, shape (ny, nx), optional
        True marks pixels to ignore.
    local_bkg : float or array_like of shape (n,), optional
        Background subtracted from each source's own stamp (non-finite -> 0).
    fixed : dict, optional
        ``{'x' | 'y' | 'flux': bool or (n,) bool}``; fixed parameters keep their initial value.
    bounds : dict, optional
        ``{'x' | 'y' | 'flux': (lo, hi)}``, each a scalar, ``(n,)`` array or None; +-inf
        allowed. The fit reaches the constrained optimum (parameters held on an active bound
        while the others are re-optimised).
    maxiters : int, optional
        Maximum Levenberg-Marquardt iterations per group.
    xtol, ftol : float, optional
        A group converges when every step component is below ``xtol`` times that
        parameter's (conditional) error ``1 / sqrt((J^T J)_kk)`` -- never relative to the
        parameter's value -- or the relative cost decrease is below ``ftol``.
    support_shape : 'auto', None or (sy, sx), optional
        PSF extent used to find which members reach which stamps of a group ('auto': the
        model's ``default_stamp_shape``; None: every member on every stamp of its group).
    dense_max : int, optional
        Groups up to this size use batched dense solves; larger ones (no size cap) take
        per-group preconditioned conjugate-gradient steps and a block-tridiagonal covariance,
        both about linear in the group size.
    shared_pixels : {'once', 'photutils'}, optional
        How a pixel lying in the fit stamps of two members of a group enters the fit. 'once'
        (default): it is one measurement and is weighted once, which keeps the errors of close
        blends honest. 'photutils': it is counted once per stamp, as photutils 3.0 does (its
        errors for blends closer than the stamp size come out too small). Per-source metrics
        (qfit, cfit, reduced_chi2, n_pixels) always use the source's own stamp.
    fit_sky : bool, optional
        Fit one constant sky per group jointly with its members (DAOPHOT ALLSTAR's sky): the
        model of every stamp of the group is ``sum of PSFs + sky`` (on top of ``local_bkg``).
        The result's ``sky``/``sky_err`` hold each source's group value and ``cov`` gains the
        sky's row and column. Off by default (photutils has no fitted sky).
    neighbors : array_like of shape (n, fy, fx), optional
        Model light of sources *outside* each source's group over its fit stamp (the stamp
        of :func:`crowdphot.core.batched.stamp_origin` on the initial position), subtracted
        from the data before fitting (DAOPHOT ALLSTAR's neighbour subtraction, see
        :mod:`crowdphot.psf.allstar`).
    start : array_like of shape (n, 3), optional
        Starting ``(x, y, flux)`` when it differs from the initial values that place the
        stamps (non-finite entries: the initial value).
    support_radius : array_like of shape (n,), optional
        Each source's own support half-width in pixels (overrides ``support_shape`` for
        coupling members of a group; DAOPHOT's PSF radius growing with flux, see
        :func:`crowdphot.psf.allstar.flux_reach`).
    covariance : bool, optional
        False skips the covariance (errors NaN, ``cov_ok`` False), for repeated fits whose
        errors come from an earlier one (all-star passes).
    noise : (read_noise, gain, background), optional
        Fit by maximum likelihood for counts (see :mod:`crowdphot.core.fit.lm`): ``error``
        must be None; the pixel variances come from the model, ``read_noise`` (electrons)
        and ``gain`` (electrons / ADU); ``background`` (None or shape (n, fy, fx)) is light
        already subtracted from ``data`` over each fit stamp besides ``local_bkg`` and
        ``neighbors`` (a sky map), part of the expectation. The covariance is the inverse
        Fisher information at the solution (never scaled). Used by
        :func:`crowdphot.psf.likelihood.fit_psf_likelihood`.

    Returns
    -------
    FitResult

    Notes
    -----
    Steps are robust (DAOPHOT ALLSTAR's habits): position changes are clamped to
    ``crowdphot.core.fit.lm.MAX_SHIFT`` pixels per iteration; a source whose position reaches
    the edge of its own fit stamp is stopped there (``left_stamp``, not ``converged``); and
    absurd values (``absurd``) are reported as NaN, never as numbers.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> psf = CircularGaussianPRF(fwhm=2.5)
    >>> img = psf.psf_stamps([20.3], [15.7], (32, 40), xlo=[0], ylo=[0])[0] * 1000.0
    >>> res = fit_psf(img, psf, [20.0], [16.0], [900.0], fit_shape=7)
    >>> round(float(res.x[0]), 6), round(float(res.flux[0]), 3), bool(res.converged[0])
    (20.3, 1000.0, True)
    """
    if not callable(getattr(psf_model, "_stamps_grad", None)):
        raise TypeError("psf_model must implement the batched PSF interface (_stamps_grad)")
    # only the stamp pixels are ever read: non-finite data there is dropped and bad error
    # values there raise (as photutils), so whole-image scans are not needed
    arr = _as_image("data", data)
    msk = check_mask("mask", mask, arr.shape)
    err = None if error is None else _as_image("error", error)
    if err is not None and err.shape != arr.shape:
        raise ValueError(f"error must have the same shape as data {arr.shape}, got {err.shape}")
    x = np.atleast_1d(np.asarray(getattr(x_init, "value", x_init), dtype=float))
    if x.ndim != 1:
        raise ValueError(f"x_init must be 1D, got shape {x.shape}")
    n = len(x)
    y = _per_source("y_init", y_init, n)
    flux = _per_source("flux_init", flux_init, n)
    shape = as_pair("fit_shape", fit_shape, lower_bound=1, odd=True)
    if group_id is not None:
        gid = np.asarray(group_id)
        if gid.dtype.kind not in "iu":
            raise TypeError(f"group_id must be integers, got dtype {gid.dtype}")
        if gid.shape != (n,):
            raise ValueError(f"group_id must have shape ({n},), got {gid.shape}")
        group_id = gid
    bkg = None if local_bkg is None else _per_source("local_bkg", local_bkg, n)
    fx = _check_fixed(fixed, n)
    lo, hi = _check_bounds(bounds, n)
    if isinstance(maxiters, bool) or not isinstance(maxiters, numbers.Integral) or maxiters < 1:
        raise ValueError(f"maxiters must be a positive integer, got {maxiters!r}")
    for name, val in (("xtol", xtol), ("ftol", ftol)):
        if not isinstance(val, numbers.Real) or not np.isfinite(val) or val <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {val!r}")
    if isinstance(dense_max, bool) or not isinstance(dense_max, numbers.Integral) \
            or dense_max < 1:
        raise ValueError(f"dense_max must be a positive integer, got {dense_max!r}")
    if isinstance(support_shape, str):
        if support_shape != "auto":
            raise ValueError(f"support_shape must be 'auto', None or (sy, sx), got "
                             f"{support_shape!r}")
    elif support_shape is not None:
        support_shape = tuple(int(v) for v in as_pair("support_shape", support_shape,
                                                      lower_bound=0))
    return _fit_psf(arr, psf_model, x, y, flux, shape, group_id=group_id, error=err,
                    mask=msk, local_bkg=bkg, fixed=fx, lo=lo, hi=hi, maxiters=int(maxiters),
                    xtol=float(xtol), ftol=float(ftol), support_shape=support_shape,
                    dense_max=int(dense_max), strict_error=True,
                    shared_pixels=_shared_pixels_arg(shared_pixels), fit_sky=bool(fit_sky),
                    neighbors=_stamp_array("neighbors", neighbors, (n, *shape)),
                    start=_stamp_array("start", start, (n, 3)),
                    support_radius=_stamp_array("support_radius", support_radius, (n,)),
                    covariance=bool(covariance), noise=_noise_arg(noise, err, (n, *shape)))


def _noise_arg(noise, error, shape):
    if noise is None:
        return None
    if error is not None:
        raise ValueError("error must be None with noise (the variances come from the model)")
    if not isinstance(noise, (tuple, list)) or len(noise) != 3:
        raise TypeError("noise must be a tuple (read_noise, gain, background)")
    rn, gain = float(noise[0]), float(noise[1])
    if not (np.isfinite(rn) and rn >= 0 and np.isfinite(gain) and gain > 0):
        raise ValueError(f"noise needs read_noise >= 0 and gain > 0, got {rn}, {gain}")
    return rn, gain, _stamp_array("noise background", noise[2], shape)


def _stamp_array(name, value, shape):
    if value is None:
        return None
    arr = np.asarray(value, dtype=float)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    return arr
