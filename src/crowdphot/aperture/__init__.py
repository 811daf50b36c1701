"""Circular apertures and aperture photometry, as photutils.aperture.
"""

from crowdphot.core.lazy import lazy_exports

_EXPORTS = {
    "ApertureMask": "crowdphot.aperture.core",
    "BoundingBox": "crowdphot.aperture.bounding_box",
    "CircularAnnulus": "crowdphot.aperture.core",
    "CircularAperture": "crowdphot.aperture.core",
    "aperture_photometry": "crowdphot.aperture.core",
    "SkyCircularAperture": "crowdphot.aperture.sky",
    "SkyCircularAnnulus": "crowdphot.aperture.sky",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
