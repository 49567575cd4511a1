"""The wheel carries cloudinit/, recipes/ and the editors' JSON Schemas: installed in a fresh venv, run from
elsewhere, it works."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("snapbuild-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "snapbuild/_data/recipes/k8s/recipe.yaml" in names
    assert "snapbuild/_data/cloudinit/builder-userdata.yaml.j2" in names
    assert {f"snapbuild/schemas/{k}.schema.json" for k in ("recipe", "profile", "config")} <= set(names)
    assert not any(n.startswith("cloudinit/") for n in names), "cloudinit must not be a top-level package"
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", str(wheel)], check=True, capture_output=True)
    return venv


def snapbuild(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin/snapbuild"), *args], cwd=cwd, capture_output=True, text=True,
                          check=False, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_recipes_listed_from_an_unrelated_directory(installed: Path, tmp_path: Path) -> None:
    done = snapbuild(installed, tmp_path, "recipes")
    assert done.returncode == 0, done.stderr
    for name in ("base", "docker-ce", "k8s", "cloudinative", "upstream"):
        assert name in done.stdout


@pytest.mark.parametrize("recipe", ["base", "docker-ce", "k8s"])
def test_every_recipe_renders_for_both_distros_and_profiles(installed: Path, tmp_path: Path, recipe: str) -> None:
    for distro in ("ubuntu-24.04", "debian-12"):
        for profile in ("cloudinative", "upstream"):
            out = tmp_path / f"{distro}-{profile}"
            done = snapbuild(installed, tmp_path, "render", recipe, "--distro", distro, "--mirrors", profile,
                             "-o", str(out))
            assert done.returncode == 0, done.stderr
            assert (out / "user-data").read_text().startswith("#cloud-config")
            assert (out / "files/etc/cloud/cloud.cfg.d/99-snapbuild-growpart.cfg").is_file()
    site = next((installed / "lib").glob("python3*/site-packages"))
    assert not (site / "cloudinit").exists()
