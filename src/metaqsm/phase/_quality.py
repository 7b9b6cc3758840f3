"""Where the echo fit's field can be trusted: the part of a brain mask with signal.

A brain mask from skull stripping (or the user's) often reaches a millimetre or two into the
skull, where there is no signal: the fitted field there is noise of several ppm. Background
removal spreads it into the brain (RESHARP's deconvolution, PDF's and LBV's boundary
conditions), and every inversion then fails on smooth blobs of 0.1-0.3 ppm next to the mask edge.
The echo fit's own noise map (:class:`metaqsm.phase.EchoFit` ``noise``, the field's standard
deviation from the magnitudes and echo times) marks those voxels: it grows as 1 / magnitude.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .._validate import as_mask, as_positive, as_volume

__all__ = ["RELIABLE_NOISE_FACTOR", "reliable_mask"]

#: The default limit of :func:`reliable_mask`: voxels whose field noise exceeds this multiple of
#: the median noise in the mask are unreliable (a magnitude below about a fifth of the brain's).
RELIABLE_NOISE_FACTOR = 5.0


def reliable_mask(mask, noise, *, factor=RELIABLE_NOISE_FACTOR):
    """The mask without the voxels, reached from its edge, where the fitted field is noise.

    Voxels whose field noise exceeds ``factor`` times the median noise in ``mask`` are dropped;
    holes this leaves inside the brain are filled again (an isolated dark voxel inside, a vein or
    a haemorrhage, carries a field the inversion needs) and the largest connected part is kept.
    So only the unreliable rim is removed, as a second-pass mask from phase quality does
    (QSMxT's two-pass masking thresholds a phase-quality map in the same spirit).

    Parameters
    ----------
    mask : (X, Y, Z) bool
        The brain mask the field was fitted in.
    noise : (X, Y, Z) array
        The field's noise standard deviation (any unit; ppm from the echo fit).
    factor : float
        Multiple of the median noise in ``mask`` above which a voxel is unreliable (> 1).

    Returns
    -------
    reliable : (X, Y, Z) bool
        Within ``mask``.
    dropped : int
        How many voxels of ``mask`` were removed.

    Examples
    --------
    >>> m = np.zeros((12, 12, 12), bool); m[2:10, 2:10, 2:10] = True
    >>> sd = np.full(m.shape, 0.01); sd[2, :, :] = 1.0    # a rim slice without signal
    >>> r, n = reliable_mask(m, sd)
    >>> n, bool(r[2].any()), bool(r[3:10, 2:10, 2:10].all())
    (64, False, True)
    """
    mask = as_mask(mask, np.shape(mask), "mask", allow_empty=True)
    noise = as_volume(noise, "noise")
    if noise.shape != mask.shape:
        raise ValueError(f"noise must have the mask's shape {mask.shape}, got {noise.shape}")
    factor = as_positive(factor, "factor")
    if factor <= 1.0:
        raise ValueError(f"factor must be above 1 (a multiple of the median noise), got {factor}")
    if not mask.any():
        return mask.copy(), 0
    level = float(np.median(noise[mask]))
    if not np.isfinite(level) or level <= 0.0:  # a noise-free fit: nothing to judge by
        return mask.copy(), 0
    keep = mask & (noise <= factor * level)
    keep = ndi.binary_fill_holes(keep) & mask
    labels, n = ndi.label(keep)
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = labels == (1 + int(np.argmax(sizes)))
    return keep, int(mask.sum() - keep.sum())
