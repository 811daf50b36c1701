"""Benchmark: Background2D (sky and sky-RMS maps), photutils vs crowdphot.

Both libraries build the maps of the same image: a sky of 20 with a gradient, unit noise and
2000 bright stars. One call = construct ``Background2D`` and read ``background`` and
``background_rms`` (what a user needs to subtract the sky and set a threshold). photutils clips
all boxes with astropy's compiled sigma clipping along an axis and then computes NaN-aware
median/mean/std over the padded box array, and resizes with ``scipy.ndimage.zoom``; crowdphot
sorts each box once, clips as index ranges and resizes separably. The note gives the largest
relative difference of the two background maps.

The last rows are issue #10's sky goal at full scale: the notebook scene (500 stars, 2048²,
built-in grid, noise 0.5) plus a sky of 20 (with a gentle gradient, and flat) run through
``crowdphot phot`` with no options; the note gives matched fraction, false detections and the
median flux bias.
"""

from __future__ import annotations

import warnings

import numpy as np

from common import CACHE_DIR, NOTEBOOK, best_of, row


def _scene(shape, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    data = 20.0 + 2e-3 * xx - 1e-3 * yy + rng.normal(0.0, 1.0, shape)
    n = 2000 * shape[0] * shape[1] // 2048**2
    ys = rng.integers(0, shape[0], n)
    xs = rng.integers(0, shape[1], n)
    for dy, dx, f in ((0, 0, 1.0), (0, 1, 0.5), (1, 0, 0.5), (0, -1, 0.5), (-1, 0, 0.5)):
        np.add.at(data, (np.clip(ys + dy, 0, shape[0] - 1), np.clip(xs + dx, 0, shape[1] - 1)),
                  f * rng.uniform(50, 5000, n))
    return data


def _maps(module, data, box, kwargs):
    bkg = module.Background2D(data, box, **kwargs)
    return bkg.background, bkg.background_rms


def _case(name, data, box, make_kwargs, repeat, note=""):
    import photutils.background as pb

    import crowdphot.background as cb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_ours, (b1, r1) = best_of(lambda: _maps(cb, data, box, make_kwargs(cb)), repeat=repeat)
        t_ref, (b2, r2) = best_of(lambda: _maps(pb, data, box, make_kwargs(pb)), repeat=1)
    diff = max(np.max(np.abs(b1 / b2 - 1)), np.max(np.abs(r1 / r2 - 1)))
    return row(name, t_ref, t_ours, f"{note}max rel diff {diff:.1e}")


def sky_goal(kind, *, quick=False):
    """Issue #10's sky goal: the notebook scene + a sky of 20 through ``crowdphot phot``.

    Returns ``(seconds, matched fraction, false detections, median flux bias, catalog)``.
    """
    import time

    from astropy.io import fits
    from astropy.table import QTable

    from crowdphot import (
        jwst_like_psf_grid,
        make_noise_image,
        make_psf_model_image,
        match_catalogs,
    )
    from crowdphot.cli.app import main

    shape = (768, 768) if quick else NOTEBOOK["shape"]
    n = 70 if quick else NOTEBOOK["n_sources"]
    psf = jwst_like_psf_grid()
    stars, truth = make_psf_model_image(shape, psf, n, flux=NOTEBOOK["flux"],
                                        min_separation=NOTEBOOK["min_separation"],
                                        seed=NOTEBOOK["seed"])
    noise = make_noise_image(shape, distribution="gaussian", mean=0.0,
                             stddev=NOTEBOOK["noise_stddev"], seed=NOTEBOOK["noise_seed"])
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky = 20.0 + (1.5 * xx / shape[1] - 1.0 * yy / shape[0] if kind == "gradient" else 0.0)
    header = fits.Header({"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "FILTER": "F200W",
                          "DETECTOR": "NRCA1"})
    CACHE_DIR.mkdir(exist_ok=True)
    image = CACHE_DIR / f"sky_goal_{kind}.fits"
    out = CACHE_DIR / f"sky_goal_{kind}.ecsv"
    fits.PrimaryHDU((stars + noise + sky).astype(np.float32), header=header).writeto(
        image, overwrite=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no WCS" warning
        code = main(["phot", str(image), "-o", str(out), "--no-progress"])
    seconds = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"crowdphot phot failed with code {code}")
    table = QTable.read(out)
    m = match_catalogs(truth, table, separation=1.0)
    rel = np.asarray(m["flux_fit"], float) / np.asarray(m["flux"], float) - 1
    return seconds, len(m) / len(truth), len(table) - len(m), float(np.median(rel)), table


def _sky_goal_rows(quick):
    rows = []
    for kind in ("gradient", "flat"):
        seconds, matched, false, bias, _ = sky_goal(kind, quick=quick)
        label = "sky 20 + gentle gradient" if kind == "gradient" else "flat sky 20"
        rows.append(row(f"crowdphot phot, no options, notebook scene + {label}", float("nan"),
                        seconds, f"matched {100 * matched:.1f} %, {false} false detections, "
                        f"median flux bias {100 * bias:+.4f} % (goal: >= 99 %, <= 2, "
                        "|bias| <= 0.05 %)"))
    return rows


def run(quick=False):
    shape = (1024, 1024) if quick else (2048, 2048)
    data = _scene(shape)
    repeat = 1 if quick else 3
    size = f"{shape[0]}²"
    mask = np.zeros(shape, bool)
    mask[::7, ::5] = True
    rows = [
        _case(f"Background2D box 64, defaults (SExtractor + Std), {size}", data, 64,
              lambda m: {}, repeat),
        _case(f"Background2D box 64, mask, MMM + MADStd, {size}", data, 64,
              lambda m: {"mask": mask, "bkg_estimator": m.MMMBackground(),
                         "bkg_rms_estimator": m.MADStdBackgroundRMS()}, repeat),
        _case(f"Background2D box (50, 70), partial boxes, {size}", data, (50, 70),
              lambda m: {}, repeat),
        _case(f"Background2D box 32, BiweightLocation (generic path), {size}", data, 32,
              lambda m: {"bkg_estimator": m.BiweightLocationBackground()}, repeat),
    ]
    return rows + _sky_goal_rows(quick)


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']}: photutils {r['photutils_s']:.3f} s, crowdphot {r['crowdphot_s']:.3f}"
              f" s, {r['ratio']:.1f}x ({r['note']})")
