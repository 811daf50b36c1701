"""Unit tests of the optics behind the built-in JWST-like PSF grid (crowdphot.core.optics)."""

import math

import numpy as np
import pytest

from crowdphot.core import optics

LAMBDA = 1e-6  # m


def _half_max_width_1d(profile, step):
    """Full width at half maximum of a centred, single-peaked 1D profile (linear interp)."""
    peak = int(np.argmax(profile))
    half = profile[peak] / 2
    right = peak + int(np.argmax(profile[peak:] < half))
    left = peak - int(np.argmax(profile[peak::-1] < half))
    xr = right - 1 + (profile[right - 1] - half) / (profile[right - 1] - profile[right])
    xl = left + 1 - (profile[left + 1] - half) / (profile[left + 1] - profile[left])
    return (xr - xl) * step


# -- Zernike polynomials ---------------------------------------------------------------------
def test_noll_indices_follow_the_standard_table():
    expected = {1: (0, 0), 2: (1, 1), 3: (1, -1), 4: (2, 0), 5: (2, -2), 6: (2, 2),
                7: (3, -1), 8: (3, 1), 9: (3, -3), 10: (3, 3), 11: (4, 0), 12: (4, 2),
                13: (4, -2), 14: (4, 4), 15: (4, -4), 22: (6, 0)}
    assert {j: optics.noll_to_nm(j) for j in expected} == expected
    with pytest.raises(ValueError, match="Noll index j"):
        optics.noll_to_nm(0)


def test_zernikes_are_orthonormal_on_the_unit_disc():
    n = 600
    axis = (np.arange(n) - (n - 1) / 2) / (n / 2)
    x, y = np.meshgrid(axis, axis)
    rho, theta = np.hypot(x, y), np.arctan2(y, x)
    inside = rho <= 1
    z = np.array([optics.zernike(j, rho, theta)[inside] for j in range(1, 16)])
    gram = z @ z.T / inside.sum()
    np.testing.assert_allclose(gram, np.eye(15), atol=0.01)


# -- pupil -----------------------------------------------------------------------------------
def test_pupil_collecting_area_and_geometry():
    amp, seg = optics.jwst_pupil(384)
    dx = optics.PUPIL_GRID_SIZE / 384
    area = amp.sum() * dx**2
    # JWST's quoted clear collecting area is 25.4 m^2
    assert 25.4 * 0.95 < area < 25.4 * 1.05
    hexes = 18 * math.sqrt(3) / 2 * optics.SEGMENT_FLAT_TO_FLAT**2
    assert area < hexes  # struts and gaps only remove light
    assert set(np.unique(seg)) == set(range(-1, 18))
    assert amp.min() == 0.0 and amp.max() == 1.0
    # mirror symmetric about the vertical strut
    np.testing.assert_array_equal(amp, amp[:, ::-1])
    # the area converges with resolution (grey pixels carry the sub-pixel geometry)
    amp2, _ = optics.jwst_pupil(192)
    area2 = amp2.sum() * (optics.PUPIL_GRID_SIZE / 192) ** 2
    assert abs(area - area2) < 1e-3 * area2


def test_segment_gaps_are_resolved_as_grey_pixels():
    amp, _ = optics.jwst_pupil(384)
    dx = optics.PUPIL_GRID_SIZE / 384
    axis = (np.arange(384) - 383 / 2) * dx
    col = int(np.argmin(np.abs(axis - 0.3)))  # x = 0.3 m: clear of the vertical strut
    # the gap between the inner and outer segment of the central column is at y = 1.9905 m
    rows = (axis > 1.85) & (axis < 2.15)
    profile = amp[rows, col]
    blocked = 1.0 - profile
    # all of the 7 mm gap shows up, spread over at most two pixels
    assert blocked.sum() * dx == pytest.approx(optics.SEGMENT_GAP, rel=0.1)
    assert 0.3 < profile.min() < 0.9
    assert np.count_nonzero(profile < 1) <= 2


def test_segment_centers_form_two_rings():
    c = optics.segment_centers()
    radii = np.hypot(c[:, 0], c[:, 1])
    pitch = optics.SEGMENT_FLAT_TO_FLAT + optics.SEGMENT_GAP
    np.testing.assert_allclose(np.sort(radii)[:6], pitch)
    assert np.all(radii[6:] > 1.7 * pitch)
    d = np.hypot(*(c[:, None, :] - c[None, :, :]).transpose(2, 0, 1))
    np.testing.assert_allclose(d[d > 0].min(), pitch)


def test_circular_pupil_area():
    amp = optics.circular_pupil(128, 2.0, size=2.5, obscuration=0.5)
    area = amp.sum() * (2.5 / 128) ** 2
    assert area == pytest.approx(math.pi * (1.0 - 0.0625), rel=2e-3)


# -- Fourier optics --------------------------------------------------------------------------
def test_mft_matches_zero_padded_fft(rng):
    n, q = 33, 3
    field = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    k = n * q
    dx = 0.05
    e = optics.mft(field, pupil_pixel=dx, wavelength=LAMBDA, angular_pixel=LAMBDA / (k * dx),
                   shape=(k, k))
    padded = np.zeros((k, k), dtype=complex)
    padded[:n, :n] = field
    ref = np.fft.fftshift(np.fft.fft2(padded))
    # pupil and image coordinate origins differ by whole samples: only phases differ
    np.testing.assert_allclose(np.abs(e) ** 2, np.abs(ref) ** 2, rtol=1e-9, atol=1e-9)
    e32 = optics.mft(field.astype(np.complex64), pupil_pixel=dx, wavelength=LAMBDA,
                     angular_pixel=LAMBDA / (k * dx), shape=(k, k))
    assert e32.dtype == np.complex64
    np.testing.assert_allclose(e32, e, atol=1e-4 * np.abs(e).max())


def test_parseval_unit_flux_over_one_period():
    n, k = 40, 120
    amp = optics.circular_pupil(n, 1.0, supersample=1)  # binary: every sample fully clear
    dx = 1.0 / n
    psf = optics.monochromatic_psf(amp, None, pupil_pixel=dx, wavelength=LAMBDA,
                                   angular_pixel=LAMBDA / (k * dx), shape=(k, k))
    assert psf.sum() == pytest.approx(1.0, rel=1e-10)
    # grey pupils lose the light their sub-pixel edges scatter beyond lambda / dx
    grey = optics.circular_pupil(n, 1.0)
    psf = optics.monochromatic_psf(grey, None, pupil_pixel=dx, wavelength=LAMBDA,
                                   angular_pixel=LAMBDA / (k * dx), shape=(k, k))
    assert psf.sum() == pytest.approx((grey**2).sum() / grey.sum(), rel=1e-10)


def test_airy_pattern_of_a_circular_aperture():
    d, n, sub = 1.0, 256, 16
    amp = optics.circular_pupil(n, d)
    dtheta = LAMBDA / d / sub
    psf = optics.monochromatic_psf(amp, None, pupil_pixel=d / n, wavelength=LAMBDA,
                                   angular_pixel=dtheta, shape=(81, 81))
    # peak = clear area / lambda^2 per steradian, times the sample solid angle
    area = amp.sum() * (d / n) ** 2
    assert psf[40, 40] == pytest.approx(area * dtheta**2 / LAMBDA**2, rel=1e-9)
    fwhm = _half_max_width_1d(psf[40], 1 / sub)  # in lambda / D
    assert fwhm == pytest.approx(1.029, rel=0.01)
    # first dark ring at 1.22 lambda / D
    first_min = (np.argmin(psf[40, 40 + sub:40 + 2 * sub]) + sub) / sub
    assert first_min == pytest.approx(1.22, abs=1.0 / sub)
    np.testing.assert_allclose(psf, psf.T, rtol=1e-9, atol=1e-15)


def test_wavefront_tilt_moves_the_psf():
    n, d = 64, 1.0
    amp = optics.circular_pupil(n, d)
    axis = (np.arange(n) - (n - 1) / 2) * (d / n)
    alpha = 2.0 * LAMBDA / d  # radians
    opd = alpha * axis[None, :] + 0.0 * axis[:, None]
    dtheta = LAMBDA / d / 4
    psf = optics.monochromatic_psf(amp, opd, pupil_pixel=d / n, wavelength=LAMBDA,
                                   angular_pixel=dtheta, shape=(41, 41))
    iy, ix = np.unravel_index(np.argmax(psf), psf.shape)
    assert (iy, ix) == (20, 20 + 8)


# -- spectra, wavefront model, detector ------------------------------------------------------
def test_filter_wavelengths_cover_the_band():
    for name, (_, lo, hi, nw) in optics.FILTERS.items():
        wl, w = optics.filter_wavelengths(name)
        # wide bands need more wavelengths than narrow ones to be smooth
        assert len(wl) == nw >= (9 if name.endswith("W") or name.endswith("W2") else 3)
        assert w.sum() == pytest.approx(1.0)
        assert np.all(w > 0)
        assert lo * 1e-6 < np.sum(wl * w) < hi * 1e-6
    wl, _ = optics.filter_wavelengths("F200W", 15)
    assert len(wl) == 15 and 1.74e-6 < wl.min() and wl.max() < 2.24e-6
    with pytest.raises(ValueError, match="unknown filter"):
        optics.filter_wavelengths("F999W")
    with pytest.raises(ValueError, match="nwaves"):
        optics.filter_wavelengths("F200W", 0)


def test_wavefront_is_field_dependent_and_tens_of_nm():
    amp, _ = optics.jwst_pupil(128)
    maps = {xy: optics.wavefront_map("NRCA1", *xy, npix=128) for xy in [(0, 0), (2047, 2047)]}
    for opd in maps.values():
        rms = np.sqrt(np.average(opd**2, weights=amp))
        assert 20e-9 < rms < 80e-9
        assert abs(np.average(opd, weights=amp)) < 1e-15
    diff = maps[(0, 0)] - maps[(2047, 2047)]
    assert np.sqrt(np.average(diff**2, weights=amp)) > 3e-9
    # fixed tables: the same inputs give the same coefficients
    assert optics.wavefront_coefficients("NRCB5", 10, 20) == optics.wavefront_coefficients(
        "NRCB5", 10, 20)
    assert optics.wavefront_coefficients("NRCA1", 0, 0) != optics.wavefront_coefficients(
        "NRCA3", 0, 0)
    with pytest.raises(ValueError, match="unknown detector"):
        optics.wavefront_map("NRCX1", 0, 0)


def test_detector_kernel():
    k = optics.detector_kernel_1d(4, 1e-6)
    np.testing.assert_allclose(k[k > 1e-12], [0.125, 0.25, 0.25, 0.25, 0.125])
    k3 = optics.detector_kernel_1d(3, 1e-6)
    np.testing.assert_allclose(k3[k3 > 1e-12], [1 / 3] * 3)
    sigma = 0.5
    k = optics.detector_kernel_1d(8, sigma)
    u = (np.arange(len(k)) - len(k) // 2) / 8
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(k, k[::-1])
    # variance of box * Gaussian (trapezoid-sampled box: 1/12 + 1/(6 * 8^2))
    assert np.sum(k * u**2) == pytest.approx(1 / 12 + 1 / 384 + sigma**2, rel=0.01)


def test_ipc_conserves_flux():
    img = np.zeros((30, 30))
    img[15, 15] = 1.0
    out = optics._apply_ipc(img, 4, 22)
    assert out.sum() == pytest.approx(1.0)
    assert out[11, 11] == pytest.approx(1 - 4 * optics.IPC_SIDE - 4 * optics.IPC_DIAGONAL)
    assert out[11, 7] == pytest.approx(optics.IPC_SIDE)
    assert out[7, 7] == pytest.approx(optics.IPC_DIAGONAL)


# -- ePSFs -----------------------------------------------------------------------------------
def test_long_wave_epsf_normalisation_and_centring():
    epsf = optics.jwst_like_epsf("F444W", "NRCA5", 1024, 1024, fov_pixels=15, oversampling=3)
    assert epsf.shape == (45, 45)
    assert np.all(epsf >= 0)
    # sums to oversampling^2 times the light inside the 0.95" field (most of it)
    assert 0.8 * 9 < epsf.sum() < 9
    c = (epsf.shape[0] - 1) / 2
    yy, xx = np.indices(epsf.shape)
    cx = (epsf * xx).sum() / epsf.sum() - c
    cy = (epsf * yy).sum() / epsf.sum() - c
    assert abs(cx) < 0.1 and abs(cy) < 0.1  # oversampled pixels
    assert np.unravel_index(np.argmax(epsf), epsf.shape) == (22, 22)


def test_batched_epsfs_are_deterministic_and_vary_over_the_field():
    x, y = [0.0, 2047.0, 0.0, 2047.0], [0.0, 0.0, 2047.0, 2047.0]
    a = optics.jwst_like_epsf("F150W", "NRCB2", x, y, fov_pixels=11, oversampling=2)
    b = optics.jwst_like_epsf("F150W", "NRCB2", x, y, fov_pixels=11, oversampling=2)
    assert np.array_equal(a, b)
    assert a.shape == (4, 22, 22)
    one = optics.jwst_like_epsf("F150W", "NRCB2", 2047.0, 0.0, fov_pixels=11, oversampling=2)
    assert np.array_equal(one, a[1])
    spread = np.abs(a - a.mean(axis=0)).max() / a.max()
    assert 1e-4 < spread < 0.05


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(filter_name="F999W"), ValueError, "unknown filter"),
        (dict(filter_name=200), TypeError, "filter must be a string"),
        (dict(detector="NRCC1"), ValueError, "unknown detector"),
        (dict(detector="NRCA5"), ValueError, "cannot observe filter F200W"),
        (dict(fov_pixels=10), ValueError, "fov_pixels must be odd"),
        (dict(fov_pixels=3), ValueError, "fov_pixels must be >= 5"),
        (dict(fov_pixels=11.0), TypeError, "fov_pixels must be an integer"),
        (dict(oversampling=0), ValueError, "oversampling must be >= 1"),
        (dict(oversampling=True), TypeError, "oversampling must be an integer"),
    ],
)
def test_epsf_argument_errors(kwargs, exc, match):
    args = dict(filter_name="F200W", detector="NRCA1", x=10.0, y=10.0, fov_pixels=11,
                oversampling=2)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        optics.jwst_like_epsf(**args)


def test_epsf_positions_are_checked():
    with pytest.raises(ValueError, match="x and y must be finite"):
        optics.jwst_like_epsf("F200W", "NRCA1", np.nan, 0.0, fov_pixels=5, oversampling=1)
    with pytest.raises(ValueError, match="equal length"):
        optics.jwst_like_epsf("F200W", "NRCA1", [1.0, 2.0], [0.0], fov_pixels=5, oversampling=1)


def test_check_grid_args_canonicalises():
    assert optics.check_grid_args("f444w", "nrcblong", 9, 21, 2) == ("F444W", "NRCB5", 9, 21, 2)
    with pytest.raises(ValueError, match="num_psfs must be a perfect square"):
        optics.check_grid_args("F200W", "NRCA1", 10, 21, 2)
    with pytest.raises(ValueError, match="num_psfs must be >= 1"):
        optics.check_grid_args("F200W", "NRCA1", 0, 21, 2)
