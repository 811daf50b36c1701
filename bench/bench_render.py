"""Rendering benchmark: make_psf_model_image on the notebook scene, crowdphot vs photutils.

Rows:

* the notebook scene: 500 stars, 2048 x 2048, the 16-ePSF grid (photutils ~13 s); the two images
  must agree to 1e-6 of the peak and the truth tables exactly;
* 500 stars of an analytic model (CircularGaussianPRF, default bounding-box stamps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import NOTEBOOK, best_of, grid_models, row  # noqa: E402


def _check_same(ours, theirs, rtol_peak, what):
    (img_o, tab_o), (img_p, tab_p) = ours, theirs
    for name in tab_p.colnames:
        if not np.array_equal(np.asarray(tab_o[name]), np.asarray(tab_p[name])):
            raise AssertionError(f"{what}: truth table column {name!r} differs from photutils")
    peak = np.abs(img_p).max()
    err = np.abs(img_o - img_p).max()
    if not err <= rtol_peak * peak:
        raise AssertionError(
            f"{what}: images differ by {err:.3g} = {err / peak:.3g} of the peak "
            f"(allowed {rtol_peak:g})"
        )
    return err / peak


def _scene(quick):
    if quick:
        return (512, 512), 40
    return NOTEBOOK["shape"], NOTEBOOK["n_sources"]


def bench_grid(quick=False):
    import photutils.psf as ppsf

    import crowdphot

    shape, n = _scene(quick)
    phot_model, our_model, note = grid_models()
    kw = {"flux": NOTEBOOK["flux"], "min_separation": NOTEBOOK["min_separation"],
          "seed": NOTEBOOK["seed"]}
    t_p, theirs = best_of(lambda: ppsf.make_psf_model_image(shape, phot_model, n, **kw),
                          repeat=1, warmup=False)
    t_c, ours = best_of(lambda: crowdphot.make_psf_model_image(shape, our_model, n, **kw),
                        repeat=1 if quick else 3)
    rel = _check_same(ours, theirs, 1e-6, "gridded render")
    name = f"make_psf_model_image grid ({n} stars, {shape[0]}x{shape[1]}, 16 ePSFs)"
    return row(name, t_p, t_c, f"{note}; max |diff| = {rel:.1e} of peak")


def bench_analytic(quick=False):
    import photutils.psf as ppsf

    import crowdphot

    shape, n = _scene(quick)
    kw = {"flux": NOTEBOOK["flux"], "min_separation": 10, "seed": 1}
    phot_model = ppsf.CircularGaussianPRF(fwhm=3.0)
    our_model = crowdphot.CircularGaussianPRF(fwhm=3.0)
    t_p, theirs = best_of(lambda: ppsf.make_psf_model_image(shape, phot_model, n, **kw),
                          repeat=1 if quick else 2, warmup=False)
    t_c, ours = best_of(lambda: crowdphot.make_psf_model_image(shape, our_model, n, **kw),
                        repeat=1 if quick else 5)
    rel = _check_same(ours, theirs, 1e-10, "analytic render")
    stamp = our_model.default_stamp_shape
    name = f"make_psf_model_image CircularGaussianPRF ({n} stars, {shape[0]}x{shape[1]})"
    return row(name, t_p, t_c, f"fwhm=3, {stamp[0]}x{stamp[1]} stamps; max |diff| = "
                               f"{rel:.1e} of peak")


def run(quick=False):
    """Benchmark rows (see module docstring)."""
    return [bench_grid(quick), bench_analytic(quick)]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
