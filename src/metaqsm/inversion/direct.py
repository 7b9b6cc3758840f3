"""Direct (closed-form) dipole inversions in k-space: TKD, TSVD and Tikhonov.

All three divide the field's spectrum by a regularised inverse of the dipole kernel D (from
:func:`metaqsm.kernels.dipole_kernel`) around one private helper, :func:`_kdiv`.

Padding: the field (zero outside the mask) is zero-padded to the FFT grid given by ``pad``
(see :func:`metaqsm.kernels.padded_shape`). The default ``pad=0`` keeps the volume's own grid
(circular convolution), as QSM.jl and STI Suite do; ``pad="auto"`` doubles each axis, which
removes wrap-around at about 8 times the memory and 10 times the time (the kernel build on the
doubled grid dominates).
"""

from __future__ import annotations

import numpy as np

from .._validate import as_positive
from .._fft import crop_volume, fft_convolve, padded_shape
from ..kernels import dipole_kernel, gradient_kernel_sq, laplacian_kernel
from . import _common

__all__ = ["tkd", "tsvd", "tikhonov"]

REGULARISERS = ("identity", "gradient", "laplacian")


def _kdiv(field, mask, voxel_size, b0_dir, pad, inverse_kernel):
    """chi = mask * crop(IFFT(K * FFT(pad(field * mask)))), K = inverse_kernel(D, shape, vsz).

    ``inverse_kernel`` may overwrite D (it is not used afterwards)."""
    f, m, vsz, b = _common.check_inputs(field, mask, voxel_size, b0_dir)
    shape = padded_shape(f.shape, pad)
    D = dipole_kernel(shape, voxel_size=vsz, b0_dir=b)
    K = inverse_kernel(D, shape, vsz)
    del D
    chi = fft_convolve(f, K, shape=shape)
    chi = crop_volume(chi, f.shape)
    return np.multiply(chi, m, dtype=np.float32)  # one pass: crop, mask and contiguous copy


def tkd(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), threshold=0.2, pad=0):
    """Truncated k-space division (TKD).

    ``chi = IFFT(K * FFT(field))`` with ``K = 1/D`` where ``|D| >= threshold`` and
    ``K = sign(D) / threshold`` where ``|D| < threshold`` (the convention of Shmueli et al.
    2009); ``sign(0)`` is taken as +1, so the k = 0 sample (where D = 0) is scaled by
    ``1/threshold``. No correction of the resulting underestimation is applied.

    Parameters
    ----------
    field : (X, Y, Z) array
        Local field in ppm (background removed). Only the voxels in ``mask`` are used.
    mask : (X, Y, Z) array
        Region of interest (non-zero = inside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates. Default: the third axis.
    threshold : float
        Truncation level of |D| (positive; |D| ranges over [0, 2/3]). Default 0.2, the value
        the Meta-QSM paper used (QSM.jl's default is 0.15).
    pad : "auto", int or 3 ints
        Zero padding (see the module docstring). Default 0: the volume's own grid.

    Returns
    -------
    chi : (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside the mask.

    Raises
    ------
    ValueError
        For a non-3D or non-finite field, a mask of another shape or an empty mask, a
        non-positive voxel size, a zero ``b0_dir`` or a non-positive threshold.

    References
    ----------
    Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH. Magnetic susceptibility
    mapping of brain tissue in vivo using MRI phase data. Magn Reson Med 2009;62:1510-1522.

    Examples
    --------
    >>> import numpy as np
    >>> from metaqsm.kernels import forward_field
    >>> chi = np.zeros((32, 32, 32), np.float32); chi[12:20, 12:20, 12:20] = 0.1
    >>> f = forward_field(chi, voxel_size=(1, 1, 1), pad=0)
    >>> x = tkd(f, np.ones_like(chi), voxel_size=(1, 1, 1))
    >>> bool(abs(x[16, 16, 16] - 0.1) < 0.05)
    True
    """
    thr = as_positive(threshold, "threshold")
    return _kdiv(field, mask, voxel_size, b0_dir, pad,
                 lambda D, shape, vsz: tkd_inverse_kernel(D, thr))


def tkd_inverse_kernel(D, threshold):
    """The TKD inverse kernel of a dipole kernel ``D``, computed in place (``D`` is overwritten).

    ``1/D`` where ``|D| >= threshold``, ``sign(D)/threshold`` elsewhere, ``sign(0) = +1``; shared
    by :func:`tkd` and the networks' TKD prior (:func:`metaqsm.dl.unet.tkd_prior`).
    """
    small = np.abs(D) < np.float32(threshold)
    neg = D < 0
    with np.errstate(divide="ignore"):
        K = np.divide(np.float32(1.0), D, out=D)
    K[small] = np.float32(1.0 / threshold)
    K[small & neg] = np.float32(-1.0 / threshold)
    return K


def tsvd(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), threshold=0.2, pad=0):
    """Truncated singular value decomposition (TSVD) of the dipole convolution.

    ``K = 1/D`` where ``|D| >= threshold`` and 0 elsewhere (including k = 0): the ill-conditioned
    components (the magic-angle cone) are discarded instead of being capped as in :func:`tkd`.

    Parameters
    ----------
    field, mask, voxel_size, b0_dir, pad :
        As in :func:`tkd`.
    threshold : float
        Truncation level of |D|. Default 0.2, as :func:`tkd` (QSM.jl: 0.15).

    Returns
    -------
    chi : (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside the mask.

    Raises
    ------
    ValueError
        As :func:`tkd`.

    References
    ----------
    Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the human brain using
    threshold-based k-space division. Magn Reson Med 2010;63:1292-1304.
    """
    thr = as_positive(threshold, "threshold")

    def inverse(D, shape, vsz):
        small = np.abs(D) < np.float32(thr)
        with np.errstate(divide="ignore"):
            K = np.divide(np.float32(1.0), D, out=D)
        K[small] = 0.0
        return K

    return _kdiv(field, mask, voxel_size, b0_dir, pad, inverse)


def tikhonov(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), lam=1e-2, regulariser="identity",
             pad=0):
    """Closed-form Tikhonov (L2) regularised dipole inversion.

    Minimises ``||D chi - f||^2 + lam ||G chi||^2`` in k-space:
    ``chi = IFFT(D / (D^2 + lam |G|^2) * FFT(f))``, with ``|G|^2`` = 1 (``"identity"``),
    the spectrum of the forward-difference gradient's normal operator, in 1/mm^2
    (``"gradient"``), or the squared spectrum of the 7-point Laplacian, in 1/mm^4
    (``"laplacian"``). Where both D and G vanish (k = 0 for the derivative regularisers) the
    result is 0.

    Parameters
    ----------
    field, mask, voxel_size, b0_dir, pad :
        As in :func:`tkd`.
    lam : float
        Regularisation weight (dimensionless for ``"identity"``, mm^2 for ``"gradient"``,
        mm^4 for ``"laplacian"``). Default 1e-2, as QSM.jl's ``tikh``.
    regulariser : {"identity", "gradient", "laplacian"}
        The matrix G. Default ``"identity"``, as QSM.jl's ``tikh``.

    Returns
    -------
    chi : (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside the mask.

    Raises
    ------
    ValueError
        As :func:`tkd`, and for an unknown ``regulariser`` or a non-positive ``lam``.

    References
    ----------
    Bilgic B, Chatnuntawech I, Fan AP, Setsompop K, Cauley SF, Wald LL, Adalsteinsson E. Fast
    image reconstruction with L2-regularization. J Magn Reson Imaging 2014;40:181-191.
    """
    lam = as_positive(lam, "lam")
    if regulariser not in REGULARISERS:
        raise ValueError(f"regulariser must be one of {', '.join(REGULARISERS)}, "
                         f"got {regulariser!r}")

    def inverse(D, shape, vsz):
        if regulariser == "identity":
            G2 = np.float32(1.0)
        elif regulariser == "gradient":
            G2 = gradient_kernel_sq(shape, voxel_size=vsz)
        else:
            G2 = laplacian_kernel(shape, voxel_size=vsz) ** 2
        den = D * D + np.float32(lam) * G2
        with np.errstate(divide="ignore", invalid="ignore"):
            K = np.divide(D, den, out=den)
        K[~np.isfinite(K)] = 0.0  # 0/0 where both D and G vanish (k = 0)
        return K

    return _kdiv(field, mask, voxel_size, b0_dir, pad, inverse)
