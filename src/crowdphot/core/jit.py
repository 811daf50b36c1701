"""Optional numba acceleration.

numba is an optional dependency (the ``fast`` extra). Kernels are written once as plain Python
loops over arrays; with numba they are compiled, without it callers use their vectorised numpy
fallback instead (never the slow pure-Python loop). ``CROWDPHOT_DISABLE_NUMBA=1`` forces the
numpy paths, which the tests use to check both.
"""

from __future__ import annotations

import os

__all__ = ["HAVE_NUMBA", "use_numba", "njit"]

try:  # pragma: no cover - depends on the environment
    import numba as _numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _numba = None
    HAVE_NUMBA = False


def use_numba():
    """True when compiled kernels should be used (numba installed and not disabled)."""
    return HAVE_NUMBA and os.environ.get("CROWDPHOT_DISABLE_NUMBA", "") not in ("1", "true")


def njit(*args, **kwargs):
    """``numba.njit`` when available (cached, nogil), else a decorator returning the function.

    Examples
    --------
    >>> @njit
    ... def add(a, b):
    ...     return a + b
    >>> add(1, 2)
    3
    """
    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)
    if HAVE_NUMBA:
        return _numba.njit(*args, **kwargs)
    if args and callable(args[0]):
        return args[0]
    return lambda f: f


#: ``numba.prange`` (usable inside compiled kernels) when numba is installed, else ``range``.
prange = _numba.prange if HAVE_NUMBA else range
