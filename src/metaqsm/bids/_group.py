"""The group level: the per-acquisition summaries of OUTPUT_DIR gathered into one table (and an
index of the quality-control reports when :mod:`metaqsm.qc` is installed)."""

from __future__ import annotations

import json
from pathlib import Path

from ._names import GROUP_REPORT, GROUP_TABLE, REPORT_SUFFIX, SUMMARY_SUFFIX

__all__ = ["run_group"]


def _labels(values, prefix):
    if values is None:
        return None
    values = [values] if isinstance(values, str) else list(values)
    return {v if v.startswith(prefix) else prefix + v for v in map(str, values)}


def run_group(output_dir, *, participant_label=None, session_label=None, force=True,
              report=True):
    """Gather the summaries of the participant level into ``OUTPUT_DIR/group_qsm.tsv``.

    Every finished acquisition gives its row (statistics of chi and R2*, mask volumes, timings,
    warnings); every failed one (a ``logs/<prefix>_error.txt``) a row with ``status`` failed and
    its error.

    Parameters
    ----------
    output_dir : path
        The participant level's output folder.
    participant_label, session_label : str or list of str, optional
        Keep only these subjects / sessions.
    force : bool
        Replace an existing table (default True: the table is recomputed from the summaries).
    report : bool
        Also write ``group_report.html``, an index of the subjects' reports (needs
        :mod:`metaqsm.qc`).

    Returns
    -------
    dict
        ``table`` (Path), ``report`` (Path or None), ``rows`` (list of dicts), ``failed``
        (number of failed acquisitions).

    Raises
    ------
    FileNotFoundError
        ``output_dir`` does not exist.
    ValueError
        It holds no participant results (for these labels).
    """
    import importlib.util

    from ..io import write_all
    from ._table import COLUMNS, data_dictionary, format_tsv, parse_tsv

    out = Path(output_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"output_dir: no such folder: {out}")
    subjects = _labels(participant_label, "sub-")
    sessions = _labels(session_label, "ses-")

    rows = []
    for path in sorted(out.glob(f"sub-*/**/anat/*_{SUMMARY_SUFFIX}")):
        for row in parse_tsv(path.read_text()):
            prefix = path.name[: -len(SUMMARY_SUFFIX) - 1]
            report_file = path.with_name(f"{prefix}_{REPORT_SUFFIX}")
            row["_report"] = report_file.relative_to(out).as_posix() \
                if report_file.exists() else None
            rows.append(row)
    done = {(r["participant_id"], r["session_id"], r["acquisition"]) for r in rows}
    for log in sorted((out / "logs").glob("*_error.txt")):
        lines = log.read_text().splitlines()
        prefix = log.name[: -len("_error.txt")]
        entities = prefix.split("_")
        sub = entities[0]
        ses = entities[1] if len(entities) > 1 and entities[1].startswith("ses-") else "n/a"
        rest = "_".join(entities[2 if ses != "n/a" else 1:]) or "n/a"
        if (sub, ses, rest) in done:  # an old log of an acquisition finished since
            continue
        rows.append({"participant_id": sub, "session_id": ses, "acquisition": rest,
                     "status": "failed", "error": lines[1] if len(lines) > 1 else "n/a",
                     "_report": None})
    rows = [r for r in rows if (subjects is None or r["participant_id"] in subjects)
            and (sessions is None or r.get("session_id") in sessions)]
    if not rows:
        raise ValueError(f"output_dir {out} holds no participant results"
                         f"{' for these labels' if subjects or sessions else ''}; run the "
                         "participant level first")
    rows.sort(key=lambda r: (r["participant_id"], r.get("session_id", ""),
                             r.get("acquisition", "")))
    table = out / GROUP_TABLE
    dictionary = table.with_suffix(".json")
    items = [(table, lambda tmp: Path(tmp).write_text(format_tsv(rows))),
             (dictionary, lambda tmp: Path(tmp).write_text(
                 json.dumps(data_dictionary(), indent=2) + "\n"))]
    html = None
    if report and importlib.util.find_spec("metaqsm.qc") is not None:
        from ..qc import write_group_index

        html = out / GROUP_REPORT
        entries = []
        for r in rows:
            entries.append({
                "subject": r["participant_id"],
                "session": None if r.get("session_id") in (None, "n/a") else r["session_id"],
                "report": r["_report"], "status": r["status"] if r["status"] == "failed"
                else None, "error": r.get("error") if r["status"] == "failed" else None,
                "numbers": {k: r[k] for k in ("chi_mean", "chi_sd", "r2star_median",
                                              "mask_volume", "time_total")
                            if r.get(k) not in (None, "n/a")},
            })
            if entries[-1]["status"] is None:
                entries[-1].pop("status")
        items.append((html, lambda tmp: write_group_index(tmp, entries, force=True,
                                                          title="metaqsm group report")))
    write_all(items, force=force)
    return {"table": table, "report": html, "rows": [
        {k: v for k, v in r.items() if k in COLUMNS} for r in rows],
        "failed": sum(r["status"] == "failed" for r in rows)}
