"""metaqsm: Quantitative Susceptibility Mapping of the brain.

From multi-echo gradient-echo scans (DICOM or NIfTI) to susceptibility maps in ppm, with
classical dipole inversions and the resolution-arbitrary Meta-QSM network.

The classical side imports without torch; ``metaqsm.dl`` needs it.
"""

from ._version import __version__

__all__ = ["__version__"]
