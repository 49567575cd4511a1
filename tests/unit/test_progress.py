"""Progress of long work: a tqdm bar on a terminal, a few plain lines when stderr is not one, rate-limited
`progress` events for --events, nothing on stdout; and the `qemu-img convert -p` figures that drive compaction."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from snapbuild import cli
from snapbuild.errors import CommandFailed
from snapbuild.host.compact import percents, run_convert
from snapbuild.openstack import snapshot
from snapbuild.openstack.settings import SnapshotResult, SnapshotSettings
from snapbuild.run.monitor import EventStream, TerminalMonitor
from snapbuild.run.progress import progress

BAR_PIECES = re.compile(r"\r|\|#|█|\d+%\|")     # what only a drawn bar writes


class Terminal(io.StringIO):
    """What the terminal monitor writes to, claiming to be a terminal."""

    def isatty(self) -> bool:
        return True


def ticking(step: float = 1.0) -> Iterator[float]:
    now = 0.0
    while True:
        yield now
        now += step


# ---- without a terminal -----------------------------------------------------------------------------------------

def test_no_terminal_means_no_bar_only_a_start_line_a_line_per_tenth_and_an_end_line() -> None:
    out = io.StringIO()
    clock = ticking(0.5)          # read twice per update (the lines and the events): 1 s an update
    with progress(TerminalMonitor(out), "upload", total=100 << 20, clock=lambda: next(clock)) as bar:
        for _ in range(200):
            bar.update(512 << 10)
    text = out.getvalue()
    assert not BAR_PIECES.search(text), text
    lines = text.splitlines()
    assert lines[0] == "upload: started (100.0 MiB)"
    assert re.fullmatch(r"upload: done, 100\.0 MiB in [\d.]+ s, [\d.]+ [KM]iB/s", lines[-1]), lines[-1]
    assert [line.split()[1] for line in lines[1:-1]] == [f"{p}%" for p in range(10, 100, 10)]


def test_no_terminal_and_quick_work_is_only_its_start_and_end() -> None:
    out = io.StringIO()
    clock = ticking(0.01)
    with progress(TerminalMonitor(out), "verify (sha256)", total=100, clock=lambda: next(clock)) as bar:
        for done in range(1, 101):
            bar.set(done)
    assert [line.split(":")[1].split()[0] for line in out.getvalue().splitlines()] == ["started", "done,"]


def test_no_terminal_and_slow_work_still_says_something_every_30_s() -> None:
    out = io.StringIO()
    clock = ticking(31.0)
    with progress(TerminalMonitor(out), "to relay", total=1000, clock=lambda: next(clock)) as bar:
        for done in range(1, 4):
            bar.set(done)               # far below a tenth each time
    assert len(out.getvalue().splitlines()) == 5        # start, three heartbeats, end


def test_a_failure_ends_with_where_it_stopped() -> None:
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), progress(TerminalMonitor(out), "download", total=1 << 30) as bar:
        bar.set(300 << 20)
        raise KeyboardInterrupt
    assert re.search(r"^download: stopped at 29% \(300\.0 MiB of 1\.0 GiB", out.getvalue(), re.M), out.getvalue()


def test_a_wait_without_a_count_shows_its_status_and_time() -> None:
    out = io.StringIO()
    clock = ticking(10.0)
    with progress(TerminalMonitor(out), "snapshot upload", unit="", clock=lambda: next(clock)) as wait:
        for status in ("queued", "saving", "saving", "saving", "active"):
            wait.status(status)
    lines = out.getvalue().splitlines()
    assert lines[0] == "snapshot upload: started"
    assert [line.split()[2] for line in lines[1:-1]] == ["queued", "saving", "active"]   # on change only
    assert lines[-1].startswith("snapshot upload: done in ")


def test_plain_lines_sit_under_the_step_heading() -> None:
    out = io.StringIO()
    terminal = TerminalMonitor(out)
    terminal.step_started("compact (zstd)")
    with progress(terminal, "compact", total=100, unit="%") as bar:
        bar.set(100)
    assert out.getvalue().splitlines()[1:] == ["  compact: started", out.getvalue().splitlines()[-1]]
    assert out.getvalue().splitlines()[-1].startswith("  compact: done in ")


def test_without_a_monitor_nothing_is_shown_and_the_log_has_start_and_end(caplog: pytest.LogCaptureFixture,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level(logging.INFO, logger="snapbuild.run.progress"), progress(None, "download", total=10) as bar:
        bar.set(10)
    assert capsys.readouterr() == ("", "")
    assert [r.getMessage() for r in caplog.records] == ["download: started (10 B)", "download: done"]


def test_no_terminal_never_imports_tqdm() -> None:
    code = textwrap.dedent("""
        import io, sys
        from snapbuild.run.monitor import TerminalMonitor
        from snapbuild.run.progress import progress
        with progress(TerminalMonitor(io.StringIO()), "upload", total=10) as bar:
            bar.set(10)
        print("tqdm" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ---- on a terminal ----------------------------------------------------------------------------------------------

def test_a_terminal_gets_a_tqdm_bar_with_the_label_and_a_percentage() -> None:
    out = Terminal()
    with progress(TerminalMonitor(out), "upload", total=10 << 20) as bar:
        for _ in range(10):
            bar.update(1 << 20)
    text = out.getvalue()
    assert "\r" in text and "started" not in text
    assert re.search(r"upload: 100%\|#+\| 10\.0M/10\.0M", text), text


def _read_all(fd: int) -> str:
    """Everything written to the pseudo terminal so far: one read may return only the first write's bytes."""
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def test_a_real_pseudo_terminal_that_nobody_sized_still_gets_a_whole_bar() -> None:
    # `script`, or ssh -t from a script, hand over a 0x0 terminal: tqdm alone would draw empty lines there
    main, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as stream:
            assert os.get_terminal_size(secondary).columns == 0
            with progress(TerminalMonitor(stream), "upload", total=1 << 20) as bar:
                bar.set(1 << 20)
        drawn = _read_all(main)
    finally:
        os.close(main)
        os.close(secondary)
    assert re.search(r"upload: 100%\|█+\| 1\.00M/1\.00M", drawn), repr(drawn)


def test_tty_false_overrides_a_terminal_and_tty_true_draws_on_anything() -> None:
    plain, drawn = Terminal(), io.StringIO()
    with progress(TerminalMonitor(plain), "hashing", total=4, tty=False) as bar:
        bar.set(4)
    with progress(TerminalMonitor(drawn), "hashing", total=4, tty=True) as bar:
        bar.set(4)
    assert not BAR_PIECES.search(plain.getvalue()) and "hashing: done" in plain.getvalue()
    assert "hashing: 100%|" in drawn.getvalue()


def test_counts_and_percentages_draw_without_byte_units() -> None:
    out = Terminal()
    terminal = TerminalMonitor(out)
    with progress(terminal, "pre-pull", total=3, unit="images") as bar:
        bar.set(3)
    with progress(terminal, "compact", total=100, unit="%") as bar:
        bar.set(45.5)
    assert "pre-pull: 100%|##########| 3/3 images" in out.getvalue()
    assert re.search(r"\rcompact: 100%\|#+\| \[", out.getvalue()), out.getvalue()    # no 100/100 count


def test_lines_and_log_records_written_while_a_bar_is_up_go_above_it_whole() -> None:
    out = Terminal()
    terminal = TerminalMonitor(out)
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with progress(terminal, "download", total=100) as bar:
            bar.set(40)
            terminal.line("resuming: 40 of 100 bytes already here")
            logging.getLogger("snapbuild.transfer.backoff").warning("bytes 0-9: reset; retrying")
            bar.set(100)
            assert handler.stream is not out and terminal.stream is not out     # lent to the bar …
    finally:
        root.removeHandler(handler)
    assert handler.stream is out and terminal.stream is out                     # … and given back
    rows = out.getvalue().split("\n")
    # each line starts a row of its own (after the bar was cleared with \r), and the bar goes on below it
    assert any(row.endswith("\rresuming: 40 of 100 bytes already here") for row in rows), rows
    assert any(row.endswith("\rWARNING snapbuild.transfer.backoff: bytes 0-9: reset; retrying") for row in rows)
    assert "download: 100%" in rows[-2]


# ---- events ---------------------------------------------------------------------------------------------------

def test_events_are_rate_limited_but_always_carry_the_first_and_the_last() -> None:
    events = io.StringIO()
    clock = ticking(0.05)
    with progress(EventStream(events), "pre-pull", total=100, unit="images", clock=lambda: next(clock)) as bar:
        for done in range(1, 101):
            bar.set(done)
    seen = [json.loads(line) for line in events.getvalue().splitlines()]
    assert all(e["event"] == "progress" and e["what"] == "pre-pull" and e["unit"] == "images" for e in seen)
    assert seen[0]["done"] == 0 and seen[-1]["done"] == seen[-1]["total"] == 100
    assert 3 <= len(seen) <= 5          # 5 s of work, one event per 2 s at most, the end only once


def test_a_wait_reports_its_elapsed_seconds_as_events() -> None:
    events = io.StringIO()
    clock = ticking(5.0)
    with progress(EventStream(events), "snapshot upload", unit="", clock=lambda: next(clock)) as wait:
        wait.status("saving")
    seen = [json.loads(line) for line in events.getvalue().splitlines()]
    assert [(e["done"], e["total"], e["unit"]) for e in seen] == [(0.0, None, "s"), (5.0, None, "s"),
                                                                  (10.0, None, "s")]


# ---- stdout carries only the result -----------------------------------------------------------------------------

BUILT = SnapshotResult(image_id="3f1c-image", image_name="base-20261204-1200", build_id="20261204-ab12",
                       properties={}, seconds=61.0, manifest={}, manifest_path=Path("/state/m.json"))


@pytest.fixture
def drawing_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cloud build that draws bars (as if stderr were a terminal) and answers BUILT; no cloud is contacted."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))

    def fake_build_snapshot(settings: SnapshotSettings, plan: Any, monitor: Any, **kw: Any) -> SnapshotResult:
        with progress(monitor, "pre-pull", total=4, unit="images", tty=True) as bar:
            bar.set(4)
        with progress(monitor, "snapshot upload", unit="", tty=True) as wait:
            wait.status("saving")
        return BUILT

    monkeypatch.setattr(snapshot, "build_snapshot", fake_build_snapshot)


def test_bars_go_to_stderr_and_stdout_holds_only_the_value(drawing_build: None) -> None:
    result = CliRunner().invoke(cli.cli, ["build", "base", "--flavor", "m1.small", "-f", "value", "-c", "id"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "3f1c-image\n"
    assert "pre-pull: 100%|" in result.stderr and "snapshot upload: saving" in result.stderr


def test_with_events_on_stdout_every_stdout_line_is_an_event(drawing_build: None) -> None:
    result = CliRunner().invoke(cli.cli, ["build", "base", "--flavor", "m1.small", "--events", "-"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    pulls = [e for e in events if e["event"] == "progress" and e["what"] == "pre-pull"]
    assert pulls[-1]["done"] == pulls[-1]["total"] == 4
    assert "pre-pull: 100%|" in result.stderr


# ---- qemu-img convert -p ----------------------------------------------------------------------------------------

# The head and tail of what `qemu-img convert -p -f raw -O qcow2 -c -o compression_type=zstd 48M.raw out.qcow2`
# printed on stdout (qemu-img 7.2, stdout a pipe): one figure per \r, the last one twice, then \r\n.
QEMU_IMG_P = (b"    (0.00/100%)\r    (1.04/100%)\r    (2.08/100%)\r    (3.12/100%)\r    (4.17/100%)\r"
              b"    (96.88/100%)\r    (97.92/100%)\r    (98.96/100%)\r    (100.00/100%)\r    (100.00/100%)\r\n")


def test_qemu_img_progress_figures_are_read_from_its_real_output() -> None:
    assert percents(QEMU_IMG_P.decode()) == [0.0, 1.04, 2.08, 3.12, 4.17, 96.88, 97.92, 98.96, 100.0, 100.0]
    assert percents("qemu-img: Could not open 'x.raw': No such file or directory") == []


FAKE_QEMU_IMG = """\
import sys, time
args = sys.argv[1:]
open(args[-1], "w").write(" ".join(args))
if "-p" not in args:
    sys.exit(0)
out = sys.stdout.buffer
for piece in {pieces!r}:       # written in odd pieces: a figure may arrive split over two reads
    out.write(piece)
    out.flush()
    time.sleep(0.01)
sys.stderr.write({stderr!r})
sys.exit({code})
"""


def fake_qemu_img(tmp_path: Path, *, code: int = 0, stderr: str = "", pieces: tuple[bytes, ...] | None = None) -> list[str]:
    script = tmp_path / "qemu-img.py"
    chunks = pieces if pieces is not None else (QEMU_IMG_P[:23], QEMU_IMG_P[23:70], QEMU_IMG_P[70:])
    script.write_text(FAKE_QEMU_IMG.format(pieces=chunks, stderr=stderr, code=code))
    return [sys.executable, str(script), "convert", "-O", "qcow2", "in.raw", str(tmp_path / "args")]


def test_run_convert_adds_p_and_feeds_every_figure_in_order(tmp_path: Path) -> None:
    seen: list[float] = []
    run_convert(fake_qemu_img(tmp_path), timeout=60, on_percent=seen.append)
    assert (tmp_path / "args").read_text().startswith("convert -p -O qcow2")
    assert seen == [0.0, 1.04, 2.08, 3.12, 4.17, 96.88, 97.92, 98.96, 100.0, 100.0]


def test_run_convert_without_a_listener_runs_it_plainly(tmp_path: Path) -> None:
    run_convert(fake_qemu_img(tmp_path), timeout=60)
    assert (tmp_path / "args").read_text().startswith("convert -O qcow2")


def test_run_convert_failure_carries_qemu_img_s_message(tmp_path: Path) -> None:
    argv = fake_qemu_img(tmp_path, code=1, stderr="qemu-img: Could not open 'in.raw': No such file")
    with pytest.raises(CommandFailed, match=re.escape("exited 1\nqemu-img: Could not open 'in.raw'")):
        run_convert(argv, timeout=60, on_percent=lambda figure: None)


def test_run_convert_is_killed_at_its_deadline(tmp_path: Path) -> None:
    argv = fake_qemu_img(tmp_path, pieces=tuple([b"    (1.00/100%)\r"] * 1000))    # about 10 s of output
    with pytest.raises(CommandFailed, match="timed out") as caught:
        run_convert(argv, timeout=0.5, on_percent=lambda figure: None)
    assert caught.value.timed_out
