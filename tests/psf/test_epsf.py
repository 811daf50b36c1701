"""ePSF building: batched kernels against brute-force oracles, EPSFBuilder against photutils."""

import warnings

import numpy as np
import pytest
from astropy.nddata import NDData, StdDevUncertainty
from astropy.stats import SigmaClip
from astropy.table import Table
from scipy import interpolate

from crowdphot import CircularGaussianPRF, make_noise_image, make_psf_model_image
from crowdphot.core.kernels.epsf import (
    centroid_com,
    clipped_median_by_node,
    grid_nodes,
    interpolate_missing,
)
from crowdphot.psf import EPSFBuilder, EPSFStar, EPSFStars, ImagePSF, extract_stars

photutils_psf = pytest.importorskip("photutils.psf")


@pytest.fixture(scope="module")
def scene():
    data, params = make_psf_model_image((400, 400), CircularGaussianPRF(fwhm=2.7), 60,
                                        model_shape=(11, 11), flux=(2000, 20000),
                                        min_separation=25, border_size=20, seed=3)
    data = data + make_noise_image(data.shape, mean=0.0, stddev=1.0, seed=4)
    return data, Table({"x": params["x_0"], "y": params["y_0"]})


def test_clipped_median_matches_astropy_sigma_clip():
    rng = np.random.default_rng(0)
    n_nodes = 50
    node = rng.integers(0, n_nodes, 3000)
    node[:40] = 7
    values = rng.normal(0, 1, 3000)
    values[::97] += 40.0  # outliers
    node[rng.random(3000) < 0.02] = -1
    got = clipped_median_by_node(node, values, n_nodes + 3, sigma_lower=2.5, sigma_upper=3.0,
                                 maxiters=10)
    sc = SigmaClip(sigma_lower=2.5, sigma_upper=3.0, maxiters=10)
    for k in range(n_nodes + 3):
        v = values[node == k]
        if len(v) == 0:
            assert np.isnan(got[k])
            continue
        assert got[k] == pytest.approx(np.nanmedian(sc(v, masked=False)), abs=1e-12)


def test_grid_nodes_round_half_away():
    # sample indices exactly between two samples round up (away from zero), as photutils
    node = grid_nodes(np.array([-0.125, 0.125]), np.zeros(2), (4, 4), (4.0, 4.0), (9, 9))
    assert node.tolist() == [4 * 9 + 4, 4 * 9 + 5]


def test_interpolate_missing_equals_full_triangulation():
    y, x = np.indices((41, 41))
    data = np.exp(-((x - 20.3) ** 2 + (y - 19.6) ** 2) / 40.0)
    mask = np.zeros(data.shape, bool)
    mask[0, ::3] = True
    mask[:, -1] = True
    mask[20, 20] = mask[5, 30] = True
    got = interpolate_missing(data, mask)
    full = interpolate.CloughTocher2DInterpolator(np.column_stack([x[~mask], y[~mask]]),
                                                  data[~mask])
    want = data.copy()
    want[mask] = full(np.column_stack([x[mask], y[mask]]))
    nn = ~np.isfinite(want)
    near = interpolate.NearestNDInterpolator(np.column_stack([x[~nn], y[~nn]]), want[~nn])
    want[nn] = near(np.column_stack([x[nn], y[nn]]))
    assert np.all(np.isfinite(got))
    # the band triangulation may split the (degenerate, square) cells the other way: the
    # values differ from the full triangulation by less than either differs from the truth
    assert np.max(np.abs(got - want)) < 2e-3 * data.max()
    assert np.max(np.abs(got - data)) < 4e-3 * data.max()
    assert np.array_equal(got[~mask], data[~mask])


def test_centroid_com_masks():
    d = np.zeros((7, 7))
    d[2, 5] = 1.0
    d[4, 1] = np.nan
    assert centroid_com(d).tolist() == [5.0, 2.0]
    assert np.all(np.isnan(centroid_com(np.zeros((3, 3)))))


@pytest.mark.parametrize("oversampling", [1, 3])
def test_builder_equals_photutils(scene, oversampling):
    data, cat = scene
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = extract_stars(NDData(data), cat, size=19)
        theirs = photutils_psf.extract_stars(NDData(data), cat, size=19)
    kw = {"oversampling": oversampling, "maxiters": 4, "progress_bar": False}
    res = EPSFBuilder(**kw)(ours)
    ref = photutils_psf.EPSFBuilder(**kw)(theirs)
    assert isinstance(res.epsf, ImagePSF)
    assert res.epsf.data.shape == ref.epsf.data.shape
    peak = ref.epsf.data.max()
    assert np.max(np.abs(res.epsf.data - ref.epsf.data)) < 1e-3 * peak
    assert np.max(np.abs(res.fitted_stars.center_flat - ref.fitted_stars.center_flat)) < 1e-3
    assert res.iterations == ref.iterations
    assert res.epsf.data.sum() == pytest.approx(oversampling ** 2)


def test_batched_fit_equals_per_star_fit(scene):
    data, cat = scene
    err = np.full(data.shape, 2.0)
    err[::7, ::5] = 4.0
    nd = NDData(data, uncertainty=StdDevUncertainty(err))
    stars = extract_stars(nd, cat[:12], size=15)
    builder = EPSFBuilder(oversampling=2, maxiters=2, progress_bar=False)
    epsf, _ = builder(stars)
    batched = builder._fit_stars(epsf, stars)
    single = EPSFStars([builder._fit_star(epsf, s) for s in stars])
    assert np.allclose(batched.center_flat, single.center_flat, atol=2e-5)
    assert np.allclose(batched.flux, single.flux, rtol=2e-5)


def test_fit_box_outside_cutout_is_status_1():
    yy, xx = np.mgrid[:9, :9]
    star = EPSFStar(np.exp(-((xx - 1.2) ** 2 + (yy - 4) ** 2) / 3.0), cutout_center=(1.2, 4.0))
    epsf = ImagePSF(np.exp(-((xx - 4) ** 2 + (yy - 4) ** 2) / 3.0) + 0.0)
    builder = EPSFBuilder(oversampling=1, progress_bar=False)
    fitted = builder._fit_stars(epsf, EPSFStars([star]))
    assert fitted.all_stars[0]._fit_error_status == 1


def test_recovers_known_epsf():
    """Stars rendered from a known oversampled PSF give that PSF back (to noise)."""
    psf = CircularGaussianPRF(fwhm=3.0)
    data, params = make_psf_model_image((500, 500), psf, 120, model_shape=(15, 15),
                                        flux=(5e4, 1e5), min_separation=30, border_size=20,
                                        seed=5)
    data = data + make_noise_image(data.shape, mean=0.0, stddev=1.0, seed=6)
    stars = extract_stars(NDData(data), Table({"x": params["x_0"], "y": params["y_0"]}),
                          size=21)
    epsf, fitted = EPSFBuilder(oversampling=2, maxiters=6, progress_bar=False,
                               smoothing_kernel=None)(stars)
    yy, xx = np.mgrid[-5:5.01:0.5, -5:5.01:0.5]
    true = psf.evaluate(xx, yy, 1.0, 0.0, 0.0, 3.0)
    got = epsf.evaluate(xx, yy, 1.0, 0.0, 0.0)
    assert np.max(np.abs(got - true)) < 0.02 * true.max()
    assert len(fitted) == len(params)
    dxy = fitted.center_flat - np.column_stack([params["x_0"], params["y_0"]])
    assert np.all(np.std(dxy, axis=0) < 0.02)  # pixel-phase error of a 2x ePSF
    assert np.all(np.abs(np.mean(dxy, axis=0)) < 0.01)


def test_input_errors():
    with pytest.raises(ValueError, match="oversampling must be > 0"):
        EPSFBuilder(oversampling=0)
    with pytest.raises(TypeError, match="sigma_clip must be an astropy.stats.SigmaClip"):
        EPSFBuilder(sigma_clip=3.0)
    with pytest.raises(ValueError, match="size must have an odd value"):
        extract_stars(NDData(np.zeros((20, 20))), Table({"x": [10.0], "y": [10.0]}), size=4)
    with pytest.raises(ValueError, match="EPSFStars object must contain at least one star"):
        EPSFBuilder(progress_bar=False)(EPSFStars([]))
