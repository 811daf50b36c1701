"""Joint PSF fits of many exposures in sky coordinates (ALLFRAME-style).

Every source has one sky position shared by all exposures and one flux per filter. Each
exposure brings its own pixels, errors, mask, WCS (anything ``astropy.wcs.WCS.all_world2pix``
evaluates, TAN-SIP included) and PSF model (the batched contract of
:mod:`crowdphot.core.batched`).

Method (Gauss-Newton over all sources at once)
----------------------------------------------
* Positions are parametrised as offsets ``(xi, eta)`` in arcsec on one gnomonic tangent plane
  centred on the catalog; ``xi`` points east and ``eta`` north.
* Per exposure and iteration: the positions are projected with the exposure's WCS, the local
  2x2 Jacobian ``d(x, y)/d(xi, eta)`` comes from central differences of ``all_pix2world``
  (exact, non-iterative), and unit PSF stamps with their pixel gradients come from
  ``psf_model._stamps_grad``. Stamps are ``fit_shape`` boxes placed once, at the initial
  position (:func:`crowdphot.core.batched.stamp_origin`), as the single-image fitter does; a
  stamp pixel off the detector, masked, non-finite or with a non-positive error carries no
  weight, so a star that falls off an exposure simply gets no constraint from it.
* The model of an exposure is the sum of all stamps (all-star neighbour subtraction); the
  chain rule gives a sparse Jacobian in ``(xi, eta, flux_filter)`` whose normal matrix is
  accumulated over exposures. Sources are grouped on the tangent plane with
  :class:`crowdphot.psf.SourceGrouper`; cross terms are kept inside groups and each group's
  dense normal system is solved (batched over groups of equal size).
* Position steps are shortened to move a star by at most one pixel in any exposure; a group
  has converged when its step, measured with its normal matrix (i.e. in units of its errors),
  is below ``tol``. Errors come from the inverse normal matrix: absolute when error arrays are
  given, scaled by the reduced chi-square otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from astropy import units as u
from astropy.table import QTable
from astropy.wcs.utils import proj_plane_pixel_scales

from crowdphot.core.batched import stamp_origin
from crowdphot.psf.groupers import SourceGrouper

__all__ = ["Exposure", "fit_exposures", "MULTI_FLAGS"]

_ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi

#: Flag bits of the ``flags`` column of :func:`fit_exposures`.
MULTI_FLAGS = {
    1: "no valid pixel in any exposure (position and fluxes NaN)",
    2: "no valid pixel in some filter (that flux NaN)",
    4: "fit did not converge within maxiters",
    8: "singular normal matrix (errors NaN)",
}


@dataclass
class Exposure:
    """One exposure of a joint fit.

    Parameters
    ----------
    data : ndarray or Quantity of shape (ny, nx)
        Pixel values (background subtracted).
    error : ndarray or Quantity of shape (ny, nx), or None
        1-sigma errors, same unit as ``data``; None for unit weights.
    mask : ndarray of bool, shape (ny, nx), or None
        True marks pixels to ignore.
    wcs : astropy.wcs.WCS
        Celestial WCS of the image (pixel origin 0 is the centre of the first pixel).
    psf_model : crowdphot PSF model
        Any model with the batched contract (``_stamps_grad``).
    filter_name : str
        Exposures sharing a filter share a flux.
    name : str, optional
        Label used in error messages.

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> from crowdphot import CircularGaussianPRF
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.cdelt = [-1e-5, 1e-5]
    >>> e = Exposure(np.zeros((10, 10)), None, None, w, CircularGaussianPRF(fwhm=2.0), "F200W")
    >>> e.filter_name
    'F200W'
    """

    data: object
    error: object
    mask: object
    wcs: object
    psf_model: object
    filter_name: str
    name: str | None = None

    def __post_init__(self):
        label = self.name or "exposure"
        data = self.data
        self.unit = data.unit if isinstance(data, u.Quantity) else None
        data = np.asarray(getattr(data, "value", data), dtype=float)
        if data.ndim != 2:
            raise ValueError(f"{label}: data must be a 2-D array, got shape {data.shape}")
        self.data = data
        if self.error is not None:
            err = self.error
            eunit = err.unit if isinstance(err, u.Quantity) else None
            if eunit != self.unit:
                raise ValueError(f"{label}: error unit {eunit} differs from data unit "
                                 f"{self.unit}")
            err = np.asarray(getattr(err, "value", err), dtype=float)
            if err.shape != data.shape:
                raise ValueError(f"{label}: error shape {err.shape} differs from data shape "
                                 f"{data.shape}")
            self.error = err
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.shape != data.shape:
                raise ValueError(f"{label}: mask shape {mask.shape} differs from data shape "
                                 f"{data.shape}")
            self.mask = mask.astype(bool)
        wcs = self.wcs
        if not getattr(wcs, "has_celestial", False):
            raise ValueError(f"{label}: wcs has no celestial (RA/Dec) axes; a joint fit in sky "
                             "coordinates needs a celestial WCS")
        if wcs.pixel_n_dim != 2:
            raise ValueError(f"{label}: wcs must have 2 pixel axes, got {wcs.pixel_n_dim}")
        if not hasattr(self.psf_model, "_stamps_grad"):
            raise TypeError(f"{label}: psf_model must be a crowdphot PSF model (batched "
                            "contract with _stamps_grad)")
        if not isinstance(self.filter_name, str) or not self.filter_name:
            raise ValueError(f"{label}: filter_name must be a non-empty string")

    def pixel_scale(self):
        """Largest pixel scale in arcsec (assumes degrees on the celestial axes)."""
        return float(np.max(np.abs(proj_plane_pixel_scales(self.wcs.celestial)))) * 3600.0


# -- tangent plane --------------------------------------------------------------------------
def _basis(ra0, dec0):
    a, d = np.deg2rad(ra0), np.deg2rad(dec0)
    e0 = np.array([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])
    east = np.array([-np.sin(a), np.cos(a), 0.0])
    north = np.array([-np.sin(d) * np.cos(a), -np.sin(d) * np.sin(a), np.cos(d)])
    return e0, east, north


def _to_plane(basis, ra, dec):
    """(ra, dec) deg -> (xi, eta) arcsec."""
    e0, east, north = basis
    a, d = np.deg2rad(ra), np.deg2rad(dec)
    v = np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)
    w = v @ e0
    return (v @ east) / w * _ARCSEC_PER_RAD, (v @ north) / w * _ARCSEC_PER_RAD


def _from_plane(basis, xi, eta):
    """(xi, eta) arcsec -> (ra, dec) deg."""
    e0, east, north = basis
    v = (e0[None] + (xi / _ARCSEC_PER_RAD)[:, None] * east[None]
         + (eta / _ARCSEC_PER_RAD)[:, None] * north[None])
    ra = np.rad2deg(np.arctan2(v[:, 1], v[:, 0])) % 360.0
    dec = np.rad2deg(np.arctan2(v[:, 2], np.hypot(v[:, 0], v[:, 1])))
    return ra, dec


def _project(exp, basis, xi, eta):
    """Pixel positions and Jacobian ``A[i] = d(x, y)/d(xi, eta)`` (pixels per arcsec)."""
    ra, dec = _from_plane(basis, xi, eta)
    x, y = exp.wcs.all_world2pix(ra, dec, 0, tolerance=1e-12, maxiter=100, quiet=True)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    h = 0.01  # pixels; all_pix2world is exact, so central differences are accurate
    cols = []
    for dx, dy in ((h, 0.0), (-h, 0.0), (0.0, h), (0.0, -h)):
        r, d = exp.wcs.all_pix2world(x + dx, y + dy, 0)
        cols.append(_to_plane(basis, np.asarray(r), np.asarray(d)))
    # B = d(xi, eta)/d(x, y)
    b = np.empty((len(x), 2, 2))
    b[:, 0, 0] = (cols[0][0] - cols[1][0]) / (2 * h)
    b[:, 1, 0] = (cols[0][1] - cols[1][1]) / (2 * h)
    b[:, 0, 1] = (cols[2][0] - cols[3][0]) / (2 * h)
    b[:, 1, 1] = (cols[2][1] - cols[3][1]) / (2 * h)
    return x, y, np.linalg.inv(b)


# -- validation -----------------------------------------------------------------------------
def _check_exposures(exposures):
    if isinstance(exposures, Exposure) or not hasattr(exposures, "__len__"):
        raise TypeError("exposures must be a sequence of Exposure objects or tuples")
    if len(exposures) == 0:
        raise ValueError("exposures must not be empty")
    out = []
    for i, e in enumerate(exposures):
        if isinstance(e, Exposure):
            if e.name is None:
                e.name = f"exposures[{i}]"
            out.append(e)
        else:
            try:
                out.append(Exposure(*e, name=f"exposures[{i}]") if len(e) == 6
                           else Exposure(*e))
            except TypeError as exc:
                raise TypeError(f"exposures[{i}]: expected an Exposure or a tuple (data, error, "
                                f"mask, wcs, psf_model, filter_name): {exc}") from None
    units = {e.unit for e in out}
    if len(units) > 1:
        raise ValueError("exposures have different data units: "
                         + ", ".join(f"{e.name}: {e.unit}" for e in out))
    has_err = {e.error is not None for e in out}
    if len(has_err) > 1:
        raise ValueError("give error arrays for all exposures or for none")
    return out


def _degrees(col):
    unit = getattr(col, "unit", None)
    if unit is None:
        return np.asarray(col, dtype=float)
    return u.Quantity(col, unit).to_value(u.deg)


def _check_catalog(catalog, filters, unit):
    names = getattr(catalog, "colnames", None)
    if names is None or "ra" not in names or "dec" not in names:
        raise ValueError("catalog must be a table with 'ra' and 'dec' columns (degrees)")
    ra, dec = _degrees(catalog["ra"]), _degrees(catalog["dec"])
    if ra.ndim != 1 or len(ra) == 0:
        raise ValueError("catalog must have at least one row")
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise ValueError("catalog ra/dec must be finite")
    flux = np.full((len(ra), len(filters)), np.nan)
    for k, f in enumerate(filters):
        col = f"flux_{f}" if f"flux_{f}" in names else ("flux" if "flux" in names else None)
        if col is None:
            continue
        v = catalog[col]
        if getattr(v, "unit", None) is not None:
            v = u.Quantity(v, v.unit)
            v = v.to_value(unit) if unit is not None else v.value
        flux[:, k] = np.asarray(v, dtype=float)
    ids = np.asarray(catalog["id"]) if "id" in names else np.arange(1, len(ra) + 1)
    return ra, dec, flux, ids


# -- one exposure's contribution ------------------------------------------------------------
class _Frame:
    """Fixed pixel geometry of one exposure.

    The fitted pixels are the union of the valid pixels of every source's ``fit_shape`` stamp
    (each counted once); each source's model is evaluated on its larger ``model_shape`` stamp,
    so a neighbour's light reaches the pixels of every stamp it overlaps.
    """

    def __init__(self, exp, x, y, fit_shape, model_shape):
        self.exp = exp
        img_ny, img_nx = exp.data.shape
        self.npix_img = img_ny * img_nx
        flat = exp.data.ravel()
        pix, inside = self._stamp_pixels(x, y, fit_shape, exp.data.shape)
        good = inside & np.isfinite(flat[pix])
        if exp.mask is not None:
            good &= ~exp.mask.ravel()[pix]
        if exp.error is not None:
            err = exp.error.ravel()[pix]
            good &= np.isfinite(err) & (err > 0)
        self.has_pix = good.any(axis=(1, 2))
        used = np.zeros(self.npix_img, dtype=bool)
        used[pix[good]] = True
        if exp.error is not None:
            err = exp.error.ravel()
            w = np.where(used, 1.0 / np.where(used, err, 1.0), 0.0)
        else:
            w = used.astype(float)
        self.sqrtw_img = w
        self.data_img = np.where(used, flat, 0.0)
        self.npix = int(used.sum())
        self.xlo, self.ylo = stamp_origin(x, y, model_shape)
        self.pix, self.inside = self._stamp_pixels(x, y, model_shape, exp.data.shape)

    @staticmethod
    def _stamp_pixels(x, y, shape, img_shape):
        ny, nx = shape
        img_ny, img_nx = img_shape
        xlo, ylo = stamp_origin(x, y, shape)
        ix = xlo[:, None] + np.arange(nx)
        iy = ylo[:, None] + np.arange(ny)
        inside = ((iy >= 0) & (iy < img_ny))[:, :, None] & ((ix >= 0) & (ix < img_nx))[:, None, :]
        pix = (np.clip(iy, 0, img_ny - 1)[:, :, None] * img_nx
               + np.clip(ix, 0, img_nx - 1)[:, None, :])
        return pix, inside


def _accumulate(frames, fidx, basis, xi, eta, flux, shape, nsrc, npar):
    """Normal matrix (sparse), gradient, chi2 and pixel count at the current parameters.

    ``shape`` is the model stamp shape.
    """
    normal = sp.csr_matrix((nsrc * npar, nsrc * npar))
    grad = np.zeros(nsrc * npar)
    chi2 = 0.0
    npix = 0
    geo = []  # (sources, d(x, y)/d(xi, eta)) per exposure, for the step clamp
    m = shape[0] * shape[1]
    for fr, f in zip(frames, fidx, strict=True):
        sel = np.flatnonzero(fr.has_pix)
        k = len(sel)
        x, y, a = _project(fr.exp, basis, xi[sel], eta[sel])
        p, px, py = fr.exp.psf_model._stamps_grad(x, y, fr.xlo[sel], fr.ylo[sel], shape)
        inside = fr.inside[sel]
        fl = flux[sel, f][:, None, None]
        pix = fr.pix[sel]
        model = np.bincount(pix.ravel(), weights=(fl * p * inside).ravel(),
                            minlength=fr.npix_img)
        rimg = (fr.data_img - model) * fr.sqrtw_img
        chi2 += float(np.sum(rimg ** 2))
        npix += fr.npix
        sw = fr.sqrtw_img[pix] * inside
        resid = rimg[pix] * inside
        dxi = fl * (px * a[:, 0, 0, None, None] + py * a[:, 1, 0, None, None]) * sw
        deta = fl * (px * a[:, 0, 1, None, None] + py * a[:, 1, 1, None, None]) * sw
        dfl = p * sw
        # only pixels that are fitted (non-zero weight) enter the Jacobian
        star, jpix = np.nonzero(sw.reshape(k, m))
        rows = np.repeat(pix.reshape(k, m)[star, jpix], 3)
        base = sel[star] * npar
        cols = np.stack([base, base + 1, base + 2 + f], axis=1).ravel()
        vals = np.stack([dxi.reshape(k, m)[star, jpix], deta.reshape(k, m)[star, jpix],
                         dfl.reshape(k, m)[star, jpix]], axis=1).ravel()
        jac = sp.csr_matrix((vals, (rows, cols)), shape=(fr.npix_img, nsrc * npar))
        normal = normal + (jac.T @ jac).tocsr()
        grad += np.bincount(cols, weights=vals * np.repeat(resid.reshape(k, m)[star, jpix], 3),
                            minlength=nsrc * npar)
        geo.append((sel, a))
    return normal, grad, chi2, npix, geo


# -- grouped dense solves -------------------------------------------------------------------
class _Groups:
    """Layout of groups by size: source -> (size class, slot, rank)."""

    def __init__(self, group_id, npar):
        _, gidx, counts = np.unique(group_id, return_inverse=True, return_counts=True)
        self.size = counts[gidx]
        order = np.argsort(gidx, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        rank = np.empty(len(gidx), dtype=np.int64)
        rank[order] = np.arange(len(gidx)) - starts[gidx[order]]
        self.rank = rank
        self.gidx = gidx
        slot = np.empty(len(counts), dtype=np.int64)
        self.classes = {}
        for s in np.unique(counts):
            gs = np.flatnonzero(counts == s)
            slot[gs] = np.arange(len(gs))
            self.classes[int(s)] = len(gs)
        self.slot = slot[gidx]
        self.npar = npar

    def blocks(self, normal, grad):
        """Dense per-group normal matrices and gradients, one array pair per group size."""
        npar = self.npar
        coo = normal.tocoo()
        sr, sc = coo.row // npar, coo.col // npar
        keep = self.gidx[sr] == self.gidx[sc]
        out = {}
        for s, ng in self.classes.items():
            b = np.zeros((ng, s * npar, s * npar))
            sub = keep & (self.size[sr] == s)
            b[self.slot[sr[sub]], self.rank[sr[sub]] * npar + coo.row[sub] % npar,
              self.rank[sc[sub]] * npar + coo.col[sub] % npar] = coo.data[sub]
            src = np.flatnonzero(self.size == s)
            g = np.zeros((ng, s * npar))
            k = np.arange(npar)
            g[self.slot[src][:, None], self.rank[src][:, None] * npar + k] = \
                grad.reshape(-1, npar)[src]
            out[s] = (b, g, src)
        return out

    def scatter(self, s, src, arr):
        """Per-source rows ``(len(src), npar, ...)`` of a per-group array ``(ng, s*npar, ...)``."""
        npar = self.npar
        idx = self.rank[src][:, None] * npar + np.arange(npar)
        return arr[self.slot[src][:, None], idx]


def _solve_blocks(b, g):
    """Steps and inverses of the group systems; unconstrained parameters stay fixed."""
    free = np.einsum("gii->gi", b) > 0
    bb = b * free[:, :, None] * free[:, None, :]
    ar = np.arange(b.shape[1])
    bb[:, ar, ar] += ~free
    gg = g * free
    singular = np.zeros(len(b), dtype=bool)
    try:
        inv = np.linalg.inv(bb)
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(bb)
        singular = ~np.all(np.isclose(np.einsum("gij,gjk->gik", bb, inv),
                                      np.eye(bb.shape[1]), atol=1e-6), axis=(1, 2))
    step = np.einsum("gij,gj->gi", inv, gg)
    q = np.einsum("gi,gij,gj->g", step, bb, step)
    inv = np.where(free[:, :, None] & free[:, None, :], inv, np.nan)
    return step, inv, q, free, singular


def _default_model_shape(exps, fit_shape, group_separation):
    """``fit_shape`` grown by the group linking length (in the finest pixels) on each side,
    capped at the largest PSF extent; odd."""
    scale = min(e.pixel_scale() for e in exps)
    grow = int(np.ceil(group_separation / scale))
    out = []
    for axis, n in enumerate(fit_shape):
        ext = 0
        for e in exps:
            try:
                ext = max(ext, e.psf_model.default_stamp_shape[axis])
            except (AttributeError, ValueError):
                ext = max(ext, n + 2 * grow)
        m = max(n, min(n + 2 * grow, ext))
        out.append(m + 1 - m % 2)
    return tuple(out)


# -- public API -----------------------------------------------------------------------------
def fit_exposures(exposures, catalog, *, fit_shape=(5, 5), model_shape=None,
                  group_separation=None, maxiters=50, tol=1e-4):
    """Fit one sky position and one flux per filter to every source over many exposures.

    Parameters
    ----------
    exposures : sequence of Exposure or of tuples (data, error, mask, wcs, psf_model, filter_name)
        The images; each needs a celestial WCS. Units of ``data`` (if Quantity) must agree.
    catalog : astropy.table.Table, shape (n,)
        Columns ``ra`` and ``dec`` (degrees, Quantity or float); optional initial fluxes
        ``flux_<FILTER>`` or ``flux`` (all filters); optional ``id``.
    fit_shape : int or (ny, nx), optional
        Odd stamp shape fitted around each source in every exposure (the fitted pixels of an
        exposure are the union of its stamps).
    model_shape : int or (ny, nx), optional
        Odd stamp shape on which each source's model is evaluated (its light outside is
        neglected, also on neighbours' fit stamps); default ``fit_shape`` grown on each side by
        ``group_separation`` in the finest exposure's pixels (so a model covers the fit stamps
        of its whole group, as photutils evaluates a group), capped at the PSF's extent
        (``psf_model.default_stamp_shape``). PSFs with strong wings beyond it (JWST) leave
        neighbours' wing light unmodelled: give a larger ``model_shape`` for them.
    group_separation : float, optional
        Sources closer than this many arcsec on the sky are fitted jointly (connected
        components). Default: the diagonal of ``fit_shape`` in the coarsest exposure's pixels.
        0 fits every source alone (neighbours still subtracted).
    maxiters : int, optional
        Maximum number of Gauss-Newton iterations.
    tol : float, optional
        Convergence threshold on each group's step in units of its errors.

    Returns
    -------
    table : astropy.table.QTable, length n
        ``id``, ``ra``, ``dec`` (deg), ``ra_err`` (error of ``ra * cos(dec)``) and ``dec_err``
        (arcsec), ``flux_<FILTER>``, ``flux_err_<FILTER>`` per filter (data unit),
        ``n_exposures`` (exposures giving the source pixels), ``iterations``, ``flags``
        (bits in `MULTI_FLAGS`).

    Examples
    --------
    >>> from astropy.table import Table
    >>> from astropy.wcs import WCS
    >>> from crowdphot import CircularGaussianPRF
    >>> from crowdphot.core.render import render_image
    >>> w = WCS(naxis=2); w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> w.wcs.cdelt = [-2e-5, 2e-5]; w.wcs.crpix = [16, 16]; w.wcs.crval = [10.0, 20.0]
    >>> psf = CircularGaussianPRF(fwhm=2.5)
    >>> img = render_image((31, 31), psf, np.array([15.3]), np.array([14.8]), np.array([100.0]))
    >>> ra, dec = w.all_pix2world(15.3, 14.8, 0)
    >>> cat = Table({"ra": [ra + 1e-6], "dec": [dec], "flux": [90.0]})
    >>> t = fit_exposures([(img, None, None, w, psf, "F1")], cat)
    >>> round(float(t["flux_F1"][0]), 6)
    100.0
    """
    exps = _check_exposures(exposures)
    ny, nx = (int(fit_shape), int(fit_shape)) if np.ndim(fit_shape) == 0 else \
        tuple(int(v) for v in fit_shape)
    if ny < 1 or nx < 1 or ny % 2 == 0 or nx % 2 == 0:
        raise ValueError(f"fit_shape must be odd and positive, got {fit_shape!r}")
    shape = (ny, nx)
    if int(maxiters) != maxiters or maxiters < 1:
        raise ValueError(f"maxiters must be a positive integer, got {maxiters!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    filters = list(dict.fromkeys(e.filter_name for e in exps))
    fidx = [filters.index(e.filter_name) for e in exps]
    unit = exps[0].unit
    ra0, dec0, flux, ids = _check_catalog(catalog, filters, unit)
    nsrc, nf = len(ra0), len(filters)
    npar = 2 + nf

    a, d = np.deg2rad(ra0), np.deg2rad(dec0)
    vc = np.array([np.sum(np.cos(d) * np.cos(a)), np.sum(np.cos(d) * np.sin(a)),
                   np.sum(np.sin(d))])
    basis = _basis(np.rad2deg(np.arctan2(vc[1], vc[0])),
                   np.rad2deg(np.arctan2(vc[2], np.hypot(vc[0], vc[1]))))
    xi, eta = _to_plane(basis, ra0, dec0)

    if group_separation is None:
        group_separation = float(np.hypot(ny, nx)) * max(e.pixel_scale() for e in exps)
    if not (np.isfinite(group_separation) and group_separation >= 0):
        raise ValueError(f"group_separation must be >= 0 arcsec, got {group_separation!r}")
    if model_shape is None:
        model_shape = _default_model_shape(exps, shape, group_separation)
    mshape = (int(model_shape), int(model_shape)) if np.ndim(model_shape) == 0 else \
        tuple(int(v) for v in model_shape)
    if (len(mshape) != 2 or mshape[0] < ny or mshape[1] < nx
            or not (mshape[0] % 2 and mshape[1] % 2)):
        raise ValueError(f"model_shape must be odd and at least fit_shape, got {model_shape!r}")
    frames = []
    for e in exps:
        x, y, _ = _project(e, basis, xi, eta)
        fr = _Frame(e, x, y, shape, mshape)
        if not fr.has_pix.any():
            raise ValueError(f"{e.name} overlaps none of the catalog sources (check its WCS)")
        frames.append(fr)
    n_exp = np.sum([fr.has_pix for fr in frames], axis=0)
    filt_pix = np.zeros((nsrc, nf), dtype=bool)
    for fr, f in zip(frames, fidx, strict=True):
        filt_pix[:, f] |= fr.has_pix

    if group_separation == 0 or nsrc == 1:
        gid = np.arange(nsrc)
    else:
        gid = SourceGrouper(min_separation=group_separation)(xi, eta)
    groups = _Groups(gid, npar)

    flux = np.where(np.isfinite(flux), flux, 0.0)
    converged = np.zeros(nsrc, dtype=bool)
    niter = np.zeros(nsrc, dtype=np.int64)
    for it in range(maxiters + 1):
        normal, grad, chi2, npix, geo = _accumulate(frames, fidx, basis, xi, eta, flux, mshape,
                                                    nsrc, npar)
        blocks = groups.blocks(normal, grad)
        if it == maxiters or converged.all():
            break
        step = np.zeros((nsrc, npar))
        qsrc = np.zeros(nsrc)
        for s, (b, g, src) in blocks.items():
            st, _, q, _, _ = _solve_blocks(b, g)
            step[src] = groups.scatter(s, src, st)
            qsrc[src] = q[groups.slot[src]]
        # at most one pixel of motion in any exposure
        move = np.zeros(nsrc)
        for sel, jac in geo:
            dpix = np.einsum("nij,nj->ni", jac, step[sel, :2])
            move[sel] = np.maximum(move[sel], np.hypot(dpix[:, 0], dpix[:, 1]))
        clamp = move > 1.0
        step[clamp, :2] /= move[clamp, None]
        active = ~converged
        xi = xi + step[:, 0] * active
        eta = eta + step[:, 1] * active
        flux = flux + step[:, 2:] * active[:, None]
        niter += active
        gclamp = np.bincount(groups.gidx, weights=clamp, minlength=groups.gidx.max() + 1) > 0
        converged = converged | ((np.sqrt(qsrc) < tol) & ~gclamp[groups.gidx])

    cov = np.full((nsrc, npar, npar), np.nan)
    singular = np.zeros(nsrc, dtype=bool)
    for s, (b, g, src) in blocks.items():
        _, inv, _, _, sing = _solve_blocks(b, g)
        rows = groups.scatter(s, src, inv)  # (len(src), npar, s*npar)
        cols = groups.rank[src][:, None] * npar + np.arange(npar)
        cov[src] = np.take_along_axis(rows, cols[:, None, :], axis=2)
        singular[src] = sing[groups.slot[src]]
    if exps[0].error is None:
        nfree = int(np.sum(filt_pix) + 2 * np.sum(n_exp > 0))
        cov *= chi2 / max(npix - nfree, 1)

    ra, dec = _from_plane(basis, xi, eta)
    # local Jacobian d(ra cos dec, dec)/d(xi, eta) in arcsec per arcsec
    h = 0.01
    r1, d1 = _from_plane(basis, xi + h, eta)
    r2, d2 = _from_plane(basis, xi - h, eta)
    r3, d3 = _from_plane(basis, xi, eta + h)
    r4, d4 = _from_plane(basis, xi, eta - h)
    cosd = np.cos(np.deg2rad(dec))
    dra = lambda r_a, r_b: ((r_a - r_b + 180.0) % 360.0 - 180.0) * 3600.0 * cosd / (2 * h)  # noqa: E731
    jsky = np.empty((nsrc, 2, 2))
    jsky[:, 0, 0] = dra(r1, r2)
    jsky[:, 0, 1] = dra(r3, r4)
    jsky[:, 1, 0] = (d1 - d2) * 3600.0 / (2 * h)
    jsky[:, 1, 1] = (d3 - d4) * 3600.0 / (2 * h)
    csky = np.einsum("nij,njk,nlk->nil", jsky, cov[:, :2, :2], jsky)

    nopix = n_exp == 0
    flags = np.zeros(nsrc, dtype=np.int64)
    flags[nopix] |= 1
    flags[(~filt_pix).any(axis=1) & ~nopix] |= 2
    flags[~converged & ~nopix] |= 4
    flags[singular & ~nopix] |= 8
    ra[nopix] = np.nan
    dec[nopix] = np.nan
    funit = unit if unit is not None else u.dimensionless_unscaled
    tab = QTable()
    tab["id"] = ids
    tab["ra"] = ra * u.deg
    tab["dec"] = dec * u.deg
    tab["ra_err"] = np.sqrt(csky[:, 0, 0]) * u.arcsec
    tab["dec_err"] = np.sqrt(csky[:, 1, 1]) * u.arcsec
    for k, f in enumerate(filters):
        fl = np.where(filt_pix[:, k], flux[:, k], np.nan)
        fe = np.sqrt(cov[:, 2 + k, 2 + k])
        tab[f"flux_{f}"] = fl * funit if unit is not None else fl
        tab[f"flux_err_{f}"] = fe * funit if unit is not None else fe
    tab["n_exposures"] = n_exp
    tab["iterations"] = niter
    tab["flags"] = flags
    return tab
