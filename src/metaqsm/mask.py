"""Brain masking from the magnitude image.

A robust threshold method: Gaussian smoothing, Otsu's threshold, morphological opening (cuts
thin bridges to the scalp), the largest connected component, closing, hole filling and an
optional erosion. All radii are in mm and the morphology is exact for anisotropic voxels: it
uses Euclidean distance transforms with the voxel size as sampling, so eroding by ``r`` mm
removes exactly the voxels closer than ``r`` mm to the background.

A mask given by the user always wins over this estimate (the pipeline does not call
:func:`brain_mask` when one is given).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._validate import as_mask, as_positive, as_volume, as_voxel_size

__all__ = ["brain_mask", "erode_mask", "dilate_mask"]


def _distance_inside(mask, vsz):
    """Distance (mm) from each voxel inside ``mask`` to the nearest voxel outside it; voxels
    beyond the array count as outside."""
    padded = np.pad(mask, 1)
    d = ndi.distance_transform_edt(padded, sampling=vsz)
    return d[1:-1, 1:-1, 1:-1]


def erode_mask(mask, *, voxel_size, radius_mm):
    """Erode a mask by a ball of ``radius_mm`` (mm), exactly for anisotropic voxels.

    A voxel stays when every voxel centre within ``radius_mm`` of it lies in the mask; voxels
    beyond the array count as outside the mask.

    Parameters
    ----------
    mask : (X, Y, Z) array
        Mask, non-zero inside.
    voxel_size : 3 floats
        Voxel size in mm.
    radius_mm : float
        Erosion radius in mm (0 returns the mask unchanged).

    Returns
    -------
    (X, Y, Z) bool ndarray
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be a 3D volume, got {mask.ndim}D with shape {mask.shape}")
    mask = as_mask(mask, mask.shape, allow_empty=True)
    vsz = as_voxel_size(voxel_size)
    r = as_positive(radius_mm, "radius_mm", allow_zero=True)
    if r == 0 or not mask.any():
        return mask.copy()
    return _distance_inside(mask, vsz) > r + 1e-6


def dilate_mask(mask, *, voxel_size, radius_mm):
    """Dilate a mask by a ball of ``radius_mm`` (mm): the complement of eroding the complement."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be a 3D volume, got {mask.ndim}D with shape {mask.shape}")
    mask = as_mask(mask, mask.shape, allow_empty=True)
    vsz = as_voxel_size(voxel_size)
    r = as_positive(radius_mm, "radius_mm", allow_zero=True)
    if r == 0 or mask.all() or not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask, sampling=vsz) <= r + 1e-6


def _largest_component(mask):
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def brain_mask(magnitude, *, voxel_size, method="otsu", erode_mm=0.0, fill_holes=True,
               smooth_mm=1.0, threshold_scale=1.0, opening_mm=None, closing_mm=None, echo="rss"):
    """Estimate a brain mask from a (multi-echo) magnitude image.

    Steps: combine the echoes (root sum of squares by default), smooth with a Gaussian of
    standard deviation ``smooth_mm``, threshold at Otsu's level times
    ``threshold_scale``, open by ``opening_mm`` (detaches the scalp and thin bridges), keep the
    largest connected component, close by ``closing_mm``, fill holes (ventricles and dark
    veins are inside the brain), then erode by ``erode_mm``.

    Parameters
    ----------
    magnitude : (X, Y, Z) or (X, Y, Z, E) array
        Magnitude, any unit; echoes on the last axis.
    voxel_size : 3 floats
        Voxel size in mm.
    method : {"otsu"}
        Threshold method. Only Otsu's is provided.
    erode_mm : float
        Final erosion in mm (default 0).
    fill_holes : bool
        Fill enclosed holes in 3D (default True).
    smooth_mm : float
        Standard deviation of the Gaussian smoothing in mm before thresholding (default 1 mm;
        0 disables).
    threshold_scale : float
        Factor on Otsu's threshold (default 1; below 1 gives a more generous mask).
    opening_mm, closing_mm : float or None
        Radii of the morphological opening and closing in mm. Default ``2 * max(voxel_size)``
        for both (0 disables).
    echo : "rss" or int
        Which echo to use for 4D input: ``"rss"`` (default) combines all echoes by root sum of
        squares, an int picks one echo (0-based).

    Returns
    -------
    mask : (X, Y, Z) bool ndarray

    Raises
    ------
    ValueError
        For a wrong number of dimensions, an unknown ``method`` or ``echo``, or an image with
        no contrast (the threshold selects nothing or everything).

    References
    ----------
    Otsu N. A threshold selection method from gray-level histograms. IEEE Trans Syst Man Cybern
    1979;9(1):62-66.
    """
    mag = as_volume(magnitude, "magnitude", ndim=(3, 4))
    vsz = as_voxel_size(voxel_size)
    if method != "otsu":
        raise ValueError(f"method must be 'otsu', got {method!r}")
    if mag.ndim == 4:
        if isinstance(echo, str):
            if echo != "rss":
                raise ValueError(f"echo must be 'rss' or an echo index, got {echo!r}")
            mag = np.sqrt(np.sum(np.abs(mag) ** 2, axis=-1))
        else:
            n = mag.shape[-1]
            if isinstance(echo, bool) or not float(echo).is_integer() or not -n <= int(echo) < n:
                raise ValueError(f"echo must be 'rss' or an echo index in 0..{n - 1}, got {echo!r}")
            mag = np.abs(mag[..., int(echo)])
    else:
        mag = np.abs(mag)
    smooth = as_positive(smooth_mm, "smooth_mm", allow_zero=True)
    scale = as_positive(threshold_scale, "threshold_scale")
    opening = (2.0 * vsz.max() if opening_mm is None
               else as_positive(opening_mm, "opening_mm", allow_zero=True))
    closing = (2.0 * vsz.max() if closing_mm is None
               else as_positive(closing_mm, "closing_mm", allow_zero=True))
    if smooth > 0:
        mag = ndi.gaussian_filter(mag, sigma=smooth / vsz)
    from skimage.filters import threshold_otsu

    if float(mag.max()) <= float(mag.min()):
        raise ValueError("magnitude has no contrast (constant image): cannot threshold it")
    thr = threshold_otsu(mag) * scale
    mask = mag > thr
    if not mask.any() or mask.all():
        raise ValueError(f"the threshold {thr:g} selects {'nothing' if not mask.any() else 'everything'}"
                         " in magnitude; check the image or threshold_scale")
    if opening > 0:
        opened = dilate_mask(erode_mask(mask, voxel_size=vsz, radius_mm=opening),
                             voxel_size=vsz, radius_mm=opening)
        mask = opened if opened.any() else mask  # a tiny object survives no opening: keep it
    mask = _largest_component(mask)
    if closing > 0:
        # pad so that the closing is not cut at the array border
        p = int(np.ceil(closing / vsz.min())) + 1
        big = np.pad(mask, p)
        big = erode_mask(dilate_mask(big, voxel_size=vsz, radius_mm=closing),
                         voxel_size=vsz, radius_mm=closing)
        mask = big[p:-p, p:-p, p:-p] | mask
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    er = as_positive(erode_mm, "erode_mm", allow_zero=True)
    if er > 0:
        mask = erode_mask(mask, voxel_size=vsz, radius_mm=er)
    return mask
