"""catalogue.yaml → model.Catalogue, validated as strictly as a recipe: every error names the file and the line,
misspelt names get a "did you mean", and nothing in it is trusted downstream without passing here first.

Checked before any cloud is contacted: keys and types; recipes, variants, distros and mirror profiles exist;
variables are declared by the entry's recipe and have valid values; targets named by entries exist; clouds are
in clouds.yaml (when the caller knows its clouds); no two entries build the same thing; the policy keeps at least
one image (keep < 1 would delete every image, the current one included).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from snapbuild import yamlfile
from snapbuild.catalogue.model import BaseSelector, Catalogue, Entry, Policy, Target
from snapbuild.digest import canonical
from snapbuild.errors import RecipeError, UserError
from snapbuild.schema import Checker, type_name

ROLES = ("build", "receive")
BUILDERS = ("snapshot", "local", "chroot")
VISIBILITIES = ("private", "shared", "community", "public")
ENTRY_KEYS = ("recipe", "variant", "distro", "mirrors", "variables", "base_image", "properties", "visibility",
              "image_name", "targets")
TARGET_KEYS = ("cloud", "region", "role", "copy_from", "store", "builder", "base", "build")
POLICY_KEYS = ("keep", "grace_period", "claim_ttl", "claim_settle", "on_claimed", "concurrency", "per_cloud")
# A target's `build:` keys → SnapshotSettings fields (the options of `snapbuild build`, as snapbuild.yaml names them).
BUILD_FIELDS: Mapping[str, str] = {
    "flavor": "flavor", "network": "networks", "floating_network": "floating_network",
    "security_group": "security_groups", "ssh_cidr": "ssh_cidr", "availability_zone": "availability_zone",
    "config_drive": "config_drive", "volume_size": "volume_size_gb", "ssh_user": "ssh_user", "ssh_port": "ssh_port",
    "ssh_interface": "ssh_interface", "ssh_ip_version": "ssh_ip_version", "ssh_bastion": "ssh_bastion",
    "share_with": "share_with", "tag": "tags", "timeout_boot": "timeout_boot", "timeout_ssh": "timeout_ssh",
    "timeout_provision": "timeout_provision", "timeout_snapshot": "timeout_snapshot",
    "no_provision": "no_provision", "transport": "transport",
}
# A local or chroot target's `build:` keys → LocalSettings / ChrootSettings fields (`snapbuild local` / `chroot`).
HOST_BUILD_FIELDS: Mapping[str, Mapping[str, str]] = {
    "local": {"memory": "memory_mb", "cpus": "cpus", "network": "network", "firmware": "firmware",
              "compression": "compression", "timeout_boot": "boot_timeout_s",
              "timeout_cloud_init": "cloud_init_timeout_s", "transport": "transport"},
    "chroot": {"size": "size", "attach": "attach", "compression": "compression"},
}
_CHOICES: Mapping[str, tuple[str, ...]] = {"network": ("nat", "isolated"), "firmware": ("bios", "uefi"),
                                           "compression": ("zstd", "zlib", "none"),
                                           "attach": ("auto", "nbd", "loop"), "transport": ("ssh", "console")}
_LISTS = {"network", "security_group", "share_with", "tag"}
_INTS = {"volume_size", "ssh_port", "ssh_ip_version", "memory", "cpus"}
_FLOATS = {"timeout_boot", "timeout_ssh", "timeout_provision", "timeout_snapshot", "timeout_cloud_init"}
_BOOLS = {"config_drive", "no_provision"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load_catalogue(path: Path, *, library: Any, known_clouds: Sequence[str] | None = None) -> Catalogue:
    """`library`: snapbuild.recipes.Library; `known_clouds`: clouds.yaml's cloud names (None: not checked)."""
    data = yamlfile.load(path)
    check = Checker(str(path))
    if data is None:
        raise check.fail("the catalogue is empty", hint="it needs images: and targets: (see the README)")
    check.mapping(data, "catalogue", required=("images", "targets"), optional=("policy",))
    targets = _targets(check, data, known_clouds)
    entries = _entries(check, data, library, targets)
    policy = _policy(check, data)
    return Catalogue(path=str(path), entries=entries, targets=targets, policy=policy)


# ---- targets -----------------------------------------------------------------------------------------------

def _targets(check: Checker, data: dict[str, Any], known_clouds: Sequence[str] | None) -> tuple[Target, ...]:
    node = data["targets"]
    if not isinstance(node, dict) or not node:
        raise check.fail(f"targets must be a mapping of target name: {{cloud: …, region: …}}, not "
                         f"{type_name(node) if node != {} else 'an empty mapping'}", data, "targets")
    out = []
    for name, spec in node.items():
        where = f"targets.{name}"
        _check_name(check, name, node, where)
        check.mapping(spec, where, required=("cloud",), optional=TARGET_KEYS, parent=node, parent_key=name)
        cloud = check.string(spec, "cloud", where)
        if known_clouds is not None and cloud not in known_clouds:
            raise check.fail(f"{where}.cloud: {cloud!r} is not a cloud in clouds.yaml", spec, "cloud",
                             hint=_near(cloud, known_clouds, "clouds.yaml has"))
        role = check.string(spec, "role", where, default="build")
        if role not in ROLES:
            raise check.fail(f"{where}.role must be build or receive, not {role!r}", spec, "role",
                             hint=_near(role, ROLES, "roles"))
        builder = check.string(spec, "builder", where, default="snapshot")
        if builder not in BUILDERS:
            raise check.fail(f"{where}.builder must be snapshot, local or chroot, not {builder!r}", spec, "builder",
                             hint=_near(builder, BUILDERS, "builders"))
        base_file = _base_file(check, spec, where, role, builder)
        build = (_host_build_options(check, spec, f"{where}.build", builder) if base_file is not None
                 else _build_options(check, spec, f"{where}.build", role))
        out.append(Target(name=name, cloud=cloud, region=check.string(spec, "region", where, default="") or None,
                          role=role, copy_from=check.string(spec, "copy_from", where, default="") or None,
                          store=check.string(spec, "store", where, default="") or None, builder=builder,
                          base_file=base_file, build=build, line=yamlfile.line_of(node, name)))
    names = [t.name for t in out]
    for target in out:
        if target.copy_from is None:
            continue
        spec = node[target.name]
        if target.copy_from not in names:
            raise check.fail(f"targets.{target.name}.copy_from: no target {target.copy_from!r}", spec, "copy_from",
                             hint=_near(target.copy_from, names, "targets"))
        source = next(t for t in out if t.name == target.copy_from)
        if target.builds or not source.builds:
            raise check.fail(f"targets.{target.name}.copy_from: copies go from a build target to a receive target",
                             spec, "copy_from", hint="give copy_from on a target with role: receive, naming one "
                                                     "with role: build")
    if not any(t.builds for t in out):
        raise check.fail("no target builds: every target has role: receive", data, "targets",
                         hint="give at least one target role: build")
    return tuple(out)


def _base_file(check: Checker, spec: dict[str, Any], where: str, role: str, builder: str) -> str | None:
    """A local or chroot target's base image file (absolute, or relative to the catalogue); None for snapshot."""
    if builder == "snapshot":
        if "base" in spec:
            raise check.fail(f"{where}.base is for builder: local or chroot", spec, "base",
                             hint="a snapshot build starts from a Glance image: give the entry a base_image")
        return None
    if role != "build":
        raise check.fail(f"{where}: builder: {builder} builds, but the target has role: {role}", spec, "builder",
                         hint="remove builder: (a receiving target only gets copies)")
    if "base" not in spec:
        raise check.fail(f"{where}: builder: {builder} needs base: the base image file on this host", spec,
                         "builder", hint="e.g. base: /var/cache/images/noble-server-cloudimg-amd64.img "
                                         "(`snapbuild fetch-base` downloads one)")
    given = Path(check.string(spec, "base", where))
    path = given if given.is_absolute() else Path(check.path).resolve().parent / given
    if not path.is_file():
        raise check.fail(f"{where}.base: {path} is not a file", spec, "base",
                         hint="fetch it first (snapbuild fetch-base) or fix the path")
    return str(path)


def _host_build_options(check: Checker, spec: Mapping[str, Any], where: str, builder: str) -> dict[str, Any]:
    fields = HOST_BUILD_FIELDS[builder]
    node = spec.get("build")
    if node is None:
        return {}
    check.mapping(node, where, optional=tuple(fields), parent=spec, parent_key="build")
    out: dict[str, Any] = {}
    for key in node:
        if key in _INTS:
            value: Any = check.integer(node, key, where)
        elif key in _FLOATS:
            value = float(_duration(check, node, key, where))
        else:
            value = check.string(node, key, where)
            if key in _CHOICES and value not in _CHOICES[key]:
                raise check.fail(f"{where}.{key} must be one of {', '.join(_CHOICES[key])}, not {value!r}", node, key,
                                 hint=_near(value, _CHOICES[key], "choices"))
        out[fields[key]] = value
    return out


def _build_options(check: Checker, spec: Mapping[str, Any], where: str, role: str) -> dict[str, Any]:
    node = spec.get("build")
    if node is None:
        if role == "build":
            raise check.fail(f"{where[:-len('.build')]} builds but has no build: section", spec,
                             hint="add build: {flavor: NAME, network: NAME} (the options of `snapbuild build`)")
        return {}
    check.mapping(node, where, optional=tuple(BUILD_FIELDS), parent=spec, parent_key="build")
    if role == "build" and "flavor" not in node:
        raise check.fail(f"{where} has no flavor", node, hint="add flavor: NAME (the builder server's flavor)")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _LISTS:
            out[BUILD_FIELDS[key]] = (str(value),) if isinstance(value, str) else check.string_list(node, key, where)
        elif key in _INTS:
            out[BUILD_FIELDS[key]] = check.integer(node, key, where)
        elif key in _FLOATS:
            out[BUILD_FIELDS[key]] = float(_duration(check, node, key, where))
        elif key in _BOOLS:
            out[BUILD_FIELDS[key]] = check.boolean(node, key, where, False)
        else:
            value = out[BUILD_FIELDS[key]] = check.string(node, key, where)
            if key in _CHOICES and value not in _CHOICES[key]:
                raise check.fail(f"{where}.{key} must be one of {', '.join(_CHOICES[key])}, not {value!r}", node, key,
                                 hint=_near(value, _CHOICES[key], "choices"))
    return out


# ---- entries -----------------------------------------------------------------------------------------------

def _entries(check: Checker, data: Mapping[str, Any], library: Any, targets: Sequence[Target]) -> tuple[Entry, ...]:
    node = data["images"]
    if not isinstance(node, dict) or not node:
        raise check.fail("images must be a mapping of entry name: {recipe: …}", data, "images")
    target_names = [t.name for t in targets]
    out: list[Entry] = []
    seen: dict[bytes, str] = {}
    for name, spec in node.items():
        where = f"images.{name}"
        _check_name(check, name, node, where)
        check.mapping(spec, where, required=("recipe",), optional=ENTRY_KEYS, parent=node, parent_key=name)
        entry = _entry(check, name, spec, where, library, target_names)
        for target in (t for t in targets if not entry.targets or t.name in entry.targets):
            if not target.builds:
                _source_or_fail(check, entry, target, targets, spec)
        identity = canonical({"recipe": entry.recipe, "variant": entry.variant, "distro": entry.distro,
                              "mirrors": entry.mirrors, "variables": dict(entry.variables),
                              "base": [entry.base.name, dict(entry.base.properties)], "targets": entry.targets})
        if identity in seen:
            raise check.fail(f"{where} duplicates images.{seen[identity]}: same recipe, variant, distro, mirrors, "
                             "variables and base image", node, name,
                             hint="remove one of the two (they would build the same image twice)")
        seen[identity] = name
        out.append(entry)
    names: dict[str, str] = {}
    for entry in out:
        if entry.image_name:
            if entry.image_name in names:
                raise check.fail(f"images.{entry.name}.image_name {entry.image_name!r} is also images."
                                 f"{names[entry.image_name]}'s", node[entry.name], "image_name",
                                 hint="give each entry its own image name")
            names[entry.image_name] = entry.name
    return tuple(out)


def _entry(check: Checker, name: str, spec: dict[str, Any], where: str, library: Any,
           target_names: Sequence[str]) -> Entry:
    from snapbuild.distros import get_distro
    from snapbuild.recipes import validate_value

    recipe_name = check.string(spec, "recipe", where)
    recipe = _or_fail(check, spec, "recipe", lambda: library.load(recipe_name))
    variant = check.string(spec, "variant", where, default="") or None
    _or_fail(check, spec, "variant", lambda: recipe.variant(variant))
    distro = check.string(spec, "distro", where, default="") or None
    if distro is not None:
        found = _or_fail(check, spec, "distro", lambda: get_distro(distro))
        if found.name not in recipe.distros:
            raise check.fail(f"{where}.distro: recipe {recipe_name!r} does not support {distro}", spec, "distro",
                             hint=f"its distros: {', '.join(recipe.distros)}")
    mirrors = check.string(spec, "mirrors", where, default="") or None
    if mirrors is not None:
        _or_fail(check, spec, "mirrors", lambda: library.profile_path(mirrors))
    variables = spec.get("variables") or {}
    if not isinstance(variables, dict):
        raise check.fail(f"{where}.variables must be a mapping of name: value, not {type_name(variables)}", spec,
                         "variables")
    values = {}
    for var_name, value in variables.items():
        declared = recipe.variables.get(var_name)
        if declared is None:
            raise check.fail(f"{where}.variables: recipe {recipe_name!r} has no variable {var_name!r}", variables,
                             var_name, hint=_near(var_name, list(recipe.variables), "its variables"))
        try:
            values[var_name] = validate_value(declared, value)
        except ValueError as exc:
            raise check.fail(f"{where}.variables.{var_name}: {exc}", variables, var_name,
                             hint=declared.description or None) from None
    visibility = check.string(spec, "visibility", where, default="private")
    if visibility not in VISIBILITIES:
        raise check.fail(f"{where}.visibility must be one of {', '.join(VISIBILITIES)}, not {visibility!r}", spec,
                         "visibility", hint=_near(visibility, VISIBILITIES, "visibilities"))
    targets = check.string_list(spec, "targets", where)
    for index, target in enumerate(targets):
        if target not in target_names:
            raise check.fail(f"{where}.targets: no target {target!r}", spec["targets"], index,
                             hint=_near(target, target_names, "targets"))
    return Entry(name=name, recipe=recipe_name, variant=variant, distro=distro, mirrors=mirrors, variables=values,
                 base=_base(check, spec, where), properties=check.string_map(spec, "properties", where),
                 visibility=visibility, image_name=check.string(spec, "image_name", where, default="") or None,
                 targets=targets, line=yamlfile.line_of(spec))


def _base(check: Checker, spec: Mapping[str, Any], where: str) -> BaseSelector:
    node = spec.get("base_image")
    if node is None:
        return BaseSelector()
    if isinstance(node, str):
        return BaseSelector(name=node)
    check.mapping(node, f"{where}.base_image", optional=("name", "properties"), parent=spec, parent_key="base_image")
    return BaseSelector(name=check.string(node, "name", f"{where}.base_image", default="") or None,
                        properties=check.string_map(node, "properties", f"{where}.base_image"))


def _source_or_fail(check: Checker, entry: Entry, target: Target, targets: Sequence[Target],
                    spec: Mapping[str, Any]) -> None:
    builders = [t.name for t in targets if t.builds and (not entry.targets or t.name in entry.targets)]
    if not builders or (target.copy_from and target.copy_from not in builders):
        raise check.fail(f"images.{entry.name}: target {target.name} receives copies but the entry is built on "
                         f"{', '.join(builders) or 'no target'}" + (f", not on {target.copy_from}"
                                                                     if target.copy_from else ""),
                         spec, "targets" if "targets" in spec else None,
                         hint="add the build target to the entry's targets:, or leave targets: out")


# ---- policy ------------------------------------------------------------------------------------------------

def _policy(check: Checker, data: Mapping[str, Any]) -> Policy:
    node = data.get("policy")
    if node is None:
        return Policy()
    check.mapping(node, "policy", optional=POLICY_KEYS, parent=data, parent_key="policy")
    default = Policy()
    keep = check.integer(node, "keep", "policy", default=default.keep)
    if keep < 1:
        raise check.fail(f"policy.keep: {keep} would delete every image of every entry, the current one included",
                         node, "keep", hint="keep at least 1 (the current image); 2 keeps one to roll back to")
    on_claimed = check.string(node, "on_claimed", "policy", default=default.on_claimed)
    if on_claimed not in ("skip", "wait"):
        raise check.fail(f"policy.on_claimed must be skip or wait, not {on_claimed!r}", node, "on_claimed")
    concurrency = check.integer(node, "concurrency", "policy", default=default.concurrency)
    per_cloud = check.integer(node, "per_cloud", "policy", default=default.per_cloud)
    for key, value in (("concurrency", concurrency), ("per_cloud", per_cloud)):
        if value < 1:
            raise check.fail(f"policy.{key} must be 1 or more, not {value}", node, key)
    return Policy(keep=keep, on_claimed=on_claimed, concurrency=concurrency, per_cloud=per_cloud,
                  grace_period_s=_duration(check, node, "grace_period", "policy", default.grace_period_s),
                  claim_ttl_s=_duration(check, node, "claim_ttl", "policy", default.claim_ttl_s),
                  claim_settle_s=_duration(check, node, "claim_settle", "policy", default.claim_settle_s))


# ---- helpers -----------------------------------------------------------------------------------------------

def _duration(check: Checker, node: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    if key not in node:
        assert default is not None
        return default
    value = node[key]
    match = _DURATION.match(str(value)) if not isinstance(value, bool) else None
    if match is None:
        raise check.fail(f"{where}.{key}: {value!r} is not a duration", node, key,
                         hint="seconds, or a number with s, m, h, d or w: 90s, 30m, 2h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _check_name(check: Checker, name: str, node: Any, where: str) -> None:
    if not _NAME.match(name) or "@" in name:
        raise check.fail(f"{where}: {name!r} is not a usable name", node, name,
                         hint="letters, digits, '.', '_' and '-' (it is used in --only ENTRY@TARGET)")


def _or_fail(check: Checker, node: Any, key: str, func: Callable[[], Any]) -> Any:
    """Run a lookup that raises UserError (unknown recipe, variant, distro, profile); re-raise it with the line."""
    try:
        return func()
    except RecipeError:
        raise
    except UserError as exc:
        raise check.fail(exc.message, node, key, hint=exc.hint) from None


def _near(wanted: str, names: Sequence[str], label: str) -> str:
    close = difflib.get_close_matches(wanted, list(names), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else f"{label}: {', '.join(names) or 'none'}"
