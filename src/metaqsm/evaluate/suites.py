"""What an evaluation runs: suites of test sets (groups of cases) and the methods compared on them.

A :class:`Suite` is a list of :class:`Group` s (one per table of the report); a group holds its
:class:`Case` s (volumes with a known truth, loaded lazily so a resumed run never builds a volume
whose results are all on disk) and the :class:`MethodSpec` s compared on them.

The suites reproduce the experiments of the Meta-QSM paper (sections 3-4):

* ``paper``: Table 1 (test set "paper": TKD with threshold 0.2, iLSQR, MEDI with lambda 1000, TV,
  Meta-QSM) and Tables 2-3 (test sets at 0.5 x 0.5 x 2.0 and 0.7639 x 0.7639 x 3.0 mm: Mesa-QSM at
  its own resolution, Meta-QSM, the other Mesa-QSM applied as is, and the other Mesa-QSM after
  naive interpolation of the field to its resolution and back).
* ``resolution``: RMSE against voxel size (0.6 and 1.0 mm isotropic, 0.5 x 0.5 x 2, 0.76 x 0.76 x 3
  and 1 x 1 x 4 mm).
* ``orientation``: RMSE against the tilt of B0 (0, 15 and 30 degrees).
* ``fansi``: the FANSI phantom (0.9375 x 0.9375 x 1.5 mm), its local field simulated with the core's
  forward model plus Gaussian noise.
* ``quick``: three small phantoms (64 x 64 x 32) for tests and smoke runs (about a minute).

References
----------
Meta-QSM: an image-resolution-arbitrary network for QSM reconstruction. Corresponding author
Kevin M. Koch, Medical College of Wisconsin (SPIE-style proceedings paper).
Langkammer C, Schweser F, Shmueli K, et al. Quantitative susceptibility mapping: report from the
2016 reconstruction challenge. Magn Reson Med 2018;79(3):1661-1673.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._validate import as_b0_dir, as_int, as_voxel_size

# Evaluation-only variants of a registered method: name -> (method, parameters, display name).
# "meta+dc": Meta-QSM followed by its data-consistency refinement (metaqsm.dl.infer).
VARIANTS = {
    "meta+dc": ("meta", {"refine": True}, "Meta-QSM + DC"),
    # MEDI at the paper's lambda, the default before issue 15 (the real brain's 104.4 %)
    "medi-1000": ("medi", {"lam": 1000.0}, "MEDI (lambda 1000)"),
}

# The paper's parameters (section 3.4): TKD threshold 0.20, MEDI regularisation factor 1000.
PAPER_PARAMS = {
    "tkd": {"threshold": 0.2},
    "medi": {"lam": 1000.0},
}

PAPER_METHODS = ("tkd", "ilsqr", "medi", "tv", "meta", "meta+dc")
QUICK_METHODS = ("tkd", "ilsqr", "medi", "tv", "meta")
USER_METHODS = ("tkd", "ilsqr", "medi", "tv", "meta", "meta+dc", "meta-unrolled", "meta-hybrid",
                "meta-tv")

# The two Mesa-QSM resolutions of the paper (section 3.2), mm.
MESA_RESOLUTIONS = {
    "0.5x0.5x2": (0.5, 0.5, 2.0),
    "0.7639x0.7639x3": (0.7639, 0.7639, 3.0),
}
PAPER_RES_TESTSETS = {"0.5x0.5x2": "res_0.5x0.5x2", "0.7639x0.7639x3": "res_0.7639x0.7639x3"}

# Sweeps (issue 6): voxel sizes in mm and B0 tilts in degrees.
RESOLUTION_SWEEP = (
    ("0.6 iso", (0.6, 0.6, 0.6)),
    ("1.0 iso", (1.0, 1.0, 1.0)),
    ("0.5x0.5x2", (0.5, 0.5, 2.0)),
    ("0.76x0.76x3", (0.76, 0.76, 3.0)),
    ("1x1x4", (1.0, 1.0, 4.0)),
)
ORIENTATION_SWEEP = (0.0, 15.0, 30.0)
SWEEP_SHAPE = (128, 128, 64)
SWEEP_VOXEL_SIZE = (0.75, 0.75, 2.0)  # the orientation sweep's voxel size, mm
# random streams of the sweeps: the test sets' family (metaqsm.simulate.testsets), set ids that
# the official test sets (1-3) do not use; never a training stream
SWEEP_STREAMS = {"resolution": 101, "orientation": 102}
SWEEP_N = 10

# FANSI case: Gaussian noise added to the simulated local field, ppm (about 1% of its range).
FANSI_NOISE_PPM = 0.002
FANSI_SEED = 7

# Quick suite: brain phantoms with a few voxel sizes and one tilted B0.
QUICK_SHAPE = (64, 64, 32)
QUICK_CASES = (
    ((1.0, 1.0, 2.0), 0.0),
    ((0.8, 0.8, 2.5), 0.0),
    ((1.0, 1.0, 2.0), 15.0),
)
QUICK_NOISE_PPM = 0.002
QUICK_SEED = 0

# Realistic suite (issue 15): whole-head acquisitions with the imperfections of real scans,
# processed by the pipeline (metaqsm.simulate.realistic). Methods as a user runs them: their
# defaults. Never the FANSI phantom or the paper's test sets.
REALISTIC_METHODS = ("tkd", "ilsqr", "medi", "medi-1000", "tv", "wtv", "rts", "ndi", "nltv",
                     "meta", "meta+dc", "meta-unrolled", "meta-hybrid", "meta-tv")
REALISTIC_SEED = 2026

# The real in-vivo brain the maintainers keep (3 T, 1.06 mm, COSMOS reference): RMSE (%) of the
# methods as shipped before issue 15. The realistic suite must rank them in this order.
REAL_BRAIN_RMSE = {"TV": 57.9, "Meta-QSM": 77.7, "TKD": 84.1, "iLSQR": 99.2,
                   "Meta-QSM + DC": 101.2, "MEDI (lambda 1000)": 104.4}

SUITES = ("quick", "paper", "resolution", "orientation", "fansi", "realistic")


@dataclass(frozen=True)
class MethodSpec:
    """One column of a table: a registered method with its parameters.

    Attributes
    ----------
    label : str
        Column name (also the file name stem of its results, after :func:`slug`).
    method : str
        Name in :data:`metaqsm.methods.INVERSIONS`.
    params : dict
        Keyword arguments of the method.
    resample_to : 3 floats or None
        Naive interpolation: resample the field (and mask) to this voxel size, reconstruct there and
        resample the result back to the case's grid (paper Tables 2-3).
    """

    label: str
    method: str
    params: dict = field(default_factory=dict)
    resample_to: tuple | None = None

    def describe(self):
        return {"label": self.label, "method": self.method, "params": dict(self.params),
                "resample_to": None if self.resample_to is None else list(self.resample_to)}


@dataclass
class Case:
    """One volume with a known truth (or none, for real data), built on demand.

    ``load()`` returns a dict with ``field``, ``mask``, ``voxel_size``, ``b0_dir`` and optionally
    ``chi`` (the truth, ppm), ``labels``, ``affine``, ``magnitude``.
    """

    id: str
    load: Callable[[], dict]
    info: dict = field(default_factory=dict)


@dataclass
class Group:
    """One table of the report: cases and the methods compared on them.

    Attributes
    ----------
    fixed : bool
        The methods are a fixed design (paper Tables 2-3): ``--methods`` filters them by registry
        name instead of replacing them.
    sweep : str or None
        Name of the swept quantity (e.g. "voxel size (mm)"); ``x`` and ``x_label`` place the group
        on the sweep's axis.
    figure_cases : int
        How many of the first cases get a slice figure.
    """

    name: str
    title: str
    cases: list
    specs: list
    description: str = ""
    fixed: bool = False
    sweep: str | None = None
    x: float | None = None
    x_label: str | None = None
    figure_cases: int = 1
    source: dict = field(default_factory=dict)


@dataclass
class Suite:
    """A named set of groups; ``save_volumes`` writes every reconstruction as NIfTI."""

    name: str
    title: str
    groups: list
    description: str = ""
    save_volumes: bool = False
    has_truth: bool = True


def slug(text):
    """A file-name-safe version of ``text`` ("Mesa-QSM (0.5x0.5x2)" -> "mesa-qsm_0.5x0.5x2")."""
    s = re.sub(r"[^A-Za-z0-9.+-]+", "_", str(text).strip().lower()).strip("_")
    return s or "x"


def default_spec(name, params=None):
    """The spec of a registered method with the paper's parameters (or ``params``)."""
    from ..methods import INVERSIONS

    if name in VARIANTS:
        method, extra, label = VARIANTS[name]
        p = {**PAPER_PARAMS.get(method, {}), **extra} if params is None else dict(params)
        return MethodSpec(label=label, method=method, params=p)
    if name not in INVERSIONS:
        raise ValueError(f"methods must be among {', '.join((*INVERSIONS, *VARIANTS))}, "
                         f"got {name!r}")
    p = dict(PAPER_PARAMS.get(name, {})) if params is None else dict(params)
    return MethodSpec(label=INVERSIONS[name].display, method=name, params=p)


def check_methods(methods):
    """Validate method names; returns a tuple (``ValueError`` names the unknown one)."""
    from ..methods import INVERSIONS

    if methods is None:
        return None
    if isinstance(methods, str):
        methods = [methods]
    out = []
    for m in methods:
        if m not in INVERSIONS and m not in VARIANTS:
            raise ValueError(f"methods must be among {', '.join((*INVERSIONS, *VARIANTS))}, "
                             f"got {m!r}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("methods must name at least one method")
    return tuple(out)


def _fmt_vsz(v):
    return "x".join(f"{x:g}" for x in v)


def _tilted(deg):
    t = np.deg2rad(deg)
    return (float(np.sin(t)), 0.0, float(np.cos(t)))


# ---------------------------------------------------------------------------------------------
# Case builders


def _phantom_case(index, shape, voxel_size, tilt_deg, noise, seed):
    from ..kernels import forward_field
    from ..simulate.phantoms import brain_phantom

    ph = brain_phantom(shape, voxel_size=voxel_size, rng=seed + index)
    b0 = np.asarray(_tilted(tilt_deg))
    field_ = forward_field(ph.chi, voxel_size=voxel_size, b0_dir=b0)
    rng = np.random.default_rng(seed + 1000 + index)
    field_ = (field_ + noise * rng.standard_normal(shape)).astype(np.float32) * ph.mask
    return {"field": field_.astype(np.float32), "chi": ph.chi, "mask": ph.mask,
            "labels": ph.labels, "voxel_size": np.asarray(voxel_size, float), "b0_dir": b0}


def testset_cache_path(cache_dir, name, index):
    """Where the paper suite keeps volume ``index`` of test set ``name`` in ``cache_dir``.

    The name carries the set, :data:`~metaqsm.simulate.testsets.TESTSET_VERSION` and the index,
    so a cache never serves a volume of another version of the generator. ``ValueError`` for an
    unknown set or an index out of range.
    """
    from ..simulate.testsets import TESTSET_VERSION, testset_rng

    testset_rng(name, index)  # checks the name and the index
    return Path(cache_dir) / f"testset-{name}-v{TESTSET_VERSION}-{int(index):03d}.npz"


def _testset_case(name, index, cache_dir=None):
    """Volume ``index`` of test set ``name``; with ``cache_dir``, read from there when it was
    generated before (a 256 x 256 x 64 volume takes 20-40 s to generate on 2 cores, about 50 MB
    on disk), else generated and written there atomically."""
    from ..io import atomic_path
    from ..simulate.testsets import testset_sample

    if cache_dir is None:
        return dict(testset_sample(name, index))
    path = testset_cache_path(cache_dir, name, index)  # before any file is touched
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    sample = dict(testset_sample(name, index))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, force=True) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in sample.items()})  # uncompressed: fast to read
    return sample


def sweep_rng(sweep, index):
    """The random generator of volume ``index`` of a sweep ("resolution" or "orientation").

    Drawn from the test sets' seed family
    (``SeedSequence(entropy=TESTSET_ENTROPY, spawn_key=(TESTSET_VERSION, set_id, index))``, see
    :mod:`metaqsm.simulate.testsets`) with set ids 101 and 102, so sweeps never share a stream with
    training or with the official test sets.
    """
    from ..simulate.testsets import TESTSET_ENTROPY, TESTSET_VERSION

    if sweep not in SWEEP_STREAMS:
        raise ValueError(f"sweep must be one of {', '.join(SWEEP_STREAMS)}, got {sweep!r}")
    seq = np.random.SeedSequence(entropy=TESTSET_ENTROPY,
                                 spawn_key=(TESTSET_VERSION, SWEEP_STREAMS[sweep],
                                            as_int(index, "index")))
    return np.random.default_rng(seq)


def sweep_sample(sweep, index, *, voxel_size, tilt_deg=0.0, shape=SWEEP_SHAPE):
    """One synthetic volume of a sweep: fixed voxel size and fixed B0 tilt.

    The scene (fine-grid susceptibility) comes from the synthetic-data generator
    (:mod:`metaqsm.simulate.synth`) with the paper's setting except the voxel size and the
    margin (no sources outside the volume, as the test sets), drawn from
    :func:`sweep_rng`; B0 is then tilted by ``tilt_deg`` degrees from the third axis towards the
    first, and the field is computed on the fine grid and reduced
    (:func:`metaqsm.simulate.synth.finish_scene`). The same ``index`` gives the same scene at every
    tilt, so the orientation sweep compares tilts on identical anatomy.

    Returns
    -------
    dict
        ``field``, ``chi`` (ppm), ``mask``, ``voxel_size`` (mm), ``b0_dir``.
    """
    import dataclasses

    from ..simulate import synth
    from ..simulate.testsets import LOCAL_ONLY

    vsz = as_voxel_size(voxel_size)
    config = synth.SynthConfig(patch_shape=tuple(shape), voxel_size_range=tuple((v, v) for v in vsz),
                               **LOCAL_ONLY)
    rng = sweep_rng(sweep, index)
    scene = synth.draw_fine_scene(config, rng)
    if tilt_deg:
        scene = dataclasses.replace(scene, b0_dir=np.asarray(_tilted(tilt_deg)))
    return dict(synth.finish_scene(scene, config=config, rng=rng))


def _fansi_case(directory, noise, seed):
    from ..io import load_nifti
    from ..kernels import forward_field

    d = Path(directory)
    chi = load_nifti(d / "chi.nii.gz", name="FANSI chi", ndim=3)
    mask = load_nifti(d / "mask.nii.gz", name="FANSI mask", ndim=3).data > 0
    truth = chi.data * mask
    field_ = forward_field(truth, voxel_size=chi.voxel_size, b0_dir=chi.b0_dir)
    rng = np.random.default_rng(seed)
    field_ = (field_ + noise * rng.standard_normal(field_.shape)) * mask
    return {"field": field_.astype(np.float32), "chi": truth.astype(np.float32), "mask": mask,
            "voxel_size": chi.voxel_size, "b0_dir": chi.b0_dir, "affine": chi.affine}


def default_fansi_dir():
    """``../shared/data/fansi-phantom`` beside the checkout (or $METAQSM_FANSI)."""
    import os

    env = os.environ.get("METAQSM_FANSI")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent.parent / "shared" / "data" / "fansi-phantom"
        if cand.is_dir():
            return cand
    return Path("..") / "shared" / "data" / "fansi-phantom"


# ---------------------------------------------------------------------------------------------
# Suites


def _limit(n, total):
    if n is None:
        return total
    return min(as_int(n, "n", minimum=1), total)


def _free_specs(methods, default):
    return [default_spec(m) for m in (methods or default)]


def _mesa_spec(res_key, test_key):
    """Mesa trained at ``res_key`` applied to the test set at ``test_key`` (as is)."""
    own = res_key == test_key
    label = f"Mesa-QSM ({res_key})" if own else f"Mesa-QSM ({res_key}, as is)"
    return MethodSpec(label=label, method="mesa", params={"weights": mesa_weights(res_key)})


def mesa_weights(res_key):
    """Name of the shipped Mesa-QSM model trained at ``res_key`` (:data:`metaqsm.dl.registry.SHIPPED`)."""
    return f"mesa-{res_key}"


def _paper_suite(methods, n, cache_dir=None):
    from ..simulate.testsets import TESTSETS

    groups = []
    total = _testset_size(TESTSETS, "paper")
    cases = [Case(f"{i:03d}", (lambda i=i: _testset_case("paper", i, cache_dir))) for i in range(_limit(n, total))]
    groups.append(Group(
        name="table1", title="Table 1: synthetic test set (256 x 256 x 64, random voxel sizes)",
        cases=cases, specs=_free_specs(methods, PAPER_METHODS),
        description="Paper section 3.1 / Table 1: the classical methods against Meta-QSM.",
        source=testset_info(TESTSETS, "paper")))
    for number, (key, other) in ((2, ("0.5x0.5x2", "0.7639x0.7639x3")),
                                 (3, ("0.7639x0.7639x3", "0.5x0.5x2"))):
        tname = PAPER_RES_TESTSETS[key]
        total = _testset_size(TESTSETS, tname)
        cases = [Case(f"{i:03d}", (lambda i=i, t=tname: _testset_case(t, i, cache_dir)))
                 for i in range(_limit(n, total))]
        specs = [
            _mesa_spec(key, key),
            default_spec("meta"),
            _mesa_spec(other, key),
            MethodSpec(label=f"Mesa-QSM ({other}, interpolated)", method="mesa",
                       params={"weights": mesa_weights(other)}, resample_to=MESA_RESOLUTIONS[other]),
        ]
        if methods is not None:
            specs = [s for s in specs if s.method in methods]
        groups.append(Group(
            name=f"table{number}", title=f"Table {number}: test set at {key.replace('x', ' x ')} mm",
            cases=cases, specs=specs, fixed=True,
            description=(f"Paper section 3.2 / Table {number}: Mesa-QSM trained at {key} mm, Meta-QSM, "
                         f"and the Mesa-QSM trained at {other} mm applied as is and after naive "
                         f"interpolation of the field to {other} mm and of the result back."),
            source=testset_info(TESTSETS, tname)))
    return Suite(name="paper", title="Meta-QSM paper: Tables 1-3", groups=groups,
                 description="The synthetic experiments of the Meta-QSM paper (sections 3.1-3.2).")


def _testset_size(testsets, name):
    entry = testsets[name]
    for key in ("n", "size", "count", "n_volumes"):
        if isinstance(entry, dict) and key in entry:
            return int(entry[key])
        if hasattr(entry, key):
            return int(getattr(entry, key))
    if isinstance(entry, (int, np.integer)):
        return int(entry)
    raise ValueError(f"cannot tell the size of test set {name!r} from {entry!r}")


def testset_info(testsets, name):
    """A JSON-able description (recipe, seeds, version) of a test set."""
    import dataclasses

    entry = testsets[name]
    if dataclasses.is_dataclass(entry):
        info = dataclasses.asdict(entry)
    elif isinstance(entry, dict):
        info = dict(entry)
    else:
        info = {"value": repr(entry)}
    info = {k: (v if isinstance(v, (int, float, str, bool, type(None), list, tuple, dict)) else repr(v))
            for k, v in info.items()}
    info["testset"] = name
    from ..simulate import testsets as mod

    for attr in ("TESTSET_VERSION", "VERSION"):
        if hasattr(mod, attr):
            info["version"] = getattr(mod, attr)
            break
    return info


def _sweep_source(sweep, vsz, tilt):
    from ..simulate.testsets import TESTSET_ENTROPY, TESTSET_VERSION

    return {"generator": "metaqsm.evaluate.suites.sweep_sample (synth scene, fixed geometry)",
            "entropy": TESTSET_ENTROPY, "testset_version": TESTSET_VERSION,
            "set_id": SWEEP_STREAMS[sweep], "voxel_size": list(vsz), "tilt_deg": float(tilt),
            "shape": list(SWEEP_SHAPE)}


def _resolution_suite(methods, n):
    groups = []
    count = _limit(n, SWEEP_N)
    for i, (label, vsz) in enumerate(RESOLUTION_SWEEP):
        cases = [Case(f"{j:03d}", (lambda j=j, v=vsz: sweep_sample("resolution", j, voxel_size=v)))
                 for j in range(count)]
        source = _sweep_source("resolution", vsz, 0.0)
        groups.append(Group(
            name=f"res_{slug(label)}", title=f"Voxel size {label} mm", cases=cases,
            specs=_free_specs(methods, PAPER_METHODS), sweep="voxel size (mm)", x=float(i),
            x_label=label,
            description=f"Synthetic volumes of {SWEEP_SHAPE} at {_fmt_vsz(vsz)} mm, B0 along z.",
            source=source))
    return Suite(name="resolution", title="RMSE against voxel size", groups=groups,
                 description="Issue 6 resolution sweep: one network for every voxel size.")


def _orientation_suite(methods, n):
    groups = []
    count = _limit(n, SWEEP_N)
    for tilt in ORIENTATION_SWEEP:
        cases = [Case(f"{j:03d}", (lambda j=j, t=tilt: sweep_sample(
            "orientation", j, voxel_size=SWEEP_VOXEL_SIZE, tilt_deg=t))) for j in range(count)]
        source = _sweep_source("orientation", SWEEP_VOXEL_SIZE, tilt)
        groups.append(Group(
            name=f"tilt_{tilt:g}", title=f"B0 tilted by {tilt:g} degrees", cases=cases,
            specs=_free_specs(methods, PAPER_METHODS), sweep="B0 tilt (degrees)", x=float(tilt),
            x_label=f"{tilt:g}",
            description=(f"Synthetic volumes of {SWEEP_SHAPE} at {_fmt_vsz(SWEEP_VOXEL_SIZE)} mm, "
                         f"B0 tilted by {tilt:g} degrees from the third axis."),
            source=source))
    return Suite(name="orientation", title="RMSE against B0 direction", groups=groups,
                 description="Issue 6 orientation sweep: one network for every B0 direction.")


def _fansi_suite(methods, n, fansi_dir=None):
    d = Path(fansi_dir) if fansi_dir is not None else default_fansi_dir()
    if not (d / "chi.nii.gz").exists():
        raise FileNotFoundError(f"FANSI phantom not found: {d / 'chi.nii.gz'} "
                                "(set METAQSM_FANSI to its folder)")
    case = Case("fansi", lambda: _fansi_case(d, FANSI_NOISE_PPM, FANSI_SEED))
    group = Group(
        name="fansi", title="FANSI phantom (0.9375 x 0.9375 x 1.5 mm)", cases=[case],
        specs=_free_specs(methods, PAPER_METHODS),
        description=(f"Local field simulated with the core's forward model at the phantom's own "
                     f"voxel size, plus Gaussian noise of {FANSI_NOISE_PPM} ppm (seed {FANSI_SEED})."),
        source={"path": str(d), "noise_ppm": FANSI_NOISE_PPM, "seed": FANSI_SEED})
    return Suite(name="fansi", title="FANSI phantom", groups=[group],
                 description="An evaluation case never used for training or tuning.")


def realistic_suite(methods=None, n=None, *, cases=None, config=None, seed=REALISTIC_SEED):
    """The realistic suite: one case per entry of ``cases`` ((voxel size mm, B0 tilt deg);
    default :data:`metaqsm.simulate.realistic.REALISTIC_CASES`), each a new anatomy, simulated
    and processed by :func:`metaqsm.simulate.realistic.realistic_case` (``config`` sets the
    ranges; a coarser ``fine_voxel_mm`` makes a quick variant)."""
    from ..methods import INVERSIONS
    from ..simulate.realistic import REALISTIC_CASES, RealisticConfig, realistic_case

    config = config or RealisticConfig()
    todo = list(cases if cases is not None else REALISTIC_CASES)
    todo = todo[:_limit(n, len(todo))]
    if methods is None:
        methods = [m for m in REALISTIC_METHODS if m in INVERSIONS or m in VARIANTS]
    out = []
    for i, (vsz, tilt) in enumerate(todo):
        out.append(Case(f"{i:03d}", (lambda i=i, v=vsz, t=tilt: realistic_case(
            i, output_voxel_size=v, b0_tilt_deg=t, config=config, seed=seed)),
            info={"voxel_size": list(vsz), "tilt_deg": tilt}))
    cases_text = ", ".join(f"{_fmt_vsz(v)} mm (B0 tilt {t:g} deg)" for v, t in todo)
    group = Group(
        name="realistic", title="Realistic: whole-head acquisitions through the pipeline",
        cases=out, specs=[default_spec(m, None if m in VARIANTS else {})
                          for m in (methods or REALISTIC_METHODS)], figure_cases=1,
        description=(
            "MNI152 anatomies (random affine and elastic deformations, in-vivo tissue values, "
            "veins), white-matter susceptibility anisotropy and microstructure/exchange "
            "frequency offsets that no scalar susceptibility explains, the head's background "
            "field, T2* decay with intravoxel dephasing, a receive profile, complex noise, a "
            "brain mask off by up to ~2 mm; processed by metaqsm's pipeline (nonlinear echo "
            "fit, ROMEO, RESHARP 6 mm). Cases: " + cases_text
            + ". Truth: the isotropic susceptibility. Methods with their own defaults (as "
            "`metaqsm invert` runs them), MEDI also at the paper's lambda 1000."),
        source={"generator": "metaqsm.simulate.realistic.realistic_case", "seed": seed,
                "config": {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in vars(config).items()},
                "cases": [{"voxel_size": list(v), "tilt_deg": t} for v, t in todo]})
    return Suite(name="realistic", title="Realistic evaluation", groups=[group],
                 description=("Cases with the imperfections of real scans (issue 15); its "
                              "ranking is checked against the real in-vivo brain's."))


def _quick_suite(methods, n):
    count = _limit(n, len(QUICK_CASES))
    cases = []
    for i, (vsz, tilt) in enumerate(QUICK_CASES[:count]):
        cases.append(Case(f"{i:03d}", (lambda i=i, v=vsz, t=tilt: _phantom_case(
            i, QUICK_SHAPE, v, t, QUICK_NOISE_PPM, QUICK_SEED)),
            info={"voxel_size": list(vsz), "tilt_deg": tilt}))
    group = Group(
        name="quick", title=f"Quick: brain phantoms of {' x '.join(map(str, QUICK_SHAPE))}",
        cases=cases, specs=_free_specs(methods, QUICK_METHODS), figure_cases=1,
        description=("metaqsm.simulate.phantoms.brain_phantom at "
                     + ", ".join(f"{_fmt_vsz(v)} mm (tilt {t:g} deg)" for v, t in QUICK_CASES[:count])
                     + f"; local field by the core's forward model plus {QUICK_NOISE_PPM} ppm noise."),
        source={"generator": "metaqsm.simulate.phantoms.brain_phantom", "seed": QUICK_SEED,
                "noise_ppm": QUICK_NOISE_PPM, "shape": list(QUICK_SHAPE),
                "cases": [{"voxel_size": list(v), "tilt_deg": t} for v, t in QUICK_CASES[:count]]})
    return Suite(name="quick", title="Quick evaluation", groups=[group], save_volumes=True,
                 description="A smoke test of the evaluation: three small phantoms.")


def _weight_names():
    """Names ``--weights`` takes: every network method of the table, and each Mesa resolution."""
    from ..methods import inversion_names

    return (*inversion_names("network"), *(f"mesa-{k}" for k in MESA_RESOLUTIONS))


def check_weights(weights):
    """Validate a ``{name: checkpoint path}`` map of network weights to evaluate.

    Names: a network method ("meta" for Meta-QSM everywhere, "meta-unrolled", ...),
    "mesa-0.5x0.5x2" and "mesa-0.7639x0.7639x3" (the two Mesa models of Tables 2-3, in place of
    the shipped ones), "mesa" (Mesa-QSM where a table asks for the plain method). Raises
    ``ValueError`` for an unknown name and ``FileNotFoundError`` for a missing file.
    """
    if not weights:
        return {}
    out, names = {}, _weight_names()
    for key, path in dict(weights).items():
        if key not in names:
            raise ValueError(f"weights names must be among {', '.join(names)}, got {key!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"weights {key}: no such file: {path}")
        out[key] = str(path)
    return out


def apply_weights(suite, weights):
    """Point the suite's network columns at the given checkpoints (see :func:`check_weights`)."""
    import dataclasses

    weights = check_weights(weights)
    if not weights:
        return suite
    for g in suite.groups:
        specs = []
        for spec in g.specs:
            w = spec.params.get("weights")
            new = None
            if spec.method != "mesa" and spec.method in weights:
                new = weights[spec.method]
            elif spec.method == "mesa" and w in weights:
                new = weights[w]
            elif spec.method == "mesa" and w is None and "mesa" in weights:
                new = weights["mesa"]
            if new is not None:
                spec = dataclasses.replace(spec, params={**spec.params, "weights": new})
            specs.append(spec)
        g.specs = specs
    return suite


def build_suite(name, *, methods=None, n=None, fansi_dir=None, weights=None, figure_cases=1,
                cache_dir=None, groups=None):
    """Build a named suite.

    Parameters
    ----------
    name : {"quick", "paper", "resolution", "orientation", "fansi"}
    methods : sequence of str, optional
        Registered method names; replaces the default methods of each table (or, for the paper's
        Tables 2-3, keeps only the columns of these methods).
    n : int, optional
        At most this many volumes per test set.
    fansi_dir : path, optional
        Folder of the FANSI phantom (default ``../shared/data/fansi-phantom``).
    weights : dict, optional
        Checkpoints to evaluate instead of the shipped models, ``{"meta": path,
        "mesa-0.5x0.5x2": path, "mesa-0.7639x0.7639x3": path, "mesa": path}`` (any subset).
    figure_cases : int
        Slice figures of the first this many volumes of each table (default 1).
    cache_dir : path, optional
        Folder that keeps the generated test-set volumes of the paper suite between runs
        (:func:`testset_cache_path`); the results do not depend on it.
    groups : sequence of str, optional
        Keep only these tables of the suite (e.g. ``["table1"]`` of "paper"); default all.

    Returns
    -------
    Suite

    Raises
    ------
    ValueError
        Unknown suite, method or group, or ``n`` < 1.
    """
    methods = check_methods(methods)
    weights = check_weights(weights)
    if n is not None:
        as_int(n, "n", minimum=1)
    if name == "quick":
        suite = _quick_suite(methods, n)
    elif name == "paper":
        suite = _paper_suite(methods, n, cache_dir)
    elif name == "resolution":
        suite = _resolution_suite(methods, n)
    elif name == "orientation":
        suite = _orientation_suite(methods, n)
    elif name == "fansi":
        suite = _fansi_suite(methods, n, fansi_dir)
    elif name == "realistic":
        suite = realistic_suite(methods, n)
    else:
        raise ValueError(f"suite must be one of {', '.join(SUITES)}, got {name!r}")
    if groups is not None:
        names = [g.name for g in suite.groups]
        wanted = [groups] if isinstance(groups, str) else list(groups)
        unknown = [x for x in wanted if x not in names]
        if unknown or not wanted:
            raise ValueError(f"groups of suite {name!r} must be among {', '.join(names)}, "
                             f"got {' '.join(map(str, unknown)) or 'none'}")
        suite.groups = [g for g in suite.groups if g.name in wanted]
    figure_cases = as_int(figure_cases, "figure_cases", minimum=0)
    for g in suite.groups:
        g.figure_cases = figure_cases
    return apply_weights(suite, weights)


def user_suite(field_path, mask_path, *, reference_path=None, magnitude_path=None, noise_path=None,
               methods=None, voxel_size=None, b0_dir=None, weights=None):
    """A one-case suite from a user's files (with a reference: metrics; without: real data).

    Paths are checked here, before any work starts.
    """
    from ..io import load_nifti

    methods = check_methods(methods) or USER_METHODS
    weights = check_weights(weights)
    paths = {"field_path": field_path, "mask_path": mask_path, "reference_path": reference_path,
             "magnitude_path": magnitude_path, "noise_path": noise_path}
    for flag, p in paths.items():
        if p is not None and not Path(p).exists():
            raise FileNotFoundError(f"{flag}: no such file: {p}")

    def load():
        f = load_nifti(field_path, name="field_path", ndim=3)
        m = load_nifti(mask_path, name="mask_path", ndim=3)
        if m.data.shape != f.data.shape:
            raise ValueError(f"mask_path must have the shape of field_path {f.data.shape}, got {m.data.shape}")
        out = {"field": f.data, "mask": m.data > 0, "affine": f.affine,
               "voxel_size": (f.voxel_size if voxel_size is None
                              else as_voxel_size(voxel_size)),
               "b0_dir": f.b0_dir if b0_dir is None else as_b0_dir(b0_dir)}
        if reference_path is not None:
            r = load_nifti(reference_path, name="reference_path", ndim=3)
            if r.data.shape != f.data.shape:
                raise ValueError(f"reference_path must have the shape of field_path {f.data.shape}, "
                                 f"got {r.data.shape}")
            out["chi"] = r.data
        if magnitude_path is not None:
            mag = load_nifti(magnitude_path, name="magnitude_path", ndim=(3, 4))
            data = mag.data if mag.data.ndim == 3 else np.sqrt(np.sum(mag.data ** 2, axis=-1))
            if data.shape != f.data.shape:
                raise ValueError(f"magnitude_path must have the shape of field_path {f.data.shape}, "
                                 f"got {data.shape}")
            out["magnitude"] = data.astype(np.float32)
        if noise_path is not None:
            noise = load_nifti(noise_path, name="noise_path", ndim=3)
            if noise.data.shape == f.data.shape:
                out["noise"] = noise.data
        return out

    specs = []
    for m in methods:
        spec = default_spec(m)
        specs.append(spec)
    has_truth = reference_path is not None
    case_id = slug(Path(field_path).name.split(".")[0])
    group = Group(name="case", title=f"Case {Path(field_path).name}", cases=[Case(case_id, load)],
                  specs=specs,
                  description=(f"Local field {field_path}, mask {mask_path}"
                               + (f", reference {reference_path}" if has_truth else
                                  " (real data: no reference, no metrics)")),
                  source={"field": str(field_path), "mask": str(mask_path),
                          "reference": None if reference_path is None else str(reference_path),
                          "magnitude": None if magnitude_path is None else str(magnitude_path),
                          "noise": None if noise_path is None else str(noise_path)})
    suite = Suite(name="user" if has_truth else "real",
                  title="User case" if has_truth else "Real data", groups=[group],
                  has_truth=has_truth,
                  description="A case brought by the user." if has_truth else
                  "Real data without a ground truth: reconstructions side by side (paper figures "
                  "3-6).")
    return apply_weights(suite, weights)


def find_real_inputs(directory):
    """Local field, mask and noise map in a ``metaqsm run`` output folder.

    Looks for the pipeline's derivative names (:mod:`metaqsm.io.derivatives`):
    ``*_localfield.nii.gz``, the mask in which it is valid ``*_desc-eroded_mask.nii.gz`` (else
    ``*_mask.nii.gz``) and the noise map ``*_desc-noise_fieldmap.nii.gz`` (MEDI's data weighting);
    files of simulated truths (``desc-truth``) are ignored.

    Returns
    -------
    (field, mask, noise or None) paths

    Raises
    ------
    FileNotFoundError, ValueError
        When there is not exactly one local field and one mask; the message names what was found.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"directory: no such folder: {d}")
    nii = sorted(p for p in d.iterdir() if p.name.endswith((".nii", ".nii.gz"))
                 and "desc-truth" not in p.name)
    stem = [(p, p.name.split(".nii")[0]) for p in nii]
    fields = [p for p, s in stem if s.endswith("localfield")]
    masks = [p for p, s in stem if s.endswith("desc-eroded_mask")] or \
        [p for p, s in stem if s.endswith("mask")]
    noise = [p for p, s in stem if s.endswith("desc-noise_fieldmap")]
    for what, found in (("local field (*_localfield.nii.gz)", fields),
                        ("mask (*_desc-eroded_mask.nii.gz or *_mask.nii.gz)", masks)):
        if not found:
            raise FileNotFoundError(f"directory: no {what} in {d}; give the field and mask files instead")
        if len(found) > 1:
            raise ValueError(f"directory: several candidates for the {what} in {d}: "
                             f"{', '.join(p.name for p in found)}; give --field and --mask instead")
    return fields[0], masks[0], (noise[0] if len(noise) == 1 else None)
