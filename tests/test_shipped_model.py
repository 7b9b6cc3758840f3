"""The models shipped inside the package (issue 6) load and reconstruct a phantom: Meta-QSM at
two geometries, each Mesa-QSM at its own resolution."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the shipped network needs torch (pip install .[dl])")

from metaqsm.dl.registry import MODELS_DIR, SHIPPED, load_model  # noqa: E402
from metaqsm.inversion import get_method  # noqa: E402
from metaqsm.kernels import forward_field  # noqa: E402
from metaqsm.metrics import compute_metrics  # noqa: E402
from metaqsm.simulate.phantoms import brain_phantom  # noqa: E402

# Measured with the weights committed in src/metaqsm/models (docs/model-card.md), the two-stage
# CPU recipe: Meta-QSM 42.2 % and 40.4 % on these two phantoms (TKD 42.2 % and 41.6 %); the
# Mesa models at their own resolution (96 x 96 x 32 phantoms) 39.1 % and 41.6 % (TKD 38.5 % and
# 38.6 %). On these small phantoms the networks are at TKD's level (the stage-1 models, trained
# on 64 x 64 x 32 patches only, were 2-4 points below it here but far worse on whole brains);
# the test sets of issue 6 are where they are measured against the classical methods. The
# bounds leave a margin for float differences between machines.
RMSE_BOUND = {"meta": 44.0, "mesa-0.5x0.5x2": 42.0, "mesa-0.7639x0.7639x3": 44.0}
TKD_MARGIN = 1.0  # points of RMSE the shipped Meta-QSM may lose to TKD on a phantom


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
    assert m["rmse"] < tkd["rmse"] + TKD_MARGIN
    assert m["correlation"] > 0.5


MESA = {"mesa-0.5x0.5x2": (0.5, 0.5, 2.0), "mesa-0.7639x0.7639x3": (0.7639, 0.7639, 3.0)}


@pytest.mark.parametrize("name", sorted(MESA))
def test_shipped_mesa_reconstructs_phantom_at_its_resolution(name):
    path = MODELS_DIR / SHIPPED[name]
    assert path.is_file(), f"{path} is missing from the package"
    assert path.stat().st_size < 10e6
    for extra in (f"{name}.json", f"{name}-log.csv", f"{name}-curves.png"):
        assert (MODELS_DIR / extra).is_file(), extra
    torch.set_num_threads(1)
    vsz = MESA[name]
    ph = brain_phantom((96, 96, 32), voxel_size=vsz, rng=5)
    field = forward_field(ph.chi, voxel_size=vsz)
    field = (field + np.random.default_rng(1).normal(0, 0.002, field.shape)).astype(np.float32)
    field *= ph.mask
    chi = get_method("mesa")(field, ph.mask, voxel_size=vsz)  # picks the shipped model by voxel size
    assert chi.shape == field.shape and np.all(chi[~ph.mask] == 0)
    m = compute_metrics(chi, ph.chi, ph.mask)
    tkd = compute_metrics(get_method("tkd")(field, ph.mask, voxel_size=vsz), ph.chi, ph.mask)
    print(f"shipped {name}: RMSE {m['rmse']:.1f} % HFEN {m['hfen']:.1f} % SSIM {m['ssim']:.3f} "
          f"(TKD RMSE {tkd['rmse']:.1f} %)")
    assert m["rmse"] < RMSE_BOUND[name]
    assert m["correlation"] > 0.5


def test_shipped_meta_unrolled_beats_tv_on_quick_realistic_cases(tmp_path):
    """Meta-QSM 2 (the shipped `meta-unrolled`, float16) on the quick realistic cases (2 mm heads
    through the whole pipeline, realistic data): measured mean RMSE 64.9 % against TV's 71.3 and
    TKD's 97.2 (case by case 58.8 / 71.0 against TV 76.4 / 66.3). The full suite is in
    docs/networks-unrolled.md."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_realistic import QUICK

    from metaqsm.evaluate import run_suite
    from metaqsm.evaluate.report import load_results
    from metaqsm.evaluate.suites import realistic_suite

    path = MODELS_DIR / SHIPPED["meta-unrolled"]
    assert path.is_file() and path.stat().st_size < 5e6
    assert (MODELS_DIR / "meta-unrolled.json").is_file()
    assert (MODELS_DIR / "meta-unrolled-log.csv").is_file()
    torch.set_num_threads(1)
    suite = realistic_suite(["tkd", "tv", "meta-unrolled"],
                            cases=[((2.0, 2.0, 2.0), 0.0), ((2.0, 2.0, 3.0), 20.0)], config=QUICK)
    res = run_suite(suite, tmp_path / "r", progress=False)
    assert res["computed"] == 6 and not res["failed"]
    rmse = {}
    for r in load_results(tmp_path / "r"):
        rmse.setdefault(r["label"], []).append(r["metrics"]["rmse"])
    net, tv, tkd = (np.mean(rmse[k]) for k in ("Meta-QSM 2 (unrolled)", "TV", "TKD"))
    print(f"quick realistic: meta-unrolled {net:.1f} %, TV {tv:.1f} %, TKD {tkd:.1f} %")
    assert net < tv - 2.0 and net < tkd - 20.0
