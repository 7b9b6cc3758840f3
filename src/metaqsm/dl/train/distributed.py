"""Where a run computes: the device, mixed precision, and distributed data parallel (DDP) when
started by ``torchrun`` (one process per rank; rank 0 validates and writes).

The only module of the training that talks to :mod:`torch.distributed`; with one process
(``WORLD_SIZE`` unset) every helper is a plain pass-through.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Ranks", "resolve_device", "amp_dtype", "setup", "wrap", "all_gather", "any_rank",
           "teardown"]


class Ranks(NamedTuple):
    """This process's place in the run."""

    rank: int  #: 0 for the process that validates and writes
    world: int  #: number of processes
    device: torch.device  #: the device of this rank
    owns_group: bool  #: whether this run started the process group (and ends it)


def resolve_device(name):
    """The device of ``run.device`` ("auto": CUDA when available, else the CPU).

    Raises
    ------
    ValueError
        A CUDA device is asked for on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device is {name!r} but CUDA is not available on this machine")
    return dev


def amp_dtype(mode, device):
    """The autocast type of ``run.amp`` on ``device`` (None: full precision)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def setup(device):
    """Join the process group when launched by torchrun (``WORLD_SIZE`` set; NCCL on CUDA, gloo
    on the CPU) and pick this rank's GPU; returns :class:`Ranks`."""
    if "WORLD_SIZE" not in os.environ:
        return Ranks(0, 1, device, False)
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owns = not (dist.is_available() and dist.is_initialized())
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return Ranks(rank, world, device, owns)


def wrap(model, ranks):
    """``model`` in DistributedDataParallel with several ranks, else ``model`` itself."""
    if ranks.world == 1:
        return model
    device = ranks.device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_gather(value, ranks):
    """``value`` of every rank (a list in rank order)."""
    if ranks.world == 1:
        return [value]
    values = [None] * ranks.world
    dist.all_gather_object(values, value)
    return values


def any_rank(flag, ranks):
    """Whether ``flag`` is set on any rank (every rank gets the same answer)."""
    if ranks.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ranks.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def teardown(ranks):
    """Wait for every rank, and end the process group if this run started it."""
    if ranks.world > 1:
        dist.barrier()
    if ranks.owns_group:
        dist.destroy_process_group()
