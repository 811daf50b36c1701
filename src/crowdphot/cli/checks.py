"""Sanity checks of ``crowdphot phot`` on real data: PSF width, pixel scale, memory.

Each check turns a silent, wrong result into a warning or a one-line error before (or right
after) the fit: a PSF whose width does not match the image's stars (a wrong oversampling, a
wrong filter), or a fit that would not fit in memory.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

__all__ = ["image_pixel_scale", "psf_width_check", "available_memory", "fit_memory_bytes",
           "check_fit_memory", "MemoryCheckedFinder"]

# FWHM of a Gaussian over its sigma
_FWHM_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def image_pixel_scale(image):
    """Pixel scale of the science image in arcsec (from its WCS or scale keywords), or None.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from astropy.io import fits
    >>> image_pixel_scale(SimpleNamespace(wcs=None, header=fits.Header({'PIXSCALE': 0.2})))
    0.2
    """
    from crowdphot.cli.psfload import header_pixel_scale

    wcs = getattr(image, "wcs", None)
    if wcs is not None:
        from astropy.wcs.utils import proj_plane_pixel_scales

        try:
            scales = proj_plane_pixel_scales(wcs) * 3600.0
        except Exception:  # noqa: BLE001 - any WCS that cannot say falls back to keywords
            scales = None
        if scales is not None and np.all(np.isfinite(scales)) and np.all(scales > 0):
            return float(np.sqrt(scales[0] * scales[1]))
    return header_pixel_scale(image.header)


def _moment_fwhm(cut, x, y, window):
    """Second-moment FWHM of a background-subtracted cut-out about ``(x, y)``.

    Over ``window`` (bool, the same disc for a star and its model) and without clipping
    negative pixels: clipping would keep the noise's positive half, which widens a star by
    its noise (a 4.2 px PSF read as 5.9 px on a noisy image); unclipped, the noise averages
    out over the stars compared.
    """
    ny, nx = cut.shape
    border = np.concatenate([cut[0], cut[-1], cut[1:-1, 0], cut[1:-1, -1]])
    f = np.where(window, cut - np.median(border), 0.0)
    total = f.sum()
    if not total > 0:
        return np.nan
    yy, xx = np.mgrid[0:ny, 0:nx]
    r2 = (xx - x) ** 2 + (yy - y) ** 2
    m2 = np.sum(f * r2) / total / 2.0
    return float(_FWHM_SIGMA * np.sqrt(m2)) if m2 > 0 else np.nan


def psf_width_check(data, mask, table, psf, *, fwhm_guess=3.0, max_stars=30,
                    tolerance=1.3, source="the image"):
    """Compare the PSF model's width with the image's bright, isolated stars.

    For up to ``max_stars`` of the brightest fitted stars with a clean, isolated cut-out, the
    same second-moment FWHM is measured on the data and on the PSF model rendered at the
    fitted position and flux on the same pixels (so sampling and window biases cancel). A
    median ratio beyond ``tolerance`` either way warns: the PSF's oversampling, filter or
    instrument is likely wrong and every flux with it.

    Parameters
    ----------
    data : ndarray (ny, nx)
    mask : ndarray (ny, nx) bool or None
    table : QTable
        Catalog with ``x_fit``, ``y_fit``, ``flux_fit`` (and ``flags``).
    psf : PSF model with ``x_0``, ``y_0``, ``flux`` parameters.
    fwhm_guess : float, optional
        Pixels; sets the cut-out size (3 x FWHM radius).

    Returns
    -------
    result : dict or None
        ``{'psf_fwhm', 'star_fwhm', 'n_stars'}`` (pixels) or None when too few stars.

    Examples
    --------
    >>> from astropy.table import QTable
    >>> psf_width_check(np.zeros((9, 9)), None, QTable({'x_fit': [], 'y_fit': [],
    ...                 'flux_fit': []}), None) is None
    True
    """
    x = np.asarray(getattr(table["x_fit"], "value", table["x_fit"]), dtype=float)
    y = np.asarray(getattr(table["y_fit"], "value", table["y_fit"]), dtype=float)
    f = np.asarray(getattr(table["flux_fit"], "value", table["flux_fit"]), dtype=float)
    flags = np.asarray(table["flags"]) if "flags" in table.colnames else np.zeros(len(x), int)
    if "flux_err" in table.colnames:
        # bright stars only: the data's moments of a faint star are inflated by its noise
        ferr = np.asarray(getattr(table["flux_err"], "value", table["flux_err"]), dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            flags = np.where(np.isfinite(ferr) & (f > 50 * ferr), flags, -1)
    r = int(np.ceil(3.0 * min(max(float(fwhm_guess), 1.5), 10.0)))
    ny, nx = data.shape
    ok = (np.isfinite(x) & np.isfinite(y) & np.isfinite(f) & (f > 0) & (flags == 0)
          & (x >= r) & (y >= r) & (x < nx - r - 1) & (y < ny - r - 1))
    if len(x) > 1:
        # isolated: no other fitted star within two cut-out radii
        from scipy.spatial import cKDTree

        pts = np.column_stack([np.nan_to_num(x, nan=-1e9), np.nan_to_num(y, nan=-1e9)])
        d, _ = cKDTree(pts).query(pts, k=2)
        ok &= d[:, 1] > 2 * r
    order = np.flatnonzero(ok)[np.argsort(-f[ok])]
    ratios, psf_w, star_w = [], [], []
    model = psf.copy() if order.size else None
    for i in order:
        if len(ratios) >= max_stars:
            break
        ix, iy = int(round(x[i])), int(round(y[i]))
        sl = (slice(iy - r, iy + r + 1), slice(ix - r, ix + r + 1))
        if mask is not None and mask[sl].any():
            continue
        yy, xx = np.mgrid[sl]
        model.x_0, model.y_0, model.flux = x[i], y[i], f[i]
        rendered = np.asarray(model(xx.astype(float), yy.astype(float)), dtype=float)
        cx, cy = x[i] - (ix - r), y[i] - (iy - r)
        # the same pixels for star and model: the disc of the cut-out (not the model's own
        # footprint, which would truncate a star wider than a wrong, too narrow PSF)
        window = (xx - x[i]) ** 2 + (yy - y[i]) ** 2 <= r * r
        ws, wm = (_moment_fwhm(data[sl], cx, cy, window),
                  _moment_fwhm(rendered, cx, cy, window))
        if np.isfinite(ws) and np.isfinite(wm) and ws > 0 and wm > 0:
            ratios.append(wm / ws)
            psf_w.append(wm)
            star_w.append(ws)
    if len(ratios) < 3:
        return None
    ratio = float(np.median(ratios))
    result = {"psf_fwhm": float(np.median(psf_w)), "star_fwhm": float(np.median(star_w)),
              "n_stars": len(ratios)}
    if not 1.0 / tolerance <= ratio <= tolerance:
        warnings.warn(f"{source}: the PSF's width ({result['psf_fwhm']:.2f} px FWHM) does not "
                      f"match the bright stars' ({result['star_fwhm']:.2f} px, median of "
                      f"{len(ratios)}), so the fluxes are wrong; check the PSF's sampling "
                      "(--psf-oversampling), filter and instrument", UserWarning, stacklevel=2)
    return result


def available_memory():
    """Bytes of memory this process may still use (MemAvailable, or a cgroup limit).

    Returns None where the system does not say.

    Examples
    --------
    >>> m = available_memory(); m is None or m > 0
    True
    """
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = _read_text(path)
        if text is None:
            continue
        if text.isdigit() and int(text) < (1 << 60):
            used = 0
            for cur in ("/sys/fs/cgroup/memory.current",
                        "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
                value = _read_text(cur)
                if value is not None and value.isdigit():
                    used = int(value)
                    break
            limit = max(int(text) - used, 0)
            avail = limit if avail is None else min(avail, limit)
    return avail


def _read_text(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


#: bytes the fit engine holds per fitted stamp pixel: measured with tracemalloc at 150-190
#: for independent stars and ~400 for large groups (stamps, weights, model, Jacobian of 3
#: parameters, work copies and the group systems); the larger value is used
BYTES_PER_STAMP_PIXEL = 400


def fit_memory_bytes(n_stars, fit_shape):
    """Estimated peak memory of fitting ``n_stars`` stars with a ``fit_shape`` box.

    Examples
    --------
    >>> fit_memory_bytes(1000, (5, 5))  # 10 MB
    10000000
    """
    return int(n_stars) * int(np.prod(fit_shape)) * BYTES_PER_STAMP_PIXEL


def check_fit_memory(n_stars, fit_shape, *, source="the image", fraction=0.8):
    """Refuse (one-line error) a fit whose estimated memory exceeds what is available.

    Parameters
    ----------
    n_stars : int
    fit_shape : (int, int)
    source : str
        Names the image in the message.
    fraction : float
        Share of the available memory the fit may use.

    Raises
    ------
    CLIError
        With the estimate, the memory available and what to change.

    Examples
    --------
    >>> check_fit_memory(10, (5, 5))
    """
    from crowdphot.cli.errors import CLIError

    need = fit_memory_bytes(n_stars, fit_shape)
    avail = available_memory()
    if avail is not None and need > fraction * avail:
        raise CLIError(f"{source}: fitting {n_stars} stars with a {fit_shape[0]} x "
                       f"{fit_shape[1]} fit box needs about {_size(need)} of memory but "
                       f"{_size(avail)} is available; use a smaller --fit-shape, "
                       "--tile, or a higher --threshold")


def _size(nbytes):
    return f"{nbytes / 1e9:.3g} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.3g} MB"


class MemoryCheckedFinder:
    """A finder that checks the fit's memory estimate on the sources it found.

    Wraps any ``finder(data, mask=...)``; attributes are the wrapped finder's, so the
    photometry classes and the tiling see the original. The check runs between detection
    and the fit, so a fit that would not fit in memory is refused before it starts.
    """

    def __init__(self, finder, fit_shape, source="the image"):
        self.finder = finder
        self.fit_shape = tuple(fit_shape)
        self.source = source

    def __call__(self, data, mask=None):
        found = self.finder(data, mask=mask)
        if found is not None:
            check_fit_memory(len(found), self.fit_shape, source=self.source)
        return found

    def __getattr__(self, name):
        if name == "finder":  # during unpickling, before __init__ ran
            raise AttributeError(name)
        return getattr(self.finder, name)

    def __repr__(self):
        return repr(self.finder)
