"""Maps beside susceptibility: R2*/T2*, susceptibility-weighted images, referenced chi.

Public API
----------
r2star_map(magnitude, echo_times, mask=None, *, method="arlo", r2star_max=1000.0,
           return_s0=False)
    R2* in 1/s from multi-echo magnitude (X, Y, Z, E), echo times in seconds; methods
    "arlo" (Pei et al. 2015), "loglinear", "nonlinear". Optionally also S0.
t2star_from_r2star(r2star, mask=None, *, t2star_max=1000.0)
    T2* in ms.
swi(magnitude, phase, mask=None, *, voxel_size, echo_times=None, echo=None,
    reference_te=None, filter_mm=8.0, filter_axes=(0, 1), power=4, vein_phase="positive",
    return_phase=False)
    Susceptibility-weighted image (Haacke et al. 2004): homodyne high-pass phase, phase mask
    to the power ``power``, times the magnitude; multi-echo input combined over echoes.
minimum_intensity_projection(image, *, voxel_size, slab_mm=8.0, axis=2)
    Sliding minimum-intensity projection over slabs of ``slab_mm``.
reference_chi(chi, mask, *, region="brain", reference_mask=None, voxel_size=None,
              r2star=None, magnitude=None)
    ``(chi - reference, reference)``: susceptibility referenced to the mean over the whole
    brain, the ventricular CSF (:func:`metaqsm.inversion.csf.csf_mask`) or a user mask.

Nothing here touches files or imports torch; see docs/maps.md for formulae, defaults and the
measured accuracy.
"""

from .r2star import R2STAR_METHODS, r2star_map, t2star_from_r2star
from .reference import REFERENCE_REGIONS, reference_chi
from .swi import minimum_intensity_projection, swi

__all__ = ["R2STAR_METHODS", "REFERENCE_REGIONS", "r2star_map", "t2star_from_r2star", "swi",
           "minimum_intensity_projection", "reference_chi"]
