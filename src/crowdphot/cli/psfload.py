"""PSF models from the ``--psf`` argument: ``builtin:FILTER`` or a FITS file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crowdphot.cli.errors import CLIError

__all__ = ["load_psf"]


def _psf_from_image_hdu(path, hdu):
    from crowdphot.models.image import ImagePSF

    data = np.asarray(hdu.data, dtype=float)
    if not np.all(np.isfinite(data)) or np.sum(data) <= 0:
        raise CLIError(f"{path}: the PSF image has non-finite values or a non-positive sum")
    # a PSF peaks at the centre of its image; a science frame given by mistake does not
    peak = np.array(np.unravel_index(np.argmax(data), data.shape))
    centre = (np.array(data.shape) - 1) / 2
    if np.any(np.abs(peak - centre) > np.maximum(3, 0.1 * np.array(data.shape))):
        raise CLIError(f"{path}: not a PSF image (its brightest pixel {tuple(peak[::-1])} is "
                       "far from the centre)")
    header = hdu.header
    oversampling = header.get("OVERSAMP", header.get("DET_SAMP", 1))
    try:
        oversampling = int(oversampling)
    except (TypeError, ValueError):
        raise CLIError(f"{path}: OVERSAMP keyword {oversampling!r} is not an integer") from None
    if oversampling < 1:
        raise CLIError(f"{path}: OVERSAMP must be >= 1, got {oversampling}")
    # an ePSF sampled `oversampling` times per pixel sums to oversampling**2 for unit flux
    return ImagePSF(data / np.sum(data) * oversampling**2, oversampling=oversampling)


def load_psf(spec, *, detector_id=None):
    """PSF model from ``builtin:FILTER`` or a FITS file (STPSF/STDPSF grid or an image PSF).

    Parameters
    ----------
    spec : str
        ``builtin:F200W`` (any NIRCam wide filter) for the built-in JWST-like grid, else the
        path of a FITS file: a 3D STPSF/WebbPSF or STDPSF grid (read as a
        ``GriddedPSFModel``) or a 2D PSF image (the first 2D image HDU, normalised to unit
        flux, oversampled by its ``OVERSAMP`` keyword; read as an ``ImagePSF``).
    detector_id : int, optional
        Detector of a multi-detector STDPSF file.

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
    from astropy.io import fits

    if spec.lower().startswith("builtin:"):
        from crowdphot.datasets.jwst import jwst_like_psf_grid

        return jwst_like_psf_grid(filter=spec.split(":", 1)[1].upper())
    path = Path(spec)
    if not path.is_file():
        raise CLIError(f"PSF file not found: {path}")
    try:
        hdul = fits.open(path)
    except OSError as exc:
        raise CLIError(f"{path}: not a readable FITS file ({exc})") from None
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
        return _psf_from_image_hdu(path, image)
