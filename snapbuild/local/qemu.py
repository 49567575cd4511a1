"""Launch a throw-away QEMU VM on this host: user networking, serial log, QMP for shutdown.

Networking is QEMU's user mode (slirp) either way, and nothing listens beyond 127.0.0.1 (the SSH forward is
bound there): `nat` gives the guest outbound access as a cloud server has (it reaches the host's loopback
at 10.0.2.2); `isolated` adds `restrict=on`, so the guest reaches only the profile's guest forwards (for
air-gapped hosts and for tests).

KVM is tried and TCG is the fallback: on some hosts /dev/kvm exists but a guest aborts on an MSR or hangs in
GRUB, so the decision is made by trying, cached for the process (and on disk per QEMU/kernel version) and
logged ("accel: tcg (kvm unusable: …)").
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from snapbuild import paths
from snapbuild.errors import BuildError, UserError
from snapbuild.host.commands import die_with_parent

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
HOSTFWD_ERROR = "Could not set up host forwarding rule"
# Serial console lines that prove the guest reached userspace. A bad KVM hangs in GRUB, or (seen on this
# machine) prints the kernel's first lines and stops: the kernel banner alone proves nothing. Real KVM gets here
# in a few seconds. Only lines the kernel or userspace print: GRUB says "Welcome to GRUB!", so a generic
# "Welcome to" let a KVM guest hung in the bootloader pass the trial (a CI build then waited 870 s for SSH).
BOOT_PROGRESS_MARKERS = ("Run /init as init process", "Run /sbin/init as init process", "systemd[1]: ",
                         "Cloud-init v. ", " login: ")


# Lines init itself prints (systemd, cloud-init, a login prompt): past them, a flaky KVM has not failed the guest.
INIT_MARKERS = ("systemd[1]: ", "Cloud-init v. ", " login: ")
INIT_GRACE_S = 10.0   # how long the trial watches a KVM guest past "Run /init" for them (real KVM: a second or two)


def reached_userspace(serial_text: str) -> bool:
    return any(marker in serial_text for marker in BOOT_PROGRESS_MARKERS)

Firmware = Literal["bios", "uefi"]
Accel = Literal["kvm", "tcg"]
Network = Literal["nat", "isolated"]
NETWORKS: tuple[Network, ...] = ("nat", "isolated")


def describe_network(network: Network) -> str:
    if network == "nat":
        return "network: nat (outbound through QEMU user-mode NAT; host loopback at 10.0.2.2)"
    return "network: isolated (restrict=on: only the profile's guest forwards)"


@dataclass(frozen=True, kw_only=True)
class GuestForward:
    """A service on the host's loopback that the guest reaches at guest_ip:guest_port (QEMU guestfwd)."""

    guest_ip: str
    guest_port: int
    host_ip: str
    host_port: int


KERNEL_PANIC = "Kernel panic - not syncing"
# Firmware verdicts, as this QEMU's firmware prints them on the serial console (captured by booting an empty
# qcow2 under TCG). SeaBIOS tries the hard disk first: its "Boot failed" right after "Booting from Hard Disk..."
# means the image itself cannot boot (~0.2 s after launch); a non-bootable seed CD-ROM also says "Boot failed",
# so only the hard disk's counts. OVMF names the disk "UEFI Misc Device" (virtio-blk) and then spends minutes on
# PXE and HTTP boot under TCG, so its first failure to load a disk entry is taken as the verdict.
# Whole lines only (\n at the end): the console is read while QEMU writes it.
_SEABIOS_DISK_FAILED = re.compile(r"Booting from Hard Disk\.\.\.\s*\n\s*(Boot failed: [^\n]*)\n")
_FIRMWARE_GAVE_UP = ("No bootable device.",                              # SeaBIOS, after every device
                     "No bootable option or device was found",           # OVMF (newer edk2)
                     "UEFI Interactive Shell")                           # OVMF fell through to its shell
_OVMF_DISK_FAILED = re.compile(r'(BdsDxe: failed to load Boot[0-9A-F]{4} "UEFI Misc Device[^"]*"[^\n]*)\n')
# Without any userspace line on the serial console by this share of the boot deadline (--boot-timeout: 300 s of
# the default 900), a boot is taken as hung (GRUB, a kernel that stopped). TCG reaches userspace in ~10-30 s
# here; a raised --boot-timeout raises this with it, for slow hosts.
USERSPACE_SHARE = 1 / 3


def boot_failure(serial_text: str) -> str | None:
    """Why the serial console shows a boot that will never finish, or None: the one place that decides it."""
    text = serial_text.replace("\r", "")
    if KERNEL_PANIC in text:
        line = next(ln for ln in text.splitlines() if KERNEL_PANIC in ln)
        return f"the guest kernel panicked ({line.strip()[:160]})"
    found = _SEABIOS_DISK_FAILED.search(text) or _OVMF_DISK_FAILED.search(text)
    if found:
        return f"the firmware cannot boot the disk ({found.group(1).strip()[:160]})"
    for marker in _FIRMWARE_GAVE_UP:
        if marker in text:
            return f"the firmware found nothing to boot ({marker.rstrip('.')})"
    return None


@dataclass(frozen=True, kw_only=True)
class VMSpec:
    disk: Path
    memory_mb: int = 2048
    cpus: int = 2
    seed: Path | None = None
    serial_log: Path
    network: Network                       # no default: every caller says whether the guest may go out
    ssh_port: int = 0                      # 0: pick a free port on 127.0.0.1 at launch
    forward_ssh: bool = True               # False: no port of the guest is reachable from this host at all
    guestfwds: tuple[GuestForward, ...] = ()
    firmware: Firmware = "bios"
    name: str = "snapbuild"                # appears in QEMU's cmdline (-name) so cleanup can recognise it


@dataclass(frozen=True, kw_only=True)
class AccelChoice:
    accel: Accel
    reason: str

    def describe(self) -> str:
        return f"accel: {self.accel} ({self.reason})"


# ---------------------------------------------------------------- accel decision

_accel_cache: AccelChoice | None = None


def _accel_cache_file() -> Path:
    key = f"{platform.release()}".replace("/", "_")
    return paths.cache_dir() / f"accel-{key}.json"


def kvm_available() -> str | None:
    """None when /dev/kvm can be opened read-write, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    os.close(fd)
    return None


def decide_accel(*, kvm_problem: str | None, cached_verdict: str | None, override: str | None) -> AccelChoice:
    """The pure decision: explicit override, then a known-bad KVM, then /dev/kvm, else try KVM."""
    if override in ("kvm", "tcg"):
        return AccelChoice(accel=override, reason="SNAPBUILD_ACCEL")  # type: ignore[arg-type]
    if cached_verdict:
        return AccelChoice(accel="tcg", reason=f"kvm unusable: {cached_verdict}")
    if kvm_problem:
        return AccelChoice(accel="tcg", reason=f"kvm unusable: {kvm_problem}")
    return AccelChoice(accel="kvm", reason="trying kvm; falls back to tcg if the guest does not boot")


def current_accel() -> AccelChoice:
    """The accel to launch with now (cached for the process)."""
    global _accel_cache
    if _accel_cache is None:
        verdict = None
        try:
            verdict = json.loads(_accel_cache_file().read_text()).get("kvm_unusable")
        except (OSError, ValueError):
            pass
        _accel_cache = decide_accel(kvm_problem=kvm_available(), cached_verdict=verdict,
                                    override=os.environ.get("SNAPBUILD_ACCEL"))
    return _accel_cache


def mark_kvm_unusable(reason: str) -> AccelChoice:
    """KVM was tried and failed: use TCG from now on (this process and later ones on this kernel)."""
    global _accel_cache
    _accel_cache = AccelChoice(accel="tcg", reason=f"kvm unusable: {reason}")
    try:
        path = _accel_cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"kvm_unusable": reason}))
    except OSError as exc:
        log.debug("cannot cache the accel decision: %s", exc)
    log.warning("%s", _accel_cache.describe())
    return _accel_cache


# ---------------------------------------------------------------- argv

def accel_args(accel: Accel) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # A 256 MiB translation cache instead of the default 1 GiB: half the memory, no visible slowdown.
    return ["-accel", "tcg,tb-size=256"]


def netdev_arg(ssh_port: int | None, guestfwds: Sequence[GuestForward], *, network: Network) -> str:
    """User-mode networking; the SSH forward (none when `ssh_port` is None) listens on 127.0.0.1 only."""
    parts = ["user", "id=n0", *(["restrict=on"] if network == "isolated" else []),
             *([f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22"] if ssh_port is not None else [])]
    for fwd in guestfwds:
        # Commas would end the option: socat's arguments here have none.
        parts.append(f"guestfwd=tcp:{fwd.guest_ip}:{fwd.guest_port}-cmd:socat - TCP:{fwd.host_ip}:{fwd.host_port}")
    return ",".join(parts)


def build_argv(spec: VMSpec, *, accel: Accel, ssh_port: int, qmp_socket: Path,
               efivars: Path | None = None) -> list[str]:
    """QEMU's command line for `spec`; no shell anywhere."""
    argv = [QEMU, "-name", spec.name, "-machine", "q35", *accel_args(accel),
            "-m", str(spec.memory_mb), "-smp", str(spec.cpus),
            # -nographic (not -display none): SeaBIOS then prints on the serial console too.
            "-nodefaults", "-nographic", "-monitor", "none",
            "-serial", f"file:{spec.serial_log}",
            # Relative to QEMU's cwd (the socket's directory): unix socket paths are limited to 107 bytes.
            "-qmp", f"unix:{qmp_socket.name},server=on,wait=off",
            "-drive", f"file={spec.disk},format=qcow2,if=none,id=disk0,cache=unsafe,discard=unmap,detect-zeroes=unmap",
            # bootindex: both firmwares try the disk first, so their first failure is the disk's (boot_failure).
            "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
            "-netdev", netdev_arg(ssh_port if spec.forward_ssh else None, spec.guestfwds, network=spec.network),
            # romfile= (none): no iPXE, so a disk that does not boot is not followed by a network boot.
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-device", "virtio-rng-pci"]   # entropy for sshd/cloud-init key generation on first boot
    if spec.seed is not None:
        # After the disk, so the disk stays /dev/vda and the first PCI slot (and boot entry).
        argv += ["-drive", f"file={spec.seed},format=raw,if=none,id=seed0,readonly=on,media=cdrom",
                 "-device", "virtio-blk-pci,drive=seed0"]
    if spec.firmware == "uefi":
        if efivars is None:
            raise ValueError("uefi needs a writable copy of the OVMF variables")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={efivars}"]
    return argv


# ---------------------------------------------------------------- ports

def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; QEMU may still lose the race, so launch retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Could a listener (QEMU binds with SO_REUSEADDR) take the port now? TIME_WAIT leftovers do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


# ---------------------------------------------------------------- QMP

class QMP:
    """Just enough QMP: greeting, capabilities, one command at a time."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        # Through /proc/self/fd: a deep temp dir would exceed the 107-byte limit of socket paths.
        dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.sock.connect(f"/proc/self/fd/{dirfd}/{path.name}")
        except BaseException:
            self.sock.close()
            raise
        finally:
            os.close(dirfd)
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return dict(msg)

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise BuildError(f"QMP {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()


# ---------------------------------------------------------------- the running VM

def tail_text(path: Path, lines: int = 25, max_bytes: int = 64 * 1024) -> str:
    """The last lines of a (serial) log, without escape sequences; "" when missing."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    text = "".join(ch for ch in text if ch == "\n" or ch == "\t" or ch.isprintable())
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


@dataclass
class VM:
    spec: VMSpec
    proc: subprocess.Popen[bytes]
    ssh_port: int
    accel: AccelChoice
    qmp_socket: Path
    stderr_path: Path
    argv: list[str]
    started: float = field(default_factory=time.monotonic)
    userspace_seen: bool = False

    def reached_userspace(self) -> bool:
        """The serial console has shown userspace (remembered: the marker scrolls out of any tail)."""
        if not self.userspace_seen:
            self.userspace_seen = reached_userspace(self.serial_text())
        return self.userspace_seen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def serial_tail(self, lines: int = 25) -> str:
        return tail_text(self.spec.serial_log, lines)

    def panicked(self) -> bool:
        """The guest kernel died (it then sits forever): no wait on this VM should run to its deadline."""
        return KERNEL_PANIC in self.serial_tail(60)

    def boot_problem(self, *, userspace_by: float | None = None) -> str | None:
        """Why this boot will never finish, or None while it still may.

        QEMU gone, the serial console's verdict (`boot_failure`), or no userspace by the monotonic `userspace_by`.
        """
        if not self.alive():
            self.proc.wait()
            return f"QEMU exited ({self.proc.returncode}): {_first_line(self.stderr_text()) or 'no message'}"
        problem = boot_failure(self.serial_recent())
        if problem is not None:
            return problem
        if userspace_by is not None and time.monotonic() >= userspace_by and not self.reached_userspace():
            return (f"the serial console showed no userspace within {userspace_by - self.started:.0f} s of launch "
                    "(hung in the boot loader or the kernel?)")
        return None

    def boot_error(self, problem: str) -> BuildError:
        """The error a wait raises for `problem`: what failed, then the console's tail."""
        hint = "see the serial console lines above"
        if problem.startswith("the firmware"):
            hint = "is the image a bootable disk (a cloud image, qcow2 or raw) for this firmware (bios/uefi)?"
        elif "no userspace" in problem:
            hint = ("a slow host (TCG) may need a longer --boot-timeout (a third of it is allowed for this); the "
                    "image's kernel and init must log to the serial console (console=ttyS0), as cloud images do")
        return BuildError(f"guest never booted: {problem}\nlast lines of the serial console:\n{self.serial_tail()}",
                          hint=hint)

    def userspace_by(self, deadline: float) -> float:
        """When a boot with a `deadline` (monotonic) must have shown userspace on its console at the latest."""
        return self.started + (deadline - self.started) * USERSPACE_SHARE

    def wait_userspace(self, deadline: float) -> None:
        """Return once the console shows userspace; raise `boot_error` at once when the boot has failed.

        Userspace must show on the console by `userspace_by(deadline)`.
        """
        userspace_by = self.userspace_by(deadline)
        while not self.reached_userspace():
            problem = self.boot_problem(userspace_by=userspace_by)
            if problem is not None:
                raise self.boot_error(problem)
            time.sleep(0.25)  # polling the serial log file; bounded by userspace_by

    def serial_text(self) -> str:
        try:
            return self.spec.serial_log.read_bytes().decode(errors="replace")
        except OSError:
            return ""

    def serial_recent(self, max_bytes: int = 64 * 1024) -> str:
        """The console's last bytes as written (escapes included; the last line may be incomplete)."""
        try:
            with self.spec.serial_log.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - max_bytes))
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def qmp(self, command: str, **arguments: Any) -> Any:
        client = QMP(self.qmp_socket)
        try:
            return client.execute(command, **arguments)
        finally:
            client.close()

    def powerdown(self) -> None:
        """ACPI power button (graceful)."""
        self.qmp("system_powerdown")

    def wait_exit(self, deadline: float) -> int | None:
        """Wait until QEMU exits or the monotonic deadline passes; the exit code or None."""
        while time.monotonic() < deadline:
            try:
                return self.proc.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()

    def kill(self, grace: float = 10.0) -> None:
        """Stop QEMU for sure: QMP quit, then TERM, then KILL, each with a deadline."""
        if not self.alive():
            self.proc.wait()
            return
        try:
            self.qmp("quit")
        except (OSError, BuildError, ValueError):
            pass
        if self.wait_exit(time.monotonic() + 2) is None:
            self.proc.terminate()
            if self.wait_exit(time.monotonic() + grace) is None:
                self.proc.kill()
                self.proc.wait(timeout=30)
        log.info("qemu pid %d stopped (rc %s)", self.pid, self.proc.returncode)

    def wait_for_boot_progress(self, deadline: float) -> bool:
        """True once the serial console shows the guest in userspace; False on exit, a failed boot or deadline."""
        while time.monotonic() < deadline:
            if self.reached_userspace():
                return True
            if self.boot_problem() is not None:
                return False
            time.sleep(0.25)  # polling the serial log file; bounded by the deadline
        return False

    def wait_for_init(self, deadline: float) -> None:
        """Until the console shows init's own lines (INIT_MARKERS), QEMU exits, the boot fails, or `deadline`."""
        while time.monotonic() < deadline and self.alive() and boot_failure(self.serial_recent()) is None:
            if any(marker in self.serial_text() for marker in INIT_MARKERS):
                return
            time.sleep(0.25)  # polling the serial log file; bounded by the deadline


def _spawn(spec: VMSpec, *, accel: AccelChoice, ssh_port: int, workdir: Path,
           on_started: Callable[[VM], None]) -> VM:
    qmp_socket = workdir / f"{spec.name}.qmp"
    qmp_socket.unlink(missing_ok=True)
    efivars = None
    if spec.firmware == "uefi":
        efivars = workdir / f"{spec.name}.efivars.fd"
        efivars.write_bytes(OVMF_VARS.read_bytes())
    argv = build_argv(spec, accel=accel.accel, ssh_port=ssh_port, qmp_socket=qmp_socket, efivars=efivars)
    stderr_path = workdir / f"{spec.name}.stderr"
    log.info("%s; qemu: %s", accel.describe(), " ".join(argv))
    err: IO[bytes]
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen([*die_with_parent(), *argv], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                cwd=qmp_socket.parent,
                                start_new_session=True)  # Ctrl-C reaches snapbuild, whose undo stops QEMU
    vm = VM(spec=spec, proc=proc, ssh_port=ssh_port, accel=accel, qmp_socket=qmp_socket,
            stderr_path=stderr_path, argv=argv)
    on_started(vm)
    return vm


def _wait_ready(vm: VM, deadline: float) -> str | None:
    """Wait until QEMU answers QMP (machine set up, forwarding bound); None, or why it failed."""
    while time.monotonic() < deadline:
        if not vm.alive():
            vm.proc.wait()
            return vm.stderr_text().strip() or f"qemu exited {vm.proc.returncode}"
        if vm.qmp_socket.exists():
            try:
                status = vm.qmp("query-status")
            except (OSError, ConnectionError, ValueError):
                pass
            else:
                log.debug("qemu pid %d ready: %s", vm.pid, status)
                return None
        time.sleep(0.1)  # QEMU's init is sub-second; bounded by the deadline
    return "qemu did not answer QMP in time"


def launch(spec: VMSpec, *, workdir: Path, on_started: Callable[[VM], None],
           on_stopped: Callable[[VM], None], port_attempts: int = 5, kvm_trial_s: float = 30.0) -> VM:
    """Start QEMU for `spec` and return the running VM.

    `on_started(vm)` runs right after the process exists (record it and register its undo there);
    `on_stopped(vm)` after a failed attempt has been killed. Retries: a lost port race (bounded), and one
    relaunch under TCG when KVM does not get a kernel running.
    """
    if spec.firmware == "uefi" and not OVMF_CODE.exists():
        raise UserError(f"UEFI firmware not found: {OVMF_CODE}", hint="apt-get install ovmf")
    accel = current_accel()
    last_error = ""
    for _attempt in range(port_attempts):
        port = spec.ssh_port or free_port()
        vm = _spawn(spec, accel=accel, ssh_port=port, workdir=workdir, on_started=on_started)
        problem = _wait_ready(vm, time.monotonic() + 30)
        if problem is not None:
            vm.kill()
            on_stopped(vm)
            last_error = problem
            if HOSTFWD_ERROR in problem and not spec.ssh_port:
                log.info("port %d was taken before QEMU bound it; retrying with another", port)
                continue
            if accel.accel == "kvm":
                accel = mark_kvm_unusable(_first_line(problem))
                continue
            raise BuildError(f"qemu failed to start: {problem}")
        if accel.accel == "kvm" and "SNAPBUILD_ACCEL" not in os.environ:
            failure = kvm_trial(vm, kvm_trial_s)
            if failure is not None:
                vm.kill()
                on_stopped(vm)
                if failure.blame_kvm:
                    accel = mark_kvm_unusable(failure.reason)
                else:
                    # The image's fault or KVM's: TCG gives the second opinion, for this guest only (a bad image
                    # fails the same way there, and its error then shows the console); nothing is cached.
                    accel = AccelChoice(accel="tcg", reason=f"the boot under kvm failed ({failure.reason}); "
                                                            "trying tcg for this guest")
                    log.warning("%s", accel.describe())
                continue
        log.info("qemu pid %d up, %s, %s, ssh on 127.0.0.1:%d", vm.pid, accel.describe(),
                 describe_network(spec.network), port)
        return vm
    raise BuildError(f"qemu failed to start after {port_attempts} attempts: {last_error}")


@dataclass(frozen=True, kw_only=True)
class TrialFailure:
    reason: str
    blame_kvm: bool    # False: the console shows the boot failing, which a bad image does under TCG as well


def kvm_trial(vm: VM, trial_s: float) -> TrialFailure | None:
    """Why this guest cannot stay on KVM, or None when the trial passes.

    KVM fails by QEMU exiting (this machine: "failed to set MSR 0x10a", then an abort), or by a guest that never
    reaches userspace (hung in GRUB or right after the kernel banner): KVM is to blame, and the verdict is cached.
    A boot the console shows failing (no bootable disk, a kernel panic) may be the image's own fault or a flaky
    KVM's (a CI host's KVM has passed a trial and then failed the guest): the guest boots again under TCG, and
    nothing is cached, since nothing may blame KVM for a bad image for good.
    """
    reached = vm.wait_for_boot_progress(time.monotonic() + trial_s)
    if reached:
        # A flaky KVM has failed a guest right after its kernel started init: watch until init speaks (images
        # without systemd or cloud-init pass when the grace ends).
        vm.wait_for_init(time.monotonic() + INIT_GRACE_S)
    if not vm.alive():
        vm.proc.wait()
        return TrialFailure(reason=_first_line(vm.stderr_text()) or
                            f"qemu exited {vm.proc.returncode} during the KVM trial", blame_kvm=True)
    problem = boot_failure(vm.serial_recent())
    if problem is not None:
        return TrialFailure(reason=problem, blame_kvm=False)
    if reached:
        return None
    return TrialFailure(reason=f"the guest did not reach userspace on the serial console within {trial_s:.0f} s",
                        blame_kvm=True)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip() and "warning:" not in line:
            return line.strip()[:200]
    return text.strip()[:200]
