"""The core commands through ``metaqsm.cli.main``: results equal the library calls, sidecars,
path checks before any work, and one-line errors (exit code 2) that leave no output behind."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from metaqsm.cli import main
from metaqsm.cli.cmd_core import METRIC_KEYS, sidecar_path
from metaqsm.methods import DEFAULT_INVERSION as DEFAULT_METHOD
from metaqsm.inversion import METHODS, get_method
from metaqsm.io import b0_dir_from_affine, load_nifti
from metaqsm.io.derivatives import file_sha256
from metaqsm.kernels import forward_field
from metaqsm.metrics import compute_metrics
from metaqsm.simulate.phantoms import brain_phantom

VSZ = (1.0, 1.0, 1.5)
SHAPE = (32, 32, 24)


def save(path, data, aff=None):
    aff = np.diag([*VSZ, 1.0]) if aff is None else aff
    nib.save(nib.Nifti1Image(np.asarray(data), aff), str(path))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """chi, mask, labels and the forward field of a small phantom, on disk."""
    d = tmp_path_factory.mktemp("cli")
    ph = brain_phantom(SHAPE, voxel_size=VSZ, rng=0)
    chi = ph.chi.astype(np.float32)
    field = forward_field(chi, voxel_size=VSZ, b0_dir=(0, 0, 1))
    return {
        "dir": d,
        "chi": chi,
        "mask": ph.mask,
        "labels": ph.labels,
        "field": field,
        "chi_path": save(d / "chi.nii.gz", chi),
        "mask_path": save(d / "mask.nii.gz", ph.mask.astype(np.uint8)),
        "labels_path": save(d / "labels.nii.gz", ph.labels.astype(np.int16)),
        "field_path": save(d / "field.nii.gz", field),
    }


def run_error(capsys, argv):
    """Run a command expected to fail; return its one-line error message."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "\n" not in err, err
    assert err.startswith(f"metaqsm {argv[0]}: error: "), err
    return err


# ---------------------------------------------------------------- forward
def test_forward_matches_library_and_writes_sidecar(data, tmp_path, capsys):
    out = tmp_path / "f.nii.gz"
    assert main(["forward", data["chi_path"], "-o", str(out)]) == 0
    assert "metaqsm forward: 32x32x24 voxels in" in capsys.readouterr().out
    vol = load_nifti(out)
    assert nib.load(str(out)).get_data_dtype() == np.float32
    np.testing.assert_allclose(vol.affine, np.diag([*VSZ, 1.0]))
    np.testing.assert_allclose(vol.data, data["field"], atol=1e-6)
    side = json.loads((tmp_path / "f.json").read_text())
    assert side["Operation"] == "forward"
    assert side["Parameters"]["kernel"] == "kspace" and side["Parameters"]["pad"] == "auto"
    assert side["VoxelSize"] == list(VSZ) and side["B0Direction"] == [0.0, 0.0, 1.0]
    assert side["GeneratedBy"][0]["Name"] == "metaqsm" and side["GeneratedBy"][0]["Version"]
    # one schema for every command (io.derivatives.sidecar): no null values, checksummed inputs
    assert side["InputChecksums"] == {data["chi_path"]: file_sha256(data["chi_path"])}
    assert side["CommandLine"].startswith("metaqsm forward ")
    assert set(side["Timings"]) == {"forward"} and side["Warnings"] == []
    assert "Weights" not in side and None not in side.values()


def test_forward_overrides_and_oblique_affine(data, tmp_path, capsys):
    out = tmp_path / "g.nii.gz"
    argv = ["forward", data["chi_path"], "-o", str(out), "--b0-dir", "0", "1", "1",
            "--voxel-size", "1", "1", "1", "--pad", "8", "--kernel", "ispace"]
    assert main(argv) == 0
    expected = forward_field(data["chi"], voxel_size=(1, 1, 1), b0_dir=(0, 1, 1), pad=8,
                             method="ispace")
    np.testing.assert_allclose(load_nifti(out).data, expected, atol=1e-6)
    # without --b0-dir the direction comes from the (oblique) affine
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    A = np.eye(4)
    A[:3, :3] = np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.diag(VSZ)
    src = save(tmp_path / "oblique.nii.gz", data["chi"], A)
    assert main(["forward", src, "-o", str(tmp_path / "h.nii")]) == 0
    b0 = b0_dir_from_affine(A)
    np.testing.assert_allclose(b0, [0, s, c], atol=1e-12)
    expected = forward_field(data["chi"], voxel_size=VSZ, b0_dir=b0)
    vol = load_nifti(tmp_path / "h.nii")
    np.testing.assert_allclose(vol.data, expected, atol=1e-6)
    np.testing.assert_allclose(vol.affine, A, atol=1e-6)
    np.testing.assert_allclose(json.loads((tmp_path / "h.json").read_text())["B0Direction"], b0,
                               atol=1e-12)


# ---------------------------------------------------------------- invert
def test_invert_tkd_matches_library_with_sidecar(data, tmp_path, capsys):
    out = tmp_path / "chi_tkd.nii.gz"
    argv = ["invert", data["field_path"], "--mask", data["mask_path"], "--method", "tkd",
            "--threshold", "0.15", "-o", str(out)]
    assert main(argv) == 0
    msg = capsys.readouterr().out
    assert "metaqsm invert: tkd on 32x32x24 voxels in" in msg and " s -> " in msg
    expected = get_method("tkd")(data["field"], data["mask"], voxel_size=VSZ, b0_dir=(0, 0, 1),
                                 threshold=0.15)
    got = load_nifti(out).data
    np.testing.assert_allclose(got, expected, atol=1e-6)
    side = json.loads((tmp_path / "chi_tkd.json").read_text())
    assert side["Method"] == "tkd"
    # the value set on the command line, and the method's defaults for the rest
    params = inspect.signature(get_method("tkd")).parameters
    assert side["Parameters"]["threshold"] == 0.15
    assert side["Parameters"]["pad"] == params["pad"].default
    assert set(side["Parameters"]) <= set(params) - {"field", "mask", "voxel_size", "b0_dir"}
    assert side["Inputs"] == {"field": data["field_path"], "mask": data["mask_path"]}
    assert side["VoxelSize"] == list(VSZ) and side["B0Direction"] == [0.0, 0.0, 1.0]
    assert isinstance(side["Timings"]["invert"], float) and side["GeneratedBy"][0]["Version"]
    assert "Weights" not in side  # a classical method has no weights file
    # a sanity bound: TKD from a noise-free field is a recognisable map
    assert compute_metrics(got, data["chi"], data["mask"])["correlation"] > 0.8


def test_invert_default_method(data, tmp_path, capsys):
    assert DEFAULT_METHOD in METHODS
    out = tmp_path / "chi.nii.gz"
    # the default is meta-tv with torch, TV without
    option, key, value = (["--prior-weight", "2"], "prior_weight", 2.0) \
        if DEFAULT_METHOD == "meta-tv" else (["--max-iter", "5"], "max_iter", 5)
    assert main(["invert", data["field_path"], "--mask", data["mask_path"], "-o", str(out),
                 *option]) == 0
    side = json.loads(sidecar_path(out).read_text())
    assert side["Method"] == DEFAULT_METHOD
    assert side["Parameters"][key] == value


def test_invert_refuses_options_the_method_does_not_take(data, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    base = ["invert", data["field_path"], "--mask", data["mask_path"], "--method", "tkd",
            "-o", str(out)]
    err = run_error(capsys, base + ["--lambda", "3"])
    assert "--lambda is not an option of method 'tkd' (it takes: --threshold" in err
    err = run_error(capsys, base + ["--magnitude", data["chi_path"]])
    assert "--magnitude is not an option of method 'tkd'" in err
    assert not out.exists() and not sidecar_path(out).exists()


def test_method_failure_leaves_no_output(data, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    err = run_error(capsys, ["invert", data["field_path"], "--mask", data["mask_path"],
                             "--method", "tikhonov", "--regulariser", "bogus", "-o", str(out)])
    assert "bogus" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bad input
def _invert(data, out, *extra, field=None, mask=None):
    return ["invert", field or data["field_path"], "--mask", mask or data["mask_path"],
            "--method", "tkd", "-o", str(out), *extra]


def test_bad_input_shapes_mask_nan_dims(data, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    small = save(tmp_path / "small_mask.nii.gz", np.ones((8, 8, 8), np.uint8))
    err = run_error(capsys, _invert(data, out, mask=small))
    assert "--mask" in err and "has shape (8, 8, 8), but the field" in err

    empty = save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8))
    assert "--mask is empty" in run_error(capsys, _invert(data, out, mask=empty))

    f = data["field"].copy()
    f[3, 4, 5] = np.nan
    f[0, 0, 0] = np.inf
    nan = save(tmp_path / "nan.nii.gz", f)
    assert "field contains 2 NaN or Inf values" in run_error(capsys, _invert(data, out, field=nan))

    flat = save(tmp_path / "flat.nii.gz", np.zeros((16, 16), np.float32))
    err = run_error(capsys, _invert(data, out, field=flat))
    assert "field: " in err and "must be a 3D volume, got 2D" in err

    five = save(tmp_path / "five.nii.gz", np.zeros((*SHAPE, 2, 2), np.float32))
    assert "must be a 3D volume, got 5D" in run_error(capsys, _invert(data, out, field=five))
    assert not out.exists() and not sidecar_path(out).exists()


def test_bad_geometry_and_method(data, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    err = run_error(capsys, _invert(data, out, "--voxel-size", "1", "0", "1"))
    assert "--voxel-size must be positive and finite (mm), got (" in err
    err = run_error(capsys, _invert(data, out, "--voxel-size", "1", "-1", "1"))
    assert "--voxel-size must be positive" in err
    err = run_error(capsys, _invert(data, out, "--b0-dir", "0", "0", "0"))
    assert "--b0-dir must be a non-zero finite vector" in err
    err = run_error(capsys, ["invert", data["field_path"], "--mask", data["mask_path"],
                             "--method", "nope", "-o", str(out)])
    assert "--method must be one of tkd, tsvd, tikhonov, ilsqr" in err and "got 'nope'" in err
    err = run_error(capsys, _invert(data, out, "--pad", "-3"))
    assert "--pad must be 'auto' or a non-negative integer" in err
    err = run_error(capsys, _invert(data, out, "--field-strength", "0"))
    assert "--field-strength must be positive" in err
    # forward checks the same geometry
    err = run_error(capsys, ["forward", data["chi_path"], "-o", str(out), "--voxel-size",
                             "0", "1", "1"])
    assert "--voxel-size must be positive" in err
    err = run_error(capsys, ["forward", data["chi_path"], "-o", str(out), "--b0-dir", "0", "0", "0"])
    assert "--b0-dir must be a non-zero finite vector" in err
    err = run_error(capsys, ["forward", data["chi_path"], "-o", str(out), "--kernel", "fast"])
    assert "--kernel must be kspace or ispace" in err
    assert list(tmp_path.iterdir()) == []


def test_path_checks_before_any_work(data, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    out.write_text("keep me")
    err = run_error(capsys, _invert(data, out))
    assert "out.nii.gz exists; use --force" in err
    assert out.read_text() == "keep me"
    # the sidecar is checked too
    out2 = tmp_path / "two.nii.gz"
    sidecar_path(out2).write_text("{}")
    assert "two.json exists" in run_error(capsys, _invert(data, out2))
    assert not out2.exists()
    err = run_error(capsys, _invert(data, tmp_path / "missing" / "c.nii.gz"))
    assert "output folder" in err and "does not exist" in err
    err = run_error(capsys, _invert(data, out, mask=str(tmp_path / "nomask.nii.gz")))
    assert "--mask: no such file" in err
    err = run_error(capsys, _invert(data, tmp_path / "c.mat"))
    assert "-o must end in .nii or .nii.gz" in err
    err = run_error(capsys, ["forward", str(tmp_path / "nochi.nii"), "-o", str(tmp_path / "f.nii")])
    assert "chi: no such file" in err
    # --force replaces the output
    assert main(_invert(data, out, "--force")) == 0
    assert load_nifti(out).data.shape == SHAPE


# ---------------------------------------------------------------- metrics
def test_metrics_prints_json(data, tmp_path, capsys):
    rng = np.random.default_rng(3)
    x = data["chi"] + 0.01 * rng.normal(size=SHAPE).astype(np.float32)
    xp = save(tmp_path / "x.nii.gz", x)
    assert main(["metrics", xp, "--reference", data["chi_path"], "--mask", data["mask_path"]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == list(METRIC_KEYS)
    expected = compute_metrics(x, data["chi"], data["mask"])
    for k in METRIC_KEYS:
        assert out[k] == pytest.approx(expected[k], rel=1e-6)
    # identical maps, labels and a file copy
    jp = tmp_path / "m.json"
    assert main(["metrics", data["chi_path"], "--reference", data["chi_path"], "--mask",
                 data["mask_path"], "--labels", data["labels_path"], "-o", str(jp)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rmse"] == 0.0 and out["ssim"] == pytest.approx(1.0) and out["hfen"] == 0.0
    labs = np.unique(data["labels"][data["mask"]])
    assert set(out["regions"]) == {str(v) for v in labs if v != 0}
    assert all(v == 0.0 for v in out["regions"].values())
    assert json.loads(jp.read_text()) == out


def test_metrics_errors(data, tmp_path, capsys):
    small = save(tmp_path / "small.nii.gz", np.ones((8, 8, 8), np.float32))
    err = run_error(capsys, ["metrics", data["chi_path"], "--reference", small, "--mask",
                             data["mask_path"]])
    assert "--reference" in err and "has shape (8, 8, 8), but chi" in err
    empty = save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8))
    err = run_error(capsys, ["metrics", data["chi_path"], "--reference", data["chi_path"],
                             "--mask", empty])
    assert "--mask is empty" in err
    err = run_error(capsys, ["metrics", data["chi_path"], "--reference", data["chi_path"],
                             "--mask", data["mask_path"], "--labels", str(tmp_path / "no.nii")])
    assert "--labels: no such file" in err


def test_classical_commands_work_without_torch(data, tmp_path):
    out = tmp_path / "t.nii.gz"
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from metaqsm.cli import main\n"
        f"rc = main(['invert', {data['field_path']!r}, '--mask', {data['mask_path']!r},"
        f" '--method', 'tkd', '-o', {str(out)!r}])\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "sys.exit(rc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.exists()


def test_unreadable_inputs_and_outputs_are_one_line_errors(data, tmp_path, capsys):
    """issue 17: a truncated .nii.gz and an output folder that cannot be written."""
    import os

    whole = Path(data["field_path"]).read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    err = run_error(capsys, _invert(data, tmp_path / "o.nii.gz", field=str(cut)))
    assert "cannot read" in err and "cut.nii.gz" in err and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists()
    if os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder: the permission check cannot fail")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        err = run_error(capsys, _invert(data, ro / "c.nii.gz"))
        assert "permission denied" in err and "not writable" in err
    finally:
        ro.chmod(0o700)


def test_progress_on_a_terminal_unless_quiet(data, tmp_path, capsys, monkeypatch):
    """Progress bars go to stderr, only when it is a terminal, and never with --quiet."""
    assert main(["forward", data["chi_path"], "-o", str(tmp_path / "a.nii.gz")]) == 0
    assert "metaqsm forward" not in capsys.readouterr().err  # not a terminal
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True, raising=False)
    assert main(["forward", data["chi_path"], "-o", str(tmp_path / "b.nii.gz")]) == 0
    assert "metaqsm forward" in capsys.readouterr().err
    assert main(["forward", data["chi_path"], "-o", str(tmp_path / "c.nii.gz"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    # an iterative inversion shows its iterations
    argv = ["invert", data["field_path"], "--mask", data["mask_path"], "--method", "tv",
            "--max-iter", "3"]
    assert main([*argv, "-o", str(tmp_path / "tv.nii.gz")]) == 0
    assert "tv" in capsys.readouterr().err
    assert main([*argv, "-o", str(tmp_path / "tv2.nii.gz"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
