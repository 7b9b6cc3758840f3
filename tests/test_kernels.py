import numpy as np
import pytest
import scipy.fft as sfft

from metaqsm import kernels
from conftest import sphere_volume


def analytic_sphere_field(shape, voxel_size, radius, b0_dir, dchi=1.0):
    vsz = np.asarray(voxel_size, float)
    b = np.asarray(b0_dir, float) / np.linalg.norm(b0_dir)
    grids = [(np.arange(n) - n / 2.0) * d for n, d in zip(shape, vsz)]
    X, Y, Z = np.meshgrid(*grids, indexing="ij")
    r = np.sqrt(X * X + Y * Y + Z * Z)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (X * b[0] + Y * b[1] + Z * b[2]) / r
        out = dchi * (radius / r) ** 3 * (3 * cos * cos - 1) / 3
    out[r <= radius] = 0.0
    return out, r


@pytest.mark.parametrize(
    "shape,voxel_size,b0_dir",
    [
        ((64, 64, 64), (1.0, 1.0, 1.0), (0, 0, 1)),
        ((80, 80, 40), (0.75, 0.75, 1.5), (0, 0, 1)),
        ((64, 64, 64), (1.0, 1.0, 1.0), (np.sin(0.4), 0.0, np.cos(0.4))),
        ((80, 80, 40), (0.75, 0.75, 1.5), (0.2, -0.3, 0.93)),
    ],
)
def test_sphere_field_matches_analytic(shape, voxel_size, b0_dir):
    radius = 8.0
    chi = sphere_volume(shape, voxel_size, radius)
    field = kernels.forward_field(chi, voxel_size=voxel_size, b0_dir=b0_dir)
    truth, r = analytic_sphere_field(shape, voxel_size, radius, b0_dir)
    outside = (r > 1.5 * radius) & (r < 3.5 * radius)
    rel = np.linalg.norm(field[outside] - truth[outside]) / np.linalg.norm(truth[outside])
    print(f"sphere {shape} {voxel_size} b0={np.round(b0_dir, 3)}: outside rel. error {rel:.4f}")
    # The sampled k-space kernel is the dipole band-limited to the grid's cubic Brillouin zone;
    # with a tilted B0 that truncation costs a few percent (the image-space kernel does not).
    assert rel < (0.01 if np.allclose(b0_dir, (0, 0, 1)) else 0.045)
    fi = kernels.forward_field(chi, voxel_size=voxel_size, b0_dir=b0_dir, method="ispace")
    rel_i = np.linalg.norm(fi[outside] - truth[outside]) / np.linalg.norm(truth[outside])
    print(f"  image-space kernel: {rel_i:.4f}")
    # point dipoles at anisotropic voxel centres are a coarser quadrature of the sphere
    assert rel_i < (0.01 if len(set(voxel_size)) == 1 else 0.05)
    inside = r < 0.6 * radius
    assert np.max(np.abs(field[inside])) < 0.02  # 0 inside with the Lorentz correction


def test_ispace_kernel_close_to_kspace_far_from_source():
    shape, vsz = (64, 64, 64), (1.0, 1.0, 1.0)
    chi = sphere_volume(shape, vsz, 6.0)
    fk = kernels.forward_field(chi, voxel_size=vsz, method="kspace")
    fi = kernels.forward_field(chi, voxel_size=vsz, method="ispace")
    truth, r = analytic_sphere_field(shape, vsz, 6.0, (0, 0, 1))
    far = (r > 12) & (r < 24)
    rel = np.linalg.norm(fi[far] - truth[far]) / np.linalg.norm(truth[far])
    assert rel < 0.05
    assert np.linalg.norm(fi[far] - fk[far]) / np.linalg.norm(fk[far]) < 0.05


def test_dipole_kernel_properties():
    D = kernels.dipole_kernel((16, 20, 24), voxel_size=(1, 1, 2))
    assert D.shape == (16, 20, 13) and D.dtype == np.float32
    assert D[0, 0, 0] == 0.0
    assert D.max() <= 1 / 3 + 1e-6 and D.min() >= -2 / 3 - 1e-6
    full = kernels.dipole_kernel((16, 20, 24), voxel_size=(1, 1, 2), rfft=False)
    np.testing.assert_allclose(full[:, :, :13], D, atol=1e-7)
    # b0 along x: D is 1/3 - kx^2/k^2, so along the kx axis it is -2/3
    Dx = kernels.dipole_kernel((8, 8, 8), voxel_size=1, b0_dir=(2, 0, 0))
    assert np.isclose(Dx[1, 0, 0], -2 / 3) and np.isclose(Dx[0, 1, 0], 1 / 3)


@pytest.mark.parametrize("b0_dir", [(0, 0, 1), (0, 0.6, 0.8), (0.3, 0.1, 0.9)])
def test_dipole_kernel_cross_terms(b0_dir):
    # the kernel skips the cross terms (k.b)^2 has no part of (b_i b_j = 0): bit-identical to
    # 1/3 - (k.b)^2/|k|^2 with all of them, the Nyquist samples' cross terms dropped
    shape, vsz = (12, 10, 9), (0.8, 0.9, 2.0)
    D = kernels.dipole_kernel(shape, voxel_size=vsz, b0_dir=b0_dir)
    b = np.asarray(b0_dir, np.float32) / np.float32(np.linalg.norm(b0_dir))
    ks = [k.astype(np.float32) for k in kernels.kspace_coordinates(shape, vsz, rfft=True)]
    kc = [k.copy() for k in ks]
    kc[0].reshape(-1)[6] = 0.0  # the even axes' Nyquist
    kc[1].reshape(-1)[5] = 0.0
    kb2 = sum((b[i] * ks[i]) ** 2 for i in range(3))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        kb2 = kb2 + np.float32(2.0) * b[i] * b[j] * kc[i] * kc[j]
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    k2[0, 0, 0] = 1.0
    ref = np.float32(1.0 / 3.0) - kb2 / k2
    ref[0, 0, 0] = 0.0
    np.testing.assert_array_equal(D, ref)


def test_anisotropic_kernel_uses_physical_k():
    # a kernel on (n, n, n/2) with voxels (d, d, 2d) is the same physical grid spacing in k
    D1 = kernels.dipole_kernel((32, 32, 32), voxel_size=(1, 1, 1), rfft=False)
    D2 = kernels.dipole_kernel((32, 32, 16), voxel_size=(1, 1, 2), rfft=False)
    # k_z of D2 index j equals k_z of D1 index j (both 1/(32 mm)), for j < 8
    np.testing.assert_allclose(D2[:5, :5, :8], D1[:5, :5, :8], atol=1e-6)


def test_smv_kernel_and_laplacian():
    S = kernels.smv_kernel((32, 32, 32), voxel_size=(1, 1, 1), radius=4)
    assert np.isclose(S[0, 0, 0], 1.0)
    x = np.random.default_rng(0).standard_normal((32, 32, 32)).astype(np.float32)
    # the spherical mean of a constant is the constant
    c = np.full((32, 32, 32), 2.5, np.float32)
    np.testing.assert_allclose(kernels.fft_convolve(c, S), 2.5, rtol=1e-5)
    L = kernels.laplacian_kernel((32, 32, 32), voxel_size=(1, 1, 2))
    lap_fft = sfft.irfftn(sfft.rfftn(x) * L, s=x.shape)
    np.testing.assert_allclose(lap_fft, kernels.laplacian(x, voxel_size=(1, 1, 2)), atol=1e-4)
    with pytest.raises(ValueError, match="radius"):
        kernels.smv_kernel((8, 8, 8), voxel_size=(2, 2, 2), radius=1)


def test_gradient_divergence_adjoint():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 12, 8)).astype(np.float32)
    g = rng.standard_normal((3, 10, 12, 8)).astype(np.float32)
    vsz = (0.5, 1.0, 2.0)
    lhs = np.sum(kernels.gradient(x, voxel_size=vsz) * g, dtype=np.float64)
    rhs = -np.sum(x * kernels.divergence(g, voxel_size=vsz), dtype=np.float64)
    assert np.isclose(lhs, rhs, rtol=1e-4)


def test_dipole_operator_self_adjoint_and_padding():
    rng = np.random.default_rng(2)
    op = kernels.DipoleOperator((12, 10, 8), voxel_size=(1, 1, 2), b0_dir=(0.1, 0.2, 1), pad=0)
    x, y = rng.standard_normal((2, 12, 10, 8)).astype(np.float32)
    assert np.isclose(np.sum(op(x) * y, dtype=np.float64), np.sum(x * op(y), dtype=np.float64), rtol=1e-4)
    assert kernels.padded_shape((12, 10, 8), "auto") == (24, 20, 16)
    assert kernels.padded_shape((12, 10, 8), 0) == (12, 10, 8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(voxel_size=(1, 0, 1)), "voxel_size"),
        (dict(voxel_size=(1, -1, 1)), "voxel_size"),
        (dict(voxel_size=(1, 1, 1), b0_dir=(0, 0, 0)), "b0_dir"),
        (dict(voxel_size=(1, 1, 1), pad="bogus"), "pad"),
    ],
)
def test_forward_field_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kernels.forward_field(np.zeros((8, 8, 8)), **kwargs)


def test_forward_field_bad_volume():
    with pytest.raises(ValueError, match="chi"):
        kernels.forward_field(np.zeros((8, 8)), voxel_size=1)
    bad = np.zeros((8, 8, 8))
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kernels.forward_field(bad, voxel_size=1)


# ----------------------------------------------- the numerical toolbox (_fft, _fd, _linalg)

def test_fft_convolve_equals_direct_circular_convolution():
    """A 3 x 3 x 3 kernel applied by its rfft spectrum equals scipy.ndimage's wrap-around
    convolution (the kernel centred at voxel 0 of the periodic grid)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 10, 7)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3)).astype(np.float32)
    on_grid = np.zeros(x.shape, np.float32)
    on_grid[:3, :3, :3] = k
    on_grid = np.roll(on_grid, (-1, -1, -1), axis=(0, 1, 2))  # centre of k at the origin
    y = kernels.fft_convolve(x, sfft.rfftn(on_grid))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, ndimage.convolve(x, k, mode="wrap"), atol=1e-5)


def test_fft_convolve_with_padding_is_linear_convolution():
    """On a padded grid (``shape=``) the circular convolution equals the linear one, and the
    padded input never changes the caller's array."""
    from scipy import signal

    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 6, 5))
    k = rng.standard_normal((3, 4, 2))
    shape = kernels.padded_shape(x.shape, np.subtract(k.shape, 1))
    assert all(s >= n + m - 1 for s, n, m in zip(shape, x.shape, k.shape))
    before = x.copy()
    y = kernels.fft_convolve(x, sfft.rfftn(k, s=shape), shape=shape)
    full = signal.convolve(x, k, mode="full", method="direct")
    np.testing.assert_allclose(kernels.crop_volume(y, full.shape), full, atol=1e-10)
    np.testing.assert_array_equal(x, before)


def test_rfft_pads_and_irfft_inverts():
    from metaqsm._fft import irfft, rfft

    x = np.random.default_rng(5).standard_normal((6, 5, 4)).astype(np.float32)
    X = rfft(x, (8, 8, 6))
    assert X.shape == (8, 8, 4) and X.dtype == np.complex64
    y = irfft(X, (8, 8, 6))
    np.testing.assert_allclose(kernels.crop_volume(y, x.shape), x, atol=1e-6)
    np.testing.assert_allclose(y[6:], 0.0, atol=1e-6)


def test_padded_shape_is_fast_and_pad_crop_round_trip():
    assert kernels.padded_shape((10, 11, 7), (3, 0, 2)) == (
        sfft.next_fast_len(13, real=True), 11, sfft.next_fast_len(9, real=True))
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    p = kernels.pad_volume(x, (4, 4, 5))
    assert p.sum() == x.sum()
    np.testing.assert_array_equal(kernels.crop_volume(p, x.shape), x)
    with pytest.raises(ValueError, match="pad must be non-negative"):
        kernels.padded_shape((8, 8, 8), -1)
    with pytest.raises(ValueError, match="shape must be 3"):
        kernels.padded_shape((8, 8), 0)


@pytest.mark.parametrize("shape", [(7, 6, 5), (1, 2, 3), (2, 1, 4)])
def test_finite_differences_match_np_roll(shape):
    """Periodic forward gradient, backward divergence and 7-point Laplacian against the
    np.roll definitions, on ordinary and degenerate (1 or 2 voxel) axes."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal((3,) + shape).astype(np.float32)
    vsz = (0.7, 1.0, 1.5)
    grad = np.stack([(np.roll(x, -1, i) - x) / np.float32(vsz[i]) for i in range(3)])
    div = sum((g[i] - np.roll(g[i], 1, i)) / np.float32(vsz[i]) for i in range(3))
    lap = sum((np.roll(x, 1, i) + np.roll(x, -1, i) - 2 * x) / np.float32(vsz[i] ** 2)
              for i in range(3))
    np.testing.assert_allclose(kernels.gradient(x, voxel_size=vsz), grad, atol=1e-5)
    np.testing.assert_allclose(kernels.divergence(g, voxel_size=vsz), div, atol=1e-5)
    np.testing.assert_array_equal(kernels.laplacian(x, voxel_size=vsz), lap)  # same arithmetic


def test_laplacian_is_divergence_of_gradient():
    from metaqsm._fd import div_weighted_grad

    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 10, 8))
    vsz = (0.5, 1.0, 2.0)
    lap = kernels.laplacian(x, voxel_size=vsz, out=np.empty(x.shape))
    dg = kernels.divergence(kernels.gradient(x, voxel_size=vsz, out=np.empty((3,) + x.shape)),
                            voxel_size=vsz, out=np.empty(x.shape))
    np.testing.assert_allclose(lap, dg, rtol=1e-12, atol=1e-12)
    w = np.broadcast_to((1.0 / np.square(vsz)).reshape(3, 1, 1, 1), (3,) + x.shape)
    np.testing.assert_allclose(div_weighted_grad(x, w, out=np.empty(x.shape)), lap, atol=1e-12)
    with pytest.raises(ValueError, match="g must have the shape"):
        kernels.divergence(np.zeros((12, 10, 8, 3)), voxel_size=vsz)


@pytest.mark.parametrize("shape", [(64, 40, 36), (37, 33, 30), (16, 80, 70)])
def test_div_weighted_grad_in_threads_is_bit_identical(shape, monkeypatch):
    """Split over slabs of the first axis (any slab count the shape allows), the fused weighted
    divergence gives exactly the single-threaded result, across the periodic wrap too; with
    limit_threads(1) it stays in one thread."""
    from metaqsm import _parallel
    from metaqsm._fd import div_weighted_grad
    from metaqsm.bids._threads import limit_threads

    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.random((3,) + shape).astype(np.float32)
    one = div_weighted_grad(x, w)
    monkeypatch.setattr(_parallel, "THREADED_SIZE", 1)
    for workers in (2, 3, 4):
        monkeypatch.setattr(_parallel, "WORKERS", workers)
        assert _parallel.thread_count(x) == min(workers, shape[0] // 4)
        np.testing.assert_array_equal(div_weighted_grad(x, w), one)
    with limit_threads(1):
        assert _parallel.thread_count(x) == 1
    assert [b - a for a, b in _parallel.slabs(10, 3)] == [3, 3, 4]


@pytest.mark.parametrize("boundary", ["neumann", "dirichlet"])
def test_poisson_solver_inverts_the_laplacian(boundary):
    """``solve(f)`` satisfies lap(u) = f with the boundary condition: zero flux (the Laplacian
    with the pairs across the faces weighted 0; f of zero mean) or zero values just outside."""
    from metaqsm._fd import div_weighted_grad, poisson_solver

    rng = np.random.default_rng(8)
    shape, vsz = (9, 8, 6), (1.0, 0.8, 1.5)
    f = rng.standard_normal(shape)
    solve = poisson_solver(shape, voxel_size=vsz, boundary=boundary)
    if boundary == "neumann":
        f -= f.mean()
        u = solve(f)
        w = np.empty((3,) + shape)
        for i in range(3):
            w[i] = 1.0 / vsz[i] ** 2
            w[(i,) + (slice(None),) * i + (-1,)] = 0.0  # no pair across the faces
        lap = div_weighted_grad(u, w, out=np.empty(shape))
        assert abs(u.mean()) < 1e-12
    else:
        u = solve(f)
        big = np.pad(u, 1)  # the zero values just outside the box
        lap = kernels.laplacian(big, voxel_size=vsz, out=np.empty(big.shape))[1:-1, 1:-1, 1:-1]
    np.testing.assert_allclose(lap, f, atol=1e-10)
    with pytest.raises(ValueError, match="boundary must be one of"):
        poisson_solver(shape, voxel_size=vsz, boundary="periodic")


def _spd(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    return a @ a.T + n * np.eye(n), rng.standard_normal(n)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_cg_matches_numpy_solve(dtype, tol):
    """CG on an SPD system (a 4 x 4 x 4 'volume'): the residual bound holds, and the error is
    within the condition number times it."""
    from metaqsm._linalg import cg

    spd, rhs = _spd(64, 0)
    b = rhs.reshape(4, 4, 4).astype(dtype)

    def A(v):
        return (spd @ v.ravel()).reshape(v.shape).astype(dtype)

    x, info = cg(A, b, tol=tol, max_iter=200)
    assert x.dtype == dtype and x.shape == b.shape
    assert info.converged and 0 < info.iterations <= 64 and info.residual <= tol
    exact = np.linalg.solve(spd, rhs)
    err = np.linalg.norm(x.ravel() - exact) / np.linalg.norm(exact)
    assert err <= 10 * np.linalg.cond(spd) * tol
    true_res = np.linalg.norm(rhs - spd @ x.ravel().astype(np.float64)) / np.linalg.norm(rhs)
    assert true_res <= 10 * tol


def test_cg_preconditioner_initial_guess_and_limits():
    from metaqsm._linalg import cg

    spd, rhs = _spd(50, 1)
    spd = spd * np.logspace(0, 3, 50)[:, None] * np.logspace(0, 3, 50)[None, :]  # badly scaled

    def A(v):
        return spd @ v

    exact = np.linalg.solve(spd, rhs)
    plain, info_plain = cg(A, rhs, tol=1e-8, max_iter=500)
    jacobi, info_jacobi = cg(A, rhs, M=lambda r: r / np.diag(spd), tol=1e-8, max_iter=500)
    assert info_jacobi.converged and info_jacobi.iterations < info_plain.iterations
    np.testing.assert_allclose(plain, exact, rtol=1e-5)
    np.testing.assert_allclose(jacobi, exact, rtol=1e-5)
    # an exact initial guess needs no iteration; a zero right-hand side gives zero
    x, info = cg(A, rhs, exact, tol=1e-6)
    assert info.iterations == 0 and info.converged
    x, info = cg(A, np.zeros(50))
    assert info.iterations == 0 and info.residual == 0.0 and not x.any()
    # the iteration limit is respected and reported
    x, info = cg(A, rhs, tol=1e-12, max_iter=3)
    assert info.iterations == 3 and not info.converged and info.residual > 1e-12
    with pytest.raises(ValueError, match="tol"):
        cg(A, rhs, tol=0)
    with pytest.raises(ValueError, match="max_iter"):
        cg(A, rhs, max_iter=0)
    with pytest.raises(ValueError, match="x0 must have the shape of b"):
        cg(A, rhs, np.zeros(3))
