"""Phase unwrapping: ROMEO-like MST unwrapping and Laplacian unwrapping."""

from __future__ import annotations

import numpy as np
import pytest

from metaqsm.phase import unwrap, unwrap_laplacian, unwrap_romeo

TWO_PI = 2 * np.pi
SHAPE = (48, 48, 40)
VSZ = (1.0, 1.0, 1.5)


def wrap(x):
    return np.angle(np.exp(1j * x))


@pytest.fixture(scope="module")
def smooth():
    """A smooth phase with many wraps (about 60 rad peak to peak), and a spherical mask."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    true = 20 * x + 15 * y ** 2 - 10 * x * z + 8 * np.sin(3 * y)
    mask = x ** 2 + y ** 2 + z ** 2 < 0.9
    return true, wrap(true), mask


def multiples(out, phase):
    """(out - phase) / 2 pi and its distance to the nearest integer."""
    k = (out.astype(np.float64) - phase) / TWO_PI
    return k, np.abs(k - np.rint(k))


def test_romeo_exact_on_smooth_phase(smooth):
    true, wrapped, mask = smooth
    assert np.ptp(true[mask]) > 40
    out = unwrap_romeo(wrapped, mask=mask)
    assert out.dtype == np.float32 and out.shape == wrapped.shape
    k, frac = multiples(out, wrapped)
    assert frac.max() < 1e-4  # exact multiples of 2 pi everywhere
    d = (out - true)[mask] / TWO_PI  # the same global multiple of 2 pi everywhere
    print(f"romeo: deviation from truth in units of 2 pi: {d.min():.2e} .. {d.max():.2e}")
    assert np.ptp(d) < 1e-4 and abs(d[0] - np.rint(d[0])) < 1e-4
    assert np.array_equal(out[~mask], wrapped[~mask].astype(np.float32))  # unchanged outside


def test_romeo_without_mask_and_with_noise(smooth):
    true, _, _ = smooth
    rng = np.random.default_rng(1)
    noisy = true + 0.3 * rng.standard_normal(true.shape)
    mag = np.ones(true.shape) + 0.1 * rng.random(true.shape)
    out = unwrap_romeo(wrap(noisy), magnitude=mag)  # mask None: the whole volume
    k, frac = multiples(out, wrap(noisy))
    assert frac.max() < 1e-4
    d = np.rint((out - noisy) / TWO_PI)
    wrong = np.mean(d != np.median(d))
    print(f"romeo with noise: fraction of voxels off by 2 pi: {wrong:.2e}")
    assert wrong < 1e-3


def test_romeo_separate_components(smooth):
    """Two disconnected regions are unwrapped each on its own, each exact."""
    true, wrapped, _ = smooth
    mask = np.zeros(SHAPE, bool)
    mask[2:20, 5:40, 5:35] = True
    mask[26:46, 5:40, 5:35] = True
    out = unwrap_romeo(wrapped, mask=mask)
    for sl in (np.s_[2:20, 5:40, 5:35], np.s_[26:46, 5:40, 5:35]):
        d = (out[sl] - true[sl]) / TWO_PI
        assert np.ptp(d) < 1e-4


def test_romeo_multi_echo_with_phase_offset(smooth):
    """Echoes with a phase offset: the individual mode unwraps all echoes exactly and
    consistently (each echo's unwrapped minus true phase is one multiple of 2 pi)."""
    true, _, mask = smooth
    tes = np.array([4.0, 8.0, 12.0]) * 1e-3
    x = np.linspace(-1, 1, SHAPE[0])[:, None, None]
    offset = 2.5 * np.cos(2 * x) * np.ones(SHAPE)
    phases = np.stack([offset + true * te / tes[-1] for te in tes], -1)  # last echo: true
    out = unwrap_romeo(wrap(phases), mask=mask, echo_times=tes)
    assert out.shape == phases.shape
    for e in range(3):
        d = (out[..., e] - phases[..., e])[mask] / TWO_PI
        assert np.ptp(d) < 1e-4
    # the template mode (ROMEO's default) is exact when there is no phase offset
    phases0 = phases - offset[..., None]
    out0 = unwrap_romeo(wrap(phases0), mask=mask, echo_times=tes, individual=False)
    for e in range(3):
        d = (out0[..., e] - phases0[..., e])[mask] / TWO_PI
        assert np.ptp(d) < 1e-4


def test_laplacian_matches_up_to_a_smooth_term(smooth):
    true, wrapped, mask = smooth
    for m in (None, mask):
        out = unwrap_laplacian(wrapped, voxel_size=VSZ, mask=m)
        sel = np.ones(SHAPE, bool) if m is None else m
        d = (out - true)[sel]
        dev = d - np.median(d)
        print(f"laplacian (mask {m is not None}): max deviation from truth + constant {np.abs(dev).max():.2e}")
        assert np.abs(dev).max() < 1e-3
    # with strong noise some neighbour differences exceed pi; the Laplacian result then departs
    # from the noisy phase by a smooth term (no 2 pi steps): smoothing explains most of it
    rng = np.random.default_rng(2)
    noisy = true + 1.0 * rng.standard_normal(SHAPE)
    out = unwrap_laplacian(wrap(noisy), voxel_size=VSZ, mask=mask)
    d = np.where(mask, out - noisy, 0.0)
    d[mask] -= np.median(d[mask])
    from scipy.ndimage import gaussian_filter

    inner = np.zeros(SHAPE, bool)
    inner[6:-6, 6:-6, 6:-6] = True
    inner &= mask
    rough = (d - gaussian_filter(d, 1.5))[inner]
    print(f"laplacian with noise: rms deviation from the noisy phase {np.std(d[inner]):.3f}, "
          f"its rough part {np.std(rough):.3f}")
    assert np.std(rough) < 0.5 * np.std(d[inner])


def test_laplacian_snap_gives_exact_multiples(smooth):
    true, wrapped, mask = smooth
    out = unwrap_laplacian(wrapped, voxel_size=VSZ, mask=mask, snap=True)
    _, frac = multiples(out, wrapped)
    assert frac.max() < 1e-4
    d = (out - true)[mask] / TWO_PI
    assert np.ptp(d) < 1e-4


def test_unwrap_dispatch(smooth):
    true, wrapped, mask = smooth
    a = unwrap(wrapped, method="romeo", mask=mask)
    np.testing.assert_array_equal(a, unwrap_romeo(wrapped, mask=mask))
    b = unwrap(wrapped, method="laplacian", voxel_size=VSZ, mask=mask)
    np.testing.assert_array_equal(b, unwrap_laplacian(wrapped, voxel_size=VSZ, mask=mask))
    with pytest.raises(ValueError, match="method must be one of 'romeo', 'laplacian'"):
        unwrap(wrapped, method="prelude")
    with pytest.raises(ValueError, match="voxel_size .mm. is required"):
        unwrap(wrapped, method="laplacian")


def test_errors(smooth):
    _, wrapped, mask = smooth
    with pytest.raises(ValueError, match="magnitude must have the shape of phase"):
        unwrap_romeo(wrapped, magnitude=np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match="echo_times has 1 values but the phase has 2 echoes"):
        unwrap_romeo(np.stack([wrapped] * 2, -1), echo_times=[0.01])
    with pytest.raises(ValueError, match="echo_times are required for the template mode"):
        unwrap_romeo(np.stack([wrapped] * 2, -1), individual=False)
    with pytest.raises(ValueError, match="phase must be a 3D or 4D volume"):
        unwrap_romeo(wrapped[0])
    with pytest.raises(ValueError, match="mask must have the shape"):
        unwrap_romeo(wrapped, mask=mask[1:])
    with pytest.raises(ValueError, match="phase contains 1 NaN"):
        bad = wrapped.copy()
        bad[0, 0, 0] = np.nan
        unwrap_laplacian(bad, voxel_size=VSZ)


def _romeo_small(shared_data):
    import nibabel as nib

    d = shared_data / "romeo-small"
    if not (d / "phase.nii.gz").exists():
        pytest.skip(f"{d} has no phase.nii.gz")
    img = nib.load(str(d / "mag.nii.gz"))
    mag = np.asarray(img.dataobj, np.float32)
    phase = np.asarray(nib.load(str(d / "phase.nii.gz")).dataobj, np.float32)
    phase = phase * np.pi / np.abs(phase).max()
    return mag, phase, np.array(img.header.get_zooms()[:3], float)


def test_romeo_on_real_data(shared_data):
    """Real 3-echo data (TE 4, 8, 12 ms, 3 T): no 2 pi jumps between neighbours inside the
    brain, and the unwrapped phase is close to linear in echo time.

    The crop lies entirely inside the brain, so the mask is every voxel with signal (root sum
    of squares above half its median). The only neighbour pairs that differ by more than pi
    are in the last echo between the darkest voxels (veins: the lowest 5 % of the magnitude),
    where the phase is both noisy and steep; elsewhere there are none.
    """
    mag, phase, vsz = _romeo_small(shared_data)
    tes = np.array([4.0, 8.0, 12.0]) * 1e-3
    rss = np.sqrt(np.sum(mag.astype(np.float64) ** 2, -1))
    mask = rss > 0.5 * np.median(rss)
    bright = rss > np.percentile(rss, 5)
    out = unwrap_romeo(phase, magnitude=mag, mask=mask, echo_times=tes)
    _, frac = multiples(out, phase)
    assert frac.max() < 1e-4
    jumps = jumps_bright = pairs = 0
    for e in range(3):
        for axis in range(3):
            n = mask.shape[axis]
            both = np.take(mask, range(n - 1), axis) & np.take(mask, range(1, n), axis)
            lit = np.take(bright, range(n - 1), axis) & np.take(bright, range(1, n), axis)
            big = np.abs(np.diff(out[..., e], axis=axis)) > np.pi
            jumps += int(np.count_nonzero(big & both))
            jumps_bright += int(np.count_nonzero(big & both & lit))
            pairs += int(both.sum())
    u = out[mask].astype(np.float64)  # (N, 3)
    A = np.stack([np.ones(3), tes], 1)
    coef = np.linalg.lstsq(A, u.T, rcond=None)[0]
    res = u - (A @ coef).T
    rms = float(np.sqrt(np.mean(res ** 2)))
    print(f"romeo-small: {jumps} of {pairs} neighbour pairs differ by more than pi "
          f"({jumps_bright} outside the darkest 5 %); rms residual of the linear fit in echo "
          f"time {rms:.4f} rad; voxels with |residual| > 1 rad: "
          f"{int(np.count_nonzero(np.abs(res).max(1) > 1))} of {u.shape[0]}")
    assert jumps <= 1e-4 * pairs and jumps_bright == 0
    assert rms < 0.1
    assert np.count_nonzero(np.abs(res).max(1) > np.pi) == 0  # no echo off by 2 pi


def test_masked_laplacians_are_the_graph_laplacian_of_the_mask():
    """The Laplacians of the unwrapping, built on the core's periodic finite differences with
    pair weights, equal the zero-flux graph Laplacian written out over neighbour pairs: the
    wrapped one (right-hand side) and the plain one (the CG operator)."""
    from metaqsm._fd import div_weighted_grad
    from metaqsm.phase._unwrap import _pair_weights, _wrapped_laplacian

    rng = np.random.default_rng(0)
    shape, vsz = (9, 8, 7), np.array([0.8, 1.0, 1.5])
    phase = rng.uniform(-np.pi, np.pi, shape)
    mask = rng.random(shape) < 0.7

    def graph_laplacian(u, m, wrapped):
        out = np.zeros(shape)
        for axis, d in enumerate(vsz):
            lo = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
            hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
            diff = u[hi] - u[lo]
            diff = wrap(diff) if wrapped else diff
            diff = diff * (m[hi] & m[lo]) / d ** 2
            out[lo] += diff
            out[hi] -= diff
        return out

    w = _pair_weights(mask, vsz)
    np.testing.assert_allclose(_wrapped_laplacian(phase, vsz, w),
                               graph_laplacian(phase, mask, True), atol=1e-12)
    everywhere = np.ones(shape, bool)
    np.testing.assert_allclose(_wrapped_laplacian(phase, vsz),
                               graph_laplacian(phase, everywhere, True), atol=1e-12)
    np.testing.assert_allclose(div_weighted_grad(phase, w, out=np.empty(shape)),
                               graph_laplacian(phase, mask, False), atol=1e-12)
