"""Shared, seeded fixtures. Every random draw in the suite goes through a fixed seed."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh generator with a fixed seed for each test."""
    return np.random.default_rng(12345)


@pytest.fixture(params=["numba", "numpy"])
def kernel_backend(request, monkeypatch):
    """Run a test once with the compiled kernels and once with the numpy fallbacks."""
    from crowdphot.core import jit as _numba

    if request.param == "numba" and not _numba.HAVE_NUMBA:
        pytest.skip("numba not installed")
    monkeypatch.setenv("CROWDPHOT_DISABLE_NUMBA", "1" if request.param == "numpy" else "0")
    return request.param
