"""The configuration of a training run: defaults (the paper's recipe), checks, overrides.

A configuration is a dict of four sections, ``model``, ``data``, ``optim`` and ``run``
(:data:`DEFAULT_CONFIG` lists every key with its default); a TOML file or ``key=value`` overrides
change it, and :func:`validate_config` checks it before any work starts. Errors name the key
(``optim.lr must be a positive number, got 0``).
"""

from __future__ import annotations

import copy
import inspect
import json
import tomllib
from pathlib import Path

from ...simulate.synth import SynthConfig
from ..registry import MODELS, _ensure_registered

__all__ = ["DEFAULT_CONFIG", "SELECT_BY", "apply_overrides", "validate_config", "load_config",
           "synth_config", "val_seed"]

# Every key of a training configuration, with its default (the paper's recipe).
DEFAULT_CONFIG = {
    "model": {
        "name": "meta",  # "meta" (WP-Conv) or "mesa" (plain convolutions)
        # any other key is a constructor argument of the network (depth, base, basis, ...)
    },
    "data": {
        "source": "stream",  # "stream": synthetic samples generated on the fly; "h5": a file;
        # "realistic": the stream with a real scan's imperfections added (simulate.corrupt)
        "path": "",  # HDF5 file of `metaqsm synth` (source = "h5")
        "seed": 0,  # data seed of the training stream (0 <= seed < 10**6)
        "val_seed": -1,  # seed of the validation stream; -1: seed + 1
        "val_size": 32,  # validation samples (stream: generated once; h5: the first of "val")
        "patch_shape": [128, 128, 64],  # voxels (paper: 128 x 128 x 64)
        "variants": 1,  # stream: training samples per generated scene (exact mirror images, 1-8)
        "variant_block": 8,  # stream: scenes per block of mirror images (see SyntheticStream)
        "synth": {},  # other SynthConfig fields (voxel_size_range, max_tilt_deg, ...)
        "corrupt": {},  # source "realistic": CorruptionConfig fields (noise_median, ...)
        # source "realistic": a folder of realistic heads (dl.headbank, written by
        # training/make-head-bank.py) whose patches replace this fraction of the samples
        "head_bank": "",
        "head_bank_fraction": 0.0,
    },
    "optim": {
        "lr": 1e-4,  # initial learning rate (paper)
        "decay_rate": 0.96,  # learning rate factor ...
        "decay_steps": 200,  # ... every this many steps (paper: exponential decay every 200)
        # linear learning-rate warm-up over this many steps (0: none, as the paper); for
        # fine-tuning, where RMSprop's running averages start at zero on converged weights
        "warmup_steps": 0,
        "rho": 0.9,  # RMSprop smoothing constant (Keras default, which the paper used)
        "eps": 1e-7,  # RMSprop epsilon (Keras default)
        "weight_reg": 0.01,  # L2 strength: weight_reg * sum of squares (Keras l2(0.01))
        "batch_size": 4,  # per step (summed over ranks with DDP: each rank takes batch/world)
        "loss_in_mask": False,  # L1 over the brain mask only (False: the whole patch, as the paper)
        "grad_clip": 0.0,  # clip the gradient norm to this (0: off, as the paper)
        # weight of (1 - SSIM) added to the L1 loss (not in the paper; dl.train.loss.masked_ssim,
        # over the brain mask on the truth's scale): counters the contrast an L1 fit gives up
        "ssim_weight": 0.0,
    },
    "run": {
        "steps": 100000,  # total optimiser steps
        "val_every": 500,  # steps between validations (and best-checkpoint updates)
        "ckpt_every": 100,  # steps between last.pt checkpoints
        "log_every": 10,  # steps between rows of log.csv
        "threads": 0,  # torch.set_num_threads (0: leave torch's default)
        "device": "auto",  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
        "amp": "auto",  # "auto" (bf16, else fp16 on CUDA; off on CPU), "off", "bf16", "fp16"
        "num_workers": 0,  # DataLoader worker processes for the data
        "seed": 0,  # seed of the network's initialisation
        "half_checkpoint": False,  # store best.safetensors in float16
        "progress": True,  # tqdm progress bar
        # whole-volume validation (not in the paper): this many synthetic volumes of
        # val_volume_shape, with only the sources inside them (the problem met at inference),
        # reconstructed whole at every validation; 0: off
        "val_volumes": 0,
        "val_volume_shape": [128, 128, 64],
        # "synthetic": val_volumes of the generator above; "realistic": val_volumes quick (2 mm)
        # cases of simulate.realistic.realistic_case through the whole pipeline
        "val_volume_kind": "synthetic",
        # best.safetensors: lowest "val_loss" (patches), "vol_rmse" or "vol_score" (whole volumes;
        # the mean of RMSE / 100, HFEN / 100 and 1 - SSIM)
        "select_by": "val_loss",
        # exponential moving average of the weights (not in the paper): validated and kept in
        # best.safetensors instead of the raw weights; 0: off, 0.99: a window of ~100 steps
        "ema_decay": 0.0,
        # fine-tuning: start a new run from the weights of this checkpoint (a .safetensors file
        # or a shipped model name) instead of a random initialisation; the architecture must match
        "init_weights": "",
    },
}

#: Kinds of whole validation volumes (run.val_volume_kind).
VOLUME_KINDS = ("synthetic", "realistic")
#: Validation scores that may select the best checkpoint (run.select_by); lower is better.
SELECT_BY = ("val_loss", "vol_rmse", "vol_score")


def _merge(base, new, where=""):
    out = copy.deepcopy(base)
    for key, value in new.items():
        name = f"{where}{key}"
        if key not in out:
            if where == "model." or where.startswith(("data.synth", "data.corrupt")):
                out[key] = copy.deepcopy(value)
                continue
            known = ", ".join(sorted(out))
            raise ValueError(f"unknown configuration key {name!r} (known in this section: {known})")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"configuration key {name!r} must be a table, got {value!r}")
            out[key] = _merge(out[key], value, f"{name}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_value(text):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_overrides(config, overrides):
    """Apply ``key=value`` strings (TOML values; ``section.key`` or a key unique to one section)."""
    config = copy.deepcopy(config)
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override must look like key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        value = _parse_value(text.strip())
        parts = key.split(".")
        if len(parts) == 1:
            sections = [s for s in DEFAULT_CONFIG if key in DEFAULT_CONFIG[s] or key in config.get(s, {})]
            if len(sections) != 1:
                raise ValueError(f"override key {key!r} must be written section.key "
                                 f"(sections: {', '.join(DEFAULT_CONFIG)})")
            parts = [sections[0], key]
        if parts[0] not in DEFAULT_CONFIG:
            raise ValueError(f"override key {key!r}: unknown section {parts[0]!r} "
                             f"(sections: {', '.join(DEFAULT_CONFIG)})")
        nested = value
        for p in reversed(parts[1:]):
            nested = {p: nested}
        config = _merge(config, {parts[0]: nested})
    return config


def validate_config(config):
    """Check types and ranges; returns the config merged over :data:`DEFAULT_CONFIG`."""
    cfg = _merge(DEFAULT_CONFIG, config)
    o, r, d = cfg["optim"], cfg["run"], cfg["data"]
    for key in ("lr", "decay_rate", "rho", "eps"):
        if not isinstance(o[key], (int, float)) or not o[key] > 0:
            raise ValueError(f"optim.{key} must be a positive number, got {o[key]!r}")
    if not 0 < o["decay_rate"] <= 1:
        raise ValueError(f"optim.decay_rate must be in (0, 1], got {o['decay_rate']!r}")
    for sec, key, minimum in (("optim", "decay_steps", 1), ("optim", "batch_size", 1),
                              ("optim", "warmup_steps", 0),
                              ("run", "steps", 0), ("run", "val_every", 1), ("run", "ckpt_every", 1),
                              ("run", "log_every", 1), ("run", "threads", 0),
                              ("run", "num_workers", 0), ("data", "val_size", 1),
                              ("run", "val_volumes", 0),
                              ("data", "seed", 0), ("data", "variants", 1),
                              ("data", "variant_block", 1)):
        v = cfg[sec][key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{sec}.{key} must be an integer >= {minimum}, got {v!r}")
    for key in ("weight_reg", "grad_clip", "ssim_weight"):
        if not isinstance(o[key], (int, float)) or o[key] < 0:
            raise ValueError(f"optim.{key} must be a non-negative number, got {o[key]!r}")
    if (isinstance(r["ema_decay"], bool) or not isinstance(r["ema_decay"], (int, float))
            or not 0 <= r["ema_decay"] < 1):
        raise ValueError(f"run.ema_decay must be a number in [0, 1), got {r['ema_decay']!r}")
    if not isinstance(r["init_weights"], str):
        raise ValueError(f"run.init_weights must be a checkpoint path or shipped name, got "
                         f"{r['init_weights']!r}")
    if r["select_by"] not in SELECT_BY:
        raise ValueError(f"run.select_by must be one of {', '.join(SELECT_BY)}, got {r['select_by']!r}")
    if r["select_by"].startswith("vol_") and r["val_volumes"] < 1:
        raise ValueError(f"run.select_by = {r['select_by']!r} needs run.val_volumes >= 1")
    vs = r["val_volume_shape"]
    if (not isinstance(vs, (list, tuple)) or len(vs) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 16 for n in vs)):
        raise ValueError(f"run.val_volume_shape must be 3 integers >= 16, got {vs!r}")
    if d["variants"] > 8:
        raise ValueError(f"data.variants must be an integer in 1..8, got {d['variants']!r}")
    if d["source"] not in ("stream", "h5", "realistic"):
        raise ValueError(f"data.source must be 'stream', 'h5' or 'realistic', got {d['source']!r}")
    if r["val_volume_kind"] not in VOLUME_KINDS:
        raise ValueError(f"run.val_volume_kind must be one of {', '.join(VOLUME_KINDS)}, got "
                         f"{r['val_volume_kind']!r}")
    if d["corrupt"]:
        from ...simulate.corrupt import CorruptionConfig

        try:
            CorruptionConfig.from_dict(d["corrupt"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"data.corrupt: {exc}") from None
    f = d["head_bank_fraction"]
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
        raise ValueError(f"data.head_bank_fraction must be a number in [0, 1], got {f!r}")
    if f > 0 and (d["source"] != "realistic" or not d["head_bank"]):
        raise ValueError("data.head_bank_fraction > 0 needs data.source = 'realistic' and a "
                         "data.head_bank folder")
    if d["source"] == "h5" and not d["path"]:
        raise ValueError("data.path must name an HDF5 file when data.source is 'h5'")
    if r["amp"] not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"run.amp must be one of auto, off, bf16, fp16, got {r['amp']!r}")
    dev = str(r["device"])
    if not (dev in ("auto", "cpu") or dev.startswith("cuda")):
        raise ValueError(f"run.device must be cpu, cuda, cuda:N or auto, got {dev!r}")
    if len(d["patch_shape"]) != 3:
        raise ValueError(f"data.patch_shape must have 3 values, got {d['patch_shape']!r}")
    _ensure_registered()
    if cfg["model"]["name"] not in MODELS:
        raise ValueError(f"model.name must be one of {', '.join(sorted(MODELS))}, "
                         f"got {cfg['model']['name']!r}")
    accepted = set(inspect.signature(MODELS[cfg["model"]["name"]].__init__).parameters) - {"self"}
    unknown = sorted(set(cfg["model"]) - accepted - {"name"})
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not an argument of model {cfg['model']['name']!r} "
                         f"(its arguments: {', '.join(sorted(accepted))})")
    return cfg


def load_config(path=None, overrides=()):
    """Read a TOML (or JSON) configuration over :data:`DEFAULT_CONFIG` and apply ``overrides``."""
    config = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"configuration file {path} does not exist")
        if path.suffix == ".json":
            config = json.loads(path.read_text())
        else:
            try:
                config = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"configuration file {path} is not valid TOML: {exc}") from None
    config = _merge(DEFAULT_CONFIG, config)
    return validate_config(apply_overrides(config, overrides))


def synth_config(cfg):
    """The :class:`~metaqsm.simulate.synth.SynthConfig` of the training stream of ``cfg``
    (``data.synth`` with ``data.patch_shape``)."""
    d = cfg["data"]
    params = dict(d["synth"])
    params["patch_shape"] = tuple(int(n) for n in d["patch_shape"])
    if "voxel_size_range" in params:
        params["voxel_size_range"] = tuple(tuple(float(v) for v in p) for p in params["voxel_size_range"])
    return SynthConfig.from_dict(params)


def val_seed(cfg):
    """The seed of the validation data: ``data.val_seed``, or ``data.seed + 1`` when it is -1."""
    d = cfg["data"]
    return d["val_seed"] if d["val_seed"] >= 0 else d["seed"] + 1
