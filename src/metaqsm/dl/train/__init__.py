"""Training of Meta-QSM / Mesa-QSM: the paper's recipe, resumable, on CPU, CUDA or several GPUs.

The recipe (paper section 2.3) is the default: L1 loss between the predicted and the true
susceptibility, L2 regularisation of strength 0.01 on the WP-Conv parameters, RMSprop with a
learning rate of 1e-4 and an exponential (staircase) decay every 200 steps, batch size 4,
128 x 128 x 64 patches, a 9:1 train/validation split. ``configs/paper.toml`` spells it out and
``configs/cpu.toml`` is the reduced configuration for a 2-core CPU.

A run directory holds:

* ``config.json``: the full configuration of the run;
* ``last.pt``: the state to resume from (model, optimiser, scheduler, step, data position, random
  states), written every ``run.ckpt_every`` steps, at the end and on SIGTERM/SIGINT, atomically;
  it loads with ``torch.load(weights_only=True)``;
* ``best.safetensors``: the network with the lowest validation score ``run.select_by`` (name,
  config, weights and the training information, see :func:`metaqsm.dl.registry.save_checkpoint`);
* ``log.csv``: step, train loss, validation loss, RMSE, HFEN, SSIM, learning rate, seconds, and
  the whole-volume RMSE, HFEN, SSIM;
* ``curves.png``: the curves (:func:`plot_log`).

The modules, one job each: :mod:`.config` (defaults, checks, overrides), :mod:`.batches` (the
training data, resumable, dealt to the ranks), :mod:`.loss`, :mod:`.validation` (patches and
whole volumes), :mod:`.state` (``last.pt``: random generators, atomic saving, fine-tuning
weights), :mod:`.log` (``log.csv`` and its plot), :mod:`.distributed` (device, mixed precision,
DDP) and :mod:`.loop` (:func:`train`, the weight average, stopping on a signal).

Distributed data parallel: start with ``torchrun --nproc_per_node=N -m metaqsm.cli train ...``;
each rank reads its own slice of the data (the synthetic stream at a per-rank index offset, an
HDF5 set through a per-rank share of each epoch's permutation); rank 0 validates and writes.

Whole-volume validation (``run.val_volumes``, not in the paper): patches are scored at the size
the network trains on, but a user reconstructs a whole brain, whose lowest spatial frequencies
and mean no patch holds; a network's patch loss can fall while its whole-volume error rises.
With ``run.val_volumes = N`` the run also reconstructs N synthetic volumes of
``run.val_volume_shape`` (the training generator, sources inside the volume only) at every
validation, logs ``vol_rmse``, ``vol_hfen``, ``vol_ssim``, and ``run.select_by = "vol_rmse"``
keeps the checkpoint that is best on them.

Weight average (``run.ema_decay``, not in the paper): an exponential moving average of the
weights, validated and kept in ``best.safetensors`` instead of the raw weights, which with batch 4
vary much from one checkpoint to the next on whole volumes.

References
----------
Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction (Koch KM et al.),
section 2.3.
"""

from .config import DEFAULT_CONFIG, SELECT_BY, apply_overrides, load_config, validate_config
from .log import LOG_FIELDS, plot_log
from .loop import train
from .loss import masked_l1, masked_ssim, regularization

__all__ = ["DEFAULT_CONFIG", "load_config", "apply_overrides", "validate_config", "train",
           "plot_log", "regularization", "masked_l1", "masked_ssim", "LOG_FIELDS", "SELECT_BY"]
