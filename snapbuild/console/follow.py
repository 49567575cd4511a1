"""The host side of a console build: follow the runner's lines until its verdict, as steps of this build.

One loop for both console sources (Nova's console-output through a ConsoleWindow, the local VM's serial log through
a FileTail): read what is new, replay it into the build monitor (ConsoleReport), stop at the final line. A builder
that powers off (or a VM that exits) without a final line, or a runner that says nothing for too long, is a
failure that names the last step the console showed; the caller then undoes everything as on the SSH path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from snapbuild.console.protocol import Event, ProtocolError
from snapbuild.console.report import ConsoleReport, Verdict
from snapbuild.errors import BuildError
from snapbuild.run.monitor import Monitor

log = logging.getLogger(__name__)


class ConsoleSource(Protocol):
    def read(self) -> list[Event]:
        """What the console added since the last read, as protocol events."""
        ...


@dataclass(frozen=True, kw_only=True)
class FollowLimits:
    timeout_s: float                 # the whole run: cloud-init, provisioning and sealing
    poll_s: float = 2.0              # as the cloud adapter polls: a console GET and a server GET each time
    # No protocol line at all for this long after boot: the runner never started (python3 missing, a broken
    # user-data, cloud-init disabled). Generous: cloud-init on a slow first boot takes minutes before runcmd.
    silent_s: float = 900.0


def follow_console(source: ConsoleSource, monitor: Monitor, *, is_off: Callable[[], bool], limits: FollowLimits,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Replay the console into `monitor` until the runner's final line; the verdict (capturable or not)."""
    report = ConsoleReport(monitor)
    started = clock()
    heard = False
    while True:
        try:
            events = source.read()
        except ProtocolError as exc:
            raise BuildError(f"the builder's console is inconsistent: {exc}",
                             hint="another build with the same nonce cannot exist; report this with the console "
                                  "log") from None
        heard = heard or bool(events)
        verdict = report.take(events)
        if verdict is not None:
            return verdict
        if is_off():
            verdict = report.take(source.read())       # the last lines may have landed as it stopped
            if verdict is not None:
                return verdict
            raise BuildError(f"the builder stopped before the runner's final line ({_where(report)})",
                             hint="the console log below shows how far it got")
        waited = clock() - started
        if waited > limits.timeout_s:
            raise BuildError(f"the console build did not finish within {limits.timeout_s:.0f} s ({_where(report)})",
                             hint="raise --timeout-provision, or look at the console log below")
        if not heard and waited > limits.silent_s:
            raise BuildError(f"the runner said nothing on the console within {limits.silent_s:.0f} s of boot",
                             hint="the base image needs cloud-init (runcmd, write_files) and python3 3.9 or later; "
                                  "the console log below shows what the guest did")
        sleep(limits.poll_s)


def _where(report: ConsoleReport) -> str:
    if report.open_steps:
        return "last step started: " + " › ".join(name for name, _ in report.open_steps)
    return "no step had started" if not report.result else "after provisioning"
