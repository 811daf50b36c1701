"""The built-in JWST-like PSF grid: physics targets, STPSF file format, cache behaviour."""

import os
import time

import numpy as np
import pytest
from astropy.io import fits
from scipy.optimize import curve_fit

from crowdphot.core import optics
from crowdphot.datasets import jwst as datasets

OS = 4
PIXSCALE = 0.031  # arcsec, NIRCam short wave


@pytest.fixture(scope="session")
def default_grid(tmp_path_factory):
    """The notebook's grid (F200W, NRCA1, 16 PSFs, 101 px, oversampling 4), computed once."""
    cache = tmp_path_factory.mktemp("psf_cache")
    start = time.perf_counter()
    path = datasets.jwst_like_psf_grid_path(cache_dir=cache)
    seconds = time.perf_counter() - start
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
        data = np.array(hdul[0].data, dtype=float)
    return {"path": path, "cache": cache, "header": header, "data": data, "seconds": seconds}


@pytest.fixture(scope="module")
def small_grid_file(tmp_path_factory):
    """A quick 2 x 2 grid file, for format and orientation checks."""
    path = tmp_path_factory.mktemp("small") / "small.fits"
    datasets.write_jwst_like_psf_grid(path, num_psfs=4, fov_pixels=15, oversampling=2)
    return path


def _header_xy(header):
    return np.array([[float(v) for v in header[f"DET_YX{i}"].strip("()").split(",")]
                     for i in range(header["NUM_PSFS"])])


def _radial_fwhm(epsf, oversampling):
    """Half-maximum diameter (detector pixels) of the azimuthally averaged ePSF."""
    c = (epsf.shape[0] - 1) / 2
    yy, xx = np.indices(epsf.shape)
    r = (np.hypot(yy - c, xx - c) / oversampling).ravel()
    edges = np.arange(0.0, 3.0, 0.125)
    idx = np.digitize(r, edges)
    bins = [k for k in range(1, len(edges)) if np.any(idx == k)]
    prof = np.array([epsf.ravel()[idx == k].mean() for k in bins])
    rad = np.array([r[idx == k].mean() for k in bins])
    half = epsf.max() / 2
    i = int(np.argmax(prof < half))
    return 2 * np.interp(half, prof[i - 1:i + 1][::-1], rad[i - 1:i + 1][::-1])


def _gaussian_fit_fwhm(epsf, oversampling):
    """FWHM (detector pixels) of a 2D Gaussian fitted to the detector-sampled 9 x 9 core."""
    c = epsf.shape[0] // 2
    start = c % oversampling
    image = epsf[start::oversampling, start::oversampling]
    k = image.shape[0] // 2
    core = image[k - 4:k + 5, k - 4:k + 5]
    yy, xx = np.indices(core.shape)

    def gauss(xy, amp, x0, y0, sigma, back):
        x, y = xy
        return amp * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2)) + back

    p, _ = curve_fit(gauss, (xx.ravel(), yy.ravel()), core.ravel(),
                     p0=(core.max(), 4.0, 4.0, 1.0, 0.0))
    return 2 * np.sqrt(2 * np.log(2)) * abs(p[3])


# -- physics targets on the notebook's grid ---------------------------------------------------
def test_default_grid_layout(default_grid):
    data, header = default_grid["data"], default_grid["header"]
    assert data.shape == (16, 404, 404)
    assert np.all(np.isfinite(data)) and np.all(data >= 0)
    assert os.path.basename(default_grid["path"]) == (
        f"nircam_nrca1_f200w_fovp101_samp4_npsf16_crowdphot-v{optics.OPTICS_MODEL_VERSION}.fits"
    )
    assert header["FILTER"] == "F200W" and header["DETECTOR"] == "NRCA1"
    assert header["OVERSAMP"] == 4 and header["DET_SAMP"] == 4 and header["FOVPIXEL"] == 101
    assert header["NUM_PSFS"] == 16 and 9 <= header["NWAVES"] <= 15
    assert header["FOV"] == pytest.approx(101 * PIXSCALE)
    # only the STPSF flavour: the STDPSF keys would make photutils' format detection ambiguous
    assert "NXPSFS" not in header and "NYPSFS" not in header
    xy = _header_xy(header)
    np.testing.assert_array_equal(xy, datasets.grid_positions(16))


def test_default_grid_normalisation(default_grid):
    sums = default_grid["data"].sum(axis=(1, 2))
    # oversampling^2 times the light inside the 3.1" field of view
    assert np.all(sums < OS**2)
    assert np.all(sums > 0.9 * OS**2)
    np.testing.assert_allclose(sums, sums.mean(), rtol=1e-3)


def test_default_grid_fwhm_matches_nircam_f200w(default_grid):
    target = 0.066 / PIXSCALE  # 2.13 px, NIRCam F200W
    for epsf in default_grid["data"][[0, 5, 15]]:
        assert _gaussian_fit_fwhm(epsf, OS) == pytest.approx(target, rel=0.10)
        assert _radial_fwhm(epsf, OS) == pytest.approx(target, rel=0.10)


def test_default_grid_encircled_energy(default_grid):
    epsf = default_grid["data"][5]
    c = (epsf.shape[0] - 1) / 2
    yy, xx = np.indices(epsf.shape)
    r_arcsec = np.hypot(yy - c, xx - c) / OS * PIXSCALE
    ee = {r: epsf[r_arcsec < r].sum() / OS**2 for r in (0.1, 0.2, 0.5)}
    assert 0.6 < ee[0.1] < 0.8
    assert ee[0.1] < ee[0.2] < ee[0.5]
    assert ee[0.5] > 0.9


def test_default_grid_is_centred(default_grid):
    yy, xx = np.indices(default_grid["data"].shape[1:])
    c = (default_grid["data"].shape[1] - 1) / 2
    for epsf in default_grid["data"]:
        cx = (epsf * xx).sum() / epsf.sum() - c
        cy = (epsf * yy).sum() / epsf.sum() - c
        assert np.hypot(cx, cy) / OS < 0.03  # detector pixels
        py, px = np.unravel_index(np.argmax(epsf), epsf.shape)
        assert abs(py - c) <= 1.5 and abs(px - c) <= 1.5


def test_default_grid_varies_smoothly_over_the_field(default_grid):
    data = default_grid["data"]
    peak = data.max()
    spread = np.abs(data - data.mean(axis=0)).max() / peak
    assert 1e-3 < spread < 0.05
    # neighbours on the grid differ less than opposite corners (smooth field dependence)
    near = np.abs(data[0] - data[1]).max()
    far = np.abs(data[0] - data[15]).max()
    assert 0 < near < far


def test_default_grid_photutils_oracle_reads_it(default_grid):
    from photutils.psf import GriddedPSFModel

    model = GriddedPSFModel.read(default_grid["path"])
    assert model.data.shape == (16, 404, 404)
    np.testing.assert_array_equal(model.oversampling, [4, 4])
    np.testing.assert_array_equal(model.grid_xypos, datasets.grid_positions(16))
    np.testing.assert_array_equal(model.data, default_grid["data"])
    assert model.meta["filter"] == "F200W" and model.meta["detector"] == "NRCA1"
    # a star of flux 1000 at a grid node: pixel values sum to 1000 x the ePSF's share there
    yy, xx = np.mgrid[-20:21, -20:21]
    img = model.evaluate(xx + 2047.0, yy + 1365.0, 1000.0, 2047.0, 1365.0)
    offsets = (np.arange(404) - 201.5) / OS
    inside = np.abs(offsets) < 20.5
    share = default_grid["data"][7][np.ix_(inside, inside)].sum() / OS**2
    assert img.sum() == pytest.approx(1000 * share, rel=2e-3)


# -- file format and orientation -----------------------------------------------------------
def test_file_orientation_matches_the_computed_psfs(small_grid_file):
    from photutils.psf import GriddedPSFModel

    model = GriddedPSFModel.read(small_grid_file)
    corner = optics.jwst_like_epsf("F200W", "NRCA1", 2047, 0, fov_pixels=15, oversampling=2)
    other = optics.jwst_like_epsf("F200W", "NRCA1", 0, 2047, fov_pixels=15, oversampling=2)
    k = [tuple(p) for p in model.grid_xypos.tolist()].index((2047.0, 0.0))
    np.testing.assert_array_equal(model.data[k], corner)
    assert np.abs(model.data[k] - other).max() > 1e-3 * corner.max()
    # evaluating photutils' model at that node reproduces the stored ePSF samples
    c = (corner.shape[0] - 1) / 2
    x = 2047.0 + (np.arange(corner.shape[1]) - c) / 2
    y = np.full_like(x, (15 - c) / 2)
    values = model.evaluate(x, y, 1.0, 2047.0, 0.0)
    np.testing.assert_allclose(values, corner[15], rtol=1e-6, atol=1e-9 * corner.max())


def test_crowdphot_model_reads_the_grid(default_grid):
    pytest.importorskip("crowdphot.models.gridded")
    pytest.importorskip("crowdphot.models.grid_io")
    from photutils.psf import GriddedPSFModel as PhotutilsGrid

    from crowdphot.models.gridded import GriddedPSFModel

    ours = datasets.jwst_like_psf_grid(cache_dir=default_grid["cache"])
    assert isinstance(ours, GriddedPSFModel)
    ref = PhotutilsGrid.read(default_grid["path"])
    np.testing.assert_array_equal(ours.data, ref.data)
    np.testing.assert_array_equal(ours.grid_xypos, ref.grid_xypos)
    yy, xx = np.mgrid[0:21, 0:21]
    args = (xx + 990.3, yy + 470.6, 500.0, 1000.4, 480.9)
    np.testing.assert_allclose(ours.evaluate(*args), ref.evaluate(*args), rtol=1e-6,
                               atol=1e-9 * 500)


def test_in_memory_grid_matches_the_file(small_grid_file):
    data, xy, meta = datasets.jwst_like_epsf_grid("F200W", "NRCA1", 4, 15, 2)
    with fits.open(small_grid_file) as hdul:
        np.testing.assert_array_equal(hdul[0].data, data)
        np.testing.assert_array_equal(_header_xy(hdul[0].header), xy)
    assert meta["filter"] == "F200W" and meta["detector"] == "NRCA1"
    assert meta["pixelscale"] == 0.031 and meta["nwaves"] == 9
    assert meta["version"] == optics.OPTICS_MODEL_VERSION
    assert 1.9e-6 < meta["wavelength"] < 2.1e-6 and 20 < meta["wfe_nm"] < 80


def test_grid_positions_match_stpsf_layout():
    xy = datasets.grid_positions(16)
    assert sorted(set(xy[:, 0])) == [0.0, 682.0, 1365.0, 2047.0]
    # sorted by y then x, like photutils' GriddedPSFModel stores them
    assert np.all(np.diff(xy[:, 1] * 10000 + xy[:, 0]) > 0)
    assert datasets.grid_positions(1).tolist() == [[1024.0, 1024.0]]
    with pytest.raises(ValueError, match="num_psfs must be a perfect square"):
        datasets.grid_positions(8)


def test_written_file_is_deterministic_and_not_overwritten(small_grid_file, tmp_path):
    again = tmp_path / "again.fits"
    out = datasets.write_jwst_like_psf_grid(again, num_psfs=4, fov_pixels=15, oversampling=2)
    assert out == os.fspath(again)
    assert again.read_bytes() == small_grid_file.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.fits"]  # no temp leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert again.stat().st_mode & 0o777 == 0o666 & ~umask  # a shared cache stays readable
    with pytest.raises(FileExistsError, match="overwrite=True"):
        datasets.write_jwst_like_psf_grid(again, num_psfs=4, fov_pixels=15, oversampling=2)
    datasets.write_jwst_like_psf_grid(again, num_psfs=1, fov_pixels=5, oversampling=1,
                                      overwrite=True)
    assert fits.getheader(again)["NUM_PSFS"] == 1


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", boom)
    with pytest.raises(OSError, match="disk full"):
        datasets.write_jwst_like_psf_grid(tmp_path / "x.fits", num_psfs=1, fov_pixels=5,
                                          oversampling=1)
    assert list(tmp_path.iterdir()) == []


def test_long_wave_grid(tmp_path):
    path = datasets.write_jwst_like_psf_grid(tmp_path / "lw.fits", filter="F444W",
                                             detector="NRCBLONG", num_psfs=1, fov_pixels=21,
                                             oversampling=2)
    header = fits.getheader(path)
    data = fits.getdata(path)
    assert header["DETECTOR"] == "NRCB5" and header["PIXELSCL"] == 0.063
    assert header["DET_YX0"] == "(1024.0, 1024.0)"
    assert data.shape == (1, 42, 42)
    # F444W: lambda / D = 0.14" = 2.2 px at 0.063"/px; the ePSF core is a little wider
    assert 2.0 < _radial_fwhm(data[0], 2) < 3.0


# -- cache -------------------------------------------------------------------------------------
def test_cache_is_reused(default_grid, monkeypatch):
    mtime = os.stat(default_grid["path"]).st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the grid was recomputed")

    monkeypatch.setattr(datasets, "jwst_like_epsf_grid", fail)
    start = time.perf_counter()
    path = datasets.jwst_like_psf_grid_path("F200W", "NRCA1", 16, 101, 4,
                                            cache_dir=default_grid["cache"])
    assert time.perf_counter() - start < 2.0
    assert path == default_grid["path"]
    assert os.stat(path).st_mtime_ns == mtime


def test_stale_or_broken_cache_file_is_replaced(tmp_path):
    path = datasets.jwst_like_psf_grid_path(num_psfs=1, fov_pixels=5, oversampling=1,
                                            cache_dir=tmp_path, create=False)
    with open(path, "wb") as fh:
        fh.write(b"not a FITS file")
    assert datasets.jwst_like_psf_grid_path(num_psfs=1, fov_pixels=5, oversampling=1,
                                            cache_dir=tmp_path) == path
    assert fits.getheader(path)["CPOPTVER"] == optics.OPTICS_MODEL_VERSION
    # a file from another optics model version is recomputed too
    fits.setval(path, "CPOPTVER", value=-1)
    datasets.jwst_like_psf_grid_path(num_psfs=1, fov_pixels=5, oversampling=1,
                                     cache_dir=tmp_path)
    assert fits.getheader(path)["CPOPTVER"] == optics.OPTICS_MODEL_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == [os.path.basename(path)]


def test_cache_directory_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("CROWDPHOT_CACHE_DIR", raising=False)
    assert datasets.default_cache_dir() == datasets.Path("~/.cache/crowdphot").expanduser()
    monkeypatch.setenv("CROWDPHOT_CACHE_DIR", str(tmp_path / "env"))
    assert datasets.default_cache_dir() == tmp_path / "env"
    p = datasets.jwst_like_psf_grid_path(create=False)
    assert os.path.dirname(p) == str(tmp_path / "env")
    assert not os.path.exists(p)
    q = datasets.jwst_like_psf_grid_path(cache_dir=tmp_path / "arg", create=False)
    assert os.path.dirname(q) == str(tmp_path / "arg")
    # the file name carries every parameter and the optics model version
    name = os.path.basename(datasets.jwst_like_psf_grid_path(
        "f150w", "nrcb3", 9, 51, 2, cache_dir=tmp_path, create=False))
    assert name == (
        f"nircam_nrcb3_f150w_fovp51_samp2_npsf9_crowdphot-v{optics.OPTICS_MODEL_VERSION}.fits"
    )


# -- argument validation -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(filter="F999W"), ValueError, "unknown filter 'F999W'"),
        (dict(detector="NRCA9"), ValueError, "unknown detector 'NRCA9'"),
        (dict(detector="NRCA5"), ValueError, "cannot observe filter F200W"),
        (dict(filter="F444W"), ValueError, "cannot observe filter F444W"),
        (dict(num_psfs=8), ValueError, "num_psfs must be a perfect square"),
        (dict(num_psfs=0), ValueError, "num_psfs must be >= 1"),
        (dict(num_psfs=4.0), TypeError, "num_psfs must be an integer"),
        (dict(fov_pixels=100), ValueError, "fov_pixels must be odd"),
        (dict(fov_pixels=-1), ValueError, "fov_pixels must be >= 5"),
        (dict(oversampling=0), ValueError, "oversampling must be >= 1"),
        (dict(cache_dir=5), TypeError, "cache_dir must be a str"),
    ],
)
def test_grid_path_argument_errors(kwargs, exc, match, tmp_path):
    kwargs.setdefault("cache_dir", tmp_path)
    with pytest.raises(exc, match=match):
        datasets.jwst_like_psf_grid_path(create=False, **kwargs)


def test_write_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="path must be a str"):
        datasets.write_jwst_like_psf_grid(5)
    with pytest.raises(ValueError, match="unknown filter"):
        datasets.write_jwst_like_psf_grid(tmp_path / "x.fits", filter="F1W")
    with pytest.raises(ValueError, match="fov_pixels must be odd"):
        datasets.jwst_like_psf_grid(fov_pixels=12, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
