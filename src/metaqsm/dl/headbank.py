"""A bank of realistic whole heads for training: each head simulated by
:func:`metaqsm.simulate.realistic.realistic_case` (a full multi-echo acquisition processed by the
pipeline: echo fit, unwrapping, the given mask with a skull-stripping error, RESHARP), so its
patches carry the pipeline's own background residue, noise and mask errors rather than the
fast model of :mod:`metaqsm.simulate.corrupt`.

Writing a head costs about 5 s at 2 mm and 40-60 s at 1 mm on one core, too slow to do per
training step; :func:`write_head_bank` fills a folder once (in the background, resumable: heads
already there are skipped) and :class:`HeadBankStream` mixes random patches of its heads into the
corrupted synthetic stream.

A bank's seed must differ from the realistic suite's (2026) and the validation heads' (1):
their anatomies are then other draws of the simulator, never the evaluated ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._fft import mask_box
from ..simulate.synth import VARIANT_FLIPS, flip_sample
from .data import CorruptedStream

__all__ = ["BankGeometry", "bank_geometry", "write_head_bank", "read_head_bank", "HeadBankStream",
           "bank_patch", "RESERVED_SEEDS"]

#: Seeds of the simulator's anatomies that a bank may not use: the realistic suite (2026) and
#: the training's whole-volume validation heads (1).
RESERVED_SEEDS = (1, 2026)

KEYS = ("field", "chi", "mask", "voxel_size", "b0_dir")


class BankGeometry:
    """Ranges of a bank's acquisitions. Heads alternate between a fine (1 mm simulation grid)
    and a quick (2 mm grid) kind: even heads in-plane ``fine_inplane`` mm and slices
    ``fine_slice`` mm, odd heads ``quick_inplane`` and ``quick_slice``; B0 tilted by up to
    ``max_tilt_deg`` degrees."""

    def __init__(self, *, fine_inplane=(1.0, 1.5), fine_slice=(1.0, 3.0),
                 quick_inplane=(2.0, 2.5), quick_slice=(2.0, 4.0), max_tilt_deg=30.0):
        for name, rng, lo in (("fine_inplane", fine_inplane, 1.0), ("fine_slice", fine_slice, 1.0),
                              ("quick_inplane", quick_inplane, 2.0),
                              ("quick_slice", quick_slice, 2.0)):
            a, b = (float(v) for v in rng)
            if not lo <= a <= b:
                raise ValueError(f"{name} must be a range (lo, hi) with {lo} <= lo <= hi mm, got "
                                 f"{tuple(rng)}")
        if not 0.0 <= float(max_tilt_deg) <= 90.0:
            raise ValueError(f"max_tilt_deg must be in [0, 90], got {max_tilt_deg!r}")
        self.fine_inplane, self.fine_slice = tuple(fine_inplane), tuple(fine_slice)
        self.quick_inplane, self.quick_slice = tuple(quick_inplane), tuple(quick_slice)
        self.max_tilt_deg = float(max_tilt_deg)


def bank_geometry(index, *, seed, geometry=None):
    """``(fine_voxel_mm, output voxel size (3 floats), tilt in degrees)`` of head ``index``."""
    g = geometry or BankGeometry()
    rng = np.random.default_rng([int(seed), int(index), 0xBA4C])
    fine = index % 2 == 0
    inplane = rng.uniform(*(g.fine_inplane if fine else g.quick_inplane))
    slab = rng.uniform(*(g.fine_slice if fine else g.quick_slice))
    tilt = float(rng.uniform(0.0, g.max_tilt_deg))
    return (1.0 if fine else 2.0), (float(inplane), float(inplane), float(slab)), tilt


def _head_path(directory, seed, index):
    return Path(directory) / f"head-s{int(seed)}-{int(index):04d}.npz"


def write_head_bank(directory, count, *, seed, start=0, geometry=None, progress=None):
    """Simulate heads ``start .. start + count - 1`` of seed ``seed`` into ``directory`` (one
    ``.npz`` each: field, chi, mask, voxel_size, b0_dir; written whole or not at all), skipping
    those already there. Returns the paths of the bank's heads of that range.

    Raises ``ValueError`` for a reserved seed (:data:`RESERVED_SEEDS`) or a count below 1.
    """
    from ..simulate.realistic import RealisticConfig, realistic_case

    if int(seed) in RESERVED_SEEDS:
        raise ValueError(f"seed {seed} is reserved for evaluation or validation heads "
                         f"({RESERVED_SEEDS}); choose another")
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(int(start), int(start) + int(count)):
        path = _head_path(d, seed, i)
        paths.append(path)
        if path.exists():
            continue
        fine, vsz, tilt = bank_geometry(i, seed=seed, geometry=geometry)
        case = realistic_case(i, output_voxel_size=vsz, b0_tilt_deg=tilt,
                              config=RealisticConfig(fine_voxel_mm=fine), seed=seed)
        tmp = path.with_name(path.stem + ".partial.npz")
        np.savez_compressed(tmp, field=case["field"].astype(np.float32),
                            chi=(case["chi"] * case["mask"]).astype(np.float32),
                            mask=case["mask"].astype(bool),
                            voxel_size=np.asarray(case["voxel_size"], np.float32),
                            b0_dir=np.asarray(case["b0_dir"], np.float32))
        tmp.replace(path)
        if progress is not None:
            progress(i, path, {"fine_voxel_mm": fine, "voxel_size": vsz, "tilt_deg": tilt})
    (d / "bank.json").write_text(json.dumps({
        "generator": "metaqsm.simulate.realistic.realistic_case via metaqsm.dl.headbank",
        "seed": int(seed), "heads": sorted(p.name for p in d.glob("head-*.npz")
                                           if not p.name.endswith(".partial.npz"))}, indent=1))
    return paths


def read_head_bank(directory):
    """The heads of a bank folder: a list of dicts (arrays of :data:`KEYS`), sorted by name.
    ``FileNotFoundError`` when the folder has none."""
    d = Path(directory)
    files = sorted(p for p in d.glob("head-*.npz") if not p.name.endswith(".partial.npz"))
    if not files:
        raise FileNotFoundError(f"no heads (head-*.npz) in the head bank {d}; write them with "
                                f"training/make-head-bank.py")
    heads = []
    for p in files:
        with np.load(p) as z:
            heads.append({k: z[k] for k in KEYS})
    return heads


def _mask_cropped(head):
    box = mask_box(head["mask"], margin=0)
    return {k: np.ascontiguousarray(v[box]) if np.ndim(v) == 3 else v for k, v in head.items()}


def bank_patch(head, shape, rng):
    """A random ``shape`` patch of ``head`` centred on a mask voxel (zero-filled beyond the
    head), as a sample dict; the field and chi are zero outside the patch's mask."""
    m = head["mask"]
    idx = np.flatnonzero(m)
    centre = np.unravel_index(idx[rng.integers(idx.size)], m.shape)
    src, dst = [], []
    for c, n, s in zip(centre, m.shape, shape):
        lo = int(c) - s // 2
        a, b = max(lo, 0), min(lo + s, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out = {}
    for k in ("field", "chi", "mask"):
        v = np.zeros(shape, bool if k == "mask" else np.float32)
        v[tuple(dst)] = head[k][tuple(src)]
        out[k] = v
    out["field"] = out["field"] * out["mask"]
    out["chi"] = out["chi"] * out["mask"]
    out["voxel_size"] = np.asarray(head["voxel_size"], np.float32)
    out["b0_dir"] = np.asarray(head["b0_dir"], np.float32)
    return out


class HeadBankStream(CorruptedStream):
    """:class:`CorruptedStream` in which a fraction of the samples are patches of realistic
    heads from a bank (:func:`write_head_bank`).

    Sample ``i`` is a bank patch with probability ``fraction``, decided by a generator seeded
    with ``(seed, i, 0xBA)``, which also picks the head, the patch's centre (a mask voxel) and
    one of the exact mirror images (:data:`~metaqsm.simulate.synth.VARIANT_FLIPS`); so a
    resumed stream yields the same samples. Other samples are the corrupted stream's. The
    synthetic scene is generated either way (the stream's scenes stay those of its index), so a
    bank patch saves no time.

    Parameters
    ----------
    bank : str or Path or list of dicts
        The bank folder (read once) or its heads.
    fraction : float in [0, 1]
    patch_shape : 3 ints
        The shape of the bank patches (the synthetic samples' shape).
    config, corruption, seed, start, length, variants, block :
        As :class:`CorruptedStream`.
    """

    def __init__(self, config=None, *, bank, fraction, patch_shape, **kwargs):
        super().__init__(config, **kwargs)
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        heads = read_head_bank(bank) if isinstance(bank, (str, Path)) else list(bank)
        if not heads:
            raise ValueError("bank holds no heads")
        # kept cut to each mask's bounding box: the patches (zero-filled beyond the volume)
        # are the same, in about a fifth less memory
        self.heads = [_mask_cropped(h) for h in heads]
        self.fraction = float(fraction)
        self.patch_shape = tuple(int(s) for s in patch_shape)

    def finish(self, index, sample):
        rng = np.random.default_rng((self.seed, int(index), 0xBA))
        if rng.random() < self.fraction:
            head = self.heads[int(rng.integers(len(self.heads)))]
            patch = bank_patch(head, self.patch_shape, rng)
            return flip_sample(patch, VARIANT_FLIPS[int(rng.integers(len(VARIANT_FLIPS)))])
        return super().finish(index, sample)
