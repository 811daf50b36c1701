"""First-order (Cox & Snell) bias correction of least-squares PSF fits (psf/_biascorr.py)."""

import warnings

import numpy as np
import pytest
from astropy.table import QTable

from crowdphot import CircularGaussianPRF, PSFPhotometry, SourceGrouper, make_model_image
from crowdphot.psf._biascorr import MIN_SNR, SKIP_SNR, cox_snell_groups

PSF = CircularGaussianPRF(fwhm=3.0)
SIGMA = 3.0


def _grid_scene(flux, *, side=40, spacing=16, pair=None, seed=0):
    """Stars on a grid (random sub-pixel phase); ``pair`` adds an equal star that many px
    to the right of each. Returns ``(image, init table, true fluxes)``."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(side) * spacing + 8.0, np.arange(side) * spacing + 8.0)
    n = side * side
    x = xs.ravel() + rng.uniform(-0.5, 0.5, n)
    y = ys.ravel() + rng.uniform(-0.5, 0.5, n)
    if pair is not None:
        x, y = np.r_[x, x + pair], np.r_[y, y]
    f = np.full(len(x), float(flux))
    size = side * spacing
    img = make_model_image((size, size), PSF, QTable({"x_0": x, "y_0": y, "flux": f}),
                           model_shape=(15, 15))
    img += rng.normal(0.0, SIGMA, img.shape)
    init = QTable({"x": x + rng.normal(0, 0.1, len(x)), "y": y + rng.normal(0, 0.1, len(x)),
                   "flux": f})
    return img, init, f


def _rel_bias(flux, *, pair=None, seeds=(0, 1)):
    """Mean relative flux error of unflagged fits without and with the correction, and the
    standard error of the mean."""
    out = {False: [], True: []}
    for seed in seeds:
        img, init, f = _grid_scene(flux, pair=pair, seed=seed)
        for corr in (False, True):
            phot = PSFPhotometry(PSF, (7, 7), grouper=SourceGrouper(6.0) if pair else None,
                                 bias_correction=corr)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tab = phot(img, error=np.full(img.shape, SIGMA), init_params=init)
            good = np.asarray(tab["flags"]) == 0
            out[corr].append((np.asarray(tab["flux_fit"], dtype=float) / f - 1)[good])
    raw, cor = np.concatenate(out[False]), np.concatenate(out[True])
    return raw.mean(), cor.mean(), raw.std() / np.sqrt(len(raw))


def test_isolated_faint_stars_unbiased():
    # S/N ~ 7.4: the free-position fit is ~ +1.8 % high (flux_err**2 / flux), many s.e.
    raw, cor, se = _rel_bias(100.0)
    assert raw > 4 * se
    assert abs(raw - 0.0184) < 3 * se
    assert abs(cor) < 3 * se


def test_close_pairs_unbiased():
    # pairs 0.8 FWHM apart fitted as groups (S/N ~ 9 each once blended): the joint
    # correction removes the group's bias (+0.7 %). Fainter blends (flux 100, S/N ~ 4-5
    # each) keep about +2 % of +2.9 %: many members fall under MIN_SNR and the first-order
    # expansion is poor there.
    raw, cor, se = _rel_bias(200.0, pair=2.4)
    assert raw > 3 * se
    assert abs(cor) < 3 * se


def _one(x, y, flux, gid, free=None, fit_sky=False):
    xlo = np.ceil(np.asarray(x) - 3.5).astype(np.int64)
    ylo = np.ceil(np.asarray(y) - 3.5).astype(np.int64)
    return cox_snell_groups(PSF, np.asarray(x, float), np.asarray(y, float),
                            np.asarray(flux, float), np.asarray(gid), xlo, ylo, (7, 7),
                            np.full((80, 80), SIGMA), None, free=free, fit_sky=fit_sky)


def test_far_members_equal_alone():
    # members whose stamps do not touch: the joint information is block diagonal
    x, y, f = [20.3, 50.1], [30.2, 29.7], [120.0, 300.0]
    joint = _one(x, y, f, [1, 1])
    alone = _one(x, y, f, [1, 2])
    np.testing.assert_allclose(joint, alone, rtol=1e-9, atol=1e-12)
    # the flux bias is ~ flux_err**2 / flux: 4 x larger at 2.5 x less flux (1 / F)
    assert 0.0 < joint[1, 2] < joint[0, 2]
    assert abs(joint[0, 2] / joint[1, 2] - 2.5) < 0.05


def test_fixed_positions_no_bias():
    # forced photometry: the model is linear in the flux, which is then unbiased
    b = _one([20.3], [30.2], [120.0], [1], free=np.array([[False, False, True]]))
    assert b[0, 2] == pytest.approx(0.0, abs=1e-12)


def test_faint_and_failed_left_alone():
    # under MIN_SNR no correction; a NaN member leaves its group, the partner is still done
    snr_flux = MIN_SNR * SIGMA * np.sqrt(4 * np.pi) * (3.0 / 2.3548)
    b = _one([20.3, 24.0, 60.0], [30.2, 30.0, 60.0], [0.5 * snr_flux, np.nan, 200.0], [1, 2, 2])
    assert np.all(np.isnan(b[0])) and np.all(np.isnan(b[1]))
    assert np.all(np.isfinite(b[2]))
    np.testing.assert_allclose(b[2], _one([60.0], [60.0], [200.0], [5])[0], rtol=1e-12)


def test_fit_sky_adds_the_sky_to_the_information():
    with_sky = _one([20.3], [30.2], [150.0], [1], fit_sky=True)[0, 2]
    without = _one([20.3], [30.2], [150.0], [1])[0, 2]
    assert np.isfinite(with_sky) and with_sky > 0 and with_sky != without


@pytest.mark.parametrize(("kwargs", "call", "exc", "match"), [
    ({"bias_correction": 1}, {}, TypeError, "bias_correction must be True or False"),
    ({"bias_correction": True, "likelihood": "poisson", "read_noise": 5.0}, {}, ValueError,
     "bias_correction=True is for likelihood='gaussian'"),
    ({"bias_correction": True, "compat": "photutils"}, {}, ValueError,
     "which has no bias_correction=True"),
    ({"bias_correction": True}, {"error": None}, ValueError, "needs error"),
])
def test_bad_options(kwargs, call, exc, match):
    img, init, _ = _grid_scene(300.0, side=2)
    with pytest.raises(exc, match=match):
        phot = PSFPhotometry(PSF, (7, 7), **kwargs)
        phot(img, init_params=init, **call)


def test_generic_fitter_refused():
    from astropy.modeling.fitting import LevMarLSQFitter

    img, init, _ = _grid_scene(300.0, side=2)
    phot = PSFPhotometry(PSF, (7, 7), fitter=LevMarLSQFitter(), bias_correction=True)
    with pytest.raises(ValueError, match="bias_correction=True needs the batched engine"):
        phot(img, error=np.ones(img.shape), init_params=init)


def test_default_is_photutils_numbers():
    img, init, _ = _grid_scene(300.0, side=4)
    err = np.full(img.shape, SIGMA)
    plain = PSFPhotometry(PSF, (7, 7))(img, error=err, init_params=init)
    off = PSFPhotometry(PSF, (7, 7), bias_correction=False)(img, error=err, init_params=init)
    on = PSFPhotometry(PSF, (7, 7), bias_correction=True)(img, error=err, init_params=init)
    assert np.array_equal(np.asarray(plain["flux_fit"]), np.asarray(off["flux_fit"]))
    assert "bias_correction" not in plain.meta and on.meta["bias_correction"] is True
    d = np.asarray(on["flux_fit"]) - np.asarray(plain["flux_fit"])
    assert np.all(d < 0)  # always lowers a positive free-position flux
    # same errors and flags: only the values move
    assert np.array_equal(np.asarray(on["flux_err"]), np.asarray(plain["flux_err"]))
    assert np.array_equal(np.asarray(on["flags"]), np.asarray(plain["flags"]))


@pytest.mark.parametrize("mode", ["new", "all"])
def test_iterative_corrects_its_final_table(mode):
    from crowdphot import DAOStarFinder, IterativePSFPhotometry

    img, _, _ = _grid_scene(250.0, side=12, seed=3)
    err = np.full(img.shape, SIGMA)

    def run(corr):
        phot = IterativePSFPhotometry(PSF, (7, 7), DAOStarFinder(4 * SIGMA, 3.0),
                                      grouper=SourceGrouper(6.0), aperture_radius=4,
                                      maxiters=2, mode=mode, bias_correction=corr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return phot(img, error=err)

    plain, corr = run(False), run(True)
    assert corr.meta["bias_correction"] is True and "bias_correction" not in plain.meta
    assert len(plain) == len(corr) > 100
    f0, f1 = (np.asarray(t["flux_fit"], dtype=float) for t in (plain, corr))
    fe = np.asarray(plain["flux_err"], dtype=float)
    d = f0 - f1
    ok = np.isfinite(d)
    # the correction is the fit's own first-order bias: about flux_err**2 / flux, positive
    ratio = d[ok] / (fe[ok] ** 2 / f0[ok])
    snr = f0[ok] / fe[ok]
    done = (snr >= MIN_SNR) & (snr <= SKIP_SNR)
    assert done.sum() > 100
    assert np.all(ratio[done] > 0.5) and np.all(ratio[done] < 2.0)
    assert np.all(ratio[~done] == 0.0)  # too faint for the expansion, or negligible
    assert np.array_equal(np.asarray(plain["flags"]), np.asarray(corr["flags"]))


def test_rows_at_an_xy_bound_are_held():
    # a fit stopped at its xy_bounds is not an interior maximum: it is not corrected (and
    # no corrected position leaves its bound)
    img, init, _ = _grid_scene(100.0, side=12, seed=4)
    init["x"] = init["x"] + 0.4  # starts off by 0.4 px, bounds 0.3 px: many stop at a bound
    err = np.full(img.shape, SIGMA)
    kw = dict(xy_bounds=0.3)
    plain = PSFPhotometry(PSF, (7, 7), **kw)(img, error=err, init_params=init)
    corr = PSFPhotometry(PSF, (7, 7), bias_correction=True, **kw)(img, error=err,
                                                                    init_params=init)
    at = (np.asarray(plain["flags"]) & 32) != 0
    assert at.sum() > 10 and (~at).sum() > 10
    for c in ("x_fit", "y_fit", "flux_fit"):
        a, b = np.asarray(plain[c]), np.asarray(corr[c])
        assert np.array_equal(a[at], b[at]), c
    assert np.any(np.asarray(corr["flux_fit"])[~at] != np.asarray(plain["flux_fit"])[~at])
    dx = np.abs(np.asarray(corr["x_fit"]) - np.asarray(init["x"]))
    assert np.all(dx <= 0.3 + 1e-9)
