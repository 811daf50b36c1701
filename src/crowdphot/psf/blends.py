"""Blends whose fluxes the data do not pin down: a test after the fit.

Two members of a group a fraction of a FWHM apart are often fitted as a bright star plus a
weak one pushed aside, when the truth is two similar stars close together: another local
minimum of the chi-square, whose curvature gives errors far too small (measured on a crowded
field: flags-0 stars in pairs 0.1-0.7 FWHM apart with flux pulls up to 10). This module tests
every close pair after the fit, all pairs at once through the batched engine (no loop per
pair), and flags both members of a failing pair (``unresolved_blend``):

* **Candidates**: pairs of members of one group whose fitted *or* input separation is below
  ``max_separation`` FWHM (:data:`MAX_SEPARATION_FWHM`; FWHM from :func:`psf_fwhm`).
* **Alternatives**: each pair is refitted on the union of its two fit stamps (a pixel in both
  counts once; the fit's weights and local backgrounds), the group's other members held at
  their fitted values, as (``near_init``) two stars held within :data:`NEAR_INIT_FWHM` FWHM
  of their *input* positions, starting from an equal split of the pair's flux, and as
  (``one``) a single star starting at the flux-weighted centroid with the summed flux.
  ``delta_chi2 = chi2_alternative - chi2_fit`` on the same pixels.
* **The flag -- a witness against the error bar**: a member whose flux the near-input
  alternative moves by ``shift > nsigma`` of its reported errors (:data:`NSIGMA` = 2) at a
  cost ``delta_chi2 < shift**2``. If the chi-square were the quadratic bowl the covariance
  describes, *every* model with that flux ``shift`` errors away would cost at least
  ``shift**2``: an explicit model of the pair that costs less proves the error bar too small
  for what the data allow. The test fires only on such a witness, so poor input positions
  cannot raise it (they make the alternative worse), and a star alone in its group is never
  tested.
* **Resolved or not** (``BlendTest.resolved``, a diagnostic, not the flag; DAOPHOT's
  question): the one-star model has 3 parameters fewer; the pair is resolved when its
  ``delta_chi2`` exceeds the ``1 - significance`` quantile of chi-square(3)
  (:data:`SIGNIFICANCE` = 0.01, 11.3; without an error image the F(3, N - 6) quantile of
  ``delta_chi2 / 3`` over the pair's residual variance, N its pixels). Measured null: 864
  single stars (flux 100-1000, noise 5, FWHM 3) each fitted as two from inputs 1 px apart give
  ``delta_chi2`` quantiles 50/95/99/99.9 % of 0.9/6.1/8.0/10.6 (chi-square(3): 2.4/7.8/
  11.3/16.3), so 0.12 % of them are called resolved at 0.01: this boundary case (second flux
  0, its position undefined) is lighter-tailed than chi-square(3) and the level is
  conservative. It is not the flag because "not resolved" is also the verdict on every
  bright star with a faint, insignificant companion, whose fluxes are right: on the crowded
  field below it calls 44 % of the flags-0 stars unresolved (a fifth of those >= 1 FWHM from
  any neighbour), and flagging the unresolved pairs whose inputs are < 0.5 FWHM apart as well
  (10 % flagged) does not make the remaining pulls any more Gaussian.

Measured (``bench/bench_blends.py``; 8 seeds of 300 stars of flux 30-300 on 128², noise 5,
Gaussian PRF FWHM 3, inputs = truth + 0.3 px, ``SourceGrouper(6)``): flags-0 stars with
|flux pull| > 4 drop from 21/2032 (1.0 %) to 0, 2.9 % of the flags-0 stars are flagged and
none of the well-measured ones >= 1 FWHM from every neighbour; an isolated pair 0.48 FWHM
apart (fluxes 290/280, 100 seeds): 22 % flagged, flux pull std of the rest 1.4 (2.8 before).

Not a flag either: a flux correlation coefficient below -0.8 (from the pair's Fisher
matrix) marks 32 % of the crowded field's paired flags-0 stars and none of its 13 |pull| > 4
ones, which sit in weakly correlated wrong minima (rho -0.7 to +0.4); where fluxes are
strongly anti-correlated at the right minimum the covariance already widens their errors.

Approximations: the test conditions on the other members of the group (held at their fitted
values), and light of stars outside the group (all-star fitting) is not modelled; both enter
the fit's and the alternatives' chi-squares alike.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from crowdphot.core.batched import stamp_origin
from crowdphot.core.fit.stamps import gather_stamps, shared_pixel_mask
from crowdphot.core.kernels.pairs import close_pairs
from crowdphot.core.validate import as_pair, check_mask

__all__ = ["ALTERNATIVES", "BlendTest", "MAX_SEPARATION_FWHM", "NEAR_INIT_FWHM", "NSIGMA",
           "SIGNIFICANCE", "candidate_pairs", "catalog_blend_flags", "psf_fwhm",
           "unresolved_pairs"]

#: Pairs of one group whose fitted separation is below this many FWHM are tested.
MAX_SEPARATION_FWHM = 1.5
#: A source is flagged when the near-input alternative moves its flux by more than this many
#: errors (at a chi-square cost below the square of that shift).
NSIGMA = 2.0
#: Significance level of the one-star test (``BlendTest.resolved``).
SIGNIFICANCE = 0.01
#: The near-input alternative keeps each star within this many FWHM of its input position.
NEAR_INIT_FWHM = 0.1
#: Levenberg-Marquardt iterations of the alternatives' refits (50 flags the same stars).
MAXITERS = 20


@dataclass(frozen=True)
class BlendTest:
    """Outcome of :func:`unresolved_pairs`.

    Attributes
    ----------
    flagged : ndarray of bool, shape (n,)
        Both members of every pair that fails the witness test (module docstring).
    pairs : ndarray of int64, shape (p, 2)
        The tested pairs (indices into the inputs; the first is the brighter).
    separation : ndarray of float, shape (p,)
        Fitted separation of each pair (pixels).
    input_separation : ndarray of float, shape (p,)
        Separation of the pair's input positions (pixels).
    delta_chi2 : ndarray of float, shape (p, 2)
        Chi-square of each alternative (:data:`ALTERNATIVES`: one star, two stars near the
        inputs) minus that of the fit, on the union of the pair's stamps (in units of the
        pair's residual variance without an error image; NaN where the refit failed).
    shift : ndarray of float, shape (p, 2)
        Flux change of each member under the near-input alternative, in its flux errors;
        a pair fails when a member has ``shift > nsigma`` and ``delta_chi2[:, 1] <
        shift**2``.
    resolved : ndarray of bool, shape (p,)
        One star is rejected at ``significance`` (a failed or skipped one-star refit counts
        as resolved).
    stars : ndarray of float, shape (p, 2, 2, 3)
        ``(x, y, flux)`` of the alternatives' stars (the one-star alternative's second star
        is NaN).
    fwhm : float
        The FWHM (pixels) used for the separation cut.
    """

    flagged: np.ndarray
    pairs: np.ndarray
    separation: np.ndarray
    input_separation: np.ndarray
    delta_chi2: np.ndarray
    shift: np.ndarray
    resolved: np.ndarray
    stars: np.ndarray
    fwhm: float


def psf_fwhm(psf_model, x=0.0, y=0.0, *, step=0.1):
    """FWHM (pixels) of a batched PSF model at ``(x, y)``, from the area above half maximum.

    The model's unit-flux values (pixel-integrated for PRF models, as fitted) are sampled on a
    ``step`` grid around the star; the FWHM is that of the circle of the same area as the
    region above half the peak, ``2 sqrt(area / pi)`` (exact for circular profiles, the mean
    width for elongated ones).

    Parameters
    ----------
    psf_model : BatchedPSFMixin
    x, y : float
        Where to evaluate a position-dependent (gridded) model.
    step : float
        Sampling step in pixels.

    Returns
    -------
    fwhm : float

    Examples
    --------
    >>> from crowdphot import CircularGaussianPSF
    >>> round(psf_fwhm(CircularGaussianPSF(fwhm=3.0)), 1)
    3.0
    """
    if not callable(getattr(psf_model, "psf_values", None)):
        raise TypeError("psf_model must implement the batched PSF interface (psf_values)")
    for name, v in (("x", x), ("y", y), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
            raise TypeError(f"{name} must be a finite real number, got {v!r}")
    if not 0 < step <= 0.5:
        raise ValueError(f"step must be in (0, 0.5], got {step!r}")
    return _psf_fwhm(psf_model, float(x), float(y), float(step))


def _psf_fwhm(psf_model, x, y, step):
    half = 4.0
    while True:
        off = np.arange(-half, half + step / 2, step)
        gx = (x + off)[None, None, :]
        gy = (y + off)[None, :, None]
        vals = np.asarray(psf_model._unit(gx, gy, np.array([x]), np.array([y])))
        vals = np.broadcast_to(np.where(np.isfinite(vals), vals, 0.0), (1, off.size, off.size))
        peak = vals.max()
        if not peak > 0:
            raise ValueError("the PSF model has no positive values near its centre")
        above = vals[0] > peak / 2.0
        edge = above[0].any() | above[-1].any() | above[:, 0].any() | above[:, -1].any()
        if not edge or half >= 64:
            return float(2.0 * np.sqrt(above.sum() * step * step / np.pi))
        half *= 2.0


def candidate_pairs(x, y, group, max_distance):
    """Pairs of one group closer than ``max_distance`` (unchecked; finite positions only).

    Returns
    -------
    pairs : ndarray of int64, shape (p, 2)
        Sorted by the first index, then the second.

    Examples
    --------
    >>> candidate_pairs(np.array([0.0, 1.0, 1.5, 9.0]), np.zeros(4), np.array([1, 1, 2, 1]),
    ...                 2.0).tolist()
    [[0, 1]]
    """
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if len(ok) < 2 or not max_distance > 0:
        return np.zeros((0, 2), dtype=np.int64)
    p0, p1 = close_pairs(x[ok], y[ok], max_distance)  # compiled; no scipy.spatial import
    if len(p0) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    a, b = ok[p0], ok[p1]
    keep = group[a] == group[b]
    pairs = np.column_stack([np.minimum(a, b), np.maximum(a, b)])[keep].astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _others_light(psf_model, x, y, flux, group, pairs, xlo, ylo, fit_shape, reach):
    """Light of the group's other members (not the pair) on each row's stamp, (2p, fy * fx)."""
    fy, fx = fit_shape
    rows = len(xlo)
    out = np.zeros((rows, fy * fx))
    src = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux != 0))
    if rows == 0 or len(src) == 0:
        return out
    cx = xlo + (fx - 1) / 2.0
    cy = ylo + (fy - 1) / 2.0
    r_max = reach + max(fy, fx) / 2.0
    t, j = close_pairs(cx, cy, r_max, x2=x[src], y2=y[src], metric="chebyshev")
    s = src[j]
    pair_of = t // 2
    keep = (group[s] == group[pairs[pair_of, 0]]) & (s != pairs[pair_of, 0]) & (
        s != pairs[pair_of, 1])
    t, s = t[keep], s[keep]
    if len(t) == 0:
        return out
    vals = np.asarray(psf_model._stamps(x[s], y[s], xlo[t], ylo[t], (fy, fx)))
    vals = np.where(np.isfinite(vals), vals, 0.0).reshape(len(s), -1) * flux[s][:, None]
    np.add.at(out, t, vals)
    return out


def _model_rows(psf_model, sx, sy, sflux, xlo, ylo, fit_shape):
    vals = np.asarray(psf_model._stamps(sx, sy, xlo, ylo, fit_shape))
    return np.where(np.isfinite(vals), vals, 0.0).reshape(len(sx), -1) * sflux[:, None]


def _pair_chi2(resid, weight):
    """Chi-square of each pair over its two rows (rows 2k, 2k + 1)."""
    per_row = ((resid * weight) ** 2).sum(axis=1)
    return per_row[0::2] + per_row[1::2]


def _two_star_rows(psf_model, s1, s2, xlo, ylo, fit_shape):
    """Model of two stars ``s1, s2`` (each ``(p, 3)``; NaN: none) on both stamps of each pair."""
    out = np.zeros((len(xlo), fit_shape[0] * fit_shape[1]))
    for s in (s1, s2):
        v = np.where(np.isfinite(s), s, 0.0)
        out += _model_rows(psf_model, np.repeat(v[:, 0], 2), np.repeat(v[:, 1], 2),
                           np.repeat(v[:, 2], 2), xlo, ylo, fit_shape)
    return out


#: The alternatives tried for every pair, in this order (see the module docstring).
ALTERNATIVES = ("one", "near_init")


def _unresolved_pairs(fit, data, psf_model, x, y, flux, flux_err, x_init, y_init, group,
                      fit_shape, *, error, mask, local_bkg, sky, fwhm, max_separation, nsigma,
                      significance, maxiters, reach, one_star=True, pairs=None):
    """Unchecked core of :func:`unresolved_pairs` (``fit``: the engine, ``fit_psf``)."""
    n = len(x)
    fy, fx = fit_shape
    n_alt = len(ALTERNATIVES)
    if pairs is None:  # close in the fit or in the inputs
        pairs = np.unique(np.concatenate([
            candidate_pairs(x, y, group, max_separation * fwhm),
            candidate_pairs(x_init, y_init, group, max_separation * fwhm)]), axis=0)
        ok = np.isfinite(flux) & np.isfinite(x) & np.isfinite(y)
        pairs = pairs[ok[pairs[:, 0]] & ok[pairs[:, 1]]]
    # brighter member first: the one-star model lives on its stamp
    swap = np.abs(flux[pairs[:, 1]]) > np.abs(flux[pairs[:, 0]])
    pairs = np.where(swap[:, None], pairs[:, ::-1], pairs)
    p = len(pairs)
    if p == 0:
        return BlendTest(flagged=np.zeros(n, dtype=bool), pairs=pairs,
                         separation=np.zeros(0), input_separation=np.zeros(0),
                         delta_chi2=np.zeros((0, n_alt)),
                         shift=np.zeros((0, 2)), resolved=np.zeros(0, dtype=bool),
                         stars=np.zeros((0, n_alt, 2, 3)), fwhm=float(fwhm))
    from scipy import special  # only with pairs; not scipy.stats (its import costs ~1 s)

    i, j = pairs[:, 0], pairs[:, 1]
    sep = np.hypot(x[i] - x[j], y[i] - y[j])
    members = pairs.ravel()  # rows 2k (brighter) and 2k + 1 of pair k
    rx, ry = x_init[members], y_init[members]
    rbkg = np.zeros(2 * p) if local_bkg is None else local_bkg[members]
    rbkg = np.where(np.isfinite(rbkg), rbkg, 0.0)
    xlo, ylo = stamp_origin(rx, ry, fit_shape)
    others = _others_light(psf_model, x, y, flux, group, pairs, xlo, ylo, fit_shape, reach)
    if sky is not None:
        others += np.where(np.isfinite(sky), sky, 0.0)[members][:, None]
    cx = (xlo + (fx - 1) / 2.0).reshape(p, 1, 2)  # stamp centres of the two members
    cy = (ylo + (fy - 1) / 2.0).reshape(p, 1, 2)
    lim_x, lim_y = (fx - 1) / 2.0 - 0.05, (fy - 1) / 2.0 - 0.05

    fi, fj = np.abs(flux[i]), np.abs(flux[j])
    w = np.where(fi + fj > 0, fi / np.where(fi + fj > 0, fi + fj, 1.0), 0.5)
    xc = w * x[i] + (1 - w) * x[j]
    yc = w * y[i] + (1 - w) * y[j]
    ftot = flux[i] + flux[j]
    start = np.full((p, n_alt, 2, 3), np.nan)
    fixed = np.zeros((p, n_alt, 2, 3), dtype=bool)
    lo = np.full((p, n_alt, 2, 2), -np.inf)
    hi = np.full((p, n_alt, 2, 2), np.inf)
    fitted = np.column_stack([x, y, flux])
    # one star: summed flux at the flux-weighted centroid, on the brighter member's stamp;
    # the fainter member's stamp is a fixed, empty row
    start[:, 0, 0] = np.column_stack([xc, yc, ftot])
    start[:, 0, 1] = np.column_stack([x[j], y[j], np.zeros(p)])
    fixed[:, 0, 1] = True
    # two stars held near the input positions (within NEAR_INIT_FWHM), equal split
    b = NEAR_INIT_FWHM * fwhm
    for m, s in enumerate((i, j)):
        start[:, 1, m] = np.column_stack([x_init[s], y_init[s], ftot / 2])
        lo[:, 1, m] = np.column_stack([x_init[s] - b, y_init[s] - b])
        hi[:, 1, m] = np.column_stack([x_init[s] + b, y_init[s] + b])
    start[..., 0] = np.clip(start[..., 0], cx - lim_x, cx + lim_x)
    start[..., 1] = np.clip(start[..., 1], cy - lim_y, cy + lim_y)

    rows = 2 * n_alt * p  # row (k * n_alt + a) * 2 + m
    rep = np.broadcast_to(np.arange(2), (p, n_alt, 2))
    owner = (np.broadcast_to(np.arange(p)[:, None, None] * 2, (p, n_alt, 2)) + rep).ravel()
    alt_of = np.broadcast_to(np.arange(n_alt)[None, :, None], (p, n_alt, 2)).ravel()
    run = np.ones(rows, dtype=bool) if one_star else alt_of != 0
    st0 = start.reshape(rows, 3)
    usable = np.all(np.isfinite(st0), axis=1)
    fx_rows = fixed.reshape(rows, 3)
    lo_r, hi_r = lo.reshape(rows, 2), hi.reshape(rows, 2)
    res = fit(data, psf_model, rx[owner[run]], ry[owner[run]],
              np.where(usable, st0[:, 2], 0.0)[run], fit_shape=fit_shape,
              group_id=np.repeat(np.arange(n_alt * p, dtype=np.int64), 2)[run], error=error,
              mask=mask, local_bkg=rbkg[owner[run]],
              fixed={"x": fx_rows[run, 0], "y": fx_rows[run, 1], "flux": fx_rows[run, 2]},
              bounds={"x": (lo_r[run, 0], hi_r[run, 0]), "y": (lo_r[run, 1], hi_r[run, 1])},
              maxiters=maxiters, shared_pixels="once",
              neighbors=others[owner[run]].reshape(-1, fy, fx),
              start=np.where(usable[:, None], st0, np.nan)[run], covariance=False)
    out = np.full((rows, 3), np.nan)
    out[run] = np.column_stack([res.x, res.y, res.flux])
    fine = np.zeros(rows, dtype=bool)
    fine[run] = res.reason == ""
    stars = out.reshape(p, n_alt, 2, 3)
    ok = (np.all(np.isfinite(stars), axis=-1) & fine.reshape(p, n_alt, 2)
          & usable.reshape(p, n_alt, 2)).all(-1)
    stars[:, 0, 1] = np.nan  # the one-star alternative's empty row
    stars = np.where(ok[..., None, None], stars, np.nan)

    # every chi-square on the same pixels (the union of the two stamps, shared ones once)
    st = gather_stamps(data, rx, ry, np.ones(2 * p), fit_shape, mask=mask, error=error,
                       local_bkg=rbkg, n_free=np.zeros(2 * p, dtype=np.int64))
    pid = np.repeat(np.arange(p, dtype=np.int64), 2)
    weight = np.where(shared_pixel_mask(xlo, ylo, st.valid, fit_shape, pid, data.shape[1]),
                      0.0, st.weight)
    base = st.data - others
    chi2_fit = _pair_chi2(base - _two_star_rows(psf_model, fitted[i], fitted[j], xlo, ylo,
                                                fit_shape), weight)
    npix = (weight > 0).sum(axis=1)
    dof = npix[0::2] + npix[1::2] - 6
    dchi2 = np.full((p, n_alt), np.nan)
    for a in range(n_alt):
        chi2 = _pair_chi2(base - _two_star_rows(psf_model, stars[:, a, 0], stars[:, a, 1],
                                                xlo, ylo, fit_shape), weight)
        dchi2[:, a] = np.where(ok[:, a], chi2 - chi2_fit, np.nan)
    if error is None:  # unit weights: chi-squares in units of the pair's residual variance
        with np.errstate(invalid="ignore", divide="ignore"):
            dchi2 = dchi2 / np.where(dof > 0, chi2_fit / np.maximum(dof, 1), np.nan)[:, None]

    # the near-input alternative keeps the members' order: how far it moves each flux, in
    # that member's errors; a fit whose errors were honest (a quadratic chi-square) would
    # need delta_chi2 >= shift**2 to move a flux by `shift` errors
    em = flux_err[pairs]
    em = np.where(np.isfinite(em) & (em > 0), em, np.nan)
    with np.errstate(invalid="ignore"):
        shift = np.abs(stars[:, 1, :, 2] - flux[pairs]) / em
        d_near = dchi2[:, 1][:, None]
        witness = (shift > nsigma) & (d_near < shift ** 2)
        if error is not None:
            resolved = ~(dchi2[:, 0] <= special.chdtri(3, significance))  # chi2.isf
        else:  # the F ratio of the extra 3 parameters against the pair's residual variance
            resolved = ~(dchi2[:, 0] / 3.0  # f.isf(significance, 3, dof):
                         <= special.fdtri(3, np.maximum(dof, 1), 1.0 - significance))
    input_sep = np.hypot(x_init[i] - x_init[j], y_init[i] - y_init[j])
    flagged = np.zeros(n, dtype=bool)
    flagged[pairs[witness.any(axis=1)]] = True  # both members: their split is in question
    return BlendTest(flagged=flagged, pairs=pairs, separation=sep,
                     input_separation=input_sep, delta_chi2=dchi2,
                     shift=shift, resolved=resolved, stars=stars, fwhm=float(fwhm))


def unresolved_pairs(data, psf_model, x, y, flux, flux_err, *, x_init, y_init, group_id,
                     fit_shape, error=None, mask=None, local_bkg=None, sky=None, fwhm=None,
                     max_separation=MAX_SEPARATION_FWHM, nsigma=NSIGMA,
                     significance=SIGNIFICANCE, one_star=True, maxiters=MAXITERS):
    """Members of close pairs whose fitted fluxes the data do not pin down (module doc).

    Parameters
    ----------
    data : array_like of shape (ny, nx)
        The fitted image.
    psf_model : BatchedPSFMixin
    x, y, flux, flux_err : array_like of shape (n,)
        Fitted values and flux errors (non-finite values: the source takes part in no pair).
    x_init, y_init : array_like of shape (n,)
        Initial positions: they placed the fit stamps.
    group_id : array_like of int, shape (n,)
        Pairs are only formed inside a group.
    fit_shape : int or (fy, fx)
    error : array_like of shape (ny, nx), optional
        1-sigma pixel errors, as in the fit (chi-square test); without, an F test.
    mask : array_like of bool, shape (ny, nx), optional
    local_bkg : array_like of shape (n,), optional
        Subtracted from each source's stamp, as in the fit.
    sky : array_like of shape (n,), optional
        Each source's fitted group sky (``fit_sky``), added to both models.
    fwhm : float, optional
        PSF FWHM in pixels (default: :func:`psf_fwhm` at the sources' median position).
    max_separation : float
        Pairs closer than this many FWHM (fitted or input separation) are tested.
    nsigma : float
        Flag a member when the near-input alternative moves its flux by more than this many
        errors at a chi-square cost below the square of that shift.
    significance : float
        ``BlendTest.resolved``: one star is rejected at this level (0 < significance < 1).
    one_star : bool
        Also fit the one-star alternative (``BlendTest.resolved``; the flag does not use
        it, and without it the test costs half as much).
    maxiters : int
        Iterations of the alternatives' refits.

    Returns
    -------
    BlendTest

    Examples
    --------
    Two stars 0.48 FWHM apart that the fit splits wrongly (fluxes 290 and 280); the test
    works on the Fisher errors (the default profile-likelihood errors of such pairs are
    wider: pulls 1.8 and -1.2 here):

    >>> from astropy.table import QTable
    >>> from crowdphot import (CircularGaussianPRF, PSFPhotometry, SourceGrouper,
    ...                        make_model_image)
    >>> psf = CircularGaussianPRF(fwhm=3.0)
    >>> truth = QTable({'x_0': [20.0, 21.2], 'y_0': [20.0, 20.8], 'flux': [290.0, 280.0]})
    >>> rng = np.random.default_rng(6)
    >>> img = make_model_image((41, 41), psf, truth, model_shape=(15, 15))
    >>> img += rng.normal(0, 5, img.shape)
    >>> init = QTable({'x': truth['x_0'] + rng.normal(0, 0.3, 2),
    ...                'y': truth['y_0'] + rng.normal(0, 0.3, 2)})
    >>> err = np.full(img.shape, 5.0)
    >>> r = PSFPhotometry(psf, (5, 5), aperture_radius=3, grouper=SourceGrouper(6),
    ...                   profile_errors=False)(img, error=err, init_params=init)
    >>> np.round((r['flux_fit'] - truth['flux']) / r['flux_err'], 1).tolist()  # Fisher pulls
    [3.0, -4.1]
    >>> test = unresolved_pairs(img, psf, r['x_fit'], r['y_fit'], r['flux_fit'],
    ...                         r['flux_err'], x_init=r['x_init'], y_init=r['y_init'],
    ...                         group_id=r['group_id'], fit_shape=5, error=err)
    >>> test.flagged.tolist(), bool(test.resolved[0])
    ([True, True], False)
    """
    from crowdphot.core.fit import fit_psf
    from crowdphot.psf.allstar import model_reach

    if not callable(getattr(psf_model, "_stamps_grad", None)):
        raise TypeError("psf_model must implement the batched PSF interface (_stamps_grad)")
    arr = np.asarray(getattr(data, "value", data), dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"data must be a 2D array, got shape {arr.shape}")
    x = np.atleast_1d(np.asarray(x, dtype=float))
    n = len(x)
    vec = {}
    for name, v in (("y", y), ("flux", flux), ("flux_err", flux_err), ("x_init", x_init),
                    ("y_init", y_init),
                    ("local_bkg", local_bkg), ("sky", sky)):
        if v is None:
            vec[name] = None
            continue
        a = np.atleast_1d(np.asarray(getattr(v, "value", v), dtype=float))
        if a.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
        vec[name] = a
    for name in ("y", "flux", "flux_err", "x_init", "y_init"):
        if vec[name] is None:
            raise TypeError(f"{name} is required")
    gid = np.asarray(group_id)
    if gid.shape != (n,) or gid.dtype.kind not in "iu":
        raise ValueError(f"group_id must be integers of shape ({n},)")
    fit_shape = tuple(int(v) for v in as_pair("fit_shape", fit_shape, lower_bound=1, odd=True))
    msk = check_mask("mask", mask, arr.shape)
    err = None
    if error is not None:
        err = np.asarray(getattr(error, "value", error), dtype=float)
        if err.shape != arr.shape:
            raise ValueError(f"error must have the same shape as data {arr.shape}, got "
                             f"{err.shape}")
    for name, v in (("max_separation", max_separation), ("nsigma", nsigma),
                    ("significance", significance)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            raise ValueError(f"{name} must be a number > 0, got {v!r}")
    if not significance < 1:
        raise ValueError(f"significance must be below 1, got {significance!r}")
    if isinstance(maxiters, bool) or not isinstance(maxiters, numbers.Integral) or maxiters < 1:
        raise ValueError(f"maxiters must be a positive integer, got {maxiters!r}")
    if fwhm is None:
        ok = np.isfinite(x) & np.isfinite(vec["y"])
        cx = float(np.median(x[ok])) if ok.any() else 0.0
        cy = float(np.median(vec["y"][ok])) if ok.any() else 0.0
        fwhm = _psf_fwhm(psf_model, cx, cy, 0.1)
    elif isinstance(fwhm, bool) or not isinstance(fwhm, numbers.Real) or not fwhm > 0:
        raise ValueError(f"fwhm must be a number > 0, got {fwhm!r}")
    return _unresolved_pairs(fit_psf, arr, psf_model, x, vec["y"], vec["flux"],
                             vec["flux_err"], vec["x_init"], vec["y_init"], gid, fit_shape,
                             error=err, mask=msk, local_bkg=vec["local_bkg"], sky=vec["sky"],
                             fwhm=float(fwhm), max_separation=float(max_separation),
                             nsigma=float(nsigma), significance=float(significance),
                             one_star=bool(one_star),
                             maxiters=int(maxiters),
                             reach=model_reach(psf_model))


def catalog_blend_flags(data, psf_model, table, values, flux_err, fit_shape, *, error=None,
                        mask=None, sky=None):
    """``unresolved_blend`` for a photometry catalog: the hook of :class:`PSFPhotometry`.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
        The fitted data (after any sky map was removed).
    psf_model : BatchedPSFMixin
    table : QTable
        The initial-parameter table (``x_init``, ``y_init``, ``group_id``, ``local_bkg``).
    values : dict
        Fitted ``'x'``, ``'y'``, ``'flux'`` arrays of shape (n,) (NaN: not fitted).
    flux_err : ndarray of shape (n,)
    fit_shape : (fy, fx)
    error, mask : ndarray of shape (ny, nx), optional
        As in the fit.
    sky : ndarray of shape (n,), optional
        The fitted group sky (``fit_sky``).

    Returns
    -------
    flagged : ndarray of bool, shape (n,)
        The witness test only (no one-star refits: half the cost); all False when no group
        has two fitted members or the model has no FWHM (no positive values).

    Examples
    --------
    >>> from astropy.table import QTable
    >>> from crowdphot import CircularGaussianPRF
    >>> t = QTable({'x_init': [5.0, 30.0], 'y_init': [5.0, 5.0], 'group_id': [1, 2],
    ...             'local_bkg': [0.0, 0.0]})
    >>> catalog_blend_flags(np.zeros((10, 40)), CircularGaussianPRF(fwhm=2.0), t,
    ...                     {'x': t['x_init'], 'y': t['y_init'], 'flux': [1.0, 1.0]},
    ...                     np.ones(2), (5, 5)).tolist()
    [False, False]
    """
    from crowdphot.core.fit import fit_psf
    from crowdphot.psf.allstar import model_reach

    x = np.asarray(values["x"], dtype=float)
    y = np.asarray(values["y"], dtype=float)
    flux = np.asarray(values["flux"], dtype=float)
    n = len(x)
    gid = np.asarray(table["group_id"])
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    _, counts = np.unique(gid[ok], return_counts=True)
    if not np.any(counts > 1):
        return np.zeros(n, dtype=bool)
    try:
        fwhm = _psf_fwhm(psf_model, float(np.median(x[ok])), float(np.median(y[ok])), 0.1)
    except ValueError:
        return np.zeros(n, dtype=bool)
    col = {k: np.asarray(getattr(table[k], "value", table[k]), dtype=float)
           for k in ("x_init", "y_init", "local_bkg")}
    return _unresolved_pairs(
        fit_psf, data, psf_model, x, y, flux, np.asarray(flux_err, dtype=float),
        col["x_init"], col["y_init"], gid, tuple(int(v) for v in fit_shape), error=error,
        mask=mask, local_bkg=col["local_bkg"], sky=sky, fwhm=fwhm,
        max_separation=MAX_SEPARATION_FWHM, nsigma=NSIGMA, significance=SIGNIFICANCE,
        maxiters=MAXITERS, reach=model_reach(psf_model), one_star=False).flagged
