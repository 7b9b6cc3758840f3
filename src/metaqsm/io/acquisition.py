"""Reading a multi-echo acquisition: NIfTI files with their JSON sidecars, or a DICOM folder.

Everything a command needs before the pipeline runs: magnitude and phase (echoes on the last
axis), echo times (s), field strength (T), geometry, and a record of where each value came from
(the derivatives' provenance). Errors name the Python arguments (``magnitude``, ``echo_times``);
the command line maps them to its flags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._validate import as_b0_dir, as_mask, as_voxel_size
from ..units import PHASE_UNITS, phase_to_radians
from ._nifti import load_nifti
from .derivatives import sidecar_path

__all__ = ["Scan", "read_sidecar", "load_echoes", "load_scan", "load_mask", "require_file"]


@dataclass
class Scan:
    """A multi-echo acquisition as read from disk.

    Attributes
    ----------
    magnitude, phase : (X, Y, Z, E) or (X, Y, Z) float32 arrays
        Magnitude (any unit) and wrapped phase (radians once ``phase_units`` is applied).
    echo_times : list of float or None
        Seconds (None when neither the caller nor the files give them).
    field_strength : float or None
        Tesla.
    voxel_size : (3,) float array
        mm.
    b0_dir : (3,) float array
        B0 direction in voxel coordinates.
    affine : (4, 4) array
    header : nibabel header or None
        The phase file's (NIfTI input), kept for the outputs.
    inputs : dict
        Provenance for the sidecars: files, and the source of each parameter.
    """

    magnitude: np.ndarray
    phase: np.ndarray
    echo_times: list | None
    field_strength: float | None
    voxel_size: np.ndarray
    b0_dir: np.ndarray
    affine: np.ndarray
    header: object = None
    inputs: dict = field(default_factory=dict)


def require_file(path, name):
    """Raise ``FileNotFoundError`` naming ``name`` when ``path`` (if not None) does not exist."""
    if path is not None and not Path(path).exists():
        raise FileNotFoundError(f"{name}: no such file or folder: {path}")


def read_sidecar(path):
    """The JSON sidecar beside a NIfTI file, or ``{}`` when there is none.

    Raises ``ValueError`` when the sidecar is not valid JSON.
    """
    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"sidecar {side} is not valid JSON ({exc})") from None


def load_echoes(paths, name):
    """Load one 4D or several 3D (one per echo) NIfTI files.

    Returns ``(data, first Volume, echo times from the sidecars or None, field strength from
    the sidecars or None)``; sidecar echo times above 1 are read as milliseconds.
    """
    vols, tes, b0s = [], [], []
    for path in paths:
        require_file(path, name)
        vols.append(load_nifti(path, name=name, ndim=(3, 4)))
        side = read_sidecar(path)
        te = side.get("EchoTime")
        if te is not None:
            tes.extend(np.atleast_1d(np.asarray(te, float)).tolist())
        if side.get("MagneticFieldStrength") is not None:
            b0s.append(float(side["MagneticFieldStrength"]))
    if len(vols) == 1:
        data = vols[0].data
    else:
        shapes = {v.data.shape for v in vols}
        if len(shapes) != 1 or vols[0].data.ndim != 3:
            raise ValueError(f"{name}: several files must all be 3D of one shape (one per echo), "
                             f"got shapes {sorted(shapes)}")
        data = np.stack([v.data for v in vols], axis=-1)
    tes = tes or None  # a count that differs from the echoes is reported by check_acquisition
    if tes is not None and all(t > 1.0 for t in tes):
        tes = [t / 1000.0 for t in tes]  # a sidecar in ms (not BIDS, but common)
    return data, vols[0], tes, (b0s[0] if b0s else None)


def _as_list(paths):
    return [paths] if isinstance(paths, (str, Path)) else list(paths)


def load_scan(magnitude=None, phase=None, *, dicom=None, series=None, echo_times=None,
              field_strength=None, phase_units="radians", voxel_size=None, b0_dir=None):
    """Read an acquisition from NIfTI files (``magnitude`` and ``phase``) or a DICOM folder.

    Parameters
    ----------
    magnitude, phase : path or list of paths
        One 4D NIfTI (echoes last) or one 3D NIfTI per echo each, with optional JSON sidecars
        (EchoTime, MagneticFieldStrength, and metaqsm's own B0Direction).
    dicom : path, optional
        A DICOM folder instead of NIfTI files (:func:`metaqsm.io.dicom.read_dicom_series`).
    series : list of str, optional
        With ``dicom``: the series to use when the folder holds several.
    echo_times : sequence of float, optional
        Seconds; overrides the files.
    field_strength : float, optional
        Tesla; overrides the files.
    phase_units : str
        Units of NIfTI phase, one of :data:`metaqsm.units.PHASE_UNITS` (default "radians":
        radians in [-pi, pi) or [0, 2 pi), spanning at least pi; "auto" also recognises vendor
        ranges exactly; "radians-unchecked" skips the span check; "arbitrary" rescales by
        pi/max|phase|): the one rule of :func:`metaqsm.units.phase_to_radians`. Checked
        before any file is read. DICOM phase is mapped by the vendor rules of
        :func:`metaqsm.io.dicom.read_dicom_series` and this argument is not used.
    voxel_size, b0_dir : 3 floats, optional
        Override the header's voxel size (mm) and the affine's B0 direction.

    Returns
    -------
    Scan
        Echo times and field strength may still be None; :func:`metaqsm._validate.
        check_acquisition` refuses that.

    Raises
    ------
    ValueError
        Neither or both of NIfTI and DICOM input, unreadable or inconsistent files.
    FileNotFoundError
        A missing file or folder.
    """
    if dicom is None and (magnitude is None or phase is None):
        raise ValueError("give magnitude and phase (NIfTI), or dicom (a folder)")
    if dicom is not None and (magnitude is not None or phase is not None):
        raise ValueError("give either dicom or magnitude and phase, not both")
    if phase_units not in PHASE_UNITS:
        raise ValueError(f"phase_units must be one of {', '.join(PHASE_UNITS)}, got "
                         f"{phase_units!r}")
    vsz = None if voxel_size is None else as_voxel_size(voxel_size)
    b0d = None if b0_dir is None else as_b0_dir(b0_dir)
    if dicom is not None:
        from .dicom import read_dicom_series

        require_file(dicom, "dicom")
        d = read_dicom_series(dicom, series=series)
        tes = list(echo_times) if echo_times is not None else d.echo_times
        b0 = field_strength if field_strength is not None else d.field_strength
        if b0 is None:
            raise ValueError("field_strength is missing: the DICOM headers have no "
                             "MagneticFieldStrength; give it in tesla")
        return Scan(d.magnitude, d.phase, tes, b0, d.voxel_size if vsz is None else vsz,
                    d.b0_dir if b0d is None else b0d, d.affine, None,
                    {"dicom": str(dicom),
                     **({"series": [str(x) for x in series]} if series else {}),
                     "PhaseUnits": "radians (DICOM vendor rules, through dcm2niix)"})

    magnitude, phase = _as_list(magnitude), _as_list(phase)
    mag, _, te_m, b0_m = load_echoes(magnitude, "magnitude")
    ph, ph_vol, te_p, b0_p = load_echoes(phase, "phase")
    inputs = {"magnitude": [str(p) for p in magnitude], "phase": [str(p) for p in phase]}
    if echo_times is not None:
        tes, inputs["EchoTimeSource"] = list(echo_times), "argument"
    elif te_p is not None or te_m is not None:
        tes, inputs["EchoTimeSource"] = (te_p if te_p is not None else te_m), "JSON sidecar"
    else:
        raise ValueError("echo_times are missing: give them in seconds or put EchoTime in the "
                         "JSON sidecars beside the phase files")
    if field_strength is not None:
        b0, inputs["MagneticFieldStrengthSource"] = field_strength, "argument"
    elif b0_p is not None or b0_m is not None:
        b0 = b0_p if b0_p is not None else b0_m
        inputs["MagneticFieldStrengthSource"] = "JSON sidecar"
    else:
        raise ValueError("field strength is missing: give field_strength in tesla or put "
                         "MagneticFieldStrength in the JSON sidecar beside the phase")
    ph, scale = phase_to_radians(ph, phase_units)
    inputs["PhaseUnits"] = phase_units
    if scale != 1.0:
        inputs["PhaseScale"] = scale
    direction = ph_vol.b0_dir if b0d is None else b0d
    side_b0 = read_sidecar(phase[0]).get("B0Direction")
    if b0d is None and side_b0 is not None:
        # metaqsm's own sidecars (e.g. from `metaqsm simulate --b0-dir`) record a B0 direction
        # that the affine may not encode
        direction = as_b0_dir(side_b0, "B0Direction of the phase sidecar")
        inputs["B0DirectionSource"] = "JSON sidecar"
    return Scan(mag, ph, tes, b0, ph_vol.voxel_size if vsz is None else vsz, direction,
                ph_vol.affine, ph_vol.header, inputs)


def load_mask(path, shape, name="mask"):
    """A boolean mask from a NIfTI file of the data's ``shape`` (non-zero = inside).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for another shape or an
    empty mask.
    """
    require_file(path, name)
    vol = load_nifti(path, name=name, ndim=3)
    if vol.data.shape != tuple(shape):
        raise ValueError(f"{name} {path} has shape {vol.data.shape}, but the data have "
                         f"{tuple(shape)}")
    return as_mask(vol.data, shape, name)
