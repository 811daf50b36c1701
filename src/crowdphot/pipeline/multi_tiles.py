"""Joint multi-exposure fits in sky tiles, in this process or on a Dask cluster.

:func:`fit_exposures_tiled` splits the catalog of a joint fit
(:func:`crowdphot.pipeline.multi.fit_exposures`) into square *sky tiles* on one tangent plane:

1. **Group globally.** Sources are grouped on the sky over the whole catalog, so groups never
   stop at tile seams; a group belongs to the tile whose core holds its first member.
2. **Cut per tile.** A tile's task gets its groups plus every other source within ``margin``
   arcsec of them (the *halo*: fitted too, so that its light is modelled, but not kept), and
   from every exposure only the pixel box covering them plus a fit box (WCS sliced, PSF grids
   shifted into the cut's frame).
3. **Fit per tile.** Each task runs :func:`fit_exposures` on its cut; the rows of the tile's own
   groups are kept and the tables are stacked back into catalog order.

Tasks are independent and run through the Dask machinery of :mod:`crowdphot.pipeline.tiles`
(``client``, ``workers`` or ``scheduler``; at most two tasks per worker in flight), so a fit's
working memory is bounded by a tile's sources and pixel boxes. In-memory exposures are cut in
the driver and each box is shipped with its task; :class:`ExposureFile` exposures are FITS files
read lazily (memory-mapped, :class:`crowdphot.io.fits.FitsPlanes`): the driver reads headers
only and every task reads just its boxes, so exposures larger than memory work (the file must be
visible at the same path on every worker).

Without a catalog, :func:`detect_tiled` detects on the combined stack tile by tile: a tile's
task builds the stack of its core plus a margin from the exposures' pixel boxes and keeps the
sources found in its core (each source has one owner); a first pass over the tiles collects the
stack's sampled values for its median and scatter, so the sources are those of the whole-stack
:func:`~crowdphot.pipeline.multi_sky.detect_on_stack`, without any whole image in memory.
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_scales

from crowdphot.pipeline._planes import shift_model
from crowdphot.pipeline._runner import Runner, close_client, open_client
from crowdphot.pipeline.multi import (
    Exposure,
    _basis,
    _check_catalog,
    _check_exposures,
    _parse_shape,
    _to_plane,
    fit_exposures,
)
from crowdphot.pipeline.multi_sky import (
    MAP_STEP,
    build_stack,
    exposure_noise,
    find_on_stack,
    fwhm_of,
    sample_step,
    stack_catalog,
    stack_frame,
    stack_stats,
)
from crowdphot.psf.allstar import model_reach
from crowdphot.psf.groupers import SourceGrouper

__all__ = ["ExposureFile", "fit_exposures_tiled"]

#: Pixels of an exposure read around the ones a stack box samples (bilinear resampling).
STACK_PAD = 3


class ExposureFile:
    """An exposure of a tiled joint fit kept on disk (a FITS file read box by box).

    Parameters
    ----------
    path : str or Path
        FITS image (JWST SCI/ERR/DQ or a single HDU) with a celestial WCS; its pixels must be
        background subtracted already.
    psf_model : crowdphot PSF model
    filter_name : str, optional
        Default: the header's FILTER keyword.
    ext, err_ext, dq_ext, dq_bits
        As :func:`crowdphot.io.fits.read_image`.
    name : str, optional
        Label used in messages (default: the path).

    Examples
    --------
    >>> import os, tempfile
    >>> from astropy.io import fits
    >>> from astropy.wcs import WCS
    >>> from crowdphot import CircularGaussianPRF
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]; w.wcs.cdelt = [-2e-5, 2e-5]
    >>> path = os.path.join(tempfile.mkdtemp(), "e.fits")
    >>> fits.PrimaryHDU(np.zeros((20, 30)), w.to_header()).writeto(path)
    >>> e = ExposureFile(path, CircularGaussianPRF(fwhm=2.0), "F1")
    >>> e.shape, e.filter_name
    ((20, 30), 'F1')
    """

    def __init__(self, path, psf_model, filter_name=None, *, ext=None, err_ext="auto",
                 dq_ext="auto", dq_bits=None, name=None):
        from crowdphot.io.fits import DEFAULT_DQ_MASK, FitsPlanes

        self.planes = FitsPlanes(path, ext=ext, err_ext=err_ext, dq_ext=dq_ext,
                                 dq_bits=DEFAULT_DQ_MASK if dq_bits is None else dq_bits)
        info = self.planes.header_info()
        self.name = str(path) if name is None else name
        if info.wcs is None:
            why = info.wcs_problem or "no WCS keywords"
            raise ValueError(f"{self.name}: no celestial WCS ({why}); a joint fit in sky "
                             "coordinates needs one")
        self.wcs = info.wcs
        self.shape = self.planes.shape
        self.unit = u.Unit(info.unit) if info.unit else None
        if filter_name is None:
            filter_name = info.header.get("FILTER", info.primary.get("FILTER")
                                          if info.primary is not None else None)
        if not isinstance(filter_name, str) or not filter_name:
            raise ValueError(f"{self.name}: no filter name (give filter_name; the header has "
                             "no FILTER keyword)")
        self.filter_name = filter_name
        if not hasattr(psf_model, "_stamps_grad"):
            raise TypeError(f"{self.name}: psf_model must be a crowdphot PSF model")
        self.psf_model = psf_model
        self.has_error = self.planes.err_ext is not None

    def pixel_scale(self):
        """Largest pixel scale in arcsec."""
        from astropy.wcs.utils import proj_plane_pixel_scales

        return float(np.max(np.abs(proj_plane_pixel_scales(self.wcs.celestial)))) * 3600.0


class _LazyCut:
    """A box of an :class:`ExposureFile`, read where the task runs."""

    def __init__(self, exp, box):
        self.planes, self.box = exp.planes, box
        self.wcs = exp.wcs[box]
        (y0, _), (x0, _) = ((b.start, b.stop) for b in box)
        self.psf_model = shift_model(exp.psf_model, x0, y0)
        self.filter_name, self.unit, self.name = exp.filter_name, exp.unit, exp.name

    def load(self):
        (y0, y1), (x0, x1) = ((b.start, b.stop) for b in self.box)
        data, err, mask = self.planes.cut(y0, y1, x0, x1)
        unit = self.unit
        data = data if unit is None else data * unit
        err = None if err is None else (err if unit is None else err * unit)
        return Exposure(data, err, mask, self.wcs, self.psf_model, self.filter_name,
                        name=self.name)


def _cut(exp, x, y, pad):
    """The exposure cut to the pixel box of positions ``x, y`` grown by ``pad`` (or None);
    an :class:`ExposureFile` gives a box read by the task."""
    ny, nx = exp.shape if isinstance(exp, ExposureFile) else exp.data.shape
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    x0 = max(int(np.floor(x[ok].min() - pad)), 0)
    x1 = min(int(np.ceil(x[ok].max() + pad)) + 1, nx)
    y0 = max(int(np.floor(y[ok].min() - pad)), 0)
    y1 = min(int(np.ceil(y[ok].max() + pad)) + 1, ny)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    box = (slice(y0, y1), slice(x0, x1))
    if isinstance(exp, ExposureFile):
        return _LazyCut(exp, box)
    unit = exp.unit
    data = exp.data[box] if unit is None else exp.data[box] * unit
    err = None if exp.error is None else (exp.error[box] if unit is None
                                          else exp.error[box] * unit)
    return Exposure(data, err, None if exp.mask is None else exp.mask[box], exp.wcs[box],
                    shift_model(exp.psf_model, x0, y0), exp.filter_name, name=exp.name)


def _load(cuts):
    return [e.load() if isinstance(e, _LazyCut) else e for e in cuts]


def _box_cuts(exps, ref_wcs, gx0, gy0, box):
    """Every exposure cut to the pixels a stack box (grid ``[y0, y1) x [x0, x1)``) samples,
    with the exposure indices kept."""
    (y0, y1), (x0, x1) = box
    t = np.linspace(0.0, 1.0, 9)
    bx = np.concatenate([x0 + t * (x1 - 1 - x0), np.full(9, x1 - 1.0), x0 + t * (x1 - 1 - x0),
                         np.full(9, float(x0))]) + gx0
    by = np.concatenate([np.full(9, float(y0)), y0 + t * (y1 - 1 - y0), np.full(9, y1 - 1.0),
                         y0 + t * (y1 - 1 - y0)]) + gy0
    ra, dec = ref_wcs.all_pix2world(bx, by, 0)
    cuts, used = [], []
    for k, e in enumerate(exps):
        x, y = e.wcs.celestial.all_world2pix(ra, dec, 0, quiet=True)
        cut = _cut(e, np.asarray(x, dtype=float), np.asarray(y, dtype=float), STACK_PAD)
        if cut is not None:
            cuts.append(cut), used.append(k)
    return cuts, used


def _stack_task(_source, cuts, scales, ref_wcs, gx0, gy0, box, core, step, find):
    """Phase 1 (``find`` None): the stack's sampled values in the core; phase 2 (``find`` =
    ``(median, sigma, fwhm, threshold)``): its detections in the core (grid pixels)."""
    (y0, y1), (x0, x1) = box
    stack = build_stack(_load(cuts), scales, ref_wcs, gx0 + x0, gy0 + y0, (y1 - y0, x1 - x0))
    (cy0, cy1), (cx0, cx1) = core
    if find is None:
        sy = np.arange(-(-cy0 // step) * step, cy1, step)
        sx = np.arange(-(-cx0 // step) * step, cx1, step)
        v = stack[np.ix_(sy - y0, sx - x0)].ravel()
        return v[np.isfinite(v)]
    x, y = find_on_stack(stack, *find)
    x, y = x + x0, y + y0
    own = (x >= cx0 - 0.5) & (x < cx1 - 0.5) & (y >= cy0 - 0.5) & (y < cy1 - 0.5)
    return x[own], y[own]


def detect_tiled(exposures, *, tile_size, threshold=5.0, fwhm=None, client=None, workers=None,
                 scheduler=None):
    """:func:`crowdphot.pipeline.multi_sky.detect_on_stack` in sky tiles, optionally on Dask.

    The stack grid (the first exposure's pixels grown to the union footprint) is cut into
    square tiles; a tile's task builds the stack of its core plus a margin from the pixel
    boxes of the exposures it covers (:class:`ExposureFile` exposures read only those boxes)
    and keeps the sources detected in its core, so every source comes from exactly one tile.
    A first pass collects the stack's sampled values for its median and scatter, so the
    detections equal the whole-stack ones (away from the data's own edges as well as at the
    tile seams), without the whole stack or any whole exposure in memory.

    Parameters
    ----------
    exposures : sequence of Exposure or ExposureFile
        Checked exposures (:func:`fit_exposures_tiled` checks them).
    tile_size : float
        Side of a tile's core in arcsec (rounded to a multiple of 8 first-exposure pixels,
        at least 64).
    threshold, fwhm
        As :func:`~crowdphot.pipeline.multi_sky.detect_on_stack`.
    client, workers, scheduler
        As :func:`fit_exposures_tiled`.

    Returns
    -------
    catalog : astropy.table.Table
        ``id``, ``ra``, ``dec`` (deg), sorted by stack row then column (of the nearest
        pixel, as DAOFIND orders its peaks).

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> from crowdphot import CircularGaussianPRF
    >>> from crowdphot.core.render import render_image
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.cdelt = [-2e-5, 2e-5]; w.wcs.crpix = [61, 21]; w.wcs.crval = [10.0, 20.0]
    >>> psf = CircularGaussianPRF(fwhm=2.5)
    >>> img = render_image((41, 121), psf, np.array([20.2, 90.7]), np.array([19.6, 20.3]),
    ...                    np.array([500.0, 400.0]))
    >>> noise = np.random.default_rng(0).normal(size=img.shape)
    >>> e = Exposure(img + noise, np.ones(img.shape), None, w, psf, "F1")
    >>> cat = detect_tiled([e, e], tile_size=4.0)
    >>> x, y = w.all_world2pix(cat["ra"], cat["dec"], 0)
    >>> np.round(x).tolist(), np.round(y).tolist()
    ([20.0, 91.0], [20.0, 20.0])
    """
    exps = list(exposures)
    if not (np.isfinite(tile_size) and tile_size > 0):
        raise ValueError(f"tile_size must be > 0 arcsec, got {tile_size!r}")
    ref_wcs, gx0, gy0, ny, nx = stack_frame(exps)
    ref_scale = float(np.mean(np.abs(proj_plane_pixel_scales(ref_wcs)))) * 3600.0
    side = max(64, int(np.ceil(tile_size / ref_scale / MAP_STEP)) * MAP_STEP)
    if fwhm is None:
        fwhm = fwhm_of(exps[0].psf_model)
    margin = int(np.ceil((4.0 * fwhm + 4) / MAP_STEP)) * MAP_STEP
    scales = [exposure_noise(e) if (e.has_error is False if isinstance(e, ExposureFile)
                                     else e.error is None) else None for e in exps]
    step = sample_step(ny, nx)
    jobs = []
    for ty in range(0, ny, side):
        for tx in range(0, nx, side):
            core = ((ty, min(ty + side, ny)), (tx, min(tx + side, nx)))
            box = ((max(ty - margin, 0), min(ty + side + margin, ny)),
                   (max(tx - margin, 0), min(tx + side + margin, nx)))
            cuts, used = _box_cuts(exps, ref_wcs, gx0, gy0, core)
            if not cuts:
                continue
            bcuts, bused = _box_cuts(exps, ref_wcs, gx0, gy0, box)
            jobs.append((core, box, cuts, [scales[k] for k in used], bcuts,
                         [scales[k] for k in bused]))
    owned_client, owned = open_client(client, workers, scheduler)
    try:
        runner = Runner(owned_client, None)
        samples = runner.map(_stack_task, [None] * len(jobs), [
            (c, sc, ref_wcs, gx0, gy0, core, core, step, None)
            for core, _, c, sc, _, _ in jobs])
        median, sigma = stack_stats(np.concatenate(samples) if samples else np.zeros(0))
        found = runner.map(_stack_task, [None] * len(jobs), [
            (c, sc, ref_wcs, gx0, gy0, box, core, step, (median, sigma, fwhm, threshold))
            for core, box, _, _, c, sc in jobs])
    finally:
        if owned:
            close_client(owned_client)
    x = np.concatenate([f[0] for f in found]) if found else np.zeros(0)
    y = np.concatenate([f[1] for f in found]) if found else np.zeros(0)
    if len(x) == 0:
        raise ValueError(f"no sources found on the stack of {len(exps)} exposures "
                         f"(threshold {threshold} sigma); lower the threshold or give a catalog")
    order = np.lexsort((x, np.round(x), np.round(y)))  # DAOFIND's order: peak row, column
    return stack_catalog(ref_wcs, x[order] + gx0, y[order] + gy0)


def _tile_task(_source, exps, cat, keep, kwargs, names):
    table = fit_exposures(_load(exps), cat, _skip_empty=True, **kwargs)[keep]
    renames = [(f"{p}{local}", f"{p}{full}") for local, full in names.items()
               for p in ("flux_", "flux_err_") if local != full]
    for a, b in renames:  # two steps: a task's name may be another exposure's
        table.rename_column(a, b + "@")
    for _, b in renames:
        table.rename_column(b + "@", b)
    return table


def fit_exposures_tiled(exposures, catalog=None, *, tile_size, margin=None, fit_shape=(5, 5),
                        group_separation=None, client=None, workers=None, scheduler=None,
                        **kwargs):
    """:func:`crowdphot.pipeline.multi.fit_exposures` in sky tiles, optionally on Dask.

    Parameters
    ----------
    exposures : sequence of Exposure, ExposureFile or tuples
        As :func:`fit_exposures`; :class:`ExposureFile` exposures stay on disk and each task
        reads only its boxes.
    catalog : astropy.table.Table, optional
        As :func:`fit_exposures`; None: detection on the combined stack, tile by tile
        (:func:`detect_tiled`, threshold ``detect_threshold``), which equals the whole-stack
        detection.
    tile_size : float
        Side of a tile's core in arcsec on the tangent plane.
    margin : float, optional
        Halo in arcsec: sources this close to a tile's groups are fitted with them (not kept).
        Default: the largest PSF support's half-width plus a fit box, in the coarsest pixels.
    fit_shape, group_separation
        As :func:`fit_exposures` (groups are formed over the whole catalog).
    client : dask.distributed.Client, optional
    workers : int, optional
        Start a local Dask cluster with this many worker processes.
    scheduler : str, optional
        Address of a running Dask scheduler.
    **kwargs
        Further options of :func:`fit_exposures`.

    Returns
    -------
    table : astropy.table.QTable
        As :func:`fit_exposures`, in catalog order, plus ``tile`` (the task that fitted the
        row).

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> from crowdphot import CircularGaussianPRF
    >>> from crowdphot.core.render import render_image
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.cdelt = [-2e-5, 2e-5]; w.wcs.crpix = [31, 16]; w.wcs.crval = [10.0, 20.0]
    >>> psf = CircularGaussianPRF(fwhm=2.5)
    >>> x, y = np.array([12.2, 45.7]), np.array([14.8, 15.1])
    >>> img = render_image((31, 61), psf, x, y, np.array([100.0, 200.0]))
    >>> ra, dec = w.all_pix2world(x, y, 0)
    >>> t = fit_exposures_tiled([(img, None, None, w, psf, "F1")],
    ...                         Table({"ra": ra, "dec": dec}), tile_size=1.0)
    >>> np.round(t["flux_F1"], 6).tolist(), t["tile"].tolist()
    ([100.0, 200.0], [1, 0])
    """
    exps = _check_tiled_exposures(exposures)
    if kwargs.get("flux_per", "filter") not in ("filter", "exposure"):
        raise ValueError("flux_per must be 'filter' or 'exposure', got "
                         f"{kwargs['flux_per']!r}")
    shape = _parse_shape("fit_shape", fit_shape)
    if not (np.isfinite(tile_size) and tile_size > 0):
        raise ValueError(f"tile_size must be > 0 arcsec, got {tile_size!r}")
    coarse = max(e.pixel_scale() for e in exps)
    if margin is None:
        margin = (max(model_reach(e.psf_model) for e in exps) + max(shape)) * coarse
    if not (np.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be >= 0 arcsec, got {margin!r}")
    if group_separation is None:
        group_separation = float(np.hypot(*shape)) * coarse
    owned_client, owned = open_client(client, workers, scheduler)
    try:
        if catalog is None:
            catalog = detect_tiled(exps, tile_size=tile_size, client=owned_client,
                                   threshold=kwargs.get("detect_threshold", 5.0))
        return _fit_tiles(exps, catalog, owned_client, tile_size, margin, shape,
                          group_separation, kwargs)
    finally:
        if owned:
            close_client(owned_client)


def _fit_tiles(exps, catalog, client, tile_size, margin, shape, group_separation, kwargs):
    per_exposure = kwargs.get("flux_per", "filter") == "exposure"
    filters = ([f"{e.filter_name}_{k}" for k, e in enumerate(exps)] if per_exposure
               else list(dict.fromkeys(e.filter_name for e in exps)))
    ra, dec, _, ids = _check_catalog(catalog, filters, exps[0].unit)
    n = len(ra)
    a, d = np.deg2rad(ra), np.deg2rad(dec)
    vc = np.array([np.sum(np.cos(d) * np.cos(a)), np.sum(np.cos(d) * np.sin(a)),
                   np.sum(np.sin(d))])
    basis = _basis(np.rad2deg(np.arctan2(vc[1], vc[0])),
                   np.rad2deg(np.arctan2(vc[2], np.hypot(vc[0], vc[1]))))
    xi, eta = _to_plane(basis, ra, dec)
    gid = (np.arange(n) if group_separation == 0 or n == 1
           else np.asarray(SourceGrouper(min_separation=group_separation)(xi, eta)))
    # the tile owning each group: the core holding its first member
    ix = np.floor((xi - xi.min()) / tile_size).astype(np.int64)
    iy = np.floor((eta - eta.min()) / tile_size).astype(np.int64)
    _, first, ginv = np.unique(gid, return_index=True, return_inverse=True)
    owner = (iy * (ix.max() + 1) + ix)[first][ginv]
    tiles = np.unique(owner)
    rows = catalog.copy() if hasattr(catalog, "copy") else Table(catalog)
    pad = max(shape) + 2
    jobs, index = [], []
    for k, t in enumerate(tiles):
        own = np.flatnonzero(owner == t)
        lo_x, hi_x = xi[own].min() - margin, xi[own].max() + margin
        lo_y, hi_y = eta[own].min() - margin, eta[own].max() + margin
        halo = np.flatnonzero((owner != t) & (xi >= lo_x) & (xi <= hi_x) & (eta >= lo_y)
                              & (eta <= hi_y))
        sel = np.concatenate([own, halo])
        cuts, used = [], []
        for j, e in enumerate(exps):
            x, y = e.wcs.all_world2pix(ra[sel], dec[sel], 0, quiet=True)
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            ny, nx = e.shape if isinstance(e, ExposureFile) else e.data.shape
            inside = (x > -pad) & (x < nx + pad) & (y > -pad) & (y < ny + pad)
            cut = _cut(e, np.where(inside, x, np.nan), np.where(inside, y, np.nan), pad)
            if cut is not None:
                cuts.append(cut), used.append(j)
        if not cuts:
            continue
        sub = rows[sel]
        sub["id"] = ids[sel]
        keep = np.arange(len(own))
        opts = dict(kwargs, fit_shape=shape, group_separation=group_separation)
        # flux_per='exposure': the task's exposure i is exposure used[i] of the whole field
        names = ({f"{exps[j].filter_name}_{i}": f"{exps[j].filter_name}_{j}"
                  for i, j in enumerate(used)} if per_exposure else {})
        if per_exposure:  # initial fluxes of the catalog under the task's names
            init = {f: sub[f"flux_{f}"] for f in filters if f"flux_{f}" in sub.colnames}
            sub.remove_columns([f"flux_{f}" for f in init])
            for local, full in names.items():
                if full in init:
                    sub[f"flux_{local}"] = init[full]
        jobs.append((cuts, sub, keep, opts, names))
        index.append((k, own))
    outs = Runner(client, None).map(_tile_task, [None] * len(jobs), jobs)
    return _stack(outs, index, n, ids, filters, exps[0].unit)


def _check_tiled_exposures(exposures):
    """Exposures, tuples and :class:`ExposureFile` objects: same units, errors for all or
    none."""
    if isinstance(exposures, (Exposure, ExposureFile)) or not hasattr(exposures, "__len__"):
        raise TypeError("exposures must be a sequence of Exposure / ExposureFile objects or "
                        "tuples")
    files = [e for e in exposures if isinstance(e, ExposureFile)]
    rest = _check_exposures([e for e in exposures if not isinstance(e, ExposureFile)]) \
        if len(files) < len(exposures) else []
    it = iter(rest)
    out = [e if isinstance(e, ExposureFile) else next(it) for e in exposures]
    units = {e.unit for e in out}
    if len(units) > 1:
        raise ValueError("exposures have different data units: "
                         + ", ".join(f"{e.name}: {e.unit}" for e in out))
    has_err = {e.has_error if isinstance(e, ExposureFile) else e.error is not None
               for e in out}
    if len(has_err) > 1:
        raise ValueError("give error arrays for all exposures or for none")
    return out


def _stack(outs, index, n, ids, filters, unit):
    """Tile tables back into catalog order (rows no tile fitted: NaN, flag 1)."""
    from astropy.table import QTable

    funit = unit if unit is not None else None
    cols = {"ra": np.full(n, np.nan), "dec": np.full(n, np.nan), "ra_err": np.full(n, np.nan),
            "dec_err": np.full(n, np.nan), "n_exposures": np.zeros(n, dtype=np.int64),
            "iterations": np.zeros(n, dtype=np.int64), "passes": np.zeros(n, dtype=np.int64),
            "flags": np.ones(n, dtype=np.int64), "tile": np.full(n, -1, dtype=np.int64)}
    for f in filters:
        cols[f"flux_{f}"] = np.full(n, np.nan)
        cols[f"flux_err_{f}"] = np.full(n, np.nan)
    for (k, own), t in zip(index, outs, strict=True):
        for name in cols:
            if name == "tile":
                cols[name][own] = k
            elif name in t.colnames:
                v = t[name]
                cols[name][own] = getattr(v, "value", v)
            elif name.startswith("flux_"):  # a filter no exposure of this tile has
                cols["flags"][own] |= 2
    tab = QTable()
    tab["id"] = ids
    tab["ra"] = cols["ra"] * u.deg
    tab["dec"] = cols["dec"] * u.deg
    tab["ra_err"] = cols["ra_err"] * u.arcsec
    tab["dec_err"] = cols["dec_err"] * u.arcsec
    for f in filters:
        for name in (f"flux_{f}", f"flux_err_{f}"):
            tab[name] = cols[name] * funit if funit is not None else cols[name]
    for name in ("n_exposures", "iterations", "passes", "flags", "tile"):
        tab[name] = cols[name]
    return tab
