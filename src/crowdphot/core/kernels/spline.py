"""Bicubic interpolating-spline kernels shared by `ImagePSF` and `GriddedPSFModel`.

An ePSF array of shape ``(NY, NX)`` sampled at integer positions is represented by the same
tensor-product cubic B-spline that ``scipy.interpolate.RectBivariateSpline(kx=3, ky=3, s=0)``
builds (FITPACK's interpolating spline with "not-a-knot" knots ``0, 0, 0, 0, 2, 3, ..., n-3,
n-1, n-1, n-1, n-1``). We take its coefficients from scipy once per ePSF and evaluate the spline
ourselves, which is what makes batched evaluation fast:

* the coefficient array ``C`` has the same shape as the ePSF (``[y, x]`` order here);
* on knot interval ``m`` the four non-zero basis functions are cubic polynomials, tabulated once
  per axis length as ``M[m, k, p]`` (coefficient of ``u**p`` of basis ``m + k``, with
  ``u = x - start[m]``), so a basis evaluation is a table lookup plus Horner's rule;
* the spline is linear in its coefficients, so blending the four nearest ePSFs of a grid with
  bilinear weights equals evaluating once with the blended coefficients.

Sample coordinates outside ``[0, n - 1]`` are either replaced by ``fill`` (with zero gradient)
or, when ``clamp`` is set, clamped to the edge as FITPACK does (``fill_value=None``).

Everything here is unchecked; the model classes validate their inputs.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import BSpline, RectBivariateSpline

from crowdphot.core.jit import HAVE_NUMBA, njit, use_numba

if HAVE_NUMBA:  # pragma: no branch - depends on the environment
    from numba import prange
else:  # pragma: no cover
    prange = range

__all__ = ["SplineStack", "spline_coefficients", "basis_table", "knots"]

# Peak temporary size of the numpy fallback (gathered coefficients), in float64 elements.
_CHUNK_ELEMENTS = 1 << 21


def spline_coefficients(image):
    """Coefficients ``(ny, nx)`` of the bicubic interpolating spline of ``image``, ``[y, x]``.

    Examples
    --------
    >>> c = spline_coefficients(np.ones((5, 6)))
    >>> c.shape, bool(np.allclose(c, 1.0))
    ((5, 6), True)
    """
    ny, nx = image.shape
    # RectBivariateSpline takes (x, y) axis order; its knots are those of basis_table
    spline = RectBivariateSpline(np.arange(nx), np.arange(ny), np.asarray(image).T,
                                 kx=3, ky=3, s=0)
    coeffs = spline.tck[2].reshape(nx, ny)
    return np.ascontiguousarray(coeffs.T, dtype=float)


def knots(n):
    """FITPACK's interpolating cubic knot vector for samples ``0 .. n - 1`` (length ``n + 4``).

    Examples
    --------
    >>> knots(6)
    array([0., 0., 0., 0., 2., 3., 5., 5., 5., 5.])
    """
    return np.concatenate([np.zeros(4), np.arange(2.0, n - 2), np.full(4, n - 1.0)])


def basis_table(n):
    """Per-interval polynomial coefficients of the cubic basis for ``n`` samples.

    Returns
    -------
    table : ndarray of shape (n - 3, 4, 4)
        ``table[m, k, p]`` multiplies ``u**p`` in basis function ``m + k`` on interval ``m``.
    starts : ndarray of shape (n - 3,)
        Left end of each knot interval (``u = x - starts[m]``).

    Examples
    --------
    >>> table, starts = basis_table(10)
    >>> table.shape, starts[:3]
    ((7, 4, 4), array([0., 2., 3.]))
    """
    t = knots(n)
    starts = np.concatenate([[0.0], np.arange(2.0, n - 2)])
    nint = n - 3
    # all n basis functions at once: a spline whose coefficient vectors are the unit vectors
    basis = BSpline(t, np.eye(n), 3)
    table = np.empty((nint, 4, 4))
    rows = np.arange(nint)
    for p in range(4):
        derivs = basis(starts, nu=p)  # (nint, n); evaluated on the interval to the right
        for k in range(4):
            table[:, k, p] = derivs[rows, rows + k] / math.factorial(p)
    return table, starts


class SplineStack:
    """Immutable spline representation of a stack of ePSFs of equal shape.

    Parameters
    ----------
    images : ndarray of shape (g, ny, nx)
        The (oversampled) ePSF arrays; each axis must have at least 4 samples.

    Examples
    --------
    >>> stack = SplineStack(np.arange(50.0).reshape(2, 5, 5))
    >>> one = np.zeros((1, 1), dtype=int), np.ones((1, 1))
    >>> stack.points(np.array([1.5]), np.array([2.0]), np.array([0]), *one)  # 5 y + x
    array([11.5])
    """

    def __init__(self, images):
        images = np.asarray(images)
        self.shape = images.shape[1:]
        self.coeffs = np.ascontiguousarray(
            np.stack([spline_coefficients(img) for img in images]))
        self.table_y, self.starts_y = basis_table(self.shape[0])
        self.table_x, self.starts_x = basis_table(self.shape[1])

    # -- arbitrary points ---------------------------------------------------------------------
    def points(self, xi, yi, star, gidx, gw, gdx=None, gdy=None, *, ox=1.0, oy=1.0,
               fill=0.0, clamp=False):
        """Blended spline values (and optional position gradients) at flat sample coordinates.

        Parameters
        ----------
        xi, yi : ndarray of shape (p,)
            Sample (oversampled-pixel) coordinates of each point.
        star : ndarray of int, shape (p,)
            Row of ``gidx``/``gw`` that each point uses.
        gidx : ndarray of int, shape (n, k)
            ePSF indices blended for each star.
        gw, gdx, gdy : ndarray of shape (n, k)
            Blend weights and their derivatives with respect to ``x0`` and ``y0``. With
            ``gdx`` given, the gradient with respect to the star position (``xi`` decreasing
            at rate ``ox`` per unit ``x0``) is returned as well.

        Returns
        -------
        values : ndarray of shape (p,), or ``(values, dx0, dy0)``
        """
        grad = gdx is not None
        if not grad:
            gdx = gdy = gw
        args = (self.coeffs, self.table_x, self.starts_x, self.table_y, self.starts_y,
                np.ascontiguousarray(xi, dtype=float), np.ascontiguousarray(yi, dtype=float),
                np.ascontiguousarray(star, dtype=np.int64),
                np.ascontiguousarray(gidx, dtype=np.int64), np.ascontiguousarray(gw, float),
                np.ascontiguousarray(gdx, float), np.ascontiguousarray(gdy, float),
                float(ox), float(oy), float(fill), bool(clamp), grad)
        if use_numba():
            out = np.empty((3 if grad else 1, len(args[5])))
            _points_nb(*args, out)
        else:
            out = _points_np(*args)
        return tuple(out) if grad else out[0]

    # -- regular stamps -----------------------------------------------------------------------
    def stamps(self, x0, y0, xlo, ylo, shape, gidx, gw, gdx=None, gdy=None, *, ox=1, oy=1,
               orx=0.0, ory=0.0, fill=0.0, clamp=False):
        """Blended spline values on pixel stamps (``(n, ny, nx)``; see `points`).

        Star ``i`` is sampled at pixels ``x = xlo[i] + arange(nx)`` mapped to sample coordinates
        ``ox * (x - x0[i]) + orx`` (and likewise in y).
        """
        grad = gdx is not None
        ny, nx = (int(v) for v in shape)
        n = len(x0)
        x0 = np.ascontiguousarray(x0, dtype=float)
        y0 = np.ascontiguousarray(y0, dtype=float)
        xlo = np.ascontiguousarray(xlo, dtype=np.int64)
        ylo = np.ascontiguousarray(ylo, dtype=np.int64)
        gidx = np.ascontiguousarray(gidx, dtype=np.int64)
        gw = np.ascontiguousarray(gw, dtype=float)
        if n == 0:
            empty = np.empty((0, ny, nx))
            return (empty, empty.copy(), empty.copy()) if grad else empty
        if not use_numba():
            return _stamps_np(self.coeffs, self.table_x, self.starts_x, self.table_y,
                              self.starts_y, float(ox), float(oy), float(orx), float(ory), x0,
                              y0, xlo, ylo, gidx, gw, gdx, gdy, (ny, nx), float(fill),
                              bool(clamp))
        common = (self.coeffs, self.table_x, self.starts_x, self.table_y, self.starts_y,
                  float(ox), float(oy), float(orx), float(ory), x0, y0, xlo, ylo, gidx, gw)
        # stars per parallel task: enough tasks to balance the threads; stars sorted by grid
        # cell so that the stars of a task share the coefficient rows they read
        threads = _n_threads()
        chunk = int(min(64, max(1, n // (8 * threads))))
        order = (np.argsort(gidx[:, 0], kind="stable") if gidx.shape[1] > 1 and chunk > 1
                 else np.arange(n))
        if not grad:
            out = np.empty((n, ny, nx))
            _stamps_nb(*common, float(fill), bool(clamp), order, chunk, out)
            return out
        out = np.empty((3, n, ny, nx))
        _stamps_grad_nb(*common, np.ascontiguousarray(gdx, dtype=float),
                        np.ascontiguousarray(gdy, dtype=float), float(fill), bool(clamp), order,
                        chunk, out)
        return out[0], out[1], out[2]


def _n_threads():
    import numba

    return numba.get_num_threads()


# ------------------------------------------------------------------------------------------------
# numpy fallback
# ------------------------------------------------------------------------------------------------
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


def _points_np(coeffs, tx, sx, ty, sy, xi, yi, star, gidx, gw, gdx, gdy, ox, oy, fill,
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


def _stamps_np(coeffs, tx, sx, ty, sy, ox, oy, orx, ory, x0, y0, xlo, ylo, gidx, gw, gdx, gdy,
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


# ------------------------------------------------------------------------------------------------
# numba kernels
# ------------------------------------------------------------------------------------------------
@njit
def _basis_nb(x, table, starts, n, clamp):
    """Scalar version of `_basis_np`: (m, w0..w3, d0..d3, valid)."""
    valid = x >= 0.0 and x <= n - 1.0
    if not valid:
        x = min(max(x, 0.0), n - 1.0)
        if not x == x:  # NaN
            x = 0.0
    m = int(math.floor(x)) - 1
    if m < 0:
        m = 0
    elif m > n - 4:
        m = n - 4
    u = x - starts[m]
    w0 = ((table[m, 0, 3] * u + table[m, 0, 2]) * u + table[m, 0, 1]) * u + table[m, 0, 0]
    w1 = ((table[m, 1, 3] * u + table[m, 1, 2]) * u + table[m, 1, 1]) * u + table[m, 1, 0]
    w2 = ((table[m, 2, 3] * u + table[m, 2, 2]) * u + table[m, 2, 1]) * u + table[m, 2, 0]
    w3 = ((table[m, 3, 3] * u + table[m, 3, 2]) * u + table[m, 3, 1]) * u + table[m, 3, 0]
    if valid:
        d0 = (3.0 * table[m, 0, 3] * u + 2.0 * table[m, 0, 2]) * u + table[m, 0, 1]
        d1 = (3.0 * table[m, 1, 3] * u + 2.0 * table[m, 1, 2]) * u + table[m, 1, 1]
        d2 = (3.0 * table[m, 2, 3] * u + 2.0 * table[m, 2, 2]) * u + table[m, 2, 1]
        d3 = (3.0 * table[m, 3, 3] * u + 2.0 * table[m, 3, 2]) * u + table[m, 3, 1]
    else:
        d0 = d1 = d2 = d3 = 0.0
    return m, w0, w1, w2, w3, d0, d1, d2, d3, valid or clamp


@njit(parallel=True)
def _points_nb(coeffs, tx, sx, ty, sy, xi, yi, star, gidx, gw, gdx, gdy, ox, oy, fill, clamp,
               grad, out):
    ny = coeffs.shape[1]
    nx = coeffs.shape[2]
    nk = gidx.shape[1]
    for p in prange(len(xi)):
        mx, wx0, wx1, wx2, wx3, dx0, dx1, dx2, dx3, okx = _basis_nb(xi[p], tx, sx, nx, clamp)
        my, wy0, wy1, wy2, wy3, dy0, dy1, dy2, dy3, oky = _basis_nb(yi[p], ty, sy, ny, clamp)
        if not (okx and oky):
            out[0, p] = fill
            if grad:
                out[1, p] = 0.0
                out[2, p] = 0.0
            continue
        s = star[p]
        val = 0.0
        gx = 0.0
        gy = 0.0
        for k in range(nk):
            c = coeffs[gidx[s, k]]
            sv = 0.0
            sxd = 0.0
            syd = 0.0
            for a in range(4):
                row = c[my + a]
                r = (wx0 * row[mx] + wx1 * row[mx + 1] + wx2 * row[mx + 2]
                     + wx3 * row[mx + 3])
                wa = wy0 if a == 0 else (wy1 if a == 1 else (wy2 if a == 2 else wy3))
                sv += wa * r
                if grad:
                    da = dy0 if a == 0 else (dy1 if a == 1 else (dy2 if a == 2 else dy3))
                    syd += da * r
                    sxd += wa * (dx0 * row[mx] + dx1 * row[mx + 1] + dx2 * row[mx + 2]
                                 + dx3 * row[mx + 3])
            val += gw[s, k] * sv
            if grad:
                gx += gdx[s, k] * sv - ox * gw[s, k] * sxd
                gy += gdy[s, k] * sv - oy * gw[s, k] * syd
        out[0, p] = val
        if grad:
            out[1, p] = gx
            out[2, p] = gy


@njit
def _chunk_basis(order, i0, m, x0, y0, xlo, ylo, ox, oy, orx, ory, tx, sx, ty, sy, cnx, cny,
                 clamp, mx, wx, dwx, okx, my, wy, dwy, oky):
    """Basis of every stamp column and row of the ``m`` stars ``order[i0:i0 + m]``."""
    # written element by element: passing per-star array views to a helper costs more than
    # the basis evaluations themselves for small stamps
    for t in range(m):
        i = order[i0 + t]
        for c in range(mx.shape[1]):
            xi = ox * ((xlo[i] + c) - x0[i]) + orx
            (mx[t, c], wx[t, c, 0], wx[t, c, 1], wx[t, c, 2], wx[t, c, 3], dwx[t, c, 0],
             dwx[t, c, 1], dwx[t, c, 2], dwx[t, c, 3], okx[t, c]) = _basis_nb(xi, tx, sx, cnx,
                                                                               clamp)
        for r in range(my.shape[1]):
            yi = oy * ((ylo[i] + r) - y0[i]) + ory
            (my[t, r], wy[t, r, 0], wy[t, r, 1], wy[t, r, 2], wy[t, r, 3], dwy[t, r, 0],
             dwy[t, r, 1], dwy[t, r, 2], dwy[t, r, 3], oky[t, r]) = _basis_nb(yi, ty, sy, cny,
                                                                               clamp)


@njit(parallel=True, fastmath={"contract"})
def _stamps_nb(coeffs, tx, sx, ty, sy, ox, oy, orx, ory, x0, y0, xlo, ylo, gidx, gw, fill,
               clamp, order, chunk, out):
    n, ny, nx = out.shape
    nk = gidx.shape[1]
    cny = coeffs.shape[1]
    cnx = coeffs.shape[2]
    for ch in prange((n + chunk - 1) // chunk):
        i0 = ch * chunk
        m = min(n, i0 + chunk) - i0
        mx = np.empty((m, nx), np.int64)
        wx = np.empty((m, nx, 4))
        dwx = np.empty((m, nx, 4))
        okx = np.empty((m, nx), np.bool_)
        my = np.empty((m, ny), np.int64)
        wy = np.empty((m, ny, 4))
        dwy = np.empty((m, ny, 4))
        oky = np.empty((m, ny), np.bool_)
        v = np.empty(cnx)
        _chunk_basis(order, i0, m, x0, y0, xlo, ylo, ox, oy, orx, ory, tx, sx, ty, sy, cnx, cny,
                     clamp, mx, wx, dwx, okx, my, wy, dwy, oky)
        # output rows outermost: the stars of a chunk (sorted by grid cell) then reuse the same
        # few coefficient rows from cache instead of each streaming whole ePSFs from memory
        for r in range(ny):
            for t in range(m):
                i = order[i0 + t]
                if not oky[t, r]:
                    out[i, r, :] = fill
                    continue
                lo = mx[t, 0]
                span = mx[t, nx - 1] + 4 - lo
                for q in range(span):
                    v[q] = 0.0
                # y pass: blend the 4 coefficient rows of each ePSF over the contiguous span
                # the stamp needs (SIMD-friendly), then 4 taps per pixel in x
                j = my[t, r]
                for k in range(nk):
                    gk = gw[i, k]
                    if gk == 0.0:
                        continue
                    c0 = wy[t, r, 0] * gk
                    c1 = wy[t, r, 1] * gk
                    c2 = wy[t, r, 2] * gk
                    c3 = wy[t, r, 3] * gk
                    g = gidx[i, k]
                    # unsigned column indices skip numba's negative-index wraparound, so the
                    # loop compiles to contiguous vector loads rather than gathers
                    ulo = np.uint64(lo)
                    for q in range(span):
                        uq = ulo + np.uint64(q)
                        v[q] += (c0 * coeffs[g, j, uq] + c1 * coeffs[g, j + 1, uq]
                                 + c2 * coeffs[g, j + 2, uq] + c3 * coeffs[g, j + 3, uq])
                for c in range(nx):
                    if okx[t, c]:
                        q = mx[t, c] - lo
                        out[i, r, c] = (wx[t, c, 0] * v[q] + wx[t, c, 1] * v[q + 1]
                                        + wx[t, c, 2] * v[q + 2] + wx[t, c, 3] * v[q + 3])
                    else:
                        out[i, r, c] = fill


@njit(parallel=True, fastmath={"contract"})
def _stamps_grad_nb(coeffs, tx, sx, ty, sy, ox, oy, orx, ory, x0, y0, xlo, ylo, gidx, gw, gdx,
                    gdy, fill, clamp, order, chunk, out):
    n = out.shape[1]
    ny = out.shape[2]
    nx = out.shape[3]
    nk = gidx.shape[1]
    cny = coeffs.shape[1]
    cnx = coeffs.shape[2]
    for ch in prange((n + chunk - 1) // chunk):
        i0 = ch * chunk
        m = min(n, i0 + chunk) - i0
        mx = np.empty((m, nx), np.int64)
        wx = np.empty((m, nx, 4))
        dwx = np.empty((m, nx, 4))
        okx = np.empty((m, nx), np.bool_)
        my = np.empty((m, ny), np.int64)
        wy = np.empty((m, ny, 4))
        dwy = np.empty((m, ny, 4))
        oky = np.empty((m, ny), np.bool_)
        v = np.empty(cnx)
        vgx = np.empty(cnx)
        vy = np.empty(cnx)
        _chunk_basis(order, i0, m, x0, y0, xlo, ylo, ox, oy, orx, ory, tx, sx, ty, sy, cnx, cny,
                     clamp, mx, wx, dwx, okx, my, wy, dwy, oky)
        for r in range(ny):
            for t in range(m):
                i = order[i0 + t]
                if not oky[t, r]:
                    out[0, i, r, :] = fill
                    out[1, i, r, :] = 0.0
                    out[2, i, r, :] = 0.0
                    continue
                lo = mx[t, 0]
                span = mx[t, nx - 1] + 4 - lo
                for q in range(span):
                    v[q] = 0.0
                    vgx[q] = 0.0
                    vy[q] = 0.0
                j = my[t, r]
                for k in range(nk):
                    # value = wx.(sum wy gw C); d/dx0 = -ox dwx.(v) + wx.(sum wy gdx C);
                    # d/dy0 = wx.(sum (wy gdy - oy dwy gw) C)
                    gk = gw[i, k]
                    xk = gdx[i, k]
                    yk = gdy[i, k]
                    if gk == 0.0 and xk == 0.0 and yk == 0.0:
                        continue
                    v0 = wy[t, r, 0] * gk
                    v1 = wy[t, r, 1] * gk
                    v2 = wy[t, r, 2] * gk
                    v3 = wy[t, r, 3] * gk
                    x0_ = wy[t, r, 0] * xk
                    x1_ = wy[t, r, 1] * xk
                    x2_ = wy[t, r, 2] * xk
                    x3_ = wy[t, r, 3] * xk
                    y0_ = wy[t, r, 0] * yk - oy * dwy[t, r, 0] * gk
                    y1_ = wy[t, r, 1] * yk - oy * dwy[t, r, 1] * gk
                    y2_ = wy[t, r, 2] * yk - oy * dwy[t, r, 2] * gk
                    y3_ = wy[t, r, 3] * yk - oy * dwy[t, r, 3] * gk
                    g = gidx[i, k]
                    ulo = np.uint64(lo)  # unsigned: no wraparound checks, vector loads
                    for q in range(span):
                        uq = ulo + np.uint64(q)
                        a0 = coeffs[g, j, uq]
                        a1 = coeffs[g, j + 1, uq]
                        a2 = coeffs[g, j + 2, uq]
                        a3 = coeffs[g, j + 3, uq]
                        v[q] += v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3
                        vgx[q] += x0_ * a0 + x1_ * a1 + x2_ * a2 + x3_ * a3
                        vy[q] += y0_ * a0 + y1_ * a1 + y2_ * a2 + y3_ * a3
                for c in range(nx):
                    if okx[t, c]:
                        q = mx[t, c] - lo
                        out[0, i, r, c] = (wx[t, c, 0] * v[q] + wx[t, c, 1] * v[q + 1]
                                           + wx[t, c, 2] * v[q + 2] + wx[t, c, 3] * v[q + 3])
                        out[1, i, r, c] = (
                            wx[t, c, 0] * vgx[q] + wx[t, c, 1] * vgx[q + 1]
                            + wx[t, c, 2] * vgx[q + 2] + wx[t, c, 3] * vgx[q + 3]
                            - ox * (dwx[t, c, 0] * v[q] + dwx[t, c, 1] * v[q + 1]
                                    + dwx[t, c, 2] * v[q + 2] + dwx[t, c, 3] * v[q + 3]))
                        out[2, i, r, c] = (wx[t, c, 0] * vy[q] + wx[t, c, 1] * vy[q + 1]
                                           + wx[t, c, 2] * vy[q + 2] + wx[t, c, 3] * vy[q + 3])
                    else:
                        out[0, i, r, c] = fill
                        out[1, i, r, c] = 0.0
                        out[2, i, r, c] = 0.0
