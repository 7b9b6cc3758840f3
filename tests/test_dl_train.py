"""Training: the loss goes down, checkpoints, exact resume, the CLI, config errors, DDP path."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from metaqsm.cli import main  # noqa: E402
from metaqsm.dl import MesaQSM, MetaQSM, load_model  # noqa: E402
from metaqsm.dl.train import (DEFAULT_CONFIG, apply_overrides, load_config,  # noqa: E402
                              masked_l1, masked_ssim, regularization, train,
                              validate_config)
from metaqsm.kernels import forward_field  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is faster, and much faster on a shared, busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SHAPE = (24, 24, 16)
GEOMS = [((1.0, 1.0, 1.0), (0.0, 0.0, 1.0)), ((0.6, 0.6, 2.0), (0.0, 0.0, 1.0)),
         ((0.8, 0.8, 3.0), (0.0, 0.26, 0.966)), ((0.5, 0.7, 1.5), (0.2, 0.0, 0.98))]


class PhantomSet:
    """A small map-style set of phantom patches at several geometries (field by the core)."""

    def __init__(self, n):
        from metaqsm.simulate.phantoms import brain_phantom

        self.items = []
        for i in range(n):
            vsz, b0 = GEOMS[i % len(GEOMS)]
            ph = brain_phantom(SHAPE, voxel_size=vsz, rng=i, lesions=i % 2 == 0)
            field = forward_field(ph.chi, voxel_size=vsz, b0_dir=b0) * ph.mask
            self.items.append({
                "field": torch.from_numpy(field)[None], "chi": torch.from_numpy(ph.chi)[None],
                "mask": torch.from_numpy(ph.mask)[None],
                "voxel_size": torch.tensor(vsz, dtype=torch.float32),
                "b0_dir": torch.tensor(b0, dtype=torch.float32)})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.fixture(scope="module")
def data():
    return PhantomSet(8), PhantomSet(2)


def tiny_config(**run):
    cfg = apply_overrides(DEFAULT_CONFIG, [
        "model.depth=2", "model.base=4", "model.basis=2", "model.hidden=8",
        "optim.lr=1e-3", "optim.batch_size=2", "data.val_size=2", "data.patch_shape=[24, 24, 16]",
        "run.threads=1", "run.progress=false", "run.log_every=1", "run.val_every=3",
        "run.ckpt_every=2", "run.steps=6"])
    cfg["run"].update(run)
    return validate_config(cfg)


def read_log(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("cls", [MetaQSM, MesaQSM])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(data, cls):
    torch.manual_seed(0)
    ds = data[0]
    # two geometries, two samples each (runs of equal geometry keep the convolutions batched)
    batch = {k: torch.stack([ds[i][k] for i in (0, 4, 1, 5)]) for k in ds[0]}
    model = cls(depth=2, base=4) if cls is MesaQSM else cls(depth=2, base=4, basis=2, hidden=8)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    losses = []
    for _ in range(20):
        pred = model(batch["field"], batch["voxel_size"], batch["b0_dir"])
        loss = masked_l1(pred * 10, batch["chi"] * 10, batch["mask"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_masked_l1_and_regularization_known_values():
    a, b = torch.zeros(1, 1, 2, 2, 1), torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2, 1)
    m = torch.tensor([True, False, False, True]).reshape(1, 1, 2, 2, 1)
    assert float(masked_l1(a, b)) == pytest.approx(2.5)
    assert float(masked_l1(a, b, m)) == pytest.approx(2.5)
    assert float(masked_l1(a, b, ~m)) == pytest.approx(2.5)
    assert float(masked_l1(a, b, m & (b > 2))) == pytest.approx(4.0)
    meta = MetaQSM(depth=1, base=2, basis=2, hidden=4).requires_grad_(False)
    expected = 0.0
    for mod in meta.modules():
        if hasattr(mod, "weight_basis"):
            expected += float(mod.weight_basis.pow(2).sum()) + float(mod.bias_basis.pow(2).sum()) \
                if mod.bias_basis is not None else float(mod.weight_basis.pow(2).sum())
            expected += sum(float(l.weight.pow(2).sum()) for l in mod.predictor if hasattr(l, "weight"))
    assert float(regularization(meta)) == pytest.approx(expected, rel=1e-5)
    mesa = MesaQSM(depth=1, base=2).requires_grad_(False)
    expected = sum(float(c.weight.pow(2).sum()) for c in mesa.modules() if isinstance(c, torch.nn.Conv3d))
    assert float(regularization(mesa)) == pytest.approx(expected, rel=1e-5)


def test_masked_ssim_is_the_metric_on_the_truths_scale():
    """Known answer: the challenges' SSIM moments (metrics._moments) with the truth's own range
    (shift = its minimum, scale = 1 / its span, L = 1); identical maps give 1, an empty mask 1,
    and a gradient step on 1 - SSIM moves a map with half the contrast towards the truth."""
    from scipy import ndimage

    from metaqsm import metrics

    rng = np.random.default_rng(0)
    y = ndimage.gaussian_filter(rng.standard_normal((20, 22, 18)), 2.0)
    x = 0.5 * y + 0.02 * rng.standard_normal(y.shape)
    m = np.zeros(y.shape, bool)
    m[3:17, 4:19, 2:15] = True
    lo, hi = (y * m).min(), (y * m).max()
    expected = metrics._ssim_from_moments(metrics._moments(x * m, y * m, m), k1=0.01, k2=0.03,
                                          data_range=1.0, shift=lo, scale=1.0 / (hi - lo))

    def t(a):
        return torch.tensor(np.asarray(a, np.float64)[None, None])

    assert float(masked_ssim(t(x), t(y), t(m))[0]) == pytest.approx(expected, abs=1e-9)
    assert float(masked_ssim(t(y), t(y), t(m))[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(masked_ssim(t(x), t(y), t(np.zeros_like(m)))[0]) == 1.0
    both = masked_ssim(torch.cat([t(x), t(y)]), torch.cat([t(y), t(y)]), torch.cat([t(m), t(m)]))
    assert both.shape == (2,) and float(both[0]) == pytest.approx(expected, abs=1e-9)
    pred = t(x).requires_grad_(True)
    (1.0 - masked_ssim(pred, t(y), t(m))).sum().backward()
    stepped = (pred - 0.1 * y.std() * pred.grad / pred.grad.abs().max()).detach()
    assert float(masked_ssim(stepped, t(y), t(m))[0]) > expected + 0.01


def test_learning_rate_warm_up_and_decay():
    """optim.warmup_steps ramps the rate linearly over its first steps, then the paper's decay
    (x decay_rate every decay_steps) applies; 0 is the paper's schedule."""
    from metaqsm.dl.train.loop import lr_factor

    f = lr_factor({"decay_rate": 0.5, "decay_steps": 10, "warmup_steps": 4})
    assert [f(s) for s in (0, 1, 2, 3, 4, 9, 10, 25)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.5, 0.25])
    g = lr_factor({"decay_rate": 0.5, "decay_steps": 10, "warmup_steps": 0})
    assert [g(s) for s in (0, 9, 10)] == pytest.approx([1.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="optim.warmup_steps must be an integer"):
        validate_config(apply_overrides(DEFAULT_CONFIG, ["optim.warmup_steps=-1"]))


def test_ssim_weight_trains_and_vol_score_selects(data, tmp_path):
    """optim.ssim_weight adds the SSIM term (finite losses, a run as any other) and
    run.select_by = "vol_score" keeps the checkpoint with the lowest mean of RMSE / 100,
    HFEN / 100 and 1 - SSIM over the whole validation volumes."""
    from metaqsm.dl.registry import read_checkpoint_info

    ds, val = data
    cfg = tiny_config(val_volumes=1, val_volume_shape=[32, 32, 16], select_by="vol_score")
    cfg["optim"]["ssim_weight"] = 0.5
    res = train(validate_config(cfg), out=tmp_path / "s", train_data=ds, val_data=val)
    rows = [r for r in read_log(tmp_path / "s" / "log.csv") if r["vol_rmse"]]
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    scores = [(float(r["vol_rmse"]) / 100 + float(r["vol_hfen"]) / 100
               + 1 - float(r["vol_ssim"])) / 3 for r in rows]
    assert res["best_score"] == pytest.approx(min(scores), rel=1e-6)
    info = read_checkpoint_info(tmp_path / "s" / "best.safetensors")
    assert info["extra"]["vol_score"] == pytest.approx(min(scores), rel=1e-6)


def test_train_writes_run_and_resume_reproduces_the_losses(data, tmp_path):
    ds, val = data
    full = train(tiny_config(), out=tmp_path / "a", train_data=ds, val_data=val)
    assert full["step"] == 6 and not full["stopped"]
    run = tmp_path / "a"
    for name in ("config.json", "last.pt", "best.safetensors", "log.csv", "curves.png"):
        assert (run / name).is_file(), name
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 6 and state["positions"] == [12]
    rows = read_log(run / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(rows[i]["val_rmse"] for i in (2, 5)) and not rows[0]["val_loss"]
    best = load_model(run / "best.safetensors")
    assert isinstance(best, MetaQSM) and best.config["base"] == 4

    part = train(tiny_config(), out=tmp_path / "b", train_data=ds, val_data=val, stop_after=3)
    assert part["stopped"] and part["step"] == 3
    with pytest.raises(FileExistsError, match="already holds a training run; continue it with "
                                              "resume=True"):
        train(tiny_config(), out=tmp_path / "b", train_data=ds, val_data=val)
    done = train(tiny_config(), out=tmp_path / "b", resume=True, train_data=ds, val_data=val)
    assert done["step"] == 6
    resumed = read_log(tmp_path / "b" / "log.csv")
    assert [int(r["step"]) for r in resumed] == list(range(1, 7))
    for r1, r2 in zip(rows, resumed):
        assert float(r2["train_loss"]) == pytest.approx(float(r1["train_loss"]), rel=1e-6, abs=1e-7)
        if r1["val_loss"]:
            assert float(r2["val_loss"]) == pytest.approx(float(r1["val_loss"]), rel=1e-6)
    assert done["best_val_loss"] == pytest.approx(full["best_val_loss"], rel=1e-6)


def test_whole_volume_validation_logs_and_selects_the_best(data, tmp_path):
    from metaqsm.dl.infer import reconstruct
    from metaqsm.dl.registry import read_checkpoint_info
    from metaqsm.dl.train.validation import volume_set
    from metaqsm.metrics import compute_metrics

    ds, val = data
    cfg = tiny_config(val_volumes=1, val_volume_shape=[32, 32, 16], select_by="vol_rmse")
    res = train(cfg, out=tmp_path / "v", train_data=ds, val_data=val)
    rows = read_log(tmp_path / "v" / "log.csv")
    vol = [float(r["vol_rmse"]) for r in rows if r["vol_rmse"]]
    assert len(vol) == 2 and all(0 < v < 1000 for v in vol), vol
    assert all(r["vol_hfen"] and r["vol_ssim"] for r in rows if r["vol_rmse"])
    assert res["best_score"] == pytest.approx(min(vol), rel=1e-6)
    info = read_checkpoint_info(tmp_path / "v" / "best.safetensors")
    assert info["extra"]["vol_rmse"] == pytest.approx(min(vol), rel=1e-6)
    # the logged score is the whole-volume reconstruction of the kept weights
    (v,) = volume_set(cfg)
    assert v["field"].shape == (32, 32, 16)
    chi = reconstruct(load_model(tmp_path / "v" / "best.safetensors", cache=False), v["field"],
                      v["mask"], voxel_size=v["voxel_size"], b0_dir=v["b0_dir"])
    assert compute_metrics(chi, v["chi"], v["mask"])["rmse"] == pytest.approx(min(vol), rel=1e-3)
    # deterministic, and not one of the validation patches of the same seed
    (again,) = volume_set(cfg)
    assert np.array_equal(again["chi"], v["chi"])
    # resuming keeps the best score of the criterion
    part = train(cfg, out=tmp_path / "w", train_data=ds, val_data=val, stop_after=4)
    assert part["stopped"]
    done = train(cfg, out=tmp_path / "w", resume=True, train_data=ds, val_data=val)
    assert done["best_score"] == pytest.approx(res["best_score"], rel=1e-6)


def test_weight_average_known_values_and_exact_resume(data, tmp_path):
    from metaqsm.dl.train.loop import EMA

    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, 0.5)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)  # warm-up decay min(0.5, 2/11) = 2/11: 0 + (1 - 2/11) * (1 - 0)
    assert float(ema.net.weight) == pytest.approx(9 / 11)
    for _ in range(3):
        ema.update(lin)
    # the gap to 1 shrinks by the decay of each update: 2/11, 3/12, 4/13, 5/14 (all below 0.5)
    assert float(ema.net.weight) == pytest.approx(1 - (2 / 11) * (3 / 12) * (4 / 13) * (5 / 14))
    for _ in range(4):
        ema.update(lin)
    gap = 1 - float(ema.net.weight)
    assert gap > 1e-4
    ema.update(lin)  # update 9: (1 + 9) / (10 + 9) > 0.5, so the decay is 0.5: the gap halves
    assert 1 - float(ema.net.weight) == pytest.approx(gap * 0.5, rel=2e-3)
    assert not ema.net.weight.requires_grad

    ds, val = data
    cfg = tiny_config(ema_decay=0.9)
    full = train(cfg, out=tmp_path / "a", train_data=ds, val_data=val)
    part = train(cfg, out=tmp_path / "b", train_data=ds, val_data=val, stop_after=4)
    assert part["stopped"]
    done = train(cfg, out=tmp_path / "b", resume=True, train_data=ds, val_data=val)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["ema"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["ema"]
    assert a["updates"] == b["updates"] == 6
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], rtol=1e-5, atol=1e-7)
    raw = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    assert any(not torch.equal(raw[k], a["weights"][k]) for k in raw if raw[k].is_floating_point())
    assert done["best_val_loss"] == pytest.approx(full["best_val_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="run.ema_decay must be a number in"):
        validate_config(apply_overrides(DEFAULT_CONFIG, ["run.ema_decay=1.0"]))


def test_fine_tuning_starts_from_a_checkpoint(data, tmp_path):
    from metaqsm.dl.registry import save_checkpoint

    ds, val = data
    train(tiny_config(steps=1), out=tmp_path / "a", train_data=ds, val_data=val)  # from scratch
    torch.manual_seed(123)
    start = MetaQSM(depth=2, base=4, basis=2, hidden=8)  # the tiny config's network, other weights
    ckpt = save_checkpoint(tmp_path / "start.safetensors", start)
    tuned = train(tiny_config(steps=2, init_weights=str(ckpt), ckpt_every=1), out=tmp_path / "b",
                  train_data=ds, val_data=val, stop_after=1)
    assert tuned["step"] == 1
    # the first step moved the weights away from the checkpoint's, not from a random start
    after = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    fresh = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    key = next(k for k in after if after[k].is_floating_point() and after[k].numel() > 8)
    d_start = float((after[key] - start.state_dict()[key]).abs().max())
    d_fresh = float((after[key] - fresh[key]).abs().max())
    assert d_start < 0.1 * d_fresh
    with pytest.raises(ValueError, match="run.init_weights .* holds a 'mesa' network"):
        mesa = save_checkpoint(tmp_path / "mesa.safetensors", MesaQSM(depth=2, base=4))
        train(tiny_config(init_weights=str(mesa)), out=tmp_path / "c", train_data=ds, val_data=val)
    with pytest.raises(ValueError, match="run.init_weights must be a checkpoint path"):
        validate_config(apply_overrides(DEFAULT_CONFIG, ["run.init_weights=3"]))


def test_log_of_an_earlier_version_is_upgraded(tmp_path):
    from metaqsm.dl.train.log import LOG_FIELDS, append_log

    log = tmp_path / "log.csv"
    log.write_text("step,train_loss,val_loss,val_rmse,val_hfen,val_ssim,lr,seconds\n"
                   "5,0.3,0.2,50,40,0.9,0.0001,8.6\n")
    append_log(log, {"step": 10, "train_loss": "0.25", "vol_rmse": "45"})
    rows = read_log(log)
    assert tuple(rows[0]) == LOG_FIELDS
    assert rows[0]["val_rmse"] == "50" and rows[0]["vol_rmse"] == ""
    assert rows[1]["step"] == "10" and rows[1]["vol_rmse"] == "45"


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(tiny_config(), out=tmp_path / "none", resume=True)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown configuration key 'optim.learning_rate'"):
        apply_overrides(DEFAULT_CONFIG, ["optim.learning_rate=1"])
    with pytest.raises(ValueError, match="override must look like key=value"):
        apply_overrides(DEFAULT_CONFIG, ["lr"])
    with pytest.raises(ValueError, match="unknown section 'optimiser'"):
        apply_overrides(DEFAULT_CONFIG, ["optimiser.lr=1"])
    cfg = apply_overrides(DEFAULT_CONFIG, ["lr=3e-4", "steps=5", 'source="h5"', "data.path=x.h5"])
    assert cfg["optim"]["lr"] == 3e-4 and cfg["run"]["steps"] == 5 and cfg["data"]["path"] == "x.h5"
    for overrides, message in (
            (["optim.lr=0"], "optim.lr must be a positive number"),
            (['data.source="h5"'], "data.path must name an HDF5 file"),
            (['model.name="unet"'], "model.name must be one of"),
            (['model.name="mesa"', "model.basis=2"], "model.basis is not an argument of model 'mesa'"),
            (['run.select_by="ssim"'], "run.select_by must be one of"),
            (['run.select_by="vol_rmse"'], "needs run.val_volumes >= 1"),
            (['run.select_by="vol_score"'], "needs run.val_volumes >= 1"),
            (["optim.ssim_weight=-1"], "optim.ssim_weight must be a non-negative number"),
            (["data.head_bank_fraction=1.5"], "data.head_bank_fraction must be a number in"),
            (["data.head_bank_fraction=0.5"], "needs data.source = 'realistic' and a"),
            (['data.source="realistic"', "data.head_bank_fraction=0.5"],
             "needs data.source = 'realistic' and a"),
            (["run.val_volume_shape=[64, 64]"], "run.val_volume_shape must be 3 integers"),
            (["run.val_volumes=-1"], "run.val_volumes must be an integer"),
            (['run.amp="fp8"'], "run.amp must be one of")):
        with pytest.raises(ValueError, match=message):
            validate_config(apply_overrides(DEFAULT_CONFIG, overrides))
    with pytest.raises(FileNotFoundError, match="configuration file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = = 1\n")
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize("name", ["meta-unrolled.toml", "meta-unrolled-ssim.toml",
                                  "meta-unrolled-warmup.toml", "meta-unrolled-contrast.toml",
                                  "meta-unrolled-bank.toml"])
def test_meta_unrolled_configs_load(name):
    """The Meta-QSM 2 training and its contrast fine-tune (from the shipped weights, which
    exist and fit the configured network) are valid configurations."""
    from pathlib import Path

    from metaqsm.dl.registry import build_model, load_model

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert cfg["model"]["name"] == "meta-unrolled" and cfg["run"]["select_by"].startswith("vol_")
    if cfg["run"]["init_weights"]:
        # a fine-tune changes the objective or the data
        assert cfg["optim"]["ssim_weight"] > 0 or cfg["data"]["head_bank_fraction"] > 0
        shipped = load_model(cfg["run"]["init_weights"], cache=False)
        model = build_model("meta-unrolled", **{k: v for k, v in cfg["model"].items()
                                                if k != "name"})
        assert shipped.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("name", ["paper.toml", "cpu.toml", "cpu-mesa-0.5x0.5x2.toml",
                                  "cpu-mesa-0.7639x0.7639x3.toml", "cpu-ft128.toml",
                                  "cpu-mesa-0.5x0.5x2-ft128.toml",
                                  "cpu-mesa-0.7639x0.7639x3-ft128.toml"])
def test_shipped_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / name
    cfg = load_config(path)
    assert cfg["optim"]["weight_reg"] == 0.01 and cfg["optim"]["decay_steps"] == 200
    from metaqsm.simulate.synth import SynthConfig
    from metaqsm.dl.train.config import synth_config

    assert isinstance(synth_config(cfg), SynthConfig)
    if cfg["run"]["init_weights"]:  # stage 2 starts from committed stage-1 weights, not a download
        from metaqsm.dl.registry import read_checkpoint_info

        info = read_checkpoint_info(path.parents[1] / cfg["run"]["init_weights"])
        assert info["model"] == cfg["model"]["name"]
        assert all(info["config"][k] == v for k, v in cfg["model"].items()
                   if k not in ("name", "correction_mean", "scale_equivariant")), info["config"]


def test_ddp_world_size_one(data, tmp_path, monkeypatch):
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(k, v)
    res = train(tiny_config(steps=2, val_every=2), out=tmp_path / "ddp", train_data=data[0],
                val_data=data[1])
    assert res["step"] == 2 and not dist.is_initialized()
    assert torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["positions"] == [4]


def test_ddp_two_ranks_with_torchrun(tmp_path):
    """Two processes through torchrun (gloo on the CPU): the batch is split between the ranks,
    every rank's data position is checkpointed, and a resumed two-rank run continues."""
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp2"
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={port}", "-m", "metaqsm.cli"]
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    args = [("optim.batch_size=2" if a == "optim.batch_size=1" else a)
            for a in _cli_args(out, "--steps", "2")]
    r = subprocess.run([*base, *args], capture_output=True, text=True,
                       timeout=600, env=env, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[:3000]
    assert r.stdout.count("metaqsm train: done at step 2") == 1  # rank 0 reports, not each rank
    state = torch.load(out / "last.pt", weights_only=True)
    # one position per rank: each took 1 of the 2 samples of each of the 2 steps
    assert state["step"] == 2 and state["positions"] == [2, 2]
    r = subprocess.run([*base, "train", "--out", str(out), "--resume", "--steps", "3",
                        "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[:3000]
    assert torch.load(out / "last.pt", weights_only=True)["positions"] == [3, 3]
    assert [int(row["step"]) for row in read_log(out / "log.csv")] == [1, 2, 3]


def _cli_args(out, *extra):
    return ["train", "--stream", "--out", str(out), "--no-progress", "model.depth=1",
            "model.base=4", "model.basis=2", "model.hidden=8", "data.patch_shape=[32, 32, 16]",
            "data.val_size=1", "optim.batch_size=1", "run.val_every=2", "run.log_every=1",
            "run.ckpt_every=1", "run.threads=1", *extra]


def test_cli_train_stream_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli_args(out, "--steps", "2")) == 0
    assert "done at step 2" in capsys.readouterr().out
    assert main(_cli_args(out, "--steps", "2")) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--no-progress"]) == 0
    rows = read_log(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["run"]["steps"] == 3
    assert main(["train-plot", str(out), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert main(["train", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "nope.h5")]) == 2
    assert "--data" in capsys.readouterr().err
    # the library names the configuration key, the command line adds its option
    assert main(["train", "--out", str(tmp_path / "x"), 'data.source="h5"']) == 2
    assert ("data.path must name an HDF5 file when data.source is 'h5' (--data PATH)"
            in capsys.readouterr().err)


def test_sigterm_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "metaqsm.cli", *_cli_args(out, "--steps", "1000")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "last.pt").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped (resume with --resume)" in stdout
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 1 <= step < 1000
    assert main(["train", "--out", str(out), "--resume", "--steps", str(step + 1), "--no-progress"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == step + 1


def test_cli_train_from_hdf5_set(tmp_path, capsys):
    from metaqsm.dl.registry import read_checkpoint_info

    data = tmp_path / "synth"
    assert main(["synth", "-n", "4", "-o", str(data), "--patch", "32", "32", "16", "--split", "0.5",
                 "--seed", "3", "--voxel-size-range", "0.5", "0.5", "0.5", "0.5", "2", "2"]) == 0
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--steps", "3", "--no-progress",
                 'model.name="mesa"', "model.depth=1", "model.base=4", "optim.batch_size=2",
                 "run.val_every=3", "run.threads=1"]) == 0
    info = read_checkpoint_info(out / "best.safetensors")
    assert info["model"] == "mesa" and info["extra"]["data_seed"] == 3
    assert info["extra"]["voxel_size"] == [0.5, 0.5, 2.0] and info["extra"]["step"] == 3
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["positions"] == [6]  # 3 steps x 2 samples, cycling the 2 training samples
