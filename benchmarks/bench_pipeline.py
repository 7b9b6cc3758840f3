"""Benchmark of the whole pipeline: ``metaqsm run`` on a 256 x 256 x 64 x 4-echo acquisition.

Targets (issues 3 and 15): under 60 s in all with the default inversion (TV since issue 15; iLSQR
before) on a 2-core machine; RESHARP and V-SHARP each under 10 s. The acquisition is simulated from the brain phantom at
0.9375 x 0.9375 x 2 mm (not timed), written to NIfTI with BIDS sidecars, then processed by the
command line exactly as a user would run it (reading, automatic mask, echo fit with ROMEO,
RESHARP 6 mm, the default inversion, writing the derivatives and the picture). A bare rfftn + irfftn pair of the
volume zero padded to twice its size is measured in the same run as a reference, because
absolute times drift on a shared machine.

Run: ``nice python benchmarks/bench_pipeline.py`` (add ``--quick`` for a 128 x 128 x 64 check).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from metaqsm.methods import DEFAULT_INVERSION


def fft_pair_seconds(shape, repeats=3):
    padded = tuple(sfft.next_fast_len(2 * n, real=True) for n in shape)
    x = np.random.default_rng(0).standard_normal(padded).astype(np.float32)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        sfft.irfftn(sfft.rfftn(x, workers=-1), s=padded, workers=-1)
        best = min(best, time.perf_counter() - t0)
    return best, padded


def main(argv=None):
    from metaqsm.bgremove import get_method
    from metaqsm.cli import main as cli
    from metaqsm.io.derivatives import write_simulation
    from metaqsm.metrics import nrmse_demeaned
    from metaqsm.simulate.acquisition import simulate_acquisition
    from metaqsm.simulate.phantoms import brain_phantom

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128 x 128 x 64 instead of 256 x 256 x 64")
    p.add_argument("--method", default=DEFAULT_INVERSION, help="inversion (default: the default's)")
    args = p.parse_args(argv)
    shape = (128, 128, 64) if args.quick else (256, 256, 64)
    vsz = (0.9375 * 256 / shape[0], 0.9375 * 256 / shape[1], 2.0)

    t0 = time.perf_counter()
    ph = brain_phantom(shape, voxel_size=vsz, rng=0)
    affine = np.diag(list(vsz) + [1.0])
    acq = simulate_acquisition(ph.chi, ph.mask, voxel_size=vsz, affine=affine, rng=0)
    t_sim = time.perf_counter() - t0
    fft_s, padded = fft_pair_seconds(shape)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_simulation(acq, tmp / "sim")
        mag = tmp / "sim" / "sub-01_part-mag_MEGRE.nii.gz"
        phase = tmp / "sim" / "sub-01_part-phase_MEGRE.nii.gz"
        t0 = time.perf_counter()
        rc = cli(["run", "--magnitude", str(mag), "--phase", str(phase), "-o", str(tmp / "out"),
                  "--method", args.method, "--quiet"])
        t_run = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"metaqsm run failed with status {rc}")
        side = json.loads((tmp / "out" / "sub-01_Chimap.json").read_text())
        stages = side["Timings"]
        import nibabel as nib

        chi = np.asarray(nib.load(str(tmp / "out" / "sub-01_Chimap.nii.gz")).dataobj)
        er = np.asarray(nib.load(str(tmp / "out" / "sub-01_desc-eroded_mask.nii.gz")).dataobj) > 0
        err = nrmse_demeaned(chi, acq.chi, er & acq.mask)

    # the background removal methods alone, on the true total field and mask
    bg = {}
    for name in ("resharp", "vsharp"):
        t0 = time.perf_counter()
        get_method(name)(acq.total_field, acq.mask, voxel_size=vsz)
        bg[name] = time.perf_counter() - t0

    io_other = t_run - sum(stages.values())
    rows = [("simulate acquisition (not part of run)", t_sim)]
    from metaqsm.pipeline import STAGES

    rows += [(f"stage: {k}", stages[k]) for k in STAGES]
    rows += [("reading, writing outputs and picture", io_other),
             ("**metaqsm run, total**", t_run),
             ("RESHARP alone (6 mm)", bg["resharp"]), ("V-SHARP alone", bg["vsharp"]),
             (f"reference: rfftn+irfftn of {'x'.join(map(str, padded))}", fft_s)]
    print(f"\nmetaqsm run on {'x'.join(map(str, shape))}x{acq.phase.shape[-1]} echoes at "
          f"{'x'.join(f'{v:g}' for v in vsz)} mm, inversion {args.method} "
          f"(chi NRMSE vs truth {err:.1f} %)\n")
    print("| step | seconds | x FFT pair |")
    print("| --- | ---: | ---: |")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {sec / fft_s:.0f} |")
    target = "met" if t_run < 60 else "NOT met"
    print(f"\ntarget: total under 60 s: {target}; RESHARP and V-SHARP under 10 s: "
          f"{'met' if max(bg.values()) < 10 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
