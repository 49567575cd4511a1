"""What only the debian-12 base has: Debian's classic layout, the one the shipped recipes' debian-12 distro and
operators' own Debian 12 images have (one-line sources.list, ifupdown, a plain resolv.conf, cloud-init told to leave
the sources alone). `tox -e full`: .ci/run builds one base image, debian-13 (test_baseimage.py checks what both share).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from snapbuild.sealing.checker import check_root
from tests.system.test_baseimage import mounted_read_only, raw_copy

pytestmark = [
    pytest.mark.system,
    pytest.mark.full,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts)"),
]


@pytest.fixture(scope="module")
def root(debian12_base_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's root filesystem mounted read-only; everything undone after."""
    target = tmp_path_factory.mktemp("mnt12") / "root"
    with mounted_read_only(raw_copy(debian12_base_image, tmp_path_factory.mktemp("raw12")), target):
        yield target


def test_it_is_bookworm_and_sealed(root: Path) -> None:
    release = (root / "etc/os-release").read_text()
    assert 'VERSION_ID="12"' in release and "VERSION_CODENAME=bookworm" in release
    assert check_root(str(root)) == []


def test_classic_debian_layout(root: Path) -> None:
    legacy = [line for line in (root / "etc/apt/sources.list").read_text().splitlines() if line.startswith("deb ")]
    assert legacy and all(" bookworm" in line for line in legacy)
    assert not (root / "etc/apt/sources.list.d/debian.sources").exists()
    resolv = root / "etc/resolv.conf"
    assert resolv.is_file() and not resolv.is_symlink() and "nameserver" not in resolv.read_text()
    assert (root / "usr/sbin/ifup").exists() or (root / "sbin/ifup").exists()
    cfg = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/90_snapbuild.cfg").read_text())
    assert cfg["apt"]["preserve_sources_list"] is True
