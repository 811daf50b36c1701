"""First-principles optics of a JWST-like telescope and NIRCam-like detectors.

This module computes effective PSFs (ePSFs) for the built-in PSF grid
(:func:`crowdphot.datasets.jwst.jwst_like_psf_grid`) from a physical model, with numpy only:

1. **Pupil.** An 18-segment primary: flat-topped hexagons of 1.32 m flat to flat on a
   hexagonal lattice with 7 mm gaps (two rings around a missing central segment, 6.6 m tip to
   tip), a 0.74 m secondary-mirror obscuration and three 0.12 m struts (one vertical, two at
   30 degrees either side of the downward vertical, parallel to segment edges, which gives the
   familiar 6 + 2 diffraction spikes). The pupil is sampled on a 17 mm grid (384 pixels; finer
   when a large field of view needs it); each pixel holds its clear fraction measured on an
   8 x 8 sub-grid, so the 7 mm gaps and the strut edges are represented as grey levels rather
   than lost between samples. Light that the gaps diffract to very wide angles is lost from
   the field, as in the real telescope.
2. **Wavefront.** Low-order Zernike terms (Noll 4-13: defocus, astigmatism, coma, trefoil,
   spherical, secondary astigmatism) whose coefficients follow third-order (Seidel-like) field
   dependence over the telescope field, plus a per-detector focus offset and tilt, plus a fixed
   piston / tip / tilt per segment. Everything is a fixed table: no random numbers anywhere.
   The total is a few tens of nm rms.
3. **Polychromatic diffraction.** For each of ``nwaves`` wavelengths across the filter band,
   weighted by a smooth top-hat throughput, the focal-plane field is the matrix Fourier
   transform (MFT) of the pupil field, evaluated directly on the oversampled detector grid.
4. **Detector.** The intensity is convolved with the pixel box (which turns the PSF into an
   ePSF), a Gaussian for charge diffusion plus pointing jitter, and a 3 x 3 inter-pixel
   capacitance (IPC) kernel.

Normalisation follows STPSF grids: the optical PSF integrates to 1 over the whole sky (the
entrance pupil passes unit flux), and the oversampled ePSF array is multiplied by
``oversampling**2``, so it sums to ``oversampling**2`` times the fraction of light inside the
field of view.

Not modelled: geometric distortion and detector rotation, mid/high spatial frequency mirror
figure errors, time variability, post-pixel coupling and brighter-fatter effects. Pupil ``y``
is taken parallel to detector ``y``.

Arrays are ``[y, x]``; the ePSF is centred on the array centre, ``((n - 1) / 2, (n - 1) / 2)``
in oversampled pixels (the centre of the central detector pixel for odd ``fov_pixels``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from crowdphot.core.pupil import (  # noqa: F401 - re-exported
    DEFAULT_PUPIL_NPIX,
    PUPIL_GRID_SIZE,
    PUPIL_SUPERSAMPLE,
    SECONDARY_DIAMETER,
    SEGMENT_FLAT_TO_FLAT,
    SEGMENT_GAP,
    STRUT_ANGLES_DEG,
    STRUT_WIDTH,
    _pupil_axis,
    _segment_lookup,
    circular_pupil,
    jwst_pupil,
    segment_centers,
)

__all__ = [
    "OPTICS_MODEL_VERSION",
    "FILTERS",
    "DETECTORS",
    "noll_to_nm",
    "zernike",
    "segment_centers",
    "jwst_pupil",
    "circular_pupil",
    "mft",
    "monochromatic_psf",
    "filter_wavelengths",
    "wavefront_coefficients",
    "wavefront_map",
    "detector_kernel_1d",
    "check_grid_args",
    "jwst_like_epsf",
]

#: Bump whenever a change alters the computed ePSFs: cached grid files carry it in their name.
OPTICS_MODEL_VERSION = 2

ARCSEC = math.pi / (180.0 * 3600.0)  # radians per arcsecond

# -- telescope geometry (metres) -------------------------------------------------------------
ZERNIKE_RADIUS = 3.34  # just encloses the outermost segment corners
TELESCOPE_DIAMETER = 6.5  # for the header's lambda / D only

# -- detectors -------------------------------------------------------------------------------
DETECTOR_NPIX = 2048
SW_PIXEL_SCALE = 0.031  # arcsec / pixel
LW_PIXEL_SCALE = 0.063
JITTER_SIGMA = 0.0008  # arcsec per axis
# Gaussian charge diffusion sigmas (arcsec); the values STPSF adopts for NIRCam.
CHARGE_DIFFUSION = {"SW": 0.0062, "LW": 0.018}
# Fraction of a pixel's charge seen by each edge / corner neighbour (typical NIRCam IPC).
IPC_SIDE = 0.0055
IPC_DIAGONAL = 0.0007

#: filter -> (channel, half-power cut-on [um], half-power cut-off [um], number of wavelengths)
#: Every NIRCam imaging filter: wide (W), extra wide (W2), medium (M) and narrow (N) bands,
#: the edges from the published pivot wavelengths and bandwidths (pivot -+ width / 2; the
#: wide filters from their half-power points). F162M, F164N (short wave) and F323N, F405N,
#: F466N, F470N (long wave) sit in the pupil wheel and are used behind F150W2, F322W2 or
#: F444W; the header's PUPIL names them.
FILTERS = {
    "F070W": ("SW", 0.624, 0.781, 9),
    "F090W": ("SW", 0.795, 1.005, 9),
    "F115W": ("SW", 1.013, 1.282, 9),
    "F140M": ("SW", 1.333, 1.475, 5),
    "F150W": ("SW", 1.331, 1.668, 9),
    "F150W2": ("SW", 1.058, 2.285, 15),
    "F162M": ("SW", 1.542, 1.710, 5),
    "F164N": ("SW", 1.634, 1.654, 3),
    "F182M": ("SW", 1.726, 1.964, 5),
    "F187N": ("SW", 1.862, 1.886, 3),
    "F200W": ("SW", 1.755, 2.226, 9),
    "F210M": ("SW", 1.991, 2.196, 5),
    "F212N": ("SW", 2.107, 2.134, 3),
    "F250M": ("LW", 2.413, 2.594, 5),
    "F277W": ("LW", 2.416, 3.127, 9),
    "F300M": ("LW", 2.837, 3.155, 5),
    "F322W2": ("LW", 2.578, 3.917, 15),
    "F323N": ("LW", 3.218, 3.256, 3),
    "F335M": ("LW", 3.192, 3.539, 5),
    "F356W": ("LW", 3.140, 3.980, 9),
    "F360M": ("LW", 3.435, 3.807, 5),
    "F405N": ("LW", 4.032, 4.078, 3),
    "F410M": ("LW", 3.874, 4.310, 5),
    "F430M": ("LW", 4.166, 4.394, 5),
    "F444W": ("LW", 3.880, 4.986, 9),
    "F460M": ("LW", 4.510, 4.738, 5),
    "F466N": ("LW", 4.627, 4.681, 3),
    "F470N": ("LW", 4.682, 4.733, 3),
    "F480M": ("LW", 4.683, 4.986, 5),
}

#: filters mounted in the pupil wheel: a header's PUPIL value that is the effective filter
PUPIL_FILTERS = ("F162M", "F164N", "F323N", "F405N", "F466N", "F470N")

#: the detector used when a filter is asked for without one, per channel
DEFAULT_DETECTORS = {"SW": "NRCA1", "LW": "NRCA5"}

#: detector -> (channel, field-centre x [arcsec], field-centre y [arcsec],
#:              focus offset [nm], focus slope along x, along y [nm from centre to edge])
#: Field coordinates are relative to the telescope optical axis: NIRCam sits ~8 arcmin off
#: axis, module A at -x and module B at +x, each a 2 x 2 mosaic of short-wave detectors
#: (A2 A4 B3 B1 on top, A1 A3 B4 B2 below) overlapped by one long-wave detector.
DETECTORS = {
    "NRCA1": ("SW", -122.25, -524.25, 4.0, 6.0, -10.0),
    "NRCA2": ("SW", -122.25, -455.75, -3.0, -8.0, 4.0),
    "NRCA3": ("SW", -53.75, -524.25, 6.0, 10.0, 8.0),
    "NRCA4": ("SW", -53.75, -455.75, -5.0, 4.0, -6.0),
    "NRCB1": ("SW", 122.25, -455.75, 2.0, -10.0, -8.0),
    "NRCB2": ("SW", 122.25, -524.25, -4.0, 8.0, 10.0),
    "NRCB3": ("SW", 53.75, -455.75, 5.0, -6.0, 6.0),
    "NRCB4": ("SW", 53.75, -524.25, -6.0, -4.0, -10.0),
    "NRCA5": ("LW", -88.0, -490.0, 3.0, 8.0, -8.0),
    "NRCB5": ("LW", 88.0, -490.0, -3.0, -8.0, 8.0),
}

# Field dependence of the Zernike coefficients (nm rms, Noll normalisation) over the
# telescope field h = (hx, hy) = field / FIELD_RADIUS, h = |h|, phi = its angle:
#   defocus     Z4:      a + b * (h^2 - 0.6)          (field curvature)
#   astigmatism Z6, Z5:  static + c * h^2 (cos, sin)(2 phi)
#   coma        Z8, Z7:  static + d * h (cos, sin)(phi)
#   the rest:            static (+ e * h^2 for spherical)
FIELD_RADIUS = 600.0  # arcsec
_DEFOCUS = (10.0, 22.0)
_ASTIG_STATIC = (8.0, -6.0)  # Z6, Z5
_ASTIG_FIELD = 28.0
_COMA_STATIC = (5.0, -4.0)  # Z8, Z7
_COMA_FIELD = 14.0
_STATIC_TERMS = {9: 9.0, 10: -7.0, 11: 6.0, 12: 3.0, 13: -2.0}
_SPHERICAL_FIELD = 3.0

# Segment piston, x tip and y tilt (nm of wavefront; tips are the OPD at the segment's flat
# edge), one row per segment in the order of ``segment_centers``.
_SEGMENT_PTT = np.array(
    [
        [12, -6, 4], [-8, 5, -7], [5, 9, 3], [-14, -3, -8], [9, 7, 6], [-3, -9, -2],
        [16, 4, -5], [-11, -7, 8], [7, 2, 10], [-6, 10, -4], [2, -8, -9], [-15, 6, 3],
        [10, -4, 7], [-4, 8, -6], [13, -10, 2], [-9, 3, 9], [4, -5, -10], [-7, 7, 5],
    ],
    dtype=float,
)


# == Zernike polynomials =====================================================================
def noll_to_nm(j):
    """Radial order ``n`` and signed azimuthal order ``m`` of Noll index ``j``.

    Positive ``m`` is the cosine term, negative ``m`` the sine term.

    Examples
    --------
    >>> [noll_to_nm(j) for j in (1, 4, 5, 6, 8, 11)]
    [(0, 0), (2, 0), (2, -2), (2, 2), (3, 1), (4, 0)]
    """
    j = int(j)
    if j < 1:
        raise ValueError(f"Noll index j must be >= 1, got {j}")
    n = 0
    while j > (n + 1) * (n + 2) // 2:
        n += 1
    k = j - n * (n + 1) // 2 - 1
    parity = n % 2
    m = parity + 2 * ((k + 1 - parity) // 2)
    if m != 0 and j % 2 == 1:
        m = -m
    return n, m


def zernike(j, rho, theta):
    """Noll-normalised Zernike polynomial ``Z_j`` (unit rms over the unit disc).

    Parameters
    ----------
    j : int
        Noll index (1 = piston, 4 = defocus, 11 = primary spherical, ...).
    rho, theta : ndarray
        Polar coordinates; ``rho`` is normalised to the unit disc (values beyond 1 are
        evaluated by the same polynomial).

    Returns
    -------
    z : ndarray of the broadcast shape of ``rho`` and ``theta``

    Examples
    --------
    >>> float(zernike(4, np.array(1.0), np.array(0.0)))  # sqrt(3) * (2 rho^2 - 1)
    1.7320508075688772
    """
    n, m = noll_to_nm(j)
    rho = np.asarray(rho, dtype=float)
    mabs = abs(m)
    radial = np.zeros_like(rho)
    for s in range((n - mabs) // 2 + 1):
        coef = (-1) ** s * math.factorial(n - s) / (
            math.factorial(s)
            * math.factorial((n + mabs) // 2 - s)
            * math.factorial((n - mabs) // 2 - s)
        )
        radial = radial + coef * rho ** (n - 2 * s)
    if m == 0:
        return math.sqrt(n + 1) * radial
    angular = np.cos(mabs * theta) if m > 0 else np.sin(mabs * theta)
    return math.sqrt(2 * (n + 1)) * radial * angular


# == diffraction =============================================================================
def mft(field, *, pupil_pixel, wavelength, angular_pixel, shape):
    """Matrix Fourier transform of a pupil field onto a centred focal-plane grid.

    Evaluates ``E(ty, tx) = sum_{y, x} field[y, x] exp(-2 pi i (x tx + y ty) / wavelength)``
    with pupil coordinates on pixel centres of a centred grid and focal-plane angles
    ``t = (k - (n - 1) / 2) * angular_pixel``. Unlike an FFT the output sampling and extent
    are free, so the detector grid is computed directly without zero padding.

    Parameters
    ----------
    field : ndarray of shape (N, N)
        Complex pupil field.
    pupil_pixel : float
        Pupil pixel pitch in metres.
    wavelength : float
        In metres.
    angular_pixel : float
        Focal-plane sample spacing in radians.
    shape : (ny, nx)
        Output shape.

    Returns
    -------
    E : ndarray of complex, shape (ny, nx)

    Examples
    --------
    >>> E = mft(np.ones((8, 8)), pupil_pixel=0.1, wavelength=1e-6, angular_pixel=1e-7,
    ...         shape=(5, 5))
    >>> E.shape, complex(E[2, 2])
    ((5, 5), (64+0j))
    """
    ny_in, nx_in = field.shape
    ny, nx = shape
    xp = (np.arange(nx_in) - (nx_in - 1) / 2) * pupil_pixel
    yp = (np.arange(ny_in) - (ny_in - 1) / 2) * pupil_pixel
    tx = (np.arange(nx) - (nx - 1) / 2) * angular_pixel
    ty = (np.arange(ny) - (ny - 1) / 2) * angular_pixel
    # complex64 input keeps single precision (twice as fast; ample for intensities)
    cdtype = np.result_type(field.dtype, np.complex64)
    ax = np.exp((-2j * np.pi / wavelength) * np.outer(tx, xp)).astype(cdtype, copy=False)
    ay = np.exp((-2j * np.pi / wavelength) * np.outer(ty, yp)).astype(cdtype, copy=False)
    return ay @ (field.astype(cdtype, copy=False) @ ax.T)


def _intensity_scale(amplitude, pupil_pixel, wavelength, angular_pixel):
    # (dx * dtheta / lambda)^2 turns |MFT|^2 into energy per sample (discrete Parseval). The
    # entrance pupil passes unit flux through its clear area sum(amplitude) * dx^2; grey edge
    # pixels put only sum(amplitude^2) of it within lambda / dx, the rest (light diffracted
    # by the gaps to very wide angles) never reaches the detector grid.
    return (pupil_pixel * angular_pixel / wavelength) ** 2 / np.sum(amplitude)


def monochromatic_psf(amplitude, opd, *, pupil_pixel, wavelength, angular_pixel, shape):
    """Monochromatic PSF sampled on a centred grid, normalised to unit flux over the sky.

    Each value is the intensity at the sample point times the sample area, so the values sum
    to the fraction of the light falling in the grid (1 for an infinite, well-sampled grid).

    Parameters
    ----------
    amplitude : ndarray of shape (N, N)
        Pupil transmission in [0, 1].
    opd : ndarray of shape (N, N) or None
        Wavefront error (optical path difference) in metres.
    pupil_pixel, wavelength, angular_pixel, shape
        As in :func:`mft`.

    Returns
    -------
    psf : ndarray of shape ``shape``

    Examples
    --------
    >>> amp = circular_pupil(32, 1.0)
    >>> psf = monochromatic_psf(amp, None, pupil_pixel=1 / 32, wavelength=1e-6,
    ...                         angular_pixel=0.25e-6, shape=(41, 41))
    >>> bool(psf.sum() > 0.9)
    True
    """
    amplitude = np.asarray(amplitude, dtype=float)
    if opd is None:
        field = amplitude.astype(complex)
    else:
        field = amplitude * np.exp((2j * np.pi / wavelength) * np.asarray(opd, dtype=float))
    e = mft(field, pupil_pixel=pupil_pixel, wavelength=wavelength,
            angular_pixel=angular_pixel, shape=shape)
    scale = _intensity_scale(amplitude, pupil_pixel, wavelength, angular_pixel)
    return (e.real**2 + e.imag**2) * scale


def filter_wavelengths(filter_name, nwaves=None):
    """Wavelengths and weights sampling a filter band.

    The throughput is a smooth top-hat between the half-power points (edges of width 1% of
    the central wavelength, a 10% rise towards the red as for a detector's quantum
    efficiency); a source flat in photons per unit wavelength is assumed. Wavelengths are the
    centres of ``nwaves`` equal bins spanning the band.

    Returns
    -------
    wavelengths : ndarray of shape (nwaves,)
        In metres.
    weights : ndarray of shape (nwaves,)
        Sum to 1.

    Examples
    --------
    >>> wl, w = filter_wavelengths('F200W')
    >>> len(wl), round(float(w.sum()), 12), bool(1.7e-6 < wl.min() < wl.max() < 2.3e-6)
    (9, 1.0, True)
    """
    _, lo, hi, default_n = FILTERS[_check_choice("filter", filter_name, list(FILTERS))]
    n = default_n if nwaves is None else _check_int("nwaves", nwaves, minimum=1)
    centre = 0.5 * (lo + hi)
    edge = 0.01 * centre
    bins = np.linspace(lo - edge, hi + edge, n + 1)
    wl = 0.5 * (bins[1:] + bins[:-1])
    throughput = 0.5 * (np.tanh((wl - lo) / edge) - np.tanh((wl - hi) / edge))
    throughput *= 1.0 + 0.1 * (wl - centre) / (hi - lo)
    return wl * 1e-6, throughput / throughput.sum()


# == wavefront model =========================================================================
def wavefront_coefficients(detector, x, y):
    """Zernike coefficients (nm rms, Noll 4-13) of the wavefront at a detector position.

    Parameters
    ----------
    detector : str
        Key of :data:`DETECTORS`.
    x, y : float
        Detector pixel position (0-based, 0 .. 2047).

    Returns
    -------
    coeffs : dict
        Noll index -> coefficient in nm.

    Examples
    --------
    >>> c = wavefront_coefficients('NRCA1', 1023.5, 1023.5)
    >>> sorted(c)
    [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    """
    detector = _check_choice("detector", detector, list(DETECTORS))
    channel, cx, cy, focus, slope_x, slope_y = DETECTORS[detector]
    scale = SW_PIXEL_SCALE if channel == "SW" else LW_PIXEL_SCALE
    half = (DETECTOR_NPIX - 1) / 2
    u, v = (x - half) / half, (y - half) / half  # -1 .. 1 across the detector
    hx = (cx + (x - half) * scale) / FIELD_RADIUS
    hy = (cy + (y - half) * scale) / FIELD_RADIUS
    h2 = hx * hx + hy * hy
    phi = math.atan2(hy, hx)
    h = math.sqrt(h2)
    coeffs = {
        4: _DEFOCUS[0] + _DEFOCUS[1] * (h2 - 0.6) + focus + slope_x * u + slope_y * v,
        6: _ASTIG_STATIC[0] + _ASTIG_FIELD * h2 * math.cos(2 * phi),
        5: _ASTIG_STATIC[1] + _ASTIG_FIELD * h2 * math.sin(2 * phi),
        8: _COMA_STATIC[0] + _COMA_FIELD * h * math.cos(phi),
        7: _COMA_STATIC[1] + _COMA_FIELD * h * math.sin(phi),
    }
    coeffs.update(_STATIC_TERMS)
    coeffs[11] += _SPHERICAL_FIELD * h2
    return dict(sorted(coeffs.items()))


@functools.lru_cache(maxsize=2)
def _wavefront_basis(npix):
    """Zernike maps (Noll 4-13) and the segment piston/tip/tilt map on the pupil grid, in m."""
    axis = _pupil_axis(npix, PUPIL_GRID_SIZE)
    x, y = np.meshgrid(axis, axis)
    rho = np.hypot(x, y) / ZERNIKE_RADIUS
    theta = np.arctan2(y, x)
    basis = np.stack([zernike(j, rho, theta) for j in range(4, 14)]) * 1e-9
    _, segment = jwst_pupil(npix)
    centers = segment_centers()
    ptt = _SEGMENT_PTT - [_SEGMENT_PTT[:, 0].mean(), 0.0, 0.0]
    valid = segment >= 0
    idx = segment[valid]
    half = SEGMENT_FLAT_TO_FLAT / 2
    seg_opd = np.zeros((npix, npix))
    seg_opd[valid] = (
        ptt[idx, 0]
        + ptt[idx, 1] * (x[valid] - centers[idx, 0]) / half
        + ptt[idx, 2] * (y[valid] - centers[idx, 1]) / half
    ) * 1e-9
    basis.flags.writeable = False
    seg_opd.flags.writeable = False
    return basis, seg_opd


def _remove_tilt(opd, amplitude, pixel):
    """Subtract the mean wavefront gradient and the mean piston over the clear pupil.

    The PSF centroid is proportional to the mean gradient, so this centres the optical PSF on
    the optical axis (as tip/tilt-removed STPSF OPD maps do). Gradients use only pixels whose
    neighbours are fully clear, so segment pistons across gaps do not count as slopes.
    """
    full = amplitude >= 1.0
    inner = full.copy()
    inner[1:-1, 1:-1] &= full[:-2, 1:-1] & full[2:, 1:-1] & full[1:-1, :-2] & full[1:-1, 2:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    gy, gx = np.gradient(opd, pixel)
    axis = _pupil_axis(opd.shape[0], opd.shape[0] * pixel)
    tilt_x = gx[inner].mean() * axis[None, :]
    tilt_y = gy[inner].mean() * axis[:, None]
    opd = opd - tilt_x - tilt_y
    return opd - np.sum(opd * amplitude) / np.sum(amplitude)


def wavefront_map(detector, x, y, *, npix=DEFAULT_PUPIL_NPIX):
    """Wavefront error (OPD) map in metres on the pupil grid of :func:`jwst_pupil`.

    The Zernike terms of :func:`wavefront_coefficients` plus the segment piston / tip / tilt,
    with the mean piston and the mean wavefront slope removed (so the PSF is centred).

    Parameters
    ----------
    detector : str
        Key of :data:`DETECTORS`.
    x, y : float
        Detector pixel position.
    npix : int, optional
        Pupil pixels per axis.

    Returns
    -------
    opd : ndarray of shape (npix, npix)

    Examples
    --------
    >>> opd = wavefront_map('NRCA1', 0, 0, npix=128)
    >>> amp, _ = jwst_pupil(128)
    >>> 10e-9 < float(np.sqrt(np.average(opd**2, weights=amp))) < 100e-9
    True
    """
    basis, seg_opd = _wavefront_basis(npix)
    coeffs = np.array(list(wavefront_coefficients(detector, x, y).values()))
    opd = np.tensordot(coeffs, basis, axes=1) + seg_opd
    amplitude, _ = jwst_pupil(npix)
    return _remove_tilt(opd, amplitude, PUPIL_GRID_SIZE / npix)


# == detector ================================================================================
def _normal_cdf(z):
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[float])(np.asarray(z) / math.sqrt(2)))


def detector_kernel_1d(oversampling, sigma):
    """One axis of the separable pixel-response kernel on the oversampled grid.

    The kernel is the unit-width pixel box convolved with a Gaussian of ``sigma`` detector
    pixels (charge diffusion and jitter), sampled every ``1 / oversampling`` pixel and
    normalised to unit sum. With ``sigma -> 0`` it tends to the trapezoid-rule box
    (half weights at the pixel edges for even ``oversampling``).

    Parameters
    ----------
    oversampling : int
    sigma : float
        Gaussian sigma in detector pixels (> 0).

    Returns
    -------
    kernel : ndarray of shape (2 * h + 1,)

    Examples
    --------
    >>> np.round(detector_kernel_1d(4, 1e-6), 3)
    array([0.   , 0.   , 0.125, 0.25 , 0.25 , 0.25 , 0.125, 0.   , 0.   ])
    """
    h = int(math.ceil(oversampling / 2 + 5 * sigma * oversampling)) + 1
    u = np.arange(-h, h + 1) / oversampling
    k = _normal_cdf((u + 0.5) / sigma) - _normal_cdf((u - 0.5) / sigma)
    return k / k.sum()


def _convolution_matrix(kernel, n_out):
    """(n_out, n_out + 2h) matrix applying a centred 1D kernel with a margin of h each side."""
    h = len(kernel) // 2
    mat = np.zeros((n_out, n_out + 2 * h))
    rows = np.arange(n_out)
    for k, w in enumerate(kernel):
        mat[rows, rows + k] = w
    return mat


def _apply_ipc(image, oversampling, n_out):
    """3 x 3 IPC coupling on detector-pixel steps; ``image`` has an ``oversampling`` margin."""
    weights = {0: 1 - 4 * IPC_SIDE - 4 * IPC_DIAGONAL, 1: IPC_SIDE, 2: IPC_DIAGONAL}
    out = np.zeros((n_out, n_out))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            y0 = oversampling * (1 + dy)
            x0 = oversampling * (1 + dx)
            out += weights[abs(dx) + abs(dy)] * image[y0:y0 + n_out, x0:x0 + n_out]
    return out


# == ePSFs ===================================================================================
def _check_choice(name, value, choices):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {value!r}")
    key = value.strip().upper()
    key = {"NRCALONG": "NRCA5", "NRCBLONG": "NRCB5"}.get(key, key)
    if key not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return key


def _check_int(name, value, *, minimum, odd=False, square=False):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if odd and value % 2 == 0:
        raise ValueError(f"{name} must be odd so that the PSF is centred on a pixel, got {value}")
    if square and math.isqrt(value) ** 2 != value:
        raise ValueError(f"{name} must be a perfect square (1, 4, 9, 16, ...), got {value}")
    return value


def check_grid_args(filter_name, detector, num_psfs, fov_pixels, oversampling):
    """Validate and canonicalise the grid parameters shared by the public functions.

    Returns
    -------
    filter_name, detector : str
        Upper case (``'NRCALONG'`` becomes ``'NRCA5'``).
    num_psfs, fov_pixels, oversampling : int

    Examples
    --------
    >>> check_grid_args('f200w', 'nrca1', 16, 101, 4)
    ('F200W', 'NRCA1', 16, 101, 4)
    """
    filt = _check_choice("filter", filter_name, list(FILTERS))
    det = _check_choice("detector", detector, list(DETECTORS))
    if FILTERS[filt][0] != DETECTORS[det][0]:
        channel = FILTERS[filt][0]
        allowed = ", ".join(k for k, v in DETECTORS.items() if v[0] == channel)
        raise ValueError(
            f"detector {det} cannot observe filter {filt} ({channel} channel); use one of {allowed}"
        )
    num_psfs = _check_int("num_psfs", num_psfs, minimum=1, square=True)
    fov_pixels = _check_int("fov_pixels", fov_pixels, minimum=5, odd=True)
    oversampling = _check_int("oversampling", oversampling, minimum=1)
    return filt, det, num_psfs, fov_pixels, oversampling


def _pupil_npix(fov_width_rad, min_wavelength):
    # the sampled pupil's transform repeats every lambda / dx: keep that period > 1.2 x FOV
    need = 1.2 * PUPIL_GRID_SIZE * fov_width_rad / min_wavelength
    return max(DEFAULT_PUPIL_NPIX, 32 * int(math.ceil(need / 32)))


def _epsf_unchecked(filt, det, positions, fov_pixels, oversampling, nwaves=None,
                    progress=None):
    """ePSFs ``(n, fov * os, fov * os)`` at detector ``positions`` ``(n, 2)`` plus metadata.

    Arguments are canonical (see :func:`check_grid_args`). The metadata dict holds the
    physical parameters used: ``pixelscale`` [arcsec], mean ``wavelength`` [m], ``nwaves``,
    ``charge_diffusion`` and ``jitter`` [arcsec], mean rms ``wfe_nm`` and ``pupil_npix``.
    ``progress``, when given, is called once per finished position.
    """
    channel = FILTERS[filt][0]
    pixscale = SW_PIXEL_SCALE if channel == "SW" else LW_PIXEL_SCALE
    sigma_px = math.hypot(CHARGE_DIFFUSION[channel], JITTER_SIGMA) / pixscale
    kernel = detector_kernel_1d(oversampling, sigma_px)
    h = len(kernel) // 2
    n_out = fov_pixels * oversampling
    n_ipc = n_out + 2 * oversampling
    n_opt = n_ipc + 2 * h
    dtheta = pixscale * ARCSEC / oversampling
    wavelengths, weights = filter_wavelengths(filt, nwaves)
    npix = _pupil_npix(n_opt * dtheta, wavelengths.min())
    amplitude, _ = jwst_pupil(npix)
    dx = PUPIL_GRID_SIZE / npix
    support = amplitude > 0
    amp_support = amplitude[support]
    conv = _convolution_matrix(kernel, n_ipc)
    out = np.empty((len(positions), n_out, n_out))
    wfe = []
    for i, (x, y) in enumerate(positions):
        opd = wavefront_map(det, x, y, npix=npix)
        opd_support = opd[support]
        mean = np.average(opd_support, weights=amp_support)
        wfe.append(math.sqrt(np.average((opd_support - mean) ** 2, weights=amp_support)))
        optical = np.zeros((n_opt, n_opt))
        for wl, w in zip(wavelengths, weights, strict=True):
            field = np.zeros((npix, npix), dtype=np.complex64)
            field[support] = amp_support * np.exp((2j * np.pi / wl) * opd_support)
            e = mft(field, pupil_pixel=dx, wavelength=wl, angular_pixel=dtheta,
                    shape=(n_opt, n_opt))
            scale = w * _intensity_scale(amplitude, dx, wl, dtheta)
            optical += (e.real**2 + e.imag**2) * scale
        blurred = conv @ optical @ conv.T
        out[i] = _apply_ipc(blurred, oversampling, n_out) * oversampling**2
        if progress is not None:
            progress()
    meta = {
        "pixelscale": pixscale,
        "wavelength": float(np.sum(wavelengths * weights)),
        "nwaves": len(wavelengths),
        "charge_diffusion": CHARGE_DIFFUSION[channel],
        "jitter": JITTER_SIGMA,
        "wfe_nm": float(np.mean(wfe) * 1e9),
        "pupil_npix": npix,
    }
    return out, meta


def jwst_like_epsf(filter_name, detector, x, y, *, fov_pixels=101, oversampling=4):
    """Oversampled ePSFs of the JWST-like model at detector positions.

    Parameters
    ----------
    filter_name : str
        A key of :data:`FILTERS` (e.g. ``'F200W'``).
    detector : str
        A key of :data:`DETECTORS` of the filter's channel (e.g. ``'NRCA1'``).
    x, y : float or array_like of shape (n,)
        Detector pixel positions.
    fov_pixels : int, optional
        Odd field of view in detector pixels (>= 5).
    oversampling : int, optional
        Samples per detector pixel along each axis.

    Returns
    -------
    epsf : ndarray of shape (n, fov_pixels * oversampling, fov_pixels * oversampling)
        One ePSF per position (no leading axis for scalar ``x, y``), centred on the array
        centre; each sums to ``oversampling**2`` times the fraction of light inside the field.

    Examples
    --------
    >>> epsf = jwst_like_epsf('F444W', 'NRCA5', 1024, 1024, fov_pixels=9, oversampling=2)
    >>> epsf.shape
    (18, 18)
    """
    filt, det, _, fov_pixels, oversampling = check_grid_args(
        filter_name, detector, 1, fov_pixels, oversampling
    )
    xs = np.atleast_1d(np.asarray(x, dtype=float))
    ys = np.atleast_1d(np.asarray(y, dtype=float))
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise ValueError(f"x and y must be scalars or 1D arrays of equal length, got shapes "
                         f"{np.shape(x)} and {np.shape(y)}")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise ValueError("x and y must be finite")
    out, _ = _epsf_unchecked(filt, det, np.column_stack([xs, ys]), fov_pixels, oversampling)
    return out[0] if np.ndim(x) == 0 and np.ndim(y) == 0 else out
