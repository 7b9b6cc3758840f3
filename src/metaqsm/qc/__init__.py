"""Quality control: a self-contained HTML report per subject, and an index of a study's reports.

* :func:`write_subject_report` draws the magnitude, the brain mask on it, the total and local
  field, the susceptibility (and R2*, SWI when given) in orthogonal slices with colour bars and
  units, in the package's one orientation convention (:data:`metaqsm.figures.CONVENTION`),
  states the warnings (the caller's and those of automatic checks: mask loss, implausible field
  values that point at phase units), the parameters, key numbers and timings. One HTML file, the
  pictures embedded as base64 PNG: no external assets, no scripts.
* :func:`subject_report_from_result` does the same from a :class:`metaqsm.pipeline.PipelineResult`.
* :func:`write_group_index` writes a table of subjects and sessions linking to their reports.

Both files are written atomically and never overwrite without ``force``. What the report shows
and why: ``docs/report.md``.
"""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path

import numpy as np

from . import _html
from ._checks import finite, summarize

__all__ = ["write_subject_report", "subject_report_from_result", "write_group_index"]


def _clean(obj):
    """JSON-safe copy (NaN -> None, numpy scalars and arrays -> Python)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist()) if obj.size <= 16 else f"array{obj.shape}"
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _as_3d(volume, name, shape):
    v = np.asarray(volume)
    if v.ndim == 4 and name == "magnitude":  # echoes combined (root of the sum of squares)
        v = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=-1))
    if v.shape != tuple(shape):
        raise ValueError(f"{name} must have the shape of the mask {tuple(shape)}, got {v.shape}")
    return v


def _param_rows(parameters):
    rows = []
    for stage, value in (parameters or {}).items():
        if isinstance(value, dict):
            if not value:
                rows.append((stage, "", ""))
            for key, v in value.items():
                rows.append((stage, key, _html.fmt(_clean(v))))
        else:
            rows.append((stage, "", _html.fmt(_clean(value))))
    return rows


def _positive_window(volume, mask, pct=99.5):
    vals = volume[mask] if mask is not None and mask.any() else volume.ravel()
    hi = float(np.percentile(vals, pct)) if vals.size else 1.0
    return 0.0, hi if hi > 0 else 1.0


def _symmetric_window(volume, mask, pct=99.5):
    vals = np.abs(volume[mask]) if mask.any() else np.abs(volume.ravel())
    hi = float(np.percentile(vals, pct)) if vals.size else 1.0
    return -(hi if hi > 0 else 1e-3), (hi if hi > 0 else 1e-3)


def write_subject_report(path, *, magnitude, mask, eroded_mask, total_field, local_field, chi,
                         affine, r2star=None, swi=None, parameters=None, warnings=(),
                         timings=None, title="metaqsm subject report", force=False):
    """Write one subject's quality-control report: a self-contained HTML file.

    Parameters
    ----------
    path : path
        The HTML file (its folder must exist).
    magnitude : (X, Y, Z) or (X, Y, Z, E) array
        Any unit; echoes are combined by the root of the sum of squares.
    mask : (X, Y, Z) bool array
        The brain mask.
    eroded_mask : (X, Y, Z) bool array
        The mask the local field and susceptibility are valid in (after background removal).
    total_field, local_field : (X, Y, Z) arrays
        ppm.
    chi : (X, Y, Z) array or None
        Susceptibility (ppm); None when the inversion was skipped.
    affine : (4, 4) array
        Voxel-to-world (RAS+, mm): orients the pictures and gives the voxel volume.
    r2star : (X, Y, Z) array, optional
        R2* (1/s).
    swi : (X, Y, Z) array, optional
        Susceptibility-weighted image (any unit).
    parameters : dict, optional
        Per stage, the method and its options (as ``PipelineResult.parameters``); shown as a
        table.
    warnings : sequence of str
        The caller's warnings (phase units converted, echo times guessed, ...), shown first.
    timings : dict, optional
        Seconds per stage.
    title : str
        Page title (e.g. "sub-01 ses-1").
    force : bool
        Overwrite an existing file.

    Returns
    -------
    dict
        ``report`` (the path), ``status`` ("ok" or "warnings"), ``warnings`` (the caller's and the automatic
        checks') and ``numbers`` (key numbers with units in their names): add ``subject`` and
        ``session`` and pass it to :func:`write_group_index`.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``force`` is False (before any picture is drawn).
    ValueError
        A volume whose shape differs from the mask's, or an affine that is not 4 x 4.
    """
    from .. import figures
    from .._version import __version__
    from ..io import atomic_path, check_output_paths

    path = Path(path)
    check_output_paths([path], force=force)
    msk = np.asarray(mask) != 0
    shape = msk.shape
    if msk.ndim != 3:
        raise ValueError(f"mask must be a 3D volume, got shape {shape}")
    aff = np.asarray(affine, float)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {aff.shape}")
    ero = _as_3d(eroded_mask, "eroded_mask", shape) != 0
    caller_warnings = [str(w) for w in warnings]
    found = []
    mag = finite(_as_3d(magnitude, "magnitude", shape), "magnitude", found)
    tot = finite(_as_3d(total_field, "total_field", shape), "total field", found)
    loc = finite(_as_3d(local_field, "local_field", shape), "local field", found)
    sus = None if chi is None else finite(_as_3d(chi, "chi", shape), "chi", found)
    r2s = None if r2star is None else finite(_as_3d(r2star, "r2star", shape), "R2*", found)
    sw = None if swi is None else finite(_as_3d(swi, "swi", shape), "SWI", found)
    numbers, checks = summarize(magnitude=mag, mask=msk, eroded_mask=ero, total_field=tot,
                                local_field=loc, chi=sus, affine=aff, r2star=r2s, timings=timings)
    all_warnings = caller_warnings + found + checks

    vsz = np.linalg.norm(aff[:3, :3], axis=0)
    common = {"affine": aff, "convention": figures.CONVENTION}
    conv = figures.convention_label()
    pictures = []

    def draw(section_id, heading, volume, caption, **kwargs):
        fig = figures.plot_orthogonal(volume, title=heading, **common, **kwargs)
        pictures.append(_html.figure(section_id, heading, _html.png_base64(fig), caption))

    centre_mask = msk if msk.any() else None
    lo, hi = _positive_window(mag, centre_mask)
    draw("magnitude", "Magnitude (a.u.)", mag, "Echoes combined (root of the sum of squares); grey "
         "scale 0 to the 99.5th percentile in the brain mask.", mask=centre_mask,
         vmin=lo, vmax=hi, unit="magnitude (a.u.)")
    draw("mask", "Brain mask on the magnitude", mag,
         f"Red: the brain mask ({numbers['mask (mL)']:.0f} mL). Cyan: the eroded mask the local "
         f"field and susceptibility are valid in ({numbers['eroded mask (mL)']:.0f} mL, "
         f"{numbers['mask kept (%)']:.0f}% kept).", mask=centre_mask, vmin=lo, vmax=hi,
         unit="magnitude (a.u.)", outline=[msk, ero], outline_color=["#ff3030", "#30e0ff"])
    lo, hi = _symmetric_window(tot, msk, 99.0)
    draw("total-field", "Total field (ppm)", tot, "Unwrapped field of the echo fit, in the brain mask "
         "(black outside); symmetric scale +-99th percentile.", mask=centre_mask,
         vmin=lo, vmax=hi, cmap="RdBu_r", blank_outside=True, unit="total field (ppm)")
    ero_or_none = ero if ero.any() else None
    lo, hi = _symmetric_window(loc, ero)
    draw("local-field", "Local field (ppm)", loc, "After background field removal, in the eroded mask "
         "(black outside); symmetric scale +-99.5th percentile.", mask=ero_or_none,
         vmin=lo, vmax=hi, cmap="RdBu_r", blank_outside=True, unit="local field (ppm)")
    if sus is not None:
        lo, hi = _symmetric_window(sus, ero)
        draw("chi", "Susceptibility (ppm)", sus, "Dipole inversion, in the eroded mask (black outside); "
             "symmetric grey scale +-99.5th percentile (paramagnetic bright).",
             mask=ero_or_none, vmin=lo, vmax=hi, blank_outside=True,
             unit="susceptibility (ppm)")
    else:
        pictures.append('<section id="chi"><h2>Susceptibility</h2><p>No susceptibility map: '
                        "the inversion was skipped.</p></section>")
    if r2s is not None:
        lo, hi = _positive_window(r2s, centre_mask, 99.0)
        draw("r2star", "R2* (1/s)", r2s, "From the multi-echo magnitude, in the brain mask (black "
             "outside); 0 to the 99th percentile.", mask=centre_mask, vmin=lo, vmax=hi,
             cmap="inferno", blank_outside=True, unit="R2* (1/s)")
    if sw is not None:
        lo, hi = _positive_window(sw, centre_mask)
        draw("swi", "SWI (a.u.)", sw, "Susceptibility-weighted image; grey scale 0 to the 99.5th "
             "percentile in the brain mask.", mask=centre_mask, vmin=lo, vmax=hi,
             unit="SWI (a.u.)")

    status = "warnings" if all_warnings else "ok"
    summary = _clean({"title": title, "status": status, "warnings": all_warnings,
                      "numbers": numbers})
    num_rows = [("matrix", " x ".join(str(n) for n in shape)),
                ("voxel size (mm)", " x ".join(f"{v:.3g}" for v in vsz))]
    num_rows += [(k, v) for k, v in numbers.items()]
    timing_rows = [(k, float(v)) for k, v in (timings or {}).items()]
    if timing_rows:
        timing_rows.append(("total", sum(v for _, v in timing_rows)))
    params = _param_rows(parameters)
    body = [
        f'<p class="orientation" id="orientation"><b>Orientation:</b> every picture is in the '
        f"{_html.esc(conv)} (letters R/L, A/P, S/I at the edges of each view; anterior on the "
        "left of the sagittal view). Slices through the centre of the brain mask.</p>",
        _html.warnings_section(all_warnings),
        '<section id="summary"><h2>Key numbers</h2>'
        + _html.table(("quantity", "value"), num_rows, numeric=(1,)) + "</section>",
        *pictures,
        '<section id="parameters"><h2>Parameters</h2>'
        + (_html.table(("stage", "parameter", "value"), params) if params else
           "<p>None recorded.</p>") + "</section>",
        '<section id="timings"><h2>Timings</h2>'
        + (_html.table(("stage", "seconds"), timing_rows, numeric=(1,)) if timing_rows else
           "<p>None recorded.</p>") + "</section>",
        _html.summary_script(summary),
    ]
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = _html.page(title, [f"metaqsm {__version__}, {now}", conv], "\n".join(body),
                      f"Written by metaqsm {__version__}. Self-contained: pictures are embedded.")
    with atomic_path(path, force=force) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return {"report": path, **summary}


def subject_report_from_result(path, result, *, magnitude, r2star=None, swi=None, warnings=(),
                               title="metaqsm subject report", force=False):
    """:func:`write_subject_report` for a :class:`metaqsm.pipeline.PipelineResult`.

    Parameters
    ----------
    path : path
    result : PipelineResult
        Its maps, masks, affine, parameters and timings; the acquisition (echo times, field
        strength, voxel size, B0 direction) joins the parameters table. ``r2star`` and ``swi``
        default to the result's attributes of those names when it has them, and the warnings
        its stages recorded (``result.warnings``, when it has them) come before ``warnings``.
    magnitude : (X, Y, Z) or (X, Y, Z, E) array
        The magnitude the pipeline ran on (a result does not keep it).
    r2star, swi, warnings, title, force :
        As in :func:`write_subject_report`.

    Returns
    -------
    dict
        As :func:`write_subject_report`.
    """
    params = {"acquisition": {
        "echo times (s)": [float(t) for t in np.ravel(result.echo_times)],
        "field strength (T)": float(result.field_strength),
        "voxel size (mm)": [float(v) for v in np.ravel(result.voxel_size)],
        "B0 direction": [float(v) for v in np.ravel(result.b0_dir)],
    }}
    params.update(result.parameters or {})
    recorded = [str(w) for w in (getattr(result, "warnings", None) or [])]
    recorded += [str(w) for w in warnings if str(w) not in recorded]
    return write_subject_report(
        path, magnitude=magnitude, mask=result.mask, eroded_mask=result.eroded_mask,
        total_field=result.total_field, local_field=result.local_field, chi=result.chi,
        affine=result.affine,
        r2star=r2star if r2star is not None else getattr(result, "r2star", None),
        swi=swi if swi is not None else getattr(result, "swi", None),
        parameters=params, warnings=recorded, timings=result.timings, title=title, force=force)


def _entry_summary(entry, folder):
    """The entry's warnings and numbers, read back from its report when not given."""
    warnings, numbers = entry.get("warnings"), entry.get("numbers")
    report = entry.get("report")
    if (warnings is None or numbers is None) and report:
        p = Path(report) if Path(report).is_absolute() else folder / report
        if p.is_file():
            found = _html.read_summary(p.read_text(encoding="utf-8", errors="replace")) or {}
            warnings = found.get("warnings") if warnings is None else warnings
            numbers = found.get("numbers") if numbers is None else numbers
    return list(warnings or []), dict(numbers or {})


def write_group_index(path, subjects, *, title="metaqsm group report", force=False):
    """Write an HTML index of a study's subject reports: one row per subject and session.

    Parameters
    ----------
    path : path
        The HTML file (its folder must exist); links to the reports are relative to its folder.
    subjects : iterable of dict
        One per subject and session, with ``subject`` (required), and optionally ``session``,
        ``report`` (path of the subject's HTML report), ``status`` ("ok", "warnings", "failed",
        ...; default "warnings" when there are warnings, else "ok"), ``warnings`` (list of str),
        ``numbers`` (name -> value; the columns are the union of the names, in order of first
        appearance) and ``error`` (why a subject failed). Warnings and numbers left out are read
        back from the report when it exists; the dict :func:`write_subject_report` returns, with
        ``subject`` and ``session`` added, is such an entry.
    title : str
    force : bool
        Overwrite an existing file.

    Returns
    -------
    Path

    Raises
    ------
    FileExistsError
        ``path`` exists and ``force`` is False.
    ValueError
        An entry without ``subject``.
    """
    from .._version import __version__
    from ..io import atomic_path, check_output_paths

    path = Path(path)
    check_output_paths([path], force=force)
    folder = path.parent if str(path.parent) else Path(".")
    entries = []
    for i, entry in enumerate(subjects):
        if not isinstance(entry, dict) or not entry.get("subject"):
            raise ValueError(f"subjects[{i}] must be a dict with a 'subject', got {entry!r}")
        warnings, numbers = _entry_summary(entry, folder)
        status = entry.get("status") or ("warnings" if warnings else "ok")
        entries.append((str(entry["subject"]), str(entry.get("session") or ""), status, warnings,
                        numbers, entry.get("report"), entry.get("error")))
    entries.sort(key=lambda e: (e[0], e[1]))
    columns = []
    for e in entries:
        columns += [k for k in e[4] if k not in columns]
    with_sessions = any(e[1] for e in entries)

    rows = []
    for subject, session, status, warnings, numbers, report, error in entries:
        cls = {"ok": "status-ok", "warnings": "status-warnings"}.get(status, "status-failed")
        if report:
            target = Path(report)
            href = os.path.relpath(target if target.is_absolute() else folder / target, folder)
            link = _html.Raw(f'<a href="{_html.esc(Path(href).as_posix())}">report</a>')
        else:
            link = ""
        notes = [*warnings, *([f"error: {error}"] if error else [])]
        note_html = "<br>".join(_html.esc(w) for w in notes)
        row = [subject] + ([session] if with_sessions else [])
        row += [_html.Raw(_html.esc(status), cls=cls), link,
                _html.Raw(note_html)]
        row += [_clean(numbers.get(k)) for k in columns]
        rows.append(row)
    header = ["subject"] + (["session"] if with_sessions else []) + \
        ["status", "report", "warnings"] + columns
    first_num = len(header) - len(columns)
    counts = {}
    for e in entries:
        counts[e[2]] = counts.get(e[2], 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    body = (f'<section id="subjects"><h2>Subjects ({len(entries)}: {_html.esc(tally or "none")})'
            f"</h2>" + _html.table(header, rows, numeric=range(first_num, len(header)))
            + "</section>")
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    text = _html.page(title, [f"metaqsm {__version__}, {now}"], body,
                      f"Written by metaqsm {__version__}.")
    with atomic_path(path, force=force) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path
