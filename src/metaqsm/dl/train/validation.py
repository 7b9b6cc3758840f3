"""Validation during training: the loss and metrics on patches, and (``run.val_volumes``) on
whole synthetic volumes reconstructed as a user would."""

from __future__ import annotations

import numpy as np
import torch

from ...metrics import compute_metrics
from ...simulate.synth import SynthConfig, draw_fine_scene, finish_scene
from ...simulate.testsets import LOCAL_ONLY
from ..data import H5Dataset
from ..infer import reconstruct
from .batches import h5_manifest, is_map_style, stack, stream
from .config import synth_config, val_seed
from .loss import masked_l1

__all__ = ["validation_set", "volume_config", "volume_set", "realistic_volumes",
           "REALISTIC_VOLUMES", "validate", "validate_volumes"]


def validation_set(cfg, dataset=None):
    """The validation samples (a list): the first ``data.val_size`` of ``dataset``, else of the
    HDF5 set's ``val`` group, else of the validation stream (seed :func:`val_seed`)."""
    n = cfg["data"]["val_size"]
    if dataset is None:
        if cfg["data"]["source"] == "h5":
            dataset = H5Dataset(cfg["data"]["path"], split="val")
        else:
            dataset = stream(cfg, seed=val_seed(cfg), start=0, length=n)
    if is_map_style(dataset):
        return [dataset[i] for i in range(min(n, len(dataset)))]
    out = []
    for s in dataset:
        out.append(s)
        if len(out) >= n:
            break
    return out


#: Spawn key of the whole validation volumes' random streams ("vol" in ASCII): independent of the
#: training samples (no spawn key) and of the test sets (their own entropy).
VOLUME_SPAWN = 0x766F6C


def volume_config(cfg):
    """SynthConfig of the whole validation volumes: the training data's generator (an HDF5
    set's own, from its manifest), at ``run.val_volume_shape``, with only the sources inside
    the volume (:data:`metaqsm.simulate.testsets.LOCAL_ONLY`)."""
    manifest = h5_manifest(cfg)
    if manifest is not None and "config" in manifest:
        params = dict(manifest["config"])
    else:
        params = synth_config(cfg).to_dict()
    params.update(patch_shape=tuple(int(n) for n in cfg["run"]["val_volume_shape"]), **LOCAL_ONLY)
    return SynthConfig.from_dict(params)


def volume_set(cfg):
    """The whole validation volumes (generated once per run, deterministic)."""
    n = cfg["run"]["val_volumes"]
    if n < 1:
        return []
    if cfg["run"].get("val_volume_kind", "synthetic") == "realistic":
        return realistic_volumes(n, seed=val_seed(cfg))
    config = volume_config(cfg)
    seed = val_seed(cfg)
    rngs = [np.random.default_rng(np.random.SeedSequence(entropy=(seed, i),
                                                         spawn_key=(VOLUME_SPAWN,)))
            for i in range(n)]
    return [finish_scene(draw_fine_scene(config, rng), config=config, rng=rng) for rng in rngs]


#: The whole realistic validation volumes: (output voxel size in mm, B0 tilt in degrees), on the
#: quick 2 mm grid of the realistic simulator, cycled when more are asked for.
REALISTIC_VOLUMES = (((2.0, 2.0, 2.0), 0.0), ((2.0, 2.0, 3.0), 20.0), ((2.0, 2.0, 2.0), 25.0))


def realistic_volumes(n, *, seed):
    """``n`` quick realistic cases (:func:`metaqsm.simulate.realistic.realistic_case` with
    ``RealisticConfig(fine_voxel_mm=2.0)``, through the whole pipeline; about 10 s each), of
    :data:`REALISTIC_VOLUMES`; seed ``seed`` (the validation seed: other anatomies than the
    realistic suite's, seed 2026)."""
    from ...simulate.realistic import RealisticConfig, realistic_case

    config = RealisticConfig(fine_voxel_mm=2.0)
    out = []
    for i in range(n):
        vsz, tilt = REALISTIC_VOLUMES[i % len(REALISTIC_VOLUMES)]
        case = realistic_case(i, output_voxel_size=vsz, b0_tilt_deg=tilt, config=config, seed=seed)
        out.append({k: case[k] for k in ("field", "chi", "mask", "voxel_size", "b0_dir")})
    return out


def validate_volumes(model, volumes, device):
    """Mean RMSE / HFEN / SSIM of the network over whole volumes (as :func:`reconstruct`)."""
    if not volumes:
        return {}
    net = getattr(model, "module", model)
    was_training = net.training
    scores = {"rmse": [], "hfen": [], "ssim": []}
    try:
        for v in volumes:
            chi = reconstruct(net, v["field"], v["mask"], voxel_size=v["voxel_size"],
                              b0_dir=v["b0_dir"], tile="none", device=str(device))
            res = compute_metrics(chi, v["chi"], v["mask"])
            for k in scores:
                scores[k].append(float(res[k]))
    finally:
        net.train(was_training)
    out = {f"vol_{k}": float(np.mean(v)) for k, v in scores.items()}
    # one score for run.select_by = "vol_score": the mean of the three errors (lower is better)
    out["vol_score"] = (out["vol_rmse"] / 100.0 + out["vol_hfen"] / 100.0
                        + (1.0 - out["vol_ssim"])) / 3.0
    return out


def validate(model, val, cfg, device, amp_dtype):
    """Validation loss and mean RMSE / HFEN / SSIM (inside each mask) of the network over the
    patches ``val``, at the batch size of the run."""
    net = getattr(model, "module", model)
    was_training = net.training
    net.eval()
    scale = float(getattr(net, "output_scale", 1.0))
    losses, metrics = [], {"rmse": [], "hfen": [], "ssim": []}
    bs = cfg["optim"]["batch_size"]
    in_mask = cfg["optim"]["loss_in_mask"]
    with torch.inference_mode():
        for i in range(0, len(val), bs):
            b = stack(val[i:i + bs])
            x, y, m = b["field"].to(device), b["chi"].to(device), b["mask"].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = net(x, b["voxel_size"].to(device), b["b0_dir"].to(device))
            pred = pred.float()
            for j in range(x.shape[0]):
                losses.append(float(masked_l1(pred[j] * scale, y[j] * scale, m[j] if in_mask else None)))
                mj = m[j, 0].cpu().numpy() > 0
                if mj.any():
                    res = compute_metrics(pred[j, 0].cpu().numpy() * mj, y[j, 0].cpu().numpy(), mj)
                    for k in metrics:
                        metrics[k].append(float(res[k]))
    net.train(was_training)
    out = {"val_loss": float(np.mean(losses))}
    for k, v in metrics.items():
        out[f"val_{k}"] = float(np.mean(v)) if v else float("nan")
    return out
