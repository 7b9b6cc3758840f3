"""Benchmark of Meta-QSM 2 inference (meta-unrolled, meta-tv, meta-hybrid) beside Meta-QSM, TV,
weighted TV and MEDI.

The user-facing calls (`metaqsm invert --method meta-unrolled / meta-tv / meta-hybrid / meta / tv /
wtv / medi`)
on the field of a brain-like phantom (default 256 x 256 x 64 at 0.9375 x 0.9375 x 2 mm, as
benchmarks/bench_inversion.py), interleaved in one process so that they see the same load; the
minimum over the repetitions is kept. Reference in the same run: one float32 rfftn + irfftn pair
of the volume (scipy, all threads).

    nice python benchmarks/bench_unrolled.py                         # shipped models
    nice python benchmarks/bench_unrolled.py --weights runs/meta-unrolled/best.safetensors

Target (issue 16): the network a user runs under 10 s on 256 x 256 x 64 on 2 cores. meta-tv runs
the network and then weighted TV's iterations with the network's map as the prior; wTV and meta-tv
get a magnitude whose edges are the phantom's tissue boundaries (exp(-5 chi) in the mask, as
tests/test_inversion_wtv.py), which sets their TV weight and edge weights. The hybrid runs the
network and MEDI (without magnitude here), so its time is theirs plus the band merge.
RMSE here is against the phantom (idealised data: dipole-consistent field, white noise), which
favours the classical methods; accuracy on realistic data is the realistic suite's.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs=3, type=int, default=[256, 256, 64])
    p.add_argument("--voxel-size", nargs=3, type=float, default=[0.9375, 0.9375, 2.0])
    p.add_argument("--weights", default=None,
                   help="meta-unrolled checkpoint (default: the shipped model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)

    import scipy.fft as sfft
    import torch

    from metaqsm.dl.hybrid import invert_meta_hybrid, invert_meta_tv
    from metaqsm.dl.infer import invert_meta
    from metaqsm.dl.unrolled import invert_meta_unrolled
    from metaqsm.inversion.medi import medi
    from metaqsm.inversion.tv import tv, wtv
    from metaqsm.kernels import forward_field
    from metaqsm.simulate.phantoms import brain_phantom

    torch.set_num_threads(a.threads)
    shape, vsz = tuple(a.shape), tuple(a.voxel_size)
    ph = brain_phantom(shape, voxel_size=vsz, rng=0)
    field = forward_field(ph.chi, voxel_size=vsz)
    field += np.random.default_rng(1).normal(0.0, 0.002, shape).astype(np.float32)
    field *= ph.mask
    mag = np.where(ph.mask, np.exp(-5.0 * ph.chi), 0.05).astype(np.float32)
    runs = {
        "meta-unrolled": lambda: invert_meta_unrolled(field, ph.mask, voxel_size=vsz,
                                                      weights=a.weights),
        "meta-tv": lambda: invert_meta_tv(field, ph.mask, voxel_size=vsz, magnitude=mag,
                                          weights=a.weights),
        "meta-hybrid": lambda: invert_meta_hybrid(field, ph.mask, voxel_size=vsz,
                                                  weights=a.weights),
        "meta (direct)": lambda: invert_meta(field, ph.mask, voxel_size=vsz),
        "tv": lambda: tv(field, ph.mask, voxel_size=vsz),
        "wtv": lambda: wtv(field, ph.mask, voxel_size=vsz, magnitude=mag),
        "medi": lambda: medi(field, ph.mask, voxel_size=vsz),
    }
    x = field.astype(np.float32)
    times = {k: [] for k in (*runs, "fft pair")}
    rmse = {}
    for _ in range(a.reps):
        for name, run in runs.items():
            t = time.perf_counter()
            chi = run()
            times[name].append(time.perf_counter() - t)
            rmse[name] = 100.0 * float(np.linalg.norm((chi - ph.chi)[ph.mask])
                                       / np.linalg.norm(ph.chi[ph.mask]))
        t = time.perf_counter()
        sfft.irfftn(sfft.rfftn(x, workers=a.threads), s=x.shape, workers=a.threads)
        times["fft pair"].append(time.perf_counter() - t)
    print(f"# bench_unrolled: {shape[0]}x{shape[1]}x{shape[2]} at {vsz} mm, {a.threads} threads, "
          f"interleaved, min of {a.reps}; weights {a.weights or 'shipped'}")
    print()
    print("| method | seconds | RMSE on the phantom (%) | target |")
    print("|---|---|---|---|")
    for name in runs:
        target = "< 10 s" if name in ("meta-unrolled", "meta-tv") else ""
        print(f"| {name} | {min(times[name]):.2f} | {rmse[name]:.1f} | {target} |")
    print(f"| reference: rfftn + irfftn pair | {min(times['fft pair']):.3f} | | |")
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
