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

import lazy_loader

# submodule -> the names it exports; imported on first use (scikit-image's lazy_loader)
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "layers": ["WPConv3d", "Geometry", "geometry_features", "FEATURE_NAMES"],
    "unet": ["MetaQSM", "MesaQSM", "count_parameters"],
    "registry": ["MODELS", "register_model", "build_model", "save_checkpoint", "load_checkpoint",
                 "load_model"],
    "infer": ["reconstruct", "invert_meta", "invert_mesa"],
    "unrolled": ["MetaUnrolled", "invert_meta_unrolled"],
})
