"""The ``crowdphot`` command-line tool: demo, phot, simulate, psfgrid.

``main(argv)`` returns an exit code (``python -m crowdphot`` and the ``crowdphot`` script call
it). Problems a user can fix (missing file, wrong extension, wrong PSF file, no stars) print one
line ``crowdphot: error: ...`` on stderr and return 2, without a traceback (``--traceback``
shows it); every output file is written under a temporary name and renamed into place, so a
failed run leaves no half-written file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]

from crowdphot.cli.errors import CLIError
from crowdphot.cli.psfload import load_psf


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the PSF photometry notebook end to end",
                       description="Simulate a JWST-like star field, find, group and fit the "
                       "stars, and write catalogs, images, figures and index.html into --out.")
    p.add_argument("--out", default="demo_output", help="output folder (default: %(default)s)")
    p.add_argument("--n-sources", type=int, default=500, help="stars to simulate")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--grouped", action="store_true", help="fit stars within 35 px jointly")
    p.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"))
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_phot(sub):
    p = sub.add_parser("phot", help="PSF photometry of a FITS image",
                       description="PSF photometry of a FITS image (JWST SCI/ERR/DQ or a single "
                       "HDU); writes the catalog and optionally residual, figures, regions.")
    p.add_argument("image", help="FITS image (JWST SCI/ERR/DQ or single HDU)")
    p.add_argument("more_images", nargs="*", metavar="IMAGE",
                   help="further exposures: with several images, one joint fit in sky "
                   "coordinates (one ra/dec per source, one flux per FILTER)")
    p.add_argument("--psf", default=None, action="append",
                   help="STPSF/STDPSF grid or image PSF FITS file, or "
                   "builtin:FILTER[:DETECTOR] (default: the built-in grid of the image's "
                   "INSTRUME/FILTER/PUPIL/DETECTOR for JWST/NIRCam images; others need a file); "
                   "with several images also FILTER=FILE[,FILTER=FILE...] per filter, or "
                   "--psf repeated")
    p.add_argument("--psf-detector", type=int, default=None,
                   help="detector id of a multi-detector STDPSF file")
    p.add_argument("--psf-oversampling", type=int, default=None, metavar="N",
                   help="samples per image pixel of a PSF image (default: its OVERSAMP "
                   "keyword, else the ratio of the image's and the PSF's pixel scales, else 1)")
    p.add_argument("-o", "--output", required=True,
                   help="catalog file; format from the extension (.ecsv, .fits, .csv)")
    p.add_argument("--ext", default=None, help="science extension (default: SCI or first 2D)")
    p.add_argument("--err-ext", default="auto",
                   help="error extension (default: ERR when present; 'none' to ignore)")
    p.add_argument("--dq-ext", default="auto",
                   help="DQ extension (default: DQ when present; 'none' to ignore)")
    p.add_argument("--dq-bits", default="DO_NOT_USE,SATURATED,JUMP_DET",
                   help="DQ bits to mask: comma-separated JWST flag names (on an HST file "
                   "read as the same conditions in HST's bits), or an integer mask taken "
                   "literally (6 or 0x6) (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=None,
                   help="detection threshold in data units (default: 5 x robust noise)")
    p.add_argument("--fwhm", type=float, default=3.0, help="finder kernel FWHM in pixels")
    p.add_argument("--finder", choices=("iraf", "dao"), default="iraf")
    p.add_argument("--fit-shape", type=int, default=5, help="odd fit box size in pixels")
    p.add_argument("--group-radius", type=float, default=None,
                   help="fit stars closer than this jointly (pixels)")
    p.add_argument("--aperture-radius", type=float, default=5.0,
                   help="aperture radius of the initial flux guess (pixels)")
    p.add_argument("--local-bkg", type=float, nargs=2, default=None,
                   metavar=("R_IN", "R_OUT"), help="local background annulus radii (pixels)")
    p.add_argument("--no-subtract-neighbors", action="store_true",
                   help="fit each group without subtracting the stars outside it (photutils' "
                        "model; default: all-star fitting, DAOPHOT ALLSTAR)")
    p.add_argument("--no-merge", action="store_true",
                   help="keep pairs closer than 0.37 FWHM as two stars (default: merge them "
                        "into one, flag 16384)")
    p.add_argument("--bias-correction", action="store_true",
                   help="subtract the fits' first-order (Cox & Snell) bias: a free position "
                   "makes a fitted flux high by ~flux_err^2/flux (+4 %% at S/N 5); groups "
                   "corrected jointly, stars under S/N 3 left as fitted")
    p.add_argument("--iterative", type=int, default=None, metavar="N",
                   help="iterative detection and fitting with at most N iterations")
    p.add_argument("--mode", choices=("new", "all"), default="new",
                   help="iterative mode (default: %(default)s)")
    p.add_argument("--init", default=None,
                   help="forced photometry at the positions of this catalog (x/y or ra/dec; "
                   "default: none, find the stars)")
    p.add_argument("--init-coords", choices=("auto", "sky", "pixel"), default="auto",
                   help="positions of the --init catalog: 'auto' uses ra/dec when the catalog "
                   "has them and the image has a celestial WCS, else x/y (default: "
                   "%(default)s)")
    p.add_argument("--residual", default=None, help="write the residual image here (FITS)")
    p.add_argument("--plots", default=None, help="write figures into this folder")
    p.add_argument("--regions", default=None, help="write a DS9 region file of fitted stars")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--tile", type=int, default=None, help="process in tiles of this size")
    p.add_argument("--flux-per-exposure", action="store_true",
                   help="with several images: one flux per exposure (flux_<FILTER>_<k>) "
                   "instead of one per filter, the position still shared")
    p.add_argument("--workers", type=int, default=None, help="local Dask workers for tiles")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")
    from crowdphot.cli.noise import add_noise_arguments

    add_noise_arguments(p)
    from crowdphot.cli.sky import add_sky_arguments

    add_sky_arguments(p)
    p.add_argument("--refine-psf", action="store_true",
                   help="refine the PSF with the image's bright isolated stars first "
                   "(see 'crowdphot psf --from')")
    from crowdphot.cli.significance import add_significance_arguments

    add_significance_arguments(p)


def _add_simulate(sub):
    p = sub.add_parser("simulate", help="simulate a star field (image + truth table)",
                       description="Write a JWST-style FITS image (SCI, ERR, DQ, with a "
                       "celestial WCS) of randomly placed stars and their truth table.")
    p.add_argument("output", help="output FITS image")
    p.add_argument("--truth", default=None, help="truth table (default: OUTPUT_truth.ecsv)")
    p.add_argument("--psf", default="builtin:F200W",
                   help="PSF as for 'phot --psf' (default: %(default)s)")
    p.add_argument("--n-sources", type=int, default=500, help="stars to place")
    p.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"),
                   help="image shape in pixels")
    p.add_argument("--flux", type=float, nargs=2, default=(500, 20_000), metavar=("LO", "HI"),
                   help="range of the stars' fluxes (uniform)")
    p.add_argument("--min-separation", type=float, default=25,
                   help="minimum distance between stars in pixels")
    p.add_argument("--noise", type=float, default=0.5,
                   help="Gaussian (read) noise sigma (default: %(default)s)")
    p.add_argument("--no-poisson", action="store_true",
                   help="no Poisson noise of the stars' counts (default: Poisson noise is "
                   "added, and ERR includes it)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_psfgrid(sub):
    p = sub.add_parser("psfgrid", help="write the built-in JWST-like PSF grid (STPSF format)")
    p.add_argument("output", help="output FITS file")
    p.add_argument("--filter", default="F200W", help="any NIRCam imaging filter")
    p.add_argument("--detector", default=None,
                   help="NRCA1-4, NRCB1-4, NRCA5/NRCALONG, NRCB5/NRCBLONG (default: module A "
                   "of the filter's channel, NRCA1 or NRCA5)")
    p.add_argument("--num-psfs", type=int, default=16,
                   help="fiducial PSFs, a square number spanning the detector")
    p.add_argument("--fov-pixels", type=int, default=101, help="odd PSF size in pixels")
    p.add_argument("--oversampling", type=int, default=4, help="samples per pixel")


def build_parser():
    """The argparse parser of the ``crowdphot`` command.

    Examples
    --------
    >>> build_parser().parse_args(['demo', '--n-sources', '20']).n_sources
    20
    """
    from crowdphot import __version__

    parser = argparse.ArgumentParser(
        prog="crowdphot", description="Fast, photutils-compatible PSF photometry.")
    parser.add_argument("--version", action="version", version=f"crowdphot {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of errors (for bug reports)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_phot(sub)
    _add_simulate(sub)
    _add_psfgrid(sub)
    from crowdphot.cli.ast import add_ast_parser

    add_ast_parser(sub, _add_phot)
    from crowdphot.cli.psf import add_psf_parser

    add_psf_parser(sub)
    for sub_parser in sub.choices.values():
        sub_parser.formatter_class = _DefaultsFormatter
        for action in sub_parser._actions:
            if action.help is None and action.option_strings:  # argparse hides those
                action.help = ("one of " + ", ".join(map(str, action.choices))
                               if action.choices else action.dest.replace("_", " "))
    return parser


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that states every option's default: '(default: X)' unless the text gives it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.help is argparse.SUPPRESS or "default" in text.lower() or not \
                action.option_strings or action.default is argparse.SUPPRESS or \
                action.required or isinstance(action, argparse._HelpAction):
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            value = "on" if action.default else "off"
        elif action.default is None:
            value = "none"
        elif isinstance(action.default, (list, tuple)):
            value = " ".join(str(v) for v in action.default)
        else:
            value = "%(default)s"
        return f"{text} (default: {value})".strip()


def _cmd_demo(args):
    from crowdphot.cli.demo import run_demo

    if args.n_sources <= 0:
        raise CLIError(f"--n-sources must be positive, got {args.n_sources}")
    if not args.no_plots:
        from crowdphot.core.optional import require_matplotlib

        try:
            require_matplotlib("crowdphot demo's figures (--no-plots skips them)")
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    run_demo(args.out, n_sources=args.n_sources, seed=args.seed, grouped=args.grouped,
             shape=tuple(args.shape), plots=not args.no_plots,
             progress_bar=not args.no_progress)
    return 0


def _simulation_wcs(shape):
    """A NIRCam-like TAN WCS (0.031"/pixel, north up) centred on the image."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.16, -27.78]  # GOODS-S, a JWST deep field
    w.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    w.wcs.cdelt = [-0.031 / 3600, 0.031 / 3600]
    w.wcs.cunit = ["deg", "deg"]
    return w


def _cmd_simulate(args):
    from astropy.io import fits

    from crowdphot.datasets.simulation import make_noise_image, make_psf_model_image
    from crowdphot.io.fits import atomic_write, table_format, write_table

    out = Path(args.output)
    truth_path = Path(args.truth) if args.truth else out.with_name(out.stem + "_truth.ecsv")
    table_format(truth_path)  # a bad extension fails before minutes of simulation
    from crowdphot.cli.phot import _check_writable

    for option, path in (("OUTPUT", out), ("--truth", truth_path)):
        if not path.resolve().parent.is_dir():
            raise CLIError(f"{option}: folder {path.parent} does not exist")
        _check_writable(option, path)
    if args.n_sources <= 0:
        raise CLIError(f"--n-sources must be positive, got {args.n_sources}")
    if args.noise < 0:
        raise CLIError(f"--noise must be >= 0, got {args.noise}")
    psf = load_psf(args.psf)
    shape = tuple(args.shape)
    data, truth = make_psf_model_image(shape, psf, args.n_sources, flux=tuple(args.flux),
                                       min_separation=args.min_separation, seed=args.seed,
                                       progress_bar=not args.no_progress)
    model = np.clip(data, 0.0, None)
    if not args.no_poisson:
        # the stars' photon noise (counts = electrons, GAIN = 1), from its own stream
        rng = np.random.default_rng([int(args.seed), 0x5EED])
        data = rng.poisson(model).astype(float)
    if args.noise > 0:
        # its own stream: the same seed also placed the stars
        data = data + make_noise_image(data.shape, mean=0, stddev=args.noise,
                                       seed=np.random.default_rng([int(args.seed), 0xA0]))
    # ERR is the standard deviation of the noise actually added: the true model's Poisson
    # variance (when added) plus the read noise; a floor keeps a noiseless image usable
    variance = (0.0 if args.no_poisson else model) + args.noise**2
    err = np.sqrt(np.maximum(np.broadcast_to(variance, shape), 1e-6))
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = "crowdphot simulate"
    primary.header["PSF"] = str(args.psf)[-68:]
    primary.header["NSOURCES"] = (len(truth), "number of simulated stars")
    primary.header["SEED"] = args.seed
    sci_header = _simulation_wcs(shape).to_header()
    sci_header["BUNIT"] = "DN"
    sci_header["GAIN"] = (1.0, "electrons per DN")
    sci_header["NOISE"] = ("read" if args.no_poisson else "Poisson+read",
                           "noise added; ERR is its standard deviation")
    for key, value in _psf_context(psf, args.psf).items():
        primary.header[key] = value
    hdul = fits.HDUList([primary, fits.ImageHDU(data.astype(np.float32), sci_header, name="SCI"),
                         fits.ImageHDU(err.astype(np.float32), name="ERR"),
                         fits.ImageHDU(np.zeros(shape, dtype=np.uint32), name="DQ")])
    with atomic_write(out) as tmp:
        hdul.writeto(tmp, overwrite=True)
    write_table(truth, truth_path)
    print(f"wrote {out} ({len(truth)} stars) and {truth_path}")
    return 0


def _psf_context(psf, spec):
    """TELESCOP/INSTRUME/FILTER/PUPIL/DETECTOR of the PSF, for a simulated image's header."""
    meta = getattr(psf, "meta", None) or {}
    out = {}
    if str(spec).lower().startswith("builtin:"):
        out = {"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "PUPIL": "CLEAR"}
    for key, names in (("TELESCOP", ("telescope", "TELESCOP")),
                       ("INSTRUME", ("instrument", "instrume", "INSTRUME")),
                       ("FILTER", ("filter", "FILTER")), ("DETECTOR", ("detector", "DETECTOR"))):
        value = next((meta[n] for n in names if n in meta), None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, str) and value.strip():
            out[key] = value.strip().upper()
    return out


def _cmd_psfgrid(args):
    from crowdphot.datasets.jwst import write_jwst_like_psf_grid
    from crowdphot.io.fits import default_file_mode

    out = Path(args.output)
    if not out.name.lower().endswith((".fits", ".fit")):
        raise CLIError(f"the PSF grid file name must end in .fits, got {out.name}")
    if not out.parent.is_dir():
        raise CLIError(f"output directory does not exist: {out.parent}")
    from crowdphot.cli.phot import _check_writable

    _check_writable("OUTPUT", out)  # before minutes of computing
    # the writer renames a finished temporary file into place, so no half-written grid
    from crowdphot.datasets.jwst import nircam_filter_detector

    try:
        filt, det = nircam_filter_detector(args.filter, None, args.detector)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    write_jwst_like_psf_grid(out, filter=filt, detector=det,
                             num_psfs=args.num_psfs, fov_pixels=args.fov_pixels,
                             oversampling=args.oversampling, overwrite=True)
    # the writer's temporary file is owner-only; a product file gets the usual permissions
    os.chmod(out, default_file_mode())
    print(f"wrote {out}")
    return 0


def _one_image(args):
    """Single-image options: one ``--psf`` (the option may repeat only with several images)."""
    if isinstance(args.psf, list):
        if len(args.psf) > 1:
            raise CLIError("--psf given more than once: only several images take one PSF per "
                           "filter")
        args.psf = args.psf[0] if args.psf else None
    if getattr(args, "flux_per_exposure", False):
        raise CLIError("--flux-per-exposure needs several images")


def _cmd_phot(args):
    if getattr(args, "more_images", None):
        from crowdphot.cli.multi import run_phot_multi

        return run_phot_multi(args, [args.image, *args.more_images])
    _one_image(args)
    from crowdphot.cli.phot import run_phot

    return run_phot(args)


def _cmd_ast(args):
    _one_image(args)
    from crowdphot.cli.ast import run_ast

    return run_ast(args)


def _cmd_psf(args):
    from crowdphot.cli.psf import run_psf

    return run_psf(args)


_COMMANDS = {"demo": _cmd_demo, "phot": _cmd_phot, "simulate": _cmd_simulate,
             "psfgrid": _cmd_psfgrid, "ast": _cmd_ast, "psf": _cmd_psf}

# what a user can cause with a bad file or option, or the environment (disk full, no
# permission, a Dask scheduler that does not answer)
_USER_ERRORS = (CLIError, FileNotFoundError, FileExistsError, IsADirectoryError,
                NotADirectoryError, PermissionError, OSError)
# a plain ValueError/TypeError is the user's when crowdphot raised it on purpose (a `raise`
# statement in crowdphot's code: the input checks name the argument and the fix); one raised
# by an operation (a bad unpacking, numpy broadcasting) is a bug and keeps its traceback
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_user_error(exc):
    import linecache

    from crowdphot.io.fits import InputError

    if isinstance(exc, (InputError, *_USER_ERRORS)):
        return True
    if not isinstance(exc, (ValueError, TypeError)) or isinstance(exc, KeyError):
        return False
    if type(exc).__module__.startswith("crowdphot."):
        return True  # a named condition of crowdphot's (e.g. too few PSF stars), not a slip
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(_PACKAGE_DIR + os.sep):
        return False
    return linecache.getline(filename, tb.tb_lineno).strip().startswith("raise ")


class _WarningPrinter:
    """Prints each distinct warning once, as one line, at the moment it is raised."""

    def __init__(self):
        self.seen = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text in self.seen:
            return
        self.seen.add(text)
        print(f"crowdphot: warning: {text}", file=sys.stderr, flush=True)


def main(argv=None):
    """Entry point of the ``crowdphot`` command; returns the exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    code : int
        0 on success, 2 for a usage or input error (one line on stderr), 1 for an internal
        error (a bug: traceback and one line saying so), 130 on Ctrl-C.

    Examples
    --------
    >>> main(['phot', 'missing.fits', '-o', 'cat.ecsv'])  # doctest: +SKIP
    crowdphot: error: image file not found: missing.fits
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    # astropy routes warnings to its logger when first imported; import it before recording
    # so that the recorder, not the logger, sees the warnings of this run
    import astropy  # noqa: F401

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            # shown as they happen (a long fit's early warning is not held to the end), once
            warnings.showwarning = _WarningPrinter()
            code = _COMMANDS[args.command](args)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("crowdphot: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
        if args.traceback:
            raise
        msg = " ".join((str(exc) or type(exc).__name__).split())
        if _is_user_error(exc):
            print(f"crowdphot: error: {msg}", file=sys.stderr)
            return 2
        # a bug: not the user's files or options; keep everything needed to report it
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        print(f"crowdphot: internal error ({type(exc).__name__}: {msg[:300]}); this is a "
              "bug in crowdphot, not a problem with your files: please report it with the "
              "traceback above", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
