"""Simulation: analytic phantoms, complete multi-echo acquisitions and synthetic training data.

Submodules are imported lazily so that ``import metaqsm.simulate`` stays cheap.
"""

from __future__ import annotations

import lazy_loader

# submodule -> the names it exports; imported on first use (scikit-image's lazy_loader)
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "phantoms": ["brain_phantom", "Phantom"],
    "synth": ["SynthConfig", "generate_sample"],
    "testsets": ["TESTSETS", "testset_sample"],
    "acquisition": ["Acquisition", "simulate_acquisition", "head_model", "reduce_resolution", "shim"],
})
