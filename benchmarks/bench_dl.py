"""Benchmark of the networks on the CPU: inference time and peak memory of Meta-QSM vs Mesa-QSM of
the same width on 256 x 256 x 64, and training steps per second of the CPU and paper
configurations.

Meta and Mesa of the same width run interleaved in one process and the minimum over the
repetitions is kept, because the machine is shared and its load drifts; each peak memory comes
from a process of its own. References measured in the same run: one bare rfftn + irfftn pair of
the zero-padded volume (the cost unit of the classical inversions), and one 16 -> 16 channel
3x3x3 convolution of the volume between the cells (it shows how loaded the machine was).

    nice python benchmarks/bench_dl.py                 # the full table (a few minutes)
    nice python benchmarks/bench_dl.py --quick         # the shipped width only, 2 repetitions

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


def _ref_conv(torch, shape):
    conv = torch.nn.Conv3d(16, 16, 3, padding=1).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 16, *shape).contiguous(memory_format=torch.channels_last_3d)

    def run():
        with torch.inference_mode():
            t = time.perf_counter()
            conv(x)
            return time.perf_counter() - t

    return run


def worker_pair_infer(a):
    """Meta and Mesa of the same width, interleaved in one process (same load), with the
    reference convolution in between: the minimum of each is kept."""
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    nets = {k: _model(k, a.depth, a.base, a.basis).eval() for k in ("meta", "mesa")}
    x = torch.randn(1, 1, *a.shape) * 0.05
    v = torch.tensor([[0.5, 0.5, 2.0]])
    b = torch.tensor([[0.0, 0.17, 0.985]])
    ref = _ref_conv(torch, (256, 256, 64))
    times = {"meta": [], "mesa": [], "ref": []}
    with torch.inference_mode():
        for net in nets.values():
            net(x[..., : max(8, a.shape[2] // 4)], v, b)  # warm-up (oneDNN primitive creation)
        for _ in range(a.reps):
            for k, net in nets.items():
                t = time.perf_counter()
                net(x, v, b)
                times[k].append(time.perf_counter() - t)
            times["ref"].append(ref())
    return {k: min(t) for k, t in times.items()} | {
        "params_meta": sum(p.numel() for p in nets["meta"].parameters()),
        "params_mesa": sum(p.numel() for p in nets["mesa"].parameters())}


def worker_mem(a):
    """Peak resident memory of one inference (its own process)."""
    import torch

    torch.set_num_threads(a.threads)
    net = _model(a.kind, a.depth, a.base, a.basis).eval()
    x = torch.randn(1, 1, *a.shape) * 0.05
    base_mb = _peak_mb()
    with torch.inference_mode():
        net(x, torch.tensor([[0.5, 0.5, 2.0]]))
    return {"peak_mb": _peak_mb(), "base_mb": base_mb}


def worker_pair_train(a):
    """Training steps of Meta and Mesa interleaved (every sample of the batch at a different
    geometry: the worst case for Meta), plus the reference convolution."""
    import torch

    from metaqsm.dl.train import masked_l1, regularization

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vs = torch.tensor([[0.5, 0.5, 2.0], [0.7, 0.8, 3.0], [1.0, 1.0, 1.0], [0.9, 0.6, 4.0]])
    b0 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.26, 0.966], [0.3, 0.0, 0.95], [0.0, 0.0, 1.0]])
    x = torch.randn(a.batch, 1, *a.shape) * 0.05
    y = torch.randn(a.batch, 1, *a.shape) * 0.1
    v, b = vs[: a.batch], b0[: a.batch]
    nets = {k: _model(k, a.depth, a.base, a.basis).train() for k in ("meta", "mesa")}
    opts = {k: torch.optim.RMSprop(n.parameters(), lr=1e-4, alpha=0.9, eps=1e-7) for k, n in nets.items()}
    ref = _ref_conv(torch, (256, 256, 64))
    times = {"meta": [], "mesa": [], "ref": []}
    for i in range(a.reps + 1):
        for k, net in nets.items():
            t = time.perf_counter()
            loss = masked_l1(net(x, v, b) * 10, y * 10) + 0.01 * regularization(net)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            if i > 0:
                times[k].append(time.perf_counter() - t)
        times["ref"].append(ref())
    return {k: min(t) for k, t in times.items()}


def worker_ref(a):
    import numpy as np
    import scipy.fft as sfft

    from metaqsm.kernels import padded_shape

    x = np.random.default_rng(0).standard_normal(padded_shape(a.shape)).astype(np.float32)
    fft = []
    for _ in range(3):
        t = time.perf_counter()
        sfft.irfftn(sfft.rfftn(x, workers=a.threads), s=x.shape, workers=a.threads)
        fft.append(time.perf_counter() - t)
    return {"fft_pair": min(fft)}


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
    p.add_argument("--reps", type=int, default=4, help="interleaved repetitions (min kept)")
    p.add_argument("--widths", default="3x16x4,4x32x2",
                   help="depth x base x basis of the networks to time at inference")
    p.add_argument("--quick", action="store_true", help="2 repetitions, no paper-width cells")
    a = p.parse_args(argv)
    if a.worker:
        res = {"pair_infer": worker_pair_infer, "mem": worker_mem, "pair_train": worker_pair_train,
               "ref": worker_ref, "synth": worker_synth}[a.worker](a)
        print(json.dumps(res))
        return 0
    reps = 2 if a.quick else a.reps
    widths = a.widths.split(",")[:1] if a.quick else a.widths.split(",")
    shape = tuple(a.shape)
    ref = run_worker("ref", shape=shape, threads=a.threads)
    print(f"# bench_dl: {shape[0]}x{shape[1]}x{shape[2]} inference, {a.threads} threads, Meta and "
          f"Mesa interleaved in one process, min of {reps}")
    print(f"# reference: rfftn+irfftn pair of the zero-padded volume {ref['fft_pair']:.2f} s")
    print()
    print("| network (depth x base, h) | params Meta / Mesa | Meta s | Mesa s | Meta / Mesa "
          "| ref conv s | peak RSS Meta / Mesa (MB) |")
    print("|---|---|---|---|---|---|---|")
    for spec in widths:
        depth, base, basis = (int(v) for v in spec.split("x"))
        kw = dict(depth=depth, base=base, basis=basis, shape=shape, threads=a.threads)
        r = run_worker("pair_infer", reps=reps if depth * base < 100 else max(2, reps // 2), **kw)
        mem = {k: run_worker("mem", kind=k, **kw) for k in ("meta", "mesa")}
        print(f"| {depth} x {base}, h={basis} | {r['params_meta'] / 1e6:.2f} M / "
              f"{r['params_mesa'] / 1e6:.2f} M | {r['meta']:.2f} | {r['mesa']:.2f} "
              f"| {r['meta'] / r['mesa']:.2f} | {r['ref']:.2f} "
              f"| {mem['meta']['peak_mb']:.0f} / {mem['mesa']['peak_mb']:.0f} |")
    print()
    print("| training configuration | batch x patch | Meta s/step | Mesa s/step | Meta steps/s "
          "| ref conv s |")
    print("|---|---|---|---|---|---|")
    trains = [("cpu.toml (3 x 16, h=4)", 3, 16, 4, 4, (64, 64, 32))]
    if not a.quick:
        trains.append(("paper.toml (4 x 32, h=2), batch 1 of 4", 4, 32, 2, 1, (128, 128, 64)))
    for label, depth, base, basis, batch, patch in trains:
        r = run_worker("pair_train", depth=depth, base=base, basis=basis, batch=batch, shape=patch,
                       threads=a.threads, reps=max(2, reps // (1 if batch > 1 else 2)))
        print(f"| {label} | {batch} x {patch[0]}x{patch[1]}x{patch[2]} | {r['meta']:.2f} "
              f"| {r['mesa']:.2f} | {1.0 / r['meta']:.3f} | {r['ref']:.2f} |")
    syn = run_worker("synth", shape=(64, 64, 32), threads=a.threads, reps=2)
    print()
    print(f"synthetic sample generation (64x64x32, metaqsm.simulate.synth): {syn['seconds']:.2f} s")
    print("# ref conv: one 16 -> 16 3x3x3 convolution of a 256x256x64 volume, timed between the "
          "cells (0.27 s on a quiet machine): it shows how loaded the machine was")
    return 0


if __name__ == "__main__":
    sys.exit(main())
