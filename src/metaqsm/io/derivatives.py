"""Every output file name, in one place: BIDS-derivatives style names and their JSON sidecars.

Pipeline outputs (``metaqsm run``), for subject ``01`` (and optional session ``pre``)::

    sub-01[_ses-pre]_Chimap.nii.gz              susceptibility (ppm)
    sub-01[_ses-pre]_Chimap.png                 orthogonal slices of it
    sub-01[_ses-pre]_mask.nii.gz                brain mask
    sub-01[_ses-pre]_desc-eroded_mask.nii.gz    mask where the local field is valid
    sub-01[_ses-pre]_fieldmap.nii.gz            total field (ppm), unwrapped
    sub-01[_ses-pre]_desc-noise_fieldmap.nii.gz noise of the total field (ppm)
    sub-01[_ses-pre]_localfield.nii.gz          local field (ppm)

Simulated acquisitions (``metaqsm simulate``): ``sub-01_part-mag_MEGRE.nii.gz``,
``sub-01_part-phase_MEGRE.nii.gz`` (4D, echoes last) with BIDS sidecars, and the truth as
``sub-01_desc-truth_Chimap.nii.gz``, ``..._desc-truth_localfield``, ``..._desc-truth_fieldmap``,
``..._desc-truth_mask``.

Every NIfTI output has a JSON sidecar beside it (same name, ``.json``).

References
----------
Gorgolewski KJ, et al. The brain imaging data structure, a format for organizing and describing
outputs of neuroimaging experiments. Sci Data 2016;3:160044. BIDS derivatives and the QSM
extension (BEP 024) use ``Chimap`` for susceptibility maps.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "PIPELINE_OUTPUTS",
    "SIMULATION_OUTPUTS",
    "entity_prefix",
    "pipeline_paths",
    "simulation_paths",
    "sidecar_path",
    "subject_from_path",
    "check_label",
    "write_simulation",
]

# key -> (suffix without the entities, description for sidecars and docs, unit)
PIPELINE_OUTPUTS = {
    "chimap": ("Chimap.nii.gz", "Magnetic susceptibility relative to the brain's mean", "ppm"),
    "mask": ("mask.nii.gz", "Brain mask", None),
    "eroded_mask": ("desc-eroded_mask.nii.gz",
                    "Mask in which the local field is valid (after background removal)", None),
    "fieldmap": ("fieldmap.nii.gz", "Total field from the multi-echo fit, unwrapped", "ppm"),
    "noise": ("desc-noise_fieldmap.nii.gz", "Noise standard deviation of the total field", "ppm"),
    "localfield": ("localfield.nii.gz", "Local field after background field removal", "ppm"),
    "figure": ("Chimap.png", "Orthogonal slices of the susceptibility map", None),
}

SIMULATION_OUTPUTS = {
    "magnitude": ("part-mag_MEGRE.nii.gz", "Simulated multi-echo magnitude (echoes last)", None),
    "phase": ("part-phase_MEGRE.nii.gz", "Simulated multi-echo wrapped phase (echoes last)", "rad"),
    "chi": ("desc-truth_Chimap.nii.gz", "True susceptibility", "ppm"),
    "local_field": ("desc-truth_localfield.nii.gz", "True local field", "ppm"),
    "total_field": ("desc-truth_fieldmap.nii.gz", "True total field", "ppm"),
    "mask": ("desc-truth_mask.nii.gz", "True brain mask", None),
}

_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def check_label(value, name="subject"):
    """BIDS labels are alphanumeric; return ``value`` or raise ValueError naming ``name``."""
    value = str(value)
    if value.startswith("sub-") or value.startswith("ses-"):
        value = value[4:]
    if not _LABEL.match(value):
        raise ValueError(f"{name} must be alphanumeric (a BIDS label), got {value!r}")
    return value


def entity_prefix(subject="01", session=None):
    """``sub-<subject>[_ses-<session>]``."""
    prefix = f"sub-{check_label(subject, 'subject')}"
    if session is not None:
        prefix += f"_ses-{check_label(session, 'session')}"
    return prefix


def _paths(table, out_dir, subject, session):
    out_dir = Path(out_dir)
    prefix = entity_prefix(subject, session)
    return {key: out_dir / f"{prefix}_{suffix}" for key, (suffix, _, _) in table.items()}


def pipeline_paths(out_dir, subject="01", session=None):
    """Output paths of ``metaqsm run``: dict key -> Path (keys of :data:`PIPELINE_OUTPUTS`)."""
    return _paths(PIPELINE_OUTPUTS, out_dir, subject, session)


def simulation_paths(out_dir, subject="01", session=None):
    """Output paths of ``metaqsm simulate``: dict key -> Path (keys of :data:`SIMULATION_OUTPUTS`)."""
    return _paths(SIMULATION_OUTPUTS, out_dir, subject, session)


def sidecar_path(path):
    """The JSON sidecar of a NIfTI path: ``x.nii.gz`` -> ``x.json``."""
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".png"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_name(p.stem + ".json")


def subject_from_path(path, default="01"):
    """The ``sub-<label>`` entity of an input path, or ``default``."""
    m = re.search(r"sub-([A-Za-z0-9]+)", str(path))
    return m.group(1) if m else default


def write_simulation(acq, out_dir, *, subject="01", force=False, header=None, extra=None):
    """Write a simulated :class:`~metaqsm.simulate.acquisition.Acquisition` with BIDS-like
    sidecars, all or nothing (the folder is created when missing). Returns dict key -> Path."""
    import numpy as np

    from .._version import __version__
    from ._atomic import write_all
    from ._nifti import save_nifti, write_json

    out = Path(out_dir)
    paths = simulation_paths(out, subject)
    affine = acq.affine if acq.affine is not None else np.diag(list(acq.voxel_size) + [1.0])
    common = {
        "EchoTime": [float(t) for t in acq.echo_times],
        "MagneticFieldStrength": float(acq.field_strength),
        "B0Direction": [float(b) for b in acq.b0_dir],
        "VoxelSize": [float(v) for v in acq.voxel_size],
        "NoiseStd": float(acq.noise_std),
        "GeneratedBy": [{"Name": "metaqsm simulate", "Version": __version__}],
        **(extra or {}),
    }
    arrays = {"magnitude": acq.magnitude, "phase": acq.phase, "chi": acq.chi,
              "local_field": acq.local_field, "total_field": acq.total_field, "mask": acq.mask}
    items = []
    for key, path in paths.items():
        _, description, unit = SIMULATION_OUTPUTS[key]
        dtype = np.uint8 if key == "mask" else np.float32
        items.append((path, lambda tmp, a=arrays[key], d=dtype: save_nifti(
            tmp, a, affine, header=header, force=True, dtype=d)))
        meta = {**common, "Description": description}
        if unit:
            meta["Units"] = unit
        if key in ("magnitude", "phase"):
            meta["ImageType"] = ["ORIGINAL", "PRIMARY", "M" if key == "magnitude" else "P"]
        items.append((sidecar_path(path), lambda tmp, m=meta: write_json(tmp, m, force=True)))
    write_all(items, force=force, folder=out)
    return paths
