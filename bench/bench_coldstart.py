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

**Bytecode.** photutils, astropy and scipy are installed with their modules compiled to bytecode
(pip does it at install); crowdphot in a development checkout is not, and with
``PYTHONDONTWRITEBYTECODE=1`` (set on the shared machine) every process recompiles its ~50
modules (~0.15 s of CPU). So the benchmark first compiles crowdphot's bytecode as an install
would (``compileall``, checked-hash ``.pyc`` files, which stay valid while sources change: a
stale one is simply ignored), and one extra row repeats the warm-cache flow with crowdphot's
bytecode ignored, for comparison with entries measured before.

``--imports`` prints instead where the import time goes (``python -X importtime``, self time
summed per package) and which heavy modules each stage loads, for crowdphot and photutils.
"""

from __future__ import annotations

import importlib.util
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
if os.environ.get("CROWDPHOT_BENCH_NO_PYC") == "1":
    # ignore crowdphot's compiled bytecode: its modules are compiled from source, as in a
    # checkout run with PYTHONDONTWRITEBYTECODE=1 (other packages keep their bytecode)
    import _frozen_importlib_external as _fie
    _cache_from_source = _fie.cache_from_source
    def _no_pyc(path, *args, **kwargs):
        if os.sep + "crowdphot" + os.sep in path:
            raise NotImplementedError
        return _cache_from_source(path, *args, **kwargs)
    _fie.cache_from_source = _no_pyc
stages = [set(sys.modules)]
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
if sys.argv[1] == "photutils":
    warnings.simplefilter("ignore")
    from photutils.detection import IRAFStarFinder
    from photutils.psf import GriddedPSFModel, PSFPhotometry, SourceGrouper
else:
    from crowdphot.detection import IRAFStarFinder
    from crowdphot.psf import GriddedPSFModel, PSFPhotometry, SourceGrouper
t1, c1 = time.perf_counter(), time.process_time()
stages.append(set(sys.modules))
psf = GriddedPSFModel.read(sys.argv[2])
t2, c2 = time.perf_counter(), time.process_time()
stages.append(set(sys.modules))
data = np.load(sys.argv[3])
error = np.load(sys.argv[4])
t3, c3 = time.perf_counter(), time.process_time()
phot = PSFPhotometry(psf, (5, 5), finder=IRAFStarFinder(threshold=6.0, fwhm=3.0),
                     grouper=SourceGrouper(35), aperture_radius=5)
res = phot(data, error=error)
t4, c4 = time.perf_counter(), time.process_time()
stages.append(set(sys.modules))
resid = phot.make_residual_image(data)
t5, c5 = time.perf_counter(), time.process_time()
stages.append(set(sys.modules))


def _pkg(name):
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("scipy", "astropy") else parts[0]


new_modules = {}
for label, before, after in zip(("import", "read", "fit", "resid"), stages, stages[1:]):
    new = after - before
    new_modules[label] = {
        "packages": sorted({_pkg(m) for m in new if not m.startswith(("crowdphot", "_"))
                            and m.split(".")[0] not in sys.stdlib_module_names}),
        "crowdphot": sum(m.startswith("crowdphot") for m in new),
    }
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
    "x": np.asarray(res["x_fit"]).tolist(), "new_modules": new_modules,
    "loaded": [m for m in WATCHED if m in sys.modules],
}))
"""

#: Modules the notebook flow should not need (reported when a run loads them).
WATCHED = ("numba", "matplotlib", "scipy.interpolate", "scipy.ndimage", "scipy.spatial",
           "scipy.sparse.csgraph", "scipy.sparse.linalg", "scipy.linalg", "scipy.special",
           "scipy.optimize")
CHILD = CHILD.replace("WATCHED", repr(WATCHED))


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


def compile_bytecode():
    """Compile crowdphot's modules to bytecode as an install does (checked-hash ``.pyc`` files
    under the package's ``__pycache__`` folders; git-ignored, never stale: Python checks the
    source hash at import and ignores a file that no longer matches)."""
    spec = importlib.util.find_spec("crowdphot")
    pkg = Path(spec.origin).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode",
                    "checked-hash", str(pkg)], check=True, timeout=600,
                   stdout=subprocess.DEVNULL)
    return pkg


def _run_child(lib, grid, data_path, error_path, *, cache_dir=None, second=False,
               no_pyc=False, importtime=False):
    env = dict(os.environ)
    env.pop("CROWDPHOT_DISABLE_NUMBA", None)
    env["CROWDPHOT_BENCH_NO_PYC"] = "1" if no_pyc else "0"
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    flags = ["-X", "importtime"] if importtime else []
    out = subprocess.run(
        [sys.executable, *flags, "-c", CHILD, lib, str(grid), str(data_path), str(error_path),
         "1" if second else "0"],
        env=env, capture_output=True, text=True, check=True, timeout=1800,
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    if importtime:
        result["importtime"] = out.stderr
    return result


def _best(runs):
    return min(runs, key=lambda r: r["total"])


def _fmt(r):
    c = r["cpu"]
    return (f"import {r['import']:.2f}, read {r['read']:.2f}, find+fit {r['fit']:.2f}, "
            f"residual {r['resid']:.2f}, total {r['total']:.2f} s (CPU: import {c['import']:.2f}"
            f", find+fit {c['fit']:.2f}, residual {c['resid']:.2f}, total {c['total']:.2f} s)")


def measure(*, repeat=3, cold_repeat=2, bytecode=True):
    """Raw per-case measurements (dicts of seconds), best of the given number of runs.

    ``bytecode``: compile crowdphot's bytecode first (as an install does); the
    ``warm_no_pyc`` case ignores it either way.
    """
    grid, _ = psf_grid_path()
    data_path, error_path = _scene_files()
    if bytecode:
        compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="crowdphot-numba-cache-") as tmp:
        cold = []
        for k in range(cold_repeat):
            cache = Path(tmp) / f"cold{k}"
            cache.mkdir()
            cold.append(_run_child("crowdphot", grid, data_path, error_path, cache_dir=cache))
        warm_cache = Path(tmp) / "cold0"
        warm, no_pyc = [], []
        for _ in range(repeat):  # interleaved, so that a load change hits both cases
            warm.append(_run_child("crowdphot", grid, data_path, error_path,
                                   cache_dir=warm_cache, second=True))
            no_pyc.append(_run_child("crowdphot", grid, data_path, error_path,
                                     cache_dir=warm_cache, no_pyc=True))
    theirs = [_run_child("photutils", grid, data_path, error_path, second=True)
              for _ in range(repeat)]
    return {"cold": _best(cold), "warm": _best(warm), "warm_no_pyc": _best(no_pyc),
            "photutils": _best(theirs)}


def run(quick=False):
    m = measure(repeat=1 if quick else 3, cold_repeat=1 if quick else 2)
    cold, warm, no_pyc, pu = m["cold"], m["warm"], m["warm_no_pyc"], m["photutils"]
    dx = np.nanmax(np.abs(np.asarray(warm["x"]) - np.asarray(pu["x"])))
    loaded = ", ".join(warm["loaded"]) or "none of " + ", ".join(WATCHED)

    def cpu_ratio(key, ours):
        return f"CPU-time ratio {pu['cpu'][key] / ours['cpu'][key]:.1f}x"

    return [
        row("notebook flow, fresh process, empty numba cache (whole flow)", pu["total"],
            cold["total"], f"{cpu_ratio('total', cold)}; crowdphot: {_fmt(cold)}; "
            f"photutils: {_fmt(pu)}"),
        row("notebook flow, fresh process, warm cache (whole flow, import included)",
            pu["total"], warm["total"], f"{cpu_ratio('total', warm)}; crowdphot: {_fmt(warm)}; "
            f"watched modules loaded: {loaded}"),
        row("same, crowdphot's bytecode ignored (modules compiled from source per process)",
            pu["total"], no_pyc["total"], f"{cpu_ratio('total', no_pyc)}; crowdphot: "
            f"{_fmt(no_pyc)}"),
        row("first find+group+fit call in a fresh process (warm cache)", pu["fit"],
            warm["fit"], f"{cpu_ratio('fit', warm)}; n={warm['n']}, max |x_fit - photutils| "
            f"{dx:.1e} px"),
        row("second find+group+fit call, same process (steady state)", pu["second_fit"],
            warm["second_fit"], "for reference"),
        row("first make_residual_image in a fresh process", pu["resid"], warm["resid"],
            cpu_ratio("resid", warm)),
    ]


def _importtime_by_package(text):
    """Self time of ``python -X importtime`` lines summed per package (seconds).

    Modules imported through ``importlib.import_module`` (crowdphot's lazy ``__init__``
    dictionaries) have no line of their own: their execution time is missing here, the
    modules they import are counted.
    """
    total = {}
    for ln in text.splitlines():
        if not ln.startswith("import time:") or "self [us]" in ln:
            continue
        _, self_us, _, name = ln.replace("|", ":").split(":")
        parts = name.strip().split(".")
        key = ".".join(parts[:2]) if parts[0] in ("scipy", "astropy") else parts[0]
        total[key] = total.get(key, 0.0) + int(self_us) / 1e6
    return total


def imports_report(*, top=14):
    """Where the import time goes, and what each stage of the flow loads (printed)."""
    grid, _ = psf_grid_path()
    data_path, error_path = _scene_files()
    compile_bytecode()
    for lib in ("crowdphot", "photutils"):
        r = _run_child(lib, grid, data_path, error_path, importtime=True)
        by_pkg = sorted(_importtime_by_package(r["importtime"]).items(), key=lambda kv: -kv[1])
        print(f"== {lib}: stages (CPU s) import {r['cpu']['import']:.2f}, read "
              f"{r['cpu']['read']:.2f}, find+fit {r['cpu']['fit']:.2f}, residual "
              f"{r['cpu']['resid']:.2f}; watched modules loaded: {r['loaded']}")
        print("   importtime self, per package (s, under -X importtime): " + ", ".join(
            f"{k} {v:.3f}" for k, v in by_pkg[:top]))
        for stage, new in r["new_modules"].items():
            print(f"   {stage}: +{new['crowdphot']} crowdphot modules; other packages: "
                  f"{', '.join(new['packages']) or '-'}")


if __name__ == "__main__":
    if "--imports" in sys.argv:
        imports_report()
    else:
        for r in run(quick="--quick" in sys.argv):
            print(f"{r['name']}: photutils {r['photutils_s']:.3f} s, "
                  f"crowdphot {r['crowdphot_s']:.3f} s, {r['ratio']:.1f}x  [{r['note']}]")
