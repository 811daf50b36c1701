"""Background meshes: sigma clipping and statistics of many boxes at once, and the sparse row
product of the separable spline resize (C kernels in ``_src/meshstats.c``).

All boxes of an image are rows of one ``(nbox, npix)`` array (NaN for masked, padded or
non-finite pixels). Each row is sorted once (numpy's vectorised sort); astropy's sigma clipping
(median or mean centre, standard deviation or MAD scale, ``value < lower`` or ``value > upper``
rejected, iterated until nothing changes or ``maxiters``) then only ever keeps a *contiguous
range* of the sorted row, so an iteration is a median read, one pass for the mean and standard
deviation and two binary searches, and the statistics of the survivors come from the same
range. This reproduces ``astropy.stats.SigmaClip(...)(rows, axis=1)`` followed by
``nanmedian``/``nanmean``/``nanstd`` to rounding.

Unchecked apart from the kernels' own size checks; numpy versions are test oracles.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.jit import native

__all__ = ["clip_sorted_rows", "fast_clip_supported", "nan_outside", "range_biweight",
           "range_mad", "range_stats", "sparse_rows"]

MAD_SCALE = 1.482602218505602  # 1 / Phi^-1(3/4), astropy's constant


def fast_clip_supported(sigma_clip):
    """True when :func:`clip_sorted_rows` reproduces ``sigma_clip`` (astropy's fast cases).

    Examples
    --------
    >>> from astropy.stats import SigmaClip
    >>> fast_clip_supported(SigmaClip()), fast_clip_supported(SigmaClip(grow=1))
    (True, False)
    """
    if sigma_clip is None:
        return True
    return (isinstance(sigma_clip.cenfunc, str) and sigma_clip.cenfunc in ("median", "mean")
            and isinstance(sigma_clip.stdfunc, str) and sigma_clip.stdfunc in ("std", "mad_std")
            and not sigma_clip.grow)


def clip_sorted_rows(rows, sigma_clip, *, shrink=False):
    """Sort each row in place and sigma-clip it; return the kept range of each row.

    Parameters
    ----------
    rows : ndarray of float64, shape (nrow, npix), C-contiguous
        Values, NaN (or inf) where invalid. Sorted in place (finite values first, then NaN).
    sigma_clip : astropy.stats.SigmaClip or None
        A clipper accepted by :func:`fast_clip_supported`; None keeps every finite value.
    shrink : bool, optional
        Keep the values that survived every iteration (astropy with ``axis=None``) instead of
        every value inside the last bounds (astropy with an ``axis``); they differ only when
        the bounds widen between iterations.

    Returns
    -------
    lo, hi : ndarray of int64, shape (nrow,)
        The values kept are ``rows[r, lo[r]:hi[r]]`` (sorted).

    Examples
    --------
    >>> from astropy.stats import SigmaClip
    >>> rows = np.array([[1.0, 2.0, 3.0, 2.5, 100.0, np.nan]])
    >>> lo, hi = clip_sorted_rows(rows, SigmaClip(sigma=2.0))
    >>> rows[0, lo[0]:hi[0]].tolist()
    [1.0, 2.0, 2.5, 3.0]
    """
    inf = np.isinf(rows)
    if inf.any():
        rows[inf] = np.nan  # inf is invalid, as in astropy
    rows.sort(axis=1)  # NaN sorts last
    lo = np.empty(rows.shape[0], dtype=np.int64)
    hi = np.empty(rows.shape[0], dtype=np.int64)
    if sigma_clip is None:
        native.clip_rows(rows, False, True, False, 0, 0.0, 0.0, bool(shrink), lo, hi)
        return lo, hi
    maxiters = sigma_clip.maxiters
    maxiters = -1 if maxiters is None or not np.isfinite(maxiters) else int(maxiters)
    native.clip_rows(rows, True, sigma_clip.cenfunc == "median",
                     sigma_clip.stdfunc == "mad_std", maxiters, float(sigma_clip.sigma_lower),
                     float(sigma_clip.sigma_upper), bool(shrink), lo, hi)
    return lo, hi


def range_stats(rows, lo, hi):
    """Median, mean and standard deviation (ddof 0) of ``rows[r, lo[r]:hi[r]]``.

    Returns
    -------
    median, mean, std : ndarray of shape (nrow,)
        NaN for empty ranges.

    Examples
    --------
    >>> rows = np.array([[1.0, 2.0, 4.0, np.nan]])
    >>> [v.tolist() for v in range_stats(rows, np.array([0]), np.array([3]))]
    [[2.0], [2.3333333333333335], [1.247219128924647]]
    """
    n = rows.shape[0]
    med, mean, std = np.empty(n), np.empty(n), np.empty(n)
    native.range_stats(rows, np.ascontiguousarray(lo, dtype=np.int64),
                       np.ascontiguousarray(hi, dtype=np.int64), med, mean, std)
    return med, mean, std


def range_mad(rows, lo, hi):
    """Median absolute deviation from the median of ``rows[r, lo[r]:hi[r]]`` (NaN if empty).

    Examples
    --------
    >>> range_mad(np.array([[1.0, 2.0, 4.0, 10.0]]), np.array([0]), np.array([4])).tolist()
    [1.5]
    """
    out = np.empty(rows.shape[0])
    native.range_mad(rows, np.ascontiguousarray(lo, dtype=np.int64),
                     np.ascontiguousarray(hi, dtype=np.int64), out)
    return out


def range_biweight(rows, lo, hi, *, c, M=None, scale=False):
    """astropy's ``biweight_location`` (or ``biweight_scale``) of ``rows[r, lo[r]:hi[r]]``.

    Parameters
    ----------
    c : float
        Tuning constant.
    M : float or None
        Location about which to compute (default: each range's median); the MAD is always
        taken about the median, as in astropy.
    scale : bool
        The biweight scale (``modify_sample_size=False``) instead of the location.

    Returns
    -------
    values : ndarray of shape (nrow,)
        NaN for empty ranges; the location ``M`` (scale 0) where the MAD is 0.

    Examples
    --------
    >>> rows = np.array([[1.0, 2.0, 3.0, 4.0, 100.0]])
    >>> round(float(range_biweight(rows, np.array([0]), np.array([5]), c=6.0)[0]), 5)
    2.57065
    """
    out = np.empty(rows.shape[0])
    native.range_biweight(rows, np.ascontiguousarray(lo, dtype=np.int64),
                          np.ascontiguousarray(hi, dtype=np.int64), float(c),
                          np.nan if M is None else float(M), bool(scale), out)
    return out


def nan_outside(rows, lo, hi):
    """Copy of ``rows`` with NaN outside each row's kept range (for generic estimators).

    Examples
    --------
    >>> nan_outside(np.array([[1.0, 2.0, 3.0]]), np.array([1]), np.array([2])).tolist()
    [[nan, 2.0, nan]]
    """
    cols = np.arange(rows.shape[1])
    inside = (cols >= lo[:, None]) & (cols < hi[:, None])
    return np.where(inside, rows, np.nan)


def sparse_rows(w, cols, clip=None):
    """``w @ cols`` for a CSR matrix ``w`` with a few weights per row, optionally clipped.

    Parameters
    ----------
    w : scipy.sparse.csr_matrix of shape (ny, m)
    cols : ndarray of shape (m, nx)
    clip : (float, float), optional

    Returns
    -------
    out : ndarray of float64, shape (ny, nx)

    Examples
    --------
    >>> from scipy import sparse
    >>> w = sparse.csr_matrix(np.array([[0.5, 0.5], [0.0, 1.0]]))
    >>> sparse_rows(w, np.array([[2.0, 4.0], [6.0, 8.0]]), clip=(0.0, 7.0)).tolist()
    [[4.0, 6.0], [6.0, 7.0]]
    """
    out = np.empty((w.shape[0], cols.shape[1]))
    lo, hi = clip if clip is not None else (-np.inf, np.inf)
    native.sparse_rows(np.ascontiguousarray(w.indptr, dtype=np.int64),
                       np.ascontiguousarray(w.indices, dtype=np.int64),
                       np.ascontiguousarray(w.data, dtype=float),
                       np.ascontiguousarray(cols, dtype=float), float(lo), float(hi), out)
    return out
