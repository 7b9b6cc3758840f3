"""Metrics against values worked out by hand on tiny arrays, and against brute-force versions of
the challenge definitions (direct 3D correlations instead of separable filters and FFTs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from metaqsm import metrics as M

RNG = np.random.default_rng(1234)


def smooth_random(shape, rng=RNG, sigma=1.5):
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma)


# ---------------------------------------------------------------- RMSE and demeaned NRMSE
def test_rmse_known_vectors():
    y = np.full((2, 2, 2), 2.0)
    x = y.copy()
    x[0, 0, 0] += 1.0  # ||x - y|| = 1, ||y|| = sqrt(8 * 4)
    assert M.rmse(x, y) == pytest.approx(100.0 / math.sqrt(32.0), rel=1e-12)
    x2 = np.array([3.0, 4.0, 0.0, 0.0]).reshape(1, 2, 2)
    y2 = np.array([0.0, 0.0, 1.0, 0.0]).reshape(1, 2, 2)
    # ||x2 - y2|| = sqrt(9 + 16 + 1), ||y2|| = 1
    assert M.rmse(x2, y2) == pytest.approx(100.0 * math.sqrt(26.0), rel=1e-12)


def test_rmse_ignores_voxels_outside_mask_and_does_not_demean():
    y = np.arange(1.0, 9.0).reshape(2, 2, 2)
    mask = np.ones(y.shape, bool)
    mask[1, 1, 1] = False
    x = y.copy()
    x[1, 1, 1] = 1e6  # outside the mask: no effect
    assert M.rmse(x, y, mask) == 0.0
    # a constant offset c counts fully: 100 * c * sqrt(N) / ||y||
    c = 0.5
    ym = y[mask]
    expected = 100.0 * c * math.sqrt(ym.size) / math.sqrt(float(np.sum(ym**2)))
    assert M.rmse(y + c, y, mask) == pytest.approx(expected, rel=1e-12)
    # ... and the demeaned NRMSE removes it
    assert M.nrmse_demeaned(y + c, y, mask) == pytest.approx(0.0, abs=1e-10)


def test_nrmse_demeaned_known_value():
    y = np.array([1.0, 2.0, 3.0, 6.0]).reshape(1, 2, 2)  # mean 3 -> [-2, -1, 0, 3]
    x = np.array([2.0, 2.0, 2.0, 6.0]).reshape(1, 2, 2)  # mean 3 -> [-1, -1, -1, 3]
    # difference [1, 0, -1, 0]: norm sqrt(2); ||y - mean|| = sqrt(4 + 1 + 0 + 9)
    assert M.nrmse_demeaned(x, y) == pytest.approx(100.0 * math.sqrt(2.0 / 14.0), rel=1e-12)


# ---------------------------------------------------------------- HFEN
def test_log_kernel_sums_to_zero_and_matches_closed_form():
    k = M.log_kernel()
    assert k.shape == (15, 15, 15)
    assert abs(k.sum()) < 1e-14
    np.testing.assert_allclose(k, k[::-1, :, :], atol=0)
    np.testing.assert_allclose(k, np.transpose(k, (2, 0, 1)), atol=0)
    # closed form, written out with the math module: g = exp(-r^2 / (2 s^2)) / sum(g),
    # h = g (r^2 - 3 s^2) / s^4, minus the mean of h over the 15^3 grid.
    s2 = 1.5**2
    g1 = [math.exp(-(t * t) / (2 * s2)) for t in range(-7, 8)]
    total = sum(g1) ** 3
    h_sum = 0.0
    for i in range(-7, 8):
        for j in range(-7, 8):
            for l in range(-7, 8):
                r2 = i * i + j * j + l * l
                h_sum += math.exp(-r2 / (2 * s2)) / total * (r2 - 3 * s2) / s2**2
    mean = h_sum / 15**3
    for off in [(0, 0, 0), (1, 2, 3), (-4, 0, 2), (7, 7, 7), (-7, 3, -1)]:
        r2 = sum(o * o for o in off)
        expected = math.exp(-r2 / (2 * s2)) / total * (r2 - 3 * s2) / s2**2 - mean
        got = k[off[0] + 7, off[1] + 7, off[2] + 7]
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-16)
    # the centre is the most negative tap
    assert k[7, 7, 7] == k.min() < 0


def test_hfen_matches_direct_correlation_with_zero_padding():
    shape = (18, 16, 14)
    y = smooth_random(shape)
    x = y + 0.3 * smooth_random(shape, sigma=0.7)
    mask = np.zeros(shape, bool)
    mask[2:16, 3:14, 1:12] = True
    k = M.log_kernel()
    lx = ndimage.correlate(x * mask, k, mode="constant", cval=0.0)
    ly = ndimage.correlate(y * mask, k, mode="constant", cval=0.0)
    expected = 100.0 * np.linalg.norm(lx - ly) / np.linalg.norm(ly)
    assert M.hfen(x, y, mask) == pytest.approx(expected, rel=1e-9)


def test_hfen_scaling_and_constant_shift():
    shape = (20, 20, 20)
    y = smooth_random(shape)
    # linear filter: LoG(2y) - LoG(y) = LoG(y) -> exactly 100 %
    assert M.hfen(2.0 * y, y) == pytest.approx(100.0, rel=1e-10)
    assert M.hfen(y, y) == 0.0
    # A constant shift c: the LoG of a constant is 0 wherever the whole kernel lies inside the
    # array (the kernel sums to 0), so only the 7 voxels next to each face (zero padding) count.
    c = 0.25
    l_ones = ndimage.correlate(np.ones(shape), M.log_kernel(), mode="constant", cval=0.0)
    assert np.abs(l_ones[7:-7, 7:-7, 7:-7]).max() < 1e-12
    ly = ndimage.correlate(y, M.log_kernel(), mode="constant", cval=0.0)
    expected = 100.0 * c * np.linalg.norm(l_ones) / np.linalg.norm(ly)
    assert M.hfen(y + c, y) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------- SSIM and XSIM
def _brute_ssim(x, y, mask, *, k1, k2, L, rescale):
    """The challenge definition with a full 7^3 window and direct 3D correlation."""
    x = x * mask
    y = y * mask
    if rescale:
        lo = min(x.min(), y.min())
        hi = max(x.max(), y.max())
        x = 255.0 * (x - lo) / (hi - lo)
        y = 255.0 * (y - lo) / (hi - lo)
    t = np.arange(-3, 4)
    r2 = t[:, None, None] ** 2 + t[None, :, None] ** 2 + t[None, None, :] ** 2
    w = np.exp(-r2 / (2 * 1.5**2))
    w /= w.sum()

    def f(a):
        return ndimage.correlate(a, w, mode="constant", cval=0.0)

    mu1, mu2 = f(x), f(y)
    s1 = f(x * x) - mu1**2
    s2 = f(y * y) - mu2**2
    s12 = f(x * y) - mu1 * mu2
    c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
    smap = (2 * mu1 * mu2 + c1) * (2 * s12 + c2) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return smap[mask].mean()


def test_window_is_the_challenge_gaussian():
    w = M.gaussian_window()
    assert w.shape == (7,)
    assert w.sum() == pytest.approx(1.0, abs=1e-15)
    assert w[3] / w[4] == pytest.approx(math.exp(1.0 / (2 * 1.5**2)), rel=1e-12)


def test_ssim_and_xsim_of_identical_maps_are_one():
    y = 0.1 * smooth_random((16, 16, 16))
    mask = np.zeros(y.shape, bool)
    mask[3:13, 2:14, 4:12] = True
    assert M.ssim(y, y, mask) == pytest.approx(1.0, abs=1e-12)
    assert M.xsim(y, y, mask) == pytest.approx(1.0, abs=1e-12)
    noisy = y + 0.05 * RNG.normal(size=y.shape)
    assert M.ssim(noisy, y, mask) < 0.99
    assert M.xsim(noisy, y, mask) < 0.99


def test_ssim_single_voxel_by_hand():
    # One voxel: the zero padding leaves only the window's centre weight W = w0^3 in every
    # windowed mean. Rescaling maps x = 0.3 -> 255 and y = -0.1 -> 0, so mu2 = s2 = s12 = 0,
    # mu1 = 255 W, s1 = 255^2 W (1 - W) and SSIM = C1 C2 / ((mu1^2 + C1) (s1 + C2)).
    x = np.full((1, 1, 1), 0.3)
    y = np.full((1, 1, 1), -0.1)
    w0 = 1.0 / (1.0 + 2.0 * sum(math.exp(-t * t / 4.5) for t in (1, 2, 3)))
    W = w0**3
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = c1 * c2 / (((255 * W) ** 2 + c1) * (255**2 * W * (1 - W) + c2))
    assert M.ssim(x, y) == pytest.approx(expected, rel=1e-10)
    assert 0.008 < expected < 0.01  # 0.00897 worked out on paper
    # XSIM, no rescaling, L = 1, K = (0.01, 0.001): every moment carries W.
    a, b = 0.3, -0.1
    c1, c2 = 0.01**2, 0.001**2
    num = (2 * W * W * a * b + c1) * (2 * W * (1 - W) * a * b + c2)
    den = (W * W * (a * a + b * b) + c1) * (W * (1 - W) * (a * a + b * b) + c2)
    assert M.xsim(x, y) == pytest.approx(num / den, rel=1e-10)


def test_ssim_and_xsim_match_brute_force():
    shape = (14, 12, 10)
    y = 0.08 * smooth_random(shape)
    x = 0.9 * y + 0.02 * RNG.normal(size=shape) + 0.01
    mask = np.zeros(shape, bool)
    mask[2:12, 1:11, 2:9] = True
    assert M.ssim(x, y, mask) == pytest.approx(
        _brute_ssim(x, y, mask, k1=0.01, k2=0.03, L=255.0, rescale=True), rel=1e-9)
    assert M.xsim(x, y, mask) == pytest.approx(
        _brute_ssim(x, y, mask, k1=0.01, k2=0.001, L=1.0, rescale=False), rel=1e-9)


@pytest.mark.parametrize("box", [(slice(10, 15), slice(9, 14), slice(11, 13)),  # deep inside
                                 (slice(0, 24), slice(0, 6), slice(18, 22))])   # on the faces
def test_small_masks_anywhere_match_brute_force(box):
    # The implementation filters only around the mask; the brute force filters everything.
    shape = (24, 22, 22)
    y = 0.08 * smooth_random(shape)
    x = y + 0.02 * RNG.normal(size=shape)
    mask = np.zeros(shape, bool)
    mask[box] = True
    assert M.ssim(x, y, mask) == pytest.approx(
        _brute_ssim(x, y, mask, k1=0.01, k2=0.03, L=255.0, rescale=True), rel=1e-9)
    assert M.xsim(x, y, mask) == pytest.approx(
        _brute_ssim(x, y, mask, k1=0.01, k2=0.001, L=1.0, rescale=False), rel=1e-9)
    k = M.log_kernel()
    lx = ndimage.correlate(x * mask, k, mode="constant", cval=0.0)
    ly = ndimage.correlate(y * mask, k, mode="constant", cval=0.0)
    assert M.hfen(x, y, mask) == pytest.approx(
        100.0 * np.linalg.norm(lx - ly) / np.linalg.norm(ly), rel=1e-9)


def test_ssim_is_invariant_to_a_joint_scale_xsim_is_not():
    y = 0.1 * smooth_random((12, 12, 12))
    x = y + 0.03 * RNG.normal(size=y.shape)
    assert M.ssim(3.0 * x, 3.0 * y) == pytest.approx(M.ssim(x, y), rel=1e-10)
    assert M.xsim(3.0 * x, 3.0 * y) != pytest.approx(M.xsim(x, y), rel=1e-3)


# ---------------------------------------------------------------- correlation, regions
def test_correlation():
    y = smooth_random((8, 8, 8))
    mask = np.zeros(y.shape, bool)
    mask[1:7, 1:7, 1:7] = True
    x = 2.0 * y + 1.0
    x[0] = 99.0  # outside the mask
    assert M.correlation(x, y, mask) == pytest.approx(1.0, abs=1e-12)
    assert M.correlation(-x, y, mask) == pytest.approx(-1.0, abs=1e-12)
    z = RNG.normal(size=y.shape)
    assert M.correlation(z, y, mask) == pytest.approx(np.corrcoef(z[mask], y[mask])[0, 1], rel=1e-10)
    assert math.isnan(M.correlation(np.ones(y.shape), y, mask))


def test_region_mae_by_hand():
    y = np.zeros((2, 2, 2))
    x = np.array([0.1, -0.3, 0.2, 0.0, 5.0, 0.0, 0.0, 0.0]).reshape(2, 2, 2)
    labels = np.array([1, 1, 2, 2, 0, 0, 0, 0]).reshape(2, 2, 2)
    out = M.region_mae(x, y, labels)
    assert list(out) == [1, 2]
    assert out[1] == pytest.approx(0.2, rel=1e-12)  # (0.1 + 0.3) / 2
    assert out[2] == pytest.approx(0.1, rel=1e-12)  # (0.2 + 0) / 2; label 0 (5.0) skipped
    labels[1, 1, 1] = -4  # any integer but 0 is a label
    out = M.region_mae(x, y, labels.astype(np.float32))
    assert list(out) == [-4, 1, 2] and out[-4] == 0.0


def test_compute_metrics_keys_and_values():
    shape = (20, 20, 16)
    y = 0.1 * smooth_random(shape)
    x = y + 0.01 * RNG.normal(size=shape)
    mask = np.zeros(shape, bool)
    mask[3:17, 3:17, 2:14] = True
    labels = np.zeros(shape, np.int16)
    labels[3:10] = 1
    labels[10:] = 2
    out = M.compute_metrics(x, y, mask, labels=labels)
    assert set(out) == {"rmse", "nrmse_demeaned", "hfen", "ssim", "xsim", "correlation", "regions"}
    assert out["rmse"] == M.rmse(x, y, mask)
    assert out["hfen"] == pytest.approx(M.hfen(x, y, mask), rel=1e-12)
    assert out["ssim"] == pytest.approx(M.ssim(x, y, mask), rel=1e-12)
    assert out["xsim"] == pytest.approx(M.xsim(x, y, mask), rel=1e-12)
    # regions are restricted to the mask
    for lab in (1, 2):
        sel = (labels == lab) & mask
        assert out["regions"][lab] == pytest.approx(np.abs(x - y)[sel].mean(), rel=1e-12)
    assert "regions" not in M.compute_metrics(x, y, mask)


# ---------------------------------------------------------------- errors
def test_errors_name_the_argument():
    y = np.ones((4, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        M.rmse(np.ones((4, 4, 3)), y)
    with pytest.raises(ValueError, match="mask is empty"):
        M.compute_metrics(y, y, np.zeros(y.shape))
    with pytest.raises(ValueError, match="mask must have the shape"):
        M.ssim(y, y, np.ones((4, 4)))
    bad = y.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        M.hfen(bad, y)
    with pytest.raises(ValueError, match="reference must be a 3D volume"):
        M.xsim(y, np.ones((4, 4, 4, 2)))
    with pytest.raises(ValueError, match="reference is zero everywhere inside the mask"):
        M.rmse(y, np.zeros(y.shape))
    with pytest.raises(ValueError, match="labels has no non-zero label"):
        M.region_mae(y, y, np.zeros(y.shape, int))
    with pytest.raises(ValueError, match="labels must hold integer values"):
        M.region_mae(y, y, np.full(y.shape, 0.5))
    with pytest.raises(ValueError, match="labels must have the shape"):
        M.compute_metrics(y, y, None, labels=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="size must be a positive odd integer"):
        M.log_kernel(size=4)
