"""The log of a training run: ``log.csv`` (one row every ``run.log_every`` steps, validation
columns every ``run.val_every`` steps) and its curves (``curves.png``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ...io import atomic_path

__all__ = ["LOG_FIELDS", "append_log", "truncate_log", "plot_log"]

#: The columns of ``log.csv``.
LOG_FIELDS = ("step", "train_loss", "val_loss", "val_rmse", "val_hfen", "val_ssim", "lr", "seconds",
              "vol_rmse", "vol_hfen", "vol_ssim")


def truncate_log(path, step):
    """Drop rows written after the checkpoint being resumed (their steps are redone)."""
    if not path.is_file():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = [{k: v for k, v in r.items() if k in LOG_FIELDS} for r in rows if int(r["step"]) <= step]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)


def append_log(path, row):
    """Append ``row`` (a dict of :data:`LOG_FIELDS`, missing ones left empty) to the log at
    ``path``, writing the header first in a new log and upgrading a log of an earlier version."""
    new = not path.is_file()
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), None)
        if header is not None and tuple(header) != LOG_FIELDS:  # a log of an earlier version
            truncate_log(path, math.inf)
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in LOG_FIELDS})


def plot_log(log_csv, png=None):
    """Plot training/validation loss and the validation metrics of a ``log.csv`` to a PNG.

    Parameters
    ----------
    log_csv : str or Path
        A run's ``log.csv``, or its run folder.
    png : str or Path, optional
        The picture (default: ``curves.png`` beside the log); replaced atomically.

    Returns
    -------
    Path
        The PNG written.

    Raises
    ------
    FileNotFoundError
        There is no log.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_csv = Path(log_csv)
    if log_csv.is_dir():
        log_csv = log_csv / "log.csv"
    if not log_csv.is_file():
        raise FileNotFoundError(f"training log {log_csv} does not exist")
    png = Path(png) if png is not None else log_csv.with_name("curves.png")
    with open(log_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def col(name):
        pts = [(int(r["step"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        return np.array(pts).reshape(-1, 2)

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    tr, va = col("train_loss"), col("val_loss")
    axes[0].plot(tr[:, 0], tr[:, 1], lw=0.8, label="train")
    axes[0].plot(va[:, 0], va[:, 1], "o-", ms=3, label="validation")
    axes[0].set_yscale("log")
    axes[0].set_title("L1 loss (x output_scale)")
    axes[0].legend()
    for ax, (name, title) in zip(axes[1:], (("rmse", "validation RMSE (%)"),
                                            ("hfen", "validation HFEN (%)"),
                                            ("ssim", "validation SSIM"))):
        c = col(f"val_{name}")
        ax.plot(c[:, 0], c[:, 1], "o-", ms=3, label="patches")
        v = col(f"vol_{name}")
        if len(v):
            ax.plot(v[:, 0], v[:, 1], "s-", ms=3, label="whole volumes")
            ax.legend()
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png, force=True) as tmp:  # the curves of the previous call are replaced
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return png
