"""Joint multi-exposure fits in sky tiles (crowdphot.pipeline.multi_tiles)."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from test_multi import DEC0, make_exposure, make_sky, make_wcs

from crowdphot import CircularGaussianPRF
from crowdphot.pipeline.multi import fit_exposures
from crowdphot.pipeline.multi_sky import detect_on_stack
from crowdphot.pipeline.multi_tiles import detect_tiled, fit_exposures_tiled


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(31)
    shape = (120, 120)
    ra, dec, flux = make_sky(rng, 11, 9.0)
    psfs = {"A": CircularGaussianPRF(fwhm=2.4), "B": CircularGaussianPRF(fwhm=3.0)}
    exps = []
    for filt in "AAB":
        w = make_wcs(shape, dx=rng.uniform(-3, 3), dy=rng.uniform(-3, 3),
                     rot_deg=rng.uniform(-1.5, 1.5))
        exps.append(make_exposure(rng, shape, w, psfs[filt], ra, dec,
                                  flux * (0.6 if filt == "B" else 1.0), filt))
    ra_i = ra + rng.normal(0, 0.03, ra.size) / 3600 / np.cos(np.deg2rad(DEC0))
    dec_i = dec + rng.normal(0, 0.03, ra.size) / 3600
    return exps, Table({"ra": ra_i, "dec": dec_i})


def _compare(tiled, whole):
    assert np.all(tiled["flags"] == whole["flags"])
    ok = whole["flags"] == 0
    assert ok.mean() > 0.9
    cosd = np.cos(np.deg2rad(DEC0))
    for col, err, scale in (("ra", "ra_err", 3600 * cosd), ("dec", "dec_err", 3600)):
        d = (tiled[col].to_value(u.deg) - whole[col].to_value(u.deg)) * scale
        assert np.max(np.abs(d[ok]) / whole[err].to_value(u.arcsec)[ok]) < 1e-3
    for f in "AB":
        d = np.abs(tiled[f"flux_{f}"] - whole[f"flux_{f}"]) / whole[f"flux_err_{f}"]
        assert np.max(d[ok]) < 1e-3
        np.testing.assert_allclose(tiled[f"flux_err_{f}"][ok], whole[f"flux_err_{f}"][ok],
                                   rtol=1e-3)


def test_tiles_equal_the_whole_field(field):
    exps, cat = field
    whole = fit_exposures(exps, cat)
    tiled = fit_exposures_tiled(exps, cat, tile_size=3.5)
    assert len(np.unique(tiled["tile"])) >= 9
    assert np.all(tiled["n_exposures"] == whole["n_exposures"])
    _compare(tiled, whole)


def test_tiles_on_dask(field):
    distributed = pytest.importorskip("dask.distributed")
    exps, cat = field
    whole = fit_exposures(exps, cat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cluster start-up chatter is not under test
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
    try:
        tiled = fit_exposures_tiled(exps, cat, tile_size=6.0, client=client)
        det = detect_tiled(exps, tile_size=1.0, client=client)  # detection tasks on Dask
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client.close()
            cluster.close()
    assert len(np.unique(tiled["tile"])) >= 4
    _compare(tiled, whole)
    ref = detect_on_stack(exps)
    assert len(det) == len(ref)
    np.testing.assert_allclose(np.sort(det["ra"].value), np.sort(ref["ra"].value), rtol=0,
                               atol=1e-10)


def test_tiles_bad_arguments(field):
    exps, cat = field
    with pytest.raises(ValueError, match="tile_size"):
        fit_exposures_tiled(exps, cat, tile_size=0)
    with pytest.raises(ValueError, match="flux_per"):
        fit_exposures_tiled(exps, cat, tile_size=5.0, flux_per="star")
    with pytest.raises(ValueError, match="margin"):
        fit_exposures_tiled(exps, cat, tile_size=5.0, margin=-1)


def test_tiles_from_files_read_lazily(field, tmp_path):
    from astropy.io import fits

    from crowdphot.pipeline.multi_tiles import ExposureFile

    exps, cat = field
    files = []
    for k, e in enumerate(exps):
        hdr = e.wcs.to_header()
        prim = fits.PrimaryHDU()
        prim.header["FILTER"] = e.filter_name
        path = tmp_path / f"e{k}.fits"
        fits.HDUList([prim, fits.ImageHDU(e.data, hdr, name="SCI"),
                      fits.ImageHDU(e.error, name="ERR")]).writeto(path)
        files.append(ExposureFile(path, e.psf_model))
    assert [f.filter_name for f in files] == ["A", "A", "B"]
    whole = fit_exposures(exps, cat)
    tiled = fit_exposures_tiled(files, cat, tile_size=3.5)
    _compare(tiled, whole)
    # no catalog: detection on the stack, tile by tile from the files' boxes
    det_whole = fit_exposures(exps, None)
    det_tiled = fit_exposures_tiled(files, None, tile_size=3.5)
    assert len(det_tiled) == len(det_whole) >= 100
    by_pos = [np.lexsort((t["dec"].value.round(9), t["ra"].value.round(9)))
              for t in (det_tiled, det_whole)]
    _compare(det_tiled[by_pos[0]], det_whole[by_pos[1]])
    nowcs = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((10, 10))).writeto(nowcs)
    with pytest.raises(ValueError, match="nowcs.fits: no celestial WCS"):
        ExposureFile(nowcs, exps[0].psf_model, "A")


@pytest.mark.parametrize("with_error", [True, False])
def test_tiled_detection_equals_whole_stack(field, with_error):
    """Each tile stacks its own boxes and keeps what it detects in its core: the union is the
    whole-stack detection, sources at the seams included (exactly one tile owns each)."""
    exps, _ = field
    if not with_error:
        from dataclasses import replace

        exps = [replace(e, error=None) for e in exps]
    whole = detect_on_stack(exps)
    tiled = detect_tiled(exps, tile_size=1.0)  # 64 px tiles: 4 on this field
    w = exps[0].wcs
    xw, yw = w.all_world2pix(whole["ra"], whole["dec"], 0)
    xt, yt = w.all_world2pix(tiled["ra"], tiled["dec"], 0)
    assert len(tiled) == len(whole) >= 100
    d = np.hypot(xw[:, None] - xt[None], yw[:, None] - yt[None])
    assert d.min(axis=1).max() < 1e-6 and d.min(axis=0).max() < 1e-6
    # sources within a FWHM of a seam exist and were found once
    x0 = np.floor(xw.min() - 10)
    near = np.abs((xt - x0) % 64 - 32) > 32 - 2.5
    assert near.sum() >= 3


def test_tiles_flux_per_exposure(field):
    """One flux per exposure in tiles equals the whole-field fit, exposure indices kept when
    a tile's boxes miss an exposure."""
    exps, cat = field
    # a fourth exposure covering only part of the field: tiles without it renumber the rest
    e0 = exps[0]
    part = type(e0)(e0.data[:, :60].copy(), e0.error[:, :60].copy(), None, e0.wcs[:, :60],
                    e0.psf_model, "A", name="part")
    exps = [part, *exps]
    whole = fit_exposures(exps, cat, flux_per="exposure")
    tiled = fit_exposures_tiled(exps, cat, tile_size=3.5, flux_per="exposure")
    assert {f"flux_{f}_{k}" for k, f in enumerate("AAAB")} <= set(tiled.colnames)
    assert np.all(tiled["flags"] == whole["flags"])
    ok = (whole["flags"] & ~2) == 0  # 2: no pixel of the partial exposure
    assert ok.mean() > 0.9
    for k, f in enumerate("AAAB"):
        col = f"flux_{f}_{k}"
        fine = ok & np.isfinite(whole[col])
        d = np.abs(tiled[col][fine] - whole[col][fine]) / whole[f"flux_err_{f}_{k}"][fine]
        assert fine.sum() > 20 and np.max(d) < 1e-3
    # the partial exposure does not cover the sources of the other half
    assert np.isnan(whole["flux_A_0"]).sum() > 20


def test_tiled_detection_of_files_without_errors(field, tmp_path):
    """Files without ERR: each exposure's noise from its strided pixels, read in strips."""
    from dataclasses import replace

    from astropy.io import fits

    from crowdphot.pipeline.multi_sky import exposure_noise
    from crowdphot.pipeline.multi_tiles import ExposureFile

    exps, _ = field
    exps = [replace(e, error=None) for e in exps]
    files = []
    for k, e in enumerate(exps):
        path = tmp_path / f"n{k}.fits"
        fits.PrimaryHDU(e.data, e.wcs.to_header()).writeto(path)
        files.append(ExposureFile(path, e.psf_model, e.filter_name))
    assert not files[0].has_error
    for e, f in zip(exps, files, strict=True):
        assert exposure_noise(f, rows=7) == exposure_noise(e)
    whole = detect_on_stack(exps)
    tiled = detect_tiled(files, tile_size=1.0)
    assert len(tiled) == len(whole) >= 100
    np.testing.assert_allclose(np.sort(tiled["dec"].value), np.sort(whole["dec"].value),
                               rtol=0, atol=1e-10)
