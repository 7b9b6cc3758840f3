"""Threads per subject, so that N subjects at once do not oversubscribe the cores.

Three pools run a subject's work: scipy's FFTs (``metaqsm._fft.WORKERS``, all cores by
default, bound by name into the modules that import it), the BLAS/OpenMP pools of numpy and
scipy (through threadpoolctl when it is installed, and the ``OMP_NUM_THREADS`` family of
environment variables for what starts later), and torch's intra-op pool for the networks.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading

from .._parallel import available_cores

__all__ = ["available_cores", "limit_threads", "THREAD_ENV"]

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

# the modules that bind metaqsm._fft.WORKERS at import (``from ._fft import WORKERS``)
_WORKER_MODULES = ("metaqsm._fft", "metaqsm.kernels", "metaqsm._fd", "metaqsm._parallel")


_LOCK = threading.Lock()
_ACTIVE = {"count": 0, "restore": None}


def _apply(n):
    """Set every pool to ``n`` threads; return a function that restores the settings."""
    saved_env = {k: os.environ.get(k) for k in THREAD_ENV}
    os.environ.update({k: str(n) for k in THREAD_ENV})
    for name in _WORKER_MODULES:
        importlib.import_module(name)
    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("metaqsm") and m is not None
               and isinstance(getattr(m, "WORKERS", None), int)]
    saved_workers = {m: m.WORKERS for m in modules}
    for m in modules:
        m.WORKERS = n
    torch = sys.modules.get("torch")
    saved_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    limits = None
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=n)
    except ImportError:
        pass

    def restore():
        if limits is not None:
            limits.restore_original_limits()
        for m, w in saved_workers.items():
            m.WORKERS = w
        if saved_torch is not None:
            sys.modules["torch"].set_num_threads(saved_torch)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    return restore


@contextlib.contextmanager
def limit_threads(n):
    """Run a block with at most ``n`` threads in each pool; restore the settings after.

    ``n`` None leaves everything as it is. The pools are the process's: when several blocks
    run at once in threads of one process (a Dask worker running several acquisitions), the
    first sets them and the last restores them.
    """
    if n is None:
        yield
        return
    n = max(1, int(n))
    with _LOCK:
        if _ACTIVE["count"] == 0:
            _ACTIVE["restore"] = _apply(n)
        _ACTIVE["count"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE["count"] -= 1
            if _ACTIVE["count"] == 0:
                _ACTIVE["restore"]()
                _ACTIVE["restore"] = None
