"""Fixtures of the tiled-photometry tests: the crowded scene and a real Dask cluster."""

import warnings

import numpy as np
import pytest

import crowdphot as cp
from _tiled import FWHM, SHAPE


@pytest.fixture(scope="module")
def crowded():
    """A crowded noisy scene: many groups at 8 px, several of them across tile seams."""
    model = cp.CircularGaussianPRF(fwhm=FWHM)
    data, truth = cp.make_psf_model_image(SHAPE, model, 500, flux=(300, 3000),
                                          min_separation=2.5, seed=11, model_shape=(11, 11),
                                          border_size=0)
    rng = np.random.default_rng(5)
    data = data + 5.0 + rng.normal(0.0, 2.0, data.shape)
    error = np.full(SHAPE, 2.0)
    return model, data, error, truth


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("dask.distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cluster start-up chatter is not under test
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, host="127.0.0.1")
        client = distributed.Client(cluster)
        client.wait_for_workers(2)
    yield client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.close()
        cluster.close()
