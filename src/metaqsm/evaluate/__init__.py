"""Evaluation: reproduce the Meta-QSM paper's experiments with one call, with tables and figures.

>>> from metaqsm.evaluate import build_suite, run_suite
>>> result = run_suite(build_suite("quick", methods=["tkd", "tv"]), "report/")  # doctest: +SKIP

Suites (see :mod:`metaqsm.evaluate.suites`): ``quick``, ``paper`` (Tables 1-3), ``resolution``,
``orientation`` and ``fansi``; :func:`user_suite` makes a one-case suite from a user's files
(with a reference: metrics; without: the side-by-side figure of real data). Results are written
per (case, method) as soon as they are computed, so an interrupted run resumes
(:func:`run_suite` with ``resume=True``); :func:`build_report` rewrites ``report.md`` and
``index.html`` from what is on disk.

Nothing here imports torch unless a network method is evaluated.
"""

from .report import build_report, load_results, summarise
from .runner import machine_info, naive_interpolation, run_suite
from .suites import (
    SUITES,
    Case,
    Group,
    MethodSpec,
    Suite,
    build_suite,
    find_real_inputs,
    user_suite,
)

__all__ = [
    "SUITES",
    "Case",
    "Group",
    "MethodSpec",
    "Suite",
    "build_suite",
    "user_suite",
    "find_real_inputs",
    "run_suite",
    "naive_interpolation",
    "build_report",
    "load_results",
    "summarise",
    "machine_info",
]
