"""Augmentations for synthetic training data: elastic distortion, flips, rotations, contrast.

The geometric augmentations build a coordinate map (grid position -> source position) rather
than resampling volumes one after another, so the source is interpolated once
(:func:`warp`, trilinear). Elastic displacement fields are smooth, so they are drawn on a coarse
control grid and interpolated (:func:`upsample_linear`) instead of filtering noise at full
resolution.

References
----------
Simard PY, Steinkraus D, Platt JC. Best practices for convolutional neural networks applied to
visual document analysis. Proceedings of the Seventh International Conference on Document
Analysis and Recognition (ICDAR) 2003:958-963.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_positive

__all__ = [
    "elastic_displacement",
    "random_rotation",
    "random_flips",
    "random_orthonormal",
    "gamma_contrast",
    "upsample_linear",
    "warp",
]


def elastic_displacement(shape, *, sigma, alpha, rng, normalize=True):
    """A random smooth displacement field (Simard et al. 2003).

    Each component is uniform noise in [-1, 1] convolved with a Gaussian of standard deviation
    ``sigma`` (in voxels of ``shape``) and multiplied by ``alpha``. Simard et al. use
    sigma = 4 pixels and alpha = 34 pixels on MNIST; since the filtered noise's amplitude depends
    on ``sigma`` (it shrinks as sigma^{-3/2} in 3D), ``normalize=True`` (default) scales each
    component to unit root-mean-square first, so ``alpha`` is the RMS displacement.

    Parameters
    ----------
    shape : 3 ints
        Grid of the field.
    sigma : float or 3 floats
        Smoothness: Gaussian standard deviation in voxels (per axis if 3 values).
    alpha : float
        Scale (the RMS displacement with ``normalize``), in the unit the caller wants.
    rng : int or numpy.random.Generator
    normalize : bool
        Scale to unit RMS before multiplying by alpha (see above).

    Returns
    -------
    disp : (3, X, Y, Z) float32 array
    """
    from scipy.ndimage import gaussian_filter

    sigma = tuple(as_positive(s, "sigma") for s in np.broadcast_to(np.asarray(sigma, float), (3,)))
    alpha = as_positive(alpha, "alpha", allow_zero=True)
    rng = np.random.default_rng(rng)
    shape = tuple(int(s) for s in shape)
    disp = np.empty((3,) + shape, np.float32)
    for c in range(3):
        d = gaussian_filter(rng.uniform(-1.0, 1.0, shape), sigma, mode="wrap")
        if normalize:
            d /= max(float(np.sqrt(np.mean(d * d))), 1e-12)
        disp[c] = alpha * d
    return disp


def random_rotation(max_deg, rng):
    """A rotation matrix by angles drawn uniformly in [-max_deg, max_deg] about each axis.

    Returns
    -------
    R : (3, 3) float64 array (applied in the order x, y, z)
    """
    rng = np.random.default_rng(rng)
    a = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    c, s = np.cos(a), np.sin(a)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_flips(prob, rng):
    """Diagonal matrix of +-1: axis i is flipped with probability ``prob[i]``."""
    rng = np.random.default_rng(rng)
    p = np.broadcast_to(np.asarray(prob, float), (3,))
    return np.diag(np.where(rng.random(3) < p, -1.0, 1.0))


def random_orthonormal(rng):
    """A rotation matrix uniformly distributed over SO(3) (QR of a Gaussian matrix)."""
    rng = np.random.default_rng(rng)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def gamma_contrast(chi, gamma, *, reference=0.1):
    """Gamma-like intensity change that keeps the sign: ref * sign(x) * (|x| / ref)^gamma.

    Values of magnitude ``reference`` (ppm) are unchanged; gamma > 1 shrinks smaller contrasts and
    stretches larger ones, gamma < 1 the opposite.

    Parameters
    ----------
    chi : array
        Susceptibility (ppm); not modified.
    gamma : float
        Exponent (> 0).
    reference : float
        Fixed magnitude (ppm).

    Returns
    -------
    float32 array
    """
    gamma = as_positive(gamma, "gamma")
    reference = as_positive(reference, "reference")
    x = np.asarray(chi, np.float32)
    mag = np.abs(x) / np.float32(reference)
    return (np.sign(x) * np.float32(reference) * mag ** np.float32(gamma)).astype(np.float32)


def upsample_linear(x, factors):
    """Cell-centred linear interpolation onto a grid ``factors`` times finer (integers).

    Output voxel ``j`` of an axis lies at ``(j + 0.5) / f - 0.5`` input voxels; values beyond the
    outermost input centres are held constant. Separable and vectorised: much faster than
    ``scipy.ndimage.zoom`` for large outputs.

    Parameters
    ----------
    x : (X, Y, Z) array
    factors : 3 ints >= 1

    Returns
    -------
    (X*fx, Y*fy, Z*fz) float32 array
    """
    out = np.asarray(x)
    if not np.iscomplexobj(out):
        out = out.astype(np.float32, copy=False)
    factors = tuple(int(f) for f in factors)
    if len(factors) != out.ndim or min(factors) < 1:
        raise ValueError(f"factors must be {out.ndim} integers >= 1, got {factors}")
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        n = out.shape[axis]
        shape = out.shape
        res = np.empty(shape[:axis] + (n, f) + shape[axis + 1:], out.dtype)
        pre = (slice(None),) * axis

        def cut(a, b, pre=pre):
            return pre + (slice(a, b),)
        diff = np.subtract(out[cut(1, None)], out[cut(None, -1)]) if n > 1 else None
        for j in range(f):
            t = (j + 0.5) / f - 0.5
            view = res[pre + (slice(None), j)]
            if t == 0 or n == 1:
                view[...] = out
            elif t > 0:  # between this centre and the next one
                np.multiply(diff, out.dtype.type(t), out=view[cut(None, -1)])
                view[cut(None, -1)] += out[cut(None, -1)]
                view[cut(-1, None)] = out[cut(-1, None)]
            else:  # between the previous centre and this one
                np.multiply(diff, out.dtype.type(t), out=view[cut(1, None)])
                view[cut(1, None)] += out[cut(1, None)]
                view[cut(None, 1)] = out[cut(None, 1)]
        out = res.reshape(shape[:axis] + (n * f,) + shape[axis + 1:])
    return out


def warp(volume, coords, *, cval=0.0):
    """Trilinear interpolation of ``volume`` at voxel coordinates ``coords`` (3, ...).

    A thin wrapper of ``scipy.ndimage.map_coordinates(order=1)``; points outside get ``cval``.
    A complex volume is interpolated too (scipy does it about 3 times slower than a real one).
    """
    from scipy.ndimage import map_coordinates

    vol = np.asarray(volume)
    vol = vol.astype(np.complex64 if np.iscomplexobj(vol) else np.float32, copy=False)
    return map_coordinates(vol, coords, order=1, mode="constant", cval=cval, prefilter=False)
