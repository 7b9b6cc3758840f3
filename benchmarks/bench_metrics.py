"""Benchmark of :mod:`metaqsm.metrics` (a benchmark, not a test).

Times each metric and :func:`metaqsm.metrics.compute_metrics` on a brain-like phantom
(default 256 x 256 x 64) against a noisy copy of it, and prints a markdown table with the wall
time (best of ``--repeats``) and the time in "FFT pairs": one bare float64 ``rfftn`` + ``irfftn``
of the HFEN grid (the volume padded by the 15-voxel kernel), measured in the same run, because
absolute times drift on a shared machine.

Usage::

    nice python benchmarks/bench_metrics.py
    nice python benchmarks/bench_metrics.py --shape 128 128 64 --repeats 5

Target (issue 2): all metrics of a 256 x 256 x 64 volume in a second or two.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.fft as sfft

from metaqsm import metrics as M
from metaqsm.simulate.phantoms import brain_phantom


def best_time(fn, repeats):
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 256, 64))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    shape = tuple(args.shape)

    ph = brain_phantom(shape, voxel_size=(0.9375, 0.9375, 2.0), rng=0)
    rng = np.random.default_rng(1)
    x = (ph.chi + 0.01 * rng.standard_normal(shape)).astype(np.float32)
    y, mask, labels = ph.chi, ph.mask, ph.labels

    grid = tuple(sfft.next_fast_len(n + 14, real=True) for n in shape)
    a = rng.standard_normal(grid)
    pair = best_time(lambda: sfft.irfftn(sfft.rfftn(a, workers=-1), s=grid, workers=-1), 5)
    del a

    rows = []
    for name in ("rmse", "nrmse_demeaned", "hfen", "ssim", "xsim", "correlation"):
        fn = getattr(M, name)
        rows.append((name, best_time(lambda fn=fn: fn(x, y, mask), args.repeats)))
    rows.append(("compute_metrics", best_time(lambda: M.compute_metrics(x, y, mask), args.repeats)))
    rows.append(("compute_metrics + labels",
                 best_time(lambda: M.compute_metrics(x, y, mask, labels=labels), args.repeats)))

    print(f"volume {'x'.join(map(str, shape))}; reference: one float64 rfftn+irfftn pair on "
          f"{'x'.join(map(str, grid))} = {pair:.3f} s\n")
    print("| metric | time (s) | FFT pairs |")
    print("| --- | --- | --- |")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {t / pair:.1f} |")


if __name__ == "__main__":
    main()
