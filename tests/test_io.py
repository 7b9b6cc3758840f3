"""NIfTI I/O: B0 direction from the affine, round trips, atomic writes and the errors."""

from __future__ import annotations

import json
import math
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from metaqsm.io import (
    atomic_path,
    b0_dir_from_affine,
    check_output_paths,
    load_nifti,
    save_nifti,
    write_json,
)


def rot_x(deg):
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def affine(linear, translation=(10.0, -20.0, 5.0)):
    A = np.eye(4)
    A[:3, :3] = linear
    A[:3, 3] = translation
    return A


# ---------------------------------------------------------------- B0 direction
def test_b0_dir_identity_and_anisotropic_diagonal():
    np.testing.assert_allclose(b0_dir_from_affine(np.eye(4)), [0, 0, 1], atol=1e-15)
    # the voxel scaling does not tilt B0
    np.testing.assert_allclose(b0_dir_from_affine(affine(np.diag([0.5, 0.75, 3.0]))), [0, 0, 1],
                               atol=1e-15)


def test_b0_dir_oblique_20_degrees_about_x():
    # Voxel axis j points along R e_j in the world. B0 (world z) in voxel coordinates is
    # R^T z = (0, sin 20, cos 20): the slices are tilted by 20 degrees about x.
    R = rot_x(20.0)
    A = affine(R @ np.diag([1.0, 1.0, 2.0]))
    b = b0_dir_from_affine(A)
    a = math.radians(20.0)
    np.testing.assert_allclose(b, [0.0, math.sin(a), math.cos(a)], atol=1e-12)
    # the angle between B0 and the third voxel axis is the tilt
    assert math.degrees(math.acos(b[2])) == pytest.approx(20.0, abs=1e-9)
    # mapping the voxel-space vector back to the world (scaled columns) gives the world z axis
    world = (A[:3, :3] / np.linalg.norm(A[:3, :3], axis=0)) @ b
    np.testing.assert_allclose(world, [0, 0, 1], atol=1e-12)


def test_b0_dir_flipped_and_permuted_axes():
    # RAS -> LAS-like flip of x: B0 unchanged
    np.testing.assert_allclose(b0_dir_from_affine(affine(np.diag([-1.0, 1.0, 1.0]))), [0, 0, 1],
                               atol=1e-15)
    # z flipped (slices stored inferior-to-superior reversed): B0 points along -k
    np.testing.assert_allclose(b0_dir_from_affine(affine(np.diag([1.0, 1.0, -1.5]))), [0, 0, -1],
                               atol=1e-15)
    # sagittal storage: voxel axis 0 is world z (scaled), axis 1 world y, axis 2 world -x
    P = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.2, 0.0, 0.0]])
    np.testing.assert_allclose(b0_dir_from_affine(affine(P)), [1, 0, 0], atol=1e-15)


def test_b0_dir_errors():
    with pytest.raises(ValueError, match="affine must be a finite 4x4"):
        b0_dir_from_affine(np.eye(3))
    bad = np.eye(4)
    bad[2, 2] = 0.0
    with pytest.raises(ValueError, match="zero column"):
        b0_dir_from_affine(bad)


# ---------------------------------------------------------------- round trips
def test_save_load_round_trip_keeps_affine_voxel_size_and_float32(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 5, 4))  # float64 in, float32 on disk
    A = affine(rot_x(20.0) @ np.diag([0.9, 0.9, 1.5]))
    path = save_nifti(tmp_path / "x.nii.gz", data, A)
    assert path.exists()
    assert nib.load(str(path)).get_data_dtype() == np.float32
    vol = load_nifti(path, name="x")
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    np.testing.assert_allclose(vol.affine, A, atol=1e-6)
    np.testing.assert_allclose(vol.voxel_size, [0.9, 0.9, 1.5], rtol=1e-6)
    np.testing.assert_allclose(vol.b0_dir, b0_dir_from_affine(A), atol=1e-6)


def test_round_trip_with_source_header_and_bool_mask(tmp_path):
    src = nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), affine(np.diag([2.0, 2.0, 3.0])))
    src.header.set_slope_inter(2.0, 1.0)  # must not be inherited by float outputs
    nib.save(src, str(tmp_path / "src.nii"))
    vol = load_nifti(tmp_path / "src.nii")
    out = np.arange(48, dtype=np.float64).reshape(4, 4, 3) / 7
    save_nifti(tmp_path / "o.nii", out, vol.affine, header=vol.header)
    back = load_nifti(tmp_path / "o.nii")
    np.testing.assert_allclose(back.data, out.astype(np.float32), rtol=1e-7)
    np.testing.assert_allclose(back.affine, vol.affine)
    mask = out > 3
    save_nifti(tmp_path / "m.nii.gz", mask, vol.affine)
    assert nib.load(str(tmp_path / "m.nii.gz")).get_data_dtype() == np.uint8
    np.testing.assert_array_equal(load_nifti(tmp_path / "m.nii.gz").data != 0, mask)


def test_load_squeezes_trailing_singletons_and_rejects_other_dims(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 1), np.float32), np.eye(4)), str(tmp_path / "s.nii"))
    assert load_nifti(tmp_path / "s.nii", ndim=3).data.shape == (3, 3, 3)
    nib.save(nib.Nifti1Image(np.ones((3, 3), np.float32), np.eye(4)), str(tmp_path / "2d.nii"))
    with pytest.raises(ValueError, match=r"field: .*2d.nii must be a 3D volume, got 2D"):
        load_nifti(tmp_path / "2d.nii", name="field", ndim=3)
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 2, 2), np.float32), np.eye(4)), str(tmp_path / "5d.nii"))
    with pytest.raises(ValueError, match="must be a 3D or 4D volume, got 5D"):
        load_nifti(tmp_path / "5d.nii", name="mag")


def test_load_missing_or_unreadable_file_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--magnitude: no such file: .*nope.nii.gz"):
        load_nifti(tmp_path / "nope.nii.gz", name="--magnitude")
    (tmp_path / "junk.nii").write_text("not a nifti")
    with pytest.raises(ValueError, match=r"--mask: cannot read .*junk.nii as NIfTI"):
        load_nifti(tmp_path / "junk.nii", name="--mask")


# ---------------------------------------------------------------- atomic writes
def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # an existing file is untouched by a failed overwrite
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, force=True) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_atomic_outputs_get_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_no_overwrite_without_force(tmp_path):
    p = tmp_path / "x.nii.gz"
    save_nifti(p, np.zeros((2, 2, 2)), np.eye(4))
    with pytest.raises(FileExistsError, match=r"x.nii.gz exists; use --force"):
        save_nifti(p, np.ones((2, 2, 2)), np.eye(4))
    assert load_nifti(p).data.max() == 0  # untouched
    save_nifti(p, np.ones((2, 2, 2)), np.eye(4), force=True)
    assert load_nifti(p).data.min() == 1
    j = tmp_path / "x.json"
    write_json(j, {"a": np.float32(1.5), "b": np.arange(2), "c": tmp_path})
    assert json.loads(j.read_text()) == {"a": 1.5, "b": [0, 1], "c": str(tmp_path)}
    with pytest.raises(FileExistsError, match="use --force"):
        write_json(j, {})
    with pytest.raises(TypeError, match="cannot write set to JSON"):
        write_json(tmp_path / "y.json", {"s": {1}})
    assert not (tmp_path / "y.json").exists()


def test_check_output_paths(tmp_path):
    (tmp_path / "exists.nii.gz").write_text("")
    with pytest.raises(FileExistsError, match="exists.nii.gz exists"):
        check_output_paths([tmp_path / "new.nii.gz", tmp_path / "exists.nii.gz"])
    check_output_paths([tmp_path / "exists.nii.gz"], force=True)
    with pytest.raises(FileNotFoundError, match="output folder .*missing does not exist"):
        check_output_paths([tmp_path / "missing" / "a.nii.gz"])


# ----------------------------------------------------------------------------- provenance
def test_sidecar_schema_checksums_and_weights(tmp_path):
    import hashlib

    from metaqsm.io.derivatives import (file_sha256, input_checksums, log_text, sidecar,
                                        weights_record)

    a = tmp_path / "a.nii.gz"
    a.write_bytes(b"abc")
    assert file_sha256(a) == hashlib.sha256(b"abc").hexdigest()
    folder = tmp_path / "dicom"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "1.dcm").write_bytes(b"x")
    first = file_sha256(folder)
    (folder / "sub" / "1.dcm").write_bytes(b"yz")  # another file version: another checksum
    assert len(first) == 64 and file_sha256(folder) != first
    inputs = {"magnitude": [str(a)], "EchoTimeSource": "argument", "dicom": str(folder)}
    assert set(input_checksums(inputs)) == {str(a), str(folder)}
    meta = sidecar(operation="invert", method="tkd", parameters={"threshold": 0.2, "pad": None},
                   voxel_size=np.array([1, 1, 2.0]), b0_dir=(0, 0, 1), inputs=inputs,
                   timings={"invert": 0.12345}, weights=weights_record("tkd"))
    assert meta["Parameters"] == {"threshold": 0.2}  # a None default is left out, never null
    assert meta["VoxelSize"] == [1.0, 1.0, 2.0] and meta["B0Direction"] == [0.0, 0.0, 1.0]
    assert meta["Timings"] == {"invert": 0.123} and meta["Warnings"] == []
    assert meta["GeneratedBy"][0]["Name"] == "metaqsm" and "Weights" not in meta
    assert None not in meta.values() and "EchoTime" not in meta
    # networks: the checkpoint and its hash (the shipped default, picked by voxel size for Mesa)
    meta_w = weights_record("meta")
    assert meta_w["File"].endswith("meta.safetensors") and meta_w["SHA256"] == file_sha256(
        meta_w["File"])
    assert weights_record("mesa", {}, (0.5, 0.5, 2.0))["File"].endswith("mesa-0.5x0.5x2.safetensors")
    assert weights_record("mesa", {}, (0.75, 0.75, 3.0))["File"].endswith(
        "mesa-0.7639x0.7639x3.safetensors")
    assert weights_record("meta", {"weights": str(a)}) == {"File": str(a),
                                                           "SHA256": file_sha256(a)}
    text = log_text(operation="run", command_line="metaqsm run -o x", timings={"mask": 1.0},
                    warnings=["bgremove: w"], outputs=[a])
    assert "command: metaqsm run -o x" in text and "  - bgremove: w" in text
    assert "total: 1.000" in text and "a.nii.gz" in text
