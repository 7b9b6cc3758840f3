"""The two networks of the paper: Meta-QSM (every convolution a WP-Conv) and Mesa-QSM (plain
convolutions), on one 3D encoder-decoder U-Net.

Both take the local field in ppm and return the susceptibility in ppm, with one calling
convention, ``model(x, voxel_size, b0_dir=None)``:

* ``x``: (batch, 1, X, Y, Z) local field in ppm, any X, Y, Z (padded with zeros to a multiple of
  ``2**depth`` and cropped back);
* ``voxel_size``: (batch, 3) or (3,) tensor/array in mm;
* ``b0_dir``: (batch, 3) or (3,) B0 direction in voxel coordinates (default: the third axis).

Mesa-QSM accepts and ignores the geometry (except for the optional physics prior below).

Optional physics prior (``prior="tkd"``, not in the paper; off by default): the network also
receives the truncated k-space division (TKD, threshold 0.2) of its input, computed with the
core's dipole kernel at the given voxel size and B0 direction, and predicts a correction to it
(``chi = TKD(x) + U-Net([x, TKD(x)])``, the last convolution initialised to zero so that an
untrained network returns TKD). It lets a network trained for a few CPU hours start from a
classical reconstruction instead of from nothing; the reasoning and the measurements are in
docs/networks.md and docs/model-card.md.

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

import torch
import torch.nn.functional as F
from torch import nn

from ..inversion.direct import tkd_inverse_kernel
from ..kernels import dipole_kernel
from .layers import ConfigMixin, Conv3d, DoubleConv, Geometry, WPConv3d
from .registry import register_model

__all__ = ["MetaQSM", "MesaQSM", "count_parameters", "tkd_prior", "PRIORS", "CORRECTION_MEANS",
           "FIELD_RMS_REF"]

#: Names of the physics priors a network can take (see the module docstring).
PRIORS = ("none", "tkd")
#: Typical root-mean-square of a local field inside the brain, ppm (the median over the CPU
#: models' training patches, 0.014; 10-90 %: 0.007-0.035): the amplitude a scale-equivariant
#: network sees every field at (``scale_equivariant``).
FIELD_RMS_REF = 0.014
#: What the correction to the prior may do to the mean (see ``correction_mean``).
CORRECTION_MEANS = ("free", "zero")
#: Truncation level of the TKD prior (the paper's TKD threshold).
PRIOR_THRESHOLD = 0.2


def tkd_prior(x, geometry, threshold=PRIOR_THRESHOLD):
    """TKD of a batch of fields, each at its own geometry (no padding, the whole grid).

    ``x``: (batch, 1, X, Y, Z) field in ppm; ``geometry``: a :class:`~metaqsm.dl.layers.Geometry`.
    Same convention as :func:`metaqsm.inversion.tkd` with ``pad=0`` and no mask (``1/D`` where
    ``|D| >= threshold``, ``sign(D)/threshold`` elsewhere) except at k = 0, which is set to zero
    instead of ``1/threshold``: the prior has zero mean, since the mean susceptibility is not
    determined by the field, and a mean scaled by 5 is an offset that a network of limited
    receptive field cannot undo. No gradient flows through it (it is an input, not a learned
    layer). Returns float32, same shape as ``x``.
    """
    shape = tuple(int(n) for n in x.shape[2:])
    dims = (-3, -2, -1)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    with torch.no_grad():
        for idx in geometry.groups:
            i0 = int(idx[0])
            inv = tkd_inverse_kernel(dipole_kernel(shape, voxel_size=geometry.voxel_size[i0].tolist(),
                                                   b0_dir=geometry.b0_dir[i0].tolist(), rfft=True),
                                     threshold)
            inv[0, 0, 0] = 0.0  # the mean: not determined by the field (D(0) = 0)
            inv = torch.from_numpy(inv).to(x.device)
            idx = idx.to(x.device)
            spec = torch.fft.rfftn(x[idx, 0].float(), dim=dims)
            out[idx, 0] = torch.fft.irfftn(spec * inv, s=shape, dim=dims)
    return out


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)



def unet_pass(h, down, up_conv, up_block, geom):
    """The U-Net's encoder and decoder (before the head): ``down`` blocks with 2x max pooling
    between them, then per level a 1x1x1 ``up_conv``, trilinear 2x upsampling and an
    ``up_block`` on the skip connection concatenated with it. Shared by :class:`MetaQSM` /
    :class:`MesaQSM` and the unrolled network's regulariser (:mod:`metaqsm.dl.unrolled`)."""
    skips = []
    for level, block in enumerate(down):
        if level > 0:
            h = F.max_pool3d(h, 2)
        h = block(h, geom)
        skips.append(h)
    skips.pop()
    for up, block in zip(up_conv, up_block):
        # the 1x1x1 convolution commutes with linear interpolation: apply it first, on the
        # coarse grid, where it is 8 times cheaper and halves the channels to interpolate
        h = F.interpolate(up(h, geom), scale_factor=2, mode="trilinear", align_corners=False)
        h = block(torch.cat([skips.pop(), h], dim=1), geom)
    return h

class _QSMUNet(ConfigMixin, nn.Module):
    """The U-Net shared by both networks; subclasses choose the convolution.

    Per level: two (3x3x3 convolution, BatchNorm, ReLU) units; 2x2x2 max-pooling down;
    a 1x1x1 convolution and trilinear x2 upsampling up; concatenation of the skip
    connection; a final 1x1x1 convolution to one channel. Widths ``base * 2**level``,
    ``level = 0 .. depth`` (the bottleneck is level ``depth``).
    """

    model_name = None

    def __init__(self, *, depth, base, input_scale, output_scale, prior="none",
                 correction_mean="free", scale_equivariant=False):
        super().__init__()
        if not isinstance(scale_equivariant, bool):
            raise ValueError(f"scale_equivariant must be True or False, got {scale_equivariant!r}")
        self.scale_equivariant = scale_equivariant
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        if correction_mean not in CORRECTION_MEANS:
            raise ValueError(f"correction_mean must be one of {', '.join(CORRECTION_MEANS)}, got "
                             f"{correction_mean!r}")
        if correction_mean == "zero" and prior == "none":
            raise ValueError("correction_mean='zero' needs a prior (prior='tkd'): without one "
                             "the network's output has no correction to constrain")
        self.correction_mean = correction_mean
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
        self.prior = prior
        widths = [self.base * 2 ** level for level in range(self.depth + 1)]
        conv = self._conv
        self.down = nn.ModuleList()
        cin = 1 if prior == "none" else 2
        for w in widths:
            self.down.append(DoubleConv(cin, w, conv))
            cin = w
        self.up_conv = nn.ModuleList()
        self.up_block = nn.ModuleList()
        for level in reversed(range(self.depth)):
            self.up_conv.append(conv(widths[level + 1], widths[level], 1))
            self.up_block.append(DoubleConv(2 * widths[level], widths[level], conv))
        self.head = conv(widths[0], 1, 1)
        if prior != "none":
            # an untrained network returns the prior itself
            with torch.no_grad():
                for p in self.head.parameters():
                    p.zero_()
        # channels-last (NDHWC) activations and kernels: oneDNN and cuDNN convolutions run about
        # 20-30% faster on them than on NCDHW
        self.to(memory_format=torch.channels_last_3d)

    def _conv(self, cin, cout, k, bias=True):  # pragma: no cover - abstract
        raise NotImplementedError

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
        gain = support = None
        if self.scale_equivariant or self.correction_mean == "zero":
            # the field's support: its non-zero voxels (the mask, since inputs are masked)
            support = (x != 0).to(x.dtype)
            n = support.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1.0)
        if self.scale_equivariant:
            # the inversion is linear: chi(a f) = a chi(f). The network sees every field at the
            # training data's typical amplitude and its output is scaled back, so that a
            # low-contrast brain gets a correction of its own size, not a typical one
            rms = ((x * x * support).sum(dim=(2, 3, 4), keepdim=True) / n).sqrt()
            gain = FIELD_RMS_REF / rms.clamp_min(1e-6 * FIELD_RMS_REF)
            x = x * gain
        size = x.shape[2:]
        d = self.divisor
        pad = [(-n) % d for n in size]
        h = x * self.input_scale
        prior = None
        if self.prior == "tkd":
            pgeom = geom if geom is not None else Geometry.coerce(voxel_size, b0_dir, x)
            prior = tkd_prior(x, pgeom).to(x.dtype)
            h = torch.cat([h, prior * self.output_scale], dim=1)
        if any(pad):
            h = F.pad(h, (0, pad[2], 0, pad[1], 0, pad[0]))
        h = h.contiguous(memory_format=torch.channels_last_3d if geom is None else geom.memory_format)
        h = unet_pass(h, self.down, self.up_conv, self.up_block, geom)
        out = self.head(h, geom) / self.output_scale
        if any(pad):
            out = out[:, :, :size[0], :size[1], :size[2]]
        if self.correction_mean == "zero":
            # the field does not determine the mean susceptibility (D(0) = 0): the correction
            # keeps none of its own inside the support of the field, which then has the
            # prior's mean
            out = out - (out * support.to(out.dtype)).sum(dim=(2, 3, 4), keepdim=True) / n.to(out.dtype)
        if prior is not None:
            out = out + prior.to(out.dtype)
        if gain is not None:
            out = out / gain
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
    prior : {"none", "tkd"}
        "none" (default): the paper's network, field in, susceptibility out. "tkd": also feed
        the TKD of the field and predict a correction to it (see the module docstring).
    correction_mean : {"free", "zero"}
        With a prior: "free" (default) lets the correction shift the mean susceptibility;
        "zero" removes the correction's mean over the field's support (its non-zero voxels:
        the mask, since inputs are masked), so the output has the prior's mean there. The
        field carries no information on the mean, and a network that guesses it can be far off
        on a whole brain (docs/networks.md).
    scale_equivariant : bool
        False (default): the network maps fields of every amplitude with the same weights,
        biases and normalisations. True: each field is scaled to the typical amplitude
        :data:`FIELD_RMS_REF` (by its root-mean-square over its non-zero voxels) on the way in
        and the output scaled back, so that ``model(a * x) == a * model(x)`` for ``a > 0``, as
        for the dipole inversion itself.

    References
    ----------
    Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction (Koch KM et al.),
    section 2.2; Hu X et al., Meta-SR, CVPR 2019.
    """

    def __init__(self, *, depth: int = 4, base: int = 32, basis: int = 2, hidden: int = 32,
                 basis_gain: float = 0.5, input_scale: float = 10.0, output_scale: float = 10.0,
                 prior: str = "none", correction_mean: str = "free",
                 scale_equivariant: bool = False):
        self.basis = int(basis)
        self.hidden = int(hidden)
        self.basis_gain = float(basis_gain)
        super().__init__(depth=depth, base=base, input_scale=input_scale, output_scale=output_scale,
                         prior=prior, correction_mean=correction_mean,
                         scale_equivariant=scale_equivariant)

    def _conv(self, cin, cout, k, bias=True):
        return WPConv3d(cin, cout, k, hidden=self.hidden, basis=self.basis, bias=bias,
                        basis_gain=self.basis_gain)


@register_model("mesa")
class MesaQSM(_QSMUNet):
    """Mesa-QSM: the same U-Net with plain convolutions, one network per resolution (the paper's
    baseline, section 3.2). Accepts and ignores ``voxel_size`` and ``b0_dir``.

    Parameters
    ----------
    depth, base, input_scale, output_scale, prior, correction_mean, scale_equivariant :
        As in :class:`MetaQSM` (defaults 4, 32, 10, 10, "none", "free", False). With
        ``prior="tkd"`` the prior (not the network) uses the voxel size and B0 direction, which
        are then required.
    """

    def __init__(self, *, depth: int = 4, base: int = 32, input_scale: float = 10.0,
                 output_scale: float = 10.0, prior: str = "none", correction_mean: str = "free",
                 scale_equivariant: bool = False):
        super().__init__(depth=depth, base=base, input_scale=input_scale, output_scale=output_scale,
                         prior=prior, correction_mean=correction_mean,
                         scale_equivariant=scale_equivariant)

    def _conv(self, cin, cout, k, bias=True):
        return Conv3d(cin, cout, k, bias=bias)

    def _geometry(self, x, voxel_size, b0_dir):
        return None
