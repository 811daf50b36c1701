"""Artificial star tests: incremental measurement equals a full re-run, completeness equals the
field's own, determinism, summaries, bad input and the ``crowdphot ast`` command."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable
from scipy import stats
from scipy.spatial import cKDTree

from crowdphot import (
    CircularGaussianPRF,
    DAOStarFinder,
    IRAFStarFinder,
    IterativePSFPhotometry,
    LocalBackground,
    MMMBackground,
    PSFPhotometry,
    SourceGrouper,
    make_model_image,
    make_noise_image,
    make_random_xycoords,
)
from crowdphot.cli.app import main
from crowdphot.core.render import render_image
from crowdphot.pipeline.ast import (
    artificial_star_test,
    assign_batches,
    draw_artificial_stars,
)
from crowdphot.pipeline.ast_summary import ast_summary, completeness_map
from crowdphot.utils.match import match_xy

FWHM = 2.5
SIGMA = 2.0
PSF = CircularGaussianPRF(fwhm=FWHM)


def _field(side, n, seed, *, flux=(10.0, 10_000.0), min_separation=3.0):
    """Stars uniform on the image (min separation), log-uniform in flux, Gaussian noise."""
    xy = make_random_xycoords(n, (0, side - 1), (0, side - 1), min_separation=min_separation,
                              seed=seed)
    rng = np.random.default_rng(seed + 100)
    f = flux[0] * (flux[1] / flux[0]) ** rng.uniform(0, 1, len(xy))
    truth = QTable({"x_0": xy[:, 0], "y_0": xy[:, 1], "flux": f})
    data = make_model_image((side, side), PSF, truth, model_shape=(11, 11))
    data = data + make_noise_image(data.shape, mean=0.0, stddev=SIGMA, seed=seed + 1)
    return data, truth, np.full(data.shape, SIGMA)


def _phot(*, grouper=5.0, local_bkg=None):
    lb = None if local_bkg is None else LocalBackground(*local_bkg,
                                                        bkg_estimator=MMMBackground())
    return PSFPhotometry(PSF, (5, 5), finder=IRAFStarFinder(5 * SIGMA, FWHM), aperture_radius=3,
                         grouper=None if grouper is None else SourceGrouper(grouper),
                         local_bkg_estimator=lb)


@pytest.fixture(scope="module")
def field():
    return _field(160, 150, seed=0)


@pytest.mark.parametrize("grouper, local_bkg", [(5.0, (6, 9)), (None, None)])
def test_incremental_measurement_equals_a_full_rerun(field, grouper, local_bkg):
    """Each batch measured incrementally == the whole pipeline re-run on image + batch."""
    data, _, err = field
    phot = _phot(grouper=grouper, local_bkg=local_bkg)
    res = artificial_star_test(data, phot, 200, (30, 3000), error=err, seed=3)
    t = res.table
    n_checked = 0
    for b in range(res.meta["n_batches"]):
        s = t[t["batch"] == b]
        image = data + render_image(data.shape, PSF, s["x_in"], s["y_in"], s["flux_in"])
        full = phot(image, error=err)
        tree = cKDTree(np.column_stack([full["x_fit"], full["y_fit"]]))
        d, j = tree.query(np.column_stack([s["x_in"], s["y_in"]]),
                          distance_upper_bound=res.meta["search_radius"])
        hit = np.isfinite(d)
        np.testing.assert_array_equal(hit, np.isfinite(s["x_out"]))
        for ours, theirs in (("x_out", "x_fit"), ("y_out", "y_fit"), ("flux_out", "flux_fit"),
                             ("flux_err", "flux_err"), ("flags", "flags")):
            np.testing.assert_allclose(np.asarray(s[ours])[hit],
                                       np.asarray(full[theirs])[j[hit]], rtol=1e-9, atol=1e-9)
        n_checked += int(hit.sum())
    assert n_checked > 60  # most bright-enough stars are found


def test_allstar_neighbour_subtraction_is_followed(field):
    """With ALLSTAR's neighbour subtraction (the CLI's default) the neighbours outside the
    refitted neighbourhood are not subtracted and the passes stop on the refitted stars only:
    the measurement still matches a full re-run to well within its errors."""
    data, _, err = field
    phot = PSFPhotometry(PSF, (5, 5), finder=IRAFStarFinder(5 * SIGMA, FWHM), aperture_radius=3,
                         grouper=SourceGrouper(5), subtract_neighbors=True)
    res = artificial_star_test(data, phot, 200, (30, 3000), error=err, seed=3)
    t = res.table
    dx, dflux, n = [], [], 0
    for b in range(res.meta["n_batches"]):
        s = t[t["batch"] == b]
        image = data + render_image(data.shape, PSF, s["x_in"], s["y_in"], s["flux_in"])
        full = phot(image, error=err)
        d, j = cKDTree(np.column_stack([full["x_fit"], full["y_fit"]])).query(
            np.column_stack([s["x_in"], s["y_in"]]), distance_upper_bound=res.meta["search_radius"])
        hit = np.isfinite(d)
        np.testing.assert_array_equal(hit, np.isfinite(s["x_out"]))
        jj = j[hit]
        dx.append(np.abs(np.asarray(s["x_out"])[hit] - np.asarray(full["x_fit"])[jj]))
        dflux.append(np.abs(np.asarray(s["flux_out"])[hit] - np.asarray(full["flux_fit"])[jj])
                     / np.asarray(full["flux_err"])[jj])
        n += int(hit.sum())
    assert n > 60
    assert np.max(np.concatenate(dx)) < 2e-3  # measured 3e-4 px
    assert np.max(np.concatenate(dflux)) < 0.05  # measured 0.008 sigma


@pytest.mark.parametrize(("mode", "bias"), [("new", False), ("all", False), ("new", True)])
def test_iterative_photometry_is_followed_around_each_star(mode, bias):
    """IterativePSFPhotometry: local iterations give a full re-run's result (mode 'new': every
    star; 'all', where the full run refits the whole image jointly: nearly every star, and the
    same recovered verdicts). With ``bias_correction`` (which the class applies to its final
    table) the artificial stars' fits are corrected as the catalog's are."""
    data, _, err = _field(160, 150, seed=0)
    phot = IterativePSFPhotometry(PSF, (5, 5), IRAFStarFinder(5 * SIGMA, FWHM),
                                  aperture_radius=3, grouper=SourceGrouper(5), maxiters=3,
                                  mode=mode, bias_correction=bias)
    res = artificial_star_test(data, phot, 80, (10, 10_000), error=err, seed=3)
    t = res.table
    same = agree = 0
    for b in range(res.meta["n_batches"]):
        s = t[t["batch"] == b]
        image = data + render_image(data.shape, PSF, s["x_in"], s["y_in"], s["flux_in"])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*may not have converged")
            full = phot(image, error=err)
        tree = cKDTree(np.column_stack([full["x_fit"], full["y_fit"]]))
        d, j = tree.query(np.column_stack([s["x_in"], s["y_in"]]),
                          distance_upper_bound=res.meta["search_radius"])
        hit = np.isfinite(d)
        jj = np.where(hit, j, 0)
        fx, fy, ff = (np.where(hit, np.asarray(full[c])[jj], np.nan)
                      for c in ("x_fit", "y_fit", "flux_fit"))
        with np.errstate(invalid="ignore"):
            equal = np.where(hit, (np.abs(fx - s["x_out"]) < 1e-6)
                             & (np.abs(ff / s["flux_out"] - 1) < 1e-6), np.isnan(s["x_out"]))
            rec = ((np.hypot(fx - s["x_in"], fy - s["y_in"]) <= 0.5)
                   & (np.abs(ff - s["flux_in"]) <= 0.1 * s["flux_in"]))
        same += int(np.count_nonzero(equal))
        agree += int(np.count_nonzero(rec == np.asarray(s["recovered"])))
    assert 15 < np.count_nonzero(t["recovered"]) < 75
    if mode == "new" and bias:
        # the artificial stars' iterations are corrected as they go, the class corrects its
        # final table: stars found in a residual image differ by ~0.002 sigma
        assert same >= 0.95 * len(t) and agree == len(t)
    elif mode == "new":
        assert same == len(t) and agree == len(t)
    else:
        assert same >= 0.9 * len(t) and agree >= 0.97 * len(t)


def test_dask_workers_give_the_same_table(field):
    """Tiles on two Dask workers: the same table as the same tiles in process (noise
    included)."""
    distributed = pytest.importorskip("distributed")
    data, _, err = field
    kw = dict(error=err, seed=21, gain=0.5, tile_shape=(70, 90))
    here = artificial_star_test(data, _phot(), 60, (30, 3000), **kw).table
    # threads, not processes: a process cluster's start-up can time out on a loaded machine;
    # what a process would receive must pickle, checked directly
    from crowdphot.pipeline.ast import _check_phot, _fitter_phot

    base, plan = _check_phot(_phot())
    copy = pickle.loads(pickle.dumps((base, _fitter_phot(base), plan)))
    assert copy[1].finder is None and copy[0].finder is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # start-up chatter (e.g. a dashboard port in use)
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
    try:
        there = artificial_star_test(data, _phot(), 60, (30, 3000), client=client, **kw).table
        # default tiling on Dask: two tiles per worker, at least 1024 px (here: one box)
        kw.pop("tile_shape")
        default = artificial_star_test(data, _phot(), 60, (30, 3000), client=client, **kw)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.close()
            cluster.close()
    for name in here.colnames:
        np.testing.assert_array_equal(np.asarray(here[name]), np.asarray(there[name]))
    assert default.meta["tile_shape"] == (1024, 1024) and default.meta["n_boxes"] == 1
    untiled = artificial_star_test(data, _phot(), 60, (30, 3000), **kw).table
    for name in untiled.colnames:
        np.testing.assert_array_equal(np.asarray(untiled[name]), np.asarray(default.table[name]))
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        artificial_star_test(data, _phot(), 5, (30, 3000), workers=0)


def test_tiles_equal_the_untiled_run(field):
    """Each tile task sees only its core + margin of the pixels, yet measures every artificial
    star as the untiled run does (to rounding); photon noise is drawn per star, so it too is
    the same."""
    data, _, err = field
    phot = _phot(local_bkg=(6, 9))
    kw = dict(error=err, seed=4, gain=0.5)
    whole = artificial_star_test(data, phot, 300, (30, 3000), **kw)
    tiled = artificial_star_test(data, phot, 300, (30, 3000), tile_shape=50, **kw)
    assert whole.meta["n_boxes"] == 1 and tiled.meta["n_boxes"] == 16
    a, b = whole.table, tiled.table
    for name in ("x_in", "y_in", "flux_in", "batch"):
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
    np.testing.assert_array_equal(np.isnan(a["x_out"]), np.isnan(b["x_out"]))
    for name in ("x_out", "y_out", "flux_out", "flux_err"):
        np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), rtol=1e-9,
                                   atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(a["flags"]), np.asarray(b["flags"]))
    np.testing.assert_array_equal(np.asarray(a["recovered"]), np.asarray(b["recovered"]))
    assert np.count_nonzero(a["recovered"]) > 60
    # same seed and tiling: the identical table
    again = artificial_star_test(data, phot, 300, (30, 3000), tile_shape=50, **kw).table
    for name in b.colnames:
        np.testing.assert_array_equal(np.asarray(again[name]), np.asarray(b[name]))


def test_iterative_tiles_equal_the_untiled_run():
    """IterativePSFPhotometry (mode 'new') tile by tile: the untiled table, to rounding."""
    data, _, err = _field(300, 500, seed=1)
    phot = IterativePSFPhotometry(PSF, (5, 5), IRAFStarFinder(5 * SIGMA, FWHM),
                                  aperture_radius=3, grouper=SourceGrouper(5), maxiters=3)
    a = artificial_star_test(data, phot, 150, (10, 10_000), error=err, seed=3).table
    tiled = artificial_star_test(data, phot, 150, (10, 10_000), error=err, seed=3,
                                 tile_shape=100)
    b = tiled.table
    assert tiled.meta["n_boxes"] == 9
    for name in ("x_out", "y_out", "flux_out", "flux_err"):
        np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), rtol=1e-9,
                                   atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(np.asarray(a["recovered"]), np.asarray(b["recovered"]))
    assert 30 < np.count_nonzero(a["recovered"]) < 140


def test_a_tile_task_needs_only_its_box():
    """The task of one tile, given a source holding only its box, gives what it gives with the
    whole image at hand (what a Dask worker receives is that box)."""
    from crowdphot.pipeline._planes import ArrayPlanes as _ArrayPlanes
    from crowdphot.pipeline.ast import _box_margin, _check_phot, _fitter_phot, _geometry, _jobs
    from crowdphot.pipeline.ast_local import _box_task

    data, _, err = _field(300, 500, seed=1)
    base, plan = _check_phot(_phot())
    geom = _geometry(base, plan, 3.5)
    margin = _box_margin(base, geom, 3.5)
    x, y, f = draw_artificial_stars(data.shape, 400, (30, 3000), seed=2)
    jobs = _jobs(data.shape, 100, margin, x, y, f, assign_batches(x, y, 30.0), None)
    source = _ArrayPlanes(data, None, err)
    settings = dict(geom=geom, search_radius=3.5, gain=None, select=None, remote=False)
    conf = (base, _fitter_phot(base), plan)
    box, stars, idx = jobs[4]  # the middle tile: margins on every side
    y0, y1, x0, x1 = box
    assert (y1 - y0, x1 - x0) == (100 + 2 * margin, 100 + 2 * margin) < data.shape
    full = _box_task(source, box, stars, conf, settings)
    alone = _box_task(source.sub(box), box, stars, conf, settings)
    np.testing.assert_array_equal(full[0], alone[0])
    np.testing.assert_array_equal(full[1], alone[1])
    assert np.isfinite(full[0][:, 0]).sum() > 10


@pytest.mark.parametrize("iterative, gain, local_bkg", [
    (None, None, None), ("new", None, None), ("all", None, None), (None, 0.5, None),
    (None, None, (6, 9))])
def test_stacked_batches_equal_batch_by_batch(iterative, gain, local_bkg, monkeypatch):
    """Several batches fitted in one call on their stacked images (masked rows between them)
    give the batch-by-batch results: the same flags and verdicts, values within the solver's
    rounding (the stacked rows shift y by thousands of pixels), also for stars whose stamps
    cross an image edge (= a stack seam) or masked pixels, with the stars' photon noise, and
    with local-background annuli cut by the seam."""
    import crowdphot.pipeline.ast_local as local

    data, _, err = _field(160, 150, seed=4)
    mask = np.zeros(data.shape, dtype=bool)
    mask[0:12, 40:60] = True  # masked pixels on the seam between two stacked batches
    mask[80:84, 70:80] = True
    if iterative:
        phot = IterativePSFPhotometry(PSF, (5, 5), IRAFStarFinder(5 * SIGMA, FWHM),
                                      aperture_radius=3, grouper=SourceGrouper(5), maxiters=3,
                                      mode=iterative)
    else:
        phot = _phot(local_bkg=local_bkg)
    tables, calls = {}, {}
    fit = local._fit

    def counting(*args):
        calls[size] += 1
        return fit(*args)

    monkeypatch.setattr(local, "_fit", counting)
    for size in (0, local.STACK_PIXELS):
        monkeypatch.setattr(local, "STACK_PIXELS", size)
        calls[size] = 0
        tables[size] = artificial_star_test(data, phot, 300, (10, 10_000), error=err,
                                            mask=mask, seed=11, gain=gain).table
    one, stacked = tables[0], tables[local.STACK_PIXELS]
    n_batches = int(one["batch"].max()) + 1
    assert n_batches > 10 and calls[0] > 10
    assert calls[local.STACK_PIXELS] <= (3 if iterative else 1)  # one stack: one call a pass
    edge = (one["y_in"] < 4) | (one["y_in"] > 155)
    assert np.count_nonzero(edge & np.isfinite(one["x_out"])) >= 5
    np.testing.assert_array_equal(stacked["flags"], one["flags"])
    np.testing.assert_array_equal(stacked["recovered"], one["recovered"])
    for c, tol in (("x_out", 1e-7), ("y_out", 1e-7), ("flux_out", 1e-6), ("flux_err", 1e-6)):
        np.testing.assert_allclose(stacked[c], one[c], rtol=1e-9, atol=tol)
    assert np.count_nonzero(np.isfinite(one["x_out"])) > 120


@pytest.mark.parametrize("finder", [IRAFStarFinder(5 * SIGMA, FWHM),
                                    DAOStarFinder(5 * SIGMA, FWHM, exclude_border=True)])
def test_cutout_detection_equals_the_whole_image(finder, monkeypatch):
    """Detection on a mosaic of cut-outs (strips for cut-outs clipped by an edge, single calls
    in corners) finds exactly the whole image's detections near the artificial stars: none
    fires on a cut-out's edge, none is lost at the image's edge."""
    import crowdphot.pipeline.ast_local as local

    data, _, _ = _field(150, 200, seed=7)
    # stars everywhere: inside, on every edge and in every corner
    xs = np.array([75.0, 30.2, 120.7, 0.4, 149.0, 60.3, 88.8, 1.2, 148.6, 2.0, 147.9])
    ys = np.array([75.0, 40.6, 110.1, 70.2, 80.5, 0.3, 149.2, 1.1, 1.6, 148.3, 147.7])
    phot = PSFPhotometry(PSF, (5, 5), finder=finder, aperture_radius=3)
    image = data + render_image(data.shape, PSF, xs, ys, np.full(xs.size, 800.0))
    mask = np.zeros(image.shape, dtype=bool)
    mask[100:110, 0:12] = True  # masked pixels on an edge and inside
    mask[40:44, 70:80] = True
    found = {}
    for mode in ("cutout", "whole"):
        monkeypatch.setattr(local, "DETECTION", mode)
        counter = {"cutout": 0, "whole": 0}
        found[mode] = local._detect_near(phot, image, mask, xs, ys, 20.0, 15.0, counter)
        assert counter[mode] == 1
    assert len(found["whole"][0]) > 2 * len(xs)
    np.testing.assert_allclose(found["cutout"][0], found["whole"][0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(found["cutout"][1], found["whole"][1], rtol=0, atol=1e-9)


def test_batches_do_not_crowd_and_are_greedy():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 100, 300), rng.uniform(0, 100, 300)
    batch = assign_batches(x, y, 12.0)
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    close = (d <= 12.0) & ~np.eye(len(x), dtype=bool)
    assert not np.any(close & (batch[:, None] == batch[None]))
    order = np.argsort(-close.sum(axis=1), kind="stable")  # most neighbours first
    seen = np.zeros(len(x), dtype=bool)
    in_order = np.zeros(len(x), dtype=np.int64)
    for i in order:  # lowest batch not used by a neighbour placed before it
        used = set(batch[close[i] & seen])
        assert batch[i] == min(set(range(len(used) + 1)) - used)
        seen[i] = True
    for i in range(len(x)):  # the same rule in input order takes more batches
        used = set(in_order[:i][close[i, :i]])
        in_order[i] = min(set(range(len(used) + 1)) - used)
    assert batch.max() < in_order.max()


def test_drawn_stars_are_uniform_log_uniform_and_deterministic():
    x, y, f = draw_artificial_stars((200, 300), 4000, (10.0, 1e4), seed=5)
    assert x.min() >= 0 and x.max() <= 299 and y.min() >= 0 and y.max() <= 199
    assert stats.kstest((np.log10(f) - 1) / 3, "uniform").pvalue > 1e-3
    assert stats.kstest(x / 299, "uniform").pvalue > 1e-3
    x2, y2, f2 = draw_artificial_stars((200, 300), 4000, (10.0, 1e4), seed=5)
    assert np.array_equal(x, x2) and np.array_equal(f, f2)
    avoid = (np.array([150.0, 20.0]), np.array([100.0, 20.0]))
    xa, ya, _ = draw_artificial_stars((200, 300), 4000, (10.0, 1e4), seed=5, avoid=avoid,
                                      min_separation=10.0)
    assert np.min(np.hypot(xa[:, None] - avoid[0], ya[:, None] - avoid[1])) > 10.0


def test_deterministic_for_a_seed(field):
    data, _, err = field
    phot = _phot()
    a = artificial_star_test(data, phot, 60, (30, 3000), error=err, seed=11).table
    b = artificial_star_test(data, phot, 60, (30, 3000), error=err, seed=11,
                             progress_bar=True).table
    c = artificial_star_test(data, phot, 60, (30, 3000), error=err, seed=12).table
    for name in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
    assert not np.array_equal(np.asarray(a["x_in"]), np.asarray(c["x_in"]))
    assert list(a.colnames[:9]) == ["x_in", "y_in", "flux_in", "recovered", "x_out", "y_out",
                                    "flux_out", "flux_err", "flags"]


def test_isolated_stars_recovered_with_honest_errors():
    data = make_noise_image((200, 200), mean=0.0, stddev=SIGMA, seed=4)
    err = np.full(data.shape, SIGMA)
    res = artificial_star_test(data, _phot(), 300, (1000, 5000), error=err, seed=2, border=5)
    t = res.table
    assert np.all(t["recovered"])
    pull = (np.asarray(t["flux_out"]) - np.asarray(t["flux_in"])) / np.asarray(t["flux_err"])
    assert abs(np.mean(pull)) < 4 / np.sqrt(len(pull))
    assert 0.85 < np.std(pull) < 1.15
    # recovered is exactly the documented rule
    dist = np.hypot(t["x_out"] - t["x_in"], t["y_out"] - t["y_in"])
    assert np.all(dist <= 0.5)
    strict = artificial_star_test(data, _phot(), 300, (1000, 5000), error=err, seed=2, border=5,
                                  match_flux=1e-3).table
    rule = np.abs(strict["flux_out"] - strict["flux_in"]) <= 1e-3 * strict["flux_in"]
    np.testing.assert_array_equal(np.asarray(strict["recovered"]), np.asarray(rule))
    assert 0 < np.count_nonzero(strict["recovered"]) < 300


def test_select_rule_is_applied_to_each_batch(field):
    """A clean-up rule of the run (the CLI's --min-snr) decides what can be a measurement."""
    data, _, err = field
    calls = []

    def reject_faint(image, error, mask, table):
        calls.append(len(table))
        return np.asarray(table["flux_fit"]) > 1000

    kw = dict(error=err, seed=8)
    free = artificial_star_test(data, _phot(), 80, (30, 3000), **kw).table
    cut = artificial_star_test(data, _phot(), 80, (30, 3000), select=reject_faint, **kw).table
    assert len(calls) >= 2 and sum(calls) > 20  # once per batch with fitted stars
    found = np.isfinite(np.asarray(cut["flux_out"]))
    assert np.all(np.asarray(cut["flux_out"])[found] > 1000)
    keep = np.asarray(free["flux_out"]) > 1000
    np.testing.assert_array_equal(np.asarray(cut["x_out"])[keep],
                                  np.asarray(free["x_out"])[keep])
    assert np.count_nonzero(cut["recovered"]) < np.count_nonzero(free["recovered"])


def test_masked_and_non_finite_pixels():
    """Stars on masked or NaN pixels are not recovered; elsewhere they are; one warning at
    most (the original run's), none per batch."""
    data = make_noise_image((200, 200), mean=0.0, stddev=SIGMA, seed=4)
    data[20:80, 20:80] = np.nan
    mask = np.zeros(data.shape, dtype=bool)
    mask[120:180, 120:180] = True
    err = np.full(data.shape, SIGMA)
    with pytest.warns(Warning, match="non-finite") as record:  # the original run's, once
        t = artificial_star_test(data, _phot(), 300, (2000, 5000), mask=mask, error=err,
                                 seed=6, border=5).table
    assert len(record) == 1
    x, y = np.asarray(t["x_in"]), np.asarray(t["y_in"])
    inside = (((x > 22) & (x < 77) & (y > 22) & (y < 77))
              | ((x > 122) & (x < 177) & (y > 122) & (y < 177)))
    clear = ~(((x > 14) & (x < 85) & (y > 14) & (y < 85))
              | ((x > 114) & (x < 185) & (y > 114) & (y < 185)))
    assert inside.sum() > 20 and clear.sum() > 100
    assert not np.any(np.asarray(t["recovered"])[inside])
    assert np.all(np.asarray(t["recovered"])[clear])


def test_gain_adds_the_stars_photon_noise():
    data = make_noise_image((200, 200), mean=0.0, stddev=SIGMA, seed=4)
    err = np.full(data.shape, SIGMA)
    kw = dict(error=err, seed=2)
    quiet = artificial_star_test(data, _phot(), 200, (3000, 6000), **kw).table
    noisy = artificial_star_test(data, _phot(), 200, (3000, 6000), gain=0.05, **kw).table
    rq = np.asarray(quiet["flux_out"] / quiet["flux_in"])
    rn = np.asarray(noisy["flux_out"] / noisy["flux_in"])
    # photon noise of a flux-f star at gain g: sqrt(f / g) -> ~6 % at f=4500, g=0.05
    assert np.nanstd(rn) > 3 * np.nanstd(rq)
    # ... and the error map carries it: errors grow accordingly and pulls stay ~1
    pull = (noisy["flux_out"] - noisy["flux_in"]) / noisy["flux_err"]
    assert 0.8 < np.nanstd(np.asarray(pull)) < 1.25


def test_completeness_equals_the_fields_own_recovered_fraction():
    """The issue's goal at 1/4 scale: 512^2, 750 stars over 3 dex, min separation 3 px."""
    data, truth, err = _field(512, 750, seed=0)
    phot = _phot()
    cat = phot(data, error=err)
    ti, ci = match_xy(truth["x_0"], truth["y_0"], cat["x_fit"], cat["y_fit"], separation=0.5)
    ft = np.asarray(truth["flux"])
    rec = np.zeros(len(truth), dtype=bool)
    rec[ti] = np.abs(np.asarray(cat["flux_fit"])[ci] - ft[ti]) <= 0.1 * ft[ti]
    # the field's stars keep 3 px from each other: so do the artificial ones
    res = artificial_star_test(data, phot, 3000, (10, 10_000), error=err, seed=5, catalog=cat,
                               min_separation=3.0, avoid=(truth["x_0"], truth["y_0"]))
    la = np.log10(np.asarray(res.table["flux_in"]))
    ra = np.asarray(res.table["recovered"])
    lt = np.log10(ft)
    checked = 0
    for lo in np.arange(1.0, 4.0, 0.5):
        s, a = (lt >= lo) & (lt < lo + 0.5), (la >= lo) & (la < lo + 0.5)
        ct, ca = rec[s].mean(), ra[a].mean()
        sig = np.sqrt(ct * (1 - ct) / s.sum() + ca * (1 - ca) / a.sum())
        assert abs(ca - ct) <= max(3 * sig, 0.02), (lo, ct, ca, sig)
        checked += 0 < ct < 1
    assert checked >= 3  # the test spans the completeness drop


def test_summary_and_map_against_brute_force():
    rng = np.random.default_rng(1)
    n = 500
    fin = 10 ** rng.uniform(1, 4, n)
    rec = rng.uniform(size=n) < 0.7
    xin, yin = rng.uniform(0, 99, n), rng.uniform(0, 49, n)
    off = np.where(rng.uniform(size=n) < 0.9, rng.normal(0, 0.1, n), 3.0)
    fout = fin * (1 + rng.normal(0.01, 0.02, n))
    t = QTable({"x_in": xin, "y_in": yin, "flux_in": fin, "recovered": rec,
                "x_out": xin + off, "y_out": yin, "flux_out": fout})
    edges = np.array([-10.0, -8.5, -7.0, -5.0, -2.0])
    s = ast_summary(t, bins=edges, zeropoint=0.0, match_radius=0.5)
    mag = -2.5 * np.log10(fin)
    for i in range(len(edges) - 1):
        inb = (mag >= edges[i]) & (mag < edges[i + 1])
        assert s["n"][i] == inb.sum() and s["n_recovered"][i] == (inb & rec).sum()
        assert s["completeness"][i] == pytest.approx((inb & rec).sum() / inb.sum())
        found = inb & (np.abs(off) <= 0.5)
        d = -2.5 * np.log10(fout[found] / fin[found])
        assert s["bias"][i] == pytest.approx(np.median(d))
        assert s["scatter"][i] == pytest.approx(1.4826 * np.median(np.abs(d - np.median(d))))
    assert s["flux_lo"][0] == pytest.approx(10 ** (-0.4 * edges[1]))
    c, cnt = completeness_map(t, (50, 100), bins=(2, 4))
    assert cnt.sum() == n
    cell = (yin < 24.5) & (xin < 24.5)
    assert c[0, 0] == pytest.approx(rec[cell].mean()) and cnt[0, 0] == cell.sum()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n_stars=0), ValueError, "n_stars must be positive"),
    (dict(n_stars=-5), ValueError, "n_stars must be positive"),
    (dict(n_stars=2.5), TypeError, "n_stars must be an integer"),
    (dict(flux_range=(100, 100)), ValueError, "LO must be below HI"),
    (dict(flux_range=(500, 100)), ValueError, "LO must be below HI"),
    (dict(flux_range=(-1, 100)), ValueError, "finite and positive"),
    (dict(flux_range=(0.1, 1.0)), ValueError, "below the image noise"),
    (dict(match_radius=0), ValueError, "match_radius"),
    (dict(gain=-1), ValueError, "gain"),
])
def test_bad_input_is_a_one_line_error(field, kwargs, exc, match):
    data, _, err = field
    args = dict(n_stars=10, flux_range=(100, 1000))
    args.update(kwargs)
    extra = {k: v for k, v in args.items() if k not in ("n_stars", "flux_range")}
    with pytest.raises(exc, match=match) as info:
        artificial_star_test(data, _phot(), args["n_stars"], args["flux_range"], error=err,
                             **extra)
    assert "\n" not in str(info.value)


def test_finders_that_look_at_the_whole_image(field):
    """n_brightest ranks every detection of the image: each batch is then detected on the
    whole image (still equal to a full re-run), and tiles are refused."""
    data, _, err = field
    phot = PSFPhotometry(PSF, (5, 5), finder=IRAFStarFinder(5 * SIGMA, FWHM, n_brightest=60),
                         aperture_radius=3, grouper=SourceGrouper(5))
    res = artificial_star_test(data, phot, 40, (30, 3000), error=err, seed=3)
    t = res.table
    assert res.meta["finder_calls"] == {"cutout": 0, "whole": res.meta["n_batches"]}
    for b in range(res.meta["n_batches"]):
        s = t[t["batch"] == b]
        full = phot(data + render_image(data.shape, PSF, s["x_in"], s["y_in"], s["flux_in"]),
                    error=err)
        d, j = cKDTree(np.column_stack([full["x_fit"], full["y_fit"]])).query(
            np.column_stack([s["x_in"], s["y_in"]]), distance_upper_bound=res.meta["search_radius"])
        hit = np.isfinite(d)
        np.testing.assert_array_equal(hit, np.isfinite(s["x_out"]))
        np.testing.assert_allclose(np.asarray(s["flux_out"])[hit],
                                   np.asarray(full["flux_fit"])[j[hit]], rtol=1e-9)
    with pytest.raises(ValueError, match="tiles need a finder"):
        artificial_star_test(data, phot, 40, (30, 3000), error=err, seed=3, tile_shape=64)


def test_phot_objects_it_cannot_use(field):
    data, _, err = field
    with pytest.raises(ValueError, match="must have a finder"):
        artificial_star_test(data, PSFPhotometry(PSF, 5, aperture_radius=3), 5, (100, 1000))
    with pytest.raises(TypeError, match="PSFPhotometry or IterativePSFPhotometry"):
        artificial_star_test(data, DAOStarFinder(10, FWHM), 5, (100, 1000))
    forced = PSF.copy()
    forced.x_0.fixed = True
    forced.y_0.fixed = True
    with pytest.raises(ValueError, match="fixed positions"):
        artificial_star_test(data, PSFPhotometry(forced, 5, finder=DAOStarFinder(10, FWHM),
                                                 aperture_radius=3), 5, (100, 1000))


# ----------------------------------------------------------------------------------------------
# the command line


def _psf_file(path, oversampling=4, size=31):
    n = size * oversampling + 1
    offsets = (np.arange(n) - (n - 1) / 2) / oversampling
    xx, yy = np.meshgrid(offsets, offsets)
    hdu = fits.PrimaryHDU(PSF(xx, yy))
    hdu.header["OVERSAMP"] = oversampling
    hdu.writeto(path)
    return path


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ast")
    data, _, _ = _field(128, 40, seed=3, flux=(50, 5000), min_separation=5)
    fits.writeto(root / "img.fits", data)
    return root, _psf_file(root / "psf.fits")


def test_cli_ast_writes_table_summary_and_figures(cli_files, capsys):
    root, psf = cli_files
    out = root / "ast.ecsv"
    argv = ["ast", root / "img.fits", "--psf", psf, "-o", out, "--n", 80, "--flux", 20, 5000,
            "--seed", 4, "--threshold", 10, "--fwhm", FWHM, "--group-radius", 5,
            "--no-progress", "--plots", root / "figs"]
    assert main([str(a) for a in argv]) == 0
    stdout = capsys.readouterr().out
    assert "80 artificial stars" in stdout and "completeness" in stdout
    t = QTable.read(out)
    assert len(t) == 80 and list(t.colnames[:9]) == [
        "x_in", "y_in", "flux_in", "recovered", "x_out", "y_out", "flux_out", "flux_err",
        "flags"]
    s = QTable.read(root / "ast_summary.ecsv")
    assert s["n"].sum() == 80 and s["n_recovered"].sum() == np.count_nonzero(t["recovered"])
    assert (root / "figs" / "ast_summary.png").exists()
    assert (root / "figs" / "ast_completeness_map.png").exists()
    # same seed, same table
    out2 = root / "ast2.ecsv"
    argv[argv.index(out)] = out2
    assert main([str(a) for a in argv]) == 0
    t2 = QTable.read(out2)
    np.testing.assert_array_equal(np.asarray(t["x_out"]), np.asarray(t2["x_out"]))
    # tiles: the same table to the tolerance of the CLI's all-star passes (they stop on a
    # criterion over all the stars fitted together, which a tile changes)
    argv[argv.index(out2)] = root / "ast_tiles.ecsv"
    assert main([str(a) for a in argv + ["--tile", 40]]) == 0
    t3 = QTable.read(root / "ast_tiles.ecsv")
    np.testing.assert_allclose(np.asarray(t3["x_out"]), np.asarray(t["x_out"]), atol=2e-3)
    dflux = np.abs(np.asarray(t3["flux_out"] - t["flux_out"]) / np.asarray(t["flux_err"]))
    assert np.nanmax(dflux) < 0.3
    assert np.count_nonzero(t3["recovered"] != t["recovered"]) <= 1
    # phot's iterative mode is followed
    argv[argv.index(root / "ast_tiles.ecsv")] = root / "ast_iter.ecsv"
    argv[argv.index("--n") + 1] = 20
    assert main([str(a) for a in argv + ["--iterative", 2]]) == 0
    assert len(QTable.read(root / "ast_iter.ecsv")) == 20


def test_cli_ast_bias_correction_reaches_the_artificial_stars(cli_files, capsys):
    root, psf = cli_files
    data = fits.getdata(root / "img.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI"),
                  fits.ImageHDU(np.full(data.shape, SIGMA), name="ERR")]).writeto(
        root / "img_err.fits", overwrite=True)
    tabs = []
    for extra in ([], ["--bias-correction"]):
        out = root / f"ast_bc{len(extra)}.ecsv"
        argv = ["ast", root / "img_err.fits", "--psf", psf, "-o", out, "--n", 30, "--flux",
                30, 300, "--seed", 4, "--threshold", 10, "--fwhm", FWHM, "--group-radius", 5,
                "--no-progress", *extra]
        assert main([str(a) for a in argv]) == 0
        tabs.append(QTable.read(out))
    capsys.readouterr()
    a, b = (np.asarray(t["flux_out"], dtype=float) for t in tabs)
    both = np.isfinite(a) & np.isfinite(b)
    assert both.sum() > 10
    assert np.median(a[both] - b[both]) > 0  # the faint artificial stars' fluxes came down


@pytest.mark.parametrize("extra, match", [
    (["--n", "0", "--flux", "20", "5000"], "--n must be positive"),
    (["--n", "10", "--flux", "5000", "20"], "--flux LO must be below HI"),
    (["--n", "10", "--flux", "0.01", "0.1"], "below the image noise"),
    (["--n", "10", "--flux", "20", "5000", "--residual", "r.fits"], "--residual is not supported"),
    (["--n", "10", "--flux", "20", "5000", "--workers", "2"], "--workers/--scheduler need --tile"),
    (["--n", "10", "--flux", "20", "5000", "--match-flux", "0"], "--match-flux must be positive"),
    (["--n", "10", "--flux", "20", "5000", "--photon-noise"], "--photon-noise needs the gain"),
    (["--n", "10", "--flux", "20", "5000", "--bias-correction"], "needs an ERR extension"),
])
def test_cli_ast_bad_input_one_line(cli_files, capsys, extra, match):
    root, psf = cli_files
    out = root / "bad.ecsv"
    code = main([str(a) for a in ["ast", root / "img.fits", "--psf", psf, "-o", out,
                                  "--threshold", 10, "--no-progress", *extra]])
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
