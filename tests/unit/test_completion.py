"""Shell completion through click's own machinery: recipe names for RECIPE and --recipe, mirror profile names for
--mirrors and `profile init --from`, from the library the command would use (--recipes-dir included, typed
before or after the subcommand)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner

from snapbuild import cli

SHIPPED_RECIPES = {"base", "docker-ce", "k8s"}
SHIPPED_PROFILES = {"airgap-example", "cloudinative", "upstream"}


@pytest.fixture(autouse=True)
def _no_site_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)       # no ./snapbuild.yaml; XDG_CONFIG_HOME is the test's (tests/conftest.py)


def offered(line: str) -> list[str]:
    """What `snapbuild LINE<TAB>` offers (the last word is the one being typed)."""
    words = line.split(" ")
    complete = ShellComplete(cli.cli, {}, "snapbuild", "_SNAPBUILD_COMPLETE")
    return [item.value for item in complete.get_completions(words[:-1], words[-1])]


def my_recipes(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    (folder / "in-house").mkdir(parents=True)
    (folder / "in-house" / "recipe.yaml").write_text("not parsed while completing: [\n")
    (folder / "profiles").mkdir()
    (folder / "profiles" / "site-mirrors.yaml").write_text("")
    return folder


@pytest.mark.parametrize("line", ["build ", "render ", "plan ", "local ", "chroot ", "validate ",
                                  "upload f.qcow2 --recipe ", "verify img.qcow2 --recipe ",
                                  "--os-cloud c build "])
def test_recipe_names_are_offered(line: str) -> None:
    assert set(offered(line)) >= SHIPPED_RECIPES


def test_a_prefix_narrows_the_recipes() -> None:
    assert offered("render d") == ["docker-ce"]
    assert offered("build k") == ["k8s"]


@pytest.mark.parametrize("line", ["k8s --mirrors ", "render k8s --mirrors ", "chroot k8s --mirrors ",
                                  "profile init --from "])
def test_profile_names_are_offered(line: str) -> None:
    assert set(offered(line)) == SHIPPED_PROFILES


def test_a_path_completes_as_a_file(tmp_path: Path) -> None:
    complete = ShellComplete(cli.cli, {}, "snapbuild", "_SNAPBUILD_COMPLETE")
    (item,) = complete.get_completions(["k8s", "--mirrors"], "./my")
    assert (item.value, item.type) == ("./my", "file")


@pytest.mark.parametrize("line", ["--recipes-dir {dir} render ", "render --recipes-dir {dir} ",
                                  "render --recipes-dir={dir} "])
def test_recipes_dir_before_or_after_the_subcommand_adds_its_recipes(line: str, tmp_path: Path) -> None:
    names = offered(line.format(dir=my_recipes(tmp_path)))
    assert set(names) == SHIPPED_RECIPES | {"in-house"}


def test_recipes_dir_adds_its_profiles(tmp_path: Path) -> None:
    names = offered(f"k8s --recipes-dir {my_recipes(tmp_path)} --mirrors s")
    assert names == ["site-mirrors"]


def test_a_broken_config_still_offers_the_shipped_recipes(tmp_path: Path) -> None:
    (tmp_path / "snapbuild.yaml").write_text("recipes_path: [unterminated\n")
    assert set(offered("render ")) == SHIPPED_RECIPES


def test_bash_completion_through_the_environment_as_the_shell_calls_it() -> None:
    env = {"_SNAPBUILD_COMPLETE": "bash_complete", "COMP_WORDS": "snapbuild k8s --mirrors ", "COMP_CWORD": "3"}
    result = CliRunner().invoke(cli.cli, [], env=env, prog_name="snapbuild")
    assert result.exit_code == 0, result.output
    assert set(result.output.split()) == {f"plain,{name}" for name in SHIPPED_PROFILES}
    env.update(COMP_WORDS="snapbuild --os-cloud x render ", COMP_CWORD="4")
    result = CliRunner().invoke(cli.cli, [], env=env, prog_name="snapbuild")
    assert {"plain,k8s", "plain,docker-ce"} <= set(result.output.split())


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F"), ("zsh", "#compdef snapbuild"),
                                               ("fish", "complete --no-files --command snapbuild")])
def test_the_shell_scripts_are_generated(shell: str, marker: str) -> None:
    result = CliRunner().invoke(cli.cli, [], env={"_SNAPBUILD_COMPLETE": f"{shell}_source"}, prog_name="snapbuild")
    assert result.exit_code == 0 and marker in result.output
