"""Every manifest a test's build writes is checked against the JSON Schema snapbuild ships for it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

import snapbuild

SCHEMA = Path(snapbuild.__file__).resolve().parent / "schemas" / "manifest.schema.json"


@cache
def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def check_manifest(manifest: dict[str, Any] | Path, *, builder: str) -> dict[str, Any]:
    """The manifest (or the file holding it) is valid and from `builder`; returns it."""
    data: dict[str, Any] = json.loads(manifest.read_text()) if isinstance(manifest, Path) else manifest
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "manifest breaks its schema:\n" + "\n".join(
        f"  {'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors)
    assert data["builder"] == builder
    return data
