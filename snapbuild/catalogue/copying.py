"""Publishing an image to a receiving target: Glance's own copy, or a stream from one Glance to the other.

Where both targets share one multi-store Glance (the same image endpoint) and the receiving target names a
store, Glance copies the data itself (`copy-image` import): the image keeps its id and gains the store. Otherwise
the data is streamed: the source's `/file` is read chunk by chunk and sent on as the body of the new image's
`/file` (a generator: chunked transfer), hashed on the way with the source's own algorithm (`os_hash_algo`), so
nothing is ever held in memory or written to a temporary file. The copy is accepted only when the bytes read hash
to the source's `os_hash_value` and the receiving Glance computed the same; otherwise, and on any failure or
interrupt, the half-made copy is deleted. The record carries snapbuild's temporary marks until it is finished, so
`snapbuild cleanup` finds it even after a kill -9.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

from snapbuild.catalogue.model import COPIED_FROM_PROPERTY
from snapbuild.errors import CloudError
from snapbuild.ledger import installation_id
from snapbuild.openstack import faults, marks, properties
from snapbuild.openstack.cloud import RECORD_SETTLE_S, Cloud, ImageData
from snapbuild.run.context import create_once

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Copied:
    image_id: str
    method: str              # copy-image | stream
    bytes: int
    seconds: float
    sha256: str | None


class _Hashing:
    """Hashes what passes through, with the source's algorithm and sha256 (for the report)."""

    def __init__(self, algorithm: str | None) -> None:
        self.algorithm = algorithm if algorithm in hashlib.algorithms_available else None
        self.main = hashlib.new(self.algorithm) if self.algorithm else None
        self.sha256 = hashlib.sha256()
        self.size = 0

    def through(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self.main is not None:
                self.main.update(chunk)
            self.sha256.update(chunk)
            self.size += len(chunk)
            yield chunk


def glance_copy(cloud: Cloud, image: ImageData, store: str, timeout: float) -> Copied:
    """copy-image into `store` of the same Glance; the image keeps its id (nothing to delete on failure: a failed
    copy leaves the store out and says so in os_glance_failed_import)."""
    started = time.monotonic()
    if store in image.stores:
        return Copied(image_id=image.id, method="copy-image", bytes=0, seconds=0.0, sha256=None)
    cloud.copy_image_to_stores(image.id, [store])

    def arrived() -> bool:
        current = cloud.image_data(image.id)
        if current.failed_import:
            raise CloudError(f"copy-image of {image.id} to store {store} failed ({current.failed_import})")
        return store in current.stores

    deadline = time.monotonic() + timeout
    while not arrived():
        if time.monotonic() > deadline:
            raise CloudError(f"copy-image of {image.id} to store {store}: not there after {timeout:.0f} s")
        time.sleep(cloud.poll_interval)
    return Copied(image_id=image.id, method="copy-image", bytes=image.size or 0,
                  seconds=time.monotonic() - started, sha256=None)


def stream_copy(source: Cloud, image: ImageData, dest: Cloud, *, build_id: str, visibility: str,
                extra: Mapping[str, str] | None = None, timeout: float = 3600.0) -> Copied:
    """Create the image on `dest` with `image`'s name, properties, tags and minimums; stream the data; verify.
    While partial it carries the `snapbuild` tag and the temporary marks, as a build's image does: a crash leaves
    something `snapbuild cleanup` finds; the finish takes both off."""
    started = time.monotonic()
    if not image.hash_value and not image.checksum:
        raise CloudError(f"image {image.id} has no checksum to verify a copy against")
    stamp = marks.Marks.new(build_id=build_id, installation_id=installation_id(),
                            recipe=image.properties.get("snapbuild_recipe", "copy"), host=socket.gethostname(),
                            lifetime=timedelta(seconds=timeout * 2))
    wanted = {**image.properties, **dict(extra or {}), COPIED_FROM_PROPERTY: image.id}
    # A partial copy of this source on `dest` is this copy's (claims keep two applies from copying one digest to
    # one target at once): what an interrupted create still makes is swept until it settles.
    record = create_once(
        "image", f"copy of {image.id}",
        lambda: dest.create_image_record(name=image.name, disk_format=image.disk_format or "qcow2",
                                         container_format=image.container_format or "bare",
                                         properties={**wanted, **stamp.metadata(),
                                                     marks.PREFIX + "build_id": wanted.get(marks.PREFIX + "build_id",
                                                                                           build_id)},
                                         tags=sorted({*image.tags, marks.TAG}), min_disk=image.min_disk,
                                         min_ram=image.min_ram),
        lambda: [i.id for i in dest.images_with(**{COPIED_FROM_PROPERTY: image.id})
                 if marks.PREFIX + "expires_at" in i.properties],
        dest.delete_image, settle_s=RECORD_SETTLE_S, unsettled=faults.may_still_be_made)
    try:
        hashing = _Hashing(image.hash_algo)
        dest.upload_image_stream(record.id, hashing.through(source.download_image(image.id)), image.size)
        done = dest.wait_image_uploaded(record.id, timeout)
        _verify(image, done, hashing)
        dest.finish_image(record.id, properties=wanted, remove=properties.TEMPORARY_MARKS, visibility=visibility,
                          tags=list(image.tags))
    except BaseException as exc:
        log.warning("copy of %s to %s failed (%s): deleting the partial copy %s", image.id, dest.name, exc, record.id)
        try:
            dest.delete_image(record.id)
        except Exception as err:  # noqa: BLE001 - the copy's own error is the one to report
            log.error("could not delete partial copy %s: %s (snapbuild cleanup removes it)", record.id, err)
        raise
    return Copied(image_id=record.id, method="stream", bytes=hashing.size, seconds=time.monotonic() - started,
                  sha256=hashing.sha256.hexdigest())


def _verify(source: ImageData, copy: ImageData, hashing: _Hashing) -> None:
    if source.size is not None and hashing.size != source.size:
        raise CloudError(f"copy of {source.id}: read {hashing.size} bytes, the source has {source.size}")
    if hashing.main is not None and source.hash_value and hashing.main.hexdigest() != source.hash_value:
        raise CloudError(f"copy of {source.id}: the bytes read do not match the source's {hashing.algorithm} "
                         f"({hashing.main.hexdigest()[:16]}… ≠ {source.hash_value[:16]}…)")
    if source.hash_algo and copy.hash_algo == source.hash_algo and copy.hash_value != source.hash_value:
        raise CloudError(f"copy of {source.id}: the receiving Glance computed another {source.hash_algo} "
                         f"({(copy.hash_value or '')[:16]}… ≠ {(source.hash_value or '')[:16]}…)")
    if not source.hash_algo and source.checksum and copy.checksum and copy.checksum != source.checksum:
        raise CloudError(f"copy of {source.id}: md5 differs ({copy.checksum} ≠ {source.checksum})")
