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
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import row  # noqa: E402

FWHM = 4.0
FIT_SHAPE = 7
APERTURE = 4
NOISE = 2.0
DENSITY = 10_000 / 2048**2
FLUX = (200.0, 20_000.0)  # 5 magnitudes
MAXITERS = 3


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


def _run(data, mode, *, psf_module, finder_module):
    """The same iterative configuration on either library (they share the API)."""
    phot = psf_module.IterativePSFPhotometry(
        psf_module.CircularGaussianPRF(fwhm=FWHM), FIT_SHAPE,
        finder_module.DAOStarFinder(5 * NOISE, FWHM),
        grouper=psf_module.SourceGrouper(3 * FWHM), aperture_radius=APERTURE, maxiters=MAXITERS,
        mode=mode, group_warning_threshold=10**9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return phot(data)


def _run_photutils(data, mode="new"):
    import photutils.detection as pdet
    import photutils.psf as ppsf

    return _run(data, mode, psf_module=ppsf, finder_module=pdet)


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


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv, full="--full" in sys.argv):
        print(r)
