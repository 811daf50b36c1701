"""Benchmark: cold start of the notebook flow, crowdphot vs photutils, in fresh processes.

The flow is the PSF-photometry notebook's: import the package, read the 16-ePSF grid file
(``GriddedPSFModel.read``), ``PSFPhotometry(psf, (5, 5), finder=IRAFStarFinder(6.0, 3.0),
grouper=SourceGrouper(35), aperture_radius=5)(data, error=error)`` on the 2048² 500-star scene,
then ``make_residual_image(data)``. Each run is a new Python process (the scene is loaded from a
``.npy`` file written once, so building it is not timed). Three cases:

* **empty cache**: crowdphot with ``NUMBA_CACHE_DIR`` pointed at an empty folder, as after a
  fresh install (anything still compiled by numba at first use is paid here);
* **warm cache**: a new process after the previous runs filled that cache;
* photutils: a new process (it has no compile step).

Reported per case: import, grid read, the first find+group+fit call, the residual image and the
whole flow (wall clock, best of ``repeat`` runs; the CPU time of the chosen run in the note), and
for reference the second, warm find+fit call in the same process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE_DIR, notebook_scene, psf_grid_path, row  # noqa: E402

CHILD = r"""
import json, os, sys, time, warnings
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
if sys.argv[1] == "photutils":
    warnings.simplefilter("ignore")
    from photutils.detection import IRAFStarFinder
    from photutils.psf import GriddedPSFModel, PSFPhotometry, SourceGrouper
else:
    from crowdphot.detection import IRAFStarFinder
    from crowdphot.psf import GriddedPSFModel, PSFPhotometry, SourceGrouper
    if os.environ.get("CROWDPHOT_BENCH_ENGINE_NATIVE") == "1":
        # demonstration only: the engine's numba kernel swapped for the compiled one
        import crowdphot.core.fit.lm as lm
        from crowdphot.core.kernels.normal import normal_blocks_add
        if hasattr(lm, "_normal_blocks_nb"):
            lm._normal_blocks_nb = normal_blocks_add
t1, c1 = time.perf_counter(), time.process_time()
psf = GriddedPSFModel.read(sys.argv[2])
t2, c2 = time.perf_counter(), time.process_time()
data = np.load(sys.argv[3])
error = np.load(sys.argv[4])
t3, c3 = time.perf_counter(), time.process_time()
phot = PSFPhotometry(psf, (5, 5), finder=IRAFStarFinder(threshold=6.0, fwhm=3.0),
                     grouper=SourceGrouper(35), aperture_radius=5)
res = phot(data, error=error)
t4, c4 = time.perf_counter(), time.process_time()
resid = phot.make_residual_image(data)
t5, c5 = time.perf_counter(), time.process_time()
cpu = {"import": c1 - c0, "read": c2 - c1, "fit": c4 - c3, "resid": c5 - c4,
       "total": (c5 - c0) - (c3 - c2)}
second = None
if sys.argv[5] == "1":
    s0 = time.perf_counter()
    phot(data, error=error)
    second = time.perf_counter() - s0
print("RESULT " + json.dumps({
    "import": t1 - t0, "read": t2 - t1, "fit": t4 - t3, "resid": t5 - t4,
    "total": (t5 - t0) - (t3 - t2), "cpu": cpu, "second_fit": second, "n": len(res),
    "x": np.asarray(res["x_fit"]).tolist(), "numba": "numba" in sys.modules,
    "scipy_interpolate": "scipy.interpolate" in sys.modules,
    "matplotlib": "matplotlib" in sys.modules,
}))
"""


def _scene_files():
    """The notebook scene's data and error arrays as ``.npy`` files (written once)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    data_path = CACHE_DIR / "coldstart_data.npy"
    error_path = CACHE_DIR / "coldstart_error.npy"
    if not (data_path.exists() and error_path.exists()):
        scene = notebook_scene()
        np.save(data_path, np.asarray(scene["data"]))
        np.save(error_path, np.asarray(scene["error"]))
    return data_path, error_path


def _run_child(lib, grid, data_path, error_path, *, cache_dir=None, second=False,
               engine_native=False):
    env = dict(os.environ)
    env.pop("CROWDPHOT_DISABLE_NUMBA", None)
    env["CROWDPHOT_BENCH_ENGINE_NATIVE"] = "1" if engine_native else "0"
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, lib, str(grid), str(data_path), str(error_path),
         "1" if second else "0"],
        env=env, capture_output=True, text=True, check=True, timeout=1800,
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _best(runs):
    return min(runs, key=lambda r: r["total"])


def _fmt(r):
    c = r["cpu"]
    return (f"import {r['import']:.2f}, read {r['read']:.2f}, find+fit {r['fit']:.2f}, "
            f"residual {r['resid']:.2f}, total {r['total']:.2f} s (CPU: import {c['import']:.2f}"
            f", find+fit {c['fit']:.2f}, residual {c['resid']:.2f}, total {c['total']:.2f} s)")


def measure(*, repeat=3, cold_repeat=2, engine_native=False):
    """Raw per-case measurements (dicts of seconds), best of the given number of runs."""
    grid, _ = psf_grid_path()
    data_path, error_path = _scene_files()
    with tempfile.TemporaryDirectory(prefix="crowdphot-numba-cache-") as tmp:
        cold = []
        for k in range(cold_repeat):
            cache = Path(tmp) / f"cold{k}"
            cache.mkdir()
            cold.append(_run_child("crowdphot", grid, data_path, error_path, cache_dir=cache,
                                   engine_native=engine_native))
        warm = [_run_child("crowdphot", grid, data_path, error_path,
                           cache_dir=Path(tmp) / "cold0", second=True,
                           engine_native=engine_native) for _ in range(repeat)]
    theirs = [_run_child("photutils", grid, data_path, error_path, second=True)
              for _ in range(repeat)]
    return {"cold": _best(cold), "warm": _best(warm), "photutils": _best(theirs)}


def run(quick=False, engine_native=False):
    m = measure(repeat=1 if quick else 3, cold_repeat=1 if quick else 2,
                engine_native=engine_native)
    cold, warm, pu = m["cold"], m["warm"], m["photutils"]
    dx = np.nanmax(np.abs(np.asarray(warm["x"]) - np.asarray(pu["x"])))
    loaded = ", ".join(k for k in ("numba", "scipy_interpolate", "matplotlib") if warm[k])
    tag = " [engine's numba kernel swapped, demonstration]" if engine_native else ""

    def cpu_ratio(key, ours):
        return f"CPU-time ratio {pu['cpu'][key] / ours['cpu'][key]:.1f}x"

    return [
        row("notebook flow, fresh process, empty numba cache (whole flow)" + tag, pu["total"],
            cold["total"], f"{cpu_ratio('total', cold)}; crowdphot: {_fmt(cold)}; "
            f"photutils: {_fmt(pu)}"),
        row("notebook flow, fresh process, warm cache (whole flow, import included)" + tag,
            pu["total"], warm["total"], f"{cpu_ratio('total', warm)}; crowdphot: {_fmt(warm)}; "
            f"modules loaded: {loaded or 'no numba, scipy.interpolate or matplotlib'}"),
        row("first find+group+fit call in a fresh process (warm cache)" + tag, pu["fit"],
            warm["fit"], f"{cpu_ratio('fit', warm)}; n={warm['n']}, max |x_fit - photutils| "
            f"{dx:.1e} px"),
        row("second find+group+fit call, same process (steady state)" + tag, pu["second_fit"],
            warm["second_fit"], "for reference"),
        row("first make_residual_image in a fresh process" + tag, pu["resid"], warm["resid"],
            cpu_ratio("resid", warm)),
    ]


if __name__ == "__main__":
    # --engine-native: demonstration with core/fit's numba kernel swapped for the compiled one
    for r in run(quick="--quick" in sys.argv, engine_native="--engine-native" in sys.argv):
        print(f"{r['name']}: photutils {r['photutils_s']:.3f} s, "
              f"crowdphot {r['crowdphot_s']:.3f} s, {r['ratio']:.1f}x  [{r['note']}]")
