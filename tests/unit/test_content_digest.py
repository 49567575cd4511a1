"""The content digest: a fixed input gives a fixed digest, every input that changes the image changes it, and
nothing else does (profile comments and layout, editor junk, where the recipe lives, file times)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snapbuild import digest
from snapbuild.cli import main
from snapbuild.digest import ContentInputs, content_digest, label_checksum, profile_content, tree_digest
from snapbuild.openstack.properties import provenance
from snapbuild.openstack.upload import provenance_from
from snapbuild.plan import Plan, plan_from_names, shipped_recipes_dir
from snapbuild.profiles import load_profile
from snapbuild.recipes import Library

RECIPE = """\
description: digest test recipe
distros: [debian-12, ubuntu-24.04]
variables:
  greeting:
    default: hello
variants:
  full:
    description: everything
  slim:
    description: less
image:
  name: "digest test on {{ distro.pretty }}"
  category: test
steps:
  - file:
      path: /etc/greeting
      template: greeting.j2
"""
TEMPLATE = "{{ greeting }} from {{ distro.name }}\n"
PROFILE = """\
# a comment that does not count
description: digest test profile
apt:
  debian:
    archive: http://127.0.0.1:9/debian
registries:
  docker.io: [http://127.0.0.1:9/docker]
blocked: [quay.io]
"""
# The same profile, reordered, reindented, recommented and in flow style: the same content.
PROFILE_SAME = """\
blocked:
    - quay.io     # still blocked
registries: {docker.io: ["http://127.0.0.1:9/docker"]}
apt: {debian: {archive: "http://127.0.0.1:9/debian"}}

description: "digest test profile"
"""

# Hard-coded on purpose: the digest of this fixed input must be the same on every machine, in every run, and in
# every snapbuild release until BUILD_FORMAT or the digest's definition changes (then update these, knowingly).
FIXED_TREE = "b9ab3b099e137bf14dd01337742da10a2293ca438b8df908b1f4259ace004105"
FIXED_DIGEST = "4bb84bb4e520c97b6f5b5ae53c27a709ad40b720a7f9f441e5fbbbb2155d74d8"


def make_recipe(root: Path, name: str = "mine", recipe: str = RECIPE, template: str = TEMPLATE) -> Path:
    folder = root / name
    (folder / "templates").mkdir(parents=True)
    (folder / "recipe.yaml").write_text(recipe)
    (folder / "templates" / "greeting.j2").write_text(template)
    return folder


def make_profile(root: Path, text: str = PROFILE, name: str = "mirrors") -> Path:
    path = root / f"{name}.yaml"
    path.write_text(text)
    return path


def fixed_inputs(root: Path, **changes: Any) -> ContentInputs:
    folder = make_recipe(root) if not (root / "mine").exists() else root / "mine"
    profile = make_profile(root) if not (root / "mirrors.yaml").exists() else root / "mirrors.yaml"
    values: dict[str, Any] = {
        "recipe_files": tree_digest(folder),
        "variables": {"greeting": "hello", "count": 3, "enabled": True, "tags": ["a", "b"]},
        "distro": {"name": "debian-12", "codename": "bookworm", "suites": ["bookworm", "bookworm-updates"]},
        "profile": profile_content(load_profile(profile)),
        "variant": "slim",
        "base_checksum": "sha256:" + "ab" * 32,
        "snapbuild_files": "cd" * 32,
        "build_format": 1,
    }
    values.update(changes)
    return ContentInputs(**values)


def test_a_fixed_input_gives_a_fixed_digest(tmp_path: Path) -> None:
    inputs = fixed_inputs(tmp_path)
    assert inputs.recipe_files == FIXED_TREE
    result = content_digest(inputs)
    assert result.value == FIXED_DIGEST
    assert content_digest(fixed_inputs(tmp_path)).value == FIXED_DIGEST     # and again: nothing random
    assert result.base_checksum == "sha256:" + "ab" * 32
    assert sorted(result.parts) == ["base", "distro", "profile", "recipe", "snapbuild", "variables", "variant"]


def test_the_recipe_digest_ignores_location_times_and_editor_junk(tmp_path: Path) -> None:
    folder = make_recipe(tmp_path / "a")
    before = tree_digest(folder)
    elsewhere = tmp_path / "somewhere" / "else" / "mine"
    shutil.copytree(folder, elsewhere)
    os.utime(elsewhere / "recipe.yaml", (1, 1))
    (elsewhere / "recipe.yaml~").write_text("backup")
    (elsewhere / ".recipe.yaml.swp").write_bytes(b"\0swap")
    (elsewhere / "templates" / "#greeting.j2#").write_text("autosave")
    (elsewhere / "__pycache__").mkdir()
    (elsewhere / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (elsewhere / ".git").mkdir()
    (elsewhere / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert tree_digest(elsewhere) == before
    (elsewhere / "templates" / "extra.txt").write_text("")          # a new (even empty) file counts
    assert tree_digest(elsewhere) != before


def test_a_symlinked_templates_folder_counts_as_if_it_were_copied(tmp_path: Path) -> None:
    copied = make_recipe(tmp_path / "a")
    linked = make_recipe(tmp_path / "b")
    shared = tmp_path / "shared-templates"
    (linked / "templates").rename(shared)
    (linked / "templates").symlink_to(shared, target_is_directory=True)
    assert tree_digest(linked) == tree_digest(copied)
    (shared / "loop").symlink_to(shared, target_is_directory=True)       # a loop ends (and adds no file)
    assert tree_digest(linked) == tree_digest(copied)
    _flip_last_byte(shared / "greeting.j2")
    assert tree_digest(linked) != tree_digest(copied)


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_every_input_changes_the_digest(tmp_path: Path) -> None:
    base = content_digest(fixed_inputs(tmp_path)).value
    changed = {
        "variable": fixed_inputs(tmp_path, variables={"greeting": "hellO", "count": 3, "enabled": True,
                                                      "tags": ["a", "b"]}),
        "variable type": fixed_inputs(tmp_path, variables={"greeting": "hello", "count": "3", "enabled": True,
                                                           "tags": ["a", "b"]}),
        "list order": fixed_inputs(tmp_path, variables={"greeting": "hello", "count": 3, "enabled": True,
                                                        "tags": ["b", "a"]}),
        "distro": fixed_inputs(tmp_path, distro={"name": "debian-12", "codename": "bookworm",
                                                 "suites": ["bookworm"]}),
        "variant": fixed_inputs(tmp_path, variant="full"),
        "no variant": fixed_inputs(tmp_path, variant=None),
        "base": fixed_inputs(tmp_path, base_checksum="sha256:" + "ab" * 31 + "ac"),
        "no base": fixed_inputs(tmp_path, base_checksum=None),
        "build format": fixed_inputs(tmp_path, build_format=2),
        "snapbuild files": fixed_inputs(tmp_path, snapbuild_files="cd" * 31 + "ce"),
    }
    digests = {name: content_digest(inputs).value for name, inputs in changed.items()}
    for name, value in digests.items():
        assert value != base, name
    assert len(set(digests.values())) == len(digests)     # and no two changes collide


@pytest.mark.parametrize("change", ["recipe byte", "template byte", "new file"])
def test_a_recipe_file_change_changes_the_digest(tmp_path: Path, change: str) -> None:
    base = content_digest(fixed_inputs(tmp_path)).value
    folder = tmp_path / "mine"
    if change == "recipe byte":
        _flip_last_byte(folder / "recipe.yaml")
    elif change == "template byte":
        _flip_last_byte(folder / "templates" / "greeting.j2")
    else:
        (folder / "files").mkdir()
        (folder / "files" / "unused").write_text("x")
    assert content_digest(fixed_inputs(tmp_path, recipe_files=tree_digest(folder))).value != base


def test_a_profile_value_counts_but_its_comments_and_layout_do_not(tmp_path: Path) -> None:
    base = content_digest(fixed_inputs(tmp_path)).value
    same_dir = tmp_path / "same"
    same_dir.mkdir()
    same = load_profile(make_profile(same_dir, PROFILE_SAME))      # same name (mirrors), same content
    assert content_digest(fixed_inputs(tmp_path, profile=profile_content(same))).value == base
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    for edit in (PROFILE.replace("127.0.0.1:9/debian", "127.0.0.1:9/debian2"),
                 PROFILE.replace("[quay.io]", "[quay.io, ghcr.io]"),
                 PROFILE.replace("digest test profile", "another description")):
        changed = load_profile(make_profile(other_dir, edit))
        assert content_digest(fixed_inputs(tmp_path, profile=profile_content(changed))).value != base, edit
    renamed = load_profile(make_profile(other_dir, PROFILE, name="renamed"))   # the name is written into the image
    assert content_digest(fixed_inputs(tmp_path, profile=profile_content(renamed))).value != base


def test_checksums_are_labelled_by_algorithm() -> None:
    assert label_checksum("AB" * 32) == "sha256:" + "ab" * 32
    assert label_checksum("ab" * 16) == "md5:" + "ab" * 16
    assert label_checksum("ab" * 64) == "sha512:" + "ab" * 64
    assert label_checksum("sha256:" + "ab" * 32) == "sha256:" + "ab" * 32
    assert label_checksum(None) is None and label_checksum("") is None


def test_a_base_file_checksum_is_its_sha256(tmp_path: Path) -> None:
    path = tmp_path / "base.img"
    path.write_bytes(b"base image")
    assert digest.file_checksum(path) == "sha256:ac25ae413a4f5656838e1887e58917fa05d6a1964562bfa24f71b24286cb83d7"


# ---- through the plan: what render, plan and every builder use ----------------------------------------------

def _plan(root: Path, *, sets: tuple[str, ...] = (), distro: str = "debian-12", variant: str | None = None,
          profile: Path | None = None) -> Plan:
    return plan_from_names(library=Library([root, shipped_recipes_dir()]), recipe_name="mine", distro_name=distro,
                           profile_name=str(profile or root / "mirrors.yaml"), config_variables={},
                           set_values=dict(s.split("=", 1) for s in sets), variant=variant)


def test_the_plan_digest_follows_each_input(tmp_path: Path) -> None:
    make_recipe(tmp_path)
    make_profile(tmp_path)
    base = _plan(tmp_path).content_digest().value
    assert _plan(tmp_path).content_digest().value == base
    assert base == _plan(tmp_path, variant="full").content_digest().value        # full is the default
    others: dict[str, Callable[[], Plan]] = {
        "variable": lambda: _plan(tmp_path, sets=("greeting=hi",)),
        "distro": lambda: _plan(tmp_path, distro="ubuntu-24.04"),
        "variant": lambda: _plan(tmp_path, variant="slim"),
    }
    for name, make in others.items():
        assert make().content_digest().value != base, name
    with_base = _plan(tmp_path).content_digest("ab" * 32)
    assert with_base.value != base and with_base.base_checksum == "sha256:" + "ab" * 32
    assert _plan(tmp_path).content_digest("sha256:" + "ab" * 32).value == with_base.value
    _flip_last_byte(tmp_path / "mine" / "templates" / "greeting.j2")
    assert _plan(tmp_path).content_digest().value != base
    (tmp_path / "mirrors.yaml").write_text(PROFILE.replace("[quay.io]", "[gcr.io]"))
    assert _plan(tmp_path).content_digest().value != base


def test_snapbuilds_own_templates_and_build_format_count(tmp_path: Path) -> None:
    make_recipe(tmp_path)
    make_profile(tmp_path)
    plan = _plan(tmp_path)
    assert plan.content.snapbuild_files == digest.snapbuild_files_digest()
    assert plan.content.build_format == digest.BUILD_FORMAT


def test_render_and_plan_show_the_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_recipe(tmp_path)
    profile = make_profile(tmp_path)
    expected = _plan(tmp_path, variant="slim").content_digest()
    common = ["--recipes-dir", str(tmp_path)]
    main([*common, "plan", "mine", "--distro", "debian-12", "--mirrors", str(profile), "--variant", "slim",
          "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["content_digest"] == expected.as_dict()
    assert summary["content_digest"]["base_checksum"] is None and summary["variant"] == "slim"
    main([*common, "plan", "mine", "--distro", "debian-12", "--mirrors", str(profile), "--variant", "slim"])
    text = capsys.readouterr().out
    assert f"# content digest: {expected.value}" in text and "# variant: slim" in text
    main([*common, "render", "mine", "--distro", "debian-12", "--mirrors", str(profile), "--variant", "slim"])
    assert f"# content digest: {expected.value}" in capsys.readouterr().out
    out = tmp_path / "rendered"
    main([*common, "render", "mine", "--distro", "debian-12", "--mirrors", str(profile), "--variant", "slim", "-o",
          str(out)])
    capsys.readouterr()
    assert json.loads((out / "plan.json").read_text())["content_digest"]["value"] == expected.value


def test_provenance_records_digest_and_variant() -> None:
    props = provenance(recipe="k8s", recipe_digest="r", base_image_id="b", base_image_name="n", build_id="x",
                       build_date="d", components={}, content_digest="c" * 64, variant="slim")
    assert props["snapbuild_content_digest"] == "c" * 64 and props["snapbuild_variant"] == "slim"
    bare = provenance(recipe="k8s", recipe_digest="r", base_image_id="b", base_image_name="n", build_id="x",
                      build_date="d", components={})
    assert "snapbuild_content_digest" not in bare and "snapbuild_variant" not in bare


def test_an_uploaded_builds_manifest_gives_its_digest_and_variant() -> None:
    manifest = {"build_id": "b1", "builder": "local", "recipe": {"name": "k8s", "variant": "slim"},
                "content_digest": {"value": "c" * 64}, "output": {"sha256": "f" * 64}}
    props = provenance_from(manifest, sha256="f" * 64, upload_id="u", recipe="k8s")
    assert props["snapbuild_content_digest"] == "c" * 64 and props["snapbuild_variant"] == "slim"
    # A manifest of another file says nothing about this one.
    other = provenance_from(manifest, sha256="e" * 64, upload_id="u", recipe="k8s")
    assert "snapbuild_content_digest" not in other


def test_the_shipped_recipes_have_stable_plan_digests() -> None:
    library = Library([shipped_recipes_dir()])
    for name in ("base", "docker-ce", "k8s"):
        first = plan_from_names(library=library, recipe_name=name, distro_name=None, profile_name="upstream",
                                config_variables={}, set_values={})
        again = plan_from_names(library=library, recipe_name=name, distro_name=None, profile_name="upstream",
                                config_variables={}, set_values={})
        assert first.content_digest().value == again.content_digest().value
        assert len(first.content_digest().value) == 64

