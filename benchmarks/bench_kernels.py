"""Benchmark of the dipole kernel's construction (a benchmark, not a test).

Times ``metaqsm.kernels.dipole_kernel`` (k-space, half spectrum, float32) with B0 along the
third axis and tilted, on the padded grids the project builds most: a 256 x 256 x 64 volume
doubled for an inversion (512 x 512 x 128) and the fine grid of a paper test volume doubled for
its forward field (1024 x 1024 x 384). References measured in the same run: the kernel with
every cross term of (k.b)^2 evaluated (B0 nudged off the axes by 1e-6: what ``dipole_kernel``
did for every direction before it skipped the terms with b_i b_j = 0, which it does
bit-identically, tests/test_kernels.py) and one bare float32 ``rfftn`` + ``irfftn`` pair of the
grid. Best of ``--repeats`` each; prints a markdown table.

Usage::

    nice python benchmarks/bench_kernels.py
    nice python benchmarks/bench_kernels.py --grids 256 256 64 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_inversion import fft_pair_seconds  # the FFT-pair reference of the inversion table

from metaqsm import kernels

TILTED = (0.0, np.sin(np.radians(20.0)), np.cos(np.radians(20.0)))


def nudged(b0_dir):
    """``b0_dir`` with its zero components set to 1e-6: every cross term is evaluated (the cost
    of the kernel before it skipped the zero ones; the values differ by about 1e-6)."""
    return tuple(c if c != 0.0 else 1e-6 for c in b0_dir)


def best_of(func, repeats):
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - t)
        del out
    return best


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
          "| kernel / FFT pair |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shape in grids:
        pair = fft_pair_seconds(shape, repeats=args.repeats)
        for name, b in (("along z", (0.0, 0.0, 1.0)), ("tilted 20 deg", TILTED)):
            new = best_of(lambda: kernels.dipole_kernel(shape, voxel_size=args.voxel_size,
                                                        b0_dir=b), args.repeats)
            ref = best_of(lambda: kernels.dipole_kernel(shape, voxel_size=args.voxel_size,
                                                        b0_dir=nudged(b)), args.repeats)
            print(f"| {' x '.join(map(str, shape))} | {name} | {new:.3f} | {ref:.3f} "
                  f"| {ref / new:.2f}x | {pair:.3f} | {new / pair:.2f} |", flush=True)


if __name__ == "__main__":
    main()
