"""One rsync attempt over the SSH chain: argv, live progress from `--info=progress2`, `--stats` byte counts,
and what a failure means (retry, wrong credentials, full disk, …)."""

from __future__ import annotations

import enum
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# rsync exit codes that mean "the link or the other side went away": worth resuming.
#   10 socket I/O, 11 file I/O (checked for ENOSPC first), 12 protocol stream, 23 partial transfer,
#   30 I/O timeout, 35 daemon connection timeout, 255 ssh failed (connection dropped/refused/timed out)
TRANSIENT_EXIT = frozenset({10, 11, 12, 23, 30, 35, 255})

_PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%")
_SENT = re.compile(r"Total bytes sent:\s*([\d,.]+)")


class Failure(enum.Enum):
    NONE = "ok"
    TRANSIENT = "link failure"
    AUTH = "permission denied"
    HOST_KEY = "host key verification failed"
    NO_SPACE = "no space left on device"
    # Final when the hop never answered during this ship (a wrong address or port, sshd not running);
    # after it did, a restarting sshd or a flapping resolver: retried like TRANSIENT.
    REFUSED = "connection refused"
    UNKNOWN_HOST = "host name not found"
    OTHER = "rsync failed"


@dataclass(frozen=True, kw_only=True)
class Attempt:
    returncode: int
    failure: Failure
    stderr: str
    moved: int                    # payload bytes rsync reported as transferred in this attempt
    sent: int | None              # `Total bytes sent` (wire bytes, --stats) when rsync got that far
    seconds: float


def rsync_argv(source: Path, target: str, *, rsh: str, io_timeout: int, bwlimit: str | None) -> list[str]:
    """Resume-friendly rsync: `--append-verify` sends only the bytes the receiver lacks and checks the whole
    file afterwards; `--inplace` (implied) keeps every byte written even when the receiver is killed."""
    argv = ["rsync", "--append-verify", "--partial", "--inplace", "--times", f"--timeout={io_timeout}",
            "--info=progress2", "--outbuf=N", "--stats", "--no-motd", "-e", rsh]  # unbuffered: live progress
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    return [*argv, "--", str(source), target]


def classify(returncode: int, stderr: str) -> Failure:
    if returncode == 0:
        return Failure.NONE
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return Failure.NO_SPACE
    if "Permission denied (publickey" in stderr or "Too many authentication failures" in stderr:
        return Failure.AUTH
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return Failure.HOST_KEY
    if ("Could not resolve hostname" in stderr or "open failed" in stderr) and any(
            text in stderr for text in ("Name or service not known", "No address associated with hostname")):
        return Failure.UNKNOWN_HOST   # by this host's resolver, or by a relay's for the next hop
    if returncode in TRANSIENT_EXIT and "Connection refused" in stderr:
        return Failure.REFUSED
    if returncode in TRANSIENT_EXIT:
        return Failure.TRANSIENT
    return Failure.OTHER


def run_attempt(argv: Sequence[str], *, on_progress: Callable[[int], None] | None = None) -> Attempt:
    """Run rsync, streaming its progress; the process never outlives this call (Ctrl-C included)."""
    started = time.monotonic()
    log.debug("host: %s", " ".join(argv))
    moved = 0
    stdout_tail = b""
    errfile = tempfile.TemporaryFile()  # a file, not a pipe: a chatty stderr can never block rsync
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile)
    try:
        assert proc.stdout is not None
        pending = b""
        # progress2 rewrites one line with \r; read raw chunks and split on both \r and \n
        while chunk := os.read(proc.stdout.fileno(), 65536):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            # rsync writes "\r<progress>": the newest progress line is the unterminated rest, complete as written
            for line in [*lines, pending]:
                m = _PROGRESS.match(line)
                if m:
                    moved = int(m.group(1).replace(b",", b""))
                    if on_progress:
                        on_progress(moved)
                elif line.strip() and line is not pending:
                    stdout_tail = (stdout_tail + line + b"\n")[-4000:]
        stdout_tail += pending
        returncode = proc.wait()
        errfile.seek(0)
        stderr = errfile.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        errfile.close()
    text = stdout_tail.decode(errors="replace")
    sent = _SENT.search(text)
    return Attempt(returncode=returncode, failure=classify(returncode, stderr), stderr=stderr.strip(), moved=moved,
                   sent=int(re.sub(r"[,.]", "", sent.group(1))) if sent else None,
                   seconds=time.monotonic() - started)
