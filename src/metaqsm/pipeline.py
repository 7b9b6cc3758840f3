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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validate import MaskWarning, as_b0_dir, as_mask, as_voxel_size, recording_warnings, warn
from ._validate import check_phase_radians
from ._validate import check_acquisition as check_inputs
from .methods import DEFAULT_BGREMOVE, DEFAULT_INVERSION, bgremoval, inversion
from .units import PHASE_UNITS, phase_to_radians

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
    "record_warnings",
    "show_progress",
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
    warnings : list of str
        metaqsm's warnings raised by the stages (through :func:`metaqsm._validate.warn`:
        a mask that lost most of the brain, a radius reduced to fit the mask), as
        ``"<stage>: <message>"``; the sidecars and the log record them.
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
    warnings: list = field(default_factory=list)


def show_progress(progress):
    """Whether to draw progress bars: asked for, and stderr is a terminal (never into logs)."""
    return bool(progress) and sys.stderr.isatty()


def call_inversion(method, local_field, mask, *, voxel_size, b0_dir, options=None, magnitude=None,
                   noise_std=None, progress=False):
    """Run the registered inversion ``method`` (:mod:`metaqsm.methods`), passing ``magnitude``
    and ``noise_std`` when it uses them (MEDI's edge mask and data weighting), and ``progress``
    (its iteration bar) when it takes it."""
    m = inversion(method)
    opts = m.check_options(options)
    for key, value in m.inputs_from({"magnitude": magnitude, "noise_std": noise_std}).items():
        opts.setdefault(key, value)
    func = m.function()
    if progress and "progress" in inspect.signature(func).parameters:
        opts["progress"] = True
    return func(local_field, mask, voxel_size=voxel_size, b0_dir=b0_dir, **opts)


def record_warnings(into, stage):
    """A block whose metaqsm warnings (:func:`metaqsm._validate.warn`) are appended to the list
    ``into`` as ``"<stage>: <message>"``; they still reach the caller's warning filters. Safe in
    threads (each thread records its own)."""
    return recording_warnings(lambda message: into.append(f"{stage}: {message}"))


def _without_rim(mask, vsz):
    """The estimated mask less its outer voxel (eroded by the smallest voxel dimension) and the
    erosion applied: none where that would keep less than half of it (a slab)."""
    from .mask import KEEP_FRACTION, erode_mask

    r = float(vsz.min())
    inner = erode_mask(mask, voxel_size=vsz, radius_mm=r)
    if inner.sum() < KEEP_FRACTION * mask.sum():
        return mask, 0.0
    return inner, r


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
                 inversion_method=DEFAULT_INVERSION, inversion_options=None,
                 phase_units="radians", progress=True):
    """From multi-echo magnitude and phase to a susceptibility map.

    Parameters
    ----------
    magnitude, phase : (X, Y, Z, E) or (X, Y, Z) arrays
        Magnitude (any unit) and wrapped phase (radians unless ``phase_units`` says otherwise),
        echoes on the last axis.
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
        Keywords of :func:`metaqsm.mask.brain_mask` (method, erode_mm, fill_holes). Unless
        ``erode_mm`` is given, the estimated mask is eroded by one voxel (the smallest voxel
        dimension): the magnitude's edge is the partial-volume layer against the skull, where
        the background field is steepest (see docs/pipeline.md, *Accuracy*); not on a mask
        that this would cut by half or more (a slab of a few slices).
    bgremove_method : str
        Background removal (default "resharp", 6 mm sphere, smaller on a small mask: see
        :func:`metaqsm.bgremove.resharp`); see :mod:`metaqsm.bgremove`.
    bgremove_options : dict, optional
        Its keywords (e.g. ``{"radius": 6.0}``).
    inversion_method : str or None
        Dipole inversion (default :data:`DEFAULT_INVERSION`); ``None`` stops after the background
        removal (``chi`` is then None), e.g. to compare inversions on the same local field.
    inversion_options : dict, optional
        Its keywords. ``magnitude`` and ``noise_std`` are added when the method accepts them.
    phase_units : str
        Units of ``phase``, one of :data:`metaqsm.units.PHASE_UNITS`, applied first by the one
        phase-units rule (:func:`metaqsm.units.phase_to_radians`): the default ``"radians"``
        refuses values outside -pi..pi / 0..2 pi and a phase spanning less than pi (a
        scaled-down image); ``"radians-unchecked"`` takes radians of any span (e.g. phase a
        reader already converted), ``"auto"`` also maps vendor ranges.
    progress : bool
        Show progress bars over the stages and the inversion's iterations, on stderr when it is
        a terminal.

    Returns
    -------
    PipelineResult

    Raises
    ------
    ValueError
        Magnitude and phase of different shapes, a number of echo times that differs from the
        number of echoes, phase not in ``phase_units``, a missing or non-positive field
        strength, an unknown method; all before any stage runs. Later: a mask that background
        removal erodes to nothing (too thin for its kernel).

    Warns
    -----
    MaskWarning
        A background-removal mask that keeps less than half of the brain mask, or a default
        radius reduced to fit a small mask (also recorded in ``PipelineResult.warnings``).
    """
    from tqdm.auto import tqdm

    from .mask import brain_mask, check_thickness
    from .phase import RELIABLE_NOISE_FACTOR, fit_echoes, reliable_mask

    if phase_units not in PHASE_UNITS:
        raise ValueError(f"phase_units must be one of {', '.join(PHASE_UNITS)}, got "
                         f"{phase_units!r}")
    radians = phase_units in ("radians", "radians-unchecked")
    if not radians:  # vendor units to radians before the shape and range checks
        phase, scale = phase_to_radians(phase, phase_units)
    mag, ph, tes, b0_t = check_inputs(magnitude, phase, echo_times, field_strength)
    if radians:  # the span rule on radians (check_inputs refused anything else)
        ph, scale = phase_to_radians(ph, phase_units)
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
    show = show_progress(progress)

    timings, params, warned = {}, {}, []
    bar = tqdm(total=len(STAGES), desc="metaqsm", unit="stage", disable=not show, leave=False)
    try:
        t0 = time.perf_counter()
        bar.set_postfix_str("mask")
        with record_warnings(warned, "mask"):
            if user_mask is not None:
                brain = user_mask
                params["mask"] = {"method": "user"}
            else:
                brain = brain_mask(mag, voxel_size=vsz, **mask_options)
                if "erode_mm" not in mask_options:
                    brain, mask_options["erode_mm"] = _without_rim(brain, vsz)
                if not np.any(brain):
                    raise ValueError("the brain mask from the magnitude is empty; give a mask")
                params["mask"] = {"method": "brain_mask", **mask_options}
            check_thickness(brain, voxel_size=vsz)
        timings["mask"] = time.perf_counter() - t0
        bar.update()

        t0 = time.perf_counter()
        bar.set_postfix_str("fit-echoes")
        with record_warnings(warned, "fit-echoes"):
            fit = fit_echoes(mag, ph, echo_times=tes, field_strength=b0_t, mask=brain,
                             method=fit_method, unwrap=unwrap_method, voxel_size=vsz)
        params["fit-echoes"] = {"method": fit_method, "unwrap": unwrap_method}
        if not radians:  # the conversion this call made (a reader's is in its inputs record)
            params["fit-echoes"].update(phase_units=phase_units, phase_scale=scale)
        timings["fit-echoes"] = time.perf_counter() - t0
        bar.update()

        t0 = time.perf_counter()
        bar.set_postfix_str("bgremove")
        with record_warnings(warned, "bgremove"):
            # the rim of the mask without signal (a generous skull strip) is fitted noise of
            # several ppm that background removal would spread into the brain: left out
            reliable, unreliable = reliable_mask(brain, fit.noise)
            if unreliable > 0.1 * brain.sum():
                warn(f"{unreliable} of {int(brain.sum())} mask voxels have no reliable field "
                     f"(echo-fit noise above {RELIABLE_NOISE_FACTOR:g}x the brain's median) and "
                     "were left out of background removal: check the mask", MaskWarning)
            local, eroded = bg_func(fit.field, reliable, voxel_size=vsz, b0_dir=b0,
                                    **bgremove_options)
        eroded = np.asarray(eroded, bool)
        if not eroded.any():  # every method refuses this itself; a guard for new ones
            raise ValueError(f"bgremove_method {bgremove_method} left an empty mask: the brain "
                             "mask is too small for its kernel; use a smaller radius")
        params["bgremove"] = {"method": bgremove_method, **bgremove_options,
                              "unreliable_voxels_left_out": unreliable}
        timings["bgremove"] = time.perf_counter() - t0
        bar.update()

        chi = None
        if inversion_method is not None:
            t0 = time.perf_counter()
            bar.set_postfix_str("inversion")
            with record_warnings(warned, "inversion"):
                chi = call_inversion(inversion_method, local, eroded, voxel_size=vsz, b0_dir=b0,
                                     options=inversion_options,
                                     magnitude=np.sqrt(np.sum(mag.astype(np.float64) ** 2, -1))
                                     .astype(np.float32),
                                     noise_std=fit.noise, progress=show)
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
        warnings=warned,
    )


def output_paths(out_dir, subject="01", session=None):
    """The files :func:`write_outputs` writes (NIfTI, PNG and their JSON sidecars)."""
    from .io.derivatives import pipeline_paths, sidecar_path

    paths = pipeline_paths(out_dir, subject, session)
    # the picture has no sidecar of its own (its name would be the map's sidecar)
    return paths, {key: sidecar_path(p) for key, p in paths.items() if key != "figure"}


def _save_figure(path, result, name):
    from .figures import save_orthogonal

    save_orthogonal(path, result.chi, affine=result.affine, mask=result.eroded_mask,
                    title=f"{name.split('_Chimap')[0]} susceptibility "
                          f"({result.parameters.get('inversion', {}).get('method', '')})",
                    unit="ppm", force=True)


def write_outputs(result, out_dir, *, subject="01", session=None, inputs=None, force=False,
                  header=None, figure=True, warnings=None, command_line=None, log=False,
                  operation="run"):
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
        What the sidecars record as inputs (file names, echo times source, ...); the files
        among them are checksummed (``InputChecksums``).
    force : bool
        Overwrite existing outputs.
    header : nibabel header, optional
        Copied into the NIfTI outputs (units, orientation codes).
    figure : bool
        Write the PNG of orthogonal slices of the susceptibility map.
    warnings : list of str, optional
        Warnings from before the pipeline (reading the inputs), recorded before
        ``result.warnings`` in the sidecars' ``Warnings`` and the log.
    command_line : str, optional
        Recorded in the sidecars and the log.
    log : bool
        Also write the log ``sub-<subject>[_ses-<session>]_log.txt``
        (:func:`metaqsm.io.derivatives.log_text`).
    operation : str
        The command recorded as ``Operation`` (default ``"run"``).

    Returns
    -------
    dict key -> Path of the NIfTI/PNG files written (and ``"log"``).
    """
    from .io import save_nifti, write_all, write_json
    from .io.derivatives import (PIPELINE_OUTPUTS, input_checksums, log_path, log_text, sidecar,
                                 weights_record)

    paths, sidecars = output_paths(out_dir, subject, session)
    if not figure:
        paths.pop("figure")
    warned = [*(warnings or []), *result.warnings]

    arrays = {
        "chimap": result.chi,
        "mask": result.mask,
        "eroded_mask": result.eroded_mask,
        "fieldmap": result.total_field,
        "noise": result.noise,
        "localfield": result.local_field,
    }
    inv = result.parameters.get("inversion", {})
    common = dict(operation=operation, command_line=command_line, echo_times=result.echo_times,
                  field_strength=result.field_strength, voxel_size=result.voxel_size,
                  b0_dir=result.b0_dir, inputs=inputs or {},
                  checksums=input_checksums(inputs), warnings=warned)
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
        stages = stage_of[key]
        weights = (weights_record(inv["method"], inv, result.voxel_size)
                   if "inversion" in stages and inv else None)
        meta = sidecar(description=description, units=unit,
                       stages={s: result.parameters.get(s, {}) for s in stages},
                       timings={s: result.timings.get(s, 0.0) for s in stages},
                       weights=weights, **common)
        items.append((sidecars[key], lambda tmp, m=meta: write_json(tmp, m, force=True)))
    if log:
        paths["log"] = log_path(out_dir, subject, session)
        written = [p for k, p in paths.items()] + list(sidecars.values())
        text = log_text(operation=operation, command_line=command_line, timings=result.timings,
                        warnings=warned, outputs=written)
        items.append((paths["log"], lambda tmp: Path(tmp).write_text(text)))
    write_all(items, force=force, folder=out_dir)
    return paths
