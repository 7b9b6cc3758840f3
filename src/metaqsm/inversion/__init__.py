"""Dipole inversions: local field (ppm) -> susceptibility (ppm).

Every method has the signature ``method(field, mask, *, voxel_size, b0_dir=(0, 0, 1), ...)``
and returns a float32 susceptibility map in ppm, zero outside the mask.

The methods are the entries of :data:`metaqsm.methods.INVERSIONS` (name, function, kind,
inputs, options); they are imported lazily: the network methods ("meta", "mesa") need torch,
the classical ones never import it.
"""

from __future__ import annotations

from ..methods import DEFAULT_INVERSION as DEFAULT_METHOD
from ..methods import INVERSIONS, inversion, inversion_names

METHODS = tuple(INVERSIONS)
CLASSICAL = inversion_names("classical")


def get_method(name):
    """Return the inversion function registered as ``name``.

    Raises ``ValueError`` naming the known methods for an unknown name, ``ImportError`` for a
    network when torch is missing.
    """
    return inversion(name).function()


def __getattr__(name):  # lazy access: metaqsm.inversion.tkd etc.
    if name in INVERSIONS:
        return get_method(name)
    raise AttributeError(f"module 'metaqsm.inversion' has no attribute {name!r}")


__all__ = ["METHODS", "CLASSICAL", "DEFAULT_METHOD", "get_method", *METHODS]
