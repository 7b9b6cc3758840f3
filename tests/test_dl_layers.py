"""WP-Conv: geometry checks and features, weight prediction, equivalence with nn.Conv3d."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metaqsm.dl.layers import (FEATURE_NAMES, N_GEOMETRY_FEATURES, Conv3d, Geometry,  # noqa: E402
                               WPConv3d, geometry_features)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster on a shared, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _geom(vsz, b0=None, batch=None):
    vsz = torch.as_tensor(vsz, dtype=torch.float32)
    batch = batch or (vsz.shape[0] if vsz.ndim == 2 else 1)
    return Geometry(vsz, b0, batch=batch)


def test_features_known_values():
    f = geometry_features(torch.tensor([[0.5, 1.0, 2.0]]), torch.tensor([[0.6, 0.0, 0.8]]))
    assert f.shape == (1, N_GEOMETRY_FEATURES) == (1, len(FEATURE_NAMES))
    expected = [0.5, 1.0, 2.0, 0.25, 0.5, 1.0, 0.0, math.log(2), math.log(4),
                0.36, 0.0, 0.64, 0.0, 0.48, 0.0]
    np.testing.assert_allclose(f[0].numpy(), expected, atol=1e-6)


def test_features_scale_free_part_and_b0_sign_invariance():
    a = geometry_features(torch.tensor([[0.5, 0.5, 2.0]]), torch.tensor([[0.0, 0.6, 0.8]]))
    b = geometry_features(torch.tensor([[1.0, 1.0, 4.0]]), torch.tensor([[0.0, -0.6, -0.8]]))
    torch.testing.assert_close(a[:, 3:], b[:, 3:])  # ratios and b0 moments identical
    assert not torch.allclose(a[:, :3], b[:, :3])   # the voxel size itself differs


def test_geometry_normalises_b0_and_groups():
    g = _geom([[1, 1, 2], [1, 1, 2], [0.5, 0.5, 2]], [[0, 0, 2], [0, 0, -5], [0, 0, 1]])
    torch.testing.assert_close(g.b0_dir[:, 2].abs(), torch.ones(3))
    assert len(g.groups) == 2  # b and -b are one geometry
    assert sorted(len(i) for i in g.groups) == [1, 2]


@pytest.mark.parametrize("vsz,b0,match", [
    ([1.0, 1.0], None, "voxel_size must have shape"),
    ([[1.0, 1.0, 1.0]] * 3, None, "voxel_size must have shape"),
    ([1.0, 0.0, 1.0], None, "voxel_size must be positive"),
    ([1.0, -1.0, 1.0], None, "voxel_size must be positive"),
    ([1.0, float("nan"), 1.0], None, "voxel_size must be finite"),
    ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], "b0_dir must be non-zero"),
    ([1.0, 1.0, 1.0], [0.0, 1.0], "b0_dir must have shape"),
])
def test_bad_geometry_raises(vsz, b0, match):
    with pytest.raises(ValueError, match=match):
        Geometry(vsz, b0, batch=2)


def test_bad_geometry_type_raises():
    with pytest.raises(TypeError, match="voxel_size must be numbers"):
        Geometry("1mm", None, batch=1)


def test_wpconv_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
        WPConv3d(2, 3, 2)
    with pytest.raises(ValueError, match="basis must be a positive integer"):
        WPConv3d(2, 3, basis=0)
    conv = WPConv3d(2, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2"):
        conv(torch.zeros(1, 3, 4, 4, 4), [1, 1, 1])


def test_same_geometry_same_weights_different_geometry_different_weights():
    torch.manual_seed(0)
    conv = WPConv3d(3, 4, hidden=8, basis=3)
    w1, b1 = conv.predict(_geom([[0.5, 0.5, 2.0]]).unique)
    w2, b2 = conv.predict(_geom([[0.5, 0.5, 2.0]]).unique)
    torch.testing.assert_close(w1, w2, rtol=0, atol=0)
    torch.testing.assert_close(b1, b2, rtol=0, atol=0)
    w3, _ = conv.predict(_geom([[1.0, 1.0, 1.0]]).unique)
    w4, _ = conv.predict(_geom([[0.5, 0.5, 2.0]], [[0.0, 0.5, 0.866]]).unique)
    for w in (w3, w4):
        assert (w - w1).abs().max() > 1e-4 * w1.abs().max()


def test_constant_predictor_equals_conv3d():
    torch.manual_seed(1)
    conv = WPConv3d(3, 5, 3, hidden=8, basis=4)
    with torch.no_grad():
        conv.weight_basis.zero_()  # the code no longer matters: the kernel is the base
        conv.bias_basis.zero_()
        conv.bias.normal_()
    ref = torch.nn.Conv3d(3, 5, 3, padding=1)
    with torch.no_grad():
        ref.weight.copy_(conv.weight)
        ref.bias.copy_(conv.bias)
    x = torch.randn(2, 3, 7, 6, 5)
    for vsz in ([0.5, 0.5, 2.0], [[1, 1, 1], [0.7, 0.7, 3.0]]):
        torch.testing.assert_close(conv(x, vsz), ref(x), rtol=1e-5, atol=1e-5)


def test_mixed_geometry_batch_equals_per_sample():
    torch.manual_seed(2)
    conv = WPConv3d(2, 3, hidden=8, basis=2)
    x = torch.randn(3, 2, 6, 5, 4)
    vsz = torch.tensor([[0.5, 0.5, 2.0], [1.0, 1.0, 1.0], [0.5, 0.5, 2.0]])
    b0 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.3, 0.95], [0.0, 0.0, -1.0]])
    y = conv(x, vsz, b0)
    for i in range(3):
        yi = conv(x[i:i + 1], vsz[i], b0[i])
        torch.testing.assert_close(y[i:i + 1], yi, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y[0], conv(x[:1], vsz[1], b0[1])[0])


def test_initial_kernels_have_kaiming_scale():
    torch.manual_seed(3)
    conv = WPConv3d(32, 32, hidden=32, basis=4)
    w, _ = conv.predict(_geom([[0.6, 0.8, 3.0]], [[0.2, 0.1, 0.97]]).unique)
    kaiming = math.sqrt(2.0 / (32 * 27))
    assert 0.75 * kaiming < float(w.detach().std()) < 1.15 * kaiming
    plain = Conv3d(32, 32, 3)
    assert 0.9 * kaiming < float(plain.weight.detach().std()) < 1.1 * kaiming


def test_gradients_reach_the_predictor():
    conv = WPConv3d(2, 2, hidden=8, basis=2)
    y = conv(torch.randn(2, 2, 5, 5, 5), [[0.5, 0.5, 2.0], [1, 1, 1]])
    y.square().mean().backward()
    for p in conv.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert conv.predictor[0].weight.grad.abs().sum() > 0
