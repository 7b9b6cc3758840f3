"""RTS: rapid two-step dipole inversion with a sparsity prior (Kames et al. 2018).

Also home of the discrepancy-principle search shared by :func:`rts` and
:func:`metaqsm.inversion.nltv.nltv` (``reg_rule="discrepancy"``): the field-noise level
(:func:`noise_level`) and the one-dimensional search of the regularisation weight
(:func:`discrepancy_search`).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse.linalg import LinearOperator, lsmr

from .._fd import gradient
from .._fft import crop_volume, irfft, pad_volume, padded_shape, rfft
from .._validate import as_positive
from ..kernels import dipole_kernel, gradient_kernel_sq
from . import _common

__all__ = ["rts", "noise_level", "discrepancy_search"]

logger = logging.getLogger(__name__)

REG_RULES = ("fixed", "discrepancy")


def rts(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), noise_std=None, delta=0.15,
        mu=1e5, rho=10.0, tol=1e-2, max_iter=20, lsmr_iter=4, reg_rule="fixed", pad=0,
        crop=True, progress=False):
    """Rapid two-step (RTS) dipole inversion with a total-variation prior.

    1. **Well-conditioned step**: LSMR on ``min ||D chi - f||^2`` stopped after ``lsmr_iter``
       iterations (early stopping regularises it), then masked: ``chi_1``.
    2. **Ill-conditioned step**: with ``M = mu [|D| > delta]`` (the well-conditioned part of
       k-space), ADMM on
       ``min_chi mu/2 ||M^(1/2) F(chi - chi_1)||^2 + ||grad chi||_1``
       (anisotropic TV, forward differences in 1/mm, ``F`` the unitary FFT): the k-space
       outside the cone is kept from step 1, the cone is filled by the TV prior. The
       chi-update is closed form in k-space,
       ``chi = F^-1((M F chi_1 + rho G^H F(y - p)) / (M + rho |G|^2))``, the y-update a soft
       threshold of ``grad chi + p`` at ``1 / rho`` and ``p`` the scaled dual. The penalty
       ``rho`` grows by 5 (and ``p`` shrinks by 5) whenever the primal residual
       ``sum |grad chi - y|`` fell by less than a factor 0.7. Iterations stop when
       ``||chi_k - chi_{k-1}|| < tol ||chi_k||`` or after ``max_iter``.

    Defaults are the paper's and QSM.jl's ``rts`` (delta 0.15, mu 1e5, rho 10, tol 1e-2, 20
    iterations, 4 LSMR iterations, no padding), for a field in ppm as QSMxT passes it.
    Differences from QSM.jl: step 1 runs LSMR on the k-space half spectrum with each
    frequency weighted by its multiplicity in the full spectrum, so it is exactly LSMR on the
    real image-space problem (QSM.jl weights the half spectrum uniformly); the output is
    masked.

    Parameters
    ----------
    field : (X, Y, Z) array
        Local field in ppm. Only the voxels in ``mask`` are used.
    mask : (X, Y, Z) array
        Region of interest.
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates. Default: the third axis.
    noise_std : float, (X, Y, Z) array or None
        Standard deviation of the field noise in ppm (the echo fit's noise map). Used only
        by ``reg_rule="discrepancy"``; without it the noise level is estimated from the
        field (:func:`noise_level`).
    delta : float
        |D| above which k-space counts as well conditioned (unitless). Default 0.15.
    mu : float
        Weight of the well-conditioned data term against the TV term (1/ppm: the TV term is
        in ppm/mm summed over voxels, the data term in ppm^2). Larger keeps step 1's
        well-conditioned k-space more strictly. Default 1e5. With
        ``reg_rule="discrepancy"`` it is the starting point of the search.
    rho : float
        Initial ADMM penalty (1/ppm, as ``mu``). Default 10.
    tol : float
        Relative change of chi at which the ADMM stops. Default 1e-2.
    max_iter : int
        Maximum number of ADMM iterations. Default 20.
    lsmr_iter : int
        LSMR iterations of step 1. Default 4.
    reg_rule : {"fixed", "discrepancy"}
        ``"fixed"``: use ``mu`` as given. ``"discrepancy"``: Morozov's discrepancy principle:
        search ``mu`` so that the mean of ``((D chi - f) / sigma)^2`` over the mask is 1,
        ``sigma`` being ``noise_std`` (or the estimate of :func:`noise_level`). The search
        (:func:`discrepancy_search`) steps ``1 / mu`` by factors of 10 from ``mu`` until the
        statistic is bracketed, then interpolates in log-log; it costs up to 8 complete
        RTS solves (typically 3 to 5) plus one FFT pair each, and the chosen ``mu`` is
        logged at INFO level. Default "fixed".
    pad : "auto", int or 3 ints
        Zero padding of the FFT grid (see :func:`metaqsm.kernels.padded_shape`). Default 0,
        as QSM.jl.
    crop : bool
        Work on the mask's bounding box grown by 8 voxels per side (rounded to fast FFT
        lengths) instead of the whole grid: the same model with less empty space to transform
        (about 1.3-1.6x faster on a 256 x 256 x 64 brain). Default True; False: the whole grid.
    progress : bool
        Show a tqdm progress bar over the ADMM iterations. Default False.

    Returns
    -------
    chi : (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside the mask.

    Raises
    ------
    ValueError
        For invalid field, mask, voxel size or B0 direction (see :func:`metaqsm.inversion.tkd`),
        non-positive ``delta``, ``mu``, ``rho``, ``tol``, ``max_iter`` or ``lsmr_iter``, an
        unknown ``reg_rule``, or a ``noise_std`` that is negative, of another shape, or has no
        positive finite value in the mask.

    References
    ----------
    Kames C, Wiggermann V, Rauscher A. Rapid two-step dipole inversion for susceptibility
    mapping with sparsity priors. NeuroImage 2018;167:276-283.
    Fong DC-L, Saunders M. LSMR: an iterative algorithm for sparse least-squares problems.
    SIAM J Sci Comput 2011;33:2950-2971.
    Morozov VA. On the solution of functional equations by the method of regularization.
    Soviet Math Dokl 1966;7:414-417.
    """
    f, m, vsz, b = _common.check_inputs(field, mask, voxel_size, b0_dir)
    box, shape0, f, m, (noise_std,) = _common.crop_to_mask(f, m, crop, noise_std=noise_std)
    delta = as_positive(delta, "delta")
    mu = as_positive(mu, "mu")
    rho = as_positive(rho, "rho")
    tol = _common.check_tol(tol)
    max_iter = _common.check_max_iter(max_iter)
    lsmr_iter = _common.check_max_iter(lsmr_iter, "lsmr_iter")
    reg_rule = check_reg_rule(reg_rule)
    sigma = None
    if reg_rule == "discrepancy":
        sigma = noise_level(f, m, noise_std=noise_std, voxel_size=vsz)
    elif noise_std is not None:
        check_noise_std(noise_std, m)

    shape = padded_shape(f.shape, pad)
    fp = pad_volume(f, shape)
    mp = pad_volume(m, shape)
    D = dipole_kernel(shape, voxel_size=vsz, b0_dir=b)

    x1 = _well_conditioned(fp, mp, D, lsmr_iter)
    X1 = rfft(x1)
    L = gradient_kernel_sq(shape, voxel_size=vsz)
    wc = np.abs(D) > np.float32(delta)

    def solve(mu_, bar):
        return _ill_conditioned(x1, X1, wc, L, vsz, mu_, rho, tol, max_iter, bar)

    if reg_rule == "fixed":
        bar = _common.progress_bar(max_iter, progress, "rts")
        try:
            x = solve(mu, bar)
        finally:
            bar.close()
    else:
        def chi2(x):
            return residual_chi2(x, fp, mp, D, sigma)

        lam, x = discrepancy_search(lambda lam_: solve(1.0 / lam_, _common._NoBar()), chi2,
                                    1.0 / mu, progress=progress, desc="rts")
        logger.info("rts: the discrepancy principle chose mu = %.4g (1/mu = %.4g)",
                    1.0 / lam, lam)
    return _common.uncrop(np.multiply(crop_volume(x, f.shape), m, dtype=np.float32), box, shape0)


def _well_conditioned(fp, mp, D, iters):
    """Step 1: ``iters`` LSMR iterations on ``D chi = f``, in k-space, then the mask.

    The operator is diagonal in k-space. On the rfft half spectrum every frequency of the
    interior planes stands for two of the full spectrum, so the vectors are scaled by the
    square root of that multiplicity: the inner products, hence the iterates, are those of
    LSMR on the real image-space problem.
    """
    shape = fp.shape
    F = rfft(fp)
    c = np.full(F.shape[-1], np.sqrt(2.0), np.float32)
    c[0] = 1.0
    if shape[-1] % 2 == 0:
        c[-1] = 1.0
    F *= c
    d = D.ravel()
    n = d.size
    A = LinearOperator((n, n), matvec=lambda v: d * v, rmatvec=lambda v: d * v,
                       dtype=np.complex64)
    with np.errstate(over="ignore"):  # float64 constants inside LSMR overflow in float32
        X = lsmr(A, F.ravel(), atol=0.0, btol=0.0, conlim=0.0, maxiter=iters)[0]
    X = X.reshape(F.shape).astype(np.complex64, copy=False)
    X /= c
    x = irfft(X, shape).astype(np.float32, copy=False)
    x *= mp
    return x


def _ill_conditioned(x1, X1, wc, L, vsz, mu, rho, tol, max_iter, bar, tau=0.7, gamma=5.0):
    """Step 2: the TV-regularised fill of the ill-conditioned cone by ADMM (see :func:`rts`)."""
    shape = x1.shape
    M = np.where(wc, np.float32(mu), np.float32(0.0))
    MX1 = X1 * M  # M F(chi_1): constant; divided by A whenever rho changes

    def system(rho):
        A = M + np.float32(rho) * L
        with np.errstate(divide="ignore"):
            iA = np.where(A > 0, 1.0 / A, 0.0).astype(np.float32)
        return MX1 * iA, np.float32(-rho) * iA  # G^H = -div folded into the multiplier

    Fhat, step = system(rho)
    p = np.zeros((3,) + shape, np.float32)
    v = gradient(x1, voxel_size=vsz)          # y - p at the start: y = grad chi_1, p = 0
    d = np.empty_like(v)
    x = x1.copy()
    x0 = np.empty_like(x)
    tmp = np.empty(shape, np.float32)
    tmp2 = np.empty(shape, np.float32)
    nr = np.inf
    for it in range(max_iter):
        x, x0 = x0, x
        _common.chi_update(v, step, Fhat, x, voxel_size=vsz, work=tmp, work2=tmp2)
        # the first update reproduces chi_1 (y = grad chi_1)
        if _common.converged(x, x0, tmp, bar, tol) and it > 0:
            break

        gradient(x, voxel_size=vsz, out=d)
        p += d                      # p + grad x
        _common.soft_threshold(p, np.float32(1.0 / rho), out=v)  # y = shrink(p + grad x, 1/rho)
        d -= v                      # primal residual grad x - y
        p -= v                      # p = p + grad x - y
        v -= p                      # y - p for the next chi-update

        nr0 = nr
        np.square(d, out=d)
        nr = float(np.sum(np.sqrt(d.sum(axis=0))))
        if nr > tau * nr0:          # too slow a fall of the primal residual: stiffen
            rho *= gamma
            p *= np.float32(1.0 / gamma)
            v = _y_minus_p(v, p, gamma)
            Fhat, step = system(rho)
    return x


def _y_minus_p(v, p, gamma):
    """``y - p`` after ``p`` was divided by ``gamma``: v held ``y - gamma p``."""
    v += np.float32(gamma - 1.0) * p
    return v


# ----------------------------------------------------------------------------- noise rules
def check_reg_rule(reg_rule):
    if reg_rule not in REG_RULES:
        raise ValueError(f"reg_rule must be one of {', '.join(map(repr, REG_RULES))}, "
                         f"got {reg_rule!r}")
    return reg_rule


def check_noise_std(noise_std, mask):
    """``noise_std`` (ppm) as a float or a float32 volume of the mask's shape; ``ValueError``
    naming ``noise_std`` for a negative value, another shape or no positive finite value in
    the mask."""
    if np.ndim(noise_std) == 0:
        s = float(noise_std)
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"noise_std must be a positive number of ppm, got {noise_std!r}")
        return s
    s = _as_noise_volume(noise_std)
    if s.shape != mask.shape:
        raise ValueError(f"noise_std must have the shape of the field {mask.shape}, got {s.shape}")
    if np.any(s[np.isfinite(s)] < 0):
        raise ValueError("noise_std must be non-negative")
    if not np.any(np.isfinite(s[mask]) & (s[mask] > 0)):
        raise ValueError("noise_std has no positive finite value in the mask")
    return s


def _as_noise_volume(noise_std):
    s = np.asarray(noise_std)
    if s.ndim != 3 or np.iscomplexobj(s) or not np.issubdtype(s.dtype, np.number):
        raise ValueError(f"noise_std must be a number or a real 3D volume, got "
                         f"{s.ndim}D of dtype {s.dtype}")
    return s.astype(np.float32, copy=False)


def noise_level(field, mask, *, noise_std=None, voxel_size=(1.0, 1.0, 1.0)):
    """The field-noise standard deviation (ppm) for the discrepancy principle.

    Parameters
    ----------
    field : (X, Y, Z) array
        Local field in ppm.
    mask : (X, Y, Z) bool array
        Region of interest.
    noise_std : float, (X, Y, Z) array or None
        The echo fit's field-noise standard deviation in ppm. When given it is returned
        (checked; a map keeps its voxels, 0 or non-finite values mark voxels left out).
    voxel_size : 3 floats
        Voxel size in mm (unused by the estimate, which works in voxel units).

    Returns
    -------
    float or (X, Y, Z) float32 array
        ``noise_std``, or without it a robust estimate from the field: the median absolute
        deviation (times 1.4826) of ``f - mean of its 6 neighbours`` over the voxels whose
        neighbours all lie in the mask, divided by ``sqrt(7/6)`` (that filter's gain for white
        noise). Dipole fields are smooth away from sharp sources, so the median sees mostly
        noise; structure makes it an overestimate.

    Raises
    ------
    ValueError
        For an invalid ``noise_std`` (see :func:`rts`), or a mask with no voxel whose 6
        neighbours are inside it.
    """
    m = np.asarray(mask, bool)
    if noise_std is not None:
        return check_noise_std(noise_std, m)
    f = np.asarray(field, np.float32)
    inner = m.copy()
    acc = np.zeros(f.shape, np.float32)
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(m, shift, axis)
            acc += np.roll(f, shift, axis)
    for axis in range(3):  # no wrap-around across the volume's faces
        sl = [slice(None)] * 3
        sl[axis] = [0, -1]
        inner[tuple(sl)] = False
    if not inner.any():
        raise ValueError("mask has no voxel whose 6 neighbours are inside it: cannot estimate "
                         "the noise level; give noise_std")
    h = f[inner] - acc[inner] / np.float32(6.0)
    mad = float(np.median(np.abs(h - np.median(h))))
    return 1.4826 * mad / np.sqrt(7.0 / 6.0)


def residual_chi2(x, fp, mp, D, sigma):
    """Mean over the mask of ``((D x - f) / sigma)^2``: 1 when the fit matches the noise.

    ``x``, ``fp``, ``mp`` on the FFT grid of ``D``; ``sigma`` a float or a volume of the
    original grid (voxels where it is 0 or not finite are left out).
    """
    r = irfft(rfft(x) * D, x.shape)
    r -= fp
    if np.ndim(sigma) == 0:
        rm = r[mp]
        return float(np.vdot(rm, rm)) / (rm.size * float(sigma) ** 2)
    s = pad_volume(np.asarray(sigma, np.float32), x.shape)
    use = mp & np.isfinite(s) & (s > 0)
    q = r[use] / s[use]
    return float(np.vdot(q, q)) / q.size


def discrepancy_search(solve, chi2, lam0, *, max_solves=8, rtol=0.1, factor=10.0,
                       progress=False, desc="discrepancy"):
    """Find the regularisation weight ``lam`` whose solution satisfies ``chi2(solve(lam)) = 1``.

    ``chi2`` is assumed to grow with ``lam`` (more regularisation, larger residual).
    From ``lam0``, ``lam`` is multiplied (``chi2 < 1``) or divided (``chi2 > 1``) by
    ``factor`` until 1 is bracketed, then the bracket is narrowed by regula falsi on
    ``(log lam, log chi2)`` (Illinois variant) until ``|chi2 - 1| < rtol``. Every step is one
    complete ``solve``.

    Parameters
    ----------
    solve : callable
        ``solve(lam) -> x``.
    chi2 : callable
        ``chi2(x) -> float``, the mean squared normalised residual.
    lam0 : float
        Starting weight.
    max_solves : int
        Budget of ``solve`` calls. Default 8.
    rtol : float
        Accepted ``|chi2 - 1|``. Default 0.1.
    factor : float
        Bracketing step. Default 10.

    Returns
    -------
    (lam, x)
        The weight whose ``chi2`` came closest to 1 (in log scale) and its solution. If 1 is
        never bracketed (the budget ran out, or ``chi2 > 1`` changed by less than 1 % when
        ``lam`` was divided by ``factor``, as when the solver cannot fit the data any
        closer), the weight tried whose ``chi2`` came closest.
    """
    bar = _common.progress_bar(max_solves, progress, desc + " (discrepancy)")
    tried = []  # (log lam, log chi2, x)
    try:
        def run(lam):
            x = solve(lam)
            c = max(chi2(x), 1e-30)
            bar.update()
            bar.set_postfix_str(f"lam={lam:.3g} chi2={c:.3g}")
            logger.debug("%s: lam %.4g -> chi2 %.4g", desc, lam, c)
            tried.append((np.log(lam), np.log(c), x))
            return np.log(c)

        a = np.log(lam0)
        ga = run(lam0)
        b, gb = a, ga
        step = np.log(factor) * (1.0 if ga < 0 else -1.0)
        while len(tried) < max_solves and abs(np.expm1(gb)) > rtol and np.sign(gb) == np.sign(ga):
            a, ga = b, gb
            b = a + step
            gb = run(float(np.exp(b)))
            if step < 0 and abs(gb - ga) < 0.01:  # less regularisation no longer lowers
                break                                 # chi2: 1 is out of reach
        side = 0
        while len(tried) < max_solves and abs(np.expm1(gb)) > rtol and np.sign(ga) != np.sign(gb):
            c = b - gb * (b - a) / (gb - ga)
            gc = run(float(np.exp(c)))
            if np.sign(gc) == np.sign(gb):
                b, gb = c, gc
                if side == -1:
                    ga /= 2.0
                side = -1
            else:
                a, ga = c, gc
                if side == 1:
                    gb /= 2.0
                side = 1
            if abs(np.expm1(gc)) <= rtol:
                break
    finally:
        bar.close()
    best = min(tried, key=lambda t: abs(t[1]))
    return float(np.exp(best[0])), best[2]
