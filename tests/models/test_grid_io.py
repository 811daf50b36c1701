"""PSF grid readers (STPSF/WebbPSF and STDPSF) against photutils' readers on the same files."""

from itertools import product

import matplotlib
import numpy as np
import pytest
from astropy.io import fits
from photutils.psf import GriddedPSFModel as PhotutilsGriddedPSFModel

from crowdphot import GriddedPSFModel, STDPSFGrid
from crowdphot.models.gridded import read_psf_grid, read_stdpsf, read_stpsf

matplotlib.use("Agg")


def _epsfs(n, shape=(21, 19), oversampling=4):
    """``n`` elliptical Gaussian ePSFs of slowly varying width and orientation."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dx = xx - (shape[1] - 1) / 2
    dy = yy - (shape[0] - 1) / 2
    out = []
    for i in range(n):
        th = 0.2 * i
        u, v = np.cos(th) * dx + np.sin(th) * dy, -np.sin(th) * dx + np.cos(th) * dy
        img = np.exp(-0.5 * ((u / (2.5 + 0.1 * i)) ** 2 + (v / (2.0 + 0.05 * i)) ** 2))
        out.append(img / img.sum() * oversampling**2 * 0.97)  # not normalised to exactly 1
    return np.array(out, dtype=np.float32)


def _write_stpsf(path, xgrid=(0, 1023, 2047), ygrid=(0, 1023, 2047), oversamp=4, extra=None,
                 data=None):
    xy = list(product(xgrid, ygrid))  # STPSF order: x outer, y inner
    data = _epsfs(len(xy), oversampling=oversamp) if data is None else data
    hdr = fits.Header()
    hdr["INSTRUME"] = ("NIRCam", "Instrument")
    hdr["DETECTOR"] = "NRCA1"
    hdr["FILTER"] = "F200W"
    hdr["OVERSAMP"] = (oversamp, "Oversampling factor")
    for i, (x, y) in enumerate(xy):
        hdr[f"DET_YX{i}"] = (str((float(x), float(y))), "detector position of this ePSF")
    for key, val in (extra or {}).items():
        hdr[key] = val
    hdr["HISTORY"] = "written by the crowdphot tests"
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    return path


def _write_stdpsf(path, nx=3, ny=2, packed=False, data=None, shape=(21, 19)):
    data = _epsfs(nx * ny, shape=shape) if data is None else data
    hdr = fits.Header()
    hdr["NXPSFS"] = nx
    hdr["NYPSFS"] = ny
    xs = np.linspace(1, 4096, nx).astype(int)
    ys = np.linspace(1, 2048 * (2 if ny >= 4 else 1), ny).astype(int)
    if packed:
        chunks = np.array_split(xs, 4)
        for key, c in zip(("IPSFXA5", "IPSFXB5", "IPSFXC5", "IPSFXD5"), chunks, strict=True):
            hdr[key] = " ".join(str(v) for v in c)
        for key, c in zip(("JPSFYA5", "JPSFYB5"), np.array_split(ys, 2), strict=True):
            hdr[key] = " ".join(str(v) for v in c)
    else:
        for i, v in enumerate(xs, 1):
            hdr[f"IPSFX{i:02d}"] = int(v)
        for i, v in enumerate(ys, 1):
            hdr[f"JPSFY{i:02d}"] = int(v)
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    return path


def _same_model(ours, ref, rng, atol=1e-12):
    np.testing.assert_array_equal(ours.data, ref.data)
    assert ours.data.dtype == ref.data.dtype  # no renormalisation or recasting
    np.testing.assert_array_equal(ours.grid_xypos, ref.grid_xypos)
    np.testing.assert_array_equal(ours.oversampling, ref.oversampling)
    for x0, y0 in [(3.3, 7.9), (700.2, 1500.6), (1023.0, 1023.0), (5000.0, -40.0)]:
        ours.x_0 = ref.x_0 = x0
        ours.y_0 = ref.y_0 = y0
        x = x0 + rng.uniform(-3, 3, 200)
        y = y0 + rng.uniform(-3, 3, 200)
        expect = ref(x, y)
        np.testing.assert_allclose(ours(x, y), expect, rtol=0, atol=atol * expect.max())


@pytest.mark.parametrize("fmt", [None, "stpsf", "webbpsf", "STPSF"])
def test_stpsf_matches_photutils(tmp_path, rng, fmt):
    path = _write_stpsf(tmp_path / "nircam_nrca1_f200w_fovp5_samp4_npsf9.fits")
    ours = GriddedPSFModel.read(path, format=fmt)
    ref = PhotutilsGriddedPSFModel.read(str(path), format="webbpsf")
    _same_model(ours, ref, rng)
    assert ours.meta["grid_shape"] == (3, 3)
    assert ours.meta["oversampling"] == 4 and ours.meta["instrume"] == "NIRCam"
    assert ours.meta["detector"] == "NRCA1" and ours.meta["filter"] == "F200W"
    common = set(ref.meta) - {"history", "comment"}
    assert {k: ours.meta[k] for k in common} == {k: ref.meta[k] for k in common}


def test_stpsf_keeps_unnormalised_data_and_rectangular_grids(tmp_path, rng):
    path = _write_stpsf(tmp_path / "grid.fits", xgrid=(10, 500), ygrid=(20, 300, 900, 2000),
                        oversamp=2)
    ours = read_stpsf(path)
    ref = PhotutilsGriddedPSFModel.read(str(path), format="webbpsf")
    _same_model(ours, ref, rng)
    assert ours.meta["grid_shape"] == (4, 2)
    np.testing.assert_allclose(ours.data.sum(axis=(1, 2)), 0.97 * 4, rtol=1e-5)


def test_stpsf_single_epsf(tmp_path, rng):
    data = _epsfs(1)
    hdr = fits.Header({"OVERSAMP": 4, "DET_YX0": "(1024.0, 1024.0)"})
    path = tmp_path / "one.fits"
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    model = GriddedPSFModel.read(path)
    assert model.data.shape == (1, 21, 19)
    # a 2D primary array (photutils fails on it) is read as a single ePSF
    path2 = tmp_path / "one2d.fits"
    fits.PrimaryHDU(data[0], header=hdr).writeto(path2)
    model2 = GriddedPSFModel.read(path2)
    x = rng.uniform(-2, 2, 50)
    np.testing.assert_array_equal(model2(x, x[::-1]), model(x, x[::-1]))


@pytest.mark.parametrize("packed", [False, True])
def test_stdpsf_matches_photutils(tmp_path, rng, packed):
    nx, ny = (7, 4) if not packed else (10, 4)  # not a multi-detector count (36, 56, ...)
    path = _write_stdpsf(tmp_path / "STDPSF_WFC3IR_F160W.fits", nx=nx, ny=ny, packed=packed)
    ours = GriddedPSFModel.read(path)  # format detected from NXPSFS/NYPSFS
    ref = PhotutilsGriddedPSFModel.read(str(path), format="stdpsf")
    _same_model(ours, ref, rng)
    assert ours.meta == ref.meta
    assert ours.meta["detector"] == "WFC3IR" and ours.meta["filter"] == "F160W"
    assert ours.grid_xypos[0].tolist() == [0, 0]  # 1-based positions in the file


@pytest.mark.parametrize(("nx", "ny", "detector", "ids"), [
    (9, 10, "ACSWFC", (1, 2)),
    (6, 6, "WFPC2", (1, 2, 3, 4)),
    (20, 10, "NRCSW", (1, 4, 6, 7)),
])
def test_stdpsf_multi_detector_matches_photutils(tmp_path, rng, nx, ny, detector, ids):
    data = _epsfs(nx * ny, shape=(5, 5))
    path = tmp_path / f"STDPSF_{detector}_F814W.fits"
    hdr = fits.Header({"NXPSFS": nx, "NYPSFS": ny})
    size = {"ACSWFC": 4096, "WFPC2": 800, "NRCSW": 2048}[detector]
    ndx = nx // {"ACSWFC": 9, "WFPC2": 3, "NRCSW": 5}[detector]
    ndy = 2
    xs = [int(d * size + v) for d in range(ndx) for v in np.linspace(1, size, nx // ndx)]
    ysize = 2048 if detector == "ACSWFC" else size
    ys = [int(d * ysize + v) for d in range(ndy) for v in np.linspace(1, ysize, ny // ndy)]
    for i, v in enumerate(xs, 1):
        hdr[f"IPSFX{i:02d}"] = v
    for i, v in enumerate(ys, 1):
        hdr[f"JPSFY{i:02d}"] = v
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    for det in ids:
        ours = GriddedPSFModel.read(path, detector_id=det)
        ref = PhotutilsGriddedPSFModel.read(str(path), format="stdpsf", detector_id=det)
        np.testing.assert_array_equal(ours.data, ref.data)
        np.testing.assert_array_equal(ours.grid_xypos, ref.grid_xypos)
        assert ours.meta == ref.meta
    with pytest.raises(ValueError, match="detector_id must be"):
        read_stdpsf(path)


def test_stdpsf_grid_and_plot(tmp_path):
    import matplotlib.pyplot as plt

    path = _write_stdpsf(tmp_path / "STDPSF_NRCA1_F200W.fits", nx=3, ny=2)
    grid = STDPSFGrid(path)
    assert grid.data.shape == (6, 21, 19)
    assert grid.meta["grid_shape"] == (2, 3)
    assert grid.grid_xypos[1] == (2047, 0)
    np.testing.assert_array_equal(grid.oversampling, [4, 4])
    text = repr(grid)
    assert "Number of PSFs: 6" in text and "Detector: NRCA1" in text
    fig = grid.plot_grid()
    try:
        assert fig.axes[0].get_images()[0].get_array().shape == (2 * 21, 3 * 19)
        assert fig.axes[0].get_title() == "NRCA1 F200W ePSFs"
    finally:
        plt.close(fig)


def test_read_psf_grid_model_class(tmp_path):
    class MyGrid(GriddedPSFModel):
        pass

    path = _write_stpsf(tmp_path / "g.fits")
    assert type(MyGrid.read(path)) is MyGrid
    assert type(read_psf_grid(path, model_class=MyGrid)) is MyGrid


def _stpsf_variant(tmp_path, kind):
    path = tmp_path / f"{kind}.fits"
    data = _epsfs(4)
    hdr = fits.Header({"OVERSAMP": 4})
    for i, (x, y) in enumerate(product((0, 100), (0, 100))):
        hdr[f"DET_YX{i}"] = str((float(x), float(y)))
    if kind == "no_detyx":
        for i in range(4):
            del hdr[f"DET_YX{i}"]
        hdr["TELESCOP"] = "JWST"  # keep the header non-trivial
        fits.PrimaryHDU(data, header=hdr).writeto(path)
        return path, "stpsf"
    if kind == "no_oversamp":
        del hdr["OVERSAMP"]
    elif kind == "count":
        del hdr["DET_YX3"]
    elif kind == "numbering":
        hdr["DET_YX7"] = hdr.pop("DET_YX3")
    elif kind == "unparsable":
        hdr["DET_YX2"] = "(12.0)"
    elif kind == "nan":
        data[1, 3, 3] = np.nan
    elif kind == "ndim":
        data = data[None]
    fits.PrimaryHDU(data, header=hdr).writeto(path)
    return path, None


@pytest.mark.parametrize(("kind", "match"), [
    ("no_detyx", "missing the DET_YX"),
    ("no_oversamp", "missing the OVERSAMP"),
    ("count", "3 DET_YX keys for 4 ePSFs"),
    ("numbering", "numbered 0..3"),
    ("unparsable", "cannot parse DET_YX2"),
    ("nan", "NaN or inf"),
    ("ndim", "2D or 3D array"),
])
def test_stpsf_errors(tmp_path, kind, match):
    path, fmt = _stpsf_variant(tmp_path, kind)
    with pytest.raises(ValueError, match=match):
        GriddedPSFModel.read(path, format=fmt or "stpsf")


@pytest.mark.parametrize(("kind", "match"), [
    ("missing", "missing header key\\(s\\) \\['NXPSFS'\\]"),
    ("positions", "missing the IPSFX01/JPSFY01"),
    ("short", "missing position key"),
    ("count", "does not match the 6 ePSFs"),
    ("nan", "NaN or inf"),
])
def test_stdpsf_errors(tmp_path, kind, match):
    path = _write_stdpsf(tmp_path / "s.fits", nx=3, ny=2)
    with fits.open(path, mode="update") as hdul:
        hdr = hdul[0].header
        if kind == "missing":
            del hdr["NXPSFS"]
        elif kind == "positions":
            del hdr["IPSFX01"]
        elif kind == "short":
            del hdr["JPSFY02"]
        elif kind == "count":
            hdr["NYPSFS"] = 3
            hdr["JPSFY03"] = 4000
        elif kind == "nan":
            hdul[0].data[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=match):
        GriddedPSFModel.read(path, format="stdpsf")


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="is not an existing file"):
        GriddedPSFModel.read(tmp_path / "missing.fits")
    with pytest.raises(ValueError, match="is not an existing file"):
        GriddedPSFModel.read(tmp_path)  # a directory
    junk = tmp_path / "junk.fits"
    junk.write_text("this is not FITS")
    with pytest.raises(ValueError, match="not a readable FITS file"):
        GriddedPSFModel.read(junk)
    empty = tmp_path / "empty.fits"
    fits.PrimaryHDU().writeto(empty)
    with pytest.raises(ValueError, match="no data in its primary HDU"):
        GriddedPSFModel.read(empty)
    plain = tmp_path / "plain.fits"
    fits.PrimaryHDU(np.ones((4, 5, 5))).writeto(plain)
    with pytest.raises(ValueError, match="cannot identify the PSF grid format"):
        GriddedPSFModel.read(plain)
    with pytest.raises(ValueError, match="format must be one of"):
        GriddedPSFModel.read(plain, format="hdf5")
    with pytest.raises(TypeError, match="filename must be a path"):
        GriddedPSFModel.read(3.5)
    with pytest.raises(TypeError, match="STPSF reader takes no options"):
        GriddedPSFModel.read(plain, format="stpsf", detector_id=1)


def test_photutils_named_readers(tmp_path):
    from crowdphot.models.gridded import stdpsf_reader, webbpsf_reader

    stp = _write_stpsf(tmp_path / "a.fits")
    std = _write_stdpsf(tmp_path / "STDPSF_NIRISS_F150W.fits", nx=3, ny=2)
    np.testing.assert_array_equal(webbpsf_reader(stp).data, GriddedPSFModel.read(stp).data)
    assert stdpsf_reader(std).meta["detector"] == "NIRISS"
