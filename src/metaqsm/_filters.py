"""Spatial filters restricted to a mask: smoothing that never mixes in the zeros outside it."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

__all__ = ["masked_lowpass"]


def masked_lowpass(x, mask, sigma):
    """Gaussian low-pass of ``x`` over ``mask`` by normalised convolution.

    ``G * (x m) / G * m`` inside the mask, 0 outside: near the mask's edge the average is taken
    over the voxels inside only, so a constant map stays constant up to the edge (a plain
    Gaussian would pull it towards the zeros outside).

    Parameters
    ----------
    x : (X, Y, Z) array
    mask : (X, Y, Z) bool array
    sigma : float or 3 floats
        Standard deviation of the Gaussian in voxels (per axis).

    Returns
    -------
    (X, Y, Z) float32 array.
    """
    m = np.asarray(mask, bool)
    num = ndi.gaussian_filter(np.multiply(x, m, dtype=np.float32), sigma)
    den = ndi.gaussian_filter(m.astype(np.float32), sigma)
    num /= np.maximum(den, 1e-6)
    return np.multiply(num, m, dtype=np.float32)
