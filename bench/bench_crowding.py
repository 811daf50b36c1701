"""Benchmark: a field near the crowding limit, iterative detection, completeness vs magnitude.

Scene (simulated by crowdphot): stars at uniform random positions (no minimum separation, so
blends happen) with a density of 10,000 per 2048 x 2048, magnitudes uniform over 5 mag
(fluxes 200-20000), circular Gaussian PRF of FWHM 4 px (about 23 beams of 1.13 FWHM**2 per
star: near the crowding limit), Gaussian noise sigma 2. Both libraries run
``IterativePSFPhotometry`` with the same finder (DAOStarFinder, 5 sigma), grouper (linking
length 3 FWHM, beyond the finder's 2.5 FWHM peak separation; no cap on group size: photutils
fits each group with a dense TRF, crowdphot solves all groups at once, large ones as sparse
systems), aperture 4 px, fit_shape 7, ``mode='new'``, 3 iterations.

A true star is *recovered* when a fitted source lies within 0.5 px (one-to-one matching,
nearest pairs first) and its flux is within 10 %. photutils runs on a 1024 x 1024 image (2500
stars, the same density; a few minutes) in both modes ('new' and 'all'), crowdphot on the same
image and on the full 2048 x 2048 field. The completeness curves (fraction recovered per
0.5-mag bin) are printed for all runs.

``python bench/bench_crowding.py --figure`` (issue #10's crowding goal) runs photutils ('new',
'all'; tables cached in ``bench/_cache``, minutes each) and crowdphot ('new', 'all', 'all' with
all-star fitting) on the full 2048 x 2048 field and writes ``bench/crowding.png``: completeness
and median flux bias per magnitude bin, the all-star bias pooled over 8 fields.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, row  # noqa: E402

FWHM = 4.0
FIT_SHAPE = 7
APERTURE = 4
NOISE = 2.0
DENSITY = 10_000 / 2048**2
FLUX = (200.0, 20_000.0)  # 5 magnitudes
MAXITERS = 3
#: DAOStarFinder kernel radius (Gaussian sigmas) of the "deep" runs: a 9 x 9 kernel at FWHM 4,
#: whose flux-200 star stands 10.8 sigma above the convolved noise against 4.5 sigma with the
#: default 5 x 5 kernel (optimal PSF-fit S/N: 16.6). Same 5-sigma threshold, same false rate.
DEEP_RADIUS = 2.5


def crowded_scene(size, seed=3):
    """``(data, truth)`` with ``truth`` a dict of ``x, y, flux`` arrays."""
    from astropy.table import QTable

    from crowdphot import CircularGaussianPRF, make_model_image

    rng = np.random.default_rng(seed)
    n = int(round(DENSITY * size * size))
    x = rng.uniform(-0.5, size - 0.5, n)
    y = rng.uniform(-0.5, size - 0.5, n)
    mag = rng.uniform(0.0, 5.0, n)
    flux = FLUX[1] * 10 ** (-0.4 * mag)
    params = QTable({"x_0": x, "y_0": y, "flux": flux})
    data = make_model_image((size, size), CircularGaussianPRF(fwhm=FWHM), params,
                            model_shape=(21, 21))
    data += rng.normal(0.0, NOISE, data.shape)
    return data, {"x": x, "y": y, "flux": flux}


def _run(data, mode, *, psf_module, finder_module, sigma_radius=1.5, maxiters=MAXITERS,
         **extra):
    """The same iterative configuration on either library (they share the API).

    ``sigma_radius`` is DAOStarFinder's kernel radius in Gaussian sigmas: 1.5 (DAOFIND's and
    photutils' default, a 5 x 5 kernel at FWHM 4) or :data:`DEEP_RADIUS` (a near-matched
    filter; see :func:`figure`).
    """
    phot = psf_module.IterativePSFPhotometry(
        psf_module.CircularGaussianPRF(fwhm=FWHM), FIT_SHAPE,
        finder_module.DAOStarFinder(5 * NOISE, FWHM, sigma_radius=sigma_radius),
        grouper=psf_module.SourceGrouper(3 * FWHM), aperture_radius=APERTURE, maxiters=maxiters,
        mode=mode, group_warning_threshold=10**9, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return phot(data, error=np.full(data.shape, NOISE)) if extra else phot(data)


def _run_photutils(data, mode="new", sigma_radius=1.5, maxiters=MAXITERS):
    import photutils.detection as pdet
    import photutils.psf as ppsf

    return _run(data, mode, psf_module=ppsf, finder_module=pdet, sigma_radius=sigma_radius,
                maxiters=maxiters)


def _run_crowdphot(data, mode="new"):
    import crowdphot as cp

    return _run(data, mode, psf_module=cp, finder_module=cp)


def recovered(truth, table):
    """Boolean ``(n_true,)``: matched within 0.5 px with flux within 10 %."""
    from crowdphot import match_xy

    x = np.asarray(table["x_fit"], dtype=float)
    y = np.asarray(table["y_fit"], dtype=float)
    f = np.asarray(table["flux_fit"], dtype=float)
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(f)
    idx = np.flatnonzero(good)
    ti, fi = match_xy(truth["x"], truth["y"], x[good], y[good], separation=0.5)
    ok = np.zeros(len(truth["x"]), dtype=bool)
    ok[ti] = np.abs(f[idx[fi]] / truth["flux"][ti] - 1) < 0.1
    return ok


def completeness(truth, ok, edges):
    """Fraction recovered per magnitude bin (mag 0 = the brightest flux)."""
    mag = -2.5 * np.log10(truth["flux"] / FLUX[1])
    which = np.digitize(mag, edges) - 1
    n = np.bincount(which, minlength=len(edges) - 1)[: len(edges) - 1]
    k = np.bincount(which, weights=ok, minlength=len(edges) - 1)[: len(edges) - 1]
    return n, np.where(n > 0, k / np.maximum(n, 1), np.nan)


def _print_curves(title, edges, truth, curves):
    print(f"\nCompleteness vs magnitude ({title}): recovered within 0.5 px and 10 % flux")
    names = list(curves)
    print(f"{'mag bin':>11} {'n_true':>7} " + " ".join(f"{n:>18}" for n in names))
    n_true = None
    cols = []
    for name in names:
        n_true, frac = completeness(truth, curves[name], edges)
        cols.append(frac)
    for b in range(len(edges) - 1):
        vals = " ".join(f"{c[b]:>18.3f}" for c in cols)
        print(f"{edges[b]:5.1f}-{edges[b + 1]:<5.1f} {n_true[b]:>7d} {vals}")
    totals = " ".join(f"{int(curves[n].sum()):>18d}" for n in names)
    print(f"{'total':>11} {len(truth['x']):>7d} {totals}")


def run(quick=False, full=False):
    """Rows for ``bench/run.py`` (see the module docstring).

    ``full=True`` (``python bench/bench_crowding.py --full``) runs photutils on the whole
    2048 x 2048 field too (about 3 minutes of photutils).
    """
    small, full = (256, 1024) if quick else ((2048, 2048) if full else (1024, 2048))
    edges = np.arange(0.0, 5.01, 0.5)
    rows = []

    data, truth = crowded_scene(small)
    n_true = len(truth["x"])
    _run_crowdphot(data[:128, :128])  # warm-up: numba kernels loaded before timing
    curves = {}
    for mode in ("new", "all"):
        t0 = time.perf_counter()
        tp = _run_photutils(data, mode)
        t_p = time.perf_counter() - t0
        t0 = time.perf_counter()
        tc = _run_crowdphot(data, mode)
        t_c = time.perf_counter() - t0
        ok_p, ok_c = recovered(truth, tp), recovered(truth, tc)
        curves[f"photutils {mode}"], curves[f"crowdphot {mode}"] = ok_p, ok_c
        verdict = "meets" if ok_c.sum() >= ok_p.sum() else "MISSES"
        rows.append(row(
            f"IterativePSFPhotometry mode={mode!r} crowded {small}x{small} ({n_true} stars, "
            "5 mag)", t_p, t_c,
            f"recovered (0.5 px, 10 %): photutils {int(ok_p.sum())}, crowdphot "
            f"{int(ok_c.sum())} of {n_true} ({verdict} the >= photutils target); fitted rows "
            f"{len(tp)} / {len(tc)}; largest group {int(np.max(tp['group_size']))} / "
            f"{int(np.max(tc['group_size']))}"))
    _print_curves(f"{small}x{small}, {n_true} stars", edges, truth, curves)

    data, truth = crowded_scene(full)
    curves = {}
    for mode in ("new", "all"):
        t0 = time.perf_counter()
        tab = _run_crowdphot(data, mode=mode)
        dt = time.perf_counter() - t0
        curves[f"crowdphot {mode}"] = ok = recovered(truth, tab)
        rows.append(row(
            f"crowdphot IterativePSFPhotometry mode={mode!r} crowded {full}x{full} "
            f"({len(truth['x'])} stars)", float("nan"), dt,
            f"recovered {int(ok.sum())} of {len(truth['x'])} ({ok.mean():.1%}); fitted rows "
            f"{len(tab)}; largest group {int(np.max(tab['group_size']))}; photutils not run "
            "at this size"))
    _print_curves(f"{full}x{full}, {len(truth['x'])} stars", edges, truth, curves)
    return rows


def flux_bias(truth, table, edges):
    """Median ``flux_fit / flux_true - 1`` (%) per magnitude bin and its standard error.

    Over the true stars matched within 0.5 px (one-to-one, nearest first; no flux cut, so
    the bias is not clipped by the recovery criterion) whose fit is finite and unflagged.
    """
    from crowdphot import match_xy

    x, y, f = (np.asarray(table[c], dtype=float) for c in ("x_fit", "y_fit", "flux_fit"))
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(f) & (np.asarray(table["flags"]) == 0)
    idx = np.flatnonzero(good)
    ti, fi = match_xy(truth["x"], truth["y"], x[good], y[good], separation=0.5)
    rel = 100.0 * (f[idx[fi]] / truth["flux"][ti] - 1.0)
    mag = -2.5 * np.log10(truth["flux"][ti] / FLUX[1])
    which = np.digitize(mag, edges) - 1
    med, err = np.full(len(edges) - 1, np.nan), np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):
        r = rel[which == b]
        if len(r) > 10:
            med[b] = np.median(r)
            # standard error of a median: 1.2533 sigma / sqrt(n), sigma from the MAD
            err[b] = 1.2533 * 1.4826 * np.median(np.abs(r - med[b])) / np.sqrt(len(r))
    return med, err


def _pooled_bias(truths, tables, edges):
    """:func:`flux_bias` over several fields at once."""
    from astropy.table import QTable, vstack

    parts, offset = [], 0.0
    big = {"x": [], "y": [], "flux": []}
    for t, tab in zip(truths, tables, strict=True):
        # fields side by side (shifted far apart in x) so one matching covers them all
        big["x"].append(t["x"] + offset)
        big["y"].append(t["y"])
        big["flux"].append(t["flux"])
        part = QTable({c: np.asarray(tab[c], dtype=float) for c in ("x_fit", "y_fit",
                                                                     "flux_fit")})
        part["x_fit"] += offset
        part["flags"] = np.asarray(tab["flags"])
        parts.append(part)
        offset += 1e5
    return flux_bias({k: np.concatenate(v) for k, v in big.items()}, vstack(parts), edges)


def _photutils_cached(data, size, mode, sigma_radius=1.5, maxiters=MAXITERS):
    """photutils' table for the scene (cached in bench/_cache: minutes per run)."""
    from astropy.table import QTable

    from common import CACHE_DIR

    deep = "" if sigma_radius == 1.5 else f"_r{sigma_radius:g}"
    deep += "" if maxiters == MAXITERS else f"_it{maxiters}"
    path = CACHE_DIR / f"crowding_photutils_{mode}_{size}{deep}.ecsv"
    if path.exists():
        tab = QTable.read(path)
        return tab, float(tab.meta["seconds"])
    t0 = time.perf_counter()
    tab = _run_photutils(data, mode, sigma_radius, maxiters)
    dt = time.perf_counter() - t0
    keep = tab[["x_fit", "y_fit", "flux_fit", "flux_err", "flags", "group_size"]]
    keep.meta = {"seconds": dt}
    CACHE_DIR.mkdir(exist_ok=True)
    keep.write(path, overwrite=True)
    return keep, dt


#: crowdphot's crowded-field flow (see :func:`figure`): all-star fitting, the Cox-Snell bias
#: correction, the near-matched DAOStarFinder kernel and 5 iterations (the recovered count
#: still grows from 3 to 5 iterations here, +280 stars, and stops growing after ~5).
CROWDED_FLOW = {"sigma_radius": DEEP_RADIUS, "maxiters": 5, "subtract_neighbors": True,
                "bias_correction": True}


def _run_crowdphot_with(data, mode="all", **options):
    import crowdphot as cp

    return _run(data, mode, psf_module=cp, finder_module=cp, **options)


def _run_allstar(data):
    """crowdphot's iterative 'all' mode with all-star fitting (DAOPHOT ALLSTAR)."""
    return _run_crowdphot_with(data, subtract_neighbors=True)


def mcnemar(ok_a, ok_b):
    """Paired comparison of two recoveries of the same stars: ``(only a, only b, p)``.

    ``p`` is the exact two-sided binomial (McNemar) probability of a split at least this
    uneven if neither library were better: the two run the same algorithm on the same
    image, so their per-bin counts differ only by stars at the recovery cuts.
    """
    from math import comb

    a, b = int(np.count_nonzero(ok_a & ~ok_b)), int(np.count_nonzero(ok_b & ~ok_a))
    n, k = a + b, min(a, b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)
    return a, b, p


#: The figure's runs: label -> (library, mode, options); photutils' runs are cached.
FIGURE_RUNS = {
    "photutils new": ("photutils", "new", {}),
    "photutils all": ("photutils", "all", {}),
    "photutils all, deep kernel": ("photutils", "all", {"sigma_radius": DEEP_RADIUS}),
    "photutils all, deep, 5 iter": ("photutils", "all", {"sigma_radius": DEEP_RADIUS,
                                                          "maxiters": 5}),
    "crowdphot new": ("crowdphot", "new", {}),
    "crowdphot all": ("crowdphot", "all", {}),
    "crowdphot all, all-star": ("crowdphot", "all", {"subtract_neighbors": True}),
    "crowdphot all, deep kernel": ("crowdphot", "all", {"sigma_radius": DEEP_RADIUS}),
    "crowdphot crowded flow": ("crowdphot", "all", CROWDED_FLOW),
}
#: crowdphot run -> the photutils runs with the same configuration (paired comparison)
SAME_CONFIG = {"crowdphot new": "photutils new", "crowdphot all": "photutils all",
               "crowdphot all, all-star": "photutils all",
               "crowdphot all, deep kernel": "photutils all, deep kernel",
               # same detection and iterations; crowdphot adds all-star and the correction
               "crowdphot crowded flow": "photutils all, deep, 5 iter"}


def figure(size=2048, path=None, bias_fields=8):
    """Completeness and flux bias against magnitude, photutils vs crowdphot, as a PNG.

    The runs of :data:`FIGURE_RUNS` on the same ``size``² field (10,000 stars at 2048²);
    photutils' tables are cached in ``bench/_cache`` (minutes each; the 5-iteration one is
    written by running it once). The flux bias of crowdphot's all-star run and of its
    crowded-field flow (:data:`CROWDED_FLOW`) is also pooled over ``bias_fields`` fields
    (seeds 3, 4, ...), whose faint bins have the stars to measure 0.1 %.

    Why two detection kernels: DAOStarFinder's default kernel (1.5 sigma radius, 5 x 5 px at
    FWHM 4, mean-subtracted) keeps little of a faint star's signal, so at the 5-sigma
    threshold a flux-200 star (PSF-fit S/N 16.6) stands only 4.5 sigma above the convolved
    noise: the faintest bin sits on the detection threshold and its detected stars are the
    ones noise pushed up (selection, +0.7 % in flux). A 2.5-sigma kernel (9 x 9) keeps 10.8
    sigma at the same threshold and the same false-detection rate. What is left is the
    first-order bias of a free-position fit, ``flux_err**2 / flux`` (+0.15..+0.36 % in the
    faintest bin), which ``bias_correction=True`` removes.

    Returns ``(rows, lines)``: timing rows and the printed table.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    edges = np.arange(0.0, 5.01, 0.5)
    centres = 0.5 * (edges[:-1] + edges[1:])
    data, truth = crowded_scene(size)
    n_true = len(truth["x"])
    _run_crowdphot(data[:128, :128])  # warm-up
    runs, times = {}, {}
    for name, (lib, mode, opts) in FIGURE_RUNS.items():
        if lib == "photutils":
            runs[name], times[name] = _photutils_cached(data, size, mode, **opts)
            continue
        t0 = time.perf_counter()
        runs[name] = _run_crowdphot_with(data, mode, **opts)
        times[name] = time.perf_counter() - t0
    ok = {name: recovered(truth, tab) for name, tab in runs.items()}
    mag = -2.5 * np.log10(truth["flux"] / FLUX[1])
    which = np.digitize(mag, edges) - 1
    comp = {name: completeness(truth, o, edges)[1] for name, o in ok.items()}
    bias = {name: flux_bias(truth, tab, edges) for name, tab in runs.items()}
    # the bias of the faint bins needs more stars than one field has: more fields (seeds)
    pooled = {"crowdphot all-star": (_run_allstar, [runs["crowdphot all, all-star"]]),
              "crowdphot crowded flow": (lambda d: _run_crowdphot_with(d, **CROWDED_FLOW),
                                         [runs["crowdphot crowded flow"]])}
    truths = [truth]
    for seed in range(4, 3 + bias_fields):
        d, t = crowded_scene(size, seed=seed)
        truths.append(t)
        for fn, tabs in pooled.values():
            tabs.append(fn(d))
    many = {f"{name}, {len(truths)} fields": _pooled_bias(truths, tabs, edges)
            for name, (_, tabs) in pooled.items()}
    n_bin = completeness(truth, np.zeros(n_true, dtype=bool), edges)[0]
    names = list(runs)
    lines = [f"Crowded field {size}x{size}, {n_true} stars: completeness (0.5 px, 10 %) and "
             "median flux bias (%, +- its standard error; matched within 0.5 px, flags 0)"]
    for name in names:
        lines.append(f"  {name:<30} {times[name]:8.1f} s  recovered {int(ok[name].sum())}")
    lines.append(f"{'mag bin':>11} {'n':>5} " + " ".join(f"{n[:24]:>24}" for n in names))
    for b in range(len(edges) - 1):
        cells = " ".join(f"{comp[n][b]:5.3f} {bias[n][0][b]:+6.2f}+-{bias[n][1][b]:4.2f}"
                         .rjust(24) for n in names)
        lines.append(f"{edges[b]:5.1f}-{edges[b + 1]:<5.1f} {n_bin[b]:>5d} {cells}")
    for label, (med, err) in many.items():
        lines.append(f"{label}: bias (%) per bin " + ", ".join(
            f"{m:+.3f}+-{e:.3f}" for m, e in zip(med, err, strict=True)))
    lines.append("Same configuration, per bin (McNemar: stars only crowdphot / only photutils "
                 "recovers, two-sided p):")
    for cname, pname in SAME_CONFIG.items():
        cells, worse = [], []
        for b in range(len(edges) - 1):
            a, c, p = mcnemar(ok[cname][which == b], ok[pname][which == b])
            cells.append(f"{a}/{c}" + ("" if p >= 0.05 else f" p={p:.3f}"))
            if c > a and p < 0.05:
                worse.append(f"{edges[b]:.1f}")
        lines.append(f"  {cname} vs {pname}: " + ", ".join(cells) + " -> "
                     + ("never significantly fewer" if not worse
                        else "significantly fewer in bins " + ", ".join(worse)))
    for pname in (n for n in names if n.startswith("photutils")):
        cname = "crowdphot crowded flow"
        worse = [f"{edges[b]:.1f}" for b in range(len(edges) - 1)
                 if comp[cname][b] < comp[pname][b]]
        lines.append(f"{cname} vs {pname}: completeness >= in every bin: "
                     f"{'yes' if not worse else 'NO, bins ' + ', '.join(worse)}; recovered "
                     f"{int(ok[cname].sum())} vs {int(ok[pname].sum())}")
    flow_bias = many[f"crowdphot crowded flow, {len(truths)} fields"][0]
    lines.append(f"crowded flow, {len(truths)} fields: bias range {np.nanmin(flow_bias):+.3f}"
                 f" .. {np.nanmax(flow_bias):+.3f} % (goal: within +-0.2 % in every bin)")

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 9), sharex=True)
    for name in names:
        lib = FIGURE_RUNS[name][0]
        c = "C0" if lib == "photutils" else ("C3" if name.endswith("flow") else "C1")
        ls = "--" if name.endswith("new") else (":" if "deep" in name else "-")
        m = {"photutils": "o", "crowdphot": "s"}[lib]
        ax1.plot(centres, comp[name], color=c, ls=ls, marker=m, ms=3, label=name,
                 lw=2.0 if name.endswith("flow") else 1.0)
    for k, (label, (med, err)) in enumerate(many.items()):
        ax2.errorbar(centres + 0.04 * (2 * k - 1), med, yerr=err, color=("C1", "C3")[k],
                     marker=("s", "D")[k], ms=4, capsize=2, label=label)
    ax2.axhspan(-0.2, 0.2, color="0.9", zorder=0, label="+-0.2 %")
    ax2.axhline(0, color="0.5", lw=0.8)
    ax1.set_ylabel("completeness (0.5 px, 10 % flux)")
    ax2.set_ylabel("median flux bias (%)")
    ax2.set_xlabel("magnitude below the brightest (flux 20000 .. 200; noise 2, FWHM 4)")
    ax1.set_title(f"Crowded field {size}x{size}, {n_true} stars, IterativePSFPhotometry")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = BENCH_DIR / "crowding.png" if path is None else path
    fig.savefig(path, dpi=110)
    plt.close(fig)
    lines.append(f"figure: {path}")
    rows = []
    for cname, pname in [*SAME_CONFIG.items(), ("crowdphot crowded flow", "photutils all")]:
        rows.append(row(f"crowding {size}x{size} {cname} (vs {pname})", times[pname],
                        times[cname], f"see {Path(path).name}"))
    return rows, lines


if __name__ == "__main__":
    if "--figure" in sys.argv:
        size = 512 if "--quick" in sys.argv else 2048
        out, text = figure(size, bias_fields=8 if size == 2048 else 2,
                           path=None if size == 2048 else BENCH_DIR / "_cache" /
                           "crowding_quick.png")
        print("\n".join(text))
        for r in out:
            print(r)
    else:
        for r in run(quick="--quick" in sys.argv, full="--full" in sys.argv):
            print(r)
