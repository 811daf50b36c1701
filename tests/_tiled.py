"""Shared by the tiled-photometry tests (tests/pipeline/test_tiles*.py): the scene's
configuration and the tiled == untiled comparison."""

import numpy as np

import crowdphot as cp

FWHM = 2.5
SHAPE = (250, 230)  # not a multiple of the tile size: uneven cores
TILE = 64


def _config(**extra):
    kw = dict(finder=cp.DAOStarFinder(threshold=25.0, fwhm=FWHM), grouper=cp.SourceGrouper(8),
              aperture_radius=4,
              local_bkg_estimator=cp.LocalBackground(6, 10, bkg_estimator=cp.MMMBackground()),
              group_warning_threshold=10**9)
    kw.update(extra)
    return kw


def _val(col):
    return np.asarray(getattr(col, "value", col), dtype=float)


def _by_position(table):
    t = table.copy()
    t.sort(["y_init", "x_init"])
    return t


def _partition(table):
    """Group partition as a set of frozensets of (rounded) initial positions."""
    key = [(round(float(x), 6), round(float(y), 6))
           for x, y in zip(_val(table["x_init"]), _val(table["y_init"]), strict=True)]
    groups = {}
    for k, g in zip(key, np.asarray(table["group_id"]), strict=True):
        groups.setdefault(int(g), set()).add(k)
    return {frozenset(v) for v in groups.values()}


def assert_same_catalog(tiled, whole, *, xy_tol=1e-3, flux_rtol=1e-4):
    """Same sources, same groups, same fit within the issue's tolerances."""
    assert len(tiled) == len(whole)
    assert len(np.unique(np.asarray(tiled["id"]))) == len(tiled)
    a, b = _by_position(tiled), _by_position(whole)
    np.testing.assert_allclose(_val(a["x_init"]), _val(b["x_init"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(_val(a["y_init"]), _val(b["y_init"]), rtol=0, atol=1e-9)
    for c in ("x_fit", "y_fit"):
        np.testing.assert_allclose(_val(a[c]), _val(b[c]), rtol=0, atol=xy_tol, err_msg=c)
    for c in ("flux_fit", "flux_init", "local_bkg"):
        np.testing.assert_allclose(_val(a[c]), _val(b[c]), rtol=flux_rtol, atol=1e-9,
                                   err_msg=c)
    np.testing.assert_array_equal(np.asarray(a["flags"]), np.asarray(b["flags"]))
    np.testing.assert_array_equal(np.asarray(a["group_size"]), np.asarray(b["group_size"]))
    assert _partition(a) == _partition(b)
    assert a.colnames == b.colnames
