"""What `apply` will do, decided before anything is touched: one Item per entry × target, plus the rotation.

For a build target the digest is the entry's content digest with that target's base image checksum (Glance's
`os_hash_value`, as the snapshot build records it); a receiving target wants what its source target has, so its
digest is the source's. An active image of ours with the digest means done (skip); a live claim on it means
another apply is making it (skip or wait, per the policy); otherwise build, or copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapbuild.catalogue import claims, rotation
from snapbuild.catalogue.model import DIGEST_PROPERTY, ENTRY_PROPERTY, Catalogue, Entry, Target
from snapbuild.digest import file_checksum
from snapbuild.errors import UserError

if TYPE_CHECKING:
    from snapbuild.openstack.cloud import Cloud, ImageData
    from snapbuild.openstack.model import Image
    from snapbuild.plan import Plan

log = logging.getLogger(__name__)

Connect = Callable[[Target], "Cloud"]


@dataclass(frozen=True, kw_only=True)
class Item:
    entry: str
    target: str
    action: str                      # build | copy | skip | wait
    digest: str
    reason: str
    image_id: str | None = None      # the current image (skip), or the source image (copy)
    base: Mapping[str, str] | None = None    # id, name, checksum of the base (build targets)
    source: str | None = None        # the build target a copy comes from
    store: str | None = None         # copy-image into this store (same Glance)

    @property
    def key(self) -> str:
        return f"{self.entry}@{self.target}"


@dataclass(frozen=True, kw_only=True)
class Rotation:
    entry: str
    target: str
    image_id: str
    image_name: str
    action: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class CataloguePlan:
    items: tuple[Item, ...]
    rotations: tuple[Rotation, ...]
    plans: Mapping[str, Any] = field(default_factory=dict)       # entry → snapbuild.plan.Plan

    def rows(self) -> list[dict[str, Any]]:
        rows = [{"entry": i.entry, "target": i.target, "action": i.action, "image": i.image_id or "",
                 "digest": i.digest[:12], "reason": i.reason} for i in self.items]
        rows += [{"entry": r.entry, "target": r.target, "action": r.action, "image": r.image_id, "digest": "",
                  "reason": r.reason} for r in self.rotations if r.action != "keep" or r.reason != "current"]
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {"items": [dict(i.__dict__) for i in self.items],
                "rotations": [dict(r.__dict__) for r in self.rotations]}


class Clouds:
    """One adapter per target (connected on first use) and the listings each decision reads, each made once."""

    def __init__(self, connect: Connect) -> None:
        self.connect = connect
        self._clouds: dict[str, Cloud] = {}
        self._cache: dict[tuple[str, str], Any] = {}

    def of(self, target: Target) -> Cloud:
        if target.name not in self._clouds:
            self._clouds[target.name] = self.connect(target)
        return self._clouds[target.name]

    def cached(self, target: Target, key: str, fetch: Callable[[], Any]) -> Any:
        if (target.name, key) not in self._cache:
            self._cache[(target.name, key)] = fetch()
        return self._cache[(target.name, key)]

    def forget(self, target: Target) -> None:
        self._cache = {k: v for k, v in self._cache.items() if k[0] != target.name}

    def entry_images(self, target: Target, entry: str) -> list[ImageData]:
        return list(self.cached(target, f"entry:{entry}",
                                lambda: self.of(target).images_with(**{ENTRY_PROPERTY: entry})))

    def claims(self, target: Target) -> list[claims.Claim]:
        found = self.cached(target, "claims", lambda: self.of(target).images_with(tag=claims.CLAIM_TAG))
        return [c for c in (claims.from_image(i) for i in found) if c is not None]

    def in_use(self, target: Target) -> Callable[[str], list[str]]:
        def lookup(image_id: str) -> list[str]:
            used = self.cached(target, "in_use", lambda: self.of(target).images_in_use())
            return list(used.get(image_id, []))
        return lookup

    def close(self) -> None:
        for cloud in self._clouds.values():
            try:
                cloud.close()
            except Exception:
                log.debug("closing %s failed", cloud.name, exc_info=True)


def entry_plan(entry: Entry, library: Any) -> Plan:
    from snapbuild.distros import get_distro
    from snapbuild.plan import make_plan
    from snapbuild.profiles import load_profile
    from snapbuild.recipes import resolve_variables

    recipe = library.load(entry.recipe)
    values = resolve_variables(recipe, config_values=entry.variables, set_values={}, variant=entry.variant)
    return make_plan(recipe, distro=get_distro(entry.distro or recipe.distros[0]),
                     profile=load_profile(library.profile_path(entry.mirrors or "cloudinative")),
                     variables=values, variant=entry.variant)


def resolve_base(cloud: Cloud, entry: Entry, plan: Plan) -> Image:
    if entry.base.name:
        return cloud.resolve_image(entry.base.name)
    return cloud.default_image(plan.distro.id, plan.distro.version, entry.base.properties)


def parse_only(catalogue: Catalogue, only: Iterable[str]) -> set[tuple[str, str]]:
    import difflib

    pairs = set()
    for text in only:
        entry, sep, target = text.partition("@")
        entries = [e.name for e in catalogue.entries]
        targets = [t.name for t in catalogue.targets]
        for name, known, what in ((entry, entries, "entry"), (target, targets, "target")):
            if not sep or name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise UserError(f"--only {text}: no {what} {name!r} in the catalogue" if sep else
                                f"--only {text} is not ENTRY@TARGET",
                                hint=(f"did you mean {close[0]!r}? " if close else "") + f"{what}s: {', '.join(known)}")
        pairs.add((entry, target))
    return pairs


def make_plan(catalogue: Catalogue, *, library: Any, clouds: Clouds, only: set[tuple[str, str]] | None = None,
              now: datetime | None = None) -> CataloguePlan:
    now = now or datetime.now(UTC)
    plans: dict[str, Plan] = {e.name: entry_plan(e, library) for e in catalogue.entries}
    items: list[Item] = []
    by_key: dict[tuple[str, str], Item] = {}
    # build targets first: receiving targets want their source's digest
    for entry in catalogue.entries:
        for target in sorted(catalogue.targets_of(entry), key=lambda t: not t.builds):
            if target.builds:
                item = _build_item(catalogue, entry, target, plans[entry.name], clouds, now)
            else:
                item = _copy_item(catalogue, entry, target, clouds, by_key, now)
            by_key[(entry.name, target.name)] = item
    for entry in catalogue.entries:
        for target in catalogue.targets_of(entry):
            item = by_key[(entry.name, target.name)]
            if only is not None and (entry.name, target.name) not in only:
                continue
            if only is not None and item.action == "copy" and item.image_id is None \
                    and (entry.name, str(item.source)) not in only:
                item = Item(entry=item.entry, target=item.target, action="skip", digest=item.digest,
                            source=item.source, reason=f"its source {entry.name}@{item.source} is not built yet and "
                                                       "not in --only")
            items.append(item)
    rotations = [r for item in items for r in plan_rotation(catalogue, item, clouds, now)]
    return CataloguePlan(items=tuple(items), rotations=tuple(rotations), plans=plans)


def _current(clouds: Clouds, target: Target, entry: Entry, digest: str) -> ImageData | None:
    cloud = clouds.of(target)
    images = [i for i in clouds.entry_images(target, entry.name)
              if i.status == "active" and i.properties.get(DIGEST_PROPERTY) == digest
              and rotation.not_ours(i, cloud.project_id) is None
              and (not target.store or target.store in i.stores or not i.stores)]
    return max(images, key=lambda i: (i.created_at, i.id)) if images else None


def _claimed(clouds: Clouds, target: Target, digest: str, now: datetime) -> claims.Claim | None:
    return claims.winner([c for c in clouds.claims(target) if c.digest == digest and c.target == target.name], now)


def _build_item(catalogue: Catalogue, entry: Entry, target: Target, plan: Plan, clouds: Clouds,
                now: datetime) -> Item:
    cloud = clouds.of(target)
    if target.on_host:
        # The file's sha256, as `snapbuild local`/`chroot` record it for the digest (read once per apply).
        path = str(target.base_file)
        checksum = clouds.cached(target, f"file:{path}", lambda: file_checksum(Path(path)))
        based = {"id": "", "name": path, "checksum": checksum}
    else:
        selector = f"base:{entry.base.name}:{sorted(entry.base.properties.items())}:{plan.distro.name}"
        base: Image = clouds.cached(target, selector, lambda: resolve_base(cloud, entry, plan))
        based = {"id": base.id, "name": base.name, "checksum": base.content_checksum or ""}
    digest = plan.content_digest(based["checksum"] or None).value
    current = _current(clouds, target, entry, digest)
    if current is not None:
        return Item(entry=entry.name, target=target.name, action="skip", digest=digest, image_id=current.id,
                    base=based, reason=f"up to date: {current.name}")
    holder = _claimed(clouds, target, digest, now)
    if holder is not None:
        return _claimed_item(catalogue, entry, target, digest, holder, base=based)
    older = [i for i in clouds.entry_images(target, entry.name) if i.status == "active"
             and rotation.not_ours(i, cloud.project_id) is None]
    newest = max(older, key=lambda i: i.created_at) if older else None
    reason = "no image yet" if newest is None else \
        f"inputs changed: newest has digest {newest.properties.get(DIGEST_PROPERTY, '')[:12]}"
    return Item(entry=entry.name, target=target.name, action="build", digest=digest, base=based,
                reason=f"{reason} (base {based['name']}" + (f", {target.builder} build)" if target.on_host else ")"))


def _claimed_item(catalogue: Catalogue, entry: Entry, target: Target, digest: str, holder: claims.Claim,
                  **extra: Any) -> Item:
    until = f"{holder.expires_at:%H:%M}" if holder.expires_at else "?"
    wait = catalogue.policy.on_claimed == "wait"
    return Item(entry=entry.name, target=target.name, action="wait" if wait else "skip", digest=digest,
                reason=f"claimed by apply {holder.owner} (until {until} UTC)", **extra)


def _copy_item(catalogue: Catalogue, entry: Entry, target: Target, clouds: Clouds,
               by_key: Mapping[tuple[str, str], Item], now: datetime) -> Item:
    source = catalogue.source_of(entry, target)
    assert source is not None          # load.py refuses a receiving target without one
    src = by_key[(entry.name, source.name)]
    digest = src.digest
    current = _current(clouds, target, entry, digest)
    same_glance = bool(target.store) and clouds.of(target).image_endpoint() == clouds.of(source).image_endpoint()
    store = target.store if same_glance else None
    if current is not None:
        return Item(entry=entry.name, target=target.name, action="skip", digest=digest, image_id=current.id,
                    source=source.name, reason=f"up to date: {current.name}")
    holder = _claimed(clouds, target, digest, now)
    if holder is not None:
        return _claimed_item(catalogue, entry, target, digest, holder, source=source.name)
    how = f"Glance copy-image to store {store}" if store else "streamed"
    if src.action == "skip" and src.image_id:
        return Item(entry=entry.name, target=target.name, action="copy", digest=digest, image_id=src.image_id,
                    source=source.name, store=store, reason=f"{how} from {source.name}")
    return Item(entry=entry.name, target=target.name, action="copy", digest=digest, source=source.name,
                store=store, reason=f"{how} from {source.name} once {'built' if src.action == 'build' else src.action}")


def plan_rotation(catalogue: Catalogue, item: Item, clouds: Clouds, now: datetime) -> list[Rotation]:
    """What rotation does for `item` once its current image exists (dry run: as if the build/copy succeeded)."""
    target = catalogue.target(item.target)
    if item.action == "skip" and item.image_id is None:
        return []      # nothing current here (claimed elsewhere, or a source out of --only): nothing to rotate
    cloud = clouds.of(target)
    decided = rotation.decide(clouds.entry_images(target, item.entry), project_id=cloud.project_id,
                              digest=item.digest, pending=item.action != "skip", keep=catalogue.policy.keep,
                              grace_s=catalogue.policy.grace_period_s, now=now, in_use=clouds.in_use(target))
    return [Rotation(entry=item.entry, target=item.target, image_id=r.image_id, image_name=r.image_name,
                     action=r.action, reason=r.reason) for r in decided]
