"""Sky coordinates and units of images: ICRS positions through any celestial WCS, BUNIT.

Nothing here reads files; :mod:`crowdphot.io.fits` re-exports these names.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pixel_to_icrs", "icrs_to_pixel", "parse_bunit"]


# BUNIT spellings archives use that astropy's parser misreads or rejects (upper case 'S' is
# siemens to astropy; 'e-' is not a unit)
_BUNIT_ALIASES = {
    "MJY/SR": "MJy/sr", "MJY SR-1": "MJy/sr", "JY": "Jy", "MJY": "MJy", "UJY": "uJy",
    "NJY": "nJy", "JY/PIXEL": "Jy/pix", "JY/PIX": "Jy/pix", "DN": "DN", "DN/S": "DN/s",
    "DN/SEC": "DN/s", "DN S-1": "DN/s", "ADU": "adu", "ADU/S": "adu/s", "COUNTS": "count",
    "COUNT": "count", "CTS": "count", "COUNTS/S": "count/s", "COUNTS/SEC": "count/s",
    "CTS/S": "count/s", "ELECTRONS": "electron", "ELECTRON": "electron", "E-": "electron",
    "ELECTRONS/S": "electron/s", "ELECTRONS/SEC": "electron/s", "E-/S": "electron/s",
    "E/S": "electron/s", "ELECTRON/S": "electron/s",
}


def parse_bunit(text):
    """The astropy unit of a FITS ``BUNIT`` value, or None when it is not a flux unit.

    Archive spellings are read as meant (``'MJY/SR'``, ``'DN/S'`` -- per second, not per
    siemens --, ``'ELECTRONS/S'``, ``'e-/s'``); magnitudes and unknown strings give None.

    Examples
    --------
    >>> parse_bunit('MJy/sr'), parse_bunit('DN/S'), parse_bunit('e-/s'), parse_bunit('???')
    (Unit("MJy / sr"), Unit("DN / s"), Unit("electron / s"), None)
    """
    import astropy.units as u

    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    key = " ".join(text.upper().split())
    candidates = [_BUNIT_ALIASES[key]] if key in _BUNIT_ALIASES else []
    if text != text.upper():  # mixed case is meant literally; all capitals are ambiguous
        candidates.append(text)
    for candidate in candidates:
        unit = u.Unit(candidate, parse_strict="silent")
        if (isinstance(unit, u.UnrecognizedUnit) or not isinstance(unit, u.UnitBase)
                or "function" in type(unit).__module__ or "dex" in str(unit.decompose())):
            continue  # unknown, or a magnitude (a PSF fit sums linear fluxes)
        return unit
    return None


def pixel_to_icrs(wcs, x, y):
    """ICRS right ascension and declination (degrees) of pixel positions.

    Whatever the WCS frame (ICRS, FK5, FK4 with its equinox, galactic, ecliptic), the
    positions are transformed to ICRS with astropy's ``SkyCoord``; distortion (SIP) is
    included.

    Parameters
    ----------
    wcs : astropy WCS (celestial)
    x, y : ndarray (n,)
        Pixel positions (0-based; non-finite values give NaN).

    Returns
    -------
    ra, dec : ndarray (n,)
        Degrees, ICRS.
    frame : str
        The frame of the WCS itself (e.g. ``'icrs'``, ``'fk5'``, ``'galactic'``).

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> w = WCS(naxis=2); w.wcs.ctype = ['GLON-TAN', 'GLAT-TAN']; w.wcs.crpix = [1, 1]
    >>> ra, dec, frame = pixel_to_icrs(w, np.array([0.0]), np.array([0.0]))
    >>> frame, round(float(ra[0]), 3), round(float(dec[0]), 3)
    ('galactic', 266.405, -28.936)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    ra = np.full(x.shape, np.nan)
    dec = np.full(x.shape, np.nan)
    sky = wcs.pixel_to_world(x[ok] if ok.any() else np.array([0.0]),
                             y[ok] if ok.any() else np.array([0.0]))
    frame = sky.frame.name
    if ok.any():
        icrs = sky.icrs
        ra[ok] = icrs.ra.deg
        dec[ok] = icrs.dec.deg
    return ra, dec, frame


def icrs_to_pixel(wcs, ra, dec):
    """Pixel positions of ICRS ``ra``, ``dec`` (degrees) through any celestial WCS.

    The inverse of :func:`pixel_to_icrs` (frame transformation and SIP included).

    Returns
    -------
    x, y : ndarray (n,)

    Examples
    --------
    >>> from astropy.wcs import WCS
    >>> w = WCS(naxis=2); w.wcs.ctype = ['RA---TAN', 'DEC--TAN']; w.wcs.crpix = [1, 1]
    >>> [abs(round(float(v[0]), 6)) for v in icrs_to_pixel(w, [0.0], [0.0])]
    [0.0, 0.0]
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    x = np.full(ra.shape, np.nan)
    y = np.full(ra.shape, np.nan)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if ok.any():
        coords = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg, frame="icrs")
        px, py = wcs.world_to_pixel(coords)
        x[ok], y[ok] = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
    return x, y
