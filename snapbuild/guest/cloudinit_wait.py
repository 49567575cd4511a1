"""Wait for cloud-init to finish in a booted guest before provisioning (no dpkg lock races)."""

from __future__ import annotations

import logging

from snapbuild.errors import BuildError, CommandFailed
from snapbuild.guest.base import Guest

log = logging.getLogger(__name__)

LOG_FILES = ("/var/log/cloud-init.log", "/var/log/cloud-init-output.log")
LOG_TAIL_LINES = 30


def wait_for_cloud_init(guest: Guest, *, timeout: float) -> str:
    """Run `cloud-init status --wait --long`; return its report.

    Exit 0 is done; 2 is "degraded"/recoverable (cloud-init ≥ 23.4): logged as a warning; anything else
    fails the build with cloud-init's own WARNING/ERROR/Traceback lines from its logs.
    """
    argv = ["cloud-init", "status", "--wait", "--long"]
    try:
        done = guest.run(argv, check=False, timeout=timeout)
    except CommandFailed as exc:
        if not exc.timed_out:
            raise
        raise BuildError(f"{guest.name}: cloud-init did not finish within {timeout:.0f} s\n{_log_excerpt(guest)}",
                         hint="look at the console log; a module may be waiting on the network") from exc
    report = done.stdout.strip()
    if done.returncode == 0:
        log.info("%s: cloud-init done", guest.name)
        return report
    if done.returncode == 2:
        log.warning("%s: cloud-init finished with recoverable errors:\n%s", guest.name, report)
        return report
    if done.returncode == 127:
        raise BuildError(f"{guest.name}: cloud-init is not installed in the guest",
                         hint="build from a cloud image that has cloud-init")
    raise BuildError(f"{guest.name}: cloud-init failed (exit {done.returncode})\n{done.tail()}\n{_log_excerpt(guest)}",
                     hint="fix the user-data or the base image; the lines above come from cloud-init's logs")


def _log_excerpt(guest: Guest) -> str:
    """The last WARNING/ERROR/Traceback lines of cloud-init's logs, or a note why there are none."""
    found = guest.run(["grep", "-hE", "WARNING|ERROR|Traceback", "--", *LOG_FILES], check=False, timeout=60)
    lines = found.stdout.splitlines()[-LOG_TAIL_LINES:]
    if not lines:
        return "(no WARNING/ERROR lines in " + ", ".join(LOG_FILES) + ")"
    return "cloud-init logs (last WARNING/ERROR lines):\n" + "\n".join(lines)
