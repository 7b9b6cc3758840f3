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

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validate import as_b0_dir, as_mask, as_voxel_size, check_phase_radians
from ._validate import check_acquisition as check_inputs
from ._version import __version__
from .methods import DEFAULT_BGREMOVE, DEFAULT_INVERSION, bgremoval, inversion

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

DEFAULT_FIT = "nonlinear"
DEFAULT_UNWRAP = "romeo"

STAGES = ("mask", "fit-echoes", "bgremove", "inversion")

@dataclass
class PipelineResult:
    """Everything :func:`run_pipeline` computed.

    Attributes
    ----------
    chi : (X, Y, Z) float32 or None
        Susceptibility (ppm), zero outside ``eroded_mask`` (None without an inversion).
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


def call_inversion(method, local_field, mask, *, voxel_size, b0_dir, options=None, magnitude=None,
                   noise_std=None):
    """Run the registered inversion ``method`` (:mod:`metaqsm.methods`), passing ``magnitude``
    and ``noise_std`` when it uses them (MEDI's edge mask and data weighting)."""
    m = inversion(method)
    opts = m.check_options(options)
    for key, value in m.inputs_from({"magnitude": magnitude, "noise_std": noise_std}).items():
        opts.setdefault(key, value)
    return m.function()(local_field, mask, voxel_size=voxel_size, b0_dir=b0_dir, **opts)


def _checked_method(lookup, name, options, stage):
    """The registered method and its checked options; errors name the pipeline's arguments
    (``<stage>_method``, ``<stage>_options``)."""
    method = lookup(name, f"{stage}_method")
    try:
        return method, method.check_options(options)
    except ValueError as exc:
        raise ValueError(f"{stage}_options: {exc}") from None


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
    inversion_method : str or None
        Dipole inversion (default :data:`DEFAULT_INVERSION`); ``None`` stops after the background
        removal (``chi`` is then None), e.g. to compare inversions on the same local field.
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
    # unknown names and options fail before any work
    bg_method, bgremove_options = _checked_method(bgremoval, bgremove_method, bgremove_options,
                                                  "bgremove")
    bg_func = bg_method.function()
    if inversion_method is not None:
        inv_method, inversion_options = _checked_method(inversion, inversion_method,
                                                        inversion_options, "inversion")
        try:  # a network without torch, a model or its device fails here, not after the fit
            inv_method.check_ready(voxel_size=vsz, options=inversion_options)
        except ValueError as exc:
            raise ValueError(f"inversion_method {inversion_method} cannot run here: {exc}") from None
    mask_options = dict(mask_options or {})

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
        fit = fit_echoes(mag, ph, echo_times=tes, field_strength=b0_t, mask=brain,
                         method=fit_method, unwrap=unwrap_method, voxel_size=vsz)
        params["fit-echoes"] = {"method": fit_method, "unwrap": unwrap_method}
        timings["fit-echoes"] = time.perf_counter() - t0
        bar.update()

        t0 = time.perf_counter()
        bar.set_postfix_str("bgremove")
        local, eroded = bg_func(fit.field, brain, voxel_size=vsz, b0_dir=b0, **bgremove_options)
        eroded = np.asarray(eroded, bool)
        if not eroded.any():
            raise ValueError(f"bgremove_method {bgremove_method} left an empty mask: the brain "
                             "mask is too small for its kernel; use a smaller radius")
        params["bgremove"] = {"method": bgremove_method, **bgremove_options}
        timings["bgremove"] = time.perf_counter() - t0
        bar.update()

        chi = None
        if inversion_method is not None:
            t0 = time.perf_counter()
            bar.set_postfix_str("inversion")
            chi = call_inversion(inversion_method, local, eroded, voxel_size=vsz, b0_dir=b0,
                                 options=inversion_options,
                                 magnitude=np.sqrt(np.sum(mag.astype(np.float64) ** 2, -1))
                                 .astype(np.float32),
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


def _save_figure(path, result, name):
    from .figures import save_orthogonal

    save_orthogonal(path, result.chi, affine=result.affine, mask=result.eroded_mask,
                    title=f"{name.split('_Chimap')[0]} susceptibility "
                          f"({result.parameters.get('inversion', {}).get('method', '')})",
                    unit="ppm", force=True)


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
    from .io import save_nifti, write_all, write_json
    from .io.derivatives import PIPELINE_OUTPUTS

    paths, sidecars = output_paths(out_dir, subject, session)
    if not figure:
        paths.pop("figure")

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

    items = []
    for key, path in paths.items():
        _, description, unit = PIPELINE_OUTPUTS[key]
        if key == "figure":
            items.append((path, lambda tmp, name=path.name: _save_figure(tmp, result, name)))
        else:
            dtype = np.uint8 if key in ("mask", "eroded_mask") else np.float32
            items.append((path, lambda tmp, a=arrays[key], d=dtype: save_nifti(
                tmp, a, result.affine, header=header, dtype=d, force=True)))
        if key not in sidecars:
            continue
        meta = dict(common)
        meta["Description"] = description
        if unit:
            meta["Units"] = unit
        meta["Stages"] = {s: _jsonable(result.parameters.get(s, {})) for s in stage_of[key]}
        meta["Timings"] = {s: round(float(result.timings.get(s, 0.0)), 3) for s in stage_of[key]}
        items.append((sidecars[key], lambda tmp, m=meta: write_json(tmp, m, force=True)))
    write_all(items, force=force, folder=out_dir)
    return paths
