"""Copy the base image (never touching it), make the copy bigger, and grow the root partition and its ext4."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from snapbuild.errors import CommandFailed, UserError
from snapbuild.host import commands
from snapbuild.host.attach import Attached, Runner, partitions, rescan
from snapbuild.host.baseprobe import pick_root

log = logging.getLogger(__name__)

GROWABLE = ("ext4",)


@dataclass(frozen=True, kw_only=True)
class Partition:
    number: int
    device: str
    fstype: str      # "" when blkid knows nothing
    label: str
    size: int        # bytes


def probe(attached: Attached, runner: Runner = commands.run, sysfs_root: Path = Path("/sys")) -> list[Partition]:
    """What the kernel and blkid see on each partition of an attached disk (no udev needed)."""
    found = []
    for number in partitions(attached, sysfs_root):
        device = attached.partition(number)
        done = runner(["blkid", "-p", "-o", "export", device], check=False, timeout=60)
        values = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        sectors = (sysfs_root / "block" / Path(attached.device).name / Path(device).name / "size").read_text()
        found.append(Partition(number=number, device=device, fstype=values.get("TYPE", ""),
                               label=values.get("LABEL", ""), size=int(sectors) * 512))
    return found


def choose_root(parts: list[Partition], image: Path) -> Partition:
    """The root as the offline probe picks it (labelled cloudimg-rootfs, else the largest Linux file system;
    LVM and other layouts refused), and one this builder can grow: ext4."""
    if not parts:
        raise UserError(f"{image}: no partition table found",
                        hint="the chroot builder needs a partitioned cloud image (GPT or MBR)")
    root = pick_root(parts, image)
    if root.fstype not in GROWABLE:
        raise UserError(f"{image}: root partition {root.number} is {root.fstype or 'unknown'}, not ext4",
                        hint="the chroot builder grows ext4 only: use the snapshot or local builder for this image")
    return root


def copy_base(base: Path, fmt: str, work: Path, runner: Runner = commands.run) -> None:
    """A full, independent qcow2 copy: the base is only read (-U: even if something else has it open)."""
    runner(["qemu-img", "convert", "-U", "-f", fmt, "-O", "qcow2", "-m", "4", "-W", str(base), str(work)],
           timeout=3600)


def resize_image(work: Path, size: int, runner: Runner = commands.run) -> None:
    runner(["qemu-img", "resize", "-f", "qcow2", str(work), str(size)], timeout=300)


def grow_root(attached: Attached, root: Partition, runner: Runner = commands.run) -> None:
    """Move the GPT backup header to the new end, grow the partition, check and grow the ext4."""
    table = runner(["blkid", "-p", "-o", "value", "-s", "PTTYPE", attached.device], check=False, timeout=60)
    if table.stdout.strip() == "gpt":
        runner(["sgdisk", "-e", attached.device], timeout=120)
        rescan(attached, runner)   # sgdisk made the kernel drop the partitions it was told about
    done = runner(["growpart", attached.device, str(root.number)], check=False, timeout=300)
    if done.returncode != 0 and "NOCHANGE" not in done.stdout:
        raise CommandFailed(list(done.argv), done.returncode, done.tail())
    rescan(attached, runner)
    fsck = runner(["e2fsck", "-f", "-y", root.device], check=False, timeout=1800)
    if fsck.returncode >= 4:   # 1 and 2 mean "errors corrected"
        raise CommandFailed(list(fsck.argv), fsck.returncode, fsck.tail())
    runner(["resize2fs", root.device], timeout=1800)
    log.info("grew %s (partition %d) to fill %s", root.device, root.number, attached.device)
