"""ePSF building benchmark: EPSFBuilder on the same extracted stars, crowdphot vs photutils;
and the issue #13 goals of refine_psf / build_gridded_psf on a mismatched-PSF scene
(``python bench/bench_epsf.py --goals`` also writes ``bench/epsf_refine.png``).

Row: 300+ isolated stars (CircularGaussianPRF, fwhm 2.7, noise), 25 x 25 cutouts, oversampling
4, 5 iterations (``center_accuracy`` tiny so both run all 5), default smoothing, clipping,
recentering and fitter. The two ePSFs must agree to 1e-3 of the peak and the fitted centres to
1e-3 px. ``--quick``: 60 stars.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, row  # noqa: E402


def _scene(n_stars):
    from astropy.nddata import NDData
    from astropy.table import Table

    from crowdphot import CircularGaussianPRF, make_noise_image, make_psf_model_image

    side = int(np.ceil(np.sqrt(n_stars))) * 40 + 60
    data, params = make_psf_model_image((side, side), CircularGaussianPRF(fwhm=2.7), n_stars,
                                        model_shape=(11, 11), flux=(2000, 20000),
                                        min_separation=26, border_size=20, seed=1)
    data = data + make_noise_image(data.shape, mean=0.0, stddev=1.0, seed=2)
    return NDData(data), Table({"x": params["x_0"], "y": params["y_0"]})


def bench_build(quick=False):
    import photutils.psf as ppsf

    import crowdphot.psf as cpsf

    nddata, cat = _scene(60 if quick else 340)
    kw = {"oversampling": 4, "maxiters": 5, "progress_bar": False, "center_accuracy": 1e-12}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stars_p = ppsf.extract_stars(nddata, cat, size=25)
        stars_c = cpsf.extract_stars(nddata, cat, size=25)
    n = len(stars_c)
    t_p, (epsf_p, fit_p) = best_of(lambda: ppsf.EPSFBuilder(**kw)(stars_p), repeat=1,
                                   warmup=False)
    t_c, (epsf_c, fit_c) = best_of(lambda: cpsf.EPSFBuilder(**kw)(stars_c),
                                   repeat=1 if quick else 3)
    peak = epsf_p.data.max()
    rel = np.abs(epsf_c.data - epsf_p.data).max() / peak
    dxy = np.abs(fit_c.center_flat - fit_p.center_flat).max()
    if not (rel <= 1e-3 and dxy <= 1e-3):
        raise AssertionError(f"ePSFs differ by {rel:.3g} of the peak, centres by {dxy:.3g} px")
    return row(f"EPSFBuilder, {n} stars, 25x25 cutouts, oversampling 4, 5 iterations", t_p,
               t_c, f"max |diff| {rel:.1e} of peak, centres {dxy:.1e} px")


def _mismatched_scene(quick):
    """NIRCam-like scene rendered with the built-in grid plus anisotropic jitter (the truth)."""
    from astropy.nddata import NDData
    from scipy.ndimage import convolve

    from crowdphot import (
        GriddedPSFModel,
        jwst_like_psf_grid,
        make_noise_image,
        make_psf_model_image,
    )

    fov = 25
    base = jwst_like_psf_grid("F200W", "NRCA1", num_psfs=9, fov_pixels=fov, oversampling=4)
    r = np.arange(-12, 13)
    kx = np.exp(-0.5 * (r / (0.35 * 4)) ** 2)
    ky = np.exp(-0.5 * (r / (0.20 * 4)) ** 2)
    kx, ky = kx / kx.sum(), ky / ky.sum()
    truth = np.array([convolve(convolve(s, kx[None, :]), ky[:, None]) for s in base.data])
    meta = {"grid_xypos": base.grid_xypos, "oversampling": 4}
    # all of a star's light inside the 25-pixel field, so that box fluxes are total fluxes
    norm = 16.0 / truth.sum(axis=(1, 2))[:, None, None]
    truth_model = GriddedPSFModel(NDData(truth * norm, meta=meta))
    model = GriddedPSFModel(NDData(base.data * 16.0 / base.data.sum(axis=(1, 2))[:, None, None],
                                   meta=meta))
    shape, n = ((1024, 1024), 250) if quick else ((2048, 2048), 600)
    data, params = make_psf_model_image(shape, truth_model, n, flux=(2e3, 2e5),
                                        min_separation=fov, border_size=fov, seed=1)
    shot = np.sqrt(np.clip(data, 0, None) / 10.0)
    data = data + make_noise_image(shape, mean=0.0, stddev=2.0, seed=2)
    data = data + np.random.default_rng(3).normal(0.0, 1.0, shape) * shot
    return truth_model, model, data, np.sqrt(4.0 + shot ** 2), params


def _score(psf, data, error, params):
    from crowdphot.core.batched import stamp_origin
    from crowdphot.core.fit import fit_psf

    xt, yt, ft = (np.asarray(params[c], dtype=float) for c in ("x_0", "y_0", "flux"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit_psf(data, psf, xt + 0.1, yt - 0.1, ft, fit_shape=5, error=error)
    bright = ft > 2e4
    bias = np.median(res.flux[bright] / ft[bright] - 1.0)
    rms = np.sqrt(np.mean((res.x - xt)[bright] ** 2 + (res.y - yt)[bright] ** 2) / 2)
    xlo, ylo = stamp_origin(res.x, res.y, (5, 5))
    rows = ylo[:, None, None] + np.arange(5)[None, :, None]
    cols = xlo[:, None, None] + np.arange(5)[None, None, :]
    mod = res.flux[:, None, None] * psf._stamps(res.x, res.y, xlo, ylo, (5, 5))
    chi = (data[rows, cols] - mod) / error[rows, cols]
    return bias, rms, float(np.sqrt(np.mean(chi[bright] ** 2)))


def goals(quick=False, figure=None):
    """Issue #13 goals on the mismatched scene; rows of (name, seconds, metrics note)."""
    import time

    from crowdphot.psf import build_gridded_psf, refine_psf

    truth, model, data, error, params = _mismatched_scene(quick)
    out = []
    for name, psf, secs in (("truth grid", truth, 0.0), ("mismatched model grid", model, 0.0)):
        out.append((name, secs, _score(psf, data, error, params)))
    t0 = time.perf_counter()
    refined = refine_psf(model, data, error=error, fwhm=2.0)
    out.append(("refine_psf(model grid)", time.perf_counter() - t0,
                _score(refined, data, error, params)))
    t0 = time.perf_counter()
    built = build_gridded_psf(data, error=error, grid_shape=(3, 3), size=25, fwhm=2.0,
                              min_stars=5)
    out.append(("build_gridded_psf 3x3", time.perf_counter() - t0,
                _score(built, data, error, params)))
    if figure:
        import matplotlib

        matplotlib.use("Agg")
        from astropy.table import Table

        from crowdphot.viz.psf_figures import plot_psf_model

        cat = Table({"x": params["x_0"], "y": params["y_0"], "flux": params["flux"]})
        fig = plot_psf_model(refined, base=model, data=data, catalog=cat, n_stamps=9)
        fig.savefig(figure, dpi=60)
    return out


def run(quick=False):
    rows = [bench_build(quick)]
    for name, secs, (bias, rms, core) in goals(quick):
        rows.append(row(f"ePSF goals: {name}", 0.0, secs,
                        f"median flux bias {bias:+.3%}, position rms {rms:.4f} px, "
                        f"core residual rms {core:.2f} x noise"))
    return rows


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    if "--goals" in sys.argv:
        fig = Path(__file__).resolve().parent / "epsf_refine.png"
        for name, secs, (bias, rms, core) in goals(quick, figure=fig):
            print(f"{name}: {secs:.1f} s, median flux bias {bias:+.3%}, position rms "
                  f"{rms:.4f} px, core residual rms {core:.2f} x noise")
    else:
        for r in run(quick):
            print(f"{r['name']}: photutils {r['photutils_s']:.3f} s, crowdphot "
                  f"{r['crowdphot_s']:.3f} s, ratio {r['ratio']:.1f}x ({r['note']})")
