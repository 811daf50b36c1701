"""Star finders: drop-in, vectorised versions of photutils 3.0's IRAFStarFinder and DAOStarFinder.

Both classes convolve the image with a zero-sum truncated-Gaussian kernel, keep the local maxima
above ``threshold`` and measure every candidate at once on gathered ``(n, ky, kx)`` stamps (image
moments for IRAF ``starfind``, marginal Gaussian fits for DAOFIND). Arguments, defaults,
deprecated aliases and output tables (column names, order, dtypes; old names such as
``xcentroid``/``npix``/``pa`` still readable with an ``AstropyDeprecationWarning``) follow
photutils 3.0, and the numbers agree with it to floating-point rounding.

Differences from photutils, all on invalid input: options after ``fwhm`` are keyword-only;
arguments are checked up front with errors naming them; NaN/inf pixels are replaced by 0 and
masked with a :class:`~crowdphot.core.validate.CrowdphotWarning` instead of being propagated
(detections touching them are dropped, as photutils' NaN propagation effectively does).
"""

from __future__ import annotations

import datetime
import warnings

import astropy.units as u
import numpy as np
from astropy.utils.exceptions import AstropyDeprecationWarning

from crowdphot.core.kernels.detect import (
    convolve_zero_padded,
    dao_measure,
    find_peak_pixels,
    gather_stamps,
    iraf_measure,
    make_star_kernel,
)
from crowdphot.core.validate import (
    CrowdphotWarning,
    check_image,
    check_mask,
    deprecated_positional,
)
from crowdphot.utils._tables import make_deprecated_qtable
from crowdphot.utils.exceptions import NoDetectionsWarning

__all__ = ["IRAFStarFinder", "DAOStarFinder", "NoDetectionsWarning"]


# old column/attribute name -> new name (photutils 3.0 renames, readable until 4.0)
DEPRECATED_COLUMNS = {
    "xcentroid": "x_centroid",
    "ycentroid": "y_centroid",
    "cutout_xcentroid": "cutout_x_centroid",
    "cutout_ycentroid": "cutout_y_centroid",
    "pa": "orientation",
    "npix": "n_pixels",
}


class _Deprecated:
    """Sentinel default that tells an omitted deprecated argument from an explicit one."""

    def __repr__(self):
        return "<deprecated>"


_DEPRECATED = _Deprecated()


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _split_unit(name, value):
    unit = getattr(value, "unit", None)
    return getattr(value, "value", value), unit


def _check_positive_scalar(name, value, *, allow_zero=False):
    # photutils 3's wording: "<name> must be a scalar value", "... must be positive"
    if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
        raise TypeError(f"{name} must be a scalar value, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a scalar value, got {value!r}") from exc
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "must be >= 0" if allow_zero else "must be positive"
        raise ValueError(f"{name} {bound} (and finite), got {value!r}")
    return value


def _check_threshold(threshold):
    value, unit = _split_unit("threshold", threshold)
    if value is None or isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError(f"threshold must be a number or a 2D array, got {threshold!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"threshold must be a number or a 2D array, got {threshold!r}") from exc
    if arr.ndim not in (0, 2):
        raise ValueError(f"threshold must be a scalar or a 2D array, got {arr.ndim} dimension(s)")
    if not np.all(np.isfinite(arr)):
        raise ValueError("threshold must be finite (found NaN or inf)")
    return arr, unit


def _check_range(name, value):
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or np.ndim(value) != 1 or np.size(value) != 2:
        raise ValueError(f"{name} must be a 2-element (lower, upper) tuple or None, got {value!r}")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must contain numbers, got {value!r}") from exc
    if np.isnan(lo) or np.isnan(hi) or lo > hi:
        raise ValueError(f"{name} must satisfy lower <= upper (no NaN), got {value!r}")
    return (lo, hi)


def _resolve_range(lower, upper, new, stem, new_name, default):
    if lower is _DEPRECATED and upper is _DEPRECATED:
        return _check_range(new_name, new)
    warnings.warn(
        f"The '{stem}lo' and '{stem}hi' parameters are deprecated and will be removed in a "
        f"future version. Use '{new_name}=(lower, upper)' instead.",
        AstropyDeprecationWarning,
        stacklevel=5,
    )
    base = new if new is not None else default
    lo = base[0] if lower is _DEPRECATED else lower
    hi = base[1] if upper is _DEPRECATED else upper
    return _check_range(new_name, (lo, hi))


def _renamed(old_value, new_value, old, new, new_default=None):
    if old_value is _DEPRECATED:
        return new_value
    if new_value is not new_default:
        raise TypeError(f"cannot give both '{old}' (deprecated) and '{new}'")
    warnings.warn(
        f"'{old}' was deprecated in version 3.0 and will be removed in version 4.0. Use "
        f"argument '{new}' instead.",
        AstropyDeprecationWarning,
        stacklevel=5,
    )
    return old_value


def _check_n_brightest(value):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
        raise TypeError(f"n_brightest must be an integer (> 0) or None, got {value!r}")
    try:
        as_float = float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"n_brightest must be a positive integer or None, got {value!r}") from exc
    if not as_float > 0:
        raise ValueError(f"n_brightest must be > 0, got {value!r}")
    if as_float != int(as_float):
        raise ValueError(f"n_brightest must be an integer, got {value!r}")
    return int(as_float)


def _check_peak_max(value):
    if value is None:
        return None, None
    number, unit = _split_unit("peak_max", value)
    if np.ndim(number) != 0 or isinstance(number, (str, bytes, bool, np.bool_)):
        raise TypeError(f"peak_max must be a scalar number or None, got {value!r}")
    number = float(number)
    if np.isnan(number):
        raise ValueError("peak_max must not be NaN")
    return number, unit


def _check_xycoords(xycoords):
    if xycoords is None:
        return None
    arr = np.asarray(xycoords, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"xycoords must be shaped as an Nx2 array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("xycoords must be finite (found NaN or inf)")
    return arr


def _meta():
    from crowdphot import __version__

    versions = {"crowdphot": __version__, "numpy": np.__version__}
    now = datetime.datetime.now(datetime.UTC)
    return {"date": now.strftime("%Y-%m-%d %H:%M:%S UTC"), "version": versions}


# --------------------------------------------------------------------------------------------
# shared finder machinery
# --------------------------------------------------------------------------------------------
class _StarFinderBase:
    """Common validation and detection pipeline; subclasses supply the measurements."""

    _columns: tuple = ()
    _unit_ratio_columns: tuple = ()

    def _init_common(
        self,
        threshold,
        fwhm,
        sigma_radius,
        exclude_border,
        n_brightest,
        peak_max,
        xycoords,
        min_separation,
    ):
        self._thr_value, self._thr_unit = _check_threshold(threshold)
        self.threshold = threshold
        self.fwhm = _check_positive_scalar("fwhm", fwhm)
        self.sigma_radius = _check_positive_scalar("sigma_radius", sigma_radius)
        if not isinstance(exclude_border, (bool, np.bool_)):
            raise TypeError(f"exclude_border must be True or False, got {exclude_border!r}")
        self.exclude_border = bool(exclude_border)
        self.n_brightest = _check_n_brightest(n_brightest)
        self._peak_max_value, self._peak_max_unit = _check_peak_max(peak_max)
        self.peak_max = peak_max
        self.xycoords = _check_xycoords(xycoords)
        if min_separation is None:
            self.min_separation = 2.5 * self.fwhm
        else:
            self.min_separation = _check_positive_scalar(
                "min_separation", min_separation, allow_zero=True
            )

    def _resolve_aliases(self, brightest, n_brightest, peakmax, peak_max, sharplo, sharphi,
                         sharpness_range, roundlo, roundhi, roundness_range,
                         range_defaults):  # fmt: skip
        """Apply photutils' deprecated aliases; returns ``(n_brightest, peak_max)``.

        Sets ``sharpness_range`` and ``roundness_range``; a lone deprecated lower or upper
        bound is completed from the given range or, when that is None, from
        ``range_defaults`` (the class defaults of the two ranges).
        """
        n_brightest = _renamed(brightest, n_brightest, "brightest", "n_brightest")
        peak_max = _renamed(peakmax, peak_max, "peakmax", "peak_max")
        self.sharpness_range = _resolve_range(
            sharplo, sharphi, sharpness_range, "sharp", "sharpness_range", range_defaults[0]
        )
        self.roundness_range = _resolve_range(
            roundlo, roundhi, roundness_range, "round", "roundness_range", range_defaults[1]
        )
        return n_brightest, peak_max

    @deprecated_positional("mask")
    def __call__(self, data, *, mask=None):
        """Find stars in ``data`` (see :meth:`find_stars`)."""
        return self.find_stars(data, mask=mask)

    def _repr_items(self):
        for key in self._repr_params:
            value = getattr(self, key)
            if isinstance(value, np.ndarray) and value.ndim > 0:
                value = f"<array; shape={value.shape}>"  # photutils' short form
            yield key, value

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self._repr_items())
        return f"{type(self).__name__}({params})"

    def __str__(self):
        cls = type(self)
        lines = [f"<{cls.__module__}.{cls.__qualname__}>"]
        lines += [f"{k}: {v!r}" for k, v in self._repr_items()]
        return "\n".join(lines)

    def _check_units(self, data):
        data_unit = getattr(data, "unit", None)
        given = {"data": data_unit, "threshold": self._thr_unit}
        if self.peak_max is not None:
            given["peak_max"] = self._peak_max_unit
        if len(set(given.values())) > 1:
            detail = ", ".join(f"{k}: {v}" for k, v in given.items())
            names = [k for k in given]
            raise ValueError(f"The inputs {names} must all have the same units: {detail}")
        return data_unit

    @deprecated_positional("mask")
    def find_stars(self, data, *, mask=None):
        """Find stars in an image.

        Parameters
        ----------
        data : array_like of shape (ny, nx)
            Background-subtracted image (a Quantity if ``threshold`` has units). NaN/inf pixels
            are replaced by 0 and masked, with a warning.
        mask : array_like of bool, shape (ny, nx), optional
            True marks pixels that may not be star peaks.

        Returns
        -------
        table : `~astropy.table.QTable` or None
            One row per star, columns as photutils 3.0; None (with a
            :class:`NoDetectionsWarning`) when no star is found or none passes the cuts.
        """
        unit = self._check_units(data)
        arr, bad = check_image("data", data, warn_nonfinite=False)
        mask = check_mask("mask", mask, arr.shape)
        if bad is not None:  # only the non-finite pixels the caller did not mask are news
            n_new = int(np.count_nonzero(bad if mask is None else (bad & ~mask)))
            if n_new:
                warnings.warn(f"data contains {n_new} non-finite (NaN/inf) pixel(s); they are "
                              "masked", CrowdphotWarning, stacklevel=3)
        thr = self._thr_value
        if thr.ndim == 2 and thr.shape != arr.shape:
            raise ValueError(
                f"threshold array must have the same shape as the input data {arr.shape}, "
                f"got {thr.shape}"
            )
        kernel = self.kernel
        if bad is not None:
            arr = np.where(bad, 0.0, arr)
        # seg_max (row-run maxima) stays a valid upper bound after the bad-pixel fill below
        conv, seg_max = convolve_zero_padded(arr, kernel.data, return_seg_max=True)
        peak_mask = mask
        if bad is not None:
            # every convolved pixel whose kernel window touches a bad pixel is unusable
            from scipy import ndimage  # only images with bad pixels need it: a lazy import

            near_bad = ndimage.binary_dilation(bad, structure=np.ones(kernel.shape, bool))
            conv[near_bad] = conv[~near_bad].min() if not near_bad.all() else 0.0
            peak_mask = near_bad if mask is None else (mask | near_bad)

        if self.xycoords is None:
            xy = self._detect(conv, peak_mask, seg_max)
            if xy is None:
                warnings.warn("No sources were found.", NoDetectionsWarning, stacklevel=2)
                return None
            x_pos, y_pos = xy
        else:
            x_pos, y_pos = self.xycoords[:, 0].copy(), self.xycoords[:, 1].copy()

        xi = np.round(x_pos).astype(np.int64)
        yi = np.round(y_pos).astype(np.int64)
        stamps = gather_stamps(arr, xi, yi, kernel.shape)
        cols, finite_keys, bound_keys = self._measure(stamps, conv, kernel, x_pos, y_pos, xi, yi)
        keep = np.ones(len(x_pos), dtype=bool)
        if bad is not None:
            touched = gather_stamps(bad.astype(float), xi, yi, kernel.shape)
            keep &= ~touched.any(axis=(1, 2))
        keep &= cols.pop("_valid")
        for key in finite_keys:
            keep &= np.isfinite(cols[key])
        if not keep.any():
            warnings.warn("No sources were found.", NoDetectionsWarning, stacklevel=2)
            return None
        for key, rng in bound_keys:
            if rng is not None:
                keep &= (cols[key] >= rng[0]) & (cols[key] <= rng[1])
        if self._peak_max_value is not None:
            keep &= cols["peak"] <= self._peak_max_value
        if not keep.any():
            warnings.warn(
                "Sources were found, but none pass the filtering criteria",
                NoDetectionsWarning,
                stacklevel=2,
            )
            return None
        idx = np.flatnonzero(keep)
        if self.n_brightest is not None:
            idx = idx[np.argsort(cols["flux"][idx])[::-1][: self.n_brightest]]
        return self._table(cols, idx, unit)

    def _detect(self, conv, peak_mask, seg_max):
        flat = conv.ravel()
        # a constant image has no peaks (photutils' rule); the head test settles almost all images
        if np.all(flat[:64] == flat[0]) and np.all(flat == flat[0]):
            return None
        border = (self.kernel.y_radius, self.kernel.x_radius) if self.exclude_border else (0, 0)
        x, y = find_peak_pixels(
            conv,
            self._threshold_for_peaks(),
            mask=peak_mask,
            border=border,
            footprint=self.kernel.mask,
            min_separation=self.min_separation,
            seg_max=seg_max,
        )
        if x.size == 0:
            return None
        return x.astype(float), y.astype(float)

    def _table(self, cols, idx, unit):
        table = make_deprecated_qtable(deprecation_map=DEPRECATED_COLUMNS, meta=_meta())
        for name in self._columns:
            if name == "id":
                table["id"] = np.arange(1, idx.size + 1, dtype=np.int64)
                continue
            values = cols[name][idx]
            if name == "orientation":
                values = values * u.deg
            elif unit is not None and name in ("peak", "flux"):
                values = values * unit
            elif unit is not None and name in self._unit_ratio_columns:
                # photutils divides two Quantities here and keeps the dimensionless unit
                values = values * u.dimensionless_unscaled
            table[name] = values
        return table


class IRAFStarFinder(_StarFinderBase):
    """Detect stars with IRAF's ``starfind`` algorithm (photutils 3.0 compatible).

    Local maxima of the image convolved with a circular zero-sum Gaussian kernel that exceed
    ``threshold`` are measured with image moments of the sky-subtracted, non-negative pixels
    inside the kernel footprint (sky = mean of the stamp pixels outside the footprint).

    Parameters
    ----------
    threshold : float or array_like of shape (ny, nx)
        Detection level applied to the convolved image (same units as the data).
    fwhm : float
        FWHM of the Gaussian kernel in pixels (> 0).
    sigma_radius : float, optional
        Kernel truncation radius in units of sigma.
    min_separation : float or None, optional
        Peaks must be the maximum within this radius (pixels); None means ``2.5 * fwhm`` and 0
        uses the kernel footprint.
    sharpness_range, roundness_range : (float, float) or None, optional
        Inclusive bounds on sharpness (``fwhm / kernel fwhm``) and roundness; None disables.
    exclude_border : bool, optional
        Reject peaks within the kernel half-size of the image edges.
    n_brightest : int or None, optional
        Keep only this many highest-flux stars (the table is then sorted by decreasing flux).
    peak_max : float or None, optional
        Reject stars whose (sky-subtracted) peak exceeds this value.
    xycoords : array_like of shape (n, 2) or None, optional
        Skip detection and measure at these (x, y) positions.
    minsep_fwhm, sharplo, sharphi, roundlo, roundhi, brightest, peakmax : optional
        Deprecated photutils aliases (``AstropyDeprecationWarning``).

    Examples
    --------
    >>> yy, xx = np.mgrid[:41, :41]
    >>> img = 100 * np.exp(-((xx - 20.3)**2 + (yy - 17.8)**2) / (2 * 1.3**2))
    >>> tbl = IRAFStarFinder(threshold=5.0, fwhm=3.0)(img)
    >>> len(tbl), round(float(tbl['x_centroid'][0])), round(float(tbl['y_centroid'][0]))
    (1, 20, 18)
    """

    _columns = (
        "id", "x_centroid", "y_centroid", "fwhm", "sharpness", "roundness", "orientation",
        "n_pixels", "peak", "flux", "mag",
    )  # fmt: skip
    _repr_params = (
        "threshold", "fwhm", "sigma_radius", "sharpness_range", "roundness_range",
        "exclude_border", "n_brightest", "peak_max", "xycoords", "min_separation",
    )  # fmt: skip

    @deprecated_positional("sigma_radius", "minsep_fwhm", "sharplo", "sharphi", "roundlo",
                           "roundhi", "exclude_border", "n_brightest", "peak_max", "xycoords",
                           "min_separation")
    def __init__(
        self,
        threshold,
        fwhm,
        *,
        sigma_radius=1.5,
        minsep_fwhm=_DEPRECATED,
        sharplo=_DEPRECATED,
        sharphi=_DEPRECATED,
        roundlo=_DEPRECATED,
        roundhi=_DEPRECATED,
        exclude_border=False,
        n_brightest=None,
        peak_max=None,
        xycoords=None,
        min_separation=None,
        sharpness_range=(0.5, 2.0),
        roundness_range=(0.0, 0.2),
        brightest=_DEPRECATED,
        peakmax=_DEPRECATED,
    ):
        n_brightest, peak_max = self._resolve_aliases(
            brightest, n_brightest, peakmax, peak_max, sharplo, sharphi, sharpness_range,
            roundlo, roundhi, roundness_range, ((0.5, 2.0), (0.0, 0.2)),
        )  # fmt: skip
        if minsep_fwhm is not _DEPRECATED:
            warnings.warn(
                "The 'minsep_fwhm' parameter is deprecated and will be removed in a future "
                "version. Use 'min_separation' instead.",
                AstropyDeprecationWarning,
                stacklevel=2,
            )
            minsep_fwhm = _check_positive_scalar("minsep_fwhm", minsep_fwhm, allow_zero=True)
            if min_separation is None:
                fwhm_value = _check_positive_scalar("fwhm", fwhm)
                min_separation = max(2, int(fwhm_value * minsep_fwhm + 0.5))
        self._init_common(
            threshold, fwhm, sigma_radius, exclude_border, n_brightest, peak_max, xycoords,
            min_separation,
        )  # fmt: skip
        self.kernel = make_star_kernel(self.fwhm, sigma_radius=self.sigma_radius)

    def _threshold_for_peaks(self):
        return self._thr_value

    def _measure(self, stamps, conv, kernel, x_pos, y_pos, xi, yi):
        cols = iraf_measure(stamps, kernel, x_pos, y_pos)
        cols["_valid"] = cols["n_pixels"] > 1
        finite = ("x_centroid", "y_centroid", "sharpness", "roundness", "orientation", "sky",
                  "peak", "flux")  # fmt: skip
        bounds = (("sharpness", self.sharpness_range), ("roundness", self.roundness_range))
        return cols, finite, bounds


class DAOStarFinder(_StarFinderBase):
    """Detect stars with the DAOFIND algorithm (Stetson 1987; photutils 3.0 compatible).

    Local maxima of the image convolved with an elliptical zero-sum Gaussian kernel above
    ``threshold`` (times the kernel's relative error when ``scale_threshold``) are centred by
    fitting the kernel's marginal profiles to the image's marginal x and y distributions.

    Parameters
    ----------
    threshold : float or array_like of shape (ny, nx)
        Detection level (same units as the data).
    fwhm : float
        FWHM of the kernel's major axis in pixels (> 0).
    ratio : float, optional
        Minor/major sigma ratio, in (0, 1].
    theta : float, optional
        Major-axis position angle in degrees, counter-clockwise from +x.
    sigma_radius : float, optional
        Kernel truncation radius in units of sigma.
    min_separation : float or None, optional
        Peak exclusion radius in pixels; None means ``2.5 * fwhm``, 0 uses the kernel footprint.
    scale_threshold : bool, optional
        Multiply ``threshold`` by the kernel relative error (DAOFIND convention).
    sharpness_range, roundness_range : (float, float) or None, optional
        Inclusive bounds (``roundness_range`` applies to both roundness1 and roundness2).
    exclude_border, n_brightest, peak_max, xycoords : optional
        As for :class:`IRAFStarFinder`; ``peak_max`` applies to the raw peak pixel.
    sharplo, sharphi, roundlo, roundhi, brightest, peakmax : optional
        Deprecated photutils aliases (``AstropyDeprecationWarning``).

    Examples
    --------
    >>> yy, xx = np.mgrid[:41, :41]
    >>> img = 100 * np.exp(-((xx - 20.3)**2 + (yy - 17.8)**2) / (2 * 1.3**2))
    >>> tbl = DAOStarFinder(threshold=5.0, fwhm=3.0)(img)
    >>> len(tbl), tbl.colnames[:3]
    (1, ['id', 'x_centroid', 'y_centroid'])
    """

    _columns = (
        "id", "x_centroid", "y_centroid", "sharpness", "roundness1", "roundness2", "n_pixels",
        "peak", "flux", "mag", "daofind_mag",
    )  # fmt: skip
    _unit_ratio_columns = ("sharpness", "roundness1", "daofind_mag")
    _repr_params = (
        "threshold", "fwhm", "ratio", "theta", "sigma_radius", "sharpness_range",
        "roundness_range", "exclude_border", "n_brightest", "peak_max", "xycoords",
        "min_separation", "scale_threshold",
    )  # fmt: skip

    @deprecated_positional("ratio", "theta", "sigma_radius", "sharplo", "sharphi", "roundlo",
                           "roundhi", "exclude_border", "n_brightest", "peak_max", "xycoords",
                           "min_separation", "scale_threshold")
    def __init__(
        self,
        threshold,
        fwhm,
        *,
        ratio=1.0,
        theta=0.0,
        sigma_radius=1.5,
        sharplo=_DEPRECATED,
        sharphi=_DEPRECATED,
        roundlo=_DEPRECATED,
        roundhi=_DEPRECATED,
        exclude_border=False,
        n_brightest=None,
        peak_max=None,
        xycoords=None,
        min_separation=None,
        scale_threshold=True,
        sharpness_range=(0.2, 1.0),
        roundness_range=(-1.0, 1.0),
        brightest=_DEPRECATED,
        peakmax=_DEPRECATED,
    ):
        n_brightest, peak_max = self._resolve_aliases(
            brightest, n_brightest, peakmax, peak_max, sharplo, sharphi, sharpness_range,
            roundlo, roundhi, roundness_range, ((0.2, 1.0), (-1.0, 1.0)),
        )  # fmt: skip
        self._init_common(
            threshold, fwhm, sigma_radius, exclude_border, n_brightest, peak_max, xycoords,
            min_separation,
        )  # fmt: skip
        try:
            self.ratio = _check_positive_scalar("ratio", ratio)
        except ValueError:
            self.ratio = 2.0  # reported below with photutils' wording
        if self.ratio > 1.0:
            raise ValueError(f"ratio must be > 0 and <= 1.0, got {ratio!r}")
        if np.ndim(theta) != 0 or not np.isfinite(float(theta)):
            raise ValueError(f"theta must be a finite scalar (degrees), got {theta!r}")
        self.theta = float(theta) % 360.0
        self.scale_threshold = bool(scale_threshold)
        self.kernel = make_star_kernel(
            self.fwhm, ratio=self.ratio, theta=self.theta, sigma_radius=self.sigma_radius
        )
        scale = self.kernel.rel_err if self.scale_threshold else 1.0
        self._thr_eff = self._thr_value * scale
        self.threshold_eff = (
            self._thr_eff if self._thr_unit is None else self._thr_eff * self._thr_unit
        )

    def _threshold_for_peaks(self):
        return self._thr_eff

    def _measure(self, stamps, conv, kernel, x_pos, y_pos, xi, yi):
        thr = self._thr_eff
        if thr.ndim == 2:
            ny, nx = thr.shape
            thr_src = thr[np.clip(yi, 0, ny - 1), np.clip(xi, 0, nx - 1)]
        else:
            thr_src = np.full(x_pos.size, float(thr))
        conv_stamps = gather_stamps(conv, xi, yi, kernel.shape)
        cols = dao_measure(stamps, conv_stamps, kernel, x_pos, y_pos, thr_src)
        cols["_valid"] = np.ones(x_pos.size, dtype=bool)
        finite = ["x_centroid", "y_centroid", "hx", "hy", "sharpness", "roundness1",
                  "roundness2", "peak"]  # fmt: skip
        if not np.all(thr_src == 0):
            finite.append("flux")
        bounds = (
            ("sharpness", self.sharpness_range),
            ("roundness1", self.roundness_range),
            ("roundness2", self.roundness_range),
        )
        return cols, finite, bounds
