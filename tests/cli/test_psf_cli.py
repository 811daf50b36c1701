"""``crowdphot psf`` (build or refine a grid from an image) and ``crowdphot phot --refine-psf``."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from crowdphot import GriddedPSFModel
from crowdphot.cli.app import main


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    d = tmp_path_factory.mktemp("psfcli")
    path = d / "field.fits"
    code = main(["simulate", str(path), "--psf", "builtin:F200W", "--n-sources", "150",
                 "--shape", "768", "768", "--flux", "3000", "200000", "--min-separation",
                 "30", "--noise", "2", "--seed", "3", "--no-progress"])
    assert code == 0
    return path


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_psf_builds_a_readable_grid_and_figure(image, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "grid.fits"
    png = tmp_path / "grid.png"
    code, text, err = _run(["psf", image, "-o", out, "--grid", "2", "2", "--size", "19",
                            "--min-stars", "10", "--sky", "none", "--plot", png,
                            "--no-progress"], capsys)
    assert code == 0, err
    assert "built a 2x2 grid" in text
    model = GriddedPSFModel.read(out)
    assert model.data.shape == (4, 77, 77)
    header = fits.getheader(out)
    assert header["OVERSAMP"] == 4 and header["NUM_PSFS"] == 4
    assert header["FILTER"] == "F200W" and header["INSTRUME"] == "NIRCAM"  # from the image
    assert sum(header[f"NSTARS{i}"] for i in range(4)) > 40
    assert png.stat().st_size > 10_000
    # the written grid is a valid --psf for the image it came from
    code, _, err = _run(["phot", image, "--psf", out, "-o", tmp_path / "c0.ecsv", "--sky",
                         "none", "--no-progress"], capsys)
    assert code == 0, err


def test_psf_from_builtin_and_phot_refine(image, tmp_path, capsys):
    out = tmp_path / "refined.fits"
    png = tmp_path / "refined.png"
    code, text, err = _run(["psf", image, "-o", out, "--from", "builtin:F200W",
                            "--sky", "none", "--plot", png, "--no-progress"], capsys)
    assert code == 0, err
    assert "refined builtin:F200W" in text
    assert png.stat().st_size > 10_000
    refined = GriddedPSFModel.read(out)
    assert refined.data.shape[0] == 16
    cat = tmp_path / "cat.ecsv"
    code, text, err = _run(["phot", image, "-o", cat, "--refine-psf", "--sky", "none",
                            "--no-progress"], capsys)
    assert code == 0, err
    assert "refined the PSF with" in text
    tab = Table.read(cat)
    assert len(tab) >= 140
    truth = Table.read(str(image).replace(".fits", "_truth.ecsv"))
    assert np.isfinite(np.asarray(tab["flux_fit"], dtype=float)).mean() > 0.95
    assert len(truth) == 150


def test_psf_errors_are_one_line(image, tmp_path, capsys):
    code, _, err = _run(["psf", image, "-o", tmp_path / "g.txt"], capsys)
    assert code == 2 and "must end in .fits" in err
    code, _, err = _run(["psf", image, "-o", tmp_path / "g.fits", "--grid", "6", "6",
                         "--min-stars", "30", "--sky", "none", "--no-progress"], capsys)
    assert code == 2 and "grid zone 0" in err
    assert not (tmp_path / "g.fits").exists()
