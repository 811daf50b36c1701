"""Turn any 2D astropy model into a PSF model, as photutils.psf.make_psf_model.

The result is photutils' compound layout, so parameter names and submodel indices match:
``(x_model & y_model) | model``, times ``Const2D(flux)`` when the model has no flux parameter,
times a fixed ``Const2D(1 / integral)`` when normalised. ``x_model``/``y_model`` are
``Identity(1)`` when the model has its own centre parameter, otherwise an inverse shift whose
``offset`` is the new position parameter. Every parameter except position and flux is fixed,
and the compound carries ``x_name``, ``y_name`` and ``flux_name``.
"""

from __future__ import annotations

import re

import numpy as np
from astropy.modeling import CompoundModel
from astropy.modeling.models import Const2D, Identity, Shift

__all__ = ["make_psf_model"]


#: Model values evaluated per call while integrating (bounds the memory to ~16 MB).
_CHUNK = 2_000_000


class _InverseShift(Shift):
    """``x -> x - offset`` (so that ``offset`` is the source position)."""

    @staticmethod
    def evaluate(x, offset):
        return x - offset

    @staticmethod
    def fit_deriv(x, offset):
        return -np.ones_like(x)


def _shifted_name(model, name, shift):
    """Name of ``model``'s parameter ``name`` once the model sits at leaf index ``shift``."""
    if isinstance(model, CompoundModel):
        match = re.fullmatch(r"(.*)_(\d+)", name)
        return f"{match.group(1)}_{int(match.group(2)) + shift}"
    return f"{name}_{shift}"


def _integrate(model, x_name, y_name, dx, dy, subsample):
    """Sum of ``model`` over a ``dx`` x ``dy`` pixel box centred on its position."""
    if dx <= 0 or dy <= 0:
        raise ValueError("dx and dy must be > 0")
    if subsample < 1:
        raise ValueError("subsample must be >= 1")
    xc = float(np.squeeze(getattr(getattr(model, x_name), "value", getattr(model, x_name))))
    yc = float(np.squeeze(getattr(getattr(model, y_name), "value", getattr(model, y_name))))
    if not (np.isfinite(xc) and np.isfinite(yc)):
        raise ValueError("model x and y positions must be finite")
    step = 1.0 / subsample
    xs = xc + (np.arange(int(dx * subsample)) + 0.5) * step - dx / 2.0
    ys = yc + (np.arange(int(dy * subsample)) + 0.5) * step - dy / 2.0
    # broadcast a row of x against a few rows of y at a time: the position submodels see
    # 1D inputs only and no (ny, nx) coordinate grids are built (~4x faster, ~20x less memory)
    rows = max(1, _CHUNK // max(len(xs), 1))
    total = 0.0
    for k in range(0, len(ys), rows):
        values = model(xs[None, :], ys[k:k + rows, None])
        total += float(np.sum(getattr(values, "value", values)))
    return total * step**2


def make_psf_model(model, *, x_name=None, y_name=None, flux_name=None, normalize=True, dx=50,
                   dy=50, subsample=100, use_dblquad=False):
    """Make a PSF model (position and flux parameters) from any 2D astropy model.

    Parameters
    ----------
    model : `~astropy.modeling.Fittable2DModel`
        The PSF shape.
    x_name, y_name : str or None, optional
        The model's centre parameters; None adds position parameters ``offset_0``/``offset_1``
        (the model is then assumed centred on (0, 0)).
    flux_name : str or None, optional
        The model's total-flux parameter; None adds a ``Const2D`` flux parameter.
    normalize : bool, optional
        Scale the model once so that it integrates to 1 (fixed ``Const2D`` factor).
    dx, dy : int, optional
        Integration box (pixels) for the normalisation.
    subsample : int, optional
        Samples per pixel along each axis for the normalisation.
    use_dblquad : bool, optional
        Integrate with ``scipy.integrate.dblquad`` (slow, more accurate).

    Returns
    -------
    psf_model : `~astropy.modeling.CompoundModel`
        With attributes ``x_name``, ``y_name`` and ``flux_name``.

    Examples
    --------
    >>> from astropy.modeling.models import Gaussian2D
    >>> psf = make_psf_model(Gaussian2D(x_stddev=2, y_stddev=2), x_name='x_mean',
    ...                      y_name='y_mean')
    >>> psf.x_name, psf.y_name, psf.flux_name
    ('x_mean_2', 'y_mean_2', 'amplitude_3')
    """
    input_model = model.copy()
    names = {}
    shift_models = []
    for axis, name in (("x", x_name), ("y", y_name)):
        if name is None:
            shift_models.append(_InverseShift(0, name=f"{axis}_position"))
            names[axis] = "offset_0" if axis == "x" else "offset_1"
        else:
            if name not in input_model.param_names:
                raise ValueError(f"{name!r} parameter name not found in the input model")
            shift_models.append(Identity(1))
            names[axis] = _shifted_name(input_model, name, 2)
    psf_model = (shift_models[0] & shift_models[1]) | input_model
    if flux_name is None:
        psf_model *= Const2D(1.0, name="flux")
        flux = psf_model.param_names[-1]
    else:
        if flux_name not in input_model.param_names:
            raise ValueError(f"{flux_name!r} parameter name not found in the input model")
        flux = _shifted_name(input_model, flux_name, 2)

    if normalize:
        if use_dblquad:
            from scipy.integrate import dblquad

            def func(y, x):
                value = psf_model(x, y)
                return float(getattr(value, "value", value))

            integral = dblquad(func, -np.inf, np.inf, -np.inf, np.inf)[0]  # as photutils
        else:
            integral = _integrate(psf_model, names["x"], names["y"], dx, dy, subsample)
        if integral == 0:
            raise ValueError("Cannot normalize the model because the integrated flux is zero")
        psf_model *= Const2D(1.0 / integral, name="normalization_scaling")

    for name in psf_model.param_names:
        psf_model.fixed[name] = name not in (names["x"], names["y"], flux)
    psf_model.x_name = names["x"]
    psf_model.y_name = names["y"]
    psf_model.flux_name = flux
    return psf_model
