"""Pure pieces of the chroot builder: paths inside an image root, sizes, root partition choice, resolv.conf,
command lines, and the undo scope's rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapbuild.errors import BuildError, UserError
from snapbuild.guest.chroot import ChrootGuest, EscapesRoot, resolve_inside
from snapbuild.host import grow, mounts
from snapbuild.host.attach import qsd_argv
from snapbuild.host.compact import convert_argv
from snapbuild.host.sizes import parse_size
from snapbuild.run.scope import undo_scope


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "run/systemd/resolve").mkdir(parents=True)
    (r / "etc/hostname").write_text("image\n")
    os.symlink("/etc", r / "abs")
    os.symlink("../../../../../../etc", r / "etc/up")
    os.symlink("/loop-a", r / "loop-b")
    os.symlink("/loop-b", r / "loop-a")
    return r


def test_absolute_and_climbing_symlinks_stay_inside_the_root(root: Path) -> None:
    assert resolve_inside(root, "/abs/hostname") == root / "etc/hostname"
    assert resolve_inside(root, "/etc/up/hostname") == root / "etc/hostname"
    assert resolve_inside(root, "/../../etc/./hostname") == root / "etc/hostname"
    assert resolve_inside(root, "/abs", follow_last=False) == root / "abs"
    with pytest.raises(EscapesRoot):
        resolve_inside(root, "/loop-a/x")
    with pytest.raises(ValueError):
        resolve_inside(root, "etc/hostname")


def test_guest_files_follow_image_links_not_host_links(root: Path) -> None:
    os.symlink("/etc/hostname", root / "etc/link")
    guest = ChrootGuest(root)
    assert guest.read_file("/etc/link") == b"image\n"
    assert guest.exists("/abs/hostname") and not guest.exists("/etc/resolv.conf")


def test_the_chroot_command_starts_from_an_empty_environment(root: Path) -> None:
    argv = ChrootGuest(root).command(["apt-get", "update"], {"http_proxy": "http://127.0.0.1:3142"})
    assert argv[:4] == ["chroot", str(root), "/usr/bin/env", "-i"]
    assert "DEBIAN_FRONTEND=noninteractive" in argv and "HOME=/root" in argv and "LANG=C.UTF-8" in argv
    assert argv[-3:] == ["http_proxy=http://127.0.0.1:3142", "apt-get", "update"]


@pytest.mark.parametrize(("text", "expected"), [("10G", 10 << 30), ("512M", 512 << 20), ("2.5G", 5 << 29),
                                                ("1073741824", 1 << 30), ("4GiB", 4 << 30), ("1t", 1 << 40)])
def test_sizes_read_like_qemu_img(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_an_unreadable_size_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot read size"):
        parse_size("ten gigs")


def part(number: int, fstype: str, label: str = "", size: int = 1 << 30) -> grow.Partition:
    return grow.Partition(number=number, device=f"/dev/loop0p{number}", fstype=fstype, label=label, size=size)


def test_root_is_the_labelled_partition_else_the_largest_ext4() -> None:
    image = Path("x.qcow2")
    assert grow.choose_root([part(15, "vfat"), part(1, "ext4", "cloudimg-rootfs", 1 << 20), part(2, "ext4")],
                            image).number == 1
    assert grow.choose_root([part(15, "vfat"), part(1, "ext4", size=1 << 20), part(3, "ext4", size=1 << 31)],
                            image).number == 3


@pytest.mark.parametrize(("parts", "message"), [
    ([], "no partition table"),
    ([part(1, "vfat"), part(2, "LVM2_member")], "on LVM"),
    ([part(1, "xfs", "cloudimg-rootfs")], "is xfs, not ext4"),
    ([part(1, "btrfs")], "is btrfs, not ext4"),
])
def test_layouts_the_builder_cannot_grow_are_refused(parts: list[grow.Partition], message: str) -> None:
    with pytest.raises(UserError, match=message):
        grow.choose_root(parts, Path("x.qcow2"))


def test_resolv_conf_uses_the_hosts_servers_or_resolveds_upstream(tmp_path: Path) -> None:
    host = tmp_path / "resolv.conf"
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("nameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch corp.example\n")
    host.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n")
    text = mounts.resolv_text(host, upstream)
    assert "nameserver 192.0.2.1\nnameserver 192.0.2.2\n" in text and "127.0.0.53" not in text
    host.write_text("nameserver 10.0.0.2\n")
    assert "nameserver 10.0.0.2\n" in mounts.resolv_text(host, upstream)
    host.write_text("nameserver 127.0.0.53\n")
    assert "nameserver 127.0.0.53\n" in mounts.resolv_text(host, tmp_path / "absent")


def test_set_aside_puts_back_a_dangling_symlink_exactly(root: Path) -> None:
    target = root / "etc/resolv.conf"
    os.symlink("../run/systemd/resolve/stub-resolv.conf", target)
    with undo_scope(None) as scope:
        mounts.set_aside(scope, target, b"nameserver 192.0.2.1\n", 0o644)
        assert not target.is_symlink() and target.read_bytes() == b"nameserver 192.0.2.1\n"
        assert os.readlink(root / "etc/resolv.conf.snapbuild-orig") == "../run/systemd/resolve/stub-resolv.conf"
        target.write_text("changed by provisioning\n")
    assert os.readlink(target) == "../run/systemd/resolve/stub-resolv.conf"
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["hostname", "resolv.conf", "up"]


def test_set_aside_removes_a_file_that_was_not_there(root: Path) -> None:
    target = root / "usr/sbin/policy-rc.d"
    with undo_scope(None) as scope:
        mounts.set_aside(scope, target, mounts.POLICY_RC_D, 0o755)
        assert os.access(target, os.X_OK)
    assert not os.path.lexists(target)


def test_a_failed_undo_fails_a_successful_scope_but_never_hides_the_original_error() -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("device busy")

    with pytest.raises(BuildError, match="cleanup failed: umount: device busy"), undo_scope(None) as scope:
        scope.add_undo("umount", broken)
        scope.add_undo("second", ran.append, "second")
    with pytest.raises(KeyError), undo_scope(None) as scope:
        scope.add_undo("umount", broken)
        scope.add_undo("first", ran.append, "first")
        raise KeyError("original")
    assert ran == ["second", "first"]


def test_keep_on_failure_keeps_everything() -> None:
    ran: list[str] = []
    with pytest.raises(RuntimeError), undo_scope(None, keep_on_failure=True) as scope:
        scope.add_undo("x", ran.append, "x")
        raise RuntimeError
    assert ran == []


def test_storage_daemon_exports_with_discard_on_both_nodes() -> None:
    argv = qsd_argv(Path("/w/a,b.qcow2"), Path("/w/disk.raw"), read_only=False, pidfile=Path("/w/p"))
    assert argv == [
        "qemu-storage-daemon",
        "--blockdev", "driver=file,filename=/w/a,,b.qcow2,node-name=file,discard=unmap",
        "--blockdev", "driver=qcow2,file=file,node-name=fmt,discard=unmap",
        "--export", "type=fuse,id=exp,node-name=fmt,mountpoint=/w/disk.raw,writable=on",
        "--pidfile", "/w/p",
    ]
    ro = qsd_argv(Path("/b.qcow2"), Path("/w/base.raw"), read_only=True, pidfile=Path("/w/p"))
    assert ro[2].endswith(",read-only=on") and ro[4].endswith(",read-only=on") and ro[6].endswith("writable=off")


def test_compaction_command_per_compression() -> None:
    src, dst = Path("w.qcow2"), Path("o.qcow2")
    assert convert_argv(src, dst, "zstd")[-5:] == ["-c", "-o", "compression_type=zstd", "w.qcow2", "o.qcow2"]
    assert convert_argv(src, dst, "zlib")[-3:] == ["-c", "w.qcow2", "o.qcow2"]
    assert "-c" not in convert_argv(src, dst, "none")
    with pytest.raises(UserError):
        convert_argv(src, dst, "xz")
