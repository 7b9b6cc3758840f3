"""``metaqsm evaluate``: the paper's experiments, a user's case, or real data side by side."""

from __future__ import annotations

import shlex
import sys

from ._common import add_force_arg, add_geometry_args, add_parser

DESCRIPTION = """\
Evaluate dipole inversions and write a report (index.html, report.md, results.csv, figures/).

  metaqsm evaluate --suite quick -o report/              # 3 small phantoms, about a minute
  metaqsm evaluate --suite paper -o report/              # paper Tables 1-3 (hours on a CPU)
  metaqsm evaluate --suite paper -o report/ --resume     # continue an interrupted run
  metaqsm evaluate --suite realistic -o report/          # realistic heads (about 25 minutes)
  metaqsm evaluate --field f.nii.gz --reference chi.nii.gz --mask m.nii.gz \\
                   --methods tkd ilsqr medi tv meta -o report/      # your own case
  metaqsm evaluate --real out/ -o report/                # real data (a `metaqsm run` folder)
  metaqsm evaluate --field f.nii.gz --mask m.nii.gz -o report/      # real data, explicit files

Suites: quick, paper (Tables 1-3), resolution (RMSE vs voxel size), orientation (RMSE vs B0
tilt), fansi (the FANSI phantom), realistic (whole heads with a real scan's imperfections through
the pipeline: the suite that ranks methods as real brains do). Network methods (meta, mesa,
meta-unrolled) without a shipped model are reported as "not available" instead of failing.
"""


def register(subparsers):
    from ..evaluate.suites import SUITES, USER_METHODS

    p = add_parser(subparsers, "evaluate", help="evaluate inversions: paper tables, figures, report",
                   description=DESCRIPTION)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--suite", choices=SUITES,
                     help="a built-in evaluation suite")
    src.add_argument("--field", metavar="NIFTI",
                     help="a local field (ppm) to evaluate on (with --mask; --reference for metrics)")
    src.add_argument("--real", metavar="DIR",
                     help="a `metaqsm run` output folder (its *localfield* and *mask* NIfTI files): "
                          "real data without truth, reconstructions side by side")
    p.add_argument("--reference", metavar="NIFTI", help="true susceptibility (ppm) of --field")
    p.add_argument("--mask", metavar="NIFTI", help="brain mask of --field")
    p.add_argument("--magnitude", metavar="NIFTI", help="magnitude for MEDI's edge mask (optional)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder")
    p.add_argument("--methods", nargs="+", metavar="NAME", default=None,
                   help="methods to compare: registered inversions, and meta+dc (Meta-QSM "
                        "followed by its data-consistency refinement) (default: the suite's; for "
                        f"a user case {' '.join(USER_METHODS)})")
    p.add_argument("--n", type=int, default=None, help="at most N volumes per test set (default: all)")
    p.add_argument("--figure-cases", type=int, default=1, metavar="N",
                   help="slice figures of the first N volumes of each table")
    p.add_argument("--resume", action="store_true", help="continue an evaluation in --output, "
                   "skipping what is done")
    p.add_argument("--save-volumes", action="store_true", default=None,
                   help="write every reconstruction as NIfTI (default: on for quick and user cases)")
    p.add_argument("--weights", nargs="+", metavar="NAME=PATH", default=None,
                   help="checkpoints to evaluate instead of the shipped models; NAME is a network "
                        "method (meta, meta-unrolled), mesa-0.5x0.5x2, mesa-0.7639x0.7639x3 "
                        "(Tables 2-3) or mesa")
    p.add_argument("--device", default="cpu", help="torch device of the network methods")
    p.add_argument("--fansi-dir", default=None, help="folder of the FANSI phantom "
                   "(default ../shared/data/fansi-phantom)")
    p.add_argument("--groups", nargs="+", metavar="NAME", default=None,
                   help="only these tables of --suite (paper: table1 table2 table3; default all)")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="keep the generated test-set volumes of --suite paper in DIR and reuse them "
                        "(about 50 MB and 20-40 s of generation each; results are the same)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_geometry_args(p)
    add_force_arg(p)
    p.set_defaults(func=handler)


# library argument names -> flags, where they differ (the CLI translates error messages)
_ALIASES = {"field_path": "--field", "mask_path": "--mask",
            "reference_path": "--reference", "magnitude_path": "--magnitude",
            "noise_path": "the noise map", "directory": "--real", "figure_cases": "--figure-cases"}


def handler(args):
    from ..evaluate import build_suite, find_real_inputs, run_suite, user_suite

    args.flag_aliases = _ALIASES
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    weights = {}
    for item in args.weights or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--weights takes NAME=PATH items, got {item!r}")
        weights[name] = path
    if args.suite is not None:
        for flag in ("reference", "mask", "magnitude", "voxel_size", "b0_dir"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} belongs to --field/--real, not --suite")
        suite = build_suite(args.suite, methods=args.methods, n=args.n, fansi_dir=args.fansi_dir,
                            weights=weights, figure_cases=args.figure_cases, cache_dir=args.cache,
                            groups=args.groups)
    else:
        for flag in ("cache", "groups"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} belongs to --suite")
        if args.real is not None:
            if args.reference is not None:
                raise ValueError("--real is data without truth; use --field with --reference")
            field, mask, noise = find_real_inputs(args.real)
            if args.mask is not None:
                mask = args.mask
            mag = args.magnitude
        else:
            if args.mask is None:
                raise ValueError("--field needs --mask")
            field, mask, mag, noise = args.field, args.mask, args.magnitude, None
        suite = user_suite(field, mask, reference_path=args.reference, magnitude_path=mag,
                           noise_path=noise, weights=weights,
                           methods=args.methods, voxel_size=args.voxel_size, b0_dir=args.b0_dir)
    save = True if args.save_volumes else (None if args.field is None and args.real is None else True)
    command = _command(args)
    try:
        result = run_suite(suite, args.output, force=args.force, resume=args.resume,
                           progress=not args.no_progress, save_volumes=save, device=args.device,
                           methods_asked=args.methods, n=args.n, command=command)
    except KeyboardInterrupt:
        print(f"metaqsm evaluate: interrupted; finished results are kept in {args.output}/results.jsonl; "
              "continue with --resume", file=sys.stderr)
        return 130
    r = result["report"]
    print(f"{result['computed']} reconstructions computed, {result['skipped']} already done")
    for label, reason in result["unavailable"].items():
        print(f"not available: {label} ({reason})")
    for label, reasons in result["failed"].items():
        print(f"failed: {label} on {len(reasons)} volume(s): {reasons[0]}")
    print(f"report: {r['html']}  {r['markdown']}  {r['csv']}")
    return 0


def _command(args):
    """The canonical command line of this evaluation (recorded in the report)."""
    parts = ["metaqsm", "evaluate"]
    for flag in ("suite", "field", "real", "reference", "mask", "magnitude"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    if args.methods:
        parts += ["--methods", *args.methods]
    if args.groups:
        parts += ["--groups", *args.groups]
    if args.n is not None:
        parts += ["--n", str(args.n)]
    if args.figure_cases != 1:
        parts += ["--figure-cases", str(args.figure_cases)]
    for flag in ("voxel_size", "b0_dir"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", *(f"{v:g}" for v in getattr(args, flag))]
    if args.weights:
        parts += ["--weights", *args.weights]
    if args.device != "cpu":
        parts += ["--device", args.device]
    parts += ["-o", str(args.output)]
    return " ".join(shlex.quote(p) for p in parts)
