"""Recipes: folders with a recipe.yaml, validated strictly into frozen dataclasses.

Recipe strings may use jinja2 (`{{ kubernetes_version }}`); they stay raw here and are rendered,
with every variable required to exist, when a Plan is made (snapbuild.plan).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapbuild import yamlfile
from snapbuild.distros import DISTROS
from snapbuild.errors import RecipeError, UserError
from snapbuild.schema import Checker, type_name

VARIABLE_TYPES = ("string", "integer", "boolean", "list")
STEP_KINDS = ("apt_repository", "packages", "file", "command", "script", "service", "sysctl", "kernel_modules",
              "swap_off", "containerd_mirrors", "prepull", "cloudinit_dropin")


@dataclass(frozen=True, kw_only=True)
class Variable:
    name: str
    type: str = "string"
    default: Any = None
    required: bool = False
    description: str = ""
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    line: int | None = None


@dataclass(frozen=True, kw_only=True)
class Step:
    """One raw step of a recipe: its kind, its (unrendered) body, where it stands."""

    kind: str
    body: Any
    distros: tuple[str, ...] = ()
    line: int | None = None


@dataclass(frozen=True, kw_only=True)
class ImageSettings:
    name: str
    category: str
    min_disk_gb: int
    min_ram_mb: int
    disk_size_gb: int
    properties: Mapping[str, str] = field(default_factory=dict)
    default_user_groups: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str
    path: Path                     # the recipe folder
    description: str
    distros: tuple[str, ...]
    variables: Mapping[str, Variable]
    image: ImageSettings
    steps: tuple[Step, ...]
    checks: tuple[tuple[str, ...], ...]
    components: Mapping[str, str]
    digest: str

    @property
    def file(self) -> str:
        return str(self.path / "recipe.yaml")


def load_recipe(folder: Path) -> Recipe:
    path = folder / "recipe.yaml"
    data = yamlfile.load(path)
    check = Checker(str(path))
    check.mapping(data, "recipe", required=("description", "distros", "image", "steps"),
                  optional=("variables", "checks", "components"))
    distros = check.string_list(data, "distros", "recipe", required=True)
    for index, name in enumerate(distros):
        if name not in DISTROS:
            raise check.fail(f"unknown distro {name!r}", data["distros"], index,
                             hint=f"supported: {', '.join(DISTROS)}")
    variables = _variables(check, data)
    image = _image(check, data)
    steps = _steps(check, data)
    checks = _checks(check, data)
    components = check.string_map(data, "components", "recipe")
    return Recipe(name=folder.name, path=folder, description=check.string(data, "description", "recipe"),
                  distros=distros, variables=variables, image=image, steps=steps, checks=checks,
                  components=components, digest=folder_digest(folder))


def _variables(check: Checker, data: dict[str, Any]) -> dict[str, Variable]:
    node = data.get("variables") or {}
    if not isinstance(node, dict):
        raise check.fail("variables must be a mapping", data, "variables")
    out = {}
    for name, spec in node.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise check.fail(f"variable name {name!r} must be lower_snake_case", node, name)
        check.mapping(spec, f"variables.{name}", optional=("type", "default", "description", "pattern", "choices"),
                      parent=node, parent_key=name)
        vtype = check.string(spec, "type", f"variables.{name}", default="string")
        if vtype not in VARIABLE_TYPES:
            raise check.fail(f"variables.{name}.type must be one of {', '.join(VARIABLE_TYPES)}", spec, "type")
        var = Variable(name=name, type=vtype, required="default" not in spec,
                       description=check.string(spec, "description", f"variables.{name}", default=""),
                       pattern=spec.get("pattern"), choices=check.string_list(spec, "choices", f"variables.{name}"),
                       line=yamlfile.line_of(node, name))
        if var.pattern is not None:
            try:
                re.compile(var.pattern)
            except re.error as exc:
                raise check.fail(f"variables.{name}.pattern is not a valid regular expression: {exc}", spec,
                                 "pattern") from None
        if "default" in spec:
            try:
                default = validate_value(var, spec["default"])
            except ValueError as exc:
                raise check.fail(f"variables.{name}.default: {exc}", spec, "default") from None
            var = Variable(**{**var.__dict__, "default": default})
        out[name] = var
    return out


def _image(check: Checker, data: dict[str, Any]) -> ImageSettings:
    node = check.mapping(data["image"], "image", required=("name", "category"),
                         optional=("min_disk_gb", "min_ram_mb", "disk_size_gb", "properties", "default_user_groups"),
                         parent=data, parent_key="image")
    min_disk = check.integer(node, "min_disk_gb", "image", default=4)
    disk_size = check.integer(node, "disk_size_gb", "image", default=max(min_disk, 4))
    if disk_size < min_disk:
        raise check.fail(f"image.disk_size_gb ({disk_size}) is smaller than image.min_disk_gb ({min_disk})", node,
                         "disk_size_gb")
    return ImageSettings(name=check.string(node, "name", "image"), category=check.string(node, "category", "image"),
                         min_disk_gb=min_disk, min_ram_mb=check.integer(node, "min_ram_mb", "image", default=512),
                         disk_size_gb=disk_size, properties=check.string_map(node, "properties", "image"),
                         default_user_groups=check.string_list(node, "default_user_groups", "image"))


def _steps(check: Checker, data: dict[str, Any]) -> tuple[Step, ...]:
    node = data["steps"]
    if not isinstance(node, list):
        raise check.fail(f"steps must be a list, not {type_name(node)}", data, "steps")
    steps = []
    for index, item in enumerate(node):
        line = yamlfile.line_of(node, index)
        if not isinstance(item, dict):
            raise check.fail(f"steps[{index}] must be a mapping like '- packages: [...]'", line=line)
        kinds = [k for k in item if k != "distros"]
        if len(kinds) != 1:
            raise check.fail(f"steps[{index}] must have exactly one step kind, found {kinds or 'none'}", line=line,
                             hint=f"step kinds: {', '.join(STEP_KINDS)}")
        kind = kinds[0]
        if kind not in STEP_KINDS:
            check.mapping(item, f"steps[{index}]", optional=(*STEP_KINDS, "distros"), parent=node, parent_key=index)
        distros = check.string_list(item, "distros", f"steps[{index}]")
        for name in distros:
            if name not in DISTROS:
                raise check.fail(f"steps[{index}].distros: unknown distro {name!r}", item, "distros")
        steps.append(Step(kind=kind, body=item[kind], distros=distros, line=yamlfile.line_of(item, kind) or line))
    return tuple(steps)


def _checks(check: Checker, data: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    node = data.get("checks") or []
    if not isinstance(node, list):
        raise check.fail("checks must be a list of commands (each a list of strings)", data, "checks")
    out = []
    for index, item in enumerate(node):
        if not isinstance(item, list) or not item or not all(isinstance(a, str | int) for a in item):
            raise check.fail(f"checks[{index}] must be a non-empty list of strings (an argv)", node, index)
        out.append(tuple(str(a) for a in item))
    return tuple(out)


def validate_value(var: Variable, value: Any) -> Any:
    """Check (and for --set strings, convert) a value for `var`; ValueError says what is wrong."""
    if var.type == "integer":
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
    elif var.type == "boolean":
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "yes", "1", "on"):
                value = True
            elif lowered in ("false", "no", "0", "off"):
                value = False
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
    elif var.type == "list":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        value = [str(v) for v in value]
    else:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a string, got {type_name(value)}")
        value = str(value)
        if var.pattern and not re.fullmatch(var.pattern, value):
            raise ValueError(f"{value!r} does not match {var.pattern!r}")
    if var.choices and str(value) not in var.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(var.choices)}")
    return value


def resolve_variables(recipe: Recipe, *, config_values: Mapping[str, Any], set_values: Mapping[str, str],
                      config_path: str | None = None) -> dict[str, Any]:
    """Defaults < config file < --set. Unknown names and bad values are errors."""
    values = {name: var.default for name, var in recipe.variables.items() if not var.required}
    for origin, given in (("config", config_values), ("--set", set_values)):
        for name, value in given.items():
            var = recipe.variables.get(name)
            if var is None:
                if origin == "config":
                    continue  # the config file may hold variables for other recipes
                known = ", ".join(recipe.variables) or "none"
                raise UserError(f"--set {name}: recipe {recipe.name!r} has no variable {name!r}",
                                hint=f"its variables: {known}")
            try:
                values[name] = validate_value(var, value)
            except ValueError as exc:
                where = f"{config_path}: variable {name}" if origin == "config" else f"--set {name}"
                raise UserError(f"{where}: {exc}", hint=var.description or None) from None
    missing = [n for n, v in recipe.variables.items() if v.required and n not in values]
    if missing:
        raise UserError(f"recipe {recipe.name!r} needs a value for: {', '.join(missing)}",
                        hint=f"pass --set {missing[0]}=VALUE or set it in the config file")
    return values


def parse_set(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--set {item!r} is not of the form key=value",
                            hint="example: --set kubernetes_version=1.32.12")
        out[name] = value
    return out


def folder_digest(folder: Path) -> str:
    """sha256 over every file of the recipe folder (relative path + content): its content identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


class Library:
    """Recipe and profile search path: the user's folders first, then the shipped ones."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self.folders = tuple(folders)

    def recipe_names(self) -> list[str]:
        names: set[str] = set()
        for folder in self.folders:
            if folder.is_dir():
                names.update(p.parent.name for p in folder.glob("*/recipe.yaml"))
        return sorted(names)

    def recipe_folder(self, name: str) -> Path:
        for folder in self.folders:
            candidate = folder / name
            if (candidate / "recipe.yaml").is_file():
                return candidate
        import difflib

        close = difflib.get_close_matches(name, self.recipe_names(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(self.recipe_names())}"
        raise UserError(f"unknown recipe {name!r}", hint=hint)

    def load(self, name: str) -> Recipe:
        return load_recipe(self.recipe_folder(name))

    def profile_names(self) -> list[str]:
        names: set[str] = set()
        for folder in self.folders:
            names.update(p.stem for p in (folder / "profiles").glob("*.yaml"))
        return sorted(names)

    def profile_path(self, name: str) -> Path:
        direct = Path(name)
        if name.endswith((".yaml", ".yml")) and direct.is_file():
            return direct
        for folder in self.folders:
            candidate = folder / "profiles" / f"{name}.yaml"
            if candidate.is_file():
                return candidate
        raise UserError(f"unknown mirror profile {name!r}",
                        hint=f"available: {', '.join(self.profile_names())}; or give a path to a profile .yaml")


def check_file_reference(recipe: Recipe, relative: str, node_line: int | None) -> Path:
    """A file named by a recipe must stay inside the recipe folder and exist."""
    target = (recipe.path / relative).resolve()
    if recipe.path.resolve() not in target.parents or not target.is_file():
        raise RecipeError(f"file {relative!r} not found in the recipe folder", path=recipe.file, line=node_line)
    return target
