"""Poisson noise on a model image, as photutils.datasets.apply_poisson_noise."""

from __future__ import annotations

import numpy as np

from crowdphot.core.validate import deprecated_positional

__all__ = ["apply_poisson_noise"]


@deprecated_positional("seed")
def apply_poisson_noise(data, *, seed=None):
    """Replace every pixel by a Poisson draw with the pixel value as its mean.

    Parameters
    ----------
    data : array_like of shape (ny, nx)
        Expected counts (>= 0).
    seed : int, numpy.random.Generator or None, optional
        Random seed.

    Returns
    -------
    image : ndarray of shape (ny, nx)
        The noisy image, with ``data``'s dtype.

    Examples
    --------
    >>> apply_poisson_noise(np.full((2, 2), 5.0), seed=0).dtype
    dtype('float64')
    """
    data = np.asanyarray(data)
    if np.any(data < 0):
        raise ValueError("data must not contain any negative values")
    rng = np.random.default_rng(seed)
    return rng.poisson(data).astype(data.dtype)
