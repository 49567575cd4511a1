"""Host processes: start time (to tell a pid from a reused one), stopping with a deadline, and finding
the processes that live inside a chroot."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def start_time(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """Field 22 of /proc/PID/stat: with the pid it names one process for good (pids get reused)."""
    try:
        stat = (proc_root / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int | None = None) -> bool:
    now = start_time(pid)
    if now is None:
        return False
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    if state == "Z":
        return False
    return started is None or now == started


def wait_gone(pid: int, deadline: float, started: int | None = None) -> bool:
    delay = 0.02
    while time.monotonic() < deadline:
        if not alive(pid, started):
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    return not alive(pid, started)


def stop(pid: int, *, grace: float = 10.0, group: bool = False, started: int | None = None) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; `group` signals the whole process group."""
    if not alive(pid, started):
        return

    def send(sig: signal.Signals) -> None:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    if wait_gone(pid, time.monotonic() + grace, started):
        return
    log.warning("pid %d ignored SIGTERM for %.0f s: SIGKILL", pid, grace)
    send(signal.SIGKILL)
    if not wait_gone(pid, time.monotonic() + 10, started):
        raise OSError(f"pid {pid} survived SIGKILL")


@dataclass(frozen=True, kw_only=True)
class Holder:
    pid: int
    comm: str
    why: str          # "root", "cwd", "fd", "map"


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def holders(top: Path, *, proc_root: Path = Path("/proc")) -> list[Holder]:
    """Processes whose root, cwd, open files or mappings are under `top`."""
    top_s = str(top)
    found: list[Holder] = []
    me = os.getpid()
    for entry in proc_root.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        why = _why(entry, top_s)
        if why:
            found.append(Holder(pid=pid, comm=comm, why=why))
    return found


def _why(entry: Path, top: str) -> str | None:
    for name in ("root", "cwd"):
        try:
            if _inside(os.readlink(entry / name), top):
                return name
        except OSError:
            pass
    try:
        for fd in (entry / "fd").iterdir():
            try:
                if _inside(os.readlink(fd), top):
                    return "fd"
            except OSError:
                continue
    except OSError:
        pass
    return None


def kill_chroot_processes(root: Path, *, grace: float = 5.0) -> list[Holder]:
    """Stop every process whose root is inside `root`: our build started them (package scripts, daemons)."""
    victims = [h for h in holders(root) if h.why == "root"]
    for victim in victims:
        log.warning("stopping leftover process in the chroot: pid %d (%s)", victim.pid, victim.comm)
        try:
            os.kill(victim.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for victim in victims:
        if not wait_gone(victim.pid, deadline):
            try:
                os.kill(victim.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for victim in victims:
        wait_gone(victim.pid, time.monotonic() + 5)
    return victims
