"""Signals during a build: TERM and HUP interrupt like Ctrl-C (so every undo runs); cleanup is not interruptible."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from snapbuild.run.monitor import Monitor


class Interrupted(KeyboardInterrupt):
    pass


@contextlib.contextmanager
def _signals_handled(sigs: tuple[signal.Signals, ...], handler: Callable[[int, FrameType | None], None]
                     ) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread may set handlers (and only it receives signals): a build running in a worker
        # thread (`snapbuild apply`) is interrupted by the main thread handing it KeyboardInterrupt instead.
        yield
        return
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
        raise Interrupted(signal.Signals(signum).name)

    with _signals_handled((signal.SIGTERM, signal.SIGHUP), handler):
        yield


@contextlib.contextmanager
def shielded(monitor: Monitor | None = None) -> Iterator[None]:
    """While cleaning up, a second Ctrl-C (or TERM/HUP) is ignored with a message."""

    def handler(signum: int, frame: FrameType | None) -> None:
        msg = "cleanup in progress: interrupt ignored so nothing is left behind"
        if monitor:
            monitor.warning(msg)
        else:
            print(msg, file=sys.stderr)

    with _signals_handled((signal.SIGINT, signal.SIGTERM, signal.SIGHUP), handler):
        yield
