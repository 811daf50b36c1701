"""Two-dimensional background and background RMS maps, as photutils 3's ``Background2D``.

The image is cut into boxes (``box_size``; partial boxes at the top/right edges); in each box
the unmasked pixels are sigma clipped and a background and an RMS statistic computed, giving a
low-resolution mesh; boxes with too many masked pixels (``exclude_percentile``) are filled by
inverse-distance weighting from their neighbours, the mesh is median filtered
(``filter_size``, optionally only above ``filter_threshold``) and resized to the image with a
cubic spline.

Differences in *how*, not in *what*: every box is one row of a single ``(nbox, npix)`` array,
sorted once; sigma clipping then keeps a contiguous range of each sorted row, and the default
statistics (SourceExtractor mode, standard deviation, ...) come from that range for all boxes
at once (:mod:`crowdphot.core.kernels.meshstats`); the spline resize is separable
(:func:`~crowdphot.background.interpolators.zoom_mesh`). Results equal photutils' to rounding.
"""

from __future__ import annotations

import copy
import warnings

import astropy.units as u
import numpy as np
from astropy.nddata import NDData
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning

from crowdphot.background.core import SIGMA_CLIP, _make_sigma_clip
from crowdphot.background.estimators import (
    SExtractorBackground,
    StdBackgroundRMS,
    batched_statistic,
)
from crowdphot.background.interpolators import (
    BkgIDWInterpolator,
    _BkgZoomInterpolator,
    idw_interpolate,
)
from crowdphot.core.kernels.meshstats import clip_sorted_rows, fast_clip_supported

__all__ = ["Background2D", "box_rows"]

_UNSET = object()


def _pair(name, value, *, upper=None, odd=False):
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


def _nanmedian_filter(data, size):
    """``generic_filter(data, nanmedian, size, mode='constant', cval=nan)``, vectorised."""
    fy, fx = (int(v) for v in size)
    padded = np.pad(data, ((fy // 2, fy // 2), (fx // 2, fx // 2)), constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (fy, fx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(windows.reshape(*data.shape, fy * fx), axis=-1)


def _fill_nan_mesh(mesh):
    """NaN mesh values replaced by IDW from the good ones (10 neighbours, power 1)."""
    bad = np.isnan(mesh)
    if not bad.any():
        return mesh
    good_yx = np.column_stack(np.where(~bad))
    bad_yx = np.column_stack(np.where(bad))
    out = mesh.copy()
    out[bad] = idw_interpolate(good_yx, mesh[~bad], bad_yx, n_neighbors=10)
    return out


class Background2D:
    """Background and background RMS maps of an image from sigma-clipped box statistics.

    Parameters
    ----------
    data : array_like, astropy Quantity or NDData of shape (ny, nx)
        The image. Non-finite pixels are masked (with an ``AstropyUserWarning``).
    box_size : int or (int, int)
        Box size ``(by, bx)``; capped at the image size. Partial boxes cover the top/right.
    mask : array_like of bool, shape (ny, nx), optional
        True for pixels to exclude from the statistics (sources, bad pixels); the maps are
        still computed there.
    coverage_mask : array_like of bool, shape (ny, nx), optional
        True where the image has no data; the maps are ``fill_value`` there.
    fill_value : float, optional
        Map value under ``coverage_mask`` (default 0).
    exclude_percentile : float in [0, 100], optional
        A box with more than this percentage of its pixels masked (input masks, non-finite,
        padding or clipped) is excluded and filled from its neighbours (default 10).
    filter_size : int or (int, int), optional
        Odd size of the median filter applied to the meshes (default 3; 1 = none).
    filter_threshold : float, optional
        Filter only boxes whose background exceeds this (default: all).
    sigma_clip : astropy.stats.SigmaClip or None, optional
        Clipping in each box (default ``SigmaClip(sigma=3.0, maxiters=10)``).
    bkg_estimator : callable, optional
        Background statistic (default ``SExtractorBackground``); its own ``sigma_clip`` is
        ignored.
    bkg_rms_estimator : callable, optional
        RMS statistic (default ``StdBackgroundRMS``). ``bkgrms_estimator`` is the deprecated
        spelling.
    interpolator : callable, optional
        Deprecated in photutils 3.0 (as here): mesh-to-image resizing, default cubic spline.

    Attributes
    ----------
    background, background_rms : ndarray of shape (ny, nx)
    background_mesh, background_rms_mesh : ndarray of shape (my, mx)
    background_median, background_rms_median : float
    n_pixels_mesh : ndarray of int, shape (my, mx)
        Pixels used in each box after clipping (``npixels_mesh`` is deprecated).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:200, :300]
    >>> data = 20.0 + 0.01 * xx + rng.normal(0.0, 1.0, (200, 300))
    >>> bkg = Background2D(data, 50)
    >>> bkg.background.shape, bkg.background_mesh.shape
    ((200, 300), (4, 6))
    >>> bool(abs(bkg.background_median - 21.5) < 0.1)
    True
    """

    def __init__(self, data, box_size, *, mask=None, coverage_mask=None, fill_value=0.0,
                 exclude_percentile=10.0, filter_size=(3, 3), filter_threshold=None,
                 sigma_clip=SIGMA_CLIP, bkg_estimator=None, bkg_rms_estimator=None,
                 interpolator=_UNSET, bkgrms_estimator=_UNSET):
        if bkgrms_estimator is not _UNSET:
            warnings.warn("'bkgrms_estimator' was deprecated in version 3.0 and will be removed "
                          "in version 4.0. Use argument 'bkg_rms_estimator' instead.",
                          AstropyDeprecationWarning, stacklevel=2)
            if bkg_rms_estimator is not None:
                raise TypeError("Background2D() got values for both 'bkgrms_estimator' and "
                                "'bkg_rms_estimator'")
            bkg_rms_estimator = bkgrms_estimator
        if interpolator is not _UNSET:
            warnings.warn("'interpolator' was deprecated in version 3.0 and will be removed in "
                          "version 4.0.", AstropyDeprecationWarning, stacklevel=2)
        else:
            interpolator = None

        self._unit = None
        if isinstance(data, u.Quantity):
            self._unit, data = data.unit, data.value
        elif isinstance(data, NDData):  # includes CCDData
            self._unit, data = data.unit, data.data
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
        self._shape = data.shape
        self._dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float32)
        mask = self._check_mask(mask, "mask")
        self._has_mask = mask is not None
        if data_mask is not None and data_mask.any():
            mask = data_mask if mask is None else (mask | data_mask)
        self.coverage_mask = self._check_mask(coverage_mask, "coverage_mask")
        self.box_size = _pair("box_size", box_size, upper=data.shape)
        self.fill_value = fill_value
        if not 0 <= exclude_percentile <= 100:
            raise ValueError("exclude_percentile must be between 0 and 100 (inclusive)")
        self.exclude_percentile = exclude_percentile
        self.filter_size = _pair("filter_size", filter_size, odd=True)
        self.filter_threshold = filter_threshold
        self.sigma_clip = _make_sigma_clip(sigma_clip)
        self.interpolator = _BkgZoomInterpolator() if interpolator is None else interpolator
        if bkg_estimator is None:
            bkg_estimator = SExtractorBackground(sigma_clip=None)
        if bkg_rms_estimator is None:
            bkg_rms_estimator = StdBackgroundRMS(sigma_clip=None)
        # the clipping is done once here, not by each estimator (copies: never mutate the user's)
        bkg_estimator = copy.copy(bkg_estimator)
        bkg_rms_estimator = copy.copy(bkg_rms_estimator)
        for est in (bkg_estimator, bkg_rms_estimator):
            if hasattr(est, "sigma_clip"):
                est.sigma_clip = None
        self.bkg_estimator = bkg_estimator
        self.bkg_rms_estimator = bkg_rms_estimator

        self._box_npixels = int(np.prod(self.box_size))
        self._bkg_stats, self._rms_stats, self._ngood = self._calculate_stats(data, mask)
        self._mesh_nan_mask = np.isnan(self._bkg_stats)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self._min_bkg_stats = np.nanmin(self._bkg_stats)
        self._cache = {}

    # -- validation -----------------------------------------------------------------------
    def _check_mask(self, array, name):
        if array is None or array is np.ma.nomask:
            return None
        array = np.asanyarray(array)
        if array.ndim != 2:
            raise ValueError(f"{name} must be a 2D array")
        if array.shape != self._shape:
            raise ValueError(f"data and {name} must have the same shape")
        return array.astype(bool, copy=False)

    @property
    def _good_npixels_threshold(self):
        return (1 - self.exclude_percentile / 100.0) * self._box_npixels

    # -- statistics -----------------------------------------------------------------------
    def _total_mask(self, data, mask):
        bad = ~np.isfinite(data)
        inputs = [m for m in (mask, self.coverage_mask) if m is not None]
        user = None
        if inputs:
            user = inputs[0] if len(inputs) == 1 else inputs[0] | inputs[1]
        if bad.any() and (user is None or np.any(bad & ~user)):
            warnings.warn("Input data contains non-finite (NaN or infinity) values, which were "
                          "automatically masked.", AstropyUserWarning, stacklevel=4)
        total = bad if user is None else (bad | user)
        if total.all():
            raise ValueError("All input pixels are masked. Cannot compute a background.")
        return total if total.any() else None

    def _calculate_stats(self, data, mask):
        total = self._total_mask(data, mask)
        rows, mesh_shape = box_rows(data, total, self.box_size)
        if fast_clip_supported(self.sigma_clip):
            corner = None
            if data.shape[0] % self.box_size[0] and data.shape[1] % self.box_size[1]:
                # photutils clips the top-right corner box with axis=None (astropy's other
                # rule for the final set)
                corner = rows[-1:].copy()
                corner_range = clip_sorted_rows(corner, self.sigma_clip, shrink=True)
            lo, hi = clip_sorted_rows(rows, self.sigma_clip)
            if corner is not None:
                rows[-1] = corner[0]
                lo[-1], hi[-1] = corner_range[0][0], corner_range[1][0]
        else:  # a custom centre/scale function or grow: astropy does the clipping. With grow,
            # the dilation runs along each box's flattened pixels, as photutils does for full
            # boxes (photutils' partial edge boxes are arranged differently)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyUserWarning)
                rows = np.ascontiguousarray(self.sigma_clip(rows, axis=1, masked=False))
            lo, hi = clip_sorted_rows(rows, None)
        cache = {}
        bkg = batched_statistic(self.bkg_estimator, rows, lo, hi, cache)
        rms = batched_statistic(self.bkg_rms_estimator, rows, lo, hi, cache)
        ngood = hi - lo
        excluded = ngood <= self._good_npixels_threshold
        bkg[excluded] = np.nan
        rms[excluded] = np.nan
        if np.all(np.isnan(bkg)):
            raise ValueError(
                f"All boxes contain <= {self._good_npixels_threshold} unmasked or finite pixels "
                f"(self.box_size={self.box_size!r}, "
                f"self.exclude_percentile={self.exclude_percentile!r}). Please check your data "
                'or increase "exclude_percentile" to allow more boxes to be included.')
        dtype = self._dtype
        return (bkg.reshape(mesh_shape).astype(dtype), rms.reshape(mesh_shape).astype(dtype),
                ngood.reshape(mesh_shape))

    def _filter_mesh(self, mesh):
        if tuple(self.filter_size) == (1, 1):
            return mesh
        if self.filter_threshold is None or self.filter_threshold < self._min_bkg_stats:
            return _nanmedian_filter(mesh, self.filter_size).astype(mesh.dtype, copy=False)
        above = _fill_nan_mesh(self._bkg_stats) > self.filter_threshold
        if not above.any():
            return mesh
        filtered = _nanmedian_filter(mesh, self.filter_size).astype(mesh.dtype, copy=False)
        return np.where(above, filtered, mesh)

    def _raw_mesh(self, which):
        if which not in self._cache:
            stats = self._bkg_stats if which == "bkg" else self._rms_stats
            self._cache[which] = self._filter_mesh(_fill_nan_mesh(stats))
        return self._cache[which]

    def _with_unit(self, value):
        return value if self._unit is None else value << self._unit

    def _mesh_yxcen(self):
        idx = np.where(~self._mesh_nan_mask)
        cen = (self.box_size - 1) / 2.0
        return idx * self.box_size[:, None] + cen[:, None]

    @property
    def _interp_kwargs(self):
        """Keywords handed to the interpolator (photutils' private attribute of that name)."""
        kwargs = {"shape": self._shape, "dtype": self._dtype, "box_size": self.box_size}
        if isinstance(self.interpolator, BkgIDWInterpolator):
            kwargs["mesh_yxcen"] = self._mesh_yxcen()
            kwargs["mesh_nan_mask"] = self._mesh_nan_mask
        return kwargs

    def _to_image(self, mesh):
        image = self.interpolator(mesh, **self._interp_kwargs)
        if self.coverage_mask is not None:
            image[self.coverage_mask] = self.fill_value
        return self._with_unit(image)

    # -- public attributes ----------------------------------------------------------------
    @property
    def background_mesh(self):
        """Low-resolution background map, shape (my, mx) (SourceExtractor's MINIBACK)."""
        return self._with_unit(self._raw_mesh("bkg"))

    @property
    def background_rms_mesh(self):
        """Low-resolution background RMS map, shape (my, mx) (MINIBACK_RMS)."""
        return self._with_unit(self._raw_mesh("rms"))

    @property
    def background_median(self):
        """Median of :attr:`background_mesh` (SourceExtractor's "(M+D) Background")."""
        return self._with_unit(np.median(self._raw_mesh("bkg")))

    @property
    def background_rms_median(self):
        """Median of :attr:`background_rms_mesh` (SourceExtractor's "(M+D) RMS")."""
        return self._with_unit(np.median(self._raw_mesh("rms")))

    @property
    def background(self):
        """Background image, shape (ny, nx); recomputed on each access."""
        return self._to_image(self._raw_mesh("bkg"))

    @property
    def background_rms(self):
        """Background RMS image, shape (ny, nx); recomputed on each access."""
        return self._to_image(self._raw_mesh("rms"))

    @property
    def n_pixels_mesh(self):
        """Pixels used in each box after masking and clipping, shape (my, mx)."""
        return self._ngood

    @property
    def n_pixels_map(self):
        """:attr:`n_pixels_mesh` replicated to the image shape (ny, nx)."""
        by, bx = self.box_size
        full = np.repeat(np.repeat(self._ngood, by, axis=0), bx, axis=1)
        return full[:self._shape[0], :self._shape[1]]

    @property
    def npixels_mesh(self):
        """Deprecated alias of :attr:`n_pixels_mesh`."""
        warnings.warn("This function was deprecated in version 3.0 and will be removed in "
                      "version 4.0. Use n_pixels_mesh instead.", AstropyDeprecationWarning,
                      stacklevel=2)
        return self.n_pixels_mesh

    @property
    def npixels_map(self):
        """Deprecated alias of :attr:`n_pixels_map`."""
        warnings.warn("This function was deprecated in version 3.0 and will be removed in "
                      "version 4.0. Use n_pixels_map instead.", AstropyDeprecationWarning,
                      stacklevel=2)
        return self.n_pixels_map

    # -- display --------------------------------------------------------------------------
    def _repr_items(self):
        arr = f"<array; shape={self._shape}>"
        return {"data": arr, "box_size": self.box_size,
                "mask": arr if self._has_mask else None,
                "coverage_mask": None if self.coverage_mask is None else arr,
                "fill_value": self.fill_value, "exclude_percentile": self.exclude_percentile,
                "filter_size": self.filter_size, "filter_threshold": self.filter_threshold,
                "sigma_clip": self.sigma_clip, "bkg_estimator": self.bkg_estimator,
                "bkg_rms_estimator": self.bkg_rms_estimator,
                "interpolator": self.interpolator}

    def __repr__(self):
        items = ", ".join(f"{k}={v!r}" for k, v in self._repr_items().items())
        return f"Background2D({items})"

    def __str__(self):
        lines = [f"<{type(self).__module__}.{type(self).__name__}>"]
        lines += [f"{k}: {v!r}" for k, v in self._repr_items().items()]
        return "\n".join(lines)

    def plot_meshes(self, *, ax=None, marker="+", markersize=None, color="blue", alpha=None,
                    outlines=False, **kwargs):
        """Mark the centres (and optionally outlines) of the used boxes on a matplotlib Axes.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Default: the current axes.
        marker, markersize, color, alpha :
            Marker style of the box centres (``markersize=0`` hides them).
        outlines : bool, optional
            Also draw each box's outline (``kwargs`` go to the rectangle patches).
        """
        from crowdphot.core.optional import require_matplotlib

        require_matplotlib("Background2D.plot_meshes")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        if ax is None:
            ax = plt.gca()
        ycen, xcen = self._mesh_yxcen()
        ax.scatter(xcen, ycen, s=markersize, marker=marker, color=color, alpha=alpha)
        if outlines:
            by, bx = self.box_size
            kwargs.setdefault("fill", False)
            for x, y in zip(xcen, ycen, strict=True):
                ax.add_patch(Rectangle((x - bx / 2, y - by / 2), bx, by, color=color,
                                       alpha=alpha, **kwargs))
