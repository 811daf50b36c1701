"""Tests for crowdphot.utils.colormaps: random colormap parity with photutils, simple_norm."""

import numpy as np
import pytest
from astropy.utils.exceptions import AstropyDeprecationWarning
from astropy.visualization import simple_norm as astropy_simple_norm
from matplotlib.colors import ListedColormap, rgb_to_hsv
from photutils.utils import make_random_cmap as photutils_cmap

import crowdphot
from crowdphot.utils.colormaps import make_random_cmap, simple_norm


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (7, 1), (256, 42), (500, 123)])
def test_same_colours_as_photutils(n, seed):
    ours = make_random_cmap(n_colors=n, seed=seed)
    theirs = photutils_cmap(n_colors=n, seed=seed)
    assert isinstance(ours, ListedColormap)
    assert ours.N == theirs.N == n
    np.testing.assert_array_equal(np.asarray(ours.colors), np.asarray(theirs.colors))


def test_notebook_spelling_and_defaults():
    # The notebook calls make_random_cmap(ncolors=500, seed=123): photutils 3 warns, so do we.
    with pytest.warns(AstropyDeprecationWarning, match="'ncolors' was deprecated"):
        cmap = make_random_cmap(ncolors=500, seed=123)
    np.testing.assert_array_equal(cmap.colors, make_random_cmap(500, seed=123).colors)
    assert make_random_cmap(seed=1).N == 256
    assert cmap.colors.shape == (500, 4)


def test_colour_ranges_and_seeding():
    colors = make_random_cmap(n_colors=2000, seed=5).colors
    hsv = rgb_to_hsv(colors[:, :3])
    assert np.all(colors[:, 3] == 1.0)
    assert hsv[:, 1].min() >= 0.2 - 1e-9 and hsv[:, 1].max() < 0.7 + 1e-9
    assert hsv[:, 2].min() >= 0.5 - 1e-9 and hsv[:, 2].max() < 1.0 + 1e-9
    assert not np.array_equal(colors, make_random_cmap(n_colors=2000, seed=6).colors)
    rng_seeded = make_random_cmap(n_colors=3, seed=np.random.default_rng(9))
    np.testing.assert_array_equal(
        rng_seeded.colors, photutils_cmap(n_colors=3, seed=np.random.default_rng(9)).colors)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [({"n_colors": 0}, ValueError, "at least 1"), ({"ncolors": -3}, ValueError, "at least 1"),
     ({"n_colors": 2.5}, TypeError, "integer"), ({"n_colors": True}, TypeError, "integer"),
     ({"n_colors": 10, "ncolors": 10}, TypeError, "either")],
)
@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyDeprecationWarning")
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_random_cmap(**kwargs)


def test_simple_norm_is_astropys():
    assert simple_norm is astropy_simple_norm
    data = np.arange(100.0).reshape(10, 10)
    norm = simple_norm(data, "sqrt", percent=98)
    assert 0.0 <= norm(50.0) <= 1.0


def test_top_level_exports():
    assert crowdphot.make_random_cmap is make_random_cmap
    assert crowdphot.simple_norm is astropy_simple_norm
