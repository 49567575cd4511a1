"""Checks for where the user asked snapbuild to write (`-o`), made before anything is written or downloaded.

The OS's own error at the end of the work ("FileExistsError", "Not a directory") says neither which option
was wrong nor how to fix it; these say both, and say it first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from snapbuild.errors import UserError


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _refuse_unwritable(where: Path, path: Path, *, option: str, hint: str) -> None:
    """`where` (the nearest existing ancestor of `path`) must be a directory this process may write into."""
    if not where.is_dir():
        raise UserError(f"{option} {path}: {where} is not a directory", hint=hint)
    if not os.access(where, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {where} (permission denied or read-only)", hint=hint)


def prepare_output_dir(directory: Path, *, option: str) -> Path:
    """Make `directory` (and its parents) for output, or raise a UserError; returns it. Writes no file."""
    hint = f"give {option} a new or existing directory you can write to"
    if os.path.lexists(directory) and not directory.is_dir():
        raise UserError(f"{option} {directory} exists and is not a directory", hint=hint)
    _refuse_unwritable(_nearest_existing(directory), directory, option=option, hint=hint)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {directory}: cannot create the directory: {exc.strerror or exc}",
                        hint=hint) from None
    try:
        # the one sure test (root passes access(2) on most things, /proc and read-only mounts do not take files);
        # an unnamed temporary file leaves nothing behind
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise UserError(f"{option} {directory}: cannot write there: {exc.strerror or exc}", hint=hint) from None
    return directory


def check_output_file(path: Path, *, option: str) -> None:
    """`path` can be written as a file (its directory exists or can be made): a UserError if not. Makes nothing."""
    hint = f"give {option} a file path in a directory you can write to"
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory", hint=f"{hint}, for example {path / 'image.qcow2'}")
    _refuse_unwritable(_nearest_existing(path.parent), path, option=option, hint=hint)
