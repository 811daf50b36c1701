"""The local measurement of artificial stars (used by :mod:`crowdphot.pipeline.ast`).

One task measures every artificial star of one image *box* (the whole image, or a Dask tile
core plus a margin) batch after batch:

* **Detection.** The finder is a local operation: a detection depends only on the pixels within
  ``depth`` of it (its kernel, peak footprint and minimum separation; the tiles' detection
  margin). Adding a star whose light reaches ``light`` pixels can therefore change only the
  detections within ``light + depth`` of it. The box's own detections are found once; for each
  batch, those within that reach of an artificial star are dropped and replaced by the finder's
  detections on *cut-outs* of half-size ``light + 2 depth`` around the artificial stars, of
  which only the detections within the reach are kept: every kept detection lies at least
  ``depth`` inside its cut-out, so what lies beyond the cut-out's edge (a neighbouring
  cut-out, or padding) cannot change it and the finder cannot fire on a cut-out edge. The
  cut-outs are packed side by side into one mosaic image per batch (one finder call); cut-outs
  clipped by an image edge go into strips aligned on that edge (or their own call in a corner),
  so the finder sees the image edge where the whole-image run sees it. Unless the cut-outs hold
  far fewer pixels than the box (sparse batches), the batch is detected on the whole box instead
  (same result).
* **Fit.** The detections within reach of an artificial star -- with every member of their
  groups when ``phot`` has a grouper -- are fitted on the box with the batch added; all other
  stars stay in the data as they are.
* **Iterations** (``IterativePSFPhotometry``): the residual of those fits is searched on
  cut-outs around the artificial stars in the same way.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager

import numpy as np
from astropy.table import QTable
from scipy.spatial import cKDTree

from crowdphot.core.render import render_image
from crowdphot.pipeline.ast_summary import _values

__all__: list[str] = []

#: How batches are detected: "auto" (cut-outs when they hold under ``CUTOUT_FRACTION`` of the
#: box's pixels), "cutout" or "whole" (for benchmarks and tests; the result is the same).
DETECTION = "auto"

#: Cut-outs cost more per pixel than one whole-image pass (gather, packing, strips); measured
#: break-even near 0.3-0.4 of the image (bench/bench_ast.py).
CUTOUT_FRACTION = 0.25


@contextmanager
def _quiet_empty():
    """Silence 'no sources found' warnings: an empty neighbourhood is a normal outcome."""
    from crowdphot.utils.exceptions import NoDetectionsWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=NoDetectionsWarning)
        warnings.filterwarnings("ignore", message="no sources were found")
        yield


def _detect(phot, image, mask):
    with _quiet_empty():
        found = phot.finder(image, mask=mask)
    if found is None or len(found) == 0:
        return np.empty(0), np.empty(0)
    for xname, yname in (("x_centroid", "y_centroid"), ("xcentroid", "ycentroid"),
                         ("x", "y")):
        if xname in found.colnames:
            return _values(found[xname]), _values(found[yname])
    raise ValueError("the finder's table has no xcentroid/ycentroid columns")


def _near(x, y, xin, yin, radius):
    """Boolean mask of the points within ``radius`` of any of ``(xin, yin)``."""
    sel = np.zeros(len(x), dtype=bool)
    if len(x) == 0 or len(xin) == 0:
        return sel
    d, _ = cKDTree(np.column_stack([xin, yin])).query(np.column_stack([x, y]),
                                                      distance_upper_bound=radius)
    return np.isfinite(d)


def _finder_is_local(finder):
    """Whether the finder's output near a pixel depends only on nearby pixels."""
    thr = getattr(finder, "threshold", 0.0)
    if np.ndim(getattr(thr, "value", thr)) != 0:
        return False  # a threshold image would have to be cut along
    return getattr(finder, "n_brightest", None) is None and getattr(
        finder, "brightest", None) is None and getattr(finder, "xycoords", None) is None


# ----------------------------------------------------------------------------------------------
# detection on cut-outs
# ----------------------------------------------------------------------------------------------
def _pack(image, mask, cuts, axis, align_end, size):
    """Stack cut-outs ``(y0, y1, x0, x1)`` along ``axis`` (0: rows) in slots of ``size``
    pixels, aligned on the low (or, with ``align_end``, high) side of the other axis.
    Returns the mosaic, its mask and each cut-out's mosaic origin ``(oy, ox)``."""
    other = max((c[3] - c[2]) if axis == 0 else (c[1] - c[0]) for c in cuts)
    shape = (len(cuts) * size, other) if axis == 0 else (other, len(cuts) * size)
    mos = np.zeros(shape)
    mmask = None if mask is None else np.zeros(shape, dtype=bool)
    origins = []
    for k, (y0, y1, x0, x1) in enumerate(cuts):
        h, w = y1 - y0, x1 - x0
        if axis == 0:
            oy, ox = k * size, (other - w if align_end else 0)
        else:
            oy, ox = (other - h if align_end else 0), k * size
        mos[oy:oy + h, ox:ox + w] = image[y0:y1, x0:x1]
        if mmask is not None:
            mmask[oy:oy + h, ox:ox + w] = mask[y0:y1, x0:x1]
        origins.append((oy - y0, ox - x0))
    return mos, mmask, np.array(origins, dtype=float).reshape(-1, 2)


def _grid_mosaic(image, mask, iy, ix, half):
    """Unclipped square cut-outs of half-size ``half`` centred on ``(iy, ix)``, packed on a
    grid in one gather. Returns the mosaic, its mask, and columns per row."""
    n = len(iy)
    size = 2 * half + 1
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))

    def tile(a):
        # every cut-out is a window of the image: copy whole rows of windows, not pixels
        windows = np.lib.stride_tricks.sliding_window_view(a, (size, size))
        stamps = np.zeros((rows * cols, size, size), dtype=a.dtype)
        stamps[:n] = windows[iy - half, ix - half]
        return stamps.reshape(rows, cols, size, size).transpose(0, 2, 1, 3).reshape(
            rows * size, cols * size)

    return tile(image), None if mask is None else tile(mask), cols


def _cutout_detections(phot, image, mask, xc, yc, half):
    """The finder's detections on cut-outs of half-size ``half`` around ``(xc, yc)``, in
    image coordinates, each with the index of its cut-out; shape (m,), (m,), (m,)."""
    ny, nx = image.shape
    ix = np.round(xc).astype(np.int64)
    iy = np.round(yc).astype(np.int64)
    lo_x, hi_x, lo_y, hi_y = ix - half, ix + half + 1, iy - half, iy + half + 1
    left, right, low, high = lo_x < 0, hi_x > nx, lo_y < 0, hi_y > ny
    clipped = left.astype(int) + right + low + high
    xs, ys, owner = [], [], []
    size = 2 * half + 1
    inner = np.flatnonzero(clipped == 0)
    if inner.size:
        mos, mmask, cols = _grid_mosaic(image, mask, iy[inner], ix[inner], half)
        xm, ym = _detect(phot, mos, mmask)
        slot = (np.floor(ym / size) * cols + np.floor(xm / size)).astype(np.int64)
        ok = (slot >= 0) & (slot < inner.size)
        xm, ym, k = xm[ok], ym[ok], inner[slot[ok]]
        xs.append(xm - (slot[ok] % cols) * size + lo_x[k])
        ys.append(ym - (slot[ok] // cols) * size + lo_y[k])
        owner.append(k)
    cut = np.column_stack([np.maximum(lo_y, 0), np.minimum(hi_y, ny),
                           np.maximum(lo_x, 0), np.minimum(hi_x, nx)])
    one = clipped == 1
    # one clipped side: a strip with that side on the mosaic's own edge
    for sel, axis, end in ((left, 0, False), (right, 0, True), (low, 1, False),
                           (high, 1, True)):
        idx = np.flatnonzero(one & sel)
        if idx.size == 0:
            continue
        mos, mmask, origin = _pack(image, mask, [tuple(cut[i]) for i in idx], axis, end, size)
        xm, ym = _detect(phot, mos, mmask)
        slot = np.floor((ym if axis == 0 else xm) / size).astype(np.int64)
        ok = (slot >= 0) & (slot < idx.size)
        xm, ym, slot = xm[ok], ym[ok], slot[ok]
        xs.append(xm - origin[slot, 1])
        ys.append(ym - origin[slot, 0])
        owner.append(idx[slot])
    for i in np.flatnonzero(clipped > 1):  # corners (and images narrower than a cut-out)
        y0, y1, x0, x1 = cut[i]
        xm, ym = _detect(phot, image[y0:y1, x0:x1], None if mask is None else mask[y0:y1, x0:x1])
        xs.append(xm + x0)
        ys.append(ym + y0)
        owner.append(np.full(len(xm), i, dtype=np.int64))
    if not xs:
        return np.empty(0), np.empty(0), np.empty(0, dtype=np.int64)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(owner).astype(np.int64)


def _detect_near(phot, image, mask, xc, yc, radius, depth, counter=None):
    """The finder's detections on ``image`` that lie within ``radius`` of an ``(xc, yc)``,
    found on cut-outs of half-size ``radius + depth`` (or on the whole image when the cut-outs
    would not be much smaller); same result either way for a local finder. Sorted by (y, x)."""
    half = int(math.ceil(radius + depth)) + 1
    n = len(xc)
    if n == 0:
        return np.empty(0), np.empty(0)
    cheaper = n * (2 * half + 1) ** 2 < CUTOUT_FRACTION * image.size if DETECTION == "auto" \
        else DETECTION == "cutout"
    if cheaper and _finder_is_local(phot.finder):
        xd, yd, k = _cutout_detections(phot, image, mask, xc, yc, half)
        # a detection within reach of two stars is found in both cut-outs: it is kept from
        # the cut-out of the star nearest to it
        if xd.size:
            dist, nearest = cKDTree(np.column_stack([xc, yc])).query(np.column_stack([xd, yd]))
            keep = (nearest == k) & (dist <= radius)
            xd, yd = xd[keep], yd[keep]
        if counter is not None:
            counter["cutout"] += 1
    else:
        xd, yd = _detect(phot, image, mask)
        keep = _near(xd, yd, xc, yc, radius)
        xd, yd = xd[keep], yd[keep]
        if counter is not None:
            counter["whole"] += 1
    order = np.lexsort((xd, yd))
    return xd[order], yd[order]


def _merge_detections(x0, y0, x1, y1):
    """Union of two detection lists, sorted by (y, x) (a canonical order: the same stars are
    fitted in the same order whichever box they come from)."""
    x = np.concatenate([x0, x1])
    y = np.concatenate([y0, y1])
    order = np.lexsort((x, y))
    return x[order], y[order]


# ----------------------------------------------------------------------------------------------
# fitting
# ----------------------------------------------------------------------------------------------
def _fit(fitter, image, mask, err, init):
    with warnings.catch_warnings():
        # per-batch convergence notes would repeat once per batch; the flags column has them
        warnings.filterwarnings("ignore", message=".*may not have converged")
        return fitter.run(image, mask=mask, error=err, init_params=init)


def _grouped_init(base, x, y):
    init = QTable()
    if base.grouper is not None and len(x):
        init["group_id"] = np.asarray(base.grouper(x, y))
    init["x_init"] = x
    init["y_init"] = y
    return init


def _later_iterations(base, fitter, plan, image, mask, err, first, xin, yin, zone, depth,
                      counter):
    """IterativePSFPhotometry's iterations 2.. around the artificial stars: find in the local
    residual within ``zone`` of each artificial star, fit ('new': on the residual; 'all': all
    local stars jointly on the image). Returns the result tables whose rows are final."""
    tables = [first.results]
    current, residual = first, image
    for _ in range(2, plan["maxiters"] + 1):
        residual = current.make_residual_image(residual, psf_shape=plan["sub_shape"])
        xr, yr = _detect_near(base, residual, mask, xin, yin, zone, depth, counter)
        if xr.size == 0:
            break
        if plan["mode"] == "new":
            nxt = _fit(fitter, residual, mask, err, _grouped_init(base, xr, yr))
            if nxt is None:
                break
            tables.append(nxt.results)
        else:
            from crowdphot.aperture.core import CircularAperture

            prev = current.results_to_init_params()
            flux, _ = CircularAperture(np.column_stack([xr, yr]),
                                       r=base.aperture_radius).do_photometry(residual, mask=mask)
            x = np.concatenate([_values(prev["x_init"]), xr])
            y = np.concatenate([_values(prev["y_init"]), yr])
            init = _grouped_init(base, x, y)
            init["flux_init"] = np.concatenate([_values(prev["flux_init"]), _values(flux)])
            nxt = _fit(fitter, image, mask, err, init)
            if nxt is None:
                break
            tables = [nxt.results]
            residual = image
        current = nxt
    return tables


def _add_stars(data, error, model, xin, yin, fin, gain, noise, stamp):
    """``(image, error)`` with the stars added; with ``gain``, with their own photon noise
    (star ``i``'s drawn on its stamp from ``default_rng(noise[i])``, so it is the same whichever
    box the star is measured in) and its variance added to ``error``."""
    clean = render_image(data.shape, model, xin, yin, fin)
    if gain is None:
        return data + clean, error
    noisy = clean.copy()
    ny, nx = data.shape
    hy, hx = stamp[0] // 2 + 2, stamp[1] // 2 + 2
    for i in range(len(xin)):  # batch stars' stamps do not overlap
        y0, y1 = max(int(round(yin[i])) - hy, 0), min(int(round(yin[i])) + hy + 1, ny)
        x0, x1 = max(int(round(xin[i])) - hx, 0), min(int(round(xin[i])) + hx + 1, nx)
        if y1 > y0 and x1 > x0:
            rng = np.random.default_rng(noise[i])
            noisy[y0:y1, x0:x1] = rng.poisson(np.clip(clean[y0:y1, x0:x1] * gain, 0,
                                                      None)) / gain
    err = None if error is None else np.sqrt(error**2 + np.clip(clean, 0, None) / gain)
    return data + noisy, err


def _measure_batch(base, fitter, plan, data, mask, error, orig, xin, yin, fin, noise, *,
                   geom, search_radius, gain, select, counter):
    """Fitted (x, y, flux, flux_err) and flags of the star nearest each artificial star."""
    n = len(xin)
    out = np.full((n, 4), np.nan)
    flags = np.zeros(n, dtype=np.int64)
    image, err = _add_stars(data, error, base.psf_model, xin, yin, fin, gain, noise,
                            geom["stamp"])
    # detections: the box's own, except within reach of an artificial star, found anew there
    reach = geom["change"]
    if _finder_is_local(base.finder):
        xn, yn = _detect_near(base, image, mask, xin, yin, reach, geom["depth"], counter)
        far = ~_near(orig[0], orig[1], xin, yin, reach)
        xd, yd = _merge_detections(orig[0][far], orig[1][far], xn, yn)
    else:  # e.g. the n brightest: any detection can change, so the whole image is searched
        xd, yd = _detect(base, image, mask)
        xd, yd = _merge_detections(xd, yd, xd[:0], yd[:0])
        counter["whole"] += 1
    zone = search_radius + 1.0
    # iterations find stars in the residual near the artificial star: every star whose model
    # stamp reaches that zone must be refitted first
    sel = _near(xd, yd, xin, yin, zone + geom["iter_reach"])
    if not np.any(sel):
        return out, flags
    init = QTable()
    if base.grouper is not None:
        # every member of the selected detections' groups, grouped as the full run groups them
        gid = np.asarray(base.grouper(xd, yd))
        sel |= np.isin(gid, np.unique(gid[sel]))
        init["group_id"] = gid[sel]
    init["x_init"] = xd[sel]
    init["y_init"] = yd[sel]
    result = _fit(fitter, image, mask, err, init)
    if result is None:
        return out, flags
    # later iterations keep what they find within the same reach: a star found there can hide
    # (finder's minimum separation) or blend with one near the artificial star
    tables = [result.results] if plan is None else _later_iterations(
        base, fitter, plan, image, mask, err, result, xin, yin, zone + geom["iter_reach"],
        geom["depth"], counter)
    cols = ("x_fit", "y_fit", "flux_fit", "flux_err")
    vals = {c: np.concatenate([_values(t[c]) if c in t.colnames else np.full(len(t), np.nan)
                               for t in tables]) for c in cols}
    fl = np.concatenate([np.asarray(t["flags"]) if "flags" in t.colnames
                         else np.zeros(len(t), dtype=np.int64) for t in tables])
    xf, yf = vals["x_fit"], vals["y_fit"]
    ok = np.isfinite(xf) & np.isfinite(yf)
    if select is not None and np.any(ok):
        # the run's own clean-up rule (e.g. the CLI's --min-snr) on the batch's fitted stars
        fitted = QTable({c: v for c, v in vals.items()})
        fitted["flags"] = fl
        ok &= np.asarray(select(image, err, mask, fitted), dtype=bool)
    if not np.any(ok):
        return out, flags
    rows = np.flatnonzero(ok)
    dist, j = cKDTree(np.column_stack([xf[ok], yf[ok]])).query(
        np.column_stack([xin, yin]), distance_upper_bound=search_radius)
    hit = np.isfinite(dist)
    r = rows[j[hit]]
    out[hit, 0] = xf[r]
    out[hit, 1] = yf[r]
    out[hit, 2] = vals["flux_fit"][r]
    out[hit, 3] = vals["flux_err"][r]
    flags[hit] = fl[r]
    return out, flags


# ----------------------------------------------------------------------------------------------
# one box (the whole image, or a tile core plus its margin)
# ----------------------------------------------------------------------------------------------
def _local_models(base, fitter, x0, y0):
    """``base`` and ``fitter`` with the PSF as seen from a box starting at ``(y0, x0)``."""
    import copy

    from crowdphot.pipeline.tiles import _shift_model

    model = _shift_model(base.psf_model, x0, y0)
    if model is base.psf_model:
        return base, fitter
    base, fitter = copy.copy(base), copy.copy(fitter)
    base.psf_model = fitter.psf_model = model
    return base, fitter


def _box_task(source, box, stars, conf, settings):
    """Measure the artificial stars ``stars`` (dict of image-coordinate arrays ``x, y, flux,
    batch, noise``) on the pixels of ``box`` = ``(y0, y1, x0, x1)``, batch after batch.

    Returns ``(out, flags, counter)``: (n, 4) fitted x, y, flux, flux_err in image
    coordinates, (n,) flags, and how many finder calls ran on cut-outs / whole boxes.
    """
    if settings["remote"]:
        from crowdphot.pipeline.tiles import _limit_threads

        _limit_threads()
    y0, y1, x0, x1 = box
    data, error, mask = source.cut(y0, y1, x0, x1)
    base, fitter, plan = conf
    base, fitter = _local_models(base, fitter, x0, y0)
    xin, yin = stars["x"] - x0, stars["y"] - y0
    fin, batch, noise = stars["flux"], stars["batch"], stars["noise"]
    n = len(xin)
    out = np.full((n, 4), np.nan)
    flags = np.zeros(n, dtype=np.int64)
    counter = {"cutout": 0, "whole": 0}
    xo, yo = _detect(base, data, mask)  # the box's own detections, found once
    order = np.lexsort((xo, yo))
    orig = (xo[order], yo[order])
    kw = {k: settings[k] for k in ("geom", "search_radius", "gain", "select")}
    for b in np.unique(batch):
        idx = np.flatnonzero(batch == b)
        o, f = _measure_batch(base, fitter, plan, data, mask, error, orig, xin[idx], yin[idx],
                              fin[idx], None if noise is None else [noise[i] for i in idx],
                              counter=counter, **kw)
        out[idx] = o
        flags[idx] = f
        if settings.get("progress") is not None:
            settings["progress"](len(idx))
    out[:, 0] += x0
    out[:, 1] += y0
    return out, flags, counter
