"""Multi-echo fitting: known field, phase offset and noise from synthetic complex data."""

from __future__ import annotations

import numpy as np
import pytest

from metaqsm.phase import EchoFit, fit_echoes
from metaqsm.units import GAMMA_MHZ_PER_T, ppm_to_rad

SHAPE = (40, 40, 32)
B0 = 3.0
TES = np.array([10.4, 17.4, 24.4, 31.4]) * 1e-3  # the Meta-QSM paper's research protocol
SIGMA = 0.02


def simulate(tes=TES, offset_scale=0.8, sigma=SIGMA, rng=0):
    """Complex echoes of a known field (ppm, wrapping about 3 times at the last echo) with a
    smooth phase offset, T2* decay and complex Gaussian noise of level sigma."""
    rng = np.random.default_rng(rng)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    mask = x ** 2 + y ** 2 + z ** 2 < 0.8
    field = (0.3 * x + 0.25 * y ** 2 - 0.2 * x * z + 0.1 * np.sin(3 * y)).astype(np.float32)
    offset = offset_scale * np.cos(2 * x + y)
    m0 = np.where(mask, 1.0, 0.0)
    s = np.stack([m0 * np.exp(-te / 0.04) * np.exp(1j * (offset + ppm_to_rad(field, te, B0)))
                  for te in tes], -1)
    s = s + sigma / np.sqrt(2) * (rng.standard_normal(s.shape) + 1j * rng.standard_normal(s.shape))
    return np.abs(s), np.angle(s), field, offset, mask


@pytest.fixture(scope="module")
def data():
    return simulate()


def period_ppm(tes):
    """The field is determined modulo 2 pi / (gamma B0 dTE)."""
    return 1.0 / (GAMMA_MHZ_PER_T * B0 * (tes[1] - tes[0]))


@pytest.mark.parametrize("method", ["nonlinear", "linear"])
@pytest.mark.parametrize("unwrap", ["romeo", "laplacian"])
def test_recovers_field_offset_and_noise(data, method, unwrap):
    mag, phase, field, offset, mask = data
    wraps = np.ptp(ppm_to_rad(field[mask], TES[-1], B0)) / (2 * np.pi)
    assert wraps > 2
    fit = fit_echoes(mag, phase, echo_times=TES, field_strength=B0, mask=mask, method=method,
                     unwrap=unwrap)
    assert isinstance(fit, EchoFit)
    for a in (fit.field, fit.noise, fit.phase_offset, fit.residual):
        assert a.shape == SHAPE and a.dtype == np.float32
        assert np.all(a[~mask] == 0)
    err = (fit.field - field)[mask]
    k = np.median(err) / period_ppm(TES)  # a global multiple of the period at most
    assert abs(k - np.rint(k)) < 0.01
    err = err - np.rint(k) * period_ppm(TES)
    rmse = float(np.sqrt(np.mean(err ** 2)))
    noise = float(np.sqrt(np.mean(fit.noise[mask] ** 2)))
    off = np.abs(np.angle(np.exp(1j * (fit.phase_offset - offset))))[mask]
    print(f"{method}/{unwrap}: field RMSE {rmse:.5f} ppm (max {np.abs(err).max():.4f}), "
          f"predicted noise {noise:.5f} ppm, offset error {off.mean():.4f} rad, "
          f"sigma {fit.sigma:.4f} (true {SIGMA})")
    assert rmse < 0.005 and np.abs(err).max() < 0.03
    assert 0.8 < rmse / noise < 1.25  # the noise map is the field's standard deviation
    assert off.mean() < 0.05
    assert abs(fit.sigma / SIGMA - 1) < 0.1
    assert np.median(fit.residual[mask]) < 3 * SIGMA


def test_nonlinear_and_linear_agree_without_noise():
    mag, phase, field, offset, mask = simulate(sigma=0.0)
    a = fit_echoes(mag, phase, echo_times=TES, field_strength=B0, mask=mask, method="nonlinear")
    b = fit_echoes(mag, phase, echo_times=TES, field_strength=B0, mask=mask, method="linear")
    np.testing.assert_allclose(a.field[mask], field[mask], atol=1e-4)
    np.testing.assert_allclose(b.field[mask], field[mask], atol=1e-4)
    assert np.abs(np.angle(np.exp(1j * (a.phase_offset - offset))))[mask].max() < 1e-3


def test_single_echo_has_no_offset():
    tes = TES[:1]
    mag, phase, field, _, mask = simulate(tes=tes, offset_scale=0.0)
    fit = fit_echoes(mag[..., 0], phase[..., 0], echo_times=tes, field_strength=B0, mask=mask)
    err = (fit.field - field)[mask]
    per = 1.0 / (GAMMA_MHZ_PER_T * B0 * tes[0])
    err -= np.rint(np.median(err) / per) * per
    print(f"single echo: field RMSE {np.sqrt(np.mean(err ** 2)):.5f} ppm")
    assert np.sqrt(np.mean(err ** 2)) < 0.01
    assert np.all(fit.phase_offset == 0) and np.all(fit.residual == 0)
    assert np.all(fit.noise[mask] > 0)


def test_voxels_without_signal_get_a_finite_noise(data):
    mag, phase, _, _, mask = data
    mag = mag.copy()
    mag[20, 20, 16] = 0.0
    fit = fit_echoes(mag, phase, echo_times=TES, field_strength=B0, mask=mask)
    assert np.all(np.isfinite(fit.noise)) and np.all(np.isfinite(fit.field))
    others = mask.copy()
    others[20, 20, 16] = False
    assert fit.noise[20, 20, 16] == pytest.approx(10 * fit.noise[others].max(), rel=1e-5)


def test_mask_none_fits_everywhere():
    mag, phase, field, _, _ = simulate()
    mag = mag + 0.5  # signal everywhere
    fit = fit_echoes(mag, phase, echo_times=TES, field_strength=B0)
    assert np.count_nonzero(fit.noise) == np.prod(SHAPE)


def test_rescaled_phase(data):
    mag, phase, field, _, mask = data
    raw = np.round(phase / np.pi * 4095)  # scanner units
    with pytest.raises(ValueError, match="phase must be wrapped radians in .-pi, pi., got values up to 4095"):
        fit_echoes(mag, raw, echo_times=TES, field_strength=B0, mask=mask)
    fit = fit_echoes(mag, raw, echo_times=TES, field_strength=B0, mask=mask, phase_scale="rescale")
    ref = fit_echoes(mag, phase, echo_times=TES, field_strength=B0, mask=mask)
    assert np.sqrt(np.mean((fit.field - ref.field)[mask] ** 2)) < 0.002


def test_errors(data):
    mag, phase, _, _, mask = data
    kw = dict(echo_times=TES, field_strength=B0)
    with pytest.raises(ValueError, match="magnitude and phase must have the same shape"):
        fit_echoes(mag[..., :3], phase, **kw)
    with pytest.raises(ValueError, match="echo_times has .* values but the phase has 4 echoes"):
        fit_echoes(mag, phase, echo_times=TES[:3], field_strength=B0)
    with pytest.raises(ValueError, match=r"echo_times \(seconds, one per echo\) is required"):
        fit_echoes(mag, phase, field_strength=B0)
    with pytest.raises(ValueError, match=r"field_strength \(tesla\) is required"):
        fit_echoes(mag, phase, echo_times=TES)
    with pytest.raises(ValueError, match="field_strength must be a positive number of tesla"):
        fit_echoes(mag, phase, echo_times=TES, field_strength=-3)
    with pytest.raises(ValueError, match="echo_times must be in seconds.*milliseconds"):
        fit_echoes(mag, phase, echo_times=TES * 1e3, field_strength=B0)
    with pytest.raises(ValueError, match="echo_times must be strictly increasing"):
        fit_echoes(mag, phase, echo_times=TES[::-1], field_strength=B0)
    with pytest.raises(ValueError, match="method must be one of 'nonlinear', 'linear'"):
        fit_echoes(mag, phase, method="arlo", **kw)
    with pytest.raises(ValueError, match="unwrap must be one of 'romeo', 'laplacian'"):
        fit_echoes(mag, phase, unwrap="prelude", **kw)
    with pytest.raises(ValueError, match="phase_scale must be one of"):
        fit_echoes(mag, phase, phase_scale="degrees", **kw)
    with pytest.raises(ValueError, match="mask must have the shape"):
        fit_echoes(mag, phase, mask=mask[1:], **kw)


def test_real_data(shared_data):
    """romeo-small (3 echoes, TE 4/8/12 ms, 3 T): both fits agree and the residual is small."""
    import nibabel as nib

    d = shared_data / "romeo-small"
    if not (d / "phase.nii.gz").exists():
        pytest.skip(f"{d} has no phase.nii.gz")
    img = nib.load(str(d / "mag.nii.gz"))
    mag = np.asarray(img.dataobj, np.float32)
    phase = np.asarray(nib.load(str(d / "phase.nii.gz")).dataobj, np.float32)
    tes = np.array([4.0, 8.0, 12.0]) * 1e-3
    with pytest.raises(ValueError, match="phase must be wrapped radians"):
        fit_echoes(mag, phase * 1e4, echo_times=tes, field_strength=3.0)
    phase = phase * np.pi / np.abs(phase).max()
    rss = np.sqrt(np.sum(mag.astype(np.float64) ** 2, -1))
    mask = rss > 0.5 * np.median(rss)  # the crop lies inside the brain: every voxel with signal
    a = fit_echoes(mag, phase, echo_times=tes, field_strength=3.0, mask=mask)
    b = fit_echoes(mag, phase, echo_times=tes, field_strength=3.0, mask=mask, method="linear",
                   voxel_size=img.header.get_zooms()[:3])
    diff = np.abs(a.field - b.field)[mask]
    print(f"romeo-small: median relative residual {np.median(a.residual[mask]):.4f}, field "
          f"1..99th percentile {np.percentile(a.field[mask], 1):.3f}..{np.percentile(a.field[mask], 99):.3f} ppm, "
          f"median |nonlinear - linear| {np.median(diff):.5f} ppm, median noise {np.median(a.noise[mask]):.5f} ppm")
    assert np.median(a.residual[mask]) < 0.05
    assert np.median(diff) < 2 * np.median(a.noise[mask])
    assert np.percentile(np.abs(a.field[mask]), 99) < 2.0  # brain fields are well below 2 ppm


# ------------------------------------------------------------------ reliable_mask
def test_reliable_mask_drops_the_rim_without_signal_and_keeps_inner_dark_voxels():
    from metaqsm.phase import reliable_mask

    brain = np.zeros((24, 24, 24), bool)
    brain[4:20, 4:20, 4:20] = True
    given = np.zeros_like(brain)
    given[3:21, 3:21, 3:21] = True          # skull stripping one voxel too generous
    noise = np.where(brain, 0.002, 0.5)      # no signal outside the brain
    noise[12, 12, 12] = 0.5                  # a dark voxel inside (a vein): kept
    rng = np.random.default_rng(0)
    noise = noise * rng.uniform(0.9, 1.1, noise.shape)
    keep, dropped = reliable_mask(given, noise)
    assert np.array_equal(keep, brain)
    assert dropped == given.sum() - brain.sum()
    # a clean fit (no outliers) keeps everything, a noise-free one too
    keep, dropped = reliable_mask(brain, np.full(brain.shape, 0.002))
    assert dropped == 0 and np.array_equal(keep, brain)
    keep, dropped = reliable_mask(brain, np.zeros(brain.shape))
    assert dropped == 0 and np.array_equal(keep, brain)
    with pytest.raises(ValueError, match="factor must be above 1"):
        reliable_mask(brain, noise, factor=0.5)
    with pytest.raises(ValueError, match="noise must have the mask's shape"):
        reliable_mask(brain, noise[:-1])
