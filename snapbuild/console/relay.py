"""The runner's Monitor: turns what `provision` and the sealing policy report into console protocol messages.

Standard library only (it runs inside the guest). Command output (the `│ ` lines `provision` streams) is not sent
line by line: a serial console carries about 11 KB/s and Nova's console-output API returns only the last lines,
so an apt run would push the step lines out of reach. The relay keeps the last `tail_lines` of the running step
and sends them with that step's end when it fails. Other lines (what the policy and pre-pull say) are sent.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from snapbuild.console.protocol import Emitter
from snapbuild.run.monitor import ResourceEvent, StepLevel

OUTPUT_PREFIX = "│ "          # what snapbuild.provision puts before a command's output line


class ConsoleRelay:
    """A snapbuild.run.monitor.Monitor that writes protocol lines through an Emitter. Thread-safe (pre-pulls
    report from worker threads)."""

    def __init__(self, emitter: Emitter, *, tail_lines: int = 30, clock: Callable[[], float] = time.monotonic) -> None:
        self.emitter = emitter
        self.clock = clock
        self.started = clock()
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.steps: list[str] = []
        self.failed_step: str | None = None       # the innermost step that failed first
        self.failed_tail: list[str] = []
        self._lock = threading.RLock()

    def _send(self, kind: str, data: Any) -> None:
        with self._lock:
            self.emitter.emit(kind, data)

    def _t(self) -> float:
        return round(self.clock() - self.started, 3)

    def hello(self, fields: Mapping[str, Any]) -> None:
        self._send("hello", {**dict(fields), "t": self._t()})

    def build_started(self, *, build_id: str, builder: str, recipe: str, variant: str | None) -> None:
        return None     # the runner says hello instead

    def step_started(self, name: str, *, level: StepLevel = "step") -> None:
        with self._lock:
            self.steps.append(name)
            self.tail.clear()
            self._send("step", {"name": name, "level": level, "t": self._t()})

    def step_finished(self, name: str, seconds: float, ok: bool, *, level: StepLevel = "step") -> None:
        with self._lock:
            if self.steps:
                self.steps.pop()
            data: dict[str, Any] = {"name": name, "level": level, "seconds": round(seconds, 3), "ok": ok,
                                    "t": self._t()}
            if not ok:
                data["tail"] = list(self.tail)
                if self.failed_step is None:
                    self.failed_step, self.failed_tail = name, list(self.tail)
            self._send("done", data)

    def line(self, text: str) -> None:
        with self._lock:
            self.tail.append(text.removeprefix(OUTPUT_PREFIX))
            if not text.startswith(OUTPUT_PREFIX):
                self._send("line", text)

    def warning(self, text: str) -> None:
        self._send("warn", text)

    def resource(self, event: ResourceEvent, kind: str, ref: str, *, name: str = "") -> None:
        return None     # the guest creates no cloud resources

    def progress(self, what: str, done: float, total: float | None, *, unit: str = "") -> None:
        self._send("prog", {"what": what, "done": done, "total": total, "unit": unit})

    def result(self, ok: bool, fields: Mapping[str, Any]) -> None:
        self._send("result", {"ok": ok, **dict(fields)})

    def final(self, verdict: Mapping[str, Any]) -> None:
        self._send("final", {**dict(verdict), "t": self._t()})
