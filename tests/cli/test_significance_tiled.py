"""``--min-snr`` in tiled runs: the neighbour-subtracted flux measured tile by tile from the
file equals the whole-image measurement (same stamps, same neighbours rendered)."""

import numpy as np
from astropy.table import QTable

import crowdphot as cp
from crowdphot.cli.significance import neighbour_subtracted_flux
from crowdphot.cli.significance_tiled import neighbour_subtracted_flux_tiled
from crowdphot.pipeline._planes import ArrayPlanes as _ArrayPlanes


def test_tiled_neighbour_subtracted_flux_equals_whole_image():
    psf = cp.CircularGaussianPRF(fwhm=2.5)
    shape = (150, 170)
    data, truth = cp.make_psf_model_image(shape, psf, 120, flux=(50, 3000), min_separation=3,
                                          seed=7, model_shape=(11, 11), border_size=0)
    rng = np.random.default_rng(1)
    data = data + rng.normal(0.0, 1.0, shape)
    x = np.asarray(truth["x_0"], float) + rng.normal(0, 0.05, len(truth))
    y = np.asarray(truth["y_0"], float) + rng.normal(0, 0.05, len(truth))
    flux = np.asarray(truth["flux"], float) * 1.1  # fitted fluxes absorbing neighbour light
    x[0], flux[1] = np.nan, np.inf  # failed fits stay NaN
    x[2], y[2] = -1.2, 149.3  # just off the image: part of its stamp is outside
    table = QTable({"x_fit": x, "y_fit": y, "flux_fit": flux})
    mask = np.zeros(shape, bool)
    mask[40:44, 60:90] = True
    f_ref, e_ref = neighbour_subtracted_flux(data, psf, x, y, flux, (5, 5), mask=mask,
                                             sigma=1.0)
    f, e = neighbour_subtracted_flux_tiled(_ArrayPlanes(data, mask=mask), psf, table, (5, 5),
                                           48, sigma=1.0)
    assert np.isnan(f[:2]).all() and np.isnan(f_ref[:2]).all()
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(e, e_ref, rtol=1e-12)
    # and a constant sky is removed as the tasks remove it
    f_sky, _ = neighbour_subtracted_flux_tiled(_ArrayPlanes(data + 7.0, mask=mask), psf, table,
                                               (5, 5), 48, sky=("value", 7.0), sigma=1.0)
    np.testing.assert_allclose(f_sky, f_ref, rtol=1e-9, atol=1e-9)
