"""Progress of long work: a bar on a terminal, a few plain lines elsewhere, `progress` events for --events.

    with progress(monitor, "upload", total=size) as bar:
        for chunk in ...:
            bar.update(len(chunk))          # or bar.set(position); bar.status("saving") for a wait

Where it shows is the monitor's business. The terminal monitor's stream (stderr) gets a tqdm bar when it is a
terminal, and otherwise a line when the work starts, one per tenth of it (or every 30 s while it moves; never two
within 5 s) and one at the end, so CI logs stay readable. The whole monitor hears `progress` events, at most one
every EVENT_EVERY_S plus the first and the last (only the event stream does anything with them). stdout never sees
a bar: results go there. With no monitor nothing is shown; the start and end go to the log.

tqdm is imported only when a bar is drawn, so `snapbuild --help` never loads it. While a bar is on the terminal,
the monitor's lines and the console log handler write above it (through tqdm.write) instead of through it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO

from snapbuild.run.monitor import Monitor, TerminalMonitor, terminal_of

log = logging.getLogger(__name__)

EVENT_EVERY_S = 2.0        # --events: at most one progress event this often (plus the first and the last)
PLAIN_EVERY_S = 30.0       # without a terminal: a line per tenth, and one at least this often while it moves …
PLAIN_GAP_S = 5.0          # … but never two closer than this (a few seconds of work: its start and end only)
BAR_REFRESH_S = 0.2        # tqdm's mininterval: redraws no faster than this

Clock = Callable[[], float]


class _Display(Protocol):
    def show(self, done: float, status: str) -> None: ...

    def end(self, done: float, status: str, ok: bool) -> None: ...


class Progress:
    """One piece of long work; what `progress()` hands out. Safe to call from worker threads."""

    def __init__(self, label: str, total: float | None, unit: str, *, monitor: Monitor | None,
                 display: _Display | None, clock: Clock, initial: float = 0) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = initial
        self.state = ""
        self._monitor, self._display, self._clock = monitor, display, clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last_event = float("-inf")
        self._sent: tuple[float, float | None] | None = None
        self._event(force=True, now=self._started)

    def update(self, n: float) -> None:
        """n more units done."""
        with self._lock:
            self._moved(self.done + n)

    def set(self, done: float) -> None:
        """Everything up to `done` is done (a position: a transfer that resumed starts above 0)."""
        with self._lock:
            self._moved(done)

    def status(self, text: str) -> None:
        """What a wait without a count shows (`saving`), beside the elapsed time."""
        with self._lock:
            if text != self.state:
                self.state = text
                self._moved(self.done)

    def _moved(self, done: float) -> None:
        self.done = done
        if self._display is not None:
            self._display.show(done, self.state)
        self._event(force=self.total is not None and done >= self.total)

    def _event(self, *, force: bool = False, now: float | None = None) -> None:
        if self._monitor is None:
            return
        now = self._clock() if now is None else now
        if not force and now - self._last_event < EVENT_EVERY_S:
            return
        self._last_event = now
        if self.total is None and not self.unit:
            # a wait with nothing to count: its elapsed seconds are what moves
            done, unit = round(now - self._started, 1), "s"
        else:
            done, unit = self.done, self.unit
        if self._sent == (done, self.total):
            return          # the last event said this already (the end of a counted piece of work)
        self._sent = (done, self.total)
        self._monitor.progress(self.label, done, self.total, unit=unit)

    def close(self, ok: bool) -> None:
        with self._lock:
            if ok and self.total is not None:
                self.done = max(self.done, self.total)
            self._last_event = float("-inf")
            self._event(force=True)
            if self._display is not None:
                self._display.end(self.done, self.state, ok)


@contextlib.contextmanager
def progress(monitor: Monitor | None, label: str, *, total: float | None = None, unit: str = "B",
             initial: float = 0, tty: bool | None = None, clock: Clock = time.monotonic) -> Iterator[Progress]:
    """Track one piece of long work; see the module docstring.

    `unit` is "B" (bytes, shown binary-scaled), "%" (total 100), "" with no total (a wait: status and elapsed
    time), or a count's name ("images"). `tty` overrides what the terminal monitor's stream says of itself.
    """
    terminal = terminal_of(monitor)
    display: _Display | None = None
    lent: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if terminal is None:
        log.info("%s: started%s", label, f" ({_amount(total, unit)})" if total is not None and unit else "")
    else:
        stream = _raw(terminal.stream)
        if stream.isatty() if tty is None else tty:
            display = _Bar(stream, label, total, unit, initial=initial, indent="  " * terminal.depth)
            lent = _writing_above(display.bar, terminal, stream)
        else:
            display = _Lines(terminal, label, total, unit, initial=initial, clock=clock)
    bar = Progress(label, total, unit, monitor=monitor, display=display, clock=clock, initial=initial)
    ok = False
    try:
        with lent:
            try:
                yield bar
                ok = True
            finally:
                bar.close(ok)
    finally:
        if terminal is None:
            log.info("%s: %s", label, "done" if ok else f"stopped at {_amount(bar.done, unit)}")


# ---- without a terminal: plain lines ---------------------------------------------------------------------------

class _Lines:
    def __init__(self, terminal: TerminalMonitor, label: str, total: float | None, unit: str, *, initial: float,
                 clock: Clock) -> None:
        self.terminal, self.label, self.total, self.unit, self.clock = terminal, label, total, unit, clock
        self.started = self.last_time = clock()
        self.initial = initial
        self.last_tenth = self._tenth(initial)
        self.last_state = ""
        size = f" ({_amount(total, unit)})" if total is not None and unit not in ("%", "") else ""
        resumed = f", {_amount(initial, unit)} already done" if initial else ""
        terminal.line(f"{label}: started{size}{resumed}")

    def _tenth(self, done: float) -> int:
        return int(10 * done // self.total) if self.total else -1

    def show(self, done: float, status: str) -> None:
        now = self.clock()
        tenth = self._tenth(done)
        if self.total is not None and done >= self.total:
            return      # the end line says it
        if now - self.last_time < PLAIN_GAP_S:
            return
        if tenth == self.last_tenth and status == self.last_state and now - self.last_time < PLAIN_EVERY_S:
            return
        self.last_tenth, self.last_state, self.last_time = tenth, status, now
        self.terminal.line(f"{self.label}: {self._where(done, status, now)}")

    def _where(self, done: float, status: str, now: float) -> str:
        elapsed = now - self.started
        if self.total is None:
            counted = _amount(done, self.unit) + ", " if self.unit and done else ""
            return f"{status or 'waiting'} ({counted}{elapsed:.0f} s)"
        percent = 100 * done / self.total if self.total else 100.0
        if self.unit == "%":
            return f"{percent:.0f}% ({elapsed:.0f} s)"
        rate = _rate(done - self.initial, elapsed, self.unit)
        return f"{percent:.0f}% ({_amount(done, self.unit)} of {_amount(self.total, self.unit)}{rate})"

    def end(self, done: float, status: str, ok: bool) -> None:
        elapsed = self.clock() - self.started
        if not ok:
            self.terminal.line(f"{self.label}: stopped at {self._where(done, status, self.clock())}")
            return
        amount = f", {_amount(done, self.unit)}" if self.unit not in ("%", "") and done else ""
        rate = _rate(done - self.initial, elapsed, self.unit)
        self.terminal.line(f"{self.label}: done{amount} in {elapsed:.1f} s{rate}")


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    if unit == "B":
        for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if value >= scale:
                return f"{value / scale:.1f} {name}"
        return f"{value:.0f} B"
    if unit == "%":
        return f"{value:.0f}%"
    return f"{value:g} {unit}".rstrip()


def _rate(moved: float, elapsed: float, unit: str) -> str:
    if unit != "B" or elapsed < 1 or moved <= 0:
        return ""
    return f", {_amount(moved / elapsed, unit)}/s"


# ---- on a terminal: a tqdm bar ---------------------------------------------------------------------------------

def _unsized(stream: TextIO) -> bool:
    try:
        return os.get_terminal_size(stream.fileno()).columns == 0
    except (AttributeError, OSError, ValueError):     # not a real terminal (a test's stream): tqdm copes
        return False


def _tqdm() -> Any:
    from tqdm import tqdm  # here, not at the top: `snapbuild --help` must not pay for it

    tqdm.monitor_interval = 0     # no watcher thread per process: our updates come often enough
    return tqdm


class _Bar:
    def __init__(self, stream: TextIO, label: str, total: float | None, unit: str, *, initial: float,
                 indent: str) -> None:
        options: dict[str, Any] = {"desc": indent + label, "total": total, "initial": initial, "file": stream,
                                   "leave": True, "dynamic_ncols": True, "mininterval": BAR_REFRESH_S}
        if _unsized(stream):
            # a pseudo-terminal nobody sized (ssh -t from a script, `script`): tqdm would draw an empty line
            size = shutil.get_terminal_size()       # $COLUMNS and $LINES, else 80x24
            options.update(dynamic_ncols=False, ncols=size.columns, nrows=size.lines)
        if unit == "B":
            options.update(unit="B", unit_scale=True, unit_divisor=1024)
        elif unit == "%":
            options["bar_format"] = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"
        elif total is None and not unit:
            options["bar_format"] = "{desc} [{elapsed}]"     # a wait: its status (in desc) and the time
        elif total is not None:
            options["bar_format"] = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} " + unit + \
                                    " [{elapsed}<{remaining}]"
        else:
            options["unit"] = f" {unit}"
        self.desc = indent + label
        self.bar = _tqdm()(**options)

    def show(self, done: float, status: str) -> None:
        if status and self.bar.desc != f"{self.desc}: {status}":
            self.bar.set_description_str(f"{self.desc}: {status}", refresh=False)
        self.bar.update(done - self.bar.n)

    def end(self, done: float, status: str, ok: bool) -> None:
        if ok:
            self.bar.update(done - self.bar.n)
        self.bar.close()


class _AboveBar:
    """A line-buffered text stream that writes each whole line above the bars on `raw` (tqdm.write)."""

    def __init__(self, raw: TextIO, write: Callable[..., None]) -> None:
        self.raw, self._write, self._pending = raw, write, ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._write(line, file=self.raw)
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self.raw.isatty()

    def __getattr__(self, name: str) -> Any:      # encoding, fileno, … as the real stream has them
        return getattr(self.raw, name)


def _raw(stream: TextIO) -> TextIO:
    return stream.raw if isinstance(stream, _AboveBar) else stream


@contextlib.contextmanager
def _writing_above(bar: Any, terminal: TerminalMonitor, stream: TextIO) -> Iterator[None]:
    """While the bar is up, the monitor's lines and console log records go above it, not through it."""
    if isinstance(terminal.stream, _AboveBar):       # an outer bar already lent the terminal out
        yield
        return
    above: TextIO = _AboveBar(stream, type(bar).write)  # type: ignore[assignment]
    handlers = [h for h in logging.getLogger().handlers
                if type(h) is logging.StreamHandler and h.stream is stream]
    terminal.stream = above
    for handler in handlers:
        handler.setStream(above)
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(stream)
        terminal.stream = stream
