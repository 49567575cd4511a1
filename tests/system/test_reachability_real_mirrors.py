"""The reachability check against real mirrors on 127.0.0.1: signed APT repositories laid out as the Debian
archive, download.docker.com and pkgs.k8s.io are (tests/aptrepo.py), the apt proxy the vm tests use
(tests/aptproxy.py, here allowed to forward to 127.0.0.1 only, so nothing leaves this host), and Debian's
docker-registry (tests/ociregistry.py). A k8s and a docker-ce plan whose profile points at them pass; taking one
away gives exactly that problem, with the profile key to change.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapbuild.errors import UserError
from snapbuild.host.reachability import Route, check_sources, require_reachable
from snapbuild.paths import data_dir
from snapbuild.plan import Plan, plan_from_names
from snapbuild.recipes import Library
from tests import aptproxy
from tests.aptrepo import dists_repository, flat_repository, serve, signing_key
from tests.ociregistry import registry

pytestmark = pytest.mark.system

K8S_DEB = "k8s/core:/stable:/v1.32/deb"


@dataclass(frozen=True)
class Mirrors:
    root: Path
    apt_port: int
    proxy_port: int
    proxy_stats: aptproxy.ProxyStats


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrors]:
    """The APT side, shared by the tests (read-only for them): archive, security, docker and k8s repositories."""
    top = tmp_path_factory.mktemp("mirrors")
    key = signing_key(top / "gnupg")
    root = top / "www"
    for suite in ("bookworm", "bookworm-updates"):
        dists_repository(root / "debian", [], suite=suite, component="main", key=key)
    dists_repository(root / "debian-security", [], suite="bookworm-security", component="main", key=key)
    dists_repository(root / "docker/linux/debian", [], suite="bookworm", component="stable", key=key)
    (root / "docker/linux/debian/gpg").write_bytes(key.armored_public_key())
    flat_repository(root / K8S_DEB, [], key=key)
    (root / K8S_DEB / "Release.key").write_bytes(key.armored_public_key())
    with pytest.MonkeyPatch.context() as patch:
        # The proxy forwards to the Debian archive's hosts only; here to this host's loopback only.
        patch.setattr(aptproxy, "ARCHIVE_HOSTS", frozenset({"127.0.0.1"}))
        with serve(root) as apt_port, aptproxy.apt_proxy() as (proxy_port, stats):
            yield Mirrors(root=root, apt_port=apt_port, proxy_port=proxy_port, proxy_stats=stats)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def profile(path: Path, *, apt: str, registry: str, proxy: str | None) -> Path:
    data: dict[str, object] = {
        "apt": {"debian": {"archive": f"{apt}/debian", "security": f"{apt}/debian-security"}},
        "apt_repositories": {"https://download.docker.com": f"{apt}/docker", "https://pkgs.k8s.io": f"{apt}/k8s"},
        "registries": {"registry.k8s.io": [registry]},
        "blocked": ["deb.debian.org", "download.docker.com", "pkgs.k8s.io", "registry.k8s.io", "quay.io", "ghcr.io",
                    "gcr.io"],
    }
    if proxy:
        data["build_apt_proxy"] = proxy
    path.write_text(json.dumps(data))
    return path


def plan(recipe: str, profile_path: Path) -> Plan:
    return plan_from_names(library=Library([data_dir("recipes")]), recipe_name=recipe, distro_name="debian-12",
                           profile_name=str(profile_path), config_variables={}, set_values={})


def test_k8s_and_docker_ce_plans_reach_real_mirrors_directly_and_through_the_proxy(
        mirrors: Mirrors, tmp_path: Path) -> None:
    with registry(tmp_path / "registry") as reg:
        apt = f"http://127.0.0.1:{mirrors.apt_port}"
        direct = profile(tmp_path / "direct.yaml", apt=apt, registry=f"http://{reg.address}", proxy=None)
        proxied = profile(tmp_path / "proxied.yaml", apt=apt, registry=f"http://{reg.address}",
                          proxy=f"http://127.0.0.1:{mirrors.proxy_port}")
        for recipe in ("k8s", "docker-ce"):
            assert check_sources(plan(recipe, direct), Route.HOST) == []
        before = len(mirrors.proxy_stats.served)
        require_reachable(plan("k8s", proxied), Route.HOST)
        served = mirrors.proxy_stats.served[before:]
        assert f"{apt}/{K8S_DEB}/InRelease" in served
        assert f"{apt}/debian/dists/bookworm-updates/InRelease" in served
        assert not any(url.endswith("Release.key") for url in served)     # keys: curl, not through apt's proxy


def test_a_stopped_registry_is_exactly_one_problem_naming_its_registry(mirrors: Mirrors, tmp_path: Path) -> None:
    apt = f"http://127.0.0.1:{mirrors.apt_port}"
    with registry(tmp_path / "registry") as reg:
        path = profile(tmp_path / "reg.yaml", apt=apt, registry=f"http://{reg.address}",
                       proxy=f"http://127.0.0.1:{mirrors.proxy_port}")
        assert check_sources(plan("k8s", path), Route.HOST) == []
    problems = check_sources(plan("k8s", path), Route.HOST)     # docker-registry stopped (by its PID)
    assert [(p.url, p.what) for p in problems] == [(f"http://{reg.address}", "connection refused")]
    assert problems[0].need.startswith("image pre-pull from registry.k8s.io (plan step ")
    assert problems[0].hint == (f"start the mirror, or point registries.registry.k8s.io in profile reg ({path}) at "
                                "one the build reaches")


def test_a_proxy_on_a_closed_port_is_exactly_one_problem(mirrors: Mirrors, tmp_path: Path) -> None:
    port = closed_port()
    path = profile(tmp_path / "noproxy.yaml", apt=f"http://127.0.0.1:{mirrors.apt_port}",
                   registry=f"http://127.0.0.1:{closed_port()}", proxy=f"http://127.0.0.1:{port}")
    # docker-ce pulls no image, so only its apt side counts: every repository goes through the dead proxy.
    with pytest.raises(UserError) as caught:
        require_reachable(plan("docker-ce", path), Route.HOST)
    assert caught.value.message.splitlines() == [
        "1 download source of recipe 'docker-ce' cannot be reached from this host:",
        f"  - apt during the build (build_apt_proxy): http://127.0.0.1:{port}: connection refused",
        f"    fix: start the proxy, or fix or remove build_apt_proxy in profile noproxy ({path})"]
    assert caught.value.exit_code == 2


def test_a_mirror_without_the_k8s_repository_is_a_404_naming_its_apt_repositories_entry(
        mirrors: Mirrors, tmp_path: Path) -> None:
    apt = f"http://127.0.0.1:{mirrors.apt_port}"
    with registry(tmp_path / "registry") as reg:
        path = profile(tmp_path / "nok8s.yaml", apt=apt, registry=f"http://{reg.address}", proxy=None)
        text = path.read_text().replace(f"{apt}/k8s", f"{apt}/no-such-k8s")
        path.write_text(text)
        problems = check_sources(plan("k8s", path), Route.HOST)
    repo = f"{apt}/no-such-k8s/core:/stable:/v1.32/deb"
    assert [(p.url, p.what) for p in problems] == [
        (f"{repo}/", f"HTTP 404 (neither InRelease nor Release) for {repo}/InRelease"),
        (f"{repo}/Release.key", f"HTTP 404 for {repo}/Release.key")]
    assert all(f'apt_repositories["https://pkgs.k8s.io"] in profile nok8s ({path})' in p.hint for p in problems)
