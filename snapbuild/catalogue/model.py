"""The catalogue as values: entries (images), targets (cloud + region) and the policy; built once by load.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from snapbuild.openstack.properties import CONTENT_DIGEST

# Glance properties the catalogue adds to every image it makes (beside snapbuild's provenance).
ENTRY_PROPERTY = "snapbuild_catalogue_entry"
HIDDEN_AT_PROPERTY = "snapbuild_hidden_at"
COPIED_FROM_PROPERTY = "snapbuild_copied_from"
DIGEST_PROPERTY = CONTENT_DIGEST                # snapbuild.openstack.properties.provenance writes it


@dataclass(frozen=True, kw_only=True)
class BaseSelector:
    """Which Glance image a build starts from: by name or id, or the newest active image with these properties
    (neither: the newest with the recipe distro's os_distro/os_version, as `snapbuild build` picks)."""

    name: str | None = None
    properties: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Entry:
    name: str
    recipe: str
    variant: str | None = None
    distro: str | None = None
    mirrors: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    base: BaseSelector = field(default_factory=BaseSelector)
    properties: Mapping[str, str] = field(default_factory=dict)
    visibility: str = "private"
    image_name: str | None = None                # None: the recipe's image name
    targets: tuple[str, ...] = ()                # () : every target
    line: int | None = None


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    cloud: str
    region: str | None = None
    role: str = "build"                          # build (its own builds) | receive (copies from a build target)
    copy_from: str | None = None                 # the build target copies come from (None: the first one)
    store: str | None = None                     # a Glance store, for copy-image within a multi-store Glance
    # snapshot: a server in the cloud (snapbuild build); local | chroot: on this host from `base_file`, then uploaded
    builder: str = "snapshot"
    base_file: str | None = None                 # local | chroot: the base image file on this host
    build: Mapping[str, Any] = field(default_factory=dict)    # the builder's settings fields
    line: int | None = None

    @property
    def builds(self) -> bool:
        return self.role == "build"

    @property
    def on_host(self) -> bool:
        """Built on this host (local or chroot) and uploaded, rather than snapshotted in the cloud."""
        return self.builds and self.builder != "snapshot"

    @property
    def key(self) -> str:
        """What the per-cloud concurrency limit counts by: builds on this host share the host's."""
        return "this host" if self.on_host else self.cloud


@dataclass(frozen=True, kw_only=True)
class HostImage:
    """A local or chroot target's image: what it is called and carries (the entry's properties, its marks)."""

    name: str
    properties: Mapping[str, str]
    visibility: str


@dataclass(frozen=True, kw_only=True)
class HostBuilt:
    """A local or chroot target's image, built on this host and uploaded."""

    image_id: str
    properties: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class Policy:
    keep: int = 2                                # images per entry × target, the current one included
    grace_period_s: float = 7 * 86400.0          # hidden this long before deleted
    claim_ttl_s: float = 6 * 3600.0              # a claim outlives a build by this much at most
    claim_settle_s: float = 2.0                  # wait after creating a claim before reading the others
    on_claimed: str = "skip"                     # skip | wait
    concurrency: int = 4
    per_cloud: int = 2


@dataclass(frozen=True, kw_only=True)
class Catalogue:
    path: str
    entries: tuple[Entry, ...]
    targets: tuple[Target, ...]
    policy: Policy

    def entry(self, name: str) -> Entry:
        return next(e for e in self.entries if e.name == name)

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)

    def targets_of(self, entry: Entry) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if not entry.targets or t.name in entry.targets)

    def source_of(self, entry: Entry, target: Target) -> Target | None:
        """The build target a receiving target copies `entry` from."""
        builders = [t for t in self.targets_of(entry) if t.builds]
        if target.copy_from:
            return next((t for t in builders if t.name == target.copy_from), None)
        return builders[0] if builders else None
