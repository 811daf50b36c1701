"""``crowdphot demo``: the notebook end to end on a small field, and its summary numbers."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from crowdphot.cli.app import main
from crowdphot.cli.demo import DEMO_FILES, format_summary, summarize_match

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_FIGURES = {"detections.png", "groups.png", "groups_zoom.png", "psf_grid.png",
                    "psf_grid_deltas.png", "data_model_residual.png",
                    "data_model_residual_zoom.png", "fit_vs_truth.png", "flux_difference.png"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out), "--shape", "256", "256", "--n-sources", "20",
                     "--seed", "1", "--no-progress"])
    return code, out, printed.getvalue()


def test_demo_writes_every_promised_file(demo_run):
    code, out, _ = demo_run
    assert code == 0
    for name in DEMO_FILES:
        assert (out / name).stat().st_size > 0, name
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == EXPECTED_FIGURES
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    page = (out / "index.html").read_text()
    shown = set(re.findall(r'<img src="([^"]+)"', page))
    assert shown == pngs  # index.html shows every figure
    linked = set(re.findall(r'<a href="([^"]+)"', page))
    assert set(DEMO_FILES) <= linked
    assert not list(out.glob(".*.tmp"))


def test_demo_recovers_the_simulated_stars(demo_run):
    code, out, printed = demo_run
    truth = QTable.read(out / "truth.ecsv")
    catalog = QTable.read(out / "catalog.ecsv")
    summary = json.loads((out / "summary.json").read_text())
    assert len(truth) == summary["n_truth"] == 20
    assert len(catalog) == summary["n_found"]
    assert summary["n_matched"] == 20
    # sigma = 0.5 noise on 500-20000 count stars: sub-percent fluxes, centi-pixel positions
    assert abs(summary["flux_bias_pct"]) < 0.5
    assert summary["flux_scatter_pct"] < 1.0
    assert summary["pos_rms_px"] < 0.05
    image, model, residual = (fits.getdata(out / f"{n}.fits").astype(float)
                              for n in ("image", "model", "residual"))
    np.testing.assert_allclose(image - model, residual, atol=1e-3)
    # the model holds the light of the image (same ePSF, so the same encircled fraction)
    assert abs(image.sum() - model.sum()) < 0.005 * model.sum()
    assert np.std(residual) < 1.5 * 0.5  # only the noise is left
    # the printed summary gives the numbers and each step's time
    assert "20 true" in printed and "20 matched" in printed
    assert "flux: median bias" in printed and "position: rms error" in printed
    for step in summary["timings"]:
        assert step in printed
    assert {"simulate stars", "find stars", "group stars", "PSF fit"} <= set(summary["timings"])


def test_demo_grouped_without_plots(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--shape", "256", "256", "--n-sources", "12",
                 "--grouped", "--no-plots", "--no-progress", "--seed", "2"])
    assert code == 0
    assert not list(tmp_path.glob("*.png"))
    assert "<img" not in (tmp_path / "index.html").read_text()
    catalog = QTable.read(tmp_path / "catalog.ecsv")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fit_mode"] == "grouped" and summary["n_matched"] == 12
    # 12 stars >= 25 px apart in the central 156 x 156 px: some are within 35 px of another
    assert catalog["group_size"].max() > 1
    assert len(np.unique(catalog["group_id"])) == summary["n_groups"]
    assert "groups:" in capsys.readouterr().out


def test_summarize_match_numbers():
    m = QTable({"x_0": [0.0, 10.0, 20.0], "y_0": [0.0, 0.0, 0.0],
                "flux": [100.0, 100.0, 100.0], "x_fit": [0.1, 10.0, 20.0],
                "y_fit": [0.0, 0.2, 0.0], "flux_fit": [101.0, 99.0, 103.0]})
    s = summarize_match(m, 4, 3)
    assert (s["n_truth"], s["n_found"], s["n_matched"]) == (4, 3, 3)
    assert s["flux_bias_pct"] == pytest.approx(1.0)
    assert s["flux_scatter_pct"] == pytest.approx(1.4826 * 2.0)
    assert s["pos_rms_px"] == pytest.approx(np.sqrt((0.01 + 0.04) / 3))
    empty = summarize_match(m[:0], 4, 0)
    assert empty == {"n_truth": 4, "n_found": 0, "n_matched": 0}
    text = format_summary({**s, "timings": {"fit": 1.5, "find": 0.5}})
    assert "flux: median bias +1.0000%" in text and "total" in text and "2.000 s" in text


def test_run_demo_rejects_bad_arguments(tmp_path):
    from crowdphot.cli.demo import run_demo

    with pytest.raises(ValueError, match="n_sources must be positive"):
        run_demo(tmp_path, n_sources=0, echo=None)
    with pytest.raises(ValueError, match="shape must be"):
        run_demo(tmp_path, shape=(8, 8), echo=None)
