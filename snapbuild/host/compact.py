"""Compaction: a trimmed working image → a small, independent qcow2 (zstd, zlib or uncompressed)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from snapbuild.errors import UserError
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
            timeout: float = 3600) -> Compacted:
    """Write `dst` through a temporary name beside it, so a half-written image never carries the real name."""
    partial = dst.with_name(f".{dst.name}.partial")
    start = time.monotonic()
    try:
        commands.run(convert_argv(src, partial, compression, src_format), timeout=timeout)
        os.replace(partial, dst)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    result = Compacted(path=dst, compression=compression, before_bytes=disk_usage(src),
                       after_bytes=dst.stat().st_size, seconds=time.monotonic() - start)
    log.info("compacted %s (%d MB on disk) → %s (%d MB, %s) in %.1f s", src, result.before_bytes >> 20, dst,
             result.after_bytes >> 20, compression, result.seconds)
    return result
