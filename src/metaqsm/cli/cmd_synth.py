"""``metaqsm synth`` (a synthetic training data set on disk) and ``metaqsm synth-sheet`` (a PNG
sheet of random samples to look at).

The data set is one HDF5 file with groups ``train`` and ``val`` (the paper's 9:1 split: the first
``round(n * split)`` indices train, the rest validate), each holding ``field``, ``chi`` (float16
or float32) and ``mask`` (uint8) of shape (N, X, Y, Z) in chunks of one sample, plus
``voxel_size`` (N, 3), ``b0_dir`` (N, 3) and ``index`` (N,), the generator index of each sample
(``generate_sample(index, seed=seed)`` recreates it). ``manifest.json`` beside it records the
seed, the generator's configuration, the package version, the counts and the split.

The file is written as a hidden ``.synth.h5.partial`` and renamed when complete, so a data set
that exists is complete. An interrupted run keeps the partial file; the same command resumes it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .._version import __version__
from . import _common

PARTIAL_PREFIX = "."
PARTIAL_SUFFIX = ".partial"
FLUSH_EVERY = 16  # samples between progress checkpoints of the partial file


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


def _create(path, fingerprint, config, counts, dtype, compression):
    import h5py

    comp = None if compression == "none" else compression
    with h5py.File(path, "w") as f:
        f.attrs["fingerprint"] = fingerprint
        f.attrs["done"] = 0
        f.attrs["metaqsm_version"] = __version__
        shape = tuple(config.patch_shape)
        for name, n in counts.items():
            g = f.create_group(name)
            for key, dt in (("field", dtype), ("chi", dtype), ("mask", "uint8")):
                # maxshape: a chunk may then exceed an empty group (--split 1)
                g.create_dataset(key, shape=(n,) + shape, dtype=dt, chunks=(1,) + shape,
                                 maxshape=(None,) + shape, compression=comp)
            g.create_dataset("voxel_size", shape=(n, 3), dtype="float32", maxshape=(None, 3))
            g.create_dataset("b0_dir", shape=(n, 3), dtype="float32", maxshape=(None, 3))
            g.create_dataset("index", shape=(n,), dtype="int64", maxshape=(None,))


def run_synth(args):
    import h5py

    from ..io import write_json
    from ..simulate.synth import DATASET_FILE, MANIFEST_FILE
    from ..simulate.anatomy import mni_maps

    if args.count < 1:
        raise ValueError(f"-n must be at least 1, got {args.count}")
    if not 0.0 < args.split <= 1.0:
        raise ValueError(f"--split must be in (0, 1], got {args.split}")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    _check_seed(args.seed)
    config = _config(args)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o {out} exists and is not a folder")
    final, manifest = out / DATASET_FILE, out / MANIFEST_FILE
    for p in (final, manifest):
        if p.exists() and not args.force:
            raise FileExistsError(f"output {p} exists; use --force to overwrite it")
    if not out.parent.exists():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)

    n_train = int(round(args.count * args.split))
    counts = {"train": n_train, "val": args.count - n_train}
    settings = {"seed": args.seed, "count": args.count, "split": args.split,
                "dtype": args.dtype, "compression": args.compression,
                "config": config.to_dict()}
    fingerprint = json.dumps(settings, sort_keys=True)
    partial = out / f"{PARTIAL_PREFIX}{DATASET_FILE}{PARTIAL_SUFFIX}"
    done = 0
    if partial.exists():
        try:
            with h5py.File(partial, "r") as f:
                same = f.attrs.get("fingerprint") == fingerprint
                done = int(f.attrs.get("done", 0)) if same else 0
        except OSError:
            same = False
        if not same:
            if not args.force:
                raise FileExistsError(f"{partial} holds an unfinished data set that this command "
                                      "cannot resume (other settings, or damaged); use --force "
                                      "to discard it")
            partial.unlink()
    if not partial.exists():
        _create(partial, fingerprint, config, counts, args.dtype, args.compression)
    elif done:
        print(f"metaqsm synth: resuming at sample {done} of {args.count}", file=sys.stderr)

    mni_maps()  # load once here: forked workers inherit it
    jobs = ((i, config, args.seed) for i in range(done, args.count))
    t0 = time.time()
    try:
        _generate(partial, jobs, counts, done, args)
    except KeyboardInterrupt:
        print(f"metaqsm synth: interrupted; progress kept in {partial}, run the same command "
              "to resume", file=sys.stderr)
        return 130
    os.replace(partial, final)
    write_json(manifest, {
        "kind": "metaqsm synthetic training data",
        "file": DATASET_FILE,
        "metaqsm_version": __version__,
        "seed": args.seed,
        "count": args.count,
        "split": args.split,
        "counts": counts,
        "indices": {"train": [0, n_train], "val": [n_train, args.count]},
        "dtype": args.dtype,
        "compression": args.compression,
        "patch_shape": list(config.patch_shape),
        "config": config.to_dict(),
        "generator": "metaqsm.simulate.synth.generate_sample(index, config=config, seed=seed)",
        "seconds": round(time.time() - t0, 1),
    }, force=True)
    print(f"wrote {final} ({counts['train']} train, {counts['val']} val) and {manifest}")
    return 0


def _generate(partial, jobs, counts, done, args):
    import multiprocessing

    import h5py
    from tqdm import tqdm

    n_train = counts["train"]
    dtype = np.float16 if args.dtype == "float16" else np.float32
    pool = None
    if args.workers > 1:
        pool = multiprocessing.get_context("fork").Pool(args.workers)
        results = pool.imap(_work, jobs)
    else:
        results = map(_work, jobs)
    try:
        with h5py.File(partial, "r+") as f, tqdm(total=args.count, initial=done, unit="sample",
                                                   desc="synth", file=sys.stderr) as bar:
            for index, s in results:
                group, row = ("train", index) if index < n_train else ("val", index - n_train)
                g = f[group]
                g["field"][row] = s["field"].astype(dtype)
                g["chi"][row] = s["chi"].astype(dtype)
                g["mask"][row] = s["mask"].astype(np.uint8)
                g["voxel_size"][row] = s["voxel_size"]
                g["b0_dir"][row] = s["b0_dir"]
                g["index"][row] = index
                done = index + 1
                bar.update(1)
                if done % FLUSH_EVERY == 0 or done == args.count:
                    f.attrs["done"] = done
                    f.flush()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


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

    n = len(samples)
    fig, axes = plt.subplots(n, 4, figsize=(13, 3.2 * n), squeeze=False)
    for r, s in enumerate(samples):
        vsz = np.asarray(s["voxel_size"], float)
        b = np.asarray(s["b0_dir"], float)
        tilt = float(np.degrees(np.arccos(np.clip(abs(b[2]), 0, 1))))
        mask = s["mask"]
        z = int(np.argmax(mask.sum((0, 1)))) if mask.any() else mask.shape[2] // 2
        y = int(np.argmax(mask.sum((0, 2)))) if mask.any() else mask.shape[1] // 2
        fmax = max(float(np.percentile(np.abs(s["field"][mask]), 99)) if mask.any() else 0, 1e-3)
        label = f"#{indices[r]}" if indices is not None else f"#{r}"
        geo = f"{vsz[0]:.2f}x{vsz[1]:.2f}x{vsz[2]:.2f} mm, tilt {tilt:.0f}\u00b0"
        panels = [
            (s["field"][:, :, z], "RdBu_r", (-fmax, fmax), f"{label} field (ppm), z={z}",
             vsz[1] / vsz[0]),
            (s["chi"][:, :, z], "gray", (-0.15, 0.25), f"chi (ppm) axial  {geo}",
             vsz[1] / vsz[0]),
            (s["chi"][:, y, :], "gray", (-0.15, 0.25), f"chi coronal y={y}", vsz[2] / vsz[0]),
            # vmax above 1 draws brain in light grey, so an all-brain slice stays visible on white
            (mask[:, :, z].astype(float), "gray", (0, 1.25), f"mask ({mask.mean():.0%} brain)",
             vsz[1] / vsz[0]),
        ]
        for ax, (img, cmap, lim, title, aspect) in zip(axes[r], panels):
            im = ax.imshow(np.rot90(img), cmap=cmap, vmin=lim[0], vmax=lim[1],
                           aspect=aspect, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
            if cmap != "gray" or title.startswith("chi (ppm)"):
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    sup = "metaqsm synthetic samples"
    if seed is not None:
        sup += f" (seed {seed})"
    fig.suptitle(sup)
    fig.tight_layout()
    return fig
