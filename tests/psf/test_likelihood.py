"""Maximum-likelihood (Poisson + read noise) fitting: oracle, statistics at the CRLB, shells."""

import warnings

import numpy as np
import pytest
from astropy.table import QTable
from scipy.optimize import minimize

from crowdphot import (
    CircularGaussianPRF,
    DAOStarFinder,
    IterativePSFPhotometry,
    PSFPhotometry,
    SourceGrouper,
    cramer_rao_bound,
    render_image,
)
from crowdphot.core.fit import fit_psf
from crowdphot.psf.flags import PSF_FLAGS
from crowdphot.psf.likelihood import fit_psf_likelihood

PSF = CircularGaussianPRF(fwhm=2.5)
SKY, RN = 10.0, 5.0


def _scene(flux, nside, *, spacing=16, seed=0, gain=1.0, pair_sep=None):
    """Isolated stars (or close pairs) on a grid: data in ADU with Poisson + read noise."""
    rng = np.random.default_rng(seed)
    g = (np.arange(nside) + 0.5) * spacing
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    f = np.full(x.size, float(flux))
    gid = np.arange(x.size)
    if pair_sep is not None:
        ang = rng.uniform(0, 2 * np.pi, x.size)
        sep = rng.uniform(*pair_sep, x.size)
        x = np.concatenate([x, x + sep * np.cos(ang)])
        y = np.concatenate([y, y + sep * np.sin(ang)])
        f = np.concatenate([f, f / 2])
        gid = np.concatenate([gid, gid])
    shape = (nside * spacing, nside * spacing)
    expect_e = render_image(shape, PSF, x, y, f, model_shape=15) + SKY
    data_e = rng.poisson(expect_e) + rng.normal(0, RN, shape)
    start = np.random.default_rng(seed + 1)
    xi = x + start.normal(0, 0.05, x.size)
    yi = y + start.normal(0, 0.05, x.size)
    fi = f * (1 + start.normal(0, 0.02, x.size))
    return data_e / gain, x, y, f / gain, (xi, yi, fi / gain), gid


def _nll(p, data, xlo, ylo, shape, rn, gain, bkg):
    """Shifted-Poisson negative log-likelihood of one star (electrons)."""
    u = PSF.psf_stamps([p[0]], [p[1]], shape, xlo=[xlo], ylo=[ylo])[0]
    mu = gain * (p[2] * u + bkg) + rn**2
    d = gain * data + rn**2
    return float(np.sum(mu - d * np.log(mu)))


@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_matches_brute_force_likelihood_maximum(gain):
    data, x, y, f, (xi, yi, fi), _ = _scene(800.0, 3, seed=3, gain=gain)
    bkg = np.full(x.size, SKY / gain)
    res = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN, gain=gain,
                             local_bkg=bkg, xtol=1e-9, bias_correction=False)
    assert res.converged.all()
    for i in range(x.size):
        xlo, ylo = int(np.ceil(xi[i] - 3.5)), int(np.ceil(yi[i] - 3.5))
        stamp = data[ylo:ylo + 7, xlo:xlo + 7]
        opt = minimize(_nll, [x[i], y[i], f[i]], method="Nelder-Mead",
                       args=(stamp, xlo, ylo, (7, 7), RN, gain, SKY / gain),
                       options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 20000})
        got = np.array([res.x[i], res.y[i], res.flux[i]])
        err = np.array([res.x_err[i], res.y_err[i], res.flux_err[i]])
        assert np.all(np.abs(got - opt.x) < 2e-3 * err), (got, opt.x, err)


def _stats(res, x, y, f, crlb):
    n = x.size
    df = res.flux - f
    return {
        "bias": np.median(df) / f[0],
        "bias_se": 1.2533 * np.std(df) / np.sqrt(n) / f[0],
        "sd_flux": np.std(df) / np.mean(crlb["flux_crlb"]),
        "sd_x": np.std(res.x - x) / np.mean(crlb["x_crlb"]),
        "pull_flux": np.std(df / res.flux_err),
        "pull_x": np.std((res.x - x) / res.x_err),
        "tol_sd": 3.0 / np.sqrt(2 * n),
    }


@pytest.mark.parametrize("flux", [500.0, 3000.0, 3e4])
def test_isolated_stars_reach_the_bound_without_bias(flux):
    data, x, y, f, (xi, yi, fi), _ = _scene(flux, 40, seed=int(flux))
    bkg = np.full(x.size, SKY)
    crlb = cramer_rao_bound(PSF, f, x, y, sky=SKY, read_noise=RN, fit_shape=7)
    ml = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN, local_bkg=bkg)
    assert ml.converged.all()
    s = _stats(ml, x, y, f, crlb)
    assert abs(s["bias"]) < 3 * s["bias_se"] + 1e-4, s
    assert 1 - s["tol_sd"] < s["sd_flux"] < 1.05 + s["tol_sd"], s
    assert 1 - s["tol_sd"] < s["sd_x"] < 1.05 + s["tol_sd"], s
    assert abs(s["pull_flux"] - 1) < s["tol_sd"], s
    assert abs(s["pull_x"] - 1) < s["tol_sd"], s
    # contrast: least squares with data-based weights sqrt(data + rn^2) is biased low
    ls = fit_psf(data, PSF, xi, yi, fi, fit_shape=7, local_bkg=bkg,
                 error=np.sqrt(np.maximum(data, 0) + RN**2))
    g = _stats(ls, x, y, f, crlb)
    if flux <= 3000:
        assert g["bias"] < -5 * g["bias_se"], g


def test_bias_correction_is_cox_snell_at_the_estimate():
    from crowdphot.core.crlb import cox_snell_bias

    data, x, y, f, (xi, yi, fi), _ = _scene(300.0, 6, seed=21)
    bkg = np.full(x.size, SKY)
    raw = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN, local_bkg=bkg,
                             bias_correction=False)
    cor = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN, local_bkg=bkg)
    xlo, ylo = np.ceil(xi - 3.5).astype(int), np.ceil(yi - 3.5).astype(int)
    b = cox_snell_bias(PSF, raw.x, raw.y, raw.flux, (7, 7), sky=SKY, read_noise=RN, gain=1.0,
                       xlo=xlo, ylo=ylo)
    np.testing.assert_allclose(cor.flux, raw.flux - b[:, 2], rtol=1e-12)
    np.testing.assert_allclose(cor.x, raw.x - b[:, 0], rtol=1e-12)
    assert np.all(b[:, 2] > 0)


def test_faint_stars_unbiased_after_correction():
    # S/N 5.6: the plain MLE is +2.6 % high (free positions); the corrected one is not
    data, x, y, f, (xi, yi, fi), _ = _scene(150.0, 48, seed=150)
    bkg = np.full(x.size, SKY)
    crlb = cramer_rao_bound(PSF, f, x, y, sky=SKY, read_noise=RN, fit_shape=7)
    raw = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN, local_bkg=bkg,
                             bias_correction=False)
    ml = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN, local_bkg=bkg)
    # at S/N 5 a rare noise realisation has no stable maximum: reported, not hidden
    assert np.mean(ml.converged) > 0.998
    s, r = _stats(ml, x, y, f, crlb), _stats(raw, x, y, f, crlb)
    assert r["bias"] > 4 * r["bias_se"], r
    assert abs(s["bias"]) < 3 * s["bias_se"], s
    assert abs(s["pull_flux"] - 1) < s["tol_sd"] and abs(s["pull_x"] - 1) < 0.05, s
    assert s["sd_flux"] < 1.05 + s["tol_sd"], s

def test_forced_photometry_has_no_bias_correction():
    # positions fixed: the flux model is linear, its Cox-Snell bias is zero (and the MLE of
    # the flux alone is unbiased)
    data, x, y, f, (xi, yi, fi), _ = _scene(300.0, 24, seed=7)
    kw = dict(fit_shape=7, read_noise=RN, local_bkg=np.full(x.size, SKY),
              fixed={"x": True, "y": True})
    raw = fit_psf_likelihood(data, PSF, x, y, fi, bias_correction=False, **kw)
    cor = fit_psf_likelihood(data, PSF, x, y, fi, **kw)
    np.testing.assert_array_equal(cor.flux, raw.flux)
    df = cor.flux - f
    assert abs(np.mean(df)) < 4 * np.std(df) / np.sqrt(x.size)
    assert np.all(np.isnan(cor.x_err)) and np.all(cor.x == x)

def test_blended_pairs_have_honest_errors():
    data, x, y, f, (xi, yi, fi), gid = _scene(3000.0, 32, spacing=20, seed=11,
                                              pair_sep=(1.5, 3.5))
    ml = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN,
                            local_bkg=np.full(x.size, SKY), group_id=gid)
    assert ml.converged.all()
    tol = 3.0 / np.sqrt(2 * x.size)
    for name, truth in (("flux", f), ("x", x), ("y", y)):
        pull = (getattr(ml, name) - truth) / getattr(ml, f"{name}_err")
        assert abs(np.std(pull) - 1) < tol, (name, np.std(pull))
        assert abs(np.median(pull)) < 4 * 1.2533 / np.sqrt(x.size), (name, np.median(pull))


def test_group_errors_are_the_observed_information():
    # oracle: the numerical Hessian of the pair's shifted-Poisson log-likelihood over the
    # union of the members' fit stamps (a pixel once)
    data, x, y, f, (xi, yi, fi), gid = _scene(800.0, 3, spacing=20, seed=13,
                                              pair_sep=(2.0, 3.0))
    ml = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN,
                            local_bkg=np.full(x.size, SKY), group_id=gid, profile_errors=False)
    assert ml.converged.all()
    xlo, ylo = np.ceil(xi - 3.5).astype(int), np.ceil(yi - 3.5).astype(int)
    for g in np.unique(gid):
        i, j = np.flatnonzero(gid == g)
        bx, by = min(xlo[i], xlo[j]), min(ylo[i], ylo[j])
        shape = (max(ylo[i], ylo[j]) + 7 - by, max(xlo[i], xlo[j]) + 7 - bx)
        use = np.zeros(shape, dtype=bool)
        for k in (i, j):
            use[ylo[k] - by:ylo[k] - by + 7, xlo[k] - bx:xlo[k] - bx + 7] = True
        d = data[by:by + shape[0], bx:bx + shape[1]][use] + RN**2

        def nll(p, bx=bx, by=by, shape=shape, use=use, d=d):
            u = PSF.psf_stamps([p[0], p[3]], [p[1], p[4]], shape, xlo=[bx, bx], ylo=[by, by])
            mu = (p[2] * u[0] + p[5] * u[1] + SKY)[use] + RN**2
            return float(np.sum(mu - d * np.log(mu)))

        p0 = np.array([ml.x[i], ml.y[i], ml.flux[i], ml.x[j], ml.y[j], ml.flux[j]])
        step = np.array([1e-3, 1e-3, 0.5, 1e-3, 1e-3, 0.5])
        hess = np.empty((6, 6))
        for a in range(6):
            for c in range(6):
                e_a, e_c = np.eye(6)[a] * step[a], np.eye(6)[c] * step[c]
                hess[a, c] = (nll(p0 + e_a + e_c) - nll(p0 + e_a - e_c) - nll(p0 - e_a + e_c)
                              + nll(p0 - e_a - e_c)) / (4 * step[a] * step[c])
        sig = np.sqrt(np.diag(np.linalg.inv(hess)))
        got = [ml.x_err[i], ml.y_err[i], ml.flux_err[i], ml.x_err[j], ml.y_err[j],
               ml.flux_err[j]]
        np.testing.assert_allclose(got, sig, rtol=2e-3)


def test_resolved_faint_pairs_have_honest_errors():
    # 500 + 250 e- pairs 2.5-3.5 px apart (1-1.4 FWHM): errors from the group's observed
    # information describe the scatter (closer, barely resolved pairs do not follow the
    # asymptotic theory: see bench/RESULTS.md)
    data, x, y, f, (xi, yi, fi), gid = _scene(500.0, 32, spacing=20, seed=17,
                                              pair_sep=(2.5, 3.5))
    ml = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN,
                            local_bkg=np.full(x.size, SKY), group_id=gid)
    assert np.mean(ml.converged) > 0.998
    tol = 3.0 / np.sqrt(2 * x.size)
    for name, truth in (("flux", f), ("x", x), ("y", y)):
        pull = (getattr(ml, name) - truth) / getattr(ml, f"{name}_err")
        assert abs(np.std(pull) - 1) < tol, (name, np.std(pull))
        assert abs(np.median(pull)) < 4 * 1.2533 / np.sqrt(x.size), (name, np.median(pull))


def test_fitted_sky_with_poisson_likelihood():
    data, x, y, f, (xi, yi, fi), _ = _scene(3000.0, 24, seed=5)
    ml = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=9, read_noise=RN, fit_sky=True)
    crlb = cramer_rao_bound(PSF, f, x, y, sky=SKY, read_noise=RN, fit_shape=9, fit_sky=True)
    assert ml.converged.all()
    tol = 3.0 / np.sqrt(2 * x.size)
    assert abs(np.median(ml.sky) - SKY) < 4 * 1.2533 * np.mean(crlb["sky_crlb"]) / np.sqrt(
        x.size)
    assert abs(np.std((ml.sky - SKY) / ml.sky_err) - 1) < tol
    assert abs(np.std((ml.flux - f) / ml.flux_err) - 1) < tol


def test_unconverged_fit_is_reported():
    data, x, y, f, (xi, yi, fi), _ = _scene(3000.0, 4, seed=2)
    res = fit_psf_likelihood(data, PSF, xi, yi, 0.5 * fi, fit_shape=7, read_noise=RN,
                             local_bkg=np.full(x.size, SKY), maxiters=1)
    assert not res.converged.any()
    full = fit_psf_likelihood(data, PSF, xi, yi, 0.5 * fi, fit_shape=7, read_noise=RN,
                              local_bkg=np.full(x.size, SKY))
    assert full.converged.all()


def test_low_counts_converge():
    # sky 0.3 e-/px, read noise 0.5 e-: plain reweighting (weights frozen per solve) oscillates
    # for some stars (fixed-point factor near -1); damped Fisher scoring on the likelihood
    # converges
    rng = np.random.default_rng(0)
    n, sp = 20, 14
    g = (np.arange(n) + 0.5) * sp
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, n * n)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, n * n)
    f = np.full(n * n, 60.0)
    img = rng.poisson(render_image((n * sp, n * sp), PSF, x, y, f, model_shape=15) + 0.3)
    img = img + rng.normal(0, 0.5, img.shape)
    res = fit_psf_likelihood(img, PSF, x + rng.normal(0, 0.1, n * n),
                             y + rng.normal(0, 0.1, n * n), 1.2 * f, fit_shape=5,
                             read_noise=0.5, local_bkg=np.full(n * n, 0.3))
    assert res.converged.all()
    tol = 3.0 / np.sqrt(2 * n * n)
    assert abs(np.std((res.flux - f) / res.flux_err) - 1) < tol
    assert abs(np.median(res.flux - f)) < 4 * 1.2533 * np.std(res.flux - f) / n

def test_sky_map_equals_local_background():
    data, x, y, f, (xi, yi, fi), _ = _scene(2000.0, 4, seed=4)
    a = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN,
                           local_bkg=np.full(x.size, SKY))
    b = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN,
                           sky=np.full(data.shape, SKY))
    np.testing.assert_allclose(b.flux, a.flux, rtol=1e-9)
    np.testing.assert_allclose(b.flux_err, a.flux_err, rtol=1e-9)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"read_noise": -1}, ValueError, "read_noise"),
    ({"read_noise": 5, "gain": 0}, ValueError, "gain"),
    ({"read_noise": 5, "maxiters": 0}, ValueError, "maxiters"),
    ({"read_noise": 5, "error": np.ones((32, 32))}, ValueError, "error"),
    ({"read_noise": 5, "sky": np.ones((3, 3))}, ValueError, "sky"),
])
def test_fit_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fit_psf_likelihood(np.ones((32, 32)), PSF, [10.0], [10.0], [100.0], fit_shape=5,
                           **kwargs)


# -- the photometry shells ----------------------------------------------------------------------
def _table_scene():
    data, x, y, f, (xi, yi, fi), _ = _scene(2000.0, 5, seed=8)
    init = QTable({"x": xi, "y": yi, "flux": fi, "local_bkg": np.full(x.size, SKY)})
    return data, init


def test_photometry_poisson_mode_and_crlb_column():
    data, init = _table_scene()
    phot = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN, crlb=True)
    tbl = phot(data, init_params=init)
    direct = fit_psf_likelihood(data, PSF, init["x"], init["y"], init["flux"], fit_shape=7,
                                read_noise=RN, local_bkg=init["local_bkg"])
    np.testing.assert_allclose(tbl["flux_fit"], direct.flux, rtol=1e-9)
    assert tbl.colnames.index("flux_crlb") == tbl.colnames.index("flux_err") + 1
    # isolated stars: the observed-information error scatters around the bound at the fitted
    # parameters (expected information)
    ratio = np.asarray(tbl["flux_err"] / tbl["flux_crlb"])
    assert abs(np.mean(ratio) - 1) < 0.02 and np.all(np.abs(ratio - 1) < 0.1)
    assert np.all(tbl["flags"] & PSF_FLAGS.NO_CONVERGENCE == 0)
    assert tbl.meta["likelihood"] == "poisson"


def test_gaussian_default_is_unchanged():
    data, init = _table_scene()
    err = np.sqrt(np.maximum(data, 0) + RN**2)
    a = PSFPhotometry(PSF, 7)(data, error=err, init_params=init)
    b = PSFPhotometry(PSF, 7, likelihood="gaussian", read_noise=RN, crlb=True)(
        data, error=err, init_params=init)
    assert "flux_crlb" not in a.colnames and "likelihood" not in a.meta
    for c in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[c]), np.asarray(b[c]))
    assert np.all(b["flux_crlb"] > 0)


def test_photometry_option_checks():
    with pytest.raises(ValueError, match="read_noise"):
        PSFPhotometry(PSF, 7, likelihood="poisson")
    with pytest.raises(ValueError, match="likelihood"):
        PSFPhotometry(PSF, 7, likelihood="cauchy", read_noise=1.0)
    with pytest.raises(ValueError, match="gain"):
        PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=1.0, gain=-2)
    with pytest.raises(TypeError, match="crlb"):
        PSFPhotometry(PSF, 7, crlb="yes", read_noise=1.0)
    data, init = _table_scene()
    phot = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN)
    with pytest.warns(UserWarning, match="error is ignored"):
        tbl = phot(data, error=np.ones(data.shape), init_params=init)
    np.testing.assert_allclose(tbl["flux_fit"], phot(data, init_params=init)["flux_fit"])
    psf = CircularGaussianPRF(fwhm=2.5)
    psf.fwhm.fixed = False
    with pytest.raises(ValueError, match="batched engine"):
        PSFPhotometry(psf, 7, likelihood="poisson", read_noise=RN)(data, init_params=init)


def test_iterative_poisson():
    data, init = _table_scene()
    finder = DAOStarFinder(threshold=50.0, fwhm=2.5)
    with pytest.raises(ValueError, match="mode='all'"):
        IterativePSFPhotometry(PSF, 7, finder, aperture_radius=3, likelihood="poisson",
                               read_noise=RN)
    it = IterativePSFPhotometry(PSF, 7, finder, aperture_radius=3, likelihood="poisson",
                                read_noise=RN, mode="all", grouper=SourceGrouper(5.0),
                                maxiters=2, crlb=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = it(data - 0.0, init_params=init)
    assert len(tbl) >= len(init) and "flux_crlb" in tbl.colnames


def test_tiled_run_equals_whole_image():
    from crowdphot import photometry_tiled

    data, x, y, f, (xi, yi, fi), _ = _scene(2000.0, 8, seed=9)
    init = QTable({"x": xi, "y": yi, "flux": fi, "local_bkg": np.full(x.size, SKY)})
    a = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN, crlb=True)(
        data, init_params=init)
    b = photometry_tiled(data, PSF, 7, init_params=init, tile_shape=48, likelihood="poisson",
                         read_noise=RN, crlb=True)
    for c in ("flux_fit", "x_fit", "flux_err", "flux_crlb"):
        np.testing.assert_allclose(np.asarray(b[c]), np.asarray(a[c]), rtol=1e-9)


# -- command line -------------------------------------------------------------------------------
class _Image:
    def __init__(self, unit, **keys):
        self.unit, self.keys = unit, keys

    def keyword(self, key, default=None):
        return self.keys.get(key, default)


def _args(**kw):
    import argparse

    base = {"likelihood": "poisson", "read_noise": None, "gain": None, "crlb": False}
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_noise_options_from_headers():
    from crowdphot.cli.errors import CLIError
    from crowdphot.cli.noise import noise_options

    assert noise_options(_args(likelihood="gaussian"), _Image("DN")) == {}
    got = noise_options(_args(), _Image("DN", RDNOISE=4.5, GAIN=2.0))
    assert got == {"likelihood": "poisson", "read_noise": 4.5, "gain": 2.0, "crlb": False}
    # HST: per-amplifier read noise, data in electrons -> gain 1 whatever ATODGAIN says
    hst = _Image("ELECTRONS", READNSEA=3.0, READNSEB=4.0, ATODGAIN=1.5)
    assert noise_options(_args(), hst)["read_noise"] == 3.5
    assert noise_options(_args(), hst)["gain"] == 1.0
    # options win over the header
    assert noise_options(_args(read_noise=1.0, gain=3.0), hst)["gain"] == 3.0
    with pytest.raises(CLIError, match="read-noise"):
        noise_options(_args(), _Image("DN", GAIN=2.0))
    with pytest.raises(CLIError, match="--gain"):
        noise_options(_args(), _Image("DN", RDNOISE=2.0))
    with pytest.raises(CLIError, match="counts"):
        noise_options(_args(read_noise=5.0, gain=1.0), _Image("MJy/sr"))
    with pytest.raises(CLIError, match="gain must be"):
        noise_options(_args(read_noise=5.0, gain=-1.0), _Image("DN"))


def test_cli_poisson_run(tmp_path):
    from astropy.table import Table

    from crowdphot.cli import main

    img = str(tmp_path / "sim.fits")
    assert main(["simulate", img, "--n-sources", "12", "--shape", "160", "160",
                 "--min-separation", "12", "--no-progress", "--seed", "3"]) == 0
    out = str(tmp_path / "cat.ecsv")
    assert main(["phot", img, "-o", out, "--likelihood", "poisson", "--read-noise", "0.5",
                 "--crlb", "--local-bkg", "8", "12", "--no-progress"]) == 0
    t = Table.read(out)
    assert t.meta["likelihood"] == "poisson" and t.meta["gain"] == 1.0  # header GAIN
    assert str(t["flux_crlb"].unit) == str(t["flux_err"].unit)
    ok = t["flags"] == 0
    assert ok.sum() >= 8
    np.testing.assert_allclose(t["flux_err"][ok], t["flux_crlb"][ok], rtol=0.1)


def test_cli_poisson_keeps_the_subtracted_sky_in_the_expectation(tmp_path):
    from astropy.io import fits
    from astropy.table import Table

    from crowdphot.cli import main

    img = str(tmp_path / "sim.fits")
    assert main(["simulate", img, "--n-sources", "12", "--shape", "160", "160",
                 "--min-separation", "12", "--no-progress", "--seed", "3"]) == 0
    with fits.open(img) as hdul:
        hdul["SCI"].data = hdul["SCI"].data + 40.0  # a sky of 40 DN (gain 1)
        hdul["ERR"].data = np.sqrt(hdul["ERR"].data ** 2 + 40.0)
        hdul.writeto(str(tmp_path / "sky.fits"))
    cats = {}
    for name in ("sim", "sky"):
        out = str(tmp_path / f"{name}.ecsv")
        assert main(["phot", str(tmp_path / f"{name}.fits"), "-o", out, "--likelihood",
                     "poisson", "--read-noise", "0.5", "--crlb", "--no-progress"]) == 0
        cats[name] = Table.read(out)
    a, b = cats["sim"], cats["sky"]
    assert b.meta["sky"] == "map" and abs(b.meta["sky_median"] - 40.0) < 0.5
    assert len(a) == len(b)
    # the sky map (subtracted before finding) is in every pixel's expectation: wider bounds
    # and errors than on the sky-free image, the errors at the bound
    assert np.all(np.asarray(b["flux_crlb"]) > 1.02 * np.asarray(a["flux_crlb"]))
    np.testing.assert_allclose(b["flux_err"], b["flux_crlb"], rtol=0.1)


def test_summary_figure():
    pytest.importorskip("matplotlib")
    from crowdphot.viz.likelihood import plot_likelihood_summary

    rows = [{"likelihood": lik, "snr": snr, "bias": b, "bias_se": 0.1, "sd_flux": 1.0,
             "sd_x": 1.02, "pull_flux": 1.0}
            for lik, b in (("gaussian", -2.0), ("poisson", 0.0)) for snr in (5.0, 50.0)]
    fig = plot_likelihood_summary(rows, title="t")
    assert len(fig.axes) == 3
    assert len(fig.axes[0].lines) >= 2


def _sloped_sky(shape):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return 6.0 + 0.08 * xx + 0.05 * yy


def test_photometry_sky_map_enters_the_expectation():
    # a sloped sky in the data: PSFPhotometry(sky=map) subtracts it and puts it into every
    # pixel's expectation, exactly as the driver's own sky map; a constant map is local_bkg
    rng = np.random.default_rng(12)
    n = 8
    g = (np.arange(n) + 0.5) * 16
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, n * n)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, n * n)
    f = np.full(n * n, 1500.0)
    sky = _sloped_sky((128, 128))
    data = rng.poisson(render_image(sky.shape, PSF, x, y, f, model_shape=15) + sky) \
        + rng.normal(0, RN, sky.shape)
    init = QTable({"x": x, "y": y, "flux": f})
    phot = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN, crlb=True)
    tbl = phot(data, init_params=init, sky=sky)
    direct = fit_psf_likelihood(data, PSF, x, y, f, fit_shape=7, read_noise=RN, sky=sky)
    np.testing.assert_allclose(tbl["flux_fit"], direct.flux, rtol=1e-9)
    np.testing.assert_allclose(tbl["flux_err"], direct.flux_err, rtol=1e-9)
    xf, yf = np.asarray(tbl["x_fit"]), np.asarray(tbl["y_fit"])
    crlb = cramer_rao_bound(PSF, np.asarray(tbl["flux_fit"]), xf, yf,
                            sky=sky[np.round(yf).astype(int), np.round(xf).astype(int)],
                            read_noise=RN, fit_shape=7)
    # the bound at the fit with the local sky level (the map is nearly flat over a stamp)
    np.testing.assert_allclose(tbl["flux_crlb"], crlb["flux_crlb"], rtol=0.01)
    assert abs(np.std((tbl["flux_fit"] - f) / tbl["flux_err"]) - 1) < 3 / np.sqrt(2 * n * n)
    # without the map in the expectation the variances are too small: errors shrink
    sub = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN)(data - sky,
                                                                    init_params=init)
    assert np.all(sub["flux_err"] < 0.99 * tbl["flux_err"])
    const = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN)
    a = const(data, init_params=QTable({"x": x, "y": y, "flux": f,
                                        "local_bkg": np.full(x.size, 9.0)}))
    b = const(data, init_params=init, sky=9.0)
    np.testing.assert_allclose(b["flux_fit"], a["flux_fit"], rtol=1e-9)
    # the Gaussian mode just subtracts it
    err = np.sqrt(np.maximum(data, 1.0))
    c = PSFPhotometry(PSF, 7)(data, error=err, init_params=init, sky=sky)
    d = PSFPhotometry(PSF, 7)(data - sky, error=err, init_params=init)
    np.testing.assert_array_equal(np.asarray(c["flux_fit"]), np.asarray(d["flux_fit"]))
    with pytest.raises(ValueError, match="sky"):
        phot(data, init_params=init, sky=np.ones((3, 3)))
    with pytest.raises(ValueError, match="sky"):
        phot(data, init_params=init, sky=np.full(data.shape, np.nan))


def test_iterative_sky_map():
    data, init = _table_scene()
    finder = DAOStarFinder(threshold=50.0, fwhm=2.5)
    it = IterativePSFPhotometry(PSF, 7, finder, aperture_radius=3, likelihood="poisson",
                                read_noise=RN, mode="all", maxiters=2,
                                grouper=SourceGrouper(5.0))
    one = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN, grouper=SourceGrouper(5.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = it(data, init_params=init[["x", "y", "flux"]], sky=SKY)
        ref = one(data, init_params=init[["x", "y", "flux"]], sky=SKY)
    # the same stars (no new detection on a clean residual), the same fit
    assert len(tbl) == len(ref)
    np.testing.assert_allclose(tbl["flux_fit"], ref["flux_fit"], rtol=1e-6)


def test_poisson_mode_flags_unresolved_blends():
    # 500 + 250 e- pairs 1.5-2 px apart: the witness test (crowdphot.psf.blends) runs with the
    # fitted model's variances; flagged members are the ones whose errors are too small
    data, x, y, f, (xi, yi, fi), gid = _scene(500.0, 16, spacing=20, seed=23,
                                              pair_sep=(1.5, 2.0))
    init = QTable({"x": xi, "y": yi, "flux": fi, "local_bkg": np.full(x.size, SKY),
                   "group_id": gid + 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN)(data, init_params=init)
    flagged = np.asarray(tbl["flags"]) & PSF_FLAGS.UNRESOLVED_BLEND > 0
    assert 0.01 < np.mean(flagged) < 0.3
    pull = np.abs((np.asarray(tbl["flux_fit"]) - f) / np.asarray(tbl["flux_err"]))
    assert np.median(pull[flagged]) > 2 * np.median(pull[~flagged])
    # isolated stars are never tested
    data1, init1 = _table_scene()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN)(data1,
                                                                        init_params=init1)
    assert np.all(np.asarray(one["flags"]) & PSF_FLAGS.UNRESOLVED_BLEND == 0)


def test_expected_error_image():
    from crowdphot.psf.likelihood import expected_error_image

    t = QTable({"x_init": [10.0, 30.0], "y_init": [10.0, 12.0], "group_id": [1, 2],
                "local_bkg": [5.0, 8.0]})
    vals = {"x": np.array([10.2, 30.0]), "y": np.array([9.9, 12.0]),
            "flux": np.array([1000.0, np.nan])}
    sky = np.full((24, 40), 2.0)
    err = expected_error_image((24, 40), PSF, t, vals, (7, 7), 3.0, 2.0, sky=sky)
    mu = render_image((24, 40), PSF, [10.2], [9.9], [1000.0]) + sky
    mu[7:14, 7:14] += 5.0
    mu[9:16, 27:34] += 8.0
    np.testing.assert_allclose(err, np.sqrt(mu / 2.0 + (3.0 / 2.0) ** 2), rtol=1e-12)


def _pair_nll(data, bx, by, shape, use):
    """Negative shifted-Poisson log-likelihood of a pair over the union of its stamps."""
    d = data[by:by + shape[0], bx:bx + shape[1]][use] + RN**2

    def nll(p):
        u = PSF.psf_stamps([p[0], p[3]], [p[1], p[4]], shape, xlo=[bx, bx], ylo=[by, by])
        mu = (p[2] * u[0] + p[5] * u[1] + SKY)[use] + RN**2
        return float(np.sum(mu - d * np.log(mu)))

    return nll


def test_profile_errors_are_the_profile_likelihood_widths():
    # oracle: the exact profile likelihood of a close pair (scipy, the other 5 parameters
    # re-optimised) at the parameter +- 2 Fisher errors; the error is the larger half-width
    # of that interval, never below the Fisher error
    from crowdphot.psf._mlrefine import PROFILE_K

    data, x, y, f, (xi, yi, fi), gid = _scene(500.0, 2, spacing=20, seed=31,
                                              pair_sep=(1.6, 2.2))
    kw = dict(fit_shape=7, read_noise=RN, local_bkg=np.full(x.size, SKY), group_id=gid)
    fisher = fit_psf_likelihood(data, PSF, xi, yi, fi, profile_errors=False, **kw)
    prof = fit_psf_likelihood(data, PSF, xi, yi, fi, **kw)
    for name in ("x", "y", "flux"):  # estimates unchanged, errors never smaller
        np.testing.assert_array_equal(getattr(prof, name), getattr(fisher, name))
        assert np.all(getattr(prof, f"{name}_err") >= getattr(fisher, f"{name}_err"))
    xlo, ylo = np.ceil(xi - 3.5).astype(int), np.ceil(yi - 3.5).astype(int)
    widened = 0
    for g in np.unique(gid):
        i, j = np.flatnonzero(gid == g)
        bx, by = min(xlo[i], xlo[j]), min(ylo[i], ylo[j])
        shape = (max(ylo[i], ylo[j]) + 7 - by, max(xlo[i], xlo[j]) + 7 - bx)
        use = np.zeros(shape, dtype=bool)
        for k in (i, j):
            use[ylo[k] - by:ylo[k] - by + 7, xlo[k] - bx:xlo[k] - bx + 7] = True
        nll = _pair_nll(data, bx, by, shape, use)
        p0 = np.array([fisher.x[i], fisher.y[i], fisher.flux[i], fisher.x[j], fisher.y[j],
                       fisher.flux[j]])
        scale = np.array([0.1, 0.1, 50.0, 0.1, 0.1, 50.0])
        for src, off in ((i, 0), (j, 3)):
            for q, name in ((0, "x"), (2, "flux")):
                col = off + q
                sig = getattr(fisher, f"{name}_err")[src]
                width = 1.0
                for sign in (1.0, -1.0):
                    held = p0[col] + sign * PROFILE_K * sig
                    others = [c for c in range(6) if c != col]

                    def part(z, col=col, held=held, others=others, p0=p0, nll=nll,
                             scale=scale):
                        p = np.empty(6)
                        p[col] = held
                        p[others] = p0[others] + z * scale[others]
                        return nll(p)

                    best = minimize(part, np.zeros(5), method="BFGS",
                                    options=dict(gtol=1e-7, eps=1e-7))
                    dev = 2.0 * (best.fun - nll(p0))
                    width = max(width, PROFILE_K / np.sqrt(dev))
                got = getattr(prof, f"{name}_err")[src] / sig
                assert got == pytest.approx(width, rel=0.03), (g, src, name, got, width)
                widened += width > 1.05
    assert widened >= 2  # the test has teeth: some Fisher errors are too small here


def test_close_pairs_have_honest_errors():
    # 500 + 250 e- pairs 1.5-3.5 px apart (0.6-1.4 FWHM, as bench_likelihood): with the
    # profile-likelihood errors the unflagged members' pull widths meet the goal (1 +- 0.05,
    # plus 2 s.e. of a std); the Fisher errors alone give flux pulls ~0.09 wider on the same
    # fits (1.08-1.14 over three seeds; 1.24-1.30 below 2.5 px)
    data, x, y, f, (xi, yi, fi), gid = _scene(500.0, 28, spacing=20, seed=37,
                                              pair_sep=(1.5, 3.5))
    init = QTable({"x": xi, "y": yi, "flux": fi, "local_bkg": np.full(x.size, SKY),
                   "group_id": gid + 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tbl = PSFPhotometry(PSF, 7, likelihood="poisson", read_noise=RN)(data, init_params=init)
    good = np.asarray(tbl["flags"]) == 0
    assert np.mean(good) > 0.98
    tol = 0.05 + 2.0 / np.sqrt(2 * good.sum())
    widths = {}
    for name, truth in (("flux", f), ("x", x), ("y", y)):
        pull = ((np.asarray(tbl[f"{name}_fit"]) - truth) / np.asarray(tbl[f"{name}_err"]))
        widths[name] = np.std(pull[good])
        assert abs(widths[name] - 1) < tol, (name, widths[name])
    fisher = fit_psf_likelihood(data, PSF, xi, yi, fi, fit_shape=7, read_noise=RN,
                                local_bkg=np.full(x.size, SKY), group_id=gid,
                                profile_errors=False)
    assert np.std(((fisher.flux - f) / fisher.flux_err)[good]) > widths["flux"] + 0.05
