"""An analytic brain-like susceptibility phantom for tests, examples and benchmarks.

The phantom is defined in coordinates relative to the field of view, so any matrix size and
voxel size gives a head that fills the box: a brain ellipsoid with cortical grey matter, white
matter, ventricles (CSF, the reference), paramagnetic deep grey nuclei graded in iron, veins and
an optional haemorrhage and calcification. Values (ppm, relative to CSF) follow typical 3 T
in-vivo reports (e.g. Deistung et al., NeuroImage 2013): white matter about -0.03, cortex
about +0.02, putamen +0.06, globus pallidus +0.12, caudate +0.05, veins +0.3 to +0.45.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import as_voxel_size

LABELS = {
    "background": 0,
    "csf": 1,
    "grey_matter": 2,
    "white_matter": 3,
    "caudate": 4,
    "putamen": 5,
    "globus_pallidus": 6,
    "vein": 7,
    "haemorrhage": 8,
    "calcification": 9,
}

VALUES = {
    "csf": 0.0,
    "grey_matter": 0.02,
    "white_matter": -0.03,
    "caudate": 0.05,
    "putamen": 0.06,
    "globus_pallidus": 0.12,
    "vein": 0.35,
    "haemorrhage": 0.8,
    "calcification": -0.5,
}


@dataclass
class Phantom:
    """chi (ppm, float32), mask (bool), labels (uint8, see LABELS), voxel_size (mm)."""

    chi: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    voxel_size: np.ndarray


def _ellipsoid(X, Y, Z, centre, radii):
    return (((X - centre[0]) / radii[0]) ** 2 + ((Y - centre[1]) / radii[1]) ** 2
            + ((Z - centre[2]) / radii[2]) ** 2) <= 1.0


def brain_phantom(shape=(64, 64, 48), *, voxel_size=(1.0, 1.0, 1.0), lesions=True, texture=0.005,
                  rng=0):
    """Build the phantom.

    Parameters
    ----------
    shape : 3 ints
        Matrix size (at least 16 per axis).
    voxel_size : 3 floats
        Voxel size in mm (stored with the phantom; the anatomy is relative to the field of view).
    lesions : bool
        Add a haemorrhage (+0.8 ppm) and a calcification (-0.5 ppm).
    texture : float
        Standard deviation (ppm) of smooth random texture added inside the brain (0 disables).
    rng : int or numpy.random.Generator
        Seed of the texture.

    Returns
    -------
    Phantom
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 integers >= 16, got {shape}")
    vsz = as_voxel_size(voxel_size)
    rng = np.random.default_rng(rng)
    axes = [np.linspace(-1, 1, n, endpoint=False) + 1.0 / n for n in shape]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")

    labels = np.zeros(shape, np.uint8)
    brain = _ellipsoid(X, Y, Z, (0, 0, 0), (0.78, 0.85, 0.8))
    white = _ellipsoid(X, Y, Z, (0, 0, 0), (0.66, 0.73, 0.66))
    labels[brain] = LABELS["grey_matter"]
    labels[white] = LABELS["white_matter"]
    # ventricles (two lateral ventricles), CSF
    for s in (-1, 1):
        labels[_ellipsoid(X, Y, Z, (0.1 * s, 0.05, 0.1), (0.07, 0.28, 0.12))] = LABELS["csf"]
    # deep grey nuclei, symmetric
    for s in (-1, 1):
        labels[_ellipsoid(X, Y, Z, (0.17 * s, 0.22, 0.08), (0.06, 0.1, 0.12))] = LABELS["caudate"]
        labels[_ellipsoid(X, Y, Z, (0.36 * s, 0.02, -0.02), (0.07, 0.18, 0.14))] = LABELS["putamen"]
        labels[_ellipsoid(X, Y, Z, (0.27 * s, -0.02, -0.04), (0.04, 0.1, 0.08))] = LABELS["globus_pallidus"]
    # veins: a straight sinus-like tube near the midline top, and two oblique cortical veins
    vein = (np.hypot(X / 0.025, (Z - 0.55) / 0.05) <= 1.0) & brain
    for c, d in (((0.5, 0.0, 0.2), (0.0, 0.6, 0.8)), ((-0.45, -0.3, -0.1), (0.3, 0.9, 0.3))):
        d = np.asarray(d) / np.linalg.norm(d)
        P = np.stack([X - c[0], Y - c[1], Z - c[2]], -1)
        along = P @ d
        perp = np.linalg.norm(P - along[..., None] * d, axis=-1)
        vein |= (perp <= 0.03) & (np.abs(along) <= 0.35) & brain
    labels[vein] = LABELS["vein"]
    if lesions:
        labels[_ellipsoid(X, Y, Z, (-0.35, 0.4, 0.25), (0.06, 0.07, 0.08))] = LABELS["haemorrhage"]
        labels[_ellipsoid(X, Y, Z, (0.4, -0.45, 0.3), (0.035, 0.035, 0.04))] = LABELS["calcification"]

    chi = np.zeros(shape, np.float32)
    for name, value in VALUES.items():
        chi[labels == LABELS[name]] = value
    if texture > 0:
        from scipy.ndimage import gaussian_filter

        noise = gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
        noise *= texture / max(float(noise.std()), 1e-12)
        chi[brain] += noise[brain]
    chi[~brain] = 0.0
    return Phantom(chi=chi, mask=brain, labels=labels, voxel_size=vsz)
