"""The realistic cases (metaqsm.simulate.realistic) and the acquisition options they use."""

from __future__ import annotations

import numpy as np
import pytest

from metaqsm.kernels import forward_field
from metaqsm.simulate.acquisition import simulate_acquisition
from metaqsm.simulate.phantoms import brain_phantom
from metaqsm.simulate.realistic import (RealisticConfig, anisotropy_field, fibre_directions,
                                        microstructure_field, realistic_case)

QUICK = RealisticConfig(fine_voxel_mm=2.0)


def _sphere(shape, radius):
    idx = np.indices(shape) - (np.asarray(shape) // 2)[:, None, None, None]
    r = np.sqrt((idx ** 2).sum(0))
    return r, (r <= radius).astype(np.float32)


@pytest.mark.parametrize("n", [(0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.6, 0.0, 0.8)])
def test_anisotropy_field_of_a_sphere(n):
    """A uniformly magnetised sphere: zero field inside (Lorentz-corrected, any tensor), the
    field of a point dipole of moment u = A b outside:
    f = (R/r)^3 (3 (r.b)(r.u) - b.u) / 3 with r the unit vector."""
    shape, radius, dchi = (64, 64, 64), 8.0, 0.02
    r, w = _sphere(shape, radius)
    nvec = np.asarray(n, float) / np.linalg.norm(n)
    dirs = np.broadcast_to(nvec.astype(np.float32), shape + (3,)).copy()
    b = np.array([0.0, 0.0, 1.0])
    f = anisotropy_field(w, dirs, delta_chi=dchi, voxel_size=(1, 1, 1), b0_dir=b)
    inside = r <= radius - 2
    assert np.abs(f[inside]).max() < 0.03 * dchi
    u = dchi * (nvec * nvec.dot(b) - b / 3.0)
    c = np.asarray(shape) // 2
    vol = w.sum()  # the voxelised sphere's volume stands for 4/3 pi R^3
    for p in ((c[0], c[1], c[2] + 20), (c[0] + 20, c[1], c[2]), (c[0] + 14, c[1], c[2] + 14)):
        d = np.asarray(p, float) - c
        dist = np.linalg.norm(d)
        rh = d / dist
        expected = vol / (4 * np.pi * dist ** 3) * (3 * rh.dot(b) * rh.dot(u) - b.dot(u))
        assert f[p] == pytest.approx(expected, rel=0.05, abs=0.01 * abs(u).max())


def test_anisotropy_field_is_the_dipole_field_for_an_isotropic_tensor_part():
    """Fibres along three orthogonal axes in three equal parts sum to zero anisotropy."""
    ph = brain_phantom((32, 32, 32), voxel_size=(1, 1, 1), lesions=False)
    w = ph.mask.astype(np.float32)
    total = np.zeros(w.shape, np.float32)
    for axis in range(3):
        dirs = np.zeros(w.shape + (3,), np.float32)
        dirs[..., axis] = 1.0
        total += anisotropy_field(w, dirs, delta_chi=0.03, voxel_size=(1, 1, 2),
                                  b0_dir=(0.2, 0.1, 1.0))
    assert np.abs(total).max() < 1e-6


def test_microstructure_field_depends_on_the_fibre_angle():
    w = np.ones((4, 4, 4), np.float32)
    perp = np.zeros((4, 4, 4, 3), np.float32)
    perp[..., 0] = 1.0
    par = np.zeros((4, 4, 4, 3), np.float32)
    par[..., 2] = 1.0
    assert np.allclose(microstructure_field(w, perp, amplitude=0.02), -0.02)
    assert np.allclose(microstructure_field(w, par, amplitude=0.02), 0.0)
    d = fibre_directions((24, 24, 24), voxel_size=(1, 1, 1), rng=0)
    assert np.allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-5)
    # neighbours share a direction (fibre bundles), far voxels do not
    near = np.abs((d[:-1] * d[1:]).sum(-1)).mean()
    assert near > 0.9


def test_acquisition_extra_field_tissue_maps_and_dephasing():
    ph = brain_phantom((40, 40, 32), voxel_size=(1, 1, 1))
    extra = np.full(ph.chi.shape, 0.01, np.float32)
    kw = dict(voxel_size=(1, 1, 1), snr=None, phase_offset=False, rng=0)
    plain = simulate_acquisition(ph.chi, ph.mask, **kw)
    more = simulate_acquisition(ph.chi, ph.mask, extra_field=extra, **kw)
    np.testing.assert_allclose((more.local_field - plain.local_field)[ph.mask], 0.01, atol=1e-6)
    np.testing.assert_array_equal(more.chi, plain.chi)
    m0 = np.full(ph.chi.shape, 0.5, np.float32)
    half = simulate_acquisition(ph.chi, ph.mask, tissue_m0=m0, **kw)
    ratio = half.magnitude[..., 0][ph.mask] / plain.magnitude[..., 0][ph.mask]
    np.testing.assert_allclose(ratio, 0.5, rtol=1e-4)
    deph = simulate_acquisition(ph.chi, ph.mask, intravoxel_dephasing=True, **kw)
    assert np.all(deph.magnitude <= plain.magnitude + 1e-6)
    # the signal drops where the background field is steep, more at the last echo
    loss = 1 - deph.magnitude[..., -1].sum() / plain.magnitude[..., -1].sum()
    assert loss > 1 - deph.magnitude[..., 0].sum() / plain.magnitude[..., 0].sum() > 0
    with pytest.raises(ValueError, match="extra_field must have the shape"):
        simulate_acquisition(ph.chi, ph.mask, extra_field=extra[:-1], **kw)
    with pytest.raises(ValueError, match="receive_profile must be non-negative"):
        simulate_acquisition(ph.chi, ph.mask, receive_profile=-m0, **kw)
    with pytest.raises(ValueError, match="tissue_r2star must be non-negative"):
        simulate_acquisition(ph.chi, ph.mask, tissue_r2star=m0[:-1], **kw)


@pytest.fixture(scope="module")
def quick_case():
    return realistic_case(0, output_voxel_size=(2.0, 2.0, 2.0), b0_tilt_deg=15.0, config=QUICK,
                          seed=1)


def test_realistic_case_carries_real_imperfections(quick_case):
    s = quick_case
    m = s["mask"]
    assert s["field"].shape == s["chi"].shape == m.shape == s["noise"].shape
    assert m.sum() > 0.5 * (np.abs(s["chi"]) > 0).sum()  # most of the brain is evaluated
    p = s["params"]
    assert QUICK.anisotropy[0] <= p["anisotropy"] <= QUICK.anisotropy[1]
    assert QUICK.snr[0] <= p["snr"] <= QUICK.snr[1]
    assert 0.9 < p["mask_dice"] < 1.0  # the mask given to the pipeline is off, not wrong
    b0 = np.asarray(s["b0_dir"])
    assert np.degrees(np.arccos(b0[2])) == pytest.approx(15.0, abs=0.01)
    dipolar = forward_field(s["chi"], voxel_size=s["voxel_size"], b0_dir=b0)
    # a non-dipolar part of a real size: a third to a whole of the dipolar field's spread
    ratio = s["extra_field"][m].std() / dipolar[m].std()
    assert 0.2 < ratio < 1.2
    # the pipeline's local field differs from the truth by more than its noise (residue)
    err = (s["field"] - s["true_local"])[m]
    assert err.std() > np.median(s["noise"][m])
    # the noise map grows where the magnitude is low
    low = s["magnitude"] < np.percentile(s["magnitude"][m], 10)
    assert np.median(s["noise"][m & low]) > 1.5 * np.median(s["noise"][m & ~low])


def test_realistic_case_is_reproducible(quick_case):
    again = realistic_case(0, output_voxel_size=(2.0, 2.0, 2.0), b0_tilt_deg=15.0, config=QUICK,
                           seed=1)
    np.testing.assert_array_equal(again["field"], quick_case["field"])
    other = realistic_case(1, output_voxel_size=(2.0, 2.0, 2.0), config=QUICK, seed=1)
    assert not np.array_equal(other["chi"], quick_case["chi"])
    with pytest.raises(ValueError, match="output_voxel_size must be at least 2.0 mm"):
        realistic_case(0, output_voxel_size=(1.0, 1.0, 1.0), config=QUICK)


def test_quick_realistic_suite_ranks_tv_ahead_of_tkd(tmp_path):
    """The quick variant of `metaqsm evaluate --suite realistic`: the real brain's first pair."""
    from metaqsm.evaluate import run_suite
    from metaqsm.evaluate.report import load_results
    from metaqsm.evaluate.suites import realistic_suite

    suite = realistic_suite(["tkd", "tv"], cases=[((2.0, 2.0, 2.0), 0.0), ((2.0, 2.0, 3.0), 20.0)],
                            config=QUICK)
    res = run_suite(suite, tmp_path / "r", progress=False)
    assert res["computed"] == 4 and not res["failed"]
    rmse = {}
    for r in load_results(tmp_path / "r"):
        rmse.setdefault(r["label"], []).append(r["metrics"]["rmse"])
    assert np.mean(rmse["TV"]) < np.mean(rmse["TKD"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Does the suite rank the methods as the real brain does?" in md
    assert "| TV < TKD | 57.9 / 84.1 |" in md
