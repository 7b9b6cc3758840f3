"""The core commands: ``forward`` (susceptibility -> field), ``invert`` (field -> susceptibility)
and ``metrics`` (QSM-challenge metrics against a reference, as JSON).

Every handler checks its arguments and paths before any work starts, and writes its outputs only
at the end, atomically (temporary files renamed into place), so a failure leaves no output.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from .._validate import as_mask, as_volume
from ..io.derivatives import sidecar_path
from ..methods import DEFAULT_INVERSION, INVERSIONS, PLAIN_DEFAULT_INVERSION
from . import _common

METRIC_KEYS = ("rmse", "nrmse_demeaned", "hfen", "ssim", "xsim", "correlation")


# ----------------------------------------------------------------------------- registration
class _Formatter(_common.DefaultsFormatter):
    """Show defaults in --help, except the ``None`` of options that are unset by default (their
    help says what happens then) and of required options."""

    def _get_help_string(self, action):
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def _add_parser(subparsers, name, **kwargs):
    return _common.add_parser(subparsers, name, formatter_class=_Formatter, **kwargs)


def _add_quiet_arg(parser):
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar (there is none when stderr is not a terminal)")


def register(subparsers):
    p = _add_parser(
        subparsers, "forward",
        help="susceptibility (ppm) -> local field (ppm) by the dipole model",
        description="Compute the local field (ppm) of a susceptibility map (ppm) with the dipole "
        "convolution (metaqsm.kernels.forward_field), zero padded against wrap-around.\n\n"
        "example:\n  metaqsm forward chi.nii.gz -o field.nii.gz --b0-dir 0 0.34 0.94",
    )
    p.add_argument("chi", help="susceptibility map, NIfTI, ppm (3D)")
    p.add_argument("-o", "--output", required=True, help="output field map (.nii or .nii.gz)")
    _common.add_geometry_args(p)
    p.add_argument("--pad", default="auto", metavar="auto|N",
                   help="zero padding: 'auto' doubles each axis, N adds N voxels per axis")
    p.add_argument("--kernel", default="kspace", metavar="kspace|ispace",
                   help="dipole kernel: analytic in k-space, or discretised in image space")
    _add_quiet_arg(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_forward)

    p = _add_parser(
        subparsers, "invert",
        help="local field (ppm) -> susceptibility (ppm) by a dipole inversion",
        description="Reconstruct a susceptibility map (ppm) from a local field map (ppm, "
        "background removed) inside a brain mask. Writes the map and a JSON sidecar (method, "
        "parameters, inputs, geometry, version) beside it. Options a method does not take are "
        "refused; unset options keep the method's own defaults.\n\n"
        "examples:\n"
        "  metaqsm invert field.nii.gz --mask mask.nii.gz -o chi.nii.gz\n"
        "  metaqsm invert field.nii.gz --mask mask.nii.gz --method tkd --threshold 0.2 -o chi.nii.gz\n"
        "  metaqsm invert field.nii.gz --mask mask.nii.gz --method medi --magnitude mag.nii.gz "
        "--lambda 1000 -o chi.nii.gz",
    )
    p.add_argument("field", help="local field map, NIfTI, ppm (3D)")
    p.add_argument("--mask", required=True, help="brain mask, NIfTI (non-zero = inside)")
    p.add_argument("-o", "--output", required=True, help="output susceptibility map (.nii or .nii.gz)")
    p.add_argument("--method", default=DEFAULT_INVERSION, metavar="NAME",
                   help=f"inversion method, one of: {', '.join(INVERSIONS)} (without torch the "
                   f"default is {PLAIN_DEFAULT_INVERSION})")
    g = p.add_argument_group("method inputs and parameters (default: the method's own)")
    g.add_argument("--magnitude", default=None,
                   help="magnitude NIfTI, same grid as the field (" + ", ".join(
                       n for n, m in INVERSIONS.items() if "magnitude" in m.inputs)
                   + ": edge mask and weights)")
    _common.add_method_option_flags(g, INVERSIONS.values())
    _common.add_geometry_args(p)
    _add_quiet_arg(p)
    _common.add_force_arg(p)
    p.set_defaults(func=run_invert)

    p = _add_parser(
        subparsers, "metrics",
        help="QSM-challenge metrics of a map against a reference, as JSON",
        description="Print RMSE, demeaned NRMSE, HFEN (%), SSIM, XSIM and the correlation of a "
        "susceptibility map against a reference inside a mask as JSON on stdout "
        "(metaqsm.metrics.compute_metrics), with the mean absolute error per label when a "
        "label map is given.\n\n"
        "example:\n  metaqsm metrics chi.nii.gz --reference truth.nii.gz --mask mask.nii.gz",
    )
    p.add_argument("chi", help="susceptibility map to evaluate, NIfTI, ppm (3D)")
    p.add_argument("--reference", required=True, help="reference susceptibility map, NIfTI, ppm")
    p.add_argument("--mask", required=True, help="evaluation mask, NIfTI (non-zero = inside)")
    p.add_argument("--labels", default=None,
                   help="integer label map, NIfTI (0 = none): adds the MAE per label ('regions')")
    p.add_argument("-o", "--output", default=None, help="also write the JSON to this file")
    _common.add_force_arg(p)
    p.set_defaults(func=run_metrics)


# ----------------------------------------------------------------------------- helpers
def _nifti_output(path, flag="-o"):
    p = Path(path)
    if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
        raise ValueError(f"{flag} must end in .nii or .nii.gz, got {path!r}")
    return p


def _parse_pad(value, flag="--pad"):
    if value is None or value == "auto":
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n < 0 or str(value).strip() != str(n):
        raise ValueError(f"{flag} must be 'auto' or a non-negative integer, got {value!r}")
    return n


def _check_inputs_exist(pairs):
    for flag, path in pairs:
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag}: no such file: {path}")


def _write_outputs(image_path, data, volume, json_path, meta, force):
    """Write the image and its sidecar; both appear only once both are complete."""
    from ..io import save_nifti, write_all, write_json

    write_all([(image_path, lambda tmp: save_nifti(tmp, data, volume.affine,
                                                    header=volume.header, force=True)),
               (json_path, lambda tmp: write_json(tmp, meta, force=True))], force=force)


def _shape_str(shape):
    return "x".join(str(n) for n in shape)


# ----------------------------------------------------------------------------- forward
def run_forward(args):
    from tqdm.auto import tqdm

    from ..io import check_output_paths, load_nifti
    from ..io.derivatives import command_line, sidecar
    from ..kernels import forward_field
    from ..pipeline import record_warnings, show_progress

    out = _nifti_output(args.output)
    _common.check_geometry_args(args)
    pad = _parse_pad(args.pad)
    if args.kernel not in ("kspace", "ispace"):
        raise ValueError(f"--kernel must be kspace or ispace, got {args.kernel!r}")
    _check_inputs_exist([("chi", args.chi)])
    json_out = sidecar_path(out)
    check_output_paths([out, json_out], force=args.force)

    # one FFT convolution has no iterations to count: the bar shows which step runs
    bar = tqdm(total=3, desc="metaqsm forward", unit="step", leave=False,
               disable=not show_progress(not args.quiet))
    warned = []
    with bar, record_warnings(warned, "forward"):
        bar.set_postfix_str("read")
        chi = load_nifti(args.chi, name="chi", ndim=3)
        data = as_volume(chi.data, "chi")
        vsz, b0 = _common.geometry(chi, args)
        bar.update()
        bar.set_postfix_str("dipole field")
        t0 = time.perf_counter()
        field = forward_field(data, voxel_size=vsz, b0_dir=b0, pad=pad, method=args.kernel)
        elapsed = time.perf_counter() - t0
        bar.update()
        bar.set_postfix_str("write")
        meta = sidecar(operation="forward", description="Local field of the susceptibility map "
                       "(dipole model)", units="ppm", command_line=command_line(args.argv),
                       method="dipole", parameters={"kernel": args.kernel, "pad": pad},
                       voxel_size=vsz, b0_dir=b0, inputs={"chi": str(args.chi)},
                       timings={"forward": elapsed}, warnings=warned)
        _write_outputs(out, field, chi, json_out, meta, args.force)
        bar.update()
    print(f"metaqsm forward: {_shape_str(data.shape)} voxels in {elapsed:.2f} s -> {out}")
    return 0


# ----------------------------------------------------------------------------- invert
def run_invert(args):
    from ..io import check_output_paths, load_nifti
    from ..io.derivatives import command_line, sidecar, weights_record
    from ..methods import inversion
    from ..pipeline import record_warnings, show_progress

    out = _nifti_output(args.output)
    _common.check_geometry_args(args)
    method = inversion(args.method)
    chosen = _common.method_options_given(args, method, INVERSIONS.values())
    if args.magnitude is not None and "magnitude" not in method.inputs:
        raise ValueError(_common.not_an_option("--magnitude", method))
    for name in ("refine_iter", "refine_mu"):
        if name in chosen and not chosen.get("refine"):
            raise ValueError(f"{method.option(name).cli_flag} sets the refinement, which is off: "
                             "add --refine")
    func = _common.resolve_function(method)
    _check_inputs_exist([("field", args.field), ("--mask", args.mask),
                         ("--magnitude", args.magnitude), ("--weights", chosen.get("weights"))])
    json_out = sidecar_path(out)
    check_output_paths([out, json_out], force=args.force)

    field = load_nifti(args.field, name="field", ndim=3)
    f = as_volume(field.data, "field")
    mask_vol = load_nifti(args.mask, name="--mask", ndim=3)
    if mask_vol.data.shape != f.shape:
        raise ValueError(f"--mask {args.mask} has shape {mask_vol.data.shape}, but the field "
                         f"{args.field} has shape {f.shape}")
    m = as_mask(mask_vol.data, f.shape, "--mask")
    vsz, b0 = _common.geometry(field, args)
    method.check_ready(voxel_size=vsz, options=chosen)  # e.g. a model for this voxel size

    kwargs = dict(chosen)
    if args.magnitude is not None:
        mag = load_nifti(args.magnitude, name="--magnitude", ndim=(3, 4))
        if mag.data.shape[:3] != f.shape:
            raise ValueError(f"--magnitude {args.magnitude} has shape {mag.data.shape}, but the "
                             f"field has shape {f.shape}")
        kwargs["magnitude"] = as_volume(mag.data, "--magnitude", ndim=(3, 4))

    if "progress" in inspect.signature(func).parameters and show_progress(not args.quiet):
        kwargs["progress"] = True  # iteration bar of the iterative methods, interactive use only
    warned = []
    t0 = time.perf_counter()
    with record_warnings(warned, "invert"):
        chi = func(f, m, voxel_size=vsz, b0_dir=b0, **kwargs)
    elapsed = time.perf_counter() - t0
    chi = np.asarray(chi, dtype=np.float32)
    if chi.shape != f.shape:  # a method bug, not a user error: fail loudly before writing
        raise RuntimeError(f"method {args.method!r} returned shape {chi.shape}, expected {f.shape}")

    meta = sidecar(operation="invert", description="Magnetic susceptibility", units="ppm",
                   command_line=command_line(args.argv), method=args.method,
                   parameters={**method.defaults(), **chosen}, voxel_size=vsz, b0_dir=b0,
                   inputs={"field": str(args.field), "mask": str(args.mask),
                           **({"magnitude": str(args.magnitude)} if args.magnitude else {})},
                   weights=weights_record(method, chosen, vsz), timings={"invert": elapsed},
                   warnings=warned)
    _write_outputs(out, chi, field, json_out, meta, args.force)
    print(f"metaqsm invert: {args.method} on {_shape_str(f.shape)} voxels in {elapsed:.2f} s "
          f"-> {out} (+ {json_out.name})")
    return 0


# ----------------------------------------------------------------------------- metrics
def run_metrics(args):
    from ..io import check_output_paths, load_nifti, write_json
    from ..metrics import compute_metrics

    _check_inputs_exist([("chi", args.chi), ("--reference", args.reference),
                         ("--mask", args.mask), ("--labels", args.labels)])
    if args.output is not None:
        check_output_paths([args.output], force=args.force)

    chi = load_nifti(args.chi, name="chi", ndim=3)
    x = as_volume(chi.data, "chi")
    ref = load_nifti(args.reference, name="--reference", ndim=3)
    y = as_volume(ref.data, "--reference")
    if y.shape != x.shape:
        raise ValueError(f"--reference {args.reference} has shape {y.shape}, but chi {args.chi} "
                         f"has shape {x.shape}")
    mask_vol = load_nifti(args.mask, name="--mask", ndim=3)
    if mask_vol.data.shape != x.shape:
        raise ValueError(f"--mask {args.mask} has shape {mask_vol.data.shape}, but chi "
                         f"{args.chi} has shape {x.shape}")
    m = as_mask(mask_vol.data, x.shape, "--mask")
    labels = None
    if args.labels is not None:
        lab = load_nifti(args.labels, name="--labels", ndim=3, dtype=None)
        if lab.data.shape != x.shape:
            raise ValueError(f"--labels {args.labels} has shape {lab.data.shape}, but chi "
                             f"{args.chi} has shape {x.shape}")
        labels = as_volume(lab.data, "--labels", dtype=None)
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ValueError(f"--labels {args.labels} must hold integer values")
        labels = labels.astype(np.int64)

    res = compute_metrics(x, y, m, labels=labels)
    ordered = {k: res[k] for k in METRIC_KEYS}
    if "regions" in res:
        ordered["regions"] = {str(k): v for k, v in res["regions"].items()}
    text = json.dumps(ordered, indent=2)
    if args.output is not None:
        write_json(args.output, ordered, force=args.force)
    sys.stdout.write(text + "\n")
    return 0
