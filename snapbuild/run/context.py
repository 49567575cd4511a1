"""A build: named, timed steps over one context that owns every undo (DESIGN rules 1, 2, 8).

Every builder runs inside `running_build`: it announces the build, and on failure or interrupt reports the
failing step, then undoes everything in reverse or, with --keep-on-failure, keeps it and says exactly how to
get in and how to remove it afterwards. A resource enters the build through `own` (its reference is known
before it exists: a path, a process marker) or `track` (a cloud create whose id only the create returns):
ledger first, undo at once, struck from the ledger once undone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from snapbuild.ledger import Ledger, new_build_id
from snapbuild.run.interrupts import interrupts_as_keyboardinterrupt, shielded
from snapbuild.run.monitor import Monitor, TerminalMonitor

log = logging.getLogger(__name__)

T = TypeVar("T")
SETTLE_POLL_S = 2.0   # how often a settling sweep looks again
Choice = Literal["cleanup", "retry", "keep"]
OnError = Literal["cleanup", "abort", "ask"]
# Asks the operator what to do about failed step `name` (retry offered only when it can be retried).
Asker = Callable[[str, bool], Choice]

# Kept for the callers that only print: the terminal monitor is the human side of the Monitor protocol.
Reporter = TerminalMonitor


@dataclass(frozen=True)
class StepTiming:
    name: str
    seconds: float
    ok: bool


class Undo:
    """One registered undo. `release` hands the resource over (it is the build's result); `now` undoes it
    mid-build (a server deleted before its volume is uploaded)."""

    def __init__(self, ctx: BuildContext, description: str, func: Callable[[], None],
                 forget: tuple[str, str] | None) -> None:
        self.ctx = ctx
        self.description = description
        self.func = func
        self.forget = forget
        self.done = False

    def __call__(self) -> None:
        """As part of the build's cleanup: logs, and never raises over the original error."""
        if self.done:
            return
        log.info("undo: %s", self.description)
        try:
            self.func()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on; the error is logged and reported
            log.error("undo of %s failed: %s", self.description, exc)
            self.ctx.kept.append(f"{self.description} (undo failed: {exc})")
            return
        self._gone("removed")

    def now(self) -> None:
        """Undo it now, as a step of the build: a failure here is the build's failure."""
        if not self.done:
            log.info("undo now: %s", self.description)
            self.func()
            self._gone("removed")

    def release(self) -> None:
        """The resource is the build's result: not undone, no longer in the ledger."""
        if not self.done:
            self._gone("released")

    def _gone(self, event: str) -> None:
        self.done = True
        if self.forget is not None:
            self.ctx.ledger.forget(*self.forget)
            if event == "released":
                self.ctx.monitor.resource("released", *self.forget)
            else:
                self.ctx.monitor.resource("removed", *self.forget)


def sweep_after_failed_create(kind: str, label: str, failure: BaseException, sweep: Callable[[], list[str]],
                              delete: Callable[[str], None], *, settle_s: float = 0.0,
                              unsettled: Callable[[BaseException], bool] = lambda exc: True) -> None:
    """A create that failed mid-air may still have made the thing: `sweep` finds it by its label and it is deleted;
    again every SETTLE_POLL_S until `settle_s` when `unsettled(failure)` (the service may still be carrying out a
    request the client gave up on; its own refusal made nothing, so one look is enough)."""
    window = settle_s if settle_s > 0 and unsettled(failure) else 0.0
    deadline = time.monotonic() + window
    if window > 0:
        log.info("looking for a half-made %s %s for up to %.0f s", kind, label, window)
    while True:
        for rid in sweep():
            log.warning("the failed create of %s %s still made %s: deleting it", kind, label, rid)
            delete(rid)
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(SETTLE_POLL_S, left))   # the service may still be making it


def create_once(kind: str, label: str, create: Callable[[], T], sweep: Callable[[], list[str]],
                delete: Callable[[str], None], *, settle_s: float = 0.0,
                unsettled: Callable[[BaseException], bool] = lambda exc: True) -> T:
    """Create once outside a build's ledger (a catalogue's claim, a copy's record): what a failed create still made
    is swept as `BuildContext.track` sweeps it; the caller undoes what it gets."""
    try:
        return create()
    except BaseException as failure:
        try:
            sweep_after_failed_create(kind, label, failure, sweep, delete, settle_s=settle_s, unsettled=unsettled)
        except Exception as exc:  # noqa: BLE001 - the create's error is the one to show
            log.error("could not check for a half-made %s %s: %s (snapbuild cleanup removes it)", kind, label, exc)
        raise


@dataclass
class BuildContext:
    """Everything one build shares: its id, ledger, undo stack, monitor and timings."""

    build_id: str
    ledger: Ledger
    monitor: Monitor
    cleanup_command: str = ""           # how to remove what a failed or kept build left
    log_path: Path | None = None
    keep_on_failure: bool = False       # --on-error abort (or the operator chose "keep" when asked)
    # --on-error ask: how to ask the operator at a failed step; None when nobody can be asked (no terminal).
    ask: Asker | None = None
    undo: ExitStack = field(default_factory=ExitStack)
    timings: list[StepTiming] = field(default_factory=list)
    current_step: str | None = None
    kept: list[str] = field(default_factory=list)          # undo failures, reported at the end
    # Called only when a failed build is kept: each makes the builder reachable (writes the key file) and
    # returns the lines that say how to get in.
    on_keep: list[Callable[[], list[str]]] = field(default_factory=list)
    # Called on failure before anything is undone (the console of a server that still exists).
    on_failure: list[Callable[[BaseException], None]] = field(default_factory=list)
    outcome: dict[str, Any] = field(default_factory=dict)  # the result event's fields, set by the builder
    _asked: set[int] = field(default_factory=set)          # failures already put to the operator
    _access_shown: bool = False

    @contextlib.contextmanager
    def step(self, name: str, *, retried_by_caller: bool = False) -> Iterator[None]:
        # The step is current before it is announced: an interrupt right after the heading names it.
        previous, self.current_step = self.current_step, name
        self.monitor.step_started(name)
        start = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        except Exception as exc:
            if not retried_by_caller:
                self._decide(name, exc, can_retry=False)
            raise
        finally:
            seconds = time.monotonic() - start
            self.monitor.step_finished(name, seconds, ok)
            self.timings.append(StepTiming(name, seconds, ok))
            log.info("step %s %s in %.1f s", name, "done" if ok else "FAILED", seconds)
            if ok:
                self.current_step = previous

    def attempt(self, name: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A step that can be tried again: with --on-error ask, the operator may fix the cause (logged into the
        builder) and retry it instead of losing the build."""
        while True:
            try:
                with self.step(name, retried_by_caller=True):
                    return func(*args, **kwargs)
            except Exception as exc:
                if self._decide(name, exc, can_retry=True) != "retry":
                    raise
                self._asked.discard(id(exc))

    def _decide(self, name: str, exc: Exception, *, can_retry: bool) -> Choice:
        """Put a failure to the operator once (--on-error ask); 'keep' turns into --on-error abort."""
        if self.ask is None or id(exc) in self._asked:
            return "cleanup"
        self._asked.add(id(exc))
        self.monitor.line(f"step {name!r} failed: {_describe(exc)}")
        for report in self.on_failure:
            try:
                report(exc)
            except Exception as err:  # noqa: BLE001 - a report must not hide the real error
                log.warning("failure report: %s", err)
        if not self._access_shown:
            self._access_shown = True
            for hook in self.on_keep:
                try:
                    for line in hook():
                        self.monitor.line(line)
                except Exception as err:  # noqa: BLE001 - asking goes on without the login hint
                    log.warning("could not say how to reach the builder: %s", err)
        choice = self.ask(name, can_retry)
        log.info("step %s failed; the operator chose %s", name, choice)
        if choice == "keep":
            self.keep_on_failure = True
        return choice

    def add_undo(self, description: str, func: Callable[..., Any], *args: Any,
                 forget: tuple[str, str] | None = None, **kwargs: Any) -> Undo:
        """Register an undo that logs and never raises over the original error; `forget=(kind, ref)` strikes
        the ledger entry once the undo has succeeded."""
        undo = Undo(self, description, lambda: func(*args, **kwargs), forget)
        self.undo.callback(undo)
        return undo

    def own(self, kind: str, ref: str, description: str, func: Callable[..., Any], *args: Any,
            **info: Any) -> Undo:
        """A resource whose reference is known before it exists: undo first, then the ledger, then the caller
        makes it; an interrupt anywhere in between leaves neither an orphan entry nor an orphan resource."""
        undo = self.add_undo(description, func, *args, forget=(kind, str(ref)))
        self.ledger.record(kind, str(ref), **info)
        self.monitor.resource("created", kind, str(ref), name=description)
        return undo

    def track(self, kind: str, label: str, create: Callable[[], T], sweep: Callable[[], list[str]],
              delete: Callable[[str], None], *, description: str | None = None,
              settle_s: float = 0.0, unsettled: Callable[[BaseException], bool] = lambda exc: True
              ) -> tuple[T, Undo]:
        """Create once, with the ledger entry before and the undo at once. A create that fails mid-air may still
        have made the thing: `sweep` finds it by its label and it is deleted. `settle_s`: for a create the service
        may still be carrying out after the client gave up (Ctrl-C during the request), sweep again until then;
        `unsettled(exc)` says whether the failure leaves that open (the caller knows its service's answers: a
        definitive refusal made nothing, so one look is enough)."""
        pending = f"pending:{label}"
        self.ledger.record(kind, pending, name=label)
        try:
            made = create()
        except BaseException as failure:
            try:
                sweep_after_failed_create(kind, label, failure, sweep, delete, settle_s=settle_s,
                                          unsettled=unsettled)
                self.ledger.forget(kind, pending)
            except Exception as exc:  # noqa: BLE001 - the create's error is the one to show
                log.error("could not check for a half-made %s %s: %s (the ledger keeps it)", kind, label, exc)
            raise
        rid = made if isinstance(made, str) else str(getattr(made, "id"))  # noqa: B009 - str or a model
        self.ledger.record(kind, rid, name=label)
        self.ledger.forget(kind, pending)
        undo = self.add_undo(description or f"{kind.replace('_', ' ')} {rid}", delete, rid, forget=(kind, rid))
        self.monitor.resource("created", kind, rid, name=label)
        return made, undo


def new_context(*, builder: str, recipe: str, monitor: Monitor, cleanup_command: str,
                on_error: OnError = "cleanup", ask: Asker | None = None, log_path: Path | None = None,
                build_id: str | None = None) -> BuildContext:
    """`ask` is used only with on_error="ask"; without one (no terminal) the build cleans up and says so."""
    build_id = build_id or new_build_id()
    ledger = Ledger.create(build_id=build_id, builder=builder, recipe=recipe)
    if on_error == "ask" and ask is None:
        monitor.warning("--on-error ask: there is no terminal to ask on; a failure is cleaned up")
    return BuildContext(build_id=build_id, ledger=ledger, monitor=monitor, keep_on_failure=on_error == "abort",
                        ask=ask if on_error == "ask" else None, log_path=log_path,
                        cleanup_command=cleanup_command.format(build_id=build_id))


@contextlib.contextmanager
def running_build(ctx: BuildContext, *, builder: str | None = None, recipe: str | None = None,
                  variant: str | None = None) -> Iterator[BuildContext]:
    """Own the build's undo stack: on success close it, on failure undo everything (or keep it)."""
    data = ctx.ledger.data
    ctx.monitor.build_started(build_id=ctx.build_id, builder=builder or str(data.get("builder")),
                              recipe=recipe or str(data.get("recipe")), variant=variant)
    with interrupts_as_keyboardinterrupt():
        try:
            yield ctx
        except BaseException as exc:
            _report_failure(ctx, exc)
            if ctx.keep_on_failure:
                ctx.undo.pop_all()
                ctx.ledger.finish("failed-kept")
                _report_kept(ctx)
            else:
                with shielded(ctx.monitor):
                    ctx.monitor.step_started("clean up")
                    start = time.monotonic()
                    ctx.undo.close()
                    ctx.monitor.step_finished("clean up", time.monotonic() - start, not ctx.kept)
                ctx.ledger.finish("failed")
                ctx.ledger.remove_if_clean()
                _report_leftovers(ctx)
            if ctx.log_path:
                ctx.monitor.line(f"full log: {ctx.log_path}")
            ctx.monitor.result(False, {"step": ctx.current_step, "error": _describe(exc),
                                       "kept": ctx.keep_on_failure, "leftovers": list(ctx.kept)})
            raise
        else:
            # Temporary resources go before the build reports success (the builder server, QEMU, mounts).
            with shielded(ctx.monitor):
                try:
                    with ctx.step("clean up"):
                        ctx.undo.close()
                finally:
                    ctx.undo.close()        # a no-op unless the step itself could not start
            ctx.ledger.finish("done")
            ctx.ledger.remove_if_clean()
            for leftover in ctx.kept:
                ctx.monitor.warning(f"not removed: {leftover}")
            if ctx.kept:
                ctx.monitor.line(f"retry the removal with: {ctx.cleanup_command}")
            ctx.monitor.result(True, {**ctx.outcome, "leftovers": list(ctx.kept)})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(getattr(exc, "message", None) or exc) or type(exc).__name__


def _report_failure(ctx: BuildContext, exc: BaseException) -> None:
    if id(exc) in ctx._asked:
        return      # the operator has seen it all when asked
    what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {_describe(exc)}"
    ctx.monitor.line(f"step {ctx.current_step or '?'!r} {what}")
    for hook in ctx.on_failure:
        try:
            hook(exc)
        except Exception as err:  # noqa: BLE001 - a report must not hide the real error
            log.warning("failure report: %s", err)


def _report_kept(ctx: BuildContext) -> None:
    entries = [e for e in ctx.ledger.entries() if not e.ref.startswith("pending:")]
    ctx.monitor.line("kept for debugging (--keep-on-failure):")
    for entry in entries:
        ctx.monitor.line(f"  {entry.kind} {entry.ref} {entry.info.get('name', '')}".rstrip())
        ctx.monitor.resource("kept", entry.kind, entry.ref, name=str(entry.info.get("name", "")))
    for hook in [] if ctx._access_shown else ctx.on_keep:
        try:
            for line in hook():
                ctx.monitor.line(line)
        except Exception as err:  # noqa: BLE001 - the kept resources are listed either way
            log.warning("could not say how to reach the kept builder: %s", err)
    ctx.monitor.line(f"remove them with: {ctx.cleanup_command}")


def _report_leftovers(ctx: BuildContext) -> None:
    for leftover in ctx.kept:
        ctx.monitor.line(f"NOT removed: {leftover}")
    if ctx.kept:
        ctx.monitor.line(f"retry the removal with: {ctx.cleanup_command}")

