"""Reading and writing: NIfTI volumes with voxel size and B0 direction, acquisitions with their
sidecars (NIfTI or DICOM), and outputs written all or nothing.

Only ``io``, ``pipeline`` and ``cli`` touch files.
"""

from ._atomic import atomic_outputs, atomic_path, check_output_paths, write_all
from ._nifti import Volume, b0_dir_from_affine, load_nifti, save_nifti, write_json

__all__ = [
    "Volume",
    "b0_dir_from_affine",
    "check_output_paths",
    "load_nifti",
    "save_nifti",
    "write_json",
    "atomic_path",
    "atomic_outputs",
    "write_all",
]
