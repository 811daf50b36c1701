"""Optional dependencies: one clear error when an extra is missing.

matplotlib is the ``plot`` extra (``pip install 'crowdphot[plot]'``): photometry never imports
it, and every figure-drawing entry point calls :func:`require_matplotlib` before its first
matplotlib import.
"""

from __future__ import annotations

import importlib

__all__ = ["PLOT_EXTRA_HINT", "require_matplotlib"]

#: How to get the figures: the one install line every plotting error names.
PLOT_EXTRA_HINT = "pip install 'crowdphot[plot]'"


def require_matplotlib(feature):
    """Import and return :mod:`matplotlib`, or raise an ImportError naming the ``plot`` extra.

    Parameters
    ----------
    feature : str
        What needs it, for the message (e.g. ``"SourceGroups.plot"``).

    Returns
    -------
    matplotlib : module

    Raises
    ------
    ImportError
        ``"<feature> draws with matplotlib, the optional 'plot' extra: pip install
        'crowdphot[plot]'"`` when matplotlib cannot be imported.

    Examples
    --------
    >>> mpl = require_matplotlib("an example figure")  # doctest: +SKIP
    >>> mpl.__name__  # doctest: +SKIP
    'matplotlib'
    """
    try:
        return importlib.import_module("matplotlib")
    except ImportError as exc:
        raise ImportError(f"{feature} draws with matplotlib, the optional 'plot' extra: "
                          f"{PLOT_EXTRA_HINT}") from exc
