"""``metaqsm synth`` (a synthetic training data set on disk) and ``metaqsm synth-sheet`` (a PNG
sheet of random samples to look at).

The data set format (one HDF5 file with a 9:1 train/val split, and its manifest) belongs to
:mod:`metaqsm.io.trainset`; this module parses the options, runs the generator (in several
processes with ``--workers``) and reports. The file is written as a hidden ``.synth.h5.partial``
and renamed when complete, so a data set that exists is complete. An interrupted run keeps the
partial file; the same command resumes it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import _common

FLUSH_EVERY = 16  # samples between progress records in the partial file
#: The options that the data set writer's arguments come from (errors name the option).
#: library argument names whose flag differs from them (cli.translate maps the rest)
_ALIASES = {"n": "-n"}


def register(subparsers):
    p = _common.add_parser(
        subparsers, "synth",
        help="write a synthetic training data set (HDF5 + manifest)",
        description="Generate synthetic (local field, susceptibility, mask) patches as in the "
        "Meta-QSM paper (section 2.1) and write them to OUT/synth.h5 with OUT/manifest.json.\n"
        "Resumable: an interrupted run keeps OUT/.synth.h5.partial and the same command "
        "continues it.\n\n"
        "example:\n  metaqsm synth -n 30000 -o data/ --split 0.9 --seed 1 --workers 2",
    )
    p.add_argument("-n", "--count", type=int, required=True, help="number of samples")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--split", type=float, default=0.9,
                   help="fraction of the samples in the training group (the rest validate)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="storage type of field and chi")
    p.add_argument("--compression", choices=("lzf", "gzip", "none"), default="lzf",
                   help="HDF5 chunk compression")
    p.add_argument("--workers", type=int, default=1, help="generator processes")
    _add_config_args(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_synth)

    p = _common.add_parser(
        subparsers, "synth-sheet",
        help="write a PNG sheet of random synthetic samples",
        description="Draw random synthetic samples: local field, susceptibility (axial and "
        "coronal) and mask, with voxel size and B0 tilt in the titles.\n\n"
        "example:\n  metaqsm synth-sheet -o sheet.png -n 8 --seed 3",
    )
    p.add_argument("-o", "--output", required=True, help="output PNG")
    p.add_argument("-n", "--count", type=int, default=8, help="number of samples")
    p.add_argument("--start", type=int, default=0, help="first sample index")
    _add_config_args(p, seed=0)
    _common.add_force_arg(p)
    p.set_defaults(func=run_sheet)


def _add_config_args(p, seed=1):
    p.add_argument("--seed", type=int, default=seed, help="data set seed (0 <= seed < 10**6)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("X", "Y", "Z"), default=None,
                   help="patch shape in voxels (default: the config's, 128 128 64)")
    p.add_argument("--voxel-size-range", type=float, nargs=6, default=None,
                   metavar=("XLO", "XHI", "YLO", "YHI", "ZLO", "ZHI"),
                   help="voxel size range in mm (default: the paper's 0.5 1 0.5 1 2 4)")
    p.add_argument("--max-tilt", type=float, default=None,
                   help="largest B0 tilt in degrees (default: the config's, 0)")
    p.add_argument("--config", default=None,
                   help="JSON file of SynthConfig fields (command-line options override it)")


def _config(args):
    from ..simulate.synth import SynthConfig

    d = {}
    if args.config is not None:
        path = Path(args.config)
        if not path.exists():
            raise FileNotFoundError(f"--config file {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {path} is not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ValueError(f"--config {path} must hold a JSON object of SynthConfig fields")
        d = d.get("config", d)  # a manifest works too
    if args.patch is not None:
        d["patch_shape"] = args.patch
    if args.voxel_size_range is not None:
        v = args.voxel_size_range
        d["voxel_size_range"] = [v[0:2], v[2:4], v[4:6]]
    if args.max_tilt is not None:
        d["max_tilt_deg"] = args.max_tilt
    return SynthConfig.from_dict(d)


def _check_seed(seed):
    from ..simulate.synth import TRAIN_SEED_LIMIT

    if not 0 <= seed < TRAIN_SEED_LIMIT:
        raise ValueError(f"--seed must be in [0, {TRAIN_SEED_LIMIT}), got {seed}")


# ------------------------------------------------------------------------------------ synth
def _work(job):
    from ..simulate.synth import generate_sample

    index, config, seed = job
    return index, generate_sample(index, config=config, seed=seed)


def run_synth(args):
    from ..io import trainset  # h5py: imported when the command runs
    from ..simulate.anatomy import mni_maps

    args.flag_aliases = _ALIASES
    counts = trainset.split_counts(args.count, args.split)
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    _check_seed(args.seed)
    config = _config(args)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o {out} exists and is not a folder")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    done = trainset.begin(out, n=args.count, seed=args.seed, config=config.to_dict(),
                          split=args.split, dtype=args.dtype, compression=args.compression,
                          force=args.force)
    if done:
        print(f"metaqsm synth: resuming at sample {done} of {args.count}", file=sys.stderr)

    mni_maps()  # load once here: forked workers inherit it
    jobs = ((i, config, args.seed) for i in range(done, args.count))
    t0 = time.time()
    try:
        _generate(out, jobs, done, args)
    except KeyboardInterrupt:
        print(f"metaqsm synth: interrupted; progress kept in {trainset.paths(out).partial}, run "
              "the same command to resume", file=sys.stderr)
        return 130
    final = trainset.finish(out, seconds=time.time() - t0, force=args.force)
    print(f"wrote {final} ({counts['train']} train, {counts['val']} val) and "
          f"{trainset.paths(out).manifest}")
    return 0


def _generate(out, jobs, done, args):
    import multiprocessing

    from tqdm import tqdm

    from ..io import trainset

    pool = None
    if args.workers > 1:
        pool = multiprocessing.get_context("fork").Pool(args.workers)
        results = pool.imap(_work, jobs)
    else:
        results = map(_work, jobs)
    try:
        with tqdm(total=args.count, initial=done, unit="sample", desc="synth",
                  file=sys.stderr) as bar:
            trainset.append(out, _counted(results, bar), flush_every=FLUSH_EVERY)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _counted(items, bar):
    """``items``, advancing the progress bar once each has been handled."""
    for item in items:
        yield item
        bar.update(1)


# ------------------------------------------------------------------------------------ sheet
def run_sheet(args):
    from ..io import atomic_path, check_output_paths
    from ..simulate.synth import generate_sample

    if args.count < 1:
        raise ValueError(f"-n must be at least 1, got {args.count}")
    if args.start < 0:
        raise ValueError(f"--start must be >= 0, got {args.start}")
    _check_seed(args.seed)
    config = _config(args)
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise ValueError(f"-o must name a .png file, got {out}")
    check_output_paths([out], force=args.force)
    samples = [generate_sample(i, config=config, seed=args.seed)
               for i in range(args.start, args.start + args.count)]
    fig = sample_sheet(samples, indices=range(args.start, args.start + args.count),
                       seed=args.seed)
    with atomic_path(out, force=args.force) as tmp:
        fig.savefig(tmp, dpi=90)
    print(f"wrote {out}")
    return 0


def sample_sheet(samples, *, indices=None, seed=None):
    """A matplotlib figure: one row per sample (field, chi axial, chi coronal, mask)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..figures import CONVENTION, ras_slices, show_slice

    n = len(samples)
    fig, axes = plt.subplots(n, 4, figsize=(13, 3.2 * n), squeeze=False)
    for r, s in enumerate(samples):
        vsz = np.asarray(s["voxel_size"], float)
        b = np.asarray(s["b0_dir"], float)
        tilt = float(np.degrees(np.arccos(np.clip(abs(b[2]), 0, 1))))
        mask = s["mask"]
        z = int(np.argmax(mask.sum((0, 1)))) if mask.any() else mask.shape[2] // 2
        y = int(np.argmax(mask.sum((0, 2)))) if mask.any() else mask.shape[1] // 2
        centre = (mask.shape[0] // 2, y, z)
        fmax = max(float(np.percentile(np.abs(s["field"][mask]), 99)) if mask.any() else 0, 1e-3)
        label = f"#{indices[r]}" if indices is not None else f"#{r}"
        geo = f"{vsz[0]:.2f}x{vsz[1]:.2f}x{vsz[2]:.2f} mm, tilt {tilt:.0f}\u00b0"
        # patches have no affine: their voxel axes are taken as RAS, drawn as every picture
        field, chi = (ras_slices(s[k], centre, voxel_size=vsz) for k in ("field", "chi"))
        # vmax above 1 draws brain in light grey, so an all-brain slice stays visible on white
        masks = ras_slices(mask.astype(np.float32), centre, voxel_size=vsz)
        panels = [
            (field, "axial", "RdBu_r", (-fmax, fmax), f"{label} field (ppm), z={z}", True),
            (chi, "axial", "gray", (-0.15, 0.25), f"chi (ppm) axial  {geo}", True),
            (chi, "coronal", "gray", (-0.15, 0.25), f"chi coronal y={y}", False),
            (masks, "axial", "gray", (0, 1.25), f"mask ({mask.mean():.0%} brain)", False),
        ]
        for ax, (sl, view, cmap, lim, title, bar) in zip(axes[r], panels):
            im = show_slice(ax, sl[view], view, extent=sl[f"extent_{view}"], cmap=cmap,
                            vmin=lim[0], vmax=lim[1], letter_size=7)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
            if bar:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    sup = f"metaqsm synthetic samples ({CONVENTION})"
    if seed is not None:
        sup += f" (seed {seed})"
    fig.suptitle(sup)
    fig.tight_layout()
    return fig
