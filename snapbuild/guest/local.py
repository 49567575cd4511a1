"""LocalGuest: the Guest protocol on the machine this process runs on, as root.

What the console transport's runner uses inside the builder: the same provisioner and sealing policy that drive
an SSH guest drive this one, with no network in between. Standard library only (it runs on the guest's python3).
Commands get the environment `sudo` gives an SSH guest's commands (HOME=/root, a fixed PATH), not the runner's.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from snapbuild.errors import CommandFailed
from snapbuild.guest.atomic import replace_file
from snapbuild.guest.base import Completed, OutputCallback, systemd_service
from snapbuild.guest.children import finish

log = logging.getLogger(__name__)

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash", "LANG": "C.UTF-8"}


class LocalGuest:
    """A booted system with systemd (kind "vm") whose file system is right here (`host_root` "/"), so the seal
    check runs in this process instead of piping its own source to python3."""

    kind = "vm"

    def __init__(self, *, name: str = "builder", root: Path = Path("/")) -> None:
        self.name = name
        self.host_root: Path | None = root
        self.root = root

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None, stdin: bytes | None = None,
            on_output: OutputCallback | None = None) -> Completed:
        args = [str(a) for a in argv]
        if not args:
            raise ValueError("empty argv")
        log.debug("%s: %s", self.name, " ".join(args))
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/root"
                                    if os.access("/root", os.X_OK) else "/", env={**BASE_ENV, **(env or {})},
                                    start_new_session=True)
        except FileNotFoundError:
            # As a shell reports it over SSH: exit 127, "command not found".
            done = Completed(argv=tuple(args), returncode=127, stdout="",
                             stderr=f"{args[0]}: command not found\n")
            if check:
                raise CommandFailed(args, 127, done.tail(), where=self.name) from None
            return done
        return finish(proc, args, stdin=stdin, timeout=timeout, on_output=on_output, check=check, where=self.name)

    def write_file(self, path: str, data: bytes, *, mode: int = 0o644, owner: str = "root:root") -> None:
        """Write to a temp file next to `path`, set owner and mode, then rename it into place (as SSHGuest)."""
        if not path.startswith("/"):
            raise ValueError(f"guest paths must be absolute: {path!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        uid, gid = _ids(owner)
        replace_file(target, data, mode=mode, uid=uid, gid=gid)

    def read_file(self, path: str) -> bytes:
        """The file's bytes; FileNotFoundError when it does not exist."""
        return Path(path).read_bytes()

    def exists(self, path: str) -> bool:
        """True when `path` exists, a dangling symlink included (like SSHGuest's `test -e || test -L`)."""
        return os.path.lexists(path)

    def service(self, name: str) -> contextlib.AbstractContextManager[None]:
        return systemd_service(self, name)


def _ids(owner: str) -> tuple[int, int]:
    """`user[:group]` (names or numbers) as chown(1) reads it; without a group the group stays (-1)."""
    user, _, group = owner.partition(":")
    uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    if not group:
        return uid, -1
    return uid, int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
