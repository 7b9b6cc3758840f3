"""The on-disk format of a synthetic training set: one HDF5 file and its manifest.

A data set folder holds ``synth.h5`` and ``manifest.json``. The HDF5 file has groups ``train``
and ``val`` (the paper's 9:1 split: the first ``round(n * split)`` generator indices train, the
rest validate), each holding ``field``, ``chi`` (float16 or float32) and ``mask`` (uint8) of
shape (N, X, Y, Z) in chunks of one sample, plus ``voxel_size`` (N, 3), ``b0_dir`` (N, 3) and
``index`` (N,), the generator index of each sample (``generate_sample(index, config=config,
seed=seed)`` recreates it). Its attributes are ``fingerprint`` (the JSON of the settings it was
made with), ``done`` (samples written) and ``metaqsm_version``. ``manifest.json`` records the
seed, the generator's configuration, the package version, the counts and the split.

Writing is resumable and all-or-nothing: :func:`begin` creates a hidden ``.synth.h5.partial``
in the folder (or finds how far an earlier run with the same settings got), :func:`append`
fills it in index order, recording its progress every few samples, and :func:`finish` renames
the complete file into place (through :func:`metaqsm.io.atomic_path`) and writes the manifest,
so a ``synth.h5`` that exists is complete. :class:`Reader` reads one split back.

This module needs h5py and numpy only (no torch); :class:`metaqsm.dl.data.H5Dataset` wraps
:class:`Reader` for training.

Examples
--------
>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> sample = {"field": np.zeros((4, 4, 2), np.float32), "chi": np.ones((4, 4, 2), np.float32),
...           "mask": np.ones((4, 4, 2), bool), "voxel_size": np.array([1.0, 1.0, 2.0]),
...           "b0_dir": np.array([0.0, 0.0, 1.0])}
>>> begin(folder, n=2, seed=1, config={"patch_shape": [4, 4, 2]}, split=0.5)
0
>>> append(folder, [(0, sample), (1, sample)])
2
>>> finish(folder).name
'synth.h5'
>>> r = Reader(folder, "val")
>>> len(r), r.index(0), float(r.sample(0)["chi"].mean())
(1, 1, 1.0)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from .._version import __version__
from . import atomic_path, check_output_paths, write_json

__all__ = ["DATASET_FILE", "MANIFEST_FILE", "SPLITS", "DTYPES", "COMPRESSIONS", "paths",
           "split_counts", "begin", "append", "finish", "resolve", "read_manifest", "Reader"]

DATASET_FILE = "synth.h5"
MANIFEST_FILE = "manifest.json"
PARTIAL_FILE = f".{DATASET_FILE}.partial"
SPLITS = ("train", "val")
DTYPES = ("float16", "float32")
COMPRESSIONS = ("lzf", "gzip", "none")
#: What the manifest names as the generator of the samples.
GENERATOR = "metaqsm.simulate.synth.generate_sample(index, config=config, seed=seed)"
#: The arrays of one sample, as ``generate_sample`` returns them and :meth:`Reader.sample` gives.
SAMPLE_KEYS = ("field", "chi", "mask", "voxel_size", "b0_dir")


class TrainsetPaths(NamedTuple):
    """The files of a data set folder."""

    h5: Path
    manifest: Path
    partial: Path


def paths(folder):
    """The data set file, its manifest and the partial file of ``folder`` (a :class:`NamedTuple`
    ``(h5, manifest, partial)``)."""
    folder = Path(folder)
    return TrainsetPaths(folder / DATASET_FILE, folder / MANIFEST_FILE, folder / PARTIAL_FILE)


def split_counts(n, split=0.9):
    """Samples in each group: the first ``round(n * split)`` train, the rest validate.

    Parameters
    ----------
    n : int
        Number of samples (>= 1).
    split : float
        Fraction in the training group, in (0, 1].

    Returns
    -------
    dict
        ``{"train": n_train, "val": n - n_train}``.

    Raises
    ------
    TypeError
        ``n`` is not an integer.
    ValueError
        ``n < 1`` or ``split`` outside (0, 1].
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 < split <= 1.0:
        raise ValueError(f"split must be in (0, 1], got {split}")
    n_train = int(round(n * split))
    return {"train": n_train, "val": int(n) - n_train}


def _settings(n, seed, config, split, dtype, compression):
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got "
                         f"{compression!r}")
    if not isinstance(config, dict) or "patch_shape" not in config:
        raise ValueError(f"config must be a dict of SynthConfig fields with patch_shape "
                         f"(SynthConfig.to_dict()), got {config!r}")
    shape = config["patch_shape"]
    if (len(shape) != 3 or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool)
                                   and k >= 1 for k in shape)):
        raise ValueError(f"config['patch_shape'] must be 3 positive integers, got {shape!r}")
    return {"seed": seed, "count": n, "split": split, "dtype": dtype,
            "compression": compression, "config": config}


def _create(path, fingerprint, counts, shape, dtype, compression):
    comp = None if compression == "none" else compression
    with h5py.File(path, "w") as f:
        f.attrs["fingerprint"] = fingerprint
        f.attrs["done"] = 0
        f.attrs["metaqsm_version"] = __version__
        for name, n in counts.items():
            g = f.create_group(name)
            for key, dt in (("field", dtype), ("chi", dtype), ("mask", "uint8")):
                # maxshape: a chunk may then exceed an empty group (split = 1)
                g.create_dataset(key, shape=(n,) + shape, dtype=dt, chunks=(1,) + shape,
                                 maxshape=(None,) + shape, compression=comp)
            g.create_dataset("voxel_size", shape=(n, 3), dtype="float32", maxshape=(None, 3))
            g.create_dataset("b0_dir", shape=(n, 3), dtype="float32", maxshape=(None, 3))
            g.create_dataset("index", shape=(n,), dtype="int64", maxshape=(None,))


def begin(folder, *, n, seed, config, split=0.9, dtype="float16", compression="lzf",
          force=False):
    """Start (or find how far an earlier run got with) a data set in an existing ``folder``.

    Parameters
    ----------
    folder : str or Path
        Output folder (it must exist).
    n : int
        Number of samples (generator indices ``0 .. n - 1``).
    seed : int
        Data set seed, recorded in the file and the manifest.
    config : dict
        The generator's configuration (``SynthConfig.to_dict()``); its ``patch_shape`` sets the
        arrays' shape.
    split : float
        Fraction of the samples in the training group, in (0, 1].
    dtype : {"float16", "float32"}
        Storage type of ``field`` and ``chi``.
    compression : {"lzf", "gzip", "none"}
        HDF5 chunk compression.
    force : bool
        Overwrite an existing data set, and discard a partial file that these settings cannot
        resume.

    Returns
    -------
    int
        Samples already written by an earlier run with the same settings (0 for a new file):
        :func:`append` continues at this index.

    Raises
    ------
    FileExistsError
        The data set or its manifest exists, or an unfinished data set of other settings (or a
        damaged one) is in the way, and ``force`` is False.
    FileNotFoundError
        ``folder`` does not exist.
    TypeError, ValueError
        A bad argument (the message names it).
    """
    counts = split_counts(n, split)
    settings = _settings(n, seed, config, split, dtype, compression)
    p = paths(folder)
    check_output_paths([p.h5, p.manifest], force=force)
    fingerprint = json.dumps(settings, sort_keys=True)
    done = 0
    if p.partial.exists():
        try:
            with h5py.File(p.partial, "r") as f:
                same = f.attrs.get("fingerprint") == fingerprint
                done = int(f.attrs.get("done", 0)) if same else 0
        except OSError:
            same = False
        if not same:
            if not force:
                raise FileExistsError(f"{p.partial} holds an unfinished data set that cannot "
                                      "resume with these settings (other settings, or damaged); "
                                      "use force=True to discard it")
            p.partial.unlink()
    if not p.partial.exists():
        _create(p.partial, fingerprint, counts, tuple(int(k) for k in config["patch_shape"]),
                dtype, compression)
    return done


def append(folder, samples, *, flush_every=16):
    """Write samples into the partial file of ``folder`` started by :func:`begin`.

    Parameters
    ----------
    folder : str or Path
        The folder given to :func:`begin`.
    samples : iterable of (int, dict)
        ``(index, sample)`` pairs in index order from the value :func:`begin` returned; a
        sample holds ``field``, ``chi``, ``mask`` (X, Y, Z) and ``voxel_size``, ``b0_dir`` (3,)
        as ``generate_sample`` returns them.
    flush_every : int
        Samples between records of the progress in the file (an interrupted run resumes from
        the last record).

    Returns
    -------
    int
        Samples written in all (this call and earlier ones).

    Raises
    ------
    FileNotFoundError
        :func:`begin` has not started a data set in ``folder``.
    ValueError
        The indices are not in order, or beyond the data set's size.
    """
    if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
        raise ValueError(f"flush_every must be an integer >= 1, got {flush_every!r}")
    partial = paths(folder).partial
    if not partial.exists():
        raise FileNotFoundError(f"no unfinished data set in {folder}: call begin() first")
    with h5py.File(partial, "r+") as f:
        done = int(f.attrs["done"])
        n_train = f["train"]["index"].shape[0]
        total = n_train + f["val"]["index"].shape[0]
        for index, s in samples:
            if index != done or index >= total:
                raise ValueError(f"samples must be the indices {done} .. {total - 1} in order, "
                                 f"got index {index}")
            group, row = ("train", index) if index < n_train else ("val", index - n_train)
            g = f[group]
            g["field"][row] = s["field"].astype(g["field"].dtype)
            g["chi"][row] = s["chi"].astype(g["chi"].dtype)
            g["mask"][row] = s["mask"].astype(np.uint8)
            g["voxel_size"][row] = s["voxel_size"]
            g["b0_dir"][row] = s["b0_dir"]
            g["index"][row] = index
            done = index + 1
            if done % flush_every == 0 or done == total:
                f.attrs["done"] = done
                f.flush()
    return done


def finish(folder, *, seconds=None, force=False):
    """Move the complete partial file of ``folder`` into place and write the manifest.

    Parameters
    ----------
    folder : str or Path
        The folder given to :func:`begin`.
    seconds : float, optional
        The generation time, recorded in the manifest.
    force : bool
        Overwrite an existing data set.

    Returns
    -------
    Path
        The data set file (``folder/synth.h5``).

    Raises
    ------
    FileNotFoundError
        :func:`begin` has not started a data set in ``folder``.
    ValueError
        The partial file is not complete.
    FileExistsError
        The data set exists and ``force`` is False.
    """
    p = paths(folder)
    if not p.partial.exists():
        raise FileNotFoundError(f"no unfinished data set in {folder}: call begin() first")
    with h5py.File(p.partial, "r") as f:
        settings = json.loads(f.attrs["fingerprint"])
        done = int(f.attrs["done"])
        counts = {name: int(f[name]["index"].shape[0]) for name in SPLITS}
    if done != settings["count"]:
        raise ValueError(f"{p.partial} is not complete: {done} of {settings['count']} samples "
                         "written; append() the rest first")
    # The partial file keeps a fixed name so that an interrupted run can resume it; the
    # atomic temporary path only carries the finished file into place.
    with atomic_path(p.h5, force=force) as tmp:
        os.replace(p.partial, tmp)
    n_train = counts["train"]
    manifest = {
        "kind": "metaqsm synthetic training data",
        "file": DATASET_FILE,
        "metaqsm_version": __version__,
        "seed": settings["seed"],
        "count": settings["count"],
        "split": settings["split"],
        "counts": counts,
        "indices": {"train": [0, n_train], "val": [n_train, settings["count"]]},
        "dtype": settings["dtype"],
        "compression": settings["compression"],
        "patch_shape": list(settings["config"]["patch_shape"]),
        "config": settings["config"],
        "generator": GENERATOR,
    }
    if seconds is not None:
        manifest["seconds"] = round(float(seconds), 1)
    write_json(p.manifest, manifest, force=True)  # the data set above is the commit point
    return p.h5


# ------------------------------------------------------------------------------------ reading
def resolve(path):
    """The HDF5 file of a data set given as its folder or the file itself.

    Raises
    ------
    FileNotFoundError
        Neither exists.
    """
    p = Path(path)
    if p.is_dir():
        p = p / DATASET_FILE
    if not p.exists():
        raise FileNotFoundError(f"no synthetic data set at {path} (expected a folder written by "
                                f"'metaqsm synth' or its {DATASET_FILE})")
    return p


def read_manifest(path):
    """The manifest (dict) of a data set folder or of its HDF5 file.

    Raises
    ------
    FileNotFoundError
        The data set or its manifest is missing.
    """
    p = resolve(path)
    m = p.parent / MANIFEST_FILE
    if not m.exists():
        raise FileNotFoundError(f"{m} is missing: the data set at {p.parent} is incomplete")
    return json.loads(m.read_text())


class Reader:
    """Random access to one split of a data set (numpy arrays).

    Parameters
    ----------
    path : str or Path
        A data set folder or its ``synth.h5``.
    split : {"train", "val"}
        Which group.

    Attributes
    ----------
    path : Path
        The HDF5 file.
    split : str
    attrs : dict
        The file's attributes (``fingerprint``, ``done``, ``metaqsm_version``).

    Notes
    -----
    The file is opened on first access in each process (an open HDF5 handle cannot be shared
    between processes, e.g. with the workers a DataLoader forks), and a pickled reader carries
    no handle.
    """

    def __init__(self, path, split="train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.path = resolve(path)
        self.split = split
        with h5py.File(self.path, "r") as f:
            if split not in f:
                raise ValueError(f"{self.path} has no {split!r} group")
            self._len = int(f[split]["field"].shape[0])
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v)
                          for k, v in f.attrs.items()}
        self._file = None
        self._pid = None

    def __len__(self):
        return self._len

    def _group(self):
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.split]

    def _row(self, i):
        if not -self._len <= i < self._len:
            raise IndexError(f"index {i} out of range for {self._len} samples")
        return i % self._len

    def sample(self, i):
        """Item ``i``: a dict of ``field``, ``chi`` (stored type), ``mask`` (uint8) (X, Y, Z) and
        ``voxel_size``, ``b0_dir`` (3,) float32."""
        row = self._row(i)
        g = self._group()
        return {key: g[key][row] for key in SAMPLE_KEYS}

    def index(self, i):
        """The generator index (``generate_sample(index, seed=...)``) of item ``i``."""
        return int(self._group()["index"][self._row(i)])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state
