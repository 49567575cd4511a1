"""What `snapbuild chroot` makes must boot as a marketplace image: the shipped `docker-ce` recipe, unedited, built
in a chroot on the Ubuntu-shaped debian-13 base, then booted twice by `snapbuild verify` with every mirror
stopped and the guest isolated (restrict=on).

The build takes what this machine cannot reach from the stand-ins of tests/standins.py (download.docker.com as a
signed APT repository on 127.0.0.1, mapped through a mirror profile that names the stand-ins' key, as an operator
whose mirror re-signs would). Then the stand-ins are stopped, and verify checks the first boot the way Ubuntu's
layout needs it: cloud-init's apt module left the sources the build wrote (the base's cloud.cfg lets it rewrite
them, and trixie's template would add deb-src and -backports), no legacy sources.list, resolv.conf is resolved's
stub symlink again (the chroot replaced it while it worked), the root filesystem grew, the default user is in the
recipe's `docker` group; then the recipe's own checks (docker active, its version, the group) and the seal.

The shipped `k8s` recipe gets the same, plus its pre-pulled images in `k8s.io` with the digests the registry
stand-in served, and containerd's CRI running a pod sandbox from the pre-pulled pause image with no network (a
second chroot build and two more boots: about 5 minutes of the tier).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from snapbuild.distros import get_distro
from tests import imagecache
from tests.cri_client import guest_check
from tests.firstboot import assert_first_boot_as_on_ubuntu, snapbuild_env, verify_isolated
from tests.standins import K8S_IMAGES, standins

ROOT = Path(__file__).resolve().parents[2]
DISTRO = get_distro("debian-13")

pytestmark = pytest.mark.vm


def _build_then_stop_the_mirrors(recipe: str, tmp_path: Path) -> tuple[Path, Path, str]:
    """The chroot build through the stand-ins; they are gone when this returns. (output, profile, image digest)"""
    base = imagecache.base_image(DISTRO.name)          # built (and cached) by the system tier
    work = tmp_path / "standins"
    work.mkdir()
    output = tmp_path / f"{recipe}.qcow2"
    with standins(work, DISTRO) as served:
        profile = served.profile(work / "test-mirrors.yaml")
        # No --recipes-dir: the shipped recipe (ROOT/recipes) as it is.
        built = subprocess.run([sys.executable, "-m", "snapbuild", "chroot", recipe, "--distro", DISTRO.name,
                                "--mirrors", str(profile), "--base", str(base), "-o", str(output)],
                               env=snapbuild_env(tmp_path), capture_output=True, text=True, timeout=1800, cwd=ROOT)
        digest = served.image_digest
    assert built.returncode == 0, built.stderr[-5000:]
    return output, profile, digest


def test_docker_ce_through_chroot_boots_and_passes_verify_with_no_mirror(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("snapbuild chroot needs root (loop devices, mounts, chroot)")
    output, profile, _ = _build_then_stop_the_mirrors("docker-ce", tmp_path)
    checks = verify_isolated(DISTRO, "docker-ce", output, profile, tmp_path)
    assert_first_boot_as_on_ubuntu(checks)
    assert checks["default user 'debian' exists with the recipe's groups"] is True
    assert {"recipe check: systemctl is-active docker"} <= set(checks)
    assert any(name.startswith("recipe check: sh -c 'docker version") for name in checks)


def test_k8s_through_chroot_boots_with_its_images_and_passes_verify_with_no_mirror(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("snapbuild chroot needs root (loop devices, mounts, chroot)")
    output, profile, digest = _build_then_stop_the_mirrors("k8s", tmp_path)
    # Every image kubeadm listed, in k8s.io with the digest the registry served (`ctr images ls`: REF TYPE DIGEST).
    extra = tuple(("sh", "-c", f"ctr -n k8s.io images ls | grep -Eq '^{re.escape(ref)} +[^ ]+ +{digest} '")
                  for ref in K8S_IMAGES)
    # And kubelet's first call works offline: containerd's CRI runs a pod sandbox from the pre-pulled pause image
    # (tests/cri_client.py speaks the CRI: Debian has no crictl, and the test's kubeadm is a stand-in).
    sandbox = guest_check()
    checks = verify_isolated(DISTRO, "k8s", output, profile, tmp_path, extra=(*extra, sandbox))
    assert_first_boot_as_on_ubuntu(checks)
    assert "recipe check: systemctl is-active containerd" in checks
    assert sum(1 for name in checks if digest in name) == len(K8S_IMAGES)
    assert checks[f"recipe check: {shlex.join(sandbox)}"] is True
