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
import re
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


def _flags(parser, command):
    """Python argument name -> command-line flag for the subcommand ``command``: each option's
    destination, plus the ``flag_aliases`` a command sets for library arguments whose name
    differs from its flag (e.g. ``inversion_method`` -> ``--method``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for action in sub.choices[command]._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            out[action.dest] = longs[0]
    return out


_LEADING_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?=[\s:])")
_KEYWORD_TRUE = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)=True\b")  # "use force=True" -> "use --force"
_SNAKE_NAME = re.compile(r"(?<![\w.'\"-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w'\"])")


def translate(message, flags):
    """Library errors name Python arguments (``lam must be positive``); a user of the command
    line reads its flags (``--lambda must be positive``). The leading name is mapped, any
    snake_case argument name further on (``pass echo_times`` -> ``pass --echo-times``), and a
    switch written as a keyword (``use force=True`` -> ``use --force``)."""
    text = str(message)
    m = _LEADING_NAME.match(text)
    if m and m.group(1) in flags:
        text = flags[m.group(1)] + text[m.end():]
    text = _KEYWORD_TRUE.sub(lambda g: flags.get(g.group(1), g.group(0)), text)
    return _SNAKE_NAME.sub(lambda g: flags.get(g.group(1), g.group(1)), text)


def _show_warning(parser, args, default, message, category, *rest, **kwargs):
    """metaqsm's own warnings as one line in the command's words, others as Python shows them."""
    from .._validate import MetaqsmWarning

    if issubclass(category, MetaqsmWarning):
        flags = {**_flags(parser, args.command), **getattr(args, "flag_aliases", {})}
        print(f"metaqsm {args.command}: warning: {translate(message, flags)}", file=sys.stderr)
    else:
        default(message, category, *rest, **kwargs)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (tests call this directly)."""
    import functools
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the sidecars and logs record it
    with warnings.catch_warnings():  # restores the way warnings are shown when done
        warnings.showwarning = functools.partial(_show_warning, parser, args,
                                                 warnings.showwarning)
        return _run(parser, args)


def _run(parser, args):
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, NotADirectoryError,
            KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        flags = {**_flags(parser, args.command), **getattr(args, "flag_aliases", {})}
        print(f"metaqsm {args.command}: error: {translate(msg, flags)}", file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as exc:  # e.g. a read-only output folder
        print(f"metaqsm {args.command}: error: permission denied: {exc.filename or exc}; "
              "nothing was written", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"metaqsm {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
