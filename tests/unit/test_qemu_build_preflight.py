"""`snapbuild local` preflight: every wrong input fails with one clear line before anything is created."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from snapbuild.errors import UserError
from snapbuild.host.baseprobe import parse_os_release
from snapbuild.local.build import LocalSettings, _Run, compact_argv, mirror_forwards, preflight

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img not installed")


def _plan(disk_gb: int = 4) -> SimpleNamespace:
    # A stand-in Plan with just the fields preflight reads.
    return SimpleNamespace(recipe_name="base", image=SimpleNamespace(disk_size_gb=disk_gb, name="x"),
                           mirror_forwards=(), recipe_distros=("ubuntu-24.04", "debian-12"))


def _qcow2(path: Path, size: str = "1G") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def _preflight(tmp_path: Path, base: Path, *, output: Path | None = None, force: bool = False,
               disk_gb: int = 4) -> None:
    settings = LocalSettings(base=base, output=output or tmp_path / "out.qcow2", force=force, work_root=tmp_path)
    preflight(_Run(settings=settings, plan=_plan(disk_gb)))  # type: ignore[arg-type]


def test_missing_base_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="base image not found"):
        _preflight(tmp_path, tmp_path / "nope.qcow2")


def test_a_text_file_is_not_a_disk_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.img"
    text.write_text("hello\n" * 200)
    with pytest.raises(UserError, match="not a disk image"):
        _preflight(tmp_path, text)


def test_existing_output_needs_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _qcow2(tmp_path / "base.qcow2")
    out = tmp_path / "out.qcow2"
    out.write_bytes(b"x")
    with pytest.raises(UserError, match="output exists") as caught:
        _preflight(tmp_path, base, output=out)
    assert caught.value.hint and "--force" in caught.value.hint
    # With --force the checks go on to the last two, the look inside the base (an empty qcow2 would fail it:
    # tests/system/test_base_preflight.py) and the download sources (tests/unit/test_reachability.py), here
    # replaced to see that they are reached, in that order.
    reached: list[str] = []
    monkeypatch.setattr("snapbuild.local.build.check_base", lambda state: reached.append("base"))
    monkeypatch.setattr("snapbuild.local.build.check_sources", lambda state: reached.append("sources"))
    _preflight(tmp_path, base, output=out, force=True)
    assert reached == ["base", "sources"]


def test_base_bigger_than_the_recipe_disk_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="larger than the recipe's disk size"):
        _preflight(tmp_path, _qcow2(tmp_path / "big.qcow2", "8G"), disk_gb=4)


def test_missing_output_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="output directory does not exist"):
        _preflight(tmp_path, _qcow2(tmp_path / "b.qcow2"), output=tmp_path / "no" / "out.qcow2")


def test_compaction_commands() -> None:
    src, dst = Path("/w/work.qcow2"), Path("/o/out.qcow2")
    assert compact_argv(src, dst, "zstd") == ["qemu-img", "convert", "-O", "qcow2", "-m", "4", "-W", "-c", "-o",
                                              "compression_type=zstd", "/w/work.qcow2", "/o/out.qcow2"]
    assert "compression_type=zlib" in compact_argv(src, dst, "zlib")
    assert "-c" not in compact_argv(src, dst, "none")


def test_mirror_forwards_come_from_the_profiles_forwards() -> None:
    from snapbuild.profiles import Forward

    plan = SimpleNamespace(mirror_forwards=(Forward(guest_ip="10.0.2.100", guest_port=5000, host_ip="127.0.0.1",
                                                    host_port=41000),
                                            Forward(guest_ip="10.0.2.101", guest_port=3142, host_ip="127.0.0.1",
                                                    host_port=41001)))
    fwds = mirror_forwards(plan)  # type: ignore[arg-type]
    assert [(f.guest_ip, f.guest_port, f.host_port) for f in fwds] == [("10.0.2.100", 5000, 41000),
                                                                       ("10.0.2.101", 3142, 41001)]


def test_os_release_parsing() -> None:
    text = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n# c\n'
    assert parse_os_release(text) == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID": "debian",
                                      "VERSION_ID": "12"}
