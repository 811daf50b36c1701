"""``crowdphot psf``: a PSF grid from the image's own stars (and ``phot --refine-psf``).

``crowdphot psf IMAGE -o grid.fits`` builds a spatially varying empirical ePSF grid
(:func:`crowdphot.psf.build_gridded_psf`); with ``--from builtin:F200W`` or ``--from FILE`` it
refines that model grid with the image's stars instead (:func:`crowdphot.psf.refine_psf`). The
grid is written in the STPSF format (``GriddedPSFModel.read`` and ``phot --psf`` read it).
"""

from __future__ import annotations

import os
import time

import numpy as np

from crowdphot.cli.errors import CLIError

__all__ = ["add_psf_parser", "refine_for_phot", "run_psf"]


def add_psf_parser(sub):
    """Add the ``psf`` command to the ``crowdphot`` subparsers."""
    from crowdphot.cli.sky import add_sky_arguments

    p = sub.add_parser("psf", help="build or refine a PSF grid from the image's stars",
                       description="Build a spatially varying empirical ePSF grid from the "
                       "bright isolated stars of a FITS image, or with --from refine a model "
                       "grid with them; write it as an STPSF-format FITS file.")
    p.add_argument("image", help="FITS image (JWST SCI/ERR/DQ or single HDU)")
    p.add_argument("-o", "--output", required=True, help="output PSF grid (.fits)")
    p.add_argument("--from", dest="from_psf", default=None, metavar="builtin:FILTER|FILE",
                   help="refine this model (as for 'phot --psf') instead of building from "
                   "scratch")
    p.add_argument("--grid", type=int, nargs=2, default=(3, 3), metavar=("NY", "NX"),
                   help="zones of the empirical grid (default: 3 3; ignored with --from)")
    p.add_argument("--oversampling", type=int, default=4, help="ePSF samples per pixel")
    p.add_argument("--size", type=int, default=25, help="odd star cutout size in pixels")
    p.add_argument("--fwhm", type=float, default=2.0, help="approximate star FWHM (pixels)")
    p.add_argument("--min-stars", type=int, default=10, help="minimum stars per zone")
    p.add_argument("--saturation", type=float, default=None,
                   help="reject stars whose peak reaches this value")
    p.add_argument("--maxiters", type=int, default=10, help="build/refine iterations")
    p.add_argument("--ext", default=None, help="science extension (default: SCI or first 2D)")
    p.add_argument("--err-ext", default="auto", help="error extension ('none' to ignore)")
    p.add_argument("--dq-ext", default="auto", help="DQ extension ('none' to ignore)")
    p.add_argument("--dq-bits", default="DO_NOT_USE,SATURATED,JUMP_DET",
                   help="DQ flag names or integer mask of pixels to ignore")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="figure of the grid, the correction and residual stamps")
    add_sky_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _ext(value):
    return None if value is None or str(value).lower() == "none" else (
        int(value) if str(value).isdigit() else value)


def _load_image(args):
    from crowdphot.cli.sky import subtract_sky
    from crowdphot.io.fits import read_image

    if not os.path.isfile(args.image):
        raise CLIError(f"image file not found: {args.image}")
    dq_bits = int(args.dq_bits) if args.dq_bits.isdigit() else args.dq_bits.split(",")
    err_ext = "auto" if args.err_ext == "auto" else _ext(args.err_ext)
    dq_ext = "auto" if args.dq_ext == "auto" else _ext(args.dq_ext)
    image = read_image(args.image, ext=_ext(args.ext), err_ext=err_ext, dq_ext=dq_ext,
                       dq_bits=dq_bits)
    subtract_sky(args, image)
    return image


def _check(args):
    out = args.output
    if not str(out).lower().endswith((".fits", ".fit")):
        raise CLIError(f"the PSF grid file name must end in .fits, got {out}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise CLIError(f"output directory does not exist: {parent}")
    if args.size < 3 or args.size % 2 == 0:
        raise CLIError(f"--size must be an odd number >= 3, got {args.size}")
    if min(args.grid) < 1:
        raise CLIError(f"--grid needs positive numbers of zones, got {tuple(args.grid)}")
    if args.oversampling < 1:
        raise CLIError(f"--oversampling must be >= 1, got {args.oversampling}")


def run_psf(args):
    """Run ``crowdphot psf`` with parsed ``args``; returns the exit code."""
    from crowdphot.io.fits import atomic_write
    from crowdphot.psf.empirical import build_gridded_psf, refine_psf, write_stpsf_grid

    t0 = time.perf_counter()
    _check(args)
    image = _load_image(args)
    kw = {"error": image.error, "mask": image.mask, "fwhm": args.fwhm,
          "saturation": args.saturation, "min_stars": args.min_stars,
          "maxiters": args.maxiters}
    base = None
    if args.from_psf:
        base = _load_model(args.from_psf, image, args)
        model = refine_psf(base, image.data, **kw)
        what = f"refined {args.from_psf}"
    else:
        model = build_gridded_psf(image.data, grid_shape=tuple(args.grid),
                                  oversampling=args.oversampling, size=args.size,
                                  progress_bar=not args.no_progress, **kw)
        what = f"built a {args.grid[0]}x{args.grid[1]} grid"
    _add_image_context(model, image)
    with atomic_write(args.output) as tmp:
        write_stpsf_grid(model, tmp, overwrite=True)
    if args.plot:
        _plot(args.plot, model, base, image, args)
    counts = model.meta.get("n_stars", [])
    print(f"{what} from {sum(counts)} stars (per zone: {', '.join(map(str, counts))}) in "
          f"{time.perf_counter() - t0:.2f} s -> {args.output}")
    return 0


def _add_image_context(model, image):
    """TELESCOP/INSTRUME/FILTER/PUPIL/DETECTOR of the image into the grid's metadata (so that
    ``phot --psf grid.fits`` can check the grid against the image it is used on)."""
    headers = [h for h in (getattr(image, "primary", None), image.header) if h is not None]
    for key in ("TELESCOP", "INSTRUME", "FILTER", "PUPIL", "DETECTOR"):
        if any(k.upper() == key for k in model.meta):
            continue
        value = next((h[key] for h in headers if key in h), None)
        if isinstance(value, str) and value.strip():
            model.meta[key.lower()] = value.strip()
    model.meta["origin"] = "crowdphot psf"


def _load_model(spec, image, args):
    from crowdphot.cli.checks import image_pixel_scale
    from crowdphot.cli.psfchoice import resolve_psf_spec
    from crowdphot.cli.psfload import load_psf

    spec = resolve_psf_spec(spec, image)
    return load_psf(spec, image_scale=image_pixel_scale(image),
                    progress_bar=not getattr(args, "no_progress", True))


def _plot(path, model, base, image, args):
    from crowdphot.core.optional import require_matplotlib

    try:
        require_matplotlib("crowdphot psf --plot")
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from crowdphot.io.fits import atomic_write
    from crowdphot.psf.empirical import select_psf_stars
    from crowdphot.viz.psf_figures import plot_psf_model

    cat = select_psf_stars(image.data, error=image.error, mask=image.mask, fwhm=args.fwhm,
                           size=15)
    fig = plot_psf_model(model, base=base if base is not None and
                         np.shape(base.data) == np.shape(model.data) else None,
                         data=image.data, catalog=cat if len(cat) else None)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def refine_for_phot(psf, image, args):
    """``phot --refine-psf``: the PSF refined with the image's stars (sky already removed).

    Parameters
    ----------
    psf : GriddedPSFModel or ImagePSF
    image : crowdphot.io.fits.ImageData
    args : argparse.Namespace

    Returns
    -------
    psf : GriddedPSFModel
    """
    from crowdphot.models.gridded import GriddedPSFModel
    from crowdphot.models.image import ImagePSF
    from crowdphot.psf.empirical import refine_psf

    if image.data is None:
        raise CLIError("--refine-psf needs the image's pixels; it cannot run with --tile "
                       "alone (add --residual, or run without --tile)")
    if not isinstance(psf, (GriddedPSFModel, ImagePSF)):
        raise CLIError("--refine-psf works with gridded or image PSFs (STPSF/STDPSF grid, "
                       "PSF image or builtin:)")
    refined = refine_psf(psf, image.data, error=image.error, mask=image.mask,
                         fwhm=getattr(args, "fwhm", 2.0), min_stars=5)
    counts = refined.meta.get("n_stars", [])
    print(f"refined the PSF with {sum(counts)} stars (per grid point: "
          f"{', '.join(map(str, counts))})")
    return refined
