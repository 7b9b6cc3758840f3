"""Reading one BIDS acquisition into a :class:`metaqsm.io.acquisition.Scan`, with the provenance
its derivatives record (files relative to the dataset, their SHA-256, where each parameter came
from)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_acquisition", "bids_uris"]


def _relative(path, root):
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def load_acquisition(acq, bids_dir, *, phase_units="auto"):
    """Read a :class:`~metaqsm.bids._find.BidsAcquisition`.

    Magnitude and phase go through :func:`metaqsm.io.acquisition.load_scan` (the phase-units
    rule of :func:`metaqsm.units.phase_to_radians`); real and imaginary parts are combined into
    magnitude and phase (radians) here. Echo times and field strength are the sidecars' (read
    with BIDS inheritance by the finder).

    Returns
    -------
    metaqsm.io.acquisition.Scan
        ``inputs`` holds the files relative to ``bids_dir``, the sources of the parameters,
        and ``checksums``: relative path -> SHA-256 (for the sidecars' ``InputChecksums``).

    Raises
    ------
    ValueError
        The acquisition's ``problem``; unreadable or inconsistent files.
    """
    from ..io.acquisition import Scan, load_echoes, load_scan
    from ..io.derivatives import file_sha256

    if acq.problem is not None:
        raise ValueError(acq.problem)
    first, second = (list(f) for f in acq.files)
    if acq.parts == ("mag", "phase"):
        scan = load_scan(first, second, echo_times=acq.echo_times,
                         field_strength=acq.field_strength, phase_units=phase_units)
        inputs = {k: v for k, v in scan.inputs.items() if k not in ("magnitude", "phase")}
    else:
        real, vol, _, _ = load_echoes(first, "real")
        imag, _, _, _ = load_echoes(second, "imag")
        if real.shape != imag.shape:
            raise ValueError(f"the real parts have shape {real.shape}, the imaginary parts "
                             f"{imag.shape}")
        signal = real.astype(np.complex64) + 1j * imag.astype(np.complex64)
        scan = Scan(np.abs(signal).astype(np.float32), np.angle(signal).astype(np.float32),
                    list(acq.echo_times), acq.field_strength, vol.voxel_size, vol.b0_dir,
                    vol.affine, vol.header, {})
        inputs = {"PhaseUnits": "radians (angle of real + i imag)"}
    words = {"mag": "magnitude", "phase": "phase", "real": "real", "imag": "imaginary"}
    names = {words[acq.parts[0]]: first, words[acq.parts[1]]: second}
    inputs.update({
        **{part: [_relative(p, bids_dir) for p in paths] for part, paths in names.items()},
        "EchoTimeSource": "BIDS sidecars",
        "MagneticFieldStrengthSource": "BIDS sidecars",
        "checksums": {_relative(p, bids_dir): file_sha256(p) for p in first + second},
    })
    scan.inputs = inputs
    return scan


def bids_uris(acq, bids_dir):
    """The acquisition's files as BIDS URIs relative to the raw dataset (``bids:raw:...``)."""
    return [f"bids:raw:{_relative(p, bids_dir)}" for p in [*acq.files[0], *acq.files[1]]]
