"""Private helpers shared by the background removal methods: crop to the mask, pad to a fast
FFT grid, and erode a mask with the spherical kernel."""

from __future__ import annotations

import numpy as np

from .._fft import irfft, padded_shape
from .._validate import as_field_inputs


class CropGrid:
    """The bounding box of ``mask`` plus ``margin`` voxels each side, padded to fast FFT sizes.

    Working on this grid instead of the full volume saves time (the brain fills a fraction of
    the field of view) and the margin keeps circular convolutions from wrapping around.
    """

    def __init__(self, mask, margin):
        self.full_shape = mask.shape
        idx = np.nonzero(mask)
        lo = [int(i.min()) for i in idx]
        hi = [int(i.max()) + 1 for i in idx]
        margin = np.broadcast_to(np.asarray(margin, int), (3,))
        self.src = tuple(slice(a, b) for a, b in zip(lo, hi))
        size = [b - a for a, b in zip(lo, hi)]
        self.shape = padded_shape(size, 2 * margin)
        self.dst = tuple(slice(int(m), int(m) + n) for m, n in zip(margin, size))

    def to_grid(self, x, dtype=np.float32):
        out = np.zeros(self.shape, dtype=dtype)
        out[self.dst] = x[self.src]
        return out

    def from_grid(self, y, dtype=np.float32):
        out = np.zeros(self.full_shape, dtype=dtype)
        out[self.src] = y[self.dst]
        return out


def check_inputs(field, mask, voxel_size, b0_dir):
    """Validate the common arguments; returns (field float32, mask bool, vsz, b0)."""
    return as_field_inputs(field, mask, voxel_size, b0_dir)


def sphere_count(voxel_size, radius):
    """Number of voxel centres within ``radius`` mm of a voxel centre (the origin included)."""
    vsz = np.asarray(voxel_size, float)
    n = np.floor(radius / vsz + 1e-9).astype(int)
    axes = [np.arange(-k, k + 1) * d for k, d in zip(n, vsz)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij", sparse=True)
    return int(np.count_nonzero(X * X + Y * Y + Z * Z <= radius * radius + 1e-9))


def smv_erode(mask_grid_fft, S, shape, count):
    """Voxels whose whole sphere lies inside the mask: the SMV of the mask equals 1.

    ``mask_grid_fft`` is the rfft of the 0/1 mask, ``S`` the SMV spectrum, ``count`` the number
    of voxels in the sphere (a voxel missing from the sphere lowers the mean by 1/count).
    """
    m = irfft(mask_grid_fft * S, shape)
    return m > 1.0 - 0.5 / count


__all__ = ["CropGrid", "check_inputs", "sphere_count", "smv_erode"]
