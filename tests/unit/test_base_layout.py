"""What `snapbuild base` configures: debian-12 exactly as before, debian-13 shaped like Ubuntu's cloud image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from snapbuild.local import baseimage, baselayout
from snapbuild.local.baselayout import DEBIAN_CLASSIC, UBUNTU_SHAPED
from snapbuild.sealing.checker import check_root
from snapbuild.sealing.policy import seal_script

MIRROR = "http://127.0.0.1:3142/debian"
SECURITY = "http://127.0.0.1:3142/debian-security"

# What debian-12's base wrote before layouts existed, byte for byte.
DEBIAN_12_SOURCES = (f"deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-updates main\n"
                     f"deb {SECURITY} bookworm-security main\n")
DEBIAN_12_CLOUD_CFG = """\
# snapbuild base image defaults
datasource_list: [ NoCloud, ConfigDrive, OpenStack, None ]
locale: C.UTF-8
ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]
apt:
  preserve_sources_list: true
"""
DEBIAN_12_INTERFACES = ("# cloud-init writes the interfaces into interfaces.d\n"
                        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n")
DEBIAN_12_PACKAGES = (
    "systemd-sysv", "udev", "dbus", "linux-image-cloud-amd64", "initramfs-tools", "grub-pc", "grub-efi-amd64-bin",
    "openssh-server", "cloud-init", "python3-cffi-backend", "cloud-guest-utils", "e2fsprogs",
    "ifupdown", "isc-dhcp-client", "iproute2", "netbase", "qemu-guest-agent",
    "sudo", "ca-certificates", "gnupg", "curl", "locales", "procps",
)


def apt_files(name: str, security: str | None = SECURITY) -> dict[str, str]:
    spec = baseimage.DISTROS[name]
    return baselayout.apt_files(spec.layout, suite=spec.suite, security_suite=spec.security_suite, mirror=MIRROR,
                                security_mirror=security)


def test_debian_12_base_is_configured_exactly_as_before() -> None:
    spec = baseimage.DISTROS["debian-12"]
    assert spec.layout is DEBIAN_CLASSIC and spec.suite == "bookworm"
    assert spec.packages == DEBIAN_12_PACKAGES          # also the debootstrap cache key: unchanged
    assert apt_files("debian-12") == {"/etc/apt/sources.list": DEBIAN_12_SOURCES}
    assert apt_files("debian-12", security=None) == {
        "/etc/apt/sources.list": f"deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-updates main\n"}
    assert baselayout.cloud_cfg(DEBIAN_CLASSIC) == DEBIAN_12_CLOUD_CFG
    assert baselayout.network_files(DEBIAN_CLASSIC) == {"/etc/network/interfaces": DEBIAN_12_INTERFACES}
    assert baselayout.enabled_units(DEBIAN_CLASSIC) == (
        "ssh.service", "cloud-init.service", "cloud-config.service", "cloud-final.service",
        "cloud-init-local.service", "networking.service")
    assert baselayout.masked_units(DEBIAN_CLASSIC) == ("systemd-networkd-wait-online.service",)
    assert baselayout.resolv_conf_symlink(DEBIAN_CLASSIC) is None


def test_debian_13_base_installs_ubuntu_s_network_stack_not_ifupdown() -> None:
    spec = baseimage.DISTROS["debian-13"]
    assert spec.layout is UBUNTU_SHAPED
    assert (spec.suite, spec.security_suite) == ("trixie", "trixie-security")
    assert {"netplan.io", "systemd-resolved", "dhcpcd-base", "cloud-init", "cloud-guest-utils"} <= set(spec.packages)
    assert not {"ifupdown", "isc-dhcp-client", "resolvconf"} & set(spec.packages)
    # Everything else a cloud image needs is the same as debian-12's.
    assert set(DEBIAN_12_PACKAGES) - {"ifupdown", "isc-dhcp-client"} <= set(spec.packages)


def _stanzas(text: str) -> list[dict[str, str]]:
    return [dict(line.split(": ", 1) for line in s.splitlines()) for s in text.strip().split("\n\n")]


def test_debian_13_has_deb822_sources_and_a_live_legacy_file_for_the_builder_to_remove() -> None:
    files = apt_files("debian-13")
    assert set(files) == {"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"}
    stanzas = _stanzas(files["/etc/apt/sources.list.d/debian.sources"])
    assert stanzas == [
        {"Types": "deb", "URIs": MIRROR, "Suites": "trixie trixie-updates", "Components": "main",
         "Signed-By": "/usr/share/keyrings/debian-archive-keyring.pgp"},
        {"Types": "deb", "URIs": SECURITY, "Suites": "trixie-security", "Components": "main",
         "Signed-By": "/usr/share/keyrings/debian-archive-keyring.pgp"},
    ]
    # Live entries, not only a comment: a builder that leaves the file makes apt read every source twice.
    live = [line for line in files["/etc/apt/sources.list"].splitlines() if line and not line.startswith("#")]
    assert live == [f"deb {MIRROR} trixie main", f"deb {MIRROR} trixie-updates main",
                    f"deb {SECURITY} trixie-security main"]
    without_security = apt_files("debian-13", security=None)
    assert len(_stanzas(without_security["/etc/apt/sources.list.d/debian.sources"])) == 1
    assert "security" not in without_security["/etc/apt/sources.list"].replace("# ", "")


def test_debian_13_cloud_cfg_leaves_the_apt_module_active_and_renders_netplan() -> None:
    cfg = yaml.safe_load(baselayout.cloud_cfg(UBUNTU_SHAPED))
    # Debian's cloud.cfg says preserve_sources_list: true; this drop-in turns the apt module back on, as on Ubuntu.
    assert cfg["apt"] == {"preserve_sources_list": False}
    assert cfg["system_info"]["network"] == {"renderers": ["netplan"], "activators": ["netplan"]}
    assert cfg["datasource_list"] == ["NoCloud", "ConfigDrive", "OpenStack", "None"]
    assert "default_user" not in cfg.get("system_info", {}) and "users" not in cfg   # no user baked in
    assert yaml.safe_load(baselayout.cloud_cfg(DEBIAN_CLASSIC))["apt"] == {"preserve_sources_list": True}


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init not installed (.ci/run installs it)")
@pytest.mark.parametrize("layout", [DEBIAN_CLASSIC, UBUNTU_SHAPED], ids=lambda layout: layout.name)
def test_baked_cloud_cfg_passes_cloud_init_s_schema(layout: baselayout.Layout, tmp_path: Path) -> None:
    path = tmp_path / "90_snapbuild.cfg"
    path.write_text("#cloud-config\n" + baselayout.cloud_cfg(layout))
    done = subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_debian_13_networking_and_resolver_are_networkd_and_resolved() -> None:
    assert baselayout.network_files(UBUNTU_SHAPED) == {}          # cloud-init writes 50-cloud-init.yaml
    units = baselayout.enabled_units(UBUNTU_SHAPED)
    assert {"systemd-networkd.service", "systemd-resolved.service", "cloud-init-main.service",
            "cloud-init-network.service", "ssh.service"} <= set(units)
    assert "networking.service" not in units and "cloud-init.service" not in units   # gone in cloud-init 24.3+
    assert baselayout.masked_units(UBUNTU_SHAPED) == ()           # boot waits for the network, as on Ubuntu
    assert baselayout.resolv_conf_symlink(UBUNTU_SHAPED) == "../run/systemd/resolve/stub-resolv.conf"


def _built_tree(tmp_path: Path) -> Path:
    """A root as debootstrap + configure leave it, with the leftovers the seal must deal with."""
    root = tmp_path / "root"
    for folder in ("etc/ssh", "var/lib/apt/lists/partial", "var/lib/cloud/instance", "var/lib/dbus", "tmp",
                   "var/tmp", "var/log", "var/lib/systemd", "root", "usr/sbin", "run/systemd/resolve"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=\"13\"\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    # resolved's postinst: the stub link, and the build host's resolver copied under the image's /run.
    (root / "run/systemd/resolve/stub-resolv.conf").write_text("nameserver 192.0.2.53\n")
    os.symlink("../run/systemd/resolve/stub-resolv.conf", root / "etc/resolv.conf")
    return root


@pytest.fixture()
def no_chroot(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(baseimage, "chroot", lambda root, *argv, timeout=600: calls.append(argv) or "")
    return calls


def test_seal_keeps_the_resolved_stub_and_empties_run_on_disk(tmp_path: Path, no_chroot: list[tuple[str, ...]]
                                                              ) -> None:
    root = _built_tree(tmp_path)
    baseimage.seal(root, UBUNTU_SHAPED)
    resolv = root / "etc/resolv.conf"
    assert resolv.is_symlink() and os.readlink(resolv) == "../run/systemd/resolve/stub-resolv.conf"
    assert list((root / "run").iterdir()) == []           # no trace of the build host's resolver
    assert ("apt-get", "clean") in no_chroot
    assert not list((root / "etc/ssh").iterdir()) and (root / "etc/machine-id").read_text() == ""


def test_seal_of_debian_12_still_writes_a_plain_resolv_conf(tmp_path: Path, no_chroot: list[tuple[str, ...]]) -> None:
    root = _built_tree(tmp_path)
    baseimage.seal(root, DEBIAN_CLASSIC)
    resolv = root / "etc/resolv.conf"
    assert not resolv.is_symlink() and resolv.read_text() == "# written by the DHCP client at boot\n"
    assert (root / "run/systemd/resolve/stub-resolv.conf").exists()   # untouched, as before


def test_checker_wants_the_stub_symlink_wherever_resolved_is_enabled(tmp_path: Path) -> None:
    root = _built_tree(tmp_path)
    for leftover in ("etc/ssh/ssh_host_ed25519_key", "var/lib/cloud/instance"):
        path = root / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (root / "etc/machine-id").write_text("")
    assert check_root(str(root)) == []                   # a debian root without resolved: any resolv.conf will do
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-resolved.service").symlink_to("/usr/lib/systemd/system/systemd-resolved.service")
    assert check_root(str(root)) == []                   # enabled, and the link is there
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").write_text("nameserver 10.0.2.3\n")
    found = check_root(str(root))
    assert [(v["code"], v["path"]) for v in found] == [("resolv.conf", "/etc/resolv.conf")]


def test_seal_script_relinks_only_where_resolved_is_installed() -> None:
    script = seal_script(resolv_symlink="../run/systemd/resolve/stub-resolv.conf")
    block = next(b for b in script.split(" && ") if "resolv.conf" in b)
    assert block.index("[ ! -e /usr/lib/systemd/systemd-resolved ]") < block.index("ln -sfn")
    assert "/etc/resolv.conf" not in seal_script(resolv_symlink=None)
