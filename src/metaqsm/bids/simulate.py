"""A simulated BIDS dataset of multi-echo gradient-echo scans, for examples, tests and benchmarks.

Each subject is its own brain phantom (:func:`metaqsm.simulate.phantoms.brain_phantom` with the
subject's seed: another texture, and every susceptibility scaled by a factor between 0.85 and
1.15, as iron content differs between people), each session another
acquisition of it (:func:`metaqsm.simulate.acquisition.simulate_acquisition` with the session's
noise and phase offset). The files are named as BIDS names a multi-echo GRE::

    ROOT/dataset_description.json, README, participants.tsv, participants.json
    ROOT/sub-01/ses-1/anat/sub-01_ses-1_echo-1_part-mag_MEGRE.nii.gz   (+ .json: EchoTime, ...)
    ROOT/sub-01/ses-1/anat/sub-01_ses-1_echo-1_part-phase_MEGRE.nii.gz (+ .json, Units "rad")
    ...

or with ``part-real`` / ``part-imag`` instead of magnitude and phase. The truth may be written as
a derivative dataset in ``ROOT/derivatives/truth/``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._validate import as_int, as_voxel_size
from ._names import BIDS_VERSION, bids_prefix

__all__ = ["simulate_dataset", "DEFAULT_SHAPE", "DEFAULT_VOXEL_SIZE", "DEFAULT_ECHO_TIMES"]

DEFAULT_SHAPE = (64, 64, 48)
DEFAULT_VOXEL_SIZE = (3.0, 3.0, 3.0)
DEFAULT_ECHO_TIMES = (0.004, 0.012, 0.020, 0.028)
"""Seconds: a clinical 3 T QSM protocol's spacing (4 echoes, 8 ms apart)."""

_PARTS = {"mag-phase": ("mag", "phase"), "real-imag": ("real", "imag")}


def _write_nifti(path, data, affine):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def _write_json(path, obj):
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def simulate_dataset(root, *, subjects=3, sessions=2, shape=DEFAULT_SHAPE,
                     voxel_size=DEFAULT_VOXEL_SIZE, echo_times=DEFAULT_ECHO_TIMES,
                     field_strength=3.0, snr=100.0, parts="mag-phase", suffix="MEGRE",
                     truth=False, rng=0):
    """Write a simulated multi-echo GRE study as a BIDS dataset.

    Parameters
    ----------
    root : path
        The dataset folder; it must not exist or be empty (its parent must exist). The dataset is
        written in a temporary folder beside it and renamed into place at the end, so a failure
        leaves nothing.
    subjects : int
        Number of subjects, labelled ``01``, ``02``, ... Default 3.
    sessions : int
        Sessions per subject, labelled ``1``, ``2``, ...; 0 writes no ``ses-`` level. Default 2.
    shape : 3 ints
        Matrix size (voxels, at least 16 per axis). Default 64 x 64 x 48.
    voxel_size : 3 floats
        mm. Default 3 mm isotropic.
    echo_times : sequence of floats
        Seconds. Default 4, 12, 20, 28 ms.
    field_strength : float
        Tesla. Default 3.
    snr : float
        First-echo brain magnitude over the noise standard deviation. Default 100.
    parts : {"mag-phase", "real-imag"}
        Which BIDS ``part-`` pairs to write. Default magnitude and phase.
    suffix : {"MEGRE", "T2starw"}
        BIDS suffix of the scans. Default ``MEGRE``.
    truth : bool
        Also write the true susceptibility, local field and brain mask of every session as a
        derivative dataset in ``root/derivatives/truth/`` (``..._desc-truth_Chimap.nii.gz`` and
        so on). Default False.
    rng : int
        Seed; subject ``s`` and session ``k`` use seeds derived from it.

    Returns
    -------
    list of dict
        One per session: ``subject``, ``session`` (None without sessions) and ``anat`` (the
        folder of its scans).

    Raises
    ------
    ValueError
        A non-positive count, an unknown ``parts`` or ``suffix``, a bad shape or voxel size.
    FileExistsError
        ``root`` exists and is not empty.
    FileNotFoundError
        The parent of ``root`` does not exist.
    """
    from .._version import __version__
    from ..simulate.acquisition import simulate_acquisition
    from ..simulate.phantoms import brain_phantom

    n_sub = as_int(subjects, "subjects", minimum=1)
    n_ses = as_int(sessions, "sessions", minimum=0)
    if parts not in _PARTS:
        raise ValueError(f"parts must be one of {', '.join(_PARTS)}, got {parts!r}")
    if suffix not in ("MEGRE", "T2starw"):
        raise ValueError(f"suffix must be 'MEGRE' or 'T2starw', got {suffix!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 integers >= 16, got {shape}")
    vsz = as_voxel_size(voxel_size)
    tes = [float(t) for t in echo_times]
    if not tes or min(tes) <= 0 or any(b <= a for a, b in zip(tes, tes[1:])):
        raise ValueError(f"echo_times must be positive and increasing (s), got {tes}")
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"root {root} exists and is not an empty folder")
    parent = root.parent if str(root.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"root: the parent folder {parent} does not exist")

    seeds = np.random.SeedSequence(int(rng)).spawn(n_sub)
    affine = np.diag(list(vsz) + [1.0])
    affine[:3, 3] = -0.5 * (np.asarray(shape) - 1) * vsz  # isocentre in the middle
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=parent))
    written = []
    try:
        _write_json(tmp / "dataset_description.json", {
            "Name": "metaqsm simulated multi-echo GRE study",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["metaqsm"],
            "GeneratedBy": [{"Name": "metaqsm", "Version": __version__,
                             "Description": "metaqsm.bids.simulate_dataset"}],
        })
        (tmp / "README").write_text(
            f"Simulated multi-echo gradient-echo study: {n_sub} subjects, "
            f"{max(n_ses, 1)} session(s) each, {len(tes)} echoes at {field_strength:g} T, "
            f"{'x'.join(map(str, shape))} voxels of {'x'.join(f'{v:g}' for v in vsz)} mm.\n"
            "Written by metaqsm.bids.simulate_dataset from the metaqsm brain phantom.\n")
        rows = ["participant_id\tsex\tage"]
        rows += [f"sub-{s + 1:02d}\tn/a\tn/a" for s in range(n_sub)]
        (tmp / "participants.tsv").write_text("\n".join(rows) + "\n")
        _write_json(tmp / "participants.json", {
            "sex": {"Description": "not simulated"}, "age": {"Description": "not simulated",
                                                             "Units": "year"}})
        if truth:
            tdir = tmp / "derivatives" / "truth"
            tdir.mkdir(parents=True)
            _write_json(tdir / "dataset_description.json", {
                "Name": "Ground truth of the simulated study", "BIDSVersion": BIDS_VERSION,
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "metaqsm", "Version": __version__}]})
        names = _PARTS[parts]
        for s in range(n_sub):
            sub = f"{s + 1:02d}"
            sub_rng = np.random.default_rng(seeds[s])
            phantom = brain_phantom(shape, voxel_size=vsz, rng=sub_rng)
            chi = phantom.chi * np.float32(sub_rng.uniform(0.85, 1.15))
            session_labels = [str(k + 1) for k in range(n_ses)] or [None]
            for ses in session_labels:
                acq = simulate_acquisition(chi, phantom.mask, voxel_size=vsz,
                                           affine=affine, echo_times=tes,
                                           field_strength=field_strength, snr=snr,
                                           rng=sub_rng)
                rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
                anat = tmp / rel
                anat.mkdir(parents=True)
                prefix = bids_prefix(sub, ses)
                signal = acq.magnitude * np.exp(1j * acq.phase)
                pair = ((acq.magnitude, acq.phase) if parts == "mag-phase"
                        else (signal.real, signal.imag))
                for e, te in enumerate(tes):
                    for part, data in zip(names, pair):
                        stem = f"{prefix}_echo-{e + 1}_part-{part}_{suffix}"
                        _write_nifti(anat / f"{stem}.nii.gz", data[..., e], acq.affine)
                        side = {"EchoTime": te, "MagneticFieldStrength": float(field_strength),
                                "MRAcquisitionType": "3D", "FlipAngle": 15,
                                "RepetitionTime": round(tes[-1] + 0.008, 4),
                                "Manufacturer": "metaqsm simulation"}
                        if part == "phase":
                            side["Units"] = "rad"
                        elif part in ("real", "imag"):
                            side["Units"] = "arbitrary"
                        _write_json(anat / f"{stem}.json", side)
                if truth:
                    tanat = tmp / "derivatives" / "truth" / rel
                    tanat.mkdir(parents=True)
                    for name, data in (("desc-truth_Chimap", acq.chi),
                                       ("desc-truth_mask", acq.mask.astype(np.float32))):
                        _write_nifti(tanat / f"{prefix}_{name}.nii.gz", data, acq.affine)
                written.append({"subject": sub, "session": ses, "anat": root / rel})
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(tmp, root)
        os.chmod(root, 0o777 & ~_umask())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
