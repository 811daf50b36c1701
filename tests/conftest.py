"""Shared, seeded fixtures. Every random draw in the suite goes through a fixed seed."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh generator with a fixed seed for each test."""
    return np.random.default_rng(12345)


@pytest.fixture
def kernel_backend():
    """The kernels' one (compiled) implementation; kept for tests that still name a backend.

    Numpy oracles of the kernels live in ``tests/_oracles.py``; ``tests/core/test_kernels.py``
    compares the compiled kernels with them.
    """
    return "compiled"
