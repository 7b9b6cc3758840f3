"""Benchmark of the preprocessing stages on a 256 x 256 x 64 (x 4 echoes) acquisition.

Each stage of ``metaqsm.phase``, ``metaqsm.mask`` and ``metaqsm.bgremove`` is timed once on a
simulated acquisition of the analytic brain phantom (0.9375 x 0.9375 x 2 mm, 3 T, echo times
10.4 / 17.4 / 24.4 / 31.4 ms as the Meta-QSM paper's research data, a background field from
strong sources outside the brain, complex noise), next to the time of one bare real FFT pair
(rfftn + irfftn) of the float32 volume, measured in the same run, because absolute times on a
shared machine drift. Targets: RESHARP and V-SHARP each under 10 s.

Run:  nice python benchmarks/bench_preprocessing.py [--shape 256 256 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_inversion import fft_pair_seconds  # the FFT-pair reference of the inversion table

from metaqsm.bgremove import get_method
from metaqsm.kernels import forward_field
from metaqsm.mask import brain_mask
from metaqsm.phase import fit_echoes, unwrap_laplacian, unwrap_romeo
from metaqsm.simulate.phantoms import brain_phantom
from metaqsm.units import ppm_to_rad


def _timed(fn, repeat=1):
    best = np.inf
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def simulate(shape, vsz, tes, b0=3.0, snr=50.0, rng=0):
    """Magnitude/phase (4D), brain mask, true local and total field (ppm)."""
    rng = np.random.default_rng(rng)
    ph = brain_phantom(shape, voxel_size=vsz, rng=0)
    local = forward_field(ph.chi, voxel_size=vsz)
    chi_b = np.zeros(shape, np.float32)
    nz = max(2, shape[2] // 16)
    chi_b[:, :, :nz] = 9.0  # air-tissue interface below the brain
    chi_b[: shape[0] // 10, shape[1] // 3: 2 * shape[1] // 3, :] = -9.0
    chi_b[ph.mask] = 0.0
    total = local + forward_field(chi_b, voxel_size=vsz)
    m0 = np.where(ph.mask, 1.0, 0.15)
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    offset = 0.6 * x + np.zeros(shape)
    sig = []
    for te in tes:
        s = m0 * np.exp(-te / 0.04) * np.exp(1j * (offset + ppm_to_rad(total, te, b0)))
        noise = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / (snr * np.sqrt(2))
        sig.append(s + noise)
    sig = np.stack(sig, -1).astype(np.complex64)
    return np.abs(sig), np.angle(sig), ph.mask, local, total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 64))
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    vsz = (0.9375, 0.9375, 2.0)
    tes = np.array([10.4, 17.4, 24.4, 31.4]) * 1e-3
    mag, pha, mask, local, total = simulate(shape, vsz, tes)

    t_fft = fft_pair_seconds(shape, repeats=3)

    rows = []

    def add(name, seconds, note=""):
        rows.append((name, seconds, note))
        print(f"  {name}: {seconds:.2f} s {note}", flush=True)

    print(f"shape {shape} x {len(tes)} echoes, voxel {vsz} mm, brain voxels {int(mask.sum())}")
    t, bm = _timed(lambda: brain_mask(mag, voxel_size=vsz))
    dice = 2 * np.sum(bm & mask) / (bm.sum() + mask.sum())
    add("brain_mask (otsu)", t, f"Dice {dice:.3f}")
    t, _ = _timed(lambda: unwrap_romeo(pha[..., 0], magnitude=mag[..., 0], mask=mask))
    add("unwrap_romeo (1 echo)", t)
    t, _ = _timed(lambda: unwrap_romeo(pha, magnitude=mag, mask=mask, echo_times=tes))
    add("unwrap_romeo (4 echoes)", t)
    t, _ = _timed(lambda: unwrap_laplacian(pha[..., 0], voxel_size=vsz))
    add("unwrap_laplacian (1 echo, no mask)", t)
    t, _ = _timed(lambda: unwrap_laplacian(pha[..., 0], voxel_size=vsz, mask=mask))
    add("unwrap_laplacian (1 echo, mask)", t)
    fits = {}
    for method in ("nonlinear", "linear"):
        t, fit = _timed(lambda: fit_echoes(mag, pha, echo_times=tes, field_strength=3.0, mask=mask,
                                           method=method, unwrap="romeo", voxel_size=vsz))
        err = fit.field[mask] - total[mask]
        err -= np.median(err)
        add(f"fit_echoes ({method}, romeo)", t, f"field RMSE {np.sqrt(np.mean(err ** 2)):.4f} ppm")
        fits[method] = fit
    field = fits["nonlinear"].field
    for name in ("resharp", "vsharp", "sharp", "pdf", "lbv"):
        kw = {"noise": fits["nonlinear"].noise} if name == "pdf" else {}
        t, (loc, me) = _timed(lambda: get_method(name)(field, mask, voxel_size=vsz, **kw))
        a = loc[me] - loc[me].mean()
        b = local[me] - local[me].mean()
        add(f"bgremove {name}", t, f"NRMSE {np.linalg.norm(a - b) / np.linalg.norm(b):.3f}")

    print()
    print(f"reference: one rfftn + irfftn pair of the {shape} float32 volume: {t_fft * 1e3:.1f} ms")
    print()
    print("| stage | time (s) | x FFT pair | note |")
    print("| --- | ---: | ---: | --- |")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / t_fft:.0f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
