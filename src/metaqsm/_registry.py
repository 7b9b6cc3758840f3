"""Lazy name -> function registries (inversion and background removal methods)."""

from __future__ import annotations

import importlib


def resolve(methods, name):
    """Import and return ``methods[name]`` (a "module:function" path relative to metaqsm).

    Raises ``ValueError`` naming the known methods for an unknown name.
    """
    if name not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, got {name!r}")
    module, func = methods[name].split(":")
    return getattr(importlib.import_module(f"metaqsm.{module}"), func)
