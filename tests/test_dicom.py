"""DICOM import: small synthetic multi-echo series written with pydicom for the Siemens, GE and
Philips conventions; values, echo times, field strength and geometry must round-trip."""

from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from metaqsm.io.dicom import list_dicom_series, read_dicom_series  # noqa: E402

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SHAPE = (12, 10, 5)  # columns (i), rows (j), slices (k)
TES_MS = (4.0, 8.5, 13.0)
SPACING = (0.8, 0.9)  # PixelSpacing: (between rows, between columns) mm
THICK = 2.0
# Siemens phase: 12-bit stored values s, radians (2 s - 4096) pi / 4096, so steps of 2 pi / 4096;
# +pi itself is not representable (s = 4095 is pi - 2 pi / 4096)
SIEMENS_STEP = 2 * np.pi / 4096


def _rotation(ax_deg=15.0, az_deg=10.0):
    a, b = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def _truth(rng):
    """Magnitude and phase (rad) per echo, (X, Y, Z, E)."""
    mag = rng.uniform(100, 1000, SHAPE + (len(TES_MS),))
    phase = rng.uniform(-np.pi, np.pi, SHAPE + (len(TES_MS),))
    return mag, phase


def _geometry(oblique=True):
    R = _rotation() if oblique else np.eye(3)
    origin = np.array([-40.0, 25.0, 12.0])
    return R[:, 0], R[:, 1], R[:, 2], origin


def _expected_affine(oblique=True):
    row, col, normal, origin = _geometry(oblique)
    lps = np.eye(4)
    lps[:3, 0] = row * SPACING[1]
    lps[:3, 1] = col * SPACING[0]
    lps[:3, 2] = normal * THICK
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _write(path, pixels, *, series_uid, series_number, manufacturer, image_type, te_ms, echo,
           k, frame_uid, oblique=True, slope=None, intercept=None, signed=False, private=None,
           field_strength=3.0, description="gre"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = frame_uid
    ds.ImageType = image_type
    ds.EchoTime = te_ms
    ds.EchoNumbers = echo
    ds.InstanceNumber = 1 + k + 100 * echo
    if field_strength is not None:
        ds.MagneticFieldStrength = field_strength
    row, col, normal, origin = _geometry(oblique)
    ds.ImageOrientationPatient = [float(v) for v in np.r_[row, col]]
    ds.ImagePositionPatient = [float(v) for v in origin + k * THICK * normal]
    ds.PixelSpacing = list(SPACING)
    ds.SliceThickness = THICK
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    if private is not None:
        ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
        ds.add_new((0x0043, 0x102F), "SS", private)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _write_volume(folder, name, vol, rng, **kw):
    """One file per slice and echo of a (X, Y, Z, E) volume of stored values, in random order."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for e, te in enumerate(TES_MS):
        for k in range(SHAPE[2]):
            files.append((e, te, k))
    order = rng.permutation(len(files))
    for n, idx in enumerate(order):
        e, te, k = files[idx]
        _write(folder / f"{name}_{n:04d}.dcm", vol[:, :, k, e].T, te_ms=te, echo=e + 1, k=k, **kw)


def _siemens(tmp_path, rng, mag, phase):
    folder = tmp_path / "siemens"
    stored = np.round((phase * 4096 / np.pi + 4096) / 2).clip(0, 4095)
    common = dict(manufacturer="SIEMENS", frame_uid="1.2.3.9")
    _write_volume(folder, "mag", np.round(mag), rng, series_uid="1.2.3.5", series_number=5,
                  image_type=["ORIGINAL", "PRIMARY", "M", "ND"], **common)
    _write_volume(folder, "pha", stored, rng, series_uid="1.2.3.6", series_number=6,
                  image_type=["ORIGINAL", "PRIMARY", "P", "ND"], slope=2, intercept=-4096, **common)
    (folder / "README.txt").write_text("not a DICOM file")
    return folder


def _ge(folder, rng, mag, phase, uid="1.2.3.7", number=7):
    z = mag * np.exp(1j * phase)
    common = dict(manufacturer="GE MEDICAL SYSTEMS", frame_uid="1.2.3.9", series_uid=uid,
                  series_number=number, signed=True, image_type=["ORIGINAL", "PRIMARY", "OTHER"],
                  description="SWAN")
    _write_volume(folder, f"re{number}", np.round(z.real), rng, private=2, **common)
    _write_volume(folder, f"im{number}", np.round(z.imag), rng, private=3, **common)
    return folder


def _philips(tmp_path, rng, mag, phase):
    folder = tmp_path / "philips"
    slope = 2 * np.pi / 4095
    stored = np.round((phase + np.pi) / slope).clip(0, 4095)
    common = dict(manufacturer="Philips Medical Systems", frame_uid="1.2.3.9",
                  series_uid="1.2.3.8", series_number=801, field_strength=7.0)
    _write_volume(folder, "m", np.round(mag), rng, image_type=["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"],
                  **common)
    _write_volume(folder, "p", stored, rng, image_type=["ORIGINAL", "PRIMARY", "P_FFE", "P", "FFE"],
                  slope=slope, intercept=-np.pi, **common)
    return folder


def _check_geometry(d, oblique=True):
    np.testing.assert_allclose(d.affine, _expected_affine(oblique), atol=1e-5)
    np.testing.assert_allclose(d.voxel_size, [SPACING[1], SPACING[0], THICK], atol=1e-6)
    np.testing.assert_allclose(d.echo_times, np.asarray(TES_MS) / 1000, atol=1e-9)
    # B0 (scanner z) in voxel coordinates: the inverse rotation of z
    R = np.diag([-1.0, -1.0, 1.0]) @ np.column_stack(_geometry(oblique)[:3])
    np.testing.assert_allclose(np.abs(d.b0_dir), np.abs(np.linalg.solve(R, [0, 0, 1])), atol=1e-6)


def _phase_err(a, b):
    return np.max(np.abs(np.angle(np.exp(1j * (a - b)))))


def test_siemens_separate_series_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mag, phase = _truth(rng)
    d = read_dicom_series(_siemens(tmp_path, rng, mag, phase))
    assert d.magnitude.shape == SHAPE + (3,)
    np.testing.assert_allclose(d.magnitude, np.round(mag), atol=1e-3)
    assert _phase_err(d.phase, phase) <= SIEMENS_STEP + 1e-6
    assert d.phase.min() >= -np.pi and d.phase.max() <= np.pi
    assert d.field_strength == pytest.approx(3.0)
    _check_geometry(d)
    magnitude, ph, tes, b0, affine, vsz, bdir = d  # a plain 7-tuple
    assert tes.shape == (3,)


def test_ge_real_imaginary_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    mag, phase = _truth(rng)
    d = read_dicom_series(_ge(tmp_path / "ge", rng, mag, phase))
    np.testing.assert_allclose(d.magnitude, mag, atol=1.0)
    # rounding real and imaginary to integers moves the phase by at most 0.71 / |z|
    err = np.abs(np.angle(np.exp(1j * (d.phase - phase))))
    assert np.all(err <= 0.71 / mag + 1e-5)
    _check_geometry(d)


def test_philips_rescaled_phase_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    mag, phase = _truth(rng)
    d = read_dicom_series(_philips(tmp_path, rng, mag, phase))
    np.testing.assert_allclose(d.magnitude, np.round(mag), atol=1e-3)
    assert _phase_err(d.phase, phase) <= np.pi / 4095 + 1e-6
    assert d.field_strength == pytest.approx(7.0)
    _check_geometry(d)


def test_two_series_error_lists_them_and_series_picks_one(tmp_path):
    rng = np.random.default_rng(3)
    mag, phase = _truth(rng)
    folder = tmp_path / "two"
    _ge(folder, rng, mag, phase, uid="1.2.3.70", number=70)
    _ge(folder, rng, mag * 2, phase, uid="1.2.3.71", number=71)
    with pytest.raises(ValueError, match=r"holds 2 series: series 70 'SWAN'.*series 71 .*--series"):
        read_dicom_series(folder)
    d = read_dicom_series(folder, series=71)
    np.testing.assert_allclose(d.magnitude, 2 * mag, atol=1.0)
    d = read_dicom_series(folder, series="1.2.3.70")
    np.testing.assert_allclose(d.magnitude, mag, atol=1.0)
    assert {s["number"] for s in list_dicom_series(folder)} == {70, 71}
    with pytest.raises(ValueError, match="series 99 not found"):
        read_dicom_series(folder, series=99)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dicom_series(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no DICOM images"):
        read_dicom_series(empty)
    # magnitude only: no phase
    rng = np.random.default_rng(4)
    mag, _ = _truth(rng)
    _write_volume(tmp_path / "magonly", "m", np.round(mag), rng, manufacturer="SIEMENS",
                  frame_uid="1", series_uid="1.5", series_number=1,
                  image_type=["ORIGINAL", "PRIMARY", "M", "ND"])
    with pytest.raises(ValueError, match="need magnitude and phase"):
        read_dicom_series(tmp_path / "magonly")


def test_split_series_with_an_extra_series_needs_series_option(tmp_path):
    rng = np.random.default_rng(5)
    mag, phase = _truth(rng)
    folder = _siemens(tmp_path, rng, mag, phase)
    _ge(folder, rng, mag, phase, uid="1.2.3.99", number=99)  # another acquisition beside
    with pytest.raises(ValueError, match="holds 3 series"):
        read_dicom_series(folder)
    d = read_dicom_series(folder, series=[5, 6])  # magnitude and phase series by number
    np.testing.assert_allclose(d.magnitude, np.round(mag), atol=1e-3)
    assert _phase_err(d.phase, phase) <= SIEMENS_STEP + 1e-6
