"""The figure helpers return populated matplotlib Figures (Agg, no display)."""

import numpy as np
from astropy.table import QTable

from crowdphot.plotting import (
    plot_data_model_residual,
    plot_detections,
    plot_fit_vs_truth,
    plot_flux_difference,
    plot_groups,
    plot_image,
)


def test_plots_draw_what_they_promise(rng, tmp_path):
    img = rng.normal(size=(64, 64))
    x, y = rng.uniform(5, 60, 10), rng.uniform(5, 60, 10)
    fig = plot_detections(img, x, y, radius=3)
    assert len(fig.axes[0].collections) == 1
    assert len(fig.axes[0].collections[0].get_offsets()) == 10
    fig = plot_groups(img, x, y, np.arange(1, 11) // 2 + 1, radius=3, zoom=(0, 30, 0, 30))
    assert fig.axes[0].get_xlim() == (0, 30)
    fig = plot_data_model_residual(img, img * 0.5, img * 0.5)
    assert [a.get_title() for a in fig.axes[:3]] == ["Data", "Model", "Residual"]
    truth = QTable({"x_0": x, "y_0": y, "flux": rng.uniform(100, 1000, 10)})
    truth["x_fit"] = truth["x_0"] + 0.01
    truth["y_fit"] = truth["y_0"] - 0.01
    truth["flux_fit"] = truth["flux"] * 1.01
    fig = plot_fit_vs_truth(truth)
    assert "+0.0100" in fig.axes[0].get_title()
    fig = plot_flux_difference(truth)
    assert fig.axes[0].get_xlabel().startswith("percent")
    fig = plot_image(img, title="t")
    fig.savefig(tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000
