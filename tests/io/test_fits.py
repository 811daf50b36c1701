"""FITS reading (JWST-style SCI/ERR/DQ and plain), DQ masking and atomic writes."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from crowdphot.io.fits import (
    JWST_DQ_FLAGS,
    FitsPlanes,
    dq_to_mask,
    read_image,
    write_fits_image,
    write_table,
)


def _jwst_file(path, rng, *, with_wcs=True):
    sci = rng.normal(10, 1, (40, 50))
    err = np.full_like(sci, 1.0)
    dq = np.zeros(sci.shape, dtype=np.uint32)
    dq[3, 4] = JWST_DQ_FLAGS["DO_NOT_USE"]
    dq[5, 6] = JWST_DQ_FLAGS["SATURATED"] | JWST_DQ_FLAGS["HOT"]
    dq[7, 8] = JWST_DQ_FLAGS["HOT"]  # not masked by default
    sci[9, 10] = np.nan
    err[11, 12] = 0.0
    hdr = fits.Header()
    if with_wcs:
        hdr.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.0,
                    "CRVAL2": 2.0, "CRPIX1": 25.0, "CRPIX2": 20.0, "CDELT1": -8.6e-6,
                    "CDELT2": 8.6e-6, "CUNIT1": "deg", "CUNIT2": "deg"})
    hdr["BUNIT"] = "MJy/sr"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, hdr, name="SCI"),
                  fits.ImageHDU(err, name="ERR"), fits.ImageHDU(dq, name="DQ")]).writeto(path)
    return sci, err, dq


def test_read_jwst_style_masks_dq_nan_and_bad_errors(tmp_path, rng):
    path = tmp_path / "cal.fits"
    sci, err, dq = _jwst_file(path, rng)
    img = read_image(path)
    assert img.data.shape == sci.shape
    for yx in [(3, 4), (5, 6), (9, 10), (11, 12)]:
        assert img.mask[yx], yx
    assert not img.mask[7, 8]
    assert np.all(np.isfinite(img.data)) and np.all(img.error > 0)
    good = ~img.mask
    np.testing.assert_array_equal(img.data[good], sci[good])
    assert img.unit == "MJy/sr"
    assert img.wcs is not None and img.wcs.has_celestial


def test_read_plain_single_hdu(tmp_path, rng):
    path = tmp_path / "plain.fits"
    data = rng.normal(size=(8, 9))
    fits.PrimaryHDU(data).writeto(path)
    img = read_image(path)
    np.testing.assert_array_equal(img.data, data)
    assert img.error is None and img.mask is None and img.wcs is None


def test_read_errors_name_the_problem(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_image(tmp_path / "missing.fits")
    bad = tmp_path / "bad.fits"
    bad.write_text("not fits at all")
    with pytest.raises(ValueError, match="not a readable FITS file"):
        read_image(bad)
    path = tmp_path / "cal.fits"
    _jwst_file(path, rng)
    with pytest.raises(ValueError, match="no extension 'NOPE'"):
        read_image(path, err_ext="NOPE")
    with pytest.raises(ValueError, match="unknown DQ flag name"):
        read_image(path, dq_bits=["NOT_A_FLAG"])


def test_dq_to_mask_bits_and_ints():
    dq = np.array([0, 1, 2, 4, 2048])
    assert dq_to_mask(dq, ["DO_NOT_USE", "JUMP_DET"]).tolist() == [0, 1, 0, 1, 0]
    assert dq_to_mask(dq, 2048).tolist() == [0, 0, 0, 0, 1]


def test_fits_planes_cut_equals_full_read(tmp_path, rng):
    path = tmp_path / "cal.fits"
    _jwst_file(path, rng)
    full = read_image(path)
    planes = FitsPlanes(path)
    assert planes.shape == full.data.shape
    data, error, mask = planes.cut(2, 20, 3, 30)
    np.testing.assert_array_equal(data, full.data[2:20, 3:30])
    np.testing.assert_array_equal(error, full.error[2:20, 3:30])
    np.testing.assert_array_equal(mask, full.mask[2:20, 3:30])


@pytest.mark.parametrize("ext", [".ecsv", ".fits", ".csv"])
def test_write_table_formats_round_trip(tmp_path, ext):
    t = QTable({"id": [1, 2], "flux_fit": [1.5, 2.5]})
    path = tmp_path / f"cat{ext}"
    write_table(t, path)
    back = QTable.read(path)
    np.testing.assert_allclose(back["flux_fit"], t["flux_fit"])
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_write_table_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="unsupported catalog extension"):
        write_table(QTable({"a": [1]}), tmp_path / "cat.xyz")


def test_write_fits_image_atomic(tmp_path):
    path = tmp_path / "img.fits"
    write_fits_image(np.ones((3, 4)), path)
    assert fits.getdata(path).shape == (3, 4)


def test_table_format_from_extension():
    from crowdphot.io.fits import table_format

    assert table_format("a/b/cat.fits.gz") == "fits"
    assert table_format("CAT.ECSV") == "ascii.ecsv"
    assert table_format("cat.csv") == "ascii.csv"
    with pytest.raises(ValueError, match="unsupported catalog extension '.xyz'"):
        table_format("cat.xyz")


def test_write_table_fits_keeps_non_scalar_meta_without_warnings(tmp_path):
    t = QTable({"x_fit": [1.0, 2.0]})
    t.meta.update({"fit_shape": (5, 5), "grouper": None, "aperture_radius": 4.0,
                   "psf_model": "<Model>"})
    write_table(t, tmp_path / "cat.fits")  # warnings are errors in this suite
    hdr = fits.getheader(tmp_path / "cat.fits", 1)
    assert hdr["FIT_SHAPE"] == "(5, 5)" and hdr["APERTURE_RADIUS"] == 4.0
    assert "GROUPER" not in hdr
    assert t.meta["fit_shape"] == (5, 5)  # the caller's table is unchanged


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from crowdphot.io.fits import atomic_write

    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("new but broken")
        raise RuntimeError("boom")
    assert target.read_text() == "old"  # a failed rewrite keeps the previous file


def test_write_table_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "cat.ecsv"
    write_table(QTable({"a": [1]}), path)
    with pytest.raises(TypeError, match="table must be an astropy Table"):
        write_table(object(), path)
    assert QTable.read(path)["a"][0] == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_write_fits_image_with_wcs_and_unit(tmp_path):
    import astropy.units as u
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [10.0, 20.0]
    path = tmp_path / "img.fits"
    write_fits_image(np.ones((3, 4)) * u.MJy / u.sr, path, wcs=w, extname="RESID")
    hdr = fits.getheader(path)
    assert hdr["CTYPE1"] == "RA---TAN" and hdr["BUNIT"] == "MJy / sr"
    assert hdr["EXTNAME"] == "RESID"
    with pytest.raises(ValueError, match="2D image"):
        write_fits_image(np.ones(3), tmp_path / "bad.fits")
    assert not (tmp_path / "bad.fits").exists()


def test_dq_aliases_and_wcs_from_primary(tmp_path, rng):
    assert dq_to_mask(np.array([4, 2]), ["jump"]).tolist() == [True, False]
    assert dq_to_mask(np.array([4, 2]), ["2"]).tolist() == [False, True]
    hdr = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 5.0,
                       "CRVAL2": 1.0, "CDELT1": -1e-5, "CDELT2": 1e-5})
    path = tmp_path / "x.fits"
    fits.HDUList([fits.PrimaryHDU(header=hdr),
                  fits.ImageHDU(rng.normal(size=(5, 6)), name="SCI")]).writeto(path)
    img = read_image(path)
    assert img.wcs is not None
    np.testing.assert_allclose(img.wcs.wcs.crval, [5.0, 1.0])


def test_read_rejects_non_image_extensions(tmp_path):
    path = tmp_path / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(np.ones((2, 3, 4))),
                  fits.BinTableHDU(QTable({"a": [1]}), name="TAB")]).writeto(path)
    with pytest.raises(ValueError, match="no 2D image extension found"):
        read_image(path)
    with pytest.raises(ValueError, match="'TAB' .science data. is not a 2D image"):
        read_image(path, ext="TAB")
    with pytest.raises(ValueError, match="no 2D image extension found"):
        FitsPlanes(path)


def test_written_files_get_the_usual_permissions(tmp_path):
    from crowdphot.io.fits import default_file_mode

    write_table(QTable({"a": [1]}), tmp_path / "cat.ecsv")
    write_fits_image(np.ones((2, 2)), tmp_path / "img.fits")
    for name in ("cat.ecsv", "img.fits"):
        assert (tmp_path / name).stat().st_mode & 0o777 == default_file_mode()
