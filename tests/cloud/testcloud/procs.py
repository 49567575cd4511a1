"""Daemons of the test cloud: started detached in their own session, tracked by pid files, stopped by pid.

A pid file holds "<pid> <start time>" so a recycled pid is never mistaken for ours. Each daemon leads its
own process group (gunicorn workers, erlang helpers stay inside it), so stopping kills exactly that group.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may contain spaces): state is field 3, starttime field 22.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def running_pid(pidfile: Path) -> int | None:
    """The pid recorded in pidfile if that very process is still alive, else None."""
    try:
        pid_s, started = pidfile.read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_s)
    return pid if _start_time(pid) == started else None


def record(pidfile: Path, pid: int) -> None:
    """Track a process started elsewhere (a daemonized QEMU) like our own daemons."""
    started = _start_time(pid)
    if started is None:
        raise RuntimeError(f"process {pid} for {pidfile.name} is already gone")
    pidfile.write_text(f"{pid} {started}\n")


def spawn(name: str, argv: Sequence[str], *, run_dir: Path, log_dir: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> int:
    """Start argv as daemon `name` unless it already runs; returns its pid."""
    pidfile = run_dir / f"{name}.pid"
    pid = running_pid(pidfile)
    if pid is not None:
        log.info("%s already running (pid %d)", name, pid)
        return pid
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_dir / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=full_env, cwd=cwd, start_new_session=True)
    started = _start_time(proc.pid)
    pidfile.write_text(f"{proc.pid} {started}\n")
    log.info("started %s (pid %d)", name, proc.pid)
    return proc.pid


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(name: str, *, run_dir: Path, timeout: float = 20.0) -> None:
    """SIGTERM the daemon's process group, SIGKILL after timeout, remove the pid file."""
    pidfile = run_dir / f"{name}.pid"
    pid = running_pid(pidfile)
    if pid is not None:
        # Our daemons lead their group (pgid == pid); a daemonized QEMU double-forks, so its group is
        # led by a process that already exited: signal the group the process is in.
        try:
            pid = os.getpgid(pid)
        except ProcessLookupError:
            pass
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while _group_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _group_alive(pid):
            log.warning("%s (pid %d) ignored SIGTERM for %.0f s: killing", name, pid, timeout)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while _group_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
        log.info("stopped %s (pid %d)", name, pid)
    pidfile.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    # When the daemon is our own child (started in this run), collect it so it does not linger as a zombie.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], bool], *, timeout: float, pid_name: str | None = None,
             run_dir: Path | None = None, log_dir: Path | None = None) -> None:
    """Poll check() until true; fail early (with the log's tail) if the daemon it depends on died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception as exc:
            log.debug("%s not ready: %s", what, exc)
        if pid_name and run_dir and running_pid(run_dir / f"{pid_name}.pid") is None:
            raise RuntimeError(f"{pid_name} died while waiting for {what}{_tail(log_dir, pid_name)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s{_tail(log_dir, pid_name)}")
        time.sleep(0.5)


def _tail(log_dir: Path | None, name: str | None) -> str:
    if not log_dir or not name:
        return ""
    try:
        lines = (log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-25:]
    except OSError:
        return ""
    return "\n--- tail of " + str(log_dir / f"{name}.log") + " ---\n" + "\n".join(lines)
