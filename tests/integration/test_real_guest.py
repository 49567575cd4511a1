"""A Nova server that is a real machine: the test cloud's `qemu` backend (a TCG VM per server).

Boots `debian-12` with a fresh key handed over in (gzipped) user-data, pins the host key from the console block
cloud-init prints, runs commands over SSH on the fixed IP Nova reports, powers the guest off from inside (Nova
must notice: SHUTOFF), snapshots the real disk (the image goes active with a size) and deletes the server (the
QEMU process must be gone). Servers of flavor r1.small are real guests in the test cloud's default (mixed)
backend; skips unless tests/cloud/start was given a bootable image (SNAPBUILD_TESTCLOUD_REAL_IMAGE).
"""

from __future__ import annotations

import base64
import gzip
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openstack.connection import Connection

from snapbuild.guest.ssh import SSHGuest
from snapbuild.sshkeys import KeyPair, parse_console_host_keys

log = logging.getLogger(__name__)

IMAGE = "debian-12-real"   # the Debian base image the system and vm tiers built (tests/cloud/start uploads it)
FLAVOR = "r1.small"        # its extra spec testcloud:backend=qemu makes the server a real TCG guest
NETWORK = "private"
USER = "debian"  # the image's cloud-init default user
STATE = Path(os.environ.get("SNAPBUILD_TESTCLOUD_DIR", "/var/lib/snapbuild-testcloud"))
BOOT_DEADLINE = 900.0  # TCG on a shared 2-core machine: SSH came up after 40-130 s, leave a wide margin

pytestmark = pytest.mark.skipif(
    os.environ.get("SNAPBUILD_TESTCLOUD_REAL_GUESTS") != "1",
    reason="needs the test cloud with real guests and a bootable image: `SNAPBUILD_TESTCLOUD_REAL_IMAGE="
           "/var/cache/snapbuild-test/debian-12-base.qcow2 tests/cloud/start; source "
           "/var/lib/snapbuild-testcloud/env` (SNAPBUILD_TESTCLOUD_REAL_GUESTS=1)",
)


def _poll(what: str, check: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)  # polling a remote service; bounded by the deadline


def _qemu_pids(server_id: str) -> list[int]:
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


def test_real_guest_lifecycle(conn: Connection, unique_name: str, cleanup: Callable[..., Any]) -> None:
    figures: dict[str, float] = {}
    key = KeyPair.generate(comment=unique_name)
    user_data = (
        "#cloud-config\n"
        "locale: C.UTF-8\n"  # Debian 12's cloud-init fails its locale module on a minimal image otherwise
        f"ssh_authorized_keys:\n  - {key.public_openssh}\n"
        f"runcmd:\n  - [sh, -c, 'echo {unique_name} > /run/sbtest-marker']\n"
    )
    network = conn.network.find_network(NETWORK, ignore_missing=False)
    image = conn.image.find_image(IMAGE, ignore_missing=False)
    flavor = conn.compute.find_flavor(FLAVOR, ignore_missing=False)
    server = conn.compute.create_server(
        name=unique_name, image_id=image.id, flavor_id=flavor.id, networks=[{"uuid": network.id}],
        # Gzipped, as snapbuild may send it: the config drive passes it on as is and cloud-init unpacks it.
        user_data=base64.b64encode(gzip.compress(user_data.encode())).decode())
    cleanup(lambda: conn.compute.delete_server(server.id, ignore_missing=True))
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=300, interval=2)
    active = time.monotonic()
    address = server.addresses[NETWORK][0]["addr"]
    assert address.startswith("127.10.0."), server.addresses
    pids = _qemu_pids(server.id)
    assert len(pids) == 1, f"expected one QEMU process for {server.id}, found {pids}"
    rss = [ln for ln in Path(f"/proc/{pids[0]}/status").read_text().splitlines() if ln.startswith("VmRSS:")]
    figures["qemu RSS at ACTIVE (MiB)"] = int(rss[0].split()[1]) / 1024

    def console() -> str:
        return str(conn.compute.get_server_console_output(server.id)["output"])

    host_keys = _poll("host key block on the console", lambda: parse_console_host_keys(console()),
                      BOOT_DEADLINE, interval=3)
    figures["ACTIVE -> host keys on console (s)"] = time.monotonic() - active
    guest = SSHGuest.connect(host=address, user=USER, key=key, host_keys=host_keys,
                             deadline=time.monotonic() + 300, console=console)
    try:
        figures["ACTIVE -> SSH (s)"] = time.monotonic() - active
        status = guest.run(["cloud-init", "status", "--wait"], check=False, timeout=600)
        figures["ACTIVE -> cloud-init done (s)"] = time.monotonic() - active
        assert "status: done" in status.stdout, status.tail()
        assert guest.run(["cat", "/run/sbtest-marker"]).stdout.strip() == unique_name  # user-data ran
        # The key came through user-data to the image's default user (SSHGuest runs commands as root via sudo).
        assert key.public_openssh in guest.read_file(f"/home/{USER}/.ssh/authorized_keys").decode()
        uuid_seen = guest.run(["cat", "/sys/class/dmi/id/product_uuid"], check=False)  # informative only
        log.info("guest product uuid %s", uuid_seen.stdout.strip())
        instance_id = guest.run(["cloud-init", "query", "v1.instance_id"]).stdout.strip()
        assert instance_id == server.id  # the config drive's meta_data.json uuid
        pids = _qemu_pids(server.id)
        rss = [ln for ln in Path(f"/proc/{pids[0]}/status").read_text().splitlines() if ln.startswith("VmRSS:")]
        figures["qemu RSS after boot (MiB)"] = int(rss[0].split()[1]) / 1024
        # The guest powers itself off a moment after the command returns; Nova must notice.
        guest.run(["systemd-run", "--on-active=1", "systemctl", "poweroff"])
        off = time.monotonic()
    finally:
        guest.close()
    _poll("server SHUTOFF after an in-guest poweroff",
          lambda: conn.compute.get_server(server.id).status == "SHUTOFF", 180)
    figures["poweroff -> SHUTOFF (s)"] = time.monotonic() - off
    assert _qemu_pids(server.id) == []
    assert not (STATE / "run" / f"qemu-{server.id}.pid").exists()

    snap_name = f"{unique_name}-snap"
    t0 = time.monotonic()
    conn.compute.create_server_image(server.id, name=snap_name, wait=False)
    snap = _poll("snapshot image", lambda: conn.image.find_image(snap_name), 60, interval=1)
    cleanup(lambda: conn.image.delete_image(snap.id, ignore_missing=True))
    snap = _poll("snapshot active", lambda: (i if (i := conn.image.get_image(snap.id)).status == "active" else None),
                 300, interval=1)
    figures["snapshot -> active (s)"] = time.monotonic() - t0
    assert snap.size and snap.size > 100 * 1024**2, snap.size  # a real disk, not a stub
    assert snap.disk_format == "qcow2"

    conn.compute.delete_server(server.id)
    conn.compute.wait_for_delete(server, wait=120, interval=1)
    assert _qemu_pids(server.id) == []
    assert not (STATE / "run" / f"qemu-{server.id}.pid").exists()
    for name, value in figures.items():
        log.warning("figure: %s = %.1f", name, value)


def _boot_and_connect(conn: Connection, name: str, image_id: str, cleanup: Callable[..., Any],
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

    host_keys = _poll("host key block on the console", lambda: parse_console_host_keys(console()),
                      BOOT_DEADLINE, interval=3)
    guest = SSHGuest.connect(host=server.addresses[NETWORK][0]["addr"], user=USER, key=key, host_keys=host_keys,
                             deadline=time.monotonic() + 300, console=console)
    return server, guest


def test_snapbuild_build_base_on_real_guests(conn: Connection, unique_name: str,
                                             cleanup: Callable[..., Any]) -> None:
    """`snapbuild build base` end to end through real guests; a server from the result is a fresh machine."""
    image_name = f"{unique_name}-base"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "snapbuild", "build", "base", "--distro", "debian-12", "--mirrors", "upstream",
         "--flavor", FLAVOR, "--network", NETWORK, "--base-image", IMAGE, "--timeout-ssh", "600",
         "--image-name", image_name],
        capture_output=True, text=True, timeout=3600, check=False)
    built = time.monotonic() - t0
    image = conn.image.find_image(image_name)
    if image is not None:
        cleanup(lambda: conn.image.delete_image(image.id, ignore_missing=True))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert image is not None and proc.stdout.strip().splitlines()[-1] == image.id
    image = conn.image.get_image(image.id)
    assert image.status == "active" and image.size > 100 * 1024**2, (image.status, image.size)

    key = KeyPair.generate(comment=unique_name)
    server, guest = _boot_and_connect(conn, f"{unique_name}-fresh", image.id, cleanup, key)
    try:
        assert guest.run(["cloud-init", "query", "v1.instance_id"]).stdout.strip() == server.id
        btime = next(int(ln.split()[1]) for ln in guest.read_file("/proc/stat").decode().splitlines()
                     if ln.startswith("btime "))
        machine_id = guest.read_file("/etc/machine-id").decode().strip()
        assert len(machine_id) == 32 and all(c in "0123456789abcdef" for c in machine_id), machine_id
        # Written at this boot, not carried over from the builder: the sealed image had neither.
        stamps = guest.run(["stat", "-c", "%Y %n", "/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout
        for line in stamps.splitlines():
            assert int(line.split()[0]) >= btime - 5, f"{line} is older than this boot ({btime})"
        assert guest.run(["id", "-u", "snapbuild"], check=False).returncode != 0  # builder user removed
    finally:
        guest.close()
    log.warning("figure: snapbuild build base through real guests = %.1f s", built)
