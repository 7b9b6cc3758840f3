"""Meta-QSM / Mesa-QSM: shapes, calling convention, registry and checkpoints."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from metaqsm.dl import MesaQSM, MetaQSM, WPConv3d, load_model  # noqa: E402
from metaqsm.dl.registry import (MODELS, build_model, load_checkpoint,  # noqa: E402
                                 read_checkpoint_info, save_checkpoint, shipped_path)
from metaqsm.dl.unet import count_parameters  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster on a shared, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(depth=2, base=4)


@pytest.mark.parametrize("cls,kw", [(MetaQSM, dict(basis=2, hidden=8)), (MesaQSM, {})])
@pytest.mark.parametrize("shape", [(17, 13, 9), (8, 8, 8), (5, 21, 11)])
def test_odd_shapes(cls, kw, shape):
    model = cls(**TINY, **kw).eval()
    x = torch.randn(2, 1, *shape) * 0.05
    with torch.no_grad():
        y = model(x, torch.tensor([[0.5, 0.5, 2.0], [1.0, 1.0, 1.0]]))
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_default_networks_build_and_every_conv_is_wp():
    meta, mesa = MetaQSM(), MesaQSM()
    n_wp = sum(isinstance(m, WPConv3d) for m in meta.modules())
    n_conv = sum(isinstance(m, torch.nn.Conv3d) for m in mesa.modules())
    assert n_wp == n_conv == 4 * 2 + 2 + 4 * 3 + 1  # levels x 2, bottleneck, up (1 + 2), head
    assert not any(isinstance(m, torch.nn.Conv3d) for m in meta.modules())
    # tens of millions, about (basis + 1) times the plain U-Net
    n_meta, n_mesa = count_parameters(meta), count_parameters(mesa)
    assert 10e6 < n_meta < 100e6
    assert 2.8 < n_meta / n_mesa < 3.2


def test_mesa_ignores_geometry_meta_uses_it():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 12, 12, 8) * 0.05
    mesa = MesaQSM(**TINY).eval()
    meta = MetaQSM(**TINY, basis=2, hidden=8).eval()
    with torch.no_grad():
        torch.testing.assert_close(mesa(x, [0.5, 0.5, 2.0]), mesa(x))
        torch.testing.assert_close(mesa(x, [0.5, 0.5, 2.0], [0, 1, 0]), mesa(x, [1, 1, 1]))
        a = meta(x, [0.5, 0.5, 2.0])
        b = meta(x, [0.5, 0.5, 2.0], [0.0, 0.0, 1.0])
        c = meta(x, [1.0, 1.0, 1.0])
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-6


def test_input_checks():
    meta = MetaQSM(**TINY, basis=2, hidden=8)
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(batch, 1, X, Y, Z\)"):
        meta(torch.zeros(1, 8, 8, 8), [1, 1, 1])
    with pytest.raises(ValueError, match="voxel_size is required"):
        meta(torch.zeros(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="voxel_size must be positive"):
        meta(torch.zeros(1, 1, 8, 8, 8), [1, 0, 1])
    with pytest.raises(ValueError, match="b0_dir must be non-zero"):
        meta(torch.zeros(1, 1, 8, 8, 8), [1, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"voxel_size must have shape \(3,\) or \(2, 3\)"):
        meta(torch.zeros(2, 1, 8, 8, 8), torch.ones(3, 3))
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        MetaQSM(depth=0)


def test_input_output_scale_is_ppm_in_ppm_out():
    torch.manual_seed(0)
    a = MesaQSM(**TINY).eval()
    b = MesaQSM(**TINY, input_scale=20.0, output_scale=5.0).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 8, 8, 8) * 0.05
    with torch.no_grad():
        # b multiplies the field by 20 (a: 2x by 10) and divides by 5 (a: by 10)
        ya, yb = a(x * 2.0), b(x)
        torch.testing.assert_close(ya * 2.0, yb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["meta", "mesa"])
@pytest.mark.parametrize("half", [False, True])
def test_checkpoint_round_trip(tmp_path, name, half):
    torch.manual_seed(0)
    kw = dict(depth=2, base=4, basis=3, hidden=6) if name == "meta" else dict(depth=2, base=4, output_scale=7.0)
    model = build_model(name, **kw)
    # non-trivial BatchNorm statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 8, 8, 8), [1, 1, 2])
    model.eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"step": 7, "voxel_size": [1, 1, 2]}, half=half)
    info = read_checkpoint_info(path)
    assert info["model"] == name and info["config"] == model.config and info["extra"]["step"] == 7
    assert json.loads(json.dumps(model.config)) == model.config
    loaded, _ = load_checkpoint(path)
    assert type(loaded) is MODELS[name] and loaded.config == model.config
    x = torch.randn(1, 1, 12, 8, 8) * 0.05
    with torch.no_grad():
        tol = dict(rtol=2e-2, atol=2e-3) if half else dict(rtol=0, atol=0)
        torch.testing.assert_close(loaded(x, [1, 1, 2]), model(x, [1, 1, 2]), **tol)
    assert load_model(path) is load_model(path)  # cached per process


def test_config_round_trip_rebuilds_same_architecture():
    m = MetaQSM(depth=3, base=6, basis=5, hidden=12, input_scale=4.0)
    m2 = MetaQSM(**m.config)
    assert m2.config == m.config
    assert [p.shape for p in m2.parameters()] == [p.shape for p in m.parameters()]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint file nor a shipped model"):
        load_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="is not a safetensors checkpoint"):
        load_model(bad)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("nope")
    with pytest.raises(ValueError, match="shipped model must be one of"):
        shipped_path("nope")


def test_missing_shipped_model_names_the_file(monkeypatch, tmp_path):
    from metaqsm.dl import registry

    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"meta\.safetensors is missing"):
        load_model("meta")


def test_dl_package_does_not_import_data_module():
    import subprocess
    import sys

    code = ("import sys, metaqsm.dl as d; d.MetaQSM; d.load_model; d.reconstruct; d.WPConv3d; "
            "print('metaqsm.dl.data' in sys.modules, 'metaqsm.dl.train' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------- the TKD prior
def test_tkd_prior_equals_the_core_tkd_per_geometry():
    """The prior is the core's TKD (threshold 0.2, no padding) at each sample's own geometry,
    with the mean removed (k = 0 set to zero)."""
    import numpy as np

    from metaqsm.dl.layers import Geometry
    from metaqsm.dl.unet import tkd_prior
    from metaqsm.inversion import tkd

    rng = np.random.default_rng(0)
    f = rng.standard_normal((2, 1, 14, 12, 10)).astype(np.float32) * 0.05
    vs = [[1.0, 1.0, 2.0], [0.6, 0.7, 1.5]]
    b0 = [[0.0, 0.0, 1.0], [0.3, 0.1, 1.0]]
    got = tkd_prior(torch.from_numpy(f), Geometry(torch.tensor(vs), torch.tensor(b0), batch=2)).numpy()
    for i in range(2):
        ref = tkd(f[i, 0], np.ones(f.shape[2:]), voxel_size=vs[i], b0_dir=b0[i])
        ref = ref - ref.mean()
        assert abs(float(got[i, 0].mean())) <= 1e-6 * np.abs(ref).max()
        assert np.abs(got[i, 0] - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("cls,kw", [(MetaQSM, dict(basis=2, hidden=8)), (MesaQSM, {})])
def test_untrained_prior_network_returns_tkd_and_learns_a_correction(cls, kw):
    from metaqsm.dl.layers import Geometry
    from metaqsm.dl.unet import tkd_prior

    torch.manual_seed(0)
    model = cls(**TINY, **kw, prior="tkd")
    assert model.config["prior"] == "tkd"
    x = torch.randn(2, 1, 12, 10, 9) * 0.05
    vs = torch.tensor([[1.0, 1.0, 2.0], [0.7, 0.7, 1.0]])
    with torch.no_grad():
        ref = tkd_prior(x, Geometry(vs, None, batch=2))
        assert torch.equal(model.eval()(x, vs), ref)
    # the zero-initialised head still receives a gradient, so training moves away from TKD
    model.train()
    loss = (model(x, vs) - 2 * ref).abs().mean()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())


def test_prior_errors():
    with pytest.raises(ValueError, match="prior must be one of"):
        MetaQSM(**TINY, prior="medi")
    with pytest.raises(ValueError, match="voxel_size"):
        MesaQSM(**TINY, prior="tkd")(torch.zeros(1, 1, 8, 8, 8))


@pytest.mark.parametrize("cls,kw", [(MetaQSM, dict(basis=2, hidden=8)), (MesaQSM, {})])
def test_zero_mean_correction_keeps_the_priors_mean_on_the_support(cls, kw):
    from metaqsm.dl.layers import Geometry
    from metaqsm.dl.unet import tkd_prior

    torch.manual_seed(1)
    free = cls(**TINY, **kw, prior="tkd")
    with torch.no_grad():  # a head that changes the output (an untrained one returns the prior)
        for p in free.head.parameters():
            p.normal_(0.0, 0.5)
    zero = cls(**TINY, **kw, prior="tkd", correction_mean="zero")
    zero.load_state_dict(free.state_dict())
    x = torch.randn(2, 1, 12, 10, 9) * 0.05
    x[:, :, :3] = 0  # outside the mask: the field is zero there
    vs = torch.tensor([[1.0, 1.0, 2.0], [0.7, 0.7, 1.0]])
    support = x != 0
    with torch.no_grad():
        prior = tkd_prior(x, Geometry(vs, None, batch=2))
        a, b = free.eval()(x, vs), zero.eval()(x, vs)
    for i in range(2):
        m = support[i, 0]
        assert abs(float(a[i, 0][m].mean() - prior[i, 0][m].mean())) > 1e-4  # free: moved
        assert float(b[i, 0][m].mean()) == pytest.approx(float(prior[i, 0][m].mean()), abs=1e-6)
        # only the mean changed: the two differ by a constant
        d = (a - b)[i, 0]
        assert float(d.max() - d.min()) < 1e-5
    assert zero.config["correction_mean"] == "zero" and free.config["correction_mean"] == "free"
    with pytest.raises(ValueError, match="correction_mean must be one of"):
        cls(**TINY, **kw, prior="tkd", correction_mean="mask")
    with pytest.raises(ValueError, match="correction_mean='zero' needs a prior"):
        cls(**TINY, **kw, correction_mean="zero")


@pytest.mark.parametrize("cls,kw", [(MetaQSM, dict(basis=2, hidden=8)), (MesaQSM, {})])
def test_scale_equivariant_network_scales_with_the_field(cls, kw):
    torch.manual_seed(2)
    net = cls(**TINY, **kw, prior="tkd", correction_mean="zero", scale_equivariant=True).eval()
    with torch.no_grad():
        for p in net.head.parameters():
            p.normal_(0.0, 0.5)
    plain = cls(**TINY, **kw, prior="tkd", correction_mean="zero").eval()
    plain.load_state_dict(net.state_dict())
    x = torch.randn(1, 1, 12, 10, 9) * 0.014
    x[:, :, :2] = 0
    vs = torch.tensor([[1.0, 1.0, 2.0]])
    with torch.no_grad():
        y = net(x, vs)
        for a in (0.1, 3.0):
            torch.testing.assert_close(net(a * x, vs), a * y, rtol=1e-4, atol=1e-7)
        # a field at the reference amplitude goes through unchanged
        ref = x * (0.014 / float(x[x != 0].pow(2).mean().sqrt()))
        torch.testing.assert_close(net(ref, vs), plain(ref, vs), rtol=1e-4, atol=1e-7)
    assert net.config["scale_equivariant"] is True
    with pytest.raises(ValueError, match="scale_equivariant must be True or False"):
        cls(**TINY, **kw, scale_equivariant="yes")
