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

__all__ = ["JWST_DQ_FLAGS", "DEFAULT_DQ_MASK", "ImageData", "FitsPlanes", "clean_planes",
           "dq_to_mask", "read_image", "table_format", "write_table", "write_fits_image",
           "atomic_path", "atomic_write", "default_file_mode"]

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
    """

    data: np.ndarray | None
    error: np.ndarray | None
    mask: np.ndarray | None
    header: fits.Header
    wcs: object | None
    unit: str | None
    planes: object | None = None


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
    if isinstance(bits, (int, np.integer)):
        value = int(bits)
    else:
        value = 0
        for b in bits:
            if isinstance(b, str):
                key = b.strip().upper()
                key = _DQ_ALIASES.get(key, key)
                if key.isdigit():
                    value |= int(key)
                    continue
                if key not in JWST_DQ_FLAGS:
                    raise ValueError(f"unknown DQ flag name {b!r}; known: "
                                     f"{', '.join(JWST_DQ_FLAGS)}")
                value |= JWST_DQ_FLAGS[key]
            else:
                value |= int(b)
    return (np.asarray(dq).astype(np.int64) & value) != 0


def _find_hdu(hdul, ext, path, what):
    if ext is None:
        return None
    try:
        hdu = hdul[ext]
    except (KeyError, IndexError):
        raise ValueError(f"{path}: no extension {ext!r} for the {what}") from None
    if hdu.data is None or np.ndim(hdu.data) != 2:
        raise ValueError(f"{path}: extension {ext!r} ({what}) is not a 2D image")
    return hdu


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
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        hdul = fits.open(path)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable FITS file ({exc})") from None
    with hdul:
        names = [h.name.upper() for h in hdul]
        if ext is None:
            if "SCI" in names:
                ext = "SCI"
            else:
                ext = next((i for i, h in enumerate(hdul)
                            if h.data is not None and np.ndim(h.data) == 2), None)
                if ext is None:
                    raise ValueError(f"{path}: no 2D image extension found")
        sci = _find_hdu(hdul, ext, path, "science data")
        data = sci.data
        if err_ext == "auto":
            err_ext = "ERR" if "ERR" in names else None
        if dq_ext == "auto":
            dq_ext = "DQ" if "DQ" in names else None
        err_hdu = _find_hdu(hdul, err_ext, path, "error")
        dq_hdu = _find_hdu(hdul, dq_ext, path, "data quality")
        header = sci.header.copy()
        primary = hdul[0].header
        for hdu, what in ((err_hdu, "ERR"), (dq_hdu, "DQ")):
            if hdu is not None and hdu.data.shape != data.shape:
                raise ValueError(f"{path}: {what} shape {hdu.data.shape} != SCI shape "
                                 f"{data.shape}")
        data, error, mask = clean_planes(data, None if err_hdu is None else err_hdu.data,
                                         None if dq_hdu is None else dq_hdu.data, dq_bits)
    wcs = _celestial_wcs(header, primary)
    unit = header.get("BUNIT", primary.get("BUNIT"))
    return ImageData(data=data, error=error, mask=mask, header=header, wcs=wcs, unit=unit)


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
        self.dq_bits = dq_bits
        with fits.open(self.path) as hdul:
            names = [h.name.upper() for h in hdul]
            if ext is None:
                ext = "SCI" if "SCI" in names else next(
                    (i for i, h in enumerate(hdul)
                     if h.is_image and h.header.get("NAXIS", 0) == 2), None)
                if ext is None:
                    raise ValueError(f"{path}: no 2D image extension found")
            self.ext = ext
            self.err_ext = ("ERR" if "ERR" in names else None) if err_ext == "auto" else err_ext
            self.dq_ext = ("DQ" if "DQ" in names else None) if dq_ext == "auto" else dq_ext
            h = hdul[ext].header
            self.shape = (int(h["NAXIS2"]), int(h["NAXIS1"]))

    def header_info(self):
        """``ImageData`` with header, WCS and unit but no pixels (``data`` etc. are None)."""
        with fits.open(self.path) as hdul:
            header = hdul[self.ext].header.copy()
            primary = hdul[0].header.copy()
        return ImageData(data=None, error=None, mask=None, header=header,
                         wcs=_celestial_wcs(header, primary),
                         unit=header.get("BUNIT", primary.get("BUNIT")))

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
    """Celestial WCS of the science header (or of the primary one when SCI has none)."""
    from astropy.wcs import WCS, FITSFixedWarning

    for hdr in (header, primary):
        if "CTYPE1" not in hdr:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            try:
                w = WCS(hdr)
            except Exception:  # noqa: BLE001 - a broken WCS is reported as "no WCS"
                return None
        return w.celestial if w.has_celestial else None
    return None


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
    if fmt == "fits" and table.meta:
        # FITS headers take only scalars; long keys become HIERARCH cards (which is fine)
        table = table.copy(copy_data=False)
        table.meta = _fits_safe_meta(table.meta)
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
