"""The array work of one `~crowdphot.psf.epsf_builder.EPSFBuilder` iteration: the stars'
normalised residuals stacked per ePSF sample (sigma-clipped median), the recentring and
normalisation of the ePSF, the exclusion of stars whose fits keep failing and the convergence
test.

Pure functions of the stars, the current ePSF and the builder's settings; the builder's
methods of the same names (``_stacked_residual``, ``_recenter_epsf``, ...) call them.
Unchecked.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning

from crowdphot.core.kernels.epsf import clipped_median_by_node, grid_nodes

__all__ = ["check_convergence", "exclude_failed", "normalize_epsf", "recenter_epsf",
           "resample_residual", "stacked_residual", "star_offsets"]

_OVERLAP_REASONS = {1: "its fitting region extends beyond the star cutout image",
                    2: "the fit did not converge",
                    3: "its fitted position is outside the data cutout"}


# -- residual stacking -----------------------------------------------------------------------
def star_offsets(stars, cache=None):
    """Offsets from the centre and flux-normalised values of every unmasked star pixel.

    Stars of one shape are handled together as a cube (no per-star work beyond stacking);
    ``cache`` (a dict) keeps the stacked cubes between the iterations of one build, as the
    star copies made by the fits share their data arrays.
    """
    by_shape = {}
    for star in stars:
        by_shape.setdefault(star.shape, []).append(star)
    dxs, dys, vals = [], [], []
    for shape, group in by_shape.items():
        key = (shape, tuple(id(s._data) for s in group))
        if cache is not None and key in cache:
            data, good, _ = cache[key]
        else:
            data = np.stack([s.data for s in group]).astype(float)
            good = ~np.stack([s.mask for s in group])
            if cache is not None:
                cache.clear()  # one build's stars at a time
                # holding the arrays keeps their ids from being reused by other arrays
                cache[key] = (data, good, [s._data for s in group])
        cen = np.array([s.cutout_center for s in group])
        flux = np.array([s._normalization_flux for s in group], dtype=float)
        yy, xx = np.indices(shape, dtype=float)
        dx = xx[None] - cen[:, 0, None, None]
        dy = yy[None] - cen[:, 1, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            norm = data / flux[:, None, None]
        dxs.append(dx[good])
        dys.append(dy[good])
        vals.append(norm[good])
    return np.concatenate(dxs), np.concatenate(dys), np.concatenate(vals)


def resample_residual(star, epsf, transformer, out_image=None):
    """One star's normalised residual on the ePSF grid (NaN where it has no pixel).

    ``transformer`` is the builder's ``coord_transformer``; ``out_image`` (ePSF shape), when
    given, is filled in place and returned.
    """
    dx, dy = star._xyidx_centered
    values = star._data_values_normalized - epsf.evaluate(dx, dy, 1.0, 0.0, 0.0)
    ix, iy = transformer.star_to_epsf_coords(dx, dy, epsf.origin)
    if out_image is None:
        out_image = np.full(epsf.data.shape, np.nan)
    ok = (ix >= 0) & (ix < epsf.data.shape[1]) & (iy >= 0) & (iy < epsf.data.shape[0])
    out_image[iy[ok], ix[ok]] = values[ok]
    return out_image


def stacked_residual(stars, epsf, transformer, oversampling, sigma_clip, cache):
    """Sigma-clipped median residual per ePSF sample from all good stars at once.

    The compiled per-sample clipping (:func:`~crowdphot.core.kernels.epsf.clipped_median_by_node`)
    for astropy's median/std clipping without ``grow``; otherwise a cube of every star's
    :func:`resample_residual` clipped by ``sigma_clip`` itself.

    Returns
    -------
    residual : ndarray of the ePSF's shape
        NaN where no star has a pixel.
    """
    good = stars.all_good_stars
    shape = epsf.data.shape
    if not good:
        return np.full(shape, np.nan)
    dx, dy, vals = star_offsets(good, cache)
    vals = vals - epsf.evaluate(dx, dy, 1.0, 0.0, 0.0)
    node = grid_nodes(dx, dy, oversampling, epsf.origin, shape)
    sc = sigma_clip
    if sc.cenfunc == "median" and sc.stdfunc == "std" and not sc.grow:
        med = clipped_median_by_node(node, vals, shape[0] * shape[1],
                                     sigma_lower=sc.sigma_lower,
                                     sigma_upper=sc.sigma_upper, maxiters=sc.maxiters)
        return med.reshape(shape)
    cube = np.full((len(good), *shape), np.nan)
    for i, star in enumerate(good):
        resample_residual(star, epsf, transformer, out_image=cube[i])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)
        clipped = sc(cube, axis=0, masked=False, return_bounds=False)
        return np.nanmedian(clipped, axis=0)


# -- the ePSF itself -------------------------------------------------------------------------
def normalize_epsf(epsf_data, oversampling):
    """``epsf_data`` scaled to sum to ``prod(oversampling)`` (ValueError if it sums to 0)."""
    total = np.sum(epsf_data)
    if total == 0:
        raise ValueError("Cannot normalize ePSF: data sum is zero")
    return epsf_data * (np.prod(oversampling) / total)


def recenter_epsf(epsf, transformer, oversampling, centroid_func, box_size, maxiters,
                  accuracy_sq):
    """ePSF data shifted (spline interpolation) so its centroid sits at the centre.

    ``centroid_func(data, mask=...) -> (x, y)`` in a box of ``box_size`` star pixels (scaled
    by ``oversampling``, made odd) about the centre; at most ``maxiters`` shifts, stopping when
    the squared shift is below ``accuracy_sq`` or stops decreasing.
    """
    box = np.asarray(box_size) * oversampling
    box = box + (box % 2 == 0)
    shape = epsf.data.shape
    xcen, ycen = transformer.compute_epsf_origin(shape)
    y, x = np.indices(shape, dtype=float)
    x, y = transformer.oversampled_to_undersampled(x, y)
    xo, yo = transformer.oversampled_to_undersampled(xcen, ycen)
    # centroid box: astropy overlap_slices placement, clipped to the array
    xlo = int(np.ceil(xcen - box[1] / 2))
    ylo = int(np.ceil(ycen - box[0] / 2))
    sl = (slice(max(ylo, 0), min(ylo + box[0], shape[0])),
          slice(max(xlo, 0), min(xlo + box[1], shape[1])))
    dx_tot = dy_tot = 0.0
    dist_sq = accuracy_sq + 1.0e6
    prev_sq = dist_sq + 1
    data = epsf.data
    it = 0
    while it < maxiters and dist_sq >= accuracy_sq:
        it += 1
        cut = data[sl]
        xnew, ynew = centroid_func(cut, mask=~np.isfinite(cut))
        dx = xnew + sl[1].start - xcen
        dy = ynew + sl[0].start - ycen
        dist_sq = dx ** 2 + dy ** 2
        if dist_sq >= prev_sq:
            break
        prev_sq = dist_sq
        ddx, ddy = transformer.oversampled_to_undersampled(dx, dy)
        dx_tot += ddx
        dy_tot += ddy
        data = epsf.evaluate(x, y, 1.0, xo - dx_tot, yo - dy_tot)
    return data


# -- the iteration's bookkeeping -------------------------------------------------------------
def exclude_failed(stars, fit_failed, *, stacklevel):
    """Exclude from later fits every star whose fit failed, warning (at ``stacklevel`` from
    the caller) once per newly excluded star with photutils' message."""
    for i in fit_failed.nonzero()[0]:
        star = stars.all_stars[i]
        if not star._excluded_from_fit:
            reason = _OVERLAP_REASONS.get(star._fit_error_status, _OVERLAP_REASONS[2])
            label = star.id_label - 1 if isinstance(
                star.id_label, (int, np.integer)) else star.id_label
            warnings.warn(f"The star at ({star._center_original[0]:.2f}, "
                          f"{star._center_original[1]:.2f}) (index={label}) has "
                          f"been excluded from ePSF fitting because {reason}.",
                          AstropyUserWarning, stacklevel=stacklevel + 1)
        star._excluded_from_fit = True


def check_convergence(new_centers, centers, fit_failed, accuracy_sq):
    """``(converged, squared centre shifts of good stars, new centres)``: converged when every
    good star moved less than ``sqrt(accuracy_sq)`` (and more than 80 % of them did)."""
    good = ~np.asarray(fit_failed, dtype=bool)
    if not np.any(good):
        return False, np.array([accuracy_sq * 10]), new_centers
    d = (new_centers - centers)[good]
    dist_sq = np.sum(d * d, axis=1, dtype=np.float64)
    stable = np.mean(dist_sq < accuracy_sq)
    converged = bool(np.max(dist_sq) < accuracy_sq and stable > 0.8)
    return converged, dist_sq, new_centers
