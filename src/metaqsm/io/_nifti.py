"""NIfTI volumes with their geometry, and outputs written atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._validate import as_b0_dir, as_voxel_size
from ._atomic import atomic_path

SCANNER_Z = np.array([0.0, 0.0, 1.0])


@dataclass
class Volume:
    """A volume read from disk with its geometry.

    Attributes
    ----------
    data : ndarray
        The voxel values (3D or 4D, echoes on the last axis), float32 unless complex.
    affine : (4, 4) ndarray
        Voxel-to-world (RAS+, mm) transform, kept for every output derived from it.
    voxel_size : (3,) ndarray
        Voxel size in mm, from the header.
    b0_dir : (3,) ndarray
        Unit vector of the scanner's z axis (B0) in voxel coordinates, from the affine.
    path : Path or None
    header : nibabel header or None
    """

    data: np.ndarray
    affine: np.ndarray
    voxel_size: np.ndarray
    b0_dir: np.ndarray
    path: Path | None = None
    header: object = field(default=None, repr=False)


def b0_dir_from_affine(affine):
    """B0 direction in voxel coordinates from a voxel-to-world affine.

    The scanner's z axis (the world's third axis, along which B0 points) is mapped into voxel
    coordinates by the inverse of the affine's linear part with the voxel scaling removed, so
    an oblique acquisition needs no resampling: the dipole kernel takes the tilted direction.

    Parameters
    ----------
    affine : (4, 4) array

    Returns
    -------
    (3,) unit vector.
    """
    A = np.asarray(affine, dtype=np.float64)
    if A.shape != (4, 4) or not np.all(np.isfinite(A)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {A.shape}")
    M = A[:3, :3]
    scales = np.linalg.norm(M, axis=0)
    if np.any(scales <= 0):
        raise ValueError("affine has a zero column: the voxel size along an axis is zero")
    R = M / scales  # direction cosines of the voxel axes in world space
    b = np.linalg.solve(R, SCANNER_Z)
    return as_b0_dir(b, "b0_dir from affine")


def load_nifti(path, *, name="input", ndim=(3, 4), dtype=np.float32):
    """Read a NIfTI file; voxel size from the header, B0 direction from the affine.

    Raises ``FileNotFoundError`` (naming ``name``) if the file is missing and ``ValueError`` if
    the dimensionality is not allowed.
    """
    import nibabel as nib

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: no such file: {p}")
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise ValueError(f"{name}: cannot read {p} as NIfTI ({exc})") from None
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated .nii.gz (EOFError, zlib.error), short .nii (OSError)
        raise ValueError(f"{name}: cannot read the voxels of {p}: the file is truncated or "
                         f"corrupt ({type(exc).__name__}: {exc})") from None
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    # A trailing singleton 4th/5th dimension (common in converters) is squeezed.
    while data.ndim > 3 and data.shape[-1] == 1 and data.ndim not in ndims:
        data = data[..., 0]
    if data.ndim not in ndims:
        want = " or ".join(f"{n}D" for n in ndims)
        raise ValueError(f"{name}: {p} must be a {want} volume, got {data.ndim}D with shape {data.shape}")
    if dtype is not None and not np.iscomplexobj(data):
        data = data.astype(dtype, copy=False)
    zooms = img.header.get_zooms()[:3]
    voxel_size = as_voxel_size(zooms, f"{name} voxel size (header pixdim)")
    return Volume(data=data, affine=np.asarray(img.affine, dtype=np.float64), voxel_size=voxel_size,
                  b0_dir=b0_dir_from_affine(img.affine), path=p, header=img.header)


def save_nifti(path, data, affine, *, header=None, force=False, dtype=np.float32):
    """Write ``data`` to a NIfTI file atomically (temporary file, then rename).

    Parameters
    ----------
    data : ndarray
        Stored as ``dtype`` (float32 by default; booleans are stored as uint8).
    affine : (4, 4) array
        The input's affine, so outputs overlay their source.
    header : nibabel header, optional
        Copied for the units and orientation codes; data type and scaling are reset.
    force : bool
        Overwrite an existing file.
    """
    import nibabel as nib

    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif dtype is not None:
        arr = arr.astype(dtype, copy=False)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=hdr)
    img.set_data_dtype(arr.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path, force=force) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def write_json(path, obj, *, force=False):
    """Write a JSON sidecar atomically (sorted keys, 2-space indent)."""

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot write {type(o).__name__} to JSON")

    with atomic_path(path, force=force) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=default) + "\n")
    return Path(path)
