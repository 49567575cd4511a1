"""Two applies never build (or copy) the same digest twice: a claim that lives in Glance, not in a local lock file.

Glance has no compare-and-swap, so a claim is won by creating first and comparing after:

1. create my claim: a `queued` image record (no data) tagged `snapbuild-claim`, with the digest, the owner
   (this apply's id) and `snapbuild_claim_expires_at`, plus snapbuild's usual marks so `snapbuild cleanup` removes a
   claim whose apply was killed;
2. wait `settle` seconds (≥ 1 s: Glance's `created_at` has one-second resolution), then list every claim for the
   digest;
3. claims past their expiry are dead: they are deleted (taken over);
4. of the live claims the oldest wins, ordered by Glance's own `created_at`, then by id: every apply compares by the
   same server-side values, whatever its own clock says;
5. a loser deletes its claim and skips or waits; the winner builds, then deletes its claim.

Why it is safe: a claim created after I listed has a `created_at` later than my listing, which is later than my
own `created_at` plus the settle time, so it is strictly younger than mine and its creator, listing after it,
sees mine as older. Two claims in the same second are always both seen by both (each lists after the other
exists), and then the id decides for both alike. What it assumes: the clocks of the Glance API nodes agree to
within the settle time.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from snapbuild.ledger import installation_id
from snapbuild.openstack import faults, marks
from snapbuild.openstack.cloud import RECORD_SETTLE_S, Cloud, ImageData
from snapbuild.run.context import create_once

log = logging.getLogger(__name__)

CLAIM_TAG = "snapbuild-claim"
CLAIM_DIGEST = "snapbuild_claim_digest"
CLAIM_OWNER = "snapbuild_claim_owner"
CLAIM_EXPIRES = "snapbuild_claim_expires_at"
CLAIM_TARGET = "snapbuild_claim_target"


@dataclass(frozen=True, kw_only=True)
class Claim:
    id: str
    digest: str
    owner: str
    target: str
    created_at: str
    expires_at: datetime | None

    def live(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at > now


@dataclass(frozen=True, kw_only=True)
class Outcome:
    won: bool
    mine: Claim | None           # the claim to release after the work (None when lost)
    holder: Claim | None         # who has it, when lost
    taken_over: tuple[str, ...] = ()


def from_image(image: ImageData) -> Claim | None:
    props = image.properties
    if CLAIM_TAG not in image.tags or CLAIM_DIGEST not in props:
        return None
    try:
        expires = datetime.fromisoformat(props.get(CLAIM_EXPIRES, "").replace("Z", "+00:00"))
    except ValueError:
        expires = None    # a claim without a readable expiry is dead
    return Claim(id=image.id, digest=props[CLAIM_DIGEST], owner=props.get(CLAIM_OWNER, ""),
                 target=props.get(CLAIM_TARGET, ""), created_at=image.created_at, expires_at=expires)


def winner(claims: Sequence[Claim], now: datetime) -> Claim | None:
    live = [c for c in claims if c.live(now)]
    return min(live, key=lambda c: (c.created_at, c.id)) if live else None


def claims_for(cloud: Cloud, digest: str, target: str) -> list[Claim]:
    found = [from_image(i) for i in cloud.images_with(**{CLAIM_DIGEST: digest})]
    return [c for c in found if c is not None and c.target == target]


def take(cloud: Cloud, *, digest: str, target: str, owner: str, ttl_s: float, settle_s: float,
         now: Callable[[], datetime] = lambda: datetime.now(UTC),
         sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Create a claim, compare, and keep it only if it is the oldest live one (see the module's text)."""
    stamp = marks.Marks.new(build_id=owner, installation_id=installation_id(), recipe="claim",
                            host=socket.gethostname(), lifetime=timedelta(seconds=ttl_s), now=now())
    name = f"snapbuild-claim-{digest[:16]}-{target}"
    # Interrupted in flight, the create may still be carried out after a first look (a CI run left a claim so, and
    # a live claim of a dead apply holds back the next apply until it expires): swept until it settles.
    record = create_once(
        "claim", name,
        lambda: cloud.create_image_record(
            name=name, disk_format="raw", tags=[marks.TAG, CLAIM_TAG],
            properties={**stamp.metadata(), CLAIM_DIGEST: digest, CLAIM_OWNER: owner, CLAIM_TARGET: target,
                        CLAIM_EXPIRES: stamp.expires_at}),
        lambda: [c.id for c in claims_for(cloud, digest, target) if c.owner == owner], cloud.delete_image,
        settle_s=RECORD_SETTLE_S, unsettled=faults.may_still_be_made)
    try:
        sleep(settle_s)
        claims = claims_for(cloud, digest, target)
        moment = now()
        dead = [c for c in claims if not c.live(moment) and c.id != record.id]
        for claim in dead:
            log.info("claim %s for %s (owner %s) expired: taking over", claim.id, digest[:12], claim.owner)
            cloud.delete_image(claim.id)
        mine = next((c for c in claims if c.id == record.id), None)
        if mine is None:     # a listing that lags behind the create: compare with what the create answered
            mine = Claim(id=record.id, digest=digest, owner=owner, target=target, created_at=record.created_at,
                         expires_at=datetime.fromisoformat(stamp.expires_at))
            claims.append(mine)
        first = winner(claims, moment)
        taken = tuple(c.id for c in dead)
        if first is not None and first.id == record.id:
            return Outcome(won=True, mine=mine, holder=None, taken_over=taken)
    except BaseException:
        release(cloud, record.id)
        raise
    release(cloud, record.id)
    return Outcome(won=False, mine=None, holder=first, taken_over=taken)


def release(cloud: Cloud, claim_id: str) -> None:
    try:
        cloud.delete_image(claim_id)
    except Exception as exc:  # noqa: BLE001 - a claim left behind expires; it must not hide the real outcome
        log.warning("could not remove claim %s (it expires by itself): %s", claim_id, exc)
