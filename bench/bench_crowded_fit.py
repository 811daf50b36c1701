"""Benchmark: a crowded notebook-style field, completeness and flux scatter vs photutils.

Scene (simulated by crowdphot, issue #4's crowding target): 4000 stars of the notebook's
16-ePSF grid in a 2048 x 2048 image, at least 8 px apart, fluxes 500-20000, Gaussian noise of
sigma 0.5, ``error = sqrt(|data|)``. ``IRAFStarFinder(threshold=6, fwhm=3)`` (crowdphot's) gives
the initial positions; both libraries fit the same image from those same positions with
``fit_shape=5``, ``aperture_radius=5`` (initial fluxes) and ``SourceGrouper(10)``. crowdphot is
also run ungrouped (no photutils counterpart is timed for that).

Quality per run: *completeness* is the fraction of true stars with a fitted source within 1 px
(as the notebook) and within 0.5 px (one-to-one, nearest pairs first: ``match_catalogs``);
*scatter* is the robust (1.4826 MAD) standard deviation of ``flux_fit / flux - 1`` over the
stars matched within 1 px, *bias* its median. photutils runs once (about a minute or more);
crowdphot is the best of 3 after a warm-up. ``quick`` uses 600 stars in 512 x 512.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, grid_models, row  # noqa: E402

FIT_SHAPE = (5, 5)
APERTURE = 5
GROUP_SEP = 10.0
MIN_SEP = 8
FLUX = (500, 20_000)
NOISE = 0.5


def crowded_scene(shape, n_sources, psf, seed=0):
    """``(data, error, truth)`` of the crowded field."""
    from crowdphot import make_noise_image, make_psf_model_image

    clean, truth = make_psf_model_image(shape, psf, n_sources, flux=FLUX,
                                        min_separation=MIN_SEP, seed=seed)
    data = clean + make_noise_image(clean.shape, mean=0, stddev=NOISE, seed=seed)
    return data, np.sqrt(np.abs(data)), truth


def quality(truth, table):
    """Completeness within 1 px and 0.5 px, robust flux scatter and median bias (1 px)."""
    from crowdphot import match_catalogs

    out = {}
    for sep in (1.0, 0.5):
        matched = match_catalogs(truth, table, separation=sep)
        out[f"completeness_{sep:g}"] = len(matched) / len(truth)
        if sep == 1.0:
            rel = np.asarray(matched["flux_fit"] / matched["flux"]) - 1.0
            med = float(np.median(rel))
            out["bias"] = med
            out["scatter"] = 1.4826 * float(np.median(np.abs(rel - med)))
    return out


def _describe(label, q):
    return (f"{label}: completeness {q['completeness_1']:.4f} (1 px) / "
            f"{q['completeness_0.5']:.4f} (0.5 px), flux scatter {100 * q['scatter']:.3f} %, "
            f"bias {100 * q['bias']:+.3f} %")


def run(quick=False):
    from astropy.table import QTable
    from photutils.psf import PSFPhotometry as TheirPhot
    from photutils.psf import SourceGrouper as TheirGrouper

    from crowdphot import IRAFStarFinder, PSFPhotometry, SourceGrouper

    shape, n = ((512, 512), 600) if quick else ((2048, 2048), 4000)
    repeat = 1 if quick else 3
    psf_theirs, psf_ours, grid_note = grid_models()
    data, error, truth = crowded_scene(shape, n, psf_ours)
    found = IRAFStarFinder(threshold=6.0, fwhm=3.0)(data)
    init = QTable({"x": found["x_centroid"], "y": found["y_centroid"]})

    def ours(grouper):
        phot = PSFPhotometry(psf_ours, FIT_SHAPE, grouper=grouper, aperture_radius=APERTURE)

        def call():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return phot(data, error=error, init_params=init)
        return call

    theirs = TheirPhot(psf_theirs, FIT_SHAPE, grouper=TheirGrouper(GROUP_SEP),
                       aperture_radius=APERTURE)

    def call_theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return theirs(data, error=error, init_params=init)

    t_grouped, ours_grouped = best_of(ours(SourceGrouper(GROUP_SEP)), repeat=repeat)
    t_single, ours_single = best_of(ours(None), repeat=repeat)
    if "--ours-only" in sys.argv:  # before/after comparisons of engine changes
        q = quality(truth, ours_grouped)
        return [row(f"crowded fit {len(truth)} stars, grouped(10) [crowdphot only]",
                    float("nan"), t_grouped, _describe("crowdphot grouped(10)", q)),
                row(f"crowded fit {len(truth)} stars, ungrouped [crowdphot only]",
                    float("nan"), t_single, "")]
    t_theirs, theirs_table = best_of(call_theirs, repeat=1, warmup=False)

    q_theirs = quality(truth, theirs_table)
    q_grouped = quality(truth, ours_grouped)
    q_single = quality(truth, ours_single)
    sizes = np.asarray(ours_grouped["group_size"])
    scene = (f"{len(truth)} stars in {shape[1]}x{shape[0]}, min sep {MIN_SEP} px, "
             f"{len(found)} found; groups of >1: {np.count_nonzero(sizes > 1)} stars "
             f"(max {sizes.max()})")
    lines = [scene, _describe("photutils grouped(10)", q_theirs),
             _describe("crowdphot grouped(10)", q_grouped),
             _describe("crowdphot ungrouped", q_single)]
    print("\n".join("   " + line for line in lines), flush=True)

    as_good = (q_grouped["completeness_1"] >= q_theirs["completeness_1"]
               and q_grouped["scatter"] <= q_theirs["scatter"])
    verdict = "at least as good as photutils" if as_good else "WORSE than photutils"
    return [
        row(f"crowded fit {len(truth)} stars, grouped(10), GriddedPSFModel", t_theirs, t_grouped,
            f"{lines[0]}; {lines[1]}; {lines[2]} ({verdict}); {grid_note}"),
        row(f"crowded fit {len(truth)} stars, crowdphot ungrouped vs photutils grouped(10)",
            t_theirs, t_single, lines[3]),
    ]


if __name__ == "__main__":  # pragma: no cover
    quick = "--quick" in sys.argv
    for r in run(quick=quick):
        print(f"{r['name']:<60} photutils {r['photutils_s']:8.3f} s  crowdphot "
              f"{r['crowdphot_s']:8.4f} s  x{r['ratio']:7.1f}  {r['note']}")
