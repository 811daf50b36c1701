"""A simple celestial WCS for tests and examples, as photutils.datasets.make_wcs."""

from __future__ import annotations

from astropy.wcs import WCS

from crowdphot.core.validate import deprecated_positional

__all__ = ["make_wcs"]


@deprecated_positional("galactic")
def make_wcs(shape, *, galactic=False):
    """A TAN (or, with ``galactic``, CAR galactic) WCS centred on an image of ``shape``.

    Parameters
    ----------
    shape : (ny, nx) ints
        Image shape (stored as ``pixel_shape``).
    galactic : bool, optional
        Galactic ``GLON-CAR``/``GLAT-CAR`` axes instead of ICRS ``RA---TAN``/``DEC--TAN``.

    Returns
    -------
    wcs : `~astropy.wcs.WCS`
        0.1 arcsec pixels.

    Examples
    --------
    >>> make_wcs((100, 200)).wcs.ctype[0]
    'RA---TAN'
    """
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [shape[1] / 2.0, shape[0] / 2.0]
    wcs.wcs.cdelt = [-0.1 / 3600.0, 0.1 / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    if galactic:
        wcs.wcs.crval = [36.7, -0.75]
        wcs.wcs.ctype = ["GLON-CAR", "GLAT-CAR"]
    else:
        wcs.wcs.crval = [197.8925, -1.36555556]
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = tuple(shape)
    return wcs
