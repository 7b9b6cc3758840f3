"""Nonlinear total-variation dipole inversion by ADMM (FANSI's nlTV, Milovic et al. 2018)."""

from __future__ import annotations

import logging

import numpy as np

from .._fd import divergence
from .._fft import crop_volume, irfft, pad_volume, padded_shape, rfft
from .._validate import as_positive
from ..kernels import dipole_kernel, gradient_kernel_sq
from . import _common
from .ndi import data_weight, phase_scale
from .rts import check_reg_rule, discrepancy_search, noise_level, residual_chi2

__all__ = ["nltv"]

logger = logging.getLogger(__name__)

_NEWTON_ITER = 10    # FANSI's inner Newton-Raphson limit
_NEWTON_TOL = 1e-6   # and its tolerance on ||update|| / ||z||


def nltv(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), magnitude=None, noise_std=None,
         lam=1e-3, rho=None, mu=1.0, tol=1e-2, max_iter=50, field_strength=3.0,
         delta_te=5e-3, reg_rule="fixed", pad=0, crop=True, progress=False):
    """Nonlinear total-variation dipole inversion solved with ADMM (FANSI's nlTV).

    Minimises, over ``x`` (radians accrued over ``delta_te``, see :func:`metaqsm.inversion.ndi`),

        ``1/2 ||W (exp(i D x) - exp(i phi))||^2 + alpha ||grad x||_1``

    with the splittings ``z = grad x`` (penalty ``rho``) and ``z2 = D x`` (penalty ``mu``),
    as Milovic et al.:

    * x-update in closed form in k-space:
      ``X = (mu D F(z2 - s2) + rho G^H F(z - s)) / (mu D^2 + rho |G|^2)``;
    * z-update: soft threshold of ``grad x + s`` at ``alpha / rho``, ``s += grad x - z``;
    * z2-update: the voxel-wise proximal step of the nonlinear data term,
      ``W^2 sin(z2 - phi) + mu (z2 - D x - s2) = 0``, by Newton-Raphson from
      ``z2 = D x + s2`` (at most 10 steps, relative tolerance 1e-6, as FANSI), then
      ``s2 += D x - z2``.

    Iterations stop when ``||x_k - x_{k-1}|| < tol ||x_k||`` or after ``max_iter``. Each
    costs two FFT pairs, a gradient, a divergence, the soft threshold and the Newton steps
    (on the mask only: outside it ``W = 0`` and ``z2 = D x + s2`` exactly).

    Units and parameters. ``lam`` is the TV weight in the units of :func:`metaqsm.inversion.tv`
    (ppm mm against the data term in ppm^2): ``alpha = lam * scale`` in radians, with
    ``scale`` the radians per ppm of :func:`metaqsm.inversion.ndi.phase_scale`. With that
    choice, and the penalties ``rho`` and ``mu`` taken as the ppm-domain ADMM's, the
    iterations are those of FANSI run on a field in ppm (as SEPIA calls it) whenever the
    phase is small, i.e. of :func:`metaqsm.inversion.tv` with weights, and the nonlinearity
    of the radian domain acts on large residuals. Defaults: ``lam = 1e-3`` (QSM.jl's
    ``nltv`` and ``tv``; FANSI has no default), ``rho = 100 lam`` and ``mu = 1`` (FANSI's
    ``mu1 = 100 alpha1``, ``mu2 = 1``), ``tol = 1e-2`` and ``max_iter = 50`` (SEPIA's
    defaults for FANSI, 1 % and 50 iterations; FANSI's own ``tolUpdate`` 0.1 % and
    ``maxOuterIter`` 150 took about 120 iterations on the test phantom, 4 times as long,
    for an RMSE 3 points lower: pass ``tol=1e-3, max_iter=150`` for them). Differences from
    FANSI: ``rho`` is
    ``100 lam`` in ppm units, which is FANSI's ``100 alpha1`` divided by ``scale``; the
    Newton curvature is kept at least ``mu`` (``W^2 max(cos, 0) + mu``), so a voxel whose
    residual is beyond ``pi/2`` takes a damped step instead of a step against the slope; the
    initial ``z2`` is ``W^2 phi / (W^2 + mu)`` as FANSI's ``isPrecond``.

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
    magnitude : (X, Y, Z) or (X, Y, Z, echoes) array or None
        Magnitude image: the data weight when ``noise_std`` is not given (see
        :func:`metaqsm.inversion.ndi.data_weight`).
    noise_std : float, (X, Y, Z) array or None
        Field-noise standard deviation in ppm: the data weight (its inverse) and the noise
        level of ``reg_rule="discrepancy"``.
    lam : float
        TV weight in ppm mm (as :func:`metaqsm.inversion.tv`). Default 1e-3. With
        ``reg_rule="discrepancy"`` the starting point of the search.
    rho : float or None
        ADMM penalty of ``z = grad x``. Default ``100 * lam``.
    mu : float
        ADMM penalty of ``z2 = D x``. Default 1.
    tol : float
        Relative change of chi at which to stop. Default 1e-2.
    max_iter : int
        Maximum number of ADMM iterations. Default 50.
    field_strength : float
        B0 in tesla, for the ppm -> radian scale. Default 3.0.
    delta_te : float
        Time in seconds over which the field is compared as a phase, for the ppm -> radian
        scale. Default 5e-3 (4.01 rad/ppm at 3 T).
    reg_rule : {"fixed", "discrepancy"}
        ``"fixed"``: use ``lam``. ``"discrepancy"``: Morozov's discrepancy principle: search
        ``lam`` so that the mean of ``((D chi - f) / sigma)^2`` over the mask is 1, ``sigma``
        being ``noise_std`` or, without it, the estimate of
        :func:`metaqsm.inversion.rts.noise_level`. The search
        (:func:`metaqsm.inversion.rts.discrepancy_search`) steps ``lam`` by factors of 10
        until 1 is bracketed, then interpolates in log-log; it costs up to 8 complete nlTV
        solves (typically 3 to 5) plus one FFT pair each, and the chosen ``lam`` is logged
        at INFO level. ``rho`` follows ``lam`` (100 lam) unless given. Default "fixed".
    pad : "auto", int or 3 ints
        Zero padding of the FFT grid (see :func:`metaqsm.kernels.padded_shape`). Default 0.
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
        non-positive ``lam``, ``rho``, ``mu``, ``tol``, ``max_iter``, ``field_strength`` or
        ``delta_te``, an unknown ``reg_rule``, a magnitude or noise map of another shape or
        with negative values, or a noise map with no positive finite value in the mask.

    References
    ----------
    Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear susceptibility
    inversion with variational regularization. Magn Reson Med 2018;80:814-821.
    Bilgic B, Fan AP, Polimeni JR, Cauley SF, Bianciardi M, Adalsteinsson E, Wald LL,
    Setsompop K. Fast quantitative susceptibility mapping with L1-regularization and automatic
    parameter selection. Magn Reson Med 2014;72:1444-1459.
    Morozov VA. On the solution of functional equations by the method of regularization.
    Soviet Math Dokl 1966;7:414-417.
    """
    f, m, vsz, b = _common.check_inputs(field, mask, voxel_size, b0_dir)
    box, shape0, f, m, (magnitude, noise_std) = _common.crop_to_mask(
        f, m, crop, magnitude=magnitude, noise_std=noise_std)
    lam = as_positive(lam, "lam")
    rho_given = None if rho is None else as_positive(rho, "rho")
    mu = as_positive(mu, "mu")
    tol = _common.check_tol(tol)
    max_iter = _common.check_max_iter(max_iter)
    scale = phase_scale(field_strength, delta_te)
    reg_rule = check_reg_rule(reg_rule)
    w = data_weight(m, magnitude=magnitude, noise_std=noise_std)
    sigma = noise_level(f, m, noise_std=noise_std) if reg_rule == "discrepancy" else None

    shape = padded_shape(f.shape, pad)
    fp = pad_volume(f, shape)
    mp = pad_volume(m, shape)
    D = dipole_kernel(shape, voxel_size=vsz, b0_dir=b)
    L = gradient_kernel_sq(shape, voxel_size=vsz)
    w2 = np.square(pad_volume(w, shape)[mp])  # the Newton step works on the mask only
    phi = fp[mp] * np.float32(scale)
    del w

    def solve(lam_, bar):
        rho_ = 100.0 * lam_ if rho_given is None else rho_given
        return _admm(phi, w2, mp, D, L, vsz, lam_ * scale, rho_, mu, tol, max_iter, bar)

    if reg_rule == "fixed":
        bar = _common.progress_bar(max_iter, progress, "nltv")
        try:
            x = solve(lam, bar)
        finally:
            bar.close()
    else:
        def chi2(x):
            return residual_chi2(x / np.float32(scale), fp, mp, D, sigma)

        lam, x = discrepancy_search(lambda l_: solve(l_, _common._NoBar()), chi2, lam,
                                    progress=progress, desc="nltv")
        logger.info("nltv: the discrepancy principle chose lam = %.4g", lam)
    chi = np.multiply(crop_volume(x, f.shape), m / np.float32(scale), dtype=np.float32)
    return _common.uncrop(chi, box, shape0)


def _admm(phi, w2, mp, D, L, vsz, alpha, rho, mu, tol, max_iter, bar):
    """The ADMM of :func:`nltv` in radians; ``phi`` and ``w2`` are the mask's voxels."""
    shape = mp.shape
    A = np.float32(mu) * D * D + np.float32(rho) * L
    with np.errstate(divide="ignore"):
        iA = np.where(A > 0, 1.0 / A, 0.0).astype(np.float32)
    del A
    kd = np.float32(mu) * D * iA           # multiplier of F(z2 - s2)
    kg = np.float32(-rho) * iA             # of F(div(z - s)): G^H = -div
    del iA
    thr = np.float32(alpha / rho)
    mu32 = np.float32(mu)

    z = np.zeros((3,) + shape, np.float32)   # holds z - s between the updates
    s = np.zeros((3,) + shape, np.float32)
    g = np.empty((3,) + shape, np.float32)
    e = np.zeros(shape, np.float32)          # z2 - s2
    s2 = np.zeros(shape, np.float32)
    e[mp] = w2 * phi / (w2 + mu32)           # FANSI's isPrecond start
    x = np.zeros(shape, np.float32)
    x0 = np.empty_like(x)
    tmp = np.empty(shape, np.float32)
    tmp2 = np.empty(shape, np.float32)
    for _ in range(max_iter):
        x, x0 = x0, x
        divergence(z, voxel_size=vsz, out=tmp, work=tmp2)
        X = rfft(tmp)
        X *= kg
        X += rfft(e) * kd
        x[...] = irfft(X, shape)

        if _common.converged(x, x0, tmp, bar, tol):
            break
        # z-update (anisotropic TV) and its dual; z receives z - s for the next x-update
        _common.shrink_step(x, s, z, thr, voxel_size=vsz, work=g)

        # z2-update: Newton on the mask, z2 = v outside (W = 0)
        X *= D
        dx = irfft(X, shape)            # D x
        del X
        np.add(dx, s2, out=tmp)         # v2 = D x + s2
        v2 = tmp[mp]
        z2 = _newton(v2, phi, w2, mu32)
        tmp[mp] = z2                    # z2 everywhere
        np.subtract(dx, tmp, out=tmp2)
        s2 += tmp2                      # s2 += D x - z2
        np.subtract(tmp, s2, out=e)     # z2 - s2 for the next x-update
    return x


def _newton(v, phi, w2, mu):
    """Voxel-wise minimiser of ``w2 (1 - cos(z - phi)) + mu/2 (z - v)^2`` from ``z = v``."""
    z = v.copy()
    nv = float(np.sqrt(np.vdot(z, z)))
    for _ in range(_NEWTON_ITER):
        r = z - phi
        num = np.sin(r)
        num *= w2
        num += mu * (z - v)
        den = np.cos(r, out=r)
        np.maximum(den, 0.0, out=den)   # curvature at least mu (see nltv's docstring)
        den *= w2
        den += mu
        num /= den
        z -= num
        nz = max(float(np.sqrt(np.vdot(z, z))), nv, 1e-30)
        if float(np.sqrt(np.vdot(num, num))) < _NEWTON_TOL * nz:
            break
    return z
