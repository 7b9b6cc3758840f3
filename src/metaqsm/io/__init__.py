"""Reading and writing volumes: NIfTI with voxel size and B0 direction, atomic outputs.

Only ``io``, ``pipeline`` and ``cli`` touch files.
"""

from ._nifti import (
    Volume,
    b0_dir_from_affine,
    check_output_paths,
    load_nifti,
    save_nifti,
    write_json,
    atomic_path,
)

__all__ = [
    "Volume",
    "b0_dir_from_affine",
    "check_output_paths",
    "load_nifti",
    "save_nifti",
    "write_json",
    "atomic_path",
]
