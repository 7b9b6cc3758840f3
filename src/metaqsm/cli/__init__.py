"""The ``metaqsm`` command.

Subcommands live in modules named ``cmd_*.py`` in this package; each defines
``register(subparsers)`` which adds its parsers and sets ``func`` (``args -> int``) on them.
Handlers import heavy dependencies (torch) lazily, so ``metaqsm --help`` and every classical
command work without torch.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .._version import __version__

EXIT_USAGE = 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="metaqsm",
        description="Quantitative Susceptibility Mapping: from multi-echo gradient-echo scans to "
        "susceptibility maps (ppm).",
    )
    parser.add_argument("--version", action="version", version=f"metaqsm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            module.register(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (tests call this directly)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, NotADirectoryError,
            KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"metaqsm {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"metaqsm {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
