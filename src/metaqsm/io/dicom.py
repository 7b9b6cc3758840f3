"""Multi-echo gradient-echo DICOM series -> magnitude, phase (rad), echo times (s), field (T)
and geometry (RAS+ affine, voxel size, B0 direction).

Vendor conventions handled (classic single-frame DICOM, one file per slice and echo):

* **Siemens**: magnitude and phase as separate images (often separate series, which are paired
  automatically); ``ImageType`` holds ``M`` or ``P``; phase stored as 12-bit values with
  ``RescaleSlope`` 2 and ``RescaleIntercept`` -4096, i.e. -4096..4094 after rescaling, mapped
  to radians by ``pi / 4096``.
* **GE** (SWAN and other multi-echo GRE exports): magnitude/phase or real/imaginary images,
  told apart by the private tag (0043,102F) (0 magnitude, 1 phase, 2 real, 3 imaginary) or by
  ``ImageType``; real and imaginary are combined into magnitude and phase; phase stored in
  milliradians (about -3142..3142) or radians.
* **Philips**: ``ImageType`` holds ``P`` (or ``PHASE``) for phase; ``RescaleSlope`` /
  ``RescaleIntercept`` map stored values to radians (or milliradians, recognised by range).
* The standard attribute ``ComplexImageComponent`` (0008,9208) wins when present.

Echo times come from ``EchoTime`` (ms, converted to s), the field strength from
``MagneticFieldStrength`` (T), the geometry from ``ImageOrientationPatient``,
``ImagePositionPatient`` and ``PixelSpacing``; slices are ordered by their position along the
slice normal (not by file name or instance number), and the slice spacing is measured from the
positions (not ``SliceThickness``). DICOM's patient coordinates are LPS; the affine returned is
RAS+ as in NIfTI. Enhanced (multi-frame) DICOM is refused with a message, and Siemens mosaic
images (several slices tiled in one image) are not split: convert either with dcm2niix first.

References
----------
NEMA PS3.3 DICOM Information Object Definitions: C.7.6.2 Image Plane Module (Image Position /
Orientation (Patient)), C.8.13.3 MR Image and Spectroscopy Instance Macro (Complex Image
Component).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._nifti import b0_dir_from_affine

__all__ = ["DicomSeries", "read_dicom_series", "list_dicom_series"]

GE_IMAGE_TYPE_TAG = (0x0043, 0x102F)
_GE_TYPES = {0: "magnitude", 1: "phase", 2: "real", 3: "imaginary"}
_IMAGE_TYPE_TOKENS = {"M": "magnitude", "MAGNITUDE": "magnitude", "P": "phase", "PHASE": "phase",
                      "PHASE MAP": "phase", "R": "real", "REAL": "real", "I": "imaginary",
                      "IMAGINARY": "imaginary"}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DicomSeries(NamedTuple):
    """What :func:`read_dicom_series` returns (a tuple, so it unpacks into 7 names).

    magnitude : (X, Y, Z, E) float32
    phase : (X, Y, Z, E) float32, radians in [-pi, pi]
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


def _read_headers(folder):
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"DICOM folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"DICOM input {folder} is not a folder")
    datasets = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(str(path))
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        if "PixelData" not in ds:
            continue  # DICOMDIR, structured reports, ...
        datasets.append((path, ds))
    if not datasets:
        raise ValueError(f"no DICOM images found in {folder}")
    return datasets


def _describe(uid, items):
    ds = items[0][1]
    number = getattr(ds, "SeriesNumber", "?")
    desc = str(getattr(ds, "SeriesDescription", "")) or "no description"
    return f"series {number} '{desc}' ({len(items)} files, SeriesInstanceUID {uid})"


def list_dicom_series(folder):
    """The image series in a folder: list of dicts (uid, number, description, files)."""
    groups = _group_series(_read_headers(folder))
    out = []
    for uid, items in groups.items():
        ds = items[0][1]
        out.append({"uid": uid, "number": getattr(ds, "SeriesNumber", None),
                    "description": str(getattr(ds, "SeriesDescription", "")),
                    "files": len(items)})
    return out


def _group_series(datasets):
    groups = defaultdict(list)
    for path, ds in datasets:
        groups[str(getattr(ds, "SeriesInstanceUID", "unknown"))].append((path, ds))
    return dict(groups)


def _component(ds):
    """'magnitude', 'phase', 'real' or 'imaginary' of one image."""
    cic = getattr(ds, "ComplexImageComponent", None)
    if cic:
        value = str(cic).upper()
        if value in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
            return value.lower()
    if GE_IMAGE_TYPE_TAG in ds:
        try:
            value = int(ds[GE_IMAGE_TYPE_TAG].value)
        except (TypeError, ValueError):
            value = None
        if value in _GE_TYPES:
            return _GE_TYPES[value]
    image_type = [str(t).upper() for t in getattr(ds, "ImageType", [])]
    for token in image_type[2:] + image_type[:2]:
        if token in _IMAGE_TYPE_TOKENS:
            return _IMAGE_TYPE_TOKENS[token]
    return "magnitude"


def _echo_time(ds, path):
    te = getattr(ds, "EchoTime", None)
    if te is None or str(te) == "":
        raise ValueError(f"{path} has no EchoTime (0018,0081)")
    return round(float(te) / 1000.0, 7)  # ms -> s


def _pixels(ds):
    arr = ds.pixel_array.astype(np.float64)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return arr * slope + intercept


def _vendor(ds):
    m = str(getattr(ds, "Manufacturer", "")).upper()
    for name in ("SIEMENS", "GE", "PHILIPS"):
        if name in m:
            return name.lower()
    return "unknown"


def _phase_to_radians(values, vendor):
    """Map rescaled phase values to radians by vendor and range."""
    span = float(np.max(np.abs(values))) if values.size else 0.0
    if span <= np.pi * 1.001:
        return values
    if vendor == "siemens" or (3500 < span <= 4096.5):
        return values * (np.pi / 4096.0)
    if span <= 1000 * np.pi * 1.001:
        return values / 1000.0  # milliradians (GE, some Philips exports)
    if span <= 180.5:
        return np.deg2rad(values)
    raise ValueError(f"cannot tell the unit of the DICOM phase (values up to {span:g}); "
                     "rescale it to radians and use NIfTI input")


def _select(groups, series, folder):
    """Pick the series to use: the user's choice, the only one, or a magnitude + phase pair."""
    if series is not None:
        wanted = [str(s) for s in (series if isinstance(series, (list, tuple)) else [series])]
        chosen = {}
        for uid, items in groups.items():
            number = str(getattr(items[0][1], "SeriesNumber", ""))
            if uid in wanted or number in wanted:
                chosen[uid] = items
        if not chosen:
            listing = "; ".join(_describe(u, i) for u, i in groups.items())
            raise ValueError(f"series {', '.join(wanted)} not found in {folder}; it holds: {listing}")
        return [it for items in chosen.values() for it in items]
    if len(groups) == 1:
        return next(iter(groups.values()))
    if len(groups) == 2:
        # Siemens writes magnitude and phase as two series of one acquisition: pair them when
        # one is all magnitude, the other all phase, with the same slices and echo times.
        (u1, a), (u2, b) = groups.items()
        ca = {_component(ds) for _, ds in a}
        cb = {_component(ds) for _, ds in b}
        if {frozenset(ca), frozenset(cb)} == {frozenset({"magnitude"}), frozenset({"phase"})}:
            def key(items):
                return sorted((tuple(np.round(np.asarray(ds.ImagePositionPatient, float), 3)),
                               _echo_time(ds, p)) for p, ds in items)
            same_frame = (getattr(a[0][1], "FrameOfReferenceUID", None)
                          == getattr(b[0][1], "FrameOfReferenceUID", None))
            if same_frame and key(a) == key(b):
                return a + b
    listing = "; ".join(_describe(u, i) for u, i in groups.items())
    raise ValueError(f"DICOM folder {folder} holds {len(groups)} series: {listing}. Pick one "
                     "with --series NUMBER_OR_UID (two for separate magnitude and phase series)")


def read_dicom_series(folder, *, series=None):
    """Read a multi-echo gradient-echo acquisition from a folder of DICOM files.

    Parameters
    ----------
    folder : path
        Folder searched recursively; non-DICOM files are skipped.
    series : None, str/int or list of them
        SeriesInstanceUID(s) or SeriesNumber(s) to use when the folder holds several series.
        Without it, a folder with one series, or with one magnitude and one phase series of the
        same slices (Siemens), is read; any other mix is an error that lists the series.

    Returns
    -------
    DicomSeries
        ``(magnitude, phase, echo_times, field_strength, affine, voxel_size, b0_dir)``.

    Raises
    ------
    ValueError
        No images, several series, missing magnitude or phase (or real/imaginary), echoes with
        different slices, inconsistent orientation, enhanced multi-frame files.
    FileNotFoundError, NotADirectoryError
        For a missing folder.
    """
    datasets = _read_headers(folder)
    for path, ds in datasets:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{path} is an enhanced (multi-frame) DICOM file, which is not "
                             "supported: convert the series to NIfTI with dcm2niix and use "
                             "--magnitude/--phase")
    items = _select(_group_series(datasets), series, folder)

    # (component, echo time) -> list of (position along the normal, position, pixels)
    ref = items[0][1]
    try:
        iop = np.asarray(ref.ImageOrientationPatient, float)
        spacing = np.asarray(ref.PixelSpacing, float)
    except AttributeError as exc:
        raise ValueError(f"DICOM images lack geometry ({exc})") from None
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    vendor = _vendor(ref)
    b0_t = getattr(ref, "MagneticFieldStrength", None)
    field_strength = float(b0_t) if b0_t not in (None, "") else None

    parts = defaultdict(list)
    for path, ds in items:
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            raise ValueError(f"{path} has a different ImageOrientationPatient from the rest of "
                             "the series")
        pos = np.asarray(ds.ImagePositionPatient, float)
        parts[(_component(ds), _echo_time(ds, path))].append((float(pos @ normal), pos, ds))

    comps = {c for c, _ in parts}
    if {"real", "imaginary"} <= comps:
        kinds = ("real", "imaginary")
    elif {"magnitude", "phase"} <= comps:
        kinds = ("magnitude", "phase")
    else:
        raise ValueError(f"the DICOM series holds {sorted(comps)} images; need magnitude and "
                         "phase, or real and imaginary")
    tes = sorted({te for c, te in parts if c == kinds[0]})
    tes_b = sorted({te for c, te in parts if c == kinds[1]})
    if tes != tes_b:
        raise ValueError(f"{kinds[0]} echo times {tes} differ from {kinds[1]} echo times {tes_b}")

    volumes = {k: [] for k in kinds}
    slice_pos = None
    for te in tes:
        for kind in kinds:
            sl = sorted(parts[(kind, te)], key=lambda s: s[0])
            d = np.array([s[0] for s in sl])
            if d.size > 1 and np.any(np.diff(d) < 1e-4):
                raise ValueError(f"duplicate slice positions in the {kind} images of echo "
                                 f"{te * 1000:g} ms: the folder mixes acquisitions; use --series")
            if slice_pos is None:
                slice_pos = sl
            elif len(sl) != len(slice_pos) or not np.allclose(d, [s[0] for s in slice_pos], atol=1e-3):
                raise ValueError(f"the {kind} images of echo {te * 1000:g} ms have {len(sl)} "
                                 f"slices at other positions than the first echo ({len(slice_pos)})")
            # pixel_array is [row, column]; NIfTI voxel i runs along the row (columns)
            vol = np.stack([_pixels(s[2]).T for s in sl], axis=-1)
            if kind == "phase":
                vol = _phase_to_radians(vol, vendor)
            volumes[kind].append(vol)
    a = np.stack(volumes[kinds[0]], axis=-1)
    b = np.stack(volumes[kinds[1]], axis=-1)
    if kinds == ("real", "imaginary"):
        z = a + 1j * b
        magnitude, phase = np.abs(z), np.angle(z)
    else:
        magnitude, phase = a, np.clip(b, -np.pi, np.pi)

    first = slice_pos[0][1]
    if len(slice_pos) > 1:
        step = (slice_pos[-1][1] - first) / (len(slice_pos) - 1)
    else:
        thickness = float(getattr(ref, "SpacingBetweenSlices", 0) or getattr(ref, "SliceThickness", 1) or 1)
        step = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]   # along i: the columns, spaced by PixelSpacing[1]
    lps[:3, 1] = col_cos * spacing[0]   # along j: the rows, spaced by PixelSpacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = first
    affine = _LPS_TO_RAS @ lps
    voxel_size = np.linalg.norm(affine[:3, :3], axis=0)
    return DicomSeries(
        magnitude=magnitude.astype(np.float32),
        phase=phase.astype(np.float32),
        echo_times=np.asarray(tes, float),
        field_strength=field_strength,
        affine=affine,
        voxel_size=voxel_size,
        b0_dir=b0_dir_from_affine(affine),
    )
