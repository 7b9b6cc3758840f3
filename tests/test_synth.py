"""Synthetic training data: generator, reductions, augmentations, anatomy, test sets, CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from metaqsm.kernels import forward_field, padded_shape
from metaqsm.simulate import anatomy, augment, synth, testsets
from metaqsm.simulate.synth import (SynthConfig, block_reduce, fine_scene, flip_sample,
                                    generate_sample, kspace_reduce)

SMALL = dict(patch_shape=(24, 24, 12), margin_mm=8.0)


def small(**kw):
    return SynthConfig(**{**SMALL, **kw})


def _crop(x, scene, config):
    return x[tuple(slice(o, o + n) for o, n in zip(scene.offset, config.patch_shape))]


# ------------------------------------------------------------------------- generator
def test_deterministic_by_seed_and_index():
    cfg = small()
    a = generate_sample(3, config=cfg, seed=5)
    b = generate_sample(3, config=cfg, seed=5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = generate_sample(4, config=cfg, seed=5)
    d = generate_sample(3, config=cfg, seed=6)
    assert not np.array_equal(a["chi"], c["chi"])
    assert not np.array_equal(a["chi"], d["chi"])


def test_shapes_dtypes_and_ranges():
    cfg = small(voxel_size_range=((0.6, 0.7), (0.8, 0.9), (1.5, 2.5)), max_tilt_deg=25.0,
                anatomy_weight=1.0, geometric_weight=1.0)
    lo = np.array([0.6, 0.8, 1.5])
    hi = np.array([0.7, 0.9, 2.5])
    for i in range(6):
        s = generate_sample(i, config=cfg, seed=2)
        assert set(s) == {"field", "chi", "mask", "voxel_size", "b0_dir"}
        for key in ("field", "chi"):
            assert s[key].shape == (24, 24, 12) and s[key].dtype == np.float32
        assert s["mask"].dtype == bool and s["mask"].any()
        assert s["voxel_size"].shape == (3,) and s["b0_dir"].shape == (3,)
        assert np.all(s["voxel_size"] >= lo - 1e-6) and np.all(s["voxel_size"] <= hi + 1e-6)
        assert abs(np.linalg.norm(s["b0_dir"]) - 1) < 1e-6
        assert np.degrees(np.arccos(s["b0_dir"][2])) <= 25.0 + 1e-3
        assert np.all(s["chi"][~s["mask"]] == 0) and np.all(s["field"][~s["mask"]] == 0)
        # bleeds up to +1.5 ppm, calcifications down to -1 ppm, veins up to 0.6 ppm
        assert -1.0 - 1e-6 <= s["chi"].min() and s["chi"].max() <= 1.5 + 1e-6


@pytest.mark.parametrize("kw", [
    dict(),
    dict(max_tilt_deg=30.0, field_pad="auto"),
    dict(reduction="kspace", anatomy_weight=0.0, geometric_weight=1.0),
])
def test_field_is_forward_model_of_fine_chi_then_reduced(kw):
    """The sample's field = crop(reduce(forward_field(fine chi))) inside the mask, and its chi
    = crop(reduce(fine chi))."""
    cfg = small(field_noise_range=(0.0, 0.0), **kw)
    for index in (0, 1):
        scene = fine_scene(index, config=cfg, seed=11)
        s = generate_sample(index, config=cfg, seed=11)
        pad = 0 if cfg.field_pad == "none" else "auto"
        f_fine = forward_field(scene.chi, voxel_size=scene.fine_voxel, b0_dir=scene.b0_dir,
                               pad=pad)
        red = block_reduce if cfg.reduction == "block" else kspace_reduce
        field = _crop(red(f_fine, scene.factors), scene, cfg)
        chi = _crop(red(scene.chi, scene.factors), scene, cfg)
        m = s["mask"]
        assert np.all(scene.fine_voxel * scene.factors == pytest.approx(s["voxel_size"], 1e-6))
        scale = np.abs(field[m]).max()
        assert scale > 1e-3
        assert np.abs(s["field"][m] - field[m]).max() <= 1e-5 * scale
        assert np.abs(s["chi"][m] - chi[m]).max() <= 1e-6
        # the mask is the brain occupancy of the target voxels
        occ = _crop(block_reduce(scene.mask, scene.factors), scene, cfg)
        np.testing.assert_array_equal(m, occ >= 0.5)


@pytest.mark.parametrize("axes", [(0,), (0, 1), (0, 1, 2)])
def test_mirror_image_is_the_sample_of_the_mirrored_scene(axes):
    """flip_sample is exact: simulating the mirrored fine scene with the mirrored B0 direction
    (then reducing and cropping the mirrored patch) gives the mirrored sample."""
    cfg = small(field_noise_range=(0.0, 0.0), max_tilt_deg=30.0)
    scene = fine_scene(2, config=cfg, seed=5)
    s = generate_sample(2, config=cfg, seed=5)
    t = flip_sample(s, axes)
    b0 = np.array(scene.b0_dir, float)
    b0[list(axes)] *= -1
    np.testing.assert_allclose(t["b0_dir"], b0, atol=1e-7)
    f_fine = forward_field(np.flip(scene.chi, axes), voxel_size=scene.fine_voxel, b0_dir=b0, pad=0)
    field = block_reduce(f_fine, scene.factors)
    region = np.array(field.shape)
    offset = np.array(scene.offset)
    offset[list(axes)] = (region - offset - np.array(cfg.patch_shape))[list(axes)]
    field = field[tuple(slice(o, o + n) for o, n in zip(offset, cfg.patch_shape))]
    m = t["mask"]
    np.testing.assert_array_equal(m, np.flip(s["mask"], axes))
    scale = np.abs(field[m]).max()
    assert scale > 1e-3
    assert np.abs(t["field"][m] - field[m]).max() <= 1e-5 * scale
    np.testing.assert_array_equal(t["chi"], np.flip(s["chi"], axes))
    np.testing.assert_array_equal(t["voxel_size"], s["voxel_size"])
    with pytest.raises(ValueError, match="axes must be a subset"):
        flip_sample(s, (3,))


def test_fine_grid_is_not_the_inverse_crime():
    """Simulating at the target grid from the reduced chi gives a visibly different field."""
    cfg = small(field_noise_range=(0.0, 0.0))
    s = generate_sample(0, config=cfg, seed=3)
    scene = fine_scene(0, config=cfg, seed=3)
    chi_c = block_reduce(scene.chi, scene.factors)
    coarse = _crop(forward_field(chi_c, voxel_size=scene.voxel_size, b0_dir=scene.b0_dir, pad=0),
                   scene, cfg)
    m = s["mask"]
    rel = np.linalg.norm(coarse[m] - s["field"][m]) / np.linalg.norm(s["field"][m])
    assert 0.01 < rel < 0.5


def test_fine_grid_subdivides_the_voxel():
    cfg = small(voxel_size_range=((1.0, 1.0), (0.5, 0.5), (3.0, 3.0)))
    scene = fine_scene(0, config=cfg, seed=1)
    np.testing.assert_array_equal(scene.factors, [2, 2, 3])
    np.testing.assert_allclose(scene.fine_voxel, [0.5, 0.25, 1.0])
    assert scene.chi.shape == tuple(np.asarray(scene.mask.shape))
    assert all(n % f == 0 for n, f in zip(scene.chi.shape, scene.factors))
    # the fine region holds the patch plus at least margin_mm on each side
    region = np.asarray(scene.chi.shape) // scene.factors
    assert np.all(scene.offset * scene.voxel_size >= 8.0 - 1e-9)
    assert np.all(region - scene.offset - np.asarray(cfg.patch_shape) >= scene.offset)


def test_memory_estimate_and_guard(monkeypatch):
    cfg = small(voxel_size_range=((0.5, 1.0), (0.5, 1.0), (2.0, 4.0)))
    # the sample's own estimate: fine grid (and its FFT grid) times the bytes per voxel
    scene = fine_scene(0, config=cfg, seed=1)
    fine = int(np.prod(scene.chi.shape))
    own = synth.memory_estimate(cfg, scene.voxel_size)
    assert own == 16 * fine + 8 * fine  # field_pad "none": the FFT grid is the fine grid
    padded = SynthConfig(**{**SMALL, "field_pad": "auto"})
    fft = padded_shape(scene.chi.shape, "auto")  # each axis doubled, fast lengths
    assert synth.memory_estimate(padded, scene.voxel_size) == 16 * int(np.prod(fft)) + 8 * fine
    # the range's worst case bounds every sample's
    worst = synth.memory_estimate(cfg)
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.uniform([0.5, 0.5, 2.0], [1.0, 1.0, 4.0])
        assert synth.memory_estimate(cfg, v) <= worst
    # the test set of the paper suite: 8.5 GiB (measured peak of its volume 099: 8.4 GiB)
    big = testsets.testset_config("paper")
    assert 8.0 < synth.memory_estimate(big, (0.8301031, 0.9493271, 3.9952316)) / 2 ** 30 < 9.0
    # too little memory: a clear error before the large arrays, naming what to change
    monkeypatch.setattr(synth, "_available_memory", lambda: own // 2)
    with pytest.raises(MemoryError, match=r"patch_shape=\(24, 24, 12\).*GiB are available"):
        generate_sample(0, config=cfg, seed=1)
    monkeypatch.setattr(synth, "_available_memory", lambda: None)  # unknown: no check
    assert generate_sample(0, config=cfg, seed=1)["chi"].shape == (24, 24, 12)
    with pytest.raises(ValueError, match="voxel_size"):
        synth.memory_estimate(cfg, (1.0, 0.0, 2.0))


def test_geometric_and_anatomy_sources():
    geo = small(anatomy_weight=0.0, geometric_weight=1.0)
    assert fine_scene(0, config=geo, seed=1).source == "geometric"
    ana = small(anatomy_weight=1.0, geometric_weight=0.0)
    s = fine_scene(0, config=ana, seed=1)
    assert s.source == "anatomy"
    assert s.mask.mean() > 0.3


def test_min_brain_fraction_prefers_brain_crops():
    cfg = small(anatomy_weight=1.0, geometric_weight=0.0, min_brain_fraction=0.9)
    fracs = [generate_sample(i, config=cfg, seed=4)["mask"].mean() for i in range(4)]
    assert min(fracs) > 0.6


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed must be <"):
        generate_sample(0, config=small(), seed=10 ** 6)
    with pytest.raises(ValueError, match="index must be >= 0"):
        generate_sample(-1, config=small(), seed=0)
    with pytest.raises(TypeError, match="config must be a SynthConfig"):
        generate_sample(0, config={"patch_shape": (8, 8, 8)}, seed=0)


# ------------------------------------------------------------------------- config
def test_config_round_trip_and_errors():
    cfg = SynthConfig(patch_shape=(64, 64, 32), max_tilt_deg=10, reduction="kspace")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert SynthConfig.from_dict(d) == cfg
    assert SynthConfig().patch_shape == (128, 128, 64)
    assert SynthConfig().voxel_size_range == ((0.5, 1.0), (0.5, 1.0), (2.0, 4.0))
    with pytest.raises(ValueError, match="unknown SynthConfig field"):
        SynthConfig.from_dict({"patchshape": [8, 8, 8]})
    with pytest.raises(ValueError, match="reduction must be one of"):
        SynthConfig(reduction="nearest")
    with pytest.raises(ValueError, match="field_pad must be one of"):
        SynthConfig(field_pad="zero")
    with pytest.raises(ValueError, match="voxel_size_range must be 3"):
        SynthConfig(voxel_size_range=((1.0, 0.5), (0.5, 1), (2, 4)))
    with pytest.raises(ValueError, match="max_tilt_deg must be in"):
        SynthConfig(max_tilt_deg=120)
    with pytest.raises(ValueError, match="bleed_value_range must be"):
        SynthConfig(bleed_value_range=(1.5, 0.2))
    with pytest.raises(ValueError, match="vein_count must be non-negative integers"):
        SynthConfig(vein_count=(0, 2.5))
    with pytest.raises(ValueError, match="min_brain_fraction must be in"):
        SynthConfig(min_brain_fraction=1.5)
    with pytest.raises(ValueError, match="anatomy_weight and geometric_weight"):
        SynthConfig(anatomy_weight=0, geometric_weight=0)


# ------------------------------------------------------------------------- reductions
def test_block_reduce_integer_and_area_weighted():
    rng = np.random.default_rng(0)
    x = rng.random((12, 10, 9)).astype(np.float32)
    out = block_reduce(x, (2, 5, 3))
    np.testing.assert_allclose(out, x.reshape(6, 2, 2, 5, 3, 3).mean(axis=(1, 3, 5)), atol=1e-6)
    # non-integer: area weighted; 1D known answer for factor 1.5 on [a, b, c]:
    # first output = (a + 0.5 b) / 1.5, second = (0.5 b + c) / 1.5
    y = np.array([1.0, 4.0, 7.0], np.float32).reshape(3, 1, 1)
    np.testing.assert_allclose(block_reduce(y, (1.5, 1, 1)).ravel(), [2.0, 6.0], atol=1e-6)
    z = block_reduce(x, (1.5, 2.5, 1.0))
    assert z.shape == (8, 4, 9)
    # integral preserved over the covered part
    np.testing.assert_allclose(z.sum() * 1.5 * 2.5, x.sum(), rtol=1e-5)
    np.testing.assert_allclose(block_reduce(np.full((9, 9, 9), 0.3), 2.25), 0.3, atol=1e-6)
    with pytest.raises(ValueError, match="factors must be >= 1"):
        block_reduce(x, 0.5)


def test_kspace_reduce_band_limited_known_answer():
    n, f = (24, 30, 36), (2, 3, 4)
    X, Y, Z = np.meshgrid(*[np.arange(k) for k in n], indexing="ij")
    wave = lambda a, b, c: np.cos(2 * np.pi * (2 * a / 24 + b / 30 + 3 * c / 36))  # noqa: E731
    out = kspace_reduce(wave(X, Y, Z), f)
    # samples at the block centres, as block averaging
    C = np.meshgrid(*[np.arange(k // q) * q + (q - 1) / 2 for k, q in zip(n, f)], indexing="ij")
    np.testing.assert_allclose(out, wave(*C), atol=1e-5)
    with pytest.raises(ValueError, match="dividing the shape"):
        kspace_reduce(np.zeros((10, 10, 10)), (3, 1, 1))


# ------------------------------------------------------------------------- augmentations
def test_elastic_displacement_rms_and_smoothness():
    d = augment.elastic_displacement((24, 24, 24), sigma=3.0, alpha=2.5, rng=0)
    assert d.shape == (3, 24, 24, 24) and d.dtype == np.float32
    np.testing.assert_allclose(np.sqrt((d ** 2).mean(axis=(1, 2, 3))), 2.5, rtol=1e-4)
    # smooth: neighbouring voxels move alike (correlation of a sigma=3 field ~ exp(-1/36))
    corr = np.corrcoef(d[0, :-1].ravel(), d[0, 1:].ravel())[0, 1]
    assert corr > 0.9
    np.testing.assert_array_equal(d, augment.elastic_displacement((24,) * 3, sigma=3.0,
                                                                  alpha=2.5, rng=0))
    with pytest.raises(ValueError, match="sigma must be positive"):
        augment.elastic_displacement((8, 8, 8), sigma=0, alpha=1, rng=0)


def test_rotation_flips_gamma_upsample():
    R = augment.random_rotation(15.0, 0)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.degrees(np.arccos(R[2, 2])) <= 15.0 * np.sqrt(2) + 1e-9
    Q = augment.random_orthonormal(1)
    assert abs(np.linalg.det(Q) - 1) < 1e-12
    F = augment.random_flips((1.0, 0.0, 1.0), 0)
    np.testing.assert_array_equal(np.diag(F), [-1, 1, -1])
    x = np.array([-0.4, -0.1, 0.0, 0.05, 0.1, 0.4], np.float32)
    g = augment.gamma_contrast(x, 2.0, reference=0.1)
    np.testing.assert_allclose(g, [-1.6, -0.1, 0.0, 0.025, 0.1, 1.6], rtol=1e-5)
    with pytest.raises(ValueError, match="gamma must be positive"):
        augment.gamma_contrast(x, 0.0)
    from scipy.ndimage import zoom

    v = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    np.testing.assert_allclose(augment.upsample_linear(v, (2, 3, 4)),
                               zoom(v, (2, 3, 4), order=1, grid_mode=True, mode="nearest"),
                               atol=1e-6)
    with pytest.raises(ValueError, match="factors must be 3 integers >= 1"):
        augment.upsample_linear(v, (0, 1, 1))


def test_render_shape_volumes():
    spacing = np.array([0.25, 0.25, 0.5])
    grid = np.zeros((96, 96, 48), np.float32)
    origin = -np.array(grid.shape) * spacing / 2
    synth._render_shape(grid, 1.0, "sphere", np.zeros(3), [5.0, 0, 0], np.eye(3), spacing, origin)
    assert grid.sum() * spacing.prod() == pytest.approx(4 / 3 * np.pi * 125, rel=0.03)
    grid[:] = 0
    R = augment.random_rotation(40, 3)
    synth._render_shape(grid, 2.0, "cuboid", np.zeros(3), [3.0, 4.0, 5.0], R, spacing, origin)
    assert grid.sum() / 2 * spacing.prod() == pytest.approx(8 * 60, rel=0.03)
    grid[:] = 0
    synth._render_shape(grid, 1.0, "cylinder", np.zeros(3), [3.0, 3.0, 6.0], R, spacing, origin)
    assert grid.sum() * spacing.prod() == pytest.approx(np.pi * 9 * 12, rel=0.03)
    with pytest.raises(ValueError, match="kind must be one of"):
        synth._render_shape(grid, 1.0, "torus", np.zeros(3), [1, 1, 1], R, spacing, origin)


# ------------------------------------------------------------------------- anatomy
def test_mni_maps_and_tissue_values():
    m = anatomy.mni_maps()
    assert anatomy.mni_maps() is m  # cached: loaded once per process
    total = m.wm + m.cortex + m.deep + m.csf
    assert np.abs(total - m.brain).max() < 1e-4
    assert m.n_deep >= 6  # caudate, putamen, pallidum, thalamus on both sides
    assert 1.2e6 < m.brain_volume_mm3 < 2.5e6
    chi = anatomy.tissue_susceptibility(m, wm=-0.03, cortex=0.02, deep=0.0, deep_gradient=0.0)
    np.testing.assert_allclose(chi, -0.03 * m.wm + 0.02 * m.cortex, atol=1e-7)
    chi = anatomy.tissue_susceptibility(m, wm=0.0, cortex=0.0, deep=0.1, deep_gradient=0.05)
    core = m.deep_grade > 0.99
    assert core.any() and np.all(chi[core] > 0.1 * m.deep[core])
    # the deep nuclei sit in the middle of the brain (left-right)
    ii = np.nonzero(m.deep > 0.5)[0]
    assert abs(ii.mean() - m.shape[0] / 2) < 8


def test_add_veins_inside_mask():
    rng = np.random.default_rng(0)
    chi = np.zeros((64, 64, 32), np.float32)
    mask = np.zeros(chi.shape, bool)
    mask[8:56, 8:56, 4:28] = True
    anatomy.add_veins(chi, mask, voxel_size=(0.5, 0.5, 1.0), count=5, value_range=(0.3, 0.3),
                      radius_range=(0.6, 0.6), length_range=(20, 20), rng=rng)
    assert np.all(chi[~mask] == 0)
    vein = chi > 0
    assert np.allclose(chi[vein], 0.3)
    # 5 tubes of ~20 mm length and 0.6 mm radius: ~ 5 * pi 0.36 * 20 mm^3 (clipped at edges)
    vol = vein.sum() * 0.25
    assert 20 < vol < 5 * np.pi * 0.36 * 20 * 2


# ------------------------------------------------------------------------- test sets
def test_testsets_recipe_deterministic_and_disjoint():
    assert set(testsets.TESTSETS) == {"paper", "res_0.5x0.5x2", "res_0.7639x0.7639x3"}
    assert all(t["count"] == 100 for t in testsets.TESTSETS.values())
    assert testsets.TESTSETS["paper"]["patch_shape"] == (256, 256, 64)
    assert testsets.testset_config("paper").voxel_size_range == ((0.5, 1.0), (0.5, 1.0), (2.0, 4.0))
    a = testsets.testset_sample("res_0.7639x0.7639x3", 5, **SMALL)
    b = testsets.testset_sample("res_0.7639x0.7639x3", 5, **SMALL)
    np.testing.assert_array_equal(a["chi"], b["chi"])
    np.testing.assert_allclose(a["voxel_size"], [0.7639, 0.7639, 3.0], rtol=1e-6)
    np.testing.assert_allclose(
        testsets.testset_sample("res_0.5x0.5x2", 0, **SMALL)["voxel_size"], [0.5, 0.5, 2.0])
    # streams differ from every training stream we can afford to check
    first = {tuple(testsets.testset_rng(n, i).integers(0, 2 ** 62, 2))
             for n in testsets.TESTSETS for i in range(100)}
    assert len(first) == 300
    train = {tuple(np.random.default_rng((s, i)).integers(0, 2 ** 62, 2))
             for s in range(0, 10 ** 6, 9973) for i in range(100)}
    assert not first & train
    with pytest.raises(ValueError, match="index must be < 100"):
        testsets.testset_rng("paper", 100)
    with pytest.raises(ValueError, match="test set must be one of"):
        testsets.testset_sample("nope", 0)


# ------------------------------------------------------------------------- command line
def _synth(tmp_path, *extra):
    from metaqsm.cli import main

    return main(["synth", "-n", "5", "-o", str(tmp_path / "data"), "--seed", "3", "--split", "0.8",
                 "--patch", "16", "16", "8", "--dtype", "float32", *extra])


def test_cli_synth_round_trip_resume_and_errors(tmp_path, monkeypatch, capsys):
    from metaqsm.cli import cmd_synth

    cfg = SynthConfig(patch_shape=(16, 16, 8))
    # an interrupted run keeps its progress and the same command resumes it
    real_work = cmd_synth._work

    def flaky(job):
        if job[0] == 3:
            raise KeyboardInterrupt
        return real_work(job)
    monkeypatch.setattr(cmd_synth, "_work", flaky)
    monkeypatch.setattr(cmd_synth, "FLUSH_EVERY", 1)
    assert _synth(tmp_path) == 130
    partial = tmp_path / "data" / ".synth.h5.partial"
    assert partial.exists() and not (tmp_path / "data" / "synth.h5").exists()
    with h5py.File(partial, "r") as f:
        assert f.attrs["done"] == 3
    monkeypatch.setattr(cmd_synth, "_work", real_work)
    from metaqsm.cli import main
    other = ["synth", "-n", "5", "-o", str(tmp_path / "data"), "--seed", "4", "--split", "0.8",
             "--patch", "16", "16", "8", "--dtype", "float32"]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "use --force to discard it" in err
    assert _synth(tmp_path) == 0
    assert "resuming at sample 3" in capsys.readouterr().err
    out = tmp_path / "data"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["counts"] == {"train": 4, "val": 1}
    assert manifest["config"]["patch_shape"] == [16, 16, 8]
    assert "metaqsm_version" in manifest
    with h5py.File(out / "synth.h5", "r") as f:
        assert f["train/field"].shape == (4, 16, 16, 8)
        assert f["train/field"].chunks == (1, 16, 16, 8)
        assert f["val/index"][0] == 4
        for group, row, index in (("train", 1, 1), ("train", 3, 3), ("val", 0, 4)):
            s = generate_sample(index, config=cfg, seed=3)
            np.testing.assert_array_equal(f[group]["field"][row], s["field"])
            np.testing.assert_array_equal(f[group]["mask"][row], s["mask"])
    # outputs are never overwritten without --force
    assert _synth(tmp_path) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert _synth(tmp_path, "--force", "--dtype", "float16") == 0
    with h5py.File(out / "synth.h5", "r") as f:
        assert f["train/chi"].dtype == np.float16
    assert main(["synth", "-n", "2", "-o", str(tmp_path / "all"), "--split", "1",
                 "--patch", "16", "16", "8"]) == 0
    with h5py.File(tmp_path / "all" / "synth.h5", "r") as f:
        assert f["train/field"].shape[0] == 2 and f["val/field"].shape[0] == 0
    assert main(["synth", "-n", "0", "-o", str(tmp_path / "x")]) == 2
    assert "-n must be at least 1" in capsys.readouterr().err
    assert main(["synth", "-n", "2", "-o", str(tmp_path / "x"), "--split", "0"]) == 2
    assert "--split must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert main(["synth", "-n", "2", "-o", str(tmp_path / "x"), "--seed", "1000000"]) == 2
    assert "--seed must be in" in capsys.readouterr().err


def test_cli_sheet_png(tmp_path):
    from metaqsm.cli import main

    png = tmp_path / "sheet.png"
    assert main(["synth-sheet", "-o", str(png), "-n", "2", "--patch", "24", "24", "12",
                 "--max-tilt", "20"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["synth-sheet", "-o", str(png), "-n", "1", "--patch", "24", "24", "12"]) == 2


# ------------------------------------------------------------------------- data set format
def _fake_samples(indices, shape=(6, 5, 4)):
    """Random samples with the arrays and types of ``generate_sample`` (fast: no physics)."""
    for i in indices:
        rng = np.random.default_rng(i)
        b0 = rng.normal(size=3)
        yield i, {"field": rng.normal(size=shape).astype(np.float32),
                  "chi": rng.normal(size=shape).astype(np.float32),
                  "mask": rng.random(shape) > 0.5,
                  "voxel_size": rng.uniform(0.5, 3, 3), "b0_dir": b0 / np.linalg.norm(b0)}


def test_trainset_write_resume_and_read_back_exactly(tmp_path):
    import pickle

    from metaqsm.io import trainset

    config = {"patch_shape": [6, 5, 4], "max_tilt_deg": 0.0}
    kw = dict(n=5, seed=7, config=config, split=0.6, dtype="float32", compression="gzip")
    assert trainset.begin(tmp_path, **kw) == 0
    partial = tmp_path / ".synth.h5.partial"

    def interrupted():
        yield from _fake_samples(range(3))
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        trainset.append(tmp_path, interrupted(), flush_every=2)
    # progress is recorded every 2 samples: a resumed run redoes sample 2
    assert trainset.begin(tmp_path, **kw) == 2
    with pytest.raises(ValueError, match="not complete: 2 of 5"):
        trainset.finish(tmp_path)
    with pytest.raises(ValueError, match=r"samples must be the indices 2 \.\. 4 in order, got index 3"):
        trainset.append(tmp_path, _fake_samples([3]))
    assert trainset.append(tmp_path, _fake_samples(range(2, 5)), flush_every=2) == 5
    assert trainset.finish(tmp_path, seconds=1.23) == tmp_path / "synth.h5"
    assert not partial.exists()

    manifest = trainset.read_manifest(tmp_path / "synth.h5")
    assert manifest["counts"] == {"train": 3, "val": 2}
    assert manifest["indices"] == {"train": [0, 3], "val": [3, 5]}
    assert (manifest["seed"], manifest["split"], manifest["dtype"]) == (7, 0.6, "float32")
    assert manifest["config"] == config and manifest["seconds"] == 1.2
    want = dict(_fake_samples(range(5)))
    for split, indices in (("train", range(3)), ("val", range(3, 5))):
        r = trainset.Reader(tmp_path, split)
        assert len(r) == len(indices) and r.attrs["done"] == 5
        for row, index in enumerate(indices):
            assert r.index(row) == index
            got = r.sample(row)
            for key in ("field", "chi"):
                np.testing.assert_array_equal(got[key], want[index][key])
            np.testing.assert_array_equal(got["mask"], want[index]["mask"].astype(np.uint8))
            for key in ("voxel_size", "b0_dir"):
                np.testing.assert_array_equal(got[key], want[index][key].astype(np.float32))
    r = pickle.loads(pickle.dumps(trainset.Reader(tmp_path, "val")))  # no open handle travels
    np.testing.assert_array_equal(r.sample(-1)["chi"], want[4]["chi"])
    with pytest.raises(IndexError, match="index 2 out of range for 2 samples"):
        r.sample(2)
    with h5py.File(tmp_path / "synth.h5", "r") as f:
        assert f["train/field"].compression == "gzip" and f["val/chi"].chunks == (1, 6, 5, 4)

    # a finished data set is never overwritten without force; float16 storage rounds once
    with pytest.raises(FileExistsError, match="exists; use --force"):
        trainset.begin(tmp_path, **kw)
    assert trainset.begin(tmp_path, **{**kw, "dtype": "float16"}, force=True) == 0
    trainset.append(tmp_path, _fake_samples(range(5)))
    trainset.finish(tmp_path, force=True)
    got = trainset.Reader(tmp_path, "train").sample(1)["field"]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want[1]["field"].astype(np.float16))


def test_trainset_errors_name_the_argument(tmp_path):
    from metaqsm.io import trainset

    config = {"patch_shape": [6, 5, 4]}
    for kw, error, message in (
            (dict(n=0), ValueError, "n must be at least 1, got 0"),
            (dict(n=2.0), TypeError, "n must be an integer, got 2.0"),
            (dict(split=0.0), ValueError, r"split must be in \(0, 1\], got 0.0"),
            (dict(dtype="float64"), ValueError, "dtype must be one of float16, float32"),
            (dict(compression="zip"), ValueError, "compression must be one of lzf, gzip, none"),
            (dict(config={}), ValueError, "config must be a dict of SynthConfig fields"),
            (dict(config={"patch_shape": [6, 5]}), ValueError,
             r"config\['patch_shape'\] must be 3 positive integers")):
        with pytest.raises(error, match=message):
            trainset.begin(tmp_path, **{"n": 3, "seed": 1, "config": config, **kw})
    with pytest.raises(FileNotFoundError, match="output folder"):
        trainset.begin(tmp_path / "missing", n=3, seed=1, config=config)
    # a partial file of other settings is kept unless force discards it
    trainset.begin(tmp_path, n=3, seed=1, config=config)
    with pytest.raises(FileExistsError, match="cannot resume with these settings.*force=True"):
        trainset.begin(tmp_path, n=3, seed=2, config=config)
    assert trainset.begin(tmp_path, n=3, seed=2, config=config, force=True) == 0
    with pytest.raises(ValueError, match="flush_every must be an integer >= 1"):
        trainset.append(tmp_path, [], flush_every=0)
    with pytest.raises(FileNotFoundError, match="call begin"):
        trainset.append(tmp_path / "other", [])
    with pytest.raises(FileNotFoundError, match="no synthetic data set"):
        trainset.Reader(tmp_path / "none")
    with pytest.raises(ValueError, match="split must be one of"):
        trainset.Reader(tmp_path / ".synth.h5.partial", "test")
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        trainset.read_manifest(tmp_path / ".synth.h5.partial")
