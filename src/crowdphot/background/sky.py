"""A sky map for PSF photometry: Background2D with the sources masked.

Stars bias any box statistic upwards (their wings and faint neighbours are "sky" to a clipper),
and a PSF fit that assumes zero sky turns every count of sky left in the image into flux. The
recipe here is SourceExtractor's and DAOPHOT's in spirit:

1. a first :class:`~crowdphot.background.background_2d.Background2D` map (sigma-clipped
   SourceExtractor mode in boxes of ``box_size``, 3x3 median filtered);
2. every pixel whose 3x3 mean is more than ``nsigma`` (smoothed) RMS above it, grown by
   ``dilate`` pixels, is masked as a source (the cores *and* the wings of the stars);
3. the map is recomputed from the unmasked pixels only (``iterations`` times).

Boxes that lose too much to the source mask are filled from their neighbours, as
``Background2D`` does.
"""

from __future__ import annotations

import numpy as np

from crowdphot.background.background_2d import Background2D

__all__ = ["auto_box_size", "estimate_sky", "source_mask"]


def auto_box_size(shape, *, fwhm=None, default=64):
    """Box size for the sky map of an image of ``shape``.

    ``default`` (64 px, many PSF widths yet small against the gradients of real skies), at
    least ``10 * fwhm``, and at most a quarter of the shorter side (at least 8 px) so that small
    images still get a few boxes.

    Examples
    --------
    >>> auto_box_size((2048, 2048)), auto_box_size((128, 128)), auto_box_size((50, 900))
    (64, 32, 12)
    """
    box = float(default)
    if fwhm is not None and np.isfinite(fwhm) and fwhm > 0:
        box = max(box, 10.0 * fwhm)
    box = min(box, max(8.0, min(shape) / 4.0))
    return int(round(box))


def _box3(a):
    """Sum over each pixel's 3x3 neighbourhood (zero outside the image)."""
    p = np.pad(a, 1)
    ny, nx = a.shape
    rows = p[:-2] + p[1:-1] + p[2:]
    return rows[:, :nx] + rows[:, 1:nx + 1] + rows[:, 2:]


def source_mask(residual, rms, *, nsigma=3.0, dilate=4, mask=None):
    """Pixels where the 3x3 mean of ``residual`` (image minus sky) is significant, grown.

    The 3x3 mean has a third of the pixel noise, so faint wings are caught while single noise
    pixels are not: a pixel is a source pixel when its 3x3 mean exceeds
    ``nsigma * rms / 3``.

    Parameters
    ----------
    residual : ndarray of shape (ny, nx)
    rms : float or ndarray of shape (ny, nx)
    nsigma : float, optional
    dilate : int, optional
        Grow the detected pixels by this many pixels (a square), to cover the stars' wings.
    mask : ndarray of bool, optional
        Pixels to ignore (never sources, returned unchanged).

    Returns
    -------
    sources : ndarray of bool, shape (ny, nx)

    Examples
    --------
    >>> img = np.zeros((9, 9)); img[4, 4] = 10.0
    >>> int(source_mask(img, 1.0, dilate=0).sum()), int(source_mask(img, 1.0, dilate=1).sum())
    (9, 25)
    """
    from scipy import ndimage

    finite = np.isfinite(residual)
    if mask is not None:
        finite &= ~mask
    if finite.all():  # the usual case: the neighbour count only drops at the edges
        clean = residual.astype(np.float32)
        cy = np.full(residual.shape[0], 3.0, dtype=np.float32)
        cx = np.full(residual.shape[1], 3.0, dtype=np.float32)
        cy[[0, -1]] -= 1.0
        cx[[0, -1]] -= 1.0
        count = cy[:, None] * cx[None, :]
    else:
        clean = np.where(finite, residual, 0.0).astype(np.float32)
        count = _box3(finite.astype(np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        hot = _box3(clean) > (nsigma * np.asarray(rms, dtype=np.float32) / 3.0) * count
    if mask is not None:
        hot &= ~mask
    if dilate > 0 and hot.any():
        size = 2 * int(dilate) + 1  # separable: two 1-D running maxima
        grown = ndimage.maximum_filter1d(hot.view(np.uint8), size, axis=0, mode="constant")
        hot = ndimage.maximum_filter1d(grown, size, axis=1, mode="constant").astype(bool)
    return hot


def estimate_sky(data, *, mask=None, box_size=None, fwhm=None, nsigma=3.0, dilate=None,
                 iterations=1, filter_size=3):
    """Sky and sky-RMS maps of an image with its stars masked.

    Parameters
    ----------
    data : array_like of shape (ny, nx)
        The image; non-finite pixels are ignored.
    mask : array_like of bool, shape (ny, nx), optional
        True for bad pixels (also ignored).
    box_size : int or (int, int), optional
        Box size; default :func:`auto_box_size`.
    fwhm : float, optional
        PSF FWHM in pixels: sets the default box (>= 10 FWHM) and source-mask growth
        (``dilate`` default ``max(3, 1.5 * fwhm)``).
    nsigma : float, optional
        Source-mask threshold in units of the RMS of the 3x3-smoothed sky (default 3).
    dilate : int, optional
        Growth of the source mask in pixels.
    iterations : int, optional
        Source-masking passes after the first map (default 1; a second pass moves the notebook
        scene's sky by 0.006, a hundredth of the noise).
    filter_size : int, optional
        Median filter of the mesh (default 3).

    Returns
    -------
    sky, rms : ndarray of float64, shape (ny, nx)
    sources : ndarray of bool, shape (ny, nx)
        The final source mask.

    Raises
    ------
    ValueError
        When no sky can be measured (every pixel masked or non-finite).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = 20.0 + rng.normal(0.0, 1.0, (256, 256))
    >>> img[100:103, 50:53] += 500.0
    >>> sky, rms, sources = estimate_sky(img)
    >>> bool(abs(np.median(sky) - 20.0) < 0.05), bool(sources[101, 51])
    (True, True)
    """
    import warnings

    from astropy.utils.exceptions import AstropyUserWarning

    arr = np.asarray(getattr(data, "value", data), dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"data must be a 2D array, got {arr.ndim} dimension(s)")
    bad = ~np.isfinite(arr)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if bad.all():
        raise ValueError("cannot estimate a sky: every pixel is masked or non-finite")
    if box_size is None:
        box_size = auto_box_size(arr.shape, fwhm=fwhm)
    if dilate is None:
        dilate = int(np.ceil(max(3.0, 1.5 * fwhm))) if fwhm else 4
    sources = np.zeros(arr.shape, bool)

    def _map(excluded, exclude_percentile):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)  # non-finite pixels: masked
            bkg = Background2D(arr, box_size, mask=excluded, filter_size=filter_size,
                               exclude_percentile=exclude_percentile)
            return np.asarray(bkg.background, float), np.asarray(bkg.background_rms, float)

    try:
        sky, rms = _map(bad if bad.any() else None, 50.0)
    except ValueError:  # heavily masked everywhere: use every box with any valid pixel
        sky, rms = _map(bad if bad.any() else None, 100.0)
    for _ in range(max(0, int(iterations))):
        sources = source_mask(arr - sky, rms, nsigma=nsigma, dilate=dilate, mask=bad)
        try:
            # masked sources leave holes: a box is kept while a quarter of it is sky
            sky, rms = _map(bad | sources, 75.0)
        except ValueError:  # the sources cover everything: keep the previous map
            break
    return sky, rms, sources
