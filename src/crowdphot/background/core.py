"""Scalar background estimators and the local (annulus) background of many sources at once.

The estimators reproduce photutils 3's ``MeanBackground``, ``MedianBackground``,
``ModeEstimatorBackground`` and ``MMMBackground``: optional astropy sigma clipping, then a
NaN-ignoring statistic, along any axis. :class:`LocalBackground` gathers the annulus pixels of
all sources into one ``(n, m)`` masked array (pixels selected by their centre, as photutils
does) and calls the estimator once with ``axis=1``, so the clipping and the statistic run
vectorised over sources instead of once per source.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from astropy.stats import SigmaClip

from crowdphot.aperture.core import CircularAnnulus, _as_image, _as_radius
from crowdphot.core.kernels.overlap import annulus_values
from crowdphot.core.validate import check_mask, check_positions, deprecated_positional

__all__ = [
    "BackgroundBase",
    "LocalBackground",
    "MMMBackground",
    "MeanBackground",
    "MedianBackground",
    "ModeEstimatorBackground",
]

# (sources x stamp pixels) gathered per batch
_CHUNK_PIXELS = 2_000_000


class _DefaultSigmaClip:
    """Marker for "the default clipping": each estimator then builds its own fresh
    ``SigmaClip(sigma=3.0, maxiters=10)`` (so instances never share a mutable clipper)."""

    sigma = 3.0
    maxiters = 10

    def __repr__(self):
        return f"<default: SigmaClip(sigma={self.sigma}, maxiters={self.maxiters})>"


SIGMA_CLIP = _DefaultSigmaClip()


def _make_sigma_clip(sigma_clip):
    if sigma_clip is SIGMA_CLIP:
        return SigmaClip(sigma=SIGMA_CLIP.sigma, maxiters=SIGMA_CLIP.maxiters)
    if sigma_clip is None or isinstance(sigma_clip, SigmaClip):
        return sigma_clip
    raise TypeError(
        f"sigma_clip must be an astropy SigmaClip instance or None, got {type(sigma_clip).__name__}"
    )


class _ClippedStatistic:
    """Sigma clipping, NaN handling and ``masked`` output shared by the background and RMS
    estimators; subclasses implement ``_statistic(data, axis)`` on a plain array in which
    clipped and masked values are NaN."""

    def __init__(self, *, sigma_clip=SIGMA_CLIP):
        self.sigma_clip = _make_sigma_clip(sigma_clip)

    def _repr_params(self):
        return {"sigma_clip": self.sigma_clip}

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self._repr_params().items())
        return f"{type(self).__name__}({params})"

    def _statistic(self, data, axis):  # pragma: no cover - abstract
        raise NotImplementedError

    def _evaluate(self, data, axis, masked):
        data = np.asanyarray(data)
        if self.sigma_clip is not None:
            data = self.sigma_clip(data, axis=axis, masked=False)
        elif isinstance(data, np.ma.MaskedArray):
            data = data.astype(float).filled(np.nan)
        # all-NaN slices legitimately give NaN; numpy's RuntimeWarning would be noise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = self._statistic(data, axis)
        if masked and isinstance(result, np.ndarray):
            return np.ma.masked_where(np.isnan(result), result)
        return result


class BackgroundBase(_ClippedStatistic):
    """Common machinery: sigma clipping, NaN handling, ``masked`` output.

    Subclasses implement ``_statistic(data, axis)`` on a plain array in which clipped and
    masked values are NaN.

    Parameters
    ----------
    sigma_clip : astropy.stats.SigmaClip or None, optional
        Clipping applied before the statistic; None disables it. The default is
        ``SigmaClip(sigma=3.0, maxiters=10)``.
    """

    @deprecated_positional("axis", "masked")
    def __call__(self, data, *, axis=None, masked=False):
        return self.calc_background(data, axis=axis, masked=masked)

    @deprecated_positional("axis", "masked")
    def calc_background(self, data, *, axis=None, masked=False):
        """Background value(s) of ``data``.

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


class MeanBackground(BackgroundBase):
    """Background as the (sigma-clipped) mean.

    Examples
    --------
    >>> float(MeanBackground()(np.arange(100.0)))
    49.5
    """

    def _statistic(self, data, axis):
        return np.nanmean(data, axis=axis)


class MedianBackground(BackgroundBase):
    """Background as the (sigma-clipped) median.

    Examples
    --------
    >>> float(MedianBackground()(np.array([1.0, 2.0, 3.0, 100.0])))
    2.5
    """

    def _statistic(self, data, axis):
        return np.nanmedian(data, axis=axis)


class ModeEstimatorBackground(BackgroundBase):
    """Background as ``median_factor * median - mean_factor * mean`` of the clipped data.

    Parameters
    ----------
    median_factor, mean_factor : float, optional
        Defaults 3 and 2 (the DAOPHOT / Pearson mode approximation).
    sigma_clip : astropy.stats.SigmaClip or None, optional

    Examples
    --------
    >>> est = ModeEstimatorBackground(median_factor=2.5, mean_factor=1.5, sigma_clip=None)
    >>> float(est(np.array([0.0, 1.0, 5.0])))  # 2.5 * 1 - 1.5 * 2
    -0.5
    """

    def __init__(self, *, median_factor=3.0, mean_factor=2.0, sigma_clip=SIGMA_CLIP):
        super().__init__(sigma_clip=sigma_clip)
        for name, value in (("median_factor", median_factor), ("mean_factor", mean_factor)):
            if not np.isscalar(value) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        self.median_factor = median_factor
        self.mean_factor = mean_factor

    def _repr_params(self):
        return {"median_factor": self.median_factor, "mean_factor": self.mean_factor,
                "sigma_clip": self.sigma_clip}

    def _statistic(self, data, axis):
        return (self.median_factor * np.nanmedian(data, axis=axis)
                - self.mean_factor * np.nanmean(data, axis=axis))


class MMMBackground(ModeEstimatorBackground):
    """DAOPHOT MMM background: ``3 * median - 2 * mean`` of the clipped data.

    Examples
    --------
    >>> float(MMMBackground(sigma_clip=None)(np.array([0.0, 1.0, 5.0])))
    -1.0
    """

    def __init__(self, *, sigma_clip=SIGMA_CLIP):
        super().__init__(median_factor=3.0, mean_factor=2.0, sigma_clip=sigma_clip)

    def _repr_params(self):
        return {"sigma_clip": self.sigma_clip}


def _annulus_values(data, excluded, x, y, r_in, r_out):
    """Annulus pixel values of each source as a masked ``(n, m)`` array.

    Pixels are those whose centre lies in the annulus (photutils' ``'center'`` rule), inside
    the image, finite and not ``excluded``; the rest of each row is masked padding.
    """
    vals, counts = annulus_values(data, excluded, x, y, r_in, r_out)
    return np.ma.MaskedArray(vals, mask=np.arange(vals.shape[1]) >= counts[:, None])


class LocalBackground:
    """Local background of each source from a circular annulus around it.

    Parameters
    ----------
    inner_radius, outer_radius : float
        Annulus radii in pixels (``0 < inner_radius < outer_radius``).
    bkg_estimator : callable, optional
        Statistic of the annulus pixels. Estimators with a ``calc_background(data, axis=...)``
        method (the classes in this module) are evaluated for all sources in one call; any
        other callable is called once per source with a 1D array. The default is
        ``MedianBackground()`` (sigma-clipped median), as in photutils 3.

    Examples
    --------
    >>> bkg = LocalBackground(5, 10)
    >>> bkg(np.full((101, 101), 2.0), [30, 50], [40, 60])
    array([2., 2.])
    """

    @deprecated_positional("bkg_estimator")
    def __init__(self, inner_radius, outer_radius, *, bkg_estimator=None):
        r_in = _as_radius("inner_radius", inner_radius)
        r_out = _as_radius("outer_radius", outer_radius)
        if not r_out > r_in:
            raise ValueError(
                f"outer_radius must be greater than inner_radius, got {inner_radius!r} and "
                f"{outer_radius!r}"
            )
        if bkg_estimator is None:
            bkg_estimator = MedianBackground()
        if not callable(bkg_estimator):
            raise TypeError("bkg_estimator must be callable (e.g. a MedianBackground instance)")
        self.inner_radius = inner_radius
        self.outer_radius = outer_radius
        self.bkg_estimator = bkg_estimator

    def __repr__(self):
        return (f"LocalBackground(inner_radius={self.inner_radius!r}, "
                f"outer_radius={self.outer_radius!r}, bkg_estimator={self.bkg_estimator!r})")

    def to_aperture(self, x, y):
        """The background annuli as a :class:`~crowdphot.aperture.core.CircularAnnulus`."""
        xa, ya = check_positions("positions", x, y)
        return CircularAnnulus(np.column_stack([xa, ya]), self.inner_radius, self.outer_radius)

    @deprecated_positional("mask")
    def __call__(self, data, x, y, *, mask=None):
        """Background value at each position.

        Parameters
        ----------
        data : array_like of shape (ny, nx)
            Image; non-finite pixels are ignored.
        x, y : float or array_like of shape (n,)
            Source positions.
        mask : array_like of bool, shape (ny, nx), optional
            True for pixels to ignore.

        Returns
        -------
        bkg : float or ndarray of shape (n,)
            A float for a single position; NaN where an annulus has no usable pixel.
        """
        arr = _as_image(data)
        msk = check_mask("mask", mask, arr.shape)
        xa, ya = check_positions("positions", x, y)
        r_in = float(self.inner_radius)
        r_out = float(self.outer_radius)
        side = 2 * int(math.ceil(r_out)) + 2
        chunk = max(1, _CHUNK_PIXELS // (side * side))
        vectorised = hasattr(self.bkg_estimator, "calc_background")
        out = np.full(xa.size, np.nan)
        for start in range(0, xa.size, chunk):
            sl = slice(start, start + chunk)
            values = _annulus_values(arr, msk, xa[sl], ya[sl], r_in, r_out)
            if vectorised:
                res = self.bkg_estimator.calc_background(values, axis=1)
                out[sl] = np.asarray(getattr(res, "value", res), dtype=float)
            else:
                # an annulus without usable pixels is NaN without asking the callable
                out[sl] = [self.bkg_estimator(row.compressed()) if row.count() else np.nan
                           for row in values]
        return float(out[0]) if out.size == 1 else out
