"""`snapbuild inspect IMAGE`: the sealing checker run offline on an image, mounted read-only."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from snapbuild.errors import UserError
from snapbuild.host import commands
from snapbuild.sealing import checker
from snapbuild.sealing.policy import Violation

if TYPE_CHECKING:
    from snapbuild.host.grow import Partition
    from snapbuild.run.scope import Scope

log = logging.getLogger(__name__)
ROOT_LABEL = "cloudimg-rootfs"


def image_format(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"image {path} not found")
    done = commands.run(["qemu-img", "info", "--output=json", str(path)], check=False)
    if done.returncode != 0:
        raise UserError(f"{path} is not a disk image qemu-img can read", hint=done.tail(2))
    return str(json.loads(done.stdout)["format"])


@contextlib.contextmanager
def mounted_root(image: Path, *, fmt: str | None = None) -> Iterator[Path]:
    """Mount the image's root filesystem read-only and yield its path; everything is undone on exit.

    Uses the chroot builder's attach layer (nbd where it exists, else a read-only qemu-storage-daemon
    export on a loop device), so nothing is converted or copied and the image is never written.
    """
    from snapbuild.host import attach as attaching
    from snapbuild.run.scope import undo_scope

    if os.geteuid() != 0:
        raise UserError("inspecting an image needs root (loop devices and mounts)", hint="run it with sudo")
    commands.require_tools("qemu-img", "losetup", "blkid", "mount", "umount", "partx")
    fmt = fmt or image_format(image)
    with undo_scope(None) as scope:
        work = Path(tempfile.mkdtemp(prefix="snapbuild-inspect-"))
        scope.add_undo(f"remove {work}", shutil.rmtree, work, True)
        mountpoint, _ = mount_root(scope, image, work, backend=attaching.resolve_backend("auto"), fmt=fmt)
        yield mountpoint


def mount_root(scope: Scope, image: Path, workdir: Path, *, backend: str, fmt: str,
               choose: Callable[[list[Partition], Path], Partition] | None = None,
               name: str = "root") -> tuple[Path, Partition]:
    """Attach `image` read-only and mount its root file system read-only at `workdir`/`name`; undo on `scope`.

    `choose` picks the root among the partitions blkid sees (default: any ext4, xfs or btrfs root).
    """
    from snapbuild.host import attach as attaching
    from snapbuild.host import grow
    from snapbuild.host.baseprobe import pick_root

    attached = attaching.attach(scope, image, workdir, backend=backend, fmt=fmt, read_only=True)
    root = (choose or pick_root)(grow.probe(attached), image)
    mountpoint = workdir / name
    mountpoint.mkdir()
    # noload: an ext journal is not replayed (the device is read-only; the base must stay as it is).
    options = "ro,noload" if root.fstype.startswith("ext") else "ro"
    if scope.ledger:
        scope.ledger.record("mount", str(mountpoint), what=f"root of {image}, read-only")
    commands.run(["mount", "-o", options, root.device, str(mountpoint)])
    scope.add_undo(f"unmount {mountpoint}", _unmount, mountpoint, forget=("mount", str(mountpoint)))
    return mountpoint, root


def _unmount(mountpoint: Path) -> None:
    if commands.run(["umount", str(mountpoint)], check=False).returncode != 0:
        commands.run(["umount", "-l", str(mountpoint)], check=False)


def inspect_image(image: Path, *, builder_user: str = "snapbuild") -> list[Violation]:
    with mounted_root(image) as root:
        return [Violation(**v) for v in checker.check_root(str(root), builder_user=builder_user, live=False)]
