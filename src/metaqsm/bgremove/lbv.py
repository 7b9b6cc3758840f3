"""LBV: Laplacian boundary value background removal."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .._fd import laplacian, poisson_solver
from .._linalg import cg
from .._validate import as_int, as_positive
from ..mask import check_eroded, erode_mask
from ._grid import check_inputs


def lbv(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), tol=1e-3, max_iter=None, peel_mm=0.0):
    """LBV: Laplacian boundary value background removal.

    The background field is harmonic inside the brain, so the local field ``fl`` satisfies
    ``lap(fl) = lap(f)`` inside with ``fl = 0`` on the boundary of the mask (where the local
    field is assumed negligible against the background). Interior points are the mask voxels
    whose 6 neighbours are all in the mask; the outer layer of the mask is the boundary. The
    Poisson problem on this irregular domain is solved by conjugate gradients preconditioned
    with a fast sine-transform Poisson solver on the bounding box (a domain-embedding
    preconditioner in place of the paper's multigrid).

    Parameters
    ----------
    field : (X, Y, Z) array
        Unwrapped total field in ppm.
    mask : (X, Y, Z) array
        Brain mask (non-zero inside).
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        Unused (the Laplacian does not depend on B0); accepted for the common signature.
    tol : float
        Stopping tolerance on the relative residual (default 1e-3).
    max_iter : int or None
        Maximum number of CG iterations. Default: the largest dimension of the mask's box.
    peel_mm : float
        Layers (mm) removed from the mask afterwards, where LBV is least accurate (default 0,
        as the paper's code).

    Returns
    -------
    local_field : (X, Y, Z) float32
        Local field, zero outside ``eroded_mask``.
    eroded_mask : (X, Y, Z) bool
        The interior points (the mask less its outer layer), less ``peel_mm``.

    References
    ----------
    Zhou D, Liu T, Spincemaille P, Wang Y. Background field removal by solving the Laplacian
    boundary value problem. NMR Biomed 2014;27(3):312-319.
    """
    field, mask, vsz, _ = check_inputs(field, mask, voxel_size, b0_dir)
    tol = as_positive(tol, "tol")
    peel = as_positive(peel_mm, "peel_mm", allow_zero=True)
    interior = ndi.binary_erosion(mask, ndi.generate_binary_structure(3, 1), border_value=0)
    if not interior.any():
        raise ValueError("mask has no interior voxels (every voxel touches its boundary)")
    out_mask = interior
    if peel > 0:  # before the solve: a peel that removes everything fails at once
        out_mask = erode_mask(interior, voxel_size=vsz, radius_mm=peel)
        if not out_mask.any():
            raise ValueError(f"peel_mm={peel} removes the whole mask")
    check_eroded(mask, out_mask, voxel_size=vsz, what="lbv: the mask less its outer layer"
                 + (f" and peel_mm {peel:g} mm" if peel > 0 else ""),
                 hint="use a smaller peel_mm, or pdf (no erosion)")
    idx = np.nonzero(interior)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    big = tuple(slice(s.start - 1, s.stop + 1) for s in box)  # one boundary layer around
    f = np.where(mask, field, 0.0).astype(np.float64)[big]
    inside = interior[big].astype(np.float64)
    max_iter = (max(inside.shape) if max_iter is None
                else as_int(max_iter, "max_iter", minimum=1))
    # -lap, the SPD operator, on the interior points; the box around them has a layer of
    # non-interior voxels on each face, so the periodic Laplacian never wraps around
    lap = np.empty_like(f)
    neg_inside = -inside

    def A(u):
        laplacian(u * inside, voxel_size=vsz, out=lap)
        return lap * neg_inside

    # right-hand side: -lap(f) at the interior points, from the field on the mask
    b = laplacian(f, voxel_size=vsz, out=np.empty_like(f))
    b *= neg_inside
    inner = (slice(1, -1),) * 3
    solve = poisson_solver(inside[inner].shape, voxel_size=vsz, boundary="dirichlet")

    def precond(r):  # -lap^-1 on the box of the interior points, zero Dirichlet values
        z = np.zeros_like(r)
        z[inner] = solve(r[inner])
        return z * neg_inside

    x, _ = cg(A, b, M=precond, tol=tol, max_iter=max_iter)
    local = np.zeros(mask.shape, np.float32)
    local[big] = (x * inside).astype(np.float32)
    return np.where(out_mask, local, 0.0).astype(np.float32), out_mask
