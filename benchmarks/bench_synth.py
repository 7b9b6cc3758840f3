"""Throughput of the synthetic training data generator.

For each case (patch shape and voxel size range) it measures, in the same run:

* the reference: one bare float32 rfftn + irfftn pair (scipy.fft, workers=-1) on the fine grid
  of the range's middle voxel size (patch plus margin), the floor of any fine-grid simulation;
* samples per second of ``generate_sample`` in one process;
* samples per second of ``SyntheticStream`` through a ``DataLoader`` with 2 workers (after the
  first sample, so worker start-up and the MNI load are not counted);
* the same with ``variants=K`` (default 4): each generated scene serves K exact mirror images
  (``data.variants`` of the training configuration);

and compares them with the rate CPU training consumes: a step of the CPU configuration (batch 4
of 64 x 64 x 32) takes about ``--step-seconds`` (default 1.5 s), so it eats 4 / 1.5 = 2.7 samples
per second; the ratio columns are produced / consumed (>= 1: the stream keeps up; < 1: pre-generate
with ``metaqsm synth`` and train from the HDF5 file). For 128 x 128 x 64 patches the consumption
is scaled by the voxel count (a step on 8x the voxels takes about 8x longer).

    nice python benchmarks/bench_synth.py            # all cases
    nice python benchmarks/bench_synth.py --quick    # fewer samples
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.fft as sfft

from metaqsm.simulate.anatomy import mni_maps
from metaqsm.simulate.synth import SynthConfig, _make_grid, generate_sample

CASES = [
    ("64x64x32 paper range", (64, 64, 32), ((0.5, 1.0), (0.5, 1.0), (2.0, 4.0)), 0.0),
    ("64x64x32 CPU-config range", (64, 64, 32), ((0.5, 1.2), (0.5, 1.2), (0.5, 4.0)), 30.0),
    ("128x128x64 paper range", (128, 128, 64), ((0.5, 1.0), (0.5, 1.0), (2.0, 4.0)), 0.0),
]


def fft_pair_seconds(shape, repeats=3):
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        sfft.irfftn(sfft.rfftn(x, workers=-1), s=shape, workers=-1)
        best = min(best, time.perf_counter() - t)
    return best


def single_process_rate(config, n):
    generate_sample(10 ** 5, config=config, seed=0)  # warm-up
    t = time.perf_counter()
    for i in range(n):
        generate_sample(i, config=config, seed=0)
    return n / (time.perf_counter() - t)


def loader_rate(config, n, workers=2, variants=1):
    from torch.utils.data import DataLoader

    from metaqsm.dl.data import SyntheticStream

    loader = DataLoader(SyntheticStream(config, seed=0, length=10 ** 6, variants=variants),
                        batch_size=1, num_workers=workers)
    it = iter(loader)
    for _ in range(workers):  # one sample from each worker: both are up and warm
        next(it)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    rate = n / (time.perf_counter() - t)
    del it
    return rate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples per case")
    parser.add_argument("--step-seconds", type=float, default=1.5,
                        help="seconds of one CPU training step (batch 4 of 64x64x32)")
    parser.add_argument("--no-loader", action="store_true", help="skip the DataLoader columns")
    parser.add_argument("--variants", type=int, default=4,
                        help="mirror images per scene of the last column (default 4)")
    args = parser.parse_args(argv)
    mni_maps()
    need = 4.0 / args.step_seconds
    print(f"consumed by CPU training: 4 samples / {args.step_seconds:g} s = {need:.2f} samples/s")
    head = (f"{'case':28s} {'fine grid (mid voxel)':>22s} {'FFT pair s':>10s} "
            f"{'1 proc /s':>9s} {'s/sample':>8s} {'/FFT':>6s} {'2 workers /s':>12s} "
            f"{'ratio':>6s} {f'x{args.variants} variants /s':>16s} {'ratio':>6s}")
    print(head)
    print("-" * len(head))
    for name, patch, vrange, tilt in CASES:
        cfg = SynthConfig(patch_shape=patch, voxel_size_range=vrange, max_tilt_deg=tilt)
        mid = np.mean(np.asarray(vrange), axis=1)
        shape = tuple(int(n) for n in _make_grid(cfg, mid).fine_shape)
        ref = fft_pair_seconds(shape)
        big = patch[0] > 64
        n = (2 if big else 4) if args.quick else (4 if big else 12)
        rate = single_process_rate(cfg, n)
        lrate = np.nan if args.no_loader else loader_rate(cfg, n)
        # two whole blocks (variants x 8 scenes) per worker: the steady state, where 1 in
        # `variants` samples is generated
        vrate = np.nan if args.no_loader else loader_rate(cfg, 2 * 2 * args.variants * 8,
                                                          variants=args.variants)
        best = rate if np.isnan(lrate) else max(rate, lrate)
        # training time grows with the patch's voxels: a 128x128x64 step eats 8x fewer samples/s
        need_case = need * (64 * 64 * 32) / float(np.prod(patch))
        print(f"{name:28s} {'x'.join(map(str, shape)):>22s} {ref:10.3f} {rate:9.2f} "
              f"{1 / rate:8.2f} {1 / rate / ref:6.1f} {lrate:12.2f} {best / need_case:6.2f} "
              f"{vrate:16.2f} {vrate / need_case:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
