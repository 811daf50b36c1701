"""Benchmark: ``crowdphot phot`` on a 2048² FITS image, untiled against ``--tile 512``.

The notebook scene scaled up as ``tests/cli/test_sky.py`` (built-in JWST-like grid, 500 stars,
flux 500-20000, noise 0.5, minimum separation 25, seed 3) on a sky of 20 with a gentle gradient,
written to FITS; the CLI with its defaults (sky map, all-star, merging, ``--min-snr``), in this
process, one call after another: the first call of each mode is "cold" (caches empty, kernels
and PSF loaded by then), the next ones "warm" (best of ``repeat``). photutils has no tiled CLI:
the row's photutils column is empty; the note compares the tiled catalog with the untiled one
(max |dflux| / flux_err and max |dx| over the matched rows, rows and flags).

Run ``python bench/bench_tiled_cli.py`` (``--quick``: 1024², tiles of 256). To time another
tree (e.g. before a change), put its ``src`` first: ``PYTHONPATH=/path/to/tree/src python
bench/bench_tiled_cli.py``.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE_DIR, row  # noqa: E402


def _image(shape):
    from astropy.io import fits

    from crowdphot import jwst_like_psf_grid, make_noise_image, make_psf_model_image

    path = CACHE_DIR / f"tiled_cli_{shape[0]}x{shape[1]}.fits"
    if not path.exists():
        n = int(round(500 * shape[0] * shape[1] / 2048**2))
        stars, _ = make_psf_model_image(shape, jwst_like_psf_grid(), n, flux=(500, 20_000),
                                        min_separation=25, seed=3)
        noise = make_noise_image(shape, distribution="gaussian", mean=0.0, stddev=0.5, seed=3)
        yy, xx = np.mgrid[:shape[0], :shape[1]]
        sky = 20.0 + 1.5 * xx / shape[1] - 1.0 * yy / shape[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU((stars + noise + sky).astype(np.float32),
                        header=_header(shape)).writeto(path)
    return path


def _header(shape):
    """A JWST/NIRCam header (the CLI's built-in PSF) with a tangent-plane WCS."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    w.wcs.cdelt = [-8.6e-6, 8.6e-6]
    header = w.to_header()
    header.update({"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "FILTER": "F200W",
                   "DETECTOR": "NRCA1", "BUNIT": "DN"})
    return header


def _run(image, out, extra):
    from astropy.table import QTable

    import crowdphot.background.sky as skymod
    from crowdphot.cli.app import main

    calls = []
    real = skymod.estimate_sky
    skymod.estimate_sky = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(["phot", str(image), "-o", str(out), "--no-progress",
                         *map(str, extra)])
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    finally:
        skymod.estimate_sky = real
    if code != 0:
        raise RuntimeError(f"crowdphot phot failed ({code})")
    return (dt, dc, len(calls)), QTable.read(out)


def _compare(tiled, whole):
    from astropy.table import QTable

    from crowdphot import match_catalogs

    ref = QTable({"x_0": whole["x_fit"], "y_0": whole["y_fit"], "flux": whole["flux_fit"],
                  "ref_err": whole["flux_err"], "ref_x": whole["x_fit"],
                  "ref_flags": whole["flags"]})
    m = match_catalogs(ref, tiled, separation=0.5)

    def v(c):
        return np.asarray(getattr(m[c], "value", m[c]), dtype=float)

    pull = np.nanmax(np.abs(v("flux_fit") - v("flux")) / v("ref_err"))
    dx = np.nanmax(np.abs(v("x_fit") - v("ref_x")))
    same_flags = bool(np.array_equal(np.asarray(m["flags"]), np.asarray(m["ref_flags"])))
    return (f"rows {len(tiled)} vs {len(whole)}, matched {len(m)}, max |dflux|/flux_err "
            f"{pull:.1e}, max |dx| {dx:.1e} px, flags {'same' if same_flags else 'DIFFER'}")


def run(quick=False, repeat=2):
    import crowdphot

    shape, tile = ((1024, 1024), 256) if quick else ((2048, 2048), 512)
    image = _image(shape)
    folder = CACHE_DIR / "tiled_cli_out"
    folder.mkdir(parents=True, exist_ok=True)
    times, tables = {}, {}
    _run(image, folder / "warmup.ecsv", ["--tile", tile])  # PSF grid, kernels, imports
    for name, extra in (("untiled", []), ("tiled", ["--tile", tile])):
        runs = [_run(image, folder / f"{name}.ecsv", extra) for _ in range(1 + repeat)]
        warm = min(runs[1:], key=lambda r: r[0][1])[0]  # least CPU: the least disturbed
        times[name] = (runs[0][0], warm)
        tables[name] = runs[-1][1]
    note = _compare(tables["tiled"], tables["untiled"])
    src = Path(crowdphot.__file__).resolve().parent.parent

    def said(name):
        (w0, c0, n0), (w1, c1, n1) = times[name]
        return (f"wall {w1:.2f} s, CPU {c1:.2f} s warm; first call wall {w0:.2f} s, CPU "
                f"{c0:.2f} s; {n1} estimate_sky call(s)")

    label = f"{shape[0]}² FITS, CLI defaults"
    rows = [row(f"crowdphot phot untiled, {label}", 0.0, times["untiled"][1][0],
                f"{said('untiled')}; tree {src}"),
            row(f"crowdphot phot --tile {tile}, {label}", 0.0, times["tiled"][1][0],
                f"{said('tiled')}; {note}")]
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']}: {r['crowdphot_s']:.2f} s  ({r['note']})")
