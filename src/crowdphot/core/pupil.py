"""Pupil geometry of the JWST-like telescope: 18 hexagonal segments, secondary and struts.

Split from :mod:`crowdphot.core.optics` (which re-exports these names); see its docstring for
the physical model. Arrays are ``[y, x]``; lengths in metres.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["segment_centers", "jwst_pupil", "circular_pupil"]

SEGMENT_FLAT_TO_FLAT = 1.32
SEGMENT_GAP = 0.007
SECONDARY_DIAMETER = 0.74
STRUT_WIDTH = 0.12
STRUT_ANGLES_DEG = (90.0, 240.0, 300.0)  # from +x towards +y
PUPIL_GRID_SIZE = 6.656  # side of the square pupil grid
DEFAULT_PUPIL_NPIX = 384
PUPIL_SUPERSAMPLE = 8


def _hex_basis(pitch):
    """Lattice vectors of flat-topped hexagons: columns along y, neighbours at 30 degrees."""
    return np.array([pitch * math.sqrt(3) / 2, pitch / 2]), np.array([0.0, pitch])


def segment_centers(*, flat_to_flat=SEGMENT_FLAT_TO_FLAT, gap=SEGMENT_GAP):
    """Centres of the 18 hexagonal segments, inner ring first, clockwise from the top.

    Returns
    -------
    centers : ndarray of shape (18, 2)
        ``(x, y)`` in metres.

    Examples
    --------
    >>> c = segment_centers()
    >>> c.shape, bool(np.allclose(c[0], [0.0, 1.327]))
    ((18, 2), True)
    """
    a1, a2 = _hex_basis(flat_to_flat + gap)
    cells = []
    for q in range(-2, 3):
        for r in range(-2, 3):
            ring = (abs(q) + abs(r) + abs(q + r)) // 2
            if ring in (1, 2):
                xy = q * a1 + r * a2
                clockwise = math.atan2(xy[0], xy[1]) % (2 * math.pi)
                cells.append((ring, round(clockwise, 9), xy))
    cells.sort(key=lambda c: (c[0], c[1]))
    return np.array([c[2] for c in cells])


def _segment_lookup(pitch, x, y):
    """Segment index (-1 for none) of the nearest lattice cell and the offset from its centre."""
    x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    a1, a2 = _hex_basis(pitch)
    # fractional axial coordinates, then cube rounding to the nearest hexagon
    q = x / a1[0]
    r = (y - q * a1[1]) / pitch
    s = -q - r
    qi, ri, si = np.round(q), np.round(r), np.round(s)
    dq, dr, ds = np.abs(qi - q), np.abs(ri - r), np.abs(si - s)
    fix_q = (dq > dr) & (dq > ds)
    fix_r = ~fix_q & (dr > ds)
    qi = np.where(fix_q, -ri - si, qi)
    ri = np.where(fix_r, -qi - si, ri)
    ox = x - qi * a1[0]
    oy = y - qi * a1[1] - ri * a2[1]
    centers = segment_centers(flat_to_flat=pitch - SEGMENT_GAP, gap=SEGMENT_GAP)
    table = np.full((5, 5), -1, dtype=np.int64)
    for idx, (cx, cy) in enumerate(centers):
        cq = round(cx / a1[0])
        cr = round((cy - cq * a1[1]) / pitch)
        table[cq + 2, cr + 2] = idx
    inside = (np.abs(qi) <= 2) & (np.abs(ri) <= 2)
    seg = np.full(x.shape, -1, dtype=np.int64)
    seg[inside] = table[qi[inside].astype(np.int64) + 2, ri[inside].astype(np.int64) + 2]
    return seg, ox, oy


def _inside_hexagon(ox, oy, flat_to_flat):
    half = flat_to_flat / 2
    c30 = math.sqrt(3) / 2
    return (
        (np.abs(oy) <= half)
        & (np.abs(c30 * ox + 0.5 * oy) <= half)
        & (np.abs(c30 * ox - 0.5 * oy) <= half)
    )


def _clear(x, y):
    """True where the point (x, y) [m] of the entrance pupil transmits light."""
    pitch = SEGMENT_FLAT_TO_FLAT + SEGMENT_GAP
    seg, ox, oy = _segment_lookup(pitch, x, y)
    clear = (seg >= 0) & _inside_hexagon(ox, oy, SEGMENT_FLAT_TO_FLAT)
    clear &= np.hypot(x, y) > SECONDARY_DIAMETER / 2
    for angle in np.deg2rad(STRUT_ANGLES_DEG):
        along = x * math.cos(angle) + y * math.sin(angle)
        across = -x * math.sin(angle) + y * math.cos(angle)
        clear &= ~((along > 0) & (np.abs(across) < STRUT_WIDTH / 2))
    return clear


def _clear_fraction(axis, iy, ix, dx, supersample):
    """Clear fraction of pixels ``(iy[k], ix[k])`` measured on a ``supersample**2`` sub-grid."""
    sub = (np.arange(supersample) - (supersample - 1) / 2) * (dx / supersample)
    sy, sx = np.repeat(sub, supersample), np.tile(sub, supersample)
    out = np.empty(len(iy))
    step = max(1, 65536 // supersample**2)  # bounds the memory of one chunk
    for k in range(0, len(iy), step):
        ys = axis[iy[k:k + step], None] + sy[None, :]
        xs = axis[ix[k:k + step], None] + sx[None, :]
        out[k:k + step] = _clear(xs, ys).mean(axis=1)
    return out


def _pupil_axis(npix, size):
    """Pixel-centre coordinates of a centred square grid of ``npix`` pixels over ``size``."""
    return (np.arange(npix) - (npix - 1) / 2) * (size / npix)


@functools.lru_cache(maxsize=4)
def jwst_pupil(npix=DEFAULT_PUPIL_NPIX, *, size=PUPIL_GRID_SIZE, supersample=PUPIL_SUPERSAMPLE):
    """Transmission and segment map of the JWST-like entrance pupil.

    Parameters
    ----------
    npix : int, optional
        Pupil pixels along each axis.
    size : float, optional
        Side of the square grid in metres (pixel pitch ``size / npix``).
    supersample : int, optional
        Pixels crossed by an edge get the clear fraction of ``supersample**2`` sub-samples
        (the others are classified on a 4 x 4 sub-grid, which is exact for them).

    Returns
    -------
    amplitude : ndarray of shape (npix, npix)
        Clear fraction in [0, 1] (read-only).
    segment : ndarray of int, shape (npix, npix)
        Index of the segment containing each pixel centre (nearest one for gap pixels), -1
        outside the segment rings (read-only).

    Examples
    --------
    >>> amp, seg = jwst_pupil(128)
    >>> amp.shape, int(seg.max())
    ((128, 128), 17)
    """
    npix = int(npix)
    dx = size / npix
    axis = _pupil_axis(npix, size)
    # A coarse 4 x 4 pass finds every pixel touched by an edge (a 7 mm gap always contains a
    # sample of a 4.3 mm lattice); only those and their neighbours get the fine sub-grid.
    iy, ix = np.indices((npix, npix)).reshape(2, -1)
    coarse = _clear_fraction(axis, iy, ix, dx, 4).reshape(npix, npix)
    mixed = (coarse > 0) & (coarse < 1)
    grown = mixed.copy()
    grown[1:, :] |= mixed[:-1, :]
    grown[:-1, :] |= mixed[1:, :]
    grown[:, 1:] |= mixed[:, :-1]
    grown[:, :-1] |= mixed[:, 1:]
    iy, ix = np.nonzero(grown)
    amplitude = coarse
    amplitude[iy, ix] = _clear_fraction(axis, iy, ix, dx, supersample)
    pitch = SEGMENT_FLAT_TO_FLAT + SEGMENT_GAP
    segment, _, _ = _segment_lookup(pitch, axis[None, :], axis[:, None])
    amplitude.flags.writeable = False
    segment.flags.writeable = False
    return amplitude, segment


def circular_pupil(npix, diameter, *, size=None, obscuration=0.0, supersample=PUPIL_SUPERSAMPLE):
    """Anti-aliased transmission of a (possibly centrally obscured) circular aperture.

    Parameters
    ----------
    npix : int
        Pupil pixels along each axis.
    diameter : float
        Aperture diameter in metres.
    size : float, optional
        Side of the grid in metres; default ``diameter`` (aperture touching the edges).
    obscuration : float, optional
        Diameter of a central obscuration in metres.
    supersample : int, optional
        Sub-samples per pixel and axis used for the grey edge pixels.

    Returns
    -------
    amplitude : ndarray of shape (npix, npix)

    Examples
    --------
    >>> amp = circular_pupil(64, 1.0)
    >>> round(float(amp.sum()) * (1.0 / 64) ** 2, 3)  # pi / 4
    0.785
    """
    size = diameter if size is None else size
    dx = size / npix
    axis = _pupil_axis(npix, size)
    sub = (np.arange(supersample) - (supersample - 1) / 2) * (dx / supersample)
    fine = (axis[:, None] + sub[None, :]).ravel()
    r = np.hypot(fine[None, :], fine[:, None])
    clear = (r <= diameter / 2) & (r > obscuration / 2)
    return clear.reshape(npix, supersample, npix, supersample).mean(axis=(1, 3))
