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
* **Stacks.** A fit call costs a fixed ~3-5 ms per solver iteration however few stars it fits,
  so several batches are fitted in one call: their images are stacked along y with masked
  rows between them (``_Stack``; a stamp reaching into those rows loses the pixels it loses
  beyond the image edge batch by batch), each pass (first fit, residual, later fits) is one
  call for the stack, and detection runs on each batch's rows. Same flags and verdicts as batch
  by batch; values differ by the solver's rounding only (shifting y by the stack offset:
  measured <= 3e-9 px, 2e-7 in flux).
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

#: Batches are measured several at a time, their images stacked (``_Stack``) up to about this
#: many pixels, so that one fit call serves them all (the solver's per-iteration overhead is
#: paid once per stack instead of once per batch); 0 measures batch by batch (same results).
STACK_PIXELS = 2**23


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


#: The fitted columns an artificial star's row takes from its nearest fitted star.
_FIT_COLUMNS = ("x_fit", "y_fit", "flux_fit", "flux_err")


def _grouped_init(base, x, y):
    init = QTable()
    if base.grouper is not None and len(x):
        init["group_id"] = np.asarray(base.grouper(x, y))
    init["x_init"] = x
    init["y_init"] = y
    return init


class _Stack:
    """Several batches' images stacked along y in one array, ``pad`` masked rows apart, so that
    one fit call (and one residual image) serves them all.

    Batch ``k`` occupies rows ``k * stride`` to ``k * stride + ny``. Every pixel a batch's fits
    read or write (fit stamps, apertures, rendered models) lies within ``pad / 2`` of its rows,
    and the pad is masked: a stamp reaching into it loses the same pixels it loses beyond the
    image edge in a batch-by-batch run (both are dropped from the fit). A single batch is its
    own image (no pad). The buffers are allocated once per box and reused stack after stack;
    the masked rows and (without photon noise) the error are written once.
    """

    def __init__(self, shape, capacity, pad, mask, error, gain):
        self.ny, self.nx = shape
        self.capacity, self.gain, self.n = capacity, gain, 0
        self.stride = self.ny + (pad if capacity > 1 else 0)
        full = (capacity * self.stride - (self.stride - self.ny), self.nx)
        # zeros, not empty: the masked pad rows are never written, and uninitialised memory
        # there (garbage up to 1e308 or NaN) trips the input checks, which read every pixel
        self._image = np.zeros(full)
        self._residual = None
        self._mask = mask
        if capacity > 1:
            self._mask = np.ones(full, dtype=bool)
        self._err = error
        if error is not None and (capacity > 1 or gain is not None):
            self._err = np.ones(full) if capacity > 1 else np.empty(full)
        for k in range(capacity):
            rows = self.rows(k)
            if capacity > 1:
                self._mask[rows] = False if mask is None else mask
            if error is not None and gain is None and self._err is not error:
                self._err[rows] = error

    def use(self, n):
        """Views of the first ``n`` batches' rows as ``image``, ``mask``, ``err``."""
        self.n = n
        end = n * self.stride - (self.stride - self.ny)
        self.image = self._image[:end]
        self.mask = None if self._mask is None else self._mask[:end]
        self.err = None if self._err is None else self._err[:end]

    def add(self, k, data, error, model, xin, yin, fin, noise, stamp):
        """Write batch ``k``: ``data`` with its stars added (see :func:`_add_stars`)."""
        rows = self.rows(k)
        if self.gain is None:
            # the batch's stamps do not overlap: each pixel gets data + one stamp, as in
            # data + render_image(...)
            self.image[rows] = data
            render_image(data.shape, model, xin, yin, fin, out=self.image[rows])
            return
        image, err = _add_stars(data, error, model, xin, yin, fin, self.gain, noise, stamp)
        self.image[rows] = image
        if err is not None:
            self.err[rows] = err

    def residual(self, result, source, psf_shape):
        """``result.make_residual_image(source)`` written into a buffer reused by every pass
        and stack (the same numbers: ``source - model``), ``source`` being the stack's image or
        the buffer itself."""
        model = result.make_model_image(source.shape, psf_shape=psf_shape)
        if not isinstance(model, np.ndarray) or type(model) is not np.ndarray:
            return source - model  # e.g. a Quantity
        if self._residual is None:
            self._residual = np.empty(self._image.shape)
        out = self._residual[:source.shape[0]]
        np.subtract(source, model, out=out)
        return out

    def rows(self, k):
        return slice(k * self.stride, k * self.stride + self.ny)

    def init(self, base, per_batch):
        """One init table from per-batch ``(x, y, group_id or None)`` (batch coordinates;
        ``phot``'s grouper fills missing group ids), group ids kept apart; also the batch of
        each row."""
        xs, ys, gids, owner = [], [], [], []
        top = 0
        for k, (x, y, gid) in enumerate(per_batch):
            if len(x) == 0:
                continue
            xs.append(x)
            ys.append(y + k * self.stride)
            owner.append(np.full(len(x), k, dtype=np.int64))
            if base.grouper is not None:
                g = np.asarray(base.grouper(x, y) if gid is None else gid, dtype=np.int64)
                gids.append(g + (top - g.min() if top else 0))  # one batch: ids as given
                top = int(gids[-1].max()) + 1
        init = QTable()
        if not xs:
            return None, None
        if base.grouper is not None:
            init["group_id"] = np.concatenate(gids)
        init["x_init"] = np.concatenate(xs)
        init["y_init"] = np.concatenate(ys)
        return init, np.concatenate(owner)

    def split(self, table, owner):
        """Per-batch column dicts ``x_fit, y_fit, flux_fit, flux_err, flags`` of a fit's
        result table (rows follow the init rows), in batch coordinates, with the
        outside-bounds flag judged on the batch's own image."""
        from crowdphot.psf.flags import PSF_FLAGS

        if len(table) != len(owner):
            raise RuntimeError("the fit returned a different number of rows than given")
        cols = {c: _values(table[c]) if c in table.colnames else np.full(len(table), np.nan)
                for c in _FIT_COLUMNS}
        cols["flags"] = (np.asarray(table["flags"], dtype=np.int64) if "flags" in
                         table.colnames else np.zeros(len(table), dtype=np.int64))
        out = []
        for k in range(self.n):
            sel = owner == k
            t = {c: v[sel] for c, v in cols.items()}
            if self.n > 1 and np.any(sel):
                t["y_fit"] = t["y_fit"] - k * self.stride
                x, y = t["x_fit"], t["y_fit"]
                with np.errstate(invalid="ignore"):
                    outside = ((x < -0.5) | (y < -0.5) | (x > self.nx - 0.5)
                               | (y > self.ny - 0.5))
                fl = t["flags"] & ~np.int64(PSF_FLAGS.OUTSIDE_BOUNDS)
                fl[outside] |= PSF_FLAGS.OUTSIDE_BOUNDS
                t["flags"] = fl
            out.append(t)
        return out


def _later_iterations(base, fitter, plan, stack, first, owner, xin, yin, zone, depth,
                      counter):
    """IterativePSFPhotometry's iterations 2.. around the artificial stars of every batch of
    ``stack`` (``xin``, ``yin``: per-batch lists): find in the local residual within ``zone``
    of each artificial star, fit ('new': on the residual; 'all': all local stars jointly on the
    image). Returns per batch the result tables whose rows are final."""
    tables = [[t] for t in stack.split(first.results, owner)]
    current, residual = first, stack.image
    active = np.ones(stack.n, dtype=bool)
    mask = stack.mask
    for _ in range(2, plan["maxiters"] + 1):
        residual = stack.residual(current, residual, plan["sub_shape"])
        found = []
        for k in range(stack.n):
            xr = yr = np.empty(0)
            if active[k]:
                rows = stack.rows(k)
                xr, yr = _detect_near(base, residual[rows], None if mask is None else
                                      mask[rows], xin[k], yin[k], zone, depth, counter)
                active[k] = xr.size > 0
            found.append((xr, yr, None))
        if not np.any(active):
            break
        if plan["mode"] == "new":
            init, owner = stack.init(base, found)
            nxt = _fit(fitter, residual, mask, stack.err, init)
            if nxt is None:
                break
            for k, t in enumerate(stack.split(nxt.results, owner)):
                if active[k]:
                    tables[k].append(t)
        else:  # 'all': every star of the active batches refitted jointly on the image
            from crowdphot.aperture.core import CircularAperture

            prev = current.results_to_init_params()
            px, py = _values(prev["x_init"]), _values(prev["y_init"])
            pf = _values(prev["flux_init"])
            # a fitted star stays within half the pad of its batch's rows
            pk = np.clip(np.floor((py + 0.5 * (stack.stride - stack.ny)) / stack.stride),
                         0, stack.n - 1).astype(np.int64)
            per_batch, fluxes = [], []
            for k in range(stack.n):
                xr, yr, _ = found[k]
                if not active[k]:
                    per_batch.append((xr, yr, None))
                    continue
                flux, _ = CircularAperture(np.column_stack([xr, yr + k * stack.stride]),
                                           r=base.aperture_radius).do_photometry(residual,
                                                                                 mask=mask)
                mine = pk == k
                per_batch.append((np.concatenate([px[mine], xr]),
                                  np.concatenate([py[mine] - k * stack.stride, yr]), None))
                fluxes.append(np.concatenate([pf[mine], _values(flux)]))
            init, owner = stack.init(base, per_batch)
            init["flux_init"] = np.concatenate(fluxes)
            nxt = _fit(fitter, stack.image, mask, stack.err, init)
            if nxt is None:
                break
            for k, t in enumerate(stack.split(nxt.results, owner)):
                if active[k]:
                    tables[k] = [t]
            residual = stack.image
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


def _batch_detections(base, image, mask, orig, xin, yin, geom, counter):
    """The batch image's detections: the box's own, except within reach of an artificial
    star, found anew there (sorted by (y, x))."""
    reach = geom["change"]
    if _finder_is_local(base.finder):
        xn, yn = _detect_near(base, image, mask, xin, yin, reach, geom["depth"], counter)
        far = ~_near(orig[0], orig[1], xin, yin, reach)
        return _merge_detections(orig[0][far], orig[1][far], xn, yn)
    # e.g. the n brightest: any detection can change, so the whole image is searched
    xd, yd = _detect(base, image, mask)
    counter["whole"] += 1
    return _merge_detections(xd, yd, xd[:0], yd[:0])


def _first_selection(base, xd, yd, xin, yin, radius):
    """The detections to fit: those within ``radius`` of an artificial star, with every member
    of their groups when ``phot`` has a grouper (grouped as the full run groups them)."""
    sel = _near(xd, yd, xin, yin, radius)
    if base.grouper is None or not np.any(sel):
        return xd[sel], yd[sel], None
    gid = np.asarray(base.grouper(xd, yd))
    sel |= np.isin(gid, np.unique(gid[sel]))
    return xd[sel], yd[sel], gid[sel]


def _nearest_fitted(tables, image, err, mask, xin, yin, search_radius, select):
    """Fitted (x, y, flux, flux_err) and flags of the star nearest each artificial star."""
    n = len(xin)
    out = np.full((n, 4), np.nan)
    flags = np.zeros(n, dtype=np.int64)
    vals = {c: np.concatenate([t[c] for t in tables]) for c in _FIT_COLUMNS}
    fl = np.concatenate([t["flags"] for t in tables])
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


def _measure_batches(base, fitter, plan, data, mask, error, orig, stars, stack, *, geom,
                     search_radius, select, counter):
    """Measure several batches (``stars``: per batch ``(xin, yin, fin, noise)``) with one fit
    call per step on their stacked images (``stack``: the box's :class:`_Stack`). Returns per
    batch ``(out, flags)``: (n, 4) fitted (x, y, flux, flux_err) and (n,) flags of the star
    nearest each artificial star."""
    picks = []
    zone = search_radius + 1.0
    # iterations find stars in the residual near the artificial star: every star whose model
    # stamp reaches that zone must be refitted first
    radius = zone + geom["iter_reach"]
    stack.use(len(stars))
    for k, (xin, yin, fin, noise) in enumerate(stars):
        stack.add(k, data, error, base.psf_model, xin, yin, fin, noise, geom["stamp"])
        rows = stack.rows(k)
        xd, yd = _batch_detections(base, stack.image[rows], mask, orig, xin, yin, geom,
                                   counter)
        picks.append(_first_selection(base, xd, yd, xin, yin, radius))
    empty = [(np.full((len(s[0]), 4), np.nan), np.zeros(len(s[0]), dtype=np.int64))
             for s in stars]
    init, owner = stack.init(base, picks)
    if init is None:
        return empty
    result = _fit(fitter, stack.image, stack.mask, stack.err, init)
    if result is None:
        return empty
    xin = [s[0] for s in stars]
    yin = [s[1] for s in stars]
    # later iterations keep what they find within the same reach: a star found there can hide
    # (finder's minimum separation) or blend with one near the artificial star
    tables = [[t] for t in stack.split(result.results, owner)] if plan is None else \
        _later_iterations(base, fitter, plan, stack, result, owner, xin, yin, radius,
                          geom["depth"], counter)
    res = []
    for k in range(stack.n):
        if not any(len(t["flags"]) for t in tables[k]):
            res.append(empty[k])
            continue
        rows = stack.rows(k)
        res.append(_nearest_fitted(
            tables[k], stack.image[rows], None if stack.err is None else stack.err[rows],
            mask, xin[k], yin[k], search_radius, select))
    return res


# ----------------------------------------------------------------------------------------------
# one box (the whole image, or a tile core plus its margin)
# ----------------------------------------------------------------------------------------------
def _local_models(base, fitter, x0, y0):
    """``base`` and ``fitter`` with the PSF as seen from a box starting at ``(y0, x0)``."""
    import copy

    from crowdphot.pipeline._planes import shift_model as _shift_model

    model = _shift_model(base.psf_model, x0, y0)
    if model is base.psf_model:
        return base, fitter
    base, fitter = copy.copy(base), copy.copy(fitter)
    base.psf_model = fitter.psf_model = model
    return base, fitter


def _stack_size(base, plan, geom, shape):
    """Batches per fit call and the masked rows between them (see :class:`_Stack`).

    The pad holds every pixel a batch's fits read
    or write beyond its rows: stamps, fit boxes, apertures and local-background annuli (an
    annulus cut by the masked seam keeps the pixels it keeps at the image edge; tested)."""
    if STACK_PIXELS <= 0:
        return 1, 0
    sizes = list(geom["stamp"]) + list(base.fit_shape)
    if plan is not None and plan["sub_shape"] is not None:
        sizes += list(plan["sub_shape"])
    annulus = float(getattr(base.local_bkg_estimator, "outer_radius", 0.0) or 0.0)
    reach = 0.5 * max(sizes) + max(float(base.aperture_radius or 0.0), max(base.fit_shape),
                                   annulus)
    pad = 2 * int(math.ceil(reach)) + 4
    per_call = int(STACK_PIXELS // ((shape[0] + pad) * shape[1]))
    return max(1, per_call), pad


def _box_task(source, box, stars, conf, settings):
    """Measure the artificial stars ``stars`` (dict of image-coordinate arrays ``x, y, flux,
    batch, noise``) on the pixels of ``box`` = ``(y0, y1, x0, x1)``, batch after batch.

    Returns ``(out, flags, counter)``: (n, 4) fitted x, y, flux, flux_err in image
    coordinates, (n,) flags, and how many finder calls ran on cut-outs / whole boxes.
    """
    if settings["remote"]:
        from crowdphot.pipeline._threads import limit_threads as _limit_threads

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
    kw = {k: settings[k] for k in ("geom", "search_radius", "select")}
    per_call, pad = _stack_size(base, plan, settings["geom"], data.shape)
    batches = np.unique(batch)
    per_call = min(per_call, len(batches)) or 1
    stack = _Stack(data.shape, per_call, pad, mask, error, settings["gain"])
    batches = [np.flatnonzero(batch == b) for b in batches]
    for s in range(0, len(batches), per_call):
        group = batches[s:s + per_call]
        res = _measure_batches(
            base, fitter, plan, data, mask, error, orig,
            [(xin[idx], yin[idx], fin[idx], None if noise is None else [noise[i] for i in idx])
             for idx in group], stack, counter=counter, **kw)
        for idx, (o, f) in zip(group, res, strict=True):
            out[idx] = o
            flags[idx] = f
        if settings.get("progress") is not None:
            settings["progress"](sum(len(idx) for idx in group))
    out[:, 0] += x0
    out[:, 1] += y0
    return out, flags, counter
