"""Meta-QSM 2 hybrid: the unrolled network's map for coarse structure, a classical map's detail.

Measured on realistic heads (``docs/networks-unrolled.md``, "The hybrid"), the unrolled network and
the classical inversions fail in different frequency bands: the network gets the smooth part
right (the whole-brain level and the slow variations that background residue, edge noise and
non-dipolar fields spoil for a classical inversion) but blurs the finest detail, a
posterior-mean estimator's shrinkage; MEDI and TV keep that detail but carry the smooth errors.
The hybrid takes each where it is good:

    chi = L(chi_net) + (chi_detail - L(chi_detail)),

with ``L`` a Gaussian low-pass over the mask (:func:`metaqsm._filters.masked_lowpass`).
"""

from __future__ import annotations

import numpy as np

from .._filters import masked_lowpass
from .._validate import as_field_inputs, as_positive, as_volume
from ..methods import INVERSIONS

__all__ = ["DETAIL_METHODS", "invert_meta_hybrid", "merge_bands"]

DETAIL_METHODS = INVERSIONS["meta-hybrid"].option("detail").choices
"""Classical inversions that may supply the detail: the registry's choices of ``detail``."""


def merge_bands(coarse, fine, mask, *, sigma):
    """``L(coarse) + fine - L(fine)`` inside ``mask``, 0 outside; ``L`` is the masked Gaussian
    low-pass of standard deviation ``sigma`` voxels (:func:`metaqsm._filters.masked_lowpass`).

    Merging a map with itself gives it back (inside the mask); a map that ``L`` leaves unchanged
    (a constant) comes from ``coarse`` alone, and what ``L`` removes comes from ``fine`` alone.
    """
    m = np.asarray(mask, bool)
    sigma = as_positive(sigma, "sigma")
    fine = np.asarray(fine, np.float32)
    # L is linear in the map (the mask is fixed): L(coarse) - L(fine) = L(coarse - fine)
    out = masked_lowpass(np.subtract(coarse, fine, dtype=np.float32), m, sigma)
    out += fine
    return np.multiply(out, m, dtype=np.float32)


def invert_meta_hybrid(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), magnitude=None,
                       noise_std=None, detail="medi", sigma=1.5, weights=None, device="cpu",
                       tile=None, progress=False):
    """Meta-QSM 2 below a spatial scale, a classical inversion's detail above it.

    Runs :func:`metaqsm.dl.unrolled.invert_meta_unrolled` and the classical method ``detail``
    with its defaults, then merges them with :func:`merge_bands`: the network's map low-passed
    with a Gaussian of ``sigma`` voxels, plus the classical map's residual from the same
    low-pass.

    Parameters
    ----------
    field, mask, voxel_size, b0_dir
        As every inversion: local field (ppm), brain mask, voxel size (mm), B0 direction in voxel
        coordinates (default: the third axis).
    magnitude : (X, Y, Z) array, optional
        Magnitude image, for MEDI's edge weights (``detail="medi"``; ignored by TV).
    noise_std : (X, Y, Z) array, optional
        Field noise in ppm, for MEDI's data weights (``detail="medi"``; ignored by TV).
    detail : {"medi", "tv", "wtv"}
        The classical inversion that supplies the detail. Default "medi", the best on the
        realistic suite; "tv" and "wtv" (weighted TV, needs ``magnitude``) take seconds where
        MEDI takes half a minute (256 x 256 x 64).
    sigma : float
        Standard deviation of the split's Gaussian, in voxels. Default 1.5, chosen on the
        validation heads (seed 1), not on the realistic suite.
    weights : str or Path, optional
        A ``meta-unrolled`` checkpoint. Default: the shipped model.
    device : str
        Device of the network, "cpu" (default) or "cuda".
    tile : None, "auto", int or 3 ints
        Tiling of the network (:func:`metaqsm.dl.unrolled.invert_meta_unrolled`).
    progress : bool
        Progress bar of the classical inversion (the network takes seconds). Default False.

    Returns
    -------
    chi : (X, Y, Z) float32 array, ppm: the merged map, zero outside the mask.

    Raises
    ------
    ValueError
        ``detail`` is not one of :data:`DETAIL_METHODS`, ``sigma`` is not positive, or
        ``magnitude`` / ``noise_std`` are not on the field's grid (all before any work); as the
        network and the classical method for their inputs.
    """
    from ..inversion._common import check_magnitude
    from ..methods import inversion
    from .unrolled import invert_meta_unrolled

    if detail not in DETAIL_METHODS:
        raise ValueError(f"detail must be one of {', '.join(DETAIL_METHODS)}, got {detail!r}")
    sigma = as_positive(sigma, "sigma")
    field, m, voxel_size, b0_dir = as_field_inputs(field, mask, voxel_size, b0_dir)
    if detail == "wtv" and magnitude is None:
        raise ValueError("detail 'wtv' needs magnitude (its edges set the weights)")
    for name, x in (("magnitude", magnitude), ("noise_std", noise_std)):
        if x is not None and np.shape(x)[:3] != field.shape:  # echoes may follow (magnitude)
            raise ValueError(f"{name} must have the field's shape {field.shape}, got "
                             f"{np.shape(x)}")
    if magnitude is not None:  # echoes combined as MEDI does, once for both parts
        magnitude = check_magnitude(magnitude, field.shape)
    if noise_std is not None:
        noise_std = as_volume(noise_std, "noise_std")
    geometry = {"voxel_size": voxel_size, "b0_dir": b0_dir}
    coarse = invert_meta_unrolled(field, m, weights=weights, device=device, tile=tile, **geometry)
    method = inversion(detail)
    extra = method.inputs_from({"magnitude": magnitude, "noise_std": noise_std})
    fine = method.function()(field, m, progress=progress, **extra, **geometry)
    return merge_bands(coarse, fine, m, sigma=sigma)
