"""The conjugate-gradient solver of the classical methods (MEDI, RESHARP, PDF, LBV and the masked
Laplacian unwrapping).

Written here rather than taken from :func:`scipy.sparse.linalg.cg` because the operators act on
volumes, not vectors, and the loop is the inner loop of MEDI: the vectors stay float32 (half the
memory traffic of float64) unless the caller works in float64, and the updates run in place
through one preallocated scratch vector, without a temporary per step. Plain numpy beat BLAS
``axpy`` from scipy here: with the FFTs' threads between the calls, scipy's OpenBLAS threads
spun against them (MEDI 25% and PDF 30% slower on a 2-core machine, 128 x 128 x 64).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._validate import as_int, as_positive

__all__ = ["cg", "CGInfo"]


class CGInfo(NamedTuple):
    """How a :func:`cg` run ended."""

    iterations: int
    """Applications of the operator in the loop (the initial residual of ``x0`` not counted)."""
    residual: float
    """``||b - A x|| / ||b||`` of the returned ``x`` (the recursively updated residual; 0 for
    ``b = 0``)."""
    converged: bool
    """Whether ``residual <= tol`` was reached within ``max_iter`` iterations."""


def cg(A, b, x0=None, *, M=None, tol=1e-3, max_iter=100):
    """Solve ``A x = b`` by (preconditioned) conjugate gradients.

    Parameters
    ----------
    A : callable
        ``A(v) -> A v`` for an array ``v`` of the shape of ``b``: a symmetric positive
        (semi-)definite linear operator (semi-definite systems must be consistent).
    b : array
        Right-hand side, of any shape (a volume). float64 input is solved in float64, anything
        else in float32.
    x0 : array or None
        Initial guess, of the shape of ``b``. Default: zero (which saves one application of
        ``A``).
    M : callable or None
        ``M(r) -> z``: a symmetric positive definite approximation of ``A^-1`` (the
        preconditioner), for an array of the shape of ``b``. Default: none.
    tol : float
        Stop when ``||b - A x|| <= tol ||b||`` (Euclidean norms). Default 1e-3.
    max_iter : int
        Maximum number of iterations (applications of ``A``). Default 100.

    Returns
    -------
    x : array
        The solution, of the shape of ``b``; float32, or float64 for float64 ``b``.
    info : CGInfo
        Iterations, final relative residual and whether ``tol`` was reached.

    Raises
    ------
    ValueError
        For a non-positive ``tol`` or ``max_iter``, or an ``x0`` of another shape.

    References
    ----------
    Hestenes MR, Stiefel E. Methods of conjugate gradients for solving linear systems. J Res
    Natl Bur Stand 1952;49:409-436.
    """
    tol = as_positive(tol, "tol")
    max_iter = as_int(max_iter, "max_iter", minimum=1)
    b = np.asarray(b)
    shape = b.shape
    dtype = np.dtype(np.float64 if b.dtype == np.float64 else np.float32)
    dot = np.dot
    work = np.empty(b.size, dtype)

    def axpy(v, y, a):
        """y += a v in place (the rounding of ``y += a * v``, without its temporary)."""
        np.multiply(v, dtype.type(a), out=work)
        y += work

    def apply(op, v):
        return np.ascontiguousarray(op(v.reshape(shape)), dtype).ravel()

    r = np.array(b, dtype).ravel()  # a copy: r is updated in place
    bb = float(dot(r, r))
    if x0 is None:
        x = np.zeros(r.size, dtype)
    else:
        if np.shape(x0) != shape:
            raise ValueError(f"x0 must have the shape of b {shape}, got {np.shape(x0)}")
        x = np.array(x0, dtype).ravel()
        axpy(apply(A, x), r, a=-1.0)  # r = b - A x0
    stop = tol * tol * bb
    rr = float(dot(r, r))
    it = 0
    if rr > stop:
        z = r if M is None else apply(M, r)
        p = z.copy()
        rz = rr if M is None else float(dot(r, z))
        while it < max_iter:
            q = apply(A, p)
            alpha = rz / float(dot(p, q))
            axpy(p, x, a=alpha)
            axpy(q, r, a=-alpha)
            it += 1
            rr = float(dot(r, r))
            if rr <= stop:
                break
            if M is None:
                rz_new = rr
            else:
                z = apply(M, r)
                rz_new = float(dot(r, z))
            p *= dtype.type(rz_new / rz)
            p += z
            rz = rz_new
    residual = float(np.sqrt(rr / bb)) if bb > 0 else 0.0
    return x.reshape(shape), CGInfo(it, residual, rr <= stop)
