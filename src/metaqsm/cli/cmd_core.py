"""The core commands: ``forward`` (susceptibility -> field), ``invert`` (field -> susceptibility)
and ``metrics`` (QSM-challenge metrics against a reference, as JSON).

Every handler checks its arguments and paths before any work starts, and writes its outputs only
at the end, atomically (temporary files renamed into place), so a failure leaves no output.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from .._validate import as_b0_dir, as_int, as_mask, as_positive, as_volume, as_voxel_size
from .._version import __version__
from ..io.derivatives import sidecar_path
from . import _common

# The method `metaqsm invert` uses without --method (becomes "meta" once the shipped network lands).
from ..inversion import DEFAULT_METHOD  # noqa: E402  (one default for every command)

# CLI option dest -> (flag, names the inversion's keyword may have). Only the options the chosen
# method's signature accepts are passed; setting any other one is an error.
METHOD_OPTIONS = {
    "threshold": ("--threshold", ("threshold",)),
    "lam": ("--lambda", ("lam", "lambda_", "lmbda")),
    "max_iter": ("--max-iter", ("max_iter",)),
    "tol": ("--tol", ("tol",)),
    "magnitude": ("--magnitude", ("magnitude",)),
    "field_strength": ("--field-strength", ("field_strength",)),
    "weights": ("--weights", ("weights", "checkpoint")),
    "device": ("--device", ("device",)),
    "regulariser": ("--regulariser", ("regulariser", "regularizer")),
    "pad": ("--pad", ("pad",)),
    "refine": ("--refine", ("refine",)),
    "refine_iter": ("--refine-iter", ("refine_iter",)),
    "refine_mu": ("--refine-mu", ("refine_mu",)),
}

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


def register(subparsers):
    from ..inversion import METHODS

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
    p.add_argument("--method", default=DEFAULT_METHOD, metavar="NAME",
                   help=f"inversion method, one of: {', '.join(METHODS)}")
    g = p.add_argument_group("method parameters (default: the method's own)")
    g.add_argument("--threshold", type=float, default=None,
                   help="truncation threshold of |D| (tkd, tsvd)")
    g.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="regularisation weight (tikhonov, medi, tv)")
    g.add_argument("--max-iter", dest="max_iter", type=int, default=None,
                   help="maximum number of iterations (iterative methods)")
    g.add_argument("--tol", type=float, default=None, help="stopping tolerance (iterative methods)")
    g.add_argument("--magnitude", default=None,
                   help="magnitude NIfTI, same grid as the field (medi: edge mask and weights)")
    g.add_argument("--field-strength", dest="field_strength", type=float, default=None,
                   help="main field in tesla (methods that convert ppm to radians)")
    g.add_argument("--weights", default=None,
                   help="network checkpoint (meta, mesa; default: the shipped one)")
    g.add_argument("--device", default=None, metavar="cpu|cuda",
                   help="device for the networks (meta, mesa)")
    g.add_argument("--refine", action="store_const", const=True, default=None,
                   help="meta, mesa: pull the network's map towards the field with a few CG "
                        "iterations of ||M (D chi - f)||^2 + mu ||chi - chi_net||^2 (off by "
                        "default)")
    g.add_argument("--refine-iter", dest="refine_iter", type=int, default=None,
                   help="CG iterations of --refine (default 10)")
    g.add_argument("--refine-mu", dest="refine_mu", type=float, default=None,
                   help="proximity weight mu of --refine (default 0.01)")
    g.add_argument("--regulariser", default=None,
                   help="regulariser (tikhonov: identity, gradient or laplacian)")
    g.add_argument("--pad", default=None, metavar="auto|N",
                   help="zero padding of the FFT grid: 'auto' doubles each axis, N adds N voxels")
    _common.add_geometry_args(p)
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


def _check_geometry_args(args):
    """Fail early on a bad --voxel-size / --b0-dir, before any file is read."""
    if args.voxel_size is not None:
        as_voxel_size(args.voxel_size, "--voxel-size")
    if args.b0_dir is not None:
        as_b0_dir(args.b0_dir, "--b0-dir")


def _check_inputs_exist(pairs):
    for flag, path in pairs:
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag}: no such file: {path}")


def _write_outputs(image_path, data, volume, json_path, sidecar, force):
    """Write the image and its sidecar; both appear only once both are complete."""
    from ..io import atomic_path, save_nifti, write_json

    with contextlib.ExitStack() as stack:
        tmp_img = stack.enter_context(atomic_path(image_path, force=force))
        tmp_json = stack.enter_context(atomic_path(json_path, force=force))
        save_nifti(tmp_img, data, volume.affine, header=volume.header, force=True)
        write_json(tmp_json, sidecar, force=True)


def _shape_str(shape):
    return "x".join(str(n) for n in shape)


# ----------------------------------------------------------------------------- forward
def run_forward(args):
    from ..io import check_output_paths, load_nifti
    from ..kernels import forward_field

    out = _nifti_output(args.output)
    _check_geometry_args(args)
    pad = _parse_pad(args.pad)
    if args.kernel not in ("kspace", "ispace"):
        raise ValueError(f"--kernel must be kspace or ispace, got {args.kernel!r}")
    _check_inputs_exist([("chi", args.chi)])
    json_out = sidecar_path(out)
    check_output_paths([out, json_out], force=args.force)

    chi = load_nifti(args.chi, name="chi", ndim=3)
    data = as_volume(chi.data, "chi")
    vsz, b0 = _common.geometry(chi, args)
    t0 = time.perf_counter()
    field = forward_field(data, voxel_size=vsz, b0_dir=b0, pad=pad, method=args.kernel)
    elapsed = time.perf_counter() - t0
    sidecar = {
        "Operation": "forward",
        "Units": "ppm",
        "Kernel": args.kernel,
        "Pad": pad,
        "Inputs": {"chi": str(args.chi)},
        "VoxelSize": vsz,
        "B0Dir": b0,
        "ElapsedSeconds": round(elapsed, 3),
        "MetaqsmVersion": __version__,
    }
    _write_outputs(out, field, chi, json_out, sidecar, args.force)
    print(f"metaqsm forward: {_shape_str(data.shape)} voxels in {elapsed:.2f} s -> {out}")
    return 0


# ----------------------------------------------------------------------------- invert
def _method_kwargs(name, func, args):
    """The keyword arguments of ``func`` set on the command line (dest -> (param, value))."""
    params = inspect.signature(func).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    chosen = {}
    for dest, (flag, names) in METHOD_OPTIONS.items():
        param = next((n for n in names if n in params), None)
        if param is None and var_kw:
            param = names[0]
        value = getattr(args, dest)
        if value is None:
            continue
        if param is None:
            takes = ", ".join(accepted_flags(params, var_kw)) or "none of the method options"
            raise ValueError(f"{flag} is not an option of method {name!r} (it takes: {takes})")
        chosen[dest] = (param, value)
    return chosen


def effective_parameters(func, given):
    """The parameters a run used: the method's keyword defaults (plain values only) updated by
    those ``given`` on the command line, for the sidecar."""
    out = {}
    for name, p in inspect.signature(func).parameters.items():
        if (p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty
                or name in ("voxel_size", "b0_dir", "progress")):
            continue
        v = list(p.default) if isinstance(p.default, tuple) else p.default
        if v is None or isinstance(v, (bool, int, float, str, list)):
            out[name] = v
    out.update(given)
    return out


def accepted_flags(params, var_kw=False):
    """The CLI flags a method with signature parameters ``params`` accepts."""
    return [flag for flag, names in METHOD_OPTIONS.values()
            if var_kw or any(n in params for n in names)]


def _resolve_method(name):
    from ..inversion import METHODS, get_method

    if name not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {name!r}")
    try:
        return get_method(name)
    except ImportError as exc:
        hint = " (install the deep-learning extra: pip install 'metaqsm[dl]')" \
            if getattr(exc, "name", "") in ("torch", "safetensors") else ""
        raise ValueError(f"--method {name} is not available: {exc}{hint}") from None


def run_invert(args):
    from ..io import check_output_paths, load_nifti

    out = _nifti_output(args.output)
    _check_geometry_args(args)
    args.pad = _parse_pad(args.pad)
    if args.field_strength is not None:
        as_positive(args.field_strength, "--field-strength")
    if args.device is not None and not (args.device == "cpu" or args.device.startswith("cuda")):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    func = _resolve_method(args.method)
    chosen = _method_kwargs(args.method, func, args)
    for dest, flag in (("refine_iter", "--refine-iter"), ("refine_mu", "--refine-mu")):
        if dest in chosen and not args.refine:
            raise ValueError(f"{flag} sets the refinement, which is off: add --refine")
    if args.refine_iter is not None:
        as_int(args.refine_iter, "--refine-iter", minimum=1)
    if args.refine_mu is not None:
        as_positive(args.refine_mu, "--refine-mu")
    _check_inputs_exist([("field", args.field), ("--mask", args.mask),
                         ("--magnitude", args.magnitude), ("--weights", args.weights)])
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

    kwargs, recorded = {}, {}
    for dest, (param, value) in chosen.items():
        if dest == "magnitude":
            mag = load_nifti(value, name="--magnitude", ndim=(3, 4))
            if mag.data.shape[:3] != f.shape:
                raise ValueError(f"--magnitude {value} has shape {mag.data.shape}, but the field "
                                 f"has shape {f.shape}")
            kwargs[param] = as_volume(mag.data, "--magnitude", ndim=(3, 4))
        else:
            kwargs[param] = value
        recorded[param] = value

    if "progress" in inspect.signature(func).parameters and sys.stderr.isatty():
        kwargs["progress"] = True  # iteration bar of the iterative methods, interactive use only
    t0 = time.perf_counter()
    chi = func(f, m, voxel_size=vsz, b0_dir=b0, **kwargs)
    elapsed = time.perf_counter() - t0
    chi = np.asarray(chi, dtype=np.float32)
    if chi.shape != f.shape:  # a method bug, not a user error: fail loudly before writing
        raise RuntimeError(f"method {args.method!r} returned shape {chi.shape}, expected {f.shape}")

    sidecar = {
        "Operation": "invert",
        "Method": args.method,
        "Parameters": effective_parameters(func, recorded),
        "Units": "ppm",
        "Inputs": {"field": str(args.field), "mask": str(args.mask),
                   **({"magnitude": str(args.magnitude)} if args.magnitude else {})},
        "VoxelSize": vsz,
        "B0Dir": b0,
        "ElapsedSeconds": round(elapsed, 3),
        "MetaqsmVersion": __version__,
    }
    _write_outputs(out, chi, field, json_out, sidecar, args.force)
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
