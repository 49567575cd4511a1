"""QEMU processes on this host, found by what their command line mentions (a build's temp dir, a VM name)."""

from __future__ import annotations

from pathlib import Path


def qemu_pids_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and text in cmdline:
            pids.append(int(proc.name))
    return pids
