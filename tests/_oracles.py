"""Plain numpy versions of the compiled kernels, used as test oracles only.

These are the vectorised numpy implementations the package carried before every kernel moved to
one compiled implementation (``crowdphot.core.kernels``); the tests compare kernel output to
them. They are slow and not part of the package.
"""

import math

import numpy as np
from scipy import ndimage

from crowdphot.core.kernels.overlap import _nsub, stamp_bbox

# Peak temporary size of the spline oracles (gathered coefficients), in float64 elements.
_CHUNK_ELEMENTS = 1 << 21


def convolve(data, kernel):
    """scipy's zero-padded convolution (what ``convolve_zero_padded`` reproduces)."""
    return ndimage.convolve(data, kernel, mode="constant", cval=0.0)


def scatter_add(out, stamps, weights, bkg, xlo, ylo):
    """``np.add.at`` version of ``core.kernels.scatter.scatter_add``."""
    img_ny, img_nx = out.shape
    _, sy, sx = stamps.shape
    rows = ylo[:, None] + np.arange(sy)
    cols = xlo[:, None] + np.arange(sx)
    inside = ((rows >= 0) & (rows < img_ny))[:, :, None] & ((cols >= 0) & (cols < img_nx))[
        :, None, :
    ]
    flat = rows[:, :, None] * img_nx + cols[:, None, :]
    values = weights[:, None, None] * stamps + bkg[:, None, None]
    if inside.all():
        np.add.at(out.reshape(-1), flat.reshape(-1), values.reshape(-1))
    else:
        np.add.at(out.reshape(-1), flat[inside], values[inside])


def greedy_match(i, j, n_ref, n_src):
    """Same result as the sequential greedy pass, in rounds of mutual-nearest-neighbour acceptance.

    An edge that is the first remaining edge of both its reference and its source would be
    accepted by the sequential greedy pass (nothing earlier can claim either member), so each
    round accepts all such edges, drops the edges that touch accepted members and repeats.
    Typical catalogs need a handful of rounds.
    """
    accept = np.zeros(i.size, dtype=bool)
    used_ref = np.zeros(n_ref, dtype=bool)
    used_src = np.zeros(n_src, dtype=bool)
    alive = np.arange(i.size)
    sentinel = i.size
    while alive.size:
        ii, jj = i[alive], j[alive]
        first_ref = np.full(n_ref, sentinel)
        first_src = np.full(n_src, sentinel)
        np.minimum.at(first_ref, ii, alive)
        np.minimum.at(first_src, jj, alive)
        win = alive[(first_ref[ii] == alive) & (first_src[jj] == alive)]
        accept[win] = True
        used_ref[i[win]] = True
        used_src[j[win]] = True
        alive = alive[~(used_ref[ii] | used_src[jj])]
    return accept


def greedy_keep(n, first, second):
    """Greedy minimum-separation thinning by rounds (see ``core.kernels.greedy``)."""
    # Same greedy result by rounds: a point is settled once all lower-index neighbours are; the
    # lowest unsettled point always settles, and random fields need only a few rounds.
    state = np.zeros(n, dtype=np.int8)  # 0 open, 1 kept, -1 dropped
    while True:
        open_ = state == 0
        if not open_.any():
            return state == 1
        killed = np.zeros(n, dtype=bool)
        killed[second[state[first] == 1]] = True
        blocked = np.zeros(n, dtype=bool)
        blocked[second[state[first] == 0]] = True
        state[open_ & killed] = -1
        state[open_ & ~killed & ~blocked] = 1


def _chord(x, r):
    """Half-chord height ``sqrt(r**2 - x**2)`` (0 beyond the circle), written as a product."""
    return np.sqrt(np.maximum((r - x) * (r + x), 0.0))


def _under_arc(u, v, r):
    """Integral of ``sqrt(r**2 - x**2)`` over ``[u, v]`` for ``0 <= u <= v <= r``.

    The area is the trapezoid under the chord plus the circular segment between chord and arc;
    the height difference is formed without subtracting two nearly equal square roots.
    """
    hu = _chord(u, r)
    hv = _chord(v, r)
    hsum = hu + hv
    with np.errstate(invalid="ignore", divide="ignore"):
        dh = np.where(hsum > 0, (u - v) * (u + v) / hsum, 0.0)
    chord = np.hypot(v - u, dh)
    theta = 2.0 * np.arcsin(np.minimum(chord / (2.0 * r), 1.0))
    return 0.5 * (v - u) * hsum + 0.5 * r * r * (theta - np.sin(theta))


def _quadrant_area(a, b, c, d, r):
    """Disc area inside ``[a, b] x [c, d]`` for ``0 <= a <= b`` and ``0 <= c <= d``."""
    a = np.minimum(a, r)
    b = np.minimum(b, r)
    # abscissae where the arc crosses the horizontal edges y = d and y = c
    td = np.clip(_chord(d, r), a, b)
    tc = np.clip(_chord(c, r), a, b)
    # integral of min(h, d) - min(h, c) over [a, b]
    return c * (td - tc) + (d - c) * (td - a) + _under_arc(td, tc, r)


def circle_rect_area(x0, x1, y0, y1, r):
    """Exact area of the disc of radius ``r`` centred at the origin inside a rectangle.

    Parameters
    ----------
    x0, x1, y0, y1 : array_like
        Rectangle edges (``x0 <= x1``, ``y0 <= y1``), broadcast together.
    r : float or array_like
        Disc radius (> 0).

    Returns
    -------
    area : ndarray
        Broadcast shape of the inputs.

    Examples
    --------
    >>> round(float(circle_rect_area(-2.0, 2.0, -2.0, 2.0, 1.0)), 12)  # whole disc
    3.14159265359
    >>> float(circle_rect_area(0.0, 1.0, 0.0, 1.0, 2.0))  # square well inside
    1.0
    """
    x0, x1, y0, y1, r = np.broadcast_arrays(*(np.asarray(v, dtype=float)
                                              for v in (x0, x1, y0, y1, r)))
    shape = x0.shape
    x0, x1, y0, y1, r = (v.ravel() for v in (x0, x1, y0, y1, r))
    # Mirror each range onto the positive axis; a range that straddles 0 splits into a
    # positive part [0, x1] (the "main" part) and a mirrored negative part [0, -x0].
    xa = np.where(x1 <= 0, -x1, np.maximum(x0, 0.0))
    xb = np.where(x1 <= 0, -x0, x1)
    ya = np.where(y1 <= 0, -y1, np.maximum(y0, 0.0))
    yb = np.where(y1 <= 0, -y0, y1)
    area = _quadrant_area(xa, xb, ya, yb, r)
    # only the few rectangles crossing an axis need the extra mirrored pieces
    sx = (x0 < 0) & (x1 > 0)
    sy = (y0 < 0) & (y1 > 0)
    k = np.nonzero(sx | sy)
    if k[0].size:
        ex = np.where(sx[k], -x0[k], 0.0)  # extra x piece [0, ex] (empty when not straddling)
        ey = np.where(sy[k], -y0[k], 0.0)
        zero = np.zeros(ex.shape)
        extra = (_quadrant_area(zero, ex, ya[k], yb[k], r[k])
                 + _quadrant_area(xa[k], xb[k], zero, ey, r[k])
                 + _quadrant_area(zero, ex, zero, ey, r[k]))
        area[k] += extra
    return area.reshape(shape)


def _accumulated_samples(lo, step, count):
    """Sub-pixel sample abscissae built by repeated addition, as the reference loop does."""
    out = np.empty(lo.shape + (count,))
    pos = lo - 0.5 * step
    for k in range(count):
        pos = pos + step
        out[..., k] = pos
    return out


def _disc_weights(pxmin, pymin, dx, dy, radius, method, subpixels):
    """Weights ``(n, ky, kx)`` of one disc on the per-source pixel grids ``pxmin``, ``pymin``."""
    pxcen = pxmin + dx[:, None] * 0.5
    pycen = pymin + dy[:, None] * 0.5
    pxmax = pxmin + dx[:, None]
    pymax = pymin + dy[:, None]
    in_x = (pxmax > (-radius - 0.5 * dx)[:, None]) & (pxmin < (radius + 0.5 * dx)[:, None])
    in_y = (pymax > (-radius - 0.5 * dy)[:, None]) & (pymin < (radius + 0.5 * dy)[:, None])
    pixel_radius = (0.5 * np.sqrt(dx * dx + dy * dy))[:, None, None]
    dist = np.sqrt(pxcen[:, None, :] * pxcen[:, None, :] + pycen[:, :, None] * pycen[:, :, None])
    inside_box = in_y[:, :, None] & in_x[:, None, :]
    full = (dist < radius - pixel_radius) & inside_box
    edge = (dist < radius + pixel_radius) & inside_box & ~full
    weights = full.astype(float)

    s, j, i = np.nonzero(edge)
    if s.size == 0:
        return weights
    x0, x1 = pxmin[s, i], pxmax[s, i]
    y0, y1 = pymin[s, j], pymax[s, j]
    if method == "exact":
        frac = circle_rect_area(x0, x1, y0, y1, radius) / (dx[s] * dy[s])
    else:
        nsub = _nsub(method, subpixels)
        xs = _accumulated_samples(x0, (x1 - x0) / nsub, nsub)
        ys = _accumulated_samples(y0, (y1 - y0) / nsub, nsub)
        hits = (xs * xs)[:, :, None] + (ys * ys)[:, None, :] < radius ** 2
        frac = hits.sum(axis=(1, 2)) / float(nsub * nsub)
    weights[s, j, i] = frac
    return weights


def circle_weight_stamps(x, y, r, *, r_in=None, method="exact", subpixels=5):
    """Stamp weights by vectorised numpy geometry (see ``core.kernels.overlap``)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ixmin, ixmax, iymin, iymax = stamp_bbox(x, y, r)
    nx = ixmax - ixmin
    ny = iymax - iymin
    if x.size == 0:
        return np.zeros((0, 1, 1)), ixmin, iymin, nx, ny
    kx = int(nx.max())
    ky = int(ny.max())
    # grid edges relative to the centre, then pixel i starts at xmin + i * dx
    xmin_e = (ixmin - 0.5) - x
    ymin_e = (iymin - 0.5) - y
    dx = (((ixmax - 0.5) - x) - xmin_e) / nx
    dy = (((iymax - 0.5) - y) - ymin_e) / ny
    pxmin = xmin_e[:, None] + np.arange(kx, dtype=float)[None, :] * dx[:, None]
    pymin = ymin_e[:, None] + np.arange(ky, dtype=float)[None, :] * dy[:, None]

    weights = _disc_weights(pxmin, pymin, dx, dy, float(r), method, subpixels)
    if r_in is not None:
        weights -= _disc_weights(pxmin, pymin, dx, dy, float(r_in), method, subpixels)
    # padding beyond a source's own box belongs to no aperture
    outside = ((np.arange(ky)[None, :, None] >= ny[:, None, None])
               | (np.arange(kx)[None, None, :] >= nx[:, None, None]))
    weights[outside] = 0.0
    return weights, ixmin, iymin, nx, ny


def aperture_sums(data, error, excluded, x, y, r, r_in, method, subpixels):
    """Weighted sums over circles/annuli at ``(x, y)``; NaN where a box misses the image.

    Pixels that are ``excluded`` or hold a non-finite value are left out.

    Returns
    -------
    sums : ndarray of shape (n,)
    errs : ndarray of shape (n,) or None
    nonfinite : int
        Number of (aperture, pixel) pairs skipped because the data value was non-finite.
    """
    n = x.size
    sums = np.full(n, np.nan)
    errs = None if error is None else np.full(n, np.nan)
    nonfinite = 0
    ny_img, nx_img = data.shape
    side = 2 * int(math.ceil(r)) + 2
    chunk = max(1, 1_000_000 // (side * side))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        w, ixmin, iymin, nx, ny = circle_weight_stamps(
            x[sl], y[sl], r, r_in=r_in, method=method, subpixels=subpixels
        )
        ky, kx = w.shape[1:]
        yy = iymin[:, None] + np.arange(ky)
        xx = ixmin[:, None] + np.arange(kx)
        in_y = (yy >= 0) & (yy < ny_img)
        in_x = (xx >= 0) & (xx < nx_img)
        idx = (np.clip(yy, 0, ny_img - 1)[:, :, None], np.clip(xx, 0, nx_img - 1)[:, None, :])
        use = (w > 0) & in_y[:, :, None] & in_x[:, None, :]
        if excluded is not None:
            use &= ~excluded[idx]
        vals = data[idx]
        finite = np.isfinite(vals)
        nonfinite += int(np.count_nonzero(use & ~finite))
        use &= finite
        wu = np.where(use, w, 0.0)
        overlap = (ixmin < nx_img) & (iymin < ny_img) & (ixmin + nx > 0) & (iymin + ny > 0)
        with np.errstate(invalid="ignore", over="ignore"):
            # skipped pixels may hold NaN: select rather than multiply by a zero weight
            total = np.where(use, vals * wu, 0.0).sum(axis=(1, 2))
            sums[sl] = np.where(overlap, total, np.nan)
            if error is not None:
                var = np.where(use, error[idx] ** 2 * wu, 0.0).sum(axis=(1, 2))
                errs[sl] = np.where(overlap, np.sqrt(var), np.nan)
    return sums, errs, nonfinite


def annulus_values(data, excluded, x, y, r_in, r_out):
    """Annulus pixel values of each source as a masked ``(n, m)`` array.

    Pixels are those whose centre lies in the annulus (photutils' ``'center'`` rule), inside
    the image, finite and not ``excluded``; the rest of each row is masked padding.
    """
    w, ixmin, iymin, _, _ = circle_weight_stamps(x, y, r_out, r_in=r_in, method="center")
    ny_img, nx_img = data.shape
    ky, kx = w.shape[1:]
    yy = iymin[:, None] + np.arange(ky)
    xx = ixmin[:, None] + np.arange(kx)
    idx = (np.clip(yy, 0, ny_img - 1)[:, :, None], np.clip(xx, 0, nx_img - 1)[:, None, :])
    keep = (w > 0) & ((yy >= 0) & (yy < ny_img))[:, :, None] & ((xx >= 0) & (xx < nx_img))[
        :, None, :
    ]
    if excluded is not None:
        keep &= ~excluded[idx]
    vals = data[idx]
    keep &= np.isfinite(vals)
    keep = keep.reshape(x.size, -1)
    vals = vals.reshape(x.size, -1)
    cols = keep.any(axis=0)  # drop stamp pixels that no source uses
    keep, vals = keep[:, cols], vals[:, cols]
    return np.ma.MaskedArray(np.where(keep, vals, 0.0), mask=~keep)


def peak_flags(conv, thr, mask, border, footprint, circle):
    """Vectorised peak flags: scipy maximum filters plus a chunked exact-circle check."""
    ny, nx = conv.shape
    if circle is None:
        peaks = conv == ndimage.maximum_filter(conv, footprint=footprint, mode="constant", cval=0.0)
    else:
        foot, fs, half, insc = circle
        definite = conv == ndimage.maximum_filter(conv, size=fs, mode="constant", cval=0.0)
        cand = conv == ndimage.maximum_filter(conv, size=insc, mode="constant", cval=0.0)
        peaks = definite
        check = cand & ~definite & (conv > thr)
        if mask is not None:
            check &= ~mask
        ys, xs = np.nonzero(check)
        if ys.size:
            jj, kk = np.nonzero(foot)
            dy, dx = jj - half, kk - half
            padv = -np.inf
            for s in range(0, ys.size, 4096):
                yc, xc = ys[s : s + 4096, None], xs[s : s + 4096, None]
                yy, xx = yc + dy, xc + dx
                inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
                vals = np.where(inside, conv[np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)], padv)
                vmax = vals.max(axis=1)
                yc, xc = yc[:, 0], xc[:, 0]
                clipped = (yc - half < 0) | (xc - half < 0) | (yc - half + fs > ny)
                clipped |= xc - half + fs > nx
                vmax = np.where(clipped, np.maximum(vmax, 0.0), vmax)
                peaks[yc, xc] = conv[yc, xc] == vmax
    peaks &= conv > thr
    if mask is not None:
        peaks &= ~mask
    by, bx = border
    if by > 0:
        peaks[:by] = False
        peaks[-by:] = False
    if bx > 0:
        peaks[:, :bx] = False
        peaks[:, -bx:] = False
    return peaks


def _basis_np(x, table, starts, n, clamp):
    """Interval index, 4 basis values and derivatives, and validity at sample coords ``x``."""
    valid = (x >= 0) & (x <= n - 1)
    xc = np.clip(x, 0.0, n - 1.0)
    xc = np.where(np.isfinite(xc), xc, 0.0)
    m = np.clip(np.floor(xc).astype(np.int64) - 1, 0, n - 4)
    u = (xc - starts[m])[..., None]
    p = table[m]
    w = ((p[..., 3] * u + p[..., 2]) * u + p[..., 1]) * u + p[..., 0]
    dw = (3.0 * p[..., 3] * u + 2.0 * p[..., 2]) * u + p[..., 1]
    # clamped coordinates do not move with the star, and invalid ones are replaced by fill
    dw = np.where(valid[..., None], dw, 0.0)
    if clamp:
        valid = np.ones_like(valid)
    return m, w, dw, valid


def spline_points(coeffs, tx, sx, ty, sy, xi, yi, star, gidx, gw, gdx, gdy, ox, oy, fill,
               clamp, grad):
    npts = len(xi)
    out = np.empty((3 if grad else 1, npts))
    ny, nx = coeffs.shape[1:]
    nk = gidx.shape[1]
    step = max(1, _CHUNK_ELEMENTS // (16 * nk))
    four = np.arange(4)
    for lo in range(0, npts, step):
        sl = slice(lo, min(lo + step, npts))
        mx, wx, dwx, okx = _basis_np(xi[sl], tx, sx, nx, clamp)
        my, wy, dwy, oky = _basis_np(yi[sl], ty, sy, ny, clamp)
        s = star[sl]
        rows = (my[:, None] + four)[:, :, None]
        cols = (mx[:, None] + four)[:, None, :]
        val = np.zeros(len(s))
        dx = np.zeros(len(s))
        dy = np.zeros(len(s))
        for k in range(nk):
            block = coeffs[gidx[s, k][:, None, None], rows, cols]  # (p, 4[y], 4[x])
            rowsum = np.einsum("pab,pb->pa", block, wx)
            sv = np.einsum("pa,pa->p", rowsum, wy)
            val += gw[s, k] * sv
            if grad:
                sxd = np.einsum("pab,pb,pa->p", block, dwx, wy)
                syd = np.einsum("pa,pa->p", rowsum, dwy)
                dx += gdx[s, k] * sv - ox * gw[s, k] * sxd
                dy += gdy[s, k] * sv - oy * gw[s, k] * syd
        ok = okx & oky
        out[0, sl] = np.where(ok, val, fill)
        if grad:
            out[1, sl] = np.where(ok, dx, 0.0)
            out[2, sl] = np.where(ok, dy, 0.0)
    return out


def _taps(vec, taps, w):
    """``sum_b w[c, x, b] * vec[c, r, taps[c, x] + b]`` for row vectors ``vec`` (c, ny, span)."""
    c, ny, _ = vec.shape
    nx = taps.shape[1]
    idx = (taps[:, :, None] + np.arange(4)).reshape(c, 1, nx * 4)
    picked = np.take_along_axis(vec, np.broadcast_to(idx, (c, ny, nx * 4)), axis=2)
    return np.einsum("crxb,cxb->crx", picked.reshape(c, ny, nx, 4), w)


def spline_stamps(coeffs, tx, sx, ty, sy, ox, oy, orx, ory, x0, y0, xlo, ylo, gidx, gw, gdx, gdy,
               shape, fill, clamp):
    """Separable numpy version of the stamp kernels: y pass on coefficient rows, then x taps."""
    grad = gdx is not None
    n = len(x0)
    ny, nx = shape
    cny, cnx = coeffs.shape[1:]
    out = np.empty((3 if grad else 1, n, ny, nx))
    four = np.arange(4)
    xs = ox * ((xlo[:, None] + np.arange(nx)) - x0[:, None]) + orx
    ys = oy * ((ylo[:, None] + np.arange(ny)) - y0[:, None]) + ory
    mx, wx, dwx, okx = _basis_np(xs, tx, sx, cnx, clamp)
    my, wy, dwy, oky = _basis_np(ys, ty, sy, cny, clamp)
    lo = mx[:, 0]
    span_all = mx[:, -1] + 4 - lo
    per_star = ny * 4 * int(span_all.max()) * (3 if grad else 1)
    step = max(1, _CHUNK_ELEMENTS // per_star)
    for start in range(0, n, step):
        sl = slice(start, min(n, start + step))
        span = int(span_all[sl].max())
        rows = (my[sl, :, None] + four)[:, :, :, None]  # (c, ny, 4, 1)
        cols = np.minimum(lo[sl, None] + np.arange(span), cnx - 1)[:, None, None, :]
        v = 0.0
        vx = vy = 0.0
        for k in range(gidx.shape[1]):
            block = coeffs[gidx[sl, k][:, None, None, None], rows, cols]  # (c, ny, 4, span)
            wk = gw[sl, k][:, None, None]
            v = v + np.einsum("cra,craq->crq", wy[sl] * wk, block)
            if grad:
                vx = vx + np.einsum("cra,craq->crq", wy[sl] * gdx[sl, k][:, None, None], block)
                vy = vy + np.einsum("cra,craq->crq", wy[sl] * gdy[sl, k][:, None, None]
                                    - oy * dwy[sl] * wk, block)
        taps = mx[sl] - lo[sl, None]  # (c, nx): first of the 4 taps of each pixel
        ok = oky[sl, :, None] & okx[sl, None, :]
        out[0, sl] = np.where(ok, _taps(v, taps, wx[sl]), fill)
        if grad:
            out[1, sl] = np.where(ok, _taps(vx, taps, wx[sl]) - ox * _taps(v, taps, dwx[sl]),
                                  0.0)
            out[2, sl] = np.where(ok, _taps(vy, taps, wx[sl]), 0.0)
    return (out[0], out[1], out[2]) if grad else out[0]


def close_pairs(x, y, r, *, x2=None, y2=None, metric="euclidean"):
    """All pairs within ``r`` by the full distance matrix (see ``core.kernels.pairs``)."""
    self_pairs = x2 is None
    xb, yb = (x, y) if self_pairs else (x2, y2)
    dx = x[:, None] - xb[None, :]
    dy = y[:, None] - yb[None, :]
    if metric == "euclidean":
        d = np.sqrt(dx * dx + dy * dy)
    else:
        d = np.maximum(np.abs(dx), np.abs(dy))
    close = d <= r
    if self_pairs:
        close = np.triu(close, 1)
    i, j = np.nonzero(close)
    return i.astype(np.int64), j.astype(np.int64)


def fof_labels(x, y, r):
    """Friends-of-friends ids by first appearance: scipy k-d tree pairs, the exact test, and
    scipy's connected components (the grouper's implementation before the compiled kernel)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(x)
    pairs = cKDTree(np.column_stack((x, y))).query_pairs(r * (1 + 1e-9) + 1e-300,
                                                         output_type="ndarray")
    i, j = (pairs[:, 0], pairs[:, 1]) if pairs.size else (np.zeros(0, int), np.zeros(0, int))
    dx, dy = x[i] - x[j], y[i] - y[j]
    keep = np.sqrt(dx * dx + dy * dy) <= r
    graph = coo_matrix((np.ones(int(keep.sum())), (i[keep], j[keep])), shape=(n, n))
    n_labels, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(n_labels, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, n_labels + 1)
    return rank[labels]
