"""The Meta-QSM model shipped inside the package (issue 6) loads and reconstructs a phantom."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the shipped network needs torch (pip install .[dl])")

from metaqsm.dl.registry import MODELS_DIR, SHIPPED, load_model  # noqa: E402
from metaqsm.inversion import get_method  # noqa: E402
from metaqsm.kernels import forward_field  # noqa: E402
from metaqsm.metrics import compute_metrics  # noqa: E402
from metaqsm.simulate.phantoms import brain_phantom  # noqa: E402

# Measured with the weights committed in src/metaqsm/models (docs/model-card.md). The shipped
# weights are an interim checkpoint (2000 CPU steps) that is still worse than TKD, so this bound
# only guards the loading and inference path and the weights' sanity; tighten it as the model
# improves (issue 6: Meta-QSM must beat TKD, iLSQR, MEDI and TV).
RMSE_BOUND = {"meta": 90.0}  # measured 70.7 % and 79.8 % with the interim weights of step 2000


def test_shipped_meta_model_is_package_data():
    path = MODELS_DIR / SHIPPED["meta"]
    assert path.is_file(), f"{path} is missing from the package"
    assert path.stat().st_size < 40e6
    for extra in ("meta.json", "meta-log.csv", "meta-curves.png"):
        assert (MODELS_DIR / extra).is_file(), extra


@pytest.mark.parametrize("voxel_size,b0_dir", [((1.0, 1.0, 2.0), (0, 0, 1)),
                                              ((0.8, 0.8, 0.8), (0.0, np.sin(0.3), np.cos(0.3)))])
def test_shipped_meta_reconstructs_phantom(voxel_size, b0_dir):
    torch.set_num_threads(1)
    net = load_model("meta")
    assert net.model_name == "meta"
    ph = brain_phantom((64, 64, 48), voxel_size=voxel_size, rng=4)
    field = forward_field(ph.chi, voxel_size=voxel_size, b0_dir=b0_dir)
    field = (field + np.random.default_rng(0).normal(0, 0.002, field.shape)).astype(np.float32)
    field *= ph.mask
    chi = get_method("meta")(field, ph.mask, voxel_size=voxel_size, b0_dir=b0_dir)
    assert chi.shape == field.shape and chi.dtype == np.float32
    assert np.all(chi[~ph.mask] == 0)
    m = compute_metrics(chi, ph.chi, ph.mask)
    tkd = compute_metrics(get_method("tkd")(field, ph.mask, voxel_size=voxel_size, b0_dir=b0_dir),
                          ph.chi, ph.mask)
    print(f"shipped meta at {voxel_size} mm, b0 {np.round(b0_dir, 3)}: RMSE {m['rmse']:.1f} % "
          f"HFEN {m['hfen']:.1f} % SSIM {m['ssim']:.3f} (TKD RMSE {tkd['rmse']:.1f} %)")
    assert m["rmse"] < RMSE_BOUND["meta"]
    assert m["correlation"] > 0.5
