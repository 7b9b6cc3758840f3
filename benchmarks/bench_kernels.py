"""Benchmark of the dipole kernel's construction (a benchmark, not a test).

Times ``metaqsm.kernels.dipole_kernel`` (k-space, half spectrum, float32) with B0 along the
third axis and tilted, on the padded grids the project builds most: a 256 x 256 x 64 volume
doubled for an inversion (512 x 512 x 128) and the fine grid of a paper test volume doubled for
its forward field (1024 x 1024 x 384). References measured in the same run: the kernel with
every cross term of (k.b)^2 evaluated (what ``dipole_kernel`` did before it skipped the zero
ones; the result is bit-identical, tests/test_kernels.py) and one bare float32 ``rfftn`` +
``irfftn`` pair of the grid. Best of ``--repeats`` each; prints a markdown table.

Usage::

    nice python benchmarks/bench_kernels.py
    nice python benchmarks/bench_kernels.py --grids 256 256 64 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.fft as sfft

from metaqsm import kernels

TILTED = (0.0, np.sin(np.radians(20.0)), np.cos(np.radians(20.0)))


def full_formula(shape, voxel_size, b0_dir):
    """The kernel with all three cross terms (the reference): same float32 arithmetic."""
    b = np.asarray(b0_dir, np.float64)
    b = (b / np.linalg.norm(b)).astype(np.float32)
    ks = [k.astype(np.float32) for k in kernels.kspace_coordinates(shape, voxel_size, rfft=True)]
    kc = []
    for axis, (k, n) in enumerate(zip(ks, shape)):
        k = k.copy()
        if n % 2 == 0:
            k.reshape(-1)[n // 2 if axis < 2 else -1] = 0.0
        kc.append(k)
    kb2 = sum((b[i] * ks[i]) ** 2 for i in range(3))
    for i, j in ((0, 1), (0, 2), (1, 2)):
        kb2 = kb2 + np.float32(2.0) * b[i] * b[j] * kc[i] * kc[j]
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    k2[0, 0, 0] = 1.0
    D = np.float32(1.0 / 3.0) - kb2 / k2
    D[0, 0, 0] = 0.0
    return D


def best_of(func, repeats):
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - t)
        del out
    return best


def fft_pair(shape, repeats):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return best_of(lambda: sfft.irfftn(sfft.rfftn(x, workers=-1), s=shape, workers=-1), repeats)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[512, 512, 128, 1024, 1024, 384],
                    help="grid shapes, 3 ints each (default: 512 512 128 1024 1024 384)")
    ap.add_argument("--voxel-size", type=float, nargs=3, default=[0.4, 0.45, 1.0],
                    help="mm (default: a test volume's fine grid)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if len(args.grids) % 3:
        ap.error("--grids takes 3 ints per grid")
    grids = [tuple(args.grids[i:i + 3]) for i in range(0, len(args.grids), 3)]
    print("| grid | B0 | dipole_kernel (s) | all cross terms (s) | speed-up | FFT pair (s) "
          "| kernel / FFT pair | identical |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape in grids:
        pair = fft_pair(shape, args.repeats)
        for name, b in (("along z", (0.0, 0.0, 1.0)), ("tilted 20 deg", TILTED)):
            same = np.array_equal(kernels.dipole_kernel(shape, voxel_size=args.voxel_size, b0_dir=b),
                                  full_formula(shape, args.voxel_size, b))
            new = best_of(lambda: kernels.dipole_kernel(shape, voxel_size=args.voxel_size,
                                                        b0_dir=b), args.repeats)
            ref = best_of(lambda: full_formula(shape, args.voxel_size, b), args.repeats)
            print(f"| {' x '.join(map(str, shape))} | {name} | {new:.3f} | {ref:.3f} "
                  f"| {ref / new:.2f}x | {pair:.3f} | {new / pair:.2f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
