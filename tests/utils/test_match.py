"""Tests for crowdphot.utils.match: brute-force oracle, invariances, catalogs and validation."""

import astropy.units as u
import numpy as np
import pytest
from astropy.table import MaskedColumn, QTable, Table
from hypothesis import given, settings
from hypothesis import strategies as st

from _oracles import greedy_match as _greedy_numpy
from crowdphot.core.kernels.greedy import greedy_match as _greedy_kernel
from crowdphot.utils.match import (
    match_catalogs,
    match_summary,
    match_xy,
)


def dist(dx, dy):
    """Distance with the documented arithmetic, so exact ties and boundaries agree."""
    return np.sqrt(dx * dx + dy * dy)


def brute_force_match(rx, ry, x, y, sep):
    """Repeatedly take the global minimum of the full distance matrix."""
    d = dist(x[None, :] - rx[:, None], y[None, :] - ry[:, None])
    d[~np.isfinite(d) | (d > sep)] = np.inf
    pairs = []
    while d.size and np.isfinite(d).any():
        i, j = np.unravel_index(np.argmin(d), d.shape)  # row-major: ties by (i, j)
        pairs.append((i, j))
        d[i, :] = np.inf
        d[:, j] = np.inf
    pairs.sort()
    return (np.array([p[0] for p in pairs], dtype=np.int64),
            np.array([p[1] for p in pairs], dtype=np.int64))


def crowded_lists(rng, n_ref=300, n=280, side=60.0):
    rx, ry = rng.uniform(0, side, n_ref), rng.uniform(0, side, n_ref)
    x, y = rng.uniform(0, side, n), rng.uniform(0, side, n)
    return rx, ry, x, y


def test_matches_brute_force_crowded(rng, kernel_backend):
    rx, ry, x, y = crowded_lists(rng)
    for sep in (0.5, 2.0, 5.0):
        ref_idx, idx = match_xy(rx, ry, x, y, separation=sep)
        want_ref, want = brute_force_match(rx, ry, x, y, sep)
        n_cand = (dist(x[None] - rx[:, None], y[None] - ry[:, None]) <= sep).sum(axis=1)
        assert len(ref_idx) > 10
        if sep > 1:  # crowded enough that references compete for sources
            assert np.count_nonzero(n_cand >= 2) > 10
        np.testing.assert_array_equal(ref_idx, want_ref)
        np.testing.assert_array_equal(idx, want)


@settings(max_examples=50, deadline=None)
@given(
    ref=st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), max_size=25),
    src=st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), max_size=25),
    sep=st.floats(0.1, 5.0),
)
def test_hypothesis_oracle(ref, src, sep):
    rx = np.array([p[0] for p in ref], dtype=float)
    ry = np.array([p[1] for p in ref], dtype=float)
    x = np.array([p[0] for p in src], dtype=float)
    y = np.array([p[1] for p in src], dtype=float)
    got = match_xy(rx, ry, x, y, separation=sep)
    want = brute_force_match(rx, ry, x, y, sep)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_numpy_rounds_equal_sequential_greedy_on_long_chain():
    # Geometric spacing on a line: each round of mutual-nearest acceptance frees the next
    # pair, so the numpy fallback needs many rounds; it must agree with the sequential pass.
    pos = np.cumsum(1.1 ** np.arange(40))
    rx, ry = pos[0::2], np.zeros(20)
    x, y = pos[1::2], np.zeros(20)
    want = brute_force_match(rx, ry, x, y, 1e6)
    from crowdphot.utils.match import _candidate_pairs

    i, j, _ = _candidate_pairs(rx, ry, x, y, 1e6)
    for greedy in (_greedy_numpy, _greedy_kernel):
        acc = greedy(i, j, 20, 20)
        order = np.argsort(i[acc])
        np.testing.assert_array_equal(i[acc][order], want[0])
        np.testing.assert_array_equal(j[acc][order], want[1])


def test_permutation_invariance(rng, kernel_backend):
    rx, ry, x, y = crowded_lists(rng)
    ref_idx, idx = match_xy(rx, ry, x, y, separation=3.0)
    pr, ps = rng.permutation(rx.size), rng.permutation(x.size)
    r2, i2 = match_xy(rx[pr], ry[pr], x[ps], y[ps], separation=3.0)
    got = sorted(zip(pr[r2].tolist(), ps[i2].tolist(), strict=True))
    assert got == sorted(zip(ref_idx.tolist(), idx.tolist(), strict=True))


def test_separation_cut_and_maximality(rng):
    rx, ry, x, y = crowded_lists(rng)
    sep = 1.5
    ref_idx, idx = match_xy(rx, ry, x, y, separation=sep)
    assert np.all(dist(x[idx] - rx[ref_idx], y[idx] - ry[ref_idx]) <= sep)
    assert len(np.unique(ref_idx)) == len(ref_idx) and len(np.unique(idx)) == len(idx)
    assert np.all(np.diff(ref_idx) > 0)
    # No unmatched reference has an unmatched source within the radius.
    free_r = np.setdiff1d(np.arange(rx.size), ref_idx)
    free_s = np.setdiff1d(np.arange(x.size), idx)
    d = dist(x[free_s][None] - rx[free_r][:, None], y[free_s][None] - ry[free_r][:, None])
    assert not np.any(d <= sep)


def test_boundary_is_inclusive():
    ref_idx, idx = match_xy([0.0], [0.0], [3.0], [4.0], separation=5)
    assert ref_idx.tolist() == [0] and idx.tolist() == [0]
    assert match_xy([0.0], [0.0], [3.0], [4.0000001], separation=5)[0].size == 0


def test_recover_shuffled_noisy_catalog(rng, kernel_backend):
    n = 2000
    tx, ty = rng.uniform(0, 2048, n), rng.uniform(0, 2048, n)
    keep = rng.random(n) < 0.9
    order = rng.permutation(np.flatnonzero(keep))
    fx = np.concatenate([tx[order] + rng.normal(0, 0.05, order.size), rng.uniform(0, 2048, 50)])
    fy = np.concatenate([ty[order] + rng.normal(0, 0.05, order.size), rng.uniform(0, 2048, 50)])
    ref_idx, idx = match_xy(tx, ty, fx, fy, separation=1.0)
    real = idx < order.size
    # Every kept star is found at its own entry; spurious sources can at most steal a
    # dropped star's slot (they are uniform, so that is rare).
    np.testing.assert_array_equal(order[idx[real]], ref_idx[real])
    assert real.sum() == order.size
    assert np.all(~keep[ref_idx[~real]])


def test_empty_and_nonfinite_inputs(kernel_backend):
    empty = np.array([])
    for args in ((empty, empty, [1.0], [1.0]), ([1.0], [1.0], empty, empty),
                 (empty, empty, empty, empty)):
        ref_idx, idx = match_xy(*args, separation=1.0)
        assert ref_idx.shape == idx.shape == (0,)
        assert ref_idx.dtype == idx.dtype == np.int64
    ref_idx, idx = match_xy([0.0, 5.0, np.nan], [0.0, 5.0, 1.0],
                            [np.nan, 5.1, 0.1, np.inf], [0.0, 5.0, 0.0, 1.0], separation=1.0)
    assert ref_idx.tolist() == [0, 1] and idx.tolist() == [2, 1]
    ref_idx, idx = match_xy(0.0, 0.0, 0.5, 0.0, separation=1.0)
    assert ref_idx.tolist() == [0] and idx.tolist() == [0]


@pytest.mark.parametrize(
    ("args", "sep", "exc", "match"),
    [(([1.0, 2.0], [1.0], [1.0], [1.0]), 1.0, ValueError, "ref_x/ref_y.*equal length"),
     (([1.0], [1.0], np.zeros((2, 2)), np.zeros((2, 2))), 1.0, ValueError, "x/y.*1D"),
     ((["a"], [1.0], [1.0], [1.0]), 1.0, TypeError, "ref_x/ref_y.*numeric"),
     (([1.0], [1.0], [1.0], [1.0]), 0.0, ValueError, "separation"),
     (([1.0], [1.0], [1.0], [1.0]), -1.0, ValueError, "separation"),
     (([1.0], [1.0], [1.0], [1.0]), np.nan, ValueError, "separation"),
     (([1.0], [1.0], [1.0], [1.0]), "1", TypeError, "separation")],
)
def test_match_xy_errors(args, sep, exc, match):
    with pytest.raises(exc, match=match):
        match_xy(*args, separation=sep)


def test_separation_is_required_keyword():
    with pytest.raises(TypeError):
        match_xy([1.0], [1.0], [1.0], [1.0], 1.0)


def make_tables(rng):
    truth = QTable({"id": np.arange(1, 6), "x_0": [10.0, 20.0, 30.0, 40.0, 50.0],
                    "y_0": [5.0, 5.0, 5.0, 5.0, 5.0], "flux": [1.0, 2.0, 3.0, 4.0, 5.0]})
    perm = np.array([3, 0, 4, 1])
    phot = QTable({"id": np.arange(1, 5), "x_fit": truth["x_0"][perm] + 0.1,
                   "y_fit": truth["y_0"][perm] - 0.2, "flux_fit": truth["flux"][perm] * 1.01})
    truth.meta["source"] = "sim"
    return truth, phot, perm


def test_match_catalogs_join(rng):
    truth, phot, perm = make_tables(rng)
    out = match_catalogs(truth, phot, separation=1.0)
    assert isinstance(out, QTable)
    assert out.colnames == ["id_truth", "x_0", "y_0", "flux", "id_catalog", "x_fit", "y_fit",
                            "flux_fit"]
    assert out["id_truth"].tolist() == [1, 2, 4, 5]
    np.testing.assert_allclose(out["x_fit"] - out["x_0"], 0.1)
    np.testing.assert_allclose(out["flux_fit"] / out["flux"], 1.01)
    assert out.meta == {"n_truth": 5, "n_catalog": 4, "separation": 1.0}
    # The truth table is not modified.
    assert truth.colnames == ["id", "x_0", "y_0", "flux"] and truth.meta["source"] == "sim"


def test_match_catalogs_custom_columns_units_and_masks():
    truth = Table({"xc": [1.0, 9.0] * u.pix, "yc": [1.0, 1.0] * u.pix})
    cat = Table({"xcentroid": MaskedColumn([9.2, 1.1, 3.0], mask=[False, False, True]),
                 "ycentroid": [1.0, 1.0, 1.0]})
    out = match_catalogs(truth, cat, separation=0.5, truth_xy=("xc", "yc"),
                         catalog_xy=("xcentroid", "ycentroid"))
    assert len(out) == 2
    assert out["xc"].unit == u.pix
    np.testing.assert_allclose(out["xcentroid"], [1.1, 9.2])
    empty = match_catalogs(truth, cat[:0], separation=0.5, truth_xy=("xc", "yc"),
                           catalog_xy=("xcentroid", "ycentroid"))
    assert len(empty) == 0 and "xcentroid" in empty.colnames


def test_match_catalogs_errors(rng):
    truth, phot, _ = make_tables(rng)
    with pytest.raises(ValueError, match=r"catalog has no column\(s\) \['xx'\]"):
        match_catalogs(truth, phot, catalog_xy=("xx", "y_fit"))
    with pytest.raises(ValueError, match="truth_xy must be a pair"):
        match_catalogs(truth, phot, truth_xy="x_0")
    with pytest.raises(TypeError, match="truth must be an astropy Table"):
        match_catalogs({"x_0": [1.0]}, phot)
    with pytest.raises(ValueError, match="separation"):
        match_catalogs(truth, phot, separation=0)


def test_match_summary(rng):
    truth, phot, _ = make_tables(rng)
    s = match_summary(truth, phot, separation=1.0)
    assert (s["n_truth"], s["n_catalog"], s["n_matched"]) == (5, 4, 4)
    assert s["completeness"] == pytest.approx(0.8) and s["purity"] == 1.0
    assert s["median_dx"] == pytest.approx(0.1) and s["median_dy"] == pytest.approx(-0.2)
    assert s["median_separation"] == pytest.approx(np.hypot(0.1, 0.2))
    none = match_summary(truth, phot[:0])
    assert none["n_matched"] == 0 and np.isnan(none["purity"]) and np.isnan(none["median_dx"])
