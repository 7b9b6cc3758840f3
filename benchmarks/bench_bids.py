"""Benchmark of the BIDS App's parallelism: ``metaqsm bids ... participant`` with 1 job and with
2 jobs on the same simulated study, in the same run.

Target (issue 18): on a simulated 3-subject, 2-session study, 2 jobs at least 1.6 x faster than
1 job. The study (``metaqsm.bids.simulate_dataset``: 96 x 96 x 64 voxels of 2 mm, 4 echoes, not
timed) is processed by the command line as a user runs it, each time into a fresh output folder
in a fresh process: reading, the pipeline (mask, echo fit with ROMEO, RESHARP, iLSQR), R2*, T2*,
SWI, mIP, referenced chi, writing the derivatives, the PNG and the HTML report. 1 job runs the
acquisitions one after the other in one process (its FFTs use every core); 2 jobs start a local
Dask cluster of 2 worker processes with cores // 2 threads each, and pay its start and each
worker's imports. The runs alternate (1, 2, 1, 2, ...) so a change in the machine's load hits
both, and the load average before each run is printed beside it: on a shared machine the ratio
is only meaningful with the load it was measured under.

Run: ``python benchmarks/bench_bids.py`` (not under ``nice``: a niced run gets no share of a
busy machine's cores, and the share is what is measured) (``--quick``: 64 x 64 x 48 voxels of 3 mm;
``--repeat N``: N pairs of runs).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(study, out, jobs):
    cmd = [sys.executable, "-m", "metaqsm.cli", "bids", str(study), str(out), "participant",
           "--n-jobs", str(jobs), "--quiet"]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, load, cpu


def main(argv=None):
    from metaqsm.bids import simulate_dataset
    from metaqsm.bids._threads import available_cores

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 x 64 x 48 voxels of 3 mm")
    p.add_argument("--clinical", action="store_true",
                   help="144 x 144 x 96 voxels of 1.33 mm (a clinical scan's size)")
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs (1 job, 2 jobs)")
    p.add_argument("--subjects", type=int, default=3)
    p.add_argument("--sessions", type=int, default=2)
    args = p.parse_args(argv)
    shape, vsz = ((64, 64, 48), (3.0, 3.0, 3.0)) if args.quick else ((96, 96, 64), (2.0,) * 3)
    if args.clinical:
        shape, vsz = (144, 144, 96), (4.0 / 3.0,) * 3

    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        t0 = time.perf_counter()
        simulate_dataset(study, subjects=args.subjects, sessions=args.sessions, shape=shape,
                         voxel_size=vsz, rng=0)
        n_acq = args.subjects * max(args.sessions, 1)
        print(f"study: {args.subjects} subjects x {max(args.sessions, 1)} sessions = {n_acq} "
              f"acquisitions of {'x'.join(map(str, shape))} voxels at "
              f"{'x'.join(f'{v:g}' for v in vsz)} mm, 4 echoes (simulated in "
              f"{time.perf_counter() - t0:.1f} s); {available_cores()} cores, "
              f"{os.cpu_count()} CPUs")
        rows = []
        for i in range(args.repeat):
            pair = {}
            for jobs in (1, 2):
                out = Path(tmp) / f"out-{i}-{jobs}"
                pair[jobs] = _run(study, out, jobs)
            rows.append(pair)

    print()
    print("| pair | jobs | wall (s) | CPU (s) | cores used | load before | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, pair in enumerate(rows, 1):
        for jobs in (1, 2):
            t, load, cpu = pair[jobs]
            speed = f"{pair[1][0] / t:.2f} x" if jobs == 2 else ""
            print(f"| {i} | {jobs} | {t:.1f} | {cpu:.1f} | {cpu / t:.2f} | {load:.2f} | {speed} |")
    t1 = sum(p[1][0] for p in rows)
    t2 = sum(p[2][0] for p in rows)
    print(f"| all | | 1 job {t1:.1f}, 2 jobs {t2:.1f} | | | | {t1 / t2:.2f} x |")
    print("\n'cores used' is CPU time over wall time: 2 jobs can only be faster where the "
          "machine has idle cores to give them")
    print(f"\nper acquisition: 1 job {t1 / len(rows) / n_acq:.1f} s, 2 jobs "
          f"{t2 / len(rows) / n_acq:.1f} s (wall time / acquisitions); target 1.6 x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
