"""How a command prints its result: `-f table|value|json|yaml` and `-c COLUMN`, as the openstack CLI (cliff) does.

A result is one row (a mapping) or a listing (a list of mappings) over the columns its command declares; `-c`
names are checked against those columns when the command line is parsed, before any work starts. Without `-f`
a command prints what it always has (`Result.text`); `--json` is `-f json`. stdout carries only the result.

Imports click and the standard library only (`snapbuild --help` stays fast); PyYAML is loaded for `-f yaml`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from snapbuild.errors import UserError

FORMATS = ("table", "value", "json", "yaml")

Row = Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Result:
    """What a command answers.

    rows: one row, or a listing (one row each), over the command's columns.
    text: the command's own output when no -f is given (None: a table).
    document: the JSON text `--json` has always printed, for -f json and -f yaml without -c (None: the rows).
    """

    rows: Row | Sequence[Row]
    text: str | None = None
    document: str | None = None


@dataclass(frozen=True, kw_only=True)
class Output:
    """What -f, -c and --json chose for one command."""

    format: str | None = None          # None: the command's own text
    columns: tuple[str, ...] = ()      # () : every column

    def render(self, result: Result) -> str:
        """The text for stdout (no trailing newline)."""
        if self.format is None and not self.columns and result.text is not None:
            return result.text
        fmt = self.format or "table"   # -c alone picks columns of a table, as cliff's default format does
        single = isinstance(result.rows, Mapping)
        rows = [result.rows] if isinstance(result.rows, Mapping) else list(result.rows)
        if fmt in ("json", "yaml") and not self.columns and result.document is not None:
            return result.document if fmt == "json" else dump_yaml(json.loads(result.document))
        columns = self.columns or _all_columns(rows)
        picked = [{column: row.get(column) for column in columns} for row in rows]
        if fmt == "json":
            return json.dumps(picked[0] if single else picked, indent=2, default=str)
        if fmt == "yaml":
            return dump_yaml(picked[0] if single else picked)
        if fmt == "value":
            if single:   # one value a line, as cliff prints a single row
                return "\n".join(cell(value) for value in picked[0].values())
            return "\n".join(" ".join(cell(value) for value in row.values()) for row in picked)
        if single:
            return aligned([(column, cell(value)) for column, value in picked[0].items()])
        return aligned([tuple(columns), *[tuple(cell(v) for v in row.values()) for row in picked]])


def _all_columns(rows: Sequence[Row]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return tuple(seen)


def cell(value: Any) -> str:
    """One value as text: strings as they are, nothing as an empty cell, containers as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """A plain table: columns padded to their widest cell, two spaces apart."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip() for row in rows)


def dump_yaml(data: Any) -> str:
    import yaml  # only here: `snapbuild --help` does not load PyYAML for it

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip("\n")


def choose(fmt: str | None, columns: Sequence[str], as_json: bool = False) -> Output:
    """-f, -c and the --json alias as one choice; --json with another -f is refused."""
    if as_json and fmt not in (None, "json"):
        raise UserError(f"--json and -f {fmt} ask for two formats", hint="--json is -f json: keep one of the two")
    return Output(format="json" if as_json else fmt, columns=tuple(columns))


def output_option_list(columns: Sequence[str], *, json_flag: bool = True,
                       json_help: str = "Same as -f json.") -> list[Callable[[Any], Any]]:
    """`-f/--format`, `-c/--column` and `--json`, reaching the command as `fmt`, `columns` and `as_json`. `-c` takes
    only `columns`: another name is a usage error (exit 2, when the command line is parsed) that lists them."""
    options = [
        click.option("-f", "--format", "fmt", type=click.Choice(FORMATS),
                     help="Output format (default: the command's own output)."),
        click.option("-c", "--column", "columns", multiple=True, type=click.Choice(columns), metavar="COLUMN",
                     help=f"Only this column (repeatable): {', '.join(columns)}."),
    ]
    if json_flag:
        options.append(click.option("--json", "as_json", is_flag=True, help=json_help))
    return options


def output_options(*columns: str, json_help: str = "Same as -f json.") -> Callable[[Any], Any]:
    """The decorator form of `output_option_list`."""
    options = output_option_list(columns, json_help=json_help)

    def decorate(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate
