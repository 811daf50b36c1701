"""Failed group members in the default grouped fit, and the cost of the blend test.

A member that leaves its fit stamp (or goes absurd) is dropped from its group's model and the
group refitted without it (``crowdphot.psf._failed``). This script measures, on issue #10's
scenes (Gaussian PRF FWHM 3, noise 5, inputs = truth + 0.3 px, ``SourceGrouper(6)``):

* the effect: flags-0 stars with |flux pull| > 4 and > 5 with the blend test off, before
  (the failed member kept in its group's model: ``_fastpath._without_failed`` bypassed, the
  previous behaviour) and after;
* the cost: CPU of the grouped call before / after, with and without ``blend_test``.

No photutils column: photutils takes 197 s on the 300-star faint scene (its runaway fits).

Usage: ``python bench/bench_failed.py [--quick]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from astropy.table import QTable

import crowdphot.psf._fastpath as fastpath
from crowdphot import CircularGaussianPRF, PSFPhotometry, SourceGrouper, make_model_image

PSF = CircularGaussianPRF(fwhm=3.0)
_DROP = fastpath._without_failed


def _scene(seed, n, side, flux):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-1, side, n), rng.uniform(-1, side, n)
    f = rng.uniform(*flux, n)
    img = make_model_image((side, side), PSF, QTable({"x_0": x, "y_0": y, "flux": f}),
                           model_shape=(15, 15)) + rng.normal(0, 5, (side, side))
    init = QTable({"x": x + rng.normal(0, .3, n), "y": y + rng.normal(0, .3, n)})
    return img, init, f


def _fit(img, init, *, drop, blend_test):
    fastpath._without_failed = _DROP if drop else (lambda *a, **k: (a[6], None))
    try:
        phot = PSFPhotometry(PSF, (5, 5), aperture_radius=3, grouper=SourceGrouper(6),
                             blend_test=blend_test, group_warning_threshold=10**6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.process_time()
            tab = phot(img, init_params=init, error=np.full(img.shape, 5.0))
            return tab, time.process_time() - t0
    finally:
        fastpath._without_failed = _DROP


def effect(seeds, flux):
    """Lines: flags-0 stars with |pull| > 4 / > 5 before and after (blend test off)."""
    out = []
    for drop in (False, True):
        good = over4 = over5 = merged = 0
        for s in seeds:
            img, init, f = _scene(s, 300, 128, flux)
            tab, _ = _fit(img, init, drop=drop, blend_test=False)
            fl = np.asarray(tab["flags"])
            p = (np.asarray(tab["flux_fit"]) - f) / np.asarray(tab["flux_err"])
            g = (fl == 0) & np.isfinite(p)
            good += g.sum()
            over4 += np.sum(np.abs(p[g]) > 4)
            over5 += np.sum(np.abs(p[g]) > 5)
            merged += np.sum(fl & 16384 > 0)
        out.append(f"flux {flux} {'after ' if drop else 'before'}: flags-0 {good}, |pull| > 4: "
                   f"{over4}, > 5: {over5}, merged {merged} ({len(seeds)} seeds, blend test "
                   "off)")
    return out


def cost(repeat):
    """Rows: CPU of the grouped call before / after, blend test off and on (best of repeat)."""
    rows = []
    for name, args in (("faint 300 on 128^2", (1, 300, 128, (20, 60))),
                       ("3000 on 512^2", (5, 3000, 512, (30, 300)))):
        img, init, _ = _scene(*args)
        t = {(drop, bt): min(_fit(img, init, drop=drop, blend_test=bt)[1]
                             for _ in range(repeat))
             for drop in (False, True) for bt in (False, True)}
        for bt in (False, True):
            rows.append({"name": f"grouped fit, failed members dropped, {name}, "
                                 f"blend_test={bt}",
                         "photutils_s": None, "crowdphot_s": t[True, bt], "ratio": None,
                         "note": f"CPU; before (kept in the model): {t[False, bt]:.3f} s, "
                                 f"x{t[True, bt] / t[False, bt]:.2f}"})
        rows.append({"name": f"blend test share, {name}", "photutils_s": None,
                     "crowdphot_s": t[True, True] - t[True, False], "ratio": None,
                     "note": f"{(t[True, True] - t[True, False]) / t[True, True]:.0%} of the "
                             "call (blend_test=False saves it)"})
    return rows


def run(quick=False):
    seeds = range(1, 3) if quick else range(1, 9)
    lines = effect(seeds, (30, 300)) + effect(seeds, (20, 60))
    rows = cost(1 if quick else 3)
    rows.append({"name": "effect (flags-0 pulls, before -> after)", "photutils_s": None,
                 "crowdphot_s": None, "ratio": None, "note": "; ".join(lines)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    for row in run(quick=args.quick):
        t = "" if row["crowdphot_s"] is None else f"{row['crowdphot_s']:.3f} s  "
        print(f"{row['name']}: {t}{row['note']}")


if __name__ == "__main__":
    main()
