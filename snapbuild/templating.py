"""jinja2 environments: strict (every variable must exist), no autoescape (we render configs, not HTML)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import yaml

from snapbuild.errors import RecipeError


def _toml_string(value: Any) -> str:
    # A JSON string of printable text is also a valid TOML basic string.
    return json.dumps(str(value))


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=False).rstrip("\n")


def environment(search_path: list[Path] | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search_path or []]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - output is config files and scripts
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["toml"] = _toml_string
    env.filters["to_json"] = json.dumps
    env.filters["to_yaml"] = _to_yaml
    return env


def render_string(env: jinja2.Environment, text: str, context: dict[str, Any], *, path: str,
                  line: int | None) -> str:
    """Render one recipe string; undefined variables and syntax errors point at the recipe line."""
    if "{" not in text:
        return text
    try:
        return env.from_string(text).render(context)
    except jinja2.UndefinedError as exc:
        raise RecipeError(f"template error: {exc.message}", path=path, line=line,
                          hint="declare the variable under 'variables:' or fix its name") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError(f"template syntax error: {exc.message}", path=path, line=line) from None


def render_file(env: jinja2.Environment, name: str, context: dict[str, Any], *, folder: Path) -> str:
    """Render a template file; errors name the template file and its line."""
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateNotFound:
        raise RecipeError(f"template {name!r} not found", path=str(folder)) from None
    except jinja2.UndefinedError as exc:
        line = _template_line(exc)
        raise RecipeError(f"template error: {exc.message}", path=str(folder / name), line=line,
                          hint="declare the variable under 'variables:' or fix its name") from None
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError(f"template syntax error: {exc.message}", path=str(folder / name), line=exc.lineno) from None


def _template_line(exc: BaseException) -> int | None:
    # jinja2 rewrites tracebacks so template frames carry the template's file name and line.
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(".j2"):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
