"""The batched PSF contract shared by every crowdphot PSF model.

Pixel convention (written once, used everywhere): arrays are indexed ``[y, x]`` and the
coordinate ``(0.0, 0.0)`` is the centre of the first pixel, so pixel ``j`` spans
``[j - 0.5, j + 0.5]``.

Every model is an astropy ``Fittable2DModel`` with ``flux``, ``x_0`` and ``y_0`` parameters
(so ``model.x_0.fixed = True`` works as in photutils) and, in addition, implements the batched
interface below, which the renderer and the fitting engine call with the shape parameters
(fwhm, sigma, ...) frozen at their current values:

``_unit(x, y, x0, y0)``
    Unit-flux PSF values. ``x0, y0`` have shape ``(n,)``; ``x, y`` have a leading axis of
    length ``n`` (or 1) and broadcast together, e.g. ``(n, ny, 1)`` and ``(n, 1, nx)``.
    Returns an array of the broadcast shape.
``_unit_grad(x, y, x0, y0)``
    ``(values, d values / d x0, d values / d y0)``, each of the broadcast shape.
``_stamps(x0, y0, xlo, ylo, shape)`` / ``_stamps_grad(...)``
    The same on regular pixel stamps: star ``i`` is evaluated on pixels
    ``x = xlo[i] + arange(nx)``, ``y = ylo[i] + arange(ny)``; output ``(n, ny, nx)``.
    The default implementation calls ``_unit``; image models override it with fast kernels.

The underscored methods are unchecked; ``psf_stamps`` and ``psf_values`` are the checked public
versions.
"""

from __future__ import annotations

import numpy as np

from crowdphot.core.validate import as_pair, check_positions

__all__ = ["BatchedPSFMixin", "stamp_origin"]


def stamp_origin(x0, y0, shape):
    """Integer lower-left pixel of the ``shape`` stamp centred on each position.

    Same placement as astropy's ``overlap_slices`` (which photutils uses):
    ``xlo = ceil(x0 - nx / 2)``, so an odd stamp is centred on the pixel containing ``x0`` and
    an exact half-pixel position rounds down.

    Parameters
    ----------
    x0, y0 : ndarray of shape (n,)
    shape : (ny, nx) ints

    Returns
    -------
    xlo, ylo : ndarray of int64, shape (n,)

    Examples
    --------
    >>> stamp_origin(np.array([10.4]), np.array([3.6]), (5, 5))
    (array([8]), array([2]))
    """
    ny, nx = shape
    xlo = np.ceil(np.asarray(x0, dtype=float) - nx / 2).astype(np.int64)
    ylo = np.ceil(np.asarray(y0, dtype=float) - ny / 2).astype(np.int64)
    return xlo, ylo


class BatchedPSFMixin:
    """Batched unit-flux evaluation on many stars at once (see module docstring)."""

    #: True for models whose gradient is available analytically (all built-in models).
    has_batched_gradient = True

    # -- to be implemented by models -------------------------------------------------------
    def _unit(self, x, y, x0, y0):  # pragma: no cover - abstract
        raise NotImplementedError

    def _unit_grad(self, x, y, x0, y0):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- regular stamps ----------------------------------------------------------------------
    @staticmethod
    def _stamp_axes(x0, xlo, ylo, shape):
        ny, nx = shape
        xs = (xlo[:, None] + np.arange(nx)).astype(float)[:, None, :]
        ys = (ylo[:, None] + np.arange(ny)).astype(float)[:, :, None]
        return xs, ys

    def _stamps(self, x0, y0, xlo, ylo, shape):
        xs, ys = self._stamp_axes(x0, xlo, ylo, shape)
        return np.broadcast_to(self._unit(xs, ys, x0, y0), (len(x0), *shape))

    def _stamps_grad(self, x0, y0, xlo, ylo, shape):
        xs, ys = self._stamp_axes(x0, xlo, ylo, shape)
        out = self._unit_grad(xs, ys, x0, y0)
        return tuple(np.broadcast_to(a, (len(x0), *shape)) for a in out)

    # -- checked public versions -------------------------------------------------------------
    def psf_stamps(self, x0, y0, shape, *, xlo=None, ylo=None, gradient=False):
        """Unit-flux PSF stamps for many stars at once.

        Parameters
        ----------
        x0, y0 : array_like of shape (n,)
            Star positions in pixels.
        shape : int or (ny, nx)
            Stamp shape.
        xlo, ylo : array_like of int, shape (n,), optional
            Lower-left pixel of each stamp; by default the stamp is centred on the star.
        gradient : bool, optional
            Also return the derivatives with respect to ``x0`` and ``y0``.

        Returns
        -------
        values : ndarray of shape (n, ny, nx)
            Always returned; with ``gradient=True`` a tuple ``(values, dx0, dy0)`` of three
            such arrays is returned instead.

        Examples
        --------
        >>> from crowdphot import CircularGaussianPRF
        >>> stamps = CircularGaussianPRF(fwhm=2.5).psf_stamps([10.0, 20.2], [5.0, 7.5], 11)
        >>> stamps.shape
        (2, 11, 11)
        """
        x0, y0 = check_positions("x0/y0", x0, y0)
        shape = tuple(int(v) for v in as_pair("shape", shape, lower_bound=0))
        if xlo is None or ylo is None:
            xlo, ylo = stamp_origin(x0, y0, shape)
        else:
            xlo = np.asarray(xlo, dtype=np.int64).reshape(x0.shape)
            ylo = np.asarray(ylo, dtype=np.int64).reshape(x0.shape)
        if gradient:
            return self._stamps_grad(x0, y0, xlo, ylo, shape)
        return self._stamps(x0, y0, xlo, ylo, shape)

    def psf_values(self, x, y, x0, y0):
        """Unit-flux values at arbitrary points ``x, y`` of shape ``(n, ...)`` for ``n`` stars.

        Examples
        --------
        >>> from crowdphot import CircularGaussianPSF
        >>> v = CircularGaussianPSF(fwhm=2.0).psf_values(np.zeros((1, 3)), np.zeros((1, 3)),
        ...                                             [0.0], [0.0])
        >>> v.shape
        (1, 3)
        """
        x0, y0 = check_positions("x0/y0", x0, y0)
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if x.ndim < 1 or y.ndim < 1:
            raise ValueError("x and y must have a leading star axis of length n")
        return self._unit(x, y, x0, y0)

    @property
    def default_stamp_shape(self):
        """``(ny, nx)`` = ceil of the bounding-box extent, as photutils' ``model_shape``."""
        try:
            (ylo, yhi), (xlo, xhi) = self.bounding_box.bounding_box()
        except (NotImplementedError, AttributeError) as exc:
            raise ValueError("model has no bounding_box; give the stamp/model shape") from exc
        return (int(np.ceil(yhi - ylo)), int(np.ceil(xhi - xlo)))


def bcast_center(x0, ndim):
    """Reshape ``(n,)`` centres to broadcast against arrays of ``ndim`` dimensions."""
    x0 = np.asarray(x0, dtype=float)
    return x0.reshape(x0.shape + (1,) * (ndim - 1))
