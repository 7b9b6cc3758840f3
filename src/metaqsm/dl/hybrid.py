"""Meta-QSM 2 hybrid: the unrolled network's map for coarse structure, a classical map's detail.

Measured on realistic heads (``docs/networks-unrolled.md``, "The hybrid"), the unrolled network and
the classical inversions fail in different frequency bands: the network gets the smooth part
right (the whole-brain level and the slow variations that background residue, edge noise and
non-dipolar fields spoil for a classical inversion) but blurs the finest detail, a
posterior-mean estimator's shrinkage; MEDI and TV keep that detail but carry the smooth errors.
Two ways to take each where it is good:

* ``meta-hybrid`` merges two finished maps, ``chi = L(chi_net) + (chi_detail - L(chi_detail))``,
  with ``L`` a Gaussian low-pass over the mask (:func:`metaqsm._filters.masked_lowpass`);
* ``meta-tv`` solves one problem: weighted TV with the network's map as a Gaussian prior on the
  low spatial frequencies (:func:`metaqsm.inversion.tv.prior_tv`), so the detail is fitted to
  the data given the network's coarse structure rather than added to it.
"""

from __future__ import annotations

import numpy as np

from .._filters import masked_lowpass
from .._validate import as_field_inputs, as_positive, as_volume, warn
from ..methods import INVERSIONS

__all__ = ["DETAIL_METHODS", "invert_meta_hybrid", "invert_meta_tv", "merge_bands"]

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


def invert_meta_tv(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), magnitude=None, lam=None,
                   prior_weight=3.0, prior_sigma=6.0, weights=None, device="cpu", tile=None,
                   progress=False):
    """Weighted TV with the Meta-QSM 2 network's map as the prior of its coarse structure.

    Runs :func:`metaqsm.dl.unrolled.invert_meta_unrolled`, then
    :func:`metaqsm.inversion.tv.prior_tv` with the network's map as the prior: minimises
    ``1/2 ||D chi - f||^2 + lam ||M_G grad chi||_1 + prior_weight/2 ||g * (chi - chi_net)||^2``
    (``M_G``: the magnitude's edges, as :func:`metaqsm.inversion.tv.wtv`; ``g``: a Gaussian of
    ``prior_sigma`` mm). The network supplies what the dipole model and TV get wrong on real
    data (the whole-brain level and slow variations spoilt by background residue, edge noise
    and non-dipolar fields); TV with the magnitude's edges supplies the detail the network
    blurs, fitted to the data.

    Parameters
    ----------
    field, mask, voxel_size, b0_dir
        As every inversion: local field (ppm), brain mask, voxel size (mm), B0 direction in voxel
        coordinates (default: the third axis).
    magnitude : (X, Y, Z) or (X, Y, Z, echoes) array, optional
        Magnitude image for the TV's edge weights. Without it the TV is unweighted (and its
        default ``lam`` TV's), with a warning: the realistic heads score better with it.
    lam : float or None
        TV weight in ppm mm. Default 3e-3 with a magnitude, 1e-3 without.
    prior_weight : float
        Weight of the network's prior. Default 3.
    prior_sigma : float
        Scale below which the network is trusted: the Gaussian's standard deviation, mm.
        Default 6. ``prior_weight`` and ``prior_sigma`` were chosen on the validation heads
        (seed 1: 2 mm, 1 mm and 3.2 mm slices), not on the realistic suite.
    weights, device, tile
        The network's checkpoint (default: the shipped ``meta-unrolled``), device and tiling,
        as :func:`invert_meta_hybrid`.
    progress : bool
        Progress bar of the TV iterations. Default False.

    Returns
    -------
    chi : (X, Y, Z) float32 array
        :func:`metaqsm.inversion.tv.prior_tv`'s map with the network's as the prior (ppm), zero
        outside the mask.

    Raises
    ------
    ValueError
        A ``magnitude`` not on the field's grid, non-positive ``lam``, ``prior_weight`` or
        ``prior_sigma`` (all before the network runs); as the network for its inputs.
    """
    from ..inversion._common import check_magnitude
    from ..inversion.tv import prior_tv
    from .unrolled import invert_meta_unrolled

    field, m, voxel_size, b0_dir = as_field_inputs(field, mask, voxel_size, b0_dir)
    if magnitude is not None:
        magnitude = check_magnitude(magnitude, field.shape)
    if lam is not None:
        lam = as_positive(lam, "lam")
    prior_weight = as_positive(prior_weight, "prior_weight")
    prior_sigma = as_positive(prior_sigma, "prior_sigma")
    if magnitude is None:
        warn("meta-tv without a magnitude: its TV is unweighted (lambda 1e-3), 2-4 points of RMSE "
             "worse on the validation heads; give the magnitude (--magnitude) for the edge "
             "weights")
    geometry = {"voxel_size": voxel_size, "b0_dir": b0_dir}
    prior = invert_meta_unrolled(field, m, weights=weights, device=device, tile=tile, **geometry)
    return prior_tv(field, m, prior, magnitude=magnitude, lam=lam, prior_weight=prior_weight,
                    prior_sigma=prior_sigma, progress=progress, **geometry)
