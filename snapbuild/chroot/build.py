"""The chroot builder: a copy of the base image, attached and mounted on this host, provisioned in a chroot.

    snapbuild chroot RECIPE --base IMG -o OUT.qcow2 [--size 10G] [--attach auto|nbd|loop]
                            [--compression zstd|zlib|none] [--keep-on-failure]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapbuild import __version__
from snapbuild.chroot.workdir import make_workdir
from snapbuild.errors import BuildError, UserError
from snapbuild.guest.chroot import ChrootGuest
from snapbuild.host import attach as attaching
from snapbuild.host import baseprobe, commands, grow, mounts
from snapbuild.host.compact import COMPRESSIONS, Compacted, compact
from snapbuild.host.reachability import require_reachable, route_for
from snapbuild.ledger import Ledger, new_build_id
from snapbuild.run.context import BuildContext, Reporter, StepTiming, running_build
from snapbuild.run.scope import close, undo_scope

if TYPE_CHECKING:
    from snapbuild.provision import ProvisionResult

log = logging.getLogger(__name__)

HOST_TOOLS = ("qemu-img", "losetup", "partx", "blkid", "sgdisk", "growpart", "e2fsck", "resize2fs", "fstrim",
              "mount", "umount", "chroot")


@dataclass(frozen=True, kw_only=True)
class ChrootJob:
    """The checked inputs of one chroot build."""

    base: Path
    base_format: str
    base_size: int           # virtual size, bytes
    output: Path
    size: int                # virtual size of the result, bytes
    backend: str             # "nbd" or "loop"
    compression: str
    recipe: str


@dataclass(frozen=True, kw_only=True)
class ChrootResult:
    build_id: str
    output: Path
    manifest: Path
    backend: str
    compacted: Compacted
    timings: tuple[StepTiming, ...]


def build_chroot(*, plan: Any, base: Path, output: Path, size: str | None, attach: str = "auto",
                 compression: str = "zstd", keep_on_failure: bool = False, force: bool = False,
                 allow_blocked: bool = False, reporter: Reporter) -> ChrootResult:
    job = check_inputs(plan=plan, base=base, output=output, size=size, attach=attach, compression=compression,
                       force=force)
    # The chroot downloads over this host's network: a mirror it cannot reach fails here, not mid-provision.
    require_reachable(plan, route_for("chroot"), allow_blocked=allow_blocked)
    build_id = new_build_id()
    ctx = BuildContext(build_id=build_id, reporter=reporter, keep_on_failure=keep_on_failure,
                       ledger=Ledger.create(build_id=build_id, builder="chroot", recipe=job.recipe))
    with running_build(ctx):
        with ctx.step("inspect base image"):
            work_dir = make_workdir(ctx, job.output, build_id)
            root = find_root_partition(ctx, job, work_dir, plan)
        with ctx.step("copy base image"):
            work = copy_and_resize(job, work_dir)
        with undo_scope(ctx.ledger, keep_on_failure=keep_on_failure, reporter=reporter) as disk:
            with ctx.step(f"attach ({job.backend})"):
                attached = attaching.attach(disk, work, work_dir, backend=job.backend)
            with ctx.step("grow root file system"):
                grow.grow_root(attached, _partition(attached, root), commands.run)
            with ctx.step("mount"):
                guest = ChrootGuest(mounts.mount_chroot(disk, attached.partition(root.number), work_dir / "root"),
                                    ledger=ctx.ledger, name="chroot")
            with ctx.step("provision"):
                provisioned = provision_in(plan, guest, reporter)
            with ctx.step("seal"):
                seal_in(guest, reporter)
            with ctx.step("unmount and detach"):
                close(disk)
        capture_from = attached.data_path if attached.backend == "loop-raw" else work
        with ctx.step(f"compact ({job.compression})"):
            result = compact(capture_from, work_dir / "result.qcow2", job.compression,
                             src_format="raw" if attached.backend == "loop-raw" else "qcow2")
        with ctx.step("check image"):
            check_image(result.path)
        with ctx.step("write manifest"):
            manifest = finish(ctx, job, result, attached.backend, provisioned, plan=plan)
    return ChrootResult(build_id=build_id, output=job.output, manifest=manifest, backend=attached.backend,
                        compacted=Compacted(path=job.output, compression=result.compression,
                                            before_bytes=result.before_bytes, after_bytes=result.after_bytes,
                                            seconds=result.seconds),
                        timings=tuple(ctx.timings))


# ---- the steps ---------------------------------------------------------------------------------------------

def check_inputs(*, plan: Any, base: Path, output: Path, size: str | None, attach: str, compression: str,
                 force: bool) -> ChrootJob:
    """Everything that can be checked before a single thing is created."""
    if os.geteuid() != 0:
        raise UserError("the chroot builder needs root (loop devices, mounts, chroot)",
                        hint="run it with sudo, or use `snapbuild local`, which needs no root")
    if compression not in COMPRESSIONS:
        raise UserError(f"unknown compression {compression!r}", hint="use zstd, zlib or none")
    backend = attaching.resolve_backend(attach)
    commands.require_tools(*HOST_TOOLS, "qemu-nbd" if backend == "nbd" else "qemu-storage-daemon")
    base, output = base.absolute(), output.absolute()
    if not base.is_file():
        raise UserError(f"base image not found: {base}")
    if not output.parent.is_dir():
        raise UserError(f"output directory does not exist: {output.parent}")
    if output.exists() and not force:
        raise UserError(f"{output} exists", hint="pass --force to replace it")
    if output.resolve() == base.resolve():
        raise UserError("the output would overwrite the base image", hint="choose another -o")
    info = attaching.image_info(base)
    fmt = str(info.get("format", ""))
    if fmt not in ("qcow2", "raw") or info.get("encrypted"):
        raise UserError(f"{base}: {fmt or 'unknown'} image{' (encrypted)' if info.get('encrypted') else ''}",
                        hint="the base must be a qcow2 or raw disk image")
    check_layout(base, fmt)
    base_size = int(info["virtual-size"])
    wanted = grow.parse_size(size) if size else _plan_disk_size(plan)
    target = max(base_size, wanted or 0)
    if wanted and wanted < base_size:
        raise UserError(f"--size {size} is smaller than the base image ({base_size / 2**30:.1f} GiB)",
                        hint="the chroot builder grows images, it does not shrink them")
    free = shutil.disk_usage(output.parent).free
    if free < base_size:
        raise UserError(f"not enough space in {output.parent}: {free >> 20} MiB free, the working copy may need "
                        f"{base_size >> 20} MiB", hint="free some space or write the output elsewhere")
    return ChrootJob(base=base, base_format=fmt, base_size=base_size, output=output, size=target,
                     backend=backend, compression=compression, recipe=str(getattr(plan, "recipe_name", "?")))


def find_root_partition(ctx: BuildContext, job: ChrootJob, work_dir: Path, plan: Any = None) -> grow.Partition:
    """Look at the base through a read-only attach and mount: an LVM or odd layout, or a base of another distro
    than the recipe's, fails here, before any copy."""
    from snapbuild.sealing.offline import mount_root

    with undo_scope(ctx.ledger, reporter=ctx.reporter) as probe_scope:
        top, root = mount_root(probe_scope, job.base, work_dir, backend=job.backend, fmt=job.base_format,
                               choose=grow.choose_root, name="base-root")
        os_release = baseprobe.read_os_release(baseprobe.DirTree(top))
    found = baseprobe.describe_os(os_release) if os_release is not None else "no /etc/os-release"
    ctx.reporter.line(f"root: partition {root.number} ({root.fstype}, label {root.label or '-'}, "
                      f"{root.size / 2**30:.1f} GiB): {found}")
    distro = getattr(plan, "distro", None)
    if distro is not None:
        if os_release is None:
            raise UserError(f"base image {job.base} has no /etc/os-release: cannot tell its distro",
                            hint=f"pass a {distro.pretty} cloud image as --base")
        mismatch = baseprobe.distro_mismatch(os_release, distro, recipe=job.recipe,
                                             supported=baseprobe.recipe_distros(plan), image=job.base)
        if mismatch is not None:
            raise mismatch
    return root


def check_layout(base: Path, fmt: str) -> None:
    """A partition table and a root file system, read offline (no attach): garbage fails before anything exists."""
    try:
        with baseprobe.open_image(base, fmt) as reader:
            table, parts = baseprobe.read_layout(reader.read, reader.size, base)
    except baseprobe.Unreadable as exc:
        log.warning("could not read the layout of %s offline (%s); the read-only attach will", base, exc)
        return
    grow.choose_root([grow.Partition(number=p.number, device="", fstype=p.fstype, label=p.label, size=p.size)
                      for p in parts], base)
    log.info("base %s: %s table, partitions %s", base, table.kind.upper(),
             ", ".join(f"{p.number}={p.fstype or '?'}" for p in parts))


def copy_and_resize(job: ChrootJob, work_dir: Path) -> Path:
    work = work_dir / "work.qcow2"
    grow.copy_base(job.base, job.base_format, work)
    if job.size > job.base_size:
        grow.resize_image(work, job.size)
    return work


def _partition(attached: attaching.Attached, root: grow.Partition) -> grow.Partition:
    """The base's root partition, as it appears on the attached working copy."""
    return grow.Partition(number=root.number, device=attached.partition(root.number), fstype=root.fstype,
                          label=root.label, size=root.size)


def provision_in(plan: Any, guest: ChrootGuest, reporter: Reporter) -> ProvisionResult:
    from snapbuild.provision import provision

    return provision(plan, guest, reporter)


def seal_in(guest: ChrootGuest, reporter: Reporter) -> None:
    from snapbuild.sealing.policy import seal

    seal(guest, reporter=reporter)


def check_image(path: Path) -> None:
    from snapbuild.sealing.offline import inspect_image

    violations = inspect_image(path)
    if violations:
        raise BuildError("the image breaks the sealing policy:\n" + "\n".join(f"  - {v}" for v in violations))


def finish(ctx: BuildContext, job: ChrootJob, result: Compacted, backend: str, provisioned: ProvisionResult, *,
           plan: Any = None) -> Path:
    """Move the image into place and write its manifest beside it."""
    os.replace(result.path, job.output)
    manifest = job.output.with_name(job.output.name + ".manifest.json")
    base_sha256 = sha256(job.base)
    content = plan.content_digest(f"sha256:{base_sha256}") if plan is not None else None
    data: dict[str, Any] = {
        "build_id": ctx.build_id,
        "builder": "chroot",
        "snapbuild_version": __version__,
        "recipe": job.recipe,
        "variant": getattr(plan, "variant", None),
        "content_digest": content.value if content else None,
        "content_digest_inputs": content.as_dict() if content else None,
        "base": {"path": str(job.base), "format": job.base_format, "virtual_size": job.base_size,
                 "sha256": base_sha256},
        "output": {"path": str(job.output), "format": "qcow2", "virtual_size": job.size,
                   "bytes": job.output.stat().st_size, "sha256": sha256(job.output),
                   "compression": job.compression},
        "attach": backend,
        # What is inside, as the guest reported it: installed package versions and pre-pulled image digests.
        "packages": dict(provisioned.packages),
        "pulled_images": dict(provisioned.pulled_images),
        "qemu_img": commands.run(["qemu-img", "--version"]).stdout.splitlines()[0],
        "steps": [{"name": t.name, "seconds": round(t.seconds, 2), "ok": t.ok} for t in ctx.timings],
    }
    tmp = manifest.with_name(f".{manifest.name}.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, manifest)
    ctx.reporter.line(f"{job.output}: {data['output']['bytes'] >> 20} MiB ({job.compression})")
    return manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _plan_disk_size(plan: Any) -> int | None:
    gib = getattr(getattr(plan, "image", None), "disk_size_gb", None)
    return int(gib) << 30 if gib else None

