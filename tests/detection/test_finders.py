"""Star finders: side-by-side parity with photutils 3.0, deprecated names, bad input, oracles."""

import pickle
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.table import QTable
from astropy.utils.exceptions import AstropyDeprecationWarning
from scipy import ndimage

import crowdphot
from crowdphot.core.kernels import detect as K
from crowdphot.core.validate import CrowdphotWarning
from crowdphot.detection.finders import DAOStarFinder, IRAFStarFinder, NoDetectionsWarning
from crowdphot.utils._tables import (
    DeprecatedColumnQTable,
    add_deprecated_aliases,
    make_deprecated_qtable,
    use_future_column_names,
)

pd = pytest.importorskip("photutils.detection")
ppsf = pytest.importorskip("photutils.psf")
pdata = pytest.importorskip("photutils.datasets")

SHAPE = (512, 512)


@pytest.fixture(scope="module")
def scene():
    """512x512 image: 200 Gaussian PRF stars (fwhm 1.8, flux 500-20000), a few at the edges."""
    model = ppsf.CircularGaussianPRF(fwhm=1.8)
    data, params = ppsf.make_psf_model_image(
        SHAPE, model, 200, model_shape=(11, 11), flux=(500, 20000), min_separation=5, seed=7
    )
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    sigma = 1.8 / 2.3548
    for x0, y0, f in [(0.3, 250.2, 4000.0), (511.4, 0.6, 6000.0), (1.2, 510.7, 3000.0)]:
        data = data + f / (2 * np.pi * sigma**2) * np.exp(
            -((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2)
        )
    data = data + pdata.make_noise_image(
        SHAPE, distribution="gaussian", mean=0.0, stddev=0.5, seed=7
    )
    return data, params


def assert_tables_match(ours, theirs, rtol=1e-6):
    """Same columns in the same order, same dtypes and units, values equal to ``rtol``."""
    assert theirs is not None and ours is not None
    assert ours.colnames == theirs.colnames
    assert len(ours) == len(theirs)
    for name in theirs.colnames:
        a, b = ours[name], theirs[name]
        assert getattr(a, "unit", None) == getattr(b, "unit", None), name
        a, b = np.asarray(getattr(a, "value", a)), np.asarray(getattr(b, "value", b))
        assert a.dtype == b.dtype, name
        if name == "orientation":  # angles wrap at 360
            d = np.abs((a - b + 180.0) % 360.0 - 180.0)
            assert np.all(d <= 1e-6 * 360), name
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-9, err_msg=name)


def both(name, data, mask=None, **kwargs):
    ours = getattr(crowdphot.detection.finders, name)(**kwargs)(data, mask=mask)
    theirs = getattr(pd, name)(**kwargs)(data, mask=mask)
    return ours, theirs


COMMON_CASES = [
    {},
    {"fwhm": 2.5, "sigma_radius": 2.0},
    {"min_separation": 0},
    {"min_separation": 4.3},
    {"min_separation": 3},
    {"n_brightest": 40},
    {"peak_max": 900.0},
    {"exclude_border": True},
    {"threshold": 2.0, "sharpness_range": None, "roundness_range": None},
]


@pytest.mark.parametrize("case", COMMON_CASES + [{"sharpness_range": (0.55, 0.7)}])
def test_iraf_parity(scene, case):
    kwargs = {"threshold": 6.0, "fwhm": 3.0, **case}
    ours, theirs = both("IRAFStarFinder", scene[0], **kwargs)
    assert_tables_match(ours, theirs)
    assert len(ours) > 30


@pytest.mark.parametrize(
    "case",
    COMMON_CASES
    + [
        {"ratio": 0.6, "theta": 30.0},
        {"ratio": 0.5, "theta": 90.0, "sigma_radius": 2.5},
        {"scale_threshold": False, "threshold": 20.0},
        {"roundness_range": (-0.2, 0.2), "sharpness_range": (0.3, 0.9)},
    ],
)
def test_dao_parity(scene, case):
    kwargs = {"threshold": 6.0, "fwhm": 3.0, **case}
    ours, theirs = both("DAOStarFinder", scene[0], **kwargs)
    assert_tables_match(ours, theirs)
    assert len(ours) > 30


@pytest.mark.parametrize("name", ["IRAFStarFinder", "DAOStarFinder"])
def test_parity_mask_threshold_map_and_xycoords(scene, name):
    data, params = scene
    mask = np.zeros(SHAPE, bool)
    mask[100:300, 50:260] = True
    ours, theirs = both(name, data, mask=mask, threshold=5.0, fwhm=3.0)
    assert_tables_match(ours, theirs)
    assert not np.any(
        (ours["x_centroid"] > 52) & (ours["x_centroid"] < 258)
        & (ours["y_centroid"] > 102) & (ours["y_centroid"] < 298)
    )  # fmt: skip

    thr = np.full(SHAPE, 5.0)
    thr[:, 256:] = 60.0
    ours, theirs = both(name, data, threshold=thr, fwhm=3.0)
    assert_tables_match(ours, theirs)

    xy = np.column_stack([params["x_0"], params["y_0"]])[:60]
    xy = np.vstack([xy, [[-30.0, 5.0], [0.4, 0.6], [511.6, 300.2]]])
    ours, theirs = both(name, data, threshold=5.0, fwhm=3.0, xycoords=xy)
    assert_tables_match(ours, theirs)


@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5, 2.0, 2.5, 3.7, 5.0])
def test_peak_semantics_on_noise_match_photutils(radius):
    """Pure noise with a negative threshold: thousands of peaks, border zero-padding matters."""
    rng = np.random.default_rng(3)
    conv = rng.normal(size=(61, 67)) - 0.3
    ours = K.find_peak_pixels(conv, -1.0, min_separation=radius)
    tbl = pd.find_peaks(conv, -1.0, min_separation=radius)
    np.testing.assert_array_equal(ours[0], tbl["x_peak"])
    np.testing.assert_array_equal(ours[1], tbl["y_peak"])
    assert ours[0].size > 20


def test_peak_footprint_brute_force():
    """Footprint mode equals a brute-force maximum filter with zero padding."""
    rng = np.random.default_rng(4)
    conv = rng.normal(size=(40, 45))
    foot = K.make_star_kernel(4.0, ratio=0.5, theta=20.0).mask
    thr = rng.uniform(-0.5, 0.5, size=conv.shape)
    mask = rng.random(conv.shape) < 0.1
    x, y = K.find_peak_pixels(conv, thr, mask=mask, border=(2, 3), footprint=foot)
    ref = conv == ndimage.maximum_filter(conv, footprint=foot, mode="constant", cval=0.0)
    ref &= (conv > thr) & ~mask
    ref[:2], ref[-2:], ref[:, :3], ref[:, -3:] = False, False, False, False
    ry, rx = np.nonzero(ref)
    np.testing.assert_array_equal(x, rx)
    np.testing.assert_array_equal(y, ry)


@pytest.mark.parametrize("kw", [{}, {"ratio": 0.4, "theta": 33.0}, {"fwhm": 7.0}])
def test_convolution_matches_scipy(kw):
    rng = np.random.default_rng(5)
    data = rng.normal(size=(70, 90))
    kernel = K.make_star_kernel(kw.pop("fwhm", 3.0), **kw).data
    np.testing.assert_allclose(
        K.convolve_zero_padded(data, kernel),
        ndimage.convolve(data, kernel, mode="constant", cval=0.0),
        rtol=0,
        atol=1e-12,
    )


def test_kernel_matches_photutils():
    from photutils.detection.core import _StarFinderKernel

    for fwhm, ratio, theta, sr in [(3.0, 1.0, 0.0, 1.5), (5.5, 0.3, 123.0, 2.2), (1.0, 1, 0, 1)]:
        ref = _StarFinderKernel(fwhm, ratio=ratio, theta=theta, sigma_radius=sr)
        ours = K.make_star_kernel(fwhm, ratio=ratio, theta=theta, sigma_radius=sr)
        np.testing.assert_allclose(ours.data, ref.data, rtol=1e-13, atol=1e-15)
        np.testing.assert_array_equal(ours.mask, ref.mask.astype(bool))
        assert ours.rel_err == pytest.approx(ref.rel_err, rel=1e-13)
        assert ours.n_pixels == ref.n_pixels


def test_recovers_simulated_positions(scene):
    """Centroids land on the injected stars (moment centroids of a 1.8 px PRF: < 0.15 px)."""
    data, params = scene
    tbl = IRAFStarFinder(threshold=6.0, fwhm=3.0)(data)
    truth = np.column_stack([params["x_0"], params["y_0"]])
    found = np.column_stack([tbl["x_centroid"], tbl["y_centroid"]])
    dist = np.hypot(*(found[:, None, :] - truth[None, :, :]).transpose(2, 0, 1)).min(axis=1)
    interior = (found > 6).all(axis=1) & (found < SHAPE[0] - 6).all(axis=1)
    assert np.median(dist[interior]) < 0.1
    assert np.all(dist[interior] < 0.5)
    assert interior.sum() > 150


# --------------------------------------------------------------------------------------------
# tables and deprecated names
# --------------------------------------------------------------------------------------------
def test_deprecated_columns_like_photutils(scene):
    data = scene[0]
    ours, theirs = both("IRAFStarFinder", data, threshold=6.0, fwhm=3.0)
    for old, new in [("xcentroid", "x_centroid"), ("pa", "orientation"), ("npix", "n_pixels")]:
        with pytest.warns(AstropyDeprecationWarning, match=old):
            ref = theirs[old]
        with pytest.warns(AstropyDeprecationWarning, match=f"'{old}'.*'{new}'"):
            col = ours[old]
        np.testing.assert_allclose(np.asarray(getattr(col, "value", col)), ref.value
                                   if hasattr(ref, "value") else ref)  # fmt: skip
        with pytest.warns(AstropyDeprecationWarning):
            assert old in ours
    assert "xcentroid" not in ours.colnames
    with pytest.warns(AstropyDeprecationWarning):
        sub = ours[0:5]
        assert isinstance(sub, DeprecatedColumnQTable)
        np.testing.assert_array_equal(sub["ycentroid"], ours["y_centroid"][:5])
    with pytest.warns(AstropyDeprecationWarning):
        assert ours[3]["npix"] == ours["n_pixels"][3]  # row access
    dao = DAOStarFinder(threshold=6.0, fwhm=3.0)(data)
    with pytest.warns(AstropyDeprecationWarning):
        np.testing.assert_array_equal(dao["xcentroid"], dao["x_centroid"])


def test_alias_table_operations_keep_aliases():
    t = make_deprecated_qtable(
        {"x_centroid": [3.0, 1.0, 2.0], "n_pixels_fit": [5, 6, 7]},
        deprecation_map={"xcentroid": "x_centroid", "npixfit": "n_pixels_fit"},
    )
    for other in (t.copy(), pickle.loads(pickle.dumps(t)), t[[True, False, True]]):
        assert isinstance(other, DeprecatedColumnQTable)
        with pytest.warns(AstropyDeprecationWarning, match="npixfit"):
            assert list(other["npixfit"]) == list(other["n_pixels_fit"])
    with pytest.warns(AstropyDeprecationWarning):
        t.sort("xcentroid")
    assert list(t["x_centroid"]) == [1.0, 2.0, 3.0]
    with pytest.warns(AstropyDeprecationWarning):
        t.rename_column("npixfit", "n_fit")
    assert t.colnames == ["x_centroid", "n_fit"]
    with pytest.warns(AstropyDeprecationWarning):
        t["xcentroid"] = [9.0, 9.0, 9.0]
    assert list(t["x_centroid"]) == [9.0, 9.0, 9.0]
    with pytest.raises(KeyError):
        t["nonexistent"]
    with pytest.raises(TypeError, match="deprecation_map"):
        make_deprecated_qtable(deprecation_map=["xcentroid"])


def test_future_column_names_switch(scene, monkeypatch):
    with use_future_column_names():
        tbl = IRAFStarFinder(threshold=6.0, fwhm=3.0)(scene[0])
        assert type(tbl) is QTable
        with pytest.raises(KeyError):
            tbl["xcentroid"]
    monkeypatch.setattr(crowdphot, "future_column_names", True, raising=False)
    plain = add_deprecated_aliases(QTable({"a": [1]}), {"b": "a"})
    assert type(plain) is QTable
    monkeypatch.setattr(crowdphot, "future_column_names", False, raising=False)
    assert type(add_deprecated_aliases(QTable({"a": [1]}), {"b": "a"})) is DeprecatedColumnQTable


# --------------------------------------------------------------------------------------------
# deprecated arguments, no detections, bad pixels, units
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "old"),
    [
        ("IRAFStarFinder", {"sharplo": 0.55, "roundhi": 0.1}),
        ("IRAFStarFinder", {"minsep_fwhm": 1.5}),
        ("IRAFStarFinder", {"brightest": 25, "peakmax": 900.0}),
        ("DAOStarFinder", {"sharphi": 0.8, "roundlo": -0.3}),
        ("DAOStarFinder", {"brightest": 10}),
    ],
)
def test_deprecated_arguments(scene, name, old):
    with pytest.warns(AstropyDeprecationWarning):
        ours = getattr(crowdphot.detection.finders, name)(threshold=6.0, fwhm=3.0, **old)(scene[0])
    with pytest.warns(AstropyDeprecationWarning):
        theirs = getattr(pd, name)(threshold=6.0, fwhm=3.0, **old)(scene[0])
    assert_tables_match(ours, theirs)


def test_old_and_new_argument_together_is_an_error():
    with pytest.raises(TypeError, match="brightest"):
        IRAFStarFinder(threshold=1.0, fwhm=3.0, brightest=3, n_brightest=4)


@pytest.mark.parametrize("name", ["IRAFStarFinder", "DAOStarFinder"])
def test_no_detections_return_none(scene, name):
    cls = getattr(crowdphot.detection.finders, name)
    with pytest.warns(NoDetectionsWarning, match="No sources"):
        assert cls(threshold=1e9, fwhm=3.0)(scene[0]) is None
    with pytest.warns(NoDetectionsWarning, match="No sources"):
        assert cls(threshold=0.1, fwhm=3.0)(np.zeros((30, 30))) is None
    with pytest.warns(NoDetectionsWarning, match="none pass"):
        assert cls(threshold=6.0, fwhm=3.0, peak_max=-1e9)(scene[0]) is None


@pytest.mark.parametrize("name", ["IRAFStarFinder", "DAOStarFinder"])
def test_nonfinite_pixels_masked_like_photutils(scene, name):
    """NaNs: same stars as photutils (which drops any star whose stamp holds a NaN)."""
    data = scene[0].copy()
    data[100:103, 200] = np.nan
    stars = np.column_stack(np.nonzero(data > 200))[::40]
    data[stars[:, 0], stars[:, 1]] = np.nan  # NaN on top of some stars
    finder = getattr(crowdphot.detection.finders, name)(threshold=6.0, fwhm=3.0)
    with pytest.warns(CrowdphotWarning, match="non-finite"):
        ours = finder(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        theirs = getattr(pd, name)(threshold=6.0, fwhm=3.0)(data)
    assert_tables_match(ours, theirs)
    clean = finder(scene[0])
    assert len(clean) - len(ours) >= len(stars) // 2  # the hit stars are gone
    # inf is treated like NaN (photutils instead turns it into a spurious +inf peak)
    data[stars[:, 0], stars[:, 1]] = np.inf
    with pytest.warns(CrowdphotWarning, match="non-finite"):
        with_inf = finder(data)
    assert_tables_match(with_inf, ours, rtol=0)
    for c in with_inf.colnames:
        assert np.all(np.isfinite(np.asarray(getattr(with_inf[c], "value", with_inf[c]))))


def test_quantity_data_units(scene):
    data = scene[0] * u.Jy
    kw = {"threshold": 6.0 * u.Jy, "fwhm": 3.0, "peak_max": 5000 * u.Jy}
    for name in ("IRAFStarFinder", "DAOStarFinder"):
        ours, theirs = both(name, data, **kw)
        assert_tables_match(ours, theirs)
        assert ours["flux"].unit == u.Jy
    with pytest.raises(ValueError, match="same units"):
        IRAFStarFinder(threshold=6.0, fwhm=3.0)(data)


# --------------------------------------------------------------------------------------------
# argument errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"fwhm": 0.0}, ValueError, "fwhm"),
        ({"fwhm": -2.0}, ValueError, "fwhm"),
        ({"fwhm": [3.0, 3.0]}, TypeError, "fwhm"),
        ({"fwhm": np.nan}, ValueError, "fwhm"),
        ({"threshold": np.nan}, ValueError, "threshold"),
        ({"threshold": "high"}, TypeError, "threshold"),
        ({"threshold": np.ones(5)}, ValueError, "threshold"),
        ({"sigma_radius": 0}, ValueError, "sigma_radius"),
        ({"min_separation": -1}, ValueError, "min_separation"),
        ({"n_brightest": 0}, ValueError, "n_brightest"),
        ({"n_brightest": 2.5}, ValueError, "n_brightest"),
        ({"n_brightest": True}, TypeError, "n_brightest"),
        ({"xycoords": np.ones((4, 3))}, ValueError, "xycoords"),
        ({"xycoords": [[1.0, np.nan]]}, ValueError, "xycoords"),
        ({"sharpness_range": (1.0,)}, ValueError, "sharpness_range"),
        ({"roundness_range": (0.5, -0.5)}, ValueError, "roundness_range"),
        ({"exclude_border": "yes"}, TypeError, "exclude_border"),
        ({"peak_max": np.nan}, ValueError, "peak_max"),
    ],
)
@pytest.mark.parametrize("cls", [IRAFStarFinder, DAOStarFinder])
def test_bad_arguments(cls, kwargs, exc, match):
    full = {"threshold": 5.0, "fwhm": 3.0, **kwargs}
    with pytest.raises(exc, match=match):
        cls(**full)


def test_bad_call_arguments():
    finder = DAOStarFinder(threshold=np.ones((20, 20)), fwhm=3.0)
    with pytest.raises(ValueError, match="threshold array"):
        finder(np.zeros((30, 30)))
    with pytest.raises(ValueError, match="mask"):
        IRAFStarFinder(threshold=1.0, fwhm=3.0)(np.zeros((30, 30)), mask=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2D"):
        IRAFStarFinder(threshold=1.0, fwhm=3.0)(np.zeros(30))
    with pytest.raises(ValueError, match="ratio"):
        DAOStarFinder(threshold=1.0, fwhm=3.0, ratio=1.5)
    with pytest.raises(TypeError, match="positional arguments"):
        IRAFStarFinder(1.0, 3.0, *range(12))


def test_positional_options_work_with_photutils_deprecation_warning():
    from astropy.utils.exceptions import AstropyDeprecationWarning

    data = np.zeros((40, 40))
    data[18:21, 18:21] = 50.0
    data[19, 19] = 80.0
    with pytest.warns(AstropyDeprecationWarning, match="'sigma_radius' positionally"):
        positional = IRAFStarFinder(6.0, 3.0, 2.0)(data)
    keyword = IRAFStarFinder(threshold=6.0, fwhm=3.0, sigma_radius=2.0)(data)
    assert np.all(positional.as_array() == keyword.as_array())
    with pytest.warns(AstropyDeprecationWarning, match="'ratio' and 'theta' positionally"):
        finder = DAOStarFinder(6.0, 3.0, 0.8, 30.0)
    assert (finder.ratio, finder.theta) == (0.8, 30.0)
    with pytest.raises(TypeError, match="multiple values"):
        DAOStarFinder(6.0, 3.0, 0.8, ratio=0.5)


def test_public_exports():
    assert crowdphot.IRAFStarFinder is IRAFStarFinder
    assert crowdphot.DAOStarFinder is DAOStarFinder
    assert "DAOStarFinder" in repr(DAOStarFinder(threshold=1.0, fwhm=2.0))


def test_notebook_scene_same_stars_as_photutils():
    """The notebook's scene: 500 stars of the built-in grid, threshold 6, fwhm 3."""
    import photutils.detection as pdet

    from crowdphot import jwst_like_psf_grid, make_noise_image, make_psf_model_image

    data, truth = make_psf_model_image((2048, 2048), jwst_like_psf_grid(), 500,
                                       flux=(500, 20_000), min_separation=25, seed=0)
    data = data + make_noise_image(data.shape, mean=0, stddev=0.5, seed=0)
    ours = IRAFStarFinder(threshold=6.0, fwhm=3.0)(data)
    theirs = pdet.IRAFStarFinder(threshold=6.0, fwhm=3.0)(data)
    assert len(ours) == len(truth) == 500
    assert_tables_match(ours, theirs)
    assert_tables_match(DAOStarFinder(threshold=6.0, fwhm=3.0)(data),
                        pdet.DAOStarFinder(threshold=6.0, fwhm=3.0)(data))
