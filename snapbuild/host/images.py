"""What qemu-img says about a disk image file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snapbuild.errors import UserError
from snapbuild.host import commands


def image_info(path: Path, *, force_share: bool = True) -> dict[str, Any]:
    """`qemu-img info` as a dict: "format", "virtual-size", "actual-size", "backing-filename", "encrypted", ...

    `force_share` (-U) reads the header even while a running VM or qemu-nbd holds the image; without it an image
    that another process writes is refused (what an upload wants: never send a disk that is still changing).
    """
    if not path.exists():
        raise UserError(f"image {path} not found")
    argv = ["qemu-img", "info", "--output=json", *(["-U"] if force_share else []), str(path)]
    done = commands.run(argv, check=False, timeout=120)
    if done.returncode != 0:
        if 'Failed to get shared "write" lock' in done.stderr:
            raise UserError(f"{path} is in use: another process (a VM, qemu-nbd) has it open for writing",
                            hint="wait for it to finish or stop it, then try again")
        raise UserError(f"{path} is not a disk image qemu-img can read",
                        hint=done.tail(1) or f"qemu-img info exited {done.returncode}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info
