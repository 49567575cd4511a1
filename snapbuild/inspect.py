"""`snapbuild inspect IMAGE`: the sealing checker run offline on an image, mounted read-only."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from snapbuild import hostrun, sealcheck
from snapbuild.errors import UserError
from snapbuild.seal import Violation

log = logging.getLogger(__name__)
ROOT_LABEL = "cloudimg-rootfs"


def image_format(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"image {path} not found")
    done = hostrun.run(["qemu-img", "info", "--output=json", str(path)], check=False)
    if done.returncode != 0:
        raise UserError(f"{path} is not a disk image qemu-img can read", hint=done.tail(2))
    return str(json.loads(done.stdout)["format"])


@contextlib.contextmanager
def mounted_root(image: Path, *, writable: bool = False) -> Iterator[Path]:
    """Mount the image's root filesystem (read-only unless asked) and yield its path; undone on exit.

    Works without nbd, udev or kernel partition scanning: the image is read as raw (converted to a sparse
    temporary file when it is qcow2) and the root partition attached by offset.
    """
    if os.geteuid() != 0:
        raise UserError("inspecting an image needs root (loop devices and mounts)", hint="run it with sudo")
    hostrun.require_tools("qemu-img", "sfdisk", "losetup", "blkid", "mount", "umount")
    fmt = image_format(image)
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="snapbuild-inspect-"))
        stack.callback(shutil.rmtree, work, True)
        raw = image
        if fmt != "raw":
            raw = work / "disk.raw"
            hostrun.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], timeout=1800)
        table = json.loads(hostrun.run(["sfdisk", "--json", str(raw)]).stdout)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        candidates = []
        for part in table.get("partitions", []):
            device = hostrun.run(["losetup", "--find", "--show", "--read-only", "--offset",
                                  str(int(part["start"]) * sector), "--sizelimit", str(int(part["size"]) * sector),
                                  str(raw)]).stdout.strip()
            stack.callback(hostrun.run, ["losetup", "-d", device], check=False)
            probe = hostrun.run(["blkid", "-p", "-o", "export", device], check=False).stdout
            info = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
            if info.get("TYPE") == "LVM2_member":
                raise UserError(f"{image}: the root is on LVM, which snapbuild does not handle")
            if info.get("TYPE") in ("ext4", "ext3", "ext2", "xfs", "btrfs"):
                candidates.append((info.get("LABEL") == ROOT_LABEL, int(part["size"]), device, info["TYPE"]))
        if not candidates:
            raise UserError(f"{image}: no root filesystem found (no ext4/xfs/btrfs partition)",
                            hint="is this a cloud image?")
        _, _, device, fstype = max(candidates)
        mountpoint = work / "root"
        mountpoint.mkdir()
        options = "ro,noload" if fstype.startswith("ext") and not writable else ("rw" if writable else "ro")
        if writable:
            hostrun.run(["losetup", "-d", device], check=False)
            raise UserError("writable mounts are not offered by inspect")
        hostrun.run(["mount", "-o", options, device, str(mountpoint)])
        stack.callback(_unmount, mountpoint)
        yield mountpoint


def _unmount(mountpoint: Path) -> None:
    if hostrun.run(["umount", str(mountpoint)], check=False).returncode != 0:
        hostrun.run(["umount", "-l", str(mountpoint)], check=False)


def inspect_image(image: Path, *, builder_user: str = "snapbuild") -> list[Violation]:
    with mounted_root(image) as root:
        return [Violation(**v) for v in sealcheck.check_root(str(root), builder_user=builder_user, live=False)]
