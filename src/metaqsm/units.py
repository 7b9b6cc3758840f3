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


# ----------------------------------------------------------------------------- phase units
PHASE_UNITS = ("radians", "radians-unchecked", "auto", "milliradians", "degrees", "12bit",
               "16bit", "arbitrary")
"""The values of ``phase_units`` (:func:`phase_to_radians`)."""

PHASE_COVERAGE = 0.5
"""Fraction of its unit's full cycle a phase image must span (max - min) to be taken for that
unit without being told: wrapped phase spans nearly a whole cycle (noise outside the head alone
does), so a phase spanning less than half a cycle (pi rad) is a scaled-down image."""

# (units, low, high, radians per unit, unsigned offset): the ranges phase images are stored in.
# Unsigned integer ranges are stored values whose lowest code is -pi (Siemens 0..4095 is
# -4096..4094 after its RescaleSlope 2 / RescaleIntercept -4096), so they map to the same
# radians as the signed range; unsigned radians, degrees and milliradians are wrapped.
_PHASE_RANGES = (
    ("radians", -np.pi, np.pi, 1.0, 0.0),
    ("radians", 0.0, 2 * np.pi, 1.0, 0.0),
    ("degrees", -180.0, 180.0, np.pi / 180, 0.0),
    ("degrees", 0.0, 360.0, np.pi / 180, 0.0),
    ("milliradians", -1000 * np.pi, 1000 * np.pi, 1e-3, 0.0),
    ("milliradians", 0.0, 2000 * np.pi, 1e-3, 0.0),
    ("12bit", -4096.0, 4095.0, np.pi / 4096, 0.0),
    ("12bit", 0.0, 4095.0, np.pi / 2048, -np.pi),
    ("16bit", -32768.0, 32767.0, np.pi / 32768, 0.0),
    ("16bit", 0.0, 65535.0, np.pi / 32768, -np.pi),
)
_UNIT_WORDS = {"radians": "radians", "degrees": "degrees", "milliradians": "milliradians",
               "12bit": "Siemens scanner units (12-bit: -4096..4095, or 0..4095 without rescale)",
               "16bit": "16-bit scanner units (-32768..32767 or 0..65535)"}


def _phase_range_fits(lo, hi, units=None):
    """The stored ranges (of ``units``, or of any unit) that hold ``[lo, hi]``, smallest first.

    Each range is allowed 1e-3 rad of slack (float32 rounding of +-pi, a rounded Siemens 4096).
    """
    from ._validate import PHASE_TOL

    fits = [r for r in _PHASE_RANGES if (units is None or r[0] == units)
            and lo >= r[1] - PHASE_TOL / r[3] and hi <= r[2] + PHASE_TOL / r[3]]
    return sorted(fits, key=lambda r: r[2] - r[1])


def phase_range_guess(lo, hi):
    """What the values ``[lo, hi]`` look like, for messages: (units or None, words)."""
    fits = _phase_range_fits(lo, hi)
    if not fits:
        return None, "no phase unit metaqsm knows"
    r = fits[0]
    if (hi - lo) < PHASE_COVERAGE * (r[2] - r[1]):
        return None, "no phase unit metaqsm knows (too narrow a range: arbitrary units?)"
    return r[0], _UNIT_WORDS[r[0]]


def _wrap(x):
    """Wrap radians into [-pi, pi) (never clip)."""
    return np.mod(x + np.pi, 2 * np.pi) - np.pi


def phase_to_radians(phase, units="radians"):
    """Wrapped phase in radians, [-pi, pi), from phase stored in ``units``.

    The one rule for phase units (NIfTI input, DICOM input, every command):

    * ``"radians"`` (default): values in [-pi, pi] or [0, 2 pi] (1e-3 rad of slack) are
      accepted, the latter wrapped to [-pi, pi). Anything else is refused with a guess of its
      unit and the ``phase_units`` to set. A phase spanning less than half a cycle (max - min
      < pi) is refused too: wrapped phase spans nearly -pi..pi (noise outside the head alone
      does), so such values are a scaled-down image (0.3 * phase spans +-0.94 rad).
    * ``"radians-unchecked"``: radians as above without the span check, for phase that really
      spans less than pi (a tightly masked, short-echo image).
    * ``"auto"``: radians as with ``"radians"``, or a vendor range recognised exactly when the
      values fill at least half of it: degrees (-180..180, 0..360), milliradians
      (-3142..3142, 0..6283; GE, Philips), 12-bit (-4096..4095 and 0..4095; Siemens with and
      without its rescale tags), 16-bit (-32768..32767, 0..65535). The smallest range that
      holds the values wins. Anything else is refused.
    * ``"degrees"``, ``"milliradians"``, ``"12bit"``, ``"16bit"``: that unit, signed or
      unsigned range; values outside both are refused.
    * ``"arbitrary"``: arbitrary units, rescaled by pi / max|phase| (signed values) or by
      2 pi / max (non-negative values, then wrapped).

    Unsigned integer ranges map like the signed ones (0 is -pi: Siemens 0..4095 equals its
    rescaled -4096..4094); unsigned radians, degrees and milliradians are wrapped.

    Parameters
    ----------
    phase : array
        Phase in ``units``; not modified.
    units : str
        One of :data:`PHASE_UNITS`.

    Returns
    -------
    phase : float32 array
        Radians in [-pi, pi).
    scale : float
        Radians per stored unit (1.0 for radians), recorded in the derivatives' provenance.

    Raises
    ------
    ValueError
        Unknown ``units``, all-zero or non-finite phase, values that do not fit ``units``.

    Examples
    --------
    >>> ph, scale = phase_to_radians(np.array([0, 2048, 4095]), "auto")  # Siemens, no rescale
    >>> np.round(ph, 4).tolist(), scale == np.pi / 2048
    ([-3.1416, 0.0, 3.1401], True)
    """
    if units not in PHASE_UNITS:
        raise ValueError(f"phase_units must be one of {', '.join(PHASE_UNITS)}, got {units!r}")
    arr = np.asarray(phase)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"phase must be a non-empty real array, got dtype {arr.dtype} with "
                         f"shape {arr.shape}")
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("phase contains NaN or Inf values")
    if lo == hi == 0:
        raise ValueError("phase is all zeros")
    shown = f"[{lo:.4g}, {hi:.4g}]"
    if units == "arbitrary":
        peak = max(abs(lo), abs(hi))
        scale = np.pi / peak if lo < 0 else 2 * np.pi / hi
        return _wrap(arr.astype(np.float64) * scale).astype(np.float32), float(scale)

    want = {"radians": "radians", "radians-unchecked": "radians"}.get(units)
    if units == "auto":
        fits = _phase_range_fits(lo, hi)
    else:
        fits = _phase_range_fits(lo, hi, want or units)
    if not fits:
        if units in ("radians", "radians-unchecked"):
            guess, words = phase_range_guess(lo, hi)
            hint = (f"they look like {words}: set phase_units \"auto\" (or \"{guess}\")"
                    if guess is not None else
                    f"they match {words}: rescale the phase to radians, or set phase_units "
                    "\"arbitrary\" to rescale by pi/max|phase|")
            raise ValueError(f"phase must be wrapped radians (-pi..pi or 0..2 pi), got values in "
                             f"{shown}; {hint}")
        if units == "auto":
            raise ValueError(f"phase_units \"auto\" cannot tell the unit of phase values in "
                             f"{shown} (no known range holds them): rescale the phase to "
                             "radians, or set phase_units \"arbitrary\" to rescale by "
                             "pi/max|phase|")
        raise ValueError(f"phase values in {shown} do not fit phase_units \"{units}\" "
                         f"({_UNIT_WORDS[units]}); check the unit or set phase_units \"auto\"")
    name, r_lo, r_hi, scale, offset = fits[0]
    if units in ("radians", "auto") and (hi - lo) < PHASE_COVERAGE * (r_hi - r_lo):
        span = (hi - lo) * scale
        if name != "radians":
            raise ValueError(
                f"phase_units \"auto\" cannot tell the unit of phase values in {shown}: they "
                f"fill less than half of the smallest known range that holds them "
                f"({_UNIT_WORDS[name]}); rescale the phase to radians, or set phase_units "
                "\"arbitrary\" to rescale by pi/max|phase|")
        raise ValueError(
            f"phase spans only {span:.3g} rad (values in {shown}, read as {name}): wrapped phase "
            f"spans nearly 2 pi, so this looks scaled down; set phase_units \"arbitrary\" to "
            "rescale by pi/max|phase|, or \"radians-unchecked\" if it really is radians")
    if scale == 1.0 and offset == 0.0 and lo >= -np.pi and hi < np.pi:
        return arr.astype(np.float32, copy=False), 1.0
    out = _wrap(arr.astype(np.float64) * scale + offset)
    return out.astype(np.float32), float(scale)
