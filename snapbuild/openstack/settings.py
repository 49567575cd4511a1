"""What `snapbuild build` on OpenStack is told, and what it answers: values, built once by the CLI."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snapbuild.run.context import OnError


@dataclass(frozen=True, kw_only=True)
class SnapshotSettings:
    cloud: str | None = None                 # clouds.yaml entry (None: OS_CLOUD / openstacksdk's default)
    region: str | None = None
    auth_args: tuple[str, ...] = field(default=(), repr=False)   # the openstack CLI's auth options (secrets too)
    flavor: str
    base_image: str | None = None            # name or id; None: most recent image matching the recipe's distro
    networks: tuple[str, ...] = ()           # names or ids; none given: Nova's "auto"
    port: str | None = None                  # an existing port instead of networks
    floating_network: str | None = None      # external network for a floating IP; None: no floating IP
    security_groups: tuple[str, ...] = ()    # existing groups; none given: a temporary one allowing SSH
    ssh_cidr: str = "0.0.0.0/0"              # who may reach port 22 through the temporary group
    availability_zone: str | None = None
    config_drive: bool = False
    volume_size_gb: int | None = None        # boot from a Cinder volume of this size (captured by upload)
    volume_disk_format: str = "qcow2"
    ssh_user: str = "snapbuild"              # the temporary builder user cloud-init creates
    ssh_port: int = 22
    ssh_interface: str | None = None         # network name/id whose address SSH uses
    ssh_ip_version: int | None = None        # 4 or 6
    ssh_bastion: str | None = None           # [user@]host[:port]
    ssh_bastion_key: Path | None = None      # the user's own key for the jump host
    accept_any_host_key: bool = False        # loudly named opt-in (DESIGN rule 6)
    image_name: str | None = None            # --name (alias --image-name)
    visibility: str = "private"              # private | shared | community | public
    min_disk_gb: int | None = None           # --min-disk; None: the recipe's min_disk_gb
    min_ram_mb: int | None = None            # --min-ram; None: the recipe's min_ram_mb
    protected: bool = False                  # Glance's `protected`, set by the finishing patch
    hidden: bool = False                     # Glance's `os_hidden`
    share_with: tuple[str, ...] = ()         # project ids to add as image members
    properties: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()               # tags on the finished image
    timeout_boot: float = 900.0
    timeout_ssh: float = 600.0
    timeout_provision: float = 3600.0
    timeout_snapshot: float = 1800.0
    on_error: OnError = "cleanup"            # cleanup | abort (keep, say how to reach and remove) | ask
    no_provision: bool = False               # test/debug: boot → stop → snapshot → properties; no SSH at all
    transport: str = "ssh"                   # ssh | console (cloud-init runs the plan, the console reports)
    allow_blocked: bool = False
    json: bool = False
    manifest_path: Path | None = None         # default: the state directory's manifests/
    log_path: Path | None = None


@dataclass(frozen=True, kw_only=True)
class SnapshotResult:
    image_id: str
    image_name: str
    build_id: str
    properties: Mapping[str, str]
    seconds: float
    manifest: Mapping[str, Any]
    manifest_path: Path | None = None

    def to_json(self) -> str:
        return json.dumps({"image_id": self.image_id, "image_name": self.image_name, "build_id": self.build_id,
                           "properties": dict(self.properties), "seconds": round(self.seconds, 1),
                           "manifest": str(self.manifest_path) if self.manifest_path else None},
                          indent=2, sort_keys=True)
