"""`snapbuild inspect IMAGE`: the sealing checker run offline on an image, mounted read-only."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from snapbuild.errors import BuildError, UserError
from snapbuild.host import commands
from snapbuild.host.images import image_info
from snapbuild.sealing import checker
from snapbuild.sealing.policy import Violation

if TYPE_CHECKING:
    from snapbuild.host.grow import Partition
    from snapbuild.run.scope import Scope

log = logging.getLogger(__name__)
ROOT_LABEL = "cloudimg-rootfs"


def image_format(path: Path) -> str:
    # Not -U: an image a VM still writes is refused here, before the read-only attach would fail on its lock.
    return str(image_info(path, force_share=False)["format"])


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


def require_clean_image(image: Path) -> None:
    """The offline half of the policy, after capture: the image file itself, mounted read-only, is checked."""
    violations = inspect_image(image)
    if violations:
        raise BuildError("the image breaks the sealing policy:\n  " + "\n  ".join(str(v) for v in violations),
                         hint="see the build log for the seal step's output; nothing was published")
