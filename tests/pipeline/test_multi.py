"""Joint fits of dithered exposures in sky coordinates (crowdphot.pipeline.multi)."""

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table, vstack
from astropy.wcs import WCS

from crowdphot import CircularGaussianPRF, PSFPhotometry, SourceGrouper
from crowdphot.core.render import render_image
from crowdphot.pipeline.multi import Exposure, fit_exposures

RA0, DEC0 = 150.0, 2.2
SCALE = 0.1  # arcsec / pixel


def make_wcs(shape, *, dx=0.0, dy=0.0, rot_deg=0.0, scale=SCALE, ra0=RA0, dec0=DEC0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [shape[1] / 2 + 1 + dx, shape[0] / 2 + 1 + dy]
    th = np.deg2rad(rot_deg)
    s = scale / 3600.0
    w.wcs.cd = [[-s * np.cos(th), s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]]
    return w


def make_sky(rng, n_side, spacing_px, jitter_px=1.0):
    """Stars on a jittered grid (isolated at ``fit_shape`` 5) around (RA0, DEC0)."""
    g = (np.arange(n_side) - (n_side - 1) / 2) * spacing_px
    gx, gy = np.meshgrid(g, g)
    xi = (gx.ravel() + rng.uniform(-jitter_px, jitter_px, gx.size)) * SCALE
    eta = (gy.ravel() + rng.uniform(-jitter_px, jitter_px, gx.size)) * SCALE
    w = make_wcs((2, 2))  # ra/dec from offsets through a plain TAN at the centre
    x, y = -xi / SCALE + w.wcs.crpix[0] - 1, eta / SCALE + w.wcs.crpix[1] - 1
    ra, dec = w.all_pix2world(x, y, 0)
    flux = rng.uniform(2000.0, 20000.0, ra.size)
    return np.asarray(ra), np.asarray(dec), flux


def make_exposure(rng, shape, wcs, psf, ra, dec, flux, filt, *, sky_sigma=5.0):
    x, y = wcs.all_world2pix(ra, dec, 0)
    img = render_image(shape, psf, np.asarray(x), np.asarray(y), flux, model_shape=(15, 15))
    err = np.sqrt(sky_sigma ** 2 + np.clip(img, 0, None))
    data = img + rng.normal(size=shape) * err
    return Exposure(data, err, None, wcs, psf, filt)


def test_one_exposure_equals_single_image_fit():
    rng = np.random.default_rng(11)
    shape = (80, 80)
    ra, dec, flux = make_sky(rng, 7, 10.0)
    psf = CircularGaussianPRF(fwhm=2.5)
    wcs = make_wcs(shape, dx=0.37, dy=-0.21, rot_deg=0.8)
    exp = make_exposure(rng, shape, wcs, psf, ra, dec, flux, "F1")
    x, y = wcs.all_world2pix(ra, dec, 0)
    x0 = x + rng.uniform(-0.3, 0.3, x.size)
    y0 = y + rng.uniform(-0.3, 0.3, x.size)
    f0 = flux * rng.uniform(0.8, 1.2, x.size)
    ra_i, dec_i = wcs.all_pix2world(x0, y0, 0)
    cat = Table({"ra": ra_i * u.deg, "dec": dec_i * u.deg, "flux": f0})
    joint = fit_exposures([exp], cat, fit_shape=(5, 5), tol=1e-6)

    phot = PSFPhotometry(psf, (5, 5), fitter_maxiters=200)
    single = phot(exp.data, error=exp.error,
                  init_params=Table({"x": x0, "y": y0, "flux": f0}))
    xj, yj = wcs.all_world2pix(joint["ra"].to_value(u.deg), joint["dec"].to_value(u.deg), 0)
    assert np.all(joint["flags"] == 0)
    assert np.all(joint["n_exposures"] == 1)
    np.testing.assert_allclose(xj, single["x_fit"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(yj, single["y_fit"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(joint["flux_F1"], single["flux_fit"], rtol=1e-6)
    np.testing.assert_allclose(joint["flux_err_F1"], single["flux_err"], rtol=1e-5)
    # position errors: sky errors against pixel errors times the pixel scale
    pe = np.hypot(joint["ra_err"].to_value(u.arcsec), joint["dec_err"].to_value(u.arcsec))
    np.testing.assert_allclose(pe, np.hypot(single["x_err"], single["y_err"]) * SCALE,
                               rtol=1e-5)


@pytest.fixture(scope="module")
def six_exposures():
    rng = np.random.default_rng(2026)
    shape = (130, 130)
    ra, dec, flux_a = make_sky(rng, 12, 10.0)
    flux_b = flux_a * 0.6
    psf_a = CircularGaussianPRF(fwhm=2.4)
    psf_b = CircularGaussianPRF(fwhm=3.1)
    exps = []
    for _ in range(4):
        w = make_wcs(shape, dx=rng.uniform(-3, 3), dy=rng.uniform(-3, 3),
                     rot_deg=rng.uniform(-1.5, 1.5))
        exps.append(make_exposure(rng, shape, w, psf_a, ra, dec, flux_a, "A"))
    for _ in range(2):
        w = make_wcs(shape, dx=rng.uniform(-3, 3), dy=rng.uniform(-3, 3),
                     rot_deg=rng.uniform(-1.5, 1.5))
        exps.append(make_exposure(rng, shape, w, psf_b, ra, dec, flux_b, "B"))
    # initial catalog: 0.03" scatter, no fluxes (estimated by the fit)
    ra_i = ra + rng.normal(0, 0.03, ra.size) / 3600 / np.cos(np.deg2rad(DEC0))
    dec_i = dec + rng.normal(0, 0.03, ra.size) / 3600
    cat = Table({"ra": ra_i, "dec": dec_i})
    return exps, cat, ra, dec, {"A": flux_a, "B": flux_b}


def _sky_err(t, ra, dec):
    dra = (t["ra"].to_value(u.deg) - ra) * np.cos(np.deg2rad(dec)) * 3600
    ddec = (t["dec"].to_value(u.deg) - dec) * 3600
    return dra, ddec


def test_six_exposures_position_flux_pulls(six_exposures):
    exps, cat, ra, dec, fluxes = six_exposures
    single = fit_exposures(exps[:1], cat)
    joint = fit_exposures(exps, cat)
    assert list(joint.colnames[:5]) == ["id", "ra", "dec", "ra_err", "dec_err"]
    assert joint["ra_err"].unit == u.arcsec
    ok = joint["flags"] == 0
    assert ok.mean() > 0.9
    assert np.all(joint["n_exposures"][ok] == 6)
    dra, ddec = _sky_err(joint, ra, dec)
    s_dra, s_ddec = _sky_err(single, ra, dec)
    m_joint = np.median(np.hypot(dra, ddec)[ok])
    m_single = np.median(np.hypot(s_dra, s_ddec)[single["flags"] == 0])
    assert m_joint <= 1.15 * m_single / np.sqrt(4)
    pulls_ra = dra[ok] / joint["ra_err"].to_value(u.arcsec)[ok]
    pulls_dec = ddec[ok] / joint["dec_err"].to_value(u.arcsec)[ok]
    assert 0.85 <= np.std(pulls_ra) <= 1.15
    assert 0.85 <= np.std(pulls_dec) <= 1.15
    n = ok.sum()
    for f, true in fluxes.items():
        pull = (joint[f"flux_{f}"][ok] - true[ok]) / joint[f"flux_err_{f}"][ok]
        assert abs(np.mean(pull)) < 4 / np.sqrt(n), f
        assert 0.85 <= np.std(pull) <= 1.15, f


def test_star_off_one_exposure_and_off_all(six_exposures):
    exps, cat, ra, dec, fluxes = six_exposures
    # one exposure shifted so that part of the field falls off it
    e0 = exps[0]
    w = e0.wcs.deepcopy()
    w.wcs.crpix = [w.wcs.crpix[0] + 40, w.wcs.crpix[1]]
    shifted = Exposure(e0.data, e0.error, None, w, e0.psf_model, "A")
    extra = Table({"ra": [RA0 + 0.01], "dec": [DEC0]})  # 36" away: in no exposure
    cat2 = vstack([cat, extra])
    t = fit_exposures([shifted, *exps[1:]], cat2, maxiters=3)
    assert t["n_exposures"].min() == 0 and t["flags"][-1] & 1
    assert np.isnan(t["ra"][-1]) and np.isnan(t["flux_A"][-1])
    assert set(np.unique(t["n_exposures"][:-1])) >= {5, 6}


def test_bad_inputs(six_exposures):
    exps, cat, *_ = six_exposures
    e = exps[0]
    with pytest.raises(ValueError, match="celestial"):
        Exposure(e.data, e.error, None, WCS(naxis=2), e.psf_model, "A")
    with pytest.raises(ValueError, match=r"exposures\[1\].*celestial"):
        fit_exposures([(e.data, e.error, None, e.wcs, e.psf_model, "A"),
                       (e.data, e.error, None, WCS(naxis=2), e.psf_model, "A")], cat)
    far = make_wcs(e.data.shape, ra0=RA0 + 1.0)
    with pytest.raises(ValueError, match=r"exposures\[1\] overlaps none"):
        fit_exposures([(e.data, e.error, None, e.wcs, e.psf_model, "A"),
                       (e.data, e.error, None, far, e.psf_model, "A")], cat)
    with pytest.raises(ValueError, match=r"exposures\[2\] does not overlap any other"):
        fit_exposures([e, exps[1], (e.data, e.error, None, far, e.psf_model, "A")])
    with pytest.raises(ValueError, match="different data units"):
        fit_exposures([(e.data * u.Jy, None, None, e.wcs, e.psf_model, "A"),
                       (e.data * u.MJy / u.sr, None, None, e.wcs, e.psf_model, "A")], cat)
    with pytest.raises(ValueError, match="error shape"):
        Exposure(e.data, e.error[:5], None, e.wcs, e.psf_model, "A")
    with pytest.raises(ValueError, match="'ra' and 'dec'"):
        fit_exposures([e], Table({"x": [1.0]}))
    with pytest.raises(ValueError, match="fit_shape"):
        fit_exposures([e], cat, fit_shape=(4, 4))


def make_pairs(rng, n_side, spacing_px, sep_range=(2.5, 4.0)):
    """Close pairs on a jittered grid: (ra, dec, flux) of 2 * n_side**2 stars."""
    ra1, dec1, flux1 = make_sky(rng, n_side, spacing_px)
    sep = rng.uniform(*sep_range, ra1.size) * SCALE / 3600
    ang = rng.uniform(0, 2 * np.pi, ra1.size)
    ra2 = ra1 + sep * np.cos(ang) / np.cos(np.deg2rad(DEC0))
    dec2 = dec1 + sep * np.sin(ang)
    flux2 = flux1 * rng.uniform(0.3, 1.0, ra1.size)
    return (np.concatenate([ra1, ra2]), np.concatenate([dec1, dec2]),
            np.concatenate([flux1, flux2]))


def test_one_exposure_blends_equal_grouped_single_image_fit():
    rng = np.random.default_rng(5)
    shape = (90, 90)
    ra, dec, flux = make_pairs(rng, 5, 15.0)
    psf = CircularGaussianPRF(fwhm=2.5)
    wcs = make_wcs(shape, dx=-0.12, dy=0.41, rot_deg=-0.6)
    exp = make_exposure(rng, shape, wcs, psf, ra, dec, flux, "F1")
    x, y = wcs.all_world2pix(ra, dec, 0)
    x0 = x + rng.uniform(-0.2, 0.2, x.size)
    y0 = y + rng.uniform(-0.2, 0.2, x.size)
    f0 = flux * rng.uniform(0.8, 1.2, x.size)
    ra_i, dec_i = wcs.all_pix2world(x0, y0, 0)
    cat = Table({"ra": ra_i, "dec": dec_i, "flux": f0})
    # group linking 6 px = 0.6"; models wide enough to cover the partner's whole stamp
    joint = fit_exposures([exp], cat, group_separation=0.6, model_shape=17, tol=1e-6)
    phot = PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(min_separation=6.0),
                         fitter_maxiters=200)
    single = phot(exp.data, error=exp.error, init_params=Table({"x": x0, "y": y0, "flux": f0}))
    assert np.all(np.bincount(single["group_id"])[1:] == 2)
    xj, yj = wcs.all_world2pix(np.asarray(joint["ra"].to_value(u.deg)),
                               np.asarray(joint["dec"].to_value(u.deg)), 0)
    assert np.all(joint["flags"] == 0)
    np.testing.assert_allclose(xj, single["x_fit"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(yj, single["y_fit"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(joint["flux_F1"], single["flux_fit"], rtol=1e-6)
    np.testing.assert_allclose(joint["flux_err_F1"], single["flux_err"], rtol=1e-5)


def add_sip(w, shape, amp=5e-5):
    """Give a TAN WCS a small quadratic SIP distortion (~0.3 px at the corners)."""
    from astropy.wcs import Sip

    a = np.zeros((3, 3))
    b = np.zeros((3, 3))
    a[2, 0], a[1, 1] = amp, -amp
    b[0, 2], b[1, 1] = amp, amp
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def test_six_exposures_blends_sip():
    rng = np.random.default_rng(77)
    shape = (110, 110)
    ra, dec, flux_a = make_pairs(rng, 7, 14.0, sep_range=(3.0, 4.5))
    fluxes = {"A": flux_a, "B": flux_a * 0.6}
    psfs = {"A": CircularGaussianPRF(fwhm=2.4), "B": CircularGaussianPRF(fwhm=3.1)}
    exps = []
    for filt in "AAAABB":
        w = add_sip(make_wcs(shape, dx=rng.uniform(-3, 3), dy=rng.uniform(-3, 3),
                             rot_deg=rng.uniform(-1.5, 1.5)), shape)
        exps.append(make_exposure(rng, shape, w, psfs[filt], ra, dec, fluxes[filt], filt))
    assert np.ptp(exps[0].wcs.all_world2pix(ra, dec, 0)[0]
                  - exps[0].wcs.wcs_world2pix(ra, dec, 0)[0]) > 0.1
    ra_i = ra + rng.normal(0, 0.03, ra.size) / 3600 / np.cos(np.deg2rad(DEC0))
    dec_i = dec + rng.normal(0, 0.03, ra.size) / 3600
    joint = fit_exposures(exps, Table({"ra": ra_i, "dec": dec_i}), group_separation=0.6)
    ok = joint["flags"] == 0
    assert ok.mean() > 0.95
    dra, ddec = _sky_err(joint, ra, dec)
    n = ok.sum()
    for d, e in ((dra, joint["ra_err"]), (ddec, joint["dec_err"])):
        pull = d[ok] / e.to_value(u.arcsec)[ok]
        assert 0.85 <= np.std(pull) <= 1.15
        assert abs(np.mean(pull)) < 4 / np.sqrt(n)
    for f, true in fluxes.items():
        pull = (joint[f"flux_{f}"][ok] - true[ok]) / joint[f"flux_err_{f}"][ok]
        assert abs(np.mean(pull)) < 4 / np.sqrt(n), f
        assert 0.85 <= np.std(pull) <= 1.15, f


def test_mask_units_and_filter_without_pixels(six_exposures):
    exps, cat, ra, dec, fluxes = six_exposures
    e = exps[0]
    # exposure 1 in filter "C" sees only the left half of the field: others get flag 2
    mask = np.zeros(e.data.shape, dtype=bool)
    mask[:, 60:] = True
    unit = u.MJy / u.sr
    a = Exposure(e.data * unit, e.error * unit, None, e.wcs, e.psf_model, "A")
    c = Exposure(e.data * unit, e.error * unit, mask, e.wcs, e.psf_model, "C")
    t = fit_exposures([a, c], cat)
    assert t["flux_A"].unit == unit and t["flux_err_C"].unit == unit
    x, _ = e.wcs.all_world2pix(ra, dec, 0)
    right = x > 64  # stamps (5 px) entirely in the masked half
    assert np.all(t["flags"][right] & 2) and np.all(np.isnan(t["flux_C"][right]))
    assert np.all(t["n_exposures"][right] == 1)
    left = x < 55
    ok = left & (t["flags"] == 0)
    assert ok.sum() > 20
    # the same pixels counted twice (A and C are copies): C's flux equals A's
    np.testing.assert_allclose(t["flux_C"][ok], t["flux_A"][ok], rtol=1e-6)


def _match(t, ra, dec, radius_arcsec):
    """Index of the nearest row of ``t`` to every true star and its distance (arcsec)."""
    from scipy.spatial import cKDTree

    cosd = np.cos(np.deg2rad(DEC0))
    tr = np.column_stack([t["ra"].to_value(u.deg) * cosd, t["dec"].to_value(u.deg)]) * 3600
    dist, idx = cKDTree(tr).query(np.column_stack([ra * cosd, dec]) * 3600)
    return idx, dist


def test_detection_on_combined_stack(six_exposures):
    exps, cat, ra, dec, fluxes = six_exposures
    t = fit_exposures(exps)  # no catalog: DAOFIND on the S/N stack of all six
    idx, dist = _match(t, ra, dec, 0.1)
    assert np.mean(dist < 0.05) > 0.97  # found and fitted to the truth
    assert len(t) <= len(ra) * 1.03  # few spurious detections
    ok = (dist < 0.05) & (t["flags"][idx] == 0)
    pull = (t["flux_A"][idx][ok] - fluxes["A"][ok]) / t["flux_err_A"][idx][ok]
    assert abs(np.mean(pull)) < 4 / np.sqrt(ok.sum()) and 0.8 < np.std(pull) < 1.2


def test_residual_images_are_noise(six_exposures):
    from crowdphot.pipeline.multi_sky import residual_images

    exps, cat, ra, dec, fluxes = six_exposures
    t = fit_exposures(exps, cat)
    for e, r in zip(exps, residual_images(exps, t), strict=True):
        x, y = e.wcs.all_world2pix(ra, dec, 0)
        near = np.zeros(e.data.shape, dtype=bool)
        for dx in range(-2, 3):
            for dy in range(-2, 3):
                ix, iy = np.round(x).astype(int) + dx, np.round(y).astype(int) + dy
                inside = (ix >= 0) & (ix < e.data.shape[1]) & (iy >= 0) & (iy < e.data.shape[0])
                near[iy[inside], ix[inside]] = True
        chi2 = np.mean((r[near] / e.error[near]) ** 2)
        # 3 + 1 fitted parameters per star over ~6 exposures x 25 pixels: chi2/pixel ~ 0.97
        assert 0.9 < chi2 < 1.1
        raw = np.mean((e.data[near] / e.error[near]) ** 2)
        assert raw > 50


def test_all_star_passes_remove_neighbour_light():
    # wide PSF, stars 7 px apart fitted alone (group_separation=0): the grouped fit sees its
    # neighbours' wings on its stamp and is biased; all-star passes subtract them
    rng = np.random.default_rng(21)
    shape = (100, 100)
    ra, dec, flux = make_sky(rng, 11, 7.0, jitter_px=0.5)
    psf = CircularGaussianPRF(fwhm=3.5)
    exps = []
    for _ in range(3):
        w = make_wcs(shape, dx=rng.uniform(-2, 2), dy=rng.uniform(-2, 2),
                     rot_deg=rng.uniform(-1, 1))
        x, y = w.all_world2pix(ra, dec, 0)
        img = render_image(shape, psf, np.asarray(x), np.asarray(y), flux,
                           model_shape=(31, 31))
        err = np.sqrt(25.0 + np.clip(img, 0, None))
        exps.append(Exposure(img + rng.normal(size=shape) * err, err, None, w, psf, "A"))
    cat = Table({"ra": ra, "dec": dec})
    grouped = fit_exposures(exps, cat, group_separation=0, subtract_neighbors=False)
    allstar = fit_exposures(exps, cat, group_separation=0)
    assert allstar["passes"][0] >= 1
    pulls = {}
    for name, t in (("grouped", grouped), ("allstar", allstar)):
        ok = t["flags"] == 0
        assert ok.mean() > 0.95
        pulls[name] = (t["flux_A"][ok] - flux[ok]) / t["flux_err_A"][ok]
    n = len(pulls["allstar"])
    assert np.mean(pulls["grouped"]) > 1.0
    assert abs(np.mean(pulls["allstar"])) < 4 / np.sqrt(n)
    assert 0.85 < np.std(pulls["allstar"]) < 1.15


@pytest.mark.parametrize("with_error,sip", [(False, False), (True, True)])
def test_one_exposure_equals_single_image_fit_no_error_and_sip(with_error, sip):
    # without errors both scale the covariance by each group's chi2 / dof; with a SIP
    # distortion the fit iterates on the linearised WCS and is re-linearised at its solution
    rng = np.random.default_rng(12)
    shape = (90, 90)
    ra, dec, flux = make_pairs(rng, 5, 15.0)
    psf = CircularGaussianPRF(fwhm=2.5)
    wcs = make_wcs(shape, dx=0.3, dy=0.2, rot_deg=0.7)
    if sip:
        wcs = add_sip(wcs, shape, amp=2e-4)
    exp = make_exposure(rng, shape, wcs, psf, ra, dec, flux, "F1")
    if not with_error:
        exp = Exposure(exp.data, None, None, wcs, psf, "F1")
    x, y = wcs.all_world2pix(ra, dec, 0)
    x0 = x + rng.uniform(-0.3, 0.3, x.size)
    y0 = y + rng.uniform(-0.3, 0.3, x.size)
    ra_i, dec_i = wcs.all_pix2world(x0, y0, 0)
    joint = fit_exposures([exp], Table({"ra": ra_i, "dec": dec_i}), group_separation=0.6,
                          subtract_neighbors=False, tol=1e-8)
    phot = PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(min_separation=6.0),
                         aperture_radius=3, fitter_maxiters=200)
    single = phot(exp.data, error=exp.error, init_params=Table({"x": x0, "y": y0}))
    xj, yj = wcs.all_world2pix(np.asarray(joint["ra"].to_value(u.deg)),
                               np.asarray(joint["dec"].to_value(u.deg)), 0, tolerance=1e-12)
    assert np.all(joint["flags"] == 0)
    np.testing.assert_allclose(xj, single["x_fit"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(yj, single["y_fit"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(joint["flux_F1"], single["flux_fit"], rtol=1e-6)
    np.testing.assert_allclose(joint["flux_err_F1"], single["flux_err"], rtol=1e-4)


def test_flux_per_exposure(six_exposures):
    exps, cat, ra, dec, fluxes = six_exposures
    shared = fit_exposures(exps, cat)
    t = fit_exposures(exps, cat, flux_per="exposure")
    names = [f"flux_{f}_{k}" for k, f in enumerate("AAAABB")]
    assert all(n in t.colnames for n in names) and "flux_A" not in t.colnames
    ok = (t["flags"] == 0) & (shared["flags"] == 0)
    assert ok.mean() > 0.9
    for k, f in enumerate("AAAABB"):
        pull = (t[names[k]][ok] - fluxes[f][ok]) / t[f"flux_err_{f}_{k}"][ok]
        assert abs(np.mean(pull)) < 4 / np.sqrt(ok.sum()) and 0.85 < np.std(pull) < 1.15
    # four free A fluxes instead of one: each about twice the shared error
    ratio = np.median(t["flux_err_A_0"][ok] / shared["flux_err_A"][ok])
    assert 1.7 < ratio < 2.3
    # the position is still shared: errors grow little
    assert np.median(t["ra_err"][ok] / shared["ra_err"][ok]) < 1.1
    with pytest.raises(ValueError, match="flux_per"):
        fit_exposures(exps, cat, flux_per="star")


def test_each_exposure_its_own_mask_and_error(six_exposures):
    """A mask (DQ) removes pixels of its own exposure only, and an exposure's error array
    weights only its own pixels."""
    from dataclasses import replace

    exps, cat, ra, dec, fluxes = six_exposures
    e1 = exps[1]
    x, y = e1.wcs.all_world2pix(ra, dec, 0)
    s = int(np.argmin(np.hypot(x - 65, y - 65)))
    ix, iy = int(round(float(x[s]))), int(round(float(y[s])))
    mask = np.zeros(e1.data.shape, dtype=bool)
    mask[iy - 1:iy + 2, ix - 1:ix + 2] = True  # the star's core in exposure 1
    bad = e1.data.copy()
    bad[mask] = 1e6
    full = fit_exposures(exps, cat)
    clean = fit_exposures([exps[0], replace(e1, mask=mask), *exps[2:]], cat)
    corrupt = fit_exposures([exps[0], replace(e1, data=bad, mask=mask), *exps[2:]], cat)
    ok = full["flags"] == 0
    assert ok.mean() > 0.9 and np.all(corrupt["flags"] == clean["flags"])
    # masked pixels carry no weight: their values do not matter
    for d, err in zip(_sky_err_pair(corrupt, clean), ("ra_err", "dec_err"), strict=True):
        assert np.max(np.abs(d[ok]) / clean[err].to_value(u.arcsec)[ok]) < 1e-6
    for f in "AB":
        d = np.abs(corrupt[f"flux_{f}"] - clean[f"flux_{f}"]) / clean[f"flux_err_{f}"]
        assert np.max(d[ok]) < 1e-6
    # ... and only exposure 1 lost them: the star keeps all six exposures, its A flux error
    # grows a little (a part of one of four A exposures), its B flux error not at all
    assert clean["n_exposures"][s] == 6
    assert 1.0 < clean["flux_err_A"][s] / full["flux_err_A"][s] < 1.3
    np.testing.assert_allclose(clean["flux_err_B"][s], full["flux_err_B"][s], rtol=0.02)
    # without the mask the corrupted pixels ruin the star (the mask mattered)
    nomask = fit_exposures([exps[0], replace(e1, data=bad), *exps[2:]], cat)
    assert abs(nomask["flux_A"][s] - fluxes["A"][s]) > 100 * clean["flux_err_A"][s]
    # an exposure's own errors: exposure 1 with 1e6 x larger errors weighs nothing, the fit
    # equals the one without it
    heavy = fit_exposures([exps[0], replace(e1, error=e1.error * 1e6), *exps[2:]], cat)
    without = fit_exposures([exps[0], *exps[2:]], cat)
    good = ok & (without["flags"] == 0)
    for col, err in (("flux_A", "flux_err_A"), ("flux_B", "flux_err_B")):
        d = np.abs(heavy[col] - without[col])[good] / without[err][good]
        assert np.max(d) < 1e-3, col
        np.testing.assert_allclose(heavy[err][good], without[err][good], rtol=1e-3)
    d = np.hypot(*_sky_err_pair(heavy, without)) / without["ra_err"].to_value(u.arcsec)
    assert np.max(d[good]) < 1e-3


def _sky_err_pair(a, b):
    """(d_ra cos dec, d_dec) between two tables in arcsec."""
    cosd = np.cos(np.deg2rad(DEC0))
    return ((a["ra"] - b["ra"]).to_value(u.arcsec) * cosd,
            (a["dec"] - b["dec"]).to_value(u.arcsec))


def test_one_exposure_allstar_same_solution_as_single_image(monkeypatch):
    """All-star, one exposure: the joint fit and PSFPhotometry(subtract_neighbors=True) share
    their rules (coupling a member to its group's stamps where its PSF at twice its initial
    flux exceeds the noise, neighbours' light out to 1 % of the noise at twice their first
    fluxes), so with the passes run to convergence they give the same solution; with the
    default stopping rules they differ by where the passes stop (module docstring)."""
    import functools

    import crowdphot.pipeline.multi as multi
    import crowdphot.psf.allstar as allstar

    for mod in (allstar, multi):  # passes until nothing moves
        monkeypatch.setattr(mod, "TOL_SETTLED", 1e-7)
        monkeypatch.setattr(mod, "TOL_SIGMA", 1e-7)
        monkeypatch.setattr(mod, "TOL_REL", 1e-12)
    monkeypatch.setattr(multi, "LIGHT_SIGMA", 0.0)
    monkeypatch.setattr(multi, "LIGHT_GRADIENT", 1e12)
    monkeypatch.setattr(allstar, "fit_allstar",
                        functools.partial(allstar.fit_allstar, max_passes=60))
    rng = np.random.default_rng(18)
    shape = (100, 100)
    ra, dec, flux = make_pairs(rng, 10, 8.0, sep_range=(3.0, 5.0))
    psf = CircularGaussianPRF(fwhm=2.2)
    wcs = make_wcs(shape, dx=0.3, dy=-0.2, rot_deg=0.7)
    exp = make_exposure(rng, shape, wcs, psf, ra, dec, flux, "F1", sky_sigma=20.0)
    x, y = wcs.all_world2pix(ra, dec, 0)
    x0 = x + rng.uniform(-0.2, 0.2, x.size)
    y0 = y + rng.uniform(-0.2, 0.2, x.size)
    f0 = flux * rng.uniform(0.8, 1.2, x.size)
    ra_i, dec_i = wcs.all_pix2world(x0, y0, 0)
    joint = fit_exposures([exp], Table({"ra": ra_i, "dec": dec_i, "flux": f0}),
                          group_separation=0.45, tol=1e-8, max_passes=60)
    import warnings

    from crowdphot.utils.exceptions import FitConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitConvergenceWarning)  # flagged rows are left out
        single = PSFPhotometry(psf, (5, 5), grouper=SourceGrouper(min_separation=4.5),
                               fitter_maxiters=200, subtract_neighbors=True)(
            exp.data, error=exp.error, init_params=Table({"x": x0, "y": y0, "flux": f0}))
    assert single.meta["allstar_passes"] >= 2 and joint["passes"][0] >= 2
    # a pair 0.33 FWHM apart has flux errors ~45 x its isolated ones in both fits; only
    # PSFPhotometry tests that (unconstrained, crowdphot.psf.contamination)
    ok = (joint["flags"] == 0) & ((single["flags"] & ~131072) == 0)
    assert ok.all() and np.bincount(single["group_id"]).max() >= 3
    xj, yj = wcs.all_world2pix(np.asarray(joint["ra"].to_value(u.deg)),
                               np.asarray(joint["dec"].to_value(u.deg)), 0)
    np.testing.assert_allclose(xj[ok], single["x_fit"][ok], atol=1e-6, rtol=0)
    np.testing.assert_allclose(yj[ok], single["y_fit"][ok], atol=1e-6, rtol=0)
    d = np.abs(joint["flux_F1"] - single["flux_fit"]) / single["flux_err"]
    assert np.max(d[ok]) < 1e-5
