"""``metaqsm train`` and ``metaqsm train-plot``: train Meta-QSM / Mesa-QSM, plot a run's curves."""

from __future__ import annotations

import os
from pathlib import Path

from . import _common


def register(subparsers):
    p = _common.add_parser(
        subparsers, "train",
        help="train a Meta-QSM or Mesa-QSM network (resumable)",
        description=(
            "Train a network on synthetic data: streamed on the fly (--stream) or read from an "
            "HDF5 set written by `metaqsm synth` (--data). The configuration file (TOML) gives the "
            "model, data, optimiser and run settings (configs/paper.toml: the paper's recipe; "
            "configs/cpu.toml: the reduced CPU configuration); key=value arguments override it "
            "(section.key or a key unique to one section, values in TOML syntax).\n\n"
            "The run folder receives config.json, last.pt (resume state, every run.ckpt_every "
            "steps and on SIGTERM/Ctrl-C), best.safetensors (lowest validation loss), log.csv "
            "and curves.png.\n\n"
            "examples:\n"
            "  metaqsm train --config configs/cpu.toml --stream --out runs/meta\n"
            "  metaqsm train --config configs/cpu.toml --out runs/meta --resume --steps 20000\n"
            "  metaqsm train --config configs/cpu-mesa-0.5x0.5x2.toml --data synth/mesa --out "
            "runs/mesa optim.lr=2e-4\n"
            "  torchrun --nproc_per_node=4 -m metaqsm.cli train --config configs/paper.toml "
            "--data synth/train --out runs/paper --device cuda"),
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="configuration overrides, e.g. optim.lr=2e-4 model.base=12")
    p.add_argument("--config", default=None, metavar="TOML",
                   help="configuration file (default: the paper's recipe built in)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", default=None, metavar="PATH",
                     help="HDF5 data set (file or folder) of `metaqsm synth`")
    src.add_argument("--stream", action="store_true",
                     help="generate synthetic samples on the fly (data.source = stream)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    p.add_argument("--steps", type=int, default=None, help="total steps (run.steps)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--device", default=None, metavar="cpu|cuda|auto", help="run.device")
    p.add_argument("--threads", type=int, default=None, help="torch threads (run.threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    q = _common.add_parser(
        subparsers, "train-plot",
        help="plot the loss and validation curves of a training run",
        description="Write the curves of a run's log.csv (training and validation loss, "
                    "validation RMSE, HFEN and SSIM) to a PNG.\n\n"
                    "example:\n  metaqsm train-plot runs/meta -o runs/meta/curves.png",
    )
    q.add_argument("run", metavar="RUN", help="run folder (or its log.csv)")
    q.add_argument("-o", "--output", default=None, help="PNG file (default: RUN/curves.png)")
    q.set_defaults(func=run_plot)


def run_train(args):
    from ..dl.train import load_config, train

    overrides = list(args.overrides)
    if args.data is not None:
        if not Path(args.data).exists():
            raise FileNotFoundError(f"--data {args.data} does not exist")
        overrides += ['data.source="h5"', f"data.path={_toml_str(str(args.data))}"]
    elif args.stream:
        overrides.append('data.source="stream"')
    if args.steps is not None:
        overrides.append(f"run.steps={int(args.steps)}")
    if args.device is not None:
        overrides.append(f"run.device={_toml_str(args.device)}")
    if args.threads is not None:
        overrides.append(f"run.threads={int(args.threads)}")
    if args.no_progress:
        overrides.append("run.progress=false")
    out = Path(args.out)
    # a resumed run keeps its own configuration; the command line may still change the run
    # section (steps, intervals, device, threads)
    resumed = args.resume and (out / "config.json").is_file()
    try:
        cfg = load_config(out / "config.json" if resumed else args.config, overrides)
    except ValueError as exc:
        if str(exc).startswith("data.path "):  # the configuration's key, set by --data
            raise ValueError(f"{exc} (--data PATH)") from None
        raise
    if not args.resume and out.exists() and (out / "last.pt").exists():
        raise FileExistsError(f"--out {out} already holds a training run: add --resume to continue "
                              f"it, or choose another folder")
    result = train(cfg, out=out, resume=args.resume)
    state = "stopped (resume with --resume)" if result["stopped"] else "done"
    best = f"best validation loss {result['best_val_loss']:.5g}"
    if cfg["run"]["select_by"] != "val_loss":
        best += f", best {cfg['run']['select_by']} {result['best_score']:.5g} (kept)"
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per torchrun rank
        print(f"metaqsm train: {state} at step {result['step']}; {best}; run folder {result['out']}")
    return 0


def run_plot(args):
    from ..dl.train import plot_log

    png = plot_log(args.run, args.output)
    print(f"metaqsm train-plot: {png}")
    return 0


def _toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
