"""Benchmark: star finders, photutils IRAFStarFinder / DAOStarFinder vs crowdphot's.

Scene as in the PSF-photometry notebook but with a Gaussian PRF: 500 stars (fwhm 1.8 px, fluxes
500-20000) on 2048 x 2048 pixels plus Gaussian noise of sigma 0.5, built once with photutils'
``make_psf_model_image``. Both finders run on the same array in the same process; the note says
whether the two tables agree (same rows; every column to 1e-6 relative).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, row  # noqa: E402


def make_scene(shape=(2048, 2048), n_sources=500, seed=0):
    """Noisy image of ``n_sources`` Gaussian-PRF stars (photutils' simulation tools)."""
    from photutils.datasets import make_noise_image
    from photutils.psf import CircularGaussianPRF, make_psf_model_image

    model = CircularGaussianPRF(fwhm=1.8)
    data, _ = make_psf_model_image(
        shape, model, n_sources, model_shape=(11, 11), flux=(500, 20_000),
        min_separation=10, seed=seed,
    )  # fmt: skip
    return data + make_noise_image(shape, distribution="gaussian", mean=0, stddev=0.5, seed=seed)


def compare(ours, theirs):
    """Max relative difference over all columns, or a reason the tables cannot be compared."""
    if ours is None or theirs is None:
        return "one finder returned None"
    if ours.colnames != theirs.colnames or len(ours) != len(theirs):
        return f"DIFFER: {len(ours)} vs {len(theirs)} rows"
    worst = 0.0
    for name in theirs.colnames:
        a = np.asarray(getattr(ours[name], "value", ours[name]), float)
        b = np.asarray(getattr(theirs[name], "value", theirs[name]), float)
        if name == "orientation":
            diff = np.abs((a - b + 180.0) % 360.0 - 180.0)
        else:
            diff = np.abs(a - b)
        worst = max(worst, float(np.max(diff / np.maximum(1.0, np.abs(b)), initial=0.0)))
    return f"agree to {worst:.1e}" if worst <= 1e-6 else f"DIFFER by {worst:.1e}"


CASES = [
    ("IRAFStarFinder", {"threshold": 6.0, "fwhm": 3.0}, "notebook arguments"),
    ("DAOStarFinder", {"threshold": 6.0, "fwhm": 3.0}, "notebook arguments"),
    ("DAOStarFinder", {"threshold": 6.0, "fwhm": 3.0, "ratio": 0.7, "theta": 30.0}, "elliptical"),
    ("IRAFStarFinder", {"threshold": 6.0, "fwhm": 3.0, "min_separation": 0}, "kernel footprint"),
]


def run(quick=False):
    """Time the finders; returns rows ``{name, photutils_s, crowdphot_s, ratio, note}``."""
    import photutils.detection as pd

    import crowdphot.detection.finders as cd

    shape, n = ((1024, 1024), 125) if quick else ((2048, 2048), 500)
    repeat = 1 if quick else 5
    data = make_scene(shape, n)
    size = f"{shape[0]}x{shape[1]}, {n} stars"
    rows = []
    for name, kwargs, what in CASES:
        theirs_cls, ours_cls = getattr(pd, name), getattr(cd, name)
        theirs_s, theirs = best_of(lambda cls=theirs_cls, kw=kwargs: cls(**kw)(data), repeat=repeat)
        ours_s, ours = best_of(lambda cls=ours_cls, kw=kwargs: cls(**kw)(data), repeat=repeat)
        found = 0 if ours is None else len(ours)
        note = f"{size}, {what}, {found} found, tables {compare(ours, theirs)}"
        rows.append(row(f"{name} ({what})", theirs_s, ours_s, note))

    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']:42s} {r['photutils_s']:8.4f} {r['crowdphot_s']:8.4f} "
              f"{r['ratio']:6.1f}x  {r['note']}")  # fmt: skip
