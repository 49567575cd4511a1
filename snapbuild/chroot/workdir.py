"""The build's working directory beside the output: working image, FUSE export, mountpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from snapbuild.host import mounts
from snapbuild.run.scope import Scope

log = logging.getLogger(__name__)


def make_workdir(scope: Scope, output: Path, build_id: str) -> Path:
    """Same file system as the output, so the finished image is renamed into place, not copied."""
    path = output.parent / f".{output.name}.snapbuild-{build_id}"
    if scope.ledger:
        scope.ledger.record("tempdir", str(path))
    path.mkdir(mode=0o700)
    scope.add_undo(f"remove {path}", mounts.remove_tree, path, forget=("tempdir", str(path)))
    return path
