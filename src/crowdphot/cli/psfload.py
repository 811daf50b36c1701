"""PSF models from the ``--psf`` argument: ``builtin:FILTER`` or a FITS file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from crowdphot.cli.errors import CLIError

__all__ = ["load_psf", "header_pixel_scale"]


# keywords giving a PSF image's (or a science image's) pixel scale, in arcsec unless noted
_SCALE_KEYS = ("PIXELSCL", "PIXSCALE", "PIXSCAL", "PIXSCAL1", "PXSCAL1", "SECPIX", "SECPIX1",
               "PLATESC", "SCALE")
_OVERSAMP_KEYS = ("OVERSAMP", "DET_SAMP", "OVERSAMPLE", "OVERSMPL", "SAMPLING")


def header_pixel_scale(header):
    """Pixel scale in arcsec from a header's scale keywords or its CDELT/CD matrix.

    Returns None when the header does not say.

    Examples
    --------
    >>> from astropy.io import fits
    >>> header_pixel_scale(fits.Header({'CDELT1': -0.3 / 3600}))
    0.3
    """
    for key in _SCALE_KEYS:
        value = header.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            return abs(float(value))
    unit = str(header.get("CUNIT1", "deg")).strip().lower() or "deg"
    factor = {"deg": 3600.0, "arcmin": 60.0, "arcsec": 1.0}.get(unit)
    if factor is None:
        return None
    if "CD1_1" in header or "CD2_1" in header:
        value = np.hypot(float(header.get("CD1_1", 0.0)), float(header.get("CD2_1", 0.0)))
    else:
        value = abs(float(header.get("CDELT1", 0.0) or 0.0))
    return round(value * factor, 12) if value > 0 else None


def _image_oversampling(path, header, oversampling, image_scale):
    """Oversampling of a PSF image: the option, else OVERSAMP-like keys, else pixel scales."""
    declared = next((header[k] for k in _OVERSAMP_KEYS if k in header), None)
    if declared is not None:
        try:
            declared = int(declared)
        except (TypeError, ValueError):
            raise CLIError(f"{path}: OVERSAMP keyword {declared!r} is not an integer; pass "
                           "--psf-oversampling N") from None
        if declared < 1:
            raise CLIError(f"{path}: OVERSAMP must be >= 1, got {declared}")
    if oversampling is not None:
        if declared is not None and declared != oversampling:
            warnings.warn(f"{path} says OVERSAMP={declared} but --psf-oversampling is "
                          f"{oversampling}; using {oversampling}", UserWarning, stacklevel=3)
        return oversampling
    if declared is not None:
        return declared
    psf_scale = header_pixel_scale(header)
    if psf_scale is None or image_scale is None:
        return 1
    ratio = image_scale / psf_scale
    n = int(round(ratio))
    if n < 1 or abs(ratio - n) > 0.05 * ratio:
        raise CLIError(f"{path}: the PSF is sampled at {psf_scale:.4g}\"/px and the image at "
                       f"{image_scale:.4g}\"/px, a ratio of {ratio:.3g} that is not a whole "
                       "number; resample the PSF or pass --psf-oversampling N")
    if n > 1:
        warnings.warn(f"{path} has no OVERSAMP keyword; its pixel scale ({psf_scale:.4g}\") "
                      f"and the image's ({image_scale:.4g}\") make it {n}x oversampled",
                      UserWarning, stacklevel=3)
    return n


def _psf_from_image_hdu(path, hdu, *, oversampling=None, image_scale=None):
    from crowdphot.models.image import ImagePSF

    data = np.asarray(hdu.data, dtype=float)
    if not np.all(np.isfinite(data)) or np.sum(data) <= 0:
        raise CLIError(f"{path}: the PSF image has non-finite values or a non-positive sum")
    # a PSF peaks at the centre of its image; a science frame given by mistake does not
    peak = np.array(np.unravel_index(np.argmax(data), data.shape))
    centre = (np.array(data.shape) - 1) / 2
    if np.any(np.abs(peak - centre) > np.maximum(3, 0.1 * np.array(data.shape))):
        px, py = (int(v) for v in peak[::-1])
        raise CLIError(f"{path}: not a PSF image (its brightest pixel ({px}, {py}) is far "
                       "from the centre); give a PSF image, an STPSF grid or an STDPSF file")
    oversampling = _image_oversampling(path, hdu.header, oversampling, image_scale)
    # an ePSF sampled `oversampling` times per pixel sums to oversampling**2 for unit flux
    return ImagePSF(data / np.sum(data) * oversampling**2, oversampling=oversampling)


def load_psf(spec, *, detector_id=None, oversampling=None, image_scale=None,
             progress_bar=False):
    """PSF model from ``builtin:FILTER`` or a FITS file (STPSF/STDPSF grid or an image PSF).

    Parameters
    ----------
    spec : str
        ``builtin:FILTER[:DETECTOR]`` (any NIRCam filter; detector NRCA1-4, NRCB1-4, NRCA5,
        NRCB5, NRCALONG, NRCBLONG; default module A of the filter's channel) for the
        built-in JWST-like grid, else the
        path of a FITS file: a 3D STPSF/WebbPSF or STDPSF grid (read as a
        ``GriddedPSFModel``) or a 2D PSF image (the first 2D image HDU, normalised to unit
        flux, oversampled by its ``OVERSAMP`` keyword; read as an ``ImagePSF``).
    detector_id : int, optional
        Detector of a multi-detector STDPSF file.
    oversampling : int, optional
        Oversampling of a PSF image (overrides its keywords).
    image_scale : float, optional
        The science image's pixel scale in arcsec: a PSF image without an ``OVERSAMP``
        keyword but with a pixel scale (``PIXELSCL``, ``PIXSCALE``, ``SECPIX``, ``CDELT1``,
        ...) is taken as ``image_scale / psf_scale`` times oversampled.
    progress_bar : bool, optional
        Progress bar while a built-in grid is computed (first use only).

    Returns
    -------
    model : GriddedPSFModel or ImagePSF

    Raises
    ------
    CLIError
        Missing file, not FITS, or a FITS file that holds no PSF.

    Examples
    --------
    >>> load_psf('builtin:F200W').data.shape  # doctest: +SKIP
    (16, 404, 404)
    """

    if spec.lower().split(":", 1)[0] == "builtin":
        from crowdphot.cli.psfchoice import builtin_parts
        from crowdphot.datasets.jwst import jwst_like_psf_grid, nircam_filter_detector

        want_filter, want_detector = builtin_parts(spec)
        try:
            filt, det = nircam_filter_detector(want_filter or "F200W", None, want_detector)
        except ValueError as exc:
            raise CLIError(f"--psf {spec}: {exc}") from None
        return jwst_like_psf_grid(filter=filt, detector=det, progress_bar=progress_bar)
    from crowdphot.io.fits import open_fits

    path = Path(spec)
    if not path.is_file():
        raise CLIError(f"PSF file not found: {path}")
    with warnings.catch_warnings():
        # a trailing 2880-byte block (Anderson's STDPSF libraries have one) is harmless
        warnings.filterwarnings("ignore", message=".*ignoring unreadable bytes")
        warnings.filterwarnings("ignore", message="Unexpected extra padding")
        hdul = open_fits(path, "PSF")
    with hdul:
        primary = hdul[0]
        if primary.data is not None and primary.data.ndim == 3:
            keys = set(primary.header)
            if not (any(k.startswith("DET_YX") for k in keys) or "NXPSFS" in keys):
                raise CLIError(f"{path}: a 3D cube without STPSF (DET_YX*) or STDPSF (NXPSFS) "
                               "keywords is not a PSF grid")
            from crowdphot.models.gridded import GriddedPSFModel

            kwargs = {} if detector_id is None else {"detector_id": detector_id}
            try:
                return GriddedPSFModel.read(path, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any reader failure means a bad grid file
                raise CLIError(f"{path}: cannot read the PSF grid ({exc})") from None
        if "SCI" in hdul:
            raise CLIError(f"{path}: a science image (it has a SCI extension), not a PSF file")
        image = next((h for h in hdul if h.is_image and h.data is not None
                      and h.data.ndim == 2), None)
        if image is None:
            raise CLIError(f"{path}: not a PSF file (expected an STPSF/STDPSF grid or a 2D "
                           "PSF image)")
        return _psf_from_image_hdu(path, image, oversampling=oversampling,
                                   image_scale=image_scale)
