"""The sealing checker finds each kind of violation in a root tree (real files, planted one at a time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapbuild.sealcheck import check_root


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


PLANTS = {
    "machine-id": lambda r: (r / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n"),
    "dbus-machine-id": lambda r: (r / "var/lib/dbus/machine-id").write_text("0123\n"),
    "ssh-host-key": lambda r: (r / "etc/ssh/ssh_host_ed25519_key").write_text("KEY"),
    "authorized-keys": lambda r: ((r / "root/.ssh").mkdir(), (r / "root/.ssh/authorized_keys").write_text("ssh-ed25519 AAAA x\n")),
    "builder-user": lambda r: (r / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nsnapbuild:x:1001:1001::/home/snapbuild:/bin/bash\n"),
    "builder-sudoers": lambda r: (r / "etc/sudoers.d/90-cloud-init-users").write_text("snapbuild ALL=(ALL) NOPASSWD:ALL\n"),
    "password": lambda r: (r / "etc/shadow").write_text("root:$6$salt$hash:19000:0:99999:7:::\n"),
    "cloud-init": lambda r: (r / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/i-1"),
    "resolv.conf": lambda r: ((r / "etc/resolv.conf").unlink(), (r / "etc/resolv.conf").write_text("nameserver 1.1.1.1\n")),
    "policy-rc.d": lambda r: (r / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n"),
    "apt-config": lambda r: (r / "etc/apt/apt.conf.d/01proxy").write_text('Acquire::http::Proxy "http://p:3128";\n'),
    "tmp": lambda r: (r / "var/tmp/leftover").write_text("x"),
    "logs": lambda r: (r / "var/log/syslog").write_text("boot messages\n"),
    "rotated-logs": lambda r: (r / "var/log/syslog.1").write_text(""),
    "history": lambda r: (r / "root/.bash_history").write_text("cat /etc/shadow\n"),
    "random-seed": lambda r: (r / "var/lib/systemd/random-seed").write_bytes(b"\0" * 512),
    "apt-lists": lambda r: (r / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").write_text("x"),
    "apt-cache": lambda r: (r / "var/cache/apt/archives/curl_1_amd64.deb").write_text("x"),
}
EXPECTED = {"dbus-machine-id": "machine-id", "builder-sudoers": "builder-user", "rotated-logs": "logs"}


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_each_planted_violation_is_reported(plant: str, tmp_path: Path) -> None:
    root = clean_root(tmp_path)
    PLANTS[plant](root)
    found = codes(root)
    assert found == {EXPECTED.get(plant, plant)}


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
