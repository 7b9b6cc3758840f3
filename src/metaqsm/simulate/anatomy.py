"""Anatomical base maps for synthetic training data, from the MNI152 tissue probability maps.

nilearn bundles the MNI152 2009 template with grey- and white-matter probability maps and a brain
mask at 1 mm (no download). This module turns them into a susceptibility map with random
per-tissue values:

* white matter slightly diamagnetic (myelin), cortex around zero to slightly positive, CSF the
  reference (0 ppm, CSF = 1 - GM - WM inside the brain mask);
* deep grey nuclei (caudate, putamen, pallidum, thalamus: grey matter deep inside the central
  region of MNI space, split into connected components) paramagnetic, one random value per
  nucleus plus an iron gradient towards each nucleus' core, as iron grows towards the pallidum
  and the centre of the nuclei;
* veins as random smooth tubes (:func:`add_veins`), strongly paramagnetic.

Typical in-vivo values at 3 T relative to CSF (Deistung et al. 2013; Lim et al. 2013): white
matter -0.02 to -0.05 ppm, cortex 0 to +0.03 ppm, caudate +0.05, putamen +0.05 to +0.1,
globus pallidus +0.1 to +0.2, thalamus +0.01 to +0.05, veins +0.3 to +0.5 ppm. The default ranges
of :class:`metaqsm.simulate.synth.SynthConfig` span these values and more.

The maps are loaded once per process (:func:`mni_maps` is cached).

References
----------
Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased average
age-appropriate atlases for pediatric studies. NeuroImage 2011;54:313-327 (MNI152 2009).
Deistung A, Schafer A, Schweser F, Biedermann U, Turner R, Reichenbach JR. Toward in vivo
histology: a comparison of quantitative susceptibility mapping (QSM) with magnitude-, phase-,
and R2*-imaging at ultra-high magnetic field strength. NeuroImage 2013;65:299-314.
Lim IAL, Faria AV, Li X, et al. Human brain atlas for automated region of interest selection in
quantitative susceptibility mapping: application to determine iron content in deep gray matter
structures. NeuroImage 2013;82:449-469.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["MNIMaps", "mni_maps", "tissue_susceptibility", "add_veins"]

# MNI mm box holding the basal ganglia and thalami (|x| 3-31 mm, y -38..24 mm, z -8..24 mm);
# the cingulate cortex above the corpus callosum (|x| < 10 mm, z > 16 mm) is excluded.
_DEEP_BOX = {"x": (3.0, 31.0), "y": (-38.0, 24.0), "z": (-8.0, 24.0)}
_DEEP_MIN_DEPTH_MM = 15.0  # deep nuclei lie at least this far from the brain surface
_DEEP_MIN_VOXELS = 60  # smaller grey-matter islands are treated as cortex


@dataclass(frozen=True)
class MNIMaps:
    """The MNI152 tissue maps at 1 mm, cropped to the brain's bounding box (RAS voxel order).

    Attributes
    ----------
    wm, cortex, deep, csf : (X, Y, Z) float32
        Tissue fractions (sum to the brain fraction): white matter, cortical (and cerebellar) grey
        matter, deep grey nuclei, cerebrospinal fluid.
    brain : (X, Y, Z) float32
        Brain mask as 0/1.
    deep_label : (X, Y, Z) int16
        Nucleus number 1..n_deep of the nearest deep nucleus (0 where ``deep`` is 0).
    deep_grade : (X, Y, Z) float32
        0 at the border of each nucleus, 1 at its core (the iron gradient's shape).
    n_deep : int
        Number of nuclei.
    brain_volume_mm3 : float
        Volume of the brain mask in mm^3.
    """

    wm: np.ndarray
    cortex: np.ndarray
    deep: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    deep_label: np.ndarray
    deep_grade: np.ndarray
    n_deep: int
    brain_volume_mm3: float

    @property
    def shape(self):
        return self.brain.shape


@functools.lru_cache(maxsize=1)
def mni_maps() -> MNIMaps:
    """Load and prepare the MNI152 tissue maps (once per process; about 2 s).

    Returns
    -------
    MNIMaps
    """
    import scipy.ndimage as ndi
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, np.float32)
    gm = np.asarray(gm_img.dataobj, np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    affine = gm_img.affine

    # crop to the brain's bounding box with a 2-voxel border
    idx = np.nonzero(brain)
    lo = [max(int(i.min()) - 2, 0) for i in idx]
    hi = [min(int(i.max()) + 3, n) for i, n in zip(idx, brain.shape)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    gm, wm, brain = gm[sl] * brain[sl], wm[sl] * brain[sl], brain[sl]
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(brain - gm - wm, 0.0, 1.0).astype(np.float32)

    # deep grey nuclei: grey matter deep inside the central box of MNI space
    ijk = np.indices(brain.shape, dtype=np.float32)
    mm = [affine[a, a] * (ijk[a] + lo[a]) + affine[a, 3] for a in range(3)]
    ax = np.abs(mm[0])
    box = ((ax >= _DEEP_BOX["x"][0]) & (ax <= _DEEP_BOX["x"][1])
           & (mm[1] >= _DEEP_BOX["y"][0]) & (mm[1] <= _DEEP_BOX["y"][1])
           & (mm[2] >= _DEEP_BOX["z"][0]) & (mm[2] <= _DEEP_BOX["z"][1])
           & ~((ax < 10.0) & (mm[2] > 16.0)))
    depth = ndi.distance_transform_edt(brain)
    core = (gm > 0.5) & box & (depth >= _DEEP_MIN_DEPTH_MM)
    core = ndi.binary_opening(core, iterations=1)
    # split the (merged) basal ganglia and thalami into nuclei by their MNI positions, so each
    # gets its own iron level; then drop small islands
    x, y, z = mm
    nucleus = np.select(
        [(y < -6.0) & (ax < 24.0),  # thalamus
         (ax >= 12.0) & (ax < 23.0) & (y >= -14.0) & (y <= 6.0) & (z <= 6.0),  # pallidum
         (ax >= 19.0) & (z < 16.0),  # putamen
         np.ones_like(core)],  # caudate
        [1, 2, 3, 4])
    nucleus = np.where(core, nucleus + 4 * (x > 0), 0)
    labels = np.zeros(brain.shape, np.int32)
    n = 0
    for k in range(1, 9):
        lab, m = ndi.label(nucleus == k)
        labels[lab > 0] = lab[lab > 0] + n
        n += m
    sizes = np.bincount(labels.ravel())
    keep = np.flatnonzero(sizes >= _DEEP_MIN_VOXELS)
    keep = keep[keep > 0]
    relabel = np.zeros(sizes.size, np.int16)
    relabel[keep] = np.arange(1, keep.size + 1)
    labels = relabel[labels]
    core = labels > 0
    # soft membership: the nucleus plus the grey matter within 2 mm of it
    near, (ii, jj, kk) = ndi.distance_transform_edt(~core, return_indices=True)
    deep_label = np.where(near <= 3.0, labels[ii, jj, kk], 0).astype(np.int16)
    # a soft weight (no hard edge where the central box cuts through grey matter)
    weight = np.clip(ndi.gaussian_filter(core.astype(np.float32), 1.0) * 2.0, 0.0, 1.0)
    deep = np.where(deep_label > 0, gm * weight, 0.0).astype(np.float32)
    grade = np.zeros(brain.shape, np.float32)
    for lab, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        sel = np.pad(labels[box] == lab, 1)
        inside = ndi.distance_transform_edt(sel)[1:-1, 1:-1, 1:-1]
        sel = sel[1:-1, 1:-1, 1:-1]
        grade[box][sel] = inside[sel] / max(float(inside.max()), 1.0)
    cortex = (gm - deep).astype(np.float32)
    return MNIMaps(wm=wm.astype(np.float32), cortex=cortex, deep=deep, csf=csf,
                   brain=brain.astype(np.float32), deep_label=deep_label, deep_grade=grade,
                   n_deep=int(keep.size), brain_volume_mm3=float(brain.sum()))


def tissue_susceptibility(maps, *, wm, cortex, deep, deep_gradient, csf=0.0, box=None):
    """Susceptibility (ppm) of the MNI anatomy for given per-tissue values.

    Parameters
    ----------
    maps : MNIMaps
        From :func:`mni_maps`.
    wm, cortex, csf : float
        Values (ppm, relative to CSF) of white matter, cortex and CSF.
    deep : float or (n_deep,) array
        Value (ppm) of each deep nucleus (one value broadcasts to all).
    deep_gradient : float
        Extra susceptibility (ppm) at the core of each nucleus (the iron gradient).
    box : tuple of 3 slices, optional
        Compute only this part of the maps.

    Returns
    -------
    chi : float32 array, the maps' shape (or the box's)
    """
    sl = box if box is not None else (slice(None),) * 3
    values = np.zeros(maps.n_deep + 1, np.float32)
    values[1:] = np.broadcast_to(np.asarray(deep, np.float32), (maps.n_deep,))
    chi = maps.wm[sl] * np.float32(wm)
    chi += maps.cortex[sl] * np.float32(cortex)
    if csf:
        chi += maps.csf[sl] * np.float32(csf)
    chi += maps.deep[sl] * (values[maps.deep_label[sl]]
                            + np.float32(deep_gradient) * maps.deep_grade[sl])
    return chi


def add_veins(chi, mask, *, voxel_size, count, value_range, radius_range, length_range, rng):
    """Draw vessel-like tubes (veins) as random smooth curves, inside ``mask``, in place.

    Each vein is a smooth random curve (its direction is a random unit drift plus smooth noise
    with a 10 mm correlation length) of random length and radius, started at a random voxel of ``mask``, rasterised
    by stamping a ball at points 1/2 voxel apart; the tube replaces the tissue value. Partial
    volume comes from the later reduction to the target voxel size.

    Parameters
    ----------
    chi : (X, Y, Z) float32 array
        Susceptibility (ppm), modified in place.
    mask : (X, Y, Z) bool array
        Where veins may lie.
    voxel_size : 3 floats
        Voxel size of the grid (mm).
    count : int
        Number of veins.
    value_range, radius_range, length_range : 2 floats
        Ranges of the susceptibility (ppm), radius (mm) and length (mm) of each vein (uniform).
    rng : numpy.random.Generator
    """
    from scipy.ndimage import gaussian_filter1d

    vsz = np.asarray(voxel_size, float)
    shape = np.asarray(chi.shape)
    flat_mask = mask.reshape(-1)
    if count <= 0 or not flat_mask.any():
        return chi
    step = 0.5 * float(vsz.min())
    for _ in range(int(count)):
        value = rng.uniform(*value_range)
        radius = rng.uniform(*radius_range)
        length = rng.uniform(*length_range)
        start = np.array(np.unravel_index(_random_index(flat_mask, rng), chi.shape), float)
        n = max(int(length / step), 2)
        # smooth random direction: a unit drift plus Gaussian-filtered noise of correlation
        # length 10 mm (turns of about a radian per 10-20 mm)
        drift = rng.standard_normal(3)
        drift /= np.linalg.norm(drift)
        wiggle = gaussian_filter1d(rng.standard_normal((n, 3)), 10.0 / step, axis=0, mode="nearest")
        wiggle /= max(float(np.sqrt((wiggle ** 2).sum(1).mean())), 1e-12)
        dirs = drift + 0.8 * wiggle
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        pts_mm = (start + 0.5) * vsz + np.cumsum(dirs * step, axis=0)
        pts = np.unique(np.floor(pts_mm / vsz).astype(np.int64), axis=0)
        r_vox = radius / vsz
        span = [np.arange(-int(np.ceil(r)), int(np.ceil(r)) + 1) for r in r_vox]
        ox, oy, oz = np.meshgrid(*span, indexing="ij")
        inball = (ox / max(r_vox[0], 0.5)) ** 2 + (oy / max(r_vox[1], 0.5)) ** 2 \
            + (oz / max(r_vox[2], 0.5)) ** 2 <= 1.0
        offs = np.stack([ox[inball], oy[inball], oz[inball]], -1)
        vox = (pts[:, None, :] + offs[None]).reshape(-1, 3)
        ok = np.all((vox >= 0) & (vox < shape), axis=1)
        flat = np.ravel_multi_index(tuple(vox[ok].T), chi.shape)
        flat = flat[mask.reshape(-1)[flat]]
        chi.reshape(-1)[flat] = value
    return chi


def _random_index(flat_mask, rng, tries=64):
    """A uniformly random flat index where ``flat_mask`` is true (rejection sampling first)."""
    for _ in range(tries):
        i = int(rng.integers(flat_mask.size))
        if flat_mask[i]:
            return i
    where = np.flatnonzero(flat_mask)
    return int(where[rng.integers(where.size)])
