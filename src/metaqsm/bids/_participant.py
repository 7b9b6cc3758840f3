"""One acquisition, start to end: read it, run the pipeline, compute the maps beside chi, write
its derivatives, all or nothing.

:func:`process_acquisition` is what every worker runs (in this process, a local Dask worker or a
cluster's). It never raises for a failure of the data: it returns a record with
``status="failed"`` and the error, and writes the traceback to ``OUTPUT_DIR/logs/``, so one bad
subject does not stop the others.

All of an acquisition's files are first written into a private folder under
``OUTPUT_DIR/.metaqsm-work/`` (by :func:`metaqsm.pipeline.write_outputs`, all or nothing, and
:func:`metaqsm.io.write_all`), then renamed into ``sub-X/[ses-Y/]anat/``, the summary table
last: its presence marks a finished acquisition.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import traceback
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._names import (MAP_OUTPUTS, REPORT_SUFFIX, SUMMARY_SUFFIX, anat_dir, error_path,
                     summary_path)
from ._threads import limit_threads

__all__ = ["ParticipantConfig", "process_acquisition", "acquisition_state", "output_names",
           "WORK_DIR"]

WORK_DIR = ".metaqsm-work"
"""Folder in OUTPUT_DIR where acquisitions are assembled before they are renamed into place."""


@dataclass
class ParticipantConfig:
    """What every acquisition is processed with (picklable, sent to the workers).

    ``pipeline`` holds the keywords of :func:`metaqsm.pipeline.run_pipeline` (methods and
    options); ``threads`` the threads per pool (None: leave the process's setting);
    ``maps`` whether to write R2*, T2*, SWI, mIP and referenced chi (when :mod:`metaqsm.maps`
    is installed); ``reference_region`` the region chi is referenced to; ``command_line`` what
    the sidecars record as the command.
    """

    bids_dir: str
    output_dir: str
    pipeline: dict = field(default_factory=dict)
    phase_units: str = "auto"
    force: bool = False
    figure: bool = True
    maps: bool = True
    report: bool = True
    reference_region: str = "brain"
    threads: int | None = None
    command_line: str | None = None


def _have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _staged_names(acq, paths):
    """Staged path -> final path in the subject's anat folder (the pipeline names its files
    ``sub-X[_ses-Y]_...``; the final names add the acquisition's other entities)."""
    from ..io.derivatives import entity_prefix

    short = entity_prefix(acq.subject, acq.session)
    out = {}
    for p in paths:
        name = Path(p).name
        if not name.startswith(short + "_"):
            raise RuntimeError(f"unexpected staged file {name}")  # a naming bug, not bad data
        out[Path(p)] = f"{acq.prefix}{name[len(short):]}"
    return out


def output_names(acq):
    """Every file name the acquisition may write in its anat folder."""
    from ..io.derivatives import PIPELINE_OUTPUTS, sidecar_path

    suffixes = [s for s, _, _ in PIPELINE_OUTPUTS.values()]
    suffixes += [s for s, _, _ in MAP_OUTPUTS.values()] + [SUMMARY_SUFFIX, REPORT_SUFFIX,
                                                          "log.txt"]
    names = {f"{acq.prefix}_{s}" for s in suffixes}
    return sorted(names | {sidecar_path(n).name for n in names if n.endswith((".nii.gz", ".nii"))})


def acquisition_state(acq, output_dir):
    """``"done"`` (its summary exists), ``"partial"`` (some of its outputs exist, no summary)
    or ``"absent"``."""
    if summary_path(output_dir, acq.subject, acq.session, acq.entities).exists():
        return "done"
    folder = anat_dir(output_dir, acq.subject, acq.session)
    if any((folder / name).exists() for name in output_names(acq)):
        return "partial"
    return "absent"


def _equally_spaced(tes):
    d = np.diff(np.asarray(tes, float))
    return d.size >= 2 and np.allclose(d, d[0], rtol=1e-3)


def _compute_maps(mag, ph, result, region):
    """R2* (1/s), T2* (s), SWI, its mIP and referenced chi; ``{}`` without metaqsm.maps."""
    if not _have("metaqsm.maps"):
        return {}, {}
    from ..maps import (minimum_intensity_projection, r2star_map, reference_chi, swi,
                        t2star_from_r2star)

    tes = np.asarray(result.echo_times, float)
    out, params = {}, {}
    if mag.shape[-1] >= 2:
        method = "arlo" if len(tes) >= 3 and _equally_spaced(tes) else "loglinear"
        out["r2star"] = r2star_map(mag, tes, result.mask, method=method)
        # BIDS gives T2starmap in seconds; metaqsm.maps returns ms
        out["t2star"] = (t2star_from_r2star(out["r2star"], result.mask) / 1000.0).astype(
            np.float32)
        params["r2star"] = params["t2star"] = {"method": method}
    out["swi"] = swi(mag, ph, result.mask, voxel_size=result.voxel_size,
                     echo_times=tes if mag.shape[-1] > 1 else None)
    params["swi"] = {"method": "haacke2004", "filter_mm": 8.0, "power": 4}
    slab_mm = 8.0
    n = max(1, int(round(slab_mm / float(result.voxel_size[2]))))
    if n <= out["swi"].shape[2]:
        out["minip"] = minimum_intensity_projection(out["swi"], voxel_size=result.voxel_size,
                                                    slab_mm=slab_mm, axis=2)
        params["minip"] = {"slab_mm": slab_mm, "axis": 2, "slices": n}
    if result.chi is not None:
        kwargs = {}
        if region == "csf":
            kwargs = {"voxel_size": result.voxel_size, "r2star": out.get("r2star"),
                      "magnitude": mag}
        out["chi_ref"], ref = reference_chi(result.chi, result.eroded_mask, region=region,
                                            **kwargs)
        out["chi_ref_region"], out["chi_reference"] = region, float(ref)
        params["chi_ref"] = {"region": region, "reference_ppm": float(ref)}
    return out, params


def _minip_affine(affine, n):
    """Affine of a sliding mIP over ``n`` slices along axis 2: slice ``k`` is centred on input
    slice ``k + (n - 1) / 2``."""
    a = np.array(affine, float)
    a[:3, 3] += a[:3, 2] * (n - 1) / 2.0
    return a


def _add_bids_keys(folder, sources, checksums):
    """Add what BIDS asks of derivatives to every staged JSON sidecar: ``Sources`` (the raw
    files as BIDS URIs), ``SpatialReference`` (the first magnitude: every output is on its
    grid), ``SkullStripped`` for the maps that are zero outside the brain, ``Type`` for the
    masks; and ``InputChecksums`` keyed by the inputs' paths relative to the dataset, as
    ``Inputs`` names them (the pipeline's writer checksums only paths it can open as given)."""
    from ..io import write_json

    for side in Path(folder).glob("*.json"):
        meta = json.loads(side.read_text())
        meta["InputChecksums"] = checksums
        meta.setdefault("Sources", sources)
        meta.setdefault("SpatialReference", sources[0])
        stem = side.name[: -len(".json")]
        if stem.endswith("_mask"):
            meta.setdefault("Type", "Brain")
        elif stem.endswith(("_Chimap", "_R2starmap", "_T2starmap", "_swi", "_minIP")):
            meta.setdefault("SkullStripped", True)
        write_json(side, meta, force=True)


def _run(acq, cfg, caught):
    """Process one acquisition; returns (summary row, final paths). Raises on failure."""
    from .._validate import MetaqsmWarning, check_acquisition
    from ..io import save_nifti, write_all, write_json
    from ..io.derivatives import entity_prefix, sidecar, sidecar_path
    from ..pipeline import record_warnings, run_pipeline, write_outputs
    from ._load import bids_uris, load_acquisition
    from ._table import format_tsv, summary_row

    t_start = time.perf_counter()
    out_root = Path(cfg.output_dir)
    read_notes = []
    with record_warnings(read_notes, "read"):
        scan = load_acquisition(acq, cfg.bids_dir, phase_units=cfg.phase_units)
    if scan.inputs.get("PhaseScale") not in (None, 1.0):
        read_notes.append(f"read: phase converted to radians (phase_units {cfg.phase_units}, "
                          f"scale {scan.inputs['PhaseScale']:.6g})")
    checksums = scan.inputs.pop("checksums")
    mag, ph, tes, b0 = check_acquisition(scan.magnitude, scan.phase, scan.echo_times,
                                         scan.field_strength)
    result = run_pipeline(mag, ph, echo_times=tes, field_strength=b0,
                          voxel_size=scan.voxel_size, b0_dir=scan.b0_dir, affine=scan.affine,
                          phase_units="radians-unchecked",  # the reader applied phase_units
                          progress=False, **cfg.pipeline)
    t0 = time.perf_counter()
    map_notes = []
    with record_warnings(map_notes, "maps"):
        maps, map_params = (_compute_maps(mag, ph, result, cfg.reference_region)
                            if cfg.maps else ({}, {}))
    t_maps = time.perf_counter() - t0 if maps else None

    notes = [*read_notes, *result.warnings, *map_notes]
    for w in caught:  # other libraries' warnings (metaqsm's own are recorded by stage above)
        text = f"{w.category.__name__}: {w.message}"
        if not issubclass(w.category, MetaqsmWarning) and text not in notes:
            notes.append(text)
    loss = 1.0 - result.eroded_mask.sum() / max(result.mask.sum(), 1)
    if loss > 0.5:
        notes.append(f"bgremove: kept only {100 * (1 - loss):.0f} % of the brain mask")

    work = out_root / WORK_DIR
    work.mkdir(exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{acq.prefix}.", dir=work))
    try:
        staged = write_outputs(result, stage, subject=acq.subject, session=acq.session,
                               inputs=scan.inputs, force=True, header=scan.header,
                               figure=cfg.figure, warnings=read_notes,
                               command_line=cfg.command_line, log=True, operation="bids")
        staged = list(staged.values()) + [sidecar_path(p) for k, p in staged.items()
                                          if k not in ("figure", "log")]
        short = entity_prefix(acq.subject, acq.session)
        items = []
        for key, array in maps.items():
            if key not in MAP_OUTPUTS:
                continue
            suffix, description, unit = MAP_OUTPUTS[key]
            path = stage / f"{short}_{suffix}"
            affine = result.affine
            if key == "minip":
                affine = _minip_affine(result.affine, map_params["minip"]["slices"])
            items.append((path, lambda tmp, a=array, af=affine: save_nifti(
                tmp, a, af, header=scan.header, force=True)))
            stages = {s: result.parameters.get(s, {}) for s in ("mask", "fit-echoes")}
            if key == "chi_ref":
                stages = dict(result.parameters)
            stages[key] = map_params.get(key, {})
            meta = sidecar(operation="bids", description=description, units=unit,
                           command_line=cfg.command_line, stages=stages, echo_times=tes,
                           field_strength=b0, voxel_size=result.voxel_size,
                           b0_dir=result.b0_dir, inputs=scan.inputs, checksums=checksums,
                           timings={"maps": t_maps or 0.0}, warnings=map_notes)
            items.append((sidecar_path(path), lambda tmp, m=meta: write_json(tmp, m, force=True)))
        staged += write_all(items, force=True)
        _add_bids_keys(stage, bids_uris(acq, cfg.bids_dir), checksums)
        if cfg.report and _have("metaqsm.qc"):
            from ..qc import subject_report_from_result

            report = stage / f"{short}_{REPORT_SUFFIX}"
            info = subject_report_from_result(report, result, magnitude=mag,
                                              r2star=maps.get("r2star"), swi=maps.get("swi"),
                                              warnings=notes, title=acq.label, force=True)
            notes += [w for w in info.get("warnings", []) if w not in notes]
            staged.append(report)
        timings = {"maps": t_maps, "total": time.perf_counter() - t_start}
        row = summary_row(acq, result, maps=maps, timings=timings, warnings=notes,
                          threads=cfg.threads)
        summary = stage / f"{short}_{SUMMARY_SUFFIX}"
        summary.write_text(format_tsv([row]))

        final_dir = anat_dir(out_root, acq.subject, acq.session)
        final_dir.mkdir(parents=True, exist_ok=True)
        names = _staged_names(acq, staged + [summary])
        if not cfg.force:
            from ..io import check_output_paths

            check_output_paths([final_dir / n for n in names.values()], force=False)
        # the summary last: it marks the acquisition finished
        for src in sorted(names, key=lambda p: p == summary):
            os.replace(src, final_dir / names[src])
        return row, [final_dir / n for n in names.values()]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.rmdir()  # only when no other worker is using it


def process_acquisition(acq, cfg):
    """Process one :class:`~metaqsm.bids._find.BidsAcquisition` with a
    :class:`ParticipantConfig`; never raises for a failure of the data.

    Returns
    -------
    dict
        ``subject``, ``session``, ``prefix``, ``status`` ("ok" or "failed"), ``error`` (one
        line, or None), ``seconds``, ``row`` (the summary row), ``outputs`` (paths written),
        ``log`` (the traceback file of a failure).
    """
    t0 = time.perf_counter()
    record = {"subject": acq.subject, "session": acq.session, "prefix": acq.prefix,
              "label": acq.label, "status": "ok", "error": None, "row": None, "outputs": [],
              "log": None}
    log = error_path(cfg.output_dir, acq.subject, acq.session, acq.entities)
    try:
        with limit_threads(cfg.threads), _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            row, outputs = _run(acq, cfg, caught)
        record.update(row=row, outputs=[str(p) for p in outputs])
        with contextlib.suppress(FileNotFoundError):
            log.unlink()
    except Exception as exc:  # noqa: BLE001 - one subject's failure must not stop the others
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record.update(status="failed", error=message)
        with contextlib.suppress(OSError):
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"{acq.label}\n{message}\n\n{traceback.format_exc()}")
            record["log"] = str(log)
    record["seconds"] = time.perf_counter() - t0
    return record
