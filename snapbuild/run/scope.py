"""A nested undo scope: resources that must go away in the middle of a build (mounts before compaction).

It has the same `add_undo` as BuildContext, so attach/mount code works against either. Leaving the
block runs its undos in reverse; on success an undo that fails is an error (nothing to hide it behind),
on failure it is logged and the original error goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

from snapbuild.errors import BuildError
from snapbuild.ledger import Ledger
from snapbuild.run.interrupts import shielded
from snapbuild.run.monitor import Monitor

log = logging.getLogger(__name__)


class Scope(Protocol):
    @property
    def ledger(self) -> Ledger | None: ...

    def add_undo(self, description: str, func: Callable[..., Any], *args: Any,
                 forget: tuple[str, str] | None = None, **kwargs: Any) -> object: ...


class UndoScope:
    """An ExitStack of logged undos that strike their ledger entries once done."""

    def __init__(self, ledger: Ledger | None) -> None:
        self.ledger = ledger
        self.stack = ExitStack()
        self.failures: list[str] = []
        self.descriptions: list[str] = []

    def add_undo(self, description: str, func: Callable[..., Any], *args: Any,
                 forget: tuple[str, str] | None = None, **kwargs: Any) -> None:
        def undo() -> None:
            log.info("undo: %s", description)
            try:
                func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the other undos must still run
                log.error("undo of %s failed: %s", description, exc)
                self.failures.append(f"{description}: {exc}")
                return
            if forget is not None and self.ledger is not None:
                self.ledger.forget(*forget)

        self.stack.callback(undo)
        self.descriptions.append(description)


@contextmanager
def undo_scope(ledger: Ledger | None, *, keep_on_failure: bool | Callable[[], bool] = False,
               monitor: Monitor | None = None) -> Iterator[UndoScope]:
    """Run the block; undo everything it registered when it ends (or keep it, on failure, if asked)."""
    scope = UndoScope(ledger)
    try:
        yield scope
    except BaseException:
        # A callable: decided at the failure (the operator may choose to keep, with --on-error ask).
        if keep_on_failure() if callable(keep_on_failure) else keep_on_failure:
            scope.stack.pop_all()
            for description in scope.descriptions:
                log.warning("kept for debugging: %s", description)
                if monitor:
                    monitor.line(f"kept: {description}")
        else:
            with shielded(monitor):
                scope.stack.close()
        raise
    with shielded(monitor):
        close(scope)


def close(scope: UndoScope) -> None:
    """Undo everything now (the success path, as a build step); an undo that failed is an error."""
    scope.stack.close()
    if scope.failures:
        failures, scope.failures = scope.failures, []
        raise BuildError("cleanup failed: " + "; ".join(failures),
                         hint="`snapbuild cleanup --host` removes what is left")
