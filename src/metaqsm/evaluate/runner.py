"""Running a suite: every (case, method) reconstructed, scored and written as soon as it is done.

Layout of the output folder (``report/``)::

    suite.json                      what was asked (suite, groups, cases, methods), machine, version
    results.jsonl                   the results, one JSON line per (group, case, method): metrics,
                                    run time, geometry (appended and synced when each is done)
    slices/<group>/<case>/<method>.npz     orthogonal slices of the figure cases (to redraw figures)
    volumes/<group>/<case>/*.nii.gz        reconstructions, truth, field, mask (quick suite, or
                                           ``save_volumes=True``)
    status.json                     methods that were not available or failed, with the reason
    results.csv, summary.json, report.md, index.html, figures/*.png     (see report.py)

A result line exists only for a finished reconstruction (a line cut short by a kill is ignored),
so a killed run continues with ``resume=True`` where it stopped: done pairs are skipped, their
volumes are never rebuilt.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from .._version import __version__
from ..io import atomic_path, save_nifti, write_json
from ..methods import inversion
from .report import RESULTS, load_results
from .suites import slug

MANIFEST = "suite.json"
STATUS = "status.json"
OWN_DIRS = ("slices", "volumes", "figures")
OWN_FILES = (RESULTS, "results.csv", "summary.json", "report.md", "index.html", STATUS)


def append_result(out, record):
    """Append one result to ``out/results.jsonl`` and sync it to disk (a kill loses at most the
    line being written, which :func:`~metaqsm.evaluate.report.load_results` then ignores)."""
    import os

    line = json.dumps(record, sort_keys=True, default=float) + "\n"
    with open(Path(out) / RESULTS, "a", encoding="utf-8") as fh:
        if fh.tell() > 0:  # a line cut short by a kill must not swallow the next one
            with open(Path(out) / RESULTS, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    fh.write("\n")
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def slices_path(out, group, case, key):
    return Path(out) / "slices" / group.name / case.id / f"{slug(key)}.npz"


def volume_path(out, group, case, key):
    return Path(out) / "volumes" / group.name / case.id / f"{slug(key)}.nii.gz"


def machine_info():
    """Platform, CPU count, Python and library versions (torch only if installed; not imported)."""
    import os
    import platform
    from importlib import metadata

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    from .._parallel import available_cores

    usable = available_cores()
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "metaqsm": __version__,
    }
    for pkg in ("numpy", "scipy", "scikit-image", "torch"):
        info[pkg] = version(pkg)
    try:
        import subprocess

        root = Path(__file__).resolve().parents[3]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def manifest(suite, *, methods_asked=None, n=None):
    """The JSON-able description of a suite: what the report will tabulate."""
    return {
        "suite": suite.name,
        "title": suite.title,
        "description": suite.description,
        "has_truth": suite.has_truth,
        "version": __version__,
        "methods_asked": None if methods_asked is None else list(methods_asked),
        "n": n,
        "groups": [
            {"name": g.name, "title": g.title, "description": g.description, "sweep": g.sweep,
             "x": g.x, "x_label": g.x_label, "source": g.source,
             "cases": [c.id for c in g.cases], "figure_cases": [c.id for c in g.cases[:g.figure_cases]],
             "specs": [s.describe() for s in g.specs]}
            for g in suite.groups
        ],
    }


def prepare_output(out, suite, *, force=False, resume=False):
    """Check the output folder before any work starts.

    An existing evaluation there needs ``resume`` (continue it: same suite) or ``force`` (start
    over: the evaluation's own files and folders are removed, nothing else).
    """
    out = Path(out)
    if force and resume:
        raise ValueError("--force and --resume exclude each other: --force starts over, --resume "
                         "continues")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a folder")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    old = out / MANIFEST
    if old.exists():
        try:
            previous = json.loads(old.read_text())
        except (OSError, ValueError):
            previous = {}
        if resume:
            if previous.get("suite") != suite.name:
                raise ValueError(f"--resume: {out} holds the {previous.get('suite')!r} evaluation, "
                                 f"not {suite.name!r}; use another folder or --force")
        elif force:
            for d in OWN_DIRS:
                shutil.rmtree(out / d, ignore_errors=True)
            for f in OWN_FILES + (MANIFEST,):
                (out / f).unlink(missing_ok=True)
        else:
            raise FileExistsError(f"output {out} holds a previous evaluation; use --resume to "
                                  "continue it or --force to start over")
    elif out.exists() and any(out.iterdir()) and not (force or resume):
        raise FileExistsError(f"output {out} exists and is not empty; use --force to write into it")
    out.mkdir(exist_ok=True)
    return out


def _call(spec, sample, device):
    """Run one method on one sample; returns (chi, seconds)."""
    method = inversion(spec.method)
    func = method.function()
    kwargs = dict(spec.params)
    if method.is_network:
        kwargs.setdefault("device", device)
        if isinstance(kwargs.get("weights"), str):
            from ..dl.registry import SHIPPED, shipped_path

            if kwargs["weights"] in SHIPPED:  # a shipped model's name -> its file
                kwargs["weights"] = str(shipped_path(kwargs["weights"]))
    for key, value in method.inputs_from({"magnitude": sample.get("magnitude"),
                                          "noise_std": sample.get("noise")}).items():
        kwargs.setdefault(key, value)
    field, mask = sample["field"], sample["mask"]
    vsz, b0 = np.asarray(sample["voxel_size"], float), np.asarray(sample["b0_dir"], float)
    t0 = time.perf_counter()
    if spec.resample_to is None:
        chi = func(field, mask, voxel_size=vsz, b0_dir=b0, **kwargs)
    else:
        chi = naive_interpolation(func, field, mask, voxel_size=vsz, b0_dir=b0,
                                  target_voxel_size=spec.resample_to, **kwargs)
    seconds = time.perf_counter() - t0
    chi = np.asarray(chi, dtype=np.float32)
    if chi.shape != np.shape(field):
        raise ValueError(f"{spec.label} returned shape {chi.shape}, expected {np.shape(field)}")
    return chi, seconds


def probe(spec):
    """Raise the reason a network spec cannot run (its registered function or shipped model is
    missing) before any volume is built; classical methods only need to import."""
    method = inversion(spec.method)
    method.function()
    if method.is_network:
        from ..dl.registry import SHIPPED, shipped_path

        weights = spec.params.get("weights")
        if isinstance(weights, str) and weights in SHIPPED:
            shipped_path(weights)
        elif weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"weights {weights} do not exist")
        elif weights is None and len(method.shipped) == 1:  # one shipped model (Mesa: two)
            shipped_path(method.shipped[0])


def naive_interpolation(func, field, mask, *, voxel_size, b0_dir, target_voxel_size, **kwargs):
    """Reconstruct at another voxel size: resample the field, invert there, resample back.

    The field is resampled with cubic splines (``scipy.ndimage.zoom``, ``grid_mode=True`` so voxel
    edges stay aligned) to the grid of ``target_voxel_size`` covering the same field of view; the
    mask with nearest-neighbour; the reconstruction is resampled back to the original grid and
    masked. This is the "naive interpolation" baseline of Meta-QSM paper Tables 2-3 (a network
    trained at one resolution applied to another after resampling).
    """
    from scipy.ndimage import zoom

    from .._validate import as_mask, as_volume, as_voxel_size

    field = as_volume(field, "field")
    mask = as_mask(mask, field.shape)
    vsz = as_voxel_size(voxel_size)
    target = as_voxel_size(target_voxel_size, "target_voxel_size")
    shape = np.array(field.shape)
    new_shape = np.maximum(np.round(shape * vsz / target).astype(int), 1)
    factors = new_shape / shape
    f2 = zoom(field, factors, order=3, mode="grid-constant", grid_mode=True)
    m2 = zoom(mask.astype(np.float32), factors, order=0, mode="grid-constant", grid_mode=True) > 0.5
    # the effective voxel size of the resampled grid (equals target up to rounding of the shape)
    vsz2 = vsz * shape / new_shape
    chi2 = func((f2 * m2).astype(np.float32), m2, voxel_size=vsz2, b0_dir=b0_dir, **kwargs)
    back = zoom(np.asarray(chi2, np.float32), shape / new_shape, order=3, mode="grid-constant",
                grid_mode=True)
    return (back * mask).astype(np.float32)


def _json_metrics(metrics):
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out[k] = {str(kk): float(vv) for kk, vv in v.items()}
        else:
            out[k] = float(v)
    return out


def _save_npz(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, force=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def run_suite(suite, out, *, force=False, resume=False, progress=True, save_volumes=None,
              device="cpu", methods_asked=None, n=None, command=None):
    """Run every (case, method) pair of ``suite`` into ``out`` and write the report.

    Parameters
    ----------
    suite : Suite
        From :func:`metaqsm.evaluate.build_suite` or :func:`metaqsm.evaluate.user_suite`.
    out : path
        Output folder (created; its parent must exist).
    force, resume : bool
        Start over / continue an existing evaluation in ``out`` (see :func:`prepare_output`).
    progress : bool
        Show a tqdm progress bar over the (case, method) pairs.
    save_volumes : bool, optional
        Write every reconstruction (and truth, field, mask) as NIfTI under ``volumes/``; default
        the suite's choice (on for "quick" and user cases, off for the large suites).
    device : str
        Torch device of the network methods ("cpu", "cuda").

    Returns
    -------
    dict
        ``{"out": Path, "computed": int, "skipped": int, "unavailable": {label: reason},
        "failed": {label: [reasons]}, "report": dict of written paths}``.
    """
    from tqdm.auto import tqdm

    from ..metrics import compute_metrics
    from .figures import case_slices
    from .report import build_report

    out = prepare_output(out, suite, force=force, resume=resume)
    if save_volumes is None:
        save_volumes = suite.save_volumes
    write_json(out / MANIFEST, {**manifest(suite, methods_asked=methods_asked, n=n),
                                "machine": machine_info(), "command": command,
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, force=True)
    status = {"unavailable": {}, "failed": {}}
    pairs = [(g, c, s) for g in suite.groups for c in g.cases for s in g.specs]
    figure_ids = {(g.name, c.id) for g in suite.groups for c in g.cases[:g.figure_cases]}

    finished = {(r.get("group"), r.get("case"), r.get("label")) for r in load_results(out)}

    def done(g, c, s):
        if (g.name, c.id, s.label) not in finished:
            return False
        if (g.name, c.id) in figure_ids and not slices_path(out, g, c, s.label).exists():
            return False
        return not save_volumes or volume_path(out, g, c, s.label).exists()

    for s in {s.label: s for g in suite.groups for s in g.specs}.values():
        try:
            probe(s)
        except Exception as exc:  # reported as "not available (reason)"
            status["unavailable"][s.label] = f"{type(exc).__name__}: {exc}".strip()
    skipped = sum(done(g, c, s) for g, c, s in pairs)
    computed = 0
    bar = tqdm(total=len(pairs), initial=skipped, disable=not progress, unit="recon",
               desc=f"evaluate {suite.name}", dynamic_ncols=True)
    try:
        for g in suite.groups:
            for c in g.cases:
                todo = [s for s in g.specs if not done(g, c, s)
                        and s.label not in status["unavailable"]]
                if not todo:
                    bar.update(sum(1 for s in g.specs if s.label in status["unavailable"]
                                   and not done(g, c, s)))
                    continue
                sample = c.load()
                is_figure = (g.name, c.id) in figure_ids
                truth = sample.get("chi") if suite.has_truth else None
                slicer = case_slices(sample) if is_figure else None
                if is_figure:
                    _save_inputs(out, g, c, sample, slicer, save_volumes)
                elif save_volumes:
                    _save_inputs(out, g, c, sample, None, save_volumes)
                for s in todo:
                    if s.label in status["unavailable"]:
                        bar.update(1)
                        continue
                    bar.set_postfix_str(f"{g.name}/{c.id}/{s.label}")
                    try:
                        with warnings.catch_warnings():
                            # expected ones, e.g. "Mesa weights trained at another voxel size"
                            warnings.simplefilter("ignore")
                            chi, seconds = _call(s, sample, device)
                    except Exception as exc:  # a method must not end a run of hours; reported
                        reason = f"{type(exc).__name__}: {exc}".strip()
                        if inversion(s.method).is_network or isinstance(exc, ImportError):
                            status["unavailable"][s.label] = reason
                        else:
                            status["failed"].setdefault(s.label, []).append(f"{c.id}: {reason}")
                        write_json(out / STATUS, status, force=True)
                        bar.update(1)
                        continue
                    record = {
                        "group": g.name, "case": c.id, "label": s.label, "method": s.method,
                        "params": s.params,
                        "resample_to": None if s.resample_to is None else list(s.resample_to),
                        "time_s": seconds, "shape": list(np.shape(sample["field"])),
                        "voxel_size": [float(v) for v in sample["voxel_size"]],
                        "b0_dir": [float(v) for v in sample["b0_dir"]],
                        "version": __version__,
                    }
                    if truth is not None:
                        record["metrics"] = _json_metrics(compute_metrics(
                            chi, truth, sample["mask"], labels=sample.get("labels")))
                    if save_volumes:
                        p = volume_path(out, g, c, s.label)
                        p.parent.mkdir(parents=True, exist_ok=True)
                        save_nifti(p, chi, sample.get("affine", _affine(sample)), force=True)
                        record["volume"] = str(p.relative_to(out))
                    if is_figure:
                        _save_npz(slices_path(out, g, c, s.label), **slicer(chi))
                    append_result(out, record)
                    computed += 1
                    bar.update(1)
                del sample
    finally:
        bar.close()
        write_json(out / STATUS, status, force=True)
    written = build_report(out)
    return {"out": out, "computed": computed, "skipped": skipped,
            "unavailable": status["unavailable"], "failed": status["failed"], "report": written}


def _affine(sample):
    return np.diag([*np.asarray(sample["voxel_size"], float), 1.0])


def _save_inputs(out, g, c, sample, slicer, save_volumes):
    """Field, truth and mask of a case: slices for figures, and volumes when asked."""
    items = {"field": sample["field"], "mask": sample["mask"]}
    if sample.get("chi") is not None:
        items["truth"] = sample["chi"]
    for key, vol in items.items():
        if slicer is not None:
            p = slices_path(out, g, c, key)
            if not p.exists():
                _save_npz(p, **slicer(vol))
        if save_volumes:
            p = volume_path(out, g, c, key)
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                save_nifti(p, vol, sample.get("affine", _affine(sample)), force=True,
                           dtype=np.uint8 if key == "mask" else np.float32)
