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
