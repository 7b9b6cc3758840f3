"""Simulation: analytic phantoms, complete multi-echo acquisitions and synthetic training data.

Submodules are imported lazily so that ``import metaqsm.simulate`` stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "brain_phantom": "phantoms",
    "Phantom": "phantoms",
    "SynthConfig": "synth",
    "generate_sample": "synth",
    "TESTSETS": "testsets",
    "testset_sample": "testsets",
    "Acquisition": "acquisition",
    "simulate_acquisition": "acquisition",
    "head_model": "acquisition",
    "reduce_resolution": "acquisition",
    "shim": "acquisition",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
