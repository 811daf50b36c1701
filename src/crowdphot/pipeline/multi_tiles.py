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
visible at the same path on every worker; a catalog is then required, as detection would need
the whole images).
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.table import Table

from crowdphot.pipeline.multi import (
    Exposure,
    _basis,
    _check_catalog,
    _check_exposures,
    _parse_shape,
    _to_plane,
    fit_exposures,
)
from crowdphot.pipeline.multi_sky import detect_on_stack
from crowdphot.pipeline.tiles import _close_client, _open_client, _Runner, _shift_model
from crowdphot.psf.allstar import model_reach
from crowdphot.psf.groupers import SourceGrouper

__all__ = ["ExposureFile", "fit_exposures_tiled"]


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
        self.psf_model = _shift_model(exp.psf_model, x0, y0)
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
                    _shift_model(exp.psf_model, x0, y0), exp.filter_name, name=exp.name)


def _tile_task(_source, exps, cat, keep, kwargs):
    exps = [e.load() if isinstance(e, _LazyCut) else e for e in exps]
    table = fit_exposures(exps, cat, _skip_empty=True, **kwargs)
    return table[keep]


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
        As :func:`fit_exposures` (None: detection on the combined stack of the whole field).
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
    if kwargs.get("flux_per", "filter") != "filter":
        raise ValueError("fit_exposures_tiled fits one flux per filter (flux_per='filter')")
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
    if catalog is None:
        if any(isinstance(e, ExposureFile) for e in exps):
            raise ValueError("give a catalog with ExposureFile exposures (detection on the "
                             "combined stack would read every whole image)")
        catalog = detect_on_stack(exps)
    filters = list(dict.fromkeys(e.filter_name for e in exps))
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
        cuts = []
        for e in exps:
            x, y = e.wcs.all_world2pix(ra[sel], dec[sel], 0, quiet=True)
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            ny, nx = e.shape if isinstance(e, ExposureFile) else e.data.shape
            inside = (x > -pad) & (x < nx + pad) & (y > -pad) & (y < ny + pad)
            cut = _cut(e, np.where(inside, x, np.nan), np.where(inside, y, np.nan), pad)
            if cut is not None:
                cuts.append(cut)
        if not cuts:
            continue
        sub = rows[sel]
        sub["id"] = ids[sel]
        keep = np.arange(len(own))
        opts = dict(kwargs, fit_shape=shape, group_separation=group_separation)
        jobs.append((cuts, sub, keep, opts))
        index.append((k, own))
    owned_client, owned = _open_client(client, workers, scheduler)
    try:
        runner = _Runner(owned_client, None)
        outs = runner.map(_tile_task, [None] * len(jobs), jobs)
    finally:
        if owned:
            _close_client(owned_client)
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
