"""Meta-QSM 2: an unrolled network with the dipole model inside, its regulariser a WP-Conv U-Net.

The direct networks (:mod:`metaqsm.dl.unet`) map a field to a susceptibility map in one pass, and
whatever they learned about the dipole model holds only on data like their training data. This
network keeps the physics explicit and learns only the prior (the scheme of Lai et al. 2020's
LPCNN and of Aggarwal et al.'s MoDL, with a gradient step instead of a proximal one):

1. an initial estimate, the truncated k-space division (TKD) of the field with the core's dipole
   kernel (:func:`metaqsm.kernels.dipole_kernel`) at the volume's own voxel size and B0 direction;
2. ``iterations`` times (K, default 4):

   * a gradient step on the data term ``||M (D chi - f)||^2``,
     ``chi <- chi - alpha_k D^T M (D chi - f)``, with ``D`` the same kernel applied by zero-padded
     FFTs and ``alpha_k`` a learned step per iteration;
   * a learned residual update ``chi <- M (chi + beta_k R(chi, M; geometry))``, ``R`` one compact
     3D U-Net shared by all iterations whose convolutions are WP-Conv
     (:class:`metaqsm.dl.layers.WPConv3d`): its kernels are predicted from the voxel size and the
     B0 direction, since what a good prior looks like (the shape of the cone's streaks, the
     blur of thick slices) depends on both. ``R`` sees the current estimate and the mask (so it
     knows where the edge, and the background residue that piles up there, is).

The mask ``M`` is the field's support (its non-zero voxels: inputs are masked) unless given.
``forward(x, voxel_size, b0_dir=None, mask=None)`` has the calling convention of the direct
networks, so training (:func:`metaqsm.dl.train.train`), whole-volume validation and inference
(:func:`metaqsm.dl.infer.reconstruct`) use it unchanged. The U-Net's calls are checkpointed
during training (``checkpointing``), so memory grows with one U-Net's activations, not K.

References
----------
Lai KW, Aggarwal M, van Zijl P, Li X, Sulam J. Learned proximal networks for quantitative
susceptibility mapping. MICCAI 2020, LNCS 12262:125-135.
Aggarwal HK, Mani MP, Jacob M. MoDL: model-based deep learning architecture for inverse
problems. IEEE Trans Med Imaging 2019;38:394-405.
Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH. Magnetic susceptibility mapping
of brain tissue in vivo using MRI phase data. Magn Reson Med 2009;62:1510-1522 (TKD).
Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction (Koch KM et al.),
section 2.2 (WP-Conv).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._fft import mask_box, padded_shape
from .._validate import as_mask, as_volume
from ..inversion.direct import tkd_inverse_kernel
from ..kernels import dipole_kernel
from .layers import ConfigMixin, DoubleConv, Geometry, WPConv3d
from .registry import register_model
from .unet import unet_pass

__all__ = ["MetaUnrolled", "RegulariserUNet", "invert_meta_unrolled", "multiply_adds_per_voxel"]


class RegulariserUNet(nn.Module):
    """The learned regulariser: a compact U-Net of WP-Conv layers, ``in_channels`` -> 1.

    Per level two (WP-Conv 3x3x3, BatchNorm, ReLU) units (:class:`~metaqsm.dl.layers.DoubleConv`),
    2x2x2 max-pooling down, a 1x1x1 WP-Conv and trilinear upsampling up, skip concatenation, a
    1x1x1 WP-Conv head initialised to zero (an untrained regulariser changes nothing). Composed
    as :class:`metaqsm.dl.unet.MetaQSM`; inputs are padded to a multiple of ``2**depth``.

    Parameters
    ----------
    in_channels : int
    depth, base, basis, hidden, basis_gain :
        As :class:`metaqsm.dl.unet.MetaQSM` (widths ``base * 2**level``).
    """

    def __init__(self, in_channels, *, depth, base, basis, hidden, basis_gain):
        super().__init__()
        self.depth = depth

        def conv(cin, cout, k, bias=True):
            return WPConv3d(cin, cout, k, hidden=hidden, basis=basis, bias=bias,
                            basis_gain=basis_gain)

        widths = [base * 2 ** level for level in range(depth + 1)]
        self.widths = widths
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w, conv))
            cin = w
        self.up_conv = nn.ModuleList()
        self.up_block = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up_conv.append(conv(widths[level + 1], widths[level], 1))
            self.up_block.append(DoubleConv(2 * widths[level], widths[level], conv))
        self.head = conv(widths[0], 1, 1)
        with torch.no_grad():
            for p in self.head.parameters():
                p.zero_()

    def forward(self, h, geom):
        size = h.shape[2:]
        d = 2 ** self.depth
        pad = [(-n) % d for n in size]
        if any(pad):
            h = F.pad(h, (0, pad[2], 0, pad[1], 0, pad[0]))
        h = h.contiguous(memory_format=geom.memory_format)
        h = unet_pass(h, self.down, self.up_conv, self.up_block, geom)
        out = self.head(h, geom)
        if any(pad):
            out = out[:, :, :size[0], :size[1], :size[2]]
        return out


def multiply_adds_per_voxel(model):
    """Multiply-adds per input voxel of one forward pass of ``model`` (a :class:`MetaUnrolled`):
    the regulariser's convolutions times ``iterations`` (the FFTs, O(log N) per voxel, and the
    weight prediction, once per volume, are left out)."""
    reg = model.regulariser
    total = 0.0
    for level, block in enumerate(reg.down):
        scale = 8.0 ** -level
        for c in (block.conv1, block.conv2):
            total += scale * c.in_channels * c.out_channels * c.kernel_size ** 3
    for i, (up, block) in enumerate(zip(reg.up_conv, reg.up_block)):
        level = reg.depth - 1 - i
        total += 8.0 ** -(level + 1) * up.in_channels * up.out_channels
        for c in (block.conv1, block.conv2):
            total += 8.0 ** -level * c.in_channels * c.out_channels * c.kernel_size ** 3
    total += reg.head.in_channels
    return total * model.iterations


@register_model("meta-unrolled")
class MetaUnrolled(ConfigMixin, nn.Module):
    """Meta-QSM 2: TKD, then K (data gradient step, WP-Conv U-Net update) iterations.

    Parameters
    ----------
    iterations : int
        Number of unrolled iterations K (default 4).
    depth : int
        Poolings of the regulariser U-Net (default 2: widths ``base``, ``2 base``, ``4 base``).
    base : int
        Channels of its first level (default 8: about 0.4 M parameters and 47 k multiply-adds
        per voxel over the 4 iterations, what a 2-core CPU can train and run).
    basis, hidden, basis_gain :
        WP-Conv basis kernels (default 4), predictor width (32) and initial share of the
        geometry-dependent kernel part (0.5); see :class:`~metaqsm.dl.layers.WPConv3d`.
    tkd_threshold : float
        Truncation level of the initial TKD estimate (default 0.2).
    step_init : float
        Initial data step ``alpha_k`` (default 1.0; stable below ``2 / max D^2 = 4.5``).
    pad : int
        Zero voxels added to every axis for the dipole convolutions (default 16; rounded up to
        fast FFT lengths). Doubling (QSM's usual padding) costs 8 times the FFT work on a whole
        head for little change inside the mask; the U-Net corrects what wrap-around leaves.
    output_scale : float
        The regulariser sees and returns susceptibility times this (default 10: ppm values of
        0.01-0.1 become 0.1-1).
    checkpointing : bool
        Recompute the regulariser's activations in the backward pass (torch.utils.checkpoint)
        instead of keeping K copies (default True; only while training with gradients).

    Forward
    -------
    ``forward(x, voxel_size, b0_dir=None, mask=None)``: ``x`` (batch, 1, X, Y, Z) local field in
    ppm, any size; geometry as :class:`~metaqsm.dl.layers.Geometry`; ``mask`` (batch, 1, X, Y, Z)
    (default: ``x != 0``). Returns the susceptibility in ppm, zero outside the mask.
    """

    def __init__(self, *, iterations: int = 4, depth: int = 2, base: int = 8, basis: int = 4,
                 hidden: int = 32, basis_gain: float = 0.5, tkd_threshold: float = 0.2,
                 step_init: float = 1.0, pad: int = 16, output_scale: float = 10.0,
                 checkpointing: bool = True):
        super().__init__()
        for name, val in (("iterations", iterations), ("depth", depth), ("base", base),
                          ("basis", basis), ("hidden", hidden)):
            if isinstance(val, bool) or int(val) != val or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if isinstance(pad, bool) or int(pad) != pad or pad < 0:
            raise ValueError(f"pad must be a non-negative integer (voxels), got {pad!r}")
        for name, val in (("tkd_threshold", tkd_threshold), ("step_init", step_init),
                          ("output_scale", output_scale)):
            if not isinstance(val, (int, float)) or not val > 0:
                raise ValueError(f"{name} must be a positive number, got {val!r}")
        if not 0 < tkd_threshold < 1:
            raise ValueError(f"tkd_threshold must be in (0, 1), got {tkd_threshold!r}")
        if not isinstance(checkpointing, bool):
            raise ValueError(f"checkpointing must be True or False, got {checkpointing!r}")
        self.iterations = int(iterations)
        self.depth = int(depth)
        self.base = int(base)
        self.basis = int(basis)
        self.hidden = int(hidden)
        self.basis_gain = float(basis_gain)
        self.tkd_threshold = float(tkd_threshold)
        self.step_init = float(step_init)
        self.pad = int(pad)
        self.output_scale = float(output_scale)
        self.checkpointing = checkpointing
        # alpha_k = softplus(raw): positive steps; beta_k: the regulariser's weight per iteration
        raw = math.log(math.expm1(self.step_init))
        self.step_raw = nn.Parameter(torch.full((self.iterations,), raw))
        self.reg_weight = nn.Parameter(torch.ones(self.iterations))
        self.regulariser = RegulariserUNet(2, depth=self.depth, base=self.base, basis=self.basis,
                                           hidden=self.hidden, basis_gain=self.basis_gain)
        self.to(memory_format=torch.channels_last_3d)
        self._kernel_cache = {}

    @property
    def divisor(self):
        """Tiles are aligned to multiples of this (``2**depth``; any input size is accepted)."""
        return 2 ** self.depth

    @property
    def steps(self):
        """The data steps ``alpha_k`` (tensor of ``iterations``)."""
        return F.softplus(self.step_raw)

    def _kernels(self, geom, shape, device):
        """Dipole kernels (batch, 1, X, Y, Z//2+1) and TKD inverse kernels on the padded grid
        ``shape``, one per distinct geometry (cached: the same volume size recurs)."""
        ds, ks = [], []
        for idx in geom.groups:
            i0 = int(idx[0])
            vsz = tuple(round(float(v), 6) for v in geom.voxel_size[i0].tolist())
            b0 = tuple(round(float(v), 6) for v in geom.b0_dir[i0].tolist())
            key = (shape, vsz, b0, str(device))
            if key not in self._kernel_cache:
                if len(self._kernel_cache) > 64:
                    self._kernel_cache.clear()
                d = dipole_kernel(shape, voxel_size=vsz, b0_dir=b0, rfft=True)
                inv = tkd_inverse_kernel(d.copy(), self.tkd_threshold)
                inv[0, 0, 0] = 0.0  # the mean is not determined by the field (D(0) = 0)
                self._kernel_cache[key] = (torch.from_numpy(d).to(device),
                                           torch.from_numpy(inv).to(device))
            ds.append(self._kernel_cache[key][0])
            ks.append(self._kernel_cache[key][1])
        if len(geom.groups) == 1:
            return ds[0][None, None], ks[0][None, None]
        inverse = geom.inverse.to(device)
        return torch.stack(ds)[inverse][:, None], torch.stack(ks)[inverse][:, None]

    def _regularise(self, chi, m, geom):
        h = torch.cat([chi * self.output_scale, m], dim=1)
        return self.regulariser(h, geom) / self.output_scale

    def forward(self, x, voxel_size=None, b0_dir=None, mask=None):
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != 1:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (batch, 1, X, Y, Z) (field in ppm), "
                             f"got {shape}")
        geom = Geometry.coerce(voxel_size, b0_dir, x)
        if mask is None:
            m = (x != 0).to(torch.float32)
        else:
            if tuple(mask.shape) != tuple(x.shape):
                raise ValueError(f"mask must have the shape of x {tuple(x.shape)}, got "
                                 f"{tuple(mask.shape)}")
            m = (mask > 0).to(torch.float32)
        f = x.float() * m
        size = tuple(int(n) for n in x.shape[2:])
        shape = padded_shape(size, self.pad)
        D, Kinv = self._kernels(geom, shape, x.device)
        dims = (-3, -2, -1)
        crop = (slice(None), slice(None), slice(0, size[0]), slice(0, size[1]), slice(0, size[2]))

        def conv(v, kernel):  # zero-padded FFT convolution, cropped back
            spec = torch.fft.rfftn(v, s=shape, dim=dims)
            return torch.fft.irfftn(spec * kernel, s=shape, dim=dims)[crop]

        chi = conv(f, Kinv) * m
        alphas = self.steps
        use_ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        for k in range(self.iterations):
            residual = m * (conv(chi, D) - f)
            chi = chi - alphas[k] * conv(residual, D)  # D is real and even: D^T = D
            if use_ckpt:
                update = checkpoint(self._regularise, chi, m, geom, use_reentrant=False)
            else:
                update = self._regularise(chi, m, geom)
            chi = (chi + self.reg_weight[k] * update) * m
        return chi.to(x.dtype).contiguous()


def invert_meta_unrolled(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), weights=None,
                         device="cpu", tile=None):
    """Meta-QSM 2 dipole inversion: TKD and K unrolled (data step, WP-Conv U-Net) iterations.

    Parameters
    ----------
    field : (X, Y, Z) array
        Local field in ppm.
    mask : (X, Y, Z) array
        Brain mask (the data term's support).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates (default: the third axis).
    weights : str or Path, optional
        A ``meta-unrolled`` checkpoint (``.safetensors``). Default: the shipped model
        "meta-unrolled".
    device : str
        "cpu" (default) or "cuda".
    tile : None, "auto", int or 3 ints
        As in :func:`metaqsm.dl.infer.reconstruct` (default: the whole volume up to
        256 x 256 x 128 voxels). Each tile is then solved as its own inverse problem (the
        dipole steps see only the tile), blended over the overlap.

    Returns
    -------
    chi : (X, Y, Z) float32 array, ppm, zero outside the mask. The network runs on the mask's
    bounding box grown by 8 voxels (:func:`metaqsm._fft.mask_box`): every iterate is masked, so
    only the empty space around the brain is left out.

    Raises
    ------
    FileNotFoundError
        No ``weights`` given and the shipped model is not installed, or ``weights`` is missing.
    ValueError
        ``weights`` hold another kind of network.
    """
    from .infer import _check_model_kind, reconstruct
    from .registry import load_model

    name = weights if weights is not None else "meta-unrolled"
    net = load_model(name, device=device or "cpu")
    _check_model_kind(net, "meta-unrolled", name)
    field = as_volume(field, "field")
    m = as_mask(mask, field.shape)
    box = mask_box(m)  # the mask's box + 8 voxels: outside it every step is 0 anyway
    chi = np.zeros(field.shape, np.float32)
    chi[box] = reconstruct(net, field[box], m[box], voxel_size=voxel_size, b0_dir=b0_dir,
                           tile=tile, overlap=48, device=device or "cpu")
    return chi

