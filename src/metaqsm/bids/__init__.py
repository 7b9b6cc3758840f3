"""Whole studies: a BIDS App around the pipeline.

* :func:`find_acquisitions` finds the multi-echo GRE acquisitions of a BIDS dataset (pybids):
  ``*_echo-<n>_part-<mag|phase|real|imag>_MEGRE.nii[.gz]`` with sidecars, and ``T2starw`` /
  ``swi`` / ``GRE`` scans that carry phase.
* :func:`run_participants` runs :func:`metaqsm.pipeline.run_pipeline` on each (in this
  process, on a local Dask cluster with ``n_jobs``, or on a running Dask scheduler's workers),
  writes BIDS derivatives to ``OUTPUT_DIR/sub-X/[ses-Y/]anat/`` (chi, masks, fields, and R2*,
  T2*, SWI, mIP and referenced chi when :mod:`metaqsm.maps` is installed; an HTML report when
  :mod:`metaqsm.qc` is), one summary row per acquisition, and ``dataset_description.json``.
  A failure is recorded and the others go on; a rerun skips finished acquisitions.
* :func:`run_group` gathers the summaries into ``OUTPUT_DIR/group_qsm.tsv``.
* :func:`simulate_dataset` writes a simulated study for examples and tests.

The command line is ``metaqsm bids BIDS_DIR OUTPUT_DIR participant|group`` (``docs/bids.md``).
This package sits beside :mod:`metaqsm.pipeline` (it reads and writes through :mod:`metaqsm.io`
and the pipeline's :func:`~metaqsm.pipeline.write_outputs`) and below :mod:`metaqsm.cli`.

References
----------
Gorgolewski KJ, Alfaro-Almagro F, Auer T, et al. BIDS apps: Improving ease of use,
accessibility, and reproducibility of neuroimaging data analysis methods. PLoS Comput Biol
2017;13:e1005209.
Yarkoni T, Markiewicz CJ, de la Vega A, et al. PyBIDS: Python tools for BIDS datasets. J Open
Source Softw 2019;4:1294.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "_find": ["BidsAcquisition", "find_acquisitions", "SUFFIXES"],
    "_run": ["run_participants", "prepare_output_dir"],
    "_group": ["run_group"],
    "_names": ["MAP_OUTPUTS", "GROUP_TABLE", "bids_prefix"],
    "_participant": ["ParticipantConfig", "process_acquisition"],
    "simulate": ["simulate_dataset"],
})
