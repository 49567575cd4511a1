"""What `snapbuild chroot` makes must boot as a marketplace image: the chroot demo recipe (a Debian package
installed through the host's DNS, a templated file, an enabled service) built in a chroot, then booted twice
by `snapbuild verify`, which runs the recipe's own checks in the booted guest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.vm


def test_chroot_build_boots_and_passes_verify_with_the_recipes_checks(debian_base_image: Path,
                                                                       tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("snapbuild chroot needs root (loop devices, mounts, chroot)")
    env = {**os.environ, "TMPDIR": str(tmp_path), "SNAPBUILD_STATE_DIR": str(tmp_path / "state"),
           "SNAPBUILD_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    common = [sys.executable, "-m", "snapbuild", "--recipes-dir", str(ROOT / "tests" / "recipes")]
    recipe = ["chroot-demo", "--distro", "debian-12", "--mirrors", "upstream", "--set", "greeting=booted from a chroot"]
    output = tmp_path / "chroot-demo.qcow2"
    built = subprocess.run([*common, "chroot", *recipe, "--base", str(debian_base_image), "-o", str(output)],
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
