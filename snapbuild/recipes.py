"""Recipes: folders with a recipe.yaml, validated strictly into frozen dataclasses.

Recipe strings may use jinja2 (`{{ kubernetes_version }}`); they stay raw here and are rendered,
with every variable required to exist, when a Plan is made (snapbuild.plan).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapbuild import digest as content
from snapbuild import yamlfile
from snapbuild.distros import DISTROS
from snapbuild.errors import RecipeError, UserError
from snapbuild.schema import Checker, type_name

VARIABLE_TYPES = ("string", "integer", "boolean", "list")
RESERVED_NAMES = ("variant",)
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
class Condition:
    """A step's or check's `when:`: every part given must hold (variant among `variants`, `var` equals `equals`)."""

    variants: tuple[str, ...] = ()
    var: str | None = None
    equals: Any = None
    line: int | None = None

    def holds(self, *, variant: str | None, variables: Mapping[str, Any]) -> bool:
        if self.variants and variant not in self.variants:
            return False
        return self.var is None or variables.get(self.var) == self.equals

    def describe(self) -> str:
        parts = []
        if self.variants:
            parts.append(f"variant {' or '.join(self.variants)}")
        if self.var is not None:
            parts.append(f"{self.var} = {self.equals!r}")
        return " and ".join(parts)


@dataclass(frozen=True, kw_only=True)
class Step:
    """One raw step of a recipe: its kind, its (unrendered) body, where it stands."""

    kind: str
    body: Any
    distros: tuple[str, ...] = ()
    when: Condition | None = None
    line: int | None = None


@dataclass(frozen=True, kw_only=True)
class Check:
    """A command that must succeed on a finished image (`snapbuild verify --recipe`)."""

    argv: tuple[str, ...]
    when: Condition | None = None


@dataclass(frozen=True, kw_only=True)
class Variant:
    """A named flavour of a recipe: its own variable defaults; steps and checks may be conditional on it."""

    name: str
    description: str
    variables: Mapping[str, Any] = field(default_factory=dict)
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
    checks: tuple[Check, ...]
    components: Mapping[str, str]
    digest: str
    variants: Mapping[str, Variant] = field(default_factory=dict)   # the first one is the default

    @property
    def file(self) -> str:
        return str(self.path / "recipe.yaml")

    @property
    def default_variant(self) -> str | None:
        return next(iter(self.variants), None)

    def variant(self, name: str | None) -> Variant | None:
        """The variant called `name` (None: the default one); None for a recipe without variants."""
        if name is None:
            return next(iter(self.variants.values()), None)
        if not self.variants:
            raise UserError(f"recipe {self.name!r} has no variants, so --variant {name} means nothing",
                            hint="leave --variant out")
        if name not in self.variants:
            close = difflib.get_close_matches(name, list(self.variants), n=1)
            known = ", ".join(f"{n} (default)" if n == self.default_variant else n for n in self.variants)
            raise UserError(f"recipe {self.name!r} has no variant {name!r}",
                            hint=(f"did you mean {close[0]!r}? " if close else "") + f"its variants: {known}")
        return self.variants[name]


def load_recipe(folder: Path) -> Recipe:
    path = folder / "recipe.yaml"
    data = yamlfile.load(path)
    check = Checker(str(path))
    check.mapping(data, "recipe", required=("description", "distros", "image", "steps"),
                  optional=("variables", "variants", "checks", "components"))
    distros = check.string_list(data, "distros", "recipe", required=True)
    for index, name in enumerate(distros):
        if name not in DISTROS:
            raise check.fail(f"unknown distro {name!r}", data["distros"], index,
                             hint=f"supported: {', '.join(DISTROS)}")
    variables = _variables(check, data)
    variants = _variants(check, data, variables)
    image = _image(check, data)
    steps = _steps(check, data, variants, variables)
    checks = _checks(check, data, variants, variables)
    components = check.string_map(data, "components", "recipe")
    return Recipe(name=folder.name, path=folder, description=check.string(data, "description", "recipe"),
                  distros=distros, variables=variables, image=image, steps=steps, checks=checks,
                  components=components, digest=folder_digest(folder), variants=variants)


def _variables(check: Checker, data: dict[str, Any]) -> dict[str, Variable]:
    node = data.get("variables") or {}
    if not isinstance(node, dict):
        raise check.fail("variables must be a mapping", data, "variables")
    out = {}
    for name, spec in node.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise check.fail(f"variable name {name!r} must be lower_snake_case", node, name)
        if name in RESERVED_NAMES:
            raise check.fail(f"variable name {name!r} is reserved (templates see it as the {name} being built)",
                             node, name, hint="rename the variable")
        check.mapping(spec, f"variables.{name}", optional=("type", "default", "description", "pattern", "choices"),
                      parent=node, parent_key=name)
        vtype = check.string(spec, "type", f"variables.{name}", default="string")
        if vtype not in VARIABLE_TYPES:
            raise check.fail(f"variables.{name}.type must be one of {', '.join(VARIABLE_TYPES)}", spec, "type")
        var = Variable(name=name, type=vtype, required="default" not in spec,
                       description=check.string(spec, "description", f"variables.{name}", default=""),
                       pattern=check.string(spec, "pattern", f"variables.{name}") if "pattern" in spec else None,
                       choices=check.string_list(spec, "choices", f"variables.{name}"),
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


def _variants(check: Checker, data: dict[str, Any], variables: Mapping[str, Variable]) -> dict[str, Variant]:
    if "variants" not in data:
        return {}
    node = data["variants"]
    if not isinstance(node, dict) or not node:
        raise check.fail("variants must be a mapping of name -> {description, variables}; the first is the default",
                         data, "variants")
    out = {}
    for name, spec in node.items():
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise check.fail(f"variant name {name!r} must be lowercase letters, digits and '-'", node, name,
                             hint="it becomes part of the image name and properties")
        check.mapping(spec, f"variants.{name}", required=("description",), optional=("variables",), parent=node,
                      parent_key=name)
        overrides = spec.get("variables") or {}
        if not isinstance(overrides, dict):
            raise check.fail(f"variants.{name}.variables must be a mapping of variable: value", spec, "variables")
        values = {}
        for var_name, value in overrides.items():
            var = _known_variable(check, variables, var_name, overrides, f"variants.{name}.variables")
            try:
                values[var_name] = validate_value(var, value)
            except ValueError as exc:
                raise check.fail(f"variants.{name}.variables.{var_name}: {exc}", overrides, var_name) from None
        out[name] = Variant(name=name, description=check.string(spec, "description", f"variants.{name}"),
                            variables=values, line=yamlfile.line_of(node, name))
    return out


def _known_variable(check: Checker, variables: Mapping[str, Variable], name: Any, node: Any,
                    where: str) -> Variable:
    if isinstance(name, str) and name in variables:
        return variables[name]
    close = difflib.get_close_matches(str(name), list(variables), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"its variables: {', '.join(variables) or 'none'}"
    raise check.fail(f"{where}: the recipe has no variable {name!r}", node, name if isinstance(name, str) else None,
                     hint=hint)


def _condition(check: Checker, parent: Any, where: str, variants: Mapping[str, Variant],
               variables: Mapping[str, Variable]) -> Condition | None:
    """`when:` - {variant: NAME | [NAME, ...]} and/or {var: NAME, equals: VALUE}; every part given must hold."""
    if "when" not in parent:
        return None
    node = parent["when"]
    line = yamlfile.line_of(parent, "when")
    where = f"{where}.when"
    check.mapping(node, where, optional=("variant", "var", "equals"), parent=parent, parent_key="when")
    if not node:
        raise check.fail(f"{where} is empty", line=line, hint="when: {variant: NAME} or when: {var: NAME, equals: "
                         "VALUE}")
    names: tuple[str, ...] = ()
    if "variant" in node:
        if not variants:
            raise check.fail(f"{where}.variant: the recipe declares no variants", node, "variant",
                             hint="declare them under variants: (the first is the default), or drop the condition")
        raw = node["variant"]
        names = check.string_list(node, "variant", where) if isinstance(raw, list) \
            else (check.string(node, "variant", where),)
        if not names:
            raise check.fail(f"{where}.variant lists no variant", node, "variant")
        for name in names:
            if name not in variants:
                close = difflib.get_close_matches(name, list(variants), n=1)
                raise check.fail(f"{where}.variant: unknown variant {name!r}", node, "variant",
                                 hint=f"did you mean {close[0]!r}?" if close else f"variants: {', '.join(variants)}")
    if ("var" in node) != ("equals" in node):
        raise check.fail(f"{where}: var and equals go together", node, "var" if "var" in node else "equals",
                         hint="when: {var: NAME, equals: VALUE}")
    if "var" not in node:
        return Condition(variants=names, line=line)
    var = _known_variable(check, variables, node["var"], node, f"{where}.var")
    try:
        equals = validate_value(var, node["equals"])
    except ValueError as exc:
        raise check.fail(f"{where}.equals: {exc}", node, "equals") from None
    return Condition(variants=names, var=var.name, equals=equals, line=line)


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


def _steps(check: Checker, data: dict[str, Any], variants: Mapping[str, Variant],
           variables: Mapping[str, Variable]) -> tuple[Step, ...]:
    node = data["steps"]
    if not isinstance(node, list):
        raise check.fail(f"steps must be a list, not {type_name(node)}", data, "steps")
    steps = []
    for index, item in enumerate(node):
        line = yamlfile.line_of(node, index)
        if not isinstance(item, dict):
            raise check.fail(f"steps[{index}] must be a mapping like '- packages: [...]'", line=line)
        kinds = [k for k in item if k not in ("distros", "when")]
        if len(kinds) != 1:
            raise check.fail(f"steps[{index}] must have exactly one step kind, found {kinds or 'none'}", line=line,
                             hint=f"step kinds: {', '.join(STEP_KINDS)}")
        kind = kinds[0]
        if kind not in STEP_KINDS:
            check.mapping(item, f"steps[{index}]", optional=(*STEP_KINDS, "distros", "when"), parent=node,
                          parent_key=index)
        distros = check.string_list(item, "distros", f"steps[{index}]")
        for name in distros:
            if name not in DISTROS:
                raise check.fail(f"steps[{index}].distros: unknown distro {name!r}", item, "distros")
        when = _condition(check, item, f"steps[{index}]", variants, variables)
        steps.append(Step(kind=kind, body=item[kind], distros=distros, when=when,
                          line=yamlfile.line_of(item, kind) or line))
    return tuple(steps)


def _checks(check: Checker, data: dict[str, Any], variants: Mapping[str, Variant],
            variables: Mapping[str, Variable]) -> tuple[Check, ...]:
    """Each check an argv, or {argv: [...], when: {...}} for one that holds only in some variants or settings."""
    node = data.get("checks") or []
    if not isinstance(node, list):
        raise check.fail("checks must be a list of commands (each a list of strings)", data, "checks")
    out = []
    for index, item in enumerate(node):
        when = None
        argv = item
        if isinstance(item, dict):
            check.mapping(item, f"checks[{index}]", required=("argv",), optional=("when",), parent=node,
                          parent_key=index)
            argv = item["argv"]
            when = _condition(check, item, f"checks[{index}]", variants, variables)
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str | int) for a in argv):
            raise check.fail(f"checks[{index}] must be a non-empty list of strings (an argv)", node, index)
        out.append(Check(argv=tuple(str(a) for a in argv), when=when))
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
                      config_path: str | None = None, variant: str | None = None) -> dict[str, Any]:
    """Defaults < the variant's (None: the default variant) < config file < --set. Unknown names and bad values
    are errors."""
    values = {name: var.default for name, var in recipe.variables.items() if not var.required}
    chosen = recipe.variant(variant)
    if chosen is not None:
        values.update(chosen.variables)
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
    return content.tree_digest(folder)


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
