"""Compiled kernels (numba), one implementation each."""
