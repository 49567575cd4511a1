"""`snapbuild chroot base|docker-ce|k8s` run their full step sequence on the Debian 12 base, as shipped.

What this machine cannot reach is stood in for, and nothing else:
- download.docker.com and pkgs.k8s.io: signed APT repositories on 127.0.0.1 (tests/aptrepo.py) hold stand-in
  packages with the upstream names and versions (docker-ce 5:29.2.1-1~debian.12~bookworm, kubeadm
  1.32.12-1.1, ...). The mirror profile maps the upstream URLs onto them. The only edit to the shipped recipes is
  the trusted key fingerprint (our repository cannot be signed with Docker's or Kubernetes' key).
- registry.k8s.io and docker.io: Debian's docker-registry on 127.0.0.1 holding an image this test built, under
  every name `kubeadm config images list` prints (the stand-in kubeadm prints what the real v1.32.12 does, so
  the build's check against the recipe's expected images is the real one).
Everything else is real: Debian's archive through the host's DNS, Debian's containerd (k8s installs it; the
containerd.io stand-in depends on it), containerd running inside the chroot for the pre-pull, the seal, the
compaction and the inspect the build runs on its own output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from snapbuild.digest import file_sha256 as sha256
from snapbuild.host import attach as attaching
from snapbuild.host import grow
from snapbuild.run.scope import undo_scope
from tests.aptrepo import StandIn, build_deb, dists_repository, flat_repository, serve, signing_key
from tests.manifestcheck import check_manifest
from tests.ociregistry import oci_layout, push, registry

ROOT = Path(__file__).resolve().parents[2]
K8S, K8S_REVISION, DOCKER = "1.32.12", "1.1", "29.2.1"
# What kubeadm v1.32.12 prints, in its order (etcd 3.5.24-0: the release-1.32 branch's SupportedEtcdVersion[32]
# since kubernetes/kubernetes#135019); the recipe's prepull.expect must match it exactly or the build fails.
K8S_IMAGES = [f"registry.k8s.io/{name}" for name in (
    f"kube-apiserver:v{K8S}", f"kube-controller-manager:v{K8S}", f"kube-scheduler:v{K8S}", f"kube-proxy:v{K8S}",
    "coredns/coredns:v1.11.3", "pause:3.10", "etcd:3.5.24-0")]

pytestmark = pytest.mark.system


def _script(body: str) -> str:
    return "#!/bin/sh\n# Stand-in built by snapbuild's tests.\n" + body + "\n"


def _standins() -> tuple[list[StandIn], list[StandIn]]:
    docker_version = f"5:{DOCKER}-1~debian.12~bookworm"
    unit = "[Unit]\nDescription=stand-in {0}\n[Service]\nExecStart={1}\n[Install]\nWantedBy=multi-user.target\n"
    docker = [
        StandIn("docker-ce", docker_version, depends="containerd.io, docker-ce-cli",
                files={"/usr/bin/dockerd": _script("exec sleep infinity"),
                       "/lib/systemd/system/docker.service": unit.format("dockerd", "/usr/bin/dockerd")},
                postinst="getent group docker >/dev/null || groupadd --system docker"),
        StandIn("docker-ce-cli", docker_version, files={"/usr/bin/docker": _script(f"echo {DOCKER}")}),
        StandIn("containerd.io", "1.7.99-1", depends="containerd"),      # Debian's real containerd underneath
        StandIn("docker-compose-plugin", "2.99.0-1~debian.12~bookworm",
                files={"/usr/libexec/docker/cli-plugins/docker-compose": _script("echo compose")}),
        StandIn("docker-buildx-plugin", "0.99.0-1~debian.12~bookworm",
                files={"/usr/libexec/docker/cli-plugins/docker-buildx": _script("echo buildx")}),
    ]
    version = f"{K8S}-{K8S_REVISION}"
    kubeadm = _script(
        'case "$*" in\n'
        f'  "version -o short") echo v{K8S} ;;\n'
        f'  "config images list --kubernetes-version v{K8S}") printf "%s\\n" {" ".join(K8S_IMAGES)} ;;\n'
        '  *) echo "stand-in kubeadm: $*" >&2; exit 1 ;;\nesac')
    k8s = [
        StandIn("kubeadm", version, files={"/usr/bin/kubeadm": kubeadm}),
        StandIn("kubelet", version, files={"/usr/bin/kubelet": _script("exec sleep infinity"),
                                           "/lib/systemd/system/kubelet.service": unit.format("kubelet",
                                                                                             "/usr/bin/kubelet")}),
        StandIn("kubectl", version, files={"/usr/bin/kubectl": _script(f"echo v{K8S}")}),
    ]
    return docker, k8s


@dataclass
class Mirrors:
    recipes: Path
    profile: Path
    registry_url: str
    image_digest: str


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrors]:
    work = tmp_path_factory.mktemp("mirrors")
    key = signing_key(work / "gnupg")
    docker, k8s = _standins()
    debs = work / "debs"
    debs.mkdir()
    site = work / "site"
    docker_root = site / "docker" / "linux" / "debian"
    dists_repository(docker_root, [build_deb(s, debs) for s in docker], suite="bookworm", component="stable",
                     key=key)
    (docker_root / "gpg").write_bytes(key.armored_public_key())
    k8s_root = site / "k8s" / "core:" / "stable:" / f"v{K8S.rsplit('.', 1)[0]}" / "deb"
    flat_repository(k8s_root, [build_deb(s, debs) for s in k8s], key=key)
    (k8s_root / "Release.key").write_bytes(key.armored_public_key())
    # The shipped recipes, with only the trusted fingerprint swapped for this run's key.
    recipes = work / "recipes"
    for name in ("docker-ce", "k8s"):
        shutil.copytree(ROOT / "recipes" / name, recipes / name)
        path = recipes / name / "recipe.yaml"
        text, count = re.subn(r"key_fingerprint: .*", f"key_fingerprint: {key.fingerprint}", path.read_text())
        assert count == 1
        path.write_text(text)
    digest = oci_layout(work / "layout", {"hello.txt": b"stand-in control-plane image\n"}, "1.0")
    with serve(site) as port, registry(work / "registry") as reg:
        for ref in K8S_IMAGES:
            push(work / "layout", "1.0", reg.address + "/" + ref.removeprefix("registry.k8s.io/"))
        profile = work / "test-mirrors.yaml"
        profile.write_text(json.dumps({
            "description": "stand-ins on 127.0.0.1 for what this machine cannot reach",
            "apt_repositories": {"https://download.docker.com": f"http://127.0.0.1:{port}/docker",
                                 "https://pkgs.k8s.io": f"http://127.0.0.1:{port}/k8s"},
            "registries": {"registry.k8s.io": [f"http://{reg.address}"], "docker.io": [f"http://{reg.address}"]},
            "blocked": ["registry.k8s.io", "quay.io", "ghcr.io", "gcr.io", "download.docker.com", "pkgs.k8s.io"],
        }))
        yield Mirrors(recipes=recipes, profile=profile, registry_url=f"http://{reg.address}", image_digest=digest)


@pytest.mark.parametrize("recipe", ["base", "docker-ce", "k8s"])
def test_marketplace_recipe_runs_its_full_sequence_in_a_chroot(recipe: str, mirrors: Mirrors,
                                                                 debian_base_image: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("snapbuild chroot needs root (loop devices, mounts, chroot)")
    env = {**os.environ, "TMPDIR": str(tmp_path), "SNAPBUILD_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    base_digest = sha256(debian_base_image)
    output = tmp_path / f"{recipe}.qcow2"
    done = subprocess.run([sys.executable, "-m", "snapbuild", "--recipes-dir", str(mirrors.recipes), "chroot", recipe,
                           "--distro", "debian-12", "--mirrors", str(mirrors.profile), "--base",
                           str(debian_base_image), "-o", str(output), "--events", "-"],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-5000:]
    # --events -: stdout is the JSON-lines stream alone; its last event is the result.
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "build_started" and events[0]["builder"] == "chroot"
    steps = [e["step"] for e in events if e["event"] == "step_finished" and e["level"] == "step"]
    assert steps[0] == "preflight" and {"provision", "seal", "check image", "manifest"} <= set(steps)
    assert events[-1]["event"] == "result" and events[-1]["ok"] is True
    manifest = check_manifest(Path(events[-1]["manifest"]), builder="chroot")
    assert manifest["output"]["sha256"] == sha256(output)
    assert sha256(debian_base_image) == base_digest
    assert not list((tmp_path / "state" / "builds").glob("*.json")), "a ledger outlived the build"

    with undo_scope(None) as scope:
        attached = attaching.attach(scope, output, tmp_path, backend="loop", read_only=True)
        part = grow.choose_root(grow.probe(attached), output)
        root = tmp_path / "look"
        root.mkdir()
        subprocess.run(["mount", "-o", "ro,noload", part.device, str(root)], check=True)
        scope.add_undo("unmount", subprocess.run, ["umount", str(root)], check=True)
        _check_inside(recipe, root, manifest, mirrors)


def _held(root: Path) -> set[str]:
    status = (root / "var/lib/dpkg/status").read_text()
    return {m.group(1) for m in re.finditer(r"^Package: (\S+)\nStatus: hold ", status, flags=re.MULTILINE)}


def _check_inside(recipe: str, root: Path, manifest: dict[str, Any], mirrors: Mirrors) -> None:
    packages = manifest["packages"]
    assert isinstance(packages, dict)
    if recipe == "base":
        assert manifest["pulled_images"] == {} and packages == {}
        return
    wants = root / "etc/systemd/system/multi-user.target.wants"
    if recipe == "docker-ce":
        assert packages["docker-ce"] == f"5:{DOCKER}-1~debian.12~bookworm"
        assert {"docker-ce", "docker-ce-cli"} <= _held(root)
        assert (root / "usr/bin/containerd").exists()                     # Debian's, under containerd.io
        daemon = json.loads((root / "etc/docker/daemon.json").read_text())
        assert daemon["registry-mirrors"] == [mirrors.registry_url]
        assert (wants / "docker.service").is_symlink() and (wants / "containerd.service").is_symlink()
        assert re.search(r"^docker:", (root / "etc/group").read_text(), flags=re.MULTILINE)
        assert "docker" in "".join(p.read_text() for p in (root / "etc/cloud/cloud.cfg.d").glob("*snapbuild*"))
        assert list((root / "etc/apt/sources.list.d").glob("docker*"))
        return
    assert packages["kubeadm"] == f"{K8S}-{K8S_REVISION}" and "containerd" in packages
    assert {"kubeadm", "kubelet", "kubectl"} <= _held(root)
    # Every image kubeadm listed was pulled into k8s.io, and its content is in the image itself.
    assert manifest["pulled_images"] == {ref: mirrors.image_digest for ref in K8S_IMAGES}
    blob = root / "var/lib/containerd/io.containerd.content.v1.content/blobs/sha256"
    assert (blob / mirrors.image_digest.removeprefix("sha256:")).is_file()
    hosts = (root / "etc/containerd/certs.d/registry.k8s.io/hosts.toml").read_text()
    assert f'[host."{mirrors.registry_url}"]' in hosts
    assert 'config_path = "/etc/containerd/certs.d"' in (root / "etc/containerd/config.toml").read_text()
    assert (wants / "kubelet.service").is_symlink() and (wants / "containerd.service").is_symlink()
    assert "br_netfilter" in (root / "etc/modules-load.d/snapbuild-k8s.conf").read_text()
    assert "net.ipv4.ip_forward = 1" in (root / "etc/sysctl.d/99-snapbuild-k8s.conf").read_text()
    assert (root / "etc/systemd/system/swap.target").resolve() == Path("/dev/null")
