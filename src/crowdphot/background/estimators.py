"""The remaining photutils 3 background and background-RMS estimators.

``SExtractorBackground`` and ``BiweightLocationBackground`` (backgrounds) and
``StdBackgroundRMS``, ``MADStdBackgroundRMS``, ``BiweightScaleBackgroundRMS`` (RMS), with
photutils 3's arguments, ``repr`` and results: optional astropy sigma clipping, then a
NaN-ignoring statistic along any axis. The mean/median/mode estimators live in
:mod:`crowdphot.background.core`.

:func:`batched_statistic` evaluates any of these estimators (and the core ones) on the sorted,
sigma-clipped rows produced by :mod:`crowdphot.core.kernels.meshstats`, which is how
:class:`~crowdphot.background.background_2d.Background2D` computes every mesh in one pass.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import biweight_location, biweight_scale, mad_std

from crowdphot.background.core import (
    SIGMA_CLIP,
    BackgroundBase,
    MeanBackground,
    MedianBackground,
    MMMBackground,
    ModeEstimatorBackground,
    _ClippedStatistic,
)
from crowdphot.core.kernels.meshstats import nan_outside, range_biweight, range_mad, range_stats
from crowdphot.core.validate import deprecated_positional

__all__ = [
    "BackgroundRMSBase",
    "BiweightLocationBackground",
    "BiweightScaleBackgroundRMS",
    "MADStdBackgroundRMS",
    "SExtractorBackground",
    "StdBackgroundRMS",
    "batched_statistic",
]

_MAD_SCALE = 1.482602218505602


def _sextractor(median, mean, std):
    """SourceExtractor's mode: ``2.5 median - 1.5 mean``, the median when the distribution is
    skewed (``|mean - median| / std >= 0.3``), the mean when ``std == 0``."""
    # np.atleast_1d keeps astropy units (photutils returns a Quantity for Quantity data)
    median, mean, std = (np.atleast_1d(v) for v in (median, mean, std))
    result = np.array(2.5 * median - 1.5 * mean, dtype=float, subok=True)
    mean_mask = std == 0
    result[mean_mask] = mean[mean_mask]
    with np.errstate(invalid="ignore", divide="ignore"):
        med_mask = (np.abs(mean - median) / std) >= 0.3
    use_median = med_mask & ~mean_mask
    result[use_median] = median[use_median]
    return result


class SExtractorBackground(BackgroundBase):
    """Background as SourceExtractor's mode estimate.

    ``2.5 * median - 1.5 * mean`` of the (sigma-clipped) data; the median instead when
    ``|mean - median| / std >= 0.3`` (crowded or skewed data), the mean when ``std == 0``.

    Parameters
    ----------
    sigma_clip : astropy.stats.SigmaClip or None, optional
        Clipping applied first; default ``SigmaClip(sigma=3.0, maxiters=10)``.

    Examples
    --------
    >>> float(SExtractorBackground()(np.arange(100.0)))
    49.5
    """

    def _statistic(self, data, axis):
        median = np.nanmedian(data, axis=axis)
        mean = np.nanmean(data, axis=axis)
        std = np.nanstd(data, axis=axis)
        result = _sextractor(median, mean, std)
        if result.shape == (1,) and axis is None:
            return result[0] if hasattr(result, "unit") else float(result[0])
        return result.reshape(np.shape(median))


class BiweightLocationBackground(BackgroundBase):
    """Background as the biweight location of the (sigma-clipped) data.

    Parameters
    ----------
    c : float, optional
        Tuning constant (default 6.0).
    M : float or None, optional
        Initial guess for the location (default: the median).
    sigma_clip : astropy.stats.SigmaClip or None, optional

    Examples
    --------
    >>> float(BiweightLocationBackground()(np.arange(100.0)))
    49.5
    """

    @deprecated_positional("c", "M", "sigma_clip")
    def __init__(self, *, c=6.0, M=None, sigma_clip=SIGMA_CLIP):  # noqa: N803 - photutils name
        super().__init__(sigma_clip=sigma_clip)
        self.c = c
        self.M = M

    def _repr_params(self):
        return {"c": self.c, "M": self.M, "sigma_clip": self.sigma_clip}

    def _statistic(self, data, axis):
        return biweight_location(data, c=self.c, M=self.M, axis=axis, ignore_nan=True)


class BackgroundRMSBase(_ClippedStatistic):
    """Common machinery of the background-RMS estimators (sigma clipping, ``masked`` output).

    Parameters
    ----------
    sigma_clip : astropy.stats.SigmaClip or None, optional
        Clipping applied before the statistic; None disables it. The default is
        ``SigmaClip(sigma=3.0, maxiters=10)``.
    """

    @deprecated_positional("sigma_clip")
    def __init__(self, *, sigma_clip=SIGMA_CLIP):
        super().__init__(sigma_clip=sigma_clip)

    @deprecated_positional("axis", "masked")
    def __call__(self, data, *, axis=None, masked=False):
        return self.calc_background_rms(data, axis=axis, masked=masked)

    @deprecated_positional("axis", "masked")
    def calc_background_rms(self, data, *, axis=None, masked=False):
        """Background RMS value(s) of ``data``.

        Parameters
        ----------
        data : array_like or numpy.ma.MaskedArray
            Values; NaN and masked entries are ignored.
        axis : int, tuple of int or None, optional
            Axis along which to compute; None uses the whole array.
        masked : bool, optional
            Return a masked array (NaN results masked) instead of NaN-filled output.

        Returns
        -------
        value : float, ndarray or numpy.ma.MaskedArray
            NaN where no valid value is left.
        """
        return self._evaluate(data, axis, masked)


class StdBackgroundRMS(BackgroundRMSBase):
    """Background RMS as the (sigma-clipped) standard deviation (ddof 0).

    Examples
    --------
    >>> round(float(StdBackgroundRMS()(np.arange(100.0))), 5)
    28.86607
    """

    def _statistic(self, data, axis):
        return np.nanstd(data, axis=axis)


class MADStdBackgroundRMS(BackgroundRMSBase):
    """Background RMS as ``1.4826 * MAD`` (median absolute deviation) of the clipped data.

    Examples
    --------
    >>> round(float(MADStdBackgroundRMS()(np.arange(100.0))), 6)
    37.065055
    """

    def _statistic(self, data, axis):
        return mad_std(data, axis=axis, ignore_nan=True)


class BiweightScaleBackgroundRMS(BackgroundRMSBase):
    """Background RMS as the biweight scale of the (sigma-clipped) data.

    Parameters
    ----------
    c : float, optional
        Tuning constant (default 9.0).
    M : float or None, optional
        Location about which the scale is computed (default: the median).
    sigma_clip : astropy.stats.SigmaClip or None, optional

    Examples
    --------
    >>> round(float(BiweightScaleBackgroundRMS()(np.arange(100.0))), 6)
    30.094338
    """

    @deprecated_positional("c", "M", "sigma_clip")
    def __init__(self, *, c=9.0, M=None, sigma_clip=SIGMA_CLIP):  # noqa: N803 - photutils name
        super().__init__(sigma_clip=sigma_clip)
        self.c = c
        self.M = M

    def _repr_params(self):
        return {"c": self.c, "M": self.M, "sigma_clip": self.sigma_clip}

    def _statistic(self, data, axis):
        return biweight_scale(data, c=self.c, M=self.M, axis=axis, ignore_nan=True)


def batched_statistic(estimator, rows, lo, hi, cache):
    """Value of ``estimator`` for each row's kept range ``rows[r, lo[r]:hi[r]]``.

    Parameters
    ----------
    estimator : callable
        A background or RMS estimator (its own sigma clipping is ignored: the rows are already
        clipped) or any callable accepting ``(data, axis=1)`` with NaN for excluded values.
    rows : ndarray of shape (nrow, npix)
        Sorted rows from :func:`~crowdphot.core.kernels.meshstats.clip_sorted_rows`.
    lo, hi : ndarray of int64, shape (nrow,)
    cache : dict
        Shared between calls on the same rows (median/mean/std computed once).

    Returns
    -------
    values : ndarray of float64, shape (nrow,)
        NaN for empty rows.
    """
    kind = type(estimator)
    fast = (MeanBackground, MedianBackground, ModeEstimatorBackground, MMMBackground,
            SExtractorBackground, StdBackgroundRMS, MADStdBackgroundRMS)
    if kind in fast:
        if "stats" not in cache:
            cache["stats"] = range_stats(rows, lo, hi)
        median, mean, std = cache["stats"]
        if kind is MeanBackground:
            return mean.copy()
        if kind is MedianBackground:
            return median.copy()
        if kind in (ModeEstimatorBackground, MMMBackground):
            return estimator.median_factor * median - estimator.mean_factor * mean
        if kind is SExtractorBackground:
            return _sextractor(median, mean, std)
        if kind is StdBackgroundRMS:
            return std.copy()
        return range_mad(rows, lo, hi) * _MAD_SCALE
    if kind in (BiweightLocationBackground, BiweightScaleBackgroundRMS) and (
            estimator.M is None or (np.isscalar(estimator.M) and np.isfinite(estimator.M))):
        return range_biweight(rows, lo, hi, c=float(estimator.c), M=estimator.M,
                              scale=kind is BiweightScaleBackgroundRMS)
    # generic: the clipped values as a NaN-filled array, as photutils hands them over
    if "nan_rows" not in cache:
        cache["nan_rows"] = nan_outside(rows, lo, hi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = estimator(cache["nan_rows"], axis=1)
    values = np.asarray(getattr(values, "filled", lambda v: values)(np.nan), dtype=float)
    return np.array(np.broadcast_to(values, lo.shape), dtype=float)
