"""Background field removal: total field (ppm) -> local field (ppm).

Every method has the signature ``method(field, mask, *, voxel_size, b0_dir=(0, 0, 1), ...)``
and returns ``(local_field, eroded_mask)``: the local field (float32, ppm, zero outside the
returned mask) and the boolean mask it is valid in (eroded by the spherical kernel for the
SHARP family, the mask less its outer layer for LBV, the input mask for PDF).

The methods are the entries of :data:`metaqsm.methods.BGREMOVALS`, imported lazily.

================  ========================================================================
name              method
================  ========================================================================
``"resharp"``     RESHARP, Tikhonov-regularised SHARP (Sun & Wilman 2014); the default,
                  radius 6 mm as in the Meta-QSM paper
``"vsharp"``      V-SHARP, variable-radius SHARP (Li et al. 2011; Wu et al. 2012)
``"sharp"``       SHARP (Schweser et al. 2011)
``"pdf"``         projection onto dipole fields (Liu et al. 2011)
``"lbv"``         Laplacian boundary value problem (Zhou et al. 2014), solved by
                  conjugate gradients with a fast Poisson preconditioner
================  ========================================================================
"""

from __future__ import annotations

from ..methods import BGREMOVALS, bgremoval
from ..methods import DEFAULT_BGREMOVE as DEFAULT

METHODS = tuple(BGREMOVALS)


def get_method(name):
    """Return the background removal function registered as ``name``.

    Raises ``ValueError`` naming the known methods for an unknown name.
    """
    return bgremoval(name).function()


def __getattr__(name):  # lazy access: metaqsm.bgremove.resharp etc.
    if name in BGREMOVALS:
        return get_method(name)
    raise AttributeError(f"module 'metaqsm.bgremove' has no attribute {name!r}")


__all__ = ["METHODS", "DEFAULT", "get_method", *METHODS]
