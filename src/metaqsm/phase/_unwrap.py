"""Spatial phase unwrapping: Laplacian (Schofield & Zhu) and quality-guided MST (as ROMEO)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse import csgraph

from .._fd import div_weighted_grad, divergence, gradient, poisson_solver
from .._linalg import cg
from .._validate import as_echo_times, as_mask, as_volume, as_voxel_size

TWO_PI = 2.0 * np.pi


def _wrap(x):
    """Wrap to [-pi, pi)."""
    return (x + np.pi) % TWO_PI - np.pi


def _pair_slices(axis):
    """Indices of every voxel that has a next neighbour along ``axis`` (``lo``) and of that
    neighbour (``hi``), in a 3-D array."""
    lo = (slice(None),) * axis + (slice(None, -1),)
    hi = (slice(None),) * axis + (slice(1, None),)
    return lo, hi


# --------------------------------------------------------------------------------------------
# Laplacian unwrapping
# --------------------------------------------------------------------------------------------

def _pair_weights(mask, vsz):
    """Weights (3, X, Y, Z) of the differences to the next neighbour for the masked Laplacian:
    ``1 / d^2`` between two voxels of ``mask``, 0 across the array border (no flux), which
    turns the periodic operators of :mod:`metaqsm._fd` into the Neumann problem that the DCT
    solve assumes."""
    w = np.zeros((3,) + mask.shape, np.float64)
    for axis, d in enumerate(vsz):
        lo, hi = _pair_slices(axis)
        np.divide(mask[lo] & mask[hi], d * d, out=w[axis][lo])
    return w


def _wrapped_laplacian(phase, vsz, w=None):
    """Discrete Laplacian of the true phase from wrapped neighbour differences: the divergence
    of the wrapped unscaled gradient weighted by ``w`` (:func:`_pair_weights`), or, without
    ``w``, by ``1 / d^2`` and 0 across the array border."""
    g = gradient(phase, voxel_size=1.0, out=np.empty((3,) + phase.shape, np.float64))
    g += np.pi  # wrapped in place: _wrap without its three temporaries of 3 volumes
    np.mod(g, TWO_PI, out=g)
    g -= np.pi
    if w is not None:
        g *= w
    else:
        for axis, d in enumerate(vsz):
            g[axis] *= 1.0 / (d * d)
            g[(axis,) + (slice(None),) * axis + (-1,)] = 0.0
    return divergence(g, voxel_size=1.0, out=np.empty(phase.shape, np.float64))


def _poisson_masked(rhs, mask, w, vsz, tol=1e-6, max_iter=200):
    """Solve the zero-flux Poisson problem on the voxels of ``mask`` (graph Laplacian of the
    mask, weights ``w``) by conjugate gradients preconditioned with the box's DCT solver."""
    inside = mask.astype(np.float64)
    outside = 1.0 - inside
    solve = poisson_solver(rhs.shape, voxel_size=vsz, boundary="neumann")
    lap = np.empty(rhs.shape, np.float64)

    def A(u):  # SPD on the mask (up to its constants), identity outside
        return -div_weighted_grad(u, w, out=lap) * inside + u * outside

    def M(r):
        return -solve(r * inside) * inside + r * outside

    b = -rhs * inside
    x, _ = cg(A, b, M(b), M=M, tol=tol, max_iter=max_iter)
    return x


def _align_offset(estimate, phase, mask):
    """Add the constant that makes ``estimate`` agree with ``phase`` modulo 2 pi on average
    (circular mean over ``mask``), so that ``estimate`` approximates the unwrapped phase
    itself and not the phase plus an arbitrary constant."""
    sel = np.ones(phase.shape, bool) if mask is None else mask
    c = np.angle(np.sum(np.exp(1j * (phase[sel] - estimate[sel]))))
    return estimate + c


def unwrap_laplacian(phase, *, voxel_size, mask=None, snap=False):
    """Laplacian phase unwrapping (Schofield & Zhu), solved with fast cosine transforms.

    The Laplacian of the true phase is computed from wrapped differences of neighbours (the
    discrete form of Schofield and Zhu's ``cos(phi) lap(sin(phi)) - sin(phi) lap(cos(phi))``),
    then the Poisson equation is inverted with zero-flux boundaries by a DCT (the FFT of the
    mirrored volume), so a linear phase ramp is recovered without the wrap-around errors of a
    periodic FFT. With a mask, the zero-flux problem on the mask is solved by conjugate
    gradients preconditioned with that DCT solver. The result is smooth: it equals the true
    phase up to a constant wherever no neighbour difference exceeds pi, and differs from it by a
    smooth term elsewhere (it is not an exact multiple of 2 pi away from the input). The
    constant is chosen so that the result agrees with the input modulo 2 pi on average.

    Parameters
    ----------
    phase : (X, Y, Z) array
        Wrapped phase in radians.
    voxel_size : 3 floats
        Voxel size in mm (weights the Laplacian of anisotropic grids).
    mask : (X, Y, Z) array or None
        Only neighbour differences between two mask voxels enter the Laplacian; the output is
        zero outside the mask. ``None``: the whole volume.
    snap : bool
        If true, return ``phase + 2 pi round((estimate - phase) / 2 pi)``: the input moved by
        exact multiples of 2 pi towards the Laplacian estimate (default False).

    Returns
    -------
    (X, Y, Z) float32
        Unwrapped phase in radians.

    References
    ----------
    Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric applications.
    Opt Lett 2003;28(14):1194-1196.
    """
    phase = as_volume(phase, "phase", dtype=np.float64)
    vsz = as_voxel_size(voxel_size)
    m = None if mask is None else as_mask(mask, phase.shape)
    if m is None or m.all():
        rhs = _wrapped_laplacian(phase, vsz)
        est = poisson_solver(phase.shape, voxel_size=vsz, boundary="neumann")(rhs)
    else:
        # the mask's own zero-flux problem (the box solve alone would treat the outside as
        # flat phase and bend the solution inside)
        w = _pair_weights(m, vsz)
        rhs = _wrapped_laplacian(phase, vsz, w)
        est = _poisson_masked(rhs, m, w, vsz)
    est = _align_offset(est, phase, m)
    if snap:
        est = phase + TWO_PI * np.round((est - phase) / TWO_PI)
    if m is not None:
        est = np.where(m, est, 0.0 if not snap else phase)
    return est.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Quality-guided (ROMEO-like) unwrapping
# --------------------------------------------------------------------------------------------

def _edges(mask):
    """Index pairs (i, j) of 6-neighbour voxels both in ``mask`` and the slices per axis."""
    out = []
    for axis in range(3):
        lo, hi = _pair_slices(axis)
        both = mask[lo] & mask[hi]
        out.append((lo, hi, both))
    return out


def romeo_weights(phase, magnitude=None, phase2=None, te_ratio=None, mask=None):
    """Edge qualities in [0, 1] between 6-neighbours, as ROMEO's weights.

    The product of: phase coherence ``1 - |wrap(dphi)| / pi``; phase gradient coherence
    ``max(0, 1 - |wrap(dphi) - wrap(dphi2) * te_ratio|)`` with a second echo (``te_ratio`` =
    TE1 / TE2); magnitude coherence ``(min(m_i, m_j) / max(m_i, m_j))^2``; and a magnitude
    weight ``0.5 + 0.5 min(1, min(m_i, m_j) / median(m))`` that trusts bright voxels more.

    Returns a list of three arrays (one per axis, of the neighbour pairs' shape).
    """
    weights = []
    if magnitude is not None:
        sel = magnitude[mask] if mask is not None else magnitude
        mref = float(np.median(sel[sel > 0])) if np.any(sel > 0) else 1.0
    for axis in range(3):
        lo, hi = _pair_slices(axis)
        d1 = _wrap(phase[hi] - phase[lo])
        w = 1.0 - np.abs(d1) / np.pi
        if phase2 is not None:
            d2 = _wrap(phase2[hi] - phase2[lo])
            w *= np.clip(1.0 - np.abs(d1 - d2 * te_ratio), 0.0, 1.0)
        if magnitude is not None:
            a, b = magnitude[lo], magnitude[hi]
            mn, mx = np.minimum(a, b), np.maximum(a, b)
            with np.errstate(invalid="ignore", divide="ignore"):
                w *= np.where(mx > 0, (mn / np.where(mx > 0, mx, 1.0)) ** 2, 0.0)
            w *= 0.5 + 0.5 * np.minimum(1.0, mn / mref)
        weights.append(w.astype(np.float32))
    return weights


def _mst_unwrap(phase, mask, weights):
    """Unwrap along the maximum spanning tree of the edge qualities.

    Growing a region from a seed always along the best edge to a new voxel (ROMEO's
    region growing, Prim's algorithm) builds the maximum spanning tree of the quality graph;
    scipy's compiled minimum spanning tree on the costs ``1 - quality`` gives the same tree.
    Each voxel then takes its parent's unwrapped phase plus the wrapped difference, i.e. its
    own phase plus ``2 pi K`` with ``K`` the sum of integer jumps along its path to the root,
    computed for all voxels at once by pointer jumping (log2(depth) vectorised steps).

    Returns the integer multiples ``K`` (int64 array of ``phase.shape``, 0 outside the mask).
    """
    shape = phase.shape
    n = int(mask.sum())
    index = np.full(shape, -1, np.int64)
    index[mask] = np.arange(n)
    rows, cols, costs = [], [], []
    for (lo, hi, both), w in zip(_edges(mask), weights):
        rows.append(index[lo][both])
        cols.append(index[hi][both])
        # costs must be > 0 (zeros are not edges for csgraph)
        costs.append(1.001 - w[both].astype(np.float64))
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    costs = np.concatenate(costs)
    flat = phase[mask].astype(np.float64)
    K = np.zeros(shape, np.int64)
    if n == 0:
        return K
    graph = sparse.csr_matrix((costs, (rows, cols)), shape=(n, n))
    tree = csgraph.minimum_spanning_tree(graph).tocoo()
    ncomp, labels = csgraph.connected_components(tree, directed=False)
    # root of each component: the voxel with the best summed edge quality (only fixes the
    # global 2 pi multiple, which is corrected afterwards)
    score = np.zeros(n)
    np.add.at(score, tree.row, 1.001 - tree.data)
    np.add.at(score, tree.col, 1.001 - tree.data)
    order = np.lexsort((-score, labels))
    first = np.ones(n, bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    roots = order[first]
    # a virtual super-root joins the components so that one breadth-first search orients all
    sr = n
    r2 = np.concatenate([tree.row, np.full(roots.size, sr)])
    c2 = np.concatenate([tree.col, roots])
    d2 = np.concatenate([tree.data, np.ones(roots.size)])
    forest = sparse.csr_matrix((d2, (r2, c2)), shape=(n + 1, n + 1))
    _, pred = csgraph.breadth_first_order(forest, sr, directed=False, return_predecessors=True)
    pred = pred[:n].astype(np.int64)
    pred[roots] = roots
    jump = np.rint((flat[pred] - flat) / TWO_PI).astype(np.int64)
    jump[roots] = 0
    anc = pred
    while True:
        nxt = anc[anc]
        jump = jump + jump[anc]
        if np.array_equal(nxt, anc):
            break
        anc = nxt
    # each component's mean unwrapped phase into [-pi, pi]: a deterministic global offset
    u = flat + TWO_PI * jump
    mean = np.bincount(labels, weights=u, minlength=ncomp) / np.bincount(labels, minlength=ncomp)
    jump -= np.rint(mean / TWO_PI).astype(np.int64)[labels]
    K[mask] = jump
    return K


def _component_mode(values, labels, ncomp):
    """Most frequent integer of ``rint(values)`` in each component (labels 1..ncomp)."""
    k = np.clip(np.rint(values), -1000, 1000).astype(np.int64)
    lo = int(k.min())
    width = int(k.max()) - lo + 1
    counts = np.bincount(labels * width + (k - lo), minlength=(ncomp + 1) * width)
    return counts.reshape(ncomp + 1, width).argmax(1)[1:] + lo


def temporal_consistency(unwrapped, phase, mask):
    """Shift each echo (after the first), per connected component of ``mask``, by the multiple
    of 2 pi that agrees best (most voxels) with the previous echo unwrapped temporally,
    ``u_{e-1} + wrap(phi_e - phi_{e-1})``; insensitive to a phase offset. In place."""
    labels, ncomp = ndi.label(mask)
    lab = labels[mask]
    for e in range(1, phase.shape[-1]):
        pred = unwrapped[..., e - 1] + _wrap(phase[..., e] - phase[..., e - 1])
        k = _component_mode((pred - unwrapped[..., e])[mask] / TWO_PI, lab, ncomp)
        shift = np.zeros(ncomp + 1)
        shift[1:] = k
        unwrapped[..., e] += TWO_PI * shift[labels]
    return unwrapped


def _check_phase_mag(phase, magnitude, mask, name="phase"):
    phase = as_volume(phase, name, ndim=(3, 4))
    if magnitude is not None:
        magnitude = as_volume(magnitude, "magnitude", ndim=(3, 4))
        if magnitude.shape != phase.shape:
            raise ValueError(f"magnitude must have the shape of {name} {phase.shape}, "
                             f"got {magnitude.shape}")
        magnitude = np.abs(magnitude)
    m = as_mask(mask, phase.shape[:3])
    return phase, magnitude, m


def unwrap_romeo(phase, *, magnitude=None, mask=None, echo_times=None, individual=True,
                 template=0):
    """Quality-guided region-growing phase unwrapping in the spirit of ROMEO.

    Edge qualities between 6-neighbours combine phase coherence, multi-echo phase gradient
    coherence and magnitude coherence (see :func:`romeo_weights`); the volume is unwrapped
    along the maximum spanning tree of these qualities, which is exactly the order in which
    ROMEO's region growing (always along the best edge to a new voxel) visits the voxels. Every
    voxel is moved by an exact multiple of 2 pi, so ``output - phase`` is a multiple of 2 pi
    everywhere (up to float32 rounding). Each connected component of the mask is unwrapped on
    its own and shifted by the multiple of 2 pi that puts its mean in [-pi, pi].

    Parameters
    ----------
    phase : (X, Y, Z) or (X, Y, Z, E) array
        Wrapped phase in radians; echoes on the last axis.
    magnitude : array of the shape of ``phase``, optional
        Magnitude (any unit) for the magnitude weights.
    mask : (X, Y, Z) array or None
        Voxels to unwrap; outside, the input is returned unchanged. ``None``: everywhere.
    echo_times : sequence of E floats, optional
        Echo times in seconds (4D input): enables the phase gradient coherence weight with the
        next echo and the temporal consistency check.
    individual : bool
        4D input: ``True`` (default) unwraps every echo spatially, each with its own weights,
        then shifts each echo (per connected component) by the multiple of 2 pi that best
        agrees with the previous echo unwrapped temporally (``u_{e-1} + wrap(phi_e -
        phi_{e-1})``); robust to a phase offset. ``False`` is ROMEO's template mode: only echo
        ``template`` is unwrapped spatially and the others temporally,
        ``phi_e + 2 pi round((u_t TE_e / TE_t - phi_e) / 2 pi)``; this needs ``echo_times``
        and a phase without offset (e.g. after MCPC-3D-S).
    template : int
        Template echo for ``individual=False`` (0-based, default 0).

    Returns
    -------
    ndarray of the shape of ``phase``, float32
        Unwrapped phase in radians.

    References
    ----------
    Dymerska B, Eckstein K, Bachrata B, Siow B, Trattnig S, Shmueli K, Robinson SD. Phase
    unwrapping with a rapid opensource minimum spanning tree algorithm (ROMEO). Magn Reson Med
    2021;85(4):2294-2308.
    """
    phase, magnitude, m = _check_phase_mag(phase, magnitude, mask)
    if phase.ndim == 3:
        K = _mst_unwrap(phase, m, romeo_weights(phase, magnitude, mask=m))
        return (phase + TWO_PI * K).astype(np.float32)
    n_echo = phase.shape[-1]
    tes = None
    if echo_times is not None:
        tes = as_echo_times(echo_times, n_echo)

    def spatial(e):
        p2 = r = None
        if tes is not None and n_echo > 1:
            e2 = e + 1 if e + 1 < n_echo else e - 1
            p2, r = phase[..., e2], tes[e] / tes[e2]
        mag = None if magnitude is None else magnitude[..., e]
        w = romeo_weights(phase[..., e], mag, p2, r, mask=m)
        return phase[..., e] + TWO_PI * _mst_unwrap(phase[..., e], m, w)

    out = np.empty(phase.shape, np.float64)
    if individual:
        for e in range(n_echo):
            out[..., e] = spatial(e)
        temporal_consistency(out, phase, m)
    else:
        if tes is None:
            raise ValueError("echo_times are required for the template mode (individual=False)")
        t = int(template)
        if not 0 <= t < n_echo:
            raise ValueError(f"template must be an echo index in 0..{n_echo - 1}, got {template!r}")
        ut = spatial(t)
        for e in range(n_echo):
            if e == t:
                out[..., e] = ut
            else:
                ph = phase[..., e]
                out[..., e] = ph + TWO_PI * np.round((ut * tes[e] / tes[t] - ph) / TWO_PI)
    out = np.where(m[..., None], out, phase)
    return out.astype(np.float32)


def unwrap(phase, *, method="romeo", **kwargs):
    """Unwrap ``phase`` (radians) with ``method`` ("romeo" or "laplacian").

    Keyword arguments go to :func:`unwrap_romeo` or :func:`unwrap_laplacian` (which needs
    ``voxel_size`` and works on 3D volumes; 4D input is unwrapped echo by echo).
    """
    if method == "romeo":
        kwargs.pop("voxel_size", None)
        return unwrap_romeo(phase, **kwargs)
    if method == "laplacian":
        kwargs = {k: v for k, v in kwargs.items() if k in ("voxel_size", "mask", "snap")}
        if "voxel_size" not in kwargs:
            raise ValueError("voxel_size (mm) is required for method='laplacian'")
        arr = np.asarray(phase)
        if arr.ndim == 4:
            return np.stack([unwrap_laplacian(arr[..., e], **kwargs) for e in range(arr.shape[-1])], -1)
        return unwrap_laplacian(phase, **kwargs)
    raise ValueError(f"method must be one of 'romeo', 'laplacian', got {method!r}")
