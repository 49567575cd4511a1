"""The chroot builder: a copy of the base image, attached and mounted on this host, provisioned in a chroot.

    preflight ─► inspect base image ─► copy ─► attach ─► grow ─► mount ─► provision ─► seal ─► detach ─► compact
    ─► check image ─► manifest

    snapbuild chroot RECIPE --base IMG -o OUT.qcow2 [--size 10G] [--attach auto|nbd|loop]
                            [--compression zstd|zlib|none] [--keep-on-failure]
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from snapbuild.chroot.workdir import make_workdir
from snapbuild.digest import file_sha256
from snapbuild.errors import UserError
from snapbuild.guest.chroot import ChrootGuest
from snapbuild.host import attach as attaching
from snapbuild.host import baseprobe, commands, grow, mounts
from snapbuild.host.compact import COMPRESSIONS, Compacted, compact
from snapbuild.host.images import image_info
from snapbuild.host.reachability import require_reachable, route_for
from snapbuild.host.sizes import parse_size
from snapbuild.run.context import Asker, BuildContext, OnError, StepTiming, new_context, running_build
from snapbuild.run.manifest import build_manifest, manifest_path_for, write_manifest
from snapbuild.run.monitor import Monitor
from snapbuild.run.progress import progress
from snapbuild.run.scope import close, undo_scope
from snapbuild.run.tail import apply_plan

if TYPE_CHECKING:
    from snapbuild.plan import Plan
    from snapbuild.provision import ProvisionResult

log = logging.getLogger(__name__)

HOST_TOOLS = ("qemu-img", "losetup", "partx", "blkid", "sgdisk", "growpart", "e2fsck", "resize2fs", "fstrim",
              "mount", "umount", "chroot")


@dataclass(frozen=True, kw_only=True)
class ChrootSettings:
    """What `snapbuild chroot` is told."""

    base: Path
    output: Path
    size: str | None = None          # "10G"; default: the recipe's disk size (never smaller than the base)
    attach: str = "auto"             # auto | nbd | loop
    compression: str = "zstd"
    on_error: OnError = "cleanup"
    force: bool = False
    allow_blocked: bool = False
    log_path: Path | None = None


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


def build_chroot(plan: Plan, settings: ChrootSettings, monitor: Monitor, *,
                 ask: Asker | None = None) -> ChrootResult:
    ctx = new_context(builder="chroot", recipe=plan.recipe_name, monitor=monitor, on_error=settings.on_error,
                      ask=ask, log_path=settings.log_path,
                      cleanup_command="snapbuild cleanup --host --build-id {build_id}")
    with running_build(ctx, variant=plan.variant):
        with ctx.step("preflight"):
            job = check_inputs(plan, settings)
            # The chroot downloads over this host's network: a mirror it cannot reach fails here, not mid-provision.
            require_reachable(plan, route_for("chroot"), allow_blocked=settings.allow_blocked)
        with ctx.step("inspect base image"):
            work_dir = make_workdir(ctx, job.output, ctx.build_id)
            root = find_root_partition(ctx, job, work_dir, plan)
        with ctx.step("copy base image"):
            work = copy_and_resize(job, work_dir)
        with undo_scope(ctx.ledger, keep_on_failure=lambda: ctx.keep_on_failure, monitor=monitor) as disk:
            with ctx.step(f"attach ({job.backend})"):
                attached = attaching.attach(disk, work, work_dir, backend=job.backend)
            with ctx.step("grow root file system"):
                grow.grow_root(attached, _partition(attached, root), commands.run)
            with ctx.step("mount"):
                lent: list[Callable[[], None]] = []     # the build's resolv.conf and policy-rc.d
                guest = ChrootGuest(mounts.mount_chroot(disk, attached.partition(root.number), work_dir / "root",
                                                        build_files=lent), ledger=ctx.ledger, name="chroot")
            provisioned = apply_plan(ctx, plan, guest, before_seal=lambda: _give_back(lent))
            with ctx.step("unmount and detach"):
                close(disk)
        capture_from = attached.data_path if attached.backend == "loop-raw" else work
        with ctx.step(f"compact ({job.compression})"), progress(monitor, "compact", total=100, unit="%") as bar:
            result = compact(capture_from, work_dir / "result.qcow2", job.compression,
                             src_format="raw" if attached.backend == "loop-raw" else "qcow2", on_percent=bar.set)
        with ctx.step("check image"):
            from snapbuild.sealing.offline import require_clean_image

            require_clean_image(result.path)
        with ctx.step("manifest"):
            manifest = finish(ctx, job, result, attached.backend, provisioned, plan=plan)
        ctx.outcome.update(output=str(job.output), manifest=str(manifest))
    return ChrootResult(build_id=ctx.build_id, output=job.output, manifest=manifest, backend=attached.backend,
                        compacted=Compacted(path=job.output, compression=result.compression,
                                            before_bytes=result.before_bytes, after_bytes=result.after_bytes,
                                            seconds=result.seconds),
                        timings=tuple(ctx.timings))


# ---- the steps ---------------------------------------------------------------------------------------------

def check_inputs(plan: Plan, settings: ChrootSettings) -> ChrootJob:
    """Everything that can be checked before a single thing is created."""
    base, output, size, compression = settings.base, settings.output, settings.size, settings.compression
    if os.geteuid() != 0:
        raise UserError("the chroot builder needs root (loop devices, mounts, chroot)",
                        hint="run it with sudo, or use `snapbuild local`, which needs no root")
    if compression not in COMPRESSIONS:
        raise UserError(f"unknown compression {compression!r}", hint="use zstd, zlib or none")
    backend = attaching.resolve_backend(settings.attach)
    commands.require_tools(*HOST_TOOLS, "qemu-nbd" if backend == "nbd" else "qemu-storage-daemon")
    base, output = base.absolute(), output.absolute()
    if not base.is_file():
        raise UserError(f"base image not found: {base}")
    if not output.parent.is_dir():
        raise UserError(f"output directory does not exist: {output.parent}")
    if output.exists() and not settings.force:
        raise UserError(f"{output} exists", hint="pass --force to replace it")
    if output.resolve() == base.resolve():
        raise UserError("the output would overwrite the base image", hint="choose another -o")
    info = image_info(base)
    fmt = str(info.get("format", ""))
    if fmt not in ("qcow2", "raw") or info.get("encrypted"):
        raise UserError(f"{base}: {fmt or 'unknown'} image{' (encrypted)' if info.get('encrypted') else ''}",
                        hint="the base must be a qcow2 or raw disk image")
    check_layout(base, fmt)
    base_size = int(info["virtual-size"])
    wanted = parse_size(size) if size else plan.image.disk_size_gb << 30
    target = max(base_size, wanted or 0)
    if wanted and wanted < base_size:
        raise UserError(f"--size {size} is smaller than the base image ({base_size / 2**30:.1f} GiB)",
                        hint="the chroot builder grows images, it does not shrink them")
    free = shutil.disk_usage(output.parent).free
    if free < base_size:
        raise UserError(f"not enough space in {output.parent}: {free >> 20} MiB free, the working copy may need "
                        f"{base_size >> 20} MiB", hint="free some space or write the output elsewhere")
    return ChrootJob(base=base, base_format=fmt, base_size=base_size, output=output, size=target,
                     backend=backend, compression=compression, recipe=plan.recipe_name)


def find_root_partition(ctx: BuildContext, job: ChrootJob, work_dir: Path, plan: Plan) -> grow.Partition:
    """Look at the base through a read-only attach and mount: an LVM or odd layout, or a base of another distro
    than the recipe's, fails here, before any copy."""
    from snapbuild.sealing.offline import mount_root

    with undo_scope(ctx.ledger, monitor=ctx.monitor) as probe_scope:
        top, root = mount_root(probe_scope, job.base, work_dir, backend=job.backend, fmt=job.base_format,
                               choose=grow.choose_root, name="base-root")
        os_release = baseprobe.read_os_release(baseprobe.DirTree(top))
    found = baseprobe.describe_os(os_release) if os_release is not None else "no /etc/os-release"
    ctx.monitor.line(f"root: partition {root.number} ({root.fstype}, label {root.label or '-'}, "
                      f"{root.size / 2**30:.1f} GiB): {found}")
    if os_release is None:
        raise UserError(f"base image {job.base} has no /etc/os-release: cannot tell its distro",
                        hint=f"pass a {plan.distro.pretty} cloud image as --base")
    mismatch = baseprobe.distro_mismatch(os_release, plan.distro, recipe=job.recipe,
                                         supported=plan.recipe_distros, image=job.base)
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


def _give_back(lent: list[Callable[[], None]]) -> None:
    for give_back in lent:
        give_back()


def _partition(attached: attaching.Attached, root: grow.Partition) -> grow.Partition:
    """The base's root partition, as it appears on the attached working copy."""
    return grow.Partition(number=root.number, device=attached.partition(root.number), fstype=root.fstype,
                          label=root.label, size=root.size)


def finish(ctx: BuildContext, job: ChrootJob, result: Compacted, backend: str, provisioned: ProvisionResult, *,
           plan: Plan) -> Path:
    """Move the image into place and write its manifest beside it."""
    os.replace(result.path, job.output)
    base_sha256 = file_sha256(job.base)
    manifest = build_manifest(
        ctx, builder="chroot", plan=plan, base_checksum=f"sha256:{base_sha256}",
        base={"path": str(job.base), "format": job.base_format, "virtual_size": job.base_size,
              "sha256": base_sha256},
        output={"path": str(job.output), "format": "qcow2", "virtual_size": job.size,
                "size": job.output.stat().st_size, "sha256": file_sha256(job.output), "compression": job.compression},
        provisioned=provisioned, seal={"in_guest": "clean", "offline": "clean"},
        details={"attach": backend, "qemu_img": commands.run(["qemu-img", "--version"]).stdout.splitlines()[0]})
    path = manifest_path_for(job.output)
    write_manifest(path, manifest)
    ctx.monitor.line(f"{job.output}: {job.output.stat().st_size >> 20} MiB ({job.compression})")
    return path

