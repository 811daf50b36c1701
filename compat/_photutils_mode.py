"""photutils' names with crowdphot's photutils-identical option on: ``compat='photutils'``.

In its photutils-mode run, ``compat/run_compat.py`` binds the photutils tests' imports of the
names listed under ``[photutils_mode]`` in ``compat/exclusions.toml`` to this module (copied
into the build as ``compat_tests._photutils_mode``). Each is crowdphot's own public object,
called as a user who wants photutils' behaviour calls it: the classes with
``compat='photutils'`` as their default, ``decode_psf_flags(..., compat='photutils')`` and
``PSF_FLAGS.photutils``. Nothing else changes.
"""

import functools

import crowdphot.psf as _psf

__all__ = ["PSF_FLAGS", "IterativePSFPhotometry", "PSFPhotometry", "decode_flags",
           "decode_psf_flags"]

#: photutils 3's twelve flags (bits 1-2048).
PSF_FLAGS = _psf.PSF_FLAGS.photutils


@functools.wraps(_psf.decode_psf_flags)
def decode_psf_flags(flags, *args, **kwargs):
    kwargs.setdefault("compat", "photutils")
    return _psf.decode_psf_flags(flags, *args, **kwargs)


decode_flags = decode_psf_flags


class PSFPhotometry(_psf.PSFPhotometry):
    __doc__ = _psf.PSFPhotometry.__doc__

    def __init__(self, *args, compat="photutils", **kwargs):
        super().__init__(*args, compat=compat, **kwargs)


class IterativePSFPhotometry(_psf.IterativePSFPhotometry):
    __doc__ = _psf.IterativePSFPhotometry.__doc__

    def __init__(self, *args, compat="photutils", **kwargs):
        super().__init__(*args, compat=compat, **kwargs)
