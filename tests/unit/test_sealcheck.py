"""The sealing checker finds each kind of violation in a root tree (real files, planted one at a time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapbuild.sealing.checker import check_root
from tests.sealplants import PLANTS, code_of


def clean_root(tmp_path: Path, distro: str = "ubuntu") -> Path:
    root = tmp_path / "root"
    for folder in ("etc/ssh", "etc/apt/apt.conf.d", "etc/sudoers.d", "var/lib/dbus", "var/lib/cloud", "var/log",
                   "var/lib/apt/lists/partial", "var/cache/apt/archives", "tmp", "var/tmp", "root", "home",
                   "usr/sbin", "var/lib/systemd", "run/systemd/resolve"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(f"ID={distro}\n")
    (root / "etc/machine-id").write_text("")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "var/log/syslog").write_text("")
    if distro == "ubuntu":
        os.symlink("../run/systemd/resolve/stub-resolv.conf", root / "etc/resolv.conf")
    else:
        (root / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")
    return root


def codes(root: Path, **kwargs: object) -> set[str]:
    return {v["code"] for v in check_root(str(root), **kwargs)}  # type: ignore[arg-type]


def test_clean_root_has_no_violations(tmp_path: Path) -> None:
    assert check_root(str(clean_root(tmp_path))) == []
    assert check_root(str(clean_root(tmp_path / "d", "debian"))) == []


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_each_planted_violation_is_reported(plant: str, tmp_path: Path) -> None:
    root = clean_root(tmp_path)
    PLANTS[plant](root)
    found = codes(root)
    assert found == {code_of(plant)}


def test_builder_key_is_named_even_when_live(tmp_path: Path) -> None:
    root = clean_root(tmp_path)
    (root / "home/ubuntu/.ssh").mkdir(parents=True)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuilderKey snapbuild"
    (root / "home/ubuntu/.ssh/authorized_keys").write_text(key + "\n")
    assert codes(root, builder_keys=(key,), live=True) == {"builder-key"}


def test_live_check_tolerates_what_a_running_system_writes(tmp_path: Path) -> None:
    root = clean_root(tmp_path)
    (root / "var/log/syslog").write_text("sudo: snapbuild : COMMAND=...\n")
    (root / "tmp/systemd-private-abc").mkdir()
    (root / "etc/passwd").write_text("snapbuild:x:1001:1001::/home/snapbuild:/bin/bash\n")
    assert codes(root, live=True) == set()
    assert codes(root, live=False) == {"logs", "tmp", "builder-user"}
