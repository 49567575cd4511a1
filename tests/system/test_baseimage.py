"""The base images, for real: their disk layout, their sealed contents, and a TCG boot under BIOS and UEFI.

The tiers' base (debian-13) in the system tier, debian-12 in `tox -e full` (one base image per CI run); what only
one of them has is in test_baseimage_debian13.py / test_baseimage_debian12.py. The boots here are `full` too: under
TCG each costs about two minutes, and .ci/run boots the tiers' base under UEFI in test_baseimage_debian13.py (with
these checks) and under BIOS in every vm-tier test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from snapbuild.errors import UserError
from snapbuild.host import loopdisk as disk
from snapbuild.host.commands import run
from snapbuild.local.baseimage import ROOT_LABEL, build_base_image
from tests import imagecache

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts)"),
]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
# Fail at once instead of waiting out the deadline in a GRUB menu or after a panic.
BOOT_FAILURES = r"Failed to boot both|Kernel panic|error: no such device|error: file `/boot/vmlinuz|ALERT!"
BOOT_DEADLINE_S = 420.0  # TCG on a shared 2-core host; a quiet machine needs ~60 s


def _undo_adapter(stack: ExitStack) -> Callable[..., None]:
    def add_undo(description: str, func: Callable[..., Any], *args: Any, forget: object = None) -> None:
        stack.callback(func, *args)
    return add_undo


def _no_record(*args: Any, **kwargs: Any) -> None:
    return None


def raw_copy(image: Path, directory: Path) -> Path:
    """The qcow2 image as a raw disk in `directory` (the cached image stays untouched)."""
    raw = directory / "disk.raw"
    run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)])
    return raw


@contextmanager
def mounted_read_only(raw: Path, target: Path) -> Iterator[str]:
    """The raw disk's root filesystem mounted read-only at `target`, via loop + partx; yields the loop device.
    Everything undone on the way out, and checked."""
    with ExitStack() as stack:
        add_undo = _undo_adapter(stack)
        device = disk.attach_loop(raw, add_undo, _no_record)
        disk.mount(disk.partition_node(device, 1), target, add_undo, _no_record, options=["-o", "ro"])
        yield device
    assert not disk.is_mounted(target)
    assert not disk.is_attached(device)


@pytest.fixture(scope="module", params=[imagecache.TIER_DISTRO, pytest.param("debian-12", marks=pytest.mark.full)])
def base_image(request: pytest.FixtureRequest) -> Path:
    return imagecache.base_image(request.param)


@pytest.fixture(scope="module")
def raw_image(base_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return raw_copy(base_image, tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def mounted_root(raw_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The image's root filesystem mounted read-only; everything undone after."""
    target = tmp_path_factory.mktemp("mnt") / "root"
    with mounted_read_only(raw_image, target) as device:
        yield device, target


def test_image_is_compressed_qcow2_of_requested_size(base_image: Path) -> None:
    info = json.loads(run(["qemu-img", "info", "--output=json", str(base_image)]).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 2 * 1024**3
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    assert base_image.stat().st_size < 600 * 1024**2


def test_gpt_layout_like_ubuntu(raw_image: Path) -> None:
    table = disk.partition_table(raw_image)
    rows = {int(m.group(1)): m for m in re.finditer(
        r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+([0-9A-F]{4})\s+(.*)$", table, re.MULTILINE)}
    assert set(rows) == {1, 14, 15}, table
    assert rows[14].group(4) == "EF02" and rows[15].group(4) == "EF00" and rows[1].group(4) == "8300"
    assert rows[1].group(5).strip() == ROOT_LABEL
    # Root is last on disk so growpart can extend it.
    assert int(rows[1].group(2)) > int(rows[15].group(2)) > int(rows[14].group(2))


def test_filesystems(mounted_root: tuple[str, Path]) -> None:
    device, _ = mounted_root
    assert disk.fs_label(disk.partition_node(device, 1)) == ROOT_LABEL
    assert run(["blkid", "-o", "value", "-s", "TYPE", disk.partition_node(device, 1)]).stdout.strip() == "ext4"
    efi = disk.partition_node(device, 15)
    assert run(["blkid", "-o", "value", "-s", "TYPE", efi]).stdout.strip() == "vfat"
    listing = run(["mdir", "-i", efi, "-b", "::/EFI/BOOT"]).stdout
    assert "BOOTX64.EFI" in listing.upper()


def test_contents_and_seal(mounted_root: tuple[str, Path]) -> None:
    _, root = mounted_root
    for path in ("usr/sbin/sshd", "usr/bin/cloud-init", "usr/bin/growpart", "usr/bin/curl", "usr/bin/gpg",
                 "usr/bin/sudo", "boot/grub/i386-pc/core.img"):
        assert (root / path).exists(), path
    assert list((root / "boot").glob("vmlinuz-*-cloud-amd64"))
    assert (root / "etc/machine-id").read_text() == ""
    dbus_id = root / "var/lib/dbus/machine-id"
    assert not dbus_id.exists() or (dbus_id.is_symlink() and os.readlink(dbus_id) == "/etc/machine-id")
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not (root / "var/lib/cloud").exists() or not any((root / "var/lib/cloud").iterdir())
    assert not any((root / "tmp").iterdir())
    assert not [p for p in (root / "var/lib/apt/lists").iterdir() if p.name not in ("lock", "partial")]
    assert f"LABEL={ROOT_LABEL}" in (root / "etc/fstab").read_text()
    grub_cfg = (root / "boot/grub/grub.cfg").read_text()
    assert f"root=LABEL={ROOT_LABEL}" in grub_cfg and "console=ttyS0,115200" in grub_cfg
    assert "/dev/loop" not in grub_cfg
    assert not (root / "etc/resolv.conf").is_file() or "nameserver" not in (root / "etc/resolv.conf").read_text()
    cloud_cfg = (root / "etc/cloud/cloud.cfg.d/90_snapbuild.cfg").read_text()
    assert "NoCloud" in cloud_cfg and "ConfigDrive" in cloud_cfg and "OpenStack" in cloud_cfg


USER_DATA = """\
#cloud-config
runcmd:
  - [sh, -c, 'echo "SNAPBUILD-CHECK ip=$(hostname -I | cut -d" " -f1) mid=$(wc -c < /etc/machine-id) \
keys=$(ls /etc/ssh/ssh_host_*_key | wc -l) rootmb=$(df -BM --output=size / | tail -1 | tr -dc 0-9) \
ssh=$(systemctl is-active ssh)" > /dev/ttyS0']
final_message: "SNAPBUILD-FINAL after $UPTIME s"
"""


def _seed_iso(directory: Path) -> Path:
    (directory / "seed").mkdir()
    (directory / "seed/user-data").write_text(USER_DATA)
    (directory / "seed/meta-data").write_text("instance-id: iid-test-base\nlocal-hostname: basetest\n")
    iso = directory / "seed.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o", str(iso), str(directory / "seed")])
    return iso


def _wait_for(serial: Path, proc: subprocess.Popen[bytes], pattern: str, deadline: float) -> re.Match[str]:
    while True:
        text = serial.read_text(errors="replace") if serial.exists() else ""
        found = re.search(pattern, text)
        if found:
            return found
        broken = re.search(BOOT_FAILURES, text)
        if broken:
            pytest.fail(f"boot failed ({broken.group(0)!r}); serial tail:\n{text[-3000:]}")
        if proc.poll() is not None:
            pytest.fail(f"QEMU exited {proc.returncode} before {pattern!r}; serial tail:\n{text[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} on the serial console in time; serial tail:\n{text[-3000:]}")
        time.sleep(0.5)


@pytest.mark.full
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boots_under_tcg_with_cloud_init(firmware: str, base_image: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    # A bigger overlay than the image: growpart must extend the root partition on first boot.
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base_image), "-F", "qcow2",
         str(overlay), "3G"])
    serial = tmp_path / "serial.log"
    argv = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-accel", "tcg,tb-size=256",
            "-m", "1024", "-smp", "1", "-nographic", "-monitor", "none", "-serial", f"file:{serial}",
            "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={_seed_iso(tmp_path)},if=virtio,format=raw,readonly=on"]
    if firmware == "uefi":
        vars_copy = tmp_path / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={vars_copy}"]
    start = time.monotonic()
    deadline = start + BOOT_DEADLINE_S
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(serial, proc, r"Linux version \S+", deadline)
        kernel_s = time.monotonic() - start
        check = _wait_for(serial, proc, r"SNAPBUILD-CHECK ip=(\S*) mid=(\d+) keys=(\d+) rootmb=(\d+) ssh=(\w+)",
                          deadline)
        _wait_for(serial, proc, r"SNAPBUILD-FINAL", deadline)
        login = _wait_for(serial, proc, r"login:", deadline)
        login_s = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    print(f"\n{firmware}: kernel after {kernel_s:.1f} s, login prompt after {login_s:.1f} s", file=sys.stderr)
    assert login
    ip, machine_id_len, keys, root_mb, ssh = check.groups()
    # restrict=on: QEMU's DHCP then offers no router and no DNS, so only the address can be checked.
    assert ip.startswith("10.0.2."), "DHCP on the first NIC without network-config"
    assert machine_id_len == "33", "a fresh machine-id on first boot"
    assert int(keys) >= 2, "cloud-init generated SSH host keys"
    assert int(root_mb) > 2500, "growpart extended the root filesystem to the 3G disk"
    assert ssh == "active"


def test_refuses_existing_output_before_creating_anything(tmp_path: Path) -> None:
    output = tmp_path / "exists.qcow2"
    output.write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists"):
        build_base_image(distro="debian-12", output=output, cache_dir=tmp_path / "cache")
    assert output.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.qcow2"]


def test_refuses_unknown_distro_and_bad_size(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown distro"):
        build_base_image(distro="debian-99", output=tmp_path / "x.qcow2")
    with pytest.raises(UserError, match="cannot read size 'lots'"):
        build_base_image(distro="debian-12", output=tmp_path / "x.qcow2", size="lots")
    assert not list(tmp_path.iterdir())


def test_refuses_non_root(tmp_path: Path) -> None:
    # A real unprivileged process (setpriv), not a patched geteuid.
    code = ("from pathlib import Path\nfrom snapbuild.errors import UserError\n"
            "from snapbuild.local.baseimage import build_base_image\n"
            "try:\n    build_base_image(distro='debian-12', output=Path('/tmp/never.qcow2'))\n"
            "except UserError as e:\n    print('USERERROR', e.exit_code, e)\n")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                          check=False, capture_output=True, text=True, timeout=60,
                          cwd=str(Path(__file__).resolve().parents[2]), env={"PATH": os.environ["PATH"]})
    assert "USERERROR 2 building a base image needs root" in done.stdout, done.stderr
    assert not Path("/tmp/never.qcow2").exists()
