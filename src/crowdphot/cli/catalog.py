"""Catalog columns of ``crowdphot phot``: forced-photometry input positions and sky output.

``init_table`` turns any reasonable catalog (a previous crowdphot or photutils catalog, a
finder table, a list of sky positions) into forced-photometry positions on *this* image: with a
celestial WCS and ``ra/dec`` columns the sky positions win, because pixel positions belong to
the image the catalog was made on. ``add_sky_columns`` writes ICRS ``ra/dec`` whatever the WCS
frame, and says which frame the WCS had.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

__all__ = ["init_table", "add_sky_columns", "INIT_COORDS"]

# column spellings accepted for forced-photometry positions, most specific first
_X_NAMES = ("x_fit", "x_init", "x", "x_0", "x_centroid", "xcentroid", "xcen", "x_peak")
_Y_NAMES = ("y_fit", "y_init", "y", "y_0", "y_centroid", "ycentroid", "ycen", "y_peak")
_FLUX_NAMES = ("flux_fit", "flux_init", "flux", "flux_0")
_RA_NAMES = ("ra", "RA", "ra_fit", "ALPHA_J2000", "RAJ2000", "RA_ICRS", "sky_ra")
_DEC_NAMES = ("dec", "DEC", "Dec", "dec_fit", "DELTA_J2000", "DEJ2000", "DE_ICRS", "sky_dec")

#: choices of ``--init-coords``
INIT_COORDS = ("auto", "sky", "pixel")

# 'flux_fit [MJy / sr]': the CSV spelling of a column with a unit
_UNIT_NAME = re.compile(r"^(?P<name>[^\[\]]+?)\s*\[(?P<unit>[^\[\]]*)\]$")


def _plain_names(catalog):
    """``{plain name: (column name, unit or None)}``, reading 'name [unit]' CSV headers."""
    out = {}
    for name in catalog.colnames:
        m = _UNIT_NAME.match(name)
        if m:
            out.setdefault(m["name"], (name, m["unit"]))
        else:
            out.setdefault(name, (name, None))
    return out


def _first(names, choices):
    return next((n for n in choices if n in names), None)


def _floats(col):
    """Values as floats, masked entries as NaN (never the mask's fill value)."""
    raw = getattr(col, "unmasked", col)
    arr = np.array(getattr(raw, "value", np.ma.getdata(raw)), dtype=float)
    arr[_masked(col)] = np.nan
    return arr


def _masked(col):
    mask = getattr(col, "mask", None)
    if mask is None:
        return np.zeros(len(col), dtype=bool)
    return np.broadcast_to(np.asarray(mask, dtype=bool), (len(col),)).copy()


def _degrees(col, unit_text):
    import astropy.units as u

    unit = getattr(col, "unit", None)
    if unit is None and unit_text:
        unit = u.Unit(unit_text, parse_strict="silent")
    values = _floats(col)
    if unit is None or isinstance(unit, u.UnrecognizedUnit):
        return values  # plain numbers are taken as degrees
    return np.asarray((values * u.Unit(unit)).to_value(u.deg), dtype=float)


def _row_list(index):
    shown = ", ".join(str(int(i)) for i in index[:5])
    return shown + (", ..." if len(index) > 5 else "")


def init_table(catalog, wcs=None, *, coords="auto", source="the --init catalog"):
    """Initial positions (and fluxes) for forced photometry from any reasonable catalog.

    Pixel positions are taken from ``x_fit/y_fit`` (a previous crowdphot or photutils
    catalog), else ``x_init/y_init``, ``x/y``, ``x_0/y_0`` or finder centroids; sky positions
    from ``ra/dec`` (ICRS degrees, or columns with an angle unit). With ``coords='auto'`` the
    sky positions win whenever the catalog has them and the image has a celestial WCS: pixel
    positions belong to the image the catalog was made on, and a shifted or rotated image
    would otherwise get every star misplaced. A flux column (``flux_fit``, ``flux_init``,
    ``flux``) becomes the initial flux. CSV headers such as ``'flux_fit [MJy / sr]'`` are read.

    Parameters
    ----------
    catalog : Table
    wcs : astropy WCS, optional
        Celestial WCS of the image (any frame: sky positions are ICRS and transformed).
    coords : {'auto', 'sky', 'pixel'}, optional
        Which positions to use.
    source : str, optional
        How messages name the catalog.

    Returns
    -------
    init : QTable
        ``id, x_init, y_init`` (and ``flux_init``), plain floats; ``init.meta['coords']`` is
        ``'sky'`` or ``'pixel'``.

    Raises
    ------
    ValueError
        No usable position columns; masked positions (an error rather than a star fitted at
        a fill value); positions that cannot be projected; none finite.

    Warns
    -----
    UserWarning
        Rows with NaN positions (e.g. failed fits of a previous run) are dropped; the
        catalog's pixel positions disagree with its sky positions on this image.

    Examples
    --------
    >>> from astropy.table import QTable
    >>> init_table(QTable({'x_fit': [1.0], 'y_fit': [2.0]})).colnames
    ['id', 'x_init', 'y_init']
    """
    from astropy.table import QTable

    if coords not in INIT_COORDS:
        raise ValueError(f"coords must be one of {', '.join(INIT_COORDS)}, got {coords!r}")
    names = _plain_names(catalog)
    xcol, ycol = _first(names, _X_NAMES), _first(names, _Y_NAMES)
    racol, deccol = _first(names, _RA_NAMES), _first(names, _DEC_NAMES)
    has_pix = xcol is not None and ycol is not None
    has_sky = racol is not None and deccol is not None
    if not (has_pix or has_sky):
        raise ValueError(f"{source} needs x/y (e.g. x_fit, x_init, x) or ra/dec columns; it "
                         f"has {', '.join(catalog.colnames)}")
    if coords == "pixel" and not has_pix:
        raise ValueError(f"{source} has no x/y columns for --init-coords pixel")
    if coords == "sky" and not has_sky:
        raise ValueError(f"{source} has no ra/dec columns for --init-coords sky")
    use_sky = coords == "sky" or (coords == "auto" and has_sky and (wcs is not None
                                                                    or not has_pix))
    if use_sky and wcs is None:
        raise ValueError(f"{source} has ra/dec positions but the image has no celestial "
                         "WCS; give a catalog with x/y (and --init-coords pixel)")
    cols = (racol, deccol) if use_sky else (xcol, ycol)
    cats = [catalog[names[c][0]] for c in cols]
    masked = _masked(cats[0]) | _masked(cats[1])
    if masked.any():
        raise ValueError(f"{source} has {int(masked.sum())} row(s) with masked "
                         f"{cols[0]}/{cols[1]} (rows {_row_list(np.flatnonzero(masked))}); "
                         "remove them or fill in their positions")
    if use_sky:
        from crowdphot.io.fits import icrs_to_pixel

        ra = _degrees(cats[0], names[racol][1])
        dec = _degrees(cats[1], names[deccol][1])
        x, y = icrs_to_pixel(wcs, ra, dec)
        lost = np.isfinite(ra) & np.isfinite(dec) & ~(np.isfinite(x) & np.isfinite(y))
        if lost.any():
            raise ValueError(f"{source}: {int(lost.sum())} sky position(s) cannot be "
                             f"projected onto the image (rows {_row_list(np.flatnonzero(lost))})"
                             "; is the catalog for this field?")
        if has_pix:
            _warn_pixel_sky_disagree(catalog, names, xcol, ycol, x, y, source)
    else:
        x, y = _floats(cats[0]), _floats(cats[1])
    good = np.isfinite(x) & np.isfinite(y)
    if not np.any(good):
        raise ValueError(f"{source} has no rows with finite positions")
    if not good.all():
        warnings.warn(f"{source}: {int((~good).sum())} row(s) with NaN positions dropped "
                      f"(rows {_row_list(np.flatnonzero(~good))})", UserWarning, stacklevel=2)
    out = QTable()
    if "id" in names:
        ids = _floats(catalog[names["id"][0]])
        out["id"] = ids[good].astype(np.int64) if np.all(np.isfinite(ids[good])) else \
            np.arange(1, int(good.sum()) + 1)
    else:
        out["id"] = np.arange(1, int(good.sum()) + 1)
    out["x_init"] = x[good]
    out["y_init"] = y[good]
    fcol = _first(names, _FLUX_NAMES)
    if fcol is not None:
        flux = _floats(catalog[names[fcol][0]])[good]
        if np.all(np.isfinite(flux)):
            out["flux_init"] = flux
    out.meta["coords"] = "sky" if use_sky else "pixel"
    return out


def _warn_pixel_sky_disagree(catalog, names, xcol, ycol, x, y, source):
    px = _floats(catalog[names[xcol][0]])
    py = _floats(catalog[names[ycol][0]])
    d = np.hypot(px - x, py - y)
    d = d[np.isfinite(d)]
    if d.size and np.median(d) > 0.5:
        warnings.warn(f"{source}: its x/y differ from its ra/dec on this image by "
                      f"{np.median(d):.3g} px (median); using ra/dec (--init-coords pixel "
                      "uses x/y)", UserWarning, stacklevel=3)


def add_sky_columns(table, wcs):
    """Add ICRS ``ra``/``dec`` (degrees) of ``x_fit``/``y_fit`` through ``wcs``.

    The WCS frame (ICRS, FK5, FK4, galactic, ...) is transformed to ICRS; the table's meta
    records ``sky_frame: icrs`` and the WCS's own frame as ``wcs_frame``.

    Parameters
    ----------
    table : QTable
        With ``x_fit`` and ``y_fit``; modified in place.
    wcs : astropy WCS
        Celestial.

    Examples
    --------
    >>> from astropy.table import QTable
    >>> from astropy.wcs import WCS
    >>> w = WCS(naxis=2); w.wcs.ctype = ['GLON-TAN', 'GLAT-TAN']; w.wcs.crpix = [1, 1]
    >>> t = QTable({'x_fit': [0.0], 'y_fit': [0.0]})
    >>> add_sky_columns(t, w); t.meta['wcs_frame'], round(float(t['ra'][0].value), 3)
    ('galactic', 266.405)
    """
    import astropy.units as u

    from crowdphot.io.fits import pixel_to_icrs

    ra, dec, frame = pixel_to_icrs(wcs, _floats(table["x_fit"]), _floats(table["y_fit"]))
    table["ra"] = ra * u.deg
    table["dec"] = dec * u.deg
    table.meta["sky_frame"] = "icrs"
    table.meta["wcs_frame"] = frame
    equinox = getattr(getattr(wcs, "wcs", None), "equinox", np.nan)
    if frame in ("fk4", "fk5", "fk4noeterms") and np.isfinite(equinox):
        table.meta["wcs_equinox"] = float(equinox)
