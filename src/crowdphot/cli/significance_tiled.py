"""``--min-snr`` in tiled runs: ALLSTAR's significance cut, tile by tile, from the file.

A whole-image ``crowdphot phot`` drops found stars whose flux, re-measured with every other
star's model subtracted, is below ``--min-snr`` sigma (:mod:`crowdphot.cli.significance`). A
tiled run has no image in memory, so here the driver reads one tile at a time: the box around
the stars the tile owns (their fit boxes), minus the same sky the tile tasks subtracted
(:func:`crowdphot.pipeline._sky.tile_sky`; on images small enough, the whole-image map the
fit estimated, reused), with every fitted star whose model reaches that box
rendered, and re-measures the owned stars exactly as the whole-image rule does. Memory stays
at one tile box; the result equals the whole-image cut up to the sky maps' small remainder.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_min_snr_tiled", "neighbour_subtracted_flux_tiled"]


def _col(table, name):
    return np.asarray(getattr(table[name], "value", table[name]), dtype=float)


def neighbour_subtracted_flux_tiled(planes, psf, table, fit_shape, tile_shape, *, sky=None,
                                    sigma=None):
    """``(flux, flux_err)`` of every row re-measured with the other stars subtracted.

    Parameters
    ----------
    planes : crowdphot.io.fits.FitsPlanes or object with ``cut`` and ``shape``
    psf : PSF model (batched interface)
    table : Table with ``x_fit``, ``y_fit``, ``flux_fit`` (n rows)
    fit_shape : (int, int)
    tile_shape : int or (ty, tx)
    sky : None or the spec of :func:`crowdphot.pipeline._sky.check_tile_sky`
    sigma : float, optional
        Pixel noise where the file has no ERR plane.

    Returns
    -------
    flux, flux_err : ndarray of shape (n,)
        NaN for rows with a non-finite fit.
    """
    from crowdphot.cli.significance import neighbour_subtracted_flux
    from crowdphot.pipeline._grid import tile_grid, tile_index
    from crowdphot.pipeline._planes import shift_model
    from crowdphot.pipeline._sky import tile_sky
    from crowdphot.psf.allstar import model_reach

    shape = tuple(int(v) for v in planes.shape)
    x, y, f = (_col(table, c) for c in ("x_fit", "y_fit", "flux_fit"))
    n = x.size
    out_f, out_e = np.full(n, np.nan), np.full(n, np.nan)
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(f)
    if not good.any():
        return out_f, out_e
    half = max(int(v) for v in fit_shape) // 2 + 1
    reach = model_reach(psf) + half + 1.0
    owner = tile_index(np.where(good, x, 0.0), np.where(good, y, 0.0), shape, tile_shape)
    xg, yg = x[good], y[good]
    for k, _ in enumerate(tile_grid(shape, tile_shape)):
        mine = np.flatnonzero(good & (owner == k))
        if mine.size == 0:
            continue
        # every owned star's whole stamp inside the box (or the image's edge), as in the
        # whole-image measurement
        y0 = int(np.clip(np.floor(y[mine].min()) - half, 0, shape[0] - 1))
        y1 = int(np.clip(np.ceil(y[mine].max()) + half + 1, y0 + 1, shape[0]))
        x0 = int(np.clip(np.floor(x[mine].min()) - half, 0, shape[1] - 1))
        x1 = int(np.clip(np.ceil(x[mine].max()) + half + 1, x0 + 1, shape[1]))
        data, error, mask = planes.cut(y0, y1, x0, x1)
        if sky is not None:
            data = data - tile_sky(planes, (y0, y1, x0, x1), sky)
        near = ((xg > x0 - 0.5 - reach) & (xg < x1 - 0.5 + reach)
                & (yg > y0 - 0.5 - reach) & (yg < y1 - 0.5 + reach))
        # the owned stars first, then the others whose light reaches the box
        rows = np.flatnonzero(good)
        others = rows[near & ~np.isin(rows, mine)]
        sel = np.concatenate([mine, others])
        fk, ek = neighbour_subtracted_flux(
            np.asarray(data, dtype=float), shift_model(psf, x0, y0), x[sel] - x0,
            y[sel] - y0, f[sel], fit_shape, error=error, mask=mask, sigma=sigma)
        out_f[mine], out_e[mine] = fk[:mine.size], ek[:mine.size]
    return out_f, out_e


def apply_min_snr_tiled(args, image, psf, table, sky_kwargs, sigma):
    """``crowdphot phot --tile``'s clean-up step: ``(table, n_dropped)``, as
    :func:`crowdphot.cli.significance.apply_min_snr` (records ``min_snr`` and
    ``n_insignificant``); skipped for ``--init`` and ``--min-snr 0``."""
    from crowdphot.pipeline._sky import check_tile_sky, task_spec

    snr = getattr(args, "min_snr", 5.0)
    if not snr or getattr(args, "init", None) or len(table) == 0:
        return table, 0
    planes = image.planes
    spec = check_tile_sky(sky_kwargs.get("sky"), sky_kwargs.get("sky_options"), planes.shape)
    # on a small image: the whole image's map, estimated once for the fit and reused here
    spec = task_spec(spec, planes.shape)
    fit_shape = (args.fit_shape, args.fit_shape)
    f, e = neighbour_subtracted_flux_tiled(planes, psf, table, fit_shape, args.tile, sky=spec,
                                           sigma=sigma)
    drop = np.isfinite(f) & np.isfinite(e) & (f < snr * e)
    n = int(np.count_nonzero(drop))
    if n:
        table = table[~drop]
    table.meta["min_snr"] = float(snr)
    table.meta["n_insignificant"] = n
    return table, n
