"""`snapbuild local`: build an image in a throw-away QEMU VM on this host and capture it as a compressed qcow2.

The base image is never modified: it is copied to a standalone work image in the build's 0700 temp dir, which
is booted with a cloud-init seed, provisioned and sealed over SSH, powered off and compacted to the output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import snapbuild
from snapbuild.errors import BuildError, CommandFailed, UserError
from snapbuild.host.commands import require_tools, run
from snapbuild.local import qemu
from snapbuild.local.seed import SeedKind, SeedSpec, write_seed
from snapbuild.run.context import BuildContext, Reporter, running_build

if TYPE_CHECKING:
    from snapbuild.guest.ssh import SSHGuest
    from snapbuild.plan import Plan
    from snapbuild.sshkeys import KeyPair

log = logging.getLogger(__name__)

Compression = Literal["zstd", "zlib", "none"]
GIB = 1024 ** 3
BUILDER_USER = "snapbuild"


@dataclass(frozen=True, kw_only=True)
class LocalSettings:
    base: Path
    output: Path
    compression: Compression = "zstd"
    memory_mb: int = 2048
    cpus: int = 2
    seed: SeedKind = "nocloud"
    firmware: qemu.Firmware = "bios"
    force: bool = False
    # nat: outbound access as a cloud server has; isolated: restrict=on, only the profile's forwards.
    network: qemu.Network = "nat"
    allow_blocked: bool = False          # --allow-blocked: hosts the profile blocks are checked like any other
    boot_timeout_s: float = 900.0        # launch → SSH accepts the builder key (TCG is slow)
    cloud_init_timeout_s: float = 900.0
    poweroff_timeout_s: float = 300.0
    work_root: Path | None = None        # where the temp dir goes; default: the system temp dir


@dataclass(frozen=True, kw_only=True)
class LocalResult:
    output: Path
    manifest: Path
    sha256: str
    size_bytes: int
    virtual_size_bytes: int
    timings: dict[str, float]
    accel: str


@dataclass
class _Run:
    """What the steps hand each other inside one build."""

    settings: LocalSettings
    plan: Plan
    tempdir: Path = Path()
    work_image: Path = Path()
    base_info: dict[str, Any] = field(default_factory=dict)
    builder_key: KeyPair | None = None
    host_key: KeyPair | None = None
    seed_path: Path = Path()
    vm: qemu.VM | None = None
    guest: SSHGuest | None = None
    provision_result: Any = None
    guest_os: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    partial: Path = Path()
    inspected: str = "not run"


# ---------------------------------------------------------------- the build, as a table of contents

def build_local(ctx: BuildContext, plan: Plan, settings: LocalSettings) -> LocalResult:
    """Run every step of a local build; the caller owns `running_build(ctx)` (undo on failure)."""
    state = _Run(settings=settings, plan=plan)
    started = time.monotonic()
    with ctx.step("preflight"):
        preflight(state)
    with ctx.step("prepare work image"):
        make_tempdir(ctx, state)
        copy_base(state)
    with ctx.step("boot builder"):
        make_seed(ctx, state)
        boot(ctx, state)
    with ctx.step("connect"):
        connect(ctx, state)
        check_distro(state)
        wait_cloud_init(state)
    with ctx.step("provision"):
        provision(ctx, state)
    with ctx.step("seal"):
        seal(ctx, state)
    with ctx.step("power off"):
        power_off(ctx, state)
    with ctx.step("compact"):
        compact(ctx, state)
    with ctx.step("inspect"):
        inspect(state)
    with ctx.step("manifest"):
        return publish(ctx, state, total_s=time.monotonic() - started)


def run_local(plan: Plan, settings: LocalSettings, *, reporter: Reporter | None = None,
              keep_on_failure: bool = False, log_path: Path | None = None) -> LocalResult:
    """The whole `snapbuild local` command: a ledger, a context, every undo on failure or interrupt."""
    from snapbuild.ledger import Ledger, new_build_id

    build_id = new_build_id()
    ledger = Ledger.create(build_id=build_id, builder="local", recipe=plan.recipe_name)
    ctx = BuildContext(build_id=build_id, ledger=ledger, reporter=reporter or Reporter(), log_path=log_path,
                       keep_on_failure=keep_on_failure)
    try:
        with running_build(ctx):
            return build_local(ctx, plan, settings)
    except BaseException:
        if keep_on_failure:
            ctx.reporter.line(f"kept for debugging (ledger {ledger.path}): " + "; ".join(ctx.kept_descriptions))
            ctx.reporter.line("remove them with: snapbuild cleanup --host")
        raise


# ---------------------------------------------------------------- steps

def preflight(state: _Run) -> None:
    s = state.settings
    tools = ["qemu-system-x86_64", "qemu-img", "xorriso"]
    if state.plan.mirror_forwards:
        tools.append("socat")
    require_tools(*tools, hint="apt-get install qemu-system-x86 qemu-utils xorriso socat")
    if not s.base.is_file():
        raise UserError(f"base image not found: {s.base}", hint="pass --base PATH to a qcow2 or raw cloud image")
    state.base_info = image_info(s.base)
    if state.base_info.get("format") not in ("qcow2", "raw"):
        raise UserError(f"{s.base} is not a disk image qemu-img understands as qcow2 or raw "
                        f"(format {state.base_info.get('format')!r})", hint="pass a cloud image (.qcow2 or .img)")
    if state.base_info["format"] == "raw" and not _has_boot_signature(s.base):
        # qemu-img calls any file "raw": a disk image has an MBR (or GPT's protective MBR) signature.
        raise UserError(f"{s.base} is not a disk image (no partition table)",
                        hint="pass a cloud image (.qcow2 or .img)")
    want = int(state.plan.image.disk_size_gb) * GIB
    if int(state.base_info["virtual-size"]) > want:
        raise UserError(f"base image is {int(state.base_info['virtual-size']) / GIB:.1f} GiB, larger than the "
                        f"recipe's disk size {state.plan.image.disk_size_gb} GiB",
                        hint="raise image.disk_size_gb in the recipe or use a smaller base")
    if s.output.exists() and not s.force:
        raise UserError(f"output exists: {s.output}", hint="pass --force to overwrite it, or choose another -o")
    if not s.output.parent.is_dir():
        raise UserError(f"output directory does not exist: {s.output.parent}")
    if not os.access(s.output.parent, os.W_OK):
        raise UserError(f"output directory is not writable: {s.output.parent}")
    # The work image grows by what provisioning writes; the output is at most the base's size plus that.
    need_work = int(state.base_info.get("actual-size", 0)) + 2 * GIB
    _need_space(work_root(s), need_work, "temp dir")
    _need_space(s.output.parent, int(state.base_info.get("actual-size", 0)), "output directory")
    if s.firmware == "uefi" and not qemu.OVMF_CODE.exists():
        raise UserError(f"UEFI firmware not found: {qemu.OVMF_CODE}", hint="apt-get install ovmf")
    log.info("base %s: %s, %.1f GiB virtual", s.base, state.base_info["format"],
             int(state.base_info["virtual-size"]) / GIB)
    check_base(state)
    check_sources(state)


def check_sources(state: _Run) -> None:
    """Every repository, key and registry the plan uses answers from where the VM will reach it (the host's
    network under nat, the profile's forwards when isolated): found in seconds here, not after the boot."""
    from snapbuild.host.reachability import require_reachable, route_for

    s = state.settings
    require_reachable(state.plan, route_for("local", s.network), allow_blocked=s.allow_blocked)


def check_base(state: _Run) -> None:
    """The base is a disk image with a root file system, of the recipe's distro: read offline, before any boot."""
    from snapbuild.host import baseprobe

    s = state.settings
    try:
        probe = baseprobe.probe_base(s.base, str(state.base_info["format"]))
    except baseprobe.Unreadable as exc:
        log.warning(baseprobe.unread_note(f"cannot look inside it here ({exc})", s.base))
        return
    if probe.os_release is None:
        log.warning(baseprobe.unread_note(probe.unread, s.base))
        return
    mismatch = baseprobe.distro_mismatch(probe.os_release, state.plan.distro, recipe=state.plan.recipe_name,
                                         supported=baseprobe.recipe_distros(state.plan), image=s.base)
    if mismatch is not None:
        raise mismatch


def make_tempdir(ctx: BuildContext, state: _Run) -> None:
    path = work_root(state.settings) / f"snapbuild-local-{ctx.build_id}"
    # Undo first, then the ledger, then the dir: an interrupt anywhere in between leaves no orphan entry.
    ctx.add_undo(f"remove temp dir {path}", _remove_tempdir, path, ctx.log_path,
                 forget=("tempdir", str(path)))
    ctx.ledger.record("tempdir", str(path))
    path.mkdir(mode=0o700)
    state.tempdir = path


def copy_base(state: _Run) -> None:
    """A standalone copy (no backing chain: the base must stay untouched and may move), grown to size."""
    state.work_image = state.tempdir / "work.qcow2"
    run(["qemu-img", "convert", "-O", "qcow2", "-m", "4", "-W", str(state.settings.base), str(state.work_image)],
        timeout=1800)
    run(["qemu-img", "resize", "-q", str(state.work_image), f"{state.plan.image.disk_size_gb}G"], timeout=60)


def make_seed(ctx: BuildContext, state: _Run) -> None:
    from snapbuild.sshkeys import KeyPair
    from snapbuild.userdata import render_builder_userdata

    state.builder_key = KeyPair.generate(comment="snapbuild-builder")
    state.host_key = KeyPair.generate(comment="snapbuild-builder-host")
    user_data = render_builder_userdata(state.plan, builder_user=BUILDER_USER,
                                        builder_public_key=state.builder_key.public_openssh,
                                        host_key=state.host_key, build_id=ctx.build_id)
    state.seed_path = write_seed(SeedSpec(user_data=user_data, hostname=_hostname(state.plan),
                                          kind=state.settings.seed), state.tempdir / "seed.iso")


def boot(ctx: BuildContext, state: _Run) -> None:
    s = state.settings
    spec = qemu.VMSpec(disk=state.work_image, memory_mb=s.memory_mb, cpus=s.cpus, seed=state.seed_path,
                       serial_log=state.tempdir / "serial.log", firmware=s.firmware, network=s.network,
                       guestfwds=mirror_forwards(state.plan), name=f"snapbuild-{ctx.build_id}")
    state.vm = start_vm(ctx, spec, workdir=state.tempdir)
    ctx.reporter.line(f"{state.vm.accel.describe()}; {qemu.describe_network(s.network)}; "
                      f"ssh on 127.0.0.1:{state.vm.ssh_port}")


def connect(ctx: BuildContext, state: _Run) -> None:
    assert state.vm is not None and state.builder_key is not None and state.host_key is not None
    state.guest = ssh_connect(ctx, state.vm, user=BUILDER_USER, key=state.builder_key,
                              host_keys=[state.host_key.public_openssh],
                              deadline=state.vm.started + state.settings.boot_timeout_s)
    state.metrics["boot_to_ssh_s"] = time.monotonic() - state.vm.started
    first = time.monotonic()
    state.guest.run(["true"], timeout=120)
    state.metrics["ssh_to_first_command_s"] = time.monotonic() - first
    ctx.reporter.line(f"SSH after {state.metrics['boot_to_ssh_s']:.1f} s; first command "
                      f"{state.metrics['ssh_to_first_command_s']:.2f} s")


def check_distro(state: _Run) -> None:
    """The backstop for what preflight could not read offline: the base's distro, read in the running guest."""
    from snapbuild.host import baseprobe

    assert state.guest is not None
    state.guest_os = parse_os_release(state.guest.read_file("/etc/os-release").decode(errors="replace"))
    mismatch = baseprobe.distro_mismatch(state.guest_os, state.plan.distro, recipe=state.plan.recipe_name,
                                         supported=baseprobe.recipe_distros(state.plan), image=state.settings.base)
    if mismatch is not None:
        raise UserError(f"{mismatch.message} (read in the booted guest)", hint=mismatch.hint)


def wait_cloud_init(state: _Run) -> None:
    from snapbuild.guest.cloudinit_wait import wait_for_cloud_init

    assert state.guest is not None
    wait_for_cloud_init(state.guest, timeout=state.settings.cloud_init_timeout_s)


def provision(ctx: BuildContext, state: _Run) -> None:
    from snapbuild.provision import provision as apply_plan

    assert state.guest is not None
    state.provision_result = apply_plan(state.plan, state.guest, ctx.reporter)


def seal(ctx: BuildContext, state: _Run) -> None:
    from snapbuild.sealing.policy import check_sealed
    from snapbuild.sealing.policy import seal as seal_guest

    assert state.guest is not None and state.builder_key is not None
    seal_guest(state.guest, reporter=ctx.reporter, resolv_symlink=state.plan.distro.resolv_conf_symlink)
    # Live check: the builder user and its key are still needed for the final step, which removes them.
    problems = check_sealed(state.guest, builder_user=BUILDER_USER, builder_keys=(state.builder_key.public_openssh,))
    if problems:
        raise BuildError("the sealed guest still has:\n  " + "\n  ".join(str(p) for p in problems),
                         hint="a recipe step may write these after sealing; see the build log")


def power_off(ctx: BuildContext, state: _Run) -> None:
    """The seal's last script removes the builder user and powers off; then QEMU must exit by itself."""
    from snapbuild.sealing.policy import power_off_sealed

    assert state.vm is not None and state.guest is not None
    vm = state.vm
    try:
        power_off_sealed(state.guest, builder_user=BUILDER_USER)
    except CommandFailed as exc:
        if not exc.timed_out:
            raise   # the script itself failed (e.g. the builder user could not be removed)
        log.debug("power off: the final script timed out; waiting for QEMU anyway (%s)", exc)
    except BuildError as exc:
        if "connection was lost" not in exc.message:
            raise
        log.debug("power off: connection dropped as expected (%s)", exc.message)
    finally:
        state.guest.close()
    start = time.monotonic()
    rc = vm.wait_exit(start + state.settings.poweroff_timeout_s / 2)
    if rc is None:
        log.warning("guest did not power off; pressing the ACPI power button")
        try:
            vm.powerdown()
        except (OSError, BuildError, ValueError) as exc:
            log.debug("system_powerdown: %s", exc)
        rc = vm.wait_exit(time.monotonic() + state.settings.poweroff_timeout_s / 2)
    if rc is None:
        raise BuildError(f"the builder VM did not power off within {state.settings.poweroff_timeout_s:.0f} s; "
                         "its disk may be inconsistent\n" + vm.serial_tail())
    state.metrics["poweroff_s"] = time.monotonic() - start
    ctx.reporter.line(f"QEMU exited {rc} after {state.metrics['poweroff_s']:.1f} s")


def compact(ctx: BuildContext, state: _Run) -> None:
    """Convert the trimmed work image to the output's temp name (the seal ran fstrim with discard=unmap)."""
    out = state.settings.output
    state.partial = out.parent / f".{out.name}.{ctx.build_id}.partial"
    ctx.add_undo(f"remove partial output {state.partial}", _unlink, state.partial,
                 forget=("file", str(state.partial)))
    ctx.ledger.record("file", str(state.partial))
    start = time.monotonic()
    run(compact_argv(state.work_image, state.partial, state.settings.compression), timeout=3600)
    state.metrics["compact_s"] = time.monotonic() - start
    ctx.reporter.line(f"{state.settings.compression}: {state.partial.stat().st_size / 1e6:.1f} MB in "
                      f"{state.metrics['compact_s']:.1f} s")


def inspect(state: _Run) -> None:
    """The offline policy checker on the captured image (needs root for its mounts)."""
    from snapbuild.sealing.offline import inspect_image

    if os.geteuid() != 0:
        # `local` itself needs no root; the live check inside the guest already passed the same policy.
        note = "offline inspection skipped: it mounts the image (root); the in-guest seal check passed"
        log.warning("%s; run `sudo snapbuild inspect %s` to repeat it offline", note, state.settings.output)
        state.inspected = "skipped (needs root)"
        return
    violations = inspect_image(state.partial)
    if violations:
        raise BuildError("the image breaks the sealing policy:\n  " + "\n  ".join(str(v) for v in violations),
                         hint="see the build log for the seal step's output")
    state.inspected = "clean"


def publish(ctx: BuildContext, state: _Run, *, total_s: float) -> LocalResult:
    s = state.settings
    digest = sha256_file(state.partial)
    info = image_info(state.partial)
    os.replace(state.partial, s.output)      # atomic: the output exists only complete
    ctx.ledger.forget("file", str(state.partial))
    manifest_path = manifest_path_for(s.output)
    timings = {t.name: round(t.seconds, 2) for t in ctx.timings}
    timings.update({k: round(v, 2) for k, v in state.metrics.items()})
    timings["total_s"] = round(total_s, 2)
    assert state.vm is not None
    content = state.plan.content_digest(f"sha256:{sha256_file(s.base)}")
    manifest = {
        "snapbuild": snapbuild.__version__,
        "build_id": ctx.build_id,
        "builder": "local",
        "recipe": state.plan.recipe_name,
        "variant": state.plan.variant,
        "content_digest": content.value,
        "content_digest_inputs": content.as_dict(),
        "image_name": state.plan.image.name,
        "distro": state.plan.distro.name,
        "inputs": {
            "base": str(s.base),
            "base_format": state.base_info.get("format"),
            "base_virtual_size": state.base_info.get("virtual-size"),
            "settings": {"compression": s.compression, "memory_mb": s.memory_mb, "cpus": s.cpus,
                         "seed": s.seed, "firmware": s.firmware, "disk_size_gb": state.plan.image.disk_size_gb},
        },
        "guest_os": state.guest_os.get("PRETTY_NAME"),
        "versions": {"qemu": tool_version(["qemu-system-x86_64", "--version"]),
                     "qemu-img": tool_version(["qemu-img", "--version"])},
        "accel": state.vm.accel.describe(),
        # Public fingerprints only: `snapbuild verify` proves neither is accepted by the image.
        "builder_keys": {"client": state.builder_key.fingerprint_sha256 if state.builder_key else None,
                         "host": state.host_key.fingerprint_sha256 if state.host_key else None},
        "provision": _jsonable(state.provision_result),
        "inspect": state.inspected,
        "output": {"path": str(s.output), "format": "qcow2", "compression": s.compression, "sha256": digest,
                   "size": s.output.stat().st_size, "virtual_size": info.get("virtual-size")},
        "timings": timings,
    }
    _write_json(manifest_path, manifest)
    ctx.reporter.line(f"{s.output} ({s.output.stat().st_size / 1e6:.1f} MB, sha256 {digest[:16]}…)")
    return LocalResult(output=s.output, manifest=manifest_path, sha256=digest, size_bytes=s.output.stat().st_size,
                       virtual_size_bytes=int(info.get("virtual-size", 0)), timings=timings,
                       accel=state.vm.accel.describe())


# ---------------------------------------------------------------- shared with verify

def start_vm(ctx: BuildContext, spec: qemu.VMSpec, *, workdir: Path) -> qemu.VM:
    """Launch QEMU; the process is in the ledger (by its -name marker, then pid) and its undo kills it."""

    launched: list[qemu.VM] = []

    def started(vm: qemu.VM) -> None:
        launched.append(vm)
        ctx.ledger.update("process", spec.name, pid=vm.pid)
        ctx.add_undo(f"stop QEMU pid {vm.pid}", vm.kill, forget=("process", spec.name))

    def stopped(vm: qemu.VM) -> None:
        log.debug("attempt with QEMU pid %d stopped", vm.pid)

    try:
        ctx.ledger.record("process", spec.name, cmdline_marker=f"-name {spec.name}", argv0=qemu.QEMU)
        vm = qemu.launch(spec, workdir=workdir, on_started=started, on_stopped=stopped)
    except BaseException:
        if not launched:   # nothing was started, so no undo will strike the entry
            ctx.ledger.forget("process", spec.name)
        raise
    return vm


def ssh_connect(ctx: BuildContext, vm: qemu.VM, *, user: str, key: KeyPair, host_keys: Sequence[str],
                deadline: float) -> SSHGuest:
    """Connect to the VM's forwarded port; a guest that never boots fails with its serial console's tail.

    A boot the console shows failing (firmware finds nothing, kernel panic, no userspace in time: see
    qemu.boot_failure) ends the wait at once, before SSH is even tried.
    """
    from snapbuild.guest.ssh import SSHGuest

    vm.wait_userspace(deadline)
    try:
        guest = SSHGuest.connect(host="127.0.0.1", port=vm.ssh_port, user=user, key=key, host_keys=host_keys,
                                 deadline=deadline, console=lambda: vm.serial_tail(40), name=vm.spec.name)
    except BuildError as exc:
        problem = vm.boot_problem()
        if problem is not None:
            raise vm.boot_error(problem) from exc
        # SSHGuest.connect already appended the console's tail (it was given `console=`).
        raise BuildError(f"guest never booted to SSH: {exc.message}",
                         hint=exc.hint or "see the serial console lines above") from exc
    ctx.add_undo(f"close SSH to {vm.spec.name}", guest.close)
    return guest


def mirror_forwards(plan: Plan) -> tuple[qemu.GuestForward, ...]:
    forwards = []
    for fwd in getattr(plan, "mirror_forwards", ()) or ():
        # profiles.Forward, or a plain (guest_ip, guest_port, host_ip, host_port) tuple
        g_ip, g_port, h_ip, h_port = (fwd if isinstance(fwd, tuple) else
                                      (fwd.guest_ip, fwd.guest_port, fwd.host_ip, fwd.host_port))
        forwards.append(qemu.GuestForward(guest_ip=g_ip, guest_port=int(g_port), host_ip=h_ip, host_port=int(h_port)))
    return tuple(forwards)


def compact_argv(source: Path, target: Path, compression: Compression) -> list[str]:
    argv = ["qemu-img", "convert", "-O", "qcow2", "-m", "4", "-W"]
    if compression == "zstd":
        argv += ["-c", "-o", "compression_type=zstd"]
    elif compression == "zlib":
        argv += ["-c", "-o", "compression_type=zlib"]
    return [*argv, str(source), str(target)]


def image_info(path: Path) -> dict[str, Any]:
    try:
        done = run(["qemu-img", "info", "--output=json", str(path)], timeout=60)
    except CommandFailed as exc:
        raise UserError(f"{path} is not a disk image: {exc.output_tail.strip()[-300:]}") from None
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def parse_os_release(text: str) -> dict[str, str]:
    from snapbuild.host.baseprobe import parse_os_release as parse

    return parse(text)


def work_root(settings: LocalSettings) -> Path:
    return settings.work_root or Path(tempfile.gettempdir())


def manifest_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(4 * 1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


# ---------------------------------------------------------------- helpers

def _hostname(plan: Plan) -> str:
    name = "".join(ch if ch.isalnum() else "-" for ch in f"snapbuild-{plan.recipe_name}".lower())
    return name.strip("-")[:63]


def _has_boot_signature(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(510)
        return handle.read(2) == b"\x55\xaa"


def _need_space(directory: Path, need: int, what: str) -> None:
    usage = shutil.disk_usage(directory)
    if usage.free < need:
        raise UserError(f"not enough space in {what} {directory}: {usage.free / GIB:.1f} GiB free, "
                        f"{need / GIB:.1f} GiB needed", hint="free some space or point TMPDIR elsewhere")


def _remove_tempdir(path: Path, log_path: Path | None) -> None:
    serial = path / "serial.log"
    if log_path is not None and serial.exists():
        # The serial console is the best evidence of a failed boot: keep it beside the build log.
        shutil.copyfile(serial, log_path.with_name(log_path.stem + ".serial.log"))
    if path.exists():
        shutil.rmtree(path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json.loads(json.dumps(dataclasses.asdict(value), default=str))
    return json.loads(json.dumps(value, default=str))
