"""What `snapbuild chroot` makes must boot as a marketplace image: the chroot demo recipe (a Debian package
installed through the host's DNS, a templated file, an enabled service) built in a chroot on the Ubuntu-shaped
debian-13 base, then booted twice by `snapbuild verify`, which runs the recipe's own checks in the booted guest
and the first-boot checks Ubuntu's layout needs: cloud-init's apt module left the sources the build wrote (the
base's cloud.cfg lets it rewrite them), no legacy sources.list, resolv.conf is resolved's stub symlink again
(the chroot replaced it while it worked), root grown, the default user with its groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import imagecache

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.vm


def test_chroot_build_boots_and_passes_verify_with_the_recipes_checks(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("snapbuild chroot needs root (loop devices, mounts, chroot)")
    base = imagecache.base_image("debian-13")     # built (and cached) by the system tier
    env = {**os.environ, "TMPDIR": str(tmp_path), "SNAPBUILD_STATE_DIR": str(tmp_path / "state"),
           "SNAPBUILD_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    common = [sys.executable, "-m", "snapbuild", "--recipes-dir", str(ROOT / "tests" / "recipes")]
    recipe = ["chroot-demo", "--distro", "debian-13", "--mirrors", "upstream", "--set", "greeting=booted from a chroot"]
    output = tmp_path / "chroot-demo.qcow2"
    built = subprocess.run([*common, "chroot", *recipe, "--base", str(base), "-o", str(output)],
                           env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert built.returncode == 0, built.stderr[-4000:]
    done = subprocess.run([*common, "verify", str(output), "--network", "isolated", "--recipe", *recipe, "--json"],
                          env=env, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    report = json.loads(done.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert done.returncode == 0 and not failed, json.dumps(failed, indent=2) + done.stderr[-3000:]
    names = [c["name"] for c in report["checks"]]
    assert any("snapbuild-demo" in n for n in names) and any("booted from a chroot" in n for n in names)
    assert "machine-id is new on every first boot" in names
    assert "APT sources as the build wrote them after first boot" in names
    assert "/etc/resolv.conf is systemd-resolved's stub symlink" in names
