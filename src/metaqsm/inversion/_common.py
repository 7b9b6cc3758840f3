"""Private helpers shared by the classical dipole inversions.

Input checks, percentile weights and the optional progress bar. The numerical primitives
(padding and FFT convolution, finite differences, conjugate gradients) are the core's:
:mod:`metaqsm._fft`, :mod:`metaqsm._fd`, :mod:`metaqsm._linalg`.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_field_inputs, as_int, as_positive

__all__ = []  # private module


def check_inputs(field, mask, voxel_size, b0_dir):
    """Validate the common arguments of every inversion.

    Returns ``(f, m, vsz, b)``: the field as a new float32 array set to 0 outside the mask (the
    local field is only defined inside it; the caller's array is never modified), the boolean
    mask, the voxel size (3 floats, mm) and the unit B0 direction.
    """
    f, m, vsz, b = as_field_inputs(field, mask, voxel_size, b0_dir)
    f = np.multiply(f, m, dtype=np.float32)  # a new array (faster than np.where)
    return f, m, vsz, b


def check_max_iter(max_iter, name="max_iter"):
    return as_int(max_iter, name, minimum=1)


def check_tol(tol, name="tol"):
    return as_positive(tol, name)


def ramp_weights(values, mask, pmin, pmax):
    """1 below the ``pmin`` percentile (over ``mask``), 0 above ``pmax``, linear between;
    0 outside ``mask``. The weighting of Li et al. 2015, Eqs. (7) and (15)."""
    lo, hi = np.percentile(values[mask], [pmin, pmax])
    if hi <= lo:
        w = (values <= lo).astype(np.float32)
    else:
        w = np.clip((hi - values) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)
    w[~mask] = 0.0
    return w


def progress_bar(total, enabled, desc):
    """A tqdm bar when ``enabled`` (imported lazily), else a no-op object with the same API."""
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False)
    return _NoBar()


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass
