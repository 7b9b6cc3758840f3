"""The participant level: every acquisition of a BIDS dataset through the pipeline, one after the
other, in a pool of local worker processes (``n_jobs``) or on a running Dask scheduler (a
cluster's, e.g. started by dask-jobqueue on SLURM or PBS, or a local ``dask scheduler``).

Everything that can be checked is checked before any work starts: the folders, the labels, the
methods and their options, the existing outputs, the scheduler. Then each acquisition runs on
its own (:func:`metaqsm.bids._participant.process_acquisition`); a failure is recorded and the
others go on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from ..pipeline import DEFAULT_BGREMOVE, DEFAULT_FIT, DEFAULT_INVERSION, DEFAULT_UNWRAP
from ._find import check_bids_dir, find_acquisitions
from ._names import BIDS_VERSION, error_path
from ._participant import ParticipantConfig, acquisition_state, process_acquisition
from ._threads import available_cores

__all__ = ["run_participants", "prepare_output_dir", "FIT_METHODS", "UNWRAP_METHODS",
           "BIDSIGNORE"]

FIT_METHODS = ("nonlinear", "linear")
"""The ``method`` values of :func:`metaqsm.phase.fit_echoes`."""
UNWRAP_METHODS = ("romeo", "laplacian")
"""The ``unwrap`` values of :func:`metaqsm.phase.fit_echoes`."""

BIDSIGNORE = ("logs/", ".metaqsm-work/", "*.png", "*.html", "*_log.txt", "*_qsm.tsv", "group_qsm.*",
              "*_localfield.*", "*_fieldmap.*", "*_swi.*", "*_minIP.*")
"""What the BIDS validator should not judge in OUTPUT_DIR: logs, pictures, reports and tables,
and the maps BIDS has no suffix for yet (a QSM total or local field in ppm; SWI and its mIP,
proposed by BEP 004)."""


def _check_output_dir(output_dir, bids_root):
    out = Path(os.path.abspath(output_dir))
    if out == bids_root:
        raise ValueError("output_dir must not be bids_dir itself (derivatives go elsewhere, "
                         "e.g. BIDS_DIR/derivatives/metaqsm)")
    if bids_root in out.parents:
        rel = out.relative_to(bids_root)
        if rel.parts[0] != "derivatives":
            raise ValueError(f"output_dir {out} is inside bids_dir but not under its "
                             "derivatives/ folder")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir {out} exists and is not a folder")
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(13, "the output folder is not writable", str(existing))
    return out


def _dataset_description(bids_root):
    from .._version import __version__

    try:
        raw = json.loads((bids_root / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        raw = {}
    return {
        "Name": f"metaqsm derivatives of {raw.get('Name', bids_root.name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "metaqsm",
            "Version": __version__,
            "Description": "Quantitative susceptibility mapping: multi-echo fit, brain mask, "
                           "background field removal, dipole inversion; R2*, T2*, SWI",
        }],
    }


_README = """Quantitative susceptibility mapping derivatives of the BIDS dataset {raw}, written by
metaqsm (metaqsm bids BIDS_DIR OUTPUT_DIR participant).

Per subject and session, in sub-X/[ses-Y/]anat/: Chimap (susceptibility, ppm), desc-ref_Chimap
(referenced to a region), mask and desc-eroded_mask, fieldmap and desc-noise_fieldmap (total
field and its noise, ppm), localfield (ppm), R2starmap (1/s), T2starmap (s), swi and minIP, each
with a JSON sidecar (method, parameters, inputs with SHA-256, timings, version); a one-row
desc-summary_qsm.tsv and an HTML report. group_qsm.tsv gathers the summaries (metaqsm bids ...
group). Failed acquisitions leave their error in logs/.
"""


def prepare_output_dir(output_dir, bids_dir):
    """Create ``output_dir`` (with its parents) and its ``dataset_description.json``, ``README``
    and ``.bidsignore`` when missing; refuse a folder that holds another dataset.

    Returns the output folder as an absolute Path.
    """
    from ..io import atomic_path

    bids_root = check_bids_dir(bids_dir)
    out = _check_output_dir(output_dir, bids_root)
    desc = out / "dataset_description.json"
    if desc.exists():
        try:
            have = json.loads(desc.read_text())
        except json.JSONDecodeError:
            have = {}
        names = [g.get("Name") for g in have.get("GeneratedBy", []) if isinstance(g, dict)]
        if have.get("DatasetType") != "derivative" or "metaqsm" not in names:
            raise ValueError(f"output_dir {out} holds another dataset (its "
                             "dataset_description.json is not metaqsm's); choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    if not desc.exists():
        with atomic_path(desc) as tmp:
            tmp.write_text(json.dumps(_dataset_description(bids_root), indent=2) + "\n")
    readme = out / "README"
    if not readme.exists():
        with atomic_path(readme) as tmp:
            tmp.write_text(_README.format(raw=bids_root.name))
    ignore = out / ".bidsignore"
    if not ignore.exists():
        with atomic_path(ignore) as tmp:
            tmp.write_text("\n".join(BIDSIGNORE) + "\n")
    return out


def _pipeline_options(fit_method, unwrap_method, mask_options, bgremove_method,
                      bgremove_options, inversion_method, inversion_options):
    """Check the methods and options against the method table, before any work."""
    from ..methods import bgremoval, inversion

    if fit_method not in FIT_METHODS:
        raise ValueError(f"fit_method must be one of {', '.join(FIT_METHODS)}, got "
                         f"{fit_method!r}")
    if unwrap_method not in UNWRAP_METHODS:
        raise ValueError(f"unwrap_method must be one of {', '.join(UNWRAP_METHODS)}, got "
                         f"{unwrap_method!r}")
    bg = bgremoval(bgremove_method, "bgremove_method")
    try:
        bg_opts = bg.check_options(bgremove_options)
    except ValueError as exc:
        raise ValueError(f"bgremove_options: {exc}") from None
    out = {"fit_method": fit_method, "unwrap_method": unwrap_method,
           "mask_options": dict(mask_options or {}) or None,
           "bgremove_method": bgremove_method, "bgremove_options": bg_opts,
           "inversion_method": inversion_method}
    if inversion_method is not None:
        inv = inversion(inversion_method, "inversion_method")
        try:
            out["inversion_options"] = inv.check_options(inversion_options)
        except ValueError as exc:
            raise ValueError(f"inversion_options: {exc}") from None
        try:  # torch and a model: the voxel size is checked per subject
            inv.function()
        except ImportError as exc:
            raise ValueError(f"inversion_method {inversion_method} is not available: "
                             f"{exc}") from None
    return out


def _failed(acq, message, output_dir):
    log = error_path(output_dir, acq.subject, acq.session, acq.entities)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{acq.label}\n{message}\n")
    return {"subject": acq.subject, "session": acq.session, "prefix": acq.prefix,
            "label": acq.label, "status": "failed", "error": message, "row": None,
            "outputs": [], "log": str(log), "seconds": 0.0}


CONNECT_TIMEOUT = "20s"
"""How long to try reaching a Dask scheduler before giving up (before any work)."""


def _connect(address):
    """A Dask client of the scheduler at ``address`` (``tcp://host:port``) or described by a
    scheduler file (JSON)."""
    from distributed import Client

    try:
        if str(address).endswith(".json") and Path(address).is_file():
            return Client(scheduler_file=str(address), timeout=CONNECT_TIMEOUT)
        return Client(str(address), timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ValueError(f"dask_scheduler: cannot reach a Dask scheduler at {address} "
                         f"({type(exc).__name__}: {exc})") from None


def _task_on_cluster(acq, cfg):
    """Run on a cluster's worker: threads per subject from that worker's cores and threads."""
    if cfg.threads is None:
        from distributed import get_worker

        worker = get_worker()
        cfg = dataclasses.replace(cfg, threads=max(1, available_cores() // max(
            1, worker.state.nthreads)))
    return process_acquisition(acq, cfg)


def _in_worker(acq, cfg):
    """What a pool worker runs: ``process_acquisition`` looked up in the worker (pickled by name)."""
    return process_acquisition(acq, cfg)


def _run_local(todo, cfg, n_jobs, callback):
    """``n_jobs`` worker processes on this machine (the standard library's process pool).

    On Linux the workers are forked from this process, which has imported the pipeline, the maps
    and the report already, so a worker starts in milliseconds with nothing to import; measured
    against a local Dask cluster (whose workers start fresh interpreters and import numpy,
    scipy, matplotlib and metaqsm, 6-7 CPU seconds for two) in docs/bids.md. A worker that dies
    (killed for memory) breaks the pool: the acquisitions it left unfinished run again, each in a
    worker of its own, so that only the one that kills its worker fails.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    import metaqsm.maps  # noqa: F401 - imported once here, inherited by forked workers
    import metaqsm.pipeline  # noqa: F401
    import metaqsm.qc  # noqa: F401

    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    records = []

    def done(record):
        records.append(record)
        if callback:
            callback(record)

    def failed(acq, exc):  # an error the worker reported (e.g. a result that cannot be pickled)
        done(_failed(acq, f"the worker failed: {type(exc).__name__}: {exc}", cfg.output_dir))

    retry = []
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(todo)), mp_context=context) as pool:
        futures = {pool.submit(_in_worker, acq, cfg): acq for acq in todo}
        for fut in as_completed(futures):
            acq = futures[fut]
            try:
                done(fut.result())
            except BrokenProcessPool:  # a worker died: every unfinished one goes again, alone
                retry.append(acq)
            except Exception as exc:  # noqa: BLE001
                failed(acq, exc)
    for acq in retry:  # one worker each: only the acquisition that kills its worker fails
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                done(pool.submit(_in_worker, acq, cfg).result())
            except BrokenProcessPool:
                done(_failed(acq, "the worker process died (killed, e.g. out of memory)",
                             cfg.output_dir))
            except Exception as exc:  # noqa: BLE001
                failed(acq, exc)
    return records


def _run_dask(client, todo, cfg, remote, callback):
    from distributed import as_completed

    func = _task_on_cluster if remote else process_acquisition
    futures = {client.submit(func, acq, cfg, pure=False, key=f"metaqsm-{acq.prefix}"): acq
               for acq in todo}
    records = []
    for fut in as_completed(futures):
        acq = futures[fut]
        try:
            record = fut.result()
        except Exception as exc:  # noqa: BLE001 - a worker lost or killed (memory)
            record = _failed(acq, f"the Dask worker failed: {type(exc).__name__}: {exc}",
                             cfg.output_dir)
        records.append(record)
        if callback:
            callback(record)
    return records


def run_participants(bids_dir, output_dir, *, participant_label=None, session_label=None,
                     n_jobs=1, dask_scheduler=None, threads_per_subject=None, force=False,
                     skip_existing=True, phase_units="auto", fit_method=DEFAULT_FIT,
                     unwrap_method=DEFAULT_UNWRAP, mask_options=None,
                     bgremove_method=DEFAULT_BGREMOVE, bgremove_options=None,
                     inversion_method=DEFAULT_INVERSION, inversion_options=None,
                     figure=True, maps=True, report=True, reference_region="brain",
                     command_line=None, callback=None):
    """Run the pipeline on every multi-echo GRE acquisition of a BIDS dataset.

    Parameters
    ----------
    bids_dir : path
        The raw BIDS dataset.
    output_dir : path
        The derivatives folder, created with its parents when missing (e.g.
        ``BIDS_DIR/derivatives/metaqsm`` when ``derivatives/`` does not exist yet). Outputs go
        to ``output_dir/sub-X/[ses-Y/]anat/``.
    participant_label, session_label : str or list of str, optional
        Subjects and sessions to process (default all).
    n_jobs : int
        Acquisitions processed at once on this machine, each in its own worker process (a
        process pool, forked on Linux; 1: one after the other in this process). Default 1.
    dask_scheduler : str, optional
        Address (``tcp://host:port``) or scheduler file (``.json``) of a running Dask
        scheduler: the acquisitions are submitted to its workers instead (their paths must be
        the same there). Not with ``n_jobs`` above 1.
    threads_per_subject : int, optional
        Threads of each acquisition's FFT, BLAS and torch pools. Default: all cores with
        ``n_jobs`` 1, cores // ``n_jobs`` on a local cluster, a worker's cores // its threads
        on a scheduler's workers.
    force : bool
        Process again and overwrite existing outputs.
    skip_existing : bool
        Skip finished acquisitions (their summary table exists). Without it (and without
        ``force``), existing outputs are an error before any work. Default True.
    phase_units : str
        As :func:`metaqsm.io.acquisition.load_scan` (default ``"auto"``: radians or a
        vendor's range, found from the values).
    fit_method, unwrap_method, mask_options, bgremove_method, bgremove_options,
    inversion_method, inversion_options :
        As :func:`metaqsm.pipeline.run_pipeline`.
    figure, maps, report : bool
        Write the PNG of chi; R2*, T2*, SWI, mIP and referenced chi (needs
        :mod:`metaqsm.maps`); the HTML report (needs :mod:`metaqsm.qc`).
    reference_region : str
        Region the referenced chi is relative to (``"brain"`` or ``"csf"``).
    command_line : str, optional
        What the sidecars and logs record as the command (the CLI passes its own).
    callback : callable, optional
        Called with each acquisition's record as it finishes (progress).

    Returns
    -------
    list of dict
        One record per acquisition found: ``label``, ``status`` ("ok", "failed", "skipped"),
        ``error``, ``seconds``, ``row`` (its summary), ``outputs``.

    Raises
    ------
    ValueError, FileNotFoundError, NotADirectoryError, PermissionError
        Before any work: a missing or non-BIDS ``bids_dir``, an ``output_dir`` that is not
        usable, unknown labels, methods or options, ``n_jobs`` below 1, an unreachable
        scheduler, existing outputs without ``skip_existing`` or ``force``, no acquisition.
    """
    from .._validate import as_int
    from ..units import PHASE_UNITS

    n_jobs = as_int(n_jobs, "n_jobs", minimum=1)
    if dask_scheduler is not None and n_jobs > 1:
        raise ValueError("n_jobs and dask_scheduler exclude each other: the scheduler's "
                         "workers decide how many subjects run at once")
    if threads_per_subject is not None:
        threads_per_subject = as_int(threads_per_subject, "threads_per_subject", minimum=1)
    if phase_units not in PHASE_UNITS:
        raise ValueError(f"phase_units must be one of {', '.join(PHASE_UNITS)}, got "
                         f"{phase_units!r}")
    if reference_region not in ("brain", "csf"):
        raise ValueError(f"reference_region must be 'brain' or 'csf', got {reference_region!r}")
    bids_root = check_bids_dir(bids_dir)
    out = _check_output_dir(output_dir, bids_root)
    pipeline = _pipeline_options(fit_method, unwrap_method, mask_options, bgremove_method,
                                 bgremove_options, inversion_method, inversion_options)
    acqs = find_acquisitions(bids_root, participant_label=participant_label,
                             session_label=session_label)
    if not acqs:
        raise ValueError(f"bids_dir {bids_root} holds no multi-echo GRE acquisition with phase "
                         "(*_part-phase_MEGRE.nii[.gz] or part-real/imag) for the labels given")

    records, todo = [], []
    existing = []
    for acq in acqs:
        if acq.problem is not None:
            continue
        state = acquisition_state(acq, out)
        if state == "absent" or force:
            todo.append(acq)
        elif state == "done" and skip_existing:
            records.append({"subject": acq.subject, "session": acq.session, "prefix": acq.prefix,
                            "label": acq.label, "status": "skipped", "error": None,
                            "row": None, "outputs": [], "log": None, "seconds": 0.0})
        else:
            existing.append((acq.label, state))
    if existing:
        what = ", ".join(f"{label} ({'unfinished' if s == 'partial' else 'finished'})"
                         for label, s in existing)
        hint = "use force=True to process them again" if skip_existing else \
            "use skip_existing=True to keep them, or force=True to process them again"
        raise FileExistsError(f"outputs of {what} exist in {out}; {hint}")

    threads = threads_per_subject
    if threads is None and n_jobs > 1:
        threads = max(1, available_cores() // n_jobs)
    cfg = ParticipantConfig(bids_dir=str(bids_root), output_dir=str(out), pipeline=pipeline,
                            phase_units=phase_units, force=force, figure=figure, maps=maps,
                            report=report, reference_region=reference_region, threads=threads,
                            command_line=command_line)
    client = None
    if todo and dask_scheduler is not None:
        client = _connect(dask_scheduler)
    try:
        prepare_output_dir(out, bids_root)
        for acq in acqs:
            if acq.problem is not None:
                record = _failed(acq, acq.problem, out)
                records.append(record)
                if callback:
                    callback(record)
        if client is not None:
            records += _run_dask(client, todo, cfg, dask_scheduler is not None, callback)
        elif todo and n_jobs > 1:
            records += _run_local(todo, cfg, n_jobs, callback)
        else:
            for acq in todo:
                record = process_acquisition(acq, cfg)
                records.append(record)
                if callback:
                    callback(record)
    finally:
        if client is not None:
            client.close()
    order = {acq.prefix: i for i, acq in enumerate(acqs)}
    return sorted(records, key=lambda r: order.get(r["prefix"], 0))
