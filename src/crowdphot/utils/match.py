"""One-to-one matching of two position lists (e.g. true vs fitted star positions).

Matching rule (greedy by distance, globally consistent):

1. candidate pairs are all (reference, source) pairs with finite positions separated by
   ``d = sqrt(dx**2 + dy**2) <= separation``;
2. candidates are taken in increasing ``d`` (ties: lower reference index, then lower source
   index) and a pair is accepted when neither of its members has been accepted before.

Each reference and each source is used at most once, every accepted pair is a mutual nearest
neighbour among the members still unmatched at that point, and the result does not depend on
the order of the inputs (up to exact distance ties). The rule replaces the notebook's
``tweakwcs.XYXYMatch(separation=1)`` without that dependency; note that here ``separation`` is
the match radius, whereas tweakwcs first drops sources closer than ``separation`` to each other
within each list and matches within its ``tolerance``.
"""

from __future__ import annotations

import numpy as np
from astropy.table import QTable, hstack
from scipy.spatial import cKDTree

from crowdphot.core.kernels.greedy import greedy_match
from crowdphot.core.validate import positive_real

__all__ = ["match_xy", "match_catalogs", "match_summary"]

# Search a hair wider than the radius, then apply the exact distance test, so that a boundary
# pair is kept or dropped by the same arithmetic on every platform and code path.
_SEARCH_INFLATION = 1.0 + 1e-9




def _as_coords(name, x, y):
    """1D float arrays of equal length; NaN/inf allowed (such entries never match)."""
    def convert(v):
        v = getattr(v, "value", v)  # Quantity
        if np.ma.isMaskedArray(v):
            return np.ma.filled(v.astype(float), np.nan)
        return np.asarray(v, dtype=float)

    try:
        xa = np.atleast_1d(convert(x))
        ya = np.atleast_1d(convert(y))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: x and y must be numeric arrays") from exc
    if xa.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(
            f"{name}: x and y must be 1D arrays of equal length, got shapes {xa.shape} and "
            f"{ya.shape}"
        )
    return xa, ya


def _candidate_pairs(ref_x, ref_y, x, y, separation):
    """All finite pairs within ``separation``, sorted by (distance, ref index, source index)."""
    empty = np.empty(0, dtype=np.intp)
    rgood = np.flatnonzero(np.isfinite(ref_x) & np.isfinite(ref_y))
    sgood = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if rgood.size == 0 or sgood.size == 0:
        return empty, empty, np.empty(0)
    opts = {"balanced_tree": False, "compact_nodes": False}  # faster builds, same results
    rtree = cKDTree(np.column_stack((ref_x[rgood], ref_y[rgood])), **opts)
    stree = cKDTree(np.column_stack((x[sgood], y[sgood])), **opts)
    sdm = rtree.sparse_distance_matrix(stree, separation * _SEARCH_INFLATION,
                                       output_type="ndarray")
    i = rgood[sdm["i"]]
    j = sgood[sdm["j"]]
    dx = x[j] - ref_x[i]
    dy = y[j] - ref_y[i]
    d = np.sqrt(dx * dx + dy * dy)
    keep = d <= separation
    i, j, d = i[keep], j[keep], d[keep]
    order = np.argsort(d, kind="stable")
    ds = d[order]
    if np.any(ds[1:] == ds[:-1]):  # exact ties are rare: only then pay for the full key
        order = np.lexsort((j, i, d))
    return i[order], j[order], d[order]


def _match_unchecked(ref_x, ref_y, x, y, separation):
    i, j, d = _candidate_pairs(ref_x, ref_y, x, y, separation)
    if i.size == 0:
        return i.astype(np.int64), j.astype(np.int64), d
    accept = greedy_match(i, j, ref_x.size, x.size)
    i, j, d = i[accept], j[accept], d[accept]
    order = np.argsort(i, kind="stable")
    return i[order].astype(np.int64), j[order].astype(np.int64), d[order]


def match_xy(ref_x, ref_y, x, y, *, separation):
    """Match two position lists one-to-one, nearest pairs first.

    See the module docstring for the exact rule: pairs within ``separation`` are accepted in
    increasing distance, each position used at most once. Non-finite positions never match.

    Parameters
    ----------
    ref_x, ref_y : array_like of shape (n_ref,)
        Reference positions (e.g. the true positions).
    x, y : array_like of shape (n,)
        Positions to match to the reference (e.g. the fitted positions).
    separation : float
        Largest accepted distance (inclusive), in the same units as the positions; > 0.

    Returns
    -------
    ref_idx, idx : ndarray of int64, shape (n_matched,)
        Indices of the matched pairs, ``ref_idx`` increasing.

    Examples
    --------
    >>> match_xy([0.0, 10.0, 20.0], [0.0, 0.0, 0.0], [10.3, 0.2, 50.0], [0.0, 0.1, 0.0],
    ...          separation=1.0)
    (array([0, 1]), array([1, 0]))
    """
    sep = positive_real("separation", separation)
    rx, ry = _as_coords("ref_x/ref_y", ref_x, ref_y)
    xa, ya = _as_coords("x/y", x, y)
    ref_idx, idx, _ = _match_unchecked(rx, ry, xa, ya, sep)
    return ref_idx, idx


def _table_xy(table, names, argname):
    if not hasattr(table, "colnames"):
        raise TypeError(f"{argname} must be an astropy Table/QTable, got {type(table).__name__}")
    if isinstance(names, str) or len(names) != 2:
        raise ValueError(f"{argname}_xy must be a pair of column names, got {names!r}")
    missing = [name for name in names if name not in table.colnames]
    if missing:
        raise ValueError(f"{argname} has no column(s) {missing}; columns: {table.colnames}")
    return _as_coords(argname, table[names[0]], table[names[1]])


def match_catalogs(truth, catalog, *, separation=1.0, truth_xy=("x_0", "y_0"),
                   catalog_xy=("x_fit", "y_fit")):
    """Join the matched rows of two catalogs side by side.

    Parameters
    ----------
    truth, catalog : astropy Table or QTable
        Reference catalog (e.g. from ``make_model_params``) and catalog to match (e.g. the
        PSF photometry result).
    separation : float, optional
        Match radius in pixels (see `match_xy`).
    truth_xy, catalog_xy : (str, str), optional
        Names of the x and y columns of each catalog.

    Returns
    -------
    matched : QTable
        One row per matched pair, ordered by truth row: the truth columns then the catalog
        columns; a name present in both gets the suffix ``_truth`` / ``_catalog``. ``meta``
        holds ``n_truth``, ``n_catalog`` and ``separation``.

    Examples
    --------
    >>> truth = QTable({'id': [1, 2], 'x_0': [5.0, 9.0], 'y_0': [5.0, 2.0]})
    >>> phot = QTable({'id': [1, 2], 'x_fit': [9.1, 5.2], 'y_fit': [2.0, 4.9]})
    >>> t = match_catalogs(truth, phot)
    >>> t.colnames
    ['id_truth', 'x_0', 'y_0', 'id_catalog', 'x_fit', 'y_fit']
    >>> t['id_catalog'].tolist()
    [2, 1]
    """
    sep = positive_real("separation", separation)
    tx, ty = _table_xy(truth, truth_xy, "truth")
    cx, cy = _table_xy(catalog, catalog_xy, "catalog")
    ti, ci, _ = _match_unchecked(tx, ty, cx, cy, sep)
    left = QTable(truth)[ti]
    right = QTable(catalog)[ci]
    left.meta.clear()
    right.meta.clear()
    out = hstack([left, right], join_type="exact", table_names=("truth", "catalog"))
    out.meta.update({"n_truth": len(truth), "n_catalog": len(catalog), "separation": sep})
    return out


def match_summary(truth, catalog, *, separation=1.0, truth_xy=("x_0", "y_0"),
                  catalog_xy=("x_fit", "y_fit")):
    """Completeness, purity and offsets of matching ``catalog`` to ``truth``.

    Parameters are those of `match_catalogs`.

    Returns
    -------
    summary : dict
        ``n_truth``, ``n_catalog``, ``n_matched``, ``completeness`` (n_matched / n_truth),
        ``purity`` (n_matched / n_catalog), ``median_separation``, ``median_dx``,
        ``median_dy`` (catalog minus truth). Ratios and medians are NaN when undefined.

    Examples
    --------
    >>> truth = QTable({'x_0': [5.0, 9.0, 20.0], 'y_0': [5.0, 2.0, 2.0]})
    >>> phot = QTable({'x_fit': [9.1, 5.2], 'y_fit': [2.0, 5.0]})
    >>> s = match_summary(truth, phot)
    >>> s['n_matched'], round(s['completeness'], 3), s['purity']
    (2, 0.667, 1.0)
    """
    sep = positive_real("separation", separation)
    tx, ty = _table_xy(truth, truth_xy, "truth")
    cx, cy = _table_xy(catalog, catalog_xy, "catalog")
    ti, ci, d = _match_unchecked(tx, ty, cx, cy, sep)
    n = int(ti.size)

    def ratio(a, b):
        return a / b if b else float("nan")

    def median(v):
        return float(np.median(v)) if v.size else float("nan")

    return {
        "n_truth": int(tx.size),
        "n_catalog": int(cx.size),
        "n_matched": n,
        "completeness": ratio(n, tx.size),
        "purity": ratio(n, cx.size),
        "median_separation": median(d),
        "median_dx": median(cx[ci] - tx[ti]),
        "median_dy": median(cy[ci] - ty[ti]),
    }
