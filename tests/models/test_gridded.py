"""GriddedPSFModel: photutils parity, grid blending, batched kernels, gradients, plots, errors."""

import pickle
from itertools import product

import matplotlib
import numpy as np
import pytest
from astropy.nddata import NDData
from photutils.psf import GriddedPSFModel as PhotutilsGriddedPSFModel

from crowdphot import GriddedPSFModel
from crowdphot.models.gridded import bilinear_grid_weights

matplotlib.use("Agg")

XGRID = [0.0, 40.0, 130.0]  # uneven spacing
YGRID = [-10.0, 60.0, 100.0]


def _gaussian(shape, sx, sy, theta, total):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dx = xx - (shape[1] - 1) / 2
    dy = yy - (shape[0] - 1) / 2
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    img = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return img * (total / img.sum())


def _nddata(oversampling=2, shape=(33, 29), shuffle=True, rng=None, **meta):
    """3x3 grid of elliptical Gaussian ePSFs whose shape changes with position."""
    xy = list(product(XGRID, YGRID))
    psfs = [_gaussian(shape, 2.5 + 0.02 * x, 3.0 + 0.01 * (y + 10), 0.3 + 0.005 * x,
                      np.prod(np.broadcast_to(oversampling, 2))) for x, y in xy]
    if shuffle:  # the model must sort the grid itself
        order = (rng or np.random.default_rng(3)).permutation(len(xy))
        xy = [xy[i] for i in order]
        psfs = [psfs[i] for i in order]
    return NDData(np.array(psfs), meta={"grid_xypos": xy, "oversampling": oversampling,
                                        **meta})


@pytest.fixture
def pair():
    nd = _nddata(instrument="TEST", detector="D1", filter="F1")
    return GriddedPSFModel(nd), PhotutilsGriddedPSFModel(nd)


POSITIONS = [
    (17.3, 22.8),  # inside a cell
    (40.0, 60.0),  # interior node
    (40.0, 5.5),  # on a vertical grid line
    (0.0, -10.0),  # grid corner
    (130.0, 100.0),  # opposite corner
    (-25.0, 30.0),  # outside, left
    (150.2, 130.7),  # outside, upper right
    (88.8, -40.0),  # outside, below
]


@pytest.mark.parametrize(("x0", "y0"), POSITIONS)
def test_values_match_photutils(pair, rng, x0, y0):
    ours, ref = pair
    for m in (ours, ref):
        m.x_0, m.y_0, m.flux = x0, y0, 7.0
    x = x0 + rng.uniform(-9, 9, (30, 20))
    y = y0 + rng.uniform(-10, 10, (30, 20))
    expect = ref(x, y)
    np.testing.assert_allclose(ours(x, y), expect, rtol=0, atol=1e-12 * np.abs(expect).max())
    assert np.any(expect == 0)  # points beyond the ePSF support get fill_value


def test_attributes_match_photutils(pair):
    ours, ref = pair
    np.testing.assert_array_equal(ours.data, ref.data)
    np.testing.assert_array_equal(ours.grid_xypos, ref.grid_xypos)
    np.testing.assert_array_equal(ours.oversampling, ref.oversampling)
    np.testing.assert_array_equal(ours._xgrid, ref._xgrid)
    np.testing.assert_array_equal(ours._ygrid, ref._ygrid)
    assert ours.meta == ref.meta
    assert ours.meta["grid_shape"] == (3, 3)
    np.testing.assert_array_equal(ours.origin, ref.origin[:2])
    assert ours.bounding_box == ref.bounding_box
    assert repr(ours) == repr(ref)
    assert str(ours) == str(ref)
    assert repr(ours).startswith("<GriddedPSFModel(flux=1., x_0=0., y_0=0.")
    assert ours.default_stamp_shape == (17, 15)


def test_single_epsf_grid_is_an_image_psf(rng):
    from crowdphot import ImagePSF

    img = _gaussian((21, 21), 2.0, 2.5, 0.4, 4.0)
    nd = NDData(img[None], meta={"grid_xypos": [(10.0, 10.0)], "oversampling": 2})
    ours = GriddedPSFModel(nd, x_0=3.3, y_0=4.1)
    ref = PhotutilsGriddedPSFModel(nd, x_0=3.3, y_0=4.1)
    x = rng.uniform(-4, 10, 300)
    y = rng.uniform(-4, 10, 300)
    np.testing.assert_allclose(ours(x, y), ref(x, y), rtol=0, atol=1e-14)
    image = ImagePSF(img, oversampling=2, x_0=3.3, y_0=4.1)
    np.testing.assert_allclose(ours(x, y), image(x, y), rtol=0, atol=1e-15)


def test_bilinear_weights_brute_force(rng):
    xg = np.array(XGRID)
    yg = np.array(YGRID)
    x0 = np.concatenate([rng.uniform(-50, 180, 200), xg, [40.0]])
    y0 = np.concatenate([rng.uniform(-50, 150, 200), yg[[0, 1, 2]], [100.0]])
    gidx, w, dwdx, dwdy = bilinear_grid_weights(xg, yg, x0, y0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-14)
    assert np.all(w >= 0)
    nodes = np.array([(x, y) for y in YGRID for x in XGRID])  # sorted by y then x
    # the blended node position reproduces the clipped star position (bilinear is exact)
    blended = np.einsum("nk,nkd->nd", w, nodes[gidx])
    np.testing.assert_allclose(blended[:, 0], np.clip(x0, xg[0], xg[-1]), atol=1e-10)
    np.testing.assert_allclose(blended[:, 1], np.clip(y0, yg[0], yg[-1]), atol=1e-10)
    # derivatives: finite differences away from nodes, zero outside the grid
    inside = (x0 > 1) & (x0 < 129) & (~np.isin(x0, xg)) & (np.abs(x0 - 40) > 1e-3)
    h = 1e-6
    _, wp, _, _ = bilinear_grid_weights(xg, yg, x0 + h, y0)
    _, wm, _, _ = bilinear_grid_weights(xg, yg, x0 - h, y0)
    np.testing.assert_allclose(dwdx[inside], ((wp - wm) / (2 * h))[inside], atol=1e-8)
    outside = (x0 < xg[0]) | (x0 > xg[-1])
    assert np.all(dwdx[outside] == 0)
    _, wp, _, _ = bilinear_grid_weights(xg, yg, x0, y0 + h)
    _, wm, _, _ = bilinear_grid_weights(xg, yg, x0, y0 - h)
    iny = (y0 > -9) & (y0 < 99) & (np.abs(y0 - 60) > 1e-3)
    np.testing.assert_allclose(dwdy[iny], ((wp - wm) / (2 * h))[iny], atol=1e-8)


@pytest.mark.parametrize("fill_value", [0.0, None])
def test_stamps_match_photutils_and_unit(pair, rng, fill_value):
    ours, ref = pair
    ours.fill_value = ref.fill_value = fill_value
    n, shape = 8, (19, 17)  # wider than the ePSF support (33 / 2 samples): edges included
    x0 = np.concatenate([rng.uniform(-20, 150, n - 2), [40.0, 130.0]])
    y0 = np.concatenate([rng.uniform(-20, 120, n - 2), [60.0, 100.0]])
    xlo = np.ceil(x0 - shape[1] / 2).astype(int)
    ylo = np.ceil(y0 - shape[0] / 2).astype(int)
    stamps = ours._stamps(x0, y0, xlo, ylo, shape)
    xs = (xlo[:, None] + np.arange(shape[1]))[:, None, :].astype(float)
    ys = (ylo[:, None] + np.arange(shape[0]))[:, :, None].astype(float)
    np.testing.assert_allclose(stamps, ours._unit(xs, ys, x0, y0), rtol=0, atol=1e-15)
    for i in range(n):
        ref.x_0, ref.y_0 = x0[i], y0[i]
        expect = ref(*np.broadcast_arrays(xs[i], ys[i]))
        np.testing.assert_allclose(stamps[i], expect, rtol=0, atol=1e-12 * expect.max())
    v, gx, gy = ours._stamps_grad(x0, y0, xlo, ylo, shape)
    uv, ugx, ugy = ours._unit_grad(xs, ys, x0, y0)
    np.testing.assert_allclose(v, stamps, rtol=0, atol=1e-15)
    np.testing.assert_allclose(gx, ugx, rtol=0, atol=1e-14)
    np.testing.assert_allclose(gy, ugy, rtol=0, atol=1e-14)


def test_gradients_include_grid_weight_derivative(rng):
    model = GriddedPSFModel(_nddata(oversampling=(2, 3)))
    n, shape, h = 6, (11, 9), 1e-6
    x0 = rng.uniform(3, 125, n)
    y0 = rng.uniform(-7, 95, n)
    xlo = np.ceil(x0 - shape[1] / 2).astype(int)
    ylo = np.ceil(y0 - shape[0] / 2).astype(int)
    _, gx, gy = model._stamps_grad(x0, y0, xlo, ylo, shape)
    fx = (model._stamps(x0 + h, y0, xlo, ylo, shape)
          - model._stamps(x0 - h, y0, xlo, ylo, shape)) / (2 * h)
    fy = (model._stamps(x0, y0 + h, xlo, ylo, shape)
          - model._stamps(x0, y0 - h, xlo, ylo, shape)) / (2 * h)
    scale = max(np.abs(fx).max(), np.abs(fy).max())
    np.testing.assert_allclose(gx, fx, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(gy, fy, rtol=0, atol=1e-6 * scale)
    # the grid-weight term matters here: without it the gradient misses the FD tolerance
    gidx, w, _, dwdy = bilinear_grid_weights(model._xgrid, model._ygrid, x0, y0)
    ox, oy, orx, ory = model._sample_setup()
    _, no_wx, _ = model._cache.get().stamps(x0, y0, xlo, ylo, shape, gidx, w, 0 * w, dwdy,
                                            ox=ox, oy=oy, orx=orx, ory=ory)
    assert np.abs(no_wx - fx).max() > 1e-4 * scale


def test_copy_pickle_and_fixed(pair):
    ours, _ = pair
    ours.x_0 = 20.0
    ours(20.0, 20.0)
    twin = ours.copy()
    assert twin._cache is ours._cache and twin.data is ours.data
    twin.x_0.fixed = True
    twin.x_0 = 3.0
    assert not ours.x_0.fixed and ours.x_0.value == 20.0
    clone = pickle.loads(pickle.dumps(ours))
    np.testing.assert_array_equal(clone(np.arange(15.0, 25.0), 20.0),
                                  ours(np.arange(15.0, 25.0), 20.0))
    bounded = GriddedPSFModel(_nddata(), bounds={"x_0": (0, 5)}, fixed={"flux": True})
    assert bounded.bounds["x_0"] == (0, 5) and bounded.fixed["flux"]


def test_evaluate_rejects_3d_inputs(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="x and y must be 1D or 2D"):
        ours.evaluate(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), 1.0, 0.0, 0.0)


def _bad(kind):
    nd = _nddata(shuffle=False)
    meta = dict(nd.meta)
    if kind == "ndim":
        return NDData(nd.data[0], meta=meta)
    if kind == "two":
        return NDData(nd.data[:2], meta={**meta, "grid_xypos": meta["grid_xypos"][:2]})
    if kind == "nan":
        data = nd.data.copy()
        data[3, 5, 5] = np.nan
        return NDData(data, meta=meta)
    if kind == "small":
        return NDData(nd.data[:, :3, :], meta=meta)
    if kind == "no_over":
        meta.pop("oversampling")
        return NDData(nd.data, meta=meta)
    if kind == "no_xy":
        meta.pop("grid_xypos")
        return NDData(nd.data, meta=meta)
    if kind == "count":
        return NDData(nd.data[:4], meta=meta)
    if kind == "rect":
        xy = list(meta["grid_xypos"])
        xy[4] = (41.0, 60.0)
        return NDData(nd.data, meta={**meta, "grid_xypos": xy})
    if kind == "pairs":
        return NDData(nd.data, meta={**meta, "grid_xypos": [(1, 2, 3)] * 9})
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "match"), [
    ("ndim", "must be a 3D array"),
    ("two", "1 or at least 4 ePSFs"),
    ("nan", "only finite values"),
    ("small", "at least 4 samples"),
    ("no_over", "must contain 'oversampling'"),
    ("no_xy", "must contain 'grid_xypos'"),
    ("count", "has 9 positions for 4 ePSFs"),
    ("rect", "must form a rectangular grid"),
    ("pairs", "list of \\(x, y\\) pairs"),
])
def test_errors(kind, match):
    with pytest.raises(ValueError, match=match):
        GriddedPSFModel(_bad(kind))


def test_type_errors():
    with pytest.raises(TypeError, match="nddata must be an astropy NDData"):
        GriddedPSFModel(np.ones((4, 5, 5)))
    with pytest.raises(ValueError, match="oversampling must be > 0"):
        GriddedPSFModel(NDData(np.ones((1, 5, 5)), meta={"grid_xypos": [(0, 0)],
                                                         "oversampling": 0}))
    with pytest.raises(TypeError, match="fill_value must be a number or None"):
        GriddedPSFModel(_nddata(), fill_value=[1, 2])


@pytest.mark.parametrize("deltas", [False, True])
def test_plot_grid(pair, deltas):
    import matplotlib.pyplot as plt

    ours, _ = pair
    fig = ours.plot_grid(deltas=deltas, figsize=(5, 5), vmax_scale=0.1 if not deltas else None)
    try:
        ax = fig.axes[0]
        image = ax.get_images()[0]
        mosaic = image.get_array()
        assert mosaic.shape == (3 * 33, 3 * 29)
        title = ax.get_title()
        assert title.startswith("TEST D1 F1")
        if deltas:
            assert "\u2212 <ePSF>" in title
            assert image.norm.vmin == pytest.approx(-image.norm.vmax)
            # deltas sum to zero over the grid at every sample
            stack = mosaic.reshape(3, 33, 3, 29).transpose(0, 2, 1, 3).reshape(9, 33, 29)
            np.testing.assert_allclose(stack.sum(axis=0), 0.0, atol=1e-12)
        else:
            assert image.norm.vmax == pytest.approx(0.1 * ours.data.max())
            # ePSF at grid node (x=130, y=-10) is drawn in the bottom-right tile
            np.testing.assert_array_equal(mosaic[:33, 58:], ours.data[2])
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["0", "40", "130"]
        assert len(ax.lines) == 4  # 2 vertical + 2 horizontal dividers
    finally:
        plt.close(fig)


def test_plot_grid_on_given_axes(pair):
    import matplotlib.pyplot as plt

    ours, _ = pair
    fig, ax = plt.subplots()
    try:
        out = ours.plot_grid(ax=ax, peak_norm=True, dividers=False, cmap="magma")
        assert out is fig
        assert ax.get_images()[0].get_array().max() == pytest.approx(1.0)
        assert len(ax.lines) == 0
        assert ax.get_images()[0].get_cmap().name == "magma"
    finally:
        plt.close(fig)


def test_no_stars(pair):
    ours, _ = pair
    empty = np.array([])
    assert ours.psf_stamps(empty, empty, (5, 7)).shape == (0, 5, 7)
    assert all(a.shape == (0, 5, 7) for a in ours.psf_stamps(empty, empty, (5, 7),
                                                             gradient=True))
    assert ours._unit(np.zeros((0, 3)), np.zeros((0, 3)), empty, empty).shape == (0, 3)


def test_many_stars_across_cells(pair, rng):
    # enough stars for the compiled kernel to sort them by grid cell and chunk them
    ours, _ = pair
    n, shape = 300, (7, 5)
    x0 = rng.uniform(-30, 160, n)
    y0 = rng.uniform(-30, 130, n)
    xlo = np.ceil(x0 - shape[1] / 2).astype(int)
    ylo = np.ceil(y0 - shape[0] / 2).astype(int)
    xs = (xlo[:, None] + np.arange(shape[1]))[:, None, :].astype(float)
    ys = (ylo[:, None] + np.arange(shape[0]))[:, :, None].astype(float)
    np.testing.assert_allclose(ours._stamps(x0, y0, xlo, ylo, shape), ours._unit(xs, ys, x0, y0),
                               rtol=0, atol=1e-15)
    for got, want in zip(ours._stamps_grad(x0, y0, xlo, ylo, shape),
                         ours._unit_grad(xs, ys, x0, y0), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
