"""The distributions snapbuild builds for, and what differs between them."""

from __future__ import annotations

from dataclasses import dataclass

from snapbuild.errors import UserError


@dataclass(frozen=True, kw_only=True)
class Distro:
    name: str                      # "ubuntu-24.04"
    id: str                        # "ubuntu" (os-release ID, Glance os_distro)
    version: str                   # "24.04"
    codename: str                  # "noble"
    pretty: str                    # "Ubuntu 24.04"
    default_user: str              # created by cloud-init on first boot
    default_groups: tuple[str, ...]  # the distro's own default_user groups (cloud.cfg)
    archive: str                   # upstream archive URL
    security: str                  # upstream security archive URL
    suites: tuple[str, ...]
    security_suite: str
    components: tuple[str, ...]
    keyring: str
    sources_file: str              # DEB822 sources file of the distro archive
    resolv_conf_symlink: str | None  # what /etc/resolv.conf points to on a pristine image
    # cloud-init's apt module (when it does not preserve the sources) writes DEB822 `<id>.sources` (cloud-init
    # 23.1 and later: Ubuntu 24.04, Debian 13) rather than the one-line sources.list (Debian 12's 22.4)
    cloudinit_writes_deb822: bool

    def archive_sources(self, archive: str, security: str, *, written_by: str) -> str:
        """The DEB822 sources of the distro archive: the file snapbuild writes, and the text the baked cloud-init
        drop-in gives the apt module to write back on first boot (with `$PRIMARY`/`$SECURITY` for the URLs)."""
        components = " ".join(self.components)
        return (f"# Written by {written_by}.\n"
                f"Types: deb\nURIs: {archive}\nSuites: {' '.join(self.suites)}\n"
                f"Components: {components}\nSigned-By: {self.keyring}\n\n"
                f"Types: deb\nURIs: {security}\nSuites: {self.security_suite}\n"
                f"Components: {components}\nSigned-By: {self.keyring}\n")


DISTROS: dict[str, Distro] = {
    d.name: d
    for d in (
        Distro(
            name="ubuntu-24.04", id="ubuntu", version="24.04", codename="noble", pretty="Ubuntu 24.04",
            default_user="ubuntu", default_groups=("adm", "cdrom", "dip", "lxd", "sudo"),
            archive="http://archive.ubuntu.com/ubuntu", security="http://security.ubuntu.com/ubuntu",
            suites=("noble", "noble-updates", "noble-backports"), security_suite="noble-security",
            components=("main", "restricted", "universe", "multiverse"),
            keyring="/usr/share/keyrings/ubuntu-archive-keyring.gpg",
            sources_file="/etc/apt/sources.list.d/ubuntu.sources",
            resolv_conf_symlink="../run/systemd/resolve/stub-resolv.conf",
            cloudinit_writes_deb822=True,
        ),
        Distro(
            name="debian-12", id="debian", version="12", codename="bookworm", pretty="Debian 12",
            default_user="debian",
            default_groups=("adm", "audio", "cdrom", "dialout", "dip", "floppy", "netdev", "plugdev", "sudo",
                            "video"),
            archive="http://deb.debian.org/debian", security="http://deb.debian.org/debian-security",
            suites=("bookworm", "bookworm-updates"), security_suite="bookworm-security",
            components=("main",),
            keyring="/usr/share/keyrings/debian-archive-keyring.gpg",
            sources_file="/etc/apt/sources.list.d/debian.sources",
            resolv_conf_symlink=None,
            cloudinit_writes_deb822=False,
        ),
        # trixie: cloud-init's own cloud.cfg no longer lists netdev; the archive keyring is a .pgp file (the .gpg
        # name is a compatibility symlink). snapbuild's debian-13 base has systemd-resolved, so the seal puts the
        # stub symlink back (only where resolved is installed: see sealing.policy).
        Distro(
            name="debian-13", id="debian", version="13", codename="trixie", pretty="Debian 13",
            default_user="debian",
            default_groups=("adm", "audio", "cdrom", "dialout", "dip", "floppy", "plugdev", "sudo", "video"),
            archive="http://deb.debian.org/debian", security="http://deb.debian.org/debian-security",
            suites=("trixie", "trixie-updates"), security_suite="trixie-security",
            components=("main",),
            keyring="/usr/share/keyrings/debian-archive-keyring.pgp",
            sources_file="/etc/apt/sources.list.d/debian.sources",
            resolv_conf_symlink="../run/systemd/resolve/stub-resolv.conf",
            cloudinit_writes_deb822=True,
        ),
    )
}


def get_distro(name: str) -> Distro:
    try:
        return DISTROS[name]
    except KeyError:
        raise UserError(f"unknown distro {name!r}", hint=f"choose one of: {', '.join(DISTROS)}") from None
