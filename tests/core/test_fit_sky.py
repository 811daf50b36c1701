"""A sky fitted per group jointly with its stars (``fit_sky=True``), the engine's proof that
its parameter set is data (``crowdphot.core.fit.params``).

Oracles: scipy.optimize.least_squares on the same problem (same stamps, pixels, weights, one
extra sky parameter per group), the dense and sparse (PCG, sparse LU, slab) paths against each
other, and a seeded simulate-and-recover run with a sky offset.
"""

import numpy as np
import pytest
from astropy.table import QTable
from scipy.optimize import least_squares

from crowdphot.core.batched import stamp_origin
from crowdphot.core.fit import fit_psf
from crowdphot.core.fit.params import ParamSet
from crowdphot.core.render import render_image
from crowdphot.models.analytic import CircularGaussianPRF

FWHM = 2.5


@pytest.fixture(scope="module")
def psf():
    return CircularGaussianPRF(fwhm=FWHM)


def _pixels(x0, y0, fit_shape, shape):
    xlo, ylo = stamp_origin(np.array([x0]), np.array([y0]), fit_shape)
    yy, xx = np.meshgrid(np.arange(ylo[0], ylo[0] + fit_shape[0]),
                         np.arange(xlo[0], xlo[0] + fit_shape[1]), indexing="ij")
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    return yy[ok], xx[ok]


def sky_oracle(img, psf, x0, y0, f0, groups, fit_shape, error=None):
    """least_squares per group over the union of its members' stamps (each pixel once), with
    parameters (x, y, flux) per member and one sky; returns values, errors and covariances."""
    n = len(x0)
    out = np.full((n, 4), np.nan)
    err = np.full((n, 4), np.nan)
    for g in np.unique(groups):
        mem = np.flatnonzero(groups == g)
        seen, yy, xx = set(), [], []
        for i in mem:
            for a, b in zip(*_pixels(x0[i], y0[i], fit_shape, img.shape), strict=True):
                if (a, b) not in seen:
                    seen.add((a, b))
                    yy.append(a)
                    xx.append(b)
        yi, xi = np.array(yy), np.array(xx)
        d = img[yi, xi]
        w = np.ones_like(d) if error is None else 1.0 / error[yi, xi]
        k = len(mem)

        def resid(p, xi=xi, yi=yi, d=d, w=w, k=k):
            s = p[:3 * k].reshape(k, 3)
            v = psf._unit(xi[None].astype(float), yi[None].astype(float), s[:, 0], s[:, 1])
            return (d - (s[:, 2:3] * v).sum(axis=0) - p[-1]) * w

        def jac(p, xi=xi, yi=yi, w=w, k=k):
            s = p[:3 * k].reshape(k, 3)
            v, gx, gy = psf._unit_grad(xi[None].astype(float), yi[None].astype(float),
                                       s[:, 0], s[:, 1])
            j = np.stack([s[:, 2:3] * gx, s[:, 2:3] * gy, v], axis=1).reshape(3 * k, -1)
            j = np.vstack([j, np.ones((1, len(xi)))])
            return -(j * w).T

        p0 = np.r_[np.column_stack([x0[mem], y0[mem], f0[mem]]).ravel(), 0.0]
        sol = least_squares(resid, p0, jac=jac, xtol=1e-15, ftol=1e-15, gtol=1e-15,
                            x_scale="jac", max_nfev=500)
        cov = np.linalg.inv(sol.jac.T @ sol.jac)
        if error is None:
            cov *= 2 * sol.cost / (len(d) - len(p0))
        e = np.sqrt(np.diag(cov))
        out[mem, :3] = sol.x[:3 * k].reshape(k, 3)
        out[mem, 3] = sol.x[-1]
        err[mem, :3] = e[:3 * k].reshape(k, 3)
        err[mem, 3] = e[-1]
    return out, err


@pytest.fixture(scope="module")
def scene(psf):
    """Groups of 1-4 blended stars on a sky of 7, with noise."""
    rng = np.random.default_rng(11)
    centers = np.array([[12.0, 12.0], [40.0, 14.0], [15.0, 40.0], [45.0, 42.0], [28.0, 27.0]])
    xs, ys, gid = [], [], []
    for g, ((cx, cy), k) in enumerate(zip(centers, [1, 2, 3, 4, 2], strict=True)):
        ang = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(k) / k
        r = 0.0 if k == 1 else 2.3
        xs.append(cx + r * np.cos(ang))
        ys.append(cy + r * np.sin(ang))
        gid += [g] * k
    x, y, gid = np.concatenate(xs), np.concatenate(ys), np.array(gid)
    flux = rng.uniform(800, 3000, len(x))
    shape = (56, 58)
    model = render_image(shape, psf, x, y, flux) + 7.0
    sigma = np.sqrt(model + 4.0)
    img = model + rng.normal(size=shape) * sigma
    n = len(x)
    return dict(img=img, sigma=sigma, x=x, y=y, flux=flux, gid=gid,
                x0=x + rng.normal(0, 0.3, n), y0=y + rng.normal(0, 0.3, n),
                f0=flux * rng.uniform(0.8, 1.2, n))


@pytest.mark.parametrize("with_error", [True, False])
@pytest.mark.parametrize("dense_max", [64, 1])  # 1: every group > 1 takes the sparse path
def test_sky_matches_least_squares_oracle(psf, scene, with_error, dense_max):
    s = scene
    error = s["sigma"] if with_error else None
    res = fit_psf(s["img"], psf, s["x0"], s["y0"], s["f0"], fit_shape=5, group_id=s["gid"],
                  error=error, fit_sky=True, dense_max=dense_max)
    ref, ref_err = sky_oracle(s["img"], psf, s["x0"], s["y0"], s["f0"], s["gid"], (5, 5),
                              error=error)
    assert res.converged.all() and res.cov_ok.all()
    np.testing.assert_allclose(res.x, ref[:, 0], atol=1e-6)
    np.testing.assert_allclose(res.y, ref[:, 1], atol=1e-6)
    np.testing.assert_allclose(res.flux, ref[:, 2], rtol=1e-6)
    np.testing.assert_allclose(res.sky, ref[:, 3], atol=1e-6 * np.abs(ref[:, 3]).max())
    for k, got in enumerate((res.x_err, res.y_err, res.flux_err, res.sky_err)):
        np.testing.assert_allclose(got, ref_err[:, k], rtol=1e-6)
    # the covariance carries the sky: its diagonal gives the sky error
    np.testing.assert_allclose(np.sqrt(res.cov[:, 3, 3]), res.sky_err, rtol=1e-12)
    np.testing.assert_allclose(res.cov, res.cov.transpose(0, 2, 1), rtol=1e-9, atol=0)


def test_sky_dense_and_sparse_paths_agree_on_one_large_group(psf):
    rng = np.random.default_rng(5)
    gx, gy = np.meshgrid(np.arange(14), np.arange(10))
    x = 10 + 4.5 * gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = 10 + 4.5 * gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = rng.uniform(2000, 5000, len(x))
    shape = (66, 84)
    model = render_image(shape, psf, x, y, flux) + 20.0
    sigma = np.sqrt(model + 25.0)
    img = model + rng.normal(size=shape) * sigma
    n = len(x)
    args = (img, psf, x + rng.normal(0, 0.2, n), y + rng.normal(0, 0.2, n), flux * 0.9)
    kw = dict(fit_shape=5, error=sigma, group_id=np.zeros(n, dtype=int), fit_sky=True)
    dense = fit_psf(*args, dense_max=256, **kw)
    sparse = fit_psf(*args, dense_max=16, **kw)  # PCG steps, slab covariance + Schur
    assert dense.converged.all() and sparse.converged.all() and sparse.cov_ok.all()
    np.testing.assert_allclose(sparse.x, dense.x, atol=1e-8)
    np.testing.assert_allclose(sparse.flux, dense.flux, rtol=1e-8)
    np.testing.assert_allclose(sparse.sky, dense.sky, rtol=1e-8)
    np.testing.assert_allclose(sparse.cov, dense.cov, rtol=1e-7, atol=1e-12)
    # one sky for the whole group, recovered within its error
    assert np.ptp(dense.sky) == 0
    assert abs(dense.sky[0] - 20.0) < 4 * dense.sky_err[0]


def test_sky_offset_bias_vanishes_with_fit_sky(psf):
    """Isolated stars on an unmodelled sky of 15: fluxes come out biased without fit_sky; with
    it the bias vanishes and flux and sky pulls have unit scatter."""
    rng = np.random.default_rng(21)
    gx, gy = np.meshgrid(np.arange(20), np.arange(20))
    x = 12 + 16.0 * gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = 12 + 16.0 * gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = rng.uniform(1500, 4000, len(x))
    shape = (330, 330)
    sky = 15.0
    model = render_image(shape, psf, x, y, flux) + sky
    sigma = np.sqrt(model + 9.0)
    img = model + rng.normal(size=shape) * sigma
    n = len(x)
    x0, y0 = x + rng.normal(0, 0.2, n), y + rng.normal(0, 0.2, n)
    plain = fit_psf(img, psf, x0, y0, flux, fit_shape=7, error=sigma)
    fitted = fit_psf(img, psf, x0, y0, flux, fit_shape=7, error=sigma, fit_sky=True)
    pull_plain = (plain.flux - flux) / plain.flux_err
    pull = (fitted.flux - flux) / fitted.flux_err
    assert np.median(pull_plain) > 5  # the sky is taken for starlight
    assert abs(np.mean(pull)) < 4 / np.sqrt(n)
    assert 0.9 < np.std(pull) < 1.1
    sky_pull = (fitted.sky - sky) / fitted.sky_err
    assert abs(np.mean(sky_pull)) < 4 / np.sqrt(n)
    assert 0.9 < np.std(sky_pull) < 1.1
    assert fitted.converged.all() and fitted.cov_ok.all()


def test_default_has_no_sky(psf, scene):
    s = scene
    res = fit_psf(s["img"], psf, s["x0"], s["y0"], s["f0"], fit_shape=5, group_id=s["gid"])
    assert res.cov.shape == (len(s["x0"]), 3, 3)
    assert np.isnan(res.sky).all() and np.isnan(res.sky_err).all()


def test_param_set_validation():
    assert ParamSet().names == ("x", "y", "flux")
    with pytest.raises(ValueError, match="group parameters"):
        ParamSet(group=("tilt",))
    with pytest.raises(ValueError, match="source parameters"):
        ParamSet(source=("x", "y"))


def test_psfphotometry_fit_sky_columns_and_covariance(psf, scene):
    from crowdphot import IterativePSFPhotometry, PSFPhotometry, SourceGrouper
    from crowdphot.detection import DAOStarFinder

    s = scene
    init = QTable({"x": s["x0"], "y": s["y0"], "flux": s["f0"], "group_id": s["gid"] + 1})
    phot = PSFPhotometry(psf, 5, fit_sky=True)
    tbl = phot(s["img"], error=s["sigma"], init_params=init)
    res = fit_psf(s["img"], psf, s["x0"], s["y0"], s["f0"], fit_shape=5, group_id=s["gid"],
                  error=s["sigma"], fit_sky=True)
    cols = tbl.colnames
    assert cols.index("sky_fit") == cols.index("flux_err") + 1 and "sky_err" in cols
    np.testing.assert_array_equal(tbl["sky_fit"], res.sky)
    np.testing.assert_array_equal(tbl["sky_err"], res.sky_err)
    cov = phot.fit_info[0]["param_cov"]  # flux, x_0, y_0 (model order), then the sky
    assert cov.shape == (4, 4)
    np.testing.assert_allclose(np.sqrt(cov[3, 3]), res.sky_err[0], rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(cov[0, 0]), res.flux_err[0], rtol=1e-12)
    assert "sky_init" not in phot.results_to_init_params().colnames
    plain = PSFPhotometry(psf, 5)(s["img"], error=s["sigma"], init_params=init)
    assert "sky_fit" not in plain.colnames
    with pytest.raises(TypeError, match="fit_sky"):
        PSFPhotometry(psf, 5, fit_sky="yes")

    finder = DAOStarFinder(threshold=30, fwhm=FWHM)
    it = IterativePSFPhotometry(psf, 5, finder, grouper=SourceGrouper(6), aperture_radius=3,
                                mode="all", maxiters=2, fit_sky=True)
    out = it(s["img"], error=s["sigma"])
    assert "sky_fit" in out.colnames and np.isfinite(out["sky_fit"]).all()


def test_fit_sky_needs_the_batched_engine(psf, scene):
    from astropy.modeling.fitting import TRFLSQFitter

    from crowdphot import PSFPhotometry

    s = scene
    init = QTable({"x": s["x0"][:1], "y": s["y0"][:1], "flux": s["f0"][:1]})
    phot = PSFPhotometry(psf, 5, fitter=TRFLSQFitter(), fit_sky=True)
    with pytest.raises(ValueError, match="fit_sky=True needs the batched engine"):
        phot(s["img"], init_params=init)
