"""Pixel sources of tiled tasks: cut-outs of in-memory planes, units, models in a cut's frame.

A tiled task reads its box from a *source*: an object with ``shape`` and ``cut(y0, y1, x0,
x1) -> (data, error, mask)`` in whole-image pixel indices (:class:`ArrayPlanes` for arrays,
:class:`crowdphot.io.fits.FitsPlanes` for a memory-mapped file). Shared by the tiled fit, the
tiled artificial-star tests, the tiled multi-exposure fit and the tiled significance cut.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ArrayPlanes", "SkyPlanes", "make_source", "shift_model", "with_unit"]


class ArrayPlanes:
    """In-memory planes (or a cut-out of them) with the ``cut`` interface of ``FitsPlanes``."""

    def __init__(self, data, mask=None, error=None, origin=(0, 0), shape=None):
        self.data, self.mask, self.error = data, mask, error
        self.origin = origin
        self.shape = data.shape if shape is None else shape

    def cut(self, y0, y1, x0, x1):
        """``(data, error, mask)`` of ``[y0:y1, x0:x1]`` in full-image pixel indices."""
        oy, ox = self.origin
        if y0 < oy or x0 < ox or y1 - oy > self.data.shape[0] or x1 - ox > self.data.shape[1]:
            raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is not inside the piece held "
                             f"(origin {self.origin}, shape {self.data.shape})")
        sl = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
        return tuple(None if a is None else np.asarray(a[sl])
                     for a in (self.data, self.error, self.mask))

    def sub(self, box):
        """A picklable piece holding only ``box`` (what one remote task needs)."""
        y0, y1, x0, x1 = box
        data, error, mask = self.cut(y0, y1, x0, x1)
        return ArrayPlanes(np.ascontiguousarray(data), mask, error, origin=(y0, x0),
                            shape=self.shape)


class SkyPlanes:
    """A source together with the sky map of its image (or a piece of that map).

    ``cut`` is the source's; :meth:`sky` cuts the map. On Dask, :meth:`sub` keeps only a
    task's box of the map (and of in-memory planes; a file source stays a path).
    """

    def __init__(self, source, sky, origin=(0, 0)):
        self.source, self.plane, self.origin = source, sky, origin
        self.shape = source.shape

    def cut(self, y0, y1, x0, x1):
        """``(data, error, mask)`` of ``[y0:y1, x0:x1]``, from the source."""
        return self.source.cut(y0, y1, x0, x1)

    def sky(self, y0, y1, x0, x1):
        """The sky map over ``[y0:y1, x0:x1]`` (full-image indices): a float64 copy."""
        oy, ox = self.origin
        if y0 < oy or x0 < ox or y1 - oy > self.plane.shape[0] or x1 - ox > self.plane.shape[1]:
            raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is not inside the sky piece held "
                             f"(origin {self.origin}, shape {self.plane.shape})")
        return np.array(self.plane[y0 - oy:y1 - oy, x0 - ox:x1 - ox], dtype=float, order="C")

    def sub(self, box):
        """A picklable piece holding only ``box`` of the map (and of in-memory planes)."""
        src = self.source.sub(box) if hasattr(self.source, "sub") else self.source
        return SkyPlanes(src, self.sky(*box), origin=(box[0], box[2]))


def with_unit(value, unit):
    """``value`` as a Quantity in ``unit`` (unchanged without a unit)."""
    if unit is None or value is None:
        return value
    import astropy.units as u

    return u.Quantity(value, unit, copy=False)


def shift_model(psf_model, x0, y0):
    """The model as seen from a cut starting at pixel ``(y0, x0)``.

    Translation-invariant models are returned as they are. A PSF grid is copied with its ePSF
    positions moved by ``(-x0, -y0)`` and absolute bounds on the position parameters are moved
    likewise, so the cut's fit uses the same PSF and limits as the whole-image fit.
    """
    from crowdphot.psf._inputs import model_main_params

    if x0 == 0 and y0 == 0:
        return psf_model
    xname, yname, _ = model_main_params(psf_model)
    bounds = {name: getattr(psf_model, name).bounds for name in (xname, yname)}
    has_bounds = any(b is not None for pair in bounds.values() for b in pair)
    grid = getattr(psf_model, "_grid_xypos", None)
    if grid is None and not has_bounds:
        return psf_model
    model = psf_model.copy()
    if grid is not None:
        # GriddedPSFModel interpolates its ePSFs by absolute position
        model._grid_xypos = np.asarray(grid, dtype=float) - [x0, y0]
        model._xgrid = np.asarray(model._xgrid, dtype=float) - x0
        model._ygrid = np.asarray(model._ygrid, dtype=float) - y0
    for name, off in ((xname, x0), (yname, y0)):
        lo, hi = bounds[name]
        getattr(model, name).bounds = (None if lo is None else lo - off,
                                       None if hi is None else hi - off)
    return model



def make_source(data, mask, error):
    """``(source, unit)`` of ``photometry_tiled``'s ``data``: a FITS path, a FitsPlanes, or
    in-memory planes (checked as PSFPhotometry checks them)."""
    from crowdphot.psf._inputs import coerce_inputs

    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        if mask is not None or error is not None:
            raise ValueError("mask and error cannot be given with a FITS path (the file's DQ "
                             "and ERR extensions are used)")
        from crowdphot.io.fits import FitsPlanes

        return FitsPlanes(data), None
    if hasattr(data, "cut") and hasattr(data, "shape"):
        if mask is not None or error is not None:
            raise ValueError("mask and error cannot be given with a FitsPlanes source")
        return data, None
    from crowdphot.core.validate import check_data_mask_error

    data, mask, error, unit = coerce_inputs(data, mask, error)
    # bad errors (0, NaN) only matter on fitted pixels: each tile's fit checks its stamps
    arr, mask, error = check_data_mask_error(data, mask, error, stacklevel=5, defer_error=True)
    return ArrayPlanes(arr, mask, error), unit

