"""The figure helpers draw what they promise and return Figures (Agg, no display, no pyplot)."""

import numpy as np
import pytest
from astropy.table import QTable
from matplotlib.colors import to_rgba

from crowdphot.viz.figures import (
    plot_data_model_residual,
    plot_detections,
    plot_fit_vs_truth,
    plot_flux_difference,
    plot_groups,
    plot_image,
    robust_std,
)


@pytest.fixture
def scene(rng):
    img = rng.normal(size=(64, 64))
    x, y = rng.uniform(5, 60, 10), rng.uniform(5, 60, 10)
    return img, x, y


def _matched(rng, x, y):
    t = QTable({"x_0": x, "y_0": y, "flux": rng.uniform(100, 1000, len(x))})
    t["x_fit"] = t["x_0"] + 0.01
    t["y_fit"] = t["y_0"] - 0.02
    t["flux_fit"] = t["flux"] * 1.01
    return t


def test_detections_are_circles_at_the_positions(scene):
    img, x, y = scene
    fig = plot_detections(img, x, y, radius=3)
    circles = fig.axes[0].collections[0]
    np.testing.assert_allclose(circles.get_offsets(), np.column_stack([x, y]))
    assert fig.axes[0].get_title().startswith("10 detected sources")
    assert fig.axes[0].images[0].origin == "lower"  # array [y, x] drawn with y up


def test_groups_share_a_colour_and_colours_are_seeded(scene):
    img, x, y = scene
    gid = np.array([1, 1, 2, 2, 2, 3, 4, 5, 5, 6])
    fig = plot_groups(img, x, y, gid, radius=3, zoom=(0, 30, 0, 30))
    colors = fig.axes[0].collections[0].get_edgecolor()
    assert np.array_equal(colors[0], colors[1]) and np.array_equal(colors[2], colors[4])
    assert len({tuple(c) for c in colors}) == 6
    again = plot_groups(img, x, y, gid, radius=3).axes[0].collections[0].get_edgecolor()
    np.testing.assert_array_equal(colors, again)
    assert fig.axes[0].get_xlim() == (0, 30)
    assert fig.axes[0].get_title() == "10 sources in 6 groups"


def test_data_model_residual_scales(rng):
    data = rng.normal(0, 2.0, (80, 80))
    data[40, 40] = 500.0
    fig = plot_data_model_residual(data, data * 0.5, data - data * 0.5, residual_sigma=4)
    assert [a.get_title() for a in fig.axes[:3]] == ["Data", "Model", "Residual"]
    data_img, model_img, res_img = (ax.images[0] for ax in fig.axes[:3])
    # data and model share one stretch; the residual is symmetric about zero at 4 robust sigma
    assert data_img.norm.vmin == model_img.norm.vmin and data_img.norm.vmax == model_img.norm.vmax
    assert res_img.norm.vmin == -res_img.norm.vmax
    assert res_img.norm.vmax == pytest.approx(4 * robust_std(data * 0.5), rel=1e-12)
    assert res_img.get_cmap().name == "RdBu_r"


def test_fit_vs_truth_panels_and_statistics(rng, scene):
    _, x, y = scene
    fig = plot_fit_vs_truth(_matched(rng, x, y))
    assert len(fig.axes) == 6
    assert fig.axes[0].get_xlabel() == "true x [pixel]"
    assert "+0.0100" in fig.axes[3].get_title()  # x offset
    assert "-0.0200" in fig.axes[4].get_title()  # y offset
    assert "+1.0000" in fig.axes[5].get_title()  # +1% flux
    np.testing.assert_allclose(fig.axes[5].lines[0].get_ydata(), 1.0)


def test_flux_difference_histogram(rng, scene):
    _, x, y = scene
    fig = plot_flux_difference(_matched(rng, x, y), bins=20)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == 10
    assert ax.get_xlabel().startswith("percent")
    assert "median -1.000%" in ax.get_legend().get_texts()[0].get_text()


def test_plot_image_handles_blank_and_nan_images(tmp_path):
    blank = np.zeros((16, 16))
    blank[3, 3] = np.nan
    fig = plot_image(blank, title="t")
    fig.savefig(tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000
    fig = plot_detections(np.ones((8, 8)), [], [])  # no detections is not an error
    assert len(fig.axes[0].collections[0].get_offsets()) == 0
    assert to_rgba(fig.axes[0].collections[0].get_edgecolor()[0]) == to_rgba("red")


def test_robust_std():
    v = np.r_[np.random.default_rng(3).normal(0, 2, 20_000), 1e9, np.nan]
    assert robust_std(v) == pytest.approx(2.0, rel=0.03)
    assert np.isnan(robust_std([np.nan]))


def test_large_images_are_block_averaged_for_display(rng):
    from crowdphot.viz.figures import DISPLAY_MAX_SIDE, _block_mean

    ny, nx = DISPLAY_MAX_SIDE * 2 + 3, 50  # needs factor 3, with a ragged edge
    img = rng.normal(size=(ny, nx))
    img[0, 0] = np.nan
    fig = plot_image(img)
    ax = fig.axes[0]
    shown = np.ma.filled(ax.images[0].get_array(), np.nan)
    assert shown.shape == (-(-ny // 3), -(-nx // 3))
    # brute force: the mean of the finite pixels of each 3 x 3 block
    assert shown[0, 0] == pytest.approx(np.nanmean(img[:3, :3]))
    assert shown[5, 7] == pytest.approx(img[15:18, 21:24].mean())
    assert shown[-1, -1] == pytest.approx(img[-(ny % 3):, -(nx % 3):].mean())
    # pixel coordinates are kept: the axes span the original image
    assert ax.get_xlim() == (-0.5, nx - 0.5) and ax.get_ylim() == (-0.5, ny - 0.5)
    assert ax.images[0].get_extent() == [-0.5, 51 - 0.5, -0.5, shown.shape[0] * 3 - 0.5]
    np.testing.assert_array_equal(_block_mean(np.arange(4.0).reshape(2, 2), 1),
                                  np.arange(4.0).reshape(2, 2))
    # a zoomed view keeps full resolution
    fig = plot_groups(img, [10.0], [10.0], [1], zoom=(0, 20, 0, 20))
    assert fig.axes[0].images[0].get_array().shape == (ny, nx)
