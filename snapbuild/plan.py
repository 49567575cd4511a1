"""Recipe + distro + mirror profile + variables -> Plan: ordered actions, files, image properties.

Everything here is pure: making a plan touches no cloud, VM or disk, so `render` and `plan` are safe.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import jinja2.meta

from snapbuild import __version__, actions, digest, paths
from snapbuild.actions import Action, PrePull, WriteFile, normalize_image
from snapbuild.distros import Distro
from snapbuild.errors import RecipeError, UserError
from snapbuild.profiles import REGISTRY_SERVERS, Forward, Profile
from snapbuild.recipes import Recipe, Step, check_file_reference
from snapbuild.schema import Checker
from snapbuild.templating import environment, render_file, render_string

DROPIN_DIR = "/etc/cloud/cloud.cfg.d"
KEYRING_DIR = "/etc/apt/keyrings"
APT_PROXY_FILE = "/etc/apt/apt.conf.d/99snapbuild-proxy"


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    name: str
    category: str
    properties: Mapping[str, str]
    min_disk_gb: int
    min_ram_mb: int
    disk_size_gb: int


@dataclass(frozen=True, kw_only=True)
class Plan:
    recipe_name: str
    recipe_digest: str
    recipe_file: str
    recipe_distros: tuple[str, ...]              # every distro the recipe supports (a base of another is refused)
    distro: Distro
    profile: Profile
    variables: Mapping[str, Any]
    actions: tuple[Action, ...]
    image: ImageSpec
    components: Mapping[str, str]
    blocked_without_mirror: tuple[str, ...]      # human lines: what would be pulled from a blocked host
    unreliable_hosts: tuple[str, ...]
    verify_checks: tuple[tuple[str, ...], ...]
    default_user_groups: tuple[str, ...]
    build_apt_proxy: str | None = None
    mirror_forwards: tuple[Forward, ...] = ()
    snapbuild_version: str = __version__
    warnings: tuple[str, ...] = field(default_factory=tuple)
    content: digest.ContentInputs               # what the content digest is made of, the base aside
    variant: str | None = None                  # None: the recipe has no variants

    def content_digest(self, base_checksum: str | None = None) -> digest.ContentDigest:
        """The image's content digest; without the base image's checksum, the plan-time one (snapbuild.digest)."""
        return digest.content_digest(replace(self.content, base_checksum=digest.label_checksum(base_checksum)))

    @property
    def distro_name(self) -> str:
        return self.distro.name

    @property
    def files(self) -> tuple[WriteFile, ...]:
        """Every file the plan writes into the image, in order."""
        return tuple(a for a in self.actions if isinstance(a, WriteFile))

    @property
    def dropins(self) -> tuple[WriteFile, ...]:
        return tuple(f for f in self.files if f.path.startswith(DROPIN_DIR + "/"))

    @property
    def prepulls(self) -> tuple[PrePull, ...]:
        return tuple(a for a in self.actions if isinstance(a, PrePull))


class _MirrorView:
    """What templates see as `mirrors`."""

    def __init__(self, profile: Profile, distro: Distro) -> None:
        self.profile = profile
        self.name = profile.name
        self.archive = profile.archive_for(distro.id, distro.archive)
        self.security = profile.security_for(distro.id, distro.security)
        self.registries = dict(profile.registries)

    def registry_mirrors(self, registry: str) -> list[str]:
        return list(self.profile.registry_mirrors(registry))

    def url(self, upstream: str) -> str:
        return self.profile.rewrite_url(upstream)


def make_plan(recipe: Recipe, *, distro: Distro, profile: Profile, variables: Mapping[str, Any],
              variant: str | None = None) -> Plan:
    """`variables` as resolve_variables() gives them for the same `variant` (None: the recipe's default)."""
    if distro.name not in recipe.distros:
        raise UserError(f"recipe {recipe.name!r} does not support {distro.name}",
                        hint=f"it supports: {', '.join(recipe.distros)}")
    chosen = recipe.variant(variant)
    builder = _PlanBuilder(recipe, distro, profile, variables, chosen.name if chosen else None)
    return builder.build()


class _PlanBuilder:
    def __init__(self, recipe: Recipe, distro: Distro, profile: Profile, variables: Mapping[str, Any],
                 variant: str | None = None) -> None:
        self.recipe = recipe
        self.distro = distro
        self.profile = profile
        self.variables = dict(variables)
        self.variant = variant
        self.check = Checker(recipe.file)
        self.env = environment([recipe.path / "templates", recipe.path])
        self.cloudinit_env = environment([paths.data_dir("cloudinit")])
        self.context: dict[str, Any] = {
            **self.variables,
            "vars": self.variables,
            "distro": distro,
            "mirrors": _MirrorView(profile, distro),
            "recipe": {"name": recipe.name, "description": recipe.description},
            "variant": variant or "",
        }
        self.actions: list[Action] = []
        self.blocked: list[str] = []
        self.unreliable: set[str] = set()
        self.apt_dirty = True
        self.hosts_toml: set[tuple[str, str]] = set()    # (config_path, registry) written so far

    # -- helpers -------------------------------------------------------------------------------------------

    def text(self, value: Any, line: int | None) -> str:
        return render_string(self.env, str(value), self.context, path=self.recipe.file, line=line)

    def fail(self, message: str, line: int | None, hint: str | None = None) -> RecipeError:
        return RecipeError(message, path=self.recipe.file, line=line, hint=hint)

    def content_of(self, body: Mapping[str, Any], where: str, line: int | None) -> tuple[bytes, str]:
        """The content named by exactly one of template / source / content."""
        given = [k for k in ("template", "source", "content") if k in body]
        if len(given) != 1:
            raise self.fail(f"{where} needs exactly one of template, source, content (got {given or 'none'})", line)
        key = given[0]
        if key == "content":
            return self.text(body["content"], line).encode(), "inline"
        name = self.text(body[key], line)
        check_file_reference(self.recipe, name if key == "source" else f"templates/{name}", line)
        if key == "source":
            return (self.recipe.path / name).read_bytes(), name
        return render_file(self.env, name, self.context, folder=self.recipe.path / "templates").encode(), name

    def list_value(self, body: Mapping[str, Any], key: str, where: str, line: int | None) -> list[str]:
        """A list of strings, or the name of a list variable written as "{{ name }}"."""
        value = body.get(key, [])
        match = re.fullmatch(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}", value.strip()) if isinstance(value, str) else None
        if match:
            name = match.group(1)
            if not isinstance(self.variables.get(name), list):
                raise self.fail(f"{where}.{key}: {{{{ {name} }}}} must name a list variable", line)
            return [str(v) for v in self.variables[name] if str(v)]
        return [self.text(v, line) for v in self.check.string_list(dict(body), key, where)]

    def note_url(self, url: str, what: str) -> None:
        host = urlsplit(url).hostname or ""
        if self.profile.is_blocked(host):
            self.blocked.append(f"{what}: {url} (host {host} is blocked and the profile has no mirror for it)")
        if any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), host) for p in self.profile.unreliable):
            self.unreliable.add(host)

    def add(self, action: Action) -> None:
        if isinstance(action, actions.AptSource):
            self.apt_dirty = True
        if isinstance(action, actions.InstallPackages) and self.apt_dirty:
            self.actions.append(actions.AptUpdate())
            self.apt_dirty = False
        self.actions.append(action)

    # -- the plan ------------------------------------------------------------------------------------------

    def build(self) -> Plan:
        self.distro_sources()
        for step in self.recipe.steps:
            if step.distros and self.distro.name not in step.distros:
                continue
            if step.when and not step.when.holds(variant=self.variant, variables=self.variables):
                continue
            handler = getattr(self, f"step_{step.kind}")
            handler(step)
        self.bake_dropins()
        image = self.image_spec()
        components = {k: self.text(v, None) for k, v in self.recipe.components.items()}
        checks = tuple(tuple(self.text(a, None) for a in c.argv) for c in self.recipe.checks
                       if not c.when or c.when.holds(variant=self.variant, variables=self.variables))
        groups = tuple(dict.fromkeys((*self.distro.default_groups,
                                      *(self.text(g, None) for g in self.recipe.image.default_user_groups))))
        return Plan(
            recipe_name=self.recipe.name, recipe_digest=self.recipe.digest, recipe_file=self.recipe.file,
            recipe_distros=tuple(self.recipe.distros), distro=self.distro, profile=self.profile,
            variables=self.variables, actions=tuple(self.actions),
            image=image, components=components, blocked_without_mirror=tuple(dict.fromkeys(self.blocked)),
            unreliable_hosts=tuple(sorted(self.unreliable)), verify_checks=checks, default_user_groups=groups,
            build_apt_proxy=self.profile.build_apt_proxy, mirror_forwards=self.profile.forwards,
            variant=self.variant, content=digest.ContentInputs(
                recipe_files=self.recipe.digest, variables=self.variables,
                distro=digest.distro_content(self.distro), profile=digest.profile_content(self.profile),
                variant=self.variant, snapbuild_files=digest.snapbuild_files_digest()),
        )

    def distro_sources(self) -> None:
        d, p = self.distro, self.profile
        archive, security = p.archive_for(d.id, d.archive), p.security_for(d.id, d.security)
        self.note_url(archive, "distro archive")
        self.note_url(security, "distro security archive")
        if p.build_apt_proxy:
            self.add(actions.WriteFile(path=APT_PROXY_FILE, origin="profile build_apt_proxy (removed when sealing)",
                                       content=f'Acquire::http::Proxy "{p.build_apt_proxy}";\n'.encode()))
        text = d.archive_sources(archive, security, written_by=archive_sources_author(p.name))
        self.add(actions.WriteFile(path=d.sources_file, content=text.encode(), origin=f"mirror profile {p.name}"))
        # DEB822 only: the legacy one-line file would duplicate (or contradict) the sources above.
        self.add(actions.RemoveFiles(paths=("/etc/apt/sources.list",)))

    def step_apt_repository(self, step: Step) -> None:
        body = self.check.mapping(step.body, "apt_repository", required=("name", "url"),
                                  optional=("suites", "components", "key_file", "key_url", "key_fingerprint",
                                            "architectures"))
        name = self.text(body["name"], step.line)
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
            raise self.fail(f"apt_repository name {name!r} must be lowercase letters, digits, '.', '_' or '-'",
                            step.line)
        upstream = self.text(body["url"], step.line)
        url = self.profile.rewrite_url(upstream)
        self.note_url(url, f"apt repository {name}")
        suites = [self.text(s, step.line) for s in self.check.string_list(body, "suites", "apt_repository")] \
            or [self.distro.codename]
        components = [self.text(c, step.line) for c in self.check.string_list(body, "components", "apt_repository")]
        flat = all(s.endswith("/") for s in suites)
        if not flat and not components:
            components = ["main"]
        key_path = f"{KEYRING_DIR}/{name}.asc"
        recipe_key = self.recipe_key(body, name, key_path, step.line)
        # A mirror that re-signs the repository (aptly, Pulp, Artifactory) is trusted with its own key, which the
        # profile names; the recipe's key (checked above all the same) is then neither fetched nor trusted.
        mirror_key = self.profile.mirror_key(upstream)
        if mirror_key is not None:
            if mirror_key.url:
                self.note_url(mirror_key.url, f"signing key of {name} (mirror profile)")
            key = actions.AptKey(path=key_path, content=mirror_key.content, url=mirror_key.url,
                                 fingerprint=mirror_key.fingerprint,
                                 origin=f"mirror profile {self.profile.name}'s key ({mirror_key.origin})")
        else:
            if recipe_key.url:
                self.note_url(recipe_key.url, f"signing key of {name}")
            key = recipe_key
        lines = ["Types: deb", f"URIs: {url}", f"Suites: {' '.join(suites)}"]
        if components:
            lines.append(f"Components: {' '.join(components)}")
        arches = self.check.string_list(body, "architectures", "apt_repository")
        if arches:
            lines.append(f"Architectures: {' '.join(arches)}")
        lines.append(f"Signed-By: {key_path}")
        self.add(actions.AptSource(name=name, path=f"/etc/apt/sources.list.d/{name}.sources",
                                   deb822="\n".join(lines) + "\n", key=key))

    def recipe_key(self, body: Mapping[str, Any], name: str, key_path: str, line: int | None) -> actions.AptKey:
        """The signing key an apt_repository step names: its key_file, or key_url (mapped) + key_fingerprint."""
        if "key_file" in body:
            path = check_file_reference(self.recipe, self.text(body["key_file"], line), line)
            return actions.AptKey(path=key_path, content=path.read_bytes())
        if "key_url" in body:
            if "key_fingerprint" not in body:
                raise self.fail(f"apt_repository {name}: key_url needs key_fingerprint (the key is checked)", line)
            fpr = re.sub(r"\s+", "", self.text(body["key_fingerprint"], line)).upper()
            if not re.fullmatch(r"[0-9A-F]{40}", fpr):
                raise self.fail(f"apt_repository {name}: key_fingerprint must be 40 hex digits", line)
            key_url = self.profile.rewrite_url(self.text(body["key_url"], line))
            return actions.AptKey(path=key_path, url=key_url, fingerprint=fpr)
        raise self.fail(f"apt_repository {name} needs key_file or key_url + key_fingerprint", line,
                        hint="unsigned repositories are refused")

    def step_packages(self, step: Step) -> None:
        body = step.body
        if isinstance(body, list):
            body = {"install": body}
        body = self.check.mapping(body, "packages", required=("install",), optional=("hold",))
        install = tuple(self.text(p, step.line) for p in self.check.string_list(body, "install", "packages"))
        hold = tuple(self.text(p, step.line) for p in self.check.string_list(body, "hold", "packages"))
        for package in install:
            if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+:~-]+)?", package):
                raise self.fail(f"packages: {package!r} is not a package name (optionally =version)", step.line)
        names = {p.split("=")[0] for p in install}
        for package in hold:
            if package not in names:
                raise self.fail(f"packages: hold {package!r} is not in the install list", step.line)
        self.add(actions.InstallPackages(packages=install, hold=hold))

    def step_file(self, step: Step) -> None:
        body = self.check.mapping(step.body, "file", required=("path",),
                                  optional=("template", "source", "content", "mode", "owner"))
        path = self.text(body["path"], step.line)
        if not path.startswith("/"):
            raise self.fail(f"file path {path!r} must be absolute", step.line)
        content, origin = self.content_of(body, "file", step.line)
        self.add(actions.WriteFile(path=path, content=content, mode=self.mode(body, step.line),
                                   owner=self.text(body.get("owner", "root:root"), step.line), origin=origin))

    def mode(self, body: Mapping[str, Any], line: int | None, default: str = "0644") -> int:
        raw = str(body.get("mode", default))
        if not re.fullmatch(r"0?[0-7]{3,4}", raw):
            raise self.fail(f"mode {raw!r} must be octal like \"0644\" (quote it in YAML)", line)
        return int(raw, 8)

    def step_command(self, step: Step) -> None:
        body = step.body
        if isinstance(body, list):
            body = {"argv": body}
        body = self.check.mapping(body, "command", required=("argv",), optional=("timeout", "only"))
        argv = tuple(self.text(a, step.line) for a in self.check.string_list(body, "argv", "command", required=True))
        if not argv:
            raise self.fail("command argv is empty", step.line)
        only = body.get("only")
        if only not in (None, "vm", "chroot"):
            raise self.fail("command.only must be vm or chroot", step.line)
        timeout = body.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
            raise self.fail("command.timeout must be a number of seconds", step.line)
        self.add(actions.RunCommand(argv=argv, timeout=timeout, only_kind=only))

    def step_script(self, step: Step) -> None:
        body = self.check.mapping(step.body, "script", required=("name",),
                                  optional=("template", "source", "content", "interpreter", "timeout"))
        content, _ = self.content_of(body, "script", step.line)
        name = self.text(body["name"], step.line)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise self.fail(f"script name {name!r} must be a plain file name", step.line)
        self.add(actions.RunScript(name=name, content=content, interpreter=str(body.get("interpreter", "/bin/bash")),
                                   timeout=body.get("timeout")))

    def step_service(self, step: Step) -> None:
        body = step.body
        if isinstance(body, str):
            body = {"name": body}
        body = self.check.mapping(body, "service", required=("name",), optional=("enabled", "start"))
        self.add(actions.Service(name=self.text(body["name"], step.line),
                                 enabled=self.check.boolean(body, "enabled", "service", True),
                                 start=self.check.boolean(body, "start", "service", False)))

    def step_sysctl(self, step: Step) -> None:
        if not isinstance(step.body, dict) or not step.body:
            raise self.fail("sysctl must be a mapping of setting: value", step.line)
        settings = self.check.string_map({"sysctl": step.body}, "sysctl", "step")
        path = f"/etc/sysctl.d/99-snapbuild-{self.recipe.name}.conf"
        text = "# Written by snapbuild.\n" + "".join(f"{k} = {self.text(v, step.line)}\n" for k, v in settings.items())
        self.add(actions.WriteFile(path=path, content=text.encode(), origin="sysctl step"))
        self.add(actions.ApplySysctl(path=path))

    def step_kernel_modules(self, step: Step) -> None:
        modules = self.check.string_list({"m": step.body}, "m", "kernel_modules", required=True)
        path = f"/etc/modules-load.d/snapbuild-{self.recipe.name}.conf"
        self.add(actions.WriteFile(path=path, content=("\n".join(modules) + "\n").encode(), origin="kernel_modules"))
        self.add(actions.LoadModules(modules=modules))

    def step_swap_off(self, step: Step) -> None:
        if step.body is not True:
            raise self.fail("swap_off takes the value true", step.line)
        self.add(actions.SwapOff())

    def step_containerd_mirrors(self, step: Step) -> None:
        body = self.check.mapping(step.body, "containerd_mirrors", required=("registries",),
                                  optional=("config_path",))
        config_path = self.text(body.get("config_path", "/etc/containerd/certs.d"), step.line)
        for registry in self.check.string_list(body, "registries", "containerd_mirrors", required=True):
            server = REGISTRY_SERVERS.get(registry, f"https://{registry}")
            lines = [f"# Written by snapbuild (mirror profile {self.profile.name!r}).", f"server = {_toml(server)}"]
            for mirror in self.profile.registry_mirrors(registry):
                lines += ["", f"[host.{_toml(mirror)}]", '  capabilities = ["pull", "resolve"]']
                if mirror.startswith("http://"):
                    lines.append("  skip_verify = true")
            self.add(actions.WriteFile(path=f"{config_path}/{registry}/hosts.toml", content=("\n".join(lines) + "\n")
                                       .encode(), origin=f"registry mirrors for {registry}"))
            self.hosts_toml.add((config_path.rstrip("/"), registry))

    def step_prepull(self, step: Step) -> None:
        body = self.check.mapping(step.body, "prepull", optional=("namespace", "images", "list_command", "expect",
                                                                  "registries", "hosts_dir", "parallel"))
        images = tuple(normalize_image(i) for i in self.list_value(body, "images", "prepull", step.line))
        list_command = tuple(self.text(a, step.line) for a in self.check.string_list(body, "list_command", "prepull"))
        expect = self.expected_images(body, step.line)
        if not images and not list_command:
            raise self.fail("prepull needs images or list_command", step.line)
        if expect and not list_command:
            raise self.fail("prepull.expect needs list_command: the expected images are checked against its output",
                            step.line)
        named = tuple(self.text(r, step.line) for r in self.check.string_list(body, "registries", "prepull"))
        if list_command and not expect and not named:
            raise self.fail("prepull with list_command must name the images it expects (or at least their "
                            "registries)", step.line, hint="for kubeadm: expect: [registry.k8s.io/kube-apiserver:"
                            "v{{ kubernetes_version }}, ...] (see the shipped k8s recipe)")
        hosts_dir = self.text(body.get("hosts_dir", "/etc/containerd/certs.d"), step.line)
        registries = sorted({*(registry_of(i) for i in images), *(registry_of(e.ref) for e in expect), *named})
        routes = tuple(self.route(registry, hosts_dir) for registry in registries)
        for route in routes:
            if route.blocked:
                why = ("gives no mirror for it" if not self.profile.registry_mirrors(route.registry)
                       else f"has mirrors but the recipe writes no hosts.toml for it under {hosts_dir}")
                self.blocked.append(f"image pre-pull: registry {route.registry} is blocked and profile "
                                    f"{self.profile.name!r} {why}")
        parallel = self.check.integer(body, "parallel", "prepull", default=4)
        self.add(actions.PrePull(namespace=self.text(body.get("namespace", "k8s.io"), step.line), images=images,
                                 list_command=list_command, expect=expect, routes=routes, parallel=max(1, parallel),
                                 hosts_dir=hosts_dir))

    def expected_images(self, body: Mapping[str, Any], line: int | None) -> tuple[actions.ExpectedImage, ...]:
        """prepull.expect: each entry rendered, with the recipe variables it is made of (for the failure hint)."""
        out: list[actions.ExpectedImage] = []
        for raw in self.check.string_list(dict(body), "expect", "prepull"):
            ref = normalize_image(self.text(raw, line))
            if ref in {e.ref for e in out}:
                raise self.fail(f"prepull.expect lists {ref} twice", line)
            names = sorted(jinja2.meta.find_undeclared_variables(self.env.parse(raw)))
            used = tuple((n, str(self.variables[n])) for n in names
                         if n in self.recipe.variables and not isinstance(self.variables.get(n), list | dict))
            out.append(actions.ExpectedImage(ref=ref, variables=used))
        return tuple(out)

    def route(self, registry: str, hosts_dir: str) -> actions.RegistryRoute:
        """Where `ctr pull --hosts-dir` goes for `registry`: the profile's mirrors if this plan wrote them a
        hosts.toml there, else straight to the registry."""
        mirrors = self.profile.registry_mirrors(registry) if (hosts_dir.rstrip("/"), registry) in self.hosts_toml \
            else ()
        return actions.RegistryRoute(registry=registry, mirrors=mirrors,
                                     server=REGISTRY_SERVERS.get(registry, f"https://{registry}"),
                                     blocked=not mirrors and self.profile.registry_upstream_blocked(registry))

    def step_cloudinit_dropin(self, step: Step) -> None:
        body = self.check.mapping(step.body, "cloudinit_dropin", required=("name",),
                                  optional=("template", "source", "content"))
        name = self.text(body["name"], step.line)
        if not re.fullmatch(r"\d\d-[A-Za-z0-9._-]+\.cfg", name):
            raise self.fail(f"cloud-init drop-in name {name!r} must look like 99-something.cfg", step.line)
        content, origin = self.content_of(body, "cloudinit_dropin", step.line)
        self.add(actions.WriteFile(path=f"{DROPIN_DIR}/{name}", content=content, origin=origin))

    def bake_dropins(self) -> None:
        """The cloud-init drop-ins every image gets: mirrors that survive first boot, user groups, growpart."""
        ctx = {"distro": self.distro, "mirrors": self.context["mirrors"], "profile": self.profile,
               "recipe": self.context["recipe"],
               "groups": list(dict.fromkeys((*self.distro.default_groups, *self.recipe.image.default_user_groups)))}
        # The apt drop-in always: whatever the profile, first boot must not rewrite the sources snapbuild wrote.
        ctx["sources_list"] = self.distro.archive_sources("$PRIMARY", "$SECURITY",
                                                          written_by=archive_sources_author(self.profile.name))
        wanted = [("99-snapbuild-growpart.cfg", "dropin-growpart.cfg.j2"),
                  ("99-snapbuild-apt.cfg", "dropin-apt.cfg.j2")]
        if self.recipe.image.default_user_groups:
            wanted.append(("99-snapbuild-default-user.cfg", "dropin-default-user.cfg.j2"))
        for name, template in wanted:
            text = render_cloudinit(self.cloudinit_env, template, ctx)
            self.add(actions.WriteFile(path=f"{DROPIN_DIR}/{name}", content=text.encode(), origin=template))

    def image_spec(self) -> ImageSpec:
        settings = self.recipe.image
        properties = {
            "hw_disk_bus": "virtio",
            "hw_vif_model": "virtio",
            "os_type": "linux",
            "os_distro": self.distro.id,
            "os_version": self.distro.version,
            "os_admin_user": self.distro.default_user,
            "marketplace_category": self.text(settings.category, None),
        }
        properties.update({k: self.text(v, None) for k, v in settings.properties.items()})
        name = self.text(settings.name, None)
        if self.variant is not None:
            properties["snapbuild_variant"] = self.variant
            if self.variant != self.recipe.default_variant:
                name = f"{name} ({self.variant})"   # the default variant keeps the recipe's name
        return ImageSpec(name=name, category=properties["marketplace_category"],
                         properties=properties, min_disk_gb=settings.min_disk_gb, min_ram_mb=settings.min_ram_mb,
                         disk_size_gb=settings.disk_size_gb)


def archive_sources_author(profile: str) -> str:
    return f"snapbuild (mirror profile {profile!r})"


def render_cloudinit(env: jinja2.Environment, template: str, context: dict[str, Any]) -> str:
    return render_file(env, template, context, folder=paths.data_dir("cloudinit"))


def registry_of(ref: str) -> str:
    return normalize_image(ref).split("/", 1)[0]


def _toml(value: str) -> str:
    import json

    return json.dumps(value)


def plan_from_names(*, library: Any, recipe_name: str, distro_name: str | None, profile_name: str,
                    config_variables: Mapping[str, Any], set_values: Mapping[str, str],
                    config_path: str | None = None, variant: str | None = None) -> Plan:
    """The one way the CLI and the builders turn names into a Plan."""
    from snapbuild.distros import get_distro
    from snapbuild.profiles import load_profile
    from snapbuild.recipes import resolve_variables

    recipe = library.load(recipe_name)
    distro = get_distro(distro_name or recipe.distros[0])
    profile = load_profile(library.profile_path(profile_name))
    recipe.variant(variant)   # an unknown variant fails first, naming the ones there are
    values = resolve_variables(recipe, config_values=config_variables, set_values=set_values, config_path=config_path,
                               variant=variant)
    return make_plan(recipe, distro=distro, profile=profile, variables=values, variant=variant)


def shipped_recipes_dir() -> Path:
    return paths.data_dir("recipes")
