"""Run `snapbuild verify` on a built image the way the first-boot tests do, and what Ubuntu's layout needs of
that first boot (tests/vm: the chroot and local builds of the shipped recipes on the debian-13 base)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from snapbuild.distros import Distro

ROOT = Path(__file__).resolve().parents[1]


def snapbuild_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a snapbuild child: temp files, state and cache under `tmp_path`, this checkout first."""
    return {**os.environ, "TMPDIR": str(tmp_path), "SNAPBUILD_STATE_DIR": str(tmp_path / "state"),
            "SNAPBUILD_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def verify_isolated(distro: Distro, recipe: str, output: Path, profile: Path, tmp_path: Path, *,
                    extra: tuple[tuple[str, ...], ...] = ()) -> dict[str, bool]:
    """`snapbuild verify` isolated, with the build's recipe options (so the sources are compared line by line),
    plus `extra` checks run in the booted guest like the recipe's own (through verify's API, in a child)."""
    args = ["verify", str(output), "--network", "isolated", "--recipe", recipe, "--distro", distro.name,
            "--mirrors", str(profile), "--json"]
    if extra:
        (tmp_path / "extra.json").write_text(json.dumps(extra))
        argv = [sys.executable, "-c", _VERIFY_WITH_EXTRA, str(tmp_path / "extra.json"), *args]
    else:
        argv = [sys.executable, "-m", "snapbuild", *args]
    done = subprocess.run(argv, env=snapbuild_env(tmp_path), capture_output=True, text=True, timeout=3600, cwd=ROOT)
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


UBUNTU_FIRST_BOOT = ("APT sources as the build wrote them after first boot",
                     "/etc/resolv.conf is systemd-resolved's stub symlink",
                     "root filesystem grown to the disk")


def assert_first_boot_as_on_ubuntu(checks: dict[str, bool], *, booted_twice: bool = True) -> None:
    """What Ubuntu's layout needs of a first boot was checked and passed; with `booted_twice` (verify's two
    boots), a new machine-id on each. (One server booted in the cloud: assert_fresh_machine checks its id.)"""
    for name in (*UBUNTU_FIRST_BOOT, *(["machine-id is new on every first boot"] if booted_twice else [])):
        assert checks.get(name) is True, f"{name!r} not checked: {sorted(checks)}"
