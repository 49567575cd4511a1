"""Disk images on the build host: GPT layout, loop devices with partitions, mounts that always come undone.

Generic on purpose: the base-image builder and the chroot builder both attach images here. This host's kernel
does not scan partition tables and has no udev, so partitions come from `partx -a` and nodes are `/dev/loopNpM`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapbuild.errors import BuildError, CommandFailed
from snapbuild.host import mounts
from snapbuild.host.commands import run

log = logging.getLogger(__name__)

# Registers an undo: (description, func, *args, forget=(kind, ref)). BuildContext.add_undo has this shape.
AddUndo = Callable[..., object]
# Writes a resource down before it exists: (kind, ref, **info). Ledger.record has this shape.
Record = Callable[..., None]

SECTOR = 512
MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Partition:
    number: int
    size_mib: int | None  # None: the rest of the disk
    type_code: str        # sgdisk type code: ef02 BIOS boot, ef00 EFI system, 8300 Linux
    name: str


def create_gpt(image: Path, partitions: Sequence[Partition]) -> None:
    """Write a fresh GPT; partitions are created in the given order, each at the next free aligned sector."""
    argv = ["sgdisk", "--zap-all", "--clear"]
    for part in partitions:
        end = f"+{part.size_mib}M" if part.size_mib is not None else "0"
        argv += [f"--new={part.number}:0:{end}", f"--typecode={part.number}:{part.type_code}",
                 f"--change-name={part.number}:{part.name}"]
    run([*argv, str(image)])


def partition_table(image: Path | str) -> str:
    return run(["sgdisk", "--print", str(image)]).stdout


def wait_for(path: str, deadline_s: float = 10.0) -> None:
    """No udev here: nodes come from devtmpfs, usually at once; allow a short deadline."""
    end = time.monotonic() + deadline_s
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise BuildError(f"device node {path} did not appear")
        time.sleep(0.05)


def attach_loop(image: Path, add_undo: AddUndo, record: Record, *, partitions: bool = True) -> str:
    """`losetup -f --show` the image; undo (detach) is registered before returning. Adds partition nodes."""
    # The device name is only known once attached; the ledger gets the backing file first.
    record("loop", str(image), backing_file=str(image))
    device = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
    add_undo(f"detach {device}", detach_loop, device, image, forget=("loop", str(image)))
    log.info("attached %s to %s", image, device)
    if partitions:
        scan_partitions(device)
    return device


def scan_partitions(device: str) -> None:
    """(Re)create /dev/loopNpM nodes. Anything that re-reads the table drops them, so call it again then."""
    # -u updates existing entries; -a adds the rest. -a alone fails when some already exist.
    run(["partx", "--update", device], check=False)
    run(["partx", "--add", device], check=False)
    listing = run(["partx", "--show", "--noheadings", "--output", "NR", device]).stdout.split()
    for number in listing:
        wait_for(partition_node(device, int(number)))


def partition_node(device: str, number: int) -> str:
    return f"{device}p{number}"


def detach_loop(device: str, backing: Path | None = None) -> None:
    # Drop partition nodes first: a loop device whose partitions linger cannot be reused cleanly.
    run(["partx", "--delete", device], check=False)
    for attempt in range(20):
        done = run(["losetup", "--detach", device], check=False)
        if done.returncode == 0:
            break
        log.debug("losetup -d %s failed (attempt %d): %s", device, attempt + 1, done.tail(2))
        time.sleep(0.25)
    else:
        raise BuildError(f"could not detach {device}")
    # `losetup -d` is lazy while something holds the device: confirm the backing file is gone.
    end = time.monotonic() + 10
    while is_attached(device, backing):
        if time.monotonic() > end:
            raise BuildError(f"{device} still attached after detach")
        time.sleep(0.1)


def is_attached(device: str, backing: Path | None = None) -> bool:
    """Is `device` attached (to `backing`, when given)? `losetup --list DEV` prints a row even for a free device.

    Compare the backing file: once detached, another build on this host may take the same device at once.
    """
    try:
        current = Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip()
    except OSError:
        return False
    return backing is None or current == os.path.realpath(backing)


def mount(source: str, target: Path, add_undo: AddUndo, record: Record, *, options: Sequence[str] = (),
          fstype: str | None = None) -> None:
    """Mount and register the unmount at once. `options` are raw mount(8) arguments (e.g. ['--bind'])."""
    target.mkdir(parents=True, exist_ok=True)
    record("mount", str(target), source=source)
    argv = ["mount", *options]
    if fstype:
        argv += ["-t", fstype]
    run([*argv, source, str(target)])
    add_undo(f"unmount {target}", unmount, target, forget=("mount", str(target)))


def unmount(target: Path, *, attempts: int = 20) -> None:
    """Unmount with retries: "target is busy" is usually a short-lived process (e.g. a dpkg trigger)."""
    for attempt in range(attempts):
        if not is_mounted(target):
            return
        done = run(["umount", str(target)], check=False)
        if done.returncode == 0:
            return
        log.debug("umount %s failed (attempt %d): %s", target, attempt + 1, done.tail(2))
        time.sleep(0.25 * min(attempt + 1, 4))
    raise CommandFailed(["umount", str(target)], 32, f"{target} is still busy; see `fuser -vm {target}`")


def is_mounted(target: Path) -> bool:
    return os.path.realpath(target) in mounts.mount_points()


def bind_system_dirs(root: Path, add_undo: AddUndo, record: Record) -> None:
    """/dev, /dev/pts, /proc, /sys inside a chroot (undone in reverse order by the caller's stack)."""
    mount("/dev", root / "dev", add_undo, record, options=["--bind"])
    mount("/dev/pts", root / "dev/pts", add_undo, record, options=["--bind"])
    mount("proc", root / "proc", add_undo, record, fstype="proc")
    mount("sysfs", root / "sys", add_undo, record, fstype="sysfs")


def fs_uuid(device: str) -> str:
    return run(["blkid", "--match-tag", "UUID", "--output", "value", device]).stdout.strip()


def fs_label(device: str) -> str:
    return run(["blkid", "--match-tag", "LABEL", "--output", "value", device]).stdout.strip()
