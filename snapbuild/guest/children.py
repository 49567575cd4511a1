"""Run a child process and read its stdout and stderr line by line as they come, with a deadline; kill its
whole process group when it must go. Shared by the chroot guest (on the build host) and the local guest (inside
a console-transport builder), so standard library only."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import time

from snapbuild.errors import CommandFailed
from snapbuild.guest.base import Completed, OutputCallback

log = logging.getLogger(__name__)

DRAIN_AFTER_EXIT = 2.0   # a background child may keep our pipes open: stop reading this long after exit


def collect(proc: subprocess.Popen[bytes], stdin: bytes | None, timeout: float | None,
             on_output: OutputCallback | None) -> tuple[str, str, bool]:
    """Read stdout and stderr as they come, line by line, until both close or the deadline passes."""
    assert proc.stdout is not None and proc.stderr is not None
    if stdin is not None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    deadline = time.monotonic() + timeout if timeout is not None else None
    selector = selectors.DefaultSelector()
    buffers: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    exited_at: float | None = None

    def emit(stream: str, final: bool = False) -> None:
        buf = buffers[stream]
        while True:
            cut = buf.find(b"\n")
            if cut < 0:
                break
            line = buf[:cut].decode(errors="replace")
            del buf[:cut + 1]
            chunks[stream].append(line + "\n")
            if on_output:
                on_output(stream, line)
        if final and buf:
            line = buf.decode(errors="replace")
            buf.clear()
            chunks[stream].append(line)
            if on_output:
                on_output(stream, line)

    timed_out = False
    try:
        while selector.get_map():
            now = time.monotonic()
            if deadline is not None and now > deadline:
                timed_out = True
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT:
                log.warning("a background process kept the output of %s open: not waiting for it", proc.args)
                break
            for key, _ in selector.select(timeout=0.2):
                data = os.read(key.fd, 65536)
                stream = str(key.data)
                if not data:
                    selector.unregister(key.fileobj)
                    emit(stream, final=True)
                    continue
                buffers[stream] += data
                emit(stream)
    finally:
        selector.close()
        proc.stdout.close()
        proc.stderr.close()
    if not timed_out:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
    for stream in buffers:
        emit(stream, final=True)
    return "".join(chunks["stdout"]), "".join(chunks["stderr"]), timed_out


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def finish(proc: subprocess.Popen[bytes], args: list[str], *, stdin: bytes | None, timeout: float | None,
           on_output: OutputCallback | None, check: bool, where: str) -> Completed:
    """A started command to its end, as every Guest reports one: its output collected as it comes, its whole
    process group killed when it is interrupted or runs out of time, a timeout or (with `check`) a non-zero exit
    raised as CommandFailed naming `where`."""
    try:
        out, err, timed_out = collect(proc, stdin, timeout, on_output)
    finally:
        if proc.poll() is None:   # interrupted, or timed out: the whole group goes
            kill_group(proc)
    done = Completed(argv=tuple(args), returncode=proc.returncode if proc.returncode is not None else -9,
                     stdout=out, stderr=err)
    if timed_out:
        raise CommandFailed(args, None, done.tail(), where=where, timed_out=True)
    if check and done.returncode != 0:
        raise CommandFailed(args, done.returncode, done.tail(), where=where)
    return done
