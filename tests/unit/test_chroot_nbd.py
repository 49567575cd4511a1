"""The nbd backend against a fake /sys and /dev (this host has no nbd): device choice, locking, the exact
qemu-nbd commands, and the checks that prove the device is ours and then free again."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from snapbuild.errors import BuildError, UserError
from snapbuild.guest.base import Completed
from snapbuild.host import attach as attaching
from snapbuild.ledger import Ledger
from snapbuild.run.scope import Scope, undo_scope

IMAGE = Path("/images/work.qcow2")


@dataclass
class FakeKernel:
    """Plays the nbd driver: `qemu-nbd --connect` makes /sys/block/nbdN/pid appear, --disconnect removes it."""

    root: Path
    calls: list[list[str]] = field(default_factory=list)
    ledger_at_connect: list[tuple[str, str]] = field(default_factory=list)
    ledger: Ledger | None = None
    shows_pid: bool = True
    lets_go: bool = True

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def dev(self) -> Path:
        return self.root / "dev"

    def add(self, n: int, *, size: int = 0, pid: int | None = None) -> None:
        block = self.sys / "block" / f"nbd{n}"
        block.mkdir(parents=True)
        (block / "size").write_text(f"{size}\n")
        if pid is not None:
            (block / "pid").write_text(f"{pid}\n")
        self.dev.mkdir(exist_ok=True)
        (self.dev / f"nbd{n}").touch()

    def __call__(self, argv: list[str], **_: object) -> Completed:
        self.calls.append(list(argv))
        if argv[0] == "qemu-nbd" and argv[1].startswith("--connect="):
            if self.ledger:
                self.ledger_at_connect = [(e.kind, e.ref) for e in self.ledger.entries()]
            block = self.sys / "block" / Path(argv[1].split("=", 1)[1]).name
            (block / "size").write_text("4194304\n")
            if self.shows_pid:
                (block / "pid").write_text("4242\n")
        elif argv[:2] == ["qemu-nbd", "--disconnect"] and self.lets_go:
            block = self.sys / "block" / Path(argv[2]).name
            (block / "pid").unlink(missing_ok=True)
            (block / "size").write_text("0\n")
        return Completed(argv=tuple(argv), returncode=0, stdout="", stderr="")


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(root=tmp_path)


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ledger:
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))
    return Ledger.create(build_id="b1", builder="chroot", recipe="test")


def connect(kernel: FakeKernel, scope: Scope, **options: Any) -> attaching.Attached:
    return attaching.attach_nbd(scope, IMAGE, runner=kernel, sysfs_root=kernel.sys, dev_root=kernel.dev,
                                lock_dir=kernel.root / "lock", **options)


@pytest.fixture
def held_lock(kernel: FakeKernel) -> Iterator[Path]:
    """Another build holding nbd0's lock."""
    path = kernel.root / "lock" / "snapbuild-nbd0.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield path


def test_connects_the_first_free_device_with_discard_and_disconnects_after(kernel: FakeKernel,
                                                                         ledger: Ledger) -> None:
    kernel.add(0, size=2097152, pid=999)     # in use by someone else
    kernel.add(1)
    kernel.ledger = ledger
    with undo_scope(ledger) as scope:
        attached = connect(kernel, scope)
        assert attached.device == str(kernel.dev / "nbd1") and attached.partition(2).endswith("nbd1p2")
        assert ledger.entries()[0].info["pid"] == 4242
    dev = str(kernel.dev / "nbd1")
    assert kernel.calls == [
        ["qemu-nbd", f"--connect={dev}", "--discard=unmap", "--format=qcow2", str(IMAGE)],
        ["qemu-nbd", "--disconnect", dev],
    ]
    assert kernel.ledger_at_connect == [("nbd", dev)]     # written down before it was made
    assert ledger.entries() == []
    assert not (kernel.sys / "block/nbd1/pid").exists()


def test_read_only_connect_passes_read_only(kernel: FakeKernel) -> None:
    kernel.add(0)
    with undo_scope(None) as scope:
        connect(kernel, scope, read_only=True, fmt="raw")
    assert kernel.calls[0] == ["qemu-nbd", f"--connect={kernel.dev / 'nbd0'}", "--discard=unmap", "--format=raw",
                               "--read-only", str(IMAGE)]


def test_a_device_locked_by_another_build_is_skipped(kernel: FakeKernel, held_lock: Path) -> None:
    kernel.add(0)
    kernel.add(1)
    with undo_scope(None) as scope:
        assert connect(kernel, scope).device.endswith("nbd1")


def test_the_lock_is_held_while_attached_and_released_after(kernel: FakeKernel) -> None:
    kernel.add(0)
    lock = kernel.root / "lock" / "snapbuild-nbd0.lock"
    with undo_scope(None) as scope:
        connect(kernel, scope)
        with open(lock, "a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_no_free_device_is_a_clear_error(kernel: FakeKernel, held_lock: Path) -> None:
    kernel.add(0)
    kernel.add(1, size=8, pid=77)
    with pytest.raises(BuildError, match="no free nbd device"), undo_scope(None) as scope:
        connect(kernel, scope)
    assert kernel.calls == []


def test_a_connect_the_kernel_does_not_confirm_is_undone(kernel: FakeKernel, ledger: Ledger) -> None:
    kernel.add(0)
    kernel.shows_pid = False
    with pytest.raises(BuildError, match="shows no pid"), undo_scope(ledger) as scope:
        connect(kernel, scope, connect_timeout=0.2)
    assert kernel.calls[-1] == ["qemu-nbd", "--disconnect", str(kernel.dev / "nbd0")]
    assert ledger.entries() == []


def test_a_device_that_stays_connected_fails_the_undo_and_stays_in_the_ledger(kernel: FakeKernel,
                                                                          ledger: Ledger) -> None:
    kernel.add(0)
    kernel.lets_go = False
    with pytest.raises(BuildError, match=r"cleanup failed.*still connected"), undo_scope(ledger) as scope:
        connect(kernel, scope, disconnect_timeout=0.2)
    assert [(e.kind, e.ref) for e in ledger.entries()] == [("nbd", str(kernel.dev / "nbd0"))]


def test_auto_picks_nbd_only_where_dev_nbd0_exists(tmp_path: Path) -> None:
    assert attaching.resolve_backend("auto", dev_root=tmp_path) == "loop"
    assert attaching.resolve_backend("loop", dev_root=tmp_path) == "loop"
    with pytest.raises(UserError, match="no /dev/nbd0"):
        attaching.resolve_backend("nbd", dev_root=tmp_path)
    (tmp_path / "nbd0").touch()
    assert attaching.resolve_backend("auto", dev_root=tmp_path) == "nbd"
    with pytest.raises(UserError, match="unknown attach backend"):
        attaching.resolve_backend("iscsi", dev_root=tmp_path)


def test_rescan_adds_each_partition_the_kernel_does_not_show(tmp_path: Path) -> None:
    block = tmp_path / "block" / "loop7"
    (block / "loop7p1").mkdir(parents=True)
    (block / "loop7p1" / "partition").write_text("1\n")
    calls: list[list[str]] = []

    def runner(argv: list[str], **_: object) -> Completed:
        calls.append(list(argv))
        if argv[:3] == ["partx", "-a", "--nr"]:
            (block / f"loop7p{argv[3]}").mkdir()
            (block / f"loop7p{argv[3]}" / "partition").write_text(f"{argv[3]}\n")
        out = "  1\n 14\n 15\n" if argv[:2] == ["partx", "-g"] else ""
        return Completed(argv=tuple(argv), returncode=0, stdout=out, stderr="")

    attached = attaching.Attached(device="/dev/loop7", backend="loop-fuse", image=IMAGE, data_path=IMAGE,
                                  read_only=False)
    attaching.rescan(attached, runner, sysfs_root=tmp_path)
    assert calls == [["partx", "-u", "/dev/loop7"], ["partx", "-g", "-o", "NR", "/dev/loop7"],
                     ["partx", "-a", "--nr", "14", "/dev/loop7"], ["partx", "-a", "--nr", "15", "/dev/loop7"]]
    assert attaching.partitions(attached, tmp_path) == [1, 14, 15]
