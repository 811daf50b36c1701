"""Lazy re-exports for package ``__init__`` modules.

A subpackage names what it offers and where each name is defined; the defining module is
imported on first attribute access, so ``import crowdphot.psf`` costs nothing until a name is
used (fast cold start) while ``from crowdphot.psf import PSFPhotometry`` works as in photutils.
"""

from __future__ import annotations

import importlib

__all__ = ["lazy_exports"]


def lazy_exports(package, exports):
    """Return ``(__getattr__, __dir__, __all__)`` for a package with lazy names.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : dict of str to str
        Public name -> absolute name of the module that defines it.

    Examples
    --------
    >>> getattr_, dir_, all_ = lazy_exports("pkg", {"sqrt": "math"})
    >>> getattr_("sqrt")(4.0)
    2.0
    >>> all_
    ['sqrt']
    """
    names = sorted(exports)

    def __getattr__(name):
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        return getattr(importlib.import_module(module), name)

    def __dir__():
        return list(names)

    return __getattr__, __dir__, names
