"""Attach a disk image to a block device on this host: nbd (qemu-nbd) or loop (qemu-storage-daemon's FUSE
export, or a raw copy when FUSE is missing).

Every piece is written to the ledger before it is made and its undo is registered on the scope as soon as
it exists: kinds "tempdir" (by the caller), "mount" (the FUSE export's mountpoint), "process" (the storage
daemon), "loop" (ref = the backing file; `losetup -j FILE` finds it after a crash), "nbd" (ref = device).
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from snapbuild.errors import BuildError, UserError
from snapbuild.guest.base import Completed
from snapbuild.host import commands, mounts, procs
from snapbuild.run.scope import Scope

log = logging.getLogger(__name__)

Runner = Callable[..., Completed]

BACKENDS = ("auto", "nbd", "loop")


@dataclass(frozen=True, kw_only=True)
class Attached:
    device: str              # /dev/loop3, /dev/nbd0
    backend: str             # "nbd", "loop-fuse", "loop-raw", "loop-file"
    image: Path              # the image that was attached
    data_path: Path          # the file that holds the data while attached (a raw copy for "loop-raw")
    read_only: bool

    def partition(self, number: int) -> str:
        return f"{self.device}p{number}"


def fuse_available() -> bool:
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        return False
    return Path("/dev/fuse").exists() and any(line.split()[-1] == "fuse" for line in filesystems.splitlines()
                                               if line.strip())


def resolve_backend(choice: str, *, dev_root: Path = Path("/dev")) -> str:
    """"auto" → nbd where /dev/nbd0 exists, else loop. An explicit choice that cannot work is a UserError."""
    if choice not in BACKENDS:
        raise UserError(f"unknown attach backend {choice!r}", hint="use auto, nbd or loop")
    has_nbd = (dev_root / "nbd0").exists()
    if choice == "nbd" and not has_nbd:
        raise UserError("--attach nbd: this host has no /dev/nbd0",
                        hint="`modprobe nbd max_part=16`, or use --attach loop")
    if choice == "auto":
        return "nbd" if has_nbd else "loop"
    return choice


def attach(scope: Scope, image: Path, workdir: Path, *, backend: str, fmt: str = "qcow2",
           read_only: bool = False, runner: Runner = commands.run, sysfs_root: Path = Path("/sys"),
           dev_root: Path = Path("/dev"), lock_dir: Path = Path("/run/lock")) -> Attached:
    """Attach `image` with `backend` ("nbd" or "loop"); undo registered on `scope`. `workdir` is the caller's."""
    if backend == "nbd":
        return attach_nbd(scope, image, fmt=fmt, read_only=read_only, runner=runner, sysfs_root=sysfs_root,
                          dev_root=dev_root, lock_dir=lock_dir)
    if backend != "loop":
        raise ValueError(backend)
    if fmt == "raw":
        attached = _losetup(scope, image, image, "loop-file", read_only, runner, sysfs_root)
    elif fuse_available():
        raw = _fuse_export(scope, image, workdir, read_only=read_only)
        attached = _losetup(scope, image, raw, "loop-fuse", read_only, runner, sysfs_root)
    else:
        log.warning("no FUSE on this host: attaching a raw copy of %s (slower, needs more disk)", image)
        raw = workdir / "disk.raw"
        runner(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(image), str(raw)], timeout=3600)
        attached = _losetup(scope, image, raw, "loop-raw", read_only, runner, sysfs_root)
    rescan(attached, runner, sysfs_root)
    return attached


def rescan(attached: Attached, runner: Runner = commands.run, sysfs_root: Path = Path("/sys"),
           timeout: float = 10.0) -> None:
    """Tell the kernel about the partitions: it does not scan loop devices here, and drops them whenever
    the table is re-read (sgdisk, growpart), so call this after every table change.

    `partx -u` updates sizes but adds only some missing partitions; each one still missing is added by number
    (where the kernel scans by itself, as for nbd, it may win the race: then there is nothing to add).
    """
    runner(["partx", "-u", attached.device], check=False, timeout=60)
    done = runner(["partx", "-g", "-o", "NR", attached.device], check=False, timeout=60)
    in_table = {int(n) for n in done.stdout.split() if n.isdigit()}
    deadline = time.monotonic() + timeout
    while missing := sorted(in_table - set(partitions(attached, sysfs_root))):
        if time.monotonic() > deadline:
            raise BuildError(f"{attached.device}: the kernel does not show partitions {missing}",
                             hint=f"try `partx -a {attached.device}` by hand to see why")
        for number in missing:
            runner(["partx", "-a", "--nr", str(number), attached.device], check=False, timeout=60)
        time.sleep(0.05)


def qsd_argv(image: Path, mountpoint: Path, *, read_only: bool, pidfile: Path) -> list[str]:
    """qemu-storage-daemon exposing a qcow2 as a raw file; discard=unmap on both nodes so fstrim frees space."""
    ro = ",read-only=on" if read_only else ""
    return [
        "qemu-storage-daemon",
        "--blockdev", f"driver=file,filename={_escape(image)},node-name=file,discard=unmap{ro}",
        "--blockdev", f"driver=qcow2,file=file,node-name=fmt,discard=unmap{ro}",
        "--export", (f"type=fuse,id=exp,node-name=fmt,mountpoint={_escape(mountpoint)},"
                     f"writable={'off' if read_only else 'on'}"),
        "--pidfile", str(pidfile),
    ]


def _escape(path: Path) -> str:
    # QEMU option values double a literal comma.
    return str(path).replace(",", ",,")


def _fuse_export(scope: Scope, image: Path, workdir: Path, *, read_only: bool) -> Path:
    raw = workdir / ("base.raw" if read_only else "disk.raw")
    raw.touch()
    pidfile = workdir / f"{raw.name}.pid"
    logfile = workdir / f"{raw.name}.qsd.log"
    argv = qsd_argv(image, raw, read_only=read_only, pidfile=pidfile)
    if scope.ledger:
        scope.ledger.record("mount", str(raw), fstype="fuse", image=str(image))
    # Registered first so it runs last: a daemon that died hard leaves its FUSE mount behind.
    scope.add_undo(f"FUSE export {raw}", _unmount_stale, raw, forget=("mount", str(raw)))
    with open(logfile, "wb") as out:
        log.debug("host: %s", " ".join(argv))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    started = procs.start_time(proc.pid)
    if scope.ledger:
        scope.ledger.record("process", str(proc.pid), argv0="qemu-storage-daemon", starttime=started,
                            image=str(image))
    scope.add_undo(f"stop qemu-storage-daemon (pid {proc.pid}) exporting {image}", _stop_qsd, proc,
                   forget=("process", str(proc.pid)))
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not mounts.mounted(raw):
        if proc.poll() is not None:
            text = logfile.read_text(errors="replace").strip()
            raise BuildError(f"qemu-storage-daemon failed to export {image}: {text or proc.returncode}")
        if time.monotonic() > deadline:
            raise BuildError(f"qemu-storage-daemon did not export {image} within 30 s")
        time.sleep(0.05)
    log.info("exported %s as %s via qemu-storage-daemon pid %d", image, raw, proc.pid)
    return raw


def _stop_qsd(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("qemu-storage-daemon pid %d ignored SIGTERM: SIGKILL", proc.pid)
            proc.kill()
            proc.wait(timeout=10)
    if proc.returncode not in (0, None):
        log.info("qemu-storage-daemon exited %s", proc.returncode)


def _unmount_stale(raw: Path) -> None:
    if mounts.mounted(raw):
        log.warning("stale FUSE mount on %s: unmounting", raw)
        commands.run(["umount", "-l", str(raw)], timeout=30)


def _losetup(scope: Scope, image: Path, backing: Path, backend: str, read_only: bool, runner: Runner,
             sysfs_root: Path) -> Attached:
    if scope.ledger:
        scope.ledger.record("loop", str(backing), image=str(image))
    argv = ["losetup", "--find", "--show", *(["--read-only"] if read_only else []), str(backing)]
    device = runner(argv, timeout=60).stdout.strip()
    if scope.ledger:
        scope.ledger.update("loop", str(backing), device=device)
    scope.add_undo(f"detach {device} ({backing})", detach_loop, device, backing, runner=runner,
                   sysfs_root=sysfs_root, forget=("loop", str(backing)))
    log.info("attached %s to %s", backing, device)
    return Attached(device=device, backend=backend, image=image, data_path=backing, read_only=read_only)


def detach_loop(device: str, backing: Path, *, runner: Runner = commands.run,
                sysfs_root: Path = Path("/sys"), timeout: float = 15.0) -> None:
    """Drop the partitions, detach, and check the device really let go of `backing`."""
    runner(["partx", "-d", device], check=False, timeout=60)
    runner(["losetup", "--detach", device], timeout=60)
    backing_file = sysfs_root / "block" / Path(device).name / "loop" / "backing_file"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            still = backing_file.read_text().strip() == str(backing)
        except OSError:
            still = False
        if not still:
            return
        time.sleep(0.05)
    raise BuildError(f"{device} still attached to {backing} (something holds it open)",
                     hint=f"`losetup -d {device}` once the holder is gone")


# ---- nbd -------------------------------------------------------------------------------------------------

def attach_nbd(scope: Scope, image: Path, *, fmt: str = "qcow2", read_only: bool = False,
               runner: Runner = commands.run, sysfs_root: Path = Path("/sys"), dev_root: Path = Path("/dev"),
               lock_dir: Path = Path("/run/lock"), connect_timeout: float = 30.0,
               disconnect_timeout: float = 15.0) -> Attached:
    """Connect `image` to the first free /dev/nbdN.

    Free means: we hold its lock file (concurrent snapbuilds), the kernel says size 0 and no pid. After
    connecting, /sys/block/nbdN/pid must appear; it proves our qemu-nbd owns the device.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    for n in _nbd_numbers(dev_root):
        name = f"nbd{n}"
        lock = _try_lock(lock_dir / f"snapbuild-{name}.lock")
        if lock is None:
            continue
        if not _nbd_free(sysfs_root, name):
            lock.close()
            continue
        device = str(dev_root / name)
        if scope.ledger:
            scope.ledger.record("nbd", device, image=str(image))
        # Registered before connecting: a half-made connection is undone too; the lock goes last.
        scope.add_undo(f"release lock on {device}", lock.close)
        scope.add_undo(f"disconnect {device} ({image})", disconnect_nbd, device, runner=runner,
                       sysfs_root=sysfs_root, timeout=disconnect_timeout, forget=("nbd", device))
        runner(nbd_connect_argv(device, image, fmt=fmt, read_only=read_only), timeout=connect_timeout)
        pid = _wait_nbd_pid(sysfs_root, name, time.monotonic() + connect_timeout)
        if scope.ledger:
            scope.ledger.update("nbd", device, pid=pid)
        log.info("connected %s to %s (qemu-nbd pid %d)", image, device, pid)
        return Attached(device=device, backend="nbd", image=image, data_path=image, read_only=read_only)
    raise BuildError("no free nbd device", hint="raise nbds_max, or wait for other builds")


def nbd_connect_argv(device: str, image: Path, *, fmt: str, read_only: bool) -> list[str]:
    return ["qemu-nbd", f"--connect={device}", "--discard=unmap", f"--format={fmt}",
            *(["--read-only"] if read_only else []), str(image)]


def _nbd_numbers(dev_root: Path) -> Sequence[int]:
    numbers = sorted(int(p.name[3:]) for p in dev_root.glob("nbd*") if p.name[3:].isdigit())
    return numbers


def _try_lock(path: Path) -> IO[str] | None:
    handle = open(path, "a")   # held until the undo closes it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _nbd_free(sysfs_root: Path, name: str) -> bool:
    block = sysfs_root / "block" / name
    try:
        size = (block / "size").read_text().strip()
    except OSError:
        return False
    return size == "0" and not (block / "pid").exists()


def _wait_nbd_pid(sysfs_root: Path, name: str, deadline: float) -> int:
    pidfile = sysfs_root / "block" / name / "pid"
    while True:
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise BuildError(f"/dev/{name}: qemu-nbd connected but the kernel shows no pid")
        time.sleep(0.05)


def disconnect_nbd(device: str, *, runner: Runner = commands.run, sysfs_root: Path = Path("/sys"),
                   timeout: float = 15.0) -> None:
    pidfile = sysfs_root / "block" / Path(device).name / "pid"
    runner(["qemu-nbd", "--disconnect", device], timeout=60)
    deadline = time.monotonic() + timeout
    while pidfile.exists():
        if time.monotonic() > deadline:
            raise BuildError(f"{device} still connected after qemu-nbd --disconnect")
        time.sleep(0.05)


def partitions(attached: Attached, sysfs_root: Path = Path("/sys")) -> list[int]:
    """Partition numbers the kernel shows for the device."""
    name = Path(attached.device).name
    found = []
    for child in (sysfs_root / "block" / name).glob(f"{name}p*"):
        try:
            found.append(int((child / "partition").read_text().strip()))
        except (OSError, ValueError):
            continue
    return sorted(found)
