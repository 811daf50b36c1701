"""Planning a tiled run: margins, the initial table, global groups and the fit tasks' boxes.

The driver of :func:`crowdphot.pipeline.tiles.photometry_tiled` (and the tiled
artificial-star tests) decides here how far each task reads around its core
(:func:`detect_margin`, :func:`fit_margin`), groups the detections over the whole image
(:func:`assign_groups`) and gives each group to the tile owning its first member
(:func:`fit_jobs`).
"""

from __future__ import annotations

import warnings

import numpy as np

from crowdphot.core.validate import CrowdphotWarning
from crowdphot.pipeline._grid import owner_index

__all__ = ["assign_groups", "check_finder", "detect_margin", "fit_jobs", "fit_margin",
           "user_init"]


def check_finder(finder):
    """Refuse finder options a tiled run cannot honour."""
    if getattr(finder, "xycoords", None) is not None:
        raise ValueError("finder.xycoords is not supported by photometry_tiled; give the "
                         "positions as init_params instead")
    if np.ndim(getattr(getattr(finder, "threshold", 0), "value",
                       getattr(finder, "threshold", 0))) == 2:
        raise ValueError("a per-pixel threshold image is not supported by photometry_tiled; "
                         "give the finder a scalar threshold")


def detect_margin(finder):
    """Pixels around a core that fix every detection inside it (kernel, peaks, stamps)."""
    kernel = getattr(finder, "kernel", None)
    if kernel is not None and hasattr(kernel, "shape"):
        k = int(max(kernel.shape))
    else:
        fwhm = float(getattr(finder, "fwhm", 3.0) or 3.0)
        k = 2 * int(np.ceil(3 * fwhm)) + 1
    sep = float(getattr(finder, "min_separation", 0.0) or 0.0)
    # convolution (k/2) + peak footprint or separation + centroid stamp (k/2) + rounding
    return int(k + max(k // 2, int(np.ceil(sep))) + 3)


def fit_margin(fit_shape, local_bkg_estimator, aperture_radius):
    """Pixels around the stars that their fits read (stamp, aperture, local background)."""
    half_fit = max(fit_shape) // 2 + 1
    bkg = int(np.ceil(getattr(local_bkg_estimator, "outer_radius", 0) or 0)) + 1
    ap = int(np.ceil(aperture_radius or 0)) + 1
    return int(max(half_fit, bkg, ap) + 2)



def user_init(init_params, psf_model, unit, aperture_radius):
    """The user's ``init_params`` normalised as PSFPhotometry normalises them."""
    from crowdphot.psf._inputs import _normalise_user_table, model_main_params

    main = model_main_params(psf_model)
    extra = [p for p in psf_model.param_names if p not in main and not psf_model.fixed[p]]
    table = _normalise_user_table(init_params, extra, unit)
    if "flux_init" not in table.colnames and aperture_radius is None:
        raise ValueError("aperture_radius must be given when init_params has no flux column")
    if len(table) == 0:
        raise ValueError("init_params is empty")
    if "group_id" in table.colnames:
        from crowdphot.psf._inputs import _check_group_ids

        table["group_id"] = _check_group_ids(table["group_id"])
    return table


def assign_groups(init, grouper, threshold):
    """Add ``group_id`` to ``init`` (the grouper over the whole image, or one per star)."""
    if "group_id" not in init.colnames:
        if grouper is not None:
            init["group_id"] = np.asarray(grouper(np.asarray(init["x_init"]),
                                                  np.asarray(init["y_init"])), dtype=np.int64)
        else:
            init["group_id"] = np.asarray(init["id"], dtype=np.int64)
    _, counts = np.unique(np.asarray(init["group_id"]), return_counts=True)
    if counts.max() > threshold:
        warnings.warn(
            f"some groups have more than {threshold} sources; crowdphot fits them jointly "
            "with a sparse solver (raise group_warning_threshold to silence)",
            CrowdphotWarning, stacklevel=3)


def fit_jobs(init, shape, tile_shape, margin):
    """``[(box, init_rows)]``: each group goes to the tile owning its first member.

    Parameters
    ----------
    init : QTable with ``x_init``, ``y_init`` and ``group_id`` (n rows)
    shape, tile_shape : (ny, nx), (ty, tx)
    margin : int
        Pixels read around the members' positions.

    Returns
    -------
    jobs : list of ((y0, y1, x0, x1), QTable), one per tile owning at least one group
    """
    x = np.asarray(init["x_init"], dtype=float)
    y = np.asarray(init["y_init"], dtype=float)
    gid = np.asarray(init["group_id"])
    uniq, first, inverse = np.unique(gid, return_index=True, return_inverse=True)
    owner = owner_index(x[first], y[first], *shape, *tile_shape)[inverse.ravel()]
    order = np.argsort(owner, kind="stable")
    cuts = np.flatnonzero(np.diff(owner[order])) + 1
    jobs = []
    for sel in np.split(order, cuts):
        ok = np.isfinite(x[sel]) & np.isfinite(y[sel])
        if ok.any():
            xs, ys = x[sel][ok], y[sel][ok]
            box = (int(np.clip(np.floor(ys.min()) - margin, 0, shape[0] - 1)),
                   int(np.clip(np.ceil(ys.max()) + margin + 1, 1, shape[0])),
                   int(np.clip(np.floor(xs.min()) - margin, 0, shape[1] - 1)),
                   int(np.clip(np.ceil(xs.max()) + margin + 1, 1, shape[1])))
            if box[1] <= box[0] or box[3] <= box[2]:
                box = (0, 1, 0, 1)  # every member is far outside: flagged no_overlap anyway
        else:
            box = (0, 1, 0, 1)  # only invalid positions: they are flagged, not fitted
        jobs.append((box, init[np.sort(sel)]))
    return jobs

