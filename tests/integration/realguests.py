"""What the real-guest tests share: the test cloud's names for real guests, the skip, polling, QEMU processes of
a server, booting a server from an image and connecting to it, and the checks that a server booted from a built
image is a fresh machine.

Servers of flavors r1.* (r1.small, r1.medium) are real TCG guests in the test cloud's default (mixed) backend; the
tests skip unless tests/cloud/start was given a bootable image (SNAPBUILD_TESTCLOUD_REAL_IMAGES=debian-13=PATH uploads
debian-13-real, the tiers' Ubuntu-shaped base; SNAPBUILD_TESTCLOUD_REAL_IMAGE=PATH a Debian 12 one as debian-12-real).
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

IMAGE = REAL_BASE   # the test cloud: the base image the system and vm tiers built (tests/cloud/start uploads it)
FLAVOR = REAL_FLAVOR   # the test cloud: its extra spec testcloud:backend=qemu makes the server a real TCG guest
NETWORK = MEMBER_NETWORK
USER = "debian"  # the image's cloud-init default user
STATE = Path(os.environ.get("SNAPBUILD_TESTCLOUD_DIR", "/var/lib/snapbuild-testcloud"))
BOOT_DEADLINE = 900.0  # TCG on a shared 2-core machine: SSH came up after 40-130 s, leave a wide margin

needs_real_guests = pytest.mark.skipif(
    os.environ.get("SNAPBUILD_TESTCLOUD_REAL_GUESTS") != "1",
    reason="needs the test cloud with real guests and a bootable image: `SNAPBUILD_TESTCLOUD_REAL_IMAGES="
           "debian-13=/var/cache/snapbuild-test/debian-13-base.qcow2 tests/cloud/start; source "
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
                     key: KeyPair, *, flavor_name: str = FLAVOR) -> tuple[Any, SSHGuest]:
    """A server from image_id with `key` for the default user; SSH pinned to the console's host-key block."""
    user_data = f"#cloud-config\nlocale: C.UTF-8\nssh_authorized_keys:\n  - {key.public_openssh}\n"
    network = conn.network.find_network(NETWORK, ignore_missing=False)
    flavor = conn.compute.find_flavor(flavor_name, ignore_missing=False)
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


# ---- a console build's traces ---------------------------------------------------------------------------------

def assert_console_steps(events: list[dict[str, Any]]) -> None:
    """A `--transport console` build's events: the runner's steps, read off the console with their own timings,
    nested inside "console runner" between seal and capture; no SSH step anywhere."""
    steps = [e["step"] for e in events if e["event"] == "step_finished" and e["level"] == "step"]
    for name in ("wait for cloud-init", "provision", "seal", "console runner", "power off", "capture"):
        assert name in steps, steps
    assert "connect" not in steps, steps
    assert steps.index("seal") < steps.index("console runner") < steps.index("capture"), steps
    timed = {e["step"]: e["seconds"] for e in events if e["event"] == "step_finished"}
    assert timed["provision"] > 0 and timed["seal"] > 0, timed


def assert_nothing_of_the_runner(guest: SSHGuest) -> None:
    """A server booted from a console-built image carries nothing of the builder's runner, its user-data or logs,
    and only its own journal."""
    leftovers = guest.run(["sh", "-c", "ls -d /run/snapbuild /var/lib/cloud/instances/*/user-data.txt "
                                       "/var/log/cloud-init-output.log 2>/dev/null || true"]).stdout.strip()
    # This boot's own cloud-init writes its files again; none may carry the builder's runner.
    assert "/run/snapbuild" not in leftovers, leftovers
    # (The journal is left out of the grep: sudo logs this very command line there.)
    assert guest.run(["sh", "-c", "grep -rl --exclude-dir=journal snapbuild-runner /var/lib/cloud /var/log "
                                  "2>/dev/null || true"]).stdout.strip() == ""
    machine_id = guest.read_file("/etc/machine-id").decode().strip()
    assert guest.run(["ls", "/var/log/journal"]).stdout.split() == [machine_id]


# ---- a network the build host has no route into (the console transport's case) --------------------------------

UNROUTED_CIDR = "10.231.0.0/24"   # not loopback: the backend forwards no port of such an address (forwardable)


def make_unrouted_network(conn: Connection, name: str, cleanup: Callable[..., Any]) -> str:
    """A tenant network whose addresses this host cannot reach: QEMU gets no hostfwd for them, so nothing on this
    host can open a connection to a guest on it. Nothing here ever sends to the address (the network rule): the
    proof is the QEMU command line (see NoRouteWatch)."""
    network = conn.network.create_network(name=name)
    cleanup(lambda: conn.network.delete_network(network.id, ignore_missing=True))
    subnet = conn.network.create_subnet(name=f"{name}-subnet", network_id=network.id, ip_version=4,
                                        cidr=UNROUTED_CIDR, is_dhcp_enabled=False)
    cleanup(lambda: conn.network.delete_subnet(subnet.id, ignore_missing=True))
    return str(network.name)


def qemu_cmdline(pid: int) -> list[str]:
    try:
        return [part.decode(errors="replace") for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return []


class NoRouteWatch:
    """Watches, while a build runs, every server on `network`: its addresses as Nova reports them and its QEMU
    command line. `check()` asserts the builder was seen and that no port of it was ever forwarded to this host."""

    def __init__(self, conn: Connection, network: str) -> None:
        import threading

        self.conn = conn
        self.network = network
        self.seen: dict[str, tuple[list[str], list[str]]] = {}   # server id -> (addresses, QEMU argv)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NoRouteWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(3):
            try:
                for server in self.conn.compute.servers():
                    addresses = [a["addr"] for a in (server.addresses or {}).get(self.network, [])]
                    pids = qemu_pids(server.id)
                    if addresses and pids:
                        self.seen.setdefault(server.id, (addresses, qemu_cmdline(pids[0])))
            except Exception as exc:  # a transient API error; the check says if nothing was seen
                self.errors.append(str(exc))

    def check(self) -> None:
        assert self.seen, f"no builder on {self.network} was seen running (API errors: {self.errors[-3:]})"
        for server_id, (addresses, argv) in self.seen.items():
            assert argv, f"server {server_id}: no QEMU command line read"
            netdev = next(argv[i + 1] for i, arg in enumerate(argv) if arg == "-netdev")
            assert "hostfwd" not in netdev, f"server {server_id} has a port forwarded to this host: {netdev}"
            assert all(not a.startswith("127.") for a in addresses), addresses


# ---- what a build left behind, as admin sees it ----------------------------------------------------------------

def left_by_build(admin: Connection, build_id: str) -> list[str]:
    """Everything any project holds that names the build, as admin sees it."""
    mark = f"snapbuild:build_id={build_id}"
    left = [f"server {s.id} ({s.status})" for s in admin.compute.servers(all_projects=True, tags="snapbuild")
            if (s.metadata or {}).get("snapbuild_build_id") == build_id]
    for kind, items in (("floating ip", admin.network.ips(tags="snapbuild")),
                        ("security group", admin.network.security_groups(tags="snapbuild")),
                        ("port", admin.network.ports(tags="snapbuild"))):
        left += [f"{kind} {item.id}" for item in items if mark in (item.tags or [])]
    # Every image, not only those tagged: Nova makes a snapshot with the build's properties, the tag comes after.
    left += [f"image {i.id} ({i.status})" for i in admin.image.images()
             if (i.properties or {}).get("snapbuild_build_id") == build_id]
    left += [f"keypair {k.name}" for k in admin.compute.keypairs() if build_id in k.name]
    return left


def build_server_ids(admin: Connection, build_id: str) -> list[str]:
    return [str(s.id) for s in admin.compute.servers(all_projects=True, tags="snapbuild")
            if (s.metadata or {}).get("snapbuild_build_id") == build_id]


def wait_build_gone(admin: Connection, build_id: str, server_id: str | None = None, timeout: float = 300) -> None:
    """Nothing of the build in the cloud and no QEMU process of its server (given, or any the build has now)."""
    servers = [server_id] if server_id else build_server_ids(admin, build_id)
    deadline = time.monotonic() + timeout
    while (left_by_build(admin, build_id) or any(qemu_pids(s) for s in servers)) and time.monotonic() < deadline:
        time.sleep(2)   # a delete the build issued may still be finishing in Nova
    assert left_by_build(admin, build_id) == [], left_by_build(admin, build_id)
    for server in servers:
        assert qemu_pids(server) == [], f"QEMU of server {server} outlived the build"
