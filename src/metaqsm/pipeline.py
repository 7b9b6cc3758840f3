"""The QSM pipeline: multi-echo magnitude and phase -> susceptibility map (ppm).

Stages, as in the Meta-QSM paper's clinical processing:

1. brain mask from the magnitude (echoes combined) (:func:`metaqsm.mask.brain_mask`), unless a mask is
   given (a user's mask always wins);
2. echo fit: total field (ppm) and its noise from the multi-echo phase
   (:func:`metaqsm.phase.fit_echoes`, with phase unwrapping);
3. background field removal: local field (ppm) and the eroded mask it is valid in
   (:mod:`metaqsm.bgremove`, RESHARP with a 6 mm sphere by default);
4. dipole inversion: susceptibility (ppm) (:mod:`metaqsm.inversion`, :data:`DEFAULT_INVERSION`).

:func:`run_pipeline` works on arrays; :func:`write_outputs` writes the BIDS-derivatives files,
their JSON sidecars and the picture, all or nothing.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validate import as_b0_dir, as_mask, as_positive, as_voxel_size
from ._version import __version__

__all__ = [
    "DEFAULT_INVERSION",
    "DEFAULT_BGREMOVE",
    "DEFAULT_FIT",
    "DEFAULT_UNWRAP",
    "PipelineResult",
    "run_pipeline",
    "check_inputs",
    "check_phase_radians",
    "call_inversion",
    "write_outputs",
    "output_paths",
]

from .inversion import DEFAULT_METHOD as DEFAULT_INVERSION  # noqa: E402  (one default)
"""Inversion used by :func:`run_pipeline` and ``metaqsm run`` (becomes "meta" once the network
ships)."""
DEFAULT_BGREMOVE = "resharp"
DEFAULT_FIT = "nonlinear"
DEFAULT_UNWRAP = "romeo"

STAGES = ("mask", "fit-echoes", "bgremove", "inversion")

_PHASE_TOL = 1e-3  # rad: float32 rounding of +-pi from converters
_PHASE_MIN_SPAN = 0.05  # rad: real phase images reach far beyond this (noise, fields, offsets)

def _fmt(values):
    """``(1.0, 1.0, 2.5)`` for messages (plain floats, not numpy reprs)."""
    return "(" + ", ".join(f"{float(v):g}" for v in np.ravel(values)) + ")"



@dataclass
class PipelineResult:
    """Everything :func:`run_pipeline` computed.

    Attributes
    ----------
    chi : (X, Y, Z) float32
        Susceptibility (ppm), zero outside ``eroded_mask``.
    local_field : (X, Y, Z) float32
        Local field (ppm) in ``eroded_mask``.
    total_field : (X, Y, Z) float32
        Unwrapped total field from the echo fit (ppm).
    noise : (X, Y, Z) float32
        Noise standard deviation of ``total_field`` (ppm).
    phase_offset : (X, Y, Z) float32
        Echo-independent phase offset from the fit (rad).
    mask : (X, Y, Z) bool
        Brain mask used (the user's, or computed from the magnitude).
    eroded_mask : (X, Y, Z) bool
        Mask in which the local field and the susceptibility are valid.
    voxel_size, b0_dir, affine, echo_times, field_strength :
        The geometry and acquisition parameters used.
    parameters : dict
        Per stage: the method and its options (what the sidecars record).
    timings : dict
        Seconds per stage.
    """

    chi: np.ndarray
    local_field: np.ndarray
    total_field: np.ndarray
    noise: np.ndarray
    phase_offset: np.ndarray
    mask: np.ndarray
    eroded_mask: np.ndarray
    voxel_size: np.ndarray
    b0_dir: np.ndarray
    affine: np.ndarray
    echo_times: np.ndarray
    field_strength: float
    parameters: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    residual: np.ndarray | None = field(default=None, repr=False)


def check_phase_radians(phase, name="phase"):
    """Refuse phase that is not wrapped radians (in [-pi, pi] or [0, 2 pi]).

    Scanner units are recognised in the message: Siemens stores -4096..4095, GE and Philips
    often milliradians (-3142..3142), some tools degrees. Phase whose largest magnitude is below
    0.05 rad is refused too: a real phase image spans about -pi..pi (if only through the noise
    outside the head), so such values are arbitrary units scaled down.
    """
    lo, hi = float(np.min(phase)), float(np.max(phase))
    span = max(abs(lo), abs(hi))
    if span < _PHASE_MIN_SPAN:
        # wrapped phase spans about -pi..pi (noise outside the head alone does); values this
        # small are scanner units scaled down, not radians
        raise ValueError(
            f"{name} must be wrapped phase in radians (-pi..pi), got values only in "
            f"[{lo:.4g}, {hi:.4g}]: it does not look like radians (arbitrary units?); rescale it "
            "to radians, or pass --phase-units auto on the command line to rescale by "
            "pi/max|phase|")
    ok_signed = lo >= -np.pi - _PHASE_TOL and hi <= np.pi + _PHASE_TOL
    ok_positive = lo >= -_PHASE_TOL and hi <= 2 * np.pi + _PHASE_TOL
    if ok_signed or ok_positive:
        return
    if span <= 180.5:
        guess = "degrees? multiply by pi/180"
    elif span <= 1000 * np.pi + 1:
        guess = "milliradians? divide by 1000"
    elif span <= 4096.5:
        guess = "Siemens scanner units? multiply by pi/4096"
    else:
        guess = "rescale it to radians"
    raise ValueError(
        f"{name} must be wrapped phase in radians (-pi..pi), got values in [{lo:.4g}, {hi:.4g}] "
        f"({guess}; or pass --phase-units auto on the command line to rescale by pi/max|phase|)")


def check_inputs(magnitude, phase, echo_times, field_strength):
    """Validate the acquisition: shapes, echo times (s), field strength (T), phase in radians.

    Returns ``(magnitude, phase, echo_times, field_strength)`` as float32 4D arrays (a 3D
    single-echo volume gets a last axis of 1), a float64 vector and a float.
    """
    mag = np.asarray(magnitude)
    ph = np.asarray(phase)
    if mag.shape != ph.shape:
        raise ValueError(f"magnitude and phase must have the same shape, got magnitude "
                         f"{mag.shape} and phase {ph.shape}")
    if ph.ndim == 3:
        mag, ph = mag[..., None], ph[..., None]
    if ph.ndim != 4:
        raise ValueError(f"phase must be a 3D or 4D (echoes last) volume, got {ph.ndim}D "
                         f"with shape {ph.shape}")
    for arr, name in ((mag, "magnitude"), (ph, "phase")):
        if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or Inf values")
    if field_strength is None:
        raise ValueError("field_strength is missing: give the scanner's field in tesla "
                         "(--field-strength, or MagneticFieldStrength in the JSON sidecar)")
    b0 = as_positive(field_strength, "field_strength")
    if b0 > 20:
        raise ValueError(f"field_strength must be in tesla, got {field_strength!r}")
    if echo_times is None:
        raise ValueError("echo_times are missing: give one per echo in seconds "
                         "(--echo-times, or EchoTime in the JSON sidecars)")
    tes = np.asarray(echo_times, dtype=np.float64).reshape(-1)
    if tes.size != ph.shape[-1]:
        raise ValueError(f"echo_times has {tes.size} values but the phase has {ph.shape[-1]} "
                         f"echoes (shape {ph.shape})")
    if not np.all(np.isfinite(tes)) or np.any(tes <= 0):
        raise ValueError(f"echo_times must be positive seconds, got {_fmt(tes)}")
    if np.any(tes > 1.0):
        raise ValueError(f"echo_times must be in seconds, got {_fmt(tes)} (milliseconds? "
                         "divide by 1000)")
    if np.any(np.diff(tes) <= 0):
        raise ValueError(f"echo_times must be strictly increasing, got {_fmt(tes)}")
    if np.any(mag < 0):
        raise ValueError("magnitude must be non-negative")
    check_phase_radians(ph)
    return mag.astype(np.float32, copy=False), ph.astype(np.float32, copy=False), tes, b0


def _accepted(func, options, extra):
    """Add the ``extra`` keywords the function accepts (by its signature) to ``options``."""
    params = inspect.signature(func).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = dict(options)
    for key, value in extra.items():
        if key not in out and (takes_any or key in params):
            out[key] = value
    return out


def call_inversion(method, local_field, mask, *, voxel_size, b0_dir, options=None, magnitude=None,
                   noise_std=None):
    """Run an inversion by name, passing ``magnitude=`` and ``noise_std=`` when it takes them
    (MEDI's data weighting and edge mask)."""
    from . import inversion

    func = inversion.get_method(method)
    extra = {}
    if magnitude is not None:
        extra["magnitude"] = magnitude
    if noise_std is not None:
        extra["noise_std"] = noise_std
    opts = _accepted(func, options or {}, extra)
    return func(local_field, mask, voxel_size=voxel_size, b0_dir=b0_dir, **opts)


def run_pipeline(magnitude, phase, *, echo_times, field_strength, voxel_size, b0_dir=(0, 0, 1),
                 affine=None, mask=None, fit_method=DEFAULT_FIT, unwrap_method=DEFAULT_UNWRAP,
                 mask_options=None, bgremove_method=DEFAULT_BGREMOVE, bgremove_options=None,
                 inversion_method=DEFAULT_INVERSION, inversion_options=None, progress=True):
    """From multi-echo magnitude and phase to a susceptibility map.

    Parameters
    ----------
    magnitude, phase : (X, Y, Z, E) or (X, Y, Z) arrays
        Magnitude (any unit) and wrapped phase in radians, echoes on the last axis.
    echo_times : sequence of E floats
        Seconds, increasing.
    field_strength : float
        Tesla.
    voxel_size : 3 floats
        mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates (from the affine for oblique slices). Default z.
    affine : (4, 4) array, optional
        Kept with the result for writing outputs (default: diagonal voxel sizes).
    mask : (X, Y, Z) array, optional
        A brain mask; when given it is used as is (a user's mask always wins).
    fit_method : str
        Echo fit method of :func:`metaqsm.phase.fit_echoes` (default "nonlinear").
    unwrap_method : str
        Unwrapping in the echo fit (default "romeo").
    mask_options : dict, optional
        Keywords of :func:`metaqsm.mask.brain_mask` (method, erode_mm, fill_holes).
    bgremove_method : str
        Background removal (default "resharp", 6 mm sphere); see :mod:`metaqsm.bgremove`.
    bgremove_options : dict, optional
        Its keywords (e.g. ``{"radius": 6.0}``).
    inversion_method : str
        Dipole inversion (default :data:`DEFAULT_INVERSION`).
    inversion_options : dict, optional
        Its keywords. ``magnitude`` and ``noise_std`` are added when the method accepts them.
    progress : bool
        Show a progress bar over the stages (stderr).

    Returns
    -------
    PipelineResult

    Raises
    ------
    ValueError
        Magnitude and phase of different shapes, a number of echo times that differs from the
        number of echoes, phase not in radians, a missing or non-positive field strength, an
        unknown method.
    """
    from tqdm.auto import tqdm

    from . import bgremove as bgr
    from . import inversion
    from .mask import brain_mask
    from .phase import fit_echoes

    mag, ph, tes, b0_t = check_inputs(magnitude, phase, echo_times, field_strength)
    shape = ph.shape[:3]
    vsz = as_voxel_size(voxel_size)
    b0 = as_b0_dir(b0_dir)
    aff = np.diag(list(vsz) + [1.0]) if affine is None else np.asarray(affine, float)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {aff.shape}")
    user_mask = None if mask is None else as_mask(mask, shape, "mask")
    # fail on unknown names before any work
    bg_func = bgr.get_method(bgremove_method)
    inversion.get_method(inversion_method)
    mask_options = dict(mask_options or {})
    bgremove_options = dict(bgremove_options or {})
    inversion_options = dict(inversion_options or {})

    timings, params = {}, {}
    bar = tqdm(total=len(STAGES), desc="metaqsm", unit="stage", disable=not progress, leave=False)
    try:
        t0 = time.perf_counter()
        bar.set_postfix_str("mask")
        if user_mask is not None:
            brain = user_mask
            params["mask"] = {"method": "user"}
        else:
            brain = brain_mask(mag, voxel_size=vsz, **mask_options)
            if not np.any(brain):
                raise ValueError("the brain mask from the magnitude is empty; give a mask")
            params["mask"] = {"method": "brain_mask", **mask_options}
        timings["mask"] = time.perf_counter() - t0
        bar.update()

        t0 = time.perf_counter()
        bar.set_postfix_str("fit-echoes")
        fit_opts = _accepted(fit_echoes, {}, {"voxel_size": vsz})
        fit = fit_echoes(mag, ph, echo_times=tes, field_strength=b0_t, mask=brain,
                         method=fit_method, unwrap=unwrap_method, **fit_opts)
        params["fit-echoes"] = {"method": fit_method, "unwrap": unwrap_method}
        timings["fit-echoes"] = time.perf_counter() - t0
        bar.update()

        t0 = time.perf_counter()
        bar.set_postfix_str("bgremove")
        local, eroded = bg_func(fit.field, brain, voxel_size=vsz, b0_dir=b0, **bgremove_options)
        eroded = np.asarray(eroded, bool)
        if not eroded.any():
            raise ValueError(f"background removal ({bgremove_method}) left an empty mask: the "
                             "brain mask is too small for its kernel; use a smaller radius")
        params["bgremove"] = {"method": bgremove_method, **bgremove_options}
        timings["bgremove"] = time.perf_counter() - t0
        bar.update()

        t0 = time.perf_counter()
        bar.set_postfix_str("inversion")
        chi = call_inversion(inversion_method, local, eroded, voxel_size=vsz, b0_dir=b0,
                             options=inversion_options,
                             magnitude=np.sqrt(np.sum(mag.astype(np.float64) ** 2, -1)).astype(np.float32),
                             noise_std=fit.noise)
        chi = np.where(eroded, chi, 0.0).astype(np.float32)
        params["inversion"] = {"method": inversion_method, **inversion_options}
        timings["inversion"] = time.perf_counter() - t0
        bar.update()
    finally:
        bar.close()

    return PipelineResult(
        chi=chi,
        local_field=np.where(eroded, local, 0.0).astype(np.float32),
        total_field=np.asarray(fit.field, np.float32),
        noise=np.asarray(fit.noise, np.float32),
        phase_offset=np.asarray(fit.phase_offset, np.float32),
        mask=np.asarray(brain, bool),
        eroded_mask=eroded,
        voxel_size=vsz,
        b0_dir=b0,
        affine=aff,
        echo_times=tes,
        field_strength=b0_t,
        parameters=params,
        timings=timings,
        residual=None if getattr(fit, "residual", None) is None else np.asarray(fit.residual),
    )


def output_paths(out_dir, subject="01", session=None):
    """The files :func:`write_outputs` writes (NIfTI, PNG and their JSON sidecars)."""
    from .io.derivatives import pipeline_paths, sidecar_path

    paths = pipeline_paths(out_dir, subject, session)
    # the picture has no sidecar of its own (its name would be the map's sidecar)
    return paths, {key: sidecar_path(p) for key, p in paths.items() if key != "figure"}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 16 else f"array{obj.shape}"
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_outputs(result, out_dir, *, subject="01", session=None, inputs=None, force=False,
                  header=None, figure=True):
    """Write the derivatives of a :class:`PipelineResult`, all or nothing.

    Every path is checked before anything is written (an existing file is an error without
    ``force``); files are first written to temporary names and renamed into place only when
    all of them succeeded, so a failure leaves the folder as it was.

    Parameters
    ----------
    result : PipelineResult
    out_dir : path
        Created if missing (its parent must exist).
    subject, session : str
        BIDS labels.
    inputs : dict, optional
        What the sidecars record as inputs (file names, echo times source, ...).
    force : bool
        Overwrite existing outputs.
    header : nibabel header, optional
        Copied into the NIfTI outputs (units, orientation codes).
    figure : bool
        Write the PNG of orthogonal slices of the susceptibility map.

    Returns
    -------
    dict key -> Path of the NIfTI/PNG files written.
    """
    import os
    import tempfile

    from .io import check_output_paths, save_nifti, write_json
    from .io.derivatives import PIPELINE_OUTPUTS

    out_dir = Path(out_dir)
    paths, sidecars = output_paths(out_dir, subject, session)
    if not figure:
        paths.pop("figure")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {out_dir} is not a folder")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    if out_dir.exists():
        check_output_paths(list(paths.values()) + list(sidecars.values()), force=force)
    created = not out_dir.exists()
    out_dir.mkdir(exist_ok=True)

    arrays = {
        "chimap": result.chi,
        "mask": result.mask,
        "eroded_mask": result.eroded_mask,
        "fieldmap": result.total_field,
        "noise": result.noise,
        "localfield": result.local_field,
    }
    common = {
        "GeneratedBy": [{"Name": "metaqsm", "Version": __version__}],
        "EchoTime": [float(t) for t in result.echo_times],
        "MagneticFieldStrength": float(result.field_strength),
        "VoxelSize": [float(v) for v in result.voxel_size],
        "B0Direction": [float(b) for b in result.b0_dir],
        "Inputs": _jsonable(inputs or {}),
    }
    stage_of = {"chimap": ("mask", "fit-echoes", "bgremove", "inversion"),
                "mask": ("mask",), "eroded_mask": ("mask", "bgremove"),
                "fieldmap": ("mask", "fit-echoes"), "noise": ("mask", "fit-echoes"),
                "localfield": ("mask", "fit-echoes", "bgremove")}

    staging = Path(tempfile.mkdtemp(prefix=".metaqsm-", dir=out_dir))
    staged = []
    try:
        for key, path in paths.items():
            _, description, unit = PIPELINE_OUTPUTS[key]
            tmp = staging / path.name
            if key == "figure":
                from .figures import save_orthogonal

                save_orthogonal(tmp, result.chi, affine=result.affine, mask=result.eroded_mask,
                                title=f"{path.name.split('_Chimap')[0]} susceptibility "
                                      f"({result.parameters.get('inversion', {}).get('method', '')})",
                                unit="ppm")
            elif key in ("mask", "eroded_mask"):
                save_nifti(tmp, arrays[key], result.affine, header=header, dtype=np.uint8)
            else:
                save_nifti(tmp, arrays[key], result.affine, header=header)
            staged.append((tmp, path))
            if key not in sidecars:
                continue
            meta = dict(common)
            meta["Description"] = description
            if unit:
                meta["Units"] = unit
            meta["Stages"] = {s: _jsonable(result.parameters.get(s, {})) for s in stage_of[key]}
            meta["Timings"] = {s: round(float(result.timings.get(s, 0.0)), 3) for s in stage_of[key]}
            side = staging / sidecars[key].name
            write_json(side, meta)
            staged.append((side, sidecars[key]))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
        raise
    finally:
        for leftover in staging.glob("*"):
            leftover.unlink()
        staging.rmdir()
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
    return paths
