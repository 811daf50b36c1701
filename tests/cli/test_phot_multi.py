"""``crowdphot phot a.fits b.fits ...``: joint fits of several files (crowdphot.cli.multi)."""

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable, Table
from astropy.wcs import WCS

from crowdphot import CircularGaussianPRF
from crowdphot.cli.app import main
from crowdphot.cli.errors import CLIError
from crowdphot.cli.multi import psf_specs
from crowdphot.core.render import render_image

RA0, DEC0 = 150.0, 2.2
SCALE = 0.1


def make_wcs(shape, dx, dy, rot_deg):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [shape[1] / 2 + 1 + dx, shape[0] / 2 + 1 + dy]
    th, s = np.deg2rad(rot_deg), SCALE / 3600.0
    w.wcs.cd = [[-s * np.cos(th), s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]]
    return w


def make_sky(rng, n_side, spacing_px):
    g = (np.arange(n_side) - (n_side - 1) / 2) * spacing_px
    gx, gy = (a.ravel() for a in np.meshgrid(g, g))
    xi = (gx + rng.uniform(-1, 1, gx.size)) * SCALE
    eta = (gy + rng.uniform(-1, 1, gx.size)) * SCALE
    ra = RA0 - xi / 3600 / np.cos(np.deg2rad(DEC0))
    dec = DEC0 + eta / 3600
    return ra, dec, rng.uniform(2000.0, 20000.0, ra.size)


def psf_file(path, fwhm):
    """A PSF as an oversampled image file, as STPSF writes single PSFs."""
    n = 31 * 4 + 1
    off = (np.arange(n) - (n - 1) / 2) / 4
    xx, yy = np.meshgrid(off, off)
    phdu = fits.PrimaryHDU(CircularGaussianPRF(fwhm=fwhm)(xx, yy))
    phdu.header["OVERSAMP"] = 4
    phdu.writeto(path)
    return str(path)


def write_files(tmp_path, rng, ra, dec, flux, filters, fwhms, shape=(70, 70), bunits=None):
    paths = []
    for k, filt in enumerate(filters):
        w = make_wcs(shape, rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-1, 1))
        x, y = w.all_world2pix(ra, dec, 0)
        img = render_image(shape, CircularGaussianPRF(fwhm=fwhms[filt]), np.asarray(x),
                           np.asarray(y), flux, model_shape=(25, 25))
        err = np.sqrt(25.0 + np.clip(img, 0, None))
        hdr = w.to_header()
        hdr["BUNIT"] = "MJy/sr" if bunits is None else bunits[k]
        prim = fits.PrimaryHDU()
        prim.header["FILTER"] = filt
        fits.HDUList([prim, fits.ImageHDU(img + rng.normal(size=shape) * err, hdr, name="SCI"),
                      fits.ImageHDU(err, name="ERR")]).writeto(tmp_path / f"e{k}.fits")
        paths.append(str(tmp_path / f"e{k}.fits"))
    return paths


def test_cli_phot_several_files(tmp_path, capsys):
    rng = np.random.default_rng(3)
    shape = (70, 70)
    ra, dec, flux = make_sky(rng, 5, 11.0)
    psf = psf_file(tmp_path / "psf.fits", 2.5)
    paths = write_files(tmp_path, rng, ra, dec, flux, ("F150W", "F150W", "F200W"),
                        {"F150W": 2.5, "F200W": 2.5})
    Table({"ra": ra + 2e-6, "dec": dec - 2e-6}).write(tmp_path / "init.ecsv")
    out = tmp_path / "cat.ecsv"
    code = main(["phot", *paths, "--psf", psf, "--init",
                 str(tmp_path / "init.ecsv"), "-o", str(out), "--sky", "none"])
    assert code == 0, capsys.readouterr().err
    t = QTable.read(out)
    for col in ("ra", "dec", "ra_err", "dec_err", "flux_F150W", "flux_err_F150W",
                "flux_F200W", "n_exposures", "flags"):
        assert col in t.colnames
    assert t["ra_err"].unit == u.arcsec and t["flux_F200W"].unit == u.MJy / u.sr
    ok = t["flags"] == 0
    assert ok.mean() > 0.9
    pull = (t["flux_F150W"].value[ok] - flux[ok]) / t["flux_err_F150W"].value[ok]
    assert np.all(np.abs(pull) < 5)
    # tiles with --sky none and --init: files read box by box; the same catalog
    capsys.readouterr()
    out2 = tmp_path / "lazy.ecsv"
    code = main(["phot", *paths, "--psf", psf, "--init", str(tmp_path / "init.ecsv"), "-o",
                 str(out2), "--sky", "none", "--tile", "25", "--regions",
                 str(tmp_path / "s.reg")])
    assert code == 0, capsys.readouterr().err
    assert "read tile by tile" in capsys.readouterr().out
    t2 = QTable.read(out2)
    assert len(np.unique(t2["tile"])) >= 4
    reg = (tmp_path / "s.reg").read_text().splitlines()
    assert reg[2] == "fk5" and len(reg) == 3 + np.isfinite(t2["ra"]).sum()
    assert reg[3].startswith(f"circle({t2['ra'][0].to_value(u.deg):.8f},")
    d = np.abs(t2["flux_F150W"] - t["flux_F150W"]) / t["flux_err_F150W"]
    assert np.max(d[ok]) < 1e-3
    # a file without a celestial WCS: one clear line
    fits.PrimaryHDU(np.zeros(shape)).writeto(tmp_path / "nowcs.fits")
    code = main(["phot", paths[0], str(tmp_path / "nowcs.fits"), "--psf", psf, "-o", str(out),
                 "--sky", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "nowcs.fits" in err and "celestial" in err


def test_cli_psf_per_filter_stack_detection_residuals(tmp_path, capsys):
    rng = np.random.default_rng(8)
    ra, dec, flux = make_sky(rng, 5, 11.0)
    fwhms = {"F150W": 2.2, "F200W": 3.0}
    paths = write_files(tmp_path, rng, ra, dec, flux, ("F150W", "F150W", "F200W"), fwhms)
    spec = (f"F150W={psf_file(tmp_path / 'a.fits', 2.2)},"
            f"F200W={psf_file(tmp_path / 'b.fits', 3.0)}")
    out = tmp_path / "cat.ecsv"
    code = main(["phot", *paths, "--psf", spec, "-o", str(out), "--sky", "none",
                 "--residual", str(tmp_path / "res.fits"), "--plots", str(tmp_path / "figs")])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    t = QTable.read(out)
    # no --init: every star found on the stack of the three files
    cosd = np.cos(np.deg2rad(DEC0))
    d = np.hypot((t["ra"].to_value(u.deg)[:, None] - ra) * cosd,
                 t["dec"].to_value(u.deg)[:, None] - dec) * 3600
    assert len(t) == len(ra) and np.all(d.min(axis=0) < 0.05)
    j = d.argmin(axis=0)
    for f in fwhms:  # the right PSF per filter: unbiased fluxes
        pull = (t[f"flux_{f}"].value[j] - flux) / t[f"flux_err_{f}"].value[j]
        assert abs(np.mean(pull)) < 4 / np.sqrt(len(flux)), f
    for k in range(3):
        res = fits.getdata(tmp_path / f"res_e{k}.fits")
        err = fits.getdata(paths[k], "ERR")
        assert res.shape == (70, 70) and 0.8 < np.std(res / err) < 1.2
        assert f"res_e{k}.fits" in printed
        for fig in (f"detections_e{k}.png", f"data_model_residual_e{k}.png"):
            assert (tmp_path / "figs" / fig).stat().st_size > 1000
    assert "6 figures in" in printed
    # in sky tiles of 30 pixels, --psf repeated, no --init: detection on the stack tile by
    # tile from the files' boxes (never read whole); the same catalog
    out2 = tmp_path / "tiled.ecsv"
    code = main(["phot", *paths, *[a for one in spec.split(",") for a in ("--psf", one)],
                 "-o", str(out2), "--sky", "none", "--tile", "30"])
    assert code == 0, capsys.readouterr().err
    assert "read tile by tile" in capsys.readouterr().out
    t2 = QTable.read(out2)
    assert len(np.unique(t2["tile"])) >= 4
    for f in fwhms:
        d = np.abs(t2[f"flux_{f}"] - t[f"flux_{f}"]) / t[f"flux_err_{f}"]
        assert np.max(d) < 1e-3
    # --flux-per-exposure, whole field and in tiles: one flux per file, equal
    for extra, name in (([], "pe.ecsv"), (["--tile", "30"], "pe_tiled.ecsv")):
        code = main(["phot", *paths, "--psf", spec, "-o", str(tmp_path / name), "--sky",
                     "none", "--init", str(out), "--flux-per-exposure", *extra])
        assert code == 0, capsys.readouterr().err
    pe, pe2 = QTable.read(tmp_path / "pe.ecsv"), QTable.read(tmp_path / "pe_tiled.ecsv")
    for k, f in enumerate(("F150W", "F150W", "F200W")):
        pull = (pe[f"flux_{f}_{k}"].value[j] - flux) / pe[f"flux_err_{f}_{k}"].value[j]
        assert abs(np.mean(pull)) < 4 / np.sqrt(len(flux)) and np.std(pull) < 1.5
        d = np.abs(pe2[f"flux_{f}_{k}"] - pe[f"flux_{f}_{k}"]) / pe[f"flux_err_{f}_{k}"]
        assert np.max(d) < 1e-3
    assert f"flux_{f}" not in pe.colnames
    # one image: one --psf only, no --flux-per-exposure
    capsys.readouterr()
    code = main(["phot", paths[0], "--psf", spec.split(",")[0], "--psf", "x.fits", "-o",
                 str(out)])
    assert code == 2 and "--psf given more than once" in capsys.readouterr().err
    code = main(["phot", paths[0], "--psf", psf_file(tmp_path / "c.fits", 2.2), "-o",
                 str(out), "--flux-per-exposure"])
    assert code == 2 and "needs several images" in capsys.readouterr().err
    # a filter the files do not have
    code = main(["phot", *paths, "--psf", "F444W=" + str(tmp_path / "a.fits"), "-o", str(out),
                 "--sky", "none"])
    assert code == 2 and "F444W" in capsys.readouterr().err
    # the joint fit has no bias correction yet: refused, not silently ignored
    code = main(["phot", *paths, "--psf", spec, "-o", str(tmp_path / "bc.ecsv"), "--sky",
                 "none", "--bias-correction"])
    assert code == 2 and "--bias-correction is not supported with several images" in (
        capsys.readouterr().err)


def test_cli_bad_inputs_one_clear_line(tmp_path, capsys):
    rng = np.random.default_rng(9)
    ra, dec, flux = make_sky(rng, 3, 11.0)
    psf = psf_file(tmp_path / "p.fits", 2.5)
    paths = write_files(tmp_path, rng, ra, dec, flux, ("A", "A"), {"A": 2.5},
                        bunits=["MJy/sr", "Jy"])
    out = str(tmp_path / "c.ecsv")
    code = main(["phot", *paths, "--psf", psf, "-o", out, "--sky", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "different units" in err and "e1.fits: Jy" in err
    assert len(err.strip().splitlines()) == 1
    # no overlap: a file 1 degree away
    far = tmp_path / "far.fits"
    with fits.open(paths[0]) as hdul:
        hdul["SCI"].header["CRVAL1"] += 1.0
        hdul["SCI"].header["BUNIT"] = "Jy"
        hdul.writeto(far)
    code = main(["phot", paths[1], str(far), "--psf", psf, "-o", out, "--sky", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "e1.fits and" in err and "far.fits do not overlap on the sky" in err
    assert len(err.strip().splitlines()) == 1


def test_psf_specs():
    assert psf_specs("A=x.fits,y.fits") == {"A": "x.fits", None: "y.fits"}
    assert psf_specs(["A=x.fits", "B=z.fits", "y.fits"]) == {"A": "x.fits", "B": "z.fits",
                                                             None: "y.fits"}
    assert psf_specs(["x.fits"]) == {None: "x.fits"}
    with pytest.raises(CLIError, match="gives A more than once"):
        psf_specs(["A=x.fits", "A=y.fits"])
    with pytest.raises(CLIError, match="more than one"):
        psf_specs("x.fits,y.fits")
    with pytest.raises(CLIError, match="FILTER=FILE"):
        psf_specs("A=")


def test_cli_dq_masks_pixels_of_its_file_only(tmp_path, capsys):
    """A file's DQ bits mask its own pixels: corrupted SCI values under DO_NOT_USE change
    nothing (whole field and tiles reading boxes), while the other files keep those stars."""
    rng = np.random.default_rng(12)
    ra, dec, flux = make_sky(rng, 5, 11.0)
    psf = psf_file(tmp_path / "psf.fits", 2.5)
    paths = write_files(tmp_path, rng, ra, dec, flux, ("A", "A", "A"), {"A": 2.5})
    Table({"ra": ra, "dec": dec}).write(tmp_path / "init.ecsv")
    with fits.open(paths[1]) as hdul:
        w = WCS(hdul["SCI"].header)
        x, y = w.all_world2pix(ra, dec, 0)
        dq = np.zeros(hdul["SCI"].data.shape, dtype=np.uint32)
        for s in range(3):  # the cores of three stars: DO_NOT_USE, SCI ruined
            ix, iy = int(round(float(x[s + 10]))), int(round(float(y[s + 10])))
            dq[iy - 1:iy + 2, ix - 1:ix + 2] = 1
        clean = fits.HDUList([h.copy() for h in hdul] + [fits.ImageHDU(dq, name="DQ")])
        clean.writeto(tmp_path / "clean1.fits")
        clean["SCI"].data = np.where(dq > 0, 1e6, clean["SCI"].data)
        clean.writeto(tmp_path / "bad1.fits")
    tables = {}
    for name, extra in (("clean", []), ("bad", []), ("bad_tiled", ["--tile", "25"])):
        second = str(tmp_path / ("clean1.fits" if name == "clean" else "bad1.fits"))
        out = tmp_path / f"{name}.ecsv"
        code = main(["phot", paths[0], second, paths[2], "--psf", psf, "--init",
                     str(tmp_path / "init.ecsv"), "-o", str(out), "--sky", "none", *extra])
        assert code == 0, capsys.readouterr().err
        tables[name] = QTable.read(out)
    clean = tables["clean"]
    ok = clean["flags"] == 0
    assert ok.mean() > 0.9 and np.all(ok[10:13]) and np.all(clean["n_exposures"] == 3)
    for name in ("bad", "bad_tiled"):
        d = np.abs(tables[name]["flux_A"] - clean["flux_A"]) / clean["flux_err_A"]
        assert np.max(d[ok]) < 1e-3, name
    pull = (clean["flux_A"].value[ok] - flux[ok]) / clean["flux_err_A"].value[ok]
    assert np.all(np.abs(pull) < 5)
    # with DQ ignored the ruined pixels are fitted: those three stars go wrong
    code = main(["phot", paths[0], str(tmp_path / "bad1.fits"), paths[2], "--psf", psf,
                 "--init", str(tmp_path / "init.ecsv"), "-o", str(tmp_path / "nodq.ecsv"),
                 "--sky", "none", "--dq-ext", "none"])
    assert code == 0, capsys.readouterr().err
    nodq = QTable.read(tmp_path / "nodq.ecsv")
    d = np.abs(nodq["flux_A"] - clean["flux_A"]) / clean["flux_err_A"]
    assert np.all(d[10:13] > 50)
