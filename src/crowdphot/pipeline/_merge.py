"""Assembling a tiled run's catalog from its tasks' tables."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.table import vstack

from crowdphot.core.validate import CrowdphotWarning

__all__ = ["merge"]


def merge(outs, shape, tiles, tile_shape, fit_margin, det_margin):
    """One catalog from the tasks' ``(table, warnings)``: sorted by id, flags and meta for
    the whole image, each distinct warning once (None when no task fitted anything)."""
    from crowdphot.psf.flags import PSF_FLAGS

    tables, seen = [], set()
    for table, messages in outs:
        if table is not None:
            tables.append(table)
        for category, message in messages:
            if "may not have converged" in message:
                continue  # re-counted over the whole catalog below
            if message not in seen:
                seen.add(message)
                warnings.warn(message, category, stacklevel=3)
    if not tables:
        return None
    meta = dict(tables[0].meta)  # every tile ran the same configuration
    table = vstack(tables, metadata_conflicts="silent")
    # vstack merges metadata by concatenating sequences: fit_shape (5, 5) would become
    # (5, 5, 5, 5, ...); the tiles' common values are the catalog's
    table.meta = meta
    table.sort("id")
    # OUTSIDE_BOUNDS refers to the whole image, not to the cut a task fitted in
    flags = np.asarray(table["flags"]).copy()
    x = np.asarray(getattr(table["x_fit"], "value", table["x_fit"]), dtype=float)
    y = np.asarray(getattr(table["y_fit"], "value", table["y_fit"]), dtype=float)
    with np.errstate(invalid="ignore"):
        outside = (x < -0.5) | (y < -0.5) | (x > shape[1] - 0.5) | (y > shape[0] - 0.5)
    flags = (flags & ~np.int64(PSF_FLAGS.OUTSIDE_BOUNDS)) | np.where(
        outside, PSF_FLAGS.OUTSIDE_BOUNDS, 0)
    table["flags"] = flags
    if "n_merged" in meta:  # per-tile counts in the tables' meta: the catalog's instead
        with np.errstate(invalid="ignore"):
            gone = ((flags & PSF_FLAGS.MERGED) > 0) & ~np.isfinite(
                np.asarray(getattr(table["flux_fit"], "value", table["flux_fit"]), dtype=float))
        table.meta["n_merged"] = int(np.count_nonzero(gone))
    if "allstar_passes" in meta:
        table.meta["allstar_passes"] = max(int(t.meta.get("allstar_passes", 0)) for t in tables)
    table.meta.update({"tile_shape": tuple(int(v) for v in tile_shape),
                       "n_tiles": len(tiles), "detect_margin": det_margin,
                       "fit_margin": fit_margin})
    n_bad = int(np.count_nonzero(flags & PSF_FLAGS.NO_CONVERGENCE))
    if n_bad:
        warnings.warn(f"{n_bad} fit(s) may not have converged; check the 'flags' column "
                      "(bit 8)", CrowdphotWarning, stacklevel=3)
    return table
