"""Tiled photometry with a sky: subtracted (or in the Poisson expectation) in every task, as in a
whole-image run; the sky map estimated once on a small image, per task region on a large one,
or given by the user (issue #14), in process and over Dask."""

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

import crowdphot as cp
from _tiled import FWHM, SHAPE, TILE, _by_position, _config, _val, assert_same_catalog
from crowdphot.pipeline._planes import ArrayPlanes
from crowdphot.pipeline.tiles import photometry_tiled, tile_grid

SKY_BOX = 32
SKY_NOISE = 2.0


def _gradient_sky(shape):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return 30.0 + 3.0 * xx / shape[1] - 2.0 * yy / shape[0]


@pytest.fixture(scope="module")
def sky_scene():
    """Stars on a sky of 30 with a gradient; the whole-image sky map (estimate_sky)."""
    from crowdphot.background.sky import estimate_sky

    model = cp.CircularGaussianPRF(fwhm=FWHM)
    stars, truth = cp.make_psf_model_image(SHAPE, model, 120, flux=(300, 3000),
                                           min_separation=6, seed=21, model_shape=(11, 11),
                                           border_size=0)
    data = stars + _gradient_sky(SHAPE) + np.random.default_rng(8).normal(0.0, SKY_NOISE,
                                                                           SHAPE)
    sky, rms, _ = estimate_sky(data, box_size=SKY_BOX, fwhm=FWHM)
    return model, data, truth, sky, float(np.median(rms))


def _pull_per_sky(model, fit=5):
    """Flux change in units of its error per unit of sky offset / pixel noise.

    A weighted fit of ``flux * p`` to a stamp with an extra constant ``d`` moves the flux by
    ``d * sum(p) / sum(p**2)``; its error is ``sigma / sqrt(sum(p**2))``.
    """
    yy, xx = np.mgrid[:fit, :fit]
    p = model.copy()
    p.x_0, p.y_0, p.flux = fit // 2, fit // 2, 1.0
    v = p(xx, yy)
    return float(v.sum() / np.sqrt((v**2).sum()))


def test_tile_sky_map_equals_the_whole_image_map(sky_scene):
    """Each task's map (its box + 3 sky boxes on the global grid) is the whole-image map
    up to a remainder from the region's edges: below 5 % of the pixel noise. An image small
    enough for one whole-image map (task_spec 'whole') gets exactly that map."""
    from crowdphot.pipeline._sky import check_tile_sky, sky_region, task_spec, tile_sky

    _, data, _, whole, rms = sky_scene
    spec = check_tile_sky("map", {"box_size": SKY_BOX, "fwhm": FWHM}, SHAPE)
    source = ArrayPlanes(data)
    worst = 0.0
    for tile in tile_grid(SHAPE, TILE):
        box = tile.box(12, SHAPE)
        ry0, ry1, rx0, rx1 = sky_region(box, SHAPE, (SKY_BOX, SKY_BOX))
        assert ry0 % SKY_BOX == 0 and rx0 % SKY_BOX == 0  # the whole image's boxes
        assert ry1 % SKY_BOX == 0 or ry1 == SHAPE[0]
        sky = tile_sky(source, box, spec)
        worst = max(worst, float(np.abs(sky - whole[box[0]:box[1], box[2]:box[3]]).max()))
    assert worst < 0.05 * rms
    # with the region reaching every image edge the map is the whole-image map exactly
    full = tile_sky(source, (0, SHAPE[0], 0, SHAPE[1]), spec)
    np.testing.assert_array_equal(full, whole)
    # a small image: one whole-image map, cut for every task
    small = task_spec(spec, SHAPE)
    assert small[0] == "whole" and task_spec(spec, (10**4, 10**4)) == spec
    np.testing.assert_array_equal(tile_sky(source, (30, 90, 7, 100), small),
                                  whole[30:90, 7:100])
    assert tile_sky(source, (3, 5, 7, 8), ("value", 2.5)).tolist() == [[2.5], [2.5]]


@pytest.mark.parametrize("scope", ["image", "tile"])
def test_tiled_sky_map_equals_whole_image_with_the_map_subtracted(sky_scene, scope,
                                                                  monkeypatch):
    """A small image: the sky map is estimated once on the whole image (one estimate_sky
    call) and the catalog is the whole-image run's to rounding. Per tile region (a large
    image): fluxes within the pull the sky remainder (< 0.05 sigma) allows: 0.05 * sum p /
    sqrt(sum p^2) of their errors. Without the sky every star is far too bright."""
    import crowdphot.background.sky as skymod
    import crowdphot.pipeline._sky as tilesky

    model, data, truth, sky, _ = sky_scene
    error = np.full(SHAPE, SKY_NOISE)
    kw = dict(finder=cp.DAOStarFinder(threshold=12.0, fwhm=FWHM), grouper=cp.SourceGrouper(8),
              aperture_radius=4, group_warning_threshold=10**9)
    whole = cp.PSFPhotometry(model, 5, **kw)(data - sky, error=error)
    if scope == "tile":
        monkeypatch.setattr(tilesky, "WHOLE_SKY_PIXELS", 0)
    calls = []
    real = skymod.estimate_sky
    monkeypatch.setattr(skymod, "estimate_sky", lambda *a, **k: calls.append(1) or real(*a, **k))
    tiled = photometry_tiled(data, model, 5, error=error, tile_shape=TILE, sky="map",
                             sky_options={"box_size": SKY_BOX, "fwhm": FWHM}, **kw)
    assert tiled.meta["sky"] == "map" and tiled.meta["sky_box"] == (SKY_BOX, SKY_BOX)
    assert tiled.meta["sky_scope"] == scope
    if scope == "image":
        assert len(calls) == 1
        assert_same_catalog(tiled, whole, xy_tol=1e-9, flux_rtol=1e-9)
    assert len(tiled) == len(whole)
    a, b = _by_position(tiled), _by_position(whole)
    np.testing.assert_allclose(_val(a["x_init"]), _val(b["x_init"]), atol=0.01)
    pull = (_val(a["flux_fit"]) - _val(b["flux_fit"])) / _val(b["flux_err"])
    assert np.nanmax(np.abs(pull)) < 0.05 * _pull_per_sky(model)
    assert np.nanmedian(np.abs(pull)) < 0.01
    # and against the truth: no sky left in the fluxes
    m = cp.match_catalogs(truth, tiled, separation=1.0)
    assert len(m) >= 0.95 * len(truth)
    assert abs(np.median(_val(m["flux_fit"]) / _val(m["flux"]) - 1)) < 0.005
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = photometry_tiled(data, model, 5, error=error, tile_shape=TILE,
                               init_params=QTable({"x": truth["x_0"], "y": truth["y_0"]}),
                               **{k: v for k, v in kw.items() if k != "finder"})
    assert np.median(_val(raw["flux_fit"]) / np.asarray(truth["flux"]) - 1) > 0.05


def test_sky_map_cache_estimates_each_region_once_and_changes_nothing(sky_scene,
                                                                     monkeypatch):
    """In process, the all-star rounds reuse their first round's region maps (the cache
    hits), and the catalog is bit for bit the one estimated afresh in every task."""
    import contextlib

    import crowdphot.background.sky as skymod
    import crowdphot.pipeline._sky as tilesky
    import crowdphot.pipeline._tilecache as tilecache

    model, data, _, _, _ = sky_scene
    kw = dict(finder=cp.DAOStarFinder(threshold=12.0, fwhm=FWHM), grouper=cp.SourceGrouper(8),
              aperture_radius=4, group_warning_threshold=10**9, tile_shape=TILE, sky="map",
              sky_options={"box_size": SKY_BOX, "fwhm": FWHM}, subtract_neighbors=True)
    error = np.full(SHAPE, SKY_NOISE)
    calls = []
    real = skymod.estimate_sky
    monkeypatch.setattr(skymod, "estimate_sky", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(tilesky, "WHOLE_SKY_PIXELS", 0)  # per tile region, as a large image
    cached = photometry_tiled(data, model, 5, error=error, **kw)
    assert cached.meta["sky_scope"] == "tile"
    n_cached = len(calls)
    monkeypatch.setattr(tilecache, "sky_cache", lambda *a, **k: contextlib.nullcontext())
    fresh = photometry_tiled(data, model, 5, error=error, **kw)
    assert n_cached < len(calls) - n_cached
    assert len(cached) == len(fresh)
    for name in ("x_fit", "y_fit", "flux_fit", "flux_err", "flags"):
        np.testing.assert_array_equal(_val(cached[name]), _val(fresh[name]))


def test_tiled_constant_sky_equals_whole_image_minus_that_sky(crowded):
    model, data, error, _ = crowded
    whole = cp.PSFPhotometry(model, 5, **_config())(data - 5.0, error=error)
    tiled = photometry_tiled(data, model, 5, error=error, tile_shape=TILE, sky=5.0,
                             **_config())
    assert_same_catalog(tiled, whole)
    assert tiled.meta["sky"] == "constant" and tiled.meta["sky_median"] == 5.0
    # a Quantity in another unit, with data in Jy: converted (5000 mJy = 5 Jy)
    kw = _config(finder=cp.DAOStarFinder(threshold=25.0 * u.Jy, fwhm=FWHM))
    in_jy = photometry_tiled(data * u.Jy, model, 5, error=error * u.Jy, tile_shape=TILE,
                             sky=5000.0 * u.mJy, **kw)
    assert in_jy.meta["sky_median"] == pytest.approx(5.0)
    np.testing.assert_allclose(_val(in_jy["flux_fit"]), _val(tiled["flux_fit"]), rtol=1e-9)


def test_tiled_poisson_sky_map_is_in_the_expectation(sky_scene):
    """likelihood='poisson': counts keep their sky, each task's map enters the expected
    counts, as PSFPhotometry(...)(counts, sky=whole-image map)."""
    from crowdphot.background.sky import estimate_sky

    model = cp.CircularGaussianPRF(fwhm=FWHM)
    stars, truth = cp.make_psf_model_image(SHAPE, model, 80, flux=(2000, 20000),
                                           min_separation=8, seed=4, model_shape=(11, 11))
    counts = np.random.default_rng(3).poisson(stars + _gradient_sky(SHAPE)).astype(float)
    sky, _, _ = estimate_sky(counts, box_size=SKY_BOX, fwhm=FWHM)
    init = QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": truth["flux"]})
    kw = dict(grouper=cp.SourceGrouper(8), group_warning_threshold=10**9,
              likelihood="poisson", read_noise=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = cp.PSFPhotometry(model, 5, **kw)(counts, init_params=init, sky=sky)
        tiled = photometry_tiled(counts, model, 5, init_params=init, tile_shape=TILE,
                                 sky="map", sky_options={"box_size": SKY_BOX, "fwhm": FWHM},
                                 **kw)
    # the noise at the sky level is sqrt(30) > 5: the same 0.05-sigma remainder bound
    pull = (_val(tiled["flux_fit"]) - _val(whole["flux_fit"])) / _val(whole["flux_err"])
    assert np.nanmax(np.abs(pull)) < 0.05 * _pull_per_sky(model)
    rel = _val(tiled["flux_fit"]) / np.asarray(truth["flux"]) - 1
    assert abs(np.median(rel)) < 0.005


@pytest.fixture(scope="module")
def poisson_sky_map():
    """Counts (Poisson, sky included) and the sky map a user would give (issue #14)."""
    from crowdphot.background.sky import estimate_sky

    model = cp.CircularGaussianPRF(fwhm=FWHM)
    stars, truth = cp.make_psf_model_image(SHAPE, model, 90, flux=(1500, 20000),
                                           min_separation=5, seed=14, model_shape=(11, 11),
                                           border_size=0)
    counts = np.random.default_rng(15).poisson(stars + _gradient_sky(SHAPE)).astype(float)
    sky, _, _ = estimate_sky(counts, box_size=SKY_BOX, fwhm=FWHM)
    kw = dict(grouper=cp.SourceGrouper(8), group_warning_threshold=10**9,
              likelihood="poisson", read_noise=3.0, gain=1.0, aperture_radius=4)
    return model, counts, sky, truth, kw


def test_tiled_poisson_with_a_sky_map_equals_untiled(poisson_sky_map, tmp_path):
    """sky= a 2-D map with likelihood='poisson' (issue #14): each task gets its cut-out of the
    map (halo included) in the expected counts; found and fitted as
    PSFPhotometry(...)(counts, sky=map): the same catalog to the fits' convergence noise
    (1e-6 px, 1e-7 in flux). In memory, from a memory-mapped FITS file with a memory-mapped
    map, and as a Quantity."""
    model, counts, sky, truth, kw = poisson_sky_map
    finder = cp.DAOStarFinder(threshold=40.0, fwhm=FWHM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = cp.PSFPhotometry(model, 5, finder=finder, **kw)(counts, sky=sky)
        tiled = photometry_tiled(counts, model, 5, finder=finder, tile_shape=TILE, sky=sky,
                                 **kw)
    assert len(whole) >= 0.9 * len(truth)
    assert tiled.meta["sky"] == "given map"
    assert_same_catalog(tiled, whole, xy_tol=1e-6, flux_rtol=1e-7)
    for c in ("x_err", "y_err", "flux_err"):
        np.testing.assert_allclose(_val(_by_position(tiled)[c]), _val(_by_position(whole)[c]),
                                   rtol=1e-6, err_msg=c)
    # the sky is in the expectation, not in the fluxes
    m = cp.match_catalogs(truth, tiled, separation=1.0)
    assert abs(np.median(_val(m["flux_fit"]) / _val(m["flux"]) - 1)) < 0.005
    # FITS file (memory-mapped, read per task) and a memory-mapped sky map
    path = tmp_path / "counts.fits"
    fits.PrimaryHDU(counts).writeto(path)
    np.save(tmp_path / "sky.npy", sky)
    sky_mm = np.load(tmp_path / "sky.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_file = photometry_tiled(str(path), model, 5, finder=finder, tile_shape=TILE,
                                     sky=sky_mm, **kw)
    assert_same_catalog(from_file, whole, xy_tol=1e-6, flux_rtol=1e-7)
    # a Quantity map with Quantity data: converted to the data's unit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_units = photometry_tiled(counts * u.Jy, model, 5, tile_shape=TILE,
                                    finder=cp.DAOStarFinder(40.0 * u.Jy, FWHM),
                                    sky=(sky * 1000.0) * u.mJy, **kw)
    np.testing.assert_allclose(_val(_by_position(in_units)["flux_fit"]),
                               _val(_by_position(whole)["flux_fit"]), rtol=1e-7)


def test_tiled_gaussian_sky_map_is_subtracted_as_untiled(poisson_sky_map):
    """likelihood='gaussian' with sky= a map: subtracted before finding and fitting, as
    PSFPhotometry(...)(data, sky=map)."""
    model, counts, sky, _, kw = poisson_sky_map
    kw = dict(kw, likelihood="gaussian", read_noise=None)
    error = np.sqrt(np.clip(counts, 1.0, None))
    finder = cp.DAOStarFinder(threshold=40.0, fwhm=FWHM)
    whole = cp.PSFPhotometry(model, 5, finder=finder, **kw)(counts, error=error, sky=sky)
    tiled = photometry_tiled(counts, model, 5, finder=finder, error=error, tile_shape=TILE,
                             sky=sky, **kw)
    assert_same_catalog(tiled, whole, xy_tol=1e-6, flux_rtol=1e-7)


@pytest.mark.parametrize("scope", ["image", "tile"])
def test_dask_sky_map_equals_in_process(sky_scene, dask_client, scope, monkeypatch, tmp_path):
    """The whole-image map (a small image) travels to each worker as the task's cut-out; per
    task region (a large image), each worker gets the task's sky region (box + sky boxes),
    not only its box. The same catalog as in process, all-star rounds included, from memory
    and from a FITS file (whose pixels never leave the workers' own reads)."""
    import crowdphot.pipeline._sky as tilesky

    if scope == "tile":  # decided by the driver only: the workers never look at the limit
        monkeypatch.setattr(tilesky, "WHOLE_SKY_PIXELS", 0)
    model, data, _, _, _ = sky_scene
    kw = dict(finder=cp.DAOStarFinder(threshold=12.0, fwhm=FWHM), grouper=cp.SourceGrouper(8),
              aperture_radius=4, group_warning_threshold=10**9, tile_shape=TILE, sky="map",
              sky_options={"box_size": SKY_BOX, "fwhm": FWHM}, subtract_neighbors=True)
    error = np.full(SHAPE, SKY_NOISE)
    local = photometry_tiled(data, model, 5, error=error, **kw)
    assert local.meta["sky_scope"] == scope
    remote = photometry_tiled(data, model, 5, error=error, client=dask_client, **kw)
    assert_same_catalog(remote, local, xy_tol=1e-9, flux_rtol=1e-9)
    path = tmp_path / "sky.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI"),
                  fits.ImageHDU(error, name="ERR")]).writeto(path)
    from_file = photometry_tiled(str(path), model, 5, client=dask_client, **kw)
    assert_same_catalog(from_file, local, xy_tol=1e-9, flux_rtol=1e-9)


def test_dask_poisson_sky_map_equals_in_process(poisson_sky_map, dask_client):
    """On Dask each task gets only its box of the given sky map (SkyPlanes.sub)."""
    model, counts, sky, truth, kw = poisson_sky_map
    init = QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": truth["flux"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = photometry_tiled(counts, model, 5, init_params=init, tile_shape=TILE,
                                 sky=sky, **kw)
        remote = photometry_tiled(counts, model, 5, init_params=init, tile_shape=TILE,
                                  sky=sky, client=dask_client, **kw)
    assert_same_catalog(remote, local, xy_tol=1e-9, flux_rtol=1e-9)
