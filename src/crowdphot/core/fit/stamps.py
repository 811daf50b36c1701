"""Gathering of the per-source fit stamps (data, weights, validity) for all sources at once.

Each source owns a ``fit_shape`` stamp placed on its *initial* position with
:func:`crowdphot.core.batched.stamp_origin` (astropy ``overlap_slices`` placement). Pixels outside
the image, masked, or with a non-finite value or weight are dropped from the fit; they are
kept in the regular ``(n, fy, fx)`` layout with zero weight so that the solver stays batched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdphot.core.batched import stamp_origin

__all__ = ["Stamps", "gather_stamps", "shared_pixel_mask", "REASONS"]

#: Codes of :attr:`Stamps.reason` (index into this tuple); '' means the source can be fitted.
REASONS = ("", "invalid_position", "non_finite_flux", "no_overlap", "fully_masked",
           "too_few_pixels")


@dataclass(frozen=True)
class Stamps:
    """Fit stamps of ``n`` sources on a ``(fy, fx)`` grid (arrays are flattened per stamp).

    Attributes
    ----------
    xlo, ylo : ndarray of int64, shape (n,)
        Lower-left image pixel of each (untrimmed) stamp.
    data : ndarray of shape (n, fy * fx)
        Background-subtracted data, 0 on dropped pixels.
    weight : ndarray of shape (n, fy * fx)
        ``1 / error`` (1 without error), 0 on dropped pixels.
    valid : ndarray of bool, shape (n, fy * fx)
        Pixels taking part in the fit.
    n_pixels : ndarray of int64, shape (n,)
    center : ndarray of int64, shape (n,)
        Flat stamp index of the pixel holding the initial position, -1 when that pixel is
        not in the fit (trimmed or masked).
    reason : ndarray of int8, shape (n,)
        Index into :data:`REASONS` (0 for sources that can be fitted).
    """

    xlo: np.ndarray
    ylo: np.ndarray
    data: np.ndarray
    weight: np.ndarray
    valid: np.ndarray
    n_pixels: np.ndarray
    center: np.ndarray
    reason: np.ndarray


def gather_stamps(data, x, y, flux, fit_shape, *, mask=None, error=None, local_bkg=None,
                  n_free=None, strict_error=False):
    """Cut the fit stamps of all sources at once (unchecked).

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
    x, y, flux : ndarray of shape (n,)
        Initial positions and fluxes (non-finite values mark the source as not fittable).
    fit_shape : (fy, fx) ints
    mask : ndarray of bool, shape (ny, nx), optional
        True for pixels to ignore.
    error : ndarray of shape (ny, nx), optional
        1-sigma errors; weights are ``1 / error``.
    local_bkg : ndarray of shape (n,), optional
        Subtracted from the owner's stamp; non-finite values are treated as 0.
    n_free : ndarray of int, shape (n,), optional
        Free parameters per source; fewer kept pixels than this gives 'too_few_pixels'.
    strict_error : bool, optional
        Raise ``ValueError`` when ``error`` is non-finite or <= 0 at a pixel that would enter
        a fit (photutils' rule); otherwise such pixels are silently dropped.

    Returns
    -------
    Stamps

    Examples
    --------
    >>> s = gather_stamps(np.ones((10, 10)), np.array([0.2]), np.array([5.0]),
    ...                   np.array([1.0]), (3, 3))
    >>> int(s.n_pixels[0]), int(s.center[0])
    (6, 4)
    """
    ny, nx = data.shape
    fy, fx = (int(v) for v in fit_shape)
    n = len(x)
    finite_pos = np.isfinite(x) & np.isfinite(y)
    xs0 = np.where(finite_pos, x, -1e9)
    ys0 = np.where(finite_pos, y, -1e9)
    xlo, ylo = stamp_origin(xs0, ys0, (fy, fx))
    xs = xlo[:, None] + np.arange(fx)
    ys = ylo[:, None] + np.arange(fy)
    inside = ((ys >= 0) & (ys < ny))[:, :, None] & ((xs >= 0) & (xs < nx))[:, None, :]
    xc = np.clip(xs, 0, nx - 1)[:, None, :]
    yc = np.clip(ys, 0, ny - 1)[:, :, None]
    overlap = inside.any(axis=(1, 2)) & finite_pos
    d = data[yc, xc]
    valid = inside & np.isfinite(d)
    if mask is not None:
        valid &= ~mask[yc, xc]
    if error is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            w = 1.0 / error[yc, xc]
        good = np.isfinite(w) & (w > 0)
        if strict_error and np.any(valid & ~good & finite_pos[:, None, None]):
            nbad = int(np.count_nonzero(valid & ~good & finite_pos[:, None, None]))
            raise ValueError(f"error must be finite and > 0 at every pixel used in a fit; "
                             f"found {nbad} bad stamp pixel(s) (mask them instead)")
        valid &= good
    else:
        w = np.ones_like(d)
    if local_bkg is not None:
        bkg = np.where(np.isfinite(local_bkg), local_bkg, 0.0)
        d = d - bkg[:, None, None]
    d = np.where(valid, d, 0.0).reshape(n, fy * fx)
    w = np.where(valid, w, 0.0).reshape(n, fy * fx)
    valid = valid.reshape(n, fy * fx)
    npix = valid.sum(axis=1).astype(np.int64)

    # photutils puts the centre at pixel ceil(p - 0.5), which is the middle of an odd stamp
    cy = np.ceil(ys0 - 0.5).astype(np.int64) - ylo
    cx = np.ceil(xs0 - 0.5).astype(np.int64) - xlo
    in_box = (cy >= 0) & (cy < fy) & (cx >= 0) & (cx < fx)
    flat = np.where(in_box, cy * fx + cx, 0)
    center = np.where(in_box & valid[np.arange(n), flat], flat, -1)

    reason = np.zeros(n, dtype=np.int8)
    if n_free is None:
        n_free = np.full(n, 3)
    reason[npix < n_free] = REASONS.index("too_few_pixels")
    reason[npix == 0] = REASONS.index("fully_masked")
    reason[~overlap] = REASONS.index("no_overlap")
    reason[~np.isfinite(flux)] = REASONS.index("non_finite_flux")
    reason[~finite_pos] = REASONS.index("invalid_position")
    npix = np.where((reason == 0) | (reason >= REASONS.index("fully_masked")), npix, 0)
    return Stamps(xlo=xlo, ylo=ylo, data=d, weight=w, valid=valid, n_pixels=npix,
                  center=center, reason=reason)


def shared_pixel_mask(xlo, ylo, valid, fit_shape, group, image_width):
    """Pixels that an earlier stamp of the same group already holds (unchecked).

    Overlapping fit stamps of one group hold the same image pixels; counting them once keeps
    the chi-square (and so the fitted errors) honest for close blends.

    Parameters
    ----------
    xlo, ylo : ndarray of int64, shape (n,)
        Stamp origins, in fit order.
    valid : ndarray of bool, shape (n, fy * fx)
    fit_shape : (fy, fx)
    group : ndarray of int64, shape (n,)
        Group index of each stamp.
    image_width : int
        ``nx`` of the image (to number pixels).

    Returns
    -------
    repeat : ndarray of bool, shape (n, fy * fx)
        True where the pixel is valid and already used by a stamp earlier in the same group.

    Examples
    --------
    >>> v = np.ones((2, 9), dtype=bool)
    >>> r = shared_pixel_mask(np.array([0, 1]), np.array([0, 0]), v, (3, 3),
    ...                       np.array([0, 0]), 10)
    >>> int(r[1].sum())  # two of the second stamp's columns were in the first
    6
    """
    fy, fx = fit_shape
    iy, ix = np.divmod(np.arange(fy * fx), fx)
    pix = (ylo[:, None] + iy) * np.int64(image_width) + (xlo[:, None] + ix)
    rows, cols = np.nonzero(valid)
    key = group[rows].astype(np.int64) * (np.int64(1) << np.int64(40)) + pix[rows, cols]
    _, first = np.unique(key, return_index=True)
    repeat = np.zeros(valid.shape, dtype=bool)
    keep = np.zeros(len(rows), dtype=bool)
    keep[first] = True
    repeat[rows[~keep], cols[~keep]] = True
    return repeat
