"""Shared fixtures. Tests that need ../shared/data skip with a clear reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it lives beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fansi(shared_data):
    """The FANSI phantom (chi, mask, voxel size); an evaluation case, never for training."""
    import nibabel as nib

    d = shared_data / "fansi-phantom"
    if not (d / "chi.nii.gz").exists():
        pytest.skip(f"{d} has no chi.nii.gz")
    img = nib.load(str(d / "chi.nii.gz"))
    chi = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(str(d / "mask.nii.gz")).dataobj) > 0
    return chi, mask, np.array(img.header.get_zooms()[:3], float), img.affine


@pytest.fixture(scope="session")
def small_phantom():
    """A 48 x 48 x 40 brain-like phantom at 1 x 1 x 1.5 mm with lesions."""
    from metaqsm.simulate.phantoms import brain_phantom

    return brain_phantom((48, 48, 40), voxel_size=(1.0, 1.0, 1.5), rng=0)


def sphere_volume(shape, voxel_size, radius_mm, centre_vox=None, supersample=4):
    """Partial-volume sphere occupancy (0..1) by supersampling each voxel."""
    shape = tuple(shape)
    vsz = np.asarray(voxel_size, float)
    if centre_vox is None:
        centre_vox = [n / 2.0 for n in shape]
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    occ = np.zeros(shape, np.float64)
    grids = [(np.arange(n) - c) * d for n, c, d in zip(shape, centre_vox, vsz)]
    for ox in offs:
        for oy in offs:
            for oz in offs:
                X, Y, Z = np.meshgrid(grids[0] + ox * vsz[0], grids[1] + oy * vsz[1],
                                      grids[2] + oz * vsz[2], indexing="ij", sparse=True)
                occ += (X * X + Y * Y + Z * Z) <= radius_mm ** 2
    return (occ / supersample ** 3).astype(np.float32)
