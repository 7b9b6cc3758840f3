"""Elementwise work on large volumes in threads: numpy releases the GIL in its loops, so a pass
over slabs of the first axis runs on every core the FFTs use.

The thread count is the FFT's (``WORKERS``: -1 for every core this process may run on), which
:func:`metaqsm.bids._threads.limit_threads` lowers for concurrent subjects; volumes under
:data:`THREADED_SIZE` voxels stay in the calling thread.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._fft import WORKERS

__all__ = ["THREADED_SIZE", "available_cores", "thread_count", "slabs", "run_slabs"]

THREADED_SIZE = 1 << 20
"""Volumes of at least this many elements are split over threads."""

_POOLS = {}


def available_cores():
    """Cores this process may run on (its CPU affinity, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def thread_count(a):
    """Threads for an elementwise pass over ``a``: ``WORKERS`` (or every available core for
    -1), at most 8 and at most a quarter of the first axis; 1 below :data:`THREADED_SIZE`."""
    if np.size(a) < THREADED_SIZE:
        return 1
    n = WORKERS if WORKERS > 0 else available_cores()
    return max(1, min(int(n), 8, np.shape(a)[0] // 4))


def slabs(n, threads):
    """``threads`` contiguous (start, stop) ranges covering ``range(n)``."""
    edges = np.linspace(0, n, threads + 1).astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def run_slabs(func, n, threads):
    """Call ``func(i, start, stop)`` for each of the ``threads`` slabs of ``range(n)``, in
    threads when ``threads > 1``; returns the results in slab order."""
    parts = slabs(n, threads)
    if threads <= 1:
        return [func(0, *parts[0])]
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="metaqsm")
    return list(_POOLS[threads].map(lambda i: func(i, *parts[i]), range(threads)))
