"""Image (ePSF) PSF model: a PSF sampled on a possibly oversampled pixel grid.

`ImagePSF` keeps photutils 3's names, parameters and values: the image is interpolated with the
bicubic interpolating spline of ``scipy.interpolate.RectBivariateSpline(kx=3, ky=3, s=0)``, and
points outside the sampled region get ``fill_value``. The spline coefficients are computed once
(lazily) and evaluated by the batched kernels in :mod:`crowdphot.core.kernels.spline`.
"""

from __future__ import annotations

import copy as _copy

import numpy as np
from astropy.modeling import Fittable2DModel, Parameter

from crowdphot.core.batched import BatchedPSFMixin, bcast_center
from crowdphot.core.kernels.spline import SplineStack
from crowdphot.core.validate import as_pair

__all__ = ["ImagePSF"]


class _SplineCache:
    """Lazily built `SplineStack` shared by a model and its shallow copies."""

    __slots__ = ("images", "stack")

    def __init__(self, images):
        self.images = images
        self.stack = None

    def get(self):
        if self.stack is None:
            self.stack = SplineStack(self.images)
        return self.stack

    def __getstate__(self):
        return {"images": self.images, "stack": self.stack}

    def __setstate__(self, state):
        self.images = state["images"]
        self.stack = state["stack"]


def _check_fill_value(fill_value):
    if fill_value is None:
        return None
    try:
        return float(fill_value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"fill_value must be a number or None, got {fill_value!r}") from exc


class SplinePSFBase(BatchedPSFMixin):
    """Shared evaluation for spline-interpolated ePSF models (`ImagePSF`, `GriddedPSFModel`).

    Subclasses set ``oversampling`` (validated here) and provide ``_cache`` (a `_SplineCache`),
    ``origin`` (``[x, y]`` in ePSF samples), ``fill_value`` and ``_blend(x0, y0, grad)``
    returning ``(gidx, gw, gdx, gdy)`` arrays of shape ``(n, k)``.
    """

    @property
    def oversampling(self):
        """Integer oversampling factors ``[oy, ox]``."""
        return self._oversampling

    @oversampling.setter
    def oversampling(self, value):
        self._oversampling = as_pair("oversampling", value, lower_bound=0)

    def copy(self):
        """Copy of the model in which only the parameters are copied.

        The (possibly large) ePSF data and cached spline coefficients are shared with the
        original; use `deepcopy` for an independent copy.

        Returns
        -------
        model : same class as ``self``

        Examples
        --------
        >>> from crowdphot import ImagePSF
        >>> model = ImagePSF(np.ones((5, 5)) / 25)
        >>> twin = model.copy()
        >>> twin.x_0 = 3.0
        >>> float(model.x_0.value), twin.data is model.data
        (0.0, True)
        """
        new = object.__new__(type(self))
        for key, val in self.__dict__.items():
            new.__dict__[key] = _copy.copy(val) if key in self.param_names else val
        return new

    def deepcopy(self):
        """Independent deep copy of the model, including its data."""
        return _copy.deepcopy(self)

    # -- geometry ------------------------------------------------------------------------------
    def _sample_setup(self):
        oy, ox = (float(v) for v in self.oversampling)
        orx, ory = (float(v) for v in self.origin[:2])
        return ox, oy, orx, ory

    def _invalid(self, xi, yi):
        ny, nx = self._cache.images.shape[1:]
        return (xi < 0) | (xi > nx - 1) | (yi < 0) | (yi > ny - 1)

    # -- batched contract ------------------------------------------------------------------------
    def _unit_points(self, x, y, x0, y0, grad):
        x0 = np.asarray(x0, dtype=float)
        y0 = np.asarray(y0, dtype=float)
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        ox, oy, orx, ory = self._sample_setup()
        ndim = max(x.ndim, y.ndim, 1)
        xi = ox * (x - bcast_center(x0, ndim)) + orx
        yi = oy * (y - bcast_center(y0, ndim)) + ory
        xi, yi = np.broadcast_arrays(xi, yi)
        shape = xi.shape
        star = np.broadcast_to(np.arange(len(x0)).reshape((-1,) + (1,) * (ndim - 1)), shape)
        blend = self._blend(x0, y0, grad)
        if not grad:
            blend = blend[:2]
        res = self._cache.get().points(xi.ravel(), yi.ravel(), star.ravel(), *blend, ox=ox,
                                       oy=oy, fill=self._unit_fill, clamp=self.fill_value is None)
        if grad:
            return tuple(a.reshape(shape) for a in res)
        return res.reshape(shape)

    @property
    def _unit_fill(self):
        # the batched (unit-flux) path uses fill_value itself outside the ePSF support
        return 0.0 if self.fill_value is None else float(self.fill_value)

    def _unit(self, x, y, x0, y0):
        return self._unit_points(x, y, x0, y0, False)

    def _unit_grad(self, x, y, x0, y0):
        return self._unit_points(x, y, x0, y0, True)

    def _stamps_any(self, x0, y0, xlo, ylo, shape, grad):
        x0 = np.asarray(x0, dtype=float)
        y0 = np.asarray(y0, dtype=float)
        ox, oy, orx, ory = self._sample_setup()
        blend = self._blend(x0, y0, grad)
        if not grad:
            blend = blend[:2]
        return self._cache.get().stamps(x0, y0, xlo, ylo, shape, *blend, ox=ox, oy=oy, orx=orx,
                                        ory=ory, fill=self._unit_fill,
                                        clamp=self.fill_value is None)

    def _stamps(self, x0, y0, xlo, ylo, shape):
        return self._stamps_any(x0, y0, xlo, ylo, shape, False)

    def _stamps_grad(self, x0, y0, xlo, ylo, shape):
        return self._stamps_any(x0, y0, xlo, ylo, shape, True)

    # -- astropy evaluation ----------------------------------------------------------------------
    def _evaluate_at(self, x, y, flux, x_0, y_0):
        """``flux`` times the spline at one model position, ``fill_value`` outside."""
        ox, oy, orx, ory = self._sample_setup()
        xi = ox * (np.asarray(x, dtype=float) - x_0) + orx
        yi = oy * (np.asarray(y, dtype=float) - y_0) + ory
        xi, yi = np.broadcast_arrays(xi, yi)
        gidx, gw, _, _ = self._blend(np.atleast_1d(x_0)[:1], np.atleast_1d(y_0)[:1], False)
        vals = self._cache.get().points(xi.ravel(), yi.ravel(), np.zeros(xi.size, np.int64),
                                        gidx, gw, ox=ox, oy=oy, fill=0.0,
                                        clamp=self.fill_value is None)
        result = flux * vals.reshape(xi.shape)
        if self.fill_value is not None:
            result = np.where(self._invalid(xi, yi), self.fill_value, result)
        return result


class ImagePSF(SplinePSFBase, Fittable2DModel):
    """PSF model from a 2D (possibly oversampled) image, interpolated with a bicubic spline.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
        The PSF image; both axes need at least 4 samples and every value must be finite.
        For unit total flux the array should sum to ``oy * ox`` (the product of the
        oversampling factors), or less if it only covers the PSF core.
    flux : float, optional
        Total flux (scale factor applied to the normalised image).
    x_0, y_0 : float, optional
        Position, in output pixels, at which the image ``origin`` is placed.
    origin : (x, y) of 2 floats or None, optional
        Reference point of ``data`` in its own sample coordinates; ``None`` is the array
        centre ``((nx - 1) / 2, (ny - 1) / 2)``.
    oversampling : int or (oy, ox) ints, optional
        Oversampling factor(s) of ``data``; a pair is in ``(y, x)`` order.
    fill_value : float or None, optional
        Value returned outside the sampled region; ``None`` extends the edge values (the spline
        is evaluated at the clamped coordinate).
    **kwargs
        Passed to `astropy.modeling.Model` (``fixed``, ``bounds``, ``name``, ...).

    Notes
    -----
    The model values equal photutils 3's ``ImagePSF`` at the same points to rounding error. In
    the batched unit-flux interface (``psf_stamps``, ``_unit``) a non-zero ``fill_value`` is
    returned as is (it is later multiplied by the flux), while the astropy ``evaluate`` path
    returns the unscaled ``fill_value`` as photutils does.

    Examples
    --------
    >>> from crowdphot import ImagePSF
    >>> yy, xx = np.mgrid[:25, :25]
    >>> image = np.exp(-((xx - 12) ** 2 + (yy - 12) ** 2) / 8.0)
    >>> model = ImagePSF(image / image.sum(), flux=100.0, x_0=40.0, y_0=30.0)
    >>> round(float(model(40.0, 30.0)), 4)
    3.9789
    >>> model.psf_stamps([40.0], [30.0], 5).shape
    (1, 5, 5)
    """

    flux = Parameter(default=1, description="Total flux (image intensity scale factor).")
    x_0 = Parameter(default=0, description="x position of the image origin.")
    y_0 = Parameter(default=0, description="y position of the image origin.")

    def __init__(self, data, *, flux=flux.default, x_0=x_0.default, y_0=y_0.default,
                 origin=None, oversampling=1, fill_value=0.0, **kwargs):
        self.data = data
        self.origin = origin
        self.oversampling = oversampling
        self.fill_value = _check_fill_value(fill_value)
        super().__init__(flux, x_0, y_0, **kwargs)

    # -- attributes --------------------------------------------------------------------------
    @property
    def data(self):
        """The 2D PSF image, shape ``(ny, nx)`` in oversampled pixels."""
        return self._data

    @data.setter
    def data(self, data):
        _check_image_data(data)
        self._data = data
        # a new data array gets its own cache (shallow copies keep the old one)
        self._cache = _SplineCache(data[None])

    @property
    def shape(self):
        """Shape ``(ny, nx)`` of the oversampled PSF image."""
        return self._data.shape

    @property
    def origin(self):
        """Reference point ``(x, y)`` of the image, in image samples (placed at ``x_0, y_0``)."""
        if self._origin is None:
            return (np.array(self._data.shape[::-1], dtype=float) - 1.0) / 2.0
        return self._origin

    @origin.setter
    def origin(self, origin):
        if origin is None:
            self._origin = None
            return
        arr = np.asarray(origin)
        if arr.ndim != 1 or arr.size != 2:
            raise ValueError(f"origin must be 1D and have 2-elements: origin must be a pair "
                             f"(x, y), got {origin!r}")
        if arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)):
            raise ValueError(f"All elements of origin must be finite: origin must contain "
                             f"finite numbers, got {origin!r}")
        self._origin = arr

    def _blend(self, x0, y0, grad):
        n = len(np.atleast_1d(x0))
        zeros = np.zeros((n, 1))
        return np.zeros((n, 1), np.int64), np.ones((n, 1)), zeros, zeros

    # -- astropy model hooks ------------------------------------------------------------------
    @property
    def bounding_box(self):
        """``((ymin, ymax), (xmin, xmax))`` covered by the image around ``(x_0, y_0)``."""
        dy, dx = np.array(self._data.shape) / 2 / self._oversampling
        # shift of the array centre from the origin, in output pixels (same arithmetic order
        # as photutils so that the boxes compare equal)
        xshift = ((self._data.shape[1] - 1) / 2 - self.origin[0]) / self._oversampling[1]
        yshift = ((self._data.shape[0] - 1) / 2 - self.origin[1]) / self._oversampling[0]
        return ((self.y_0 - dy + yshift, self.y_0 + dy + yshift),
                (self.x_0 - dx + xshift, self.x_0 + dx + xshift))

    def evaluate(self, x, y, flux, x_0, y_0):
        """Model values ``flux * psf(x - x_0, y - y_0)``; ``fill_value`` outside the image.

        Parameters
        ----------
        x, y : array_like
            Evaluation points (broadcast together).
        flux, x_0, y_0 : float or array_like
            Parameter values (array parameters broadcast against ``x, y``).

        Returns
        -------
        values : ndarray, broadcast shape of the inputs
        """
        ox, oy, orx, ory = self._sample_setup()
        xi = ox * (np.asarray(x, dtype=float) - x_0) + orx
        yi = oy * (np.asarray(y, dtype=float) - y_0) + ory
        xi, yi = np.broadcast_arrays(xi, yi)
        one = np.zeros((1, 1), np.int64), np.ones((1, 1))
        vals = self._cache.get().points(xi.ravel(), yi.ravel(), np.zeros(xi.size, np.int64),
                                        *one, fill=0.0, clamp=self.fill_value is None)
        result = flux * vals.reshape(xi.shape)
        if self.fill_value is not None:
            result = np.where(self._invalid(xi, yi), self.fill_value, result)
        return result

    def __str__(self):
        return self._format_str(keywords=[
            ("PSF shape (oversampled pixels)", self._data.shape),
            ("Origin", self.origin.tolist()),
            ("Oversampling", self.oversampling.tolist()),
            ("Fill Value", self.fill_value),
        ])

    def __repr__(self):
        return self._format_repr(kwargs={"origin": self.origin.tolist(),
                                         "oversampling": self.oversampling.tolist(),
                                         "fill_value": self.fill_value})


def _check_image_data(data):
    if not isinstance(data, np.ndarray):
        raise TypeError(f"Input data must be a 2D numpy array, got {type(data).__name__}")
    if data.ndim != 2:
        raise ValueError(f"Input data must be a 2D numpy array, got {data.ndim} dimension(s)")
    if data.dtype.kind not in "iuf":
        raise TypeError(f"data must be numeric, got dtype {data.dtype}")
    if not np.all(np.isfinite(data)):
        raise ValueError("All elements of input data must be finite: data must contain only "
                         "finite values (found NaN or inf)")
    if min(data.shape) < 4:
        raise ValueError(f"The length of the x and y axes must both be at least 4: data must "
                         f"have at least 4 samples along each axis, got shape {data.shape}")
