"""Fill a head bank for Meta-QSM 2 training (metaqsm.dl.headbank): realistic whole heads through
the pipeline, resumable (heads already written are skipped).

    nohup nice -n 10 python3 training/make-head-bank.py runs/head-bank 200 --seed 7 &
"""

import argparse
import sys
import time

from metaqsm.dl.headbank import write_head_bank


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory")
    p.add_argument("count", type=int)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--start", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()

    def report(i, path, geom):
        print(f"{time.perf_counter() - t0:8.1f} s  head {i}: {path.name} {geom}", flush=True)

    write_head_bank(a.directory, a.count, seed=a.seed, start=a.start, progress=report)


if __name__ == "__main__":
    sys.exit(main())
