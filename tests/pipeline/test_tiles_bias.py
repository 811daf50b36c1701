"""photometry_tiled(bias_correction=True): each task corrects the groups it fits."""

import numpy as np
import pytest

import crowdphot as cp
from _tiled import TILE, _config, _val, assert_same_catalog
from crowdphot.pipeline.tiles import photometry_tiled


def test_tiled_bias_correction_equals_untiled(crowded):
    model, data, error, _ = crowded
    whole = cp.PSFPhotometry(model, 5, bias_correction=True, **_config())(data, error=error)
    plain = cp.PSFPhotometry(model, 5, **_config())(data, error=error)
    tiled = photometry_tiled(data, model, 5, error=error, tile_shape=TILE,
                             bias_correction=True, **_config())
    assert_same_catalog(tiled, whole)
    # the correction did something: the fainter groups' fluxes came down (groups all above
    # S/N 100 are left alone, their bias is under 0.01 sigma)
    d = _val(plain["flux_fit"]) - _val(whole["flux_fit"])
    assert np.count_nonzero(d > 0) > 30 and np.median(d[d != 0]) > 0


def test_tiled_all_star_bias_correction_equals_untiled(crowded):
    model, data, error, _ = crowded
    kw = _config(subtract_neighbors=True, bias_correction=True)
    whole = cp.PSFPhotometry(model, 5, **kw)(data, error=error)
    tiled = photometry_tiled(data, model, 5, error=error, tile_shape=TILE, **kw)
    assert_same_catalog(tiled, whole, xy_tol=2e-3, flux_rtol=1e-3)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({}, ValueError, "bias_correction=True needs error"),
    ({"likelihood": "poisson", "read_noise": 5.0}, ValueError, "is for likelihood='gaussian'"),
    ({"bias_correction": "yes"}, TypeError, "bias_correction must be True or False"),
])
def test_tiled_bias_correction_checks(crowded, kwargs, exc, match):
    model, data, _, _ = crowded
    kw = {"bias_correction": True, **kwargs}
    with pytest.raises(exc, match=match):
        photometry_tiled(data, model, 5, tile_shape=TILE, **_config(**kw))
