"""What the real-guest tests share: the test cloud's names for real guests, the skip, polling, QEMU processes of
a server, booting a server from an image and connecting to it, and the checks that a server booted from a built
image is a fresh machine.

Servers of flavor r1.small are real TCG guests in the test cloud's default (mixed) backend; the tests skip unless
tests/cloud/start was given a bootable image (SNAPBUILD_TESTCLOUD_REAL_IMAGE).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudnames import NETWORK as MEMBER_NETWORK
from cloudnames import REAL_BASE, REAL_FLAVOR
from openstack.connection import Connection

from snapbuild.guest.ssh import SSHGuest
from snapbuild.sshkeys import KeyPair, parse_console_host_keys

IMAGE = REAL_BASE   # the test cloud: the Debian base image the system and vm tiers built (tests/cloud/start uploads it)
FLAVOR = REAL_FLAVOR   # the test cloud: its extra spec testcloud:backend=qemu makes the server a real TCG guest
NETWORK = MEMBER_NETWORK
USER = "debian"  # the image's cloud-init default user
STATE = Path(os.environ.get("SNAPBUILD_TESTCLOUD_DIR", "/var/lib/snapbuild-testcloud"))
BOOT_DEADLINE = 900.0  # TCG on a shared 2-core machine: SSH came up after 40-130 s, leave a wide margin

needs_real_guests = pytest.mark.skipif(
    os.environ.get("SNAPBUILD_TESTCLOUD_REAL_GUESTS") != "1",
    reason="needs the test cloud with real guests and a bootable image: `SNAPBUILD_TESTCLOUD_REAL_IMAGE="
           "/var/cache/snapbuild-test/debian-12-base.qcow2 tests/cloud/start; source "
           "/var/lib/snapbuild-testcloud/env` (SNAPBUILD_TESTCLOUD_REAL_GUESTS=1)",
)


def poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)  # polling a remote service; bounded by the deadline


def qemu_pids(server_id: str) -> list[int]:
    """QEMU processes of this server (the backend names them testcloud-<uuid>)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-name" in argv and f"testcloud-{server_id}".encode() in argv:
            found.append(int(cmdline.parent.name))
    return found


def boot_and_connect(conn: Connection, name: str, image_id: str, cleanup: Callable[..., Any],
                     key: KeyPair) -> tuple[Any, SSHGuest]:
    """A server from image_id with `key` for the default user; SSH pinned to the console's host-key block."""
    user_data = f"#cloud-config\nlocale: C.UTF-8\nssh_authorized_keys:\n  - {key.public_openssh}\n"
    network = conn.network.find_network(NETWORK, ignore_missing=False)
    flavor = conn.compute.find_flavor(FLAVOR, ignore_missing=False)
    server = conn.compute.create_server(name=name, image_id=image_id, flavor_id=flavor.id,
                                        networks=[{"uuid": network.id}],
                                        user_data=base64.b64encode(user_data.encode()).decode())
    cleanup(lambda: conn.compute.delete_server(server.id, ignore_missing=True))
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=300, interval=2)

    def console() -> str:
        return str(conn.compute.get_server_console_output(server.id)["output"])

    host_keys = poll("host key block on the console", lambda: parse_console_host_keys(console()),
                     BOOT_DEADLINE, interval=3)
    guest = SSHGuest.connect(host=server.addresses[NETWORK][0]["addr"], user=USER, key=key, host_keys=host_keys,
                             deadline=time.monotonic() + 300, console=console)
    return server, guest


def assert_fresh_machine(guest: SSHGuest, server: Any) -> None:
    """What `verify` checks of a first boot: this instance's id, a machine-id and host keys made at this boot,
    cloud-init done, and no trace of the builder."""
    assert guest.run(["cloud-init", "query", "v1.instance_id"]).stdout.strip() == server.id
    status = guest.run(["cloud-init", "status", "--wait"], check=False, timeout=600)
    assert "status: done" in status.stdout, status.tail()
    btime = next(int(ln.split()[1]) for ln in guest.read_file("/proc/stat").decode().splitlines()
                 if ln.startswith("btime "))
    machine_id = guest.read_file("/etc/machine-id").decode().strip()
    assert len(machine_id) == 32 and all(c in "0123456789abcdef" for c in machine_id), machine_id
    # Written at this boot, not carried over from the builder: the sealed image had neither.
    stamps = guest.run(["stat", "-c", "%Y %n", "/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout
    for line in stamps.splitlines():
        assert int(line.split()[0]) >= btime - 5, f"{line} is older than this boot ({btime})"
    assert guest.run(["id", "-u", "snapbuild"], check=False).returncode != 0  # builder user removed
    sudoers = guest.run(["sh", "-c", "grep -rl snapbuild /etc/sudoers.d || true"]).stdout.strip()
    assert sudoers == "", f"builder sudo rule left: {sudoers}"
