"""The training loop: one optimiser step after another, validation, checkpoints and the log,
with an optional weight average, stopping cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..._version import __version__
from ..registry import build_model, save_checkpoint
from . import distributed
from .batches import Batches, data_seed, fixed_voxel_size
from .config import load_config, validate_config
from .log import append_log, plot_log, truncate_log
from .loss import masked_l1, masked_ssim, regularization
from .state import init_from, load_state, rng_state, save_state, set_rng_state
from .validation import validate, validate_volumes, validation_set, volume_set

__all__ = ["train", "EMA", "Stop"]


class EMA:
    """Exponential moving average of a network's parameters (buffers, e.g. BatchNorm statistics,
    are copied), with the usual warm-up: the decay at update t is min(decay, (1 + t) / (10 + t)),
    so early averages are not dominated by the initial weights.

    Parameters
    ----------
    model : torch.nn.Module
        The network whose weights are averaged (copied; the copy is :attr:`net`).
    decay : float
        The decay in [0, 1) (``run.ema_decay``).
    state : dict, optional
        A :meth:`state_dict` to continue from (a resumed run).
    """

    def __init__(self, model, decay, state=None):
        self.decay = float(decay)
        self.net = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        if state is not None:
            self.net.load_state_dict(state["weights"])
            self.updates = int(state["updates"])

    @torch.no_grad()
    def update(self, model):
        """Move the average one step towards ``model``'s weights."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, p in zip(self.net.parameters(), model.parameters()):
            avg.lerp_(p.detach(), 1.0 - d)
        for avg, b in zip(self.net.buffers(), model.buffers()):
            avg.copy_(b)

    def state_dict(self):
        """The average's weights and its number of updates (for ``last.pt``)."""
        return {"weights": self.net.state_dict(), "updates": self.updates}


class Stop:
    """Set by SIGTERM/SIGINT: the loop checkpoints and returns after the current step."""

    def __init__(self):
        self.flag = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        self.flag = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def lr_factor(optim):
    """The learning rate of step ``s`` over ``optim.lr``: a linear warm-up over
    ``optim.warmup_steps`` (``(s + 1) / warmup``), times ``decay_rate ** (s // decay_steps)``."""
    rate, every = float(optim["decay_rate"]), int(optim["decay_steps"])
    warmup = int(optim.get("warmup_steps", 0))

    def factor(s):
        ramp = min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
        return ramp * rate ** (s // every)

    return factor


def train(config, *, out, resume=False, train_data=None, val_data=None, stop_after=None):
    """Train a network as configured; resumable.

    Parameters
    ----------
    config : dict or str or Path
        A configuration (merged over :data:`DEFAULT_CONFIG`) or a TOML file.
    out : str or Path
        Run directory (created). Without ``resume`` it must not hold a previous run.
    resume : bool
        Continue from ``out/last.pt`` (same configuration; ``run.steps`` may be raised).
    train_data, val_data : datasets, optional
        Instead of the configured data: a map-style dataset (``len`` and indexing) or an iterable
        of sample dicts (``field``, ``chi``, ``mask`` (1, X, Y, Z), ``voxel_size``, ``b0_dir`` (3,)).
        An iterable is not resumable at the right position; map-style datasets are.
    stop_after : int, optional
        Stop (with a checkpoint, as on SIGTERM) after this many steps of this call (tests).

    Returns
    -------
    dict with ``step``, ``best_val_loss``, ``last_train_loss``, ``out`` and ``stopped`` (True when
    interrupted before ``run.steps``).

    Raises
    ------
    FileExistsError
        ``out`` holds a run and ``resume`` is False.
    FileNotFoundError
        ``resume`` is True and there is no ``out/last.pt``.
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    cfg = validate_config(config)
    out = Path(out)
    last_path = out / "last.pt"
    if resume:
        state = load_state(last_path)
        saved = json.loads(state["config"])
        # the run keeps its configuration; only the run section (steps, intervals) may change
        saved["run"] = cfg["run"]
        cfg = validate_config(saved)
    else:
        if last_path.exists() or (out / "log.csv").exists():
            raise FileExistsError(f"{out} already holds a training run; continue it with "
                                  f"resume=True, or choose another output folder")
        state = None

    r, o = cfg["run"], cfg["optim"]
    ranks = distributed.setup(distributed.resolve_device(str(r["device"])))
    rank, world, device = ranks.rank, ranks.world, ranks.device
    if r["threads"] > 0:
        torch.set_num_threads(r["threads"])
    amp_dtype = distributed.amp_dtype(r["amp"], device)
    is_main = rank == 0

    torch.manual_seed(r["seed"])
    model_args = {k: v for k, v in cfg["model"].items() if k != "name"}
    model = build_model(cfg["model"]["name"], **model_args).to(device)
    cfg["model"] = {"name": cfg["model"]["name"], **model.config}
    model.train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=o["lr"], alpha=o["rho"], eps=o["eps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(o))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step, position, best, best_loss = 0, 0, math.inf, math.inf
    by = r["select_by"]
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, best_loss = int(state["step"]), float(state["best_val_loss"])
        if state.get("best_by", "val_loss") == by:
            best = float(state.get("best_score", best_loss))
        # else: the criterion changed on resume; the next validation sets the best
        positions = state["positions"]
        position = int(positions[rank]) if rank < len(positions) else int(positions[0])
        set_rng_state(state["rng"])

    if state is None and r["init_weights"]:
        init_from(model, r["init_weights"])

    ema = None
    if r["ema_decay"] > 0:
        # a run that had no average yet (or a resumed one begun without) starts it here
        ema = EMA(model, r["ema_decay"], state.get("ema") if state is not None else None)

    ddp = distributed.wrap(model, ranks)
    if o["batch_size"] % world:
        raise ValueError(f"optim.batch_size {o['batch_size']} must be a multiple of the {world} ranks")
    per_rank = o["batch_size"] // world

    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if state is not None:
            truncate_log(out / "log.csv", step)
    batches = Batches(cfg, rank=rank, world=world, position=position, batch=per_rank,
                      dataset=train_data)
    val = validation_set(cfg, val_data) if is_main else None
    volumes = volume_set(cfg) if is_main else None
    scale = float(getattr(model, "output_scale", 1.0))
    extra_info = {
        "metaqsm_version": __version__,
        "data_seed": data_seed(cfg),
        "data_source": cfg["data"]["source"],
        "data_path": cfg["data"]["path"],
        "voxel_size": fixed_voxel_size(cfg),
        "train_config": cfg,
    }

    def checkpoint(seconds):
        positions = distributed.all_gather(batches.position, ranks)
        if not is_main:
            return
        save_state({
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "step": step,
            "positions": [int(p) for p in positions],
            "best_val_loss": best_loss,
            "best_by": by,
            "best_score": best,
            "rng": rng_state(),
            "config": json.dumps(cfg),
            "metaqsm_version": __version__,
            "seconds": float(seconds),
        }, last_path)

    t_start = time.perf_counter() - (float(state["seconds"]) if state is not None and "seconds" in state else 0.0)
    bar = None
    if is_main and r["progress"]:
        bar = tqdm(total=r["steps"], initial=step, desc=f"train {cfg['model']['name']}",
                   unit="step", mininterval=2.0, file=sys.stderr, dynamic_ncols=True)
    run_losses, last_loss, stopped, done_here = [], float("nan"), False, 0
    with Stop() as stop:
        while step < r["steps"]:
            b = batches.next()
            x = b["field"].to(device, non_blocking=True)
            y = b["chi"].to(device, non_blocking=True)
            m = b["mask"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = ddp(x, b["voxel_size"].to(device), b["b0_dir"].to(device))
            data_loss = masked_l1(pred.float() * scale, y * scale, m if o["loss_in_mask"] else None)
            loss = data_loss
            if o["ssim_weight"] > 0:
                loss = loss + o["ssim_weight"] * (1.0 - masked_ssim(pred.float(), y, m).mean())
            if o["weight_reg"] > 0:
                loss = loss + o["weight_reg"] * regularization(model).to(device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if o["grad_clip"] > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            done_here += 1
            last_loss = float(data_loss.detach())
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"the training loss became {last_loss} at step {step}; "
                                         f"lower optim.lr or enable optim.grad_clip")
            run_losses.append(last_loss)
            row = None
            if is_main and (step % r["log_every"] == 0 or step % r["val_every"] == 0
                            or step == r["steps"]):
                row = {"step": step, "train_loss": f"{np.mean(run_losses):.9g}",
                       "lr": f"{scheduler.get_last_lr()[0]:.6g}",
                       "seconds": f"{time.perf_counter() - t_start:.1f}"}
                run_losses = []
            if is_main and (step % r["val_every"] == 0 or step == r["steps"]):
                judged = ema.net if ema is not None else model  # what best.safetensors keeps
                res = validate(judged, val, cfg, device, amp_dtype)
                res.update(validate_volumes(judged, volumes, device))
                row.update({k: f"{v:.9g}" for k, v in res.items()})
                best_loss = min(best_loss, res["val_loss"])
                if res[by] < best:
                    best = res[by]
                    save_checkpoint(out / "best.safetensors", judged,
                                    {**extra_info, "step": step, **res},
                                    half=bool(r["half_checkpoint"]))
            if row is not None:
                append_log(out / "log.csv", row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            stopping = stop.flag or (stop_after is not None and done_here >= stop_after)
            stopping = distributed.any_rank(stopping, ranks)
            if step % r["ckpt_every"] == 0 or stopping or step == r["steps"]:
                checkpoint(time.perf_counter() - t_start)
            if stopping and step < r["steps"]:
                stopped = True
                break
    if bar is not None:
        bar.close()
    if is_main and (out / "log.csv").is_file():
        try:
            plot_log(out / "log.csv")
        except (ValueError, IndexError):  # too few rows to plot
            pass
    distributed.teardown(ranks)
    return {"step": step, "best_val_loss": best_loss, "best_score": best,
            "last_train_loss": last_loss, "out": str(out),
            "stopped": stopped}
