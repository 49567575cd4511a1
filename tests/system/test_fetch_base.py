"""fetch-base end to end with real pieces: a real qcow2 made by qemu-img, a fetch process killed with SIGKILL
mid-download and resumed by the next run, and Python's stock http.server (which ignores Range) as a mirror."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapbuild.transfer.fetch import FetchRequest, cache_entry, fetch_base
from snapbuild.transfer.ranged import DownloadSettings
from tests.unit import test_fetch_base_http as mirror
from tests.unit.test_fetch_base_http import IMAGE_PATH, SUMS_PATH, Behaviour

server = mirror.server  # the Range-capable, byte-counting test server (a fixture)

pytestmark = pytest.mark.system

FAST = DownloadSettings(connections=3, chunk_bytes=2 * 1024 * 1024, backoff_initial=0.05, progress_every=0.2)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SNAPBUILD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def qcow2(tmp_path: Path) -> bytes:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(12 * 1024 * 1024))
    out = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    return out.read_bytes()


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling another process, bounded by the deadline


def completed(state: Path) -> int:
    try:
        return sum(b - a for a, b in json.loads(state.read_text())["done"])
    except (OSError, ValueError, KeyError):
        return 0


def test_kill_9_mid_download_then_resume_gives_a_valid_qcow2(server: tuple[str, Behaviour], tmp_path: Path,
                                                            cache: Path) -> None:
    url, b = server
    image = qcow2(tmp_path)
    b.files[IMAGE_PATH] = image
    b.files[SUMS_PATH] = f"{hashlib.sha256(image).hexdigest()} *noble-server-cloudimg-amd64.img\n".encode()
    b.throttle = 0.01                                  # ~6 MB/s: slow enough to be killed half-way
    code = ("import sys; from snapbuild.transfer.fetch import FetchRequest, fetch_base;"
            "from snapbuild.transfer.ranged import DownloadSettings;"
            "fetch_base(FetchRequest(image='ubuntu-24.04', mirror=sys.argv[1]),"
            " settings=DownloadSettings(connections=3, chunk_bytes=2*1024*1024, progress_every=0.1))")
    child = subprocess.Popen([sys.executable, "-c", code, url], env={**os.environ, "SNAPBUILD_CACHE_DIR": str(cache)})
    entry = cache_entry(f"{url}{IMAGE_PATH}", hashlib.sha256(image).hexdigest())
    state = entry.with_name(entry.name + ".part.json")
    try:
        wait_for(lambda: completed(state) >= len(image) // 3, 60, "a third of the image")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    kept = completed(state)
    assert 0 < kept < len(image)
    b.throttle = 0.0
    result = fetch_base(FetchRequest(image="ubuntu-24.04", mirror=url, output=tmp_path / "noble.img"),
                        settings=FAST)
    assert result.received <= len(image) - kept + 1, "bytes recorded as done were fetched again"
    assert b.sent[IMAGE_PATH] <= 1.2 * len(image)
    check = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(tmp_path / "noble.img")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def stock_http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python3 -m http.server` in its own process: a real server that ignores Range."""
    root = tmp_path / "mirror"
    (root / "bookworm" / "latest").mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(up, 15, "http.server")
        yield f"http://127.0.0.1:{port}", root
    finally:
        proc.kill()
        proc.wait()


def test_stock_http_server_without_range_support_still_works(stock_http_server: tuple[str, Path],
                                                             tmp_path: Path) -> None:
    url, root = stock_http_server
    image = qcow2(tmp_path)
    folder = root / "bookworm" / "latest"
    (folder / "debian-12-genericcloud-amd64.qcow2").write_bytes(image)
    (folder / "SHA512SUMS").write_text(f"{hashlib.sha512(image).hexdigest()}  debian-12-genericcloud-amd64.qcow2\n")
    result = fetch_base(FetchRequest(image="debian-12", mirror=url), settings=FAST)
    assert result.algorithm == "sha512" and result.path.read_bytes() == image
