"""Tests of RTS, NDI and nonlinear TV (metaqsm.inversion.rts / ndi / nltv) and of the
discrepancy-principle rule of RTS and nlTV.

The cases are idealised and synthetic: the small brain-like phantom (48 x 48 x 40 at
1 x 1 x 1.5 mm, the one of tests/test_inversion.py), its forward field (same dipole kernel
as the inversions) and white Gaussian noise, or noise that grows where an invented magnitude
is low. RMSE is the 2016 challenge definition (%) in the mask; ``pytest -s`` prints it.
"""

from __future__ import annotations

import logging
import re

import nibabel as nib
import numpy as np
import pytest

from metaqsm.cli import main
from metaqsm.inversion import get_method
from metaqsm.inversion.ndi import data_weight, ndi, phase_scale
from metaqsm.inversion.nltv import nltv
from metaqsm.inversion.rts import discrepancy_search, noise_level, rts
from metaqsm.kernels import forward_field

NOISE_PPM = 0.002   # about 1/6 of the field's standard deviation in the mask
HIGH_NOISE = 0.006  # about 1/2 of it: where TKD breaks down


def rmse(x, truth, mask):
    return 100.0 * float(np.linalg.norm((x - truth)[mask]) / np.linalg.norm(truth[mask]))


@pytest.fixture(scope="module")
def fields(small_phantom):
    ph = small_phantom
    f0 = forward_field(ph.chi, voxel_size=ph.voxel_size)
    out = {0.0: (f0 * ph.mask).astype(np.float32)}
    for noise in (NOISE_PPM, HIGH_NOISE):
        n = np.random.default_rng(1).normal(0.0, noise, f0.shape).astype(np.float32)
        out[noise] = ((f0 + n) * ph.mask).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def tkd_error(small_phantom, fields):
    ph = small_phantom
    return {k: rmse(get_method("tkd")(f, ph.mask, voxel_size=ph.voxel_size), ph.chi, ph.mask)
            for k, f in fields.items()}


def run(func, ph, field, **kw):
    chi = func(field, ph.mask, voxel_size=ph.voxel_size, **kw)
    assert chi.dtype == np.float32 and chi.shape == ph.chi.shape
    assert np.all(chi[~ph.mask] == 0) and np.all(np.isfinite(chi))
    return chi, rmse(chi, ph.chi, ph.mask)


# --------------------------------------------------------------------------------- RTS
def test_rts_beats_tkd_on_a_noisy_field(small_phantom, fields, tkd_error):
    """Measured: RTS 55.8 %, TKD 65.7 % at 0.006 ppm noise (at 0.002 ppm: 43.4 against 41.4,
    the 4 LSMR iterations of step 1 cost accuracy on so clean a field)."""
    _, err = run(rts, small_phantom, fields[HIGH_NOISE])
    print(f"\nrts at {HIGH_NOISE} ppm: {err:.1f} % (tkd {tkd_error[HIGH_NOISE]:.1f} %)")
    assert err < 60.0 and err < tkd_error[HIGH_NOISE] - 5.0


def test_rts_converges_without_noise(small_phantom, fields):
    """More LSMR iterations bring step 1 closer to the truth (41 -> 20 % from 4 to 20);
    the ADMM has converged well before max_iter (50 iterations change nothing)."""
    ph, f = small_phantom, fields[0.0]
    _, e4 = run(rts, ph, f)
    chi20, e20 = run(rts, ph, f, lsmr_iter=20)
    chi20b, _ = run(rts, ph, f, lsmr_iter=20, max_iter=50)
    print(f"\nrts noise-free: {e4:.1f} % (4 LSMR), {e20:.1f} % (20 LSMR)")
    assert e4 < 45.0 and e20 < 23.0
    np.testing.assert_allclose(chi20b, chi20, atol=1e-6)


def test_rts_fills_the_cone_with_tv(small_phantom, fields):
    """Step 2 changes only the ill-conditioned cone: with mu huge, the well-conditioned
    k-space of the result is step 1's (compared through the field it predicts)."""
    ph, f = small_phantom, fields[NOISE_PPM]
    chi_a, _ = run(rts, ph, f, max_iter=1)
    chi_b, _ = run(rts, ph, f)
    tv = lambda x: float(np.abs(np.diff(x, axis=0)).sum() + np.abs(np.diff(x, axis=1)).sum())
    assert tv(chi_b) < tv(chi_a)


# --------------------------------------------------------------------------------- NDI
def test_ndi_weights_beat_tkd_where_noise_follows_the_magnitude(small_phantom, fields):
    """Noise of 0.001 ppm / magnitude, with 5 % of the voxels at magnitude 0.05: measured
    NDI with the magnitude 43.0 %, TKD 55.9 %, NDI unweighted 67.0 %."""
    ph = small_phantom
    rng = np.random.default_rng(3)
    mag = np.ones(ph.chi.shape, np.float32)
    mag[rng.random(mag.shape) < 0.05] = 0.05
    sigma = np.float32(0.001) / mag
    f = forward_field(ph.chi, voxel_size=ph.voxel_size)
    f = ((f + rng.normal(0.0, 1.0, f.shape).astype(np.float32) * sigma) * ph.mask)
    _, e_tkd = run(get_method("tkd"), ph, f)
    _, e_mag = run(ndi, ph, f, magnitude=mag)
    _, e_noise = run(ndi, ph, f, noise_std=sigma)
    print(f"\nndi weighted: {e_mag:.1f} % (noise map {e_noise:.1f} %), tkd {e_tkd:.1f} %")
    assert e_mag < 48.0 and e_mag < e_tkd - 8.0
    assert abs(e_noise - e_mag) < 1.0  # 1/sigma is the magnitude here


def test_ndi_converges_without_noise(small_phantom, fields):
    """Noise-free, more steps fit better: 41.8 % after 50, 37.8 % after 400."""
    ph, f = small_phantom, fields[0.0]
    _, e50 = run(ndi, ph, f, max_iter=50, tol=1e-9)
    _, e400 = run(ndi, ph, f, max_iter=400, tol=1e-9)
    print(f"\nndi noise-free: {e50:.1f} % (50 steps), {e400:.1f} % (400)")
    assert e400 < e50 - 2.0 and e400 < 40.0


def test_ndi_is_nonlinear_in_the_phase(small_phantom, fields):
    """The ppm -> radian scale only matters through the sin: a field in the linear regime gives
    the same map at two scales, a strong one does not (the haemorrhage wraps)."""
    ph, f = small_phantom, fields[0.0]
    a, _ = run(ndi, ph, f * 0.01, max_iter=20)
    b, _ = run(ndi, ph, f * 0.01, max_iter=20, delta_te=2.5e-3)
    np.testing.assert_allclose(a, b, atol=2e-3 * float(np.abs(a).max()))
    c, _ = run(ndi, ph, f, max_iter=20, delta_te=40e-3)
    d, _ = run(ndi, ph, f, max_iter=20, delta_te=0.1e-3)
    assert float(np.abs(c - d).max()) > 0.05
    assert phase_scale(3.0, 5e-3) == pytest.approx(2 * np.pi * 5e-3 * 42.577478 * 3.0, rel=1e-6)


def test_data_weight():
    mask = np.zeros((6, 6, 6), bool)
    mask[1:5, 1:5, 1:5] = True
    np.testing.assert_array_equal(data_weight(mask), mask.astype(np.float32))
    mag = np.full(mask.shape, 2.0, np.float32)
    mag[2, 2, 2] = 1.0
    w = data_weight(mask, magnitude=np.stack([mag, mag], axis=-1))
    assert w.max() == 1.0 and w[2, 2, 2] == pytest.approx(0.5) and np.all(w[~mask] == 0)
    w = data_weight(mask, noise_std=1.0 / mag)  # takes precedence over the magnitude
    assert w[2, 2, 2] == pytest.approx(0.5)


# --------------------------------------------------------------------------------- nlTV
def test_nltv_beats_tkd_and_tv(small_phantom, fields, tkd_error):
    """Measured: nlTV 33.1 % at 0.002 ppm (TV 35.0, TKD 41.4) and 34.7 % at 0.006 ppm
    (TKD 65.7)."""
    ph = small_phantom
    _, err = run(nltv, ph, fields[NOISE_PPM])
    _, err_hi = run(nltv, ph, fields[HIGH_NOISE])
    print(f"\nnltv: {err:.1f} % at {NOISE_PPM} ppm, {err_hi:.1f} % at {HIGH_NOISE} ppm")
    assert err < 37.0 and err < tkd_error[NOISE_PPM] - 5.0
    assert err_hi < 40.0 and err_hi < tkd_error[HIGH_NOISE] - 20.0


def test_nltv_converges_without_noise(small_phantom, fields):
    """With FANSI's own stopping rule (0.1 %, 150 iterations) the noise-free map is closer."""
    ph, f = small_phantom, fields[0.0]
    _, e = run(nltv, ph, f, tol=1e-3, max_iter=150, lam=2e-4)
    print(f"\nnltv noise-free, lam 2e-4: {e:.1f} %")
    assert e < 27.0  # measured 24.8 %


# ------------------------------------------------------------------- discrepancy principle
def _chosen(caplog, name, key):
    values = [float(m) for m in re.findall(rf"{name}: the discrepancy principle chose "
                                           rf"{key} = ([0-9.e+-]+)", caplog.text)]
    assert values, caplog.text
    return values[-1]


def test_discrepancy_picks_more_regularisation_for_more_noise(small_phantom, fields, caplog):
    ph = small_phantom
    caplog.set_level(logging.INFO, logger="metaqsm.inversion")
    lams, errs = [], []
    for noise in (NOISE_PPM, HIGH_NOISE):
        chi, err = run(nltv, ph, fields[noise], reg_rule="discrepancy", noise_std=noise)
        lams.append(_chosen(caplog, "nltv", "lam"))
        errs.append(err)
    print(f"\nnltv discrepancy: lam {lams}, RMSE {errs}")
    assert lams[1] > 2.0 * lams[0]
    assert errs[0] < 25.0  # measured 21.5 % (33.1 % with the default lam)
    mus = []
    for noise in (NOISE_PPM, HIGH_NOISE):
        _, err = run(rts, ph, fields[noise], reg_rule="discrepancy", noise_std=noise)
        mus.append(_chosen(caplog, "rts", "mu"))
    print(f"rts discrepancy: mu {mus}, RMSE at {HIGH_NOISE} ppm {err:.1f} %")
    assert mus[1] < mus[0] / 10.0  # a smaller data weight: more regularisation
    assert err < 50.0  # measured 44.7 % (55.8 % with the default mu)


def test_noise_level_estimate(small_phantom, fields):
    """The estimate from the field alone is within 35 % of the true white-noise level."""
    ph = small_phantom
    for noise in (NOISE_PPM, HIGH_NOISE):
        est = noise_level(fields[noise], ph.mask)
        assert noise * 0.9 < est < noise * 1.35
    assert noise_level(fields[NOISE_PPM], ph.mask, noise_std=0.003) == 0.003


def test_discrepancy_search_on_a_known_curve():
    """chi2(lam) = (lam / 0.02)^0.5: the root is 0.02; a flat curve stops early."""
    calls = []

    def solve(lam):
        calls.append(lam)
        return lam

    lam, x = discrepancy_search(solve, lambda lam: (lam / 0.02) ** 0.5, 1e-3, rtol=0.01)
    assert lam == pytest.approx(0.02, rel=0.03) and x == lam and len(calls) <= 8
    calls.clear()
    lam, _ = discrepancy_search(solve, lambda lam: 3.0, 1e-3)
    assert len(calls) == 2


# ------------------------------------------------------------------------------ errors
GOOD = dict(voxel_size=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("func, kwargs, message", [
    (rts, {"delta": 0.0}, "delta must be positive"),
    (rts, {"mu": -1.0}, "mu must be positive"),
    (rts, {"rho": 0.0}, "rho must be positive"),
    (rts, {"tol": 0.0}, "tol must be positive"),
    (rts, {"max_iter": 0}, "max_iter must be >= 1"),
    (rts, {"lsmr_iter": 0}, "lsmr_iter must be >= 1"),
    (rts, {"reg_rule": "lcurve"}, "reg_rule must be one of 'fixed', 'discrepancy', got 'lcurve'"),
    (rts, {"noise_std": -0.1}, "noise_std must be a positive number of ppm"),
    (rts, {"noise_std": np.ones((8, 8, 7))}, "noise_std must have the shape of the field"),
    (rts, {"noise_std": np.zeros((8, 8, 8))}, "noise_std has no positive finite value in the mask"),
    (rts, {"noise_std": -np.ones((8, 8, 8))}, "noise_std must be non-negative"),
    (ndi, {"lam": 0.0}, "lam must be positive"),
    (ndi, {"tau": -2.0}, "tau must be positive"),
    (ndi, {"max_iter": 0}, "max_iter must be >= 1"),
    (ndi, {"tol": -1.0}, "tol must be positive"),
    (ndi, {"field_strength": 0.0}, "field_strength must be positive"),
    (ndi, {"delta_te": 0.0}, "delta_te must be positive"),
    (ndi, {"magnitude": np.ones((8, 8, 7))}, "magnitude must have the shape of the field"),
    (ndi, {"magnitude": -np.ones((8, 8, 8))}, "magnitude must be non-negative"),
    (ndi, {"magnitude": np.zeros((8, 8, 8))}, "magnitude gives no positive weight in the mask"),
    (ndi, {"noise_std": np.ones((8, 8, 7))}, "noise_std must have the shape of the field"),
    (nltv, {"lam": 0.0}, "lam must be positive"),
    (nltv, {"rho": 0.0}, "rho must be positive"),
    (nltv, {"mu": 0.0}, "mu must be positive"),
    (nltv, {"tol": 0.0}, "tol must be positive"),
    (nltv, {"max_iter": 0}, "max_iter must be >= 1"),
    (nltv, {"delta_te": -5e-3}, "delta_te must be positive"),
    (nltv, {"field_strength": 0.0}, "field_strength must be positive"),
    (nltv, {"reg_rule": "auto"}, "reg_rule must be one of 'fixed', 'discrepancy'"),
    (nltv, {"magnitude": np.ones((8, 8, 7))}, "magnitude must have the shape of the field"),
    (nltv, {"noise_std": np.full((8, 8, 8), np.nan)},
     "noise_std has no positive finite value in the mask"),
])
def test_documented_errors(func, kwargs, message):
    field = np.zeros((8, 8, 8), np.float32)
    mask = np.ones((8, 8, 8), bool)
    with pytest.raises(ValueError, match=re.escape(message)):
        func(field, mask, **GOOD, **kwargs)


@pytest.mark.parametrize("func", [rts, ndi, nltv])
def test_common_input_errors(func):
    field = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="mask must have the shape"):
        func(field, np.ones((8, 8, 7), bool), **GOOD)
    with pytest.raises(ValueError, match="mask is empty"):
        func(field, np.zeros((8, 8, 8), bool), **GOOD)


def test_noise_level_needs_an_interior():
    mask = np.zeros((8, 8, 8), bool)
    mask[3, 3, :] = True
    with pytest.raises(ValueError, match="cannot estimate the noise level; give noise_std"):
        noise_level(np.zeros((8, 8, 8), np.float32), mask)


# ------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("method, extra", [
    ("rts", []), ("ndi", ["--max-iter", "20"]),
    ("nltv", ["--max-iter", "10", "--reg-rule", "discrepancy"]),
])
def test_cli_invert_writes_a_map(small_phantom, fields, tmp_path, capsys, method, extra):
    ph = small_phantom
    aff = np.diag([*ph.voxel_size, 1.0])
    fpath, mpath = tmp_path / "field.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(fields[NOISE_PPM], aff), str(fpath))
    nib.save(nib.Nifti1Image(ph.mask.astype(np.uint8), aff), str(mpath))
    out = tmp_path / f"chi_{method}.nii.gz"
    assert main(["invert", str(fpath), "--mask", str(mpath), "--method", method, *extra,
                 "-o", str(out)]) == 0, capsys.readouterr().err
    chi = np.asarray(nib.load(str(out)).dataobj, np.float32)
    assert chi.shape == ph.chi.shape and np.all(chi[~ph.mask] == 0)
    assert rmse(chi, ph.chi, ph.mask) < 60.0


# ----------------------------------------------------------- the mask's box (crop=True)
@pytest.mark.parametrize("name", ["tv", "rts", "ndi", "nltv"])
def test_cropping_to_the_mask_box_keeps_the_map(small_phantom, fields, name):
    """The phantom placed in a volume with 24 empty voxels around it (as a scan's FOV around
    the head): with the default crop=True the method works on the mask's box (16 voxels of the
    40-48 around the brain are removed per side) and its map stays within 10 % of the
    whole-grid map, and as accurate against the truth; outside the box it is 0."""
    ph = small_phantom
    big = tuple(n + 48 for n in ph.chi.shape)
    inner = tuple(slice(24, 24 + n) for n in ph.chi.shape)
    field, mask, truth = np.zeros(big, np.float32), np.zeros(big, bool), np.zeros(big, np.float32)
    field[inner], mask[inner], truth[inner] = fields[NOISE_PPM], ph.mask, ph.chi
    magnitude = np.where(mask, 1.0, 0.1).astype(np.float32)
    func = get_method(name)
    kw = {"magnitude": magnitude} if name in ("ndi", "nltv") else {}
    whole = func(field, mask, voxel_size=ph.voxel_size, crop=False, **kw)
    cropped = func(field, mask, voxel_size=ph.voxel_size, **kw)
    assert cropped.shape == big and cropped.dtype == np.float32 and np.all(cropped[~mask] == 0)
    change = 100.0 * np.linalg.norm(cropped - whole) / np.linalg.norm(whole)
    e_whole, e_crop = rmse(whole, truth, mask), rmse(cropped, truth, mask)
    print(f"{name}: RMSE whole grid {e_whole:.1f} %, mask box {e_crop:.1f} %, change {change:.2f} %")
    assert change < 10.0
    assert e_crop < e_whole + 1.0


def test_cropping_checks_the_shape_of_the_noise_map(small_phantom, fields):
    ph = small_phantom
    with pytest.raises(ValueError, match="noise_std must have the shape of the field"):
        rts(fields[NOISE_PPM], ph.mask, voxel_size=ph.voxel_size,
            noise_std=np.ones((4, 4, 4), np.float32))
