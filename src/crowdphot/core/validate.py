"""Shared argument checks.

Public functions validate with these helpers and then call unchecked fast helpers. Every error
names the offending argument so that a user can tell which input was wrong.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "as_pair",
    "check_image",
    "check_mask",
    "check_error",
    "check_positions",
    "positive_real",
    "CrowdphotWarning",
]


class CrowdphotWarning(UserWarning):
    """Warning category for recoverable problems with user input (e.g. masked NaN pixels)."""


def _astropy_user_warning():
    from astropy.utils.exceptions import AstropyUserWarning

    return AstropyUserWarning


class NonFiniteDataWarning(CrowdphotWarning, _astropy_user_warning()):
    """Unmasked NaN/inf data pixels were masked (photutils' ``AstropyUserWarning``)."""


def as_pair(name, value, *, lower_bound=None, odd=False, integer=True):
    """Return ``value`` as a ``(2,)`` array ``(y, x)``, broadcasting a scalar.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    value : int, float or sequence of 2
        The value to convert.
    lower_bound : number, optional
        Values must be strictly greater than this.
    odd : bool, optional
        Require odd integers (stamp shapes).
    integer : bool, optional
        Require integer values.

    Returns
    -------
    pair : ndarray of shape (2,)

    Examples
    --------
    >>> as_pair('fit_shape', 5, odd=True)
    array([5, 5])
    """
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a number or a pair of numbers, got {value!r}")
    arr = np.atleast_1d(np.asarray(value))
    # photutils' wording ("must be 1D", "must have 1 or 2 elements", ...)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1D: a scalar or a pair (ny, nx), got {value!r}")
    if arr.size not in (1, 2):
        raise ValueError(f"{name} must have 1 or 2 elements: a scalar or a pair (ny, nx), "
                         f"got {value!r}")
    if arr.dtype.kind not in "iuf" or arr.dtype == bool:
        raise TypeError(f"{name} must be numeric, got {value!r}")
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite value, got {value!r}")
    if integer:
        if np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must have integer values, got {value!r}")
        arr = arr.astype(int)
    if lower_bound is not None and np.any(arr <= lower_bound):
        raise ValueError(f"{name} must be > {lower_bound}, got {value!r}")
    if odd and np.any(arr % 2 == 0):
        raise ValueError(f"{name} must have an odd value for both axes: {name} must be odd "
                         f"along both axes, got {value!r}")
    return arr


def check_image(name, data, *, allow_nonfinite=True, warn_nonfinite=True):
    """Validate a 2D image and return ``(array, nonfinite_mask)``.

    Parameters
    ----------
    name : str
        Argument name used in messages.
    data : array_like of shape (ny, nx)
        The image. Astropy Quantities are accepted; the unit is stripped (callers re-attach it).
    allow_nonfinite : bool, optional
        If False, NaN/inf pixels raise ``ValueError``. If True they are reported in the returned
        mask (and a warning is issued when ``warn_nonfinite``).

    Returns
    -------
    arr : ndarray of float64, shape (ny, nx)
    bad : ndarray of bool, shape (ny, nx) or None when every pixel is finite

    Examples
    --------
    >>> arr, bad = check_image('data', np.ones((3, 4)))
    >>> arr.shape, bad
    ((3, 4), None)
    """
    value = getattr(data, "value", data)  # strip astropy units
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 2D numeric array") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2D array, got {arr.ndim} dimension(s)")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    # one reduction instead of a full boolean temporary: a finite sum means every pixel is
    # finite (NaN/inf propagate); an overflowing sum just falls through to the exact check
    if np.isfinite(np.add.reduce(arr, axis=None)):
        return arr, None
    finite = np.isfinite(arr)
    if finite.all():
        return arr, None
    if not allow_nonfinite:
        raise ValueError(f"{name} contains NaN or inf values")
    bad = ~finite
    if warn_nonfinite:
        warnings.warn(
            f"{name} contains {int(bad.sum())} non-finite (NaN/inf) pixel(s); they are masked",
            CrowdphotWarning,
            stacklevel=3,
        )
    return arr, bad


def check_mask(name, mask, shape):
    """Validate a boolean mask of the given shape (``None`` passes through).

    Examples
    --------
    >>> check_mask('mask', None, (3, 3)) is None
    True
    """
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(  # photutils' wording
            f"data and {name} must have the same shape: {name} must have the same shape as "
            f"data {tuple(shape)}, got {m.shape}")
    return m.astype(bool, copy=False)


def check_error(name, error, shape):
    """Validate a per-pixel 1-sigma error array: same shape, finite, strictly positive.

    Non-finite or non-positive errors raise ``ValueError`` (they would give infinite or
    undefined weights); mask such pixels instead.

    Examples
    --------
    >>> check_error('error', None, (2, 2)) is None
    True
    """
    if error is None:
        return None
    value = getattr(error, "value", error)
    arr = np.asarray(value, dtype=float)
    if arr.shape != tuple(shape):
        raise ValueError(f"data and {name} must have the same shape: {name} must have the same "
                         f"shape as data {tuple(shape)}, got {arr.shape}")
    lo, hi = arr.min(), arr.max()
    if lo > 0 and hi < np.inf:  # NaN fails both comparisons: the common case costs 2 passes
        return arr
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be strictly positive everywhere (found values <= 0)")
    return arr


def positive_real(name, value):
    """``value`` as a finite float > 0; TypeError/ValueError naming ``name`` otherwise.

    Examples
    --------
    >>> positive_real('aperture_radius', 5)
    5.0
    """
    import numbers

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray)):
        raise TypeError(f"{name} must be a strictly-positive scalar, got {value!r}")
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a strictly-positive scalar, got {value!r}")
    fv = float(arr)
    if not np.isfinite(fv) or fv <= 0:
        raise ValueError(f"{name} must be a strictly-positive scalar, got {value!r}")
    return fv


def check_positions(name, x, y):
    """Validate matching 1D position arrays and return them as float64 ``(n,)`` arrays.

    Examples
    --------
    >>> check_positions('positions', [1, 2], [3, 4])[0]
    array([1., 2.])
    """
    xa = np.atleast_1d(np.asarray(getattr(x, "value", x), dtype=float))
    ya = np.atleast_1d(np.asarray(getattr(y, "value", y), dtype=float))
    if xa.ndim != 1 or ya.ndim != 1 or xa.shape != ya.shape:
        raise ValueError(
            f"{name}: x and y must be 1D arrays of equal length, got shapes {xa.shape} and "
            f"{ya.shape}"
        )
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ya))):
        raise ValueError(f"{name} contain NaN or inf values ('{name}' must not contain any "
                         "non-finite values)")
    return xa, ya


def deprecated_positional(*names, since="3.0", until="4.0"):
    """Accept the keyword-only options ``names`` positionally, with photutils 3's warning.

    photutils 3 made these options keyword-only but still accepts them positionally with an
    ``AstropyDeprecationWarning``; crowdphot does the same so that older scripts keep running.
    ``names`` are in photutils' positional order.

    Examples
    --------
    >>> @deprecated_positional('b')
    ... def f(a, *, b=1):
    ...     return a + b
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     warnings.simplefilter('always')
    ...     f(1, 5)
    6
    """
    import functools
    import inspect

    from astropy.utils.exceptions import AstropyDeprecationWarning

    def decorate(func):
        params = inspect.signature(func).parameters.values()
        n_pos = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if len(args) > n_pos:
                extra = args[n_pos:]
                if len(extra) > len(names):
                    raise TypeError(f"{func.__qualname__}() takes at most "
                                    f"{n_pos + len(names)} positional arguments but "
                                    f"{len(args)} were given")
                moved = names[: len(extra)]
                for name, value in zip(moved, extra, strict=True):
                    if name in kwargs:
                        raise TypeError(f"{func.__qualname__}() got multiple values for "
                                        f"argument {name!r}")
                    kwargs[name] = value
                quoted = [f"'{m}'" for m in moved]
                listed = (quoted[0] if len(quoted) == 1 else
                          " and ".join(quoted) if len(quoted) == 2 else
                          ", ".join(quoted[:-1]) + f", and {quoted[-1]}")
                noun = ("it as a keyword argument" if len(moved) == 1
                        else "them as keyword arguments")
                examples = ", ".join(f"{m}=..." for m in moved)
                warnings.warn(  # photutils 3's wording
                    f"Passing {listed} positionally to '{func.__name__}' is deprecated as of "
                    f"version {since} and will be removed in version {until}. Pass {noun} "
                    f"instead (e.g., {examples}).",
                    AstropyDeprecationWarning, stacklevel=2)
                args = args[:n_pos]
            return func(*args, **kwargs)

        return wrapper

    return decorate


def check_data_mask_error(data, mask, error, *, stacklevel=3, defer_error=False):
    """Validate an image with its optional mask and error, merging non-finite pixels into the mask.

    Non-finite data pixels the caller did not mask are masked with one warning. ``error`` must
    be finite and positive on every unmasked pixel (masked pixels may hold 0 or NaN, as bad-pixel
    maps often do; they get a placeholder of 1).

    With ``defer_error`` a zero/negative/non-finite error on an unmasked pixel does not raise
    here: it comes back as NaN, for the caller to check on the pixels it actually uses
    (photutils' rule: only the fitted pixels' errors matter).

    Returns
    -------
    data : ndarray (ny, nx) float64
    mask : ndarray (ny, nx) bool or None
    error : ndarray (ny, nx) float64 or None

    Examples
    --------
    >>> d, m, e = check_data_mask_error(np.ones((2, 2)), None, None)
    >>> m is None and e is None
    True
    """
    arr, bad = check_image("data", data, warn_nonfinite=False)
    mask = check_mask("mask", mask, arr.shape)
    if bad is not None:
        n_new = int(np.count_nonzero(bad if mask is None else (bad & ~mask)))
        if n_new:
            warnings.warn("Input data contains unmasked non-finite values (NaN or inf), which "
                          f"were automatically ignored ({n_new} pixel(s) masked).",
                          NonFiniteDataWarning, stacklevel=stacklevel)
        mask = bad if mask is None else (mask | bad)
    if error is None or (mask is None and not defer_error):
        return arr, mask, check_error("error", error, arr.shape)
    err = np.asarray(getattr(error, "value", error), dtype=float)
    if err.shape != arr.shape:
        raise ValueError(f"data and error must have the same shape: error must have the same "
                         f"shape as data {arr.shape}, got {err.shape}")
    with np.errstate(invalid="ignore"):
        bad_err = ~(np.isfinite(err) & (err > 0))
    if defer_error:
        if not np.any(bad_err):
            return arr, mask, err
        unused = np.zeros_like(bad_err) if mask is None else (bad_err & mask)
        return arr, mask, np.where(unused, 1.0, np.where(bad_err, np.nan, err))
    if np.any(bad_err & ~mask):
        raise ValueError("error must be finite and strictly positive on every unmasked pixel "
                         f"(found {int(np.count_nonzero(bad_err & ~mask))} bad value(s)); mask "
                         "those pixels instead")
    if np.any(bad_err):
        err = np.where(bad_err, 1.0, err)  # masked anyway: any valid placeholder
    return arr, mask, err
