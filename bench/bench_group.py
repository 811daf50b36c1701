"""Benchmark: source grouping, photutils SourceGrouper vs crowdphot SourceGrouper.

photutils groups with ``scipy.cluster.hierarchy.fclusterdata``, which builds the full
n(n-1)/2 distance matrix (O(n^2) time and memory); crowdphot uses a compiled cell-grid
neighbour search and a union-find pass (``crowdphot.core.kernels.pairs.fof_labels``). Random
positions keep the notebook's density (500 stars on 2048 x 2048 pixels) and its 35 px linking
length at every size.
"""

from __future__ import annotations

import time

import numpy as np

MIN_SEPARATION = 35.0
NOTEBOOK_DENSITY = 500 / 2048**2  # stars per square pixel
# Above this n photutils' pairwise-distance matrix is too slow (> 60 s) and too large to run.
PHOTUTILS_MAX_N = 10_000


def _best_time(func, repeat):
    best, result = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _random_positions(n, seed=0):
    side = np.sqrt(n / NOTEBOOK_DENSITY)
    rng = np.random.default_rng(seed)
    return rng.uniform(0, side, n), rng.uniform(0, side, n)


def _notebook_positions():
    from photutils.datasets import make_model_params

    params = make_model_params((2048, 2048), 500, min_separation=25, border_size=50, seed=0,
                               flux=(500, 20000))
    return np.asarray(params["x_0"], float), np.asarray(params["y_0"], float)


def _row(name, x, y, *, repeat, with_photutils):
    from crowdphot.psf.groupers import SourceGrouper

    ours_s, ours = _best_time(lambda: SourceGrouper(MIN_SEPARATION)(x, y), repeat)
    note = f"n={x.size}, {int(ours.max())} groups"
    photutils_s = ratio = None
    if with_photutils:
        from photutils.psf import SourceGrouper as PhotutilsGrouper

        photutils_s, theirs = _best_time(
            lambda: PhotutilsGrouper(MIN_SEPARATION)(x, y), max(1, repeat // 3))
        ratio = photutils_s / ours_s
        note += ", ids identical" if np.array_equal(ours, theirs) else ", IDS DIFFER"
    else:
        mem_gb = x.size * (x.size - 1) / 2 * 8 / 1e9
        note += (f", photutils skipped: its distance matrix would need {mem_gb:.0f} GB"
                 if x.size > PHOTUTILS_MAX_N else ", crowdphot only")
    return {"name": name, "photutils_s": photutils_s, "crowdphot_s": ours_s, "ratio": ratio,
            "note": note}


def run(quick=False):
    """Time both groupers; return rows ``{name, photutils_s, crowdphot_s, ratio, note}``."""
    rows = []
    x, y = _notebook_positions()
    rows.append(_row("group: notebook 500 true positions, 35 px", x, y, repeat=5 if quick else 20,
                     with_photutils=True))
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    for n in sizes:
        x, y = _random_positions(n)
        rows.append(_row(f"group: {n:,} random positions, 35 px", x, y,
                         repeat=1 if n >= 10**6 or quick else 3,
                         with_photutils=n <= PHOTUTILS_MAX_N))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
