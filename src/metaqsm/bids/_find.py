"""Finding multi-echo gradient-echo acquisitions in a BIDS dataset, with pybids.

BIDS names a multi-echo GRE ``sub-X[_ses-Y][_acq-..][_rec-..][_run-..]_echo-<n>_part-<p>_MEGRE``
(one 3D file per echo and part, each with a JSON sidecar); ``T2starw`` scans with ``echo-`` and
``part-`` entities, and the SWI proposal's (BEP 004) ``swi`` / ``GRE`` suffixes are read the same
way. An acquisition is every file sharing all entities but ``echo`` and ``part``; it is usable
for QSM when it carries phase: ``part-mag`` with ``part-phase`` (a file without ``part-`` is the
magnitude), or ``part-real`` with ``part-imag``. Magnitude-only scans are not QSM acquisitions
and are left out silently; an acquisition with phase that cannot be used (an echo missing in one
part, no ``EchoTime``) is returned with its ``problem``, so the caller reports it as a failure
and processes the others.

Metadata come from pybids, so BIDS inheritance holds (an ``EchoTime`` in a top-level
``acq-qsm_MEGRE.json`` applies to every subject).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ._names import KEPT_ENTITIES, bids_prefix

__all__ = ["BidsAcquisition", "find_acquisitions", "SUFFIXES", "check_bids_dir"]

SUFFIXES = ("MEGRE", "T2starw", "swi", "GRE")
"""BIDS suffixes searched for multi-echo gradient-echo scans."""

_EXTENSIONS = (".nii", ".nii.gz")


@dataclass
class BidsAcquisition:
    """One multi-echo GRE acquisition of one subject and session.

    Attributes
    ----------
    subject, session : str, str or None
        BIDS labels (without ``sub-`` / ``ses-``).
    entities : dict
        The other entities that name it (pybids names: ``acquisition``, ``run``, ...).
    suffix : str
        ``MEGRE``, ``T2starw``, ...
    parts : tuple of 2 str
        ``("mag", "phase")`` or ``("real", "imag")``.
    files : tuple of 2 lists of str
        Paths of the two parts, in echo order (one file per echo, or one 4D file each).
    echo_times : list of float or None
        Seconds, from the sidecars.
    field_strength : float or None
        Tesla, from the sidecars.
    problem : str or None
        Why it cannot be processed (then reported as a failure).
    """

    subject: str
    session: str | None
    entities: dict = field(default_factory=dict)
    suffix: str = "MEGRE"
    parts: tuple = ("mag", "phase")
    files: tuple = ((), ())
    echo_times: list | None = None
    field_strength: float | None = None
    problem: str | None = None

    @property
    def prefix(self):
        """``sub-X[_ses-Y][_acq-..]...``: the start of every output name."""
        return bids_prefix(self.subject, self.session, self.entities)

    @property
    def label(self):
        """A short readable name, ``sub-01 ses-1 acq-qsm``."""
        return self.prefix.replace("_", " ")


def check_bids_dir(bids_dir, name="bids_dir"):
    """Return ``bids_dir`` as a resolved Path if it is a BIDS dataset folder, else raise
    ``FileNotFoundError`` / ``ValueError`` naming ``name``."""
    root = Path(bids_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: no such folder: {root}")
    if not (root / "dataset_description.json").is_file():
        raise ValueError(f"{name} {root} is not a BIDS dataset: it has no "
                         "dataset_description.json")
    return root.resolve()


def _labels(values, name):
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    out = []
    for v in values:
        v = str(v)
        prefix = "sub-" if name == "participant_label" else "ses-"
        out.append(v[len(prefix):] if v.startswith(prefix) else v)
    if not out:
        raise ValueError(f"{name} must name at least one label")
    return out


def _echo_number(entities):
    echo = entities.get("echo")
    try:
        return None if echo is None else int(echo)
    except (TypeError, ValueError):
        return None


def find_acquisitions(bids_dir, *, participant_label=None, session_label=None):
    """The multi-echo GRE acquisitions of a BIDS dataset.

    Parameters
    ----------
    bids_dir : path
        The raw dataset (with ``dataset_description.json``); ``derivatives/`` is not searched.
    participant_label : str or list of str, optional
        Subjects to keep (with or without ``sub-``). Default all.
    session_label : str or list of str, optional
        Sessions to keep (with or without ``ses-``). Default all.

    Returns
    -------
    list of BidsAcquisition
        Sorted by subject, session and name; those with a ``problem`` included.

    Raises
    ------
    FileNotFoundError
        ``bids_dir`` does not exist.
    ValueError
        Not a BIDS dataset, or a participant or session label it does not have.
    """
    import bids

    root = check_bids_dir(bids_dir)
    subjects = _labels(participant_label, "participant_label")
    sessions = _labels(session_label, "session_label")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = bids.BIDSLayout(str(root), validate=False, derivatives=False)
    have = sorted(layout.get_subjects())
    if subjects is not None:
        missing = [s for s in subjects if s not in have]
        if missing:
            raise ValueError(f"participant_label {', '.join(missing)} not found in {root} "
                             f"(it has: {', '.join(have) or 'no subjects'})")
    if sessions is not None:
        have_ses = sorted(layout.get_sessions())
        missing = [s for s in sessions if s not in have_ses]
        if missing:
            raise ValueError(f"session_label {', '.join(missing)} not found in {root} "
                             f"(it has: {', '.join(have_ses) or 'no sessions'})")
    query = {"suffix": list(SUFFIXES), "extension": list(_EXTENSIONS)}
    if subjects is not None:
        query["subject"] = subjects
    if sessions is not None:
        query["session"] = sessions
    groups = {}
    for f in layout.get(**query):
        ent = f.get_entities()
        key = (ent["subject"], ent.get("session"), ent["suffix"],
               tuple((name, ent.get(name)) for name, _ in KEPT_ENTITIES))
        part = ent.get("part", "mag")
        groups.setdefault(key, {}).setdefault(part, []).append((_echo_number(ent), f.path))

    found, names = [], {}
    for (sub, ses, suffix, kept), by_part in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if "phase" in by_part:
            pair = ("mag", "phase")
        elif "real" in by_part or "imag" in by_part:
            pair = ("real", "imag")
        else:
            continue  # magnitude only: not a QSM acquisition
        acq = BidsAcquisition(sub, ses, {k: v for k, v in kept if v is not None}, suffix, pair)
        acq.problem = _fill(acq, by_part, layout)
        if acq.problem is None and acq.prefix in names:
            acq.problem = (f"its outputs would have the names of {names[acq.prefix]}'s "
                           f"({acq.prefix}_*); rename one (acq- entity)")
        names.setdefault(acq.prefix, f"{acq.prefix}_{suffix}")
        found.append(acq)
    return found


def _fill(acq, by_part, layout):
    """Set the files, echo times and field strength of ``acq``; return a problem or None."""
    first, second = acq.parts
    where = f"{acq.prefix}_{acq.suffix}"
    if first not in by_part or second not in by_part:
        have = next(p for p in acq.parts if p in by_part)
        lacking = second if have == first else first
        return f"{where} has part-{have} but no part-{lacking}"
    files = []
    for part in acq.parts:
        items = sorted(by_part[part], key=lambda e: (e[0] is None, e[0] or 0))
        echoes = [e for e, _ in items]
        if len(items) > 1 and None in echoes:
            return f"{where}: part-{part} has several files but not all have an echo- entity"
        if len(set(echoes)) != len(echoes):
            return f"{where}: part-{part} has echo {echoes} twice"
        files.append((echoes, [p for _, p in items]))
    if files[0][0] != files[1][0]:
        return (f"{where}: the echoes of part-{first} {files[0][0]} differ from those of "
                f"part-{second} {files[1][0]}")
    acq.files = (files[0][1], files[1][1])
    tes, b0s = [], []
    for path_first, path_second in zip(*acq.files):
        meta_first, meta_second = layout.get_metadata(path_first), layout.get_metadata(path_second)
        te = meta_second.get("EchoTime", meta_first.get("EchoTime"))
        if te is None:
            return f"{where}: no EchoTime in the sidecar of {Path(path_second).name}"
        tes.extend(te if isinstance(te, list) else [te])
        b0 = meta_second.get("MagneticFieldStrength", meta_first.get("MagneticFieldStrength"))
        if b0 is not None:
            b0s.append(float(b0))
    try:
        tes = [float(t) for t in tes]
    except (TypeError, ValueError):
        return f"{where}: EchoTime must be numbers (seconds), got {tes}"
    if any(t > 1.0 for t in tes):
        return f"{where}: EchoTime must be in seconds (BIDS), got {tes}"
    if not b0s:
        return f"{where}: no MagneticFieldStrength in its sidecars"
    if len(set(b0s)) > 1:
        return f"{where}: the sidecars disagree on MagneticFieldStrength ({sorted(set(b0s))})"
    acq.echo_times, acq.field_strength = tes, b0s[0]
    return None
