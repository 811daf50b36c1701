"""Sky options of ``crowdphot phot``: estimate and subtract the sky before finding and fitting.

A PSF fit without a sky term turns every count of sky into flux (a sky of 20 made every star
of the notebook scene 3.7 % too bright) and a finder convolving a sky-laden image fires along
the borders. So by default the sky is estimated as a map
(:func:`crowdphot.background.sky.estimate_sky`: ``Background2D`` with the stars masked) and
subtracted from the image; the catalog's metadata records what was done.

``--sky map`` (default), ``--sky none``, or ``--sky VALUE`` (a constant); ``--sky-box N`` sets the
map's box size; ``--sky-out FILE`` writes the subtracted sky (float32 FITS with the science
header's WCS). With ``--local-bkg`` the default is ``none`` (the annuli measure the sky).

Tiled runs (``--tile``) read pixels only inside the tiles: every tile task subtracts the same
sky (on images up to 2048² the whole-image map, estimated once, here from the central sample
that is then the whole image; on larger ones a map estimated on its box plus a margin of sky
boxes, on the whole image's box grid: :mod:`crowdphot.pipeline._sky`); the metadata's
``sky_median``/``sky_rms`` then come from the central sample the detection threshold is
measured on. ``--sky-out`` (like ``--residual``)
reads the whole image into memory and writes the whole-image map, which equals the tiles'
maps up to the small remainder that module documents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crowdphot.cli.errors import CLIError

__all__ = ["add_sky_arguments", "check_sky_options", "sky_mode", "subtract_sky", "tiled_sky",
           "write_sky"]


def add_sky_arguments(parser):
    """Add ``--sky``, ``--sky-box`` and ``--sky-out`` to a parser."""
    parser.add_argument("--sky", default=None, metavar="map|none|VALUE",
                        help="sky subtracted before finding and fitting: 'map' (a Background2D "
                        "map with the stars masked), 'none', or a constant (default: map; "
                        "none with --local-bkg)")
    parser.add_argument("--sky-box", type=int, default=None, metavar="N",
                        help="box size of the sky map in pixels (default: 64, at least 10 "
                        "FWHM, at most a quarter of the image)")
    parser.add_argument("--sky-out", default=None, metavar="FILE",
                        help="write the subtracted sky map here (FITS)")


def sky_mode(args):
    """``('map', None)``, ``('none', None)`` or ``('value', float)`` from the options."""
    value = getattr(args, "sky", None)
    if value is None:
        return ("none" if getattr(args, "local_bkg", None) else "map"), None
    text = str(value).strip().lower()
    if text in ("map", "none"):
        return text, None
    try:
        number = float(text)
    except ValueError:
        raise CLIError(f"--sky must be 'map', 'none' or a number, got {value!r}") from None
    if not np.isfinite(number):
        raise CLIError(f"--sky must be finite, got {value!r}")
    return "value", number


def check_sky_options(args):
    """Fail on inconsistent sky options before any work."""
    mode, _ = sky_mode(args)
    box = getattr(args, "sky_box", None)
    if box is not None and box < 4:
        raise CLIError(f"--sky-box must be >= 4 pixels, got {box}")
    out = getattr(args, "sky_out", None)
    if out is not None:
        if mode == "none":
            raise CLIError("--sky-out needs a sky (--sky map or --sky VALUE)")
        if not str(out).lower().endswith((".fits", ".fit")):
            raise CLIError(f"--sky-out must be a .fits file, got {out}")
        if not Path(out).resolve().parent.is_dir():
            raise CLIError(f"--sky-out: folder {Path(out).parent} does not exist")


def subtract_sky(args, image):
    """Subtract the requested sky from ``image.data`` in place; return the sky or None.

    Parameters
    ----------
    args : argparse.Namespace
    image : crowdphot.io.fits.ImageData
        With pixels (``image.data`` not None); ``mask`` pixels are ignored by the estimate.

    Returns
    -------
    sky : ndarray of shape (ny, nx) or None
        None for ``--sky none`` (and nothing is changed).
    info : dict
        What to record in the catalog's metadata (``sky``, ``sky_median``, ``sky_rms``,
        ``sky_box``).
    """
    mode, value = sky_mode(args)
    if image.data is None:  # tiled out of core: the tasks subtract it (tiled_sky)
        return None, _sample_sky(args, image, mode, value)
    if mode == "none":
        if not getattr(args, "local_bkg", None):
            _warn_unsubtracted_sky(args, image)
        return None, {"sky": "none"}
    if mode == "value":
        sky = np.full(image.data.shape, value)
        info = {"sky": "constant", "sky_median": value}
    else:
        from crowdphot.background.sky import estimate_sky

        box = _sky_box(args, image.data.shape)
        try:
            sky, rms, _ = estimate_sky(image.data, mask=image.mask, box_size=box,
                                       fwhm=getattr(args, "fwhm", None))
        except ValueError as exc:
            raise CLIError(f"{args.image}: cannot estimate the sky ({exc}); give --sky VALUE "
                           "or --sky none") from None
        info = {"sky": "map", "sky_box": int(box), "sky_median": float(np.median(sky)),
                "sky_rms": float(np.median(rms))}
    if getattr(args, "tile", None) and mode == "map":
        from crowdphot.pipeline._sky import whole_sky_applies

        info["sky_method"] = (
            ("the whole-image map, each tile subtracting its cut," if whole_sky_applies(
                image.data.shape) else
             "estimated per tile (box + margin on the whole image's box grid)")
            + " for the fits; the whole-image map for the residual and --sky-out")
    image.data = image.data - sky
    # products written from this header (--residual, --sky-out) say what was subtracted
    image.header["SKYSUB"] = (info["sky"], "sky subtracted by crowdphot phot")
    image.header["SKYMED"] = (round(float(info["sky_median"]), 6), "median of that sky")
    return sky, info


def _sky_box(args, shape):
    from crowdphot.background.sky import auto_box_size

    return int(args.sky_box or auto_box_size(shape, fwhm=getattr(args, "fwhm", None)))


def tiled_sky(args, image):
    """Keywords ``sky`` and ``sky_options`` of ``photometry_tiled`` for ``--sky``.

    Parameters
    ----------
    args : argparse.Namespace
    image : crowdphot.io.fits.ImageData
        With ``planes`` (the file the tile tasks read).

    Returns
    -------
    kwargs : dict
        ``{}`` for ``--sky none``; ``{'sky': VALUE}``; or ``{'sky': 'map', 'sky_options':
        {...}}`` with the box and FWHM a whole-image run would use.
    """
    mode, value = sky_mode(args)
    if mode == "none":
        return {}
    if mode == "value":
        return {"sky": value}
    box = _sky_box(args, image.planes.shape)
    return {"sky": "map", "sky_options": {"box_size": box, "fwhm": getattr(args, "fwhm", None)}}


def _sample_sky(args, image, mode, value):
    """Metadata of the tiles' sky, from the central sample (``image.planes.sample()``).

    Sets ``image.sample``: ``(data, mask)`` of that sample minus its sky, for the detection
    threshold (a sky gradient would inflate its robust sigma).
    """
    data, _, mask = image.planes.sample()
    if mode == "none":
        image.sample = (data, mask)
        if not getattr(args, "local_bkg", None):
            _warn_unsubtracted_sky(args, image, data, mask)
        return {"sky": "none"}
    if mode == "value":
        image.sample = (data - value, mask)
        return {"sky": "constant", "sky_median": value}
    from crowdphot.background.sky import estimate_sky

    box = _sky_box(args, image.planes.shape)
    try:
        sky, rms, _ = estimate_sky(data, mask=mask, box_size=box,
                                   fwhm=getattr(args, "fwhm", None))
    except ValueError as exc:
        raise CLIError(f"{args.image}: cannot estimate the sky ({exc}); give --sky VALUE "
                       "or --sky none") from None
    image.sample = (data - sky, mask)
    from crowdphot.pipeline._sky import remember_whole_sky, whole_sky_applies

    # a sample that is the whole image is the tiles' map too: estimated once
    remember_whole_sky(image.planes, {"box_size": box, "fwhm": getattr(args, "fwhm", None)},
                       sky)
    method = ("the whole-image map (estimated once), each tile subtracting its cut"
              if whole_sky_applies(image.planes.shape) else
              "estimated per tile (box + margin on the whole image's box grid)")
    return {"sky": "map", "sky_box": box, "sky_median": float(np.median(sky)),
            "sky_rms": float(np.median(rms)),
            "sky_method": f"{method}; median and rms of the central sample"}


def _warn_unsubtracted_sky(args, image, data=None, mask=None):
    """Say so when ``--sky none`` leaves a clear sky level in the image."""
    import warnings

    from crowdphot.cli.stats import robust_sigma

    if data is None:
        data, mask = image.data, image.mask
    good = np.isfinite(data) if mask is None else (~mask & np.isfinite(data))
    values = data[good]
    if values.size < 2:
        return
    level = float(np.median(values[:: max(1, values.size // 1_000_000)]))
    sigma = robust_sigma(data, mask)
    if sigma > 0 and abs(level) > 3.0 * sigma:
        warnings.warn(f"{args.image}: --sky none but the image's median is {level:.4g} "
                      f"({abs(level) / sigma:.0f} sigma from zero): fluxes include that sky and "
                      "the finder fires along the borders; use --sky map or --local-bkg",
                      UserWarning, stacklevel=2)


def write_sky(args, image, sky):
    """Write ``sky`` to ``--sky-out`` (atomically, with the science header's WCS)."""
    if getattr(args, "sky_out", None) is None or sky is None:
        return
    from crowdphot.io.fits import image_header_for, write_fits_image

    header = image_header_for(image.header)
    if image.unit and "BUNIT" not in header:
        header["BUNIT"] = str(image.unit)
    header["COMMENT"] = "sky subtracted by crowdphot phot before finding and fitting"
    write_fits_image(sky, args.sky_out, header=header)
