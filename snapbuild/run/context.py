"""A build: named, timed steps over one context that owns every undo (DESIGN rules 1, 2, 8)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from snapbuild.ledger import Ledger

log = logging.getLogger(__name__)


class Reporter:
    """Prints nested, timed step headings to stderr (`▸ provision … 41.2 s`)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.depth = 0

    def heading(self, text: str) -> None:
        print(f"{'  ' * self.depth}▸ {text}", file=self.stream, flush=True)

    def done(self, text: str, seconds: float, ok: bool = True) -> None:
        mark = "✓" if ok else "✗"
        print(f"{'  ' * self.depth}{mark} {text} … {seconds:.1f} s", file=self.stream, flush=True)

    def line(self, text: str) -> None:
        print(f"{'  ' * (self.depth + 1)}{text}", file=self.stream, flush=True)


@dataclass
class StepTiming:
    name: str
    seconds: float
    ok: bool


@dataclass
class BuildContext:
    """Everything one build shares: its id, ledger, undo stack, reporter and timings."""

    build_id: str
    ledger: Ledger
    reporter: Reporter
    log_path: Path | None = None
    keep_on_failure: bool = False
    undo: ExitStack = field(default_factory=ExitStack)
    timings: list[StepTiming] = field(default_factory=list)
    current_step: str | None = None
    kept: list[str] = field(default_factory=list)   # undo failures, reported at the end
    kept_descriptions: list[str] = field(default_factory=list)  # what --keep-on-failure keeps

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.reporter.heading(name)
        previous, self.current_step = self.current_step, name
        self.reporter.depth += 1
        start = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = time.monotonic() - start
            self.reporter.depth -= 1
            self.reporter.done(name, seconds, ok)
            self.timings.append(StepTiming(name, seconds, ok))
            log.info("step %s %s in %.1f s", name, "done" if ok else "FAILED", seconds)
            if ok:
                self.current_step = previous

    def add_undo(self, description: str, func: Callable[..., Any], *args: Any,
                 forget: tuple[str, str] | None = None, **kwargs: Any) -> None:
        """Register an undo that logs, and never raises over the original error.

        `forget=(kind, ref)` strikes the ledger entry once the undo has succeeded.
        """

        def undo() -> None:
            log.info("undo: %s", description)
            try:
                func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - cleanup must go on; the error is logged
                log.error("undo of %s failed: %s", description, exc)
                self.kept.append(f"{description} (undo failed: {exc})")
                return
            if forget is not None:
                self.ledger.forget(*forget)

        self.undo.callback(undo)
        self.kept_descriptions.append(description)


class _Interrupted(KeyboardInterrupt):
    pass


@contextlib.contextmanager
def _signals_handled(sigs: tuple[signal.Signals, ...], handler: Callable[[int, FrameType | None], None]
                     ) -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in sigs}
    for sig in sigs:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def interrupts_as_keyboardinterrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like SIGINT, so every undo runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted(signal.Signals(signum).name)

    with _signals_handled((signal.SIGTERM, signal.SIGHUP), handler):
        yield


@contextlib.contextmanager
def shielded(reporter: Reporter | None = None) -> Iterator[None]:
    """While cleaning up, a second Ctrl-C (or TERM/HUP) is ignored with a message."""

    def handler(signum: int, frame: FrameType | None) -> None:
        msg = "cleanup in progress: interrupt ignored so nothing is left behind"
        if reporter:
            reporter.line(msg)
        else:
            print(msg, file=sys.stderr)

    with _signals_handled((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), handler):
        yield


@contextlib.contextmanager
def running_build(ctx: BuildContext) -> Iterator[BuildContext]:
    """Own the build's undo stack: on success close it, on failure undo everything (or keep it)."""
    with interrupts_as_keyboardinterrupt():
        try:
            yield ctx
        except BaseException:
            if ctx.keep_on_failure:
                ctx.undo.pop_all()
                ctx.ledger.finish("failed-kept")
            else:
                with shielded(ctx.reporter):
                    ctx.reporter.heading("cleanup")
                    ctx.undo.close()
                ctx.ledger.finish("failed")
                ctx.ledger.remove_if_clean()
            raise
        else:
            with shielded(ctx.reporter):
                ctx.undo.close()
            ctx.ledger.finish("done")
            ctx.ledger.remove_if_clean()
