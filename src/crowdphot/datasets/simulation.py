"""Simulated star fields with photutils 3's signatures, random draws and pixel values.

The random positions and parameters come from the same ``numpy.random.Generator`` calls in the
same order as photutils 3.0, so the same ``seed`` gives the same truth table (the PSF-photometry
notebook's ``seed=0`` scene included). Rendering goes through the batched
:func:`crowdphot.core.render.render_image` core instead of one model call per source.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.modeling import Model
from astropy.table import QTable, Table
from astropy.utils.exceptions import AstropyUserWarning

from crowdphot.core.batched import BatchedPSFMixin
from crowdphot.core.kernels.greedy import greedy_keep
from crowdphot.core.render import (
    _check_model,
    _EvaluateStamps,
    _MixinStamps,
    _progress_advance,
    _render_unchecked,
    model_stamp_shape,
)
from crowdphot.core.validate import CrowdphotWarning, as_pair, deprecated_positional

__all__ = [
    "SimulationWarning",
    "make_model_image",
    "make_model_params",
    "make_noise_image",
    "make_psf_model_image",
    "make_random_xycoords",
]


class SimulationWarning(CrowdphotWarning, AstropyUserWarning):
    """Fewer sources than requested could be placed (also an ``AstropyUserWarning``)."""


# -- random coordinates ------------------------------------------------------------------------
def _separate(xy, min_separation):
    """Drop points within ``min_separation`` (inclusive) of an earlier kept point (greedy)."""
    if min_separation <= 0 or len(xy) < 2:
        return xy
    from scipy.spatial import KDTree  # random coordinates only, not when rendering

    pairs = KDTree(xy).query_pairs(min_separation, output_type="ndarray")
    if len(pairs) == 0:
        return xy
    lo = np.minimum(pairs[:, 0], pairs[:, 1])
    hi = np.maximum(pairs[:, 0], pairs[:, 1])
    order = np.lexsort((hi, lo))
    first = np.ascontiguousarray(lo[order], dtype=np.int64)
    second = np.ascontiguousarray(hi[order], dtype=np.int64)
    return xy[greedy_keep(len(xy), first, second)]


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def _check_range(name, value):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from exc
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi:
        raise ValueError(f"{name} must be (min, max) with finite min < max, got {value!r}")
    return value[0], value[1]


def make_random_xycoords(size, x_range, y_range, *, min_separation=0.0, seed=None, oversample=10):
    """Uniform random ``(x, y)`` positions, optionally at least ``min_separation`` apart.

    With ``min_separation > 0``, ``size * oversample`` candidates are drawn and scanned in draw
    order, dropping every candidate within ``min_separation`` (inclusive) of an earlier kept one;
    the first ``size`` survivors are returned. Draws match photutils 3.0 for the same seed.

    Parameters
    ----------
    size : int
        Number of positions wanted.
    x_range, y_range : (min, max)
        Ranges of the uniform draws.
    min_separation : float, optional
        Minimum distance between returned positions.
    seed : int, numpy.random.Generator or None, optional
        Seed for ``numpy.random.default_rng`` (a Generator is used as is).
    oversample : int, optional
        Candidates drawn per wanted position when ``min_separation > 0``.

    Returns
    -------
    xy : ndarray of shape (m, 2)
        Columns ``x, y``; ``m < size`` (with a :class:`SimulationWarning`) when the separation
        cannot be met.

    Examples
    --------
    >>> xy = make_random_xycoords(3, (0, 100), (0, 50), min_separation=5, seed=0)
    >>> xy.shape
    (3, 2)
    """
    size = _check_count("size", size)
    if size == 0:
        return np.empty((0, 2))
    x_range = _check_range("x_range", x_range)
    y_range = _check_range("y_range", y_range)
    min_separation = float(min_separation)
    if not np.isfinite(min_separation) or min_separation < 0:
        raise ValueError(f"min_separation must be finite and >= 0, got {min_separation!r}")
    oversample = _check_count("oversample", oversample)
    if oversample < 1:
        raise ValueError("oversample must be >= 1")

    ncoords = size * oversample if min_separation > 0 else size
    rng = np.random.default_rng(seed)
    xc = rng.uniform(x_range[0], x_range[1], ncoords)
    yc = rng.uniform(y_range[0], y_range[1], ncoords)
    xy = _separate(np.column_stack((xc, yc)), min_separation)[:size]
    if len(xy) < size:
        warnings.warn(
            f"Unable to produce {size!r} coordinates within the given shape and minimum "
            f"separation ({min_separation:g}). Only {len(xy)} coordinates were generated.",
            SimulationWarning,
            stacklevel=2,
        )
    return xy


def make_model_params(shape, n_sources, *, x_name="x_0", y_name="y_0", min_separation=1,
                      border_size=(0, 0), seed=0, **kwargs):
    """Random source positions (and other parameters) in a table, as photutils 3.0.

    Parameters
    ----------
    shape : (ny, nx) ints
        Image shape.
    n_sources : int
        Number of sources wanted (fewer, with a warning, if ``min_separation`` cannot be met).
    x_name, y_name : str, optional
        Column names of the positions.
    min_separation : float, optional
        Minimum distance between source centres.
    border_size : int or (ny, nx), optional
        Width of the image border kept free of source centres.
    seed : int or None, optional
        Random seed; the positions are drawn first, then each ``kwargs`` range in order.
    **kwargs : (low, high)
        Uniform ranges of further columns, e.g. ``flux=(500, 20000)``.

    Returns
    -------
    table : astropy.table.QTable
        Columns ``id`` (1-based), ``x_name``, ``y_name`` and one per keyword; length ``m``.

    Examples
    --------
    >>> params = make_model_params((100, 100), 5, flux=(100, 500), min_separation=3,
    ...                            border_size=10, seed=0)
    >>> params.colnames
    ['id', 'x_0', 'y_0', 'flux']
    """
    shape = as_pair("shape", shape, lower_bound=0)
    n_sources = _check_count("n_sources", n_sources)
    border_size = as_pair("border_size", border_size, lower_bound=-1)
    xrange = (border_size[1], shape[1] - border_size[1])
    yrange = (border_size[0], shape[0] - border_size[0])
    if xrange[0] >= xrange[1] or yrange[0] >= yrange[1]:
        raise ValueError(f"border_size is too large for the given shape (border_size "
                         f"{tuple(int(v) for v in border_size)}, shape "
                         f"{tuple(int(v) for v in shape)})")
    ranges = {}
    for name, prange in kwargs.items():
        if isinstance(prange, (str, bytes)) or np.ndim(prange) != 1 or len(prange) != 2:
            raise ValueError(f"{name} must be a 2-tuple (low, high), got {prange!r}")
        low, high = (float(getattr(v, "value", v)) for v in prange)
        if not (np.isfinite(low) and np.isfinite(high)) or low > high:
            raise ValueError(f"{name} range must be finite with low <= high, got {prange!r}")
        ranges[name] = prange

    rng = np.random.default_rng(seed)
    xy = make_random_xycoords(n_sources, xrange, yrange, min_separation=min_separation, seed=rng)
    table = QTable()
    table["id"] = np.arange(len(xy)) + 1
    table[x_name] = xy[:, 0]
    table[y_name] = xy[:, 1]
    for name, (low, high) in ranges.items():
        table[name] = rng.uniform(low, high, len(table))
    return table


def _main_param_names(psf_model):
    """``(x, y, flux)`` parameter names of a PSF model (photutils' rule)."""
    if all(name in psf_model.param_names for name in ("x_0", "y_0", "flux")):
        return ("x_0", "y_0", "flux")
    names = tuple(getattr(psf_model, attr, None) for attr in ("x_name", "y_name", "flux_name"))
    if all(isinstance(name, str) and name in psf_model.param_names for name in names):
        return names
    raise ValueError(
        "Invalid PSF model - could not find PSF parameter names: psf_model must have 'x_0', "
        "'y_0' and 'flux' parameters (or x_name/y_name/flux_name attributes naming them)"
    )


def make_psf_model_image(shape, psf_model, n_sources, *, model_shape=None, min_separation=1,
                         border_size=None, seed=0, progress_bar=False, **kwargs):
    """Simulated image of ``n_sources`` randomly placed PSF sources (photutils 3.0 semantics).

    Parameters
    ----------
    shape : (ny, nx) ints
        Image shape.
    psf_model : astropy 2D model
        PSF model with ``x_0``, ``y_0`` and ``flux`` parameters (crowdphot models render through
        their batched kernels).
    n_sources : int
        Number of sources wanted.
    model_shape : int or (ny, nx), optional
        Stamp shape per source; default the ceiling of the model's bounding-box extent.
    min_separation : float, optional
        Minimum distance between source centres.
    border_size : int or (ny, nx), optional
        Border kept free of source centres; default ``(model_shape - 1) // 2``.
    seed : int or None, optional
        Random seed (same draws as photutils for the same seed).
    progress_bar : bool, optional
        Show a tqdm bar while rendering.
    **kwargs : (low, high)
        Uniform ranges of model parameters, e.g. ``flux=(500, 20000)``; names that are not
        parameters of ``psf_model``, and the position names, are ignored.

    Returns
    -------
    data : ndarray of float64, shape (ny, nx)
    params : astropy.table.QTable
        ``id``, position columns and one column per used keyword.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> data, params = make_psf_model_image((150, 200), CircularGaussianPRF(fwhm=3.5), 10,
    ...                                     flux=(100, 250), min_separation=10, seed=0)
    >>> data.shape, len(params)
    ((150, 200), 10)
    """
    if not isinstance(psf_model, Model):  # photutils' wording
        raise TypeError(f"psf_model must be an Astropy Model subclass, got "
                        f"{type(psf_model).__name__}")
    if psf_model.n_inputs != 2 or psf_model.n_outputs != 1:
        raise ValueError("psf_model must be two-dimensional (2 inputs, 1 output)")
    x_name, y_name, _ = _main_param_names(psf_model)
    if model_shape is not None:
        model_shape = as_pair("model_shape", model_shape, lower_bound=0)
    else:
        model_shape = np.array(model_stamp_shape(psf_model))
    if border_size is None:
        border_size = (model_shape - 1) // 2
    other = {
        key: val
        for key, val in kwargs.items()
        if key in psf_model.param_names and key not in (x_name, y_name)
    }
    params = make_model_params(shape, n_sources, x_name=x_name, y_name=y_name,
                               min_separation=min_separation, border_size=border_size,
                               seed=seed, **other)
    data = make_model_image(shape, psf_model, params, model_shape=model_shape, x_name=x_name,
                            y_name=y_name, progress_bar=progress_bar)
    return data, params


def _column(table, name):
    col = table[name]
    unit = getattr(col, "unit", None)
    values = np.asarray(getattr(col, "value", col))
    if values.dtype.kind not in "iuf" or values.ndim != 1:
        raise ValueError(f"params_table column {name!r} must hold one number per row")
    return values.astype(float), unit


def _param_map(model, params_table, x_name, y_name, params_map):
    mapping = {x_name: x_name, y_name: y_name}
    mapping.update({p: p for p in model.param_names if p in params_table.colnames})
    if params_map is not None:
        if not isinstance(params_map, dict):
            raise TypeError("params_map must be a dict {model parameter: column name}")
        mapping.update(params_map)
    for key, col in mapping.items():
        if key not in model.param_names:
            raise ValueError(f"{key!r} (from x_name/y_name/params_map) is not a model parameter "
                             f"({key!r} not in model parameter names)")
        if col not in params_table.colnames:
            raise ValueError(f"params_table has no column {col!r} (for model parameter {key!r}; "
                             f"{col!r} not in params_table column names)")
    return mapping


def _bbox_offsets(probe, bbox_factor):
    """``(ylo, yhi, xlo, xhi)`` of a model's bounding box (``factor`` applied when accepted)."""
    try:
        bbox = probe.bounding_box
    except NotImplementedError as exc:
        raise ValueError("model_shape must be given because the model has no bounding_box "
                         "(model_shape must be specified if the model does not have a "
                         "bounding_box attribute)") from exc
    if bbox_factor is not None:
        try:
            bbox = probe.bounding_box(factor=bbox_factor)
        except (NotImplementedError, TypeError):
            pass
    if hasattr(bbox, "bounding_box"):
        bbox = bbox.bounding_box()
    (ylo, yhi), (xlo, xhi) = bbox
    return np.array((ylo, yhi, xlo, xhi), dtype=float)


def _bbox_shapes(model, bbox_factor, x_name, y_name, x0, y0, varying):
    """Per-source ``(n, 2)`` stamp shapes from the bounding box, as photutils computes them.

    photutils re-reads the box at every source; boxes translate with the centre, so the box at
    ``(0, 0)`` gives each source's box to the last bit, and only parameters that change the box
    size need one box per distinct value.
    """
    n = len(x0)
    probe = model.copy()
    setattr(probe, x_name, 0.0)
    setattr(probe, y_name, 0.0)
    base = _bbox_offsets(probe, bbox_factor)
    keys = []
    for key, val in varying.items():
        trial = probe.copy()
        for v in (val.min(), val.max()):
            setattr(trial, key, v)
            if not np.array_equal(_bbox_offsets(trial, bbox_factor), base):
                keys.append(key)
                break
    if keys:
        combos = np.column_stack([varying[k] for k in keys])
        uniq, inverse = np.unique(combos, axis=0, return_inverse=True)
        offsets = np.empty((len(uniq), 4))
        for u, row in enumerate(uniq):  # one box per distinct shape-parameter set
            for key, val in zip(keys, row, strict=True):
                setattr(probe, key, val)
            offsets[u] = _bbox_offsets(probe, bbox_factor)
        off = offsets[inverse.reshape(-1)]
    else:
        off = np.broadcast_to(base, (n, 4))
    ny = np.ceil((y0 + off[:, 1]) - (y0 + off[:, 0]))
    nx = np.ceil((x0 + off[:, 3]) - (x0 + off[:, 2]))
    return np.column_stack((ny, nx)).astype(np.int64)


def _column_shapes(params_table, rows):
    col = np.asarray(params_table["model_shape"])
    if col.ndim == 1:
        col = np.column_stack((col, col))
    if col.ndim != 2 or col.shape[1] != 2 or col.dtype.kind not in "iu" or np.any(col <= 0):
        raise ValueError("params_table 'model_shape' column must hold positive integers")
    return col[rows].astype(np.int64)


def make_model_image(shape, model, params_table, *, model_shape=None, bbox_factor=None,
                     x_name="x_0", y_name="y_0", params_map=None, discretize_method="center",
                     discretize_oversample=10, progress_bar=False):
    """Render one source per table row (photutils 3.0 ``make_model_image``, batched).

    Parameters
    ----------
    shape : (ny, nx) ints
        Image shape.
    model : astropy 2D model
        Model to render; crowdphot PSF models use their batched kernels, other models a
        broadcast ``evaluate``.
    params_table : astropy.table.Table
        One row per source; columns named as model parameters (or mapped by ``params_map``)
        set them, others keep the model's value. Optional columns ``model_shape`` (per-source
        stamp shape) and ``local_bkg`` (constant added over the stamp). Rows with a non-finite
        parameter are skipped.
    model_shape : int or (ny, nx), optional
        Stamp shape; default the ceiling of each source's bounding-box extent.
    bbox_factor : float, optional
        ``factor`` passed to the model's bounding box when it accepts one.
    x_name, y_name : str, optional
        Model parameters holding the position.
    params_map : dict, optional
        ``{model parameter: column name}`` overrides.
    discretize_method : {'center', 'interp', 'oversample', 'integrate'}, optional
        'center' (batched): the model at pixel centres. The others use
        `astropy.convolution.discretize_model` per source, as photutils does (slower).
    discretize_oversample : int, optional
        Subsampling factor of the 'oversample' method.
    progress_bar : bool, optional
        Show a tqdm bar ('Add model sources') updated per chunk.

    Returns
    -------
    image : ndarray of float64, shape (ny, nx)
        An astropy Quantity when the ``flux`` column has a unit.

    Examples
    --------
    >>> from crowdphot import CircularGaussianPRF
    >>> params = make_model_params((60, 80), 4, flux=(100, 200), seed=1)
    >>> image = make_model_image((60, 80), CircularGaussianPRF(fwhm=2.0), params,
    ...                          model_shape=11)
    >>> image.shape
    (60, 80)
    """
    if np.ndim(shape) != 1 or len(shape) != 2:
        raise ValueError(f"shape must be a 2-tuple (ny, nx), got {shape!r}")
    img_shape = tuple(int(v) for v in as_pair("shape", shape, lower_bound=0))
    if not isinstance(model, Model):
        raise TypeError(f"model must be a Model instance: model must be an astropy Model "
                        f"instance, got {type(model).__name__}")
    _check_model("model", model)
    if not isinstance(params_table, Table):
        raise TypeError("params_table must be an astropy Table or QTable")
    methods = ("center", "interp", "oversample", "integrate")
    if discretize_method not in methods:
        raise ValueError(f"discretize_method must be one of {methods}, got "
                         f"{discretize_method!r}")
    mapping = _param_map(model, params_table, x_name, y_name, params_map)
    if model_shape is not None:
        model_shape = as_pair("model_shape", model_shape, lower_bound=0)
    n_rows = len(params_table)

    values, finite = {}, np.ones(n_rows, dtype=bool)
    unit = None
    for key, col in mapping.items():
        values[key], col_unit = _column(params_table, col)
        finite &= np.isfinite(values[key])
        if key == "flux" and col_unit is not None:
            unit = col_unit
    rows = np.flatnonzero(finite)
    values = {key: val[rows] for key, val in values.items()}
    bkg = _local_bkg(params_table, rows, unit)

    varying, constant = {}, {}
    for key, val in values.items():
        if key in (x_name, y_name) or not len(val):
            continue
        if np.all(val == val[0]):
            constant[key] = val[0]
        else:
            varying[key] = val
    if constant:  # leave the caller's model untouched (copying costs ~10 ms, so only if needed)
        model = model.copy()
        for key, val in constant.items():
            setattr(model, key, val)
    x0, y0 = values[x_name], values[y_name]
    fast = (isinstance(model, BatchedPSFMixin) and (x_name, y_name) == ("x_0", "y_0")
            and set(varying) <= {"flux"})
    if discretize_method != "center":
        stamp_fn = _DiscretizedStamps(model, {x_name: x0, y_name: y0, **varying},
                                      discretize_method, discretize_oversample)
    elif fast:
        flux = varying.get("flux", np.full(len(rows), float(model.flux.value)))
        stamp_fn = _MixinStamps(model, x0, y0, flux)
    else:
        stamp_fn = _EvaluateStamps(model, {x_name: x0, y_name: y0, **varying})
    if "model_shape" in params_table.colnames:
        shapes = _column_shapes(params_table, rows)
    elif model_shape is not None:
        shapes = np.broadcast_to(model_shape, (len(rows), 2))
    else:
        shapes = _bbox_shapes(model, bbox_factor, x_name, y_name, x0, y0, varying)

    image = np.zeros(img_shape)
    advance, close = _progress_advance(bool(progress_bar), n_rows)
    try:
        if advance is not None and len(rows) < n_rows:
            advance(n_rows - len(rows))
        uniq, inverse = np.unique(shapes, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for g, stamp_shape in enumerate(uniq):
            index = np.flatnonzero(inverse == g) if len(uniq) > 1 else None
            _render_unchecked(image, stamp_fn, x0, y0, bkg, tuple(int(v) for v in stamp_shape),
                              index=index, advance=advance)
    finally:
        close()
    return image << unit if unit is not None else image


class _DiscretizedStamps:
    """Stamps from `astropy.convolution.discretize_model`, one model copy per source."""

    def __init__(self, model, per_star, method, factor):
        self.model = model
        self.per_star = per_star
        self.mode = "linear_interp" if method == "interp" else method
        self.factor = int(factor)

    def __call__(self, sel, xlo, ylo, shape):
        from astropy.convolution import discretize_model

        ny, nx = shape
        out = np.empty((len(sel), ny, nx))
        for j, i in enumerate(sel):
            model = self.model.copy()
            for name, values in self.per_star.items():
                setattr(model, name, values[i])
            x0, y0 = int(xlo[j]), int(ylo[j])
            values = discretize_model(model, (x0, x0 + nx), (y0, y0 + ny), mode=self.mode,
                                      factor=self.factor)
            out[j] = getattr(values, "value", values)
        return out, np.ones(len(sel))


def _local_bkg(params_table, rows, unit):
    if "local_bkg" not in params_table.colnames:
        return np.zeros(len(rows))
    col = params_table["local_bkg"]
    col_unit = getattr(col, "unit", None)
    if col_unit is not None and unit is not None:
        try:
            col = col.to_value(unit)
        except Exception as exc:  # astropy raises UnitConversionError (a ValueError) or TypeError
            raise ValueError(_LOCAL_BKG_UNITS) from exc
    elif col_unit is not None or unit is not None:
        raise ValueError(_LOCAL_BKG_UNITS)
    bkg = np.asarray(getattr(col, "value", col), dtype=float)[rows]
    return bkg


_LOCAL_BKG_UNITS = ("The local_bkg column must have the same flux units as the flux column "
                    "(params_table 'local_bkg' column must have the flux units of the image)")


@deprecated_positional("distribution", "mean", "stddev", "seed")
def make_noise_image(shape, *, distribution="gaussian", mean=None, stddev=None, seed=None):
    """Image of Gaussian or Poisson noise (same draws as photutils 3.0 for the same seed).

    Parameters
    ----------
    shape : (ny, nx) ints
        Image shape.
    distribution : {'gaussian', 'poisson'}, optional
        Noise distribution.
    mean : float
        Mean of the distribution (required).
    stddev : float, optional
        Standard deviation; required for Gaussian noise, ignored for Poisson noise.
    seed : int, numpy.random.Generator or None, optional
        Random seed.

    Returns
    -------
    image : ndarray of shape (ny, nx)
        float64 for Gaussian noise, int64 counts for Poisson noise.

    Examples
    --------
    >>> noise = make_noise_image((100, 100), mean=0, stddev=0.5, seed=0)
    >>> noise.shape
    (100, 100)
    """
    img_shape = tuple(int(v) for v in as_pair("shape", shape, lower_bound=0))
    if distribution not in ("gaussian", "poisson"):
        raise ValueError(f"Invalid distribution: {distribution}. Use either 'gaussian' or "
                         "'poisson'.")
    if mean is None:
        raise ValueError("'mean' must be input")
    if not np.isfinite(mean):
        raise ValueError(f"mean must be finite, got {mean!r}")
    rng = np.random.default_rng(seed)
    if distribution == "gaussian":
        if stddev is None:
            raise ValueError("'stddev' must be input for Gaussian noise")
        if not np.isfinite(stddev) or stddev < 0:
            raise ValueError(f"stddev must be finite and >= 0, got {stddev!r}")
        return rng.normal(loc=mean, scale=stddev, size=img_shape)
    if distribution == "poisson":
        if mean < 0:
            raise ValueError(f"mean must be >= 0 for Poisson noise, got {mean!r}")
        return rng.poisson(lam=mean, size=img_shape)
    raise ValueError(f"distribution must be 'gaussian' or 'poisson', got {distribution!r}")
