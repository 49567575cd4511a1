"""`snapbuild local`: build an image in a throw-away QEMU VM on this host and capture it as a compressed qcow2.

The base image is never modified: it is copied to a standalone work image in the build's 0700 temp dir, which
is booted with a cloud-init seed, provisioned and sealed over SSH, powered off and compacted to the output.
With `--transport console` the seed carries the console runner instead (snapbuild.console): it provisions and
seals inside the guest, reports on the serial port (QEMU writes it to the serial log this build follows) and
powers the VM off; no SSH connection is made.
"""

from __future__ import annotations

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

from snapbuild.digest import file_sha256
from snapbuild.errors import BuildError, UserError
from snapbuild.host.commands import require_tools, run
from snapbuild.host.compact import run_convert
from snapbuild.host.images import image_info
from snapbuild.host.mounts import remove_tree
from snapbuild.local import qemu
from snapbuild.local.seed import SeedKind, SeedSpec, write_seed
from snapbuild.run.context import Asker, BuildContext, OnError, Undo, new_context, running_build
from snapbuild.run.manifest import build_manifest, manifest_path_for, write_manifest
from snapbuild.run.monitor import Monitor, TerminalMonitor
from snapbuild.run.progress import progress
from snapbuild.run.tail import BuilderAccess, Timeouts, drive_booted

if TYPE_CHECKING:
    from snapbuild.console.report import Verdict
    from snapbuild.guest.ssh import SSHGuest
    from snapbuild.plan import Plan
    from snapbuild.provision import ProvisionResult
    from snapbuild.sshkeys import KeyPair

log = logging.getLogger(__name__)

Compression = Literal["zstd", "zlib", "none"]
Transport = Literal["ssh", "console"]
GIB = 1024 ** 3
SERIAL_TAIL_LINES = 30
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
    # ssh: provision and seal over SSH; console: the runner in the user-data does it and reports on the serial port.
    transport: Transport = "ssh"
    boot_timeout_s: float = 900.0        # launch → SSH accepts the builder key / the runner speaks (TCG: slow)
    cloud_init_timeout_s: float = 900.0
    poweroff_timeout_s: float = 300.0
    # console: launch → the runner's verdict, everything included (the SSH path bounds each step instead).
    console_timeout_s: float = 4 * 3600.0
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
    access: BuilderAccess | None = None      # ssh transport
    console_nonce: str = ""                  # console transport: the runner's protocol nonce
    user_data: str = ""
    base_os: dict[str, str] = field(default_factory=dict)   # the base's os-release, read offline in preflight
    seed_path: Path = Path()
    vm: qemu.VM | None = None
    provisioned: ProvisionResult | None = None
    guest_os: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    partial: Path = Path()
    partial_undo: Undo | None = None
    inspected: str = "not run"


# ---------------------------------------------------------------- the build, as a table of contents

def build_local(ctx: BuildContext, plan: Plan, settings: LocalSettings) -> LocalResult:
    """Run every step of a local build inside `running_build(ctx)` (the caller's: undo on failure)."""
    state = _Run(settings=settings, plan=plan)
    started = time.monotonic()
    with ctx.step("preflight"):
        preflight(state)
        prepare_user_data(ctx, state)
    with ctx.step("prepare work image"):
        make_tempdir(ctx, state)
        copy_base(state)
    with ctx.step("boot builder"):
        make_seed(state)
        boot(ctx, state)
    assert state.vm is not None
    if settings.transport == "console":
        state.provisioned = follow_runner(ctx, state)
    else:
        assert state.access is not None
        state.provisioned = drive_booted(ctx, plan, LocalVM(ctx, state.vm, state), state.access,
                                         timeouts=Timeouts(cloud_init_s=settings.cloud_init_timeout_s))
    with ctx.step("compact"):
        compact(ctx, state)
    with ctx.step("check image"):
        check_image(state)
    with ctx.step("manifest"):
        return publish(ctx, state, total_s=time.monotonic() - started)


def run_local(plan: Plan, settings: LocalSettings, *, monitor: Monitor | None = None, on_error: OnError = "cleanup",
              ask: Asker | None = None, log_path: Path | None = None) -> LocalResult:
    """The whole `snapbuild local` command: a ledger, a context, every undo on failure or interrupt."""
    ctx = new_context(builder="local", recipe=plan.recipe_name, monitor=monitor or TerminalMonitor(),
                      on_error=on_error, ask=ask, log_path=log_path,
                      cleanup_command="snapbuild cleanup --host --build-id {build_id}")
    with running_build(ctx, variant=plan.variant):
        result = build_local(ctx, plan, settings)
        ctx.outcome.update(output=str(result.output), manifest=str(result.manifest), sha256=result.sha256)
    return result


# ---------------------------------------------------------------- steps

def preflight(state: _Run) -> None:
    s = state.settings
    tools = ["qemu-system-x86_64", "qemu-img", "xorriso"]
    if state.plan.mirror_forwards:
        tools.append("socat")
    require_tools(*tools, hint="apt-get install qemu-system-x86 qemu-utils xorriso socat")
    if not s.base.is_file():
        raise UserError(f"base image not found: {s.base}", hint="pass --base PATH to a qcow2 or raw cloud image")
    state.base_info = image_info(s.base, force_share=False)
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
    state.base_os = dict(probe.os_release)
    mismatch = baseprobe.distro_mismatch(probe.os_release, state.plan.distro, recipe=state.plan.recipe_name,
                                         supported=state.plan.recipe_distros, image=s.base)
    if mismatch is not None:
        raise mismatch


def make_tempdir(ctx: BuildContext, state: _Run) -> None:
    path = work_root(state.settings) / f"snapbuild-local-{ctx.build_id}"
    ctx.own("tempdir", str(path), f"remove temp dir {path}", _remove_tempdir, path, ctx.log_path)
    path.mkdir(mode=0o700)
    state.tempdir = path


def copy_base(state: _Run) -> None:
    """A standalone copy (no backing chain: the base must stay untouched and may move), grown to size."""
    state.work_image = state.tempdir / "work.qcow2"
    run(["qemu-img", "convert", "-O", "qcow2", "-m", "4", "-W", str(state.settings.base), str(state.work_image)],
        timeout=1800)
    run(["qemu-img", "resize", "-q", str(state.work_image), f"{state.plan.image.disk_size_gb}G"], timeout=60)


def prepare_user_data(ctx: BuildContext, state: _Run) -> None:
    """The builder's user-data: SSH access (a fresh key pair and host key), or the console runner and its orders."""
    if state.settings.transport == "console":
        # The seed takes the cloud-config as it is; Nova's limits are checked all the same (console_user_data).
        from snapbuild.console.payload import console_user_data

        made = console_user_data(state.plan, build_id=ctx.build_id,
                                 cloud_init_timeout=state.settings.cloud_init_timeout_s)
        state.console_nonce, state.user_data = made.nonce, made.text
        return
    from snapbuild.userdata import render_builder_userdata

    state.access = BuilderAccess.generate(ctx.build_id, user=BUILDER_USER)
    state.user_data = render_builder_userdata(state.plan, builder_user=BUILDER_USER,
                                              builder_public_key=state.access.client_key.public_openssh,
                                              host_key=state.access.host_key, build_id=ctx.build_id)


def make_seed(state: _Run) -> None:
    state.seed_path = write_seed(SeedSpec(user_data=state.user_data, hostname=_hostname(state.plan),
                                          kind=state.settings.seed), state.tempdir / "seed.iso")


def boot(ctx: BuildContext, state: _Run) -> None:
    s = state.settings
    spec = qemu.VMSpec(disk=state.work_image, memory_mb=s.memory_mb, cpus=s.cpus, seed=state.seed_path,
                       serial_log=state.tempdir / "serial.log", firmware=s.firmware, network=s.network,
                       guestfwds=mirror_forwards(state.plan), name=f"snapbuild-{ctx.build_id}",
                       forward_ssh=s.transport == "ssh")
    state.vm = start_vm(ctx, spec, workdir=state.tempdir)
    # A console build forwards nothing: no port of the guest is reachable from this host.
    reach = f"ssh on 127.0.0.1:{state.vm.ssh_port}" if s.transport == "ssh" else f"console {spec.serial_log}"
    ctx.monitor.line(f"{state.vm.accel.describe()}; {qemu.describe_network(s.network)}; {reach}")


class LocalVM:
    """The builder VM as the booted-guest tail sees it: SSH on a loopback forward, off when QEMU exits."""

    def __init__(self, ctx: BuildContext, vm: qemu.VM, state: _Run) -> None:
        self.ctx = ctx
        self.vm = vm
        self.state = state
        self.name = vm.spec.name

    def connect(self, access: BuilderAccess) -> SSHGuest:
        vm, metrics = self.vm, self.state.metrics
        guest = ssh_connect(vm, user=access.user, key=access.client_key, host_keys=[access.host_key.public_openssh],
                            deadline=vm.started + self.state.settings.boot_timeout_s)
        metrics["boot_to_ssh_s"] = time.monotonic() - vm.started
        first = time.monotonic()
        guest.run(["true"], timeout=120)
        metrics["ssh_to_first_command_s"] = time.monotonic() - first
        self.ctx.monitor.line(f"SSH after {metrics['boot_to_ssh_s']:.1f} s; first command "
                              f"{metrics['ssh_to_first_command_s']:.2f} s")
        return guest

    def after_connect(self, guest: SSHGuest) -> None:
        """The backstop for what preflight could not read offline: the base's distro, read in the running guest."""
        from snapbuild.host import baseprobe

        state = self.state
        state.guest_os = baseprobe.parse_os_release(guest.read_file("/etc/os-release").decode(errors="replace"))
        mismatch = baseprobe.distro_mismatch(state.guest_os, state.plan.distro, recipe=state.plan.recipe_name,
                                             supported=state.plan.recipe_distros, image=state.settings.base)
        if mismatch is not None:
            raise UserError(f"{mismatch.message} (read in the booted guest)", hint=mismatch.hint)

    def wait_powered_off(self) -> None:
        """QEMU must exit by itself once the guest is off; an ACPI power button press is the fallback."""
        vm, timeout = self.vm, self.state.settings.poweroff_timeout_s
        start = time.monotonic()
        rc = vm.wait_exit(start + timeout / 2)
        if rc is None:
            log.warning("guest did not power off; pressing the ACPI power button")
            try:
                vm.powerdown()
            except (OSError, BuildError, ValueError) as exc:
                log.debug("system_powerdown: %s", exc)
            rc = vm.wait_exit(time.monotonic() + timeout / 2)
        if rc is None:
            raise BuildError(f"the builder VM did not power off within {timeout:.0f} s; "
                             "its disk may be inconsistent\n" + vm.serial_tail())
        self.state.metrics["poweroff_s"] = time.monotonic() - start
        self.ctx.monitor.line(f"QEMU exited {rc} after {self.state.metrics['poweroff_s']:.1f} s")

    def ssh_command(self, key_file: Path, access: BuilderAccess) -> str:
        return f"ssh -i {key_file} -p {self.vm.ssh_port} {access.user}@127.0.0.1"


def follow_runner(ctx: BuildContext, state: _Run) -> ProvisionResult:
    """The runner cloud-init started applies the plan, seals, checks and powers off; its serial-port lines become
    this build's steps. Compaction follows only a sealed-and-checked verdict."""
    assert state.vm is not None
    vm = state.vm
    with ctx.step("console runner"):
        # A boot the console shows failing ends at once, as on the SSH path (its error carries the console's tail).
        vm.wait_userspace(vm.started + state.settings.boot_timeout_s)
        ctx.on_failure.append(lambda exc: report_serial(ctx, vm, exc))
        verdict = follow_serial(ctx, vm, state)
        verdict.raise_unless_capturable()
    with ctx.step("power off"):
        LocalVM(ctx, vm, state).wait_powered_off()
    return verdict.provisioned()


def follow_serial(ctx: BuildContext, vm: qemu.VM, state: _Run) -> Verdict:
    """The runner's lines as this build's steps, until its verdict or until QEMU exits without one."""
    from snapbuild.console.follow import FollowLimits, follow_console
    from snapbuild.console.reader import ConsoleReader, FileTail

    s = state.settings
    tail = FileTail(ConsoleReader(state.console_nonce), vm.spec.serial_log)
    limits = FollowLimits(timeout_s=s.console_timeout_s, poll_s=1.0, silent_s=s.boot_timeout_s)
    return follow_console(tail, ctx.monitor, is_off=lambda: not vm.alive(), limits=limits)


def report_serial(ctx: BuildContext, vm: qemu.VM, exc: BaseException) -> None:
    """On a failed console build: what the guest said on the serial port besides the runner's lines."""
    from snapbuild.console.report import guest_lines

    if isinstance(exc, KeyboardInterrupt) or ctx.current_step not in ("console runner", "power off"):
        return
    lines = guest_lines(qemu.tail_text(vm.spec.serial_log, 200), SERIAL_TAIL_LINES)
    if lines:
        ctx.monitor.line("serial console (last lines):")
        for line in lines:
            ctx.monitor.line("  | " + line)


def compact(ctx: BuildContext, state: _Run) -> None:
    """Convert the trimmed work image to the output's temp name (the seal ran fstrim with discard=unmap)."""
    out = state.settings.output
    state.partial = out.parent / f".{out.name}.{ctx.build_id}.partial"
    state.partial_undo = ctx.own("file", str(state.partial), f"remove partial output {state.partial}", _unlink,
                                 state.partial)
    start = time.monotonic()
    with progress(ctx.monitor, "compact", total=100, unit="%") as bar:
        run_convert(compact_argv(state.work_image, state.partial, state.settings.compression), timeout=3600,
                    on_percent=bar.set)
    state.metrics["compact_s"] = time.monotonic() - start
    ctx.monitor.line(f"{state.settings.compression}: {state.partial.stat().st_size / 1e6:.1f} MB in "
                      f"{state.metrics['compact_s']:.1f} s")


def check_image(state: _Run) -> None:
    """The offline policy checker on the captured image (needs root for its mounts)."""
    from snapbuild.sealing.offline import require_clean_image

    if os.geteuid() != 0:
        # `local` itself needs no root; the live check inside the guest already passed the same policy.
        note = "offline inspection skipped: it mounts the image (root); the in-guest seal check passed"
        log.warning("%s; run `sudo snapbuild inspect %s` to repeat it offline", note, state.settings.output)
        state.inspected = "skipped (needs root)"
        return
    require_clean_image(state.partial)
    state.inspected = "clean"


def publish(ctx: BuildContext, state: _Run, *, total_s: float) -> LocalResult:
    s = state.settings
    digest = file_sha256(state.partial)
    info = image_info(state.partial, force_share=False)
    os.replace(state.partial, s.output)      # atomic: the output exists only complete
    assert state.partial_undo is not None and state.vm is not None
    state.partial_undo.release()
    metrics = {k: round(v, 2) for k, v in state.metrics.items()}
    metrics["total_s"] = round(total_s, 2)
    details: dict[str, Any] = {}
    if state.access is not None:
        # Public fingerprints only: `snapbuild verify` proves neither is accepted by the image.
        details["builder_keys"] = {"client": state.access.client_key.fingerprint_sha256,
                                   "host": state.access.host_key.fingerprint_sha256}
    manifest = build_manifest(
        ctx, builder="local", plan=state.plan, base_checksum=f"sha256:{file_sha256(s.base)}",
        base={"path": str(s.base), "format": state.base_info.get("format"),
              "virtual_size": state.base_info.get("virtual-size"), "sha256": file_sha256(s.base)},
        output={"path": str(s.output), "format": "qcow2", "compression": s.compression, "sha256": digest,
                "size": s.output.stat().st_size, "virtual_size": info.get("virtual-size")},
        provisioned=state.provisioned,
        # On the console transport "clean" is the runner's verdict: the same seal check, run in the guest.
        seal={"in_guest": "clean", "offline": state.inspected},
        # A console build never logs in: the OS is the one preflight read in the base.
        details={"guest_os": (state.guest_os or state.base_os).get("PRETTY_NAME"),
                 "accel": state.vm.accel.describe(), "transport": s.transport, "network": s.network,
                 "metrics": metrics,
                 "settings": {"memory_mb": s.memory_mb, "cpus": s.cpus, "seed": s.seed, "firmware": s.firmware,
                              "disk_size_gb": state.plan.image.disk_size_gb},
                 "versions": {"qemu": tool_version(["qemu-system-x86_64", "--version"]),
                              "qemu-img": tool_version(["qemu-img", "--version"])},
                 **details})
    path = manifest_path_for(s.output)
    write_manifest(path, manifest)
    ctx.monitor.line(f"{s.output} ({s.output.stat().st_size / 1e6:.1f} MB, sha256 {digest[:16]}…)")
    timings = {t.name: round(t.seconds, 2) for t in ctx.timings} | metrics
    return LocalResult(output=s.output, manifest=path, sha256=digest, size_bytes=s.output.stat().st_size,
                       virtual_size_bytes=int(info.get("virtual-size", 0)), timings=timings,
                       accel=state.vm.accel.describe())


# ---------------------------------------------------------------- shared with verify

def start_vm(ctx: BuildContext, spec: qemu.VMSpec, *, workdir: Path) -> qemu.VM:
    """Launch QEMU; the process is in the ledger (by its -name marker, then pid) and its undo kills it."""
    launched: list[qemu.VM] = []

    def stop_launched() -> None:
        for vm in launched:
            vm.kill()

    ctx.own("process", spec.name, f"stop QEMU {spec.name}", stop_launched, cmdline_marker=f"-name {spec.name}",
            argv0=qemu.QEMU)

    def started(vm: qemu.VM) -> None:
        launched.append(vm)
        ctx.ledger.update("process", spec.name, pid=vm.pid)

    def stopped(vm: qemu.VM) -> None:
        log.debug("attempt with QEMU pid %d stopped", vm.pid)

    return qemu.launch(spec, workdir=workdir, on_started=started, on_stopped=stopped)


def ssh_connect(vm: qemu.VM, *, user: str, key: KeyPair, host_keys: Sequence[str], deadline: float) -> SSHGuest:
    """Connect to the VM's forwarded port; a guest that never boots fails with its serial console's tail.

    A boot the console shows failing (firmware finds nothing, kernel panic, no userspace in time: see
    qemu.boot_failure) ends the wait at once, before SSH is even tried.
    """
    from snapbuild.guest.ssh import SSHGuest

    vm.wait_userspace(deadline)
    try:
        return SSHGuest.connect(host="127.0.0.1", port=vm.ssh_port, user=user, key=key, host_keys=host_keys,
                                deadline=deadline, console=lambda: vm.serial_tail(40), name=vm.spec.name)
    except BuildError as exc:
        problem = vm.boot_problem()
        if problem is not None:
            raise vm.boot_error(problem) from exc
        # SSHGuest.connect already appended the console's tail (it was given `console=`).
        raise BuildError(f"guest never booted to SSH: {exc.message}",
                         hint=exc.hint or "see the serial console lines above") from exc


def mirror_forwards(plan: Plan) -> tuple[qemu.GuestForward, ...]:
    forwards = []
    for fwd in plan.mirror_forwards:
        forwards.append(qemu.GuestForward(guest_ip=fwd.guest_ip, guest_port=fwd.guest_port, host_ip=fwd.host_ip,
                                          host_port=fwd.host_port))
    return tuple(forwards)


def compact_argv(source: Path, target: Path, compression: Compression) -> list[str]:
    argv = ["qemu-img", "convert", "-O", "qcow2", "-m", "4", "-W"]
    if compression == "zstd":
        argv += ["-c", "-o", "compression_type=zstd"]
    elif compression == "zlib":
        argv += ["-c", "-o", "compression_type=zlib"]
    return [*argv, str(source), str(target)]


def work_root(settings: LocalSettings) -> Path:
    return settings.work_root or Path(tempfile.gettempdir())


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
    remove_tree(path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


