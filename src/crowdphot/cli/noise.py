"""Detector-noise options of ``crowdphot phot``: likelihood, read noise and gain.

``--likelihood poisson`` fits by maximum likelihood on counts (see
:mod:`crowdphot.psf.likelihood`); it needs the read noise (electrons) and the gain (electrons
per data unit). Options win; otherwise they are read from standard header keywords (science
header first, then the primary header):

* read noise: ``READNOISE``, ``RDNOISE``, ``READNOIS``, ``RON``; HST's per-amplifier
  ``READNSEA``..``READNSED`` (their mean). JWST headers carry none (it lives in the CRDS
  ``readnoise`` reference file): give ``--read-noise``.
* gain: 1 when ``BUNIT`` is electrons (HST calibrated FLT/FLC images); else ``GAIN``
  (IRAF/NOAO, JWST-like simulations), then HST's ``ATODGAIN`` and ``CCDGAIN``.

Data that are not counts (``BUNIT`` a rate such as ``DN/s`` or a surface brightness such as
JWST's ``MJy/sr``) are refused: their pixel variance is not ``counts / gain + (R / gain)**2``.
"""

from __future__ import annotations

import numpy as np

from crowdphot.cli.errors import CLIError

__all__ = ["add_noise_arguments", "noise_options"]

READ_NOISE_KEYS = ("READNOISE", "RDNOISE", "READNOIS", "RON")
HST_AMP_KEYS = ("READNSEA", "READNSEB", "READNSEC", "READNSED")
GAIN_KEYS = ("GAIN", "ATODGAIN", "CCDGAIN")
_ELECTRONS = ("ELECTRON", "ELECTRONS", "E-")
_COUNTS = ("DN", "ADU", "COUNT", "COUNTS", "CT", "CTS")


def add_noise_arguments(parser):
    """Add ``--likelihood``, ``--read-noise``, ``--gain`` and ``--crlb`` to a parser."""
    parser.add_argument("--likelihood", choices=("gaussian", "poisson"), default="gaussian",
                        help="'poisson': maximum likelihood on counts with model-based "
                        "variances (Poisson + read noise); default: %(default)s (least "
                        "squares with the ERR extension, as photutils)")
    parser.add_argument("--read-noise", type=float, default=None, metavar="R",
                        help="read noise in electrons (default: header READNOISE/RDNOISE/"
                        "READNSEA-D)")
    parser.add_argument("--gain", type=float, default=None, metavar="G",
                        help="electrons per data unit (default: 1 for BUNIT electrons, else "
                        "header GAIN/ATODGAIN/CCDGAIN)")
    parser.add_argument("--crlb", action="store_true",
                        help="add a flux_crlb column (flux Cramér-Rao bound of each star)")


def _number(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _header_read_noise(image):
    for key in READ_NOISE_KEYS:
        v = _number(image.keyword(key))
        if v is not None and v >= 0:
            return v, key
    amps = [_number(image.keyword(k)) for k in HST_AMP_KEYS]
    amps = [v for v in amps if v is not None and v >= 0]
    if amps:
        return float(np.mean(amps)), "READNSEA-D (mean)"
    return None, None


def _unit_kind(unit):
    if unit is None:
        return "unknown"
    text = str(unit).strip().upper().replace(" ", "")
    if text in _ELECTRONS:
        return "electrons"
    if text in _COUNTS:
        return "counts"
    return "other"


def _header_gain(image):
    if _unit_kind(image.unit) == "electrons":
        return 1.0, "BUNIT electrons"
    for key in GAIN_KEYS:
        v = _number(image.keyword(key))
        if v is not None and v > 0:
            return v, key
    return None, None


def noise_options(args, image):
    """``likelihood, read_noise, gain, crlb`` keyword options for the photometry classes.

    Parameters
    ----------
    args : argparse.Namespace
        With ``likelihood``, ``read_noise``, ``gain`` and ``crlb``.
    image : crowdphot.io.fits.ImageData
        Header access (``keyword``) and ``unit``.

    Returns
    -------
    dict
        Empty for the default Gaussian mode without ``--crlb``.

    Raises
    ------
    CLIError
        Missing read noise or gain, non-count data, or invalid values.
    """
    likelihood = getattr(args, "likelihood", "gaussian")
    crlb = bool(getattr(args, "crlb", False))
    if likelihood == "gaussian" and not crlb:
        return {}
    what = "--likelihood poisson" if likelihood == "poisson" else "--crlb"
    if likelihood == "poisson" and _unit_kind(image.unit) == "other":
        raise CLIError(f"{what} needs data in counts (DN or electrons); BUNIT is "
                       f"{image.unit!r} (a rate or surface brightness: multiply by the "
                       "exposure time / flux calibration first)")
    read_noise, gain = args.read_noise, args.gain
    if read_noise is None:
        read_noise, _ = _header_read_noise(image)
        if read_noise is None:
            raise CLIError(f"{what}: no read noise in the header (READNOISE, RDNOISE, "
                           "READNSEA-D); give --read-noise (electrons)")
    elif not (np.isfinite(read_noise) and read_noise >= 0):
        raise CLIError(f"--read-noise must be >= 0, got {read_noise}")
    if gain is None:
        gain, _ = _header_gain(image)
        if gain is None:
            raise CLIError(f"{what}: no gain in the header (GAIN, ATODGAIN, CCDGAIN) and BUNIT "
                           "is not electrons; give --gain (electrons per data unit)")
    elif not (np.isfinite(gain) and gain > 0):
        raise CLIError(f"--gain must be > 0, got {gain}")
    return {"likelihood": likelihood, "read_noise": float(read_noise), "gain": float(gain),
            "crlb": crlb}
