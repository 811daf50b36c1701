"""Pixel weights of circles and annuli on the pixel grid, for many positions at once.

Everything here is unchecked and vectorised over sources. The public aperture and
local-background classes validate their inputs and then call :func:`circle_weight_stamps`.

Geometry
--------
Pixel ``(j, i)`` spans ``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``. The exact weight of a pixel
is the area of its intersection with the disc, obtained from a closed form: for a rectangle in
the first quadrant (relative to the centre) the area is the integral over ``x`` of the length of
``[y0, y1]`` that lies below the chord height ``h(x) = sqrt(r**2 - x**2)``; rectangles that
straddle an axis are split at it and mirrored into the first quadrant. The integral of ``h``
between two abscissae is written as a trapezoid plus a circular segment, which avoids the
catastrophic cancellation of the usual ``asin`` antiderivative for large radii.

Grid arithmetic
---------------
Pixel edges, the bounding box and the "well inside / near the edge" classification reproduce
photutils' floating-point arithmetic operation for operation, so that the ``'center'`` and
``'subpixel'`` methods take the same in/out decision for sample points that lie exactly on the
circle (common with integer positions and radii).
"""

from __future__ import annotations

import math

import numpy as np

from crowdphot.core.jit import HAVE_NUMBA, njit, use_numba

if HAVE_NUMBA:  # the compiled kernels need numba's own prange object
    from numba import prange
else:  # pragma: no cover
    prange = range

__all__ = [
    "METHODS",
    "annulus_values_compiled",
    "circle_rect_area",
    "circle_sums_compiled",
    "circle_weight_stamps",
    "stamp_bbox",
]

#: Pixel-overlap methods understood by :func:`circle_weight_stamps`.
METHODS = ("exact", "center", "subpixel")


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


def stamp_bbox(x, y, r):
    """Minimal integer bounding box of circles of radius ``r`` at ``(x, y)`` (photutils' rule).

    Parameters
    ----------
    x, y : ndarray of shape (n,)
    r : float

    Returns
    -------
    ixmin, ixmax, iymin, iymax : ndarray of int64, shape (n,)
        Upper limits are exclusive.

    Examples
    --------
    >>> stamp_bbox(np.array([10.0]), np.array([3.3]), 2.0)
    (array([8]), array([13]), array([1]), array([6]))
    """
    ixmin = np.floor((x - r) + 0.5).astype(np.int64)
    ixmax = np.ceil((x + r) + 0.5).astype(np.int64)
    iymin = np.floor((y - r) + 0.5).astype(np.int64)
    iymax = np.ceil((y + r) + 0.5).astype(np.int64)
    return ixmin, ixmax, iymin, iymax


def _nsub(method, subpixels):
    """Samples per pixel side: 'center' is one sample at the pixel centre."""
    return 1 if method != "subpixel" else int(subpixels)


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
    """Overlap weights of circles (or annuli) at many positions, on padded common stamps.

    Parameters
    ----------
    x, y : ndarray of float, shape (n,)
        Centres in pixel coordinates.
    r : float
        (Outer) radius; it also sets the bounding box.
    r_in : float, optional
        Inner radius of an annulus (``r_in < r``); its disc weights are subtracted.
    method : {'exact', 'center', 'subpixel'}
    subpixels : int
        Samples per pixel side for ``'subpixel'``.

    Returns
    -------
    weights : ndarray of shape (n, ky, kx)
        Weight of pixel ``(iymin[k] + j, ixmin[k] + i)`` for source ``k``; zero beyond each
        source's own bounding box (``ky, kx`` are the largest box sizes).
    ixmin, iymin : ndarray of int64, shape (n,)
        Lower-left pixel of each stamp.
    nx, ny : ndarray of int64, shape (n,)
        Size of each source's own bounding box.

    Examples
    --------
    >>> w, ixmin, iymin, nx, ny = circle_weight_stamps(np.array([5.0]), np.array([5.0]), 1.0,
    ...                                                method='center')
    >>> w[0].astype(int)
    array([[0, 0, 0],
           [0, 1, 0],
           [0, 0, 0]])
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ixmin, ixmax, iymin, iymax = stamp_bbox(x, y, r)
    nx = ixmax - ixmin
    ny = iymax - iymin
    if x.size == 0:
        return np.zeros((0, 1, 1)), ixmin, iymin, nx, ny
    kx = int(nx.max())
    ky = int(ny.max())
    if use_numba():
        weights = np.zeros((x.size, ky, kx))
        _stamps_kernel(np.ascontiguousarray(x), np.ascontiguousarray(y), float(r),
                       -1.0 if r_in is None else float(r_in), _METHOD_CODE[method],
                       _nsub(method, subpixels), weights)
        return weights, ixmin, iymin, nx, ny
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


# ----------------------------------------------------------------------------------------------
# compiled path: the same arithmetic, one pixel at a time, accumulating sums without stamps
# ----------------------------------------------------------------------------------------------
_METHOD_CODE = {"exact": 0, "center": 1, "subpixel": 2}


@njit
def _chord_s(x, r):
    v = (r - x) * (r + x)
    return math.sqrt(v) if v > 0.0 else 0.0


# theta - sin(theta) = 4 * s**3 * sum_k C(2k, k) / 4**k * s**(2k) / (2k + 3), s = sin(theta / 2):
# for s < 1/8 ten terms are exact to double precision and avoid asin/sin per edge pixel
_SEGMENT_COEFFS = np.array([math.comb(2 * k, k) / 4.0 ** k / (2 * k + 3) for k in range(10)])


@njit
def _under_arc_s(u, v, r):
    hu = _chord_s(u, r)
    hv = _chord_s(v, r)
    hsum = hu + hv
    dh = (u - v) * (u + v) / hsum if hsum > 0.0 else 0.0
    half = 0.5 * math.sqrt((v - u) * (v - u) + dh * dh) / r  # sin(theta / 2)
    if half < 0.125:
        s2 = half * half
        acc = _SEGMENT_COEFFS[9]
        for k in range(8, -1, -1):
            acc = acc * s2 + _SEGMENT_COEFFS[k]
        excess = 4.0 * half * s2 * acc
    else:
        theta = 2.0 * math.asin(min(half, 1.0))
        excess = theta - math.sin(theta)
    return 0.5 * (v - u) * hsum + 0.5 * r * r * excess


@njit
def _quadrant_area_s(a, b, c, d, r):
    a = min(a, r)
    b = min(b, r)
    td = min(max(_chord_s(d, r), a), b)
    tc = min(max(_chord_s(c, r), a), b)
    return c * (td - tc) + (d - c) * (td - a) + _under_arc_s(td, tc, r)


@njit
def _rect_area_s(x0, x1, y0, y1, r):
    xa = -x1 if x1 <= 0.0 else max(x0, 0.0)
    xb = -x0 if x1 <= 0.0 else x1
    ya = -y1 if y1 <= 0.0 else max(y0, 0.0)
    yb = -y0 if y1 <= 0.0 else y1
    area = _quadrant_area_s(xa, xb, ya, yb, r)
    ex = -x0 if (x0 < 0.0 and x1 > 0.0) else 0.0
    ey = -y0 if (y0 < 0.0 and y1 > 0.0) else 0.0
    if ex > 0.0:
        area += _quadrant_area_s(0.0, ex, ya, yb, r)
    if ey > 0.0:
        area += _quadrant_area_s(xa, xb, 0.0, ey, r)
    if ex > 0.0 and ey > 0.0:
        area += _quadrant_area_s(0.0, ex, 0.0, ey, r)
    return area


@njit
def _disc_pixel_s(pxmin, pymin, dx, dy, radius, pixel_radius, method, nsub):
    pxmax = pxmin + dx
    pymax = pymin + dy
    if not (pxmax > -radius - 0.5 * dx and pxmin < radius + 0.5 * dx
            and pymax > -radius - 0.5 * dy and pymin < radius + 0.5 * dy):
        return 0.0
    pxcen = pxmin + dx * 0.5
    pycen = pymin + dy * 0.5
    dist = math.sqrt(pxcen * pxcen + pycen * pycen)
    if dist < radius - pixel_radius:
        return 1.0
    if not dist < radius + pixel_radius:
        return 0.0
    if method == 0:
        return _rect_area_s(pxmin, pxmax, pymin, pymax, radius) / (dx * dy)
    sdx = (pxmax - pxmin) / nsub
    sdy = (pymax - pymin) / nsub
    r2 = radius * radius
    hits = 0
    xs = pxmin - 0.5 * sdx
    for _ in range(nsub):
        xs += sdx
        ys = pymin - 0.5 * sdy
        for _ in range(nsub):
            ys += sdy
            if xs * xs + ys * ys < r2:
                hits += 1
    return hits / float(nsub * nsub)


@njit
def _half_width(radius, yc):
    """Half-width of the chord at height ``yc`` of a circle (-1 when the row misses it)."""
    q = radius * radius - yc * yc
    return math.sqrt(q) if (radius > 0.0 and q > 0.0) else -1.0


@njit
def _source_grid(xk, yk, r):
    """Bounding box and grid spacing of one source, with photutils' arithmetic."""
    ixmin = math.floor((xk - r) + 0.5)
    ixmax = math.ceil((xk + r) + 0.5)
    iymin = math.floor((yk - r) + 0.5)
    iymax = math.ceil((yk + r) + 0.5)
    nx = ixmax - ixmin
    ny = iymax - iymin
    xmin_e = (ixmin - 0.5) - xk
    ymin_e = (iymin - 0.5) - yk
    dx = (((ixmax - 0.5) - xk) - xmin_e) / nx
    dy = (((iymax - 0.5) - yk) - ymin_e) / ny
    return ixmin, iymin, nx, ny, xmin_e, ymin_e, dx, dy


@njit
def _row_bounds(pycen, r, r_in, pixel_radius):
    """Per-row |x| thresholds that decide most pixels without the per-pixel test.

    A conservative margin keeps these shortcuts to pixels whose classification is certain;
    the others go through :func:`_disc_pixel_s`.
    """
    tol = 1e-9 * (r + 1.0)
    far_out = _half_width(r + pixel_radius, pycen) + tol
    in_out = _half_width(r - pixel_radius, pycen) - tol
    far_in = _half_width(r_in + pixel_radius, pycen) + tol
    in_in = _half_width(r_in - pixel_radius, pycen) - tol
    return far_out, in_out, far_in, in_in


@njit
def _index_range(half, xmin_e, dx, grow):
    """Column indices ``[lo, hi)`` whose centres satisfy ``|x| < half``, widened (``grow=1``)
    or narrowed (``grow=-1``) by one pixel per side so that rounding cannot misplace a pixel."""
    if half <= 0.0:
        return 0, 0
    lo = math.floor((-half - xmin_e) / dx - 0.5) + 1 - grow
    hi = math.ceil((half - xmin_e) / dx - 0.5) + grow
    return lo, hi


@njit
def _row_ranges(bounds, xmin_e, dx):
    """Per-row column ranges: candidates (``|x| < far_out``), certainly weight-1 pixels of the
    outer disc, and the inner disc's candidates (which need the per-pixel path)."""
    far_out, in_out, far_in, _ = bounds
    i0, i1 = _index_range(far_out, xmin_e, dx, 1)
    full0, full1 = _index_range(in_out, xmin_e, dx, -1)
    hole0, hole1 = _index_range(far_in, xmin_e, dx, 1)
    return i0, i1, full0, full1, hole0, hole1


@njit
def _pixel_weight(pxmin, pymin, dx, dy, r, r_in, pixel_radius, bounds, method, nsub):
    far_out, in_out, far_in, in_in = bounds
    ax = abs(pxmin + dx * 0.5)
    annulus = r_in > 0.0
    if ax >= far_out or (annulus and ax < in_in):
        return 0.0
    if ax < in_out:
        w = 1.0
    else:
        w = _disc_pixel_s(pxmin, pymin, dx, dy, r, pixel_radius, method, nsub)
    if annulus and ax < far_in and w > 0.0:
        w -= _disc_pixel_s(pxmin, pymin, dx, dy, r_in, pixel_radius, method, nsub)
    return w


@njit(parallel=True)
def _circle_sums_kernel(data, excluded, error, x, y, r, r_in, method, nsub, sums, errs):
    ny_img, nx_img = data.shape
    nonfinite = 0
    use_mask = excluded.shape[0] > 0
    use_err = error.shape[0] > 0
    for k in prange(x.size):  # sources are independent; each sum stays sequential
        ixmin, iymin, nx, ny, xmin_e, ymin_e, dx, dy = _source_grid(x[k], y[k], r)
        if ixmin >= nx_img or iymin >= ny_img or ixmin + nx <= 0 or iymin + ny <= 0:
            sums[k] = np.nan
            errs[k] = np.nan
            continue
        pixel_radius = 0.5 * math.sqrt(dx * dx + dy * dy)
        total = 0.0
        var = 0.0
        for j in range(max(0, -iymin), min(ny, ny_img - iymin)):
            pymin = ymin_e + j * dy
            bounds = _row_bounds(pymin + dy * 0.5, r, r_in, pixel_radius)
            i0, i1, full0, full1, hole0, hole1 = _row_ranges(bounds, xmin_e, dx)
            for i in range(max(0, -ixmin, i0), min(nx, nx_img - ixmin, i1)):
                if full0 <= i < full1 and not hole0 <= i < hole1:
                    w = 1.0
                else:
                    w = _pixel_weight(xmin_e + i * dx, pymin, dx, dy, r, r_in, pixel_radius,
                                      bounds, method, nsub)
                if w <= 0.0 or (use_mask and excluded[iymin + j, ixmin + i]):
                    continue
                v = data[iymin + j, ixmin + i]
                if not math.isfinite(v):
                    nonfinite += 1
                    continue
                total += v * w
                if use_err:
                    e = error[iymin + j, ixmin + i]
                    var += e * e * w
        sums[k] = total
        errs[k] = math.sqrt(var)
    return nonfinite


@njit
def _stamps_kernel(x, y, r, r_in, method, nsub, out):
    for k in range(x.size):
        _, _, nx, ny, xmin_e, ymin_e, dx, dy = _source_grid(x[k], y[k], r)
        pixel_radius = 0.5 * math.sqrt(dx * dx + dy * dy)
        for j in range(ny):
            pymin = ymin_e + j * dy
            bounds = _row_bounds(pymin + dy * 0.5, r, r_in, pixel_radius)
            for i in range(nx):
                out[k, j, i] = _pixel_weight(xmin_e + i * dx, pymin, dx, dy, r, r_in,
                                             pixel_radius, bounds, method, nsub)


@njit(parallel=True)
def _annulus_gather_kernel(data, excluded, x, y, r_in, r_out, vals, counts):
    ny_img, nx_img = data.shape
    use_mask = excluded.shape[0] > 0
    for k in prange(x.size):
        ixmin, iymin, nx, ny, xmin_e, ymin_e, dx, dy = _source_grid(x[k], y[k], r_out)
        pixel_radius = 0.5 * math.sqrt(dx * dx + dy * dy)
        m = 0
        for j in range(max(0, -iymin), min(ny, ny_img - iymin)):
            pymin = ymin_e + j * dy
            bounds = _row_bounds(pymin + dy * 0.5, r_out, r_in, pixel_radius)
            for i in range(max(0, -ixmin), min(nx, nx_img - ixmin)):
                w = _pixel_weight(xmin_e + i * dx, pymin, dx, dy, r_out, r_in, pixel_radius,
                                  bounds, 1, 1)
                if w <= 0.0 or (use_mask and excluded[iymin + j, ixmin + i]):
                    continue
                v = data[iymin + j, ixmin + i]
                if math.isfinite(v):
                    vals[k, m] = v
                    m += 1
        counts[k] = m


def annulus_values_compiled(data, excluded, x, y, r_in, r_out):
    """Centre-rule annulus pixel values of each source, packed to the left of ``(n, m)`` rows.

    Excluded and non-finite pixels are skipped. Returns ``(values, counts)``: row ``k`` holds
    ``counts[k]`` values (row-major pixel order) followed by zeros.
    """
    side = 2 * int(math.ceil(r_out)) + 2
    vals = np.zeros((x.size, side * side))
    counts = np.zeros(x.size, dtype=np.int64)
    _annulus_gather_kernel(
        np.ascontiguousarray(data, dtype=float),
        np.zeros((0, 0), dtype=bool) if excluded is None else np.ascontiguousarray(excluded),
        np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(y, dtype=float),
        float(r_in), float(r_out), vals, counts,
    )
    return vals[:, : max(int(counts.max(initial=0)), 1)], counts


def circle_sums_compiled(data, error, excluded, x, y, r, r_in, method, subpixels):
    """Compiled equivalent of the stamp-based sums (requires numba).

    Returns ``(sums, errs, nonfinite)``; ``errs`` is None when ``error`` is None and
    ``nonfinite`` counts the skipped non-finite data pixels.
    """
    n = x.size
    sums = np.empty(n)
    errs = np.empty(n)
    nonfinite = _circle_sums_kernel(
        np.ascontiguousarray(data, dtype=float),
        np.zeros((0, 0), dtype=bool) if excluded is None else np.ascontiguousarray(excluded),
        np.zeros((0, 0)) if error is None else np.ascontiguousarray(error, dtype=float),
        np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(y, dtype=float),
        float(r), -1.0 if r_in is None else float(r_in), _METHOD_CODE[method],
        _nsub(method, subpixels), sums, errs,
    )
    return sums, (None if error is None else errs), int(nonfinite)
