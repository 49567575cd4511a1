"""Run commands on the build host: argv lists, deadlines, output kept for error messages."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from snapbuild.errors import CommandFailed, UserError
from snapbuild.guest.base import Completed

log = logging.getLogger(__name__)


def run(argv: Sequence[str], *, check: bool = True, timeout: float | None = None,
        env: Mapping[str, str] | None = None, stdin: bytes | None = None,
        cwd: str | None = None) -> Completed:
    """Run `argv` on the host, capture its output, raise CommandFailed on failure when `check`."""
    args = [str(a) for a in argv]
    log.debug("host: %s", " ".join(args))
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout,
                              env=dict(env) if env is not None else None, cwd=cwd, check=False)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        raise CommandFailed(args, None, out[-2000:], timed_out=True) from None
    except FileNotFoundError:
        raise UserError(f"command not found on this host: {args[0]}",
                        hint="install the host packages listed in the README") from None
    done = Completed(argv=tuple(args), returncode=proc.returncode,
                     stdout=proc.stdout.decode(errors="replace"), stderr=proc.stderr.decode(errors="replace"))
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, done.tail())
    return done


def require_tools(*names: str, hint: str = "install the host packages listed in the README") -> None:
    """Fail with one clear line, before anything is created, when host tools are missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise UserError(f"missing host tools: {', '.join(missing)}", hint=hint)


def die_with_parent() -> list[str]:
    """A prefix that makes a helper process (QEMU, qemu-nbd) get SIGKILL when snapbuild dies, even by kill -9
    (setpriv execs: same pid). The parent is the spawning thread: spawn from a thread that outlives the helper.

    setpriv rather than a preexec_fn: paramiko threads may be running when a helper process is started.
    """
    return ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
