"""Benchmark of the networks on the CPU: inference time and peak memory of Meta-QSM vs Mesa-QSM of
the same width on 256 x 256 x 64, and training steps per second of the CPU and paper
configurations.

Every measurement runs in its own subprocess (so its peak resident memory is its own), Meta and
Mesa alternate, and the minimum over repetitions is kept, because the machine is shared and its
load drifts. A reference measured in the same run: one bare rfftn + irfftn pair of the
zero-padded volume (the cost unit of the classical inversions), and one 16 -> 16 channel 3x3x3
convolution of the volume.

    nice python benchmarks/bench_dl.py                 # the full table (a few minutes)
    nice python benchmarks/bench_dl.py --quick         # fewer repetitions, no paper training step

Targets (issue 5): Meta within 1.1x of Mesa at inference, both under 10 s at the shipped width.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _model(kind, depth, base, basis):
    from metaqsm.dl import MesaQSM, MetaQSM

    if kind == "meta":
        return MetaQSM(depth=depth, base=base, basis=basis)
    return MesaQSM(depth=depth, base=base)


def worker_infer(a):
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = _model(a.kind, a.depth, a.base, a.basis).eval()
    x = torch.randn(1, 1, *a.shape) * 0.05
    v = torch.tensor([[0.5, 0.5, 2.0]])
    b = torch.tensor([[0.0, 0.17, 0.985]])
    base_mb = _peak_mb()
    times = []
    with torch.inference_mode():
        net(x[..., : max(8, a.shape[2] // 4)], v, b)  # warm-up (oneDNN primitive creation)
        for _ in range(a.reps):
            t = time.perf_counter()
            net(x, v, b)
            times.append(time.perf_counter() - t)
    return {"seconds": min(times), "peak_mb": _peak_mb(), "base_mb": base_mb,
            "params": sum(p.numel() for p in net.parameters())}


def worker_train(a):
    import torch

    from metaqsm.dl.train import masked_l1, regularization

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = _model(a.kind, a.depth, a.base, a.basis).train()
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4, alpha=0.9, eps=1e-7)
    vs = torch.tensor([[0.5, 0.5, 2.0], [0.7, 0.8, 3.0], [1.0, 1.0, 1.0], [0.9, 0.6, 4.0]])
    b0 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.26, 0.966], [0.3, 0.0, 0.95], [0.0, 0.0, 1.0]])
    x = torch.randn(a.batch, 1, *a.shape) * 0.05
    y = torch.randn(a.batch, 1, *a.shape) * 0.1
    v, b = vs[: a.batch], b0[: a.batch]  # every sample a different geometry (the worst case)
    times = []
    for i in range(a.reps + 1):
        t = time.perf_counter()
        loss = masked_l1(net(x, v, b) * 10, y * 10) + 0.01 * regularization(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t)
    return {"seconds": min(times), "peak_mb": _peak_mb()}


def worker_ref(a):
    import numpy as np
    import scipy.fft as sfft
    import torch

    from metaqsm.kernels import padded_shape

    torch.set_num_threads(a.threads)
    x = np.random.default_rng(0).standard_normal(padded_shape(a.shape)).astype(np.float32)
    fft = []
    for _ in range(3):
        t = time.perf_counter()
        sfft.irfftn(sfft.rfftn(x, workers=a.threads), s=x.shape, workers=a.threads)
        fft.append(time.perf_counter() - t)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1).to(memory_format=torch.channels_last_3d)
    xt = torch.randn(1, 16, *a.shape).contiguous(memory_format=torch.channels_last_3d)
    ct = []
    with torch.inference_mode():
        conv(xt[..., :8])
        for _ in range(3):
            t = time.perf_counter()
            conv(xt)
            ct.append(time.perf_counter() - t)
    return {"fft_pair": min(fft), "conv16": min(ct)}


def worker_synth(a):
    from metaqsm.simulate.synth import SynthConfig, generate_sample

    cfg = SynthConfig(patch_shape=tuple(a.shape))
    generate_sample(0, config=cfg, seed=0)
    t = time.perf_counter()
    for i in range(1, a.reps + 1):
        generate_sample(i, config=cfg, seed=0)
    return {"seconds": (time.perf_counter() - t) / a.reps}


def run_worker(mode, **kw):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode]
    for k, v in kw.items():
        cmd.append(f"--{k.replace('_', '-')}")
        cmd.extend(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--kind", default="meta", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--depth", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--base", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--basis", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--shape", type=int, nargs=3, default=[256, 256, 64], help="inference volume")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=2, help="repetitions per worker (min kept)")
    p.add_argument("--rounds", type=int, default=2, help="alternating Meta/Mesa worker rounds")
    p.add_argument("--widths", default="3x16x4,4x32x2",
                   help="depth x base x basis of the networks to time at inference")
    p.add_argument("--quick", action="store_true", help="one round, no paper training step")
    a = p.parse_args(argv)
    if a.worker:
        res = {"infer": worker_infer, "train": worker_train, "ref": worker_ref,
               "synth": worker_synth}[a.worker](a)
        print(json.dumps(res))
        return 0
    rounds = 1 if a.quick else a.rounds
    shape = tuple(a.shape)
    print(f"# bench_dl: {shape[0]}x{shape[1]}x{shape[2]} inference, {a.threads} threads, "
          f"min of {a.reps} reps x {rounds} rounds per cell")
    ref = run_worker("ref", shape=shape, threads=a.threads)
    print(f"reference: rfftn+irfftn pair of the padded volume {ref['fft_pair']:.2f} s; "
          f"one 16->16 3x3x3 conv of the volume {ref['conv16']:.2f} s")
    print()
    print("| network (depth x base, basis) | params Meta / Mesa | Meta s | Mesa s | Meta/Mesa "
          "| peak RSS Meta / Mesa (MB) |")
    print("|---|---|---|---|---|---|")
    for spec in a.widths.split(","):
        depth, base, basis = (int(s) for s in spec.split("x"))
        best = {"meta": None, "mesa": None}
        for _ in range(rounds):
            for kind in ("meta", "mesa"):
                r = run_worker("infer", kind=kind, depth=depth, base=base, basis=basis,
                               shape=shape, threads=a.threads, reps=a.reps)
                if best[kind] is None or r["seconds"] < best[kind]["seconds"]:
                    best[kind] = {**r, "peak_mb": max(r["peak_mb"], (best[kind] or r)["peak_mb"])}
        m, s = best["meta"], best["mesa"]
        print(f"| {depth} x {base}, h={basis} | {m['params'] / 1e6:.1f} M / {s['params'] / 1e6:.1f} M "
              f"| {m['seconds']:.2f} | {s['seconds']:.2f} | {m['seconds'] / s['seconds']:.2f} "
              f"| {m['peak_mb']:.0f} / {s['peak_mb']:.0f} |")
    print()
    print("| training configuration | batch x patch | Meta s/step | Mesa s/step | Meta steps/s |")
    print("|---|---|---|---|---|")
    trains = [("cpu.toml (3 x 16, h=4)", 3, 16, 4, 4, (64, 64, 32))]
    if not a.quick:
        trains.append(("paper.toml (4 x 32, h=2)", 4, 32, 2, 1, (128, 128, 64)))
    for label, depth, base, basis, batch, patch in trains:
        best = {}
        for _ in range(rounds):
            for kind in ("meta", "mesa"):
                r = run_worker("train", kind=kind, depth=depth, base=base, basis=basis, batch=batch,
                               shape=patch, threads=a.threads, reps=a.reps)
                if kind not in best or r["seconds"] < best[kind]:
                    best[kind] = r["seconds"]
        print(f"| {label} | {batch} x {patch[0]}x{patch[1]}x{patch[2]} | {best['meta']:.2f} "
              f"| {best['mesa']:.2f} | {1.0 / best['meta']:.3f} |")
    syn = run_worker("synth", shape=(64, 64, 32), threads=a.threads, reps=2)
    print()
    print(f"synthetic sample generation (64x64x32, metaqsm.simulate.synth): {syn['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
