"""Outputs that are all or nothing: the one place metaqsm writes files atomically.

A single file goes through :func:`atomic_path` (a temporary file beside it, renamed into place
when the block succeeds); a set of files that belong together (a map and its sidecar, the
pipeline's derivatives) goes through :func:`atomic_outputs`, which renames them only once every
one of them was written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["check_output_paths", "atomic_path", "atomic_outputs", "write_all"]


def check_output_paths(paths, *, force=False):
    """Fail before any work starts if an output exists (without ``force``) or its folder is
    missing.

    Raises ``FileExistsError``, ``FileNotFoundError`` or ``PermissionError`` naming the path.
    """
    for path in paths:
        p = Path(path)
        if p.exists() and not force:
            raise FileExistsError(f"output {p} exists; use --force to overwrite it")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.exists():
            raise FileNotFoundError(f"output folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(13, "the output folder is not writable", str(parent))


def _umask():
    """The process's file-creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_beside(p):
    """A new empty temporary file beside ``p`` that keeps its suffixes (``.nii.gz`` stays
    compressed), with the mode a plain ``open()`` would give it."""
    suffix = "".join(p.suffixes) or ".tmp"
    parent = p.parent if str(p.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name.split('.')[0]}.", suffix=suffix, dir=parent)
    os.close(fd)
    # mkstemp creates the file readable by its owner only (0600)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path, *, force=False):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On error the temporary file is removed and ``path`` is untouched.
    """
    with atomic_outputs([path], force=force) as tmp:
        yield tmp[Path(path)]


@contextlib.contextmanager
def atomic_outputs(paths, *, force=False, make_folder=None):
    """Yield ``{path: temporary path}`` for a set of outputs; rename them all into place only if
    the block succeeds, else remove every temporary file and leave the outputs as they were.

    Parameters
    ----------
    paths : iterable of paths
        The outputs, checked first (:func:`check_output_paths`; ``make_folder`` may not exist
        yet).
    force : bool
        Overwrite existing outputs.
    make_folder : path, optional
        A folder to create for the outputs (its parent must exist); removed again when the
        block fails and it was created here and is left empty.
    """
    paths = [Path(p) for p in paths]
    created = False
    if make_folder is not None:
        folder = Path(make_folder)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"output {folder} is not a folder")
        parent = folder.parent if str(folder.parent) else Path(".")
        if not parent.exists():
            raise FileNotFoundError(f"output folder {parent} does not exist")
        created = not folder.exists()
    try:
        if created:
            folder.mkdir()
        check_output_paths(paths, force=force)
        temporary = {}
        try:
            for p in paths:
                temporary[p] = _temporary_beside(p)
            yield dict(temporary)
            for p, tmp in temporary.items():
                os.replace(tmp, p)
            temporary = {}
        finally:
            for tmp in temporary.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise


def write_all(items, *, force=False, folder=None):
    """Write a set of outputs all or nothing.

    Parameters
    ----------
    items : list of (path, write)
        ``write(tmp)`` writes the output's content to the temporary path ``tmp`` (e.g.
        ``lambda tmp: save_nifti(tmp, data, affine, force=True)``).
    force, folder :
        As in :func:`atomic_outputs` (``folder`` is created when missing).

    Returns
    -------
    list of Path
        The outputs written.
    """
    items = [(Path(p), write) for p, write in items]
    with atomic_outputs([p for p, _ in items], force=force, make_folder=folder) as tmp:
        for p, write in items:
            write(tmp[p])
    return [p for p, _ in items]
