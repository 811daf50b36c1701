"""Empirical PSFs from the image: spatially varying ePSF grids and model-grid corrections.

* :func:`select_psf_stars` picks bright, isolated, unsaturated, unflagged stars.
* :func:`build_gridded_psf` builds one ePSF per zone of a ``grid_shape`` grid of the image
  (Anderson & King 2000; nodes at the zone centres, blended bilinearly between them by
  `GriddedPSFModel`), starting from one global ePSF (:class:`EPSFBuilder`).
* :func:`refine_psf` adds to a model grid (e.g. STPSF or the built-in JWST-like one) a smooth
  empirical residual per grid point measured on the image's own stars (as DOLPHOT's PSF
  correction), recentred so that positions measured with the model do not move.

Both iterate the same batched step: fit every star with the current grid (one batched fit),
resample all stars' normalised residuals onto the oversampled grid of each node (bilinear
weights of the star's position, ``flux^2 / sigma^2`` pixel weights, 5-sigma outliers from the
per-sample median of the star's zone dropped), optionally smooth the update, add it and
renormalise; stop when the stars' core residuals stop improving, and recentre the best grid.
The grids are returned as `GriddedPSFModel` with STPSF-style metadata and written with
:func:`write_stpsf_grid`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from astropy.io import fits
from astropy.nddata import NDData
from astropy.table import Table
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from crowdphot.core.batched import stamp_origin
from crowdphot.core.fit import fit_psf
from crowdphot.core.kernels.epsf import clipped_median_by_node, grid_nodes
from crowdphot.core.validate import as_pair
from crowdphot.models.gridded import GriddedPSFModel, bilinear_grid_weights
from crowdphot.models.image import ImagePSF
from crowdphot.psf._epsf_helpers import _SmoothingKernel

__all__ = ["build_gridded_psf", "refine_psf", "select_psf_stars", "write_stpsf_grid"]


class TooFewStarsError(ValueError):
    """A grid zone has fewer usable stars than required."""


# -- star selection ----------------------------------------------------------------------------
def select_psf_stars(data, *, error=None, mask=None, fwhm=2.0, threshold=None, size=25,
                     isolation=None, saturation=None, snr_min=100.0, max_stars=None):
    """Bright, isolated, unsaturated, unflagged stars for building or refining a PSF.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
        Background-subtracted image.
    error : ndarray of shape (ny, nx), optional
        1-sigma errors (default: a robust global noise estimate).
    mask : ndarray of bool, shape (ny, nx), optional
        True marks bad pixels (DQ flags, saturation); stars with a flagged pixel in their
        ``size`` cutout are rejected.
    fwhm : float, optional
        Approximate FWHM in pixels (detection kernel).
    threshold : float, optional
        Detection threshold; default 5 times the noise.
    size : int, optional
        Cutout size; stars must lie at least ``size // 2`` pixels from the edges.
    isolation : float, optional
        Reject stars with a detected neighbour closer than this (pixels) unless the neighbour
        is fainter than 0.1 % of the star; default ``size / 2 + 2 * fwhm``.
    saturation : float, optional
        Reject stars whose peak pixel reaches this value.
    snr_min : float, optional
        Minimum flux signal-to-noise ratio (the flux over the noise of a ``fwhm`` aperture).
    max_stars : int, optional
        Keep at most this many, brightest first.

    Returns
    -------
    stars : astropy.table.Table
        ``x``, ``y``, ``flux``, ``peak``, ``snr``, sorted by decreasing flux.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF, make_noise_image, make_psf_model_image
    >>> img, _ = make_psf_model_image((200, 200), CircularGaussianPRF(fwhm=2.5), 10,
    ...                               flux=(1e4, 2e4), min_separation=40, seed=0)
    >>> img += make_noise_image(img.shape, mean=0.0, stddev=1.0, seed=0)
    >>> len(select_psf_stars(img, fwhm=2.5, size=15)) > 0
    True
    """
    from crowdphot.detection.finders import DAOStarFinder

    data, bad = _data_and_bad(data, mask)
    if error is None:
        vals = data[~bad]
        med = np.median(vals)
        noise = 1.4826 * np.median(np.abs(vals - med))
        noise = noise if noise > 0 else float(np.std(vals)) or 1.0
        err = np.full(data.shape, noise)
    else:
        err = np.asarray(error, dtype=float)
        if err.shape != data.shape:
            raise ValueError(f"error must have the shape of data {data.shape}, got {err.shape}")
        noise = float(np.median(err[~bad & np.isfinite(err)]))
    thr = 5.0 * noise if threshold is None else float(threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = DAOStarFinder(thr, fwhm)(np.where(bad, 0.0, data))
    empty = Table({"x": np.zeros(0), "y": np.zeros(0), "flux": np.zeros(0),
                   "peak": np.zeros(0), "snr": np.zeros(0)})
    if found is None or len(found) == 0:
        return empty
    x = np.asarray(found["x_centroid"], dtype=float)
    y = np.asarray(found["y_centroid"], dtype=float)
    flux = np.asarray(found["flux"], dtype=float)
    peak = np.asarray(found["peak"], dtype=float)
    half = size // 2
    ok = (x >= half) & (y >= half) & (x < data.shape[1] - half - 1) & (y < data.shape[0] - half - 1)
    # isolation: no neighbour within `isolation` px brighter than 0.1 % of the star
    iso = size / 2 + 2 * fwhm if isolation is None else float(isolation)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(iso, output_type="ndarray")
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        crowded = np.zeros(len(x), bool)
        crowded[i[flux[j] > 1e-3 * flux[i]]] = True
        crowded[j[flux[i] > 1e-3 * flux[j]]] = True
        ok &= ~crowded
    # flagged or saturated pixels in the cutout
    xlo, ylo = stamp_origin(x, y, (size, size))
    xlo = np.clip(xlo, 0, data.shape[1] - size)
    ylo = np.clip(ylo, 0, data.shape[0] - size)
    rows = ylo[:, None, None] + np.arange(size)[None, :, None]
    cols = xlo[:, None, None] + np.arange(size)[None, None, :]
    ok &= ~np.any(bad[rows, cols], axis=(1, 2))
    cut = data[rows, cols]
    if saturation is not None:
        ok &= np.max(cut, axis=(1, 2)) < saturation
    snr = _aperture_snr(cut, err[rows, cols], fwhm)
    ok &= snr >= snr_min
    order = np.argsort(-flux[ok], kind="stable")
    out = Table({"x": x[ok][order], "y": y[ok][order], "flux": flux[ok][order],
                 "peak": peak[ok][order], "snr": snr[ok][order]})
    return out if max_stars is None else out[:max_stars]


def _aperture_snr(cut, err, fwhm):
    """Flux S/N in a circular aperture of radius ``1.5 fwhm`` centred in each cutout."""
    n, sy, sx = cut.shape
    yy, xx = np.indices((sy, sx))
    r2 = (xx - (sx - 1) / 2) ** 2 + (yy - (sy - 1) / 2) ** 2
    ap = r2 <= (1.5 * fwhm) ** 2
    sig = np.sum(cut[:, ap], axis=1)
    noise = np.sqrt(np.sum(err[:, ap] ** 2, axis=1))
    return sig / np.maximum(noise, 1e-300)


# -- grid geometry -----------------------------------------------------------------------------
def zone_nodes(shape, grid_shape):
    """Node ``(x, y)`` at the centre of each zone of a ``grid_shape`` split of an image.

    Returns
    -------
    xy : ndarray of shape (ny_grid * nx_grid, 2)
        Sorted by y then x.

    Examples
    --------
    >>> zone_nodes((100, 200), (1, 2)).tolist()
    [[49.5, 49.5], [149.5, 49.5]]
    """
    gy, gx = grid_shape
    xs = (np.arange(gx) + 0.5) * shape[1] / gx - 0.5
    ys = (np.arange(gy) + 0.5) * shape[0] / gy - 0.5
    return np.array([(x, y) for y in ys for x in xs])


def _zone_of(x, y, nodes):
    """Index of the nearest node (the star's zone) for each star."""
    d2 = (x[:, None] - nodes[None, :, 0]) ** 2 + (y[:, None] - nodes[None, :, 1]) ** 2
    return np.argmin(d2, axis=1)


def _on_image(nodes, shape):
    """Nodes whose zone (nearest-node cell) contains image pixels."""
    edge_x = np.clip(nodes[:, 0], 0, shape[1] - 1)
    edge_y = np.clip(nodes[:, 1], 0, shape[0] - 1)
    return _zone_of(edge_x, edge_y, nodes) == np.arange(len(nodes))


def _count_zones(x, y, nodes, min_stars, what, shape=None):
    zone = _zone_of(x, y, nodes)
    counts = np.bincount(zone, minlength=len(nodes))
    check = np.ones(len(nodes), bool) if shape is None else _on_image(nodes, shape)
    for k in np.flatnonzero((counts < min_stars) & check):
        raise TooFewStarsError(
            f"grid zone {k} (node at x={nodes[k, 0]:.1f}, y={nodes[k, 1]:.1f}) has "
            f"{counts[k]} usable star(s) for {what}, fewer than min_stars={min_stars}; use a "
            f"coarser grid_shape, a lower min_stars or give a catalog")
    return counts


# -- the shared iteration ----------------------------------------------------------------------
def _grid_model(stack, nodes, oversampling, meta=None):
    meta = dict(meta or {})
    meta.update(grid_xypos=[tuple(map(float, p)) for p in nodes],
                oversampling=int(oversampling[0]) if oversampling[0] == oversampling[1]
                else tuple(int(v) for v in oversampling))
    return GriddedPSFModel(NDData(stack, meta=meta))


def _node_weights(model, x, y):
    if len(model.data) == 1:
        return np.zeros((len(x), 1), np.int64), np.ones((len(x), 1))
    gidx, w, _, _ = bilinear_grid_weights(np.unique(model.grid_xypos[:, 0]),
                                          np.unique(model.grid_xypos[:, 1]), x, y)
    return gidx, w


def _fit_stars(model, data, error, mask, x, y, flux, fit_shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_psf(data, model, x, y, flux, fit_shape=fit_shape, error=error, mask=mask)
    good = res.fitted & np.isfinite(res.x) & np.isfinite(res.y) & np.isfinite(res.flux)
    good &= res.flux > 0
    return (np.where(good, res.x, x), np.where(good, res.y, y), np.where(good, res.flux, flux),
            good)


def _residual_update(model, data, err, bad, x, y, flux, size, clip):
    """Weighted mean normalised residual per node and oversampled sample, for all stars."""
    n_nodes, sy, sx = model.data.shape
    oy, ox = (int(v) for v in model.oversampling)
    xlo, ylo = stamp_origin(x, y, (size, size))
    rows = ylo[:, None, None] + np.arange(size)[None, :, None]
    cols = xlo[:, None, None] + np.arange(size)[None, None, :]
    inside = (rows >= 0) & (rows < data.shape[0]) & (cols >= 0) & (cols < data.shape[1])
    r_c = np.clip(rows, 0, data.shape[0] - 1)
    c_c = np.clip(cols, 0, data.shape[1] - 1)
    d = data[r_c, c_c]
    e = err[r_c, c_c]
    ok = inside & ~bad[r_c, c_c] & np.isfinite(d) & (e > 0)
    m = model._stamps(x, y, xlo, ylo, (size, size))
    r = (d - flux[:, None, None] * m) / flux[:, None, None]
    dx = np.broadcast_to(cols - x[:, None, None], r.shape)
    dy = np.broadcast_to(rows - y[:, None, None], r.shape)
    sample = grid_nodes(dx.ravel(), dy.ravel(), (oy, ox), model.origin, (sy, sx))
    sample = np.where(ok.ravel(), sample, -1)
    # outliers (cosmic rays, faint neighbours) are judged against the typical residual of the
    # stars at the same sample, not against zero: the model error itself can be >> the noise
    # of the same zone (nearest node): the PSF, and so the residual, varies across the field
    zone = _zone_of(x, y, np.asarray(model.grid_xypos, dtype=float))
    key = np.where(sample >= 0, np.repeat(zone, size * size) * (sy * sx) + sample, -1)
    typical = clipped_median_by_node(key, r.ravel(), n_nodes * sy * sx, sigma_lower=None,
                                     sigma_upper=None, maxiters=1)
    dev = r.ravel() - np.where(key >= 0, typical[np.maximum(key, 0)], 0.0)
    sig = (e / flux[:, None, None]).ravel()
    w = np.where((sample >= 0) & (np.abs(dev) <= clip * sig),
                 1.0 / np.where(sample >= 0, sig, 1.0) ** 2, 0.0)
    keep = w > 0
    gidx, gw = _node_weights(model, x, y)
    nsamp = sy * sx
    num = np.zeros(n_nodes * nsamp)
    den = np.zeros(n_nodes * nsamp)
    star = np.broadcast_to(np.arange(len(x))[:, None, None], r.shape).ravel()[keep]
    s = sample[keep]
    rv = r.ravel()[keep]
    wv = w[keep]
    for c in range(gidx.shape[1]):
        idx = gidx[star, c] * nsamp + s
        ww = wv * gw[star, c]
        num += np.bincount(idx, ww * rv, minlength=n_nodes * nsamp)
        den += np.bincount(idx, ww, minlength=n_nodes * nsamp)
    with np.errstate(invalid="ignore", divide="ignore"):
        upd = np.where(den > 0, num / den, np.nan)
        # Wiener shrinkage by the standard error of each weighted mean (1 / sqrt(sum of
        # weights)): significant corrections pass, noise from few stars is damped
        upd = upd * upd ** 2 / (upd ** 2 + 1.0 / den)
    return upd.reshape(n_nodes, sy, sx)


def _fill_holes(update, oversampling):
    """Samples without data get the Gaussian-weighted mean of their neighbours' updates (zero
    where none is near): a normalised convolution, cheap for the many holes of sparse nodes."""
    miss = ~np.isfinite(update)
    if np.all(miss):
        return None
    if not np.any(miss):
        return update
    sig = 0.5 * np.asarray(oversampling, dtype=float)
    val = np.where(miss, 0.0, update)
    wgt = (~miss).astype(float)
    num = gaussian_filter(val, sig, mode="constant", truncate=3.0)
    den = gaussian_filter(wgt, sig, mode="constant", truncate=3.0)
    out = update.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        fill = np.where(den > 1e-6, num / den, 0.0)
    out[miss] = fill[miss]
    return out


def _shift(model_data, oversampling, dx, dy):
    """``model_data`` (one ePSF) moved by ``(dx, dy)`` detector pixels (spline resampling)."""
    psf = ImagePSF(model_data, oversampling=oversampling, fill_value=0.0)
    yy, xx = np.indices(model_data.shape, dtype=float)
    xx = xx / oversampling[1]
    yy = yy / oversampling[0]
    ox, oy = psf.origin
    return psf.evaluate(xx, yy, 1.0, ox / oversampling[1] + dx, oy / oversampling[0] + dy)


def _centroid(epsf, oversampling, box=5):
    """Centre-of-mass ``(x, y)``, relative to the array centre, of the samples within
    ``box / 2`` detector pixels of it (symmetric for odd and even arrays), in pixels."""
    ny, nx = epsf.shape
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    hy, hx = box * oversampling[0] / 2, box * oversampling[1] / 2
    ys = np.arange(ny) - cy
    xs = np.arange(nx) - cx
    sy = np.abs(ys) <= hy
    sx = np.abs(xs) <= hx
    sub = epsf[np.ix_(sy, sx)]
    tot = sub.sum()
    return (float(np.sum(sub.sum(axis=0) * xs[sx]) / tot / oversampling[1]),
            float(np.sum(sub.sum(axis=1) * ys[sy]) / tot / oversampling[0]))


def _iterate(model, data, err, bad, x, y, flux, *, size, fit_shape, n_iter, smoothing, clip,
             reference, norm, center_box=5):
    """Grid iterations.

    ``reference``: ``(n_nodes, 2)`` centroids to keep (None: the array centre); ``norm``:
    ``(n_nodes,)`` sums each ePSF is scaled back to (the correction changes the shape, not the
    flux scale, which the residuals of fitted stars cannot constrain).
    """
    os_ = tuple(int(v) for v in model.oversampling)
    stack = np.array(model.data, dtype=float)
    nodes = model.grid_xypos
    meta = {k: v for k, v in model.meta.items() if k not in ("grid_xypos", "grid_shape")}
    best, best_chi2, worse = stack.copy(), np.inf, 0
    history = []
    for _ in range(n_iter + 1):
        cur = _grid_model(stack, nodes, os_, meta)
        x, y, flux, good = _fit_stars(cur, data, err, bad, x, y, flux, fit_shape)
        chi2 = _core_chi2(cur, data, err, bad, x[good], y[good], flux[good], fit_shape)
        history.append(chi2)
        # the iteration is stopped (and the best grid kept) once the stars' core residuals
        # stop improving: further steps only add noise
        if chi2 < best_chi2:
            best, best_chi2, worse = stack.copy(), chi2, 0
        else:
            worse += 1
            if worse >= 2:
                break
        if _ == n_iter:
            break
        upd = _residual_update(cur, data, err, bad, x[good], y[good], flux[good], size, clip)
        # work on the window of samples the stars reach (plus the filling/smoothing reach)
        touched = np.isfinite(upd).any(axis=0)
        if not touched.any():
            break
        pad = int(np.ceil(1.5 * max(os_))) + 3
        rows = np.flatnonzero(touched.any(axis=1))
        cols = np.flatnonzero(touched.any(axis=0))
        win = (slice(max(rows[0] - pad, 0), rows[-1] + pad + 1),
               slice(max(cols[0] - pad, 0), cols[-1] + pad + 1))
        for k in range(len(stack)):
            u = _fill_holes(upd[k][win], os_)
            if u is None:
                continue
            stack[k][win] += _SmoothingKernel.apply_smoothing(u, smoothing)
            stack[k] *= norm[k] / stack[k].sum()
    # recentred once, at the end: the stars' positions follow any drift of the centre during
    # the iterations, so only the final grid's centre definition matters
    best = best.copy()
    for k in range(len(best)):
        want = (0.0, 0.0) if reference is None else reference[k]
        for _ in range(5):  # the box centroid moves almost, not exactly, with the shift
            cx, cy = _centroid(best[k], os_, center_box)
            if max(abs(want[0] - cx), abs(want[1] - cy)) < 1e-8:
                break
            best[k] = _shift(best[k], os_, want[0] - cx, want[1] - cy)
        best[k] *= norm[k] / best[k].sum()
    final = _grid_model(best, nodes, os_, meta)
    x, y, flux, good = _fit_stars(final, data, err, bad, x, y, flux, fit_shape)
    # the stars' mean squared normalised core residual at the start and for the grid returned
    final.meta["core_chi2"] = (float(history[0]), float(min(history)))
    final.meta["iterations"] = int(np.argmin(history))
    return final, x, y, flux, good


def _core_chi2(model, data, err, bad, x, y, flux, fit_shape):
    """Mean squared normalised residual over the stars' fit boxes."""
    fy, fx = (int(v) for v in as_pair("fit_shape", fit_shape, lower_bound=0, odd=True))
    xlo, ylo = stamp_origin(x, y, (fy, fx))
    rows = np.clip(ylo[:, None, None] + np.arange(fy)[None, :, None], 0, data.shape[0] - 1)
    cols = np.clip(xlo[:, None, None] + np.arange(fx)[None, None, :], 0, data.shape[1] - 1)
    m = flux[:, None, None] * model._stamps(x, y, xlo, ylo, (fy, fx))
    ok = ~bad[rows, cols]
    chi = np.where(ok, (data[rows, cols] - m) / np.where(ok, err[rows, cols], 1.0), 0.0)
    return float(np.sum(chi * chi) / max(np.count_nonzero(ok), 1))


def _data_and_bad(data, mask):
    """``data`` as a 2D float array (checked) and its non-finite or masked pixels."""
    data = np.asarray(data, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"data must be a 2D array, got {data.ndim} dimension(s)")
    bad = ~np.isfinite(data)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError(f"mask must have the shape of data {data.shape}, got {mask.shape}")
        bad |= mask
    return data, bad


def _check_counts(**kwargs):
    for name, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _prepare(data, error, mask, catalog, fwhm, size, saturation, max_stars, snr_min):
    if not (isinstance(fwhm, (int, float, np.number)) and np.isfinite(fwhm) and fwhm > 0):
        raise ValueError(f"fwhm must be a positive number, got {fwhm!r}")
    data, bad = _data_and_bad(data, mask)
    if error is None:
        vals = data[~bad]
        noise = 1.4826 * np.median(np.abs(vals - np.median(vals)))
        err = np.full(data.shape, noise if noise > 0 else 1.0)
    else:
        err = np.asarray(error, dtype=float)
        if err.shape != data.shape:
            raise ValueError(f"error must have the shape of data {data.shape}, got {err.shape}")
        bad |= ~(np.isfinite(err) & (err > 0))
    if catalog is None:
        cat = select_psf_stars(data, error=None if error is None else err, mask=bad, fwhm=fwhm,
                               size=size, saturation=saturation, max_stars=max_stars,
                               snr_min=snr_min)
        x, y, flux = (np.asarray(cat[c], dtype=float) for c in ("x", "y", "flux"))
    else:
        if not isinstance(catalog, Table) or not {"x", "y"} <= set(catalog.colnames):
            raise ValueError("catalog must be an astropy Table with 'x' and 'y' columns")
        x = np.asarray(catalog["x"], dtype=float)
        y = np.asarray(catalog["y"], dtype=float)
        if "flux" in catalog.colnames:
            flux = np.asarray(catalog["flux"], dtype=float)
        else:
            flux = _box_flux(data, bad, x, y, size)
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0)
    return data, err, bad, x[keep], y[keep], flux[keep]


def _box_flux(data, bad, x, y, size):
    xlo, ylo = stamp_origin(x, y, (size, size))
    xlo = np.clip(xlo, 0, data.shape[1] - size)
    ylo = np.clip(ylo, 0, data.shape[0] - size)
    rows = ylo[:, None, None] + np.arange(size)[None, :, None]
    cols = xlo[:, None, None] + np.arange(size)[None, None, :]
    return np.sum(np.where(bad[rows, cols], 0.0, data[rows, cols]), axis=(1, 2))


def build_gridded_psf(data, catalog=None, *, grid_shape=(3, 3), oversampling=4, size=25,
                      error=None, mask=None, fwhm=2.0, saturation=None, min_stars=10,
                      max_stars=None, snr_min=100.0, fit_shape=5, maxiters=10,
                      smoothing_kernel="quartic", grid_smoothing=None, progress_bar=False):
    """Spatially varying empirical ePSF grid built from the image's stars.

    One ePSF per zone of a ``grid_shape`` split of the image (node at the zone centre; the
    returned `GriddedPSFModel` blends neighbouring nodes bilinearly, so the model varies
    smoothly across zones). A global ePSF is first built from all stars with `EPSFBuilder`;
    then every iteration fits all stars with the current grid and adds to each node the
    weighted mean normalised residual of the stars around it (bilinear weights), smoothed;
    each node is recentred on its central 5-pixel centroid. The ePSFs are normalised like
    photutils' (sum ``oy * ox`` over the ``size`` box), so fluxes are those inside the box.

    Parameters
    ----------
    data : ndarray of shape (ny, nx)
        Background-subtracted image.
    catalog : astropy.table.Table, optional
        ``x``, ``y`` (and optionally ``flux``) of the stars to use; default
        :func:`select_psf_stars`.
    grid_shape : (ny_grid, nx_grid) ints, optional
    oversampling : int, optional
    size : int, optional
        Odd star cutout size (pixels); the ePSFs are ``size * oversampling + 1`` samples.
    error, mask : ndarray of shape (ny, nx), optional
        1-sigma errors (pixel weights) and bad-pixel mask.
    fwhm, saturation, max_stars, snr_min
        Star selection (see :func:`select_psf_stars`).
    min_stars : int, optional
        Minimum stars per zone; fewer raise a ``ValueError`` naming the zone.
    fit_shape : int, optional
        Fit box of the star fits.
    maxiters : int, optional
        Iterations of the global build and (at most) of the grid refinement each; the grid
        iteration stops once the stars' core residuals no longer improve.
    smoothing_kernel : {'quartic', 'quadratic'}, ndarray or None, optional
        Smoothing of the global ePSF (`EPSFBuilder`).
    grid_smoothing : {'quartic', 'quadratic'}, ndarray or None, optional
        Smoothing of each per-node update (default none: the updates average many stars).
    progress_bar : bool, optional

    Returns
    -------
    model : GriddedPSFModel
        ``meta``: ``grid_xypos``, ``oversampling``, ``n_stars`` (per zone), ``zone_shape``,
        ``n_stars_total``, ``method='build_gridded_psf'``.

    Examples
    --------
    >>> model = build_gridded_psf(data, grid_shape=(2, 2))  # doctest: +SKIP
    >>> write_stpsf_grid(model, 'grid.fits')  # doctest: +SKIP
    """
    from crowdphot.psf.epsf_builder import EPSFBuilder
    from crowdphot.psf.epsf_stars import extract_stars

    _check_counts(min_stars=min_stars, maxiters=maxiters)
    grid_shape = tuple(int(v) for v in as_pair("grid_shape", grid_shape, lower_bound=0))
    os_ = tuple(int(v) for v in as_pair("oversampling", oversampling, lower_bound=0))
    size = int(as_pair("size", size, lower_bound=2, odd=True)[0])
    data, err, bad, x, y, flux = _prepare(data, error, mask, catalog, fwhm, size, saturation,
                                          max_stars, snr_min)
    nodes = zone_nodes(data.shape, grid_shape)
    counts = _count_zones(x, y, nodes, min_stars, "build_gridded_psf")
    nd = NDData(np.where(bad, np.nan, data), uncertainty=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stars = extract_stars(nd, Table({"x": x, "y": y}), size=size)
        builder = EPSFBuilder(oversampling=os_, maxiters=maxiters, progress_bar=progress_bar,
                              smoothing_kernel=smoothing_kernel, fit_shape=fit_shape)
        epsf = builder(stars).epsf
    stack = np.repeat(epsf.data[None], len(nodes), axis=0)
    meta = {"method": "build_gridded_psf", "zone_shape": grid_shape}
    model = _grid_model(stack, nodes, os_, meta)
    model, *_ = _iterate(model, data, err, bad, x, y, flux, size=size, fit_shape=fit_shape,
                         n_iter=maxiters, smoothing=grid_smoothing, clip=5.0, reference=None,
                         norm=np.full(len(nodes), float(np.prod(os_))), center_box=size)
    model.meta["n_stars"] = counts.tolist()
    model.meta["n_stars_total"] = int(len(x))
    return model


def refine_psf(psf_model, data, catalog=None, *, error=None, mask=None, fwhm=2.0, size=None,
               saturation=None, min_stars=5, max_stars=None, snr_min=100.0, fit_shape=5,
               maxiters=20, smoothing_kernel=None):
    """A model PSF grid corrected by a smooth empirical residual from the image's stars.

    DOLPHOT-style: bright isolated stars are fitted with the model, their normalised residuals
    are averaged on each grid point's oversampled grid (bilinear weights of the star positions,
    ``flux^2 / sigma^2`` pixel weights, 5-sigma outliers dropped), smoothed and added to the
    model; fit and correction are iterated ``maxiters`` times. Each corrected ePSF is shifted
    back so that its central centroid equals the model's, so that positions measured with the
    refined grid do not move with respect to the model's.

    Parameters
    ----------
    psf_model : GriddedPSFModel or ImagePSF
        The model (an `ImagePSF` is treated as a one-node grid at the image centre).
    data : ndarray of shape (ny, nx)
        Background-subtracted image.
    catalog : astropy.table.Table, optional
        ``x``, ``y`` (``flux``) of the stars; default :func:`select_psf_stars`.
    error, mask : ndarray of shape (ny, nx), optional
    fwhm, saturation, max_stars, snr_min
        Star selection (see :func:`select_psf_stars`).
    size : int, optional
        Odd region (pixels) around each star where the correction is measured; default the
        model's extent, at most 31.
    min_stars : int, optional
        Minimum stars per grid point's zone (nearest node); fewer raise a ``ValueError``.
    fit_shape : int, optional
        Fit box of the star fits.
    maxiters : int, optional
        At most this many fit-and-correct iterations (stopped once the stars' core residuals
        no longer improve; the best grid is returned).
    smoothing_kernel : {'quartic', 'quadratic'}, ndarray or None, optional
        Smoothing applied to each update (default none: outlier-clipped weighted means over
        many stars are smooth enough, and a smoothing kernel would leave the core residual
        components it suppresses uncorrected).

    Returns
    -------
    model : GriddedPSFModel
        Same nodes, oversampling and shape as the input; ``meta`` adds ``refined=True``,
        ``n_stars`` per node, ``correction`` (the added ``(n_psf, ny, nx)`` residual),
        ``iterations`` (of the grid returned; 0: the model was not improved) and
        ``core_chi2`` (the stars' mean squared normalised residual in their fit boxes with the
        model and with the grid returned).

    Examples
    --------
    >>> from crowdphot import jwst_like_psf_grid
    >>> refined = refine_psf(jwst_like_psf_grid(), data)  # doctest: +SKIP
    """
    _check_counts(min_stars=min_stars, maxiters=maxiters)
    if isinstance(psf_model, GriddedPSFModel):
        stack = np.array(psf_model.data, dtype=float)
        nodes = np.array(psf_model.grid_xypos, dtype=float)
        meta = {k: v for k, v in psf_model.meta.items()
                if k not in ("grid_xypos", "grid_shape", "oversampling")}
    elif isinstance(psf_model, ImagePSF):
        data0 = np.array(psf_model.data, dtype=float)
        centre = (np.array(data0.shape[::-1], dtype=float) - 1) / 2
        off = centre - np.asarray(psf_model.origin, dtype=float)
        if np.any(off != 0):  # a grid's ePSFs are centred on their array centre
            ov = np.asarray(psf_model.oversampling, dtype=float)
            data0 = _shift(data0, tuple(int(v) for v in psf_model.oversampling),
                           off[0] / ov[1], off[1] / ov[0])
        stack = data0[None]
        nodes = None
        meta = {}
    else:
        raise TypeError(f"psf_model must be a GriddedPSFModel or ImagePSF, got "
                        f"{type(psf_model).__name__}")
    os_ = tuple(int(v) for v in psf_model.oversampling)
    extent = int(min(stack.shape[1] / os_[0], stack.shape[2] / os_[1]))
    if size is None:
        size = min(extent - (1 - extent % 2), 31)
    size = int(as_pair("size", size, lower_bound=2, odd=True)[0])
    data, err, bad, x, y, flux = _prepare(data, error, mask, catalog, fwhm, size, saturation,
                                          max_stars, snr_min)
    if nodes is None:
        nodes = np.array([[(data.shape[1] - 1) / 2, (data.shape[0] - 1) / 2]])
    counts = _count_zones(x, y, nodes, min_stars, "refine_psf", data.shape)
    model = _grid_model(stack, nodes, os_, meta)
    reference = np.array([_centroid(s, os_) for s in model.data])
    refined, *_ = _iterate(model, data, err, bad, x, y, flux, size=size, fit_shape=fit_shape,
                           n_iter=maxiters, smoothing=smoothing_kernel, clip=5.0,
                           reference=reference, norm=model.data.sum(axis=(1, 2)))
    model_info = (refined.meta["core_chi2"], refined.meta["iterations"])
    off = ~_on_image(nodes, data.shape)
    if np.any(off) and np.any(~off):
        # grid points whose zone lies off the image get the mean correction of the others
        corr = refined.data - model.data
        stack = model.data + np.where(off[:, None, None], corr[~off].mean(axis=0), corr)
        refined = _grid_model(stack, nodes, os_, meta)
    refined.meta["refined"] = True
    refined.meta.setdefault("core_chi2", model_info[0])
    refined.meta.setdefault("iterations", model_info[1])
    refined.meta["n_stars"] = counts.tolist()
    refined.meta["correction"] = refined.data - model.data
    return refined


# -- STPSF format ------------------------------------------------------------------------------
_SKIP_META = {"grid_xypos", "oversampling", "grid_shape", "correction", "n_stars",
              "zone_shape"}


def write_stpsf_grid(model, path, *, overwrite=False):
    """Write a `GriddedPSFModel` as an STPSF-format FITS file (``GriddedPSFModel.read``-able).

    The primary HDU holds the ``(n_psf, ny, nx)`` cube sorted by y then x with ``DET_YX{i}``
    (``"(x, y)"``, the order photutils' reader expects), ``OVERSAMP``, ``DET_SAMP``,
    ``NUM_PSFS`` and the scalar ``meta`` entries as further keywords; per-zone star counts go
    to ``NSTARS{i}``.

    Parameters
    ----------
    model : GriddedPSFModel
    path : str or os.PathLike
    overwrite : bool, optional

    Returns
    -------
    path : str

    Examples
    --------
    >>> write_stpsf_grid(model, 'grid.fits')  # doctest: +SKIP
    'grid.fits'
    """
    if not isinstance(model, GriddedPSFModel):
        raise TypeError(f"model must be a GriddedPSFModel, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    os_ = np.asarray(model.oversampling)
    if os_[0] != os_[1]:
        raise ValueError("the STPSF format holds one oversampling factor; got "
                         f"{os_.tolist()}")
    hdr = fits.Header()
    for key, value in model.meta.items():
        if key in _SKIP_META or not isinstance(value, (str, int, float, bool, np.number)):
            continue
        name = key.upper()[:8]
        if name.startswith("DET_YX") or name in ("OVERSAMP", "NUM_PSFS"):
            continue
        try:
            hdr[name] = value
        except (ValueError, KeyError):  # pragma: no cover - unusual keys are skipped
            continue
    hdr["OVERSAMP"] = (int(os_[0]), "Oversampling factor of the ePSF arrays")
    hdr["DET_SAMP"] = (int(os_[0]), "Oversampling factor for MFT to detector plane")
    hdr["NUM_PSFS"] = (len(model.grid_xypos), "The total number of fiducial PSFs")
    counts = model.meta.get("n_stars")
    for i, (x, y) in enumerate(model.grid_xypos):
        hdr[f"DET_YX{i}"] = (str((float(x), float(y))), f"The #{i} PSF's detector position")
        if counts is not None and i < len(counts):
            hdr[f"NSTARS{i}"] = (int(counts[i]), f"Stars used for PSF #{i}")
    hdr["COMMENT"] = "Data are [i, y, x]: PSF i sits at the detector position of DET_YX{i}."
    hdu = fits.PrimaryHDU(np.asarray(model.data, dtype=np.float64), header=hdr)
    hdu.writeto(path, overwrite=overwrite)
    return os.fspath(path)
