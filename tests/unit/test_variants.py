"""Recipe variants and `when:` conditions: what a variant changes (name, properties, variables, steps, checks,
digest), strict validation with file and line, `--variant` on every command that takes a recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapbuild.actions import InstallPackages, PrePull, RunCommand, WriteFile
from snapbuild.cli import main
from snapbuild.errors import RecipeError, UserError
from snapbuild.plan import Plan, plan_from_names, shipped_recipes_dir
from snapbuild.recipes import Library, load_recipe

RECIPE = """\
description: variants test
distros: [debian-12]
variables:
  mode:
    default: normal
    choices: [normal, fast]
  extra:
    type: boolean
    default: false
variants:
  full:
    description: all of it
  slim:
    description: less of it
    variables: {mode: fast}
image:
  name: "vt {{ mode }}"
  category: test
steps:
  - packages: [curl]
  - when: {variant: full}
    packages: [big-package]
  - when: {variant: [slim]}
    command: [echo, slim]
  - when: {var: extra, equals: true}
    command: [echo, extra]
  - when: {variant: slim, var: mode, equals: normal}
    command: [echo, slim-normal]
  - file: {path: /etc/variant, content: "{{ variant }}"}
checks:
  - ["true"]
  - argv: [test, -e, /big]
    when: {variant: full}
"""

PLAIN = """\
description: no variants
distros: [debian-12]
image:
  name: plain
  category: test
steps:
  - packages: [curl]
"""


def write_recipe(root: Path, text: str, name: str = "vt") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(text)
    return folder


def plan_of(root: Path, variant: str | None = None, sets: dict[str, str] | None = None, name: str = "vt",
            distro: str | None = "debian-12") -> Plan:
    return plan_from_names(library=Library([root, shipped_recipes_dir()]), recipe_name=name, distro_name=distro,
                           profile_name="upstream", config_variables={}, set_values=sets or {}, variant=variant)


def commands(plan: Plan) -> list[tuple[str, ...]]:
    return [a.argv for a in plan.actions if isinstance(a, RunCommand)]


def packages(plan: Plan) -> list[str]:
    return [p for a in plan.actions if isinstance(a, InstallPackages) for p in a.packages]


def written(plan: Plan, path: str) -> bytes:
    return next(a.content for a in plan.actions if isinstance(a, WriteFile) and a.path == path)


def test_the_first_variant_is_the_default(tmp_path: Path) -> None:
    write_recipe(tmp_path, RECIPE)
    plan = plan_of(tmp_path)
    assert plan.variant == "full"
    assert plan.image.name == "vt normal"                        # the default variant keeps the recipe's name
    assert plan.image.properties["snapbuild_variant"] == "full"
    assert "big-package" in packages(plan) and commands(plan) == []
    assert plan.verify_checks == (("true",), ("test", "-e", "/big"))
    assert written(plan, "/etc/variant") == b"full"
    assert plan.content_digest().value == plan_of(tmp_path, "full").content_digest().value


def test_a_variant_changes_name_properties_variables_steps_checks_and_digest(tmp_path: Path) -> None:
    write_recipe(tmp_path, RECIPE)
    full, slim = plan_of(tmp_path, "full"), plan_of(tmp_path, "slim")
    assert slim.variant == "slim"
    assert slim.variables["mode"] == "fast"                       # the variant's own default
    assert slim.image.name == "vt fast (slim)"
    assert slim.image.properties["snapbuild_variant"] == "slim"
    assert "big-package" not in packages(slim) and "curl" in packages(slim)
    assert commands(slim) == [("echo", "slim")]
    assert slim.verify_checks == (("true",),)
    assert written(slim, "/etc/variant") == b"slim"
    assert slim.content_digest().value != full.content_digest().value


def test_set_wins_over_the_variant_and_conditions_see_it(tmp_path: Path) -> None:
    write_recipe(tmp_path, RECIPE)
    slim = plan_of(tmp_path, "slim", {"mode": "normal", "extra": "yes"})
    assert slim.variables["mode"] == "normal"
    assert commands(slim) == [("echo", "slim"), ("echo", "extra"), ("echo", "slim-normal")]
    assert commands(plan_of(tmp_path, "full", {"mode": "normal"})) == []     # slim-normal needs both


def test_a_recipe_without_variants_has_none(tmp_path: Path) -> None:
    write_recipe(tmp_path, PLAIN, "plain")
    plan = plan_of(tmp_path, name="plain")
    assert plan.variant is None and plan.image.name == "plain"
    assert "snapbuild_variant" not in plan.image.properties
    with pytest.raises(UserError, match="has no variants"):
        plan_of(tmp_path, "slim", name="plain")


def test_unknown_variant_names_the_ones_there_are(tmp_path: Path) -> None:
    write_recipe(tmp_path, RECIPE)
    with pytest.raises(UserError) as caught:
        plan_of(tmp_path, "slimm")
    assert caught.value.exit_code == 2
    assert "no variant 'slimm'" in caught.value.message
    assert caught.value.hint is not None
    assert "did you mean 'slim'?" in caught.value.hint and "full (default), slim" in caught.value.hint


# ---- --variant everywhere a recipe is taken -------------------------------------------------------------------

def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["render", "k8s"], ["plan", "k8s"], ["build", "k8s", "--flavor", "m1.large"], ["k8s", "--flavor", "m1.large"],
    ["local", "k8s", "--base", "{tmp}/base.img", "-o", "{tmp}/out.qcow2"],
    ["chroot", "k8s", "--base", "{tmp}/base.img", "-o", "{tmp}/out.qcow2"],
    ["upload", "{tmp}/base.img", "--recipe", "k8s"], ["verify", "{tmp}/base.img", "--recipe", "k8s"],
], ids=lambda c: c[0])
def test_every_recipe_command_takes_variant(command: list[str], tmp_path: Path, isolated_state: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "base.img").write_bytes(b"not an image")
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    code, err = _run(capsys, *args, "--mirrors", "upstream", "--variant", "slimm")
    assert code == 2, err
    assert "snapbuild: error: recipe 'k8s' has no variant 'slimm'" in err
    assert "full (default), slim" in err and "Traceback" not in err
    assert not (tmp_path / "out.qcow2").exists()


def test_render_and_plan_of_a_variant(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plan", "k8s", "--mirrors", "upstream", "--variant", "slim"])
    out = capsys.readouterr().out
    assert "# variant: slim" in out and "Kubernetes (slim)" in out and "pre-pull" not in out
    main(["render", "k8s", "--mirrors", "upstream", "--variant", "slim"])
    out = capsys.readouterr().out
    assert '"snapbuild_variant": "slim"' in out


# ---- the shipped k8s recipe ------------------------------------------------------------------------------------

def test_k8s_slim_has_no_prepull_and_full_has_it() -> None:
    library = Library([shipped_recipes_dir()])
    recipe = library.load("k8s")
    assert list(recipe.variants) == ["full", "slim"] and recipe.default_variant == "full"

    def k8s(variant: str | None) -> Plan:
        return plan_from_names(library=library, recipe_name="k8s", distro_name=None, profile_name="upstream",
                               config_variables={}, set_values={}, variant=variant)

    full, default, slim = k8s("full"), k8s(None), k8s("slim")
    assert len(full.prepulls) == 1 and len(full.prepulls[0].expect) == 7      # the checked kubeadm list, intact
    assert default.prepulls == full.prepulls and default.image.name == full.image.name
    assert slim.prepulls == () and not any(isinstance(a, PrePull) for a in slim.actions)
    assert any("kube-apiserver" in " ".join(c) for c in full.verify_checks)
    assert not any("kube-apiserver" in " ".join(c) for c in slim.verify_checks)
    assert slim.image.name == full.image.name + " (slim)"
    assert (full.image.properties["snapbuild_variant"], slim.image.properties["snapbuild_variant"]) == \
        ("full", "slim")
    # Everything else is the same build: the same packages, the same containerd mirrors.
    assert packages(slim) == packages(full)
    assert [a for a in slim.actions if isinstance(a, WriteFile)] == [a for a in full.actions
                                                                     if isinstance(a, WriteFile)]
    assert slim.content_digest().value != full.content_digest().value


# ---- strict validation: file, line, "did you mean" --------------------------------------------------------------

BAD: list[tuple[str, str, str, int, str]] = [
    ("unknown variant in when", "  - when: {variant: full}\n", "  - when: {variant: fulll}\n", 21,
     "unknown variant 'fulll'|did you mean 'full'"),
    ("unknown key in when", "  - when: {variant: full}\n", "  - when: {varaint: full}\n", 21,
     "unknown key 'varaint'|did you mean 'variant'"),
    ("var without equals", "  - when: {var: extra, equals: true}\n", "  - when: {var: extra}\n", 25,
     "var and equals go together"),
    ("unknown var", "  - when: {var: extra, equals: true}\n", "  - when: {var: extar, equals: true}\n", 25,
     "no variable 'extar'|did you mean 'extra'"),
    ("equals of the wrong type", "  - when: {var: extra, equals: true}\n", "  - when: {var: extra, equals: maybe}\n",
     25, "equals: expected true or false"),
    ("equals not a choice", "  - when: {variant: slim, var: mode, equals: normal}\n",
     "  - when: {variant: slim, var: mode, equals: slow}\n", 27, "is not one of normal, fast"),
    ("empty when", "  - when: {variant: full}\n", "  - when: {}\n", 21, "when is empty"),
    ("when not a mapping", "  - when: {variant: full}\n", "  - when: full\n", 21, "when must be a mapping"),
    ("empty variant list", "  - when: {variant: [slim]}\n", "  - when: {variant: []}\n", 23, "lists no variant"),
    ("unknown variant in a check", "    when: {variant: full}\n", "    when: {variant: ful}\n", 33,
     "checks[1].when.variant: unknown variant 'ful'"),
    ("variant overrides an unknown variable", "variables: {mode: fast}", "variables: {moed: fast}", 15,
     "no variable 'moed'|did you mean 'mode'"),
    ("variant override of the wrong value", "variables: {mode: fast}", "variables: {mode: slow}", 15,
     "variants.slim.variables.mode: 'slow' is not one of normal, fast"),
    ("variant without description", "    description: less of it\n", "", 14, "missing required key 'description'"),
    ("bad variant name", "  slim:\n", "  Slim!:\n", 13, "variant name 'Slim!'"),
    ("variable named variant", "  extra:\n", "  variant:\n", 7, "'variant' is reserved"),
    ("unknown key in a variant", "    variables: {mode: fast}\n", "    varibles: {mode: fast}\n", 15,
     "unknown key 'varibles'|did you mean 'variables'"),
]


@pytest.mark.parametrize("name,old,new,line,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_variants_and_conditions_name_file_and_line(name: str, old: str, new: str, line: int, needles: str,
                                                        tmp_path: Path) -> None:
    assert old in RECIPE, old
    folder = write_recipe(tmp_path, RECIPE.replace(old, new, 1))
    with pytest.raises(RecipeError) as caught:
        load_recipe(folder)
    error = caught.value
    assert (error.path, error.line) == (str(folder / "recipe.yaml"), line), str(error)
    for needle in needles.split("|"):
        assert needle in str(error), str(error)


def test_when_variant_needs_declared_variants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_recipe(tmp_path, PLAIN + "  - when: {variant: slim}\n    packages: [vim]\n", "plain")
    code, err = _run(capsys, "--recipes-dir", str(tmp_path), "plan", "plain", "--mirrors", "upstream")
    assert code == 2
    assert "plain/recipe.yaml:8: steps[1].when.variant: the recipe declares no variants" in err


def test_recipes_lists_each_recipes_variants_with_the_default_first(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from snapbuild.cli import main

    main(["recipes", "--json"])
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)["recipes"]}
    assert list(listed["k8s"]["variants"]) == ["full", "slim"]
    assert listed["docker-ce"]["variants"] == {}
    main(["recipes"])
    assert "--variant full (default)" in capsys.readouterr().out
