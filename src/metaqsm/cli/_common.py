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


def geometry(volume, args):
    """Voxel size and B0 direction: the command line overrides the header/affine."""
    vsz = volume.voxel_size if args.voxel_size is None else as_voxel_size(args.voxel_size, "--voxel-size")
    b0 = volume.b0_dir if args.b0_dir is None else as_b0_dir(args.b0_dir, "--b0-dir")
    return np.asarray(vsz, float), np.asarray(b0, float)
