"""The shipped `docker-ce` and `k8s` recipes, unedited, through `snapbuild local` on the Ubuntu-shaped debian-13 base,
then booted by `snapbuild verify` with every mirror stopped.

The builder VM is `isolated` (restrict=on): it reaches only the profile's guest forwards, each to a server this
test runs on 127.0.0.1 and stops before verify boots the result:

    10.0.2.100:3142 -> tests/aptproxy.py, a mirror of the Debian archive (trixie: containerd and the rest are real)
    10.0.2.101:8080 -> the download.docker.com and pkgs.k8s.io stand-ins (tests/standins.py), signed with a key made
                       for the run, which the profile passes as an operator passes their re-signing mirror's key
    10.0.2.102:5000 -> the registry stand-in (the profile maps registry.k8s.io and docker.io onto it)

So the build's apt saw only mirrors, as in an air-gapped cloud, and what the booted image has, it carried: the
sources the build wrote (cloud-init's apt module did not rewrite them; the legacy sources.list is gone), resolved's
stub symlink, a grown root, the default user in the recipe's groups, the recipe's own checks and a clean seal; for
k8s also every image kubeadm lists in `k8s.io` with the registry's digest and containerd's CRI running a pod sandbox
from the pre-pulled pause image with no network.

.ci/run builds docker-ce; k8s through `local` is in `tox -e full` (.ci/run builds k8s through `chroot` and the
test cloud's real guests).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from snapbuild.distros import get_distro
from tests import imagecache
from tests.aptproxy import apt_proxy
from tests.cri_client import guest_check
from tests.firstboot import assert_first_boot_as_on_ubuntu, snapbuild_env, verify_isolated
from tests.manifestcheck import check_manifest
from tests.qemuprocs import qemu_pids_mentioning
from tests.standins import K8S, K8S_IMAGES, K8S_REVISION, docker_version, standins

ROOT = Path(__file__).resolve().parents[2]
DISTRO = get_distro("debian-13")
ARCHIVE_GUEST, STANDIN_GUEST, REGISTRY_GUEST = "10.0.2.100:3142", "10.0.2.101:8080", "10.0.2.102:5000"

pytestmark = pytest.mark.vm


@dataclass(frozen=True)
class LocalBuild:
    output: Path
    profile: Path
    manifest: dict[str, Any]
    image_digest: str       # what the registry stand-in served for every control-plane image


def _build_then_stop_the_mirrors(recipe: str, tmp_path: Path, *, memory_mb: int) -> LocalBuild:
    """`snapbuild local RECIPE`, isolated, through the archive mirror and the stand-ins; all gone when this returns."""
    base = imagecache.base_image(DISTRO.name)          # built (and cached) by the system tier
    work = tmp_path / "standins"
    work.mkdir()
    output = tmp_path / "out" / f"{recipe}.qcow2"
    output.parent.mkdir()
    env = snapbuild_env(tmp_path)
    with apt_proxy() as (proxy_port, archive), standins(work, DISTRO) as served:
        profile = served.profile(
            work / "test-mirrors.yaml", apt_base=f"http://{STANDIN_GUEST}", registry_base=f"http://{REGISTRY_GUEST}",
            archive_base=f"http://{ARCHIVE_GUEST}",
            description="stand-ins and a Debian archive mirror on 127.0.0.1, reached through QEMU guestfwd",
            forwards=[{"guest": ARCHIVE_GUEST, "host": f"127.0.0.1:{proxy_port}"},
                      {"guest": STANDIN_GUEST, "host": f"{served.apt_host}:{served.apt_port}"},
                      {"guest": REGISTRY_GUEST, "host": served.registry_address}])
        # No --recipes-dir: the shipped recipe (ROOT/recipes) as it is.
        built = subprocess.run([sys.executable, "-m", "snapbuild", "local", recipe, "--distro", DISTRO.name,
                                "--network", "isolated", "--mirrors", str(profile), "--base", str(base),
                                "--memory", str(memory_mb), "-o", str(output), "--json"],
                               env=env, capture_output=True, text=True, timeout=3600, cwd=ROOT)
        digest = served.image_digest
    assert built.returncode == 0, built.stderr[-6000:]
    result = json.loads(built.stdout)
    assert Path(result["output"]) == output and output.is_file()
    manifest = check_manifest(Path(result["manifest"]), builder="local")
    assert manifest["recipe"]["name"] == recipe and manifest["recipe"]["distro"] == DISTRO.name
    assert manifest["details"]["guest_os"].startswith("Debian GNU/Linux 13")
    assert manifest["seal"]["in_guest"] == "clean"

    # Debian's own packages came through the archive mirror, and nothing else was asked of it.
    debs = [path.rsplit("/", 1)[-1] for path in archive.served if path.endswith(".deb")]
    assert any(name.startswith("containerd_") for name in debs), debs
    assert archive.refused == []
    assert qemu_pids_mentioning(str(tmp_path)) == [], "a QEMU process outlived the build"
    return LocalBuild(output=output, profile=profile, manifest=manifest, image_digest=digest)


def test_docker_ce_through_local_boots_and_passes_verify_with_no_mirror(tmp_path: Path) -> None:
    build = _build_then_stop_the_mirrors("docker-ce", tmp_path, memory_mb=1536)
    assert build.manifest["packages"].get("docker-ce") == docker_version(DISTRO), build.manifest["packages"]

    checks = verify_isolated(DISTRO, "docker-ce", build.output, build.profile, tmp_path)
    assert_first_boot_as_on_ubuntu(checks)
    assert checks["default user 'debian' exists with the recipe's groups"] is True
    assert "recipe check: systemctl is-active docker" in checks
    assert any(name.startswith("recipe check: sh -c 'docker version") for name in checks)


@pytest.mark.full
def test_k8s_through_local_boots_with_its_images_and_passes_verify_with_no_mirror(tmp_path: Path) -> None:
    # The image asks for 2 GB (image.min_ram_mb); the builder gets as much.
    build = _build_then_stop_the_mirrors("k8s", tmp_path, memory_mb=2048)
    manifest, digest = build.manifest, build.image_digest
    assert manifest["packages"].get("kubeadm") == f"{K8S}-{K8S_REVISION}", manifest["packages"]
    assert set(K8S_IMAGES) <= set(manifest["pulled_images"]), manifest["pulled_images"]
    assert set(manifest["pulled_images"].values()) == {digest}, manifest["pulled_images"]

    # Every image kubeadm listed, in k8s.io with the digest the registry served (`ctr images ls`: REF TYPE DIGEST),
    # and containerd's CRI running a pod sandbox from the pre-pulled pause image with no network.
    images = tuple(("sh", "-c", f"ctr -n k8s.io images ls | grep -Eq '^{re.escape(ref)} +[^ ]+ +{digest} '")
                   for ref in K8S_IMAGES)
    sandbox = guest_check()
    checks = verify_isolated(DISTRO, "k8s", build.output, build.profile, tmp_path, extra=(*images, sandbox))
    assert_first_boot_as_on_ubuntu(checks)
    assert "recipe check: systemctl is-active containerd" in checks
    assert sum(1 for name in checks if digest in name) == len(K8S_IMAGES)
    assert checks[f"recipe check: {shlex.join(sandbox)}"] is True
