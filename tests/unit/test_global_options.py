"""Global options anywhere on the line, as the openstack CLI takes them: `snapbuild k8s --os-cloud x` is
`snapbuild --os-cloud x k8s`; the openstack CLI's authentication options (`--os-auth-url URL`, `--insecure`, …) are
taken out of the line for openstacksdk, wherever they stand. A subcommand's own option of the same name and
option values stay where they are, and nothing after `--` is touched."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from snapbuild import cli
from snapbuild.cli.global_options import AUTH_ARGS, GlobalOptionsGroup, split_line
from snapbuild.openstack.settings import SnapshotSettings
from tests.clirun import capture_snapshot_builds, run

KEYSTONE = "http://127.0.0.1:5000/v3"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No snapbuild.yaml but the test's own; no OS_* variable from the host."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("OS_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[SnapshotSettings]:
    """What `build_snapshot` is handed; nothing contacts a cloud."""
    return capture_snapshot_builds(monkeypatch)


@pytest.mark.parametrize("line", [
    ["--os-cloud", "site", "--os-region-name", "north", "build", "base", "--flavor", "m1"],
    ["build", "base", "--flavor", "m1", "--os-cloud", "site", "--os-region-name", "north"],
    ["build", "--os-cloud=site", "base", "--os-region-name=north", "--flavor", "m1"],
    ["--os-cloud", "elsewhere", "build", "base", "--flavor", "m1", "--os-cloud", "site", "--os-region-name", "north"],
])
def test_cloud_and_region_reach_the_build_before_or_after_the_subcommand(
        line: list[str], built: list[SnapshotSettings], capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, *line, "--allow-blocked")
    assert code == 0, err
    (settings,) = built
    assert (settings.cloud, settings.region) == ("site", "north")   # the last one typed wins, as in click


def test_a_config_after_the_subcommand_gives_its_build_defaults(tmp_path: Path, built: list[SnapshotSettings],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # The group's callback turns snapbuild.yaml's build: section into k8s's defaults: the lifted --config must be
    # known by then (--flavor is required and comes from the file alone).
    config = tmp_path / "site.yaml"
    config.write_text(textwrap.dedent("""\
        mirrors: upstream
        build:
          flavor: from-config
          network: [private]
    """))
    code, _out, err = run(capsys, "k8s", "--allow-blocked", "--config", str(config), "--os-cloud", "c")
    assert code == 0, err
    (settings,) = built
    assert (settings.flavor, settings.networks, settings.cloud) == ("from-config", ("private",), "c")


def test_without_the_lifted_config_the_flavor_is_missing(built: list[SnapshotSettings],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "k8s", "--allow-blocked")
    assert code == 2 and "--flavor" in err and not built


def test_auth_options_anywhere_reach_the_build_settings_as_typed(built: list[SnapshotSettings],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "--os-auth-url", KEYSTONE, "build", "base", "--flavor", "m1", "--insecure",
                         "--os-password=s3cret", "--allow-blocked", "--os-project-name", "demo")
    assert code == 0, err
    (settings,) = built
    assert settings.auth_args == ("--os-auth-url", KEYSTONE, "--insecure", "--os-password=s3cret",
                                  "--os-project-name", "demo")
    assert settings.flavor == "m1" and settings.allow_blocked
    assert "s3cret" not in repr(settings)       # a password typed on the line stays out of reprs and logs


def test_an_auth_option_without_its_value_is_a_usage_error(built: list[SnapshotSettings],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "build", "base", "--flavor", "m1", "--os-auth-url")
    assert code == 2 and "'--os-auth-url' requires an argument" in err and not built


def test_verbose_after_the_subcommand_is_the_global_one(capsys: pytest.CaptureFixture[str]) -> None:
    split = split_line(cli.cli, click.Context(cli.cli), ["plan", "k8s", "-v", "--mirrors", "upstream"])
    assert split.args == ["-v", "plan", "k8s", "--mirrors", "upstream"] and split.auth == []


def test_option_values_are_not_taken_for_options() -> None:
    line = ["build", "base", "--name", "--verbose", "--flavor", "--os-cloud", "--property", "--insecure=1"]
    split = split_line(cli.cli, click.Context(cli.cli), line)
    assert split.args == line and split.lifted == [] and split.auth == []


def test_nothing_after_double_dash_is_touched() -> None:
    line = ["ship", "f.qcow2", "--to", "c", "--upload", "--", "--os-cloud", "x", "--os-auth-url", KEYSTONE, "-v"]
    split = split_line(cli.cli, click.Context(cli.cli), line)
    assert split.args == line and split.auth == []


def test_help_and_version_stay_where_they_are() -> None:
    split = split_line(cli.cli, click.Context(cli.cli), ["k8s", "--os-cloud", "c", "--help"])
    assert split.args == ["--os-cloud", "c", "k8s", "--help"]


# A subcommand whose own options share names with the group's: they must stay the subcommand's.
seen: dict[str, Any] = {}


@click.group(cls=GlobalOptionsGroup)
@click.option("--config")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def tool(ctx: click.Context, config: str | None, verbose: bool) -> None:
    seen.update(group_config=config, group_verbose=verbose, auth=ctx.meta[AUTH_ARGS])


@tool.command()
@click.option("--config", "own_config")
@click.option("-v", "own_v", count=True)
@click.argument("word", required=False)
def sub(own_config: str | None, own_v: int, word: str | None) -> None:
    seen.update(own_config=own_config, own_v=own_v, word=word)


@tool.command()
@click.argument("word", required=False)
def plain(word: str | None) -> None:
    seen.update(word=word)


def invoke(*args: str) -> dict[str, Any]:
    seen.clear()
    result = CliRunner().invoke(tool, list(args))
    assert result.exit_code == 0, result.output
    return dict(seen)


def test_a_subcommand_option_of_the_same_name_stays_the_subcommands() -> None:
    got = invoke("--config", "g.yaml", "sub", "--config", "own.yaml", "-v", "-v", "w")
    assert (got["group_config"], got["own_config"], got["own_v"], got["word"]) == ("g.yaml", "own.yaml", 2, "w")
    assert got["group_verbose"] is False


def test_where_the_subcommand_lacks_the_option_the_global_one_is_lifted() -> None:
    got = invoke("plain", "--config=g.yaml", "w", "--verbose", "--os-interface", "internal")
    assert (got["group_config"], got["group_verbose"], got["word"]) == ("g.yaml", True, "w")
    assert got["auth"] == ("--os-interface", "internal")


def test_an_unknown_option_is_still_refused_by_click() -> None:
    result = CliRunner().invoke(tool, ["plain", "--bogus"])
    assert result.exit_code == 2 and "No such option '--bogus'" in result.output


def test_group_help_lists_the_global_and_the_auth_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run(capsys, "--help")
    assert code == 0
    for option in ("--os-cloud", "--os-region-name", "--config", "--recipes-dir", "--verbose", "--os-auth-url",
                   "--os-project-name", "--os-cacert", "--insecure", "clouds.yaml"):
        assert option in out, option
    assert "before or after the subcommand" in out
