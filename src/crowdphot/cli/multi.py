"""``crowdphot phot a.fits b.fits ...``: one joint fit of several exposures in sky coordinates.

Each file brings its own pixels, ERR, DQ, WCS and PSF; the filter is the header's FILTER
keyword (else the file name). PSFs: ``--psf FILE`` for all files, ``--psf
FILTER=FILE[,FILTER=FILE...]`` per filter (an item without ``FILTER=`` is the default for the
other filters; ``--psf`` may also be repeated, one item each), else the built-in grid from
each header. ``--flux-per-exposure`` fits one flux per exposure (``flux_<FILTER>_<k>``, k the
file's index) with the shared position. Sources come from ``--init`` (ra/dec,
or x/y in the first file) or from detection on the combined signal-to-noise stack of all
files (``--threshold`` is then in units of the stack's noise, default 5). ``--residual
R.fits`` writes one residual image per file, ``R_<file stem>.fits`` (atomically). All-star
passes unless ``--no-subtract-neighbors``; ``--group-radius`` is in the first file's pixels.
``--regions R.reg`` writes the fitted sky positions as DS9 fk5 circles. ``--plots DIR`` writes
per file the fitted positions on the data and data / model / residual
(matplotlib). ``--tile N`` fits in sky tiles of N pixels of the first file
(:func:`crowdphot.pipeline.multi_tiles.fit_exposures_tiled`; ``--workers`` for local Dask
workers); without ``--init`` the sources are detected on the combined stack tile by tile
(:func:`crowdphot.pipeline.multi_tiles.detect_tiled`); with ``--sky none`` and no
``--residual``/``--plots`` the files are then never read whole (each tile task reads its
boxes), so they may be larger than memory.
The catalog has ``ra``, ``dec``, ``ra_err``, ``dec_err``, ``flux_<FILTER>``,
``flux_err_<FILTER>``, ``n_exposures`` and ``flags`` (see :func:`crowdphot.fit_exposures`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crowdphot.cli.errors import CLIError
from crowdphot.cli.psfload import load_psf

__all__ = ["run_phot_multi", "psf_specs", "write_sky_regions"]

# single-image options a joint run does not support yet (name, value when unused)
_UNSUPPORTED = (("refine_psf", False), ("iterative", None), ("bias_correction", False))


def _read(path, args):
    from crowdphot.cli.phot import _ext_arg
    from crowdphot.cli.sky import subtract_sky
    from crowdphot.io.fits import read_image

    ext, err_ext, dq_ext = (_ext_arg(v) for v in (args.ext, args.err_ext, args.dq_ext))
    image = read_image(path, ext=ext, err_ext=err_ext, dq_ext=dq_ext, dq_bits=args.dq_bits)
    if image.wcs is None:
        raise CLIError(f"{path}: no celestial WCS ({image.wcs_problem or 'no WCS keywords'}); "
                       "a joint fit of several files needs one per file")
    subtract_sky(args, image)
    return image


def psf_specs(value):
    """``--psf`` as ``{filter: spec}`` plus a default (key None); ``value`` is one string or
    the list of a repeated ``--psf``.

    Examples
    --------
    >>> psf_specs("F150W=a.fits,F200W=b.fits")
    {'F150W': 'a.fits', 'F200W': 'b.fits'}
    >>> psf_specs(["F150W=a.fits", "F200W=b.fits,c.fits"])
    {'F150W': 'a.fits', 'F200W': 'b.fits', None: 'c.fits'}
    >>> psf_specs("psf.fits"), psf_specs(None)
    ({None: 'psf.fits'}, {None: None})
    """
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return {None: None}
    out = {}
    for one in (value if isinstance(value, (list, tuple)) else [value]):
        for key, spec in _psf_spec(one).items():
            if key in out:
                raise CLIError(f"--psf gives {'a PSF without FILTER=' if key is None else key} "
                               "more than once")
            out[key] = spec
    return out


def _psf_spec(value):
    if Path(str(value)).is_file():
        return {None: str(value)}
    out = {}
    for item in str(value).split(","):
        item = item.strip()
        name, sep, spec = item.partition("=")
        if sep and name and all(c.isalnum() or c in "_-" for c in name):
            if not spec:
                raise CLIError(f"--psf {item!r}: give FILTER=FILE")
            if name in out:
                raise CLIError(f"--psf gives {name} more than once")
            out[name] = spec
        elif item:
            if None in out:
                raise CLIError(f"--psf {value!r}: more than one PSF without FILTER=")
            out[None] = item
    return out


def _psf(specs, args, image, filt):
    from crowdphot.cli.checks import image_pixel_scale
    from crowdphot.cli.psfchoice import check_psf_matches_image, resolve_psf_spec

    spec = resolve_psf_spec(specs.get(filt, specs.get(None)), image)
    psf = load_psf(spec, detector_id=args.psf_detector,
                   oversampling=getattr(args, "psf_oversampling", None),
                   image_scale=image_pixel_scale(image), progress_bar=False)
    check_psf_matches_image(spec, psf, image)
    return psf


def _catalog(args, first):
    from astropy.table import QTable, Table

    if args.init:
        p = Path(args.init)
        if not p.is_file():
            raise FileNotFoundError(f"init catalog not found: {p}")
        cat = QTable.read(p)
        if "ra" in cat.colnames and "dec" in cat.colnames:
            return cat
        for xn, yn in (("x", "y"), ("x_init", "y_init"), ("x_fit", "y_fit")):
            if xn in cat.colnames and yn in cat.colnames:
                ra, dec = first.wcs.all_pix2world(np.asarray(cat[xn], dtype=float),
                                                  np.asarray(cat[yn], dtype=float), 0)
                return Table({"ra": ra, "dec": dec})
        raise CLIError(f"{p}: the --init catalog needs ra/dec (or x/y in the first image) "
                       "columns")
    return None  # detection on the combined stack (fit_exposures)


def write_sky_regions(table, path, *, radius_arcsec=0.3, color="green"):
    """DS9 region file of fitted sky positions (fk5 circles), written atomically.

    Examples
    --------
    >>> import os, tempfile
    >>> from astropy.table import Table
    >>> p = os.path.join(tempfile.mkdtemp(), "stars.reg")
    >>> write_sky_regions(Table({"ra": [10.5, np.nan], "dec": [-5.25, 1.0]}), p)
    >>> Path(p).read_text().splitlines()[-1]
    'circle(10.50000000,-5.25000000,0.300")'
    """
    from astropy import units as u

    from crowdphot.io.fits import atomic_write

    def deg(col):
        if getattr(col, "unit", None) is not None:
            return np.asarray(u.Quantity(col).to_value(u.deg), dtype=float)
        return np.asarray(col, dtype=float)

    ra, dec = deg(table["ra"]), deg(table["dec"])
    ok = np.isfinite(ra) & np.isfinite(dec)
    lines = ["# Region file format: DS9", f"global color={color}", "fk5"]
    lines += [f'circle({r:.8f},{d:.8f},{radius_arcsec:.3f}")'
              for r, d in zip(ra[ok], dec[ok], strict=True)]
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _write_plots(args, paths, images, exps, table, residuals):
    """Per exposure: the fitted positions on the data, and data / model / residual."""
    from crowdphot.io.coords import parse_bunit
    from crowdphot.io.fits import atomic_write
    from crowdphot.viz.figures import plot_data_model_residual, plot_detections

    out = Path(args.plots)
    out.mkdir(parents=True, exist_ok=True)
    ra = np.asarray(table["ra"].to_value("deg"))
    dec = np.asarray(table["dec"].to_value("deg"))
    ok = np.isfinite(ra) & np.isfinite(dec)
    written = []
    for p, image, e, res in zip(paths, images, exps, residuals, strict=True):
        data = np.where(e.mask, np.nan, e.data) if e.mask is not None else e.data
        x, y = e.wcs.all_world2pix(ra[ok], dec[ok], 0, quiet=True)
        parsed = parse_bunit(image.unit)
        unit = parsed.to_string() if parsed is not None else (str(image.unit) if image.unit
                                                              else "data units")
        stem = Path(p).stem
        figs = {f"detections_{stem}.png": lambda d=data, x=x, y=y, u=unit, f=e.filter_name:
                plot_detections(d, np.asarray(x), np.asarray(y), radius=3.0, unit=u,
                                title=f"{len(x)} sources ({f})"),
                f"data_model_residual_{stem}.png": lambda d=data, r=res, u=unit:
                plot_data_model_residual(d, d - r, r, unit=u)}
        for name, make in figs.items():
            with atomic_write(out / name) as tmp:
                make().savefig(tmp, dpi=90, format="png")
            written.append(str(out / name))
    return written


def _write_residuals(args, paths, images, exps, table):
    from crowdphot.cli.phot import _residual_header
    from crowdphot.io.fits import write_fits_image
    from crowdphot.pipeline.multi_sky import residual_images

    base = Path(args.residual)
    written = []
    for p, image, res in zip(paths, images, residual_images(exps, table), strict=True):
        out = base.with_name(f"{base.stem}_{Path(p).stem}{base.suffix or '.fits'}")
        write_fits_image(res, out, header=_residual_header(image))
        written.append(str(out))
    return written


def _lazy(args):
    """Tiles with no sky to subtract and no residuals or plots: files stay on disk."""
    from crowdphot.cli.sky import sky_mode

    return bool(args.tile) and sky_mode(args)[0] == "none" and not args.residual \
        and not args.plots


def _run_lazy(args, paths, specs, t0):
    """Tiled joint fit of files read box by box (:class:`ExposureFile`)."""
    from crowdphot.cli.phot import _ext_arg
    from crowdphot.io.fits import FitsPlanes, write_table
    from crowdphot.pipeline.multi_tiles import ExposureFile, fit_exposures_tiled

    ext, err_ext, dq_ext = (_ext_arg(v) for v in (args.ext, args.err_ext, args.dq_ext))
    infos = [FitsPlanes(p, ext=ext, err_ext=err_ext, dq_ext=dq_ext,
                        dq_bits=args.dq_bits).header_info() for p in paths]
    for p, info in zip(paths, infos, strict=True):
        if info.wcs is None:
            raise CLIError(f"{p}: no celestial WCS ({info.wcs_problem or 'no WCS keywords'}); "
                           "a joint fit of several files needs one per file")
    names = [str(info.keyword("FILTER") or Path(p).stem) for p, info in zip(paths, infos,
                                                                            strict=True)]
    unknown = sorted(k for k in specs if k is not None and k not in names)
    if unknown:
        raise CLIError(f"--psf names filter(s) {', '.join(unknown)} that no file has")
    files = [ExposureFile(p, _psf(specs, args, info, filt), filt, ext=ext, err_ext=err_ext,
                          dq_ext=dq_ext, dq_bits=args.dq_bits, name=str(p))
             for p, info, filt in zip(paths, infos, names, strict=True)]
    if len({f.unit for f in files}) > 1:
        raise CLIError("the files have different units (BUNIT): "
                       + ", ".join(f"{f.name}: {f.unit or 'none'}" for f in files))
    cat = _catalog(args, infos[0])
    sep = None if not args.group_radius else float(args.group_radius) * files[0].pixel_scale()
    table = fit_exposures_tiled(
        files, cat, tile_size=args.tile * files[0].pixel_scale(), workers=args.workers,
        fit_shape=(args.fit_shape, args.fit_shape), group_separation=sep,
        subtract_neighbors=not getattr(args, "no_subtract_neighbors", False),
        detect_threshold=args.threshold if args.threshold else 5.0,
        flux_per="exposure" if getattr(args, "flux_per_exposure", False) else "filter")
    write_table(table, args.output)
    if args.regions:
        write_sky_regions(table, args.regions)
    print(f"{len(table)} sources fitted jointly in {len(files)} exposures read tile by tile "
          f"({', '.join(sorted(set(names)))}) in {time.perf_counter() - t0:.2f} s; wrote "
          f"{args.output}")
    return 0


def run_phot_multi(args, paths):
    """Jointly fit the FITS files ``paths`` with the options of ``crowdphot phot``.

    Parameters
    ----------
    args : argparse.Namespace
        As built for the ``phot`` command.
    paths : list of str
        Two or more FITS images.

    Returns
    -------
    code : int
        0 on success; user errors raise ``CLIError``/``ValueError``.
    """
    from astropy import units as u

    from crowdphot.io.fits import write_table
    from crowdphot.pipeline.multi import Exposure, fit_exposures
    from crowdphot.pipeline.multi_sky import detect_on_stack

    t0 = time.perf_counter()
    for name, unused in _UNSUPPORTED:
        if getattr(args, name, unused) not in (unused, None, False):
            raise CLIError(f"--{name.replace('_', '-')} is not supported with several images "
                           "yet")
    flux_per = "exposure" if getattr(args, "flux_per_exposure", False) else "filter"
    if args.residual and not str(args.residual).lower().endswith((".fits", ".fit")):
        raise CLIError(f"--residual must be a .fits file name, got {args.residual}")
    specs = psf_specs(args.psf)
    if _lazy(args):
        return _run_lazy(args, paths, specs, t0)
    images = [_read(p, args) for p in paths]
    names = [str(image.keyword("FILTER") or Path(p).stem) for p, image in zip(paths, images,
                                                                              strict=True)]
    unknown = sorted(k for k in specs if k is not None and k not in names)
    if unknown:
        raise CLIError(f"--psf names filter(s) {', '.join(unknown)} that no file has (files' "
                       f"filters: {', '.join(sorted(set(names)))})")
    units = {}
    exps = []
    for p, image, filt in zip(paths, images, names, strict=True):
        data = image.data
        err = image.error
        units[p] = image.unit
        if image.unit:
            try:
                unit = u.Unit(image.unit)
            except ValueError:
                raise CLIError(f"{p}: BUNIT {image.unit!r} is not a unit astropy reads") from None
            data = data * unit
            err = None if err is None else err * unit
        exps.append(Exposure(data, err, image.mask, image.wcs, _psf(specs, args, image, filt),
                             filt, name=str(p)))
    if len({e.unit for e in exps}) > 1:
        raise CLIError("the files have different units (BUNIT): "
                       + ", ".join(f"{p}: {units[p] or 'none'}" for p in paths))
    if len({e.error is None for e in exps}) > 1:
        raise CLIError("some files have an ERR extension and others not; give --err-ext none "
                       "to fit all with unit weights")
    cat = _catalog(args, images[0])
    sep = None
    if args.group_radius:
        sep = float(args.group_radius) * exps[0].pixel_scale()
    opts = {"fit_shape": (args.fit_shape, args.fit_shape), "group_separation": sep,
            "subtract_neighbors": not getattr(args, "no_subtract_neighbors", False)}
    threshold = args.threshold if args.threshold else 5.0
    opts["flux_per"] = flux_per
    if args.tile:  # without --init: detection on the stack tile by tile
        opts["detect_threshold"] = threshold
    elif cat is None:
        cat = detect_on_stack(exps, threshold=threshold)
    if args.tile:
        from crowdphot.pipeline.multi_tiles import fit_exposures_tiled

        table = fit_exposures_tiled(exps, cat, tile_size=args.tile * exps[0].pixel_scale(),
                                    workers=args.workers, **opts)
    else:
        table = fit_exposures(exps, cat, **opts)
    write_table(table, args.output)
    filters = sorted({e.filter_name for e in exps})
    extra = ""
    if args.residual:
        extra = "; residuals: " + ", ".join(_write_residuals(args, paths, images, exps, table))
    if args.regions:
        write_sky_regions(table, args.regions)
        extra += f"; regions: {args.regions}"
    if args.plots:
        from crowdphot.pipeline.multi_sky import residual_images

        figs = _write_plots(args, paths, images, exps, table, residual_images(exps, table))
        extra += f"; {len(figs)} figures in {args.plots}"
    print(f"{len(table)} sources fitted jointly in {len(exps)} exposures "
          f"({', '.join(filters)}) in {time.perf_counter() - t0:.2f} s; wrote {args.output}"
          f"{extra}")
    return 0
