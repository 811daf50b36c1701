"""Kernel threads of tiled tasks: on a Dask worker, only the worker's own threads."""

from __future__ import annotations

import sys

__all__ = ["limit_threads"]


def limit_threads():
    """On a Dask worker, let the compiled kernels use only the worker's own threads.

    Each worker process would otherwise start one kernel thread per core, so N workers on N
    cores would run N * N threads and lose time to oversubscription.
    """
    if "distributed" not in sys.modules:  # no Dask here (importing it costs about a second)
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return  # not on a worker: the caller's thread settings apply
    from crowdphot.core.jit import set_num_threads

    set_num_threads(getattr(getattr(worker, "state", worker), "nthreads", 1) or 1)
