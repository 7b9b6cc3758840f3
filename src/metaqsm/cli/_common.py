"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse

import numpy as np

from .._validate import as_b0_dir, as_voxel_size


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults in --help (except None and flags) and keep the description's line breaks."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_parser(subparsers, name, **kwargs):
    kwargs.setdefault("formatter_class", DefaultsFormatter)
    return subparsers.add_parser(name, **kwargs)


def add_geometry_args(parser):
    parser.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="voxel size in mm (default: from the NIfTI header)")
    parser.add_argument("--b0-dir", type=float, nargs=3, metavar=("X", "Y", "Z"), default=None,
                        help="B0 direction in voxel coordinates (default: from the affine)")


def add_force_arg(parser):
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")


def check_geometry_args(args):
    """Fail early on a bad --voxel-size / --b0-dir, before any file is read."""
    if getattr(args, "voxel_size", None) is not None:
        as_voxel_size(args.voxel_size, "--voxel-size")
    if getattr(args, "b0_dir", None) is not None:
        as_b0_dir(args.b0_dir, "--b0-dir")


def geometry(volume, args):
    """Voxel size and B0 direction: the command line overrides the header/affine."""
    vsz = volume.voxel_size if args.voxel_size is None else as_voxel_size(args.voxel_size, "--voxel-size")
    b0 = volume.b0_dir if args.b0_dir is None else as_b0_dir(args.b0_dir, "--b0-dir")
    return np.asarray(vsz, float), np.asarray(b0, float)


# ----------------------------------------------------------------------------- method options
def _union_options(methods):
    """Option name -> (Option, [method names]) over ``methods``; one flag and type per name."""
    table = {}
    for m in methods:
        for opt in m.options:
            if opt.name in table:
                first = table[opt.name][0]
                if (first.cli_flag, first.type) != (opt.cli_flag, opt.type):  # a table bug
                    raise RuntimeError(f"option {opt.name!r} has two flags or types in the "
                                       "method table")
                table[opt.name][1].append(m.name)
            else:
                table[opt.name] = (opt, [m.name])
    return table


def add_method_option_flags(group, methods):
    """One flag per option of the registered ``methods`` (the help names who takes it)."""
    for opt, names in _union_options(methods).values():
        kwargs = {"dest": opt.name, "default": None, "help": f"{opt.help} ({', '.join(names)})"}
        if opt.type == "bool":  # --crop / --no-crop: either way, whatever the default
            kwargs.update(action=argparse.BooleanOptionalAction)
        else:
            kwargs["metavar"] = {"pad": "auto|N", "device": "cpu|cuda", "path": "FILE",
                                 "floats": "R1,R2,..."}.get(opt.type, opt.type.upper())
        group.add_argument(opt.cli_flag, **kwargs)


def not_an_option(flag, method, extra=()):
    """The message for ``flag`` set with a ``method`` that does not take it."""
    takes = [*extra, *(o.cli_flag for o in method.options)]
    return (f"{flag} is not an option of method {method.name!r} "
            f"(it takes: {', '.join(takes) or 'none of the method options'})")


def method_options_given(args, method, methods):
    """The options of ``method`` set on the command line, typed and checked: values first (in
    flag words), then whether ``method`` takes them. Returns name -> value."""
    from ..methods import check_option_value, parse_option_value

    given = {}
    for opt, _ in _union_options(methods).values():
        value = getattr(args, opt.name, None)
        if value is None:
            continue
        try:
            value = parse_option_value(opt, value) if isinstance(value, str) else \
                check_option_value(opt, value)
        except ValueError as exc:
            raise ValueError(str(exc).replace(opt.name, opt.cli_flag, 1)) from None
        given[opt.name] = (opt, value)
    extra = ["--magnitude"] if "magnitude" in method.inputs else []
    for name, (opt, value) in given.items():
        if name not in {o.name for o in method.options}:
            raise ValueError(not_an_option(opt.cli_flag, method, extra))
    return {name: value for name, (_, value) in given.items()}


def resolve_function(method, flag="--method"):
    """Import a registered method's function; a missing torch becomes a one-line error."""
    try:
        return method.function()
    except ImportError as exc:
        hint = " (install the deep-learning extra: pip install 'metaqsm[dl]')" \
            if getattr(exc, "name", "") in ("torch", "safetensors") else ""
        raise ValueError(f"{flag} {method.name} is not available: {exc}{hint}") from None
