"""The JSON Schemas shipped for editors (snapbuild/schemas/) accept every shipped and test file, and refuse what
snapbuild's own loaders refuse. The key sets are read back from the loaders' own "allowed keys" hints, so a key
added to (or dropped from) a loader without the schema following fails here."""

from __future__ import annotations

import configparser
import copy
import fnmatch
import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

import snapbuild
from snapbuild import cli, yamlfile
from snapbuild.cli.cloud_options import site_defaults
from snapbuild.config import load_config
from snapbuild.distros import DISTROS, get_distro
from snapbuild.errors import RecipeError, UserError
from snapbuild.paths import data_dir
from snapbuild.plan import make_plan
from snapbuild.profiles import load_profile
from snapbuild.recipes import STEP_KINDS, VARIABLE_TYPES, load_recipe, resolve_variables
from tests.mirrorprofile import write_mirror_profile

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = Path(snapbuild.__file__).resolve().parent / "schemas"
KINDS = ("recipe", "profile", "config")


@cache
def schema(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    return data


def schema_errors(kind: str, path: Path) -> list[str]:
    """What the schema says about a file, read as snapbuild reads it. A draft-07 reader (VS Code's YAML extension
    validates with draft-07) must come to the same verdict."""
    data = yamlfile.load(path)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in Draft202012Validator(schema(kind)).iter_errors(data)]
    assert Draft7Validator(schema(kind)).is_valid(data) == (not errors), "draft-07 and 2020-12 readings differ"
    return errors


# -- snapbuild's own loaders, as far as each file is taken when building -----------------------------------------

def recipe_file(folder: Path, doc: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "recipe.yaml"


def load_and_plan(path: Path) -> None:
    """A recipe as a build takes it: loaded, then planned (step bodies are checked there) for each distro and
    variant."""
    recipe = load_recipe(path.parent)
    profile = load_profile(data_dir("recipes") / "profiles" / "upstream.yaml")
    for distro in recipe.distros:
        for variant in list(recipe.variants) or [None]:
            values = resolve_variables(recipe, config_values={}, set_values={}, variant=variant)
            make_plan(recipe, distro=get_distro(distro), profile=profile, variables=values, variant=variant)


def load_config_as_used(path: Path) -> None:
    config = load_config(str(path))
    if config.distro:
        get_distro(config.distro)   # what every command taking a recipe does with it
    build = cli.cli.commands["build"]   # its options take the `build:` section's values (as the CLI does)
    site_defaults(config, build, click.Context(build))


LOADERS: dict[str, Callable[[Path], object]] = {
    "recipe": load_and_plan, "profile": load_profile, "config": load_config_as_used}


def write(kind: str, tmp_path: Path, doc: Any) -> Path:
    if kind == "recipe":
        return recipe_file(tmp_path / "recipe", doc)
    (tmp_path / "my-recipes").mkdir(exist_ok=True)
    path = tmp_path / ("snapbuild.yaml" if kind == "config" else "profile.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def loader_error(kind: str, path: Path) -> UserError | None:
    try:
        LOADERS[kind](path)
    except UserError as exc:
        return exc
    return None


# -- the schemas themselves --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_each_schema_is_a_valid_draft_2020_12_schema(kind: str) -> None:
    assert schema(kind)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema(kind))


# Keywords a draft-07 reader does not know, and would silently skip.
NEWER_THAN_DRAFT_07 = {"dependentRequired", "dependentSchemas", "unevaluatedProperties", "unevaluatedItems",
                       "prefixItems", "$anchor", "$dynamicRef", "$dynamicAnchor", "minContains", "maxContains"}


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


@pytest.mark.parametrize("kind", KINDS)
def test_each_schema_reads_the_same_in_draft_07_editors(kind: str) -> None:
    """Editors built on yaml-language-server validate with draft-07: no newer keyword, and nothing beside a $ref
    but its description (draft-07 ignores $ref's siblings)."""
    Draft7Validator.check_schema(schema(kind))
    nodes = list(_nodes(schema(kind)))
    assert not NEWER_THAN_DRAFT_07 & {key for node in nodes for key in node}
    assert [node for node in nodes if "$ref" in node and set(node) - {"$ref", "description"}] == []


# Sub-schemas under these only narrow properties declared elsewhere (e.g. a variable's default by its type).
NARROWING = ("if", "then", "else", "not", "anyOf", "allOf")


def _property_maps(node: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("properties", "$defs"):   # maps of name -> schema: a property may be called "properties"
                if key == "properties":
                    yield from value.items()
                for sub in value.values():
                    yield from _property_maps(sub)
            elif key not in NARROWING:
                yield from _property_maps(value)
    elif isinstance(node, list):
        for value in node:
            yield from _property_maps(value)


@pytest.mark.parametrize("kind", KINDS)
def test_every_property_has_a_description_for_editors(kind: str) -> None:
    properties = list(_property_maps(schema(kind)))
    assert len(properties) >= 5
    # On the property itself: a shared definition's description ("a list of strings") tells an editor's user nothing.
    assert [name for name, prop in properties if not prop.get("description")] == []


def test_step_kinds_variable_types_and_distros_are_the_code_s_own() -> None:
    defs = schema("recipe")["$defs"]
    assert set(defs["step"]["properties"]) - {"distros", "when"} == set(STEP_KINDS)
    assert [set(alt["required"]) for alt in defs["step"]["oneOf"]] == [{k} for k in STEP_KINDS]
    assert defs["variable"]["properties"]["type"]["enum"] == list(VARIABLE_TYPES)
    assert defs["distro"]["enum"] == list(DISTROS)
    assert schema("config")["properties"]["distro"]["enum"] == [*DISTROS, ""]


def test_setup_cfg_ships_every_schema_as_package_data() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    patterns = cfg["options.package_data"]["snapbuild"].split()
    shipped = sorted(p.name for p in (REPO / "snapbuild" / "schemas").iterdir())
    # manifest: tests/manifestcheck; catalogue: tests/unit/catalogue/test_catalogue_schema.py
    assert shipped == sorted(f"{k}.schema.json" for k in (*KINDS, "manifest", "catalogue"))
    assert all(any(fnmatch.fnmatch(f"schemas/{name}", p) for p in patterns) for name in shipped)


# -- every file snapbuild ships or its tests use is accepted ----------------------------------------------------

SHIPPED_RECIPES = sorted(data_dir("recipes").glob("*/recipe.yaml"))
TEST_RECIPES = sorted((REPO / "tests" / "recipes").glob("*/recipe.yaml"))
SHIPPED_PROFILES = sorted((data_dir("recipes") / "profiles").glob("*.yaml"))


def test_the_file_lists_are_not_empty() -> None:
    assert {p.parent.name for p in SHIPPED_RECIPES} >= {"base", "docker-ce", "k8s"}
    assert len(TEST_RECIPES) >= 3
    assert {p.stem for p in SHIPPED_PROFILES} >= {"cloudinative", "upstream", "airgap-example"}


@pytest.mark.parametrize("path", SHIPPED_RECIPES + TEST_RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_every_shipped_and_test_recipe_is_valid(path: Path) -> None:
    assert schema_errors("recipe", path) == []
    load_recipe(path.parent)


@pytest.mark.parametrize("path", SHIPPED_PROFILES, ids=lambda p: p.stem)
def test_every_shipped_profile_is_valid(path: Path) -> None:
    assert schema_errors("profile", path) == []


def test_the_profile_the_mirror_tests_write_is_valid(tmp_path: Path) -> None:
    path = write_mirror_profile(tmp_path / "mirrors.yaml", description="test mirrors", apt_guest="10.0.2.100:3142",
                                registry_guest="10.0.2.101:5000",
                                forwards=[{"guest": "10.0.2.100:3142", "host": "127.0.0.1:40001"}])
    assert schema_errors("profile", path) == []
    load_profile(path)


def _readme_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_readme_s_snapbuild_yaml_and_profile_examples_are_valid(tmp_path: Path) -> None:
    blocks = _readme_yaml_blocks()
    config = [b for b in blocks if b.startswith("# snapbuild.yaml")]
    profile = [b for b in blocks if b.startswith("apt:")]
    keyed = [b for b in blocks if b.startswith("apt_repositories:") and "key_url" in b]
    assert config and profile and keyed, "the README's snapbuild.yaml or profile examples moved: update this test"
    for kind, text in (("config", config[0]), ("profile", profile[0]), ("profile", keyed[0])):
        path = write(kind, tmp_path, None)
        path.write_text(text)
        assert schema_errors(kind, path) == [], kind
        LOADERS[kind](path)


FULL_CONFIG = {
    "recipes_path": ["./my-recipes"],
    "mirrors": "my-mirrors",
    "distro": "debian-12",
    "variables": {"kubernetes_version": "1.32.12", "extra_images": ["nginx:1"]},
    "build": {"flavor": "m1.large", "network": "private", "floating-network": "public", "security_group": ["b", 2],
              "property": {"hw_qemu_guest_agent": "yes", "n": 1, "b": True}, "tag": "golden", "timeout_ssh": 900,
              "ssh_port": 22.0, "ssh_ip_version": 4, "config_drive": True, "volume-size": 20},
}


def test_a_config_with_every_key_is_valid(tmp_path: Path) -> None:
    path = write("config", tmp_path, FULL_CONFIG)
    assert schema_errors("config", path) == []
    load_config_as_used(path)


# A recipe with every step kind in every form, every optional key once: the schema must not be stricter than
# snapbuild about anything that builds.
KITCHEN_SINK: dict[str, Any] = {
    "description": "every key",
    "distros": ["ubuntu-24.04", "debian-12"],
    "variables": {
        "flavour": {"description": "a string", "default": "plain", "pattern": "[a-z]+", "choices": ["plain", "fancy"]},
        "count": {"type": "integer", "default": "3"},
        "flag": {"type": "boolean", "default": "yes"},
        "extra": {"type": "list", "default": "nginx:1, redis:7"},
        "needed": {"type": "string", "default": 5},
    },
    "variants": {"full": {"description": "all of it"},
                 "slim": {"description": "less", "variables": {"flavour": "fancy", "count": 1, "extra": ["busybox"]}}},
    "image": {"name": "{{ distro.pretty }} sink", "category": "test", "min_disk_gb": 5, "min_ram_mb": 1024,
              "disk_size_gb": 6, "properties": {"a": "{{ flavour }}", "b": 2, "c": True},
              "default_user_groups": ["adm"]},
    "components": {"sink": "{{ count }}", "n": 1},
    "steps": [
        {"apt_repository": {"name": "demo", "url": "https://example.invalid/debian", "suites": ["{{ distro.codename }}"],
                            "components": ["main"], "architectures": ["amd64"], "key_file": "keys/demo.asc"}},
        {"apt_repository": {"name": "flat", "url": "https://example.invalid/flat/", "suites": ["/"],
                            "key_url": "https://example.invalid/key",
                            "key_fingerprint": "DE15 B144 86CD 377B 9E87 6E1A 2346 54DA 9A29 6436"}},
        {"packages": ["curl", "less=1.0", 7]},
        {"packages": {"install": ["curl", "jq={{ count }}.0"], "hold": ["jq"]}},
        {"file": {"path": "/etc/a.conf", "template": "a.conf.j2", "mode": "0640", "owner": "root:adm"}},
        {"file": {"path": "/etc/b.conf", "source": "files/b.conf"}},
        {"file": {"path": "{{ '/etc' }}/c.conf", "content": "c {{ flavour }}\n", "mode": 644}},
        {"command": ["echo", "hi", 3]},
        {"command": {"argv": ["echo", "{{ flavour }}"], "timeout": 60, "only": "chroot"}},
        {"command": {"argv": ["true"], "timeout": 1.5, "only": None}},
        {"script": {"name": "setup.sh", "content": "echo {{ count }}\n", "interpreter": "/bin/sh", "timeout": 30}},
        {"script": {"name": "other", "template": "a.conf.j2"}},
        {"service": "cron"},
        {"service": {"name": "cron", "enabled": False, "start": True}},
        {"sysctl": {"net.ipv4.ip_forward": 1, "vm.swappiness": "10", "kernel.sysrq": True}},
        {"kernel_modules": ["overlay", "br_netfilter"]},
        {"swap_off": True},
        {"containerd_mirrors": {"registries": ["registry.k8s.io", "docker.io"], "config_path": "/etc/containerd/certs.d"}},
        {"prepull": {"namespace": "k8s.io", "images": ["nginx:1"], "parallel": 2,
                     "hosts_dir": "/etc/containerd/certs.d"}},
        {"prepull": {"list_command": ["kubeadm", "config", "images", "list"],
                     "expect": ["registry.k8s.io/pause:3.10"]}},
        {"prepull": {"list_command": ["lister"], "registries": ["registry.k8s.io"]}},
        {"prepull": {"images": "{{ extra }}"}},
        {"cloudinit_dropin": {"name": "99-sink.cfg", "content": "#cloud-config\n{}\n"}},
        {"cloudinit_dropin": {"name": "98-{{ flavour }}.cfg", "source": "files/b.conf"}},
        {"distros": ["debian-12"], "when": {"variant": ["full", "slim"], "var": "flag", "equals": True},
         "command": ["true"]},
        {"when": {"variant": "slim"}, "packages": ["jq"]},
        {"when": {"var": "count", "equals": 3}, "packages": ["jq"]},
    ],
    "checks": [
        ["true"],
        ["sh", "-c", "test {{ count }} = 3", 1],
        {"argv": ["true"], "when": {"variant": "slim"}},
        {"argv": ["true"]},
    ],
}


def kitchen_sink(tmp_path: Path, doc: Any = None) -> Path:
    folder = tmp_path / "recipe"
    for name, text in (("keys/demo.asc", "not really a key\n"), ("templates/a.conf.j2", "a {{ flavour }}\n"),
                       ("files/b.conf", "b\n")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return recipe_file(folder, KITCHEN_SINK if doc is None else doc)


def test_a_recipe_with_every_step_kind_form_and_key_is_valid(tmp_path: Path) -> None:
    path = kitchen_sink(tmp_path)
    assert schema_errors("recipe", path) == []
    load_and_plan(path)


# -- what snapbuild refuses, the schema refuses ------------------------------------------------------------------

BASE: dict[str, Any] = {
    "recipe": {
        "description": "schema test",
        "distros": ["debian-12"],
        "variables": {"flavour": {"default": "plain", "choices": ["plain", "fancy"]},
                      "count": {"type": "integer", "default": 2},
                      "flag": {"type": "boolean", "default": False}},
        "variants": {"full": {"description": "all"}, "slim": {"description": "less", "variables": {"flavour": "fancy"}}},
        "image": {"name": "t", "category": "test"},
        "steps": [{"packages": ["curl"]}],
        "checks": [["true"]],
        "components": {"a": "1"},
    },
    "profile": {
        "description": "schema test",
        "apt": {"debian": {"archive": "http://mirror.example.invalid/debian"}},
        "apt_repositories": {"https://download.docker.com": "https://mirror.example.invalid/docker",
                             "https://pkgs.k8s.io": {"url": "https://mirror.example.invalid/k8s",
                                                     "key_url": "https://mirror.example.invalid/mirror.asc",
                                                     "key_fingerprint": "0123 4567 89AB CDEF 0123 4567 89ab cdef "
                                                                        "0123 4567"}},
        "registries": {"docker.io": ["https://mirror.example.invalid"]},
        "blocked": ["quay.io"],
        "unreliable": [],
        "build_apt_proxy": "http://10.0.2.100:3142",
        "forwards": [{"guest": "10.0.2.100:3142", "host": "127.0.0.1:3142"}],
    },
    "config": FULL_CONFIG,
}

DELETE = object()
Edit = tuple[tuple[str | int, ...], Any]


def edited(kind: str, *edits: Edit) -> Any:
    doc = copy.deepcopy(BASE[kind])
    for path, value in edits:
        if not path:
            doc = value
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return doc


def step(body: Any) -> Edit:
    return ("steps", 0), body


BAD: list[tuple[str, str, tuple[Edit, ...]]] = [
    # recipe: top level
    ("recipe", "unknown top-level key", ((("step",), []),)),
    ("recipe", "missing image", ((("image",), DELETE),)),
    ("recipe", "not a mapping", (((), ["description"]),)),
    ("recipe", "distros not a list", ((("distros",), "debian-12"),)),
    ("recipe", "unknown distro", ((("distros",), ["fedora-40"]),)),
    ("recipe", "components not a mapping", ((("components",), ["a"]),)),
    ("recipe", "components value a list", ((("components", "a"), [1]),)),
    # variables and variants
    ("recipe", "unknown key in a variable", ((("variables", "flavour", "defualt"), "x"),)),
    ("recipe", "unknown variable type", ((("variables", "flavour", "type"), "float"),)),
    ("recipe", "variable name not snake_case", ((("variables", "Flavour"), {"default": "x"}),)),
    ("recipe", "variable named variant", ((("variables", "variant"), {"default": "x"}),)),
    ("recipe", "variable not a mapping", ((("variables", "flavour"), "plain"),)),
    ("recipe", "variables not a mapping", ((("variables",), ["flavour"]),)),
    ("recipe", "integer default not an integer", ((("variables", "count", "default"), "two"),)),
    ("recipe", "boolean default not a boolean", ((("variables", "flag", "default"), "maybe"),)),
    ("recipe", "string default a list", ((("variables", "flavour", "default"), ["plain"]),)),
    ("recipe", "pattern not a string", ((("variables", "flavour", "pattern"), ["a"]),)),
    ("recipe", "unknown key in a variant", ((("variants", "slim", "variabels"), {}),)),
    ("recipe", "variant without description", ((("variants", "full", "description"), DELETE),)),
    ("recipe", "variant name with capitals", ((("variants", "Full"), {"description": "x"}),)),
    ("recipe", "no variants in variants", ((("variants",), {}),)),
    ("recipe", "variant variables not a mapping", ((("variants", "slim", "variables"), ["flavour"]),)),
    # image
    ("recipe", "unknown key in image", ((("image", "min_disk"), 4),)),
    ("recipe", "image size not an integer", ((("image", "min_disk_gb"), "ten"),)),
    ("recipe", "image without category", ((("image", "category"), DELETE),)),
    ("recipe", "image properties a list", ((("image", "properties"), ["a"]),)),
    # steps
    ("recipe", "steps not a list", ((("steps",), {"packages": ["curl"]}),)),
    ("recipe", "unknown step kind", (step({"shell": ["ls"]}),)),
    ("recipe", "two step kinds in one step", (step({"packages": ["curl"], "command": ["ls"]}),)),
    ("recipe", "a step with no kind", (step({"distros": ["debian-12"]}),)),
    ("recipe", "step not a mapping", (step("packages"),)),
    ("recipe", "step for an unknown distro", (step({"distros": ["fedora-40"], "packages": ["curl"]}),)),
    ("recipe", "swap_off false", (step({"swap_off": False}),)),
    ("recipe", "service enabled not a boolean", (step({"service": {"name": "x", "enabled": "maybe"}}),)),
    ("recipe", "file with two contents", (step({"file": {"path": "/x", "content": "a", "source": "b"}}),)),
    ("recipe", "file with no content", (step({"file": {"path": "/x"}}),)),
    ("recipe", "file path relative", (step({"file": {"path": "etc/x", "content": "a"}}),)),
    ("recipe", "file mode not octal", (step({"file": {"path": "/x", "content": "a", "mode": "0999"}}),)),
    ("recipe", "unsigned apt repository", (step({"apt_repository": {"name": "x", "url": "https://e.invalid"}}),)),
    ("recipe", "key_url without key_fingerprint",
     (step({"apt_repository": {"name": "x", "url": "https://e.invalid", "key_url": "https://e.invalid/k"}}),)),
    ("recipe", "short key_fingerprint", (step({"apt_repository": {
        "name": "x", "url": "https://e.invalid", "key_url": "https://e.invalid/k", "key_fingerprint": "ABCD"}}),)),
    ("recipe", "apt repository name with capitals", (step({"apt_repository": {
        "name": "Docker", "url": "https://e.invalid", "key_file": "k.asc"}}),)),
    ("recipe", "packages without install", (step({"packages": {"hold": ["curl"]}}),)),
    ("recipe", "packages a string", (step({"packages": "curl"}),)),
    ("recipe", "command only neither vm nor chroot", (step({"command": {"argv": ["ls"], "only": "both"}}),)),
    ("recipe", "command argv empty", (step({"command": []}),)),
    ("recipe", "command timeout a string", (step({"command": {"argv": ["ls"], "timeout": "soon"}}),)),
    ("recipe", "script name with a slash", (step({"script": {"name": "a/b", "content": "x"}}),)),
    ("recipe", "sysctl empty", (step({"sysctl": {}}),)),
    ("recipe", "kernel_modules a string", (step({"kernel_modules": "overlay"}),)),
    ("recipe", "containerd_mirrors without registries", (step({"containerd_mirrors": {"config_path": "/x"}}),)),
    ("recipe", "prepull with nothing to pull", (step({"prepull": {"namespace": "k8s.io"}}),)),
    ("recipe", "prepull expect without list_command", (step({"prepull": {"images": ["a"], "expect": ["b"]}}),)),
    ("recipe", "prepull list_command naming no images", (step({"prepull": {"list_command": ["lister"]}}),)),
    ("recipe", "prepull parallel a string", (step({"prepull": {"images": ["a"], "parallel": "4"}}),)),
    ("recipe", "prepull images a plain string", (step({"prepull": {"images": "nginx:1"}}),)),
    ("recipe", "cloud-init drop-in name without NN-", (step({"cloudinit_dropin": {"name": "my.cfg", "content": "x"}}),)),
    # when
    ("recipe", "when with an unknown key", (step({"when": {"variants": "full"}, "packages": ["curl"]}),)),
    ("recipe", "when empty", (step({"when": {}, "packages": ["curl"]}),)),
    ("recipe", "when not a mapping", (step({"when": "full", "packages": ["curl"]}),)),
    ("recipe", "when var without equals", (step({"when": {"var": "flavour"}, "packages": ["curl"]}),)),
    ("recipe", "when equals without var", (step({"when": {"equals": "plain"}, "packages": ["curl"]}),)),
    ("recipe", "when with an empty variant list", (step({"when": {"variant": []}, "packages": ["curl"]}),)),
    ("recipe", "when variant in a recipe without variants",
     ((("variants",), DELETE), step({"when": {"variant": "full"}, "packages": ["curl"]}))),
    ("recipe", "check when variant in a recipe without variants",
     ((("variants",), DELETE), (("checks", 0), {"argv": ["true"], "when": {"variant": "full"}}))),
    # checks
    ("recipe", "checks not a list", ((("checks",), "true"),)),
    ("recipe", "check with an empty argv", ((("checks", 0), []),)),
    ("recipe", "check with an unknown key", ((("checks", 0), {"argv": ["true"], "if": "x"}),)),
    ("recipe", "check without argv", ((("checks", 0), {"when": {"variant": "full"}}),)),
    # profiles
    ("profile", "unknown top-level key", ((("mirrors",), {}),)),
    ("profile", "not a mapping", (((), ["apt"]),)),
    ("profile", "unknown distro under apt", ((("apt", "fedora"), {"archive": "http://m/fedora"}),)),
    ("profile", "unknown key in an apt archive", ((("apt", "debian", "mirror"), "http://m/debian"),)),
    ("profile", "apt archive not a URL", ((("apt", "debian", "archive"), "mirror.example.invalid/debian"),)),
    ("profile", "apt archive null", ((("apt", "debian"), None),)),
    ("profile", "apt_repositories mirror not a URL", ((("apt_repositories", "https://download.docker.com"), "m"),)),
    ("profile", "apt_repositories a list", ((("apt_repositories",), ["https://m"]),)),
    ("profile", "apt_repositories entry a list", ((("apt_repositories", "https://pkgs.k8s.io"), ["https://m"]),)),
    ("profile", "apt_repositories entry without url", ((("apt_repositories", "https://pkgs.k8s.io", "url"), DELETE),)),
    ("profile", "apt_repositories entry url not a URL", ((("apt_repositories", "https://pkgs.k8s.io", "url"), "m"),)),
    ("profile", "apt_repositories entry with an unknown key",
     ((("apt_repositories", "https://pkgs.k8s.io", "signed_by"), "k.asc"),)),
    ("profile", "apt_repositories key_url without key_fingerprint",
     ((("apt_repositories", "https://pkgs.k8s.io", "key_fingerprint"), DELETE),)),
    ("profile", "apt_repositories key_fingerprint without a key",
     ((("apt_repositories", "https://pkgs.k8s.io", "key_url"), DELETE),)),
    ("profile", "apt_repositories key_url and key_file",
     ((("apt_repositories", "https://pkgs.k8s.io", "key_file"), "k.asc"),)),
    ("profile", "apt_repositories short key_fingerprint",
     ((("apt_repositories", "https://pkgs.k8s.io", "key_fingerprint"), "ABCD"),)),
    ("profile", "apt_repositories key_url file://",
     ((("apt_repositories", "https://pkgs.k8s.io", "key_url"), "file:///etc/k.asc"),)),
    ("profile", "registry mirrors a string", ((("registries", "docker.io"), "https://m"),)),
    ("profile", "registry mirror not a URL", ((("registries", "docker.io"), ["m.example.invalid"]),)),
    ("profile", "blocked a string", ((("blocked",), "quay.io"),)),
    ("profile", "build_apt_proxy https", ((("build_apt_proxy",), "https://proxy:3142"),)),
    ("profile", "forwards a mapping", ((("forwards",), {"guest": "10.0.2.100:1", "host": "127.0.0.1:1"}),)),
    ("profile", "forward with an unknown key", ((("forwards", 0, "proto"), "tcp"),)),
    ("profile", "forward without host", ((("forwards", 0, "host"), DELETE),)),
    ("profile", "forward host not loopback", ((("forwards", 0, "host"), "10.0.0.1:3142"),)),
    ("profile", "forward guest without port", ((("forwards", 0, "guest"), "10.0.2.100"),)),
    # snapbuild.yaml
    ("config", "unknown top-level key", ((("mirror",), "x"),)),
    ("config", "not a mapping", (((), ["mirrors"]),)),
    ("config", "recipes_path a string", ((("recipes_path",), "./my-recipes"),)),
    ("config", "variables a list", ((("variables",), ["a"]),)),
    ("config", "build a list", ((("build",), ["flavor"]),)),
    ("config", "unknown key in build", ((("build", "flavour"), "m1.large"),)),
    ("config", "build key refused as a site default", ((("build", "image_name"), "x"),)),
    ("config", "build timeout a string", ((("build", "timeout_ssh"), "soon"),)),
    ("config", "build port not whole", ((("build", "ssh_port"), 22.5),)),
    ("config", "build volume size below 1", ((("build", "volume_size"), 0),)),
    ("config", "build visibility unknown", ((("build", "visibility"), "secret"),)),
    ("config", "build network a mapping", ((("build", "network"), {"a": 1}),)),
    ("config", "build flavor a list", ((("build", "flavor"), ["m1.large"]),)),
    ("config", "build config_drive a string", ((("build", "config-drive"), "yes"),)),
    ("config", "build property value a list", ((("build", "property"), {"a": ["b"]}),)),
    ("config", "build flavor null", ((("build", "flavor"), None),)),
    ("config", "mirrors null", ((("mirrors",), None),)),
    ("config", "mirrors a mapping", ((("mirrors",), {"name": "x"}),)),
    ("config", "unknown distro", ((("distro",), "fedora-40"),)),
]


@pytest.mark.parametrize("kind", KINDS)
def test_the_base_documents_of_the_bad_ones_are_valid(kind: str, tmp_path: Path) -> None:
    """So each bad document below is refused for its one change."""
    path = write(kind, tmp_path, BASE[kind])
    assert schema_errors(kind, path) == []
    assert loader_error(kind, path) is None


# Cases where snapbuild's loader crashes instead of refusing with file and line (a loader bug, not the schema's):
# strict, so the mark has to go when the loader is fixed.
LOADER_CRASHES: dict[str, str] = {}     # bad documents the loader crashes on instead of refusing (none left)


@pytest.mark.parametrize(("kind", "edits"), [
    pytest.param(k, e, id=f"{k}: {what}", marks=[pytest.mark.xfail(raises=TypeError, strict=True,
                                                                    reason=LOADER_CRASHES[what])]
                 if what in LOADER_CRASHES else []) for k, what, e in BAD])
def test_what_snapbuild_refuses_the_schema_refuses(kind: str, edits: tuple[Edit, ...], tmp_path: Path) -> None:
    path = write(kind, tmp_path, edited(kind, *edits))
    assert loader_error(kind, path) is not None, "snapbuild accepts it: the case is wrong"
    assert schema_errors(kind, path), "the schema accepts what snapbuild refuses"


# -- the key sets: the loaders' own "allowed keys" against the schemas' properties -------------------------------

def _object_form(node: dict[str, Any]) -> dict[str, Any]:
    """A schema node, or its object alternative when it also takes a short form (a list or a string)."""
    if "properties" in node:
        return node
    return next(alt for alt in node.get("oneOf", []) if alt.get("type") == "object")


def _recipe_def(name: str) -> dict[str, Any]:
    return _object_form(schema("recipe")["$defs"][name])


OBJECT_STEPS = ("apt_repository", "packages", "file", "command", "script", "service", "containerd_mirrors",
                "prepull", "cloudinit_dropin")
PROFILE = schema("profile")["properties"]

# Where an unknown key goes, and which schema object must list exactly the keys snapbuild allows there.
PLACES: list[tuple[str, str, tuple[Edit, ...], dict[str, Any]]] = [
    ("recipe", "top level", ((("zzzz",), 1),), schema("recipe")),
    ("recipe", "a variable", ((("variables", "flavour", "zzzz"), 1),), _recipe_def("variable")),
    ("recipe", "a variant", ((("variants", "full", "zzzz"), 1),), _recipe_def("variant")),
    ("recipe", "image", ((("image", "zzzz"), 1),), _recipe_def("image")),
    ("recipe", "a step", (step({"zzzz": 1}),), _recipe_def("step")),
    ("recipe", "a step's when", (step({"when": {"zzzz": 1}, "packages": ["curl"]}),), _recipe_def("condition")),
    ("recipe", "a check", ((("checks", 0), {"argv": ["true"], "zzzz": 1}),), _recipe_def("check")),
    *[("recipe", f"{kind} step", (step({kind: {"zzzz": 1}}),), _recipe_def(kind)) for kind in OBJECT_STEPS],
    ("profile", "top level", ((("zzzz",), 1),), schema("profile")),
    ("profile", "apt", ((("apt", "zzzz"), {}),), PROFILE["apt"]),
    ("profile", "apt.debian", ((("apt", "debian", "zzzz"), 1),), PROFILE["apt"]["properties"]["debian"]),
    ("profile", "apt.ubuntu", ((("apt", "ubuntu"), {"zzzz": 1}),), PROFILE["apt"]["properties"]["ubuntu"]),
    ("profile", "a forward", ((("forwards", 0, "zzzz"), 1),), PROFILE["forwards"]["items"]),
    ("config", "top level", ((("zzzz",), 1),), schema("config")),
    ("config", "build", ((("build", "zzzz"), 1),), schema("config")["properties"]["build"]),
]


@pytest.mark.parametrize(("kind", "edits", "node"), [(k, e, n) for k, _, e, n in PLACES],
                         ids=[f"{k}: {where}" for k, where, _, _ in PLACES])
def test_the_schema_allows_exactly_the_keys_snapbuild_allows(kind: str, edits: tuple[Edit, ...],
                                                              node: dict[str, Any], tmp_path: Path) -> None:
    path = write(kind, tmp_path, edited(kind, *edits))
    error = loader_error(kind, path)
    assert isinstance(error, RecipeError) and "unknown key 'zzzz'" in error.message, error
    allowed = set((error.hint or "").removeprefix("allowed keys: ").split(", "))
    assert set(node["properties"]) == allowed
    assert node.get("additionalProperties") is False
    assert any("zzzz" in e for e in schema_errors(kind, path))
