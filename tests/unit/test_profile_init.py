"""Mirror profiles a user starts from: every shipped one loads, the air-gap example covers every shipped recipe
with placeholder hosts only, `snapbuild profile init` writes one that loads (and keeps an existing file), and
a refused build says how to write one instead of pointing into the installed package."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from snapbuild.cli import main
from snapbuild.paths import data_dir
from snapbuild.plan import plan_from_names
from snapbuild.profiles import load_profile
from snapbuild.recipes import Library

SHIPPED = sorted((data_dir("recipes") / "profiles").glob("*.yaml"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem and profile.description


def test_the_airgap_example_uses_only_placeholder_hosts_and_mirrors_every_shipped_recipe() -> None:
    path = data_dir("recipes") / "profiles" / "airgap-example.yaml"
    profile = load_profile(path)
    urls = [*profile.apt_repositories.values(), *(u for m in profile.registries.values() for u in m),
            *(u for a in profile.apt.values() for u in (a.archive, a.security) if u)]
    assert urls and all((urlsplit(u).hostname or "").endswith(".example.internal") for u in urls), urls
    assert set(profile.registries) == {"registry.k8s.io", "docker.io", "quay.io", "ghcr.io", "gcr.io"}
    assert set(profile.apt_repositories) == {"https://download.docker.com", "https://pkgs.k8s.io"}
    assert {"ubuntu", "debian"} <= set(profile.apt)
    library = Library([data_dir("recipes")])
    for recipe in library.recipe_names():
        for distro in library.load(recipe).distros:
            plan = plan_from_names(library=library, recipe_name=recipe, distro_name=distro,
                                   profile_name="airgap-example", config_variables={}, set_values={})
            assert plan.blocked_without_mirror == (), (recipe, distro)
    lines = path.read_text().splitlines()
    keys = [n for n, line in enumerate(lines) if re.match(r"[a-z_]+:", line)]
    assert len(keys) >= 6
    for n in keys:   # every top-level key comes with a comment saying what it is for
        assert lines[n - 1].startswith("#") or "#" in lines[n], lines[n]


def test_profile_init_writes_a_profile_that_loads_and_keeps_an_existing_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "my-mirrors.yaml"
    code, out, err = run(capsys, "profile", "init", "-o", str(target))
    assert code == 0, err
    assert out.strip() == str(target)
    mine = load_profile(target)
    assert mine.name == "my-mirrors"
    assert mine.registries == load_profile(data_dir("recipes") / "profiles" / "airgap-example.yaml").registries
    assert "# Started from snapbuild's mirror profile 'airgap-example'" in target.read_text()

    target.write_text("description: edited by hand\n")
    code, out, err = run(capsys, "profile", "init", "--from", "cloudinative", "-o", str(target))
    assert code == 2
    assert f"snapbuild: error: {target} already exists" in err and "--force" in err
    assert target.read_text() == "description: edited by hand\n"

    code, out, err = run(capsys, "profile", "init", "--from", "cloudinative", "-o", str(target), "--force")
    assert code == 0, err
    assert load_profile(target).registries == {"docker.io": ("https://docker.cloudinative.com",)}


def test_profile_init_prints_to_stdout_and_refuses_an_unknown_source(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "profile", "init", "--from", "upstream")
    assert code == 0
    assert yaml.safe_load(out) == yaml.safe_load((data_dir("recipes") / "profiles" / "upstream.yaml").read_text())
    code, _, err = run(capsys, "profile", "init", "--from", "nope", "-o", str(tmp_path / "x.yaml"))
    assert code == 2 and "unknown mirror profile 'nope'" in err
    assert not (tmp_path / "x.yaml").exists()


def test_a_refused_build_says_how_to_write_a_profile_not_where_the_package_lives(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_CLOUD", "no-such-cloud")     # refused before any cloud is contacted
    code, _, err = run(capsys, "k8s", "--flavor", "m1.large")
    assert code == 2
    hint = next(line for line in err.splitlines() if line.startswith("snapbuild: hint:"))
    assert "snapbuild profile init -o my-mirrors.yaml" in hint and "--mirrors ./my-mirrors.yaml" in hint
    assert "--allow-blocked" in hint
    assert str(data_dir("recipes")) not in err


def test_a_refused_build_with_ones_own_profile_names_that_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_CLOUD", "no-such-cloud")
    mine = tmp_path / "mine.yaml"
    mine.write_text("description: mine\nblocked: [registry.k8s.io]\n")
    code, _, err = run(capsys, "k8s", "--flavor", "m1.large", "--mirrors", str(mine))
    assert code == 2
    assert f"change your profile {mine}" in err
