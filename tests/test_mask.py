"""Brain masking and mask erosion."""

from __future__ import annotations

import numpy as np
import pytest

from metaqsm.mask import brain_mask, dilate_mask, erode_mask
from metaqsm.simulate.phantoms import LABELS, brain_phantom

VSZ = (1.0, 1.0, 1.5)


def dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def head():
    """Magnitude of a head: brain (tissue contrast, dark ventricles and veins), a dark skull
    gap, a bright scalp shell, Rician noise; and the phantom's brain mask."""
    ph = brain_phantom((64, 64, 48), voxel_size=VSZ, rng=0)
    rng = np.random.default_rng(3)
    mag = np.zeros(ph.mask.shape)
    mag[ph.mask] = 1.0
    mag[ph.labels == LABELS["white_matter"]] = 0.85
    mag[ph.labels == LABELS["csf"]] = 0.4
    mag[ph.labels == LABELS["vein"]] = 0.2
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, endpoint=False) + 1.0 / n for n in ph.mask.shape],
                          indexing="ij")
    r = np.sqrt((x / 0.78) ** 2 + (y / 0.85) ** 2 + (z / 0.8) ** 2)
    mag[(r > 1.12) & (r < 1.2)] = 0.9  # scalp
    noisy = np.abs(mag + 0.08 * (rng.standard_normal(mag.shape) + 1j * rng.standard_normal(mag.shape)))
    return noisy, ph.mask


def test_brain_mask_on_phantom(head):
    mag, truth = head
    m = brain_mask(mag, voxel_size=VSZ)
    assert m.dtype == bool and m.shape == truth.shape
    d = dice(m, truth)
    print(f"brain_mask: Dice {d:.4f} ({int(m.sum())} vs {int(truth.sum())} voxels)")
    assert d > 0.9
    # 4D input: the root sum of squares of the echoes, or one echo
    echoes = np.stack([mag * np.exp(-t / 0.04) for t in (0.01, 0.02, 0.03)], -1)
    assert dice(brain_mask(echoes, voxel_size=VSZ), truth) > 0.9
    assert dice(brain_mask(echoes, voxel_size=VSZ, echo=0), truth) > 0.9


def test_brain_mask_erosion_and_options(head):
    mag, truth = head
    m = brain_mask(mag, voxel_size=VSZ)
    me = brain_mask(mag, voxel_size=VSZ, erode_mm=3.0)
    np.testing.assert_array_equal(me, erode_mask(m, voxel_size=VSZ, radius_mm=3.0))
    no_fill = brain_mask(mag, voxel_size=VSZ, fill_holes=False, opening_mm=0, closing_mm=0)
    assert no_fill.sum() <= m.sum()
    loose = brain_mask(mag, voxel_size=VSZ, threshold_scale=0.7)
    assert loose.sum() >= m.sum()


def test_erode_mask_is_exact_for_anisotropic_voxels():
    """Eroding a ball of radius R by r gives the ball of radius R - r."""
    shape, vsz = (48, 48, 32), (1.0, 1.0, 1.5)
    axes = [(np.arange(n) - n / 2 + 0.5) * d for n, d in zip(shape, vsz)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    rr = np.sqrt(X ** 2 + Y ** 2 + Z ** 2)
    ball = rr <= 18.0
    er = erode_mask(ball, voxel_size=vsz, radius_mm=5.0)
    expected = rr <= 13.0
    mismatch = np.count_nonzero(er != expected)
    print(f"erode_mask: {mismatch} voxels differ from the ball of radius R - r ({int(expected.sum())})")
    assert dice(er, expected) > 0.97 and not np.any(er & ~ball)
    dl = dilate_mask(expected, voxel_size=vsz, radius_mm=5.0)
    assert dice(dl, ball) > 0.97
    assert np.array_equal(erode_mask(ball, voxel_size=vsz, radius_mm=0), ball)
    # a mask touching the border is eroded from the border too
    full = np.ones((10, 10, 10), bool)
    assert erode_mask(full, voxel_size=1, radius_mm=1.0).sum() == 8 ** 3


def test_errors(head):
    mag, _ = head
    with pytest.raises(ValueError, match="magnitude must be a 3D or 4D volume"):
        brain_mask(mag[0], voxel_size=VSZ)
    with pytest.raises(ValueError, match="magnitude has no contrast"):
        brain_mask(np.ones((8, 8, 8)), voxel_size=VSZ)
    with pytest.raises(ValueError, match="method must be 'otsu'"):
        brain_mask(mag, voxel_size=VSZ, method="bet")
    with pytest.raises(ValueError, match="echo must be 'rss' or an echo index in 0..1"):
        brain_mask(np.stack([mag, mag], -1), voxel_size=VSZ, echo=5)
    with pytest.raises(ValueError, match="erode_mm must be non-negative"):
        brain_mask(mag, voxel_size=VSZ, erode_mm=-1)
    with pytest.raises(ValueError, match="voxel_size must have 3 values"):
        brain_mask(mag, voxel_size=(1, 1))
    with pytest.raises(ValueError, match="radius_mm must be non-negative"):
        erode_mask(mag > 0.5, voxel_size=VSZ, radius_mm=-2)
    with pytest.raises(ValueError, match="mask must be a 3D volume"):
        erode_mask(np.ones((4, 4)), voxel_size=VSZ, radius_mm=1)
