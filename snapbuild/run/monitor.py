"""Who listens to a build: the Monitor protocol, the terminal's human output and a JSON-lines event stream.

Builders, `provision` and the sealing policy talk to a Monitor only. Steps nest (a build step holds the plan's
actions); the monitor tracks the nesting itself, so callers never count indentation.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TextIO

ResourceEvent = Literal["created", "removed", "kept", "released"]
StepLevel = Literal["step", "action"]

EVENTS_VERSION = 1


class Monitor(Protocol):
    def build_started(self, *, build_id: str, builder: str, recipe: str, variant: str | None) -> None: ...

    def step_started(self, name: str, *, level: StepLevel = "step") -> None: ...

    def step_finished(self, name: str, seconds: float, ok: bool, *, level: StepLevel = "step") -> None: ...

    def line(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def resource(self, event: ResourceEvent, kind: str, ref: str, *, name: str = "") -> None: ...

    def progress(self, what: str, done: float, total: float | None, *, unit: str = "") -> None: ...

    def result(self, ok: bool, fields: Mapping[str, Any]) -> None: ...


class TerminalMonitor:
    """Nested, timed step headings on stderr (`▸ provision` … `✓ provision … 41.2 s`)."""

    QUIET_ACTION_S = 1.0       # a plan action that took less prints no closing line

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.depth = 0
        self._lock = threading.Lock()      # pre-pulls report from worker threads

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def build_started(self, *, build_id: str, builder: str, recipe: str, variant: str | None) -> None:
        return None     # the command line already says what is being built

    def step_started(self, name: str, *, level: StepLevel = "step") -> None:
        self._print(f"{'  ' * self.depth}▸ {name}")
        self.depth += 1

    def step_finished(self, name: str, seconds: float, ok: bool, *, level: StepLevel = "step") -> None:
        self.depth = max(self.depth - 1, 0)
        if level == "action" and ok and seconds < self.QUIET_ACTION_S:
            return
        self._print(f"{'  ' * self.depth}{'✓' if ok else '✗'} {name} … {seconds:.1f} s")

    def line(self, text: str) -> None:
        self._print(f"{'  ' * self.depth}{text}")

    def warning(self, text: str) -> None:
        self.line(f"warning: {text}")

    def resource(self, event: ResourceEvent, kind: str, ref: str, *, name: str = "") -> None:
        return None     # builders say what they made in their own words; the ledger has the rest

    def progress(self, what: str, done: float, total: float | None, *, unit: str = "") -> None:
        return None     # bars and plain progress lines are drawn by snapbuild.run.progress, on this stream

    def result(self, ok: bool, fields: Mapping[str, Any]) -> None:
        return None


class EventStream:
    """One JSON object per line: what CI systems and wrappers read (`--events FILE` or `-`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.build_id: str | None = None
        self._steps: list[str] = []
        self._lock = threading.Lock()

    def _emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                  "build_id": self.build_id, **fields}
        with self._lock:
            self.stream.write(json.dumps(record, sort_keys=True, default=str) + "\n")
            self.stream.flush()

    def build_started(self, *, build_id: str, builder: str, recipe: str, variant: str | None) -> None:
        self.build_id = build_id
        self._emit("build_started", version=EVENTS_VERSION, builder=builder, recipe=recipe, variant=variant)

    def step_started(self, name: str, *, level: StepLevel = "step") -> None:
        self._steps.append(name)
        self._emit("step_started", step=name, level=level, path=list(self._steps))

    def step_finished(self, name: str, seconds: float, ok: bool, *, level: StepLevel = "step") -> None:
        path = list(self._steps)
        if self._steps:
            self._steps.pop()
        self._emit("step_finished", step=name, level=level, path=path, seconds=round(seconds, 3), ok=ok)

    def line(self, text: str) -> None:
        self._emit("output", step=self._steps[-1] if self._steps else None, text=text)

    def warning(self, text: str) -> None:
        self._emit("warning", step=self._steps[-1] if self._steps else None, text=text)

    def resource(self, event: ResourceEvent, kind: str, ref: str, *, name: str = "") -> None:
        self._emit(f"resource_{event}", kind=kind, ref=ref, name=name)

    def progress(self, what: str, done: float, total: float | None, *, unit: str = "") -> None:
        self._emit("progress", what=what, done=done, total=total, unit=unit)

    def result(self, ok: bool, fields: Mapping[str, Any]) -> None:
        self._emit("result", ok=ok, **dict(fields))


class Monitors:
    """Every listener hears every event (the terminal and an event stream, typically)."""

    def __init__(self, *monitors: Monitor) -> None:
        self.monitors = monitors

    def build_started(self, *, build_id: str, builder: str, recipe: str, variant: str | None) -> None:
        for m in self.monitors:
            m.build_started(build_id=build_id, builder=builder, recipe=recipe, variant=variant)

    def step_started(self, name: str, *, level: StepLevel = "step") -> None:
        for m in self.monitors:
            m.step_started(name, level=level)

    def step_finished(self, name: str, seconds: float, ok: bool, *, level: StepLevel = "step") -> None:
        for m in self.monitors:
            m.step_finished(name, seconds, ok, level=level)

    def line(self, text: str) -> None:
        for m in self.monitors:
            m.line(text)

    def warning(self, text: str) -> None:
        for m in self.monitors:
            m.warning(text)

    def resource(self, event: ResourceEvent, kind: str, ref: str, *, name: str = "") -> None:
        for m in self.monitors:
            m.resource(event, kind, ref, name=name)

    def progress(self, what: str, done: float, total: float | None, *, unit: str = "") -> None:
        for m in self.monitors:
            m.progress(what, done, total, unit=unit)

    def result(self, ok: bool, fields: Mapping[str, Any]) -> None:
        for m in self.monitors:
            m.result(ok, fields)


def terminal_of(monitor: Monitor | None) -> TerminalMonitor | None:
    """The human side of `monitor` (itself, or one of the Monitors it fans out to): where progress is drawn."""
    if isinstance(monitor, TerminalMonitor):
        return monitor
    for member in monitor.monitors if isinstance(monitor, Monitors) else ():
        found = terminal_of(member)
        if found is not None:
            return found
    return None
