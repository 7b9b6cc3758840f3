"""Evaluation: the quick suite end to end, numbers recomputed from the written volumes, resume,
user and real cases through the CLI, naive interpolation, slice orientation, bad input."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from metaqsm.cli import main
from metaqsm.evaluate import build_suite, load_results, naive_interpolation, run_suite, user_suite
from metaqsm.evaluate.figures import case_slices
from metaqsm.evaluate.suites import slug
from metaqsm.io import load_nifti, save_nifti
from metaqsm.metrics import compute_metrics

KEYS = ("rmse", "nrmse_demeaned", "hfen", "ssim", "xsim", "correlation")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick suite run once through the CLI (default methods)."""
    out = tmp_path_factory.mktemp("eval") / "report"
    t0 = time.perf_counter()
    rc = main(["evaluate", "--suite", "quick", "-o", str(out), "--no-progress"])
    seconds = time.perf_counter() - t0
    assert rc == 0
    return out, seconds


def _rows(out):
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_quick_suite_writes_the_report(quick):
    out, _ = quick
    for name in ("index.html", "report.md", "results.csv", "summary.json", "suite.json", "status.json"):
        assert (out / name).is_file(), name
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "slices_quick_000.png" in pngs and "box_quick.png" in pngs
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    html = (out / "index.html").read_text()
    for text in ("RMSE (%)", "HFEN (%)", "SSIM (0-1)", "run time (s)", "cpu_count", "metaqsm"):
        assert text in md and text in html
    rows = _rows(out)
    labels = {r["label"] for r in rows}
    assert {"TKD", "iLSQR", "MEDI", "TV"} <= labels
    assert len([r for r in rows if r["label"] == "TKD"]) == 3
    status = json.loads((out / "status.json").read_text())
    # the networks: either evaluated, or reported as not available with the reason
    if "Meta-QSM" in status["unavailable"]:
        assert "Meta-QSM: not available (" in md
    else:
        assert "Meta-QSM" in labels
    assert not status["failed"]


def test_table_numbers_equal_metrics_recomputed_from_volumes(quick):
    out, _ = quick
    rows = _rows(out)
    assert rows
    recomputed = {}
    for r in rows:
        d = out / "volumes" / r["group"] / r["case"]
        chi = load_nifti(d / f"{slug(r['label'])}.nii.gz").data
        truth = load_nifti(d / "truth.nii.gz").data
        mask = load_nifti(d / "mask.nii.gz").data > 0
        m = compute_metrics(chi, truth, mask)
        for k in KEYS:
            assert float(r[k]) == pytest.approx(m[k], rel=1e-9, abs=1e-12), (r["label"], k)
        recomputed.setdefault(r["label"], []).append(m)
    summary = json.loads((out / "summary.json").read_text())["groups"]["quick"]
    lines = (out / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("|  | "))
    columns = [c.strip().split(" (n=")[0] for c in header.strip("|").split("|")][1:]
    for key, row, digits, lower in (("rmse", "| RMSE (%)", 2, True), ("hfen", "| HFEN (%)", 2, True),
                                    ("ssim", "| SSIM (0-1)", 4, False)):
        cells = [c.strip() for c in next(x for x in lines if x.startswith(row)).strip("|").split("|")][1:]
        shown = {}
        for label, ms in recomputed.items():
            vals = np.array([m[key] for m in ms])
            assert summary[label][key]["mean"] == pytest.approx(vals.mean(), rel=1e-9)
            assert summary[label][key]["sd"] == pytest.approx(vals.std(ddof=1), rel=1e-9)
            cell = cells[columns.index(label)]
            assert cell.strip("*") == f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f}"
            shown[label] = vals.mean()
        best = f"{(min if lower else max)(shown.values()):.{digits}f}"
        bold = {columns[i] for i, c in enumerate(cells) if c.startswith("**")}
        assert bold == {lab for lab, v in shown.items() if f"{v:.{digits}f}" == best}, key


def test_resume_skips_done_work_and_completes_a_partial_run(quick, tmp_path):
    out, first_seconds = quick
    table = out / "results.jsonl"
    before = (table.read_bytes(), table.stat().st_mtime_ns)
    n_done = len(load_results(out))
    assert n_done == len(table.read_text().splitlines())  # one line per result
    t0 = time.perf_counter()
    res = run_suite(build_suite("quick"), out, resume=True, progress=False)
    seconds = time.perf_counter() - t0
    assert res["computed"] == 0 and res["skipped"] == n_done
    assert (table.read_bytes(), table.stat().st_mtime_ns) == before
    assert seconds < first_seconds
    # a killed run: one result missing and the last line cut short -> only those are computed
    # again, to the same numbers
    lines = table.read_text().splitlines()
    key = lambda r: (r["group"], r["case"], r["label"])  # noqa: E731
    victim = next(json.loads(x) for x in lines if json.loads(x)["case"] == "001"
                  and json.loads(x)["label"] == "TV")
    cut = json.loads(lines[-1])
    kept = [x for x in lines[:-1] if key(json.loads(x)) != key(victim)]
    table.write_text("\n".join(kept) + "\n" + lines[-1][: len(lines[-1]) // 2])
    res = run_suite(build_suite("quick"), out, resume=True, progress=False)
    assert res["computed"] == 2
    recs = {key(r): r for r in load_results(out)}
    assert len(recs) == n_done
    for old in (victim, cut):
        new = recs[key(old)]
        for k in KEYS:
            assert new["metrics"][k] == pytest.approx(old["metrics"][k], rel=1e-6)


def test_existing_report_needs_resume_or_force(quick, capsys):
    out, _ = quick
    assert main(["evaluate", "--suite", "quick", "-o", str(out)]) == 2
    assert "use --resume" in capsys.readouterr().err
    assert main(["evaluate", "--suite", "quick", "-o", str(out), "--resume", "--force"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main(["evaluate", "--suite", "quick", "-o", str(out), "--n", "1", "--resume",
                 "--methods", "tkd", "--no-progress"]) == 0  # a subset of what is done
    assert "0 reconstructions computed" in capsys.readouterr().out


def _write_case(tmp_path, phantom, noise=0.002):
    from metaqsm.kernels import forward_field

    vsz = phantom.voxel_size
    field = forward_field(phantom.chi, voxel_size=vsz, b0_dir=(0, 0, 1))
    field = (field + noise * np.random.default_rng(3).standard_normal(field.shape)) * phantom.mask
    aff = np.diag([*vsz, 1.0])
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("field", "chi", "mask")}
    save_nifti(paths["field"], field, aff)
    save_nifti(paths["chi"], phantom.chi, aff)
    save_nifti(paths["mask"], phantom.mask, aff)
    return paths


def test_user_case_via_the_cli(small_phantom, tmp_path, capsys):
    p = _write_case(tmp_path, small_phantom)
    out = tmp_path / "user"
    rc = main(["evaluate", "--field", str(p["field"]), "--reference", str(p["chi"]), "--mask",
               str(p["mask"]), "--methods", "tkd", "tv", "-o", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rows = _rows(out)
    assert [r["label"] for r in sorted(rows, key=lambda r: r["label"])] == ["TKD", "TV"]
    for r in rows:
        chi = load_nifti(out / "volumes" / "case" / r["case"] / f"{slug(r['label'])}.nii.gz").data
        m = compute_metrics(chi, small_phantom.chi, small_phantom.mask)
        assert float(r["rmse"]) == pytest.approx(m["rmse"], rel=1e-6)
    tv = next(r for r in rows if r["label"] == "TV")
    tkd = next(r for r in rows if r["label"] == "TKD")
    assert float(tv["rmse"]) < float(tkd["rmse"]) < 100.0
    assert (out / "figures" / f"slices_case_{rows[0]['case']}.png").is_file()
    assert "--reference" in (out / "report.md").read_text()


def test_real_data_side_by_side(small_phantom, tmp_path, capsys):
    p = _write_case(tmp_path, small_phantom)
    run = tmp_path / "run"
    run.mkdir()
    aff = np.diag([*small_phantom.voxel_size, 1.0])
    save_nifti(run / "sub-01_localfield.nii.gz", load_nifti(p["field"]).data, aff)
    save_nifti(run / "sub-01_mask.nii.gz", small_phantom.mask, aff)
    save_nifti(run / "sub-01_desc-eroded_mask.nii.gz", small_phantom.mask, aff)
    save_nifti(run / "sub-01_desc-truth_localfield.nii.gz", load_nifti(p["field"]).data, aff)
    out = tmp_path / "real"
    rc = main(["evaluate", "--real", str(run), "--methods", "tkd", "tv", "-o", str(out),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    recs = load_results(out)
    assert sorted(r["label"] for r in recs) == ["TKD", "TV"]
    assert all("metrics" not in r and r["time_s"] >= 0 for r in recs)
    md = (out / "report.md").read_text()
    assert "run time (s)" in md and "RMSE (%)" not in md
    assert (out / "figures" / "slices_case_sub-01_localfield.png").is_file()
    # an empty folder: a clear error, no report
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--real", str(empty), "-o", str(tmp_path / "r2")]) == 2
    assert "no local field" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_bad_input_gives_clear_errors(small_phantom, tmp_path, capsys):
    p = _write_case(tmp_path, small_phantom)
    out = str(tmp_path / "o")
    cases = [
        (["--field", str(tmp_path / "missing.nii.gz"), "--mask", str(p["mask"])], "--field: no such file"),
        (["--field", str(p["field"]), "--mask", str(p["mask"]), "--reference",
          str(tmp_path / "nope.nii.gz")], "--reference: no such file"),
        (["--field", str(p["field"])], "--field needs --mask"),
        (["--suite", "quick", "--methods", "tkd", "magic"], "--methods must be among"),
        (["--suite", "quick", "--n", "0"], "--n must be >= 1"),
        (["--suite", "quick", "--figure-cases", "-1"], "--figure-cases must be >= 0"),
        (["--suite", "quick", "--mask", str(p["mask"])], "--mask belongs to --field"),
        (["--field", str(p["field"]), "--mask", str(p["mask"]), "--cache", str(tmp_path)],
         "--cache belongs to --suite"),
        (["--suite", "paper", "--groups", "table4"], "--groups of suite 'paper' must be among "
         "table1, table2, table3, got table4"),
        (["--field", str(p["field"]), "--mask", str(p["mask"]), "--methods", "nope"],
         "--methods must be among"),
    ]
    for args, message in cases:
        assert main(["evaluate", *args, "-o", out]) == 2, args
        assert message in capsys.readouterr().err, args
        assert not Path(out).exists()
    with pytest.raises(SystemExit):
        main(["evaluate", "--suite", "everything", "-o", out])
    # the library names its arguments; the command line above speaks in flags
    with pytest.raises(ValueError, match="^suite must be one of"):
        build_suite("everything")
    with pytest.raises(FileNotFoundError, match="^mask_path: no such file"):
        user_suite(p["field"], tmp_path / "m.nii.gz")
    with pytest.raises(FileNotFoundError, match="output folder .* does not exist"):
        run_suite(build_suite("quick", methods=["tkd"]), tmp_path / "a" / "b", progress=False)


def test_a_failing_method_is_reported_not_fatal(tmp_path, monkeypatch):
    """A network that fails is 'not available (reason)', a failing classical method is listed as
    failed; neither ends the run."""
    import metaqsm.dl.registry as registry
    from metaqsm.methods import Method

    def broken(field, mask, **kwargs):
        raise RuntimeError("no model shipped yet")

    def bad_tv(field, mask, **kwargs):
        raise ValueError("diverged")

    real_function = Method.function
    monkeypatch.setattr(registry, "shipped_path", lambda name: f"/models/{name}.safetensors")
    monkeypatch.setattr(Method, "function", lambda self: {"meta": broken, "tv": bad_tv}.get(
        self.name) or real_function(self))
    res = run_suite(build_suite("quick", methods=["tkd", "tv", "meta"], n=1), tmp_path / "r",
                    progress=False)
    assert res["unavailable"] == {"Meta-QSM": "RuntimeError: no model shipped yet"}
    assert res["failed"] == {"TV": ["000: ValueError: diverged"]}
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Meta-QSM: not available (RuntimeError: no model shipped yet)" in md
    assert "TV: failed on 1 volume(s): 000: ValueError: diverged" in md
    assert res["computed"] == 1


def test_missing_shipped_model_is_found_before_any_volume_is_built(tmp_path, monkeypatch):
    import metaqsm.dl.registry as registry
    from metaqsm.evaluate import Case, Group, Suite

    def missing(name):
        raise FileNotFoundError(f"the shipped model {name!r} is not installed")

    monkeypatch.setattr(registry, "shipped_path", missing)
    built = []
    case = Case("000", lambda: built.append(1) or {})
    suite = Suite("quick", "t", [Group("g", "g", [case], [suites_spec("meta")])])
    res = run_suite(suite, tmp_path / "r", progress=False)
    assert built == [] and res["computed"] == 0
    assert res["unavailable"]["Meta-QSM"].startswith("FileNotFoundError: the shipped model 'meta'")


def suites_spec(name):
    from metaqsm.evaluate.suites import default_spec

    return default_spec(name)


def test_naive_interpolation_round_trip():
    shape, vsz = (40, 40, 20), np.array([0.5, 0.5, 2.0])
    grids = np.meshgrid(*[np.arange(n) * d for n, d in zip(shape, vsz)], indexing="ij")
    smooth = (np.sin(grids[0] / 6.0) * np.cos(grids[1] / 5.0) + grids[2] / 40.0).astype(np.float32)
    mask = np.ones(shape, bool)
    seen = {}

    def identity(field, m, *, voxel_size, b0_dir):
        seen["shape"], seen["voxel_size"] = field.shape, voxel_size
        return field

    out = naive_interpolation(identity, smooth, mask, voxel_size=vsz, b0_dir=(0, 0, 1),
                              target_voxel_size=(0.7639, 0.7639, 3.0))
    assert seen["shape"] == (26, 26, 13)
    assert np.allclose(seen["voxel_size"], vsz * np.array(shape) / np.array([26, 26, 13]))
    inner = (slice(4, -4), slice(4, -4), slice(3, -3))
    err = np.abs(out - smooth)[inner].max() / np.abs(smooth).max()
    assert err < 0.05
    same = naive_interpolation(identity, smooth, mask, voxel_size=vsz, b0_dir=(0, 0, 1),
                               target_voxel_size=vsz)
    assert np.allclose(same, smooth, atol=1e-5)


def test_slices_are_shown_anterior_up_whatever_the_affine():
    shape, vsz = (20, 24, 16), np.array([1.0, 1.0, 2.0])
    vol = np.zeros(shape, np.float32)
    vol[10, 20, 8] = 1.0  # anterior (high y on a RAS grid)
    vol[16, 12, 8] = 2.0  # right
    mask = np.ones(shape, bool)
    ras = case_slices({"mask": mask, "voxel_size": vsz, "affine": np.diag([1, 1, 2, 1.0])},
                      index=(10, 12, 8))(vol)
    ax = ras["axial"]
    assert ax.shape == (24, 20)  # rows: y (origin lower: anterior up), columns: x (right)
    assert ax[20, 10] == 1.0 and ax[12, 16] == 2.0
    assert np.allclose(ras["extent_coronal"], [0, 20, 0, 32])
    # the same anatomy stored flipped in x and y (LPS-like affine) displays identically
    lps = np.diag([-1.0, -1.0, 2.0, 1.0])
    flipped = case_slices({"mask": mask, "voxel_size": vsz, "affine": lps}, index=(10, 12, 8))(
        vol[::-1, ::-1, :])
    assert np.array_equal(flipped["axial"], ax)


def test_testset_cache_serves_the_generated_volume(tmp_path, monkeypatch):
    from metaqsm.simulate import testsets
    from metaqsm.evaluate import suites

    # the official volumes are 256 x 256 x 64; a small copy of one set's recipe keeps this fast
    small = {**testsets.TESTSETS["res_0.5x0.5x2"], "patch_shape": (24, 24, 12)}
    monkeypatch.setitem(testsets.TESTSETS, "res_0.5x0.5x2", small)
    fresh = testsets.testset_sample("res_0.5x0.5x2", 3)
    first = suites._testset_case("res_0.5x0.5x2", 3, tmp_path / "cache")
    path = suites.testset_cache_path(tmp_path / "cache", "res_0.5x0.5x2", 3)
    assert path.exists() and f"-v{testsets.TESTSET_VERSION}-003" in path.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    calls = []
    monkeypatch.setattr(testsets, "testset_sample", lambda *a: calls.append(a))
    again = suites._testset_case("res_0.5x0.5x2", 3, tmp_path / "cache")
    assert not calls  # read, not generated
    for got in (first, again):
        assert set(got) == set(fresh)
        for k in fresh:
            np.testing.assert_array_equal(got[k], fresh[k])
            assert np.asarray(got[k]).dtype == np.asarray(fresh[k]).dtype
    with pytest.raises(ValueError, match="index must be < 100"):
        suites._testset_case("res_0.5x0.5x2", 100, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_paper_suite_design_with_stand_in_networks(tmp_path, monkeypatch):
    """Tables 1-3 as in the paper: Mesa at its own resolution, Meta, the other Mesa as is and
    after naive interpolation (stand-in networks record how they are called)."""
    import metaqsm.dl.registry as registry
    import metaqsm.inversion as inv
    from metaqsm.methods import Method
    from metaqsm.evaluate import suites

    vsz = {"paper": (1.0, 1.0, 2.0), "res_0.5x0.5x2": (0.5, 0.5, 2.0),
           "res_0.7639x0.7639x3": (0.7639, 0.7639, 3.0)}
    monkeypatch.setattr(suites, "_testset_case", lambda name, i, cache_dir=None: suites._phantom_case(
        i, (48, 48, 24), vsz[name], 0.0, 0.002, 0))
    monkeypatch.setattr(registry, "shipped_path", lambda name: f"/models/{name}.safetensors")
    calls = []
    real_get = inv.get_method

    def stand_in(kind):
        def net(field, mask, *, voxel_size, b0_dir, weights=None, device="cpu"):
            calls.append((kind, weights, tuple(np.round(voxel_size, 4)), field.shape))
            return real_get("tkd")(field, mask, voxel_size=voxel_size, b0_dir=b0_dir)
        return net

    real_function = Method.function
    monkeypatch.setattr(Method, "function", lambda self: stand_in(self.name)
                        if self.name in ("meta", "mesa") else real_function(self))
    res = run_suite(build_suite("paper", methods=["tkd", "meta", "mesa"], n=1), tmp_path / "p",
                    progress=False)
    assert res["computed"] == 3 + 4 + 4 and not res["unavailable"]  # table 1: tkd meta mesa
    mesa_b = "/models/mesa-0.7639x0.7639x3.safetensors"
    # Table 2 (0.5 x 0.5 x 2 mm): the 0.7639 Mesa as is, and on the field resampled to 0.7639 mm
    assert ("mesa", mesa_b, (0.5, 0.5, 2.0), (48, 48, 24)) in calls
    assert ("mesa", mesa_b, (0.7742, 0.7742, 3.0), (31, 31, 16)) in calls
    assert ("mesa", "/models/mesa-0.5x0.5x2.safetensors", (0.5, 0.5, 2.0), (48, 48, 24)) in calls
    md = (tmp_path / "p" / "report.md").read_text()
    for title in ("## Table 1", "## Table 2", "## Table 3", "Mesa-QSM (0.7639x0.7639x3, interpolated)",
                  '"testset": "res_0.5x0.5x2"', '"version": 2'):
        assert title in md
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())["groups"]
    assert summary["table2"]["Meta-QSM"]["n"] == 1
    # --methods filters the fixed design of Tables 2-3 instead of replacing it
    only = build_suite("paper", methods=["tkd"], n=1)
    assert [s.label for s in only.groups[0].specs] == ["TKD"]
    assert only.groups[1].specs == [] and only.groups[2].specs == []
    # --groups keeps whole tables
    two = build_suite("paper", methods=["meta", "mesa"], n=2, groups=["table2", "table3"])
    assert [g.name for g in two.groups] == ["table2", "table3"]
    assert [len(g.cases) for g in two.groups] == [2, 2] and len(two.groups[0].specs) == 4


def test_meta_with_data_consistency_is_a_column_of_its_own(tmp_path, monkeypatch):
    """``meta+dc``: the Meta-QSM network called with refine=True, in its own column, never a
    target that Meta-QSM must beat."""
    import metaqsm.inversion as inv
    from metaqsm.methods import Method
    from metaqsm.evaluate import suites
    from metaqsm.evaluate.report import target_checks

    spec = suites.default_spec("meta+dc")
    assert (spec.label, spec.method, spec.params) == ("Meta-QSM + DC", "meta", {"refine": True})
    assert suites.check_methods(["tkd", "meta+dc"]) == ("tkd", "meta+dc")
    with pytest.raises(ValueError, match=r"^methods must be among .*meta\+dc.*, got 'meta-dc'"):
        suites.check_methods(["meta-dc"])
    assert "meta+dc" in suites.PAPER_METHODS
    calls = []
    real_get = inv.get_method

    def stand_in(field, mask, *, voxel_size, b0_dir, weights=None, device="cpu", refine=False):
        calls.append(refine)
        chi = real_get("tkd")(field, mask, voxel_size=voxel_size, b0_dir=b0_dir)
        return chi * (1.0 if refine else 0.5)

    real_function = Method.function
    monkeypatch.setattr(Method, "function", lambda self: stand_in if self.name == "meta"
                        else real_function(self))
    monkeypatch.setattr(suites, "_testset_case", lambda name, i, cache_dir=None: suites._phantom_case(
        i, (32, 32, 16), (1.0, 1.0, 2.0), 0.0, 0.002, 0))
    import metaqsm.dl.registry as registry

    monkeypatch.setattr(registry, "shipped_path", lambda name: f"/models/{name}.safetensors")
    res = run_suite(build_suite("paper", methods=["tkd", "meta", "meta+dc"], n=1), tmp_path / "p",
                    progress=False)
    assert not res["unavailable"] and sorted(calls) == [False, False, False, True]  # + tables 2-3
    rows = {r["label"]: r for r in _rows(tmp_path / "p") if r["group"] == "table1"}
    assert set(rows) == {"TKD", "Meta-QSM", "Meta-QSM + DC"}
    assert float(rows["Meta-QSM + DC"]["rmse"]) == pytest.approx(float(rows["TKD"]["rmse"]), rel=1e-5)
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())["groups"]
    man = json.loads((tmp_path / "p" / "suite.json").read_text())
    checks = [c for _, c, _, _ in target_checks(man, summary)]
    assert "RMSE better than TKD" in checks and not any("DC" in c for c in checks)


def test_sweeps_tilt_the_same_scene_and_plot(tmp_path, monkeypatch):
    from metaqsm.evaluate import suites

    small = (32, 32, 16)
    a = suites.sweep_sample("orientation", 0, voxel_size=(1.0, 1.0, 2.0), tilt_deg=0.0, shape=small)
    b = suites.sweep_sample("orientation", 0, voxel_size=(1.0, 1.0, 2.0), tilt_deg=30.0, shape=small)
    assert np.array_equal(a["chi"], b["chi"]) and np.array_equal(a["mask"], b["mask"])
    assert np.allclose(b["b0_dir"], [0.5, 0.0, np.sqrt(3) / 2], atol=1e-6)
    assert np.allclose(a["b0_dir"], [0, 0, 1])
    assert not np.allclose(a["field"], b["field"])
    c = suites.sweep_sample("resolution", 0, voxel_size=(1.0, 1.0, 2.0), shape=small)
    assert not np.array_equal(a["chi"], c["chi"])  # another stream than the orientation sweep
    real = suites.sweep_sample
    monkeypatch.setattr(suites, "sweep_sample", lambda *a, **k: real(*a, **{**k, "shape": small}))
    res = run_suite(build_suite("orientation", methods=["tkd"], n=1), tmp_path / "o", progress=False)
    assert res["computed"] == 3
    md = (tmp_path / "o" / "report.md").read_text()
    assert "## Sweep: B0 tilt (degrees)" in md and "| B0 tilt (degrees) | TKD |" in md
    figs = tmp_path / "o" / "figures"
    assert (figs / "sweep_b0_tilt_degrees_rmse.png").is_file()
    rows = [line for line in md.splitlines() if re.match(r"\| (0|15|30) \|", line)]
    assert len(rows) == 9  # RMSE, HFEN and SSIM tables, 3 tilts each


def test_paper_design_with_real_checkpoints(tmp_path, monkeypatch, capsys):
    """--weights evaluates trained checkpoints (here tiny untrained ones) through the real
    invert_meta / invert_mesa, before any model is shipped."""
    import torch
    from metaqsm.dl import MesaQSM, MetaQSM, save_checkpoint
    from metaqsm.evaluate import suites

    torch.manual_seed(0)
    ck = {"meta": save_checkpoint(tmp_path / "meta.safetensors",
                                  MetaQSM(depth=2, base=4, basis=2, hidden=8).eval())}
    for key, vsz in suites.MESA_RESOLUTIONS.items():
        ck[f"mesa-{key}"] = save_checkpoint(tmp_path / f"mesa-{key}.safetensors",
                                            MesaQSM(depth=2, base=4).eval(),
                                            extra={"voxel_size": list(vsz)})
    vsz = {"paper": (1.0, 1.0, 2.0), "res_0.5x0.5x2": (0.5, 0.5, 2.0),
           "res_0.7639x0.7639x3": (0.7639, 0.7639, 3.0)}
    monkeypatch.setattr(suites, "_testset_case", lambda name, i, cache_dir=None: suites._phantom_case(
        i, (40, 40, 20), vsz[name], 0.0, 0.002, 0))
    out = tmp_path / "p"
    rc = main(["evaluate", "--suite", "paper", "--methods", "meta", "mesa", "--n", "1",
               "--weights", *(f"{k}={v}" for k, v in ck.items()), "-o", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    recs = load_results(out)
    assert len(recs) == 1 + 4 + 4  # Table 1: Meta (no Mesa model at 1 x 1 x 2 mm); Tables 2-3
    status = json.loads((out / "status.json").read_text())
    assert "no shipped Mesa-QSM model" in status["unavailable"]["Mesa-QSM"]
    interp = next(r for r in recs if r["label"] == "Mesa-QSM (0.5x0.5x2, interpolated)")
    assert interp["params"]["weights"] == str(ck["mesa-0.5x0.5x2"])
    assert all(np.isfinite(r["metrics"]["rmse"]) for r in recs)
    md = (out / "report.md").read_text()
    assert "## Targets (issue 6)" in md and "RMSE within 10% of Mesa-QSM (0.5x0.5x2)" in md
    assert main(["evaluate", "--suite", "quick", "--weights", "meta", "-o", str(tmp_path / "x")]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["evaluate", "--suite", "quick", "--weights", f"meso={ck['meta']}",
                 "-o", str(tmp_path / "x")]) == 2
    assert "--weights names must be among" in capsys.readouterr().err


def test_target_checks_known_answer():
    from metaqsm.evaluate.report import target_checks

    def e(method, rmse, hfen, ssim, n=3):
        return {"n": n, "method": method, "rmse": {"mean": rmse}, "hfen": {"mean": hfen},
                "ssim": {"mean": ssim}}

    man = {"groups": [{"name": "table1", "title": "T1", "cases": ["0", "1", "2"]},
                      {"name": "table2", "title": "T2", "cases": []}]}
    summary = {
        "table1": {"TKD": e("tkd", 60, 50, 0.90), "Meta-QSM": e("meta", 40, 55, 0.95)},
        "table2": {"Mesa-QSM (0.5x0.5x2)": e("mesa", 30, 30, 0.9),
                   "Meta-QSM": e("meta", 32.9, 30, 0.9),
                   "Mesa-QSM (0.7639x0.7639x3, as is)": e("mesa", 80, 70, 0.5)},
    }
    got = {(t, c): ok for t, c, _, ok in target_checks(man, summary)}
    assert got == {
        ("T1", "RMSE better than TKD"): True, ("T1", "HFEN better than TKD"): False,
        ("T1", "SSIM better than TKD"): True,
        ("T2", "RMSE within 10% of Mesa-QSM (0.5x0.5x2)"): True,  # 32.9 / 30 = 1.097
        ("T2", "RMSE better than Mesa-QSM (0.7639x0.7639x3, as is)"): True,
        ("T2", "HFEN better than Mesa-QSM (0.7639x0.7639x3, as is)"): True,
        ("T2", "SSIM better than Mesa-QSM (0.7639x0.7639x3, as is)"): True,
    }
    summary["table2"]["Meta-QSM"]["rmse"]["mean"] = 33.3  # 1.11: outside 10%
    got = {(t, c): ok for t, c, _, ok in target_checks(man, summary)}
    assert got[("T2", "RMSE within 10% of Mesa-QSM (0.5x0.5x2)")] is False
    summary["table1"]["Meta-QSM"]["n"] = 0  # no Meta results: no checks for that table
    assert all(t != "T1" for t, *_ in target_checks(man, summary))
    # with the records: on the volumes both columns have (TKD has a third, harder one)
    summary["table1"]["Meta-QSM"]["n"] = 2

    def rec(label, case, rmse):
        return {"group": "table1", "label": label, "case": case,
                "metrics": {"rmse": rmse, "hfen": rmse, "ssim": 1 - rmse / 100}}

    recs = [rec("Meta-QSM", "0", 40), rec("Meta-QSM", "1", 50), rec("TKD", "0", 38),
            rec("TKD", "1", 48), rec("TKD", "2", 90)]
    got = {c: (v, ok) for t, c, v, ok in target_checks(man, summary, recs) if t == "T1"}
    assert got["RMSE better than TKD"] == ("45.00 vs 43.00 (n=2)", False)  # 59.0 over 3 would pass
    assert got["SSIM better than TKD"] == ("0.5500 vs 0.5700 (n=2)", False)
    # a volume outside the table (a longer run's leftovers) does not count
    recs += [rec("Meta-QSM", "7", 10), rec("TKD", "7", 90)]
    got = {c: v for t, c, v, _ in target_checks(man, summary, recs) if t == "T1"}
    assert got["RMSE better than TKD"] == "45.00 vs 43.00 (n=2)"


def test_classical_evaluation_never_imports_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from metaqsm.cli import main; "
            f"rc = main(['evaluate', '--suite', 'quick', '--methods', 'tkd', '--n', '1', '-o', "
            f"{str(tmp_path / 'r')!r}, '--no-progress']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "0 False", out.stderr


def test_weights_point_any_network_column_at_a_checkpoint(tmp_path):
    """--weights NAME=PATH takes every network method of the table (meta-unrolled included) and
    replaces only that method's weights."""
    from metaqsm.evaluate.suites import apply_weights, build_suite, check_weights

    ck = tmp_path / "ck.safetensors"
    ck.write_bytes(b"x")
    assert check_weights({"meta-unrolled": ck}) == {"meta-unrolled": str(ck)}
    suite = apply_weights(build_suite("quick", methods=["tkd", "meta", "meta-unrolled"]),
                          {"meta-unrolled": ck})
    params = {s.method: s.params.get("weights") for g in suite.groups for s in g.specs}
    assert params["meta-unrolled"] == str(ck) and params["meta"] is None
    with pytest.raises(ValueError, match="meta-unrolled"):
        check_weights({"unrolled": ck})
