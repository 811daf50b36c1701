"""Build crowdphot's compiled kernels (one C extension); everything else is in pyproject.toml.

The kernels are plain C99 on contiguous buffers (no numpy headers needed at build time) and are
compiled when the package is installed (``pip install -e .`` or a wheel build), so a fresh
process never spends time compiling them.
"""

import sys
from pathlib import Path

from setuptools import Extension, setup

SRC = Path("src/crowdphot/core/kernels/_src")
args = [] if sys.platform == "win32" else ["-O3", "-std=c99", "-fno-math-errno"]
libs = [] if sys.platform == "win32" else ["m"]

setup(
    ext_modules=[
        Extension(
            "crowdphot.core.kernels._native",
            sources=sorted(str(p) for p in SRC.glob("*.c")),
            depends=[str(SRC / "ck.h")],
            extra_compile_args=args,
            libraries=libs,
        )
    ]
)
