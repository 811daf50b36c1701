"""Effective-PSF building (Anderson & King 2000), as photutils.psf: `EPSFBuilder`,
`EPSFFitter` (deprecated in photutils 3) and `EPSFBuildResult`.

Each iteration resamples the normalised residuals of all stars at once onto the oversampled
grid, takes the per-sample sigma-clipped median (:mod:`crowdphot.core.kernels.epsf`), fills
empty samples, smooths, recentres and normalises the ePSF, then re-fits every star's centre
and flux with crowdphot's batched fitting engine (one Levenberg-Marquardt over all stars).
The algorithm, arguments, results and messages follow photutils 3; any other astropy fitter
(or a custom callable) is called star by star as photutils does.

The builder validates and configures; the array work of an iteration (residual stacking,
recentring, normalisation, exclusion of failed stars, convergence) is in
:mod:`crowdphot.psf._epsf_step`, the star fits are the functions of this module.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import numpy as np
from astropy.modeling import fitting
from astropy.stats import SigmaClip
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning

from crowdphot.core.fit import fit_psf
from crowdphot.core.kernels.epsf import centroid_com, interpolate_missing
from crowdphot.models.image import ImagePSF
from crowdphot.psf._epsf_helpers import (
    EPSFBuildResult,
    _CoordinateTransformer,
    _EPSFValidator,
    _ProgressReporter,
    _SmoothingKernel,
    pair,
)
from crowdphot.psf._epsf_step import (
    check_convergence,
    exclude_failed,
    normalize_epsf,
    recenter_epsf,
    resample_residual,
    stacked_residual,
)
from crowdphot.psf.epsf_stars import EPSFStar, EPSFStars, LinkedEPSFStar

__all__ = ["EPSFBuildResult", "EPSFBuilder", "EPSFFitter"]

_DEFAULT = object()
# least-squares fitters whose optimum the batched engine reproduces
_LSQ_FITTERS = tuple(getattr(fitting, name) for name in
                     ("TRFLSQFitter", "LevMarLSQFitter", "LMLSQFitter", "DogBoxLSQFitter")
                     if hasattr(fitting, name))


def _fit_box(star, fit_shape):
    """``(xlo, ylo)`` of the fit box in the cutout, or None when it does not fit inside."""
    if fit_shape is None:
        return 0, 0
    xc, yc = star.cutout_center
    xlo = int(np.ceil(xc - fit_shape[1] / 2))
    ylo = int(np.ceil(yc - fit_shape[0] / 2))
    if (xlo < 0 or ylo < 0 or xlo + fit_shape[1] > star.shape[1]
            or ylo + fit_shape[0] > star.shape[0]):
        return None
    return xlo, ylo


def _fit_one_star(epsf, star, fitter, fitter_kwargs, has_fit_info, fit_shape):
    """Fit ``epsf`` to a copy of ``star`` with an astropy fitter (photutils' per-star path)."""
    star = copy.copy(star)
    box = _fit_box(star, fit_shape)
    if box is None:
        star._fit_error_status = 1
        return star
    x0, y0 = box
    if fit_shape is None:
        data, weights = star.data, star.weights
    else:
        slc = (slice(y0, y0 + fit_shape[0]), slice(x0, x0 + fit_shape[1]))
        data, weights = star.data[slc], star.weights[slc]
    yy, xx = np.indices(data.shape, dtype=float)
    xx = xx + x0 - star.cutout_center[0]
    yy = yy + y0 - star.cutout_center[1]
    epsf.flux = star.flux
    epsf.x_0 = 0.0
    epsf.y_0 = 0.0
    try:
        fitted = fitter(model=epsf, x=xx, y=yy, z=data, weights=weights, **fitter_kwargs)
    except TypeError:
        fitted = fitter(model=epsf, x=xx, y=yy, z=data, **fitter_kwargs)
    status = 0
    fit_info = None
    if has_fit_info:
        fit_info = fitter.fit_info
        if "ierr" in fit_info and fit_info["ierr"] not in (1, 2, 3, 4):
            status = 2
    xc = star.cutout_center[0] + fitted.x_0.value
    yc = star.cutout_center[1] + fitted.y_0.value
    if xc < 0 or xc >= star.shape[1] or yc < 0 or yc >= star.shape[0]:
        status = 3
    if status != 3:
        star.cutout_center = (xc, yc)
        star.flux = fitted.flux.value
    star._fit_info = fit_info
    star._fit_error_status = status
    return star


def _shallow_copy(star):
    new = object.__new__(type(star))
    new.__dict__.update(star.__dict__)
    return new


def _fit_stars_batched(epsf, stars, fit_shape, maxiters):
    """Fit ``epsf`` to all ``stars`` (EPSFStar list) at once; returns fitted copies.

    The fit regions are laid out in one mosaic image (everything else masked) so that
    :func:`crowdphot.core.fit.fit_psf` fits every star in one batched solve; the engine's stamp
    (``ceil(c - n / 2)``, as photutils' box) is each star's slot of the mosaic.
    """
    n = len(stars)
    out = [_shallow_copy(star) for star in stars]
    cen = np.array([s.cutout_center for s in stars], dtype=float).reshape(n, 2)
    shp = np.array([s.shape for s in stars], dtype=np.int64).reshape(n, 2)
    if fit_shape is None:
        box = np.zeros((n, 2), np.int64)
        size = shp
        slot = 2 * shp.max(axis=0) + 1
        ok = np.ones(n, bool)
    else:
        size = np.broadcast_to(np.asarray(fit_shape), (n, 2))
        box = np.ceil(cen - size[:, ::-1] / 2).astype(np.int64)  # (xlo, ylo)
        ok = np.all(box >= 0, axis=1) & np.all(box + size[:, ::-1] <= shp[:, ::-1], axis=1)
        slot = np.asarray(fit_shape)
    for i in np.flatnonzero(~ok):
        out[i]._fit_error_status = 1
    todo = np.flatnonzero(ok)
    if len(todo) == 0:
        return out
    ncol = int(np.ceil(np.sqrt(len(todo))))
    nrow = int(np.ceil(len(todo) / ncol))
    image = np.full((nrow * slot[0], ncol * slot[1]), np.nan)
    error = np.ones_like(image)
    rel = cen[todo] - box[todo]  # star position in its region, (x, y)
    off = np.floor(slot[::-1] / 2 - rel).astype(np.int64)  # region offset in its slot
    k = np.arange(len(todo))
    corner = np.column_stack([(k % ncol) * slot[1], (k // ncol) * slot[0]]) + off
    unit = True
    for shape in {tuple(v) for v in shp[todo]}:
        sel = np.flatnonzero(np.all(shp[todo] == shape, axis=1))
        idx = todo[sel]
        data = np.stack([stars[i].data for i in idx]).astype(float)
        wts = np.stack([stars[i].weights for i in idx])
        h, w = (shape if fit_shape is None else tuple(fit_shape))
        m = np.arange(len(idx))[:, None, None]
        rows = (box[idx, 1, None] + np.arange(h))[:, :, None]
        cols = (box[idx, 0, None] + np.arange(w))[:, None, :]
        d, wt = data[m, rows, cols], wts[m, rows, cols]
        good = wt > 0
        unit = unit and bool(np.all(wt[good] == 1.0))
        orow = (corner[sel, 1, None] + np.arange(h))[:, :, None]
        ocol = (corner[sel, 0, None] + np.arange(w))[:, None, :]
        image[orow, ocol] = np.where(good, d, np.nan)
        error[orow, ocol] = 1.0 / np.where(good, wt, 1.0)
    xin = corner[:, 0] + rel[:, 0]
    yin = corner[:, 1] + rel[:, 1]
    fin = np.array([stars[i].flux for i in todo], dtype=float)
    model = ImagePSF(epsf.data, origin=epsf.origin, oversampling=epsf.oversampling,
                     fill_value=epsf.fill_value)
    mask = ~np.isfinite(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_psf(np.where(mask, 0.0, image), model, xin, yin, fin,
                      fit_shape=tuple(int(v) for v in slot), mask=mask,
                      error=None if unit else error, maxiters=maxiters)
    xc = cen[todo, 0] + (res.x - xin)
    yc = cen[todo, 1] + (res.y - yin)
    finite = res.fitted & np.isfinite(xc) & np.isfinite(yc) & np.isfinite(res.flux)
    inside = (xc >= 0) & (xc < shp[todo, 1]) & (yc >= 0) & (yc < shp[todo, 0])
    for j, i in enumerate(todo):
        star = out[i]
        star._fit_info = None
        if not finite[j]:
            star._fit_error_status = 2
        elif not inside[j]:
            star._fit_error_status = 3
        else:
            star._cutout_center = np.array([xc[j], yc[j]])
            star.flux = float(res.flux[j])
            star._fit_error_status = 0
    return out


class EPSFFitter:
    """Fit an ePSF to stars (deprecated in photutils 3; use `EPSFBuilder` options).

    Parameters
    ----------
    fitter : astropy fitter, optional
        Default ``TRFLSQFitter()``.
    fit_boxsize : int, (ny, nx) odd ints >= 3 or None, optional
        Box around each star used in the fit (None: the whole cutout).
    **fitter_kwargs
        Passed to the fitter (``x``, ``y``, ``z``, ``weights`` are dropped).

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter('ignore')
    ...     fitter = EPSFFitter(fit_boxsize=7)
    >>> fitter.fit_boxsize.tolist()
    [7, 7]
    """

    def __init__(self, *, fitter=None, fit_boxsize=5, **fitter_kwargs):
        warnings.warn("EPSFFitter is deprecated and will be removed in a version 4.0. Use "
                      "EPSFBuilder with the fitter, fit_shape, and fitter_maxiters parameters "
                      "instead.", AstropyDeprecationWarning, stacklevel=2)
        self.fitter = fitting.TRFLSQFitter() if fitter is None else fitter
        self.fitter_has_fit_info = hasattr(self.fitter, "fit_info")
        self.fit_boxsize = (None if fit_boxsize is None else
                            pair("fit_boxsize", fit_boxsize, lower_bound=(3, 1),
                                 check_odd=True))
        self.fitter_kwargs = {k: v for k, v in fitter_kwargs.items()
                              if k not in {"x", "y", "z", "weights"}}

    def __call__(self, epsf, stars):
        """Fit ``epsf`` to each star; returns new `EPSFStars` with fitted centres/fluxes."""
        if len(stars) == 0:
            return stars
        if not isinstance(epsf, ImagePSF):
            raise TypeError("The input epsf must be an ImagePSF")
        return _fit_star_list(epsf, stars, lambda s: _fit_one_star(
            epsf, s, self.fitter, self.fitter_kwargs, self.fitter_has_fit_info,
            self.fit_boxsize))

    def _fit_star(self, epsf, star, fitter, fitter_kwargs, fitter_has_fit_info,
                  fit_boxsize):
        return _fit_one_star(epsf, star, fitter, fitter_kwargs, fitter_has_fit_info,
                             fit_boxsize)


def _fit_star_list(epsf, stars, fit_one):
    """Apply ``fit_one`` to every non-excluded star; linked stars are re-constrained."""
    fitted = []
    for star in stars:
        if isinstance(star, EPSFStar):
            fitted.append(star if star._excluded_from_fit else fit_one(star))
        elif isinstance(star, LinkedEPSFStar):
            members = [s if s._excluded_from_fit else fit_one(s) for s in star]
            linked = LinkedEPSFStar(members)
            linked.constrain_centers()
            fitted.append(linked)
        else:
            raise TypeError("stars must contain only EPSFStar and/or LinkedEPSFStar objects")
    return EPSFStars(fitted)


class EPSFBuilder:
    """Build an effective PSF (ePSF) from star cutouts (Anderson & King 2000).

    Parameters
    ----------
    oversampling : int or (oy, ox) ints, optional
        Oversampling of the ePSF relative to the stars' pixels.
    shape : int, (ny, nx) or None, optional
        ePSF shape (made odd); default the largest star shape times the oversampling, odd.
    smoothing_kernel : {'quartic', 'quadratic'}, ndarray or None, optional
        Kernel convolved with the ePSF at each iteration.
    sigma_clip : astropy.stats.SigmaClip, optional
        Clipping of the stacked residuals (default ``SigmaClip(sigma=3, maxiters=10)``).
    recentering_func : callable, optional
        ``func(data, mask=...) -> (x, y)``; default a centre-of-mass centroid.
    recentering_boxsize : int or (ny, nx) odd ints >= 3, optional
        Centroid box in star pixels (scaled by the oversampling, made odd).
    recentering_maxiters : int, optional
        Recentering iterations per build iteration.
    center_accuracy : float, optional
        Stop when every star centre moves less than this (pixels).
    fitter : astropy fitter, callable or EPSFFitter, optional
        Default ``TRFLSQFitter()``. The least-squares fitters of astropy (TRF, LevMar, LM,
        DogBox) are replaced by one batched fit of all stars; any other callable is called per
        star with ``(model, x, y, z, weights=...)``.
    fit_shape : int, (ny, nx) odd ints >= 3 or None, optional
        Box around each star used in the fits (None: the whole cutout).
    fitter_maxiters : int, optional
        Maximum iterations of each star fit.
    maxiters : int, optional
        Maximum build iterations.
    progress_bar : bool, optional
        Show a tqdm bar.

    Examples
    --------
    >>> from astropy.nddata import NDData
    >>> from astropy.table import Table
    >>> from crowdphot import CircularGaussianPRF, make_psf_model_image
    >>> from crowdphot.psf import EPSFBuilder, extract_stars
    >>> data, params = make_psf_model_image((300, 300), CircularGaussianPRF(fwhm=2.7), 40,
    ...                                     model_shape=(9, 9), flux=(500, 700),
    ...                                     min_separation=25, border_size=25, seed=0)
    >>> stars = extract_stars(NDData(data), Table({'x': params['x_0'], 'y': params['y_0']}),
    ...                       size=15)
    >>> epsf, fitted = EPSFBuilder(oversampling=2, maxiters=3, progress_bar=False)(stars)
    >>> epsf.data.shape, round(float(epsf.data.sum()), 3)
    ((31, 31), 4.0)
    """

    def __init__(self, *, oversampling=4, shape=None, smoothing_kernel="quartic",
                 sigma_clip=_DEFAULT, recentering_func=centroid_com,
                 recentering_boxsize=(5, 5), recentering_maxiters=20, center_accuracy=1.0e-3,
                 fitter=None, fit_shape=5, fitter_maxiters=100, maxiters=10,
                 progress_bar=True):
        self.oversampling = _EPSFValidator.validate_oversampling(
            oversampling, context="EPSFBuilder initialization")
        self.coord_transformer = _CoordinateTransformer(self.oversampling)
        self.shape = None if shape is None else pair("shape", shape, lower_bound=(0, 0))
        self.recentering_func = recentering_func
        self.recentering_maxiters = recentering_maxiters
        self.recentering_boxsize = pair("recentering_boxsize", recentering_boxsize,
                                        lower_bound=(3, 1), check_odd=True)
        self.smoothing_kernel = smoothing_kernel
        if isinstance(fitter, EPSFFitter):
            warnings.warn("Passing an EPSFFitter instance to EPSFBuilder is deprecated. Use "
                          "the fitter, fit_shape, and fitter_maxiters parameters instead.",
                          AstropyDeprecationWarning, stacklevel=2)
            self.fitter = fitter.fitter
            self.fit_shape = fitter.fit_boxsize
            self.fitter_maxiters = None
            self._fitter_kwargs = fitter.fitter_kwargs
        else:
            fitter = fitting.TRFLSQFitter() if fitter is None else fitter
            if not callable(fitter):
                raise TypeError("fitter must be a callable astropy Fitter instance")
            self.fitter = fitter
            self.fit_shape = (None if fit_shape is None else
                              pair("fit_shape", fit_shape, lower_bound=(3, 1),
                                   check_odd=True))
            self.fitter_maxiters = self._validate_fitter_maxiters(fitter_maxiters)
            self._fitter_kwargs = ({} if self.fitter_maxiters is None
                                   else {"maxiter": self.fitter_maxiters})
        self._fitter_has_fit_info = hasattr(self.fitter, "fit_info")
        _EPSFValidator.validate_center_accuracy(center_accuracy)
        self.center_accuracy_sq = center_accuracy ** 2
        _EPSFValidator.validate_maxiters(maxiters)
        self.maxiters = maxiters
        self.progress_bar = progress_bar
        if sigma_clip is _DEFAULT:
            sigma_clip = SigmaClip(sigma=3.0, maxiters=10)
        if not isinstance(sigma_clip, SigmaClip):
            raise TypeError("sigma_clip must be an astropy.stats.SigmaClip instance")
        self._sigma_clip = sigma_clip
        self._epsf = []
        self._cube_cache = {}

    def __call__(self, stars):
        """Build the ePSF from ``stars`` (see `build_epsf`)."""
        return self.build_epsf(stars)

    def _validate_fitter_maxiters(self, fitter_maxiters):
        params = inspect.signature(self.fitter.__call__).parameters
        if "maxiter" in params or any(p.kind == inspect.Parameter.VAR_KEYWORD
                                      for p in params.values()):
            return fitter_maxiters
        warnings.warn("'fitter_maxiters' will be ignored because it is not accepted by the "
                      "input fitter", AstropyUserWarning, stacklevel=2)
        return None

    @property
    def _batched_fit(self):
        return type(self.fitter) in _LSQ_FITTERS and not self._fitter_kwargs.keys() - {
            "maxiter"}

    # -- ePSF construction ------------------------------------------------------------------
    def _create_initial_epsf(self, stars):
        """An all-zero `ImagePSF` of the build shape, origin at its centre."""
        if self.shape is not None:
            shape = pair("shape", self.shape, lower_bound=(0, 0), check_odd=True)
        else:
            shape = self.coord_transformer.compute_epsf_shape([s.shape for s in stars])
        shape = tuple(int(v) for v in shape)
        return ImagePSF(np.zeros(shape), origin=self.coord_transformer.compute_epsf_origin(
            shape), oversampling=self.oversampling, fill_value=0.0)

    def _resample_residual(self, star, epsf, *, out_image=None):
        """One star's normalised residual on the ePSF grid (NaN where it has no pixel)."""
        return resample_residual(star, epsf, self.coord_transformer, out_image)

    def _resample_residuals(self, stars, epsf):
        """``(n_good_stars, ny, nx)`` cube of `_resample_residual` images."""
        good = stars.all_good_stars
        cube = np.full((len(good), *epsf.data.shape), np.nan)
        for i, star in enumerate(good):
            self._resample_residual(star, epsf, out_image=cube[i])
        return cube

    def _stacked_residual(self, stars, epsf):
        """Sigma-clipped median residual per ePSF sample from all good stars at once."""
        return stacked_residual(stars, epsf, self.coord_transformer, self.oversampling,
                                self._sigma_clip, self._cube_cache)

    def _smooth_epsf(self, epsf_data):
        return _SmoothingKernel.apply_smoothing(epsf_data, self.smoothing_kernel)

    def _normalize_epsf(self, epsf_data):
        return normalize_epsf(epsf_data, self.oversampling)

    def _recenter_epsf(self, epsf, *, centroid_func=None, box_size=None, maxiters=None,
                       center_accuracy=None):
        """ePSF data shifted (spline interpolation) so its centroid sits at the centre."""
        return recenter_epsf(
            epsf, self.coord_transformer, self.oversampling,
            self.recentering_func if centroid_func is None else centroid_func,
            self.recentering_boxsize if box_size is None else box_size,
            self.recentering_maxiters if maxiters is None else maxiters,
            (1.0e-4 if center_accuracy is None else center_accuracy) ** 2)

    def _build_epsf_step(self, stars, *, epsf=None):
        """One improvement of the ePSF from the stars' current centres and fluxes."""
        if epsf is None:
            epsf = self._create_initial_epsf(stars)
        resid = self._stacked_residual(stars, epsf)
        missing = ~np.isfinite(resid)
        if np.any(missing):
            resid = interpolate_missing(resid, missing)
        smoothed = self._smooth_epsf(epsf.data + resid)
        temp = ImagePSF(smoothed, origin=epsf.origin, oversampling=self.oversampling,
                        fill_value=0.0)
        data = self._normalize_epsf(self._recenter_epsf(temp))
        return ImagePSF(data, oversampling=self.oversampling, fill_value=0.0)

    # -- star fitting -----------------------------------------------------------------------
    def _fit_star(self, epsf, star):
        return _fit_one_star(epsf, star, self.fitter, self._fitter_kwargs,
                             self._fitter_has_fit_info, self.fit_shape)

    def _fit_stars(self, epsf, stars):
        """Fit ``epsf`` to every non-excluded star (batched for least-squares fitters)."""
        if len(stars) == 0:
            return stars
        if not isinstance(epsf, ImagePSF):
            raise TypeError("The input epsf must be an ImagePSF")
        if not self._batched_fit:
            return _fit_star_list(epsf, stars, lambda s: self._fit_star(epsf, s))
        for star in stars:
            if not isinstance(star, (EPSFStar, LinkedEPSFStar)):
                raise TypeError("stars must contain only EPSFStar and/or LinkedEPSFStar "
                                "objects")
        todo = [s for s in stars.all_stars if not s._excluded_from_fit]
        maxiters = self.fitter_maxiters if self.fitter_maxiters else 100
        done = dict(zip(map(id, todo), _fit_stars_batched(epsf, todo, self.fit_shape,
                                                          maxiters), strict=True))
        return _fit_star_list(epsf, stars, lambda s: done[id(s)])

    def _process_iteration(self, stars, epsf, iter_num):
        """Improve the ePSF, re-fit the stars, exclude repeated failures (after iteration 3)."""
        epsf = self._build_epsf_step(stars, epsf=epsf)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*The fit may be unsuccessful;.*",
                                    category=AstropyUserWarning)
            stars = self._fit_stars(epsf, stars)
        epsf.flux = 1.0
        fit_failed = np.array([s._fit_error_status > 0 for s in stars.all_stars])
        if np.all(fit_failed):
            raise ValueError("The ePSF fitting failed for all stars.")
        if iter_num > 3 and np.any(fit_failed):
            exclude_failed(stars, fit_failed, stacklevel=2)
        self._epsf.append(epsf)
        return epsf, stars, fit_failed

    def _check_convergence(self, stars, centers, fit_failed):
        """``(converged, squared centre shifts of good stars, new centres)``."""
        return check_convergence(stars.cutout_center_flat, centers, fit_failed,
                                 self.center_accuracy_sq)

    def build_epsf(self, stars, *, epsf=None):
        """Build the ePSF iteratively from star cutouts.

        Parameters
        ----------
        stars : EPSFStars
        epsf : ImagePSF, optional
            Starting ePSF (default: built from scratch).

        Returns
        -------
        result : EPSFBuildResult
            Unpacks as ``(epsf, fitted_stars)``.
        """
        _EPSFValidator.validate_stars(stars, context="ePSF building")
        _EPSFValidator.validate_shape_compatibility(stars, self.oversampling,
                                                    shape=self.shape)
        fit_failed = np.zeros(stars.n_stars, dtype=bool)
        centers = stars.cutout_center_flat
        reporter = _ProgressReporter(self.progress_bar, self.maxiters).setup()
        iter_num = 0
        converged = False
        dist_sq = np.array([self.center_accuracy_sq + 1.0])
        excluded = []
        while iter_num < self.maxiters and not np.all(fit_failed) and not converged:
            iter_num += 1
            epsf, stars, fit_failed = self._process_iteration(stars, epsf, iter_num)
            if iter_num > 3:
                excluded.extend(i for i in fit_failed.nonzero()[0] if i not in excluded)
            converged, dist_sq, centers = self._check_convergence(stars, centers, fit_failed)
            reporter.update()
        if iter_num < self.maxiters:
            reporter.write_convergence_message(iter_num)
        reporter.close()
        return EPSFBuildResult(epsf=epsf, fitted_stars=stars, iterations=iter_num,
                               converged=converged,
                               final_center_accuracy=float(np.max(dist_sq) ** 0.5),
                               n_excluded_stars=len(excluded), excluded_star_indices=excluded)

