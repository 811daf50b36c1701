"""Star finders, as photutils.detection.
"""

from crowdphot.core.lazy import lazy_exports

_EXPORTS = {
    "IRAFStarFinder": "crowdphot.detection.finders",
    "DAOStarFinder": "crowdphot.detection.finders",
    "StarFinder": "crowdphot.detection.starfinder",
    "find_peaks": "crowdphot.detection.peakfinder",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
