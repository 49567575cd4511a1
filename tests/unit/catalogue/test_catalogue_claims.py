"""Claims in Glance: of concurrent claimers exactly one wins, losers remove their claims, expired claims are taken
over; all through the HTTP fake (Glance's own created_at orders them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from snapbuild.catalogue import claims

NOW = datetime(2026, 11, 1, 0, 10, tzinfo=UTC)


def take(cloud, owner, *, sleep=lambda s: None, now=NOW):
    return claims.take(cloud, digest="d" * 64, target="one", owner=owner, ttl_s=3600, settle_s=2, now=lambda: now,
                       sleep=sleep)


def live_claims(regions):
    return [i for i in regions.glances["RegionOne"].images.values() if "snapbuild-claim" in i["tags"]]


def test_both_created_before_either_lists_exactly_one_wins(regions):
    a, b = regions.cloud("RegionOne"), regions.cloud("RegionOne")
    results = {}
    # A's settle: B creates its claim meanwhile, and (inside B's own settle) nothing else happens
    results["a"] = take(a, "apply-a", sleep=lambda s: results.setdefault("b", take(b, "apply-b")))
    assert results["a"].won and not results["b"].won
    assert results["b"].holder is not None and results["b"].holder.owner == "apply-a"
    assert [c["snapbuild_claim_owner"] for c in live_claims(regions)] == ["apply-a"]


def test_a_claim_made_after_the_winner_listed_loses(regions):
    a, b = regions.cloud("RegionOne"), regions.cloud("RegionOne")
    first = take(a, "apply-a")
    second = take(b, "apply-b")
    assert first.won and not second.won
    claims.release(a, first.mine.id)
    assert live_claims(regions) == []
    assert take(b, "apply-b").won          # released: the next one gets it


def test_same_second_claims_are_decided_by_id_alike_for_both(regions):
    a, b = regions.cloud("RegionOne"), regions.cloud("RegionOne")
    regions.tick = lambda: "2026-11-01T00:00:05Z"          # both in the same second
    results = {}
    results["a"] = take(a, "apply-a", sleep=lambda s: results.setdefault("b", take(b, "apply-b")))
    assert results["a"].won != results["b"].won


def test_an_expired_claim_is_taken_over_and_removed(regions):
    old = regions.cloud("RegionOne")
    stale = claims.take(old, digest="d" * 64, target="one", owner="crashed", ttl_s=60, settle_s=0,
                        now=lambda: NOW - timedelta(hours=2), sleep=lambda s: None)
    assert stale.won
    outcome = take(regions.cloud("RegionOne"), "apply-b")
    assert outcome.won and outcome.taken_over == (stale.mine.id,)
    assert [c["snapbuild_claim_owner"] for c in live_claims(regions)] == ["apply-b"]


def test_a_claim_carries_snapbuilds_marks_so_cleanup_finds_it(regions):
    take(regions.cloud("RegionOne"), "apply-a")
    (claim,) = live_claims(regions)
    assert claim["status"] == "queued" and "snapbuild" in claim["tags"]
    assert claim["snapbuild_expires_at"] == claim["snapbuild_claim_expires_at"] == "2026-11-01T01:10:00+00:00"


def late_landing(monkeypatch, create):
    """`create` interrupted in flight, its record made by Glance only after the client's first look (as a CI run
    left a claim): returns the interrupted stand-in and the list the late record lands in."""
    clock, asked, landed = [0.0], [], []
    monkeypatch.setattr("snapbuild.run.context.time.monotonic", lambda: clock[0])

    def sleep(seconds):
        clock[0] += seconds
        if asked and not landed:
            landed.append(create(**asked[0]))

    monkeypatch.setattr("snapbuild.run.context.time.sleep", sleep)

    def interrupted(**kwargs):
        asked.append(kwargs)
        raise KeyboardInterrupt

    return interrupted, landed


def test_a_claim_whose_create_was_interrupted_is_swept_when_glance_makes_it_late(regions, monkeypatch):
    cloud = regions.cloud("RegionOne")
    cloud.create_image_record, landed = late_landing(monkeypatch, cloud.create_image_record)
    with pytest.raises(KeyboardInterrupt):
        take(cloud, "apply-a")
    assert len(landed) == 1                     # it was made, after the first look
    assert live_claims(regions) == []           # and deleted: the next apply is not held back until it expires
