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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CROWDED, best_of, crowded_inputs, grid_models, quietly, row  # noqa: E402
from common import crowded_quality as quality  # noqa: E402

FIT_SHAPE = CROWDED["fit_shape"]
APERTURE = CROWDED["aperture"]
GROUP_SEP = CROWDED["group_sep"]
MIN_SEP = CROWDED["min_separation"]


def _describe(label, q):
    return (f"{label}: completeness {q['completeness_1']:.4f} (1 px) / "
            f"{q['completeness_0.5']:.4f} (0.5 px), flux scatter {100 * q['scatter']:.3f} %, "
            f"bias {100 * q['bias']:+.3f} %")


def run(quick=False):
    from photutils.psf import PSFPhotometry as TheirPhot
    from photutils.psf import SourceGrouper as TheirGrouper

    from crowdphot import PSFPhotometry, SourceGrouper

    repeat = 1 if quick else 3
    psf_theirs, psf_ours, grid_note = grid_models()
    data, error, truth, found, init = crowded_inputs(psf_ours, quick)
    shape = data.shape

    def ours(grouper):
        phot = PSFPhotometry(psf_ours, FIT_SHAPE, grouper=grouper, aperture_radius=APERTURE)
        return quietly(phot, data, error=error, init_params=init)

    theirs = TheirPhot(psf_theirs, FIT_SHAPE, grouper=TheirGrouper(GROUP_SEP),
                       aperture_radius=APERTURE)
    call_theirs = quietly(theirs, data, error=error, init_params=init)

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
