"""Dipole inversions: local field (ppm) -> susceptibility (ppm).

Every method has the signature ``method(field, mask, *, voxel_size, b0_dir=(0, 0, 1), ...)``
and returns a float32 susceptibility map in ppm, zero outside the mask.

Methods are registered by name (:data:`METHODS`) and imported lazily: the network methods
("meta", "mesa") need torch, the classical ones never import it.
"""

from __future__ import annotations

from .._registry import resolve

# name -> "module:function" (module relative to the metaqsm package)
METHODS = {
    "tkd": "inversion.direct:tkd",
    "tsvd": "inversion.direct:tsvd",
    "tikhonov": "inversion.direct:tikhonov",
    "ilsqr": "inversion.ilsqr:ilsqr",
    "medi": "inversion.medi:medi",
    "tv": "inversion.tv:tv",
    "meta": "dl.infer:invert_meta",
    "mesa": "dl.infer:invert_mesa",
}

CLASSICAL = ("tkd", "tsvd", "tikhonov", "ilsqr", "medi", "tv")

DEFAULT_METHOD = "ilsqr"
"""The inversion used when none is named (``metaqsm invert``, ``metaqsm run``): iLSQR until the
shipped Meta-QSM model reaches its targets (issue 6), then "meta"."""


def get_method(name):
    """Return the inversion function registered as ``name``.

    Raises ``ValueError`` naming the known methods for an unknown name.
    """
    return resolve(METHODS, name)


def __getattr__(name):  # lazy access: metaqsm.inversion.tkd etc.
    if name in METHODS:
        return get_method(name)
    raise AttributeError(f"module 'metaqsm.inversion' has no attribute {name!r}")


__all__ = ["METHODS", "CLASSICAL", "DEFAULT_METHOD", "get_method", *METHODS]
