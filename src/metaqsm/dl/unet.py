"""The two networks of the paper: Meta-QSM (every convolution a WP-Conv) and Mesa-QSM (plain
convolutions), on one 3D encoder-decoder U-Net.

Both take the local field in ppm and return the susceptibility in ppm, with one calling
convention, ``model(x, voxel_size, b0_dir=None)``:

* ``x``: (batch, 1, X, Y, Z) local field in ppm, any X, Y, Z (padded with zeros to a multiple of
  ``2**depth`` and cropped back);
* ``voxel_size``: (batch, 3) or (3,) tensor/array in mm;
* ``b0_dir``: (batch, 3) or (3,) B0 direction in voxel coordinates (default: the third axis).

Mesa-QSM accepts and ignores the geometry.

References
----------
Ronneberger O, Fischer P, Brox T. U-Net: convolutional networks for biomedical image
segmentation. MICCAI 2015, LNCS 9351:234-241.
Yoon J, Gong E, Chatnuntawech I, et al. Quantitative susceptibility mapping using deep neural
network: QSMnet. NeuroImage 2018;179:199-206.
Bollmann S, Rasmussen KGB, Kristensen M, et al. DeepQSM - using deep learning to solve the dipole
inversion for quantitative susceptibility mapping. NeuroImage 2019;195:373-383.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv3d, DoubleConv, Geometry, WPConv3d
from .registry import register_model

__all__ = ["MetaQSM", "MesaQSM", "count_parameters"]


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _QSMUNet(nn.Module):
    """The U-Net shared by both networks; subclasses choose the convolution.

    Per level: two (3x3x3 convolution, BatchNorm, ReLU) units; 2x2x2 max-pooling down;
    a 1x1x1 convolution and trilinear x2 upsampling up; concatenation of the skip
    connection; a final 1x1x1 convolution to one channel. Widths ``base * 2**level``,
    ``level = 0 .. depth`` (the bottleneck is level ``depth``).
    """

    model_name = None

    def __init__(self, *, depth, base, input_scale, output_scale):
        super().__init__()
        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        if int(base) != base or base < 1:
            raise ValueError(f"base must be a positive integer, got {base!r}")
        for name, val in (("input_scale", input_scale), ("output_scale", output_scale)):
            if not val > 0:
                raise ValueError(f"{name} must be positive, got {val!r}")
        self.depth = int(depth)
        self.base = int(base)
        self.input_scale = float(input_scale)
        self.output_scale = float(output_scale)
        widths = [self.base * 2 ** level for level in range(self.depth + 1)]
        conv = self._conv
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(DoubleConv(cin, w, conv))
            cin = w
        self.up_conv = nn.ModuleList()
        self.up_block = nn.ModuleList()
        for level in reversed(range(self.depth)):
            self.up_conv.append(conv(widths[level + 1], widths[level], 1))
            self.up_block.append(DoubleConv(2 * widths[level], widths[level], conv))
        self.head = conv(widths[0], 1, 1)
        # channels-last (NDHWC) activations and kernels: oneDNN and cuDNN convolutions run about
        # 20-30% faster on them than on NCDHW
        self.to(memory_format=torch.channels_last_3d)

    def _conv(self, cin, cout, k, bias=True):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def config(self):
        """Constructor arguments: ``type(model)(**model.config)`` rebuilds the architecture."""
        params = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in params if name != "self"}

    @property
    def divisor(self):
        """Spatial sizes are padded to a multiple of this (``2**depth``)."""
        return 2 ** self.depth

    def _geometry(self, x, voxel_size, b0_dir):
        return Geometry.coerce(voxel_size, b0_dir, x)

    def forward(self, x, voxel_size=None, b0_dir=None):
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != 1:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (batch, 1, X, Y, Z) (field in ppm), got {shape}")
        geom = self._geometry(x, voxel_size, b0_dir)
        size = x.shape[2:]
        d = self.divisor
        pad = [(-n) % d for n in size]
        h = x * self.input_scale
        if any(pad):
            h = F.pad(h, (0, pad[2], 0, pad[1], 0, pad[0]))
        h = h.contiguous(memory_format=torch.channels_last_3d if geom is None else geom.memory_format)
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                h = F.max_pool3d(h, 2)
            h = block(h, geom)
            skips.append(h)
        skips.pop()
        for up, block in zip(self.up_conv, self.up_block):
            # the 1x1x1 convolution commutes with linear interpolation: apply it first, on the
            # coarse grid, where it is 8 times cheaper and halves the channels to interpolate
            h = F.interpolate(up(h, geom), scale_factor=2, mode="trilinear", align_corners=False)
            h = block(torch.cat([skips.pop(), h], dim=1), geom)
        out = self.head(h, geom) / self.output_scale
        if any(pad):
            out = out[:, :, :size[0], :size[1], :size[2]]
        return out.contiguous()


@register_model("meta")
class MetaQSM(_QSMUNet):
    """Meta-QSM: the U-Net with every convolution a :class:`~metaqsm.dl.layers.WPConv3d`.

    Parameters
    ----------
    depth : int
        Number of 2x2x2 poolings (inputs are padded to a multiple of ``2**depth``). Default 4.
    base : int
        Channels of the first level; level ``l`` has ``base * 2**l``. Default 32.
    basis : int
        Basis kernels per WP-Conv (``h``). Default 2, which keeps the default network near 64
        million parameters (about ``basis + 1`` times the plain U-Net).
    hidden : int
        Hidden width of each WP-Conv's predictor. Default 32.
    basis_gain : float
        Initial share of the kernel standard deviation carried by the basis (default 0.5).
    input_scale : float
        The field (ppm) is multiplied by this on the way in (default 10: 0.01-0.1 ppm -> 0.1-1).
    output_scale : float
        The network's output is divided by this to give ppm (default 10).

    References
    ----------
    Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction (Koch KM et al.),
    section 2.2; Hu X et al., Meta-SR, CVPR 2019.
    """

    def __init__(self, *, depth: int = 4, base: int = 32, basis: int = 2, hidden: int = 32,
                 basis_gain: float = 0.5, input_scale: float = 10.0, output_scale: float = 10.0):
        self.basis = int(basis)
        self.hidden = int(hidden)
        self.basis_gain = float(basis_gain)
        super().__init__(depth=depth, base=base, input_scale=input_scale, output_scale=output_scale)

    def _conv(self, cin, cout, k, bias=True):
        return WPConv3d(cin, cout, k, hidden=self.hidden, basis=self.basis, bias=bias,
                        basis_gain=self.basis_gain)


@register_model("mesa")
class MesaQSM(_QSMUNet):
    """Mesa-QSM: the same U-Net with plain convolutions, one network per resolution (the paper's
    baseline, section 3.2). Accepts and ignores ``voxel_size`` and ``b0_dir``.

    Parameters
    ----------
    depth, base, input_scale, output_scale :
        As in :class:`MetaQSM` (defaults 4, 32, 10, 10).
    """

    def __init__(self, *, depth: int = 4, base: int = 32, input_scale: float = 10.0,
                 output_scale: float = 10.0):
        super().__init__(depth=depth, base=base, input_scale=input_scale, output_scale=output_scale)

    def _conv(self, cin, cout, k, bias=True):
        return Conv3d(cin, cout, k, bias=bias)

    def _geometry(self, x, voxel_size, b0_dir):
        return None
