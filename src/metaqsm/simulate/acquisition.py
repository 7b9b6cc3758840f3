"""A complete multi-echo gradient-echo acquisition simulated from a susceptibility map.

The forward model follows the structure of the QSM reconstruction challenge 2.0 simulation
(Marques et al. 2021) and of the ``qsm-forward`` package: a field model (dipole convolution of
the susceptibility, here with a head around the brain so that the background field is
realistic), a signal model (M0, T2* decay, phase), a smooth phase offset, complex Gaussian noise
and a change of resolution by k-space truncation. Everything is simulated on the fine grid of
the input and only then reduced to the output voxel size, as a scanner integrates over its
voxels: simulating directly on a coarse grid would miss intravoxel dephasing and the
partial-volume field.

Conventions: the voxel axes are taken as (left-right, posterior-anterior, inferior-superior),
which is where the air sinuses and the neck are placed; B0 may point in any direction.

References
----------
Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0: A realistic in silico
head phantom for MRI data simulation and evaluation of susceptibility mapping procedures. Magn
Reson Med 2021;86:526-542.
Salomir R, de Senneville BD, Moonen CT. A fast calculation method for magnetic field
inhomogeneity due to an arbitrary distribution of bulk susceptibility. Concepts Magn Reson B
2003;19B:26-34.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from .._validate import as_b0_dir, as_mask, as_positive, as_volume, as_voxel_size
from ..kernels import WORKERS, forward_field
from ..units import ppm_to_rad

__all__ = [
    "Acquisition",
    "simulate_acquisition",
    "head_model",
    "reduce_resolution",
    "shim",
    "DEFAULT_ECHO_TIMES",
    "HEAD_LABELS",
]

DEFAULT_ECHO_TIMES = (0.0104, 0.0174, 0.0244, 0.0314)
"""Echo times (s) of the Meta-QSM paper's 3 T research protocol."""

AIR_CHI = 9.4
"""Susceptibility of air relative to water/tissue, ppm (air +0.36, water -9.05 ppm, SI)."""

BONE_CHI = -2.0
"""Susceptibility of cortical bone relative to water, ppm (about -11 ppm SI)."""

# Head layers around the brain, as distances from the brain surface in mm.
CSF_MM = 2.0
SKULL_MM = 8.0
SCALP_MM = 14.0
NECK_MM = 30.0  # length of the neck below the head

HEAD_LABELS = {"air": 0, "brain": 1, "csf": 2, "skull": 3, "scalp": 4, "sinus": 5}
"""Labels of :func:`head_model`."""

# Default signal parameters per layer: proton density (a.u.) and R2* (1/s at 3 T).
_M0 = {"csf": 1.0, "skull": 0.05, "scalp": 0.8, "brain": 1.0}
_R2STAR = {"csf": 5.0, "skull": 300.0, "scalp": 30.0}
_R2STAR_BRAIN = 15.0        # 1/s at 3 T, tissue without iron
_R2STAR_PER_PPM = 150.0     # 1/s per ppm of |chi| at 3 T (iron, calcium, deoxyhaemoglobin)

def _fmt(values):
    """``(1.0, 1.0, 2.5)`` for messages (plain floats, not numpy reprs)."""
    return "(" + ", ".join(f"{float(v):g}" for v in np.ravel(values)) + ")"



@dataclass
class Acquisition:
    """A simulated multi-echo acquisition and its ground truth, at the output resolution.

    Attributes
    ----------
    magnitude : (X, Y, Z, E) float32
        Magnitude images (arbitrary units; the brain's first echo is about 1 before decay).
    phase : (X, Y, Z, E) float32
        Wrapped phase in radians, in (-pi, pi].
    local_field : (X, Y, Z) float32
        Field (ppm) of the susceptibility inside the brain mask alone.
    total_field : (X, Y, Z) float32
        Local plus background field (ppm): what the echo fit should recover, up to a constant.
    mask : (X, Y, Z) bool
        Brain mask.
    chi : (X, Y, Z) float32
        Susceptibility (ppm) inside the brain mask, zero outside.
    voxel_size : (3,) float64
        Output voxel size in mm.
    b0_dir : (3,) float64
        B0 direction in voxel coordinates.
    echo_times : (E,) float64
        Echo times in seconds.
    field_strength : float
        Tesla.
    background_field : (X, Y, Z) float32
        ``total_field - local_field`` (ppm), harmonic inside the brain.
    phase_offset : (X, Y, Z) float32
        The echo-independent phase offset (rad) put into the signal.
    noise_std : float
        Standard deviation of the complex noise in each of the real and imaginary channels.
    affine : (4, 4) float64 or None
        Voxel-to-world transform of the output grid, when an input affine was given.
    """

    magnitude: np.ndarray
    phase: np.ndarray
    local_field: np.ndarray
    total_field: np.ndarray
    mask: np.ndarray
    chi: np.ndarray
    voxel_size: np.ndarray
    b0_dir: np.ndarray
    echo_times: np.ndarray
    field_strength: float
    background_field: np.ndarray = field(default=None, repr=False)
    phase_offset: np.ndarray = field(default=None, repr=False)
    noise_std: float = 0.0
    affine: np.ndarray | None = None


def head_model(mask, *, voxel_size, neck_mm=NECK_MM):
    """Labels of a head around a brain mask, on a grid padded so the head fits.

    Layers by distance from the brain surface: CSF and meninges (0-2 mm), skull (2-8 mm), scalp
    (8-14 mm), air beyond; a neck below the brain; air-filled sinuses (frontal, sphenoid) and
    mastoid air cells inside the skull, anterior-inferior and lateral-inferior of the brain.
    Their sizes follow the brain's bounding box, so any brain shape or voxel size works.

    Parameters
    ----------
    mask : (X, Y, Z) bool
        Brain mask.
    voxel_size : 3 floats
        mm.
    neck_mm : float
        Length of the neck below the head (mm), added to the grid's lower z margin.

    Returns
    -------
    labels : (X + 2 mx, Y + 2 my, Z + 2 mz + nz) uint8
        See :data:`HEAD_LABELS`. The head extends beyond the field of view.
    offset : (3,) int
        Where the volume starts: ``labels[ox:ox+X, oy:oy+Y, oz:oz+Z]`` is its field of view.
    """
    vsz = as_voxel_size(voxel_size)
    mask = as_mask(mask, np.shape(mask), "mask")
    margin = np.ceil((SCALP_MM + 2.0) / vsz).astype(int)
    neck = int(np.ceil(as_positive(neck_mm, "neck_mm", allow_zero=True) / vsz[2]))
    lo = margin + np.array([0, 0, neck])
    brain = np.pad(mask, [(lo[0], margin[0]), (lo[1], margin[1]), (lo[2], margin[2])])
    # The layers are mm thick: a distance map on a grid of about 2 mm voxels is accurate enough
    # and an order of magnitude faster than on the fine grid.
    step = np.maximum(1, np.floor(2.0 / vsz)).astype(int)
    coarse = brain[::step[0], ::step[1], ::step[2]]
    dist = ndi.distance_transform_edt(~coarse, sampling=vsz * step)
    for axis, s in enumerate(step):
        dist = np.repeat(dist, s, axis=axis)
    dist = dist[:brain.shape[0], :brain.shape[1], :brain.shape[2]].astype(np.float32)
    dist[brain] = 0.0
    dist[(dist == 0) & ~brain] = 0.5 * float(vsz.min())

    # coordinates relative to the brain's bounding box (centre 0, half sizes 1)
    idx = np.argwhere(brain)
    lo_b, hi_b = idx.min(0), idx.max(0)
    centre = 0.5 * (lo_b + hi_b) * vsz
    half = np.maximum(0.5 * (hi_b - lo_b + 1) * vsz, 1.0)
    axes = [(np.arange(n) * d - c) / h for n, d, c, h in zip(brain.shape, vsz, centre, half)]
    X, Y, Z = np.meshgrid(*axes, indexing="ij", sparse=True)
    R = np.sqrt(X * X + Y * Y + Z * Z) + 1e-9

    def cone(direction, angle_deg):
        d = np.asarray(direction, float)
        d /= np.linalg.norm(d)
        return (X * d[0] + Y * d[1] + Z * d[2]) / R >= np.cos(np.deg2rad(angle_deg))

    shell = (dist > CSF_MM + 1.0) & (dist <= SCALP_MM - 1.0)
    sinus = shell & (cone((0.0, 0.82, -0.57), 16.0) | cone((0.0, 0.45, -0.9), 12.0))
    for side in (-1.0, 1.0):
        sinus |= shell & cone((0.72 * side, -0.15, -0.68), 9.0)
    neck_region = (Z < -0.5) & (((X / 0.5) ** 2 + ((Y + 0.1) / 0.6) ** 2) <= 1.0)

    labels = np.zeros(brain.shape, np.uint8)
    labels[(dist <= SCALP_MM) | neck_region] = HEAD_LABELS["scalp"]
    labels[(dist > CSF_MM) & (dist <= SKULL_MM)] = HEAD_LABELS["skull"]
    labels[(dist > 0) & (dist <= CSF_MM)] = HEAD_LABELS["csf"]
    labels[sinus] = HEAD_LABELS["sinus"]
    labels[brain] = HEAD_LABELS["brain"]
    return labels, lo


def _background_field(labels, offset, chi_outside, mask, vsz, b0):
    """Field (ppm) of the head's susceptibility in the field of view, by point dipoles.

    The image-space (point dipole) kernel keeps the field of sources outside the brain
    harmonic inside it (the k-space kernel rings around the 9.4 ppm air-tissue steps, which
    puts spurious sources into the brain). That kernel is cut at half the padded grid, so the
    grid is padded to twice the head's extent: every source then acts on every brain voxel
    through its nearest image.
    """
    shape = mask.shape
    inner = tuple(slice(o, o + n) for o, n in zip(offset, shape))
    # Susceptibility relative to air, so the zero padding beyond the grid is air.
    src = np.zeros(labels.shape, np.float32)
    src[labels != HEAD_LABELS["air"]] = -AIR_CHI
    src[labels == HEAD_LABELS["sinus"]] = 0.0
    src[labels == HEAD_LABELS["skull"]] += BONE_CHI
    src[inner] += chi_outside
    idx = np.argwhere(labels != HEAD_LABELS["air"])
    extent = idx.max(0) - idx.min(0) + 1
    # crop the grid to the head (and the field of view), then pad to twice the head's extent
    lo = np.minimum(idx.min(0), offset)
    hi = np.maximum(idx.max(0) + 1, np.asarray(offset) + shape)
    src = src[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    pad = [max(0, int(2 * e + 2 - n)) for e, n in zip(extent, src.shape)]
    bg = forward_field(src, voxel_size=vsz, b0_dir=b0, pad=tuple(pad), method="ispace")
    o = np.asarray(offset) - lo
    return bg[o[0]:o[0] + shape[0], o[1]:o[1] + shape[1], o[2]:o[2] + shape[2]]


def _shim_basis(mask, vsz, order):
    """Real solid harmonics up to ``order`` (0, 1 or 2) at the mask's voxels, in mm from its
    centre: the terms a scanner's shim coils produce (constant, x, y, z, xy, xz, yz,
    x^2 - y^2, 2 z^2 - x^2 - y^2)."""
    idx = np.argwhere(mask).astype(np.float64) * vsz
    x, y, z = (idx - idx.mean(0)).T / 100.0  # decimetres keep the matrix well conditioned
    terms = [np.ones_like(x)]
    if order >= 1:
        terms += [x, y, z]
    if order >= 2:
        terms += [x * y, x * z, y * z, x * x - y * y, 2 * z * z - x * x - y * y]
    return np.stack(terms, axis=1), idx.mean(0)


def shim(field, mask, *, voxel_size, order=2):
    """Remove the spherical harmonics up to ``order`` that best fit ``field`` inside ``mask``,
    as the scanner's shim does before an acquisition; returns the shimmed field (ppm).

    The removed terms are harmonic, so the local field and the harmonic character of the
    background are unchanged; only the background's large smooth part goes.
    """
    vsz = as_voxel_size(voxel_size)
    mask = as_mask(mask, np.shape(field), "mask")
    if order not in (0, 1, 2):
        raise ValueError(f"shim_order must be 0, 1 or 2, got {order!r}")
    A, centre = _shim_basis(mask, vsz, order)
    coef = np.linalg.lstsq(A, np.asarray(field, np.float64)[mask], rcond=None)[0]
    axes = [(np.arange(n) * d - c) / 100.0 for n, d, c in zip(np.shape(field), vsz, centre)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [1.0, x, y, z, x * y, x * z, y * z, x * x - y * y, 2 * z * z - x * x - y * y]
    fit = sum(c * t for c, t in zip(coef, terms[:len(coef)]))
    return (np.asarray(field, np.float64) - fit).astype(np.float32)


def _reduce_shape(shape, vsz, out_vsz, method):
    if method == "kspace":
        out = np.maximum(1, np.round(np.asarray(shape) * vsz / out_vsz)).astype(int)
        factors = np.asarray(shape) / out
    elif method == "block":
        ratio = out_vsz / vsz
        factors = np.round(ratio).astype(int)
        if np.any(factors < 1) or np.any(np.abs(ratio - factors) > 1e-3 * ratio):
            raise ValueError(
                "reduce='block' needs output_voxel_size to be an integer multiple of voxel_size, "
                f"got {_fmt(out_vsz)} mm for {_fmt(vsz)} mm; use reduce='kspace'")
        out = np.asarray(shape) // factors
        if np.any(out < 1):
            raise ValueError(f"output_voxel_size {_fmt(out_vsz)} mm is larger than the volume")
    else:
        raise ValueError(f"reduce must be one of 'kspace', 'block', got {method!r}")
    if np.any(factors < 1 - 1e-6):
        raise ValueError(f"output_voxel_size {_fmt(out_vsz)} mm must not be finer than the "
                         f"input voxel size {_fmt(vsz)} mm (the simulation cannot add detail)")
    return tuple(int(n) for n in out), factors


def _kspace_crop(x, out_shape):
    """Keep the central ``out_shape`` frequencies of ``x`` (complex result, same mean)."""
    X = sfft.fftn(x, axes=(0, 1, 2), workers=WORKERS)
    for axis, (n, m) in enumerate(zip(x.shape[:3], out_shape)):
        if m < n:
            keep = np.r_[0:(m + 1) // 2, n - m // 2:n]
            X = np.take(X, keep, axis=axis)
    scale = np.prod(out_shape) / np.prod(x.shape[:3])
    return sfft.ifftn(X, axes=(0, 1, 2), workers=WORKERS) * scale


def _block_mean(x, factors):
    out = [n // f for n, f in zip(x.shape[:3], factors)]
    x = x[:out[0] * factors[0], :out[1] * factors[1], :out[2] * factors[2]]
    shp = (out[0], factors[0], out[1], factors[1], out[2], factors[2]) + x.shape[3:]
    return x.reshape(shp).mean(axis=(1, 3, 5))


def reduce_resolution(x, *, voxel_size, output_voxel_size, method="kspace"):
    """Reduce a volume to a coarser voxel size, as an acquisition at that resolution would.

    Parameters
    ----------
    x : (X, Y, Z) or (X, Y, Z, E) array, real or complex
        Volume on the fine grid (echoes on the last axis are reduced independently).
    voxel_size, output_voxel_size : 3 floats
        Input and wanted voxel sizes in mm (output at least as coarse as the input).
    method : {"kspace", "block"}
        ``"kspace"``: keep the central k-space of the field of view (the field of view is kept;
        the matrix is ``round(n * voxel_size / output_voxel_size)``, so the exact output voxel
        size is ``n * voxel_size / matrix``); voxel centres keep the input's first voxel centre.
        ``"block"``: average blocks of whole voxels (``output_voxel_size / voxel_size`` must be
        integers; trailing voxels that do not fill a block are dropped).

    Returns
    -------
    y : ndarray
        Complex input gives complex output; real input gives real output.
    out_voxel_size : (3,) float64
        The exact voxel size of ``y`` in mm.
    """
    arr = np.asarray(x)
    if arr.ndim not in (3, 4):
        raise ValueError(f"x must be a 3D or 4D volume, got {arr.ndim}D with shape {arr.shape}")
    vsz = as_voxel_size(voxel_size)
    out_vsz = as_voxel_size(output_voxel_size, "output_voxel_size")
    out_shape, factors = _reduce_shape(arr.shape[:3], vsz, out_vsz, method)
    if method == "kspace":
        y = _kspace_crop(arr, out_shape)
        if not np.iscomplexobj(arr):
            y = y.real
    else:
        y = _block_mean(arr, [int(f) for f in factors])
    return y, vsz * factors


def _reduced_affine(affine, factors, method):
    A = np.asarray(affine, float).copy()
    shift = (np.asarray(factors) - 1.0) / 2.0 if method == "block" else np.zeros(3)
    A[:3, 3] = A[:3, :3] @ shift + A[:3, 3]
    A[:3, :3] = A[:3, :3] * np.asarray(factors)[None, :]
    return A


def _as_map(value, name, shape, default):
    if value is None:
        return default
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 0:
        v = as_positive(float(arr), name, allow_zero=True)
        return np.full(shape, v, np.float32)
    arr = as_volume(arr, name)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must be a number or a volume of shape {tuple(shape)}, got {arr.shape}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be non-negative")
    return arr


def _phase_offset(shape, rng):
    """A smooth receive-phase offset: a random constant plus low-order polynomial terms (rad)."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    X = np.meshgrid(*axes, indexing="ij", sparse=True)
    phi = np.full(shape, rng.uniform(-np.pi, np.pi), np.float32)
    for i in range(3):
        phi = phi + np.float32(rng.normal(0.0, 0.6)) * X[i]
        for j in range(i, 3):
            phi = phi + np.float32(rng.normal(0.0, 0.3)) * X[i] * X[j]
    return phi.astype(np.float32)


def simulate_acquisition(chi, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0),
                         echo_times=DEFAULT_ECHO_TIMES, field_strength=3.0, m0=None, r2star=None,
                         snr=100.0, phase_offset=True, background=True, output_voxel_size=None,
                         reduce="kspace", shim_order=2, affine=None, extra_field=None,
                         receive_profile=None, tissue_m0=None, tissue_r2star=None,
                         intravoxel_dephasing=False, rng=0, progress=False):
    """Simulate multi-echo gradient-echo magnitude and phase from a susceptibility map.

    Steps, on the input (fine) grid: (1) local field = dipole convolution of ``chi`` inside
    ``mask`` (:func:`metaqsm.kernels.forward_field`, zero padded); (2) background field of a head
    around the brain (:func:`head_model`: CSF, skull at -2 ppm, scalp, neck, air sinuses and
    mastoid cells at +9.4 ppm, air outside; the head extends beyond the field of view),
    computed with point dipoles on a grid twice the head's size, plus the field of any ``chi``
    outside the mask; (3) complex signal
    ``M0 exp(-R2* TE) exp(i (phi0 + 2 pi gamma B0 field TE))`` per echo. Then, if
    ``output_voxel_size`` is given, the complex signal and the truth maps are reduced to it
    (k-space truncation or block averaging). Last, complex Gaussian noise is added at the
    output resolution, and magnitude and wrapped phase are taken.

    Parameters
    ----------
    chi : (X, Y, Z) array
        Susceptibility in ppm relative to CSF/water (the brain's reference).
    mask : (X, Y, Z) bool
        Brain mask: sources inside it make the local field.
    voxel_size : 3 floats
        mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates. Default: the third axis.
    echo_times : sequence of floats
        Echo times in seconds. Default: 10.4, 17.4, 24.4, 31.4 ms (the Meta-QSM paper).
    field_strength : float
        Tesla. Default 3.
    m0 : None, float or (X, Y, Z) array
        Proton density. Default: 1 in the brain and CSF, 0.8 in the scalp, 0.05 in bone, 0 in
        air.
    r2star : None, float or (X, Y, Z) array
        R2* in 1/s. Default: in the brain ``15 + 150 |chi|`` 1/s (iron, calcium and
        deoxyhaemoglobin raise both), 5 in CSF, 30 in the scalp, 300 in bone; all scaled by
        ``field_strength / 3``.
    snr : float or None
        Mean first-echo magnitude in the brain divided by the noise standard deviation of each
        of the real and imaginary channels, at the output resolution. Default 100; ``None`` or
        ``inf``: no noise.
    phase_offset : bool
        Add a smooth echo-independent phase offset (random constant plus linear and quadratic
        terms, as from coil combination). Default True.
    background : bool
        Add the head's background field. Default True (it is typically 10-100 times the local
        field inside the brain).
    output_voxel_size : None or 3 floats
        Voxel size (mm) of the output; ``None`` keeps the input grid.
    reduce : {"kspace", "block"}
        How to reduce resolution (see :func:`reduce_resolution`). Default ``"kspace"``.
    shim_order : {0, 1, 2}
        Order of the spherical harmonics removed from the background field over the brain, as
        the scanner's shim does (default 2, second-order shim as on clinical 3 T scanners;
        0 removes only the mean).
    affine : None or (4, 4) array
        Voxel-to-world transform of the input; the output's is returned in ``Acquisition.affine``.
    extra_field : None or (X, Y, Z) array
        A field (ppm) that no scalar susceptibility explains (white-matter anisotropy,
        microstructure and exchange offsets; see :mod:`metaqsm.simulate.realistic`), added to
        the local field inside ``mask``; the returned ``local_field`` includes it (it is what the
        phase measures), ``chi`` does not.
    receive_profile : None or (X, Y, Z) array
        A smooth coil sensitivity multiplying the proton density (default: uniform), so the
        noise relative to the signal varies over the head as on a real receive array.
    tissue_m0, tissue_r2star : None or (X, Y, Z) arrays
        Proton density and R2* (1/s, at ``field_strength``) that replace the defaults inside
        the brain mask only (the head's layers keep theirs), e.g. from tissue fractions, so the
        magnitude's contrast is not a copy of the susceptibility's.
    intravoxel_dephasing : bool
        Attenuate each echo by the dephasing of the field's gradient across the voxel of the
        simulation grid, ``prod_i sinc(gamma B0 TE (d field / d x_i) dx_i)`` (a linear field
        within each voxel; Yablonskiy & Haacke 1994): signal loss near air-tissue interfaces,
        as on a scanner. Default False.
    rng : int or numpy.random.Generator
        Seed of the noise and the phase offset.
    progress : bool
        Show a tqdm bar over the steps (local field, head, background field, signal, output)
        on stderr. Default False.

    Returns
    -------
    Acquisition

    Raises
    ------
    ValueError
        Shapes that differ, non-positive echo times or field strength, an output voxel size
        finer than the input, or block factors that are not integers.

    Examples
    --------
    >>> from metaqsm.simulate.phantoms import brain_phantom
    >>> ph = brain_phantom((48, 48, 32), voxel_size=(1, 1, 2))
    >>> acq = simulate_acquisition(ph.chi, ph.mask, voxel_size=(1, 1, 2))
    >>> acq.phase.shape
    (48, 48, 32, 4)

    References
    ----------
    Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0: A realistic in
    silico head phantom for MRI data simulation and evaluation of susceptibility mapping
    procedures. Magn Reson Med 2021;86:526-542.
    """
    chi = as_volume(chi, "chi")
    shape = chi.shape
    mask = as_mask(mask, shape, "mask")
    vsz = as_voxel_size(voxel_size)
    b0 = as_b0_dir(b0_dir)
    tes = np.asarray(echo_times, dtype=np.float64).reshape(-1)
    if tes.size < 1 or not np.all(np.isfinite(tes)) or np.any(tes <= 0):
        raise ValueError(f"echo_times must be positive seconds, got {tuple(np.asarray(echo_times).ravel())}")
    if np.any(tes > 1.0):
        raise ValueError(f"echo_times must be in seconds, got {_fmt(tes)} (milliseconds?)")
    b0_t = as_positive(field_strength, "field_strength")
    if snr is not None and np.isfinite(float(snr)):
        snr = as_positive(snr, "snr")
    else:
        snr = None
    if affine is not None:
        affine = np.asarray(affine, float)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    if output_voxel_size is not None:
        out_vsz = as_voxel_size(output_voxel_size, "output_voxel_size")
        _reduce_shape(shape, vsz, out_vsz, reduce)  # fail before any work
    elif reduce not in ("kspace", "block"):
        raise ValueError(f"reduce must be one of 'kspace', 'block', got {reduce!r}")
    if shim_order not in (0, 1, 2):
        raise ValueError(f"shim_order must be 0, 1 or 2, got {shim_order!r}")

    extra = profile = None
    if extra_field is not None:
        extra = as_volume(extra_field, "extra_field")
        if extra.shape != shape:
            raise ValueError(f"extra_field must have the shape of chi {shape}, got {extra.shape}")
    if receive_profile is not None:
        profile = as_volume(receive_profile, "receive_profile")
        if profile.shape != shape or np.any(profile < 0):
            raise ValueError(f"receive_profile must be non-negative with the shape of chi "
                             f"{shape}, got shape {profile.shape}")
    tissue = {}
    for name, value in (("tissue_m0", tissue_m0), ("tissue_r2star", tissue_r2star)):
        if value is not None:
            tissue[name] = as_volume(value, name)
            if tissue[name].shape != shape or np.any(tissue[name] < 0):
                raise ValueError(f"{name} must be non-negative with the shape of chi {shape}, "
                                 f"got shape {tissue[name].shape}")
    rng = np.random.default_rng(rng)
    from tqdm.auto import tqdm

    # the steps on stderr (closed at the end; on an error tqdm closes it when it is collected)
    bar = tqdm(total=5, desc="simulate", unit="step", leave=False, disable=not progress)
    bar.set_postfix_str("local field")
    chi_in = np.where(mask, chi, 0.0).astype(np.float32)
    local = forward_field(chi_in, voxel_size=vsz, b0_dir=b0)
    if extra is not None:
        local = local + np.where(mask, extra, 0.0).astype(np.float32)

    bar.update()
    bar.set_postfix_str("head model")
    labels, offset = head_model(mask, voxel_size=vsz)
    fov_labels = labels[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
    chi_out = np.where(mask, 0.0, chi).astype(np.float32)
    bar.update()
    bar.set_postfix_str("background field")
    if background:
        bg = _background_field(labels, offset, chi_out, mask, vsz, b0)
    else:
        bg = forward_field(chi_out, voxel_size=vsz, b0_dir=b0)
    # The scanner shims the field over the brain (the constant is arbitrary anyway).
    bg = shim(bg, mask, voxel_size=vsz, order=shim_order)
    total = local + bg
    bar.update()
    bar.set_postfix_str("signal")

    scale3 = np.float32(b0_t / 3.0)
    default_m0 = np.zeros(shape, np.float32)
    default_r2 = np.zeros(shape, np.float32)
    for name in ("csf", "skull", "scalp"):
        default_m0[fov_labels == HEAD_LABELS[name]] = _M0[name]
        default_r2[fov_labels == HEAD_LABELS[name]] = _R2STAR[name] * scale3
    default_m0[mask] = (tissue["tissue_m0"][mask] if "tissue_m0" in tissue else _M0["brain"])
    default_r2[mask] = (tissue["tissue_r2star"][mask] if "tissue_r2star" in tissue else
                        (_R2STAR_BRAIN + _R2STAR_PER_PPM * np.abs(chi[mask])) * scale3)
    m0_map = _as_map(m0, "m0", shape, default_m0)
    if profile is not None:
        m0_map = m0_map * profile
    r2_map = _as_map(r2star, "r2star", shape, default_r2)
    grads = None
    if intravoxel_dephasing:
        # field change across one voxel along each axis (ppm), central differences
        grads = [np.gradient(total, axis=i).astype(np.float32) for i in range(3)]
    phi0 = _phase_offset(shape, rng) if phase_offset else np.zeros(shape, np.float32)

    signal = np.empty(shape + (tes.size,), np.complex64)
    for e, te in enumerate(tes):
        phase = phi0 + ppm_to_rad(total, te, b0_t).astype(np.float32)
        signal[..., e] = (m0_map * np.exp(-r2_map * np.float32(te))) * np.exp(1j * phase)
        if grads is not None:  # the phase ramp across the voxel, in cycles: sinc's argument
            for g in grads:
                signal[..., e] *= np.sinc(ppm_to_rad(g, te, b0_t) / (2.0 * np.pi)).astype(np.float32)

    bar.update()
    bar.set_postfix_str("resolution and noise")
    out_vsz_exact = vsz
    out_affine = affine
    truth = {"chi": chi_in, "local": local, "total": total, "bg": bg, "phi0": phi0}
    if output_voxel_size is not None:
        signal, out_vsz_exact = reduce_resolution(signal, voxel_size=vsz,
                                                  output_voxel_size=out_vsz, method=reduce)
        signal = signal.astype(np.complex64)
        for key, value in truth.items():
            truth[key] = reduce_resolution(value, voxel_size=vsz, output_voxel_size=out_vsz,
                                           method=reduce)[0].astype(np.float32)
        mask_out = reduce_resolution(mask.astype(np.float32), voxel_size=vsz,
                                     output_voxel_size=out_vsz, method=reduce)[0] >= 0.5
        if affine is not None:
            out_affine = _reduced_affine(affine, out_vsz_exact / vsz, reduce)
    else:
        mask_out = mask

    noise_std = 0.0
    if snr is not None:
        ref = float(np.abs(signal[..., 0][mask_out]).mean()) if mask_out.any() else 1.0
        noise_std = ref / snr
        noise = rng.standard_normal(signal.shape + (2,), dtype=np.float32) * np.float32(noise_std)
        signal = signal + (noise[..., 0] + 1j * noise[..., 1]).astype(np.complex64)
    bar.update()
    bar.close()

    return Acquisition(
        magnitude=np.abs(signal).astype(np.float32),
        phase=np.angle(signal).astype(np.float32),
        local_field=truth["local"],
        total_field=truth["total"],
        mask=np.asarray(mask_out, bool),
        chi=truth["chi"],
        voxel_size=np.asarray(out_vsz_exact, float),
        b0_dir=b0,
        echo_times=tes,
        field_strength=b0_t,
        background_field=truth["bg"],
        phase_offset=truth["phi0"],
        noise_std=noise_std,
        affine=out_affine,
    )
