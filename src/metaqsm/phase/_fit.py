"""Multi-echo fitting: complex echoes -> total field (ppm), noise map, phase offset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import as_echo_times, as_mask, as_volume, as_voxel_size
from ..units import GAMMA_RAD_PER_S_PER_T, _check_b0
from ._unwrap import _wrap, temporal_consistency, unwrap_laplacian, unwrap_romeo


@dataclass
class EchoFit:
    """Result of :func:`fit_echoes`.

    Attributes
    ----------
    field : (X, Y, Z) float32
        Unwrapped total field in ppm (0 outside the mask).
    noise : (X, Y, Z) float32
        Standard deviation of ``field`` in ppm (MEDI's ``N_std``; the data weights of MEDI and
        PDF are its inverse). Voxels without signal get 10 times the largest finite value;
        0 outside the mask.
    phase_offset : (X, Y, Z) float32
        Phase at echo time 0 in radians, wrapped to [-pi, pi) (0 for a single echo).
    residual : (X, Y, Z) float32
        Relative residual of the complex fit ``||s - model|| / ||s||`` per voxel (MEDI's
        ``relres``; 0 for a single echo).
    sigma : float
        The noise level of the complex signal used for ``noise`` (its unit); see
        :func:`fit_echoes`.
    """

    field: np.ndarray
    noise: np.ndarray
    phase_offset: np.ndarray
    residual: np.ndarray
    sigma: float = float("nan")


def _check_phase_scale(phase, phase_scale):
    """Phase in radians; see ``phase_scale`` in :func:`fit_echoes`."""
    peak = float(np.max(np.abs(phase))) if phase.size else 0.0
    if phase_scale == "auto":
        if peak > np.pi * (1.0 + 1e-3):
            raise ValueError(
                f"phase must be wrapped radians in [-pi, pi], got values up to {peak:g}; "
                "if it is in scanner units pass phase_scale='rescale' (multiplies by "
                "pi / max|phase|), if it is radians already (e.g. unwrapped) pass "
                "phase_scale='radians'")
        return phase
    if phase_scale == "radians":
        return phase
    if phase_scale == "rescale":
        if peak == 0:
            raise ValueError("phase is zero everywhere: cannot rescale it")
        return phase * (np.pi / peak)
    raise ValueError(f"phase_scale must be one of 'auto', 'radians', 'rescale', got {phase_scale!r}")


def _spatial_unwrap(phase, magnitude, mask, unwrap, voxel_size):
    if unwrap == "romeo":
        return unwrap_romeo(phase, magnitude=magnitude, mask=mask).astype(np.float64)
    return unwrap_laplacian(phase, voxel_size=voxel_size, mask=mask, snap=True).astype(np.float64)


def _noise_sigma(mag, res2, dof, magnitude_outside):
    """Noise level of the complex signal (standard deviation of its real and imaginary parts
    together, ``sqrt(E|n|^2)``).

    With more echoes than fitted parameters it comes from the pooled residuals (the residual
    of the phase-only model holds half the complex noise power); otherwise from the magnitude
    outside the mask (pure noise there: ``E|s|^2 = sigma^2``); failing both, 1 (relative).
    """
    if dof > 0 and res2.size:
        return float(np.sqrt(2.0 * np.sum(res2) / (res2.shape[0] * dof)))
    if magnitude_outside is not None and magnitude_outside.size:
        return float(np.sqrt(np.mean(magnitude_outside ** 2)))
    return 1.0


def _finite_noise(noise):
    """Voxels without signal (infinite standard deviation) get 10 times the largest finite
    value, so that weights 1 / noise stay finite and tiny there."""
    bad = ~np.isfinite(noise)
    if bad.any():
        good = noise[~bad]
        noise = noise.copy()
        noise[bad] = 10.0 * float(good.max()) if good.size else 1.0
    return noise


def _wls_line(y, w, t):
    """Per-voxel weighted least squares of ``y = p + a t`` (rows: voxels). Returns p, a and
    the inverse normal matrix's (a, a) element."""
    s0 = w.sum(1)
    s1 = (w * t).sum(1)
    s2 = (w * t * t).sum(1)
    sy = (w * y).sum(1)
    sty = (w * t * y).sum(1)
    det = s0 * s2 - s1 * s1
    ok = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
    det = np.where(ok, det, 1.0)
    a = np.where(ok, (s0 * sty - s1 * sy) / det, 0.0)
    p = np.where(s0 > 0, (sy - a * s1) / np.where(s0 > 0, s0, 1.0), 0.0)
    var_a = np.where(ok, s0 / det, np.inf)
    return p, a, var_a


def fit_echoes(magnitude, phase, *, echo_times=None, field_strength=None, mask=None,
               method="nonlinear", unwrap="romeo", voxel_size=(1.0, 1.0, 1.0), max_iter=30,
               tol=1e-4, phase_scale="auto"):
    """Fit the total field (ppm) from multi-echo gradient-echo magnitude and phase.

    ``method="nonlinear"`` (default) fits the complex signal ``s_j = m_j exp(i (phi0 + w t_j))``
    (``m_j`` the measured magnitudes) by Gauss-Newton over the phase offset ``phi0`` and the
    frequency ``w``, as MEDI's ``Fit_ppm_complex``; it starts from the phase difference of the
    first two echoes, so the frequency is found modulo ``2 pi / dTE`` (``dTE`` = the first echo
    spacing), and the fitted ``w dTE`` is then unwrapped spatially with ``unwrap`` and converted
    to ppm. Working on the complex signal, it needs no temporal unwrapping and weighs noisy
    echoes down automatically.

    ``method="linear"`` unwraps every echo spatially (each echo moved by exact multiples of
    2 pi, then made temporally consistent, see :func:`unwrap_romeo` with ``individual=True``)
    and fits ``phi_j = phi0 + w t_j`` by weighted least squares with weights ``m_j^2`` (the
    inverse variance of the phase of echo j).

    A single echo gives ``w = unwrap(phi) / TE`` without an offset (the offset cannot be
    separated from the field with one echo; ``phase_offset`` is then 0).

    Parameters
    ----------
    magnitude, phase : (X, Y, Z, E) arrays (or (X, Y, Z) for one echo)
        Magnitude (any unit) and phase in radians, echoes on the last axis.
    echo_times : sequence of E floats
        Echo times in seconds (required).
    field_strength : float
        B0 in tesla (required).
    mask : (X, Y, Z) array or None
        Voxels to fit; ``None`` fits everywhere. Outside, every output is 0.
    method : {"nonlinear", "linear"}
        See above.
    unwrap : {"romeo", "laplacian"}
        Spatial unwrapper. ``"laplacian"`` is used in its exact-multiple form (the input moved
        by multiples of 2 pi towards the Laplacian estimate).
    voxel_size : 3 floats
        Voxel size in mm (only used by the Laplacian unwrapper). Default 1 mm.
    max_iter, tol : int, float
        Gauss-Newton iterations (default 30) and the stopping tolerance on the update of
        ``w dTE`` in radians (default 1e-4).
    phase_scale : {"auto", "radians", "rescale"}
        ``"auto"`` (default) refuses phase with values beyond [-pi, pi] (a ValueError that
        names the remedies), ``"radians"`` takes the phase as radians without a check,
        ``"rescale"`` multiplies it by ``pi / max|phase|`` (scanner units such as
        -4096..4095).

    Returns
    -------
    EchoFit
        ``field`` (ppm), ``noise`` (ppm), ``phase_offset`` (rad), ``residual``. The noise map
        is the Cramer-Rao standard deviation of the fitted field,
        ``sigma / sqrt(2) * sqrt((J^T W J)^-1_ww)`` in ppm, with ``sigma`` the complex noise
        level from the pooled residuals (more than 2 echoes), else from the magnitude outside
        the mask, else 1 (then only relative).

    Raises
    ------
    ValueError
        Missing ``echo_times`` or ``field_strength``; magnitude and phase of different shapes;
        a number of echo times that differs from the number of echoes; echo times not in
        seconds or not increasing; phase not in radians (with ``phase_scale="auto"``); an
        unknown ``method`` or ``unwrap``.

    References
    ----------
    Liu T, Wisnieff C, Lou M, Chen W, Spincemaille P, Wang Y. Nonlinear formulation of the
    magnetic field to source relationship for robust quantitative susceptibility mapping.
    Magn Reson Med 2013;69(2):467-476.
    """
    if field_strength is None:
        raise ValueError("field_strength (tesla) is required")
    try:
        b0 = _check_b0(field_strength)
    except (TypeError, ValueError):
        raise ValueError("field_strength must be a positive number of tesla, "
                         f"got {field_strength!r}") from None
    if method not in ("nonlinear", "linear"):
        raise ValueError(f"method must be one of 'nonlinear', 'linear', got {method!r}")
    if unwrap not in ("romeo", "laplacian"):
        raise ValueError(f"unwrap must be one of 'romeo', 'laplacian', got {unwrap!r}")
    mag = as_volume(magnitude, "magnitude", ndim=(3, 4))
    ph = as_volume(phase, "phase", ndim=(3, 4))
    if mag.shape != ph.shape:
        raise ValueError(f"magnitude and phase must have the same shape, got magnitude "
                         f"{mag.shape} and phase {ph.shape}")
    if ph.ndim == 3:
        mag, ph = mag[..., None], ph[..., None]
    n_echo = ph.shape[-1]
    tes = as_echo_times(echo_times, n_echo)
    ph = _check_phase_scale(ph, phase_scale)
    vsz = as_voxel_size(voxel_size)
    mag = np.abs(mag)
    shape = ph.shape[:3]
    m = as_mask(mask, shape)
    outside_mag = mag[~m].ravel() if mask is not None and (~m).any() else None
    to_ppm = 1.0 / (GAMMA_RAD_PER_S_PER_T * b0 * 1e-6)  # rad/s -> ppm

    field = np.zeros(shape)
    noise = np.zeros(shape)
    offset = np.zeros(shape)
    residual = np.zeros(shape)

    if n_echo == 1:
        te = tes[0]
        u = _spatial_unwrap(ph[..., 0], mag[..., 0], m, unwrap, vsz)
        field[m] = u[m] / te * to_ppm
        sigma = _noise_sigma(None, np.empty((0, 1)), 0, outside_mag)
        with np.errstate(divide="ignore"):
            m0 = mag[..., 0][m].astype(np.float64)
            noise[m] = _finite_noise(sigma / np.sqrt(2.0) / (m0 * te) * to_ppm)
        return EchoFit(field.astype(np.float32), noise.astype(np.float32),
                       offset.astype(np.float32), residual.astype(np.float32), sigma)

    dte = tes[1] - tes[0]
    tau = (tes - tes[0]) / dte  # echo index for equally spaced echoes
    M = mag[m].astype(np.float64)  # (N, E)
    P = ph[m].astype(np.float64)
    w = M * M

    if method == "nonlinear":
        s = M * np.exp(1j * P)
        a = np.angle(s[:, 1] * np.conj(s[:, 0]))
        p = np.angle(np.sum(M * s * np.exp(-1j * a[:, None] * tau), axis=1))
        s0 = w.sum(1)
        s1 = (w * tau).sum(1)
        s2 = (w * tau * tau).sum(1)
        det = s0 * s2 - s1 * s1
        ok = det > 1e-12 * np.maximum(s0 * s2, 1e-300)
        det = np.where(ok, det, 1.0)
        active = np.flatnonzero(ok)  # iterate only on the voxels that have not converged
        for _ in range(int(max_iter)):
            if active.size == 0:
                break
            wa, ta = w[active], tau
            sn = np.sin(P[active] - p[active, None] - a[active, None] * ta)
            g0 = (wa * sn).sum(1)
            g1 = (wa * ta * sn).sum(1)
            da = (s0[active] * g1 - s1[active] * g0) / det[active]
            dp = (g0 - s1[active] * da) / s0[active]
            a[active] += da
            p[active] += dp
            active = active[np.abs(da) >= tol]
        var_a = np.where(ok, s0 / det, np.inf)
        # spatial unwrapping of the frequency (as the phase accrued over one echo spacing)
        amap = np.zeros(shape)
        amap[m] = _wrap(a)
        mag0 = mag[..., 0]
        a_u = _spatial_unwrap(amap, mag0, m, unwrap, vsz)[m]
        omega = a_u / dte
        # the offset that goes with the unwrapped frequency, at t = 0
        phi0 = np.angle(np.sum(M * s * np.exp(-1j * omega[:, None] * tes), axis=1))
        model = M * np.exp(1j * (phi0[:, None] + omega[:, None] * tes))
        res2 = np.abs(s - model) ** 2
    else:
        u = _unwrap_echoes(ph, mag, m, unwrap, vsz, tes)[m]  # (N, E)
        phi0, omega, var_t = _wls_line(u, w, tes)
        var_a = var_t * dte * dte
        res2 = np.abs(M * np.exp(1j * P) - M * np.exp(1j * (phi0[:, None] + omega[:, None] * tes))) ** 2
        phi0 = _wrap(phi0)
    sigma = _noise_sigma(M, res2, n_echo - 2, outside_mag)
    field[m] = omega * to_ppm
    noise[m] = _finite_noise(sigma / np.sqrt(2.0) * np.sqrt(var_a) / dte * to_ppm)
    offset[m] = phi0
    energy = w.sum(1)
    residual[m] = np.where(energy > 0, np.sqrt(res2.sum(1) / np.where(energy > 0, energy, 1.0)), 0.0)
    return EchoFit(field.astype(np.float32), noise.astype(np.float32), offset.astype(np.float32),
                   residual.astype(np.float32), sigma)


def _unwrap_echoes(ph, mag, mask, unwrap, vsz, tes):
    """Every echo unwrapped spatially by exact multiples of 2 pi, temporally consistent."""
    if unwrap == "romeo":
        return unwrap_romeo(ph, magnitude=mag, mask=mask, echo_times=tes,
                            individual=True).astype(np.float64)
    out = np.empty(ph.shape)
    for e in range(ph.shape[-1]):
        out[..., e] = _spatial_unwrap(ph[..., e], mag[..., e], mask, unwrap, vsz)
    return temporal_consistency(out, ph, mask)
