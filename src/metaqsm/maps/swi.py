"""Susceptibility-weighted imaging (SWI) and minimum-intensity projections.

SWI as Haacke et al. 2004: the complex image ``z = M exp(i phi)`` is divided by its low-pass
version (homodyne filtering: ``phi_hp = arg(z conj(z_lp))``, no unwrapping needed), the
high-passed phase becomes a phase mask that is 1 for the sign of phase veins do not have and
falls linearly from 1 to 0 as the phase goes from 0 to pi in the veins' sign, and the
magnitude is multiplied by the mask raised to ``power`` (4 as in the paper). The low-pass is
a Hann window in k-space over ``filter_axes`` (in-plane by default, as the paper's 2D filter)
reaching 0 at ``1 / filter_mm`` cycles/mm. The default 8 mm is Haacke's 64 x 64 window on a
512 x 512 matrix of 0.5 mm voxels (a 256 mm field of view); a longer ``filter_mm`` keeps more
of the veins' phase and more of the background.

Multi-echo input (echoes on the last axis) is combined, unless ``echo`` picks one: each
echo's phase is high-passed as above (which also removes the echo-independent phase offset),
the local frequency is the weighted least-squares slope through the origin,
``w = sum_j M_j^2 t_j phi_j / sum_j M_j^2 t_j^2`` (weights ``M_j^2``: the inverse variance of
``phi_j``), and the phase used is ``w * reference_te`` (default: the mean echo time); the
magnitude is the root-sum-of-squares of the echoes. This combines all echoes' phase SNR as
CLEAR-SWI does (Eckstein et al. 2021) but without its unwrapping and its other mask; it is
this package's rule, not a published variant.

Sign convention: this library writes phase as ``+2 pi gamma B0 field TE``
(:func:`metaqsm.units.ppm_to_rad`), in which paramagnetic veins along B0 (positive
susceptibility, positive field inside) have *positive* phase, so ``vein_phase="positive"``
is the default. Haacke's right-handed convention gives veins negative phase:
``vein_phase="negative"``.

The minimum-intensity projection (mIP) takes, along ``axis``, the minimum over a sliding
slab of ``round(slab_mm / voxel_size[axis])`` slices (default 8 mm).

Public API
----------
``swi(magnitude, phase, mask=None, *, voxel_size, echo_times=None, echo=None,
reference_te=None, filter_mm=8.0, filter_axes=(0, 1), power=4, vein_phase="positive",
return_phase=False)`` -> SWI (X, Y, Z) float32, or ``(swi, high_pass_phase)``
``minimum_intensity_projection(image, *, voxel_size, slab_mm=8.0, axis=2)``
-> (X, Y, Z - n + 1) float32 for ``axis=2``

References
----------
Haacke EM, Xu Y, Cheng YCN, Reichenbach JR. Susceptibility weighted imaging (SWI). Magn Reson
Med 2004;52:612-618.
Reichenbach JR, Venkatesan R, Schillinger DJ, Kido DK, Haacke EM. Small vessels in the human
brain: MR venography with deoxyhemoglobin as an intrinsic contrast agent. Radiology
1997;204:272-277.
Eckstein K, Bachrata B, Hangel G, Widhalm G, Enzinger C, Barth M, Trattnig S, Robinson SD.
Improved susceptibility weighted imaging at ultra-high field using bipolar multi-echo
acquisition and optimized image processing: CLEAR-SWI. NeuroImage 2021;237:118175.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from .._fft import WORKERS
from .._validate import PHASE_TOL, as_int, as_mask, as_positive, as_volume, as_voxel_size
from .._validate import as_echo_times

__all__ = ["VEIN_PHASES", "swi", "minimum_intensity_projection"]

VEIN_PHASES = ("positive", "negative")
"""Signs of the veins' phase accepted by ``swi(vein_phase=...)``."""


def _hann_lowpass(z, vsz, filter_mm, axes):
    """``z`` low-passed by a separable Hann window in k-space over ``axes`` that reaches 0 at
    ``1 / filter_mm`` cycles/mm (circular, on the volume's own grid)."""
    spec = sfft.fftn(z, axes=axes, workers=WORKERS)
    kc = 1.0 / filter_mm
    for axis in axes:
        k = np.abs(sfft.fftfreq(z.shape[axis], vsz[axis]))
        h = np.where(k < kc, np.cos(0.5 * np.pi * k / kc) ** 2, 0.0).astype(np.float32)
        shape = [1] * z.ndim
        shape[axis] = k.size
        spec *= h.reshape(shape)
    return sfft.ifftn(spec, axes=axes, workers=WORKERS)


def _highpass_phase(magnitude, phase, mask, vsz, filter_mm, axes):
    """Homodyne high-pass phase ``arg(z conj(lowpass(z)))`` in (-pi, pi]; 0 without signal."""
    z = (magnitude * np.exp(1j * phase)).astype(np.complex64)
    z[~mask] = 0.0
    hp = z * np.conj(_hann_lowpass(z, vsz, filter_mm, axes))
    return np.angle(hp).astype(np.float32)


def _phase_mask(phi, vein_phase):
    """1 for the veins' opposite sign, falling linearly to 0 at |phi| = pi in theirs."""
    s = phi if vein_phase == "positive" else -phi
    return np.clip((np.pi - np.maximum(s, 0.0)) / np.pi, 0.0, 1.0).astype(np.float32)


def swi(magnitude, phase, mask=None, *, voxel_size, echo_times=None, echo=None,
        reference_te=None, filter_mm=8.0, filter_axes=(0, 1), power=4, vein_phase="positive",
        return_phase=False):
    """Susceptibility-weighted image: magnitude times the high-pass phase mask to a power.

    Parameters
    ----------
    magnitude, phase : (X, Y, Z) or (X, Y, Z, E) arrays
        Magnitude (non-negative, any unit) and phase in radians (wrapped, in [-pi, pi] or
        [0, 2 pi]) of one echo or of E echoes on the last axis.
    mask : (X, Y, Z) array, optional
        Voxels with signal (e.g. the brain or head): the complex image is set to 0 outside
        before filtering, so noise there does not leak into the low-pass, and the SWI is 0
        there. ``None`` uses every voxel.
    voxel_size : 3 floats
        Voxel size in mm.
    echo_times : sequence of E floats, optional
        Echo times in seconds; required to combine multi-echo input (``echo=None``).
    echo : int, optional
        With multi-echo input, use this echo (0-based) alone instead of combining.
    reference_te : float, optional
        Echo time (s) whose phase the combined frequency is scaled to (multi-echo input
        combined); default the mean of ``echo_times``. Ignored otherwise.
    filter_mm : float
        Size of the homodyne low-pass: its Hann window in k-space reaches 0 at
        ``1 / filter_mm`` cycles/mm. Default 8 mm (Haacke's 64/512 window at 0.5 mm).
    filter_axes : tuple of ints
        Axes the low-pass acts on. Default ``(0, 1)``: in-plane, as the paper's 2D filter (a
        slab-selective 3D acquisition has no smooth continuation along the slice axis).
    power : float
        Exponent of the phase mask (default 4, the paper's best contrast-to-noise for veins).
    vein_phase : {"positive", "negative"}
        Sign of the veins' phase. Default ``"positive"``: the library's convention (see the
        module docstring); ``"negative"`` for Haacke's right-handed system.
    return_phase : bool
        Also return the high-pass phase (radians) the mask was made from.

    Returns
    -------
    swi : (X, Y, Z) float32
        In the unit of ``magnitude`` (combined by root-sum-of-squares for multi-echo input);
        0 outside the mask.
    phase_hp : (X, Y, Z) float32
        Only with ``return_phase``: the high-pass phase in radians (0 outside the mask).

    Raises
    ------
    ValueError
        Shapes that differ or are not 3D/4D, negative magnitude, phase outside [-pi, 2 pi]
        (not radians), multi-echo input without ``echo_times`` or with an ``echo`` out of
        range, a non-positive ``filter_mm``, ``power`` or ``reference_te``, bad
        ``filter_axes`` or ``vein_phase``.

    References
    ----------
    Haacke EM, Xu Y, Cheng YCN, Reichenbach JR. Susceptibility weighted imaging (SWI). Magn
    Reson Med 2004;52:612-618.
    """
    mag = as_volume(magnitude, "magnitude", ndim=(3, 4))
    ph = as_volume(phase, "phase", ndim=(3, 4))
    if mag.shape != ph.shape:
        raise ValueError(f"magnitude and phase must have the same shape, got magnitude "
                         f"{mag.shape} and phase {ph.shape}")
    vsz = as_voxel_size(voxel_size)
    m = as_mask(mask, mag.shape[:3])
    if vein_phase not in VEIN_PHASES:
        raise ValueError(f"vein_phase must be one of {', '.join(map(repr, VEIN_PHASES))}, "
                         f"got {vein_phase!r}")
    filter_mm = as_positive(filter_mm, "filter_mm")
    power = as_positive(power, "power")
    try:
        axes = tuple(sorted({int(a) for a in np.ravel(filter_axes)}))
    except (TypeError, ValueError):
        raise TypeError(f"filter_axes must be axis numbers (0, 1, 2), "
                        f"got {filter_axes!r}") from None
    if not axes or axes[0] < 0 or axes[-1] > 2 or len(axes) != np.size(filter_axes):
        raise ValueError(f"filter_axes must be distinct axes among 0, 1, 2, got {filter_axes!r}")
    if np.any(mag < 0):
        raise ValueError("magnitude must be non-negative")
    lo, hi = float(ph.min()), float(ph.max())
    if lo < -np.pi - PHASE_TOL or hi > 2 * np.pi + PHASE_TOL:
        raise ValueError(f"phase must be radians in [-pi, pi] or [0, 2 pi], got values in "
                         f"[{lo:.4g}, {hi:.4g}] (scanner units? see "
                         "metaqsm.units.phase_to_radians)")
    multi = mag.ndim == 4 and mag.shape[-1] > 1
    if mag.ndim == 4 and not multi:
        mag, ph = mag[..., 0], ph[..., 0]
    if multi and echo is not None:
        e = as_int(echo, "echo")
        if e >= mag.shape[-1]:
            raise ValueError(f"echo must be an echo index below {mag.shape[-1]}, got {e}")
        mag, ph, multi = mag[..., e], ph[..., e], False
    if multi:
        tes = as_echo_times(echo_times, mag.shape[-1], what="magnitude")
        te_ref = (float(tes.mean()) if reference_te is None
                  else as_positive(reference_te, "reference_te"))
        if te_ref > 1.0:
            raise ValueError(f"reference_te must be in seconds, got {reference_te!r}")

    if multi:
        num = np.zeros(m.shape, np.float32)
        den = np.zeros(m.shape, np.float32)
        for j, te in enumerate(tes):
            w = np.square(mag[..., j]) * np.float32(te)
            num += w * _highpass_phase(mag[..., j], ph[..., j], m, vsz, filter_mm, axes)
            den += w * np.float32(te)
        phi = np.where(den > 0, num / np.where(den > 0, den, 1.0) * np.float32(te_ref), 0.0)
        mag = np.sqrt(np.sum(np.square(mag), axis=-1))
    else:
        phi = _highpass_phase(mag, ph, m, vsz, filter_mm, axes)
    phi = np.where(m, phi, 0.0).astype(np.float32)
    out = np.where(m, mag * _phase_mask(phi, vein_phase) ** np.float32(power), 0.0)
    out = out.astype(np.float32)
    return (out, phi) if return_phase else out


def minimum_intensity_projection(image, *, voxel_size, slab_mm=8.0, axis=2):
    """Sliding minimum-intensity projection (mIP) over slabs of ``slab_mm`` along ``axis``.

    Parameters
    ----------
    image : (X, Y, Z) array
        Usually an SWI (:func:`swi`).
    voxel_size : 3 floats
        Voxel size in mm.
    slab_mm : float
        Slab thickness in mm (default 8, a common clinical SWI mIP); the slab is
        ``n = max(1, round(slab_mm / voxel_size[axis]))`` slices.
    axis : int
        Slice axis (default 2).

    Returns
    -------
    ndarray, float32
        ``image``'s shape with ``shape[axis] - n + 1`` slices along ``axis``: slice ``k`` is
        the minimum over input slices ``k .. k + n - 1`` (a slab sliding by one slice).

    Raises
    ------
    ValueError
        ``image`` not 3D, ``axis`` not 0, 1 or 2, ``slab_mm`` not positive or thicker than
        the volume.
    """
    img = as_volume(image, "image")
    vsz = as_voxel_size(voxel_size)
    slab = as_positive(slab_mm, "slab_mm")
    ax = as_int(axis, "axis")
    if ax > 2:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    n = max(1, int(round(slab / vsz[ax])))
    if n > img.shape[ax]:
        raise ValueError(f"slab_mm {slab:g} is {n} slices, more than the {img.shape[ax]} "
                         f"slices of the image along axis {ax}")
    windows = np.lib.stride_tricks.sliding_window_view(img, n, axis=ax)
    return windows.min(axis=-1).astype(np.float32)
