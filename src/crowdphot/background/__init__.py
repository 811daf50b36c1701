"""Background estimators and local background, as photutils.background.
"""

from crowdphot.core.lazy import lazy_exports

_EXPORTS = {
    "Background2D": "crowdphot.background.background_2d",
    "BackgroundBase": "crowdphot.background.core",
    "BackgroundRMSBase": "crowdphot.background.estimators",
    "BiweightLocationBackground": "crowdphot.background.estimators",
    "BiweightScaleBackgroundRMS": "crowdphot.background.estimators",
    "BkgIDWInterpolator": "crowdphot.background.interpolators",
    "BkgZoomInterpolator": "crowdphot.background.interpolators",
    "MADStdBackgroundRMS": "crowdphot.background.estimators",
    "SExtractorBackground": "crowdphot.background.estimators",
    "StdBackgroundRMS": "crowdphot.background.estimators",
    "LocalBackground": "crowdphot.background.core",
    "MMMBackground": "crowdphot.background.core",
    "MeanBackground": "crowdphot.background.core",
    "MedianBackground": "crowdphot.background.core",
    "ModeEstimatorBackground": "crowdphot.background.core",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
