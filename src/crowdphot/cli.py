"""The ``crowdphot`` command-line tool: demo, phot, simulate, psfgrid.

``main(argv)`` returns an exit code; problems a user can fix (missing file, wrong extension,
wrong PSF file, no stars) print one line on stderr and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser", "load_psf"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def load_psf(spec):
    """PSF model from ``builtin:FILTER`` or a FITS file (STPSF/STDPSF grid or an image PSF).

    Examples
    --------
    >>> load_psf('builtin:F200W')  # doctest: +SKIP
    <GriddedPSFModel(flux=1., x_0=0., y_0=0.)>
    """
    from .datasets import jwst_like_psf_grid

    if spec.lower().startswith("builtin:"):
        return jwst_like_psf_grid(filter=spec.split(":", 1)[1].upper())
    path = Path(spec)
    if not path.is_file():
        raise CLIError(f"PSF file not found: {path}")
    from astropy.io import fits

    from .psf.gridded import GriddedPSFModel
    from .psf.image import ImagePSF

    try:
        with fits.open(path) as hdul:
            header = hdul[0].header
            data = hdul[0].data
    except OSError as exc:
        raise CLIError(f"{path}: not a readable FITS file ({exc})") from None
    is_grid = any(k.startswith("DET_YX") for k in header) or "NXPSFS" in header
    if is_grid:
        try:
            return GriddedPSFModel.read(path)
        except (ValueError, KeyError) as exc:
            raise CLIError(f"{path}: malformed PSF grid file: {exc}") from None
    if data is None or np.ndim(data) != 2:
        raise CLIError(f"{path}: not a PSF file (expected an STPSF/STDPSF grid or a 2D "
                       "image PSF)")
    if not np.all(np.isfinite(data)) or np.sum(data) <= 0:
        raise CLIError(f"{path}: the PSF image has non-finite values or a non-positive sum")
    oversampling = int(header.get("OVERSAMP", header.get("DET_SAMP", 1)))
    return ImagePSF(np.asarray(data, dtype=float) / np.sum(data) * oversampling**2,
                    oversampling=oversampling)


def _add_demo(sub):
    p = sub.add_parser("demo", help="run the PSF photometry notebook end to end")
    p.add_argument("--out", default="demo_output", help="output folder (default: %(default)s)")
    p.add_argument("--n-sources", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grouped", action="store_true", help="group stars within 35 px")
    p.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"))
    p.add_argument("--no-plots", action="store_true")


def _add_phot(sub):
    p = sub.add_parser("phot", help="PSF photometry of a FITS image")
    p.add_argument("image", help="FITS image (JWST SCI/ERR/DQ or single HDU)")
    p.add_argument("--psf", default="builtin:F200W",
                   help="STPSF/STDPSF grid or image PSF FITS file, or builtin:FILTER")
    p.add_argument("-o", "--output", required=True,
                   help="catalog file; format from the extension (.ecsv, .fits, .csv)")
    p.add_argument("--ext", default=None, help="science extension (default: SCI or first)")
    p.add_argument("--err-ext", default="auto", help="error extension ('none' to ignore)")
    p.add_argument("--dq-ext", default="auto", help="DQ extension ('none' to ignore)")
    p.add_argument("--dq-bits", default="DO_NOT_USE,SATURATED,JUMP_DET",
                   help="comma-separated DQ flag names or an integer bit mask")
    p.add_argument("--threshold", type=float, default=None,
                   help="detection threshold in data units (default: 5 x robust noise)")
    p.add_argument("--fwhm", type=float, default=3.0, help="finder kernel FWHM in pixels")
    p.add_argument("--finder", choices=("iraf", "dao"), default="iraf")
    p.add_argument("--fit-shape", type=int, default=5)
    p.add_argument("--group-radius", type=float, default=None,
                   help="fit stars closer than this jointly (pixels)")
    p.add_argument("--aperture-radius", type=float, default=5.0)
    p.add_argument("--local-bkg", type=float, nargs=2, default=None,
                   metavar=("R_IN", "R_OUT"), help="local background annulus radii")
    p.add_argument("--iterative", type=int, default=None, metavar="N",
                   help="iterative detection with N iterations")
    p.add_argument("--mode", choices=("new", "all"), default="new")
    p.add_argument("--init", default=None, help="forced photometry: catalog of positions")
    p.add_argument("--residual", default=None, help="write the residual image here")
    p.add_argument("--plots", default=None, help="write figures into this folder")
    p.add_argument("--regions", default=None, help="write a DS9 region file of fitted stars")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--tile", type=int, default=None, help="process in tiles of this size")
    p.add_argument("--workers", type=int, default=None, help="local Dask workers for tiles")
    p.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler")


def _add_simulate(sub):
    p = sub.add_parser("simulate", help="simulate a star field (image + truth table)")
    p.add_argument("output", help="output FITS image (SCI + ERR extensions)")
    p.add_argument("--truth", default=None, help="truth table (default: OUTPUT_truth.ecsv)")
    p.add_argument("--psf", default="builtin:F200W")
    p.add_argument("--n-sources", type=int, default=500)
    p.add_argument("--shape", type=int, nargs=2, default=(2048, 2048), metavar=("NY", "NX"))
    p.add_argument("--flux", type=float, nargs=2, default=(500, 20_000), metavar=("LO", "HI"))
    p.add_argument("--min-separation", type=float, default=25)
    p.add_argument("--noise", type=float, default=0.5, help="Gaussian noise sigma")
    p.add_argument("--seed", type=int, default=0)


def _add_psfgrid(sub):
    p = sub.add_parser("psfgrid", help="write the built-in JWST-like PSF grid (STPSF format)")
    p.add_argument("output")
    p.add_argument("--filter", default="F200W")
    p.add_argument("--detector", default="NRCA1")
    p.add_argument("--num-psfs", type=int, default=16)
    p.add_argument("--fov-pixels", type=int, default=101)
    p.add_argument("--oversampling", type=int, default=4)


def build_parser():
    """The argparse parser of the ``crowdphot`` command."""
    parser = argparse.ArgumentParser(
        prog="crowdphot", description="Fast, photutils-compatible PSF photometry.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_phot(sub)
    _add_simulate(sub)
    _add_psfgrid(sub)
    return parser


def _cmd_demo(args):
    from .demo import run_demo

    if args.n_sources <= 0:
        raise CLIError("--n-sources must be positive")
    run_demo(args.out, n_sources=args.n_sources, seed=args.seed, grouped=args.grouped,
             shape=tuple(args.shape), plots=not args.no_plots)
    return 0


def _cmd_simulate(args):
    from astropy.io import fits

    from . import make_noise_image, make_psf_model_image
    from .fitsio import atomic_path, write_table

    psf = load_psf(args.psf)
    data, truth = make_psf_model_image(tuple(args.shape), psf, args.n_sources,
                                       flux=tuple(args.flux),
                                       min_separation=args.min_separation, seed=args.seed)
    if args.noise > 0:
        data = data + make_noise_image(data.shape, mean=0, stddev=args.noise, seed=args.seed)
    err = np.sqrt(np.abs(data) + args.noise**2)
    out = Path(args.output)
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = "crowdphot simulate"
    primary.header["NSOURCES"] = len(truth)
    hdul = fits.HDUList([primary, fits.ImageHDU(data.astype(np.float32), name="SCI"),
                         fits.ImageHDU(err.astype(np.float32), name="ERR")])
    tmp = atomic_path(out)
    try:
        hdul.writeto(tmp, overwrite=True)
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    truth_path = Path(args.truth) if args.truth else out.with_name(out.stem + "_truth.ecsv")
    write_table(truth, truth_path)
    print(f"wrote {out} ({len(truth)} stars) and {truth_path}")
    return 0


def _cmd_psfgrid(args):
    from .datasets import write_jwst_like_psf_grid

    write_jwst_like_psf_grid(args.output, filter=args.filter, detector=args.detector,
                             num_psfs=args.num_psfs, fov_pixels=args.fov_pixels,
                             oversampling=args.oversampling, overwrite=True)
    print(f"wrote {args.output}")
    return 0


def _cmd_phot(args):
    from .cli_phot import run_phot

    return run_phot(args)


_COMMANDS = {"demo": _cmd_demo, "phot": _cmd_phot, "simulate": _cmd_simulate,
             "psfgrid": _cmd_psfgrid}


def main(argv=None):
    """Entry point of the ``crowdphot`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return _COMMANDS[args.command](args)
    except CLIError as exc:
        print(f"crowdphot: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, TypeError, KeyError, OSError) as exc:
        msg = str(exc) or type(exc).__name__
        print(f"crowdphot: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("crowdphot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
