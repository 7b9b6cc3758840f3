"""NDI: nonlinear dipole inversion by gradient descent (Polak et al. 2020).

Also home of the helpers of the nonlinear data term shared with
:func:`metaqsm.inversion.nltv.nltv`: the data weight in [0, 1] (:func:`data_weight`) and the
ppm -> radian scale (:func:`phase_scale`).
"""

from __future__ import annotations

import numpy as np

from .._fft import crop_volume, irfft, pad_volume, padded_shape, rfft
from .._validate import as_positive
from ..kernels import dipole_kernel
from ..units import ppm_to_rad
from . import _common
from .rts import check_noise_std

__all__ = ["ndi", "data_weight", "phase_scale"]


def ndi(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), magnitude=None, noise_std=None,
        lam=1e-5, tau=2.0, max_iter=100, tol=1e-3, field_strength=3.0, delta_te=5e-3, pad=0,
        crop=True, progress=False):
    """Nonlinear dipole inversion (NDI): gradient descent on the complex-exponential data term.

    Minimises, over ``x`` (radians: the phase a susceptibility accrues over ``delta_te``),

        ``1/2 ||W (exp(i D x) - exp(i phi))||^2 + lam/2 ||x||^2``

    with ``phi`` the local field as phase, by gradient descent from ``x = 0``:

        ``x <- x - tau (D^T (W^2 sin(D x - phi)) + lam x)``,

    the iteration of Polak et al. and of FANSI's ``ndi``. The small Tikhonov term only
    stabilises; the regularisation is early stopping. Each step is one FFT pair: ``x`` is
    kept as its spectrum, ``X <- (1 - tau lam) X - tau D F(W^2 sin(F^-1(D X) - phi))``. The
    iteration stops after ``max_iter`` steps or when the step is small,
    ``||x_k - x_{k-1}|| < tol ||x_k||``.

    Units. The field (ppm) becomes a phase in radians with
    ``phi = 2 pi * delta_te * 42.577478e6 * field_strength * 1e-6 * f`` (MEDI's convention,
    :func:`metaqsm.units.ppm_to_rad`; 4.01 rad/ppm with the defaults) and the result is
    mapped back to ppm. The scale only sets how nonlinear the data term is: a residual of
    more than ``pi/2`` radians (a voxel the dipole model does not explain, or noise where
    the magnitude is low) gets a saturating, then a reversing, pull (``sin``), which is
    NDI's robustness; with a small scale NDI becomes a weighted Landweber iteration.

    Weights. ``W`` lies in [0, 1] and is 0 outside the mask (see :func:`data_weight`): from
    ``noise_std`` if given (``1 / noise_std``), else from ``magnitude`` (FANSI's ``magn /
    max(magn)``), else 1 in the mask; ``W <= 1`` keeps ``tau = 2`` stable (``|D| <= 2/3``).

    Defaults are FANSI's ``ndi`` (Milovic, a co-author of the paper): ``lam = 1e-5`` (its
    ``alpha``), ``tau = 2`` (the paper's code takes steps of 1 along twice this gradient)
    and ``max_iter = 100`` (the paper's script and SEPIA run 200; on the test phantoms with
    noise the error grows again beyond about 100 steps, and each step costs an FFT pair).
    Difference: FANSI always runs ``max_iter`` steps; here the loop also stops when the
    relative step falls below ``tol`` (1e-3, the 0.1 % of FANSI's other solvers), checked
    every 10 steps.

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
        Magnitude image (echoes combined by root-mean-square): the data weight when
        ``noise_std`` is not given.
    noise_std : float, (X, Y, Z) array or None
        Field-noise standard deviation in ppm (the echo fit's): the data weight is its
        inverse. Takes precedence over ``magnitude``.
    lam : float
        Tikhonov weight (unitless: the data term is in rad^2 per rad^2). Default 1e-5.
    tau : float
        Gradient-descent step. Default 2.
    max_iter : int
        Number of gradient steps (the regularisation). Default 100.
    tol : float
        Relative step size at which to stop early. Default 1e-3.
    field_strength : float
        B0 in tesla, for the ppm -> radian scale. Default 3.0.
    delta_te : float
        Time in seconds over which the field is compared as a phase (an echo spacing for a
        multi-echo fit), for the ppm -> radian scale. Default 5e-3.
    pad : "auto", int or 3 ints
        Zero padding of the FFT grid (see :func:`metaqsm.kernels.padded_shape`). Default 0.
    crop : bool
        Work on the mask's bounding box grown by 8 voxels per side (rounded to fast FFT
        lengths) instead of the whole grid: the same model with less empty space to transform
        (about 1.3-1.6x faster on a 256 x 256 x 64 brain). Default True; False: the whole grid.
    progress : bool
        Show a tqdm progress bar over the iterations. Default False.

    Returns
    -------
    chi : (X, Y, Z) float32 array
        Susceptibility in ppm, zero outside the mask.

    Raises
    ------
    ValueError
        For invalid field, mask, voxel size or B0 direction (see :func:`metaqsm.inversion.tkd`),
        non-positive ``lam``, ``tau``, ``max_iter``, ``tol``, ``field_strength`` or
        ``delta_te``, a magnitude or noise map of another shape or with negative values, or
        a noise map with no positive finite value in the mask.

    References
    ----------
    Polak D, Chatnuntawech I, Yoon J, Iyer SS, Milovic C, Lee J, Bachert P, Adalsteinsson E,
    Setsompop K, Bilgic B. Nonlinear dipole inversion (NDI) enables robust quantitative
    susceptibility mapping (QSM). NMR Biomed 2020;33:e4271.
    Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear susceptibility
    inversion with variational regularization. Magn Reson Med 2018;80:814-821 (FANSI).
    """
    f, m, vsz, b = _common.check_inputs(field, mask, voxel_size, b0_dir)
    box, shape0, f, m, (magnitude, noise_std) = _common.crop_to_mask(
        f, m, crop, magnitude=magnitude, noise_std=noise_std)
    lam = as_positive(lam, "lam")
    tau = as_positive(tau, "tau")
    max_iter = _common.check_max_iter(max_iter)
    tol = _common.check_tol(tol)
    scale = phase_scale(field_strength, delta_te)
    w = data_weight(m, magnitude=magnitude, noise_std=noise_std)

    shape = padded_shape(f.shape, pad)
    phi = pad_volume(f * np.float32(scale), shape)
    w2 = pad_volume(np.square(w), shape)
    del w
    D = dipole_kernel(shape, voxel_size=vsz, b0_dir=b)
    tD = np.float32(-tau) * D
    shrink = np.float32(1.0 - tau * lam)
    # |X|^2 summed over the half spectrum with each frequency's multiplicity in the full one
    mult = np.full(shape[-1] // 2 + 1, 2.0, np.float32)
    mult[0] = 1.0
    if shape[-1] % 2 == 0:
        mult[-1] = 1.0

    def norm2(Y):
        a = np.square(Y.real) + np.square(Y.imag)
        return float(np.sum(a.sum(axis=(0, 1)) * mult))

    X = np.zeros(D.shape, np.complex64)
    r = np.empty(shape, np.float32)
    bar = _common.progress_bar(max_iter, progress, "ndi")
    try:
        for it in range(max_iter):
            r[...] = irfft(X * D, shape)
            r -= phi
            np.sin(r, out=r)
            r *= w2
            G = rfft(r)
            G *= tD                     # -tau D F(W^2 sin(D x - phi))
            X *= shrink                 # (1 - tau lam) X: the Tikhonov part of the step
            X += G
            bar.update()
            if it % 10 == 9:  # the norms cost about a third of a step; the data part of
                # the step stands for all of it (tau lam ||x|| is negligible)
                ndx, nx = np.sqrt(norm2(G)), np.sqrt(norm2(X))
                bar.set_postfix_str(f"dx/x={ndx / max(nx, 1e-30):.2e}")
                if ndx < tol * nx:
                    break
    finally:
        bar.close()
    x = irfft(X, shape)
    chi = np.multiply(crop_volume(x, f.shape), m / np.float32(scale), dtype=np.float32)
    return _common.uncrop(chi, box, shape0)


def phase_scale(field_strength, delta_te):
    """Radians per ppm accrued over ``delta_te`` seconds at ``field_strength`` tesla; checks
    both (``ValueError`` naming them)."""
    return float(ppm_to_rad(1.0, as_positive(delta_te, "delta_te"),
                            as_positive(field_strength, "field_strength")))


def data_weight(mask, *, magnitude=None, noise_std=None):
    """Data weight ``W`` in [0, 1] of the nonlinear data term, 0 outside ``mask``.

    Parameters
    ----------
    mask : (X, Y, Z) bool array
        Region of interest.
    magnitude : (X, Y, Z) or (X, Y, Z, echoes) array or None
        Magnitude image; echoes are combined by root-mean-square (as SEPIA's FANSI wrapper).
    noise_std : float, (X, Y, Z) array or None
        Field-noise standard deviation (ppm; only relative values matter).

    Returns
    -------
    (X, Y, Z) float32 array
        ``1 / noise_std`` if given (0 where it is 0 or not finite), else ``magnitude``, else 1,
        in the mask, divided by its 99th percentile over the mask and clipped to [0, 1]. FANSI
        divides the magnitude by its maximum; the percentile keeps a few bright voxels
        (vessels, fat) from scaling the rest of the brain down.

    Raises
    ------
    ValueError
        For a magnitude or noise map of another shape or with negative values, a magnitude
        that is zero throughout the mask, or a noise map with no positive finite value in
        the mask.
    """
    m = np.asarray(mask, bool)
    if noise_std is not None:
        s = check_noise_std(noise_std, m)
        if np.ndim(s) == 0:
            return m.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.isfinite(s) & (s > 0), 1.0 / s, 0.0).astype(np.float32)
    elif magnitude is not None:
        w = _common.check_magnitude(magnitude, m.shape, combine="rms").astype(np.float32,
                                                                              copy=True)
    else:
        return m.astype(np.float32)
    top = float(np.percentile(w[m], 99.0))
    if not top > 0:
        top = float(np.max(w[m]))
    if not top > 0:
        name = "noise_std" if noise_std is not None else "magnitude"
        raise ValueError(f"{name} gives no positive weight in the mask")
    w *= np.float32(1.0 / top)
    np.clip(w, 0.0, 1.0, out=w)
    w[~m] = 0.0
    return w
