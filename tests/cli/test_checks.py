"""crowdphot.cli.checks: the PSF-width sanity check of ``crowdphot phot``."""

import warnings

import numpy as np
import pytest
from astropy.table import QTable

import crowdphot as cp
from crowdphot.cli.checks import psf_width_check


@pytest.fixture(scope="module")
def noisy_field():
    """60 isolated bright stars of FWHM 4 on noise (peaks ~10-40 sigma: the noise still
    matters in the wings, where a clipped moment would read it as width)."""
    true = cp.CircularGaussianPRF(fwhm=4.0)
    data, t = cp.make_psf_model_image((512, 512), true, 60, flux=(1000, 4000),
                                      min_separation=40, seed=1, model_shape=(31, 31),
                                      border_size=20)
    data = data + np.random.default_rng(0).normal(0.0, 2.0, data.shape)
    tab = QTable({"x_fit": t["x_0"], "y_fit": t["y_0"], "flux_fit": t["flux"],
                  "flags": np.zeros(len(t), int)})
    return data, tab


@pytest.mark.parametrize(("fwhm", "warns"), [(2.0, True), (4.0, False), (8.0, True)])
def test_width_check_sees_wrong_psfs_and_not_noise(noisy_field, fwhm, warns):
    data, tab = noisy_field
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = psf_width_check(data, None, tab, cp.CircularGaussianPRF(fwhm=fwhm),
                              fwhm_guess=3.0)
    assert bool(caught) == warns
    assert res["n_stars"] == 30
    # the stars' width is read without the noise's help (it was 1.4x wide when clipped)
    assert res["star_fwhm"] == pytest.approx(4.0, rel=0.05)
    assert res["psf_fwhm"] == pytest.approx(fwhm, rel=0.1)
