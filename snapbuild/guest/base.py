"""The Guest protocol: the only thing provisioning and sealing see."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Called once per line of output as it arrives (stream name "stdout"/"stderr", line without newline).
OutputCallback = Callable[[str, str], None]


@dataclass(frozen=True, kw_only=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 20) -> str:
        text = (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).rstrip()
        return "\n".join(text.splitlines()[-lines:])


class Guest(Protocol):
    """A machine-like place to run commands and move files, as root.

    `kind` is "vm" (a booted system with systemd: SSH to a local VM or a cloud server) or
    "chroot" (a mounted root on the build host: no init, daemons only while asked for). `host_root` is where
    its file system is on this host, if it is (a chroot): what reads the tree can then run here, with this
    host's python3, not the image's.
    """

    kind: str
    name: str
    host_root: Path | None

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None, stdin: bytes | None = None,
            on_output: OutputCallback | None = None) -> Completed: ...

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root") -> None: ...

    def read_file(self, path: str) -> bytes: ...

    def exists(self, path: str) -> bool: ...

    def service(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Have daemon `name` running for the duration of the block (started and stopped if need be)."""
        ...


@contextlib.contextmanager
def systemd_service(guest: Guest, name: str) -> Iterator[None]:
    """`Guest.service` for guests with a running systemd: start the unit if it is not active."""
    active = guest.run(["systemctl", "is-active", "--quiet", name], check=False).returncode == 0
    if not active:
        guest.run(["systemctl", "start", name], timeout=120)
    yield
