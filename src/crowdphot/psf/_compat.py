"""``compat='photutils'``: photutils 3.0's behaviour where crowdphot deliberately differs.

crowdphot's defaults are honest where photutils' are not (see docs/compat.md). One option,
``compat='photutils'`` on :class:`~crowdphot.psf.PSFPhotometry`,
:class:`~crowdphot.psf.IterativePSFPhotometry`, :func:`~crowdphot.psf.run_psf_photometry`
and :func:`~crowdphot.psf.decode_psf_flags`, gives photutils' behaviour instead:

- **flag bits**: only photutils' twelve (1-2048); crowdphot's 4096 ``left_stamp``, 8192
  ``absurd_value``, 16384 ``merged`` and 32768 ``unresolved_blend`` (whose test does not run)
  are never set (``PSF_FLAGS.photutils`` is the registry of those twelve, and
  ``decode_psf_flags(..., compat='photutils')`` ignores higher bits, as photutils does);
- **runaway and no-signal fits**: a group in which crowdphot's engine stopped a source at the
  edge of its fit stamp or found an absurd value (which it reports as NaN) is refitted as
  photutils fits it -- its members' stamps joined, astropy's ``TRFLSQFitter`` -- and the values
  that fit reaches are reported (e.g. a star on a blank image keeps its start position with
  a flux of ~1e-15), flagged only by photutils' own bits;
- **shared stamp pixels**: counted once per stamp (``shared_pixels='photutils'``);
- **fit_shape**: any odd size >= 1 (a stamp smaller than the free parameters flags its sources
  ``too_few_pixels``, 256), checked in photutils' order and words;
- **qfit, cfit, reduced_chi2**: NaN for fitters that return no residual array (e.g.
  ``SimplexLSQFitter``), as photutils.

crowdphot's extensions that have no photutils counterpart (``fit_sky``,
``subtract_neighbors``, ``merge_separation``, ``likelihood='poisson'``, ``crlb``, and
IterativePSFPhotometry's ``drop_significance``) raise a ``ValueError`` with
``compat='photutils'``; ``blend_test`` is ignored there (photutils has no such flag).
"""

from __future__ import annotations

__all__ = ["check_compat", "check_compat_options"]


def check_compat(compat):
    """Validate a ``compat`` option: None (crowdphot's behaviour) or 'photutils'.

    Raises
    ------
    ValueError
        Any other value.

    Examples
    --------
    >>> check_compat('photutils')
    'photutils'
    """
    if compat is None or (isinstance(compat, str) and compat == "photutils"):
        return compat
    raise ValueError(f"compat must be None or 'photutils', got {compat!r}")


def check_compat_options(compat, *, shared_pixels, fit_sky=False, subtract_neighbors=False,
                         merge_separation=None, likelihood="gaussian", crlb=False,
                         bias_correction=False):
    """Validate ``compat`` against the other options; return ``(compat, shared_pixels)``.

    ``shared_pixels=None`` resolves to 'photutils' under ``compat='photutils'``, else 'once'.

    Raises
    ------
    ValueError
        Unknown ``compat`` or ``shared_pixels``; a crowdphot extension (or
        ``shared_pixels='once'``) asked for together with ``compat='photutils'``.

    Examples
    --------
    >>> check_compat_options('photutils', shared_pixels=None)
    ('photutils', 'photutils')
    >>> check_compat_options(None, shared_pixels=None)
    (None, 'once')
    """
    compat = check_compat(compat)
    if shared_pixels is not None and shared_pixels not in ("once", "photutils"):
        raise ValueError(f"shared_pixels must be 'once' or 'photutils', got {shared_pixels!r}")
    if compat is None:
        return None, "once" if shared_pixels is None else shared_pixels
    extensions = {"shared_pixels='once'": shared_pixels == "once", "fit_sky=True": fit_sky,
                  "subtract_neighbors=True": subtract_neighbors,
                  "merge_separation": merge_separation is not None,
                  "likelihood='poisson'": likelihood == "poisson", "crlb=True": crlb,
                  "bias_correction=True": bias_correction}
    asked = [name for name, on in extensions.items() if on]
    if asked:
        raise ValueError(f"compat='photutils' reproduces photutils, which has no "
                         f"{', '.join(asked)}; drop compat or these options")
    return compat, "photutils"
