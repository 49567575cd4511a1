"""The Run layer every builder shares: resources enter through `own`/`track` (ledger before, undo at once,
struck after), `release` hands the result over, a kept build says how to get in and out, and the JSON-lines
event stream tells a wrapper everything the terminal shows."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from snapbuild.ledger import Ledger
from snapbuild.run.context import BuildContext, running_build
from snapbuild.run.monitor import EventStream, Monitors, TerminalMonitor
from snapbuild.run.tail import BuilderAccess, keep_access


def _ctx(tmp_path: Path, *, keep: bool = False) -> tuple[BuildContext, io.StringIO, io.StringIO]:
    ledger = Ledger.create(build_id="20261204000000-0000beef", builder="test", recipe="base", directory=tmp_path)
    terminal, events = io.StringIO(), io.StringIO()
    ctx = BuildContext(build_id=ledger.build_id, ledger=ledger, keep_on_failure=keep,
                       monitor=Monitors(TerminalMonitor(terminal), EventStream(events)),
                       cleanup_command="snapbuild cleanup --host --build-id 20261204000000-0000beef")
    return ctx, terminal, events


def _events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _kinds(ledger: Ledger) -> list[tuple[str, str]]:
    return [(e.kind, e.ref) for e in Ledger.load(ledger.path).entries()] if ledger.path.exists() else []


def test_track_records_before_the_create_and_undoes_after(tmp_path: Path) -> None:
    ctx, _, _ = _ctx(tmp_path)
    seen: list[list[tuple[str, str]]] = []
    deleted: list[str] = []

    def create() -> str:
        seen.append(_kinds(ctx.ledger))      # what the ledger said while the create ran
        return "srv-1"

    with pytest.raises(RuntimeError), running_build(ctx):
        made, _ = ctx.track("server", "builder", create, lambda: [], deleted.append)
        assert made == "srv-1" and _kinds(ctx.ledger) == [("server", "srv-1")]
        raise RuntimeError("boom")
    assert seen == [[("server", "pending:builder")]]
    assert deleted == ["srv-1"] and not ctx.ledger.path.exists()


def test_a_create_that_fails_mid_air_is_swept_by_its_label(tmp_path: Path) -> None:
    ctx, _, _ = _ctx(tmp_path)
    deleted: list[str] = []

    def create() -> str:
        raise ConnectionResetError("the answer got lost")

    with pytest.raises(ConnectionResetError), running_build(ctx):
        ctx.track("server", "builder", create, lambda: ["srv-half"], deleted.append)
    assert deleted == ["srv-half"] and not ctx.ledger.path.exists()


def test_an_interrupted_create_is_swept_again_until_it_settles(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Nova can still make the snapshot after the client gave up: it appears on the third look, and is deleted."""
    ctx, _, _ = _ctx(tmp_path)
    clock = [0.0]
    monkeypatch.setattr("snapbuild.run.context.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("snapbuild.run.context.time.sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    looks: list[float] = []
    deleted: list[str] = []

    def sweep() -> list[str]:
        looks.append(clock[0])
        return ["img-late"] if len(looks) == 3 and not deleted else []

    def create() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), running_build(ctx):
        ctx.track("image", "snap", create, sweep, deleted.append, settle_s=5.0)
    assert deleted == ["img-late"]
    assert looks == [0.0, 2.0, 4.0, 5.0]        # every SETTLE_POLL_S, and once more at the deadline
    assert not ctx.ledger.path.exists()


def test_a_refused_create_is_looked_for_once_without_settling(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's own refusal made nothing: one look, no waiting out the settle window."""
    ctx, _, _ = _ctx(tmp_path)
    slept: list[float] = []
    monkeypatch.setattr("snapbuild.run.context.time.sleep", slept.append)
    looks: list[str] = []

    def create() -> str:
        raise ValueError("HTTP 400: Bad Request")

    with pytest.raises(ValueError), running_build(ctx):
        ctx.track("image", "snap", create, lambda: looks.append("look") or [], looks.append, settle_s=15.0,
                  unsettled=lambda exc: not isinstance(exc, ValueError))
    assert looks == ["look"] and slept == []
    assert not ctx.ledger.path.exists()


def test_released_results_stay_and_undo_now_runs_once(tmp_path: Path) -> None:
    ctx, _, events = _ctx(tmp_path)
    undone: list[str] = []
    with running_build(ctx):
        image = ctx.own("image", "img-1", "delete image img-1", undone.append, "img-1")
        server = ctx.own("server", "srv-1", "delete server srv-1", undone.append, "srv-1")
        server.now()                                   # mid-build, as the volume capture does
        assert _kinds(ctx.ledger) == [("image", "img-1")]
        image.release()
        assert _kinds(ctx.ledger) == []
    assert undone == ["srv-1"]                         # not twice, and the released image never
    names = [(e["event"], e.get("kind"), e.get("ref")) for e in _events(events) if e["event"].startswith("resource")]
    assert names == [("resource_created", "image", "img-1"), ("resource_created", "server", "srv-1"),
                     ("resource_removed", "server", "srv-1"), ("resource_released", "image", "img-1")]


def test_a_kept_build_lists_what_it_kept_how_to_get_in_and_how_to_remove_it(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))
    ctx, terminal, events = _ctx(tmp_path, keep=True)
    access = BuilderAccess.generate(ctx.build_id, user="snapbuild")

    class Machine:
        name = "vm"

        def ssh_command(self, key_file: Path, access: BuilderAccess) -> str:
            return f"ssh -i {key_file} -p 2222 {access.user}@127.0.0.1"

    ctx.on_keep.append(lambda: keep_access(ctx, Machine(), access))  # type: ignore[arg-type]
    undone: list[str] = []
    with pytest.raises(RuntimeError), running_build(ctx):
        ctx.own("process", "snapbuild-vm", "stop QEMU", undone.append, "qemu")
        with ctx.step("provision"):
            raise RuntimeError("apt-get failed")
    assert undone == []
    key = tmp_path / "state" / "builds" / f"{ctx.build_id}.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert key.read_text() == access.client_key.private_openssh
    text = terminal.getvalue()
    assert "step 'provision' failed: apt-get failed" in text
    assert f"log in with: ssh -i {key} -p 2222 snapbuild@127.0.0.1" in text
    assert text.rstrip().endswith(f"remove them with: snapbuild cleanup --host --build-id {ctx.build_id}")
    last = _events(events)[-1]
    assert last["event"] == "result" and last["ok"] is False and last["step"] == "provision" and last["kept"]


def test_the_event_stream_carries_steps_with_timings_and_the_result(tmp_path: Path) -> None:
    ctx, terminal, events = _ctx(tmp_path)
    with running_build(ctx, builder="local", recipe="base", variant="slim"):
        with ctx.step("provision"):
            ctx.monitor.step_started("[1/1] write /etc/motd", level="action")
            ctx.monitor.line("│ done")
            ctx.monitor.step_finished("[1/1] write /etc/motd", 0.01, True, level="action")
            ctx.monitor.progress("pre-pull", 1, 2, unit="images")
        ctx.outcome.update(output="/out.qcow2")
    stream = _events(events)
    assert {e["build_id"] for e in stream} == {ctx.build_id}
    assert [e["event"] for e in stream] == ["build_started", "step_started", "step_started", "output",
                                            "step_finished", "progress", "step_finished", "step_started",
                                            "step_finished", "result"]
    assert stream[0] | {"time": None} == {"event": "build_started", "time": None, "build_id": ctx.build_id,
                                          "version": 1, "builder": "local", "recipe": "base", "variant": "slim"}
    assert stream[3]["step"] == "[1/1] write /etc/motd" and stream[4]["path"] == ["provision",
                                                                                 "[1/1] write /etc/motd"]
    assert stream[6]["step"] == "provision" and stream[6]["ok"] and stream[6]["seconds"] >= 0
    assert stream[7]["step"] == "clean up"
    assert stream[-1] == stream[-1] | {"ok": True, "output": "/out.qcow2", "leftovers": []}
    # The terminal shows the same build for people; a quick action prints no closing line.
    assert "▸ provision" in terminal.getvalue() and "✓ [1/1]" not in terminal.getvalue()


# ---- --on-error ask ------------------------------------------------------------------------------------------------

def _asking(tmp_path: Path, answers: list[str]) -> tuple[BuildContext, io.StringIO, list[tuple[str, bool]]]:
    ctx, terminal, _ = _ctx(tmp_path)
    asked: list[tuple[str, bool]] = []

    def ask(step: str, can_retry: bool) -> Any:
        asked.append((step, can_retry))
        return answers.pop(0)

    ctx.ask = ask
    return ctx, terminal, asked


def test_ask_retry_runs_the_failed_step_again_and_the_build_goes_on(tmp_path: Path) -> None:
    ctx, terminal, asked = _asking(tmp_path, ["retry"])
    tries: list[int] = []
    undone: list[str] = []

    def provision() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("apt-get: temporary failure resolving the mirror")
        return "provisioned"

    with running_build(ctx):
        ctx.own("server", "srv-1", "delete server srv-1", undone.append, "srv-1")
        assert ctx.attempt("provision", provision) == "provisioned"
    assert asked == [("provision", True)] and len(tries) == 2
    assert [(t.name, t.ok) for t in ctx.timings] == [("provision", False), ("provision", True), ("clean up", True)]
    assert "step 'provision' failed: apt-get: temporary failure resolving the mirror" in terminal.getvalue()
    assert undone == ["srv-1"]          # removed once, at the end, as on any successful build


def test_ask_keep_keeps_everything_and_cleanup_removes_it(tmp_path: Path) -> None:
    for answer, kept in (("keep", True), ("cleanup", False)):
        folder = tmp_path / answer
        folder.mkdir()
        ctx, terminal, asked = _asking(folder, [answer])
        undone: list[str] = []
        with pytest.raises(RuntimeError), running_build(ctx):
            ctx.own("server", "srv-1", "delete server srv-1", undone.append, "srv-1")
            with ctx.step("capture"):                     # a plain step: no retry offered
                raise RuntimeError("image went killed")
        assert asked == [("capture", False)]
        assert undone == ([] if kept else ["srv-1"])
        assert ("remove them with:" in terminal.getvalue()) is kept
        assert terminal.getvalue().count("image went killed") == 1   # reported once, when asked


def test_ask_without_a_terminal_cleans_up_and_says_so(tmp_path: Path) -> None:
    from snapbuild.cli.asking import terminal_asker
    from snapbuild.run.context import new_context

    assert terminal_asker(io.StringIO("r\n"), io.StringIO()) is None        # not a TTY: nobody to ask
    terminal = io.StringIO()
    ctx = new_context(builder="test", recipe="base", monitor=TerminalMonitor(terminal), on_error="ask", ask=None,
                      cleanup_command="snapbuild cleanup --host --build-id {build_id}")
    assert ctx.ask is None and "no terminal to ask on" in terminal.getvalue()
    ctx.ledger.path.unlink()


_PTY_BUILD = """
import sys
from pathlib import Path
from snapbuild.cli.asking import terminal_asker
from snapbuild.ledger import Ledger
from snapbuild.run.context import BuildContext, running_build
from snapbuild.run.monitor import TerminalMonitor

ledger = Ledger.create(build_id="20261204000000-0000cafe", builder="test", recipe="base", directory=Path(sys.argv[1]))
ask = terminal_asker()
assert ask is not None, "a pseudo-terminal is a terminal"
ctx = BuildContext(build_id=ledger.build_id, ledger=ledger, monitor=TerminalMonitor(), ask=ask)
tries = []
def provision():
    tries.append(1)
    if len(tries) < 3:
        raise RuntimeError(f"failure {len(tries)}")
with running_build(ctx):
    ctx.attempt("provision", provision)
print(f"done after {len(tries)} tries", file=sys.stderr)
"""


def test_ask_on_a_real_pseudo_terminal(tmp_path: Path) -> None:
    """The question goes to the terminal; an unknown answer is asked again; two retries, then success."""
    import pty
    import subprocess
    import sys
    import time

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _PTY_BUILD, str(tmp_path)], stdin=follower, stdout=follower,
                            stderr=follower, close_fds=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    os.close(follower)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while marker not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            try:
                chunk = os.read(leader, 4096)
            except OSError:          # the child closed the terminal
                break
            seen += chunk
        assert marker in seen, seen.decode(errors="replace")

    read_until(b"[r]etry the step")
    os.write(leader, b"x\n")                 # not an answer: asked again
    read_until(b"x\r\n")
    read_until(b"[r]etry the step")
    os.write(leader, b"r\n")
    read_until(b"failure 2")
    read_until(b"[r]etry the step")
    os.write(leader, b"retry\n")
    read_until(b"done after 3 tries")
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    assert seen.count(b"[c]lean up, [r]etry the step, [k]eep everything?") == 3
