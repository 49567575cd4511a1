"""Publishing between Glances: streamed (chunked, hashed on the way, verified) or Glance's own copy-image; a failed
copy is deleted, never left half-made."""

from __future__ import annotations

import pytest

from snapbuild.catalogue.copying import glance_copy, stream_copy
from snapbuild.errors import CloudError

PROPS = {"snapbuild_content_digest": "d" * 64, "snapbuild_build_id": "b1", "snapbuild_catalogue_entry": "docker-ce",
         "docker_version": "29.2.1"}


def source_image(regions, data=b"x" * 300_000, tags=("published",)):
    image = regions.add_image("RegionOne", "Ubuntu 24.04 - Docker CE", data=data, tags=list(tags), **PROPS,
                              min_disk=8, min_ram=1024)
    return regions.cloud("RegionOne").image_data(image["id"])


def test_streamed_copy_has_the_same_bytes_properties_and_no_temporary_marks(regions):
    image = source_image(regions)
    copied = stream_copy(regions.cloud("RegionOne"), image, regions.cloud("RegionTwo"), build_id="apply1",
                         visibility="public")
    (made,) = regions.active("RegionTwo")
    assert made["id"] == copied.image_id and copied.method == "stream" and copied.bytes == 300_000
    assert regions.glances["RegionTwo"].data[made["id"]] == regions.glances["RegionOne"].data[image.id]
    assert made["os_hash_value"] == image.hash_value
    assert {k: made[k] for k in PROPS} == PROPS
    assert made["snapbuild_copied_from"] == image.id and made["visibility"] == "public"
    assert (made["min_disk"], made["min_ram"], made["tags"]) == (8, 1024, ["published"])   # the in-progress tag went
    assert not any(k in made for k in ("snapbuild_expires_at", "snapbuild_installation_id", "snapbuild_host"))


def test_a_partial_copy_carries_the_marks_cleanup_looks_for(regions):
    image = source_image(regions)
    stream_copy(regions.cloud("RegionOne"), image, regions.cloud("RegionTwo"), build_id="apply1",
                visibility="private")
    (create,) = [r for r in regions.m.request_history if r.method == "POST" and r.path.endswith("/v2/images")
                 and r.netloc.endswith(":9293")] or [None]
    body = create.json() if create is not None else None
    assert body is not None, [f"{r.method} {r.netloc}{r.path}" for r in regions.m.request_history]
    assert sorted(body["tags"]) == ["published", "snapbuild"]
    assert body["snapbuild_expires_at"] and body["snapbuild_installation_id"]


def test_streamed_copy_sends_the_data_as_a_chunked_stream(regions):
    image = source_image(regions)
    stream_copy(regions.cloud("RegionOne"), image, regions.cloud("RegionTwo"), build_id="a", visibility="private")
    (put,) = [r for r in regions.m.request_history if r.method == "PUT" and r.path.endswith("/file")]
    assert put.headers.get("Transfer-Encoding") == "chunked"       # a generator, not a buffered body
    (get,) = [r for r in regions.m.request_history if r.method == "GET" and r.path.endswith("/file")]
    assert get.netloc == "127.0.0.1:9292" and put.netloc == "127.0.0.1:9293"


def test_a_copy_whose_digest_differs_is_deleted(regions):
    image = source_image(regions)
    regions.glances["RegionTwo"].corrupt_next_upload = True
    with pytest.raises(CloudError, match="receiving Glance computed another sha512"):
        stream_copy(regions.cloud("RegionOne"), image, regions.cloud("RegionTwo"), build_id="a", visibility="private")
    assert regions.glances["RegionTwo"].images == {}
    assert regions.count("DELETE", r"127.0.0.1:9293/v2/images/") == 1


def test_a_failed_upload_is_deleted(regions):
    image = source_image(regions)
    regions.glances["RegionTwo"].fail_next_upload = True
    with pytest.raises(CloudError):
        stream_copy(regions.cloud("RegionOne"), image, regions.cloud("RegionTwo"), build_id="a", visibility="private")
    assert regions.glances["RegionTwo"].images == {}


def test_an_interrupted_copy_is_deleted(regions):
    image = source_image(regions)
    source = regions.cloud("RegionOne")

    def interrupted(image_id, chunk_size=1 << 20):
        yield b"first chunk"
        raise KeyboardInterrupt

    source.download_image = interrupted        # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        stream_copy(source, image, regions.cloud("RegionTwo"), build_id="a", visibility="private")
    assert regions.glances["RegionTwo"].images == {}


def test_a_source_whose_bytes_do_not_match_its_own_hash_is_refused(regions):
    image = source_image(regions)
    regions.glances["RegionOne"].data[image.id] = b"y" * 300_000      # the store returns other bytes
    with pytest.raises(CloudError, match="bytes read do not match the source's sha512"):
        stream_copy(regions.cloud("RegionOne"), image, regions.cloud("RegionTwo"), build_id="a", visibility="private")
    assert regions.glances["RegionTwo"].images == {}


def test_glance_copy_image_adds_the_store_and_keeps_the_id(shared):
    image = source_image(shared)
    cloud = shared.cloud("RegionTwo")
    copied = glance_copy(cloud, image, "ceph-two", timeout=60)
    assert copied.image_id == image.id and copied.method == "copy-image"
    assert shared.glances["RegionOne"].images[image.id]["stores"] == "ceph-one,ceph-two"
    import_call = next(r for r in shared.m.request_history if r.path.endswith("/import"))
    assert import_call.json()["method"] == {"name": "copy-image"} and import_call.json()["stores"] == ["ceph-two"]
    assert shared.count("PUT", "/file") == 0


def test_a_copy_whose_record_create_was_interrupted_is_swept_when_glance_makes_it_late(regions, monkeypatch):
    from test_catalogue_claims import late_landing

    image = source_image(regions)
    dest = regions.cloud("RegionTwo")
    dest.create_image_record, landed = late_landing(monkeypatch, dest.create_image_record)
    with pytest.raises(KeyboardInterrupt):
        stream_copy(regions.cloud("RegionOne"), image, dest, build_id="a", visibility="private")
    assert len(landed) == 1 and regions.glances["RegionTwo"].images == {}
