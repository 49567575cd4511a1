"""`snapbuild chroot base|docker-ce|k8s` run their full step sequence on the Debian 13 base (laid out like Ubuntu's
cloud image: DEB822 sources plus a legacy sources.list, systemd-resolved's stub symlink), from the shipped recipes
exactly as they are in ROOT/recipes: no copy, no edit.

What this machine cannot reach is stood in for, and nothing else (tests/standins.py):
- download.docker.com and pkgs.k8s.io: signed APT repositories on 127.0.0.1 hold stand-in packages with the
  upstream names and versions for trixie (docker-ce 5:29.2.1-1~debian.13~trixie in the suite `trixie`, kubeadm
  1.32.12-1.1, ...). The mirror profile maps the upstream URLs onto them and, as an operator whose mirror re-signs
  passes their mirror's key, names the key the stand-ins are signed with (our repository cannot be signed with
  Docker's or Kubernetes' key); the build fetches it from the mirror and checks its fingerprint.
- registry.k8s.io and docker.io: Debian's docker-registry on 127.0.0.1 holding an image this test built (a static
  busybox as its entrypoint), under every name `kubeadm config images list` prints (the stand-in kubeadm prints
  what the real v1.32.12 does, so the build's check against the recipe's expected images is the real one).
Everything else is real: Debian's trixie archive through the host's DNS, Debian's containerd (k8s installs it; the
containerd.io stand-in depends on it), containerd running inside the chroot for the pre-pull, the seal, the
compaction and the inspect the build runs on its own output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from snapbuild.digest import file_sha256 as sha256
from snapbuild.digest import tree_digest
from snapbuild.distros import get_distro
from snapbuild.host import attach as attaching
from snapbuild.host import grow
from snapbuild.run.scope import undo_scope
from tests import imagecache
from tests.manifestcheck import check_manifest
from tests.standins import K8S, K8S_IMAGES, K8S_REVISION, PAUSE_ENTRYPOINT, docker_version, standins

ROOT = Path(__file__).resolve().parents[2]
DISTRO = get_distro("debian-13")

pytestmark = pytest.mark.system


@dataclass
class Mirrors:
    profile: Path
    registry_url: str
    image_digest: str
    key: bytes                  # the stand-in repositories' public key, which the profile names


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrors]:
    work = tmp_path_factory.mktemp("mirrors")
    with standins(work, DISTRO) as site:
        yield Mirrors(profile=site.profile(work / "test-mirrors.yaml"), registry_url=f"http://{site.registry_address}",
                      image_digest=site.image_digest, key=site.key_file.read_bytes())


@pytest.fixture(scope="module")
def base_image() -> Path:
    return imagecache.base_image(DISTRO.name)


@pytest.mark.parametrize("recipe", ["base", "docker-ce", "k8s"])
def test_marketplace_recipe_runs_its_full_sequence_in_a_chroot(recipe: str, mirrors: Mirrors, base_image: Path,
                                                                 tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("snapbuild chroot needs root (loop devices, mounts, chroot)")
    env = {**os.environ, "TMPDIR": str(tmp_path), "SNAPBUILD_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    base_digest = sha256(base_image)
    output = tmp_path / f"{recipe}.qcow2"
    # No --recipes-dir: the shipped recipes (ROOT/recipes, this checkout's) as they are.
    done = subprocess.run([sys.executable, "-m", "snapbuild", "chroot", recipe, "--distro", DISTRO.name, "--mirrors", str(mirrors.profile), "--base", str(base_image),
                           "-o", str(output), "--events", "-"],
                          env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    (tmp_path / "build.stderr").write_text(done.stderr)    # the whole build log, kept with pytest's tmp folders
    assert done.returncode == 0, done.stderr[-5000:]
    # --events -: stdout is the JSON-lines stream alone; its last event is the result.
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "build_started" and events[0]["builder"] == "chroot"
    steps = [e["step"] for e in events if e["event"] == "step_finished" and e["level"] == "step"]
    assert steps[0] == "preflight" and {"provision", "seal", "check image", "manifest"} <= set(steps)
    assert events[-1]["event"] == "result" and events[-1]["ok"] is True
    manifest = check_manifest(Path(events[-1]["manifest"]), builder="chroot")
    assert manifest["recipe"]["digest"] == tree_digest(ROOT / "recipes" / recipe)    # the shipped files, unedited
    assert manifest["output"]["sha256"] == sha256(output)
    assert sha256(base_image) == base_digest
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
    # Ubuntu's lessons on the Ubuntu-shaped base: DEB822 only, resolved's stub symlink back after the chroot.
    assert not (root / "etc/apt/sources.list").exists()
    assert "Suites: trixie trixie-updates" in (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert os.readlink(root / "etc/resolv.conf") == DISTRO.resolv_conf_symlink
    if recipe == "base":
        assert manifest["pulled_images"] == {} and packages == {}
        return
    wants = root / "etc/systemd/system/multi-user.target.wants"
    if recipe == "docker-ce":
        assert packages["docker-ce"] == docker_version(DISTRO) == "5:29.2.1-1~debian.13~trixie"
        assert {"docker-ce", "docker-ce-cli"} <= _held(root)
        assert (root / "usr/bin/containerd").exists()                     # Debian's, under containerd.io
        daemon = json.loads((root / "etc/docker/daemon.json").read_text())
        assert daemon["registry-mirrors"] == [mirrors.registry_url]
        assert (wants / "docker.service").is_symlink() and (wants / "containerd.service").is_symlink()
        assert re.search(r"^docker:", (root / "etc/group").read_text(), flags=re.MULTILINE)
        assert "docker" in "".join(p.read_text() for p in (root / "etc/cloud/cloud.cfg.d").glob("*snapbuild*"))
        sources = (root / "etc/apt/sources.list.d/docker.sources").read_text()
        assert "Suites: trixie\n" in sources and "/docker/linux/debian\n" in sources
        assert (root / "etc/apt/keyrings/docker.asc").read_bytes() == mirrors.key    # the mirror's, not Docker's
        return
    assert packages["kubeadm"] == f"{K8S}-{K8S_REVISION}" and "containerd" in packages
    assert (root / "etc/apt/keyrings/kubernetes.asc").read_bytes() == mirrors.key
    assert {"kubeadm", "kubelet", "kubectl"} <= _held(root)
    # Every image kubeadm listed was pulled into k8s.io, and its content is in the image itself.
    assert manifest["pulled_images"] == {ref: mirrors.image_digest for ref in K8S_IMAGES}
    blob = root / "var/lib/containerd/io.containerd.content.v1.content/blobs/sha256"
    manifest_blob = json.loads((blob / mirrors.image_digest.removeprefix("sha256:")).read_bytes())
    # What a pod sandbox needs later with no network: the config and the layer with the pause stand-in's binary.
    config = json.loads((blob / manifest_blob["config"]["digest"].removeprefix("sha256:")).read_bytes())
    assert config["config"]["Entrypoint"] == PAUSE_ENTRYPOINT
    assert all((blob / layer["digest"].removeprefix("sha256:")).is_file() for layer in manifest_blob["layers"])
    assert 'sandbox_image = "registry.k8s.io/pause:3.10"' in (root / "etc/containerd/config.toml").read_text()
    assert "runtime-endpoint: unix:///run/containerd/containerd.sock" in (root / "etc/crictl.yaml").read_text()
    hosts = (root / "etc/containerd/certs.d/registry.k8s.io/hosts.toml").read_text()
    assert f'[host."{mirrors.registry_url}"]' in hosts
    assert 'config_path = "/etc/containerd/certs.d"' in (root / "etc/containerd/config.toml").read_text()
    assert (wants / "kubelet.service").is_symlink() and (wants / "containerd.service").is_symlink()
    assert "br_netfilter" in (root / "etc/modules-load.d/snapbuild-k8s.conf").read_text()
    assert "net.ipv4.ip_forward = 1" in (root / "etc/sysctl.d/99-snapbuild-k8s.conf").read_text()
    assert (root / "etc/systemd/system/swap.target").resolve() == Path("/dev/null")
