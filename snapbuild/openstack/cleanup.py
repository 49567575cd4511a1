"""`snapbuild cleanup` on the cloud: find what interrupted or crashed builds left, and remove it in order.

Found by snapbuild's own marks only (DESIGN rule 2): the `snapbuild` tag with the build metadata on servers,
floating IPs, security groups, ports, volumes and images; keypairs by their `snapbuild-<build id>` name.
The local ledgers of abandoned builds add what they name (a `pending:<name>` placeholder is resolved by
name), but a resource they name is still only taken when it carries the build's id in its marks or name.

    servers (wait gone) ─► floating IPs ─► ports ─► security groups (409 while a port holds them: retry)
                        ─► volumes (wait gone) ─► images ─► keypairs
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from snapbuild.errors import CloudError, UserError
from snapbuild.ledger import Ledger, all_ledgers, installation_id
from snapbuild.openstack import marks
from snapbuild.openstack.cloud import Cloud
from snapbuild.openstack.model import Marked

log = logging.getLogger(__name__)

ORDER = ("server", "floating_ip", "port", "security_group", "volume", "image", "keypair")
CLOUD_KINDS = frozenset(ORDER)
KEYPAIR_PREFIX = "snapbuild-"
BUILD_ID = re.compile(r"(\d{14})-[0-9a-f]{8}")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
UNITS = {"s": 1, "": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `2h`, `1d`, `1w` (a bare number is seconds)."""
    match = DURATION.match(text or "")
    if not match:
        raise UserError(f"--older-than {text!r} is not a duration", hint="for example 30m, 2h or 1d")
    try:
        return timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])
    except OverflowError:
        raise UserError(f"--older-than {text!r} is too long", hint="for example 30m, 2h or 1d") from None


@dataclass(frozen=True, kw_only=True)
class CleanupSettings:
    older_than: timedelta | None = None    # None: only what is past its expires-at
    build_id: str | None = None            # only this build (then its age does not matter)
    all_owners: bool = False               # other installations' resources too
    dry_run: bool = False
    delete_timeout: float = 300.0
    group_timeout: float = 120.0           # how long a security group may answer 409 (port still on it)


@dataclass(frozen=True, kw_only=True)
class Candidate(Marked):
    """A resource chosen for removal: found by its marks, or named by an abandoned build's ledger."""

    reason: str                     # why it qualifies: "expired", "older than 2:00:00", "abandoned build", ...


@dataclass
class Outcome:
    candidate: Candidate
    action: str                     # "would delete" | "deleted" | "failed: …"

    def as_dict(self) -> dict[str, str | None]:
        c = self.candidate
        return {"kind": c.kind, "id": c.id, "name": c.name, "build_id": c.build_id,
                "installation_id": c.installation_id, "created_at": c.created_at, "expires_at": c.expires_at,
                "reason": c.reason, "action": self.action}


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)     # marked, but not to be touched (and why)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.action.startswith("failed")]


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _created_from_build_id(build_id: str | None) -> str | None:
    match = BUILD_ID.fullmatch(build_id or "")
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC).isoformat()


@dataclass(frozen=True, kw_only=True)
class _Local:
    """What this host's ledgers say: builds still running, and abandoned builds' cloud entries."""

    live_builds: frozenset[str]
    abandoned: dict[str, Ledger]


def read_ledgers(ledgers: Iterable[Ledger] | None = None) -> _Local:
    live: set[str] = set()
    abandoned: dict[str, Ledger] = {}
    for ledger in all_ledgers() if ledgers is None else ledgers:
        if ledger.abandoned:
            if any(e.kind in CLOUD_KINDS for e in ledger.entries()):
                abandoned[ledger.build_id] = ledger
        elif ledger.status == "running":
            live.add(ledger.build_id)   # running here, or on another host sharing this state dir: hands off
    return _Local(live_builds=frozenset(live), abandoned=abandoned)


class Sweep:
    """One cleanup run: collect candidates from the marks and the ledgers, then remove them in order."""

    def __init__(self, cloud: Cloud, settings: CleanupSettings, *, local: _Local | None = None,
                 me: str | None = None, now: datetime | None = None) -> None:
        self.cloud = cloud
        self.settings = settings
        self.local = local if local is not None else read_ledgers()
        self.me = me or installation_id()
        self.now = now or datetime.now(UTC)
        self.report = Report()

    # ---- finding -------------------------------------------------------------------------------------------

    def find(self) -> list[Candidate]:
        chosen: dict[tuple[str, str], Candidate] = {}
        for item in self._marked():
            reason = self._qualifies(item)
            if reason:
                chosen[(item.kind, item.id)] = self._candidate(item, reason)
        for cand in self._from_ledgers():
            chosen.setdefault((cand.kind, cand.id), cand)
        rank = {kind: i for i, kind in enumerate(ORDER)}
        return sorted(chosen.values(), key=lambda c: (rank[c.kind], c.build_id or "", c.id))

    def _marked(self) -> list[Marked]:
        found: list[Marked] = []
        for kind in ("server", "floating_ip", "security_group"):
            found.extend(self.cloud.find_marked(kind))
        found.extend(self.cloud.marked_ports())
        if self.cloud.has_service("block-storage"):
            found.extend(self.cloud.find_marked("volume"))
        # Images: only those that never became active (a finished image has lost its tag anyway).
        for image in self.cloud.find_marked("image"):
            status = self._image_status(image.id)
            if status == "active":
                self.report.skipped.append(f"image {image.id} ({image.name}): active, not a partial upload")
            elif status is not None:
                found.append(image)
        found.extend(self._keypairs())
        return found

    def _image_status(self, image_id: str) -> str | None:
        try:
            return self.cloud.image_data(image_id).status
        except CloudError:
            return None
        except Exception:  # noqa: BLE001 - the adapter's 404 (gone meanwhile)
            return None

    def _keypairs(self) -> list[Marked]:
        """Keypairs carry no metadata: the name `snapbuild-<build id>` is the only mark (the owner is unknown)."""
        found = []
        for name in self.cloud.keypairs_with_prefix(KEYPAIR_PREFIX):
            build_id = name[len(KEYPAIR_PREFIX):]
            if BUILD_ID.fullmatch(build_id):
                found.append(Marked(kind="keypair", id=name, name=name, build_id=build_id, installation_id=None,
                                    created_at=_created_from_build_id(build_id), expires_at=None))
        return found

    def _qualifies(self, item: Marked) -> str | None:
        """Why this marked resource may go, or None (and why not, in the report's skipped list)."""
        s = self.settings
        label = f"{item.kind} {item.id} ({item.name})"
        if not item.build_id:
            self.report.skipped.append(f"{label}: tagged but without a build id")
            return None
        if s.build_id and item.build_id != s.build_id:
            return None
        if item.build_id in self.local.live_builds:
            self.report.skipped.append(f"{label}: build {item.build_id} is still running")
            return None
        if not s.all_owners and item.installation_id != self.me:
            if item.build_id in self.local.abandoned:
                return "abandoned build (ledger)"   # keypairs: owned by this installation's ledger
            if item.installation_id is None:
                self.report.skipped.append(f"{label}: owner unknown (use --all-owners)")
            return None
        if item.build_id in self.local.abandoned:
            return "abandoned build (ledger)"
        return self._old_enough(item)

    def _old_enough(self, item: Marked) -> str | None:
        s = self.settings
        expires = _when(item.expires_at)
        created = _when(item.created_at) or _when(_created_from_build_id(item.build_id))
        if s.older_than is not None and created is not None and created <= self.now - s.older_than:
            return f"older than {_human(s.older_than)}"
        if expires is not None and expires <= self.now:
            return "expired"
        if s.build_id and s.older_than is None:
            return "named build"       # `cleanup --build-id X` (what --keep-on-failure tells users to run)
        return None

    @staticmethod
    def _candidate(item: Marked, reason: str) -> Candidate:
        return Candidate(**{**asdict(item), "created_at": item.created_at or _created_from_build_id(item.build_id)},
                         reason=reason)

    def _from_ledgers(self) -> list[Candidate]:
        """Abandoned builds' entries, each checked against the cloud: it must still carry that build's id."""
        out: list[Candidate] = []
        for build_id, ledger in sorted(self.local.abandoned.items()):
            if self.settings.build_id and build_id != self.settings.build_id:
                continue
            if not self.settings.all_owners and ledger.data.get("installation_id") not in (None, self.me):
                continue
            for entry in ledger.entries():
                if entry.kind not in CLOUD_KINDS:
                    continue
                name = str(entry.info.get("name") or "")
                if entry.ref.startswith("pending:"):
                    ids = self._resolve(entry.kind, entry.ref[len("pending:"):])
                else:
                    ids = [entry.ref]
                for rid in ids:
                    if self._carries_build(entry.kind, rid, name, build_id):
                        out.append(Candidate(kind=entry.kind, id=rid, name=name, build_id=build_id,
                                             installation_id=str(ledger.data.get("installation_id") or "") or None,
                                             created_at=str(ledger.data.get("created_at") or "") or None,
                                             expires_at=None, reason="abandoned build (ledger)"))
        return out

    def _resolve(self, kind: str, name: str) -> list[str]:
        finders: dict[str, Callable[[str], list[str]]] = {
            "server": self.cloud.servers_named, "security_group": self.cloud.security_groups_named,
            "floating_ip": self.cloud.floating_ips_described, "image": self.cloud.images_named,
            "volume": self.cloud.volumes_named,
            "keypair": lambda n: [k for k in self.cloud.keypairs_with_prefix(n) if k == n]}
        finder = finders.get(kind)
        if finder is None or (kind == "volume" and not self.cloud.has_service("block-storage")):
            return []
        try:
            return finder(name)
        except CloudError as exc:
            log.warning("could not look up %s %r: %s", kind, name, exc)
            return []

    def _carries_build(self, kind: str, rid: str, name: str, build_id: str) -> bool:
        """snapbuild's mark for this build: its id in the name/description the builder gave, or in the marks."""
        if build_id in name or (kind == "keypair" and build_id in rid):
            return True
        if kind == "image":
            try:
                image = self.cloud.image_data(rid)
            except Exception:  # noqa: BLE001 - gone, or unreadable: not provably ours
                return False
            return image.properties.get(marks.PREFIX + "build_id") == build_id
        return False

    # ---- removing ------------------------------------------------------------------------------------------

    def run(self) -> Report:
        candidates = self.find()
        for cand in candidates:
            if self.settings.dry_run:
                self.report.outcomes.append(Outcome(cand, "would delete"))
                continue
            try:
                self._delete(cand)
            except Exception as exc:  # noqa: BLE001 - go on with the rest; the table shows this one failed
                log.error("could not delete %s %s: %s", cand.kind, cand.id, exc)
                self.report.outcomes.append(Outcome(cand, f"failed: {exc}"))
                continue
            self.report.outcomes.append(Outcome(cand, "deleted"))
            self._forget(cand)
        if not self.settings.dry_run:
            self._drop_empty_ledgers()
        return self.report

    def _delete(self, cand: Candidate) -> None:
        cloud, s = self.cloud, self.settings
        if cand.kind == "server":
            cloud.delete_server(cand.id, s.delete_timeout)
        elif cand.kind == "floating_ip":
            cloud.delete_floating_ip(cand.id)
        elif cand.kind == "port":
            cloud.delete_port(cand.id)
        elif cand.kind == "security_group":
            cloud.delete_security_group_when_free(cand.id, s.group_timeout)
        elif cand.kind == "volume":
            cloud.delete_volume(cand.id, s.delete_timeout)
        elif cand.kind == "image":
            cloud.delete_image(cand.id)
        elif cand.kind == "keypair":
            cloud.delete_keypair(cand.id)
        else:  # pragma: no cover - ORDER lists every kind
            raise ValueError(cand.kind)

    def _forget(self, cand: Candidate) -> None:
        ledger = self.local.abandoned.get(cand.build_id or "")
        if ledger is None:
            return
        for entry in ledger.entries():
            if entry.kind == cand.kind and (entry.ref == cand.id or (entry.ref.startswith("pending:")
                                            and entry.info.get("name") == cand.name)):
                ledger.forget(entry.kind, entry.ref)

    def _drop_empty_ledgers(self) -> None:
        for ledger in self.local.abandoned.values():
            if ledger.path.exists() and not ledger.entries():
                ledger.path.unlink(missing_ok=True)


def cleanup_cloud(cloud: Cloud, settings: CleanupSettings) -> Report:
    return Sweep(cloud, settings).run()


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(report: Report, *, dry_run: bool) -> str:
    """What was found and what was done, one row each."""
    if not report.outcomes:
        return "nothing of snapbuild's to remove in the cloud\n"
    rows = [("KIND", "ID", "NAME", "BUILD", "WHY", "DONE")]
    for o in report.outcomes:
        c = o.candidate
        rows.append((c.kind, c.id, c.name[:40], c.build_id or "-", c.reason, o.action))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    summary = f"{len(report.outcomes)} resource(s) " + ("would be removed (dry run)" if dry_run else
                                                         f"handled, {len(report.failed)} failed")
    return "\n".join(lines) + "\n" + summary + "\n"
