"""The pipeline commands: simulate -> run (NIfTI with BIDS sidecars, oblique affine, DICOM),
stage commands chained, example, and bad input that must leave no output."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from metaqsm.cli import main
from metaqsm.io import b0_dir_from_affine
from metaqsm.metrics import nrmse_demeaned

VSZ = (1.5, 1.5, 2.0)


def _oblique_affine():
    a = np.deg2rad(20.0)
    A = np.eye(4)
    A[:3, :3] = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) @ np.diag(VSZ)
    A[:3, 3] = (-30.0, -30.0, -32.0)
    return A


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    """A simulated acquisition on disk, through `metaqsm simulate`, with an oblique affine."""
    from metaqsm.simulate.phantoms import brain_phantom

    root = tmp_path_factory.mktemp("cli")
    ph = brain_phantom((40, 40, 32), voxel_size=VSZ, rng=0)
    affine = _oblique_affine()
    nib.save(nib.Nifti1Image(ph.chi, affine), str(root / "chi.nii.gz"))
    nib.save(nib.Nifti1Image(ph.mask.astype(np.uint8), affine), str(root / "mask.nii.gz"))
    rc = main(["simulate", str(root / "chi.nii.gz"), "--mask", str(root / "mask.nii.gz"),
               "-o", str(root / "sim"), "--subject", "02", "--snr", "200"])
    assert rc == 0
    return root


def _sim(root, key):
    names = {"mag": "sub-02_part-mag_MEGRE", "phase": "sub-02_part-phase_MEGRE",
             "chi": "sub-02_desc-truth_Chimap", "local": "sub-02_desc-truth_localfield",
             "mask": "sub-02_desc-truth_mask"}
    return root / "sim" / f"{names[key]}.nii.gz"


def test_simulate_writes_bids_like_files(sim_dir):
    side = json.loads((sim_dir / "sim" / "sub-02_part-phase_MEGRE.json").read_text())
    assert side["EchoTime"] == pytest.approx([0.0104, 0.0174, 0.0244, 0.0314])
    assert side["MagneticFieldStrength"] == 3.0
    assert side["Units"] == "rad"
    img = nib.load(str(_sim(sim_dir, "phase")))
    assert img.shape == (40, 40, 32, 4)
    np.testing.assert_allclose(img.affine, _oblique_affine(), atol=1e-5)
    ph = np.asarray(img.dataobj)
    assert ph.min() >= -np.pi - 1e-6 and ph.max() <= np.pi + 1e-6
    np.testing.assert_allclose(side["B0Direction"], b0_dir_from_affine(_oblique_affine()), atol=1e-6)
    for key in ("chi", "local", "mask", "mag"):
        assert _sim(sim_dir, key).exists()


def test_run_from_sidecars_with_oblique_affine(sim_dir, capsys):
    out = sim_dir / "out"
    rc = main(["run", "--magnitude", str(_sim(sim_dir, "mag")), "--phase", str(_sim(sim_dir, "phase")),
               "--mask", str(_sim(sim_dir, "mask")), "-o", str(out), "--method", "tkd", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "sub-02_Chimap.nii.gz" in text and "sub-02_Chimap.png" in text  # subject from the input name
    side = json.loads((out / "sub-02_Chimap.json").read_text())
    assert side["Inputs"]["EchoTimeSource"] == "JSON sidecar"
    assert side["Inputs"]["MagneticFieldStrengthSource"] == "JSON sidecar"
    np.testing.assert_allclose(side["B0Direction"], b0_dir_from_affine(_oblique_affine()), atol=1e-6)
    chi = nib.load(str(out / "sub-02_Chimap.nii.gz"))
    np.testing.assert_allclose(chi.affine, _oblique_affine(), atol=1e-5)
    local = np.asarray(nib.load(str(out / "sub-02_localfield.nii.gz")).dataobj)
    er = np.asarray(nib.load(str(out / "sub-02_desc-eroded_mask.nii.gz")).dataobj) > 0
    truth = np.asarray(nib.load(str(_sim(sim_dir, "local"))).dataobj)
    err = nrmse_demeaned(local, truth, er)
    print(f"\nCLI run, oblique affine: local field NRMSE {err:.1f} %")
    assert err < 60.0
    # again: refused without --force, accepted with it
    args = ["run", "--magnitude", str(_sim(sim_dir, "mag")), "--phase", str(_sim(sim_dir, "phase")),
            "--mask", str(_sim(sim_dir, "mask")), "-o", str(out), "--method", "tkd", "--quiet",
            "--no-figure"]
    assert main(args) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0


def _no_files(path):
    return not path.exists() or not any(p.is_file() for p in path.rglob("*"))


def test_bad_input_leaves_no_output(sim_dir, tmp_path, capsys):
    mag, phase = str(_sim(sim_dir, "mag")), str(_sim(sim_dir, "phase"))
    img = nib.load(phase)
    data = np.asarray(img.dataobj)
    # phase in scanner units, no sidecar
    scaled = tmp_path / "phase_scanner.nii.gz"
    nib.save(nib.Nifti1Image(np.round(data * 4096 / np.pi).astype(np.float32), img.affine), str(scaled))
    bare_mag = tmp_path / "mag_no_sidecar.nii.gz"
    nib.save(nib.load(mag), str(bare_mag))
    # magnitude of another shape
    small = tmp_path / "small_mag.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 16, 4), np.float32), img.affine), str(small))
    tes = ["--echo-times", "0.0104", "0.0174", "0.0244", "0.0314"]
    cases = [
        (["--magnitude", str(small), "--phase", phase], "magnitude and phase must have the same shape"),
        (["--magnitude", mag, "--phase", phase, "--echo-times", "0.01", "0.02", "0.03"],
         "--echo-times has 3 values but the phase has 4 echoes"),
        (["--magnitude", mag, "--phase", str(scaled), "--field-strength", "3"] + tes,
         "radians.*Siemens scanner units"),
        (["--magnitude", str(bare_mag), "--phase", str(scaled)] + tes, "field strength is missing"),
        (["--magnitude", mag, "--phase", phase, "--field-strength", "3", "--echo-times", "10.4",
          "17.4", "24.4", "31.4"], "milliseconds"),
        (["--magnitude", mag, "--phase", phase, "--bgremove", "nope"], "--bgremove must be one of"),
        (["--magnitude", mag, "--phase", phase, "--bgremove-option", "radius"], "KEY=VALUE"),
        # options are checked against the method table before any work (names and types)
        (["--magnitude", mag, "--phase", phase, "--bgremove-option", "radus=3"],
         "--bgremove-option: 'radus' is not an option of method 'resharp' \\(it takes: radius"),
        (["--magnitude", mag, "--phase", phase, "--method", "tkd", "--method-option",
          "threshold=abc"], "--method-option: threshold must be a number, got 'abc'"),
        (["--magnitude", mag, "--phase", phase, "--method", "nope"], "--method must be one of"),
        (["--magnitude", mag], "give --magnitude and --phase"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        rc = main(["run", *args, "-o", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert "metaqsm run: error:" in err
        import re

        assert re.search(message, err), (message, err)
        assert _no_files(out), list(out.rglob("*"))
    # the same scanner-unit phase is accepted with --phase-units auto
    out = tmp_path / "auto"
    rc = main(["run", "--magnitude", mag, "--phase", str(scaled), "--field-strength", "3", *tes,
               "--phase-units", "auto", "--mask", str(_sim(sim_dir, "mask")), "--method", "tkd",
               "-o", str(out), "--quiet", "--no-figure"])
    assert rc == 0
    side = json.loads((out / "sub-01_Chimap.json").read_text())
    assert side["Inputs"]["PhaseScale"] == pytest.approx(np.pi / np.abs(np.round(data * 4096 / np.pi)).max())


def test_stage_commands_chain_like_run(sim_dir, tmp_path):
    mag, phase, mask = (str(_sim(sim_dir, k)) for k in ("mag", "phase", "mask"))
    t = tmp_path
    assert main(["mask", mag, "-o", str(t / "auto_mask.nii.gz")]) == 0
    auto = np.asarray(nib.load(str(t / "auto_mask.nii.gz")).dataobj) > 0
    truth = np.asarray(nib.load(mask).dataobj) > 0
    assert 2 * (auto & truth).sum() / (auto.sum() + truth.sum()) > 0.85
    assert main(["fit-echoes", "--magnitude", mag, "--phase", phase, "--mask", mask,
                 "-o", str(t / "field.nii.gz"), "--noise-output", str(t / "noise.nii.gz")]) == 0
    assert json.loads((t / "field.json").read_text())["Units"] == "ppm"
    # the default radius, as run's (6 mm, adapted to this small phantom's mask)
    assert main(["bgremove", str(t / "field.nii.gz"), "--mask", mask, "-o", str(t / "local.nii.gz"),
                 "--mask-output", str(t / "eroded.nii.gz")]) == 0
    assert main(["invert", str(t / "local.nii.gz"), "--mask", str(t / "eroded.nii.gz"),
                 "--method", "tkd", "-o", str(t / "chi.nii.gz")]) == 0
    # the chain gives what `run` gives with the same mask
    local_chain = np.asarray(nib.load(str(t / "local.nii.gz")).dataobj)
    local_run = np.asarray(nib.load(str(sim_dir / "out" / "sub-02_localfield.nii.gz")).dataobj)
    np.testing.assert_allclose(local_chain, local_run, atol=1e-5)
    chi_chain = np.asarray(nib.load(str(t / "chi.nii.gz")).dataobj)
    chi_run = np.asarray(nib.load(str(sim_dir / "out" / "sub-02_Chimap.nii.gz")).dataobj)
    np.testing.assert_allclose(chi_chain, chi_run, atol=1e-5)
    # unwrap: the first echo unwrapped differs from the wrapped one by multiples of 2 pi
    assert main(["unwrap", phase, "--magnitude", mag, "--mask", mask, "-o", str(t / "uw.nii.gz")]) == 0
    uw = np.asarray(nib.load(str(t / "uw.nii.gz")).dataobj)
    wrapped = np.asarray(nib.load(phase).dataobj)
    k = (uw - wrapped)[truth] / (2 * np.pi)
    assert np.max(np.abs(k - np.round(k))) < 1e-3
    # an existing stage output is refused before any work
    assert main(["mask", mag, "-o", str(t / "auto_mask.nii.gz")]) == 2


def test_run_from_dicom(tmp_path, capsys):
    """A GE-style real/imaginary DICOM series of a simulated acquisition -> `metaqsm run`."""
    from test_dicom import _expected_affine, _reorient, _write

    from metaqsm.simulate import simulate_acquisition
    from metaqsm.simulate.phantoms import brain_phantom

    ph = brain_phantom((32, 32, 24), voxel_size=(2.0, 2.0, 2.0), rng=0)
    acq = simulate_acquisition(ph.chi, ph.mask, voxel_size=(2.0, 2.0, 2.0), snr=200)
    # GE stores the conjugate (its phase has the opposite handedness)
    z = acq.magnitude * np.exp(-1j * acq.phase) * 3000.0

    def write_series(folder, uid, number):
        folder.mkdir(parents=True, exist_ok=True)
        for e, te in enumerate(acq.echo_times):
            for k in range(z.shape[2]):
                for part, value in ((2, z.real), (3, z.imag)):
                    _write(folder / f"s{number}_{e}_{k}_{part}.dcm", np.round(value[:, :, k, e]).T,
                           series_uid=uid, series_number=number, manufacturer="GE MEDICAL SYSTEMS",
                           image_type=["ORIGINAL", "PRIMARY", "OTHER"], te_ms=te * 1000, echo=e + 1,
                           k=k, frame_uid="1.9", oblique=False, signed=True, private=part,
                           description="SWAN")

    # _write's geometry has PixelSpacing (0.8, 0.9) and 2 mm slices; the pipeline reads them
    dcm = tmp_path / "dicom"
    write_series(dcm, "1.2.840.1", 3)
    out = tmp_path / "out"
    assert main(["run", "--dicom", str(dcm), "--method", "tkd", "-o", str(out), "--quiet",
                 "--no-figure", "--bgremove-option", "radius=3"]) == 0
    side = json.loads((out / "sub-01_Chimap.json").read_text())
    assert side["MagneticFieldStrength"] == 3.0
    assert side["EchoTime"] == pytest.approx(list(acq.echo_times), abs=1e-6)
    assert side["VoxelSize"] == pytest.approx([0.9, 0.8, 2.0])
    img = nib.load(str(out / "sub-01_fieldmap.nii.gz"))
    field = np.asarray(img.dataobj)
    m = np.asarray(nib.load(str(out / "sub-01_mask.nii.gz")).dataobj) > 0
    # dcm2niix orders voxels its own way (rows flipped): compare in the output's order
    truth = _reorient(acq.total_field, _expected_affine(oblique=False), img.affine)
    brain = _reorient(ph.mask, _expected_affine(oblique=False), img.affine)
    d = (field - truth)[m & brain]
    d -= np.median(d)
    # the fit recovers the total field (up to a constant) in almost every brain voxel
    print(f"\nDICOM run: {np.mean(np.abs(d) < 0.01) * 100:.1f} % of brain voxels within 0.01 ppm")
    assert np.mean(np.abs(d) < 0.01) > 0.97
    # a second series in the folder: a clear error and no output
    write_series(dcm, "1.2.840.2", 4)
    out2 = tmp_path / "out2"
    rc = main(["run", "--dicom", str(dcm), "-o", str(out2), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds 2 acquisitions" in err and "--series" in err
    assert _no_files(out2)
    assert main(["run", "--dicom", str(dcm), "--series", "4", "--method", "tkd", "-o", str(out2),
                 "--quiet", "--no-figure", "--bgremove-option", "radius=3"]) == 0


def test_example_command(tmp_path, capsys):
    out = tmp_path / "example"
    rc = main(["example", "-o", str(out), "--shape", "48", "48", "32", "--voxel-size", "2", "2", "3",
               "--method", "tkd", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "sub-01_Chimap.nii.gz" in text and "sub-01_Chimap.png" in text and "NRMSE" in text
    assert (out / "sub-01_Chimap.png").stat().st_size > 10_000
    assert (out / "sim" / "sub-01_part-phase_MEGRE.nii.gz").exists()
    assert main(["example", "-o", str(out), "--shape", "48", "48", "32", "--quiet"]) == 2


def test_simulated_b0_direction_reaches_run(sim_dir, tmp_path, capsys):
    """`simulate --b0-dir` off the affine's z: the sidecar carries it and `run` uses it."""
    b0 = (0.0, 0.34, 0.94)
    assert main(["simulate", str(sim_dir / "chi.nii.gz"), "--mask", str(sim_dir / "mask.nii.gz"),
                 "-o", str(tmp_path / "s"), "--b0-dir", *map(str, b0), "--snr", "0",
                 "--output-voxel-size", "3", "3", "4", "--reduce", "block"]) == 0
    assert "B0Direction" in capsys.readouterr().out
    mag = tmp_path / "s" / "sub-01_part-mag_MEGRE.nii.gz"
    assert nib.load(str(mag)).header.get_zooms()[:3] == (3.0, 3.0, 4.0)
    phase = tmp_path / "s" / "sub-01_part-phase_MEGRE.nii.gz"
    assert main(["run", "--magnitude", str(mag), "--phase", str(phase), "--method", "tkd", "--bgremove-option", "radius=4", "-o", str(tmp_path / "o"),
                 "--quiet", "--no-figure"]) == 0
    side = json.loads((tmp_path / "o" / "sub-01_Chimap.json").read_text())
    assert side["Inputs"]["B0DirectionSource"] == "JSON sidecar"
    np.testing.assert_allclose(side["B0Direction"], np.asarray(b0) / np.linalg.norm(b0), atol=1e-6)


def test_run_does_not_import_torch(sim_dir, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from metaqsm.cli import main\n"
        f"rc = main(['run', '--magnitude', {str(_sim(sim_dir, 'mag'))!r}, '--phase', "
        f"{str(_sim(sim_dir, 'phase'))!r}, '-o', {str(tmp_path / 'o')!r}, '--method', 'tkd', "
        "'--quiet', '--no-figure'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


# ----------------------------------------------------------------------------- one sidecar schema
_OLD_KEYS = {"B0Dir", "MetaqsmVersion", "ElapsedSeconds"}
_COMMON_KEYS = {"Operation", "CommandLine", "GeneratedBy", "VoxelSize", "B0Direction", "Inputs",
                "Timings", "Warnings"}


def _no_nulls(obj, where):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert v is not None, f"{where}: {k} is null"
            _no_nulls(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            _no_nulls(v, where)


def test_every_command_writes_one_sidecar_schema(sim_dir, tmp_path):
    """simulate, run, the stage commands, forward and invert: the same keys (BIDS GeneratedBy,
    B0Direction, checksummed inputs, timings, warnings), no nulls, no network weights for
    classical methods, and a log beside folder outputs."""
    from metaqsm.io.derivatives import file_sha256

    mag, phase, mask = (str(_sim(sim_dir, k)) for k in ("mag", "phase", "mask"))
    t = tmp_path
    assert main(["fit-echoes", "--magnitude", mag, "--phase", phase, "--mask", mask,
                 "-o", str(t / "field.nii.gz")]) == 0
    assert main(["bgremove", str(t / "field.nii.gz"), "--mask", mask, "-o", str(t / "local.nii.gz"),
                 "--mask-output", str(t / "er.nii.gz")]) == 0
    assert main(["invert", str(t / "local.nii.gz"), "--mask", str(t / "er.nii.gz"), "--method",
                 "tkd", "-o", str(t / "chi.nii.gz")]) == 0
    assert main(["forward", str(t / "chi.nii.gz"), "-o", str(t / "fwd.nii.gz")]) == 0
    assert main(["mask", mag, "-o", str(t / "m.nii.gz")]) == 0
    assert main(["unwrap", phase, "-o", str(t / "uw.nii.gz")]) == 0
    sidecars = {p.stem: p for p in t.glob("*.json")}
    sidecars["run"] = sim_dir / "out" / "sub-02_Chimap.json"
    sidecars["simulate"] = sim_dir / "sim" / "sub-02_part-phase_MEGRE.json"
    for name, path in sidecars.items():
        side = json.loads(path.read_text())
        assert _COMMON_KEYS <= set(side), (name, _COMMON_KEYS - set(side))
        assert not _OLD_KEYS & set(side), name
        assert side["GeneratedBy"][0]["Name"] == "metaqsm", name
        assert side["CommandLine"].startswith(f"metaqsm {side['Operation']} "), name
        assert "Weights" not in side, name
        _no_nulls(side, name)
        assert side["InputChecksums"], name
        for p, digest in side["InputChecksums"].items():
            assert digest == file_sha256(p), (name, p)
        assert ("Stages" in side) == (side["Operation"] == "run"), name
        assert ("Method" in side) == (side["Operation"] != "run"), name
    bg = json.loads(sidecars["local"].read_text())
    assert bg["Method"] == "resharp" and bg["Operation"] == "bgremove"
    assert bg["Warnings"] and "reduced to" in bg["Warnings"][0]  # a small phantom
    # folder outputs have a log beside them
    for log in (sim_dir / "out" / "sub-02_log.txt", sim_dir / "sim" / "sub-02_log.txt"):
        text = log.read_text()
        assert text.startswith("metaqsm ") and "command: metaqsm " in text and "timings" in text


def test_one_slice_siemens_series(shared_data, tmp_path, capsys):
    """The real one-slice Siemens GRE_QSM (3.5 mm): RESHARP is refused in words that say why
    and what works, before the outputs exist; with PDF the run ends with the slab warning in the
    sidecars and the log."""
    dcm = shared_data / "real-dicom" / "siemens-megre"
    out = tmp_path / "o"
    assert main(["run", "--dicom", str(dcm), "-o", str(out), "--quiet", "--no-figure"]) == 2
    err = capsys.readouterr().err
    assert "warning: the brain mask is only 1 slice (3.5 mm) thick along axis 2" in err
    assert ("error: resharp: the mask eroded by the smallest default sphere (radius 6 mm) is "
            "empty" in err and "use a method without erosion (pdf)" in err), err
    assert _no_files(out)
    assert main(["run", "--dicom", str(dcm), "-o", str(out), "--quiet", "--no-figure",
                 "--bgremove", "pdf", "--method", "tkd"]) == 0
    side = json.loads((out / "sub-01_Chimap.json").read_text())
    assert side["Inputs"]["dicom"] == str(dcm) and "series" not in side["Inputs"]
    assert len(side["InputChecksums"][str(dcm)]) == 64
    assert side["Warnings"][0].startswith("mask: the brain mask is only 1 slice")
    assert "1 slice" in (out / "sub-01_log.txt").read_text()


def test_simulate_and_run_show_progress_on_a_terminal(sim_dir, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True, raising=False)
    args = ["simulate", str(sim_dir / "chi.nii.gz"), "--mask", str(sim_dir / "mask.nii.gz")]
    assert main([*args, "-o", str(tmp_path / "s")]) == 0
    assert "simulate" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "q"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    run = ["run", "--magnitude", str(_sim(sim_dir, "mag")), "--phase", str(_sim(sim_dir, "phase")),
           "--mask", str(_sim(sim_dir, "mask")), "--method", "tkd", "--no-figure"]
    assert main([*run, "-o", str(tmp_path / "r")]) == 0
    assert "metaqsm:" in capsys.readouterr().err  # the stage bar
    assert main([*run, "-o", str(tmp_path / "r2"), "--quiet"]) == 0
    assert "metaqsm:" not in capsys.readouterr().err
