"""Susceptibility referencing: subtract the mean over a reference region.

A dipole inversion determines susceptibility up to a constant (the field's k = 0 term), so
values are reported relative to a region: the whole brain (the mean over the mask, the
default), ventricular CSF (as MEDI+0; the mask comes from
:func:`metaqsm.inversion.csf.csf_mask`), or a region the user gives. The value subtracted is
returned so that it can be recorded beside the map, as the QSM consensus asks the reference
region to be reported.

Public API
----------
``reference_chi(chi, mask, *, region="brain", reference_mask=None, voxel_size=None,
r2star=None, magnitude=None)`` -> ``(referenced chi (X, Y, Z) float32, reference (ppm))``

References
----------
Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: Morphology enabled dipole inversion
with automatic uniform cerebrospinal fluid zero reference for quantitative susceptibility
mapping. Magn Reson Med 2018;79:2795-2803.
QSM Consensus Organization Committee, Bilgic B, Costagli M, et al. Recommended implementation
of quantitative susceptibility mapping for clinical research in the brain: a consensus of the
ISMRM electro-magnetic tissue properties study group. Magn Reson Med 2024;91:1834-1862.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_mask, as_volume

__all__ = ["REFERENCE_REGIONS", "reference_chi"]

REFERENCE_REGIONS = ("brain", "csf", "mask")
"""Names accepted by ``reference_chi(region=...)``."""


def reference_chi(chi, mask, *, region="brain", reference_mask=None, voxel_size=None,
                  r2star=None, magnitude=None):
    """Susceptibility relative to the mean over a reference region.

    Parameters
    ----------
    chi : (X, Y, Z) array
        Susceptibility in ppm.
    mask : (X, Y, Z) array
        Brain mask: the referenced map is ``chi - reference`` inside it, 0 outside.
    region : {"brain", "csf", "mask"}
        ``"brain"`` (default): the mean over ``mask``. ``"csf"``: the mean over ventricular
        CSF found by :func:`metaqsm.inversion.csf.csf_mask` (R2* below 5 1/s connected to the
        brain centre with ``r2star``, else the bright class of ``magnitude``; needs
        ``voxel_size``). ``"mask"``: the mean over ``reference_mask`` within ``mask``.
    reference_mask : (X, Y, Z) array, optional
        The reference region for ``region="mask"``.
    voxel_size : 3 floats, optional
        Voxel size in mm; required for ``region="csf"``.
    r2star : (X, Y, Z) array, optional
        R2* in 1/s (e.g. :func:`metaqsm.maps.r2star_map`), for ``region="csf"``.
    magnitude : (X, Y, Z) or (X, Y, Z, E) array, optional
        Magnitude, for ``region="csf"`` without ``r2star``.

    Returns
    -------
    chi_ref : (X, Y, Z) float32
        ``chi - reference`` in ppm inside ``mask``, 0 outside.
    reference : float
        The subtracted mean in ppm (for a sidecar).

    Raises
    ------
    ValueError
        An unknown ``region``; ``region="mask"`` without ``reference_mask`` or
        ``reference_mask`` given with another region; ``region="csf"`` without
        ``voxel_size`` or without ``r2star`` and ``magnitude``; a reference region with no
        voxel inside ``mask``; maps of another shape than ``chi``.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.full((4, 4, 4), 0.1, np.float32)
    >>> out, ref = reference_chi(chi, np.ones((4, 4, 4), bool))
    >>> round(ref, 6), float(abs(out).max())
    (0.1, 0.0)
    """
    x = as_volume(chi, "chi")
    m = as_mask(mask, x.shape)
    if region not in REFERENCE_REGIONS:
        raise ValueError(f"region must be one of {', '.join(map(repr, REFERENCE_REGIONS))}, "
                         f"got {region!r}")
    if region == "mask":
        if reference_mask is None:
            raise ValueError("reference_mask is required for region='mask'")
        ref = as_mask(reference_mask, x.shape, "reference_mask") & m
    elif reference_mask is not None:
        raise ValueError(f"reference_mask is only used with region='mask', got region={region!r}")
    elif region == "csf":
        if voxel_size is None:
            raise ValueError("voxel_size (mm) is required for region='csf'")
        if r2star is None and magnitude is None:
            raise ValueError("region='csf' needs r2star (1/s) or magnitude to find the CSF")
        from ..inversion.csf import csf_mask

        ref = csf_mask(m, voxel_size=voxel_size, r2star=r2star, magnitude=magnitude) & m
    else:
        ref = m
    if not ref.any():
        raise ValueError(f"the reference region ({region}) has no voxel inside mask; give "
                         "reference_mask or use region='brain'")
    value = float(np.mean(x[ref], dtype=np.float64))
    return np.where(m, x - np.float32(value), 0.0).astype(np.float32), value
