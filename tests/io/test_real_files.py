"""``crowdphot phot`` on files shaped like real archive products (issue 11).

Every file is made here: a JWST-like calibrated MEF (SCI/ERR/DQ, MJy/sr, TAN-SIP WCS, the
usual primary keywords), the same field on a shifted pointing, a galactic-WCS image as
Spitzer's mosaics have, an FK4 one, an unparseable WCS. Stars are Gaussian PRFs written as an
oversampled PSF image so that each run takes a fraction of a second after imports.
"""

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import MaskedColumn, QTable, Table
from astropy.wcs import WCS

from crowdphot import CircularGaussianPRF, match_catalogs
from crowdphot.cli.app import main
from crowdphot.datasets.simulation import make_model_image

FWHM = 2.5
NOISE = 1.0
SHAPE = (120, 120)
N_STARS = 10


def _sip_header(crpix, crval=(80.49, -69.50), ctype=("RA---TAN-SIP", "DEC--TAN-SIP")):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = ctype
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CRPIX1"], h["CRPIX2"] = crpix
    scale = 0.063 / 3600
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -scale, 0.0, 0.0, scale
    h["CUNIT1"] = h["CUNIT2"] = "deg"
    if ctype[0].endswith("-SIP"):
        h["A_ORDER"] = h["B_ORDER"] = 2
        # ~0.4 px of distortion at the corners: enough to matter, as NIRCam's does
        h["A_2_0"], h["A_0_2"], h["A_1_1"] = 1e-4, -5e-5, 7e-5
        h["B_2_0"], h["B_0_2"], h["B_1_1"] = -5e-5, 1e-4, 5e-5
    return h


def _gauss_psf_file(path, *, oversampling=4, size=31, keyword=True):
    n = size * oversampling + 1
    offsets = (np.arange(n) - (n - 1) / 2) / oversampling
    xx, yy = np.meshgrid(offsets, offsets)
    hdu = fits.PrimaryHDU(CircularGaussianPRF(fwhm=FWHM)(xx, yy))
    if keyword:
        hdu.header["OVERSAMP"] = oversampling
    hdu.writeto(path)
    return path


def _sky_stars(seed=3):
    """Star sky positions and fluxes, placed through a reference pointing."""
    rng = np.random.default_rng(seed)
    w = WCS(_sip_header((60.5, 60.5)))
    xy = []
    while len(xy) < N_STARS:
        p = rng.uniform(20, SHAPE[0] - 20, 2)
        if all(np.hypot(*(p - q)) > 14 for q in xy):
            xy.append(p)
    xy = np.array(xy)
    sky = w.pixel_to_world(xy[:, 0], xy[:, 1])
    flux = rng.uniform(3000, 8000, N_STARS)
    return sky, flux


def _write_mef(path, header, sky, flux, *, seed=0, bunit="MJy/sr", primary_extra=None,
               dq=None, nan_pixels=()):
    """A JWST-like calibrated file of the stars at ``sky`` seen through ``header``'s WCS."""
    w = WCS(header)
    x, y = w.world_to_pixel(sky)
    params = QTable({"x_0": x, "y_0": y, "flux": flux})
    data = make_model_image(SHAPE, CircularGaussianPRF(fwhm=FWHM), params,
                            model_shape=(15, 15))
    data = data + np.random.default_rng(seed).normal(0, NOISE, SHAPE)
    for yy, xx in nan_pixels:
        data[yy, xx] = np.nan
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "JWST"
    primary.header["INSTRUME"] = "NIRCAM"
    primary.header["FILTER"] = "F444W"
    primary.header["PUPIL"] = "CLEAR"
    primary.header["DETECTOR"] = "NRCALONG"
    for k, v in (primary_extra or {}).items():
        primary.header[k] = v
    sci = header.copy()
    if bunit is not None:
        sci["BUNIT"] = bunit
        sci["PIXAR_SR"] = 9.31e-14  # NIRCam long wave
    hdus = [primary, fits.ImageHDU(data.astype(np.float32), sci, name="SCI"),
            fits.ImageHDU(np.full(SHAPE, NOISE, np.float32), name="ERR"),
            fits.ImageHDU(np.zeros(SHAPE, np.uint32) if dq is None else dq, name="DQ")]
    fits.HDUList(hdus).writeto(path)
    return QTable({"x_0": x, "y_0": y, "flux": flux, "ra": sky.ra.deg, "dec": sky.dec.deg})


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    sky, flux = _sky_stars()
    psf = _gauss_psf_file(root / "psf.fits")
    truth_a = _write_mef(root / "a_cal.fits", _sip_header((60.5, 60.5)), sky, flux, seed=1)
    # the same field, pointed 8 px away in x and 5 in y: pixel catalogs of A are wrong here
    truth_b = _write_mef(root / "b_cal.fits", _sip_header((68.5, 55.5)), sky, flux, seed=2)
    return {"root": root, "psf": psf, "sky": sky, "flux": flux, "a": root / "a_cal.fits",
            "b": root / "b_cal.fits", "truth_a": truth_a, "truth_b": truth_b}


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _phot(image, psf, out, capsys, *extra, ok=True):
    code, stdout, stderr = _run(["phot", image, "--psf", psf, "-o", out, "--threshold", 30,
                                 "--fwhm", FWHM, "--no-progress", *extra], capsys)
    if ok:
        assert code == 0, stderr
        return QTable.read(out), stderr
    return code, stderr


def _matched(truth, table, sep=1.0):
    t = QTable({"x_0": truth["x_0"], "y_0": truth["y_0"], "flux": truth["flux"]})
    m = match_catalogs(t, table, separation=sep)
    assert len(m) == len(truth)
    return m


# -- item 1: --init with sky coordinates --------------------------------------------------------
def test_init_catalog_of_another_pointing_uses_its_sky_positions(field, tmp_path, capsys):
    cat_a, _ = _phot(field["a"], field["psf"], tmp_path / "a.ecsv", capsys)
    assert {"x_fit", "y_fit", "ra", "dec"} <= set(cat_a.colnames)
    forced, err = _phot(field["b"], field["psf"], tmp_path / "b.ecsv", capsys,
                        "--init", tmp_path / "a.ecsv")
    # A's x/y are 8 px off on B: a warning says so, and the sky positions are used
    assert "differ from its ra/dec" in err and "using ra/dec" in err
    m = _matched(field["truth_b"], forced, sep=0.1)
    # the positions come from A's fit (noise ~0.02 px) mapped through B's SIP WCS
    np.testing.assert_allclose(m["x_fit"], m["x_0"], atol=0.1)
    rel = np.asarray(m["flux_fit"]) / np.asarray(m["flux"]) - 1
    assert np.max(np.abs(rel)) < 0.02
    assert forced.meta["init_coords"] == "sky"


def test_init_coords_pixel_keeps_the_catalog_pixels(field, tmp_path, capsys):
    cat = QTable({"x": field["truth_a"]["x_0"], "y": field["truth_a"]["y_0"],
                  "ra": field["truth_a"]["ra"], "dec": field["truth_a"]["dec"]})
    cat.write(tmp_path / "cat.ecsv")
    forced, _ = _phot(field["a"], field["psf"], tmp_path / "f.ecsv", capsys,
                      "--init", tmp_path / "cat.ecsv", "--init-coords", "pixel")
    np.testing.assert_array_equal(forced["x_fit"], cat["x"])
    assert forced.meta["init_coords"] == "pixel"


def test_masked_init_positions_are_an_error_not_a_star_at_zero(field, tmp_path, capsys):
    t = Table({"x": MaskedColumn(field["truth_a"]["x_0"], mask=[False] * 9 + [True]),
               "y": field["truth_a"]["y_0"]})
    t.write(tmp_path / "masked.ecsv")
    code, err = _phot(field["a"], field["psf"], tmp_path / "f.ecsv", capsys,
                      "--init", tmp_path / "masked.ecsv", "--init-coords", "pixel", ok=False)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "1 row(s) with masked x/y (rows 9)" in err
    assert not (tmp_path / "f.ecsv").exists()


# -- item 2: ICRS sky coordinates whatever the WCS frame ---------------------------------------
def _single_frame_file(path, header):
    sky, flux = _sky_stars()
    truth = _write_mef(path, _sip_header((60.5, 60.5)), sky, flux, seed=4)
    with fits.open(path, mode="update") as hdul:
        for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "RADESYS", "EQUINOX"):
            if key in header:
                hdul["SCI"].header[key] = header[key]
        for key in [k for k in hdul["SCI"].header if k[:2] in ("A_", "B_")]:
            del hdul["SCI"].header[key]
    return truth


@pytest.mark.parametrize("frame", ["galactic", "fk4"])
def test_sky_columns_are_icrs_whatever_the_wcs_frame(tmp_path, capsys, field, frame):
    h = fits.Header()
    if frame == "galactic":
        h["CTYPE1"], h["CTYPE2"] = "GLON-TAN", "GLAT-TAN"
        h["CRVAL1"], h["CRVAL2"] = 280.47, -32.89
    else:
        h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
        h["CRVAL1"], h["CRVAL2"] = 80.0, -69.6
        h["RADESYS"], h["EQUINOX"] = "FK4", 1950.0
    truth = _single_frame_file(tmp_path / f"{frame}.fits", h)
    table, _ = _phot(tmp_path / f"{frame}.fits", field["psf"], tmp_path / "c.ecsv", capsys)
    m = _matched(truth, table)
    w = WCS(fits.getheader(tmp_path / f"{frame}.fits", "SCI"))
    expected = w.pixel_to_world(np.asarray(m["x_fit"]), np.asarray(m["y_fit"])).icrs
    got = SkyCoord(m["ra"], m["dec"], frame="icrs")
    assert np.max(got.separation(expected).arcsec) < 1e-6
    raw = w.pixel_to_world_values(np.asarray(m["x_fit"]), np.asarray(m["y_fit"]))
    # the raw frame values (l/b, B1950) are far from ICRS: they were not written
    assert np.min(np.abs(np.asarray(m["ra"].value) - raw[0])) > 0.05
    assert table.meta["sky_frame"] == "icrs" and table.meta["wcs_frame"] == frame
    if frame == "fk4":
        assert table.meta["wcs_equinox"] == 1950.0


def test_unusable_wcs_is_a_warning_not_silence(tmp_path, capsys, field):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---XYZ", "DEC--XYZ"
    _single_frame_file(tmp_path / "bad.fits", h)
    table, err = _phot(tmp_path / "bad.fits", field["psf"], tmp_path / "c.ecsv", capsys)
    assert "ra" not in table.colnames
    assert "warning" in err and "WCS cannot be used" in err


# -- item 5: a PSF image oversampled without an OVERSAMP keyword -------------------------------
def _undeclared_psf(path, *, scale_card):
    _gauss_psf_file(path, keyword=False)
    if scale_card:
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["CDELT1"] = -0.063 / 4 / 3600  # as IRAC's flight PSF says it
            hdul[0].header["CDELT2"] = 0.063 / 4 / 3600
    return path


def test_psf_oversampling_from_pixel_scale_keywords(field, tmp_path, capsys):
    psf = _undeclared_psf(tmp_path / "psf_scale.fits", scale_card=True)
    table, err = _phot(field["a"], psf, tmp_path / "c.ecsv", capsys)
    assert "make it 4x oversampled" in err and "does not match" not in err
    m = _matched(field["truth_a"], table)
    assert np.max(np.abs(np.asarray(m["flux_fit"]) / m["flux"] - 1)) < 0.02


def test_undeclared_oversampling_warns_and_option_fixes_it(field, tmp_path, capsys):
    psf = _undeclared_psf(tmp_path / "psf_bare.fits", scale_card=False)
    table, err = _phot(field["a"], psf, tmp_path / "c.ecsv", capsys)
    # taken as 1x the PSF is 4x too wide: a warning names the widths and the option
    assert "the PSF's width" in err and "--psf-oversampling" in err
    assert table.meta["psf_fwhm_px"] > 1.5 * table.meta["star_fwhm_px"]
    table, err = _phot(field["a"], psf, tmp_path / "d.ecsv", capsys, "--psf-oversampling", 4)
    assert "the PSF's width" not in err
    assert 0.85 < table.meta["psf_fwhm_px"] / table.meta["star_fwhm_px"] < 1.15
    m = _matched(field["truth_a"], table)
    assert np.max(np.abs(np.asarray(m["flux_fit"]) / m["flux"] - 1)) < 0.02


def test_non_integer_pixel_scale_ratio_is_refused(field, tmp_path, capsys):
    psf = _gauss_psf_file(tmp_path / "odd.fits", keyword=False)
    with fits.open(psf, mode="update") as hdul:
        hdul[0].header["PIXELSCL"] = 0.063 / 3.5
    code, err = _phot(field["a"], psf, tmp_path / "c.ecsv", capsys, ok=False)
    assert code == 2 and "not a whole number" in err and "--psf-oversampling" in err


# -- item 7: the residual image ---------------------------------------------------------------
def test_residual_keeps_nan_and_the_sip_wcs(tmp_path, capsys, field):
    sky, flux = _sky_stars()
    dq = np.zeros(SHAPE, np.uint32)
    dq[5:8, 100:104] = 1  # DO_NOT_USE
    _write_mef(tmp_path / "m.fits", _sip_header((60.5, 60.5)), sky, flux, seed=5, dq=dq,
               nan_pixels=[(10, 10), (11, 12)])
    _phot(tmp_path / "m.fits", field["psf"], tmp_path / "c.ecsv", capsys, "--residual",
          tmp_path / "res.fits")
    res = fits.getdata(tmp_path / "res.fits")
    assert np.isnan(res[10, 10]) and np.isnan(res[11, 12]) and np.all(np.isnan(res[5:8, 100:104]))
    assert np.count_nonzero(np.isnan(res)) == 2 + 12
    header = fits.getheader(tmp_path / "res.fits")
    sci = fits.getheader(tmp_path / "m.fits", "SCI")
    assert header["CTYPE1"] == "RA---TAN-SIP" and header["A_2_0"] == sci["A_2_0"]
    assert header["BUNIT"] == "MJy/sr" and header["FILTER"] == "F444W"
    # the same sky at the far corner, to well below a milliarcsecond (SIP moves it ~0.4 px)
    corner = (SHAPE[1] - 1.0, SHAPE[0] - 1.0)
    a = WCS(header).pixel_to_world(*corner)
    b = WCS(sci).pixel_to_world(*corner)
    assert a.separation(b).arcsec < 1e-6
    no_sip = WCS(sci).deepcopy()
    no_sip.sip = None
    assert no_sip.pixel_to_world(*corner).separation(b).arcsec > 0.01


# -- item 8: simulate's ERR is the noise it added -----------------------------------------------
@pytest.mark.parametrize("poisson", [True, False])
def test_simulate_err_is_the_noise_actually_added(field, tmp_path, capsys, poisson):
    out = tmp_path / "sim.fits"
    extra = [] if poisson else ["--no-poisson"]
    code, _, err = _run(["simulate", out, "--psf", field["psf"], "--n-sources", 60,
                         "--shape", 200, 200, "--flux", 2000, 40000, "--min-separation", 14,
                         "--noise", 2.0, "--seed", 5, "--no-progress", *extra], capsys)
    assert code == 0, err
    truth = QTable.read(tmp_path / "sim_truth.ecsv")
    sci = fits.getdata(out, "SCI").astype(float)
    sigma = fits.getdata(out, "ERR").astype(float)
    model = make_model_image(sci.shape, CircularGaussianPRF(fwhm=FWHM), truth,
                             model_shape=(31, 31))
    pull = (sci - model) / sigma
    assert abs(np.std(pull) - 1) < 0.03
    # on the stars' cores alone (where Poisson noise dominates when added)
    core = model > 20 * 2.0
    assert abs(np.std(pull[core]) - 1) < 0.1
    if poisson:
        assert np.median(sigma[core]) > 3 * 2.0
    # and phot's flux errors are honest: pulls of the fitted fluxes have unit spread
    table, _ = _phot(out, field["psf"], tmp_path / "c.ecsv", capsys)
    m = match_catalogs(truth, table, separation=1.0)
    assert len(m) >= 55
    fpull = (np.asarray(m["flux_fit"]) - np.asarray(m["flux"])) / np.asarray(m["flux_err"])
    assert 0.7 < np.std(fpull) < 1.35


# -- item 6: units ----------------------------------------------------------------------------
def test_flux_columns_carry_the_image_unit_in_every_format(field, tmp_path, capsys):
    import astropy.units as u

    ecsv, _ = _phot(field["a"], field["psf"], tmp_path / "c.ecsv", capsys, "--plots",
                    tmp_path / "figs")
    for name in ("flux_fit", "flux_err", "flux_init"):
        assert ecsv[name].unit == u.MJy / u.sr
    assert ecsv["ra"].unit == u.deg and ecsv.meta["flux_unit"] == "MJy / sr"
    assert ecsv.meta["PIXAR_SR"] == 9.31e-14 and "PIXAR_SR" in ecsv.meta["flux_unit_note"]
    fits_cat = QTable.read(_phot(field["a"], field["psf"], tmp_path / "c.fits", capsys)[0]
                           and tmp_path / "c.fits")
    assert fits_cat["flux_fit"].unit == u.MJy / u.sr
    _phot(field["a"], field["psf"], tmp_path / "c.csv", capsys)
    header = (tmp_path / "c.csv").read_text().splitlines()[0].split(",")
    assert "flux_fit [MJy / sr]" in header and "x_fit" in header
    csv = Table.read(tmp_path / "c.csv")
    np.testing.assert_allclose(csv["flux_fit [MJy / sr]"], ecsv["flux_fit"].value, rtol=1e-9)
    # a CSV catalog reads back as an --init catalog, units in the names and all
    forced, _ = _phot(field["a"], field["psf"], tmp_path / "f.ecsv", capsys, "--init",
                      tmp_path / "c.csv")
    assert len(forced) == len(ecsv)


@pytest.mark.parametrize(("bunit", "expected"), [
    ("MJY/SR", "MJy / sr"), ("DN/S", "DN / s"), ("ELECTRONS/S", "electron / s"),
    ("e-/s", "electron / s"), ("Jy/beam", "Jy / beam"), ("mag", None), ("blah", None)])
def test_bunit_spellings(bunit, expected):
    from crowdphot.io.fits import parse_bunit

    unit = parse_bunit(bunit)
    assert (None if unit is None else unit.to_string()) == expected


def test_plot_labels_use_the_image_unit(field):
    pytest.importorskip("matplotlib")
    from crowdphot.viz.figures import plot_data_model_residual, plot_detections

    img = np.random.default_rng(0).normal(size=(16, 16))
    fig = plot_data_model_residual(img, img, img, unit="MJy / sr")
    labels = [a.get_xlabel() + a.get_ylabel() for a in fig.axes]
    assert any("MJy / sr" in t for t in labels) and not any("counts" in t for t in labels)
    fig = plot_detections(img, [3.0], [4.0], unit="MJy / sr")
    assert any("MJy / sr" in a.get_ylabel() + a.get_xlabel() for a in fig.axes)


# -- item 3: the PSF from the header; no JWST PSF on other telescopes' images --------------------
def _image_with(tmp_path, name, **keys):
    from crowdphot.io.fits import read_image

    hdu = fits.PrimaryHDU(np.zeros((8, 8), np.float32))
    for k, v in keys.items():
        hdu.header[k] = v
    hdu.writeto(tmp_path / name)
    return read_image(tmp_path / name)


@pytest.mark.parametrize(("keys", "spec"), [
    (dict(TELESCOP="JWST", INSTRUME="NIRCAM", FILTER="F444W", PUPIL="CLEAR",
          DETECTOR="NRCALONG"), "builtin:F444W:NRCA5"),
    (dict(INSTRUME="NIRCAM", FILTER="F444W", PUPIL="F405N", DETECTOR="NRCBLONG"),
     "builtin:F405N:NRCB5"),
    (dict(INSTRUME="NIRCAM", FILTER="F150W2", PUPIL="F164N", DETECTOR="NRCB3"),
     "builtin:F164N:NRCB3"),
    (dict(INSTRUME="NIRCAM", FILTER="F070W", DETECTOR="NRCA4"), "builtin:F070W:NRCA4"),
    (dict(INSTRUME="NIRCAM", FILTER="F335M", DETECTOR="MULTIPLE"), "builtin:F335M:NRCA5"),
    (dict(INSTRUME="NIRCAM", FILTER="F480M", DETECTOR="NRCB5"), "builtin:F480M:NRCB5"),
])
def test_default_psf_follows_the_header(tmp_path, keys, spec):
    from crowdphot.cli.psfchoice import resolve_psf_spec

    assert resolve_psf_spec(None, _image_with(tmp_path, "i.fits", **keys)) == spec


def test_every_nircam_filter_and_detector_has_a_builtin_grid_configuration():
    from crowdphot.core import optics
    from crowdphot.datasets.jwst import nircam_filter_detector

    for filt, (channel, *_rest) in optics.FILTERS.items():
        dets = [d for d, v in optics.DETECTORS.items() if v[0] == channel]
        if channel == "LW":
            dets += ["NRCALONG", "NRCBLONG"]
        for det in dets:
            f, d = nircam_filter_detector(filt, None, det)
            assert f == filt and optics.DETECTORS[d][0] == channel
    assert len(optics.FILTERS) == 29
    # and a grid computes for a long-wave medium band on module B (tiny, for speed)
    from crowdphot.datasets.jwst import jwst_like_epsf_grid

    data, _, meta = jwst_like_epsf_grid("F460M", "NRCBLONG", 1, 9, 2)
    assert data.shape == (1, 18, 18) and meta["detector"] == "NRCB5"


def test_builtin_spec_uses_the_header_detector(tmp_path, monkeypatch):
    import crowdphot.datasets.jwst as jwst
    from crowdphot.cli.psfchoice import resolve_psf_spec
    from crowdphot.cli.psfload import load_psf

    image = _image_with(tmp_path, "i.fits", INSTRUME="NIRCAM", FILTER="F444W",
                        DETECTOR="NRCBLONG")
    spec = resolve_psf_spec("builtin:F444W", image)
    assert spec == "builtin:F444W:NRCB5"
    seen = {}
    monkeypatch.setattr(jwst, "jwst_like_psf_grid", lambda **kw: seen.update(kw) or "grid")
    assert load_psf(spec, progress_bar=True) == "grid"
    assert seen == {"filter": "F444W", "detector": "NRCB5", "progress_bar": True}


@pytest.mark.parametrize(("keys", "psf", "match"), [
    (dict(TELESCOP="HST", INSTRUME="WFC3", FILTER="F160W"), None, "no built-in PSF"),
    (dict(TELESCOP="SPITZER", INSTRUME="IRAC"), None, "no built-in PSF"),
    ({}, None, "no INSTRUME/FILTER keywords"),
    (dict(TELESCOP="HST", INSTRUME="ACS"), "builtin:F200W", "JWST/NIRCam's but the image"),
    (dict(TELESCOP="JWST", INSTRUME="MIRI", FILTER="F770W"), "builtin:F444W",
     "image is from JWST/MIRI"),
])
def test_psf_of_another_instrument_is_refused(tmp_path, capsys, keys, psf, match):
    _image_with(tmp_path, "i.fits", **keys)
    argv = ["phot", tmp_path / "i.fits", "-o", tmp_path / "c.ecsv", "--no-progress"]
    code, _, err = _run(argv + (["--psf", psf] if psf else []), capsys)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def _stdpsf_file(path, *, trailing=None):
    """A 2 x 2 STDPSF grid (Gaussian, 4x oversampled, 101 x 101) as Anderson writes them."""
    n = 101
    offsets = (np.arange(n) - (n - 1) / 2) / 4
    xx, yy = np.meshgrid(offsets, offsets)
    psf = CircularGaussianPRF(fwhm=FWHM)(xx, yy)  # sums to 16: the ePSF convention
    hdu = fits.PrimaryHDU(np.stack([psf] * 4).astype(np.float32))
    hdu.header["NXPSFS"], hdu.header["NYPSFS"] = 2, 2
    hdu.header["IPSFX01"], hdu.header["IPSFX02"] = 1, 120
    hdu.header["JPSFY01"], hdu.header["JPSFY02"] = 1, 120
    hdu.writeto(path)
    if trailing:
        with open(path, "ab") as fh:
            fh.write(trailing * 2880)
    return path


def test_hst_stdpsf_on_a_jwst_image_is_refused(field, tmp_path, capsys):
    psf = _stdpsf_file(tmp_path / "STDPSF_WFC3UV_F444W.fits")
    code, err = _phot(field["a"], psf, tmp_path / "c.ecsv", capsys, ok=False)
    assert code == 2 and "is for HST/WFC3 but the image is from JWST/NIRCAM" in err


# -- item 4: an STDPSF library with a trailing 2880-byte block ----------------------------------
@pytest.mark.parametrize("fill", [b" ", b"\0"])
def test_stdpsf_with_a_trailing_block_reads_in_the_cli(field, tmp_path, capsys, fill):
    psf = _stdpsf_file(tmp_path / "STDPSF_NRCAL_F444W.fits", trailing=fill)
    if fill == b" ":
        with pytest.raises(OSError, match="END"), fits.open(psf) as hdul:
            hdul.readall()  # astropy itself trips over the block
    table, err = _phot(field["a"], psf, tmp_path / "c.ecsv", capsys)
    assert "warning" not in err
    m = _matched(field["truth_a"], table)
    assert np.max(np.abs(np.asarray(m["flux_fit"].value) / m["flux"] - 1)) < 0.02


# -- item 10: memory is estimated before the fit ------------------------------------------------
@pytest.mark.parametrize("forced", [False, True])
def test_a_fit_too_big_for_memory_is_refused_before_it_starts(field, tmp_path, capsys,
                                                             monkeypatch, forced):
    import crowdphot.cli.checks as checks
    import crowdphot.core.fit.engine as engine

    monkeypatch.setattr(checks, "available_memory", lambda: 50_000_000)  # 50 MB
    monkeypatch.setattr(engine, "fit_psf", lambda *a, **k: pytest.fail("fit started"))
    extra = ["--init", field["root"] / "truth_a.ecsv"] if forced else []
    field["truth_a"].write(field["root"] / "truth_a.ecsv", overwrite=True)
    code, err = _phot(field["a"], field["psf"], tmp_path / "c.ecsv", capsys, "--fit-shape",
                      101, *extra, ok=False)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("fitting 10 stars with a 101 x 101 fit box needs about 40.8 MB of memory but "
            "50 MB") in err
    assert "--fit-shape" in err and not (tmp_path / "c.ecsv").exists()
    # the same fit with the memory it needs goes ahead
    monkeypatch.setattr(checks, "available_memory", lambda: 10_000_000_000)
    monkeypatch.undo()
    table, _ = _phot(field["a"], field["psf"], tmp_path / "d.ecsv", capsys, "--fit-shape", 11)
    assert len(table) == 10


# -- item 11: messages and habits ---------------------------------------------------------------
def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crowdphot: error: "), err
    assert "array(" not in err and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_broken_inputs_give_one_line_naming_the_file_and_the_fix(field, tmp_path, capsys):
    raw = field["a"].read_bytes()
    (tmp_path / "trunc.fits").write_bytes(raw[: len(raw) - 40_000])
    code, err = _phot(tmp_path / "trunc.fits", field["psf"], tmp_path / "c.ecsv", capsys,
                      ok=False)
    _one_line_error(code, err, "trunc.fits", "truncated")
    (tmp_path / "folder.fits").mkdir()
    code, err = _phot(tmp_path / "folder.fits", field["psf"], tmp_path / "c.ecsv", capsys,
                      ok=False)
    _one_line_error(code, err, "folder.fits is a directory", "give the file name")
    with fits.open(field["a"]) as hdul:
        hdul["ERR"].data[:] = 0.0
        hdul.writeto(tmp_path / "zero_err.fits")
    code, err = _phot(tmp_path / "zero_err.fits", field["psf"], tmp_path / "c.ecsv", capsys,
                      ok=False)
    _one_line_error(code, err, "zero_err.fits", "no positive finite error", "--err-ext none")
    code, err = _phot(field["a"], field["psf"], tmp_path / "c.ecsv", capsys, "--dq-bits",
                      "SATURATED,NOPE", ok=False)
    _one_line_error(code, err, "unknown DQ flag name 'NOPE'", "0x6")
    assert not (tmp_path / "c.ecsv").exists()


def test_internal_errors_are_not_disguised_as_user_errors(field, tmp_path, capsys, monkeypatch):
    import crowdphot.cli.phot as phot

    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(phot, "_photometry", broken)
    code, err = _phot(field["a"], field["psf"], tmp_path / "c.ecsv", capsys, ok=False)
    assert code == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("crowdphot: internal error (ValueError")
    assert "bug in crowdphot" in err


def test_warnings_are_shown_when_they_happen(field, tmp_path, capsys, monkeypatch):
    import crowdphot.cli.phot as phot

    def late_failure(*args, **kwargs):
        import sys

        print("fit running", file=sys.stderr)
        raise phot.CLIError("stopped")

    monkeypatch.setattr(phot, "_photometry", late_failure)
    psf = _undeclared_psf(tmp_path / "psf_scale.fits", scale_card=True)
    code, err = _phot(field["a"], psf, tmp_path / "c.ecsv", capsys, ok=False)
    lines = err.strip().splitlines()
    # the PSF's warning came before the fit, and is not lost when the run fails later
    assert lines[0].startswith("crowdphot: warning:") and "4x oversampled" in lines[0]
    assert lines[1] == "fit running" and lines[-1] == "crowdphot: error: stopped"


def test_ecsv_metadata_is_plain_yaml(field, tmp_path, capsys):
    yaml = pytest.importorskip("yaml")
    _phot(field["a"], field["psf"], tmp_path / "c.ecsv", capsys, "--tile", 64)
    text = (tmp_path / "c.ecsv").read_text()
    assert "!!python" not in text
    header = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    meta = yaml.safe_load(header.replace("!astropy.units.Unit", "").replace(
        "!astropy.table.SerializedColumn", ""))["meta"]
    flat = dict(meta)
    assert flat["fit_shape"] == [5, 5] and flat["tile_shape"] == [64, 64]


def test_help_shows_every_default():
    import argparse

    from crowdphot.cli.app import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        formatter = p._get_formatter()
        for action in p._actions:
            if not action.option_strings or action.required or \
                    isinstance(action, argparse._HelpAction):
                continue
            text = formatter._get_help_string(action)
            assert "default" in text.lower(), f"{name} {action.option_strings}: {text!r}"
        assert "(default:" in p.format_help()


def test_unwritable_output_is_found_before_the_fit(field, tmp_path, capsys, monkeypatch):
    import os

    import crowdphot.cli.phot as phot

    monkeypatch.setattr(phot, "_photometry", lambda *a, **k: pytest.fail("fit started"))
    (tmp_path / "taken").mkdir()
    code, err = _phot(field["a"], field["psf"], tmp_path / "taken", capsys, ok=False)
    assert code == 2 and "unsupported catalog extension" in err
    (tmp_path / "taken.ecsv").mkdir()
    code, err = _phot(field["a"], field["psf"], tmp_path / "taken.ecsv", capsys, ok=False)
    _one_line_error(code, err, "is a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked)
                        else real_access(p, mode))
    code, err = _phot(field["a"], field["psf"], locked / "c.ecsv", capsys, ok=False)
    _one_line_error(code, err, "cannot write into", "permission denied")
    code, err = _phot(field["a"], field["psf"], tmp_path / "c.ecsv", capsys, "--residual",
                      locked / "r.fits", ok=False)
    _one_line_error(code, err, "--residual: cannot write into")


def test_hex_dq_bits_and_progress_bars(field, tmp_path, capsys):
    ref, _ = _phot(field["a"], field["psf"], tmp_path / "a.ecsv", capsys)
    hexed, _ = _phot(field["a"], field["psf"], tmp_path / "b.ecsv", capsys, "--dq-bits", "0x7")
    np.testing.assert_array_equal(ref["flux_fit"], hexed["flux_fit"])
    code, out, err = _run(["phot", field["a"], "--psf", field["psf"], "-o", tmp_path / "c.ecsv",
                           "--threshold", 30, "--fwhm", FWHM, "--plots", tmp_path / "figs"],
                          capsys)
    assert code == 0 and "Figures" in err


def test_first_builtin_grid_computation_shows_progress(tmp_path, capsys):
    from crowdphot.datasets.jwst import jwst_like_psf_grid_path

    jwst_like_psf_grid_path("F212N", "NRCB2", 1, 9, 1, cache_dir=tmp_path, progress_bar=True)
    assert "Built-in F212N/NRCB2 PSF grid (first use)" in capsys.readouterr().err
    jwst_like_psf_grid_path("F212N", "NRCB2", 1, 9, 1, cache_dir=tmp_path, progress_bar=True)
    assert "Built-in" not in capsys.readouterr().err  # cached: nothing to compute


# -- item 12: saturated stars ---------------------------------------------------------------------
@pytest.mark.parametrize("extra", [[], ["--iterative", "2"]])
def test_saturated_star_is_fitted_on_its_wings_and_flagged(field, tmp_path, capsys, extra):
    sky, flux = _sky_stars()
    header = _sip_header((60.5, 60.5))
    w = WCS(header)
    x, y = (np.asarray(v) for v in w.world_to_pixel(sky))
    bright = QTable({"x_0": [60.3], "y_0": [45.6], "flux": [4.0e5]})
    assert np.min(np.hypot(x - 60.3, y - 45.6)) > 12
    # the file of the ten stars plus the bright one, clipped at a full well of 20000
    truth = _write_mef(tmp_path / "sat.fits", header, sky, flux, seed=6)
    with fits.open(tmp_path / "sat.fits", mode="update") as hdul:
        star = make_model_image(SHAPE, CircularGaussianPRF(fwhm=FWHM), bright,
                                model_shape=(31, 31))
        sci = hdul["SCI"].data.astype(float) + star
        full = sci > 20_000
        sci[full] = 20_000.0
        hdul["SCI"].data = sci.astype(np.float32)
        hdul["DQ"].data = np.where(full, 2, 0).astype(np.uint32)  # SATURATED
    assert 5 <= full.sum() <= 40
    table, err = _phot(tmp_path / "sat.fits", field["psf"], tmp_path / "c.ecsv", capsys,
                       *extra)
    sat = table[table["saturated"]]
    assert len(sat) == 1 and len(table) == 11
    assert abs(sat["x_fit"][0] - 60.3) < 0.05 and abs(sat["y_fit"][0] - 45.6) < 0.05
    assert abs(sat["flux_fit"][0].value / 4.0e5 - 1) < 0.01
    assert sat["flags"][0] & 1  # n_pixels_fit_partial: the masked core was not fitted
    m = _matched(truth, table[~table["saturated"]])
    assert np.max(np.abs(np.asarray(m["flux_fit"].value) / m["flux"] - 1)) < 0.02
    assert table.meta["n_saturated"] == 1


# -- README: the "Real data" commands are valid command lines ------------------------------------
def test_readme_real_data_commands_parse():
    import re
    import shlex
    from pathlib import Path

    from crowdphot.cli.app import build_parser

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Real data", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.startswith("crowdphot ")]
    assert len(commands) >= 4
    parser = build_parser()
    for line in commands:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.command == "phot"


def test_hst_dq_bits_mean_the_same_conditions(field, tmp_path, capsys):
    from crowdphot.io.fits import parse_dq_bits, read_image

    assert parse_dq_bits("SATURATED", "HST") == 256 | 2048
    assert parse_dq_bits("DO_NOT_USE,SATURATED,JUMP_DET", "JWST") == 7
    sky, flux = _sky_stars()
    header = _sip_header((60.5, 60.5))
    bright = QTable({"x_0": [60.3], "y_0": [45.6], "flux": [4.0e5]})
    _write_mef(tmp_path / "hst.fits", header, sky, flux, seed=7, bunit="ELECTRONS/S",
               primary_extra={"TELESCOP": "HST", "INSTRUME": "WFC3"})
    with fits.open(tmp_path / "hst.fits", mode="update") as hdul:
        star = make_model_image(SHAPE, CircularGaussianPRF(fwhm=FWHM), bright,
                                model_shape=(31, 31))
        sci = hdul["SCI"].data.astype(float) + star
        full = sci > 20_000
        sci[full] = 20_000.0
        dq = np.where(full, 256, 0).astype(np.uint32)  # HST full-well saturation
        dq[100:104, 5:12] = 2  # HST: data replaced by fill value (JWST's SATURATED bit)
        hdul["SCI"].data = sci.astype(np.float32)
        hdul["DQ"].data = dq
        for key in ("FILTER", "PUPIL", "DETECTOR"):
            del hdul[0].header[key]
    image = read_image(tmp_path / "hst.fits")
    assert image.mask[full].all() and image.mask[100:104, 5:12].all()
    assert image.saturated[full].all() and not image.saturated[100:104, 5:12].any()
    table, _ = _phot(tmp_path / "hst.fits", field["psf"], tmp_path / "c.ecsv", capsys)
    assert int(np.sum(table["saturated"])) == 1 and len(table) == 11
    sat = table[table["saturated"]][0]
    assert abs(sat["flux_fit"].value / 4.0e5 - 1) < 0.01


def test_simulated_nircam_file_end_to_end_with_the_header_psf(tmp_path, capsys):
    """simulate (built-in F200W, Poisson noise) -> phot with no --psf: the header picks the PSF
    and the flux errors are honest (the grid is the README quickstart's, cached)."""
    out = tmp_path / "sim.fits"
    code, _, err = _run(["simulate", out, "--n-sources", 25, "--shape", 256, 256, "--flux",
                         2000, 20000, "--min-separation", 25, "--seed", 3, "--no-progress"],
                        capsys)
    assert code == 0, err
    primary = fits.getheader(out)
    assert (primary["INSTRUME"], primary["FILTER"], primary["DETECTOR"]) == (
        "NIRCAM", "F200W", "NRCA1")
    code, _, err = _run(["phot", out, "-o", tmp_path / "c.ecsv", "--no-progress"], capsys)
    assert code == 0, err
    table = QTable.read(tmp_path / "c.ecsv")
    assert table.meta["psf"] == "builtin:F200W:NRCA1" and "the PSF's width" not in err
    truth = QTable.read(tmp_path / "sim_truth.ecsv")
    m = match_catalogs(truth, table, separation=1.0)
    assert len(truth) >= 20 and len(m) == len(truth)
    pull = (np.asarray(m["flux_fit"].value) - m["flux"]) / np.asarray(m["flux_err"].value)
    assert 0.6 < np.std(pull) < 1.4 and abs(np.median(pull)) < 0.5
