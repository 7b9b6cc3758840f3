"""The acquisition simulator: signal model, background field, resolution reduction, noise."""

from __future__ import annotations

import numpy as np
import pytest

from metaqsm.kernels import forward_field, laplacian
from metaqsm.mask import erode_mask
from metaqsm.simulate import (Acquisition, head_model, reduce_resolution, shim,
                              simulate_acquisition)
from metaqsm.simulate.acquisition import HEAD_LABELS
from metaqsm.units import ppm_to_rad

TES = (0.004, 0.008, 0.012)


def _wrap(x):
    return np.angle(np.exp(1j * x))


@pytest.fixture(scope="module")
def phantom():
    from metaqsm.simulate.phantoms import brain_phantom

    return brain_phantom((56, 56, 40), voxel_size=(1.0, 1.0, 1.5), rng=0)


def test_noise_free_signal_model_is_exact(phantom):
    vsz = phantom.voxel_size
    acq = simulate_acquisition(phantom.chi, phantom.mask, voxel_size=vsz, echo_times=TES,
                               snr=None, phase_offset=False, background=False, m0=1.0, r2star=20.0)
    assert isinstance(acq, Acquisition)
    assert acq.phase.shape == phantom.chi.shape + (3,) and acq.phase.dtype == np.float32
    local = forward_field(phantom.chi * phantom.mask, voxel_size=vsz)
    np.testing.assert_allclose(acq.local_field, local, atol=1e-6)
    for e, te in enumerate(TES):
        expected = _wrap(ppm_to_rad(acq.total_field, te, 3.0))
        assert np.max(np.abs(_wrap(acq.phase[..., e] - expected))) < 1e-4
        np.testing.assert_allclose(acq.magnitude[..., e], np.exp(-20.0 * te), rtol=1e-5)
    assert acq.noise_std == 0.0


def test_background_is_realistic_and_harmonic_in_the_brain(phantom):
    vsz = phantom.voxel_size
    acq = simulate_acquisition(phantom.chi, phantom.mask, voxel_size=vsz, snr=None)
    m = phantom.mask
    ratio = acq.background_field[m].std() / acq.local_field[m].std()
    print(f"background / local field (std in the brain): {ratio:.1f}")
    assert 10 < ratio < 100
    np.testing.assert_allclose(acq.total_field, acq.local_field + acq.background_field, atol=1e-5)
    # sources outside the brain: the background's Laplacian vanishes inside (away from edges)
    inner = erode_mask(m, voxel_size=vsz, radius_mm=4.0)
    lb = laplacian(acq.background_field, voxel_size=vsz)[inner]
    ll = laplacian(acq.local_field, voxel_size=vsz)[inner]
    print(f"|lap(background)| / |lap(local)| inside: {np.linalg.norm(lb) / np.linalg.norm(ll):.4f}")
    assert np.linalg.norm(lb) < 0.02 * np.linalg.norm(ll)
    # the last default echo (31.4 ms) wraps in the brain
    assert np.ptp(ppm_to_rad(acq.total_field[m], acq.echo_times[-1], 3.0)) > 4 * np.pi


def test_shim_removes_second_order_harmonics_only(phantom):
    vsz = phantom.voxel_size
    m = phantom.mask
    axes = [np.arange(n) * d for n, d in zip(m.shape, vsz)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    harmonic = 0.3 + 0.01 * x - 0.02 * z + 1e-4 * (x * y - 2 * z * z + x * x + y * y)
    np.testing.assert_allclose(shim(harmonic, m, voxel_size=vsz)[m], 0.0, atol=1e-5)
    # first order leaves the quadratic terms
    assert np.abs(shim(harmonic, m, voxel_size=vsz, order=1)[m]).max() > 1e-2
    local = forward_field(phantom.chi * m, voxel_size=vsz)
    shimmed = shim(local, m, voxel_size=vsz)
    assert np.linalg.norm((shimmed - local)[m]) < 0.5 * np.linalg.norm(local[m] - local[m].mean())
    with pytest.raises(ValueError, match="shim_order must be 0, 1 or 2"):
        shim(local, m, voxel_size=vsz, order=3)


def test_head_model_layers(phantom):
    labels, offset = head_model(phantom.mask, voxel_size=phantom.voxel_size)
    inner = tuple(slice(o, o + n) for o, n in zip(offset, phantom.mask.shape))
    assert np.array_equal(labels[inner] == HEAD_LABELS["brain"], phantom.mask)
    for name in ("csf", "skull", "scalp", "sinus", "air"):
        assert np.any(labels == HEAD_LABELS[name]), name
    # sinuses are anterior-inferior or lateral-inferior: below the brain centre
    z = np.argwhere(labels == HEAD_LABELS["sinus"])[:, 2]
    zc = np.argwhere(labels == HEAD_LABELS["brain"])[:, 2].mean()
    assert np.median(z) < zc


def test_tilted_b0_local_field(phantom):
    vsz = phantom.voxel_size
    b0 = (np.sin(np.deg2rad(20)), 0.0, np.cos(np.deg2rad(20)))
    acq = simulate_acquisition(phantom.chi, phantom.mask, voxel_size=vsz, b0_dir=b0, snr=None,
                               background=False, phase_offset=False)
    np.testing.assert_allclose(acq.local_field, forward_field(phantom.chi * phantom.mask,
                                                              voxel_size=vsz, b0_dir=b0), atol=1e-6)
    np.testing.assert_allclose(acq.b0_dir, np.asarray(b0) / np.linalg.norm(b0))


def test_noise_level_matches_snr(phantom):
    vsz = phantom.voxel_size
    kw = dict(voxel_size=vsz, echo_times=TES, background=False, phase_offset=False)
    clean = simulate_acquisition(phantom.chi, phantom.mask, snr=None, **kw)
    noisy = simulate_acquisition(phantom.chi, phantom.mask, snr=50, rng=3, **kw)
    z0 = clean.magnitude * np.exp(1j * clean.phase)
    z1 = noisy.magnitude * np.exp(1j * noisy.phase)
    sigma = np.concatenate([(z1 - z0).real.ravel(), (z1 - z0).imag.ravel()]).std()
    expected = clean.magnitude[..., 0][phantom.mask].mean() / 50
    assert noisy.noise_std == pytest.approx(expected, rel=1e-3)
    assert sigma == pytest.approx(expected, rel=0.03)


def test_reduce_resolution_kspace_and_block():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 12, 10)).astype(np.float32)
    y, v = reduce_resolution(x, voxel_size=(1, 1, 1), output_voxel_size=(2, 2, 2), method="block")
    assert y.shape == (8, 6, 5)
    np.testing.assert_allclose(v, (2, 2, 2))
    np.testing.assert_allclose(y[1, 2, 3], x[2:4, 4:6, 6:8].mean(), rtol=1e-5)
    y, v = reduce_resolution(x, voxel_size=(1, 1, 1), output_voxel_size=(2, 1.5, 2.5), method="kspace")
    assert y.shape == (8, 8, 4) and np.isrealobj(y)
    np.testing.assert_allclose(v, (2.0, 1.5, 2.5))
    assert y.mean() == pytest.approx(x.mean(), abs=1e-5)
    # a band-limited signal below the new Nyquist frequency survives k-space truncation
    i = np.arange(32)
    s = np.cos(2 * np.pi * 3 * i / 32)[:, None, None] * np.ones((1, 4, 4))
    y, _ = reduce_resolution(s, voxel_size=1, output_voxel_size=(2, 1, 1), method="kspace")
    np.testing.assert_allclose(y[:, 0, 0], np.cos(2 * np.pi * 3 * np.arange(16) / 16), atol=1e-6)
    with pytest.raises(ValueError, match="integer multiple"):
        reduce_resolution(x, voxel_size=1, output_voxel_size=(1.5, 1, 1), method="block")
    with pytest.raises(ValueError, match="must not be finer"):
        reduce_resolution(x, voxel_size=1, output_voxel_size=(0.5, 1, 1), method="kspace")
    with pytest.raises(ValueError, match="reduce must be one of"):
        reduce_resolution(x, voxel_size=1, output_voxel_size=2, method="nearest")


def test_fine_grid_then_reduce(phantom):
    """Simulating at 1 x 1 x 1.5 mm and reducing to 2 x 2 x 3 mm: the coarse signal is the
    block average of the fine complex signal, so intravoxel dephasing darkens voxels with a
    strong field gradient, which a coarse-grid simulation would miss."""
    vsz = phantom.voxel_size
    kw = dict(voxel_size=vsz, snr=None, phase_offset=False, affine=np.diag([1.0, 1.0, 1.5, 1.0]))
    fine = simulate_acquisition(phantom.chi, phantom.mask, **kw)
    coarse = simulate_acquisition(phantom.chi, phantom.mask, output_voxel_size=(2, 2, 3),
                                  reduce="block", **kw)
    assert coarse.phase.shape == (28, 28, 20, 4)
    np.testing.assert_allclose(coarse.voxel_size, (2, 2, 3))
    z = fine.magnitude * np.exp(1j * fine.phase)
    zb = z.reshape(28, 2, 28, 2, 20, 2, 4).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(coarse.magnitude, np.abs(zb), atol=1e-4)
    assert coarse.mask.sum() == pytest.approx(phantom.mask.sum() / 8, rel=0.05)
    # the output affine puts coarse voxel centres at the centre of their fine blocks
    np.testing.assert_allclose(coarse.affine[:3, 3], (0.5, 0.5, 0.75))
    np.testing.assert_allclose(np.diag(coarse.affine)[:3], (2, 2, 3))
    ks = simulate_acquisition(phantom.chi, phantom.mask, output_voxel_size=(2, 2, 3), **kw)
    assert ks.phase.shape == (28, 28, 20, 4)
    # k-space truncation commutes with the dipole convolution: the reduced field is (up to the
    # zero padding) the field of the reduced susceptibility
    m = erode_mask(ks.mask, voxel_size=(2, 2, 3), radius_mm=4)
    direct = forward_field(ks.chi, voxel_size=ks.voxel_size)
    err = np.linalg.norm(ks.local_field[m] - direct[m]) / np.linalg.norm(direct[m])
    print(f"k-space reduced field vs field of reduced chi: {err:.4f}")
    assert err < 0.05


def test_bad_input(phantom):
    chi, mask, vsz = phantom.chi, phantom.mask, phantom.voxel_size
    with pytest.raises(ValueError, match="mask must have the shape"):
        simulate_acquisition(chi, mask[:-1], voxel_size=vsz)
    with pytest.raises(ValueError, match="milliseconds"):
        simulate_acquisition(chi, mask, voxel_size=vsz, echo_times=(4, 8))
    with pytest.raises(ValueError, match="echo_times must be positive"):
        simulate_acquisition(chi, mask, voxel_size=vsz, echo_times=(-0.004,))
    with pytest.raises(ValueError, match="field_strength must be positive"):
        simulate_acquisition(chi, mask, voxel_size=vsz, field_strength=0)
    with pytest.raises(ValueError, match="must not be finer"):
        simulate_acquisition(chi, mask, voxel_size=vsz, output_voxel_size=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="shim_order must be 0, 1 or 2"):
        simulate_acquisition(chi, mask, voxel_size=vsz, shim_order=4)
    with pytest.raises(ValueError, match="r2star must be a number or a volume"):
        simulate_acquisition(chi, mask, voxel_size=vsz, r2star=np.ones((3, 3, 3)))
