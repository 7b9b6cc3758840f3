"""Fixed, versioned synthetic test sets (Meta-QSM paper, sections 3.1 and 3.2).

* ``"paper"``: 100 volumes of 256 x 256 x 64 made "in similar fashion" to the training data,
  random voxel sizes in the paper's (0.5-1.0, 0.5-1.0, 2.0-4.0) mm;
* ``"res_0.5x0.5x2"``: 100 volumes at exactly 0.5 x 0.5 x 2.0 mm (Mesa-QSM comparison);
* ``"res_0.7639x0.7639x3"``: 100 volumes at exactly 0.7639 x 0.7639 x 3.0 mm.

All use the default :class:`~metaqsm.simulate.synth.SynthConfig` otherwise (B0 along the third
axis), except that the field comes from the sources inside the volume only (:data:`LOCAL_ONLY`:
``margin_mm = 0``, the field zero-padded): a test case is a local field after an ideal
background removal, which no inversion could get right if it carried the field of sources it
cannot see (version 1 did, with 16 mm of surrounding tissue: every method then scored 70-100 %
RMSE on many volumes). Their random streams never coincide with training: training sample
``(seed, index)`` draws from ``SeedSequence(entropy=(seed, index))`` (no spawn key), test sample ``i`` of set
``name`` from ``SeedSequence(entropy=TESTSET_ENTROPY, spawn_key=(TESTSET_VERSION, set_id, i))``;
a non-empty spawn key is mixed into the seed sequence's state, so the two families are
independent streams. Changing the generator changes the test sets: bump ``TESTSET_VERSION``
then, and report metrics with the version.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_int
from .synth import SynthConfig, _generate

__all__ = ["TESTSET_VERSION", "TESTSET_ENTROPY", "TESTSETS", "LOCAL_ONLY", "testset_config",
           "testset_sample", "testset_rng"]

TESTSET_VERSION = 2  # 2: sources inside the volume only (1: 16 mm of surrounding sources)
TESTSET_ENTROPY = 0x6D65746171736D  # "metaqsm" in ASCII; fixed forever
#: SynthConfig fields of an evaluation volume: only the sources inside it, the field zero-padded
LOCAL_ONLY = {"margin_mm": 0.0, "field_pad": "auto"}

_PAPER_RANGE = ((0.5, 1.0), (0.5, 1.0), (2.0, 4.0))
TESTSETS = {
    "paper": {"id": 1, "count": 100, "patch_shape": (256, 256, 64),
              "voxel_size_range": _PAPER_RANGE},
    "res_0.5x0.5x2": {"id": 2, "count": 100, "patch_shape": (256, 256, 64),
                      "voxel_size_range": ((0.5, 0.5), (0.5, 0.5), (2.0, 2.0))},
    "res_0.7639x0.7639x3": {"id": 3, "count": 100, "patch_shape": (256, 256, 64),
                            "voxel_size_range": ((0.7639, 0.7639), (0.7639, 0.7639), (3.0, 3.0))},
}


def _check_name(name):
    if name not in TESTSETS:
        raise ValueError(f"test set must be one of {sorted(TESTSETS)}, got {name!r}")
    return TESTSETS[name]


def testset_config(name, **overrides):
    """The :class:`SynthConfig` of test set ``name`` (``overrides`` only for previews/tests)."""
    spec = _check_name(name)
    d = SynthConfig().to_dict()
    d.update(patch_shape=spec["patch_shape"], voxel_size_range=spec["voxel_size_range"],
             max_tilt_deg=0.0, **LOCAL_ONLY)
    d.update(overrides)
    return SynthConfig.from_dict(d)


def testset_rng(name, index):
    """The random generator of sample ``index`` of test set ``name``."""
    spec = _check_name(name)
    index = as_int(index, "index", minimum=0)
    if index >= spec["count"]:
        raise ValueError(f"index must be < {spec['count']} for test set {name!r}, got {index}")
    seq = np.random.SeedSequence(entropy=TESTSET_ENTROPY,
                                 spawn_key=(TESTSET_VERSION, spec["id"], index))
    return np.random.default_rng(seq)


def testset_sample(name, index, **overrides):
    """Sample ``index`` of test set ``name`` (same keys as ``generate_sample``).

    Parameters
    ----------
    name : str
        One of ``TESTSETS``.
    index : int
        0 <= index < the set's count (100).
    **overrides
        SynthConfig fields to change (e.g. a smaller ``patch_shape`` for a quick preview); the
        official test sets use none.

    Returns
    -------
    dict
        ``field``, ``chi`` (ppm, float32), ``mask`` (bool), ``voxel_size``, ``b0_dir``.

    Raises
    ------
    ValueError
        For an unknown name or an index out of range.
    """
    return _generate(testset_config(name, **overrides), testset_rng(name, index))
