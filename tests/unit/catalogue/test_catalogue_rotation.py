"""The rotation policy: newest `keep` stay, older ones hidden then deleted after the grace period; never one in use,
never one snapbuild did not make."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from snapbuild.catalogue.model import DIGEST_PROPERTY, HIDDEN_AT_PROPERTY
from snapbuild.catalogue.rotation import decide
from snapbuild.openstack.cloud import ImageData

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PROJECT = "proj"


def image(n: int, *, digest: str = "old", hidden_days: float | None = None, owner: str = PROJECT,
          tags: tuple[str, ...] = (), marks: bool = True, protected: bool = False) -> ImageData:
    props = {DIGEST_PROPERTY: digest, "snapbuild_build_id": f"b{n}"} if marks else {}
    if hidden_days is not None:
        props[HIDDEN_AT_PROPERTY] = (NOW - timedelta(days=hidden_days)).isoformat()
    return ImageData(id=f"img-{n}", name="Ubuntu 24.04 - Docker CE", status="active", size=1, checksum="c",
                     hash_algo="sha512", hash_value="h", disk_format="qcow2", tags=tags, properties=props,
                     created_at=f"2026-11-{n:02d}T00:00:00Z", hidden=hidden_days is not None, owner=owner,
                     protected=protected)


def actions(images, *, keep=1, pending=False, used=None, digest="new"):
    decided = decide(images, project_id=PROJECT, digest=digest, pending=pending, keep=keep, grace_s=7 * 86400,
                     now=NOW, in_use=lambda i: (used or {}).get(i, []))
    return {d.image_id: (d.action, d.reason) for d in decided}


def test_keep_1_hides_every_older_image_and_keeps_the_current():
    got = actions([image(1), image(2), image(3, digest="new")])
    assert got["img-3"] == ("keep", "current")
    assert got["img-1"][0] == got["img-2"][0] == "hide"


def test_keep_2_keeps_the_newest_older_image_to_roll_back_to():
    got = actions([image(1), image(2), image(3, digest="new")], keep=2)
    assert got["img-2"] == ("keep", "within keep=2")
    assert got["img-1"][0] == "hide"


def test_a_pending_build_takes_a_slot():
    got = actions([image(1), image(2)], keep=2, pending=True)
    assert got["img-2"][0] == "keep" and got["img-1"][0] == "hide"


def test_hidden_past_the_grace_period_is_deleted():
    got = actions([image(1, hidden_days=8), image(2, digest="new")])
    assert got["img-1"][0] == "delete"


def test_hidden_too_recently_is_kept_with_the_time_left():
    action, reason = actions([image(1, hidden_days=2), image(2, digest="new")])["img-1"]
    assert action == "keep" and reason.startswith("too new") and "120.0 h left" in reason


def test_an_image_in_use_is_never_deleted():
    action, reason = actions([image(1, hidden_days=30), image(2, digest="new")], used={"img-1": ["web-1"]})["img-1"]
    assert (action, reason) == ("keep", "in use by 1 server(s): web-1")


def test_images_snapbuild_did_not_make_are_never_touched():
    got = actions([image(1, tags=("snapbuild",)), image(2, marks=False), image(3, owner="someone"),
                   image(4, digest="new")])
    assert got["img-1"][0] == "hide"        # a finished build has no tag (image() is one); the tag changes nothing
    assert got["img-2"] == ("untouched", "not ours: no snapbuild_content_digest property")
    assert got["img-3"] == ("untouched", "not ours: owned by project someone")


def test_protected_images_are_kept():
    assert actions([image(1, hidden_days=30, protected=True), image(2, digest="new")])["img-1"] == ("keep", "protected")


def test_servers_are_listed_only_when_something_would_be_deleted():
    asked = []
    decide([image(1), image(2, digest="new")], project_id=PROJECT, digest="new", pending=False, keep=1,
           grace_s=0, now=NOW, in_use=lambda i: asked.append(i) or [])
    assert asked == []
