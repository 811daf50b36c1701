"""Summaries of artificial star tests: completeness, bias and scatter against magnitude, and
completeness against position (tables from :func:`crowdphot.pipeline.ast.artificial_star_test`)."""

from __future__ import annotations

import numpy as np
from astropy.table import QTable

__all__ = ["ast_summary", "completeness_map"]


def _values(col):
    """A column (Quantity or plain) as a float64 array."""
    return np.asarray(getattr(col, "value", col), dtype=float)


def _binomial_err(k, n):
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        return np.sqrt(p * (1 - p) / n)


def ast_summary(table, *, bins=None, zeropoint=0.0, match_radius=None):
    """Completeness, bias and scatter against input magnitude.

    Magnitudes are ``zeropoint - 2.5 log10(flux)``. Bias and scatter are taken over the stars
    found within ``match_radius`` of their input position (whatever their flux), as the median
    and 1.4826 x MAD of ``mag_out - mag_in``.

    Parameters
    ----------
    table : QTable
        :func:`artificial_star_test`'s table.
    bins : int or array_like, optional
        Magnitude bin edges, or a number of equal bins (default: 0.5-mag bins over the range).
    zeropoint : float, optional
    match_radius : float, optional
        Default: the test's ``match_radius`` (``table.meta``), else 0.5.

    Returns
    -------
    summary : QTable
        Columns ``mag_lo, mag_hi, flux_lo, flux_hi, n, n_recovered, completeness,
        completeness_err`` (binomial), ``n_found, bias, scatter``.

    Examples
    --------
    >>> t = QTable({'x_in': [0.0, 1.0], 'y_in': [0.0, 0.0], 'flux_in': [100.0, 10.0],
    ...             'recovered': [True, False], 'x_out': [0.1, np.nan],
    ...             'y_out': [0.0, np.nan], 'flux_out': [101.0, np.nan]})
    >>> s = ast_summary(t, bins=[-5.5, -4.5, -2.0])
    >>> [float(v) for v in s['completeness']]
    [1.0, 0.0]
    """
    fin = _values(table["flux_in"])
    mag_in = zeropoint - 2.5 * np.log10(fin)
    if bins is None:
        lo = np.floor(mag_in.min() * 2) / 2
        hi = np.ceil(mag_in.max() * 2) / 2
        edges = np.arange(lo, hi + 0.25, 0.5) if hi > lo else np.array([lo, lo + 0.5])
    elif np.ndim(bins) == 0:
        edges = np.linspace(mag_in.min(), mag_in.max() + 1e-9, int(bins) + 1)
    else:
        edges = np.asarray(bins, dtype=float)
    if match_radius is None:
        match_radius = table.meta.get("match_radius", 0.5) if hasattr(table, "meta") else 0.5
    rec = np.asarray(table["recovered"], dtype=bool)
    fout = _values(table["flux_out"])
    dist = np.hypot(_values(table["x_out"]) - _values(table["x_in"]),
                    _values(table["y_out"]) - _values(table["y_in"]))
    with np.errstate(invalid="ignore", divide="ignore"):
        found = (dist <= match_radius) & (fout > 0)
        dmag = -2.5 * np.log10(fout / fin)
    which = np.digitize(mag_in, edges) - 1
    nb = len(edges) - 1
    n = np.bincount(which[(which >= 0) & (which < nb)], minlength=nb)
    k = np.bincount(which[(which >= 0) & (which < nb) & rec], minlength=nb)
    bias = np.full(nb, np.nan)
    scatter = np.full(nb, np.nan)
    n_found = np.zeros(nb, dtype=np.int64)
    for b in range(nb):
        d = dmag[(which == b) & found]
        n_found[b] = d.size
        if d.size:
            bias[b] = np.median(d)
            scatter[b] = 1.4826 * np.median(np.abs(d - bias[b]))
    s = QTable()
    s["mag_lo"], s["mag_hi"] = edges[:-1], edges[1:]
    s["flux_lo"] = 10 ** (-0.4 * (edges[1:] - zeropoint))
    s["flux_hi"] = 10 ** (-0.4 * (edges[:-1] - zeropoint))
    s["n"] = n
    s["n_recovered"] = k
    with np.errstate(invalid="ignore", divide="ignore"):
        s["completeness"] = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    s["completeness_err"] = _binomial_err(k, np.where(n > 0, n, np.nan))
    s["n_found"] = n_found
    s["bias"] = bias
    s["scatter"] = scatter
    return s


def completeness_map(table, shape, *, bins=8):
    """Completeness on a grid of image cells: ``(recovered / injected)`` per cell.

    Parameters
    ----------
    table : QTable
        :func:`artificial_star_test`'s table.
    shape : (ny, nx)
        Image shape.
    bins : int or (by, bx), optional
        Cells per axis.

    Returns
    -------
    completeness : ndarray (by, bx)
        NaN where no star was injected.
    n : ndarray of int64 (by, bx)
        Stars injected per cell.

    Examples
    --------
    >>> t = QTable({'x_in': [1.0, 3.0], 'y_in': [1.0, 1.0], 'recovered': [True, False]})
    >>> c, n = completeness_map(t, (4, 4), bins=(1, 2))
    >>> c.tolist(), n.tolist()
    ([[1.0, 0.0]], [[1, 1]])
    """
    by, bx = (bins, bins) if np.ndim(bins) == 0 else bins
    ny, nx = shape
    ey = np.linspace(-0.5, ny - 0.5, int(by) + 1)
    ex = np.linspace(-0.5, nx - 0.5, int(bx) + 1)
    y, x = _values(table["y_in"]), _values(table["x_in"])
    rec = np.asarray(table["recovered"], dtype=bool)
    n, _, _ = np.histogram2d(y, x, bins=(ey, ex))
    k, _, _ = np.histogram2d(y[rec], x[rec], bins=(ey, ex))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    return c, n.astype(np.int64)
