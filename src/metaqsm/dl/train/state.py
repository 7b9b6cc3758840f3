"""The resume state of a training run (``last.pt``): random generators, atomic saving, loading,
and starting from the weights of another checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ...io import atomic_path
from ..registry import load_model

__all__ = ["rng_state", "set_rng_state", "save_state", "load_state", "init_from"]


def rng_state():
    """The states of torch's (CPU and CUDA), numpy's and Python's global generators, as tensors
    and plain values (so that ``torch.load(weights_only=True)`` reads them)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }


def set_rng_state(state):
    """Restore the generators from :func:`rng_state`'s dict."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_state(state, path):
    """Write ``state`` (a dict of tensors and plain values) to ``path`` atomically, replacing
    the previous one."""
    with atomic_path(path, force=True) as tmp:
        torch.save(state, tmp)


def load_state(path):
    """The state saved at ``path`` (on the CPU).

    Raises
    ------
    FileNotFoundError
        There is no ``path`` to resume from.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def init_from(model, weights):
    """Copy the weights of checkpoint ``weights`` (run.init_weights: a file or a shipped name)
    into ``model``.

    Raises
    ------
    ValueError
        The checkpoint's network has other parameters (another network or shape).
    """
    src = load_model(weights, cache=False)
    mine, theirs = model.state_dict(), src.state_dict()
    same = (src.model_name == model.model_name and mine.keys() == theirs.keys()
            and all(mine[k].shape == theirs[k].shape for k in mine))
    if not same:  # options that change no parameter (e.g. correction_mean) may differ
        raise ValueError(f"run.init_weights {weights} holds a {src.model_name!r} network with "
                         f"{src.config}, but the run builds a {model.model_name!r} network with "
                         f"{model.config}: their parameters differ")
    model.load_state_dict(theirs)
