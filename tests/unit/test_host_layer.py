"""The host layer's single answers: what a size means, what qemu-img says about an image, whether a tree may be
removed, and which ledgers are abandoned (for the host sweep and the cloud sweep alike)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from snapbuild.errors import BuildError, UserError
from snapbuild.guest.base import Completed
from snapbuild.host import commands, images, mounts
from snapbuild.host.cleanup import cleanup_host
from snapbuild.host.sizes import parse_size
from snapbuild.ledger import Ledger
from snapbuild.openstack.cleanup import read_ledgers

NO_SUCH_PID = 2 ** 22 + 7     # above Linux's largest pid_max: never a process


# ---- sizes ---------------------------------------------------------------------------------------------------

def test_a_bare_number_is_bytes_unless_the_caller_names_another_unit() -> None:
    assert parse_size("1073741824") == 1 << 30
    assert parse_size("2048", default_unit="M") == 2 << 30
    assert parse_size("2G", default_unit="M") == 2 << 30          # a written unit always wins
    assert parse_size("2147483648B", default_unit="M") == 2 << 30
    assert parse_size(" 1.5 gib ") == 3 << 29


@pytest.mark.parametrize("text", ["0", "0G", "lots", "-5G", "1e3", "2X", ""])
def test_a_bad_or_empty_size_names_the_text_and_how_to_write_it(text: str) -> None:
    with pytest.raises(UserError) as err:
        parse_size(text, default_unit="M")
    assert err.value.message == f"cannot read size {text!r}"
    assert err.value.hint is not None and "10G" in err.value.hint and "a bare number is MiB" in err.value.hint


def test_the_bare_unit_named_in_the_hint_follows_the_default() -> None:
    with pytest.raises(UserError) as err:
        parse_size("ten gigs")
    assert err.value.hint is not None and "a bare number is bytes" in err.value.hint


# ---- qemu-img info -------------------------------------------------------------------------------------------

def _qemu_img(monkeypatch: pytest.MonkeyPatch, returncode: int, stdout: str = "", stderr: str = ""
              ) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake(argv: Sequence[str], **kwargs: Any) -> Completed:
        calls.append(list(argv))
        return Completed(argv=tuple(argv), returncode=returncode, stdout=stdout, stderr=stderr)

    monkeypatch.setattr(commands, "run", fake)
    return calls


def test_image_info_reads_the_json_and_shares_the_lock_unless_told_not_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "disk.qcow2"
    image.write_bytes(b"QFI\xfb")
    calls = _qemu_img(monkeypatch, 0, json.dumps({"format": "qcow2", "virtual-size": 1 << 30}))
    assert images.image_info(image) == {"format": "qcow2", "virtual-size": 1 << 30}
    images.image_info(image, force_share=False)
    assert calls == [["qemu-img", "info", "--output=json", "-U", str(image)],
                     ["qemu-img", "info", "--output=json", str(image)]]


def test_a_missing_image_is_named_without_running_qemu_img(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _qemu_img(monkeypatch, 0, "{}")
    with pytest.raises(UserError) as err:
        images.image_info(tmp_path / "gone.qcow2")
    assert err.value.message == f"image {tmp_path / 'gone.qcow2'} not found"
    assert calls == []


def test_an_unreadable_image_gives_qemu_imgs_last_line_as_the_hint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "bad.qcow2"
    image.write_bytes(b"QFI\xfb")
    _qemu_img(monkeypatch, 1, stderr=f"qemu-img: Could not open '{image}': Unsupported cluster size: 2^0\n")
    with pytest.raises(UserError) as err:
        images.image_info(image)
    assert err.value.message == f"{image} is not a disk image qemu-img can read"
    assert err.value.hint == f"qemu-img: Could not open '{image}': Unsupported cluster size: 2^0"
    assert err.value.exit_code == 2


def test_an_image_another_process_writes_is_named_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "busy.qcow2"
    image.write_bytes(b"QFI\xfb")
    _qemu_img(monkeypatch, 1, stderr=f"qemu-img: Could not open '{image}': Failed to get shared \"write\" lock\n"
                                      f"Is another process using the image [{image}]?\n")
    with pytest.raises(UserError, match="is in use: another process"):
        images.image_info(image, force_share=False)


# ---- removing a work tree ------------------------------------------------------------------------------------

def test_a_tree_with_a_mount_below_it_is_not_removed_even_through_a_symlink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    (real / "root/dev").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setattr(mounts, "mount_points", lambda: ["/", str(real / "root/dev")])
    with pytest.raises(BuildError, match="still mounted: " + str(real / "root/dev")):
        mounts.remove_tree(tmp_path / "link")
    assert (real / "root/dev").is_dir()
    monkeypatch.setattr(mounts, "mount_points", lambda: ["/", str(real)])
    with pytest.raises(BuildError, match="still mounted"):
        mounts.remove_tree(real)                     # the top itself counts too
    monkeypatch.setattr(mounts, "mount_points", lambda: ["/", str(tmp_path / "realistic")])
    mounts.remove_tree(real)                         # a sibling whose name merely starts the same does not
    assert not real.exists()


# ---- abandoned ledgers ---------------------------------------------------------------------------------------

def _ledger(build_id: str, *, status: str = "running", pid: int | None = None, host: str | None = None,
            kinds: Sequence[str] = (), pid_started: int | str | None = "keep") -> Ledger:
    ledger = Ledger.create(build_id=build_id, builder="test", recipe="base")
    for n, kind in enumerate(kinds):
        ledger.record(kind, f"/x/{kind}-{n}" if kind in ("file", "mount") else f"id-{n}")
    if status != "running":
        ledger.finish(status)
    data = json.loads(ledger.path.read_text())
    if pid is not None:
        data["pid"] = pid
    if host is not None:
        data["host"] = host
    if pid_started != "keep":
        data["pid_started"] = pid_started
    ledger.path.write_text(json.dumps(data))
    return Ledger.load(ledger.path)


def test_which_ledgers_are_abandoned(isolated_state: Path) -> None:
    assert not _ledger("alive").abandoned                                   # this very process
    assert _ledger("dead", pid=NO_SUCH_PID).abandoned
    assert _ledger("reused", pid_started=-1).abandoned                      # the pid now names a later process
    assert not _ledger("old-format", pid_started=None).abandoned            # no start time known: the pid decides
    assert not _ledger("elsewhere", pid=NO_SUCH_PID, host="other-host").abandoned   # cannot be seen from here
    assert _ledger("failed", status="failed", kinds=["file"]).abandoned
    assert _ledger("failed-elsewhere", status="failed", host="other-host", kinds=["server"]).abandoned
    assert not _ledger("done", status="succeeded").abandoned                # over, nothing left to undo


def test_the_ledger_remembers_when_its_process_started(isolated_state: Path) -> None:
    ledger = Ledger.create(build_id="b", builder="test", recipe="base")
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert ledger.data["pid_started"] == int(stat.rsplit(")", 1)[1].split()[19])
    assert ledger.data["host"] == socket.gethostname() and ledger.here


def test_host_and_cloud_sweeps_take_the_abandoned_builds_each_for_its_own_kinds(isolated_state: Path) -> None:
    _ledger("b-running", kinds=["file", "server"])
    _ledger("b-dead", pid=NO_SUCH_PID, kinds=["file", "server"])
    _ledger("b-host-only", status="failed", kinds=["mount"])
    _ledger("b-cloud-only", status="interrupted", kinds=["floating_ip"])
    _ledger("b-elsewhere-over", status="failed", host="other-host", kinds=["file", "server"])
    _ledger("b-elsewhere-running", host="other-host", kinds=["file", "server"])

    swept = {s.build_id: s.actions for s in cleanup_host(dry_run=True)}
    assert swept == {"b-dead": ("file /x/file-0",), "b-host-only": ("mount /x/mount-0",)}

    local = read_ledgers()
    assert local.live_builds == {"b-running", "b-elsewhere-running"}
    assert set(local.abandoned) == {"b-dead", "b-cloud-only", "b-elsewhere-over"}
