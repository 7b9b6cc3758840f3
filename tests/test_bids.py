"""The BIDS App: a simulated study (3 subjects x 2 sessions) found with pybids, processed in
parallel (2 worker processes; a Dask cluster for --dask-scheduler), one subject broken on
purpose; derivatives checked by name, by content and by the BIDS validator; reruns, the group
table, errors before any work."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

from metaqsm.bids import find_acquisitions, run_group, run_participants, simulate_dataset
from metaqsm.cli import main
from metaqsm.methods import DEFAULT_INVERSION

SHAPE = (48, 48, 40)
VSZ = (3.0, 3.0, 3.0)
TES = (0.004, 0.012, 0.020)
SMALL = {"shape": SHAPE, "voxel_size": VSZ, "echo_times": TES}
BROKEN = "sub-03/ses-2/anat/sub-03_ses-2_echo-2_part-phase_MEGRE.nii.gz"


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _validator_errors(path):
    """Errors of the BIDS validator (bids-validator-deno) on ``path``; skips without it."""
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        pytest.skip("the BIDS validator is absent (pip install bids-validator-deno)")
    proc = subprocess.run([exe, str(path), "--format", "json"], capture_output=True, text=True,
                          timeout=300)
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
    except (json.JSONDecodeError, KeyError):
        pytest.skip(f"the BIDS validator gave no JSON report: {proc.stderr.strip()[:200]}")
    return [(i["code"], i.get("location"), i.get("subCode")) for i in issues
            if i["severity"] == "error"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 3-subject, 2-session study without derivatives/, with one phase file broken, run with
    two jobs (worker processes)."""
    root = tmp_path_factory.mktemp("bids") / "study"
    simulate_dataset(root, subjects=3, sessions=2, rng=3, **SMALL)
    original = (root / BROKEN).read_bytes()
    (root / BROKEN).write_bytes(b"not a NIfTI file")
    out = root / "derivatives" / "metaqsm"
    rc, text, err = _main(["bids", root, out, "participant", "--n-jobs", 2])
    return {"root": root, "out": out, "rc": rc, "stdout": text, "stderr": err,
            "original": original}


def _anat(out, sub, ses):
    return out / f"sub-{sub}" / f"ses-{ses}" / "anat"


# ----------------------------------------------------------------------------- simulated data
def test_simulated_dataset_is_bids(tmp_path):
    root = tmp_path / "raw"
    written = simulate_dataset(root, subjects=2, sessions=2, truth=True, rng=1, **SMALL)
    assert [(w["subject"], w["session"]) for w in written] == [
        ("01", "1"), ("01", "2"), ("02", "1"), ("02", "2")]
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["BIDSVersion"]
    anat = root / "sub-02" / "ses-1" / "anat"
    for echo, te in enumerate(TES, 1):
        mag = json.loads((anat / f"sub-02_ses-1_echo-{echo}_part-mag_MEGRE.json").read_text())
        phase = json.loads((anat / f"sub-02_ses-1_echo-{echo}_part-phase_MEGRE.json").read_text())
        assert mag["EchoTime"] == phase["EchoTime"] == te
        assert phase["MagneticFieldStrength"] == 3.0 and phase["Units"] == "rad"
        img = nib.load(str(anat / f"sub-02_ses-1_echo-{echo}_part-phase_MEGRE.nii.gz"))
        assert img.shape == SHAPE
        assert np.abs(np.asarray(img.dataobj)).max() <= np.pi + 1e-5
    # subjects differ (texture, susceptibility scale), sessions of a subject share the truth
    truth = root / "derivatives" / "truth"
    chi = {(s, k): nib.load(str(truth / f"sub-{s}/ses-{k}/anat/sub-{s}_ses-{k}_desc-truth_Chimap"
                                          ".nii.gz")).get_fdata() for s in ("01", "02")
           for k in ("1", "2")}
    np.testing.assert_array_equal(chi["01", "1"], chi["01", "2"])
    assert not np.allclose(chi["01", "1"], chi["02", "1"])
    errors = _validator_errors(root)
    assert errors == [], errors
    with pytest.raises(FileExistsError, match="root .* is not an empty folder"):
        simulate_dataset(root, subjects=1, **SMALL)
    with pytest.raises(ValueError, match="parts must be one of"):
        simulate_dataset(tmp_path / "other", parts="complex")
    assert not (tmp_path / "other").exists()


# ----------------------------------------------------------------------------- finding scans
def test_find_acquisitions(tmp_path):
    root = tmp_path / "raw"
    simulate_dataset(root, subjects=2, sessions=1, rng=2, **SMALL)
    acqs = find_acquisitions(root)
    assert [a.label for a in acqs] == ["sub-01 ses-1", "sub-02 ses-1"]
    a = acqs[0]
    assert a.problem is None and a.parts == ("mag", "phase") and a.suffix == "MEGRE"
    assert a.echo_times == pytest.approx(TES) and a.field_strength == 3.0
    assert [p.split("_echo-")[1][:1] for p in a.files[1]] == ["1", "2", "3"]
    assert [x.label for x in find_acquisitions(root, participant_label=["sub-02"])] == [
        "sub-02 ses-1"]
    with pytest.raises(ValueError, match=r"participant_label 07 not found .*it has: 01, 02"):
        find_acquisitions(root, participant_label="07")
    with pytest.raises(ValueError, match="session_label 9 not found"):
        find_acquisitions(root, session_label="ses-9")

    anat = root / "sub-02" / "ses-1" / "anat"
    # a magnitude-only scan is not a QSM acquisition: ignored
    for echo in (1, 2):
        shutil.copy(anat / f"sub-02_ses-1_echo-{echo}_part-mag_MEGRE.nii.gz",
                    anat / f"sub-02_ses-1_acq-mag_echo-{echo}_part-mag_MEGRE.nii.gz")
    # a second run whose echo 3 lacks its phase: reported, not processed
    for f in anat.glob("sub-02_ses-1_echo-*_MEGRE.*"):
        if "echo-3_part-phase" not in f.name:
            shutil.copy(f, anat / f.name.replace("_echo-", "_run-2_echo-"))
    # EchoTime moved to a top-level sidecar (BIDS inheritance) for sub-01
    for f in (root / "sub-01").rglob("*_MEGRE.json"):
        meta = json.loads(f.read_text())
        meta.pop("EchoTime")
        f.write_text(json.dumps(meta))
    for echo, te in enumerate(TES, 1):
        (root / f"echo-{echo}_MEGRE.json").write_text(json.dumps({"EchoTime": te}))
    acqs = {a.label: a for a in find_acquisitions(root)}
    assert sorted(acqs) == ["sub-01 ses-1", "sub-02 ses-1", "sub-02 ses-1 run-2"]
    assert acqs["sub-01 ses-1"].echo_times == pytest.approx(TES)
    assert acqs["sub-02 ses-1 run-2"].problem == (
        "sub-02_ses-1_run-2_MEGRE: the echoes of part-mag [1, 2, 3] differ from those of "
        "part-phase [1, 2]")
    with pytest.raises(ValueError, match="is not a BIDS dataset: it has no dataset_description"):
        find_acquisitions(anat)


def test_t2starw_and_swi_names(tmp_path):
    """QSMxT's T2starw and the SWI proposal's swi/ folder are read; two acquisitions whose
    outputs would share names are reported, not overwritten."""
    root = tmp_path / "raw"
    simulate_dataset(root, subjects=1, sessions=0, suffix="T2starw", rng=8, **SMALL)
    (acq,) = find_acquisitions(root)
    assert acq.suffix == "T2starw" and acq.echo_times == pytest.approx(TES)
    swi = root / "sub-01" / "swi"
    swi.mkdir()
    for part in ("mag", "phase"):
        for ext in (".nii.gz", ".json"):
            shutil.copy(root / f"sub-01/anat/sub-01_echo-1_part-{part}_T2starw{ext}",
                        swi / f"sub-01_part-{part}_swi{ext}")
    found = {a.suffix: a for a in find_acquisitions(root)}
    assert found["swi"].echo_times == pytest.approx(TES[:1])
    assert found["swi"].problem == ("its outputs would have the names of sub-01_T2starw's "
                                    "(sub-01_*); rename one (acq- entity)")
    for part in ("mag", "phase"):
        for ext in (".nii.gz", ".json"):
            (swi / f"sub-01_part-{part}_swi{ext}").rename(
                swi / f"sub-01_acq-swi_part-{part}_swi{ext}")
    found = {a.label: a for a in find_acquisitions(root)}
    assert found["sub-01 acq-swi"].problem is None


# ----------------------------------------------------------------------------- the study run
def test_participant_level_in_parallel(study):
    out = study["out"]
    # the broken subject fails, is reported, and the five others are processed
    assert study["rc"] == 1
    assert "5 processed, 0 skipped (finished before), 1 failed" in study["stdout"]
    assert "failed acquisitions:" in study["stderr"]
    line = next(ln for ln in study["stderr"].splitlines() if "sub-03 ses-2" in ln)
    assert "phase" in line and "log:" in line
    assert (out / "logs" / "sub-03_ses-2_error.txt").read_text().startswith("sub-03 ses-2\n")
    assert not _anat(out, "03", "2").exists()  # nothing half-written
    assert not (out / ".metaqsm-work").exists()
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    assert desc["GeneratedBy"][0]["Name"] == "metaqsm"
    for sub in ("01", "02", "03"):
        for ses in ("1", "2"):
            if (sub, ses) == ("03", "2"):
                continue
            anat = _anat(out, sub, ses)
            prefix = f"sub-{sub}_ses-{ses}"
            for suffix in ("Chimap", "mask", "desc-eroded_mask", "fieldmap", "localfield",
                           "R2starmap", "T2starmap", "swi", "minIP", "desc-ref_Chimap"):
                assert (anat / f"{prefix}_{suffix}.nii.gz").is_file(), (prefix, suffix)
                assert (anat / f"{prefix}_{suffix}.json").is_file(), (prefix, suffix)
            assert (anat / f"{prefix}_desc-summary_qsm.tsv").is_file()
    side = json.loads((_anat(out, "02", "1") / "sub-02_ses-1_Chimap.json").read_text())
    assert side["EchoTime"] == pytest.approx(TES) and side["MagneticFieldStrength"] == 3.0
    assert side["Inputs"]["EchoTimeSource"] == "BIDS sidecars"
    raw = "sub-02/ses-1/anat/sub-02_ses-1_echo-1_part-phase_MEGRE.nii.gz"
    assert raw in side["Inputs"]["phase"] and len(side["InputChecksums"][raw]) == 64
    assert side["Operation"] == "bids" and side["CommandLine"].startswith("metaqsm bids ")
    assert f"bids:raw:{raw}" in side["Sources"]
    assert side["SkullStripped"] is True
    # two jobs on this machine: each subject's pools get cores // 2 threads
    from metaqsm.bids._threads import available_cores

    summary = (_anat(out, "01", "1") / "sub-01_ses-1_desc-summary_qsm.tsv").read_text()
    row = dict(zip(*[ln.split("\t") for ln in summary.splitlines()]))
    assert row["threads"] == str(max(1, available_cores() // 2))
    assert row["status"] == "ok" and row["inversion"] == DEFAULT_INVERSION


def test_derivatives_pass_the_bids_validator(study):
    errors = _validator_errors(study["out"])
    assert errors == [], errors


def test_maps_beside_chi_are_plausible(study):
    anat = _anat(study["out"], "01", "2")

    def load(suffix):
        return nib.load(str(anat / f"sub-01_ses-2_{suffix}.nii.gz")).get_fdata()

    mask = load("mask") > 0
    r2, t2 = load("R2starmap"), load("T2starmap")
    # the simulator's brain R2* is 15 + 150 |chi| 1/s at 3 T
    assert 14.0 < np.median(r2[mask]) < 30.0
    np.testing.assert_allclose(t2[mask] * r2[mask], 1.0, rtol=1e-3)  # T2* in s = 1 / R2*
    assert json.loads((anat / "sub-01_ses-2_T2starmap.json").read_text())["Units"] == "s"
    eroded = load("desc-eroded_mask") > 0
    chi, ref = load("Chimap"), load("desc-ref_Chimap")
    assert abs(ref[eroded].mean()) < 1e-6  # referenced to the brain mean
    np.testing.assert_allclose(chi[eroded] - ref[eroded], (chi[eroded] - ref[eroded]).mean(),
                               atol=1e-6)
    minip = nib.load(str(anat / "sub-01_ses-2_minIP.nii.gz"))
    swi = load("swi")
    n = round(8.0 / VSZ[2])  # an 8 mm slab
    assert minip.shape == (SHAPE[0], SHAPE[1], SHAPE[2] - n + 1)
    np.testing.assert_allclose(np.asarray(minip.dataobj)[..., 0], swi[..., :n].min(axis=2),
                               rtol=1e-6)


def test_sessions_of_a_subject_agree(study):
    """Two sessions of one subject are the same brain: their chi maps correlate better with
    each other than with another subject's (whose susceptibility is scaled differently)."""
    out = study["out"]

    def chi(sub, ses):
        return nib.load(str(_anat(out, sub, ses) / f"sub-{sub}_ses-{ses}_Chimap.nii.gz")
                        ).get_fdata()

    m = nib.load(str(_anat(out, "01", "1") / "sub-01_ses-1_desc-eroded_mask.nii.gz")
                 ).get_fdata() > 0
    same = np.corrcoef(chi("01", "1")[m], chi("01", "2")[m])[0, 1]
    assert same > 0.9


def test_rerun_skips_finished_and_retries_failed(study, tmp_path):
    root, out = study["root"], study["out"]
    before = (_anat(out, "01", "1") / "sub-01_ses-1_Chimap.nii.gz").stat().st_mtime_ns
    (root / BROKEN).write_bytes(study["original"])  # repaired
    rc, text, err = _main(["bids", root, out, "participant", "--quiet"])
    assert rc == 0, err
    assert "1 processed, 5 skipped (finished before), 0 failed" in text
    assert (_anat(out, "01", "1") / "sub-01_ses-1_Chimap.nii.gz").stat().st_mtime_ns == before
    assert (_anat(out, "03", "2") / "sub-03_ses-2_desc-summary_qsm.tsv").is_file()
    assert not (out / "logs" / "sub-03_ses-2_error.txt").exists()
    # without skipping, existing outputs are an error before any work
    rc, text, err = _main(["bids", root, out, "participant", "--no-skip-existing",
                           "--participant-label", "01"])
    assert rc == 2
    assert "outputs of sub-01 ses-1 (finished), sub-01 ses-2 (finished) exist" in err
    assert "--skip-existing" in err and "--force" in err

    # group level: one row per acquisition
    rc, text, err = _main(["bids", root, out, "group"])
    assert rc == 0, err
    table = (out / "group_qsm.tsv").read_text().splitlines()
    header = table[0].split("\t")
    rows = [dict(zip(header, ln.split("\t"))) for ln in table[1:]]
    assert [(r["participant_id"], r["session_id"]) for r in rows] == [
        (f"sub-{s}", f"ses-{k}") for s in ("01", "02", "03") for k in ("1", "2")]
    assert all(r["status"] == "ok" for r in rows)
    assert all(abs(float(r["chi_mean"])) < 0.02 and 0.005 < float(r["chi_sd"]) < 0.2
               for r in rows)
    assert json.loads((out / "group_qsm.json").read_text())["chi_sd"]["Units"] == "ppm"
    rc, _, err = _main(["bids", root, out, "group", "--participant-label", "02"])
    assert rc == 0
    assert len((out / "group_qsm.tsv").read_text().splitlines()) == 3


def test_group_lists_failures(tmp_path):
    root = tmp_path / "raw"
    simulate_dataset(root, subjects=2, sessions=0, rng=4, **SMALL)
    for f in (root / "sub-02").rglob("*_MEGRE.json"):
        f.write_text(json.dumps({"EchoTime": 0.004}))  # no MagneticFieldStrength
    out = tmp_path / "out"
    records = run_participants(root, out, figure=False, report=False)
    assert [(r["label"], r["status"]) for r in records] == [("sub-01", "ok"), ("sub-02", "failed")]
    assert records[1]["error"] == "sub-02_MEGRE: no MagneticFieldStrength in its sidecars"
    assert (out / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").is_file()  # no ses- level
    res = run_group(out)
    assert res["failed"] == 1
    assert [(r["participant_id"], r["status"], r["error"]) for r in res["rows"]] == [
        ("sub-01", "ok", "n/a"),
        ("sub-02", "failed", "sub-02_MEGRE: no MagneticFieldStrength in its sidecars")]
    rc, text, _ = _main(["bids", root, out, "group"])
    assert rc == 1 and "1 acquisitions, 1 failed" in text


def test_real_imaginary_parts_give_the_same_maps(tmp_path):
    a, b = tmp_path / "magphase", tmp_path / "realimag"
    simulate_dataset(a, subjects=1, sessions=0, rng=7, **SMALL)
    simulate_dataset(b, subjects=1, sessions=0, rng=7, parts="real-imag", **SMALL)
    kw = {"figure": False, "report": False, "inversion_method": "tkd"}
    ra = run_participants(a, a / "derivatives" / "q", **kw)
    rb = run_participants(b, b / "derivatives" / "q", **kw)
    assert ra[0]["status"] == rb[0]["status"] == "ok", (ra[0]["error"], rb[0]["error"])
    side = json.loads((b / "derivatives/q/sub-01/anat/sub-01_Chimap.json").read_text())
    assert len(side["Inputs"]["real"]) == len(side["Inputs"]["imaginary"]) == len(TES)
    for suffix in ("Chimap", "R2starmap"):
        x = nib.load(str(a / f"derivatives/q/sub-01/anat/sub-01_{suffix}.nii.gz")).get_fdata()
        y = nib.load(str(b / f"derivatives/q/sub-01/anat/sub-01_{suffix}.nii.gz")).get_fdata()
        np.testing.assert_allclose(x, y, atol=1e-3 * np.abs(x).max())


def test_dask_scheduler_and_a_failure_while_writing(tmp_path, monkeypatch):
    """Submitting to a running scheduler (the cluster path, here an in-process LocalCluster),
    and a write that fails half-way leaving no output."""
    from distributed import LocalCluster

    import metaqsm.bids._participant as participant

    root = tmp_path / "raw"
    simulate_dataset(root, subjects=1, sessions=2, rng=5, **SMALL)
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        rc, text, err = _main(["bids", root, out, "participant", "--session-label", "1",
                               "--dask-scheduler", cluster.scheduler_address, "--no-report"])
    assert rc == 0, err
    assert "1 processed" in text
    assert (out / "sub-01/ses-1/anat/sub-01_ses-1_Chimap.nii.gz").is_file()

    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(participant, "_add_bids_keys", fail)
    rc, text, err = _main(["bids", root, out, "participant", "--session-label", "2"])
    assert rc == 1 and "OSError: disk full (simulated)" in err
    assert not (out / "sub-01/ses-2").exists()
    assert not (out / ".metaqsm-work").exists()


def test_limit_threads_sets_and_restores_the_pools():
    import metaqsm._fd as fd
    import metaqsm._fft as fft
    import metaqsm.kernels as kernels
    from metaqsm.bids._threads import limit_threads

    before = (fft.WORKERS, kernels.WORKERS, fd.WORKERS)
    with limit_threads(1):
        assert (fft.WORKERS, kernels.WORKERS, fd.WORKERS) == (1, 1, 1)
        import os

        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert (fft.WORKERS, kernels.WORKERS, fd.WORKERS) == before


def test_errors_before_any_work(tmp_path, monkeypatch):
    import metaqsm.bids._run as run

    root = tmp_path / "raw"
    simulate_dataset(root, subjects=1, sessions=0, rng=6, **SMALL)
    out = tmp_path / "out"
    cases = [
        (["bids", tmp_path / "nope", out, "participant"], "BIDS_DIR: no such folder"),
        (["bids", root, root, "participant"], "OUTPUT_DIR must not be BIDS_DIR itself"),
        (["bids", root, root / "sub-01" / "q", "participant"],
         "is inside BIDS_DIR but not under its derivatives/ folder"),
        (["bids", root, out, "participant", "--participant-label", "9"],
         "--participant-label 9 not found"),
        (["bids", root, out, "participant", "--n-jobs", "0"], "--n-jobs must be"),
        (["bids", root, out, "participant", "--method", "nope"], "--method must be one of"),
        (["bids", root, out, "participant", "--method", "tkd", "--method-option", "lam=3"],
         "--method-option"),
        (["bids", root, out, "participant", "--fit", "cubic"], "--fit must be one of"),
        (["bids", root, out, "participant", "--n-jobs", "2", "--dask-scheduler",
          "tcp://127.0.0.1:1"], "--n-jobs and --dask-scheduler exclude each other"),
        (["bids", root, out, "participant", "--dask-scheduler", "tcp://127.0.0.1:1"],
         "--dask-scheduler: cannot reach a Dask scheduler at tcp://127.0.0.1:1"),
        (["bids", root, out, "group"], "OUTPUT_DIR: no such folder"),
    ]
    monkeypatch.setattr(run, "CONNECT_TIMEOUT", "1s")
    for argv, message in cases:
        rc, _, err = _main(argv)
        assert rc == 2, (argv, err)
        assert err.startswith("metaqsm bids: error: ") and len(err.strip().splitlines()) == 1
        assert message in err, (argv, err)
        assert not out.exists(), argv
    assert not (root / "sub-01" / "q").exists()
    # another dataset in OUTPUT_DIR is not overwritten
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9",
                                                              "DatasetType": "raw"}))
    rc, _, err = _main(["bids", root, out, "participant"])
    assert rc == 2 and "holds another dataset" in err
    assert sorted(p.name for p in out.iterdir()) == ["dataset_description.json"]


def test_bids_example_command(tmp_path):
    rc, text, err = _main(["bids-example", tmp_path / "ex", "--subjects", "1", "--sessions", "1",
                           "--shape", "32", "32", "24"])
    assert rc == 0, err
    assert "next: metaqsm bids" in text
    assert (tmp_path / "ex/sub-01/ses-1/anat/sub-01_ses-1_echo-4_part-phase_MEGRE.nii.gz").is_file()
    rc, _, err = _main(["bids-example", tmp_path / "ex"])
    assert rc == 2 and "DIR" in err and "is not an empty folder" in err


def test_a_worker_that_dies_fails_its_acquisition_only(tmp_path, monkeypatch):
    """--n-jobs: a worker process killed (as by the kernel's out-of-memory killer) fails the
    acquisition it ran; the others are done, in a new pool."""
    import os

    from metaqsm.bids import _run

    root = tmp_path / "study"
    simulate_dataset(root, subjects=2, sessions=2, rng=4, **SMALL)

    def stand_in(acq, cfg):  # forked workers inherit the patched module
        if acq.prefix.startswith("sub-01_ses-2"):
            os._exit(9)
        return {"subject": acq.subject, "session": acq.session, "prefix": acq.prefix,
                "label": acq.label, "status": "ok", "row": None, "outputs": [], "seconds": 0.0}

    monkeypatch.setattr(_run, "process_acquisition", stand_in)
    records = run_participants(root, tmp_path / "out", n_jobs=2)
    status = {r["prefix"].split("_MEGRE")[0][:12]: r["status"] for r in records}
    assert status == {"sub-01_ses-1": "ok", "sub-01_ses-2": "failed", "sub-02_ses-1": "ok",
                      "sub-02_ses-2": "ok"}
    failed = next(r for r in records if r["status"] == "failed")
    assert "worker process died" in failed["error"]
