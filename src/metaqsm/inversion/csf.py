"""Ventricular CSF mask for MEDI+0's zero reference (the MEDI toolbox's ``extract_CSF``)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .._filters import masked_lowpass
from .._validate import as_mask, as_positive, as_volume, as_voxel_size
from . import _common

__all__ = ["csf_mask"]


def csf_mask(mask, *, voxel_size, r2star=None, magnitude=None, r2star_threshold=5.0,
             radius=30.0, n_regions=2):
    """Ventricular cerebrospinal fluid: low-R2* (bright) regions connected to the brain centre.

    As the MEDI toolbox's ``extract_CSF`` (Liu et al. 2018): candidate voxels are those with
    ``R2* < r2star_threshold`` in the mask; the ``n_regions`` largest 26-connected candidate
    regions inside a sphere of ``radius`` mm around the mask's centroid (the lateral
    ventricles) select, among the candidate regions of the whole mask, those that reach into
    them. Without an R2* map the candidates come from the magnitude: CSF has the longest T2*
    and the highest proton density, so it is the bright class of the echo-combined magnitude
    within the central sphere (Otsu's threshold there; the sphere keeps the receive profile
    nearly flat), after dividing the magnitude by its local mean in the mask (Gaussian, sigma
    20 mm; a receive profile brightens the surface): the upper class of a three-class Otsu
    threshold (white matter, grey matter, CSF) there. This substitute is this package's, not the toolbox's.

    Parameters
    ----------
    mask : (X, Y, Z) array
        Brain mask.
    voxel_size : 3 floats
        Voxel size in mm.
    r2star : (X, Y, Z) array, optional
        R2* map in 1/s. Takes precedence over ``magnitude``.
    magnitude : (X, Y, Z) or (X, Y, Z, echoes) array, optional
        Magnitude image (echoes combined by root-sum-of-squares).
    r2star_threshold : float
        R2* (1/s) below which a voxel may be CSF. Default 5, the toolbox's.
    radius : float
        Radius (mm) of the central sphere. Default 30, the toolbox's.
    n_regions : int
        Number of central regions kept. Default 2, the toolbox's.

    Returns
    -------
    (X, Y, Z) bool array
        The CSF mask (empty if no candidate region reaches the centre).

    Raises
    ------
    ValueError
        If neither ``r2star`` nor ``magnitude`` is given, a map has another shape than the
        mask, or a parameter is not positive.

    References
    ----------
    Liu Z, Spincemaille P, Yao Y, Zhang Y, Wang Y. MEDI+0: Morphology enabled dipole inversion
    with automatic uniform cerebrospinal fluid zero reference for quantitative susceptibility
    mapping. Magn Reson Med 2018;79:2795-2803.
    Otsu N. A threshold selection method from gray-level histograms. IEEE Trans Syst Man
    Cybern 1979;9:62-66.
    Liao PS, Chen TS, Chung PC. A fast algorithm for multilevel thresholding. J Inf Sci Eng
    2001;17:713-727.
    """
    vsz = as_voxel_size(voxel_size)
    m = as_mask(mask, np.shape(mask))
    radius = as_positive(radius, "radius")
    n_regions = int(as_positive(n_regions, "n_regions"))
    idx = np.indices(m.shape, dtype=np.float32)
    centre = [float(idx[i][m].mean()) for i in range(3)]
    d2 = sum(((idx[i] - centre[i]) * np.float32(vsz[i])) ** 2 for i in range(3))
    central = m & (d2 <= radius * radius)
    del idx, d2
    if r2star is not None:
        r2 = as_volume(r2star, "r2star")
        if r2.shape != m.shape:
            raise ValueError(f"r2star must have the shape of the mask {m.shape}, got {r2.shape}")
        cand = m & (r2 < as_positive(r2star_threshold, "r2star_threshold"))
    elif magnitude is not None:
        mag = _common.check_magnitude(magnitude, m.shape, what="mask")
        if not central.any():
            return np.zeros(m.shape, bool)
        # the receive profile makes the surface bright: divide by the magnitude's local mean
        # in the mask (Gaussian, sigma 20 mm), which keeps CSF bright against its neighbours
        local = masked_lowpass(mag, m, 20.0 / vsz)
        mag = np.where(m, mag / np.maximum(local, 1e-12), 0.0).astype(np.float32)
        from skimage.filters import threshold_multiotsu

        # three classes (white matter, grey matter, CSF): CSF is the brightest
        cand = m & (mag > threshold_multiotsu(mag[central], classes=3)[-1])
    else:
        raise ValueError("csf_mask needs r2star or magnitude")
    s26 = np.ones((3, 3, 3), bool)
    lab_c, n_c = ndi.label(cand & central, structure=s26)
    if n_c == 0:
        return np.zeros(m.shape, bool)
    sizes = np.bincount(lab_c.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:n_regions] + 1
    seeds = np.isin(lab_c, keep)
    lab, _ = ndi.label(cand, structure=s26)
    chosen = np.unique(lab[seeds])
    return np.isin(lab, chosen[chosen > 0])
