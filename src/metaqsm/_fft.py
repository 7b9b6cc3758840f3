"""Real FFTs and FFT convolution on (optionally padded) 3-D grids: the one place that sets how
metaqsm transforms volumes.

Every FFT of a volume in the classical code goes through :func:`rfft` / :func:`irfft` (real
transforms over the three axes, all cores) or :func:`fft_convolve` (a volume times a kernel's
rfft spectrum); :func:`padded_shape`, :func:`pad_volume` and :func:`crop_volume` size the grid.
Kernels are built once per call on the padded grid as half spectra (last axis ``nz // 2 + 1``),
as :mod:`metaqsm.kernels` does, and applied by multiplication.

The public names are re-exported by :mod:`metaqsm.kernels`.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

__all__ = ["WORKERS", "CROP_MARGIN", "shape3", "mask_box", "padded_shape", "pad_volume",
           "crop_volume", "rfft", "irfft", "fft_convolve"]

WORKERS = -1
"""Threads of every FFT (``scipy.fft``'s ``workers``): -1 uses all cores."""


def shape3(shape, name="shape"):
    """Return ``shape`` as a tuple of 3 positive ints; ``ValueError`` naming ``name`` otherwise."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name} must be 3 positive integers, got {shape}")
    return shape


CROP_MARGIN = 8
"""Voxels kept around the mask's bounding box by :func:`mask_box`."""


def mask_box(mask, crop=True, margin=CROP_MARGIN):
    """The part of the grid an iterative inversion or a network works on: 3 slices.

    With ``crop`` the mask's bounding box grown by ``margin`` voxels on each side, each length
    rounded up to a fast FFT length and the box kept inside the volume; without it (or for an
    empty mask) the whole grid. Used where the field is 0 and the map is set to 0 outside the
    mask (tv, rts, ndi, nltv, meta-unrolled), so that only empty space is left out; not by MEDI,
    whose susceptibility outside the mask is free (docs/inversion.md, "Cropping to the mask").
    """
    whole = tuple(slice(0, n) for n in mask.shape)
    if not crop or not mask.any():
        return whole
    box = []
    for axis, n in enumerate(mask.shape):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo, hi = int(hit[0]), int(hit[-1]) + 1
        length = min(n, sfft.next_fast_len(hi - lo + 2 * margin, real=True))
        start = min(max(0, lo - (length - (hi - lo)) // 2), n - length)
        box.append(slice(start, start + length))
    return tuple(box)


def padded_shape(shape, pad="auto"):
    """Shape after zero padding, rounded up to fast FFT lengths.

    Parameters
    ----------
    shape : 3 ints
        Matrix size of the volume (voxels).
    pad : "auto", int or 3 ints
        ``"auto"`` doubles each axis, which suppresses the wrap-around of the dipole field;
        otherwise the number of zero voxels added to each axis (0 keeps the axis as it is).

    Returns
    -------
    tuple of 3 ints
        Each padded length rounded up by :func:`scipy.fft.next_fast_len` (``real=True``); an
        axis without padding keeps its length.

    Raises
    ------
    ValueError
        For a ``pad`` string other than ``"auto"`` or negative / non-integer padding.
    """
    shape = shape3(shape)
    if isinstance(pad, str):
        if pad != "auto":
            raise ValueError(f"pad must be 'auto', an int or 3 ints, got {pad!r}")
        extra = shape
    else:
        extra = np.broadcast_to(np.asarray(pad), (3,))
        if np.any(extra < 0) or not np.all(np.equal(np.mod(extra, 1), 0)):
            raise ValueError(f"pad must be non-negative integers, got {pad!r}")
        extra = tuple(int(e) for e in extra)
    return tuple(sfft.next_fast_len(n + e, real=True) if e > 0 else n for n, e in zip(shape, extra))


def pad_volume(x, shape):
    """Zero-pad ``x`` at the end of each axis to ``shape`` (``x`` itself when it has it).

    The circular convolution on the padded grid then equals the linear one for sources within
    the original box.
    """
    if tuple(x.shape) == tuple(shape):
        return x
    out = np.zeros(shape, dtype=x.dtype)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


def crop_volume(x, shape):
    """The first ``shape`` voxels of each axis of ``x`` (a view): the inverse of
    :func:`pad_volume`."""
    return x[tuple(slice(0, n) for n in shape)]


def rfft(x, shape=None):
    """Real FFT of a volume over its three axes, with all cores.

    Parameters
    ----------
    x : (X, Y, Z) real array
        The volume (float32 gives a complex64 spectrum, float64 a complex128 one).
    shape : 3 ints or None
        FFT grid: ``x`` is zero padded at the end of each axis to it (see
        :func:`padded_shape`). Default: ``x.shape``.

    Returns
    -------
    (nx, ny, nz // 2 + 1) complex array
        The half spectrum of ``scipy.fft.rfftn``.
    """
    return sfft.rfftn(x, s=shape, workers=WORKERS)


def irfft(spectrum, shape):
    """Inverse of :func:`rfft`: the real volume of ``shape`` whose half spectrum is ``spectrum``."""
    return sfft.irfftn(spectrum, s=shape, workers=WORKERS)


def fft_convolve(x, kernel, *, shape=None):
    """Circular convolution of a real volume with a kernel given by its rfft spectrum.

    Parameters
    ----------
    x : (X, Y, Z) real array
        The volume, in any unit.
    kernel : (nx, ny, nz // 2 + 1) array
        The kernel's half spectrum on the FFT grid (real for a symmetric kernel, such as the
        dipole, SMV and Laplacian kernels of :mod:`metaqsm.kernels`, or complex).
    shape : 3 ints or None
        FFT grid ``(nx, ny, nz)``: ``x`` is zero padded at the end of each axis to it (see
        :func:`padded_shape` and :func:`crop_volume` for the way back). Default: ``x.shape``.

    Returns
    -------
    (nx, ny, nz) real array
        ``irfftn(rfftn(x) * kernel)`` on the FFT grid, in the unit of ``x`` times that of the
        kernel; float32 for float32 input.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 4, 4), np.float32); x[1, 2, 3] = 1.0
    >>> y = fft_convolve(x, np.full((4, 4, 3), 2.0, np.float32))  # the kernel 2 delta
    >>> float(y[1, 2, 3])
    2.0
    """
    if shape is None:
        shape = x.shape
    spectrum = rfft(x, shape)
    spectrum *= kernel
    return irfft(spectrum, shape)
