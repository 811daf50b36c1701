"""Tests of the batched fitting engine ``crowdphot.core.fit.fit_psf``.

Oracles: exact recovery on noiseless images, scipy.optimize.least_squares run group by group on
the same residual definition, brute-force metrics, photutils 3 PSFPhotometry side by side, and
simulated noise for honest error bars.
"""

import numpy as np
import pytest
from scipy.optimize import least_squares

from crowdphot.core.batched import stamp_origin
from crowdphot.core.fit import fit_psf
from crowdphot.models.analytic import CircularGaussianPRF

FWHM = 2.5


@pytest.fixture(scope="module")
def psf():
    return CircularGaussianPRF(fwhm=FWHM)


def render(psf, shape, x, y, flux, half=12):
    """Sum of PSFs on an image (brute force with np.add.at)."""
    size = 2 * half + 1
    xlo = np.round(x).astype(int) - half
    ylo = np.round(y).astype(int) - half
    st = psf.psf_stamps(x, y, size, xlo=xlo, ylo=ylo) * np.asarray(flux)[:, None, None]
    yy = ylo[:, None, None] + np.arange(size)[None, :, None]
    xx = xlo[:, None, None] + np.arange(size)[None, None, :]
    yy, xx = np.broadcast_arrays(yy, xx)
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    img = np.zeros(shape)
    np.add.at(img, (yy[ok], xx[ok]), st[ok])
    return img


def grid_positions(rng, nx, ny, step, jitter, origin=10.0):
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    x = origin + step * gx.ravel() + rng.uniform(-jitter, jitter, gx.size)
    y = origin + step * gy.ravel() + rng.uniform(-jitter, jitter, gx.size)
    return x, y


# -- brute-force oracle: scipy least_squares group by group ---------------------------------
def _group_pixels(x0, y0, fit_shape, shape, mask):
    xlo, ylo = stamp_origin(np.array([x0]), np.array([y0]), fit_shape)
    ys = np.arange(ylo[0], ylo[0] + fit_shape[0])
    xs = np.arange(xlo[0], xlo[0] + fit_shape[1])
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    yy, xx = yy[ok], xx[ok]
    if mask is not None:
        keep = ~mask[yy, xx]
        yy, xx = yy[keep], xx[keep]
    return yy, xx


def oracle_fit(img, psf, x0, y0, f0, groups, fit_shape, *, error=None, mask=None, bkg=None,
               lo=None, hi=None, unique_pixels=False):
    n = len(x0)
    lo = np.full((n, 3), -np.inf) if lo is None else lo
    hi = np.full((n, 3), np.inf) if hi is None else hi
    bkg = np.zeros(n) if bkg is None else bkg
    out = np.full((n, 3), np.nan)
    err = np.full((n, 3), np.nan)
    for g in np.unique(groups):
        mem = np.flatnonzero(groups == g)
        pix = [_group_pixels(x0[i], y0[i], fit_shape, img.shape, mask) for i in mem]
        if unique_pixels:  # each image pixel once, owned by the first member that holds it
            seen, kept = set(), []
            for yy_i, xx_i in pix:
                keep = np.array([(a, b) not in seen for a, b in zip(yy_i, xx_i, strict=True)],
                                dtype=bool)
                seen.update(zip(yy_i, xx_i, strict=True))
                kept.append((yy_i[keep], xx_i[keep]))
            pix = kept
        yy = np.concatenate([p[0] for p in pix]).astype(float)
        xx = np.concatenate([p[1] for p in pix]).astype(float)
        yi = np.concatenate([p[0] for p in pix])
        xi = np.concatenate([p[1] for p in pix])
        owner_bkg = [np.full(len(p[0]), bkg[i]) for p, i in zip(pix, mem, strict=True)]
        d = img[yi, xi] - np.concatenate(owner_bkg)
        w = np.ones_like(d) if error is None else 1.0 / error[yi, xi]

        def resid(p, xx=xx, yy=yy, d=d, w=w):
            p = p.reshape(-1, 3)
            v = psf._unit(xx[None], yy[None], p[:, 0], p[:, 1])
            return (d - (p[:, 2:3] * v).sum(axis=0)) * w

        def jac(p, xx=xx, yy=yy, w=w):
            p = p.reshape(-1, 3)
            v, gx, gy = psf._unit_grad(xx[None], yy[None], p[:, 0], p[:, 1])
            j = np.stack([p[:, 2:3] * gx, p[:, 2:3] * gy, v], axis=1)  # (k, 3, npix)
            return -(j.reshape(-1, len(xx)) * w).T

        p0 = np.column_stack([x0[mem], y0[mem], f0[mem]]).ravel()
        sol = least_squares(resid, p0, jac=jac, xtol=1e-15, ftol=1e-15, gtol=1e-15,
                            x_scale="jac", max_nfev=500,
                            bounds=(lo[mem].ravel(), hi[mem].ravel()))
        j = sol.jac
        cov = np.linalg.inv(j.T @ j)
        if error is None:
            cov *= 2 * sol.cost / (len(d) - len(p0))
        out[mem] = sol.x.reshape(-1, 3)
        err[mem] = np.sqrt(np.diag(cov)).reshape(-1, 3)
    return out, err


@pytest.fixture(scope="module")
def small_scene(psf):
    """Groups of sizes 1..4 with overlapping stamps, edge stars and a masked patch."""
    rng = np.random.default_rng(7)
    centers = np.array([[12.0, 12.0], [40.0, 14.0], [15.0, 40.0], [45.0, 42.0], [1.2, 30.0],
                        [28.0, 58.3]])
    sizes = [1, 2, 3, 4, 1, 2]
    xs, ys, gid = [], [], []
    for g, ((cx, cy), k) in enumerate(zip(centers, sizes, strict=True)):
        ang = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(k) / k
        r = 0.0 if k == 1 else 2.2
        xs.append(cx + r * np.cos(ang))
        ys.append(cy + r * np.sin(ang))
        gid += [g] * k
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    gid = np.array(gid)
    flux = rng.uniform(800, 3000, len(x))
    shape = (60, 56)
    model = render(psf, shape, x, y, flux) + 5.0
    sigma = np.sqrt(model + 4.0)
    img = model + rng.normal(size=shape) * sigma
    mask = np.zeros(shape, dtype=bool)
    mask[40:42, 43:45] = True
    x0 = x + rng.normal(0, 0.3, len(x))
    y0 = y + rng.normal(0, 0.3, len(x))
    return dict(img=img, sigma=sigma, mask=mask, x=x, y=y, flux=flux, gid=gid, x0=x0, y0=y0,
                f0=flux * rng.uniform(0.8, 1.2, len(x)), bkg=np.full(len(x), 5.0))


@pytest.mark.parametrize("shared_pixels", ["once", "photutils"])
@pytest.mark.parametrize("with_error", [True, False])
@pytest.mark.parametrize("support_shape,dense_max", [(None, 64), ("auto", 64), ("auto", 1)])
def test_matches_least_squares_oracle(psf, small_scene, with_error, support_shape, dense_max,
                                      shared_pixels):
    s = small_scene
    err = s["sigma"] if with_error else None
    res = fit_psf(s["img"], psf, s["x0"], s["y0"], s["f0"], fit_shape=5, group_id=s["gid"],
                  error=err, mask=s["mask"], local_bkg=s["bkg"], support_shape=support_shape,
                  dense_max=dense_max, shared_pixels=shared_pixels)
    ref, ref_err = oracle_fit(s["img"], psf, s["x0"], s["y0"], s["f0"], s["gid"], (5, 5),
                              error=err, mask=s["mask"], bkg=s["bkg"],
                              unique_pixels=shared_pixels == "once")
    assert res.converged.all() and res.cov_ok.all()
    np.testing.assert_allclose(res.x, ref[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(res.y, ref[:, 1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(res.flux, ref[:, 2], rtol=1e-7)
    got_err = np.column_stack([res.x_err, res.y_err, res.flux_err])
    np.testing.assert_allclose(got_err, ref_err, rtol=1e-5)


@pytest.mark.parametrize("dense_max", [64, 1])
def test_bounded_fit_matches_least_squares_oracle(psf, small_scene, dense_max):
    # x bounds that bite for about half the sources and a flux ceiling below some fluxes: the
    # free parameters must be re-optimised with the bound held (constrained optimum)
    s = small_scene
    n = len(s["x0"])
    rng = np.random.default_rng(11)
    lo = np.full((n, 3), -np.inf)
    hi = np.full((n, 3), np.inf)
    lo[:, 0] = s["x0"] - rng.uniform(0.02, 0.3, n)
    hi[:, 0] = s["x0"] + rng.uniform(0.02, 0.3, n)
    hi[:, 2] = np.median(s["flux"])
    f0 = np.minimum(s["f0"], hi[:, 2])
    res = fit_psf(s["img"], psf, s["x0"], s["y0"], f0, fit_shape=5, group_id=s["gid"],
                  error=s["sigma"], mask=s["mask"], local_bkg=s["bkg"], dense_max=dense_max,
                  bounds={"x": (lo[:, 0], hi[:, 0]), "flux": (None, hi[:, 2])})
    ref, _ = oracle_fit(s["img"], psf, s["x0"], s["y0"], f0, s["gid"], (5, 5),
                        error=s["sigma"], mask=s["mask"], bkg=s["bkg"], lo=lo, hi=hi,
                        unique_pixels=True)
    on_x = (np.abs(ref[:, 0] - lo[:, 0]) < 1e-9) | (np.abs(ref[:, 0] - hi[:, 0]) < 1e-9)
    on_f = np.abs(ref[:, 2] - hi[:, 2]) < 1e-6
    assert on_x.sum() >= 3 and on_f.sum() >= 2 and not on_x.all()  # the test has teeth
    assert res.converged.all()
    np.testing.assert_allclose(res.x, ref[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(res.y, ref[:, 1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(res.flux, ref[:, 2], rtol=1e-7)
    assert np.all((res.x >= lo[:, 0]) & (res.x <= hi[:, 0]) & (res.flux <= hi[:, 2]))


def test_image_psf_grouped_matches_oracle(monkeypatch):
    from crowdphot.models.image import ImagePSF

    # the spline kernels' numpy fallback: the engine is what is under test here, and it spares
    # this file the kernels' one-off numba compilation (tested in the PSF model tests)
    monkeypatch.setenv("CROWDPHOT_DISABLE_NUMBA", "1")

    over = 2
    yy, xx = np.mgrid[0:41, 0:41]
    img_psf = np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / (2 * (1.3 * over) ** 2))
    model = ImagePSF(img_psf / img_psf.sum() * over**2, oversampling=over)
    rng = np.random.default_rng(17)
    x = np.array([10.0, 12.6, 30.3, 31.1, 29.0, 45.2])
    y = np.array([10.0, 11.2, 20.1, 22.8, 21.0, 40.4])
    gid = np.array([0, 0, 1, 1, 1, 2])
    flux = rng.uniform(1000, 3000, len(x))
    clean = render(model, (52, 56), x, y, flux, half=10)
    sigma = np.sqrt(clean + 4.0)
    img = clean + rng.normal(size=clean.shape) * sigma
    x0, y0 = x + rng.normal(0, 0.2, len(x)), y + rng.normal(0, 0.2, len(x))
    # blends converge linearly: tighten ftol (default 1e-10 stops ~1e-4 sigma short)
    res = fit_psf(img, model, x0, y0, flux, fit_shape=5, group_id=gid, error=sigma, ftol=1e-13)
    ref, ref_err = oracle_fit(img, model, x0, y0, flux, gid, (5, 5), error=sigma,
                              unique_pixels=True)
    assert res.converged.all() and res.cov_ok.all()
    np.testing.assert_allclose(res.x, ref[:, 0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(res.y, ref[:, 1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(res.flux, ref[:, 2], rtol=1e-7)
    np.testing.assert_allclose(res.flux_err, ref_err[:, 2], rtol=1e-5)


def test_noiseless_exact_recovery_with_edges(psf):
    rng = np.random.default_rng(3)
    x = np.array([0.3, 30.2, 59.6, 12.7, 45.1])
    y = np.array([20.4, 0.1, 33.3, 44.8, 49.7])
    flux = rng.uniform(500, 5000, len(x))
    img = render(psf, (50, 60), x, y, flux)
    res = fit_psf(img, psf, x + 0.4, y - 0.3, flux * 1.3, fit_shape=(5, 7))
    assert res.converged.all()
    np.testing.assert_allclose(res.x, x, atol=1e-7)
    np.testing.assert_allclose(res.y, y, atol=1e-7)
    np.testing.assert_allclose(res.flux, flux, rtol=1e-8)
    assert res.n_pixels[3] == 35 and res.n_pixels[0] < 35  # trimmed at the left edge
    assert np.all(res.qfit < 1e-6)


def test_metrics_brute_force(psf, small_scene):
    s = small_scene
    res = fit_psf(s["img"], psf, s["x0"], s["y0"], s["f0"], fit_shape=5, group_id=s["gid"],
                  error=s["sigma"], mask=s["mask"], local_bkg=s["bkg"], support_shape=None)
    model = render(psf, s["img"].shape, res.x, res.y, res.flux, half=30)
    for i in range(len(res.x)):
        yy, xx = _group_pixels(s["x0"][i], s["y0"][i], (5, 5), s["img"].shape, s["mask"])
        raw = s["img"][yy, xx] - s["bkg"][i] - model[yy, xx]
        assert res.n_pixels[i] == len(yy)
        np.testing.assert_allclose(res.qfit[i], np.abs(raw).sum() / res.flux[i], rtol=1e-6)
        chi2 = np.sum((raw / s["sigma"][yy, xx]) ** 2)
        np.testing.assert_allclose(res.chi2[i], chi2, rtol=1e-6)
        np.testing.assert_allclose(res.reduced_chi2[i], chi2 / (len(yy) - 3), rtol=1e-6)
        cy, cx = int(np.ceil(s["y0"][i] - 0.5)), int(np.ceil(s["x0"][i] - 0.5))
        hit = np.flatnonzero((yy == cy) & (xx == cx))
        assert res.center_in_stamp[i] == (len(hit) == 1)
        if len(hit):
            np.testing.assert_allclose(res.cfit[i], raw[hit[0]] / res.flux[i], rtol=1e-6)
        else:
            assert np.isnan(res.cfit[i])


@pytest.mark.parametrize("with_error", [True, False])
def test_honest_errors_pulls(psf, with_error):
    rng = np.random.default_rng(11)
    x, y = grid_positions(rng, 50, 44, 15.0, 2.0)  # 2200 isolated stars
    flux = rng.uniform(300, 3000, len(x))
    model = render(psf, (680, 770), x, y, flux, half=8)
    read = 3.0
    if with_error:
        sigma = np.sqrt(model + read**2)
    else:  # unweighted fits assume equal errors: use pure read noise
        sigma = np.full(model.shape, read)
    img = model + rng.normal(size=model.shape) * sigma
    res = fit_psf(img, psf, x + rng.normal(0, 0.2, len(x)), y + rng.normal(0, 0.2, len(x)),
                  flux * 1.1, fit_shape=7, error=sigma if with_error else None)
    assert res.converged.all() and res.cov_ok.all()
    for val, true, e in ((res.x, x, res.x_err), (res.y, y, res.y_err),
                         (res.flux, flux, res.flux_err)):
        pull = (val - true) / e
        assert 0.9 < np.std(pull) < 1.1
        assert abs(np.mean(pull)) < 0.1
    if with_error:
        assert 0.9 < np.mean(res.reduced_chi2) < 1.1
    else:
        assert np.isnan(res.reduced_chi2).all()


def test_fixed_positions_forced_photometry(psf):
    rng = np.random.default_rng(5)
    x, y = grid_positions(rng, 6, 5, 12.0, 1.0)
    flux = rng.uniform(500, 2000, len(x))
    img = render(psf, (70, 80), x, y, flux) + rng.normal(0, 1.0, (70, 80))
    fixed_x = np.zeros(len(x), dtype=bool)
    fixed_x[::2] = True
    res = fit_psf(img, psf, x + 0.1, y + 0.1, flux, fit_shape=5,
                  fixed={"x": fixed_x, "y": True}, error=np.ones((70, 80)))
    np.testing.assert_array_equal(res.x[fixed_x], (x + 0.1)[fixed_x])
    np.testing.assert_array_equal(res.y, y + 0.1)
    assert np.isnan(res.y_err).all() and np.isnan(res.x_err[fixed_x]).all()
    assert np.isfinite(res.x_err[~fixed_x]).all() and np.isfinite(res.flux_err).all()
    np.testing.assert_array_equal(res.n_free, np.where(fixed_x, 1, 2))
    # flux of a source with both positions fixed is the linear least-squares solution
    i = 0
    xlo, ylo = stamp_origin(res.x[i:i + 1], res.y[i:i + 1], (5, 5))
    v = psf.psf_stamps(res.x[i:i + 1], res.y[i:i + 1], 5, xlo=xlo, ylo=ylo)[0]
    d = img[ylo[0]:ylo[0] + 5, xlo[0]:xlo[0] + 5]
    np.testing.assert_allclose(res.flux[i], np.sum(v * d) / np.sum(v * v), rtol=1e-8)
    np.testing.assert_allclose(res.flux_err[i], 1 / np.sqrt(np.sum(v * v)), rtol=1e-8)
    np.testing.assert_allclose(res.reduced_chi2[i], res.chi2[i] / (25 - 1), rtol=1e-12)


def test_all_fixed_keeps_values(psf):
    img = render(psf, (30, 30), np.array([15.0]), np.array([15.0]), np.array([100.0]))
    res = fit_psf(img, psf, [15.2], [14.9], [90.0], fit_shape=5,
                  fixed={"x": True, "y": True, "flux": True})
    assert (res.x[0], res.y[0], res.flux[0]) == (15.2, 14.9, 90.0)
    assert not res.cov_ok[0] and np.isnan(res.flux_err[0])


def test_bounds_respected_and_flagged(psf):
    rng = np.random.default_rng(8)
    x, y = grid_positions(rng, 5, 4, 12.0, 0.5)
    flux = rng.uniform(1000, 2000, len(x))
    img = render(psf, (60, 70), x, y, flux) + rng.normal(0, 0.5, (60, 70))
    x0 = x + 0.6  # truth is 0.6 px below x0: a 0.2 px bound must bite
    lo, hi = x0 - 0.2, x0 + 0.2
    res = fit_psf(img, psf, x0, y, flux, fit_shape=5, bounds={"x": (lo, hi),
                                                            "flux": (None, 1500.0)})
    assert np.all(res.x >= lo) and np.all(res.x <= hi)
    np.testing.assert_allclose(res.x, lo, atol=1e-9)
    assert (res.bound_distance <= 0.01).all()
    assert np.all(res.flux <= 1500.0)
    free = fit_psf(img, psf, x0, y, flux, fit_shape=5)
    assert not (free.bound_distance <= 0.01).any()
    np.testing.assert_allclose(free.x, x, atol=0.05)


def test_crowded_group_of_300(psf):
    rng = np.random.default_rng(2)
    x, y = grid_positions(rng, 20, 15, 4.5, 0.5)
    flux = rng.uniform(2000, 5000, len(x))
    model = render(psf, (90, 110), x, y, flux)
    sigma = np.sqrt(model + 25.0)
    img = model + rng.normal(size=model.shape) * sigma
    res = fit_psf(img, psf, x + rng.normal(0, 0.2, 300), y + rng.normal(0, 0.2, 300),
                  flux * 0.9, fit_shape=5, error=sigma, group_id=np.zeros(300, dtype=int))
    assert res.converged.all() and res.cov_ok.all()
    for val, true, e in ((res.x, x, res.x_err), (res.y, y, res.y_err),
                         (res.flux, flux, res.flux_err)):
        pull = (val - true) / e
        assert np.all(np.abs(pull) < 5)
        assert 0.8 < np.std(pull) < 1.25


def test_unfittable_sources_are_flagged_not_raised(psf):
    shape = (40, 40)
    img = render(psf, shape, np.array([20.0, 10.0]), np.array([20.0, 30.0]),
                 np.array([1000.0, 800.0]))
    mask = np.zeros(shape, dtype=bool)
    mask[27:34, 7:14] = True  # fully masks the stamp of the source at (10, 30)
    mask[0:3, 0:3] = True
    mask[0, 1] = False  # corner source keeps 1 pixel...
    mask[1, 0] = False  # ...and a second one: fewer than 3 free parameters
    x = np.array([20.0, 10.0, -10.0, 0.2, 20.5, np.nan, 21.0])
    y = np.array([20.0, 30.0, 5.0, 0.2, 20.0, 3.0, 20.5])
    f = np.array([900.0, 800.0, 10.0, 10.0, np.nan, 10.0, 900.0])
    gid = np.array([0, 1, 2, 3, 0, 4, 0])
    res = fit_psf(img, psf, x, y, f, fit_shape=5, group_id=gid, mask=mask)
    assert list(res.reason) == ["", "fully_masked", "no_overlap", "too_few_pixels",
                                "non_finite_flux", "invalid_position", ""]
    np.testing.assert_array_equal(res.fitted, [1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(res.n_pixels, [25, 0, 0, 2, 0, 0, 25])
    bad = ~res.fitted
    assert np.isnan(res.x[bad]).all() and np.isnan(res.flux_err[bad]).all()
    assert not res.converged[bad].any() and not res.cov_ok[bad].any()
    assert res.converged[res.fitted].all()
    np.testing.assert_allclose(res.flux[0] + res.flux[6], 1000.0, rtol=1e-6)


def test_group_ids_arbitrary_and_order_preserved(psf, small_scene):
    s = small_scene
    a = fit_psf(s["img"], psf, s["x0"], s["y0"], s["f0"], fit_shape=5, group_id=s["gid"],
                error=s["sigma"])
    perm = np.random.default_rng(0).permutation(len(s["x0"]))
    b = fit_psf(s["img"], psf, s["x0"][perm], s["y0"][perm], s["f0"][perm], fit_shape=5,
                group_id=100 - 7 * s["gid"][perm], error=s["sigma"])
    np.testing.assert_allclose(b.x, a.x[perm], atol=1e-10)
    np.testing.assert_allclose(b.flux_err, a.flux_err[perm], rtol=1e-9)
    np.testing.assert_array_equal(b.niter, a.niter[perm])


def test_maxiters_reports_non_convergence(psf, small_scene):
    s = small_scene
    res = fit_psf(s["img"], psf, s["x0"], s["y0"], s["f0"], fit_shape=5, group_id=s["gid"],
                  maxiters=1)
    assert not res.converged.any()
    assert (res.niter == 1).all()


# -- photutils parity -------------------------------------------------------------------------
@pytest.mark.parametrize("grouped", [False, True])
def test_photutils_parity(psf, grouped):
    from astropy.table import QTable
    from photutils.psf import CircularGaussianPRF as PuPRF
    from photutils.psf import PSFPhotometry, SourceGrouper

    rng = np.random.default_rng(21)
    x, y = grid_positions(rng, 6, 5, 14.0, 3.0)
    if grouped:  # add close companions
        x = np.concatenate([x, x[:8] + 3.0])
        y = np.concatenate([y, y[:8] + 1.5])
    flux = rng.uniform(500, 5000, len(x))
    model = render(psf, (90, 100), x, y, flux) + 2.0
    sigma = np.sqrt(model + 1.0)
    img = model + rng.normal(size=model.shape) * sigma
    init = QTable({"x": x + rng.normal(0, 0.2, len(x)), "y": y + rng.normal(0, 0.2, len(x)),
                   "flux": flux * 1.1, "local_bkg": np.full(len(x), 2.0)})
    grouper = SourceGrouper(min_separation=6) if grouped else None
    phot = PSFPhotometry(PuPRF(fwhm=FWHM), 5, grouper=grouper)
    ref = phot(img, error=sigma, init_params=init)
    gid = np.asarray(ref["group_id"]) if grouped else None
    if grouped:
        assert np.asarray(ref["group_size"]).max() > 1
    # photutils counts a pixel shared by two members' stamps once per stamp
    res = fit_psf(img, psf, init["x"], init["y"], init["flux"], fit_shape=5, group_id=gid,
                  shared_pixels="photutils",
                  error=sigma, local_bkg=init["local_bkg"])
    ok = np.asarray(ref["flags"]) & 8 == 0  # photutils' own converged fits
    assert ok.sum() >= len(x) - 1
    np.testing.assert_allclose(res.x[ok], np.asarray(ref["x_fit"])[ok], atol=1e-3)
    np.testing.assert_allclose(res.y[ok], np.asarray(ref["y_fit"])[ok], atol=1e-3)
    np.testing.assert_allclose(res.flux[ok], np.asarray(ref["flux_fit"])[ok], rtol=1e-4)
    for k in ("x_err", "y_err", "flux_err"):
        np.testing.assert_allclose(getattr(res, k)[ok], np.asarray(ref[k])[ok], rtol=0.01)
    np.testing.assert_allclose(res.qfit[ok], np.asarray(ref["qfit"])[ok], rtol=1e-3)
    np.testing.assert_allclose(res.cfit[ok], np.asarray(ref["cfit"])[ok], rtol=1e-2,
                               atol=1e-5)
    np.testing.assert_allclose(res.reduced_chi2[ok], np.asarray(ref["reduced_chi2"])[ok],
                               rtol=1e-3)
    np.testing.assert_array_equal(res.n_pixels, np.asarray(ref["n_pixels_fit"]))


def test_photutils_parity_without_error(psf):
    from astropy.table import QTable
    from photutils.psf import CircularGaussianPRF as PuPRF
    from photutils.psf import PSFPhotometry

    rng = np.random.default_rng(4)
    x, y = grid_positions(rng, 4, 4, 15.0, 2.0)
    flux = rng.uniform(500, 3000, len(x))
    img = render(psf, (70, 70), x, y, flux) + rng.normal(0, 2.0, (70, 70))
    init = QTable({"x": x + 0.2, "y": y - 0.2, "flux": flux})
    ref = PSFPhotometry(PuPRF(fwhm=FWHM), 7)(img, init_params=init)
    res = fit_psf(img, psf, init["x"], init["y"], init["flux"], fit_shape=7)
    np.testing.assert_allclose(res.x, np.asarray(ref["x_fit"]), atol=1e-3)
    np.testing.assert_allclose(res.flux, np.asarray(ref["flux_fit"]), rtol=1e-4)
    for k in ("x_err", "y_err", "flux_err"):
        np.testing.assert_allclose(getattr(res, k), np.asarray(ref[k]), rtol=0.01)


# -- argument checking ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(fit_shape=4), ValueError, "fit_shape"),
    (dict(fit_shape=1), ValueError, "fit_shape"),
    (dict(group_id=np.array([0.5, 1.0])), TypeError, "group_id"),
    (dict(group_id=np.array([0, 1, 2])), ValueError, "group_id"),
    (dict(error=np.zeros((20, 20))), ValueError, "error"),
    (dict(error=np.ones((20, 21))), ValueError, "error"),
    (dict(error="abc"), TypeError, "error"),
    (dict(mask=np.zeros((3, 3), bool)), ValueError, "mask"),
    (dict(local_bkg=[1.0, 2.0, 3.0]), ValueError, "local_bkg"),
    (dict(fixed={"z": True}), ValueError, "fixed"),
    (dict(fixed=[True]), TypeError, "fixed"),
    (dict(fixed={"x": 1}), TypeError, "fixed"),
    (dict(bounds={"x": (5.0,)}), ValueError, "bounds"),
    (dict(bounds={"x": (5.0, 1.0)}), ValueError, "bounds"),
    (dict(bounds={"flux": (np.nan, 1.0)}), ValueError, "bounds"),
    (dict(maxiters=0), ValueError, "maxiters"),
    (dict(xtol=-1.0), ValueError, "xtol"),
    (dict(ftol=np.inf), ValueError, "ftol"),
    (dict(dense_max=0), ValueError, "dense_max"),
    (dict(support_shape="big"), ValueError, "support_shape"),
    (dict(support_shape=(0, 3)), ValueError, "support_shape"),
])
def test_argument_errors(psf, kwargs, exc, match):
    kw = dict(fit_shape=5)
    kw.update(kwargs)
    with pytest.raises(exc, match=match):
        fit_psf(np.zeros((20, 20)), psf, [5.0, 9.0], [5.0, 9.0], [1.0, 1.0], **kw)


def test_argument_errors_positions_and_model(psf):
    with pytest.raises(ValueError, match="y_init"):
        fit_psf(np.zeros((20, 20)), psf, [5.0, 9.0], [5.0], [1.0, 1.0], fit_shape=5)
    with pytest.raises(ValueError, match="x_init"):
        fit_psf(np.zeros((20, 20)), psf, [[5.0]], [5.0], [1.0], fit_shape=5)
    with pytest.raises(TypeError, match="psf_model"):
        fit_psf(np.zeros((20, 20)), object(), [5.0], [5.0], [1.0], fit_shape=5)
    with pytest.raises(ValueError, match="data"):
        fit_psf(np.zeros(20), psf, [5.0], [5.0], [1.0], fit_shape=5)


def test_nonfinite_data_pixels_are_ignored(psf):
    img = render(psf, (30, 30), np.array([15.3]), np.array([14.8]), np.array([500.0]))
    img[15, 16] = np.nan
    res = fit_psf(img, psf, [15.0], [15.0], [400.0], fit_shape=5)
    assert res.n_pixels[0] == 24
    np.testing.assert_allclose(res.x, [15.3], atol=1e-7)


def test_error_checked_only_where_used(psf):
    img = render(psf, (30, 30), np.array([15.3]), np.array([14.8]), np.array([500.0]))
    err = np.ones((30, 30))
    err[0:5, 0:5] = 0.0  # far from the stamp: ignored, as in photutils
    err[15, 16] = np.nan
    mask = np.zeros((30, 30), dtype=bool)
    mask[15, 16] = True  # a masked pixel may carry any error value
    res = fit_psf(img, psf, [15.0], [15.0], [400.0], fit_shape=5, error=err, mask=mask)
    assert res.n_pixels[0] == 24 and res.converged[0]
    with pytest.raises(ValueError, match="error must be finite and > 0"):
        fit_psf(img, psf, [15.0], [15.0], [400.0], fit_shape=5, error=err)


def test_shared_pixels_counted_once_gives_honest_errors_for_close_pairs(psf):
    """Pairs 4 px apart with 5x5 stamps share a pixel column. Counting it once per stamp (the
    photutils rule) counts that data twice and under-states the errors; counting it once
    gives pulls of unit width."""
    rng = np.random.default_rng(21)
    side, step = 24, 21
    gx, gy = np.meshgrid(np.arange(side), np.arange(side))
    xa = 10.0 + step * gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    ya = 10.0 + step * gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    x = np.r_[xa, xa + 4.0]
    y = np.r_[ya, ya]
    flux = np.full(len(x), 10_000.0)
    shape = (10 + step * side, 15 + step * side)
    clean = render(psf, shape, x, y, flux)
    sigma = np.sqrt(clean + 25.0)
    img = clean + rng.normal(size=shape) * sigma
    gid = np.r_[np.arange(gx.size), np.arange(gx.size)]
    res = {rule: fit_psf(img, psf, x + 0.1, y - 0.1, flux, fit_shape=5, group_id=gid,
                         error=sigma, shared_pixels=rule) for rule in ("once", "photutils")}
    pulls = np.r_[(res["once"].x - x) / res["once"].x_err,
                  (res["once"].flux - flux) / res["once"].flux_err]
    # 2304 pulls: the std of a unit normal is known to ~1.5 %
    assert 0.93 < np.std(pulls) < 1.07
    # the double-counted column makes photutils' errors smaller than the honest ones
    ratio = res["photutils"].x_err / res["once"].x_err
    assert np.mean(ratio) < 0.97
