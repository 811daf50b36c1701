"""Pixel statistics shared by the command's steps (kept apart so that ``phot``, ``sky`` and
``significance`` import it without importing each other)."""

from __future__ import annotations

import numpy as np

__all__ = ["robust_sigma"]


def robust_sigma(data, mask=None):
    """1.4826 x median absolute deviation of the unmasked, finite pixels.

    Parameters
    ----------
    data : ndarray (ny, nx)
    mask : ndarray of bool (ny, nx), optional
        True = ignore.

    Returns
    -------
    sigma : float
        0.0 when fewer than two usable pixels remain.

    Examples
    --------
    >>> round(robust_sigma(np.random.default_rng(1).normal(0, 2, (200, 200))), 1)
    2.0
    """
    values = np.asarray(data)
    good = np.isfinite(values)
    if mask is not None:
        good &= ~mask
    v = values[good]
    if v.size < 2:
        return 0.0
    if v.size > 1_000_000:  # a systematic subsample keeps this O(1e6) on big mosaics
        v = v[:: v.size // 1_000_000]
    med = np.median(v)
    return float(1.4826 * np.median(np.abs(v - med)))
