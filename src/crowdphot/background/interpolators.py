"""Resize a low-resolution background mesh to the image, as photutils 3's interpolators.

:class:`BkgZoomInterpolator` (the default, cubic spline) reproduces
``scipy.ndimage.zoom(mesh, box_size, order, mode, grid_mode=True)`` cropped to the image, but
separably: the spline coefficients of the small mesh are computed once
(``scipy.ndimage.spline_filter``), and the evaluation, which has ``order + 1`` non-zero weights
per output row and column, is two products with sparse one-dimensional weight matrices (the
weights are obtained from scipy's own 1-D evaluation of unit vectors, so boundary handling is
identical). The work is ``(order + 1) * ny * nx`` multiply-adds instead of
``(order + 1)**2`` per pixel through a generic n-D resampler.

:class:`BkgIDWInterpolator` does inverse-distance weighting from the good mesh centres with a
k-d tree (``scipy.spatial.cKDTree``).
"""

from __future__ import annotations

import functools

import numpy as np
from astropy.utils.exceptions import AstropyDeprecationWarning

from crowdphot.core.kernels.meshstats import sparse_rows

__all__ = ["BkgIDWInterpolator", "BkgZoomInterpolator", "idw_interpolate", "zoom_mesh"]

# boundary modes whose spline prefilter needs no padding and whose evaluation is separable and
# linear; others go through scipy.ndimage.zoom itself
_SEPARABLE_MODES = ("reflect", "mirror", "grid-mirror")


@functools.lru_cache(maxsize=32)
def _weights_1d(m, factor, n_out, order, mode):
    """Sparse ``(n_out, m)`` matrix of scipy's 1-D spline evaluation weights (no prefilter)."""
    from scipy import ndimage, sparse

    cols = []
    for k in range(m):
        unit = np.zeros(m)
        unit[k] = 1.0
        cols.append(ndimage.zoom(unit, factor, order=order, mode=mode, grid_mode=True,
                                 prefilter=False)[:n_out])
    return sparse.csr_matrix(np.column_stack(cols))


def zoom_mesh(mesh, box_size, shape, *, order=3, mode="reflect", cval=0.0, clip=None):
    """Spline-resize ``mesh`` by ``box_size`` and crop to ``shape`` (float64).

    Equal (to rounding) to ``scipy.ndimage.zoom(mesh, box_size, order=order, mode=mode,
    cval=cval, grid_mode=True)[:shape[0], :shape[1]]``.

    Parameters
    ----------
    mesh : ndarray of shape (my, mx)
        Low-resolution values (finite).
    box_size : (int, int)
        Zoom factors ``(by, bx)``.
    shape : (int, int)
        Output shape ``(ny, nx)``, at most ``(my * by, mx * bx)``.
    order : int, optional
        Spline order 0-5.
    mode : str, optional
        scipy.ndimage boundary mode.
    cval : float, optional
        Value outside the input for the constant modes.
    clip : (float, float), optional
        Clip the result to this range.

    Returns
    -------
    image : ndarray of float64, shape (ny, nx)

    Examples
    --------
    >>> zoom_mesh(np.array([[1.0, 2.0]]), (1, 2), (1, 4), order=1).round(3).tolist()
    [[1.0, 1.25, 1.75, 2.0]]
    """
    from scipy import ndimage

    mesh = np.asarray(mesh, dtype=float)
    by, bx = (int(v) for v in box_size)
    ny, nx = (int(v) for v in shape)
    if mode not in _SEPARABLE_MODES or order < 0 or order > 5:
        out = ndimage.zoom(mesh, (by, bx), order=order, mode=mode, cval=cval, grid_mode=True)
        out = np.ascontiguousarray(out[:ny, :nx], dtype=float)
        if clip is not None:
            np.clip(out, clip[0], clip[1], out=out)
        return out
    coeffs = (ndimage.spline_filter(mesh, order, output=np.float64, mode=mode)
              if order > 1 else mesh)
    wy = _weights_1d(mesh.shape[0], by, ny, order, mode)
    wx = _weights_1d(mesh.shape[1], bx, nx, order, mode)
    cols = np.ascontiguousarray((wx @ coeffs.T).T)  # (my, nx)
    return sparse_rows(wy, cols, clip)


def idw_interpolate(points, values, query, *, leafsize=10, n_neighbors=10, power=1.0,
                    regularization=0.0, conf_dist=1e-12, eps=0.0):
    """Shepard inverse-distance-weighted interpolation at ``query`` positions.

    Weights are ``1 / (d**power + regularization)`` over the ``n_neighbors`` nearest points;
    a query closer than ``conf_dist`` to a point takes that point's value (photutils'
    ``ShepardIDWInterpolator`` rule).

    Parameters
    ----------
    points : ndarray of shape (n, 2)
    values : ndarray of shape (n,)
    query : ndarray of shape (m, 2)

    Returns
    -------
    out : ndarray of shape (m,)

    Examples
    --------
    >>> idw_interpolate(np.array([[0.0, 0.0], [0.0, 2.0]]), np.array([1.0, 3.0]),
    ...                 np.array([[0.0, 1.0]])).tolist()
    [2.0]
    """
    from scipy.spatial import cKDTree

    values = np.asarray(values, dtype=float)
    tree = cKDTree(points, leafsize=leafsize)
    dist, idx = tree.query(query, k=n_neighbors, eps=eps)
    if n_neighbors == 1:
        return values[idx]
    valid = np.isfinite(dist)
    safe_d = np.where(valid, dist, 1.0)
    safe_i = np.where(valid, idx, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(valid, 1.0 / (safe_d ** power + regularization), 0.0)
        wsum = w.sum(axis=1)
        out = np.where(wsum > 0, (w * values[safe_i]).sum(axis=1) / wsum, np.nan)
    close = np.isfinite(dist[:, 0]) & (dist[:, 0] <= conf_dist)
    out[close] = values[idx[close, 0]]
    return out


class _BkgZoomInterpolator:
    """Spline (``scipy.ndimage.zoom``-equivalent) resizing of the mesh; see module docstring.

    Parameters
    ----------
    order : int, optional
        Spline order 0-5 (default 3, bicubic).
    mode : {'reflect', 'constant', 'nearest', 'wrap'}, optional
        Boundary handling (default 'reflect').
    cval : float, optional
        Value outside the mesh for ``mode='constant'``.
    clip : bool, optional
        Clip the result to the mesh's range (default True).
    """

    def __init__(self, *, order=3, mode="reflect", cval=0.0, clip=True):
        self.order = order
        self.mode = mode
        self.cval = cval
        self.clip = clip

    def __repr__(self):
        return (f"{type(self).__name__}(order={self.order!r}, mode={self.mode!r}, "
                f"cval={self.cval!r}, clip={self.clip!r})")

    def __call__(self, data, **kwargs):
        """Resize ``data`` (the mesh) to ``kwargs['shape']`` with zoom ``kwargs['box_size']``.

        Returns
        -------
        image : ndarray of shape ``kwargs['shape']`` and dtype ``kwargs['dtype']``
        """
        data = np.asanyarray(data)
        data = np.asarray(getattr(data, "value", data))
        dtype = kwargs.get("dtype", float)
        if np.ptp(data) == 0:
            return np.full(kwargs["shape"], np.min(data), dtype=dtype)
        bounds = (np.min(data), np.max(data)) if self.clip else None
        out = zoom_mesh(data, kwargs["box_size"], kwargs["shape"], order=self.order,
                        mode=self.mode, cval=self.cval, clip=bounds)
        return out.astype(dtype, copy=False)


def _deprecation(name, extra=""):
    import warnings

    warnings.warn(f"{name} is deprecated and will be removed in {extra}version 4.0.",
                  AstropyDeprecationWarning, stacklevel=3)


class BkgZoomInterpolator(_BkgZoomInterpolator):
    """Spline resizing of the background mesh (deprecated in photutils 3.0, as here).

    Parameters
    ----------
    order : int, optional
        Spline order 0-5 (default 3).
    mode : {'reflect', 'constant', 'nearest', 'wrap'}, optional
    cval : float, optional
    clip : bool, optional
        Clip the result to the mesh's range (default True).

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter('ignore')
    ...     interp = BkgZoomInterpolator(order=1)
    >>> interp(np.array([[1.0, 2.0]]), shape=(1, 4), box_size=(1, 2), dtype=float).tolist()
    [[1.0, 1.25, 1.75, 2.0]]
    """

    def __init__(self, *, order=3, mode="reflect", cval=0.0, clip=True):
        _deprecation("BkgZoomInterpolator")
        super().__init__(order=order, mode=mode, cval=cval, clip=clip)


class BkgIDWInterpolator:
    """Inverse-distance-weighted resizing of the background mesh (deprecated in photutils 3.0).

    Parameters
    ----------
    leafsize : float, optional
        k-d tree leaf size.
    n_neighbors : int, optional
        Nearest good mesh points used (default 10).
    power : float, optional
        Power of the inverse distance (default 1).
    regularization : float, optional
        Added to ``d**power`` (smoothness).

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter('ignore')
    ...     interp = BkgIDWInterpolator()
    >>> interp
    BkgIDWInterpolator(leafsize=10, n_neighbors=10, power=1.0, regularization=0.0)
    """

    def __init__(self, *, leafsize=10, n_neighbors=10, power=1.0, regularization=0.0):
        _deprecation("BkgIDWInterpolator", "a ")
        self.leafsize = leafsize
        self.n_neighbors = n_neighbors
        self.power = power
        self.regularization = regularization

    def __repr__(self):
        return (f"BkgIDWInterpolator(leafsize={self.leafsize!r}, "
                f"n_neighbors={self.n_neighbors!r}, power={self.power!r}, "
                f"regularization={self.regularization!r})")

    def __call__(self, data, **kwargs):
        """Resize ``data`` from the good mesh centres ``kwargs['mesh_yxcen']``.

        Returns
        -------
        image : ndarray of shape ``kwargs['shape']``
        """
        data = np.asanyarray(data)
        data = np.asarray(getattr(data, "value", data))
        shape = kwargs["shape"]
        if np.ptp(data) == 0:
            return np.full(shape, np.min(data), dtype=kwargs.get("dtype", float))
        yxcen = np.column_stack(kwargs["mesh_yxcen"])
        values = data[np.where(~kwargs["mesh_nan_mask"])]
        yi, xi = np.mgrid[0:shape[0], 0:shape[1]]
        query = np.column_stack((yi.ravel(), xi.ravel()))
        out = idw_interpolate(yxcen, values, query, leafsize=self.leafsize,
                              n_neighbors=self.n_neighbors, power=self.power,
                              regularization=self.regularization)
        return out.reshape(shape)
