"""The console runner for real: LocalGuest runs the plan's commands as processes, writes its files, and the
console lines it sends are read back by the host-side reader. The guest root is a temp directory; waiting for
cloud-init, the sealing commands and the power off are injected (they act on the whole machine), the seal check
is the real checker run on that root.

Every path a plan here touches is inside the test's temp directory: the tests run as root in CI."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from snapbuild import actions
from snapbuild.console import payload, plandata
from snapbuild.console.plandata import RunnerOrders
from snapbuild.console.reader import ConsoleReader
from snapbuild.console.relay import ConsoleRelay
from snapbuild.console.report import ConsoleReport
from snapbuild.console.runner import Hooks, Remove, run_orders
from snapbuild.errors import BuildError
from snapbuild.guest.base import Guest
from snapbuild.guest.local import LocalGuest
from snapbuild.provision import provision_actions
from snapbuild.run.monitor import EventStream
from snapbuild.sealing.policy import check_sealed

NONCE = "00aa11bb22cc"


def owner() -> str:
    return f"{os.getuid()}:{os.getgid()}"


def plan(work: Path, *, fail_at: int | None = None) -> tuple[actions.Action, ...]:
    """Five steps of four kinds; each appends its number to work/order when it runs."""
    order = work / "order"
    (work / "gone").write_text("x")

    def note(n: int) -> actions.RunCommand:
        if n == fail_at:
            return actions.RunCommand(argv=("sh", "-c", f"echo step {n} says; echo first; echo last >&2; exit 3"))
        return actions.RunCommand(argv=("sh", "-c", f"echo {n} >> {order}"))

    return (
        actions.WriteFile(path=str(work / "etc" / "one.conf"), content=b"one\n", owner=owner(), mode=0o640),
        note(2),
        actions.RunScript(name=f"test-{uuid.uuid4().hex[:8]}", interpreter="/bin/sh",
                          content=f"echo 3 >> {order}\n".encode()),
        actions.RemoveFiles(paths=(str(work / "gone"),)),
        note(5),
    )


def guest_root(tmp_path: Path) -> Path:
    """A guest root with the runner's payload in place, where cloud-init would have written it."""
    root = tmp_path / "root"
    (root / "run" / "snapbuild").mkdir(parents=True)
    (root / payload.RUNNER_PATH.lstrip("/")).write_bytes(payload.runner_zip())
    (root / "etc").mkdir()
    return root


def orders_for(steps: tuple[actions.Action, ...]) -> RunnerOrders:
    return RunnerOrders(nonce=NONCE, build_id="b-1", recipe="test", actions=steps, resolv_symlink=None,
                        payload_paths=payload.PAYLOAD_PATHS, tail_lines=5)


def fake_seal(guest: Guest, relay: ConsoleRelay, orders: RunnerOrders, remove: Remove) -> None:
    """What the sealing commands leave on this root (an empty machine-id), then the real order and check."""
    assert guest.host_root is not None
    (guest.host_root / "etc" / "machine-id").write_text("")
    remove()
    violations = check_sealed(guest, builder_user=orders.builder_user, live=True, gone=orders.payload_paths)
    if violations:
        raise BuildError("the sealed guest still has: " + "; ".join(str(v) for v in violations))


class Machine:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def hooks(self, seal: Any = fake_seal) -> Hooks:
        def wait_ready(guest: Guest, orders: RunnerOrders) -> None:
            self.calls.append("wait")

        def power_off(guest: Guest, orders: RunnerOrders) -> None:
            self.calls.append("power off")

        return Hooks(wait_ready=wait_ready, seal=seal, power_off=power_off)


def read_back(lines: list[str]) -> tuple[list[dict[str, Any]], ConsoleReport]:
    stream = io.StringIO()
    report = ConsoleReport(EventStream(stream))
    report.take(ConsoleReader(NONCE).feed(lines))
    return [json.loads(line) for line in stream.getvalue().splitlines()], report


def test_the_runner_applies_the_plan_in_provisions_order_seals_removes_itself_and_reports(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    root = guest_root(tmp_path)
    steps = plan(work)
    console: list[str] = []
    machine = Machine()

    verdict = run_orders(orders_for(steps), guest=LocalGuest(root=root), sink=console.append, hooks=machine.hooks())

    assert verdict == {"ok": True, "sealed": True, "checked": True}
    assert (work / "order").read_text().split() == ["2", "3", "5"]
    assert (work / "etc" / "one.conf").read_bytes() == b"one\n" and not (work / "gone").exists()
    assert (os.stat(work / "etc" / "one.conf").st_mode & 0o777) == 0o640
    assert not (root / "run" / "snapbuild").exists()
    assert machine.calls == ["wait", "power off"]
    events, report = read_back(console)
    assert report.verdict is not None and report.verdict.capturable and report.lost == 0
    # the same actions, through provision_actions on a recording monitor: the same steps in the same order
    heard = io.StringIO()
    (work / "gone").write_text("x")
    provision_actions(steps, LocalGuest(root=root), EventStream(heard))
    expected = [json.loads(line)["step"] for line in heard.getvalue().splitlines()
                if json.loads(line)["event"] == "step_started"]
    actions_run = [e["step"] for e in events if e["event"] == "step_started" and e["level"] == "action"]
    assert actions_run == expected and len(expected) == 5
    assert [e["step"] for e in events if e["event"] == "step_started" and e["level"] == "step"] == \
        ["wait for cloud-init", "provision", "seal"]
    finished = [e for e in events if e["event"] == "step_finished"]
    assert all(e["ok"] and e["seconds"] >= 0 for e in finished) and len(finished) == 8


def test_a_failing_step_stops_the_run_with_its_name_and_last_output(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    root = guest_root(tmp_path)
    steps = plan(work, fail_at=2)
    console: list[str] = []
    machine = Machine()

    verdict = run_orders(orders_for(steps), guest=LocalGuest(root=root), sink=console.append, hooks=machine.hooks())

    assert not verdict["ok"] and verdict["step"] == f"[2/5] {steps[1].describe()}"
    assert verdict["tail"][-3:] == ["step 2 says", "first", "last"]
    assert verdict["error"].endswith("exited 3"), "the output is in the tail, not twice"
    assert not (work / "order").exists(), "no step after the failing one ran"
    assert not (root / "run" / "snapbuild").exists(), "the payload goes on failure too"
    assert machine.calls == ["wait", "power off"]
    events, report = read_back(console)
    assert events[-1]["event"] == "step_finished" and not events[-1]["ok"]
    assert "│ last" in [e["text"] for e in events if e["event"] == "output"]
    assert report.verdict is not None and not report.verdict.capturable
    with pytest.raises(BuildError, match=r"failed in step \"\[2/5\] run sh -c") as caught:
        report.verdict.raise_unless_capturable()
    assert "last output:\n  step 2 says\n  first\n  last" in str(caught.value)
    pieces_kinds = [line.split("~")[3] for line in console]
    assert pieces_kinds[-1] == "final" and pieces_kinds.count("final") == 1


def test_a_seal_that_leaves_the_runner_behind_fails_the_check(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    root = guest_root(tmp_path)
    console: list[str] = []

    def forgetful(guest: Guest, relay: ConsoleRelay, orders: RunnerOrders, remove: Remove) -> None:
        fake_seal(guest, relay, orders, lambda: None)

    verdict = run_orders(orders_for(plan(work)), guest=LocalGuest(root=root), sink=console.append,
                         hooks=Machine().hooks(seal=forgetful))
    assert not verdict["ok"] and verdict["step"] == "seal"
    assert "builder-files: /run/snapbuild/runner.pyz" in verdict["error"]
    assert not (root / "run" / "snapbuild").exists(), "removed after the failed check all the same"


def test_a_step_that_raises_something_unexpected_still_ends_with_the_final_line(tmp_path: Path) -> None:
    root = guest_root(tmp_path)
    console: list[str] = []
    machine = Machine()

    def broken(guest: Guest, orders: RunnerOrders) -> None:
        raise RuntimeError("boom")

    hooks = Hooks(wait_ready=broken, seal=fake_seal, power_off=machine.hooks().power_off)
    verdict = run_orders(orders_for(()), guest=LocalGuest(root=root), sink=console.append, hooks=hooks)
    assert verdict["step"] == "wait for cloud-init" and verdict["error"].startswith("RuntimeError: boom")
    assert machine.calls == ["power off"] and console[-1].split("~")[3] == "final"


def run_zipapp(tmp_path: Path, steps: tuple[actions.Action, ...]) -> tuple[int, list[str], Path]:
    """The shipped zip, run as cloud-init runs it but isolated from site-packages (-I -S: only the standard
    library and what the zip carries), rehearsing under a temp root."""
    root = guest_root(tmp_path)
    orders_file = root / payload.ORDERS_PATH.lstrip("/")
    orders_file.write_bytes(plandata.dump(orders_for(steps)))
    console = tmp_path / "console.log"
    done = subprocess.run([sys.executable, "-I", "-S", str(root / payload.RUNNER_PATH.lstrip("/")),
                           "--orders", str(orders_file), "--root", str(root), "--console", str(console)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, console.read_text().splitlines(), root


def test_the_shipped_runner_needs_nothing_but_the_standard_library_and_reports_a_failing_step(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    steps = plan(work, fail_at=5)
    code, console, root = run_zipapp(tmp_path, steps)
    assert code == 1
    _, report = read_back(console)
    assert report.verdict is not None and report.verdict.step == f"[5/5] {steps[4].describe()}"
    assert report.verdict.tail[-2:] == ("first", "last")
    assert (work / "order").read_text().split() == ["2", "3"]
    assert not (root / "run" / "snapbuild").exists()


def test_the_shipped_runner_rehearsing_applies_everything_and_refuses_only_to_seal(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    code, console, root = run_zipapp(tmp_path, plan(work))
    _, report = read_back(console)
    assert code == 1 and report.verdict is not None
    assert report.verdict.step == "seal" and "rehearsal" in report.verdict.error
    assert (work / "order").read_text().split() == ["2", "3", "5"]
    assert report.result["seconds"] >= 0 and not (root / "run" / "snapbuild").exists()


class RecordingGuest(LocalGuest):
    """LocalGuest whose commands are recorded, not run (the sealing commands act on the whole machine)."""

    def __init__(self, root: Path, calls: list[str]) -> None:
        super().__init__(root=root)
        self.calls = calls

    def run(self, argv: Any, **kwargs: Any) -> Any:
        from snapbuild.guest.base import Completed

        self.calls.append(argv[0] if argv[0] != "sh" else "sh " + argv[1])
        return Completed(argv=tuple(argv), returncode=0, stdout="", stderr="")


def test_the_one_policy_removes_what_the_build_brought_between_sealing_and_the_check(tmp_path: Path) -> None:
    from snapbuild.sealing.policy import enforce

    root = guest_root(tmp_path)
    (root / "etc" / "machine-id").write_text("")
    calls: list[str] = []
    guest = RecordingGuest(root, calls)
    monitor = EventStream(io.StringIO())
    with pytest.raises(BuildError, match=r"builder-files: /run/snapbuild/runner\.pyz"):
        enforce(guest, monitor=monitor, resolv_symlink=None, builder_user="snapbuild", gone=payload.PAYLOAD_PATHS)

    def remove() -> None:
        calls.append("remove")
        (root / payload.RUNNER_PATH.lstrip("/")).unlink()
        (root / "run" / "snapbuild").rmdir()

    calls.clear()
    enforce(guest, monitor=monitor, resolv_symlink=None, builder_user="snapbuild", before_check=remove,
            gone=payload.PAYLOAD_PATHS)
    assert calls == ["sh -c", "sh -c", "fstrim", "remove"]


def test_a_runner_stopped_by_sigterm_still_reports_and_removes_itself(tmp_path: Path) -> None:
    import signal
    import time

    root = guest_root(tmp_path)
    orders_file = root / payload.ORDERS_PATH.lstrip("/")
    orders_file.write_bytes(plandata.dump(orders_for((actions.RunCommand(argv=("sh", "-c", "echo up; sleep 60")),))))
    console = tmp_path / "console.log"
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(root / payload.RUNNER_PATH.lstrip("/")), "--orders",
                             str(orders_file), "--root", str(root), "--console", str(console)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "[1/1]" not in (console.read_text() if console.exists() else ""):
            assert time.monotonic() < deadline and proc.poll() is None, "the step never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    _, report = read_back(console.read_text().splitlines())
    assert report.verdict is not None and report.verdict.step == "[1/1] run sh -c 'echo up; sleep 60'"
    assert "stopped" in report.verdict.error and not (root / "run" / "snapbuild").exists()
