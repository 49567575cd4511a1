"""Undo runs on failure and on SIGTERM; the ledger records before and forgets after."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from snapbuild.ledger import Ledger, all_ledgers, installation_id
from snapbuild.run.context import BuildContext, Reporter, running_build


def context(tmp_path: Path, keep: bool = False) -> BuildContext:
    ledger = Ledger.create(build_id="b1", builder="test", recipe="base", directory=tmp_path)
    return BuildContext(build_id="b1", ledger=ledger, monitor=Reporter(), keep_on_failure=keep)


def test_undo_runs_in_reverse_and_ledger_is_removed(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    order: list[str] = []
    with pytest.raises(RuntimeError), running_build(ctx):
        for name in ("a", "b"):
            ctx.ledger.record("thing", name)
            ctx.add_undo(f"remove {name}", order.append, name, forget=("thing", name))
        raise RuntimeError("boom")
    assert order == ["b", "a"]
    assert not ctx.ledger.path.exists()


def test_failing_undo_is_logged_not_raised_and_kept_in_ledger(tmp_path: Path) -> None:
    ctx = context(tmp_path)

    def broken() -> None:
        raise OSError("device busy")

    with pytest.raises(RuntimeError, match="original"), running_build(ctx):
        ctx.ledger.record("mount", "/mnt/x")
        ctx.add_undo("unmount /mnt/x", broken, forget=("mount", "/mnt/x"))
        raise RuntimeError("original")
    assert ctx.kept and "device busy" in ctx.kept[0]
    (entry,) = Ledger.load(ctx.ledger.path).entries()
    assert entry.ref == "/mnt/x"


def test_keep_on_failure_keeps_everything_and_says_how_to_remove_it(tmp_path: Path) -> None:
    ledger = Ledger.create(build_id="b1", builder="test", recipe="base", directory=tmp_path)
    out = io.StringIO()
    ctx = BuildContext(build_id="b1", ledger=ledger, monitor=Reporter(out), keep_on_failure=True,
                       cleanup_command="snapbuild cleanup --build-id b1")
    order: list[str] = []
    with pytest.raises(RuntimeError), running_build(ctx):
        ctx.own("server", "s1", "delete server s1", order.append, "s1", name="builder")
        raise RuntimeError("boom")
    assert order == []
    assert Ledger.load(ctx.ledger.path).status == "failed-kept"
    text = out.getvalue()
    assert "kept for debugging (--keep-on-failure):\n  server s1 builder\n" in text
    assert text.rstrip().endswith("remove them with: snapbuild cleanup --build-id b1")


def test_installation_id_is_stable() -> None:
    assert installation_id() == installation_id()


def test_first_builds_racing_for_the_installation_id_all_get_the_same_one(tmp_path: Path) -> None:
    # Two first builds in one state directory used to write different ids, and one build's resources then
    # carried an id that no longer matched the file (cleanup took them for another installation's).
    code = "from snapbuild.ledger import installation_id; print(installation_id())"
    env = {**os.environ, "SNAPBUILD_STATE_DIR": str(tmp_path / "state")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    ids = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(ids) == 1 and ids == {(tmp_path / "state" / "installation-id").read_text().strip()}
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["installation-id"]     # no temporary left


def test_sigterm_runs_the_undo_and_second_signal_is_ignored(tmp_path: Path) -> None:
    marker = tmp_path / "undone"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        from snapbuild.ledger import Ledger
        from snapbuild.run.context import BuildContext, Reporter, running_build
        ledger = Ledger.create(build_id="b2", builder="test", recipe="base", directory=Path({str(tmp_path)!r}))
        ctx = BuildContext(build_id="b2", ledger=ledger, monitor=Reporter())
        def slow_undo():
            os.kill(os.getpid(), signal.SIGINT)   # a second interrupt during cleanup
            Path({str(marker)!r}).write_text("done")
        with running_build(ctx):
            ctx.add_undo("slow undo", slow_undo)
            print("ready", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert marker.read_text() == "done"
    assert "interrupt ignored" in err
    assert proc.returncode != 0
    assert all_ledgers(tmp_path) == []
