"""The training loss of the paper: L1 between prediction and truth, plus an L2 term on the
weights the paper regularises."""

from __future__ import annotations

import torch

from ..layers import Conv3d, WPConv3d

__all__ = ["masked_l1", "regularization"]


def masked_l1(pred, target, mask=None):
    """Mean absolute error, over ``mask`` (> 0) when given, else over every voxel."""
    if mask is None:
        return (pred - target).abs().mean()
    m = (mask > 0).to(pred.dtype)
    return ((pred - target).abs() * m).sum() / m.sum().clamp_min(1.0)


def regularization(model):
    """Sum of squares of the parameters the paper's L2 term acts on.

    Meta-QSM: every WP-Conv's predictor weight matrices and the basis (the weights of the
    layer that maps the code to the kernel); the base kernel and biases are the biases of that
    fully connected layer, which Keras' ``kernel_regularizer`` leaves alone. Mesa-QSM: the
    convolution kernels.
    """
    total = None
    for m in getattr(model, "module", model).modules():
        if isinstance(m, WPConv3d):
            params = [m.weight_basis] + [p for n, p in m.predictor.named_parameters() if n.endswith("weight")]
            if m.bias_basis is not None:
                params.append(m.bias_basis)
        elif isinstance(m, Conv3d):
            params = [m.weight]
        else:
            continue
        for p in params:
            s = p.float().pow(2).sum()
            total = s if total is None else total + s
    if total is None:
        return torch.zeros(())
    return total
