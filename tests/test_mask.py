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


# ----------------------------------------------------------------------------- erosions that fit
def _ball(radius_mm, vsz, half_extent_mm=None):
    vsz = np.asarray(vsz, float)
    half = radius_mm + 4 * vsz.max() if half_extent_mm is None else half_extent_mm
    axes = [np.arange(-np.floor(half / d), np.floor(half / d) + 1) * d for d in vsz]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    return X ** 2 + Y ** 2 + Z ** 2 <= radius_mm ** 2


@pytest.mark.parametrize("vsz", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_adapt_radius_keeps_half_of_a_ball(vsz):
    """Eroding a ball of radius R by r keeps ((R - r) / R)^3 of it: half at
    r = R (1 - 0.5^(1/3)) = 4.13 mm for R = 20 mm."""
    from metaqsm.mask import adapt_radius, mask_depth

    ball = _ball(20.0, vsz)
    depth = mask_depth(ball, voxel_size=vsz)
    assert abs(depth.max() - 20.0) <= max(vsz) and np.all(depth[~ball] == 0)
    r, kept, kept_wanted = adapt_radius(ball, voxel_size=vsz, radius_mm=6.0)
    expected = 20.0 * (1 - 0.5 ** (1 / 3))
    print(f"adapt_radius {vsz}: {r:.2f} mm (ball: {expected:.2f} mm), keeps {kept:.3f}; "
          f"6 mm keeps {kept_wanted:.3f} ((14/20)^3 = {0.7 ** 3:.3f})")
    assert abs(r - expected) < max(vsz) and kept >= 0.5
    assert abs(kept_wanted - 0.7 ** 3) < 0.05
    # what it reports is what the erosion keeps
    er = erode_mask(ball, voxel_size=vsz, radius_mm=r)
    assert er.sum() / ball.sum() == pytest.approx(kept)
    # a radius that keeps enough is used as is; the floor wins over the fraction
    assert adapt_radius(ball, voxel_size=vsz, radius_mm=2.0)[0] == 2.0
    assert adapt_radius(ball, voxel_size=vsz, radius_mm=6.0, min_radius_mm=5.0)[0] == 5.0
    with pytest.raises(ValueError, match="keep must be a fraction"):
        adapt_radius(ball, voxel_size=vsz, radius_mm=6.0, keep=2.0)


def test_check_eroded_refuses_empty_and_warns_on_loss():
    from metaqsm.mask import MaskWarning, check_eroded

    slab = np.zeros((20, 20, 6), bool)
    slab[2:18, 2:18, 2:3] = True  # one slice
    with pytest.raises(ValueError, match=r"erosion X is empty \(its deepest voxel lies 2 mm inside "
                                         r"it and it is 1 slice of 2 mm thick along axis 2\); do Y"):
        check_eroded(slab, np.zeros_like(slab), voxel_size=(1, 1, 2), what="erosion X",
                     hint="do Y")
    part = slab.copy()
    part[2:18, 2:7] = False  # keeps 11 of 16 rows
    assert check_eroded(slab, part, voxel_size=(1, 1, 2), what="e") == pytest.approx(11 / 16)
    part[2:18, 2:12] = False  # keeps 6 of 16
    with pytest.warns(MaskWarning, match=r"e keeps only 37.5 % of the mask \(96 of 256 voxels\)"):
        check_eroded(slab, part, voxel_size=(1, 1, 2), what="e")


def test_brain_mask_erosion_never_empties_silently(head):
    from metaqsm.mask import MaskWarning

    mag, _ = head
    with pytest.raises(ValueError, match="the brain mask eroded by erode_mm 60 mm is empty.*use a "
                                         "smaller erode_mm"):
        brain_mask(mag, voxel_size=VSZ, erode_mm=60)
    with pytest.warns(MaskWarning, match="eroded by erode_mm 12 mm keeps only"):
        brain_mask(mag, voxel_size=VSZ, erode_mm=12)


def test_check_thickness_warns_on_a_slab():
    import warnings

    from metaqsm.mask import MaskWarning, check_thickness

    ball = _ball(20.0, (1, 1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extent = check_thickness(ball, voxel_size=(1, 1, 2))
    np.testing.assert_allclose(extent, [41, 41, 42])
    slab = np.zeros_like(ball)
    slab[..., 10:12] = ball[..., 10:12]
    with pytest.warns(MaskWarning, match=r"only 2 slices \(4 mm\) thick along axis 2"):
        check_thickness(slab, voxel_size=(1, 1, 2))
