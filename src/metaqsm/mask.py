"""Brain masking from the magnitude image, and erosions that fit the mask.

A robust threshold method: Gaussian smoothing, Otsu's threshold, morphological opening (cuts
thin bridges to the scalp), the largest connected component, closing, hole filling and an
optional erosion. All radii are in mm and the morphology is exact for anisotropic voxels: it
uses Euclidean distance transforms with the voxel size as sampling, so eroding by ``r`` mm
removes exactly the voxels closer than ``r`` mm to the background.

Erosions never empty a mask silently: an erosion that leaves nothing is an error naming the
mask's thickness, and one that keeps less than :data:`KEEP_FRACTION` of the mask issues a
:class:`MaskWarning`. :func:`adapt_radius` is the rule by which default erosion radii (the
SHARP family's spheres) shrink to fit small masks (crops, slabs of a few slices).

A mask given by the user always wins over this estimate (the pipeline does not call
:func:`brain_mask` when one is given).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._validate import MaskWarning, as_mask, as_positive, as_volume, as_voxel_size, warn

__all__ = ["brain_mask", "erode_mask", "dilate_mask", "mask_depth", "adapt_radius",
           "check_eroded", "check_thickness", "KEEP_FRACTION", "MIN_THICKNESS_MM", "MaskWarning"]

KEEP_FRACTION = 0.5
"""An eroded mask that keeps less than this fraction of the mask it came from "loses most of
the brain": :func:`check_eroded` warns (:class:`MaskWarning`), and :func:`adapt_radius` shrinks
default radii so that at least this fraction is kept."""

_TOL = 1e-6  # mm: a voxel at exactly the radius is eroded (as the sphere of that radius covers it)


def _mask3d(mask, voxel_size):
    """A 3D boolean mask (may be empty) and the voxel size, checked."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask must be a 3D volume, got {mask.ndim}D with shape {mask.shape}")
    return as_mask(mask, mask.shape, allow_empty=True), as_voxel_size(voxel_size)


def _distance_inside(mask, vsz):
    """Distance (mm) from each voxel inside ``mask`` to the nearest voxel outside it; voxels
    beyond the array count as outside."""
    padded = np.pad(mask, 1)
    d = ndi.distance_transform_edt(padded, sampling=vsz)
    return d[1:-1, 1:-1, 1:-1]


def mask_depth(mask, *, voxel_size):
    """Depth of each voxel of ``mask``: its distance (mm) to the nearest voxel centre outside the
    mask (voxels beyond the array count as outside); 0 outside.

    Eroding by ``r`` mm (:func:`erode_mask`, or the SHARP family's sphere of radius ``r``) keeps
    exactly the voxels deeper than ``r``, so the depths say at once what any erosion keeps.

    Parameters
    ----------
    mask : (X, Y, Z) array
        Mask, non-zero inside.
    voxel_size : 3 floats
        Voxel size in mm.

    Returns
    -------
    (X, Y, Z) float64 ndarray
        mm.
    """
    mask, vsz = _mask3d(mask, voxel_size)
    out = np.zeros(mask.shape)
    if not mask.any():
        return out
    # the distance transform of the mask's bounding box only: outside it every voxel is outside
    idx = np.nonzero(mask)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    out[box] = _distance_inside(mask[box], vsz)
    return out


MIN_THICKNESS_MM = 12.0
"""A brain mask thinner than this along an axis (twice RESHARP's 6 mm sphere; 3-4 slices of a
clinical 3-4 mm protocol) holds too little of the brain's field for background removal and a
dipole inversion, which are 3D operations: :func:`check_thickness` warns."""


def check_thickness(mask, *, voxel_size, min_mm=MIN_THICKNESS_MM):
    """Warn (:class:`MaskWarning`) when ``mask`` is thinner than ``min_mm`` along an axis.

    A slab of one or a few slices gives a field map, but no quantitative susceptibility: the
    dipole field of a source reaches several centimetres in every direction. Returns the
    mask's extent along each axis in mm (its bounding box, in whole voxels).
    """
    m = as_mask(mask, np.shape(mask), "mask")
    vsz = as_voxel_size(voxel_size)
    idx = np.nonzero(m)
    n = np.array([int(i.max()) - int(i.min()) + 1 for i in idx])
    extent = n * vsz
    axis = int(np.argmin(extent))
    if extent[axis] < as_positive(min_mm, "min_mm"):
        what = "slice" if n[axis] == 1 else "slices"
        warn(f"the brain mask is only {n[axis]} {what} ({extent[axis]:g} mm) thick along axis "
             f"{axis}: background removal and the dipole inversion need 3D coverage (at least "
             f"{min_mm:g} mm), so the maps are not quantitative", MaskWarning)
    return extent


def _thickness(mask, vsz):
    """Words for messages: the mask's deepest voxel and its thinnest extent."""
    depth = mask_depth(mask, voxel_size=vsz)
    idx = np.nonzero(mask)
    n = np.array([int(i.max()) - int(i.min()) + 1 for i in idx])
    axis = int(np.argmin(n * vsz))
    what = "slice" if n[axis] == 1 else "slices"
    return (f"its deepest voxel lies {depth.max():.3g} mm inside it and it is {n[axis]} "
            f"{what} of {vsz[axis]:g} mm thick along axis {axis}")


def adapt_radius(mask, *, voxel_size, radius_mm, min_radius_mm=0.0, keep=KEEP_FRACTION):
    """The largest erosion radius up to ``radius_mm`` that keeps at least ``keep`` of ``mask``.

    The rule for default radii (the SHARP family's spheres; see docs/preprocessing.md): a
    radius is used as is when eroding by it keeps at least ``keep`` of the mask's voxels (every
    whole brain at 6 mm: about 75 %); on a small mask (a crop, a slab of a few slices, a small
    phantom) it shrinks to the depth that ``keep`` of the voxels exceed, but never below
    ``min_radius_mm`` (the smallest kernel that still works, e.g. the largest voxel
    dimension for a sphere that must reach the six nearest neighbours).

    Parameters
    ----------
    mask : (X, Y, Z) array
        Mask, non-zero inside (not empty).
    voxel_size : 3 floats
        Voxel size in mm.
    radius_mm : float
        The radius wanted (mm).
    min_radius_mm : float
        The smallest radius allowed (mm); it wins over ``keep``. Default 0.
    keep : float
        Fraction of the mask to keep, in (0, 1]. Default :data:`KEEP_FRACTION` (0.5).

    Returns
    -------
    radius : float
        mm, in ``[min_radius_mm, radius_mm]`` (``radius_mm`` when it already keeps enough;
        reduced radii are rounded down to 0.01 mm).
    kept : float
        Fraction of the mask kept by eroding with ``radius`` (0 when even ``min_radius_mm``
        erodes it all).
    kept_wanted : float
        Fraction kept by ``radius_mm`` itself.

    Examples
    --------
    A ball of radius 20 mm keeps half of its volume when eroded by 20 (1 - 0.5^(1/3)) = 4.1 mm
    (on 1 mm voxels: 4.24 mm, 50.9 % of the voxels), and 34 % when eroded by 6 mm:

    >>> x = np.arange(-24, 25.0)
    >>> ball = (x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2) <= 400
    >>> r, kept, kept_6mm = adapt_radius(ball, voxel_size=1.0, radius_mm=6.0)
    >>> round(r, 2), round(kept, 3), round(kept_6mm, 2)
    (4.24, 0.509, 0.35)
    """
    m = as_mask(mask, np.shape(mask), "mask")
    r_want = as_positive(radius_mm, "radius_mm")
    r_min = as_positive(min_radius_mm, "min_radius_mm", allow_zero=True)
    keep = as_positive(keep, "keep")
    if keep > 1:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    depth = mask_depth(m, voxel_size=voxel_size)[m]
    n = depth.size

    def kept_by(r):
        return float(np.count_nonzero(depth > r + _TOL)) / n

    kept_wanted = kept_by(r_want)
    if kept_wanted >= keep or r_want <= r_min:
        return r_want, kept_wanted, kept_wanted
    # the k-th deepest voxel stays for any radius below its depth
    k = int(np.ceil(keep * n)) - 1
    d_k = float(np.partition(depth, n - 1 - k)[n - 1 - k])
    r = np.floor((d_k - 2 * _TOL) * 100.0) / 100.0
    r = float(min(max(r, r_min), r_want))
    return r, kept_by(r), kept_wanted


def check_eroded(mask, eroded, *, voxel_size, what, hint="", warn_loss=True):
    """Refuse an empty erosion, warn when it keeps less than :data:`KEEP_FRACTION`.

    Parameters
    ----------
    mask, eroded : (X, Y, Z) bool arrays
        The mask and its erosion.
    voxel_size : 3 floats
        mm (for the message on the mask's thickness).
    what : str
        The erosion, for the messages (e.g. ``"the mask eroded by radius 6 mm"``).
    hint : str
        What to do instead, appended to both messages.
    warn_loss : bool
        Warn of a loss (default True; False where the caller has already said so).

    Returns
    -------
    fraction : float
        Fraction of ``mask`` that ``eroded`` keeps.

    Raises
    ------
    ValueError
        ``eroded`` is empty (the message names the mask's thickness).

    Warns
    -----
    MaskWarning
        Less than :data:`KEEP_FRACTION` of the mask kept.
    """
    mask = np.asarray(mask, bool)
    n, n_kept = int(np.count_nonzero(mask)), int(np.count_nonzero(eroded))
    tail = f"; {hint}" if hint else ""
    if n_kept == 0:
        raise ValueError(f"{what} is empty ({_thickness(mask, as_voxel_size(voxel_size))}){tail}")
    frac = n_kept / n
    if frac < KEEP_FRACTION and warn_loss:
        warn(f"{what} keeps only {100 * frac:.1f} % of the mask ({n_kept} of {n} voxels): the "
             f"results cover little of the brain{tail}", MaskWarning)
    return frac


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
    mask, vsz = _mask3d(mask, voxel_size)
    r = as_positive(radius_mm, "radius_mm", allow_zero=True)
    if r == 0 or not mask.any():
        return mask.copy()
    return _distance_inside(mask, vsz) > r + _TOL


def dilate_mask(mask, *, voxel_size, radius_mm):
    """Dilate a mask by a ball of ``radius_mm`` (mm): the complement of eroding the complement."""
    mask, vsz = _mask3d(mask, voxel_size)
    r = as_positive(radius_mm, "radius_mm", allow_zero=True)
    if r == 0 or mask.all() or not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask, sampling=vsz) <= r + _TOL


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
        eroded = erode_mask(mask, voxel_size=vsz, radius_mm=er)
        check_eroded(mask, eroded, voxel_size=vsz, what=f"the brain mask eroded by erode_mm "
                     f"{er:g} mm", hint="use a smaller erode_mm")
        mask = eroded
    return mask
