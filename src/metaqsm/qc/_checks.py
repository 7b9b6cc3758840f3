"""Automatic checks of a subject's maps: the key numbers of the report and the warnings they raise.

The thresholds are deliberately loose: a warning should mean "look at this subject", never fire
on a good scan. Each is a module constant, documented in ``docs/report.md``.
"""

from __future__ import annotations

import numpy as np

#: Below this fraction of the brain mask kept by the background removal, the report warns.
MASK_KEPT_MIN = 0.60
#: A brain mask covering more than this fraction of the field of view likely includes background.
MASK_FOV_MAX = 0.60
#: A brain mask smaller than this (mL) is not a brain (or the voxel size is wrong).
MASK_ML_MIN = 300.0
#: 99th percentile of |total field| in the mask (ppm) above which phase units or echo times are
#: suspect (a shimmed head stays within a few ppm; an unconverted phase or a wrong echo time gives
#: tens to thousands).
TOTAL_FIELD_MAX = 20.0
#: 99th percentile of |local field| in the eroded mask (ppm) above which the background removal
#: or the phase scaling is suspect (brain tissue: about 0.05 ppm, veins 0.2 ppm).
LOCAL_FIELD_MAX = 0.5
#: 99th percentile of |chi| in the eroded mask (ppm) above which the map is suspect (deep grey
#: matter and veins: up to about 0.3 ppm; haemorrhages higher, but over few voxels).
CHI_MAX = 1.0


def voxel_volume_ml(affine):
    """Volume of one voxel (mL) from the affine."""
    return abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def finite(volume, name, warnings):
    """``volume`` as float32 with NaN/Inf set to 0; a warning names the map when there were any."""
    v = np.asarray(volume, np.float32)
    bad = ~np.isfinite(v)
    if bad.any():
        warnings.append(f"{name}: {int(bad.sum())} voxels are NaN or infinite (shown as 0)")
        v = np.where(bad, 0.0, v).astype(np.float32)
    return v


def _pct(values, q):
    return float(np.percentile(values, q)) if values.size else float("nan")


def summarize(*, magnitude, mask, eroded_mask, total_field, local_field, chi, affine,
              r2star=None, timings=None):
    """Key numbers of a subject and the warnings of the automatic checks.

    Parameters
    ----------
    magnitude : (X, Y, Z) float array
    mask, eroded_mask : (X, Y, Z) bool arrays
    total_field, local_field : (X, Y, Z) float arrays
        ppm.
    chi : (X, Y, Z) float array or None
        ppm.
    affine : (4, 4) array
    r2star : (X, Y, Z) float array, optional
        1/s.
    timings : dict, optional
        Seconds per stage.

    Returns
    -------
    (numbers, warnings)
        ``numbers``: an ordered dict of name -> float (names carry their units);
        ``warnings``: a list of sentences.
    """
    warnings = []
    voxel_ml = voxel_volume_ml(affine)
    n_mask, n_eroded = int(mask.sum()), int(eroded_mask.sum())
    numbers = {
        "mask (mL)": n_mask * voxel_ml,
        "eroded mask (mL)": n_eroded * voxel_ml,
        "mask kept (%)": 100.0 * n_eroded / n_mask if n_mask else 0.0,
    }
    if n_mask == 0:
        warnings.append("the brain mask is empty")
    else:
        kept = n_eroded / n_mask
        if kept < MASK_KEPT_MIN:
            warnings.append(
                f"mask loss: the background removal kept {100 * kept:.0f}% of the brain mask "
                f"({n_eroded * voxel_ml:.0f} of {n_mask * voxel_ml:.0f} mL; below "
                f"{100 * MASK_KEPT_MIN:.0f}%): the brain's edge has no susceptibility; check the "
                "mask and the background-removal kernel radius")
        fov = n_mask / mask.size
        if fov > MASK_FOV_MAX:
            warnings.append(f"the brain mask covers {100 * fov:.0f}% of the field of view: it "
                            "probably includes background or skull")
        if n_mask * voxel_ml < MASK_ML_MIN:
            warnings.append(f"the brain mask is only {n_mask * voxel_ml:.0f} mL (below "
                            f"{MASK_ML_MIN:.0f} mL): a partial brain, a failed mask, or a wrong "
                            "voxel size")
    tot = np.abs(total_field[mask]) if n_mask else np.zeros(0)
    numbers["|total field| p99 (ppm)"] = _pct(tot, 99)
    if tot.size and numbers["|total field| p99 (ppm)"] > TOTAL_FIELD_MAX:
        warnings.append(
            f"phase units? the total field reaches {numbers['|total field| p99 (ppm)']:.3g} ppm "
            f"(99th percentile of |field| in the mask; above {TOTAL_FIELD_MAX:g} ppm): check the "
            "phase's units, the echo times and the field strength")
    loc = local_field[eroded_mask] if n_eroded else np.zeros(0)
    numbers["local field SD (ppm)"] = float(loc.std()) if loc.size else float("nan")
    p99 = _pct(np.abs(loc), 99)
    if loc.size and p99 > LOCAL_FIELD_MAX:
        warnings.append(f"the local field reaches {p99:.3g} ppm (99th percentile of |field|; above "
                        f"{LOCAL_FIELD_MAX:g} ppm): background removal incomplete, or phase "
                        "units or echo times wrong")
    if chi is None:
        warnings.append("no susceptibility map (the inversion was skipped)")
    elif n_eroded:
        c = chi[eroded_mask]
        numbers["chi mean (ppm)"] = float(c.mean())
        numbers["chi SD (ppm)"] = float(c.std())
        numbers["chi p1 (ppm)"] = _pct(c, 1)
        numbers["chi p99 (ppm)"] = _pct(c, 99)
        big = _pct(np.abs(c), 99)
        if not np.any(c != c[0]):
            warnings.append("the susceptibility map is constant in the mask: the inversion "
                            "returned no contrast")
        elif big > CHI_MAX:
            warnings.append(f"the susceptibility reaches {big:.3g} ppm (99th percentile of |chi| "
                            f"in the mask; above {CHI_MAX:g} ppm): check the inversion and the "
                            "field's units")
    if r2star is not None and n_mask:
        numbers["R2* median (1/s)"] = float(np.median(r2star[mask]))
    if timings:
        numbers["total time (s)"] = float(sum(float(t) for t in timings.values()))
    return numbers, warnings
