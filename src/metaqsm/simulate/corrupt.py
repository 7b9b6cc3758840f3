"""A fast patch-level model of a real scan's imperfections, for training data.

The realistic cases (:func:`metaqsm.simulate.realistic.realistic_case`) carry the errors a real
scan carries through the whole pipeline, at about a minute per 1 mm head: too slow to train on.
:func:`corrupt_sample` adds a model of the same errors to a synthetic training sample
(:func:`metaqsm.simulate.synth.generate_sample`) in well under a second per 64^3 patch, so that a
network learns to ignore what the dipole model cannot explain instead of fitting it:

(a) **non-dipolar fields** inside white-matter-like regions: susceptibility anisotropy along
    smooth random fibre directions, the microstructure (hollow-cylinder) offset and an exchange
    offset, with :class:`~metaqsm.simulate.realistic.RealisticConfig`'s ranges and the realistic
    module's own functions (:func:`~metaqsm.simulate.realistic.anisotropy_field`,
    :func:`~metaqsm.simulate.realistic.microstructure_field`,
    :func:`~metaqsm.simulate.realistic.fibre_directions`). White-matter-like: where the
    susceptibility is below ``wm_threshold`` (white matter is diamagnetic against CSF), smoothed;
(b) **noise whose standard deviation varies in space**: ``sigma(x) = s / magnitude(x)`` with a
    smooth random magnitude that also falls towards the mask edge (partial volume with the
    skull, receive profile), ``s`` set so that the median over the mask is drawn from
    ``noise_median`` (the realistic suite's echo-fit noise has a median of about 0.002-0.003 ppm);
(c) **background-field residue** at the mask edge: the dipole field
    (:func:`metaqsm.kernels.forward_field`) of smooth random sources outside the mask, scaled to a
    standard deviation ``residue_sd`` at the edge and weighted by ``exp(-d / L)``, ``d`` the
    distance to the mask edge in mm and ``L`` drawn from ``residue_decay_mm`` (what background
    removal leaves: RESHARP's errors are largest at the edge; on a 2 mm realistic case the
    smoothed residue has sd 0.0041 ppm within 4 mm of the edge, 0.0033 at 4-8 mm, 0.0017
    deeper, hence decay lengths of 6-16 mm rather than 3-5);
(d) **an eroded and perturbed mask**: the edge moved inwards by a distance drawn from
    ``erosion_mm`` plus a smooth wobble of ``mask_wobble_mm`` (the pipeline erodes the mask by
    its kernel radius; a skull-stripping tool misses the edge by 1-2 mm). The new mask stays
    inside the old one, as the realistic suite's evaluation mask does.

Patch borders are not mask edges: distances are measured with the mask extended beyond the patch
(the brain continues outside it). The target stays the isotropic susceptibility (inside the new
mask), as a COSMOS reference measures it.

Numbers (measured against a 2 mm realistic case, docs/networks-unrolled.md) are ppm and mm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage as ndi

from .._validate import as_b0_dir, as_voxel_size
from ..kernels import forward_field
from .realistic import RealisticConfig, anisotropy_field, fibre_directions, microstructure_field

__all__ = ["CorruptionConfig", "corrupt_sample"]

_R = RealisticConfig()


@dataclass(frozen=True)
class CorruptionConfig:
    """Ranges (uniform draws per sample) of :func:`corrupt_sample`; ppm and mm.

    Parameters
    ----------
    anisotropy, microstructure, exchange : (low, high)
        ``chi_par - chi_perp`` of white matter, the microstructure offset's amplitude and the
        exchange offset (ppm); defaults: :class:`~metaqsm.simulate.realistic.RealisticConfig`'s.
    fibre_correlation_mm : float
        Correlation length of the fibre directions (default: the realistic suite's, 10 mm).
    wm_threshold : float
        Susceptibility (ppm) below which a voxel counts as white matter (default -0.005).
    noise_median : (low, high)
        Median over the mask of the field noise's standard deviation (ppm).
    magnitude_contrast : float
        Standard deviation of the log of the smooth random magnitude (default 0.3).
    edge_darkening : float
        Relative drop of the magnitude at the mask edge (default 0.5: noise twice as large there).
    edge_mm : float
        Decay length (mm) of the darkening towards the inside (default 4).
    residue_sd : (low, high)
        Standard deviation (ppm) of the background residue at the mask edge.
    residue_decay_mm : (low, high)
        Decay length ``L`` (mm) of the residue towards the inside.
    residue_source_mm : float
        Correlation length (mm) of the random outside sources (default 8).
    erosion_mm : (low, high)
        Mean inward shift of the mask edge (mm).
    mask_wobble_mm : float
        Standard deviation of the smooth edge displacement (mm, default 1.0).
    """

    anisotropy: tuple = _R.anisotropy
    microstructure: tuple = _R.microstructure
    exchange: tuple = _R.exchange
    fibre_correlation_mm: float = _R.fibre_correlation_mm
    wm_threshold: float = -0.005
    noise_median: tuple = (0.0015, 0.004)
    magnitude_contrast: float = 0.3
    edge_darkening: float = 0.5
    edge_mm: float = 4.0
    residue_sd: tuple = (0.003, 0.006)
    residue_decay_mm: tuple = (6.0, 16.0)
    residue_source_mm: float = 8.0
    erosion_mm: tuple = (0.0, 2.0)
    mask_wobble_mm: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (tuple, list)):
                v = tuple(float(x) for x in v)
                if len(v) != 2 or not v[0] <= v[1]:
                    raise ValueError(f"{f.name} must be (low, high) with low <= high, got {v}")
                if f.name not in ("exchange",) and v[0] < 0:
                    raise ValueError(f"{f.name} must be non-negative, got {v}")
                object.__setattr__(self, f.name, v)
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"{f.name} must be a number, got {v!r}")
        for name in ("fibre_correlation_mm", "edge_mm", "residue_source_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (mm), got {getattr(self, name)!r}")
        if not 0 <= self.edge_darkening < 1:
            raise ValueError(f"edge_darkening must be in [0, 1), got {self.edge_darkening!r}")
        if self.residue_decay_mm[0] <= 0:
            raise ValueError(f"residue_decay_mm must be positive (mm), got {self.residue_decay_mm}")

    def to_dict(self):
        """A JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown CorruptionConfig field(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _smooth(shape, sigma_vox, rng):
    """Unit-variance Gaussian noise smoothed by ``sigma_vox`` (voxels, per axis)."""
    x = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return x / max(float(x.std()), 1e-12)


def _edge_distance(mask, vsz, reach_mm):
    """Distance (mm) from each voxel inside ``mask`` to its edge; the patch border is not an edge
    (the mask is extended by edge replication over ``reach_mm`` first)."""
    r = [int(np.ceil(reach_mm / v)) + 1 for v in vsz]
    padded = np.pad(mask, [(n, n) for n in r], mode="edge")
    d = ndi.distance_transform_edt(padded, sampling=vsz)
    return d[r[0]:r[0] + mask.shape[0], r[1]:r[1] + mask.shape[1],
             r[2]:r[2] + mask.shape[2]].astype(np.float32)


def corrupt_sample(sample, *, config=None, rng=0, return_parts=False):
    """A training sample with a real scan's imperfections added to its field (see the module).

    Parameters
    ----------
    sample : dict
        As :func:`metaqsm.simulate.synth.generate_sample` returns: ``field``, ``chi`` (ppm),
        ``mask`` (bool) of one shape, ``voxel_size`` (mm), ``b0_dir``. Not modified.
    config : CorruptionConfig, optional
        The ranges (default: ``CorruptionConfig()``).
    rng : numpy.random.Generator or int
        Random generator or seed.
    return_parts : bool
        Also return the added parts (for checks): ``extra`` (non-dipolar field), ``residue``,
        ``noise``, ``noise_std`` (ppm, on the new mask) and the values drawn.

    Returns
    -------
    dict
        The sample with ``field`` corrupted and zero outside the new ``mask``, ``chi`` masked by
        it, ``noise_std`` (ppm, the noise standard deviation map) and, with ``return_parts``,
        ``parts``.

    Raises
    ------
    ValueError
        ``sample`` lacks a key or its volumes disagree in shape.
    TypeError
        ``config`` is not a :class:`CorruptionConfig`.
    """
    config = CorruptionConfig() if config is None else config
    if not isinstance(config, CorruptionConfig):
        raise TypeError(f"config must be a CorruptionConfig, got {type(config).__name__}")
    for key in ("field", "chi", "mask", "voxel_size", "b0_dir"):
        if key not in sample:
            raise ValueError(f"sample must have a {key!r} entry (as generate_sample returns)")
    field = np.asarray(sample["field"], np.float32)
    chi = np.asarray(sample["chi"], np.float32)
    mask = np.asarray(sample["mask"], bool)
    if not field.shape == chi.shape == mask.shape or field.ndim != 3:
        raise ValueError(f"sample field, chi and mask must be 3D of one shape, got {field.shape}, "
                         f"{chi.shape}, {mask.shape}")
    vsz = as_voxel_size(sample["voxel_size"], "sample['voxel_size']")
    b0 = as_b0_dir(sample["b0_dir"], "sample['b0_dir']")
    rng = np.random.default_rng(rng)
    c = config
    shape = field.shape
    drawn = {
        "anisotropy": float(rng.uniform(*c.anisotropy)),
        "microstructure": float(rng.uniform(*c.microstructure)),
        "exchange": float(rng.uniform(*c.exchange)),
        "noise_median": float(rng.uniform(*c.noise_median)),
        "residue_sd": float(rng.uniform(*c.residue_sd)),
        "residue_decay_mm": float(rng.uniform(*c.residue_decay_mm)),
        "erosion_mm": float(rng.uniform(*c.erosion_mm)),
    }

    # (d) the mask: edge moved inwards by erosion + a smooth wobble, inside the old mask
    reach = 4.0 * max(c.edge_mm, drawn["residue_decay_mm"]) + drawn["erosion_mm"] + 3 * c.mask_wobble_mm
    dist_old = _edge_distance(mask, vsz, reach)
    wobble = c.mask_wobble_mm * _smooth(shape, 7.5 / vsz, rng)
    new = mask & (dist_old > np.maximum(drawn["erosion_mm"] + wobble, 0.0) + 0.5 * float(vsz.min()))
    new = ndi.binary_fill_holes(new)
    if new.sum() < 0.3 * max(mask.sum(), 1):  # a thin sliver of brain: keep the old mask
        new = mask.copy()
    dist = _edge_distance(new, vsz, reach)

    # (a) non-dipolar fields in white-matter-like regions
    wm = ndi.gaussian_filter(((chi < c.wm_threshold) & mask).astype(np.float32), 1.0 / vsz)
    fibres = fibre_directions(shape, voxel_size=vsz, correlation_mm=c.fibre_correlation_mm,
                              rng=rng)
    extra = (anisotropy_field(wm, fibres, delta_chi=drawn["anisotropy"], voxel_size=vsz,
                              b0_dir=b0)
             + microstructure_field(wm, fibres, amplitude=drawn["microstructure"], b0_dir=b0)
             + np.float32(drawn["exchange"]) * wm).astype(np.float32)

    # (c) background residue: the field of smooth sources outside the original mask, decaying
    # from the new mask's edge inwards
    src = _smooth(shape, c.residue_source_mm / vsz / 2.0, rng) * (~mask)
    if src.any():
        g = forward_field(src, voxel_size=vsz, b0_dir=b0, pad="auto")
    else:  # the patch is all brain: sources just beyond the patch, as smooth harmonic-like noise
        g = _smooth(shape, c.residue_source_mm / vsz, rng)
    inside = new & (dist < 2.0 * drawn["residue_decay_mm"])
    if inside.sum() < 1000:  # hardly any edge in the patch: normalise over the whole mask
        inside = new if new.any() else np.ones(shape, bool)
    g = g - float(g[inside].mean())
    # the outside sources' field falls off steeply inwards: normalise it by its local rms
    # (over ~4 mm), so that exp(-d / L) alone sets how the residue decays
    local = np.sqrt(ndi.gaussian_filter(g * g, 4.0 / vsz))
    g = g / np.maximum(local, 1e-3 * max(float(local.max()), 1e-12))
    g = g / max(float(g[inside].std()), 1e-12)
    residue = (np.float32(drawn["residue_sd"]) * g * np.exp(-dist / drawn["residue_decay_mm"]))
    residue = residue.astype(np.float32)

    # (b) noise: sd inversely proportional to a smooth magnitude that darkens at the edge
    mag = np.exp(c.magnitude_contrast * _smooth(shape, 10.0 / vsz, rng))
    mag *= 1.0 - c.edge_darkening * np.exp(-dist / c.edge_mm)
    inv = (1.0 / np.maximum(mag, 0.05)).astype(np.float32)
    med = float(np.median(inv[new])) if new.any() else 1.0
    noise_std = (np.float32(drawn["noise_median"] / med) * inv).astype(np.float32)
    noise = rng.standard_normal(shape).astype(np.float32) * noise_std

    out_field = np.where(new, field + extra + residue + noise, np.float32(0.0)).astype(np.float32)
    out = {
        "field": np.ascontiguousarray(out_field),
        "chi": np.ascontiguousarray(np.where(new, chi, np.float32(0.0)).astype(np.float32)),
        "mask": np.ascontiguousarray(new),
        "voxel_size": np.asarray(sample["voxel_size"], np.float32).reshape(3).copy(),
        "b0_dir": np.asarray(sample["b0_dir"], np.float32).reshape(3).copy(),
        "noise_std": np.where(new, noise_std, np.float32(0.0)).astype(np.float32),
    }
    if return_parts:
        out["parts"] = {"extra": extra * new, "residue": residue * new, "noise": noise * new,
                        "edge_distance": dist, "drawn": drawn}
    return out
