"""One of each sealing violation, planted into a root tree: a unit test's fake root or a real image's mounted root.

Plants add to what is there (a line appended to passwd, a file beside the others) so that on a real image each
one is the only thing wrong with its file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def _append(path: Path, line: str) -> None:
    with path.open("a") as handle:
        handle.write(line + "\n")


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def _own_file(path: Path, text: str) -> None:
    """A file of its own where the image may have a symlink (Debian's /var/lib/dbus/machine-id points to
    /etc/machine-id): writing through the link would plant into the other file instead."""
    if path.is_symlink():
        path.unlink()
    _write(path, text)


def _replace_resolv(root: Path) -> None:
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    # Not the distro's symlink (Ubuntu), and the build's own resolver file left behind (any distro).
    resolv.write_text("# resolv.conf for the snapbuild build\nnameserver 1.1.1.1\n")


def _cloud_init_state(root: Path) -> None:
    instance = root / "var/lib/cloud/instance"
    instance.parent.mkdir(parents=True, exist_ok=True)
    if instance.is_symlink() or instance.exists():
        instance.unlink()
    instance.symlink_to("/var/lib/cloud/instances/i-1")


PLANTS: dict[str, Callable[[Path], None]] = {
    "machine-id": lambda r: _write(r / "etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
    "dbus-machine-id": lambda r: _own_file(r / "var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n"),
    "ssh-host-key": lambda r: _write(r / "etc/ssh/ssh_host_ed25519_key", "KEY"),
    "authorized-keys": lambda r: _write(r / "root/.ssh/authorized_keys", "ssh-ed25519 AAAA planted\n"),
    "builder-user": lambda r: _append(r / "etc/passwd", "snapbuild:x:1001:1001::/home/snapbuild:/bin/bash"),
    "builder-sudoers": lambda r: _write(r / "etc/sudoers.d/90-cloud-init-users", "snapbuild ALL=(ALL) NOPASSWD:ALL\n"),
    "password": lambda r: _append(r / "etc/shadow", "planted:$6$salt$hash:19000:0:99999:7:::"),
    "cloud-init": _cloud_init_state,
    "resolv.conf": _replace_resolv,
    "policy-rc.d": lambda r: _write(r / "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n"),
    "apt-config": lambda r: _write(r / "etc/apt/apt.conf.d/01proxy", 'Acquire::http::Proxy "http://p:3128";\n'),
    "tmp": lambda r: _write(r / "var/tmp/leftover", "x"),
    "logs": lambda r: _write(r / "var/log/syslog", "boot messages\n"),
    "rotated-logs": lambda r: _write(r / "var/log/syslog.1", ""),
    "history": lambda r: _write(r / "root/.bash_history", "cat /etc/shadow\n"),
    "random-seed": lambda r: _write(r / "var/lib/systemd/random-seed", b"\0" * 512),
    "apt-lists": lambda r: _write(r / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "x"),
    "apt-cache": lambda r: _write(r / "var/cache/apt/archives/curl_1_amd64.deb", "x"),
}
# The violation code each plant is reported under (a plant's own name unless listed).
REPORTED_AS = {"dbus-machine-id": "machine-id", "builder-sudoers": "builder-user", "rotated-logs": "logs"}


def code_of(plant: str) -> str:
    return REPORTED_AS.get(plant, plant)


def plant_all(root: Path) -> None:
    for plant in PLANTS.values():
        plant(root)
    os.sync()
