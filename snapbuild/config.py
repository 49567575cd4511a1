"""The user's config file (snapbuild.yaml): defaults for options, variables and the recipes path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapbuild import paths, yamlfile
from snapbuild.errors import UserError
from snapbuild.schema import Checker

CONFIG_NAME = "snapbuild.yaml"


@dataclass(frozen=True, kw_only=True)
class Config:
    path: str | None = None
    recipes_path: tuple[Path, ...] = ()
    mirrors: str | None = None
    distro: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    build: Mapping[str, Any] = field(default_factory=dict)   # defaults for `snapbuild build` options


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
    check.mapping(data, "config", optional=("recipes_path", "mirrors", "distro", "variables", "build"))
    folders = []
    for entry in check.string_list(data, "recipes_path", "config"):
        folder = (path.parent / Path(entry).expanduser()).resolve()
        if not folder.is_dir():
            raise check.fail(f"recipes_path entry {entry!r} is not a directory", data, "recipes_path")
        folders.append(folder)
    variables = data.get("variables") or {}
    if not isinstance(variables, dict):
        raise check.fail("variables must be a mapping of name: value", data, "variables")
    build = data.get("build") or {}
    if not isinstance(build, dict):
        raise check.fail("build must be a mapping of option: value", data, "build")
    return Config(path=str(path), recipes_path=tuple(folders),
                  mirrors=check.string(data, "mirrors", "config", default="") or None,
                  distro=check.string(data, "distro", "config", default="") or None,
                  variables=dict(variables), build=dict(build))
