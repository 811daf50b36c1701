"""Sigma clipping and statistics of many meshes (boxes) at once.

All meshes of an image are gathered into one ``(nmesh, npix)`` array (NaN for masked, padded
or non-finite pixels). Each row is sorted once (numpy's sort, several times faster than a
compiled loop); astropy's sigma clipping (median or mean centre, standard deviation or MAD
scale, ``value < lower`` or ``value > upper`` rejected, iterated until nothing changes or
``maxiters``) then only ever keeps a *contiguous range* of the sorted row,
so every iteration is a binary search plus one pass over the range, and the statistics of the
survivors (median, mean, standard deviation, MAD) follow from the same range. This reproduces
``astropy.stats.SigmaClip(...)(data, axis=-1)`` followed by ``nanmedian``/``nanmean``/
``nanstd`` to rounding, without NaN-aware reductions over the whole padded array.

The numba kernels run one mesh per thread; the numpy fallback (``CROWDPHOT_DISABLE_NUMBA=1``)
works on all rows at once with the same arithmetic.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:  # numba is a dependency; the numpy fallback covers environments without it
    import numba as _numba

    prange = _numba.prange
    HAVE_NUMBA = True

    def njit(*args, **kwargs):
        kwargs.setdefault("cache", True)
        kwargs.setdefault("nogil", True)
        return _numba.njit(*args, **kwargs)
except ImportError:  # pragma: no cover
    prange = range
    HAVE_NUMBA = False

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)


def use_numba():
    """True unless numba is missing or ``CROWDPHOT_DISABLE_NUMBA=1`` forces the numpy path."""
    return HAVE_NUMBA and os.environ.get("CROWDPHOT_DISABLE_NUMBA", "") not in ("1", "true")

__all__ = ["clip_sorted_rows", "range_stats", "range_mad"]

_MAD_SCALE = 1.482602218505602  # 1 / Phi^-1(3/4), astropy's constant


# ------------------------------------------------------------------------------------------
# compiled kernels
# ------------------------------------------------------------------------------------------
@njit
def _median_range(a, lo, hi):
    n = hi - lo
    if n % 2 == 0:
        return 0.5 * (a[lo + n // 2] + a[lo + n // 2 - 1])
    return a[lo + (n - 1) // 2]


@njit
def _mean_std_range(a, lo, hi):
    n = hi - lo
    s = 0.0
    for i in range(lo, hi):
        s += a[i]
    mean = s / n
    v = 0.0
    for i in range(lo, hi):
        d = a[i] - mean
        v += d * d
    return mean, math.sqrt(v / n)


@njit
def _mean_std_shifted(a, lo, hi, shift):
    """One-pass mean and std of ``a[lo:hi]`` about ``shift`` (the median: no cancellation)."""
    n = hi - lo
    s1 = 0.0
    s2 = 0.0
    for i in range(lo, hi):
        d = a[i] - shift
        s1 += d
        s2 += d * d
    m = s1 / n
    return shift + m, math.sqrt(max(s2 / n - m * m, 0.0))


@njit
def _mad_range(a, lo, hi, med, buf):
    """Median of ``|a[lo:hi] - med|``: two sorted runs merged from the median outwards."""
    n = hi - lo
    # values below the median, in increasing distance: walk down from the split point
    split = lo
    while split < hi and a[split] < med:
        split += 1
    i = split - 1
    j = split
    k = 0
    while k < n:
        if i < lo:
            buf[k] = a[j] - med
            j += 1
        elif j >= hi:
            buf[k] = med - a[i]
            i -= 1
        elif med - a[i] <= a[j] - med:
            buf[k] = med - a[i]
            i -= 1
        else:
            buf[k] = a[j] - med
            j += 1
        k += 1
    return _median_range(buf, 0, n)


@njit
def _search_left(a, lo, hi, value):
    """First index in ``[lo, hi)`` with ``a[i] >= value`` (``hi`` if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit
def _search_right(a, lo, hi, value):
    """First index in ``[lo, hi)`` with ``a[i] > value`` (``hi`` if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(parallel=True)
def _clip_rows_nb(rows, do_clip, use_median, use_mad, maxiters, sig_lo, sig_hi, shrink, lo_out,
                  hi_out):
    nrow, npix = rows.shape
    for r in prange(nrow):
        a = rows[r]  # sorted, NaN last
        n = npix
        while n > 0 and math.isnan(a[n - 1]):
            n -= 1
        if n == 0 or not do_clip:
            lo_out[r] = 0
            hi_out[r] = n
            continue
        buf = np.empty(n)
        lo = 0
        hi = n
        it = 0
        lower = 0.0
        upper = 0.0
        while True:
            med = 0.0
            mean = 0.0
            med = _median_range(a, lo, hi)
            mean, std = _mean_std_shifted(a, lo, hi, med)
            cen = med if use_median else mean
            if use_mad:
                std = _mad_range(a, lo, hi, med, buf) * _MAD_SCALE
            lower = cen - sig_lo * std
            upper = cen + sig_hi * std
            nlo = _search_left(a, lo, hi, lower)
            nhi = _search_right(a, nlo, hi, upper)
            if nhi <= nlo:
                lo = nlo
                hi = nlo
                break
            if nhi - nlo == hi - lo:
                break
            lo = nlo
            hi = nhi
            it += 1
            if maxiters >= 0 and it >= maxiters:
                break
        if shrink:  # astropy's axis=None result: the values that survived every iteration
            lo_out[r] = lo
            hi_out[r] = hi
        else:  # astropy's axis result: every valid value inside the last bounds
            flo = _search_left(a, 0, n, lower)
            lo_out[r] = flo
            hi_out[r] = _search_right(a, flo, n, upper)


@njit(parallel=True)
def _range_stats_nb(rows, lo, hi, med_out, mean_out, std_out):
    for r in prange(rows.shape[0]):
        if hi[r] <= lo[r]:
            med_out[r] = np.nan
            mean_out[r] = np.nan
            std_out[r] = np.nan
            continue
        med_out[r] = _median_range(rows[r], lo[r], hi[r])
        m, s = _mean_std_range(rows[r], lo[r], hi[r])
        mean_out[r] = m
        std_out[r] = s


@njit(parallel=True)
def _range_mad_nb(rows, lo, hi, out):
    for r in prange(rows.shape[0]):
        n = hi[r] - lo[r]
        if n <= 0:
            out[r] = np.nan
            continue
        buf = np.empty(n)
        med = _median_range(rows[r], lo[r], hi[r])
        out[r] = _mad_range(rows[r], lo[r], hi[r], med, buf)


@njit(parallel=True)
def sparse_rows_compiled(indptr, indices, weights, cols, lo, hi, out):
    """``out[i] = clip(sum_k weights[k] * cols[indices[k]])`` over row ``i``'s CSR entries."""
    nx = cols.shape[1]
    for i in prange(out.shape[0]):
        row = out[i]
        row[:] = 0.0
        for k in range(indptr[i], indptr[i + 1]):
            w = weights[k]
            src = cols[indices[k]]
            for j in range(nx):
                row[j] += w * src[j]
        for j in range(nx):
            v = row[j]
            if v < lo:
                row[j] = lo
            elif v > hi:
                row[j] = hi


# ------------------------------------------------------------------------------------------
# numpy fallbacks (all rows at once)
# ------------------------------------------------------------------------------------------
def _take(rows, idx):
    return np.take_along_axis(rows, np.clip(idx, 0, rows.shape[1] - 1)[:, None], axis=1)[:, 0]


def _median_np(rows, lo, hi):
    n = hi - lo
    upper = _take(rows, lo + n // 2)
    lower = _take(rows, lo + n // 2 - 1)
    odd = _take(rows, lo + (n - 1) // 2)
    with np.errstate(invalid="ignore"):
        return np.where(n % 2 == 0, 0.5 * (upper + lower), odd)


def _mean_std_np(rows, lo, hi):
    cols = np.arange(rows.shape[1])
    inside = (cols >= lo[:, None]) & (cols < hi[:, None])
    n = np.maximum(hi - lo, 1)
    vals = np.where(inside, rows, 0.0)
    mean = vals.sum(axis=1) / n
    dev = np.where(inside, rows - mean[:, None], 0.0)
    std = np.sqrt((dev * dev).sum(axis=1) / n)
    return mean, std


def _mad_np(rows, lo, hi, med):
    cols = np.arange(rows.shape[1])
    inside = (cols >= lo[:, None]) & (cols < hi[:, None])
    dev = np.sort(np.where(inside, np.abs(rows - med[:, None]), np.inf), axis=1)
    return _median_np(dev, np.zeros_like(lo), hi - lo)


def _search_np(rows, lo, hi, value, side):
    """Per-row binary search restricted to ``[lo, hi)`` (vectorised bisection)."""
    lo = lo.copy()
    hi = hi.copy()
    for _ in range(int(np.ceil(np.log2(rows.shape[1] + 1))) + 1):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        a = _take(rows, mid)
        go_right = (a < value) if side == "left" else (a <= value)
        lo = np.where(active & go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return lo


def _clip_rows_np(rows, do_clip, use_median, use_mad, maxiters, sig_lo, sig_hi, shrink):
    n = np.count_nonzero(~np.isnan(rows), axis=1)
    lo = np.zeros(rows.shape[0], dtype=np.int64)
    hi = n.astype(np.int64)
    if not do_clip:
        return lo, hi
    active = hi > 0
    lower = np.zeros(rows.shape[0])
    upper = np.zeros(rows.shape[0])
    it = 0
    while active.any():
        med = _median_np(rows, lo, hi)
        mean, std = _mean_std_np(rows, lo, hi)
        cen = med if use_median else mean
        if use_mad:
            std = _mad_np(rows, lo, hi, med) * _MAD_SCALE
        lower = np.where(active, cen - sig_lo * std, lower)
        upper = np.where(active, cen + sig_hi * std, upper)
        nlo = _search_np(rows, lo, hi, lower, "left")
        nhi = _search_np(rows, nlo, hi, upper, "right")
        emptied = active & (nhi <= nlo)
        move = active & ~emptied & (nhi - nlo != hi - lo)
        lo = np.where(move, nlo, lo)
        hi = np.where(move, nhi, np.where(emptied, lo, hi))
        it += 1
        active = move & ((maxiters < 0) | (it < maxiters))
    if shrink:
        return lo, hi
    zero = np.zeros_like(lo)
    flo = _search_np(rows, zero, n, lower, "left")
    fhi = _search_np(rows, flo, n, upper, "right")
    empty = n == 0
    return np.where(empty, 0, flo), np.where(empty, 0, fhi)


# ------------------------------------------------------------------------------------------
# public helpers
# ------------------------------------------------------------------------------------------
def clip_sorted_rows(rows, sigma_clip, *, shrink=False):
    """Sort each row in place and sigma-clip it; return the kept range of each row.

    Parameters
    ----------
    rows : ndarray of float64, shape (nrow, npix), C-contiguous
        Values, NaN (or inf) where invalid. Sorted in place (finite values first, then NaN).
    sigma_clip : astropy.stats.SigmaClip or None
        Must use ``cenfunc`` 'median'/'mean', ``stdfunc`` 'std'/'mad_std' and no ``grow`` (see
        :func:`fast_clip_supported`); None keeps every finite value.
    shrink : bool, optional
        Keep the values that survived every iteration (astropy with ``axis=None``) instead of
        every value inside the last bounds (astropy with an ``axis``); they differ only when
        the bounds widen between iterations.

    Returns
    -------
    lo, hi : ndarray of int64, shape (nrow,)
        The values kept by the clipping are ``rows[r, lo[r]:hi[r]]`` (sorted).
    """
    inf = np.isinf(rows)
    if inf.any():
        rows[inf] = np.nan  # inf is invalid, as in astropy
    rows.sort(axis=1)  # NaN sorts last
    if sigma_clip is None:
        args = (False, True, False, 0, 0.0, 0.0, shrink)
    else:
        maxiters = sigma_clip.maxiters
        maxiters = -1 if maxiters is None or not np.isfinite(maxiters) else int(maxiters)
        args = (True, sigma_clip.cenfunc == "median", sigma_clip.stdfunc == "mad_std", maxiters,
                float(sigma_clip.sigma_lower), float(sigma_clip.sigma_upper), shrink)
    if use_numba():
        lo = np.empty(rows.shape[0], dtype=np.int64)
        hi = np.empty(rows.shape[0], dtype=np.int64)
        _clip_rows_nb(rows, *args, lo, hi)
        return lo, hi
    return _clip_rows_np(rows, *args)


def fast_clip_supported(sigma_clip):
    """True when :func:`clip_sorted_rows` reproduces ``sigma_clip`` (astropy's fast cases)."""
    if sigma_clip is None:
        return True
    return (isinstance(sigma_clip.cenfunc, str) and sigma_clip.cenfunc in ("median", "mean")
            and isinstance(sigma_clip.stdfunc, str) and sigma_clip.stdfunc in ("std", "mad_std")
            and not sigma_clip.grow)


def range_stats(rows, lo, hi):
    """Median, mean and standard deviation (ddof 0) of ``rows[r, lo[r]:hi[r]]``.

    Returns
    -------
    median, mean, std : ndarray of shape (nrow,)
        NaN for empty ranges.
    """
    if use_numba():
        med = np.empty(rows.shape[0])
        mean = np.empty(rows.shape[0])
        std = np.empty(rows.shape[0])
        _range_stats_nb(rows, lo, hi, med, mean, std)
        return med, mean, std
    empty = hi <= lo
    med = _median_np(rows, lo, hi)
    mean, std = _mean_std_np(rows, lo, hi)
    return tuple(np.where(empty, np.nan, v) for v in (med, mean, std))


def range_mad(rows, lo, hi):
    """Median absolute deviation from the median of ``rows[r, lo[r]:hi[r]]`` (NaN if empty)."""
    if use_numba():
        out = np.empty(rows.shape[0])
        _range_mad_nb(rows, lo, hi, out)
        return out
    med = _median_np(rows, lo, hi)
    return np.where(hi <= lo, np.nan, _mad_np(rows, lo, hi, med))


def nan_outside(rows, lo, hi):
    """Copy of ``rows`` with NaN outside each row's kept range (for generic estimators)."""
    cols = np.arange(rows.shape[1])
    inside = (cols >= lo[:, None]) & (cols < hi[:, None])
    return np.where(inside, rows, np.nan)
