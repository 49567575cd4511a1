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

import json
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
from tests.standins import K8S_IMAGES, standins

ROOT = Path(__file__).resolve().parents[2]
DISTRO = get_distro("debian-13")

pytestmark = pytest.mark.vm


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp_path), "SNAPBUILD_STATE_DIR": str(tmp_path / "state"),
            "SNAPBUILD_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


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
                               env=_env(tmp_path), capture_output=True, text=True, timeout=1800, cwd=ROOT)
        digest = served.image_digest
    assert built.returncode == 0, built.stderr[-5000:]
    return output, profile, digest


def _verify(recipe: str, output: Path, profile: Path, tmp_path: Path, *,
            extra: tuple[tuple[str, ...], ...] = ()) -> dict[str, bool]:
    """`snapbuild verify` isolated, with the build's recipe options (so the sources are compared line by line),
    plus `extra` checks run in the booted guest like the recipe's own (through verify's API, in a child)."""
    args = ["verify", str(output), "--network", "isolated", "--recipe", recipe, "--distro", DISTRO.name,
            "--mirrors", str(profile), "--json"]
    if extra:
        (tmp_path / "extra.json").write_text(json.dumps(extra))
        argv = [sys.executable, "-c", _VERIFY_WITH_EXTRA, str(tmp_path / "extra.json"), *args]
    else:
        argv = [sys.executable, "-m", "snapbuild", *args]
    done = subprocess.run(argv, env=_env(tmp_path), capture_output=True, text=True, timeout=3600, cwd=ROOT)
    report = json.loads(done.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert done.returncode == 0 and not failed, json.dumps(failed, indent=2) + done.stderr[-3000:]
    return {c["name"]: c["ok"] for c in report["checks"]}


# The CLI's verify with checks added to the recipe's: the plan the CLI makes gets `extra` appended.
_VERIFY_WITH_EXTRA = """
import dataclasses, json, sys
import snapbuild.plan
extra = tuple(tuple(c) for c in json.load(open(sys.argv[1])))
original = snapbuild.plan.plan_from_names
def with_extra(**kwargs):
    plan = original(**kwargs)
    return dataclasses.replace(plan, verify_checks=(*plan.verify_checks, *extra))
snapbuild.plan.plan_from_names = with_extra
from snapbuild.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _assert_first_boot_as_on_ubuntu(checks: dict[str, bool]) -> None:
    for name in ("APT sources as the build wrote them after first boot",
                 "/etc/resolv.conf is systemd-resolved's stub symlink",
                 "root filesystem grown to the disk",
                 "machine-id is new on every first boot"):
        assert checks.get(name) is True, f"{name!r} not checked: {sorted(checks)}"


def test_docker_ce_through_chroot_boots_and_passes_verify_with_no_mirror(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("snapbuild chroot needs root (loop devices, mounts, chroot)")
    output, profile, _ = _build_then_stop_the_mirrors("docker-ce", tmp_path)
    checks = _verify("docker-ce", output, profile, tmp_path)
    _assert_first_boot_as_on_ubuntu(checks)
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
    checks = _verify("k8s", output, profile, tmp_path, extra=(*extra, sandbox))
    _assert_first_boot_as_on_ubuntu(checks)
    assert "recipe check: systemctl is-active containerd" in checks
    assert sum(1 for name in checks if digest in name) == len(K8S_IMAGES)
    assert checks[f"recipe check: {shlex.join(sandbox)}"] is True
