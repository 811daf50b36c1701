"""Runtime of the compiled kernels: the native extension, its thread count, and a lazy ``njit``.

Every kernel of the package is C compiled at install time into one extension,
``crowdphot.core.kernels._native`` (sources in ``core/kernels/_src``); the Python modules of
``crowdphot.core.kernels`` are its only callers. Nothing is compiled when a process starts, so the
first call costs the same as later ones.

``njit`` is numba's, applied lazily: numba is imported and the function compiled (or loaded from
numba's cache) at its first call rather than when the defining module is imported.
"""

from __future__ import annotations

import functools
import os

__all__ = ["native", "get_num_threads", "set_num_threads", "njit"]

try:
    from crowdphot.core.kernels import _native as native
except ImportError as exc:  # pragma: no cover - a source tree without the built extension
    raise ImportError(
        "crowdphot's compiled kernels (crowdphot.core.kernels._native) are not built; install "
        "the package with `pip install -e .` (needs a C compiler)"
    ) from exc


def _default_threads():
    value = os.environ.get("CROWDPHOT_NUM_THREADS", "")
    if value.strip().isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads():
    """Threads the parallel kernels use (default: the usable cores, or ``CROWDPHOT_NUM_THREADS``).

    Examples
    --------
    >>> get_num_threads() >= 1
    True
    """
    return native.get_num_threads()


def set_num_threads(n):
    """Limit the parallel kernels (and numba's, once numba is loaded) to ``n`` threads.

    Returns the previous kernel thread count.

    Examples
    --------
    >>> old = set_num_threads(1)
    >>> get_num_threads()
    1
    >>> _ = set_num_threads(old)
    """
    import sys

    old = native.get_num_threads()
    native.set_num_threads(max(1, int(n)))
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    return old


native.set_num_threads(_default_threads())


def njit(*args, **kwargs):
    """``numba.njit`` (cached, nogil), imported and applied at the function's first call.

    Examples
    --------
    >>> @njit(cache=False)  # a doctest has no file for numba's cache
    ... def add(a, b):
    ...     return a + b
    >>> add(1, 2)
    3
    """
    kwargs.setdefault("cache", True)
    kwargs.setdefault("nogil", True)

    def decorate(fn):
        compiled = None

        @functools.wraps(fn)
        def call(*a, **k):
            nonlocal compiled
            if compiled is None:
                import numba

                compiled = numba.njit(**kwargs)(fn)
            return compiled(*a, **k)

        call.py_func = fn
        return call

    if args and callable(args[0]):
        return decorate(args[0])
    return decorate
