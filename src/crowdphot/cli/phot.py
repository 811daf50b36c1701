"""``crowdphot phot``: PSF photometry of a real FITS image, end to end.

Reads SCI/ERR/DQ (or a single HDU), builds the finder/grouper/local background from the
options, fits (plain, iterative, forced from a catalog, or in tiles), adds sky coordinates when
the header has a celestial WCS, and writes the catalog and the optional residual image, figures
and DS9 region file. All options are checked before any work, and every file is written under a
temporary name and renamed into place.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from crowdphot.cli.catalog import add_sky_columns, init_table
from crowdphot.cli.errors import CLIError
from crowdphot.cli.psfload import load_psf
from crowdphot.cli.stats import robust_sigma

__all__ = ["run_phot", "robust_sigma", "write_ds9_regions", "init_table"]

def write_ds9_regions(table, path, *, radius=3.0, color="green"):
    """DS9 region file of the fitted positions (image coordinates), written atomically.

    Uses the ``regions`` package when installed, else writes the DS9 text format directly
    (DS9 image coordinates are 1-based: crowdphot's ``(0, 0)`` is DS9's ``(1, 1)``).

    Parameters
    ----------
    table : Table
        Catalog with ``x_fit`` and ``y_fit`` columns (rows with NaN positions are skipped).
    path : str or Path
        Output ``.reg`` file.
    radius : float, optional
        Circle radius in pixels.

    Examples
    --------
    >>> import tempfile, os
    >>> from astropy.table import QTable
    >>> p = os.path.join(tempfile.mkdtemp(), 'stars.reg')
    >>> write_ds9_regions(QTable({'x_fit': [9.0], 'y_fit': [4.0]}), p)
    >>> 'circle(10' in Path(p).read_text()
    True
    """
    from crowdphot.io.fits import atomic_write

    x = np.asarray(getattr(table["x_fit"], "value", table["x_fit"]), dtype=float)
    y = np.asarray(getattr(table["y_fit"], "value", table["y_fit"]), dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    with atomic_write(path) as tmp:
        try:
            from regions import CirclePixelRegion, PixCoord, Regions
        except ImportError:
            lines = ["# Region file format: DS9", f"global color={color}", "image"]
            lines += [f"circle({xi + 1:.4f},{yi + 1:.4f},{radius})"
                      for xi, yi in zip(x[ok], y[ok], strict=True)]
            tmp.write_text("\n".join(lines) + "\n")
        else:
            regs = Regions([CirclePixelRegion(PixCoord(xi, yi), radius=radius,
                                              visual={"color": color})
                            for xi, yi in zip(x[ok], y[ok], strict=True)])
            regs.write(str(tmp), format="ds9", overwrite=True)


def _values(col):
    return np.asarray(getattr(col, "value", col), dtype=float)


def _read_init(path, wcs, coords="auto"):
    from astropy.table import QTable

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"init catalog not found: {p}")
    try:
        catalog = QTable.read(p)
    except Exception as exc:  # noqa: BLE001 - astropy raises many types for bad tables
        raise CLIError(f"{p}: cannot read the init catalog ({' '.join(str(exc).split())})"
                       "; give an .ecsv, .fits or .csv table") from None
    try:
        return init_table(catalog, wcs, coords=coords, source=f"--init catalog {p}")
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _ext_arg(value):
    """FITS extension option: None for 'none', an int for digits, else the name."""
    if value is None or str(value).lower() in ("none", ""):
        return None
    return int(value) if str(value).isdigit() else value


def _check_writable(option, path):
    """Fail now, not after the fit, when ``path`` cannot be written (written atomically:
    a temporary file in its folder, renamed over it)."""
    import os

    folder = path.resolve().parent
    if path.is_dir():
        raise CLIError(f"{option}: {path} is a folder; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"{option}: cannot write into {folder} (permission denied); choose "
                       "another folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise CLIError(f"{option}: {path} exists and is read-only; remove it or choose "
                       "another name")


def _check_options(args):
    """Fail on inconsistent options before reading anything."""
    from crowdphot.cli.sky import check_sky_options
    from crowdphot.io.fits import table_format

    table_format(args.output)
    check_sky_options(args)
    for option, value in (("-o/--output", args.output), ("--residual", args.residual),
                          ("--regions", args.regions)):
        # a typo in a path should not silently create directory trees
        if value is not None and not Path(value).resolve().parent.is_dir():
            raise CLIError(f"{option}: folder {Path(value).parent} does not exist")
        if value is not None:
            _check_writable(option, Path(value))
    if args.plots:
        plots = Path(args.plots)
        if plots.exists() and not plots.is_dir():
            raise CLIError(f"--plots: {plots} exists and is not a folder")
        _check_writable("--plots", plots / "detections.png" if plots.is_dir() else plots)
    if getattr(args, "psf_oversampling", None) is not None and args.psf_oversampling < 1:
        raise CLIError(f"--psf-oversampling must be >= 1, got {args.psf_oversampling}")
    if args.fit_shape < 3 or args.fit_shape % 2 == 0:
        raise CLIError(f"--fit-shape must be an odd integer >= 3, got {args.fit_shape}")
    for name in ("threshold", "fwhm", "group_radius", "aperture_radius"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.local_bkg and not 0 <= args.local_bkg[0] < args.local_bkg[1]:
        raise CLIError(f"--local-bkg needs 0 <= R_IN < R_OUT, got {args.local_bkg}")
    if args.residual and not str(args.residual).lower().endswith((".fits", ".fit")):
        raise CLIError(f"--residual must be a .fits file, got {args.residual}")
    if args.iterative is not None and args.iterative < 1:
        raise CLIError(f"--iterative must be >= 1, got {args.iterative}")
    if args.init and args.iterative:
        raise CLIError("--init (forced photometry) cannot be combined with --iterative")
    if getattr(args, "bias_correction", False) and getattr(args, "likelihood",
                                                          "gaussian") == "poisson":
        raise CLIError("--bias-correction is for the Gaussian likelihood; --likelihood "
                       "poisson corrects its isolated stars itself")
    if (args.workers or args.scheduler) and not args.tile:
        raise CLIError("--workers/--scheduler need --tile")
    if args.tile:
        if args.tile < 16:
            raise CLIError(f"--tile must be >= 16 pixels, got {args.tile}")
        if args.iterative:
            raise CLIError("--tile cannot be combined with --iterative (iterative detection "
                           "runs on whole images; tile the mosaic yourself or drop --tile)")


def _finder(args, image):
    from crowdphot import DAOStarFinder, IRAFStarFinder

    threshold = args.threshold
    if threshold is None:
        if image.data is None:  # tiled run: estimate from a central sample, not the mosaic
            data, mask = image.sample  # without its sky (cli.sky.subtract_sky)
        else:
            data, mask = image.data, image.mask
        threshold = 5.0 * robust_sigma(data, mask)
        if not threshold > 0:
            raise CLIError(f"{args.image}: cannot estimate a detection threshold (blank "
                           "image?); give --threshold")
    cls = IRAFStarFinder if args.finder == "iraf" else DAOStarFinder
    return cls(threshold=threshold, fwhm=args.fwhm), threshold


def _photometry(args, image, psf, finder, init, sky=None):
    """Run the requested mode; returns ``(table, phot object or None)``.

    ``sky``: the map already subtracted from ``image.data`` (``--sky``); the Poisson
    likelihood puts it back into every pixel's expectation.
    """
    from crowdphot import (
        IterativePSFPhotometry,
        LocalBackground,
        MMMBackground,
        PSFPhotometry,
        SourceGrouper,
    )

    grouper = SourceGrouper(args.group_radius) if args.group_radius else None
    local_bkg = None
    if args.local_bkg:
        local_bkg = LocalBackground(args.local_bkg[0], args.local_bkg[1],
                                    bkg_estimator=MMMBackground())
    common = dict(grouper=grouper, aperture_radius=args.aperture_radius,
                  local_bkg_estimator=local_bkg, progress_bar=not args.no_progress,
                  group_warning_threshold=10**9)
    from crowdphot.cli.noise import noise_options

    common.update(noise_options(args, image))
    if fits_correct_bias(args, image):  # the fits correct themselves (and so do ASTs' fits)
        common["bias_correction"] = True
    # the Poisson likelihood takes its variances from the model, not from the ERR plane
    error = None if common.get("likelihood") == "poisson" else image.error
    data, sky_kw = image.data, {}
    if common.get("likelihood") == "poisson" and sky is not None and data is not None:
        data, sky_kw = data + sky, {"sky": sky}  # counts with their sky, and the sky map
    fit_shape = (args.fit_shape, args.fit_shape)
    if init is not None:
        # forced photometry: positions are held fixed, only fluxes are fitted
        psf = psf.copy()
        psf.x_0.fixed = True
        psf.y_0.fixed = True
        finder = None
    # DAOPHOT ALLSTAR: neighbours outside each group are subtracted (with the Poisson
    # likelihood their light is part of the expected counts)
    if not getattr(args, "no_subtract_neighbors", False):
        common["subtract_neighbors"] = True
        if not getattr(args, "no_merge", False):  # ALLSTAR's merge of unresolvable pairs
            common["merge_separation"] = 0.37 * args.fwhm
    if args.tile:
        from crowdphot.cli.sky import tiled_sky
        from crowdphot.pipeline.tiles import photometry_tiled

        # workers memory-map the file and read only their tiles: no pixels cross the network;
        # each task subtracts the sky from its pixels (Poisson: puts it in the expectation)
        table = photometry_tiled(image.planes, psf, fit_shape, finder=finder,
                                 init_params=init, tile_shape=args.tile,
                                 workers=args.workers, scheduler=args.scheduler,
                                 **tiled_sky(args, image), **common)
        return table, None
    if args.iterative:
        phot = IterativePSFPhotometry(psf, fit_shape, finder, maxiters=args.iterative,
                                      mode=args.mode, **common)
        return phot(data, mask=image.mask, error=error, **sky_kw), phot
    phot = PSFPhotometry(psf, fit_shape, finder=finder, **common)
    return phot(data, mask=image.mask, error=error, init_params=init, **sky_kw), phot


def fits_correct_bias(args, image):
    """Whether ``--bias-correction`` runs inside the fits: with an ERR plane (a tiled run's
    tasks read theirs from the file). Without one the catalog is corrected afterwards, with
    the robust sky noise as every pixel's error."""
    if not getattr(args, "bias_correction", False):
        return False
    if args.tile:
        return getattr(image.planes, "err_ext", None) is not None
    return image.error is not None


def _correct_bias(args, image, psf, table, sky_info):
    """``--bias-correction``: subtract the fits' first-order (Cox & Snell) bias in place.

    With an ERR plane the fits did it (:func:`fits_correct_bias`); without one the robust
    sky noise is every pixel's error (the stars' own photon noise then left out, which makes
    the correction of bright stars too small, where it is negligible anyway).
    """
    from crowdphot.psf._biascorr import correct_table

    if fits_correct_bias(args, image):
        table.meta["bias_correction"] = True  # done by the fits
        return
    if image.data is None:
        raise CLIError("--bias-correction with --tile needs an ERR extension (or the image "
                       "in memory: add --residual)")
    sigma = sky_info.get("sky_rms") or robust_sigma(image.data, image.mask)
    error = np.broadcast_to(np.float64(sigma), image.data.shape)
    fit_shape = (args.fit_shape, args.fit_shape)
    if args.init:  # forced photometry: positions held, so the fit is linear and unbiased
        psf = psf.copy()
        psf.x_0.fixed = True
        psf.y_0.fixed = True
    bias = correct_table(table, psf, fit_shape, error, image.mask)
    table.meta["bias_correction"] = True
    table.meta["n_bias_corrected"] = int(np.count_nonzero(np.all(np.isfinite(bias), axis=1)))


def _model_image(psf, table, shape, phot, progress_bar):
    """Image of the fitted stars (from ``phot`` when there is one, else from the table)."""
    if phot is not None:
        model = phot.make_model_image(shape)
        return np.asarray(getattr(model, "value", model), dtype=float)
    from astropy.table import QTable

    from crowdphot.datasets.simulation import make_model_image

    x, y, f = (_values(table[c]) for c in ("x_fit", "y_fit", "flux_fit"))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(f)
    params = QTable({"x_0": x[ok], "y_0": y[ok], "flux": f[ok]})
    return make_model_image(tuple(shape), psf, params, progress_bar=progress_bar)


def run_phot(args):
    """Run ``crowdphot phot`` with parsed ``args``; returns the exit code.

    Parameters
    ----------
    args : argparse.Namespace
        As built by ``crowdphot.cli.app.build_parser`` for the ``phot`` command.

    Returns
    -------
    code : int
        0 on success; user errors raise ``CLIError``/``ValueError`` for ``main`` to report.
    """

    from crowdphot.io.fits import FitsPlanes, read_image, write_fits_image, write_table

    t0 = time.perf_counter()
    _check_options(args)
    if args.plots:  # fail before the run, not after it
        from crowdphot.core.optional import require_matplotlib

        try:
            require_matplotlib("crowdphot phot --plots")
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    ext, err_ext, dq_ext = (_ext_arg(v) for v in (args.ext, args.err_ext, args.dq_ext))
    from crowdphot.io.fits import parse_dq_bits

    parse_dq_bits(args.dq_bits)  # names, 6 or 0x6: a bad one fails now
    dq_bits = args.dq_bits  # names are read per telescope (HST's SATURATED is not JWST's)
    if args.tile and not (args.residual or args.plots or getattr(args, "sky_out", None)):
        # out-of-core: header now, pixels only inside the tile tasks (--sky-out writes the
        # whole-image map: that needs the image in memory)
        planes = FitsPlanes(args.image, ext=ext, err_ext=err_ext, dq_ext=dq_ext,
                            dq_bits=dq_bits)
        image = planes.header_info()
    else:
        image = read_image(args.image, ext=ext, err_ext=err_ext, dq_ext=dq_ext,
                           dq_bits=dq_bits)
        planes = FitsPlanes(args.image, ext=ext, err_ext=err_ext, dq_ext=dq_ext,
                            dq_bits=dq_bits) if args.tile else None
    image.planes = planes
    from crowdphot.cli.psfchoice import check_psf_matches_image, resolve_psf_spec

    psf_spec = resolve_psf_spec(args.psf, image)
    from crowdphot.cli.checks import image_pixel_scale, psf_width_check

    psf = load_psf(psf_spec, detector_id=args.psf_detector,
                   oversampling=getattr(args, "psf_oversampling", None),
                   image_scale=image_pixel_scale(image), progress_bar=not args.no_progress)
    check_psf_matches_image(psf_spec, psf, image)
    init = _read_init(args.init, image.wcs, getattr(args, "init_coords", "auto")) \
        if args.init else None
    from crowdphot.cli.sky import subtract_sky, write_sky

    sky, sky_info = subtract_sky(args, image)  # before finding: no sky in the fits or kernel
    if getattr(args, "refine_psf", False):
        from crowdphot.cli.psf import refine_for_phot

        psf = refine_for_phot(psf, image, args)
    finder, threshold = (None, None) if init is not None else _finder(args, image)
    from crowdphot.cli.checks import MemoryCheckedFinder, check_fit_memory

    fit_box = (args.fit_shape, args.fit_shape)
    if init is not None:
        check_fit_memory(len(init), fit_box, source=str(args.image))
    else:
        finder = MemoryCheckedFinder(finder, fit_box, source=str(args.image))
    with warnings.catch_warnings():
        # "no sources were found" is this command's own one-line error below
        warnings.filterwarnings("ignore", message="(?i)no sources were found")
        table, phot = _photometry(args, image, psf, finder, init, sky)
    if (init is None and not args.tile and image.data is not None
            and image.saturated is not None):
        from crowdphot.cli.saturated import add_saturated_stars

        table, n_saturated = add_saturated_stars(
            table, image, psf, fit_shape=args.fit_shape, fwhm=args.fwhm,
            aperture_radius=args.aperture_radius, progress_bar=False)
        if n_saturated:
            phot = None  # the model image is rendered from the catalog, saturated stars too
    if table is None or len(table) == 0:
        if threshold is None:
            raise CLIError(f"{args.image}: no star of the --init catalog could be fitted")
        raise CLIError(f"{args.image}: no stars found (threshold {threshold:.4g}); "
                       "try a lower --threshold")
    if init is not None and not np.any(np.isfinite(_values(table["flux_fit"]))):
        # every forced position missed the usable image: most likely the wrong catalog or WCS
        raise CLIError(f"{args.image}: none of the {len(table)} --init positions could be "
                       "fitted (off the image or fully masked?); check the catalog's columns "
                       "or its sky coordinates")
    from crowdphot.cli.significance import apply_min_snr

    table, n_dropped = apply_min_snr(args, image, psf, table, sky_info)
    if args.tile:  # the same cut, tile by tile from the file (the tasks' sky subtracted)
        from crowdphot.cli.significance_tiled import apply_min_snr_tiled
        from crowdphot.cli.sky import tiled_sky

        sigma = sky_info.get("sky_rms")
        if sigma is None:
            data, mask = image.sample if image.data is None else (image.data, image.mask)
            sigma = robust_sigma(data, mask)
        table, n_dropped = apply_min_snr_tiled(args, image, psf, table,
                                               tiled_sky(args, image), sigma)
    if n_dropped:
        phot = None  # the model image is rendered from the kept rows
    if getattr(args, "bias_correction", False):
        _correct_bias(args, image, psf, table, sky_info)
        phot = None  # the model image is rendered from the corrected catalog
    if image.wcs is not None:
        add_sky_columns(table, image.wcs)
    else:
        warnings.warn(f"{args.image}: no ra/dec columns in the catalog: "
                      f"{image.wcs_problem or 'no celestial WCS'}", UserWarning, stacklevel=2)
    if image.data is not None:
        width = psf_width_check(image.data, image.mask, table, psf, fwhm_guess=args.fwhm,
                                source=str(args.image))
        if width is not None:
            table.meta["psf_fwhm_px"] = round(width["psf_fwhm"], 4)
            table.meta["star_fwhm_px"] = round(width["star_fwhm"], 4)
    if image.unit:
        table.meta["BUNIT"] = str(image.unit)
        _attach_unit(table, image.unit, args.image)
    if image.keyword("PIXAR_SR") is not None:
        # JWST: the nominal pixel solid angle, to turn MJy/sr x pixels into MJy
        table.meta["PIXAR_SR"] = float(image.keyword("PIXAR_SR"))
    table.meta["image"] = str(args.image)
    table.meta["psf"] = str(psf_spec)
    if threshold is not None:
        table.meta["threshold"] = float(threshold)
    table.meta.update(sky_info)
    if init is not None:
        table.meta["init"] = str(args.init)
        table.meta["init_coords"] = init.meta.get("coords", "pixel")
    model = None
    if args.residual or args.plots:
        model = _model_image(psf, table, image.data.shape, phot, not args.no_progress)
    # every result is computed: only writing is left
    write_table(table, args.output)
    write_sky(args, image, sky)
    if args.residual:
        write_fits_image(_residual(image, model), args.residual,
                         header=_residual_header(image))
    if args.regions:
        write_ds9_regions(table, args.regions, radius=max(2.0, args.fwhm))
    if args.plots:
        _phot_plots(Path(args.plots), image, table, model, args)
    flags = np.asarray(table["flags"]) if "flags" in table.colnames else np.zeros(len(table))
    print(f"{len(table)} stars fitted ({int(np.count_nonzero(flags == 0))} unflagged) in "
          f"{time.perf_counter() - t0:.2f} s -> {args.output}")
    return 0


# columns photutils gives the data unit when the data are a Quantity
_UNIT_COLUMNS = ("flux_init", "flux_fit", "flux_err", "flux_crlb", "local_bkg")


def _attach_unit(table, bunit, path):
    """Give the flux columns the image's unit (BUNIT), as photutils does for Quantity data."""
    from crowdphot.io.fits import parse_bunit

    unit = parse_bunit(bunit)
    if unit is None:
        warnings.warn(f"{path}: BUNIT {str(bunit)!r} is not a unit astropy reads; the flux "
                      "columns have no unit (BUNIT is kept in the metadata)", UserWarning,
                      stacklevel=3)
        return
    for name in _UNIT_COLUMNS:
        if name in table.colnames and getattr(table[name], "unit", None) is None:
            table[name] = _values(table[name]) * unit
    table.meta["flux_unit"] = unit.to_string()
    if "sr" in [b.name for b in unit.bases if hasattr(b, "name")]:
        table.meta["flux_unit_note"] = ("sum over pixels of a surface brightness: multiply "
                                        "by the pixel solid angle (PIXAR_SR) for a flux")


def _residual(image, model):
    """data - model, NaN where the input was unusable (masked, non-finite, bad DQ)."""
    residual = image.data - model
    if image.mask is not None:
        residual[image.mask] = np.nan
    return residual


def _residual_header(image):
    """The science header (WCS with its SIP distortion, BUNIT, ...) for the residual image."""
    from crowdphot.io.fits import image_header_for

    header = image_header_for(image.header)
    # what was observed, from the primary header where JWST keeps it
    for key in ("TELESCOP", "INSTRUME", "DETECTOR", "FILTER", "PUPIL", "DATE-OBS"):
        value = image.keyword(key)
        if value is not None and key not in header:
            header[key] = value
    if image.unit and "BUNIT" not in header:
        header["BUNIT"] = str(image.unit)
    header["COMMENT"] = ("data minus the fitted PSF models (crowdphot phot); NaN where the "
                         "input was unusable")
    return header


def _phot_plots(out, image, table, model, args):
    from crowdphot.io.fits import atomic_write
    from crowdphot.viz.figures import plot_data_model_residual, plot_detections, plot_groups

    data = np.where(image.mask, np.nan, image.data) if image.mask is not None else image.data
    x, y = _values(table["x_fit"]), _values(table["y_fit"])
    radius = max(3.0, 2.0 * args.fwhm)
    from crowdphot.io.fits import parse_bunit

    parsed = parse_bunit(image.unit)
    unit = parsed.to_string() if parsed is not None else (str(image.unit) if image.unit
                                                          else "data units")
    figs = {
        "detections.png": lambda: plot_detections(data, x, y, radius=radius, unit=unit,
                                                  title=f"{len(x)} fitted stars"),
        "data_model_residual.png": lambda: plot_data_model_residual(data, model,
                                                                    data - model, unit=unit),
    }
    if args.group_radius and "group_id" in table.colnames:
        figs["groups.png"] = lambda: plot_groups(data, x, y, np.asarray(table["group_id"]),
                                                 radius=radius)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    for name, make in tqdm(figs.items(), desc="Figures", total=len(figs), unit="fig",
                           disable=args.no_progress):
        with atomic_write(out / name) as tmp:
            make().savefig(tmp, dpi=90, format="png")
