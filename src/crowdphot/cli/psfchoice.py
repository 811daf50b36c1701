"""Which PSF fits an image: the header's INSTRUME/FILTER/PUPIL/DETECTOR, and a refusal when a
PSF from one telescope or instrument is applied to an image from another.

``--psf`` defaults to the image's own configuration (a JWST/NIRCam image gets the built-in grid
of its filter and detector); any other image needs a PSF file. A PSF whose telescope or
instrument is known and differs from the image's is refused: its fluxes would be wrong with no
flag to say so.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from crowdphot.cli.errors import CLIError

__all__ = ["resolve_psf_spec", "check_psf_matches_image", "builtin_parts"]

_JWST = ("NIRCAM", "MIRI", "NIRISS", "NIRSPEC", "FGS")
_HST = ("WFC3", "ACS", "WFPC2", "STIS", "NICMOS", "WFPC", "FOC")
_SPITZER = ("IRAC", "MIPS", "IRS")

# STDPSF file-name detector tokens (Anderson's libraries): STDPSF_<token>_<filter>[...].fits
_STDPSF_TOKENS = {
    "WFPC2": ("HST", "WFPC2"), "ACSHRC": ("HST", "ACS"), "ACSWFC": ("HST", "ACS"),
    "WFC3UV": ("HST", "WFC3"), "WFC3IR": ("HST", "WFC3"), "NRCSW": ("JWST", "NIRCAM"),
    "NRCAL": ("JWST", "NIRCAM"), "NRCBL": ("JWST", "NIRCAM"), "NIRISS": ("JWST", "NIRISS"),
    "MIRI": ("JWST", "MIRI"),
    **{f"NRC{m}{i}": ("JWST", "NIRCAM") for m in "AB" for i in range(1, 6)},
}


def _clean(value):
    return None if value is None or not str(value).strip() else str(value).strip().upper()


def _telescope(telescop, instrume):
    """``(telescope, instrument)`` from header-like values, either may be None."""
    tel, ins = _clean(telescop), _clean(instrume)
    if ins:
        ins = ins.split("/")[-1] if "/" in ins else ins
    if tel:
        tel = tel.split("/")[0]
        tel = {"SPITZER": "SPITZER", "SST": "SPITZER"}.get(tel, tel)
    if tel is None and ins is not None:
        tel = ("JWST" if ins in _JWST else "HST" if ins in _HST
               else "SPITZER" if ins in _SPITZER else None)
    return tel, ins


def image_configuration(image):
    """``(telescope, instrument, filter, pupil, detector)`` of an image, None where unknown."""
    tel, ins = _telescope(image.keyword("TELESCOP"), image.keyword("INSTRUME"))
    return tel, ins, _clean(image.keyword("FILTER")), _clean(image.keyword("PUPIL")), \
        _clean(image.keyword("DETECTOR"))


def builtin_parts(spec):
    """``(filter, detector)`` of ``builtin:FILTER[:DETECTOR]`` (either may be None).

    Examples
    --------
    >>> builtin_parts('builtin:F444W:NRCB5'), builtin_parts('builtin')
    (('F444W', 'NRCB5'), (None, None))
    """
    rest = str(spec).split(":", 1)[1] if ":" in str(spec) else ""
    parts = [p for p in re.split(r"[:/,]", rest) if p.strip()]
    filt = parts[0].strip().upper() if parts else None
    det = parts[1].strip().upper() if len(parts) > 1 else None
    return filt, det


def resolve_psf_spec(spec, image):
    """The ``--psf`` value to load: the built-in grid of the image's configuration by default.

    Parameters
    ----------
    spec : str or None
        ``--psf``: None (from the header), ``builtin`` / ``builtin:FILTER[:DETECTOR]`` or a
        file.
    image : ImageData

    Returns
    -------
    spec : str
        A file path, or ``builtin:FILTER:DETECTOR`` with both filled in.

    Raises
    ------
    CLIError
        No ``--psf`` for an image that is not JWST/NIRCam; a configuration without a built-in
        PSF.
    """
    from crowdphot.datasets.jwst import nircam_filter_detector

    is_builtin = spec is None or str(spec).lower().split(":", 1)[0] == "builtin"
    if not is_builtin:
        return spec
    tel, ins, filt, pupil, det = image_configuration(image)
    path = image.path
    if spec is None and ins != "NIRCAM":
        what = (f"INSTRUME={ins}" if ins else f"TELESCOP={tel}" if tel
                else "no INSTRUME/FILTER keywords")
        raise CLIError(f"{path}: no built-in PSF for this image ({what}; built-in PSFs are "
                       "JWST/NIRCam); give --psf with an STPSF/STDPSF grid or a PSF image file")
    want_filt, want_det = builtin_parts(spec or "builtin")
    if (ins is not None and ins != "NIRCAM") or tel not in (None, "JWST"):
        raise CLIError(f"{path}: the built-in PSF is JWST/NIRCam's but the image is from "
                       f"{tel or '?'}/{ins or '?'} (TELESCOP/INSTRUME); give --psf with a "
                       "PSF file for that instrument")
    try:
        if want_filt is None:
            return "builtin:{}:{}".format(*nircam_filter_detector(filt, pupil,
                                                                  want_det or det))
        header_filt = None
        if filt is not None or pupil is not None:
            try:
                header_filt = nircam_filter_detector(filt, pupil, None)[0]
            except ValueError:
                header_filt = None
        if header_filt is not None and header_filt != want_filt:
            warnings.warn(f"{path}: the image header says FILTER={header_filt} but the PSF is "
                          f"builtin:{want_filt}; pass --psf builtin:{header_filt} (or no --psf) "
                          "or a PSF grid file for that filter", UserWarning, stacklevel=2)
        # the header's detector when it is of the asked filter's channel
        try:
            return "builtin:{}:{}".format(*nircam_filter_detector(want_filt, None,
                                                                  want_det or det))
        except ValueError:
            if want_det is not None:
                raise
            return "builtin:{}:{}".format(*nircam_filter_detector(want_filt, None, None))
    except ValueError as exc:
        raise CLIError(f"{path}: {exc}") from None


def _psf_file_configuration(path, model):
    """``(telescope, instrument, filter)`` a PSF file declares (header, meta or name)."""
    meta = {str(k).lower(): v for k, v in (getattr(model, "meta", None) or {}).items()}
    tel, ins = _telescope(meta.get("telescop"), meta.get("instrume") or meta.get("instrument"))
    filt = _clean(meta.get("filter"))
    name = Path(str(path)).name.upper()
    m = re.match(r"STDPSF_([A-Z0-9]+)_([A-Z0-9]+)", name)
    if m and m.group(1) in _STDPSF_TOKENS:
        tel2, ins2 = _STDPSF_TOKENS[m.group(1)]
        tel, ins = tel or tel2, ins or ins2
        filt = filt or m.group(2)
    return tel, ins, filt


def check_psf_matches_image(spec, model, image):
    """Refuse a PSF whose telescope or instrument differs from the image's; warn on filters.

    Parameters
    ----------
    spec : str
        The resolved ``--psf`` (a file or ``builtin:...``).
    model : PSF model
        As loaded (its ``meta`` is read for STPSF/STDPSF keywords).
    image : ImageData

    Raises
    ------
    CLIError
        Both telescopes (or instruments) are known and differ.
    """
    if str(spec).lower().startswith("builtin"):
        return  # resolve_psf_spec checked it
    p_tel, p_ins, p_filt = _psf_file_configuration(spec, model)
    i_tel, i_ins, i_filt, i_pupil, _ = image_configuration(image)
    clash = (p_tel and i_tel and p_tel != i_tel) or (p_ins and i_ins and p_ins != i_ins)
    if clash:
        raise CLIError(f"{image.path}: the PSF {spec} is for {p_tel or '?'}/{p_ins or '?'} but "
                       f"the image is from {i_tel or '?'}/{i_ins or '?'} (TELESCOP/INSTRUME); "
                       "give a PSF for the image's instrument")
    eff = i_pupil if i_pupil and i_pupil.startswith("F") and i_pupil[-1] in "MNW" else i_filt
    if p_filt and eff and p_filt != eff and p_filt != i_filt:
        warnings.warn(f"{image.path}: the image header says FILTER={eff} but the PSF file "
                      f"{spec} is for {p_filt}", UserWarning, stacklevel=2)
