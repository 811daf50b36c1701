"""Benchmark: the notebook's whole PSFPhotometry call and its residual image, side by side.

photutils and crowdphot run the notebook's configuration on the same image (500 stars from the
16-ePSF grid, 2048 x 2048, sigma 0.5 noise, ``error = sqrt(|data|)``): ``IRAFStarFinder(6, 3)``,
``fit_shape=(5, 5)``, ``aperture_radius=5``, ungrouped and grouped at 35 px, then
``make_residual_image``. Each library uses its own finder, grouper and fitter; the note reports
the number of sources and the largest fitted-position / relative-flux difference between the
two catalogs (matched row by row: both finders return the same stars in the same order).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, notebook_scene, row  # noqa: E402


def _compare_tables(ours, theirs):
    if len(ours) != len(theirs):
        return f"source counts differ: {len(ours)} vs {len(theirs)}"
    dx = np.nanmax(np.hypot(np.asarray(ours["x_fit"]) - np.asarray(theirs["x_fit"]),
                            np.asarray(ours["y_fit"]) - np.asarray(theirs["y_fit"])))
    df = np.nanmax(np.abs(np.asarray(ours["flux_fit"]) / np.asarray(theirs["flux_fit"]) - 1))
    return f"{len(ours)} stars; max |dpos| {dx:.1e} px, max |dflux|/flux {df:.1e}"


def run(quick=False):
    import photutils.detection as pdet
    import photutils.psf as ppsf

    import crowdphot as cp

    shape = (512, 512) if quick else (2048, 2048)
    n = 40 if quick else 500
    scene = notebook_scene(shape=shape, n_sources=n)
    data, error = scene["data"], scene["error"]
    psf_pu, psf_cp = scene["psf_photutils"], scene["psf_crowdphot"]
    rows = []
    for sep in (None, 35):
        label = "grouped at 35 px" if sep else "ungrouped"
        pu = ppsf.PSFPhotometry(psf_pu, (5, 5), finder=pdet.IRAFStarFinder(6.0, 3.0),
                                grouper=ppsf.SourceGrouper(sep) if sep else None,
                                aperture_radius=5)
        ours = cp.PSFPhotometry(psf_cp, (5, 5), finder=cp.IRAFStarFinder(6.0, 3.0),
                                grouper=cp.SourceGrouper(sep) if sep else None,
                                aperture_radius=5)
        t_pu, tab_pu = best_of(lambda pu=pu: pu(data, error=error), repeat=1, warmup=False)
        t_cp, tab_cp = best_of(lambda ours=ours: ours(data, error=error), repeat=3)
        rows.append(row(f"PSFPhotometry find+fit, notebook scene, {label}", t_pu, t_cp,
                        _compare_tables(tab_cp, tab_pu)))
        if sep is None:
            t_pu_r, res_pu = best_of(lambda pu=pu: pu.make_residual_image(data), repeat=1,
                                     warmup=False)
            t_cp_r, res_cp = best_of(lambda ours=ours: ours.make_residual_image(data),
                                     repeat=3)
            peak = float(np.max(scene["clean"]))
            diff = float(np.max(np.abs(np.asarray(res_cp) - np.asarray(res_pu)))) / peak
            rows.append(row(f"make_residual_image, {n} stars, 101x101 stamps", t_pu_r, t_cp_r,
                            f"max |diff| = {diff:.1e} of peak"))
    return rows


if __name__ == "__main__":  # pragma: no cover
    for r in run(quick="--quick" in sys.argv):
        print(r)
