"""Physical constants and unit conversions.

Units used throughout metaqsm: fields and susceptibility in ppm, echo times in seconds, field
strength in tesla, voxel sizes in mm. Conversions happen once, at the edge (echo fitting, I/O).
"""

from __future__ import annotations

import numpy as np

GAMMA_MHZ_PER_T = 42.577478
"""Proton gyromagnetic ratio over 2*pi, in MHz/T (CODATA 2018: 42.577478 MHz/T)."""

GAMMA_HZ_PER_T = GAMMA_MHZ_PER_T * 1e6
GAMMA_RAD_PER_S_PER_T = 2.0 * np.pi * GAMMA_HZ_PER_T


def _check_b0(field_strength):
    b0 = float(field_strength)
    if not np.isfinite(b0) or b0 <= 0:
        raise ValueError(f"field_strength must be a positive number of tesla, got {field_strength!r}")
    return b0


def ppm_to_hz(field_ppm, field_strength):
    """Frequency offset in Hz of a field in ppm at ``field_strength`` tesla."""
    return np.asarray(field_ppm) * (GAMMA_HZ_PER_T * _check_b0(field_strength) * 1e-6)


def hz_to_ppm(freq_hz, field_strength):
    """Field in ppm of a frequency offset in Hz at ``field_strength`` tesla."""
    return np.asarray(freq_hz) / (GAMMA_HZ_PER_T * _check_b0(field_strength) * 1e-6)


def ppm_to_rad(field_ppm, echo_time, field_strength):
    """Phase in radians accrued by a field in ppm after ``echo_time`` seconds."""
    return 2.0 * np.pi * ppm_to_hz(field_ppm, field_strength) * np.asarray(echo_time)


def rad_to_ppm(phase_rad, echo_time, field_strength):
    """Field in ppm of a phase in radians accrued after ``echo_time`` seconds."""
    te = np.asarray(echo_time, dtype=float)
    if np.any(te <= 0):
        raise ValueError(f"echo_time must be positive seconds, got {echo_time!r}")
    return hz_to_ppm(np.asarray(phase_rad) / (2.0 * np.pi * te), field_strength)


def rad_per_s_to_ppm(omega, field_strength):
    """Field in ppm of an angular frequency offset in rad/s."""
    return hz_to_ppm(np.asarray(omega) / (2.0 * np.pi), field_strength)


def phase_to_radians(phase, units="radians"):
    """Phase in radians from phase in ``units``; returns ``(phase, scale)``.

    ``units="radians"`` returns the phase as it is (scale 1; :func:`metaqsm._validate.
    check_phase_radians` refuses anything else later). ``units="auto"`` keeps phase already in
    radians ([-pi, pi] or [0, 2 pi]) and rescales anything else: signed values by
    ``pi / max|phase|``, non-negative ones by ``2 pi / max`` (e.g. 0..4095).

    Raises ``ValueError`` for an unknown ``units`` or an all-zero phase.
    """
    from ._validate import PHASE_MIN_SPAN, PHASE_TOL

    if units not in ("radians", "auto"):
        raise ValueError(f"phase_units must be 'radians' or 'auto', got {units!r}")
    if units == "radians":
        return phase, 1.0
    lo, hi = float(np.min(phase)), float(np.max(phase))
    peak = max(abs(lo), abs(hi))
    if peak == 0:
        raise ValueError("phase is all zeros")
    if peak >= PHASE_MIN_SPAN and ((lo >= -np.pi - PHASE_TOL and hi <= np.pi + PHASE_TOL)
                                   or (lo >= -PHASE_TOL and hi <= 2 * np.pi + PHASE_TOL)):
        return phase, 1.0
    scale = np.pi / peak if lo < 0 else 2 * np.pi / hi
    return (phase * scale).astype(np.float32), scale
