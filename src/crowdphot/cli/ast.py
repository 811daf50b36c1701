"""``crowdphot ast``: artificial star tests with the same options as ``crowdphot phot``.

One photometry run of the image (exactly as ``phot`` would do it), then ``--n`` artificial stars
(uniform on the image, log-uniform in flux between ``--flux LO HI``) injected with the image's
PSF in non-crowding batches and measured incrementally by the same pipeline
(:func:`crowdphot.pipeline.ast.artificial_star_test`); with ``--tile`` (and ``--workers`` or
``--scheduler`` for Dask) the artificial stars are measured tile by tile. The image is
prepared as ``phot`` prepares it (PSF chosen for the image, sky map subtracted) and the
artificial stars are added to the sky-subtracted image. Writes one row per artificial star
to ``-o`` and the completeness / bias / scatter table against magnitude to ``--summary``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from crowdphot.cli.errors import CLIError

__all__ = ["add_ast_parser", "run_ast"]

#: phot options that make no sense for artificial stars (forced photometry, image products).
_UNSUPPORTED = {"init": "--init", "residual": "--residual", "regions": "--regions",
                "sky_out": "--sky-out"}


def add_ast_parser(sub, add_phot):
    """Add the ``ast`` command to ``sub``, taking every photometry option from ``add_phot``.

    Parameters
    ----------
    sub : argparse subparsers action
    add_phot : callable
        ``add_phot(subparsers)`` adds the ``phot`` command (its options are shared).

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    add_phot(scratch)
    phot = scratch.choices["phot"]
    p = sub.add_parser(
        "ast", parents=[phot], add_help=False, conflict_handler="resolve",
        help="artificial star tests: completeness, bias and scatter",
        description="Inject artificial stars (uniform on the image, log-uniform in flux) with "
        "the image's PSF in non-crowding batches, measure them with the same photometry as "
        "'phot' (same options) re-fitting only their neighbourhoods, and write one row per "
        "star (x_in, y_in, flux_in, recovered, x_out, y_out, flux_out, flux_err, flags) plus "
        "completeness, bias and scatter against magnitude.")
    p.add_argument("-o", "--output", required=True,
                   help="artificial-star table; format from the extension (.ecsv, .fits, .csv)")
    p.add_argument("--n", type=int, required=True, help="number of artificial stars")
    p.add_argument("--flux", type=float, nargs=2, required=True, metavar=("LO", "HI"),
                   help="flux range of the artificial stars (data units, log-uniform)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--match-radius", type=float, default=0.5,
                   help="recovered within this many pixels (default: %(default)s)")
    p.add_argument("--match-flux", type=float, default=0.1,
                   help="... and this fraction of the input flux (default: %(default)s)")
    p.add_argument("--photon-noise", action="store_true",
                   help="add the artificial stars' own photon noise (gain from --gain or the "
                   "header; default: noiseless stars, the image's noise is already there)")
    p.add_argument("--min-separation", type=float, default=0.0,
                   help="keep artificial stars this far from catalogued stars (default: 0)")
    p.add_argument("--border", type=float, default=0.0,
                   help="keep artificial stars this many pixels inside the edges")
    p.add_argument("--zeropoint", type=float, default=0.0,
                   help="magnitude zero point of the summary (mag = ZP - 2.5 log10 flux)")
    p.add_argument("--summary", default=None,
                   help="summary table (default: OUTPUT with '_summary' before the extension)")
    p.add_argument("--plots", default=None,
                   help="write completeness / bias / scatter figures into this folder")
    return p


def _summary_path(args):
    if args.summary:
        return Path(args.summary)
    out = Path(args.output)
    return out.with_name(f"{out.stem}_summary{out.suffix}")


def _check_ast_options(args):
    for attr, option in _UNSUPPORTED.items():
        if getattr(args, attr, None):
            raise CLIError(f"{option} is not supported by 'crowdphot ast'")
    if args.n <= 0:
        raise CLIError(f"--n must be positive, got {args.n}")
    lo, hi = args.flux
    if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0):
        raise CLIError(f"--flux must be two positive numbers, got {lo:g} {hi:g}")
    if lo >= hi:
        raise CLIError(f"--flux LO must be below HI, got {lo:g} {hi:g}")
    for name in ("match_radius", "match_flux"):
        value = getattr(args, name)
        if not value > 0:
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.gain is not None and not args.gain > 0:
        raise CLIError(f"--gain must be positive, got {args.gain}")
    if args.min_snr is not None and args.min_snr < 0:
        raise CLIError(f"--min-snr must be >= 0, got {args.min_snr}")
    if args.min_separation < 0 or args.border < 0:
        raise CLIError("--min-separation and --border must be >= 0")
    summary = _summary_path(args)
    if not summary.resolve().parent.is_dir():
        raise CLIError(f"--summary: folder {summary.parent} does not exist")


def _print_summary(summary):
    print(" mag range        n   recovered  completeness   bias(mag)  scatter(mag)")
    for row in summary:
        if row["n"] == 0:
            continue
        print(f"{row['mag_lo']:6.2f} {row['mag_hi']:6.2f} {int(row['n']):7d} "
              f"{int(row['n_recovered']):9d}   {row['completeness']:.3f} +- "
              f"{row['completeness_err']:.3f}  {row['bias']:+9.4f}  {row['scatter']:9.4f}")


def run_ast(args):
    """Run ``crowdphot ast`` with parsed ``args``; returns the exit code.

    Parameters
    ----------
    args : argparse.Namespace
        As built by ``crowdphot.cli.app.build_parser`` for the ``ast`` command.

    Returns
    -------
    code : int
        0 on success; user errors raise ``CLIError``/``ValueError`` for ``main`` to report.
    """
    from crowdphot.cli.checks import image_pixel_scale
    from crowdphot.cli.phot import _check_options, _ext_arg, _finder, _photometry
    from crowdphot.cli.psfchoice import check_psf_matches_image, resolve_psf_spec
    from crowdphot.cli.psfload import load_psf
    from crowdphot.cli.sky import subtract_sky
    from crowdphot.io.fits import read_image, write_table
    from crowdphot.pipeline.ast import artificial_star_test
    from crowdphot.pipeline.ast_summary import ast_summary

    t0 = time.perf_counter()
    _check_ast_options(args)
    _check_options(args)
    if args.plots:  # fail before the run, not after it
        from crowdphot.core.optional import require_matplotlib

        try:
            require_matplotlib("crowdphot ast --plots")
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    ext, err_ext, dq_ext = (_ext_arg(v) for v in (args.ext, args.err_ext, args.dq_ext))
    dq_bits = int(args.dq_bits) if args.dq_bits.isdigit() else args.dq_bits.split(",")
    image = read_image(args.image, ext=ext, err_ext=err_ext, dq_ext=dq_ext, dq_bits=dq_bits)
    image.planes = None
    # exactly phot's preparation: PSF for the image, sky subtracted before finding
    psf_spec = resolve_psf_spec(args.psf, image)
    psf = load_psf(psf_spec, detector_id=args.psf_detector,
                   oversampling=getattr(args, "psf_oversampling", None),
                   image_scale=image_pixel_scale(image), progress_bar=not args.no_progress)
    check_psf_matches_image(psf_spec, psf, image)
    _, sky_info = subtract_sky(args, image)
    if getattr(args, "refine_psf", False):
        from crowdphot.cli.psf import refine_for_phot

        psf = refine_for_phot(psf, image, args)
    if getattr(args, "bias_correction", False) and image.error is None:
        raise CLIError(f"{args.image}: --bias-correction in 'crowdphot ast' needs an ERR "
                       "extension (the artificial stars' fits are corrected with it)")
    gain = _photon_gain(args, image) if args.photon_noise else None
    finder, threshold = _finder(args, image)
    t_phot = time.perf_counter()
    # the photometry object configures the artificial stars' measurement, so the run itself is
    # untiled (tiles give the same catalog); --tile tiles the artificial stars
    catalog, phot = _photometry(argparse.Namespace(**{**vars(args), "tile": None}), image,
                                psf, finder, None)
    t_phot = time.perf_counter() - t_phot
    if catalog is None or len(catalog) == 0:
        catalog = None  # an empty field is a valid AST target (completeness of a blank sky)
    result = artificial_star_test(
        image.data, phot, args.n, tuple(args.flux), mask=image.mask, error=image.error,
        seed=args.seed, match_radius=args.match_radius, match_flux=args.match_flux,
        gain=gain, border=args.border, min_separation=args.min_separation,
        catalog=catalog if catalog is not None else _empty_catalog(),
        client=_scheduler_client(args), workers=args.workers, tile_shape=args.tile,
        select=_min_snr_rule(args, image, psf, sky_info),
        progress_bar=not args.no_progress)
    table = result.table
    table.meta["image"] = str(args.image)
    table.meta["psf"] = str(psf_spec)
    table.meta["threshold"] = float(threshold)
    table.meta.update(sky_info)
    summary = ast_summary(table, zeropoint=args.zeropoint)
    summary.meta.update(table.meta)
    summary.meta["zeropoint"] = args.zeropoint
    write_table(table, args.output)
    write_table(summary, _summary_path(args))
    if args.plots:
        _ast_plots(Path(args.plots), table, summary, image.data.shape, args.zeropoint)
    _print_summary(summary)
    n_rec = int(np.count_nonzero(table["recovered"]))
    rate = args.n / max(result.meta["t_ast"], 1e-9)
    print(f"{args.n} artificial stars ({n_rec} recovered) in {result.meta['t_ast']:.2f} s "
          f"({rate:.0f} stars/s) after one photometry run of {t_phot:.2f} s; "
          f"total {time.perf_counter() - t0:.2f} s -> {args.output}")
    return 0


def _photon_gain(args, image):
    """Electrons per data unit for --photon-noise: --gain, else the header's."""
    if args.gain is not None:
        return float(args.gain)
    from crowdphot.cli.noise import _header_gain

    gain, _ = _header_gain(image)
    if gain is None:
        raise CLIError("--photon-noise needs the gain: give --gain (electrons per data unit); "
                       "the header has no GAIN/ATODGAIN/CCDGAIN and BUNIT is not electrons")
    return float(gain)


def _min_snr_rule(args, image, psf, sky_info):
    """phot's --min-snr clean-up as a ``select`` rule for the artificial-star batches."""
    snr = getattr(args, "min_snr", None)
    if not snr:
        return None
    from crowdphot.cli.significance import drop_insignificant
    from crowdphot.cli.stats import robust_sigma

    sigma = sky_info.get("sky_rms") or robust_sigma(image.data, image.mask)
    shape = (args.fit_shape, args.fit_shape)

    def select(data, error, mask, table):
        table = table.copy()
        table["_row"] = np.arange(len(table))
        kept, _ = drop_insignificant(table, data, psf, shape, error=error, mask=mask,
                                     sigma=sigma, snr=snr)
        keep = np.zeros(len(table), dtype=bool)
        keep[np.asarray(kept["_row"])] = True
        return keep

    return select


def _scheduler_client(args):
    if not args.scheduler:
        return None
    from dask.distributed import Client

    return Client(args.scheduler)


def _empty_catalog():
    from astropy.table import QTable

    return QTable({"x_fit": np.zeros(0), "y_fit": np.zeros(0)})


def _ast_plots(out, table, summary, shape, zeropoint):
    from crowdphot.io.fits import atomic_write
    from crowdphot.viz.ast import plot_ast_summary, plot_completeness_map

    out.mkdir(parents=True, exist_ok=True)
    figs = {"ast_summary.png": lambda: plot_ast_summary(summary),
            "ast_completeness_map.png": lambda: plot_completeness_map(table, shape)}
    for name, make in figs.items():
        with atomic_write(out / name) as tmp:
            make().savefig(tmp, dpi=90, format="png")
