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

from ..units import PHASE_UNITS
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
    p.add_argument("--phase-units", choices=PHASE_UNITS, default="radians",
                   help="NIfTI phase units: 'radians' takes -pi..pi or 0..2 pi spanning at "
                        "least pi; 'auto' also maps vendor ranges exactly (Siemens -4096..4095 "
                        "or 0..4095, milliradians, degrees, 16-bit); 'radians-unchecked' skips "
                        "the span check; 'arbitrary' rescales by pi/max|phase|; or name the "
                        "unit (docs/pipeline.md, 'Phase units')")


def _add_options_arg(p, flag, what):
    p.add_argument(flag, action="append", default=[], metavar="KEY=VALUE",
                   help=f"extra keyword of the {what} (repeatable; VALUE parsed as JSON, else text)")


def register(subparsers):
    from ..methods import PLAIN_DEFAULT_INVERSION, inversion_names
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
    p.add_argument("--mask-erode-mm", type=float, default=None,
                   help="erode the estimated brain mask by this many mm (default: one voxel, "
                        "the smallest voxel dimension; 0: none)")
    p.add_argument("--bgremove", default=DEFAULT_BGREMOVE, metavar="NAME",
                   help="background field removal: resharp, vsharp, sharp, pdf, lbv")
    _add_options_arg(p, "--bgremove-option", "background removal (e.g. radius=6)")
    p.add_argument("--method", default=DEFAULT_INVERSION, metavar="NAME",
                   help=f"dipole inversion: {', '.join(inversion_names())} (without torch the "
                   f"default is {PLAIN_DEFAULT_INVERSION})")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    p.add_argument("--method", default=DEFAULT_INVERSION, metavar="NAME",
                   help="dipole inversion (without torch the default is "
                   f"{PLAIN_DEFAULT_INVERSION})")
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
    p.add_argument("--phase-units", choices=PHASE_UNITS, default="radians",
                   help="phase units (see metaqsm run --help)")
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
# library argument names -> this module's flags, where they differ (the CLI translates errors)
_RUN_ALIASES = {"inversion_method": "--method", "inversion_options": "--method-option",
                "bgremove_method": "--bgremove", "bgremove_options": "--bgremove-option",
                "dicom": "--dicom", "erode_mm": "--mask-erode-mm"}


def _nifti_path(path, flag):
    p = Path(path)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise ValueError(f"{flag} must end in .nii or .nii.gz, got {path!r}")
    return p


def parse_options(items, flag, method=None):
    """``["radius=6", "name=x"]`` -> ``{"radius": 6.0, "name": "x"}``.

    With a registered ``method`` (:class:`metaqsm.methods.Method`) the keys must be its options
    and the values are converted to their types; without one, values are parsed as JSON.
    """
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} must be KEY=VALUE, got {item!r}")
        if method is None:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        else:
            out[key] = value
    if method is not None:
        try:
            out = method.check_options(out)
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
    return out


def _check_stage_outputs(paths, force):
    from ..io import check_output_paths
    from ..io.derivatives import sidecar_path

    all_paths = []
    for p in paths:
        if p is not None:
            all_paths += [Path(p), sidecar_path(p)]
    check_output_paths(all_paths, force=force)
    return all_paths


def _write_stage(outputs, affine, header, provenance, force):
    """Write NIfTI outputs (list of (path, array, dtype, description, units)) with sidecars
    (:func:`metaqsm.io.derivatives.sidecar` of ``provenance`` and the output's own
    description and units), all or nothing."""
    from ..io import save_nifti, write_all, write_json
    from ..io.derivatives import sidecar, sidecar_path

    items = []
    for path, data, dtype, description, units in outputs:
        items.append((path, lambda tmp, d=data, t=dtype: save_nifti(tmp, d, affine, header=header,
                                                                   force=True, dtype=t)))
        meta = sidecar(description=description, units=units, **provenance)
        items.append((sidecar_path(path), lambda tmp, m=meta: write_json(tmp, m, force=True)))
    write_all(items, force=force)


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
        from ..io.derivatives import log_path

        paths, sidecars = output_paths(out, subject, session)
        check_output_paths(list(paths.values()) + list(sidecars.values())
                           + [log_path(out, subject, session)], force=args.force)
    return subject, session


def run_run(args):
    from ..io.acquisition import load_mask, load_scan
    from ..io.derivatives import command_line
    from ..methods import bgremoval, inversion
    from ..pipeline import check_inputs, record_warnings, run_pipeline, write_outputs

    args.flag_aliases = _RUN_ALIASES
    if args.dicom is None and (args.magnitude is None or args.phase is None):
        raise ValueError("give --magnitude and --phase (NIfTI), or --dicom DIR")
    if args.dicom is not None and (args.magnitude is not None or args.phase is not None):
        raise ValueError("give either --dicom or --magnitude/--phase, not both")
    bg_opts = parse_options(args.bgremove_option, "--bgremove-option",
                            bgremoval(args.bgremove, "bgremove_method"))
    method = inversion(args.method, "inversion_method")
    inv_opts = parse_options(args.method_option, "--method-option", method)
    _common.resolve_function(method)  # an unavailable network fails before any work
    hint = args.dicom if args.dicom is not None else args.phase[0]
    subject, session = _run_outputs(args, hint)
    _common.check_geometry_args(args)

    warned = []
    with record_warnings(warned, "read"):
        scan = load_scan(args.magnitude, args.phase, dicom=args.dicom, series=args.series,
                         echo_times=args.echo_times, field_strength=args.field_strength,
                         phase_units=args.phase_units, voxel_size=args.voxel_size,
                         b0_dir=args.b0_dir)
    mag, ph, tes, b0 = check_inputs(scan.magnitude, scan.phase, scan.echo_times,
                                    scan.field_strength)
    try:  # before any work: a model for this voxel size, its device
        method.check_ready(voxel_size=scan.voxel_size, options=inv_opts)
    except ValueError as exc:
        raise ValueError(f"--method {args.method} cannot run here: {exc}") from None
    inputs = dict(scan.inputs)
    mask = None
    if args.mask is not None:
        mask = load_mask(args.mask, ph.shape[:3])
        inputs["mask"] = str(args.mask)

    t0 = time.perf_counter()
    result = run_pipeline(mag, ph, echo_times=tes, field_strength=b0, voxel_size=scan.voxel_size,
                          b0_dir=scan.b0_dir, affine=scan.affine, mask=mask, fit_method=args.fit,
                          unwrap_method=args.unwrap,
                          mask_options=(None if args.mask_erode_mm is None
                                        else {"erode_mm": args.mask_erode_mm}),
                          bgremove_method=args.bgremove, bgremove_options=bg_opts,
                          inversion_method=args.method, inversion_options=inv_opts,
                          phase_units="radians-unchecked",  # load_scan applied --phase-units
                          progress=not args.quiet)
    paths = write_outputs(result, args.output, subject=subject, session=session, inputs=inputs,
                          force=args.force, header=scan.header, figure=not args.no_figure,
                          warnings=warned, command_line=command_line(args.argv), log=True)
    total = time.perf_counter() - t0
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
    print(f"metaqsm run: {'x'.join(map(str, ph.shape))} in {total:.1f} s ({stages})")
    print(f"  susceptibility map: {paths['chimap']}")
    if "figure" in paths:
        print(f"  picture:            {paths['figure']}")
    print(f"  log:                {paths['log']}")
    n_warn = len(warned) + len(result.warnings)
    if n_warn:
        print(f"  {n_warn} warning{'s' if n_warn > 1 else ''} (in the log and the sidecars)")
    return 0


# ----------------------------------------------------------------------------- simulate
def _number_or_nifti(value, flag, shape):
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        from ..io import load_nifti
        from ..io.acquisition import require_file

        require_file(value, flag)
        vol = load_nifti(value, name=flag, ndim=3)
        if vol.data.shape != tuple(shape):
            raise ValueError(f"{flag} {value} has shape {vol.data.shape}, expected {tuple(shape)}") from None
        return vol.data


def run_simulate(args):
    from .._validate import as_volume
    from ..io import b0_dir_from_affine, load_nifti
    from ..io.acquisition import load_mask, require_file
    from ..io.derivatives import check_label, command_line, log_path, write_simulation
    from ..pipeline import show_progress
    from ..simulate.acquisition import simulate_acquisition

    require_file(args.chi, "chi")
    require_file(args.mask, "--mask")
    subject = check_label(args.subject, "--subject")
    out = Path(args.output)
    if out.exists():
        from ..io import check_output_paths
        from ..io.derivatives import sidecar_path, simulation_paths

        paths = list(simulation_paths(out, subject).values())
        check_output_paths(paths + [sidecar_path(p) for p in paths] + [log_path(out, subject)],
                           force=args.force)
    chi_vol = load_nifti(args.chi, name="chi", ndim=3)
    chi = as_volume(chi_vol.data, "chi")
    mask = load_mask(args.mask, chi.shape, "--mask")
    vsz, b0_dir = _common.geometry(chi_vol, args)
    t0 = time.perf_counter()
    acq = simulate_acquisition(
        chi, mask, voxel_size=vsz, b0_dir=b0_dir, echo_times=args.echo_times,
        field_strength=args.field_strength,
        m0=_number_or_nifti(args.m0, "--m0", chi.shape),
        r2star=_number_or_nifti(args.r2star, "--r2star", chi.shape),
        snr=None if args.snr == 0 else args.snr, phase_offset=not args.no_phase_offset,
        background=not args.no_background, output_voxel_size=args.output_voxel_size,
        reduce=args.reduce, shim_order=args.shim_order, affine=chi_vol.affine, rng=args.seed,
        progress=show_progress(not args.quiet))
    elapsed = time.perf_counter() - t0
    inputs = {"chi": str(args.chi), "mask": str(args.mask),
              **{k: str(v) for k, v in (("m0", args.m0), ("r2star", args.r2star))
                 if v is not None and Path(str(v)).exists()}}
    parameters = {"snr": args.snr, "background": not args.no_background,
                  "phase_offset": not args.no_phase_offset, "reduce": args.reduce,
                  "shim_order": args.shim_order, "seed": args.seed,
                  "output_voxel_size": args.output_voxel_size, "m0": args.m0,
                  "r2star": args.r2star}
    paths = write_simulation(acq, out, subject=subject, force=args.force,
                             parameters={k: v for k, v in parameters.items() if v is not None},
                             inputs=inputs, timings={"simulate": elapsed},
                             command_line=command_line(args.argv), log=True)
    if abs(float(np.dot(b0_dir_from_affine(chi_vol.affine), acq.b0_dir))) < 1 - 1e-6:
        print("metaqsm simulate: note: B0 is not along the affine's scanner z axis; the sidecars "
              "record B0Direction, which metaqsm run uses")
    print(f"metaqsm simulate: {'x'.join(map(str, acq.phase.shape))} at "
          f"{'x'.join(f'{v:g}' for v in acq.voxel_size)} mm in {elapsed:.1f} s -> "
          f"{paths['magnitude'].parent}/")
    return 0


# ----------------------------------------------------------------------------- example
def run_example(args):
    from ..io import check_output_paths
    from ..io.derivatives import (command_line, log_path, sidecar_path, simulation_paths,
                                  write_simulation)
    from ..methods import inversion
    from ..metrics import nrmse_demeaned
    from ..pipeline import call_inversion, output_paths, run_pipeline, show_progress, write_outputs
    from ..simulate.acquisition import simulate_acquisition
    from ..simulate.phantoms import brain_phantom

    _common.resolve_function(inversion(args.method))  # before the simulation
    out = Path(args.output)
    sim_dir = out / "sim"
    if out.exists():
        paths, sidecars = output_paths(out)
        sims = list(simulation_paths(sim_dir).values())
        check_output_paths(list(paths.values()) + list(sidecars.values()) + sims
                           + [sidecar_path(p) for p in sims] + [log_path(out)], force=args.force)
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
                               rng=args.seed, progress=show_progress(not args.quiet))
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
        line = command_line(args.argv)
        write_simulation(acq, sim_dir, force=args.force, command_line=line,
                         parameters={"phantom": "brain_phantom", "shape": list(args.shape),
                                     "seed": args.seed}, timings={"simulate": t_sim})
        paths = write_outputs(result, out, inputs={"simulation": str(sim_dir)}, force=args.force,
                              command_line=line, log=True, operation="example")
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
def _provenance(args, operation, method, parameters, inputs, elapsed, warned, **geometry):
    """The sidecar keywords a stage command records (:func:`metaqsm.io.derivatives.sidecar`)."""
    from ..io.derivatives import command_line

    return dict(operation=operation, command_line=command_line(args.argv), method=method,
                parameters=parameters, inputs=inputs, timings={operation: elapsed},
                warnings=warned, **geometry)


def run_fit_echoes(args):
    from .._validate import check_acquisition as check_inputs
    from ..io.acquisition import load_mask, load_scan
    from ..phase import fit_echoes
    from ..pipeline import record_warnings

    out = _nifti_path(args.output, "-o")
    noise_out = None if args.noise_output is None else _nifti_path(args.noise_output, "--noise-output")
    _check_stage_outputs([out, noise_out], args.force)
    _common.check_geometry_args(args)
    warned = []
    with record_warnings(warned, "fit-echoes"):
        scan = load_scan(args.magnitude, args.phase, echo_times=args.echo_times,
                         field_strength=args.field_strength, phase_units=args.phase_units,
                         voxel_size=args.voxel_size, b0_dir=args.b0_dir)
        mag, ph, tes, b0 = check_inputs(scan.magnitude, scan.phase, scan.echo_times,
                                        scan.field_strength)
        mask = None if args.mask is None else load_mask(args.mask, ph.shape[:3], "--mask")
        t0 = time.perf_counter()
        fit = fit_echoes(mag, ph, echo_times=tes, field_strength=b0, mask=mask,
                         method=args.method, unwrap=args.unwrap, voxel_size=scan.voxel_size)
        elapsed = time.perf_counter() - t0
    inputs = {**scan.inputs, **({"mask": str(args.mask)} if args.mask is not None else {})}
    prov = _provenance(args, "fit-echoes", args.method, {"unwrap": args.unwrap}, inputs,
                       elapsed, warned, echo_times=tes, field_strength=b0,
                       voxel_size=scan.voxel_size, b0_dir=scan.b0_dir)
    outputs = [(out, fit.field, np.float32, "Total field from the multi-echo fit, unwrapped",
                "ppm")]
    if noise_out is not None:
        outputs.append((noise_out, fit.noise, np.float32,
                        "Noise standard deviation of the total field", "ppm"))
    _write_stage(outputs, scan.affine, scan.header, prov, args.force)
    print(f"metaqsm fit-echoes: {args.method} -> {out}")
    return 0


def run_unwrap(args):
    from .._validate import check_phase_radians
    from ..io import load_nifti
    from ..io.acquisition import load_mask, require_file
    from ..phase import unwrap
    from ..pipeline import record_warnings
    from ..units import phase_to_radians

    out = _nifti_path(args.output, "-o")
    _check_stage_outputs([out], args.force)
    _common.check_geometry_args(args)
    require_file(args.phase, "phase")
    ph_vol = load_nifti(args.phase, name="phase", ndim=(3, 4))
    ph, scale = phase_to_radians(ph_vol.data, args.phase_units)
    check_phase_radians(ph)
    vsz, b0_dir = _common.geometry(ph_vol, args)
    mag = None
    if args.magnitude is not None:
        require_file(args.magnitude, "--magnitude")
        mag = load_nifti(args.magnitude, name="--magnitude", ndim=(3, 4)).data
        if mag.shape != ph.shape:
            raise ValueError(f"--magnitude has shape {mag.shape}, but the phase has {ph.shape}")
    mask = None if args.mask is None else load_mask(args.mask, ph.shape[:3], "--mask")
    warned = []
    t0 = time.perf_counter()
    with record_warnings(warned, "unwrap"):
        result = unwrap(ph, method=args.method, magnitude=mag, mask=mask, voxel_size=vsz)
    inputs = {"phase": str(args.phase), "PhaseUnits": args.phase_units,
              **({"PhaseScale": scale} if scale != 1.0 else {}),
              **{k: str(v) for k, v in (("magnitude", args.magnitude), ("mask", args.mask))
                 if v is not None}}
    prov = _provenance(args, "unwrap", args.method, {}, inputs, time.perf_counter() - t0,
                       warned, voxel_size=vsz, b0_dir=b0_dir)
    _write_stage([(out, result, np.float32, "Unwrapped phase", "rad")], ph_vol.affine,
                 ph_vol.header, prov, args.force)
    print(f"metaqsm unwrap: {args.method} -> {out}")
    return 0


def run_mask(args):
    from ..io import load_nifti
    from ..io.acquisition import require_file
    from ..mask import brain_mask
    from ..pipeline import record_warnings

    out = _nifti_path(args.output, "-o")
    _check_stage_outputs([out], args.force)
    _common.check_geometry_args(args)
    require_file(args.magnitude, "magnitude")
    vol = load_nifti(args.magnitude, name="magnitude", ndim=(3, 4))
    vsz, b0_dir = _common.geometry(vol, args)
    warned = []
    t0 = time.perf_counter()
    with record_warnings(warned, "mask"):
        m = brain_mask(vol.data, voxel_size=vsz, method=args.method, erode_mm=args.erode_mm,
                       fill_holes=not args.no_fill_holes)
    prov = _provenance(args, "mask", args.method, {"erode_mm": args.erode_mm,
                                                   "fill_holes": not args.no_fill_holes},
                       {"magnitude": str(args.magnitude)}, time.perf_counter() - t0, warned,
                       voxel_size=vsz, b0_dir=b0_dir)
    _write_stage([(out, m, np.uint8, "Brain mask", None)], vol.affine, vol.header, prov,
                 args.force)
    print(f"metaqsm mask: {int(m.sum())} voxels -> {out}")
    return 0


def run_bgremove(args):
    from .._validate import as_volume
    from ..io import load_nifti
    from ..io.acquisition import load_mask, require_file
    from ..methods import bgremoval
    from ..pipeline import record_warnings

    out = _nifti_path(args.output, "-o")
    mask_out = None if args.mask_output is None else _nifti_path(args.mask_output, "--mask-output")
    method = bgremoval(args.method)
    opts = parse_options(args.option, "--option", method)
    func = method.function()
    _check_stage_outputs([out, mask_out], args.force)
    _common.check_geometry_args(args)
    require_file(args.field, "field")
    vol = load_nifti(args.field, name="field", ndim=3)
    f = as_volume(vol.data, "field")
    mask = load_mask(args.mask, f.shape, "--mask")
    vsz, b0_dir = _common.geometry(vol, args)
    warned = []
    t0 = time.perf_counter()
    with record_warnings(warned, "bgremove"):
        local, eroded = func(f, mask, voxel_size=vsz, b0_dir=b0_dir, **opts)
    prov = _provenance(args, "bgremove", args.method, opts,
                       {"field": str(args.field), "mask": str(args.mask)},
                       time.perf_counter() - t0, warned, voxel_size=vsz, b0_dir=b0_dir)
    outputs = [(out, local, np.float32, "Local field after background field removal", "ppm")]
    if mask_out is not None:
        outputs.append((mask_out, eroded, np.uint8,
                        "Mask in which the local field is valid (after background removal)", None))
    _write_stage(outputs, vol.affine, vol.header, prov, args.force)
    print(f"metaqsm bgremove: {args.method} -> {out}")
    return 0
