"""Deep-learning dipole inversion: the Meta-QSM and Mesa-QSM networks, training and inference.

Needs torch (``pip install metaqsm[dl]``). Public API::

    WPConv3d, MetaQSM, MesaQSM          the weight-prediction convolution and the two networks
    load_model(name_or_path, device)    a checkpoint file or a shipped model ("meta", ...)
    save_checkpoint(path, model, extra) name + config + weights in one safetensors file
    reconstruct(model, field, mask, *, voxel_size, b0_dir, ...)  NumPy field (ppm) -> chi (ppm)

Submodules are imported on first use (the synthetic data module in particular is never imported
by the networks or by inference).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "WPConv3d": "layers",
    "Geometry": "layers",
    "geometry_features": "layers",
    "FEATURE_NAMES": "layers",
    "MetaQSM": "unet",
    "MesaQSM": "unet",
    "count_parameters": "unet",
    "MODELS": "registry",
    "register_model": "registry",
    "build_model": "registry",
    "save_checkpoint": "registry",
    "load_checkpoint": "registry",
    "load_model": "registry",
    "reconstruct": "infer",
    "invert_meta": "infer",
    "invert_mesa": "infer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
