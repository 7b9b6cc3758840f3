"""The one phase-units rule (metaqsm.units.phase_to_radians), used by load_scan, the DICOM reader
and every command: each accepted unit maps exactly, everything else is refused with the
phase_units to set."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from metaqsm._validate import check_phase_radians
from metaqsm.io.acquisition import load_scan
from metaqsm.units import PHASE_UNITS, phase_to_radians

RNG = np.random.default_rng(0)
PHASE = RNG.uniform(-np.pi, np.pi, (8, 7, 6, 2))  # wrapped radians spanning nearly 2 pi
PHASE[0, 0, 0, 0], PHASE[0, 0, 0, 1] = -np.pi, np.pi - 1e-9


def _same_phase(a, b, atol):
    return np.max(np.abs(np.angle(np.exp(1j * (np.asarray(a, float) - b))))) <= atol


def _in_range(ph):
    return ph.dtype == np.float32 and ph.min() >= -np.float32(np.pi) and ph.max() <= np.float32(np.pi)


@pytest.mark.parametrize("units", ["radians", "auto"])
def test_radians_signed_and_unsigned(units):
    ph, scale = phase_to_radians(PHASE, units)
    assert scale == 1.0 and _in_range(ph)
    np.testing.assert_allclose(ph, PHASE, atol=1e-6)
    # [0, 2 pi) (as converters write unsigned phase) is accepted and wrapped, not refused
    unsigned = np.mod(PHASE, 2 * np.pi)
    ph, scale = phase_to_radians(unsigned, units)
    assert scale == 1.0 and _in_range(ph)
    assert _same_phase(ph, PHASE, 1e-6)
    assert ph.min() < -3.1  # wrapped into [-pi, pi), not left at 0..2 pi


@pytest.mark.parametrize("stored,units,step", [
    (np.round(PHASE * 4096 / np.pi).clip(-4096, 4095), "auto", np.pi / 4096),      # Siemens
    (np.round(PHASE * 4096 / np.pi).clip(-4096, 4095), "12bit", np.pi / 4096),
    (np.round(PHASE * 1000), "auto", 1e-3),                                          # GE mrad
    (np.round(PHASE * 1000), "milliradians", 1e-3),
    (np.round(np.mod(PHASE, 2 * np.pi) * 1000), "auto", 1e-3),                      # 0..6283
    (np.rad2deg(PHASE), "auto", 1e-9),                                               # degrees
    (np.rad2deg(PHASE), "degrees", 1e-9),
    (np.rad2deg(np.mod(PHASE, 2 * np.pi)), "auto", 1e-9),                            # 0..360
    (np.round(PHASE * 32768 / np.pi).clip(-32768, 32767), "auto", np.pi / 32768),  # 16-bit
    (np.round(PHASE * 32768 / np.pi).clip(-32768, 32767), "16bit", np.pi / 32768),
])
def test_vendor_ranges_map_exactly(stored, units, step):
    ph, scale = phase_to_radians(stored, units)
    assert _in_range(ph)
    assert _same_phase(ph, PHASE, step + 1e-6)  # rounding, and +pi clipped to the top code


def test_siemens_unsigned_without_rescale_is_minus_pi_to_pi_exactly():
    """0..4095 (Siemens phase without RescaleSlope/Intercept) is -pi..pi - 2 pi/4096, the same
    as the rescaled -4096..4094: 0 -> -pi, 2048 -> 0, 4095 -> pi - 2 pi/4096 (the old reader
    made it 0..pi)."""
    s = np.arange(4096, dtype=np.float64)
    ph, scale = phase_to_radians(s, "auto")
    np.testing.assert_allclose(ph, (2 * s - 4096) * np.pi / 4096, atol=1e-6)
    assert ph[0] == pytest.approx(-np.pi) and ph[2048] == 0
    assert ph[-1] == pytest.approx(np.pi - 2 * np.pi / 4096, abs=1e-6)
    rescaled, _ = phase_to_radians(2 * s - 4096, "auto")
    np.testing.assert_array_equal(ph, rescaled)
    same, _ = phase_to_radians(s, "12bit")
    np.testing.assert_array_equal(ph, same)


def test_degrees_are_reachable_and_told_apart_from_milliradians():
    deg = np.array([-180.0, -90, 0, 90, 179])
    ph, scale = phase_to_radians(deg, "auto")
    assert scale == pytest.approx(np.pi / 180)
    np.testing.assert_allclose(ph, np.deg2rad(deg), atol=1e-6)
    with pytest.raises(ValueError, match=r'look like degrees: set phase_units "auto" \(or "degrees"\)'):
        phase_to_radians(deg, "radians")
    mrad = np.array([-3142.0, 0, 3141])
    assert phase_to_radians(mrad, "auto")[1] == 1e-3


def test_wraps_never_clips():
    x = np.array([-np.pi - 0.0005, -1.0, 0.5, np.pi + 0.0005])  # within the slack
    ph, _ = phase_to_radians(x, "radians")
    assert _in_range(ph)
    assert ph[-1] == pytest.approx(-np.pi + 0.0005, abs=1e-6)   # wrapped to the other side
    assert ph[0] == pytest.approx(np.pi - 0.0005, abs=1e-6)


@pytest.mark.parametrize("units", ["radians", "auto"])
def test_scaled_down_phase_is_refused(units):
    """0.3 x phase (max 0.94 rad) gave +-0.6 ppm garbage; ROMEO's arbitrary units (max 0.0037)."""
    with pytest.raises(ValueError, match=r'spans only 1.88 rad .*phase_units "arbitrary".*'
                                         r'"radians-unchecked"'):
        phase_to_radians(0.3 * PHASE, units)
    with pytest.raises(ValueError, match="spans only 0.00735 rad"):
        phase_to_radians(0.0036744 * PHASE / np.pi, units)


def test_explicit_options_for_narrow_and_arbitrary_phase():
    narrow = 0.3 * PHASE
    ph, scale = phase_to_radians(narrow, "radians-unchecked")
    assert scale == 1.0
    np.testing.assert_allclose(ph, narrow, atol=1e-6)
    romeo = 0.0036744 * PHASE / np.pi
    ph, scale = phase_to_radians(romeo, "arbitrary")
    assert scale == pytest.approx(np.pi / np.abs(romeo).max())
    assert _same_phase(ph, PHASE, 1e-5)
    # non-negative arbitrary units: 0..max is one cycle
    unsigned = np.mod(PHASE, 2 * np.pi) * 7.0
    ph, scale = phase_to_radians(unsigned, "arbitrary")
    assert scale == pytest.approx(2 * np.pi / unsigned.max()) and _in_range(ph)
    # radians-unchecked still refuses what is not radians
    with pytest.raises(ValueError, match="must be wrapped radians"):
        phase_to_radians(np.array([-4096.0, 4095]), "radians-unchecked")


@pytest.mark.parametrize("values,units,message", [
    ([-4096.0, 0, 4094], "radians", r"must be wrapped radians .*Siemens scanner units.*"
                                    r'phase_units "auto" \(or "12bit"\)'),
    ([-3142.0, 3142], "radians", r'milliradians: set phase_units "auto"'),
    ([-1e5, 1e5], "auto", r'"auto" cannot tell the unit .*phase_units "arbitrary"'),
    ([-1e4, 1e4], "auto", r'"auto" cannot tell the unit .*less than half'),
    ([-1e5, 1e5], "radians", r'no phase unit metaqsm knows.*"arbitrary"'),
    ([0.0, 500], "degrees", r'do not fit phase_units "degrees"'),
    ([-1.0, 1], "kelvin", r"phase_units must be one of radians, radians-unchecked, auto"),
    ([0.0, 0.0], "auto", "phase is all zeros"),
    ([np.nan, 1.0], "auto", "NaN or Inf"),
])
def test_refusals_name_the_argument(values, units, message):
    with pytest.raises(ValueError, match=message):
        phase_to_radians(np.array(values), units)


def test_every_unit_is_listed_and_the_input_is_not_modified():
    assert set(PHASE_UNITS) == {"radians", "radians-unchecked", "auto", "milliradians",
                                "degrees", "12bit", "16bit", "arbitrary"}
    stored = np.round(PHASE * 1000)
    before = stored.copy()
    phase_to_radians(stored, "auto")
    np.testing.assert_array_equal(stored, before)


def test_check_phase_radians_names_the_unit():
    check_phase_radians(PHASE)
    check_phase_radians(np.mod(PHASE, 2 * np.pi))
    with pytest.raises(ValueError, match=r'Siemens scanner units.*phase_units "auto"'):
        check_phase_radians(np.round(PHASE * 4096 / np.pi))
    with pytest.raises(ValueError, match=r"degrees\?"):
        check_phase_radians(np.rad2deg(PHASE))
    with pytest.raises(ValueError, match="does not look like radians"):
        check_phase_radians(PHASE * 1e-3)


def _nifti(tmp_path, name, data):
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(path))
    (tmp_path / f"{name}.json").write_text(json.dumps({"EchoTime": [0.01, 0.02],
                                                       "MagneticFieldStrength": 3}))
    return path


def test_load_scan_applies_the_rule(tmp_path):
    mag = _nifti(tmp_path, "mag", np.ones(PHASE.shape))
    siemens = _nifti(tmp_path, "siemens", np.round(PHASE * 4096 / np.pi).clip(-4096, 4095))
    with pytest.raises(ValueError, match=r'phase_units "auto"'):
        load_scan(mag, siemens)
    scan = load_scan(mag, siemens, phase_units="auto")
    assert scan.inputs["PhaseScale"] == pytest.approx(np.pi / 4096)
    assert scan.inputs["PhaseUnits"] == "auto"
    assert _same_phase(scan.phase, PHASE, np.pi / 4096)
    scaled = _nifti(tmp_path, "scaled", 0.3 * PHASE)
    with pytest.raises(ValueError, match="spans only"):
        load_scan(mag, scaled)
    assert load_scan(mag, scaled, phase_units="radians-unchecked").phase.max() < 1.0
    with pytest.raises(ValueError, match="phase_units must be one of"):
        load_scan(mag, siemens, phase_units="rad")
