"""The debian-13 base image, for real: shaped like Ubuntu's cloud image where snapbuild's lessons come from.

Read-only checks on the mounted image (sources, resolver, network stack, cloud-init, no user, small root, sealed),
then one TCG boot (UEFI) that sees cloud-init's apt module rewrite the sources, resolved own resolv.conf, netplan on
networkd configure the NIC and the default user appear only then.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from snapbuild.host import loopdisk as disk
from snapbuild.host.commands import run
from snapbuild.local.baseimage import ROOT_LABEL
from snapbuild.paths import data_dir
from snapbuild.recipes import Library
from snapbuild.sealing.checker import check_root
from tests import imagecache
from tests.system.test_baseimage import BOOT_DEADLINE_S, OVMF_CODE, OVMF_VARS, _wait_for, mounted_read_only, raw_copy

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, mounts)"),
]

STUB = "../run/systemd/resolve/stub-resolv.conf"


@pytest.fixture(scope="module")
def trixie_image() -> Path:
    assert imagecache.TIER_DISTRO == "debian-13"
    return imagecache.tier_base_image()


@pytest.fixture(scope="module")
def mounted(trixie_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The image's root filesystem mounted read-only; everything undone after."""
    target = tmp_path_factory.mktemp("mnt13") / "root"
    with mounted_read_only(raw_copy(trixie_image, tmp_path_factory.mktemp("raw13")), target) as device:
        yield device, target


def test_it_is_trixie_and_sealed(mounted: tuple[str, Path]) -> None:
    _, root = mounted
    release = (root / "etc/os-release").read_text()
    assert 'VERSION_ID="13"' in release and "VERSION_CODENAME=trixie" in release
    assert check_root(str(root)) == []


def test_apt_sources_are_deb822_plus_a_legacy_file_for_the_builder_to_remove(mounted: tuple[str, Path]) -> None:
    _, root = mounted
    sources = (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert "Suites: trixie trixie-updates" in sources and "Suites: trixie-security" in sources
    keyring = re.search(r"^Signed-By: (\S+)$", sources, re.MULTILINE)
    assert keyring and (root / keyring.group(1).lstrip("/")).is_file(), "Signed-By names the image's own keyring"
    legacy = [line for line in (root / "etc/apt/sources.list").read_text().splitlines()
              if line.startswith("deb ")]
    assert len(legacy) >= 2 and all(" trixie" in line for line in legacy)


def test_systemd_resolved_owns_resolv_conf_through_the_stub_symlink(mounted: tuple[str, Path]) -> None:
    _, root = mounted
    resolv = root / "etc/resolv.conf"
    assert resolv.is_symlink() and os.readlink(resolv) == STUB
    assert not resolv.exists(), "dangles off a running system, as on Ubuntu (a chroot must lend its own)"
    assert (root / "usr/lib/systemd/systemd-resolved").exists()
    assert (root / "etc/systemd/system/sysinit.target.wants/systemd-resolved.service").is_symlink()
    assert not any((root / "run").iterdir()), "no copy of the build host's resolver under /run"


def test_networking_is_netplan_on_networkd_as_on_ubuntu(mounted: tuple[str, Path]) -> None:
    _, root = mounted
    assert (root / "usr/sbin/netplan").exists()
    assert not (root / "usr/sbin/ifup").exists() and not (root / "sbin/ifup").exists(), "no ifupdown"
    assert (root / "usr/sbin/dhcpcd").exists()
    assert not list((root / "etc/netplan").glob("*.yaml")), "cloud-init writes 50-cloud-init.yaml on first boot"
    assert list((root / "etc/systemd/system").glob("*.wants/systemd-networkd.service"))
    wait_online = root / "etc/systemd/system/systemd-networkd-wait-online.service"
    assert not (wait_online.is_symlink() and os.readlink(wait_online) == "/dev/null"), "not masked"
    cfg = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/90_snapbuild.cfg").read_text())
    assert cfg["system_info"]["network"]["renderers"] == ["netplan"]


def test_cloud_init_s_apt_module_is_active(mounted: tuple[str, Path]) -> None:
    _, root = mounted
    # cloud.cfg, then cloud.cfg.d/*.cfg in lexical order, later wins (Debian's cloud.cfg itself says true).
    preserve = None
    for path in [root / "etc/cloud/cloud.cfg", *sorted((root / "etc/cloud/cloud.cfg.d").glob("*.cfg"))]:
        apt = (yaml.safe_load(path.read_text()) or {}).get("apt") or {}
        preserve = apt.get("preserve_sources_list", preserve)
    assert preserve is False
    # The links are absolute (/usr/lib/...): inside the mount they dangle on the host, where glob() skips them.
    wants = [d for d in (root / "etc/systemd/system").iterdir() if d.name.endswith(".wants")]
    for unit in ("cloud-init-local", "cloud-init-main", "cloud-init-network", "cloud-config", "cloud-final"):
        assert any((d / f"{unit}.service").is_symlink() for d in wants), unit


def test_no_default_user_is_baked_in(mounted: tuple[str, Path]) -> None:
    _, root = mounted
    humans = [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()
              if 1000 <= int(line.split(":")[2]) < 65534]
    assert humans == []
    assert not any((root / "home").iterdir())


def test_root_is_small_so_every_builder_must_grow_it(trixie_image: Path, mounted: tuple[str, Path]) -> None:
    device, root = mounted
    virtual = json.loads(run(["qemu-img", "info", "--output=json", str(trixie_image)]).stdout)["virtual-size"]
    library = Library([data_dir("recipes")])
    smallest = min(library.load(name).image.disk_size_gb for name in ("docker-ce", "k8s"))
    assert virtual == 2 * 1024**3 < smallest * 1024**3
    assert disk.fs_label(disk.partition_node(device, 1)) == ROOT_LABEL
    assert shutil.disk_usage(root).total < 2 * 1024**3


USER_DATA = """\
#cloud-config
runcmd:
  - [sh, -c, 'echo "SNAPBUILD13 resolv=$(readlink /etc/resolv.conf) legacy=$(test -e /etc/apt/sources.list \
&& echo present || echo gone) rewritten=$(grep -c cloud-init /etc/apt/sources.list.d/debian.sources) \
netplan=$(ls /etc/netplan | head -n 1) networkd=$(systemctl is-active systemd-networkd) \
resolved=$(systemctl is-active systemd-resolved) user=$(getent passwd 1000 | cut -d: -f1) \
rootmb=$(df -BM --output=size / | tail -1 | tr -dc 0-9) ip=$(hostname -I | cut -d" " -f1) \
mid=$(wc -c < /etc/machine-id) keys=$(ls /etc/ssh/ssh_host_*_key | wc -l) ssh=$(systemctl is-active ssh)" \
> /dev/ttyS0']
"""


def test_first_boot_behaves_like_ubuntu_s(trixie_image: Path, tmp_path: Path) -> None:
    """Under UEFI (.ci/run's other guests boot under BIOS), with test_baseimage.py's first-boot checks too."""
    overlay = tmp_path / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(trixie_image), "-F", "qcow2", str(overlay), "3G"])
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed/user-data").write_text(USER_DATA)
    (tmp_path / "seed/meta-data").write_text("instance-id: iid-test-trixie\nlocal-hostname: trixie\n")
    seed = tmp_path / "seed.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o", str(seed), str(tmp_path / "seed")])
    serial = tmp_path / "serial.log"
    argv = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-accel", "tcg,tb-size=256",
            "-m", "1024", "-smp", "1", "-nographic", "-monitor", "none", "-serial", f"file:{serial}",
            "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on"]
    vars_copy = tmp_path / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
             "-drive", f"if=pflash,format=raw,file={vars_copy}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        found = _wait_for(serial, proc, r"SNAPBUILD13 resolv=(\S*) legacy=(\w+) rewritten=(\d+) netplan=(\S*) "
                          r"networkd=(\w+) resolved=(\w+) user=(\S*) rootmb=(\d+) ip=(\S*) mid=(\d+) keys=(\d+) "
                          r"ssh=(\w+)",
                          time.monotonic() + BOOT_DEADLINE_S)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    resolv, legacy, rewritten, netplan, networkd, resolved, user, root_mb, ip, machine_id_len, keys, ssh = found.groups()
    assert resolv == STUB and resolved == "active"
    # No apt config in the user-data: cloud-init's apt module rewrote debian.sources (its header names
    # cloud-init) and removed the legacy file - what a baked mirror drop-in must survive.
    assert int(rewritten) >= 1 and legacy == "gone"
    assert "50-cloud-init.yaml" in netplan and networkd == "active"
    assert user == "debian", "the default user exists only after first boot"
    assert int(root_mb) > 2500, "growpart extended the root filesystem to the 3G disk"
    # restrict=on: QEMU's DHCP then offers no router and no DNS, so only the address can be checked.
    assert ip.startswith("10.0.2."), "DHCP on the first NIC without network-config"
    assert machine_id_len == "33", "a fresh machine-id on first boot"
    assert int(keys) >= 2, "cloud-init generated SSH host keys"
    assert ssh == "active"
