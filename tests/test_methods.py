"""The method table (metaqsm.methods): consistent with the functions, typed options, and one entry
is all a new method needs."""

from __future__ import annotations

import importlib.util
import inspect
import json

import nibabel as nib
import numpy as np
import pytest

from metaqsm import methods
from metaqsm.cli import main, translate
from metaqsm.methods import BGREMOVALS, INVERSIONS, Method, Option, parse_option_value

HAS_TORCH = importlib.util.find_spec("torch") is not None
NOT_OPTIONS = {"voxel_size", "b0_dir", "progress"}


def _entries():
    for table in (INVERSIONS, BGREMOVALS):
        for m in table.values():
            if m.is_network and not HAS_TORCH:
                continue
            yield m


@pytest.mark.parametrize("method", list(_entries()), ids=lambda m: m.name)
def test_table_matches_the_function_signature(method):
    params = inspect.signature(method.function()).parameters
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["field", "mask"]
    keywords = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    options = {o.name for o in method.options}
    inputs = {i for i in method.inputs if i != "weights"}  # weights is also an option
    assert options <= keywords, options - keywords
    assert inputs <= keywords, inputs - keywords
    assert keywords - NOT_OPTIONS == options | inputs, (keywords - NOT_OPTIONS) ^ (options | inputs)
    assert set(method.inputs) <= set(methods.INPUTS)
    assert method.kind in ("classical", "network") and method.display and method.summary
    # the defaults come from the signature, so they cannot drift
    defaults = method.defaults()
    for name, value in defaults.items():
        d = params[name].default
        assert value == (list(d) if isinstance(d, tuple) else d)


def test_one_flag_and_type_per_option_name():
    from metaqsm.cli._common import _union_options

    for table in (INVERSIONS, BGREMOVALS):
        union = _union_options(table.values())  # raises on a name with two flags or types
        assert len({o.cli_flag for o, _ in union.values()}) == len(union)


def test_defaults_are_registered_methods():
    assert methods.DEFAULT_INVERSION in INVERSIONS
    assert methods.DEFAULT_BGREMOVE in BGREMOVALS
    assert set(methods.inversion_names("classical")) | set(methods.inversion_names("network")) \
        == set(INVERSIONS)


@pytest.mark.parametrize("type_, text, expected", [
    ("float", "0.25", 0.25), ("int", "7", 7), ("bool", "true", True), ("bool", "0", False),
    ("pad", "auto", "auto"), ("pad", "12", 12), ("floats", "6,4,2", [6.0, 4.0, 2.0]),
    ("floats", "[3, 1.5]", [3.0, 1.5]), ("device", "cuda:1", "cuda:1"), ("path", "w.safetensors",
                                                                          "w.safetensors"),
])
def test_option_values_are_converted(type_, text, expected):
    assert parse_option_value(Option("x", type_, "help"), text) == expected


@pytest.mark.parametrize("opt, text, message", [
    (Option("lam", "float", "h"), "abc", "lam must be a number, got 'abc'"),
    (Option("lam", "float", "h"), "0", "lam must be positive, got 0.0"),
    (Option("peel_mm", "float", "h", positive=False), "-1", "peel_mm must be non-negative"),
    (Option("max_iter", "int", "h"), "2.5", "max_iter must be an integer"),
    (Option("max_iter", "int", "h"), "0", "max_iter must be at least 1"),
    (Option("refine", "bool", "h"), "maybe", "refine must be true or false"),
    (Option("pad", "pad", "h"), "-3", "pad must be 'auto' or a non-negative integer"),
    (Option("device", "device", "h"), "gpu", "device must be cpu or cuda"),
    (Option("smv", "str", "h", choices=("analytic", "voxel")), "box",
     "smv must be one of analytic, voxel, got 'box'"),
])
def test_bad_option_values_name_the_option(opt, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_option_value(opt, text)


def test_check_options_names_the_method_and_what_it_takes():
    m = methods.bgremoval("resharp")
    assert m.check_options({"radius": "4", "tol": 1e-4}) == {"radius": 4.0, "tol": 1e-4}
    with pytest.raises(ValueError, match=r"'radus' is not an option of method 'resharp' "
                                         r"\(it takes: radius, tik_reg"):
        m.check_options({"radus": 3})
    with pytest.raises(ValueError, match="method must be one of resharp, vsharp"):
        methods.bgremoval("ismv")
    with pytest.raises(ValueError, match="bgremove_method must be one of"):
        methods.bgremoval("ismv", "bgremove_method")


def test_inputs_are_passed_only_to_methods_that_take_them():
    mag, noise = np.ones(3), np.ones(3)
    available = {"magnitude": mag, "noise_std": noise}
    assert set(methods.inversion("medi").inputs_from(available)) == {"magnitude", "noise_std"}
    assert methods.inversion("tkd").inputs_from(available) == {}
    assert methods.inversion("medi").inputs_from({"magnitude": None}) == {}


def test_cli_translates_python_arguments_to_flags():
    flags = {"lam": "--lambda", "echo_times": "--echo-times", "phase_units": "--phase-units"}
    assert translate("lam must be positive, got 0", flags) == "--lambda must be positive, got 0"
    assert translate("echo_times has 3 values", flags) == "--echo-times has 3 values"
    assert translate("phase looks off; set phase_units auto", flags) == \
        "phase looks off; set --phase-units auto"
    # only argument names are mapped: prose and quoted option names stay
    assert translate("the mask is empty", {"mask": "--mask"}) == "the mask is empty"
    assert translate("'tik_reg' is not an option", {"tik_reg": "--x"}) == \
        "'tik_reg' is not an option"


def test_a_new_method_is_one_entry(tmp_path, monkeypatch, capsys):
    """Registering a method in the table makes it available to `metaqsm invert` (with its own
    flag) and `metaqsm run`'s --method-option, with nothing else changed."""
    entry = Method("tkd-soft", "inversion.direct:tkd", "classical", "TKD (soft)",
                   "a test entry", options=(Option("threshold", "float", "threshold"),))
    monkeypatch.setitem(INVERSIONS, entry.name, entry)
    rng = np.random.default_rng(0)
    field = rng.normal(0, 0.01, (16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(field, np.eye(4)), str(tmp_path / "f.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.uint8), np.eye(4)), str(tmp_path / "m.nii.gz"))
    out = tmp_path / "chi.nii.gz"
    rc = main(["invert", str(tmp_path / "f.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"),
               "--method", "tkd-soft", "--threshold", "0.3", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    side = json.loads((tmp_path / "chi.json").read_text())
    assert side["Method"] == "tkd-soft" and side["Parameters"] == {"threshold": 0.3}
    from metaqsm.inversion.direct import tkd

    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj),
                                  tkd(field, np.ones(field.shape, bool), voxel_size=(1, 1, 1),
                                      threshold=0.3))
    # an option the new entry does not list is refused, in flag words, before any work
    rc = main(["invert", str(tmp_path / "f.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"),
               "--method", "tkd-soft", "--pad", "4", "-o", str(tmp_path / "x.nii.gz")])
    assert rc == 2
    assert "--pad is not an option of method 'tkd-soft' (it takes: --threshold)" in \
        capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()
