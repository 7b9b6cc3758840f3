"""Multi-echo gradient-echo DICOM -> magnitude, phase (rad), echo times (s), field (T) and
geometry (RAS+ affine, voxel size, B0 direction), through dcm2niix.

dcm2niix (C. Rorden; its PyPI wheel ships the binary) does what is generic: classic and
enhanced (multi-frame) files, every vendor's slice ordering and geometry, Siemens mosaics, the
NIfTI affine, and BIDS sidecars with ``EchoTime`` (s), ``MagneticFieldStrength`` (T),
``ImageType`` (with the complex part appended: MAGNITUDE, PHASE, REAL, IMAGINARY, also from
GE's private tag (0043,102F)) and the Philips scale factors. It runs in a temporary folder as
QSMxT and heudiconv run it (one NIfTI and one sidecar per series, echo and part; ``_e2``,
``_ph``, ``_real``, ``_imaginary`` in the names)::

    dcm2niix -b y -ba n -z n -m n -p y -w 2 -f %s_%j -o TMP IN

(``-b y -ba n``: full BIDS sidecars; ``-z n``: no compression, the files are read once;
``-m n``: echoes and parts never merged; ``-p y``: Philips precise floating-point scaling;
``-f %s_%j``: series number and SeriesInstanceUID, so series stay apart). ``.dcm.gz`` files
are decompressed into the temporary folder first.

What is QSM-specific is done here:

* **finding the acquisition**: the converted volumes are grouped by series; an acquisition is
  magnitude with phase (or real with imaginary) of the same echoes, shape and geometry, in one
  series (Philips, GE) or in two (Siemens writes magnitude and phase as separate series of one
  protocol, paired here). Other series in the folder are ignored when one acquisition is found;
  several are an error that lists them (pick with ``series``).
* **refusing what is not multi-echo GRE phase**: field maps (a B0 map in Hz, a Siemens
  phase-difference image: one phase volume at ``EchoTime2`` beside two magnitude echoes) and
  series whose slices are missing or unevenly spaced (dcm2niix warns, and the NIfTI would get
  a wrong slice spacing).
* **phase to radians by vendor rules**, then the one rule of
  :func:`metaqsm.units.phase_to_radians` (``"auto"``): Siemens -4096..4094 (RescaleSlope 2,
  RescaleIntercept -4096) and 0..4095 (no rescale tags) both map to -pi..pi exactly; Philips
  values are dcm2niix's precise floats (radians when ``PhilipsScaleSlope`` says so), else the
  display values (``PhilipsRescaleSlope``/``Intercept``: milliradians or radians) are used;
  GE milliradians or 12-bit phase, or real/imaginary combined; radians in [0, 2 pi) wrapped.
* **GE slice chopping**: GE phase, real and imaginary exports may carry a factor -1 on every
  other slice (a pi jump between neighbouring slices); it is detected from the correlation of
  neighbouring slices and undone. GE's phase has the opposite handedness; it is negated, as
  QSMxT does (``nii_fix_ge``).
* the **B0 direction** from the affine (:func:`metaqsm.io.b0_dir_from_affine`).

References
----------
Li X, Morgan PS, Ashburner J, Smith J, Rorden C. The first step for neuroimaging data
analysis: DICOM to NIfTI conversion. J Neurosci Methods 2016;264:47-56.

Stewart AW, Robinson SD, O'Brien K, et al. QSMxT: Robust masking and artifact reduction for
quantitative susceptibility mapping. Magn Reson Med 2022;87:1289-1300.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..units import phase_to_radians
from ._nifti import b0_dir_from_affine

__all__ = ["DicomSeries", "read_dicom_series", "list_dicom_series", "DCM2NIIX_ARGS"]

DCM2NIIX_ARGS = ("-b", "y", "-ba", "n", "-z", "n", "-m", "n", "-p", "y", "-w", "2",
                 "-f", "%s_%j")
"""Options of every dcm2niix call (output folder and input are appended)."""

_PARTS = {"MAGNITUDE": "magnitude", "M": "magnitude", "PHASE": "phase", "P": "phase",
          "REAL": "real", "R": "real", "IMAGINARY": "imaginary", "I": "imaginary"}
# ImageType values of B0 maps and phase-difference images (Philips B0 map, Siemens/GE
# field maps); dcm2niix also names Philips B0 maps "_fieldmaphz"
_FIELDMAP_TOKENS = {"B0", "B0 MAP", "B0MAP", "FIELD_MAP", "FIELDMAP", "FM", "PHASE_DIFFERENCE",
                    "PHASEDIFF"}
# dcm2niix warnings that mean a volume's slices are not a complete, evenly spaced stack
_SLICE_WARNINGS = ("interslice distance varies", "missing images", "missing slice",
                   "unequal slice", "variable slice", "slice spacing varies")
_CONVERTED = re.compile(r"^Convert \d+ DICOM as (.+?) \(")


class DicomSeries(NamedTuple):
    """What :func:`read_dicom_series` returns (a tuple, so it unpacks into 7 names).

    magnitude : (X, Y, Z, E) float32
    phase : (X, Y, Z, E) float32, radians in [-pi, pi)
    echo_times : (E,) float64, seconds
    field_strength : float (tesla) or None when the headers lack it
    affine : (4, 4) float64, voxel -> RAS+ mm
    voxel_size : (3,) float64, mm
    b0_dir : (3,) float64, B0 (scanner z) in voxel coordinates
    """

    magnitude: np.ndarray
    phase: np.ndarray
    echo_times: np.ndarray
    field_strength: float | None
    affine: np.ndarray
    voxel_size: np.ndarray
    b0_dir: np.ndarray


class _Volume(NamedTuple):
    path: Path            # the NIfTI dcm2niix wrote
    side: dict            # its sidecar ({} when dcm2niix wrote none)
    part: str | None      # magnitude, phase, real, imaginary, fieldmap or None
    warnings: tuple       # dcm2niix's warnings for this volume


# ----------------------------------------------------------------------------- dcm2niix
def _dcm2niix():
    try:
        import dcm2niix

        if Path(dcm2niix.bin).exists():
            return dcm2niix.bin
    except ImportError:
        pass
    found = shutil.which("dcm2niix")
    if found is None:
        raise FileNotFoundError("dicom: dcm2niix is not installed; it is a dependency of "
                                "metaqsm: pip install dcm2niix")
    return found


def _prepare_input(folder, tmp):
    """``folder`` itself, or a mirror of it in ``tmp`` with ``*.gz`` files decompressed."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    def packed(p):  # a gzip-compressed DICOM file (not a NIfTI beside it)
        name = p.name.lower()
        return name.endswith(".gz") and not name.endswith((".nii.gz", ".tar.gz"))

    if not any(packed(p) for p in files):
        return folder
    mirror = tmp / "in"
    for p in files:
        rel = p.relative_to(folder)
        if packed(p):
            target = mirror / rel.with_name(rel.name[:-3])
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with gzip.open(p, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as exc:
                raise ValueError(f"dicom: {p} is not a readable gzip file ({exc})") from None
        else:
            target = mirror / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(p.resolve(), target)
    return mirror


def _run_dcm2niix(src, out):
    """Convert ``src`` into ``out``; returns {output stem: (warnings, ...)} from its log."""
    cmd = [_dcm2niix(), *DCM2NIIX_ARGS, "-o", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    warnings, pending = {}, []
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        m = _CONVERTED.match(line.strip())
        if m:
            warnings[Path(m.group(1)).name] = tuple(pending)
            pending = []
        elif line.lower().startswith(("warning", "error")):
            pending.append(re.sub(r"^(warning|error):?\s*", "", line.strip(), flags=re.I))
    return warnings, proc


def _part(side, stem):
    """'magnitude', 'phase', 'real', 'imaginary', 'fieldmap' or None of one converted volume."""
    tokens = [str(t).upper() for t in side.get("ImageType", [])]
    if "fieldmaphz" in stem.lower() or _FIELDMAP_TOKENS.intersection(tokens):
        return "fieldmap"
    if str(side.get("Units", "")).lower() in ("hz", "rad/s"):
        return "fieldmap"
    # dcm2niix appends the complex part (from ImageType, ComplexImageComponent or GE's private
    # tag) as the last ImageType value and names the file after it
    for token in reversed(tokens):
        if token in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
            return _PARTS[token]
    for suffix, part in (("_ph", "phase"), ("_real", "real"), ("_imaginary", "imaginary")):
        if re.search(suffix + r"[a-z]?$", stem):
            return part
    for token in tokens[2:]:
        if token in _PARTS:
            return _PARTS[token]
    return None


def _convert(folder, tmp):
    """All volumes dcm2niix makes of ``folder``, with their sidecars, parts and warnings."""
    out = tmp / "out"
    out.mkdir()
    warnings, proc = _run_dcm2niix(_prepare_input(folder, tmp), out)
    volumes = []
    for nii in sorted(out.glob("*.nii")):
        stem = nii.name[:-4]
        side_path = out / f"{stem}.json"
        side = json.loads(side_path.read_text()) if side_path.exists() else {}
        # dcm2niix names every complex part but the magnitude (_ph, _real, _imaginary): a
        # volume it did not name is a magnitude (Philips enhanced ImageType lacks M)
        part = _part(side, stem) or "magnitude"
        volumes.append(_Volume(nii, side, part, warnings.get(stem, ())))
    if not volumes:
        log = " ".join(line.strip() for line in (proc.stdout + proc.stderr).splitlines()
                       if line.lower().startswith(("warning", "error", "found")))
        raise ValueError(f"no DICOM images found in {folder}" + (f" (dcm2niix: {log})"
                                                                 if log else ""))
    return volumes


# ----------------------------------------------------------------------------- series
class _Series(NamedTuple):
    key: str
    number: str
    uid: str
    description: str
    volumes: list


def _name_info(path):
    """Series number and SeriesInstanceUID from a name made by ``-f %s_%j`` (the fallback when
    dcm2niix wrote no sidecar, as it does for a series with a missing slice)."""
    fields = path.name[:-4].split("_")
    return fields[0], (fields[1] if len(fields) > 1 else "")


def _group_series(volumes):
    groups = defaultdict(list)
    for v in volumes:
        number, uid = _name_info(v.path)
        groups[str(v.side.get("SeriesInstanceUID", uid))].append(v)
    out = []
    for key, vols in groups.items():
        s = next((v.side for v in vols if v.side), {})
        number, uid = _name_info(vols[0].path)
        out.append(_Series(key, str(s.get("SeriesNumber", number)),
                           str(s.get("SeriesInstanceUID", uid)),
                           str(s.get("SeriesDescription") or s.get("ProtocolName") or ""), vols))
    return sorted(out, key=lambda s: (len(s.number), s.number, s.uid))


def _describe(series):
    parts = defaultdict(set)
    for v in series.volumes:
        parts[v.part or "other"].add(_echo_number(v))
    what = ", ".join(f"{p} x{len(t)}" for p, t in sorted(parts.items()))
    desc = series.description or "no description"
    return f"series {series.number} '{desc}' ({what})"


def list_dicom_series(folder):
    """The series dcm2niix finds in ``folder``: list of dicts (uid, number, description,
    parts: {part: number of echoes})."""
    folder = _check_folder(folder)
    with tempfile.TemporaryDirectory(prefix="metaqsm-dicom-") as tmp:
        series = _group_series(_convert(folder, Path(tmp)))
    out = []
    for s in series:
        parts = defaultdict(int)
        for v in s.volumes:
            parts[v.part or "other"] += 1
        out.append({"uid": s.uid, "number": int(s.number) if s.number.isdigit() else s.number,
                    "description": s.description, "parts": dict(parts)})
    return out


def _echo_number(v):
    m = re.search(r"_e(\d+)", v.path.name)
    return int(v.side.get("EchoNumber", m.group(1) if m else 1))


def _echo_time(v, *, strict=True):
    te = v.side.get("EchoTime")
    if te is None:
        if strict:
            raise ValueError(f"dicom: {v.path.name} has no EchoTime (0018,0081) in its headers")
        return None
    return round(float(te), 7)


def _is_phase_difference(series, others):
    """A Siemens/GE phase-difference field map: one phase volume at EchoTime2, no other echo."""
    phases = [v for v in series.volumes if v.part == "phase"]
    if len(phases) != 1:
        return False
    side = phases[0].side
    te1, te2 = side.get("EchoTime1"), side.get("EchoTime2")
    guess = " ".join(str(g) for g in side.get("BidsGuess", [])).lower()
    if "phasediff" in guess:
        return True
    if te1 is None or te2 is None or abs(float(te1) - float(te2)) < 1e-6:
        return False
    te = _echo_time(phases[0], strict=False)
    if te is None or abs(te - float(te2)) > 1e-6:
        return False
    # the magnitude of a field map has both echoes; a single-echo GRE's has one
    mags = {_echo_time(v, strict=False) for s in [series, *others] for v in s.volumes
            if v.part == "magnitude"}
    return any(abs(t - float(te1)) < 1e-6 for t in mags if t is not None) or not mags


def _acquisitions(series_list):
    """Candidate acquisitions: lists of volumes holding magnitude+phase or real+imaginary."""
    out = []
    fieldmaps = []
    singles = defaultdict(list)  # series with one part only, to pair across series
    for s in series_list:
        if any(v.part == "fieldmap" for v in s.volumes) or _is_phase_difference(
                s, [o for o in series_list if o is not s]):
            fieldmaps.append(s)
            continue
        parts = {v.part for v in s.volumes}
        if {"real", "imaginary"} <= parts:
            out.append(([s], [v for v in s.volumes if v.part in ("real", "imaginary", "magnitude")
                              ]))
        elif {"magnitude", "phase"} <= parts:
            out.append(([s], [v for v in s.volumes if v.part in ("magnitude", "phase")]))
        elif parts & {"magnitude", "phase"}:
            singles[frozenset(parts & {"magnitude", "phase"})].append(s)
    # Siemens: magnitude and phase as two series of one protocol, same echoes and geometry
    used = set()
    for m in singles.get(frozenset({"magnitude"}), []):
        for p in singles.get(frozenset({"phase"}), []):
            if p.key in used:
                continue
            pm, pp = _protocol(m), _protocol(p)
            if (_signature(m, "magnitude") == _signature(p, "phase")
                    and (pm is None or pp is None or pm == pp)):
                out.append(([m, p], [v for v in m.volumes + p.volumes
                                     if v.part in ("magnitude", "phase")]))
                used.add(p.key)
                break
    return out, fieldmaps


def _signature(series, part):
    vols = [v for v in series.volumes if v.part == part]
    return tuple(sorted(_echo_number(v) for v in vols))


def _protocol(series):
    side = next((v.side for v in series.volumes if v.side), {})
    return side.get("ProtocolName") or side.get("SeriesDescription")


def _fieldmap_error(series):
    return ValueError(
        f"dicom: {_describe(series)} is a field map (a B0 map in Hz or a phase-difference "
        "image), not the phase of each echo of a gradient-echo acquisition; QSM needs the "
        "multi-echo GRE magnitude and phase series")


def _select(series_list, series, folder):
    """The volumes of the one acquisition to read."""
    if series is not None:
        wanted = [str(s) for s in (series if isinstance(series, (list, tuple)) else [series])]
        chosen = [s for s in series_list if s.number in wanted or s.uid in wanted]
        missing = [w for w in wanted if not any(w in (s.number, s.uid) for s in chosen)]
        if missing:
            listing = "; ".join(_describe(s) for s in series_list)
            raise ValueError(f"series {', '.join(missing)} not found in {folder}; it holds: "
                             f"{listing}")
        series_list = chosen
    acqs, fieldmaps = _acquisitions(series_list)
    if len(acqs) == 1:
        return acqs[0]
    if not acqs:
        if fieldmaps:
            raise _fieldmap_error(fieldmaps[0])
        parts = sorted({v.part or "other" for s in series_list for v in s.volumes})
        listing = "; ".join(_describe(s) for s in series_list)
        raise ValueError(f"dicom: {folder} holds no gradient-echo acquisition with magnitude "
                         f"and phase, or real and imaginary (it holds {', '.join(parts)}: "
                         f"{listing}); need magnitude and phase, or real and imaginary")
    listing = "; ".join(" + ".join(_describe(s) for s in group) for group, _ in acqs)
    raise ValueError(f"dicom: {folder} holds {len(acqs)} acquisitions: {listing}. Pick one "
                     "with series (--series NUMBER_OR_UID on the command line; two numbers "
                     "for separate magnitude and phase series)")


# ----------------------------------------------------------------------------- volumes
def _check_folder(folder):
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"dicom: DICOM folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"dicom: DICOM input {folder} is not a folder")
    return folder


def _load(volumes, group):
    """{part: [(echo time, data)] sorted by echo time}, the affine; checks slices and shapes."""
    import nibabel as nib

    desc = " + ".join(_describe(s) for s in group)
    for v in volumes:
        bad = [w for w in v.warnings if any(k in w.lower() for k in _SLICE_WARNINGS)]
        if bad or not v.side:
            why = "; ".join(bad) if bad else "dcm2niix could not write its sidecar"
            raise ValueError(f"dicom: {desc}: slices are missing or unevenly spaced in "
                             f"{v.path.name} (dcm2niix: {why}); the folder must hold every "
                             "slice of every echo")
    parts = defaultdict(list)
    ref_affine = ref_shape = None
    for v in volumes:
        img = nib.load(str(v.path))
        data = np.asarray(img.dataobj, dtype=np.float64)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise ValueError(f"dicom: {desc}: {v.path.name} has shape {data.shape}; expected "
                             "one 3D volume per echo and part")
        if ref_shape is None:
            ref_affine, ref_shape = img.affine, data.shape
        elif data.shape != ref_shape:
            raise ValueError(f"dicom: {desc}: the {v.part} of echo {_echo_time(v) * 1e3:g} ms "
                             f"has shape {data.shape}, other volumes {ref_shape}: a slice or "
                             "an image is missing")
        elif not np.allclose(img.affine, ref_affine, atol=1e-3):
            raise ValueError(f"dicom: {desc}: the {v.part} of echo {_echo_time(v) * 1e3:g} ms "
                             "has another geometry than the other volumes")
        parts[v.part].append((_echo_time(v), data, v.side))
    for part, items in parts.items():
        items.sort(key=lambda t: t[0])
        tes = [t for t, _, _ in items]
        if len(set(tes)) != len(tes):
            if len(group) == 1:
                raise ValueError(f"dicom: {desc}: the folder holds this series more than once "
                                 f"({part} echo times {tes}: e.g. classic and enhanced copies "
                                 "of one scan); point dicom at a folder with one copy")
            raise ValueError(f"dicom: {desc}: two {part} volumes share an echo time "
                             f"({tes}); the folder mixes acquisitions: pick with series")
    return parts, ref_affine


def _vendor(side):
    m = str(side.get("Manufacturer", "")).upper()
    for name in ("SIEMENS", "GE", "PHILIPS"):
        if name in m:
            return name.lower()
    return "unknown"


def _phase_radians(data, side, vendor):
    """Phase volumes (E stacked last) in radians by vendor rules and the one unit rule."""
    if vendor == "philips" and side.get("UsePhilipsFloatNotDisplayScaling"):
        lo, hi = float(data.min()), float(data.max())
        if not (lo >= -np.pi - 1e-3 and hi <= 2 * np.pi + 1e-3):
            # the precise floats are not radians: go back to the display values
            # DV = FP * RescaleSlope * ScaleSlope (milliradians or radians by their range)
            rs = float(side.get("PhilipsRescaleSlope", 1) or 1)
            ss = float(side.get("PhilipsScaleSlope", 1) or 1)
            data = data * rs * ss
    try:
        phase, _ = phase_to_radians(data, "auto")
    except ValueError as exc:
        raise ValueError(f"dicom: the {vendor} phase could not be mapped to radians ({exc})") \
            from None
    return phase.astype(np.float64)


def _undo_slice_chopping(z):
    """Undo a factor -1 on every other slice (GE): detected when neighbouring slices are
    anti-correlated (their summed complex product points backwards) for most slice pairs."""
    if z.shape[2] < 3:
        return z, False
    axes = (0, 1) + tuple(range(3, z.ndim))
    c = np.sum(z[:, :, 1:] * np.conj(z[:, :, :-1]), axis=axes)
    weight = np.sum(np.abs(z[:, :, 1:]) * np.abs(z[:, :, :-1]), axis=axes)
    # a pair counts when its phases are coherent (|c| well above the 1/sqrt(N) of noise) and
    # point backwards; smooth anatomy gives cos ~ +1, chopped slices cos ~ -1
    coherent = np.abs(c) > 0.2 * np.maximum(weight, 1e-30)
    backwards = coherent & (c.real < -0.5 * np.abs(c))
    if backwards.sum() <= 0.5 * len(c):
        return z, False
    z = z.copy()
    z[:, :, 1::2] *= -1
    return z, True


def read_dicom_series(folder, *, series=None):
    """Read a multi-echo gradient-echo acquisition from a folder of DICOM files (dcm2niix).

    Parameters
    ----------
    folder : path
        Folder searched recursively (classic or enhanced DICOM, ``.dcm.gz``; other files are
        skipped).
    series : None, str/int or list of them
        SeriesNumber(s) or SeriesInstanceUID(s) to use when the folder holds several
        acquisitions (two for Siemens' separate magnitude and phase series). Without it, a
        folder with exactly one magnitude+phase (or real+imaginary) acquisition is read,
        whatever other series lie beside it.

    Returns
    -------
    DicomSeries
        ``(magnitude, phase, echo_times, field_strength, affine, voxel_size, b0_dir)``.

    Raises
    ------
    ValueError
        No images, several acquisitions, a field map, missing magnitude or phase, missing or
        unevenly spaced slices, phase in no known unit.
    FileNotFoundError, NotADirectoryError
        A missing folder, or dcm2niix not installed.
    """
    folder = _check_folder(folder)
    with tempfile.TemporaryDirectory(prefix="metaqsm-dicom-") as tmp:
        series_list = _group_series(_convert(folder, Path(tmp)))
        group, volumes = _select(series_list, series, folder)
        parts, affine = _load(volumes, group)

    side = next(iter(parts.values()))[0][2]
    vendor = _vendor(side)
    kinds = ("real", "imaginary") if {"real", "imaginary"} <= set(parts) else ("magnitude", "phase")
    desc = " + ".join(_describe(s) for s in group)
    tes = [t for t, _, _ in parts[kinds[0]]]
    tes_b = [t for t, _, _ in parts[kinds[1]]]
    if tes != tes_b:
        raise ValueError(f"dicom: {desc}: {kinds[0]} echo times {tes} differ from {kinds[1]} "
                         f"echo times {tes_b}")
    a = np.stack([d for _, d, _ in parts[kinds[0]]], axis=-1)
    b = np.stack([d for _, d, _ in parts[kinds[1]]], axis=-1)
    if kinds == ("real", "imaginary"):
        z = a + 1j * b
        if vendor == "ge":
            z, _ = _undo_slice_chopping(z)
            z = np.conj(z)  # GE's phase has the opposite handedness (as QSMxT's nii_fix_ge)
        magnitude, phase = np.abs(z), np.angle(z)
    else:
        magnitude = a
        phase = _phase_radians(b, parts["phase"][0][2], vendor)
        if vendor == "ge":
            _, chopped = _undo_slice_chopping(a * np.exp(1j * phase))
            if chopped:
                phase[:, :, 1::2] += np.pi
            phase = -phase
    # wrapped, never clipped, into [-pi, pi); float32 -pi (just below -pi) is left as it is
    outside = (phase < -np.pi - 1e-6) | (phase >= np.pi)
    phase = np.where(outside, np.mod(phase + np.pi, 2 * np.pi) - np.pi, phase)
    b0 = side.get("MagneticFieldStrength")
    voxel_size = np.linalg.norm(affine[:3, :3], axis=0)
    return DicomSeries(
        magnitude=magnitude.astype(np.float32),
        phase=phase.astype(np.float32),
        echo_times=np.asarray(tes, float),
        field_strength=float(b0) if b0 not in (None, "") else None,
        affine=np.asarray(affine, float),
        voxel_size=voxel_size,
        b0_dir=b0_dir_from_affine(affine),
    )
