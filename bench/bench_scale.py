"""Benchmark: big images, tiled photometry and Dask workers (issue #6 scale targets).

Scenes are simulated by crowdphot (circular Gaussian PRF, FWHM 2.5 px, fluxes log-uniform in
300-30000, Gaussian noise sigma 2, uniform random positions) and written strip by strip to
float32 FITS files in ``bench/_cache`` (no process ever holds a 16384 x 16384 image). Every
measurement runs in a fresh subprocess that reports its wall time, its CPU time and the peak of
the summed resident memory of itself and all its children (Dask workers included), sampled
every 0.1 s with psutil; so memory numbers cover the whole run, reading included.

Rows (full mode; ``quick`` uses 4x fewer pixels and stars per case):

* photutils vs crowdphot find + group + fit on a 1024 x 1024 cut of the 8192 scene (same
  density), both whole-image in one process: the like-for-like speed ratio.
* 10^5 stars in 8192 x 8192: crowdphot untiled, tiled in this process, and tiled over 1 and 2
  local Dask workers reading the FITS file memory-mapped (targets: < 15 s, < 4 GB; 2 workers
  >= 1.7x one worker).
* 10^6 stars in 16384 x 16384 from disk over 2 workers (target: < 3 min, < 8 GB).

photutils is not run on the big scenes (it would take hours); those rows have no ratio.
Usage: ``python bench/run.py scale`` (or run this file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE_DIR, row  # noqa: E402

FWHM = 2.5
NOISE = 2.0
THRESHOLD = 5 * NOISE
FLUX = (300.0, 30_000.0)
FIT_SHAPE = 5
GROUP_RADIUS = 2 * FWHM
APERTURE = 3.0
TILE = 2048


# ----------------------------------------------------------------------------------------------
# scenes on disk
# ----------------------------------------------------------------------------------------------
def scene_path(size, n, seed=1):
    """Write (once) a ``size`` x ``size`` float32 FITS scene of ``n`` stars; return its path.

    The true positions and fluxes go next to it as ``.npz``.
    """
    from astropy.io import fits
    from astropy.table import QTable

    from crowdphot import CircularGaussianPRF, make_model_image

    path = CACHE_DIR / f"scale_{size}_{n}_s{seed}.fits"
    truth_path = path.with_suffix(".npz")
    if path.exists() and truth_path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.5, size - 0.5, n)
    y = rng.uniform(-0.5, size - 0.5, n)
    flux = np.exp(rng.uniform(np.log(FLUX[0]), np.log(FLUX[1]), n))
    order = np.argsort(y, kind="stable")
    x, y, flux = x[order], y[order], flux[order]
    psf = CircularGaussianPRF(fwhm=FWHM)
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 2
    header["NAXIS1"] = size
    header["NAXIS2"] = size
    tmp = path.with_suffix(".tmp.fits")
    stream = fits.StreamingHDU(tmp, header)
    strip, pad = 1024, 8
    for r0 in range(0, size, strip):
        r1 = min(r0 + strip, size)
        lo, hi = np.searchsorted(y, [r0 - pad, r1 + pad])
        params = QTable({"x_0": x[lo:hi], "y_0": y[lo:hi] - r0, "flux": flux[lo:hi]})
        img = make_model_image((r1 - r0, size), psf, params, model_shape=(11, 11))
        img += rng.normal(0.0, NOISE, img.shape)
        stream.write(img.astype(">f4"))
    stream.close()
    os.replace(tmp, path)
    np.savez(truth_path, x=x, y=y, flux=flux)
    return path


# ----------------------------------------------------------------------------------------------
# one measured case (runs in a subprocess)
# ----------------------------------------------------------------------------------------------
class _PeakMemory:
    """Peak summed RSS of this process and its children, sampled in a thread."""

    def __init__(self, every=0.1):
        import psutil

        self._proc = psutil.Process()
        self._every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self):
        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a child may exit between listing and reading
                pass
        self.peak = max(self.peak, total)

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self._every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def _config():
    from crowdphot import CircularGaussianPRF, DAOStarFinder, SourceGrouper

    return dict(psf_model=CircularGaussianPRF(fwhm=FWHM), fit_shape=FIT_SHAPE,
                finder=DAOStarFinder(threshold=THRESHOLD, fwhm=FWHM),
                grouper=SourceGrouper(GROUP_RADIUS), aperture_radius=APERTURE,
                group_warning_threshold=10**9)


def _warm_up(data, client):
    """One small untimed run: numba kernels loaded (or compiled) before the clock starts."""
    from crowdphot.pipeline.tiles import photometry_tiled

    photometry_tiled(np.ascontiguousarray(data[:256, :256]), tile_shape=128, client=client,
                     **_config())


def _case(mode, path, workers, cut):
    """Run one case and return its measurements (called in a fresh process)."""
    cpu0 = time.process_time()
    cpu_w = []
    with _PeakMemory() as mem:
        t0 = time.perf_counter()
        if mode == "photutils":
            import photutils.detection as pdet
            import photutils.psf as ppsf
            from astropy.io import fits

            data = np.array(fits.getdata(path)[:cut, :cut], dtype=float)
            t0 = time.perf_counter()
            phot = ppsf.PSFPhotometry(
                ppsf.CircularGaussianPRF(fwhm=FWHM), FIT_SHAPE,
                finder=pdet.DAOStarFinder(threshold=THRESHOLD, fwhm=FWHM),
                grouper=ppsf.SourceGrouper(GROUP_RADIUS), aperture_radius=APERTURE,
                group_warning_threshold=10**9)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = phot(data)
        elif mode in ("untiled", "tiled"):
            from crowdphot import PSFPhotometry
            from crowdphot.io.fits import read_image
            from crowdphot.pipeline.tiles import photometry_tiled

            image = read_image(path)
            data = image.data if cut is None else np.ascontiguousarray(image.data[:cut, :cut])
            cfg = _config()
            _warm_up(data, None)
            t0 = time.perf_counter()
            if mode == "untiled":
                psf, fit_shape = cfg.pop("psf_model"), cfg.pop("fit_shape")
                table = PSFPhotometry(psf, fit_shape, **cfg)(data)
            else:
                table = photometry_tiled(data, tile_shape=TILE, **cfg)
        else:  # "dask": workers read the FITS file themselves
            from astropy.io import fits
            from dask.distributed import Client, LocalCluster

            from crowdphot.pipeline.tiles import photometry_tiled

            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
            client.wait_for_workers(workers)
            # worker start-up and numba loading are paid once per cluster, not per image
            _warm_up(fits.getdata(path)[:256, :256].astype(float), client)
            cpu_w0 = client.run(_cpu_seconds)
            t0 = time.perf_counter()
            table = photometry_tiled(str(path), tile_shape=TILE, client=client, **_config())
            wall = time.perf_counter() - t0
            cpu_w = [v - cpu_w0[k] for k, v in client.run(_cpu_seconds).items()]
            client.close()
            cluster.close()
        if mode != "dask":
            wall = time.perf_counter() - t0
    xy = np.column_stack([np.asarray(table["x_fit"], float), np.asarray(table["y_fit"], float),
                          np.asarray(table["flux_fit"], float),
                          np.asarray(table["flags"], float)])
    np.save(_xy_path(mode, path, workers, cut), xy)
    return {"wall": wall, "cpu_main": time.process_time() - cpu0, "peak_gb": mem.peak / 1e9,
            "n": len(table), "cpu_workers": cpu_w}


def _cpu_seconds():
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _xy_path(mode, path, workers, cut):
    return CACHE_DIR / f"{Path(path).stem}_{mode}_w{workers}_c{cut}.npy"


def measure(mode, path, *, workers=0, cut=None):
    """Run :func:`_case` in a fresh interpreter; returns its dict."""
    cmd = [sys.executable, __file__, "--case", mode, str(path), str(workers), str(cut)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} case failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _recovery(path, mode, workers=0, cut=None):
    """Fraction of detectable true stars (flux > 1000) recovered within 0.5 px and 10 %."""
    from crowdphot import match_xy

    truth = np.load(Path(path).with_suffix(".npz"))
    x, y, f = truth["x"], truth["y"], truth["flux"]
    fit = np.load(_xy_path(mode, path, workers, cut))
    if cut is not None:
        keep = (x < cut - 0.5) & (y < cut - 0.5)
        x, y, f = x[keep], y[keep], f[keep]
    ti, fi = match_xy(x, y, fit[:, 0], fit[:, 1], separation=0.5)
    ok = np.abs(fit[fi, 2] / f[ti] - 1) < 0.1
    bright = f[ti][ok] > 1000
    return bright.sum() / max(1, np.count_nonzero(f > 1000))


def _same(path, a, b, cut=None):
    """Largest position and relative flux difference between two runs (matched at 1e-2 px).

    Only sources with ``flags == 0`` in both runs count: a fit that hit the iteration limit
    stops wherever the iterations ran out, which may differ at the 1e-4 level.
    """
    from crowdphot import match_xy

    p, q = np.load(_xy_path(*a, cut)), np.load(_xy_path(*b, cut))
    ok_p, ok_q = np.isfinite(p).all(axis=1), np.isfinite(q).all(axis=1)
    p, q = p[ok_p], q[ok_q]
    i, j = match_xy(p[:, 0], p[:, 1], q[:, 0], q[:, 1], separation=0.01)
    clean = (p[i, 3] == 0) & (q[j, 3] == 0) if p.shape[1] > 3 and q.shape[1] > 3 else True
    i, j = i[clean], j[clean]
    dxy = np.hypot(*(p[i, :2] - q[j, :2]).T).max() if len(i) else np.nan
    dfl = np.abs(p[i, 2] / q[j, 2] - 1).max() if len(i) else np.nan
    return len(p), len(q), len(i), dxy, dfl


# ----------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------
def run(quick=False):
    """Rows for ``bench/run.py`` (see the module docstring)."""
    size1, n1 = (4096, 25_000) if quick else (8192, 100_000)
    size2, n2 = (8192, 250_000) if quick else (16384, 1_000_000)
    cut = 512 if quick else 1024
    rows = []
    p1 = scene_path(size1, n1)

    pu = measure("photutils", p1, cut=cut)
    cu = measure("untiled", p1, cut=cut)
    n_p, n_c, n_m, dxy, dfl = _same(p1, ("photutils", p1, 0), ("untiled", p1, 0), cut)
    rows.append(row(f"find+group+fit {cut}x{cut} cut ({n_c} stars found), whole image",
                    pu["wall"], cu["wall"],
                    f"photutils {n_p} / crowdphot {n_c} sources, {n_m} matched at 0.01 px: "
                    f"max |dxy| {dxy:.1e} px, max |dflux|/flux {dfl:.1e}; "
                    f"peak RSS {pu['peak_gb']:.2f} / {cu['peak_gb']:.2f} GB"))

    res = {}
    for mode, workers in (("untiled", 0), ("tiled", 0), ("dask", 1), ("dask", 2)):
        res[(mode, workers)] = r = measure(mode, p1, workers=workers)
        label = {"untiled": "untiled, in memory", "tiled": f"tiled {TILE}, in process",
                 "dask": f"tiled {TILE}, {workers} Dask worker(s), FITS memory-mapped"}[mode]
        rec = _recovery(p1, mode, workers)
        note = (f"{r['n']} stars fitted; peak RSS (all processes) {r['peak_gb']:.2f} GB; "
                f"main-process CPU {r['cpu_main']:.1f} s; recovered {rec:.1%} of true stars "
                "> 1000 within 0.5 px and 10 %")
        if mode != "untiled":
            _, _, n_m, dxy, dfl = _same(p1, ("untiled", p1, 0), (mode, p1, workers))
            note += (f"; vs untiled: {n_m}/{res[('untiled', 0)]['n']} unflagged matched, max "
                     f"|dxy| {dxy:.1e} px, max |dflux|/flux {dfl:.1e}")
        if r["cpu_workers"]:
            note += "; worker CPU " + " + ".join(f"{c:.1f}" for c in r["cpu_workers"]) + " s"
        if (mode, workers) == ("dask", 2):
            one = res[("dask", 1)]
            note += (f"; speed-up over 1 worker {one['wall'] / r['wall']:.2f}x wall, "
                     f"{max(one['cpu_workers']) / max(r['cpu_workers']):.2f}x by busiest-worker "
                     "CPU")
        rows.append(row(f"find+fit {n1:,} stars {size1}x{size1}: {label}", float("nan"),
                        r["wall"], note))

    p2 = scene_path(size2, n2)
    r = measure("dask", p2, workers=2)
    rows.append(row(f"find+fit {n2:,} stars {size2}x{size2} from disk: tiled {TILE}, "
                    "2 Dask workers", float("nan"), r["wall"],
                    f"{r['n']} stars fitted; peak RSS (all processes) {r['peak_gb']:.2f} GB; "
                    "worker CPU " + " + ".join(f"{c:.1f}" for c in r["cpu_workers"]) + " s; "
                    f"recovered {_recovery(p2, 'dask', 2):.1%} of true stars > 1000"))
    return rows


def _main(argv):
    if argv[:1] == ["--case"]:
        mode, path, workers, cut = argv[1], argv[2], int(argv[3]), argv[4]
        print(json.dumps(_case(mode, path, workers, None if cut == "None" else int(cut))))
        return
    for r in run(quick="--quick" in argv):
        print(r)


if __name__ == "__main__":
    _main(sys.argv[1:])
