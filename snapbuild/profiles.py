"""Mirror profiles: where each upstream goes, and which hosts are blocked where images are used."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from snapbuild import yamlfile
from snapbuild.schema import Checker, type_name

# Registries whose blobs come from another host: blocking that host blocks the registry.
REGISTRY_CDNS: Mapping[str, tuple[str, ...]] = {
    "docker.io": ("registry-1.docker.io", "production.cloudflare.docker.com"),
}
# The server each registry name really answers on (containerd hosts.toml `server`).
REGISTRY_SERVERS: Mapping[str, str] = {"docker.io": "https://registry-1.docker.io"}


@dataclass(frozen=True, kw_only=True)
class AptArchive:
    archive: str | None = None
    security: str | None = None


@dataclass(frozen=True, kw_only=True)
class MirrorKey:
    """The key a re-signing mirror (aptly, Pulp, Artifactory) signs a third-party repository with: trusted instead
    of the recipe's key for every repository mapped through that `apt_repositories` entry."""

    url: str | None = None           # key_url: fetched in the guest, checked against `fingerprint`
    content: bytes | None = None     # key_file: the ASCII-armored key's bytes, carried in the plan
    fingerprint: str | None = None   # 40 upper-case hex digits; required with `url`, optional with `content`
    origin: str                      # how it was given, for plan output ("key_url", "key_file /etc/mirror.asc")


@dataclass(frozen=True, kw_only=True)
class Forward:
    """A host-side service the guest must reach (local VMs: QEMU guestfwd)."""

    guest_ip: str
    guest_port: int
    host_ip: str
    host_port: int


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    path: str
    description: str = ""
    apt: Mapping[str, AptArchive] = field(default_factory=dict)       # by distro id
    apt_repositories: Mapping[str, str] = field(default_factory=dict)  # upstream prefix -> mirror prefix
    apt_repository_keys: Mapping[str, MirrorKey] = field(default_factory=dict)  # upstream prefix -> mirror's key
    registries: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    blocked: tuple[str, ...] = ()
    unreliable: tuple[str, ...] = ()
    build_apt_proxy: str | None = None   # used during the build only, removed when sealing
    forwards: tuple[Forward, ...] = ()

    def archive_for(self, distro_id: str, upstream: str) -> str:
        entry = self.apt.get(distro_id)
        return (entry.archive if entry and entry.archive else upstream).rstrip("/")

    def security_for(self, distro_id: str, upstream: str) -> str:
        entry = self.apt.get(distro_id)
        return (entry.security if entry and entry.security else upstream).rstrip("/")

    def has_apt_mirror(self, distro_id: str) -> bool:
        entry = self.apt.get(distro_id)
        return bool(entry and (entry.archive or entry.security))

    def repository_prefix(self, url: str) -> str | None:
        """The `apt_repositories` entry an upstream URL goes through (longest matching prefix wins)."""
        for prefix in sorted(self.apt_repositories, key=len, reverse=True):
            if url.startswith(prefix):
                return prefix
        return None

    def rewrite_url(self, url: str) -> str:
        """Map an upstream URL to its mirror (longest matching prefix wins)."""
        prefix = self.repository_prefix(url)
        if prefix is None:
            return url
        return self.apt_repositories[prefix].rstrip("/") + url[len(prefix.rstrip("/")):]

    def mirror_key(self, url: str) -> MirrorKey | None:
        """The key the mirror of an upstream repository URL signs with, if its entry names one."""
        prefix = self.repository_prefix(url)
        return self.apt_repository_keys.get(prefix) if prefix is not None else None

    def registry_mirrors(self, registry: str) -> tuple[str, ...]:
        return self.registries.get(registry, ())

    def is_blocked(self, host: str) -> bool:
        host = host.lower()
        return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in self.blocked)

    def url_blocked(self, url: str) -> bool:
        return self.is_blocked(urlsplit(url).hostname or "")

    def registry_blocked(self, registry: str) -> bool:
        """Pulls from `registry` fail here unless a mirror is configured."""
        if self.registry_mirrors(registry):
            return False
        return self.registry_upstream_blocked(registry)

    def registry_upstream_blocked(self, registry: str) -> bool:
        """The registry itself (or the CDN its blobs come from) is blocked, mirrors aside."""
        hosts = (registry, *REGISTRY_CDNS.get(registry, ()))
        return any(self.is_blocked(h) for h in hosts)


def load_profile(path: Path) -> Profile:
    data = yamlfile.load(path)
    check = Checker(str(path))
    if data is None:
        data = {}
    check.mapping(data, "profile", optional=("description", "apt", "apt_repositories", "registries", "blocked",
                                             "unreliable", "build_apt_proxy", "forwards"))
    apt: dict[str, AptArchive] = {}
    apt_node = data.get("apt", {}) or {}
    check.mapping(apt_node, "apt", optional=("ubuntu", "debian"), parent=data, parent_key="apt")
    for distro_id, node in apt_node.items():
        check.mapping(node, f"apt.{distro_id}", optional=("archive", "security"), parent=apt_node,
                      parent_key=distro_id)
        apt[distro_id] = AptArchive(archive=_url(check, node, "archive", f"apt.{distro_id}"),
                                    security=_url(check, node, "security", f"apt.{distro_id}"))
    repos, keys = _apt_repositories(check, data, path.parent)
    registries: dict[str, tuple[str, ...]] = {}
    reg_node = data.get("registries", {}) or {}
    if not isinstance(reg_node, dict):
        raise check.fail("registries must be a mapping of registry -> list of mirror URLs", data, "registries")
    for registry, _mirrors in reg_node.items():
        mirrors = check.string_list(reg_node, registry, "registries")
        for mirror in mirrors:
            if not mirror.startswith(("http://", "https://")):
                raise check.fail(f"registries.{registry}: mirror {mirror!r} must start with http:// or https://",
                                 reg_node, registry)
        registries[registry] = mirrors
    forwards = []
    fwd_node = data.get("forwards", []) or []
    if not isinstance(fwd_node, list):
        raise check.fail("forwards must be a list of {guest: IP:PORT, host: IP:PORT}", data, "forwards")
    for index, item in enumerate(fwd_node):
        check.mapping(item, f"forwards[{index}]", required=("guest", "host"), parent=fwd_node, parent_key=index)
        g_ip, g_port = _endpoint(check, item, "guest")
        h_ip, h_port = _endpoint(check, item, "host")
        if not h_ip.startswith("127."):
            raise check.fail(f"forwards[{index}].host must be a loopback address (127.x), not {h_ip}", item, "host")
        forwards.append(Forward(guest_ip=g_ip, guest_port=g_port, host_ip=h_ip, host_port=h_port))
    proxy = data.get("build_apt_proxy")
    if proxy is not None and (not isinstance(proxy, str) or not proxy.startswith("http://")):
        raise check.fail("build_apt_proxy must be an http:// URL", data, "build_apt_proxy")
    return Profile(
        name=path.stem, path=str(path), description=check.string(data, "description", "profile", default=""),
        apt=apt, apt_repositories=repos, apt_repository_keys=keys, registries=registries,
        blocked=check.string_list(data, "blocked", "profile"),
        unreliable=check.string_list(data, "unreliable", "profile"),
        build_apt_proxy=proxy, forwards=tuple(forwards),
    )


_ARMORED_KEY = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"


def _apt_repositories(check: Checker, data: dict[str, object],
                      folder: Path) -> tuple[dict[str, str], dict[str, MirrorKey]]:
    """`apt_repositories`: upstream prefix -> mirror prefix, or -> {url, key_url + key_fingerprint | key_file}."""
    node = data.get("apt_repositories", {})
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise check.fail("profile.apt_repositories must be a mapping of upstream URL prefix -> mirror URL prefix "
                         "(or -> {url: MIRROR, key_url: URL, key_fingerprint: FPR} / {url: MIRROR, key_file: PATH})",
                         data, "apt_repositories")
    repos: dict[str, str] = {}
    keys: dict[str, MirrorKey] = {}
    for raw_prefix, value in node.items():
        prefix = str(raw_prefix)
        if not prefix.startswith(("http://", "https://")):
            raise check.fail(f"apt_repositories: {prefix!r} is not an http(s) URL", node, raw_prefix)
        where = f"apt_repositories[{prefix!r}]"
        if isinstance(value, dict):
            check.mapping(value, where, required=("url",), optional=("key_url", "key_file", "key_fingerprint"),
                          parent=node, parent_key=raw_prefix)
            mirror = check.string(value, "url", where)
            if not mirror.startswith(("http://", "https://")):
                raise check.fail(f"{where}.url: {mirror!r} is not an http(s) URL", value, "url")
            key = _mirror_key(check, value, where, folder)
            if key is not None:
                keys[prefix] = key
        elif isinstance(value, str):
            mirror = value
            if not mirror.startswith(("http://", "https://")):
                raise check.fail(f"apt_repositories: {mirror!r} is not an http(s) URL", node, raw_prefix)
        else:
            raise check.fail(f"{where} must be a mirror URL prefix or a mapping with url (and the mirror's key), "
                             f"not {type_name(value)}", node, raw_prefix)
        repos[prefix] = mirror
    return repos, keys


def _mirror_key(check: Checker, node: dict[str, object], where: str, folder: Path) -> MirrorKey | None:
    """The mirror's own signing key of one `apt_repositories` entry (None: the recipe's key stays trusted)."""
    if "key_url" in node and "key_file" in node:
        raise check.fail(f"{where} has both key_url and key_file: give one", node, "key_file")
    fingerprint = None
    if "key_fingerprint" in node:
        if "key_url" not in node and "key_file" not in node:
            raise check.fail(f"{where}.key_fingerprint needs key_url or key_file (the key it checks)", node,
                             "key_fingerprint")
        fingerprint = re.sub(r"\s+", "", check.string(node, "key_fingerprint", where)).upper()  # type: ignore[arg-type]
        if not re.fullmatch(r"[0-9A-F]{40}", fingerprint):
            raise check.fail(f"{where}.key_fingerprint must be 40 hex digits (spaces allowed)", node,
                             "key_fingerprint", hint="gpg --show-keys --with-fingerprint KEYFILE prints it")
    if "key_url" in node:
        url = check.string(node, "key_url", where)  # type: ignore[arg-type]
        if not url.startswith(("http://", "https://")):
            raise check.fail(f"{where}.key_url must be an http(s) URL (the build fetches it), not {url!r}", node,
                             "key_url", hint="for a key file on this machine, give key_file: PATH instead")
        if fingerprint is None:
            raise check.fail(f"{where}.key_url needs key_fingerprint (the fetched key is checked)", node, "key_url")
        return MirrorKey(url=url, fingerprint=fingerprint, origin="key_url")
    if "key_file" in node:
        name = check.string(node, "key_file", where)  # type: ignore[arg-type]
        file = folder / Path(name).expanduser()   # relative to the profile's folder; an absolute path stays
        try:
            content = file.read_bytes()
        except OSError as exc:
            raise check.fail(f"{where}.key_file: cannot read {file}: {exc.strerror or exc}", node, "key_file",
                             hint="give the path of your mirror's public key, relative to this profile or "
                                  "absolute") from None
        if not content.lstrip().startswith(_ARMORED_KEY):
            raise check.fail(f"{where}.key_file: {file} is not an ASCII-armored OpenPGP public key", node,
                             "key_file", hint="export it with `gpg --armor --export KEYID > mirror.asc`")
        return MirrorKey(content=content, fingerprint=fingerprint, origin=f"key_file {file}")
    return None


def _url(check: Checker, node: dict[str, object], key: str, where: str) -> str | None:
    if key not in node:
        return None
    value = check.string(node, key, where)  # type: ignore[arg-type]
    if not value.startswith(("http://", "https://")):
        raise check.fail(f"{where}.{key} must be an http(s) URL, not {value!r}", node, key)
    return value


def _endpoint(check: Checker, node: dict[str, object], key: str) -> tuple[str, int]:
    value = check.string(node, key, "forward")  # type: ignore[arg-type]
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise check.fail(f"forward {key} must look like IP:PORT, not {value!r}", node, key)
    return host, int(port)


def starting_profile(source: Path) -> str:
    """The text of a profile to start one's own from: `source` as written (its comments explain each key)."""
    load_profile(source)   # a source that does not load is no start
    return (f"# Started from snapbuild's mirror profile {source.stem!r} by `snapbuild profile init`.\n"
            + source.read_text())


def write_new_profile(text: str, output: Path, *, force: bool) -> Path:
    """Write a started profile to `output`; an existing file is kept unless `force`."""
    from snapbuild.errors import UserError

    if not output.parent.is_dir():
        raise UserError(f"cannot write {output}: directory {output.parent} does not exist",
                        hint="create it first, or choose another -o FILE")
    if output.is_dir():
        raise UserError(f"cannot write {output}: it is a directory", hint="give a file name, e.g. -o my-mirrors.yaml")
    try:
        with output.open("w" if force else "x") as handle:   # "x": never overwrite, even in a race
            handle.write(text)
    except FileExistsError:
        raise UserError(f"{output} already exists; not overwritten",
                        hint="pass --force to overwrite it, or choose another -o FILE") from None
    load_profile(output)
    return output


def mirrors_hint(profile: Profile) -> str:
    """How to change where a build downloads from: edit one's own profile, or start one from this one (never
    the shipped files, which live inside the installed package)."""
    from snapbuild.paths import data_dir

    if Path(profile.path).resolve().is_relative_to(data_dir("recipes").resolve()):
        return (f"write your own profile with mirrors (`snapbuild profile init -o my-mirrors.yaml`, or --from "
                f"{profile.name} to start from this one), edit it, then pass --mirrors ./my-mirrors.yaml")
    return f"change your profile {profile.path}"
