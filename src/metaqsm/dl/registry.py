"""Models by name, and checkpoints that store the name, the config and the weights.

A checkpoint is one safetensors file: the tensors of the model's ``state_dict`` (optionally stored
as float16) and, in the file's metadata, the architecture name, its constructor config and any
extra information (training step, validation scores, data seed, package version) as JSON. Loading
needs no pickle.

Shipped models live in ``metaqsm/models/`` inside the package (see :data:`SHIPPED`).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from .._version import __version__
from ..methods import INVERSIONS

__all__ = [
    "MODELS",
    "SHIPPED",
    "MODELS_DIR",
    "register_model",
    "build_model",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "load_model",
    "shipped_path",
]

MODELS: dict = {}

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

# shipped model name -> file in MODELS_DIR: the models the method table lists for its networks
SHIPPED = {name: f"{name}.safetensors" for m in INVERSIONS.values() for name in m.shipped}

_FORMAT = "metaqsm-checkpoint-1"


def register_model(name):
    """Class decorator: register a network class under ``name`` (sets ``cls.model_name``)."""

    def deco(cls):
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"a model named {name!r} is already registered ({MODELS[name].__name__})")
        cls.model_name = name
        MODELS[name] = cls
        return cls

    return deco


def _ensure_registered():
    from . import unet, unrolled  # noqa: F401 - registers the networks


def build_model(name, **config):
    """Build the registered network ``name`` with constructor arguments ``config``."""
    _ensure_registered()
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {name!r}")
    return MODELS[name](**config)


def save_checkpoint(path, model, extra=None, *, half=False):
    """Write ``model`` (name, config, weights) and ``extra`` (a JSON-able dict) to a safetensors file.

    Parameters
    ----------
    path : str or Path
        Output file; written atomically (a temporary file renamed into place).
    model : a registered network (or a DistributedDataParallel wrapper of one)
    extra : dict, optional
        Stored as JSON in the metadata (e.g. step, validation metrics, data seed).
    half : bool
        Store floating-point tensors as float16 (half the size; loaded back as float32).
    """
    from safetensors.torch import save_file

    model = getattr(model, "module", model)
    name = getattr(model, "model_name", None)
    if name is None or not hasattr(model, "config"):
        raise TypeError(f"model must be a registered metaqsm network, got {type(model).__name__}")
    tensors = {}
    for key, t in model.state_dict().items():
        t = t.detach().cpu()
        if half and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[key] = t.contiguous()
    meta = {
        "format": _FORMAT,
        "model": name,
        "config": json.dumps(model.config),
        "extra": json.dumps(extra or {}),
        "metaqsm_version": __version__,
        "dtype": "float16" if half else "float32",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)  # readable by everyone once shipped inside the package
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_checkpoint_info(path):
    """The metadata of a checkpoint: dict with ``model``, ``config``, ``extra``, ``metaqsm_version``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a safetensors checkpoint: {exc}") from None
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a metaqsm checkpoint (no {_FORMAT!r} metadata)")
    return {
        "model": meta["model"],
        "config": json.loads(meta["config"]),
        "extra": json.loads(meta.get("extra", "{}")),
        "metaqsm_version": meta.get("metaqsm_version"),
        "dtype": meta.get("dtype", "float32"),
    }


def load_checkpoint(path, device="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`: returns ``(model, info)``.

    The model is in eval mode, float32, on ``device``; ``info`` is :func:`read_checkpoint_info`.
    """
    from safetensors.torch import load_file

    info = read_checkpoint_info(path)
    model = build_model(info["model"], **info["config"])
    state = load_file(str(path), device="cpu")
    ref = model.state_dict()
    state = {k: (v.to(ref[k].dtype) if k in ref else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), info


def shipped_path(name):
    """Path of the shipped model ``name``; FileNotFoundError naming the file when it is missing."""
    if name not in SHIPPED:
        raise ValueError(f"shipped model must be one of {', '.join(SHIPPED)}, got {name!r}")
    path = MODELS_DIR / SHIPPED[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped model {name!r} is not installed: {path} is missing (train one with "
            f"`metaqsm train` and pass its best.safetensors as weights)")
    return path


@functools.lru_cache(maxsize=8)
def _load_cached(path, mtime, device):  # noqa: ARG001 - mtime invalidates the cache entry
    model, _ = load_checkpoint(path, device=device)
    return model


def load_model(name_or_path, device="cpu", *, cache=True):
    """Load a network from a checkpoint path or a shipped model name.

    Parameters
    ----------
    name_or_path : str or Path
        A ``.safetensors`` checkpoint written by :func:`save_checkpoint` (e.g. a training run's
        ``best.safetensors``), or a shipped name: ``"meta"``, ``"mesa-0.5x0.5x2"``,
        ``"mesa-0.7639x0.7639x3"``.
    device : str
        "cpu" or "cuda" (or "cuda:N").
    cache : bool
        Reuse a model already loaded in this process (the same object: do not modify it).

    Returns
    -------
    model : torch.nn.Module in eval mode

    Raises
    ------
    FileNotFoundError
        The path, or the shipped model's file, does not exist.
    ValueError
        The file is not a metaqsm checkpoint, or the name is unknown.
    """
    key = str(name_or_path)
    if key in SHIPPED:
        path = shipped_path(key)
    else:
        path = Path(key)
        if not path.is_file():
            raise FileNotFoundError(
                f"model {key!r} is neither a checkpoint file nor a shipped model name "
                f"({', '.join(SHIPPED)})")
    path = path.resolve()
    if not cache:
        return load_checkpoint(path, device=device)[0]
    return _load_cached(str(path), path.stat().st_mtime_ns, str(device))
