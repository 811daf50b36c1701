"""Benchmark: artificial star tests (issue #16) on a field whose own stars are the truth.

Scene: 1024 x 1024, 3000 stars uniform on the image with a minimum separation of 3 px, fluxes
log-uniform over 3 dex (10 - 10^4: undetectable to bright), circular Gaussian PRF of FWHM 2.5,
Gaussian noise sigma 2. Photometry: IRAFStarFinder at 5 sigma, groups at 5 px, fit_shape 5,
aperture 3. A true star is *recovered* when a fitted star lies within 0.5 px (one-to-one
matching) and its flux within 10 %; the artificial stars use the same rule.

Rows:

* ``ast 10^4 stars beyond one phot run``: crowdphot's incremental test (batches re-detected on
  the image, only each artificial star's neighbourhood re-fitted), against the DOLPHOT-style
  approach with photutils -- a full ``PSFPhotometry`` re-run per batch of the same size, timed
  on one batch and multiplied by the number of batches. The rate (artificial stars per second)
  is in the note; the goal is >= 1000 per second on the 2-core machine.
* the completeness table: per 0.5-dex flux bin, the field's own recovered fraction and the AST
  completeness, with the difference in binomial sigmas (goal: within 3 sigma). The artificial
  stars keep 3 px from the field's stars (all of them, from the truth), as the field's stars
  keep 3 px from each other.

``python bench/bench_ast.py [--quick]`` prints both (quick: 512 x 512, 750 stars, 3000 AST) and
the time of the same test with every batch detected on the whole image and on cut-outs only
(the default picks per batch whichever holds fewer pixels; the tables are identical).
``--seeds 0-11`` pools the completeness table over several fields (no timing);
``--detection`` times the re-detection alone against the number of artificial stars;
``--iterative [--n N]`` times ``IterativePSFPhotometry`` (3 iterations, mode 'new', N AST);
``--big [--workers 2]`` runs 10^5 artificial stars on a 4096 x 4096 field of 48,000 stars
(tiles of 1024 on that many Dask worker processes).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import row  # noqa: E402

FWHM = 2.5
NOISE = 2.0
FLUX = (10.0, 10_000.0)


def field(side, n, seed=0):
    """``(data, error, truth)``: log-uniform fluxes, minimum separation 3 px."""
    from astropy.table import QTable

    from crowdphot import (
        CircularGaussianPRF,
        make_model_image,
        make_noise_image,
        make_random_xycoords,
    )

    xy = make_random_xycoords(n, (0, side - 1), (0, side - 1), min_separation=3, seed=seed)
    rng = np.random.default_rng(seed + 100)
    flux = FLUX[0] * (FLUX[1] / FLUX[0]) ** rng.uniform(0, 1, len(xy))
    truth = QTable({"x_0": xy[:, 0], "y_0": xy[:, 1], "flux": flux})
    data = make_model_image((side, side), CircularGaussianPRF(fwhm=FWHM), truth,
                            model_shape=(11, 11))
    data = data + make_noise_image(data.shape, mean=0, stddev=NOISE, seed=seed + 1)
    return data, np.full(data.shape, NOISE), truth


def _phot(lib):
    if lib == "photutils":
        from photutils.detection import IRAFStarFinder
        from photutils.psf import CircularGaussianPRF, PSFPhotometry, SourceGrouper
    else:
        from crowdphot import CircularGaussianPRF, IRAFStarFinder, PSFPhotometry, SourceGrouper
    return PSFPhotometry(CircularGaussianPRF(fwhm=FWHM), (5, 5),
                         finder=IRAFStarFinder(5 * NOISE, FWHM), aperture_radius=3,
                         grouper=SourceGrouper(5))


def _recovered(truth, cat):
    from crowdphot.utils.match import match_xy

    ft = np.asarray(truth["flux"])
    rec = np.zeros(len(truth), dtype=bool)
    ti, ci = match_xy(truth["x_0"], truth["y_0"], np.asarray(cat["x_fit"]),
                      np.asarray(cat["y_fit"]), separation=0.5)
    rec[ti] = np.abs(np.asarray(cat["flux_fit"])[ci] - ft[ti]) <= 0.1 * ft[ti]
    return rec


def completeness_table(truth, rec, ast):
    """Rows ``(bin, n_truth, c_truth, n_ast, c_ast, z)`` per 0.5-dex flux bin."""
    lt = np.log10(np.asarray(truth["flux"]))
    la = np.log10(np.asarray(ast["flux_in"]))
    ra = np.asarray(ast["recovered"])
    rows = []
    for lo in np.arange(np.log10(FLUX[0]), np.log10(FLUX[1]) - 1e-9, 0.5):
        s, a = (lt >= lo) & (lt < lo + 0.5), (la >= lo) & (la < lo + 0.5)
        ct, ca = rec[s].mean(), ra[a].mean()
        sig = np.sqrt(ct * (1 - ct) / s.sum() + ca * (1 - ca) / a.sum())
        z = (ca - ct) / sig if sig > 0 else 0.0
        rows.append((f"{lo:.1f}-{lo + 0.5:.1f}", int(s.sum()), ct, int(a.sum()), ca, z))
    return rows


def measure(quick=False, *, with_photutils=True, seed=0):
    from crowdphot.core.render import render_image
    from crowdphot.pipeline.ast import artificial_star_test

    side, n_field, n_ast = (512, 750, 3000) if quick else (1024, 3000, 10_000)
    data, err, truth = field(side, n_field, seed)
    ours = _phot("crowdphot")
    ours(data, error=err)  # warm-up (compilation, caches)
    t0 = time.perf_counter()
    cat = ours(data, error=err)
    t_phot = time.perf_counter() - t0
    rec = _recovered(truth, cat)
    # the field's stars keep 3 px from each other: so do the artificial ones
    res = artificial_star_test(data, ours, n_ast, FLUX, error=err, seed=seed + 5, catalog=cat,
                               min_separation=3.0, avoid=(truth["x_0"], truth["y_0"]))
    t_ast = res.meta["t_ast"]
    out = {"side": side, "n_field": len(truth), "n_ast": n_ast, "t_phot": t_phot,
           "t_ast": t_ast, "n_batches": res.meta["n_batches"],
           "table": completeness_table(truth, rec, res.table)}
    t = res.table
    first = t[t["batch"] == 0]
    image = data + render_image(data.shape, ours.psf_model, first["x_in"], first["y_in"],
                                first["flux_in"])
    t0 = time.perf_counter()
    ours(image, error=err)
    out["crowdphot_rerun"] = (time.perf_counter() - t0) * res.meta["n_batches"]
    if with_photutils:
        theirs = _phot("photutils")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            theirs(image, error=err)
            out["photutils_rerun"] = (time.perf_counter() - t0) * res.meta["n_batches"]
    return out


def detection_modes(side, n_field, n_ast, seed=0):
    """Seconds of the same test per detection mode, and whether the tables agree."""
    import crowdphot.pipeline.ast_local as local
    from crowdphot.pipeline.ast import artificial_star_test

    data, err, _ = field(side, n_field, seed)
    phot = _phot("crowdphot")
    cat = phot(data, error=err)
    out, ref = {}, None
    try:
        for mode in ("auto", "whole", "cutout"):
            local.DETECTION = mode
            res = artificial_star_test(data, phot, n_ast, FLUX, error=err, seed=seed + 5,
                                       catalog=cat)
            t = np.asarray(res.table["flux_out"])
            ref = t if ref is None else ref
            out[mode] = (res.meta["t_ast"], dict(res.meta["finder_calls"]),
                         bool(np.allclose(t, ref, rtol=1e-9, equal_nan=True)))
    finally:
        local.DETECTION = "auto"
    return out


def detection_speed(side=2048, n_field=12_000, counts=(30, 100, 300, 1000), seed=0):
    """Seconds to re-detect around ``n`` artificial stars: whole image vs cut-out mosaic."""
    import crowdphot.pipeline.ast_local as local
    from crowdphot.core.render import render_image
    from crowdphot.pipeline.ast import _geometry, draw_artificial_stars

    data, _, _ = field(side, n_field, seed)
    phot = _phot("crowdphot")
    geom = _geometry(phot, None, 3.5)
    out = []
    try:
        for n in counts:
            x, y, f = draw_artificial_stars(data.shape, n, FLUX, seed=n)
            image = data + render_image(data.shape, phot.psf_model, x, y, f)
            times, found = {}, {}
            for mode in ("whole", "cutout"):
                local.DETECTION = mode
                local._detect_near(phot, image, None, x, y, geom["change"], geom["depth"])
                t0 = time.perf_counter()
                found[mode] = local._detect_near(phot, image, None, x, y, geom["change"],
                                                 geom["depth"])
                times[mode] = time.perf_counter() - t0
            same = np.allclose(found["whole"][0], found["cutout"][0], atol=1e-9)
            out.append((n, times["whole"], times["cutout"], same))
    finally:
        local.DETECTION = "auto"
    return out


def pooled(seeds, side=1024, n_field=3000, n_ast=10_000):
    """Completeness per bin pooled over several fields, and each field's z per bin."""
    from crowdphot.pipeline.ast import artificial_star_test

    counts, zs = np.zeros((6, 4)), []
    for seed in seeds:
        data, err, truth = field(side, n_field, seed)
        phot = _phot("crowdphot")
        cat = phot(data, error=err)
        rec = _recovered(truth, cat)
        res = artificial_star_test(data, phot, n_ast, FLUX, error=err, seed=seed + 5,
                                   catalog=cat, min_separation=3.0,
                                   avoid=(truth["x_0"], truth["y_0"]))
        rows = completeness_table(truth, rec, res.table)
        zs.append([r[5] for r in rows])
        counts += [(r[1], round(r[2] * r[1]), r[3], round(r[4] * r[3])) for r in rows]
    return counts, np.array(zs)


def iterative_rate(side=1024, n_field=3000, n_ast=10_000, seed=0):
    from crowdphot import CircularGaussianPRF, IRAFStarFinder, SourceGrouper
    from crowdphot.pipeline.ast import artificial_star_test
    from crowdphot.psf.iterative import IterativePSFPhotometry

    data, err, _ = field(side, n_field, seed)
    phot = IterativePSFPhotometry(CircularGaussianPRF(fwhm=FWHM), (5, 5),
                                  IRAFStarFinder(5 * NOISE, FWHM), aperture_radius=3,
                                  grouper=SourceGrouper(5), maxiters=3, mode="new")
    t0 = time.perf_counter()
    cat = phot(data, error=err)
    t_phot = time.perf_counter() - t0
    c0 = time.process_time()
    res = artificial_star_test(data, phot, n_ast, FLUX, error=err, seed=seed + 5, catalog=cat)
    meta = dict(res.meta, cpu_ast=time.process_time() - c0)
    return t_phot, meta


def big(workers=None, n_ast=100_000):
    from crowdphot.pipeline.ast import artificial_star_test

    data, err, _ = field(4096, 48_000, 0)
    phot = _phot("crowdphot")
    t0 = time.perf_counter()
    cat = phot(data, error=err)
    t_phot = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = artificial_star_test(data, phot, n_ast, FLUX, error=err, seed=5, catalog=cat,
                               workers=workers)
    return t_phot, time.perf_counter() - t0, res


def run(quick=False):
    m = measure(quick)
    rate = m["n_ast"] / m["t_ast"]
    worst = max(abs(r[5]) for r in m["table"])
    note = (f"{m['side']}^2, {m['n_field']} stars, {m['n_ast']} AST in {m['n_batches']} "
            f"batches: {rate:.0f} AST/s beyond one phot run ({m['t_phot']:.2f} s); "
            f"completeness vs the field's own within {worst:.1f} sigma (worst 0.5-dex bin); "
            f"photutils = full PSFPhotometry re-run per batch, extrapolated from one batch; "
            f"crowdphot full re-runs would take {m['crowdphot_rerun']:.1f} s")
    return [row(f"ast {m['n_ast']} stars beyond one phot run", m["photutils_rerun"],
                m["t_ast"], note)]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--seeds" in argv:
        lo, _, hi = argv[argv.index("--seeds") + 1].partition("-")
        seeds = range(int(lo), int(hi or lo) + 1)
        counts, zs = pooled(seeds)
        print(f"pooled over {len(seeds)} fields: flux bin, field nt kt, AST na ka, diff, z")
        for i, (nt, kt, na, ka) in enumerate(counts):
            ct, ca = kt / nt, ka / na
            p = (kt + ka) / (nt + na)
            sig = np.sqrt(p * (1 - p) * (1 / nt + 1 / na))
            z = (ca - ct) / sig if sig > 0 else 0.0
            print(f"{1 + 0.5 * i:.1f}-{1.5 + 0.5 * i:.1f} {int(nt):6d} {int(kt):6d} "
                  f"{int(na):6d} {int(ka):6d} {ca - ct:+.4f} {z:+.2f}")
        inf = zs[:, 1:]
        print("per-field z (rows: fields):")
        print(np.array2string(zs, precision=2, suppress_small=True))
        print(f"{inf.size} bins: mean z {inf.mean():+.2f}, rms {np.sqrt((inf**2).mean()):.2f}, "
              f"max |z| {np.abs(inf).max():.2f}")
        return
    if "--detection" in argv:
        print("re-detection around n stars on 2048^2 (12,000 stars): whole image vs cut-outs")
        for n, tw, tc, same in detection_speed():
            print(f"n={n:5d}: whole {tw * 1e3:7.1f} ms, cut-outs {tc * 1e3:7.1f} ms "
                  f"(x{tw / tc:.1f}), same detections: {same}")
        return
    if "--iterative" in argv:
        n_ast = int(argv[argv.index("--n") + 1]) if "--n" in argv else 10_000
        t_phot, meta = iterative_rate(n_ast=n_ast)
        print(f"iterative (3 iterations, 'new'): phot {t_phot:.2f} s; {meta['n_stars']} AST in "
              f"{meta['t_ast']:.2f} s wall, {meta['cpu_ast']:.2f} s CPU "
              f"({meta['n_stars'] / meta['t_ast']:.0f} per s wall, "
              f"{meta['n_stars'] / meta['cpu_ast']:.0f} per s CPU, "
              f"{meta['n_batches']} batches, finder calls {meta['finder_calls']})")
        return
    if "--big" in argv:
        workers = int(argv[argv.index("--workers") + 1]) if "--workers" in argv else None
        t_phot, t_all, res = big(workers)
        m = res.meta
        print(f"4096^2, 48000 stars: phot {t_phot:.1f} s; 10^5 AST in {t_all:.1f} s "
              f"(measurement {m['t_ast']:.1f} s, workers={workers}, {m['n_boxes']} boxes of "
              f"{m['tile_shape']} + {m['box_margin']} px, {m['n_batches']} batches), "
              f"{int(np.count_nonzero(res.table['recovered']))} recovered")
        return
    quick = "--quick" in argv
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    m = measure(quick, with_photutils="--no-photutils" not in argv, seed=seed)
    print(f"field {m['side']}^2, {m['n_field']} stars; phot {m['t_phot']:.2f} s; "
          f"{m['n_ast']} AST in {m['t_ast']:.2f} s ({m['n_ast'] / m['t_ast']:.0f} per s, "
          f"{m['n_batches']} batches)")
    if "photutils_rerun" in m:
        print(f"DOLPHOT-style full re-run per batch: photutils {m['photutils_rerun']:.1f} s, "
              f"crowdphot {m['crowdphot_rerun']:.1f} s")
    print("flux bin (dex)  n_truth  truth  n_ast   AST    z")
    for b, nt, ct, na, ca, z in m["table"]:
        print(f"{b:>13} {nt:8d} {ct:6.3f} {na:6d} {ca:6.3f} {z:+5.2f}")
    side, nf, na = (512, 750, 3000) if quick else (1024, 3000, 10_000)
    for mode, (t, calls, same) in detection_modes(side, nf, na, seed).items():
        print(f"detection {mode:6s}: {t:.2f} s ({na / t:.0f} per s), finder calls {calls}, "
              f"same table: {same}")


if __name__ == "__main__":
    main()
