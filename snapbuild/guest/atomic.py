"""Replace a file atomically: a temp file beside it, owner and mode set, then renamed into place, so a reader sees
the old file or the whole new one, never a part. Standard library only (the console runner carries it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(target: Path, data: bytes, *, mode: int, uid: int, gid: int) -> None:
    """`target` holds `data` with `mode` and `uid`:`gid` (-1 leaves one as it is); its directory must exist."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.snapbuild-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
