"""Small strict checks for YAML-shaped input: unknown keys rejected, types checked, file:line in errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from snapbuild.errors import RecipeError
from snapbuild.yamlfile import line_of


class Checker:
    """Validates one file's data; every error names the file and the line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, message: str, node: Any = None, key: str | int | None = None, *, hint: str | None = None,
             line: int | None = None) -> RecipeError:
        return RecipeError(message, path=self.path, line=line or line_of(node, key), hint=hint)

    def mapping(self, node: Any, where: str, *, required: Iterable[str] = (), optional: Iterable[str] = (),
                parent: Any = None, parent_key: str | int | None = None) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise self.fail(f"{where} must be a mapping, not {type_name(node)}", parent, parent_key)
        required = tuple(required)
        allowed = set(required) | set(optional)
        for key in node:
            if key not in allowed:
                close = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(sorted(allowed))}"
                raise self.fail(f"unknown key {key!r} in {where}", node, key, hint=hint)
        for key in required:
            if key not in node:
                raise self.fail(f"{where} is missing required key {key!r}", node, hint=None)
        return node

    def string(self, node: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
        if key not in node:
            if default is None:
                raise self.fail(f"{where} is missing required key {key!r}", node)
            return default
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(f"{where}.{key} must be a string, not {type_name(value)}", node, key)
        return str(value)

    def integer(self, node: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
        if key not in node:
            if default is None:
                raise self.fail(f"{where} is missing required key {key!r}", node)
            return default
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{where}.{key} must be an integer, not {type_name(value)}", node, key)
        return value

    def boolean(self, node: dict[str, Any], key: str, where: str, default: bool) -> bool:
        value = node.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key} must be true or false, not {type_name(value)}", node, key)
        return value

    def string_list(self, node: dict[str, Any], key: str, where: str, *, required: bool = False) -> tuple[str, ...]:
        if key not in node:
            if required:
                raise self.fail(f"{where} is missing required key {key!r}", node)
            return ()
        value = node[key]
        if isinstance(value, str) or not isinstance(value, list):
            raise self.fail(f"{where}.{key} must be a list of strings, not {type_name(value)}", node, key)
        for index, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self.fail(f"{where}.{key}[{index}] must be a string, not {type_name(item)}", value, index)
        return tuple(str(v) for v in value)

    def string_map(self, node: dict[str, Any], key: str, where: str) -> dict[str, str]:
        if key not in node:
            return {}
        value = node[key]
        if not isinstance(value, dict):
            raise self.fail(f"{where}.{key} must be a mapping, not {type_name(value)}", node, key)
        out = {}
        for k, v in value.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            if not isinstance(v, str | int | float):
                raise self.fail(f"{where}.{key}.{k} must be a string or number, not {type_name(v)}", value, k)
            out[str(k)] = str(v)
        return out


def type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
