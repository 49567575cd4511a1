"""ChrootGuest: the Guest protocol over a mounted image root on this host."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from snapbuild.errors import BuildError
from snapbuild.guest.atomic import replace_file
from snapbuild.guest.base import Completed, OutputCallback
from snapbuild.guest.children import finish
from snapbuild.host import procs
from snapbuild.ledger import Ledger

log = logging.getLogger(__name__)

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
MAX_SYMLINKS = 40


@dataclass(frozen=True, kw_only=True)
class Daemon:
    argv: tuple[str, ...]
    socket: str              # path inside the root that appears when the daemon is ready
    ready_timeout: float = 60.0
    stop_timeout: float = 20.0


# Daemons a chroot build can ask for by name (Guest.service).
DAEMONS: dict[str, Daemon] = {
    "containerd": Daemon(argv=("/usr/bin/containerd",), socket="/run/containerd/containerd.sock"),
    "docker": Daemon(argv=("/usr/bin/dockerd", "--iptables=false", "--bridge=none"), socket="/run/docker.sock"),
}


class EscapesRoot(BuildError):
    pass


def resolve_inside(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """The host path for `path` inside `root`, resolving symlinks as the chroot would: an absolute link
    restarts at `root` and `..` stops at it, so nothing in the image can point us at the host's files."""
    if not path.startswith("/"):
        raise ValueError(f"guest paths are absolute: {path!r}")
    parts = list(PurePosixPath(path).parts[1:])
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        if (parts or follow_last) and candidate.is_symlink():
            links += 1
            if links > MAX_SYMLINKS:
                raise EscapesRoot(f"too many levels of symbolic links in {path!r}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = list(PurePosixPath(target).parts[1 if target.startswith("/") else 0:]) + parts
            continue
        done.append(part)
    return root.joinpath(*done)


class ChrootGuest:
    """Runs commands with `chroot ROOT env -i …`; files are read and written on ROOT directly."""

    kind = "chroot"

    def __init__(self, root: Path, *, ledger: Ledger | None = None, name: str | None = None,
                 daemons: Mapping[str, Daemon] | None = None) -> None:
        self.root = root
        self.host_root: Path | None = root
        self.name = name or f"chroot:{root}"
        self.ledger = ledger
        self.daemons = dict(DAEMONS if daemons is None else daemons)

    # ---- commands ------------------------------------------------------------------------------------

    def command(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        merged = {**BASE_ENV, **(env or {})}
        return ["chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in merged.items()),
                *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None, stdin: bytes | None = None,
            on_output: OutputCallback | None = None) -> Completed:
        args = [str(a) for a in argv]
        log.debug("chroot: %s", " ".join(args))
        proc = subprocess.Popen(self.command(args, env), stdin=subprocess.PIPE if stdin is not None else
                                subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        return finish(proc, args, stdin=stdin, timeout=timeout, on_output=on_output, check=check, where=self.name)

    # ---- files ---------------------------------------------------------------------------------------

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root") -> None:
        target = resolve_inside(self.root, path)   # follows the image's symlinks, never out of it
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        uid, gid = self._ids(owner)
        replace_file(target, data, mode=mode, uid=uid, gid=gid)

    def read_file(self, path: str) -> bytes:
        return resolve_inside(self.root, path).read_bytes()

    def exists(self, path: str) -> bool:
        return resolve_inside(self.root, path).exists()   # like `test -e`: a dangling link does not exist

    def _ids(self, owner: str) -> tuple[int, int]:
        user, _, group = owner.partition(":")
        uid = _lookup(self.root / "etc/passwd", user)
        gid = _lookup(self.root / "etc/group", group) if group else _primary_gid(self.root / "etc/passwd", user)
        return uid, gid

    # ---- daemons -------------------------------------------------------------------------------------

    def service(self, name: str) -> contextlib.AbstractContextManager[None]:
        try:
            daemon = self.daemons[name]
        except KeyError:
            raise BuildError(f"the chroot builder cannot run service {name!r}",
                             hint=f"known: {', '.join(sorted(self.daemons))}") from None
        return self.daemon(name, daemon)

    @contextlib.contextmanager
    def daemon(self, name: str, daemon: Daemon) -> Iterator[None]:
        """Start `daemon` inside the chroot in its own process group, wait for its socket, stop it after."""
        logname = f"/run/snapbuild-{name}.log"
        logfile = resolve_inside(self.root, logname)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(self.command(list(daemon.argv)), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        started = procs.start_time(proc.pid)
        if self.ledger:
            self.ledger.record("process", str(proc.pid), argv0=daemon.argv[0], starttime=started,
                               chroot=str(self.root))
        try:
            self._wait_ready(name, daemon, proc, logfile)
            log.info("%s running in the chroot (pid %d)", name, proc.pid)
            yield
        finally:
            self._stop(name, daemon, proc)
            if self.ledger:
                self.ledger.forget("process", str(proc.pid))

    def _wait_ready(self, name: str, daemon: Daemon, proc: subprocess.Popen[bytes], logfile: Path) -> None:
        deadline = time.monotonic() + daemon.ready_timeout
        while True:
            sock = resolve_inside(self.root, daemon.socket)
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(sock.stat().st_mode):
                    return
            if proc.poll() is not None:
                raise BuildError(f"{name} exited {proc.returncode} in the chroot before it was ready:\n"
                                 + _tail(logfile))
            if time.monotonic() > deadline:
                raise BuildError(f"{name} did not create {daemon.socket} within {daemon.ready_timeout:.0f} s:\n"
                                 + _tail(logfile))
            time.sleep(0.05)

    def _stop(self, name: str, daemon: Daemon, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=daemon.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM for %.0f s: SIGKILL", name, daemon.stop_timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # Its children (shims, helpers) share the group: they go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.info("%s stopped (exit %s)", name, proc.returncode)


def _lookup(path: Path, name: str) -> int:
    if name.isdigit():
        return int(name)
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name:
            return int(fields[2])
    raise BuildError(f"no {name!r} in the image's {path.name}")


def _primary_gid(passwd: Path, user: str) -> int:
    if user.isdigit():
        return int(user)
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == user:
            return int(fields[3])
    raise BuildError(f"no {user!r} in the image's passwd")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
