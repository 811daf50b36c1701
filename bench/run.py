"""Run the crowdphot-vs-photutils benchmarks.

Usage::

    python bench/run.py [--quick] [--json PATH] [names ...]

Discovers ``bench/bench_*.py``; each module's ``run(quick=False) -> list[dict]`` returns rows with
``name, photutils_s, crowdphot_s, ratio (photutils_s / crowdphot_s), note``. ``names`` select
modules by substring (``render`` runs ``bench_render.py``). Prints a plain table and a markdown
table for ``bench/RESULTS.md`` and writes everything, with the machine description, to
``bench/_cache/last_results.json``. A module that raises is reported as a failed row and makes
the exit status 1; the other modules still run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import CACHE_DIR, machine_info  # noqa: E402

ROW_KEYS = ("name", "photutils_s", "crowdphot_s", "ratio", "note")


def discover(names=()):
    """Sorted ``bench_*.py`` paths, filtered by substrings of their topic names."""
    paths = sorted(BENCH_DIR.glob("bench_*.py"))
    if names:
        paths = [p for p in paths if any(n in p.stem for n in names)]
    return paths


def load(path):
    spec = importlib.util.spec_from_file_location(f"crowdphot_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normalise(rows, module):
    """Check a module's rows and fill in a missing ratio."""
    if not isinstance(rows, list):
        raise TypeError(f"{module}.run() must return a list of dicts, got {type(rows).__name__}")
    out = []
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r and k != "ratio"]
        if missing:
            raise ValueError(f"{module}: row {r!r} lacks keys {missing}")
        r = dict(r)
        if "ratio" not in r or r["ratio"] is None:
            # crowdphot-only rows (photutils cannot run that size) have no ratio
            r["ratio"] = (r["photutils_s"] / r["crowdphot_s"]
                          if r["crowdphot_s"] and r["photutils_s"] is not None
                          else float("nan"))
        r["module"] = module
        out.append(r)
    return out


def _fmt_s(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _fmt_ratio(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.1f}x" if v < 100 else f"{v:.0f}x"


def plain_table(rows):
    header = ("name", "photutils s", "crowdphot s", "ratio", "note")
    body = [(r["name"], _fmt_s(r["photutils_s"]), _fmt_s(r["crowdphot_s"]),
             _fmt_ratio(r["ratio"]), r["note"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    widths[-1] = 0  # the note runs on
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * max(w, 4) for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(b, widths, strict=True)).rstrip()
              for b in body]
    return "\n".join(lines)


def markdown_table(rows, info, quick):
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### {when}{' (quick)' if quick else ''}",
        "",
        f"Machine: {info['cpu']}, {info['cores_usable']} usable cores; numpy {info['numpy']}, "
        f"numba {info['numba']}, photutils {info['photutils']}, crowdphot {info['crowdphot']}"
        + (" (numba disabled)" if info.get("numba_disabled") else ""),
        "",
        "| benchmark | photutils (s) | crowdphot (s) | speed-up | note |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        note = str(r["note"]).replace("|", "\\|")
        lines.append(f"| {r['name']} | {_fmt_s(r['photutils_s'])} | {_fmt_s(r['crowdphot_s'])} "
                     f"| {_fmt_ratio(r['ratio'])} | {note} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only modules whose name contains these")
    parser.add_argument("--quick", action="store_true", help="small sizes, single repeats")
    parser.add_argument("--json", type=Path, default=CACHE_DIR / "last_results.json",
                        help="where to write the results (default bench/_cache/...)")
    args = parser.parse_args(argv)

    paths = discover(args.names)
    if not paths:
        parser.error(f"no bench_*.py module matches {args.names}")
    info = machine_info()
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)

    rows, failures = [], []
    for path in paths:
        t0 = time.perf_counter()
        print(f"== {path.stem} ...", flush=True)
        try:
            module_rows = normalise(load(path).run(quick=args.quick), path.stem)
        except Exception as exc:  # report and go on with the other modules
            traceback.print_exc()
            failures.append(path.stem)
            module_rows = [{"name": path.stem, "photutils_s": float("nan"),
                            "crowdphot_s": float("nan"), "ratio": float("nan"),
                            "note": f"FAILED: {type(exc).__name__}: {exc}",
                            "module": path.stem}]
        rows += module_rows
        print(f"   {len(module_rows)} row(s) in {time.perf_counter() - t0:.1f} s", flush=True)

    print()
    print(plain_table(rows))
    print()
    print(markdown_table(rows, info, args.quick))

    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": info,
        "failed_modules": failures,
        "results": rows,
    }
    args.json.write_text(json.dumps(payload, indent=2, default=float, allow_nan=True))
    print(f"\nwrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
