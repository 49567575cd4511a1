"""`snapbuild verify IMAGE`: boot the image twice, each time as a brand-new instance, and prove it generalises.

Each boot uses its own copy-on-write overlay (the image is never written), a bigger virtual disk (so root
growth shows), a fresh seed and a fresh key for the distro's default user: never the builder's key.
"""

from __future__ import annotations

import json as jsonlib
import logging
import os
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapbuild.distros import DISTROS
from snapbuild.errors import BuildError, CommandFailed, UserError
from snapbuild.host.baseprobe import parse_os_release
from snapbuild.host.commands import require_tools, run
from snapbuild.host.images import image_info
from snapbuild.local import qemu
from snapbuild.local.build import GIB, ssh_connect, start_vm
from snapbuild.local.seed import SeedKind, SeedSpec, write_seed
from snapbuild.run.context import BuildContext, Reporter, new_context, running_build
from snapbuild.run.manifest import manifest_path_for

if TYPE_CHECKING:
    from snapbuild.guest.ssh import SSHGuest
    from snapbuild.plan import Plan
    from snapbuild.sshkeys import KeyPair

log = logging.getLogger(__name__)

BUILDER_USER = "snapbuild"
GROW_BY_GIB = 2


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    image: Path
    checks: tuple[CheckResult, ...]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"image": str(self.image), "ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "timings": self.timings}

    def render(self, *, json: bool = False) -> str:
        """The result for stdout: a table for people, JSON for machines."""
        if json:
            return jsonlib.dumps(self.to_dict(), indent=1)
        width = max((len(c.name) for c in self.checks), default=10)
        lines = [f"{'PASS' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}".rstrip() for c in self.checks]
        lines.append(f"{'OK' if self.ok else 'FAILED'}: {sum(c.ok for c in self.checks)}/{len(self.checks)} "
                     f"checks passed for {self.image}")
        return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class VerifySettings:
    memory_mb: int = 1024
    cpus: int = 2
    seed: SeedKind = "nocloud"
    firmware: qemu.Firmware = "bios"
    # nat: outbound access as a cloud server has; isolated: restrict=on (air-gapped hosts, tests).
    network: qemu.Network = "nat"
    boot_timeout_s: float = 900.0        # launch → the console shows the host keys and SSH accepts the key
    cloud_init_timeout_s: float = 600.0


@dataclass
class _Boot:
    """What one first boot showed."""

    user: str = ""
    machine_id: str = ""
    host_keys: tuple[str, ...] = ()     # from the guest's /etc/ssh/*.pub, "TYPE BASE64"
    cloud_init_rc: int | None = None
    cloud_init_report: str = ""
    seconds_to_ssh: float = 0.0
    seconds: float = 0.0                # launch to powered off
    checks: list[CheckResult] = field(default_factory=list)


def verify_image(image: Path, *, plan: Plan | None = None, settings: VerifySettings | None = None,
                 reporter: Reporter | None = None, build_id: str | None = None) -> VerifyResult:
    """Boot `image` twice through overlays and check it; a result per check (failures are results, not errors)."""
    from snapbuild.ledger import new_build_id

    settings = settings or VerifySettings()
    reporter = reporter or Reporter()
    require_tools("qemu-system-x86_64", "qemu-img", "xorriso",
                  hint="apt-get install qemu-system-x86 qemu-utils xorriso")
    if not image.is_file():
        raise UserError(f"image not found: {image}")
    info = image_info(image, force_share=False)   # booted next: an image still being written is refused
    if info.get("format") not in ("qcow2", "raw"):
        raise UserError(f"{image} is {info.get('format')!r}, not a qcow2 or raw disk image")
    check_image_offline(image, str(info["format"]), plan)
    build_id = build_id or new_build_id()
    ctx = new_context(builder="verify", recipe=plan.recipe_name if plan else "-", monitor=reporter,
                      cleanup_command="snapbuild cleanup --host --build-id {build_id}", build_id=build_id)
    manifest = _read_manifest(image)
    checks: list[CheckResult] = []
    side_by_side, why = boots_side_by_side(memory_mb=settings.memory_mb, available_mb=mem_available_mb(),
                                           cpus=settings.cpus, host_cpus=host_cpu_count())
    log.info("verify: %s", why)
    with running_build(ctx):
        tempdir = _tempdir(ctx)
        boots = run_boots(ctx, image, info, tempdir, plan, settings, side_by_side=side_by_side, why=why)
        for boot in boots:   # boot 1's checks, then boot 2's: the order does not depend on which finished first
            checks.extend(boot.checks)
        with ctx.step("compare boots"):
            checks.extend(compare_boots(boots, manifest))
    timings = {t.name: round(t.seconds, 2) for t in ctx.timings}
    timings.update({f"boot_{i + 1}_to_ssh_s": round(b.seconds_to_ssh, 2) for i, b in enumerate(boots)})
    timings.update({f"boot_{i + 1}_s": round(b.seconds, 2) for i, b in enumerate(boots)})
    return VerifyResult(image=image, checks=tuple(checks), timings=timings)


# ---------------------------------------------------------------- two boots, side by side when the host holds both

# Per VM beyond its RAM: QEMU itself and TCG's translation cache (tb-size=256); and what the host keeps for itself.
QEMU_OVERHEAD_MB = 384
HOST_MARGIN_MB = 512


def mem_available_mb(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in MiB, or None when it cannot be read."""
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable" and value.split():
            return int(value.split()[0]) // 1024
    return None


def host_cpu_count() -> int | None:
    """The CPUs this process may run on (its affinity, not the machine's total), or None when unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def boots_side_by_side(*, memory_mb: int, available_mb: int | None, cpus: int, host_cpus: int | None,
                       boots: int = 2) -> tuple[bool, str]:
    """Whether the boots fit on this host at once, and why.

    Memory: each VM's RAM plus QEMU's overhead, plus a margin. CPUs: a vCPU is a busy host thread (always under
    TCG), so guests sharing too few cores starve each other's vCPUs; a guest kernel then reports soft lockups
    and misses the boot deadline (seen on 2 cores: 2 guests x 2 vCPUs, one stuck 261 s in its crypto self-test).
    """
    need = boots * (memory_mb + QEMU_OVERHEAD_MB) + HOST_MARGIN_MB
    if available_mb is None:
        return False, "boots one after the other (MemAvailable unknown)"
    if available_mb < need:
        return False, (f"boots one after the other: {available_mb} MiB available, {need} MiB needed for "
                       f"{boots} side by side")
    vcpus = boots * cpus
    if host_cpus is None:
        return False, "boots one after the other (host CPU count unknown)"
    if host_cpus < vcpus:
        return False, f"boots one after the other: {host_cpus} host CPUs, {vcpus} vCPUs for {boots} side by side"
    return True, (f"boots side by side: {available_mb} MiB available, {need} MiB needed; "
                  f"{host_cpus} CPUs for {vcpus} vCPUs")


def run_boots(ctx: BuildContext, image: Path, info: dict[str, Any], tempdir: Path, plan: Plan | None,
              settings: VerifySettings, *, side_by_side: bool, why: str) -> list[_Boot]:
    """Both first boots, each with its own overlay, seed, port and undo; results in boot order."""
    if not side_by_side:
        ctx.monitor.line(why)
        boots = []
        for number in (1, 2):
            with ctx.step(f"boot {number}"):
                boots.append(_boot_once(ctx, image, info, number, tempdir, plan, settings))
        return boots
    results: dict[int, _Boot] = {}
    errors: dict[int, BaseException] = {}

    def one(number: int) -> None:
        try:
            results[number] = _boot_once(ctx, image, info, number, tempdir, plan, settings)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            errors[number] = exc

    with ctx.step("boots 1 and 2, side by side"):
        ctx.monitor.line(why)
        # Daemon threads: an interrupt reaches the main thread, whose undo stops both VMs, and an exit does not
        # wait for a thread. QEMU is started with PR_SET_PDEATHSIG from its boot's thread, so it also dies
        # when that thread ends (each boot powers its VM off before its thread ends).
        threads = [threading.Thread(target=one, args=(n,), name=f"verify-boot-{n}", daemon=True) for n in (1, 2)]
        for thread in threads:
            thread.start()
        # Short joins keep the main thread responsive to signals; the first failure ends the wait (the undo then
        # stops the other boot's VM).
        while not errors and any(thread.is_alive() for thread in threads):
            next(thread for thread in threads if thread.is_alive()).join(timeout=0.5)
        if errors:
            raise errors[min(errors)]
    return [results[1], results[2]]


# ---------------------------------------------------------------- one boot

def _boot_once(ctx: BuildContext, image: Path, info: dict[str, Any], number: int, tempdir: Path,
               plan: Plan | None, settings: VerifySettings) -> _Boot:
    from snapbuild.sshkeys import KeyPair

    boot = _Boot()
    checks = boot.checks
    started = time.monotonic()
    overlay = tempdir / f"overlay-{number}.qcow2"
    grown = int(info["virtual-size"]) + GROW_BY_GIB * GIB
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", str(info["format"]), "-b", str(image.resolve()),
         str(overlay), str(grown)], timeout=60)
    user_key = KeyPair.generate(comment=f"snapbuild-verify-{number}")
    seed = write_seed(SeedSpec(user_data=verify_userdata(user_key.public_openssh), hostname=f"verify-{number}",
                               kind=settings.seed, public_keys=(user_key.public_openssh,)),
                      tempdir / f"seed-{number}.iso")
    spec = qemu.VMSpec(disk=overlay, memory_mb=settings.memory_mb, cpus=settings.cpus, seed=seed,
                       serial_log=tempdir / f"serial-{number}.log", firmware=settings.firmware,
                       network=settings.network, name=f"snapbuild-verify-{ctx.build_id}-{number}")
    vm = start_vm(ctx, spec, workdir=tempdir)
    ctx.monitor.line(f"boot {number}: {vm.accel.describe()}; {qemu.describe_network(settings.network)}; "
                      f"ssh on 127.0.0.1:{vm.ssh_port}")
    deadline = vm.started + settings.boot_timeout_s
    host_keys = wait_console_host_keys(vm, deadline)
    users = [plan.distro.default_user] if plan else sorted({d.default_user for d in DISTROS.values()})
    guest = connect_as_default_user(ctx, vm, users=users, key=user_key, host_keys=host_keys, deadline=deadline)
    boot.user = guest.user
    boot.seconds_to_ssh = time.monotonic() - vm.started
    ctx.monitor.line(f"boot {number}: SSH as {guest.user} after {boot.seconds_to_ssh:.1f} s")
    try:
        ci = guest.run(["cloud-init", "status", "--wait", "--long"], check=False,
                       timeout=settings.cloud_init_timeout_s)
        boot.cloud_init_rc, boot.cloud_init_report = ci.returncode, ci.stdout.strip()
        status_line = next((ln for ln in ci.stdout.splitlines() if ln.startswith("status:")), "")
        checks.append(CheckResult(name=f"boot {number}: cloud-init finished without errors", ok=ci.returncode == 0,
                                  detail=f"exit {ci.returncode} {status_line}".strip()))
        boot.machine_id = guest.read_file("/etc/machine-id").decode().strip()
        boot.host_keys = guest_host_keys(guest)
        if number == 1:
            checks.extend(first_boot_checks(guest, plan, user_key=user_key, grown_size=grown))
    finally:
        _power_off(guest, vm)
    boot.seconds = time.monotonic() - started
    return boot


def verify_userdata(public_key: str) -> str:
    """A fresh key for the distro's default user and the guest's own name in /etc/hosts, nothing else: the
    image's own configuration is under test.

    Why the hosts entry: sudo looks up the machine's name on every command, and a verify guest often has no DNS
    (`isolated`: restrict=on answers nothing) where a cloud's DHCP DNS would answer. An image without
    systemd-resolved (which answers for the local name itself) then spent a resolver timeout on each of verify's
    commands: minutes per boot (measured: 345 s of checks after SSH on Debian 12, isolated). cloud-init's
    `localhost` mode writes one 127.0.1.1 line, as Debian's installer does."""
    return ("#cloud-config\n"
            "# snapbuild verify: a fresh key for the default user; the guest's name resolves without DNS\n"
            "manage_etc_hosts: localhost\n"
            f"ssh_authorized_keys:\n  - {public_key.strip()}\n")


def wait_console_host_keys(vm: qemu.VM, deadline: float) -> tuple[str, ...]:
    """The host keys cloud-init prints on the serial console: the pins for this boot's first SSH connection."""
    from snapbuild.sshkeys import parse_console_host_keys

    userspace_by = vm.userspace_by(deadline)
    while time.monotonic() < deadline:
        keys = parse_console_host_keys(vm.serial_text())
        if keys:
            return keys
        problem = vm.boot_problem(userspace_by=userspace_by)   # firmware, panic, QEMU gone, no userspace
        if problem is not None:
            raise vm.boot_error(problem)
        time.sleep(0.5)   # polling the console log; bounded by the deadline
    raise BuildError("guest never printed its SSH host keys on the serial console (did it boot? is cloud-init's "
                     "keys_to_console on?)\nlast lines of the serial console:\n" + vm.serial_tail())


def connect_as_default_user(ctx: BuildContext, vm: qemu.VM, *, users: Sequence[str], key: KeyPair,
                            host_keys: Sequence[str], deadline: float) -> SSHGuest:
    """Log in as the default user; without a plan, try each distro's default user in turn."""
    last: BuildError | None = None
    while True:
        for user in users:
            # Host keys are printed after sshd is up, so a short attempt per user is enough.
            attempt_deadline = deadline if len(users) == 1 else min(deadline, time.monotonic() + 15)
            try:
                guest = ssh_connect(vm, user=user, key=key, host_keys=host_keys, deadline=attempt_deadline)
                ctx.add_undo(f"close SSH to {vm.spec.name}", guest.close)
                return guest
            except BuildError as exc:
                last = exc
        if time.monotonic() >= deadline or len(users) == 1:
            assert last is not None
            raise last


def guest_host_keys(guest: SSHGuest) -> tuple[str, ...]:
    done = guest.run(["sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"], check=False)
    return tuple(sorted(" ".join(line.split()[:2]) for line in done.stdout.splitlines() if line.strip()))


def first_boot_checks(guest: SSHGuest, plan: Plan | None, *, user_key: KeyPair, grown_size: int) -> list[CheckResult]:
    checks = [check_default_user(guest, plan), check_no_builder(guest, user_key), check_root_grown(guest, grown_size)]
    if plan is not None:
        os_release = parse_os_release(guest.read_file("/etc/os-release").decode(errors="replace"))
        found = (os_release.get("ID"), os_release.get("VERSION_ID"))
        checks.append(CheckResult(name="distro matches the recipe", ok=found == (plan.distro.id, plan.distro.version),
                                  detail=os_release.get("PRETTY_NAME", "")))
        checks.append(check_apt_sources_survived(guest, plan))
        resolver = check_resolver(guest, plan)
        if resolver is not None:
            checks.append(resolver)
        for argv in plan.verify_checks:
            checks.append(_recipe_check(guest, argv))
    return checks


LEGACY_SOURCES = "/etc/apt/sources.list"
SNAPBUILD_SOURCES_HEADER = "# Written by snapbuild "     # snapbuild.distros.Distro.archive_sources


def check_apt_sources_survived(guest: SSHGuest, plan: Plan) -> CheckResult:
    """The archive sources the build wrote are still there after first boot, byte for byte (cloud-init's apt
    module did not rewrite them from its template), and no legacy sources.list came back beside them."""
    path = plan.distro.sources_file
    name = "APT sources as the build wrote them after first boot"
    want = next((f.content for f in reversed(plan.files) if f.path == path), None)
    if want is None:
        return CheckResult(name=name, ok=True, detail=f"the plan writes no {path}")
    problems = []
    try:
        got = guest.read_file(path)
    except FileNotFoundError:
        got = None
        problems.append(f"{path} is gone")
    note = f"{path} unchanged"
    if got is not None and got != want:
        wanted, found = want.decode(errors="replace").splitlines(), got.decode(errors="replace").splitlines()
        if found and found[0].startswith(SNAPBUILD_SOURCES_HEADER) and found[0] != wanted[0]:
            # snapbuild's file from another mirror profile than this verify's (`--mirrors`): not cloud-init's
            note = f"{path} is snapbuild's ({found[0][2:]}; pass the build's --mirrors to compare it line by line)"
        else:
            differ = next((f"{w!r} became {g!r}" for w, g in zip(wanted, found, strict=False) if w != g),
                          "lines were added or removed")
            problems.append(f"{path} was rewritten at first boot ({differ})")
    if guest.exists(LEGACY_SOURCES):
        problems.append(f"{LEGACY_SOURCES} is back")
    return CheckResult(name=name, ok=not problems, detail="; ".join(problems) or f"{note}, no {LEGACY_SOURCES}")


def check_resolver(guest: SSHGuest, plan: Plan) -> CheckResult | None:
    """Where the distro's resolv.conf is systemd-resolved's stub symlink and the image runs resolved: the symlink is
    back (a chroot build replaces it while it works) and resolves to a file naming resolved's stub."""
    target = plan.distro.resolv_conf_symlink
    if target is None or guest.run(["systemctl", "cat", "systemd-resolved.service"], check=False).returncode != 0:
        return None
    link = guest.run(["readlink", "/etc/resolv.conf"], check=False).stdout.strip()
    content = guest.run(["cat", "/etc/resolv.conf"], check=False)
    stub = any(line.split()[:2] == ["nameserver", "127.0.0.53"] for line in content.stdout.splitlines())
    ok = link == target and content.returncode == 0 and stub
    return CheckResult(name="/etc/resolv.conf is systemd-resolved's stub symlink", ok=ok,
                       detail=f"-> {link or '(not a symlink)'}" + ("" if stub else "; no nameserver 127.0.0.53 in it"))


def check_default_user(guest: SSHGuest, plan: Plan | None) -> CheckResult:
    user = guest.user
    want: tuple[str, ...] = ()
    if plan is not None:
        want = tuple(plan.default_user_groups)
    done = guest.run(["id", "-nG", user], check=False)
    groups = set(done.stdout.split())
    missing = [g for g in want if g not in groups]
    return CheckResult(name=f"default user {user!r} exists with the recipe's groups",
                       ok=done.returncode == 0 and not missing,
                       detail=f"missing groups: {', '.join(missing)}" if missing else " ".join(sorted(groups)))


def check_no_builder(guest: SSHGuest, user_key: KeyPair) -> CheckResult:
    """No builder user, and no authorized key other than the one this boot handed in."""
    problems = []
    if guest.run(["getent", "passwd", BUILDER_USER], check=False).returncode == 0:
        problems.append(f"user {BUILDER_USER!r} exists")
    script = ("for f in /root/.ssh/authorized_keys* /home/*/.ssh/authorized_keys* "
              "/etc/ssh/authorized_keys* /var/lib/*/.ssh/authorized_keys*; do "
              "[ -f \"$f\" ] && sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' -e \"s|^|$f |\" \"$f\"; done; true")
    listed = guest.run(["sh", "-c", script], check=False).stdout
    fresh = user_key.public_openssh.split()[1]
    for line in listed.splitlines():
        path, _, entry = line.partition(" ")
        if fresh not in entry:
            problems.append(f"{path}: {shlex.quote(entry[:60])}")
    sudoers = guest.run(["sh", "-c", f"grep -rl -- {BUILDER_USER} /etc/sudoers /etc/sudoers.d 2>/dev/null; true"],
                        check=False).stdout.split()
    problems += [f"{path} mentions {BUILDER_USER}" for path in sudoers]
    return CheckResult(name="no builder user, key or sudo rule", ok=not problems,
                       detail="; ".join(problems) if problems else "only this boot's key is authorized")


def check_root_grown(guest: SSHGuest, disk_size: int) -> CheckResult:
    """The root filesystem fills the (bigger than the image) disk, less what other partitions hold."""
    fs = guest.run(["df", "-B1", "--output=size", "/"], check=False).stdout.split()
    disk = guest.run(["lsblk", "-bdno", "SIZE", "/dev/vda"], check=False).stdout.split()
    try:
        fs_size, disk_bytes = int(fs[-1]), int(disk[-1])
    except (IndexError, ValueError):
        return CheckResult(name="root filesystem grown to the disk", ok=False, detail="cannot read df/lsblk")
    # ext4 keeps a few % for metadata; other partitions (ESP, BIOS boot) are small. 85% of the disk is "grown",
    # since the image itself was GROW_BY_GIB smaller than this disk.
    ok = disk_bytes == disk_size and fs_size >= 0.85 * disk_bytes
    return CheckResult(name="root filesystem grown to the disk", ok=ok,
                       detail=f"root {fs_size / GIB:.2f} GiB on a {disk_bytes / GIB:.2f} GiB disk")


def _recipe_check(guest: SSHGuest, argv: Sequence[str]) -> CheckResult:
    try:
        done = guest.run(list(argv), check=False, timeout=300)
    except CommandFailed as exc:
        return CheckResult(name=f"recipe check: {shlex.join(argv)}", ok=False, detail=str(exc).splitlines()[0])
    return CheckResult(name=f"recipe check: {shlex.join(argv)}", ok=done.returncode == 0,
                       detail=f"exit {done.returncode}" + (f": {done.tail(2)}" if done.returncode else ""))


def compare_boots(boots: Sequence[_Boot], manifest: dict[str, Any] | None) -> list[CheckResult]:
    from snapbuild.sshkeys import fingerprint

    first, second = boots
    ids = [b.machine_id for b in boots]
    fresh_ids = all(len(i) == 32 and i != "uninitialized" for i in ids)
    checks = [CheckResult(name="machine-id is new on every first boot", ok=fresh_ids and ids[0] != ids[1],
                          detail=f"{ids[0][:8]}… vs {ids[1][:8]}…")]
    shared = set(first.host_keys) & set(second.host_keys)
    detail = f"{len(first.host_keys)} + {len(second.host_keys)} keys, {len(shared)} shared"
    ok = bool(first.host_keys) and bool(second.host_keys) and not shared
    builder_host = (manifest or {}).get("details", {}).get("builder_keys", {}).get("host")
    if builder_host:
        reused = [k for k in (*first.host_keys, *second.host_keys) if fingerprint(k) == builder_host]
        ok = ok and not reused
        detail += f"; builder host key {'REUSED' if reused else 'absent'}"
    checks.append(CheckResult(name="SSH host keys are new on every first boot", ok=ok, detail=detail))
    return checks


# ---------------------------------------------------------------- plumbing

def _tempdir(ctx: BuildContext) -> Path:
    import shutil
    import tempfile

    path = Path(tempfile.gettempdir()) / f"snapbuild-verify-{ctx.build_id}"
    ctx.add_undo(f"remove temp dir {path}", shutil.rmtree, path, True, forget=("tempdir", str(path)))
    ctx.ledger.record("tempdir", str(path))
    path.mkdir(mode=0o700)
    return path


def _power_off(guest: SSHGuest, vm: qemu.VM) -> None:
    try:
        guest.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=30)
    except Exception as exc:  # noqa: BLE001 - the connection drops as the guest goes down
        log.debug("poweroff: %s", exc)
    finally:
        guest.close()
    if vm.wait_exit(time.monotonic() + 120) is None:
        log.warning("verify VM did not power off in time; stopping it")
        vm.kill()


def check_image_offline(image: Path, fmt: str, plan: Plan | None) -> None:
    """Before anything boots: a disk image with a root file system, and (with a recipe) of the recipe's distro."""
    from snapbuild.host import baseprobe

    try:
        probe = baseprobe.probe_base(image, fmt)
    except baseprobe.Unreadable as exc:
        log.warning("%s not checked offline: cannot look inside it here (%s); booting it will tell", image, exc)
        return
    if plan is None:
        return
    if probe.os_release is None:
        log.warning(baseprobe.unread_note(probe.unread, image))
        return
    mismatch = baseprobe.distro_mismatch(probe.os_release, plan.distro, recipe=plan.recipe_name,
                                         supported=plan.recipe_distros, image=image, option="IMAGE",
                                         what="image")
    if mismatch is not None:
        raise mismatch


def _read_manifest(image: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = jsonlib.loads(manifest_path_for(image).read_text())
    except (OSError, ValueError):
        return None
    return data

