"""`snapbuild base debian-12|debian-13`: a sealed, cloud-init-enabled Debian cloud image built from a Debian archive.

Disk layout like Ubuntu's cloud images (GPT: 14 BIOS boot, 15 EFI system, 1 root ext4 `cloudimg-rootfs` last so it
can grow); boots under BIOS (grub-pc) and UEFI (a standalone GRUB at the removable path, no NVRAM entry needed).
What is configured inside differs per distro (snapbuild.local.baselayout): debian-12 Debian's classic way,
debian-13 shaped like Ubuntu's cloud image.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from snapbuild import paths
from snapbuild.errors import BuildError, UserError
from snapbuild.host import loopdisk as disk
from snapbuild.host.commands import require_tools, run
from snapbuild.host.compact import run_convert
from snapbuild.host.images import image_info
from snapbuild.host.mounts import remove_tree
from snapbuild.host.sizes import parse_size
from snapbuild.local import baselayout
from snapbuild.local.baselayout import DEBIAN_CLASSIC, UBUNTU_SHAPED, Layout
from snapbuild.run.context import BuildContext, Reporter, new_context, running_build
from snapbuild.run.progress import progress
from snapbuild.run.scope import UndoScope

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOT_LABEL = "cloudimg-rootfs"
# no_timer_check: under emulation (TCG) on a busy host the kernel's IO-APIC timer check can fail and panic
# ("IO-APIC + timer doesn't work"); virtual machines do not need that check.
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0 no_timer_check"
# Ubuntu's order on disk: BIOS boot and EFI first, root last (so growpart can extend it), root numbered 1.
LAYOUT = (
    disk.Partition(number=14, size_mib=4, type_code="ef02", name="BIOS boot"),
    disk.Partition(number=15, size_mib=106, type_code="ef00", name="EFI system"),
    disk.Partition(number=1, size_mib=None, type_code="8300", name=ROOT_LABEL),
)
HOST_TOOLS = ("debootstrap", "sgdisk", "losetup", "partx", "mkfs.ext4", "mkfs.vfat", "mcopy", "mmd", "blkid",
              "qemu-img", "fstrim", "chroot", "mount", "umount")


@dataclass(frozen=True, kw_only=True)
class Distro:
    name: str
    suite: str
    packages: tuple[str, ...]
    security_suite: str
    layout: Layout


# Everything a cloud image needs, named explicitly: debootstrap does not resolve virtual packages, hence
# python3-cffi-backend for cloud-init. `locales` ships so cloud-init's locale module works even when the
# user-data does not set `locale: C.UTF-8` (the image's own default is C.UTF-8, see the drop-in below).
DEBIAN_12 = Distro(
    name="debian-12",
    suite="bookworm",
    security_suite="bookworm-security",
    packages=(
        "systemd-sysv", "udev", "dbus", "linux-image-cloud-amd64", "initramfs-tools",
        "grub-pc", "grub-efi-amd64-bin",
        "openssh-server", "cloud-init", "python3-cffi-backend", "cloud-guest-utils", "e2fsprogs",
        "ifupdown", "isc-dhcp-client", "iproute2", "netbase", "qemu-guest-agent",
        "sudo", "ca-certificates", "gnupg", "curl", "locales", "procps",
    ),
    layout=DEBIAN_CLASSIC,
)
# Ubuntu-shaped: netplan.io (rendering for systemd-networkd, netplan's default, as on Ubuntu) instead of ifupdown;
# systemd-resolved, its own package since bookworm; dhcpcd-base, the DHCP client cloud-init's ephemeral DHCP
# prefers (Ubuntu 24.04 ships it too, and trixie's installer moved to it from isc-dhcp-client).
DEBIAN_13 = Distro(
    name="debian-13",
    suite="trixie",
    security_suite="trixie-security",
    packages=(
        "systemd-sysv", "udev", "dbus", "linux-image-cloud-amd64", "initramfs-tools",
        "grub-pc", "grub-efi-amd64-bin",
        "openssh-server", "cloud-init", "python3-cffi-backend", "cloud-guest-utils", "e2fsprogs",
        "netplan.io", "systemd-resolved", "dhcpcd-base", "iproute2", "netbase", "qemu-guest-agent",
        "sudo", "ca-certificates", "gnupg", "curl", "locales", "procps",
    ),
    layout=UBUNTU_SHAPED,
)
DISTROS = {d.name: d for d in (DEBIAN_12, DEBIAN_13)}


@dataclass(frozen=True, kw_only=True)
class BaseImageResult:
    path: Path
    distro: str
    virtual_size: int
    file_size: int
    root_uuid: str
    seconds: float
    step_seconds: dict[str, float]


def build_base_image(*, distro: str, output: Path, mirror: str = DEFAULT_MIRROR, size: str = "2G",
                     cache_dir: Path | None = None, force: bool = False, security_mirror: str | None = None,
                     reporter: Reporter | None = None) -> BaseImageResult:
    """Build `output` (compressed qcow2). Validates everything before creating anything (UserError, exit 2)."""
    spec = DISTROS.get(distro)
    if spec is None:
        raise UserError(f"unknown distro {distro!r}", hint=f"available: {', '.join(sorted(DISTROS))}")
    if os.geteuid() != 0:
        raise UserError("building a base image needs root (loop devices, mounts, chroot)", hint="run it with sudo")
    output = output.absolute()
    if output.exists() and not force:
        raise UserError(f"{output} already exists", hint="pass --force to overwrite it")
    if not output.parent.is_dir():
        raise UserError(f"directory {output.parent} does not exist")
    size_bytes = parse_size(size, default_unit="M")   # `--size 2048` has always meant MiB here
    if size_bytes < 1024 * disk.MIB:
        raise UserError(f"size {size} is too small", hint="a Debian cloud image needs at least 1G")
    if not mirror.startswith(("http://", "https://", "file:/")):
        raise UserError(f"mirror {mirror!r} is not an http(s):// or file:/ URL")
    require_tools(*HOST_TOOLS)
    if security_mirror is None and mirror.rstrip("/") == DEFAULT_MIRROR:
        security_mirror = "http://deb.debian.org/debian-security"
    cache = (cache_dir or paths.cache_dir()) / "debootstrap"

    reporter = reporter or Reporter()
    ctx = new_context(builder="base", recipe=distro, monitor=reporter,
                      cleanup_command="snapbuild cleanup --host --build-id {build_id}")
    start = time.monotonic()
    with running_build(ctx):
        work = _tempdir(ctx, output.parent)
        raw = work / "disk.raw"
        root = work / "root"
        with ctx.step("partition"):
            with open(raw, "wb") as handle:
                handle.truncate(size_bytes)
            disk.create_gpt(raw, LAYOUT)
            device = disk.attach_loop(raw, ctx.add_undo, ctx.ledger.record)
            root_dev = disk.partition_node(device, 1)
            efi_dev = disk.partition_node(device, 15)
            run(["mkfs.ext4", "-q", "-L", ROOT_LABEL, "-E", "lazy_itable_init=0,lazy_journal_init=0", root_dev])
            run(["mkfs.vfat", "-F", "32", "-n", "EFI", efi_dev])
            root_uuid = disk.fs_uuid(root_dev)
            # A mount stack of its own: it must come off before the loop device detaches, and on success before
            # convert.
            mounts = UndoScope(ctx.ledger)
            ctx.add_undo("unmount the image", mounts.stack.close)
            disk.mount(root_dev, root, mounts.add_undo, ctx.ledger.record)
        with ctx.step("debootstrap"):
            debootstrap(spec, root, mirror=mirror, cache=cache, reporter=reporter)
        with ctx.step("configure"):
            disk.bind_system_dirs(root, mounts.add_undo, ctx.ledger.record)
            with no_daemons(root):
                configure(spec, root, mirror=mirror, security_mirror=security_mirror)
        with ctx.step("bootloader"):
            install_bootloader(root, device=device, efi_device=efi_dev)
        with ctx.step("seal"):
            seal(root, spec.layout)
            check_sealed(root)
            run(["sync", "--file-system", str(root)])
            run(["fstrim", str(root)])  # deleted files stay in the raw file otherwise
            mounts.stack.close()
            verify_on_disk(root_dev)
        with ctx.step("convert"):
            partial = output.with_name(f".{output.name}.{ctx.build_id}.partial")
            done = ctx.own("file", str(partial), f"remove {partial}", partial.unlink, True)
            with progress(reporter, "convert", total=100, unit="%") as bar:
                run_convert(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd",
                             str(raw), str(partial)], timeout=1800, on_percent=bar.set)
            os.replace(partial, output)
            done.release()
    virtual = int(image_info(output)["virtual-size"])
    return BaseImageResult(path=output, distro=distro, virtual_size=virtual, file_size=output.stat().st_size,
                           root_uuid=root_uuid, seconds=time.monotonic() - start,
                           step_seconds={t.name: t.seconds for t in ctx.timings})


def _tempdir(ctx: BuildContext, near: Path) -> Path:
    # Next to the output: the raw disk is as big as the virtual size (sparse) and convert reads it at once.
    path = Path(tempfile.mkdtemp(prefix=".snapbuild-base-", dir=near))
    ctx.own("tempdir", str(path), f"remove {path}", remove_tree, path)
    return path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builds that share a package cache (debootstrap is not safe against itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_key(spec: Distro, mirror: str) -> str:
    return hashlib.sha256(f"{spec.suite}\n{mirror.rstrip('/')}".encode()).hexdigest()[:16]


def debootstrap(spec: Distro, root: Path, *, mirror: str, cache: Path, reporter: Reporter) -> None:
    """debootstrap, cached twice: the .debs (per suite+mirror) and the bootstrapped tree itself.

    The tree's tarball is keyed by suite, mirror, package list and the mirror's InRelease digest, so it is
    exactly what debootstrap would install now; a point release or a new package list makes a new one.
    """
    archives = cache / f"{spec.suite}-{cache_key(spec, mirror)}"
    archives.mkdir(parents=True, exist_ok=True)
    release = _release_digest(spec, mirror)
    tarball = None
    if release:
        key = hashlib.sha256("\n".join([spec.suite, mirror.rstrip("/"), release, *spec.packages]).encode())
        tarball = cache / f"rootfs-{spec.suite}-{key.hexdigest()[:16]}.tar.zst"
    with _locked(cache / ".lock"):
        if tarball and tarball.exists():
            reporter.line(f"reusing the bootstrapped tree {tarball}")
            run(["tar", "--zstd", "--extract", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
                 "--file", str(tarball), "--directory", str(root)], timeout=1800)
            return
        before = len(list(archives.glob("*.deb")))
        reporter.line(f"{mirror} {spec.suite}, {before} packages cached in {archives}")
        done = run(["debootstrap", "--variant=minbase", "--merged-usr", f"--cache-dir={archives}",
                    f"--include={','.join(spec.packages)}", "--components=main",
                    spec.suite, str(root), mirror], check=False, timeout=3600)
        if done.returncode != 0:
            debootstrap_log = root / "debootstrap/debootstrap.log"
            tail = debootstrap_log.read_text(errors="replace")[-3000:] if debootstrap_log.exists() else done.tail(30)
            raise BuildError(f"debootstrap {spec.suite} from {mirror} failed:\n{tail}",
                             hint="check that the mirror serves this suite and that the listed packages exist")
        after = len(list(archives.glob("*.deb")))
        reporter.line(f"{after - before} packages downloaded")
        if tarball:
            _save_tree(root, tarball)


def _release_digest(spec: Distro, mirror: str) -> str | None:
    """sha256 of the suite's InRelease, or None (then the tree is not cached; debootstrap reports the mirror)."""
    url = f"{mirror.rstrip('/')}/dists/{spec.suite}/InRelease"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the user's own mirror URL
            return hashlib.sha256(response.read()).hexdigest()
    except (OSError, ValueError) as exc:
        log.info("no InRelease from %s (%s): not caching the bootstrapped tree", url, exc)
        return None


def _save_tree(root: Path, tarball: Path) -> None:
    partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.partial")
    try:
        run(["tar", "--zstd", "--create", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
             "--one-file-system", "--file", str(partial), "--directory", str(root), "."], timeout=1800)
        os.replace(partial, tarball)
    finally:
        partial.unlink(missing_ok=True)
    # One tree per suite is enough: older ones belong to an older point release or package list.
    for old in tarball.parent.glob(f"rootfs-{tarball.name.split('-')[1]}-*.tar.zst"):
        if old != tarball:
            old.unlink()


def chroot(root: Path, *argv: str, timeout: float | None = 600) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
           "HOME": "/root"}
    return run(["chroot", str(root), *argv], env=env, timeout=timeout).stdout


def write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    target.write_text(text)
    os.chmod(target, mode)


@contextmanager
def no_daemons(root: Path) -> Iterator[None]:
    """Package scripts must not start services inside the chroot: policy-rc.d says no, removed after."""
    policy = root / "usr/sbin/policy-rc.d"
    write(root, "/usr/sbin/policy-rc.d", "#!/bin/sh\n# snapbuild: no daemons in a build chroot\nexit 101\n", 0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def configure(spec: Distro, root: Path, *, mirror: str, security_mirror: str | None) -> None:
    layout = spec.layout
    for path, text in baselayout.apt_files(layout, suite=spec.suite, security_suite=spec.security_suite,
                                           mirror=mirror, security_mirror=security_mirror).items():
        write(root, path, text)
    write(root, "/etc/fstab", f"LABEL={ROOT_LABEL}\t/\text4\tdefaults,discard,errors=remount-ro\t0 1\n")
    write(root, "/etc/hostname", "localhost\n")
    write(root, "/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                              "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
    for path, text in baselayout.network_files(layout).items():
        write(root, path, text)
    write(root, baselayout.CLOUD_CFG_PATH, baselayout.cloud_cfg(layout))
    write(root, "/etc/default/locale", "LANG=C.UTF-8\n")
    write(root, "/etc/locale.gen", "en_US.UTF-8 UTF-8\n")
    chroot(root, "locale-gen")
    # The initramfs was made before /etc/fstab existed: without it the fsck hook leaves fsck out.
    chroot(root, "update-initramfs", "-u", timeout=900)
    # sshd refuses to start without host keys; cloud-init makes them, this covers a boot without cloud-init.
    write(root, "/etc/systemd/system/ssh.service.d/10-snapbuild-hostkeys.conf",
          "[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n")
    # grub-pc must never try to install itself into whatever disk it sees on a later upgrade.
    run(["chroot", str(root), "debconf-set-selections"],
        stdin=b"grub-pc grub-pc/install_devices multiselect \n"
              b"grub-pc grub-pc/install_devices_empty boolean true\n")
    chroot(root, "systemctl", "enable", *baselayout.enabled_units(layout))
    masked = baselayout.masked_units(layout)
    if masked:
        chroot(root, "systemctl", "mask", *masked)


GRUB_DEFAULT = f"""\
# snapbuild: a cloud image boots from whatever disk it lands on, so the kernel finds root by label.
# GRUB_DEVICE overrides the probed device (sourced after probing), so update-grub never writes /dev/loopNpM.
GRUB_DEVICE=LABEL={ROOT_LABEL}
GRUB_DISABLE_LINUX_UUID=true
GRUB_DISABLE_LINUX_PARTUUID=true
GRUB_DISABLE_RECOVERY=true
GRUB_DISABLE_OS_PROBER=true
GRUB_TIMEOUT=0
GRUB_TIMEOUT_STYLE=menu
GRUB_CMDLINE_LINUX_DEFAULT="{KERNEL_CMDLINE}"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1"
"""

# The EFI binary finds the root filesystem by label and reads the same grub.cfg the BIOS path uses. `prefix`
# stays in the binary's memdisk, which holds every x86_64-efi module grub.cfg may `insmod`.
EFI_STUB_CFG = f"""\
search --no-floppy --label {ROOT_LABEL} --set=root
configfile ($root)/boot/grub/grub.cfg
"""


def install_bootloader(root: Path, *, device: str, efi_device: str) -> None:
    write(root, "/etc/default/grub.d/50-snapbuild.cfg", GRUB_DEFAULT)
    chroot(root, "grub-install", "--target=i386-pc", "--modules=part_gpt ext2", device)
    chroot(root, "update-grub")
    cfg = (root / "boot/grub/grub.cfg").read_text()
    if f"root=LABEL={ROOT_LABEL}" not in cfg or "/dev/loop" in cfg:
        raise BuildError("generated grub.cfg does not find root by label", hint="see boot/grub/grub.cfg in the image")
    # UEFI: a standalone GRUB (modules in its memdisk) at the removable path, so no NVRAM entry is needed.
    write(root, "/tmp/snapbuild-efi-stub.cfg", EFI_STUB_CFG)
    chroot(root, "grub-mkstandalone", "--format=x86_64-efi", "--output=/tmp/BOOTX64.EFI", "--locales=",
           "--fonts=", "--themes=", "--modules=part_gpt ext2 search_label normal configfile",
           "boot/grub/grub.cfg=/tmp/snapbuild-efi-stub.cfg")
    efi_binary = root / "tmp/BOOTX64.EFI"
    run(["mmd", "-i", efi_device, "::/EFI", "::/EFI/BOOT"])
    run(["mcopy", "-i", efi_device, str(efi_binary), "::/EFI/BOOT/BOOTX64.EFI"])
    efi_binary.unlink()
    (root / "tmp/snapbuild-efi-stub.cfg").unlink()


def seal(root: Path, layout: Layout) -> None:
    """Leave the image as a cloud image ships: nothing that identifies this build or this host."""
    chroot(root, "apt-get", "clean")
    _empty_dir(root / "var/lib/apt/lists", keep=("lock",))
    (root / "var/lib/apt/lists/partial").mkdir(exist_ok=True)
    _empty_dir(root / "var/lib/cloud")
    _empty_dir(root / "tmp")
    _empty_dir(root / "var/tmp")
    for log_file in ("var/log/cloud-init.log", "var/log/cloud-init-output.log", "var/log/bootstrap.log"):
        (root / log_file).unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # Empty machine-id: systemd makes a fresh one on first boot; D-Bus follows it through the symlink.
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (root / "var/lib/systemd/random-seed").unlink(missing_ok=True)
    stub = baselayout.resolv_conf_symlink(layout)
    if stub is None:
        # debootstrap copied the build host's resolver; DHCP writes the real one at boot.
        write(root, "/etc/resolv.conf", "# written by the DHCP client at boot\n")
    else:
        # resolved's postinst made the stub symlink and copied the host's resolver under the image's own /run
        # (a tmpfs hides it at boot, but it is this build's data): the link stays, /run on disk is emptied.
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.symlink_to(stub)
        if not os.path.ismount(root / "run"):
            _empty_dir(root / "run")
    (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
    for history in (root / "root").glob(".*_history"):
        history.unlink()
    # Logs of the bootstrap itself (dpkg, alternatives, apt) are this build's history, not the image's.
    for log_path in (root / "var/log").rglob("*"):
        if log_path.is_file() and not log_path.is_symlink():
            if log_path.suffix in (".gz", ".xz", ".old") or "/journal/" in str(log_path):
                log_path.unlink()
            else:
                log_path.write_bytes(b"")


def verify_on_disk(root_dev: str) -> None:
    """Read the unmounted filesystem back: clean, and grub.cfg really there (not only in a page cache)."""
    run(["e2fsck", "-f", "-n", root_dev], timeout=600)
    cfg = run(["debugfs", "-R", "cat /boot/grub/grub.cfg", root_dev]).stdout
    if f"root=LABEL={ROOT_LABEL}" not in cfg:
        raise BuildError("boot/grub/grub.cfg is empty or wrong on disk after unmount",
                         hint="the image would not boot; retry the build and report it")


def _empty_dir(path: Path, keep: tuple[str, ...] = ()) -> None:
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def check_sealed(root: Path) -> None:
    """Refuse to ship an image that breaks the sealing policy (the same checker `snapbuild inspect` runs)
    or that lacks what a cloud image needs to boot and be reached."""
    from snapbuild.sealing import checker

    problems = [f"{v['path']}: {v['detail']}" for v in checker.check_root(str(root))]
    for needed in ("usr/sbin/sshd", "usr/bin/cloud-init", "usr/bin/growpart", "boot/grub/grub.cfg",
                   "boot/grub/i386-pc/core.img"):
        if not (root / needed).exists():
            problems.append(f"/{needed} missing")
    if not list((root / "boot").glob("vmlinuz-*")):
        problems.append("no kernel in /boot")
    if problems:
        raise BuildError("image not sealed: " + "; ".join(problems))
