"""DICOM import through dcm2niix: small synthetic multi-echo series written with pydicom for each
vendor rule (Siemens with and without rescale tags, Philips radians and milliradians, GE
real/imaginary and phase with slice chopping), .dcm.gz, a missing slice, a field map, folders
with several series; and the real series of ../shared/data/real-dicom against dcm2niix's own
sidecars and images."""

from __future__ import annotations

import gzip
import json
import shutil

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
# Siemens phase: 12-bit stored values s, radians (2 s - 4096) pi / 4096, so steps of 2 pi / 4096
SIEMENS_STEP = 2 * np.pi / 4096


def _rotation(ax_deg=15.0, az_deg=10.0):
    a, b = np.deg2rad(ax_deg), np.deg2rad(az_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def _truth(rng):
    """Magnitude and phase (rad) per echo, (X, Y, Z, E): smooth phase (as anatomy gives, so
    neighbouring slices correlate) wrapping through the whole of -pi..pi, plus some noise."""
    mag = rng.uniform(100, 1000, SHAPE + (len(TES_MS),))
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    smooth = 0.9 * x + 0.5 * y + 0.3 * z
    phase = np.stack([smooth * (te / 4.0) for te in TES_MS], axis=-1)
    phase = phase + rng.normal(0, 0.05, phase.shape)
    return mag, np.mod(phase + np.pi, 2 * np.pi) - np.pi


def _geometry(oblique=True):
    R = _rotation() if oblique else np.eye(3)
    origin = np.array([-40.0, 25.0, 12.0])
    return R[:, 0], R[:, 1], R[:, 2], origin


def _expected_affine(oblique=True):
    """voxel (i along the columns, j along the rows, k) -> RAS+ mm."""
    row, col, normal, origin = _geometry(oblique)
    lps = np.eye(4)
    lps[:3, 0] = row * SPACING[1]
    lps[:3, 1] = col * SPACING[0]
    lps[:3, 2] = normal * THICK
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _reorient(vol, affine_from, affine_to):
    """``vol`` (indexed as ``affine_from``) in the voxel order of ``affine_to`` (an axis flip or
    permutation, as dcm2niix applies)."""
    m = np.linalg.solve(affine_to, affine_from)
    perm = [int(np.argmax(np.abs(m[r, :3]))) for r in range(3)]
    out = np.transpose(vol, perm + list(range(3, vol.ndim)))
    for r in range(3):
        if m[r, perm[r]] < 0:
            out = np.flip(out, axis=r)
    return out


def _write(path, pixels, *, series_uid, series_number, manufacturer, image_type, te_ms, echo,
           k, frame_uid, oblique=True, slope=None, intercept=None, signed=False, private=None,
           field_strength=3.0, description="gre", extra=None):
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
    ds.ProtocolName = description
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
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _write_volume(folder, name, vol, rng, *, skip=(), **kw):
    """One file per slice and echo of a (X, Y, Z, E) volume of stored values, in random order;
    ``skip`` lists (echo index, slice) pairs not written."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [(e, te, k) for e, te in enumerate(TES_MS) for k in range(SHAPE[2])
             if (e, k) not in skip]
    for n, idx in enumerate(rng.permutation(len(files))):
        e, te, k = files[idx]
        _write(folder / f"{name}_{n:04d}.dcm", vol[:, :, k, e].T, te_ms=te, echo=e + 1, k=k, **kw)


def _siemens(folder, rng, mag, phase, *, rescale=True, skip=()):
    stored = np.round((phase * 4096 / np.pi + 4096) / 2).clip(0, 4095)
    common = dict(manufacturer="SIEMENS", frame_uid="1.2.3.9")
    _write_volume(folder, "mag", np.round(mag), rng, series_uid="1.2.3.5", series_number=5,
                  image_type=["ORIGINAL", "PRIMARY", "M", "ND"], skip=skip, **common)
    tags = dict(slope=2, intercept=-4096) if rescale else {}
    _write_volume(folder, "pha", stored, rng, series_uid="1.2.3.6", series_number=6,
                  image_type=["ORIGINAL", "PRIMARY", "P", "ND"], skip=skip, **tags, **common)
    (folder / "README.txt").write_text("not a DICOM file")
    return folder


def _ge(folder, rng, mag, phase, uid="1.2.3.7", number=7, *, chop=False, polar=False):
    # GE's phase has the opposite handedness: the scanner stores the conjugate
    z = mag * np.exp(-1j * phase)
    if chop:  # every other slice multiplied by -1
        z[:, :, 1::2] *= -1
    common = dict(manufacturer="GE MEDICAL SYSTEMS", frame_uid="1.2.3.9", series_uid=uid,
                  series_number=number, signed=True, image_type=["ORIGINAL", "PRIMARY", "OTHER"],
                  description="SWAN")
    if polar:  # magnitude and phase in milliradians
        _write_volume(folder, f"m{number}", np.round(np.abs(z)), rng, private=0, **common)
        _write_volume(folder, f"p{number}", np.round(1000 * np.angle(z)), rng, private=1, **common)
    else:
        _write_volume(folder, f"re{number}", np.round(z.real), rng, private=2, **common)
        _write_volume(folder, f"im{number}", np.round(z.imag), rng, private=3, **common)
    return folder


def _philips(folder, rng, mag, phase, *, mrad=False):
    if mrad:  # display values in milliradians, as the real Philips field map stores them
        slope, intercept = 1.53455, -3142.0
        stored = np.round((1000 * phase - intercept) / slope).clip(0, 4095)
    else:
        slope, intercept = 2 * np.pi / 4095, -np.pi
        stored = np.round((phase + np.pi) / slope).clip(0, 4095)
    common = dict(manufacturer="Philips Medical Systems", frame_uid="1.2.3.9",
                  series_uid="1.2.3.8", series_number=801, field_strength=7.0)
    _write_volume(folder, "m", np.round(mag), rng,
                  image_type=["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], **common)
    _write_volume(folder, "p", stored, rng, image_type=["ORIGINAL", "PRIMARY", "P_FFE", "P", "FFE"],
                  slope=slope, intercept=intercept, **common)
    return folder, slope * (1e-3 if mrad else 1.0)


def _phase_err(a, b):
    return np.max(np.abs(np.angle(np.exp(1j * (a - b)))))


def _check_b0(d):
    """B0 (scanner z) in voxel coordinates: the affine's rotation maps it back onto RAS z."""
    rotation = d.affine[:3, :3] / d.voxel_size
    np.testing.assert_allclose(rotation @ d.b0_dir, [0, 0, 1], atol=1e-6)


def _check(d, mag, phase, *, mag_atol, phase_atol, field_strength=3.0):
    """Values in the reader's voxel order, geometry, echo times and field strength."""
    A = _expected_affine()
    assert d.magnitude.shape == SHAPE + (3,)
    np.testing.assert_allclose(d.magnitude, _reorient(mag, A, d.affine), atol=mag_atol)
    assert _phase_err(d.phase, _reorient(phase, A, d.affine)) <= phase_atol
    assert d.phase.min() >= -np.pi and d.phase.max() < np.pi + 1e-6
    np.testing.assert_allclose(np.sort(d.voxel_size), np.sort([SPACING[1], SPACING[0], THICK]),
                               atol=1e-4)
    np.testing.assert_allclose(d.echo_times, np.asarray(TES_MS) / 1000, atol=1e-9)
    assert d.field_strength == pytest.approx(field_strength)
    # B0 (scanner z) in voxel coordinates: the affine maps it back onto RAS z
    _check_b0(d)
    # the same world geometry as the headers (up to dcm2niix's axis flips)
    np.testing.assert_allclose(np.abs(d.affine[:3, :3]).sum(), np.abs(A[:3, :3]).sum(), atol=1e-3)


@pytest.fixture(scope="module")
def truth():
    return _truth(np.random.default_rng(0))


def test_siemens_separate_series_round_trip(tmp_path, truth):
    mag, phase = truth
    d = read_dicom_series(_siemens(tmp_path / "s", np.random.default_rng(1), mag, phase))
    _check(d, np.round(mag), phase, mag_atol=1e-3, phase_atol=SIEMENS_STEP / 2 + 1e-5)
    magnitude, ph, tes, b0, affine, vsz, bdir = d  # a plain 7-tuple
    assert tes.shape == (3,)


def test_siemens_phase_without_rescale_maps_to_minus_pi_pi(tmp_path, truth):
    """0..4095 without RescaleSlope/Intercept is the same phase as -4096..4094 with them (the
    old reader read it as 0..pi and the map was noise)."""
    mag, phase = truth
    rng = np.random.default_rng(2)
    plain = read_dicom_series(_siemens(tmp_path / "plain", rng, mag, phase, rescale=False))
    tagged = read_dicom_series(_siemens(tmp_path / "tagged", rng, mag, phase))
    np.testing.assert_array_equal(plain.phase, tagged.phase)
    _check(plain, np.round(mag), phase, mag_atol=1e-3, phase_atol=SIEMENS_STEP / 2 + 1e-5)


def test_dcm_gz_files(tmp_path, truth):
    mag, phase = truth
    folder = _siemens(tmp_path / "gz", np.random.default_rng(3), mag, phase)
    for p in folder.glob("*.dcm"):
        with open(p, "rb") as src, gzip.open(f"{p}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        p.unlink()
    d = read_dicom_series(folder)
    _check(d, np.round(mag), phase, mag_atol=1e-3, phase_atol=SIEMENS_STEP / 2 + 1e-5)
    assert not list(folder.glob("*.dcm"))  # nothing decompressed beside the input


@pytest.mark.parametrize("chop", [False, True])
def test_ge_real_imaginary_round_trip_and_slice_chopping(tmp_path, truth, chop):
    mag, phase = truth
    d = read_dicom_series(_ge(tmp_path / "ge", np.random.default_rng(4), mag, phase, chop=chop))
    # rounding real and imaginary to integers moves the phase by at most 0.71 / |z|
    _check(d, mag, phase, mag_atol=1.0, phase_atol=0.71 / mag.min() + 1e-5)


def test_ge_phase_in_milliradians_with_slice_chopping(tmp_path, truth):
    mag, phase = truth
    d = read_dicom_series(_ge(tmp_path / "gep", np.random.default_rng(5), mag, phase, chop=True,
                              polar=True))
    _check(d, np.round(mag), phase, mag_atol=1e-3, phase_atol=6e-4)


@pytest.mark.parametrize("mrad", [False, True])
def test_philips_rescaled_phase_round_trip(tmp_path, truth, mrad):
    mag, phase = truth
    folder, step = _philips(tmp_path / "ph", np.random.default_rng(6), mag, phase, mrad=mrad)
    d = read_dicom_series(folder)
    _check(d, np.round(mag), phase, mag_atol=1e-3, phase_atol=step / 2 + 1e-3,
           field_strength=7.0)


def test_missing_slice_is_an_error_that_says_so(tmp_path, truth):
    mag, phase = truth
    rng = np.random.default_rng(7)
    # slice 2 of every echo missing: dcm2niix would write a wrong slice spacing
    gap = _siemens(tmp_path / "gap", rng, mag, phase, skip={(e, 2) for e in range(3)})
    with pytest.raises(ValueError, match="slices are missing or unevenly spaced"):
        read_dicom_series(gap)
    # one phase slice of one echo missing
    one = _siemens(tmp_path / "one", rng, mag, phase)
    for p in one.glob("pha_*.dcm"):
        if int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) == 203:
            p.unlink()
    with pytest.raises(ValueError, match="slices are missing or unevenly spaced"):
        read_dicom_series(one)


def test_field_map_is_refused_not_read_as_magnitude(tmp_path, truth):
    mag, _ = truth
    rng = np.random.default_rng(8)
    folder = tmp_path / "fmap"
    # a Philips B0 map in Hz beside its magnitude: there is no phase of each echo
    common = dict(manufacturer="Philips Medical Systems", frame_uid="1.2.3.9",
                  series_uid="1.2.3.30", series_number=30, description="B0 map")
    _write_volume(folder, "m", np.round(mag), rng,
                  image_type=["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"], **common)
    _write_volume(folder, "b0", np.round(mag / 10), rng,
                  image_type=["DERIVED", "PRIMARY", "B0", "B0 MAP"], **common)
    with pytest.raises(ValueError, match="is a field map .*not the phase of each echo"):
        read_dicom_series(folder)


def test_several_acquisitions_error_lists_them_and_series_picks_one(tmp_path, truth):
    mag, phase = truth
    rng = np.random.default_rng(9)
    folder = tmp_path / "two"
    _ge(folder, rng, mag, phase, uid="1.2.3.70", number=70)
    _ge(folder, rng, mag * 2, phase, uid="1.2.3.71", number=71)
    with pytest.raises(ValueError, match=r"holds 2 acquisitions: series 70 'SWAN'.*series 71 "
                                         r".*--series"):
        read_dicom_series(folder)
    d = read_dicom_series(folder, series=71)
    np.testing.assert_allclose(d.magnitude, _reorient(2 * mag, _expected_affine(), d.affine),
                               atol=1.0)
    d = read_dicom_series(folder, series="1.2.3.70")
    np.testing.assert_allclose(d.magnitude, _reorient(mag, _expected_affine(), d.affine), atol=1.0)
    assert {s["number"] for s in list_dicom_series(folder)} == {70, 71}
    with pytest.raises(ValueError, match="series 99 not found"):
        read_dicom_series(folder, series=99)


def test_other_series_beside_the_acquisition(tmp_path, truth):
    mag, phase = truth
    rng = np.random.default_rng(10)
    folder = _siemens(tmp_path / "s", rng, mag, phase)
    # a magnitude-only series of another protocol (a localiser, a T1) is not an acquisition
    _write_volume(folder / "t1", "t1", np.round(mag), rng, manufacturer="SIEMENS",
                  frame_uid="1.2.3.9", series_uid="1.2.3.20", series_number=20,
                  image_type=["ORIGINAL", "PRIMARY", "M", "ND"], description="t1_mprage")
    d = read_dicom_series(folder)
    _check(d, np.round(mag), phase, mag_atol=1e-3, phase_atol=SIEMENS_STEP / 2 + 1e-5)
    # another GRE acquisition beside: pick magnitude and phase series by number
    _ge(folder, rng, mag, phase, uid="1.2.3.99", number=99)
    with pytest.raises(ValueError, match="holds 2 acquisitions"):
        read_dicom_series(folder)
    d = read_dicom_series(folder, series=[5, 6])
    _check(d, np.round(mag), phase, mag_atol=1e-3, phase_atol=SIEMENS_STEP / 2 + 1e-5)


def test_bad_folders(tmp_path, truth):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dicom_series(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no DICOM images"):
        read_dicom_series(empty)
    mag, _ = truth
    _write_volume(tmp_path / "magonly", "m", np.round(mag), np.random.default_rng(11),
                  manufacturer="SIEMENS", frame_uid="1", series_uid="1.5", series_number=1,
                  image_type=["ORIGINAL", "PRIMARY", "M", "ND"])
    with pytest.raises(ValueError, match="need magnitude and phase"):
        read_dicom_series(tmp_path / "magonly")


# ----------------------------------------------------------------------------- real series
def _real(shared_data, *parts):
    d = shared_data.joinpath("real-dicom", *parts)
    if not d.exists():
        pytest.skip(f"{d} is absent (../shared/data/real-dicom)")
    return d


def _reference(folder, stem):
    import nibabel as nib

    img = nib.load(str(folder / f"{stem}.nii.gz"))
    side = json.loads((folder / f"{stem}.json").read_text())
    return np.asarray(img.dataobj, dtype=np.float64), img.affine, side


@pytest.mark.parametrize("kind,tag", [("classic", "cl"), ("enhanced", "enh")])
def test_real_philips_field_map_series(shared_data, kind, tag):
    """Philips Ingenia Elition X, 3 T, 2 echoes, magnitude and phase (mrad via the rescale
    tags) in one series, classic and enhanced, against what dcm2niix made of them."""
    folder = _real(shared_data, "philips-fieldmap", kind)
    refs = _real(shared_data, "philips-fieldmap", "dcm2niix")
    d = read_dicom_series(folder)
    assert d.magnitude.shape == (80, 80, 53, 2)
    stems = [f"2001_WIP_fcMRI_Field_Mapping_{tag}_e{e}" for e in (1, 2)]
    tes = [_reference(refs, s)[2]["EchoTime"] for s in stems]
    np.testing.assert_allclose(d.echo_times, tes, atol=1e-9)
    np.testing.assert_allclose(d.echo_times, [0.0023, 0.0046], atol=1e-9)
    assert d.field_strength == _reference(refs, stems[0])[2]["MagneticFieldStrength"] == 3
    for e, stem in enumerate(stems):
        mag, affine, _ = _reference(refs, stem)
        ph, _, side = _reference(refs, stem + "_ph")
        np.testing.assert_allclose(d.affine, affine, atol=1e-4)
        np.testing.assert_allclose(d.magnitude[..., e], mag, rtol=1e-5)
        # dcm2niix's precise floats are radians here (RescaleSlope 1.53455 x ScaleSlope
        # 651.74 = 1000.13 stored units per radian): -pi..pi, equal after wrapping
        assert side["PhilipsRescaleIntercept"] == -3142
        assert ph.min() >= -np.pi - 1e-6 and ph.max() <= np.pi
        wrapped = np.mod(ph + np.pi, 2 * np.pi) - np.pi
        np.testing.assert_allclose(d.phase[..., e], wrapped, atol=1e-5)
    assert -np.pi <= d.phase.min() < -3.1 and 3.1 < d.phase.max() < np.pi
    np.testing.assert_allclose(d.voxel_size, [3, 3, 3], atol=1e-4)
    # B0 about 3.5 degrees off the slice normal, as the orientation says
    iop = np.asarray(_reference(refs, stems[0])[2]["ImageOrientationPatientDICOM"])
    normal = np.cross(iop[:3], iop[3:])
    assert np.degrees(np.arccos(abs(normal[2]))) == pytest.approx(3.5, abs=0.3)
    _check_b0(d)
    assert abs(d.b0_dir[2]) == pytest.approx(abs(normal[2]), abs=1e-3)


def test_real_siemens_megre(shared_data):
    """Siemens Prisma 3 T, GRE_QSM, 3 echoes (4/10/16 ms), one slice; magnitude and phase in
    two series (paired here); phase with RescaleSlope 2 / Intercept -4096."""
    folder = _real(shared_data, "siemens-megre")
    d = read_dicom_series(folder)
    assert d.magnitude.shape == (54, 64, 1, 3) or d.magnitude.shape == (64, 54, 1, 3)
    np.testing.assert_allclose(d.echo_times, [0.004, 0.010, 0.016], atol=1e-9)
    assert d.field_strength == 3
    np.testing.assert_allclose(d.voxel_size, [3.5, 3.5, 3.5], atol=1e-4)
    _check_b0(d)
    # the phase files' stored values, rescaled and mapped by pi / 4096, as a set per echo
    for e, name in enumerate(sorted((folder / "phase").glob("*.dcm"))):
        ds = pydicom.dcmread(name)
        assert float(ds.RescaleSlope) == 2 and float(ds.RescaleIntercept) == -4096
        te = float(ds.EchoTime) / 1000
        e = int(np.argmin(np.abs(d.echo_times - te)))
        expected = (ds.pixel_array * 2.0 - 4096) * np.pi / 4096
        np.testing.assert_allclose(np.sort(d.phase[..., e].ravel()), np.sort(expected.ravel()),
                                   atol=1e-6)
        assert d.phase[..., e].min() == pytest.approx(-np.pi, abs=1e-6)
        assert d.phase[..., e].max() == pytest.approx(np.pi - 2 * np.pi / 4096, abs=1e-5)


def test_enhanced_file_among_classic_series(shared_data, tmp_path, truth):
    """One enhanced multi-frame file in the folder does not stop ``series`` from picking the
    classic ones (and without ``series`` both acquisitions are listed)."""
    enhanced = _real(shared_data, "philips-fieldmap", "enhanced",
                     "2001_WIP_fcMRI_Field_Mapping_e2_phMag.dcm")
    mag, phase = truth
    folder = _siemens(tmp_path / "mix", np.random.default_rng(12), mag, phase)
    shutil.copy(enhanced, folder / "enhanced.dcm")
    with pytest.raises(ValueError, match="holds 2 acquisitions"):
        read_dicom_series(folder)
    d = read_dicom_series(folder, series=["5", "6"])
    _check(d, np.round(mag), phase, mag_atol=1e-3, phase_atol=SIEMENS_STEP / 2 + 1e-5)
    d = read_dicom_series(folder, series=2001)
    assert d.magnitude.shape == (80, 80, 53, 2)
