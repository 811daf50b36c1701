"""Unit-flux profile kernels behind the analytic PSF models.

Everything here works on plain float arrays (no units) and broadcasts, so the same kernels
serve both astropy's single-model ``evaluate`` and the batched ``(n, ...)`` interface. Offsets
are ``d = x - x_0`` (pixel minus centre); derivatives are returned with respect to the offset,
so the derivative with respect to the centre is their negative.
"""

from __future__ import annotations

import numpy as np
from scipy.special import j0, j1, jn_zeros, ndtr

__all__ = [
    "AIRY_RZ",
    "GAUSSIAN_FWHM_TO_SIGMA",
    "airy",
    "airy_grad",
    "gauss_1d",
    "gauss_1d_grad",
    "moffat",
    "moffat_grad",
    "pixel_gauss_1d",
    "pixel_gauss_1d_grad",
    "pixel_gauss_axis",
    "pixel_gauss_stamps",
    "pixel_gauss_unit",
    "pixel_gauss_unit_grad",
    "gaussian_partials",
]

GAUSSIAN_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: First zero of J1 divided by pi: an Airy disk of ``radius`` has ``radius / AIRY_RZ`` as its
#: natural length scale.
AIRY_RZ = float(jn_zeros(1, 1)[0] / np.pi)

_INV_SQRT2 = 1.0 / np.sqrt(2.0)
_INV_SQRT2PI = 1.0 / np.sqrt(2.0 * np.pi)


def gauss_1d(d, sigma):
    """Sampled unit-area 1D Gaussian ``exp(-d**2 / 2 sigma**2) / (sigma sqrt(2 pi))``."""
    t = d / sigma
    return np.exp(-0.5 * t * t) * (_INV_SQRT2PI / sigma)


def gauss_1d_grad(d, sigma):
    """``(value, d value / d d)`` of :func:`gauss_1d`."""
    g = gauss_1d(d, sigma)
    return g, g * (-d / (sigma * sigma))


def pixel_gauss_1d(t, h):
    """Integral of the standard normal over ``[t - h, t + h]`` (a pixel of half width ``h``).

    ``t`` and ``h`` are in units of sigma. The profile is even in ``t``, so it is computed on
    the negative side, ``Phi(h - |t|) - Phi(-h - |t|)``: there both CDF values are small and
    accurate, whereas the plain difference on the positive side would cancel in the far wing.
    """
    a = np.abs(t)
    return ndtr(h - a) - ndtr(-h - a)


def pixel_gauss_1d_grad(d, sigma, half=0.5):
    """``(value, d value / d d)`` of the pixel-integrated unit Gaussian at offset ``d``.

    The derivative of a pixel integral is the difference of the integrand at the two edges.
    """
    value = pixel_gauss_1d(d / sigma, half / sigma)
    deriv = gauss_1d(d + half, sigma) - gauss_1d(d - half, sigma)
    return value, deriv


def pixel_gauss_axis(first, npix, sigma, *, grad=False):
    """Pixel-integrated unit Gaussian along one stamp axis, from shared pixel edges.

    Parameters
    ----------
    first : ndarray of shape (n,)
        Offset ``pixel - centre`` of the first pixel of each stamp.
    npix : int
        Pixels along the axis.
    sigma : float
        Gaussian standard deviation in pixels.
    grad : bool, optional
        Also return the derivative with respect to the offset.

    Returns
    -------
    values : ndarray of shape (n, npix)
        With ``grad=True``, ``(values, derivatives)``.

    Notes
    -----
    Neighbouring pixels share an edge, so one normal CDF per edge (``npix + 1`` per stamp)
    is enough, half of what evaluating each pixel on its own costs. Each edge keeps its tail
    probability ``T = Phi(-|e|)``: a pixel wholly on one side of the centre is ``|T_lo - T_hi|``
    (accurate far out in the wings) and the one pixel straddling the centre is
    ``1 - T_lo - T_hi``.
    """
    e = (first[:, None] - 0.5 + np.arange(npix + 1)) / sigma
    tail = ndtr(-np.abs(e))
    values = np.abs(tail[:, :-1] - tail[:, 1:])
    # the straddling pixel is the one after the last negative edge; stamps that do not
    # contain the centre have none
    j = np.count_nonzero(e < 0, axis=1) - 1
    rows = np.flatnonzero((j >= 0) & (j < npix))
    jr = j[rows]
    values[rows, jr] = 1.0 - tail[rows, jr] - tail[rows, jr + 1]
    if not grad:
        return values
    pdf = np.exp(-0.5 * e * e) * (_INV_SQRT2PI / sigma)
    return values, pdf[:, 1:] - pdf[:, :-1]


def pixel_gauss_stamps(x0, y0, xlo, ylo, shape, sx, sy, grad):
    """Axis-aligned Gaussian PRF on regular stamps (see ``BatchedPSFMixin._stamps``).

    Separable: one edge integral per axis (:func:`pixel_gauss_axis`) and outer products.
    With ``grad`` returns ``(values, d/d x0, d/d y0)``, each of shape ``(n, ny, nx)``.
    """
    ny, nx = shape
    ax = pixel_gauss_axis(xlo - x0, nx, sx, grad=grad)
    ay = pixel_gauss_axis(ylo - y0, ny, sy, grad=grad)
    if not grad:
        return ay[:, :, None] * ax[:, None, :]
    (px, dpx), (py, dpy) = ax, ay
    px, dpx = px[:, None, :], dpx[:, None, :]
    py, dpy = py[:, :, None], dpy[:, :, None]
    return py * px, -(py * dpx), -(dpy * px)


def pixel_gauss_unit(dx, dy, sx, sy):
    """Unit-flux axis-aligned Gaussian PRF at offsets ``dx, dy`` (broadcasting)."""
    return pixel_gauss_1d(dx / sx, 0.5 / sx) * pixel_gauss_1d(dy / sy, 0.5 / sy)


def pixel_gauss_unit_grad(dx, dy, sx, sy):
    """``(value, d/d x0, d/d y0)`` of :func:`pixel_gauss_unit` (centre derivatives)."""
    px, dpx = pixel_gauss_1d_grad(dx, sx)
    py, dpy = pixel_gauss_1d_grad(dy, sy)
    return px * py, -dpx * py, -px * dpy


def gaussian_partials(dx, dy, sx, sy, theta):
    """Unit-flux sampled elliptical Gaussian and its parameter derivatives.

    Written in the rotated frame ``xr = dx cos + dy sin``, ``yr = -dx sin + dy cos``, where
    the exponent is ``xr**2 / 2 sx**2 + yr**2 / 2 sy**2``; ``theta`` in radians.

    Returns
    -------
    list of ndarray
        ``[value, d/dx0, d/dy0, d/dsx, d/dsy, d/dtheta]``, all per unit flux.
    """
    c, s = np.cos(theta), np.sin(theta)
    xr = dx * c + dy * s
    yr = dy * c - dx * s
    ax, ay = xr / (sx * sx), yr / (sy * sy)
    g = np.exp(-0.5 * (xr * ax + yr * ay)) / (2.0 * np.pi * sx * sy)
    # d(exponent)/d(theta) = xr yr (1/sx**2 - 1/sy**2)
    return [g, g * (ax * c - ay * s), g * (ax * s + ay * c), g * (xr * ax - 1.0) / sx,
            g * (yr * ay - 1.0) / sy, -g * xr * yr * (1.0 / (sx * sx) - 1.0 / (sy * sy))]


def moffat(r2, alpha, beta):
    """Unit-flux Moffat profile at squared radius ``r2``."""
    a2 = alpha * alpha
    return ((beta - 1.0) / (np.pi * a2)) * (1.0 + r2 / a2) ** (-beta)


def moffat_grad(dx, dy, alpha, beta):
    """``(value, d/d dx, d/d dy)`` of the unit-flux Moffat profile."""
    a2 = alpha * alpha
    q = 1.0 + (dx * dx + dy * dy) / a2
    v = ((beta - 1.0) / (np.pi * a2)) * q ** (-beta)
    # d/d(dx) of q**-beta is -beta q**(-beta-1) * 2 dx / a2
    s = v * (-2.0 * beta / a2) / q
    return v, s * dx, s * dy


def _airy_scale(radius):
    """``(length scale R' = radius / R_z, peak value of the unit-flux profile)``."""
    rp = radius / AIRY_RZ
    return rp, np.pi / (4.0 * rp * rp)


def _airy_core(z):
    """``2 J1(z) / z`` with its limit 1 at ``z = 0`` (no division by zero)."""
    pos = z > 0
    zs = np.where(pos, z, 1.0)
    return np.where(pos, 2.0 * j1(zs) / zs, 1.0)


def airy(r, radius):
    """Unit-flux Airy disk at radius ``r`` for first-zero radius ``radius``."""
    rp, peak = _airy_scale(radius)
    h = _airy_core(np.pi * r / rp)
    return peak * h * h


def _j2_over_z2(z, j0z=None, j1z=None):
    """``J2(z) / z**2``, finite at ``z = 0`` (limit 1/8).

    ``J2 = 2 J1 / z - J0`` cancels for small ``z``; there the power series is used instead
    (its first omitted term is below 1e-10 relative for ``z < 0.1``). ``j0z``, ``j1z`` may
    carry already computed ``J0(z)``, ``J1(z)``.
    """
    small = z < 0.1
    zs = np.where(small, 1.0, z)
    if j0z is None or j1z is None:
        j0z, j1z = j0(zs), j1(zs)
    big = (2.0 * j1z / zs - j0z) / (zs * zs)
    z2 = z * z
    series = 0.125 - z2 / 96.0 + z2 * z2 / 3072.0
    return np.where(small, series, big)


def airy_grad(dx, dy, radius):
    """``(value, d/d dx, d/d dy)`` of the unit-flux Airy disk.

    Uses ``d/dz [2 J1(z) / z] = -2 J2(z) / z``, which makes the radial derivative divided by
    ``r`` equal to ``-4 h (pi / R')**2 J2(z) / z**2``: smooth through the centre.
    """
    rp, peak = _airy_scale(radius)
    k = np.pi / rp
    z = k * np.sqrt(dx * dx + dy * dy)
    small = z < 0.1
    zs = np.where(small, 1.0, z)
    j0z, j1z = j0(zs), j1(zs)
    z2 = z * z
    # 2 J1(z) / z = 1 - z**2/8 + z**4/192 - z**6/9216 + ..., next term < 2e-14 for z < 0.1
    h = np.where(small, 1.0 - z2 / 8.0 + z2 * z2 * (1.0 / 192.0 - z2 / 9216.0), 2.0 * j1z / zs)
    v = peak * h * h
    s = peak * (-4.0 * k * k) * h * _j2_over_z2(z, j0z, j1z)
    return v, s * dx, s * dy
