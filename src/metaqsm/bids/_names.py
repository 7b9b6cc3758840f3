"""Names of the BIDS App's files: where each subject's derivatives go and what the extra maps are
called.

The pipeline's own files keep the names of :mod:`metaqsm.io.derivatives` (``Chimap``, ``mask``,
``desc-eroded_mask``, ``fieldmap``, ``desc-noise_fieldmap``, ``localfield``); this module only
puts them in ``OUTPUT_DIR/sub-X[/ses-Y]/anat/`` and adds the entities of the input that tell
acquisitions apart (``acq-``, ``ce-``, ``rec-``, ``run-``), e.g.
``sub-01_ses-1_acq-qsm_run-2_Chimap.nii.gz``.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "BIDS_VERSION",
    "KEPT_ENTITIES",
    "MAP_OUTPUTS",
    "SUMMARY_SUFFIX",
    "bids_prefix",
    "anat_dir",
    "summary_path",
    "error_path",
    "GROUP_TABLE",
    "GROUP_REPORT",
    "REPORT_SUFFIX",
]

BIDS_VERSION = "1.10.0"
"""The BIDS version the datasets written here follow."""

KEPT_ENTITIES = (("task", "task"), ("acquisition", "acq"), ("ceagent", "ce"),
                 ("reconstruction", "rec"), ("run", "run"))
"""pybids entity name -> BIDS key, in BIDS order, of the input entities the outputs keep."""

MAP_OUTPUTS = {
    "r2star": ("R2starmap.nii.gz", "R2* from the multi-echo magnitude", "1/s"),
    "t2star": ("T2starmap.nii.gz", "T2* = 1/R2* from the multi-echo magnitude", "s"),
    "swi": ("swi.nii.gz", "Susceptibility-weighted image (magnitude times phase mask)", None),
    "minip": ("minIP.nii.gz", "Minimum-intensity projection of the SWI over thin slabs", None),
    "chi_ref": ("desc-ref_Chimap.nii.gz", "Magnetic susceptibility referenced to a region", "ppm"),
}
"""Key -> (suffix after the entities, description, unit) of the maps beside chi."""

SUMMARY_SUFFIX = "desc-summary_qsm.tsv"
"""Per acquisition: one row of statistics, timings and warnings; written last, so its presence
means the acquisition is finished."""

REPORT_SUFFIX = "desc-qc_report.html"
"""Per acquisition: the quality-control report (when :mod:`metaqsm.qc` is installed)."""

GROUP_TABLE = "group_qsm.tsv"
"""The group level's table, in OUTPUT_DIR (one row per acquisition), with a JSON data
dictionary beside it."""

GROUP_REPORT = "group_report.html"
"""The group level's index of the quality-control reports, in OUTPUT_DIR."""

_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def _label(value, name):
    value = str(value)
    if not _LABEL.match(value):
        raise ValueError(f"{name} must be alphanumeric (a BIDS label), got {value!r}")
    return value


def bids_prefix(subject, session=None, entities=None):
    """``sub-<subject>[_ses-<session>][_task-..][_acq-..][_ce-..][_rec-..][_run-..]``.

    ``entities`` maps pybids names (``acquisition``, ``run``, ...) to labels; other names are
    ignored.
    """
    parts = [f"sub-{_label(subject, 'subject')}"]
    if session is not None:
        parts.append(f"ses-{_label(session, 'session')}")
    for name, key in KEPT_ENTITIES:
        value = (entities or {}).get(name)
        if value is not None:
            parts.append(f"{key}-{_label(value, name)}")
    return "_".join(parts)


def anat_dir(output_dir, subject, session=None):
    """``OUTPUT_DIR/sub-<subject>[/ses-<session>]/anat``."""
    out = Path(output_dir) / f"sub-{_label(subject, 'subject')}"
    if session is not None:
        out = out / f"ses-{_label(session, 'session')}"
    return out / "anat"


def summary_path(output_dir, subject, session=None, entities=None):
    """The per-acquisition summary table (see :data:`SUMMARY_SUFFIX`)."""
    return anat_dir(output_dir, subject, session) / \
        f"{bids_prefix(subject, session, entities)}_{SUMMARY_SUFFIX}"


def error_path(output_dir, subject, session=None, entities=None):
    """Where a failed acquisition's error and traceback are written
    (``OUTPUT_DIR/logs/<prefix>_error.txt``; removed when it later succeeds)."""
    return Path(output_dir) / "logs" / f"{bids_prefix(subject, session, entities)}_error.txt"
