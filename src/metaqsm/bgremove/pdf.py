"""PDF: projection onto dipole fields."""

from __future__ import annotations

import numpy as np

from .._fft import crop_volume, pad_volume, padded_shape
from .._linalg import cg
from .._validate import as_int, as_positive, as_volume
from ..kernels import DipoleOperator
from ._grid import check_inputs


def pdf(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), noise=None, pad=None, tol=1e-3,
        max_iter=100):
    """Projection onto dipole fields (PDF).

    The background field is modelled as the field of a susceptibility distribution ``chi_b``
    outside the brain mask (on a zero-padded grid, so sources beyond the field of view are
    represented too). ``chi_b`` solves the weighted least-squares problem
    ``min ||W M (D chi_b - f)||^2`` over ``chi_b`` supported outside ``M``, by conjugate
    gradients on the normal equations; the local field is ``f - D chi_b`` inside the mask.
    Because the dipole fields of outside sources are nearly orthogonal to those of inside
    sources, this projection separates the two.

    Parameters
    ----------
    field : (X, Y, Z) array
        Unwrapped total field in ppm.
    mask : (X, Y, Z) array
        Brain mask (non-zero inside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates. Default: the third axis.
    noise : (X, Y, Z) array or None
        Standard deviation of the field (``EchoFit.noise``); the weights are ``1 / noise``
        normalised to mean 1 in the mask, as MEDI's data weighting. ``None``: uniform weights.
    pad : None, int or 3 ints
        Zero voxels added to each axis for the background sources (see
        :func:`metaqsm.kernels.padded_shape`). Default: a quarter of each axis, at least 8.
    tol : float
        Stopping tolerance on the relative residual of the normal equations (default 1e-3).
    max_iter : int
        Maximum number of CG iterations (default 100).

    Returns
    -------
    local_field : (X, Y, Z) float32
        Local field in ppm, zero outside the mask.
    mask : (X, Y, Z) bool
        The input mask (PDF does not erode it).

    References
    ----------
    Liu T, Khalidov I, de Rochefort L, Spincemaille P, Liu J, Tsiouris AJ, Wang Y. A novel
    background field removal method for MRI using projection onto dipole fields (PDF).
    NMR Biomed 2011;24(9):1129-1136.
    """
    field, mask, vsz, b0 = check_inputs(field, mask, voxel_size, b0_dir)
    tol = as_positive(tol, "tol")
    max_iter = as_int(max_iter, "max_iter", minimum=1)
    if pad is None:
        pad = tuple(max(8, n // 4) for n in field.shape)
    pshape = padded_shape(field.shape, pad)
    if noise is None:
        w2 = mask.astype(np.float32)
    else:
        noise = as_volume(noise, "noise")
        if noise.shape != field.shape:
            raise ValueError(f"noise must have the shape of field {field.shape}, got {noise.shape}")
        if np.any(noise[mask] <= 0):
            raise ValueError("noise must be positive inside the mask (it is a standard deviation)")
        w = np.where(mask, 1.0 / np.where(mask, noise, 1.0), 0.0)
        w /= w[mask].mean()
        w2 = (w * w).astype(np.float32)
    w2 = pad_volume(w2, pshape)
    outside = ~pad_volume(mask, pshape)
    op = DipoleOperator(pshape, voxel_size=vsz, b0_dir=b0, pad=0)

    def normal(x):
        return op(op(x * outside) * w2) * outside

    b = op(w2 * pad_volume(np.where(mask, field, 0.0).astype(np.float32), pshape)) * outside
    x, _ = cg(normal, b, tol=tol, max_iter=max_iter)
    background = crop_volume(op(x * outside), field.shape)
    local = np.where(mask, field - background, 0.0).astype(np.float32)
    return local, mask.copy()
