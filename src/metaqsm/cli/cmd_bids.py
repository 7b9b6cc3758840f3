"""The BIDS App: ``metaqsm bids BIDS_DIR OUTPUT_DIR participant|group`` (every acquisition of a
study, in parallel on this machine or a Dask cluster), and ``metaqsm bids-example`` (a simulated
study to try it on)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..units import PHASE_UNITS
from . import _common

# library argument names -> this command's flags where they differ (the CLI translates errors)
_ALIASES = {"bids_dir": "BIDS_DIR", "output_dir": "OUTPUT_DIR", "root": "DIR",
            "inversion_method": "--method", "inversion_options": "--method-option",
            "bgremove_method": "--bgremove", "bgremove_options": "--bgremove-option",
            "fit_method": "--fit", "unwrap_method": "--unwrap",
            "threads_per_subject": "--threads-per-subject", "force": "--force",
            "skip_existing": "--skip-existing", "subjects": "--subjects",
            "sessions": "--sessions", "shape": "--shape", "voxel_size": "--voxel-size",
            "echo_times": "--echo-times", "parts": "--parts"}


def register(subparsers):
    from ..methods import BGREMOVALS, PLAIN_DEFAULT_INVERSION, inversion_names
    from ..pipeline import DEFAULT_BGREMOVE, DEFAULT_FIT, DEFAULT_INVERSION, DEFAULT_UNWRAP

    p = _common.add_parser(
        subparsers, "bids",
        help="BIDS App: every multi-echo GRE scan of a BIDS dataset -> BIDS derivatives",
        description="Run the QSM pipeline on every multi-echo gradient-echo acquisition of a "
        "BIDS dataset (sub-X[/ses-Y]/anat/*_echo-<n>_part-<mag|phase|real|imag>_MEGRE.nii[.gz] "
        "with JSON sidecars; also T2starw, swi and GRE scans with phase) and write BIDS "
        "derivatives to OUTPUT_DIR/sub-X/[ses-Y/]anat/: Chimap, masks, field maps, R2starmap, "
        "T2starmap, swi, minIP, desc-ref_Chimap, a summary table and an HTML report per "
        "acquisition. 'group' gathers the summaries into OUTPUT_DIR/group_qsm.tsv. A failed "
        "subject is reported and the others go on (exit status 1 at the end); a rerun skips "
        "finished ones.\n\n"
        "examples:\n"
        "  metaqsm bids study/ study/derivatives/metaqsm participant --n-jobs 2\n"
        "  metaqsm bids study/ study/derivatives/metaqsm participant --participant-label 01 02\n"
        "  metaqsm bids study/ study/derivatives/metaqsm participant "
        "--dask-scheduler tcp://10.0.0.5:8786\n"
        "  metaqsm bids study/ study/derivatives/metaqsm group",
    )
    p.add_argument("bids_dir", metavar="BIDS_DIR", help="the BIDS dataset")
    p.add_argument("output_dir", metavar="OUTPUT_DIR",
                   help="derivatives folder (created with its parents, e.g. "
                        "BIDS_DIR/derivatives/metaqsm)")
    p.add_argument("analysis_level", choices=("participant", "group"),
                   help="participant: process the acquisitions; group: gather their tables")
    p.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                   help="subjects to process, with or without sub- (default: all)")
    p.add_argument("--session-label", nargs="+", default=None, metavar="LABEL",
                   help="sessions to process, with or without ses- (default: all)")
    g = p.add_argument_group("parallel")
    g.add_argument("--n-jobs", type=int, default=1, metavar="N",
                   help="acquisitions at once on this machine, each in its own worker process, "
                        "with cores/N threads each")
    g.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="submit to a running Dask scheduler (tcp://host:port, or its scheduler "
                        "file .json), e.g. one started by dask-jobqueue on SLURM/PBS")
    g.add_argument("--threads-per-subject", type=int, default=None, metavar="N",
                   help="threads of each acquisition's FFT/BLAS/torch pools (default: cores "
                        "divided by the acquisitions running at once)")
    g = p.add_argument_group("pipeline")
    g.add_argument("--method", default=DEFAULT_INVERSION, metavar="NAME",
                   help=f"dipole inversion: {', '.join(inversion_names())} (without torch the "
                   f"default is {PLAIN_DEFAULT_INVERSION})")
    g.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the inversion (repeatable), e.g. threshold=0.2")
    g.add_argument("--bgremove", default=DEFAULT_BGREMOVE, metavar="NAME",
                   help=f"background field removal: {', '.join(BGREMOVALS)}")
    g.add_argument("--bgremove-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the background removal (repeatable), e.g. radius=5")
    g.add_argument("--fit", default=DEFAULT_FIT, metavar="METHOD",
                   help="echo fit: nonlinear or linear")
    g.add_argument("--unwrap", default=DEFAULT_UNWRAP, metavar="romeo|laplacian",
                   help="phase unwrapping inside the echo fit")
    g.add_argument("--mask-erode-mm", type=float, default=0.0,
                   help="erode the estimated brain mask by this many mm")
    g.add_argument("--phase-units", choices=PHASE_UNITS, default="auto",
                   help="units of the phase files (auto: radians or a vendor's range, found "
                        "from the values; see docs/pipeline.md)")
    g.add_argument("--reference-region", choices=("brain", "csf"), default="brain",
                   help="region the referenced chi (desc-ref_Chimap) is relative to")
    g = p.add_argument_group("outputs")
    g.add_argument("--skip-existing", action=argparse.BooleanOptionalAction, default=True,
                   help="skip finished acquisitions (--no-skip-existing: existing outputs "
                        "are an error unless --force)")
    g.add_argument("--no-maps", action="store_true",
                   help="no R2*, T2*, SWI, mIP or referenced chi")
    g.add_argument("--no-report", action="store_true", help="no HTML reports")
    g.add_argument("--no-figure", action="store_true", help="no PNG of chi")
    g.add_argument("--quiet", action="store_true", help="no line per finished acquisition")
    _common.add_force_arg(p)
    p.set_defaults(func=run_bids)

    p = _common.add_parser(
        subparsers, "bids-example",
        help="write a simulated multi-echo GRE study as a BIDS dataset",
        description="Write a simulated BIDS study (metaqsm.bids.simulate_dataset): a brain "
        "phantom per subject, an acquisition per session with its noise, one NIfTI per echo "
        "and part with BIDS sidecars, dataset_description.json, README, participants.tsv. Then "
        "run the BIDS App on it.\n\n"
        "example:\n  metaqsm bids-example study/ && "
        "metaqsm bids study/ study/derivatives/metaqsm participant --n-jobs 2",
    )
    p.add_argument("root", metavar="DIR", help="the dataset folder (must not exist or be empty)")
    p.add_argument("--subjects", type=int, default=3, help="number of subjects")
    p.add_argument("--sessions", type=int, default=2, help="sessions per subject (0: none)")
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 48], metavar=("X", "Y", "Z"),
                   help="matrix size")
    p.add_argument("--voxel-size", type=float, nargs=3, default=[3.0, 3.0, 3.0],
                   metavar=("X", "Y", "Z"), help="voxel size in mm")
    p.add_argument("--echo-times", type=float, nargs="+", default=[0.004, 0.012, 0.020, 0.028],
                   metavar="TE", help="echo times in seconds")
    p.add_argument("--field-strength", type=float, default=3.0, metavar="T", help="tesla")
    p.add_argument("--parts", choices=("mag-phase", "real-imag"), default="mag-phase",
                   help="BIDS part- pairs written")
    p.add_argument("--truth", action="store_true",
                   help="also write the true chi and mask to DIR/derivatives/truth/")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run_bids_example)


def _options(items, flag, lookup, name, argument):
    from .cmd_pipeline import parse_options

    return parse_options(items, flag, lookup(name, argument))


def run_bids(args):
    from ..bids import run_group, run_participants
    from ..io.derivatives import command_line
    from ..methods import bgremoval, inversion

    args.flag_aliases = _ALIASES
    if args.analysis_level == "group":
        res = run_group(args.output_dir, participant_label=args.participant_label,
                        session_label=args.session_label, report=not args.no_report)
        ok = sum(r["status"] == "ok" for r in res["rows"])
        print(f"metaqsm bids group: {ok} acquisitions, {res['failed']} failed -> {res['table']}")
        if res["report"] is not None:
            print(f"  report index: {res['report']}")
        return 1 if res["failed"] else 0

    bg_opts = _options(args.bgremove_option, "--bgremove-option", bgremoval, args.bgremove,
                       "bgremove_method")
    inv_opts = _options(args.method_option, "--method-option", inversion, args.method,
                        "inversion_method")
    t0 = time.perf_counter()
    counter = {"n": 0}

    def progress(record):
        counter["n"] += 1
        if args.quiet:
            return
        status = record["status"] if record["error"] is None else \
            f"{record['status']}: {record['error']}"
        print(f"  [{counter['n']}] {record['label']}: {status} ({record['seconds']:.1f} s)",
              flush=True)

    records = run_participants(
        args.bids_dir, args.output_dir, participant_label=args.participant_label,
        session_label=args.session_label, n_jobs=args.n_jobs, dask_scheduler=args.dask_scheduler,
        threads_per_subject=args.threads_per_subject, force=args.force,
        skip_existing=args.skip_existing, phase_units=args.phase_units, fit_method=args.fit,
        unwrap_method=args.unwrap,
        mask_options={"erode_mm": args.mask_erode_mm} if args.mask_erode_mm else None,
        bgremove_method=args.bgremove, bgremove_options=bg_opts, inversion_method=args.method,
        inversion_options=inv_opts, figure=not args.no_figure, maps=not args.no_maps,
        report=not args.no_report, reference_region=args.reference_region,
        command_line=command_line(args.argv), callback=progress)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    print(f"metaqsm bids participant: {counts['ok']} processed, {counts['skipped']} skipped "
          f"(finished before), {counts['failed']} failed in {time.perf_counter() - t0:.1f} s "
          f"-> {args.output_dir}")
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        width = max(len(r["label"]) for r in failed)
        print("failed acquisitions:", file=sys.stderr)
        for r in failed:
            print(f"  {r['label']:<{width}}  {r['error']}" + (f"  (log: {r['log']})"
                                                              if r.get("log") else ""),
                  file=sys.stderr)
        return 1
    return 0


def run_bids_example(args):
    from ..bids import simulate_dataset

    args.flag_aliases = _ALIASES
    t0 = time.perf_counter()
    written = simulate_dataset(args.root, subjects=args.subjects, sessions=args.sessions,
                               shape=args.shape, voxel_size=args.voxel_size,
                               echo_times=args.echo_times, field_strength=args.field_strength,
                               parts=args.parts, truth=args.truth, rng=args.seed)
    print(f"metaqsm bids-example: {args.subjects} subjects, {len(written)} acquisitions "
          f"({len(args.echo_times)} echoes, {'x'.join(map(str, args.shape))} voxels) in "
          f"{time.perf_counter() - t0:.1f} s -> {args.root}")
    root = str(args.root).rstrip("/") or "/"
    print(f"  next: metaqsm bids {root} {Path(root) / 'derivatives' / 'metaqsm'} participant")
    return 0
