"""Star cutouts for building ePSFs, as photutils.psf: `EPSFStar`, `EPSFStars`,
`LinkedEPSFStar` and `extract_stars`.

Names, arguments, attributes and messages follow photutils 3 so that code (and photutils' own
tests) written for it runs unchanged; the cutouts feed the batched numerics of
:class:`crowdphot.psf.epsf_builder.EPSFBuilder`.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.nddata import NDData, StdDevUncertainty
from astropy.table import Table
from astropy.utils import lazyproperty
from astropy.utils.exceptions import AstropyUserWarning

from crowdphot.aperture.core import BoundingBox
from crowdphot.core.kernels.epsf import interpolate_missing

__all__ = ["EPSFStar", "EPSFStars", "LinkedEPSFStar", "extract_stars"]

_ARRAY_ATTRS = ("cutout_center", "center", "flux", "_excluded_from_fit")


class EPSFStar:
    """A 2D cutout of one star, with its weights and position, used to build an ePSF.

    Parameters
    ----------
    data : array_like of shape (ny, nx)
        The cutout; non-finite pixels are masked (with a warning).
    weights : array_like of shape (ny, nx), optional
        Fit weights (``1 / sigma``); zero or negative weights mask a pixel, non-finite ones
        are set to zero (with a warning). Default: ones.
    cutout_center : (x, y) floats, optional
        Star position in the cutout; default the cutout centre.
    flux : float, optional
        Star flux; default the sum of the cutout (masked pixels interpolated).
    origin : (x, y) ints, optional
        Position of the cutout's first pixel in the large image.
    wcs_large : WCS, optional
        WCS of the large image (needed for linked stars).
    id_label : int or str, optional
        Identifier of the star.

    Examples
    --------
    >>> yy, xx = np.mgrid[:11, :11]
    >>> star = EPSFStar(np.exp(-((xx - 5.2) ** 2 + (yy - 4.9) ** 2) / 4), origin=(100, 50))
    >>> star.center.tolist(), round(star.flux, 3)
    ([105.0, 55.0], 12.564)
    """

    def __init__(self, data, *, weights=None, cutout_center=None, flux=None, origin=(0, 0),
                 wcs_large=None, id_label=None):
        self._data = np.asanyarray(data)
        if self._data.ndim != 2:
            raise ValueError(f"Input data must be 2-dimensional, got {self._data.ndim}D")
        if self._data.size == 0:
            raise ValueError("Input data cannot be empty")
        self.shape = self._data.shape
        if weights is None:
            self.weights = np.ones(self.shape, dtype=float)
        else:
            weights = np.asanyarray(weights)
            if weights.shape != self.shape:
                raise ValueError(f"Weights shape {weights.shape} must match data shape "
                                 f"{self.shape}")
            if not np.all(np.isfinite(weights)):
                warnings.warn("Non-finite weight values detected. These will be set to zero.",
                              AstropyUserWarning, stacklevel=2)
                weights = np.where(np.isfinite(weights), weights, 0.0)
            self.weights = np.array(weights, dtype=float)
        self.mask = self.weights <= 0.0
        bad = ~np.isfinite(self._data)
        if np.any(bad):
            self.weights[bad] = 0.0
            self.mask[bad] = True
            warnings.warn("Input data array contains invalid data that will be masked.",
                          AstropyUserWarning, stacklevel=2)
        origin = np.asarray(origin)
        if origin.shape != (2,):
            raise ValueError(f"Origin must have exactly 2 elements, got {origin.size}")
        if not np.all(np.isfinite(origin)):
            raise ValueError("Origin coordinates must be finite")
        self.origin = origin.astype(int)
        self.wcs_large = wcs_large
        self.id_label = id_label
        if cutout_center is None:
            cutout_center = ((self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0)
        self.cutout_center = cutout_center
        self._center_original = self.cutout_center + self.origin
        if flux is not None:
            self.flux = float(flux)
            self._has_all_zero_data = False
        else:
            if np.all(self.mask):
                raise ValueError("Star cutout is completely masked; no valid data available")
            self._has_all_zero_data = bool(np.all(self._data[~self.mask] == 0.0))
            if self._has_all_zero_data:
                warnings.warn("All unmasked data values in star cutout are zero",
                              AstropyUserWarning, stacklevel=2)
            self.flux = self.estimate_flux()
        self._excluded_from_fit = False
        self._fit_error_status = 0
        self._fit_info = None

    def __array__(self, dtype=None, copy=None):
        """The cutout array (e.g. for matplotlib)."""
        return self._data if dtype is None else self._data.astype(dtype)

    @property
    def data(self):
        """The 2D cutout image."""
        return self._data

    @property
    def cutout_center(self):
        """``(x, y)`` star position in the cutout (updated by the ePSF fits)."""
        return self._cutout_center

    @cutout_center.setter
    def cutout_center(self, value):
        value = np.asarray(value)
        if value.shape != (2,):
            raise ValueError(f"cutout_center must have exactly two elements in (x, y) form, "
                             f"got shape {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError("All cutout_center coordinates must be finite")
        x, y = value
        if not 0 <= x < self.shape[1]:
            warnings.warn(f"cutout_center x-coordinate {x} is outside the cutout bounds "
                          f"[0, {self.shape[1]})", AstropyUserWarning, stacklevel=2)
        if not 0 <= y < self.shape[0]:
            warnings.warn(f"cutout_center y-coordinate {y} is outside the cutout bounds "
                          f"[0, {self.shape[0]})", AstropyUserWarning, stacklevel=2)
        self._cutout_center = value

    @property
    def center(self):
        """``(x, y)`` star position in the large image."""
        return self.cutout_center + self.origin

    @lazyproperty
    def slices(self):
        """``(slice_y, slice_x)`` of the cutout in the large image."""
        return (slice(self.origin[1], self.origin[1] + self.shape[0]),
                slice(self.origin[0], self.origin[0] + self.shape[1]))

    @lazyproperty
    def bbox(self):
        """The cutout's `~crowdphot.aperture.BoundingBox` in the large image."""
        return BoundingBox(self.slices[1].start, self.slices[1].stop, self.slices[0].start,
                           self.slices[0].stop)

    def estimate_flux(self):
        """Sum of the cutout, masked pixels filled by cubic interpolation.

        Returns
        -------
        flux : float
            NaN when no pixel is valid.
        """
        if not np.any(self.mask):
            return float(np.sum(self.data))
        return float(np.sum(interpolate_missing(self.data, self.mask)))

    def register_epsf(self, epsf):
        """The ePSF scaled to the star's flux and placed at its centre, on the cutout grid.

        Parameters
        ----------
        epsf : ImagePSF

        Returns
        -------
        image : ndarray of shape ``self.shape``
        """
        yy, xx = np.indices(self.shape, dtype=float)
        return epsf.evaluate(xx, yy, flux=self.flux, x_0=self.cutout_center[0],
                             y_0=self.cutout_center[1])

    def compute_residual_image(self, epsf):
        """``data`` minus the registered ePSF (see `register_epsf`)."""
        return self.data - self.register_epsf(epsf)

    @property
    def _xyidx_centered(self):
        """Offsets ``(dx, dy)`` of the unmasked pixels from the star centre."""
        yidx, xidx = np.indices(self._data.shape)
        good = ~self.mask
        return (xidx[good].ravel() - self.cutout_center[0],
                yidx[good].ravel() - self.cutout_center[1])

    @lazyproperty
    def _normalization_flux(self):
        """The flux the residuals are normalised by: ``flux`` when first needed.

        Cached, and shared by the (shallow) copies the fits make, so that, as in photutils,
        every build iteration normalises a star by the same flux.
        """
        return self.flux

    @lazyproperty
    def _data_values_normalized(self):
        """Unmasked values divided by the normalisation flux."""
        return self.data[~self.mask].ravel() / self._normalization_flux


class EPSFStars:
    """A list of `EPSFStar` and/or `LinkedEPSFStar` objects.

    Attribute access is delegated to the stars: ``stars.flux`` is an array of every star's
    flux (a scalar for a single star).

    Parameters
    ----------
    stars_list : list of EPSFStar or LinkedEPSFStar, or one of them

    Examples
    --------
    >>> stars = EPSFStars([EPSFStar(np.ones((5, 5))), EPSFStar(2 * np.ones((5, 5)))])
    >>> len(stars), stars.flux.tolist()
    (2, [25.0, 50.0])
    """

    def __init__(self, stars_list):
        if isinstance(stars_list, (EPSFStar, LinkedEPSFStar)):
            self._data = [stars_list]
        elif isinstance(stars_list, list):
            self._data = stars_list
        else:
            raise TypeError("stars_list must be a list of EPSFStar and/or LinkedEPSFStar "
                            "objects")

    def __len__(self):
        return len(self._data)

    def __getitem__(self, index):
        return self.__class__(self._data[index])

    def __delitem__(self, index):
        del self._data[index]

    def __iter__(self):
        yield from self._data

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__ = state

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        result = [getattr(star, attr) for star in self._data]
        if attr in _ARRAY_ATTRS:
            result = np.array(result)
        if len(self._data) == 1:
            result = result[0]
        return result

    @property
    def cutout_center_flat(self):
        """``(n_all_stars, 2)`` cutout centres of every star, linked ones included."""
        return np.array([star.cutout_center for star in self.all_stars])

    @property
    def center_flat(self):
        """``(n_all_stars, 2)`` large-image centres of every star, linked ones included."""
        return np.array([star.center for star in self.all_stars])

    @lazyproperty
    def all_stars(self):
        """Flat list of every `EPSFStar`, the members of linked stars included."""
        stars = []
        for item in self._data:
            if isinstance(item, LinkedEPSFStar):
                stars.extend(item.all_stars)
            else:
                stars.append(item)
        return stars

    @property
    def all_good_stars(self):
        """`all_stars` without those excluded from fitting."""
        return [star for star in self.all_stars if not star._excluded_from_fit]

    @lazyproperty
    def n_stars(self):
        """Number of stars (a linked star counts once)."""
        return len(self._data)

    @lazyproperty
    def n_all_stars(self):
        """Number of `EPSFStar` objects, linked members counted individually."""
        return len(self.all_stars)

    @property
    def n_good_stars(self):
        """Number of `EPSFStar` objects not excluded from fitting."""
        return len(self.all_good_stars)


class LinkedEPSFStar:
    """One physical star seen in several images: a list of `EPSFStar` with WCSs.

    Parameters
    ----------
    stars_list : list of EPSFStar
        Each must have ``wcs_large``.

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> w = WCS(naxis=2)
    >>> linked = LinkedEPSFStar([EPSFStar(np.ones((5, 5)), wcs_large=w)] * 2)
    >>> linked.n_stars
    2
    """

    def __init__(self, stars_list):
        for star in stars_list:
            if not isinstance(star, EPSFStar):
                raise TypeError("stars_list must contain only EPSFStar objects")
            if star.wcs_large is None:
                raise ValueError("Each EPSFStar object must have a valid wcs_large attribute")
        self._data = list(stars_list)

    def __len__(self):
        return len(self._data)

    def __getitem__(self, index):
        return self._data[index]

    def __iter__(self):
        yield from self._data

    def __getattr__(self, attr):
        if attr.startswith("_"):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")
        result = [getattr(star, attr) for star in self._data]
        if attr in _ARRAY_ATTRS:
            result = np.array(result)
        if len(self._data) == 1:
            result = result[0]
        return result

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__ = state

    @property
    def all_stars(self):
        """The member `EPSFStar` objects."""
        return self._data

    @property
    def cutout_center_flat(self):
        """``(n, 2)`` cutout centres of the members."""
        return np.array([star.cutout_center for star in self._data])

    @property
    def center_flat(self):
        """``(n, 2)`` large-image centres of the members."""
        return np.array([star.center for star in self._data])

    @property
    def n_stars(self):
        """Number of members."""
        return len(self._data)

    @property
    def n_all_stars(self):
        """Number of members."""
        return len(self._data)

    @property
    def n_good_stars(self):
        """Number of members not excluded from fitting."""
        return len(self.all_good_stars)

    @property
    def all_good_stars(self):
        """Members not excluded from fitting."""
        return [star for star in self._data if not star._excluded_from_fit]

    @property
    def all_excluded(self):
        """Whether every member was excluded from fitting."""
        return all(star._excluded_from_fit for star in self._data)

    def constrain_centers(self):
        """Move the good members to their mean sky position (averaged on the sphere)."""
        if len(self._data) < 2:
            return
        if self.all_excluded:
            warnings.warn("Cannot constrain centers of linked stars because they have all "
                          "been excluded during the ePSF build process.", AstropyUserWarning,
                          stacklevel=2)
            return
        good = self.all_good_stars
        sky = np.array([star.wcs_large.pixel_to_world_values(*star.center) for star in good])
        lon, lat = _compute_mean_sky_coordinate(sky)
        for star in good:
            pix = star.wcs_large.world_to_pixel_values(lon, lat)
            star.cutout_center = np.asarray(pix) - star.origin


def _compute_mean_sky_coordinate(sky):
    """Mean ``(lon, lat)`` in degrees of ``(n, 2)`` sky positions, averaged as unit vectors."""
    lon, lat = np.deg2rad(sky[:, 0]), np.deg2rad(sky[:, 1])
    vec = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    mx, my, mz = vec.mean(axis=1)
    return np.rad2deg(np.arctan2(my, mx)), np.rad2deg(np.arctan2(mz, np.hypot(mx, my)))


# -- extraction --------------------------------------------------------------------------------
def _as_list(value, kind, message):
    if isinstance(value, kind):
        return [value]
    if isinstance(value, list):
        return value
    raise TypeError(message)


def _check_inputs(data, catalogs):
    for i, img in enumerate(data):
        if not isinstance(img, NDData):
            raise TypeError(f"All data elements must be NDData objects. Element {i} is "
                            f"{type(img)}")
        if np.ndim(img.data) != 2:
            raise ValueError(f"All NDData objects must contain 2D data. Object at index {i} "
                             f"has {np.ndim(img.data)}D data")
    for i, cat in enumerate(catalogs):
        if not isinstance(cat, Table):
            raise TypeError(f"All catalog elements must be Table objects. Element {i} is "
                            f"{type(cat)}")
        if len(cat) == 0:
            warnings.warn(f"Catalog at index {i} is empty. No stars will be extracted from "
                          f"this catalog.", AstropyUserWarning, stacklevel=2)
    if len(catalogs) == 1 and len(data) > 1:
        if "skycoord" not in catalogs[0].colnames:
            raise ValueError("When inputting a single catalog with multiple NDData objects, "
                             "the catalog must have a 'skycoord' column.")
        if any(img.wcs is None for img in data):
            raise ValueError("When inputting a single catalog with multiple NDData objects, "
                             "each NDData object must have a wcs attribute.")
        return
    for i, cat in enumerate(catalogs):
        has_xy = "x" in cat.colnames and "y" in cat.colnames
        has_sky = "skycoord" in cat.colnames
        if not has_xy and not has_sky:
            raise ValueError(f"Catalog at index {i} must have either 'x' and 'y' columns or "
                             f"a 'skycoord' column.")
        if has_sky and not has_xy:
            idx = i if len(data) == len(catalogs) else 0
            if idx < len(data) and data[idx].wcs is None:
                raise ValueError(f"When catalog at index {i} contains only skycoord "
                                 f"positions, the corresponding NDData object must have a "
                                 f"wcs attribute.")
            if any(img.wcs is None for img in data):
                raise ValueError("When inputting catalog(s) with only skycoord positions, "
                                 "each NDData object must have a wcs attribute.")
    if len(data) != len(catalogs):
        raise ValueError("When inputting multiple catalogs, the number of catalogs must "
                         "match the number of input images.")


def _odd_size(size):
    arr = np.atleast_1d(size)
    if arr.ndim != 1:
        raise ValueError("size must be 1D")
    if not np.all(np.isfinite(arr)):
        raise ValueError("size must be a finite value")
    if len(arr) not in (1, 2):
        raise ValueError("size must have 1 or 2 elements")
    if len(arr) == 1:
        arr = np.array((arr[0], arr[0]))
    if arr.dtype.kind not in "iu":
        raise ValueError("size must have integer values")
    if np.any(arr % 2 != 1):
        raise ValueError("size must have an odd value for both axes")
    if np.any(arr < 3):
        raise ValueError("size must be >= 3")
    return arr.astype(int)


def extract_stars(data, catalogs, *, size=(11, 11)):
    """Extract cutouts centred on the catalog stars (photutils' ``extract_stars``).

    Stars whose cutout does not fit entirely inside the image are skipped (one warning with
    the count).

    Parameters
    ----------
    data : NDData or list of NDData
        Image(s); ``uncertainty`` gives the weights (``1 / sigma``, or the array itself for a
        ``weights`` uncertainty), ``mask`` zeroes them, ``wcs`` converts sky positions.
    catalogs : Table or list of Table
        ``x``, ``y`` (pixels) or ``skycoord`` columns, optional ``id`` and ``flux``. One
        catalog per image, or one ``skycoord`` catalog for several images (linked stars).
    size : int or (ny, nx) odd ints >= 3, optional
        Cutout shape.

    Returns
    -------
    stars : EPSFStars

    Examples
    --------
    >>> from astropy.nddata import NDData
    >>> from astropy.table import Table
    >>> image = np.zeros((50, 50)); image[20, 30] = 1.0
    >>> stars = extract_stars(NDData(image), Table({'x': [30.0], 'y': [20.0]}), size=7)
    >>> len(stars), stars[0].origin.tolist()
    (1, [27, 17])
    """
    data = _as_list(data, NDData, "data must be a single NDData object or list of NDData "
                                  "objects")
    catalogs = _as_list(catalogs, Table, "catalogs must be a single Table object or list of "
                                         "Table objects")
    _check_inputs(data, catalogs)
    size = _odd_size(size)
    if len(catalogs) == 1:
        use_xy = len(data) == 1
        per_image = [_extract(img, catalogs[0], size, use_xy) for img in data]
        fails = sum(r[1] for r in per_image)
        stars = []
        for group in zip(*[r[0] for r in per_image], strict=True):
            good = [s for s in group if s is not None]
            if len(good) == 1:
                stars.append(good[0])
            elif good:
                stars.append(LinkedEPSFStar(good))
    else:
        stars, fails = [], 0
        for img, cat in zip(data, catalogs, strict=True):
            found, nfail = _extract(img, cat, size, True)
            stars.extend(s for s in found if s is not None)
            fails += nfail
    if fails:
        warnings.warn(f"{fails} star(s) were not extracted because their cutout region "
                      f"extended beyond the input image.", AstropyUserWarning, stacklevel=2)
    return EPSFStars(stars)


def _prepare_uncertainty_info(data):
    """How cutout weights are made for ``data``: ``{'type': 'none' | 'weights' |
    'uncertainty', ...}`` with the weights ``'array'`` or the ``'uncertainty'`` object."""
    unc = data.uncertainty
    if unc is None:
        return {"type": "none"}
    if unc.uncertainty_type == "weights":
        return {"type": "weights", "array": unc.array}
    return {"type": "uncertainty", "uncertainty": unc}


def _create_weights_cutout(uncertainty_info, data_mask, slices):
    """Weights of one cutout (``1 / sigma``, zero where masked or non-finite).

    Returns
    -------
    weights : ndarray
    has_nonfinite : bool
        Some weights were non-finite (set to zero).
    """
    shape = (slices[0].stop - slices[0].start, slices[1].stop - slices[1].start)
    kind = uncertainty_info["type"]
    if kind == "none":
        weights = np.ones(shape, dtype=float)
    elif kind == "weights":
        weights = np.array(uncertainty_info["array"][slices], dtype=float)
    else:
        if "_std" not in uncertainty_info:  # converted once per image, not per cutout
            unc = uncertainty_info["uncertainty"]
            std = (unc.represent_as(StdDevUncertainty).array if hasattr(unc, "represent_as")
                   else unc.array)
            uncertainty_info["_std"] = np.asarray(std, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = 1.0 / uncertainty_info["_std"][slices]
    has_nonfinite = not np.all(np.isfinite(weights))
    if has_nonfinite:
        weights = np.where(np.isfinite(weights), weights, 0.0)
    if data_mask is not None:
        weights[data_mask[slices]] = 0.0
    return weights, has_nonfinite


def _extract(nddata, catalog, size, use_xy):
    """Cutouts of one image; ``(list with None for failures, n_overlap_failures)``."""
    cols = catalog.colnames
    if "x" not in cols or "y" not in cols or not use_xy:
        xc, yc = nddata.wcs.world_to_pixel(catalog["skycoord"])
    else:
        xc, yc = np.asarray(catalog["x"], dtype=float), np.asarray(catalog["y"], dtype=float)
    xc, yc = np.atleast_1d(xc).astype(float), np.atleast_1d(yc).astype(float)
    ids = catalog["id"] if "id" in cols else np.arange(len(catalog), dtype=int) + 1
    fluxes = catalog["flux"] if "flux" in cols else None
    image = np.asanyarray(nddata.data)
    info = _prepare_uncertainty_info(nddata)
    mask = None if nddata.mask is None else np.asarray(nddata.mask, dtype=bool)
    ny, nx = size
    # astropy overlap_slices placement: lower pixel ceil(pos - size / 2)
    xlo = np.ceil(xc - nx / 2).astype(np.int64)
    ylo = np.ceil(yc - ny / 2).astype(np.int64)
    inside = ((xlo >= 0) & (ylo >= 0) & (xlo + nx <= image.shape[1])
              & (ylo + ny <= image.shape[0]))
    stars, n_nonfinite, failures, zeros = [], 0, [], []
    for i in range(len(xc)):
        if not inside[i]:
            stars.append(None)
            continue
        slc = (slice(ylo[i], ylo[i] + ny), slice(xlo[i], xlo[i] + nx))
        wcut, nonfinite = _create_weights_cutout(info, mask, slc)
        n_nonfinite += nonfinite
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="All unmasked data values in star",
                                        category=AstropyUserWarning)
                star = EPSFStar(image[slc], weights=wcut,
                                cutout_center=(xc[i] - xlo[i], yc[i] - ylo[i]),
                                origin=(xlo[i], ylo[i]), wcs_large=nddata.wcs,
                                id_label=ids[i], flux=None if fluxes is None else fluxes[i])
        except ValueError as exc:
            failures.append((xc[i], yc[i], exc))
            stars.append(None)
            continue
        stars.append(star)
        if star._has_all_zero_data:
            zeros.append((xc[i], yc[i]))
    if n_nonfinite:
        warnings.warn(f"{n_nonfinite} star cutout(s) had non-finite weight values which were "
                      f"set to zero. Please check the input uncertainty values in the NDData "
                      f"object.", AstropyUserWarning, stacklevel=2)
    for x, y, exc in failures:
        warnings.warn(f"Failed to create EPSFStar for object at ({x:.2f}, {y:.2f}): {exc}",
                      AstropyUserWarning, stacklevel=2)
    for x, y in zeros:
        warnings.warn(f"Star at ({x:.1f}, {y:.1f}) has all unmasked data values equal to "
                      f"zero", AstropyUserWarning, stacklevel=2)
    return stars, int(np.count_nonzero(~inside))
