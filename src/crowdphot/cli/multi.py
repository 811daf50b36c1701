"""``crowdphot phot a.fits b.fits ...``: one joint fit of several exposures in sky coordinates.

Each file brings its own pixels, ERR, DQ, WCS and PSF (``--psf`` for all files, else the
built-in grid from each header); the filter is the header's FILTER keyword (else the file
name). Sources come from ``--init`` (ra/dec, or x/y in the first file) or from detection on the
first file. The catalog has ``ra``, ``dec``, ``ra_err``, ``dec_err``, ``flux_<FILTER>``,
``flux_err_<FILTER>``, ``n_exposures`` and ``flags`` (see :func:`crowdphot.fit_exposures`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from crowdphot.cli.errors import CLIError
from crowdphot.cli.psfload import load_psf

__all__ = ["run_phot_multi"]

# single-image options a joint run does not support yet (name, value when unused)
_UNSUPPORTED = (("tile", None), ("residual", None), ("plots", None), ("regions", None),
                ("refine_psf", False))


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


def _psf(args, image):
    from crowdphot.cli.checks import image_pixel_scale
    from crowdphot.cli.psfchoice import check_psf_matches_image, resolve_psf_spec

    spec = resolve_psf_spec(args.psf, image)
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
    from crowdphot.cli.phot import _finder

    finder, threshold = _finder(args, first)
    found = finder(first.data, mask=first.mask)
    if found is None or len(found) == 0:
        raise CLIError(f"{first.path}: no stars found (threshold {threshold:.4g}); "
                       "try a lower --threshold")
    ra, dec = first.wcs.all_pix2world(np.asarray(found["x_centroid"], dtype=float),
                                      np.asarray(found["y_centroid"], dtype=float), 0)
    return Table({"ra": ra, "dec": dec})


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

    t0 = time.perf_counter()
    for name, unused in _UNSUPPORTED:
        if getattr(args, name, unused) not in (unused, None, False):
            raise CLIError(f"--{name.replace('_', '-')} is not supported with several images "
                           "yet")
    images = [_read(p, args) for p in paths]
    exps = []
    for p, image in zip(paths, images, strict=True):
        filt = image.keyword("FILTER") or Path(p).stem
        data = image.data
        err = image.error
        if image.unit:
            try:
                unit = u.Unit(image.unit)
            except ValueError:
                raise CLIError(f"{p}: BUNIT {image.unit!r} is not a unit astropy reads") from None
            data = data * unit
            err = None if err is None else err * unit
        exps.append(Exposure(data, err, image.mask, image.wcs, _psf(args, image), str(filt),
                             name=str(p)))
    if len({e.error is None for e in exps}) > 1:
        raise CLIError("some files have an ERR extension and others not; give --err-ext none "
                       "to fit all with unit weights")
    cat = _catalog(args, images[0])
    table = fit_exposures(exps, cat, fit_shape=(args.fit_shape, args.fit_shape))
    write_table(table, args.output)
    filters = sorted({e.filter_name for e in exps})
    print(f"{len(table)} sources fitted jointly in {len(exps)} exposures "
          f"({', '.join(filters)}) in {time.perf_counter() - t0:.2f} s; wrote {args.output}")
    return 0
