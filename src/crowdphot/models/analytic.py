"""Analytic PSF models with photutils 3 names, parameters, defaults and values.

Each model is an astropy ``Fittable2DModel`` (parameters can be fixed, bounded or tied and the
model works with astropy fitters and units) and a :class:`~crowdphot.core.batched.BatchedPSFMixin`
(unit-flux values and analytic centre gradients for many stars at once, used by the renderer
and the fitting engine). The numerical kernels live in :mod:`crowdphot.core.profiles`.

Shape parameters (``fwhm``, ``sigma``, ``alpha``, ``beta``, ``radius``, ``theta``) are fixed by
default, as in photutils, and the batched interface reads their current values.
"""

from __future__ import annotations

import numbers

import astropy.units as u
import numpy as np
from astropy.modeling import Fittable2DModel, Parameter
from astropy.modeling.utils import ellipse_extent
from astropy.units import UnitsError

from crowdphot.core.batched import BatchedPSFMixin, bcast_center
from crowdphot.core.profiles import (
    AIRY_RZ,
    GAUSSIAN_FWHM_TO_SIGMA,
    airy,
    airy_grad,
    gauss_1d,
    gauss_1d_grad,
    gaussian_partials,
    moffat,
    moffat_grad,
    pixel_gauss_1d,
    pixel_gauss_1d_grad,
    pixel_gauss_stamps,
    pixel_gauss_unit,
    pixel_gauss_unit_grad,
)

__all__ = [
    "AiryDiskPSF",
    "CircularGaussianPRF",
    "CircularGaussianPSF",
    "CircularGaussianSigmaPRF",
    "GaussianPRF",
    "GaussianPSF",
    "MoffatPSF",
]

# smallest positive float32, the lower bound photutils gives its width parameters
FLOAT_EPSILON = float(np.finfo(np.float32).tiny)
# FWHM of the Airy disk in units of radius / R_z (where 2 J1(z) / z = 1 / sqrt(2))
_AIRY_HALF_WIDTH_Z = 1.616339948310703


def _mag(value):
    """Magnitude of a Quantity in its own unit (photutils normalises with these)."""
    return value.value if isinstance(value, u.Quantity) else value


def _like_input(value, x):
    """With Quantity inputs photutils returns a Quantity (dimensionless for a unitless flux)."""
    if isinstance(x, u.Quantity) and not isinstance(value, u.Quantity):
        return value * u.dimensionless_unscaled
    return value


def _plain(value):
    """A dimensionless Quantity (e.g. a ratio of lengths) as a plain array."""
    if isinstance(value, u.Quantity):
        return value.to_value(u.dimensionless_unscaled)
    return value


def _theta_rad(theta):
    """Rotation angle in radians: floats are degrees, Quantities carry their own unit."""
    if isinstance(theta, u.Quantity):
        return theta.to_value(u.rad)
    return np.deg2rad(theta)


def _half_pixel(offset):
    """Half a pixel in the unit of ``offset`` (photutils integrates over +-0.5 input units)."""
    return 0.5 * offset.unit if isinstance(offset, u.Quantity) else 0.5


def _offsets(x, y, x0, y0):
    """``x - x0`` and ``y - y0`` for batched inputs, centres of shape (n,)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    return x - bcast_center(x0, x.ndim), y - bcast_center(y0, y.ndim)


def _gaussian_partials(x, y, flux, x_0, y_0, x_fwhm, y_fwhm, theta):
    """photutils-ordered partials of the sampled elliptical Gaussian, ``theta`` in degrees."""
    parts = gaussian_partials(x - x_0, y - y_0, x_fwhm * GAUSSIAN_FWHM_TO_SIGMA,
                              y_fwhm * GAUSSIAN_FWHM_TO_SIGMA, _theta_rad(theta))
    g = [flux * d for d in parts[1:]]
    return [parts[0], g[0], g[1], g[2] * GAUSSIAN_FWHM_TO_SIGMA, g[3] * GAUSSIAN_FWHM_TO_SIGMA,
            g[4] * (np.pi / 180.0)]


def _shape_param(description, *, default=1, lower=FLOAT_EPSILON):
    """A positive shape parameter, fixed by default (as photutils declares them)."""
    return Parameter(default=default, bounds=(lower, None), fixed=True,
                     description=description)


class _AnalyticPSF(BatchedPSFMixin, Fittable2DModel):
    """Shared plumbing: argument checks, unit handling and the checked batched methods.

    Declares ``flux``, ``x_0`` and ``y_0`` (first in every model's ``param_names``) and the
    square bounding box of half width ``bbox_factor`` times the attribute ``_bbox_width``.
    A concrete model that declares parameters of its own must define ``__init__`` (otherwise
    astropy generates one with a different signature).
    """

    flux = Parameter(default=1, description="Total integrated flux")
    x_0 = Parameter(default=0, description="x position of the centre")
    y_0 = Parameter(default=0, description="y position of the centre")

    #: shape parameter name -> exclusive lower bound checked on construction and before
    #: batched evaluation (photutils silently returns NaN or negative values instead)
    _shape_bounds: dict = {}
    #: parameters that carry the input (length) unit
    _length_params: tuple = ()
    #: rotated / elliptical models refuse x and y inputs in different units
    _require_matching_units = False
    #: width attribute (``sigma`` or ``fwhm``) that ``bbox_factor`` multiplies
    _bbox_width = "sigma"

    def __init__(self, *, bbox_factor, **params):
        if isinstance(bbox_factor, bool) or not isinstance(bbox_factor, numbers.Real):
            raise TypeError(f"bbox_factor must be a real number, got {bbox_factor!r}")
        if not np.isfinite(bbox_factor) or bbox_factor <= 0:
            raise ValueError(f"bbox_factor must be finite and > 0, got {bbox_factor!r}")
        super().__init__(**params)
        self.bbox_factor = bbox_factor
        self._check_shape_params()

    def _check_shape_params(self):
        for name, lower in self._shape_bounds.items():
            value = np.asarray(_mag(getattr(self, name).value), dtype=float)
            if not np.all(np.isfinite(value)) or np.any(value <= lower):
                raise ValueError(f"{name} must be finite and > {lower:g}, got {value}")
        if "theta" in self.param_names:
            if not np.all(np.isfinite(_mag(self.theta.value))):
                raise ValueError(f"theta must be finite, got {self.theta.value}")

    def _shape(self, name):
        return float(_mag(getattr(self, name).value))

    @property
    def bounding_box(self):
        """``((y_0 -+ d), (x_0 -+ d))`` with ``d = bbox_factor`` times the model width."""
        d = self.bbox_factor * getattr(self, self._bbox_width)
        return ((self.y_0 - d, self.y_0 + d), (self.x_0 - d, self.x_0 + d))

    def psf_stamps(self, x0, y0, shape, *, xlo=None, ylo=None, gradient=False):
        self._check_shape_params()
        return super().psf_stamps(x0, y0, shape, xlo=xlo, ylo=ylo, gradient=gradient)

    psf_stamps.__doc__ = BatchedPSFMixin.psf_stamps.__doc__

    def psf_values(self, x, y, x0, y0):
        self._check_shape_params()
        return super().psf_values(x, y, x0, y0)

    psf_values.__doc__ = BatchedPSFMixin.psf_values.__doc__

    @property
    def input_units(self):
        """Units of ``x`` and ``y`` (those of ``x_0`` and ``y_0``), or None."""
        x_unit = self.x_0.input_unit
        y_unit = self.y_0.input_unit
        if x_unit is None and y_unit is None:
            return None
        return {self.inputs[0]: x_unit, self.inputs[1]: y_unit}

    def _parameter_units_for_data_units(self, inputs_unit, outputs_unit):
        x_unit = inputs_unit[self.inputs[0]]
        if self._require_matching_units and x_unit != inputs_unit[self.inputs[1]]:
            raise UnitsError("Units of 'x' and 'y' inputs should match")
        units = {name: x_unit for name in ("x_0", "y_0", *self._length_params)}
        if "theta" in self.param_names:
            units["theta"] = u.deg
        units["flux"] = outputs_unit[self.outputs[0]]
        return units


# --------------------------------------------------------------------------------------------
# Shared Gaussian declarations
# --------------------------------------------------------------------------------------------
class _CircularGaussianBase(_AnalyticPSF):
    """Circular Gaussian PSF or PRF; subclasses say how sigma is parameterised."""

    def _sigma_value(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def amplitude(self):
        """Peak value of the underlying Gaussian, ``flux / (2 pi sigma**2)``."""
        return self.flux / (2.0 * np.pi * _mag(self.sigma) ** 2)


class _FWHMGaussianBase(_CircularGaussianBase):
    """Parameters and constructor of the circular Gaussians set by their ``fwhm``."""

    fwhm = _shape_param("FWHM")

    _shape_bounds = {"fwhm": 0.0}
    _length_params = ("fwhm",)

    def __init__(self, *, flux=1, x_0=0, y_0=0, fwhm=1, bbox_factor=5.5, **kwargs):
        super().__init__(flux=flux, x_0=x_0, y_0=y_0, fwhm=fwhm, bbox_factor=bbox_factor,
                         **kwargs)

    @property
    def sigma(self):
        """Gaussian standard deviation."""
        return self.fwhm * GAUSSIAN_FWHM_TO_SIGMA

    def _sigma_value(self):
        return self._shape("fwhm") * GAUSSIAN_FWHM_TO_SIGMA


class _EllipticalGaussianBase(_AnalyticPSF):
    """Parameters, constructor and shared properties of the rotated elliptical Gaussians."""

    x_fwhm = _shape_param("FWHM along x")
    y_fwhm = _shape_param("FWHM along y")
    theta = Parameter(default=0.0, fixed=True, description="CCW rotation (deg or Quantity)")

    _shape_bounds = {"x_fwhm": 0.0, "y_fwhm": 0.0}
    _length_params = ("x_fwhm", "y_fwhm")
    _require_matching_units = True

    def __init__(self, *, flux=1, x_0=0, y_0=0, x_fwhm=1, y_fwhm=1, theta=0.0,
                 bbox_factor=5.5, **kwargs):
        super().__init__(flux=flux, x_0=x_0, y_0=y_0, x_fwhm=x_fwhm, y_fwhm=y_fwhm,
                         theta=theta, bbox_factor=bbox_factor, **kwargs)

    @property
    def x_sigma(self):
        """Standard deviation along the unrotated x axis."""
        return self.x_fwhm * GAUSSIAN_FWHM_TO_SIGMA

    @property
    def y_sigma(self):
        """Standard deviation along the unrotated y axis."""
        return self.y_fwhm * GAUSSIAN_FWHM_TO_SIGMA

    @property
    def amplitude(self):
        """Peak value, ``flux / (2 pi x_sigma y_sigma)``."""
        return self.flux / (2.0 * np.pi * _mag(self.x_sigma) * _mag(self.y_sigma))

    @property
    def bounding_box(self):
        """Box enclosing the ``bbox_factor``-sigma ellipse (see Notes)."""
        dx, dy = ellipse_extent(self.bbox_factor * self.x_sigma,
                                self.bbox_factor * self.y_sigma, self.theta)
        return ((self.y_0 - dy, self.y_0 + dy), (self.x_0 - dx, self.x_0 + dx))

    def _frame(self):
        t = float(_theta_rad(self.theta.quantity if self.theta.unit else self.theta.value))
        sx = self._shape("x_fwhm") * GAUSSIAN_FWHM_TO_SIGMA
        sy = self._shape("y_fwhm") * GAUSSIAN_FWHM_TO_SIGMA
        return np.cos(t), np.sin(t), sx, sy

    @staticmethod
    def _rotated(x, y, x_0, y_0, x_fwhm, y_fwhm, theta):
        """Offsets in the rotated frame and the two sigmas (astropy-level, units kept)."""
        t = _theta_rad(theta)
        c, s = np.cos(t), np.sin(t)
        dx, dy = x - x_0, y - y_0
        return (dx * c + dy * s, dy * c - dx * s, x_fwhm * GAUSSIAN_FWHM_TO_SIGMA,
                y_fwhm * GAUSSIAN_FWHM_TO_SIGMA)


# --------------------------------------------------------------------------------------------
# Gaussians sampled at the pixel centres
# --------------------------------------------------------------------------------------------
class CircularGaussianPSF(_FWHMGaussianBase):
    r"""Circular 2D Gaussian sampled at the input coordinates.

    .. math:: f(x, y) = \frac{F}{2\pi\sigma^2}
              \exp\left(-\frac{(x - x_0)^2 + (y - y_0)^2}{2\sigma^2}\right),
              \qquad \sigma = \mathrm{FWHM} / (2\sqrt{2\ln 2})

    normalised so that the integral over the plane is ``flux``.

    Parameters
    ----------
    flux : float, optional
        Total flux.
    x_0, y_0 : float, optional
        Centre in pixels.
    fwhm : float, optional
        Full width at half maximum (> 0). Fixed by default.
    bbox_factor : float, optional
        Bounding-box half width in units of sigma.
    **kwargs
        Passed to `astropy.modeling.Model` (e.g. ``name``, ``fixed``, ``bounds``).

    Examples
    --------
    >>> from crowdphot import CircularGaussianPSF
    >>> m = CircularGaussianPSF(flux=10.0, x_0=2.0, y_0=3.0, fwhm=2.5)
    >>> round(float(m(2.0, 3.0)), 6)
    1.412068
    """

    def evaluate(self, x, y, flux, x_0, y_0, fwhm):
        """Model values; see the class docstring."""
        sigma = fwhm * GAUSSIAN_FWHM_TO_SIGMA
        tx = _plain((x - x_0) / sigma)
        ty = _plain((y - y_0) / sigma)
        s = _mag(sigma)
        return _like_input(flux * (np.exp(-0.5 * (tx * tx + ty * ty)) / (2.0 * np.pi * s * s)), x)

    @staticmethod
    def fit_deriv(x, y, flux, x_0, y_0, fwhm):
        """Analytic partials ``[d/dflux, d/dx_0, d/dy_0, d/dfwhm]``.

        ``d/dfwhm`` is the full derivative (through both axes); photutils 3.0 returns only the
        x-axis half of it.
        """
        parts = _gaussian_partials(x, y, flux, x_0, y_0, fwhm, fwhm, 0.0)
        return [parts[0], parts[1], parts[2], parts[3] + parts[4]]

    def _unit(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        s = self._sigma_value()
        return gauss_1d(dx, s) * gauss_1d(dy, s)

    def _unit_grad(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        s = self._sigma_value()
        gx, dgx = gauss_1d_grad(dx, s)
        gy, dgy = gauss_1d_grad(dy, s)
        return gx * gy, -dgx * gy, -gx * dgy


class GaussianPSF(_EllipticalGaussianBase):
    r"""Elliptical, rotated 2D Gaussian sampled at the input coordinates.

    With :math:`x_r = \Delta x\cos\theta + \Delta y\sin\theta` and
    :math:`y_r = -\Delta x\sin\theta + \Delta y\cos\theta`,

    .. math:: f = \frac{F}{2\pi\sigma_x\sigma_y}
              \exp\left(-\frac{x_r^2}{2\sigma_x^2} - \frac{y_r^2}{2\sigma_y^2}\right)

    Parameters
    ----------
    flux : float, optional
        Total flux.
    x_0, y_0 : float, optional
        Centre in pixels.
    x_fwhm, y_fwhm : float, optional
        FWHM along the (unrotated) x and y axes (> 0). Fixed by default.
    theta : float or Quantity, optional
        Counter-clockwise rotation, degrees if a float. Fixed by default.
    bbox_factor : float, optional
        Bounding-box half widths in units of the sigmas.
    **kwargs
        Passed to `astropy.modeling.Model`.

    Notes
    -----
    For parity with photutils 3.0 the bounding box passes ``theta`` to astropy's
    ``ellipse_extent``, which reads a plain float as radians.

    Examples
    --------
    >>> from crowdphot import GaussianPSF
    >>> m = GaussianPSF(x_fwhm=3.0, y_fwhm=2.0, theta=30.0)
    >>> stamps = m.psf_stamps([5.0], [5.0], 15)
    >>> round(float(stamps.sum()), 6)
    1.0
    """

    def evaluate(self, x, y, flux, x_0, y_0, x_fwhm, y_fwhm, theta):
        """Model values; see the class docstring."""
        xr, yr, sx, sy = self._rotated(x, y, x_0, y_0, x_fwhm, y_fwhm, theta)
        tx = _plain(xr / sx)
        ty = _plain(yr / sy)
        norm = 2.0 * np.pi * _mag(sx) * _mag(sy)
        return _like_input(flux * (np.exp(-0.5 * (tx * tx + ty * ty)) / norm), x)

    @staticmethod
    def fit_deriv(x, y, flux, x_0, y_0, x_fwhm, y_fwhm, theta):
        """Analytic partials with respect to all six parameters (``theta`` per degree)."""
        return _gaussian_partials(x, y, flux, x_0, y_0, x_fwhm, y_fwhm, theta)

    def _unit(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        c, s, sx, sy = self._frame()
        if s == 0.0:  # axis aligned: separable, cheap on (n, ny, 1) x (n, 1, nx) grids
            return gauss_1d(dx, sx) * gauss_1d(dy, sy)
        tx = (dx * c + dy * s) / sx
        ty = (dy * c - dx * s) / sy
        return np.exp(-0.5 * (tx * tx + ty * ty)) * (1.0 / (2.0 * np.pi * sx * sy))

    def _unit_grad(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        c, s, sx, sy = self._frame()
        if s == 0.0:
            gx, dgx = gauss_1d_grad(dx, sx)
            gy, dgy = gauss_1d_grad(dy, sy)
            return gx * gy, -dgx * gy, -gx * dgy
        tx = (dx * c + dy * s) / sx
        ty = (dy * c - dx * s) / sy
        v = np.exp(-0.5 * (tx * tx + ty * ty)) * (1.0 / (2.0 * np.pi * sx * sy))
        # d v / d xr = -v tx / sx; chain rule through the rotation: d xr / d x0 = -c,
        # d yr / d x0 = s, d xr / d y0 = -s, d yr / d y0 = -c
        a, b = v * (tx / sx), v * (ty / sy)
        return v, c * a - s * b, s * a + c * b


# --------------------------------------------------------------------------------------------
# Gaussians integrated over pixels (PRFs)
# --------------------------------------------------------------------------------------------
class _PixelIntegratedCircular:
    """Batched values and stamps of a circular Gaussian integrated over pixels.

    Mixed in before a :class:`_CircularGaussianBase` subclass, which supplies
    ``_sigma_value``.
    """

    @staticmethod
    def _evaluate_sigma(x, y, flux, x_0, y_0, sigma):
        dx, dy = x - x_0, y - y_0
        h = _plain(_half_pixel(dx) / sigma)
        px = pixel_gauss_1d(_plain(dx / sigma), h)
        return _like_input(flux * (px * pixel_gauss_1d(_plain(dy / sigma), h)), x)

    def _unit(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        s = self._sigma_value()
        return pixel_gauss_unit(dx, dy, s, s)

    def _unit_grad(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        s = self._sigma_value()
        return pixel_gauss_unit_grad(dx, dy, s, s)

    def _stamps(self, x0, y0, xlo, ylo, shape):
        s = self._sigma_value()
        return pixel_gauss_stamps(x0, y0, xlo, ylo, shape, s, s, False)

    def _stamps_grad(self, x0, y0, xlo, ylo, shape):
        s = self._sigma_value()
        return pixel_gauss_stamps(x0, y0, xlo, ylo, shape, s, s, True)


class CircularGaussianPRF(_PixelIntegratedCircular, _FWHMGaussianBase):
    r"""Circular 2D Gaussian integrated over unit pixels centred on the input coordinates.

    .. math:: f = F\,P_x P_y,\qquad
              P_x = \tfrac12\left[\mathrm{erf}\frac{\Delta x + 1/2}{\sqrt2\sigma}
              - \mathrm{erf}\frac{\Delta x - 1/2}{\sqrt2\sigma}\right]

    and likewise along y, with ``sigma = fwhm / (2 sqrt(2 ln 2))``. Summed over a large grid
    of pixels it gives ``flux`` exactly.

    Parameters
    ----------
    flux : float, optional
        Total flux.
    x_0, y_0 : float, optional
        Centre in pixels.
    fwhm : float, optional
        FWHM of the Gaussian (> 0). Fixed by default.
    bbox_factor : float, optional
        Bounding-box half width in units of sigma.
    **kwargs
        Passed to `astropy.modeling.Model`.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> m = CircularGaussianPRF(flux=5.0, x_0=10.3, y_0=7.8, fwhm=2.0)
    >>> yy, xx = np.mgrid[0:21, 0:21]
    >>> round(float(m(xx, yy).sum()), 9)
    5.0
    """

    def evaluate(self, x, y, flux, x_0, y_0, fwhm):
        """Model values; see the class docstring."""
        return self._evaluate_sigma(x, y, flux, x_0, y_0, fwhm * GAUSSIAN_FWHM_TO_SIGMA)


class CircularGaussianSigmaPRF(_PixelIntegratedCircular, _CircularGaussianBase):
    r"""Same profile as :class:`CircularGaussianPRF`, parameterised by ``sigma``.

    Parameters
    ----------
    flux : float, optional
        Total flux.
    x_0, y_0 : float, optional
        Centre in pixels.
    sigma : float, optional
        Standard deviation of the Gaussian (> 0). Fixed by default.
    bbox_factor : float, optional
        Bounding-box half width in units of sigma.
    **kwargs
        Passed to `astropy.modeling.Model`.

    Examples
    --------
    >>> from crowdphot import CircularGaussianSigmaPRF
    >>> m = CircularGaussianSigmaPRF(sigma=1.2)
    >>> m.psf_stamps([3.0, 8.5], [4.0, 4.0], (9, 7)).shape
    (2, 9, 7)
    """

    sigma = _shape_param("Gaussian standard deviation")

    _shape_bounds = {"sigma": 0.0}
    _length_params = ("sigma",)
    _require_matching_units = True

    def __init__(self, *, flux=1, x_0=0, y_0=0, sigma=1, bbox_factor=5.5, **kwargs):
        super().__init__(flux=flux, x_0=x_0, y_0=y_0, sigma=sigma, bbox_factor=bbox_factor,
                         **kwargs)

    @property
    def fwhm(self):
        """Gaussian FWHM."""
        return self.sigma / GAUSSIAN_FWHM_TO_SIGMA

    def _sigma_value(self):
        return self._shape("sigma")

    def evaluate(self, x, y, flux, x_0, y_0, sigma):
        """Model values; see the class docstring."""
        return self._evaluate_sigma(x, y, flux, x_0, y_0, sigma)


class GaussianPRF(_EllipticalGaussianBase):
    r"""Elliptical, rotated Gaussian PRF with photutils' definition.

    In the rotated frame :math:`x_r = \Delta x\cos\theta + \Delta y\sin\theta`,
    :math:`y_r = -\Delta x\sin\theta + \Delta y\cos\theta` the value is the product of two 1D
    Gaussians integrated over ``[x_r - 1/2, x_r + 1/2]`` and ``[y_r - 1/2, y_r + 1/2]``
    (an exact pixel integral only when ``theta`` is a multiple of 90 degrees).

    Parameters
    ----------
    flux : float, optional
        Total flux.
    x_0, y_0 : float, optional
        Centre in pixels.
    x_fwhm, y_fwhm : float, optional
        FWHM along the unrotated axes (> 0). Fixed by default.
    theta : float or Quantity, optional
        Counter-clockwise rotation, degrees if a float. Fixed by default.
    bbox_factor : float, optional
        Bounding-box half widths in units of the sigmas.
    **kwargs
        Passed to `astropy.modeling.Model`.

    Notes
    -----
    The bounding box is computed as for :class:`GaussianPSF` (photutils parity).

    Examples
    --------
    >>> from crowdphot import GaussianPRF
    >>> m = GaussianPRF(x_fwhm=3.0, y_fwhm=2.0)
    >>> round(float(m.psf_stamps([4.2], [4.7], 17).sum()), 9)
    1.0
    """

    def evaluate(self, x, y, flux, x_0, y_0, x_fwhm, y_fwhm, theta):
        """Model values; see the class docstring."""
        xr, yr, sx, sy = self._rotated(x, y, x_0, y_0, x_fwhm, y_fwhm, theta)
        half = _half_pixel(xr)
        px = pixel_gauss_1d(_plain(xr / sx), _plain(half / sx))
        py = pixel_gauss_1d(_plain(yr / sy), _plain(half / sy))
        return _like_input(flux * (px * py), x)

    def _unit(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        c, s, sx, sy = self._frame()
        if s == 0.0:
            return pixel_gauss_unit(dx, dy, sx, sy)
        return pixel_gauss_unit(dx * c + dy * s, dy * c - dx * s, sx, sy)

    def _unit_grad(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        c, s, sx, sy = self._frame()
        if s == 0.0:
            return pixel_gauss_unit_grad(dx, dy, sx, sy)
        px, dpx = pixel_gauss_1d_grad(dx * c + dy * s, sx)
        py, dpy = pixel_gauss_1d_grad(dy * c - dx * s, sy)
        a, b = dpx * py, px * dpy
        return px * py, -c * a + s * b, -s * a - c * b

    def _stamps(self, x0, y0, xlo, ylo, shape):
        c, s, sx, sy = self._frame()
        if s != 0.0:
            return super()._stamps(x0, y0, xlo, ylo, shape)
        return pixel_gauss_stamps(x0, y0, xlo, ylo, shape, sx, sy, False)

    def _stamps_grad(self, x0, y0, xlo, ylo, shape):
        c, s, sx, sy = self._frame()
        if s != 0.0:
            return super()._stamps_grad(x0, y0, xlo, ylo, shape)
        return pixel_gauss_stamps(x0, y0, xlo, ylo, shape, sx, sy, True)


# --------------------------------------------------------------------------------------------
# Moffat and Airy
# --------------------------------------------------------------------------------------------
class MoffatPSF(_AnalyticPSF):
    r"""2D Moffat profile sampled at the input coordinates.

    .. math:: f = F\,\frac{\beta - 1}{\pi\alpha^2}
              \left(1 + \frac{(x - x_0)^2 + (y - y_0)^2}{\alpha^2}\right)^{-\beta}

    normalised to ``flux`` over the plane (``beta > 1``); ``FWHM = 2 alpha sqrt(2**(1/beta) - 1)``.

    Parameters
    ----------
    flux : float, optional
        Total flux.
    x_0, y_0 : float, optional
        Centre in pixels.
    alpha : float, optional
        Core radius (> 0). Fixed by default.
    beta : float, optional
        Power-law index of the wings (> 1). Fixed by default.
    bbox_factor : float, optional
        Bounding-box half width in units of the FWHM.
    **kwargs
        Passed to `astropy.modeling.Model`.

    Examples
    --------
    >>> from crowdphot import MoffatPSF
    >>> m = MoffatPSF(alpha=2.0, beta=3.0)
    >>> round(float(m.fwhm), 6)
    2.039298
    """

    alpha = _shape_param("Core radius")
    beta = _shape_param("Power-law index", default=2, lower=1.0 + FLOAT_EPSILON)

    _shape_bounds = {"alpha": 0.0, "beta": 1.0}
    _length_params = ("alpha",)
    _bbox_width = "fwhm"

    def __init__(self, *, flux=1, x_0=0, y_0=0, alpha=1, beta=2, bbox_factor=10.0,
                 **kwargs):
        super().__init__(flux=flux, x_0=x_0, y_0=y_0, alpha=alpha, beta=beta,
                         bbox_factor=bbox_factor, **kwargs)

    @property
    def fwhm(self):
        """Full width at half maximum."""
        return 2.0 * self.alpha * np.sqrt(2 ** (1.0 / self.beta) - 1)

    def evaluate(self, x, y, flux, x_0, y_0, alpha, beta):
        """Model values; see the class docstring."""
        dx, dy = x - x_0, y - y_0
        r2 = _plain((dx * dx + dy * dy) / (alpha * alpha))
        a = _mag(alpha)
        beta = _plain(beta)
        return flux * ((beta - 1.0) / (np.pi * a * a) * (1.0 + r2) ** (-beta))

    def _unit(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        return moffat(dx * dx + dy * dy, self._shape("alpha"), self._shape("beta"))

    def _unit_grad(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        v, gx, gy = moffat_grad(dx, dy, self._shape("alpha"), self._shape("beta"))
        return v, -gx, -gy


class AiryDiskPSF(_AnalyticPSF):
    r"""2D Airy disk sampled at the input coordinates.

    .. math:: f = \frac{\pi F}{4 (R/R_z)^2}\left[\frac{2 J_1(z)}{z}\right]^2,\qquad
              z = \frac{\pi r}{R / R_z}

    where ``r`` is the distance from ``(x_0, y_0)``, ``R`` the radius of the first dark ring
    and ``R_z = 1.2197`` solves ``J1(pi R_z) = 0``; normalised to ``flux`` over the plane.

    Parameters
    ----------
    flux : float, optional
        Total flux.
    x_0, y_0 : float, optional
        Centre in pixels.
    radius : float, optional
        Radius of the first zero (> 0). Fixed by default.
    bbox_factor : float, optional
        Bounding-box half width in units of the FWHM.
    **kwargs
        Passed to `astropy.modeling.Model`.

    Examples
    --------
    >>> from crowdphot import AiryDiskPSF
    >>> m = AiryDiskPSF(radius=3.0)
    >>> round(float(m.fwhm), 6)
    2.530998
    """

    radius = _shape_param("Radius of the first zero")

    _rz = AIRY_RZ
    _shape_bounds = {"radius": 0.0}
    _length_params = ("radius",)
    _bbox_width = "fwhm"

    def __init__(self, *, flux=1, x_0=0, y_0=0, radius=1, bbox_factor=10.0, **kwargs):
        super().__init__(flux=flux, x_0=x_0, y_0=y_0, radius=radius, bbox_factor=bbox_factor,
                         **kwargs)

    @property
    def fwhm(self):
        """Full width at half maximum (about 0.8437 radius)."""
        return 2.0 * _AIRY_HALF_WIDTH_Z * self.radius / AIRY_RZ / np.pi

    def evaluate(self, x, y, flux, x_0, y_0, radius):
        """Model values; see the class docstring."""
        dx, dy = x - x_0, y - y_0
        scale = radius / AIRY_RZ
        rho = _plain(np.sqrt(dx * dx + dy * dy) / scale)
        # airy() takes r and radius in the same unit: use the dimensionless r / scale
        return flux * (airy(np.asarray(rho, dtype=float), AIRY_RZ) / _mag(scale) ** 2)

    def _unit(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        return airy(np.sqrt(dx * dx + dy * dy), self._shape("radius"))

    def _unit_grad(self, x, y, x0, y0):
        dx, dy = _offsets(x, y, x0, y0)
        v, gx, gy = airy_grad(dx, dy, self._shape("radius"))
        return v, -gx, -gy
