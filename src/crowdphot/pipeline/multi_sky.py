"""Helpers of joint multi-exposure fits on the sky: detection on a combined stack, residuals.

:func:`detect_on_stack` finds sources when no catalog is given: every exposure's
signal-to-noise image is resampled (bilinear) onto one grid -- the first exposure's pixels,
grown to the union of all footprints -- and averaged (``sum(snr) / sqrt(n)`` per pixel, then
normalised by its robust scatter), so a source seen by several exposures stands out by
``sqrt(n)`` more; DAOFIND runs on that stack and its positions go back to the sky through
the first exposure's WCS. The normalisation statistics (and the noise of an exposure without
errors) use the pixels at a regular stride (:func:`sample_step`, every pixel up to 4 million),
so that :func:`crowdphot.pipeline.multi_tiles.detect_tiled` reproduces them tile by tile.

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
#: Stack and exposure noise statistics use at most about this many pixels (a regular stride).
MAX_SAMPLES = 4_000_000


def fwhm_of(psf_model):
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
    ref_wcs, x0, y0, ny, nx = stack_frame(exposures)
    if max(nx, ny) > MAX_STACK_SIDE:
        raise ValueError(f"the exposures span {ny} x {nx} pixels of the first one, more than "
                         f"{MAX_STACK_SIDE} per side for a detection stack; give a catalog "
                         "or fit in sky tiles")
    scales = [exposure_noise(e) if e.error is None else None for e in exposures]
    stack = build_stack(exposures, scales, ref_wcs, x0, y0, (ny, nx))
    step = sample_step(ny, nx)
    median, sigma = stack_stats(stack[::step, ::step])
    if fwhm is None:
        fwhm = fwhm_of(exposures[0].psf_model)
    x, y = find_on_stack(stack, median, sigma, fwhm, threshold)
    if len(x) == 0:
        raise ValueError(f"no sources found on the stack of {len(exposures)} exposures "
                         f"(threshold {threshold} sigma); lower the threshold or give a catalog")
    return stack_catalog(ref_wcs, x + x0, y + y0)


def stack_catalog(ref_wcs, x, y):
    """``id, ra, dec`` table of stack-grid positions (reference pixels)."""
    ra, dec = ref_wcs.all_pix2world(x, y, 0)
    return Table({"id": np.arange(1, len(x) + 1), "ra": np.asarray(ra) * u.deg,
                  "dec": np.asarray(dec) * u.deg})


def _shape_of(e):
    return e.shape if not hasattr(e, "data") else e.data.shape


def stack_frame(exposures):
    """``(ref_wcs, x0, y0, ny, nx)``: the stack grid, the first exposure's pixels grown to the
    union footprint (grid pixel ``[i, j]`` is reference pixel ``(x0 + j, y0 + i)``); raises
    ``ValueError`` when an exposure overlaps no other. Reads only shapes and WCSs."""
    ref_wcs = exposures[0].wcs.celestial
    xs, ys = [], []
    for e in exposures:
        ny, nx = _shape_of(e)
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
    return (ref_wcs, x0, y0, int(np.ceil(ys.max())) - y0 + 1,
            int(np.ceil(xs.max())) - x0 + 1)


def sample_step(ny, nx):
    """Stride of the pixels whose statistics normalise a stack or an exposure (every pixel up
    to ``MAX_SAMPLES``), so that tiles reproduce the whole-field values exactly."""
    return max(1, int(np.ceil(np.sqrt(ny * nx / MAX_SAMPLES))))


def exposure_noise(e, *, rows=None):
    """Robust noise of an exposure without errors, from its pixels at stride
    :func:`sample_step` (an :class:`~crowdphot.pipeline.multi_tiles.ExposureFile` is read in
    strips of ``rows`` rows)."""
    ny, nx = _shape_of(e)
    s = sample_step(ny, nx)
    if hasattr(e, "data"):
        data = e.data[::s, ::s]
        bad = ~np.isfinite(data)
        if e.mask is not None:
            bad |= e.mask[::s, ::s]
        return _robust_sigma(np.where(bad, np.nan, data))
    rows = max(s, (rows or max(1, 2 ** 22 // nx)) // s * s)
    parts = []
    for y0 in range(0, ny, rows):
        data, _, mask = e.planes.cut(y0, min(y0 + rows, ny), 0, nx)
        data, bad = data[::s, ::s], ~np.isfinite(data[::s, ::s])
        if mask is not None:
            bad |= mask[::s, ::s]
        parts.append(data[~bad])
    return _robust_sigma(np.concatenate(parts))


def build_stack(exposures, scales, ref_wcs, x0, y0, shape):
    """``sum(snr) / sqrt(n)`` on the grid box of ``shape`` at reference pixel ``(x0, y0)``
    (NaN where no exposure has a valid pixel); ``scales[k]`` is the noise of exposure ``k``
    when it has no error array."""
    from scipy.ndimage import map_coordinates

    ny, nx = shape
    total = np.zeros((ny, nx))
    count = np.zeros((ny, nx))
    for e, scale in zip(exposures, scales, strict=True):
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
            snr = data / scale
        snr = np.where(bad, np.nan, snr)
        v = map_coordinates(snr, [ey, ex], order=1, mode="constant", cval=np.nan)
        ok = np.isfinite(v)
        total[ok] += v[ok]
        count[ok] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.sqrt(count), np.nan)


def stack_stats(values):
    """``(median, robust sigma)`` of the finite stack values; raises when there are none."""
    values = np.asarray(values, dtype=float).ravel()
    values = values[np.isfinite(values)]
    sigma = _robust_sigma(values)
    if not sigma > 0:
        raise ValueError("detection stack is blank (no valid pixel); give a catalog")
    return float(np.median(values)), sigma


def find_on_stack(stack, median, sigma, fwhm, threshold):
    """DAOFIND positions ``(x, y)`` (grid pixels) on the stack normalised by ``median`` and
    ``sigma``."""
    from crowdphot.detection import DAOStarFinder

    norm = (stack - median) / sigma
    mask = ~np.isfinite(norm)
    found = DAOStarFinder(threshold=float(threshold), fwhm=float(fwhm))(
        np.where(mask, 0.0, norm), mask=mask)
    if found is None or len(found) == 0:
        return np.zeros(0), np.zeros(0)
    return (np.asarray(found["x_centroid"], dtype=float),
            np.asarray(found["y_centroid"], dtype=float))


def residual_images(exposures, table, *, model_shape=None):
    """``data - model`` of every exposure for the sources of a joint fit.

    Parameters
    ----------
    exposures : sequence of crowdphot.pipeline.multi.Exposure
    table : astropy.table.Table
        The result of :func:`crowdphot.pipeline.multi.fit_exposures` (``ra``, ``dec``,
        ``flux_<FILTER>``, or ``flux_<FILTER>_<k>`` of exposure ``k``); rows with a
        non-finite position or flux are skipped.
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
    for k, e in enumerate(exposures):
        col = f"flux_{e.filter_name}_{k}"  # flux_per='exposure'
        col = col if col in table.colnames else f"flux_{e.filter_name}"
        flux = np.asarray(getattr(table[col], "value", table[col]), dtype=float)
        ok = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(flux)
        x, y = e.wcs.all_world2pix(ra[ok], dec[ok], 0, quiet=True)
        model = render_image(e.data.shape, e.psf_model, np.asarray(x), np.asarray(y), flux[ok],
                             model_shape=model_shape)
        res = e.data - model
        if e.mask is not None:
            res = np.where(e.mask, np.nan, res)
        out.append(res)
    return out
