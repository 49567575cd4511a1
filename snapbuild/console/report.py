"""What the console says, told to the build monitor: the runner's steps as nested, timed steps of this build, a
failing step's last output, and the final verdict the build acts on (capture only when sealed and checked)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snapbuild.console.protocol import MARK, Event, Lost, Message
from snapbuild.errors import BuildError
from snapbuild.provision import ProvisionResult
from snapbuild.run.monitor import Monitor, StepLevel

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The runner's final line."""

    ok: bool
    sealed: bool = False
    checked: bool = False
    step: str | None = None           # the step that failed
    error: str = ""
    tail: tuple[str, ...] = ()        # its last output lines
    result: Mapping[str, Any] = field(default_factory=dict)   # packages, pulled images (the runner's `result`)

    @property
    def capturable(self) -> bool:
        return self.ok and self.sealed and self.checked

    def raise_unless_capturable(self) -> None:
        if self.capturable:
            return
        output = ("\nlast output:\n  " + "\n  ".join(self.tail)) if self.tail else ""
        raise BuildError(f"console build failed in step {self.step or '?'!r}: {self.error or 'no reason given'}"
                         + output, hint="the builder's console log has the whole story; nothing was captured")

    def provisioned(self) -> ProvisionResult:
        """What the runner's `result` says was installed and pulled, as the SSH path's provisioner reports it."""
        found = self.result
        return ProvisionResult(pulled_images=dict(found.get("pulled_images") or {}),
                               packages=dict(found.get("packages") or {}), seconds=float(found.get("seconds") or 0.0))


def guest_lines(console: str, limit: int) -> list[str]:
    """The last `limit` lines of a console log that are not this protocol's: the runner's lines were already shown
    as steps; the rest (kernel, systemd, cloud-init) is what a failure report adds."""
    return [line for line in console.rstrip().splitlines() if MARK not in line][-limit:]


class ConsoleReport:
    """Replays console events into a Monitor; `verdict` is set once the final line has been read."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.open_steps: list[tuple[str, StepLevel]] = []
        self.result: dict[str, Any] = {}
        self.verdict: Verdict | None = None
        self.lost = 0

    def take(self, events: Iterable[Event]) -> Verdict | None:
        for event in events:
            if isinstance(event, Lost):
                self.lost += event.last - event.first + 1
                self.monitor.warning(f"console lines {event.first}..{event.last} were lost (the console log "
                                     "scrolled past them or damaged them); the build goes on")
            else:
                self._message(event)
        return self.verdict

    def _message(self, message: Message) -> None:
        data: Any = message.data
        kind = message.kind
        if kind == "hello":
            self.monitor.line(f"console runner started: {data.get('steps')} steps, python {data.get('python')}")
        elif kind == "step":
            level: StepLevel = "action" if data.get("level") == "action" else "step"
            self.open_steps.append((str(data["name"]), level))
            self.monitor.step_started(str(data["name"]), level=level)
        elif kind == "done":
            for line in data.get("tail") or ():
                self.monitor.line(f"│ {line}")
            self._close(str(data["name"]), float(data.get("seconds", 0.0)), bool(data.get("ok")))
        elif kind == "line":
            self.monitor.line(str(data))
        elif kind == "warn":
            self.monitor.warning(str(data))
        elif kind == "prog":
            self.monitor.progress(str(data.get("what")), float(data.get("done") or 0), data.get("total"),
                                  unit=str(data.get("unit") or ""))
        elif kind == "result":
            self.result = {k: v for k, v in data.items() if k != "ok"}
        elif kind == "final":
            while self.open_steps:       # their ends were lost: close them as the verdict says
                name, level = self.open_steps.pop()
                self.monitor.step_finished(name, 0.0, bool(data.get("ok")), level=level)
            self.verdict = Verdict(ok=bool(data.get("ok")), sealed=bool(data.get("sealed")),
                                   checked=bool(data.get("checked")), step=data.get("step"),
                                   error=str(data.get("error") or ""), tail=tuple(data.get("tail") or ()),
                                   result=self.result)

    def _close(self, name: str, seconds: float, ok: bool) -> None:
        if not any(open_name == name for open_name, _ in self.open_steps):
            log.debug("console: end of step %r whose start was lost", name)
            return
        while self.open_steps:           # steps inside it whose ends were lost close with it
            open_name, level = self.open_steps.pop()
            self.monitor.step_finished(open_name, seconds if open_name == name else 0.0, ok, level=level)
            if open_name == name:
                return
