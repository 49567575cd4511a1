"""The seed ISO really has the layout cloud-init's NoCloud and ConfigDrive datasources read (read back with xorriso)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from snapbuild.local.seed import SeedSpec, seed_files, write_seed

pytestmark = pytest.mark.skipif(shutil.which("xorriso") is None,
                                reason="xorriso not installed")

USER_DATA = "#cloud-config\nlocale: C.UTF-8\n"


def _files(iso: Path) -> list[str]:
    out = subprocess.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(line.strip().strip("'") for line in out.splitlines() if line.strip())


def _label(iso: Path) -> str:
    out = subprocess.run(["xorriso", "-indev", str(iso), "-pvd_info"], capture_output=True, text=True,
                         check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Volume Id"))


def _read(iso: Path, member: str, tmp_path: Path) -> bytes:
    target = tmp_path / "extracted"
    target.unlink(missing_ok=True)
    subprocess.run(["xorriso", "-indev", str(iso), "-osirrox", "on", "-extract", member, str(target)],
                   capture_output=True, check=True)
    return target.read_bytes()


def test_nocloud_seed_is_labelled_cidata_with_user_and_meta_data(tmp_path: Path) -> None:
    spec = SeedSpec(user_data=USER_DATA, hostname="builder-1", kind="nocloud")
    iso = write_seed(spec, tmp_path / "seed.iso")
    assert _label(iso) == "cidata"
    assert _files(iso) == ["/meta-data", "/user-data"]
    assert _read(iso, "/user-data", tmp_path).decode() == USER_DATA
    meta = _read(iso, "/meta-data", tmp_path).decode()
    assert f"instance-id: {spec.instance_id}" in meta
    assert "local-hostname: builder-1" in meta


def test_configdrive_seed_has_openstack_layout_and_same_user_data(tmp_path: Path) -> None:
    spec = SeedSpec(user_data=USER_DATA, hostname="builder-2", kind="configdrive",
                    public_keys=("ssh-ed25519 AAAA test",))
    iso = write_seed(spec, tmp_path / "seed.iso")
    assert _label(iso) == "config-2"
    assert _files(iso) == ["/openstack/latest/meta_data.json", "/openstack/latest/user_data"]
    assert _read(iso, "/openstack/latest/user_data", tmp_path).decode() == USER_DATA
    meta = json.loads(_read(iso, "/openstack/latest/meta_data.json", tmp_path))
    assert meta["uuid"] == spec.instance_id
    assert meta["hostname"] == "builder-2"
    assert list(meta["public_keys"].values()) == ["ssh-ed25519 AAAA test"]


def test_seed_iso_is_private_and_leaves_no_staging_dir(tmp_path: Path) -> None:
    iso = write_seed(SeedSpec(user_data=USER_DATA, hostname="h"), tmp_path / "seed.iso")
    assert iso.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed.iso"]


def test_every_seed_gets_a_new_instance_id() -> None:
    first, second = SeedSpec(user_data=USER_DATA, hostname="h"), SeedSpec(user_data=USER_DATA, hostname="h")
    assert first.instance_id != second.instance_id
    assert seed_files(first)["meta-data"] != seed_files(second)["meta-data"]
