"""Local peak search, as photutils 3.0's ``find_peaks``.

A peak is a pixel strictly above ``threshold`` that equals the maximum of its local region (a
``box_size`` box, a ``footprint``, or with ``min_separation`` a circle of that radius), with
pixels outside the image counted as 0 (scipy's ``maximum_filter`` with ``cval=0``). NaN pixels
never become peaks and never hide one. Peaks come out in row-major order (the ``n_peaks``
brightest, brightest first, when there are more). Optional centroids use a user
``centroid_func`` on a box around each peak; optional sky coordinates use a WCS.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
from astropy.table import QTable
from scipy import ndimage

from crowdphot.core.kernels.detect import find_peak_pixels
from crowdphot.core.validate import check_mask
from crowdphot.utils.exceptions import NoDetectionsWarning

__all__ = ["find_peaks"]


def _split_units(data, threshold):
    data_unit = getattr(data, "unit", None)
    thr_unit = getattr(threshold, "unit", None)
    if data_unit != thr_unit:
        detail = ", ".join(f"{k} has units of {v}" if v is not None else f"{k} does not have units"
                           for k, v in (("data", data_unit), ("threshold", thr_unit)))
        raise ValueError(f"The inputs ['data', 'threshold'] must all have the same units: "
                         f"{detail}")
    return (getattr(data, "value", data), getattr(threshold, "value", threshold), data_unit)


def _check_border(border_width):
    if border_width is None:
        return 0, 0
    arr = np.atleast_1d(np.asarray(border_width, dtype=float))
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.ndim != 1 or arr.size != 2:
        raise ValueError("border_width must be a scalar or have two (ny, nx) values")
    if np.any(arr < 0):
        raise ValueError(f"border_width must be >= 0, got {border_width!r}")
    if np.any(arr != np.round(arr)):
        raise ValueError(f"border_width must have integer values, got {border_width!r}")
    return int(arr[0]), int(arr[1])


def _centroid_box(box_size, footprint):
    if footprint is not None:
        shape = np.asarray(np.shape(footprint), dtype=int)
    else:
        shape = np.broadcast_to(np.asarray(box_size, dtype=float).astype(int), (2,)).copy()
    return tuple(int(s) + 1 - int(s) % 2 for s in shape)  # rounded up to odd


def _centroids(data, mask, error, xp, yp, box, centroid_func):
    """Apply ``centroid_func`` on a (trimmed) box around every peak; returns (x, y) arrays."""
    ny, nx = data.shape
    hy, hx = box[0] // 2, box[1] // 2
    try:
        accepts_error = "error" in inspect.signature(centroid_func).parameters
    except (TypeError, ValueError):
        accepts_error = False
    xc = np.empty(xp.size)
    yc = np.empty(xp.size)
    for i, (x, y) in enumerate(zip(xp, yp, strict=True)):
        y0, y1 = max(y - hy, 0), min(y + hy + 1, ny)
        x0, x1 = max(x - hx, 0), min(x + hx + 1, nx)
        kwargs = {}
        if mask is not None:
            kwargs["mask"] = mask[y0:y1, x0:x1]
        if error is not None and accepts_error:
            kwargs["error"] = error[y0:y1, x0:x1]
        cx, cy = centroid_func(data[y0:y1, x0:x1], **kwargs)
        xc[i], yc[i] = cx + x0, cy + y0
    return xc, yc


def find_peaks(data, threshold, *, box_size=3, footprint=None, mask=None, border_width=None,
               n_peaks=np.inf, min_separation=None, centroid_func=None, error=None, wcs=None):
    """Find local peaks above a threshold (photutils 3.0 ``find_peaks``).

    Parameters
    ----------
    data : array_like of shape (ny, nx)
        The image (a Quantity if ``threshold`` is).
    threshold : float, Quantity or array_like of shape (ny, nx)
        A peak must be strictly greater than this.
    box_size : int or (int, int), optional
        Side(s) of the local region; ignored when ``footprint`` or ``min_separation`` is given.
    footprint : array_like of bool, optional
        Local region shape (overrides ``box_size``).
    mask : array_like of bool, shape (ny, nx), optional
        True pixels are never peaks.
    border_width : int or (int, int), optional
        Pixels excluded at the image edges, ``(ny, nx)`` order.
    n_peaks : int, optional
        Keep only the brightest ``n_peaks`` peaks (sorted brightest first).
    min_separation : float, optional
        Radius (pixels) of the circular local region; overrides ``box_size``/``footprint``.
    centroid_func : callable, optional
        ``f(cutout, mask=..., [error=...]) -> (x, y)`` evaluated on a box around each peak.
    error : array_like of shape (ny, nx), optional
        Passed to ``centroid_func`` when it takes an ``error`` argument.
    wcs : WCS-like, optional
        Adds ``skycoord_peak`` (and ``skycoord_centroid``) columns.

    Returns
    -------
    table : `~astropy.table.QTable` or None
        Columns ``id, x_peak, y_peak, [skycoord_peak], peak_value, [x_centroid, y_centroid,
        [skycoord_centroid]]``; None with a :class:`NoDetectionsWarning` when nothing is found.

    Examples
    --------
    >>> img = np.zeros((9, 9)); img[4, 6] = 3.0; img[1, 1] = 2.0
    >>> tbl = find_peaks(img, 1.0)
    >>> [int(v) for v in tbl['x_peak']], [int(v) for v in tbl['y_peak']]
    ([1, 6], [1, 4])
    """
    values, thr, unit = _split_units(data, threshold)
    arr = np.array(values, dtype=float)  # a copy: NaNs are filled below
    if arr.ndim != 2:
        raise ValueError(f"data must be a 2D array, got {arr.ndim} dimension(s)")
    thr = np.asarray(thr, dtype=float)
    if thr.ndim != 0 and thr.shape != arr.shape:
        raise ValueError(f"threshold array must have the same shape as the input data "
                         f"{arr.shape}, got {thr.shape}")
    mask = check_mask("mask", mask, arr.shape)
    by, bx = _check_border(border_width)
    if min_separation is not None:
        min_separation = float(min_separation)
        if not min_separation >= 0:
            raise ValueError(f"min_separation must be >= 0, got {min_separation!r}")
    if centroid_func is not None and not callable(centroid_func):
        raise TypeError("centroid_func must be a callable object")

    finite = np.isfinite(arr)
    bad = None if finite.all() else ~finite
    if bad is not None:
        # NaNs take the smallest finite value and are masked: they are never peaks, and they
        # never beat a real one
        arr[bad] = np.min(arr[finite]) if finite.any() else 0.0
        mask = bad if mask is None else (mask | bad)
    if arr.size and np.all(arr == arr.flat[0]):
        warnings.warn("Input data is constant. No local peaks can be found.",
                      NoDetectionsWarning, stacklevel=2)
        return None

    if 2 * by >= arr.shape[0] or 2 * bx >= arr.shape[1]:
        xp = yp = np.zeros(0, dtype=np.int64)
    elif min_separation:  # photutils' circle of that radius, compiled
        xp, yp = find_peak_pixels(arr, thr, mask=mask, border=(by, bx),
                                  min_separation=min_separation)
    else:
        if footprint is not None:
            local_max = ndimage.maximum_filter(arr, footprint=np.asarray(footprint, bool),
                                               mode="constant", cval=0.0)
        else:
            size = np.broadcast_to(np.asarray(box_size, dtype=float).astype(int), (2,))
            local_max = ndimage.maximum_filter(arr, size=tuple(size), mode="constant", cval=0.0)
        peaks = (arr == local_max) & (arr > thr)
        if mask is not None:
            peaks &= ~mask
        if by:
            peaks[:by] = peaks[-by:] = False
        if bx:
            peaks[:, :bx] = peaks[:, -bx:] = False
        yp, xp = np.nonzero(peaks)
    if xp.size == 0:
        warnings.warn("No local peaks were found.", NoDetectionsWarning, stacklevel=2)
        return None

    peak_values = arr[yp, xp]
    if xp.size > n_peaks:
        idx = np.argsort(peak_values)[::-1][: int(n_peaks)]
        xp, yp, peak_values = xp[idx], yp[idx], peak_values[idx]

    table = QTable()
    table["id"] = np.arange(1, xp.size + 1)
    table["x_peak"] = xp
    table["y_peak"] = yp
    if wcs is not None:
        table["skycoord_peak"] = wcs.pixel_to_world(xp, yp)
    table["peak_value"] = peak_values if unit is None else peak_values * unit

    if centroid_func is not None:
        box = _centroid_box(3 if min_separation else box_size,
                            None if min_separation else footprint)
        err = None if error is None else np.asarray(getattr(error, "value", error), float)
        xc, yc = _centroids(arr, mask, err, xp, yp, box, centroid_func)
        table["x_centroid"] = xc
        table["y_centroid"] = yc
        if wcs is not None:
            table["skycoord_centroid"] = wcs.pixel_to_world(xc, yc)
    return table
