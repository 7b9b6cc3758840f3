"""Synthetic training data for the QSM networks: (local field, susceptibility, mask) patches.

Meta-QSM (Koch KM et al., section 2.1) trains only on synthetic data: one in-vivo susceptibility
map, elastically distorted, with random geometric "bleeds" and "calcifications", contrast
changes, a random voxel size in (0.5-1.0, 0.5-1.0, 2.0-4.0) mm and the local field from the
forward dipole model, cropped to 128 x 128 x 64. We have no in-vivo map to ship, so the base maps
come from the MNI152 tissue probability maps (:mod:`metaqsm.simulate.anatomy`) with random tissue
values, veins and texture, mixed with purely geometric scenes (as DeepQSM, Bollmann et al. 2019).

One sample, all random choices from ``numpy.random.default_rng((seed, index))``:

1. A target voxel size ``v`` (uniform in ``voxel_size_range``) and B0 direction (uniform on the
   cap of half-angle ``max_tilt_deg`` around the third axis).
2. A *fine grid* that divides each target voxel into an integer number of fine voxels
   ``f = max(min_subdivision, ceil(v / fine_voxel_max))`` (2 x 2 x 2-4 by default, fine voxels
   0.25-0.5 mm in-plane and about 1 mm through-plane), covering the patch plus ``margin_mm`` on
   every side (rounded up to fast FFT lengths).
3. The base map on an intermediate *anatomy grid* (about ``anatomy_voxel`` mm; the MNI maps have
   no finer detail), through one coordinate map that composes a random rotation, flips, scaling,
   translation and a Simard elastic displacement (drawn on a coarse control grid), sampled once
   by trilinear interpolation; then linearly upsampled to the fine grid. Texture and contrast
   changes (per-tissue values, gamma, global scale) are applied on the way.
4. Veins (random smooth tubes) and lesions (ellipsoids, spheres, cuboids, cylinders: bleeds up to
   +1.5 ppm, calcifications down to -1 ppm) drawn on the fine grid, so their edges are sharper
   than the target voxels.
5. The local field by :func:`metaqsm.kernels.forward_field` on the fine grid (all sources in the
   region present, so the field inside the patch includes the neighbours' contributions).
6. Field and susceptibility reduced together to the target voxel size (``"block"``: averages over
   the f fine voxels of each target voxel; ``"kspace"``: truncation of the spectrum), then
   cropped to the patch; the mask is the brain occupancy >= 1/2; optional field noise.

Simulating on a grid finer than the target avoids the "inverse crime" of generating the data
with the very discretisation the network inverts (Kaipio & Somersalo 2007).

References
----------
Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction (Koch KM et al.,
Medical College of Wisconsin; the paper this package implements).
Bollmann S, Rasmussen KGB, Kristensen M, et al. DeepQSM - using deep learning to solve the dipole
inversion for quantitative susceptibility mapping. NeuroImage 2019;195:373-383.
Simard PY, Steinkraus D, Platt JC. Best practices for convolutional neural networks applied to
visual document analysis. ICDAR 2003:958-963.
Kaipio J, Somersalo E. Statistical inverse problems: discretization, model reduction and
inverse crimes. J Comput Appl Math 2007;198:493-504.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from .._validate import as_int
from .._fft import irfft, rfft
from ..kernels import forward_field, padded_shape
from . import augment
from .anatomy import add_veins, mni_maps, tissue_susceptibility

__all__ = [
    "SynthConfig",
    "flip_sample",
    "VARIANT_FLIPS",
    "FineScene",
    "generate_sample",
    "fine_scene",
    "draw_fine_scene",
    "finish_scene",
    "block_reduce",
    "kspace_reduce",
    "TRAIN_SEED_LIMIT",
    "DATASET_FILE",
    "MANIFEST_FILE",
    "SHAPES",
    "memory_estimate",
]

TRAIN_SEED_LIMIT = 10 ** 6  # training seeds are 0 <= seed < 10**6 (test sets use other streams)
DATASET_FILE = "synth.h5"  # file names of a data set folder written by ``metaqsm synth``
MANIFEST_FILE = "manifest.json"
SHAPES = ("ellipsoid", "sphere", "cuboid", "cylinder")
_REDUCTIONS = ("block", "kspace")
_PADS = ("none", "auto")
_MAX_PLACEMENT_TRIES = 30
# peak bytes of one sample per voxel of the field's FFT grid (padded copy, kernel, half spectrum,
# output and the kernel's temporaries) and per fine-grid voxel (susceptibility, mask, reduction):
# 8.5 GiB for test volume paper/099 (256 x 256 x 64 at 0.83 x 0.95 x 4.0 mm, FFT grid
# 1024 x 1024 x 512), whose measured peak resident set was 8.4 GiB (/usr/bin/time -v)
_BYTES_PER_FFT_VOXEL = 16
_BYTES_PER_FINE_VOXEL = 8


@dataclass
class SynthConfig:
    """Every parameter of the synthetic data generator (defaults: the Meta-QSM paper's setting).

    Ranges are ``(low, high)`` pairs drawn uniformly per sample; counts are inclusive integer
    ranges. Susceptibilities are in ppm relative to CSF.
    """

    # geometry
    patch_shape: tuple = (128, 128, 64)  # voxels, the training crop (paper: 128 x 128 x 64)
    voxel_size_range: tuple = ((0.5, 1.0), (0.5, 1.0), (2.0, 4.0))  # mm, (low, high) per axis
    max_tilt_deg: float = 0.0  # degrees, B0 tilt away from the third axis (0: along it)
    fine_voxel_max: tuple = (0.5, 0.5, 1.0)  # mm, largest fine-grid voxel per axis
    min_subdivision: tuple = (2, 2, 2)  # fine voxels per target voxel, at least, per axis
    anatomy_voxel: float = 1.2  # mm, coarsest grid of the warped MNI maps (theirs: 1 mm)
    margin_mm: float = 16.0  # mm of sources simulated around the patch on every side
    field_pad: str = "none"  # "none": periodic FFT over patch+margin; "auto": zero-pad x2
    # source mix
    anatomy_weight: float = 0.8  # relative frequency of MNI-anatomy scenes
    geometric_weight: float = 0.2  # relative frequency of geometric (DeepQSM-like) scenes
    # geometric augmentation
    rotation_deg: float = 15.0  # degrees, uniform in +-rotation_deg about each axis
    flip_prob: tuple = (0.5, 0.5, 0.2)  # probability of flipping each axis
    scale_range: tuple = (0.85, 1.15)  # brain size factor per axis
    elastic_sigma_mm: float = 12.0  # mm, smoothness of the elastic displacement (Simard sigma)
    elastic_alpha_mm: float = 3.0  # mm, RMS of the elastic displacement
    # tissue values and contrast (ppm)
    wm_range: tuple = (-0.06, -0.01)  # ppm, white matter
    cortex_range: tuple = (-0.01, 0.04)  # ppm, cortical grey matter
    deep_range: tuple = (0.02, 0.2)  # ppm, each deep grey nucleus
    deep_gradient_range: tuple = (0.0, 0.1)  # ppm, extra iron at the nuclei's cores
    texture_range: tuple = (0.0, 0.01)  # ppm, standard deviation of smooth texture
    texture_scale_mm: float = 2.0  # mm, correlation length of the texture
    gamma_range: tuple = (0.7, 1.4)  # gamma of the sign-keeping intensity change
    global_scale_range: tuple = (0.6, 1.6)  # factor on the tissue contrast
    # veins
    vein_count: tuple = (0, 12)  # veins per sample (inclusive)
    vein_value_range: tuple = (0.15, 0.6)  # ppm
    vein_radius_range: tuple = (0.3, 1.5)  # mm
    vein_length_range: tuple = (15.0, 80.0)  # mm
    # lesions
    bleed_count: tuple = (0, 2)  # bleeds per sample (inclusive)
    bleed_value_range: tuple = (0.2, 1.5)  # ppm, paramagnetic
    bleed_radius_range: tuple = (1.0, 12.0)  # mm, semi-axes
    calcification_count: tuple = (0, 2)  # calcifications per sample (inclusive)
    calcification_value_range: tuple = (-1.0, -0.1)  # ppm, diamagnetic
    calcification_radius_range: tuple = (0.5, 5.0)  # mm, semi-axes
    # geometric scenes
    shape_count: tuple = (10, 50)  # shapes per geometric scene (inclusive)
    shape_value_range: tuple = (-0.15, 0.3)  # ppm
    shape_radius_range: tuple = (2.0, 25.0)  # mm, semi-axes
    # field and crop
    field_noise_range: tuple = (0.0, 0.003)  # ppm, standard deviation of the field noise
    reduction: str = "block"  # "block" (area average) or "kspace" (spectrum truncation)
    min_brain_fraction: float = 0.5  # of the patch in the brain, or of the brain in the patch

    def __post_init__(self):
        self.patch_shape = tuple(as_int(n, "patch_shape", minimum=4) for n in self.patch_shape)
        if len(self.patch_shape) != 3:
            raise ValueError(f"patch_shape must have 3 values, got {self.patch_shape}")
        vr = np.asarray(self.voxel_size_range, float)
        if vr.shape != (3, 2) or not np.all(np.isfinite(vr)) or np.any(vr[:, 0] <= 0) \
                or np.any(vr[:, 1] < vr[:, 0]):
            raise ValueError("voxel_size_range must be 3 (low, high) pairs of positive mm with "
                             f"low <= high, got {self.voxel_size_range}")
        self.voxel_size_range = tuple(tuple(float(x) for x in r) for r in vr)
        if not 0.0 <= float(self.max_tilt_deg) <= 90.0:
            raise ValueError(f"max_tilt_deg must be in [0, 90] degrees, got {self.max_tilt_deg}")
        self.max_tilt_deg = float(self.max_tilt_deg)
        fv = np.asarray(self.fine_voxel_max, float)
        if fv.shape != (3,) or np.any(fv <= 0):
            raise ValueError(f"fine_voxel_max must be 3 positive mm, got {self.fine_voxel_max}")
        self.fine_voxel_max = tuple(float(x) for x in fv)
        self.min_subdivision = tuple(as_int(n, "min_subdivision", minimum=1)
                                     for n in self.min_subdivision)
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {self.reduction!r}")
        if self.field_pad not in _PADS:
            raise ValueError(f"field_pad must be one of {_PADS}, got {self.field_pad!r}")
        if self.anatomy_weight < 0 or self.geometric_weight < 0 \
                or self.anatomy_weight + self.geometric_weight <= 0:
            raise ValueError("anatomy_weight and geometric_weight must be >= 0 with a positive "
                             f"sum, got {self.anatomy_weight}, {self.geometric_weight}")
        if not 0.0 <= self.min_brain_fraction <= 1.0:
            raise ValueError(f"min_brain_fraction must be in [0, 1], got {self.min_brain_fraction}")
        for name in ("anatomy_voxel", "elastic_sigma_mm", "texture_scale_mm"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.margin_mm < 0 or self.elastic_alpha_mm < 0 or self.rotation_deg < 0:
            raise ValueError("margin_mm, elastic_alpha_mm and rotation_deg must be >= 0")
        self.flip_prob = tuple(float(p) for p in np.broadcast_to(self.flip_prob, (3,)))
        for f in dataclasses.fields(self):
            if f.name.endswith(("_range", "_count")) and f.name != "voxel_size_range":
                lo, hi = getattr(self, f.name)
                if not hi >= lo:
                    raise ValueError(f"{f.name} must be (low, high) with low <= high, "
                                     f"got {getattr(self, f.name)}")
                cast = int if f.name.endswith("_count") else float
                if cast is int and (lo < 0 or int(lo) != lo or int(hi) != hi):
                    raise ValueError(f"{f.name} must be non-negative integers, got ({lo}, {hi})")
                setattr(self, f.name, (cast(lo), cast(hi)))

    def to_dict(self):
        """A JSON-ready dict (tuples become lists)."""
        def plain(x):
            if isinstance(x, tuple):
                return [plain(y) for y in x]
            return x
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SynthConfig field(s) {unknown}; known: {sorted(names)}")

        def tup(x):
            return tuple(tup(y) for y in x) if isinstance(x, (list, tuple)) else x
        return cls(**{k: tup(v) for k, v in d.items()})


@dataclass
class FineScene:
    """A sample before reduction: the susceptibility on the fine grid and its geometry.

    Attributes
    ----------
    chi : (FX, FY, FZ) float32
        Susceptibility (ppm) on the fine grid (patch plus margin).
    mask : (FX, FY, FZ) bool
        Brain on the fine grid.
    fine_voxel : (3,) float
        Fine voxel size (mm) = ``voxel_size / factors``.
    factors : (3,) int
        Fine voxels per target voxel.
    offset : (3,) int
        Position of the patch in the reduced region (target voxels).
    voxel_size : (3,) float
        Target voxel size (mm).
    b0_dir : (3,) float
        Unit B0 direction in voxel coordinates.
    source : str
        ``"anatomy"`` or ``"geometric"``.
    """

    chi: np.ndarray
    mask: np.ndarray
    fine_voxel: np.ndarray
    factors: np.ndarray
    offset: np.ndarray
    voxel_size: np.ndarray
    b0_dir: np.ndarray
    source: str


# ----------------------------------------------------------------------------------------------
# reductions

def block_reduce(x, factors):
    """Average over blocks of ``factors`` voxels; non-integer factors are area weighted.

    Output voxel ``k`` of an axis covers ``[k f, (k + 1) f)`` input voxels; each input voxel
    contributes its overlap with that interval, divided by ``f`` (exact for the piecewise-constant
    interpretation of the input). Integer factors take a fast reshape path.

    Parameters
    ----------
    x : (X, Y, Z) array
    factors : float or 3 floats >= 1

    Returns
    -------
    (floor(X / fx), floor(Y / fy), floor(Z / fz)) float32 array
    """
    f = np.broadcast_to(np.asarray(factors, float), (3,))
    if not np.all(np.isfinite(f)) or np.any(f < 1):
        raise ValueError(f"factors must be >= 1, got {tuple(f)}")
    out = np.asarray(x, np.float32)
    for axis in (2, 1, 0):
        fa = float(f[axis])
        n = out.shape[axis]
        m = int(math.floor(n / fa + 1e-9))
        if m < 1:
            raise ValueError(f"axis {axis} of length {n} is shorter than the factor {fa}")
        if fa == 1:
            continue
        if fa == int(fa):
            # strided adds: much faster than a sum over a short trailing axis
            k = int(fa)

            def part(j, k=k, m=m, axis=axis):
                sl = [slice(None)] * 3
                sl[axis] = slice(j, m * k, k)
                return out[tuple(sl)]
            red = part(0) + part(1)
            for j in range(2, k):
                red += part(j)
            red *= np.float32(1.0 / k)
            out = red
            continue
        moved = np.moveaxis(out, axis, -1)
        cum = np.concatenate([np.zeros(moved.shape[:-1] + (1,)), np.cumsum(moved, -1, np.float64)], -1)
        edges = np.arange(m + 1) * fa
        lo = np.minimum(np.floor(edges).astype(int), n - 1)
        frac = edges - lo
        integral = cum[..., lo] + frac * moved[..., lo]
        red = (np.diff(integral, axis=-1) / fa).astype(np.float32)
        out = np.moveaxis(red, -1, axis)
    return np.ascontiguousarray(out)


def kspace_reduce(x, factors):
    """Reduce by truncating the spectrum: keep the frequencies of the coarse grid.

    The output is the coarse grid's band-limited version of ``x`` on the same field of view (its
    mean is kept), sampled at the centres of the blocks of ``factors`` input voxels, like
    :func:`block_reduce`. Integer factors that divide the shape.

    Parameters
    ----------
    x : (X, Y, Z) array
    factors : 3 ints

    Returns
    -------
    (X / fx, Y / fy, Z / fz) float32 array
    """
    x = np.asarray(x, np.float32)
    f = [int(k) for k in np.broadcast_to(np.asarray(factors), (3,))]
    if any(k < 1 for k in f) or any(n % k for n, k in zip(x.shape, f)):
        raise ValueError(f"factors must be integers >= 1 dividing the shape {x.shape}, got {f}")
    shape = tuple(n // k for n, k in zip(x.shape, f))
    spec = rfft(x)
    keep = []
    for axis, (n_in, n_out) in enumerate(zip(x.shape, shape)):
        if axis == 2:
            keep.append(np.arange(n_out // 2 + 1))
        else:
            keep.append(np.round(sfft.fftfreq(n_out) * n_out).astype(int) % n_in)
    sub = spec[np.ix_(*keep)]
    # sample at the centres of the blocks (as block averaging does), not at their first voxel:
    # a shift by (f - 1) / 2 fine voxels is a phase ramp on the kept frequencies
    for axis, (n_in, n_out, k) in enumerate(zip(x.shape, shape, f)):
        if k == 1:
            continue
        freq = sfft.rfftfreq(n_out) * n_out if axis == 2 else sfft.fftfreq(n_out) * n_out
        ramp = np.exp(2j * np.pi * freq * ((k - 1) / 2.0) / n_in).astype(np.complex64)
        view = [1, 1, 1]
        view[axis] = -1
        sub = sub * ramp.reshape(view)
    out = irfft(sub, shape)
    return (out * (np.prod(shape) / np.prod(x.shape))).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# drawing helpers

def _positions(n, spacing, origin):
    """Centres (mm) of ``n`` cells of ``spacing`` starting at ``origin`` (the low edge)."""
    return origin + (np.arange(n) + 0.5) * spacing


def _render_shape(out, value, kind, centre, radii, rot, spacing, origin, *, clip=None, add=False):
    """Fill a rotated shape on a grid, in place, touching only its bounding box.

    Grid cell ``j`` of axis ``i`` has its centre at ``origin[i] + (j + 0.5) * spacing[i]`` mm;
    ``radii`` are semi-axes (mm) in the shape's frame ``rot`` (columns = its axes).
    """
    radii = np.asarray(radii, float)
    if kind == "sphere":
        radii = np.full(3, radii[0])
    reach = float(np.linalg.norm(radii))
    sl = []
    for i in range(3):
        lo = int(math.floor((centre[i] - reach - origin[i]) / spacing[i] - 0.5))
        hi = int(math.ceil((centre[i] + reach - origin[i]) / spacing[i] + 0.5))
        lo, hi = max(lo, 0), min(hi, out.shape[i])
        if hi <= lo:
            return out
        sl.append(slice(lo, hi))
    d = [(_positions(s.stop - s.start, spacing[i], origin[i] + s.start * spacing[i])
          - centre[i]).astype(np.float32) for i, s in enumerate(sl)]
    d = [d[0][:, None, None], d[1][None, :, None], d[2][None, None, :]]
    local = [d[0] * np.float32(rot[0, k]) + d[1] * np.float32(rot[1, k])
             + d[2] * np.float32(rot[2, k]) for k in range(3)]
    if kind in ("ellipsoid", "sphere"):
        inside = sum((local[k] / np.float32(radii[k])) ** 2 for k in range(3)) <= 1.0
    elif kind == "cuboid":
        inside = ((np.abs(local[0]) <= radii[0]) & (np.abs(local[1]) <= radii[1])
                  & (np.abs(local[2]) <= radii[2]))
    elif kind == "cylinder":
        inside = (((local[0] / np.float32(radii[0])) ** 2 + (local[1] / np.float32(radii[1])) ** 2
                   <= 1.0) & (np.abs(local[2]) <= radii[2]))
    else:
        raise ValueError(f"kind must be one of {SHAPES}, got {kind!r}")
    sl = tuple(sl)
    if clip is not None:
        inside = inside & clip[sl]
    view = out[sl]
    if add:
        view[inside] += np.float32(value)
    else:
        view[inside] = np.float32(value)
    return out


def _random_shapes(out, rng, *, count, value_range, radius_range, spacing, origin, where,
                   clip=None, add_prob=0.0):
    """Draw ``count`` random shapes centred at random cells listed in ``where`` (flat indices)."""
    if where.size == 0:
        return out
    for _ in range(int(count)):
        kind = SHAPES[rng.integers(len(SHAPES))]
        value = rng.uniform(*value_range)
        # log-uniform sizes: small shapes as often as large ones
        radii = np.exp(rng.uniform(np.log(radius_range[0]), np.log(radius_range[1]), 3))
        rot = augment.random_orthonormal(rng)
        cell = np.array(np.unravel_index(where[rng.integers(where.size)], out.shape))
        centre = origin + (cell + rng.random(3)) * spacing
        _render_shape(out, value, kind, centre, radii, rot, spacing, origin, clip=clip,
                      add=bool(rng.random() < add_prob))
    return out


def _random_b0(max_tilt_deg, rng):
    """Uniform on the spherical cap of half-angle ``max_tilt_deg`` around the third axis."""
    if max_tilt_deg <= 0:
        return np.array([0.0, 0.0, 1.0])
    cmin = math.cos(math.radians(max_tilt_deg))
    cz = rng.uniform(cmin, 1.0)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    s = math.sqrt(max(1.0 - cz * cz, 0.0))
    return np.array([s * math.cos(phi), s * math.sin(phi), cz])


def _smooth_noise(shape, rng, sigma=1.0):
    from scipy.ndimage import gaussian_filter

    n = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / max(float(n.std()), 1e-12)


# ----------------------------------------------------------------------------------------------
# the generator

@dataclass
class _Grid:
    voxel: np.ndarray  # target voxel (mm)
    factors: np.ndarray  # fine voxels per target voxel
    fine_voxel: np.ndarray
    anat: np.ndarray  # fine voxels per anatomy voxel (divides the fine shape)
    region: np.ndarray  # region shape in target voxels
    offset: np.ndarray  # patch offset in the region (target voxels)
    origin: np.ndarray  # mm of the region's low edge, relative to the patch centre

    @property
    def fine_shape(self):
        return np.asarray(self.region * self.factors, int)

    @property
    def anat_shape(self):
        return tuple(int(n) for n in self.fine_shape // self.anat)

    @property
    def anat_voxel(self):
        return self.fine_voxel * self.anat


def _make_grid(config, voxel):
    patch = np.asarray(config.patch_shape)
    f = np.maximum(np.asarray(config.min_subdivision),
                   np.ceil(voxel / np.asarray(config.fine_voxel_max) - 1e-9)).astype(int)
    u = voxel / f
    # anatomy grid: the coarsest integer multiple of the fine voxel not above anatomy_voxel
    anat = np.maximum(1, np.floor(config.anatomy_voxel / u + 1e-9)).astype(int)
    margin = np.ceil(config.margin_mm / voxel - 1e-9).astype(int)
    region = patch + 2 * margin
    for i in range(3):  # grow the high margin until the fine length is a fast FFT length
        while True:  # and a multiple of the anatomy factor
            n = int(region[i] * f[i])
            if n % anat[i] == 0 and sfft.next_fast_len(n, real=True) == n:
                break
            region[i] += 1
    origin = -(margin + patch / 2.0) * voxel
    return _Grid(voxel=voxel, factors=f, fine_voxel=u, anat=anat, region=region, offset=margin,
                 origin=origin)


def _grid_bytes(config, grid):
    fine = tuple(int(n) for n in grid.fine_shape)
    fft = padded_shape(fine, 0 if config.field_pad == "none" else "auto")
    return _BYTES_PER_FFT_VOXEL * math.prod(fft) + _BYTES_PER_FINE_VOXEL * math.prod(fine), fine, fft


def memory_estimate(config=None, voxel_size=None):
    """Peak memory (bytes, an estimate) of generating one sample.

    The generator simulates on a fine grid around the patch (``margin_mm``, subdivisions of at
    most ``fine_voxel_max``) and takes the field's FFT on it (doubled per axis with
    ``field_pad="auto"``): memory grows with the patch, the voxel size's subdivisions and the
    padding. For a voxel size (3 mm values) it is that sample's estimate, else the largest over
    ``config.voxel_size_range`` (every subdivision step in the range is tried). A sample whose
    estimate exceeds the memory the system reports as available raises ``MemoryError`` before
    anything large is allocated.

    Examples
    --------
    >>> round(memory_estimate(SynthConfig(patch_shape=(64, 64, 32)), (1.0, 1.0, 2.0)) / 2**20)
    81
    """
    config = SynthConfig() if config is None else config
    if not isinstance(config, SynthConfig):
        raise TypeError(f"config must be a SynthConfig, got {type(config).__name__}")
    if voxel_size is not None:
        v = np.asarray(voxel_size, float)
        if v.shape != (3,) or not np.all(v > 0):
            raise ValueError(f"voxel_size must be 3 positive mm, got {voxel_size!r}")
        return _grid_bytes(config, _make_grid(config, v))[0]
    # per axis, the fine length is largest at the range's low end or just above a step of the
    # subdivision (where the margin in voxels is largest for that subdivision)
    fv = np.asarray(config.fine_voxel_max)
    candidates = []
    for axis, (lo, hi) in enumerate(config.voxel_size_range):
        steps = np.arange(math.floor(lo / fv[axis]) + 1, math.ceil(hi / fv[axis]) + 1) * fv[axis]
        c = [lo, hi] + [x * (1 + 1e-6) for x in steps if lo <= x * (1 + 1e-6) <= hi]
        candidates.append(c)
    return max(_grid_bytes(config, _make_grid(config, np.array(v)))[0]
               for v in itertools.product(*candidates))


def _available_memory():
    """Bytes the kernel reports as available (``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_memory(config, grid):
    need, fine, fft = _grid_bytes(config, grid)
    avail = _available_memory()
    if avail is not None and need > avail:
        gib = 2.0 ** 30
        raise MemoryError(
            f"a synthetic sample with patch_shape={config.patch_shape} at voxel size "
            f"{tuple(round(float(v), 3) for v in grid.voxel)} mm needs about {need / gib:.1f} GiB "
            f"(fine grid {fine}, field FFT grid {fft}) but {avail / gib:.1f} GiB are available: "
            "use a smaller patch_shape or voxel_size_range, a larger fine_voxel_max, a smaller "
            "margin_mm or field_pad='none', or free memory")


def _coordinate_map(grid, affine, centre, disp_rng, config):
    """Source coordinates (mm, in the source's frame) of every anatomy-grid cell.

    ``source = affine @ p + centre + elastic(p)`` for cell centres ``p`` (mm, relative to the
    patch centre). Evaluated on a control grid with a one-cell border and upsampled linearly
    (exact for the affine part).
    """
    ua = grid.anat_voxel
    na = np.asarray(grid.anat_shape)
    ctrl_mm = max(2.0, config.elastic_sigma_mm / 3.0)
    c = np.maximum(1, np.round(ctrl_mm / ua)).astype(int)
    nc = -(-na // c) + 2  # ceil, plus a border cell on each side
    spacing = c * ua
    pos = [grid.origin[i] + (np.arange(nc[i]) - 1 + 0.5) * spacing[i] for i in range(3)]
    P = np.meshgrid(*pos, indexing="ij")
    coords = np.stack([affine[k, 0] * P[0] + affine[k, 1] * P[1] + affine[k, 2] * P[2]
                       + centre[k] for k in range(3)]).astype(np.float32)
    if config.elastic_alpha_mm > 0:
        coords += augment.elastic_displacement(tuple(nc), sigma=config.elastic_sigma_mm / spacing,
                                               alpha=config.elastic_alpha_mm, rng=disp_rng)
    out = np.empty((3,) + tuple(int(n) for n in na), np.float32)
    for k in range(3):
        up = augment.upsample_linear(coords[k], c)
        out[k] = up[c[0]: c[0] + na[0], c[1]: c[1] + na[1], c[2]: c[2] + na[2]]
    return out


def _placement(grid, config, rng, inside, volume_mm3, linear, draw_centre):
    """Choose the source point under the patch centre so the crop is mostly brain.

    ``inside(q)`` says whether source points ``q`` (3, N) lie in the brain; the criterion is
    max(brain fraction of the patch, fraction of the brain in the patch) >= min_brain_fraction,
    checked on a subsampled patch grid without the elastic part. Returns the best of at most
    30 draws.
    """
    patch = np.asarray(config.patch_shape)
    step = np.maximum(1, patch // 24)
    pos = [(np.arange(0, patch[i], step[i]) + 0.5 - patch[i] / 2.0) * grid.voxel[i]
           for i in range(3)]
    P = np.stack([g.ravel() for g in np.meshgrid(*pos, indexing="ij")])
    base = linear @ P
    patch_mm3 = float(np.prod(patch * grid.voxel))
    region_brain = volume_mm3 / abs(np.linalg.det(linear))
    best, best_score = None, -1.0
    for _ in range(_MAX_PLACEMENT_TRIES):
        centre = draw_centre()
        frac = float(np.mean(inside(base + centre[:, None])))
        score = max(frac, min(frac * patch_mm3 / region_brain, 1.0))
        if score > best_score:
            best, best_score = centre, score
        if score >= config.min_brain_fraction:
            break
    return best


def _anatomy_base(grid, config, rng):
    """Warped MNI anatomy with random tissue values on the anatomy grid: (chi, brain)."""
    maps = mni_maps()
    flips = augment.random_flips(config.flip_prob, rng)
    rot = augment.random_rotation(config.rotation_deg, rng)
    scale = rng.uniform(*config.scale_range, 3)
    linear = rot @ np.diag(1.0 / scale) @ flips  # patch mm -> MNI voxels (1 mm)
    brain_idx = _brain_voxels()
    shape = np.asarray(maps.shape)

    def inside(q):
        i = np.rint(q).astype(int)
        ok = np.all((i >= 0) & (i < shape[:, None]), axis=0)
        res = np.zeros(q.shape[1], bool)
        res[ok] = maps.brain[i[0, ok], i[1, ok], i[2, ok]] > 0.5
        return res

    def draw_centre():
        return np.array(np.unravel_index(brain_idx[rng.integers(brain_idx.size)], maps.shape),
                        float) + rng.random(3) - 0.5

    centre = _placement(grid, config, rng, inside, maps.brain_volume_mm3, linear, draw_centre)
    coords = _coordinate_map(grid, linear, centre, rng, config)
    # compute the tissue map only in the box the coordinates reach
    lo = np.maximum(np.floor(coords.reshape(3, -1).min(1)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(coords.reshape(3, -1).max(1)).astype(int) + 2, shape)
    if np.any(hi <= lo):
        return np.zeros(grid.anat_shape, np.float32), np.zeros(grid.anat_shape, np.float32)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    coords -= lo[:, None, None, None].astype(np.float32)
    chi_src = tissue_susceptibility(
        maps, wm=rng.uniform(*config.wm_range), cortex=rng.uniform(*config.cortex_range),
        deep=rng.uniform(*config.deep_range, maps.n_deep),
        deep_gradient=rng.uniform(*config.deep_gradient_range), box=box)
    chi_src = augment.gamma_contrast(chi_src, rng.uniform(*config.gamma_range))
    chi_src *= np.float32(rng.uniform(*config.global_scale_range))
    # two real passes: scipy interpolates a complex volume about 3 times slower than a real one
    return augment.warp(chi_src, coords), augment.warp(maps.brain[box], coords)


@functools.lru_cache(maxsize=1)
def _brain_voxels():
    return np.flatnonzero(mni_maps().brain > 0.5)


def _geometric_base(grid, config, rng):
    """A DeepQSM-like scene: random shapes inside a deformed ellipsoidal "brain"."""
    radii = np.array([rng.uniform(55, 80), rng.uniform(60, 90), rng.uniform(45, 70)])
    flips = augment.random_flips(config.flip_prob, rng)
    rot = augment.random_rotation(config.rotation_deg, rng)
    linear = rot @ flips

    def inside(q):
        return np.sum((q / radii[:, None]) ** 2, axis=0) <= 1.0

    def draw_centre():
        d = rng.standard_normal(3)
        return 0.7 * radii * d / np.linalg.norm(d) * rng.random() ** (1 / 3)

    volume = 4.0 / 3.0 * math.pi * float(np.prod(radii))
    centre = _placement(grid, config, rng, inside, volume, linear, draw_centre)
    q = _coordinate_map(grid, linear, centre, rng, config)
    rho = np.sqrt(sum((q[k] / np.float32(radii[k])) ** 2 for k in range(3)))
    del q
    ramp = np.float32(radii.mean() / grid.anat_voxel.min())
    brain = np.clip((1.0 - rho) * ramp + 0.5, 0.0, 1.0).astype(np.float32)
    chi = np.full(grid.anat_shape, rng.uniform(-0.05, 0.05), np.float32)
    where = np.flatnonzero(brain >= 0.5)
    _random_shapes(chi, rng, count=rng.integers(config.shape_count[0], config.shape_count[1] + 1),
                   value_range=config.shape_value_range, radius_range=config.shape_radius_range,
                   spacing=grid.anat_voxel, origin=grid.origin, where=where, add_prob=0.3)
    chi *= brain
    return chi, brain


def _texture(grid, config, rng):
    """Smooth Gaussian texture (unit std) on the anatomy grid, correlation ~texture_scale_mm."""
    t = np.maximum(1, np.round(config.texture_scale_mm / grid.anat_voxel)).astype(int)
    na = np.asarray(grid.anat_shape)
    small = _smooth_noise(tuple(-(-na // t)), rng)
    up = augment.upsample_linear(small, t)
    return up[: na[0], : na[1], : na[2]]


def fine_scene(index, *, config=None, seed=0):
    """The fine-grid susceptibility of sample ``(seed, index)``, before field and reduction.

    :func:`generate_sample` equals :func:`finish_scene` of this scene with the same random
    generator state; tests use it to check the field against the forward model.

    Returns
    -------
    FineScene
    """
    config, rng = _setup(index, config, seed)
    return draw_fine_scene(config, rng)


def _setup(index, config, seed):
    config = SynthConfig() if config is None else config
    if not isinstance(config, SynthConfig):
        raise TypeError(f"config must be a SynthConfig, got {type(config).__name__}")
    index = as_int(index, "index", minimum=0)
    seed = as_int(seed, "seed", minimum=0)
    if seed >= TRAIN_SEED_LIMIT:
        raise ValueError(f"seed must be < {TRAIN_SEED_LIMIT} (larger seeds are reserved), got {seed}")
    return config, np.random.default_rng((seed, index))


def draw_fine_scene(config, rng):
    """The fine-grid scene drawn from ``rng`` under ``config`` (:func:`fine_scene` with a
    generator of the caller's own, as the evaluation sweeps use).

    Returns
    -------
    FineScene
    """
    vr = np.asarray(config.voxel_size_range)
    voxel = rng.uniform(vr[:, 0], vr[:, 1])
    b0 = _random_b0(config.max_tilt_deg, rng)
    grid = _make_grid(config, voxel)
    _check_memory(config, grid)  # a clear error instead of the kernel's OOM killer
    weights = np.array([config.anatomy_weight, config.geometric_weight], float)
    source = "anatomy" if rng.random() < weights[0] / weights.sum() else "geometric"
    if source == "anatomy":
        chi_a, brain_a = _anatomy_base(grid, config, rng)
    else:
        chi_a, brain_a = _geometric_base(grid, config, rng)
    tex_std = rng.uniform(*config.texture_range)
    if tex_std > 0:
        chi_a += np.float32(tex_std) * _texture(grid, config, rng) * brain_a
    where = np.flatnonzero(brain_a >= 0.5)
    chi = augment.upsample_linear(chi_a, grid.anat)
    mask = augment.upsample_linear(brain_a, grid.anat) >= 0.5
    del chi_a
    chi[~mask] = 0.0
    u = grid.fine_voxel
    add_veins(chi, mask, voxel_size=u,
              count=rng.integers(config.vein_count[0], config.vein_count[1] + 1),
              value_range=config.vein_value_range, radius_range=config.vein_radius_range,
              length_range=config.vein_length_range, rng=rng)
    # lesions: centres at brain cells of the anatomy grid, drawn on the fine grid
    for count, values, radii in (
            (config.bleed_count, config.bleed_value_range, config.bleed_radius_range),
            (config.calcification_count, config.calcification_value_range,
             config.calcification_radius_range)):
        n = rng.integers(count[0], count[1] + 1)
        for _ in range(int(n)):
            if where.size == 0:
                break
            cell = np.array(np.unravel_index(where[rng.integers(where.size)], brain_a.shape))
            centre = grid.origin + (cell + rng.random(3)) * grid.anat_voxel
            kind = SHAPES[rng.integers(len(SHAPES))]
            r = np.exp(rng.uniform(np.log(radii[0]), np.log(radii[1]), 3))
            _render_shape(chi, rng.uniform(*values), kind, centre, r,
                          augment.random_orthonormal(rng), u, grid.origin, clip=mask)
    return FineScene(chi=chi, mask=mask, fine_voxel=u, factors=grid.factors, offset=grid.offset,
                     voxel_size=voxel, b0_dir=b0, source=source)


def finish_scene(scene, *, config, rng):
    """Field on the fine grid, reduction to the target voxel size, crop, mask and noise.

    Parameters
    ----------
    scene : FineScene
    config : SynthConfig
    rng : numpy.random.Generator
        Draws the noise.

    Returns
    -------
    dict
        As :func:`generate_sample`.
    """
    pad = 0 if config.field_pad == "none" else "auto"
    field = forward_field(scene.chi, voxel_size=scene.fine_voxel, b0_dir=scene.b0_dir, pad=pad)
    reduce = block_reduce if config.reduction == "block" else kspace_reduce
    field = reduce(field, scene.factors)
    chi = reduce(scene.chi, scene.factors)
    occ = block_reduce(scene.mask, scene.factors)
    crop = tuple(slice(o, o + n) for o, n in zip(scene.offset, config.patch_shape))
    mask = occ[crop] >= 0.5
    chi = np.where(mask, chi[crop], np.float32(0.0)).astype(np.float32)
    field = np.where(mask, field[crop], np.float32(0.0)).astype(np.float32)
    sigma = rng.uniform(*config.field_noise_range)
    if sigma > 0:
        # phase noise of complex data is inversely proportional to the magnitude: a smooth
        # random magnitude between about 0.5 and 2 makes the noise level vary in space
        mag = np.exp(0.35 * _smooth_noise(mask.shape, rng, sigma=4.0))
        noise = rng.standard_normal(mask.shape).astype(np.float32) * (np.float32(sigma) / mag)
        field = np.where(mask, field + noise, np.float32(0.0)).astype(np.float32)
    return {
        "field": np.ascontiguousarray(field),
        "chi": np.ascontiguousarray(chi),
        "mask": np.ascontiguousarray(mask),
        "voxel_size": np.asarray(scene.voxel_size, np.float32),
        "b0_dir": np.asarray(scene.b0_dir, np.float32),
    }


#: Axis flips of the exact symmetry variants of a sample, in the order a stream uses them:
#: identity, then the 180-degree turn about the third axis (B0 unchanged when along it), then
#: single flips, and so on (see :func:`flip_sample`).
VARIANT_FLIPS = ((), (0, 1), (0,), (1,), (2,), (0, 1, 2), (0, 2), (1, 2))


def flip_sample(sample, axes):
    """The sample of the mirrored scene: every volume flipped along ``axes``, the B0 direction's
    components along them negated, the voxel size unchanged.

    Mirroring is an exact symmetry of the dipole model: with ``b'`` the mirrored B0 direction,
    ``D_b'(k) = D_b(k')`` for the mirrored wave vector ``k'``, so the field of the mirrored
    susceptibility is the mirrored field (on a periodic grid a flip is a reflection and a shift,
    and both commute with the convolution). A mirrored sample therefore costs no simulation and is
    as exact as the original; streams use it to get several training samples from one generated
    scene (``SyntheticStream(variants=...)``).

    Parameters
    ----------
    sample : dict
        As :func:`generate_sample` returns (numpy arrays).
    axes : sequence of int in {0, 1, 2}
        Axes to flip (empty: a copy of the sample).

    Returns
    -------
    dict
        A new sample; the input is not modified.

    Examples
    --------
    >>> s = generate_sample(0, config=SynthConfig(patch_shape=(16, 16, 8)), seed=1)
    >>> t = flip_sample(s, (0,))
    >>> bool((t["chi"] == s["chi"][::-1]).all()), float(t["b0_dir"][0]) == -float(s["b0_dir"][0])
    (True, True)
    """
    axes = tuple(sorted({int(a) for a in axes}))
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"axes must be a subset of (0, 1, 2), got {axes!r}")
    out = {}
    for key in ("field", "chi", "mask"):
        v = np.asarray(sample[key])
        out[key] = np.ascontiguousarray(np.flip(v, axes) if axes else v.copy())
    b0 = np.array(sample["b0_dir"], np.float32).reshape(3)
    for a in axes:
        b0[a] = -b0[a]
    out["b0_dir"] = b0
    out["voxel_size"] = np.array(sample["voxel_size"], np.float32).reshape(3)
    return out


def generate_sample(index, *, config=None, seed=0):
    """One synthetic training sample, reproducible from ``(seed, index)``.

    Parameters
    ----------
    index : int >= 0
        Sample number.
    config : SynthConfig, optional
        Generator parameters (default: ``SynthConfig()``, the paper's setting).
    seed : int
        Data set seed, ``0 <= seed < 10**6`` (larger values are reserved for test sets).

    Returns
    -------
    dict
        ``field`` (local field, ppm), ``chi`` (susceptibility, ppm), both float32 of
        ``config.patch_shape`` and zero outside the mask; ``mask`` (bool); ``voxel_size`` (3,)
        float32 mm; ``b0_dir`` (3,) float32 unit vector in voxel coordinates.

    Raises
    ------
    ValueError
        For a negative index or seed, or a seed >= 10**6.

    Examples
    --------
    >>> cfg = SynthConfig(patch_shape=(32, 32, 16))
    >>> s = generate_sample(0, config=cfg, seed=1)
    >>> s["field"].shape, s["chi"].dtype, s["mask"].dtype
    ((32, 32, 16), dtype('float32'), dtype('bool'))
    """
    config, rng = _setup(index, config, seed)
    return _generate(config, rng)


def _generate(config, rng):
    scene = draw_fine_scene(config, rng)
    return finish_scene(scene, config=config, rng=rng)
