"""Inference: a NumPy local field (ppm) -> susceptibility (ppm) with a Meta-QSM or Mesa-QSM network.

The volume is padded to the network's divisibility (``2**depth``) and, when it is large, cut into
overlapping tiles whose predictions are blended with linear ramps, so memory stays bounded (a
512 x 512 x 256 volume runs tile by tile). BatchNorm in eval mode makes the network a local
operator, so a tile sees the same computation as the whole volume except near its borders, which
the overlap and the blending weights hide (the outer quarter of each overlap is discarded, the
middle half is ramped).

An optional data-consistency refinement follows the network: a few conjugate-gradient iterations
on ``||M (D chi - f)||^2 + mu ||chi - chi_net||^2`` with the core's dipole operator.

The functions :func:`invert_meta` and :func:`invert_mesa` are the inversion registry's ``meta``
and ``mesa`` methods (``metaqsm invert --method meta``).
"""

from __future__ import annotations

import warnings

import numpy as np

from .._validate import as_b0_dir, as_int, as_mask, as_positive, as_volume, as_voxel_size

__all__ = ["reconstruct", "refine_data_consistency", "tiled_apply", "invert_meta", "invert_mesa",
           "DEFAULT_TILE", "MAX_WHOLE_VOXELS", "REFINE_ITER", "REFINE_MU"]

# Volumes with more voxels than this are processed in tiles when ``tile`` is None ("auto").
MAX_WHOLE_VOXELS = 256 * 256 * 128
# Tile shape used by the automatic tiling (voxels; rounded up to the network's divisor).
DEFAULT_TILE = (160, 160, 96)
# Defaults of the data-consistency refinement after a network (measured: docs/networks.md).
REFINE_ITER = 10
REFINE_MU = 0.01


def _tile_starts(n, tile, step, divisor):
    """Start indices along one axis: multiples of ``divisor`` (keeps the pooling grid of every tile
    aligned with the whole volume's), the last tile flush with the end."""
    if tile >= n:
        return [0]
    starts = list(range(0, n - tile, step))
    starts.append(n - tile)
    return sorted(set(starts))


def _ramp(length, lo_edge, hi_edge, overlap):
    """1D blending weight of a tile: at every edge shared with another tile, zero over the outer
    quarter of the overlap (the voxels that miss most of their context), a linear ramp over the
    middle half and 1 inside. Neighbouring tiles' weights then sum to a positive value
    everywhere."""
    w = np.ones(length, np.float32)
    o = min(int(overlap), length // 2)
    if o > 0:
        trim = o // 4
        r = o - 2 * trim
        ramp = np.concatenate([np.zeros(trim, np.float32),
                               (np.arange(r, dtype=np.float32) + 0.5) / r])
        if lo_edge:
            w[:ramp.size] = np.minimum(w[:ramp.size], ramp)
        if hi_edge:
            w[length - ramp.size:] = np.minimum(w[length - ramp.size:], ramp[::-1])
    return w


def tiled_apply(func, x, *, tile, overlap, divisor=1):
    """Apply ``func`` (an (X, Y, Z) -> (X, Y, Z) NumPy function) tile by tile with blending.

    Parameters
    ----------
    func : callable
        Maps a float32 tile to an array of the same shape.
    x : (X, Y, Z) float32 array
        Its axes must be multiples of ``divisor`` (pad first).
    tile : 3 ints
        Tile shape in voxels, multiples of ``divisor`` (clipped to the volume).
    overlap : 3 ints
        Overlap between neighbouring tiles in voxels (at least the blending ramp; the tile stride
        is ``tile - overlap`` rounded down to a multiple of ``divisor``).
    divisor : int
        Tile starts and shapes are multiples of it.

    Returns
    -------
    (X, Y, Z) float32 array: the weighted mean of the tiles' predictions.
    """
    shape = x.shape
    tile = [min(int(t), n) for t, n in zip(tile, shape)]
    out = np.zeros(shape, np.float32)
    wsum = np.zeros(shape, np.float32)
    starts = []
    for n, t, o in zip(shape, tile, overlap):
        step = max(divisor, ((t - int(o)) // divisor) * divisor)
        starts.append(_tile_starts(n, t, step, divisor))
    for sx in starts[0]:
        for sy in starts[1]:
            for sz in starts[2]:
                sl = tuple(slice(s, s + t) for s, t in zip((sx, sy, sz), tile))
                pred = np.asarray(func(np.ascontiguousarray(x[sl])), np.float32)
                ws = [_ramp(t, s > 0, s + t < n, o)
                      for s, t, n, o in zip((sx, sy, sz), tile, shape, overlap)]
                w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
                out[sl] += w * pred
                wsum[sl] += w
    return out / wsum


def refine_data_consistency(chi_net, field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0),
                            mu=REFINE_MU, max_iter=REFINE_ITER, pad="auto"):
    """Pull a network's map towards the measured field: a few CG iterations of
    ``min_chi ||M (D chi - f)||^2 + mu ||chi - chi_net||^2``.

    The normal equations ``(D M D + mu I) chi = D M f + mu chi_net`` are solved with
    ``scipy.sparse.linalg.cg`` from ``chi_net``; ``D`` is :class:`metaqsm.kernels.DipoleOperator`
    (zero padded, self-adjoint).

    Parameters
    ----------
    chi_net : (X, Y, Z) array
        The network's susceptibility map (ppm).
    field, mask :
        Local field (ppm) and brain mask.
    voxel_size : 3 floats (mm); b0_dir : 3 floats
    mu : float
        Weight of the proximity term (relative to the data term, whose operator D M D has
        eigenvalues up to 4/9). Components with D^2 well above mu follow the field, those
        near the magic-angle cone (D^2 below mu) stay close to the network's values.
        Default :data:`REFINE_MU` (0.01: |D| below 0.1, the cone's neighbourhood that TKD
        truncates at 0.2, keeps the network's values).
    max_iter : int
        CG iterations (default :data:`REFINE_ITER`, 10; 20 changed the RMSE by less than 0.3
        points on FANSI and the test set, docs/networks.md).
    pad : "auto", int or 3 ints
        Zero padding of the dipole operator (as :func:`metaqsm.kernels.padded_shape`).

    Returns
    -------
    (X, Y, Z) float32 array, ppm, zero outside the mask.
    """
    from scipy.sparse.linalg import LinearOperator, cg

    from ..kernels import DipoleOperator

    chi_net = as_volume(chi_net, "chi_net")
    field = as_volume(field, "field")
    if field.shape != chi_net.shape:
        raise ValueError(f"field must have the shape of chi_net {chi_net.shape}, got {field.shape}")
    m = as_mask(mask, field.shape).astype(np.float32)
    mu = as_positive(mu, "mu")
    max_iter = as_int(max_iter, "max_iter", minimum=1)
    op = DipoleOperator(field.shape, voxel_size=voxel_size, b0_dir=b0_dir, pad=pad)
    n = field.size
    shape = field.shape

    def normal(v):
        v = v.reshape(shape).astype(np.float32, copy=False)
        return (op.adjoint(m * op(v)) + mu * v).reshape(-1)

    A = LinearOperator((n, n), matvec=normal, dtype=np.float32)
    rhs = (op.adjoint(m * field) + mu * chi_net).reshape(-1)
    x, _ = cg(A, rhs, x0=chi_net.reshape(-1).copy(), maxiter=max_iter, rtol=0.0, atol=0.0)
    return (x.reshape(shape) * (m > 0)).astype(np.float32)


def _as_model(model, device):
    from torch import nn

    from .registry import load_model

    if isinstance(model, nn.Module):
        return model
    return load_model(model, device=device)


def reconstruct(model, field, mask=None, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), tile=None,
                overlap=32, device="cpu", refine=False, refine_iter=REFINE_ITER, refine_mu=REFINE_MU):
    """Susceptibility (ppm) of a local field (ppm) with a network, at the volume's own geometry.

    Parameters
    ----------
    model : torch.nn.Module, str or Path
        A Meta-QSM / Mesa-QSM network, a checkpoint path or a shipped model name
        (:func:`metaqsm.dl.load_model`).
    field : (X, Y, Z) array
        Local field in ppm (background removed), any size.
    mask : (X, Y, Z) array, optional
        Brain mask; the field is masked on the way in and the map on the way out. Default: all.
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates (default: the third axis).
    tile : None, "auto", "none", int or 3 ints
        Tile shape in voxels (rounded up to the network's divisor). ``None``/"auto": the whole
        volume when it has at most :data:`MAX_WHOLE_VOXELS` voxels, else tiles of
        :data:`DEFAULT_TILE`; "none": never tile.
    overlap : int or 3 ints
        Overlap of neighbouring tiles in voxels (default 32), blended by :func:`tiled_apply`.
    device : str
        "cpu" or "cuda".
    refine : bool
        Run :func:`refine_data_consistency` after the network (default False).
    refine_iter, refine_mu :
        Its CG iterations and proximity weight (defaults :data:`REFINE_ITER`, :data:`REFINE_MU`).

    Returns
    -------
    chi : (X, Y, Z) float32 array, ppm, zero outside the mask.

    Examples
    --------
    >>> chi = reconstruct("meta", field, mask, voxel_size=(0.5, 0.5, 2.0))  # doctest: +SKIP
    """
    import torch

    field = as_volume(field, "field")
    m = as_mask(mask, field.shape)
    vsz = as_voxel_size(voxel_size)
    b0 = as_b0_dir(b0_dir)
    overlap = np.broadcast_to(np.asarray(overlap), (3,))
    if np.any(overlap < 0):
        raise ValueError(f"overlap must be non-negative voxels, got {overlap.tolist()}")
    net = _as_model(model, device)
    divisor = int(getattr(net, "divisor", 1))
    dev = torch.device(device)
    net = net.to(dev).eval()
    vsz_t = torch.as_tensor(vsz, dtype=torch.float32, device=dev).reshape(1, 3)
    b0_t = torch.as_tensor(b0, dtype=torch.float32, device=dev).reshape(1, 3)

    def predict(x):
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(dev)[None, None]
            return net(xt, vsz_t, b0_t)[0, 0].float().cpu().numpy()

    x = field * m
    shape = x.shape
    padded = tuple(n + (-n) % divisor for n in shape)
    if tile is None or (isinstance(tile, str) and tile == "auto"):
        tile = None if np.prod(padded) <= MAX_WHOLE_VOXELS else DEFAULT_TILE
    elif isinstance(tile, str):
        if tile != "none":
            raise ValueError(f"tile must be None, 'auto', 'none', an int or 3 ints, got {tile!r}")
        tile = None
    if tile is None:
        chi = predict(x)
    else:
        t = np.broadcast_to(np.asarray(tile), (3,))
        if np.any(t < 1):
            raise ValueError(f"tile must be positive voxels, got {t.tolist()}")
        t = [int(-(-int(v) // divisor) * divisor) for v in t]
        xp = np.zeros(padded, np.float32)
        xp[:shape[0], :shape[1], :shape[2]] = x
        chi = tiled_apply(predict, xp, tile=t, overlap=overlap, divisor=divisor)
        chi = chi[:shape[0], :shape[1], :shape[2]]
    chi = (chi * m).astype(np.float32)
    if refine:
        chi = refine_data_consistency(chi, field, m, voxel_size=vsz, b0_dir=b0, mu=refine_mu,
                                      max_iter=refine_iter)
    return chi


def _check_model_kind(net, kind, weights):
    name = getattr(net, "model_name", None)
    if name != kind:
        raise ValueError(f"weights {weights} hold a {name!r} network, but method {kind!r} needs a "
                         f"{kind!r} one (use --method {name})")


def invert_meta(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), weights=None, device="cpu",
                tile=None, refine=False, refine_iter=REFINE_ITER, refine_mu=REFINE_MU):
    """Meta-QSM dipole inversion: one network for any voxel size and B0 direction.

    Parameters
    ----------
    field : (X, Y, Z) array
        Local field in ppm.
    mask : (X, Y, Z) array
        Brain mask.
    voxel_size : 3 floats
        Voxel size in mm.
    b0_dir : 3 floats
        B0 direction in voxel coordinates (default: the third axis).
    weights : str or Path, optional
        A Meta-QSM checkpoint (``.safetensors``). Default: the shipped model "meta".
    device : str
        "cpu" (default) or "cuda".
    tile : None, "auto", int or 3 ints
        As in :func:`reconstruct` (default: automatic).
    refine : bool
        Data-consistency refinement after the network (default False;
        :func:`refine_data_consistency`).
    refine_iter, refine_mu : int, float
        Its conjugate-gradient iterations and proximity weight (defaults :data:`REFINE_ITER`,
        :data:`REFINE_MU`; measured in docs/networks.md).

    Returns
    -------
    chi : (X, Y, Z) float32 array, ppm.

    Raises
    ------
    FileNotFoundError
        No ``weights`` given and the shipped model is not installed, or ``weights`` is missing.

    References
    ----------
    Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction (Koch KM et al.).
    """
    from .registry import load_model

    net = load_model(weights if weights is not None else "meta", device=device or "cpu")
    _check_model_kind(net, "meta", weights if weights is not None else "'meta' (shipped)")
    return reconstruct(net, field, mask, voxel_size=voxel_size, b0_dir=b0_dir, tile=tile,
                       device=device or "cpu", refine=refine, refine_iter=refine_iter,
                       refine_mu=refine_mu)


def _shipped_mesa_for(voxel_size, rtol=0.02):
    from ..methods import inversion

    vsz = as_voxel_size(voxel_size)
    known = {}
    for name in inversion("mesa").shipped:  # named mesa-<voxel size in mm>
        res = np.array([float(v) for v in name[5:].split("x")])
        known[name] = res
        if np.allclose(vsz, res, rtol=rtol):
            return name
    listed = ", ".join(f"{n} ({' x '.join(f'{v:g}' for v in r)} mm)" for n, r in known.items())
    raise ValueError(f"no shipped Mesa-QSM model for voxel size {tuple(float(v) for v in vsz)} mm; "
                     f"shipped: {listed}. Pass weights=... or use method 'meta'")


def invert_mesa(field, mask, *, voxel_size, b0_dir=(0.0, 0.0, 1.0), weights=None, device="cpu",
                tile=None, refine=False, refine_iter=REFINE_ITER, refine_mu=REFINE_MU):
    """Mesa-QSM dipole inversion: a plain U-Net trained at one resolution (the paper's baseline).

    Parameters
    ----------
    field, mask, voxel_size, b0_dir, device, tile, refine, refine_iter, refine_mu :
        As in :func:`invert_meta` (the network ignores the geometry; the refinement uses it).
    weights : str or Path, optional
        A Mesa-QSM checkpoint. Default: the shipped Mesa model whose resolution matches
        ``voxel_size`` within 2% (0.5 x 0.5 x 2 or 0.7639 x 0.7639 x 3 mm).

    Raises
    ------
    ValueError
        No ``weights`` and no shipped Mesa model for this voxel size.

    Warns
    -----
    UserWarning
        The checkpoint records a training voxel size different from ``voxel_size``.
    """
    from .registry import load_model, read_checkpoint_info, shipped_path

    name = weights if weights is not None else _shipped_mesa_for(voxel_size)
    net = load_model(name, device=device or "cpu")
    _check_model_kind(net, "mesa", name)
    path = shipped_path(name) if weights is None else weights
    trained = read_checkpoint_info(path)["extra"].get("voxel_size")
    if trained is not None and not np.allclose(as_voxel_size(voxel_size), trained, rtol=0.02):
        warnings.warn(f"Mesa-QSM weights {path} were trained at {tuple(trained)} mm, applied at "
                      f"{tuple(float(v) for v in as_voxel_size(voxel_size))} mm", UserWarning,
                      stacklevel=2)
    return reconstruct(net, field, mask, voxel_size=voxel_size, b0_dir=b0_dir, tile=tile,
                       device=device or "cpu", refine=refine, refine_iter=refine_iter,
                       refine_mu=refine_mu)


def _network_name(method):
    """The network a checkpoint for ``method`` must hold: that of its first shipped model (read
    from the model's metadata: ``meta-unrolled`` for ``meta-hybrid`` and ``meta-tv``, ``mesa``
    for the Mesa-QSM models), or the method's name where none is installed."""
    from .registry import read_checkpoint_info, shipped_path

    try:
        return read_checkpoint_info(shipped_path(method.shipped[0]))["model"]
    except (IndexError, FileNotFoundError, ValueError):
        return method.name


def check_network(method, *, voxel_size, options):
    """Preflight of the network methods (:attr:`metaqsm.methods.Method.preflight`): everything
    that would otherwise fail after minutes of work, checked first.

    Raises ``ValueError`` naming the argument: a CUDA ``device`` on a build or machine without
    CUDA, a ``weights`` file that is missing or holds another network, no shipped model
    installed for the method, or (Mesa-QSM) no shipped model at ``voxel_size``.
    """
    import torch

    from .registry import SHIPPED, read_checkpoint_info, shipped_path

    device = str(options.get("device") or "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device} is not available: this torch build "
                         f"({torch.__version__}) or machine has no CUDA; use device cpu")
    weights = options.get("weights")
    if weights is not None and str(weights) not in SHIPPED:
        from pathlib import Path

        if not Path(weights).is_file():
            raise ValueError(f"weights: no such file: {weights}")
        name = read_checkpoint_info(weights).get("model")
        needed = _network_name(method)
        if name != needed:
            raise ValueError(f"weights {weights} hold a {name!r} network, but method "
                             f"{method.name!r} needs a {needed!r} one")
        return
    if method.name == "mesa" and weights is None:
        name = _shipped_mesa_for(voxel_size)
    else:
        name = weights if weights is not None else method.shipped[0]
    try:
        shipped_path(name)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
