"""The parts depend on each other only in the directions DESIGN draws (imports read from the source, function-level
imports included): the CLI depends on everything and nothing on it; recipes and plans on no builder, guest or host
code; guests on no builder; provision and the sealing policy only on the Guest and the monitor; the cloud builder on
nothing of local, chroot or host; local and chroot not on each other."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import snapbuild

PACKAGE = Path(snapbuild.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[name] = {t for t in targets if t.startswith("snapbuild.")}
    return found


def _reach(module: str) -> set[str]:
    """Every snapbuild module `module` imports, directly or through others."""
    graph = _imports()
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target in graph and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _in(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_nothing_depends_on_the_cli() -> None:
    users = [m for m, targets in _imports().items() if not m.startswith("snapbuild.cli")
             and _in(targets, "snapbuild.cli") and m != "snapbuild.__main__"]
    assert users == []


@pytest.mark.parametrize("module", ["snapbuild.recipes", "snapbuild.plan", "snapbuild.profiles", "snapbuild.digest",
                                    "snapbuild.userdata"])
def test_recipes_and_plans_depend_on_no_builder_guest_or_host_code(module: str) -> None:
    assert _in(_reach(module), "snapbuild.openstack", "snapbuild.local", "snapbuild.chroot", "snapbuild.guest",
               "snapbuild.host", "snapbuild.run") == []


def test_guests_depend_on_no_builder() -> None:
    for module in [m for m in _imports() if m.startswith("snapbuild.guest")]:
        assert _in(_reach(module), "snapbuild.openstack", "snapbuild.local", "snapbuild.chroot") == [], module


@pytest.mark.parametrize("module", ["snapbuild.provision", "snapbuild.sealing.policy"])
def test_provision_and_the_seal_know_only_the_guest_and_the_monitor(module: str) -> None:
    # the progress display is the monitor's (it reports through it and draws on its terminal)
    allowed = ("snapbuild.guest.base", "snapbuild.run.monitor", "snapbuild.run.progress", "snapbuild.run",
               "snapbuild.errors",
               "snapbuild.actions", "snapbuild.plan", "snapbuild.sealing", "snapbuild.sealing.checker",
               "snapbuild.guest")
    direct = {t for t in _imports()[module] if t in _imports()}
    assert sorted(direct - set(allowed)) == []


def test_the_cloud_builder_imports_nothing_of_local_chroot_or_host() -> None:
    assert _in(_reach("snapbuild.openstack.snapshot"), "snapbuild.local", "snapbuild.chroot", "snapbuild.host") == []
    assert _in(_reach("snapbuild.openstack.cleanup"), "snapbuild.local", "snapbuild.chroot", "snapbuild.host") == []


@pytest.mark.parametrize("module", ["snapbuild.catalogue.apply", "snapbuild.catalogue.planner",
                                    "snapbuild.catalogue.load", "snapbuild.catalogue.copying"])
def test_the_catalogue_builds_on_the_cloud_builder_only(module: str) -> None:
    # hostbuild (local and chroot targets) is the one seam to the host builders; the CLI hands it to apply.
    assert _in(_reach(module), "snapbuild.local", "snapbuild.chroot", "snapbuild.host", "snapbuild.cli",
               "snapbuild.catalogue.hostbuild") == []


def test_the_catalogue_s_host_builds_reach_no_cli() -> None:
    assert _in(_reach("snapbuild.catalogue.hostbuild"), "snapbuild.cli") == []


def test_local_and_chroot_do_not_import_each_other() -> None:
    local = [m for m in _imports() if m.startswith("snapbuild.local")]
    chroot = [m for m in _imports() if m.startswith("snapbuild.chroot")]
    for module in local:
        assert _in(_reach(module), "snapbuild.chroot") == [], module
    for module in chroot:
        assert _in(_reach(module), "snapbuild.local") == [], module


def test_no_module_is_named_after_the_standard_library() -> None:
    import sys

    clashes = [m for m in _imports() if m.rsplit(".", 1)[-1] in sys.stdlib_module_names]
    assert clashes == []
