"""Bicubic interpolating-spline kernels shared by `ImagePSF` and `GriddedPSFModel`.

An ePSF array of shape ``(NY, NX)`` sampled at integer positions is represented by the same
tensor-product cubic B-spline that ``scipy.interpolate.RectBivariateSpline(kx=3, ky=3, s=0)``
builds (FITPACK's interpolating spline with "not-a-knot" knots ``0, 0, 0, 0, 2, 3, ..., n-3,
n-1, n-1, n-1, n-1``). Its coefficients are computed once per ePSF stack (banded collocation
solves, no scipy) and the spline is evaluated by compiled kernels, which is what makes batched
evaluation fast:

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

import numpy as np

from crowdphot.core.jit import get_num_threads, native

__all__ = ["SplineStack", "spline_coefficients", "basis_table", "knots"]

def spline_coefficients(image):
    """Coefficients ``(ny, nx)`` of the bicubic interpolating spline of ``image``, ``[y, x]``.

    The same spline as ``scipy.interpolate.RectBivariateSpline(kx=3, ky=3, s=0)`` (FITPACK's
    knots, see `knots`), found by solving the banded collocation systems of both axes.

    Examples
    --------
    >>> c = spline_coefficients(np.ones((5, 6)))
    >>> c.shape, bool(np.allclose(c, 1.0))
    ((5, 6), True)
    """
    return _stack_coefficients(np.asarray(image, dtype=float)[None])[0]


def _collocation(n):
    """Collocation matrix ``A[i, j] = B_j(i)`` (n, n) of the ``n`` cubic basis functions."""
    table, starts = basis_table(n)
    i = np.arange(n)
    m = np.clip(i - 1, 0, n - 4)
    u = (i - starts[m])[:, None]
    p = table[m]  # (n, 4 basis, 4 powers)
    vals = ((p[..., 3] * u + p[..., 2]) * u + p[..., 1]) * u + p[..., 0]
    a = np.zeros((n, n))
    a[i[:, None], m[:, None] + np.arange(4)] = vals
    return a


def _stack_coefficients(images):
    """Spline coefficients of a stack ``(g, ny, nx)``: one banded solve per axis.

    The collocation matrices are totally positive, so the compiled solve eliminates without
    pivoting (de Boor); both solves run on whole rows (the x solve on the transposed stack).
    """
    g, ny, nx = images.shape
    coeffs = np.array(images, dtype=float, order="C")
    native.band_solve(_collocation(ny), coeffs)  # along y
    coeffs = np.ascontiguousarray(coeffs.transpose(0, 2, 1))
    native.band_solve(_collocation(nx), coeffs)  # along x
    return np.ascontiguousarray(coeffs.transpose(0, 2, 1))


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
    s = 3 + np.arange(nint)  # knot index of each interval's left end
    # Cox-de Boor recursion on polynomials in u = x - starts (coefficients of u**0..u**3):
    # basis[q] of degree p is B_{s - p + q, p}
    basis = [np.zeros((nint, 4))]
    basis[0][:, 0] = 1.0
    for p in range(1, 4):
        new = [np.zeros((nint, 4)) for _ in range(p + 1)]
        for r in range(p):
            j = s - p + 1 + r
            term = basis[r] / (t[j + p] - t[j])[:, None]
            # term * (t[j + p] - x) -> basis r;  term * (x - t[j]) -> basis r + 1
            shifted = np.zeros_like(term)
            shifted[:, 1:] = term[:, :-1]  # term * u
            new[r] += (t[j + p] - starts)[:, None] * term - shifted
            new[r + 1] += (starts - t[j])[:, None] * term + shifted
        basis = new
    return np.stack(basis, axis=1), starts


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
        self.coeffs = _stack_coefficients(np.asarray(images, dtype=float))
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
        gw = np.ascontiguousarray(gw, dtype=float)
        if not grad:
            gdx = gdy = gw
        xi = np.ascontiguousarray(xi, dtype=float)
        out = np.empty((3 if grad else 1, len(xi)))
        native.spline_points(
            self.coeffs, self.table_x, self.starts_x, self.table_y, self.starts_y,
            np.ascontiguousarray(gidx, dtype=np.int64), gw,
            np.ascontiguousarray(gdx, dtype=float), np.ascontiguousarray(gdy, dtype=float),
            xi, np.ascontiguousarray(yi, dtype=float), np.ascontiguousarray(star, dtype=np.int64),
            float(ox), float(oy), float(fill), bool(clamp), out)
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
        if n == 0 or ny == 0 or nx == 0:
            empty = np.empty((n, ny, nx))
            return (empty, empty.copy(), empty.copy()) if grad else empty
        # stars per parallel task: enough tasks to balance the threads; stars sorted by grid
        # cell so that the stars of a task share the coefficient rows they read
        chunk = int(min(64, max(1, n // (8 * get_num_threads()))))
        order = (np.argsort(gidx[:, 0], kind="stable") if gidx.shape[1] > 1 and chunk > 1
                 else np.arange(n))
        if not grad:
            gdx = gdy = gw
        out = np.empty((3 if grad else 1, n, ny, nx))
        native.spline_stamps(
            self.coeffs, self.table_x, self.starts_x, self.table_y, self.starts_y, gidx, gw,
            np.ascontiguousarray(gdx, dtype=float), np.ascontiguousarray(gdy, dtype=float),
            x0, y0, xlo, ylo, np.ascontiguousarray(order, dtype=np.int64), float(ox), float(oy),
            float(orx), float(ory), float(fill), bool(clamp), chunk, out)
        return (out[0], out[1], out[2]) if grad else out[0]
