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

Every NIfTI output has a JSON sidecar beside it (same name, ``.json``), with one schema for
every command (:func:`sidecar`): ``Description``, ``Units``, ``Operation`` (the command),
``CommandLine``, ``GeneratedBy`` ([{Name, Version}]), ``Method`` and ``Parameters`` (a
one-step command) or ``Stages`` (stage -> {method, parameters}: the pipeline), ``EchoTime``,
``MagneticFieldStrength``, ``VoxelSize``, ``B0Direction``, ``Inputs`` (role -> path, and where
each acquisition parameter came from), ``InputChecksums`` (path -> SHA-256 of every input file
or folder), ``Weights`` ({File, SHA256}: networks only), ``Timings`` (seconds per step) and
``Warnings`` (metaqsm's warnings, e.g. a mask that lost most of the brain). Keys without a value
are left out, never written as null. Folder outputs also get a plain-text log
(``sub-01[_ses-pre]_log.txt``: command line, version, timings, warnings; :func:`log_text`).

References
----------
Gorgolewski KJ, et al. The brain imaging data structure, a format for organizing and describing
outputs of neuroimaging experiments. Sci Data 2016;3:160044. BIDS derivatives and the QSM
extension (BEP 024) use ``Chimap`` for susceptibility maps.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import time
from pathlib import Path

__all__ = [
    "PIPELINE_OUTPUTS",
    "SIMULATION_OUTPUTS",
    "entity_prefix",
    "pipeline_paths",
    "simulation_paths",
    "sidecar_path",
    "log_path",
    "subject_from_path",
    "check_label",
    "sidecar",
    "generated_by",
    "file_sha256",
    "input_checksums",
    "weights_record",
    "command_line",
    "log_text",
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


def log_path(out_dir, subject="01", session=None):
    """The log of a folder of outputs: ``OUT/sub-<subject>[_ses-<session>]_log.txt``."""
    return Path(out_dir) / f"{entity_prefix(subject, session)}_log.txt"


def subject_from_path(path, default="01"):
    """The ``sub-<label>`` entity of an input path, or ``default``."""
    m = re.search(r"sub-([A-Za-z0-9]+)", str(path))
    return m.group(1) if m else default


# ----------------------------------------------------------------------------- provenance
def generated_by():
    """BIDS ``GeneratedBy``: ``[{"Name": "metaqsm", "Version": ...}]``."""
    from .._version import __version__

    return [{"Name": "metaqsm", "Version": __version__}]


@functools.lru_cache(maxsize=256)
def _sha256_cached(path, size, mtime_ns):  # noqa: ARG001 - size and mtime key the cache
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path):
    """SHA-256 (hex) of a file, or of a folder: of its files' relative names and checksums in
    sorted order (a DICOM folder). Computed once per file version."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\n".encode())
        return h.hexdigest()
    st = p.stat()
    return _sha256_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


def _paths_in(value):
    if isinstance(value, (str, Path)):
        yield str(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _paths_in(v)


def input_checksums(inputs):
    """``{path: sha256}`` for every value of ``inputs`` (a dict of roles, lists, nested dicts)
    that names an existing file or folder; other values (sources, units) are skipped."""
    out = {}
    for text in _paths_in(inputs or {}):
        if text not in out and text and os.path.exists(text):
            out[text] = file_sha256(text)
    return out


def _closest_shipped(names, voxel_size):
    """Of shipped models named ``<kind>-<X>x<Y>x<Z>``, the one nearest ``voxel_size`` (mm)."""
    import numpy as np

    def distance(name):
        try:
            res = np.array([float(v) for v in name.split("-", 1)[1].split("x")])
        except (IndexError, ValueError):
            return np.inf
        return float(np.max(np.abs(np.log(res / np.asarray(voxel_size, float)))))

    return min(names, key=distance)


def weights_record(method, options=None, voxel_size=None):
    """``{"File": path, "SHA256": hex}`` of the checkpoint a network method uses (the
    ``weights`` option, a shipped model's name, or the shipped default for ``voxel_size``);
    ``None`` for a classical method."""
    from ..methods import inversion

    m = inversion(method) if isinstance(method, str) else method
    if not m.is_network:
        return None
    weights = (options or {}).get("weights")
    models = Path(__file__).resolve().parents[1] / "models"
    if weights is None and m.shipped:
        weights = m.shipped[0] if len(m.shipped) == 1 or voxel_size is None else \
            _closest_shipped(m.shipped, voxel_size)
    if weights is None:
        return None
    path = models / f"{weights}.safetensors" if str(weights) in m.shipped else Path(weights)
    record = {"File": str(path)}
    if path.is_file():
        record["SHA256"] = file_sha256(path)
    return record


def _plain(obj):
    """JSON-ready copies: numpy values to Python, tuples to lists, large arrays described."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 16 else f"array{obj.shape}"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def sidecar(*, operation, description=None, units=None, command_line=None, method=None,
            parameters=None, stages=None, echo_times=None, field_strength=None, voxel_size=None,
            b0_dir=None, inputs=None, checksums=None, weights=None, timings=None, warnings=None,
            extra=None):
    """The JSON sidecar of an output, in the one schema every command writes.

    Parameters
    ----------
    operation : str
        The command that made the file (``"run"``, ``"invert"``, ``"forward"``, ...).
    description, units : str, optional
        What the file holds and its unit.
    command_line : str, optional
        The command line as typed.
    method, parameters : optional
        A one-step command's method name and its parameters.
    stages : dict, optional
        A pipeline's stages: name -> {"method": ..., parameters}.
    echo_times, field_strength, voxel_size, b0_dir : optional
        Seconds, tesla, mm, unit vector in voxel coordinates.
    inputs : dict, optional
        Role -> path(s), and the sources of acquisition parameters.
    checksums : dict, optional
        Path -> SHA-256; default: computed from ``inputs`` (:func:`input_checksums`).
    weights : dict, optional
        A network's checkpoint (:func:`weights_record`); leave None for classical methods.
    timings : dict, optional
        Step -> seconds (rounded to ms).
    warnings : list of str, optional
        Written as ``Warnings`` (an empty list when none).
    extra : dict, optional
        Further keys (e.g. ``ImageType``, ``NoiseStd``).

    Returns
    -------
    dict
        Keys whose value is None are left out.
    """
    seq = (lambda v: None if v is None else [float(x) for x in _flat(v)])
    if parameters is not None:
        parameters = _set(parameters)
    if stages is not None:
        stages = {k: _set(v) for k, v in stages.items()}
    meta = {
        "Description": description,
        "Units": units,
        "Operation": operation,
        "CommandLine": command_line,
        "GeneratedBy": generated_by(),
        "Method": method,
        "Parameters": None if parameters is None else _plain(parameters),
        "Stages": None if stages is None else _plain(stages),
        "EchoTime": seq(echo_times),
        "MagneticFieldStrength": None if field_strength is None else float(field_strength),
        "VoxelSize": seq(voxel_size),
        "B0Direction": seq(b0_dir),
        "Inputs": None if inputs is None else _plain(inputs),
        "InputChecksums": (checksums if checksums is not None else input_checksums(inputs))
        or None,
        "Weights": weights,
        "Timings": {k: round(float(v), 3) for k, v in (timings or {}).items()},
        "Warnings": list(warnings or []),
        **_plain(extra or {}),
    }
    return {k: v for k, v in meta.items() if v is not None}


def _set(options):
    """The options that have a value (a None default means "the method decides")."""
    return {k: v for k, v in dict(options).items() if v is not None}


def _flat(v):
    import numpy as np

    return np.asarray(v, float).ravel()


def command_line(argv=None):
    """The command as typed: ``metaqsm`` and its arguments (default: ``sys.argv[1:]``)."""
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["metaqsm", *(shlex.quote(str(a)) for a in args)])


def log_text(*, operation, command_line=None, timings=None, warnings=None, outputs=None,
             notes=None):
    """The plain-text log written beside a folder of outputs: version, command line, when,
    step timings, warnings and the files written."""
    import platform

    from .._version import __version__

    lines = [f"metaqsm {__version__} {operation}",
             f"date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
             f"python: {platform.python_version()} on {platform.platform()}"]
    if command_line:
        lines.append(f"command: {command_line}")
    timings = dict(timings or {})
    if timings:
        lines.append("timings (s):")
        lines += [f"  {k}: {float(v):.3f}" for k, v in timings.items()]
        lines.append(f"  total: {sum(float(v) for v in timings.values()):.3f}")
    lines.append(f"warnings: {len(warnings or [])}")
    lines += [f"  - {w}" for w in warnings or []]
    for note in notes or []:
        lines.append(str(note))
    if outputs:
        lines.append("outputs:")
        lines += [f"  {Path(p).name}" for p in outputs]
    return "\n".join(lines) + "\n"


def write_simulation(acq, out_dir, *, subject="01", force=False, header=None, extra=None,
                     parameters=None, inputs=None, timings=None, command_line=None, log=False):
    """Write a simulated :class:`~metaqsm.simulate.acquisition.Acquisition` with BIDS-like
    sidecars (:func:`sidecar`, operation ``"simulate"``), all or nothing (the folder is created
    when missing). ``parameters`` (the simulation's settings), ``inputs``, ``timings`` and
    ``command_line`` go into every sidecar, ``extra`` keys too; ``log`` also writes
    ``sub-<subject>_log.txt``. Returns dict key -> Path."""
    import numpy as np

    from ._atomic import write_all
    from ._nifti import save_nifti, write_json

    out = Path(out_dir)
    paths = simulation_paths(out, subject)
    affine = acq.affine if acq.affine is not None else np.diag(list(acq.voxel_size) + [1.0])
    common = dict(operation="simulate", command_line=command_line, method="simulate_acquisition",
                  parameters=parameters, echo_times=acq.echo_times,
                  field_strength=acq.field_strength, voxel_size=acq.voxel_size,
                  b0_dir=acq.b0_dir, inputs=inputs, checksums=input_checksums(inputs),
                  timings=timings)
    arrays = {"magnitude": acq.magnitude, "phase": acq.phase, "chi": acq.chi,
              "local_field": acq.local_field, "total_field": acq.total_field, "mask": acq.mask}
    items = []
    for key, path in paths.items():
        _, description, unit = SIMULATION_OUTPUTS[key]
        dtype = np.uint8 if key == "mask" else np.float32
        items.append((path, lambda tmp, a=arrays[key], d=dtype: save_nifti(
            tmp, a, affine, header=header, force=True, dtype=d)))
        keys = {"NoiseStd": float(acq.noise_std), **(extra or {})}
        if key in ("magnitude", "phase"):
            keys["ImageType"] = ["ORIGINAL", "PRIMARY", "M" if key == "magnitude" else "P"]
        meta = sidecar(description=description, units=unit, extra=keys, **common)
        items.append((sidecar_path(path), lambda tmp, m=meta: write_json(tmp, m, force=True)))
    if log:
        text = log_text(operation="simulate", command_line=command_line, timings=timings,
                        outputs=list(paths.values()))
        items.append((log_path(out, subject), lambda tmp: Path(tmp).write_text(text)))
    write_all(items, force=force, folder=out)
    return paths
