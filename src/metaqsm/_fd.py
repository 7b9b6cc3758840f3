"""Finite differences on 3-D grids: gradient, divergence, Laplacian and a fast Poisson solver.

One layout everywhere (as QSM.jl's ``utils/fd.jl``): the gradient is the forward difference
along each axis, stacked on a new **first** axis, ``(3, X, Y, Z)``, in the input's unit per mm;
boundaries are periodic, so the gradient is exactly the operator whose spectrum is
:func:`metaqsm.kernels.gradient_kernel_sq` and the divergence (backward differences) is its
negative adjoint. Variants on other domains (a masked graph Laplacian, a zero-value boundary)
are built on these operators with weights or masks, not written again.

Every operator takes ``out=`` (and scratch ``work=``) so that the iterative inversions reuse
their buffers; without ``out`` the result is float32, with it the dtype of ``out``. The
differences are taken with slices, not ``np.roll``, which saves a copy of the volume per axis.

The public names are re-exported by :mod:`metaqsm.kernels`.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ._fft import WORKERS, shape3
from ._parallel import run_slabs, thread_count
from ._validate import as_voxel_size

__all__ = ["gradient", "divergence", "laplacian", "div_weighted_grad", "poisson_solver"]


def _sl(axis, a, b):
    """Index of the slice ``a:b`` along ``axis`` of a 3-D array (all of the other axes)."""
    s = [slice(None)] * 3
    s[axis] = slice(a, b)
    return tuple(s)


def _buffer(out, shape):
    return np.empty(shape, np.float32) if out is None else out


def gradient(x, *, voxel_size, out=None):
    """Forward differences along each axis, periodic boundaries.

    Parameters
    ----------
    x : (X, Y, Z) array
        The volume, in any unit.
    voxel_size : 3 floats
        Voxel size in mm.
    out : (3, X, Y, Z) array or None
        Where to write the result (float32 if not given).

    Returns
    -------
    (3, X, Y, Z) array
        ``out[i] = (roll(x, -1, i) - x) / voxel_size[i]``, in the unit of ``x`` per mm.

    Raises
    ------
    ValueError
        For an invalid ``voxel_size``.
    """
    vsz = as_voxel_size(voxel_size)
    out = _buffer(out, (3,) + np.shape(x))
    x = np.asarray(x, dtype=out.dtype)
    for axis, d in enumerate(vsz):
        o = out[axis]
        np.subtract(x[_sl(axis, 1, None)], x[_sl(axis, None, -1)], out=o[_sl(axis, None, -1)])
        np.subtract(x[_sl(axis, 0, 1)], x[_sl(axis, -1, None)], out=o[_sl(axis, -1, None)])
        if d != 1.0:  # a pass over memory saved where the scaling is exact
            o *= out.dtype.type(1.0 / d)
    return out


def divergence(g, *, voxel_size, out=None, work=None):
    """Backward-difference divergence: the negative adjoint of :func:`gradient`.

    ``sum(gradient(x) * g) == -sum(x * divergence(g))`` for any ``x`` and ``g`` (up to
    rounding).

    Parameters
    ----------
    g : (3, X, Y, Z) array
        A vector field stacked on the first axis, in any unit.
    voxel_size : 3 floats
        Voxel size in mm.
    out, work : (X, Y, Z) arrays or None
        Where to write the result (float32 if not given) and scratch space of its dtype.

    Returns
    -------
    (X, Y, Z) array
        ``sum_i (g[i] - roll(g[i], 1, i)) / voxel_size[i]``, in the unit of ``g`` per mm.

    Raises
    ------
    ValueError
        For an invalid ``voxel_size`` or a ``g`` whose first axis is not of length 3.
    """
    vsz = as_voxel_size(voxel_size)
    if np.ndim(g) != 4 or np.shape(g)[0] != 3:
        raise ValueError(f"g must have the shape (3, X, Y, Z), got {np.shape(g)}")
    out = _buffer(out, np.shape(g)[1:])
    work = np.empty_like(out) if work is None else work
    g = np.asarray(g, dtype=out.dtype)
    out[...] = 0
    for axis, d in enumerate(vsz):
        gi = g[axis]
        np.subtract(gi[_sl(axis, 1, None)], gi[_sl(axis, None, -1)], out=work[_sl(axis, 1, None)])
        np.subtract(gi[_sl(axis, 0, 1)], gi[_sl(axis, -1, None)], out=work[_sl(axis, 0, 1)])
        if d != 1.0:
            work *= out.dtype.type(1.0 / d)
        out += work
    return out


def laplacian(x, *, voxel_size, out=None):
    """7-point discrete Laplacian, periodic boundaries.

    ``sum_i (roll(x, 1, i) + roll(x, -1, i) - 2 x) / voxel_size[i]^2``: the spectrum
    :func:`metaqsm.kernels.laplacian_kernel`, and ``divergence(gradient(x))`` up to rounding.

    Parameters
    ----------
    x : (X, Y, Z) array
        The volume, in any unit.
    voxel_size : 3 floats
        Voxel size in mm.
    out : (X, Y, Z) array or None
        Where to write the result (float32 if not given).

    Returns
    -------
    (X, Y, Z) array
        In the unit of ``x`` per mm^2.

    Raises
    ------
    ValueError
        For an invalid ``voxel_size``.
    """
    vsz = as_voxel_size(voxel_size)
    out = _buffer(out, np.shape(x))
    x = np.asarray(x, dtype=out.dtype)
    two_x = np.multiply(x, out.dtype.type(2.0))
    work = np.empty_like(out)
    out[...] = 0
    for axis, d in enumerate(vsz):
        n = x.shape[axis]
        # work = roll(x, 1) + roll(x, -1): interior, first and last planes (any n >= 1)
        np.add(x[_sl(axis, 0, n - 2)], x[_sl(axis, 2, n)], out=work[_sl(axis, 1, n - 1)])
        np.add(x[_sl(axis, n - 1, n)], x[_sl(axis, 1 % n, 1 % n + 1)], out=work[_sl(axis, 0, 1)])
        if n > 1:
            np.add(x[_sl(axis, n - 2, n - 1)], x[_sl(axis, 0, 1)], out=work[_sl(axis, n - 1, n)])
        work -= two_x
        work /= out.dtype.type(d * d)
        out += work
    return out


def div_weighted_grad(x, weights, *, out=None, work=None):
    """``divergence(w * gradient(x))`` for per-direction weights, fused into one pass per axis.

    The hot loop of MEDI and of the masked Poisson problems: a weight 0 on the pairs across a
    boundary turns the periodic operator into the graph Laplacian of a domain (zero flux).

    Parameters
    ----------
    x : (X, Y, Z) array
        The volume, in any unit.
    weights : (3, X, Y, Z) array
        Weight of the difference between voxel ``v`` and its next neighbour along each axis,
        including the voxel scaling ``1 / voxel_size[i]^2`` (mm^-2): the differences here are
        unscaled. Of the dtype of ``out``.
    out, work : (X, Y, Z) arrays or None
        Where to write the result (float32 if not given) and scratch space of its dtype.

    Returns
    -------
    (X, Y, Z) array
        ``sum_i w_i (x[v + e_i] - x[v]) - w_i[v - e_i] (x[v] - x[v - e_i])``, in the unit of
        ``x`` times that of ``weights``.
    """
    out = _buffer(out, np.shape(x))
    work = np.empty_like(out) if work is None else work
    x = np.asarray(x, dtype=out.dtype)
    threads = thread_count(out)
    if threads > 1:
        _dwg_threaded(x, weights, out, work, threads)
        return out
    for axis in range(3):
        _dwg_axis(x, weights[axis], out, work, axis, first=axis == 0)
    return out


def _dwg_axis(x, w, out, work, axis, *, first):
    """Add (or, ``first``, write) ``w (x[v + e] - x[v]) - w[v - e] (x[v] - x[v - e])`` along
    ``axis`` (periodic) to ``out``; ``work`` is scratch of the shape of ``x``."""
    hi, lo = _sl(axis, 1, None), _sl(axis, None, -1)
    head, last = _sl(axis, 0, 1), _sl(axis, -1, None)
    np.subtract(x[hi], x[lo], out=work[lo])        # forward difference (periodic)
    np.subtract(x[head], x[last], out=work[last])
    work *= w
    if first:                                       # backward difference (periodic)
        np.subtract(work[hi], work[lo], out=out[hi])
        np.subtract(work[head], work[last], out=out[head])
    else:
        out += work
        out[hi] -= work[lo]
        out[head] -= work[last]


def _dwg_threaded(x, weights, out, work, threads):
    """:func:`div_weighted_grad` over slabs of the first axis in ``threads`` threads: first the
    weighted forward differences along that axis (each slab's last row kept aside, since the
    next slab needs it), then each slab's backward difference and its two in-slab axes."""
    n = x.shape[0]
    w0 = weights[0]
    carry = np.empty((threads,) + x.shape[1:], out.dtype)

    def flux(i, a, b):
        stop = min(b, n - 1)
        np.subtract(x[a + 1:stop + 1], x[a:stop], out=work[a:stop])
        if b == n:
            np.subtract(x[0], x[n - 1], out=work[n - 1])
        work[a:b] *= w0[a:b]
        carry[i] = work[b - 1]

    def rest(i, a, b):
        np.subtract(work[a + 1:b], work[a:b - 1], out=out[a + 1:b])
        np.subtract(work[a], carry[i - 1], out=out[a])  # i - 1 = -1: the last slab (periodic)
        for axis in (1, 2):
            _dwg_axis(x[a:b], weights[axis][a:b], out[a:b], work[a:b], axis, first=False)

    run_slabs(flux, n, threads)
    run_slabs(rest, n, threads)


_TRANSFORMS = {"neumann": (sfft.dctn, sfft.idctn, 2), "dirichlet": (sfft.dstn, sfft.idstn, 1)}


def poisson_solver(shape, *, voxel_size, boundary):
    """A fast solver of ``laplacian(u) = f`` on a box, by a sine or cosine transform.

    The 7-point Laplacian with the boundary condition of the transform is diagonal in its
    basis; its eigenvalues are computed once here.

    Parameters
    ----------
    shape : 3 ints
        Matrix size of the box (voxels).
    voxel_size : 3 floats
        Voxel size in mm.
    boundary : {"neumann", "dirichlet"}
        ``"neumann"``: zero flux across the faces (DCT-II; the solution has zero mean, the
        mean of ``f`` is ignored). ``"dirichlet"``: ``u = 0`` on the voxels just outside the box
        (DST-I).

    Returns
    -------
    callable
        ``solve(f) -> u``, float64 arrays of ``shape``; ``f`` in any unit, ``u`` in that unit
        times mm^2.

    Raises
    ------
    ValueError
        For an unknown ``boundary``, an invalid ``shape`` or ``voxel_size``.
    """
    if boundary not in _TRANSFORMS:
        raise ValueError(f"boundary must be one of {', '.join(map(repr, _TRANSFORMS))}, "
                         f"got {boundary!r}")
    forward, inverse, kind = _TRANSFORMS[boundary]
    shape = shape3(shape)
    vsz = as_voxel_size(voxel_size)
    eig = 0.0  # broadcast up from the three 1-D spectra: one pass over the full grid
    for axis, n in enumerate(shape):
        view = [1, 1, 1]
        view[axis] = n
        # the 1-D second difference's eigenvalues: pi k / n (DCT-II, k = 0..n-1) or
        # pi k / (n + 1) (DST-I, k = 1..n)
        k, m = (np.arange(n), n) if kind == 2 else (np.arange(1, n + 1), n + 1)
        theta = np.pi * k / m
        eig = eig + ((2.0 * np.cos(theta) - 2.0) / (vsz[axis] * vsz[axis])).reshape(view)
    if kind == 2:
        eig[0, 0, 0] = np.inf  # the constant: u gets zero mean
    inv = 1.0 / eig
    norm = "ortho" if kind == 2 else None

    def solve(f):
        spectrum = forward(f, type=kind, norm=norm, workers=WORKERS)
        spectrum *= inv
        return inverse(spectrum, type=kind, norm=norm, workers=WORKERS)

    return solve
