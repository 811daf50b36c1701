"""Bit flags of the PSF photometry ``flags`` column.

The bits, names and meanings are those of photutils 3, so flag columns written by either
package decode the same way:

======  ========================  ==========================================================
bit     name                      set when
======  ========================  ==========================================================
1       n_pixels_fit_partial      fewer pixels were fitted than the full ``fit_shape`` stamp
2       outside_bounds            the fitted position lies outside the image
4       negative_flux             the fitted flux is <= 0
8       no_convergence            the fitter did not report convergence (e.g. hit maxiters)
16      no_covariance             no parameter covariance (so no uncertainties)
32      near_bound                fitted x or y within 0.01 px of its ``xy_bounds`` limit
64      no_overlap                the fit stamp does not overlap the image data
128     fully_masked              every pixel of the fit stamp is masked
256     too_few_pixels            fewer unmasked pixels than free parameters
512     non_finite_position       the fitted x or y is NaN or inf
1024    non_finite_flux           the fitted flux is NaN or inf
2048    non_finite_localbkg       the local background is NaN or inf (it was not subtracted)
4096    left_stamp                crowdphot: the position left its fit stamp; the fit was stopped
8192    absurd_value              crowdphot: an absurd fitted value was replaced by NaN
16384   merged                    crowdphot: merged with a too-close neighbour (merge_separation)
32768   unresolved_blend          crowdphot: a close pair's flux split is not pinned down
65536   contaminated              crowdphot: unmodelled neighbours' light biases the flux by
                                  more than its error
131072  unconstrained             crowdphot: flux error > 10 x the star's isolated error
======  ========================  ==========================================================

Bits 1-2048 are photutils 3's; 4096-131072 are crowdphot extensions (photutils lets runaway
fits run on and reports what they reach, never merges, does not test blends and does not
test the light of stars outside a group). A fit
stopped by ``left_stamp`` is also flagged ``no_convergence`` (8), as photutils flags the same
runaways when they hit its iteration limit.

Agreement with photutils on bit 8, measured on 400 faint isolated stars (flux 30, noise 5,
FWHM 3.3, ``fit_shape=5``; ``tests/test_fit_robust.py``): where photutils sets 8 crowdphot
never sets 16 (no covariance) or 2 (outside the image) instead, as it did before its robust
steps. The sources still flagged differently are different conditions, not different rules:
crowdphot sets 8 (+ 4096) on runaways that photutils lets leave their stamp and reports with
flags 0; photutils sets 8 on fits its trust-region fitter abandons at its evaluation limit
(100), where crowdphot's converges inside the stamp (median distance 0.08-0.2 px).

With ``compat='photutils'`` (:mod:`crowdphot.psf._compat`) the photometry classes set only bits
1-2048; ``PSF_FLAGS.photutils`` is the registry of those twelve and
``decode_psf_flags(..., compat='photutils')`` decodes them only, as photutils.

`PSF_FLAGS` is the registry (``PSF_FLAGS.NEGATIVE_FLUX == 4``, ``PSF_FLAGS.get_name(4)``),
`combine_flags` builds a flag column from boolean conditions and `decode_psf_flags`
(alias `decode_flags`) turns flag values back into names.

This module is also the one place where the bits are computed: the fitting paths (the batched
engine and the astropy-fitter path) return raw diagnostics (why a source was not fitted,
convergence, covariance availability, distances to bounds, runaway and absurd-value markers)
and `psf_flags` turns them into the ``flags`` column.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from crowdphot.core.validate import deprecated_positional
from crowdphot.psf._compat import check_compat

__all__ = ["FlagDefinition", "PSF_FLAGS", "NEAR_BOUND_TOL", "combine_flags", "decode_flags",
           "decode_psf_flags", "near_xy_bound", "psf_flags"]

#: A fitted x or y within this many pixels of an ``xy_bounds`` limit is flagged near_bound
#: (photutils' tolerance).
NEAR_BOUND_TOL = 0.01


@dataclass(frozen=True)
class FlagDefinition:
    """One flag: its bit value, name and what it means.

    Attributes
    ----------
    bit_value : int
        Power of two.
    name : str
        Name returned by `decode_psf_flags`.
    description : str
        One-line meaning.
    detailed_description : str
        Longer explanation.
    """

    bit_value: int
    name: str
    description: str
    detailed_description: str


_DEFINITIONS = (  # bits 1-2048: photutils 3's names and descriptions
    FlagDefinition(1, "n_pixels_fit_partial", "n_pixels_fit smaller than full fit_shape region",
                   "The number of fitted pixels (n_pixels_fit) is smaller than the full "
                   "fit_shape region, indicating partial PSF fitting (part of the stamp was off "
                   "the image or masked)."),
    FlagDefinition(2, "outside_bounds", "fitted position outside input image bounds",
                   "The fitted source position is outside the bounds of the input image."),
    FlagDefinition(4, "negative_flux", "non-positive flux",
                   "The fitted flux value is negative or zero, which is non-physical."),
    FlagDefinition(8, "no_convergence", "possible non-convergence",
                   "The PSF fitting algorithm may not have converged to a stable solution (for "
                   "example it reached its iteration limit)."),
    FlagDefinition(16, "no_covariance", "missing parameter covariance",
                   "Parameter covariance matrix is not available, preventing error "
                   "estimation."),
    FlagDefinition(32, "near_bound", "fitted parameter near a bound",
                   "One or more fitted parameters are very close to their imposed bounds."),
    FlagDefinition(64, "no_overlap", "no overlap with data",
                   "The source PSF fitting region has no overlap with valid data pixels."),
    FlagDefinition(128, "fully_masked", "fully masked source",
                   "All pixels in the source fitting region are masked."),
    FlagDefinition(256, "too_few_pixels", "too few pixels for fitting",
                   "Insufficient unmasked pixels available for reliable PSF fitting (fewer "
                   "unmasked pixels than free parameters)."),
    FlagDefinition(512, "non_finite_position", "non-finite fitted position",
                   "The fitted x or y position is NaN or inf, indicating an invalid or failed "
                   "fit."),
    FlagDefinition(1024, "non_finite_flux", "non-finite fitted flux",
                   "The fitted flux value is NaN or inf, indicating an invalid or failed fit."),
    FlagDefinition(2048, "non_finite_localbkg", "non-finite local background",
                   "The local background value is NaN or inf, so it was not subtracted before "
                   "fitting."),
    FlagDefinition(4096, "left_stamp", "position left the fit stamp (crowdphot)",
                   "During the fit the source's position moved outside its fit_shape stamp, "
                   "where the stamp's pixels no longer constrain it; its fit was stopped "
                   "there (no_convergence is set too) and its values are unreliable. A "
                   "member of a group of two or more is then dropped from the group's model "
                   "(the group refitted without it) and reports the flux measured at its "
                   "initial position."),
    FlagDefinition(8192, "absurd_value", "absurd fitted value replaced by NaN (crowdphot)",
                   "A fitted value was absurd (|flux| above 1e3 x the image's peak x the fit "
                   "area, or a position more than 10 fit boxes from its start) and is "
                   "reported as NaN instead."),
    FlagDefinition(16384, "merged", "merged with a too-close neighbour (crowdphot)",
                   "Two members of a group were too close to be told apart (PSFPhotometry's "
                   "merge_separation, DAOPHOT's rule): the brighter row carries the merged "
                   "star (summed flux, flux-weighted position, refitted), the other row is NaN; "
                   "both carry this bit. It also marks (grouped and all-star fits) a star that may "
                   "have absorbed more than its flux error of the light of a group member "
                   "whose fit failed (left_stamp or absurd_value: dropped from the model and "
                   "the group refitted without it)."),
    FlagDefinition(32768, "unresolved_blend",
                   "close pair whose flux split the data do not pin down (crowdphot)",
                   "A refit of this star and a close group member (within 1.5 FWHM) with both "
                   "held near their input positions moves this or the other flux by more than "
                   "2 of its errors at a chi-square cost below the square of that shift: the "
                   "errors do not cover what the data allow (typically a bright star plus a "
                   "weak one pushed aside where two similar stars are blended). Both members "
                   "carry this bit; their summed flux is reliable (crowdphot.psf.blends)."),
    FlagDefinition(65536, "contaminated",
                   "unmodelled neighbours' light biases the flux by more than its error "
                   "(crowdphot)",
                   "Light of other fitted stars that was not modelled with this star (stars "
                   "of other groups; every other star without a grouper) falls on its fit "
                   "stamp and, by the linear least-squares response of its fit (same pixels "
                   "and weights), moves its flux by more than its flux error. Never set with "
                   "subtract_neighbors=True, where the other groups' models are subtracted; "
                   "IterativePSFPhotometry(mode='new') also counts the stars found in later "
                   "iterations (crowdphot.psf.contamination)."),
    FlagDefinition(131072, "unconstrained",
                   "flux error above 10 x the star's isolated error (crowdphot)",
                   "The reported flux error exceeds 10 x the flux error of the same star alone "
                   "on its fit stamp (same pixels and weights): the group's fit cannot tell "
                   "its flux from its partners' (typically two members on one star, fluxes "
                   "anti-correlated, errors up to 1e6) and the flux is useless "
                   "(crowdphot.psf.contamination)."),
)

# Older and short spellings accepted wherever a flag is looked up by name.
_ALIASES = {
    "npixfit_partial": "n_pixels_fit_partial",  # photutils < 3 name
    "partial": "n_pixels_fit_partial",
    "outside": "outside_bounds",
    "nonpositive_flux": "negative_flux",
    "not_converged": "no_convergence",
    "nonfinite_position": "non_finite_position",
    "nonfinite_flux": "non_finite_flux",
    "nonfinite_localbkg": "non_finite_localbkg",
}


class _FlagRegistry:
    """Lookup of flag definitions by bit value or name (use the `PSF_FLAGS` instance).

    Every flag is also an upper-case integer attribute, e.g. ``PSF_FLAGS.NO_CONVERGENCE == 8``.

    Examples
    --------
    >>> PSF_FLAGS.get_name(8)
    'no_convergence'
    >>> PSF_FLAGS.get_bit_value('fully_masked')
    128
    """

    def __init__(self, definitions, photutils=None):
        self._definitions = tuple(definitions)
        self._photutils = self if photutils is None else photutils
        self._by_bit = {d.bit_value: d for d in self._definitions}
        self._by_name = {d.name: d for d in self._definitions}
        for d in self._definitions:
            setattr(self, d.name.upper(), d.bit_value)
        self.NPIXFIT_PARTIAL = self.N_PIXELS_FIT_PARTIAL

    def __repr__(self):
        return f"<PSF flag registry: {', '.join(self.names)}>"

    @property
    def all_flags(self):
        """list of `FlagDefinition`, in bit order."""
        return list(self._definitions)

    @property
    def bit_values(self):
        """list of int, in bit order."""
        return [d.bit_value for d in self._definitions]

    @property
    def names(self):
        """list of str, in bit order."""
        return [d.name for d in self._definitions]

    @property
    def flag_dict(self):
        """dict: bit value -> name."""
        return {d.bit_value: d.name for d in self._definitions}

    @property
    def all_bits(self):
        """int: OR of every defined bit."""
        return sum(self.bit_values)

    @property
    def photutils(self):
        """The registry of photutils 3's twelve flags (bits 1-2048) only.

        What ``compat='photutils'`` uses: ``PSF_FLAGS.photutils.bit_values`` are photutils'
        bit values and ``PSF_FLAGS.photutils.all_bits == 4095``.
        """
        return self._photutils

    def get_definition(self, identifier):
        """`FlagDefinition` for a bit value (int) or a name (str, aliases accepted).

        Raises
        ------
        KeyError
            Unknown bit value or name.
        TypeError
            ``identifier`` is neither an int nor a str.
        """
        if isinstance(identifier, str):
            name = _ALIASES.get(identifier, identifier)
            if name not in self._by_name:
                raise KeyError(f"No flag with name {identifier!r}; known: {self.names}")
            return self._by_name[name]
        if isinstance(identifier, numbers.Integral) and not isinstance(identifier, bool):
            if int(identifier) not in self._by_bit:
                raise KeyError(f"No flag with bit value {identifier!r}")
            return self._by_bit[int(identifier)]
        raise TypeError(f"identifier must be int (bit value) or str (name), got {identifier!r}")

    def get_name(self, bit_value):
        """Name of the flag with ``bit_value``."""
        return self.get_definition(bit_value).name

    def get_bit_value(self, name):
        """Bit value of the flag called ``name``."""
        return self.get_definition(name).bit_value

    def get_description(self, bit_value):
        """One-line description of the flag with ``bit_value``."""
        return self.get_definition(bit_value).description

    def get_detailed_description(self, bit_value):
        """Longer description of the flag with ``bit_value``."""
        return self.get_definition(bit_value).detailed_description


#: Flags photutils 3 defines (bits 1-2048); the others are crowdphot extensions.
_N_PHOTUTILS = 12

#: The registry of PSF photometry flags (``PSF_FLAGS.photutils``: photutils' twelve only).
PSF_FLAGS = _FlagRegistry(_DEFINITIONS, _FlagRegistry(_DEFINITIONS[:_N_PHOTUTILS]))


def combine_flags(**conditions):
    """OR together the bits of the flags whose condition is true.

    Parameters
    ----------
    **conditions : bool or array_like of bool
        Keyword = flag name (or alias such as ``partial``, ``outside``), value = where that
        flag is set. Arrays broadcast together.

    Returns
    -------
    flags : ndarray of int64
        Shape of the broadcast conditions (0-d for scalars or no conditions).

    Raises
    ------
    TypeError
        Unknown flag name, or a condition that is not boolean.

    Examples
    --------
    >>> combine_flags(partial=[True, False, True], negative_flux=[False, False, True])
    array([1, 0, 5])
    """
    bits = {}
    for key, value in conditions.items():
        try:
            bit = PSF_FLAGS.get_bit_value(key)
        except KeyError:
            raise TypeError(
                f"combine_flags got an unknown flag name {key!r}; known: {PSF_FLAGS.names}"
            ) from None
        arr = np.asarray(value)
        if arr.dtype != bool:
            raise TypeError(f"condition {key!r} must be boolean, got dtype {arr.dtype}")
        bits[key] = (bit, arr)
    shape = np.broadcast_shapes(*(arr.shape for _, arr in bits.values()))
    flags = np.zeros(shape, dtype=np.int64)
    for bit, arr in bits.values():
        flags |= np.where(arr, np.int64(bit), np.int64(0))
    return flags


def _decode_value(value, return_bit_values, registry=PSF_FLAGS):
    return [
        (d.bit_value if return_bit_values else d.name)
        for d in registry.all_flags
        if value & d.bit_value
    ]


def _check_flag_scalar(value):
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"Flag value must be an integer (flags must be integers), got {value!r}")
    if value < 0:
        raise ValueError(f"Flag value must be a non-negative integer, got {value!r}")
    return int(value)


@deprecated_positional("return_bit_values")
def decode_psf_flags(flags, *, return_bit_values=False, compat=None):
    """Names (or bit values) of the flags set in each value of ``flags``.

    Parameters
    ----------
    flags : int or array_like of int
        One flag value or a flag column (any shape; arrays are decoded in flattened order).
    return_bit_values : bool, optional
        Return the bit values (ints) instead of the names.
    compat : {None, 'photutils'}, optional
        'photutils': decode photutils 3's twelve flags only (bits 1-2048; higher bits are
        ignored, as photutils ignores unknown bits). Default None: every crowdphot flag.

    Returns
    -------
    decoded : list of str (or int), or list of such lists
        For a scalar (or 0-d array) a single list of the set flags, in bit order; for an array
        one list per element. An unflagged value gives ``[]``.

    Raises
    ------
    TypeError
        Non-integer values.
    ValueError
        Negative values.

    Notes
    -----
    The flags (name : bit, description):

<flag descriptions>

    Bits 1-2048 are photutils 3's. crowdphot adds six: 4096 ``left_stamp`` (the position
    left its fit stamp during the fit, which was stopped there and is also flagged
    ``no_convergence``) and 8192 ``absurd_value`` (an absurd fitted value -- |flux| above
    1e3 x the image's peak x the fit area, or a position more than 10 fit boxes from its
    start -- was replaced by NaN); 16384 ``merged`` (a too-close pair merged into one
    star, ``merge_separation``); and 32768 ``unresolved_blend`` (a close pair whose split of
    the flux the data do not pin down: a refit held near the input positions moves a flux by
    more than 2 errors at a chi-square cost below the square of that shift, see
    :mod:`crowdphot.psf.blends`); 65536 ``contaminated`` (light of stars not modelled with
    this one biases its flux by more than its error) and 131072 ``unconstrained`` (a flux
    error above 10 x the star's isolated one; both :mod:`crowdphot.psf.contamination`).

    Examples
    --------
    >>> decode_psf_flags(4104)
    ['no_convergence', 'left_stamp']
    >>> decode_psf_flags(5)
    ['n_pixels_fit_partial', 'negative_flux']
    >>> decode_psf_flags([0, 8, 136])
    [[], ['no_convergence'], ['no_convergence', 'fully_masked']]
    >>> decode_psf_flags(136, return_bit_values=True)
    [8, 128]
    >>> decode_psf_flags(4104, compat='photutils')
    ['no_convergence']
    """
    registry = PSF_FLAGS.photutils if check_compat(compat) == "photutils" else PSF_FLAGS
    if np.isscalar(flags):
        return _decode_value(_check_flag_scalar(flags), return_bit_values, registry)
    arr = np.asarray(getattr(flags, "value", flags))
    if arr.ndim == 0:
        return _decode_value(_check_flag_scalar(arr.item()), return_bit_values, registry)
    arr = arr.ravel()
    if arr.size == 0:
        return []
    if arr.dtype.kind not in "iu":
        raise TypeError(f"Flag value must be an integer (flags must be integers), got dtype "
                        f"{arr.dtype}")
    if arr.dtype.kind == "i" and np.any(arr < 0):
        raise ValueError("Flag value must be a non-negative integer")
    # A flag column holds few distinct values: decode each once, then copy per row.
    uniq, inverse = np.unique(arr, return_inverse=True)
    table = [_decode_value(int(v), return_bit_values, registry) for v in uniq]
    return [list(table[k]) for k in inverse.tolist()]


#: Short alias of `decode_psf_flags`.
decode_flags = decode_psf_flags


def near_xy_bound(values, inits, xy_bounds, *, tol=NEAR_BOUND_TOL):
    """Sources whose fitted x or y lies within ``tol`` of an ``xy_bounds`` limit.

    Parameters
    ----------
    values, inits : sequence of two ndarray of shape (n,)
        Fitted and initial ``(x, y)``.
    xy_bounds : None or (bx, by)
        Maximum distance of the fit from its start per axis (None: unbounded axis).

    Returns
    -------
    ndarray of bool, shape (n,)

    Examples
    --------
    >>> near_xy_bound((np.array([11.0, 10.5]), np.array([5.0, 5.0])),
    ...               (np.array([10.0, 10.0]), np.array([5.0, 5.0])), (1.0, None)).tolist()
    [True, False]
    """
    near = np.zeros(np.shape(values[0]), dtype=bool)
    if xy_bounds is None:
        return near
    for val, init, b in zip(values, inits, xy_bounds, strict=True):
        if b is None:
            continue
        with np.errstate(invalid="ignore"):
            near |= (np.abs(val - (init - b)) <= tol) | (np.abs(val - (init + b)) <= tol)
    return near


def psf_flags(*, x, y, flux, n_pixels, fit_shape, shape, reason, converged, cov_ok,
              near_bound, local_bkg, left_stamp=None, absurd=None):
    """The ``flags`` column from a fit's raw diagnostics (photutils 3 bits + extensions).

    Parameters
    ----------
    x, y, flux : ndarray of shape (n,)
        Reported fitted values (NaN where not fitted or replaced).
    n_pixels : ndarray of int, shape (n,)
        Fitted pixels of the source's own stamp.
    fit_shape : (fy, fx)
    shape : (ny, nx)
        Image shape.
    reason : ndarray of str, shape (n,)
        '' when the source was fitted, else why not ('no_overlap', 'fully_masked',
        'too_few_pixels', 'non_finite_flux', 'invalid_position').
    converged, cov_ok, near_bound : ndarray of bool, shape (n,)
    local_bkg : ndarray of shape (n,)
    left_stamp, absurd : ndarray of bool, shape (n,), optional
        The position left its fit stamp (the fit was stopped); an absurd value was replaced
        by NaN.

    Returns
    -------
    flags : ndarray of int64, shape (n,)

    Examples
    --------
    >>> f = psf_flags(x=np.array([5.0, np.nan]), y=np.array([5.0, 3.0]),
    ...               flux=np.array([-1.0, 2.0]), n_pixels=np.array([25, 25]),
    ...               fit_shape=(5, 5), shape=(10, 10), reason=np.array(['', '']),
    ...               converged=np.array([True, True]), cov_ok=np.array([True, False]),
    ...               near_bound=np.array([False, False]), local_bkg=np.zeros(2))
    >>> f.tolist()
    [4, 528]
    """
    ny, nx = shape
    n = len(x)
    flags = np.zeros(n, dtype=np.int64)
    reason = np.asarray(reason)
    valid = reason == ""
    with np.errstate(invalid="ignore"):
        flags[n_pixels < int(np.prod(fit_shape))] |= PSF_FLAGS.N_PIXELS_FIT_PARTIAL
        outside = (x < -0.5) | (y < -0.5) | (x > nx - 0.5) | (y > ny - 0.5)
        flags[outside] |= PSF_FLAGS.OUTSIDE_BOUNDS
        flags[flux <= 0] |= PSF_FLAGS.NEGATIVE_FLUX
    flags[valid & ~converged] |= PSF_FLAGS.NO_CONVERGENCE
    flags[~(valid & cov_ok)] |= PSF_FLAGS.NO_COVARIANCE
    flags[valid & near_bound] |= PSF_FLAGS.NEAR_BOUND
    flags[reason == "no_overlap"] |= PSF_FLAGS.NO_OVERLAP
    flags[reason == "fully_masked"] |= PSF_FLAGS.FULLY_MASKED
    flags[reason == "too_few_pixels"] |= PSF_FLAGS.TOO_FEW_PIXELS
    flags[reason == "non_finite_flux"] |= PSF_FLAGS.NON_FINITE_FLUX
    flags[~np.isfinite(x) | ~np.isfinite(y)] |= PSF_FLAGS.NON_FINITE_POSITION
    flags[~np.isfinite(flux)] |= PSF_FLAGS.NON_FINITE_FLUX
    flags[~np.isfinite(np.asarray(local_bkg, dtype=float))] |= PSF_FLAGS.NON_FINITE_LOCALBKG
    if left_stamp is not None:
        flags[valid & left_stamp] |= PSF_FLAGS.LEFT_STAMP | PSF_FLAGS.NO_CONVERGENCE
    if absurd is not None:
        flags[valid & absurd] |= PSF_FLAGS.ABSURD_VALUE
    return flags


def flag_descriptions(indent="    ", bullet=""):
    """The flag list as docstring lines: ``'name'`` : bit N, description (one per flag)."""
    return "\n".join(f"{indent}{bullet}``{d.name!r}`` : bit {d.bit_value}, {d.description}"
                     for d in _DEFINITIONS)


def flags_column_doc(indent="        "):
    """The ``flags`` column paragraph of the photometry classes' ``__call__`` docstrings."""
    lines = [f"{indent}* ``flags`` : bitwise flag values (sums of the bits below):",
             flag_descriptions(indent + "  ", "- ")]
    return "\n".join(lines)


decode_psf_flags.__doc__ = decode_psf_flags.__doc__.replace("<flag descriptions>",
                                                            flag_descriptions("    ", "- "))
