"""The training data of a run: resumable batches from the synthetic stream, an HDF5 set or a
given dataset, dealt to the DDP ranks, and what the checkpoint records about the data."""

from __future__ import annotations

import numpy as np
import torch

from ..data import CorruptedStream, H5Dataset, SyntheticStream, read_manifest
from .config import synth_config

__all__ = ["RANK_STRIDE", "Batches", "stream", "MapSampler", "stack", "is_map_style", "h5_manifest",
           "data_seed", "fixed_voxel_size"]

RANK_STRIDE = 10 ** 8  # stream index offset between DDP ranks


def h5_manifest(cfg):
    """The manifest of the run's HDF5 data set (dict), or None (stream data, or unreadable)."""
    if cfg["data"]["source"] != "h5":
        return None
    try:
        return read_manifest(cfg["data"]["path"])
    except (FileNotFoundError, ValueError):
        return None


def data_seed(cfg):
    """The seed the training data were generated with (an HDF5 set's own, from its manifest)."""
    if cfg["data"]["source"] == "h5":
        manifest = h5_manifest(cfg)
        return None if manifest is None else manifest.get("seed")
    return cfg["data"]["seed"]


def fixed_voxel_size(cfg):
    """The training voxel size when the data has a single one (Mesa-QSM), else None: from the
    manifest of an HDF5 set, else from the stream's configuration."""
    vr = cfg["data"]["synth"].get("voxel_size_range")
    if cfg["data"]["source"] == "h5":
        manifest = h5_manifest(cfg)
        vr = None if manifest is None else manifest.get("config", {}).get("voxel_size_range")
    if vr is None:
        return None
    vr = np.asarray(vr, float)
    if vr.shape == (3, 2) and np.allclose(vr[:, 0], vr[:, 1]):
        return [float(v) for v in vr[:, 0]]
    return None


def stream(cfg, **kwargs):
    """The configured synthetic stream: :class:`SyntheticStream`, or for ``data.source =
    "realistic"`` a :class:`CorruptedStream` with ``data.corrupt``'s ranges (a
    :class:`~metaqsm.dl.headbank.HeadBankStream` when ``data.head_bank_fraction`` > 0)."""
    d = cfg["data"]
    if d["source"] == "realistic":
        from ...simulate.corrupt import CorruptionConfig

        corruption = CorruptionConfig.from_dict(d["corrupt"])
        if d.get("head_bank_fraction", 0.0) > 0:
            from ..headbank import HeadBankStream

            return HeadBankStream(synth_config(cfg), **kwargs, corruption=corruption,
                                  bank=d["head_bank"], fraction=d["head_bank_fraction"],
                                  patch_shape=d["patch_shape"])
        return CorruptedStream(synth_config(cfg), **kwargs, corruption=corruption)
    return SyntheticStream(synth_config(cfg), **kwargs)


def is_map_style(dataset):
    """Whether ``dataset`` has ``len`` and indexing (else it is iterated)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return False
    return hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


class MapSampler:
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


def stack(samples):
    """A batch of sample dicts: (B, 1, X, Y, Z) volumes and (B, 3) geometry, float32 (mask kept)."""
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


class Batches:
    """Resumable batch source. ``position`` counts the samples this rank has consumed."""

    def __init__(self, cfg, *, rank, world, position, batch, dataset=None):
        self.batch = batch
        self.position = position
        self.rank, self.world = rank, world
        self.cfg = cfg
        if dataset is None and cfg["data"]["source"] == "h5":
            dataset = H5Dataset(cfg["data"]["path"], split="train")
        self.dataset = dataset
        if dataset is not None and is_map_style(dataset):
            self.sampler = MapSampler(len(dataset), seed=cfg["data"]["seed"], rank=rank, world=world)
            self._iter = None
        else:
            self.sampler = None
            self._iter = self._stream_iter(dataset)

    def _stream_iter(self, dataset):
        if dataset is None:
            d = self.cfg["data"]
            dataset = stream(self.cfg, seed=d["seed"], start=self.rank * RANK_STRIDE + self.position,
                             variants=d["variants"], block=d["variant_block"])
        workers = self.cfg["run"]["num_workers"]
        if workers > 0:
            loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                                 prefetch_factor=2, persistent_workers=False)
            return iter(loader)
        return iter(dataset)

    def next(self):
        """The next batch (:func:`stack`); advances :attr:`position`."""
        if self.sampler is not None:
            samples = [self.dataset[self.sampler.index(self.position + i)] for i in range(self.batch)]
        else:
            samples = [next(self._iter) for _ in range(self.batch)]
        self.position += self.batch
        return stack(samples)
