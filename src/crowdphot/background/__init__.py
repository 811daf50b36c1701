"""Background estimators and local background, as photutils.background.
"""

from crowdphot.core.lazy import lazy_exports

_EXPORTS = {
    "LocalBackground": "crowdphot.background.core",
    "MMMBackground": "crowdphot.background.core",
    "MeanBackground": "crowdphot.background.core",
    "MedianBackground": "crowdphot.background.core",
    "ModeEstimatorBackground": "crowdphot.background.core",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
