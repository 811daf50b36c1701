"""photutils 3's renamed-argument deprecations (same warning class and wording)."""

from __future__ import annotations

import functools
import warnings

from astropy.utils.exceptions import AstropyDeprecationWarning

__all__ = ["renamed_argument"]


def renamed_argument(old, new, *, since="3.0", until="4.0"):
    """Accept keyword ``old`` as a deprecated spelling of ``new`` (AstropyDeprecationWarning).

    Examples
    --------
    >>> @renamed_argument('localbkg', 'local_bkg')
    ... def f(*, local_bkg=0):
    ...     return local_bkg
    >>> with warnings.catch_warnings(record=True):
    ...     warnings.simplefilter('always')
    ...     f(localbkg=3)
    3
    """

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{func.__name__}() got both {old!r} (deprecated) and "
                                    f"{new!r}")
                warnings.warn(f"{old!r} was deprecated in version {since} and will be removed "
                              f"in version {until}. Use argument {new!r} instead.",
                              AstropyDeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper

    return decorate
