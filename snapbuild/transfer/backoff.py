"""Retries for long transfers: tenacity with stop= and wait= that count only attempts that made no progress,
so a link that drops every few MB still finishes while a dead one gives up after `attempts` fruitless tries."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception

from snapbuild import netcause

log = logging.getLogger(__name__)


class ProgressBackoff:
    def __init__(self, *, attempts: int, initial: float, maximum: float, progress: Callable[[], int],
                 transient: Callable[[BaseException], bool]) -> None:
        self.attempts, self.initial, self.maximum = attempts, initial, maximum
        self.progress = progress
        self.transient = transient
        self.last = progress()
        self.misses = 0

    def stop(self, state: RetryCallState) -> bool:
        now = self.progress()
        self.misses = 0 if now > self.last else self.misses + 1
        self.last = now
        return self.misses >= self.attempts

    def wait(self, state: RetryCallState) -> float:
        """Exponential in the fruitless attempts, with jitter so parallel workers do not retry in lockstep."""
        # right after an attempt that made progress the link was fine a moment ago: come back quickly
        base = self.initial / 4 if self.misses == 0 else min(self.maximum, self.initial * 2.0 ** (self.misses - 1))
        return float(base * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto

    def retrying(self, what: str) -> Retrying:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if exc is None:
                return
            log.warning("%s: %s; retrying (%d without progress)", what, netcause.short(exc), self.misses)
            log.debug("%s: %s", what, exc)   # the libraries' full text, for the log file

        return Retrying(retry=retry_if_exception(self.transient), stop=self.stop, wait=self.wait, reraise=True,
                        before_sleep=before_sleep)
