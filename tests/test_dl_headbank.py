"""The bank of realistic heads for training (metaqsm.dl.headbank)."""

import numpy as np
import pytest

pytest.importorskip("torch")

from metaqsm.dl.data import CorruptedStream  # noqa: E402
from metaqsm.dl.headbank import (RESERVED_SEEDS, BankGeometry, HeadBankStream,  # noqa: E402
                                 bank_geometry, bank_patch, read_head_bank, write_head_bank)
from metaqsm.simulate.synth import SynthConfig  # noqa: E402

SMALL = SynthConfig(patch_shape=(16, 16, 16), field_noise_range=(0.0, 0.0))


def fake_head(shape=(30, 26, 20)):
    """A head-like sample: an ellipsoid mask, chi and field that identify their voxels."""
    g = np.indices(shape).astype(np.float32)
    c = (np.array(shape, np.float32) - 1) / 2
    mask = (((g - c[:, None, None, None]) / (c[:, None, None, None])) ** 2).sum(0) < 0.8
    chi = (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1.0) * mask
    return {"field": (chi * 0.5).astype(np.float32), "chi": chi, "mask": mask,
            "voxel_size": np.array([1.0, 1.5, 2.0], np.float32),
            "b0_dir": np.array([0.0, 0.6, 0.8], np.float32)}


def test_bank_geometry_ranges_and_determinism():
    g = BankGeometry()
    for i in range(40):
        fine, vsz, tilt = bank_geometry(i, seed=7)
        assert (fine, vsz, tilt) == bank_geometry(i, seed=7)
        lo_hi_in, lo_hi_sl = ((g.fine_inplane, g.fine_slice) if i % 2 == 0
                              else (g.quick_inplane, g.quick_slice))
        assert fine == (1.0 if i % 2 == 0 else 2.0)
        assert vsz[0] == vsz[1] and lo_hi_in[0] <= vsz[0] <= lo_hi_in[1]
        assert lo_hi_sl[0] <= vsz[2] <= lo_hi_sl[1] and min(vsz) >= fine
        assert 0.0 <= tilt <= g.max_tilt_deg
    assert bank_geometry(0, seed=7) != bank_geometry(0, seed=8)
    with pytest.raises(ValueError, match="fine_inplane must be a range"):
        BankGeometry(fine_inplane=(0.5, 1.0))  # below the 1 mm simulation grid
    with pytest.raises(ValueError, match="max_tilt_deg"):
        BankGeometry(max_tilt_deg=120)


def test_write_head_bank_refuses_reserved_seeds_and_bad_counts(tmp_path):
    for seed in RESERVED_SEEDS:
        with pytest.raises(ValueError, match="reserved"):
            write_head_bank(tmp_path, 1, seed=seed)
    with pytest.raises(ValueError, match="count must be a positive integer"):
        write_head_bank(tmp_path, 0, seed=7)
    assert not list(tmp_path.iterdir())  # refused before any work
    with pytest.raises(FileNotFoundError, match="no heads"):
        read_head_bank(tmp_path)


def test_write_head_bank_one_quick_head(tmp_path):
    """Head 1 (odd: the 2 mm kind, a few seconds) is the realistic case of its geometry, written
    whole, read back, and not simulated again."""
    from metaqsm.simulate.realistic import RealisticConfig, realistic_case

    (path,) = write_head_bank(tmp_path, 1, seed=7, start=1)
    assert path.exists() and (tmp_path / "bank.json").exists()
    assert not list(tmp_path.glob("*.partial.npz"))
    (head,) = read_head_bank(tmp_path)
    fine, vsz, tilt = bank_geometry(1, seed=7)
    case = realistic_case(1, output_voxel_size=vsz, b0_tilt_deg=tilt,
                          config=RealisticConfig(fine_voxel_mm=fine), seed=7)
    np.testing.assert_array_equal(head["mask"], case["mask"])
    np.testing.assert_allclose(head["field"], case["field"], atol=0)
    np.testing.assert_allclose(head["chi"], case["chi"] * case["mask"], atol=0)
    # the acquisition's grid (the requested size, adjusted to a whole number of voxels)
    np.testing.assert_allclose(head["voxel_size"], case["voxel_size"], rtol=1e-6)
    np.testing.assert_allclose(head["voxel_size"], vsz, rtol=0.02)
    assert head["mask"].any() and head["field"][~head["mask"]].max(initial=0) == 0
    mtime = path.stat().st_mtime_ns
    write_head_bank(tmp_path, 1, seed=7, start=1)  # already there: skipped
    assert path.stat().st_mtime_ns == mtime


def test_bank_patch_is_a_crop_centred_in_the_mask():
    head = fake_head()
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = bank_patch(head, (16, 12, 40), rng)  # the last axis is larger than the head
        assert p["field"].shape == p["chi"].shape == p["mask"].shape == (16, 12, 40)
        assert p["mask"][8, 6, 20]  # the centre voxel is a mask voxel
        vals = p["chi"][p["mask"]]
        idx = np.unravel_index(vals.astype(np.int64) - 1, head["chi"].shape)
        assert head["mask"][idx].all()  # every value comes from the head's mask
        # the crop is contiguous: neighbours along the first axis differ by Y * Z
        a = p["chi"][:-1] * p["mask"][1:] * p["mask"][:-1]
        b = p["chi"][1:] * p["mask"][1:] * p["mask"][:-1]
        np.testing.assert_array_equal((b - a)[a > 0], 26 * 20)
        np.testing.assert_allclose(p["field"], 0.5 * p["chi"])
        assert not p["chi"][~p["mask"]].any()
    np.testing.assert_array_equal(p["b0_dir"], head["b0_dir"])


def test_head_bank_stream_mixes_deterministically():
    heads = [fake_head(), fake_head(shape=(24, 24, 24))]
    kw = dict(seed=3, variants=2, block=2, length=12)
    a = list(HeadBankStream(SMALL, bank=heads, fraction=0.5, patch_shape=(16, 16, 16), **kw))
    b = list(HeadBankStream(SMALL, bank=heads, fraction=0.5, patch_shape=(16, 16, 16), **kw))
    plain = list(CorruptedStream(SMALL, **kw))
    n_bank = 0
    for x, y, z in zip(a, b, plain):
        for k in ("field", "chi", "mask", "b0_dir", "voxel_size"):
            np.testing.assert_array_equal(x[k].numpy(), y[k].numpy())  # resumable: same samples
        from_bank = float(x["voxel_size"][2]) == 2.0 and float(x["chi"].max()) >= 1.0
        n_bank += from_bank
        if not from_bank:  # the corrupted stream's own sample
            np.testing.assert_array_equal(x["chi"].numpy(), z["chi"].numpy())
        else:  # a mirror image of a head's patch: B0 keeps its length, components flip sign
            np.testing.assert_allclose(np.abs(x["b0_dir"].numpy()), [0.0, 0.6, 0.8], atol=1e-6)
    assert 0 < n_bank < len(a)
    none = list(HeadBankStream(SMALL, bank=heads, fraction=0.0, patch_shape=(16, 16, 16), **kw))
    for x, z in zip(none, plain):
        np.testing.assert_array_equal(x["field"].numpy(), z["field"].numpy())
    with pytest.raises(ValueError, match="fraction must be in"):
        HeadBankStream(SMALL, bank=heads, fraction=2.0, patch_shape=(16, 16, 16), seed=0)
    with pytest.raises(ValueError, match="no heads"):
        HeadBankStream(SMALL, bank=[], fraction=0.5, patch_shape=(16, 16, 16), seed=0)


def test_training_stream_reads_the_configured_bank(tmp_path):
    """`data.head_bank_fraction` > 0 makes the training stream a HeadBankStream over the
    folder; an empty folder fails when the stream is made (before any training step)."""
    from metaqsm.dl.train.batches import stream
    from metaqsm.dl.train.config import DEFAULT_CONFIG, apply_overrides, validate_config

    cfg = validate_config(apply_overrides(DEFAULT_CONFIG, [
        'data.source="realistic"', f'data.head_bank="{tmp_path.as_posix()}"',
        "data.head_bank_fraction=0.5", "data.patch_shape=[16, 16, 16]"]))
    with pytest.raises(FileNotFoundError, match="no heads"):
        stream(cfg, seed=0)
    head = fake_head()
    np.savez_compressed(tmp_path / "head-s7-0000.npz", **{k: head[k] for k in
                                                          ("field", "chi", "mask", "voxel_size",
                                                           "b0_dir")})
    s = stream(cfg, seed=0)
    assert isinstance(s, HeadBankStream) and len(s.heads) == 1 and s.fraction == 0.5
    assert s.patch_shape == (16, 16, 16)
