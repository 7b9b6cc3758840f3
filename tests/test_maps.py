"""metaqsm.maps: R2*/T2*, SWI and mIP, susceptibility referencing, against known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from metaqsm.kernels import forward_field
from metaqsm.maps import (minimum_intensity_projection, r2star_map, reference_chi, swi,
                          t2star_from_r2star)
from metaqsm.units import ppm_to_rad

TES = np.array([0.004, 0.010, 0.016, 0.022, 0.028])  # s, equally spaced (clinical 3 T GRE)
METHODS = ("arlo", "loglinear", "nonlinear")


def decay(r2, tes=TES, s0=1000.0):
    """Mono-exponential magnitude (X, Y, Z, E) for an R2* volume (1/s)."""
    r2 = np.asarray(r2, np.float64)
    return (s0 * np.exp(-r2[..., None] * np.asarray(tes))).astype(np.float32)


# ----------------------------------------------------------------------------- R2* / T2*
@pytest.mark.parametrize("method", METHODS)
def test_r2star_exact_decay(method):
    r2 = np.linspace(1.0, 300.0, 4 * 4 * 5).reshape(4, 4, 5)
    est, s0 = r2star_map(decay(r2), TES, method=method, return_s0=True)
    assert est.dtype == np.float32 and est.shape == r2.shape
    np.testing.assert_allclose(est, r2, rtol=1e-4)
    np.testing.assert_allclose(s0, 1000.0, rtol=1e-3)


def test_r2star_arlo_unbiased_at_fast_decay():
    # Pei's formula alone returns 3 sinh(x) / (d (cosh(x) + 2)) with x = R2* d: 5.6 % low at
    # x = 2; the Simpson-bias inversion gives the exact rate
    d = 0.006
    r2 = np.full((2, 2, 2), 2.0 / d)
    est = r2star_map(decay(r2), TES, method="arlo")
    np.testing.assert_allclose(est, r2, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_r2star_rician_noise_snr50(method):
    rng = np.random.default_rng(0)
    shape = (16, 16, 16)
    clean = decay(np.full(shape, 20.0), s0=1.0)
    sigma = float(np.exp(-20.0 * TES[0])) / 50.0  # SNR 50 at TE1
    noisy = np.abs(clean + sigma * (rng.standard_normal(clean.shape)
                                    + 1j * rng.standard_normal(clean.shape)))
    est = r2star_map(noisy, TES, method=method)
    assert abs(np.median(est) / 20.0 - 1.0) < 0.05
    assert np.all(np.isfinite(est))


@pytest.mark.parametrize("method", METHODS)
def test_r2star_simulated_white_matter(method):
    """The issue's target: R2* within 5 % of the simulated value in white matter, at the echo
    times of a clinical 3 T protocol (RealisticConfig's 4-28 ms), SNR 50, 2 mm voxels from a
    1 mm simulation with the head's background field and intravoxel dephasing."""
    from metaqsm.simulate.acquisition import reduce_resolution, simulate_acquisition
    from metaqsm.simulate.phantoms import LABELS, brain_phantom
    from metaqsm.simulate.realistic import RealisticConfig

    shape, vsz, out = (64, 64, 48), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)
    ph = brain_phantom(shape, voxel_size=vsz, rng=0)
    wm = ph.labels == LABELS["white_matter"]
    # R2* and proton density as the realistic suite's tissues (1/s at 3 T)
    r2 = np.where(wm, 20.0, 16.0 + 120.0 * np.maximum(ph.chi, 0.0))
    r2 = np.where(ph.labels == LABELS["csf"], 4.0, r2).astype(np.float32)
    pd = np.where(wm, 0.7, 0.85).astype(np.float32)
    acq = simulate_acquisition(ph.chi, ph.mask, voxel_size=vsz,
                               echo_times=RealisticConfig().echo_times, snr=50.0,
                               output_voxel_size=out, tissue_r2star=r2, tissue_m0=pd,
                               intravoxel_dephasing=True, rng=1)
    wm_out = reduce_resolution(wm.astype(np.float32), voxel_size=vsz, output_voxel_size=out)[0]
    sel = ndi.binary_erosion(wm_out > 0.5) & acq.mask
    est = r2star_map(acq.magnitude, acq.echo_times, acq.mask, method=method)
    assert sel.sum() > 1000
    assert abs(np.median(est[sel]) / 20.0 - 1.0) < 0.05
    assert np.all(est[~acq.mask] == 0)


def test_r2star_low_signal_and_mask():
    r2 = np.full((3, 3, 3), 25.0)
    mag = decay(r2)
    mag[0, 0, 0] = 0.0                 # no signal: 0
    mag[1, 0, 0, 1:] = 0.0             # gone after the first echo: the upper clip
    mag[2, 0, 0] = mag[2, 0, 0, ::-1]  # rising with TE: the lower clip
    mask = np.ones(r2.shape, bool)
    mask[2, 2, 2] = False
    for method in METHODS:
        est = r2star_map(mag, TES, mask, method=method, r2star_max=800.0)
        assert np.all(np.isfinite(est)) and est.min() >= 0 and est.max() <= 800.0
        assert est[0, 0, 0] == 0 and est[2, 2, 2] == 0 and est[2, 0, 0] == 0
        assert est[1, 0, 0] > 300.0
        np.testing.assert_allclose(est[1, 1, 1], 25.0, rtol=1e-4)


def test_r2star_loglinear_two_echoes():
    r2 = np.full((2, 2, 2), 30.0)
    est = r2star_map(decay(r2, TES[:2]), TES[:2], method="loglinear")
    np.testing.assert_allclose(est, 30.0, rtol=1e-4)


def test_t2star_from_r2star():
    r2 = np.array([0.0, 0.5, 1.0, 20.0, 1000.0], np.float32).reshape(5, 1, 1)
    t2 = t2star_from_r2star(r2)
    np.testing.assert_allclose(t2.ravel(), [1000.0, 1000.0, 1000.0, 50.0, 1.0], rtol=1e-6)
    mask = np.array([1, 1, 1, 0, 1], bool).reshape(5, 1, 1)
    assert t2star_from_r2star(r2, mask, t2star_max=500.0).ravel().tolist() == [
        500.0, 500.0, 500.0, 0.0, 1.0]


def test_r2star_errors():
    mag = decay(np.full((2, 2, 2), 20.0))
    with pytest.raises(ValueError, match="method must be one of"):
        r2star_map(mag, TES, method="fast")
    with pytest.raises(ValueError, match="magnitude must be a 4D volume"):
        r2star_map(mag[..., 0], TES)
    with pytest.raises(ValueError, match="echo_times has 3 values but the magnitude has"):
        r2star_map(mag, TES[:3])
    with pytest.raises(ValueError, match="echo_times must be in seconds"):
        r2star_map(mag, TES * 1000)
    with pytest.raises(ValueError, match="echo_times must be strictly increasing"):
        r2star_map(mag, TES[::-1])
    with pytest.raises(ValueError, match="echo_times .* is required"):
        r2star_map(mag, None)
    with pytest.raises(ValueError, match="'arlo' needs equally spaced echo_times"):
        r2star_map(mag, [0.004, 0.010, 0.016, 0.022, 0.030])
    with pytest.raises(ValueError, match="'arlo' needs at least 3"):
        r2star_map(mag[..., :2], TES[:2])
    with pytest.raises(ValueError, match="at least 2 echoes"):
        r2star_map(mag[..., :1], TES[:1], method="loglinear")
    with pytest.raises(ValueError, match="magnitude must be non-negative"):
        r2star_map(-mag, TES)
    with pytest.raises(ValueError, match="mask must have the shape"):
        r2star_map(mag, TES, np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="r2star_max must be positive"):
        r2star_map(mag, TES, r2star_max=0)
    with pytest.raises(ValueError, match="r2star must be non-negative"):
        t2star_from_r2star(-np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="t2star_max must be positive"):
        t2star_from_r2star(np.ones((2, 2, 2)), t2star_max=-1)


# ----------------------------------------------------------------------------- SWI / mIP
def vein_phase(te=0.02, chi=0.4, radius=2.0, offset=0.0):
    """Wrapped phase (rad) of an infinite cylinder of ``chi`` ppm along B0 (the third axis),
    3 T, 1 mm voxels; returns (phase, vein voxels, true phase inside)."""
    shape = (64, 64, 16)
    x, y = np.meshgrid(np.arange(64) - 32.0, np.arange(64) - 32.0, indexing="ij")
    vein = np.repeat(((x * x + y * y) <= radius * radius)[..., None], shape[2], axis=2)
    # periodic along B0 (pad 0): the cylinder is infinite, chi / 3 inside, no field outside
    field = forward_field(chi * vein.astype(np.float32), voxel_size=(1, 1, 1), pad=0)
    phase = ppm_to_rad(field, te, 3.0) + offset
    inside = float(ppm_to_rad(chi / 3.0, te, 3.0))
    return np.angle(np.exp(1j * phase)).astype(np.float32), vein, inside


def test_swi_vein_darker_by_bounded_factor():
    phase, vein, phi = vein_phase()
    mag = np.ones(phase.shape, np.float32)
    out = swi(mag, phase, voxel_size=(1, 1, 1))
    ratio = out[vein].mean()
    # between the mask of the full phase and that of 80 % of it (the high-pass keeps ~90 %)
    assert ((np.pi - phi) / np.pi) ** 4 < ratio < ((np.pi - 0.8 * phi) / np.pi) ** 4
    far = ~ndi.binary_dilation(vein, iterations=3)
    assert abs(np.median(out[far]) - 1.0) < 1e-3
    # the high-pass halo around the vein has the opposite sign: untouched
    assert out[~vein].min() > 0.99
    # the other sign convention leaves the vein as it is
    assert swi(mag, phase, voxel_size=(1, 1, 1), vein_phase="negative")[vein].min() > 0.99


def test_swi_uniform_phase_keeps_magnitude():
    rng = np.random.default_rng(3)
    mag = (1.0 + 0.3 * rng.random((24, 20, 12))).astype(np.float32)
    phase = np.full(mag.shape, 1.3, np.float32)
    np.testing.assert_allclose(swi(mag, phase, voxel_size=(1, 1, 2)), mag, rtol=1e-5)
    mask = np.zeros(mag.shape, bool)
    mask[4:20, 3:17, 2:10] = True
    out = swi(mag, phase, mask, voxel_size=(1, 1, 2), filter_axes=(0, 1, 2))
    np.testing.assert_allclose(out, np.where(mask, mag, 0.0), rtol=1e-5)


def test_swi_multi_echo_combined():
    tes = (0.005, 0.010, 0.015, 0.020, 0.025)
    echoes = [vein_phase(te=te, offset=1.0) for te in tes]  # offset: removed by the high-pass
    phase = np.stack([e[0] for e in echoes], axis=-1)
    vein = echoes[0][1]
    mag = np.stack([np.exp(-20.0 * te) * np.ones(vein.shape) for te in tes], -1).astype(np.float32)
    single, phi_1 = swi(mag[..., 3], vein_phase(te=0.020)[0], voxel_size=(1, 1, 1),
                        return_phase=True)
    combined, phi_c = swi(mag, phase, voxel_size=(1, 1, 1), echo_times=tes, reference_te=0.020,
                          return_phase=True)
    np.testing.assert_allclose(phi_c, phi_1, atol=0.02)
    rss = np.sqrt(np.sum(mag ** 2, axis=-1))
    np.testing.assert_allclose(combined / rss, single / mag[..., 3], atol=0.01)
    one = swi(mag, phase, voxel_size=(1, 1, 1), echo=3)
    np.testing.assert_allclose(one, swi(mag[..., 3], phase[..., 3], voxel_size=(1, 1, 1)))


def test_minimum_intensity_projection_brute_force():
    rng = np.random.default_rng(1)
    img = rng.random((6, 7, 20)).astype(np.float32)
    mip = minimum_intensity_projection(img, voxel_size=(1, 1, 0.5), slab_mm=3.0)
    n = 6
    assert mip.shape == (6, 7, 20 - n + 1)
    brute = np.stack([img[:, :, k:k + n].min(axis=2) for k in range(20 - n + 1)], axis=2)
    np.testing.assert_array_equal(mip, brute)
    mip0 = minimum_intensity_projection(img, voxel_size=(2, 1, 1), slab_mm=8.0, axis=0)
    assert mip0.shape == (3, 7, 20)
    np.testing.assert_array_equal(mip0, np.stack([img[k:k + 4].min(axis=0) for k in range(3)]))


def test_swi_errors():
    mag = np.ones((8, 8, 4), np.float32)
    ph = np.zeros((8, 8, 4), np.float32)
    with pytest.raises(ValueError, match="magnitude and phase must have the same shape"):
        swi(mag, ph[..., :3], voxel_size=1)
    with pytest.raises(ValueError, match="phase must be radians"):
        swi(mag, ph + 100.0, voxel_size=1)
    with pytest.raises(ValueError, match="vein_phase must be one of"):
        swi(mag, ph, voxel_size=1, vein_phase="up")
    with pytest.raises(ValueError, match="filter_mm must be positive"):
        swi(mag, ph, voxel_size=1, filter_mm=0)
    with pytest.raises(ValueError, match="power must be positive"):
        swi(mag, ph, voxel_size=1, power=-4)
    with pytest.raises(ValueError, match="filter_axes must be distinct axes"):
        swi(mag, ph, voxel_size=1, filter_axes=(0, 3))
    with pytest.raises(ValueError, match="magnitude must be non-negative"):
        swi(-mag, ph, voxel_size=1)
    mag4, ph4 = np.stack([mag, mag], -1), np.stack([ph, ph], -1)
    with pytest.raises(ValueError, match="echo_times .* is required"):
        swi(mag4, ph4, voxel_size=1)
    with pytest.raises(ValueError, match="echo must be an echo index below 2"):
        swi(mag4, ph4, voxel_size=1, echo=2)
    with pytest.raises(ValueError, match="reference_te must be positive"):
        swi(mag4, ph4, voxel_size=1, echo_times=(0.01, 0.02), reference_te=0)
    with pytest.raises(ValueError, match="slab_mm 8 is 8 slices, more than the 4"):
        minimum_intensity_projection(mag, voxel_size=1)
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        minimum_intensity_projection(mag, voxel_size=1, axis=3)
    with pytest.raises(ValueError, match="image must be a 3D volume"):
        minimum_intensity_projection(mag4, voxel_size=1)


# ----------------------------------------------------------------------------- referencing
def test_reference_brain_and_user_mask():
    rng = np.random.default_rng(2)
    mask = np.zeros((10, 10, 10), bool)
    mask[2:8, 2:8, 2:8] = True
    chi = np.where(mask, 0.05 * rng.standard_normal(mask.shape), 7.0).astype(np.float32)
    out, ref = reference_chi(chi, mask)
    assert ref == pytest.approx(float(chi[mask].astype(np.float64).mean()), abs=1e-9)
    assert abs(out[mask].mean()) < 1e-6 and np.all(out[~mask] == 0)
    # a region of known value 0.08 ppm within the mask (partly outside it: ignored)
    region = np.zeros(mask.shape, bool)
    region[4:6, 4:6, 0:6] = True
    chi[region & mask] = 0.08
    out, ref = reference_chi(chi, mask, region="mask", reference_mask=region)
    assert ref == pytest.approx(0.08, abs=1e-7)
    np.testing.assert_allclose(out[mask], chi[mask] - 0.08, atol=1e-7)


def test_reference_csf_from_r2star():
    from metaqsm.simulate.phantoms import LABELS, brain_phantom

    ph = brain_phantom((48, 48, 40), voxel_size=(1, 1, 1), lesions=False, rng=0)
    csf = ph.labels == LABELS["csf"]
    r2 = np.where(csf, 2.0, 20.0).astype(np.float32)
    chi = np.where(ph.mask, ph.chi + 0.03, 0.0).astype(np.float32)  # CSF at +0.03 ppm
    out, ref = reference_chi(chi, ph.mask, region="csf", voxel_size=(1, 1, 1), r2star=r2)
    truth = float(chi[csf].mean())
    assert abs(truth - 0.03) < 0.005  # the phantom's CSF (0 ppm, light texture) plus the offset
    assert ref == pytest.approx(truth, abs=1e-6)
    np.testing.assert_allclose(out[ph.mask], chi[ph.mask] - ref, atol=1e-6)


def test_reference_errors():
    chi = np.ones((6, 6, 6), np.float32)
    mask = np.ones(chi.shape, bool)
    with pytest.raises(ValueError, match="region must be one of"):
        reference_chi(chi, mask, region="wm")
    with pytest.raises(ValueError, match="reference_mask is required"):
        reference_chi(chi, mask, region="mask")
    with pytest.raises(ValueError, match="reference_mask is only used with region='mask'"):
        reference_chi(chi, mask, reference_mask=mask)
    with pytest.raises(ValueError, match="voxel_size .* is required for region='csf'"):
        reference_chi(chi, mask, region="csf", r2star=chi)
    with pytest.raises(ValueError, match="needs r2star .* or magnitude"):
        reference_chi(chi, mask, region="csf", voxel_size=1)
    with pytest.raises(ValueError, match="has no voxel inside mask"):
        reference_chi(chi, mask, region="csf", voxel_size=1, r2star=chi * 20)
    with pytest.raises(ValueError, match="reference_mask must have the shape"):
        reference_chi(chi, mask, region="mask", reference_mask=np.ones((2, 2, 2)))
