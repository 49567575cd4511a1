"""What the Cloud adapter hands out: small frozen values, never openstacksdk objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


def _frozen(mapping: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, kw_only=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int


@dataclass(frozen=True, kw_only=True)
class Image:
    id: str
    name: str
    status: str
    size: int | None = None
    checksum: str | None = None
    hash_algo: str | None = None         # Glance's os_hash_algo (sha512 by default) and os_hash_value
    hash_value: str | None = None
    visibility: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    created_at: str = ""
    tags: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)  # everything that is not a core field

    @property
    def content_checksum(self) -> str | None:
        """`ALGO:HEX` naming the image's bytes: Glance's multihash where it has one (it survives copies
        between stores and regions), else the legacy md5."""
        if self.hash_algo and self.hash_value:
            return f"{self.hash_algo}:{self.hash_value}"
        return f"md5:{self.checksum}" if self.checksum else None


@dataclass(frozen=True, kw_only=True)
class Network:
    id: str
    name: str
    external: bool = False


@dataclass(frozen=True, kw_only=True)
class SecurityGroup:
    id: str
    name: str


@dataclass(frozen=True, kw_only=True)
class Address:
    network: str
    ip: str
    version: int
    kind: str  # "fixed" or "floating"


@dataclass(frozen=True, kw_only=True)
class Server:
    id: str
    name: str
    status: str
    task_state: str | None = None
    fault: str | None = None
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FloatingIP:
    id: str
    address: str


@dataclass(frozen=True, kw_only=True)
class Volume:
    id: str
    status: str


@dataclass(frozen=True, kw_only=True)
class QuotaItem:
    resource: str
    limit: int   # -1 = unlimited
    in_use: int

    def free(self) -> int | None:
        return None if self.limit < 0 else max(self.limit - self.in_use, 0)


@dataclass(frozen=True, kw_only=True)
class ServerSpec:
    name: str
    flavor_id: str
    image_id: str | None             # None when booting from `boot_volume_id`
    network_ids: tuple[str, ...] = ()
    port_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    user_data: str = ""              # already base64 (snapbuild.userdata.encode_for_nova)
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    availability_zone: str | None = None
    config_drive: bool = False
    boot_volume_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Marked:
    """A resource carrying snapbuild's marks (tag `snapbuild` + build metadata), for `snapbuild cleanup`."""

    kind: str                 # server | floating_ip | security_group | image | volume
    id: str
    name: str
    build_id: str | None
    installation_id: str | None
    created_at: str | None
    expires_at: str | None
