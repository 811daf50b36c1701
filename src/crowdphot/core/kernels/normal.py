"""Normal-matrix blocks of the fitting engine's Gauss-Newton step.

Unchecked (the kernel itself checks every index it follows).
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.jit import native

__all__ = ["normal_blocks_add"]


def normal_blocks_add(jac, starts, counts, toff, tb, out):
    """Add ``J_a J_b^T`` of every pair of a stamp's Jacobians to its block of ``out``.

    Parameters
    ----------
    jac : ndarray of shape (npair, k, npix)
        Weighted Jacobian of each (stamp, source) pair, stamp-major.
    starts, counts, toff : ndarray of int, shape (nt,)
        First pair, number of pairs ``c`` and first triple of each stamp.
    tb : ndarray of int
        Block of triple ``toff[t] + a * c + b`` (pairs ``a``, ``b`` of stamp ``t``).
    out : ndarray of float64, shape (n_blocks, k, k)
        Accumulated in place: block ``tb[.. a c + b]`` gains ``J_a J_b^T``.

    Examples
    --------
    >>> jac = np.ones((2, 1, 3))
    >>> out = np.zeros((4, 1, 1))
    >>> normal_blocks_add(jac, np.array([0]), np.array([2]), np.array([0]),
    ...                   np.array([0, 1, 2, 3]), out)
    >>> out.ravel()
    array([3., 3., 3., 3.])
    """
    native.normal_blocks(np.ascontiguousarray(jac, dtype=np.float64),
                         np.ascontiguousarray(starts, dtype=np.int64),
                         np.ascontiguousarray(counts, dtype=np.int64),
                         np.ascontiguousarray(toff, dtype=np.int64),
                         np.ascontiguousarray(tb, dtype=np.int64), out)
