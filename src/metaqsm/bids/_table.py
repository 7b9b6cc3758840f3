"""The per-acquisition summary row and the group table: columns, their meaning, reading and
writing BIDS-style TSV (tab-separated, ``n/a`` for a missing value, a JSON data dictionary)."""

from __future__ import annotations

import numpy as np

__all__ = ["COLUMNS", "summary_row", "format_tsv", "parse_tsv", "data_dictionary"]

# name -> (description, unit or None)
COLUMNS = {
    "participant_id": ("BIDS subject (sub-<label>)", None),
    "session_id": ("BIDS session (ses-<label>), n/a without sessions", None),
    "acquisition": ("the other entities of the input (acq-, rec-, run-), n/a when none", None),
    "status": ("ok, or failed (then see error)", None),
    "input_suffix": ("BIDS suffix of the input scans (MEGRE, T2starw, ...)", None),
    "n_echoes": ("number of echoes", None),
    "matrix": ("matrix size X x Y x Z", None),
    "voxel_size": ("voxel size X x Y x Z", "mm"),
    "field_strength": ("main field", "T"),
    "bgremove": ("background field removal method", None),
    "inversion": ("dipole inversion method", None),
    "mask_volume": ("brain mask volume", "mL"),
    "eroded_volume": ("volume where the local field and chi are valid", "mL"),
    "mask_loss": ("share of the brain mask lost to the background removal's erosion", "%"),
    "chi_mean": ("mean susceptibility in the eroded mask", "ppm"),
    "chi_sd": ("standard deviation of the susceptibility in the eroded mask", "ppm"),
    "chi_p05": ("5th percentile of the susceptibility in the eroded mask", "ppm"),
    "chi_p95": ("95th percentile of the susceptibility in the eroded mask", "ppm"),
    "chi_ref_region": ("region the referenced susceptibility is relative to", None),
    "chi_reference": ("mean susceptibility of that region, subtracted in desc-ref_Chimap",
                      "ppm"),
    "r2star_median": ("median R2* in the brain mask", "1/s"),
    "local_field_sd": ("standard deviation of the local field in the eroded mask", "ppm"),
    "time_mask": ("brain mask", "s"),
    "time_fit": ("echo fit and unwrapping", "s"),
    "time_bgremove": ("background field removal", "s"),
    "time_inversion": ("dipole inversion", "s"),
    "time_maps": ("R2*, T2*, SWI, mIP and referenced chi", "s"),
    "time_total": ("the whole acquisition: reading, pipeline, maps, writing", "s"),
    "threads": ("threads each pool of this acquisition could use", None),
    "warnings": ("warnings, separated by ' | '", None),
    "error": ("why it failed", None),
}


def _fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else f"{float(value):.6g}"
    return str(value).replace("\t", " ").replace("\n", " ")


def format_tsv(rows, columns=tuple(COLUMNS)):
    """Rows (dicts) as TSV text with a header line; missing values are ``n/a``."""
    lines = ["\t".join(columns)]
    lines += ["\t".join(_fmt(row.get(c)) for c in columns) for row in rows]
    return "\n".join(lines) + "\n"


def parse_tsv(text):
    """TSV text -> list of dicts of strings (``n/a`` kept as written)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, ln.split("\t"))) for ln in lines[1:]]


def data_dictionary(columns=tuple(COLUMNS)):
    """The BIDS JSON data dictionary of the table's columns."""
    out = {}
    for c in columns:
        description, unit = COLUMNS[c]
        out[c] = {"Description": description, **({"Units": unit} if unit else {})}
    return out


def summary_row(acq, result, *, maps=None, timings=None, warnings=(), threads=None):
    """The summary of one processed acquisition.

    Parameters
    ----------
    acq : BidsAcquisition
    result : metaqsm.pipeline.PipelineResult
    maps : dict, optional
        Arrays of the maps beside chi (``r2star``, ``chi_ref``), ``chi_ref_region`` and
        ``chi_reference`` (ppm).
    timings : dict, optional
        Seconds: ``maps`` and ``total`` beside the pipeline's stages.
    warnings : sequence of str
    threads : int, optional
    """
    maps = maps or {}
    timings = timings or {}
    voxel_ml = float(np.prod(result.voxel_size)) / 1000.0
    mask, eroded = result.mask, result.eroded_mask
    chi = result.chi[eroded] if result.chi is not None else np.zeros(0, np.float32)
    row = {
        "participant_id": f"sub-{acq.subject}",
        "session_id": f"ses-{acq.session}" if acq.session is not None else None,
        "acquisition": "_".join(acq.prefix.split("_")[2 if acq.session else 1:]) or None,
        "status": "ok",
        "input_suffix": acq.suffix,
        "n_echoes": len(result.echo_times),
        "matrix": "x".join(str(n) for n in mask.shape),
        "voxel_size": "x".join(f"{v:g}" for v in result.voxel_size),
        "field_strength": float(result.field_strength),
        "bgremove": result.parameters.get("bgremove", {}).get("method"),
        "inversion": result.parameters.get("inversion", {}).get("method"),
        "mask_volume": float(mask.sum()) * voxel_ml,
        "eroded_volume": float(eroded.sum()) * voxel_ml,
        "mask_loss": 100.0 * (1.0 - float(eroded.sum()) / max(float(mask.sum()), 1.0)),
        "chi_mean": float(chi.mean()) if chi.size else None,
        "chi_sd": float(chi.std()) if chi.size else None,
        "chi_p05": float(np.percentile(chi, 5)) if chi.size else None,
        "chi_p95": float(np.percentile(chi, 95)) if chi.size else None,
        "local_field_sd": float(result.local_field[eroded].std()) if eroded.any() else None,
        "time_mask": result.timings.get("mask"),
        "time_fit": result.timings.get("fit-echoes"),
        "time_bgremove": result.timings.get("bgremove"),
        "time_inversion": result.timings.get("inversion"),
        "time_maps": timings.get("maps"),
        "time_total": timings.get("total"),
        "threads": threads,
        "warnings": " | ".join(warnings) or None,
    }
    if maps.get("chi_ref") is not None:
        row["chi_ref_region"] = maps.get("chi_ref_region")
        row["chi_reference"] = maps.get("chi_reference")
    if maps.get("r2star") is not None and mask.any():
        row["r2star_median"] = float(np.median(maps["r2star"][mask]))
    return row
