"""The mesh side of :class:`~crowdphot.background.background_2d.Background2D`: input
validation helpers, box statistics (clipping and estimators on every box at once), NaN filling
and median filtering of the low-resolution meshes, and the box centres the interpolators use.

Pure functions on arrays; ``Background2D`` validates its options, calls these and keeps the
results. Unchecked unless stated.
"""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
from astropy.nddata import NDData
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning

from crowdphot.background.estimators import batched_statistic
from crowdphot.background.interpolators import idw_interpolate
from crowdphot.core.kernels.meshstats import clip_sorted_rows, fast_clip_supported

__all__ = ["UNSET", "box_rows", "check_mask", "fill_nan_mesh", "filter_mesh", "mesh_centres",
           "mesh_statistics", "nanmedian_filter", "pair", "resolve_deprecated", "total_mask",
           "unpack_data"]

UNSET = object()


# -- inputs -------------------------------------------------------------------------------
def pair(name, value, *, upper=None, odd=False):
    """photutils' ``as_pair``: an integer ``(y, x)`` pair > 0, optionally odd, capped."""
    value = np.atleast_1d(value)
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1D")
    if value.dtype.kind not in "iufb" or np.any(~np.isfinite(value)):
        raise ValueError(f"{name} must be a finite value")
    if len(value) not in (1, 2):
        raise ValueError(f"{name} must have 1 or 2 elements")
    if len(value) == 1:
        value = np.array((value[0], value[0]))
    if value.dtype.kind != "i":
        raise ValueError(f"{name} must have integer values")
    if odd and np.any(value % 2 != 1):
        raise ValueError(f"{name} must have an odd value for both axes")
    if np.any(value <= 0):
        raise ValueError(f"{name} must be > 0")
    if upper is not None:
        value = np.minimum(value, upper)
    return value


def resolve_deprecated(bkg_rms_estimator, bkgrms_estimator, interpolator):
    """photutils 3's deprecated ``bkgrms_estimator`` and ``interpolator`` arguments (warned at
    ``Background2D``'s caller); returns ``(bkg_rms_estimator, interpolator or None)``."""
    if bkgrms_estimator is not UNSET:
        warnings.warn("'bkgrms_estimator' was deprecated in version 3.0 and will be removed "
                      "in version 4.0. Use argument 'bkg_rms_estimator' instead.",
                      AstropyDeprecationWarning, stacklevel=3)
        if bkg_rms_estimator is not None:
            raise TypeError("Background2D() got values for both 'bkgrms_estimator' and "
                            "'bkg_rms_estimator'")
        bkg_rms_estimator = bkgrms_estimator
    if interpolator is not UNSET:
        warnings.warn("'interpolator' was deprecated in version 3.0 and will be removed in "
                      "version 4.0.", AstropyDeprecationWarning, stacklevel=3)
        return bkg_rms_estimator, interpolator
    return bkg_rms_estimator, None


def unpack_data(data):
    """``(unit, array, mask)`` of a Quantity, NDData, masked or plain 2D image (checked: 2D,
    some finite value); ``mask`` is a masked array's mask, or None."""
    unit = None
    if isinstance(data, u.Quantity):
        unit, data = data.unit, data.value
    elif isinstance(data, NDData):  # includes CCDData
        unit, data = data.unit, data.data
    data = np.asanyarray(data)
    if data.ndim != 2:
        raise ValueError("data must be a 2D array")
    data_mask = None
    if isinstance(data, np.ma.MaskedArray):  # its masked pixels are excluded, as photutils
        data_mask = np.ma.getmaskarray(data)
        data = data.data
    if not np.any(np.isfinite(data)):
        raise ValueError("Input data contains all non-finite (NaN or infinity) values. "
                         "Cannot compute a background.")
    return unit, data, data_mask


def check_mask(array, name, shape):
    """A 2D boolean mask of ``shape`` (checked), or None for None / ``np.ma.nomask``."""
    if array is None or array is np.ma.nomask:
        return None
    array = np.asanyarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2D array")
    if array.shape != shape:
        raise ValueError(f"data and {name} must have the same shape")
    return array.astype(bool, copy=False)


def total_mask(data, mask, coverage_mask, *, stacklevel):
    """Non-finite, masked or uncovered pixels (None if none); warns (at ``stacklevel`` from
    here) when non-finite pixels were not masked by the caller, raises when all are."""
    bad = ~np.isfinite(data)
    inputs = [m for m in (mask, coverage_mask) if m is not None]
    user = None
    if inputs:
        user = inputs[0] if len(inputs) == 1 else inputs[0] | inputs[1]
    if bad.any() and (user is None or np.any(bad & ~user)):
        warnings.warn("Input data contains non-finite (NaN or infinity) values, which were "
                      "automatically masked.", AstropyUserWarning, stacklevel=stacklevel + 1)
    total = bad if user is None else (bad | user)
    if total.all():
        raise ValueError("All input pixels are masked. Cannot compute a background.")
    return total if total.any() else None


# -- box statistics -------------------------------------------------------------------------
def box_rows(data, mask, box_size):
    """Every box of the image as one row of a ``(nbox, by * bx)`` float64 array.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
    mask : ndarray of bool, shape (ny, nx), or None
        True for pixels to exclude (set to NaN).
    box_size : (int, int)

    Returns
    -------
    rows : ndarray of float64, shape (my * mx, by * bx)
        NaN for masked pixels and for the padding of partial boxes at the top/right edges.
    mesh_shape : (int, int)
        ``(my, mx) = ceil(shape / box_size)``.

    Examples
    --------
    >>> rows, shape = box_rows(np.arange(12.0).reshape(3, 4), None, (2, 2))
    >>> shape, rows[0].tolist(), rows[2].tolist()
    ((2, 2), [0.0, 1.0, 4.0, 5.0], [8.0, 9.0, nan, nan])
    """
    ny, nx = data.shape
    by, bx = (int(v) for v in box_size)
    my, mx = -(-ny // by), -(-nx // bx)
    rows = np.empty((my, mx, by, bx))
    full_y, full_x = ny // by, nx // bx
    y1, x1 = full_y * by, full_x * bx
    # full boxes: one strided copy; the partial edge boxes are padded with NaN
    rows[:full_y, :full_x] = data[:y1, :x1].reshape(full_y, by, full_x, bx).transpose(0, 2, 1, 3)
    if full_y < my or full_x < mx:
        edge = np.full((my * by, mx * bx), np.nan)
        edge[y1:ny, :nx] = data[y1:, :]
        edge[:ny, x1:nx] = data[:, x1:]
        edge = edge.reshape(my, by, mx, bx).transpose(0, 2, 1, 3)
        rows[full_y:] = edge[full_y:]
        rows[:full_y, full_x:] = edge[:full_y, full_x:]
    if mask is not None:
        padded = np.zeros((my * by, mx * bx), bool)
        padded[:ny, :nx] = mask
        np.copyto(rows, np.nan, where=padded.reshape(my, by, mx, bx).transpose(0, 2, 1, 3))
    return rows.reshape(my * mx, by * bx), (my, mx)


def _clipped_rows(data, total, box_size, sigma_clip):
    """The boxes as rows (:func:`box_rows`), clipped: ``(rows, lo, hi, mesh_shape)`` with the
    values kept in ``rows[r, lo[r]:hi[r]]``."""
    rows, mesh_shape = box_rows(data, total, box_size)
    if fast_clip_supported(sigma_clip):
        corner = None
        if data.shape[0] % box_size[0] and data.shape[1] % box_size[1]:
            # photutils clips the top-right corner box with axis=None (astropy's other rule for
            # the final set)
            corner = rows[-1:].copy()
            corner_range = clip_sorted_rows(corner, sigma_clip, shrink=True)
        lo, hi = clip_sorted_rows(rows, sigma_clip)
        if corner is not None:
            rows[-1] = corner[0]
            lo[-1], hi[-1] = corner_range[0][0], corner_range[1][0]
    else:  # a custom centre/scale function or grow: astropy does the clipping. With grow, the
        # dilation runs along each box's flattened pixels, as photutils does for full boxes
        # (photutils' partial edge boxes are arranged differently)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            rows = np.ascontiguousarray(sigma_clip(rows, axis=1, masked=False))
        lo, hi = clip_sorted_rows(rows, None)
    return rows, lo, hi, mesh_shape


def mesh_statistics(data, total, box_size, sigma_clip, bkg_estimator, rms_estimator, *,
                    exclude_percentile, dtype):
    """Background and RMS meshes and the pixels used per box.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
    total : ndarray of bool, shape (ny, nx), or None
        Pixels excluded (:func:`total_mask`).
    box_size : ndarray of int, shape (2,)
    sigma_clip : astropy.stats.SigmaClip or None
    bkg_estimator, rms_estimator : callable
        Statistics of the clipped boxes (their own ``sigma_clip`` already None).
    exclude_percentile : float
        Boxes with at most ``(1 - exclude_percentile / 100) * by * bx`` pixels left are NaN.
    dtype : numpy dtype
        Of the two meshes.

    Returns
    -------
    bkg, rms : ndarray of ``dtype``, shape (my, mx)
        NaN for excluded boxes.
    ngood : ndarray of int, shape (my, mx)

    Raises
    ------
    ValueError
        When every box is excluded (photutils' message).
    """
    rows, lo, hi, mesh_shape = _clipped_rows(data, total, box_size, sigma_clip)
    cache = {}
    bkg = batched_statistic(bkg_estimator, rows, lo, hi, cache)
    rms = batched_statistic(rms_estimator, rows, lo, hi, cache)
    ngood = hi - lo
    threshold = (1 - exclude_percentile / 100.0) * int(np.prod(box_size))
    excluded = ngood <= threshold
    bkg[excluded] = np.nan
    rms[excluded] = np.nan
    if np.all(np.isnan(bkg)):
        raise ValueError(
            f"All boxes contain <= {threshold} unmasked or finite pixels "
            f"(self.box_size={box_size!r}, "
            f"self.exclude_percentile={exclude_percentile!r}). Please check your data "
            'or increase "exclude_percentile" to allow more boxes to be included.')
    return (bkg.reshape(mesh_shape).astype(dtype), rms.reshape(mesh_shape).astype(dtype),
            ngood.reshape(mesh_shape))


# -- meshes ---------------------------------------------------------------------------------
def nanmedian_filter(data, size):
    """``generic_filter(data, nanmedian, size, mode='constant', cval=nan)``, vectorised."""
    fy, fx = (int(v) for v in size)
    padded = np.pad(data, ((fy // 2, fy // 2), (fx // 2, fx // 2)), constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (fy, fx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(windows.reshape(*data.shape, fy * fx), axis=-1)


def fill_nan_mesh(mesh):
    """NaN mesh values replaced by IDW from the good ones (10 neighbours, power 1)."""
    bad = np.isnan(mesh)
    if not bad.any():
        return mesh
    good_yx = np.column_stack(np.where(~bad))
    bad_yx = np.column_stack(np.where(bad))
    out = mesh.copy()
    out[bad] = idw_interpolate(good_yx, mesh[~bad], bad_yx, n_neighbors=10)
    return out


def filter_mesh(mesh, bkg_stats, filter_size, filter_threshold):
    """``mesh`` (NaN-filled) median filtered with ``filter_size``; with ``filter_threshold``,
    only the boxes whose NaN-filled background ``bkg_stats`` exceeds it."""
    if tuple(filter_size) == (1, 1):
        return mesh
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        min_bkg = np.nanmin(bkg_stats)
    if filter_threshold is None or filter_threshold < min_bkg:
        return nanmedian_filter(mesh, filter_size).astype(mesh.dtype, copy=False)
    above = fill_nan_mesh(bkg_stats) > filter_threshold
    if not above.any():
        return mesh
    filtered = nanmedian_filter(mesh, filter_size).astype(mesh.dtype, copy=False)
    return np.where(above, filtered, mesh)


def mesh_centres(nan_mask, box_size):
    """``(y, x)`` pixel centres of the boxes that are not NaN, shape (2, n_good)."""
    idx = np.where(~nan_mask)
    cen = (box_size - 1) / 2.0
    return idx * box_size[:, None] + cen[:, None]
