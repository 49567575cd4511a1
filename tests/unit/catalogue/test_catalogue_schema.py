"""The catalogue's JSON Schema (snapbuild/schemas/catalogue.schema.json), as tests/unit/test_json_schemas.py holds the
others: a valid schema read alike by draft-07 editors, every property described, the same keys as the loader, and it
accepts the test catalogue and the README's example while refusing what the loader refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from catalogues import LIBRARY, TWO_REGIONS, write
from jsonschema import Draft7Validator, Draft202012Validator

import snapbuild
from snapbuild import yamlfile
from snapbuild.catalogue import load
from snapbuild.errors import UserError

SCHEMA = json.loads((Path(snapbuild.__file__).parent / "schemas" / "catalogue.schema.json").read_text())
REPO = Path(__file__).resolve().parents[3]


def errors(path: Path) -> list[str]:
    data = yamlfile.load(path)
    found = [e.message for e in Draft202012Validator(SCHEMA).iter_errors(data)]
    assert Draft7Validator(SCHEMA).is_valid(data) == (not found), "draft-07 and 2020-12 readings differ"
    return found


def test_the_schema_is_valid():
    Draft202012Validator.check_schema(SCHEMA)
    Draft7Validator.check_schema(SCHEMA)


def test_every_property_is_described():
    def walk(node: Any, where: str) -> list[str]:
        """Schema positions only: a property map's values, $defs, oneOf branches, additionalProperties."""
        missing = []
        if not isinstance(node, dict):
            return missing
        for name, sub in (node.get("properties") or {}).items():
            if "description" not in sub:
                missing.append(f"{where}.{name}")
            missing += walk(sub, f"{where}.{name}")
        for name, sub in (node.get("$defs") or {}).items():
            missing += walk(sub, f"{where}.$defs.{name}")
        for index, sub in enumerate(node.get("oneOf") or []):
            missing += walk(sub, f"{where}.oneOf[{index}]")
        if isinstance(node.get("additionalProperties"), dict):
            missing += walk(node["additionalProperties"], f"{where}.*")
        return missing
    assert walk(SCHEMA, "") == []


def test_the_schema_has_the_loaders_keys():
    defs = SCHEMA["$defs"]
    assert set(defs["entry"]["properties"]) == set(load.ENTRY_KEYS)
    assert set(defs["target"]["properties"]) == set(load.TARGET_KEYS)
    host_keys = {key for fields in load.HOST_BUILD_FIELDS.values() for key in fields}
    assert set(defs["target"]["properties"]["build"]["properties"]) == set(load.BUILD_FIELDS) | host_keys
    assert set(defs["policy"]["properties"]) == set(load.POLICY_KEYS)


def readme_catalogue() -> str:
    blocks = re.findall(r"```yaml\n(# catalogue\.yaml.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert blocks, "the README's catalogue example moved: update this test"
    return str(blocks[0])


@pytest.mark.parametrize("text", [TWO_REGIONS, readme_catalogue()], ids=["tests", "readme"])
def test_the_example_catalogues_are_valid_for_both(tmp_path, text):
    path = write(tmp_path, text)
    assert errors(path) == []
    clouds = ["mycloud", "fake"]
    load.load_catalogue(path, library=LIBRARY, known_clouds=clouds)


@pytest.mark.parametrize(("old", "new"), [
    ("    visibility: public", "    visibilty: public"),
    ("  keep: 1", "  keep: 0"),
    ("    role: receive", "    role: recieve"),
    ("  grace_period: 1d", "  grace_period: soon"),
    ("  concurrency: 4", "  concurrency: 0"),
    ("flavor: m1.large, network", "flavour: m1.large, network"),
])
def test_what_the_loader_refuses_the_schema_refuses(tmp_path, old, new):
    path = write(tmp_path, TWO_REGIONS.replace(old, new))
    with pytest.raises(UserError):
        load.load_catalogue(path, library=LIBRARY, known_clouds=["fake"])
    assert errors(path)
