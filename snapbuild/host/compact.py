"""Compaction: a trimmed working image → a small, independent qcow2 (zstd, zlib or uncompressed)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapbuild.errors import CommandFailed, UserError
from snapbuild.host import commands

log = logging.getLogger(__name__)

COMPRESSIONS = ("zstd", "zlib", "none")


@dataclass(frozen=True, kw_only=True)
class Compacted:
    path: Path
    compression: str
    before_bytes: int      # space the source took on disk
    after_bytes: int       # size of the result
    seconds: float


def disk_usage(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def convert_argv(src: Path, dst: Path, compression: str, src_format: str = "qcow2") -> list[str]:
    if compression not in COMPRESSIONS:
        raise UserError(f"unknown compression {compression!r}", hint="use zstd, zlib or none")
    argv = ["qemu-img", "convert", "-f", src_format, "-O", "qcow2", "-m", "4", "-W"]
    if compression != "none":
        argv.append("-c")   # zlib unless told otherwise
    if compression == "zstd":
        argv += ["-o", "compression_type=zstd"]   # readers need QEMU >= 5.1
    return [*argv, str(src), str(dst)]


def compact(src: Path, dst: Path, compression: str = "zstd", *, src_format: str = "qcow2",
            timeout: float = 3600, on_percent: Callable[[float], None] | None = None) -> Compacted:
    """Write `dst` through a temporary name beside it, so a half-written image never carries the real name."""
    partial = dst.with_name(f".{dst.name}.partial")
    start = time.monotonic()
    try:
        run_convert(convert_argv(src, partial, compression, src_format), timeout=timeout, on_percent=on_percent)
        os.replace(partial, dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    result = Compacted(path=dst, compression=compression, before_bytes=disk_usage(src),
                       after_bytes=dst.stat().st_size, seconds=time.monotonic() - start)
    log.info("compacted %s (%d MB on disk) → %s (%d MB, %s) in %.1f s", src, result.before_bytes >> 20, dst,
             result.after_bytes >> 20, compression, result.seconds)
    return result


# qemu-img convert -p rewrites one line on stdout, whether or not it is a terminal: "    (12.50/100%)\r"
_PERCENT = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


def percents(text: str) -> list[float]:
    """Every progress figure in a piece of `qemu-img convert -p` output, in order."""
    return [float(m.group(1)) for m in _PERCENT.finditer(text)]


def run_convert(argv: Sequence[str], *, timeout: float,
                on_percent: Callable[[float], None] | None = None) -> None:
    """Run a `qemu-img convert` argv; with `on_percent`, with -p, feeding it qemu-img's own percentages (they
    count the source's clusters, so they move evenly even when the output is compressed to a fraction)."""
    args = [str(a) for a in argv]
    if on_percent is None:
        commands.run(args, timeout=timeout)
        return
    args.insert(args.index("convert") + 1, "-p")
    log.debug("host: %s", " ".join(args))
    errors = tempfile.TemporaryFile()     # a file, not a pipe: qemu-img never blocks on a full stderr
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
    except FileNotFoundError:
        errors.close()
        raise UserError(f"command not found on this host: {args[0]}",
                        hint="install the host packages listed in the README") from None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        pending = ""
        while chunk := os.read(proc.stdout.fileno(), 4096):
            pending += chunk.decode(errors="replace")
            *whole, pending = re.split(r"[\r\n]", pending)
            for figure in percents(" ".join(whole)):
                on_percent(figure)
        returncode = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:     # Ctrl-C or an error here: the process never outlives the call
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
        errors.close()
    if expired.is_set() or returncode != 0:
        raise CommandFailed(args, None if expired.is_set() else returncode, stderr[-2000:],
                            timed_out=expired.is_set())
