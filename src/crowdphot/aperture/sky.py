"""Circular apertures in sky coordinates, as photutils' SkyCircularAperture/SkyCircularAnnulus.

A sky aperture holds ``SkyCoord`` position(s) and angular radii; :meth:`to_pixel` converts it
with a WCS to the pixel aperture (radii scaled by the local pixel scale at the first position).
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord

from crowdphot.aperture.core import CircularAnnulus, CircularAperture, checked_property

__all__ = ["SkyCircularAperture", "SkyCircularAnnulus"]


def _as_angle(name, value):
    if not isinstance(value, u.Quantity) or value.ndim != 0:
        raise TypeError(f"'{name}' must be a scalar angular Quantity, got {value!r}")
    if value.unit.physical_type != "angle":
        raise ValueError(f"'{name}' must have angular units, got {value.unit}")
    if not (np.isfinite(value.value) and value.value > 0):
        raise ValueError(f"'{name}' must be greater than zero, got {value}")
    return value


def _pixel_scale(positions, wcs):
    """Local pixel scale (angle per pixel) at the first position."""
    first = positions if positions.isscalar else positions[0]
    x0, y0 = wcs.world_to_pixel(first)
    offset = first.directional_offset_by(0 * u.deg, 1 * u.arcsec)
    x1, y1 = wcs.world_to_pixel(offset)
    return (1 * u.arcsec) / np.hypot(x1 - x0, y1 - y0)


class _SkyCircularBase:
    _params = ("positions",)

    @property
    def positions(self):
        """The centre(s) as a SkyCoord."""
        return self._positions

    @positions.setter
    def positions(self, value):
        if not isinstance(value, SkyCoord):
            raise TypeError("'positions' must be a SkyCoord instance")
        self._positions = value

    @property
    def isscalar(self):
        """True for a single position."""
        return self._positions.isscalar

    @property
    def shape(self):
        """``()`` for a single position, ``(n,)`` otherwise."""
        return self._positions.shape

    def __len__(self):
        if self.isscalar:
            raise TypeError(f"A scalar {type(self).__name__!r} object has no len()")
        return self._positions.shape[0]

    def __getitem__(self, index):
        if self.isscalar:
            raise TypeError(f"A scalar {type(self).__name__!r} object cannot be indexed")
        kwargs = {p: getattr(self, p) for p in self._params}
        kwargs["positions"] = self._positions[index]
        return type(self)(**kwargs)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        if self.shape != other.shape:
            return False
        same = np.all(self._positions.separation(other._positions) == 0)
        return bool(same) and all(np.all(getattr(self, p) == getattr(other, p))
                                  for p in self._params[1:])

    __hash__ = None

    def __repr__(self):
        extra = ", ".join(f"{p}={getattr(self, p)}" for p in self._params[1:])
        return f"<{type(self).__name__}({self._positions!r}, {extra})>"

    def __str__(self):
        lines = [f"Aperture: {type(self).__name__}", f"positions: {self._positions!r}"]
        lines += [f"{p}: {getattr(self, p)}" for p in self._params[1:]]
        return "\n".join(lines)

    def copy(self):
        """An independent copy."""
        return type(self)(**{p: getattr(self, p).copy() for p in self._params})


class SkyCircularAperture(_SkyCircularBase):
    """A circular aperture at sky position(s).

    Parameters
    ----------
    positions : SkyCoord
        Centre(s).
    r : Quantity
        Angular radius (> 0).

    Examples
    --------
    >>> ap = SkyCircularAperture(SkyCoord(10, 20, unit='deg'), r=3 * u.arcsec)
    >>> ap.r
    <Quantity 3. arcsec>
    """

    _params = ("positions", "r")

    def __init__(self, positions, r):
        self.positions = positions
        self.r = r

    r = checked_property("r", _as_angle, "Angular radius.")

    def to_pixel(self, wcs):
        """The :class:`CircularAperture` for ``wcs`` (a WCS with ``world_to_pixel``)."""
        x, y = wcs.world_to_pixel(self._positions)
        scale = _pixel_scale(self._positions, wcs)
        xy = (float(x), float(y)) if self.isscalar else np.transpose((x, y))
        return CircularAperture(xy, r=float((self._r / scale).to_value(u.one)))


class SkyCircularAnnulus(_SkyCircularBase):
    """A circular annulus at sky position(s).

    Parameters
    ----------
    positions : SkyCoord
        Centre(s).
    r_in, r_out : Quantity
        Inner and outer angular radii (``0 < r_in < r_out``).

    Examples
    --------
    >>> an = SkyCircularAnnulus(SkyCoord(10, 20, unit='deg'), 3 * u.arcsec, 5 * u.arcsec)
    >>> an.r_out
    <Quantity 5. arcsec>
    """

    _params = ("positions", "r_in", "r_out")

    def __init__(self, positions, r_in, r_out):
        self.positions = positions
        self.r_in = r_in
        try:
            self.r_out = r_out
        except ValueError as exc:
            if "angular units" in str(exc):
                raise
            raise ValueError("'r_out' must be greater than 'r_in'") from exc
        if not self._r_out > self._r_in:
            raise ValueError("'r_out' must be greater than 'r_in'")

    r_in = checked_property("r_in", _as_angle, "Inner angular radius.")

    r_out = checked_property("r_out", _as_angle, "Outer angular radius.")

    def to_pixel(self, wcs):
        """The :class:`CircularAnnulus` for ``wcs``."""
        x, y = wcs.world_to_pixel(self._positions)
        scale = _pixel_scale(self._positions, wcs)
        xy = (float(x), float(y)) if self.isscalar else np.transpose((x, y))
        return CircularAnnulus(xy, r_in=float((self._r_in / scale).to_value(u.one)),
                               r_out=float((self._r_out / scale).to_value(u.one)))
