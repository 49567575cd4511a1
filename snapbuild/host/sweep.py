"""Finish what a crashed local build (chroot, local VM, base image) left on this host, from its ledger alone
(`snapbuild cleanup --host`).

Entries are undone newest first, which is the reverse of how they were made: processes (QEMU, daemons in
the chroot), the mounts from the innermost out, the loop or nbd device, the storage daemon and its FUSE
export, partial files, the work dir. Nothing the ledger does not name is touched.
"""

from __future__ import annotations

import logging
from pathlib import Path

from snapbuild.host import attach as attaching
from snapbuild.host import commands, mounts, procs
from snapbuild.ledger import Entry, Ledger

log = logging.getLogger(__name__)

HOST_KINDS = ("process", "mount", "loop", "nbd", "file", "tempdir")


def sweep(ledger: Ledger, *, dry_run: bool = False) -> list[str]:
    """Undo every host resource `ledger` still lists; returns what was (or would be) done."""
    done = []
    for entry in reversed(ledger.entries()):
        if entry.kind not in HOST_KINDS:
            continue
        what = f"{entry.kind} {entry.ref}"
        done.append(what)
        if dry_run:
            continue
        try:
            undo_entry(entry)
        except Exception as exc:  # noqa: BLE001 - go on with the rest, report this one
            log.error("could not remove %s: %s", what, exc)
            done[-1] += f" (failed: {exc})"
            continue
        ledger.forget(entry.kind, entry.ref)
    return done


def undo_entry(entry: Entry) -> None:
    ref = Path(entry.ref)
    if entry.kind == "process" and not entry.ref.isdigit():
        # Named processes (QEMU VMs): found by the marker in their command line, so a reused pid is never hit.
        marker = str(entry.info.get("cmdline_marker", entry.ref)).encode().replace(b" ", b"\0")
        for pid in _processes_with(marker):
            procs.stop(pid, group=False)
    elif entry.kind == "process":
        # The start time tells our process from a later one that got the same pid.
        procs.stop(int(entry.ref), group=False, started=entry.info.get("starttime"))
    elif entry.kind == "file":
        ref.unlink(missing_ok=True)
    elif entry.kind == "mount" and entry.info.get("fstype") == "fuse":
        # A daemon killed between its start and its ledger entry is found by its mountpoint.
        for pid in _storage_daemons_exporting(ref):
            procs.stop(pid)
        if mounts.mounted(ref):
            commands.run(["umount", "-l", str(ref)], timeout=60)
    elif entry.kind == "mount":
        if entry.info.get("what") == "root file system":
            procs.kill_chroot_processes(ref)
        if mounts.mounted(ref):
            mounts.unmount(ref, kill_root=ref if entry.info.get("what") == "root file system" else None)
    elif entry.kind == "loop":
        device = entry.info.get("device")
        # Only the device the ledger names, if it still serves that file; the search is for a crash
        # between losetup and the ledger update (another build may use the same backing file).
        for candidate in [device] if device else _loops_backed_by(ref):
            if candidate in _loops_backed_by(ref):
                attaching.detach_loop(candidate, ref)
    elif entry.kind == "nbd":
        pidfile = Path("/sys/block") / ref.name / "pid"
        try:
            serving = pidfile.read_text().strip()
        except OSError:
            return   # already free
        if str(entry.info.get("pid", serving)) == serving:
            attaching.disconnect_nbd(entry.ref)
        else:
            log.info("%s now serves another qemu-nbd (pid %s): left alone", ref, serving)
    elif entry.kind == "tempdir":
        if ref.exists():
            mounts.remove_tree(ref)


def _processes_with(marker: bytes) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and marker in _cmdline(int(e.name))]


def _storage_daemons_exporting(mountpoint: Path) -> list[int]:
    needle = f"mountpoint={mountpoint},".encode()
    return [pid for pid in _processes_with(needle) if b"qemu-storage-daemon" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""   # gone meanwhile


def _loops_backed_by(backing: Path) -> list[str]:
    done = commands.run(["losetup", "--noheadings", "--output", "NAME", "--associated", str(backing)],
                       check=False, timeout=60)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


