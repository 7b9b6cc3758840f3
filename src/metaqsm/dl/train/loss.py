"""The training loss of the paper: L1 between prediction and truth, plus an L2 term on the
weights the paper regularises; and a structural-similarity term (not in the paper) that
penalises the loss of contrast an L1 fit leaves under uncertainty."""

from __future__ import annotations

import torch

from ...metrics import gaussian_window
from ..layers import Conv3d, WPConv3d

__all__ = ["masked_l1", "masked_ssim", "regularization"]


def masked_l1(pred, target, mask=None):
    """Mean absolute error, over ``mask`` (> 0) when given, else over every voxel."""
    if mask is None:
        return (pred - target).abs().mean()
    m = (mask > 0).to(pred.dtype)
    return ((pred - target).abs() * m).sum() / m.sum().clamp_min(1.0)


def masked_ssim(pred, target, mask):
    """Mean SSIM over ``mask`` of each prediction against its truth, on the truth's own scale.

    Both maps are multiplied by the mask and mapped by ``(v - lo) / (hi - lo)`` with ``lo``,
    ``hi`` the truth's minimum and maximum in the patch (constants: the prediction cannot widen
    the range, as it can in the 2016 challenge's joint rescaling), then SSIM with the
    challenges' window (Gaussian, sigma 1.5 voxels, 7 x 7 x 7, zero padding; the window of
    :func:`metaqsm.metrics.gaussian_window`), K = (0.01, 0.03), L = 1, averaged over the mask.
    Equals ``metrics._ssim_from_moments`` with that shift and scale (tested).

    Parameters
    ----------
    pred, target, mask : (B, 1, X, Y, Z) tensors

    Returns
    -------
    tensor of shape (B,)
        SSIM of each sample (1 for identical maps); samples with an empty mask give 1.
    """
    m = (mask > 0).to(pred.dtype)
    x, y = pred * m, target * m
    dims = (1, 2, 3, 4)
    lo = y.detach().amin(dim=dims, keepdim=True)
    hi = y.detach().amax(dim=dims, keepdim=True)
    span = (hi - lo).clamp_min(1e-12)
    w = torch.as_tensor(gaussian_window(), dtype=pred.dtype, device=pred.device)
    k = w.numel()

    def smooth(a):  # separable correlation with the window, zero padding beyond the patch
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = k
            pad = [0, 0, 0]
            pad[axis] = k // 2
            a = torch.nn.functional.conv3d(a, w.view(shape), padding=tuple(pad))
        return a

    xs, ys = (x - lo) / span, (y - lo) / span
    mu1, mu2 = smooth(xs), smooth(ys)
    exx, eyy, exy = smooth(xs * xs), smooth(ys * ys), smooth(xs * ys)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu12 = mu1 * mu2
    num = (2 * mu12 + c1) * (2 * (exy - mu12) + c2)
    den = (mu1 * mu1 + mu2 * mu2 + c1) * ((exx - mu1 * mu1) + (eyy - mu2 * mu2) + c2)
    smap = num / den
    count = m.sum(dim=dims)
    out = (smap * m).sum(dim=dims) / count.clamp_min(1.0)
    return torch.where(count > 0, out, torch.ones_like(out))


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
