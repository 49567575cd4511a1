"""`snapbuild upload FILE`: stream a qcow2/raw file into Glance with the recipe's properties, verified.

    detect format ─► already there? ─► create record (marked, ledgered, undo) ─► stream + hash ─► wait active
                   ─► compare digests ─► finish (properties, provenance, drop the temporary marks and tag)

The file is read once, in the chunks the HTTP layer asks for, and md5, sha256 and sha512 are computed from
those same chunks: memory stays flat whatever the size. A failed or interrupted upload deletes its partial
image; a transient failure (5xx, dropped connection) starts afresh with a new record and a new stream,
because a consumed stream cannot be re-sent (openstacksdk's own re-sends are off, see Cloud.connect).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from snapbuild.errors import BuildError, CloudError, UserError
from snapbuild.host import commands
from snapbuild.host.images import image_info
from snapbuild.ledger import installation_id, new_build_id, now_iso
from snapbuild.openstack import faults, marks, properties
from snapbuild.openstack.cloud import RECORD_SETTLE_S, Cloud, ImageData
from snapbuild.run.context import BuildContext, Reporter, Undo, new_context, running_build
from snapbuild.run.progress import progress

log = logging.getLogger(__name__)

FORMATS = ("qcow2", "raw")
MARK_LIFETIME = timedelta(hours=12)    # cleanup never takes a live upload on this host (ledger pid) anyway
DIGESTS = ("md5", "sha256", "sha512")


@dataclass(frozen=True, kw_only=True)
class UploadSettings:
    file: Path
    name: str
    cloud: str | None = None
    region: str | None = None
    auth_args: tuple[str, ...] = field(default=(), repr=False)   # the openstack CLI's auth options (secrets too)
    recipe: str = ""                                   # recipe name, when the properties come from one
    recipe_properties: Mapping[str, str] = field(default_factory=dict)
    min_disk_gb: int = 0
    min_ram_mb: int = 0
    properties: Mapping[str, str] = field(default_factory=dict)   # --property, wins over the recipe's
    tags: tuple[str, ...] = ()
    visibility: str = "private"
    protected: bool = False                            # set by the finishing patch, after the data is verified
    hidden: bool = False                               # os_hidden
    use_import: bool = False                           # interoperable import (glance-direct: stage, import)
    timeout_active: float = 1800.0
    attempts: int = 3                                  # fresh starts after a transient failure
    progress_tty: bool | None = None                   # None: ask the stream


@dataclass(frozen=True, kw_only=True)
class UploadResult:
    image_id: str
    name: str
    already: bool
    disk_format: str
    size: int
    sha256: str
    sha512: str
    seconds: float
    properties: Mapping[str, str]

    def to_json(self) -> str:
        return json.dumps({"image_id": self.image_id, "name": self.name, "already_uploaded": self.already,
                           "disk_format": self.disk_format, "size": self.size, "sha256": self.sha256,
                           "sha512": self.sha512, "seconds": round(self.seconds, 1),
                           "properties": dict(self.properties)}, indent=2, sort_keys=True)


# ---- the file --------------------------------------------------------------------------------------------

def detect_format(path: Path) -> str:
    """qcow2 or raw, as qemu-img sees it; anything else (or a qcow2 with a backing file) is refused."""
    info = image_info(path, force_share=False)   # a disk a VM still writes is not uploaded
    fmt = str(info.get("format", ""))
    if fmt not in FORMATS:
        raise UserError(f"{path}: disk format {fmt or 'unknown'!r} is not uploadable",
                        hint="convert it: qemu-img convert -O qcow2 IN OUT")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UserError(f"{path}: has a backing file ({info.get('backing-filename')}); Glance needs a standalone image",
                        hint="flatten it: qemu-img convert -O qcow2 IN OUT")
    if fmt == "qcow2":
        done = commands.run(["qemu-img", "check", "--output=json", str(path)], check=False, timeout=600)
        try:
            report = json.loads(done.stdout or "{}")
        except ValueError:
            report = {}
        if done.returncode not in (0, 3) or report.get("corruptions"):   # 3: leaked clusters only, harmless
            raise UserError(f"{path}: qemu-img check finds the qcow2 damaged "
                            f"({report.get('corruptions', '?')} corruptions)", hint="rebuild or repair the image")
    return fmt


def find_manifest(path: Path) -> dict[str, Any] | None:
    """The build's manifest beside the file: `FILE.manifest.json`, else a `manifest.json` describing FILE."""
    for candidate, must_match in ((path.with_name(path.name + ".manifest.json"), False),
                                  (path.with_name("manifest.json"), True)):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        output: dict[str, Any] = data["output"] if isinstance(data.get("output"), dict) else {}
        named = Path(str(output.get("path") or "")).name
        if must_match and named and named != path.name:
            log.info("%s describes %s, not %s: ignored", candidate, named, path.name)
            continue
        log.info("provenance from %s", candidate)
        return data
    return None


def provenance_from(manifest: Mapping[str, Any] | None, *, sha256: str, upload_id: str,
                    recipe: str) -> dict[str, str]:
    """Provenance properties; a manifest whose sha256 does not match the file says nothing about it."""
    props = {"snapbuild_version": _version(), "snapbuild_upload_id": upload_id, "snapbuild_source_sha256": sha256,
             "snapbuild_uploaded_at": now_iso()}
    if recipe:
        props["snapbuild_recipe"] = recipe
    if not manifest:
        return props
    output: Mapping[str, Any] = manifest["output"] if isinstance(manifest.get("output"), dict) else {}
    recorded = str(output.get("sha256") or "")
    if recorded and recorded != sha256:
        log.warning("the manifest's sha256 (%s) is not the file's (%s): its provenance is not used",
                    recorded[:16], sha256[:16])
        return props
    recipe_part: Mapping[str, Any] = manifest["recipe"] if isinstance(manifest.get("recipe"), dict) else {}
    digest_part: Mapping[str, Any] = (manifest["content_digest"] if isinstance(manifest.get("content_digest"), dict)
                                      else {})
    found = {"snapbuild_build_id": manifest.get("build_id"), "snapbuild_builder": manifest.get("builder"),
             "snapbuild_recipe": recipe_part.get("name"), "snapbuild_distro": recipe_part.get("distro"),
             "snapbuild_variant": recipe_part.get("variant"), "snapbuild_content_digest": digest_part.get("value"),
             "snapbuild_built_with": manifest.get("snapbuild_version")}
    props.update({prop: str(value)[:255] for prop, value in found.items() if value})
    return props


def _version() -> str:
    import snapbuild

    return snapbuild.__version__


class HashingReader:
    """What requests streams from: `read(n)` and `__len__` (so Content-Length is exact), hashing as it goes.

    Deliberately not an io.RawIOBase: requests would then probe it with seek/tell and iterate lines.
    """

    def __init__(self, path: Path, on_progress: Callable[[int], None] | None = None) -> None:
        self._file: BinaryIO = path.open("rb")
        self._size = path.stat().st_size
        self._hashes = {name: hashlib.new(name, usedforsecurity=False) for name in DIGESTS}
        self._on_progress = on_progress
        self.sent = 0

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        chunk = self._file.read(n if n and n > 0 else 1 << 20)
        if chunk:
            for h in self._hashes.values():
                h.update(chunk)
            self.sent += len(chunk)
            if self._on_progress is not None:
                self._on_progress(self.sent)
        return chunk

    def digest(self, name: str) -> str:
        if self.sent != self._size:
            raise BuildError(f"the file changed while it was read ({self.sent} of {self._size} bytes sent)")
        return self._hashes[name].hexdigest()

    def close(self) -> None:
        self._file.close()


def hash_file(path: Path, on_progress: Callable[[int], None] | None = None) -> dict[str, str]:
    reader = HashingReader(path, on_progress)
    try:
        while reader.read(1 << 20):
            pass
        return {name: reader.digest(name) for name in DIGESTS}
    finally:
        reader.close()


# ---- the cloud side ----------------------------------------------------------------------------------------

def warn_if_backend_wants_raw(cloud: Cloud, disk_format: str, reporter: Reporter) -> None:
    """Ceph (rbd) stores clone raw images copy-on-write; a qcow2 there is converted on every boot."""
    if disk_format != "qcow2":
        return
    kinds = [k.lower() for k in cloud.image_store_types()]
    if any("rbd" in k or "ceph" in k for k in kinds):
        reporter.line("warning: this Glance stores images in Ceph (rbd), which wants raw images: "
                      "convert first (qemu-img convert -O raw) for copy-on-write boots")


def already_uploaded(cloud: Cloud, settings: UploadSettings, size: int, reporter: Reporter,
                     tty: bool | None) -> tuple[ImageData, dict[str, str]] | None:
    """An active image of this name with this very content. Hashes the file first only when one could match."""
    candidates = [i for i in cloud.images_data_named(settings.name)
                  if i.status == "active" and i.size == size and i.hash_algo in ("sha256", "sha512")]
    if not candidates:
        return None
    reporter.line(f"an image named {settings.name!r} of the same size exists: comparing digests")
    with progress(reporter, "hashing", total=size, tty=tty) as bar:
        digests = hash_file(settings.file, bar.set)
    for image in candidates:
        if image.hash_algo and image.hash_value == digests[image.hash_algo]:
            return image, digests
    return None


@dataclass
class _Partial:
    undo: Undo | None = None     # the attempt's image: undone if the attempt fails, released when finished


def upload_image(settings: UploadSettings, reporter: Reporter, *, cloud: Cloud | None = None) -> UploadResult:
    started = time.monotonic()
    path = settings.file
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if settings.visibility not in ("private", "shared", "community", "public"):
        raise UserError(f"unknown visibility {settings.visibility!r}", hint="private, shared, community or public")
    disk_format = detect_format(path)
    size = path.stat().st_size
    manifest = find_manifest(path)
    if cloud is None:
        cloud = Cloud.connect(settings.cloud, settings.region, auth_args=settings.auth_args)
    warn_if_backend_wants_raw(cloud, disk_format, reporter)
    if settings.use_import and "glance-direct" not in cloud.import_methods():
        raise UserError("this Glance does not offer the glance-direct import method",
                        hint="upload without --import")
    found = already_uploaded(cloud, settings, size, reporter, settings.progress_tty)
    if found:
        image, digests = found
        reporter.line(f"already uploaded: {image.id}")
        return UploadResult(image_id=image.id, name=image.name, already=True, disk_format=disk_format, size=size,
                            sha256=digests["sha256"], sha512=digests["sha512"],
                            seconds=time.monotonic() - started, properties=dict(image.properties))

    build_id = new_build_id()
    recipe = settings.recipe or str(((manifest or {}).get("recipe") or {}).get("name") or "")
    where = f" --os-cloud {settings.cloud}" if settings.cloud else ""
    ctx = new_context(builder="upload", recipe=recipe or "-", monitor=reporter, build_id=build_id,
                      cleanup_command=f"snapbuild{where} cleanup --build-id {{build_id}}")
    upload_marks = marks.Marks.new(build_id=build_id, installation_id=installation_id(), recipe=recipe or "-",
                                   host=socket.gethostname(), lifetime=MARK_LIFETIME)
    with running_build(ctx):
        for attempt in range(1, max(settings.attempts, 1) + 1):
            partial = _Partial()
            try:
                with ctx.step(f"upload {path.name}" + (f" (attempt {attempt})" if attempt > 1 else "")):
                    image, digests = _one_attempt(ctx, cloud, settings, disk_format, size, upload_marks, partial)
                break
            except CloudError as exc:
                if attempt >= settings.attempts or not _transient(exc):
                    raise
                reporter.line(f"transient failure ({exc}); starting afresh")
                _drop(ctx, cloud, partial)
        with ctx.step("finish image"):
            props = _finish(cloud, settings, image, digests, manifest, build_id, recipe)
            assert partial.undo is not None
            partial.undo.release()
    reporter.line(f"image {image.id} ({settings.name})")
    return UploadResult(image_id=image.id, name=settings.name, already=False, disk_format=disk_format, size=size,
                        sha256=digests["sha256"], sha512=digests["sha512"], seconds=time.monotonic() - started,
                        properties=props)


def _transient(exc: CloudError) -> bool:
    return exc.__cause__ is not None and faults.is_transient(exc.__cause__)


def _drop(ctx: BuildContext, cloud: Cloud, partial: _Partial) -> None:
    """Delete a failed attempt's image now (its undo stays registered and is then a no-op)."""
    if partial.undo is not None:
        partial.undo.now()


def _one_attempt(ctx: BuildContext, cloud: Cloud, settings: UploadSettings, disk_format: str, size: int,
                 upload_marks: marks.Marks, partial: _Partial) -> tuple[ImageData, dict[str, str]]:
    name = settings.name
    props = {**{k: str(v) for k, v in settings.recipe_properties.items()},
             **{k: str(v) for k, v in settings.properties.items()}, **upload_marks.metadata()}
    record, partial.undo = ctx.track(
        "image", name,
        lambda: cloud.create_image_record(name=name, disk_format=disk_format, properties=props, tags=[marks.TAG],
                                          min_disk=settings.min_disk_gb, min_ram=settings.min_ram_mb),
        lambda: _half_made(cloud, name, upload_marks.build_id), cloud.delete_image,
        description=f"partial image of {name}", settle_s=RECORD_SETTLE_S, unsettled=faults.may_still_be_made)
    ctx.monitor.line(f"image {record.id} ({disk_format}, {size / 1e6:,.1f} MB)")

    with progress(ctx.monitor, "import staging" if settings.use_import else "upload", total=size,
                  tty=settings.progress_tty) as bar:
        reader = HashingReader(settings.file, bar.set)
        try:
            cloud.put_image_data(record.id, reader, size, stage=settings.use_import)
            digests = {n: reader.digest(n) for n in DIGESTS}
        finally:
            reader.close()
    if settings.use_import:
        cloud.import_image(record.id, "glance-direct")
        with progress(ctx.monitor, "import", unit="", tty=settings.progress_tty) as wait:   # Glance converts, copies
            image = cloud.wait_image_uploaded(record.id, settings.timeout_active,
                                              on_poll=lambda i: wait.status(i.status))
    else:
        image = cloud.wait_image_uploaded(record.id, settings.timeout_active)
    verify(image, digests, size)
    ctx.monitor.line(f"active, {image.hash_algo} verified")
    return image, digests


def _half_made(cloud: Cloud, name: str, build_id: str) -> list[str]:
    """A create that failed mid-air may have made the record: only ours (this build id) counts."""
    return [image.id for image in cloud.images_data_named(name)
            if image.properties.get(marks.PREFIX + "build_id") == build_id]


def verify(image: ImageData, digests: Mapping[str, str], size: int) -> None:
    """Glance's digest of what it stored must be ours of what we sent."""
    problems = []
    if image.size != size:
        problems.append(f"size {image.size} != {size}")
    algo = image.hash_algo or ""
    if algo in digests:
        if image.hash_value != digests[algo]:
            problems.append(f"{algo} {str(image.hash_value)[:16]}… != {digests[algo][:16]}…")
    elif image.hash_algo:
        log.warning("Glance hashes with %s, which snapbuild does not compute: checked md5 and size only",
                    image.hash_algo)
    if image.checksum and image.checksum != digests["md5"]:
        problems.append(f"md5 {image.checksum} != {digests['md5']}")
    if problems:
        raise BuildError(f"image {image.id}: Glance stored something else than was sent: " + "; ".join(problems),
                         hint="the partial image was deleted; upload again (check the network path for proxies)")


def _finish(cloud: Cloud, settings: UploadSettings, image: ImageData, digests: Mapping[str, str],
            manifest: Mapping[str, Any] | None, build_id: str, recipe: str) -> dict[str, str]:
    """Provenance in, temporary marks and the `snapbuild` tag out (the same finish a snapshot build gets)."""
    provenance = provenance_from(manifest, sha256=digests["sha256"], upload_id=build_id, recipe=recipe)
    provenance.setdefault("snapbuild_build_id", build_id)
    wanted = properties.final_properties(recipe=settings.recipe_properties, user=settings.properties,
                                         provenance_props=provenance)
    temporary = (*properties.TEMPORARY_MARKS, marks.PREFIX + "recipe")   # "-" while uploading without a recipe
    remove = [k for k in temporary if k not in wanted]
    cloud.finish_image(image.id, properties=wanted, remove=remove, tags=list(settings.tags),
                       visibility=settings.visibility, protected=settings.protected, hidden=settings.hidden)
    return dict(cloud.image_data(image.id).properties)
