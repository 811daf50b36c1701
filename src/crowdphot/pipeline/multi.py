"""Joint PSF fits of many exposures in sky coordinates (ALLFRAME-style).

Every source has one sky position shared by all exposures and one flux per filter. Each
exposure brings its own pixels, errors, mask, WCS (anything ``astropy.wcs.WCS.all_world2pix``
evaluates, TAN-SIP included) and PSF model (the batched contract of
:mod:`crowdphot.core.batched`).

Method (the batched engine with tied source copies)
---------------------------------------------------
* Positions are ``(xi, eta)`` in arcsec on one gnomonic tangent plane centred on the catalog
  (``xi`` east, ``eta`` north); fluxes are one per filter.
* Every source has a *copy* in each exposure whose ``fit_shape`` stamp, placed once on the
  initial position (as the single-image fitter does), keeps a valid pixel: a pixel off the
  detector, masked, non-finite or with a non-positive error carries no weight, so a star that
  falls off an exposure simply gets no constraint from it.
* The copies are fitted by the general engine (:mod:`crowdphot.core.fit.tied`): their
  ``(x, y)`` come from the exact WCS (``all_world2pix``) of the shared ``(xi, eta)``, the
  chain rule uses each copy's WCS Jacobian ``d(x, y)/d(xi, eta)`` (central differences of the
  non-iterative ``all_pix2world``, re-linearised at the start of every pass), and the flux of
  a copy is its filter's flux. Sources are grouped on the tangent plane with
  :class:`crowdphot.psf.SourceGrouper`; a group's members (all their copies) are fitted
  simultaneously with Levenberg-Marquardt, all groups at once.
* All-star passes (``subtract_neighbors``): the light of every source outside a group is
  subtracted from its copies' stamps (:func:`crowdphot.psf.allstar.neighbor_stamps` on a
  virtual mosaic of the exposures) and the groups whose neighbours changed are refitted. The
  rules are those of the single-image all-star fit (:func:`crowdphot.psf.allstar.fit_allstar`)
  per exposure: with error arrays a copy is coupled to its group's stamps only where its PSF
  at twice its initial flux exceeds the exposure's noise (the median error of every fourth
  pixel; at most ``COUPLING_MAX_FIT`` fit boxes), its fainter light there coming with the
  neighbours' light, and a source's light reaches out to where its PSF at twice its flux of
  the first fit falls below 1 % of that noise.
* Errors come from the inverse normal matrix of the shared parameters: absolute when error
  arrays are given, scaled by each group's reduced chi-square otherwise.

One exposure against the single-image fit
-----------------------------------------
Grouped (``subtract_neighbors=False``): the same fit, equal to ``PSFPhotometry`` to 1e-6 px.
All-star: the same solution (the passes' fixed point) -- with the passes run until nothing
moves (tolerances tightened, as a test does) the two agree to 1e-7 px and 1e-6 flux errors --
but not the same passes, so with the default stopping rules they differ by where the passes
stop: up to 0.011 sigma in position and 0.046 sigma in flux on the 256^2 bench scene (JWST-like
PSF, close pairs), below the ``TOL_SETTLED`` scale of each pass's last moves. The passes
differ in that (1) the joint fit updates a source's neighbour light once it moved by more than
``LIGHT_SIGMA`` (0.05) errors, and only out to where the change exceeds the noise floor
(``LIGHT_GRADIENT`` bound), where the single-image passes bound every stamp's change and
re-evaluate it exactly when it could exceed the refit threshold; (2) the joint first pass
refits every group, the single-image one only groups whose neighbours' light exceeds
``TOL_SIGMA`` of a flux error; (3) the refit thresholds use the current errors (single image:
the first fit's) and the settling test is on ``(xi, eta)`` and fluxes (single image: on
``x, y`` per pixel with floors of 1e-5 px and ``TOL_REL``); (4) a member whose fit fails is
flagged here, while the single-image passes drop it from the model and refit its group
without it (ALLSTAR's deletion), so its neighbours differ. Equal passes would need
:mod:`crowdphot.psf.allstar`'s pass loop (its ``_update_light``, thresholds and settling test)
run on the copies, per exposure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from astropy import units as u
from astropy.table import QTable
from astropy.wcs.utils import proj_plane_pixel_scales

from crowdphot.core.fit.params import TiedParams
from crowdphot.core.fit.tied import build_tied, solve_tied
from crowdphot.pipeline.multi_sky import detect_on_stack
from crowdphot.psf.allstar import (
    COUPLING_MARGIN,
    COUPLING_MAX_FIT,
    MAX_PASSES,
    NEIGHBOR_NOISE,
    REACH_NOISE,
    TOL_REL,
    TOL_SETTLED,
    TOL_SIGMA,
    flux_reach,
    model_reach,
    neighbor_stamps,
)
from crowdphot.psf.groupers import SourceGrouper

__all__ = ["Exposure", "fit_exposures", "MULTI_FLAGS"]

_ARCSEC_PER_RAD = 180.0 * 3600.0 / np.pi
#: All-star passes re-evaluate a source's light on its neighbours once its parameters moved by
#: more than this many errors since the last evaluation.
LIGHT_SIGMA = 0.05
#: Bound of a PSF's relative gradient (per pixel) in the light change of a shifted source,
#: ``|d flux| + LIGHT_GRADIENT |flux| shift``; JWST's rings make it several per pixel in the
#: wings (2 left a star 0.6 % off in the noiseless bench, 8 and 20 give <= 0.09 %).
LIGHT_GRADIENT = 10.0
#: The fit iterates on each exposure's WCS linearised at its start and is repeated from its
#: solution (at most ``MAX_RELINEARISE`` times) while the linearised positions there differ
#: from the exact ``all_world2pix`` ones by more than this many pixels (distorted WCS).
POSITION_TOL = 1e-8
MAX_RELINEARISE = 4

#: Flag bits of the ``flags`` column of :func:`fit_exposures`.
MULTI_FLAGS = {
    1: "no valid pixel in any exposure (position and fluxes NaN)",
    2: "no valid pixel in some filter (that flux NaN)",
    4: "fit did not converge within maxiters",
    8: "covariance unavailable (singular normal matrix or no degrees of freedom; errors NaN)",
    16: "position reached the edge of a fit stamp and was held there",
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
    h = 0.5  # pixels: all_pix2world is exact, central differences are exact for quadratic
    # distortions, and a wide step keeps the rounding of degrees (1e-14 deg) small
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


# -- the tied fit ---------------------------------------------------------------------------
class _Sky:
    """Copies of the sources in the exposures and the map from shared parameters to them.

    Shared parameters of a source: ``(xi, eta)`` in arcsec on the tangent plane, then one flux
    per filter. ``theta`` projects them through each exposure's exact WCS; ``tie`` is the WCS
    linearised at a point (the fit iterates on it and is repeated from its solution until the
    linearised positions there agree with the exact ones, :func:`_solve_exact`).
    """

    def __init__(self, exps, fidx, basis, nf, frame, star):
        self.exps, self.fidx, self.basis, self.nf = exps, fidx, basis, nf
        self.frame, self.star = frame, star
        self.fcol = 2 + np.asarray(fidx)[frame]
        self.by_frame = [np.flatnonzero(frame == f) for f in range(len(exps))]

    def theta(self, p):
        out = np.empty((len(self.frame), 3))
        for f, sel in enumerate(self.by_frame):
            if len(sel) == 0:
                continue
            ra, dec = _from_plane(self.basis, p[self.star[sel], 0], p[self.star[sel], 1])
            x, y = self.exps[f].wcs.all_world2pix(ra, dec, 0, tolerance=1e-12, maxiter=100,
                                                  quiet=True)
            out[sel, 0], out[sel, 1] = x, y
        out[:, 2] = p[self.star, self.fcol]
        return out

    def tie(self, p, n):
        """The WCS linearised at ``p``: ``theta = offset + matrix @ p`` exact at ``p``."""
        m = len(self.frame)
        mat = np.zeros((m, 3, 2 + self.nf))
        off = np.zeros((m, 3))
        for f, sel in enumerate(self.by_frame):
            if len(sel):
                ps = p[self.star[sel]]
                x, y, a = _project(self.exps[f], self.basis, ps[:, 0], ps[:, 1])
                mat[sel, :2, :2] = a
                off[sel, 0] = x - np.einsum("cj,cj->c", a[:, 0], ps[:, :2])
                off[sel, 1] = y - np.einsum("cj,cj->c", a[:, 1], ps[:, :2])
        mat[np.arange(m), 2, self.fcol] = 1.0
        names = ("xi", "eta") + tuple(f"flux{k}" for k in range(self.nf))
        return TiedParams(self.star, mat, off, n, names)


def _neighbor_light(tp, theta, reach, only=None, coupled=None):
    """Light of the copies outside each copy's group on its stamp (virtual mosaic), plus that
    of members beyond their coupling (``coupled``, as :func:`neighbor_stamps`); ``only``
    (bool, per copy) restricts the light to those copies."""
    flux = theta[:, 2] if only is None else np.where(only, theta[:, 2], 0.0)
    return neighbor_stamps(tp.psf, theta[:, 0] + tp.xoff, theta[:, 1], flux,
                           tp.prob.layout.group, tp.prob.xlo, tp.prob.ylo, tp.prob.fit_shape,
                           reach=reach, coupled=coupled).reshape(len(theta), -1)


def _solve_exact(tp, sky, p, n, **kwargs):
    """:func:`solve_tied` on the WCS linearised at ``p``, repeated from its solution until the
    linearised positions there equal the exact ones (to ``POSITION_TOL`` pixels)."""
    for _ in range(MAX_RELINEARISE):
        res = solve_tied(tp, sky.tie(p, n), p, **kwargs)
        exact = sky.theta(res.p)
        p = res.p
        if not np.nanmax(np.abs(exact[:, :2] - res.theta[:, :2]), initial=0.0) > POSITION_TOL:
            break
        kwargs["groups"] = None
    return replace(res, theta=exact)


def _initial_flux(tp, sky, p, n, nf):
    """Flux per source and filter from the copies' stamps at the start positions: the
    weighted least-squares scale of the unit PSF, pooled over the filter's copies."""
    theta = sky.theta(p)
    v = np.asarray(tp.psf._stamps(theta[:, 0] + tp.xoff, theta[:, 1], tp.prob.xlo,
                                  tp.prob.ylo, tp.prob.fit_shape)).reshape(len(theta), -1)
    w2 = tp.prob.weight ** 2
    key = tp.star * nf + (sky.fcol - 2)
    num = np.bincount(key, np.einsum("ij,ij,ij->i", w2, tp.data0, v), minlength=n * nf)
    den = np.bincount(key, np.einsum("ij,ij,ij->i", w2, v, v), minlength=n * nf)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.where(np.isfinite(flux), flux, 0.0).reshape(n, nf)


def _allstar_passes(tp, sky, exps, res, n, free, floors, no_err, maxiters, tol, max_passes,
                    coupled=None):
    """All-star passes: refit the groups whose neighbours' light changed, until none does.

    The neighbours' light is updated incrementally: only the copies of sources that moved are
    re-evaluated (their new light minus their old, out to where that change exceeds the
    floor). A group is refitted when the light on
    one of its copies' stamps changed by more than ``TOL_SIGMA`` of that copy's flux error
    (summed absolute change over the stamp) and by more than ``TOL_REL`` of its flux.
    """
    lay = tp.prob.layout
    cgrp = lay.group
    n_groups = lay.n_groups
    theta_light = res.theta
    reach_light = _reach(tp, exps, theta_light, floors)
    neighbors = _neighbor_light(tp, theta_light, reach_light, coupled=coupled)
    p_light = res.p.copy()
    change = np.abs(neighbors).sum(axis=1)
    p = res.p
    ferr = None
    passes = 0
    for it in range(max_passes):
        if ferr is None:
            refit = np.ones(n_groups, dtype=bool)
        else:
            big = (change > TOL_SIGMA * ferr) & (change > TOL_REL * np.abs(res.theta[:, 2]))
            refit = np.bincount(cgrp, big, minlength=n_groups) > 0
        if not refit.any():
            break
        last = it == max_passes - 1
        new = _solve_exact(tp, sky, p, n, free=free, neighbors=neighbors, groups=refit,
                           maxiters=maxiters, xtol=tol, scale_by_chi2=no_err)
        passes += 1
        rs = refit[tp.layout.group]
        new = replace(new, converged=np.where(rs, new.converged, res.converged),
                      niter=res.niter + new.niter, stopped=new.stopped | res.stopped)
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.sqrt(np.abs(np.einsum("nkk->nk", new.cov)))
            moved_s = (np.abs(new.p - p) > TOL_SETTLED * err).any(axis=1)
        ferr = err[tp.star, sky.fcol]
        ferr = np.where(np.isfinite(ferr), ferr, 0.0)
        res, p = new, new.p
        if last or not moved_s.any():
            break
        # neighbours' light follows the sources whose parameters moved by more than
        # LIGHT_SIGMA of their errors since their light was last evaluated (smaller changes
        # move a neighbour's fit by far less than TOL_SETTLED of its errors)
        with np.errstate(invalid="ignore"):
            light_s = (np.abs(p - p_light) > LIGHT_SIGMA * err).any(axis=1)
        moved = light_s[tp.star]
        theta = res.theta
        # the change of a moved copy's light is evaluated only out to where it exceeds the
        # floor (bounded per pixel by |d flux| + LIGHT_GRADIENT |flux| x shift in pixels): far
        # cheaper than its whole light; farther, the stale light differs by less than that
        sel = np.flatnonzero(moved)
        dth = np.abs(theta[sel] - theta_light[sel])
        change_amp = dth[:, 2] + LIGHT_GRADIENT * np.abs(theta[sel, 2]) * dth[:, :2].max(axis=1)
        amp = np.zeros(len(theta))
        amp[sel] = change_amp
        dreach = np.zeros(len(theta))
        dreach[sel] = np.minimum(_reach_of(tp, exps, np.column_stack([theta[:, :2], amp]),
                                           floors, sel), reach_light[sel])
        delta = (_neighbor_light(tp, theta, dreach, moved, coupled)
                 - _neighbor_light(tp, theta_light, dreach, moved, coupled))
        neighbors = neighbors + delta
        theta_light = np.where(moved[:, None], theta, theta_light)
        p_light = np.where(light_s[:, None], p, p_light)
        change = np.abs(delta).sum(axis=1)
    return res, passes


def _reach(tp, exps, theta, floors):
    """Per-copy model half-width: where the PSF at twice the copy's flux falls below the
    floor (1 % of the exposure's noise), as :func:`crowdphot.psf.allstar.fit_allstar`."""
    theta = np.column_stack([theta[:, :2], 2.0 * np.abs(theta[:, 2])])
    return _reach_of(tp, exps, theta, floors, np.arange(len(theta)))


def _reach_of(tp, exps, theta, floors, idx):
    """:func:`_reach` of the copies ``idx`` only."""
    reach = np.empty(len(idx))
    for f, e in enumerate(exps):
        k = np.flatnonzero(tp.frame[idx] == f)
        if len(k):
            sel = idx[k]
            reach[k] = (flux_reach(e.psf_model, theta[sel, 2], floors[f])
                        if floors[f] > 0 else model_reach(e.psf_model))
    return reach


def _parse_shape(name, value, at_least=1):
    shp = (int(value), int(value)) if np.ndim(value) == 0 else tuple(int(v) for v in value)
    if len(shp) != 2 or min(shp) < at_least or not (shp[0] % 2 and shp[1] % 2):
        raise ValueError(f"{name} must be odd and >= {at_least}, got {value!r}")
    return shp


# -- public API -----------------------------------------------------------------------------
def fit_exposures(exposures, catalog=None, *, fit_shape=(5, 5), model_shape=None,
                  group_separation=None, subtract_neighbors=True, maxiters=100, tol=1e-6,
                  max_passes=MAX_PASSES, detect_threshold=5.0, flux_per="filter",
                  _skip_empty=False):
    """Fit one sky position and one flux per filter to every source over many exposures.

    Parameters
    ----------
    exposures : sequence of Exposure or of tuples (data, error, mask, wcs, psf_model, filter_name)
        The images; each needs a celestial WCS. Units of ``data`` (if Quantity) must agree.
    catalog : astropy.table.Table, shape (n,), optional
        Columns ``ra`` and ``dec`` (degrees, Quantity or float); optional initial fluxes
        ``flux_<FILTER>`` or ``flux`` (all filters); optional ``id``. None: sources are found
        on the combined signal-to-noise stack of all exposures
        (:func:`crowdphot.pipeline.multi_sky.detect_on_stack`).
    fit_shape : int or (ny, nx), optional
        Odd stamp shape fitted around each source's initial position in every exposure (a
        pixel in the stamps of two members of a group counts once).
    model_shape : int or (ny, nx), optional
        Extent of a source's model for coupling the members of a group (default: the PSF's
        support, ``psf_model.default_stamp_shape``, the largest over exposures).
    group_separation : float, optional
        Sources closer than this many arcsec on the sky are fitted jointly (connected
        components). Default: the diagonal of ``fit_shape`` in the coarsest exposure's pixels.
        0 fits every source alone.
    subtract_neighbors : bool, optional
        All-star passes (DAOPHOT ALLSTAR / ALLFRAME): after the grouped fit, every copy's stamp
        sees the data minus the light of all sources of other groups (evaluated out to where
        each source's PSF falls below 1 % of the exposure's median error, the PSF's whole
        support without errors) and all groups are refitted, until no source moves by more
        than 0.5 % of its errors or ``max_passes``.
    maxiters : int, optional
        Maximum Levenberg-Marquardt iterations per pass.
    tol : float, optional
        A group has converged when every step is below ``tol`` times the parameter's error.
    max_passes : int, optional
        Most all-star passes after the first fit.
    detect_threshold : float, optional
        Detection threshold in units of the stack's noise (``catalog=None`` only).
    flux_per : {'filter', 'exposure'}, optional
        One flux per filter shared by its exposures (default), or one flux per exposure
        (columns ``flux_<FILTER>_<k>`` for exposure ``k`` of the input order; the position is
        still shared), e.g. for variable sources.

    Returns
    -------
    table : astropy.table.QTable, length n
        ``id``, ``ra``, ``dec`` (deg), ``ra_err`` (error of ``ra * cos(dec)``) and ``dec_err``
        (arcsec), ``flux_<FILTER>``, ``flux_err_<FILTER>`` per filter (data unit),
        ``n_exposures`` (exposures giving the source pixels), ``iterations``, ``passes``,
        ``flags`` (bits in `MULTI_FLAGS`).

    Notes
    -----
    The fit runs in the batched engine (:mod:`crowdphot.core.fit.tied`): one copy of each
    source per exposure it falls on (its own stamp, weights and PSF), copies tied by the chain
    rule to the shared ``(xi, eta)`` on a tangent plane through the exact WCS (TAN-SIP and
    anything ``astropy.wcs.WCS`` evaluates) and to one flux per filter. With one exposure it
    is the single-image grouped fit of :class:`crowdphot.PSFPhotometry`.

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
    shape = _parse_shape("fit_shape", fit_shape)
    ny, nx = shape
    if isinstance(maxiters, bool) or int(maxiters) != maxiters or maxiters < 1:
        raise ValueError(f"maxiters must be a positive integer, got {maxiters!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if int(max_passes) != max_passes or max_passes < 0:
        raise ValueError(f"max_passes must be an integer >= 0, got {max_passes!r}")
    support = None if model_shape is None else _parse_shape("model_shape", model_shape, ny)
    if flux_per == "filter":
        filters = list(dict.fromkeys(e.filter_name for e in exps))
    elif flux_per == "exposure":
        filters = [f"{e.filter_name}_{k}" for k, e in enumerate(exps)]
    else:
        raise ValueError(f"flux_per must be 'filter' or 'exposure', got {flux_per!r}")
    fidx = (list(range(len(exps))) if flux_per == "exposure"
            else [filters.index(e.filter_name) for e in exps])
    unit = exps[0].unit
    if catalog is None:
        catalog = detect_on_stack(exps, threshold=detect_threshold)
    ra0, dec0, flux0, ids = _check_catalog(catalog, filters, unit)
    nsrc, nf = len(ra0), len(filters)

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
    if group_separation == 0 or nsrc == 1:
        gid = np.arange(nsrc)
    else:
        gid = SourceGrouper(min_separation=group_separation)(xi, eta)

    # candidate copies: every (exposure, source) whose stamp may overlap the exposure
    cx, cy, cf, cs = [], [], [], []
    for f, e in enumerate(exps):
        x, y, _ = _project(e, basis, xi, eta)
        img_ny, img_nx = e.data.shape
        near = (np.isfinite(x) & np.isfinite(y) & (x > -nx) & (x < img_nx + nx)
                & (y > -ny) & (y < img_ny + ny))
        sel = np.flatnonzero(near)
        cx.append(x[sel]), cy.append(y[sel]), cf.append(np.full(len(sel), f)), cs.append(sel)
    frames = [(e.data, e.error, e.mask, e.psf_model) for e in exps]
    cx, cy, cf, cs = (np.concatenate(v) for v in (cx, cy, cf, cs))
    tp = build_tied(frames, cx, cy, cf, cs, gid, shape, support_shape=support)
    for f, e in enumerate(exps):
        if not (_skip_empty or np.any(tp.frame == f)):
            raise ValueError(f"{e.name} overlaps none of the catalog sources (check its WCS)")
    src = tp.sources
    n = len(src)
    sky = _Sky(exps, fidx, basis, nf, tp.frame, tp.star)
    n_exp = np.bincount(src[tp.star], minlength=nsrc)
    filt_pix = np.zeros((nsrc, nf), dtype=bool)
    filt_pix[src[tp.star], np.asarray(fidx)[tp.frame]] = True

    p = np.zeros((n, 2 + nf))
    p[:, 0], p[:, 1] = xi[src], eta[src]
    free = np.ones((n, 2 + nf), dtype=bool)
    free[:, 2:] = filt_pix[src]
    p[:, 2:] = np.where(np.isfinite(flux0[src]), flux0[src], _initial_flux(tp, sky, p, n, nf))
    no_err = exps[0].error is None
    subtract = bool(subtract_neighbors) and max_passes > 0
    coupled = None
    if subtract and not no_err and support is None and len(np.unique(gid)) < nsrc:
        # the single-image all-star coupling (psf.allstar.fit_allstar): a member is coupled
        # to its group's stamps where its PSF at twice its initial flux exceeds the noise
        # (at most COUPLING_MAX_FIT fit boxes); its fainter light there comes with the
        # neighbours' light, pass by pass
        rank = np.zeros(nsrc, dtype=np.int64)
        rank[src] = np.arange(n)
        has = np.isin(cs, src)
        fc = np.where(has, p[rank[cs], 2 + np.asarray(fidx)[cf]], 0.0)
        half = np.zeros(len(cs))
        for f, e in enumerate(exps):
            k = np.flatnonzero(cf == f)
            floor = REACH_NOISE * float(np.nanmedian(e.error[::4, ::4]))
            half[k] = np.minimum(flux_reach(e.psf_model, 2.0 * np.abs(fc[k]), floor),
                                 COUPLING_MAX_FIT * max(shape))
        tp = build_tied(frames, cx, cy, cf, cs, gid, shape, support_radius=half)
        coupled = (cx[tp.copy] + tp.xoff, cy[tp.copy], half[tp.copy], COUPLING_MARGIN)
    # the single-image all-star rule (psf.allstar.fit_allstar): the noise is the median error
    # of every fourth pixel, a neighbour's light reaches to NEIGHBOR_NOISE of it at twice
    # its flux of the first fit
    floors = [0.0 if e.error is None else
              NEIGHBOR_NOISE * REACH_NOISE * float(np.nanmedian(e.error[::4, ::4]))
              for e in exps]
    res = _solve_exact(tp, sky, p, n, free=free, maxiters=int(maxiters), xtol=float(tol),
                       scale_by_chi2=no_err, covariance=not subtract)
    p = res.p
    passes = 0
    if subtract:
        res, passes = _allstar_passes(tp, sky, exps, res, n, free, floors, no_err,
                                      int(maxiters), float(tol), int(max_passes), coupled)
        p = res.p
    return _table(exps, filters, unit, basis, ids, src, res, p, n_exp, filt_pix, passes)


def _table(exps, filters, unit, basis, ids, src, res, p, n_exp, filt_pix, passes):
    nsrc = len(ids)
    nf = len(filters)
    xi = np.full(nsrc, np.nan)
    eta = np.full(nsrc, np.nan)
    xi[src], eta[src] = p[:, 0], p[:, 1]
    flux = np.full((nsrc, nf), np.nan)
    flux[src] = p[:, 2:]
    cov = np.full((nsrc, 2 + nf, 2 + nf), np.nan)
    cov[src] = res.cov
    ra, dec = np.full(nsrc, np.nan), np.full(nsrc, np.nan)
    ra[src], dec[src] = _from_plane(basis, p[:, 0], p[:, 1])
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
    fitted = ~nopix
    conv = np.zeros(nsrc, dtype=bool)
    conv[src] = res.converged
    stopped = np.zeros(nsrc, dtype=bool)
    stopped[src] = res.stopped
    cov_ok = np.zeros(nsrc, dtype=bool)
    cov_ok[src] = res.cov_ok
    niter = np.zeros(nsrc, dtype=np.int64)
    niter[src] = res.niter
    flags = np.zeros(nsrc, dtype=np.int64)
    flags[nopix] |= 1
    flags[(~filt_pix).any(axis=1) & fitted] |= 2
    flags[~conv & fitted] |= 4
    flags[~cov_ok & fitted] |= 8
    flags[stopped] |= 16
    funit = unit if unit is not None else u.dimensionless_unscaled
    tab = QTable()
    tab["id"] = ids
    tab["ra"] = ra * u.deg
    tab["dec"] = dec * u.deg
    with np.errstate(invalid="ignore"):
        tab["ra_err"] = np.sqrt(csky[:, 0, 0]) * u.arcsec
        tab["dec_err"] = np.sqrt(csky[:, 1, 1]) * u.arcsec
        for k, f in enumerate(filters):
            fl = np.where(filt_pix[:, k], flux[:, k], np.nan)
            fe = np.sqrt(cov[:, 2 + k, 2 + k])
            tab[f"flux_{f}"] = fl * funit if unit is not None else fl
            tab[f"flux_err_{f}"] = fe * funit if unit is not None else fe
    tab["n_exposures"] = n_exp
    tab["iterations"] = niter
    tab["passes"] = np.full(nsrc, passes, dtype=np.int64)
    tab["flags"] = flags
    return tab
