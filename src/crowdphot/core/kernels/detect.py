"""Array kernels behind the star finders: density-enhancement kernel, convolution, peak search
and the per-star moment / marginal-fit measurements.

Everything here is unchecked and works on plain float64 arrays; the finders validate
inputs first. Results reproduce photutils 3.0's ``IRAFStarFinder`` / ``DAOStarFinder`` numerics
(kernel construction and normalisation, ``scipy.ndimage`` zero-padded convolution, the peak
footprints including the off-centre circle used for non-integer ``min_separation``, and the
catalogue formulas) so that tables agree to floating-point rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crowdphot.core.jit import native

__all__ = [
    "StarKernel",
    "make_star_kernel",
    "convolve_zero_padded",
    "find_peak_pixels",
    "gather_stamps",
    "iraf_measure",
    "dao_measure",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class StarKernel:
    """Truncated (elliptical) Gaussian density-enhancement kernel.

    Attributes
    ----------
    data : ndarray of shape (ky, kx)
        Zero-sum convolution kernel (zero outside ``mask``).
    mask : ndarray of bool, shape (ky, kx)
        Footprint: inside the ``sigma_radius`` ellipse or within 2 pixels of the centre.
    gauss : ndarray of shape (ky, kx)
        Untruncated Gaussian with peak 1 (DAOFIND marginal fits).
    rel_err, x_sigma, y_sigma, fwhm : float
    x_radius, y_radius, n_pixels : int
    """

    data: np.ndarray
    mask: np.ndarray
    gauss: np.ndarray
    rel_err: float
    x_sigma: float
    y_sigma: float
    fwhm: float
    x_radius: int
    y_radius: int
    n_pixels: int

    @property
    def shape(self):
        return self.data.shape


def make_star_kernel(fwhm, *, ratio=1.0, theta=0.0, sigma_radius=1.5):
    """Build the finder kernel (arguments already validated; ``theta`` in degrees).

    Examples
    --------
    >>> make_star_kernel(3.0).shape
    (5, 5)
    """
    x_sigma = fwhm * _FWHM_TO_SIGMA
    y_sigma = x_sigma * ratio
    t = np.deg2rad(theta % 360.0)
    cos_t, sin_t = np.cos(t), np.sin(t)
    # coefficients of g = a dx^2 + 2 b dx dy + c dy^2, rotated counter-clockwise
    a = cos_t**2 / (2.0 * x_sigma**2) + sin_t**2 / (2.0 * y_sigma**2)
    b = 0.5 * cos_t * sin_t * (1.0 / x_sigma**2 - 1.0 / y_sigma**2)
    c = sin_t**2 / (2.0 * x_sigma**2) + cos_t**2 / (2.0 * y_sigma**2)
    level = sigma_radius**2 / 2.0
    det = a * c - b**2
    # half-extent of the ellipse g = level, at least 2 so the kernel is never below 5x5
    x_radius = int(max(2, math.sqrt(c * level / det)))
    y_radius = int(max(2, math.sqrt(a * level / det)))
    dy, dx = np.mgrid[-y_radius : y_radius + 1, -x_radius : x_radius + 1].astype(float)
    g = a * dx**2 + 2.0 * b * dx * dy + c * dy**2
    mask = (g <= level) | (np.sqrt(dx**2 + dy**2) <= 2.0)
    n_pixels = int(mask.sum())
    gauss = np.exp(-g)
    masked = gauss * mask
    # n_pixels * variance of the truncated Gaussian: the kernel's normalisation
    var_n = (masked**2).sum() - masked.sum() ** 2 / n_pixels
    data = ((masked - masked.sum() / n_pixels) / var_n) * mask
    return StarKernel(
        data=data,
        mask=mask,
        gauss=gauss,
        rel_err=float(1.0 / np.sqrt(var_n)),
        x_sigma=float(x_sigma),
        y_sigma=float(y_sigma),
        fwhm=float(fwhm),
        x_radius=x_radius,
        y_radius=y_radius,
        n_pixels=n_pixels,
    )


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------
_SEG = 64


def convolve_zero_padded(data, kernel, *, return_seg_max=False):
    """Convolve ``data`` (ny, nx) with an odd-shaped ``kernel`` (ky, kx), outside pixels = 0.

    Equivalent to ``scipy.ndimage.convolve(data, kernel, mode='constant', cval=0.0)`` up to
    summation order; the compiled kernels skip zero taps, fold mirror-symmetric kernels and split
    rows over threads.

    With ``return_seg_max`` also returns the maximum of each 64-pixel run of every row (NaN
    ignored), shape (ny, ceil(nx / 64)), or None when that summary is not computed (kernels that
    are not mirror-symmetric).

    Examples
    --------
    >>> float(convolve_zero_padded(np.eye(3), np.ones((3, 3)))[1, 1])
    3.0
    """
    data = np.ascontiguousarray(data, dtype=float)
    kernel = np.asarray(kernel, dtype=float)
    ky, kx = kernel.shape
    cy, cx = ky // 2, kx // 2
    out = np.empty(data.shape)
    seg_max = None
    if np.array_equal(kernel, kernel[::-1, :]) and np.array_equal(kernel, kernel[:, ::-1]):
        wq = np.ascontiguousarray(kernel[cy:, cx:])
        seg_max = np.empty((data.shape[0], -(-data.shape[1] // _SEG)))
        native.convolve_symmetric(data, wq, _SEG, out, seg_max)
    else:
        iy, ix = np.nonzero(kernel)
        # convolution flips the kernel: tap (i, j) reads pixel (y + cy - i, x + cx - j)
        native.convolve_taps(data, (cy - iy).astype(np.int64), (cx - ix).astype(np.int64),
                             np.ascontiguousarray(kernel[iy, ix]), out)
    return (out, seg_max) if return_seg_max else out


# --------------------------------------------------------------------------------------------
# peak search
# --------------------------------------------------------------------------------------------
def _circle_geometry(radius):
    """Footprint and box sizes of photutils' circular ``min_separation`` peak test.

    The circle is sampled on ``arange(-r, r + 1)``; for a non-integer radius that grid has an
    even length and scipy puts its origin at ``size // 2``, so the effective circle sits half a
    pixel off centre. Peaks are the pixels equal to the maximum of the circumscribed box, or equal
    to the maximum of the inscribed box and to the maximum over the circle (plus the zero padding
    when the circumscribed box leaves the image).
    """
    idx = np.arange(-radius, radius + 1)
    size = len(idx)
    circle = (idx[:, None] ** 2 + idx[None, :] ** 2) <= radius**2
    half = size // 2
    if size % 2 == 0:
        half_side = int(np.floor(radius / np.sqrt(2) - 0.5))
    else:
        half_side = int(np.floor(radius / np.sqrt(2)))
    insc = max(2 * half_side + 1, 3)
    return circle, size, half, insc


def find_peak_pixels(
    conv, thr, *, mask=None, border=(0, 0), footprint=None, min_separation=0.0, seg_max=None
):
    """Local maxima of ``conv`` above ``thr``, in row-major order, as ``(x, y)`` int arrays.

    A pixel is a peak when it is strictly above ``thr`` (scalar or (ny, nx)), is not masked, lies
    outside the ``border`` (by, bx) and equals the maximum of its neighbourhood, with pixels
    outside the image counted as 0. The neighbourhood is ``footprint`` (odd shape, centred) when
    ``min_separation`` is 0, otherwise photutils' circular test of that radius. ``seg_max`` is
    the optional run-maximum summary from :func:`convolve_zero_padded`.

    Returns
    -------
    x, y : ndarray of int, shape (n,)

    Examples
    --------
    >>> img = np.zeros((7, 7)); img[3, 4] = 5.0
    >>> find_peak_pixels(img, 1.0, footprint=np.ones((3, 3), bool))
    (array([4]), array([3]))
    """
    ny, nx = conv.shape
    by, bx = int(border[0]), int(border[1])
    if 2 * by >= ny or 2 * bx >= nx:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    circle = _circle_geometry(min_separation) if min_separation > 0 else None
    thr_arr = np.asarray(thr, dtype=float)
    if circle is None:
        foot = np.ascontiguousarray(footprint, dtype=np.bool_)
        fs = half = insc = 0
    else:
        foot, fs, half, insc = circle
    found = native.find_peaks(
        np.ascontiguousarray(conv, dtype=float),
        np.ascontiguousarray(thr_arr.reshape(1, 1) if thr_arr.ndim == 0 else thr_arr),
        np.zeros((1, 1), np.bool_) if mask is None else np.ascontiguousarray(mask, dtype=bool),
        mask is not None, by, bx, np.ascontiguousarray(foot, dtype=bool), circle is not None,
        int(fs), int(half), int(insc),
        np.zeros((0, 0)) if seg_max is None else np.ascontiguousarray(seg_max, dtype=float),
        _SEG,
    )
    yx = np.frombuffer(found, dtype=np.int64).reshape(-1, 2)
    return yx[:, 1].copy(), yx[:, 0].copy()


# --------------------------------------------------------------------------------------------
# per-star measurements on gathered stamps
# --------------------------------------------------------------------------------------------
def gather_stamps(image, xc, yc, shape):
    """Cut (n, ky, kx) stamps centred on integer pixels ``(xc, yc)``; outside pixels are 0.

    Examples
    --------
    >>> gather_stamps(np.arange(9.0).reshape(3, 3), np.array([0]), np.array([0]), (3, 3))[0]
    array([[0., 0., 0.],
           [0., 0., 1.],
           [0., 3., 4.]])
    """
    ky, kx = shape
    ny, nx = image.shape
    yy = yc[:, None, None] + (np.arange(ky) - ky // 2)[None, :, None]
    xx = xc[:, None, None] + (np.arange(kx) - kx // 2)[None, None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    vals = image[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)]
    return np.where(inside, vals, 0.0)


def _quiet_divide(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def iraf_measure(stamps, kernel, x_pos, y_pos):
    """IRAF ``starfind`` moments of (n, ky, kx) data stamps centred on the rounded positions.

    Returns a dict of (n,) arrays: x_centroid, y_centroid, fwhm, sharpness, roundness,
    orientation (degrees in [0, 360)), n_pixels, peak, flux, mag, sky.
    """
    n, ky, kx = stamps.shape
    sky_pixels = ~kernel.mask
    sky = (stamps * sky_pixels).sum(axis=(1, 2)) / np.count_nonzero(sky_pixels)
    cut = (stamps - sky[:, None, None]) * kernel.mask
    cut[cut < 0] = 0.0
    yv = np.arange(ky, dtype=float)
    xv = np.arange(kx, dtype=float)
    # raw and central moments as (powers of y)^T @ stamp @ (powers of x), the same products and
    # order photutils uses, so degenerate stamps give the same signed zeros (orientation)
    raw = np.column_stack([np.ones(ky), yv]).T @ cut @ np.column_stack([np.ones(kx), xv])
    m00 = raw[:, 0, 0]
    yc = _quiet_divide(raw[:, 1, 0], m00)
    xc = _quiet_divide(raw[:, 0, 1], m00)
    dy = yv[None, :] - yc[:, None]
    dx = xv[None, :] - xc[:, None]
    ypow = np.stack([np.ones_like(dy), dy, dy**2], axis=-1)
    xpow = np.stack([np.ones_like(dx), dx, dx**2], axis=-1)
    central = _quiet_divide(np.transpose(ypow, (0, 2, 1)) @ cut @ xpow, m00[:, None, None])
    mu_xx = central[:, 0, 2]
    mu_yy = central[:, 2, 0]
    mu_xy = central[:, 1, 1]
    mu_sum = mu_xx + mu_yy
    mu_diff = mu_xx - mu_yy
    with np.errstate(invalid="ignore", divide="ignore"):
        fwhm = 2.0 * np.sqrt(np.log(2.0) * mu_sum)
        roundness = np.sqrt(mu_diff**2 + 4.0 * mu_xy**2) / mu_sum
        flux = cut.sum(axis=(1, 2))
        mag = -2.5 * np.log10(flux)
    orientation = np.rad2deg(0.5 * np.arctan2(2.0 * mu_xy, mu_diff)) % 360
    n_pix = np.count_nonzero(cut, axis=(1, 2))
    peak = cut.reshape(n, -1).max(axis=1) if n else np.zeros(0)
    return {
        "x_centroid": xc + (x_pos - kernel.x_radius),
        "y_centroid": yc + (y_pos - kernel.y_radius),
        "fwhm": fwhm,
        "sharpness": fwhm / kernel.fwhm,
        "roundness": roundness,
        "orientation": orientation,
        "n_pixels": n_pix.astype(np.int64),
        "peak": peak,
        "flux": flux,
        "mag": mag,
        "sky": sky,
    }


def _marginal_fit(stamps, kernel, axis):
    """DAOFIND fit of the kernel's marginal profile to the stamps' marginal along ``axis``.

    ``axis`` 0 fits the y profile, 1 the x profile. Returns (shift, height), each (n,).
    """
    ky, kx = kernel.shape
    cy, cx = (ky - 1) // 2, (kx - 1) // 2
    # triangular weights, largest at the centre
    wy = cy - np.abs(np.arange(ky) - cy) + 1.0
    wx = cx - np.abs(np.arange(kx) - cx) + 1.0
    if axis == 0:
        wt, cross, size, centre, sigma = wy, wx, ky, cy, kernel.y_sigma
        offs = np.arange(ky) - cy
        kern_1d = (kernel.gauss * cross[None, :]).sum(axis=1)
        data_1d = (stamps * cross[None, None, :]).sum(axis=2)
    else:
        wt, cross, size, centre, sigma = wx, wy, kx, cx, kernel.x_sigma
        offs = cx - np.arange(kx)
        kern_1d = (kernel.gauss * cross[:, None]).sum(axis=0)
        data_1d = (stamps * cross[None, :, None]).sum(axis=1)
    dk = kern_1d * (centre - np.arange(size))
    wt_sum = wt.sum()
    k_sum = (kern_1d * wt).sum()
    k2_sum = (kern_1d**2 * wt).sum()
    dk_sum = (dk * wt).sum()
    dk2_sum = (dk**2 * wt).sum()
    kdk_sum = (kern_1d * dk * wt).sum()
    d_sum = data_1d @ wt
    dk_data = data_1d @ (kern_1d * wt)
    ddk_data = data_1d @ (dk * wt)
    doff = data_1d @ (offs * wt)
    numer = dk_data - d_sum * k_sum / wt_sum
    denom = k2_sum - k_sum**2 / wt_sum
    bad = (numer <= 0.0) | (denom <= 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        height = numer / denom
        shift = (kdk_sum - (ddk_data - dk_sum * d_sum)) / (height * dk2_sum / sigma**2)
        shift_moment = doff / d_sum
    hsize = size / 2.0
    far = np.abs(shift) > hsize
    empty = d_sum == 0.0
    shift = np.where(far & empty, 0.0, np.where(far & ~empty, shift_moment, shift))
    with np.errstate(invalid="ignore"):
        shift = np.where(np.abs(shift) > hsize, 0.0, shift)
    height = np.where(bad, np.nan, height)
    shift = np.where(bad, np.nan, shift)
    return shift, height


def dao_measure(stamps, conv_stamps, kernel, x_pos, y_pos, thr_eff):
    """DAOFIND measurements from (n, ky, kx) data and convolved-data stamps.

    ``thr_eff`` is the per-source effective threshold (n,). Returns a dict of (n,) arrays:
    x_centroid, y_centroid, sharpness, roundness1, roundness2, n_pixels, peak, flux, mag,
    daofind_mag, hx, hy.
    """
    n, ky, kx = stamps.shape
    cy, cx = (ky - 1) // 2, (kx - 1) // 2
    peak = stamps[:, cy, cx]
    conv_peak = conv_stamps[:, cy, cx]
    # roundness1: two-fold versus four-fold symmetry of the convolved stamp
    c = conv_stamps.copy()
    c[:, cy, cx] = 0.0
    q1 = c[:, : cy + 1, cx + 1 :].sum(axis=(1, 2))
    q2 = c[:, :cy, : cx + 1].sum(axis=(1, 2))
    q3 = c[:, cy:, :cx].sum(axis=(1, 2))
    q4 = c[:, cy + 1 :, cx:].sum(axis=(1, 2))
    sum4 = np.abs(c).sum(axis=(1, 2))
    dx, hx = _marginal_fit(stamps, kernel, 1)
    dy, hy = _marginal_fit(stamps, kernel, 0)
    flux = stamps.sum(axis=(1, 2))
    mean_wings = ((stamps * kernel.mask).sum(axis=(1, 2)) - peak) / (kernel.n_pixels - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        roundness1 = 2.0 * (-q1 + q2 - q3 + q4) / sum4
        roundness2 = 2.0 * (hx - hy) / (hx + hy)
        sharpness = (peak - mean_wings) / conv_peak
        mag = -2.5 * np.log10(flux)
        daofind_mag = -2.5 * np.log10(conv_peak / thr_eff)
    return {
        "x_centroid": x_pos + dx,
        "y_centroid": y_pos + dy,
        "sharpness": sharpness,
        "roundness1": roundness1,
        "roundness2": roundness2,
        "n_pixels": np.full(n, kernel.data.size, dtype=np.int64),
        "peak": peak,
        "flux": flux,
        "mag": mag,
        "daofind_mag": daofind_mag,
        "hx": hx,
        "hy": hy,
    }
