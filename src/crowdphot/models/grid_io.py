"""Readers for gridded ePSF FITS files: STPSF/WebbPSF grids and STScI "STDPSF" grids.

The parsers return the ``NDData`` from which `GriddedPSFModel` is built exactly as photutils 3
builds it from the same file (:mod:`crowdphot.models.gridded` has the readers that return
models): the ePSF data are used as stored (no renormalisation), header keywords become ``meta``,
and positions are 0-based detector pixels.

* **STPSF / WebbPSF** (``psf_grid(..., save=True)`` output): a cube ``(n_psf, ny, nx)`` in the
  primary HDU; ``OVERSAMP`` gives the oversampling and ``DET_YX{i}`` the position of ePSF
  ``i`` as the string ``"(a, b)"``, of which photutils takes ``a`` as x and ``b`` as y. All
  header keywords are copied to ``meta`` with lower-case names.
* **STDPSF** (Anderson's standard format): a cube with ``NXPSFS``/``NYPSFS`` grid sizes and the
  1-based node positions in ``IPSFX01..``/``JPSFY01..`` (or the packed ``IPSFXA5``... keys of
  the NIRCam/WFC3 files); the oversampling is always 4. Files holding several detectors
  (WFPC2, ACS/WFC, WFC3/UVIS, NIRCam SW) need ``detector_id``.
"""

from __future__ import annotations

import io as _io
import itertools
import os
import re
import warnings

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.nddata import NDData

__all__ = ["STDPSFGrid", "parse_psf_grid", "parse_stdpsf", "parse_stpsf"]

_FORMATS = {"stpsf": "stpsf", "webbpsf": "stpsf", "stdpsf": "stdpsf"}
_DET_YX = re.compile(r"^DET_YX(\d+)$")


def _open_primary(filename):
    """Header and data of the primary HDU, with input and file errors as ValueError."""
    if isinstance(filename, _io.IOBase):
        name = getattr(filename, "name", "file object")
    else:
        try:
            name = os.fspath(filename)
        except TypeError as exc:
            raise TypeError(f"filename must be a path, got {type(filename).__name__}") from exc
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        if not os.path.isfile(name):
            raise ValueError(f"filename {name!r} is not an existing file")
        filename = name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            with fits.open(filename, ignore_missing_end=True) as hdul:
                header = hdul[0].header.copy()
                data = None if hdul[0].data is None else np.array(hdul[0].data)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{name!r} is not a readable FITS file: {exc}") from exc
    if data is None:
        raise ValueError(f"{name!r} has no data in its primary HDU")
    return name, header, data


def _identify(header):
    if any(_DET_YX.match(key) for key in header) or "OVERSAMP" in header:
        return "stpsf"
    if "NXPSFS" in header or "NYPSFS" in header:
        return "stdpsf"
    return None


def parse_psf_grid(filename, format=None, **kwargs):  # noqa: A002
    """Parse an STPSF/WebbPSF or STDPSF gridded-PSF FITS file (the engine of ``.read``).

    Parameters
    ----------
    filename : str or os.PathLike
        The FITS file.
    format : {'stpsf', 'webbpsf', 'stdpsf'} or None, optional
        ``None`` identifies the format from the header (``DET_YX*``/``OVERSAMP`` keys for STPSF,
        ``NXPSFS``/``NYPSFS`` for STDPSF).
    **kwargs
        ``detector_id`` for multi-detector STDPSF files.

    Returns
    -------
    grid : astropy.nddata.NDData
        ``(n_psf, ny, nx)`` ePSF data with ``grid_xypos``, ``oversampling`` in ``meta``.

    Examples
    --------
    >>> grid = parse_psf_grid('STDPSF_WFC3IR_F160W.fits')  # doctest: +SKIP
    """
    if format is not None:
        if not isinstance(format, str) or format.lower() not in _FORMATS:
            raise ValueError(f"format must be one of {sorted(_FORMATS)} or None, got "
                             f"{format!r}")
        kind = _FORMATS[format.lower()]
        if kind == "stpsf" and kwargs:
            raise TypeError(f"the STPSF reader takes no options, got {sorted(kwargs)}")
        reader = parse_stpsf if kind == "stpsf" else parse_stdpsf
        return reader(filename, **kwargs)
    name, header, _ = _open_primary(filename)
    kind = _identify(header)
    if kind is None:
        raise ValueError(f"cannot identify the PSF grid format of {name!r} (no DET_YX*/OVERSAMP "
                         f"or NXPSFS/NYPSFS keywords); pass format=")
    return parse_psf_grid(filename, format=kind, **kwargs)


def parse_stpsf(filename):
    """Parse an STPSF (formerly WebbPSF) gridded PSF FITS file.

    Parameters
    ----------
    filename : str or os.PathLike

    Returns
    -------
    grid : astropy.nddata.NDData

    Examples
    --------
    >>> grid = parse_stpsf('nircam_nrca1_f200w_fovp101_samp4_npsf16.fits')  # doctest: +SKIP
    """
    name, header, data = _open_primary(filename)
    if data.ndim == 2:  # a single ePSF
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"{name!r}: STPSF data must be a 2D or 3D array, got {data.ndim} "
                         f"dimension(s)")
    indexed = sorted((int(m.group(1)), key) for key in header
                     if (m := _DET_YX.match(key)))
    if not indexed:
        raise ValueError(f"{name!r}: invalid STPSF file, missing the DET_YX{{i}} header keys")
    if "OVERSAMP" not in header:
        raise ValueError(f"{name!r}: invalid STPSF file, missing the OVERSAMP header key")
    if len(indexed) != data.shape[0]:
        raise ValueError(f"{name!r}: {len(indexed)} DET_YX keys for {data.shape[0]} ePSFs "
                         f"(NAXIS3)")
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise ValueError(f"{name!r}: DET_YX keys must be numbered 0..{len(indexed) - 1}")
    xypos = []
    for _, key in indexed:
        parts = str(header[key]).strip().lstrip("(").rstrip(")").split(",")
        try:
            xypos.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{name!r}: cannot parse {key} = {header[key]!r} as '(a, b)'"
                             ) from exc
    _check_finite(name, data)

    # photutils keeps every header card (lower-cased), minus structural and commentary ones
    stripped = header.copy(strip=True)
    for key in ("HISTORY", "COMMENT", ""):
        stripped.remove(key, ignore_missing=True, remove_all=True)
    meta = {key.lower(): stripped[key] for key in stripped}
    meta["grid_xypos"] = xypos
    meta.setdefault("oversampling", meta["oversamp"])
    return NDData(data, meta=meta)


def _check_finite(name, data):
    if data.dtype.kind not in "iuf":
        raise ValueError(f"{name!r}: ePSF data must be numeric, got dtype {data.dtype}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name!r}: ePSF data contain NaN or inf values")


def _stdpsf_grid(filename):
    """Parse an STDPSF file into (name, data, xgrid, ygrid) with 0-based node positions."""
    name, header, data = _open_primary(filename)
    missing = [key for key in ("NAXIS3", "NXPSFS", "NYPSFS") if key not in header]
    if missing:
        raise ValueError(f"{name!r}: invalid STDPSF file, missing header key(s) {missing}")
    if data.ndim != 3:
        raise ValueError(f"{name!r}: STDPSF data must be a 3D array, got {data.ndim} "
                         f"dimension(s)")
    nx, ny = int(header["NXPSFS"]), int(header["NYPSFS"])
    try:
        if "IPSFX01" in header:
            xgrid = [header[f"IPSFX{i:02d}"] for i in range(1, nx + 1)]
            ygrid = [header[f"JPSFY{i:02d}"] for i in range(1, ny + 1)]
        elif "IPSFXA5" in header:
            xgrid = [int(v) for key in ("IPSFXA5", "IPSFXB5", "IPSFXC5", "IPSFXD5")
                     for v in str(header[key]).split()]
            ygrid = [int(v) for key in ("JPSFYA5", "JPSFYB5") for v in str(header[key]).split()]
        else:
            raise ValueError(f"{name!r}: invalid STDPSF file, missing the IPSFX01/JPSFY01 "
                             f"(or IPSFXA5) position keys")
    except KeyError as exc:
        raise ValueError(f"{name!r}: invalid STDPSF file, missing position key {exc}") from exc
    if len(xgrid) != nx or len(ygrid) != ny:
        raise ValueError(f"{name!r}: found {len(xgrid)} x and {len(ygrid)} y node positions for "
                         f"NXPSFS={nx}, NYPSFS={ny}")
    if nx * ny != data.shape[0]:
        raise ValueError(f"{name!r}: NXPSFS * NYPSFS = {nx * ny} does not match the "
                         f"{data.shape[0]} ePSFs (NAXIS3)")
    _check_finite(name, data)
    # STDPSF node positions are 1-based
    return name, data, np.array(xgrid) - 1, np.array(ygrid) - 1


# multi-detector STDPSF files: n_psf -> (instrument, detectors along x, along y, size, map)
_MULTI = {
    36: ("WFPC2", 2, 2, 800, {1: 3, 2: 2, 3: 0, 4: 1}),
    200: ("NRCSW", 4, 2, 2048, {1: 0, 3: 1, 8: 2, 6: 3, 2: 4, 4: 5, 7: 6, 5: 7}),
}


def _split(data, xgrid, ygrid, detector_id):
    """The ePSFs and node positions of one detector of a multi-detector STDPSF file."""
    n = data.shape[0]
    if detector_id is None:  # photutils' wording
        raise ValueError("detector_id must be specified for files containing multiple ePSF "
                         "grids")
    if n in (90, 56):  # ACS/WFC, WFC3/UVIS: two chips stacked in y, 2048 rows each
        if detector_id not in (1, 2):
            raise ValueError(f"detector_id must be 1 or 2 for ACS/WFC and WFC3/UVIS grids, "
                             f"got {detector_id!r}")
        half = len(ygrid) // 2
        yg = ygrid[(detector_id - 1) * half:detector_id * half].copy()
        if detector_id == 2:
            yg -= 2048
        return data.reshape(2, n // 2, *data.shape[1:])[detector_id - 1], xgrid, yg
    label, ndx, ndy, size, det_map = _MULTI[n]
    if detector_id not in det_map:
        raise ValueError(f"detector_id must be one of {sorted(det_map)} for {label} grids, "
                         f"got {detector_id!r}")
    nxg, nyg = len(xgrid) // ndx, len(ygrid) // ndy
    det = det_map[detector_id]
    bx, by = det % ndx, det // ndx
    index = np.arange(n).reshape(len(ygrid), len(xgrid))
    index = index[by * nyg:(by + 1) * nyg, bx * nxg:(bx + 1) * nxg].ravel()
    xg = xgrid[bx * nxg:(bx + 1) * nxg] - bx * size
    yg = ygrid[by * nyg:(by + 1) * nyg] - by * size
    return data[index], xg, yg


_DETECTORS = {
    "WFPC2": ["HST/WFPC2", "WFPC2"], "ACSHRC": ["HST/ACS", "HRC"], "ACSWFC": ["HST/ACS", "WFC"],
    "WFC3UV": ["HST/WFC3", "UVIS"], "WFC3IR": ["HST/WFC3", "IR"],
    "NRCSW": ["JWST/NIRCam", "NRCSW"], "NRCAL": ["JWST/NIRCam", "A5"],
    "NRCBL": ["JWST/NIRCam", "B5"], "NIRISS": ["JWST/NIRISS", "NIRISS"],
    "MIRI": ["JWST/MIRI", "MIRIM"],
    **{f"NRC{m}{i}": ["JWST/NIRCam", f"{m}{i}"] for m in "AB" for i in range(1, 5)},
}


def _filename_meta(name, detector_id):
    """photutils-style metadata from an ``STDPSF_<DETECTOR>_<FILTER>[_...].fits`` name."""
    base = os.path.basename(name)
    parts = base.strip(".fits").split("_")
    if len(parts) not in (3, 4):
        return {}
    detector, filter_name = parts[1:3]
    meta = {"STDPSF": name, "detector": detector, "filter": filter_name}
    if detector_id is not None and detector in _DETECTORS:
        instrument, det = _DETECTORS[detector]
        if det == "WFPC2":
            det = {1: "PC", 2: "WF2", 3: "WF3", 4: "WF4"}.get(detector_id, det)
        elif det in ("WFC", "UVIS"):
            det = f"{det}{2 if detector_id == 1 else 1}"
        elif det == "NRCSW":
            det = "AB"[(detector_id - 1) // 4] + str((detector_id - 1) % 4 + 1)
        meta["instrument"] = instrument
        meta["detector"] = det
    return meta


def parse_stdpsf(filename, *, detector_id=None):
    """Parse an STScI standard-format ePSF grid ("STDPSF") FITS file.

    Parameters
    ----------
    filename : str or os.PathLike
    detector_id : int or None, optional
        Detector to extract from files covering several detectors (WFPC2: 1-4 for PC, WF2,
        WF3, WF4; ACS/WFC and WFC3/UVIS: 1 = WFC2/UVIS2 (sci, 1), 2 = WFC1/UVIS1 (sci, 2);
        NIRCam SW: 1-8 for A1-A4, B1-B4). Ignored for single-detector files.

    Returns
    -------
    grid : astropy.nddata.NDData
        Oversampling 4 (the STDPSF convention); ``meta`` has ``nxpsfs``, ``nypsfs`` and,
        when the file name follows the ``STDPSF_<DET>_<FILTER>.fits`` pattern, ``detector``
        and ``filter``.

    Examples
    --------
    >>> grid = parse_stdpsf('STDPSF_WFC3IR_F160W.fits')  # doctest: +SKIP
    """
    name, data, xgrid, ygrid = _stdpsf_grid(filename)
    if data.shape[0] in (90, 56, 36, 200):
        data, xgrid, ygrid = _split(data, xgrid, ygrid, detector_id)
    xypos = [(x, y) for y, x in itertools.product(ygrid, xgrid)]
    meta = {"grid_xypos": xypos, "oversampling": 4, "nxpsfs": len(xgrid),
            "nypsfs": len(ygrid)}
    meta.update(_filename_meta(name, detector_id))
    return NDData(data, meta=meta)


class STDPSFGrid:
    """An STDPSF ePSF grid read for inspection and plotting (all detectors of the file).

    Parameters
    ----------
    filename : str or os.PathLike
        The STDPSF FITS file.

    Attributes
    ----------
    data : ndarray of shape (n_psf, ny, nx)
    grid_xypos : list of (x, y)
    oversampling : ndarray ``[4, 4]``
    meta : dict

    Examples
    --------
    >>> grid = STDPSFGrid('STDPSF_ACSWFC_F814W.fits')  # doctest: +SKIP
    >>> fig = grid.plot_grid()  # doctest: +SKIP
    """

    def __init__(self, filename):
        name, data, xgrid, ygrid = _stdpsf_grid(filename)
        self.data = data
        self._xgrid = xgrid
        self._ygrid = ygrid
        self.grid_xypos = [(x, y) for y, x in itertools.product(ygrid, xgrid)]
        self.oversampling = np.array([4, 4])
        self.meta = {"grid_shape": (len(ygrid), len(xgrid)), "grid_xypos": self.grid_xypos,
                     "oversampling": 4, **_filename_meta(name, None)}

    def plot_grid(self, *, ax=None, vmax_scale=None, peak_norm=False, deltas=False,
                  cmap="viridis", dividers=True, divider_color="darkgray", divider_ls="-",
                  figsize=None):
        """Plot the ePSFs laid out by grid position (see `crowdphot.models.plot.plot_grid`)."""
        from crowdphot.models.plot import plot_grid

        return plot_grid(self, ax=ax, vmax_scale=vmax_scale, peak_norm=peak_norm,
                         deltas=deltas, cmap=cmap, dividers=dividers,
                         divider_color=divider_color, divider_ls=divider_ls, figsize=figsize)

    def __repr__(self):
        lines = [f"<{type(self).__module__}.{type(self).__name__}>"]
        for key in ("STDPSF", "detector", "filter", "grid_shape"):
            if key in self.meta:
                lines.append(f"{key if key == 'STDPSF' else key.capitalize()}: "
                             f"{self.meta[key]}")
        lines += [f"Number of PSFs: {len(self.grid_xypos)}",
                  f"PSF shape (oversampled pixels): {self.data.shape[1:]}",
                  f"Oversampling: {self.oversampling}"]
        return "\n".join(lines)

    __str__ = __repr__
