"""A star finder with a user-supplied kernel, as photutils 3.0's ``StarFinder``.

The image is convolved with the kernel (rescaled to a peak of 1 and made zero-sum, as
photutils does), local maxima of the convolved image above ``threshold`` are kept (circle of
``min_separation``, or the kernel box when it is 0), and every star is measured at once with
image moments of the non-negative data pixels in a kernel-shaped stamp centred on its peak.
"""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
from scipy import ndimage

from crowdphot.core.kernels.detect import find_peak_pixels, gather_stamps
from crowdphot.core.validate import check_image, check_mask, deprecated_positional
from crowdphot.detection.finders import (
    _DEPRECATED,
    DEPRECATED_COLUMNS,
    _check_n_brightest,
    _check_peak_max,
    _check_threshold,
    _meta,
    _renamed,
)
from crowdphot.utils._tables import make_deprecated_qtable
from crowdphot.utils.exceptions import NoDetectionsWarning

__all__ = ["StarFinder"]


def _moments(stamps):
    """Centroid, FWHM, roundness and orientation of (n, ky, kx) non-negative stamps."""
    n, ky, kx = stamps.shape
    y = np.arange(ky, dtype=float)
    x = np.arange(kx, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        m00 = stamps.sum(axis=(1, 2))
        yc = np.einsum("nij,i->n", stamps, y) / m00
        xc = np.einsum("nij,j->n", stamps, x) / m00
        dy = y[None, :] - yc[:, None]
        dx = x[None, :] - xc[:, None]
        mu20 = np.einsum("nij,nj->n", stamps, dx**2) / m00  # x variance
        mu02 = np.einsum("nij,ni->n", stamps, dy**2) / m00  # y variance
        mu11 = np.einsum("nij,ni,nj->n", stamps, dy, dx) / m00
        mu_sum = mu20 + mu02
        mu_diff = mu20 - mu02
        fwhm = 2.0 * np.sqrt(np.log(2.0) * mu_sum)
        orientation = np.rad2deg(0.5 * np.arctan2(2.0 * mu11, mu_diff)) % 360
        roundness = np.sqrt(mu_diff**2 + 4.0 * mu11**2) / mu_sum
    return xc, yc, fwhm, roundness, orientation, m00


class StarFinder:
    """Detect stars with a user-defined kernel (photutils 3.0 compatible).

    Parameters
    ----------
    threshold : float, Quantity or array_like of shape (ny, nx)
        Detection level on the convolved image (same units as the data).
    kernel : array_like of shape (ky, kx)
        The 2D star kernel (e.g. a PSF image).
    min_separation : float or None, optional
        Peak exclusion radius in pixels; None means ``2.5 * (min(kernel.shape) // 2)`` and 0
        uses the kernel box.
    exclude_border : bool, optional
        Reject peaks within half the kernel size of the image edges.
    n_brightest : int or None, optional
        Keep only this many highest-flux stars (sorted by decreasing flux).
    peak_max : float or None, optional
        Reject stars whose maximum stamp pixel exceeds this value (inclusive limit).
    brightest, peakmax : optional
        Deprecated photutils aliases of ``n_brightest`` and ``peak_max``.

    Examples
    --------
    >>> yy, xx = np.mgrid[:31, :31]
    >>> img = 50 * np.exp(-((xx - 12.2)**2 + (yy - 17.0)**2) / 4.5)
    >>> kernel = np.exp(-(np.mgrid[-3:4, -3:4]**2).sum(0) / 4.5)
    >>> tbl = StarFinder(5.0, kernel)(img)
    >>> len(tbl), round(float(tbl['x_centroid'][0]), 1), round(float(tbl['y_centroid'][0]), 1)
    (1, 12.2, 17.0)
    """

    _repr_params = ("threshold", "kernel", "min_separation", "exclude_border", "n_brightest",
                    "peak_max")

    @deprecated_positional("min_separation", "exclude_border", "n_brightest", "peak_max")
    def __init__(self, threshold, kernel, *, min_separation=None, exclude_border=False,
                 n_brightest=None, peak_max=None, brightest=_DEPRECATED, peakmax=_DEPRECATED):
        n_brightest = _renamed(brightest, n_brightest, "brightest", "n_brightest")
        peak_max = _renamed(peakmax, peak_max, "peakmax", "peak_max")
        self.threshold = threshold
        self._thr_value, self._thr_unit = _check_threshold(threshold)
        kernel = np.asarray(kernel)
        if kernel.ndim != 2:
            raise ValueError(f"kernel must be a 2D array, got {kernel.ndim} dimension(s)")
        self.kernel = kernel
        if min_separation is None:
            self.min_separation = 2.5 * (min(kernel.shape) // 2)
        else:
            if not float(min_separation) >= 0:
                raise ValueError(f"min_separation must be >= 0, got {min_separation!r}")
            self.min_separation = min_separation
        self.exclude_border = exclude_border
        self.n_brightest = _check_n_brightest(n_brightest)
        self._peak_max_value, self._peak_max_unit = _check_peak_max(peak_max)
        self.peak_max = peak_max

    def _repr_items(self):
        for key in self._repr_params:
            value = getattr(self, key)
            if isinstance(value, np.ndarray) and value.ndim > 0:
                value = f"<array; shape={value.shape}>"
            yield key, value

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self._repr_items())
        return f"{type(self).__name__}({params})"

    def __str__(self):
        cls = type(self)
        lines = [f"<{cls.__module__}.{cls.__qualname__}>"]
        lines += [f"{k}: {v!r}" for k, v in self._repr_items()]
        return "\n".join(lines)

    @deprecated_positional("mask")
    def __call__(self, data, *, mask=None):
        """Find stars in ``data`` (see :meth:`find_stars`)."""
        return self.find_stars(data, mask=mask)

    @deprecated_positional("mask")
    def find_stars(self, data, *, mask=None):
        """Find stars in an image.

        Parameters
        ----------
        data : array_like of shape (ny, nx)
            Background-subtracted image (a Quantity if ``threshold`` has units).
        mask : array_like of bool, shape (ny, nx), optional
            True marks pixels that may not be star peaks.

        Returns
        -------
        table : `~astropy.table.QTable` or None
            Columns ``id, x_centroid, y_centroid, fwhm, roundness, orientation, max_value,
            flux, mag``; None (with a :class:`NoDetectionsWarning`) when nothing is found.
        """
        unit = getattr(data, "unit", None)
        given = {"data": unit, "threshold": self._thr_unit}
        if self.peak_max is not None:
            given["peak_max"] = self._peak_max_unit
        if len(set(given.values())) > 1:
            detail = ", ".join(f"{k}: {v}" for k, v in given.items())
            raise ValueError(f"The inputs {list(given)} must all have the same units: {detail}")
        arr, bad = check_image("data", data, warn_nonfinite=False)
        mask = check_mask("mask", mask, arr.shape)
        thr = self._thr_value
        if thr.ndim == 2 and thr.shape != arr.shape:
            raise ValueError(f"threshold array must have the same shape as the input data "
                             f"{arr.shape}, got {thr.shape}")
        if bad is not None:
            arr = np.where(bad, 0.0, arr)
            mask = bad if mask is None else (mask | bad)

        kern = self.kernel / np.max(self.kernel)
        denom = np.sum(kern**2) - np.sum(kern) ** 2 / kern.size
        if denom > 0:
            kern = (kern - np.sum(kern) / kern.size) / denom
        conv = ndimage.convolve(arr, kern, mode="constant", cval=0.0)
        ky, kx = self.kernel.shape
        border = ((ky - 1) // 2, (kx - 1) // 2) if self.exclude_border else (0, 0)
        xp, yp = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if not np.all(conv == conv.flat[0]) and 2 * border[0] < arr.shape[0] \
                and 2 * border[1] < arr.shape[1]:
            if self.min_separation == 0:
                local_max = ndimage.maximum_filter(conv, size=(ky, kx), mode="constant",
                                                   cval=0.0)
                peaks = (conv == local_max) & (conv > thr)
                if mask is not None:
                    peaks &= ~mask
                by, bx = border
                if by:
                    peaks[:by] = peaks[-by:] = False
                if bx:
                    peaks[:, :bx] = peaks[:, -bx:] = False
                yp, xp = np.nonzero(peaks)
            else:
                xp, yp = find_peak_pixels(conv, thr, mask=mask, border=border,
                                          min_separation=float(self.min_separation))
        if xp.size == 0:
            warnings.warn("No sources were found.", NoDetectionsWarning, stacklevel=2)
            return None

        stamps = gather_stamps(arr, xp, yp, (ky, kx))
        stamps[stamps < 0] = 0.0
        cxc, cyc, fwhm, roundness, orientation, flux = _moments(stamps)
        x_c = cxc + xp - kx // 2
        y_c = cyc + yp - ky // 2
        peak = stamps.max(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            mag = -2.5 * np.log10(flux)
        keep = np.ones(xp.size, dtype=bool)
        for values in (x_c, y_c, fwhm, roundness, orientation, peak, flux):
            keep &= np.isfinite(values)
        if not keep.any():
            warnings.warn("No sources were found.", NoDetectionsWarning, stacklevel=2)
            return None
        if self._peak_max_value is not None:
            keep &= peak <= self._peak_max_value
        if not keep.any():
            warnings.warn("Sources were found, but none pass the filtering criteria",
                          NoDetectionsWarning, stacklevel=2)
            return None
        idx = np.flatnonzero(keep)
        if self.n_brightest is not None:
            idx = idx[np.argsort(flux[idx])[::-1][: self.n_brightest]]

        table = make_deprecated_qtable(deprecation_map=DEPRECATED_COLUMNS, meta=_meta())
        table["id"] = np.arange(1, idx.size + 1, dtype=np.int64)
        table["x_centroid"] = x_c[idx]
        table["y_centroid"] = y_c[idx]
        table["fwhm"] = fwhm[idx]
        table["roundness"] = roundness[idx]
        table["orientation"] = orientation[idx] * u.deg
        table["max_value"] = peak[idx] if unit is None else peak[idx] * unit
        table["flux"] = flux[idx] if unit is None else flux[idx] * unit
        table["mag"] = mag[idx]
        return table
