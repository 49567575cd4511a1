"""How snapbuild marks cloud resources so `snapbuild cleanup` can find them after a kill -9 (DESIGN rule 2).

Nova servers, Glance images and Cinder volumes carry metadata/properties; Neutron resources carry only tags,
so the same facts travel there as `snapbuild:KEY=VALUE` tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

TAG = "snapbuild"
PREFIX = "snapbuild_"
KEYS = ("build_id", "installation_id", "recipe", "host", "created_at", "expires_at")


@dataclass(frozen=True, kw_only=True)
class Marks:
    build_id: str
    installation_id: str
    recipe: str
    host: str
    created_at: str
    expires_at: str

    @classmethod
    def new(cls, *, build_id: str, installation_id: str, recipe: str, host: str,
            lifetime: timedelta = timedelta(hours=6), now: datetime | None = None) -> Marks:
        now = (now or datetime.now(UTC)).replace(microsecond=0)
        return cls(build_id=build_id, installation_id=installation_id, recipe=recipe, host=host,
                   created_at=now.isoformat(), expires_at=(now + lifetime).isoformat())

    def metadata(self) -> dict[str, str]:
        """For Nova metadata, Glance properties and Cinder metadata (values ≤ 255 chars)."""
        return {PREFIX + key: str(getattr(self, key))[:255] for key in KEYS}

    def tags(self) -> list[str]:
        """For Neutron, which has tags only."""
        return [TAG] + [f"{TAG}:{key}={str(getattr(self, key))[:200]}" for key in KEYS]


def from_metadata(metadata: Mapping[str, object]) -> dict[str, str]:
    return {key: str(metadata[PREFIX + key]) for key in KEYS if PREFIX + key in metadata}


def from_tags(tags: Iterable[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for tag in tags:
        if tag.startswith(TAG + ":") and "=" in tag:
            key, _, value = tag[len(TAG) + 1:].partition("=")
            found[key] = value
    return found
