"""Run photutils 3.0's own test modules against crowdphot (``make compat``).

The modules listed in ``compat/exclusions.toml`` are copied from the installed photutils into
``build/compat/compat_tests/<subpkg>/tests/`` with every ``photutils`` import rewritten:

- ``from photutils.<sub>[.<mod>] import Name`` -> ``from crowdphot.<sub> import Name`` when
  crowdphot's public ``<sub>`` package provides ``Name`` (photutils' public home of the name);
- a TEST-ONLY helper listed under ``[[helper]]`` (feature flags, data builders) stays photutils;
- a photutils private name listed under ``[[alias]]`` is bound to crowdphot's public object
  that plays its role (e.g. the flag-definition class);
- in the counted run (photutils mode) the names listed under ``[photutils_mode]`` are bound to
  ``compat/_photutils_mode.py``: crowdphot's own classes and functions with its
  photutils-identical option ``compat='photutils'`` turned on;
- anything else (private names, names crowdphot lacks) is bound to a stand-in that fails every
  test that uses it (``compat/_missing.py``), so one missing name never hides a whole module;
- ``import photutils`` -> ``import crowdphot as photutils``; imports of photutils' own test
  modules go to the copies.

pytest then runs the copies (warnings are errors, as in photutils' configuration) and the
script prints pass/fail/skip counts per module and the pass rate over the counted tests
(collected minus the excluded ones). It exits 1 when the rate is below ``threshold``.

A second run (default mode) repeats the modules that use a ``[photutils_mode]`` name with
crowdphot's defaults (``compat=None``): its failures are crowdphot's deliberate differences,
each listed with its reason (``[[known]]``) in docs/compat.md; the script also exits 1 when
there are more of them than ``default_max_failures``.

Usage::

    python compat/run_compat.py [--target photutils] [--only psf/test_photometry] [-v]
                                [--mode both|photutils|default]

``--target photutils`` runs the same copies against photutils itself (a check of the harness).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD_ROOT = ROOT / "build" / "compat"
BUILD = BUILD_ROOT / "run"  # set per run in main(): concurrent runs get their own folder
PKG = "compat_tests"
MODE_NAMES_ALL = set()  # the [photutils_mode] names (filled from the config)

CONFTEST = '''\
import pytest

from compat_tests import _missing


def pytest_configure(config):
    config.addinivalue_line("markers", "remote_data: needs the network (skipped)")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="remote data")
    for item in items:
        if "remote_data" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "setup":
        _missing.touched.clear()
    outcome = yield
    report = outcome.get_result()
    if call.when == "call" and report.passed and _missing.touched:
        report.outcome = "failed"
        report.longrepr = "used names crowdphot lacks: " + ", ".join(sorted(_missing.touched))
'''

PYTEST_INI = '''\
[pytest]
addopts = -p no:cacheprovider
filterwarnings =
    error
    ignore:numpy.ufunc size changed:RuntimeWarning
    ignore:numpy.ndarray size changed:RuntimeWarning
    ignore:Matplotlib is currently using agg:UserWarning
    ignore:FigureCanvasAgg is non-interactive:UserWarning
'''


def load_config():
    with open(HERE / "exclusions.toml", "rb") as fh:
        return tomllib.load(fh)


def photutils_dir():
    import photutils

    return Path(photutils.__file__).resolve().parent


class Resolver:
    """Decide where each name a test module imports from photutils comes from."""

    def __init__(self, helpers, target, *, aliases=(), mode_names=()):
        self.helpers = helpers
        self.target = target
        self.aliases = {a["photutils"]: a["crowdphot"] for a in aliases}
        self.mode_names = set(mode_names)  # bound to compat_tests._photutils_mode
        self.log = []  # (file, photutils name, destination)
        self.mode_files = set()  # files that import a [photutils_mode] name

    def _helper(self, module, name, relfile):
        for rule in self.helpers:
            if rule["module"] != module and not module.startswith(rule["module"] + "."):
                continue
            if not any(fnmatch.fnmatchcase(name, pat) for pat in rule["names"]):
                continue
            if any(relfile.startswith(p) for p in rule.get("not_in", [])):
                continue
            return True
        return False

    def _crowdphot_home(self, module, name):
        """crowdphot module that provides photutils' ``module.name`` publicly, or None."""
        if name.startswith("_"):
            return None
        parts = module.split(".")
        home = "crowdphot" if len(parts) == 1 else f"crowdphot.{parts[1]}"
        try:
            mod = importlib.import_module(home)
        except ImportError:
            return None
        if hasattr(mod, name):
            return home
        if len(parts) == 1:  # `from photutils import datasets`: a subpackage
            try:
                importlib.import_module(f"crowdphot.{name}")
                return "crowdphot"
            except ImportError:
                return None
        return None

    def import_from(self, module, names, relfile):
        """Source lines replacing ``from module import names`` (names: list of (name, asname))."""
        parts = module.split(".")
        if len(parts) >= 3 and parts[2] == "tests":  # photutils' own test helpers -> copies
            mod = ".".join([PKG] + parts[1:])
            return [f"from {mod} import {self._alias_list(names)}"]
        if self.target == "photutils":
            return [f"from {module} import {self._alias_list(names)}"]
        lines = []
        for name, asname in names:
            bound = asname or name
            full = f"{module}.{name}"
            home = self._crowdphot_home(module, name)
            if module.startswith("photutils.psf") and name in MODE_NAMES_ALL:
                self.mode_files.add(relfile)
            if name in self.mode_names and module.startswith("photutils.psf"):
                lines.append(f"from {PKG}._photutils_mode import {name} as {bound}")
                self.log.append((relfile, full, "crowdphot, compat='photutils'"))
            elif full in self.aliases:
                cmod, cname = self.aliases[full].rsplit(".", 1)
                lines.append(f"from {cmod} import {cname} as {bound}  # compat: alias")
                self.log.append((relfile, full, self.aliases[full]))
            elif home is not None:
                lines.append(f"from {home} import {name} as {bound}")
                self.log.append((relfile, full, home))
            elif self._helper(module, name, relfile):
                lines.append(f"from {module} import {name} as {bound}  # compat: test helper")
                self.log.append((relfile, full, "photutils (test helper)"))
            else:
                lines.append(f"from {PKG}._missing import missing as _compat_missing")
                lines.append(f"{bound} = _compat_missing({full!r})")
                self.log.append((relfile, full, "MISSING"))
        return lines

    @staticmethod
    def _alias_list(names):
        return ", ".join(n if a is None else f"{n} as {a}" for n, a in names)

    def import_plain(self, names):
        lines = []
        for name, asname in names:
            if name == "photutils" or name.startswith("photutils."):
                if self.target == "photutils":
                    lines.append(f"import {name}" + (f" as {asname}" if asname else ""))
                elif name == "photutils":
                    lines.append(f"import crowdphot as {asname or 'photutils'}")
                else:
                    raise SystemExit(f"unsupported import {name}")
            else:
                lines.append(f"import {name}" + (f" as {asname}" if asname else ""))
        return lines


def rewrite(source, relfile, resolver):
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module == "photutils" or node.module.startswith("photutils.")):
            new = resolver.import_from(node.module, [(a.name, a.asname) for a in node.names],
                                       relfile)
        elif isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "photutils" for a in node.names):
            new = resolver.import_plain([(a.name, a.asname) for a in node.names])
        else:
            continue
        edits.append((node.lineno, node.end_lineno, node.col_offset, new))
    for start, end, col, new in sorted(edits, reverse=True):
        indent = " " * col
        lines[start - 1:end] = [indent + line + "\n" for line in new]
    return "".join(lines)


def build(config, target, only, mode="photutils"):
    """Copy and rewrite the modules into BUILD; ``mode`` 'photutils' binds the
    ``[photutils_mode]`` names to compat/_photutils_mode.py, 'default' leaves them crowdphot's
    defaults."""
    src = photutils_dir()
    pkg = BUILD / PKG
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(HERE / "_missing.py", pkg / "_missing.py")
    shutil.copy(HERE / "_photutils_mode.py", pkg / "_photutils_mode.py")
    (BUILD / "conftest.py").write_text(CONFTEST)
    (BUILD / "pytest.ini").write_text(PYTEST_INI)
    MODE_NAMES_ALL.update(config.get("photutils_mode", {}).get("names", []))
    resolver = Resolver(config.get("helper", []), target, aliases=config.get("alias", []),
                        mode_names=MODE_NAMES_ALL if mode == "photutils" else ())
    files = []
    for sub, mods in config["modules"].items():
        tdir = pkg / sub / "tests"
        tdir.mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
        (tdir / "__init__.py").write_text("")
        for mod in mods:
            rel = f"{sub}/tests/{mod}.py"
            text = (src / rel).read_text()
            (tdir / f"{mod}.py").write_text(rewrite(text, f"{sub}/{mod}", resolver))
            if not only or any(f"{sub}/{mod}".startswith(o) for o in only):
                files.append(tdir / f"{mod}.py")
    for rel in config.get("support", []):
        s, d = src / rel, pkg / rel
        if s.is_dir():
            shutil.copytree(s, d)
        else:
            d.write_text(rewrite(s.read_text(), rel, resolver))
    return files, resolver


def _pytest_cmd(files, xml, verbose):
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", f"--junitxml={xml}",
            "-o", "junit_family=xunit2", "--tb=line" if not verbose else "--tb=short",
            *[str(f.relative_to(BUILD)) for f in files]]


def run_pytest(files, verbose, jobs=1):
    """Run the copies in ``jobs`` pytest processes (files dealt out by size); merged results."""
    env = dict(os.environ, PYTHONPATH=str(BUILD), MPLBACKEND="Agg")
    jobs = max(1, min(jobs, len(files)))
    groups = [[] for _ in range(jobs)]
    load = [0] * jobs
    for f in sorted(files, key=lambda f: -f.stat().st_size):  # largest first, to the lightest
        k = load.index(min(load))
        groups[k].append(f)
        load[k] += f.stat().st_size
    procs = []
    for k, group in enumerate(groups):
        xml = BUILD / f"results-{k}.xml"
        out = None if verbose else subprocess.PIPE
        procs.append((xml, subprocess.Popen(_pytest_cmd(group, xml, verbose), cwd=BUILD,
                                            env=env, stdout=out, stderr=out, text=True)))
    root = ET.Element("testsuites")
    for xml, proc in procs:
        stdout, stderr = proc.communicate()
        if not xml.exists():
            print((stdout or "")[-5000:], (stderr or "")[-5000:])
            raise SystemExit("pytest produced no results")
        root.extend(ET.parse(xml).getroot())
    return root, procs


def outcomes(root):
    """Yield (test id '<sub>/<module>::<name>', outcome, message)."""
    for case in root.iter("testcase"):
        cls = case.get("classname", "")
        parts = cls.split(".")
        # compat_tests.<sub>.tests.<module>[.<Class>]
        sub, mod = parts[1], parts[3]
        name = "::".join(parts[4:] + [case.get("name")])
        tid = f"{sub}/{mod}::{name}"
        outcome, msg = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, msg = "failed", (child.get("message") or "")[:300]
                break
            if child.tag == "skipped":
                outcome, msg = "skipped", (child.get("message") or "")[:300]
        yield tid, outcome, msg


def _known_reason(config, tid):
    for rule in config.get("known", []):
        if fnmatch.fnmatchcase(tid, rule["match"]):
            return rule["kind"], rule["reason"]
    return "open", "not analysed yet"


def write_docs(config, per_mod, tot, rate, failures, default=None):
    """docs/compat.md: counts of this run, every exclusion rule and every remaining failure;
    ``default``: ``(per_mod, failures)`` of the default-mode run."""
    mode = config.get("photutils_mode", {})
    out = [
        "# photutils' own tests against crowdphot",
        "",
        "`make compat` (`compat/run_compat.py`) copies photutils 3.0's test modules for the",
        "subpackages crowdphot mirrors, rewrites their `photutils` imports to `crowdphot` and runs",
        "them (warnings are errors). Rules and thresholds live in `compat/exclusions.toml`;",
        "this page is regenerated by `python compat/run_compat.py --write-docs`.",
        "",
        "The counted run turns on crowdphot's photutils-identical option, `compat='photutils'`",
        f"(`compat/_photutils_mode.py`: {', '.join(f'`{n}`' for n in mode.get('names', []))}"
        " are crowdphot's own, with that option on); a second run repeats the modules that use",
        "them with crowdphot's defaults and lists every difference below.",
        "",
        f"Pass rate (compat='photutils'): **{rate:.1%}** ({tot['passed']} passed / "
        f"{tot['passed'] + tot['failed']} counted; {tot['skipped']} skipped as in photutils; "
        f"{tot['excluded']} excluded by the rules below). The run fails below "
        f"{config.get('threshold', 0.0):.1%}.",
        "",
        f"Without the exclusions: {tot['passed'] + tot['xpass']} of "
        f"{tot['passed'] + tot['failed'] + tot['excluded']} non-skipped tests pass.",
        "",
        *[f"- {h}" for h in config.get("history", [])],
        "",
        "| module | pass | fail | skip | excluded |",
        "|---|---:|---:|---:|---:|",
    ]
    for mod in sorted(per_mod):
        c = per_mod[mod]
        out.append(f"| {mod} | {c['passed']} | {c['failed']} | {c['skipped']} | "
                   f"{c['excluded']} |")
    out += ["", "## Test-only helpers kept from photutils", "",
            "The code under test is always crowdphot's; these imports only set a test up:", ""]
    for rule in config.get("helper", []):
        where = f" (not in {', '.join(rule['not_in'])})" if rule.get("not_in") else ""
        out.append(f"- `{rule['module']}`: {', '.join(rule['names'])}{where} - {rule['reason']}")
    if config.get("alias"):
        out += ["", "Private photutils names bound to the crowdphot object that plays their role:",
                ""]
        for rule in config["alias"]:
            out.append(f"- `{rule['photutils']}` -> `{rule['crowdphot']}` - {rule['reason']}")
    out += ["", "## Excluded tests", "",
            "`private`: tests of photutils' private attributes; `scope`: features crowdphot does "
            "not mirror.", "", "| tests | kind | reason |", "|---|---|---|"]
    for rule in config.get("exclude", []):
        out.append(f"| `{rule['match']}` | {rule['kind']} | {rule['reason']} |")
    out += ["", "## Remaining failures (compat='photutils')", ""]
    if not failures:
        out.append("None.")
    else:
        out += ["| test | kind | reason |", "|---|---|---|"]
        for tid, _ in failures:
            kind, reason = _known_reason(config, tid)
            out.append(f"| `{tid}` | {kind} | {reason} |")
    if default is not None:
        d_mod, d_fail = default
        n_pass = sum(c["passed"] for c in d_mod.values())
        out += ["", "## crowdphot's default behaviour (compat=None)", "",
                f"The modules that use `compat`-dependent names, run with crowdphot's defaults: "
                f"{n_pass} pass, {len(d_fail)} fail (at most "
                f"{mode.get('default_max_failures', 0)} allowed). Each failure is a deliberate "
                "difference; `compat='photutils'` gives photutils' behaviour.", ""]
        if d_fail:
            out += ["| test | kind | reason |", "|---|---|---|"]
            for tid, _ in d_fail:
                kind, reason = _known_reason(config, tid)
                out.append(f"| `{tid}` | {kind} | {reason} |")
    out += ["", "## Deliberate differences and photutils-identical options", "",
            "| difference | photutils-identical option |", "|---|---|"]
    for item in config.get("difference", []):
        out.append(f"| {item['what']} | {item['option']} |")
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "compat.md").write_text("\n".join(out) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["crowdphot", "photutils"], default="crowdphot")
    ap.add_argument("--only", nargs="*", default=[], help="run only these sub/module prefixes")
    ap.add_argument("--mode", choices=["both", "photutils", "default"], default="both",
                    help="photutils: the counted run with compat='photutils'; default: the "
                         "modules using compat-dependent names with crowdphot's defaults")
    ap.add_argument("--failures", action="store_true", help="list every counted failure")
    ap.add_argument("--imports", action="store_true", help="print the import resolution log")
    ap.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output")
    ap.add_argument("-j", "--jobs", type=int, default=min(4, os.cpu_count() or 1),
                    help="pytest processes (default: CPU count, at most 4)")
    ap.add_argument("--durations", type=int, default=0, metavar="N",
                    help="print the N slowest tests and the time per module")
    ap.add_argument("--keep", action="store_true",
                    help="keep the build folder (build/compat/run-*) for debugging")
    ap.add_argument("--write-docs", action="store_true",
                    help="rewrite docs/compat.md from this run and the rules")
    args = ap.parse_args(argv)
    config = load_config()
    t0 = time.perf_counter()
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    builds = []
    try:
        return _main(args, config, t0, builds)
    finally:
        if not args.keep:
            for b in builds:
                shutil.rmtree(b, ignore_errors=True)


def _new_build(builds, mode):
    global BUILD
    BUILD = Path(tempfile.mkdtemp(prefix=f"run-{mode}-", dir=BUILD_ROOT))
    builds.append(BUILD)


def _tally(root, rules, target):
    per_mod, failures, used = {}, [], set()
    for tid, outcome, msg in outcomes(root):
        mod = tid.split("::")[0]
        c = per_mod.setdefault(mod, dict(passed=0, failed=0, skipped=0, excluded=0, xpass=0))
        rule = next((r for r in rules if fnmatch.fnmatchcase(tid, r["match"])), None)
        if rule is not None and target == "crowdphot":
            used.add(rule["match"])
            c["excluded"] += 1
            if outcome == "passed":
                c["xpass"] += 1
            continue
        c[outcome] += 1
        if outcome == "failed":
            failures.append((tid, msg))
    tot = dict(passed=0, failed=0, skipped=0, excluded=0, xpass=0)
    print(f"{'module':32s} {'pass':>5s} {'fail':>5s} {'skip':>5s} {'excl':>5s}")
    for mod in sorted(per_mod):
        c = per_mod[mod]
        for k in tot:
            tot[k] += c[k]
        print(f"{mod:32s} {c['passed']:5d} {c['failed']:5d} {c['skipped']:5d} {c['excluded']:5d}")
    print(f"{'TOTAL':32s} {tot['passed']:5d} {tot['failed']:5d} {tot['skipped']:5d} "
          f"{tot['excluded']:5d}")
    return per_mod, failures, used, tot


def _durations(root, n):
    times = [(float(c.get("time") or 0.0), c.get("classname", "").split(".", 1)[-1],
              c.get("name")) for c in root.iter("testcase")]
    per = {}
    for t, cls, _ in times:
        key = ".".join(cls.split(".")[:3])
        per[key] = per.get(key, 0.0) + t
    print(f"test time {sum(t for t, _, _ in times):.0f} s; by module:")
    for key, t in sorted(per.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {t:7.1f} s  {key}")
    for t, cls, name in sorted(times, reverse=True)[:n]:
        print(f"  {t:7.2f} s  {cls}::{name}")


def _main(args, config, t0, builds):
    rules = config.get("exclude", [])
    status = 0
    full = not args.only and args.target == "crowdphot"
    result = None
    # the counted run: compat='photutils' names (the build also finds the modules using them)
    _new_build(builds, "photutils")
    files, resolver = build(config, args.target, args.only,
                            "photutils" if args.mode != "default" else "default")
    mode_files = sorted(m for m in resolver.mode_files if m.count("/") == 1  # modules only
                        and (not args.only or any(m.startswith(o) for o in args.only)))
    if args.imports:
        for rel, name, dest in sorted(set(resolver.log)):
            print(f"  {rel:36s} {name:60s} -> {dest}")
    if args.mode != "default":
        print("== compat='photutils' (counted run)")
        root, _ = run_pytest(files, args.verbose, args.jobs)
        per_mod, failures, used, tot = _tally(root, rules, args.target)
        counted = tot["passed"] + tot["failed"]
        rate = tot["passed"] / counted if counted else 0.0
        print(f"pass rate {rate:.4f} ({tot['passed']}/{counted} counted = collected - excluded "
              f"- skipped); excluded tests that pass anyway: {tot['xpass']}; "
              f"{time.perf_counter() - t0:.0f} s")
        if args.durations:
            _durations(root, args.durations)
        if args.failures:
            for tid, msg in failures:
                print(f"FAIL {tid}\n     {msg.splitlines()[0] if msg else ''}")
        unused = [r["match"] for r in rules if r["match"] not in used]
        if unused and full:
            print("exclusion rules matching no test:", *unused, sep="\n  ")
        threshold = config.get("threshold", 0.0)
        if full and rate < threshold:
            print(f"FAILED: pass rate {rate:.4f} below the recorded threshold {threshold}")
            status = 1
        result = (per_mod, tot, rate, failures)
    default = None
    if args.mode != "photutils" and args.target == "crowdphot" and mode_files:
        if args.mode == "both":
            _new_build(builds, "default")
            files, _ = build(config, args.target, mode_files, "default")
        else:  # the build above used the defaults already
            files = [f for f in files if f"{f.parent.parent.name}/{f.stem}" in mode_files]
        print(f"== crowdphot's defaults (compat=None): {', '.join(mode_files)}")
        root, _ = run_pytest(files, args.verbose, args.jobs)
        d_mod, d_fail, _, _ = _tally(root, rules, args.target)
        limit = config.get("photutils_mode", {}).get("default_max_failures", 0)
        print(f"default-mode differences: {len(d_fail)} (at most {limit}); "
              f"{time.perf_counter() - t0:.0f} s")
        for tid, msg in d_fail:
            kind, _ = _known_reason(config, tid)
            print(f"  {kind:10s} {tid}" + (f"\n     {msg.splitlines()[0] if msg else ''}"
                                          if kind == "open" or args.failures else ""))
        if not args.only and (len(d_fail) > limit
                              or any(_known_reason(config, t)[0] == "open" for t, _ in d_fail)):
            print("FAILED: default-mode differences above the limit or without a reason")
            status = 1
        default = (d_mod, d_fail)
    if args.write_docs and full and result is not None:
        per_mod, tot, rate, failures = result
        write_docs(config, per_mod, tot, rate, failures, default)
    return status


if __name__ == "__main__":
    sys.exit(main())
