"""Benchmark: aperture photometry and local (annulus) background, photutils vs crowdphot.

photutils builds one ApertureMask per position in Python (Cython overlap per aperture) and
LocalBackground calls its estimator (sigma clip + statistic) once per source; crowdphot sums all
apertures in one compiled (or vectorised) pass and clips all annuli in one ``axis=1`` call.
Both run on the same 2048 x 2048 noise image and the same random positions; the note reports
the largest difference between the two results.
"""

from __future__ import annotations

import numpy as np

from common import best_of, row

SHAPE = (2048, 2048)
# (label, class name, radii, method)
APERTURES = [
    ("CircularAperture r=5 exact", "CircularAperture", (5.0,), "exact"),
    ("CircularAperture r=5 center", "CircularAperture", (5.0,), "center"),
    ("CircularAperture r=20 exact", "CircularAperture", (20.0,), "exact"),
    ("CircularAnnulus 5-10 exact", "CircularAnnulus", (5.0, 10.0), "exact"),
]


def _aperture_rows(data, error, pos, repeat):
    import photutils.aperture as pa

    import crowdphot.aperture.core as ca

    rows = []
    for label, cls, radii, method in APERTURES:
        ours = getattr(ca, cls)(pos, *radii)
        ref = getattr(pa, cls)(pos, *radii)
        t_ours, t1 = best_of(lambda a=ours, m=method: ca.aperture_photometry(
            data, a, error=error, method=m), repeat=repeat)
        t_ref, t2 = best_of(lambda a=ref, m=method: pa.aperture_photometry(
            data, a, error=error, method=m), repeat=repeat)
        s1 = np.asarray(t1["aperture_sum"])
        s2 = np.asarray(t2["aperture_sum"])
        diff = np.max(np.abs(s1 - s2) / np.maximum(np.abs(s2), 1.0))
        rows.append(row(f"aperture_photometry {label}", t_ref, t_ours,
                        f"n={len(pos)}, max rel diff {diff:.1e}"))
    return rows


def _background_rows(data, x, y, repeat):
    import photutils.background as pb

    import crowdphot.background.core as cb

    rows = []
    for est in ("MedianBackground", "MMMBackground"):
        ours = cb.LocalBackground(5, 10, bkg_estimator=getattr(cb, est)())
        ref = pb.LocalBackground(5, 10, bkg_estimator=getattr(pb, est)())
        t_ours, b1 = best_of(lambda lb=ours: lb(data, x, y), repeat=repeat)
        t_ref, b2 = best_of(lambda lb=ref: lb(data, x, y), repeat=1)
        rows.append(row(f"LocalBackground(5, 10, {est})", t_ref, t_ours,
                        f"n={x.size}, max abs diff {np.nanmax(np.abs(b1 - b2)):.1e}"))
    return rows


def run(quick=False):
    rng = np.random.default_rng(0)
    data = rng.normal(10.0, 2.0, SHAPE)
    error = np.full(SHAPE, 2.0)
    repeat = 1 if quick else 3
    rows = []
    for n in ([500] if quick else [500, 10_000]):
        x = rng.uniform(0, SHAPE[1] - 1, n)
        y = rng.uniform(0, SHAPE[0] - 1, n)
        rows += _aperture_rows(data, error, np.c_[x, y], repeat)
        rows += _background_rows(data, x, y, repeat)
    return rows


if __name__ == "__main__":
    for r in run(quick=False):
        print(r)
