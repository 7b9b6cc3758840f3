"""Tests of the classical dipole inversions (metaqsm.inversion: tkd, tsvd, tikhonov, ilsqr, medi, tv).

Each method runs on the small brain-like phantom (48 x 48 x 40 at 1 x 1 x 1.5 mm) with a
forward-simulated field plus Gaussian noise; its RMSE inside the mask (the 2016 challenge
definition, %) is bounded and printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.fft as sfft

from metaqsm._fd import div_weighted_grad
from metaqsm._linalg import cg
from metaqsm.inversion import CLASSICAL, get_method
from metaqsm.inversion.medi import data_weight, gradient_mask
from metaqsm.kernels import dipole_kernel, divergence, forward_field, gradient, gradient_kernel_sq
from metaqsm.simulate.phantoms import brain_phantom

NOISE_PPM = 0.002  # field noise: about 1/6 of the field's standard deviation in the mask

# Upper bounds of the RMSE (%) with default parameters; measured values on this case:
# tkd 41, tsvd 60, tikhonov 44, ilsqr 39, medi 26 (20 at lam 1000; the default is now 100,
# which regularises this clean case more and realistic data far better), tv 35. iLSQR's step 1 now solves the square
# system D W D of STI Suite / QSM.m (29 % with the rectangular sqrt(W) D, which on realistic
# data is 10-30 % worse): on this clean case it damps the cone more, hence 44 (was 36).
BOUNDS = {"tkd": 47.0, "tsvd": 66.0, "tikhonov": 49.0, "ilsqr": 44.0, "medi": 27.0, "tv": 41.0,
          "wtv": 22.0, "rts": 50.0, "ndi": 52.0, "nltv": 39.0}
# wtv (measured 18.5 %) needs a magnitude: one whose edges are the tissue boundaries
# (tests/test_inversion_wtv.py also checks one whose edges are not)


def rmse(x, truth, mask):
    return 100.0 * float(np.linalg.norm((x - truth)[mask]) / np.linalg.norm(truth[mask]))


def noisy_field(chi, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), noise=NOISE_PPM, seed=1):
    f = forward_field(chi, voxel_size=voxel_size, b0_dir=b0_dir)
    f = f + np.random.default_rng(seed).normal(0.0, noise, f.shape).astype(np.float32)
    return (f * mask).astype(np.float32)


@pytest.fixture(scope="module")
def case(small_phantom):
    ph = small_phantom
    return ph, noisy_field(ph.chi, ph.mask, ph.voxel_size)


@pytest.fixture(scope="module")
def results(case):
    ph, field = case
    out = {}
    magnitude = np.where(ph.mask, np.exp(-5.0 * ph.chi), 0.05).astype(np.float32)
    for name in CLASSICAL:
        extra = {"magnitude": magnitude} if name == "wtv" else {}
        chi = get_method(name)(field, ph.mask, voxel_size=ph.voxel_size, **extra)
        out[name] = (chi, rmse(chi, ph.chi, ph.mask))
    return out


# --------------------------------------------------------------------------- phantom accuracy

@pytest.mark.parametrize("name", CLASSICAL)
def test_method_recovers_phantom(name, results, case):
    ph, _ = case
    chi, err = results[name]
    print(f"\n{name}: RMSE {err:.1f} % (bound {BOUNDS[name]})")
    assert chi.dtype == np.float32 and chi.shape == ph.chi.shape
    assert np.all(chi[~ph.mask] == 0)
    assert np.all(np.isfinite(chi))
    assert err < BOUNDS[name]


# iLSQR is not here: the reference algorithm (square system, STI Suite's stopping) is on par
# with TKD on a clean field (39 vs 41 %); it beats TKD on realistic data, which
# tests/test_inversion_medi_ilsqr.py checks.
@pytest.mark.parametrize("name", ["medi", "tv"])
def test_regularised_methods_beat_tkd(name, results):
    assert results[name][1] < results["tkd"][1] - 3.0


def test_tikhonov_beats_tkd_with_smaller_lambda(case, results):
    """With QSM.jl's default lambda (1e-2) Tikhonov is on par with TKD at threshold 0.2 on this
    phantom (both mostly underestimate near the cone); a smaller lambda beats it."""
    ph, field = case
    for reg in ("identity", "gradient"):
        chi = get_method("tikhonov")(field, ph.mask, voxel_size=ph.voxel_size, lam=3e-3,
                                     regulariser=reg)
        err = rmse(chi, ph.chi, ph.mask)
        print(f"\ntikhonov {reg} lam=3e-3: RMSE {err:.1f} %")
        assert err < results["tkd"][1] - 1.0


def test_inputs_not_modified(case):
    ph, field = case
    mag = np.abs(field) + 1.0
    f0, m0, g0 = field.copy(), ph.mask.copy(), mag.copy()
    get_method("tkd")(field, ph.mask, voxel_size=ph.voxel_size)
    get_method("tv")(field, ph.mask, voxel_size=ph.voxel_size, max_iter=3)
    get_method("medi")(field, ph.mask, voxel_size=ph.voxel_size, max_iter=1, magnitude=mag)
    assert np.array_equal(field, f0) and np.array_equal(ph.mask, m0) and np.array_equal(mag, g0)


# ----------------------------------------------------- anisotropic voxels and a tilted B0

@pytest.fixture(scope="module")
def tilted_case():
    vsz = (0.8, 1.0, 1.6)
    b0 = np.array([0.25, -0.3, 1.0])
    b0 = b0 / np.linalg.norm(b0)
    ph = brain_phantom((44, 40, 36), voxel_size=vsz, rng=2)
    return ph, vsz, b0, noisy_field(ph.chi, ph.mask, vsz, b0_dir=b0, seed=3)


@pytest.mark.parametrize("name,bound", [("tkd", 48.0), ("tv", 42.0), ("ilsqr", 40.0),
                                        ("medi", 34.0)])  # 30 -> 34: lam 1000 -> 100
def test_anisotropic_tilted_b0(name, bound, tilted_case):
    ph, vsz, b0, field = tilted_case
    func = get_method(name)
    err = rmse(func(field, ph.mask, voxel_size=vsz, b0_dir=b0), ph.chi, ph.mask)
    # the same method told the wrong geometry (B0 along the third axis) must do worse
    wrong = rmse(func(field, ph.mask, voxel_size=vsz), ph.chi, ph.mask)
    print(f"\n{name} tilted B0, anisotropic voxels: RMSE {err:.1f} % (wrong B0: {wrong:.1f} %)")
    assert err < bound
    assert wrong > err + 5.0


# -------------------------------------------------------------- known answers of the kernels

def _spectrum(x):
    return sfft.rfftn(x.astype(np.float64))


def test_tkd_tsvd_tikhonov_kspace_filters():
    """Noise-free field on the volume's own grid (pad=0 on both sides), mask = everything:
    each method's spectrum is the susceptibility's times its filter D * K(D)."""
    shape, vsz, b0 = (32, 28, 24), (1.0, 1.2, 1.5), (0.2, 0.1, 1.0)
    chi = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    mask = np.ones(shape, bool)
    field = forward_field(chi, voxel_size=vsz, b0_dir=b0, pad=0)
    D = dipole_kernel(shape, voxel_size=vsz, b0_dir=b0).astype(np.float64)
    C = _spectrum(chi)
    thr = 0.2
    small = np.abs(D) < thr

    x = get_method("tkd")(field, mask, voxel_size=vsz, b0_dir=b0, threshold=thr)
    expect = np.where(small, np.abs(D) / thr, 1.0) * C
    assert np.abs(_spectrum(x) - expect).max() < 1e-3 * np.abs(C).max()

    x = get_method("tsvd")(field, mask, voxel_size=vsz, b0_dir=b0, threshold=thr)
    expect = np.where(small, 0.0, 1.0) * C
    assert np.abs(_spectrum(x) - expect).max() < 1e-3 * np.abs(C).max()

    lam = 0.05
    x = get_method("tikhonov")(field, mask, voxel_size=vsz, b0_dir=b0, lam=lam,
                               regulariser="gradient")
    G2 = gradient_kernel_sq(shape, voxel_size=vsz).astype(np.float64)
    with np.errstate(invalid="ignore"):
        filt = np.where(D * D + lam * G2 > 0, D * D / (D * D + lam * G2), 0.0)
    assert np.abs(_spectrum(x) - filt * C).max() < 1e-3 * np.abs(C).max()


def test_tkd_sign_of_zero_is_positive():
    """A constant field has only a k = 0 component, where D = 0: sign(0) -> +1 gives
    field / threshold."""
    shape = (16, 16, 16)
    x = get_method("tkd")(np.full(shape, 0.01, np.float32), np.ones(shape, bool),
                          voxel_size=(1, 1, 1), threshold=0.2)
    np.testing.assert_allclose(x, 0.05, rtol=1e-4)


@pytest.mark.parametrize("name,pad", [("tkd", "auto"), ("tikhonov", 8), ("tv", 6),
                                      ("ilsqr", (4, 4, 6))])
def test_padding_option(name, pad, case):
    ph, field = case
    chi = get_method(name)(field, ph.mask, voxel_size=ph.voxel_size, pad=pad)
    assert chi.shape == field.shape
    assert rmse(chi, ph.chi, ph.mask) < BOUNDS[name]


# ------------------------------------------------------------------- pieces of the methods

def test_buffered_gradient_and_divergence_match_the_core():
    """The ``out=`` forms the iterative methods use equal the allocating ones and the periodic
    differences written with np.roll."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 8, 7)).astype(np.float32)
    g = rng.standard_normal((3, 9, 8, 7)).astype(np.float32)
    vsz = np.array([0.7, 1.0, 2.0])
    out = np.empty_like(g)
    gradient(x, voxel_size=vsz, out=out)
    np.testing.assert_array_equal(out, gradient(x, voxel_size=vsz))
    expect = np.stack([(np.roll(x, -1, i) - x) / vsz[i] for i in range(3)])
    np.testing.assert_allclose(out, expect, atol=1e-5)
    d = np.empty_like(x)
    divergence(g, voxel_size=vsz, out=d, work=np.empty_like(x))
    np.testing.assert_array_equal(d, divergence(g, voxel_size=vsz))
    expect = sum((g[i] - np.roll(g[i], 1, i)) / vsz[i] for i in range(3))
    np.testing.assert_allclose(d, expect, atol=1e-5)


def test_fused_weighted_div_grad_matches_the_core():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 8, 7)).astype(np.float32)
    w = rng.random((3, 9, 8, 7)).astype(np.float32)
    vsz = np.array([0.7, 1.0, 2.0])
    expect = divergence(w * gradient(x, voxel_size=vsz), voxel_size=vsz)
    w_scaled = (w / (vsz ** 2).reshape(3, 1, 1, 1)).astype(np.float32)
    out = div_weighted_grad(x, w_scaled, out=np.empty_like(x), work=np.empty_like(x))
    np.testing.assert_allclose(out, expect, atol=1e-4)


def test_ilsqr_streaking_estimate_lies_in_the_cone(case):
    """Step 3 of iLSQR: with the whole volume as mask, the artifact estimate has no k-space
    energy outside the ill-conditioned cone |D| < 0.1."""
    from metaqsm.inversion import ilsqr as mod

    ph, field = case
    mask = np.ones(field.shape, bool)
    vsz = ph.voxel_size
    D = dipole_kernel(field.shape, voxel_size=vsz)
    x0 = get_method("tkd")(field, mask, voxel_size=vsz)
    x_sa = mod._streaking(x0, x0, mask, D, vsz, 0.1, 1e-2, 20)
    S = np.abs(_spectrum(x_sa))
    cone = np.abs(D) < 0.1
    assert S[cone].sum() > 0
    assert S[~cone].max() < 1e-4 * S[cone].max()


def test_medi_gradient_mask_edge_fraction():
    rng = np.random.default_rng(0)
    img = rng.random((20, 20, 20)).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[3:17, 3:17, 3:17] = True
    for frac in (0.5, 0.9):
        wg = gradient_mask(img, mask, voxel_size=(1, 1, 1), edge_fraction=frac)
        assert wg.shape == (3,) + img.shape
        assert int((wg == 0).sum()) == round(frac * mask.sum())
        # the edges are the largest gradient components
        g = np.abs(gradient(img * mask, voxel_size=(1, 1, 1)))
        assert g[wg == 0].min() >= g[wg == 1].max()
    # more edges asked for than there are non-zero components: all of them, and nothing else
    g = np.abs(gradient(img * mask, voxel_size=(1, 1, 1)))
    assert 4 * mask.sum() > np.count_nonzero(g)
    wg = gradient_mask(img, mask, voxel_size=(1, 1, 1), edge_fraction=4.0)
    np.testing.assert_array_equal(wg == 0, g > 0)


def test_medi_data_weight():
    mask = np.zeros((6, 6, 6), bool)
    mask[1:5, 1:5, 1:5] = True
    noise = np.where(np.arange(6)[:, None, None] < 3, 1.0, 2.0) * np.ones((6, 6, 6))
    w = data_weight(mask, noise_std=noise)
    np.testing.assert_allclose(w[mask].mean(), 1.0, rtol=1e-6)
    assert np.all(w[~mask] == 0)
    np.testing.assert_allclose(w[1, 1, 1] / w[4, 1, 1], 2.0, rtol=1e-6)  # 1 / noise
    mag = np.full((6, 6, 6), 3.0)
    np.testing.assert_allclose(data_weight(mask, magnitude=mag)[mask], 1.0)
    np.testing.assert_array_equal(data_weight(mask), mask.astype(np.float32))
    holes = noise.copy()
    holes[2, 2, 2], holes[3, 3, 3] = 0.0, np.inf  # unreliable voxels: weight 0, as the toolbox
    w = data_weight(mask, noise_std=holes)
    assert w[2, 2, 2] == 0 and w[3, 3, 3] == 0 and w[1, 1, 1] > 0
    with pytest.raises(ValueError, match="noise_std must be positive and finite in at least one"):
        data_weight(mask, noise_std=0.0)
    with pytest.raises(ValueError, match="noise_std must not be negative"):
        data_weight(mask, noise_std=-noise)
    with pytest.raises(ValueError, match="noise_std must be a number or have the shape"):
        data_weight(mask, noise_std=np.ones((2, 2)))


def test_medi_with_magnitude_and_noise_map(case, results):
    """A magnitude image whose edges are the anatomy's (tissue contrast from the labels) gives
    the morphology prior; with it MEDI is at least as good as with the field's own edges."""
    ph, field = case
    contrast = np.array([0.0, 1.0, 0.8, 0.6, 0.5, 0.45, 0.4, 0.3, 0.2, 0.3], np.float32)
    mag = contrast[ph.labels] * ph.mask
    chi = get_method("medi")(field, ph.mask, voxel_size=ph.voxel_size, magnitude=mag)
    err = rmse(chi, ph.chi, ph.mask)
    chi_n = get_method("medi")(field, ph.mask, voxel_size=ph.voxel_size, magnitude=mag,
                               noise_std=np.full(field.shape, NOISE_PPM, np.float32))
    err_n = rmse(chi_n, ph.chi, ph.mask)
    print(f"\nmedi with magnitude: {err:.1f} %, with magnitude + noise map {err_n:.1f} %")
    assert err < results["medi"][1] + 1.0
    assert err_n < BOUNDS["medi"]


def test_progress_bar_runs(case):
    ph, field = case
    for name in ("tv", "medi", "ilsqr"):
        chi = get_method(name)(field, ph.mask, voxel_size=ph.voxel_size, max_iter=2,
                               progress=True)
        assert np.all(np.isfinite(chi))


def test_signatures():
    for name in CLASSICAL:
        params = inspect.signature(get_method(name)).parameters
        names = list(params)
        assert names[:2] == ["field", "mask"]
        for key in ("voxel_size", "b0_dir", "pad"):
            assert params[key].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["b0_dir"].default == (0.0, 0.0, 1.0)


# ------------------------------------------------------------------------------ bad input

GOOD = dict(voxel_size=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("name", CLASSICAL)
def test_bad_inputs(name):
    func = get_method(name)
    field = np.zeros((8, 8, 8), np.float32)
    mask = np.ones((8, 8, 8), bool)
    with pytest.raises(ValueError, match="mask must have the shape"):
        func(field, np.ones((8, 8, 7), bool), **GOOD)
    with pytest.raises(ValueError, match="mask is empty"):
        func(field, np.zeros_like(mask), **GOOD)
    bad = field.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="field contains 1 NaN or Inf"):
        func(bad, mask, **GOOD)
    with pytest.raises(ValueError, match="field must be a 3D volume, got 2D"):
        func(field[0], mask[0], **GOOD)
    with pytest.raises(ValueError, match="field must be a 3D volume, got 5D"):
        func(field[..., None, None], mask, **GOOD)
    with pytest.raises(ValueError, match="voxel_size must be positive"):
        func(field, mask, voxel_size=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="b0_dir must be a non-zero"):
        func(field, mask, voxel_size=(1, 1, 1), b0_dir=(0, 0, 0))


def test_bad_method_parameters():
    field = np.zeros((8, 8, 8), np.float32)
    mask = np.ones((8, 8, 8), bool)
    with pytest.raises(ValueError, match="threshold must be positive"):
        get_method("tkd")(field, mask, threshold=0.0, **GOOD)
    with pytest.raises(ValueError, match="threshold must be positive"):
        get_method("tsvd")(field, mask, threshold=-0.1, **GOOD)
    with pytest.raises(ValueError, match="regulariser must be one of identity, gradient, laplacian"):
        get_method("tikhonov")(field, mask, regulariser="tv", **GOOD)
    with pytest.raises(ValueError, match="lam must be positive"):
        get_method("tv")(field, mask, lam=0, **GOOD)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        get_method("tv")(field, mask, max_iter=0, **GOOD)
    with pytest.raises(ValueError, match="tol must be positive"):
        get_method("ilsqr")(field, mask, tol=-1, **GOOD)
    with pytest.raises(ValueError, match="magnitude must have the shape"):
        get_method("medi")(field, mask, magnitude=np.ones((8, 8, 7)), **GOOD)
    with pytest.raises(ValueError, match="magnitude must be non-negative"):
        get_method("medi")(field, mask, magnitude=-np.ones((8, 8, 8)), **GOOD)
    with pytest.raises(ValueError, match="noise_std must be positive and finite in at least"):
        get_method("medi")(field, mask, noise_std=np.zeros((8, 8, 8)), **GOOD)
    with pytest.raises(ValueError, match="delta_te must be positive"):
        get_method("medi")(field, mask, delta_te=0, **GOOD)


def test_medi_multi_echo_magnitude_is_combined(case):
    """Echoes on the last axis are combined by root-sum-of-squares; the weights and the edge
    mask do not depend on the magnitude's scale, so two equal echoes give the same map."""
    ph, field = case
    mag = (np.abs(field) * 10 + ph.mask).astype(np.float32)
    one = get_method("medi")(field, ph.mask, voxel_size=ph.voxel_size, magnitude=mag, max_iter=2)
    two = get_method("medi")(field, ph.mask, voxel_size=ph.voxel_size,
                             magnitude=np.stack([mag, mag], axis=-1), max_iter=2)
    np.testing.assert_allclose(two, one, atol=1e-5)


def test_medi_conjugate_gradients_solves_spd_system():
    """MEDI's inner solver (the core's CG) on a small SPD system."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((27, 27))
    spd = (a @ a.T + 27 * np.eye(27)).astype(np.float32)
    x_true = rng.standard_normal((3, 3, 3)).astype(np.float32)
    b = (spd @ x_true.ravel()).reshape(3, 3, 3).astype(np.float32)
    x, info = cg(lambda v: (spd @ v.ravel()).reshape(v.shape).astype(np.float32), b, tol=1e-6,
                 max_iter=100)
    np.testing.assert_allclose(x, x_true, atol=1e-4)
