"""FITS in and out: JWST-style SCI/ERR/DQ images, atomic writes of tables and images.

Readers return plain arrays plus header/WCS; nothing here knows about photometry.
"""

from __future__ import annotations

import os
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from crowdphot.io.coords import icrs_to_pixel, parse_bunit, pixel_to_icrs

__all__ = ["JWST_DQ_FLAGS", "DEFAULT_DQ_MASK", "InputError", "ImageData", "FitsPlanes",
           "clean_planes", "dq_to_mask", "parse_dq_bits", "read_image", "open_fits",
           "pixel_to_icrs", "icrs_to_pixel", "image_header_for", "table_format",
           "write_table", "write_fits_image", "atomic_path", "atomic_write",
           "default_file_mode", "plain_meta", "parse_bunit"]


class InputError(ValueError):
    """A problem with an input file or option that the user can fix (bad FITS, bad name).

    The command line prints it as one line (exit code 2); a plain ``ValueError`` raised
    elsewhere is treated as a bug and keeps its traceback.
    """

#: JWST data-quality bit names (jwst pipeline ``dqflags.pixel``): the facts of the format.
JWST_DQ_FLAGS = {
    "DO_NOT_USE": 1 << 0, "SATURATED": 1 << 1, "JUMP_DET": 1 << 2, "DROPOUT": 1 << 3,
    "OUTLIER": 1 << 4, "PERSISTENCE": 1 << 5, "AD_FLOOR": 1 << 6, "CHARGELOSS": 1 << 7,
    "UNRELIABLE_ERROR": 1 << 8, "NON_SCIENCE": 1 << 9, "DEAD": 1 << 10, "HOT": 1 << 11,
    "WARM": 1 << 12, "LOW_QE": 1 << 13, "RC": 1 << 14, "TELEGRAPH": 1 << 15,
    "NONLINEAR": 1 << 16, "BAD_REF_PIXEL": 1 << 17, "NO_FLAT_FIELD": 1 << 18,
    "NO_GAIN_VALUE": 1 << 19, "NO_LIN_CORR": 1 << 20, "NO_SAT_CHECK": 1 << 21,
    "UNRELIABLE_BIAS": 1 << 22, "UNRELIABLE_DARK": 1 << 23, "UNRELIABLE_SLOPE": 1 << 24,
    "UNRELIABLE_FLAT": 1 << 25, "OPEN": 1 << 26, "ADJ_OPEN": 1 << 27,
    "UNRELIABLE_RESET": 1 << 28, "MSA_FAILED_OPEN": 1 << 29, "OTHER_BAD_PIXEL": 1 << 30,
    "REFERENCE_PIXEL": 1 << 31,
}

#: Bits masked by default: unusable, saturated, or hit by a cosmic ray in the ramp.
DEFAULT_DQ_MASK = ("DO_NOT_USE", "SATURATED", "JUMP_DET")

#: HST (ACS, WFC3, WFPC2) data-quality bits, by the names the JWST flags use for the same
#: condition: a JWST-style ``--dq-bits`` means the same thing on an HST file.
HST_DQ_FLAGS = {
    "DO_NOT_USE": 1 | 2 | 4 | 16,  # Reed-Solomon error, fill value, bad detector pixel, hot
    "SATURATED": 256 | 2048,  # full-well and A-to-D saturation
    "JUMP_DET": 4096 | 8192,  # cosmic rays (AstroDrizzle, CR-SPLIT rejection)
    "OUTLIER": 4096,
    "HOT": 16, "WARM": 64, "DEAD": 4, "NON_SCIENCE": 2, "UNRELIABLE_FLAT": 512,
}

# short spellings people type on the command line
_DQ_ALIASES = {"JUMP": "JUMP_DET", "SAT": "SATURATED", "BAD": "DO_NOT_USE"}


@dataclass
class ImageData:
    """An image read from FITS.

    Attributes
    ----------
    data : ndarray (ny, nx) float64
    error : ndarray (ny, nx) or None
        1-sigma uncertainties (from ERR), non-positive/non-finite values already masked.
    mask : ndarray (ny, nx) bool or None
        True = ignore (DQ bits, non-finite data or error).
    header : astropy Header of the science HDU (with the primary header's WCS keys merged)
    wcs : astropy WCS or None (only when celestial)
    unit : str or None (BUNIT)
    planes : FitsPlanes or None
        Lazy per-cut access to the same file (tiled runs); ``data`` is None when only the
        header was read.
    wcs_problem : str or None
        Why ``wcs`` is None (no WCS keywords, an unparseable WCS, a non-celestial one).
    path : str or None
        The file read.
    saturated : ndarray (ny, nx) bool or None
        Pixels whose DQ has the SATURATED bit (whatever ``dq_bits`` masks); None without DQ.
    primary : astropy Header or None
        The primary header (JWST keeps TELESCOP, INSTRUME, FILTER, PUPIL, DETECTOR there).
    """

    data: np.ndarray | None
    error: np.ndarray | None
    mask: np.ndarray | None
    header: fits.Header
    wcs: object | None
    unit: str | None
    planes: object | None = None
    wcs_problem: str | None = None
    path: str | None = None
    saturated: np.ndarray | None = None
    primary: fits.Header | None = None

    def keyword(self, key, default=None):
        """A header value from the science header, else the primary header."""
        if key in self.header:
            return self.header[key]
        if self.primary is not None and key in self.primary:
            return self.primary[key]
        return default


def dq_to_mask(dq, bits=DEFAULT_DQ_MASK):
    """Boolean mask of pixels whose DQ value has any of ``bits`` set.

    Parameters
    ----------
    dq : ndarray of int (ny, nx)
    bits : int or sequence of str/int
        Bit names from :data:`JWST_DQ_FLAGS` or integer bit values.

    Examples
    --------
    >>> dq_to_mask(np.array([[0, 1], [2, 4]]), ['SATURATED']).tolist()
    [[False, False], [True, False]]
    """
    value = parse_dq_bits(bits)
    return (np.asarray(dq).astype(np.int64) & value) != 0


def parse_dq_bits(bits, telescope=None):
    """Integer bit mask from DQ flag names, integers, or decimal/hex (``0x6``) strings.

    Parameters
    ----------
    bits : int, str or sequence of str/int
        A comma-separated string, names from :data:`JWST_DQ_FLAGS` (``SAT``, ``JUMP`` and
        ``BAD`` are accepted), or integer values (taken literally).
    telescope : str, optional
        ``'HST'`` reads the names as the same conditions in HST's DQ bits
        (:data:`HST_DQ_FLAGS`: SATURATED is 256 | 2048, not JWST's 2).

    Returns
    -------
    value : int

    Raises
    ------
    InputError
        For an unknown name.

    Examples
    --------
    >>> parse_dq_bits('0x6'), parse_dq_bits('SATURATED,1'), parse_dq_bits(5)
    (6, 3, 5)
    """
    if isinstance(bits, str):
        bits = [b for b in bits.split(",") if b.strip()]
    if isinstance(bits, (int, np.integer)):
        value = int(bits)
    else:
        value = 0
        for b in bits:
            if isinstance(b, str):
                key = b.strip().upper()
                key = _DQ_ALIASES.get(key, key)
                try:
                    value |= int(key, 0)
                    continue
                except ValueError:
                    pass
                table = HST_DQ_FLAGS if _is_hst(telescope) else JWST_DQ_FLAGS
                if key not in table:
                    raise InputError(f"unknown DQ flag name {b!r}"
                                     f"{' for HST' if table is HST_DQ_FLAGS else ''}; use "
                                     f"names ({', '.join(table)}) or an integer mask such "
                                     "as 6 or 0x6")
                value |= table[key]
            else:
                value |= int(b)
    if value < 0:
        raise InputError(f"the DQ bit mask must be >= 0, got {value}")
    return value


def _is_hst(telescope):
    return telescope is not None and str(telescope).strip().upper() == "HST"


def _find_hdu(hdul, ext, path, what):
    if ext is None:
        return None
    try:
        hdu = hdul[ext]
    except (KeyError, IndexError):
        raise InputError(f"{path}: no extension {ext!r} for the {what}; the file has "
                         f"{', '.join(_hdu_names(hdul))}") from None
    if not hdu.is_image or hdu.header.get("NAXIS", 0) != 2:
        raise InputError(f"{path}: extension {ext!r} ({what}) is not a 2D image")
    return hdu


def _hdu_names(hdul):
    return [f"{i}:{h.name or '(unnamed)'}" for i, h in enumerate(hdul)]


def open_fits(path, what="image", *, memmap=None):
    """Open a FITS file, turning every way it can be unreadable into one :class:`InputError`.

    The HDU list is read in full (headers only, data stay lazy), so a truncated header or
    junk between HDUs fails here rather than half-way through the photometry. Trailing bytes
    after the last complete HDU (the extra 2880-byte block some archive files carry) are
    ignored, as astropy does when the file is read HDU by HDU.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file is for, used in messages (``'image'``, ``'PSF'``).

    Returns
    -------
    hdul : astropy HDUList (close it, or use it as a context manager)

    Raises
    ------
    FileNotFoundError
        Missing.
    InputError
        A directory, not FITS, or broken.

    Examples
    --------
    >>> open_fits('missing.fits')
    Traceback (most recent call last):
    FileNotFoundError: image file not found: missing.fits
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a FITS {what} file; give the file name")
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    kwargs = {} if memmap is None else {"memmap": memmap}
    try:
        hdul = fits.open(path, lazy_load_hdus=True, **kwargs)
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: not a readable FITS file ({_short(exc)}); "
                         f"give a FITS {what}") from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul.readall()
        for w in caught:
            if "truncated" in str(w.message):
                # reported once, clearly, by whoever reads the pixels (see _read_plane)
                hdul._crowdphot_truncated = " ".join(str(w.message).split())
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except (OSError, ValueError, TypeError, IndexError) as exc:
        n_read = len(hdul)
        hdul.close()
        if n_read == 0:
            raise InputError(f"{path}: not a readable FITS file ({_short(exc)}); "
                             f"give a FITS {what}") from None
        # trailing bytes after complete HDUs (a stray 2880-byte block): keep the complete
        # HDUs, as astropy's getdata does, and stop the list there (astropy closed the file)
        warnings.warn(f"{path}: ignoring unreadable bytes after HDU {n_read - 1} "
                      f"({_short(exc)})", UserWarning, stacklevel=2)
        hdul = fits.open(path, lazy_load_hdus=True, **kwargs)
        for i in range(n_read):
            hdul[i]
        hdul._read_all = True  # astropy's own end-of-list marker
    return hdul


def _short(exc):
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _read_plane(hdu, path, what):
    """The pixels of an image HDU; a truncated file gives one clear :class:`InputError`."""
    try:
        data = hdu.data
        if data is not None:
            np.asarray(data[-1:])  # touch the end: a truncated file fails here, not later
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: the {what} extension cannot be read; the file is "
                         f"truncated or corrupt ({_short(exc)}); download or copy it "
                         "again") from None
    return data


def read_image(path, *, ext=None, err_ext="auto", dq_ext="auto", dq_bits=DEFAULT_DQ_MASK):
    """Read a science image (and its error and DQ planes) from a FITS file.

    Parameters
    ----------
    path : str or Path
    ext : int or str, optional
        Science extension; default 'SCI' when present, else the first 2D HDU.
    err_ext, dq_ext : int, str, 'auto' or None
        'auto' uses 'ERR'/'DQ' when present; None ignores them.
    dq_bits : sequence of str/int or int
        DQ bits to mask.

    Returns
    -------
    ImageData

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from astropy.io import fits
    >>> p = os.path.join(tempfile.mkdtemp(), 'x.fits')
    >>> fits.PrimaryHDU(np.ones((4, 5))).writeto(p)
    >>> read_image(p).data.shape
    (4, 5)
    """
    path = Path(path)
    parse_dq_bits(dq_bits)  # a bad name fails before any reading
    with open_fits(path) as hdul:
        telescope = hdul[0].header.get("TELESCOP")
        dq_value = parse_dq_bits(dq_bits, telescope)
        ext, err_ext, dq_ext = _resolve_exts(hdul, path, ext, err_ext, dq_ext)
        sci = _find_hdu(hdul, ext, path, "science data")
        err_hdu = _find_hdu(hdul, err_ext, path, "error")
        dq_hdu = _find_hdu(hdul, dq_ext, path, "data quality")
        data = _read_plane(sci, path, "science")
        header = sci.header.copy()
        primary = hdul[0].header.copy()
        planes = {}
        for hdu, what in ((err_hdu, "ERR"), (dq_hdu, "DQ")):
            if hdu is None:
                planes[what] = None
                continue
            plane = _read_plane(hdu, path, what)
            if plane.shape != data.shape:
                raise InputError(f"{path}: {what} shape {plane.shape} differs from the "
                                 f"science shape {data.shape}; give --err-ext/--dq-ext "
                                 "none or the right extension")
            planes[what] = plane
        err, dq = planes["ERR"], planes["DQ"]
        if err is not None:
            good = np.isfinite(err) & (err > 0)
            if not good.any():
                raise InputError(f"{path}: the {err_ext} extension has no positive finite "
                                 "error; give --err-ext none to fit without errors")
        saturated = None if dq is None else dq_to_mask(
            dq, parse_dq_bits("SATURATED", telescope))
        truncated = getattr(hdul, "_crowdphot_truncated", None)
        if truncated:
            warnings.warn(f"{path}: {truncated}; the science, error and DQ planes were read "
                          "in full", UserWarning, stacklevel=2)
        data, error, mask = clean_planes(data, err, dq, dq_value)
    if mask is not None and mask.all():
        raise InputError(f"{path}: every pixel is masked (non-finite data or error, or DQ "
                         f"bits {dq_value:#x}); check --dq-bits and --err-ext")
    wcs, problem = _celestial_wcs(header, primary)
    unit = header.get("BUNIT", primary.get("BUNIT"))
    return ImageData(data=data, error=error, mask=mask, header=header, wcs=wcs, unit=unit,
                     wcs_problem=problem, path=str(path), primary=primary,
                     saturated=saturated if saturated is not None and saturated.any()
                     else None)


def _resolve_exts(hdul, path, ext, err_ext, dq_ext):
    """Science/ERR/DQ extension names or indices ('auto' and None resolved)."""
    names = [h.name.upper() for h in hdul]
    if ext is None:
        if "SCI" in names:
            ext = "SCI"
        else:
            ext = next((i for i, h in enumerate(hdul)
                        if h.is_image and h.header.get("NAXIS", 0) == 2), None)
            if ext is None:
                raise InputError(f"{path}: no 2D image extension found (it has "
                                 f"{', '.join(_hdu_names(hdul))}); give --ext")
    if err_ext == "auto":
        err_ext = "ERR" if "ERR" in names else None
    if dq_ext == "auto":
        dq_ext = "DQ" if "DQ" in names else None
    return ext, err_ext, dq_ext


def clean_planes(data, error=None, dq=None, dq_bits=DEFAULT_DQ_MASK):
    """Turn raw SCI/ERR/DQ planes into ``(data, error, mask)`` ready for photometry.

    Masked: non-finite data, non-finite or non-positive errors, and DQ ``dq_bits``. Masked
    data pixels are set to 0 and masked errors to 1 so that no NaN reaches a sum or a weight.

    Returns
    -------
    data : ndarray float64; error : ndarray or None; mask : ndarray bool or None
    """
    data = np.array(data, dtype=float)
    mask = ~np.isfinite(data)
    if error is not None:
        error = np.array(error, dtype=float)
        bad_err = ~np.isfinite(error) | (error <= 0)
        mask |= bad_err
        error[bad_err] = 1.0
    if dq is not None:
        mask |= dq_to_mask(dq, dq_bits)
    data[mask] = 0.0
    return data, error, (mask if mask.any() else None)


class FitsPlanes:
    """Lazy, memory-mapped access to SCI/ERR/DQ of a FITS file, one cut-out at a time.

    Nothing is read until :meth:`cut` is called, so a tile task touches only its pixels.
    """

    def __init__(self, path, *, ext=None, err_ext="auto", dq_ext="auto",
                 dq_bits=DEFAULT_DQ_MASK):
        self.path = str(path)
        parse_dq_bits(dq_bits)
        with open_fits(self.path) as hdul:
            self.dq_bits = parse_dq_bits(dq_bits, hdul[0].header.get("TELESCOP"))
            self.ext, self.err_ext, self.dq_ext = _resolve_exts(hdul, path, ext, err_ext,
                                                                dq_ext)
            h = _find_hdu(hdul, self.ext, path, "science data").header
            for other, what in ((self.err_ext, "error"), (self.dq_ext, "data quality")):
                _find_hdu(hdul, other, path, what)
            self.shape = (int(h["NAXIS2"]), int(h["NAXIS1"]))

    def header_info(self):
        """``ImageData`` with header, WCS and unit but no pixels (``data`` etc. are None)."""
        with open_fits(self.path) as hdul:
            header = hdul[self.ext].header.copy()
            primary = hdul[0].header.copy()
        wcs, problem = _celestial_wcs(header, primary)
        return ImageData(data=None, error=None, mask=None, header=header, wcs=wcs,
                         unit=header.get("BUNIT", primary.get("BUNIT")), wcs_problem=problem,
                         path=self.path, primary=primary)

    def sample(self, size=2048):
        """``(data, error, mask)`` of a central cut of at most ``size`` pixels a side."""
        ny, nx = self.shape
        y0, x0 = max((ny - size) // 2, 0), max((nx - size) // 2, 0)
        return self.cut(y0, min(y0 + size, ny), x0, min(x0 + size, nx))

    def cut(self, y0, y1, x0, x1):
        """``(data, error, mask)`` of the region ``[y0:y1, x0:x1]``."""
        with fits.open(self.path) as hdul:
            sci = hdul[self.ext].data[y0:y1, x0:x1]
            err = None if self.err_ext is None else hdul[self.err_ext].data[y0:y1, x0:x1]
            dq = None if self.dq_ext is None else hdul[self.dq_ext].data[y0:y1, x0:x1]
            return clean_planes(sci, err, dq, self.dq_bits)


def _celestial_wcs(header, primary):
    """``(wcs, problem)``: the celestial WCS of the science header (or of the primary one
    when SCI has none), or None and why not."""
    from astropy.wcs import WCS, FITSFixedWarning

    for hdr in (header, primary):
        if "CTYPE1" not in hdr:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            try:
                w = WCS(hdr)
                if not w.has_celestial:
                    return None, (f"its WCS (CTYPE {hdr.get('CTYPE1')!s}, "
                                  f"{hdr.get('CTYPE2')!s}) is not celestial")
                w = w.celestial
                # a WCS that parses but cannot transform is as bad as none
                w.pixel_to_world_values(np.array([0.0]), np.array([0.0]))
            except Exception as exc:  # noqa: BLE001 - astropy raises many types here
                return None, f"its WCS cannot be used ({_short(exc)})"
        return w, None
    return None, "it has no WCS keywords (CTYPE1/CTYPE2)"


# structural cards that belong to one HDU and must not be copied into another
_STRUCTURAL = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3",
               "EXTEND", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK", "CHECKSUM",
               "DATASUM", "EXTNAME", "EXTVER", "EXTLEVEL")


def image_header_for(header):
    """A copy of a science header fit for another image of the same pixels.

    Keeps everything (WCS with its SIP distortion, BUNIT, photometric keywords) except the
    structural cards of the original HDU (``XTENSION``, ``BITPIX``, ``NAXISn``, scaling,
    checksums, ``EXTNAME``).

    Examples
    --------
    >>> h = fits.Header({'XTENSION': 'IMAGE', 'NAXIS': 2, 'CTYPE1': 'RA---TAN-SIP'})
    >>> list(image_header_for(h))
    ['CTYPE1']
    """
    out = header.copy()
    for key in _STRUCTURAL:
        while key in out:
            del out[key]
    return out


def atomic_path(path):
    """A fresh temporary name next to ``path``, to be written and then renamed over it.

    The temporary lives in the same directory so that ``os.replace`` is an atomic rename. The
    file is not created here, so the writer creates it with the usual permissions (umask)
    rather than the owner-only ones of ``tempfile.mkstemp``.

    Examples
    --------
    >>> import tempfile, os
    >>> tmp = atomic_path(os.path.join(tempfile.mkdtemp(), 'cat.ecsv'))
    >>> tmp.name.startswith('.cat.ecsv.') and tmp.suffix == '.tmp' and not tmp.exists()
    True
    """
    path = Path(path)
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def default_file_mode():
    """Permission bits a newly created file gets under the current umask (e.g. 0o644).

    Examples
    --------
    >>> default_file_mode() & 0o600
    384
    """
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path):
    """Context manager yielding a temporary path that replaces ``path`` on success.

    On any exception the temporary is removed and ``path`` is left untouched, so readers
    never see a half-written file.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), 'note.txt')
    >>> with atomic_write(p) as tmp:
    ...     _ = tmp.write_text('done')
    >>> Path(p).read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_TABLE_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits", ".fit": "fits",
                  ".fits.gz": "fits", ".txt": "ascii.fixed_width_two_line",
                  ".dat": "ascii.fixed_width_two_line", ".html": "ascii.html"}


def table_format(path):
    """Astropy table format name for a catalog file name, from its extension.

    Raises
    ------
    ValueError
        For an extension with no known format.

    Examples
    --------
    >>> table_format('out/cat.fits.gz')
    'fits'
    """
    name = Path(path).name.lower()
    for ext in sorted(_TABLE_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return _TABLE_FORMATS[ext]
    raise ValueError(f"unsupported catalog extension {Path(path).suffix.lower()!r} for "
                     f"{path}; use one of {', '.join(sorted(_TABLE_FORMATS))}")


def plain_meta(value):
    """Metadata as plain YAML types: tuples become lists, numpy scalars Python numbers.

    ECSV writes a tuple as ``!!python/tuple``, which only Python's unsafe YAML loader reads;
    lists read everywhere.

    Examples
    --------
    >>> plain_meta({'fit_shape': (5, 5), 'n': np.int64(3)})
    {'fit_shape': [5, 5], 'n': 3}
    """
    if isinstance(value, dict):
        return {str(k): plain_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_meta(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_meta(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "unit") and hasattr(value, "value") and np.ndim(value.value) == 0:
        return f"{value.value} {value.unit}"
    return str(value)


def _csv_with_unit_names(table):
    """Plain-valued copy whose columns with a unit are renamed ``'name [unit]'``."""
    from astropy.table import Table

    out = Table(meta={})
    for name in table.colnames:
        col = table[name]
        unit = getattr(col, "unit", None)
        if unit is not None and str(unit) and hasattr(col, "value"):
            out[f"{name} [{unit}]"] = np.asarray(col.value)
        elif unit is not None and str(unit):
            out[f"{name} [{unit}]"] = np.asarray(col)
        else:
            out[name] = col
    return out


def _fits_safe_meta(meta):
    """Metadata that FITS headers can hold: scalars kept, other values as their repr."""
    out = {}
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def write_table(table, path, *, overwrite=True):
    """Write a table atomically; the format follows the extension (.ecsv, .fits, .csv...).

    Parameters
    ----------
    table : astropy Table or QTable
    path : str or Path
        Output file; ``.ecsv``, ``.csv``, ``.fits`` (``.fit``, ``.fits.gz``), ``.txt``/``.dat``
        (fixed width) or ``.html``. Missing parent directories are created.
    overwrite : bool, optional
        Replace an existing file (default); else ``FileExistsError``.

    Examples
    --------
    >>> import tempfile, os
    >>> from astropy.table import Table
    >>> p = os.path.join(tempfile.mkdtemp(), 'cat.ecsv')
    >>> write_table(Table({'a': [1, 2]}), p)
    >>> os.path.exists(p)
    True
    """
    if not hasattr(table, "colnames") or not hasattr(table, "write"):
        raise TypeError(f"table must be an astropy Table or QTable, got {type(table).__name__}")
    path = Path(path)
    fmt = table_format(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use overwrite)")
    table = table.copy(copy_data=False)
    if fmt == "fits" and table.meta:
        # FITS headers take only scalars; long keys become HIERARCH cards (which is fine)
        table.meta = _fits_safe_meta(table.meta)
    elif fmt == "ascii.ecsv":
        table.meta = plain_meta(dict(table.meta))
    elif fmt == "ascii.csv":
        # CSV has no place for units: they go into the column names, 'flux_fit [MJy / sr]'
        # (a spreadsheet's habit; crowdphot --init reads such names back)
        table = _csv_with_unit_names(table)
    with atomic_write(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)
        table.write(tmp, format=fmt, overwrite=True)


def write_fits_image(data, path, *, header=None, wcs=None, extname=None, overwrite=True):
    """Write a 2D image to FITS (float32) atomically.

    Parameters
    ----------
    data : array_like (ny, nx)
        The image (a Quantity's unit goes to ``BUNIT``).
    path : str or Path
    header : astropy Header, optional
        Cards to copy into the primary header.
    wcs : astropy WCS, optional
        Written into the header.
    extname : str, optional

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), 'img.fits')
    >>> write_fits_image(np.ones((3, 4)), p)
    >>> fits.getdata(p).shape
    (3, 4)
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use overwrite)")
    unit = getattr(data, "unit", None)
    value = np.asarray(getattr(data, "value", data), dtype=np.float32)
    if value.ndim != 2:
        raise ValueError(f"data must be a 2D image, got shape {value.shape}")
    hdu = fits.PrimaryHDU(value, header=None if header is None else header.copy())
    if wcs is not None:
        hdu.header.update(wcs.to_header())
    if unit is not None:
        hdu.header["BUNIT"] = str(unit)
    if extname:
        hdu.header["EXTNAME"] = extname
    with atomic_write(path) as tmp:
        hdu.writeto(tmp, overwrite=True)
