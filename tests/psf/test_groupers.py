"""Tests for crowdphot.psf.groupers: photutils parity, brute-force oracle, numbering."""

import astropy.units as u
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from photutils.datasets import make_model_params
from photutils.psf import SourceGrouper as PhotutilsGrouper
from photutils.psf import SourceGroups as PhotutilsGroups

from crowdphot.psf.groupers import SourceGrouper, SourceGroups, group_sources


def union_find_groups(x, y, min_separation):
    """O(n^2) oracle: union every pair with d <= min_separation, number by first appearance."""
    n = len(x)
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in range(n):
        for b in range(a + 1, n):
            dx, dy = x[a] - x[b], y[a] - y[b]
            # The documented rule, evaluated with the same arithmetic as photutils' pdist.
            if np.sqrt(dx * dx + dy * dy) <= min_separation:
                parent[find(a)] = find(b)
    ids, out = {}, []
    for a in range(n):
        out.append(ids.setdefault(find(a), len(ids) + 1))
    return np.array(out)


def photutils_groups(x, y, min_separation):
    return PhotutilsGrouper(min_separation)(np.asarray(x, float), np.asarray(y, float))


@pytest.mark.parametrize(("n", "side", "sep"), [(50, 100.0, 5.0), (400, 300.0, 12.0),
                                                 (1500, 500.0, 10.0), (1500, 200.0, 6.0)])
def test_parity_random_positions(rng, n, side, sep):
    x = rng.uniform(0, side, n)
    y = rng.uniform(0, side, n)
    ours = SourceGrouper(sep)(x, y)
    theirs = photutils_groups(x, y, sep)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, theirs)
    # Dense cases must actually exercise chaining, else the parity check is weak.
    if side / np.sqrt(n) < 2 * sep:
        assert np.bincount(ours).max() >= 3


def test_parity_notebook_true_positions():
    params = make_model_params((2048, 2048), 500, min_separation=25, border_size=50, seed=0,
                               flux=(500, 20000))
    x, y = params["x_0"], params["y_0"]
    ours = SourceGrouper(35)(x, y)
    np.testing.assert_array_equal(ours, photutils_groups(x, y, 35))
    # The notebook reports 428 groups for its detected positions; the true ones give 428 too.
    assert ours.max() == 428
    assert np.array_equal(np.unique(ours), np.arange(1, 429))


def test_exact_boundary_distance_is_grouped():
    # 3-4-5 triangles: distance exactly 5 is representable, photutils groups at d <= sep.
    x = np.array([0.0, 3.0, 100.0, 103.0, 200.0])
    y = np.array([0.0, 4.0, 0.0, 4.000001, 0.0])
    ours = SourceGrouper(5)(x, y)
    np.testing.assert_array_equal(ours, [1, 1, 2, 3, 4])
    np.testing.assert_array_equal(ours, photutils_groups(x, y, 5))


def test_parity_integer_lattice_many_ties(rng):
    # Integer positions produce many exact ties at the linking length.
    x = rng.integers(0, 60, 800).astype(float)
    y = rng.integers(0, 60, 800).astype(float)
    for sep in (1.0, 2.0, 5.0, np.sqrt(2.0)):
        np.testing.assert_array_equal(SourceGrouper(sep)(x, y), photutils_groups(x, y, sep))


@settings(max_examples=60, deadline=None)
@given(
    pts=st.lists(
        st.tuples(st.floats(0, 50, allow_nan=False), st.floats(0, 50, allow_nan=False)),
        min_size=1, max_size=40,
    ),
    sep=st.floats(0.5, 15.0),
)
def test_matches_union_find_oracle(pts, sep):
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    np.testing.assert_array_equal(SourceGrouper(sep)(x, y), union_find_groups(x, y, sep))


def test_chain_links_distant_ends():
    x = np.arange(10) * 4.0
    y = np.zeros(10)
    ids = SourceGrouper(4.5)(x, y)
    assert np.all(ids == 1)
    assert np.all(SourceGrouper(3.9)(x, y) == np.arange(1, 11))


def test_numbering_by_first_appearance():
    # Source 0 alone, sources 1 and 3 together, source 2 alone.
    x = np.array([100.0, 0.0, 50.0, 1.0])
    y = np.zeros(4)
    np.testing.assert_array_equal(SourceGrouper(2)(x, y), [1, 2, 3, 2])


def test_partition_invariant_under_permutation(rng):
    x = rng.uniform(0, 200, 600)
    y = rng.uniform(0, 200, 600)
    ids = SourceGrouper(8)(x, y)
    perm = rng.permutation(600)
    ids_p = SourceGrouper(8)(x[perm], y[perm])
    # Same partition: the label maps are bijections between the two labelings.
    pairs = np.unique(np.column_stack((ids[perm], ids_p)), axis=0)
    assert len(pairs) == ids.max() == ids_p.max()


def test_single_source_and_inputs():
    assert SourceGrouper(3)(5.0, 7.0).tolist() == [1]
    ids = SourceGrouper(3)([0, 1, 10] * u.pix, [0, 0, 0] * u.pix)
    np.testing.assert_array_equal(ids, [1, 1, 2])
    np.testing.assert_array_equal(group_sources(np.array([0.0]), np.array([0.0]), 1.0), [1])
    np.testing.assert_array_equal(
        group_sources(np.array([0.0, 9.0]), np.array([0.0, 0.0]), 1.0), [1, 2]
    )


def test_repr_like_photutils():
    assert repr(SourceGrouper(10)) == repr(PhotutilsGrouper(10))
    assert repr(SourceGrouper(2.5)) == repr(PhotutilsGrouper(2.5))


@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [(0, ValueError, "min_separation"), (-1.0, ValueError, "min_separation"),
     (np.nan, ValueError, "min_separation"), (np.inf, ValueError, "min_separation"),
     ("5", TypeError, "min_separation"), (True, TypeError, "min_separation"),
     (None, TypeError, "min_separation")],
)
def test_bad_min_separation(value, exc, match):
    with pytest.raises(exc, match=match):
        SourceGrouper(value)


@pytest.mark.parametrize(
    ("x", "y", "exc", "match"),
    [([1.0, 2.0], [1.0], ValueError, "equal length"),
     (np.zeros((2, 2)), np.zeros((2, 2)), ValueError, "1D"),
     ([], [], ValueError, "empty"),
     ([1.0, np.nan], [1.0, 2.0], ValueError, "x contains NaN"),
     ([1.0, 2.0], [1.0, np.inf], ValueError, "y contains NaN"),
     (["a", "b"], [1.0, 2.0], TypeError, "numeric")],
)
def test_bad_positions(x, y, exc, match):
    with pytest.raises(exc, match=match):
        SourceGrouper(3)(x, y)


def test_positional_return_groups_object_is_deprecated_not_refused():
    from astropy.utils.exceptions import AstropyDeprecationWarning

    with pytest.warns(AstropyDeprecationWarning, match="positionally"):
        groups = SourceGrouper(3)([0.0], [0.0], True)
    assert list(groups.groups) == [1]


def test_source_groups_matches_photutils(rng):
    x = rng.uniform(0, 100, 300)
    y = rng.uniform(0, 100, 300)
    ours = SourceGrouper(6)(x, y, return_groups_object=True)
    theirs = PhotutilsGrouper(6)(x, y, return_groups_object=True)
    assert isinstance(ours, SourceGroups)
    assert repr(ours) == repr(theirs)
    assert len(ours) == len(theirs) == 300
    assert ours.n_groups == theirs.n_groups
    np.testing.assert_array_equal(ours.groups, theirs.groups)
    np.testing.assert_array_equal(ours.sizes, theirs.sizes)
    assert ours.size_map == theirs.size_map
    centers, ref = ours.group_centers, theirs.group_centers
    assert centers.keys() == ref.keys()
    np.testing.assert_allclose([centers[k] for k in ref], [ref[k] for k in ref], rtol=1e-12)
    big = max(ref, key=lambda k: theirs.size_map[k])
    for a, b in zip(ours.get_group_sources(big), theirs.get_group_sources(big), strict=True):
        np.testing.assert_array_equal(a, b)


def test_source_groups_errors():
    with pytest.raises(ValueError, match="same shape"):
        SourceGroups([1, 2], [1, 2], [1])
    groups = SourceGroups([1, 2], [1, 2], [1, 1])
    with pytest.raises(ValueError, match="Group ID 7 not found"):
        groups.get_group_sources(7)
    # Same shape check as photutils
    with pytest.raises(ValueError):
        PhotutilsGroups([1, 2], [1, 2], [1])


def test_source_groups_plot_draws_one_circle_per_source():
    x = np.array([10.0, 12.0, 40.0, 80.0])
    y = np.array([10.0, 11.0, 40.0, 20.0])
    groups = SourceGrouper(5)(x, y, return_groups_object=True)
    ax = Figure().subplots()
    out = groups.plot(3, ax=ax, label_groups=True, lw=2)
    assert out is ax
    (coll,) = ax.collections
    assert len(coll.get_paths()) == 4
    edge = coll.get_edgecolors()
    # Members of one group share a colour, different groups get different colours.
    np.testing.assert_array_equal(edge[0], edge[1])
    assert not np.array_equal(edge[0], edge[2])
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]
    ax2 = Figure().subplots()
    groups.plot(3, ax=ax2, cmap="viridis")
    assert len(ax2.collections) == 1


def test_parity_wide_spread_duplicates_and_clusters(rng):
    # clusters far apart (the kernel's cells adapt to the span), exact duplicates, ties
    centres = rng.uniform(-1e6, 1e6, (12, 2))
    pts = centres[rng.integers(0, 12, 600)] + rng.integers(-20, 21, (600, 2))
    pts[:40] = pts[0]
    x, y = pts[:, 0].astype(float), pts[:, 1].astype(float)
    for sep in (1.0, 3.0, 5.0):
        ours = SourceGrouper(sep)(x, y)
        np.testing.assert_array_equal(ours, photutils_groups(x, y, sep))
        np.testing.assert_array_equal(ours, union_find_groups(x, y, sep))
