"""The pipeline commands: ``run`` (scanner data -> susceptibility map), ``simulate`` (a complete
multi-echo acquisition from a susceptibility map), ``example`` (both, on a phantom), and one
command per stage (``fit-echoes``, ``unwrap``, ``mask``, ``bgremove``) so a user can swap a step.

Every handler checks its arguments and output paths before any work starts, and writes its
outputs only at the end (temporary files renamed into place), so a failure leaves no output.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import _common

DEFAULT_EXAMPLE_SHAPE = (128, 128, 64)
DEFAULT_EXAMPLE_VOXEL = (1.0, 1.0, 2.0)


# ----------------------------------------------------------------------------- registration
def _add_acquisition_args(p, *, required_magnitude=True):
    p.add_argument("--magnitude", nargs="+", required=required_magnitude, metavar="NIFTI",
                   help="magnitude: one 4D NIfTI (echoes last) or one 3D NIfTI per echo")
    p.add_argument("--phase", nargs="+", required=required_magnitude, metavar="NIFTI",
                   help="wrapped phase in radians: one 4D NIfTI or one 3D NIfTI per echo")
    p.add_argument("--echo-times", nargs="+", type=float, default=None, metavar="TE",
                   help="echo times in seconds (default: EchoTime of the JSON sidecars beside "
                        "the phase files)")
    p.add_argument("--field-strength", type=float, default=None, metavar="T",
                   help="main field in tesla (default: MagneticFieldStrength of the sidecars)")
    p.add_argument("--phase-units", choices=("radians", "auto"), default="radians",
                   help="'radians' refuses phase that is not radians; 'auto' rescales "
                        "scanner units: signed by pi/max|phase|, non-negative by 2 pi/max")


def _add_options_arg(p, flag, what):
    p.add_argument(flag, action="append", default=[], metavar="KEY=VALUE",
                   help=f"extra keyword of the {what} (repeatable; VALUE parsed as JSON, else text)")


def register(subparsers):
    from ..pipeline import DEFAULT_BGREMOVE, DEFAULT_FIT, DEFAULT_INVERSION, DEFAULT_UNWRAP

    # ---- run
    p = _common.add_parser(
        subparsers, "run",
        help="multi-echo magnitude + phase (NIfTI or DICOM) -> susceptibility map and report",
        description="The whole QSM pipeline: brain mask (from the magnitude, unless --mask), "
        "multi-echo fit of the total field with phase unwrapping, background field removal "
        "(RESHARP, 6 mm, by default) and dipole inversion. Writes BIDS-derivatives files "
        "(sub-<label>_Chimap.nii.gz, _mask, _desc-eroded_mask, _fieldmap, _desc-noise_fieldmap, "
        "_localfield), a JSON sidecar for each and a PNG of orthogonal slices. Nothing is "
        "written if any step fails.\n\n"
        "examples:\n"
        "  metaqsm run --magnitude mag.nii.gz --phase phase.nii.gz \\\n"
        "              --echo-times 0.0104 0.0174 0.0244 0.0314 --field-strength 3 -o out/\n"
        "  metaqsm run --magnitude mag.nii.gz --phase phase.nii.gz --mask brain.nii.gz -o out/\n"
        "  metaqsm run --dicom DICOMDIR/ -o out/",
    )
    _add_acquisition_args(p, required_magnitude=False)
    p.add_argument("--dicom", default=None, metavar="DIR",
                   help="read magnitude, phase, echo times, field strength and geometry from a "
                        "DICOM folder instead of NIfTI")
    p.add_argument("--series", nargs="+", default=None, metavar="UID|NUMBER",
                   help="with --dicom: the series to use when the folder holds several")
    p.add_argument("--mask", default=None, help="brain mask NIfTI (always wins over the estimate)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--subject", default=None,
                   help="BIDS subject label (default: from a sub-<label> input name, else 01)")
    p.add_argument("--session", default=None, help="BIDS session label (default: none)")
    p.add_argument("--fit", default=DEFAULT_FIT, metavar="METHOD",
                   help="echo fit method of metaqsm.phase.fit_echoes")
    p.add_argument("--unwrap", default=DEFAULT_UNWRAP, metavar="romeo|laplacian",
                   help="phase unwrapping inside the echo fit")
    p.add_argument("--mask-erode-mm", type=float, default=0.0,
                   help="erode the estimated brain mask by this many mm")
    p.add_argument("--bgremove", default=DEFAULT_BGREMOVE, metavar="NAME",
                   help="background field removal: resharp, vsharp, sharp, pdf, lbv")
    _add_options_arg(p, "--bgremove-option", "background removal (e.g. radius=6)")
    p.add_argument("--method", default=DEFAULT_INVERSION, metavar="NAME",
                   help="dipole inversion: tkd, tsvd, tikhonov, ilsqr, medi, tv, meta, mesa")
    _add_options_arg(p, "--method-option", "inversion (e.g. threshold=0.2)")
    p.add_argument("--no-figure", action="store_true", help="do not write the PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common.add_geometry_args(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_run)

    # ---- simulate
    p = _common.add_parser(
        subparsers, "simulate",
        help="susceptibility map -> simulated multi-echo magnitude and phase (+ truth)",
        description="Simulate a multi-echo gradient-echo acquisition (metaqsm.simulate."
        "simulate_acquisition): local field of the brain, background field of a head around it "
        "(skull, sinuses, air), T2* decay, phase offset, wraps and complex noise, at any B0 "
        "direction and output voxel size. Writes sub-<label>_part-mag_MEGRE.nii.gz and "
        "_part-phase_MEGRE.nii.gz (4D) with BIDS sidecars (EchoTime, MagneticFieldStrength) and "
        "the truth (_desc-truth_Chimap, _localfield, _fieldmap, _mask).\n\n"
        "example:\n  metaqsm simulate chi.nii.gz --mask mask.nii.gz -o sim/",
    )
    p.add_argument("chi", help="susceptibility map, NIfTI, ppm")
    p.add_argument("--mask", required=True, help="brain mask NIfTI")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--echo-times", nargs="+", type=float,
                   default=[0.0104, 0.0174, 0.0244, 0.0314], metavar="TE", help="seconds")
    p.add_argument("--field-strength", type=float, default=3.0, metavar="T", help="tesla")
    p.add_argument("--snr", type=float, default=100.0,
                   help="mean first-echo brain magnitude / noise std (0: no noise)")
    p.add_argument("--output-voxel-size", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="output voxel size in mm (default: the input's)")
    p.add_argument("--reduce", choices=("kspace", "block"), default="kspace",
                   help="how to reduce resolution")
    p.add_argument("--m0", default=None, help="proton density: a number or a NIfTI (default: per tissue)")
    p.add_argument("--r2star", default=None, help="R2* in 1/s: a number or a NIfTI (default: per tissue)")
    p.add_argument("--no-background", action="store_true", help="no head background field")
    p.add_argument("--no-phase-offset", action="store_true", help="no phase offset")
    p.add_argument("--shim-order", type=int, choices=(0, 1, 2), default=2,
                   help="spherical harmonics removed from the background over the brain")
    p.add_argument("--seed", type=int, default=0, help="random seed (noise, phase offset)")
    p.add_argument("--subject", default="01", help="BIDS subject label")
    _common.add_geometry_args(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_simulate)

    # ---- example
    p = _common.add_parser(
        subparsers, "example",
        help="simulate a 4-echo brain acquisition and run the whole pipeline on it",
        description="Build the brain phantom (metaqsm.simulate.phantoms.brain_phantom), simulate "
        "a 4-echo 3 T acquisition of it (with background field, noise, wraps), run the pipeline "
        "and write the inputs (DIR/sim/), the outputs and the PNG (DIR/), and print the error "
        "against the truth.\n\nexample:\n  metaqsm example -o example/",
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_EXAMPLE_SHAPE),
                   metavar=("X", "Y", "Z"), help="matrix size")
    p.add_argument("--voxel-size", type=float, nargs=3, default=list(DEFAULT_EXAMPLE_VOXEL),
                   metavar=("X", "Y", "Z"), help="voxel size in mm")
    p.add_argument("--method", default=DEFAULT_INVERSION, metavar="NAME", help="dipole inversion")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common.add_force_arg(p)
    p.set_defaults(func=run_example)

    # ---- stages
    p = _common.add_parser(
        subparsers, "fit-echoes",
        help="stage: multi-echo magnitude + phase -> total field (ppm) and its noise",
        description="Fit the total field (ppm) to multi-echo phase (metaqsm.phase.fit_echoes), "
        "with unwrapping.\n\nexample:\n  metaqsm fit-echoes --magnitude mag.nii.gz --phase "
        "phase.nii.gz --echo-times 0.004 0.008 0.012 --field-strength 3 -o field.nii.gz",
    )
    _add_acquisition_args(p)
    p.add_argument("--mask", default=None, help="brain mask NIfTI (default: whole volume)")
    p.add_argument("--method", default=DEFAULT_FIT, metavar="METHOD", help="fit method")
    p.add_argument("--unwrap", default=DEFAULT_UNWRAP, metavar="romeo|laplacian", help="unwrapping")
    p.add_argument("-o", "--output", required=True, help="total field NIfTI (ppm)")
    p.add_argument("--noise-output", default=None, help="also write the noise map (ppm) here")
    _common.add_geometry_args(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_fit_echoes)

    p = _common.add_parser(
        subparsers, "unwrap",
        help="stage: wrapped phase (rad) -> unwrapped phase (rad)",
        description="Unwrap phase (metaqsm.phase.unwrap), 3D or 4D (echoes last).\n\n"
        "example:\n  metaqsm unwrap phase.nii.gz --magnitude mag.nii.gz -o unwrapped.nii.gz",
    )
    p.add_argument("phase", help="wrapped phase NIfTI, radians")
    p.add_argument("--magnitude", default=None, help="magnitude NIfTI (guides ROMEO)")
    p.add_argument("--mask", default=None, help="mask NIfTI")
    p.add_argument("--method", default=DEFAULT_UNWRAP, metavar="romeo|laplacian", help="unwrapper")
    p.add_argument("--phase-units", choices=("radians", "auto"), default="radians",
                   help="'auto' rescales scanner units to radians (see metaqsm run)")
    p.add_argument("-o", "--output", required=True, help="unwrapped phase NIfTI (rad)")
    _common.add_geometry_args(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_unwrap)

    p = _common.add_parser(
        subparsers, "mask",
        help="stage: magnitude -> brain mask",
        description="Brain mask from the magnitude (metaqsm.mask.brain_mask: Otsu, opening, "
        "largest component, hole filling, optional erosion).\n\nexample:\n"
        "  metaqsm mask mag.nii.gz -o mask.nii.gz --erode-mm 1",
    )
    p.add_argument("magnitude", help="magnitude NIfTI, 3D or 4D (echoes combined)")
    p.add_argument("--method", default="otsu", help="threshold method")
    p.add_argument("--erode-mm", type=float, default=0.0, help="final erosion in mm")
    p.add_argument("--no-fill-holes", action="store_true", help="do not fill holes")
    p.add_argument("-o", "--output", required=True, help="mask NIfTI")
    _common.add_geometry_args(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_mask)

    p = _common.add_parser(
        subparsers, "bgremove",
        help="stage: total field (ppm) -> local field (ppm) and eroded mask",
        description="Background field removal (metaqsm.bgremove): resharp (default, 6 mm), "
        "vsharp, sharp, pdf, lbv.\n\nexample:\n  metaqsm bgremove field.nii.gz --mask mask.nii.gz "
        "-o local.nii.gz --mask-output eroded.nii.gz",
    )
    p.add_argument("field", help="total field NIfTI, ppm")
    p.add_argument("--mask", required=True, help="brain mask NIfTI")
    p.add_argument("--method", default=DEFAULT_BGREMOVE, metavar="NAME", help="method")
    _add_options_arg(p, "--option", "method (e.g. radius=6)")
    p.add_argument("-o", "--output", required=True, help="local field NIfTI (ppm)")
    p.add_argument("--mask-output", default=None, help="also write the eroded mask here")
    _common.add_geometry_args(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_bgremove)


# ----------------------------------------------------------------------------- helpers
def _nifti_path(path, flag):
    p = Path(path)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise ValueError(f"{flag} must end in .nii or .nii.gz, got {path!r}")
    return p


def _exists(path, flag):
    if path is not None and not Path(path).exists():
        raise FileNotFoundError(f"{flag}: no such file or folder: {path}")


def parse_options(items, flag):
    """``["radius=6", "name=x"]`` -> ``{"radius": 6, "name": "x"}`` (values parsed as JSON)."""
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} must be KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def read_sidecar(path):
    """The JSON sidecar beside a NIfTI file, or ``{}``."""
    from ..io.derivatives import sidecar_path

    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"sidecar {side} is not valid JSON ({exc})") from None


def _load_echoes(paths, flag):
    """Load one 4D or several 3D NIfTI files; returns (4D data, first Volume, echo times from
    the sidecars or None, field strength from the sidecars or None)."""
    from ..io import load_nifti

    vols, tes, b0s = [], [], []
    for path in paths:
        _exists(path, flag)
        vols.append(load_nifti(path, name=flag, ndim=(3, 4)))
        side = read_sidecar(path)
        te = side.get("EchoTime")
        if te is not None:
            tes.extend(np.atleast_1d(np.asarray(te, float)).tolist())
        if side.get("MagneticFieldStrength") is not None:
            b0s.append(float(side["MagneticFieldStrength"]))
    if len(vols) == 1:
        data = vols[0].data
    else:
        shapes = {v.data.shape for v in vols}
        if len(shapes) != 1 or vols[0].data.ndim != 3:
            raise ValueError(f"{flag}: several files must all be 3D of one shape (one per echo), "
                             f"got shapes {sorted(shapes)}")
        data = np.stack([v.data for v in vols], axis=-1)
    tes = tes or None  # a count that differs from the echoes is reported by check_inputs
    if tes is not None and all(t > 1.0 for t in tes):
        tes = [t / 1000.0 for t in tes]  # a sidecar in ms (not BIDS, but common)
    return data, vols[0], tes, (b0s[0] if b0s else None)


def _to_radians(phase, units):
    """``units="auto"``: phase already in radians is kept; signed values are scaled by
    pi / max|phase|, non-negative ones by 2 pi / max (e.g. 0..4095). Returns (phase, scale)."""
    if units != "auto":
        return phase, 1.0
    from ..pipeline import _PHASE_MIN_SPAN, _PHASE_TOL

    lo, hi = float(np.min(phase)), float(np.max(phase))
    peak = max(abs(lo), abs(hi))
    if peak == 0:
        raise ValueError("phase is all zeros")
    if peak >= _PHASE_MIN_SPAN and ((lo >= -np.pi - _PHASE_TOL and hi <= np.pi + _PHASE_TOL)
                                    or (lo >= -_PHASE_TOL and hi <= 2 * np.pi + _PHASE_TOL)):
        return phase, 1.0
    scale = np.pi / peak if lo < 0 else 2 * np.pi / hi
    return (phase * scale).astype(np.float32), scale


def _acquisition_from_nifti(args):
    """Magnitude, phase, echo times, field strength, reference Volume, inputs record."""
    mag, mag_vol, te_m, b0_m = _load_echoes(args.magnitude, "--magnitude")
    ph, ph_vol, te_p, b0_p = _load_echoes(args.phase, "--phase")
    if args.echo_times is not None:
        tes, te_src = list(args.echo_times), "command line"
    elif te_p is not None or te_m is not None:
        tes, te_src = (te_p if te_p is not None else te_m), "JSON sidecar"
    else:
        raise ValueError("echo times are missing: pass --echo-times (seconds) or put EchoTime in "
                         "the JSON sidecars beside the phase files")
    if args.field_strength is not None:
        b0, b0_src = args.field_strength, "command line"
    elif b0_p is not None or b0_m is not None:
        b0, b0_src = (b0_p if b0_p is not None else b0_m), "JSON sidecar"
    else:
        raise ValueError("field strength is missing: pass --field-strength (tesla) or put "
                         "MagneticFieldStrength in the JSON sidecar beside the phase")
    ph, scale = _to_radians(ph, args.phase_units)
    inputs = {"magnitude": [str(p) for p in args.magnitude], "phase": [str(p) for p in args.phase],
              "EchoTimeSource": te_src, "MagneticFieldStrengthSource": b0_src}
    if scale != 1.0:
        inputs["PhaseScale"] = scale
    return mag, ph, tes, b0, ph_vol, inputs


def _load_mask(path, shape, flag="--mask"):
    from .._validate import as_mask
    from ..io import load_nifti

    _exists(path, flag)
    vol = load_nifti(path, name=flag, ndim=3)
    if vol.data.shape != tuple(shape):
        raise ValueError(f"{flag} {path} has shape {vol.data.shape}, but the data have {tuple(shape)}")
    return as_mask(vol.data, shape, flag)


def _check_stage_outputs(paths, force):
    from ..io import check_output_paths
    from ..io.derivatives import sidecar_path

    all_paths = []
    for p in paths:
        if p is not None:
            all_paths += [Path(p), sidecar_path(p)]
    check_output_paths(all_paths, force=force)
    return all_paths


def _write_stage(outputs, affine, header, sidecar, force):
    """Write NIfTI outputs (list of (path, array, dtype)) with sidecars, all or nothing."""
    import contextlib

    from .._version import __version__
    from ..io import atomic_path, save_nifti, write_json
    from ..io.derivatives import sidecar_path

    with contextlib.ExitStack() as stack:
        for path, data, dtype, extra in outputs:
            tmp = stack.enter_context(atomic_path(path, force=force))
            save_nifti(tmp, data, affine, header=header, force=True, dtype=dtype)
            tmp_json = stack.enter_context(atomic_path(sidecar_path(path), force=force))
            write_json(tmp_json, {**sidecar, **extra, "MetaqsmVersion": __version__}, force=True)


# ----------------------------------------------------------------------------- run
def _run_outputs(args, subject_hint):
    from ..io.derivatives import check_label, subject_from_path
    from ..pipeline import output_paths

    subject = check_label(args.subject if args.subject is not None
                          else subject_from_path(subject_hint), "--subject")
    session = None if args.session is None else check_label(args.session, "--session")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o {out} exists and is not a folder")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"-o: the parent folder {parent} does not exist")
    if out.exists():
        from ..io import check_output_paths

        paths, sidecars = output_paths(out, subject, session)
        check_output_paths(list(paths.values()) + list(sidecars.values()), force=args.force)
    return subject, session


def run_run(args):
    from .._validate import as_b0_dir
    from ..pipeline import check_inputs, run_pipeline, write_outputs

    if args.dicom is None and (args.magnitude is None or args.phase is None):
        raise ValueError("give --magnitude and --phase (NIfTI), or --dicom DIR")
    if args.dicom is not None and (args.magnitude is not None or args.phase is not None):
        raise ValueError("give either --dicom or --magnitude/--phase, not both")
    bg_opts = parse_options(args.bgremove_option, "--bgremove-option")
    inv_opts = parse_options(args.method_option, "--method-option")
    from ..bgremove import get_method as get_bg
    from ..inversion import get_method as get_inv

    get_bg(args.bgremove)
    try:
        get_inv(args.method)  # fails before any work on an unknown or unavailable method
    except ImportError as exc:
        raise ValueError(f"--method {args.method} is not available: {exc} (the networks need "
                         "the deep-learning extra: pip install 'metaqsm[dl]')") from None
    hint = args.dicom if args.dicom is not None else args.phase[0]
    subject, session = _run_outputs(args, hint)
    _exists(args.mask, "--mask")

    header = None
    if args.dicom is not None:
        from ..io.dicom import read_dicom_series

        _exists(args.dicom, "--dicom")
        d = read_dicom_series(args.dicom, series=args.series)
        mag, ph, affine = d.magnitude, d.phase, d.affine
        tes = list(args.echo_times) if args.echo_times is not None else d.echo_times
        b0 = args.field_strength if args.field_strength is not None else d.field_strength
        vsz = d.voxel_size if args.voxel_size is None else np.asarray(args.voxel_size, float)
        b0_dir = d.b0_dir if args.b0_dir is None else np.asarray(args.b0_dir, float)
        inputs = {"dicom": str(args.dicom), "series": args.series}
        if b0 is None:
            raise ValueError("field strength is missing: the DICOM headers have no "
                             "MagneticFieldStrength; pass --field-strength (tesla)")
    else:
        mag, ph, tes, b0, ph_vol, inputs = _acquisition_from_nifti(args)
        affine, header = ph_vol.affine, ph_vol.header
        vsz, b0_dir = _common.geometry(ph_vol, args)
        side_b0 = read_sidecar(args.phase[0]).get("B0Direction")
        if args.b0_dir is None and side_b0 is not None:
            # metaqsm's own sidecars (e.g. from `metaqsm simulate --b0-dir`) record a B0
            # direction that the affine may not encode
            b0_dir = as_b0_dir(side_b0, "B0Direction of the phase sidecar")
            inputs["B0DirectionSource"] = "JSON sidecar"
    mag, ph, tes, b0 = check_inputs(mag, ph, tes, b0)
    mask = None
    if args.mask is not None:
        mask = _load_mask(args.mask, ph.shape[:3])
        inputs["mask"] = str(args.mask)

    t0 = time.perf_counter()
    result = run_pipeline(mag, ph, echo_times=tes, field_strength=b0, voxel_size=vsz,
                          b0_dir=b0_dir, affine=affine, mask=mask, fit_method=args.fit,
                          unwrap_method=args.unwrap,
                          mask_options={"erode_mm": args.mask_erode_mm} if args.mask_erode_mm else None,
                          bgremove_method=args.bgremove, bgremove_options=bg_opts,
                          inversion_method=args.method, inversion_options=inv_opts,
                          progress=not args.quiet)
    paths = write_outputs(result, args.output, subject=subject, session=session, inputs=inputs,
                          force=args.force, header=header, figure=not args.no_figure)
    total = time.perf_counter() - t0
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    print(f"metaqsm run: {'x'.join(map(str, ph.shape))} in {total:.1f} s ({stages})")
    print(f"  susceptibility map: {paths['chimap']}")
    if "figure" in paths:
        print(f"  picture:            {paths['figure']}")
    return 0


# ----------------------------------------------------------------------------- simulate
def _number_or_nifti(value, flag, shape):
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        from ..io import load_nifti

        _exists(value, flag)
        vol = load_nifti(value, name=flag, ndim=3)
        if vol.data.shape != tuple(shape):
            raise ValueError(f"{flag} {value} has shape {vol.data.shape}, expected {tuple(shape)}") from None
        return vol.data


def write_simulation(acq, out_dir, *, subject="01", force=False, header=None, extra=None):
    """Write a simulated :class:`~metaqsm.simulate.acquisition.Acquisition` with BIDS-like
    sidecars, all or nothing. Returns dict key -> Path."""
    import contextlib

    from .._version import __version__
    from ..io import atomic_path, check_output_paths, save_nifti, write_json
    from ..io.derivatives import SIMULATION_OUTPUTS, sidecar_path, simulation_paths

    out = Path(out_dir)
    paths = simulation_paths(out, subject)
    sidecars = {k: sidecar_path(p) for k, p in paths.items()}
    if out.exists():
        check_output_paths(list(paths.values()) + list(sidecars.values()), force=force)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    affine = acq.affine if acq.affine is not None else np.diag(list(acq.voxel_size) + [1.0])
    common = {
        "EchoTime": [float(t) for t in acq.echo_times],
        "MagneticFieldStrength": float(acq.field_strength),
        "B0Direction": [float(b) for b in acq.b0_dir],
        "VoxelSize": [float(v) for v in acq.voxel_size],
        "NoiseStd": float(acq.noise_std),
        "GeneratedBy": [{"Name": "metaqsm simulate", "Version": __version__}],
        **(extra or {}),
    }
    arrays = {"magnitude": acq.magnitude, "phase": acq.phase, "chi": acq.chi,
              "local_field": acq.local_field, "total_field": acq.total_field, "mask": acq.mask}
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            for key, path in paths.items():
                _, description, unit = SIMULATION_OUTPUTS[key]
                tmp = stack.enter_context(atomic_path(path, force=force))
                save_nifti(tmp, arrays[key], affine, header=header, force=True,
                           dtype=np.uint8 if key == "mask" else np.float32)
                meta = {**common, "Description": description}
                if unit:
                    meta["Units"] = unit
                if key in ("magnitude", "phase"):
                    meta["ImageType"] = ["ORIGINAL", "PRIMARY", "M" if key == "magnitude" else "P"]
                tmp_json = stack.enter_context(atomic_path(sidecars[key], force=force))
                write_json(tmp_json, meta, force=True)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    return paths


def run_simulate(args):
    from .._validate import as_volume
    from ..io import load_nifti
    from ..io.derivatives import check_label
    from ..simulate.acquisition import simulate_acquisition

    _exists(args.chi, "chi")
    _exists(args.mask, "--mask")
    subject = check_label(args.subject, "--subject")
    out = Path(args.output)
    if out.exists():
        from ..io import check_output_paths
        from ..io.derivatives import sidecar_path, simulation_paths

        paths = list(simulation_paths(out, subject).values())
        check_output_paths(paths + [sidecar_path(p) for p in paths], force=args.force)
    chi_vol = load_nifti(args.chi, name="chi", ndim=3)
    chi = as_volume(chi_vol.data, "chi")
    mask = _load_mask(args.mask, chi.shape)
    vsz, b0_dir = _common.geometry(chi_vol, args)
    acq = simulate_acquisition(
        chi, mask, voxel_size=vsz, b0_dir=b0_dir, echo_times=args.echo_times,
        field_strength=args.field_strength,
        m0=_number_or_nifti(args.m0, "--m0", chi.shape),
        r2star=_number_or_nifti(args.r2star, "--r2star", chi.shape),
        snr=None if args.snr == 0 else args.snr, phase_offset=not args.no_phase_offset,
        background=not args.no_background, output_voxel_size=args.output_voxel_size,
        reduce=args.reduce, shim_order=args.shim_order, affine=chi_vol.affine, rng=args.seed)
    extra = {"Simulation": {"chi": str(args.chi), "mask": str(args.mask), "snr": args.snr,
                            "background": not args.no_background,
                            "phase_offset": not args.no_phase_offset, "reduce": args.reduce,
                            "shim_order": args.shim_order,
                            "seed": args.seed}}
    paths = write_simulation(acq, out, subject=subject, force=args.force, extra=extra)
    from ..io import b0_dir_from_affine

    if abs(float(np.dot(b0_dir_from_affine(chi_vol.affine), acq.b0_dir))) < 1 - 1e-6:
        print("metaqsm simulate: note: B0 is not along the affine's scanner z axis; the sidecars "
              "record B0Direction, which metaqsm run uses")
    print(f"metaqsm simulate: {'x'.join(map(str, acq.phase.shape))} at "
          f"{'x'.join(f'{v:g}' for v in acq.voxel_size)} mm -> {paths['magnitude'].parent}/")
    return 0


# ----------------------------------------------------------------------------- example
def run_example(args):
    from ..io import check_output_paths
    from ..io.derivatives import sidecar_path, simulation_paths
    from ..metrics import nrmse_demeaned
    from ..pipeline import call_inversion, output_paths, run_pipeline, write_outputs
    from ..simulate.acquisition import simulate_acquisition
    from ..simulate.phantoms import brain_phantom

    out = Path(args.output)
    sim_dir = out / "sim"
    if out.exists():
        paths, sidecars = output_paths(out)
        sims = list(simulation_paths(sim_dir).values())
        check_output_paths(list(paths.values()) + list(sidecars.values()) + sims
                           + [sidecar_path(p) for p in sims], force=args.force)
    else:
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.exists():
            raise FileNotFoundError(f"-o: the parent folder {parent} does not exist")
    vsz = np.asarray(args.voxel_size, float)
    t0 = time.perf_counter()
    phantom = brain_phantom(tuple(args.shape), voxel_size=vsz, rng=args.seed)
    affine = np.diag(list(vsz) + [1.0])
    affine[:3, 3] = -0.5 * (np.asarray(args.shape) - 1) * vsz  # isocentre in the middle
    acq = simulate_acquisition(phantom.chi, phantom.mask, voxel_size=vsz, affine=affine,
                               rng=args.seed)
    t_sim = time.perf_counter() - t0
    result = run_pipeline(acq.magnitude, acq.phase, echo_times=acq.echo_times,
                          field_strength=acq.field_strength, voxel_size=acq.voxel_size,
                          b0_dir=acq.b0_dir, affine=acq.affine, inversion_method=args.method,
                          progress=not args.quiet)
    m = result.eroded_mask & acq.mask
    err_chi = nrmse_demeaned(result.chi, acq.chi, m)
    err_local = nrmse_demeaned(result.local_field, acq.local_field, m)
    # context: the same inversion of the true local field in the same mask
    ref = call_inversion(args.method, acq.local_field, result.eroded_mask,
                         voxel_size=acq.voxel_size, b0_dir=acq.b0_dir)
    err_ref = nrmse_demeaned(ref, acq.chi, m)
    out.mkdir(exist_ok=True)
    try:
        write_simulation(acq, sim_dir, force=args.force,
                         extra={"Simulation": {"phantom": "brain_phantom", "seed": args.seed}})
        paths = write_outputs(result, out, inputs={"simulation": str(sim_dir)}, force=args.force)
    except BaseException:
        import shutil

        if not any(p.exists() for p in output_paths(out)[0].values()):
            shutil.rmtree(sim_dir, ignore_errors=True)
        raise
    total = time.perf_counter() - t0
    print(f"metaqsm example: {'x'.join(map(str, acq.phase.shape))} acquisition at "
          f"{'x'.join(f'{v:g}' for v in vsz)} mm simulated in {t_sim:.1f} s, processed in "
          f"{sum(result.timings.values()):.1f} s ({total:.1f} s in all)")
    print(f"  simulated inputs:   {sim_dir}/")
    print(f"  susceptibility map: {paths['chimap']}")
    print(f"  picture:            {paths['figure']}")
    print(f"  NRMSE against the truth (demeaned, in the eroded mask): local field "
          f"{err_local:.1f} %, susceptibility {err_chi:.1f} % ({args.method}; "
          f"{err_ref:.1f} % when inverting the true local field)")
    sys.stdout.flush()
    return 0


# ----------------------------------------------------------------------------- stages
def run_fit_echoes(args):
    from ..phase import fit_echoes
    from ..pipeline import check_inputs

    out = _nifti_path(args.output, "-o")
    noise_out = None if args.noise_output is None else _nifti_path(args.noise_output, "--noise-output")
    _check_stage_outputs([out, noise_out], args.force)
    mag, ph, tes, b0, ph_vol, inputs = _acquisition_from_nifti(args)
    mag, ph, tes, b0 = check_inputs(mag, ph, tes, b0)
    mask = None if args.mask is None else _load_mask(args.mask, ph.shape[:3])
    t0 = time.perf_counter()
    fit = fit_echoes(mag, ph, echo_times=tes, field_strength=b0, mask=mask, method=args.method,
                     unwrap=args.unwrap)
    side = {"Operation": "fit-echoes", "Method": args.method, "Unwrap": args.unwrap,
            "EchoTime": list(map(float, tes)), "MagneticFieldStrength": b0, "Inputs": inputs,
            "ElapsedSeconds": round(time.perf_counter() - t0, 3)}
    outputs = [(out, fit.field, np.float32, {"Units": "ppm", "Description": "total field"})]
    if noise_out is not None:
        outputs.append((noise_out, fit.noise, np.float32,
                        {"Units": "ppm", "Description": "noise of the total field"}))
    _write_stage(outputs, ph_vol.affine, ph_vol.header, side, args.force)
    print(f"metaqsm fit-echoes: {args.method} -> {out}")
    return 0


def run_unwrap(args):
    from ..io import load_nifti
    from ..phase import unwrap

    out = _nifti_path(args.output, "-o")
    _check_stage_outputs([out], args.force)
    _exists(args.phase, "phase")
    ph_vol = load_nifti(args.phase, name="phase", ndim=(3, 4))
    ph, scale = _to_radians(ph_vol.data, args.phase_units)
    from ..pipeline import check_phase_radians

    check_phase_radians(ph)
    vsz, _ = _common.geometry(ph_vol, args)
    mag = None
    if args.magnitude is not None:
        _exists(args.magnitude, "--magnitude")
        mag = load_nifti(args.magnitude, name="--magnitude", ndim=(3, 4)).data
        if mag.shape != ph.shape:
            raise ValueError(f"--magnitude has shape {mag.shape}, but the phase has {ph.shape}")
    mask = None if args.mask is None else _load_mask(args.mask, ph.shape[:3])
    t0 = time.perf_counter()
    result = unwrap(ph, method=args.method, magnitude=mag, mask=mask, voxel_size=vsz)
    side = {"Operation": "unwrap", "Method": args.method, "Units": "rad",
            "Inputs": {"phase": str(args.phase), "magnitude": args.magnitude, "mask": args.mask,
                       "PhaseScale": scale},
            "ElapsedSeconds": round(time.perf_counter() - t0, 3)}
    _write_stage([(out, result, np.float32, {})], ph_vol.affine, ph_vol.header, side, args.force)
    print(f"metaqsm unwrap: {args.method} -> {out}")
    return 0


def run_mask(args):
    from ..io import load_nifti
    from ..mask import brain_mask

    out = _nifti_path(args.output, "-o")
    _check_stage_outputs([out], args.force)
    _exists(args.magnitude, "magnitude")
    vol = load_nifti(args.magnitude, name="magnitude", ndim=(3, 4))
    vsz, _ = _common.geometry(vol, args)
    t0 = time.perf_counter()
    m = brain_mask(vol.data, voxel_size=vsz, method=args.method, erode_mm=args.erode_mm,
                   fill_holes=not args.no_fill_holes)
    side = {"Operation": "mask", "Method": args.method, "ErodeMm": args.erode_mm,
            "FillHoles": not args.no_fill_holes, "Inputs": {"magnitude": str(args.magnitude)},
            "ElapsedSeconds": round(time.perf_counter() - t0, 3)}
    _write_stage([(out, m, np.uint8, {})], vol.affine, vol.header, side, args.force)
    print(f"metaqsm mask: {int(m.sum())} voxels -> {out}")
    return 0


def run_bgremove(args):
    from .._validate import as_volume
    from ..bgremove import get_method
    from ..io import load_nifti

    out = _nifti_path(args.output, "-o")
    mask_out = None if args.mask_output is None else _nifti_path(args.mask_output, "--mask-output")
    opts = parse_options(args.option, "--option")
    func = get_method(args.method)
    _check_stage_outputs([out, mask_out], args.force)
    _exists(args.field, "field")
    vol = load_nifti(args.field, name="field", ndim=3)
    f = as_volume(vol.data, "field")
    mask = _load_mask(args.mask, f.shape)
    vsz, b0_dir = _common.geometry(vol, args)
    t0 = time.perf_counter()
    local, eroded = func(f, mask, voxel_size=vsz, b0_dir=b0_dir, **opts)
    side = {"Operation": "bgremove", "Method": args.method, "Parameters": opts,
            "Inputs": {"field": str(args.field), "mask": str(args.mask)},
            "ElapsedSeconds": round(time.perf_counter() - t0, 3)}
    outputs = [(out, local, np.float32, {"Units": "ppm", "Description": "local field"})]
    if mask_out is not None:
        outputs.append((mask_out, eroded, np.uint8, {"Description": "eroded mask"}))
    _write_stage(outputs, vol.affine, vol.header, side, args.force)
    print(f"metaqsm bgremove: {args.method} -> {out}")
    return 0
