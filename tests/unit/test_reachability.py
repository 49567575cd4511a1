"""Download sources are checked from where the build runs, before anything is created.

The plans are real (shipped recipes, shipped profiles, or a profile written here that maps every upstream onto
127.0.0.1). The servers are real too, and all on 127.0.0.1 in this process: small HTTP servers serving Release
files, keys and a registry's /v2/, an HTTPS server with a certificate made here, a forwarding proxy; "unreachable"
is a closed port on 127.0.0.1. Nothing else is ever asked: sources on other hosts are only collected, or checked
on routes where they are decided without the network.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import select
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from snapbuild.errors import EXIT_USAGE, UserError
from snapbuild.host.reachability import (
    Problem,
    Route,
    check_sources,
    dial_address,
    plan_sources,
    require_reachable,
    route_for,
    sources_error,
)
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.profiles import Forward
from snapbuild.recipes import Library

LIBRARY = Library([Path(__file__).resolve().parents[1] / "recipes", data_dir("recipes")])
K8S_DEB = "/k8s/core:/stable:/v1.32/deb"
KEY = b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nstand-in\n-----END PGP PUBLIC KEY BLOCK-----\n"


def make_plan(recipe: str, profile: str | Path, distro: str = "debian-12") -> Plan:
    return plan_from_names(library=LIBRARY, recipe_name=recipe, distro_name=distro, profile_name=str(profile),
                           config_variables={}, set_values={})


# ------------------------------------------------------------------------------------------- servers on 127.0.0.1

@dataclass
class Site:
    port: int
    files: dict[str, bytes]
    statuses: dict[str, int]
    seen: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        site = self.server.site
        site.seen.append(self.path)
        status = site.statuses.get(self.path, 200 if self.path in site.files else 404)
        body = site.files.get(self.path, b"") if status == 200 else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site: Site


@contextmanager
def http_site(files: Mapping[str, bytes] | None = None, statuses: Mapping[str, int] | None = None,
              tls: ssl.SSLContext | None = None) -> Iterator[Site]:
    server = _Server(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.site = Site(port=server.server_address[1], files=dict(files or {}), statuses=dict(statuses or {}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _ProxyHandler(BaseHTTPRequestHandler):
    """An HTTP proxy that forwards only to 127.0.0.1: GET with an absolute URL, and CONNECT tunnels."""

    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        url = urlsplit(self.path)
        if not url.hostname:           # not a proxy request (the check's own "is an HTTP server here?")
            self.send_error(400)
            return
        assert url.hostname == "127.0.0.1", self.path      # the network rule, enforced
        try:
            upstream = http.client.HTTPConnection("127.0.0.1", url.port or 80, timeout=5)
            upstream.request("GET", url.path, headers={"Range": self.headers.get("Range", "")})
            reply = upstream.getresponse()
            status, body = reply.status, reply.read()
            upstream.close()
        except OSError:
            status, body = 502, b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        self.server.seen.append(f"CONNECT {self.path}")
        host, _, port = self.path.rpartition(":")
        assert host == "127.0.0.1", self.path
        upstream = socket.create_connection((host, int(port)), timeout=5)
        self.send_response(200, "Connection established")
        self.end_headers()
        ends = [self.connection, upstream]
        while True:
            ready, _, _ = select.select(ends, [], [], 5)
            if not ready:
                break
            for end in ready:
                data = end.recv(65536)
                if not data:
                    upstream.close()
                    return
                (upstream if end is self.connection else self.connection).sendall(data)
        upstream.close()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[str]


@contextmanager
def proxy() -> Iterator[_ProxyServer]:
    server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def archive_files(prefix: str = "") -> dict[str, bytes]:
    """What a k8s + docker-ce build on Debian 12 reads: Release files, keys (registries answer elsewhere)."""
    return {f"{prefix}/debian/dists/bookworm/InRelease": b"Release",
            f"{prefix}/debian/dists/bookworm-updates/InRelease": b"Release",
            f"{prefix}/debian-security/dists/bookworm-security/InRelease": b"Release",
            f"{prefix}{K8S_DEB}/InRelease": b"Release", f"{prefix}{K8S_DEB}/Release.key": KEY,
            f"{prefix}/docker/linux/debian/dists/bookworm/InRelease": b"Release",
            f"{prefix}/docker/linux/debian/gpg": KEY}


def local_profile(path: Path, *, apt: str, registry: str | list[str], proxy: str | None = None,
                  forwards: list[dict[str, str]] | None = None) -> Path:
    """A profile mapping every upstream the recipes use onto `apt` (http://HOST:PORT) and `registry`."""
    data: dict[str, Any] = {
        "apt": {"debian": {"archive": f"{apt}/debian", "security": f"{apt}/debian-security"}},
        "apt_repositories": {"https://download.docker.com": f"{apt}/docker", "https://pkgs.k8s.io": f"{apt}/k8s"},
        "registries": {"registry.k8s.io": registry if isinstance(registry, list) else [registry]},
        "blocked": ["registry.k8s.io", "quay.io", "deb.debian.org", "download.docker.com", "pkgs.k8s.io"],
    }
    if proxy:
        data["build_apt_proxy"] = proxy
    if forwards:
        data["forwards"] = forwards
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def registry() -> Iterator[Site]:
    with http_site(statuses={"/v2/": 401}) as site:
        yield site


# ------------------------------------------------------------------------------------------- the plan's URLs

def test_k8s_with_the_shipped_cloudinative_profile_lists_its_mirrors_upstream_repo_and_blocked_registry() -> None:
    sources = {s.url: s for s in plan_sources(make_plan("k8s", "cloudinative", "ubuntu-24.04"))}
    assert list(sources) == ["https://archive.cloudinative.com/ubuntu", "https://security.cloudinative.com/ubuntu",
                             "https://pkgs.k8s.io/core:/stable:/v1.32/deb/",
                             "https://pkgs.k8s.io/core:/stable:/v1.32/deb/Release.key", "https://registry.k8s.io"]
    archive = sources["https://archive.cloudinative.com/ubuntu"]
    assert (archive.key, archive.suites, archive.mirrored) == (
        "apt.ubuntu.archive", ("noble", "noble-updates", "noble-backports"), True)
    assert sources["https://security.cloudinative.com/ubuntu"].suites == ("noble-security",)
    repo = sources["https://pkgs.k8s.io/core:/stable:/v1.32/deb/"]
    # Not mapped by the profile: the key to add is named by the upstream's origin.
    assert (repo.kind, repo.suites, repo.mirrored, repo.key) == (
        "apt-repository", ("/",), False, 'apt_repositories["https://pkgs.k8s.io"]')
    assert repo.need.startswith("apt repository kubernetes (plan step ")
    key = sources["https://pkgs.k8s.io/core:/stable:/v1.32/deb/Release.key"]
    assert (key.kind, key.key) == ("apt-key", 'apt_repositories["https://pkgs.k8s.io"]')
    registry = sources["https://registry.k8s.io"]
    assert (registry.kind, registry.blocked, registry.key) == ("registry", True, "registries.registry.k8s.io")
    assert registry.need.startswith("image pre-pull from registry.k8s.io (plan step ")


def test_docker_ce_repository_and_key_name_the_profile_entry_that_rewrote_them() -> None:
    sources = plan_sources(make_plan("docker-ce", "airgap-example"))
    repo, key = (s for s in sources if s.kind in ("apt-repository", "apt-key") and "docker" in s.url)
    assert repo.url == "https://mirror.example.internal/download.docker.com/linux/debian"
    assert repo.suites == ("bookworm",)
    assert key.url == "https://mirror.example.internal/download.docker.com/linux/debian/gpg"
    assert repo.key == key.key == 'apt_repositories["https://download.docker.com"]'
    assert not any(s.kind == "registry" for s in sources)      # docker-ce pulls no image


def test_a_mirror_profile_s_own_key_url_names_its_entry(tmp_path: Path) -> None:
    profile = tmp_path / "resigned.yaml"
    profile.write_text(json.dumps({"apt_repositories": {"https://download.docker.com": {
        "url": "http://m.example.invalid/docker", "key_url": "http://keys.example.invalid/mirror.asc",
        "key_fingerprint": "AB" * 20}}}))
    sources = plan_sources(make_plan("docker-ce", profile))
    repo, key = (s for s in sources if s.kind in ("apt-repository", "apt-key") and "example.invalid" in s.url)
    assert repo.url == "http://m.example.invalid/docker/linux/debian"
    # On another host than the repository's mirror, yet the entry that names it is the one to fix.
    assert (key.url, key.key, key.mirrored) == ("http://keys.example.invalid/mirror.asc",
                                                'apt_repositories["https://download.docker.com"].key_url', True)


def test_a_recipe_that_runs_no_apt_get_needs_no_archive() -> None:
    assert plan_sources(make_plan("base", "upstream")) == ()


def test_a_package_step_with_the_upstream_profile_uses_only_the_distro_archives() -> None:
    sources = plan_sources(make_plan("apt-demo", "upstream"))
    assert [(s.url, s.key, s.mirrored) for s in sources] == [
        ("http://deb.debian.org/debian", "apt.debian.archive", False),
        ("http://deb.debian.org/debian-security", "apt.debian.security", False)]


def test_a_local_profile_maps_every_source_to_127_0_0_1_and_apt_goes_through_the_proxy(tmp_path: Path) -> None:
    profile = local_profile(tmp_path / "loopback.yaml", apt="http://127.0.0.1:8001", registry="http://127.0.0.1:8002",
                            proxy="http://127.0.0.1:8003")
    sources = plan_sources(make_plan("k8s", profile))
    assert [(s.kind, s.url, s.via_proxy) for s in sources] == [
        ("apt-repository", "http://127.0.0.1:8001/debian", True),
        ("apt-repository", "http://127.0.0.1:8001/debian-security", True),
        ("apt-repository", "http://127.0.0.1:8001/k8s/core:/stable:/v1.32/deb/", True),
        ("apt-key", "http://127.0.0.1:8001/k8s/core:/stable:/v1.32/deb/Release.key", False),   # curl: direct
        ("registry", "http://127.0.0.1:8002", False),               # upstream blocked: the mirror only
        ("apt-proxy", "http://127.0.0.1:8003", False)]
    assert sources[2].key == 'apt_repositories["https://pkgs.k8s.io"]'


# ------------------------------------------------------------------------------------------- routes

def test_route_for_each_builder() -> None:
    assert route_for("cloud") is Route.SKIP
    assert route_for("chroot") is Route.HOST
    assert route_for("local", "nat") is Route.NAT
    assert route_for("local", "isolated") is Route.FORWARDS


def test_forwards_map_a_guest_address_to_its_host_side_and_nat_maps_10_0_2_2_to_loopback() -> None:
    fwd = Forward(guest_ip="10.0.2.100", guest_port=3142, host_ip="127.0.0.1", host_port=13142)
    for route in (Route.FORWARDS, Route.NAT):
        dial = dial_address("http://10.0.2.100:3142/debian", route, [fwd])
        assert not isinstance(dial, str) and (dial.address, dial.forward) == (("127.0.0.1", 13142), fwd)
    assert dial_address("http://10.0.2.100:3143/", Route.FORWARDS, [fwd]) == "no-forward"   # port differs
    assert dial_address("https://mirror.example.internal/x", Route.FORWARDS, [fwd]) == "no-forward"
    nat = dial_address("http://10.0.2.2:5000", Route.NAT, [fwd])
    assert not isinstance(nat, str) and nat.address == ("127.0.0.1", 5000)
    assert dial_address("http://127.0.0.1:5000", Route.NAT, []) == "loopback"
    assert dial_address("http://localhost/", Route.NAT, []) == "loopback"
    host = dial_address("https://mirror.example.internal/x", Route.HOST, [fwd])
    assert not isinstance(host, str) and host.address == ("mirror.example.internal", 443)
    chroot = dial_address("http://10.0.2.100:3142/", Route.HOST, [fwd])    # a chroot has no forwards
    assert not isinstance(chroot, str) and (chroot.address, chroot.forward) == (("10.0.2.100", 3142), None)


def test_a_cloud_build_is_not_checked_from_this_host(tmp_path: Path) -> None:
    with http_site(archive_files()) as site:
        profile = local_profile(tmp_path / "p.yaml", apt=f"http://127.0.0.1:{closed_port()}",
                                registry=f"http://127.0.0.1:{site.port}")
        assert check_sources(make_plan("k8s", profile), Route.SKIP) == []
        assert site.seen == []


def test_an_isolated_vm_with_no_forwards_reaches_nothing_and_each_source_says_so() -> None:
    # The shipped profile's hosts are never asked: on this route every answer is known without the network.
    problems = check_sources(make_plan("k8s", "cloudinative", "ubuntu-24.04"), Route.FORWARDS)
    by_url = {p.url: p for p in problems}
    assert len(by_url) == 5
    archive = by_url["https://archive.cloudinative.com/ubuntu"]
    assert "no forward" in archive.what
    assert "forwards in profile cloudinative" in archive.hint and "--network nat" in archive.hint
    blocked = by_url["https://registry.k8s.io"]
    assert blocked.what == "blocked by the profile, not asked"
    assert blocked.hint.startswith("add a mirror under registries.registry.k8s.io in profile cloudinative (")


def test_isolated_forwards_are_checked_at_their_host_side_and_unmapped_urls_are_problems(
        tmp_path: Path, registry: Site) -> None:
    # Guest sides on 127.0.0.77 (nothing listens there): were they asked, the closed port would say so.
    with http_site(archive_files()) as apt:
        profile = local_profile(tmp_path / "fwd.yaml", apt="http://127.0.0.77:3142",
                                registry=f"http://127.0.0.1:{registry.port}",
                                forwards=[{"guest": "127.0.0.77:3142", "host": f"127.0.0.1:{apt.port}"}])
        problems = check_sources(make_plan("k8s", profile), Route.FORWARDS)
    assert [p.url for p in problems] == [f"http://127.0.0.1:{registry.port}"]       # not forwarded
    assert "no forward" in problems[0].what
    assert registry.seen == []
    assert sorted(apt.seen) == sorted(["/debian/dists/bookworm/InRelease", "/debian/dists/bookworm-updates/InRelease",
                                       "/debian-security/dists/bookworm-security/InRelease",
                                       f"{K8S_DEB}/InRelease", f"{K8S_DEB}/Release.key"])


def test_a_chroot_build_asks_a_forwards_guest_side_as_written_and_says_what_it_is(tmp_path: Path,
                                                                                  registry: Site) -> None:
    with http_site(archive_files()) as apt:
        profile = local_profile(tmp_path / "vmonly.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}", proxy="http://127.0.0.77:3142",
                                forwards=[{"guest": "127.0.0.77:3142", "host": f"127.0.0.1:{apt.port}"}])
        problems = check_sources(make_plan("apt-demo", profile), Route.HOST)
        assert apt.seen == []          # apt would go through the proxy, which is not there for a chroot
    assert [(p.url, p.what) for p in problems] == [("http://127.0.0.77:3142", "connection refused")]
    assert "is the guest side of a forward, which only local VMs have" in problems[0].hint
    assert f"the service is at 127.0.0.1:{apt.port}" in problems[0].hint


def test_a_nat_vm_cannot_use_this_hosts_loopback_address(tmp_path: Path, registry: Site) -> None:
    with http_site(archive_files()) as apt:
        profile = local_profile(tmp_path / "nat.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}")
        problems = check_sources(make_plan("apt-demo", profile), Route.NAT)
        assert apt.seen == []
    assert [p.url for p in problems] == [f"http://127.0.0.1:{apt.port}/debian",
                                         f"http://127.0.0.1:{apt.port}/debian-security"]
    assert all("10.0.2.2" in p.hint and "apt.debian." in p.hint for p in problems)


# ------------------------------------------------------------------------------------------- against servers

def test_everything_answers_gives_no_problem(tmp_path: Path, registry: Site) -> None:
    with http_site(archive_files()) as apt:
        profile = local_profile(tmp_path / "ok.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}")
        assert check_sources(make_plan("k8s", profile), Route.HOST) == []
        assert check_sources(make_plan("docker-ce", profile), Route.HOST) == []
        assert "/docker/linux/debian/gpg" in apt.seen
    assert registry.seen == ["/v2/"]


def test_a_missing_suite_and_a_missing_key_are_each_a_problem_naming_the_profile_key(
        tmp_path: Path, registry: Site) -> None:
    files = archive_files()
    del files["/debian/dists/bookworm-updates/InRelease"]
    del files[f"{K8S_DEB}/Release.key"]
    files["/debian-security/dists/bookworm-security/Release"] = files.pop(
        "/debian-security/dists/bookworm-security/InRelease")     # Release without InRelease is fine, as for apt
    with http_site(files) as apt:
        profile = local_profile(tmp_path / "holes.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}")
        problems = check_sources(make_plan("k8s", profile), Route.HOST)
    base = f"http://127.0.0.1:{apt.port}"
    assert [(p.url, p.what) for p in problems] == [
        (f"{base}/debian", f"HTTP 404 (neither InRelease nor Release) for {base}/debian/dists/bookworm-updates/InRelease"),
        (f"{base}{K8S_DEB}/Release.key", f"HTTP 404 for {base}{K8S_DEB}/Release.key")]
    assert problems[0].hint.startswith(f"the mirror set by apt.debian.archive in profile holes ({tmp_path}/holes.yaml)")
    assert 'apt_repositories["https://pkgs.k8s.io"] in profile holes' in problems[1].hint
    assert problems[1].need.startswith("signing key of apt repository kubernetes (plan step ")


def test_a_registry_mirror_on_a_closed_port_or_not_a_registry_is_a_problem(tmp_path: Path) -> None:
    port = closed_port()
    with http_site(archive_files()) as apt, http_site() as not_registry:
        profile = local_profile(tmp_path / "r.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{port}")
        problems = check_sources(make_plan("k8s", profile), Route.HOST)
        assert [(p.url, p.what) for p in problems] == [(f"http://127.0.0.1:{port}", "connection refused")]
        assert problems[0].need.startswith("image pre-pull from registry.k8s.io")
        assert "registries.registry.k8s.io in profile r" in problems[0].hint
        profile = local_profile(tmp_path / "r.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{not_registry.port}")
        problems = check_sources(make_plan("k8s", profile), Route.HOST)
    assert [p.what for p in problems] == ["HTTP 404 on /v2/: not a registry API"]


def test_one_answering_registry_mirror_is_enough(tmp_path: Path, registry: Site) -> None:
    with http_site(archive_files()) as apt:
        profile = local_profile(tmp_path / "two.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=[f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{registry.port}"])
        assert check_sources(make_plan("k8s", profile), Route.HOST) == []


def test_a_blocked_registry_without_mirror_is_a_problem_unless_blocked_hosts_are_allowed(tmp_path: Path) -> None:
    with http_site(archive_files()) as apt:
        path = local_profile(tmp_path / "nomirror.yaml", apt=f"http://127.0.0.1:{apt.port}", registry=[])
        problems = check_sources(make_plan("k8s", path), Route.HOST)
    assert [(p.url, p.what) for p in problems] == [("https://registry.k8s.io", "blocked by the profile, not asked")]
    assert "registries.registry.k8s.io in profile nomirror" in problems[0].hint


def test_apt_goes_through_the_build_apt_proxy(tmp_path: Path, registry: Site) -> None:
    with http_site(archive_files()) as apt, proxy() as prx:
        profile = local_profile(tmp_path / "px.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}",
                                proxy=f"http://127.0.0.1:{prx.server_address[1]}")
        assert check_sources(make_plan("k8s", profile), Route.HOST) == []
        through = [urlsplit(u).path for u in prx.seen if u.startswith("http://")]
        assert f"{K8S_DEB}/InRelease" in through and "/debian/dists/bookworm/InRelease" in through
        assert f"{K8S_DEB}/Release.key" not in through          # keys are fetched by curl, without the proxy
        assert f"{K8S_DEB}/Release.key" in apt.seen


def test_an_unreachable_proxy_is_one_problem_not_one_per_repository(tmp_path: Path, registry: Site) -> None:
    port = closed_port()
    with http_site(archive_files()) as apt:
        profile = local_profile(tmp_path / "px.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}", proxy=f"http://127.0.0.1:{port}")
        problems = check_sources(make_plan("k8s", profile), Route.HOST)
    assert [(p.url, p.what, p.key) for p in problems] == [
        (f"http://127.0.0.1:{port}", "connection refused", "build_apt_proxy")]
    assert "build_apt_proxy in profile px" in problems[0].hint


def test_a_repository_the_proxy_cannot_fetch_is_a_problem_naming_proxy_and_key(tmp_path: Path, registry: Site) -> None:
    dead = closed_port()
    with http_site(archive_files()) as apt, proxy() as prx:
        profile = local_profile(tmp_path / "px.yaml", apt=f"http://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}",
                                proxy=f"http://127.0.0.1:{prx.server_address[1]}")
        text = profile.read_text().replace(f"http://127.0.0.1:{apt.port}/k8s", f"http://127.0.0.1:{dead}/k8s")
        profile.write_text(text)
        problems = check_sources(make_plan("k8s", profile), Route.HOST)
    assert [p.url for p in problems] == [f"http://127.0.0.1:{dead}{K8S_DEB}/", f"http://127.0.0.1:{dead}{K8S_DEB}/Release.key"]
    assert problems[0].what == "build_apt_proxy could not fetch it (HTTP 502)"
    assert "build_apt_proxy http://127.0.0.1:" in problems[0].hint and 'apt_repositories["https://pkgs.k8s.io"]' in problems[0].hint
    assert problems[1].what == "connection refused"             # the key: straight from the build, not proxied


def test_a_server_that_never_answers_times_out(tmp_path: Path, registry: Site) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)                # the kernel accepts connections; nobody ever answers
        port = silent.getsockname()[1]
        profile = local_profile(tmp_path / "slow.yaml", apt=f"http://127.0.0.1:{port}",
                                registry=f"http://127.0.0.1:{registry.port}")
        problems = check_sources(make_plan("apt-demo", profile), Route.HOST, timeout=0.3)
    assert [p.url for p in problems] == [f"http://127.0.0.1:{port}/debian", f"http://127.0.0.1:{port}/debian-security"]
    assert all(p.what.startswith("timed out") for p in problems)


# ------------------------------------------------------------------------------------------- https

@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "snapbuild test mirror")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_https_mirrors_are_asked_over_tls_directly_and_through_the_proxy(
        tmp_path: Path, registry: Site, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    with http_site(archive_files(), tls=server_tls) as apt, proxy() as prx:
        profile = local_profile(tmp_path / "tls.yaml", apt=f"https://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}")
        plan = make_plan("k8s", profile)
        # This host's default trust store does not know the test's certificate: every TLS source says so.
        problems = check_sources(plan, Route.HOST)
        assert {p.url for p in problems} == {s.url for s in plan_sources(plan) if s.url.startswith("https://")}
        assert all(p.what.startswith("TLS certificate not accepted") for p in problems)
        assert check_sources(plan, Route.HOST, tls_context=trusting) == []
        apt.seen.clear()
        proxied = local_profile(tmp_path / "tlsproxy.yaml", apt=f"https://127.0.0.1:{apt.port}",
                                registry=f"http://127.0.0.1:{registry.port}",
                                proxy=f"http://127.0.0.1:{prx.server_address[1]}")
        assert check_sources(make_plan("k8s", proxied), Route.HOST, tls_context=trusting) == []
        assert f"CONNECT 127.0.0.1:{apt.port}" in prx.seen             # https through the proxy: a tunnel
        assert f"{K8S_DEB}/InRelease" in apt.seen


# ------------------------------------------------------------------------------------------- the error

def test_problems_become_one_user_error_listing_each_with_its_fix(tmp_path: Path) -> None:
    plan = make_plan("k8s", "cloudinative", "ubuntu-24.04")
    problems = [Problem(url="http://127.0.0.1:1/k8s/", need="apt repository kubernetes (plan step 3)",
                        what="connection refused", hint='start the mirror, or point apt_repositories["x"] at one'),
                Problem(url="https://registry.k8s.io", need="image pre-pull from registry.k8s.io (plan step 20)",
                        what="blocked by the profile, not asked", hint="add a mirror under registries.registry.k8s.io")]
    error = sources_error(plan, Route.HOST, problems)
    assert isinstance(error, UserError) and error.exit_code == EXIT_USAGE
    assert error.message.splitlines() == [
        "2 download sources of recipe 'k8s' cannot be reached from this host:",
        "  - apt repository kubernetes (plan step 3): http://127.0.0.1:1/k8s/: connection refused",
        '    fix: start the mirror, or point apt_repositories["x"] at one',
        "  - image pre-pull from registry.k8s.io (plan step 20): https://registry.k8s.io: blocked by the profile, "
        "not asked",
        "    fix: add a mirror under registries.registry.k8s.io"]
    assert error.hint is not None and "snapbuild profile init" in error.hint and "--from cloudinative" in error.hint


def test_require_reachable_raises_for_a_closed_port_and_passes_when_all_answer(tmp_path: Path, registry: Site) -> None:
    with http_site(archive_files()) as apt:
        good = local_profile(tmp_path / "good.yaml", apt=f"http://127.0.0.1:{apt.port}",
                             registry=f"http://127.0.0.1:{registry.port}")
        require_reachable(make_plan("k8s", good), Route.HOST)
    bad = local_profile(tmp_path / "bad.yaml", apt=f"http://127.0.0.1:{closed_port()}",
                        registry=f"http://127.0.0.1:{registry.port}")
    with pytest.raises(UserError) as caught:
        require_reachable(make_plan("apt-demo", bad), Route.HOST)
    assert caught.value.message.startswith("2 download sources of recipe 'apt-demo' cannot be reached from this host:")
    assert "connection refused" in caught.value.message and "apt.debian.security in profile bad" in caught.value.message


def test_what_happened_is_said_in_a_few_words() -> None:
    from snapbuild.host.reachability import _describe

    assert _describe(socket.gaierror(-2, "Name or service not known"), "mirror.example.internal") == (
        "DNS failure: mirror.example.internal does not resolve (Name or service not known)")
    assert _describe(ConnectionRefusedError(111, "Connection refused"), "h") == "connection refused"
    assert _describe(TimeoutError("timed out"), "h") == "timed out"
    assert _describe(OSError("Tunnel connection failed: 403 Forbidden"), "h") == (
        "build_apt_proxy refused the CONNECT (HTTP 403)")
    assert _describe(OSError(113, "No route to host"), "h") == "no route to host"
