"""R2* and T2* maps from multi-echo gradient-echo magnitude.

Three fits of the mono-exponential decay ``S(t) = S0 exp(-R2* t)``, all voxels at once, around
one private worker per method:

* ``"arlo"`` (default): auto-regression on linear operations (Pei et al. 2015). For equally
  spaced echoes (spacing ``d``), Simpson's rule over each echo triplet,
  ``s_i = d/3 (S_i + 4 S_{i+1} + S_{i+2})``, and the difference ``delta_i = S_i - S_{i+2}``
  obey ``s_i = T2* delta_i`` for a mono-exponential decay; ``T2*`` minimises
  ``sum_i (s_i - T2* delta_i)^2 / (T2* + d/3)^2`` (the error of predicting ``S_{i+2}`` from the
  two echoes before it), which has the closed form
  ``T2* = (sum s^2 + d/3 sum s delta) / (sum s delta + d/3 sum delta^2)``. Simpson's rule is
  not exact for an exponential: with ``x = R2* d`` the formula returns
  ``1/T2* = 3 sinh(x) / (d (cosh(x) + 2))`` (low by 0.03 % at ``x = 0.5``, 0.5 % at ``x = 1``,
  5.6 % at ``x = 2``). This bias is removed here exactly: with ``u = d / (3 T2*)``,
  ``q = exp(-x)`` is the root ``(sqrt(1 + 3 u^2) - 2 u) / (1 + u)`` of
  ``(1 + u) q^2 + 4 u q + (u - 1) = 0``, and ``R2* = -ln(q) / d`` (this package's addition;
  noise-free data then give R2* to rounding). Needs at least 3 echoes, equally spaced within
  1 % of the mean spacing; other echo trains are refused (use ``"loglinear"`` or
  ``"nonlinear"``).
* ``"loglinear"``: weighted least squares of ``ln S_j = ln S0 - R2* t_j`` with weights
  ``S_j^2`` (the inverse variance of ``ln S_j`` for Gaussian noise on ``S_j``).
* ``"nonlinear"``: Levenberg-Marquardt on ``sum_j (S_j - S0 exp(-R2* t_j))^2`` from the
  log-linear estimate (up to 30 iterations, per-voxel damping).

Public API
----------
``r2star_map(magnitude, echo_times, mask=None, *, method="arlo", r2star_max=1000.0,
return_s0=False)`` -> R2* (1/s, float32), or ``(r2star, s0)``
``t2star_from_r2star(r2star, mask=None, *, t2star_max=1000.0)`` -> T2* (ms, float32)

References
----------
Pei M, Nguyen TD, Thimmappa ND, Salustri C, Dong F, Cooper MA, Li J, Prince MR, Wang Y.
Algorithm for fast monoexponential fitting based on Auto-Regression on Linear Operations
(ARLO) of data. Magn Reson Med 2015;73:843-850 (erratum: Magn Reson Med 2019;82:1592).
"""

from __future__ import annotations

import numpy as np

from .._validate import as_echo_times, as_mask, as_positive, as_volume, fmt_values

__all__ = ["R2STAR_METHODS", "R2STAR_MAX", "T2STAR_MAX", "r2star_map", "t2star_from_r2star"]

R2STAR_METHODS = ("arlo", "loglinear", "nonlinear")
"""Names accepted by ``r2star_map(method=...)``."""

R2STAR_MAX = 1000.0
"""Default upper clip of R2* (1/s): cortical bone and air-tissue boundaries at 3 T reach a few
hundred 1/s; 1000 1/s (T2* 1 ms) is beyond what echo times of 2 ms or more can measure."""

T2STAR_MAX = 1000.0
"""Default upper clip of T2* (ms): above CSF's 200-500 ms at 3 T; R2* of 0 (no decay) maps
to it."""

ARLO_SPACING_RTOL = 0.01
"""Echo spacings may differ from their mean by this fraction for ARLO (scanners round echo
times to 10 us)."""

_FLOOR = 1e-6  # of the largest magnitude in the mask: the signal floor of the log-linear fit


def _arlo(S, tes, r2max):
    """ARLO with the exact Simpson-bias inversion (see the module docstring). ``S``: (N, E)."""
    d = float(np.mean(np.diff(tes)))
    s = (d / 3.0) * (S[:, :-2] + 4.0 * S[:, 1:-1] + S[:, 2:])
    delta = S[:, :-2] - S[:, 2:]
    num = np.einsum("ij,ij->i", s, s) + (d / 3.0) * np.einsum("ij,ij->i", s, delta)
    den = np.einsum("ij,ij->i", s, delta) + (d / 3.0) * np.einsum("ij,ij->i", delta, delta)
    # u = d / (3 T2*): finite where T2* is not (no decay gives den = 0, u = 0)
    ok = num > 0
    u = np.where(ok, (d / 3.0) * den / np.where(ok, num, 1.0), 0.0)
    rising = u <= -1.0  # q would not exist: a signal growing with TE, R2* clipped to 0
    u = np.where(rising, 0.0, u)
    q = (np.sqrt(1.0 + 3.0 * u * u) - 2.0 * u) / (1.0 + u)
    q_min = np.exp(-r2max * d)
    return -np.log(np.maximum(q, q_min)) / d


def _loglinear(S, tes, floor):
    """Weighted line fit of ln S (weights S^2); returns R2* and ln S0."""
    S = np.maximum(S, floor)
    y = np.log(S)
    w = S * S
    s0 = w.sum(1)
    s1 = w @ tes
    s2 = w @ (tes * tes)
    sy = (w * y).sum(1)
    sty = (w * y) @ tes
    det = s0 * s2 - s1 * s1
    ok = det > 1e-12 * s0 * s2
    slope = np.where(ok, (s0 * sty - s1 * sy) / np.where(ok, det, 1.0), 0.0)
    return -slope, (sy - slope * s1) / s0


def _amplitude(S, tes, r2):
    """Least-squares S0 for a given R2*: sum S e / sum e^2, e = exp(-R2* t)."""
    e = np.exp(-np.outer(r2, tes))
    return np.einsum("ij,ij->i", S, e) / np.maximum(np.einsum("ij,ij->i", e, e), 1e-300)


def _nonlinear(S, tes, r2, r2max, max_iter=30):
    """Levenberg-Marquardt on (S0, R2*) from the start ``r2``, damping per voxel."""
    a = _amplitude(S, tes, r2)
    lam = np.full(r2.shape, 1e-3)

    def cost(a, r2):
        return np.sum((S - a[:, None] * np.exp(-np.outer(r2, tes))) ** 2, axis=1)

    c = cost(a, r2)
    t = tes[None, :]
    for _ in range(max_iter):
        e = np.exp(-np.outer(r2, tes))
        res = S - a[:, None] * e
        ja, jr = e, -a[:, None] * t * e  # d model / d S0, d model / d R2*
        haa = (ja * ja).sum(1)
        har = (ja * jr).sum(1)
        hrr = (jr * jr).sum(1)
        ga = (ja * res).sum(1)
        gr = (jr * res).sum(1)
        daa, drr = haa * (1.0 + lam), hrr * (1.0 + lam)
        det = daa * drr - har * har
        ok = det > 0
        det = np.where(ok, det, 1.0)
        step_a = np.where(ok, (drr * ga - har * gr) / det, 0.0)
        step_r = np.where(ok, (daa * gr - har * ga) / det, 0.0)
        a_new = a + step_a
        r_new = np.clip(r2 + step_r, 0.0, r2max)
        c_new = cost(a_new, r_new)
        better = c_new < c
        a = np.where(better, a_new, a)
        r2 = np.where(better, r_new, r2)
        c = np.where(better, c_new, c)
        lam = np.where(better, lam * 0.1, lam * 10.0)
        if np.all(np.abs(step_r) <= 1e-6 * np.maximum(r2, 1.0)):
            break
    return r2, a


def r2star_map(magnitude, echo_times, mask=None, *, method="arlo", r2star_max=R2STAR_MAX,
               return_s0=False):
    """R2* (1/s) from multi-echo gradient-echo magnitude.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) array
        Magnitude of E echoes (any unit, non-negative), echoes on the last axis.
    echo_times : sequence of E floats
        Echo times in seconds, strictly increasing.
    mask : (X, Y, Z) array, optional
        Voxels to fit; ``None`` fits every voxel. Outside it every output is 0.
    method : {"arlo", "loglinear", "nonlinear"}
        See the module docstring. Default ``"arlo"`` (Pei et al. 2015; needs at least 3
        equally spaced echoes). ``"loglinear"`` and ``"nonlinear"`` take any 2 or more echoes.
    r2star_max : float
        Upper clip of R2* in 1/s (default 1000, T2* 1 ms). The lower clip is 0: noise can
        make a slowly decaying voxel (CSF) rise with TE.
    return_s0 : bool
        Also return the signal extrapolated to TE = 0.

    Returns
    -------
    r2star : (X, Y, Z) float32
        R2* in 1/s (Hz), in ``[0, r2star_max]``, 0 outside the mask; never NaN or Inf.
        Voxels without signal (all echoes 0) get 0; echoes at or below the noise floor count
        as ``1e-6`` of the largest magnitude in the mask in the log-linear fits (a voxel
        whose signal vanished after the first echo goes to ``r2star_max``).
    s0 : (X, Y, Z) float32
        Only with ``return_s0``: ``S0`` in the unit of ``magnitude`` (least squares for the
        fitted R2*; ``exp`` of the intercept for ``"loglinear"``), 0 outside the mask.

    Raises
    ------
    ValueError
        ``magnitude`` not 4D or negative, ``echo_times`` not one positive increasing value in
        seconds per echo, fewer than 2 echoes, an unknown ``method``, ``"arlo"`` with fewer
        than 3 or unequally spaced echoes, a ``mask`` of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> tes = np.array([0.004, 0.010, 0.016, 0.022])
    >>> mag = 100 * np.exp(-20.0 * tes) * np.ones((2, 2, 2, 1))
    >>> round(float(r2star_map(mag, tes)[0, 0, 0]), 4)
    20.0

    References
    ----------
    Pei M, Nguyen TD, Thimmappa ND, Salustri C, Dong F, Cooper MA, Li J, Prince MR, Wang Y.
    Algorithm for fast monoexponential fitting based on Auto-Regression on Linear Operations
    (ARLO) of data. Magn Reson Med 2015;73:843-850.
    """
    if method not in R2STAR_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, R2STAR_METHODS))}, "
                         f"got {method!r}")
    mag = as_volume(magnitude, "magnitude", ndim=4, dtype=None)
    n_echo = mag.shape[-1]
    if n_echo < 2:
        raise ValueError(f"magnitude must have at least 2 echoes on its last axis, got "
                         f"shape {mag.shape}")
    tes = as_echo_times(echo_times, n_echo, what="magnitude")
    r2max = as_positive(r2star_max, "r2star_max")
    m = as_mask(mask, mag.shape[:3])
    if np.any(mag < 0):
        raise ValueError("magnitude must be non-negative")
    if method == "arlo":
        if n_echo < 3:
            raise ValueError(f"method 'arlo' needs at least 3 equally spaced echoes, "
                             f"echo_times has {n_echo}; use method='loglinear'")
        gaps = np.diff(tes)
        if np.any(np.abs(gaps - gaps.mean()) > ARLO_SPACING_RTOL * gaps.mean()):
            raise ValueError(f"method 'arlo' needs equally spaced echo_times, got "
                             f"{fmt_values(tes)} s; use method='loglinear' or 'nonlinear'")

    S = mag[m].astype(np.float64)
    peak = float(S.max()) if S.size else 0.0
    r2 = np.zeros(S.shape[0])
    s0 = np.zeros(S.shape[0])
    if peak > 0:
        S /= peak  # unit-free sums; S0 scaled back below
        if method == "arlo":
            r2 = _arlo(S, tes, r2max)
            s0 = _amplitude(S, tes, r2)
        else:
            r2, log_s0 = _loglinear(S, tes, _FLOOR)
            r2 = np.clip(r2, 0.0, r2max)
            s0 = np.exp(np.minimum(log_s0, 50.0))
            if method == "nonlinear":
                r2, s0 = _nonlinear(S, tes, r2, r2max)
        r2 = np.clip(np.nan_to_num(r2, nan=0.0, posinf=r2max, neginf=0.0), 0.0, r2max)
        empty = ~np.any(S > 0, axis=1)
        r2[empty] = 0.0
        s0 = np.where(empty, 0.0, np.nan_to_num(s0, nan=0.0, posinf=0.0, neginf=0.0)) * peak
    out = np.zeros(m.shape, np.float32)
    out[m] = r2 + 0.0  # no -0.0 from the clip
    if not return_s0:
        return out
    s0_map = np.zeros(m.shape, np.float32)
    s0_map[m] = s0
    return out, s0_map


def t2star_from_r2star(r2star, mask=None, *, t2star_max=T2STAR_MAX):
    """T2* (ms) from R2* (1/s): ``1000 / R2*``, clipped to ``t2star_max``.

    Parameters
    ----------
    r2star : (X, Y, Z) array
        R2* in 1/s, non-negative (as :func:`r2star_map` returns).
    mask : (X, Y, Z) array, optional
        Voxels to convert; outside, T2* is 0. ``None`` converts every voxel (then the zeros
        that :func:`r2star_map` puts outside its mask become ``t2star_max``).
    t2star_max : float
        Upper clip in ms (default 1000): voxels with ``R2* <= 1000 / t2star_max`` (no
        measurable decay) get it.

    Returns
    -------
    (X, Y, Z) float32
        T2* in ms, in ``(0, t2star_max]`` inside the mask, 0 outside; never NaN or Inf.

    Raises
    ------
    ValueError
        ``r2star`` negative or not 3D, a ``mask`` of another shape, ``t2star_max`` not
        positive.
    """
    r2 = as_volume(r2star, "r2star", dtype=np.float64)
    t2max = as_positive(t2star_max, "t2star_max")
    m = as_mask(mask, r2.shape, allow_empty=True)
    if np.any(r2 < 0):
        raise ValueError("r2star must be non-negative (1/s)")
    slow = r2 <= 1000.0 / t2max
    t2 = np.where(slow, t2max, 1000.0 / np.where(slow, 1.0, r2))
    return np.where(m, t2, 0.0).astype(np.float32)
