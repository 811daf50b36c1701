"""The ``crowdphot`` command line: phot on JWST-style and plain FITS, simulate, psfgrid, errors.

Images are small (128 x 128, a dozen Gaussian stars) and the PSF is a Gaussian PRF written as an
oversampled image-PSF FITS file, so that every run takes a fraction of a second after imports.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable
from astropy.wcs import WCS

from crowdphot import CircularGaussianPRF, match_catalogs
from crowdphot.cli.app import build_parser, main
from crowdphot.cli.psfload import load_psf
from crowdphot.datasets.simulation import make_noise_image, make_psf_model_image
from crowdphot.io.fits import JWST_DQ_FLAGS, default_file_mode

FWHM = 2.5
NOISE = 1.0
SHAPE = (128, 128)


def _gauss_psf_file(path, *, oversampling=4, size=31):
    """A Gaussian PRF sampled as an oversampled ePSF image, as STPSF writes single PSFs."""
    n = size * oversampling + 1
    offsets = (np.arange(n) - (n - 1) / 2) / oversampling
    xx, yy = np.meshgrid(offsets, offsets)
    image = CircularGaussianPRF(fwhm=FWHM)(xx, yy)
    hdu = fits.PrimaryHDU(image)
    hdu.header["OVERSAMP"] = oversampling
    hdu.writeto(path)
    return path


def _wcs(shape):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.cdelt = [-8.6e-6, 8.6e-6]
    return w


def _simulated(seed=7, n=12, offset=0.0):
    model = CircularGaussianPRF(fwhm=FWHM)
    data, truth = make_psf_model_image(SHAPE, model, n, flux=(3000, 8000), min_separation=14,
                                       seed=seed, model_shape=(15, 15), border_size=10)
    data = data + make_noise_image(SHAPE, mean=offset, stddev=NOISE, seed=seed)
    return data, truth


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A JWST-style SCI/ERR/DQ file (with WCS and a masked hot pixel on a star) and its truth."""
    root = tmp_path_factory.mktemp("cli")
    psf = _gauss_psf_file(root / "gauss_psf.fits")
    data, truth = _simulated()
    err = np.full(SHAPE, NOISE)
    dq = np.zeros(SHAPE, dtype=np.uint32)
    # a cosmic-ray hit one pixel from star 1: only DQ masking keeps its flux right
    hx, hy = int(round(truth["x_0"][0])) + 1, int(round(truth["y_0"][0]))
    data[hy, hx] += 5e4
    dq[hy, hx] = JWST_DQ_FLAGS["JUMP_DET"]
    header = _wcs(SHAPE).to_header()
    header["BUNIT"] = "DN"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header, name="SCI"),
                  fits.ImageHDU(err, name="ERR"), fits.ImageHDU(dq, name="DQ")]).writeto(
        root / "cal.fits")
    truth.write(root / "truth.ecsv")
    return {"root": root, "psf": psf, "image": root / "cal.fits", "truth": truth,
            "data": data}


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _phot(files, out, capsys, *extra):
    code, stdout, stderr = _run(["phot", files["image"], "--psf", files["psf"], "-o", out,
                                 "--threshold", 30, "--fwhm", FWHM, "--no-progress", *extra],
                                capsys)
    assert code == 0, stderr
    return QTable.read(out), stdout, stderr


def _matched(truth, table):
    m = match_catalogs(truth, table, separation=1.0)
    assert len(m) == len(truth)
    return m


def test_phot_jwst_file_fits_every_star_and_masks_dq(files, tmp_path, capsys):
    table, stdout, stderr = _phot(files, tmp_path / "cat.ecsv", capsys)
    assert "12 stars fitted" in stdout and stderr == ""
    m = _matched(files["truth"], table)
    flux, fit, ferr = (np.asarray(m[c], dtype=float) for c in ("flux", "flux_fit", "flux_err"))
    # the ePSF image is a spline of the PRF: allow 0.5% on top of the noise
    assert np.all(np.abs(fit - flux) < 5 * ferr + 0.005 * flux)
    assert np.all(np.hypot(m["x_fit"] - m["x_0"], m["y_fit"] - m["y_0"]) < 0.05)
    # sky coordinates from the header's WCS (0-based pixels)
    ra, dec = _wcs(SHAPE).pixel_to_world_values(table["x_fit"], table["y_fit"])
    np.testing.assert_allclose(table["ra"].to_value("deg"), ra, rtol=0, atol=1e-10)
    np.testing.assert_allclose(table["dec"].to_value("deg"), dec, rtol=0, atol=1e-10)
    assert table.meta["BUNIT"] == "DN"


def test_dq_masking_is_what_saves_the_hit_star(files, tmp_path, capsys):
    """Forced photometry of star 1 with and without the DQ mask: only the mask saves it."""
    init = files["root"] / "truth.ecsv"
    true_flux = files["truth"]["flux"][0]
    masked, _, _ = _phot(files, tmp_path / "m.ecsv", capsys, "--init", init)
    unmasked, _, _ = _phot(files, tmp_path / "u.ecsv", capsys, "--init", init, "--dq-bits", "0")
    # the flux columns carry the image's BUNIT (DN)
    masked_flux, unmasked_flux = masked["flux_fit"].value, unmasked["flux_fit"].value
    assert abs(masked_flux[0] / true_flux - 1) < 0.02
    assert unmasked_flux[0] / true_flux - 1 > 0.5
    # every other star is untouched by the choice
    np.testing.assert_allclose(masked_flux[1:], unmasked_flux[1:], rtol=1e-6)


def test_bias_correction_lowers_fluxes_by_their_first_order_bias(files, tmp_path, capsys):
    plain, _, _ = _phot(files, tmp_path / "a.ecsv", capsys)
    corr, _, _ = _phot(files, tmp_path / "b.ecsv", capsys, "--bias-correction")
    assert corr.meta["bias_correction"] is True and "bias_correction" not in plain.meta
    assert corr.meta["n_bias_corrected"] == len(corr) == len(plain)
    f0, f1, fe = (np.asarray(getattr(t[c], "value", t[c]), dtype=float)
                  for t, c in ((plain, "flux_fit"), (corr, "flux_fit"), (plain, "flux_err")))
    # about flux_err**2 / flux each, or exactly 0 for stars past S/N 100 (< 0.01 sigma)
    d = f0 - f1
    snr = f0 / fe
    assert np.all(np.where(snr > 100, d == 0, (d > 0.5 * fe**2 / f0) & (d < 2 * fe**2 / f0)))
    assert np.array_equal(np.asarray(plain["flags"]), np.asarray(corr["flags"]))


def test_bias_correction_leaves_forced_photometry_alone(files, tmp_path, capsys):
    # positions held: the fit is linear in the flux and has no first-order bias, with the
    # ERR plane (corrected inside the fit) or without it (corrected afterwards)
    for err in ([], ["--err-ext", "none"]):
        init = ["--init", files["root"] / "truth.ecsv", *err]
        plain, _, _ = _phot(files, tmp_path / "f0.ecsv", capsys, *init)
        corr, _, _ = _phot(files, tmp_path / "f1.ecsv", capsys, *init, "--bias-correction")
        for c in ("x_fit", "y_fit", "flux_fit"):
            np.testing.assert_allclose(np.asarray(getattr(corr[c], "value", corr[c])),
                                       np.asarray(getattr(plain[c], "value", plain[c])),
                                       rtol=1e-12, atol=1e-12, err_msg=c)
        assert corr.meta["bias_correction"] is True


@pytest.mark.parametrize("ext", [".fits", ".csv"])
def test_catalog_format_follows_extension(files, tmp_path, capsys, ext):
    ref, _, _ = _phot(files, tmp_path / "cat.ecsv", capsys)
    table, _, _ = _phot(files, tmp_path / f"cat{ext}", capsys)
    assert len(table) == len(ref)
    name = "flux_fit [DN]" if ext == ".csv" else "flux_fit"  # CSV: the unit in the name
    np.testing.assert_allclose(np.asarray(getattr(table[name], "value", table[name]),
                                          dtype=float),
                               np.asarray(ref["flux_fit"], dtype=float), rtol=1e-9)
    if ext == ".fits":
        assert fits.getheader(tmp_path / "cat.fits", 1)["BUNIT"] == "DN"


def test_plain_single_hdu_and_named_extensions(files, tmp_path, capsys):
    data, truth = _simulated(seed=11)
    fits.PrimaryHDU(data).writeto(tmp_path / "plain.fits")
    table, _, _ = _phot({**files, "image": tmp_path / "plain.fits"}, tmp_path / "a.ecsv",
                        capsys)
    _matched(truth, table)
    assert "ra" not in table.colnames  # no WCS, no sky columns
    # non-JWST names, chosen with --ext/--err-ext and DQ switched off
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="IMG"),
                  fits.ImageHDU(np.full(SHAPE, NOISE), name="NOISE")]).writeto(
        tmp_path / "mef.fits")
    table2, _, _ = _phot({**files, "image": tmp_path / "mef.fits"}, tmp_path / "b.ecsv",
                         capsys, "--ext", "IMG", "--err-ext", "NOISE", "--dq-ext", "none")
    np.testing.assert_allclose(table2["flux_fit"], table["flux_fit"], rtol=1e-6)
    # the error plane is used: the plain file's errors come from the fit residuals instead
    assert np.all(np.isfinite(np.asarray(table2["flux_err"], dtype=float)))


def test_residual_regions_and_plots(files, tmp_path, capsys):
    from regions import Regions

    table, _, _ = _phot(files, tmp_path / "cat.ecsv", capsys, "--residual",
                        tmp_path / "res.fits", "--regions", tmp_path / "stars.reg", "--plots",
                        tmp_path / "figs")
    res = fits.getdata(tmp_path / "res.fits")
    assert fits.getheader(tmp_path / "res.fits")["CTYPE1"] == "RA---TAN"
    # residual = data - model: at the stars only noise is left (masked pixel aside)
    yi = np.round(np.asarray(table["y_fit"])).astype(int)
    xi = np.round(np.asarray(table["x_fit"])).astype(int)
    assert np.max(np.abs(res[yi, xi])) < 6 * NOISE
    assert np.max(files["data"][yi, xi]) > 100 * NOISE
    regs = Regions.read(str(tmp_path / "stars.reg"), format="ds9")
    centres = np.array([[r.center.x, r.center.y] for r in regs])
    np.testing.assert_allclose(centres, np.column_stack([table["x_fit"], table["y_fit"]]),
                               atol=1e-6)
    for name in ("detections.png", "data_model_residual.png"):
        assert (tmp_path / "figs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forced_photometry_from_pixel_and_sky_catalogs(files, tmp_path, capsys):
    truth = files["truth"]
    table, _, _ = _phot(files, tmp_path / "forced.ecsv", capsys, "--init",
                        files["root"] / "truth.ecsv")
    # positions are held at the input ones; only fluxes are fitted
    np.testing.assert_array_equal(table["x_fit"], truth["x_0"])
    np.testing.assert_array_equal(table["y_fit"], truth["y_0"])
    rel = np.asarray(table["flux_fit"]) / np.asarray(truth["flux"]) - 1
    assert np.max(np.abs(rel)) < 0.02
    # the same stars given only by sky position, converted through the image WCS
    ra, dec = _wcs(SHAPE).pixel_to_world_values(truth["x_0"], truth["y_0"])
    sky = QTable({"ra": ra, "dec": dec})
    sky.write(tmp_path / "sky.csv")
    table2, _, _ = _phot(files, tmp_path / "forced2.ecsv", capsys, "--init",
                         tmp_path / "sky.csv")
    np.testing.assert_allclose(table2["x_fit"], truth["x_0"], atol=1e-6)
    np.testing.assert_allclose(table2["flux_fit"], table["flux_fit"], rtol=1e-4)


def test_iterative_grouped_and_local_background(files, tmp_path, capsys):
    data, truth = _simulated(seed=5, offset=40.0)
    path = tmp_path / "sky40.fits"
    fits.PrimaryHDU(data).writeto(path)
    table, _, _ = _phot({**files, "image": path}, tmp_path / "cat.ecsv", capsys,
                        "--local-bkg", 9, 14, "--group-radius", 20, "--iterative", 2)
    m = _matched(truth, table)
    np.testing.assert_allclose(np.asarray(m["local_bkg"], dtype=float), 40.0, atol=1.0)
    rel = np.asarray(m["flux_fit"], dtype=float) / np.asarray(m["flux"], dtype=float) - 1
    assert np.max(np.abs(rel)) < 0.03
    assert "group_id" in table.colnames


def test_tile_options_are_passed_through(files, tmp_path, capsys, monkeypatch):
    import crowdphot.pipeline.tiles

    seen = {}

    def fake_tiled(data, psf_model, fit_shape, **kwargs):
        seen.update(kwargs, shape=data.shape, fit_shape=fit_shape, source=data)
        return QTable({"x_fit": [10.0], "y_fit": [12.0], "flux_fit": [100.0], "flags": [0]})

    monkeypatch.setattr(crowdphot.pipeline.tiles, "photometry_tiled", fake_tiled)
    code, out, err = _run(["phot", files["image"], "--psf", files["psf"], "-o",
                           tmp_path / "t.ecsv", "--threshold", 30, "--no-progress", "--tile",
                           64, "--workers", 2, "--scheduler", "tcp://host:8786",
                           "--residual", tmp_path / "r.fits", "--sky", "none", "--min-snr", 0],
                          capsys)
    assert code == 0, err
    assert (seen["tile_shape"], seen["workers"], seen["scheduler"]) == (64, 2, "tcp://host:8786")
    assert seen["shape"] == SHAPE and seen["fit_shape"] == (5, 5)
    # the file itself goes to the tiles (memory-mapped per task), with its ERR and DQ planes
    from crowdphot.io.fits import FitsPlanes

    assert isinstance(seen["source"], FitsPlanes) and "mask" not in seen
    assert (seen["source"].err_ext, seen["source"].dq_ext) == ("ERR", "DQ")
    # without a phot object the residual is rendered from the catalog
    model = files["data"] - fits.getdata(tmp_path / "r.fits").astype(float)
    expected = CircularGaussianPRF(fwhm=FWHM, flux=100.0, x_0=10.0, y_0=12.0)
    y, x = np.mgrid[9:16, 7:14]
    np.testing.assert_allclose(model[9:16, 7:14], expected(x, y), atol=0.02, rtol=0.01)


def _assert_clean_failure(code, out, err, folder, produced):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crowdphot: error: "), err
    assert "Traceback" not in err and out == ""
    for p in produced:
        assert not p.exists()
    assert not list(folder.glob(".*.tmp"))  # no half-written temporary left behind
    return lines[0]


def _bad_psf_files(root):
    fits.BinTableHDU(QTable({"a": [1, 2]})).writeto(root / "table.fits")
    fits.PrimaryHDU(np.ones((3, 9, 9))).writeto(root / "cube.fits")
    (root / "text.fits").write_text("SIMPLE? no, just text")
    fits.PrimaryHDU(np.zeros((9, 9))).writeto(root / "zero_psf.fits")
    offset = np.zeros((41, 41))
    offset[5, 30] = 1.0
    fits.PrimaryHDU(offset).writeto(root / "offset_psf.fits")


@pytest.mark.parametrize("case, match", [
    ("missing image", "image file not found"),
    ("missing extension", "no extension 'NOPE'"),
    ("missing psf", "PSF file not found"),
    ("psf is a table", "not a PSF file"),
    ("psf is a bare cube", "not a PSF grid"),
    ("psf is not fits", "not a readable FITS file"),
    ("psf sums to zero", "non-positive sum"),
    ("psf is a science image", "not a PSF file"),
    ("psf is off-centre", "far from the centre"),
    ("no stars", "no stars found"),
    ("blank image", "cannot estimate a detection threshold"),
    ("bad catalog extension", "unsupported catalog extension"),
    ("even fit shape", "--fit-shape must be an odd integer"),
    ("workers without tile", "need --tile"),
    ("bad builtin filter", "F999W"),
    ("missing init catalog", "init catalog not found"),
    ("bias correction with poisson", "--bias-correction is for the Gaussian likelihood"),
])
def test_user_errors_give_one_line_and_no_output(files, tmp_path, capsys, case, match):
    _bad_psf_files(tmp_path)
    noise = make_noise_image(SHAPE, mean=0, stddev=NOISE, seed=1)
    fits.PrimaryHDU(noise).writeto(tmp_path / "noise.fits")
    fits.PrimaryHDU(np.zeros(SHAPE)).writeto(tmp_path / "blank.fits")
    image, psf, out = files["image"], files["psf"], tmp_path / "cat.ecsv"
    extra, threshold = [], ["--threshold", 30]
    if case == "missing image":
        image = tmp_path / "nope.fits"
    elif case == "missing extension":
        extra = ["--ext", "NOPE"]
    elif case == "missing psf":
        psf = tmp_path / "nope_psf.fits"
    elif case.startswith("psf"):
        psf = tmp_path / {"psf is a table": "table.fits", "psf is a bare cube": "cube.fits",
                          "psf is not fits": "text.fits",
                          "psf sums to zero": "zero_psf.fits",
                          "psf is off-centre": "offset_psf.fits"}.get(case, image)
    elif case == "no stars":
        image, threshold = tmp_path / "noise.fits", []
    elif case == "blank image":
        image, threshold = tmp_path / "blank.fits", []
    elif case == "bad catalog extension":
        out = tmp_path / "cat.xyz"
    elif case == "even fit shape":
        extra = ["--fit-shape", 4]
    elif case == "workers without tile":
        extra = ["--workers", 2]
    elif case == "bad builtin filter":
        psf = "builtin:F999W"
    elif case == "missing init catalog":
        extra = ["--init", tmp_path / "nope.ecsv"]
    elif case == "bias correction with poisson":
        extra = ["--bias-correction", "--likelihood", "poisson", "--read-noise", 5]
    produced = [out, tmp_path / "res.fits", tmp_path / "r.reg"]
    code, stdout, stderr = _run(["phot", image, "--psf", psf, "-o", out, "--no-progress",
                                 "--residual", produced[1], "--regions", produced[2],
                                 *threshold, *extra], capsys)
    line = _assert_clean_failure(code, stdout, stderr, tmp_path, produced)
    assert match in line


def test_usage_errors_and_help_return_codes(capsys):
    assert main(["phot"]) == 2  # argparse: missing IMAGE and -o
    assert "usage:" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert "crowdphot" in capsys.readouterr().out
    assert main(["demo", "--n-sources", "0"]) == 2
    assert capsys.readouterr().err.startswith("crowdphot: error: --n-sources must be positive")
    args = build_parser().parse_args(["phot", "x.fits", "-o", "c.ecsv"])
    # no --psf: chosen from the image header (INSTRUME, FILTER, PUPIL, DETECTOR)
    assert (args.psf, args.fit_shape, args.dq_bits) == (None, 5,
                                                         "DO_NOT_USE,SATURATED,JUMP_DET")


def test_simulate_writes_jwst_style_image_and_truth(files, tmp_path, capsys):
    out = tmp_path / "sim.fits"
    code, stdout, stderr = _run(["simulate", out, "--psf", files["psf"], "--n-sources", 8,
                                 "--shape", 96, 112, "--flux", 1000, 2000, "--min-separation",
                                 12, "--noise", 0.5, "--seed", 3, "--no-progress"], capsys)
    assert code == 0, stderr
    assert "8 stars" in stdout
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "DQ"]
        sci, err = hdul["SCI"].data.astype(float), hdul["ERR"].data
        assert sci.shape == (96, 112) and np.all(err > 0) and not hdul["DQ"].data.any()
        assert WCS(hdul["SCI"].header).has_celestial
    truth = QTable.read(tmp_path / "sim_truth.ecsv")
    assert len(truth) == 8
    assert np.all((truth["flux"] >= 1000) & (truth["flux"] <= 2000))
    # the image holds the truth's light (the PSF file covers > 99.9% of it) plus zero-mean noise
    # (read noise over the image, Poisson noise of the stars)
    assert abs(sci.sum() - np.sum(truth["flux"])) < 5 * np.sqrt(0.25 * sci.size + np.sum(
        truth["flux"])) + 20
    # and phot on it finds the same stars
    table, _, _ = _phot({**files, "image": out}, tmp_path / "c.ecsv", capsys)
    _matched(truth, table)


def test_simulate_reports_warnings_as_one_line(files, tmp_path, capsys):
    code, _, stderr = _run(["simulate", tmp_path / "s.fits", "--psf", files["psf"],
                            "--n-sources", 400, "--shape", 64, 64, "--min-separation", 12,
                            "--no-progress"], capsys)
    assert code == 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crowdphot: warning: ")
    assert "only 9 coordinates" in lines[0].lower()


def test_psfgrid_writes_a_readable_stpsf_grid(files, tmp_path, capsys):
    from photutils.psf import GriddedPSFModel as PhotutilsGrid

    out = tmp_path / "grid.fits"
    code, stdout, stderr = _run(["psfgrid", out, "--num-psfs", 4, "--fov-pixels", 15,
                                 "--oversampling", 2], capsys)
    assert code == 0, stderr
    model = load_psf(str(out))
    assert model.data.shape == (4, 30, 30)
    assert out.stat().st_mode & 0o777 == default_file_mode()
    # photutils (the oracle) reads the same file the same way
    np.testing.assert_array_equal(PhotutilsGrid.read(out).data, model.data)
    code, _, stderr = _run(["psfgrid", tmp_path / "grid.txt"], capsys)
    assert code == 2 and "must end in .fits" in stderr


def test_load_psf_image_file_is_unit_flux(files):
    psf = load_psf(str(files["psf"]))
    assert psf.oversampling.tolist() == [4, 4]
    y, x = np.mgrid[-12:13, -12:13]
    assert abs(psf(x, y).sum() - 1.0) < 1e-3
    np.testing.assert_allclose(psf(x, y), CircularGaussianPRF(fwhm=FWHM)(x, y), atol=2e-4)


def test_python_dash_m_runs_main(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crowdphot", "phot", str(tmp_path / "no.fits"),
                           "-o", str(tmp_path / "c.ecsv")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"crowdphot: error: image file not found: {tmp_path / 'no.fits'}"]


def test_init_table_column_choices():
    from crowdphot.cli.phot import init_table

    cat = QTable({"id": [4, 5, 6], "x_init": [1.0, 2.0, 3.0], "y_init": [1.0, 2.0, 3.0],
                  "x_fit": [1.5, np.nan, 3.5], "y_fit": [1.5, 2.5, 3.5],
                  "flux_fit": [10.0, 20.0, 30.0]})
    with pytest.warns(UserWarning, match="1 row.s. with NaN positions dropped"):
        init = init_table(cat)
    # a previous catalog's fitted values win over its initial guesses; NaN rows are dropped
    assert init["id"].tolist() == [4, 6] and init["x_init"].tolist() == [1.5, 3.5]
    assert init["flux_init"].tolist() == [10.0, 30.0]
    with pytest.raises(ValueError, match="needs x/y"):
        init_table(QTable({"a": [1.0]}))
    with pytest.raises(ValueError, match="no celestial WCS"):
        init_table(QTable({"ra": [1.0], "dec": [2.0]}))
    with pytest.raises(ValueError, match="no rows with finite positions"):
        init_table(QTable({"x": [np.nan], "y": [1.0]}))


def test_tile_without_image_products_reads_only_the_header(files, tmp_path, capsys,
                                                           monkeypatch):
    import crowdphot.io.fits
    import crowdphot.pipeline.tiles

    def no_full_read(*args, **kwargs):
        raise AssertionError("the whole image was read in a tiled run")

    monkeypatch.setattr(crowdphot.io.fits, "read_image", no_full_read)
    monkeypatch.setattr(crowdphot.pipeline.tiles, "photometry_tiled",
                        lambda data, psf, fit_shape, **kw: QTable(
                            {"x_fit": [10.0], "y_fit": [12.0], "flux_fit": [1.0],
                             "flags": [0]}))
    code, out, err = _run(["phot", files["image"], "--psf", files["psf"], "-o",
                           tmp_path / "t.ecsv", "--no-progress", "--tile", 64, "--min-snr", 0],
                          capsys)
    assert code == 0, err
    assert QTable.read(tmp_path / "t.ecsv")["x_fit"][0] == 10.0


def test_output_into_missing_folder_is_a_clean_error(files, tmp_path, capsys):
    code, out, err = _run(["phot", files["image"], "--psf", files["psf"], "-o",
                           tmp_path / "nope" / "cat.ecsv", "--threshold", 30], capsys)
    _assert_clean_failure(code, out, err, tmp_path, [tmp_path / "nope"])
    assert "does not exist" in err


def test_builtin_psf_filter_mismatch_warns(tmp_path):
    from crowdphot.cli.psfchoice import resolve_psf_spec
    from crowdphot.io.fits import read_image

    path = tmp_path / "f444w.fits"
    hdu = fits.PrimaryHDU(np.zeros((4, 4)))
    hdu.header["FILTER"] = "F444W"
    hdu.writeto(path)
    image = read_image(path)
    with pytest.warns(UserWarning, match="FILTER=F444W but the PSF is builtin:F200W"):
        assert resolve_psf_spec("builtin:F200W", image) == "builtin:F200W:NRCA1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_psf_spec("builtin:F444W", image) == "builtin:F444W:NRCA5"
        assert resolve_psf_spec(str(path), image) == str(path)


def test_tile_with_init_catalog_passes_forced_positions(files, tmp_path, capsys, monkeypatch):
    import crowdphot.pipeline.tiles

    seen = {}

    def fake_tiled(data, psf_model, fit_shape, **kwargs):
        seen.update(kwargs, fixed=(psf_model.x_0.fixed, psf_model.y_0.fixed))
        return QTable({"x_fit": [10.0], "y_fit": [12.0], "flux_fit": [1.0], "flags": [0]})

    monkeypatch.setattr(crowdphot.pipeline.tiles, "photometry_tiled", fake_tiled)
    init = tmp_path / "init.ecsv"
    QTable({"x": [10.0], "y": [12.0]}).write(init)
    code, out, err = _run(["phot", files["image"], "--psf", files["psf"], "-o",
                           tmp_path / "t.ecsv", "--no-progress", "--tile", 64, "--init", init],
                          capsys)
    assert code == 0, err
    assert seen["fixed"] == (True, True) and len(seen["init_params"]) == 1


def test_init_positions_all_off_the_image_is_a_clean_error(files, tmp_path, capsys):
    init = tmp_path / "off.ecsv"
    QTable({"x": [-500.0, 5000.0], "y": [10.0, 10.0]}).write(init)
    code, out, err = _run(["phot", files["image"], "--psf", files["psf"], "-o",
                           tmp_path / "cat.ecsv", "--init", init, "--no-progress"], capsys)
    _assert_clean_failure(code, out, err, tmp_path, [tmp_path / "cat.ecsv"])
    assert "none of the 2 --init positions could be fitted" in err
