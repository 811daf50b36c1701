"""Shared helpers for the benchmarks: timing, machine description, the notebook scene, the
crowded field.

Bench modules import this as ``from common import ...`` (``bench/run.py`` puts ``bench/`` on
``sys.path``; running a bench file directly does the same). Generated files go to
``bench/_cache/`` (git-ignored).
"""

from __future__ import annotations

import functools
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / "_cache"

#: The crowded field of ``bench_crowded_fit`` and ``bench_allstar`` (issue #4's crowding
#: target) and the fit settings both use.
CROWDED = {
    "fit_shape": (5, 5),
    "aperture": 5,
    "group_sep": 10.0,
    "min_separation": 8,
    "flux": (500, 20_000),
    "noise_stddev": 0.5,
}

#: The PSF-photometry notebook's simulated scene.
NOTEBOOK = {
    "shape": (2048, 2048),
    "n_sources": 500,
    "flux": (500, 20_000),
    "min_separation": 25,
    "seed": 0,
    "noise_stddev": 0.5,
    "noise_seed": 0,
}

__all__ = [
    "BENCH_DIR",
    "CACHE_DIR",
    "NOTEBOOK",
    "best_of",
    "row",
    "machine_info",
    "psf_grid_path",
    "write_synthetic_grid",
    "grid_models",
    "notebook_scene",
    "CROWDED",
    "crowded_scene",
    "crowded_inputs",
    "crowded_quality",
    "quietly",
]


# -- timing --------------------------------------------------------------------------------------
def best_of(fn, *, repeat=3, warmup=True):
    """Best wall time of ``repeat`` calls of ``fn()`` and the last result.

    ``warmup`` makes one untimed call first (numba compilation, caches, page faults), so the
    number is the steady-state cost a user pays on the second and later calls.

    Returns
    -------
    seconds : float
    result : object
        What the last timed call returned.
    """
    result = fn() if warmup else None
    best = np.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def quietly(fn, *args, **kwargs):
    """A no-argument callable running ``fn(*args, **kwargs)`` with warnings ignored (timing)."""
    import warnings

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    return call


def row(name, photutils_s, crowdphot_s, note=""):
    """One result row in the format ``bench/run.py`` expects (ratio = photutils / crowdphot)."""
    ratio = photutils_s / crowdphot_s if crowdphot_s and photutils_s else float("nan")
    return {
        "name": name,
        "photutils_s": float(photutils_s),
        "crowdphot_s": float(crowdphot_s),
        "ratio": float(ratio),
        "note": note,
    }


# -- machine -------------------------------------------------------------------------------------
def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info():
    """CPU, core count and library versions, for the results file."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for dist in ("crowdphot", "numpy", "scipy", "astropy", "numba", "photutils", "dask"):
        info[dist] = _version(dist)
    info["numba_disabled"] = os.environ.get("CROWDPHOT_DISABLE_NUMBA", "") in ("1", "true")
    return info


# -- the PSF grid --------------------------------------------------------------------------------
def write_synthetic_grid(path, *, n_side=4, fov=101, oversampling=4, detector=2048):
    """Write an STPSF-format grid of elliptical-Gaussian-plus-halo ePSFs (fallback grid).

    ``n_side**2`` ePSFs of ``fov * oversampling`` samples on a side, at the fiducial detector
    positions STPSF uses (``round(linspace(0, 1, n_side) * (detector - 1))`` per axis). Width,
    ellipticity and orientation change with position so that a wrong grid assignment shows.
    Each ePSF sums to ``oversampling**2`` (unit flux on the detector grid), as STPSF's do. The
    header has ``OVERSAMP`` and ``DET_YX{i}`` = ``'(y, x)'`` strings like STPSF writes.
    """
    from astropy.io import fits

    locs = [int(round(v * (detector - 1))) for v in np.linspace(0.0, 1.0, n_side)]
    npix = fov * oversampling
    # sample centres in detector pixels relative to the ePSF centre
    s = (np.arange(npix) - (npix - 1) / 2) / oversampling
    yy, xx = np.meshgrid(s, s, indexing="ij")
    psfs, positions = [], []
    for ix, x in enumerate(locs):
        for iy, y in enumerate(locs):
            sx = 0.9 + 0.12 * ix
            sy = 1.0 + 0.08 * iy
            theta = 0.35 * (ix + 2 * iy)
            c, sn = np.cos(theta), np.sin(theta)
            u = (c * xx + sn * yy) / sx
            v = (-sn * xx + c * yy) / sy
            core = np.exp(-0.5 * (u**2 + v**2))
            halo = (1.0 + (xx**2 + yy**2) / (4.0 + ix + iy) ** 2) ** -2.5
            psf = core / core.sum() + 0.05 * halo / halo.sum()
            psfs.append(psf / psf.sum() * oversampling**2)
            positions.append((y, x))
    hdu = fits.PrimaryHDU(np.array(psfs))
    hdu.header["OVERSAMP"] = (oversampling, "Oversampling factor")
    hdu.header["NUM_PSFS"] = (n_side**2, "The total number of fiducial PSFs")
    hdu.header["DET_SAMP"] = (oversampling, "Oversampling factor for the detector")
    hdu.header["FOVPIXEL"] = (fov, "Field of view in pixels")
    for i, (y, x) in enumerate(positions):
        hdu.header[f"DET_YX{i}"] = (str((float(y), float(x))), f"PSF {i} (y,x) position")
    hdu.header["COMMENT"] = "Synthetic crowdphot bench grid (elliptical Gaussians + halo)"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu.writeto(path, overwrite=True)
    return path


@functools.lru_cache(maxsize=1)
def psf_grid_path():
    """``(path, source)`` of the notebook-like 16-ePSF STPSF-format grid.

    ``crowdphot.datasets.jwst_like_psf_grid_path()`` (the JWST-like grid, computed and cached on
    first use) when it works, otherwise a synthetic grid written once to ``bench/_cache/``;
    ``source`` says which (and why the fallback was used).
    """
    try:
        from crowdphot.datasets.jwst import jwst_like_psf_grid_path

        path = Path(jwst_like_psf_grid_path())
        if path.exists():
            return path, "crowdphot.datasets.jwst.jwst_like_psf_grid"
        reason = f"{path} was not written"
    except Exception as exc:  # the dataset module is optional for the harness
        reason = f"{type(exc).__name__}: {exc}"
    path = CACHE_DIR / "synthetic_grid_4x4_fovp101_samp4.fits"
    if not path.exists():
        write_synthetic_grid(path)
    return path, f"synthetic 4x4 elliptical-Gaussian grid (jwst_like grid unavailable: {reason})"


def grid_models():
    """``(photutils_model, crowdphot_model, note)`` read from the same grid file.

    crowdphot's model comes from ``crowdphot.GriddedPSFModel.read``; if that reader is not
    available yet, from the ePSF stack photutils read (same numbers either way).
    """
    import photutils.psf as ppsf
    from astropy.nddata import NDData

    import crowdphot

    path, source = psf_grid_path()
    phot = ppsf.GriddedPSFModel.read(path)
    try:
        ours = crowdphot.GriddedPSFModel.read(path)
        how = "read"
    except (ImportError, AttributeError, NotImplementedError):
        meta = {"grid_xypos": np.asarray(phot.grid_xypos), "oversampling": phot.oversampling}
        ours = crowdphot.GriddedPSFModel(NDData(np.asarray(phot.data), meta=meta))
        how = "built from photutils' ePSF stack"
    return phot, ours, f"grid: {source} ({how})"


# -- the notebook scene ----------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def notebook_scene(*, shape=NOTEBOOK["shape"], n_sources=NOTEBOOK["n_sources"], noise=True):
    """The notebook's simulated image, built once per process with crowdphot.

    500 stars from the 16-ePSF grid in a 2048 x 2048 image (``seed=0``, fluxes 500-20000,
    ``min_separation=25``) plus Gaussian noise of sigma 0.5 (``seed=0``); smaller ``shape`` and
    ``n_sources`` give a quick version of the same recipe.

    Returns
    -------
    scene : dict
        ``data`` (noisy image), ``clean`` (noise-free), ``error`` (``sqrt(|data|)``, as the
        notebook), ``params`` (true QTable), ``psf_photutils``, ``psf_crowdphot`` (the two grid
        models) and ``note``. Treat the arrays as read-only: they are shared between callers.
    """
    from crowdphot import make_noise_image, make_psf_model_image

    phot, ours, note = grid_models()
    clean, params = make_psf_model_image(
        tuple(shape), ours, n_sources, flux=NOTEBOOK["flux"],
        min_separation=NOTEBOOK["min_separation"], seed=NOTEBOOK["seed"])
    data = clean.copy()
    if noise:
        data += make_noise_image(clean.shape, mean=0, stddev=NOTEBOOK["noise_stddev"],
                                 seed=NOTEBOOK["noise_seed"])
    for arr in (clean, data):
        arr.flags.writeable = False
    error = np.sqrt(np.abs(data))
    error.flags.writeable = False
    return {
        "data": data,
        "clean": clean,
        "error": error,
        "params": params,
        "psf_photutils": phot,
        "psf_crowdphot": ours,
        "note": note,
    }


# -- the crowded field -------------------------------------------------------------------------
def crowded_scene(shape, n_sources, psf, seed=0):
    """``(data, error, truth)`` of the crowded field (:data:`CROWDED`): ``n_sources`` stars of
    ``psf`` at least 8 px apart, fluxes 500-20000, Gaussian noise of sigma 0.5,
    ``error = sqrt(|data|)``."""
    from crowdphot import make_noise_image, make_psf_model_image

    clean, truth = make_psf_model_image(shape, psf, n_sources, flux=CROWDED["flux"],
                                        min_separation=CROWDED["min_separation"], seed=seed)
    data = clean + make_noise_image(clean.shape, mean=0, stddev=CROWDED["noise_stddev"],
                                    seed=seed)
    return data, np.sqrt(np.abs(data)), truth


def crowded_inputs(psf, quick):
    """The crowded field and its detections: 4000 stars on 2048^2 (``quick``: 600 on 512^2),
    ``IRAFStarFinder(threshold=6, fwhm=3)`` (crowdphot's) positions as ``init``.

    Returns
    -------
    data, error, truth, found, init
    """
    from astropy.table import QTable

    from crowdphot import IRAFStarFinder

    shape, n = ((512, 512), 600) if quick else ((2048, 2048), 4000)
    data, error, truth = crowded_scene(shape, n, psf)
    found = IRAFStarFinder(threshold=6.0, fwhm=3.0)(data)
    init = QTable({"x": found["x_centroid"], "y": found["y_centroid"]})
    return data, error, truth, found, init


def crowded_quality(truth, table):
    """Completeness within 1 px and 0.5 px, robust flux scatter and median bias (1 px)."""
    from crowdphot import match_catalogs

    out = {}
    for sep in (1.0, 0.5):
        matched = match_catalogs(truth, table, separation=sep)
        out[f"completeness_{sep:g}"] = len(matched) / len(truth)
        if sep == 1.0:
            rel = np.asarray(matched["flux_fit"] / matched["flux"]) - 1.0
            med = float(np.median(rel))
            out["bias"] = med
            out["scatter"] = 1.4826 * float(np.median(np.abs(rel - med)))
    return out
