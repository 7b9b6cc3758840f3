"""Training data sets: the synthetic stream (workers, resume) and the HDF5 data set."""

from __future__ import annotations

import numpy as np
import pytest

import torch
from torch.utils.data import DataLoader

from metaqsm.dl.data import H5Dataset, SyntheticStream, read_manifest
from metaqsm.simulate.anatomy import mni_maps
from metaqsm.simulate.synth import VARIANT_FLIPS, SynthConfig, flip_sample, generate_sample

CFG = SynthConfig(patch_shape=(16, 16, 8), margin_mm=8.0)


@pytest.fixture(scope="module", autouse=True)
def _maps():
    mni_maps()  # load before DataLoader forks its workers, so they inherit it


def _key(t):
    return round(float(t["field"].double().abs().sum()), 6), tuple(t["voxel_size"].tolist())


def test_stream_two_workers_no_duplicates_and_same_samples():
    ds = SyntheticStream(CFG, seed=7, length=6)
    assert len(ds) == 6
    loader = DataLoader(ds, batch_size=1, num_workers=2)
    got = []
    for batch in loader:
        assert batch["field"].shape == (1, 1, 16, 16, 8)
        assert batch["field"].dtype == torch.float32 and batch["mask"].dtype == torch.bool
        assert batch["voxel_size"].shape == (1, 3) and batch["b0_dir"].shape == (1, 3)
        got.append(_key({k: v[0] for k, v in batch.items()}))
    assert len(got) == 6 and len(set(got)) == 6
    want = set()
    for i in range(6):
        s = generate_sample(i, config=CFG, seed=7)
        want.add((round(float(np.abs(s["field"].astype(np.float64)).sum()), 6),
                  tuple(float(v) for v in s["voxel_size"])))
    assert set(got) == want


def test_stream_worker_indices_disjoint_and_resume_at_start():
    ds = SyntheticStream(CFG, seed=1, start=10, length=7)
    parts = [list(ds.indices(w, 3)) for w in range(3)]
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(10, 17))
    endless = SyntheticStream(CFG, seed=1, start=5)
    it = endless.indices(1, 2)
    assert [next(it) for _ in range(3)] == [6, 8, 10]
    with pytest.raises(TypeError, match="no length"):
        len(endless)
    # resuming: the stream from start=3 gives samples 3, 4 exactly
    batch = next(iter(DataLoader(SyntheticStream(CFG, seed=1, start=3, length=2), batch_size=2)))
    for b, index in enumerate((3, 4)):
        s = generate_sample(index, config=CFG, seed=1)
        np.testing.assert_array_equal(batch["chi"][b, 0].numpy(), s["chi"])
        np.testing.assert_array_equal(batch["mask"][b, 0].numpy(), s["mask"])
        np.testing.assert_array_equal(batch["b0_dir"][b].numpy(), s["b0_dir"])


def test_stream_variants_mirror_images_disjoint_and_spread():
    """variants=K: K exact mirror images of each scene, never two of one scene within `block`
    consecutive indices, every index once over the workers, and resuming mid-block works."""
    ds = SyntheticStream(CFG, seed=3, start=2, length=14, variants=2, block=3)
    parts = [list(ds.indices(w, 2)) for w in range(2)]
    assert sorted(i for p in parts for i in p) == list(range(2, 16))
    assert not set(parts[0]) & set(parts[1])
    pairs = [ds.scene_of(i) for i in range(12)]
    assert len(set(pairs)) == 12 and {v for _, v in pairs} == {0, 1}
    for i in range(12 - 3):  # any 3 consecutive indices: distinct scenes
        assert len({ds.scene_of(j)[0] for j in range(i, i + 3)}) == 3
    got = list(SyntheticStream(CFG, seed=3, start=2, length=4, variants=2, block=3))
    for k, t in enumerate(got):
        scene, v = ds.scene_of(2 + k)
        want = flip_sample(generate_sample(scene, config=CFG, seed=3), VARIANT_FLIPS[v])
        for key in ("field", "chi", "mask", "b0_dir", "voxel_size"):
            np.testing.assert_array_equal(t[key].numpy().reshape(np.shape(want[key])), want[key])
    with pytest.raises(ValueError, match="variants must be an integer in 1..8"):
        SyntheticStream(CFG, seed=0, variants=9)
    with pytest.raises(ValueError, match="block must be an integer"):
        SyntheticStream(CFG, seed=0, variants=2, block=0)


def test_stream_errors():
    with pytest.raises(ValueError, match="seed must be in"):
        SyntheticStream(CFG, seed=10 ** 6)
    with pytest.raises(ValueError, match="start must be a non-negative integer"):
        SyntheticStream(CFG, seed=0, start=-1)
    with pytest.raises(ValueError, match="length must be a non-negative integer"):
        SyntheticStream(CFG, seed=0, length=1.5)
    with pytest.raises(TypeError, match="config must be a SynthConfig"):
        SyntheticStream({"patch_shape": (8, 8, 8)}, seed=0)


def test_h5_dataset_round_trip(tmp_path):
    from metaqsm.cli import main

    out = tmp_path / "data"
    assert main(["synth", "-n", "5", "-o", str(out), "--seed", "2", "--patch", "16", "16", "8",
                 "--split", "0.6", "--dtype", "float16", "--workers", "2"]) == 0
    train, val = H5Dataset(out, "train"), H5Dataset(out / "synth.h5", split="val")
    assert len(train) == 3 and len(val) == 2
    assert read_manifest(out)["counts"] == {"train": 3, "val": 2}
    cfg = SynthConfig(patch_shape=(16, 16, 8))
    item = val[1]
    assert val.index(1) == 4
    s = generate_sample(4, config=cfg, seed=2)
    assert item["field"].shape == (1, 16, 16, 8) and item["field"].dtype == torch.float32
    # float16 storage: relative precision 2^-11
    np.testing.assert_allclose(item["field"][0].numpy(), s["field"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(item["chi"][0].numpy(), s["chi"], rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(item["mask"][0].numpy(), s["mask"])
    np.testing.assert_allclose(item["voxel_size"].numpy(), s["voxel_size"])
    batches = list(DataLoader(train, batch_size=2, num_workers=2, shuffle=False))
    assert [b["chi"].shape[0] for b in batches] == [2, 1]
    assert torch.equal(batches[1]["chi"][0], train[2]["chi"])
    with pytest.raises(IndexError, match="out of range"):
        train[3]
    with pytest.raises(ValueError, match="split must be one of"):
        H5Dataset(out, "test")
    with pytest.raises(FileNotFoundError, match="no synthetic data set"):
        H5Dataset(tmp_path / "missing")
