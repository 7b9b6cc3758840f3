"""Input checks shared by every public function: errors name the argument, what was expected
and what was received."""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np


class MetaqsmWarning(UserWarning):
    """Base of metaqsm's own warnings: the pipeline records these in its outputs' sidecars and
    log (``Warnings``); other warnings pass through unrecorded."""


class MaskWarning(MetaqsmWarning):
    """A mask that lost most of the brain (an erosion keeping less than half of it), or an
    erosion radius reduced to fit a small mask."""


_RECORDERS = contextvars.ContextVar("metaqsm_warning_recorders", default=())


def warn(message, category=MetaqsmWarning):
    """``warnings.warn`` attributed to the caller's code (the first frame outside metaqsm), and
    handed to the :func:`recording_warnings` blocks around it. metaqsm's own warnings go through
    here."""
    import os
    import sys
    import warnings

    for record in _RECORDERS.get():
        record(str(message))
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


@contextlib.contextmanager
def recording_warnings(record):
    """Call ``record(message)`` for every :func:`warn` in the block, in this thread (a context
    variable, so concurrent pipelines in threads keep their own), without touching the
    process-wide warning filters."""
    token = _RECORDERS.set((*_RECORDERS.get(), record))
    try:
        yield
    finally:
        _RECORDERS.reset(token)


def as_volume(x, name="field", *, ndim=3, dtype=np.float32, allow_complex=False):
    """Return ``x`` as a finite real (or complex) array of ``ndim`` dimensions.

    Raises ``TypeError`` for non-numeric input and ``ValueError`` for the wrong number of
    dimensions or non-finite values. Never modifies the input.
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if arr.ndim not in ndims:
        want = " or ".join(f"{n}D" for n in ndims)
        raise ValueError(f"{name} must be a {want} volume, got {arr.ndim}D with shape {arr.shape}")
    if np.iscomplexobj(arr) and not allow_complex:
        raise TypeError(f"{name} must be real-valued, got complex dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or Inf values; clean or mask them first")
    if dtype is not None:
        if np.iscomplexobj(arr):
            arr = arr.astype(np.complex64 if np.dtype(dtype) == np.float32 else np.complex128, copy=False)
        else:
            arr = arr.astype(dtype, copy=False)
    return arr


def as_mask(mask, shape, name="mask", *, allow_empty=False):
    """Return ``mask`` as a boolean array of ``shape``; ``None`` means all voxels."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have the shape of the volume {tuple(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf values")
    arr = arr != 0
    if not allow_empty and not arr.any():
        raise ValueError(f"{name} is empty: it selects no voxel")
    return arr


def as_voxel_size(voxel_size, name="voxel_size"):
    """Return the voxel size as a float64 array of 3 positive, finite values in mm."""
    try:
        v = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be 3 numbers in mm, got {voxel_size!r}") from None
    if v.size == 1:
        v = np.repeat(v, 3)
    if v.size != 3:
        raise ValueError(f"{name} must have 3 values (mm), got {v.size}: {voxel_size!r}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be positive and finite (mm), got {tuple(float(x) for x in v)}")
    return v


def as_b0_dir(b0_dir, name="b0_dir"):
    """Return the B0 direction as a unit float64 vector of 3 values (voxel coordinates)."""
    try:
        b = np.asarray(b0_dir, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be 3 numbers, got {b0_dir!r}") from None
    if b.size != 3:
        raise ValueError(f"{name} must have 3 components, got {b.size}: {b0_dir!r}")
    n = np.linalg.norm(b)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"{name} must be a non-zero finite vector, got {tuple(float(x) for x in b)}")
    return b / n


def as_positive(value, name, *, allow_zero=False):
    """Return ``value`` as a float, checking it is positive (or non-negative)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        want = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {want} and finite, got {value!r}")
    return v


def as_int(value, name, *, minimum=0):
    """Return ``value`` as an int of at least ``minimum``."""
    if isinstance(value, bool) or not float(value).is_integer():
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def as_field_inputs(field, mask, voxel_size, b0_dir, *, field_name="field", mask_name="mask"):
    """Validate the arguments every ``method(field, mask, *, voxel_size, b0_dir)`` shares.

    Returns ``(field float32, mask bool, voxel_size (3,), unit b0_dir (3,))``.
    """
    f = as_volume(field, field_name)
    m = as_mask(mask, f.shape, mask_name)
    return f, m, as_voxel_size(voxel_size), as_b0_dir(b0_dir)


# ----------------------------------------------------------------------------- acquisitions
PHASE_TOL = 1e-3  # rad: float32 rounding of +-pi from converters
PHASE_MIN_SPAN = 0.05  # rad: below this, values are never radians (arbitrary units scaled down)


def fmt_values(values):
    """``(1.0, 1.0, 2.5)`` for messages (plain floats, not numpy reprs)."""
    return "(" + ", ".join(f"{float(v):g}" for v in np.ravel(values)) + ")"


def check_phase_radians(phase, name="phase"):
    """Refuse phase that is not wrapped radians (in [-pi, pi] or [0, 2 pi]).

    The check every computation applies to the phase it is given (``run_pipeline``, the echo
    fit, unwrapping). Where phase is read from files the full rule of
    :func:`metaqsm.units.phase_to_radians` (``phase_units``) has already been applied, which
    also refuses a phase spanning less than pi unless told ``"radians-unchecked"``; here only
    values that cannot be radians at all are refused: outside both ranges (the message names
    the unit they look like: Siemens -4096..4095, milliradians, degrees) or spanning less than
    ``PHASE_MIN_SPAN`` (0.05 rad: arbitrary units scaled down).
    """
    from .units import phase_range_guess

    lo, hi = float(np.min(phase)), float(np.max(phase))
    if hi - lo < PHASE_MIN_SPAN:
        raise ValueError(
            f"{name} must be wrapped phase in radians (-pi..pi), got values only in "
            f"[{lo:.4g}, {hi:.4g}]: it does not look like radians (arbitrary units?); rescale it "
            "to radians, or set phase_units \"arbitrary\" to rescale by pi/max|phase|")
    ok_signed = lo >= -np.pi - PHASE_TOL and hi <= np.pi + PHASE_TOL
    ok_positive = lo >= -PHASE_TOL and hi <= 2 * np.pi + PHASE_TOL
    if ok_signed or ok_positive:
        return
    guess, words = phase_range_guess(lo, hi)
    hint = (f"{words}? set phase_units \"auto\" (or \"{guess}\")" if guess is not None else
            f"{words}; rescale it to radians, or set phase_units \"arbitrary\"")
    raise ValueError(f"{name} must be wrapped phase in radians (-pi..pi), got values in "
                     f"[{lo:.4g}, {hi:.4g}] ({hint})")


def as_echo_times(echo_times, n_echo, *, what="phase"):
    """Echo times as a float64 vector of ``n_echo`` positive, strictly increasing seconds.

    The one echo-time check (the pipeline, the echo fit, ROMEO, the R2* and SWI maps).
    ``what`` names the data the count is compared with in the message.
    """
    if echo_times is None:
        raise ValueError("echo_times (seconds, one per echo) is required: give them, or "
                         "EchoTime in the JSON sidecars")
    try:
        tes = np.asarray(echo_times, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"echo_times must be numbers in seconds, got {echo_times!r}") from None
    if tes.size != n_echo:
        raise ValueError(f"echo_times has {tes.size} values but the {what} has {n_echo} echoes")
    if not np.all(np.isfinite(tes)) or np.any(tes <= 0):
        raise ValueError(f"echo_times must be positive seconds, got {fmt_values(tes)}")
    if np.any(tes > 1.0):
        raise ValueError(f"echo_times must be in seconds, got {fmt_values(tes)} (milliseconds? "
                         "divide by 1000)")
    if np.any(np.diff(tes) <= 0):
        raise ValueError(f"echo_times must be strictly increasing, got {fmt_values(tes)}")
    return tes


def check_acquisition(magnitude, phase, echo_times, field_strength):
    """Validate the acquisition: shapes, echo times (s), field strength (T), phase in radians.

    Returns ``(magnitude, phase, echo_times, field_strength)`` as float32 4D arrays (a 3D
    single-echo volume gets a last axis of 1), a float64 vector and a float.
    """
    mag = np.asarray(magnitude)
    ph = np.asarray(phase)
    if mag.shape != ph.shape:
        raise ValueError(f"magnitude and phase must have the same shape, got magnitude "
                         f"{mag.shape} and phase {ph.shape}")
    if ph.ndim == 3:
        mag, ph = mag[..., None], ph[..., None]
    if ph.ndim != 4:
        raise ValueError(f"phase must be a 3D or 4D (echoes last) volume, got {ph.ndim}D "
                         f"with shape {ph.shape}")
    for arr, name in ((mag, "magnitude"), (ph, "phase")):
        if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or Inf values")
    if field_strength is None:
        raise ValueError("field_strength is missing: give the scanner's field in tesla "
                         "(or MagneticFieldStrength in the JSON sidecar)")
    b0 = as_positive(field_strength, "field_strength")
    if b0 > 20:
        raise ValueError(f"field_strength must be in tesla, got {field_strength!r}")
    tes = as_echo_times(echo_times, ph.shape[-1])
    if np.any(mag < 0):
        raise ValueError("magnitude must be non-negative")
    check_phase_radians(ph)
    return mag.astype(np.float32, copy=False), ph.astype(np.float32, copy=False), tes, b0
