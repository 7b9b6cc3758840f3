"""Phase processing: multi-echo fitting (complex echoes -> total field in ppm) and spatial
phase unwrapping.

Public API
----------
fit_echoes, EchoFit
    Nonlinear complex fit (as MEDI's ``Fit_ppm_complex``) or weighted linear fit of unwrapped
    phase; returns the total field (ppm), its noise map, the phase offset and the residual.
unwrap_romeo
    Quality-guided region-growing unwrapping along the maximum spanning tree (as ROMEO):
    exact multiples of 2 pi.
unwrap_laplacian
    Laplacian unwrapping (Schofield & Zhu 2003) with a cosine-transform Poisson solver.
unwrap
    Dispatch by name ("romeo", "laplacian").
reliable_mask
    The part of a brain mask where the fitted field is not noise (drops the rim without signal
    that skull stripping leaves, by the fit's noise map), for background removal.
"""

from ._fit import EchoFit, fit_echoes
from ._quality import RELIABLE_NOISE_FACTOR, reliable_mask
from ._unwrap import romeo_weights, unwrap, unwrap_laplacian, unwrap_romeo

__all__ = ["EchoFit", "fit_echoes", "unwrap", "unwrap_laplacian", "unwrap_romeo", "romeo_weights",
           "reliable_mask", "RELIABLE_NOISE_FACTOR"]
