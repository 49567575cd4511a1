"""fetch-base against a real HTTP server on 127.0.0.1 that can honour or ignore Range, drop connections after
N bytes, fail with 5xx, and counts what it sends."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from snapbuild.errors import BuildError, UserError
from snapbuild.transfer.fetch import FetchRequest, cache_entry, fetch_base
from snapbuild.transfer.ranged import DownloadSettings

IMAGE_PATH = "/noble/current/noble-server-cloudimg-amd64.img"
SUMS_PATH = "/noble/current/SHA256SUMS"
FAST = DownloadSettings(connections=4, chunk_bytes=1024 * 1024, backoff_initial=0.01, backoff_max=0.05,
                        progress_every=0.2, connect_timeout=5, read_timeout=10)


@dataclass
class Behaviour:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None        # cut each image response after this many body bytes ...
    cuts_left: int = 0                  # ... this many times
    fail_5xx: int = 0                   # answer the next N image requests with 503
    dead_after: int | None = None       # once this many image bytes went out, answer 503 (a dead link)
    throttle: float = 0.0               # seconds per 64 KiB sent (a slow link)
    sent: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    active: int = 0
    max_active: int = 0
    rendezvous: int = 0                 # image ranges (not the probe) wait (10 s at most) for this many
    lock: threading.Lock = field(default_factory=threading.Lock)
    together: threading.Condition = field(default_factory=threading.Condition)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    behaviour: Behaviour

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        b = self.behaviour
        with b.lock:
            b.requests[self.path] = b.requests.get(self.path, 0) + 1
            b.active += 1
            b.max_active = max(b.max_active, b.active)
        if b.rendezvous and self.path == IMAGE_PATH and self.headers.get("Range", "bytes=0-0") != "bytes=0-0":
            # Parallel ranges meet here whatever the machine's load; sequential ones wait it out and fail below.
            with b.together:
                b.together.notify_all()
                b.together.wait_for(lambda: b.max_active >= b.rendezvous, timeout=10)
                b.together.notify_all()
        try:
            self._serve(b)
        finally:
            with b.lock:
                b.active -= 1

    def _serve(self, b: Behaviour) -> None:
        body = b.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        is_image = self.path == IMAGE_PATH
        with b.lock:
            dead = b.dead_after is not None and b.sent.get(self.path, 0) >= b.dead_after
            fail = is_image and (b.fail_5xx > 0 or dead)
            if fail and not dead:
                b.fail_5xx -= 1
        if fail:
            self.send_error(503)
            return
        start, end, status = 0, len(body), 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m and b.honour_range:
            start, end, status = int(m.group(1)), (int(m.group(2)) + 1 if m.group(2) else len(body)), 206
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        self.end_headers()
        limit = end - start
        with b.lock:
            if is_image and b.cut_after is not None and b.cuts_left > 0 and limit > b.cut_after:
                b.cuts_left -= 1
                limit = b.cut_after
        data = body[start:start + limit]
        try:
            for i in range(0, len(data), 64 * 1024):
                piece = data[i:i + 64 * 1024]
                self.wfile.write(piece)
                if b.throttle:
                    time.sleep(b.throttle)  # the slow link being simulated, not a wait for a condition
                with b.lock:
                    b.sent[self.path] = b.sent.get(self.path, 0) + len(piece)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if limit < end - start:  # drop the connection mid-body
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hanging up on a cut response is expected here


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    handler = type("H", (Handler,), {"behaviour": behaviour})
    httpd = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SNAPBUILD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def publish(b: Behaviour, size: int, *, digest: str | None = None) -> bytes:
    image = os.urandom(size)
    b.files[IMAGE_PATH] = image
    b.files[SUMS_PATH] = (f"{'0' * 64} *other.img\n"
                          f"{digest or hashlib.sha256(image).hexdigest()} *noble-server-cloudimg-amd64.img\n").encode()
    return image


def test_parallel_ranges_fill_one_file_and_verify(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    image = publish(b, 6 * 1024 * 1024 + 123)
    b.rendezvous = 2
    result = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url, output=tmp_path / "noble.img"),
                        settings=FAST)
    assert (tmp_path / "noble.img").read_bytes() == image
    assert result.digest == hashlib.sha256(image).hexdigest() and not result.cached
    assert b.requests[IMAGE_PATH] >= 7 + 1          # 7 one-MiB ranges + the probe
    assert b.max_active > 1, "ranges were not fetched in parallel"
    assert b.sent[IMAGE_PATH] <= len(image) + 1     # each byte once (+ the probe's one byte)


def test_dropped_connections_resume_instead_of_restarting(server: tuple[str, Behaviour]) -> None:
    url, b = server
    image = publish(b, 5 * 1024 * 1024)
    b.cut_after, b.cuts_left = 300 * 1024, 12  # ~3 cuts per 1 MiB range are possible
    result = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=FAST)
    assert result.path.read_bytes() == image
    assert b.cuts_left == 0, "the server did not drop as often as asked"
    assert b.sent[IMAGE_PATH] <= 1.2 * len(image)


def test_interrupted_fetch_continues_in_the_next_call(server: tuple[str, Behaviour]) -> None:
    url, b = server
    image = publish(b, 4 * 1024 * 1024)
    b.cut_after, b.cuts_left = 256 * 1024, 10**6                 # the link keeps dropping ...
    b.dead_after = 1536 * 1024                                   # ... and then dies
    giving_up = DownloadSettings(connections=2, chunk_bytes=1024 * 1024, attempts=2, backoff_initial=0.01,
                                 progress_every=0.2)
    with pytest.raises(BuildError, match="rerun the same command to resume"):
        fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=giving_up)
    entry = cache_entry(f"{url}{IMAGE_PATH}", hashlib.sha256(image).hexdigest())
    part = entry.with_name(entry.name + ".part")
    assert part.exists() and part.with_name(part.name + ".json").exists()
    sent_before = b.sent[IMAGE_PATH]
    assert 0 < sent_before < len(image)
    b.cuts_left, b.dead_after = 0, None                           # ... then heals
    result = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=FAST)
    assert result.path.read_bytes() == image
    assert result.received <= len(image) - sent_before + 1       # only what was missing
    assert b.sent[IMAGE_PATH] <= 1.2 * len(image)
    assert not part.exists()


def test_server_that_ignores_range_gets_one_stream(server: tuple[str, Behaviour]) -> None:
    url, b = server
    image = publish(b, 3 * 1024 * 1024)
    b.honour_range = False
    result = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=FAST)
    assert result.path.read_bytes() == image
    # The probe, then one full stream: no parallel ranges. (How many were active at once is not asserted:
    # the server may still be writing the ignored probe's body when the stream starts.)
    assert b.requests[IMAGE_PATH] == 2


def test_5xx_is_retried(server: tuple[str, Behaviour]) -> None:
    url, b = server
    image = publish(b, 1024 * 1024)
    b.fail_5xx = 3
    result = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=FAST)
    assert result.path.read_bytes() == image and b.fail_5xx == 0


def test_wrong_checksum_is_refused_and_nothing_is_left(server: tuple[str, Behaviour], cache: Path,
                                                        tmp_path: Path) -> None:
    url, b = server
    publish(b, 2 * 1024 * 1024, digest="ab" * 32)
    with pytest.raises(BuildError, match="checksum mismatch") as err:
        fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url, output=tmp_path / "out.img"), settings=FAST)
    assert err.value.exit_code == 3
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert not (tmp_path / "out.img").exists()


def test_unchanged_checksums_mean_no_image_request(server: tuple[str, Behaviour], tmp_path: Path) -> None:
    url, b = server
    image = publish(b, 2 * 1024 * 1024)
    fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=FAST)
    before = b.requests[IMAGE_PATH]
    again = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url, output=tmp_path / "b.img"), settings=FAST)
    assert again.cached and b.requests[IMAGE_PATH] == before
    assert (tmp_path / "b.img").read_bytes() == image
    assert b.requests[SUMS_PATH] == 2


def test_new_checksum_downloads_again_and_drops_the_old_entry(server: tuple[str, Behaviour]) -> None:
    url, b = server
    publish(b, 1024 * 1024)
    first = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=FAST)
    publish(b, 1024 * 1024)  # the mirror publishes a new image (new SHA256SUMS)
    second = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=FAST)
    assert not second.cached and second.digest != first.digest
    assert not first.path.exists()


def test_404_is_a_user_error_naming_the_url_and_not_retried(server: tuple[str, Behaviour]) -> None:
    url, b = server
    with pytest.raises(UserError, match=re.escape(f"{url}{SUMS_PATH}")):
        fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url), settings=FAST)
    assert b.requests[SUMS_PATH] == 1


def test_debian_uses_sha512sums(server: tuple[str, Behaviour]) -> None:
    url, b = server
    image = os.urandom(1024 * 1024)
    b.files["/bookworm/latest/debian-12-genericcloud-amd64.qcow2"] = image
    b.files["/bookworm/latest/SHA512SUMS"] = (
        f"{hashlib.sha512(image).hexdigest()}  debian-12-genericcloud-amd64.qcow2\n").encode()
    result = fetch_base(FetchRequest(image="debian-12", mirror=url), settings=FAST)
    assert result.algorithm == "sha512" and result.path.read_bytes() == image


def test_unknown_image_is_a_user_error() -> None:
    with pytest.raises(UserError, match="debian-12"):
        fetch_base(FetchRequest(image="fedora-40"))
