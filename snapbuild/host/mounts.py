"""The mount stack of a chroot: root, /dev, /dev/pts, /proc, /sys, /run; a working resolv.conf and a
policy-rc.d that keeps package scripts from starting daemons. Everything is put back on the way out."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from snapbuild.errors import BuildError, CommandFailed
from snapbuild.host import commands, procs
from snapbuild.run.scope import Scope

log = logging.getLogger(__name__)

ASIDE = ".snapbuild-orig"
POLICY_RC_D = b"#!/bin/sh\n# snapbuild: no daemons start while the image is built in a chroot\nexit 101\n"
STUB_RESOLVERS = ("127.0.0.53", "127.0.0.54")

# (what, target inside the root, mount argv before the target)
_API_MOUNTS: tuple[tuple[str, str, list[str]], ...] = (
    ("dev", "dev", ["mount", "--bind", "/dev"]),
    ("devpts", "dev/pts", ["mount", "--bind", "/dev/pts"]),
    # Without it, files in the chroot's /dev/shm would land in the host's devtmpfs.
    ("tmpfs", "dev/shm", ["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs"]),
    ("proc", "proc", ["mount", "-t", "proc", "proc"]),
    ("sysfs", "sys", ["mount", "-t", "sysfs", "sysfs"]),
    ("tmpfs", "run", ["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs"]),
)


def mount_points() -> list[str]:
    """Every mount point on this host (as this process sees them), in mount order."""
    lines = Path("/proc/self/mounts").read_text().splitlines()
    return [_unescape(fields[1]) for fields in map(str.split, lines) if len(fields) > 1]


def mounted(path: Path) -> bool:
    return str(path) in mount_points()


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_chroot(scope: Scope, device: str, root: Path, *, resolv_conf: Path = Path("/etc/resolv.conf"),
                 resolved_conf: Path = Path("/run/systemd/resolve/resolv.conf"),
                 build_files: list[Callable[[], None]] | None = None) -> Path:
    """Mount `device` on `root` with the API file systems under it; undo registered on `scope`.

    The build's own resolv.conf and policy-rc.d replace the image's while it is provisioned; `build_files`, when
    given, receives the callables that put the image's back early (before the seal check), each at most once."""
    root.mkdir(parents=True, exist_ok=True)
    _mount(scope, ["mount", device], root, "root file system")
    # Runs just before the root is unmounted, after everything above it is gone.
    scope.add_undo(f"fstrim {root}", fstrim, root)
    for what, inside, argv in _API_MOUNTS:
        target = root / inside
        target.mkdir(parents=True, exist_ok=True)
        _mount(scope, argv, target, what, kill_root=root)
        if argv[1] == "--bind":
            # A bind of a shared mount joins its peer group: keep our mounts from propagating to the host.
            commands.run(["mount", "--make-rslave", str(target)], timeout=30)
    # Runs before the API file systems go: whatever the build mounted below the root (package scripts, containerd).
    scope.add_undo(f"unmount what the build mounted under {root}", unmount_strays, root,
                   {str(root / inside) for _, inside, _ in _API_MOUNTS})
    restorers = [set_aside(scope, root / "etc/resolv.conf", resolv_text(resolv_conf, resolved_conf).encode(), 0o644),
                 set_aside(scope, root / "usr/sbin/policy-rc.d", POLICY_RC_D, 0o755)]
    if build_files is not None:
        build_files.extend(restorers)
    # Runs first on the way out: nothing the build started may keep the mounts busy.
    scope.add_undo(f"stop processes left in {root}", procs.kill_chroot_processes, root)
    return root


def mounts_under(top: Path, *, include_top: bool = False) -> list[str]:
    """Mount points strictly below `top` (and `top` itself with `include_top`), in mount order."""
    prefix = str(top).rstrip("/") + "/"
    return [point for point in mount_points()
            if point.startswith(prefix) or (include_top and point == str(top))]


def remove_tree(path: Path) -> None:
    """Never recurse into something still mounted there: a bind of /dev would take the host's /dev with it."""
    real = Path(os.path.realpath(path))   # the mount table lists resolved paths
    left = mounts_under(real, include_top=True)
    if left:
        raise BuildError(f"not removing {path}: still mounted: {', '.join(left)}")
    commands.run(["rm", "-rf", "--one-file-system", "--", str(path)], timeout=600)


def unmount_strays(root: Path, ours: set[str]) -> None:
    strays = [m for m in mounts_under(root) if m not in ours]
    for target in reversed(strays):   # the newest (deepest) first
        log.warning("unmounting %s, mounted during the build", target)
        unmount(Path(target), kill_root=root)


def _mount(scope: Scope, argv: list[str], target: Path, what: str, kill_root: Path | None = None) -> None:
    if scope.ledger:
        scope.ledger.record("mount", str(target), what=what)
    commands.run([*argv, str(target)], timeout=60)
    scope.add_undo(f"unmount {target}", unmount, target, kill_root=kill_root or target,
                   forget=("mount", str(target)))


def fstrim(root: Path) -> None:
    """Hand freed blocks back to the image file, so the compacted image carries no deleted data."""
    done = commands.run(["fstrim", "-v", str(root)], check=False, timeout=600)
    if done.returncode == 0:
        log.info("%s", done.stdout.strip())
    else:
        log.warning("fstrim %s failed: %s", root, done.tail())


def unmount(target: Path, *, kill_root: Path | None = None, patience: float = 10.0,
            on_busy: Callable[[list[procs.Holder]], None] | None = None) -> None:
    """umount, retrying with backoff while busy; processes inside `kill_root` (ours) are stopped between
    tries and `on_busy` is told who holds it. Last resort: `umount -l`, logged."""
    deadline = time.monotonic() + patience
    delay = 0.1
    while True:
        done = commands.run(["umount", str(target)], check=False, timeout=60)
        if done.returncode == 0 or not mounted(target):
            return
        if "busy" not in done.stderr:
            raise CommandFailed(list(done.argv), done.returncode, done.tail())
        holders = procs.holders(target)
        log.info("%s is busy (%s): retrying", target, _describe(holders) or "no process found")
        if time.monotonic() > deadline:
            break
        if kill_root is not None:
            procs.kill_chroot_processes(kill_root)
        if on_busy is not None:
            on_busy(holders)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    log.warning("%s still busy after %.0f s (%s): lazy unmount", target, patience,
                _describe(procs.holders(target)) or "no process found")
    commands.run(["umount", "-l", str(target)], timeout=60)


def _describe(holders: list[procs.Holder]) -> str:
    return ", ".join(f"pid {h.pid} {h.comm} ({h.why})" for h in holders)


def set_aside(scope: Scope, path: Path, data: bytes, mode: int) -> Callable[[], None]:
    """Put our own file at `path` (inside a mounted image); the original, a symlink or a file or nothing,
    goes to `path.snapbuild-orig` and comes back exactly as it was: by the returned callable or by the undo,
    whichever comes first (the other is then a no-op)."""
    aside = path.with_name(path.name + ASIDE)
    had_original = os.path.lexists(path)
    if had_original:
        os.rename(path, aside)   # rename keeps a (dangling) symlink as it is
    restored: list[bool] = []

    def restore() -> None:
        if not restored:
            _restore(path, aside, had_original)
            restored.append(True)

    scope.add_undo(f"restore {path.name} in the image", restore)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return restore


def _restore(path: Path, aside: Path, had_original: bool) -> None:
    if os.path.lexists(path):
        path.unlink()
    if had_original:
        os.rename(aside, path)


def resolv_text(resolv_conf: Path, resolved_conf: Path) -> str:
    """The host's working name servers; behind systemd-resolved's stub, its upstream servers."""
    servers, search = _parse_resolv(resolv_conf)
    if (not servers or all(s in STUB_RESOLVERS for s in servers)) and resolved_conf.exists():
        servers, search = _parse_resolv(resolved_conf)
    lines = ["# written by snapbuild for the build; the image's own file is put back afterwards"]
    lines += [f"nameserver {s}" for s in servers]
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


def _parse_resolv(path: Path) -> tuple[list[str], list[str]]:
    servers: list[str] = []
    search: list[str] = []
    try:
        text = path.read_text()
    except OSError:
        return servers, search
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
        elif len(fields) >= 2 and fields[0] in ("search", "domain"):
            search = fields[1:]
    return servers, search
