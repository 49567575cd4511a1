"""What `snapbuild base` writes into the image where Debian's classic cloud layout and Ubuntu's differ.

debian-12 keeps Debian's classic layout (one-line sources.list, ifupdown, a plain resolv.conf, cloud-init told to
leave the sources alone). debian-13 is shaped like Ubuntu 24.04's cloud image where snapbuild's hardest lessons
come from: DEB822 sources plus a legacy sources.list the builder must remove, systemd-resolved owning
/etc/resolv.conf through the stub symlink (dangling in a chroot), netplan rendered by cloud-init onto
systemd-networkd, and cloud-init's apt module active (it rewrites the sources on first boot unless an image bakes
its mirrors as a drop-in). Pure functions of the layout, so every choice is unit-tested without a build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DEB822_SOURCES = "/etc/apt/sources.list.d/debian.sources"
LEGACY_SOURCES = "/etc/apt/sources.list"
RESOLVED_STUB = "../run/systemd/resolve/stub-resolv.conf"
CLOUD_CFG_PATH = "/etc/cloud/cloud.cfg.d/90_snapbuild.cfg"


@dataclass(frozen=True, kw_only=True)
class Layout:
    name: str
    deb822_sources: bool                        # debian.sources, plus a legacy sources.list for the builder to drop
    networking: Literal["ifupdown", "netplan"]  # who cloud-init renders the network config for
    resolved: bool                              # systemd-resolved owns /etc/resolv.conf (the stub symlink)
    preserve_sources_list: bool                 # cloud-init's apt module leaves the sources alone
    keyring: str                                # Signed-By of the DEB822 sources


DEBIAN_CLASSIC = Layout(name="debian-classic", deb822_sources=False, networking="ifupdown", resolved=False,
                        preserve_sources_list=True, keyring="/usr/share/keyrings/debian-archive-keyring.gpg")
UBUNTU_SHAPED = Layout(name="ubuntu-shaped", deb822_sources=True, networking="netplan", resolved=True,
                       preserve_sources_list=False, keyring="/usr/share/keyrings/debian-archive-keyring.pgp")

def apt_files(layout: Layout, *, suite: str, security_suite: str, mirror: str,
              security_mirror: str | None) -> dict[str, str]:
    """The APT source files of the image, path -> text."""
    one_line = [f"deb {mirror} {suite} main", f"deb {mirror} {suite}-updates main"]
    if security_mirror:
        one_line.append(f"deb {security_mirror} {security_suite} main")
    if not layout.deb822_sources:
        return {LEGACY_SOURCES: "\n".join(one_line) + "\n"}
    deb822 = (f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n"
              f"Signed-By: {layout.keyring}\n")
    if security_mirror:
        deb822 += (f"\nTypes: deb\nURIs: {security_mirror}\nSuites: {security_suite}\nComponents: main\n"
                   f"Signed-By: {layout.keyring}\n")
    # Live, duplicate entries on purpose: a builder that leaves this file behind makes apt read every suite twice
    # (and, behind a mirror, still reach for this archive), which the tests see.
    legacy = ("# Legacy one-line sources, as an upgraded Ubuntu cloud image still carries them. The same sources\n"
              f"# are in {DEB822_SOURCES}: a builder that writes its own mirrors must remove this file.\n"
              + "\n".join(one_line) + "\n")
    return {DEB822_SOURCES: deb822, LEGACY_SOURCES: legacy}


def cloud_cfg(layout: Layout) -> str:
    """The baked cloud-init settings: which datasources, a locale that exists, and the layout's apt/network."""
    text = ("# snapbuild base image defaults\n"
            "datasource_list: [ NoCloud, ConfigDrive, OpenStack, None ]\n"
            "locale: C.UTF-8\n"
            "ssh_genkeytypes: [ rsa, ecdsa, ed25519 ]\n")
    if layout.preserve_sources_list:
        text += "apt:\n  preserve_sources_list: true\n"
    else:
        # Debian's own cloud.cfg sets it true; Ubuntu's does not: the apt module rewrites the sources at first boot.
        text += "apt:\n  preserve_sources_list: false\n"
    if layout.networking == "netplan":
        # As Ubuntu's cloud.cfg: netplan first (Debian's default order tries eni first).
        text += "system_info:\n  network:\n    renderers: [ netplan ]\n    activators: [ netplan ]\n"
    return text


def network_files(layout: Layout) -> dict[str, str]:
    if layout.networking == "ifupdown":
        # ifupdown: cloud-init renders /etc/network/interfaces.d/50-cloud-init (DHCP on the first NIC when the
        # datasource gives no network config).
        return {"/etc/network/interfaces": "# cloud-init writes the interfaces into interfaces.d\n"
                                           "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n"}
    # netplan: cloud-init writes /etc/netplan/50-cloud-init.yaml on first boot; the image ships none, as Ubuntu's.
    return {}


def enabled_units(layout: Layout) -> tuple[str, ...]:
    if layout.networking == "ifupdown":
        return ("ssh.service", "cloud-init.service", "cloud-config.service", "cloud-final.service",
                "cloud-init-local.service", "networking.service")
    # cloud-init 24.3+ split cloud-init.service into cloud-init-main and cloud-init-network.
    return ("ssh.service", "cloud-init-local.service", "cloud-init-main.service", "cloud-init-network.service",
            "cloud-config.service", "cloud-final.service", "systemd-networkd.service", "systemd-resolved.service")


def masked_units(layout: Layout) -> tuple[str, ...]:
    # Without networkd nothing would ever bring wait-online up; with it (Ubuntu) boot waits for the network.
    return ("systemd-networkd-wait-online.service",) if layout.networking == "ifupdown" else ()


def resolv_conf_symlink(layout: Layout) -> str | None:
    """What /etc/resolv.conf is in the sealed image: the resolved stub symlink, or None for a plain file."""
    return RESOLVED_STUB if layout.resolved else None
