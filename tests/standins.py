"""Stand-ins for what this machine cannot reach, for one distro: download.docker.com and pkgs.k8s.io as signed APT
repositories on 127.0.0.1 (tests/aptrepo.py), registry.k8s.io and docker.io as Debian's docker-registry on
127.0.0.1 (tests/ociregistry.py), and the mirror profile that maps the upstreams onto them.

The shipped recipes are used as they are: the stand-in repositories are signed with a key made for the run, and the
profile passes that key the way an operator whose mirror re-signs (aptly, Pulp, Artifactory) passes theirs
(`apt_repositories: {UPSTREAM: {url, key_url, key_fingerprint}}`). The key is published only at the profile's
key_url, not where the recipe's own key_url maps to, so a build that fetched the recipe's key would fail.

Package names and versions are the upstream ones for the distro (docker-ce 5:29.2.1-1~debian.13~trixie in the
suite `trixie`, kubeadm 1.32.12-1.1 in the flat pkgs.k8s.io layout); their dependencies are real Debian packages
(containerd). The stand-in kubeadm prints what the real v1.32.12 prints, so the build's check against the recipe's
expected images is the real one. Every control-plane image is one image the test builds: a static busybox (from
Debian's busybox-static on this host) as its entrypoint, so containerd's CRI can start a pod sandbox from the
pre-pulled pause image with no network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from snapbuild.distros import Distro
from tests.aptrepo import SigningKey, StandIn, build_deb, dists_repository, flat_repository, serve, signing_key
from tests.ociregistry import oci_layout, push, registry

K8S, K8S_REVISION, DOCKER = "1.32.12", "1.1", "29.2.1"
# What kubeadm v1.32.12 prints, in its order (etcd 3.5.24-0: the release-1.32 branch's SupportedEtcdVersion[32]
# since kubernetes/kubernetes#135019); the recipe's prepull.expect must match it exactly or the build fails.
K8S_IMAGES = [f"registry.k8s.io/{name}" for name in (
    f"kube-apiserver:v{K8S}", f"kube-controller-manager:v{K8S}", f"kube-scheduler:v{K8S}", f"kube-proxy:v{K8S}",
    "coredns/coredns:v1.11.3", "pause:3.10", "etcd:3.5.24-0")]
BLOCKED = ["registry.k8s.io", "quay.io", "ghcr.io", "gcr.io", "download.docker.com", "pkgs.k8s.io"]
BUSYBOX = Path("/bin/busybox")          # Debian's busybox-static: one static executable, no libraries
# The pause stand-in: a pod sandbox's one process, sleeping until it is stopped (TERM ends it at once).
PAUSE_ENTRYPOINT = ["/bin/busybox", "sh", "-c",
                    "trap 'exit 0' TERM INT; while :; do /bin/busybox sleep 3600 & wait $!; done"]


def docker_version(distro: Distro, upstream: str = DOCKER) -> str:
    """The APT version download.docker.com gives a Docker release on `distro` (what the docker-ce recipe pins)."""
    return f"5:{upstream}-1~{distro.id}.{distro.version}~{distro.codename}"


def _script(body: str) -> str:
    return "#!/bin/sh\n# Stand-in built by snapbuild's tests.\n" + body + "\n"


_UNIT = "[Unit]\nDescription=stand-in {0}\n[Service]\nExecStart={1}\n[Install]\nWantedBy=multi-user.target\n"


def docker_packages(distro: Distro) -> list[StandIn]:
    suffix = f"1~{distro.id}.{distro.version}~{distro.codename}"
    return [
        StandIn("docker-ce", docker_version(distro), depends="containerd.io, docker-ce-cli",
                files={"/usr/bin/dockerd": _script("exec sleep infinity"),
                       "/lib/systemd/system/docker.service": _UNIT.format("dockerd", "/usr/bin/dockerd")},
                postinst="getent group docker >/dev/null || groupadd --system docker"),
        StandIn("docker-ce-cli", docker_version(distro), files={"/usr/bin/docker": _script(f"echo {DOCKER}")}),
        StandIn("containerd.io", "1.7.99-1", depends="containerd"),      # Debian's real containerd underneath
        StandIn("docker-compose-plugin", f"2.99.0-{suffix}",
                files={"/usr/libexec/docker/cli-plugins/docker-compose": _script("echo compose")}),
        StandIn("docker-buildx-plugin", f"0.99.0-{suffix}",
                files={"/usr/libexec/docker/cli-plugins/docker-buildx": _script("echo buildx")}),
    ]


def k8s_packages() -> list[StandIn]:
    version = f"{K8S}-{K8S_REVISION}"
    kubeadm = _script(
        'case "$*" in\n'
        f'  "version -o short") echo v{K8S} ;;\n'
        f'  "config images list --kubernetes-version v{K8S}") printf "%s\\n" {" ".join(K8S_IMAGES)} ;;\n'
        '  *) echo "stand-in kubeadm: $*" >&2; exit 1 ;;\nesac')
    return [
        StandIn("kubeadm", version, files={"/usr/bin/kubeadm": kubeadm}),
        StandIn("kubelet", version, files={"/usr/bin/kubelet": _script("exec sleep infinity"),
                                           "/lib/systemd/system/kubelet.service": _UNIT.format("kubelet",
                                                                                              "/usr/bin/kubelet")}),
        StandIn("kubectl", version, files={"/usr/bin/kubectl": _script(f"echo v{K8S}")}),
    ]


@dataclass(frozen=True)
class StandIns:
    distro: Distro
    key: SigningKey
    apt_host: str               # the APT stand-ins' address and port (127.0.0.1 unless asked otherwise)
    apt_port: int
    registry_address: str       # host:port of the registry stand-in
    image_digest: str           # manifest digest of every control-plane image the registry serves
    key_file: Path              # the repositories' public key, ASCII-armored (for a profile's key_file)

    def profile(self, path: Path, *, apt_base: str | None = None, registry_base: str | None = None,
                archive_base: str | None = None, key: str = "url", forwards: Sequence[dict[str, str]] = (),
                description: str = "stand-ins on 127.0.0.1 for what this machine cannot reach") -> Path:
        """Write the mirror profile: upstreams onto the stand-ins (at `apt_base`/`registry_base` as the builder
        reaches them; where they listen by default), the stand-ins' key passed as `key_url` ("url") or `key_file`
        ("file"); with `archive_base` (a Debian archive mirror, tests/aptproxy.py, as the builder reaches it) the
        distro's archive and security sources point there too."""
        apt = (apt_base or f"http://{self.apt_host}:{self.apt_port}").rstrip("/")
        reg = (registry_base or f"http://{self.registry_address}").rstrip("/")

        def entry(name: str) -> dict[str, str]:
            if key == "file":
                return {"url": f"{apt}/{name}", "key_file": str(self.key_file),
                        "key_fingerprint": self.key.fingerprint}
            assert key == "url", key
            return {"url": f"{apt}/{name}", "key_url": f"{apt}/{name}/mirror-key.asc",
                    "key_fingerprint": self.key.fingerprint}

        doc: dict[str, object] = {
            "description": description,
            "apt_repositories": {"https://download.docker.com": entry("docker"), "https://pkgs.k8s.io": entry("k8s")},
            "registries": {"registry.k8s.io": [reg], "docker.io": [reg]},
            "blocked": BLOCKED,
        }
        if archive_base:
            archive = archive_base.rstrip("/")
            doc["apt"] = {"debian": {"archive": f"{archive}/debian", "security": f"{archive}/debian-security"}}
        if forwards:
            doc["forwards"] = list(forwards)
        path.write_text(json.dumps(doc, indent=1))
        return path


def build_site(work: Path, distro: Distro, key: SigningKey) -> Path:
    """The APT stand-ins' document root: /docker laid out like download.docker.com, /k8s like pkgs.k8s.io."""
    debs = work / "debs"
    debs.mkdir()
    site = work / "site"
    docker_root = site / "docker" / "linux" / distro.id
    dists_repository(docker_root, [build_deb(s, debs) for s in docker_packages(distro)], suite=distro.codename,
                     component="stable", key=key)
    k8s_root = site / "k8s" / "core:" / "stable:" / f"v{K8S.rsplit('.', 1)[0]}" / "deb"
    flat_repository(k8s_root, [build_deb(s, debs) for s in k8s_packages()], key=key)
    # The key where the profile says the mirror publishes it, and nowhere the recipes' key_url maps to.
    for name in ("docker", "k8s"):
        (site / name / "mirror-key.asc").write_bytes(key.armored_public_key())
    return site


def control_plane_image(layout: Path) -> str:
    """The one image every control-plane name is pushed as; its manifest digest."""
    return oci_layout(layout, {"hello.txt": b"stand-in control-plane image\n"}, "1.0",
                      executables={"bin/busybox": BUSYBOX.read_bytes()}, entrypoint=PAUSE_ENTRYPOINT)


@contextmanager
def standins(work: Path, distro: Distro, *, apt_host: str = "127.0.0.1", apt_port: int = 0,
             registry_host: str = "127.0.0.1", registry_port: int = 0) -> Iterator[StandIns]:
    """Build and serve the stand-ins for `distro` under `work` until the block ends (ports 0: free ones; fixed
    ones where guests reach them through forwards set up before the test, as the test cloud's guestfwd)."""
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: install Debian's busybox-static (.ci/test-packages.txt)")
    key = signing_key(work / "gnupg")
    key_file = work / "mirror-key.asc"
    key_file.write_bytes(key.armored_public_key())
    site = build_site(work, distro, key)
    digest = control_plane_image(work / "layout")
    with serve(site, host=apt_host, port=apt_port) as port, \
            registry(work / "registry", host=registry_host, port=registry_port) as reg:
        for ref in K8S_IMAGES:
            push(work / "layout", "1.0", reg.address + "/" + ref.removeprefix("registry.k8s.io/"))
        yield StandIns(distro=distro, key=key, apt_host=apt_host, apt_port=port, registry_address=reg.address, image_digest=digest,
                       key_file=key_file)
