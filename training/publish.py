"""Publish a training run as a shipped model, and keep its state for the next session.

    python training/publish.py meta [--run runs/meta] [--status "..."]

1. ``runs/NAME/best.safetensors`` -> ``src/metaqsm/models/NAME.safetensors`` (the checkpoint
   already holds its architecture, config, step, validation scores and data seed);
2. ``log.csv`` and ``curves.png`` -> ``NAME-log.csv``, ``NAME-curves.png`` beside it;
3. ``NAME.json``: the model card in brief, from the checkpoint's metadata and the run's config;
4. ``runs/NAME/last.pt`` (gzipped), ``config.json`` and ``log.csv`` -> ``training/NAME/``, the
   state ``training/train-cpu.sh`` resumes from.

A stage-2 run (one that starts from other weights, ``run.init_weights``; ``--run
runs/NAME-ft128``) keeps its state in ``training/NAME-ft128/`` instead (what
``training/train-stage2.sh`` resumes from), and ships the stage-1 log beside its own
(``NAME-stage1-log.csv``, from ``training/NAME/log.csv``).

The measured results belong in docs/model-card.md (written by hand from the evaluation reports).

    python training/publish.py meta --state-only

keeps step 4 only (and the run's ``best.safetensors`` as ``training/NAME/best.safetensors``, the
candidate that a resumed run's best-checkpoint race is measured against): the training goes on
next session while the shipped model stays as it is.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "src" / "metaqsm" / "models"
CONFIGS = {"meta": "configs/cpu.toml", "mesa-0.5x0.5x2": "configs/cpu-mesa-0.5x0.5x2.toml",
           "mesa-0.7639x0.7639x3": "configs/cpu-mesa-0.7639x0.7639x3.toml"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(CONFIGS))
    p.add_argument("--run", type=Path, help="run folder (default runs/NAME)")
    p.add_argument("--status", default="", help="one line on the model's standing")
    p.add_argument("--state-only", action="store_true",
                   help="keep the training state in training/NAME/ without publishing the model")
    a = p.parse_args(argv)
    run = a.run or ROOT / "runs" / a.name
    if a.state_only:
        cfg = json.loads((run / "config.json").read_text())
        keep_state(run, state_name(cfg, a.name), best=True)
        return
    for f in ("best.safetensors", "log.csv", "config.json", "last.pt"):
        if not (run / f).is_file():
            sys.exit(f"publish: {run / f} is missing")
    from metaqsm.dl.data import read_manifest
    from metaqsm.dl.registry import read_checkpoint_info

    info = read_checkpoint_info(run / "best.safetensors")
    extra = info["extra"]
    cfg = json.loads((run / "config.json").read_text())
    if cfg["data"]["source"] == "h5":
        # what the data really are: the manifest `metaqsm synth` wrote beside the HDF5 file
        manifest = read_manifest(cfg["data"]["path"])
    else:  # generated on the fly (stage 2): the stream's own configuration
        from metaqsm.dl.train.config import synth_config

        manifest = {"counts": "stream (a new scene per step, mirror variants)",
                    "seed": cfg["data"]["seed"], "patch_shape": cfg["data"]["patch_shape"],
                    "config": synth_config(cfg).to_dict()}
    synth = manifest["config"]
    rows = (run / "log.csv").read_text().strip().splitlines()
    last_step = int(rows[-1].split(",")[0])

    stage2 = bool(cfg["run"].get("init_weights"))
    stage1 = stage1_of(a.name) if stage2 else None  # before the card it comes from is replaced
    state = state_name(cfg, a.name)

    MODELS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "best.safetensors", MODELS / f"{a.name}.safetensors")
    shutil.copyfile(run / "log.csv", MODELS / f"{a.name}-log.csv")
    if stage2:
        # the stage-1 log up to the checkpoint stage 2 started from (the state in training/NAME
        # may have been continued past it)
        rows1 = (ROOT / "training" / a.name / "log.csv").read_text().strip().splitlines()
        kept = [rows1[0]] + [r for r in rows1[1:] if int(r.split(",")[0]) <= stage1["steps"]]
        (MODELS / f"{a.name}-stage1-log.csv").write_text("\n".join(kept) + "\n")
    else:
        (MODELS / f"{a.name}-stage1-log.csv").unlink(missing_ok=True)
    if (run / "curves.png").is_file():
        shutil.copyfile(run / "curves.png", MODELS / f"{a.name}-curves.png")
    card = {
        "name": a.name,
        "file": f"{a.name}.safetensors",
        "status": a.status,
        "architecture": {"model": info["model"], **info["config"]},
        "storage": "float16" if cfg["run"].get("half_checkpoint") else "float32",
        "metaqsm_version": extra.get("metaqsm_version"),
        "training": {
            "config": (f"{CONFIGS[a.name].replace('.toml', '-ft128.toml')} after {CONFIGS[a.name]}"
                       if stage2 else CONFIGS[a.name]) + f" (resolved: training/{state}/config.json)",
            "steps": last_step,
            "best_step": extra.get("step"),
            "device": f"{cfg['run'].get('device')} ({cfg['run'].get('threads')} threads)",
            "data": {"samples": manifest["counts"], "seed": manifest["seed"],
                     "patch_shape": manifest["patch_shape"],
                     "margin_mm": synth["margin_mm"], "field_pad": synth["field_pad"],
                     "recipe": ("generated on the fly (data.source = stream)"
                                if cfg["data"]["source"] == "stream"
                                else "training/train-cpu.sh (metaqsm synth)")},
            "command": ("bash training/train-cpu.sh, then bash training/train-stage2.sh" if stage2
                        else "bash training/train-cpu.sh"),
            "init_weights": cfg["run"].get("init_weights") or None,
            "log": f"{a.name}-log.csv",
            **({"stage1": {**stage1, "log": f"{a.name}-stage1-log.csv"}} if stage2 else {}),
            "curves": f"{a.name}-curves.png",
        },
        "validity": {"voxel_size_mm": synth["voxel_size_range"],
                     "max_b0_tilt_deg": synth["max_tilt_deg"]},
        "validation_at_best": {k: extra[k] for k in ("val_loss", "val_rmse", "val_hfen", "val_ssim",
                                                          "vol_rmse", "vol_hfen", "vol_ssim")
                               if k in extra},
    }
    (MODELS / f"{a.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    keep_state(run, state, best=False)
    print(f"published {a.name}: step {last_step}, best at {extra.get('step')} "
          f"(val RMSE {extra.get('val_rmse', float('nan')):.1f} %)")


def stage1_of(name):
    """The stage-1 model a stage-2 run of ``name`` started from, from the card shipped now (or,
    when a stage-2 model is published again, the stage-1 entry of its card)."""
    card = json.loads((MODELS / f"{name}.json").read_text())["training"]
    if "stage1" in card:
        return {k: v for k, v in card["stage1"].items() if k != "log"}
    return {"config": card["config"].split(" (resolved")[0], "steps": card["best_step"],
            "data": card["data"], "weights": f"training/{name}/stage1.safetensors"}


def state_name(cfg, name):
    """``NAME-ft128`` for a stage-2 run (its config starts from other weights), else ``NAME``."""
    return f"{name}-ft128" if cfg["run"].get("init_weights") else name


def keep_state(run, name, *, best):
    """``run``'s resume state -> ``training/NAME/`` (what train-cpu.sh restores)."""
    for f in ("last.pt", "log.csv", "config.json"):
        if not (run / f).is_file():
            sys.exit(f"publish: {run / f} is missing")
    keep = ROOT / "training" / name
    keep.mkdir(parents=True, exist_ok=True)
    with open(run / "last.pt", "rb") as src, gzip.open(keep / "last.pt.gz", "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst)
    shutil.copyfile(run / "config.json", keep / "config.json")
    shutil.copyfile(run / "log.csv", keep / "log.csv")
    candidate = keep / "best.safetensors"
    if best and (run / "best.safetensors").is_file():
        shutil.copyfile(run / "best.safetensors", candidate)
    elif not best:
        candidate.unlink(missing_ok=True)  # published: the shipped file is the best
    print(f"kept the training state of {name} in {keep}")


if __name__ == "__main__":
    main()
