"""`snapbuild apply`: make the clouds match the catalogue — build what is missing, publish copies, rotate.

    plan (planner.py) ─► builds, in parallel within the limits, each claimed in Glance first (claims.py) and each
    the same leak-proof build as `snapbuild build` ─► copies to the receiving targets as their sources finish
    (copying.py) ─► rotation of every entry × target whose current image exists (rotation.py) ─► summary

An interrupt (Ctrl-C, TERM, HUP) reaches every running job as KeyboardInterrupt, so each build runs its own undo
and each copy deletes its partial image; the main thread waits for them with further interrupts ignored. What
an interrupted or failed apply leaves undone, the next apply does: it plans from what the clouds hold.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from snapbuild.catalogue import claims, copying, rotation
from snapbuild.catalogue.model import (
    DIGEST_PROPERTY,
    ENTRY_PROPERTY,
    HIDDEN_AT_PROPERTY,
    Catalogue,
    HostBuilt,
    HostImage,
    Target,
)
from snapbuild.catalogue.planner import CataloguePlan, Clouds, Connect, Item
from snapbuild.errors import SnapbuildError
from snapbuild.run.interrupts import shielded
from snapbuild.run.monitor import Monitor, TerminalMonitor

if TYPE_CHECKING:
    from snapbuild.openstack.cloud import Cloud
    from snapbuild.openstack.settings import SnapshotResult, SnapshotSettings
    from snapbuild.plan import Plan

log = logging.getLogger(__name__)

Builder = Callable[["SnapshotSettings", "Plan", Monitor, "Cloud"], "SnapshotResult"]
# A local or chroot target's build on this host and its upload (hostbuild.build_on_host; the CLI hands it over).
HostBuilder = Callable[[Target, "Plan", HostImage, Monitor, "Cloud"], HostBuilt]
SUMMARY_COLUMNS = ("entry", "target", "action", "image_id", "seconds", "detail")


def snapshot_builder(settings: SnapshotSettings, plan: Plan, monitor: Monitor, cloud: Cloud) -> SnapshotResult:
    from snapbuild.openstack.snapshot import build_snapshot

    return build_snapshot(settings, plan, monitor, cloud=cloud)


@dataclass(frozen=True, kw_only=True)
class Done:
    entry: str
    target: str
    action: str             # built | copied | skipped | hidden | deleted | kept | failed | untouched
    image_id: str | None
    seconds: float
    detail: str

    def row(self) -> dict[str, Any]:
        return {"entry": self.entry, "target": self.target, "action": self.action, "image_id": self.image_id,
                "seconds": round(self.seconds, 1), "detail": self.detail}


@dataclass
class Report:
    done: list[Done] = field(default_factory=list)

    @property
    def failed(self) -> list[Done]:
        return [d for d in self.done if d.action == "failed"]

    def rows(self) -> list[dict[str, Any]]:
        return [d.row() for d in self.done]


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """What a run needs besides the catalogue and its plan (injectable: tests pass fakes and a fake clock)."""

    connect: Connect
    builder: Builder = snapshot_builder
    host_builder: HostBuilder | None = None      # None: a local or chroot target fails, saying so
    monitor_for: Callable[[str], Monitor] = lambda key: _JobMonitor(key)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    sleep: Callable[[float], None] = time.sleep
    apply_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    copy_timeout: float = 3600.0


class _JobMonitor(TerminalMonitor):
    """The terminal's output, each line prefixed with its job (jobs run side by side)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def _print(self, text: str) -> None:
        super()._print(f"[{self.key}] {text}")


class _Limits:
    """At most `per_cloud` jobs at once on one cloud (the pool's size is the overall limit)."""

    def __init__(self, per_cloud: int) -> None:
        self.per_cloud = per_cloud
        self._lock = threading.Lock()
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    @contextlib.contextmanager
    def on(self, target: Target) -> Iterator[None]:
        with self._lock:
            sem = self._sems.setdefault(target.key, threading.BoundedSemaphore(self.per_cloud))
        with sem:
            yield


class Applier:
    def __init__(self, catalogue: Catalogue, plan: CataloguePlan, runtime: Runtime) -> None:
        self.catalogue = catalogue
        self.plan = plan
        self.rt = runtime
        self.limits = _Limits(catalogue.policy.per_cloud)
        self.report = Report()
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._results: dict[tuple[str, str], str] = {}      # (entry, target) → current image id
        self._started: set[tuple[str, str]] = set()          # copies handed to the pool
        for item in plan.items:
            if item.action == "skip" and item.image_id:
                self._results[(item.entry, item.target)] = item.image_id

    # ---- the whole run ---------------------------------------------------------------------------------------

    def run(self) -> Report:
        pool = ThreadPoolExecutor(max_workers=self.catalogue.policy.concurrency, thread_name_prefix="apply")
        futures: set[Future[None]] = set()
        try:
            for item in self.plan.items:
                if item.action in ("build", "wait"):
                    futures.add(pool.submit(self._job, item, self._build))
                elif item.action == "copy" and item.image_id:
                    futures.add(pool.submit(self._job, item, self._copy))
                elif item.action == "skip":
                    self._record(Done(entry=item.entry, target=item.target, action="skipped", image_id=item.image_id,
                                      seconds=0.0, detail=item.reason))
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    # a finished build lets its copies start
                for item in self._ready_copies():
                    futures.add(pool.submit(self._job, item, self._copy))
        except BaseException:
            self._stop(pool, futures)
            raise
        pool.shutdown(wait=True)
        self._unstarted_copies()
        self.rotate()
        return self.report

    def _stop(self, pool: ThreadPoolExecutor, futures: set[Future[None]]) -> None:
        """Interrupted: nothing new starts, every running job gets KeyboardInterrupt and runs its own undo."""
        for future in futures:
            future.cancel()
        with shielded():
            with self._lock:
                running = list(self._running)
            for ident in running:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))
            pool.shutdown(wait=True, cancel_futures=True)

    def _job(self, item: Item, work: Callable[[Item], Done]) -> None:
        ident = threading.get_ident()
        with self._lock:
            self._running.add(ident)
        started = time.monotonic()
        try:
            done = work(item)
        except SnapbuildError as exc:
            done = Done(entry=item.entry, target=item.target, action="failed", image_id=None,
                        seconds=time.monotonic() - started, detail=exc.message)
        except Exception as exc:
            log.exception("%s failed", item.key)
            done = Done(entry=item.entry, target=item.target, action="failed", image_id=None,
                        seconds=time.monotonic() - started, detail=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._running.discard(ident)
        self._record(done)

    def _record(self, done: Done) -> None:
        with self._lock:
            self.report.done.append(done)
            if done.action in ("built", "copied", "skipped") and done.image_id:
                self._results[(done.entry, done.target)] = done.image_id

    def _ready_copies(self) -> list[Item]:
        ready = []
        with self._lock:
            for item in self.plan.items:
                key = (item.entry, item.target)
                if item.action != "copy" or item.image_id or key in self._started:
                    continue
                source = self._results.get((item.entry, str(item.source)))
                if source:
                    self._started.add(key)
                    ready.append(replace(item, image_id=source))
        return ready

    def _unstarted_copies(self) -> None:
        for item in self.plan.items:
            if item.action == "copy" and not item.image_id and (item.entry, item.target) not in self._started:
                self._record(Done(entry=item.entry, target=item.target, action="failed", image_id=None, seconds=0.0,
                                  detail=f"not copied: {item.entry}@{item.source} has no image"))

    # ---- one build -----------------------------------------------------------------------------------------

    def _build(self, item: Item) -> Done:
        target = self.catalogue.target(item.target)
        entry = self.catalogue.entry(item.entry)
        started = time.monotonic()
        with self.limits.on(target):
            cloud = self.rt.connect(target)
            try:
                won = self._claim(cloud, target, item)
                if isinstance(won, Done):
                    return won
                try:
                    existing = self._current(cloud, item)
                    if existing:
                        return self._done(item, "skipped", existing, started, "made by another apply meanwhile")
                    plan = self.plan.plans[entry.name]
                    result = self._make(entry.name, target, plan, item, cloud)
                finally:
                    claims.release(cloud, won.id)
            finally:
                cloud.close()
        recorded = result.properties.get(DIGEST_PROPERTY)
        detail = f"digest {item.digest[:12]}"
        if recorded and recorded != item.digest:
            detail = f"digest {recorded[:12]} (planned {item.digest[:12]}: an input changed during the apply)"
        return self._done(item, "built", result.image_id, started, detail)

    def _make(self, entry_name: str, target: Target, plan: Plan, item: Item,
              cloud: Cloud) -> SnapshotResult | HostBuilt:
        """The image, made in the cloud (a snapshot build) or on this host and uploaded (local, chroot)."""
        monitor = self.rt.monitor_for(item.key)
        if not target.on_host:
            return self.rt.builder(self._settings(entry_name, target, plan, item), plan, monitor, cloud)
        if self.rt.host_builder is None:
            raise SnapbuildError(f"target {target.name}: builder {target.builder} is not available here")
        entry = self.catalogue.entry(entry_name)
        image = HostImage(name=self._image_name(entry_name, plan), visibility=entry.visibility,
                          properties={**entry.properties, ENTRY_PROPERTY: entry.name})
        return self.rt.host_builder(target, plan, image, monitor, cloud)

    def _image_name(self, entry_name: str, plan: Plan) -> str:
        entry = self.catalogue.entry(entry_name)
        return f"{entry.image_name or plan.image.name} {self.rt.now():%Y-%m-%d %H%M}"

    def _settings(self, entry_name: str, target: Target, plan: Plan, item: Item) -> SnapshotSettings:
        from snapbuild.openstack.settings import SnapshotSettings

        entry = self.catalogue.entry(entry_name)
        return SnapshotSettings(cloud=target.cloud, region=target.region,
                                base_image=(item.base or {}).get("id"),
                                image_name=self._image_name(entry_name, plan),
                                visibility=entry.visibility,
                                properties={**entry.properties, ENTRY_PROPERTY: entry.name},
                                **dict(target.build))

    # ---- one copy ------------------------------------------------------------------------------------------

    def _copy(self, item: Item) -> Done:
        target = self.catalogue.target(item.target)
        source = self.catalogue.target(str(item.source))
        entry = self.catalogue.entry(item.entry)
        started = time.monotonic()
        assert item.image_id
        with self.limits.on(target):
            dest = self.rt.connect(target)
            src = self.rt.connect(source)
            try:
                won = self._claim(dest, target, item)
                if isinstance(won, Done):
                    return won
                try:
                    existing = self._current(dest, item)
                    if existing:
                        return self._done(item, "skipped", existing, started, "copied by another apply meanwhile")
                    image = src.image_data(item.image_id)
                    if item.store:
                        copied = copying.glance_copy(dest, image, item.store, self.rt.copy_timeout)
                    else:
                        copied = copying.stream_copy(src, image, dest, build_id=self.rt.apply_id,
                                                     visibility=entry.visibility, timeout=self.rt.copy_timeout)
                finally:
                    claims.release(dest, won.id)
            finally:
                dest.close()
                src.close()
        return self._done(item, "copied", copied.image_id, started,
                          f"{copied.method} from {source.name} ({copied.bytes} bytes"
                          + (f", sha256 {copied.sha256[:12]})" if copied.sha256 else ")"))

    # ---- shared by both ------------------------------------------------------------------------------------

    def _claim(self, cloud: Cloud, target: Target, item: Item) -> claims.Claim | Done:
        """The claim on `item`'s digest at `target`, or what to report when another apply has it (skip), or
        finished it while this one waited."""
        policy = self.catalogue.policy
        started = time.monotonic()
        while True:
            outcome = claims.take(cloud, digest=item.digest, target=target.name, owner=self.rt.apply_id,
                                  ttl_s=policy.claim_ttl_s, settle_s=policy.claim_settle_s, now=self.rt.now,
                                  sleep=self.rt.sleep)
            if outcome.won:
                assert outcome.mine is not None
                return outcome.mine
            holder = outcome.holder
            assert holder is not None
            if policy.on_claimed == "skip":
                return self._done(item, "skipped", None, started, f"claimed by apply {holder.owner}")
            self._wait_released(cloud, target, item, holder)
            existing = self._current(cloud, item)
            if existing:
                return self._done(item, "skipped", existing, started, f"made by apply {holder.owner}")

    def _wait_released(self, cloud: Cloud, target: Target, item: Item, holder: claims.Claim) -> None:
        while True:
            live = claims.winner(claims.claims_for(cloud, item.digest, target.name), self.rt.now())
            if live is None or live.id != holder.id:
                return
            self.rt.sleep(max(cloud.poll_interval, 10.0))

    def _current(self, cloud: Cloud, item: Item) -> str | None:
        images = [i for i in cloud.images_with(**{ENTRY_PROPERTY: item.entry})
                  if i.status == "active" and i.properties.get(DIGEST_PROPERTY) == item.digest
                  and rotation.not_ours(i, cloud.project_id) is None
                  and (not item.store or item.store in i.stores)]
        return max(images, key=lambda i: (i.created_at, i.id)).id if images else None

    def _done(self, item: Item, action: str, image_id: str | None, started: float, detail: str) -> Done:
        return Done(entry=item.entry, target=item.target, action=action, image_id=image_id,
                    seconds=time.monotonic() - started, detail=detail)

    # ---- rotation ------------------------------------------------------------------------------------------

    def rotate(self) -> None:
        """For every entry × target whose current image exists now: hide, delete, keep (with the reasons)."""
        clouds = Clouds(self.rt.connect)
        try:
            for item in self.plan.items:
                if (item.entry, item.target) not in self._results:
                    continue
                target = self.catalogue.target(item.target)
                cloud = clouds.of(target)
                started = time.monotonic()
                now = self.rt.now()
                for decision in rotation.decide(
                        clouds.entry_images(target, item.entry), project_id=cloud.project_id, digest=item.digest,
                        pending=False, keep=self.catalogue.policy.keep, grace_s=self.catalogue.policy.grace_period_s,
                        now=now, in_use=clouds.in_use(target)):
                    self._retire(cloud, item, decision, now, started)
        finally:
            clouds.close()

    def _retire(self, cloud: Cloud, item: Item, decision: rotation.Retirement, now: datetime,
                started: float) -> None:
        if decision.action == "keep" and decision.reason == "current":
            return
        action = {"hide": "hidden", "delete": "deleted", "keep": "kept"}.get(decision.action, decision.action)
        try:
            if decision.action == "hide":
                cloud.finish_image(decision.image_id, hidden=True,
                                   properties={HIDDEN_AT_PROPERTY: now.replace(microsecond=0).isoformat()})
            elif decision.action == "delete":
                cloud.delete_image(decision.image_id)
        except SnapbuildError as exc:
            action, detail = "failed", f"{decision.action}: {exc.message}"
        else:
            detail = decision.reason
        self._record(Done(entry=item.entry, target=item.target, action=action,
                          image_id=decision.image_id, seconds=time.monotonic() - started, detail=detail))


def apply_catalogue(catalogue: Catalogue, plan: CataloguePlan, runtime: Runtime) -> Report:
    return Applier(catalogue, plan, runtime).run()
