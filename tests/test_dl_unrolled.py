"""Meta-QSM 2 (dl.unrolled): the unrolled network, its physics step, checkpointing, checkpoints,
the CLI, the corruption model of simulate.corrupt and a short resumable training run."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metaqsm.dl.registry import load_checkpoint, save_checkpoint  # noqa: E402
from metaqsm.dl.unrolled import MetaUnrolled, multiply_adds_per_voxel  # noqa: E402
from metaqsm.kernels import forward_field  # noqa: E402
from metaqsm.simulate.corrupt import CorruptionConfig, corrupt_sample  # noqa: E402
from metaqsm.simulate.phantoms import brain_phantom  # noqa: E402

TINY = dict(iterations=2, depth=1, base=4, basis=2, hidden=8)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _case(shape=(24, 24, 16), vsz=(1.0, 1.0, 2.0), b0=(0.0, 0.0, 1.0), seed=0):
    ph = brain_phantom(shape, voxel_size=vsz, rng=seed)
    field = forward_field(ph.chi, voxel_size=vsz, b0_dir=b0) * ph.mask
    return field.astype(np.float32), ph.chi.astype(np.float32), ph.mask


def _perturb(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_forward_shapes_and_geometry_dependence():
    torch.manual_seed(0)
    net = MetaUnrolled(**TINY)
    _perturb(net)
    net.eval()
    field, _, mask = _case()
    x = torch.from_numpy(field)[None, None]
    outs = []
    for vsz, b0 in (((1.0, 1.0, 2.0), (0, 0, 1)), ((0.6, 0.6, 1.0), (0, 0, 1)),
                    ((1.0, 1.0, 2.0), (0.4, 0.0, 0.9165))):
        with torch.no_grad():
            y = net(x, torch.tensor(vsz), torch.tensor(b0, dtype=torch.float32))
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert (y[0, 0][torch.from_numpy(~mask)] == 0).all()
        outs.append(y)
    assert (outs[0] - outs[1]).abs().max() > 1e-5  # voxel size matters
    assert (outs[0] - outs[2]).abs().max() > 1e-5  # B0 direction matters
    # a batch mixing two geometries gives each sample its own result
    with torch.no_grad():
        both = net(torch.cat([x, x]), torch.tensor([[1.0, 1.0, 2.0], [0.6, 0.6, 1.0]]))
    assert torch.allclose(both[0], outs[0][0], atol=1e-5)
    assert torch.allclose(both[1], outs[1][0], atol=1e-5)
    assert 2e4 < multiply_adds_per_voxel(MetaUnrolled()) < 1e5  # default: about 47 k


def test_physics_step_decreases_the_data_residual():
    net = MetaUnrolled(**{**TINY, "iterations": 6}).eval()  # zero head: no regulariser
    field, _, mask = _case()
    x = torch.from_numpy(field)[None, None]
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    vsz = (1.0, 1.0, 2.0)
    residuals = []
    for k in range(0, 7, 2):
        net.iterations = k
        with torch.no_grad():
            chi = net(x, torch.tensor(vsz))[0, 0].numpy()
        pred = forward_field(chi, voxel_size=vsz, pad=net.pad)
        residuals.append(float(np.linalg.norm((pred - field)[mask])))
    assert all(b < a for a, b in zip(residuals, residuals[1:])), residuals
    del m


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    field, chi, _ = _case(shape=(16, 16, 16))
    x = torch.from_numpy(field)[None, None]
    y = torch.from_numpy(chi)[None, None]
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(2)
        net = MetaUnrolled(**TINY, checkpointing=ckpt)
        _perturb(net, 3)
        net.train()
        loss = (net(x, torch.tensor([1.0, 1.0, 2.0])) - y).abs().mean()
        loss.backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_save_load_round_trip_and_cli(tmp_path):
    import nibabel as nib

    from metaqsm.cli import main

    net = MetaUnrolled(**TINY, pad=8)
    _perturb(net)
    path = save_checkpoint(tmp_path / "tiny.safetensors", net, {"step": 3})
    back, info = load_checkpoint(path)
    assert info["model"] == "meta-unrolled" and info["config"] == net.config
    field, _, mask = _case()
    x = torch.from_numpy(field)[None, None]
    with torch.no_grad():
        assert torch.allclose(back(x, torch.tensor([1.0, 1.0, 2.0])),
                              net.eval()(x, torch.tensor([1.0, 1.0, 2.0])), atol=1e-6)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(field, aff), tmp_path / "field.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), tmp_path / "mask.nii.gz")
    out = tmp_path / "chi.nii.gz"
    rc = main(["invert", str(tmp_path / "field.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"),
               "--method", "meta-unrolled", "--weights", str(path), "-o", str(out)])
    assert rc == 0
    chi = np.asarray(nib.load(out).dataobj)
    assert chi.shape == field.shape and np.isfinite(chi).all() and np.abs(chi).max() > 0


def test_corruption_sizes():
    from metaqsm.simulate.synth import SynthConfig, generate_sample

    cfg = SynthConfig(patch_shape=(40, 40, 32), margin_mm=0.0, field_pad="auto",
                      field_noise_range=(0.0, 0.0), anatomy_weight=1.0, geometric_weight=0.0)
    s = generate_sample(3, config=cfg, seed=0)
    c = CorruptionConfig()
    out = corrupt_sample(s, config=c, rng=1, return_parts=True)
    p, m = out["parts"], out["mask"]
    assert m.sum() > 0.3 * s["mask"].sum() and not (m & ~s["mask"]).any()  # eroded, inside
    assert (out["field"][~m] == 0).all() and (out["chi"][~m] == 0).all()
    # noise: median sd drawn in the range; higher at the edge than deep inside
    med = float(np.median(out["noise_std"][m]))
    assert c.noise_median[0] * 0.99 <= med <= c.noise_median[1] * 1.01
    d = p["edge_distance"]
    assert out["noise_std"][m & (d < 2)].mean() > out["noise_std"][m & (d > 8)].mean()
    assert 0.5 * med < float(p["noise"][m].std()) < 2.0 * med
    # non-dipolar part: of the realistic case's size (0.003-0.015 ppm)
    assert 0.002 < float(p["extra"][m].std()) < 0.02
    # background residue: sd at the edge in the drawn range, decaying inwards
    edge = m & (d < 1.5)
    if edge.sum() > 200:
        sd_edge = float(p["residue"][edge].std())
        assert 0.3 * c.residue_sd[0] < sd_edge < 2.0 * c.residue_sd[1]
        deep = m & (d > 15)
        if deep.any():
            assert float(np.abs(p["residue"][deep]).mean()) < float(np.abs(p["residue"][edge]).mean())
    # deterministic per seed, the input untouched
    again = corrupt_sample(s, config=c, rng=1)
    assert np.array_equal(again["field"], out["field"])
    with pytest.raises(ValueError, match="noise_median must be"):
        CorruptionConfig(noise_median=(0.004, 0.001))
    with pytest.raises(ValueError, match="sample must have a 'chi'"):
        corrupt_sample({"field": s["field"]})


def test_three_training_steps_with_resume(tmp_path):
    from metaqsm.dl.train import load_config, train

    cfg = load_config(None, [
        'model.name="meta-unrolled"', "model.iterations=2", "model.depth=1", "model.base=4",
        "model.basis=2", "model.hidden=8", "model.pad=4",
        'data.source="realistic"', "data.patch_shape=[24, 24, 16]", "data.val_size=2",
        "data.synth.margin_mm=0.0", 'data.synth.field_pad="auto"',
        "data.synth.field_noise_range=[0.0, 0.0]", "data.corrupt.erosion_mm=[0.0, 1.0]",
        "optim.batch_size=2", "optim.loss_in_mask=true", "run.steps=3", "run.val_every=3",
        "run.ckpt_every=1", "run.log_every=1", "run.threads=1", 'run.device="cpu"',
        "run.progress=false", "run.ema_decay=0.9"])
    out = tmp_path / "run"
    first = train(cfg, out=out, stop_after=2)
    assert first["stopped"] and first["step"] == 2 and (out / "last.pt").is_file()
    second = train(cfg, out=out, resume=True)
    assert second["step"] == 3 and not second["stopped"]
    assert (out / "best.safetensors").is_file()
    model, info = load_checkpoint(out / "best.safetensors")
    assert info["model"] == "meta-unrolled" and info["extra"]["step"] == 3
