"""User-caused failures through the real entry point: exit 2, one `snapbuild: error:` line and a hint, no traceback
and no library's log line on the terminal. Addresses the user got wrong fail at once (attempts counted, not
timed); a link that drops in the middle of a transfer is still retried.

Network: only servers these tests start on 127.0.0.1, and ports on 127.0.0.1 that nobody listens on. The one
host name that must not exist is answered "not found" by a stand-in for getaddrinfo: no query leaves the host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paramiko
import pytest
import urllib3.util.connection

from snapbuild.cli import main
from snapbuild.errors import BuildError, UserError
from snapbuild.guest.ssh import SSHGuest
from snapbuild.host import commands
from snapbuild.sshkeys import KeyPair
from snapbuild.transfer.rsync import Failure
from snapbuild.transfer.ship import _raise_final
from snapbuild.transfer.sshchain import Hop, SSHChain

# -- running the CLI ------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_terminal_handler() -> Iterator[None]:
    """main() adds its stderr handler once per process, bound to the sys.stderr of that moment: drop it, so
    this test's capsys sees what the terminal would."""
    def drop() -> None:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_snapbuild", False)]:
            root.removeHandler(handler)

    drop()
    yield
    drop()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def assert_user_error(code: int, err: str, *needles: str, hint: tuple[str, ...] = ()) -> tuple[str, str]:
    """Exactly one error line and one hint line on stderr (nothing else: no library WARNING, no traceback)."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 2, err
    error, hint_line = lines
    assert error.startswith("snapbuild: error: "), err
    assert hint_line.startswith("snapbuild: hint: "), err
    assert "Traceback" not in err and "internal error" not in err
    for needle in needles:
        assert needle in error, f"{needle!r} not in {error!r}"
    for needle in hint:
        assert needle in hint_line, f"{needle!r} not in {hint_line!r}"
    return error, hint_line


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])   # nobody listens once it is closed


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection urllib3 opens (requests and keystoneauth both go through it), refused or not."""
    made: list[tuple[str, int]] = []
    real = urllib3.util.connection.create_connection

    def counting(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        made.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", counting)
    return made


# -- 1. render -o --------------------------------------------------------------------------------------------


def test_render_into_an_existing_file_is_refused_and_the_file_is_untouched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "hostname"
    target.write_text("keep me\n")
    code, _, err = run(capsys, "render", "k8s", "--mirrors", "upstream", "-o", str(target))
    assert_user_error(code, err, f"-o {target} exists and is not a directory", hint=("-o", "directory"))
    assert target.read_text() == "keep me\n"


def test_render_below_a_file_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "render", "k8s", "--mirrors", "upstream", "-o", str(tmp_path / "file" / "out"))
    assert_user_error(code, err, f"{tmp_path / 'file'} is not a directory", hint=("-o",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_render_into_a_directory_that_cannot_exist_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    # procfs takes no new directories, not even from root
    code, _, err = run(capsys, "render", "k8s", "--mirrors", "upstream", "-o", "/proc/snapbuild-render-test")
    assert_user_error(code, err, "-o /proc/snapbuild-render-test: cannot create the directory", hint=("-o",))


def test_render_into_a_new_directory_still_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "render", "k8s", "--mirrors", "upstream", "-o", str(tmp_path / "a" / "b"))
    assert code == 0 and "wrote" in out
    assert (tmp_path / "a" / "b" / "user-data").is_file()


# -- 2. fetch-base: a wrong address fails at once, a dropped transfer is resumed ---------------------------


def test_fetch_base_from_a_mirror_that_refuses_connections_fails_at_the_first_attempt(
        capsys: pytest.CaptureFixture[str], connects: list[tuple[str, int]],
        caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    code, _, err = run(capsys, "fetch-base", "debian-12", "--mirror", f"http://127.0.0.1:{port}/")
    assert_user_error(code, err, f"cannot reach http://127.0.0.1:{port}/bookworm/latest/SHA512SUMS",
                      "refused the connection", hint=("--mirror",))
    assert connects == [("127.0.0.1", port)], "refused at the first contact: no second attempt"
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_fetch_base_from_a_url_that_refuses_connections_names_url_in_the_hint(
        capsys: pytest.CaptureFixture[str], connects: list[tuple[str, int]]) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/images/debian-12-genericcloud-amd64.qcow2"
    code, _, err = run(capsys, "fetch-base", "debian-12", "--url", url)
    assert_user_error(code, err, f"http://127.0.0.1:{port}/images/SHA512SUMS", hint=("--url",))
    assert len(connects) == 1


def test_fetch_base_from_a_host_name_that_does_not_exist_fails_at_once(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        connects: list[tuple[str, int]]) -> None:
    asked: list[str] = []
    real = socket.getaddrinfo

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "mirror.invalid":   # answered here: no DNS query leaves the host
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    code, _, err = run(capsys, "fetch-base", "debian-12", "--mirror", "http://mirror.invalid/cloud")
    assert_user_error(code, err, "cannot reach http://mirror.invalid/cloud/bookworm/latest/SHA512SUMS",
                      "host name 'mirror.invalid' not found", hint=("--mirror",))
    assert asked == ["mirror.invalid"] and len(connects) == 1


@pytest.mark.parametrize(("args", "needles"), [
    (["--mirror", "http://127.0.0.1:99999/"], ("--mirror 'http://127.0.0.1:99999/' is not a valid URL",)),
    (["--url", "http:///x.qcow2"], ("--url 'http:///x.qcow2' is not a valid URL",)),
    (["--mirror", "ftp://127.0.0.1/"], ("is not an http(s) URL",)),
    (["--mirror", "http://127.0.0.1:1/", "--url", "http://127.0.0.1:1/x.qcow2"], ("exclude each other",)),
])
def test_fetch_base_refuses_bad_addresses_before_any_connection(
        capsys: pytest.CaptureFixture[str], connects: list[tuple[str, int]], args: list[str],
        needles: tuple[str, ...]) -> None:
    code, _, err = run(capsys, "fetch-base", "debian-12", *args)
    assert_user_error(code, err, *needles)
    assert connects == []


def test_fetch_base_output_below_a_file_is_refused_before_any_download(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], connects: list[tuple[str, int]]) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "debian.qcow2"
    code, _, err = run(capsys, "fetch-base", "debian-12", "--mirror", "http://127.0.0.1:1/", "-o", str(out))
    assert_user_error(code, err, f"-o {out}", "is not a directory", hint=("-o",))
    assert connects == []


class Mirror:
    """A cloud-images mirror on 127.0.0.1 that, once, cuts the image in the middle of its body and stops
    listening (a server restart); `listen_again` brings it back on the same port."""

    def __init__(self, files: dict[str, bytes], cut_path: str, cut_after: int) -> None:
        self.files, self.cut_path, self.cut_after = files, cut_path, cut_after
        self.cuts_left = 1
        self.lock = threading.Lock()
        self.image_requests = 0
        self.port = 0
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.listen_again()

    def listen_again(self) -> None:
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, end, status = 0, len(body), 200
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if m:
                    start, end, status = int(m.group(1)), int(m.group(2) or len(body) - 1) + 1, 206
                with mirror.lock:
                    cut = self.path == mirror.cut_path and end - start > mirror.cut_after and mirror.cuts_left > 0
                    if self.path == mirror.cut_path:
                        mirror.image_requests += 1
                    if cut:
                        mirror.cuts_left -= 1
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
                self.end_headers()
                if not cut:
                    self.wfile.write(body[start:end])
                    return
                self.wfile.write(body[start:start + mirror.cut_after])
                self.wfile.flush()
                mirror.stop_listening()          # down before the client notices the cut: its retry is refused
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass

        self.httpd = Server(("127.0.0.1", self.port), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop_listening(self) -> None:
        httpd, thread = self.httpd, self.thread
        if httpd is None or thread is None:
            return
        self.httpd = self.thread = None
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SNAPBUILD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_drop_mid_transfer_and_a_refused_reconnect_are_retried_and_resumed(
        tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    image = os.urandom(3 * 1024 * 1024 + 5)
    image_path = "/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
    sums = f"{hashlib.sha512(image).hexdigest()}  debian-12-genericcloud-amd64.qcow2\n".encode()
    mirror = Mirror({image_path: image, "/bookworm/latest/SHA512SUMS": sums}, image_path, 1024 * 1024)
    refused: list[tuple[str, int]] = []
    real = urllib3.util.connection.create_connection

    def connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        try:
            return real(address, *args, **kwargs)
        except ConnectionRefusedError:
            refused.append(address)
            mirror.listen_again()           # the server is back for the next attempt
            raise

    monkeypatch.setattr(urllib3.util.connection, "create_connection", connect)
    try:
        out = tmp_path / "debian.qcow2"
        code, _, err = run(capsys, "fetch-base", "debian-12", "--mirror", f"http://127.0.0.1:{mirror.port}",
                           "--connections", "1", "-o", str(out))
    finally:
        mirror.stop_listening()
    assert code == 0, err
    assert out.read_bytes() == image
    assert refused == [("127.0.0.1", mirror.port)], "the refused reconnect after the drop was retried"
    assert mirror.image_requests >= 3   # probe, the cut range, the rest after the refused attempt
    assert "Traceback" not in err


# -- 3. ship: a hop that refuses at the start ---------------------------------------------------------------

needs_ssh = pytest.mark.skipif(any(shutil.which(t) is None for t in ("ssh", "rsync", "sha256sum")),
                               reason="ship needs ssh, rsync and sha256sum (openssh-client, rsync)")


@pytest.fixture
def ssh_runs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    ran: list[list[str]] = []
    real = commands.run

    def counting(argv: Any, **kwargs: Any) -> Any:
        ran.append([str(a) for a in argv])
        return real(argv, **kwargs)

    monkeypatch.setattr(commands, "run", counting)
    return ran


@needs_ssh
def test_ship_to_a_closed_port_fails_at_the_first_attempt_naming_the_hop(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], ssh_runs: list[list[str]]) -> None:
    file = tmp_path / "image.qcow2"
    file.write_bytes(b"x" * 1000)
    port = closed_port()
    code, _, err = run(capsys, "ship", str(file), "--to", f"root@127.0.0.1:{port}")
    assert_user_error(code, err, f"root@127.0.0.1:{port} (hop 1 of 1) refuses SSH connections",
                      "Connection refused", hint=("port", "sshd"))
    assert len(ssh_runs) == 1, ssh_runs


@needs_ssh
def test_ship_via_a_relay_that_refuses_names_the_relay(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], ssh_runs: list[list[str]]) -> None:
    file = tmp_path / "image.qcow2"
    file.write_bytes(b"x" * 1000)
    relay, controller = closed_port(), closed_port()
    code, _, err = run(capsys, "ship", str(file), "--via", f"ops@127.0.0.1:{relay}",
                       "--to", f"root@127.0.0.1:{controller}")
    assert_user_error(code, err, f"ops@127.0.0.1:{relay} (hop 1 of 2) refuses SSH connections", hint=("sshd",))
    assert len(ssh_runs) == 1, ssh_runs


def test_a_refused_connection_to_a_hop_that_answered_before_is_left_to_the_retries() -> None:
    chain = SSHChain([Hop(host="127.0.0.1", user="root", port=2222)], Path("/nonexistent"))
    stderr = "ssh: connect to host 127.0.0.1 port 2222: Connection refused"
    with pytest.raises(UserError, match="refuses SSH connections"):
        _raise_final(Failure.REFUSED, chain, 0, stderr)
    chain.mark_reached(0)
    _raise_final(Failure.REFUSED, chain, 0, stderr)   # an sshd restarting mid-transfer: no final verdict


def test_ship_port_out_of_range_is_refused_before_ssh_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], ssh_runs: list[list[str]]) -> None:
    file = tmp_path / "image.qcow2"
    file.write_bytes(b"x")
    code, _, err = run(capsys, "ship", str(file), "--to", "root@127.0.0.1:70000")
    assert_user_error(code, err, "port 70000", "out of range", hint=("1-65535",))
    assert ssh_runs == []


# -- 4. a cloud whose endpoint refuses connections ---------------------------------------------------------


def clouds_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "clouds.yaml"
    path.write_text(text)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    for var in ("OS_CLOUD", "OS_AUTH_URL", "OS_PASSWORD", "OS_USERNAME"):
        monkeypatch.delenv(var, raising=False)
    return path


def dead_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth_url: str) -> Path:
    return clouds_yaml(tmp_path, monkeypatch, f"""clouds:
  dead:
    auth: {{auth_url: "{auth_url}", username: u, password: p, project_name: p,
            user_domain_name: Default, project_domain_name: Default}}
    region_name: RegionOne
""")


def test_a_cloud_that_refuses_connections_is_one_line_naming_the_endpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        connects: list[tuple[str, int]]) -> None:
    port = closed_port()
    path = dead_cloud(tmp_path, monkeypatch, f"http://127.0.0.1:{port}/v3")
    code, _, err = run(capsys, "--os-cloud", "dead", "cleanup", "--dry-run")
    error, _ = assert_user_error(code, err, f"cloud 'dead': cannot reach its identity endpoint "
                                            f"http://127.0.0.1:{port}/v3: connection refused",
                                 hint=("auth_url", "'dead'", str(path), "--os-cloud"))
    assert len(error) < 160
    for noise in ("WARNING", "keystoneauth", "HTTPConnectionPool", "urllib3"):
        assert noise not in err
    assert 1 <= len(connects) <= 2, connects   # discovery and the token request: nothing re-sent


def test_with_verbose_the_library_warning_is_shown_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    dead_cloud(tmp_path, monkeypatch, f"http://127.0.0.1:{closed_port()}/v3")
    code, _, err = run(capsys, "-v", "--os-cloud", "dead", "cleanup", "--dry-run")
    assert code == 2
    assert "keystoneauth" in err and "snapbuild: error: cloud 'dead': cannot reach" in err


def test_a_clouds_yaml_that_is_not_yaml_is_named_with_its_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = clouds_yaml(tmp_path, monkeypatch, "clouds:\n  dead: [\n")
    code, _, err = run(capsys, "--os-cloud", "dead", "cleanup", "--dry-run")
    assert_user_error(code, err, f"{path}:3: not valid YAML", hint=("fix the file",))


def test_an_auth_url_without_a_scheme_is_refused_before_any_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        connects: list[tuple[str, int]]) -> None:
    dead_cloud(tmp_path, monkeypatch, "127.0.0.1:1/v3")
    code, _, err = run(capsys, "--os-cloud", "dead", "cleanup", "--dry-run")
    assert_user_error(code, err, "cloud 'dead': auth_url '127.0.0.1:1/v3' is not an http(s) URL",
                      hint=("auth_url",))
    assert connects == []


# -- 6. cleanup without a cloud -------------------------------------------------------------------------------


def test_cleanup_without_a_cloud_says_how_to_pick_one_or_clean_the_host(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("OS_CLOUD", "OS_AUTH_URL", "OS_CLIENT_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)                      # no ./clouds.yaml
    monkeypatch.setenv("HOME", str(tmp_path))        # no ~/.config/openstack/clouds.yaml
    code, _, err = run(capsys, "cleanup")
    error, _ = assert_user_error(code, err, "no cloud selected to clean up",
                                 hint=("--os-cloud", "OS_CLOUD", "--host"))
    assert "to build on" not in error


@pytest.mark.parametrize(("args", "needle"), [
    (["--older-than", "99999999999999w"], "too long"),
    (["--host", "--older-than", "2h"], "--host alone cleans only this host"),
])
def test_cleanup_options_that_cannot_work_are_refused(capsys: pytest.CaptureFixture[str], args: list[str],
                                                      needle: str) -> None:
    code, _, err = run(capsys, "cleanup", *args)
    assert_user_error(code, err, needle)


# -- 5. polling sshd while a machine boots ---------------------------------------------------------------------


def _accept_and_close(conn: socket.socket) -> None:
    conn.close()


def _garbage_banner(conn: socket.socket) -> None:
    conn.sendall(b"garbage, not an SSH server\r\n")
    conn.close()


@pytest.mark.parametrize("answer", [_accept_and_close, _garbage_banner], ids=["closes", "garbage"])
def test_polling_a_booting_sshd_logs_one_line_per_attempt_and_no_traceback(
        answer: Callable[[socket.socket], None], caplog: pytest.LogCaptureFixture) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted = [0]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted[0] += 1
            answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(BuildError, match=f"SSH to 127.0.0.1:{port} not ready after"):
            # the retry policy's waits (1 s, 2 s, 4 s …) decide the number of attempts within the deadline;
            # the stand-in sleep keeps the test short
            SSHGuest.connect(host="127.0.0.1", port=port, user="root", key=KeyPair.generate(),
                             host_keys=[KeyPair.generate().public_openssh], deadline=time.monotonic() + 4,
                             sleep=lambda seconds: time.sleep(0.01))
    finally:
        listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() (a close alone does not)
        listener.close()
        thread.join(timeout=10)
    polls = [r for r in caplog.records if r.name == "snapbuild.guest.ssh" and " attempt " in r.getMessage()]
    assert len(polls) == accepted[0] >= 2, [r.getMessage() for r in polls]
    for number, record in enumerate(polls, 1):   # the server's close, or its reset when our banner went unread
        assert re.fullmatch(rf"ssh 127\.0\.0\.1:{port} attempt {number}: banner not ready "
                            r"\((EOFError|ConnectionResetError)\)", record.getMessage()), record.getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback for an expected retry"
    assert not [r for r in caplog.records if r.name.startswith("paramiko")]


def test_a_real_handshake_failure_is_reported_in_full(caplog: pytest.LogCaptureFixture) -> None:
    """A server that answers with an SSH banner but offers no usable key exchange: not a boot-time condition,
    so no retry, and the log keeps its traceback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.sendall(b"SSH-2.0-test\r\n" + b"\x00\x00\x00\x0c\x0a\x14" + b"\xff" * 10)
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(BuildError) as err:
            SSHGuest.connect(host="127.0.0.1", port=port, user="root", key=KeyPair.generate(),
                             host_keys=[KeyPair.generate().public_openssh], deadline=time.monotonic() + 4,
                             sleep=lambda seconds: time.sleep(0.01))
    finally:
        listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() (a close alone does not)
        listener.close()
        thread.join(timeout=10)
    assert f"SSH to 127.0.0.1:{port} failed: IncompatiblePeer" in str(err.value)   # at once, not at the deadline
    assert isinstance(err.value.__cause__, paramiko.SSHException)
    polls = [r for r in caplog.records if " attempt " in r.getMessage()]
    assert len(polls) == 2 and "attempt 1:" in polls[0].getMessage()
    assert polls[1].getMessage().endswith("giving up after attempt 1")
    assert polls[1].exc_info is not None and polls[1].exc_info[1] is err.value.__cause__   # the whole traceback
