"""follow_console: the host side's loop over a console source, against sources that say what a builder can."""

from __future__ import annotations

import io
from typing import Any

import pytest

from snapbuild.console.follow import FollowLimits, follow_console
from snapbuild.console.protocol import Emitter, Event
from snapbuild.console.reader import ConsoleReader, complete_lines
from snapbuild.errors import BuildError
from snapbuild.run.monitor import TerminalMonitor

NONCE = "00aa11bb22cc"


class Script:
    """A console that shows one more batch of lines per read (after its last batch, nothing more)."""

    def __init__(self, batches: list[list[str]]) -> None:
        self.batches = batches
        self.reader = ConsoleReader(NONCE)
        self.reads = 0

    def read(self) -> list[Event]:
        lines = self.batches[self.reads] if self.reads < len(self.batches) else []
        self.reads += 1
        return self.reader.feed(lines)


def lines_of(*messages: tuple[str, Any]) -> list[str]:
    out: list[str] = []
    emitter = Emitter(NONCE, out.append)
    for kind, data in messages:
        emitter.emit(kind, data)
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def follow(source: Script, *, off_after: int | None = None, limits: FollowLimits | None = None) -> tuple[Any, str]:
    out, clock = io.StringIO(), Clock()
    verdict = follow_console(source, TerminalMonitor(out), is_off=lambda: off_after is not None and
                             source.reads >= off_after, limits=limits or FollowLimits(timeout_s=600, poll_s=5),
                             clock=clock, sleep=clock.sleep)
    return verdict, out.getvalue()


def test_steps_arrive_over_several_reads_and_the_final_line_ends_the_loop() -> None:
    lines = lines_of(("hello", {"steps": 2}), ("step", {"name": "provision"}),
                     ("done", {"name": "provision", "seconds": 12.5, "ok": True}),
                     ("result", {"ok": True, "packages": {"less": "1"}, "pulled_images": {}}),
                     ("final", {"ok": True, "sealed": True, "checked": True}))
    source = Script([["[  3.1] kernel noise"], lines[:2], [], lines[2:4], lines[4:]])
    verdict, shown = follow(source)
    assert verdict.capturable and verdict.result["packages"] == {"less": "1"}
    assert source.reads == 5
    assert "provision" in shown and "12.5" in shown


def test_a_failing_verdict_is_returned_and_raises_with_the_step_and_its_output() -> None:
    lines = lines_of(("step", {"name": "provision"}), ("step", {"name": "run false", "level": "action"}),
                     ("done", {"name": "run false", "seconds": 0.1, "ok": False, "tail": ["boom"]}),
                     ("final", {"ok": False, "step": "run false", "error": "exit 1", "tail": ["boom"]}))
    verdict, _ = follow(Script([lines]))
    assert not verdict.capturable
    with pytest.raises(BuildError, match=r"step 'run false': exit 1[\s\S]*boom"):
        verdict.raise_unless_capturable()


def test_a_builder_that_powers_off_without_a_final_line_fails_naming_the_last_step() -> None:
    lines = lines_of(("step", {"name": "provision"}), ("step", {"name": "install packages", "level": "action"}))
    with pytest.raises(BuildError, match=r"stopped before the runner's final line.*provision › install packages"):
        follow(Script([lines]), off_after=2)


def test_the_final_line_read_as_the_builder_stops_still_counts() -> None:
    lines = lines_of(("step", {"name": "seal"}), ("final", {"ok": True, "sealed": True, "checked": True}))
    verdict, _ = follow(Script([lines[:1], lines[1:]]), off_after=1)
    assert verdict.capturable


def test_a_runner_that_never_speaks_fails_after_the_silent_limit_not_the_whole_timeout() -> None:
    source = Script([["cloud-init: modules-final"]])
    with pytest.raises(BuildError, match="said nothing on the console within 60 s") as caught:
        follow(source, limits=FollowLimits(timeout_s=3600, poll_s=5, silent_s=60))
    assert "python3" in (caught.value.hint or "")
    assert source.reads == 14          # 0, 5, … 65 s: one read per poll, no busy loop


def test_a_runner_that_stalls_fails_at_the_timeout_with_where_it_was() -> None:
    lines = lines_of(("step", {"name": "provision"}))
    with pytest.raises(BuildError, match=r"did not finish within 100 s.*last step started: provision"):
        follow(Script([lines]), limits=FollowLimits(timeout_s=100, poll_s=10, silent_s=50))


def test_complete_lines_keeps_the_unfinished_rest() -> None:
    assert complete_lines("a\nb\npart") == (["a", "b"], "part")
