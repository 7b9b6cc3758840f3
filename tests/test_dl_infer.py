"""Inference: padding, tiling with blending, data-consistency refinement, the registry methods."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metaqsm.dl import MesaQSM, MetaQSM, reconstruct  # noqa: E402
from metaqsm.dl.infer import (invert_meta, invert_mesa, refine_data_consistency,  # noqa: E402
                              tiled_apply)
from metaqsm.dl.registry import save_checkpoint  # noqa: E402
from metaqsm.kernels import DipoleOperator, forward_field  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster on a shared, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


VSZ = (1.0, 1.0, 1.5)


@pytest.fixture(scope="module")
def case():
    from metaqsm.simulate.phantoms import brain_phantom

    ph = brain_phantom((40, 36, 24), voxel_size=VSZ, rng=0)
    field = forward_field(ph.chi, voxel_size=VSZ)
    return ph.chi, field * ph.mask, ph.mask


def _tiny_meta(seed=0):
    torch.manual_seed(seed)
    return MetaQSM(depth=2, base=4, basis=2, hidden=8).eval()


def test_tiled_apply_pointwise_is_exact():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 24, 16)).astype(np.float32)
    y = tiled_apply(lambda t: 3.0 * t + 1.0, x, tile=(16, 16, 8), overlap=(8, 4, 4), divisor=4)
    np.testing.assert_allclose(y, 3.0 * x + 1.0, rtol=1e-5, atol=1e-5)


def test_reconstruct_shapes_mask_and_dtype(case):
    chi, field, mask = case
    out = reconstruct(_tiny_meta(), field[:-3, 1:, :-1], mask[:-3, 1:, :-1], voxel_size=VSZ)
    assert out.shape == field[:-3, 1:, :-1].shape and out.dtype == np.float32
    assert np.all(out[~mask[:-3, 1:, :-1]] == 0) and np.abs(out).max() > 0


def test_tiled_equals_untiled_within_tolerance(case):
    _, field, mask = case
    net = _tiny_meta(1)  # untrained: a worst case, its receptive field is not yet local
    whole = reconstruct(net, field, mask, voxel_size=VSZ, tile="none")

    def rel(tile, overlap):
        tiled = reconstruct(net, field, mask, voxel_size=VSZ, tile=tile, overlap=overlap)
        return np.linalg.norm(tiled - whole) / np.linalg.norm(whole)

    close = rel((32, 32, 24), 24)
    assert close < 0.03, close
    assert rel((32, 32, 24), 8) > close  # the overlap is what hides the tiles' borders


def test_auto_tiling_bounds_memory(case, monkeypatch):
    from metaqsm.dl import infer

    _, field, mask = case
    calls = []
    net = _tiny_meta(2)
    orig = net.forward

    def spy(x, *a, **k):
        calls.append(tuple(x.shape[2:]))
        return orig(x, *a, **k)

    net.forward = spy
    monkeypatch.setattr(infer, "MAX_WHOLE_VOXELS", 8000)
    monkeypatch.setattr(infer, "DEFAULT_TILE", (20, 20, 16))
    reconstruct(net, field, mask, voxel_size=VSZ, overlap=8)
    assert len(calls) > 1 and all(np.prod(s) <= 20 * 20 * 16 for s in calls)


def test_refinement_reduces_data_residual(case):
    chi, field, mask = case
    rng = np.random.default_rng(0)
    # a degraded "network" map: the truth, smoothed and scaled by 0.7, plus noise
    from scipy.ndimage import gaussian_filter

    chi_net = (0.7 * gaussian_filter(chi, 1.0) + 0.01 * rng.standard_normal(chi.shape)).astype(np.float32)
    chi_net *= mask
    op = DipoleOperator(chi.shape, voxel_size=VSZ)

    def residual(x):
        return np.linalg.norm(mask * (op(x) - field)) / np.linalg.norm(field[mask])

    refined = refine_data_consistency(chi_net, field, mask, voxel_size=VSZ, mu=0.05, max_iter=10)
    assert residual(refined) < 0.5 * residual(chi_net)
    # and it moves towards the truth
    assert np.linalg.norm((refined - chi)[mask]) < np.linalg.norm((chi_net - chi)[mask])
    # through reconstruct
    out = reconstruct(_tiny_meta(), field, mask, voxel_size=VSZ, refine=True, refine_iter=5)
    assert out.shape == field.shape and np.all(out[~mask] == 0)


def test_refinement_errors(case):
    chi, field, mask = case
    with pytest.raises(ValueError, match="mu must be positive"):
        refine_data_consistency(chi, field, mask, voxel_size=VSZ, mu=0)
    with pytest.raises(ValueError, match="field must have the shape of chi_net"):
        refine_data_consistency(chi, field[1:], mask, voxel_size=VSZ)


def test_reconstruct_input_errors(case):
    _, field, mask = case
    net = _tiny_meta()
    with pytest.raises(ValueError, match="field must be a 3D volume"):
        reconstruct(net, field[None], None, voxel_size=VSZ)
    with pytest.raises(ValueError, match="voxel_size must be positive"):
        reconstruct(net, field, mask, voxel_size=(1, 0, 1))
    with pytest.raises(ValueError, match="b0_dir must be a non-zero"):
        reconstruct(net, field, mask, voxel_size=VSZ, b0_dir=(0, 0, 0))
    with pytest.raises(ValueError, match="tile must be None, 'auto', 'none'"):
        reconstruct(net, field, mask, voxel_size=VSZ, tile="big")


def test_invert_methods_with_weights(case, tmp_path):
    from metaqsm.inversion import get_method

    _, field, mask = case
    meta_path = save_checkpoint(tmp_path / "meta.safetensors", _tiny_meta())
    torch.manual_seed(0)
    mesa_path = save_checkpoint(tmp_path / "mesa.safetensors", MesaQSM(depth=2, base=4).eval(),
                                {"voxel_size": [0.5, 0.5, 2.0]})
    a = get_method("meta")(field, mask, voxel_size=VSZ, weights=str(meta_path))
    np.testing.assert_array_equal(a, reconstruct(_tiny_meta(), field, mask, voxel_size=VSZ))
    with pytest.warns(UserWarning, match=r"trained at \(0.5, 0.5, 2.0\) mm"):
        b = get_method("mesa")(field, mask, voxel_size=VSZ, weights=str(mesa_path))
    assert b.shape == field.shape
    with pytest.raises(ValueError, match="hold a 'mesa' network, but method 'meta'"):
        invert_meta(field, mask, voxel_size=VSZ, weights=str(mesa_path))


def test_invert_without_shipped_models(case, monkeypatch, tmp_path):
    from metaqsm.dl import registry

    _, field, mask = case
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"shipped model 'meta' is not installed"):
        invert_meta(field, mask, voxel_size=VSZ)
    with pytest.raises(ValueError, match=r"no shipped Mesa-QSM model for voxel size \(1.0, 1.0, 1.5\)"):
        invert_mesa(field, mask, voxel_size=VSZ)
    with pytest.raises(FileNotFoundError, match=r"mesa-0.5x0.5x2.safetensors is missing"):
        invert_mesa(field, mask, voxel_size=(0.5, 0.5, 2.0))


def test_cli_invert_meta_with_weights(case, tmp_path, capsys):
    import nibabel as nib

    from metaqsm.cli import main
    from metaqsm.io import save_nifti

    _, field, mask = case
    affine = np.diag([*VSZ, 1.0])
    save_nifti(tmp_path / "field.nii.gz", field, affine)
    save_nifti(tmp_path / "mask.nii.gz", mask.astype(np.uint8), affine)
    weights = save_checkpoint(tmp_path / "meta.safetensors", _tiny_meta())
    out = tmp_path / "chi.nii.gz"
    assert main(["invert", str(tmp_path / "field.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"),
                 "--method", "meta", "--weights", str(weights), "-o", str(out)]) == 0
    chi = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_allclose(chi, reconstruct(_tiny_meta(), field, mask, voxel_size=VSZ),
                               rtol=1e-5, atol=1e-6)
    # --refine: the network's map pulled towards the field, with the chosen iterations and mu
    out2 = tmp_path / "chi-refined.nii.gz"
    assert main(["invert", str(tmp_path / "field.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"),
                 "--method", "meta", "--weights", str(weights), "--refine", "--refine-iter", "3",
                 "--refine-mu", "0.05", "-o", str(out2)]) == 0
    expected = refine_data_consistency(reconstruct(_tiny_meta(), field, mask, voxel_size=VSZ),
                                       field, mask, voxel_size=VSZ, mu=0.05, max_iter=3)
    np.testing.assert_allclose(np.asarray(nib.load(str(out2)).dataobj), expected, rtol=1e-4,
                               atol=1e-6)
    sidecar = json.loads((tmp_path / "chi-refined.json").read_text())
    assert sidecar["Parameters"]["refine"] is True and sidecar["Parameters"]["refine_iter"] == 3
    base = ["invert", str(tmp_path / "field.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"),
            "-o", str(tmp_path / "x.nii.gz")]
    for extra, message in (
            (["--method", "meta", "--weights", str(weights), "--refine-iter", "3"],
             "--refine-iter sets the refinement, which is off: add --refine"),
            (["--method", "meta", "--weights", str(weights), "--refine", "--refine-mu", "0"],
             "--refine-mu must be positive"),
            (["--method", "tkd", "--refine"], "--refine is not an option of method 'tkd'")):
        capsys.readouterr()
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


def test_network_preflight_fails_before_any_work(case, tmp_path, capsys, monkeypatch):
    """issue 17: a Mesa model missing for the voxel size, a CUDA device on a CPU build and a
    checkpoint of the wrong network are refused before the field is inverted."""
    import nibabel as nib

    from metaqsm.cli import main
    from metaqsm.methods import inversion

    chi, field, mask = case
    aff = np.diag([*VSZ, 1.0])
    nib.save(nib.Nifti1Image(field.astype(np.float32), aff), str(tmp_path / "f.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), str(tmp_path / "m.nii.gz"))
    base = ["invert", str(tmp_path / "f.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"),
            "-o", str(tmp_path / "x.nii.gz")]
    called = []
    import metaqsm.dl.infer as infer

    monkeypatch.setattr(infer, "reconstruct", lambda *a, **k: called.append(1))
    assert main(base + ["--method", "mesa"]) == 2
    assert "no shipped Mesa-QSM model for voxel size (1.0, 1.0, 1.5) mm" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(base + ["--method", "meta", "--device", "cuda"]) == 2
        assert "--device cuda is not available" in capsys.readouterr().err
    meta_path = tmp_path / "meta.safetensors"
    save_checkpoint(meta_path, _tiny_meta())
    assert main(base + ["--method", "mesa", "--weights", str(meta_path)]) == 2
    assert "hold a 'meta' network, but method 'mesa' needs a 'mesa' one" in capsys.readouterr().err
    assert called == [] and not (tmp_path / "x.nii.gz").exists()
    # the library says the same in its own words
    with pytest.raises(ValueError, match="no shipped Mesa-QSM model"):
        inversion("mesa").check_ready(voxel_size=VSZ, options={})
    inversion("meta").check_ready(voxel_size=VSZ, options={"weights": str(meta_path)})
