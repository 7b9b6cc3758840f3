"""The SHARP family: SHARP, V-SHARP and RESHARP.

All three rest on the spherical mean value (SMV) property of harmonic functions: the background
field, produced by sources outside the brain, is harmonic inside it, so ``(delta - S) * f``
(``S`` the normalised sphere) removes it wherever the whole sphere lies inside the mask. What
remains is the local field convolved with ``delta - S``, which the methods deconvolve in
different ways.

The computation runs on the bounding box of the mask plus a margin of one radius, padded to a
fast FFT size, with real FFTs and the SMV kernel of :func:`metaqsm.kernels.smv_kernel`.
"""

from __future__ import annotations

import numpy as np

from .._fft import fft_convolve, irfft, rfft
from .._linalg import cg
from .._validate import MaskWarning, as_int, as_positive, warn
from ..kernels import smv_kernel
from ..mask import KEEP_FRACTION, adapt_radius, check_eroded
from ._grid import CropGrid, check_inputs, smv_erode, sphere_count

RESHARP_RADIUS = 6.0
"""RESHARP's sphere radius in mm (the Meta-QSM paper's), before :func:`_fit_radius` adapts it
to a small mask."""

_NO_EROSION_HINT = "use a smaller radius, or a method without erosion (pdf)"


def _margin(vsz, radius):
    """Voxels of zero padding each side: one radius keeps the circular convolutions from
    wrapping around where the mask touches the edge of the volume."""
    return np.ceil(radius / vsz - 1e-9).astype(int)


def _check_radius(radius, vsz, name="radius"):
    r = as_positive(radius, name)
    if sphere_count(vsz, r) < 7:
        raise ValueError(f"{name} must cover the 6 nearest neighbours: {r} mm is smaller than "
                         f"the largest voxel dimension {float(np.max(vsz))} mm")
    return r


def _fit_radius(mask, vsz, radius, default, method, name="radius"):
    """The sphere radius: ``radius`` as given, or ``default`` adapted to the mask (its warning
    then also says when less than half of the mask is kept).

    A default radius shrinks (:func:`metaqsm.mask.adapt_radius`) until the eroded mask keeps
    half of the mask, but not below twice the largest voxel dimension (QSM.jl's smallest V-SHARP
    sphere: smaller ones leak a strong background, 80 % local-field error against 24 % at
    3 mm on an 8-slice slab of the test phantom) nor below the largest voxel dimension (the
    smallest sphere that reaches the six nearest neighbours). A mask that this smallest sphere
    erodes to nothing (one or a few slices) is refused here, before any FFT.
    """
    if radius is not None:
        return _check_radius(radius, vsz, name)
    floor = max(min(default, 2.0 * float(np.max(vsz))), float(np.max(vsz)))
    r, kept, kept_default = adapt_radius(mask, voxel_size=vsz, radius_mm=max(default, floor),
                                         min_radius_mm=floor)
    if kept == 0:
        check_eroded(mask, np.zeros_like(mask), voxel_size=vsz,
                     what=f"{method}: the mask eroded by the smallest default sphere ({name} "
                     f"{r:g} mm)",
                     hint="too thin for a spherical kernel: use a method without erosion (pdf)")
    if r < default:
        short = (": less than half, the results cover little of the brain"
                 if kept < KEEP_FRACTION else "")
        warn(f"{method}: the default {name} of {default:g} mm would keep "
             f"{100 * kept_default:.1f} % of the mask, reduced to {r:g} mm for this small mask "
             f"(keeps {100 * kept:.1f} %{short}); set {name} to choose", MaskWarning)
    return r


def _check_threshold(threshold):
    t = as_positive(threshold, "threshold")
    if t >= 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    return t


def _smv_setup(field, mask, voxel_size, b0_dir, radius, default, method, smv):
    """What SHARP and RESHARP share: checked inputs, the radius (``default(voxel_size)`` adapted
    to the mask when ``radius`` is None), the grid, the masked field on it, the mask eroded by
    the sphere (refused when empty, a warning when it keeps less than half) and the high-pass
    spectrum ``1 - S``."""
    field, mask, vsz, _ = check_inputs(field, mask, voxel_size, b0_dir)
    r = _fit_radius(mask, vsz, radius, default(vsz), method)
    grid = CropGrid(mask, _margin(vsz, r))
    f = grid.to_grid(np.where(mask, field, 0.0))
    me = smv_erode(rfft(grid.to_grid(mask)), smv_kernel(grid.shape, voxel_size=vsz, radius=r),
                   grid.shape, sphere_count(vsz, r))
    check_eroded(mask, grid.from_grid(me, dtype=bool), voxel_size=vsz,
                 what=f"{method}: the mask eroded by radius {float(r)} mm", hint=_NO_EROSION_HINT,
                 warn_loss=radius is not None)
    hp = (1.0 - smv_kernel(grid.shape, voxel_size=vsz, radius=r, method=smv)).astype(np.float32)
    return grid, f, me, hp


def _truncated_inverse(hp, threshold):
    """``1 / hp``, zero where ``|hp| < threshold`` (SHARP's deconvolution)."""
    return np.where(np.abs(hp) < threshold, 0.0, 1.0 / np.where(hp == 0, 1.0, hp)).astype(np.float32)


def sharp(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), radius=None, threshold=0.05,
          smv="analytic"):
    """SHARP: sophisticated harmonic artifact reduction for phase data.

    The total field is high-pass filtered with ``delta - S`` (``S`` the normalised sphere of
    ``radius``), kept inside the mask eroded by the sphere, and deconvolved by truncated
    inversion of ``1 - S(k)`` (zero where ``|1 - S(k)| < threshold``).

    Parameters
    ----------
    field : (X, Y, Z) array
        Unwrapped total field (ppm, or any unit: the method is linear).
    mask : (X, Y, Z) array
        Brain mask (non-zero inside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        Unused (the SMV filter does not depend on B0); accepted for the common signature.
    radius : float or None
        Sphere radius in mm. Default ``18 * min(voxel_size)``, as QSM.jl, reduced on a small
        mask until the eroded mask keeps half of it (not below the largest voxel dimension;
        :func:`metaqsm.mask.adapt_radius`, with a :class:`~metaqsm.mask.MaskWarning`). A radius
        given is used as is.
    threshold : float
        Truncation level of the deconvolution (default 0.05).
    smv : {"analytic", "voxel"}
        Spectrum of the spherical mean used in the high-pass (see
        :func:`metaqsm.kernels.smv_kernel`): the continuous ball (default; isotropic in mm, so
        a strong background does not leak through on anisotropic voxels) or the voxelised
        sphere. Mask erosion always uses the voxelised sphere.

    Returns
    -------
    local_field : (X, Y, Z) float32
        Local field, zero outside ``eroded_mask``.
    eroded_mask : (X, Y, Z) bool
        The mask eroded by the sphere: voxels whose whole sphere lies in ``mask``.

    Raises
    ------
    ValueError
        A radius below the largest voxel dimension, or a mask that the sphere erodes to nothing
        (the message gives the mask's thickness).

    Warns
    -----
    MaskWarning
        A default radius reduced for a small mask, or an eroded mask keeping less than half of
        the mask.

    References
    ----------
    Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging of intrinsic magnetic
    tissue properties using MRI signal phase: an approach to in vivo brain iron metabolism?
    NeuroImage 2011;54(4):2789-2807.
    """
    thr = _check_threshold(threshold)
    grid, f, me, hp = _smv_setup(field, mask, voxel_size, b0_dir, radius,
                                 lambda vsz: 18.0 * float(vsz.min()), "sharp", smv)
    g = fft_convolve(f, hp) * me
    local = fft_convolve(g.astype(np.float32), _truncated_inverse(hp, thr)) * me
    return grid.from_grid(local), grid.from_grid(me, dtype=bool)


def _default_radii(mask, vsz):
    """12 * min(voxel) down to 2 * max(voxel) in steps of min(voxel) (see :func:`vsharp`); the
    smallest radius adapted to a small mask as SHARP's (:func:`_fit_radius`)."""
    hi, step = 12.0 * vsz.min(), vsz.min()
    lo = _fit_radius(mask, vsz, None, 2.0 * vsz.max(), "vsharp", "smallest radius")
    radii = np.arange(hi, lo - 1e-9, -step)
    if radii.size == 0 or radii[-1] > lo + 1e-9:
        radii = np.append(radii, lo)
    return radii


def vsharp(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), radii=None, threshold=0.05,
           smv="analytic"):
    """V-SHARP: SHARP with a sphere that shrinks towards the brain boundary.

    For each radius from the largest to the smallest, voxels that enter the mask eroded by that
    radius take the field high-pass filtered with that radius; the assembled field is then
    deconvolved with the truncated inverse of the largest kernel (``threshold``) and kept inside
    the mask eroded by the smallest radius. Near the boundary the brain is thus eroded only by
    the smallest radius, while the deep brain profits from the largest one.

    Parameters
    ----------
    field, mask, voxel_size, b0_dir :
        As in :func:`sharp`.
    radii : sequence of floats
        Sphere radii in mm. Default: from ``12 * min(voxel_size)`` down to
        ``2 * max(voxel_size)`` in steps of ``min(voxel_size)`` (12, 11, ..., 3 mm at
        1 x 1 x 1.5 mm). This follows the scaling of QSM.jl's default
        (``18 min : -2 max : 2 max``) with the 12 mm largest radius of STI Suite and SEPIA and
        steps of one voxel, which avoid seams between the shells filtered with different radii
        (on the test phantom: local-field NRMSE 0.21 against 0.29 with QSM.jl's radii). On a
        small mask the smallest default radius shrinks as SHARP's default does.
    threshold : float
        Truncation level of the deconvolution (default 0.05).
    smv : {"analytic", "voxel"}
        As in :func:`sharp`.

    Returns
    -------
    local_field : (X, Y, Z) float32
    eroded_mask : (X, Y, Z) bool
        The mask eroded by the smallest radius.

    Raises
    ------
    ValueError
        As :func:`sharp`, for the smallest radius.

    Warns
    -----
    MaskWarning
        As :func:`sharp`, for the smallest radius.

    References
    ----------
    Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain reflects spatial
    variation in tissue composition. NeuroImage 2011;55(4):1645-1656.
    Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using compressed sensing.
    Magn Reson Med 2012;67(1):137-147.
    """
    field, mask, vsz, _ = check_inputs(field, mask, voxel_size, b0_dir)
    if radii is None:
        rs = _default_radii(mask, vsz)
    else:
        rs = np.atleast_1d(np.asarray(radii, dtype=float))
        if rs.size == 0:
            raise ValueError("radii must contain at least one radius (mm), got none")
    rs = sorted({_check_radius(r, vsz, "radii") for r in rs}, reverse=True)
    thr = _check_threshold(threshold)
    grid = CropGrid(mask, _margin(vsz, rs[0]))
    F = rfft(grid.to_grid(np.where(mask, field, 0.0)))
    M = rfft(grid.to_grid(mask))
    acc = np.zeros(grid.shape, np.float32)
    prev = np.zeros(grid.shape, bool)
    inv = None
    for r in rs:
        S = smv_kernel(grid.shape, voxel_size=vsz, radius=r)
        me = smv_erode(M, S, grid.shape, sphere_count(vsz, r))
        hp = 1.0 - smv_kernel(grid.shape, voxel_size=vsz, radius=r, method=smv)
        if inv is None:
            inv = _truncated_inverse(hp, thr)
        new = me & ~prev
        if new.any():
            acc[new] = irfft(F * hp, grid.shape)[new]
        prev |= me
    check_eroded(mask, grid.from_grid(prev, dtype=bool), voxel_size=vsz,
                 what=f"vsharp: the mask eroded by radius {float(rs[-1])} mm",
                 hint="use smaller radii, or a method without erosion (pdf)",
                 warn_loss=radii is not None or rs[-1] >= 2.0 * vsz.max())
    local = fft_convolve(acc, inv) * prev
    return grid.from_grid(local), grid.from_grid(prev, dtype=bool)


def resharp(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), radius=None, tik_reg=1e-4,
            tol=1e-3, max_iter=100, smv="analytic"):
    """RESHARP: SHARP with Tikhonov regularisation, solved by conjugate gradients.

    Solves ``min_x ||M C (x - f)||^2 + tik_reg ||x||^2`` for the local field ``x``, with
    ``C = delta - S`` the SMV high-pass and ``M`` the mask eroded by the sphere. Its normal
    equations ``(C M C + tik_reg) x = C M C f`` are ill-conditioned outside ``M``, so they are
    solved in the equivalent dual form: with ``u = M C (f - x) / tik_reg`` (supported in ``M``),
    ``x = C u`` and ``(M C^2 M + tik_reg) u = M C f``, by conjugate gradients on the voxels of
    ``M`` preconditioned with ``M (C^2 + 0.01)^-1 M`` (two FFT pairs per iteration, about ten
    iterations; the primal form needed over a hundred).

    Parameters
    ----------
    field, mask, voxel_size, b0_dir :
        As in :func:`sharp`.
    radius : float or None
        Sphere radius in mm. Default :data:`RESHARP_RADIUS` (6 mm, as the Meta-QSM paper),
        reduced on a small mask as SHARP's default is (a whole brain keeps about 75 % of its
        voxels at 6 mm and is never affected). A radius given is used as is.
    tik_reg : float
        Tikhonov regularisation weight (default 1e-4, as Sun's reference code; the paper's
        L-curve choice lies around 1e-4 to 1e-3 for fields in ppm).
    tol : float
        Stopping tolerance on the relative residual of the dual equations (default 1e-3: within
        0.2 % of the converged solution on a 256 x 256 x 64 brain, in about 20 FFT pairs).
    max_iter : int
        Maximum number of CG iterations (default 100).
    smv : {"analytic", "voxel"}
        As in :func:`sharp`.

    Returns
    -------
    local_field : (X, Y, Z) float32
        Local field, zero outside ``eroded_mask``.
    eroded_mask : (X, Y, Z) bool
        The mask eroded by the sphere.

    Raises
    ------
    ValueError
        As :func:`sharp`.

    Warns
    -----
    MaskWarning
        As :func:`sharp`.

    References
    ----------
    Sun H, Wilman AH. Background field removal using spherical mean value filtering and
    Tikhonov regularization. Magn Reson Med 2014;71(3):1151-1157.
    """
    lam = np.float32(as_positive(tik_reg, "tik_reg", allow_zero=True))
    tol = as_positive(tol, "tol")
    max_iter = as_int(max_iter, "max_iter", minimum=1)
    grid, f, me, hp = _smv_setup(field, mask, voxel_size, b0_dir, radius,
                                 lambda vsz: RESHARP_RADIUS, "resharp", smv)
    mef = me.astype(np.float32)
    hp2 = hp * hp
    pre = (1.0 / (hp2 + np.float32(1e-2))).astype(np.float32)

    def A(u):
        y = fft_convolve(u, hp2)
        y *= mef
        if lam:
            y += lam * u
        return y

    def precond(v):
        z = fft_convolve(v, pre)
        z *= mef
        return z

    b = fft_convolve(f, hp)
    b *= mef
    u, _ = cg(A, b, M=precond, tol=tol, max_iter=max_iter)
    local = fft_convolve(u, hp) * me
    return grid.from_grid(local), grid.from_grid(me, dtype=bool)
