"""The one table of methods: every dipole inversion and background removal, by name.

Each :class:`Method` says where its function lives (imported lazily, so the classical side
never imports torch), whether it is classical or a network, which inputs besides the field and
the mask it uses (``magnitude``, ``noise_std``, ``weights``), and its options with their types
and help. Defaults are not written here: they are the function's own keyword defaults, read from
its signature (:meth:`Method.defaults`), so the table and the function cannot disagree.

``metaqsm invert``, ``metaqsm run``, :func:`metaqsm.pipeline.run_pipeline` and the evaluation all
read this table; adding a method is one entry in :data:`INVERSIONS` or :data:`BGREMOVALS`.

Examples
--------
>>> from metaqsm.methods import inversion
>>> m = inversion("tkd")
>>> m.kind, m.display, [o.name for o in m.options]
('classical', 'TKD', ['threshold', 'pad'])
>>> m.defaults()["threshold"]
0.2
"""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass, field

__all__ = [
    "Option",
    "Method",
    "INVERSIONS",
    "BGREMOVALS",
    "DEFAULT_INVERSION",
    "NETWORK_DEFAULT_INVERSION",
    "PLAIN_DEFAULT_INVERSION",
    "DEFAULT_BGREMOVE",
    "inversion",
    "bgremoval",
    "inversion_names",
    "parse_option_value",
    "check_option_value",
]

# keywords every method takes that are not options: the geometry, and the progress bar
_GEOMETRY = ("voxel_size", "b0_dir", "progress")
# the inputs a method may use besides field and mask (keyword names of its function)
INPUTS = ("magnitude", "noise_std", "noise", "weights")


@dataclass(frozen=True)
class Option:
    """One keyword option of a method.

    Parameters
    ----------
    name : str
        The function's keyword.
    type : {"float", "int", "bool", "str", "pad", "path", "floats", "device"}
        How a text value (command line, ``KEY=VALUE``) is converted and checked: ``"pad"`` is
        ``"auto"`` or a non-negative integer, ``"path"`` a file name, ``"floats"`` a list of
        numbers, ``"device"`` ``cpu`` or ``cuda[:N]``.
    help : str
        One line for ``--help``, with the unit.
    flag : str, optional
        The command-line flag of ``metaqsm invert`` (default ``--`` + the name with dashes).
    choices : tuple of str, optional
        The allowed values of a ``"str"`` option.
    positive : bool
        Numbers must be positive (integers at least 1); ``False`` allows 0 but not negatives.
    """

    name: str
    type: str
    help: str
    flag: str | None = None
    choices: tuple | None = None
    positive: bool = True

    @property
    def cli_flag(self):
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Method:
    """A registered method (see the module docstring).

    Parameters
    ----------
    name : str
        The name users type (``--method NAME``).
    target : str
        ``"module:function"``, the module relative to the ``metaqsm`` package.
    kind : {"classical", "network"}
        Networks need the deep-learning extra (torch) and a weights file.
    display : str
        Name in tables and figures.
    summary : str
        One line: what it is, with its reference.
    inputs : tuple of str
        Which of :data:`INPUTS` the function takes; callers that have them pass them.
    options : tuple of Option
        Its keyword options (besides the geometry and the inputs).
    shipped : tuple of str
        Networks: the names of the models shipped for it in ``metaqsm/models/`` (file
        ``NAME.safetensors`` with its card ``NAME.json``), first the default.
    preflight : str, optional
        ``"module:function"`` called as ``function(method, voxel_size=..., options=...)`` by
        :meth:`check_ready` before any work, raising ``ValueError`` (naming the Python
        argument) when the method cannot run on this data with these options (a network
        without torch or without a model for the voxel size, a CUDA device on a CPU build).
    """

    name: str
    target: str
    kind: str
    display: str
    summary: str
    inputs: tuple = ()
    options: tuple = field(default_factory=tuple)
    shipped: tuple = ()
    preflight: str | None = None

    @property
    def is_network(self):
        return self.kind == "network"

    def function(self):
        """Import and return the method's function (``ImportError`` if torch is missing for a
        network)."""
        module, func = self.target.split(":")
        return getattr(importlib.import_module(f"metaqsm.{module}"), func)

    def option(self, name):
        """The :class:`Option` called ``name``; ``ValueError`` naming the method's options."""
        for opt in self.options:
            if opt.name == name:
                return opt
        takes = ", ".join(o.name for o in self.options) or "no options"
        raise ValueError(f"{name!r} is not an option of method {self.name!r} (it takes: {takes})")

    def defaults(self):
        """The default of each option, from the function's signature (imports the function)."""
        params = inspect.signature(self.function()).parameters
        out = {}
        for opt in self.options:
            v = params[opt.name].default
            out[opt.name] = list(v) if isinstance(v, tuple) else v
        return out

    def check_options(self, options):
        """Validate option names and convert text values; returns a new dict.

        Raises ``ValueError`` naming the first unknown option (with the method's options) or a
        value of the wrong type.
        """
        out = {}
        for key, value in dict(options or {}).items():
            opt = self.option(key)
            out[key] = parse_option_value(opt, value) if isinstance(value, str) else \
                check_option_value(opt, value)
        return out

    def inputs_from(self, available):
        """The entries of ``available`` (input name -> array or None) this method takes."""
        return {k: v for k, v in available.items() if k in self.inputs and v is not None}

    def check_ready(self, *, voxel_size, options=None):
        """Raise before any work if the method cannot run on data of ``voxel_size`` (mm) with
        ``options`` (its :attr:`preflight` check; the function's import for every method)."""
        self.function()
        if self.preflight is not None:
            module, func = self.preflight.split(":")
            check = getattr(importlib.import_module(f"metaqsm.{module}"), func)
            check(self, voxel_size=voxel_size, options=dict(options or {}))


def parse_option_value(opt, value):
    """Convert the text ``value`` of option ``opt`` (``KEY=VALUE``) to its type.

    Raises ``ValueError`` naming the option, the expected type and the value.
    """
    text = str(value).strip()
    if opt.type in ("str", "path", "device"):
        return check_option_value(opt, text)
    try:
        if opt.type == "float":
            value = float(text)
        elif opt.type == "int":
            if str(int(text)) != text:
                raise ValueError
            value = int(text)
        elif opt.type == "bool":
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value = low in ("true", "1", "yes")
        elif opt.type == "pad":
            value = text if text == "auto" else int(text)
            if value != "auto" and (value < 0 or str(value) != text):
                raise ValueError
        elif opt.type == "floats":
            v = json.loads(text) if text.startswith("[") else [float(t) for t in text.split(",")]
            value = [float(x) for x in v]
        else:
            raise RuntimeError(f"option {opt.name} has an unknown type {opt.type!r}")  # table bug
    except (TypeError, ValueError, json.JSONDecodeError):
        want = {"float": "a number", "int": "an integer", "bool": "true or false",
                "pad": "'auto' or a non-negative integer",
                "floats": "numbers separated by commas"}[opt.type]
        raise ValueError(f"{opt.name} must be {want}, got {value!r}") from None
    return check_option_value(opt, value)


def check_option_value(opt, value):
    """Check a typed ``value`` of option ``opt`` against its bounds and choices; returns it.

    Raises ``ValueError`` naming the option.
    """
    if value is None:
        return value
    if opt.type in ("float", "int") or (opt.type == "pad" and not isinstance(value, str)):
        v = float(value)
        if opt.type == "pad":
            ok = v >= 0 and v == int(v)
            if not ok:
                raise ValueError(f"{opt.name} must be 'auto' or a non-negative integer, got {value!r}")
        elif opt.positive and opt.type == "int" and not v >= 1:
            raise ValueError(f"{opt.name} must be at least 1, got {value!r}")
        elif opt.positive and not v > 0:
            raise ValueError(f"{opt.name} must be positive, got {value!r}")
        elif not v >= 0:
            raise ValueError(f"{opt.name} must be non-negative, got {value!r}")
    elif opt.type == "pad" and value != "auto":
        raise ValueError(f"{opt.name} must be 'auto' or a non-negative integer, got {value!r}")
    elif opt.type == "device":
        text = str(value)
        if not (text == "cpu" or text == "cuda" or (text.startswith("cuda:")
                                                    and text[5:].isdigit())):
            raise ValueError(f"{opt.name} must be cpu or cuda[:N], got {value!r}")
    elif opt.type == "floats":
        if not all(float(x) > 0 for x in value):
            raise ValueError(f"{opt.name} must be positive numbers, got {value!r}")
    if opt.choices is not None and value not in opt.choices:
        raise ValueError(f"{opt.name} must be one of {', '.join(opt.choices)}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- shared options
def _pad(where="the FFT grid"):
    return Option("pad", "pad", f"zero padding of {where}: 'auto' doubles each axis, N adds N "
                  "voxels per axis")


_CROP = Option("crop", "bool", "work on the mask's bounding box grown by 8 voxels (a smaller FFT "
               "grid) instead of the whole grid")
_THRESHOLD = Option("threshold", "float", "truncation threshold of |D| (unitless)")
_MAX_ITER = Option("max_iter", "int", "maximum number of iterations")
_TOL = Option("tol", "float", "stopping tolerance (relative)")
_REG_RULE = Option("reg_rule", "str", "regularisation weight: fixed (as given) or discrepancy "
                   "(searched so the residual matches the field noise, noise_std or estimated)",
                   choices=("fixed", "discrepancy"))
_NETWORK_OPTIONS = (
    Option("weights", "path", "network checkpoint (.safetensors; default: the shipped model)"),
    Option("device", "device", "device for the network: cpu or cuda[:N]"),
    Option("tile", "int", "tile edge in voxels for large volumes (default: whole volume)"),
    Option("refine", "bool", "pull the network's map towards the field with a few CG iterations "
           "of ||M (D chi - f)||^2 + mu ||chi - chi_net||^2"),
    Option("refine_iter", "int", "CG iterations of the refinement"),
    Option("refine_mu", "float", "proximity weight mu of the refinement"),
)

# ----------------------------------------------------------------------------- the tables
INVERSIONS = {m.name: m for m in (
    Method("tkd", "inversion.direct:tkd", "classical", "TKD",
           "truncated k-space division (Shmueli et al. 2009)",
           options=(_THRESHOLD, _pad())),
    Method("tsvd", "inversion.direct:tsvd", "classical", "TSVD",
           "truncated SVD: k-space division, zero in the ill-conditioned cone",
           options=(_THRESHOLD, _pad())),
    Method("tikhonov", "inversion.direct:tikhonov", "classical", "Tikhonov",
           "closed-form Tikhonov-regularised k-space inversion",
           options=(Option("lam", "float", "regularisation weight", flag="--lambda"),
                    Option("regulariser", "str", "regulariser",
                           choices=("identity", "gradient", "laplacian")),
                    _pad())),
    Method("ilsqr", "inversion.ilsqr:ilsqr", "classical", "iLSQR",
           "iLSQR with streaking-artifact removal (Li et al. 2015)",
           options=(Option("tol", "float", "LSMR tolerance of the streaking estimate"),
                    Option("max_iter", "int", "LSMR iterations of the streaking estimate"),
                    Option("tol_lsqr", "float",
                           "LSQR relative residual of the first step (MATLAB's rule)"),
                    Option("max_iter_lsqr", "int", "LSQR iterations of the first step"),
                    Option("threshold_cone", "float",
                           "|D| below which k-space is the ill-conditioned cone"),
                    _pad())),
    Method("medi", "inversion.medi:medi", "classical", "MEDI",
           "morphology enabled dipole inversion, nonlinear (Liu et al. 2011/2012)",
           inputs=("magnitude", "noise_std"),
           options=(Option("lam", "float", "data-term weight, MEDI toolbox units",
                           flag="--lambda"),
                    Option("field_strength", "float", "main field in tesla (ppm <-> rad scale)"),
                    Option("delta_te", "float", "echo spacing in seconds (ppm <-> rad scale)"),
                    Option("edge_fraction", "float",
                           "fraction of gradient components marked as edges"),
                    Option("max_iter", "int", "Gauss-Newton iterations"),
                    Option("tol", "float", "Gauss-Newton stopping ratio ||dx|| / ||chi||"),
                    Option("cg_max_iter", "int", "CG iterations per Gauss-Newton step"),
                    Option("cg_tol", "float", "CG relative residual per Gauss-Newton step"),
                    Option("epsilon", "float", "smoothing of |M G chi| (rad^2/mm^2)"),
                    Option("csf", "str", "MEDI+0 CSF zero reference: 'auto' builds the "
                           "ventricle mask from the magnitude", choices=("auto",)),
                    Option("lam_csf", "float", "weight of the MEDI+0 CSF term (with --csf)"),
                    Option("merit", "bool", "model error reduction (the toolbox's merit)"),
                    Option("precondition", "bool", "k-space preconditioned CG (--no-precondition: "
                           "the toolbox's plain CG)"),
                    _pad())),
    Method("tv", "inversion.tv:tv", "classical", "TV",
           "total-variation regularised inversion by ADMM (Bilgic et al. 2014; as FANSI)",
           options=(Option("lam", "float", "TV weight", flag="--lambda"),
                    Option("rho", "float", "ADMM penalty (default 100 lam)"),
                    Option("tol", "float", "ADMM stopping tolerance"),
                    Option("max_iter", "int", "ADMM iterations"),
                    _pad(), _CROP)),
    Method("wtv", "inversion.tv:wtv", "classical", "wTV",
           "weighted TV: TV without a penalty across the magnitude's edges (MEDI's gradient "
           "mask, FANSI's weighted TV)",
           inputs=("magnitude",),
           options=(Option("lam", "float", "TV weight", flag="--lambda"),
                    Option("edge_fraction", "float",
                           "fraction of gradient components marked as edges"),
                    Option("rho", "float", "ADMM penalty (default 100 lam)"),
                    Option("tol", "float", "ADMM stopping tolerance"),
                    Option("max_iter", "int", "ADMM iterations"),
                    _pad(), _CROP)),
    Method("rts", "inversion.rts:rts", "classical", "RTS",
           "rapid two-step inversion: LSMR on the well-conditioned k-space, TV fills the cone "
           "(Kames et al. 2018)",
           inputs=("noise_std",),
           options=(Option("delta", "float", "|D| above which k-space is well conditioned"),
                    Option("mu", "float", "weight of the well-conditioned data term, 1/ppm"),
                    Option("rho", "float", "initial ADMM penalty"),
                    Option("tol", "float", "ADMM stopping tolerance (relative change of chi)"),
                    Option("max_iter", "int", "ADMM iterations"),
                    Option("lsmr_iter", "int", "LSMR iterations of the well-conditioned step"),
                    _REG_RULE,
                    _pad(), _CROP)),
    Method("ndi", "inversion.ndi:ndi", "classical", "NDI",
           "nonlinear dipole inversion, gradient descent on ||W (exp(i D chi) - exp(i phi))||^2 "
           "(Polak et al. 2020)",
           inputs=("magnitude", "noise_std"),
           options=(Option("lam", "float", "Tikhonov weight (unitless, for stability)",
                           flag="--lambda"),
                    Option("tau", "float", "gradient-descent step"),
                    Option("max_iter", "int", "gradient steps (early stopping regularises)"),
                    Option("tol", "float", "relative step at which to stop"),
                    Option("field_strength", "float", "main field in tesla (ppm <-> rad scale)"),
                    Option("delta_te", "float", "echo spacing in seconds (ppm <-> rad scale)"),
                    _pad(), _CROP)),
    Method("nltv", "inversion.nltv:nltv", "classical", "nlTV",
           "nonlinear total variation by ADMM, FANSI's nlTV (Milovic et al. 2018)",
           inputs=("magnitude", "noise_std"),
           options=(Option("lam", "float", "TV weight, ppm mm (as tv)", flag="--lambda"),
                    Option("rho", "float", "ADMM penalty of grad chi (default 100 lam)"),
                    Option("mu", "float", "ADMM penalty of the nonlinear data term"),
                    Option("tol", "float", "ADMM stopping tolerance (relative change of chi)"),
                    Option("max_iter", "int", "ADMM iterations"),
                    Option("field_strength", "float", "main field in tesla (ppm <-> rad scale)"),
                    Option("delta_te", "float", "echo spacing in seconds (ppm <-> rad scale)"),
                    _REG_RULE,
                    _pad(), _CROP)),
    Method("meta", "dl.infer:invert_meta", "network", "Meta-QSM",
           "3D U-Net with weights predicted from the voxel size and B0 direction (Meta-QSM)",
           inputs=("weights",), options=_NETWORK_OPTIONS, shipped=("meta",),
           preflight="dl.infer:check_network"),
    Method("mesa", "dl.infer:invert_mesa", "network", "Mesa-QSM",
           "the same U-Net with plain convolutions, one model per resolution",
           inputs=("weights",), options=_NETWORK_OPTIONS,
           shipped=("mesa-0.5x0.5x2", "mesa-0.7639x0.7639x3"), preflight="dl.infer:check_network"),
    Method("meta-unrolled", "dl.unrolled:invert_meta_unrolled", "network", "Meta-QSM 2 (unrolled)",
           "TKD, then K dipole-model gradient steps each followed by one shared WP-Conv U-Net "
           "(learned steps; trained on fields with a real scan's imperfections)",
           inputs=("weights",), options=_NETWORK_OPTIONS[:3], shipped=("meta-unrolled",),
           preflight="dl.infer:check_network"),
    Method("meta-hybrid", "dl.hybrid:invert_meta_hybrid", "network", "Meta-QSM 2 hybrid",
           "Meta-QSM 2 (unrolled) for the coarse structure, a classical inversion's (MEDI's) "
           "finer detail above a Gaussian split",
           inputs=("weights", "magnitude", "noise_std"),
           options=(Option("detail", "str", "classical inversion that supplies the detail",
                           choices=("medi", "tv", "wtv")),
                    Option("sigma", "float", "the split's Gaussian standard deviation, voxels"),
                    *_NETWORK_OPTIONS[:3]),
           shipped=("meta-unrolled",), preflight="dl.infer:check_network"),
    Method("meta-tv", "dl.hybrid:invert_meta_tv", "network", "Meta-QSM 2 + TV",
           "weighted TV (the magnitude's edges) with the Meta-QSM 2 network's map as the prior "
           "of its coarse structure",
           inputs=("weights", "magnitude"),
           options=(Option("lam", "float", "TV weight, ppm mm (default 3e-3 with a magnitude, "
                           "1e-3 without)", flag="--lambda"),
                    Option("prior_weight", "float", "weight of the network's prior"),
                    Option("prior_sigma", "float", "scale below which the network is trusted, "
                           "mm"),
                    *_NETWORK_OPTIONS[:3]),
           shipped=("meta-unrolled",), preflight="dl.infer:check_network"),
)}

_SMV = Option("smv", "str", "spherical-mean-value kernel", choices=("analytic", "voxel"))

BGREMOVALS = {m.name: m for m in (
    Method("resharp", "bgremove.sharp:resharp", "classical", "RESHARP",
           "Tikhonov-regularised SHARP (Sun & Wilman 2014)",
           options=(Option("radius", "float", "sphere radius in mm"),
                    Option("tik_reg", "float", "Tikhonov weight"),
                    Option("tol", "float", "CG tolerance"),
                    Option("max_iter", "int", "CG iterations"),
                    _SMV)),
    Method("vsharp", "bgremove.sharp:vsharp", "classical", "V-SHARP",
           "variable-radius SHARP (Li et al. 2011; Wu et al. 2012)",
           options=(Option("radii", "floats", "sphere radii in mm, largest first"),
                    Option("threshold", "float", "deconvolution threshold"),
                    _SMV)),
    Method("sharp", "bgremove.sharp:sharp", "classical", "SHARP",
           "sophisticated harmonic artifact reduction (Schweser et al. 2011)",
           options=(Option("radius", "float", "sphere radius in mm"),
                    Option("threshold", "float", "deconvolution threshold"),
                    _SMV)),
    Method("pdf", "bgremove.pdf:pdf", "classical", "PDF",
           "projection onto dipole fields (Liu et al. 2011)",
           inputs=("noise",),
           options=(_pad("the dipole grid"), Option("tol", "float", "LSQR tolerance"),
                    Option("max_iter", "int", "LSQR iterations"))),
    Method("lbv", "bgremove.lbv:lbv", "classical", "LBV",
           "Laplacian boundary value problem (Zhou et al. 2014)",
           options=(Option("tol", "float", "CG tolerance"),
                    Option("max_iter", "int", "CG iterations"),
                    Option("peel_mm", "float", "boundary layer removed afterwards, mm",
                           positive=False))),
)}

NETWORK_DEFAULT_INVERSION = "meta-tv"
"""The default inversion where torch is installed (``metaqsm[dl]``): Meta-QSM 2 + TV, weighted TV
with the Meta-QSM 2 network's map as the prior of its coarse structure. First on the realistic
suite on RMSE, HFEN, SSIM and XSIM, ahead of every classical method and of the hybrid
(``metaqsm evaluate --suite realistic``, docs/results/realistic, issue 16; the hybrid, the default
before, took MEDI's detail and five times as long)."""

PLAIN_DEFAULT_INVERSION = "tv"
"""The default inversion of a plain install (no torch): TV, the best of the maintainers' real
brain among the methods measured there (issue 15). Weighted TV (``wtv``) scores better on the
realistic suite but needs the magnitude, which ``metaqsm invert`` may not have, and has not been
measured on a real brain."""


def _networks_installed():
    """Whether torch and safetensors can be imported (found, not imported: that takes seconds)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "safetensors"))


DEFAULT_INVERSION = NETWORK_DEFAULT_INVERSION if _networks_installed() else PLAIN_DEFAULT_INVERSION
"""The inversion used when none is named (``metaqsm invert``, ``metaqsm run``, ``metaqsm bids``):
:data:`NETWORK_DEFAULT_INVERSION` where torch is installed, else :data:`PLAIN_DEFAULT_INVERSION`
(the default must run on a plain install). TV before issue 16, iLSQR before issue 15."""

DEFAULT_BGREMOVE = "resharp"
"""The background removal used when none is named (6 mm sphere, as the Meta-QSM paper)."""


def _lookup(table, name, argument):
    if name not in table:
        raise ValueError(f"{argument} must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def inversion(name, argument="method"):
    """The registered inversion ``name``; ``ValueError`` naming ``argument`` and the known ones."""
    return _lookup(INVERSIONS, name, argument)


def bgremoval(name, argument="method"):
    """The registered background removal ``name``; ``ValueError`` naming ``argument`` and the
    known ones."""
    return _lookup(BGREMOVALS, name, argument)


def inversion_names(kind=None):
    """Names of the registered inversions, of one ``kind`` ("classical", "network") or all."""
    return tuple(n for n, m in INVERSIONS.items() if kind is None or m.kind == kind)
