"""Bad input: exit code 2, one clear line naming what is wrong (file and line where one exists)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from snapbuild.cli import main

GOOD = """\
description: test recipe
distros: [debian-12]
variables:
  size:
    type: integer
    default: 3
image:
  name: test
  category: test
steps:
  - packages: [curl]
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    return int(exc.value.code or 0), captured.err


def recipe_dir(tmp_path: Path, text: str, name: str = "mine", templates: dict[str, str] | None = None) -> Path:
    folder = tmp_path / name
    (folder / "templates").mkdir(parents=True)
    (folder / "recipe.yaml").write_text(textwrap.dedent(text))
    for tname, body in (templates or {}).items():
        (folder / "templates" / tname).write_text(body)
    return tmp_path


def assert_one_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("snapbuild: error:")]
    assert len(errors) == 1, err
    assert all(line.startswith(("snapbuild: error:", "snapbuild: hint:", "WARNING:")) for line in lines), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def test_the_good_recipe_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = recipe_dir(tmp_path, GOOD)
    main(["--recipes-dir", str(root), "render", "mine", "--mirrors", "upstream"])
    assert "apt-get install curl" in capsys.readouterr().out


CASES: list[tuple[str, str, list[str], tuple[str, ...]]] = [
    ("unknown key", GOOD.replace("category: test", "category: test\n  colour: red"), ["render", "mine"],
     ("recipe.yaml:10", "unknown key 'colour'")),
    ("wrong type", GOOD.replace("category: test", "category: test\n  min_disk_gb: ten"), ["render", "mine"],
     ("recipe.yaml:10", "must be an integer")),
    ("missing variable", GOOD.replace("    default: 3\n", ""), ["render", "mine"],
     ("needs a value for: size", "--set size=")),
    ("undefined in recipe string", GOOD.replace("[curl]", '["curl={{ curl_version }}"]'), ["render", "mine"],
     ("recipe.yaml:11", "curl_version")),
    ("template syntax error", GOOD.replace("[curl]", '["curl{{ oops"]'), ["render", "mine"],
     ("recipe.yaml:11", "syntax error")),
    ("invalid yaml", GOOD.replace("steps:", "steps: [oops"), ["render", "mine"], ("recipe.yaml:", "invalid YAML")),
    ("unknown step kind", GOOD + "  - pakages: [vim]\n", ["render", "mine"],
     ("recipe.yaml:12", "unknown key 'pakages'", "did you mean 'packages'")),
    ("unsigned repository", GOOD + "  - apt_repository: {name: x, url: 'http://x.invalid/'}\n", ["render", "mine"],
     ("recipe.yaml:12", "key_file or key_url")),
    ("key_url without fingerprint", GOOD + "  - apt_repository: {name: x, url: 'http://x/', key_url: 'http://x/k'}\n",
     ["render", "mine"], ("recipe.yaml:12", "key_fingerprint")),
    ("bad mode", GOOD + "  - file: {path: /etc/x, content: hi, mode: 644x}\n", ["render", "mine"],
     ("recipe.yaml:12", "octal")),
    ("unknown distro in recipe", GOOD.replace("[debian-12]", "[debian-99]"), ["render", "mine"],
     ("recipe.yaml:2", "unknown distro 'debian-99'")),
    ("bad --set form", GOOD, ["render", "mine", "--set", "size"], ("--set 'size'", "key=value")),
    ("--set unknown variable", GOOD, ["render", "mine", "--set", "colour=red"], ("no variable 'colour'",)),
    ("--set wrong type", GOOD, ["render", "mine", "--set", "size=big"], ("--set size", "expected an integer")),
    ("unknown recipe", GOOD, ["render", "mien"], ("unknown recipe 'mien'", "did you mean mine")),
    ("unknown distro", GOOD, ["render", "mine", "--distro", "fedora-40"], ("unknown distro 'fedora-40'",)),
    ("recipe without the distro", GOOD, ["render", "mine", "--distro", "ubuntu-24.04"],
     ("does not support ubuntu-24.04",)),
    ("unknown profile", GOOD, ["render", "mine", "--mirrors", "nope"], ("unknown mirror profile 'nope'",)),
    ("missing template file", GOOD + "  - file: {path: /etc/x, template: nothere.j2}\n", ["render", "mine"],
     ("recipe.yaml:12", "nothere.j2")),
    ("undefined in template file", GOOD + "  - file: {path: /etc/x, template: x.j2}\n", ["render", "mine"],
     ("templates/x.j2:2", "missing_thing")),
    ("file escaping the recipe folder", GOOD + "  - file: {path: /etc/x, source: ../../etc/passwd}\n",
     ["render", "mine"], ("recipe.yaml:12", "not found in the recipe folder")),
    ("pattern mismatch", None, ["render", "k8s", "--set", "kubernetes_version=latest"], ("does not match",)),
    ("choice mismatch", None, ["render", "k8s", "--set", "containerd_config_version=4"], ("is not one of 2, 3",)),
]


@pytest.mark.parametrize("name,text,args,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(name: str, text: str | None, args: list[str], needles: tuple[str, ...],
                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix: list[str] = []
    if text is not None:
        root = recipe_dir(tmp_path, text, templates={"x.j2": "line one\n{{ missing_thing }}\n"})
        prefix = ["--recipes-dir", str(root)]
    code, err = run(capsys, *prefix, *args)
    assert_one_error(code, err, *needles)


def test_bad_profile_file_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.yaml").write_text("description: x\nregistries:\n  docker.io: [ftp://nope]\n")
    code, err = run(capsys, "--recipes-dir", str(tmp_path), "render", "base", "--mirrors", "mine")
    assert_one_error(code, err, "mine.yaml:3", "must start with http")


def test_config_file_with_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "snapbuild.yaml"
    config.write_text("mirrors: upstream\nflavour: m1.large\n")
    code, err = run(capsys, "--config", str(config), "render", "base")
    assert_one_error(code, err, "snapbuild.yaml:2", "unknown key 'flavour'")


def test_missing_config_file_and_recipes_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "--config", str(tmp_path / "nope.yaml"), "render", "base")
    assert_one_error(code, err, "nope.yaml not found")
    code, err = run(capsys, "--recipes-dir", str(tmp_path / "nodir"), "render", "base")
    assert_one_error(code, err, "is not a directory")


def test_usage_error_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "render")
    assert code == 2 and "Missing argument" in err


def test_config_variables_apply_and_set_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "snapbuild.yaml"
    config.write_text("mirrors: upstream\nvariables:\n  kubernetes_version: 1.30.2\n")
    main(["--config", str(config), "plan", "k8s"])
    assert "kubeadm=1.30.2-1.1" in capsys.readouterr().out
    main(["--config", str(config), "plan", "k8s", "--set", "kubernetes_version=1.31.1"])
    assert "kubeadm=1.31.1-1.1" in capsys.readouterr().out


def test_build_refuses_blocked_registry_before_contacting_a_cloud(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_CLOUD", "no-such-cloud")   # would fail differently if it were contacted
    code, err = run(capsys, "k8s", "--flavor", "m1.large")
    assert_one_error(code, err, "blocked hosts without a mirror", "registry.k8s.io", "--allow-blocked")


def test_build_without_any_cloud_configured(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    for name in ("OS_CLOUD", "OS_AUTH_URL", "OS_CLIENT_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, "build", "base", "--flavor", "m1.small")
    assert code == 2
    assert "snapbuild: error: no cloud to build on" in err and "--os-cloud" in err
