"""Input checks shared by every public function: errors name the argument, what was expected
and what was received."""

from __future__ import annotations

import numpy as np


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
