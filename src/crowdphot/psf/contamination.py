"""Unmodelled neighbours' light and unconstrained fluxes: two tests after the fit.

PSF photometry models, on each star's fit stamp, the star and the members of its group; the
light of any other star that falls on the stamp is not modelled. Without a grouper (photutils'
default) every star is alone in its group: on a faint crowded field (300 stars of flux 20-60 on
128², noise 5, Gaussian PRF FWHM 3, ``fit_shape=5``) 3-8 flags-0 stars per field came out
4-4.6 sigma from the truth (165 +- 42, true 52) because a neighbour's wing sat in the stamp.

**contaminated** (flag 65536). For each fitted star ``t``, the light of the *other* fitted
stars not modelled jointly with it (another group; every other star without a grouper) falls
on its fit stamp. To first order the fit answers an additive contamination ``N`` with the
linear least-squares response ``d theta = (J^T W J)^-1 J^T W N`` (``J``: the star's Jacobian
in ``x, y, flux`` [and the sky with ``fit_sky``] at its fitted values, ``W``: the fit's pixel
weights, ``1 / error**2``, 1 without ``error``, the model's variances with
``likelihood='poisson'``; masked pixels excluded). With ``C[t, j]`` the flux response of
``t`` to unit flux of star ``j`` (at ``j``'s fitted position, on ``t``'s stamp), the bias is
``C flux_fit``, flagged when above :data:`NSIGMA` (1) times the reported flux error and above
:data:`MIN_RELATIVE_BIAS` (0.1 %) of the flux. The neighbours' fitted fluxes hold some of
``t``'s light too, so for positive couplings this is an upper bound -- the conservative side
of a flag whose miss is the worst defect. (Solving ``flux_fit = f + C f`` for the true fluxes
tracks the truth more closely on average but is ill-conditioned where one-star fits collapse
onto the same light, ``C[t, j] C[j, t]`` near 1: it missed 4-17 of the truly > 1 sigma biased
stars per field below, this rule 0-4.) The response is that of the star alone on its stamp
(its group partners held at their values). The test runs only where light is left
unmodelled: never with ``subtract_neighbors=True``, where every group is fitted on the data
minus the other groups' models.

Measured (Gaussian PRF FWHM 3, noise 5, ``fit_shape=5``, starts jittered 0.3 px, ``error``
given; "truly biased": the response to the *true* neighbours exceeds the flux error):

* faint field above, no grouper, 3 seeds: flags-0 stars with |flux pull| > 4: 7/5/4 -> 0/1/0
  (the one left, 4.2, is truly biased by 0.2 sigma only); 45-57 % of the flags-0 stars
  flagged, where 20-37 % are truly biased (missed 0-3 per field; flagged while truly biased
  by < 0.5 sigma: 13-17). This faint field is that contaminated.
* 1500 stars of flux 50-2000 on 512², no grouper, 2 seeds: 516/517 flagged of ~1460, 472/489
  truly biased, 3/4 missed, 14/14 flagged below 0.5 sigma; |pull| > 4 left: 0.
* isolated stars (60 at >= 20 px, flux 20-60 or 100-2000; no grouper, ``SourceGrouper(6)``,
  ``fit_sky``; with and without ``error``; ``likelihood='poisson'``) and a moderately crowded
  field (100 stars of flux 100-1000 >= 5 px apart on 128²; also all-star), 2-3 seeds: none
  flagged (neither bit).
* ``SourceGrouper(6)`` on the faint field: none flagged (the cross-group wings are faint);
  ``likelihood='poisson'``, 300 stars of flux 100-300 on 128² (sky 50), no grouper: flags-0
  |pull| > 4 from 48-71 to 0.
* cost: 20 000 stars on 1024², no grouper: 0.36 s of a 2.3 s call (``SourceGrouper(6)``:
  0.32 s of 20 s); a 2-core sandbox shared with other jobs.

**unconstrained** (flag 131072). A fit can end at a degenerate point where the data do not
constrain the flux at all -- two members of a group run onto the same star -- and report a
finite but useless error (1028 +- 1.35e6, true 51). The reference is the star's own
information: the flux error of the same star *alone* on its stamp with the same weights
(``sigma_iso``, the isolated Cramér-Rao bound for Gaussian weights). Partners and a fitted sky
widen the error of a well-measured star by a factor of a few; a star whose reported flux error
exceeds :data:`INFLATION` (10) times ``sigma_iso`` (without ``error`` both are on the group's
residual-variance scale) is flagged. On the faint field with ``SourceGrouper(6)`` every such
star (5-16 % of the flags-0 stars, grouped, ``fit_sky`` and all-star fits alike) had a group
member within 0.5 FWHM whose error equalled its own (anti-correlated fluxes): a pair whose
flux split the data do not pin down, which the witness test of :mod:`crowdphot.psf.blends`
cannot see (no refit moves a flux by 2 of such errors). On 20 000 stars (flux 50-2000) on
1024² with ``SourceGrouper(6)``, 10 % were flagged; their pulls had std 1.0 below S/N 3 (honest
but useless errors) and 1.6 above (8 % beyond 3 sigma). ``unresolved_blend`` (32768) would
describe such pairs too; it stays the witness test's own bit.

Both are crowdphot extensions, never set with ``compat='photutils'``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdphot.core.batched import stamp_origin
from crowdphot.core.fit.stamps import gather_stamps
from crowdphot.core.kernels.pairs import close_pairs
from crowdphot.psf.allstar import model_reach

__all__ = ["INFLATION", "MIN_RELATIVE_BIAS", "NSIGMA", "ContaminationTest",
           "catalog_contamination_flags", "contamination_test", "flag_later_neighbours"]

#: A star is flagged ``contaminated`` when the unmodelled light moves its flux by more than
#: this many flux errors.
NSIGMA = 1.0
#: A star is flagged ``unconstrained`` when its flux error exceeds this many times the flux
#: error of the same star alone on its stamp.
INFLATION = 10.0
#: ... and by more than this fraction of the flux: below it PSF-model errors dominate in any
#: real data, and on a noiseless image (errors ~0) every neighbour's far wing would count.
MIN_RELATIVE_BIAS = 1e-3
#: Ridge added to the equilibrated normal matrices (unit diagonal) before inversion.
_RIDGE = 1e-10
#: Stars per batch of the response computation (bounds memory).
_CHUNK = 20_000


@dataclass(frozen=True)
class ContaminationTest:
    """Outcome of :func:`contamination_test`; every field has shape (n,).

    Attributes
    ----------
    bias : ndarray of float
        Flux change caused by the unmodelled light (linear response; 0 where none falls on
        the stamp, NaN where the star was not tested).
    sigma_iso : ndarray of float
        Flux error of the star alone on its stamp with the fit's weights (NaN: not tested).
    contaminated : ndarray of bool
        ``|bias| > nsigma * flux_err`` and ``|bias| > MIN_RELATIVE_BIAS * |flux|``.
    unconstrained : ndarray of bool
        ``flux_err > inflation * sigma_iso``.
    """

    bias: np.ndarray
    sigma_iso: np.ndarray
    contaminated: np.ndarray
    unconstrained: np.ndarray


def _response_rows(psf_model, x, y, flux, xlo, ylo, fit_shape, weight2, fixed_xy, fit_sky):
    """Per star: the flux response row ``e_flux (J^T W J)^-1 J^T W`` and the isolated flux
    variance ``[(J^T W J)^-1]_flux,flux`` (unchecked; shapes (m, fy * fx) and (m,))."""
    n = len(x)
    rows = np.zeros((n, fit_shape[0] * fit_shape[1]))
    var = np.full(n, np.nan)
    for a in range(0, n, _CHUNK):
        s = slice(a, a + _CHUNK)
        m = len(x[s])
        val, dx, dy = (np.asarray(v, dtype=float).reshape(m, -1)
                       for v in psf_model._stamps_grad(x[s], y[s], xlo[s], ylo[s], fit_shape))
        cols = [d * flux[s][:, None] for d, held in zip((dx, dy), fixed_xy, strict=True)
                if not held]
        cols.append(val)
        k_flux = len(cols) - 1
        if fit_sky:
            cols.append(np.ones_like(val))
        jac = np.stack(cols, axis=2)
        jac = np.where(np.isfinite(jac), jac, 0.0)
        w = weight2[s]
        normal = np.einsum("npk,np,npl->nkl", jac, w, jac)
        diag = np.einsum("nkk->nk", normal)
        scale = np.sqrt(np.where(diag > 0, diag, 1.0))
        # equilibrated (unit diagonal) plus a tiny ridge: a star of flux ~0 has no position
        # information (zero columns) and keeps its flux-only variance
        eq = normal / (scale[:, :, None] * scale[:, None, :]) + _RIDGE * np.eye(len(cols))
        inv = np.linalg.inv(eq) / (scale[:, :, None] * scale[:, None, :])
        rows[s] = np.einsum("nk,npk->np", inv[:, k_flux, :], jac) * w
        var[s] = inv[:, k_flux, k_flux]
    return rows, var


def _coupling(psf_model, x, y, group, xlo, ylo, fit_shape, rows, reach, order=None,
              together_modelled=False):
    """Sparse ``C[t, j]``: flux change of star ``t`` per unit flux of star ``j`` whose light
    was not modelled with it (another group; ``together_modelled``: all stars of one
    ``order`` were) -- ``rows[t] . PSF_j`` on ``t``'s stamp."""
    from scipy import sparse

    n = len(x)
    fy, fx = fit_shape
    cx = xlo + (fx - 1) / 2.0
    cy = ylo + (fy - 1) / 2.0
    t, j = close_pairs(cx, cy, reach + max(fy, fx) / 2.0, x2=x, y2=y, metric="chebyshev")
    keep = (group[t] != group[j]) & (not together_modelled)
    if order is not None:  # stars fitted earlier were subtracted before ``t``'s fit
        keep = (order[j] > order[t]) | (keep & (order[j] == order[t]))
    t, j = t[keep], j[keep]
    coef = np.zeros(len(t))
    for a in range(0, len(t), _CHUNK):
        tt, jj = t[a:a + _CHUNK], j[a:a + _CHUNK]
        vals = np.asarray(psf_model._stamps(x[jj], y[jj], xlo[tt], ylo[tt], fit_shape))
        vals = np.where(np.isfinite(vals), vals, 0.0).reshape(len(jj), -1)
        coef[a:a + _CHUNK] = np.einsum("np,np->n", rows[tt], vals)
    return sparse.csr_matrix((coef, (t, j)), shape=(n, n))


def contamination_test(data, psf_model, x, y, flux, flux_err, *, x_init, y_init, group_id,
                       fit_shape, error=None, mask=None, fit_sky=False, fixed_xy=(False, False),
                       chi2_scale=None, nsigma=NSIGMA, inflation=INFLATION, unmodelled=True,
                       order=None):
    """Unchecked core: both tests of the module docstring on fitted catalog arrays.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
        Only its shape and non-finite pixels are used (with ``mask`` and ``error`` they decide
        which stamp pixels were fitted).
    psf_model : BatchedPSFMixin
    x, y, flux, flux_err : ndarray of shape (n,)
        Fitted values (non-finite: the star is neither tested nor anyone's neighbour).
    x_init, y_init : ndarray of shape (n,)
        Initial positions (they placed the fit stamps).
    group_id : ndarray of int, shape (n,)
        Light of a star's own group was modelled jointly with it.
    fit_shape : (fy, fx)
    error : ndarray of shape (ny, nx), optional
        Pixel errors of the fit (weights ``1 / error**2``).
    mask : ndarray of bool, shape (ny, nx), optional
    fit_sky : bool
        A sky was fitted with the star (a constant column in the response).
    fixed_xy : (bool, bool)
        x, y held fixed in the fit (left out of the response).
    chi2_scale : ndarray of shape (n,), optional
        Without ``error``: the residual variance (chi-square per degree of freedom) of each
        star's group, which scales the reported errors and so ``sigma_iso``.
    nsigma, inflation : float
        Thresholds (:data:`NSIGMA`, :data:`INFLATION`).
    unmodelled : bool
        False: the stars fitted together left no light unmodelled (all-star fits); without
        ``order`` ``bias`` is then 0 and nothing is flagged ``contaminated``.
    order : ndarray of int, shape (n,), optional
        When each star was fitted (e.g. the iteration of an iterative photometry that fits
        new stars on the residual image): the light of a star fitted *earlier* was subtracted
        before and does not count, that of one fitted later always does (whatever
        ``unmodelled``). Default: all at once.

    Returns
    -------
    ContaminationTest
    """
    n = len(x)
    fit_shape = tuple(int(v) for v in fit_shape)
    ok = (np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & np.isfinite(x_init)
          & np.isfinite(y_init))
    idx = np.flatnonzero(ok)
    bias = np.full(n, np.nan)
    sigma = np.full(n, np.nan)
    none = np.zeros(n, dtype=bool)
    if len(idx) == 0:
        return ContaminationTest(bias, sigma, none, none.copy())
    xlo, ylo = stamp_origin(x_init[idx], y_init[idx], fit_shape)
    st = gather_stamps(data, x_init[idx], y_init[idx], np.ones(len(idx)), fit_shape,
                       mask=mask, error=error)
    weight2 = st.weight ** 2
    rows, var = _response_rows(psf_model, x[idx], y[idx], flux[idx], xlo, ylo, fit_shape,
                               weight2, fixed_xy, fit_sky)
    if unmodelled or order is not None:
        coupling = _coupling(psf_model, x[idx], y[idx], np.asarray(group_id)[idx], xlo, ylo,
                             fit_shape, rows, model_reach(psf_model),
                             None if order is None else np.asarray(order)[idx],
                             together_modelled=not unmodelled)
        bias[idx] = coupling @ flux[idx]
    else:
        bias[idx] = 0.0
    with np.errstate(invalid="ignore"):
        sig = np.sqrt(np.where(var > 0, var, np.nan))
        if error is None and chi2_scale is not None:
            sc = np.asarray(chi2_scale, dtype=float)[idx]
            sig = sig * np.sqrt(np.where(np.isfinite(sc) & (sc > 0), sc, np.nan))
    sigma[idx] = sig
    err = np.asarray(flux_err, dtype=float)
    good_err = np.isfinite(err) & (err > 0)
    with np.errstate(invalid="ignore"):
        contaminated = good_err & (np.abs(bias) > np.maximum(
            nsigma * err, MIN_RELATIVE_BIAS * np.abs(flux)))
        unconstrained = good_err & (err > inflation * sigma)
    return ContaminationTest(bias, sigma, contaminated, unconstrained)


def catalog_contamination_flags(data, psf_model, table, values, flux_err, fit_shape, *,
                                error=None, mask=None, fit_sky=False, fixed_xy=(False, False),
                                reduced_chi2=None, n_pixels=None, unmodelled=True,
                                order=None):
    """``(contaminated, unconstrained)`` for a photometry catalog: :class:`PSFPhotometry`'s hook.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
    psf_model : BatchedPSFMixin
    table : QTable
        The initial-parameter table (``x_init``, ``y_init``, ``group_id``).
    values : dict
        Fitted ``'x'``, ``'y'``, ``'flux'`` arrays of shape (n,) (NaN: not fitted).
    flux_err : ndarray of shape (n,)
    fit_shape : (fy, fx)
    error, mask : ndarray of shape (ny, nx), optional
        As in the fit (for ``likelihood='poisson'``, the fitted model's pixel errors).
    fit_sky, fixed_xy, unmodelled, order
        As for :func:`contamination_test`.
    reduced_chi2, n_pixels : ndarray of shape (n,), optional
        The catalog's columns; without ``error`` they give each group's residual variance
        (``chi2_scale``: summed chi-square over summed degrees of freedom).

    Returns
    -------
    contaminated, unconstrained : ndarray of bool, shape (n,)

    Examples
    --------
    A faint star 4 px from a bright one, fitted without grouping:

    >>> from astropy.table import QTable
    >>> from crowdphot import CircularGaussianPRF
    >>> psf = CircularGaussianPRF(fwhm=3.0)
    >>> t = QTable({'x_init': [20.0, 24.0], 'y_init': [20.0, 20.0], 'group_id': [1, 2]})
    >>> vals = {'x': np.array([20.0, 24.0]), 'y': np.array([20.0, 20.0]),
    ...         'flux': np.array([2000.0, 50.0])}
    >>> c, u = catalog_contamination_flags(np.zeros((40, 40)), psf, t, vals,
    ...                                    np.array([20.0, 15.0]), (5, 5),
    ...                                    error=np.full((40, 40), 5.0))
    >>> c.tolist(), u.tolist()
    ([False, True], [False, False])
    """
    def col(name):
        return np.asarray(getattr(table[name], "value", table[name]), dtype=float)

    x, y, flux = (np.asarray(values[k], dtype=float) for k in ("x", "y", "flux"))
    gid = np.asarray(table["group_id"])
    scale = None
    if error is None and reduced_chi2 is not None and n_pixels is not None:
        rc = np.asarray(reduced_chi2, dtype=float)
        dof = np.asarray(n_pixels, dtype=float) - 3.0
        use = np.isfinite(rc) & (dof > 0)
        _, inv = np.unique(gid, return_inverse=True)
        chi2 = np.bincount(inv, np.where(use, rc * dof, 0.0))
        ndof = np.bincount(inv, np.where(use, dof, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = (chi2 / ndof)[inv]
    res = contamination_test(
        np.asarray(data, dtype=float), psf_model, x, y, flux,
        np.asarray(flux_err, dtype=float), x_init=col("x_init"), y_init=col("y_init"),
        group_id=gid, fit_shape=fit_shape, error=error, mask=mask, fit_sky=fit_sky,
        fixed_xy=fixed_xy, chi2_scale=scale, unmodelled=unmodelled, order=order)
    return res.contaminated, res.unconstrained


def flag_later_neighbours(table, data, psf_model, fit_shape, *, error=None, mask=None,
                          fit_sky=False, subtract_neighbors=False):
    """``contaminated`` for iterative photometry that fits new stars on the residual image.

    :class:`~crowdphot.psf.IterativePSFPhotometry` in ``mode='new'`` fits the stars of
    iteration ``k`` on the data minus the models of iterations ``< k``: their light was
    modelled, but that of stars found *later* was on the stamps unmodelled. Each iteration's
    own test covers its stars; this one adds the later iterations' light (``order`` =
    ``iter_detected``), setting flag 65536 in ``table['flags']`` in place.

    Parameters
    ----------
    table : QTable
        The combined catalog (``x_fit``, ``y_fit``, ``flux_fit``, ``flux_err``, ``x_init``,
        ``y_init``, ``group_id`` unique across iterations, ``iter_detected``, ``flags``).
    data : ndarray of shape (ny, nx)
        The image (only its non-finite pixels matter).
    psf_model : BatchedPSFMixin
    fit_shape : (fy, fx)
    error, mask : ndarray of shape (ny, nx), optional
        As in the fits.
    fit_sky, subtract_neighbors : bool
        As in the fits (with ``subtract_neighbors`` an iteration's own stars were all
        modelled, only later ones count).

    Returns
    -------
    flagged : ndarray of bool, shape (n,)
        The rows newly flagged.
    """
    from crowdphot.psf.flags import PSF_FLAGS

    def col(name):
        return np.asarray(getattr(table[name], "value", table[name]), dtype=float)

    order = np.asarray(table["iter_detected"])
    n = len(order)
    if n == 0 or np.all(order == order[0]):
        return np.zeros(n, dtype=bool)
    err = None if error is None else np.asarray(getattr(error, "value", error), dtype=float)
    res = contamination_test(
        np.asarray(getattr(data, "value", data), dtype=float), psf_model, col("x_fit"),
        col("y_fit"), col("flux_fit"), col("flux_err"), x_init=col("x_init"),
        y_init=col("y_init"), group_id=np.asarray(table["group_id"]),
        fit_shape=tuple(int(v) for v in fit_shape), error=err, mask=mask, fit_sky=fit_sky,
        fixed_xy=(bool(psf_model.x_0.fixed), bool(psf_model.y_0.fixed)),
        unmodelled=not subtract_neighbors, order=order)
    flags = np.asarray(table["flags"])
    new = res.contaminated & ((flags & PSF_FLAGS.CONTAMINATED) == 0)
    table["flags"] = flags | np.where(res.contaminated, PSF_FLAGS.CONTAMINATED, 0)
    return new
