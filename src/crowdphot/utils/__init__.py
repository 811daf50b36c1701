"""Utilities, as photutils.utils, plus catalog matching.
"""

from crowdphot.core.lazy import lazy_exports

_EXPORTS = {
    "make_random_cmap": "crowdphot.utils.colormaps",
    "NoDetectionsWarning": "crowdphot.utils.exceptions",
    "FitConvergenceWarning": "crowdphot.utils.exceptions",
    "LargeGroupWarning": "crowdphot.utils.exceptions",
    "match_xy": "crowdphot.utils.match",
    "match_catalogs": "crowdphot.utils.match",
    "match_summary": "crowdphot.utils.match",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
