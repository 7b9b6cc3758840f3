"""Private helpers shared by the classical dipole inversions.

Input checks, padding, buffer-reusing finite differences (the same operators as
:func:`metaqsm.kernels.gradient` / :func:`metaqsm.kernels.divergence`, written into
preallocated arrays because the iterative methods call them hundreds of times), percentile
weights and the optional progress bar.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_field_inputs, as_int, as_positive
from ..kernels import crop_volume, pad_volume, padded_shape

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


def padded(shape, pad):
    """Padded FFT grid of ``shape`` (see :func:`metaqsm.kernels.padded_shape`)."""
    return padded_shape(shape, pad)


def pad(x, shape):
    return pad_volume(x, shape)


def crop(x, shape):
    return np.ascontiguousarray(crop_volume(x, shape))


def _axis_slices(axis, a, b):
    s = [slice(None)] * 3
    s[axis] = slice(a, b)
    return tuple(s)


def grad_into(x, vsz, out):
    """Forward differences of ``x`` (periodic) into ``out`` of shape (3, X, Y, Z).

    Equals ``np.moveaxis(metaqsm.kernels.gradient(x, voxel_size=vsz), -1, 0)``.
    """
    for axis, d in enumerate(vsz):
        o = out[axis]
        np.subtract(x[_axis_slices(axis, 1, None)], x[_axis_slices(axis, None, -1)],
                    out=o[_axis_slices(axis, None, -1)])
        np.subtract(x[_axis_slices(axis, 0, 1)], x[_axis_slices(axis, -1, None)],
                    out=o[_axis_slices(axis, -1, None)])
        o *= np.float32(1.0 / d)
    return out


def div_into(g, vsz, out, tmp):
    """Backward-difference divergence of ``g`` (3, X, Y, Z) into ``out``; ``tmp`` is scratch.

    Equals :func:`metaqsm.kernels.divergence` (the negative adjoint of :func:`grad_into`).
    """
    out[...] = 0
    for axis, d in enumerate(vsz):
        gi = g[axis]
        np.subtract(gi[_axis_slices(axis, 1, None)], gi[_axis_slices(axis, None, -1)],
                    out=tmp[_axis_slices(axis, 1, None)])
        np.subtract(gi[_axis_slices(axis, 0, 1)], gi[_axis_slices(axis, -1, None)],
                    out=tmp[_axis_slices(axis, 0, 1)])
        tmp *= np.float32(1.0 / d)
        out += tmp
    return out


def weighted_div_grad_into(x, w, out, buf):
    """``out = div(w * grad(x))`` for per-direction weights ``w`` (3, X, Y, Z) that already
    include the 1/d_i^2 voxel scaling (the operator with unscaled differences).

    Equals ``divergence(w' * gradient(x))`` with ``w' = w * d_i^2``; fuses the passes over
    memory, which dominate the inner loop of MEDI. ``buf`` is (X, Y, Z) scratch.
    """
    for axis in range(3):
        hi, lo = _axis_slices(axis, 1, None), _axis_slices(axis, None, -1)
        first, last = _axis_slices(axis, 0, 1), _axis_slices(axis, -1, None)
        np.subtract(x[hi], x[lo], out=buf[lo])        # forward difference (periodic)
        np.subtract(x[first], x[last], out=buf[last])
        buf *= w[axis]
        if axis == 0:                                  # backward difference (periodic)
            np.subtract(buf[hi], buf[lo], out=out[hi])
            np.subtract(buf[first], buf[last], out=out[first])
        else:
            out += buf
            out[hi] -= buf[lo]
            out[first] -= buf[last]
    return out


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
