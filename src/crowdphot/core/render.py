"""Batched rendering of many point sources into one image.

Every star contributes its PSF evaluated on a ``model_shape`` stamp placed with
``core.batched.stamp_origin`` (the placement of astropy's ``overlap_slices``), times its
flux, plus an optional per-star constant ``local_bkg`` over the same stamp. Stamp pixels that fall
outside the image are dropped; stars whose stamp misses the image entirely contribute nothing.

Stars are processed in chunks of ``k`` stamps ``(k, ny, nx)`` so that memory stays bounded, and the
chunk is scattered into the image in one call of a compiled kernel. There is no Python loop per
star, except in the last-resort path for models whose ``evaluate`` cannot broadcast over array
parameters.
"""

from __future__ import annotations

import numpy as np
from astropy.modeling import Model

from crowdphot.core.batched import BatchedPSFMixin, stamp_origin
from crowdphot.core.kernels.scatter import scatter_add
from crowdphot.core.validate import as_pair, check_positions

__all__ = ["render_image", "model_stamp_shape"]

#: Upper bound on the number of stamp pixels held in memory per chunk (float64: 16 MiB).
_CHUNK_PIXELS = 2**21


# -- stamp shape ---------------------------------------------------------------------------------
def model_stamp_shape(model, *, bbox_factor=None):
    """``(ny, nx)`` stamp shape from a model's bounding box: the ceiling of its extent.

    This is the default ``model_shape`` of photutils' image makers.

    Parameters
    ----------
    model : astropy 2D model
        A model with a ``bounding_box``.
    bbox_factor : float, optional
        Passed as ``factor`` to a bounding box that accepts one; ignored otherwise.

    Returns
    -------
    shape : tuple of 2 int

    Raises
    ------
    ValueError
        If the model has no bounding box.

    Examples
    --------
    >>> from astropy.modeling.models import Gaussian2D
    >>> model = Gaussian2D(x_stddev=1, y_stddev=2)
    >>> model_stamp_shape(model)
    (22, 11)
    """
    try:
        bbox = model.bounding_box
    except NotImplementedError as exc:
        raise ValueError(  # photutils' wording first
            "model_shape must be specified if the model does not have a bounding_box "
            "attribute (model_shape must be given because the model has no bounding_box)"
        ) from exc
    if bbox_factor is not None:
        try:
            bbox = model.bounding_box(factor=bbox_factor)
        except (NotImplementedError, TypeError):
            bbox = bbox.bounding_box()
    else:
        bbox = bbox.bounding_box()
    (ylo, yhi), (xlo, xhi) = bbox
    return (int(np.ceil(yhi - ylo)), int(np.ceil(xhi - xlo)))


# -- stamp sources -------------------------------------------------------------------------------
class _MixinStamps:
    """Unit stamps of a batched model; the flux is applied as the scatter weight."""

    def __init__(self, model, x0, y0, flux):
        self.model, self.x0, self.y0, self.flux = model, x0, y0, flux

    def __call__(self, sel, xlo, ylo, shape):
        stamps = self.model._stamps(self.x0[sel], self.y0[sel], xlo, ylo, shape)
        return stamps, self.flux[sel]


class _EvaluateStamps:
    """Full model values from ``model.evaluate`` with per-star parameters broadcast over stamps.

    ``per_star`` maps parameter name to an ``(n,)`` array; other parameters keep the model's value.
    Models whose ``evaluate`` does not broadcast fall back to one model call per star.
    """

    def __init__(self, model, per_star):
        self.model = model
        self.per_star = per_star
        self.fixed = {name: np.asarray(getattr(model, name).value) for name in model.param_names}
        self.broadcasts = True

    def __call__(self, sel, xlo, ylo, shape):
        k = len(sel)
        ny, nx = shape
        if self.broadcasts:
            xs = (xlo[:, None] + np.arange(nx)).astype(float)[:, None, :]
            ys = (ylo[:, None] + np.arange(ny)).astype(float)[:, :, None]
            args = [
                self.per_star[name][sel].reshape(k, 1, 1)
                if name in self.per_star
                else self.fixed[name]
                for name in self.model.param_names
            ]
            try:
                values = np.asarray(self.model.evaluate(xs, ys, *args), dtype=float)
                values = np.broadcast_to(values, (k, ny, nx))
            except (ValueError, TypeError, IndexError, AttributeError):
                self.broadcasts = False
            else:
                return values, np.ones(k)
        return self._per_star(sel, xlo, ylo, shape), np.ones(k)

    def _per_star(self, sel, xlo, ylo, shape):
        # last resort for models that only evaluate one parameter set at a time
        ny, nx = shape
        model = self.model.copy()
        out = np.empty((len(sel), ny, nx))
        yy, xx = np.mgrid[0:ny, 0:nx]
        for j, i in enumerate(sel):
            for name, values in self.per_star.items():
                setattr(model, name, values[i])
            out[j] = model(xx + xlo[j], yy + ylo[j])
        return out


# -- core ----------------------------------------------------------------------------------------
def _overlaps(img_shape, xlo, ylo, shape):
    """Stars whose stamp touches the image (astropy's ``NoOverlapError`` test)."""
    ny, nx = shape
    return (xlo + nx > 0) & (ylo + ny > 0) & (xlo < img_shape[1]) & (ylo < img_shape[0])


def _auto_chunk(shape):
    return max(1, _CHUNK_PIXELS // max(1, int(shape[0]) * int(shape[1])))


def _render_unchecked(out, stamp_fn, x0, y0, bkg, shape, *, index=None, chunk_size=None,
                      advance=None):
    """Render the stars ``index`` (default all) with stamps of ``shape`` into ``out`` in place.

    ``stamp_fn(sel, xlo, ylo, shape) -> (stamps (k, ny, nx), weights (k,))``. ``advance(m)``
    is called after each chunk with the number of stars handled.
    """
    if index is None:
        index = np.arange(len(x0))
    xlo, ylo = stamp_origin(x0[index], y0[index], shape)
    keep = _overlaps(out.shape, xlo, ylo, shape)
    skipped = int(len(index) - keep.sum())
    index, xlo, ylo = index[keep], xlo[keep], ylo[keep]
    if skipped and advance is not None:
        advance(skipped)
    chunk = chunk_size or _auto_chunk(shape)
    for start in range(0, len(index), chunk):
        part = slice(start, start + chunk)
        sel = index[part]
        stamps, weights = stamp_fn(sel, xlo[part], ylo[part], shape)
        scatter_add(out, stamps, weights, bkg[sel], xlo[part], ylo[part])
        if advance is not None:
            advance(len(sel))
    return out


def _progress_advance(progress, total, desc="Add model sources"):
    """Return ``(advance, close)`` callables for a ``progress`` option (None/bool/callable)."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        try:
            from ipywidgets import FloatProgress  # noqa: F401  (tqdm.auto needs it in notebooks)
            from tqdm.auto import tqdm
        except ImportError:
            from tqdm import tqdm
        bar = tqdm(total=total, desc=desc)
        return bar.update, bar.close
    if callable(progress):
        done = [0]

        def advance(m):
            done[0] += m
            progress(done[0], total)

        return advance, lambda: None
    raise TypeError(f"progress must be None, a bool or a callable, got {progress!r}")


def _check_model(name, model):
    if not isinstance(model, Model):
        raise TypeError(f"{name} must be an astropy Model instance, got {type(model).__name__}")
    if model.n_inputs != 2 or model.n_outputs != 1:
        raise ValueError(f"{name} must be a 2D model (2 inputs, 1 output)")


def _per_star(name, value, n):
    arr = np.asarray(getattr(value, "value", value), dtype=float)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != n):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got shape {arr.shape}")
    arr = np.broadcast_to(arr, (n,))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def render_image(shape, psf_model, x0, y0, flux, *, model_shape=None, local_bkg=None,
                 params=None, chunk_size=None, out=None, progress=None):
    """Render many point sources into an image in one batched pass.

    Each star adds ``flux * PSF`` evaluated at the pixel centres of a ``model_shape`` stamp
    centred on ``(x0, y0)`` (placement as astropy's ``overlap_slices``), plus ``local_bkg`` over
    the stamp. Stamp pixels outside the image are dropped and stars whose stamp does not overlap
    the image are skipped, as in photutils' ``make_model_image``.

    Parameters
    ----------
    shape : int or (ny, nx)
        Output image shape.
    psf_model : astropy 2D model
        A crowdphot PSF model (``BatchedPSFMixin``: fast path through its ``_stamps``) or any
        astropy 2D model with ``x_0``, ``y_0`` and ``flux`` parameters (generic path through a
        broadcast ``model.evaluate``).
    x0, y0 : array_like of shape (n,)
        Star positions in pixels.
    flux : float or array_like of shape (n,)
        Star fluxes.
    model_shape : int or (ny, nx), optional
        Stamp shape; by default the ceiling of the model's bounding-box extent.
    local_bkg : float or array_like of shape (n,), optional
        Constant added over each star's stamp (overlapping stamps add up).
    params : dict of str -> array_like of shape (n,), optional
        Per-star values of other model parameters (e.g. ``{'fwhm': ...}``); these force the
        generic path.
    chunk_size : int, optional
        Stars per chunk; by default about 2 million stamp pixels per chunk.
    out : ndarray of float64, shape (ny, nx), optional
        C-contiguous image to add into (in place); a new zero image by default.
    progress : bool or callable, optional
        True shows a tqdm bar ('Add model sources'); a callable is called as
        ``progress(n_done, n_total)`` after each chunk.

    Returns
    -------
    image : ndarray of float64, shape (ny, nx)
        ``out`` when given.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> img = render_image((32, 48), CircularGaussianPRF(fwhm=2.0),
    ...                    [10.2, 30.7], [12.0, 20.4], [100.0, 250.0], model_shape=11)
    >>> img.shape
    (32, 48)
    """
    img_shape = tuple(int(v) for v in as_pair("shape", shape, lower_bound=0))
    _check_model("psf_model", psf_model)
    x0, y0 = check_positions("x0/y0", x0, y0)
    n = len(x0)
    flux = _per_star("flux", flux, n)
    bkg = np.zeros(n) if local_bkg is None else _per_star("local_bkg", local_bkg, n)
    extra = {}
    for name, value in (params or {}).items():
        if name not in psf_model.param_names:
            raise ValueError(f"params: {name!r} is not a parameter of psf_model")
        extra[name] = _per_star(f"params[{name!r}]", value, n)
    if model_shape is None:
        if isinstance(psf_model, BatchedPSFMixin):
            stamp_shape = tuple(psf_model.default_stamp_shape)
        else:
            stamp_shape = model_stamp_shape(psf_model)
    else:
        stamp_shape = tuple(int(v) for v in as_pair("model_shape", model_shape, lower_bound=0))
    if chunk_size is not None and (
        not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if out is None:
        out = np.zeros(img_shape)
    else:
        if not isinstance(out, np.ndarray) or out.shape != img_shape or out.dtype != np.float64:
            raise ValueError(f"out must be a float64 ndarray of shape {img_shape}")
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("out must be C-contiguous and writeable")

    stamp_fn = _stamp_function(psf_model, x0, y0, flux, extra)
    advance, close = _progress_advance(progress, n)
    try:
        return _render_unchecked(out, stamp_fn, x0, y0, bkg, stamp_shape,
                                 chunk_size=chunk_size, advance=advance)
    finally:
        close()


def _stamp_function(model, x0, y0, flux, extra, *, x_name="x_0", y_name="y_0",
                    flux_name="flux"):
    """Pick the batched stamp source for ``model``: the mixin's kernels or a broadcast evaluate."""
    if isinstance(model, BatchedPSFMixin) and not extra and (x_name, y_name) == ("x_0", "y_0"):
        return _MixinStamps(model, x0, y0, flux)
    for name in (x_name, y_name):
        if name not in model.param_names:
            raise ValueError(f"psf_model has no parameter named {name!r}")
    per_star = dict(extra)
    per_star[x_name] = x0
    per_star[y_name] = y0
    if flux is not None:
        if flux_name not in model.param_names:
            raise ValueError(f"psf_model has no parameter named {flux_name!r}")
        per_star[flux_name] = flux
    return _EvaluateStamps(model, per_star)
