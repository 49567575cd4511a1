"""The host reads the runner's console lines incrementally from consoles with noise, partial lines, repeated
and truncated tails, and tells the build monitor what happened."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from snapbuild.console.protocol import Emitter, Lost, Message, ProtocolError
from snapbuild.console.reader import ConsoleReader, ConsoleWindow, FileTail
from snapbuild.console.report import ConsoleReport
from snapbuild.run.monitor import EventStream

NONCE = "0123456789ab"
NOISE = ["[   12.345678] audit: type=1400 apparmor=\"STATUS\"", "\x1b[0;32m  OK  \x1b[0m] Started foo.service.",
         "cloud-init[812]: Cloud-init v. 24.1 running 'modules:final'", ""]


def build_console() -> list[str]:
    """A whole build as the runner writes it, with noise between its lines."""
    lines: list[str] = []
    emitter = Emitter(NONCE, lines.append)
    emitter.emit("hello", {"steps": 2, "python": "3.12.3"})
    emitter.emit("step", {"name": "provision", "level": "step"})
    for n in (1, 2):
        emitter.emit("step", {"name": f"[{n}/2] action {n}", "level": "action"})
        emitter.emit("line", f"note {n}")
        emitter.emit("done", {"name": f"[{n}/2] action {n}", "level": "action", "seconds": n, "ok": True})
    emitter.emit("result", {"ok": True, "packages": {f"p{i}": "1.0" * 30 for i in range(40)}})   # several lines
    emitter.emit("done", {"name": "provision", "level": "step", "seconds": 3.5, "ok": True})
    emitter.emit("final", {"ok": True, "sealed": True, "checked": True})
    console: list[str] = []
    for index, line in enumerate(lines):
        console.append(NOISE[index % len(NOISE)])
        console.append(line + "\r")
    return console


def messages(events: list[Any]) -> list[tuple[int, str]]:
    return [(e.seq, e.kind) for e in events if isinstance(e, Message)]


def test_a_whole_console_read_at_once_gives_every_message_in_order() -> None:
    events = ConsoleReader(NONCE).feed(build_console())
    assert [k for _, k in messages(events)] == ["hello", "step", "step", "line", "done", "step", "line", "done",
                                                "result", "done", "final"]
    assert not any(isinstance(e, Lost) for e in events)


def test_overlapping_tails_give_each_message_once() -> None:
    console = build_console()
    reader = ConsoleReader(NONCE)
    seen: list[tuple[int, str]] = []
    for end in range(1, len(console) + 1, 3):         # the last 10 lines, polled as the console grows
        seen += messages(reader.feed(console[max(0, end - 10):end]))
    seen += messages(reader.feed(console[-10:]))
    assert seen == messages(ConsoleReader(NONCE).feed(console))


def test_a_partial_last_line_waits_for_its_end() -> None:
    console = "\n".join(build_console()) + "\n"
    state = {"cut": 0}

    def fetch(length: int | None) -> str:     # the console as it stands at an arbitrary byte: last line unfinished
        text = console[:state["cut"]]
        lines = text.split("\n")
        return "\n".join(lines if length is None else lines[-length - 1:])

    window = ConsoleWindow(ConsoleReader(NONCE), fetch, length=12)
    found: list[tuple[int, str]] = []
    for cut in range(0, len(console) + 97, 97):
        state["cut"] = cut
        events = window.read()
        assert not any(isinstance(e, Lost) for e in events)
        found += messages(events)
    assert found == messages(ConsoleReader(NONCE).feed(console.split("\n")))


def test_a_tail_that_scrolled_past_lines_reports_them_lost_and_goes_on() -> None:
    console = build_console()
    reader = ConsoleReader(NONCE)
    first = reader.feed(console[:6])                       # hello, provision, [1/2]
    events = reader.feed(console[-8:])                     # much later: the middle is gone
    lost = [e for e in events if isinstance(e, Lost)]
    assert len(lost) == 1 and lost[0].first == 3
    assert [k for _, k in messages(events)][-2:] == ["done", "final"]
    assert messages(first) == [(0, "hello"), (1, "step"), (2, "step")]


def test_a_message_whose_start_scrolled_away_is_lost_whole() -> None:
    lines: list[str] = []
    emitter = Emitter(NONCE, lines.append)
    emitter.emit("result", {"big": "x" * 1500})             # 4+ lines
    emitter.emit("final", {"ok": False})
    reader = ConsoleReader(NONCE)
    events = reader.feed(lines[2:])                          # the result's first lines are gone
    assert [type(e).__name__ for e in events] == ["Lost", "Message"]
    assert isinstance(events[0], Lost) and (events[0].first, events[0].last) == (0, len(lines) - 2)


def test_two_different_lines_with_one_number_are_refused() -> None:
    ours: list[str] = []
    Emitter(NONCE, ours.append).emit("line", "a")
    again: list[str] = []
    Emitter(NONCE, again.append).emit("line", "b")
    reader = ConsoleReader(NONCE)
    reader.feed(ours)
    with pytest.raises(ProtocolError, match="numbered 0"):
        reader.feed(again)


def test_the_window_asks_for_more_lines_when_its_tail_does_not_reach_back() -> None:
    console = build_console()
    asked: list[int | None] = []

    def fetch(length: int | None) -> str:
        asked.append(length)
        shown = console if length is None else console[-length:]
        return "\n".join(shown) + "\n"

    window = ConsoleWindow(ConsoleReader(NONCE), fetch, length=4, max_length=16)
    events = window.read()
    assert asked == [4, 8, 16, None]
    assert not any(isinstance(e, Lost) for e in events) and messages(events)[-1][1] == "final"
    asked.clear()
    assert window.read() == [] and asked == [4]          # nothing new: one small read


def test_the_file_tail_reads_what_was_added_and_survives_a_truncated_file(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    data = ("\r\n".join(build_console()) + "\r\n").encode()
    tail = FileTail(ConsoleReader(NONCE), log)
    assert tail.read() == []                                 # not there yet
    found: list[tuple[int, str]] = []
    for cut in range(0, len(data), 333):
        with log.open("ab") as handle:
            handle.write(data[cut:cut + 333])
        found += messages(tail.read())
    log.write_bytes(data[-400:])                             # rotated: shorter than what was read
    found += messages(tail.read())
    assert found == messages(ConsoleReader(NONCE).feed(build_console()))


def test_the_report_tells_the_monitor_and_keeps_the_verdict() -> None:
    stream = io.StringIO()
    report = ConsoleReport(EventStream(stream))
    verdict = report.take(ConsoleReader(NONCE).feed(build_console()))
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e.get("step")) for e in events if e["event"].startswith("step")] == [
        ("step_started", "provision"), ("step_started", "[1/2] action 1"), ("step_finished", "[1/2] action 1"),
        ("step_started", "[2/2] action 2"), ("step_finished", "[2/2] action 2"), ("step_finished", "provision")]
    assert [e["seconds"] for e in events if e["event"] == "step_finished"] == [1, 2, 3.5]
    assert verdict is not None and verdict.capturable and len(verdict.result["packages"]) == 40


def test_steps_whose_ends_were_lost_are_closed_by_the_final_line() -> None:
    stream = io.StringIO()
    report = ConsoleReport(EventStream(stream))
    reader = ConsoleReader(NONCE)
    console = build_console()
    report.take(reader.feed(console[:8]))                   # provision and [1/2] started
    verdict = report.take(reader.feed(console[-2:]))        # only the final line after that
    assert verdict is not None and verdict.ok and report.lost > 0
    finished = [json.loads(line) for line in stream.getvalue().splitlines()
                if json.loads(line)["event"] == "step_finished"]
    assert [e["step"] for e in finished] == ["[1/2] action 1", "provision"]
