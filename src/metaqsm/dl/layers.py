"""Building blocks of the networks: geometry conditioning and the weight-prediction convolution.

The acquisition geometry of a volume is its voxel size (mm) and the direction of B0 in voxel
coordinates. :class:`Geometry` checks it, turns it into a feature vector and groups the samples
of a batch that share a geometry, once per forward pass; every :class:`WPConv3d` of a network then
predicts one kernel per distinct geometry and runs an ordinary convolution.

References
----------
Hu X, Mu H, Zhang X, Wang Z, Tan T, Sun J. Meta-SR: a magnification-arbitrary network for super-
resolution. Proc. IEEE/CVF CVPR 2019:1575-1584.
Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction (Koch KM et al.).
(the paper this package implements; section 2.2).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConfigMixin",
    "FEATURE_NAMES",
    "N_GEOMETRY_FEATURES",
    "Geometry",
    "geometry_features",
    "WPConv3d",
    "Conv3d",
    "DoubleConv",
]


class ConfigMixin:
    """Gives a network its ``config``: the constructor arguments, read back from the attributes
    of the same names, so ``type(model)(**model.config)`` rebuilds the architecture."""

    @property
    def config(self):
        """Constructor arguments: ``type(model)(**model.config)`` rebuilds the architecture."""
        params = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in params if name != "self"}


FEATURE_NAMES = (
    # voxel size in mm
    "vx", "vy", "vz",
    # scale-free: voxel size over the largest voxel size
    "vx/vmax", "vy/vmax", "vz/vmax",
    # scale-free: log of voxel size over the smallest voxel size
    "log(vx/vmin)", "log(vy/vmin)", "log(vz/vmin)",
    # B0 direction, sign-invariant (D depends on (k.b)^2, so b and -b are the same geometry)
    "bx^2", "by^2", "bz^2", "bx*by", "bx*bz", "by*bz",
)
N_GEOMETRY_FEATURES = len(FEATURE_NAMES)

_DEFAULT_B0 = (0.0, 0.0, 1.0)


def _as_batch_vectors(value, name, batch, device):
    """(3,) or (batch, 3) input -> float32 (batch, 3) tensor, with errors that name ``value``."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to(device=device, dtype=torch.float32)
    else:
        try:
            t = torch.as_tensor(value, dtype=torch.float32, device=device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be numbers of shape (3,) or (batch, 3), got {value!r}") from None
    if t.ndim == 1 and t.shape[0] == 3:
        t = t.unsqueeze(0).expand(batch, 3)
    if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] not in (1, batch):
        raise ValueError(f"{name} must have shape (3,) or ({batch}, 3) for a batch of {batch}, "
                         f"got {tuple(t.shape)}")
    if t.shape[0] != batch:
        t = t.expand(batch, 3)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def geometry_features(voxel_size, b0_dir):
    """Feature vectors (batch, N_GEOMETRY_FEATURES) of checked geometry tensors.

    ``voxel_size`` (batch, 3) in mm, positive; ``b0_dir`` (batch, 3) unit vectors. The features
    are listed in :data:`FEATURE_NAMES`: the voxel size itself, two scale-free versions of it (the
    dipole kernel on a grid depends only on voxel-size ratios) and the sign-invariant second
    moments of the B0 direction.
    """
    v = voxel_size
    b = b0_dir
    rel_max = v / v.amax(dim=1, keepdim=True)
    log_min = torch.log(v / v.amin(dim=1, keepdim=True))
    bb = torch.stack([b[:, 0] * b[:, 0], b[:, 1] * b[:, 1], b[:, 2] * b[:, 2],
                      b[:, 0] * b[:, 1], b[:, 0] * b[:, 2], b[:, 1] * b[:, 2]], dim=1)
    return torch.cat([v, rel_max, log_min, bb], dim=1)


class Geometry:
    """The checked geometry of a batch, its features and its groups of equal geometry.

    Parameters
    ----------
    voxel_size : (3,) or (batch, 3) tensor or array
        Voxel size in mm; every value positive and finite.
    b0_dir : (3,) or (batch, 3) tensor or array, optional
        B0 direction in voxel coordinates (normalised here; any non-zero length). Default: the
        third axis.
    batch : int
        Batch size of the input the geometry belongs to.
    device : torch.device, optional

    Attributes
    ----------
    voxel_size, b0_dir : (batch, 3) float32 tensors (b0_dir unit length)
    features : (batch, F) tensor of :func:`geometry_features`
    unique : (U, F) tensor, the distinct feature rows
    inverse : (batch,) long tensor, the row of ``unique`` of each sample
    onehot : (batch, U) float tensor, ``inverse`` one-hot
    groups : list of U long tensors, the sample indices of each distinct geometry

    Raises
    ------
    ValueError
        For a wrong shape, a non-positive or non-finite voxel size or a zero B0 vector.
    """

    def __init__(self, voxel_size, b0_dir=None, *, batch, device=None):
        v = _as_batch_vectors(voxel_size, "voxel_size", batch, device)
        if (v <= 0).any():
            raise ValueError(f"voxel_size must be positive (mm), got {v.tolist()}")
        b = _as_batch_vectors(_DEFAULT_B0 if b0_dir is None else b0_dir, "b0_dir", batch, device)
        norm = torch.linalg.vector_norm(b, dim=1, keepdim=True)
        if (norm < 1e-6).any():
            raise ValueError(f"b0_dir must be non-zero vectors, got {b.tolist()}")
        self.batch = batch
        self.voxel_size = v
        self.b0_dir = b / norm
        self.features = geometry_features(self.voxel_size, self.b0_dir)
        if batch == 1:
            self.unique = self.features
            self.inverse = torch.zeros(1, dtype=torch.long, device=v.device)
        else:
            self.unique, self.inverse = torch.unique(self.features, dim=0, return_inverse=True)
        self.groups = [torch.nonzero(self.inverse == u).reshape(-1) for u in range(self.unique.shape[0])]
        self.onehot = F.one_hot(self.inverse, self.unique.shape[0]).to(torch.float32)
        # activations layout chosen by the network: channels-last for one geometry (fastest
        # convolutions), NCDHW for mixed geometries (the grouped convolution folds the batch
        # into the channels for free)
        self.memory_format = (torch.channels_last_3d if len(self.groups) == 1
                              else torch.contiguous_format)

    @classmethod
    def coerce(cls, voxel_size, b0_dir, x):
        """A :class:`Geometry` for input ``x``: ``voxel_size`` may already be one."""
        if isinstance(voxel_size, Geometry):
            if voxel_size.batch != x.shape[0]:
                raise ValueError(f"the geometry is for a batch of {voxel_size.batch}, "
                                 f"the input has {x.shape[0]}")
            return voxel_size
        if voxel_size is None:
            raise ValueError("voxel_size is required (mm), got None")
        return cls(voxel_size, b0_dir, batch=x.shape[0], device=x.device)


class WPConv3d(nn.Module):
    """A 3D convolution whose kernel and bias are predicted from the acquisition geometry.

    A small fully connected network maps the geometry features (:data:`FEATURE_NAMES`) to a code
    ``c`` of ``basis`` values; the kernel is ``W = W0 + sum_j c_j B_j`` and the bias
    ``b = b0 + sum_j c_j beta_j``, i.e. a final linear layer from ``basis`` values to
    ``in_channels * out_channels * k^3 (+ out_channels)`` numbers. ``basis`` (the width ``h`` of the
    last hidden layer) keeps the parameter count near ``(basis + 1)`` times that of a plain
    convolution instead of the ``hidden * in * out * k^3`` of a Meta-SR predictor with a wide last
    layer. The kernel is predicted once per forward pass for each distinct geometry in the batch,
    then applied by an ordinary convolution; a batch that mixes geometries runs as one grouped
    convolution (``groups = batch``), each sample with its own kernel.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Odd kernel size; padding keeps the spatial size ("same"). Default 3 (the paper's k).
    hidden : int
        Width of the hidden layer of the predictor. Default 32.
    basis : int
        Number of basis kernels ``h`` (width of the code). Default 4.
    bias : bool
        Predict a bias too (default True).
    basis_gain : float
        Share of the initial kernel standard deviation carried by the geometry-dependent part
        (default 0.5): the predicted kernels start with the standard deviation of a Kaiming
        (He) initialised convolution, ``sqrt(2 / fan_in)``.

    Forward
    -------
    ``forward(x, voxel_size, b0_dir=None)`` with ``x`` (batch, in_channels, X, Y, Z); the geometry
    as in :class:`Geometry` (or a :class:`Geometry` instance passed as ``voxel_size``).

    References
    ----------
    Hu X et al. Meta-SR: a magnification-arbitrary network for super-resolution. CVPR 2019.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 hidden: int = 32, basis: int = 4, bias: bool = True, basis_gain: float = 0.5):
        super().__init__()
        for name, val in (("in_channels", in_channels), ("out_channels", out_channels),
                          ("hidden", hidden), ("basis", basis)):
            if int(val) != val or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        if not 0.0 <= basis_gain < 1.0:
            raise ValueError(f"basis_gain must be in [0, 1), got {basis_gain!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.n_basis = int(basis)
        k3 = self.kernel_size ** 3
        self.predictor = nn.Sequential(
            nn.Linear(N_GEOMETRY_FEATURES, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, basis), nn.Tanh(),
        )
        n_w = self.out_channels * self.in_channels * k3
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels,
                                               self.kernel_size, self.kernel_size, self.kernel_size))
        self.weight_basis = nn.Parameter(torch.empty(basis, n_w))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_channels))
            self.bias_basis = nn.Parameter(torch.zeros(basis, self.out_channels))
        else:
            self.register_parameter("bias", None)
            self.register_parameter("bias_basis", None)
        std = math.sqrt(2.0 / (self.in_channels * k3))  # Kaiming (He) normal, ReLU gain
        with torch.no_grad():
            self.weight.normal_(0.0, std * math.sqrt(1.0 - basis_gain ** 2))
            # the code is bounded by tanh (|c_j| < 1); with c_j^2 of order 1 the basis adds
            # basis_gain^2 of the variance
            self.weight_basis.normal_(0.0, std * basis_gain / math.sqrt(basis))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"basis={self.n_basis}, bias={self.bias is not None}")

    def predict(self, features):
        """Kernels (U, out, in, k, k, k) and biases (U, out) (or None) for feature rows (U, F)."""
        code = self.predictor(features)
        w = (code @ self.weight_basis).view(-1, *self.weight.shape) + self.weight
        b = None
        if self.bias is not None:
            b = code @ self.bias_basis + self.bias
        return w, b

    def forward(self, x, voxel_size, b0_dir=None):
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (batch, {self.in_channels}, X, Y, Z), got {tuple(x.shape)}")
        geom = Geometry.coerce(voxel_size, b0_dir, x)
        feats = geom.unique.to(dtype=self.weight.dtype)
        w, b = self.predict(feats)
        w = w.to(x.dtype)
        b = None if b is None else b.to(x.dtype)
        # kernels in the input's memory format, else the convolution leaves oneDNN's fast path
        fmt = (torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d)
               else torch.contiguous_format)
        pad = self.kernel_size // 2
        if len(geom.groups) == 1:
            return F.conv3d(x, _in_format(w[0], fmt), None if b is None else b[0], padding=pad)
        # mixed geometries: one grouped convolution, sample i convolved with its own kernel.
        # The batch folds into the channels (a free view of an NCDHW tensor), so there is no
        # split, concatenation or scatter in the forward or backward pass.
        n, c = x.shape[:2]
        # per-sample kernels by a one-hot product (its backward is a product too; the backward of
        # index_select is a scatter-add, slow on the CPU)
        onehot = geom.onehot.to(dtype=w.dtype)
        ws = (onehot @ w.reshape(w.shape[0], -1)).reshape(n * self.out_channels, c, *w.shape[-3:])
        bs = None if b is None else (onehot @ b).reshape(-1)
        y = F.conv3d(x.contiguous().view(1, n * c, *x.shape[2:]), ws, bs, padding=pad, groups=n)
        return y.view(n, self.out_channels, *y.shape[2:])


def _in_format(w, fmt):
    """``w`` in memory format ``fmt``. A kernel with one input channel is already "channels-last
    contiguous" to ``Tensor.contiguous`` but keeps NCDHW strides, and oneDNN then returns an NCDHW
    output: give it the channels-last strides explicitly (the same memory order)."""
    if fmt is torch.channels_last_3d and w.shape[1] == 1:
        w = w.contiguous()
        return w.as_strided(w.shape, (w.stride(0), 1, w.stride(2), w.stride(3), w.stride(4)))
    return w.contiguous(memory_format=fmt)


class Conv3d(nn.Conv3d):
    """A plain "same" 3D convolution with the WP-Conv calling convention (geometry ignored) and the
    same Kaiming (He) normal initialisation as :class:`WPConv3d`'s predicted kernels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *, bias: bool = True):
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        with torch.no_grad():
            self.weight.normal_(0.0, math.sqrt(2.0 / (in_channels * kernel_size ** 3)))
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x, voxel_size=None, b0_dir=None):  # noqa: ARG002 - same convention
        return super().forward(x)


class DoubleConv(nn.Module):
    """Two (convolution 3x3x3 -> BatchNorm -> ReLU) units, the U-Net level block.

    ``conv`` is a factory ``conv(in_channels, out_channels, kernel_size, bias=...)`` returning a
    module called as ``m(x, geometry)``; the convolutions have no bias (BatchNorm follows). BatchNorm (not instance or group norm) keeps inference a local
    operation in eval mode, so tiled inference matches whole-volume inference.
    """

    def __init__(self, in_channels, out_channels, conv):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3, bias=False)
        self.norm1 = nn.BatchNorm3d(out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, bias=False)
        self.norm2 = nn.BatchNorm3d(out_channels)

    def forward(self, x, geometry):
        # channels-last from here on: a 1-channel input is ambiguous, and the convolution of an
        # ambiguous input returns NCDHW, which would keep the whole network off the faster layout
        fmt = torch.channels_last_3d if geometry is None else geometry.memory_format
        x = self.conv1(x, geometry).contiguous(memory_format=fmt)
        x = F.relu(self.norm1(x), inplace=True)
        return F.relu(self.norm2(self.conv2(x, geometry)), inplace=True)
