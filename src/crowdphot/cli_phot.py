"""``crowdphot phot``: PSF photometry of a real FITS image, end to end.

Reads SCI/ERR/DQ (or a single HDU), builds the finder/grouper/local background from the
options, fits, adds sky coordinates when the header has a celestial WCS, and writes the catalog
(and optionally the residual image, figures and a DS9 region file) atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["run_phot", "robust_sigma", "write_ds9_regions"]


def robust_sigma(data, mask=None):
    """1.4826 x median absolute deviation of the unmasked, finite pixels.

    Examples
    --------
    >>> round(robust_sigma(np.random.default_rng(1).normal(0, 2, (200, 200))), 1)
    2.0
    """
    values = np.asarray(data)
    good = np.isfinite(values)
    if mask is not None:
        good &= ~mask
    v = values[good]
    if v.size > 1_000_000:  # a systematic subsample keeps this O(1e6) on big mosaics
        v = v[:: v.size // 1_000_000]
    med = np.median(v)
    return float(1.4826 * np.median(np.abs(v - med)))


def write_ds9_regions(table, path, *, radius=3.0, color="green"):
    """DS9 region file of fitted positions (image coordinates), written atomically.

    Uses the ``regions`` package when installed, else writes the DS9 text format directly.
    """
    from .fitsio import atomic_path

    x = np.asarray(table["x_fit"], dtype=float)
    y = np.asarray(table["y_fit"], dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    path = Path(path)
    tmp = atomic_path(path)
    try:
        try:
            from regions import CirclePixelRegion, PixCoord, Regions

            regs = Regions([CirclePixelRegion(PixCoord(xi, yi), radius=radius,
                                              visual={"color": color})
                            for xi, yi in zip(x[ok], y[ok], strict=True)])
            regs.write(str(tmp), format="ds9", overwrite=True)
        except ImportError:
            lines = ["# Region file format: DS9", f"global color={color}", "image"]
            # DS9 image coordinates are 1-based: our (0, 0) is DS9's (1, 1)
            lines += [f"circle({xi + 1:.4f},{yi + 1:.4f},{radius})"
                      for xi, yi in zip(x[ok], y[ok], strict=True)]
            tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_init(path):
    from astropy.table import QTable

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"init catalog not found: {p}")
    try:
        return QTable.read(p)
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for bad tables
        raise ValueError(f"{p}: cannot read the init catalog ({exc})") from None


def _ext_arg(value):
    """FITS extension option: None for 'none', an int for digits, else the name."""
    if value is None or str(value).lower() in ("none", ""):
        return None
    return int(value) if str(value).isdigit() else value


def run_phot(args):
    """Run ``crowdphot phot`` with parsed ``args``; returns the exit code."""
    import astropy.units as u

    from . import (
        DAOStarFinder,
        IRAFStarFinder,
        IterativePSFPhotometry,
        LocalBackground,
        MMMBackground,
        PSFPhotometry,
        SourceGrouper,
    )
    from .cli import CLIError, load_psf
    from .fitsio import read_image, write_fits_image, write_table

    t0 = time.perf_counter()
    ext, err_ext, dq_ext = (_ext_arg(v) for v in (args.ext, args.err_ext, args.dq_ext))
    dq_bits = int(args.dq_bits) if args.dq_bits.isdigit() else args.dq_bits.split(",")
    image = read_image(args.image, ext=ext, err_ext=err_ext, dq_ext=dq_ext, dq_bits=dq_bits)
    psf = load_psf(args.psf)
    threshold = args.threshold
    if threshold is None:
        threshold = 5.0 * robust_sigma(image.data, image.mask)
        if threshold <= 0:
            raise CLIError("cannot estimate a detection threshold (blank image?); "
                           "give --threshold")
    finder_cls = IRAFStarFinder if args.finder == "iraf" else DAOStarFinder
    finder = finder_cls(threshold=threshold, fwhm=args.fwhm)
    grouper = SourceGrouper(args.group_radius) if args.group_radius else None
    local_bkg = None
    if args.local_bkg:
        local_bkg = LocalBackground(args.local_bkg[0], args.local_bkg[1], MMMBackground())
    init = _read_init(args.init) if args.init else None
    if init is not None:
        # forced photometry: positions are held fixed, only fluxes are fitted
        psf = psf.copy()
        psf.x_0.fixed = True
        psf.y_0.fixed = True
    common = dict(grouper=grouper, aperture_radius=args.aperture_radius,
                  local_bkg_estimator=local_bkg, progress_bar=not args.no_progress,
                  group_warning_threshold=10**9)
    fit_shape = (args.fit_shape, args.fit_shape)
    if args.tile:
        from .tiled import photometry_tiled

        table = photometry_tiled(image.data, psf, fit_shape, finder=finder,
                                 mask=image.mask, error=image.error, tile_shape=args.tile,
                                 workers=args.workers, scheduler=args.scheduler, **common)
        residual_maker = None
    elif args.iterative and init is None:
        phot = IterativePSFPhotometry(psf, fit_shape, finder, maxiters=args.iterative,
                                      mode=args.mode, **common)
        table = phot(image.data, mask=image.mask, error=image.error)
        residual_maker = phot
    else:
        phot = PSFPhotometry(psf, fit_shape, finder=None if init is not None else finder,
                             **common)
        table = phot(image.data, mask=image.mask, error=image.error, init_params=init)
        residual_maker = phot
    if table is None or len(table) == 0:
        raise CLIError(f"{args.image}: no stars found (threshold {threshold:.4g}); "
                       "try a lower --threshold")
    if image.wcs is not None:
        x = np.asarray(table["x_fit"], dtype=float)
        y = np.asarray(table["y_fit"], dtype=float)
        ra, dec = image.wcs.pixel_to_world_values(x, y)
        table["ra"] = np.asarray(ra) * u.deg
        table["dec"] = np.asarray(dec) * u.deg
    if image.unit:
        table.meta["BUNIT"] = image.unit
    table.meta["image"] = str(args.image)
    table.meta["psf"] = str(args.psf)
    write_table(table, args.output)
    if args.residual:
        if residual_maker is None:
            raise CLIError("--residual is not available with --tile")
        write_fits_image(residual_maker.make_residual_image(image.data), args.residual,
                         header=None)
    if args.regions:
        write_ds9_regions(table, args.regions)
    if args.plots:
        _phot_plots(Path(args.plots), image.data, table, residual_maker)
    n_ok = int(np.count_nonzero(np.asarray(table["flags"]) == 0))
    print(f"{len(table)} stars fitted ({n_ok} unflagged) in {time.perf_counter() - t0:.2f} s "
          f"-> {args.output}")
    return 0


def _phot_plots(out, data, table, residual_maker):
    from .plotting import plot_data_model_residual, plot_detections

    out.mkdir(parents=True, exist_ok=True)
    x = np.asarray(table["x_fit"], dtype=float)
    y = np.asarray(table["y_fit"], dtype=float)
    plot_detections(data, x, y, radius=8).savefig(out / "detections.png", dpi=90)
    if residual_maker is not None:
        model = residual_maker.make_model_image(data.shape)
        plot_data_model_residual(data, model, data - model).savefig(
            out / "data_model_residual.png", dpi=90)
