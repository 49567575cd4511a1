"""The user's config file (snapbuild.yaml): defaults for options, variables and the recipes path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapbuild import paths, yamlfile
from snapbuild.errors import UserError
from snapbuild.schema import Checker, type_name
from snapbuild.yamlfile import LineDict

CONFIG_NAME = "snapbuild.yaml"

# The `build:` section: per-site defaults for the options of `snapbuild build` (and of its shortcuts `k8s`,
# `docker-ce`, and of `validate`, which checks what a build would use), by long option name (`floating_network`
# or `floating-network`). This is the one list: the values are shaped and converted by the options' own click
# types (snapbuild/cli/cloud_options.py `site_defaults`), the schema lists the same keys, and
# tests/unit/test_config_build_defaults.py proves that these keys and BUILD_REFUSED together are exactly the
# commands' options (validate has no --events).
BUILD_KEYS = (
    "flavor", "network", "floating_network", "security_group", "ssh_cidr", "availability_zone", "config_drive",
    "volume_size", "volume_disk_format", "ssh_user", "ssh_port", "ssh_interface", "ssh_ip_version", "ssh_bastion",
    "ssh_bastion_key", "visibility", "protected", "hidden", "share_with", "property", "tag",
    "timeout_boot", "timeout_ssh", "timeout_provision", "timeout_snapshot", "transport",
)

# Options that make no sense as one default for every build on a site, with why (the hint of the error).
BUILD_REFUSED: Mapping[str, str] = {
    "distro": "set the top-level `distro:` key instead (it serves every command, not only builds)",
    "mirrors": "set the top-level `mirrors:` key instead (it serves every command, not only builds)",
    "set": "give recipe variables under the top-level `variables:` key instead",
    "variant": "variants belong to one recipe (k8s: full or slim; others have none); pass --variant per build",
    "base_image": "a base image fits one distro, and by default the newest active image whose os_distro and "
                  "os_version match the recipe's is found; pass --base-image per build",
    "port": "an existing port serves one builder at a time; pass --port per build",
    "name": "it names one image (the default name already carries the recipe and the date); pass --name per build",
    "min_disk": "each recipe states what its image needs (image.min_disk_gb); one value for every recipe would "
                "understate or overstate it; pass --min-disk per build",
    "min_ram": "each recipe states what its image needs (image.min_ram_mb); one value for every recipe would "
               "understate or overstate it; pass --min-ram per build",
    **{flag: f"--{flag} is --visibility {flag} spelled as the openstack CLI spells it; set `visibility: {flag}` "
             "instead" for flag in ("public", "private", "community", "shared")},
    "insecure_accept_any_host_key": "it turns off host-key pinning, which must be asked for on the command line "
                                    "of each build, never by a file",
    "keep_on_failure": "it is for debugging one build; as a default every failed build would leave servers, "
                       "volumes and floating IPs behind",
    "on_error": "abort and ask are for debugging one build (abort as a default would leave every failed build's "
                "servers behind; ask waits for a person); pass it per build",
    "no_provision": "it is a test/debug mode that captures an unprovisioned image; pass it per build",
    "allow_blocked": "it overrides a safety check for one build; fix the mirror profile (or choose another) instead",
    "manifest": "it names one build's manifest (each build writes its own by default); pass --manifest per build",
    "json": "it chooses how one command prints its result; pass --json where a program reads it",
    "format": "it chooses how one command prints its result; pass -f where a program reads it",
    "column": "it chooses what one command prints; pass -c where a program reads it",
    "events": "it names one build's event stream; pass --events per build",
}


@dataclass(frozen=True, kw_only=True)
class Config:
    path: str | None = None
    recipes_path: tuple[Path, ...] = ()
    mirrors: str | None = None
    distro: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    build: Mapping[str, Any] = field(default_factory=dict)   # BUILD_KEYS (underscores) → value, as in the file
    # `clouds: NAME: build:` and `clouds: NAME: regions: REGION: build:`, each shaped as `build`, keyed by where
    # it is in the file ("clouds.NAME.build", "clouds.NAME.regions.REGION.build").
    clouds: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def build_for(self, cloud: str | None, region: str | None) -> BuildDefaults:
        """The build defaults that serve a build on `cloud` (and `region`): the `build:` section, then the cloud's,
        then the cloud's region's; a later section wins per key."""
        values: dict[str, Any] = {}
        origins: dict[str, tuple[str, Mapping[str, Any]]] = {}
        layers = [("build", self.build)]
        if cloud:
            layers.append((f"clouds.{cloud}.build", self.clouds.get(f"clouds.{cloud}.build", {})))
            if region:
                where = f"clouds.{cloud}.regions.{region}.build"
                layers.append((where, self.clouds.get(where, {})))
        for where, section in layers:
            for key, value in section.items():
                values[key] = value
                origins[key] = (where, section)
        return BuildDefaults(values=values, origins=origins)


@dataclass(frozen=True)
class BuildDefaults:
    """Build option defaults merged from the config's sections, each key knowing the section it came from (for an
    error that names the file's line and the key's full path)."""

    values: Mapping[str, Any]
    origins: Mapping[str, tuple[str, Mapping[str, Any]]]    # key → (where, section)


def find_config(explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"config file {explicit} not found", hint="check the --config path")
        return path
    for candidate in (Path.cwd() / CONFIG_NAME, paths.config_dir() / CONFIG_NAME):
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | None) -> Config:
    path = find_config(explicit)
    if path is None:
        return Config()
    data = yamlfile.load(path) or {}
    check = Checker(str(path))
    check.mapping(data, "config", optional=("recipes_path", "mirrors", "distro", "variables", "build", "clouds"))
    folders = []
    for entry in check.string_list(data, "recipes_path", "config"):
        folder = (path.parent / Path(entry).expanduser()).resolve()
        if not folder.is_dir():
            raise check.fail(f"recipes_path entry {entry!r} is not a directory", data, "recipes_path")
        folders.append(folder)
    variables = data.get("variables") or {}
    if not isinstance(variables, dict):
        raise check.fail("variables must be a mapping of name: value", data, "variables")
    build = _build_section(check, data, "build")
    return Config(path=str(path), recipes_path=tuple(folders),
                  mirrors=check.string(data, "mirrors", "config", default="") or None,
                  distro=check.string(data, "distro", "config", default="") or None,
                  variables=dict(variables), build=build, clouds=_clouds_section(check, data))


def _clouds_section(check: Checker, data: dict[str, Any]) -> dict[str, Mapping[str, Any]]:
    """`clouds:` by cloud name (as in clouds.yaml, chosen with --os-cloud), each with its own `build:` defaults and
    per region (--os-region-name) another: a site's clouds differ in flavor names, networks and floating pools."""
    clouds = data.get("clouds") or {}
    if not isinstance(clouds, dict):
        raise check.fail(f"clouds must be a mapping of cloud name: {{build: ...}}, not {type_name(clouds)}",
                         data, "clouds")
    out: dict[str, Mapping[str, Any]] = {}
    for name, entry in clouds.items():
        where = f"clouds.{name}"
        entry = entry if entry is not None else {}
        check.mapping(entry, where, optional=("build", "regions"), parent=clouds, parent_key=name)
        out[f"{where}.build"] = _build_section(check, entry, f"{where}.build")
        regions = entry.get("regions") or {}
        if not isinstance(regions, dict):
            raise check.fail(f"{where}.regions must be a mapping of region name: {{build: ...}}, not "
                             f"{type_name(regions)}", entry, "regions")
        for region, region_entry in regions.items():
            at = f"{where}.regions.{region}"
            region_entry = region_entry if region_entry is not None else {}
            check.mapping(region_entry, at, optional=("build",), parent=regions, parent_key=region)
            out[f"{at}.build"] = _build_section(check, region_entry, f"{at}.build")
    return out


def _build_section(check: Checker, data: dict[str, Any], where: str) -> dict[str, Any]:
    """A `build:` section by underscore key, keeping each key's line (its values are checked by the command
    that takes them: they need that command's click options)."""
    section = data.get("build") or {}
    if not isinstance(section, dict):
        raise check.fail(f"{where} must be a mapping of option: value, not {type_name(section)}", data, "build")
    for key in section:
        if key.replace("-", "_") in BUILD_REFUSED:
            raise check.fail(f"{where}: --{key.replace('_', '-')} cannot have a default in the config file",
                             section, key, hint=BUILD_REFUSED[key.replace("-", "_")])
    check.mapping(section, where, optional=(*BUILD_KEYS, *(k.replace("_", "-") for k in BUILD_KEYS if "_" in k)),
                  parent=data, parent_key="build")
    out = LineDict()
    out.line, out.key_lines = getattr(section, "line", 0), {}
    for key, value in section.items():
        name = key.replace("-", "_")
        if name in out:
            other = name if "-" in key else name.replace("_", "-")
            raise check.fail(f"{where}: {key!r} and {other!r} are the same option", section, key,
                             hint="keep one of the two")
        if value is None:
            raise check.fail(f"{where}.{key} has no value", section, key, hint="give it one, or remove the line")
        out[name] = value
        out.key_lines[name] = yamlfile.line_of(section, key) or 0
    return out
