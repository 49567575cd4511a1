"""Nova virt driver of the test cloud (loaded as `snapbuild_testcloud.TestCloudDriver` through a shim in nova/virt/).

Servers are machines kept by a Backend. The `fake` backend keeps each machine as a
directory under instances_path: its power state, a console log and the base image it booted from, fetched from
Glance once per image. So servers go ACTIVE, stop and start, survive a nova-compute restart, show a console log,
and a snapshot uploads real bytes (the machine's disk) to Glance, as libvirt's driver does, so the image
becomes `active`. The stock fake driver leaves snapshot images `queued` forever.

The `qemu` backend (testcloud/qemu_backend.py, selected by `[testcloud] backend = qemu` in nova.conf, which
`SNAPBUILD_TESTCLOUD_BACKEND=qemu tests/cloud/start` writes) runs every server as a real QEMU (TCG) machine:
qcow2 overlay on the cached image, config drive, SSH forwarded from the fixed IP, power state from the process,
serial log as console, snapshot of the real disk. `mixed` (the default of tests/cloud/start) runs fake machines
except for flavors with the extra spec `testcloud:backend=qemu` (flavor r1.small), which get real guests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from nova import exception
from nova.compute import power_state, task_states
from nova.conf import CONF
from nova.image import glance
from nova.virt import fake, hardware
from oslo_config import cfg

from testcloud.machine import RUNNING, SHUTDOWN, Boot

CONF.register_opts([
    cfg.StrOpt("backend", default="fake", choices=("fake", "qemu", "mixed"),
               help="what runs a server (mixed: qemu for flavors with extra spec testcloud:backend=qemu)"),
    cfg.StrOpt("run_dir", help="the test cloud's pid files (qemu backend)"),
    cfg.StrOpt("guestfwd", default="", help="GUEST_IP:PORT=HOST_IP:PORT,... reachable from guests (qemu)"),
    cfg.IntOpt("max_memory_mb", default=1536, help="cap on a guest's memory (qemu)"),
    cfg.IntOpt("max_cpus", default=1, help="cap on a guest's vCPUs (qemu)"),
], group="testcloud")

LOG = logging.getLogger(__name__)

class Backend(Protocol):
    """What the driver needs from whatever runs a server."""

    def spawn(self, uuid: str, base_image: Path, boot: Boot, power_on: bool) -> None: ...
    def power_off(self, uuid: str, timeout: float = 0) -> None: ...  # graceful for `timeout` s, then hard
    def power_on(self, uuid: str, addresses: Sequence[str] | None = None) -> None: ...
    def reboot(self, uuid: str, hard: bool) -> None: ...
    def destroy(self, uuid: str) -> None: ...
    def state(self, uuid: str) -> str | None: ...  # RUNNING, SHUTDOWN or None when unknown
    def console_log(self, uuid: str) -> str: ...
    def snapshot_disk(self, uuid: str) -> contextlib.AbstractContextManager[Path]: ...  # qcow2 bytes to upload
    def known(self) -> dict[str, str]: ...  # uuid -> name, for rebuilding state after a restart


class FakeBackend:
    """Machines as directories: state + console log; the root disk is the cached base image itself."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, uuid: str) -> Path:
        return self.root / uuid / "testcloud"

    def _record(self, uuid: str) -> dict[str, str]:
        record: dict[str, str] = json.loads((self._dir(uuid) / "machine.json").read_text())
        return record

    def _save(self, uuid: str, record: dict[str, str]) -> None:
        tmp = self._dir(uuid) / "machine.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self._dir(uuid) / "machine.json")

    def _console(self, uuid: str, line: str) -> None:
        with open(self._dir(uuid) / "console.log", "a") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")

    def spawn(self, uuid: str, base_image: Path, boot: Boot, power_on: bool) -> None:
        self._dir(uuid).mkdir(parents=True, exist_ok=True)
        name, ips = boot.name, boot.addresses
        self._save(uuid, {"name": name, "state": RUNNING if power_on else SHUTDOWN, "disk": str(base_image)})
        self._console(uuid, f"testcloud: machine {name} ({uuid}) created from {base_image.name}")
        self._console(uuid, f"testcloud: addresses {' '.join(ips) or 'none'}")
        if power_on:
            self._console(uuid, f"{name} login: (testcloud fake machine is up)")

    def _set_state(self, uuid: str, state: str) -> None:
        record = self._record(uuid)
        record["state"] = state
        self._save(uuid, record)
        self._console(uuid, f"testcloud: power {state}")

    def power_off(self, uuid: str, timeout: float = 0) -> None:
        self._set_state(uuid, SHUTDOWN)

    def power_on(self, uuid: str, addresses: Sequence[str] | None = None) -> None:
        self._set_state(uuid, RUNNING)

    def reboot(self, uuid: str, hard: bool) -> None:
        self._console(uuid, f"testcloud: {'hard' if hard else 'soft'} reboot")
        self._set_state(uuid, RUNNING)

    def destroy(self, uuid: str) -> None:
        shutil.rmtree(self._dir(uuid), ignore_errors=True)

    def state(self, uuid: str) -> str | None:
        try:
            return self._record(uuid)["state"]
        except (OSError, ValueError, KeyError):
            return None

    def console_log(self, uuid: str) -> str:
        return (self._dir(uuid) / "console.log").read_text(errors="replace")

    @contextlib.contextmanager
    def snapshot_disk(self, uuid: str) -> Iterator[Path]:
        yield Path(self._record(uuid)["disk"])

    def known(self) -> dict[str, str]:
        found = {}
        for record in self.root.glob("*/testcloud/machine.json"):
            uuid = record.parent.parent.name
            try:
                found[uuid] = self._record(uuid)["name"]
            except (OSError, ValueError, KeyError):
                continue
        return found


_POWER = {RUNNING: power_state.RUNNING, SHUTDOWN: power_state.SHUTDOWN}


class MixedBackend:
    """Fake machines, except servers whose flavor asks for a real guest (extra spec testcloud:backend=qemu):
    one test cloud serves the API-level tests (many servers at once, cheap) and the real-guest ones."""

    def __init__(self, fake_backend: Backend, qemu_backend: Backend) -> None:
        self.fake, self.qemu = fake_backend, qemu_backend

    def _of(self, uuid: str) -> Backend:
        return self.qemu if uuid in self.qemu.known() else self.fake

    def spawn(self, uuid: str, base_image: Path, boot: Boot, power_on: bool) -> None:
        (self.qemu if boot.backend == "qemu" else self.fake).spawn(uuid, base_image, boot, power_on)

    def power_off(self, uuid: str, timeout: float = 0) -> None:
        self._of(uuid).power_off(uuid, timeout)

    def power_on(self, uuid: str, addresses: Sequence[str] | None = None) -> None:
        self._of(uuid).power_on(uuid, addresses)

    def reboot(self, uuid: str, hard: bool) -> None:
        self._of(uuid).reboot(uuid, hard)

    def destroy(self, uuid: str) -> None:
        self._of(uuid).destroy(uuid)

    def state(self, uuid: str) -> str | None:
        return self._of(uuid).state(uuid)

    def console_log(self, uuid: str) -> str:
        return self._of(uuid).console_log(uuid)

    def snapshot_disk(self, uuid: str) -> contextlib.AbstractContextManager[Path]:
        return self._of(uuid).snapshot_disk(uuid)

    def known(self) -> dict[str, str]:
        return {**self.fake.known(), **self.qemu.known()}


def _backend(root: Path) -> Backend:
    opts = CONF.testcloud
    if opts.backend == "fake":
        return FakeBackend(root)
    from testcloud.qemu_backend import QemuBackend, QemuSettings, parse_guestfwds

    if not opts.run_dir:
        raise RuntimeError(f"[testcloud] run_dir is required with backend = {opts.backend}")
    LOG.info("test cloud backend: %s (guest forwards: %s)", opts.backend, opts.guestfwd or "none")
    qemu = QemuBackend(root, QemuSettings(run_dir=Path(opts.run_dir), guestfwds=parse_guestfwds(opts.guestfwd),
                                          max_memory_mb=opts.max_memory_mb, max_cpus=opts.max_cpus))
    return MixedBackend(FakeBackend(root), qemu) if opts.backend == "mixed" else qemu


def _addresses(network_info: Any) -> tuple[str, ...]:
    """Fixed IPs, then floating IPs associated with them (as Nova knows them at this moment)."""
    fixed: list[str] = []
    floating: list[str] = []
    for vif in network_info or []:
        for ip in vif.fixed_ips():
            fixed.append(ip["address"])
            floating.extend(f["address"] for f in ip.get("floating_ips", []))
    return (*fixed, *floating)


def _boot(instance: Any, network_info: Any) -> Boot:
    user_data = base64.b64decode(instance.user_data) if instance.user_data else None
    flavor = instance.flavor
    return Boot(name=instance.name, display_name=instance.display_name or instance.name, hostname=instance.hostname or instance.display_name or instance.uuid,
                memory_mb=flavor.memory_mb, vcpus=flavor.vcpus, root_gb=flavor.root_gb, user_data=user_data,
                public_keys=(instance.key_data,) if instance.key_data else (),
                addresses=_addresses(network_info),
                backend=str((flavor.extra_specs or {}).get("testcloud:backend", "fake")))


class TestCloudDriver(fake.FakeDriverWithoutFakeNodes):  # type: ignore[misc]  # nova is untyped
    """FakeDriverWithoutFakeNodes (stable node uuid, so nova-compute restarts) with machines that persist."""

    def __init__(self, virtapi: Any, read_only: bool = False) -> None:
        super().__init__(virtapi, read_only)
        self._instances_root = Path(CONF.instances_path)
        self._backend: Backend = _backend(self._instances_root)
        self._image_api = glance.API()

    def init_host(self, host: str) -> None:
        super().init_host(host)
        for uuid, name in self._backend.known().items():
            state = _POWER.get(self._backend.state(uuid) or "", power_state.NOSTATE)
            self.instances[uuid] = fake.FakeInstance(name, state, uuid)

    def _base_image(self, context: Any, image_id: str) -> Path:
        """The image's bytes, fetched from Glance once and cached (like libvirt's _base)."""
        base = self._instances_root / "_base" / image_id
        if not base.exists():
            base.parent.mkdir(parents=True, exist_ok=True)
            partial = base.with_suffix(".part")
            self._image_api.download(context, image_id, dest_path=str(partial))
            partial.replace(base)
        return base

    def spawn(self, context: Any, instance: Any, image_meta: Any, injected_files: Any, admin_password: Any,
              allocations: Any, network_info: Any = None, block_device_info: Any = None, power_on: bool = True,
              accel_info: Any = None) -> None:
        base = self._base_image(context, instance.image_ref)
        super().spawn(context, instance, image_meta, injected_files, admin_password, allocations,
                      network_info=network_info, block_device_info=block_device_info, power_on=power_on,
                      accel_info=accel_info)
        self._backend.spawn(instance.uuid, base, _boot(instance, network_info), power_on)

    def get_info(self, instance: Any, use_cache: bool = True) -> Any:
        """The power state of the machine itself: a guest that powered itself off is SHUTDOWN."""
        if instance.uuid not in self.instances:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        known = self.instances[instance.uuid]
        state = self._backend.state(instance.uuid)
        if state is not None:
            known.state = _POWER[state]
        return hardware.InstanceInfo(state=known.state)

    def power_off(self, instance: Any, timeout: int = 0, retry_interval: int = 0) -> None:
        super().power_off(instance, timeout, retry_interval)
        self._backend.power_off(instance.uuid, timeout)

    def power_on(self, context: Any, instance: Any, network_info: Any, block_device_info: Any = None,
                 accel_info: Any = None, share_info: Any = None) -> None:
        super().power_on(context, instance, network_info, block_device_info=block_device_info,
                         accel_info=accel_info, share_info=share_info)
        self._backend.power_on(instance.uuid, _addresses(network_info) if network_info else None)

    def reboot(self, context: Any, instance: Any, network_info: Any, reboot_type: str, block_device_info: Any = None,
               bad_volumes_callback: Any = None, accel_info: Any = None, share_info: Any = None) -> None:
        super().reboot(context, instance, network_info, reboot_type, block_device_info=block_device_info,
                       bad_volumes_callback=bad_volumes_callback, accel_info=accel_info, share_info=share_info)
        self._backend.reboot(instance.uuid, hard=reboot_type == "HARD")

    def destroy(self, context: Any, instance: Any, network_info: Any, block_device_info: Any = None,
                destroy_disks: bool = True, destroy_secrets: bool = True) -> None:
        super().destroy(context, instance, network_info, block_device_info=block_device_info,
                        destroy_disks=destroy_disks, destroy_secrets=destroy_secrets)
        self._backend.destroy(instance.uuid)

    def get_console_output(self, context: Any, instance: Any) -> bytes:
        if instance.uuid not in self.instances:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        # Bytes, as libvirt's driver returns: Nova encodes a str as latin-1, which fails on a real console's UTF-8.
        return self._backend.console_log(instance.uuid).encode()

    def snapshot(self, context: Any, instance: Any, image_id: str, update_task_state: Any) -> None:
        if instance.uuid not in self.instances:
            raise exception.InstanceNotRunning(instance_id=instance.uuid)
        snapshot = self._image_api.get(context, image_id)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        # The same metadata libvirt's driver sends along with the bytes.
        metadata = {
            "status": "active",
            "name": snapshot["name"],
            "disk_format": "qcow2",
            "container_format": "bare",
            "properties": {
                "image_location": "snapshot",
                "image_state": "available",
                "owner_id": instance.project_id,
            },
        }
        update_task_state(task_state=task_states.IMAGE_UPLOADING,
                          expected_state=task_states.IMAGE_PENDING_UPLOAD)
        with self._backend.snapshot_disk(instance.uuid) as path, open(path, "rb") as disk:
            self._image_api.update(context, image_id, metadata, disk, purge_props=False)
        LOG.info("snapshot %s of %s uploaded", image_id, instance.uuid)
