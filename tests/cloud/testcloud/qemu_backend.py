"""The `qemu` backend of the test cloud's virt driver: every Nova server is a real QEMU (TCG) virtual machine.

A machine lives in <instances_path>/<uuid>/testcloud/: a qcow2 overlay on the image cached from Glance (resized to
the flavor's disk), a config drive like Nova's (label config-2, openstack/latest/meta_data.json and user_data, no
network_data so the guest uses DHCP), the serial log (the console log) and qemu.json (what to launch again on
power on). QEMU runs daemonized (its own session, so it survives a nova-compute restart) with user networking
`restrict=on` and SSH forwarded from the server's fixed IP (a 127.10.0.x address: nothing leaves loopback).
Each QEMU is tracked by <run>/qemu-<uuid>.pid ("<pid> <start time>", like every daemon of the cloud), so
`tests/cloud/stop` kills it. The power state is the process's: a guest that powers itself off is SHUTDOWN.

The command line comes from snapbuild's own local VM code (snapbuild.local.qemu.build_argv) and the config drive
layout from snapbuild.local.seed, so the cloud's guests and snapbuild's local builds boot the same way.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapbuild.local.qemu import QMP, GuestForward, VMSpec, build_argv
from snapbuild.local.seed import LABELS, SeedSpec, seed_files
from testcloud import procs
from testcloud.machine import RUNNING, SHUTDOWN, Boot

LOG = logging.getLogger(__name__)

LAUNCH_TIMEOUT = 60.0


@dataclass(frozen=True, kw_only=True)
class QemuSettings:
    run_dir: Path  # the cloud's pid files: stop kills what is recorded here
    guestfwds: tuple[GuestForward, ...] = ()
    max_memory_mb: int = 1536  # two guests beside the services on a shared machine
    max_cpus: int = 1


def parse_guestfwds(text: str) -> tuple[GuestForward, ...]:
    """`10.0.2.100:5000=127.0.0.1:5000[,…]` (guest address=host address) as GuestForward entries."""
    forwards = []
    for item in text.replace(" ", ",").split(","):
        if not item:
            continue
        guest, _, host = item.partition("=")
        guest_ip, _, guest_port = guest.rpartition(":")
        host_ip, _, host_port = host.rpartition(":")
        if not (guest_ip and guest_port.isdigit() and host_ip and host_port.isdigit()):
            raise ValueError(f"guest forward {item!r} is not GUEST_IP:PORT=HOST_IP:PORT")
        forwards.append(GuestForward(guest_ip=guest_ip, guest_port=int(guest_port), host_ip=host_ip,
                                     host_port=int(host_port)))
    return tuple(forwards)


def forwardable(addresses: Sequence[str]) -> tuple[str, ...]:
    """The addresses QEMU can listen on here: IPv4 loopback (the cloud's subnets are inside 127.0.0.0/8)."""
    keep = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if ip.version == 4 and ip.is_loopback:
            keep.append(address)
        else:
            LOG.warning("not forwarding SSH from %s: only 127.0.0.0/8 addresses stay on this host", address)
    return tuple(dict.fromkeys(keep))


def netdev(addresses: Sequence[str], guestfwds: Sequence[GuestForward]) -> str:
    parts = ["user", "id=n0", "restrict=on"]
    parts += [f"hostfwd=tcp:{address}:22-:22" for address in addresses]
    # Commas would end the option: socat's arguments here have none.
    parts += [f"guestfwd=tcp:{f.guest_ip}:{f.guest_port}-cmd:socat - TCP:{f.host_ip}:{f.host_port}"
              for f in guestfwds]
    return ",".join(parts)


def config_drive_files(uuid: str, boot: Boot) -> dict[str, bytes]:
    """Nova's config drive layout (openstack/latest), without network_data: the guest uses DHCP."""
    files = seed_files(SeedSpec(kind="configdrive", user_data="", hostname=boot.hostname, instance_id=uuid,
                                public_keys=boot.public_keys))
    meta = json.loads(files["openstack/latest/meta_data.json"])
    meta["name"] = boot.display_name
    meta["launch_index"] = 0
    files["openstack/latest/meta_data.json"] = json.dumps(meta, indent=1).encode()
    del files["openstack/latest/user_data"]
    if boot.user_data is not None:
        files["openstack/latest/user_data"] = boot.user_data  # as is: may be gzip
    return files


def _run(argv: Sequence[str], timeout: float = 600) -> None:
    proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).decode(errors='replace').strip()[-2000:]}")


def _image_format(path: Path) -> str:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True,
                         timeout=60).stdout
    return str(json.loads(out)["format"])


def _virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True,
                         timeout=60).stdout
    return int(json.loads(out)["virtual-size"])


class QemuBackend:
    """Machines as daemonized QEMU processes (TCG), tracked by pid files in the cloud's run directory."""

    def __init__(self, root: Path, settings: QemuSettings) -> None:
        self.root = root
        self.settings = settings

    # --- files --------------------------------------------------------------------------------------------

    def _dir(self, uuid: str) -> Path:
        return self.root / uuid / "testcloud"

    def _pidfile(self, uuid: str) -> Path:
        return self.settings.run_dir / f"qemu-{uuid}.pid"

    def _record(self, uuid: str) -> dict[str, object]:
        record: dict[str, object] = json.loads((self._dir(uuid) / "qemu.json").read_text())
        return record

    def _save(self, uuid: str, record: dict[str, object]) -> None:
        tmp = self._dir(uuid) / "qemu.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self._dir(uuid) / "qemu.json")

    def _pid(self, uuid: str) -> int | None:
        return procs.running_pid(self._pidfile(uuid))

    # --- the protocol -------------------------------------------------------------------------------------

    def spawn(self, uuid: str, base_image: Path, boot: Boot, power_on: bool) -> None:
        d = self._dir(uuid)
        d.mkdir(parents=True, exist_ok=True)
        disk = d / "disk.qcow2"
        size = max(boot.root_gb * 1024**3, _virtual_size(base_image))
        # An overlay on the cached image (like libvirt's qcow2 backing files), grown to the flavor's disk.
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", _image_format(base_image), "-b", str(base_image),
              str(disk), str(size)])
        seed = d / "config-drive.iso"
        with tempfile.TemporaryDirectory(dir=d) as staging:
            for rel, data in config_drive_files(uuid, boot).items():
                target = Path(staging) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            _run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(seed), "-V", LABELS["configdrive"], "-J", "-r",
                  staging], timeout=60)
        self._save(uuid, {
            "name": boot.name,
            "disk": str(disk),
            "seed": str(seed),
            "memory_mb": min(boot.memory_mb, self.settings.max_memory_mb),
            "cpus": max(1, min(boot.vcpus, self.settings.max_cpus)),
            "addresses": list(forwardable(boot.addresses)),
        })
        if power_on:
            self._launch(uuid)

    def _launch(self, uuid: str) -> None:
        if self._pid(uuid) is not None:
            return
        d = self._dir(uuid)
        record = self._record(uuid)
        serial = d / "console.log"
        qmp = d / "qmp.sock"
        qmp.unlink(missing_ok=True)
        spec = VMSpec(disk=Path(str(record["disk"])), memory_mb=int(str(record["memory_mb"])),
                      cpus=int(str(record["cpus"])), seed=Path(str(record["seed"])), serial_log=serial,
                      name=f"testcloud-{uuid}", network="isolated")   # the -netdev below replaces it anyway
        argv = build_argv(spec, accel="tcg", ssh_port=0, qmp_socket=qmp)
        addresses = [str(a) for a in record["addresses"]]  # type: ignore[attr-defined]
        argv[argv.index("-netdev") + 1] = netdev(addresses, self.settings.guestfwds)
        # The console log survives power cycles (as Nova's does): append instead of truncating.
        at = argv.index("-serial")
        argv[at:at + 2] = ["-chardev", f"file,id=serial0,path={serial},append=on", "-serial", "chardev:serial0"]
        qemu_pidfile = d / "qemu.pid"
        qemu_pidfile.unlink(missing_ok=True)
        # -daemonize: QEMU returns once the machine is set up (a failed hostfwd bind is an error here), and
        # lives in its own session, not as nova-compute's child.
        argv += ["-daemonize", "-pidfile", str(qemu_pidfile)]
        LOG.info("launching %s: %s", uuid, " ".join(argv))
        proc = subprocess.run(argv, cwd=d, capture_output=True, timeout=LAUNCH_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"qemu for {uuid} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace').strip()[-2000:]}")
        pid = int(qemu_pidfile.read_text().split()[0])
        procs.record(self._pidfile(uuid), pid)
        LOG.info("machine %s runs as qemu pid %d (ssh on %s)", uuid, pid, ", ".join(addresses) or "nothing")

    def _wait_gone(self, uuid: str, pid: int, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if self._pid(uuid) != pid:
                return True
            time.sleep(0.2)  # polling a process we do not parent; bounded by the deadline
        return self._pid(uuid) != pid

    def _kill(self, uuid: str) -> None:
        pid = self._pid(uuid)
        if pid is not None:
            # The whole group (guestfwd's socat helpers go too). QEMU's -daemonize forks twice: the group's
            # leader has exited, so it is not pid.
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                group = pid
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, sig)
                if self._wait_gone(uuid, pid, time.monotonic() + 10):
                    break
            LOG.info("qemu pid %d of %s stopped", pid, uuid)
        self._pidfile(uuid).unlink(missing_ok=True)

    def _qmp(self, uuid: str, command: str) -> None:
        client = QMP(self._dir(uuid) / "qmp.sock")
        try:
            client.execute(command)
        finally:
            client.close()

    def power_off(self, uuid: str, timeout: float = 0) -> None:
        """ACPI power button, then kill after `timeout` seconds (0: at once, as Nova's hard stop)."""
        pid = self._pid(uuid)
        if pid is None:
            self._pidfile(uuid).unlink(missing_ok=True)
            return
        if timeout > 0:
            try:
                self._qmp(uuid, "system_powerdown")
            except Exception as exc:  # QMP gone: the process is going away already
                LOG.info("system_powerdown on %s: %s", uuid, exc)
            if self._wait_gone(uuid, pid, time.monotonic() + timeout):
                LOG.info("%s powered off cleanly", uuid)
                self._pidfile(uuid).unlink(missing_ok=True)
                return
            LOG.warning("%s ignored the power button for %.0f s: killing", uuid, timeout)
        self._kill(uuid)

    def power_on(self, uuid: str, addresses: Sequence[str] | None = None) -> None:
        if addresses is not None:
            record = self._record(uuid)
            record["addresses"] = list(forwardable(addresses))
            self._save(uuid, record)
        self._launch(uuid)

    def reboot(self, uuid: str, hard: bool, timeout: float = 60) -> None:
        """Hard: kill and launch again. Soft: as libvirt's, a clean shutdown (power button) and a fresh start."""
        self.power_off(uuid, 0 if hard else timeout)
        self._launch(uuid)

    def destroy(self, uuid: str) -> None:
        self._kill(uuid)
        shutil.rmtree(self._dir(uuid), ignore_errors=True)

    def state(self, uuid: str) -> str | None:
        if not (self._dir(uuid) / "qemu.json").exists():
            return None
        return RUNNING if self._pid(uuid) is not None else SHUTDOWN

    def console_log(self, uuid: str) -> str:
        try:
            data = (self._dir(uuid) / "console.log").read_bytes()
        except FileNotFoundError:
            return ""
        return data[-1024 * 1024:].decode(errors="replace").replace("\x00", "")

    @contextlib.contextmanager
    def snapshot_disk(self, uuid: str) -> Iterator[Path]:
        """The root disk flattened into one qcow2; a running machine is paused (which flushes) while copied."""
        d = self._dir(uuid)
        out = d / "snapshot.qcow2"
        running = self._pid(uuid) is not None
        if running:
            self._qmp(uuid, "stop")
        try:
            _run(["qemu-img", "convert", "-U", "-O", "qcow2", str(self._record(uuid)["disk"]), str(out)])
        finally:
            if running and self._pid(uuid) is not None:
                self._qmp(uuid, "cont")
        try:
            yield out
        finally:
            out.unlink(missing_ok=True)

    def known(self) -> dict[str, str]:
        found = {}
        for record in self.root.glob("*/testcloud/qemu.json"):
            uuid = record.parent.parent.name
            try:
                found[uuid] = str(self._record(uuid)["name"])
            except (OSError, ValueError, KeyError):
                continue
        return found
