"""Training of Meta-QSM / Mesa-QSM: the paper's recipe, resumable, on CPU, CUDA or several GPUs.

The recipe (paper section 2.3) is the default: L1 loss between the predicted and the true
susceptibility, L2 regularisation of strength 0.01 on the WP-Conv parameters, RMSprop with a
learning rate of 1e-4 and an exponential (staircase) decay every 200 steps, batch size 4,
128 x 128 x 64 patches, a 9:1 train/validation split. ``configs/paper.toml`` spells it out and
``configs/cpu.toml`` is the reduced configuration for a 2-core CPU.

A run directory holds:

* ``config.json``: the full configuration of the run;
* ``last.pt``: the state to resume from (model, optimiser, scheduler, step, data position, random
  states), written every ``run.ckpt_every`` steps, at the end and on SIGTERM/SIGINT, atomically;
  it loads with ``torch.load(weights_only=True)``;
* ``best.safetensors``: the network with the lowest validation score ``run.select_by`` (name,
  config, weights and the training information, see :func:`metaqsm.dl.registry.save_checkpoint`);
* ``log.csv``: step, train loss, validation loss, RMSE, HFEN, SSIM, learning rate, seconds, and
  the whole-volume RMSE, HFEN, SSIM;
* ``curves.png``: the curves (:func:`plot_log`).

Distributed data parallel: start with ``torchrun --nproc_per_node=N -m metaqsm.cli train ...``;
each rank reads its own slice of the data (the synthetic stream at a per-rank index offset, an
HDF5 set through a per-rank share of each epoch's permutation); rank 0 validates and writes.

Whole-volume validation (``run.val_volumes``, not in the paper): patches are scored at the size
the network trains on, but a user reconstructs a whole brain, whose lowest spatial frequencies
and mean no patch holds; a network's patch loss can fall while its whole-volume error rises.
With ``run.val_volumes = N`` the run also reconstructs N synthetic volumes of
``run.val_volume_shape`` (the training generator, sources inside the volume only) at every
validation, logs ``vol_rmse``, ``vol_hfen``, ``vol_ssim``, and ``run.select_by = "vol_rmse"``
keeps the checkpoint that is best on them.

Weight average (``run.ema_decay``, not in the paper): an exponential moving average of the
weights, validated and kept in ``best.safetensors`` instead of the raw weights, which with batch 4
vary much from one checkpoint to the next on whole volumes.

References
----------
Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction (Koch KM et al.),
section 2.3.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .._version import __version__

__all__ = ["DEFAULT_CONFIG", "load_config", "apply_overrides", "validate_config", "train",
           "plot_log", "regularization", "masked_l1", "LOG_FIELDS"]

# Every key of a training configuration, with its default (the paper's recipe).
DEFAULT_CONFIG = {
    "model": {
        "name": "meta",  # "meta" (WP-Conv) or "mesa" (plain convolutions)
        # any other key is a constructor argument of the network (depth, base, basis, ...)
    },
    "data": {
        "source": "stream",  # "stream": synthetic samples generated on the fly; "h5": a file
        "path": "",  # HDF5 file of `metaqsm synth` (source = "h5")
        "seed": 0,  # data seed of the training stream (0 <= seed < 10**6)
        "val_seed": -1,  # seed of the validation stream; -1: seed + 1
        "val_size": 32,  # validation samples (stream: generated once; h5: the first of "val")
        "patch_shape": [128, 128, 64],  # voxels (paper: 128 x 128 x 64)
        "variants": 1,  # stream: training samples per generated scene (exact mirror images, 1-8)
        "variant_block": 8,  # stream: scenes per block of mirror images (see SyntheticStream)
        "synth": {},  # other SynthConfig fields (voxel_size_range, max_tilt_deg, ...)
    },
    "optim": {
        "lr": 1e-4,  # initial learning rate (paper)
        "decay_rate": 0.96,  # learning rate factor ...
        "decay_steps": 200,  # ... every this many steps (paper: exponential decay every 200)
        "rho": 0.9,  # RMSprop smoothing constant (Keras default, which the paper used)
        "eps": 1e-7,  # RMSprop epsilon (Keras default)
        "weight_reg": 0.01,  # L2 strength: weight_reg * sum of squares (Keras l2(0.01))
        "batch_size": 4,  # per step (summed over ranks with DDP: each rank takes batch/world)
        "loss_in_mask": False,  # L1 over the brain mask only (False: the whole patch, as the paper)
        "grad_clip": 0.0,  # clip the gradient norm to this (0: off, as the paper)
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
        "select_by": "val_loss",  # best.safetensors: lowest "val_loss" (patches) or "vol_rmse"
        # exponential moving average of the weights (not in the paper): validated and kept in
        # best.safetensors instead of the raw weights; 0: off, 0.99: a window of ~100 steps
        "ema_decay": 0.0,
        # fine-tuning: start a new run from the weights of this checkpoint (a .safetensors file
        # or a shipped model name) instead of a random initialisation; the architecture must match
        "init_weights": "",
    },
}

LOG_FIELDS = ("step", "train_loss", "val_loss", "val_rmse", "val_hfen", "val_ssim", "lr", "seconds",
              "vol_rmse", "vol_hfen", "vol_ssim")
#: Validation scores that may select the best checkpoint (run.select_by); lower is better.
SELECT_BY = ("val_loss", "vol_rmse")

_RANK_STRIDE = 10 ** 8  # stream index offset between DDP ranks


# ---------------------------------------------------------------------------- configuration
def _merge(base, new, where=""):
    out = copy.deepcopy(base)
    for key, value in new.items():
        name = f"{where}{key}"
        if key not in out:
            if where == "model." or where.startswith("data.synth"):
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
    import tomllib

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
                              ("run", "steps", 0), ("run", "val_every", 1), ("run", "ckpt_every", 1),
                              ("run", "log_every", 1), ("run", "threads", 0),
                              ("run", "num_workers", 0), ("data", "val_size", 1),
                              ("run", "val_volumes", 0),
                              ("data", "seed", 0), ("data", "variants", 1),
                              ("data", "variant_block", 1)):
        v = cfg[sec][key]
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{sec}.{key} must be an integer >= {minimum}, got {v!r}")
    for key in ("weight_reg", "grad_clip"):
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
    if r["select_by"] == "vol_rmse" and r["val_volumes"] < 1:
        raise ValueError("run.select_by = 'vol_rmse' needs run.val_volumes >= 1")
    vs = r["val_volume_shape"]
    if (not isinstance(vs, (list, tuple)) or len(vs) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 16 for n in vs)):
        raise ValueError(f"run.val_volume_shape must be 3 integers >= 16, got {vs!r}")
    if d["variants"] > 8:
        raise ValueError(f"data.variants must be an integer in 1..8, got {d['variants']!r}")
    if d["source"] not in ("stream", "h5"):
        raise ValueError(f"data.source must be 'stream' or 'h5', got {d['source']!r}")
    if d["source"] == "h5" and not d["path"]:
        raise ValueError("data.path must name an HDF5 file when data.source is 'h5' (--data PATH)")
    if r["amp"] not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"run.amp must be one of auto, off, bf16, fp16, got {r['amp']!r}")
    dev = str(r["device"])
    if not (dev in ("auto", "cpu") or dev.startswith("cuda")):
        raise ValueError(f"run.device must be cpu, cuda, cuda:N or auto, got {dev!r}")
    if len(d["patch_shape"]) != 3:
        raise ValueError(f"data.patch_shape must have 3 values, got {d['patch_shape']!r}")
    from .registry import MODELS, _ensure_registered

    _ensure_registered()
    if cfg["model"]["name"] not in MODELS:
        raise ValueError(f"model.name must be one of {', '.join(sorted(MODELS))}, "
                         f"got {cfg['model']['name']!r}")
    import inspect

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
            import tomllib

            try:
                config = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"configuration file {path} is not valid TOML: {exc}") from None
    config = _merge(DEFAULT_CONFIG, config)
    return validate_config(apply_overrides(config, overrides))


# ---------------------------------------------------------------------------- loss
def masked_l1(pred, target, mask=None):
    """Mean absolute error, over ``mask`` (> 0) when given, else over every voxel."""
    if mask is None:
        return (pred - target).abs().mean()
    m = (mask > 0).to(pred.dtype)
    return ((pred - target).abs() * m).sum() / m.sum().clamp_min(1.0)


def regularization(model):
    """Sum of squares of the parameters the paper's L2 term acts on.

    Meta-QSM: every WP-Conv's predictor weight matrices and the basis (the weights of the
    layer that maps the code to the kernel); the base kernel and biases are the biases of that
    fully connected layer, which Keras' ``kernel_regularizer`` leaves alone. Mesa-QSM: the
    convolution kernels.
    """
    from .layers import Conv3d, WPConv3d

    total = None
    for m in getattr(model, "module", model).modules():
        if isinstance(m, WPConv3d):
            params = [m.weight_basis] + [p for n, p in m.predictor.named_parameters() if n.endswith("weight")]
            if m.bias_basis is not None:
                params.append(m.bias_basis)
        elif isinstance(m, Conv3d):
            params = [m.weight]
        else:
            continue
        for p in params:
            s = p.float().pow(2).sum()
            total = s if total is None else total + s
    if total is None:
        return torch.zeros(())
    return total


# ---------------------------------------------------------------------------- data
def _synth_config(cfg, seed_key="seed"):
    from ..simulate.synth import SynthConfig

    d = cfg["data"]
    params = dict(d["synth"])
    params["patch_shape"] = tuple(int(n) for n in d["patch_shape"])
    if "voxel_size_range" in params:
        params["voxel_size_range"] = tuple(tuple(float(v) for v in p) for p in params["voxel_size_range"])
    return SynthConfig.from_dict(params) if hasattr(SynthConfig, "from_dict") else SynthConfig(**params)


def _val_seed(cfg):
    d = cfg["data"]
    return d["val_seed"] if d["val_seed"] >= 0 else d["seed"] + 1


def _h5_manifest(cfg):
    """The manifest of the run's HDF5 data set (dict), or None (stream data, or unreadable)."""
    if cfg["data"]["source"] != "h5":
        return None
    from .data import read_manifest

    try:
        return read_manifest(cfg["data"]["path"])
    except (FileNotFoundError, ValueError):
        return None


def _data_seed(cfg):
    """The seed the training data were generated with (an HDF5 set's own, from its manifest)."""
    if cfg["data"]["source"] == "h5":
        manifest = _h5_manifest(cfg)
        return None if manifest is None else manifest.get("seed")
    return cfg["data"]["seed"]


def _fixed_voxel_size(cfg):
    """The training voxel size when the data has a single one (Mesa-QSM), else None: from the
    manifest of an HDF5 set, else from the stream's configuration."""
    vr = cfg["data"]["synth"].get("voxel_size_range")
    if cfg["data"]["source"] == "h5":
        manifest = _h5_manifest(cfg)
        vr = None if manifest is None else manifest.get("config", {}).get("voxel_size_range")
    if vr is None:
        return None
    vr = np.asarray(vr, float)
    if vr.shape == (3, 2) and np.allclose(vr[:, 0], vr[:, 1]):
        return [float(v) for v in vr[:, 0]]
    return None


def _is_map_style(dataset):
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return False
    return hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


class _MapSampler:
    """Resumable shuffled order over a map-style dataset: the per-rank position ``pos`` fixes the
    epoch (``pos // per_rank``) and the place in it; each epoch's permutation comes from a
    generator seeded with (seed, epoch) and is dealt round-robin to the ranks."""

    def __init__(self, n, *, seed, rank, world):
        if n < world:
            raise ValueError(f"the training set has {n} samples, fewer than the {world} ranks")
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.per_rank = n // world

    def index(self, pos):
        epoch, i = divmod(pos, self.per_rank)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        return int(perm[i * self.world + self.rank])


def _stack(samples):
    keys = ("field", "chi", "mask", "voxel_size", "b0_dir")
    out = {}
    for k in keys:
        vals = [torch.as_tensor(np.asarray(s[k]) if not isinstance(s[k], torch.Tensor) else s[k])
                for s in samples]
        vals = [v.float() if k != "mask" else v for v in vals]
        if k in ("field", "chi", "mask") and vals[0].ndim == 3:
            vals = [v[None] for v in vals]
        out[k] = torch.stack(vals)
    return out


class _Batches:
    """Resumable batch source. ``position`` counts the samples this rank has consumed."""

    def __init__(self, cfg, *, rank, world, position, batch, dataset=None):
        self.batch = batch
        self.position = position
        self.rank, self.world = rank, world
        self.cfg = cfg
        if dataset is None and cfg["data"]["source"] == "h5":
            from .data import H5Dataset

            dataset = H5Dataset(cfg["data"]["path"], split="train")
        self.dataset = dataset
        if dataset is not None and _is_map_style(dataset):
            self.sampler = _MapSampler(len(dataset), seed=cfg["data"]["seed"], rank=rank, world=world)
            self._iter = None
        else:
            self.sampler = None
            self._iter = self._stream_iter(dataset)

    def _stream_iter(self, dataset):
        if dataset is None:
            from .data import SyntheticStream

            d = self.cfg["data"]
            dataset = SyntheticStream(_synth_config(self.cfg), seed=d["seed"],
                                      start=self.rank * _RANK_STRIDE + self.position,
                                      variants=d["variants"], block=d["variant_block"])
        workers = self.cfg["run"]["num_workers"]
        if workers > 0:
            loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                                 prefetch_factor=2, persistent_workers=False)
            return iter(loader)
        return iter(dataset)

    def next(self):
        if self.sampler is not None:
            samples = [self.dataset[self.sampler.index(self.position + i)] for i in range(self.batch)]
        else:
            samples = [next(self._iter) for _ in range(self.batch)]
        self.position += self.batch
        return _stack(samples)


def _validation_set(cfg, dataset=None):
    n = cfg["data"]["val_size"]
    if dataset is None:
        if cfg["data"]["source"] == "h5":
            from .data import H5Dataset

            dataset = H5Dataset(cfg["data"]["path"], split="val")
        else:
            from .data import SyntheticStream

            dataset = SyntheticStream(_synth_config(cfg), seed=_val_seed(cfg), start=0, length=n)
    if _is_map_style(dataset):
        return [dataset[i] for i in range(min(n, len(dataset)))]
    out = []
    for s in dataset:
        out.append(s)
        if len(out) >= n:
            break
    return out


#: Spawn key of the whole validation volumes' random streams ("vol" in ASCII): independent of the
#: training samples (no spawn key) and of the test sets (their own entropy).
_VOLUME_SPAWN = 0x766F6C


def _volume_config(cfg):
    """SynthConfig of the whole validation volumes: the training data's generator (an HDF5
    set's own, from its manifest), at ``run.val_volume_shape``, with only the sources inside
    the volume (:data:`metaqsm.simulate.testsets.LOCAL_ONLY`)."""
    from ..simulate.synth import SynthConfig
    from ..simulate.testsets import LOCAL_ONLY

    manifest = _h5_manifest(cfg)
    if manifest is not None and "config" in manifest:
        params = dict(manifest["config"])
    else:
        params = _synth_config(cfg).to_dict()
    params.update(patch_shape=tuple(int(n) for n in cfg["run"]["val_volume_shape"]), **LOCAL_ONLY)
    return SynthConfig.from_dict(params)


def _volume_set(cfg):
    """The whole validation volumes (generated once per run, deterministic)."""
    from ..simulate.synth import _generate

    n = cfg["run"]["val_volumes"]
    if n < 1:
        return []
    config = _volume_config(cfg)
    seed = _val_seed(cfg)
    return [_generate(config, np.random.default_rng(
        np.random.SeedSequence(entropy=(seed, i), spawn_key=(_VOLUME_SPAWN,)))) for i in range(n)]


def _validate_volumes(model, volumes, device):
    """Mean RMSE / HFEN / SSIM of the network over whole volumes (as :func:`reconstruct`)."""
    from ..metrics import compute_metrics
    from .infer import reconstruct

    if not volumes:
        return {}
    net = getattr(model, "module", model)
    was_training = net.training
    scores = {"rmse": [], "hfen": [], "ssim": []}
    try:
        for v in volumes:
            chi = reconstruct(net, v["field"], v["mask"], voxel_size=v["voxel_size"],
                              b0_dir=v["b0_dir"], tile="none", device=str(device))
            res = compute_metrics(chi, v["chi"], v["mask"])
            for k in scores:
                scores[k].append(float(res[k]))
    finally:
        net.train(was_training)
    return {f"vol_{k}": float(np.mean(v)) for k, v in scores.items()}


# ---------------------------------------------------------------------------- state
def _rng_state():
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _atomic_torch_save(obj, path):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _truncate_log(path, step):
    """Drop rows written after the checkpoint being resumed (their steps are redone)."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = [{k: v for k, v in r.items() if k in LOG_FIELDS} for r in rows if int(r["step"]) <= step]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)


def _append_log(path, row):
    new = not path.is_file()
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), None)
        if header is not None and tuple(header) != LOG_FIELDS:  # a log of an earlier version
            _truncate_log(path, math.inf)
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_FIELDS})


def plot_log(log_csv, png=None):
    """Plot training/validation loss and the validation metrics of a ``log.csv`` to a PNG.

    Returns the PNG path (default: ``curves.png`` beside the log).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_csv = Path(log_csv)
    if log_csv.is_dir():
        log_csv = log_csv / "log.csv"
    if not log_csv.is_file():
        raise FileNotFoundError(f"training log {log_csv} does not exist")
    png = Path(png) if png is not None else log_csv.with_name("curves.png")
    with open(log_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def col(name):
        pts = [(int(r["step"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        return np.array(pts).reshape(-1, 2)

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    tr, va = col("train_loss"), col("val_loss")
    axes[0].plot(tr[:, 0], tr[:, 1], lw=0.8, label="train")
    axes[0].plot(va[:, 0], va[:, 1], "o-", ms=3, label="validation")
    axes[0].set_yscale("log")
    axes[0].set_title("L1 loss (x output_scale)")
    axes[0].legend()
    for ax, (name, title) in zip(axes[1:], (("rmse", "validation RMSE (%)"),
                                            ("hfen", "validation HFEN (%)"),
                                            ("ssim", "validation SSIM"))):
        c = col(f"val_{name}")
        ax.plot(c[:, 0], c[:, 1], "o-", ms=3, label="patches")
        v = col(f"vol_{name}")
        if len(v):
            ax.plot(v[:, 0], v[:, 1], "s-", ms=3, label="whole volumes")
            ax.legend()
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


# ---------------------------------------------------------------------------- distributed
def _dist_setup(device):
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE set); returns
    (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return rank, world, local


def _resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device is {name!r} but CUDA is not available on this machine")
    return dev


def _amp_dtype(mode, device):
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


# ---------------------------------------------------------------------------- validation
def _validate(model, val, cfg, device, amp_dtype):
    from ..metrics import compute_metrics

    net = getattr(model, "module", model)
    was_training = net.training
    net.eval()
    scale = float(getattr(net, "output_scale", 1.0))
    losses, metrics = [], {"rmse": [], "hfen": [], "ssim": []}
    bs = cfg["optim"]["batch_size"]
    in_mask = cfg["optim"]["loss_in_mask"]
    with torch.inference_mode():
        for i in range(0, len(val), bs):
            b = _stack(val[i:i + bs])
            x, y, m = b["field"].to(device), b["chi"].to(device), b["mask"].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = net(x, b["voxel_size"].to(device), b["b0_dir"].to(device))
            pred = pred.float()
            for j in range(x.shape[0]):
                losses.append(float(masked_l1(pred[j] * scale, y[j] * scale, m[j] if in_mask else None)))
                mj = m[j, 0].cpu().numpy() > 0
                if mj.any():
                    res = compute_metrics(pred[j, 0].cpu().numpy() * mj, y[j, 0].cpu().numpy(), mj)
                    for k in metrics:
                        metrics[k].append(float(res[k]))
    net.train(was_training)
    out = {"val_loss": float(np.mean(losses))}
    for k, v in metrics.items():
        out[f"val_{k}"] = float(np.mean(v)) if v else float("nan")
    return out


def _init_from(model, weights):
    """Copy the weights of checkpoint ``weights`` into ``model`` (same network and config)."""
    from .registry import load_model

    src = load_model(weights, cache=False)
    mine, theirs = model.state_dict(), src.state_dict()
    same = (src.model_name == model.model_name and mine.keys() == theirs.keys()
            and all(mine[k].shape == theirs[k].shape for k in mine))
    if not same:  # options that change no parameter (e.g. correction_mean) may differ
        raise ValueError(f"run.init_weights {weights} holds a {src.model_name!r} network with "
                         f"{src.config}, but the run builds a {model.model_name!r} network with "
                         f"{model.config}: their parameters differ")
    model.load_state_dict(theirs)


# ---------------------------------------------------------------------------- weight average
class _EMA:
    """Exponential moving average of a network's parameters (buffers, e.g. BatchNorm statistics,
    are copied), with the usual warm-up: the decay at update t is min(decay, (1 + t) / (10 + t)),
    so early averages are not dominated by the initial weights."""

    def __init__(self, model, decay, state=None):
        self.decay = float(decay)
        self.net = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        if state is not None:
            self.net.load_state_dict(state["weights"])
            self.updates = int(state["updates"])

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, p in zip(self.net.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - d)
        for avg, b in zip(self.net.buffers(), model.buffers()):
            avg.copy_(b)

    def state_dict(self):
        return {"weights": self.net.state_dict(), "updates": self.updates}


# ---------------------------------------------------------------------------- training
class _Stop:
    """Set by SIGTERM/SIGINT: the loop checkpoints and returns after the current step."""

    def __init__(self):
        self.flag = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        self.flag = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def train(config, *, out, resume=False, train_data=None, val_data=None, stop_after=None):
    """Train a network as configured; resumable.

    Parameters
    ----------
    config : dict or str or Path
        A configuration (merged over :data:`DEFAULT_CONFIG`) or a TOML file.
    out : str or Path
        Run directory (created). Without ``resume`` it must not hold a previous run.
    resume : bool
        Continue from ``out/last.pt`` (same configuration; ``run.steps`` may be raised).
    train_data, val_data : datasets, optional
        Instead of the configured data: a map-style dataset (``len`` and indexing) or an iterable
        of sample dicts (``field``, ``chi``, ``mask`` (1, X, Y, Z), ``voxel_size``, ``b0_dir`` (3,)).
        An iterable is not resumable at the right position; map-style datasets are.
    stop_after : int, optional
        Stop (with a checkpoint, as on SIGTERM) after this many steps of this call (tests).

    Returns
    -------
    dict with ``step``, ``best_val_loss``, ``last_train_loss``, ``out`` and ``stopped`` (True when
    interrupted before ``run.steps``).

    Raises
    ------
    FileExistsError
        ``out`` holds a run and ``resume`` is False.
    FileNotFoundError
        ``resume`` is True and there is no ``out/last.pt``.
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    cfg = validate_config(config)
    out = Path(out)
    last_path = out / "last.pt"
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"cannot resume: {last_path} does not exist")
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        saved = json.loads(state["config"])
        # the run keeps its configuration; only the run section (steps, intervals) may change
        saved["run"] = cfg["run"]
        cfg = validate_config(saved)
    else:
        if last_path.exists() or (out / "log.csv").exists():
            raise FileExistsError(f"{out} already holds a training run; resume it (--resume) or "
                                  f"choose another output folder")
        state = None

    r, o = cfg["run"], cfg["optim"]
    device = _resolve_device(str(r["device"]))
    import torch.distributed as dist

    owns_group = "WORLD_SIZE" in os.environ and not (dist.is_available() and dist.is_initialized())
    rank, world, local = _dist_setup(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if r["threads"] > 0:
        torch.set_num_threads(r["threads"])
    amp_dtype = _amp_dtype(r["amp"], device)
    is_main = rank == 0

    from .registry import build_model, save_checkpoint

    torch.manual_seed(r["seed"])
    model_args = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = build_model(cfg["model"]["name"], **model_args).to(device)
    cfg["model"] = {"name": cfg["model"]["name"], **model.config}
    model.train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=o["lr"], alpha=o["rho"], eps=o["eps"])
    rate, every = float(o["decay_rate"]), int(o["decay_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: rate ** (s // every))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step, position, best, best_loss = 0, 0, math.inf, math.inf
    by = r["select_by"]
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, best_loss = int(state["step"]), float(state["best_val_loss"])
        if state.get("best_by", "val_loss") == by:
            best = float(state.get("best_score", best_loss))
        # else: the criterion changed on resume; the next validation sets the best
        position = int(state["positions"][rank]) if rank < len(state["positions"]) else int(state["positions"][0])
        _set_rng_state(state["rng"])

    if state is None and r["init_weights"]:
        _init_from(model, r["init_weights"])

    ema = None
    if r["ema_decay"] > 0:
        # a run that had no average yet (or a resumed one begun without) starts it here
        ema = _EMA(model, r["ema_decay"], state.get("ema") if state is not None else None)

    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if o["batch_size"] % world:
        raise ValueError(f"optim.batch_size {o['batch_size']} must be a multiple of the {world} ranks")
    per_rank = o["batch_size"] // world

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if state is not None:
            _truncate_log(out / "log.csv", step)
    batches = _Batches(cfg, rank=rank, world=world, position=position, batch=per_rank,
                       dataset=train_data)
    val = _validation_set(cfg, val_data) if is_main else None
    volumes = _volume_set(cfg) if is_main else None
    scale = float(getattr(model, "output_scale", 1.0))
    extra_info = {
        "metaqsm_version": __version__,
        "data_seed": _data_seed(cfg),
        "data_source": cfg["data"]["source"],
        "data_path": cfg["data"]["path"],
        "voxel_size": _fixed_voxel_size(cfg),
        "train_config": cfg,
    }

    def checkpoint(seconds):
        if world > 1:
            import torch.distributed as dist

            positions = [None] * world
            dist.all_gather_object(positions, batches.position)
        else:
            positions = [batches.position]
        if not is_main:
            return
        _atomic_torch_save({
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "step": step,
            "positions": [int(p) for p in positions],
            "best_val_loss": best_loss,
            "best_by": by,
            "best_score": best,
            "rng": _rng_state(),
            "config": json.dumps(cfg),
            "metaqsm_version": __version__,
            "seconds": float(seconds),
        }, last_path)

    t_start = time.perf_counter() - (float(state["seconds"]) if state is not None and "seconds" in state else 0.0)
    bar = None
    if is_main and r["progress"]:
        from tqdm.auto import tqdm

        bar = tqdm(total=r["steps"], initial=step, desc=f"train {cfg['model']['name']}",
                   unit="step", mininterval=2.0, file=sys.stderr, dynamic_ncols=True)
    run_losses, last_loss, stopped, done_here = [], float("nan"), False, 0
    with _Stop() as stop:
        while step < r["steps"]:
            b = batches.next()
            x = b["field"].to(device, non_blocking=True)
            y = b["chi"].to(device, non_blocking=True)
            m = b["mask"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = ddp(x, b["voxel_size"].to(device), b["b0_dir"].to(device))
            data_loss = masked_l1(pred.float() * scale, y * scale, m if o["loss_in_mask"] else None)
            loss = data_loss
            if o["weight_reg"] > 0:
                loss = loss + o["weight_reg"] * regularization(model).to(device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if o["grad_clip"] > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            done_here += 1
            last_loss = float(data_loss.detach())
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"the training loss became {last_loss} at step {step}; "
                                         f"lower optim.lr or enable optim.grad_clip")
            run_losses.append(last_loss)
            row = None
            if is_main and (step % r["log_every"] == 0 or step % r["val_every"] == 0
                            or step == r["steps"]):
                row = {"step": step, "train_loss": f"{np.mean(run_losses):.9g}",
                       "lr": f"{scheduler.get_last_lr()[0]:.6g}",
                       "seconds": f"{time.perf_counter() - t_start:.1f}"}
                run_losses = []
            if is_main and (step % r["val_every"] == 0 or step == r["steps"]):
                judged = ema.net if ema is not None else model  # what best.safetensors keeps
                res = _validate(judged, val, cfg, device, amp_dtype)
                res.update(_validate_volumes(judged, volumes, device))
                row.update({k: f"{v:.9g}" for k, v in res.items()})
                best_loss = min(best_loss, res["val_loss"])
                if res[by] < best:
                    best = res[by]
                    save_checkpoint(out / "best.safetensors", judged,
                                    {**extra_info, "step": step, **res},
                                    half=bool(r["half_checkpoint"]))
            if row is not None:
                _append_log(out / "log.csv", row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            stopping = stop.flag or (stop_after is not None and done_here >= stop_after)
            if world > 1:
                import torch.distributed as dist

                flag = torch.tensor([1.0 if stopping else 0.0], device=device)
                dist.all_reduce(flag)
                stopping = bool(flag.item() > 0)
            if step % r["ckpt_every"] == 0 or stopping or step == r["steps"]:
                checkpoint(time.perf_counter() - t_start)
            if stopping and step < r["steps"]:
                stopped = True
                break
    if bar is not None:
        bar.close()
    if is_main and (out / "log.csv").is_file():
        try:
            plot_log(out / "log.csv")
        except (ValueError, IndexError):  # too few rows to plot
            pass
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()
    return {"step": step, "best_val_loss": best_loss, "best_score": best,
            "last_train_loss": last_loss, "out": str(out),
            "stopped": stopped}

