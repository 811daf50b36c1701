"""Quick Gaussian fits of sources, as photutils.psf.fit_2dgaussian and fit_fwhm.

Both wrap :class:`~crowdphot.psf.PSFPhotometry` with a
:class:`~crowdphot.models.analytic.CircularGaussianPRF`: every source is fit at once by the
batched engine, with the flux started at the sum of the fitting box.
"""

from __future__ import annotations

import collections.abc
import warnings

import numpy as np
from astropy.table import QTable
from astropy.utils.exceptions import AstropyUserWarning

from crowdphot.core.validate import as_pair
from crowdphot.models.analytic import CircularGaussianPRF
from crowdphot.psf.photometry import PSFPhotometry

__all__ = ["fit_2dgaussian", "fit_fwhm"]

_CUTOUT_WARNING = ("fit_shape is None, so the input data array is assumed to be a cutout image "
                   "containing only one source. The fit_shape is set to the (odd) shape of the "
                   "data.")


def _as_xypos(xypos):
    if isinstance(xypos, collections.abc.Iterator):
        xypos = list(xypos)
    xy = np.atleast_2d(np.asarray([[float(getattr(v, "value", v)) for v in row]
                                   for row in np.atleast_2d(np.asarray(xypos, dtype=object))]))
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError("xypos must be an (x, y) pair or a list of (x, y) pairs")
    return xy


def fit_2dgaussian(data, *, xypos=None, fwhm=None, fix_fwhm=True, fit_shape=None, mask=None,
                   error=None):
    """Fit a circular 2D Gaussian (PRF) to one or more sources.

    Parameters
    ----------
    data : array_like or Quantity of shape (ny, nx)
        Background-subtracted image; non-finite pixels are masked (with a warning).
    xypos : (x, y) or sequence of (x, y), optional
        Initial positions; None fits one source started at the image's centre of mass.
    fwhm : float, optional
        Initial FWHM; None uses half the mean side of ``fit_shape``.
    fix_fwhm : bool, optional
        Keep the FWHM fixed (no ``fwhm_fit`` column).
    fit_shape : int or (int, int), optional
        Fitting box; None (one source only) uses the data shape made odd, with a warning.
    mask : array_like of bool, optional
        True for pixels to ignore.
    error : array_like of shape (ny, nx), optional
        Per-pixel 1-sigma errors.

    Returns
    -------
    psfphot : PSFPhotometry
        The photometry object; its ``results`` attribute holds the table.

    Examples
    --------
    >>> yy, xx = np.mgrid[:51, :51]
    >>> data = CircularGaussianPRF(x_0=22.17, y_0=28.87, fwhm=3.123, flux=9.7)(xx, yy)
    >>> tbl = fit_2dgaussian(data, fix_fwhm=False, fit_shape=7).results
    >>> round(float(tbl['fwhm_fit'][0]), 3)
    3.123
    """
    unit = getattr(data, "unit", None)
    values = np.asarray(getattr(data, "value", data), dtype=float)
    bad = ~np.isfinite(values)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if np.any(bad & ~mask):
            warnings.warn("Input data contains unmasked non-finite values (NaN or inf), which "
                          "were automatically ignored.", AstropyUserWarning, stacklevel=2)
        mask = mask | bad
    elif bad.any():
        warnings.warn("Input data contains unmasked non-finite values (NaN or inf), which were "
                      "automatically ignored.", AstropyUserWarning, stacklevel=2)
        mask = bad
    good = np.where(bad if mask is None else mask, 0.0, values)

    if xypos is None:
        yy, xx = np.indices(values.shape)
        total = good.sum()
        xy = np.array([[np.sum(xx * good) / total, np.sum(yy * good) / total]]) if total \
            else np.array([[(values.shape[1] - 1) / 2, (values.shape[0] - 1) / 2]])
    else:
        xy = _as_xypos(xypos)
    if fit_shape is None:
        if len(xy) > 1:
            raise ValueError("fit_shape is required when fitting multiple sources")
        fit_shape = tuple(s if s % 2 else s - 1 for s in values.shape)
        warnings.warn(_CUTOUT_WARNING, AstropyUserWarning, stacklevel=2)
    fit_shape = tuple(int(v) for v in as_pair("fit_shape", fit_shape, lower_bound=0, odd=True))
    if fwhm is None:
        fwhm = np.mean(fit_shape) / 2.0

    # initial flux: the sum of the fitting box around each (rounded) position
    ny, nx = values.shape
    hy, hx = fit_shape[0] // 2, fit_shape[1] // 2
    flux = np.empty(len(xy))
    for i, (x, y) in enumerate(xy):
        xi, yi = int(round(x)), int(round(y))
        flux[i] = good[max(yi - hy, 0):yi + hy + 1, max(xi - hx, 0):xi + hx + 1].sum()

    model = CircularGaussianPRF(fwhm=fwhm)
    model.fwhm.fixed = bool(fix_fwhm)
    init = QTable()
    init["x"] = xy[:, 0]
    init["y"] = xy[:, 1]
    init["flux"] = flux if unit is None else flux * unit
    psfphot = PSFPhotometry(model, fit_shape)
    psfphot(data, mask=mask, error=error, init_params=init)
    return psfphot


def fit_fwhm(data, *, xypos=None, fwhm=None, fit_shape=None, mask=None, error=None):
    """Fit the FWHM of one or more sources with :func:`fit_2dgaussian`.

    Parameters are those of :func:`fit_2dgaussian` (the FWHM is always free).

    Returns
    -------
    fwhm : ndarray of shape (n,)
        Positive fitted FWHMs.

    Examples
    --------
    >>> yy, xx = np.mgrid[:51, :51]
    >>> data = CircularGaussianPRF(x_0=22.17, y_0=28.87, fwhm=3.123)(xx, yy)
    >>> np.round(fit_fwhm(data, fit_shape=7), 3)
    array([3.123])
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psfphot = fit_2dgaussian(data, xypos=xypos, fwhm=fwhm, fix_fwhm=False,
                                 fit_shape=fit_shape, mask=mask, error=error)
    for w in caught:  # re-emitted from here (the fit_shape and non-finite warnings)
        warnings.warn(w.message, w.category, stacklevel=2)
    return np.abs(np.asarray(psfphot.results["fwhm_fit"], dtype=float))
