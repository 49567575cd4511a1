"""The small actions a Plan is made of. Any builder applies them to any Guest (snapbuild.provision)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass


def normalize_image(ref: str) -> str:
    """`nginx:1` -> `docker.io/library/nginx:1`: containerd wants fully qualified references."""
    name = ref.strip()
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


@dataclass(frozen=True, kw_only=True)
class WriteFile:
    path: str
    content: bytes
    mode: int = 0o644
    owner: str = "root:root"
    origin: str = ""          # where the content came from (template name), for render/plan

    def describe(self) -> str:
        return f"write {self.path} (mode {self.mode:04o}, {self.owner}{', from ' + self.origin if self.origin else ''})"


@dataclass(frozen=True, kw_only=True)
class RemoveFiles:
    paths: tuple[str, ...]

    def describe(self) -> str:
        return "remove " + " ".join(self.paths)


@dataclass(frozen=True, kw_only=True)
class AptKey:
    """A repository signing key: carried in the plan (`content`: a recipe's or a mirror profile's key_file) or
    fetched (`url`); checked against `fingerprint` where one is given (always for a fetched key)."""

    path: str                      # /etc/apt/keyrings/NAME.asc
    content: bytes | None = None
    url: str | None = None
    fingerprint: str | None = None
    origin: str = ""               # whose key it is: "" the recipe's, else e.g. "mirror profile NAME's key (key_url)"

    def describe(self) -> str:
        if self.content is not None:
            check = f", require fingerprint {self.fingerprint}" if self.fingerprint else ""
            return f"install signing key {self.path}{check}"
        return f"fetch signing key {self.url} -> {self.path}, require fingerprint {self.fingerprint}"


@dataclass(frozen=True, kw_only=True)
class AptSource:
    name: str
    path: str                      # /etc/apt/sources.list.d/NAME.sources
    deb822: str
    key: AptKey | None

    def describe(self) -> str:
        return f"apt source {self.name} -> {self.path}"

    def details(self) -> list[str]:
        """The signing key apt will trust for it, and who named it (the recipe, or a re-signing mirror's profile)."""
        if self.key is None:
            return []
        whose = self.key.origin or "the recipe's key"
        return [f"{self.key.describe()} — {whose}"]


@dataclass(frozen=True, kw_only=True)
class AptUpdate:
    def describe(self) -> str:
        return "apt-get update"


@dataclass(frozen=True, kw_only=True)
class InstallPackages:
    packages: tuple[str, ...]      # "name" or "name=version"
    hold: tuple[str, ...] = ()

    def describe(self) -> str:
        text = "apt-get install " + " ".join(self.packages)
        return text + (f"; apt-mark hold {' '.join(self.hold)}" if self.hold else "")


@dataclass(frozen=True, kw_only=True)
class RunCommand:
    argv: tuple[str, ...]
    timeout: float | None = None
    only_kind: str | None = None    # "vm" or "chroot": run only on that kind of guest

    def describe(self) -> str:
        where = f" (on {self.only_kind} guests only)" if self.only_kind else ""
        return "run " + shlex.join(self.argv) + where


@dataclass(frozen=True, kw_only=True)
class RunScript:
    name: str
    content: bytes
    interpreter: str = "/bin/bash"
    timeout: float | None = None

    def describe(self) -> str:
        return f"script {self.name} ({self.interpreter}, {len(self.content)} bytes)"


@dataclass(frozen=True, kw_only=True)
class Service:
    name: str
    enabled: bool = True
    start: bool = False           # start now (VM guests only; a chroot has no init)

    def describe(self) -> str:
        verb = "enable" if self.enabled else "disable"
        return f"{verb} service {self.name}" + (" and start it" if self.start else "")


@dataclass(frozen=True, kw_only=True)
class ApplySysctl:
    path: str

    def describe(self) -> str:
        return f"apply sysctl settings from {self.path} (VM guests; a chroot applies them at first boot)"


@dataclass(frozen=True, kw_only=True)
class LoadModules:
    modules: tuple[str, ...]

    def describe(self) -> str:
        return "modprobe " + " ".join(self.modules) + " (VM guests; persisted for boot)"


@dataclass(frozen=True, kw_only=True)
class SwapOff:
    def describe(self) -> str:
        return "swap off: swapoff -a, swap entries removed from /etc/fstab, swap.target masked"


@dataclass(frozen=True, kw_only=True)
class ExpectedImage:
    """An image the recipe knows, before the build, that the list command will print."""

    ref: str
    # The recipe variables the reference is made of, (name, value): a failed comparison names them.
    variables: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class RegistryRoute:
    """Where containerd pulls a registry's images from: its mirrors in order, then the registry itself."""

    registry: str
    mirrors: tuple[str, ...]
    server: str                  # the upstream endpoint (hosts.toml `server`)
    blocked: bool = False        # upstream blocked where the image is built, and no mirror

    def describe(self) -> str:
        if self.mirrors:
            return "through " + ", ".join(self.mirrors)
        return f"from {self.server}" + (" (BLOCKED, no mirror)" if self.blocked else " (no mirror)")


@dataclass(frozen=True, kw_only=True)
class PrePull:
    namespace: str
    images: tuple[str, ...]                  # pulled as given (a recipe's extra images)
    list_command: tuple[str, ...] = ()
    expect: tuple[ExpectedImage, ...] = ()   # what list_command must print, exactly
    routes: tuple[RegistryRoute, ...] = ()
    hosts_dir: str = "/etc/containerd/certs.d"
    parallel: int = 4

    @property
    def known_images(self) -> tuple[str, ...]:
        """Every image known before the build: the expected list, then the extra images."""
        return tuple(dict.fromkeys((*(e.ref for e in self.expect), *self.images)))

    def route(self, ref: str) -> RegistryRoute | None:
        registry = ref.split("/", 1)[0]
        return next((r for r in self.routes if r.registry == registry), None)

    def describe(self) -> str:
        known = self.known_images
        parts = [f"pre-pull {len(known)} image{'' if len(known) == 1 else 's'} into containerd namespace "
                 f"{self.namespace} through {self.hosts_dir} ({self.parallel} at once)"]
        if self.list_command and self.expect:
            parts.append("the build fails unless " + shlex.join(self.list_command)
                         + " prints exactly the expected images")
        elif self.list_command:
            parts.append("plus every image listed by: " + shlex.join(self.list_command)
                         + " (not known before the build)")
        return "; ".join(parts)

    def details(self) -> list[str]:
        """One line per known image, with where it is pulled from (so a mirror can be filled first)."""
        lines = []
        expected = {e.ref for e in self.expect}
        for ref in self.known_images:
            route = self.route(ref)
            where = route.describe() if route else ""
            tag = "" if ref in expected or not self.expect else " (extra)"
            lines.append(f"{ref}{tag}  {where}".rstrip())
        return lines


Action = (WriteFile | RemoveFiles | AptSource | AptUpdate | InstallPackages | RunCommand | RunScript | Service
          | ApplySysctl | LoadModules | SwapOff | PrePull)
