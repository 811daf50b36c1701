"""Circular apertures and annuli, and aperture photometry, vectorised over positions.

The classes mirror photutils 3's ``CircularAperture`` / ``CircularAnnulus`` (same constructor,
attributes, masks, plotting and ``aperture_photometry`` table), but all positions are handled in
one batched call: a compiled kernel (:mod:`crowdphot.core.kernels.overlap`) accumulates every
aperture's weighted sum in one pass, without building weight stamps.

Overlap methods
---------------
``'exact'``
    Fraction of each pixel covered by the circle (closed-form area).
``'center'``
    1 when the pixel centre is inside the circle, else 0.
``'subpixel'``
    Fraction of the ``subpixels x subpixels`` sub-pixel centres inside the circle.

Pixel convention: arrays are ``[y, x]`` and ``(0.0, 0.0)`` is the centre of the first pixel.
"""

from __future__ import annotations

import collections.abc
import math
import warnings

import numpy as np
from astropy import units as u
from astropy.nddata import NDData, StdDevUncertainty
from astropy.table import QTable

from crowdphot.aperture.bounding_box import BoundingBox
from crowdphot.core.kernels.overlap import (
    METHODS,
    circle_sums,
    circle_weight_stamps,
    stamp_bbox,
)
from crowdphot.core.validate import (
    CrowdphotWarning,
    check_mask,
    check_positions,
    deprecated_positional,
)

__all__ = [
    "ApertureMask",
    "BoundingBox",
    "CircularAnnulus",
    "CircularAperture",
    "aperture_photometry",
    "circular_aperture_sums",
]

# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _as_radius(name, value):
    """A strictly positive, finite real scalar as float."""
    if isinstance(value, u.Quantity):
        raise TypeError(f"'{name}' must be a positive scalar in pixels, not a Quantity")
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"'{name}' must be a positive scalar (a real number), got {value!r}")
    if arr.ndim != 0:
        raise ValueError(f"'{name}' must be a positive scalar, got an array of shape {arr.shape}")
    val = float(arr)
    if not math.isfinite(val) or val <= 0:
        raise ValueError(f"'{name}' must be a positive scalar ({name} must be positive and "
                         f"finite), got {value!r}")
    return val


def checked_property(name, check, doc):
    """A property stored as ``_<name>`` whose setter stores ``check(name, value)``."""
    attr = "_" + name

    def fget(self):
        return getattr(self, attr)

    def fset(self, value):
        setattr(self, attr, check(name, value))

    return property(fget, fset, doc=doc)


_POSITIONS_MSG = ("'positions' must be a (x, y) pixel position or a list or array of (x, y) pixel "
                  "positions, e.g., [(x1, y1), (x2, y2), (x3, y3)]")


def _as_positions(value):
    """``(x, y)`` pair -> ``(2,)``; sequence / zip / generator of pairs -> ``(n, 2)``."""
    if isinstance(value, collections.abc.Iterator):
        value = tuple(value)  # zip(xs, ys) in the notebook, generators
    if isinstance(value, u.Quantity) or (
        isinstance(value, (tuple, list)) and any(
            isinstance(v, u.Quantity)
            or (isinstance(v, tuple) and any(isinstance(e, u.Quantity) for e in v))
            for v in value)
    ):
        raise TypeError("'positions' must not be a Quantity (pixel coordinates)")
    try:
        arr = np.array(value, dtype=float)
    except TypeError as exc:
        raise TypeError(_POSITIONS_MSG) from exc
    except ValueError as exc:
        raise ValueError(_POSITIONS_MSG) from exc
    if not (arr.shape == (2,) or (arr.ndim == 2 and arr.shape[1] == 2)):
        raise ValueError(f"{_POSITIONS_MSG}; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("'positions' must not contain any non-finite (e.g., NaN or inf) "
                         "positions")
    return arr


def _check_method(method, subpixels):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "subpixel" and (
        isinstance(subpixels, (bool, np.bool_))
        or not isinstance(subpixels, (int, np.integer))
        or subpixels <= 0
    ):
        raise ValueError(f"subpixels must be a strictly positive integer, got {subpixels!r}")
    return int(subpixels) if method == "subpixel" else 1


def _as_image(data):
    """``data`` as a float64 2D array (units stripped), without scanning its values.

    Non-finite pixels are dealt with where they are gathered, so that large images are not
    scanned in full for a few apertures.
    """
    try:
        arr = np.asarray(getattr(data, "value", data), dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError("data must be a 2D numeric array") from exc
    if arr.ndim != 2:
        raise ValueError(f"data must be a 2D array, got {arr.ndim} dimension(s)")
    if arr.size == 0:
        raise ValueError(f"data is empty (shape {arr.shape})")
    return arr


def _prepare_arrays(data, error, mask):
    """Validate ``data``/``error``/``mask``; return ``(data, error, mask, unit)``."""
    unit = getattr(data, "unit", None)
    err_unit = getattr(error, "unit", None) if error is not None else unit
    if (unit is None) != (err_unit is None) or (unit is not None and unit != err_unit):
        raise ValueError("data and error must both be Quantities with the same unit, or neither")
    arr = _as_image(data)
    msk = check_mask("mask", mask, arr.shape)
    err = None
    if error is not None:
        err = np.asarray(getattr(error, "value", error), dtype=float)
        if err.shape != arr.shape:
            raise ValueError(
                f"error must have the same shape as data {arr.shape}, got {err.shape}"
            )
    return arr, err, msk, unit


def _warn_nonfinite(count):
    if count:
        warnings.warn(
            f"data contains {count} non-finite (NaN/inf) pixel(s) inside the apertures and not "
            "covered by mask; they are excluded from the aperture sums",
            CrowdphotWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------
# batched sums (unchecked)
# ----------------------------------------------------------------------------------------------
def _aperture_sums(data, error, excluded, x, y, r, r_in, method, subpixels):
    """Weighted sums over circles/annuli at ``(x, y)``; NaN where a box misses the image.

    Pixels that are ``excluded`` or hold a non-finite value are left out.

    Returns
    -------
    sums : ndarray of shape (n,)
    errs : ndarray of shape (n,) or None
    nonfinite : int
        Number of (aperture, pixel) pairs skipped because the data value was non-finite.
    """
    return circle_sums(data, error, excluded, x, y, r, r_in, method, subpixels)


def circular_aperture_sums(data, x, y, r, *, r_in=None, error=None, mask=None, method="exact",
                           subpixels=5):
    """Sum the image inside circles (or annuli) centred at many positions.

    Array-level equivalent of :meth:`CircularAperture.do_photometry`.

    Parameters
    ----------
    data : array_like of shape (ny, nx)
        The (background-subtracted) image. Non-finite pixels inside an aperture are excluded
        (with a `~crowdphot.core.validate.CrowdphotWarning` unless ``mask`` already covers them).
    x, y : array_like of shape (n,)
        Aperture centres.
    r : float
        Radius (outer radius for an annulus).
    r_in : float, optional
        Inner radius: sum over the annulus ``r_in < d < r`` instead.
    error : array_like of shape (ny, nx), optional
        Per-pixel 1-sigma errors; the sum's error is ``sqrt(sum(weight * error**2))``.
    mask : array_like of bool, shape (ny, nx), optional
        True for pixels to exclude.
    method : {'exact', 'center', 'subpixel'}, optional
    subpixels : int, optional
        Sub-pixel sampling factor for ``method='subpixel'``.

    Returns
    -------
    sums : ndarray of shape (n,)
        NaN for apertures whose bounding box does not touch the image.
    errors : ndarray of shape (n,) or None
        None when ``error`` is None.

    Examples
    --------
    >>> sums, _ = circular_aperture_sums(np.ones((50, 50)), [20.0], [20.0], 3.0)
    >>> round(float(sums[0]), 10) == round(np.pi * 9, 10)
    True
    """
    r = _as_radius("r", r)
    if r_in is not None:
        r_in = _as_radius("r_in", r_in)
        if not r > r_in:
            raise ValueError(f"r must be greater than r_in, got r={r}, r_in={r_in}")
    subpixels = _check_method(method, subpixels)
    xa, ya = check_positions("positions", x, y)
    arr, err, msk, _ = _prepare_arrays(
        getattr(data, "value", data), getattr(error, "value", error), mask
    )
    sums, errs, nonfinite = _aperture_sums(arr, err, msk, xa, ya, r, r_in, method, subpixels)
    _warn_nonfinite(nonfinite)
    return sums, errs


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------
class ApertureMask:
    """Pixel weights of one aperture on its bounding box.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
        Weights in [0, 1].
    bbox : BoundingBox
        Where ``data`` sits in the image.

    Examples
    --------
    >>> m = CircularAperture((2.0, 2.0), 1.0).to_mask(method='center')
    >>> m.to_image((5, 5)).sum()
    np.float64(1.0)
    """

    def __init__(self, data, bbox):
        self.data = np.asarray(data)
        if self.data.shape != bbox.shape:
            raise ValueError("mask data and bounding box must have the same shape")
        self.bbox = bbox

    def __array__(self, dtype=None, copy=None):
        return np.array(self.data, dtype=dtype, copy=copy)

    @property
    def shape(self):
        """Shape ``(ny, nx)`` of the weights."""
        return self.data.shape

    def get_overlap_slices(self, shape):
        """See :meth:`BoundingBox.get_overlap_slices`."""
        return self.bbox.get_overlap_slices(shape)

    def to_image(self, shape, *, dtype=float):
        """The weights placed in a zero image of ``shape``; None without overlap."""
        large, small = self.get_overlap_slices(shape)
        if large is None:
            return None
        image = np.zeros(shape, dtype=dtype)
        image[large] = self.data[small]
        return image

    def cutout(self, data, *, fill_value=0.0, copy=False):
        """The box region of ``data`` (``fill_value`` off the image); None without overlap."""
        data = np.asanyarray(data)
        if data.ndim != 2:
            raise ValueError(f"data must be a 2D array, got {data.ndim} dimension(s)")
        large, small = self.get_overlap_slices(data.shape)
        if large is None:
            return None
        if data[large].shape == self.shape:
            cut = data[large]
            return cut.copy() if copy else cut
        dtype = data.dtype if np.isfinite(fill_value) else float
        cut = np.full(self.shape, fill_value, dtype=dtype)
        cut[small] = getattr(data[large], "value", data[large])
        if isinstance(data, u.Quantity):
            cut = cut << data.unit
        return cut

    def multiply(self, data, *, fill_value=0.0):
        """Weighted cutout ``cutout(data) * weights`` (``fill_value`` where weight is 0)."""
        cut = self.cutout(data, fill_value=fill_value)
        if cut is None:
            return None
        with np.errstate(invalid="ignore"):
            out = cut * self.data
        out[self.data == 0] = fill_value
        return out

    def get_values(self, data, *, mask=None):
        """1D array of weighted values of the pixels with non-zero weight (and not masked)."""
        data = np.asanyarray(data)
        large, small = self.get_overlap_slices(data.shape)
        if large is None:
            return np.array([])
        weights = self.data[small]
        keep = weights > 0
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != data.shape:
                raise ValueError("mask and data must have the same shape")
            keep &= ~mask[large]
        with np.errstate(invalid="ignore"):
            return (data[large] * weights)[keep]


# ----------------------------------------------------------------------------------------------
# apertures
# ----------------------------------------------------------------------------------------------
class _CircularBase:
    """Shared machinery of circular apertures and annuli (positions, masks, photometry)."""

    _params = ("positions",)

    @property
    def positions(self):
        """Centre(s): ``(2,)`` for a scalar aperture, ``(n, 2)`` ``(x, y)`` rows otherwise."""
        return self._positions

    @positions.setter
    def positions(self, value):
        self._positions = _as_positions(value)

    @property
    def shape(self):
        """``()`` for a single position, ``(n,)`` otherwise."""
        return self._positions.shape[:-1]

    @property
    def isscalar(self):
        """True when built from a single ``(x, y)`` pair."""
        return self._positions.ndim == 1

    def _xy(self):
        pos = np.atleast_2d(self._positions)
        return pos[:, 0], pos[:, 1]

    def _radii(self):  # (outer radius, inner radius or None)
        raise NotImplementedError

    def __len__(self):
        if self.isscalar:
            raise TypeError(f"A scalar {type(self).__name__!r} object has no len()")
        return self._positions.shape[0]

    def __getitem__(self, index):
        if self.isscalar:
            raise TypeError(f"A scalar {type(self).__name__!r} object cannot be indexed")
        kwargs = {p: getattr(self, p) for p in self._params}
        kwargs["positions"] = self._positions[index]
        return type(self)(**kwargs)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(np.array_equal(getattr(self, p), getattr(other, p)) for p in self._params)

    __hash__ = None

    def __repr__(self):
        pos = np.array2string(self._positions, separator=", ")
        extra = ", ".join(f"{p}={getattr(self, p)}" for p in self._params[1:])
        return f"<{type(self).__name__}({pos}, {extra})>"

    def __str__(self):
        lines = [f"Aperture: {type(self).__name__}"]
        lines += [f"{p}: {np.array2string(np.asarray(getattr(self, p)), separator=', ')}"
                  if p == "positions" else f"{p}: {getattr(self, p)}" for p in self._params]
        return "\n".join(lines)

    def copy(self):
        """An independent copy."""
        return type(self)(**{p: np.copy(getattr(self, p)) if p == "positions"
                             else getattr(self, p) for p in self._params})

    @property
    def bbox(self):
        """Minimal :class:`BoundingBox` (a list of them for several positions)."""
        x, y = self._xy()
        boxes = [BoundingBox(*b) for b in zip(*stamp_bbox(x, y, self._radii()[0]), strict=True)]
        return boxes[0] if self.isscalar else boxes

    @deprecated_positional("method", "subpixels")
    def to_mask(self, *, method="exact", subpixels=5):
        """Pixel-weight masks of the aperture(s).

        Parameters
        ----------
        method : {'exact', 'center', 'subpixel'}, optional
        subpixels : int, optional

        Returns
        -------
        mask : ApertureMask or list of ApertureMask
            A single mask for a scalar aperture.
        """
        nsub = _check_method(method, subpixels)
        x, y = self._xy()
        r_out, r_in = self._radii()
        w, ixmin, iymin, nx, ny = circle_weight_stamps(
            x, y, r_out, r_in=r_in, method=method, subpixels=nsub
        )
        masks = [
            ApertureMask(w[k, : ny[k], : nx[k]].copy(),
                         BoundingBox(ixmin[k], ixmin[k] + nx[k], iymin[k], iymin[k] + ny[k]))
            for k in range(x.size)
        ]
        return masks[0] if self.isscalar else masks

    @deprecated_positional("error", "mask", "method", "subpixels")
    def do_photometry(self, data, *, error=None, mask=None, method="exact", subpixels=5):
        """Sum ``data`` (and propagate ``error``) inside each aperture.

        Parameters
        ----------
        data : array_like or Quantity of shape (ny, nx)
            Non-finite pixels are excluded (with a warning unless ``mask`` covers them).
        error : array_like or Quantity of shape (ny, nx), optional
            Per-pixel 1-sigma errors (same unit as ``data``).
        mask : array_like of bool, shape (ny, nx), optional
            True for pixels to exclude.
        method : {'exact', 'center', 'subpixel'}, optional
        subpixels : int, optional

        Returns
        -------
        sums, errors : ndarray (or Quantity) of shape (n,)
            ``errors`` is empty when ``error`` is None; NaN where an aperture misses the image.

        Examples
        --------
        >>> sums, errs = CircularAperture([(5, 5), (9, 9)], 2).do_photometry(np.ones((20, 20)))
        >>> np.allclose(sums, 4 * np.pi), errs.size
        (True, 0)
        """
        nsub = _check_method(method, subpixels)
        arr, err, msk, unit = _prepare_arrays(data, error, mask)
        x, y = self._xy()
        r_out, r_in = self._radii()
        sums, errs, nonfinite = _aperture_sums(arr, err, msk, x, y, r_out, r_in, method, nsub)
        _warn_nonfinite(nonfinite)
        if errs is None:
            errs = np.array([])
        if unit is not None:
            sums, errs = sums << unit, errs << unit
        return sums, errs

    def area_overlap(self, data, *, mask=None, method="exact", subpixels=5):
        """Aperture area on the image, excluding masked pixels (NaN without overlap).

        Returns
        -------
        area : float or ndarray of shape (n,)
        """
        nsub = _check_method(method, subpixels)
        data = np.asanyarray(data)
        if data.ndim != 2:
            raise ValueError(f"data must be a 2D array, got {data.ndim} dimension(s)")
        if mask is not None and np.shape(mask) != data.shape:
            raise ValueError("mask and data must have the same shape")
        msk = check_mask("mask", mask, data.shape)
        x, y = self._xy()
        r_out, r_in = self._radii()
        area, _, _ = _aperture_sums(np.ones(data.shape), None, msk, x, y, r_out, r_in, method,
                                    nsub)
        return float(area[0]) if self.isscalar else area

    def _patches(self, xy, **kwargs):  # one matplotlib patch per centre
        raise NotImplementedError

    def plot(self, ax=None, *, origin=(0, 0), **kwargs):
        """Draw the aperture(s) on matplotlib axes.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Defaults to the current axes.
        origin : (x, y), optional
            Pixel position of the displayed image's origin.
        **kwargs
            Passed to the matplotlib patches (``fill=False`` unless given).

        Returns
        -------
        patches : list of matplotlib.patches.Patch
        """
        from crowdphot.core.optional import require_matplotlib

        require_matplotlib(f"{type(self).__name__}.plot")
        import matplotlib.pyplot as plt

        if ax is None:
            ax = plt.gca()
        kwargs.setdefault("fill", False)
        pos = np.atleast_2d(self._positions) - np.asarray(origin, dtype=float)
        patches = [self._patches(tuple(p), **kwargs) for p in pos]
        for patch in patches:
            ax.add_patch(patch)
        return patches


class CircularAperture(_CircularBase):
    """A circular aperture at one or many pixel positions.

    Parameters
    ----------
    positions : (x, y) pair, (n, 2) array_like, or iterable of (x, y) pairs
        Centre(s); ``zip(xs, ys)`` and generators are accepted.
    r : float
        Radius in pixels (> 0).

    Examples
    --------
    >>> aper = CircularAperture(zip([10.0, 30.0], [20.0, 40.0]), r=3.0)
    >>> len(aper), round(aper.area, 6)
    (2, 28.274334)
    >>> sums, _ = aper.do_photometry(np.ones((50, 50)))
    >>> np.allclose(sums, aper.area)
    True
    """

    _params = ("positions", "r")

    def __init__(self, positions, r):
        self.positions = positions
        self.r = r

    r = checked_property("r", _as_radius, "Radius in pixels.")

    @property
    def area(self):
        """Geometric area ``pi * r**2``."""
        return math.pi * self._r ** 2

    def _radii(self):
        return self._r, None

    def _patches(self, xy, **kwargs):
        import matplotlib.patches as mpatches

        return mpatches.Circle(xy, self._r, **kwargs)


class CircularAnnulus(_CircularBase):
    """A circular annulus at one or many pixel positions.

    Parameters
    ----------
    positions : (x, y) pair, (n, 2) array_like, or iterable of (x, y) pairs
        Centre(s).
    r_in, r_out : float
        Inner and outer radii in pixels (``0 < r_in < r_out``).

    Examples
    --------
    >>> ann = CircularAnnulus((25.0, 25.0), r_in=5.0, r_out=8.0)
    >>> round(ann.area, 6)
    122.522113
    >>> sums, _ = ann.do_photometry(np.ones((50, 50)))
    >>> bool(np.isclose(sums[0], ann.area))
    True
    """

    _params = ("positions", "r_in", "r_out")

    def __init__(self, positions, r_in, r_out):
        r_in = _as_radius("r_in", r_in)
        try:
            r_out = _as_radius("r_out", r_out)
        except ValueError:
            r_out = -np.inf  # reported below, in photutils' words
        if not r_out > r_in:
            raise ValueError(f"'r_out' must be greater than 'r_in', got r_in={r_in}, "
                             f"r_out={r_out}")
        self.positions = positions
        self._r_in = r_in
        self._r_out = r_out

    r_in = checked_property("r_in", _as_radius, "Inner radius in pixels.")

    r_out = checked_property("r_out", _as_radius, "Outer radius in pixels.")

    @property
    def area(self):
        """Geometric area ``pi * (r_out**2 - r_in**2)``."""
        return math.pi * (self._r_out ** 2 - self._r_in ** 2)

    def _radii(self):
        return self._r_out, self._r_in

    def _patches(self, xy, **kwargs):
        import matplotlib.patches as mpatches

        return mpatches.Annulus(xy, self._r_out, self._r_out - self._r_in, **kwargs)


# ----------------------------------------------------------------------------------------------
# aperture_photometry
# ----------------------------------------------------------------------------------------------
class _PhotTable(QTable):
    """QTable that also answers to the pre-3.0 names ``xcenter`` / ``ycenter``."""

    _aliases = {"xcenter": "x_center", "ycenter": "y_center"}

    def __getitem__(self, item):
        if isinstance(item, str) and item not in self.colnames and item in self._aliases:
            item = self._aliases[item]
        return super().__getitem__(item)


@deprecated_positional("error", "mask", "method", "subpixels", "wcs")
def aperture_photometry(data, apertures, *, error=None, mask=None, method="exact", subpixels=5,
                        wcs=None):
    """Aperture photometry of an image, one row per aperture position.

    Parameters
    ----------
    data : array_like, Quantity or NDData of shape (ny, nx)
        Background-subtracted image. For NDData, ``mask``, ``uncertainty``
        (StdDevUncertainty) and ``wcs`` are taken from the object.
    apertures : CircularAperture, CircularAnnulus, or list of them
        A list must share identical positions; its sums get suffixes ``_0, _1, ...``.
    error : array_like or Quantity of shape (ny, nx), optional
        Per-pixel 1-sigma errors.
    mask : array_like of bool, shape (ny, nx), optional
        True for pixels to exclude. Non-finite data pixels are always excluded.
    method : {'exact', 'center', 'subpixel'}, optional
    subpixels : int, optional
    wcs : astropy WCS-like, optional
        Adds a ``sky_center`` column.

    Returns
    -------
    table : QTable
        Columns ``id``, ``x_center``, ``y_center`` (also readable as ``xcenter`` /
        ``ycenter``), [``sky_center``], ``aperture_sum`` and, with ``error``,
        ``aperture_sum_err``.

    Examples
    --------
    >>> tbl = aperture_photometry(np.ones((30, 30)), CircularAperture([(10, 10), (20, 15)], 2))
    >>> tbl.colnames
    ['id', 'x_center', 'y_center', 'aperture_sum']
    >>> np.allclose(tbl['aperture_sum'], 4 * np.pi)
    True
    """
    if isinstance(data, NDData):
        if any(v is not None for v in (error, mask, wcs)):
            warnings.warn("error, mask and wcs are taken from the NDData input; the keywords "
                          "are ignored", CrowdphotWarning, stacklevel=2)
        mask, wcs = data.mask, data.wcs
        unc = data.uncertainty
        error = None
        if isinstance(unc, StdDevUncertainty):
            error = unc.array if unc.unit is None else unc.array * unc.unit
        data = data.data if data.unit is None else u.Quantity(data.data, data.unit)

    single = not isinstance(apertures, (list, tuple))
    aper_list = [apertures] if single else list(apertures)
    if not aper_list:
        raise ValueError("apertures must not be empty")
    for aper in aper_list:
        if not isinstance(aper, _CircularBase):
            raise TypeError("apertures must be CircularAperture or CircularAnnulus instances, "
                            f"got {type(aper).__name__}")
    positions = np.atleast_2d(aper_list[0].positions)
    for aper in aper_list[1:]:
        if not np.array_equal(np.atleast_2d(aper.positions), positions):
            raise ValueError("apertures must all have identical positions")

    tbl = _PhotTable()
    tbl.meta["aperture_photometry_args"] = f"method='{method}', subpixels={subpixels}"
    for i, aper in enumerate(aper_list):
        key = "aperture" if single else f"aperture{i}"
        tbl.meta[key] = type(aper).__name__
        for p in aper._params[1:]:
            tbl.meta[f"{key}_{p}"] = getattr(aper, p)
    tbl["id"] = np.arange(1, positions.shape[0] + 1, dtype=np.int64)
    tbl["x_center"] = positions[:, 0]
    tbl["y_center"] = positions[:, 1]
    if wcs is not None:
        tbl["sky_center"] = wcs.pixel_to_world(positions[:, 0], positions[:, 1])
    for i, aper in enumerate(aper_list):
        suffix = "" if single else f"_{i}"
        sums, errs = aper.do_photometry(data, error=error, mask=mask, method=method,
                                        subpixels=subpixels)
        tbl[f"aperture_sum{suffix}"] = sums
        if error is not None:
            tbl[f"aperture_sum_err{suffix}"] = errs
    return tbl
