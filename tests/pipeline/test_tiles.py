"""Tiled photometry: the grid, job assignment, and tiled == untiled, locally and over Dask.

The oracle is crowdphot's own whole-image PSFPhotometry on the same pixels: a tiled run must
give the same sources (no duplicates, no gaps at seams), the same group partition, positions
within 1e-3 px and fluxes within 1e-4 relative.
"""

import warnings
from itertools import product

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.modeling.fitting import TRFLSQFitter
from astropy.nddata import NDData
from astropy.table import QTable

import crowdphot as cp
from _tiled import FWHM, SHAPE, TILE, _config, _val, assert_same_catalog
from crowdphot.core.validate import CrowdphotWarning
from crowdphot.io.fits import FitsPlanes, read_image
from crowdphot.pipeline._plan import fit_jobs
from crowdphot.pipeline._planes import ArrayPlanes, shift_model
from crowdphot.pipeline.tiles import photometry_tiled, tile_grid, tile_index


@pytest.fixture(scope="module")
def whole(crowded):
    model, data, error, _ = crowded
    return cp.PSFPhotometry(model, 5, **_config())(data, error=error)


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,tile", [((10, 7), 5), ((250, 230), 64), ((64, 64), (64, 20)),
                                        ((3, 100), 1000)])
def test_tile_grid_partitions_pixels_and_positions(shape, tile):
    tiles = tile_grid(shape, tile)
    ty, tx = (tile, tile) if np.isscalar(tile) else tile
    cover = np.zeros(shape, dtype=int)
    for t in tiles:
        cover[t.y0:t.y1, t.x0:t.x1] += 1
        assert 0 < t.y1 - t.y0 <= ty and 0 < t.x1 - t.x0 <= tx
    assert np.all(cover == 1)
    assert len(tiles) == int(np.ceil(shape[0] / ty) * np.ceil(shape[1] / tx))
    # every position, pixel edges and points outside the image included, has one owner
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-5, shape[1] + 5, 500), [t.x0 - 0.5 for t in tiles]])
    y = np.concatenate([rng.uniform(-5, shape[0] + 5, 500), [t.y0 - 0.5 for t in tiles]])
    held = np.array([t.holds(x, y) for t in tiles])
    np.testing.assert_array_equal(held.sum(axis=0), 1)
    np.testing.assert_array_equal(tile_index(x, y, shape, tile), np.argmax(held, axis=0))


def test_tile_core_owns_its_pixel_centres():
    for t in tile_grid((37, 41), 10):
        yy, xx = np.mgrid[t.y0:t.y1, t.x0:t.x1]
        assert t.holds(xx.ravel(), yy.ravel()).all()
        # the half-pixel boundary belongs to the tile above/right, as pixel j = [j-0.5, j+0.5)
        if t.x0 > 0:
            assert not t.holds([t.x0 - 0.5 - 1e-9], [t.y0])[0]
            assert t.holds([t.x0 - 0.5], [t.y0])[0]


@pytest.mark.parametrize("tile,match", [(0, "tile_shape must be > 0"),
                                        (-4, "tile_shape must be > 0"),
                                        (2.5, "tile_shape must have integer values"),
                                        ((1, 2, 3), "tile_shape must have 1 or 2 elements")])
def test_tile_grid_rejects_bad_tile_shape(tile, match):
    with pytest.raises(ValueError, match=match):
        tile_grid((10, 10), tile)


def test_tile_grid_rejects_bad_shape():
    with pytest.raises(ValueError, match="shape must be > 0"):
        tile_grid((0, 10), 5)
    with pytest.raises(TypeError, match="tile_shape must be a number"):
        tile_grid((10, 10), "64")


# ----------------------------------------------------------------------------------------------
# job assignment
# ----------------------------------------------------------------------------------------------
def test_fit_jobs_keep_groups_whole_and_boxes_cover_members():
    rng = np.random.default_rng(3)
    n = 400
    x, y = rng.uniform(-0.4, 229.4, n), rng.uniform(-0.4, 249.4, n)
    gid = cp.SourceGrouper(9)(x, y)
    init = QTable({"id": np.arange(1, n + 1), "x_init": x, "y_init": y, "group_id": gid})
    margin = 7
    jobs = fit_jobs(init, SHAPE, (TILE, TILE), margin)
    ids = np.concatenate([np.asarray(sub["id"]) for _, sub in jobs])
    assert sorted(ids.tolist()) == list(range(1, n + 1))  # every source exactly once
    owners = tile_index(x, y, SHAPE, TILE)
    crossing = 0
    for (y0, y1, x0, x1), sub in jobs:
        g = np.asarray(sub["group_id"])
        # a group is never split between jobs
        assert set(g.tolist()).isdisjoint(set(gid[~np.isin(init["id"], sub["id"])].tolist()))
        sx, sy = _val(sub["x_init"]), _val(sub["y_init"])
        assert np.all(np.floor(sx) - margin >= x0) or x0 == 0
        assert np.all(np.ceil(sx) + margin < x1) or x1 == SHAPE[1]
        assert np.all(np.floor(sy) - margin >= y0) or y0 == 0
        assert np.all(np.ceil(sy) + margin < y1) or y1 == SHAPE[0]
        # all groups of a job are anchored (first member) in one tile
        first = [np.flatnonzero(gid == k)[0] for k in np.unique(g)]
        assert len(set(owners[first].tolist())) == 1
        crossing += sum(len(set(owners[gid == k].tolist())) > 1 for k in np.unique(g))
    assert crossing > 0  # the scene does exercise groups across seams


# ----------------------------------------------------------------------------------------------
# tiled == untiled, in process
# ----------------------------------------------------------------------------------------------
def test_tiled_equals_untiled_in_process(crowded, whole):
    model, data, error, truth = crowded
    tiled = photometry_tiled(data, model, 5, error=error, tile_shape=TILE, **_config())
    assert_same_catalog(tiled, whole)
    # the scene has groups spanning seams and stars near the seams
    owners = tile_index(_val(tiled["x_init"]), _val(tiled["y_init"]), SHAPE, TILE)
    g = np.asarray(tiled["group_id"])
    assert any(len(set(owners[g == k].tolist())) > 1 for k in np.unique(g))
    assert len(whole) > 250
    assert tiled.meta["n_tiles"] == 16
    # the configuration's metadata is the whole-image run's, not one copy per tile
    assert tiled.meta["fit_shape"] == whole.meta["fit_shape"] == (5, 5)
    for key in set(tiled.meta) & set(whole.meta):
        if key not in ("date", "version", "versions", "calling_args"):
            assert tiled.meta[key] == whole.meta[key], key
    # ids 1..n in position order (row of the nearest pixel first)
    np.testing.assert_array_equal(np.asarray(tiled["id"]), np.arange(1, len(tiled) + 1))
    assert np.all(np.diff(np.round(_val(tiled["y_init"]))) >= 0)


def test_too_small_margin_is_detectably_wrong(crowded, whole):
    """The parity checks can fail: without overlap the seams lose or duplicate stars."""
    model, data, error, _ = crowded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CrowdphotWarning)  # seam artefacts fit badly
        tiled = photometry_tiled(data, model, 5, error=error, tile_shape=TILE, margin=0,
                                 **_config())
    with pytest.raises(AssertionError):
        assert_same_catalog(tiled, whole)


def test_tile_size_does_not_change_the_result(crowded, whole):
    model, data, error, _ = crowded
    for tile in ((40, 100), 250):
        tiled = photometry_tiled(data, model, 5, error=error, tile_shape=tile, **_config())
        assert_same_catalog(tiled, whole)


def test_tiled_with_init_params_and_mask(crowded):
    model, data, error, truth = crowded
    mask = np.zeros(SHAPE, dtype=bool)
    mask[100:104, 60:200] = True  # a bad row band across two seams
    init = QTable({"x": truth["x_0"] + 0.1, "y": truth["y_0"] - 0.1})
    kw = _config(finder=None)
    with warnings.catch_warnings():
        # blends of undetectable truth stars may hit the iteration limit, in both runs
        warnings.simplefilter("ignore", CrowdphotWarning)
        whole = cp.PSFPhotometry(model, 5, **kw)(data, error=error, mask=mask,
                                                 init_params=init)
        tiled = photometry_tiled(data, model, 5, error=error, mask=mask, init_params=init,
                                 tile_shape=TILE, **kw)
    assert_same_catalog(tiled, whole)
    # user ids are kept
    np.testing.assert_array_equal(np.asarray(tiled["id"]), np.arange(1, len(init) + 1))


def test_tiled_bad_errors_matter_only_on_fitted_pixels(crowded, whole):
    """As PSFPhotometry (photutils' rule): zero/NaN errors off every fit stamp are ignored,
    one on a fitted pixel raises."""
    model, data, error, _ = crowded
    near = np.zeros(SHAPE, dtype=bool)  # every pixel within 3 px of a start: covers the stamps
    for x, y in zip(np.round(_val(whole["x_init"])).astype(int),
                    np.round(_val(whole["y_init"])).astype(int), strict=True):
        near[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4] = True
    bad = error.copy()
    bad[~near] = 0.0
    bad[~near & (np.arange(SHAPE[1]) % 2 == 0)] = np.nan
    assert np.count_nonzero(~near) > 1000
    tiled = photometry_tiled(data, model, 5, error=bad, tile_shape=TILE, **_config())
    assert_same_catalog(tiled, whole)
    y, x = int(round(_val(whole["y_init"])[0])), int(round(_val(whole["x_init"])[0]))
    bad[y, x] = 0.0
    with pytest.raises(ValueError, match="Error array contains non-positive or non-finite"):
        photometry_tiled(data, model, 5, error=bad, tile_shape=TILE, **_config())


def test_tiled_gridded_psf_uses_absolute_positions():
    """A position-dependent PSF must be evaluated at image, not cut, coordinates."""
    yy, xx = np.mgrid[:41, :41]
    psfs = []
    for sx, sy in product((1.4, 2.6), (1.2, 2.2)):  # x-major then y
        p = np.exp(-0.5 * (((xx - 20) / (2 * sx)) ** 2 + ((yy - 20) / (2 * sy)) ** 2))
        psfs.append(p / p.sum() * 4)
    meta = {"grid_xypos": [(x, y) for x in (0, 119) for y in (0, 119)], "oversampling": 2}
    model = cp.GriddedPSFModel(NDData(np.array(psfs), meta=meta))
    data, truth = cp.make_psf_model_image((120, 120), model, 40, flux=(2000, 4000),
                                          min_separation=9, seed=4, model_shape=(13, 13))
    data = data + np.random.default_rng(2).normal(0, 1.0, data.shape)
    init = QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": truth["flux"]})
    whole = cp.PSFPhotometry(model, 7, grouper=cp.SourceGrouper(10))(data, init_params=init)
    tiled = photometry_tiled(data, model, 7, init_params=init, grouper=cp.SourceGrouper(10),
                             tile_shape=50)
    assert_same_catalog(tiled, whole)
    # and the fit is right: a wrong (cut-frame) PSF would bias these far beyond the noise
    np.testing.assert_allclose(_val(tiled["x_fit"]), truth["x_0"], atol=0.05)


def test_tiled_quantity_and_n_brightest(crowded):
    model, data, error, _ = crowded
    finder = cp.DAOStarFinder(threshold=25.0 * u.Jy, fwhm=FWHM, n_brightest=40)
    kw = _config(finder=finder)
    whole = cp.PSFPhotometry(model, 5, **kw)(data * u.Jy, error=error * u.Jy)
    tiled = photometry_tiled(data * u.Jy, model, 5, error=error * u.Jy, tile_shape=TILE, **kw)
    assert tiled["flux_fit"].unit == u.Jy
    assert len(tiled) == 40
    assert_same_catalog(tiled, whole)
    # forced positions with fluxes in the data's unit
    init = QTable({"x": whole["x_fit"], "y": whole["y_fit"], "flux": whole["flux_fit"]})
    forced = photometry_tiled(data * u.Jy, model, 5, error=error * u.Jy, init_params=init,
                              tile_shape=TILE, **kw)
    again = cp.PSFPhotometry(model, 5, **kw)(data * u.Jy, error=error * u.Jy,
                                             init_params=init)
    assert forced["flux_fit"].unit == u.Jy
    assert_same_catalog(forced, again)


def test_no_sources_returns_none_with_warning():
    data = np.zeros((100, 100))
    with pytest.warns(CrowdphotWarning, match="no sources were found"):
        out = photometry_tiled(data, cp.CircularGaussianPRF(fwhm=2), 5, aperture_radius=3,
                               finder=cp.DAOStarFinder(threshold=1.0, fwhm=2), tile_shape=40)
    assert out is None


def test_nonconvergence_warned_once_for_the_whole_catalog(crowded):
    model, data, error, _ = crowded
    with pytest.warns(CrowdphotWarning, match="may not have converged") as rec:
        tiled = photometry_tiled(data[:128, :128], model, 5, error=error[:128, :128],
                                 tile_shape=TILE, **_config(fitter_maxiters=1))
    msgs = [str(w.message) for w in rec if "converged" in str(w.message)]
    assert len(msgs) == 1
    n_flag = int(np.count_nonzero(np.asarray(tiled["flags"]) & 8))
    assert msgs[0].startswith(f"{n_flag} fit(s)") and n_flag > 0


# ----------------------------------------------------------------------------------------------
# all-star fitting across seams
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide_wings():
    """A gridded PSF with wide wings: neighbours' light crosses seams (all-star matters)."""
    from crowdphot.datasets import jwst_like_psf_grid

    psf = jwst_like_psf_grid()
    data, truth = cp.make_psf_model_image((256, 256), psf, 150, flux=(500, 50000),
                                          min_separation=8, seed=0)
    data = data + np.random.default_rng(1).normal(0, 1.0, data.shape)
    init = QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": truth["flux"]})
    err = np.full(data.shape, 1.0)
    kw = dict(grouper=cp.SourceGrouper(10), group_warning_threshold=10**9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = cp.PSFPhotometry(psf, 5, subtract_neighbors=True, **kw)(
            data, error=err, init_params=init)
    return psf, data, err, init, kw, whole


@pytest.mark.parametrize("rounds", [0, None])
def test_tiled_all_star_equals_whole_image(wide_wings, rounds, monkeypatch):
    """Other tasks' stars are subtracted in later rounds: seams do not bias the fluxes."""
    import crowdphot.pipeline._halo as halo

    psf, data, err, init, kw, whole = wide_wings
    if rounds is not None:
        monkeypatch.setattr(halo, "HALO_ROUNDS", rounds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiled = photometry_tiled(data, psf, 5, error=err, init_params=init, tile_shape=128,
                                 subtract_neighbors=True, **kw)
    np.testing.assert_array_equal(np.asarray(tiled["id"]), np.asarray(whole["id"]))
    pull = (_val(tiled["flux_fit"]) - _val(whole["flux_fit"])) / _val(whole["flux_err"])
    if rounds == 0:  # first round only: stars at seams miss their neighbours' wings
        assert np.nanmax(np.abs(pull)) > 5
    else:  # within a small fraction of the errors (the passes stop at a tolerance)
        assert np.nanmax(np.abs(pull)) < 0.05
        np.testing.assert_allclose(_val(tiled["x_fit"]), _val(whole["x_fit"]), atol=1e-4)
        np.testing.assert_array_equal(np.asarray(tiled["flags"]), np.asarray(whole["flags"]))


def test_tiled_all_star_poisson_equals_whole_image():
    """Maximum likelihood: the other tasks' stars enter each task's expected counts."""
    from crowdphot.datasets import jwst_like_psf_grid

    psf = jwst_like_psf_grid()
    model, truth = cp.make_psf_model_image((256, 256), psf, 150, flux=(2000, 50000),
                                           min_separation=8, seed=1)
    counts = np.random.default_rng(2).poisson(model + 10.0).astype(float)
    init = QTable({"x": truth["x_0"], "y": truth["y_0"], "flux": truth["flux"],
                   "local_bkg": np.full(len(truth), 10.0)})
    kw = dict(grouper=cp.SourceGrouper(10), group_warning_threshold=10**9,
              likelihood="poisson", read_noise=0.0, subtract_neighbors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = cp.PSFPhotometry(psf, 5, **kw)(counts, init_params=init)
        tiled = photometry_tiled(counts, psf, 5, init_params=init, tile_shape=128, **kw)
    pull = (_val(tiled["flux_fit"]) - _val(whole["flux_fit"])) / _val(whole["flux_err"])
    assert np.nanmax(np.abs(pull)) < 0.05


def test_tiled_merge_separation_equals_whole_image(crowded):
    """Doubled detections (0.4 px apart) merge in tiles exactly as in the whole image."""
    model, data, error, truth = crowded
    x, y = _val(truth["x_0"]), _val(truth["y_0"])
    init = QTable({"x": np.r_[x, x[::10] + 0.4], "y": np.r_[y, y[::10]]})
    kw = _config(merge_separation=0.5 * FWHM, subtract_neighbors=True, finder=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = cp.PSFPhotometry(model, 5, **kw)(data, error=error, init_params=init)
        tiled = photometry_tiled(data, model, 5, error=error, tile_shape=TILE,
                                 init_params=init, **kw)
    assert whole.meta["n_merged"] >= len(x[::10]) // 2
    assert tiled.meta["n_merged"] == whole.meta["n_merged"]
    fw, ft = np.asarray(whole["flags"]), np.asarray(tiled["flags"])
    merged = (fw & 16384) > 0
    np.testing.assert_array_equal((ft & 16384) > 0, merged)
    np.testing.assert_array_equal(ft[~merged], fw[~merged])
    pull = (_val(tiled["flux_fit"]) - _val(whole["flux_fit"])) / _val(whole["flux_err"])
    assert np.nanmax(np.abs(pull[~merged])) < 0.05
    # a doubled detection splits its flux about evenly, so which row keeps the merged star
    # may differ; the merged star itself agrees
    n = len(x)
    pair = np.r_[np.arange(n), np.arange(0, n, 10)]
    for tab in (whole, tiled):
        f = np.where(merged, np.nan_to_num(_val(tab["flux_fit"])), 0.0)
        tab["pair_flux"] = np.bincount(pair, f, minlength=n)[pair]
    err = np.fmax(np.nan_to_num(_val(whole["flux_err"])),
                  np.nan_to_num(_val(tiled["flux_err"])))[merged]
    diff = np.abs(_val(tiled["pair_flux"]) - _val(whole["pair_flux"]))[merged]
    assert np.all(diff <= 0.3 * np.bincount(pair[merged], err, minlength=n)[pair[merged]])


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(workers=0), ValueError, "workers must be a positive integer"),
    (dict(workers=1.5), ValueError, "workers must be a positive integer"),
    (dict(margin=-1), ValueError, "margin must be a non-negative integer"),
    (dict(tile_shape=0), ValueError, "tile_shape must be > 0"),
    (dict(finder=None), ValueError, "finder must be given"),
    (dict(aperture_radius=None), ValueError, "aperture_radius must be given"),
    (dict(client=object()), TypeError, "client must be a dask.distributed.Client"),
    (dict(scheduler=123), TypeError, "scheduler must be an address string"),
    (dict(fit_shape=4), ValueError, "fit_shape must be odd"),
    (dict(finder=cp.DAOStarFinder(10, 2.0, xycoords=np.array([[5.0, 5.0]]))), ValueError,
     "xycoords is not supported"),
    (dict(finder=cp.DAOStarFinder(np.ones((32, 32)), 2.0)), ValueError,
     "per-pixel threshold image is not supported"),
    (dict(subtract_neighbors="yes"), TypeError, "subtract_neighbors must be True or False"),
    (dict(merge_separation=-1.0), ValueError, "merge_separation"),
    (dict(merge_separation=1.0, fitter=TRFLSQFitter()), ValueError,
     "merge_separation need the batched engine"),
    (dict(sky="blue"), ValueError, "sky must be None, a number, 'map' or an image"),
    (dict(sky=np.nan), ValueError, "sky must be None, a finite number, 'map' or an image"),
    (dict(sky=True), ValueError, "sky must be None, a finite number"),
    # a sky map: PSFPhotometry's checks and messages
    (dict(sky=np.zeros((31, 32))), ValueError,
     r"sky must be a scalar or an image of shape \(32, 32\), got shape \(31, 32\)"),
    (dict(sky=np.full((32, 32), np.inf)), ValueError, "sky contains NaN or inf values"),
    (dict(sky=np.full((32, 32), "a")), TypeError, "sky must be a number or a numeric image"),
    (dict(sky=np.zeros((32, 32)) * u.Jy), ValueError, "sky has a unit but data has none"),
    (dict(sky=3.0 * u.Jy), ValueError, "sky has a unit but data has none"),
    (dict(sky=np.zeros(32)), ValueError, r"sky must be a scalar or an image of shape"),
    (dict(sky=np.zeros((32, 32)), sky_options={"box_size": 8}), ValueError,
     "sky_options need sky='map'"),
    (dict(sky=1.0, sky_options={"box_size": 8}), ValueError, "sky_options need sky='map'"),
    (dict(sky="map", sky_options={"box": 8}), TypeError, "sky_options: unknown keyword"),
    (dict(sky="map", sky_options={"box_size": 0}), ValueError, "box_size must be positive"),
])
def test_argument_errors(kwargs, exc, match):
    base = dict(finder=cp.DAOStarFinder(10, 2.0), aperture_radius=3, tile_shape=16)
    fit_shape = kwargs.pop("fit_shape", 5)
    base.update(kwargs)
    with pytest.raises(exc, match=match):
        photometry_tiled(np.zeros((32, 32)), cp.CircularGaussianPRF(fwhm=2), fit_shape, **base)


@pytest.mark.parametrize("gid,exc,match", [([0, 1], ValueError, "positive"),
                                           ([1.5, 2.0], TypeError, "integer array")])
def test_bad_user_group_ids_are_rejected_before_any_work(gid, exc, match):
    init = QTable({"x": [5.0, 20.0], "y": [5.0, 20.0], "flux": [1.0, 1.0], "group_id": gid})
    with pytest.raises(exc, match=match):
        photometry_tiled(np.zeros((32, 32)), cp.CircularGaussianPRF(fwhm=2), 5,
                         init_params=init, tile_shape=16)


def test_mask_with_fits_path_is_rejected(tmp_path):
    path = tmp_path / "x.fits"
    fits.PrimaryHDU(np.zeros((8, 8), dtype=np.float32)).writeto(path)
    with pytest.raises(ValueError, match="mask and error cannot be given with a FITS path"):
        photometry_tiled(str(path), cp.CircularGaussianPRF(fwhm=2), 5, aperture_radius=3,
                         finder=cp.DAOStarFinder(10, 2.0), mask=np.zeros((8, 8), bool))


# ----------------------------------------------------------------------------------------------
# Dask: a real LocalCluster with 2 worker processes on loopback
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fits_scene(crowded, tmp_path_factory):
    """The crowded scene as a JWST-style SCI/ERR/DQ file (float32 on disk)."""
    _, data, error, _ = crowded
    dq = np.zeros(SHAPE, dtype=np.uint32)
    dq[30:33, 100:180] = 1  # DO_NOT_USE band crossing a seam
    path = tmp_path_factory.mktemp("tiled") / "scene.fits"
    fits.HDUList([fits.PrimaryHDU(),
                  fits.ImageHDU(data.astype(np.float32), name="SCI"),
                  fits.ImageHDU(error.astype(np.float32), name="ERR"),
                  fits.ImageHDU(dq, name="DQ")]).writeto(path)
    return path


@pytest.fixture(scope="module")
def fits_whole(crowded, fits_scene):
    image = read_image(fits_scene)
    return cp.PSFPhotometry(crowded[0], 5, **_config())(image.data, mask=image.mask,
                                                        error=image.error)


def test_dask_fits_path_equals_single_process(crowded, fits_scene, fits_whole, dask_client):
    tiled = photometry_tiled(str(fits_scene), crowded[0], 5, tile_shape=(128, 100),
                             client=dask_client, **_config())
    assert_same_catalog(tiled, fits_whole)
    # both workers took part
    assert len(dask_client.scheduler_info()["workers"]) == 2


def test_dask_in_memory_array_equals_in_process(crowded, whole, dask_client):
    model, data, error, _ = crowded
    tiled = photometry_tiled(data, model, 5, error=error, tile_shape=(80, 120),
                             client=dask_client, **_config())
    assert_same_catalog(tiled, whole)


def test_array_planes_refuse_regions_they_do_not_hold():

    piece = ArrayPlanes(np.zeros((20, 20))).sub((5, 10, 5, 10))
    assert piece.cut(5, 10, 6, 9)[0].shape == (5, 3)
    with pytest.raises(ValueError, match="not inside the piece held"):
        piece.cut(0, 10, 5, 10)


def test_dask_all_star_equals_in_process(wide_wings, dask_client):
    """The later all-star rounds run on the workers too (the neighbours travel with each task)."""
    psf, data, err, init, kw, whole = wide_wings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = photometry_tiled(data, psf, 5, error=err, init_params=init, tile_shape=128,
                                subtract_neighbors=True, **kw)
        there = photometry_tiled(data, psf, 5, error=err, init_params=init, tile_shape=128,
                                 subtract_neighbors=True, client=dask_client, **kw)
    for c in ("x_fit", "y_fit", "flux_fit", "flags"):
        np.testing.assert_array_equal(np.asarray(there[c]), np.asarray(here[c]))


def test_dask_scheduler_address_and_fitsplanes_source(crowded, fits_scene, fits_whole,
                                                      dask_client):
    remote = photometry_tiled(FitsPlanes(fits_scene), crowded[0], 5, tile_shape=128,
                              scheduler=dask_client.scheduler.address, **_config())
    assert_same_catalog(remote, fits_whole)


def test_dask_large_psf_is_sent_once_not_with_every_task(crowded, dask_client):
    """A PSF of > 10 MB inside every task made Dask warn of a large graph; it is scattered."""
    model, data, error, _ = crowded
    os_, half = 4, 150
    offsets = np.arange(-half * os_, half * os_ + 1) / os_
    xx, yy = np.meshgrid(offsets, offsets)
    big = cp.ImagePSF(model(xx, yy), oversampling=os_)
    assert big.data.nbytes > 10e6
    sub = data[:100, :150]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiled = photometry_tiled(sub, big, 5, error=error[:100, :150], tile_shape=50,
                                 client=dask_client, **_config())
    assert not [w for w in caught if "large graph" in str(w.message)]
    whole = cp.PSFPhotometry(big, 5, **_config())(sub, error=error[:100, :150])
    assert_same_catalog(tiled, whole)


def test_halo_refit_skipped_only_when_the_light_change_is_below_every_threshold():
    """A neighbour whose light on the task's stars' stamps is below their all-star refit
    threshold (0.02 of the flux errors) does not trigger a refit; a brighter one does."""
    from crowdphot.pipeline._halo import _light_negligible

    model = cp.CircularGaussianPRF(fwhm=2.0)
    table = QTable({"x_fit": [20.0, 30.0], "y_fit": [20.0, 25.0], "flux_fit": [1000.0, 500.0],
                    "flux_err": [10.0, 10.0]})
    box = (0, 50, 0, 50)

    def star(x, f):
        return np.array([[99.0, x, 22.0, f, 0.1, 0.1, 1.0]])

    # a faint star just outside the box, far from both stamps: negligible
    assert _light_negligible(model, shift_model, box, table, None, star(52.0, 50.0), 5)
    # a bright one next to a stamp: refit
    assert not _light_negligible(model, shift_model, box, table, None, star(36.0, 5e4), 5)
    # the same star again (no change since the last subtraction): negligible
    assert _light_negligible(model, shift_model, box, table, star(36.0, 5e4),
                             star(36.0, 5e4), 5)
    # the threshold follows the stars' errors: 5 counts on a stamp matter at errors of 10,
    # not at errors of 1000
    assert not _light_negligible(model, shift_model, box, table, None, star(33.0, 5.0), 5)
    table["flux_err"] = [1000.0, 1000.0]
    assert _light_negligible(model, shift_model, box, table, None, star(33.0, 5.0), 5)


def test_halo_refit_set_is_the_hit_groups_closed_under_the_model_reach():
    """Later all-star rounds refit only the groups whose stamps see a neighbour's light
    change, plus every group within the model's reach of a refitted star, transitively:
    the rows left as they are get no light from any star that moves."""
    from crowdphot.pipeline._halo import _refit_set

    # a chain 0-1-2 within reach (10), group {3, 4} whose member 3 is 9 px from star 2,
    # star 5 alone far away, group {6, 7} spread wide but far from everything else
    x = np.array([0.0, 8.0, 16.0, 25.0, 60.0, 200.0, 300.0, 380.0])
    table = QTable({"x_fit": x, "y_fit": np.zeros(8),
                    "group_id": [1, 2, 3, 4, 4, 5, 6, 6]})
    hit = np.zeros(8, bool)
    hit[0] = True
    np.testing.assert_array_equal(_refit_set(table, hit, 10.0),
                                  [1, 1, 1, 1, 1, 0, 0, 0])
    hit[:] = False
    hit[7] = True  # a group refits whole, even with members beyond the reach of each other
    np.testing.assert_array_equal(_refit_set(table, hit, 10.0),
                                  [0, 0, 0, 0, 0, 0, 1, 1])
    table["x_fit"][5] = np.nan  # a position that is not finite: everything is refitted
    assert _refit_set(table, hit, 10.0).all()
