"""The offline base-image probe's pure parts: os-release (symlinks resolved inside the image), the distro
check's message and hint, partition tables and file system signatures on small files made here."""

from __future__ import annotations

import logging
import random
import struct
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from snapbuild.distros import DISTROS
from snapbuild.errors import UserError
from snapbuild.host import baseprobe
from snapbuild.host.baseprobe import (
    DirTree,
    FoundPartition,
    Unreadable,
    distro_mismatch,
    parse_os_release,
    pick_root,
    read_layout,
    read_os_release,
    read_partition_table,
    sniff_filesystem,
)

MIB = 1 << 20
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'


def _file_read(path: Path) -> baseprobe.Read:
    def read(offset: int, length: int) -> bytes:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        return data + bytes(length - len(data))
    return read


# ---------------------------------------------------------------- os-release

def test_os_release_parsing_strips_quotes_and_skips_comments() -> None:
    text = "# written by hand\nID=ubuntu\nVERSION_ID='24.04'\nPRETTY_NAME=\"Ubuntu 24.04 LTS\"\nbroken line\n"
    assert parse_os_release(text) == {"ID": "ubuntu", "VERSION_ID": "24.04", "PRETTY_NAME": "Ubuntu 24.04 LTS"}


def test_os_release_follows_the_usual_relative_symlink(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib/os-release").write_text(DEBIAN)
    (tmp_path / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert read_os_release(DirTree(tmp_path)) == parse_os_release(DEBIAN)


def test_an_absolute_symlink_resolves_inside_the_image_not_on_this_host(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib/os-release").write_text("ID=imageos\nVERSION_ID=7\n")
    (tmp_path / "etc/os-release").symlink_to("/usr/lib/os-release")
    # `..` above the image's root stays at its root, as in a chroot.
    (tmp_path / "etc/escape").symlink_to("../../../../usr/lib/os-release")
    assert read_os_release(DirTree(tmp_path)) == {"ID": "imageos", "VERSION_ID": "7"}
    node = baseprobe.resolve(DirTree(tmp_path), "/etc/escape")
    assert node == tmp_path / "usr/lib/os-release"


def test_os_release_falls_back_to_usr_lib_and_is_none_when_absent(tmp_path: Path) -> None:
    assert read_os_release(DirTree(tmp_path)) is None
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    assert read_os_release(DirTree(tmp_path)) == {"ID": "debian", "VERSION_ID": "12"}


def test_a_symlink_loop_is_unreadable_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").symlink_to("os-release2")
    (tmp_path / "etc/os-release2").symlink_to("os-release")
    with pytest.raises(Unreadable, match="too many symlinks"):
        read_os_release(DirTree(tmp_path))


# ---------------------------------------------------------------- distro check

def test_the_matching_distro_passes() -> None:
    assert distro_mismatch(parse_os_release(DEBIAN), DISTROS["debian-12"], recipe="base",
                           supported=("ubuntu-24.04", "debian-12"), image="d.qcow2") is None


def test_a_debian_base_for_an_ubuntu_recipe_suggests_distro_debian_12() -> None:
    error = distro_mismatch(parse_os_release(DEBIAN), DISTROS["ubuntu-24.04"], recipe="base",
                            supported=("ubuntu-24.04", "debian-12"), image="debian-12.qcow2")
    assert isinstance(error, UserError)
    assert error.message == ("base image debian-12.qcow2 is Debian GNU/Linux 12 (bookworm), but recipe 'base' "
                             "is for Ubuntu 24.04")
    assert error.hint is not None
    assert "--distro debian-12" in error.hint and "an Ubuntu 24.04 image as --base" in error.hint


def test_a_distro_the_recipe_does_not_support_lists_what_it_does() -> None:
    error = distro_mismatch(parse_os_release(DEBIAN), DISTROS["ubuntu-24.04"], recipe="noble-only",
                            supported=("ubuntu-24.04",), image="d.qcow2")
    assert error is not None and error.hint is not None
    assert "--distro" not in error.hint
    assert "does not support Debian 12 (it supports ubuntu-24.04)" in error.hint


def test_an_unknown_distro_or_version_names_what_snapbuild_builds() -> None:
    for os_release in ({"ID": "fedora", "VERSION_ID": "40", "PRETTY_NAME": "Fedora Linux 40"},
                       {"ID": "debian", "VERSION_ID": "11"}):
        error = distro_mismatch(os_release, DISTROS["debian-12"], recipe="base",
                                supported=("ubuntu-24.04", "debian-12"), image="x.img")
        assert error is not None and error.hint is not None
        assert "--distro" not in error.hint
        assert "snapbuild builds ubuntu-24.04, debian-12" in error.hint
    assert "is debian 11," in str(error)


def test_the_verify_wording_names_the_image_and_its_argument() -> None:
    error = distro_mismatch(parse_os_release(DEBIAN), DISTROS["ubuntu-24.04"], recipe="base", supported=(),
                            image="out.qcow2", option="IMAGE", what="image")
    assert error is not None and error.hint is not None
    assert error.message.startswith("image out.qcow2 is Debian")
    assert error.hint.endswith("an Ubuntu 24.04 image as IMAGE")


# ---------------------------------------------------------------- partition tables

def _mbr(entries: list[tuple[int, int, int]], *, boot: int = 0) -> bytearray:
    sector = bytearray(512)
    for index, (kind, lba, count) in enumerate(entries):
        struct.pack_into("<B3xB3xII", sector, 446 + 16 * index, boot, kind, lba, count)
    sector[510:512] = b"\x55\xaa"
    return sector


def test_an_mbr_with_a_linux_partition(tmp_path: Path) -> None:
    disk = tmp_path / "mbr.img"
    disk.write_bytes(bytes(_mbr([(0x83, 2048, 4096), (0x05, 8192, 2048)])) + bytes(8 * MIB))
    table = read_partition_table(_file_read(disk), disk.stat().st_size)
    assert table is not None and table.kind == "dos"
    assert [(e.number, e.start, e.size, e.type) for e in table.entries] == [(1, MIB, 2 * MIB, "0x83")]


def _gpt_disk(path: Path, parts: list[tuple[uuid.UUID, int, int]], size: int = 8 * MIB) -> None:
    data = bytearray(size)
    data[:512] = _mbr([(0xEE, 1, size // 512 - 1)])
    header = bytearray(92)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    data[512:512 + 92] = header
    for index, (kind, first, last) in enumerate(parts):
        at = 1024 + 128 * index
        data[at:at + 16] = kind.bytes_le
        struct.pack_into("<QQ", data, at + 32, first, last)
    path.write_bytes(bytes(data))


LINUX_FS = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")


def test_a_gpt_header_at_lba1_wins_and_empty_entries_are_skipped(tmp_path: Path) -> None:
    disk = tmp_path / "gpt.img"
    _gpt_disk(disk, [(uuid.UUID(int=0), 0, 0), (LINUX_FS, 2048, 6143)])
    table = read_partition_table(_file_read(disk), disk.stat().st_size)
    assert table is not None and table.kind == "gpt"
    assert [(e.number, e.start, e.size, e.type) for e in table.entries] == [(2, MIB, 2 * MIB, str(LINUX_FS))]


def test_zeros_random_bytes_and_a_bare_boot_sector_have_no_table(tmp_path: Path) -> None:
    size = 4 * MIB
    assert read_partition_table(lambda o, n: bytes(n), size) is None
    noise = random.Random(11).randbytes(64 * 1024)
    assert read_partition_table(lambda o, n: noise[o:o + n], size) is None
    # A FAT boot sector has the 55AA signature too, but its "entries" are code: no table.
    boot_sector = bytearray(random.Random(5).randbytes(512))
    boot_sector[510:512] = b"\x55\xaa"
    assert read_partition_table(lambda o, n: bytes(boot_sector + bytes(1024))[o:o + n], size) is None
    # A partition past the end of the disk is no table either.
    assert read_partition_table(lambda o, n: bytes(_mbr([(0x83, 2048, 10**6)]) + bytes(1024))[o:o + n], size) is None


def test_read_layout_refuses_a_file_that_is_not_a_disk_image(tmp_path: Path) -> None:
    noise = tmp_path / "noise.img"
    noise.write_bytes(random.Random(3).randbytes(MIB))
    with pytest.raises(UserError, match="is not a disk image \\(no partition table\\)"):
        read_layout(_file_read(noise), MIB, noise)


# ---------------------------------------------------------------- file systems and the root

def _ext_superblock(incompat: int, label: bytes) -> bytes:
    head = bytearray(baseprobe.SNIFF_BYTES)
    head[0x438:0x43A] = b"\x53\xef"
    struct.pack_into("<III", head, 0x45C, 0x4, incompat, 0)
    head[0x478:0x478 + len(label)] = label
    return bytes(head)


def test_file_system_signatures() -> None:
    size = baseprobe.SNIFF_BYTES
    assert sniff_filesystem(_ext_superblock(0x2C2, b"cloudimg-rootfs")) == ("ext4", "cloudimg-rootfs")
    assert sniff_filesystem(_ext_superblock(0x2, b"")) == ("ext3", "")
    xfs = bytearray(size)
    xfs[:4], xfs[0x6C:0x70] = b"XFSB", b"root"
    assert sniff_filesystem(bytes(xfs)) == ("xfs", "root")
    btrfs = bytearray(size)
    btrfs[0x10040:0x10048], btrfs[0x1012B:0x1012F] = b"_BHRfS_M", b"fedo"
    assert sniff_filesystem(bytes(btrfs)) == ("btrfs", "fedo")
    lvm = bytearray(size)
    lvm[512:520], lvm[536:544] = b"LABELONE", b"LVM2 001"
    assert sniff_filesystem(bytes(lvm)) == ("LVM2_member", "")
    assert sniff_filesystem(bytes(size)) == ("", "")


def _part(number: int, fstype: str, label: str = "", size: int = MIB) -> FoundPartition:
    return FoundPartition(number=number, start=number * MIB, size=size, fstype=fstype, label=label)


def test_the_root_is_the_labelled_one_else_the_largest_linux_file_system() -> None:
    parts = [_part(1, "ext4", size=9 * MIB), _part(2, "xfs", "cloudimg-rootfs"), _part(15, "vfat", size=99 * MIB)]
    assert pick_root(parts, "x").number == 2
    assert pick_root([_part(1, "btrfs", size=3 * MIB), _part(2, "ext4", size=2 * MIB), _part(3, "swap", size=8 * MIB)],
                     "x").number == 1


def test_no_root_file_system_is_a_user_error_naming_what_is_there() -> None:
    with pytest.raises(UserError, match="no partition table"):
        pick_root([], "empty.qcow2")
    with pytest.raises(UserError, match="LVM"):
        pick_root([_part(1, "vfat"), _part(2, "LVM2_member")], "lvm.qcow2")
    with pytest.raises(UserError, match=r"no root file system found \(p1=vfat, p2=\?\)"):
        pick_root([_part(1, "vfat"), _part(2, "")], "odd.qcow2")


def test_a_raw_gpt_disk_with_an_xfs_root_probes_without_any_tool(tmp_path: Path) -> None:
    disk = tmp_path / "xfs.img"
    _gpt_disk(disk, [(LINUX_FS, 2048, 6143)])
    with disk.open("r+b") as handle:
        handle.seek(MIB)
        handle.write(b"XFSB")
    probe = baseprobe.probe_base(disk, "raw", mount_if_root=False)
    assert (probe.table, probe.root.number, probe.root.fstype) == ("gpt", 1, "xfs")
    assert probe.os_release is None and "does not read xfs" in probe.unread


# ---------------------------------------------------------------- the local builder's use of it

def _state(tmp_path: Path, distro: str) -> SimpleNamespace:
    return SimpleNamespace(settings=SimpleNamespace(base=tmp_path / "base.qcow2"), base_info={"format": "qcow2"},
                           plan=SimpleNamespace(distro=DISTROS[distro], recipe_name="base",
                                                recipe_distros=("ubuntu-24.04", "debian-12")))


def _fake_probe(os_release: dict[str, str] | None, unread: str = "") -> baseprobe.BaseProbe:
    root = _part(1, "ext4", "cloudimg-rootfs")
    return baseprobe.BaseProbe(image=Path("base.qcow2"), format="qcow2", table="gpt", partitions=(root,), root=root,
                               os_release=os_release, unread=unread)


def test_local_preflight_refuses_a_base_of_another_distro(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapbuild.local.build import check_base

    monkeypatch.setattr(baseprobe, "probe_base", lambda image, fmt: _fake_probe(parse_os_release(DEBIAN)))
    with pytest.raises(UserError, match=r"is Debian GNU/Linux 12 .*recipe 'base' is for Ubuntu 24.04") as caught:
        check_base(_state(tmp_path, "ubuntu-24.04"))  # type: ignore[arg-type]
    assert caught.value.hint is not None and "--distro debian-12" in caught.value.hint
    check_base(_state(tmp_path, "debian-12"))  # type: ignore[arg-type]


def test_local_preflight_says_in_one_line_when_the_distro_stays_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from snapbuild.local.build import check_base

    monkeypatch.setattr(baseprobe, "probe_base",
                        lambda image, fmt: _fake_probe(None, "the offline reader does not read xfs; reading it "
                                                             "needs root (a read-only mount)"))
    with caplog.at_level(logging.WARNING):
        check_base(_state(tmp_path, "ubuntu-24.04"))  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1
    assert "not checked offline" in lines[0] and "needs root" in lines[0] and "once the guest is up" in lines[0]


def test_the_plan_knows_its_recipes_distros() -> None:
    from snapbuild.plan import plan_from_names
    from snapbuild.recipes import Library

    plan = plan_from_names(library=Library([RECIPES]), recipe_name="base", distro_name="debian-12",
                           profile_name="upstream", config_variables={}, set_values={})
    assert plan.recipe_distros == ("ubuntu-24.04", "debian-12", "debian-13")
