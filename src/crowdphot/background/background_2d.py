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

The class validates and configures; the array work (box rows, clipping and statistics, NaN
filling, median filtering, box centres) is in :mod:`crowdphot.background._mesh`.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
from astropy.utils.exceptions import AstropyDeprecationWarning

from crowdphot.background._mesh import (
    UNSET,
    box_rows,
    check_mask,
    fill_nan_mesh,
    filter_mesh,
    mesh_centres,
    mesh_statistics,
    pair,
    resolve_deprecated,
    total_mask,
    unpack_data,
)
from crowdphot.background.core import SIGMA_CLIP, _make_sigma_clip
from crowdphot.background.estimators import SExtractorBackground, StdBackgroundRMS
from crowdphot.background.interpolators import BkgIDWInterpolator, _BkgZoomInterpolator

__all__ = ["Background2D", "box_rows"]


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
                 interpolator=UNSET, bkgrms_estimator=UNSET):
        bkg_rms_estimator, interpolator = resolve_deprecated(bkg_rms_estimator,
                                                             bkgrms_estimator, interpolator)
        self._unit, data, data_mask = unpack_data(data)
        self._shape = data.shape
        self._dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float32)
        mask = check_mask(mask, "mask", self._shape)
        self._has_mask = mask is not None
        if data_mask is not None and data_mask.any():
            mask = data_mask if mask is None else (mask | data_mask)
        self.coverage_mask = check_mask(coverage_mask, "coverage_mask", self._shape)
        self.box_size = pair("box_size", box_size, upper=data.shape)
        self.fill_value = fill_value
        if not 0 <= exclude_percentile <= 100:
            raise ValueError("exclude_percentile must be between 0 and 100 (inclusive)")
        self.exclude_percentile = exclude_percentile
        self.filter_size = pair("filter_size", filter_size, odd=True)
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

        total = total_mask(data, mask, self.coverage_mask, stacklevel=2)
        self._bkg_stats, self._rms_stats, self._ngood = mesh_statistics(
            data, total, self.box_size, self.sigma_clip, bkg_estimator, bkg_rms_estimator,
            exclude_percentile=exclude_percentile, dtype=self._dtype)
        self._mesh_nan_mask = np.isnan(self._bkg_stats)
        self._cache = {}

    # -- meshes and images ----------------------------------------------------------------
    def _raw_mesh(self, which):
        if which not in self._cache:
            stats = self._bkg_stats if which == "bkg" else self._rms_stats
            self._cache[which] = filter_mesh(fill_nan_mesh(stats), self._bkg_stats,
                                             self.filter_size, self.filter_threshold)
        return self._cache[which]

    def _with_unit(self, value):
        return value if self._unit is None else value << self._unit

    @property
    def _interp_kwargs(self):
        """Keywords handed to the interpolator (photutils' private attribute of that name)."""
        kwargs = {"shape": self._shape, "dtype": self._dtype, "box_size": self.box_size}
        if isinstance(self.interpolator, BkgIDWInterpolator):
            kwargs["mesh_yxcen"] = mesh_centres(self._mesh_nan_mask, self.box_size)
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
        ycen, xcen = mesh_centres(self._mesh_nan_mask, self.box_size)
        ax.scatter(xcen, ycen, s=markersize, marker=marker, color=color, alpha=alpha)
        if outlines:
            by, bx = self.box_size
            kwargs.setdefault("fill", False)
            for x, y in zip(xcen, ycen, strict=True):
                ax.add_patch(Rectangle((x - bx / 2, y - by / 2), bx, by, color=color,
                                       alpha=alpha, **kwargs))
