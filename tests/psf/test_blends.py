"""The blend test after the fit (crowdphot.psf.blends): seeded simulate-then-recover."""

import warnings

import numpy as np
import pytest
from astropy.table import QTable

from crowdphot.datasets import make_model_image
from crowdphot.psf import CircularGaussianPRF, PSFPhotometry, SourceGrouper
from crowdphot.psf.blends import candidate_pairs, psf_fwhm, unresolved_pairs
from crowdphot.psf.flags import PSF_FLAGS
from crowdphot.utils.exceptions import FitConvergenceWarning

PSF = CircularGaussianPRF(fwhm=3.0)
BLEND = PSF_FLAGS.UNRESOLVED_BLEND


def _other_flags(r):
    """The flags column without the blend bit (what the fit alone says)."""
    return np.asarray(r["flags"]) & ~BLEND


def _fit_and_test(img, init, *, error=5.0, grouper=6, **kw):
    err = None if error is None else np.full(img.shape, float(error))
    ph = PSFPhotometry(PSF, (5, 5), aperture_radius=3, grouper=SourceGrouper(grouper),
                       group_warning_threshold=1000, profile_errors=False)  # Fisher errors
    with warnings.catch_warnings():  # runaway faint stars of the crowded scene (flag 8)
        warnings.simplefilter("ignore", FitConvergenceWarning)
        r = ph(img, error=err, init_params=init)
    col = {k: np.asarray(r[k], dtype=float)
           for k in ("x_fit", "y_fit", "flux_fit", "flux_err", "x_init", "y_init",
                     "local_bkg")}
    b = unresolved_pairs(img, PSF, col["x_fit"], col["y_fit"], col["flux_fit"],
                         col["flux_err"], x_init=col["x_init"], y_init=col["y_init"],
                         group_id=np.asarray(r["group_id"]), fit_shape=5, error=err,
                         local_bkg=col["local_bkg"], **kw)
    # PSFPhotometry runs the same test (witness only) and sets the bit on the same rows
    np.testing.assert_array_equal((np.asarray(r["flags"]) & BLEND) > 0, b.flagged)
    return r, b


def _pair_image(sep_x, sep_y, f1, f2, seed, *, size=41):
    t = QTable({"x_0": [20.0, 20.0 + sep_x], "y_0": [20.0, 20.0 + sep_y], "flux": [f1, f2]})
    rng = np.random.default_rng(seed)
    img = make_model_image((size, size), PSF, t, model_shape=(15, 15))
    img = img + rng.normal(0, 5, img.shape)
    init = QTable({"x": t["x_0"] + rng.normal(0, .3, 2), "y": t["y_0"] + rng.normal(0, .3, 2)})
    return img, init, t


def test_psf_fwhm_gaussian():
    from crowdphot import CircularGaussianPSF

    assert psf_fwhm(CircularGaussianPSF(fwhm=3.0)) == pytest.approx(3.0, abs=0.03)
    assert psf_fwhm(CircularGaussianPSF(fwhm=7.5), 100.0, 50.0) == pytest.approx(7.5, abs=0.03)
    # the pixel-integrated PRF is a little wider: sqrt(fwhm^2 + 2.355^2 / 12)
    assert psf_fwhm(PSF) == pytest.approx(np.hypot(3.0, 2.3548 / np.sqrt(12)), abs=0.05)


def test_candidate_pairs_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 30, 80), rng.uniform(0, 30, 80)
    g = rng.integers(0, 4, 80)
    got = {tuple(p) for p in candidate_pairs(x, y, g, 3.0).tolist()}
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    want = {(a, b) for a in range(80) for b in range(a + 1, 80) if d[a, b] < 3.0
            and g[a] == g[b]}
    assert got == want and len(want) > 10


def test_crowded_field_statistics():
    """The issue's crowded scene: every flags-0 star with |pull| > 4 is flagged, few others."""
    n0 = bad0 = bad1 = flagged = wide = wide_fl = 0
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        n = 300
        x, y = rng.uniform(-1, 128, n), rng.uniform(-1, 128, n)
        f = rng.uniform(30, 300, n)
        img = make_model_image((128, 128), PSF, QTable({"x_0": x, "y_0": y, "flux": f}),
                               model_shape=(15, 15)) + rng.normal(0, 5, (128, 128))
        init = QTable({"x": x + rng.normal(0, .3, n), "y": y + rng.normal(0, .3, n)})
        r, b = _fit_and_test(img, init)
        pull = (np.asarray(r["flux_fit"]) - f) / np.asarray(r["flux_err"])
        g0 = (_other_flags(r) == 0) & np.isfinite(pull)
        d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
        np.fill_diagonal(d, np.inf)
        well = g0 & (np.abs(pull) < 3) & (d.min(axis=1) >= 3.0)  # >= 1 FWHM from all
        n0 += g0.sum()
        bad0 += (g0 & (np.abs(pull) > 4)).sum()
        bad1 += (g0 & ~b.flagged & (np.abs(pull) > 4)).sum()
        flagged += (g0 & b.flagged).sum()
        wide += well.sum()
        wide_fl += (well & b.flagged).sum()
    # measured over 8 seeds: 21 of 2032 flags-0 stars with |pull| > 4 before, 0 after; 3.4 %
    # flagged; 3 of 1262 well-measured stars >= 1 FWHM from every neighbour
    # (4 since failed group members are dropped from their groups' models, crowdphot.psf._failed)
    assert bad0 >= 3  # the scene does have the defect
    assert bad1 == 0
    assert flagged / n0 < 0.05
    assert wide > 200 and wide_fl <= 0.01 * wide


def test_isolated_unresolvable_pair_flagged():
    # 1.44 px (0.48 FWHM) apart, 290/280; seed 6 lands in a wrong minimum (pull -4.1)
    img, init, t = _pair_image(1.2, 0.8, 290.0, 280.0, 6)
    r, b = _fit_and_test(img, init)
    pull = (np.asarray(r["flux_fit"]) - np.asarray(t["flux"])) / np.asarray(r["flux_err"])
    assert np.all(_other_flags(r) == 0) and np.max(np.abs(pull)) > 4
    assert np.all(np.asarray(r["flags"]) == BLEND)
    assert b.flagged.tolist() == [True, True]
    assert len(b.pairs) == 1 and not b.resolved[0]  # one star is not rejected either
    assert np.all(b.shift[0] > 3)


def test_isolated_pair_pull_statistics():
    """0.48 FWHM apart, 290/280: the unflagged fluxes have honest errors, the flagged don't."""
    kept, before, n_flag = [], [], 0
    for seed in range(40):
        img, init, t = _pair_image(1.2, 0.8, 290.0, 280.0, seed)
        r, b = _fit_and_test(img, init, one_star=False)
        ok = _other_flags(r) == 0
        pull = (np.asarray(r["flux_fit"]) - np.asarray(t["flux"])) / np.asarray(r["flux_err"])
        before.extend(pull[ok])
        kept.extend(pull[ok & ~b.flagged])
        n_flag += int(b.flagged.any())
    before, kept = np.abs(before), np.abs(kept)
    # measured on 100 seeds: pull std 2.7 before, 1.3 on the unflagged rows, 27 % flagged
    assert np.sqrt(np.mean(before ** 2)) > 2.2
    assert np.sqrt(np.mean(kept ** 2)) < 1.8 and len(kept) > 40
    assert np.sum(kept > 3) <= np.sum(before > 3) / 2
    assert 4 <= n_flag <= 20


def test_resolved_bright_pairs_not_flagged():
    for sep, seed in ((3.6, 1), (4.2, 2), (6.0, 3)):  # 1.2, 1.4 and 2 FWHM
        img, init, t = _pair_image(sep, 0.0, 3000.0, 2500.0, seed)
        r, b = _fit_and_test(img, init)
        assert not b.flagged.any()
        if sep < 1.5 * b.fwhm:
            assert len(b.pairs) == 1 and b.resolved[0]
            assert b.delta_chi2[0, 0] > 100
        else:
            assert len(b.pairs) == 0


def test_isolated_stars_never_tested():
    rng = np.random.default_rng(4)
    x, y = np.array([10.0, 30.0, 50.0]), np.array([10.0, 30.0, 12.0])
    t = QTable({"x_0": x, "y_0": y, "flux": [500.0, 50.0, 5.0]})
    img = make_model_image((64, 64), PSF, t, model_shape=(15, 15)) + rng.normal(0, 5, (64, 64))
    r, b = _fit_and_test(img, QTable({"x": x, "y": y}))
    assert len(b.pairs) == 0 and not b.flagged.any()
    # two close stars in different groups are not a pair either
    b2 = unresolved_pairs(img, PSF, [10.0, 11.0], [10.0, 10.0], [500.0, 100.0], [10.0, 10.0],
                          x_init=[10.0, 11.0], y_init=[10.0, 10.0], group_id=[1, 2],
                          fit_shape=5, error=np.full(img.shape, 5.0))
    assert len(b2.pairs) == 0 and not b2.flagged.any()


def test_deterministic_and_without_error():
    img, init, _ = _pair_image(1.2, 0.8, 290.0, 280.0, 6)
    _, b1 = _fit_and_test(img, init)
    _, b2 = _fit_and_test(img, init)
    np.testing.assert_array_equal(b1.flagged, b2.flagged)
    np.testing.assert_array_equal(b1.delta_chi2, b2.delta_chi2)
    np.testing.assert_array_equal(b1.stars, b2.stars)
    # the one-star diagnostic does not change the flag
    _, b3 = _fit_and_test(img, init, one_star=False)
    np.testing.assert_array_equal(b1.flagged, b3.flagged)
    np.testing.assert_array_equal(b1.stars[:, 1], b3.stars[:, 1])
    assert np.all(np.isnan(b3.delta_chi2[:, 0])) and b3.resolved.all()
    # no error image: chi-squares in units of the pair's residual variance, F test
    img, init, _ = _pair_image(3.6, 0.0, 3000.0, 2500.0, 1)
    _, b = _fit_and_test(img, init, error=None)
    assert len(b.pairs) == 1 and b.resolved[0] and not b.flagged.any()


def test_input_checks():
    img = np.zeros((20, 20))
    args = (img, PSF, [5.0, 6.0], [5.0, 5.0], [10.0, 10.0], [1.0, 1.0])
    kw = dict(x_init=[5.0, 6.0], y_init=[5.0, 5.0], group_id=[1, 1], fit_shape=5)
    with pytest.raises(ValueError, match="flux_err must have shape"):
        unresolved_pairs(img, PSF, [5.0, 6.0], [5.0, 5.0], [10.0, 10.0], [1.0], **kw)
    with pytest.raises(ValueError, match="group_id"):
        unresolved_pairs(*args, **{**kw, "group_id": [1.5, 1.0]})
    with pytest.raises(ValueError, match="nsigma"):
        unresolved_pairs(*args, **kw, nsigma=0)
    with pytest.raises(ValueError, match="significance"):
        unresolved_pairs(*args, **kw, significance=1.5)
    with pytest.raises(ValueError, match="fwhm"):
        unresolved_pairs(*args, **kw, fwhm=-1.0)
    with pytest.raises(TypeError, match="batched PSF"):
        unresolved_pairs(img, object(), *args[2:], **kw)
    with pytest.raises(ValueError, match="step"):
        psf_fwhm(PSF, step=1.0)


def test_photometry_hook_scope():
    """The bit comes with crowdphot's defaults only: never with compat='photutils'."""
    img, init, _ = _pair_image(1.2, 0.8, 290.0, 280.0, 6)
    err = np.full(img.shape, 5.0)
    ours = PSFPhotometry(PSF, (5, 5), aperture_radius=3, grouper=SourceGrouper(6))(
        img, error=err, init_params=init)
    assert np.all((np.asarray(ours["flags"]) & BLEND) > 0)
    theirs = PSFPhotometry(PSF, (5, 5), aperture_radius=3, grouper=SourceGrouper(6),
                           compat="photutils")(img, error=err, init_params=init)
    assert not np.any(np.asarray(theirs["flags"]) & BLEND)
    # ungrouped: no pair, no bit
    alone = PSFPhotometry(PSF, (5, 5), aperture_radius=3)(img, error=err, init_params=init)
    assert not np.any(np.asarray(alone["flags"]) & BLEND)
