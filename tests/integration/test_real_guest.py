"""A Nova server that is a real machine: the test cloud's `qemu` backend (a TCG VM per server).

Boots the tiers' base (`debian-13-real`) with a fresh key handed over in (gzipped) user-data, pins the host key from
the console block cloud-init prints, runs commands over SSH on the fixed IP Nova reports, powers the guest off from
inside (Nova must notice: SHUTOFF), snapshots the real disk (the image goes active with a size) and deletes the server (the
QEMU process must be gone). Servers of flavor r1.small are real guests in the test cloud's default (mixed)
backend; skips unless tests/cloud/start was given a bootable image (realguests.py).
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudnames import REAL_DISTRO
from openstack.connection import Connection
from realguests import (
    BOOT_DEADLINE,
    FLAVOR,
    IMAGE,
    NETWORK,
    STATE,
    USER,
    assert_fresh_machine,
    boot_and_connect,
    needs_real_guests,
    poll,
    qemu_pids,
)

from snapbuild.guest.ssh import SSHGuest
from snapbuild.sealing.offline import inspect_image
from snapbuild.sshkeys import KeyPair, parse_console_host_keys
from tests.manifestcheck import check_manifest

log = logging.getLogger(__name__)

pytestmark = needs_real_guests


# The test cloud's own machinery, step by step; every build test below goes through the same steps, so .ci/run
# leaves this one to `tox -e full`.
@pytest.mark.full
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
    pids = qemu_pids(server.id)
    assert len(pids) == 1, f"expected one QEMU process for {server.id}, found {pids}"
    rss = [ln for ln in Path(f"/proc/{pids[0]}/status").read_text().splitlines() if ln.startswith("VmRSS:")]
    figures["qemu RSS at ACTIVE (MiB)"] = int(rss[0].split()[1]) / 1024

    def console() -> str:
        return str(conn.compute.get_server_console_output(server.id)["output"])

    host_keys = poll("host key block on the console", lambda: parse_console_host_keys(console()),
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
        pids = qemu_pids(server.id)
        rss = [ln for ln in Path(f"/proc/{pids[0]}/status").read_text().splitlines() if ln.startswith("VmRSS:")]
        figures["qemu RSS after boot (MiB)"] = int(rss[0].split()[1]) / 1024
        # The guest powers itself off a moment after the command returns; Nova must notice.
        guest.run(["systemd-run", "--on-active=1", "systemctl", "poweroff"])
        off = time.monotonic()
    finally:
        guest.close()
    poll("server SHUTOFF after an in-guest poweroff",
          lambda: conn.compute.get_server(server.id).status == "SHUTOFF", 180)
    figures["poweroff -> SHUTOFF (s)"] = time.monotonic() - off
    assert qemu_pids(server.id) == []
    assert not (STATE / "run" / f"qemu-{server.id}.pid").exists()

    snap_name = f"{unique_name}-snap"
    t0 = time.monotonic()
    conn.compute.create_server_image(server.id, name=snap_name, wait=False)
    snap = poll("snapshot image", lambda: conn.image.find_image(snap_name), 60, interval=1)
    cleanup(lambda: conn.image.delete_image(snap.id, ignore_missing=True))
    snap = poll("snapshot active", lambda: (i if (i := conn.image.get_image(snap.id)).status == "active" else None),
                 300, interval=1)
    figures["snapshot -> active (s)"] = time.monotonic() - t0
    assert snap.size and snap.size > 100 * 1024**2, snap.size  # a real disk, not a stub
    assert snap.disk_format == "qcow2"

    conn.compute.delete_server(server.id)
    conn.compute.wait_for_delete(server, wait=120, interval=1)
    assert qemu_pids(server.id) == []
    assert not (STATE / "run" / f"qemu-{server.id}.pid").exists()
    for name, value in figures.items():
        log.warning("figure: %s = %.1f", name, value)


def test_snapbuild_build_base_on_real_guests(conn: Connection, unique_name: str, cleanup: Callable[..., Any],
                                             tmp_path: Path) -> None:
    """`snapbuild build base` end to end through real guests; a server from the result is a fresh machine, and
    the image itself passes the offline sealing check that local and chroot builds pass."""
    image_name = f"{unique_name}-base"
    events_file = tmp_path / "events.jsonl"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "snapbuild", "build", "base", "--distro", REAL_DISTRO, "--mirrors", "upstream",
         "--flavor", FLAVOR, "--network", NETWORK, "--base-image", IMAGE, "--timeout-ssh", "600",
         "--image-name", image_name, "--events", str(events_file)],
        capture_output=True, text=True, timeout=3600, check=False)
    built = time.monotonic() - t0
    image = conn.image.find_image(image_name)
    if image is not None:
        cleanup(lambda: conn.image.delete_image(image.id, ignore_missing=True))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert image is not None and proc.stdout.strip().splitlines()[-1] == image.id
    image = conn.image.get_image(image.id)
    assert image.status == "active" and image.size > 100 * 1024**2, (image.status, image.size)

    # The build streamed its events and wrote its manifest (one schema for every builder).
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    steps = [e["step"] for e in events if e["event"] == "step_finished" and e["level"] == "step"]
    assert steps == ["preflight", "boot builder", "connect", "provision", "seal", "power off", "capture",
                     "finish image", "manifest", "clean up"], steps
    assert events[-1]["event"] == "result" and events[-1]["ok"] and events[-1]["image_id"] == image.id
    manifest = check_manifest(Path(events[-1]["manifest"]), builder="openstack-snapshot")
    assert manifest["output"]["image_id"] == image.id and manifest["seal"]["in_guest"] == "clean"

    # The primary path applies the whole sealing policy: the captured disk, read offline as the local and chroot
    # builders read theirs, has nothing the policy forbids (the builder user, its key, host keys, logs …).
    assert os.geteuid() == 0, "the offline check mounts the image: the integration tier runs as root"
    disk = tmp_path / "captured.img"
    conn.image.download_image(image, output=str(disk))
    assert inspect_image(disk) == []

    key = KeyPair.generate(comment=unique_name)
    server, guest = boot_and_connect(conn, f"{unique_name}-fresh", image.id, cleanup, key)
    try:
        assert_fresh_machine(guest, server)
    finally:
        guest.close()
    log.warning("figure: snapbuild build base through real guests = %.1f s", built)
