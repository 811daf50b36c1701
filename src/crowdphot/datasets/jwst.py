"""Built-in data: a JWST/NIRCam-like gridded ePSF computed offline from first principles.

The STScI PSF-photometry notebook downloads the STPSF grid
``nircam_nrca1_f200w_fovp101_samp4_npsf16.fits``. :func:`jwst_like_psf_grid` gives an
equivalent without network access: the ePSFs are computed by :mod:`crowdphot.core.optics`
(segmented pupil, field-dependent wavefront error, polychromatic diffraction, pixel response,
charge diffusion and IPC), written once as an STPSF-format FITS file in a cache directory and
read back as a :class:`~crowdphot.models.gridded.GriddedPSFModel`.

Cache directory: the ``cache_dir`` argument, else the ``CROWDPHOT_CACHE_DIR`` environment
variable, else ``~/.cache/crowdphot``. File names follow STPSF's
(``nircam_<detector>_<filter>_fovp<fov>_samp<oversampling>_npsf<n>``) with a
``_crowdphot-v<version>`` suffix naming the optics model version, so a change of the model
never reuses an old file. Files are written under a temporary name and renamed into place, so
concurrent processes never read a half-written file.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path

import numpy as np
from astropy.io import fits

from crowdphot.core import optics

__all__ = [
    "jwst_like_psf_grid",
    "jwst_like_psf_grid_path",
    "write_jwst_like_psf_grid",
    "jwst_like_epsf_grid",
    "grid_positions",
    "default_cache_dir",
    "nircam_filter_detector",
]

_CACHE_ENV = "CROWDPHOT_CACHE_DIR"
_VERSION_KEY = "CPOPTVER"


def default_cache_dir():
    """The cache directory used when none is given: ``$CROWDPHOT_CACHE_DIR`` or ``~/.cache``.

    Returns
    -------
    path : pathlib.Path
        Not created by this function.

    Examples
    --------
    >>> default_cache_dir().name in ('crowdphot', os.environ.get('CROWDPHOT_CACHE_DIR', ''))
    True
    """
    env = os.environ.get(_CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/crowdphot").expanduser()


def grid_positions(num_psfs):
    """Detector ``(x, y)`` of the fiducial PSFs, sorted by ``y`` then ``x``.

    As STPSF's ``psf_grid``: a ``sqrt(n) x sqrt(n)`` grid of evenly spaced positions from 0 to
    2047 (detector edges included) rounded to whole pixels, or the detector centre
    (1024, 1024) for a single PSF.

    Parameters
    ----------
    num_psfs : int
        A perfect square.

    Returns
    -------
    xy : ndarray of shape (num_psfs, 2)

    Examples
    --------
    >>> grid_positions(4).tolist()
    [[0.0, 0.0], [2047.0, 0.0], [0.0, 2047.0], [2047.0, 2047.0]]
    """
    num_psfs = optics._check_int("num_psfs", num_psfs, minimum=1, square=True)
    n = math.isqrt(num_psfs)
    size = optics.DETECTOR_NPIX
    if n == 1:
        return np.array([[size // 2, size // 2]], dtype=float)
    locs = [float(round(f * (size - 1))) for f in np.linspace(0.0, 1.0, n)]
    return np.array([(x, y) for y in locs for x in locs])


def jwst_like_epsf_grid(filter="F200W", detector="NRCA1", num_psfs=16, fov_pixels=101,
                        oversampling=4):
    """Compute the grid of ePSFs (in memory) that the grid files hold.

    Parameters
    ----------
    filter, detector, num_psfs, fov_pixels, oversampling
        As in :func:`write_jwst_like_psf_grid`.

    Returns
    -------
    data : ndarray of shape (num_psfs, fov_pixels * oversampling, fov_pixels * oversampling)
        ePSFs from :func:`crowdphot.core.optics.jwst_like_epsf`, in the order of ``xy``.
    xy : ndarray of shape (num_psfs, 2)
        Detector ``(x, y)`` of each ePSF (:func:`grid_positions`).
    meta : dict
        Canonical ``filter``, ``detector``, ``num_psfs``, ``fov_pixels``, ``oversampling``,
        optics model ``version`` and the physical parameters used (``pixelscale`` [arcsec],
        mean ``wavelength`` [m], ``nwaves``, ``charge_diffusion`` and ``jitter`` [arcsec],
        mean rms ``wfe_nm``).

    Examples
    --------
    >>> data, xy, meta = jwst_like_epsf_grid('F444W', 'NRCB5', 4, 9, 2)
    >>> data.shape, meta['filter']
    ((4, 18, 18), 'F444W')
    """
    filt, det, num_psfs, fov_pixels, oversampling = optics.check_grid_args(
        filter, detector, num_psfs, fov_pixels, oversampling
    )
    xy = grid_positions(num_psfs)
    data, meta = optics._epsf_unchecked(filt, det, xy, fov_pixels, oversampling)
    meta.update(filter=filt, detector=det, oversampling=oversampling, fov_pixels=fov_pixels,
                num_psfs=num_psfs, version=optics.OPTICS_MODEL_VERSION)
    return data, xy, meta


def _file_name(filt, det, num_psfs, fov_pixels, oversampling):
    return (
        f"nircam_{det.lower()}_{filt.lower()}_fovp{fov_pixels}_samp{oversampling}"
        f"_npsf{num_psfs}_crowdphot-v{optics.OPTICS_MODEL_VERSION}.fits"
    )


def _grid_with_progress(filt, det, num_psfs, fov_pixels, oversampling, progress_bar):
    if not progress_bar:
        return jwst_like_epsf_grid(filt, det, num_psfs, fov_pixels, oversampling)
    from tqdm.auto import tqdm

    xy = grid_positions(num_psfs)
    with tqdm(total=len(xy), desc=f"Built-in {filt}/{det} PSF grid (first use)",
              unit="psf") as bar:
        data, meta = optics._epsf_unchecked(filt, det, xy, fov_pixels, oversampling,
                                            progress=lambda: bar.update(1))
    meta.update(filter=filt, detector=det, oversampling=oversampling, fov_pixels=fov_pixels,
                num_psfs=num_psfs, version=optics.OPTICS_MODEL_VERSION)
    return data, xy, meta


def _grid_header(xy, meta):
    """STPSF-layout primary header for a grid computed by :func:`jwst_like_epsf_grid`."""
    channel = optics.FILTERS[meta["filter"]][0]
    hdr = fits.Header()
    hdr["COMMENT"] = "/ PSF Library Information"
    hdr["INSTRUME"] = ("NIRCam", "Instrument name")
    hdr["DETECTOR"] = (meta["detector"], "Detector name")
    hdr["FILTER"] = (meta["filter"], "Filter name")
    hdr["PUPILOPD"] = ("crowdphot analytic JWST-like OPD", "Pupil OPD source name")
    hdr["FOVPIXEL"] = (meta["fov_pixels"], "Field of view in pixels (full array)")
    hdr["FOV"] = (meta["fov_pixels"] * meta["pixelscale"], "Field of view in arcsec (full array)")
    hdr["PIXELSCL"] = (meta["pixelscale"], "Detector pixel scale in arcsec/pixel")
    hdr["OVERSAMP"] = (meta["oversampling"], "Oversampling factor of the ePSF arrays")
    hdr["DET_SAMP"] = (meta["oversampling"], "Oversampling factor for MFT to detector plane")
    hdr["NWAVES"] = (meta["nwaves"], "Number of wavelengths used in calculation")
    for i, (x, y) in enumerate(xy):
        # STPSF writes these strings with x first (its psf_grid stores the data sorted by y
        # then x and keeps the string order of its (x, y) location list); photutils' reader
        # parses them as (x, y). Matching that keeps the file interchangeable with STPSF's.
        hdr[f"DET_YX{i}"] = (str((float(x), float(y))), f"The #{i} PSF's detector pixel position")
    hdr["NUM_PSFS"] = (len(xy), "The total number of fiducial PSFs")
    hdr["DISTORT"] = ("False", "SIAF distortion coefficients applied")
    hdr["ROTATION"] = (0.0, "PSF rotated to match detector rotation")
    hdr["WAVELEN"] = (meta["wavelength"], "Weighted mean wavelength in meters")
    hdr["DIFFLMT"] = (
        meta["wavelength"] / optics.TELESCOPE_DIAMETER / optics.ARCSEC,
        "Diffraction limit lambda/D in arcsec",
    )
    hdr["FFTTYPE"] = ("MFT (numpy)", "Algorithm for Fourier transforms")
    hdr["COMMENT"] = "/ crowdphot Creation Information"
    hdr["NORMALIZ"] = ("first", "PSF normalization method")
    hdr["TEL_WFE"] = (meta["wfe_nm"], "[nm] Mean pupil RMS wavefront error")
    hdr["JITRTYPE"] = ("Gaussian convolution", "Type of jitter applied")
    hdr["JITRSIGM"] = (meta["jitter"], "Gaussian sigma for jitter, per axis [arcsec]")
    hdr["CHDFTYPE"] = ("gaussian", "Type of detector charge diffusion model")
    hdr["CHDFSIGM"] = (meta["charge_diffusion"], "[arcsec] Gaussian sigma for charge diff model")
    hdr["IPCINST"] = ("NIRCam", "Interpixel capacitance (IPC)")
    hdr["IPCSIDE"] = (optics.IPC_SIDE, "IPC coupling to each edge neighbour")
    hdr["IPCDIAG"] = (optics.IPC_DIAGONAL, "IPC coupling to each corner neighbour")
    hdr["CHANNEL"] = (channel, "NIRCam channel (SW or LW)")
    hdr["ORIGIN"] = ("crowdphot", "Software that computed this file")
    hdr[_VERSION_KEY] = (meta["version"], "crowdphot optics model version")
    hdr["COMMENT"] = "/ File Description"
    hdr["COMMENT"] = "JWST-like ePSF grid computed by crowdphot.core.optics from a model of the"
    hdr["COMMENT"] = "segmented pupil, wavefront error and detector; not an STScI product."
    hdr["COMMENT"] = "Data are [i, y, x]: PSF i sits at the detector position of DET_YX{i}."
    hdr["COMMENT"] = "Each oversampled ePSF sums to OVERSAMP**2 times its flux inside the FOV."
    return hdr


def _atomic_write(hdul, path):
    path = Path(path)
    # a unique sibling name (not mkstemp, whose 0600 mode would make a shared cache private)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        hdul.writeto(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def nircam_filter_detector(filter=None, pupil=None, detector=None):  # noqa: A002
    """The built-in grid's ``(filter, detector)`` for a NIRCam image's header values.

    The effective filter is the pupil-wheel filter when ``PUPIL`` names one (``F405N`` behind
    ``F444W``, ``F164N`` behind ``F150W2``, ...), else ``FILTER``. The detector is
    ``DETECTOR`` (``NRCALONG`` is ``NRCA5``); without one, or for a mosaic (``MULTIPLE``),
    module A's detector of the filter's channel (``NRCA1`` short wave, ``NRCA5`` long wave).

    Parameters
    ----------
    filter, pupil, detector : str or None
        Header values (FILTER, PUPIL, DETECTOR); any case, surrounding blanks ignored.

    Returns
    -------
    filter, detector : str

    Raises
    ------
    ValueError
        Unknown filter; a pupil element that is not for imaging (grism, coronagraphic mask,
        weak lens); a detector of the other channel.

    Examples
    --------
    >>> nircam_filter_detector('F444W', 'F405N', 'NRCBLONG')
    ('F405N', 'NRCB5')
    >>> nircam_filter_detector('F200W')
    ('F200W', 'NRCA1')
    """
    def clean(v):
        return None if v is None or not str(v).strip() else str(v).strip().upper()

    filt, pup, det = clean(filter), clean(pupil), clean(detector)
    if pup in optics.PUPIL_FILTERS:
        filt = pup
    elif pup not in (None, "CLEAR", "NONE", "N/A"):
        raise ValueError(f"PUPIL={pup} is not an imaging configuration with a built-in PSF "
                         "(grism, coronagraph or weak lens); give a PSF file")
    if filt is None:
        raise ValueError("no FILTER given")
    if filt not in optics.FILTERS:
        raise ValueError(f"unknown NIRCam filter {filt!r}; the built-in grids cover "
                         f"{', '.join(optics.FILTERS)}")
    channel = optics.FILTERS[filt][0]
    det = {"NRCALONG": "NRCA5", "NRCBLONG": "NRCB5"}.get(det, det)
    if det in (None, "MULTIPLE", "ANY", "N/A"):
        det = optics.DEFAULT_DETECTORS[channel]
    if det not in optics.DETECTORS:
        raise ValueError(f"unknown NIRCam detector {detector!r}; choose one of "
                         f"{', '.join(optics.DETECTORS)} (NRCALONG, NRCBLONG)")
    if optics.DETECTORS[det][0] != channel:
        raise ValueError(f"detector {det} cannot observe filter {filt} ({channel} channel)")
    return filt, det


def _write_unchecked(path, filt, det, num_psfs, fov_pixels, oversampling, progress_bar=False):
    data, xy, meta = _grid_with_progress(filt, det, num_psfs, fov_pixels, oversampling,
                                         progress_bar)
    hdul = fits.HDUList([fits.PrimaryHDU(data, header=_grid_header(xy, meta))])
    _atomic_write(hdul, path)
    return path


def write_jwst_like_psf_grid(path, *, filter="F200W", detector="NRCA1", num_psfs=16,
                             fov_pixels=101, oversampling=4, overwrite=False):
    """Compute a JWST-like ePSF grid and write it as an STPSF-format FITS file.

    The file can be read by ``GriddedPSFModel.read`` of photutils and of crowdphot, exactly
    like a grid made by STPSF's ``psf_grid``: a primary HDU holding the
    ``(num_psfs, fov_pixels * oversampling, fov_pixels * oversampling)`` cube, sorted by
    detector ``y`` then ``x``, with the STPSF keywords (``DET_YX{i}``, ``OVERSAMP``,
    ``NUM_PSFS``, ``FILTER``, ``DETECTOR``, ``FOVPIXEL``, ...). Each ePSF sums to
    ``oversampling**2`` times the fraction of the star's light inside the field of view.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (its directory must exist).
    filter : str, optional
        Any NIRCam imaging filter (``optics.FILTERS``: wide, medium, narrow and extra-wide
        bands), e.g. F070W-F212N (short-wave channel, 0.031"/px) or F250M-F480M (long wave,
        0.063"/px).
    detector : str, optional
        NRCA1-4, NRCB1-4 (short wave) or NRCA5, NRCB5 (long wave; aliases NRCALONG, NRCBLONG).
    num_psfs : int, optional
        A perfect square: the number of fiducial PSFs on a square grid spanning the detector.
    fov_pixels : int, optional
        Odd field of view in detector pixels (>= 5).
    oversampling : int, optional
        ePSF samples per detector pixel along each axis (>= 1).
    overwrite : bool, optional
        Replace an existing file.

    Returns
    -------
    path : str
        The written file.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> write_jwst_like_psf_grid('grid.fits', num_psfs=4, fov_pixels=25)  # doctest: +SKIP
    'grid.fits'
    """
    filt, det, num_psfs, fov_pixels, oversampling = optics.check_grid_args(
        filter, detector, num_psfs, fov_pixels, oversampling
    )
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"path {os.fspath(path)!r} exists; pass overwrite=True to replace it")
    _write_unchecked(path, filt, det, num_psfs, fov_pixels, oversampling)
    return os.fspath(path)


def _is_current(path):
    """True when ``path`` is a readable grid file written by this optics model version."""
    try:
        header = fits.getheader(path)
    except (OSError, ValueError):
        return False
    return header.get(_VERSION_KEY) == optics.OPTICS_MODEL_VERSION and "NUM_PSFS" in header


def jwst_like_psf_grid_path(filter="F200W", detector="NRCA1", num_psfs=16,
                            fov_pixels=101, oversampling=4, *, cache_dir=None, create=True,
                            progress_bar=False):
    """Path of the cached JWST-like ePSF grid file, computing and writing it when missing.

    Parameters
    ----------
    filter, detector, num_psfs, fov_pixels, oversampling
        As in :func:`write_jwst_like_psf_grid`.
    cache_dir : str or os.PathLike, optional
        Directory of the cache (created if needed); default :func:`default_cache_dir`.
    create : bool, optional
        If False only return the path, whether or not the file exists.
    progress_bar : bool, optional
        Show a progress bar while the grid is computed (first use only).

    Returns
    -------
    path : str
        ``<cache_dir>/nircam_<det>_<filter>_fovp<fov>_samp<os>_npsf<n>_crowdphot-v<k>.fits``.

    Examples
    --------
    >>> p = jwst_like_psf_grid_path(cache_dir='/tmp/cache', create=False)
    >>> os.path.basename(p)[:39]
    'nircam_nrca1_f200w_fovp101_samp4_npsf16'
    """
    filt, det, num_psfs, fov_pixels, oversampling = optics.check_grid_args(
        filter, detector, num_psfs, fov_pixels, oversampling
    )
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a str or os.PathLike, got {type(cache_dir).__name__}")
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    path = directory / _file_name(filt, det, num_psfs, fov_pixels, oversampling)
    if create and not _is_current(path):
        directory.mkdir(parents=True, exist_ok=True)
        _write_unchecked(path, filt, det, num_psfs, fov_pixels, oversampling, progress_bar)
    return os.fspath(path)


def jwst_like_psf_grid(filter="F200W", detector="NRCA1", num_psfs=16,
                       fov_pixels=101, oversampling=4, *, cache_dir=None, progress_bar=False):
    """A realistic JWST/NIRCam-like gridded ePSF model, available offline.

    A stand-in for the STPSF grid ``nircam_nrca1_f200w_fovp101_samp4_npsf16.fits`` of the
    STScI notebook, with the same layout, normalisation and defaults. The grid is computed
    from first principles by :mod:`crowdphot.core.optics` on first use (about 10 s on one core
    for the default grid) and read from the cache afterwards.

    Parameters
    ----------
    filter, detector, num_psfs, fov_pixels, oversampling
        As in :func:`write_jwst_like_psf_grid`.
    cache_dir, progress_bar : optional
        As in :func:`jwst_like_psf_grid_path`.

    Returns
    -------
    model : crowdphot.models.gridded.GriddedPSFModel
        ``model.data`` has shape ``(num_psfs, fov_pixels * oversampling, ...)``.

    Examples
    --------
    >>> psf_model = jwst_like_psf_grid()  # doctest: +SKIP
    >>> psf_model.data.shape  # doctest: +SKIP
    (16, 404, 404)
    """
    from crowdphot.models.gridded import GriddedPSFModel

    path = jwst_like_psf_grid_path(filter, detector, num_psfs, fov_pixels, oversampling,
                                   cache_dir=cache_dir, progress_bar=progress_bar)
    return GriddedPSFModel.read(path)

