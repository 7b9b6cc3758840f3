"""The physics core: dipole kernel, forward model, SMV kernel, Laplacian and gradients.

Every part of metaqsm that needs the dipole model (simulation, training data, classical
inversions, the networks' data-consistency step) calls these functions, so they cannot drift
apart. The numerical primitives under them live in private core modules and are re-exported
here: FFTs, FFT convolution and padding in :mod:`metaqsm._fft`, finite differences in
:mod:`metaqsm._fd` (gradient stacked on the first axis, periodic boundaries).

Conventions
-----------
* Arrays are in NIfTI voxel order; ``voxel_size`` is in mm; ``b0_dir`` is the unit vector of the
  main field in voxel coordinates (default: the third axis).
* k-space coordinates come from ``fftfreq(n, voxel_size)`` (cycles/mm), so anisotropic voxels
  are exact: the dipole kernel depends on the physical direction of k.
* Kernels are built for real FFTs by default (last axis of length ``n // 2 + 1``), as
  ``scipy.fft.rfftn`` produces.
* The value of the dipole kernel at k = 0 is 0. The k = 0 component of the field (its mean over
  the padded grid) is not determined by the dipole model alone; 0 is the mean of
  1/3 - cos^2 over all directions, so the field of a finite source is mean-free over the padded
  grid, which matches the Lorentz-corrected field of a sphere.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ._fd import divergence, gradient, laplacian
from ._fft import WORKERS, crop_volume, fft_convolve, pad_volume, padded_shape
from ._fft import rfft as _rfft
from ._fft import shape3 as _shape3
from ._validate import as_b0_dir, as_positive, as_volume, as_voxel_size

__all__ = [
    "kspace_coordinates",
    "dipole_kernel",
    "smv_kernel",
    "laplacian_kernel",
    "gradient_kernel_sq",
    "gaussian_kernel",
    "forward_field",
    "padded_shape",
    "pad_volume",
    "crop_volume",
    "fft_convolve",
    "laplacian",
    "gradient",
    "divergence",
    "DipoleOperator",
    "WORKERS",
]


def kspace_coordinates(shape, voxel_size, *, rfft=True):
    """Broadcastable k-space coordinates (cycles/mm) for an FFT of ``shape``.

    Returns a tuple ``(kx, ky, kz)`` of float64 arrays of shapes (nx,1,1), (1,ny,1), (1,1,nz')
    with nz' = nz // 2 + 1 when ``rfft`` is true.
    """
    shape = _shape3(shape)
    vsz = as_voxel_size(voxel_size)
    ks = []
    for axis, (n, d) in enumerate(zip(shape, vsz)):
        if rfft and axis == 2:
            k = sfft.rfftfreq(n, d)
        else:
            k = sfft.fftfreq(n, d)
        view = [1, 1, 1]
        view[axis] = k.size
        ks.append(k.reshape(view))
    return tuple(ks)


def dipole_kernel(shape, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), method="kspace", rfft=True,
                  dtype=np.float32):
    """The unit dipole kernel D(k) = 1/3 - (k.b)^2 / |k|^2 on an FFT grid.

    Parameters
    ----------
    shape : 3 ints
        Matrix size of the (padded) grid the kernel is applied on.
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        Direction of B0 in voxel coordinates (normalised here). Default: the third axis.
    method : {"kspace", "ispace"}
        ``"kspace"``: the continuous kernel sampled at the grid's k-space points, with D(0) = 0.
        ``"ispace"``: the point dipole (3 cos^2(theta) - 1) / (4 pi r^3) sampled in image space
        at the voxel centres (minimum-image distances on the periodic grid, zero at the origin,
        which is the Lorentz sphere), times the voxel volume, then Fourier transformed; its
        k = 0 value is set to 0 as well. This is the discretised variant of Salomir et al. 2003.
    rfft : bool
        Build the half-spectrum for ``scipy.fft.rfftn`` (default) or the full spectrum.
    dtype : numpy dtype
        Output dtype (default float32).

    Returns
    -------
    D : ndarray, real
        Shape ``(nx, ny, nz // 2 + 1)`` if ``rfft`` else ``shape``.

    References
    ----------
    Salomir R, de Senneville BD, Moonen CT. A fast calculation method for magnetic field
    inhomogeneity due to an arbitrary distribution of bulk susceptibility. Concepts Magn Reson B
    2003;19B:26-34.
    Marques JP, Bowtell R. Application of a Fourier-based method for rapid calculation of field
    inhomogeneity due to spatial variation of magnetic susceptibility. Concepts Magn Reson B
    2005;25B:65-78.
    """
    shape = _shape3(shape)
    vsz = as_voxel_size(voxel_size)
    b = as_b0_dir(b0_dir)
    if method == "kspace":
        # float32 arithmetic on the broadcast grid (the kernel is stored in float32 anyway):
        # about twice as fast as float64 for large grids.
        ks = tuple(k.astype(np.float32) for k in kspace_coordinates(shape, vsz, rfft=rfft))
        b = b.astype(np.float32)
        k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
        # (k.b)^2 expanded; on an even grid the Nyquist sample stands for both +k and -k, so
        # the cross terms k_i k_j (odd in k_i) average to zero there: dropping them keeps the
        # kernel Hermitian, which matters for a tilted b0 (without it the field of a sphere is
        # off by about 3%).
        kc = []
        for axis, (k, n) in enumerate(zip(ks, shape)):
            k = k.copy()
            if n % 2 == 0:
                k.reshape(-1)[n // 2 if not (rfft and axis == 2) else -1] = 0.0
            kc.append(k)
        kb2 = sum((b[i] * ks[i]) ** 2 for i in range(3))
        for i in range(3):
            for j in range(i + 1, 3):
                if b[i] * b[j] != 0.0:  # a zero term would add +-0 to every sample: skipped
                    kb2 = kb2 + np.float32(2.0) * b[i] * b[j] * kc[i] * kc[j]
        k2[0, 0, 0] = 1.0
        D = np.float32(1.0 / 3.0) - kb2 / k2
        D[0, 0, 0] = 0.0
        return D.astype(dtype, copy=False)
    if method == "ispace":
        coords = []
        for axis, (n, d) in enumerate(zip(shape, vsz)):
            idx = np.arange(n)
            idx = np.where(idx > n // 2, idx - n, idx)  # minimum image on the periodic grid
            view = [1, 1, 1]
            view[axis] = n
            coords.append((idx * d).reshape(view))
        x, y, z = coords
        r2 = x * x + y * y + z * z
        rb = x * b[0] + y * b[1] + z * b[2]
        with np.errstate(invalid="ignore", divide="ignore"):
            d_img = (3.0 * rb * rb / r2 - 1.0) / (4.0 * np.pi * r2 ** 1.5)
        d_img[0, 0, 0] = 0.0
        d_img *= float(np.prod(vsz))
        if rfft:
            D = _rfft(d_img).real
        else:
            D = sfft.fftn(d_img, workers=WORKERS).real
        D[0, 0, 0] = 0.0
        return D.astype(dtype, copy=False)
    raise ValueError(f"method must be one of 'kspace', 'ispace', got {method!r}")


def smv_kernel(shape, *, voxel_size, radius, method="voxel", rfft=True, dtype=np.float32):
    """Fourier transform of the normalised spherical-mean-value (SMV) kernel.

    Its spectrum is real (the kernel is symmetric) and equals 1 at k = 0. ``1 - S`` is the
    SHARP high-pass.

    Parameters
    ----------
    radius : float
        Sphere radius in mm. At least one voxel centre besides the origin must fall inside.
    method : {"voxel", "analytic"}
        ``"voxel"``: the indicator of the voxels whose centres lie within ``radius`` mm of the
        origin, divided by its number of voxels, on the periodic grid (its support is exact, so
        it also serves for mask erosion). ``"analytic"``: the spectrum of the continuous ball,
        ``3 (sin q - q cos q) / q^3`` with ``q = 2 pi |k| r``. On anisotropic voxels the
        voxelised sphere's second moments differ between axes by several percent, so a strong
        background field leaks through ``1 - S``; the analytic ball is isotropic in physical
        space (the leak of a background 15-50x the local field fell from about 23% to 2% of the
        local field in the pipeline engineer's test on 1 x 1 x 2 mm voxels).

    References
    ----------
    Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging of intrinsic magnetic
    tissue properties using MRI signal phase. NeuroImage 2011;54:2789-2807.
    """
    shape = _shape3(shape)
    vsz = as_voxel_size(voxel_size)
    r = as_positive(radius, "radius")
    sphere = _sphere_on_grid(shape, vsz, r)
    if sphere.sum() < 2:
        raise ValueError(f"radius {r} mm is smaller than the voxel size {tuple(float(v) for v in vsz)} mm")
    if method == "analytic":
        ks = kspace_coordinates(shape, vsz, rfft=rfft)
        q = 2.0 * np.pi * r * np.sqrt(ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            S = 3.0 * (np.sin(q) - q * np.cos(q)) / q ** 3
        S[0, 0, 0] = 1.0
        return S.astype(dtype, copy=False)
    if method != "voxel":
        raise ValueError(f"method must be one of 'voxel', 'analytic', got {method!r}")
    sphere = sphere / sphere.sum()
    if rfft:
        S = _rfft(sphere).real
    else:
        S = sfft.fftn(sphere, workers=WORKERS).real
    return S.astype(dtype, copy=False)


def _sphere_on_grid(shape, vsz, radius):
    """Boolean sphere of ``radius`` mm centred at voxel 0 of a periodic grid (float64 0/1)."""
    coords = []
    for axis, (n, d) in enumerate(zip(shape, vsz)):
        idx = np.arange(n)
        idx = np.where(idx > n // 2, idx - n, idx)
        view = [1, 1, 1]
        view[axis] = n
        coords.append((idx * d).reshape(view))
    x, y, z = coords
    return ((x * x + y * y + z * z) <= radius * radius + 1e-9).astype(np.float64)


def laplacian_kernel(shape, *, voxel_size, rfft=True, dtype=np.float32):
    """Spectrum of the 7-point discrete Laplacian: sum_i (2 cos(2 pi k_i d_i) - 2) / d_i^2.

    Non-positive, zero at k = 0, in 1/mm^2.
    """
    vsz = as_voxel_size(voxel_size)
    ks = kspace_coordinates(shape, vsz, rfft=rfft)
    L = 0.0
    for k, d in zip(ks, vsz):
        L = L + (2.0 * np.cos(2.0 * np.pi * k * d) - 2.0) / (d * d)
    return np.asarray(L, dtype=dtype)


def gradient_kernel_sq(shape, *, voxel_size, rfft=True, dtype=np.float32):
    """|G(k)|^2 of the forward-difference gradient: the negative of :func:`laplacian_kernel`."""
    return -laplacian_kernel(shape, voxel_size=voxel_size, rfft=rfft, dtype=dtype)


def gaussian_kernel(shape, *, voxel_size, sigma, rfft=True, dtype=np.float32):
    """Spectrum of a Gaussian blur of standard deviation ``sigma`` mm (one value or one per
    axis): ``exp(-2 pi^2 sum_i sigma_i^2 k_i^2)``, k in cycles/mm. Real, 1 at k = 0; the
    convolution is periodic on the FFT grid."""
    vsz = as_voxel_size(voxel_size)
    sig = np.broadcast_to(np.asarray(sigma, float), (3,))
    if not np.all(np.isfinite(sig)) or np.any(sig < 0):
        raise ValueError(f"sigma must be non-negative mm, got {sigma!r}")
    e = 0.0
    for k, s in zip(kspace_coordinates(shape, vsz, rfft=rfft), sig):
        e = e + (s * k) ** 2
    return np.exp(-2.0 * np.pi ** 2 * e).astype(dtype)


class DipoleOperator:
    """The dipole convolution on a fixed (optionally padded) grid, with its kernel built once.

    ``op(chi)`` pads ``chi`` with zeros, multiplies its spectrum by D and crops back. The operator
    is self-adjoint on the padded grid; :meth:`adjoint` applies ``crop * D * pad``'s adjoint,
    which is the same operation.

    Parameters
    ----------
    shape : 3 ints
        Shape of the volumes it acts on.
    voxel_size, b0_dir, method :
        As in :func:`dipole_kernel`.
    pad : "auto", int or 3 ints
        As in :func:`padded_shape`; ``0`` gives circular convolution on the volume's own grid.
    """

    def __init__(self, shape, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), pad="auto", method="kspace"):
        self.shape = _shape3(shape)
        self.voxel_size = as_voxel_size(voxel_size)
        self.b0_dir = as_b0_dir(b0_dir)
        self.padded_shape = padded_shape(self.shape, pad)
        self.kernel = dipole_kernel(self.padded_shape, voxel_size=self.voxel_size,
                                    b0_dir=self.b0_dir, method=method)

    def __call__(self, chi):
        y = fft_convolve(np.asarray(chi, dtype=np.float32), self.kernel, shape=self.padded_shape)
        return np.ascontiguousarray(crop_volume(y, self.shape), dtype=np.float32)

    forward = __call__
    adjoint = __call__


def forward_field(chi, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), pad="auto", method="kspace"):
    """Local field (ppm) of a susceptibility distribution (ppm) by the dipole convolution.

    Parameters
    ----------
    chi : (X, Y, Z) array
        Susceptibility in ppm (relative to the reference, e.g. CSF).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates. Default: the third axis.
    pad : "auto", int or 3 ints
        Zero padding against wrap-around (see :func:`padded_shape`). Default doubles each axis.
    method : {"kspace", "ispace"}
        Which dipole kernel (see :func:`dipole_kernel`).

    Returns
    -------
    field : (X, Y, Z) float32 array
        The relative field perturbation in ppm, including the Lorentz sphere correction.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.zeros((32, 32, 32), np.float32); chi[16, 16, 16] = 1.0
    >>> f = forward_field(chi, voxel_size=(1, 1, 1))
    >>> bool(f[16, 16, 20] > 0 > f[20, 16, 16])
    True
    """
    chi = as_volume(chi, "chi")
    op = DipoleOperator(chi.shape, voxel_size=voxel_size, b0_dir=b0_dir, pad=pad, method=method)
    return op(chi)
