"""Bad catalogues are refused before any cloud is asked: one line naming file:line, exit 2, nothing created."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from catalogues import LIBRARY, TWO_REGIONS, write

from snapbuild.catalogue.load import load_catalogue
from snapbuild.errors import RecipeError


def refused(tmp_path: Path, text: str) -> RecipeError:
    with pytest.raises(RecipeError) as caught:
        load_catalogue(write(tmp_path, text), library=LIBRARY, known_clouds=["fake", "other"])
    return caught.value


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("old", "new", "message", "hint", "at"), [
    ("recipe: docker-ce", "recipe: docker-c", "unknown recipe 'docker-c'", "did you mean docker-ce", "recipe: docker-c"),
    ("variant: slim", "variant: slimm", "has no variant 'slimm'", "did you mean 'slim'", "variant: slimm"),
    ("cloud: fake\n    region: RegionTwo", "cloud: fakee\n    region: RegionTwo",
     "'fakee' is not a cloud in clouds.yaml", "did you mean 'fake'", "cloud: fakee"),
    ("properties: {os_type: linux}", "variables: {docker_versio: '1.2.3'}",
     "recipe 'docker-ce' has no variable 'docker_versio'", "did you mean 'docker_version'", "docker_versio:"),
    ("properties: {os_type: linux}", "variables: {docker_version: latest}", "variables.docker_version",
     None, "docker_version: latest"),
    ("  keep: 1", "  keep: 0", "would delete every image", "keep at least 1", "keep: 0"),
    ("    mirrors: upstream\n    properties", "    mirrors: upstream\n    targets: [one, tow]\n    properties",
     "no target 'tow'", "did you mean 'two'", "targets: [one, tow]"),
    ("    role: receive", "    role: recieve", "role must be build or receive", "did you mean 'receive'", "recieve"),
    ("    visibility: public", "    visibilty: public", "unknown key 'visibilty'", "did you mean 'visibility'",
     "visibilty"),
    ("  grace_period: 1d", "  grace_period: soon", "'soon' is not a duration", "7d", "soon"),
    ("build: {flavor: m1.large, network: private, floating_network: public}", "build: {network: private}",
     "has no flavor", "flavor: NAME", "build: {network"),
    ("build: {flavor: m1.large, network: private, floating_network: public}",
     "build: {flavor: m1.large, network: private, transport: consol}", "transport must be one of ssh, console",
     "did you mean 'console'", "transport: consol"),
])
def test_bad_catalogue_names_file_line_and_fix(tmp_path, old, new, message, hint, at):
    assert old in TWO_REGIONS
    text = TWO_REGIONS.replace(old, new, 1)
    error = refused(tmp_path, text)
    assert message in error.message
    assert error.message.startswith(f"{tmp_path / 'catalogue.yaml'}:{line_of(text, at)}: ")
    if hint:
        assert hint in (error.hint or "")
    assert error.exit_code == 2


def test_duplicate_entry_name_is_refused(tmp_path):
    text = TWO_REGIONS.replace("  k8s-slim:", "  k8s-full:")
    error = refused(tmp_path, text)
    assert "duplicate key 'k8s-full'" in error.message
    assert error.line == line_of(text, "  k8s-full:") + 4     # the second one


def test_two_entries_building_the_same_image_are_refused(tmp_path):
    text = TWO_REGIONS.replace("    variant: slim\n", "    variant: full\n")
    error = refused(tmp_path, text)
    assert "images.k8s-slim duplicates images.k8s-full" in error.message
    assert error.line == line_of(text, "k8s-slim:")


def test_a_receiving_target_needs_a_build_target_for_the_entry(tmp_path):
    text = TWO_REGIONS.replace("    recipe: docker-ce\n", "    recipe: docker-ce\n    targets: [two]\n")
    error = refused(tmp_path, text)
    assert "target two receives copies but the entry is built on no target" in error.message


def test_the_shipped_example_loads(tmp_path):
    catalogue = load_catalogue(write(tmp_path), library=LIBRARY, known_clouds=["fake"])
    assert [e.name for e in catalogue.entries] == ["docker-ce", "k8s-full", "k8s-slim"]
    assert catalogue.target("one").build["networks"] == ("private",)
    assert catalogue.policy.keep == 1 and catalogue.policy.grace_period_s == 86400


def test_cli_refuses_a_bad_catalogue_with_one_line_and_asks_no_cloud(regions, tmp_path, monkeypatch, capsys):
    from snapbuild.cli import main

    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  fake:\n    auth: {auth_url: 'http://127.0.0.1:35357/v3'}\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    path = write(tmp_path, TWO_REGIONS.replace("recipe: k8s\n    variant: slim", "recipe: k9s\n    variant: slim"))
    with pytest.raises(SystemExit) as exited:
        main(["apply", str(path), "--dry-run"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(rf"snapbuild: error: {re.escape(str(path))}:\d+: unknown recipe 'k9s'", err[0])
    assert len(err) == 2 and err[1].startswith("snapbuild: hint:")
    assert regions.requests() == []


def test_a_target_may_build_over_the_console(tmp_path):
    text = TWO_REGIONS.replace("build: {flavor: m1.large, network: private, floating_network: public}",
                               "build: {flavor: m1.large, network: private, transport: console}", 1)
    catalogue = load_catalogue(write(tmp_path, text), library=LIBRARY, known_clouds=["fake", "other"])
    assert next(dict(t.build).get("transport") for t in catalogue.targets if t.builds) == "console"
