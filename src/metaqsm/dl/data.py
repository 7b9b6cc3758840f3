"""Training data for the networks: synthetic samples streamed on the fly, or read from HDF5.

Both datasets yield dicts of torch tensors::

    field      (1, X, Y, Z) float32   local field (ppm), zero outside the mask
    chi        (1, X, Y, Z) float32   susceptibility (ppm), zero outside the mask
    mask       (1, X, Y, Z) bool      brain mask
    voxel_size (3,) float32           mm
    b0_dir     (3,) float32           unit vector in voxel coordinates

so ``torch.utils.data.DataLoader`` batches them into (B, 1, X, Y, Z) and (B, 3) tensors.

:class:`SyntheticStream` draws sample ``i`` from ``generate_sample(i, config=..., seed=...)``;
with ``DataLoader(num_workers=k)`` worker ``w`` takes indices ``start + w, start + w + k, ...``,
so no sample is produced twice and training resumes at a data position with ``start``. With
``variants=K`` each generated scene serves K samples, its exact mirror images
(:func:`~metaqsm.simulate.synth.flip_sample`), spread over blocks of ``K * block`` indices so that
a batch never holds two mirror images of one scene.
:class:`H5Dataset` reads what ``metaqsm synth`` wrote (the format: :mod:`metaqsm.io.trainset`).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..io import trainset
from ..io.trainset import read_manifest
from ..simulate.synth import (TRAIN_SEED_LIMIT, VARIANT_FLIPS, SynthConfig, flip_sample,
                              generate_sample)

__all__ = ["SyntheticStream", "CorruptedStream", "H5Dataset", "to_tensors", "read_manifest", "H5_NAME", "MANIFEST_NAME"]

H5_NAME = trainset.DATASET_FILE  # the files of a data set folder
MANIFEST_NAME = trainset.MANIFEST_FILE


def to_tensors(sample):
    """Convert a sample dict of numpy arrays (as from ``generate_sample``) to torch tensors."""
    out = {}
    for key in ("field", "chi"):
        out[key] = torch.from_numpy(np.ascontiguousarray(sample[key], np.float32))[None]
    out["mask"] = torch.from_numpy(np.ascontiguousarray(sample["mask"], bool))[None]
    for key in ("voxel_size", "b0_dir"):
        out[key] = torch.from_numpy(np.asarray(sample[key], np.float32).reshape(3).copy())
    return out


class SyntheticStream(IterableDataset):
    """Synthetic samples generated on the fly, indices ``start, start + 1, ...``.

    Parameters
    ----------
    config : SynthConfig
        Generator parameters.
    seed : int
        Data set seed (0 <= seed < 10**6); sample ``i`` is ``generate_sample(i, seed=seed)``.
    start : int
        First index (to resume training at a data position).
    length : int or None
        Number of samples (indices ``start .. start + length - 1``); ``None`` streams forever.
    variants : int in 1..8
        Samples made from each generated scene (default 1: every sample its own scene). With
        ``K > 1``, indices come in blocks of ``K * block``: index ``j K block + v block + m`` is
        mirror image ``VARIANT_FLIPS[v]`` of scene ``j block + m``. Mirror images are exact
        (the field of the mirrored scene), so the generator's cost per sample drops about K
        times; the price is less variety per sample (K views of each scene).
    block : int
        Scenes per block when ``variants > 1`` (default 8: two mirror images of one scene are at
        least ``block`` indices apart, so a batch of up to ``block`` holds distinct scenes).

    Notes
    -----
    With several DataLoader workers and ``variants == 1``, worker ``w`` of ``k`` yields indices
    ``start + w + j k``; with ``variants > 1`` it yields the indices of every ``k``-th block
    (the blocks numbered ``w, w + k, ...``), keeping the scenes of its block in memory. Either
    way the samples are disjoint; their order in the batches interleaves the workers (the
    DataLoader takes one batch from each worker in turn). The MNI maps are loaded when the stream
    is made (about 2 s), so forked workers inherit them.

    Examples
    --------
    >>> from torch.utils.data import DataLoader
    >>> ds = SyntheticStream(SynthConfig(patch_shape=(32, 32, 16)), seed=1, length=4)
    >>> batch = next(iter(DataLoader(ds, batch_size=2)))
    >>> tuple(batch["field"].shape), tuple(batch["voxel_size"].shape)
    ((2, 1, 32, 32, 16), (2, 3))
    """

    def __init__(self, config=None, *, seed, start=0, length=None, variants=1, block=8):
        super().__init__()
        for name, val, hi in (("variants", variants, len(VARIANT_FLIPS)), ("block", block, None)):
            if isinstance(val, bool) or int(val) != val or val < 1 or (hi and val > hi):
                rng = f"1..{hi}" if hi else ">= 1"
                raise ValueError(f"{name} must be an integer in {rng}, got {val!r}")
        self.variants = int(variants)
        self.block = int(block)
        self.config = SynthConfig() if config is None else config
        if not isinstance(self.config, SynthConfig):
            raise TypeError(f"config must be a SynthConfig, got {type(self.config).__name__}")
        if isinstance(start, bool) or int(start) != start or start < 0:
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        if length is not None and (isinstance(length, bool) or int(length) != length
                                   or length < 0):
            raise ValueError(f"length must be a non-negative integer or None, got {length!r}")
        self.seed = int(seed)
        if not 0 <= self.seed < TRAIN_SEED_LIMIT:  # fail here, not inside a worker
            raise ValueError(f"seed must be in [0, {TRAIN_SEED_LIMIT}), got {seed!r}")
        self.start = int(start)
        self.length = None if length is None else int(length)
        if self.config.anatomy_weight > 0:
            # load the MNI maps here, once: DataLoader workers forked later inherit them
            from ..simulate.anatomy import mni_maps

            mni_maps()

    def __len__(self):
        if self.length is None:
            raise TypeError("an endless SyntheticStream (length=None) has no length")
        return self.length

    def indices(self, worker=0, num_workers=1):
        """The sample indices worker ``worker`` of ``num_workers`` yields (an iterator)."""
        stop = None if self.length is None else self.start + self.length
        if self.variants == 1:
            first = self.start + worker
            if stop is None:
                return itertools.count(first, num_workers)
            return iter(range(first, stop, num_workers))
        return self._block_indices(worker, num_workers, stop)

    def _block_indices(self, worker, num_workers, stop):
        size = self.variants * self.block
        j = self.start // size
        while True:
            if j % num_workers == worker:
                lo = max(j * size, self.start)
                hi = (j + 1) * size if stop is None else min((j + 1) * size, stop)
                yield from range(lo, hi)
            j += 1
            if stop is not None and j * size >= stop:
                return

    def scene_of(self, index):
        """``(scene, variant)`` of sample ``index``: it is ``flip_sample(generate_sample(scene),
        VARIANT_FLIPS[variant])``."""
        if self.variants == 1:
            return int(index), 0
        j, r = divmod(int(index), self.variants * self.block)
        v, m = divmod(r, self.block)
        return j * self.block + m, v

    def __iter__(self):
        info = get_worker_info()
        worker, n = (0, 1) if info is None else (info.id, info.num_workers)
        cache, cache_block = {}, None
        for index in self.indices(worker, n):
            if self.variants == 1:
                yield to_tensors(self.finish(index, generate_sample(index, config=self.config,
                                                                    seed=self.seed)))
                continue
            scene, v = self.scene_of(index)
            blk = scene // self.block
            if blk != cache_block:  # keep only the scenes of the current block
                cache, cache_block = {}, blk
            if scene not in cache:
                cache[scene] = generate_sample(scene, config=self.config, seed=self.seed)
            yield to_tensors(self.finish(index, flip_sample(cache[scene], VARIANT_FLIPS[v])))

    def finish(self, index, sample):  # noqa: ARG002 - a hook for subclasses
        """The sample of stream index ``index`` from its generated (or mirrored) scene: here
        the sample itself; :class:`CorruptedStream` adds a real scan's imperfections."""
        return sample


class CorruptedStream(SyntheticStream):
    """:class:`SyntheticStream` with a real scan's imperfections added to every sample
    (:func:`metaqsm.simulate.corrupt.corrupt_sample`: non-dipolar fields, spatially varying
    noise, background residue at the edge, an eroded and perturbed mask).

    Parameters
    ----------
    config, seed, start, length, variants, block :
        As :class:`SyntheticStream` (set ``config.field_noise_range = (0, 0)``: the corruption
        adds its own noise).
    corruption : CorruptionConfig, optional
        The ranges of the imperfections (default: ``CorruptionConfig()``).

    Notes
    -----
    Sample ``i`` is corrupted with the generator seeded by ``(seed, i, 0xC0)``: mirror images
    of one scene get different imperfections, and a resumed stream the same ones.
    """

    def __init__(self, config=None, *, corruption=None, **kwargs):
        from ..simulate.corrupt import CorruptionConfig

        super().__init__(config, **kwargs)
        self.corruption = CorruptionConfig() if corruption is None else corruption
        if not isinstance(self.corruption, CorruptionConfig):
            raise TypeError(f"corruption must be a CorruptionConfig, got "
                            f"{type(self.corruption).__name__}")

    def finish(self, index, sample):
        from ..simulate.corrupt import corrupt_sample

        out = corrupt_sample(sample, config=self.corruption,
                             rng=np.random.default_rng((self.seed, int(index), 0xC0)))
        return {k: out[k] for k in ("field", "chi", "mask", "voxel_size", "b0_dir")}


class H5Dataset(Dataset):
    """A data set written by ``metaqsm synth`` (map-style: ``len`` and indexing).

    Parameters
    ----------
    path : str or Path
        The output folder of ``metaqsm synth`` or its ``synth.h5``.
    split : {"train", "val"}
        Which part (the paper's 9:1 split by default).

    Notes
    -----
    Reads through :class:`metaqsm.io.trainset.Reader`, which opens the file lazily in each
    process (after the DataLoader forks its workers), since an open HDF5 handle cannot be
    shared between processes. float16 files are returned as float32.
    """

    def __init__(self, path, split="train"):
        self._reader = trainset.Reader(path, split)
        self.path = self._reader.path
        self.split = split
        self.attrs = self._reader.attrs

    def __len__(self):
        return len(self._reader)

    def __getitem__(self, i):
        if isinstance(i, torch.Tensor):
            i = int(i)
        return to_tensors(self._reader.sample(i))

    def index(self, i):
        """The generator index (``generate_sample(index, seed=...)``) of item ``i``."""
        return self._reader.index(i)
