"""Saturated stars: found from the DQ SATURATED plane and fitted on their unsaturated wings.

A JWST calibrated image flags the saturated core of a bright star in DQ (bit SATURATED) and
the default ``--dq-bits`` masks it, so a finder sees a hole ringed by bright wings: the star
itself is not found, and peaks on the ring may be fitted as faint false stars. Here every
connected patch of masked saturated pixels becomes one star: detections on its ring are
removed, and the star is fitted (position and flux free) in a box that reaches past the core
into the wings, with the neighbours' fitted models subtracted. Rows get ``saturated = True``
and the ``n_pixels_fit_partial`` flag (bit 1: the masked core was not fitted); a patch
without enough unsaturated pixels around it is reported, not fitted.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["saturated_patches", "add_saturated_stars", "MIN_WING_PIXELS", "MAX_BOX"]

#: fewest unmasked pixels in the box for a wing fit (3 parameters, with room for noise)
MIN_WING_PIXELS = 12
#: largest fit box for a saturated star (pixels)
MAX_BOX = 61


def saturated_patches(saturated, mask):
    """Centres and radii of connected patches of masked saturated pixels.

    Parameters
    ----------
    saturated : ndarray (ny, nx) bool
        DQ SATURATED pixels.
    mask : ndarray (ny, nx) bool or None
        Pixels excluded from the fit; only saturated pixels that are masked matter.

    Returns
    -------
    x, y : ndarray (n,)
        Centre of each patch (mean pixel position).
    radius : ndarray (n,)
        Half the larger side of the patch's bounding box.

    Examples
    --------
    >>> sat = np.zeros((9, 9), bool); sat[3:6, 4:7] = True
    >>> x, y, r = saturated_patches(sat, sat)
    >>> float(x[0]), float(y[0]), float(r[0])
    (5.0, 4.0, 1.5)
    """
    from scipy import ndimage

    hole = np.asarray(saturated, dtype=bool)
    if mask is not None:
        hole = hole & np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(hole, structure=np.ones((3, 3)))
    if n == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    index = np.arange(1, n + 1)
    y, x = (np.asarray(v) for v in zip(*ndimage.center_of_mass(hole, labels, index),
                                       strict=True))
    boxes = ndimage.find_objects(labels)
    radius = np.array([0.5 * max(b[0].stop - b[0].start, b[1].stop - b[1].start)
                       for b in boxes])
    return x.astype(float), y.astype(float), radius


def _values(col):
    return np.asarray(getattr(col, "value", col), dtype=float)


def add_saturated_stars(table, image, psf, *, fit_shape, fwhm, aperture_radius,
                        progress_bar=False):
    """Fit the saturated stars of ``image`` on their wings and merge them into ``table``.

    Parameters
    ----------
    table : QTable or None
        The catalog of the ordinary fit (finder mode).
    image : ImageData
        With ``saturated`` (DQ SATURATED pixels), ``mask``, ``data``, ``error``.
    psf : PSF model
    fit_shape : int
        The ordinary fit box; saturated stars get a larger one reaching the wings.
    fwhm : float
        Stars' FWHM in pixels (sets the width of the wing ring).

    Returns
    -------
    table : QTable or None
        The catalog without detections on the saturated cores' rings, plus one row per
        saturated star (``saturated`` column True, flag bit 1 set), sorted by ``id``.
    n_added : int

    Warns
    -----
    UserWarning
        Saturated patches with too few unsaturated pixels around them to fit.
    """
    from astropy.table import QTable, vstack

    from crowdphot.datasets.simulation import make_model_image
    from crowdphot.psf.photometry import PSFPhotometry

    if image.saturated is None or image.mask is None:
        return table, 0
    xs, ys, rs = saturated_patches(image.saturated, image.mask)
    if xs.size == 0:
        return table, 0
    data, mask = image.data, image.mask
    ny, nx = data.shape
    wing = max(3, int(np.ceil(2 * fwhm)))
    size = int(min(MAX_BOX, max(fit_shape, 2 * (int(np.ceil(rs.max())) + wing) + 1)))
    size += 1 - size % 2
    half = size // 2
    keep_rows = np.ones(0 if table is None else len(table), dtype=bool)
    if table is not None and len(table):
        tx, ty = _values(table["x_fit"]), _values(table["y_fit"])
        for x, y, r in zip(xs, ys, rs, strict=True):
            # peaks on the ring around a masked core are the saturated star, not stars
            keep_rows &= ~(np.hypot(tx - x, ty - y) <= r + max(2.0, fwhm))
    # enough unsaturated pixels in each star's box?
    usable = []
    for x, y in zip(xs, ys, strict=True):
        ix, iy = int(round(x)), int(round(y))
        sl = (slice(max(iy - half, 0), min(iy + half + 1, ny)),
              slice(max(ix - half, 0), min(ix + half + 1, nx)))
        usable.append(int(np.count_nonzero(~mask[sl])) >= MIN_WING_PIXELS)
    usable = np.array(usable)
    if not usable.all():
        warnings.warn(f"{int((~usable).sum())} saturated star(s) have fewer than "
                      f"{MIN_WING_PIXELS} unsaturated pixels in a {size} x {size} box and are "
                      "not in the catalog", UserWarning, stacklevel=2)
    if not usable.any():
        return (table[keep_rows] if table is not None else None), 0
    xs, ys = xs[usable], ys[usable]
    # subtract the neighbours' fitted models so the wings are the saturated star's own light
    work = data
    if table is not None and keep_rows.any():
        kept = table[keep_rows]
        kx, ky, kf = (_values(kept[c]) for c in ("x_fit", "y_fit", "flux_fit"))
        near = np.zeros(len(kept), dtype=bool)
        for x, y in zip(xs, ys, strict=True):
            near |= np.hypot(kx - x, ky - y) < size
        near &= np.isfinite(kx) & np.isfinite(ky) & np.isfinite(kf)
        if near.any():
            params = QTable({"x_0": kx[near], "y_0": ky[near], "flux": kf[near]})
            work = data - make_model_image(data.shape, psf, params, progress_bar=False)
    init = QTable({"x_init": xs, "y_init": ys,
                   "flux_init": _linear_flux(work, mask, psf, xs, ys, half)})
    phot = PSFPhotometry(psf, (size, size), aperture_radius=aperture_radius,
                         progress_bar=progress_bar, group_warning_threshold=10**9)
    fitted = phot(work, mask=mask, error=image.error, init_params=init)
    if fitted is None or len(fitted) == 0:
        return (table[keep_rows] if table is not None else None), 0
    fitted["flags"] = np.asarray(fitted["flags"]) | 1  # the masked core was not fitted
    fitted["saturated"] = np.ones(len(fitted), dtype=bool)
    if table is None:
        fitted.meta["saturated_fit_shape"] = [size, size]
        return fitted, len(fitted)
    base = table[keep_rows]
    base["saturated"] = np.zeros(len(base), dtype=bool)
    start = int(np.max(_values(table["id"]))) + 1 if len(table) else 1
    fitted["id"] = np.arange(start, start + len(fitted))
    if "group_id" in base.colnames and "group_id" in fitted.colnames:
        g0 = int(np.max(_values(base["group_id"]))) + 1 if len(base) else 1
        fitted["group_id"] = np.arange(g0, g0 + len(fitted))
    for name in base.colnames:
        if name not in fitted.colnames:  # e.g. iter_detected of an iterative run
            fitted[name] = _neutral(base[name], len(fitted))
    merged = vstack([base, fitted[base.colnames]], metadata_conflicts="silent")
    merged.meta = dict(table.meta)
    merged.meta["saturated_fit_shape"] = [size, size]
    merged.meta["n_saturated"] = len(fitted)
    merged.meta["n_ring_detections_removed"] = int((~keep_rows).sum())
    return merged, len(fitted)


def _neutral(col, n):
    """A column like ``col`` with ``n`` neutral values (0, NaN or False)."""
    value = getattr(col, "value", col)
    dtype = np.asarray(value).dtype
    fill = False if dtype.kind == "b" else (0 if dtype.kind in "iu" else np.nan)
    out = np.full(n, fill, dtype=dtype if dtype.kind in "biuf" else float)
    unit = getattr(col, "unit", None)
    return out * unit if unit is not None and hasattr(col, "value") else out


def _linear_flux(data, mask, psf, xs, ys, half):
    """Least-squares flux of a unit PSF at each position on the unmasked pixels of its box
    (an aperture sum would miss the masked core)."""
    model = psf.copy()
    out = np.empty(len(xs))
    ny, nx = data.shape
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        ix, iy = int(round(x)), int(round(y))
        yy, xx = np.mgrid[max(iy - half, 0):min(iy + half + 1, ny),
                          max(ix - half, 0):min(ix + half + 1, nx)]
        model.x_0, model.y_0, model.flux = x, y, 1.0
        p = np.asarray(model(xx.astype(float), yy.astype(float)), dtype=float)
        good = ~mask[yy, xx]
        d = data[yy, xx][good]
        p = p[good]
        denom = float(np.sum(p * p))
        out[i] = float(np.sum(d * p)) / denom if denom > 0 else float(np.sum(d))
    return out
