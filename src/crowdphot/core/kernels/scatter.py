"""Adding many weighted stamps into one image (the renderer's inner step).

Unchecked: the renderer validates positions and shapes first.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.jit import native

__all__ = ["scatter_add"]


def scatter_add(out, stamps, weights, bkg, xlo, ylo):
    """Add ``weights[i] * stamps[i] + bkg[i]`` at ``(ylo[i], xlo[i])`` into ``out`` in place.

    Stamp pixels outside ``out`` are dropped.

    Parameters
    ----------
    out : ndarray of float64, shape (ny, nx)
        Image accumulated in place (any memory layout).
    stamps : ndarray of shape (k, sy, sx)
    weights, bkg : ndarray of shape (k,)
    xlo, ylo : ndarray of int, shape (k,)
        Image pixel of each stamp's first pixel.

    Examples
    --------
    >>> img = np.zeros((3, 4))
    >>> scatter_add(img, np.ones((1, 2, 2)), np.array([2.0]), np.array([0.5]), np.array([3]),
    ...             np.array([-1]))
    >>> img
    array([[0. , 0. , 0. , 2.5],
           [0. , 0. , 0. , 0. ],
           [0. , 0. , 0. , 0. ]])
    """
    target = out if out.flags.c_contiguous else np.ascontiguousarray(out)
    native.scatter(target, np.ascontiguousarray(stamps, dtype=np.float64),
                   np.ascontiguousarray(weights, dtype=np.float64),
                   np.ascontiguousarray(bkg, dtype=np.float64),
                   np.ascontiguousarray(xlo, dtype=np.int64),
                   np.ascontiguousarray(ylo, dtype=np.int64))
    if target is not out:
        out[...] = target
