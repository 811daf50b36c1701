"""Tests for crowdphot.psf.flags: bit registry parity with photutils, decoding and combining."""

import numpy as np
import pytest
from astropy.table import Column, MaskedColumn
from hypothesis import given, settings
from hypothesis import strategies as st
from photutils.psf import PSF_FLAGS as PHOTUTILS_FLAGS
from photutils.psf import decode_psf_flags as photutils_decode

from crowdphot.psf.flags import (
    PSF_FLAGS,
    FlagDefinition,
    combine_flags,
    decode_flags,
    decode_psf_flags,
)

EXPECTED = {
    1: "n_pixels_fit_partial", 2: "outside_bounds", 4: "negative_flux", 8: "no_convergence",
    16: "no_covariance", 32: "near_bound", 64: "no_overlap", 128: "fully_masked",
    256: "too_few_pixels", 512: "non_finite_position", 1024: "non_finite_flux",
    2048: "non_finite_localbkg",
}


#: crowdphot's extensions, above photutils' bits
EXTENSIONS = {4096: "left_stamp", 8192: "absurd_value", 16384: "merged",
              32768: "unresolved_blend", 65536: "contaminated", 131072: "unconstrained"}


def test_registry_bits_and_names():
    # photutils' bits, names and order first, then crowdphot's extension bits
    assert PSF_FLAGS.flag_dict == {**EXPECTED, **EXTENSIONS}
    assert PSF_FLAGS.bit_values[:12] == PHOTUTILS_FLAGS.bit_values
    assert PSF_FLAGS.names[:12] == PHOTUTILS_FLAGS.names
    assert PSF_FLAGS.all_bits == 4095 + 4096 + 8192 + 16384 + 32768 + 65536 + 131072
    for bit, name in EXTENSIONS.items():
        assert getattr(PSF_FLAGS, name.upper()) == bit
        assert PSF_FLAGS.get_definition(bit).detailed_description
        assert decode_psf_flags(bit) == [name]
    for bit, name in EXPECTED.items():
        assert getattr(PSF_FLAGS, name.upper()) == getattr(PHOTUTILS_FLAGS, name.upper()) == bit
        assert PSF_FLAGS.get_name(bit) == name
        assert PSF_FLAGS.get_bit_value(name) == bit
        definition = PSF_FLAGS.get_definition(bit)
        assert isinstance(definition, FlagDefinition)
        assert definition.description and definition.detailed_description
        assert PSF_FLAGS.get_description(bit) == definition.description
        assert PSF_FLAGS.get_detailed_description(bit) == definition.detailed_description
    assert [d.bit_value for d in PSF_FLAGS.all_flags] == sorted({**EXPECTED, **EXTENSIONS})
    assert PSF_FLAGS.NPIXFIT_PARTIAL == 1
    assert "no_convergence" in repr(PSF_FLAGS)


def test_registry_aliases_and_errors():
    assert PSF_FLAGS.get_bit_value("npixfit_partial") == 1
    assert PSF_FLAGS.get_bit_value("partial") == 1
    assert PSF_FLAGS.get_bit_value("outside") == 2
    assert PSF_FLAGS.get_name(np.int64(8)) == "no_convergence"
    with pytest.raises(KeyError, match="bit value 3"):
        PSF_FLAGS.get_definition(3)
    with pytest.raises(KeyError, match="'bogus'"):
        PSF_FLAGS.get_definition("bogus")
    with pytest.raises(TypeError, match="identifier"):
        PSF_FLAGS.get_definition(1.0)
    with pytest.raises(TypeError, match="identifier"):
        PSF_FLAGS.get_definition(True)


@pytest.mark.parametrize("value", [0, 1, 5, 8, 136, 4095, 2048 + 2**20, 3 * 1024 + 17])
@pytest.mark.parametrize("bits", [False, True])
def test_decode_scalar_matches_photutils(value, bits):
    ours = decode_psf_flags(value, return_bit_values=bits)
    assert ours == photutils_decode(value, return_bit_values=bits)
    assert decode_psf_flags(np.int32(value), return_bit_values=bits) == ours
    assert decode_psf_flags(np.array(value), return_bit_values=bits) == ours


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4095), max_size=30))
def test_decode_array_matches_photutils(values):
    # photutils' bits decode identically (crowdphot's 4096 and 8192 are extensions)
    arr = np.array(values, dtype=np.int64)
    assert decode_flags(arr) == photutils_decode(arr)
    assert decode_flags(arr, return_bit_values=True) == photutils_decode(
        arr, return_bit_values=True)


def test_decode_columns_and_shapes():
    col = Column([0, 8, 136], name="flags")
    assert decode_flags(col) == [[], ["no_convergence"], ["no_convergence", "fully_masked"]]
    assert decode_flags(np.array([[1, 2], [4, 0]])) == [
        ["n_pixels_fit_partial"], ["outside_bounds"], ["negative_flux"], []]
    assert decode_flags(np.array([], dtype=int)) == []
    assert decode_flags(np.array([3, 3], dtype=np.uint16)) == [
        ["n_pixels_fit_partial", "outside_bounds"]] * 2
    decoded = decode_flags([1, 1])
    decoded[0].append("x")  # rows are independent lists
    assert decoded[1] == ["n_pixels_fit_partial"]
    assert decode_flags(MaskedColumn([4, 0])) == [["negative_flux"], []]


@pytest.mark.parametrize(
    ("flags", "exc", "match"),
    [(-1, ValueError, "non-negative"), ([1, -2], ValueError, "non-negative"),
     (1.5, TypeError, "integers"), ([1.0, 2.0], TypeError, "integers"),
     ("8", TypeError, "integers")],
)
def test_decode_errors(flags, exc, match):
    with pytest.raises(exc, match=match):
        decode_flags(flags)


def test_decode_positional_option_is_deprecated_not_refused():
    from astropy.utils.exceptions import AstropyDeprecationWarning

    with pytest.warns(AstropyDeprecationWarning, match="'return_bit_values' positionally"):
        assert decode_flags(3, True) == decode_flags(3, return_bit_values=True)


def test_combine_flags_roundtrip(rng):
    n = 200
    conditions = {name: rng.random(n) < 0.3 for name in PSF_FLAGS.names}
    flags = combine_flags(**conditions)
    assert flags.dtype == np.int64 and flags.shape == (n,)
    expected = np.zeros(n, dtype=np.int64)
    for name, cond in conditions.items():
        expected[cond] += PSF_FLAGS.get_bit_value(name)
    np.testing.assert_array_equal(flags, expected)
    for k, names in enumerate(decode_flags(flags)):
        assert names == [name for name in PSF_FLAGS.names if conditions[name][k]]


def test_combine_flags_aliases_and_broadcasting():
    flags = combine_flags(partial=np.array([True, False, True]), outside=False,
                          negative_flux=np.array([False, False, True]))
    np.testing.assert_array_equal(flags, [1, 0, 5])
    assert combine_flags(no_convergence=True).tolist() == 8
    assert combine_flags().shape == ()
    assert combine_flags().item() == 0
    np.testing.assert_array_equal(
        combine_flags(partial=np.ones((2, 1), bool), fully_masked=np.array([True, False])),
        [[129, 1], [129, 1]])


def test_combine_flags_errors():
    with pytest.raises(TypeError, match="unknown flag name 'bogus'"):
        combine_flags(bogus=np.array([True]))
    with pytest.raises(TypeError, match="'partial' must be boolean"):
        combine_flags(partial=np.array([1, 0]))
    with pytest.raises(ValueError):
        combine_flags(partial=np.ones(3, bool), outside=np.ones(2, bool))


def test_photutils_registry_and_decoding():
    """compat='photutils': photutils' twelve flags, higher bits ignored as photutils does."""
    reg = PSF_FLAGS.photutils
    assert reg.bit_values == list(PHOTUTILS_FLAGS.bit_values)
    assert reg.names == list(PHOTUTILS_FLAGS.names)
    assert reg.all_bits == 4095 and reg.photutils is reg
    assert PSF_FLAGS.bit_values[:12] == reg.bit_values and len(PSF_FLAGS.bit_values) == 18
    for value in (0, 8, 4104, 2**18 - 1, 2**17 + 2**15 + 136):
        assert decode_psf_flags(value, compat="photutils") == photutils_decode(value)
        assert (decode_psf_flags(value, compat="photutils", return_bit_values=True)
                == photutils_decode(value, return_bit_values=True))
    assert decode_psf_flags([4104, 8], compat="photutils") == [["no_convergence"]] * 2
    assert "left_stamp" in decode_psf_flags(4104)
    with pytest.raises(ValueError, match="compat must be None or 'photutils'"):
        decode_psf_flags(8, compat="crowdphot")


def test_lookup_errors_in_photutils_words():
    with pytest.raises(KeyError, match="No flag with bit value 999"):
        PSF_FLAGS.get_definition(999)
    with pytest.raises(KeyError, match="No flag with name 'invalid'"):
        PSF_FLAGS.get_definition("invalid")
    with pytest.raises(TypeError, match="identifier must be int"):
        PSF_FLAGS.get_definition(3.14)
