"""Helpers of joint multi-exposure fits on the sky: detection on a combined stack, residuals.

:func:`detect_on_stack` finds sources when no catalog is given: every exposure's
signal-to-noise image is resampled (bilinear) onto one grid -- the first exposure's pixels,
grown to the union of all footprints -- and averaged (``sum(snr) / sqrt(n)`` per pixel, then
normalised by its robust scatter), so a source seen by several exposures stands out by
``sqrt(n)`` more; DAOFIND runs on that stack and its positions go back to the sky through
the first exposure's WCS.

:func:`residual_images` renders the fitted sources into every exposure (its own WCS and PSF)
and returns ``data - model``.
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.table import Table

__all__ = ["detect_on_stack", "residual_images"]

#: Largest stack grid side in pixels (the union footprint is clipped to this).
MAX_STACK_SIDE = 16384
#: Coordinate maps between exposures are evaluated every this many pixels and interpolated.
MAP_STEP = 8


def _fwhm_of(psf_model):
    """FWHM in pixels: the model's own ``fwhm`` or the half-maximum area of a centred stamp."""
    fwhm = getattr(psf_model, "fwhm", None)
    val = getattr(fwhm, "value", fwhm)
    if val is not None and np.ndim(val) == 0 and np.isfinite(val) and val > 0:
        return float(val)
    stamp = np.asarray(psf_model.psf_stamps([12.0], [12.0], (25, 25), xlo=[0], ylo=[0])[0])
    area = float(np.count_nonzero(stamp >= 0.5 * np.nanmax(stamp)))
    return max(2.0 * np.sqrt(area / np.pi), 1.0)


def _robust_sigma(a):
    a = a[np.isfinite(a)]
    if a.size == 0:
        return np.nan
    med = np.median(a)
    return 1.4826 * float(np.median(np.abs(a - med)))


def _grid_map(ref_wcs, wcs, x0, y0, shape):
    """Pixel coordinates in ``wcs`` of the stack grid pixels (bilinear from a coarse map)."""
    from scipy.ndimage import map_coordinates

    ny, nx = shape
    gy = np.arange(0, ny + MAP_STEP, MAP_STEP, dtype=float)
    gx = np.arange(0, nx + MAP_STEP, MAP_STEP, dtype=float)
    xx, yy = np.meshgrid(gx + x0, gy + y0)
    ra, dec = ref_wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    ex, ey = wcs.all_world2pix(ra, dec, 0, quiet=True)
    ex, ey = np.asarray(ex).reshape(xx.shape), np.asarray(ey).reshape(xx.shape)
    iy, ix = np.mgrid[0:ny, 0:nx] / MAP_STEP
    return (map_coordinates(ex, [iy, ix], order=1, mode="nearest"),
            map_coordinates(ey, [iy, ix], order=1, mode="nearest"))


def detect_on_stack(exposures, *, threshold=5.0, fwhm=None):
    """Find sources on the combined signal-to-noise stack of several exposures.

    Parameters
    ----------
    exposures : sequence of crowdphot.pipeline.multi.Exposure
    threshold : float, optional
        Detection threshold in units of the stack's robust noise.
    fwhm : float, optional
        DAOFIND kernel FWHM in stack (first exposure's) pixels; default from the first
        exposure's PSF model.

    Returns
    -------
    catalog : astropy.table.Table
        ``ra``, ``dec`` (deg), ``id``; raises ``ValueError`` when nothing is found.

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> from crowdphot import CircularGaussianPRF
    >>> from crowdphot.core.render import render_image
    >>> from crowdphot.pipeline.multi import Exposure
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.cdelt = [-2e-5, 2e-5]; w.wcs.crpix = [21, 21]; w.wcs.crval = [10.0, 20.0]
    >>> psf = CircularGaussianPRF(fwhm=2.5)
    >>> img = render_image((41, 41), psf, np.array([20.2]), np.array([19.6]), np.array([500.0]))
    >>> noise = np.random.default_rng(0).normal(size=img.shape)
    >>> e = Exposure(img + noise, np.ones(img.shape), None, w, psf, "F1")
    >>> cat = detect_on_stack([e, e])
    >>> x, y = w.all_world2pix(cat["ra"], cat["dec"], 0)
    >>> len(cat), round(float(x[0]), 0), round(float(y[0]), 0)
    (1, 20.0, 20.0)
    """
    from scipy.ndimage import map_coordinates

    from crowdphot.detection import DAOStarFinder

    ref = exposures[0]
    ref_wcs = ref.wcs.celestial
    # union footprint in the reference pixels
    xs, ys = [], []
    for e in exposures:
        ny, nx = e.data.shape
        cx = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
        cy = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
        ra, dec = e.wcs.celestial.all_pix2world(cx, cy, 0)
        x, y = ref_wcs.all_world2pix(ra, dec, 0, quiet=True)
        xs.append(x), ys.append(y)
    boxes = np.array([[x.min(), x.max(), y.min(), y.max()] for x, y in zip(xs, ys, strict=True)])
    names = [e.name or f"exposures[{k}]" for k, e in enumerate(exposures)]
    if len(exposures) > 1:
        for k in range(len(exposures)):
            other = np.delete(boxes, k, axis=0)
            hit = ((other[:, 0] < boxes[k, 1]) & (other[:, 1] > boxes[k, 0])
                   & (other[:, 2] < boxes[k, 3]) & (other[:, 3] > boxes[k, 2]))
            if hit.any():
                continue
            if len(exposures) == 2:
                raise ValueError(f"{names[0]} and {names[1]} do not overlap on the sky (check "
                                 "their WCS)")
            raise ValueError(f"{names[k]} does not overlap any other exposure on the sky "
                             "(check its WCS)")
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    x0, y0 = int(np.floor(xs.min())), int(np.floor(ys.min()))
    nx = int(np.ceil(xs.max())) - x0 + 1
    ny = int(np.ceil(ys.max())) - y0 + 1
    if max(nx, ny) > MAX_STACK_SIDE:
        raise ValueError(f"the exposures span {ny} x {nx} pixels of the first one, more than "
                         f"{MAX_STACK_SIDE} per side for a detection stack; give a catalog")
    total = np.zeros((ny, nx))
    count = np.zeros((ny, nx))
    for e in exposures:
        ex, ey = _grid_map(ref_wcs, e.wcs.celestial, x0, y0, (ny, nx))
        data = np.array(e.data, dtype=float)
        bad = ~np.isfinite(data)
        if e.mask is not None:
            bad |= e.mask
        if e.error is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                snr = data / e.error
            bad |= ~(np.isfinite(snr) & (e.error > 0))
        else:
            snr = data / _robust_sigma(np.where(bad, np.nan, data))
        snr = np.where(bad, np.nan, snr)
        v = map_coordinates(snr, [ey, ex], order=1, mode="constant", cval=np.nan)
        ok = np.isfinite(v)
        total[ok] += v[ok]
        count[ok] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        stack = np.where(count > 0, total / np.sqrt(count), np.nan)
    sigma = _robust_sigma(stack)
    if not sigma > 0:
        raise ValueError("detection stack is blank (no valid pixel); give a catalog")
    stack = (stack - np.nanmedian(stack)) / sigma
    mask = ~np.isfinite(stack)
    if fwhm is None:
        fwhm = _fwhm_of(ref.psf_model)
    found = DAOStarFinder(threshold=float(threshold), fwhm=float(fwhm))(
        np.where(mask, 0.0, stack), mask=mask)
    if found is None or len(found) == 0:
        raise ValueError(f"no sources found on the stack of {len(exposures)} exposures "
                         f"(threshold {threshold} sigma); lower the threshold or give a catalog")
    x = np.asarray(found["x_centroid"], dtype=float) + x0
    y = np.asarray(found["y_centroid"], dtype=float) + y0
    ra, dec = ref_wcs.all_pix2world(x, y, 0)
    return Table({"id": np.arange(1, len(x) + 1), "ra": np.asarray(ra) * u.deg,
                  "dec": np.asarray(dec) * u.deg})


def residual_images(exposures, table, *, model_shape=None):
    """``data - model`` of every exposure for the sources of a joint fit.

    Parameters
    ----------
    exposures : sequence of crowdphot.pipeline.multi.Exposure
    table : astropy.table.Table
        The result of :func:`crowdphot.pipeline.multi.fit_exposures` (``ra``, ``dec``,
        ``flux_<FILTER>``); rows with a non-finite position or flux are skipped.
    model_shape : int or (ny, nx), optional
        Stamp on which each source is rendered (default: the PSF's support).

    Returns
    -------
    residuals : list of ndarray of shape (ny_e, nx_e)
        One per exposure (masked pixels NaN), in the data unit's values.

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> from crowdphot import CircularGaussianPRF
    >>> from crowdphot.pipeline.multi import Exposure
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.cdelt = [-2e-5, 2e-5]; w.wcs.crpix = [16, 16]; w.wcs.crval = [10.0, 20.0]
    >>> e = Exposure(np.zeros((31, 31)), None, None, w, CircularGaussianPRF(fwhm=2.0), "F1")
    >>> t = Table({"ra": [10.0], "dec": [20.0], "flux_F1": [100.0]})
    >>> r = residual_images([e], t)[0]
    >>> round(float(-r.sum()), 3)
    100.0
    """
    from crowdphot.core.render import render_image

    ra = np.asarray(u.Quantity(table["ra"], u.deg).value if getattr(table["ra"], "unit", None)
                    else table["ra"], dtype=float)
    dec = np.asarray(u.Quantity(table["dec"], u.deg).value
                     if getattr(table["dec"], "unit", None) else table["dec"], dtype=float)
    out = []
    for e in exposures:
        flux = np.asarray(getattr(table[f"flux_{e.filter_name}"], "value",
                                  table[f"flux_{e.filter_name}"]), dtype=float)
        ok = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(flux)
        x, y = e.wcs.all_world2pix(ra[ok], dec[ok], 0, quiet=True)
        model = render_image(e.data.shape, e.psf_model, np.asarray(x), np.asarray(y), flux[ok],
                             model_shape=model_shape)
        res = e.data - model
        if e.mask is not None:
            res = np.where(e.mask, np.nan, res)
        out.append(res)
    return out
