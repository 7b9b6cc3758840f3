"""Private helpers shared by the classical dipole inversions.

Input checks, the grid the iterative methods work on (the mask's box), percentile weights, the
optional progress bar and the steps the TV-type ADMMs (tv, rts, nltv) share. The numerical primitives
(padding and FFT convolution, finite differences, conjugate gradients) are the core's:
:mod:`metaqsm._fft`, :mod:`metaqsm._fd`, :mod:`metaqsm._linalg`.
"""

from __future__ import annotations

import numpy as np

from .._fd import divergence, gradient
from .._fft import irfft, mask_box, rfft
from .._validate import as_field_inputs, as_int, as_positive, as_volume

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


def crop_to_mask(f, m, crop, **inputs):
    """Cut the checked field ``f``, mask ``m`` and the named ``inputs`` to the mask's box.

    ``crop`` as :func:`metaqsm._fft.mask_box` (False: the whole grid). Each input is None, a
    number (kept as it is) or an array whose first three axes are the field's shape (cut);
    ``ValueError`` naming the input for an array of another shape. Returns ``(box, shape, f, m,
    values)``: the box, the field's full shape (for :func:`uncrop`), the cut field and mask and
    the cut inputs in the order given.
    """
    shape = f.shape
    box = mask_box(m, crop)
    values = []
    for name, value in inputs.items():
        if value is not None and np.ndim(value) > 0:
            value = np.asarray(value)
            if value.ndim < 3 or value.shape[:3] != shape:
                raise ValueError(f"{name} must have the shape of the field {shape}, "
                                 f"got {value.shape}")
            value = value[box]
        values.append(value)
    return box, shape, f[box], m[box], tuple(values)


def uncrop(x, box, shape):
    """``x`` (a map on ``box``) placed in a float32 volume of ``shape``, 0 elsewhere."""
    if x.shape == tuple(shape):
        return x
    out = np.zeros(shape, np.float32)
    out[box] = x
    return out


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


def soft_threshold(v, thr, out):
    """``out = sign(v) max(|v| - thr, 0)`` (the proximal step of the anisotropic TV norm), in
    place into ``out`` (which may not be ``v``); returns ``out``."""
    np.abs(v, out=out)
    out -= thr
    np.maximum(out, 0.0, out=out)
    np.copysign(out, v, out=out)
    return out


def relative_change(x, x0, work):
    """``||x - x0|| / ||x||`` (the ADMM stopping statistic), using ``work`` as scratch."""
    np.subtract(x, x0, out=work)
    ndx = float(np.sqrt(np.vdot(work.ravel(), work.ravel())))
    nx = float(np.sqrt(np.vdot(x.ravel(), x.ravel())))
    return ndx / max(nx, 1e-30)


def converged(x, x0, work, bar, tol):
    """One ADMM iteration's bookkeeping: the relative change of chi shown on ``bar``; whether
    it fell below ``tol``."""
    change = relative_change(x, x0, work)
    bar.update()
    bar.set_postfix_str(f"dx/x={change:.2e}")
    return change < tol


def chi_update(v, step, fhat, out, *, voxel_size, work, work2):
    """The closed-form chi-update of the TV-type ADMMs, into ``out``:
    ``IFFT(step FFT(div v) + fhat)`` (``step`` holds ``-rho / A``, the adjoint of the gradient
    being minus the divergence; ``fhat`` the constant data part)."""
    divergence(v, voxel_size=voxel_size, out=work, work=work2)
    X = rfft(work)
    X *= step
    X += fhat
    out[...] = irfft(X, out.shape)
    return out


def shrink_step(x, dual, out, thr, *, voxel_size, work):
    """The z-update of anisotropic TV and its scaled dual, in place: ``work = grad x``,
    ``dual += work``, ``z = shrink(dual, thr)``, ``dual -= z``; ``out`` receives ``z - dual``
    (what the next chi-update takes). ``work`` may be ``out``."""
    gradient(x, voxel_size=voxel_size, out=work)
    dual += work
    soft_threshold(dual, thr, out=out)
    dual -= out
    out -= dual
    return out


def check_magnitude(magnitude, shape, what="field", combine="rss"):
    """A magnitude image as a non-negative float32 volume of ``shape``: echoes on a 4th axis
    are combined by root-sum-of-squares (``combine="rss"``, as the MEDI toolbox) or
    root-mean-square (``"rms"``). Raises ``ValueError`` naming ``magnitude`` for another shape
    or negative values."""
    mag = as_volume(magnitude, "magnitude", ndim=(3, 4))
    if mag.ndim == 4:
        mag = (np.sqrt(np.sum(np.square(mag, dtype=np.float32), axis=-1)) if combine == "rss"
               else np.sqrt(np.mean(np.square(mag), axis=-1)))
    if mag.shape != tuple(shape):
        raise ValueError(f"magnitude must have the shape of the {what} {tuple(shape)}, "
                         f"got {mag.shape}")
    if np.any(mag < 0):
        raise ValueError("magnitude must be non-negative")
    return mag
