"""Benchmark: the batched fitting engine ``crowdphot.core.fit.fit_psf`` vs photutils PSFPhotometry.

Both fit the same image from the same initial positions and fluxes (the true values, jittered
by a seeded 0.2 px / 10 %), with ``fit_shape=5`` and ``error`` given. Both times are a full
``PSFPhotometry.__call__(data, error=..., init_params=...)``: photutils fits one source or group
at a time with astropy's TRF fitter; crowdphot's batched engine solves every group at once.
The note reports the largest position and relative flux difference between the two over
the sources photutils flags as converged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, notebook_scene, row  # noqa: E402

FWHM = 2.5
FIT_SHAPE = 5
#: ``--ours-only``: time crowdphot alone (before/after comparisons of engine changes)
OURS_ONLY = "--ours-only" in sys.argv


def _analytic_scene(n, shape, min_separation, seed=1):
    from crowdphot import CircularGaussianPRF, make_noise_image, make_psf_model_image

    psf = CircularGaussianPRF(fwhm=FWHM)
    clean, params = make_psf_model_image(shape, psf, n, flux=(500, 20_000),
                                         min_separation=min_separation, seed=seed)
    data = clean + make_noise_image(shape, mean=0, stddev=0.5, seed=seed)
    return data, np.sqrt(np.abs(data) + 0.25), params


def _init(params, seed=2):
    rng = np.random.default_rng(seed)
    n = len(params)
    x = np.asarray(params["x_0"], float) + rng.normal(0, 0.2, n)
    y = np.asarray(params["y_0"], float) + rng.normal(0, 0.2, n)
    f = np.asarray(params["flux"], float) * rng.uniform(0.9, 1.1, n)
    return x, y, f


def _compare(name, data, error, x, y, f, psf_ours, psf_theirs, group_sep, *, repeat,
             extra_note=""):
    from astropy.table import QTable
    from photutils.psf import PSFPhotometry
    from photutils.psf import SourceGrouper as PuGrouper

    from crowdphot import PSFPhotometry as OurPhot
    from crowdphot.psf.groupers import SourceGrouper

    init = QTable({"x": x, "y": y, "flux": f})
    # the public shell, exactly as a photutils user calls it (grouping and table included)
    ours_phot = OurPhot(psf_ours, FIT_SHAPE,
                        grouper=SourceGrouper(group_sep) if group_sep else None,
                        group_warning_threshold=10**9)

    def ours():
        return ours_phot(data, error=error, init_params=init)

    grouper = PuGrouper(group_sep) if group_sep else None
    phot = PSFPhotometry(psf_theirs, FIT_SHAPE, grouper=grouper)

    def theirs():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return phot(data, error=error, init_params=init)

    t_ours, res = best_of(ours, repeat=repeat)
    if OURS_ONLY:
        return row(name, float("nan"), t_ours, f"n={len(x)}; crowdphot only")
    t_theirs, ref = best_of(theirs, repeat=1, warmup=False)
    ok = (np.asarray(ref["flags"]) & 8) == 0
    dx = np.nanmax(np.abs(np.asarray(res["x_fit"])[ok] - np.asarray(ref["x_fit"])[ok]))
    df = np.nanmax(np.abs(np.asarray(res["flux_fit"])[ok] / np.asarray(ref["flux_fit"])[ok]
                          - 1))
    gid = np.asarray(res["group_id"])
    groups = (f", {len(np.unique(gid))} groups (max {int(np.asarray(res['group_size']).max())})"
              if group_sep else "")
    note = (f"n={len(x)}{groups}; PSFPhotometry(init_params=...) both sides; max |dx|={dx:.1e} "
            f"px, max |dflux/flux|={df:.1e} over {int(ok.sum())} photutils-converged"
            f"{extra_note}")
    return row(name, t_theirs, t_ours, note)


def _medium_groups_row(n_groups, *, repeat):
    """``n_groups`` blended blobs of 49 stars (7 x 7 jittered grid at 4.5 px), one group each:
    the dense bucket of 64 members, i.e. batched 192 x 192 solves and inverses. Timed with
    the engine's one-BLAS-thread limit and without it (alternating, in this process): extra
    BLAS threads on busy cores inflate exactly these mid-sized batched solves."""
    import contextlib

    import crowdphot.core.fit.solve as solve_mod
    from crowdphot import CircularGaussianPRF, make_noise_image
    from crowdphot.core.fit import fit_psf
    from crowdphot.core.render import render_image

    psf = CircularGaussianPRF(fwhm=FWHM)
    rng = np.random.default_rng(3)
    gx, gy = np.meshgrid(np.arange(7), np.arange(7))
    xs, ys, gs = [], [], []
    for g in range(n_groups):
        cx, cy = 60 + 70 * (g % 8), 60 + 70 * (g // 8)
        xs.append(cx + 4.5 * gx.ravel() + rng.uniform(-0.5, 0.5, 49))
        ys.append(cy + 4.5 * gy.ravel() + rng.uniform(-0.5, 0.5, 49))
        gs.append(np.full(49, g))
    x, y, gid = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    flux = rng.uniform(2000, 5000, len(x))
    shape = (70 * ((n_groups + 7) // 8) + 60, 640)
    clean = render_image(shape, psf, x, y, flux)
    error = np.sqrt(clean + 25.0)
    data = clean + make_noise_image(shape, mean=0, stddev=1.0, seed=3) * error
    x0, y0 = x + rng.normal(0, 0.2, len(x)), y + rng.normal(0, 0.2, len(x))

    def ours():
        return fit_psf(data, psf, x0, y0, flux * 0.9, fit_shape=FIT_SHAPE, group_id=gid,
                       error=error)

    limited = solve_mod.one_blas_thread
    times = {"limit": [], "free": []}
    ours()  # warm-up
    for _ in range(max(2, repeat)):
        for key, ctx in (("limit", limited), ("free", contextlib.nullcontext)):
            solve_mod.one_blas_thread = ctx
            try:
                t, res = best_of(ours, repeat=1, warmup=False)
            finally:
                solve_mod.one_blas_thread = limited
            times[key].append(t)
    t_lim, t_free = min(times["limit"]), min(times["free"])
    note = (f"{len(x)} stars, {n_groups} groups of 49; without the BLAS limit "
            f"{t_free:.3f} s (x{t_free / t_lim:.1f}); converged {bool(res.converged.all())}")
    return row(f"fit {n_groups} groups of 49 stars (192x192 dense solves)", float("nan"),
               t_lim, note)


def _big_group_row(nx, ny, *, repeat):
    """One connected group of ``nx * ny`` stars on a 4.5 px jittered grid (FWHM 2.5): every
    star blends with its neighbours, so the whole field is a single joint fit."""
    from crowdphot import CircularGaussianPRF, make_noise_image
    from crowdphot.core.fit import fit_psf
    from crowdphot.core.render import render_image

    psf = CircularGaussianPRF(fwhm=FWHM)
    rng = np.random.default_rng(3)
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    x = 10 + 4.5 * gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = 10 + 4.5 * gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = rng.uniform(2000, 5000, len(x))
    shape = (int(4.5 * ny + 20), int(4.5 * nx + 20))
    clean = render_image(shape, psf, x, y, flux)
    error = np.sqrt(clean + 25.0)
    data = clean + make_noise_image(shape, mean=0, stddev=1.0, seed=3) * error
    n = len(x)
    x0, y0 = x + rng.normal(0, 0.2, n), y + rng.normal(0, 0.2, n)
    gid = np.zeros(n, dtype=np.int64)

    def ours():
        return fit_psf(data, psf, x0, y0, flux * 0.9, fit_shape=FIT_SHAPE, group_id=gid,
                       error=error)

    t, res = best_of(ours, repeat=repeat)
    pull = (res.x - x) / res.x_err
    note = (f"one connected group of {n}; photutils not run (a single {3 * n}-parameter "
            f"TRF fit); converged {bool(res.converged.all())}, niter {int(res.niter.max())}, "
            f"std(x pull) {np.std(pull):.2f}")
    return row(f"fit one {n}-star connected group, CircularGaussianPRF", float("nan"), t, note)


def _make_psf_model_rows(n, *, repeat):
    """make_psf_model(Gaussian2D) on both sides: building (the normalising integral) and a
    grouped fit through the astropy-fitter path (TRFLSQFitter, numerical derivatives)."""
    import warnings

    from astropy.modeling.models import Gaussian2D
    from astropy.table import QTable
    from photutils.psf import PSFPhotometry as PuPhot
    from photutils.psf import SourceGrouper as PuGrouper
    from photutils.psf import make_psf_model as pu_make

    from crowdphot import CircularGaussianPRF, PSFPhotometry, SourceGrouper, make_model_image
    from crowdphot import make_psf_model as our_make

    g = Gaussian2D(x_stddev=1.2, y_stddev=1.2)
    kw = {"x_name": "x_mean", "y_name": "y_mean"}
    t_ours, ours_model = best_of(lambda: our_make(g, **kw), repeat=repeat)
    t_theirs, their_model = best_of(lambda: pu_make(g, **kw), repeat=1, warmup=False)
    norm = (float(ours_model.parameters[-1]), float(their_model.parameters[-1]))
    rows = [row("make_psf_model(Gaussian2D) build (normalising integral)", t_theirs, t_ours,
                f"default dx=dy=50, subsample=100; scale {norm[0]:.6f} vs {norm[1]:.6f} "
                "(midpoint vs trapezoid rule)")]
    rng = np.random.default_rng(4)
    side = int(np.sqrt(n) * 20)
    x, y = rng.uniform(8, side - 8, n), rng.uniform(8, side - 8, n)
    truth = QTable({"x_0": x, "y_0": y, "flux": rng.uniform(500, 1000, n)})
    data = make_model_image((side, side), CircularGaussianPRF(fwhm=2.83), truth,
                            model_shape=(15, 15)) + rng.normal(0, 1, (side, side))
    init = QTable({"x": x + 0.2, "y": y - 0.1, "flux": np.full(n, 700.0)})
    ours_phot = PSFPhotometry(ours_model, FIT_SHAPE, grouper=SourceGrouper(8))
    their_phot = PuPhot(their_model, FIT_SHAPE, grouper=PuGrouper(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_ours, res = best_of(lambda: ours_phot(data, init_params=init), repeat=repeat)
        t_theirs, ref = best_of(lambda: their_phot(data, init_params=init), repeat=1,
                                warmup=False)
    df = np.nanmax(np.abs(np.asarray(res["flux_fit"]) / np.asarray(ref["flux_fit"]) - 1))
    rows.append(row(f"fit {n} grouped at 8 px, make_psf_model(Gaussian2D)", t_theirs, t_ours,
                    f"astropy-fitter path both sides; {len(np.unique(res['group_id']))} groups; "
                    f"max |dflux/flux|={df:.1e}"))
    return rows


def run(quick=False):
    from photutils.psf import CircularGaussianPRF as Theirs

    from crowdphot import CircularGaussianPRF as Ours

    repeat = 1 if quick else 3
    rows = []
    n500 = 100 if quick else 500
    data, error, params = _analytic_scene(n500, (2048, 2048), 25)
    x, y, f = _init(params)
    pair = (Ours(fwhm=FWHM), Theirs(fwhm=FWHM))
    rows.append(_compare(f"fit {n500} isolated, CircularGaussianPRF", data, error, x, y, f,
                         *pair, None, repeat=repeat))
    rows.append(_compare(f"fit {n500} grouped at 35 px, CircularGaussianPRF", data, error, x, y,
                         f, *pair, 35.0, repeat=repeat))

    n4k = 800 if quick else 4000
    data, error, params = _analytic_scene(n4k, (2048, 2048), 1)
    x, y, f = _init(params)
    rows.append(_compare(f"fit {n4k} grouped at 10 px, CircularGaussianPRF", data, error, x, y,
                         f, *pair, 10.0, repeat=repeat))

    scene = notebook_scene() if not quick else notebook_scene(shape=(1024, 1024), n_sources=125)
    x, y, f = _init(scene["params"])
    rows.append(_compare(f"fit notebook scene ({len(x)} stars), GriddedPSFModel", scene["data"],
                         scene["error"], x, y, f, scene["psf_crowdphot"],
                         scene["psf_photutils"], None, repeat=repeat,
                         extra_note="; " + scene["note"]))
    rows.append(_compare(f"fit notebook scene ({len(x)} stars), GriddedPSFModel, grouped at 35 px",
                         scene["data"], scene["error"], x, y, f, scene["psf_crowdphot"],
                         scene["psf_photutils"], 35.0, repeat=repeat,
                         extra_note="; " + scene["note"]))
    rows.append(_big_group_row(*((20, 15) if quick else (60, 50)), repeat=repeat))
    rows.append(_medium_groups_row(10 if quick else 40, repeat=repeat))
    rows.extend(_make_psf_model_rows(50 if quick else 200, repeat=repeat))
    return rows


if __name__ == "__main__":  # pragma: no cover
    quick = "--quick" in sys.argv
    for r in run(quick=quick):
        print(f"{r['name']:<55} photutils {r['photutils_s']:8.3f} s  crowdphot "
              f"{r['crowdphot_s']:8.4f} s  x{r['ratio']:7.1f}  {r['note']}")
