"""A resumable HTTP download: parallel Range requests into one preallocated file, one stream when the server
ignores Range, and a small JSON state of completed ranges beside the `.part` file so an interrupted download
(dropped connection, Ctrl-C, kill -9) continues where it stopped."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import requests

from snapbuild import netcause
from snapbuild.errors import BuildError, UserError
from snapbuild.run.monitor import Monitor
from snapbuild.run.progress import Progress, progress
from snapbuild.transfer.backoff import ProgressBackoff

log = logging.getLogger(__name__)

MiB = 1024 * 1024
_BLOCK = 256 * 1024


@dataclass(frozen=True, kw_only=True)
class DownloadSettings:
    connections: int = 4
    chunk_bytes: int = 16 * MiB           # unit of work handed to a connection
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    attempts: int = 8                     # consecutive attempts WITHOUT progress before giving up
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    progress_every: float = 5.0           # seconds between saves of the completed ranges


@dataclass(frozen=True, kw_only=True)
class DownloadStats:
    size: int
    received: int                         # body bytes received in this call (what the server sent us)
    seconds: float
    parallel: bool                        # False when the server ignored Range


class _Transient(Exception):
    """A failure worth retrying: connection error/reset/timeout, a 5xx, a short body."""


class _RangeIgnored(Exception):
    """The server answered a Range request with the whole file (200)."""


class Unreachable(UserError):
    """The first connection to a URL's server was refused, or its host name does not exist: the address is
    wrong (or the server is down), which no retry fixes. Once a server has answered, the same failure is a
    flaky link and is retried like any other drop."""

    def __init__(self, url: str, cause: netcause.Cause, *, hint: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if cause.kind is netcause.Kind.NO_SUCH_HOST:
            why = f"host name {parts.hostname!r} not found"
        else:
            why = f"{parts.netloc} refused the connection (nothing listens on that port)"
        super().__init__(f"cannot reach {url}: {why}",
                         hint=hint or "check the address: host name, port, and that a web server runs there")
        self.url, self.cause = url, cause


def _fail_fast(url: str, exc: BaseException) -> None:
    """Raise Unreachable when a first connection failed in a way no retry can fix."""
    cause = netcause.cause_of(exc)
    if cause.kind in netcause.WRONG_ADDRESS:
        raise Unreachable(url, cause) from exc


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, _Transient | requests.ConnectionError | requests.Timeout
                      | requests.exceptions.ChunkedEncodingError)


def _check_status(resp: requests.Response, url: str) -> None:
    if resp.status_code == 404:
        raise UserError(f"not found (HTTP 404): {url}", hint="check the image name, --url or --mirror")
    if resp.status_code >= 500:
        raise _Transient(f"HTTP {resp.status_code} from {url}")
    if resp.status_code >= 400:
        raise UserError(f"HTTP {resp.status_code} {resp.reason} for {url}")


def _backoff(settings: DownloadSettings, progress: Callable[[], int]) -> ProgressBackoff:
    return ProgressBackoff(attempts=settings.attempts, initial=settings.backoff_initial,
                           maximum=settings.backoff_max, progress=progress, transient=_transient)


class RangeState:
    """Completed byte ranges of a `.part` file, kept in `<part>.json`; merged, half-open [start, end)."""

    def __init__(self, path: Path, *, url: str, key: str, size: int) -> None:
        self.path, self.url, self.key, self.size = path, url, key, size
        self.done: list[list[int]] = []
        self.lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, *, url: str, key: str, size: int) -> RangeState:
        state = cls(path, url=url, key=key, size=size)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            if data["url"] == url and data["key"] == key and data["size"] == size:
                state.done = [[int(a), int(b)] for a, b in data["done"]]
        return state

    def add(self, start: int, end: int) -> None:
        with self.lock:
            spans = sorted([*self.done, [start, end]])
            merged: list[list[int]] = []
            for a, b in spans:
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            self.done = merged

    def completed(self) -> int:
        with self.lock:
            return sum(b - a for a, b in self.done)

    def missing(self) -> list[tuple[int, int]]:
        with self.lock:
            gaps, pos = [], 0
            for a, b in self.done:
                if a > pos:
                    gaps.append((pos, a))
                pos = max(pos, b)
            if pos < self.size:
                gaps.append((pos, self.size))
            return gaps

    def save(self) -> None:
        with self.lock:
            data = {"url": self.url, "key": self.key, "size": self.size, "done": self.done}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)  # atomic: a kill -9 leaves the old or the new state, never half


def _split(gaps: list[tuple[int, int]], chunk: int) -> Iterator[tuple[int, int]]:
    for a, b in gaps:
        for start in range(a, b, chunk):
            yield start, min(start + chunk, b)


class Downloader:
    """One download of `url` into `part` (+ `part.json`); `run()` returns when every byte is there."""

    def __init__(self, url: str, part: Path, *, key: str, settings: DownloadSettings,
                 monitor: Monitor | None = None) -> None:
        self.url, self.part, self.key, self.settings = url, part, key, settings
        self.state_path = part.with_name(part.name + ".json")
        self.monitor = monitor
        self._bar: Progress | None = None     # the running download's bar (workers update it)
        self.received = 0
        self._received_lock = threading.Lock()
        self._local = threading.local()
        self._cancel = threading.Event()
        self._answered = threading.Event()

    def _session(self) -> requests.Session:
        # requests.Session is not thread-safe: one per worker thread
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _get(self, headers: dict[str, str]) -> requests.Response:
        try:
            resp = self._session().get(self.url, headers=headers, stream=True,
                                       timeout=(self.settings.connect_timeout, self.settings.read_timeout))
        except requests.ConnectionError as exc:
            if not self._answered.is_set():
                _fail_fast(self.url, exc)
            raise
        self._answered.set()   # from now on a refused connection is a server restart or a flaky link
        return resp

    def _count(self, n: int) -> None:
        with self._received_lock:
            self.received += n
        if self._bar is not None:
            self._bar.update(n)

    def _say(self, text: str) -> None:
        if self.monitor is not None:
            self.monitor.line(text)
        else:
            log.info("%s", text)

    def probe(self) -> tuple[int | None, bool]:
        """(size, ranges supported) from a one-byte Range request."""
        backoff = _backoff(self.settings, lambda: 0)
        for attempt in backoff.retrying(f"probe {self.url}"):
            with attempt:
                with contextlib.closing(self._get({"Range": "bytes=0-0"})) as resp:
                    _check_status(resp, self.url)
                    total = re.fullmatch(r"bytes 0-0/(\d+)", resp.headers.get("Content-Range", ""))
                    if resp.status_code == 206 and total:
                        return int(total.group(1)), True
                    length = resp.headers.get("Content-Length")
                    return (int(length) if length and length.isdigit() else None), False
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    def run(self) -> DownloadStats:
        try:
            return self._run()
        except Exception as exc:
            if not _transient(exc):
                raise
            done = ""
            if self.state_path.exists():
                done = " (what arrived is kept: rerun the same command to resume)"
            raise BuildError(f"download of {self.url} failed after {self.settings.attempts} attempts without "
                             f"progress: {netcause.short(exc)}{done}",
                             hint="check the network or try another --mirror") from exc

    def _run(self) -> DownloadStats:
        started = time.monotonic()
        self.part.parent.mkdir(parents=True, exist_ok=True)
        size, ranges = self.probe()
        if ranges and size is not None:
            try:
                self._ranged(size)
                return DownloadStats(size=size, received=self.received, seconds=time.monotonic() - started,
                                     parallel=True)
            except _RangeIgnored:
                log.warning("%s stopped honouring Range requests; downloading in one stream", self.url)
        log.info("%s: server ignores Range requests; one stream, no resume", self.url)
        total = self._single()
        return DownloadStats(size=total, received=self.received, seconds=time.monotonic() - started,
                             parallel=False)

    # -- parallel ranges -------------------------------------------------------------------------------------
    def _ranged(self, size: int) -> None:
        state = RangeState.load(self.state_path, url=self.url, key=self.key, size=size)
        if state.done and not (self.part.exists() and self.part.stat().st_size == size):
            state.done = []  # the state outlived its data file
        if state.done:
            self._say(f"resuming: {state.completed() / MiB:.1f} of {size / MiB:.1f} MiB already here")
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, 0)
                with contextlib.suppress(OSError):  # preallocate where the filesystem can
                    os.posix_fallocate(fd, 0, size)
                os.ftruncate(fd, size)
            state.save()
            chunks = list(_split(state.missing(), self.settings.chunk_bytes))
            workers = max(1, min(self.settings.connections, len(chunks)))
            with (progress(self.monitor, "download", total=size, initial=state.completed()) as self._bar,
                  ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch") as pool):
                futures: set[Future[None]] = {pool.submit(self._chunk, fd, state, a, b) for a, b in chunks}
                try:
                    self._watch(futures, state)
                finally:
                    self._cancel.set()
                    for f in futures:
                        f.cancel()
                    pool.shutdown(wait=True)
                    state.save()
                    self._bar = None
            for f in futures:
                error = None if f.cancelled() else f.exception()
                if error is not None:
                    raise error  # a worker failure (the others were cancelled because of it)
        finally:
            os.close(fd)

    def _watch(self, futures: set[Future[None]], state: RangeState) -> None:
        """Wait for the workers, saving the state of completed ranges every `progress_every` (the bar moves with
        every block the workers write)."""
        pending = futures
        while pending:
            finished, pending = wait(pending, timeout=self.settings.progress_every, return_when=FIRST_EXCEPTION)
            if any(f.exception() for f in finished):
                return
            state.save()

    def _chunk(self, fd: int, state: RangeState, start: int, end: int) -> None:
        pos = [start]
        backoff = _backoff(self.settings, lambda: pos[0])
        for attempt in backoff.retrying(f"bytes {start}-{end - 1}"):
            with attempt:
                self._range_once(fd, state, pos, end)

    def _range_once(self, fd: int, state: RangeState, pos: list[int], end: int) -> None:
        if self._cancel.is_set():
            return
        with contextlib.closing(self._get({"Range": f"bytes={pos[0]}-{end - 1}"})) as resp:
            _check_status(resp, self.url)
            if resp.status_code != 206:
                raise _RangeIgnored
            for data in resp.iter_content(_BLOCK):
                if self._cancel.is_set():
                    return
                data = data[: end - pos[0]]
                os.pwrite(fd, data, pos[0])
                self._count(len(data))
                state.add(pos[0], pos[0] + len(data))
                pos[0] += len(data)
                if pos[0] >= end:
                    return
        if pos[0] < end:
            raise _Transient(f"short read at byte {pos[0]} of range ending {end}")

    # -- one stream ------------------------------------------------------------------------------------------
    def _single(self) -> int:
        self.state_path.unlink(missing_ok=True)
        backoff = _backoff(self.settings, lambda: self.received)
        for attempt in backoff.retrying(self.url):
            with attempt:
                return self._single_once()
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    def _single_once(self) -> int:
        written = 0
        with contextlib.closing(self._get({})) as resp, self.part.open("wb") as out:
            _check_status(resp, self.url)
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with progress(self.monitor, "download", total=total) as self._bar:
                try:
                    for data in resp.iter_content(_BLOCK):
                        out.write(data)
                        written += len(data)
                        self._count(len(data))
                finally:
                    self._bar = None
        if length and length.isdigit() and written != int(length):
            raise _Transient(f"short read: {written} of {length} bytes")
        return written


def fetch_text(url: str, settings: DownloadSettings) -> str:
    """A small file (SHA256SUMS), retried like the image itself; 404 is a UserError naming the URL."""
    backoff = _backoff(settings, lambda: 0)
    answered = False
    try:
        for attempt in backoff.retrying(url):
            with attempt:
                try:
                    resp = requests.get(url, timeout=(settings.connect_timeout, settings.read_timeout))
                except requests.ConnectionError as exc:
                    if not answered:
                        _fail_fast(url, exc)
                    raise
                answered = True
                _check_status(resp, url)
                return resp.text
    except Exception as exc:
        if _transient(exc):
            raise BuildError(f"cannot fetch {url}: {netcause.short(exc)}",
                             hint="check the network or try another --mirror") from exc
        raise
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True
