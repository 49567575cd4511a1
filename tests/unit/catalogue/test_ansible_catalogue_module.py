"""The snapbuild.cloud.catalogue module (ansible_collections/snapbuild/cloud) against snapbuild's real `apply`: the
argument list it builds, parsed by snapbuild's own click command, and `apply -f json`'s real answers (the dry run's
plan, a run's rows, a failed run, bad input) as snapbuild prints them against the two fake regions of the
catalogue's unit tests, read back. Then the module itself, with its `snapbuild` run in-process: check mode and
--diff, the fact, idempotence, the inline catalogue's temporary file. Builds are the catalogue tests' FakeBuilder
(what a snapshot build leaves in Glance); `tox -e ansible-sanity` checks the module's documentation and
tests/integration/test_ansible_collection.py runs it in a playbook against a cloud."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from catalogues import LIBRARY, TWO_REGIONS, FakeBuilder, seed_bases, write
from fakeregions import Regions

import snapbuild.catalogue.apply as applying
from ansible_collections.snapbuild.cloud.plugins.module_utils import snapbuild_catalogue as sca
from ansible_collections.snapbuild.cloud.plugins.module_utils import snapbuild_command as sc
from snapbuild import cli
from snapbuild.catalogue.load import load_catalogue

CLOUDS_YAML = ("clouds:\n  fake:\n    auth: {auth_url: 'http://127.0.0.1:35357/v3', username: u, password: p,"
               " project_name: demo, user_domain_name: Default, project_domain_name: Default}\n")
CHANGED = TWO_REGIONS.replace("    properties: {os_type: linux}\n",
                              "    properties: {os_type: linux}\n    variables: {docker_version: 29.2.2}\n")
KEYS = [f"{e}@{t}" for e in ("docker-ce", "k8s-full", "k8s-slim") for t in ("one", "two")]


@dataclass(frozen=True)
class Ran:
    rc: int
    stdout: str
    stderr: str


def snapbuild(argv: list[str]) -> Ran:
    """`snapbuild ARGV` in this process, as the module runs it: exit code, stdout, stderr."""
    assert argv[0] == "snapbuild", argv
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(argv[1:])
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return Ran(rc, out.getvalue(), err.getvalue())


@pytest.fixture
def fake(regions: Regions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBuilder]:
    """The fake regions as clouds.yaml's `fake`, snapbuild's state in the test's directory, and apply's builds done
    by the FakeBuilder (the Runtime the CLI constructs gets it)."""
    seed_bases(regions)
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(CLOUDS_YAML)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))
    builder = FakeBuilder()
    monkeypatch.setattr(applying, "Runtime", functools.partial(applying.Runtime, builder=builder,
                                                               sleep=lambda s: None))
    yield builder


def answer(path: Path, *, dry_run: bool, only: list[str] | None = None) -> dict[str, Any]:
    ran = snapbuild(sca.apply_argv("snapbuild", {"only": only}, str(path), dry_run))
    assert ran.rc == 0, ran.stderr
    return sc.parse_json_document(ran.stdout, "snapbuild apply")


# ---- the argument list ---------------------------------------------------------------------------------------

def test_the_argv_is_snapbuild_apply_with_globals_only_and_json_as_snapbuild_parses_it(tmp_path: Path) -> None:
    path = write(tmp_path)
    params = {"catalogue": str(path), "content": None, "only": ["docker-ce@one", "k8s-slim@two"],
              "config": "/site/snapbuild.yaml", "recipes_dirs": ["/site/recipes"], "executable": "snapbuild"}
    for dry_run in (True, False):
        argv = sca.apply_argv("snapbuild", params, str(path), dry_run)
        where = argv.index("apply")
        group = cli.cli.make_context("snapbuild", argv[1:where + 1])
        assert group.params["config_file"] == "/site/snapbuild.yaml"
        assert group.params["recipes_dir"] == ("/site/recipes",)
        command = cli.cli.get_command(group, "apply")
        assert command is not None
        options = command.make_context("apply", argv[where + 1:], parent=group).params
        assert options["catalogue"] == path and options["only"] == ("docker-ce@one", "k8s-slim@two")
        assert options["dry_run"] is dry_run and options["fmt"] == "json" and options["columns"] == ()
    bare = sca.apply_argv("/opt/sb/bin/snapbuild", {"only": None}, "c.yaml", False)
    assert bare == ["/opt/sb/bin/snapbuild", "apply", "c.yaml", "-f", "json"]


def test_an_inline_catalogue_is_the_same_catalogue_as_the_file(tmp_path: Path) -> None:
    content = yaml.safe_load(TWO_REGIONS)
    inline = write(tmp_path, sca.catalogue_text(content), name="inline.yaml")
    a = load_catalogue(write(tmp_path), library=LIBRARY, known_clouds=["fake"])
    b = load_catalogue(inline, library=LIBRARY, known_clouds=["fake"])

    def shape(catalogue: Any) -> Any:
        return ([(e.name, e.recipe, e.variant, e.mirrors, dict(e.properties), e.visibility) for e in catalogue.entries],
                [(t.name, t.cloud, t.region, t.role, dict(t.build)) for t in catalogue.targets], catalogue.policy)

    assert shape(a) == shape(b) and len(a.entries) == 3


# ---- apply's real answers, read back -------------------------------------------------------------------------

def test_a_first_dry_run_plans_every_build_and_copy_and_counts_as_a_change(fake: FakeBuilder, tmp_path: Path) -> None:
    document = answer(write(tmp_path), dry_run=True)
    assert sca.plan_changes(document) is True
    images = sca.images_of(document)
    assert list(images) == KEYS
    assert {key: (i["action"], i["image_id"]) for key, i in images.items()} == {
        key: ("build" if key.endswith("@one") else "copy", None) for key in KEYS}
    assert images["docker-ce@one"]["digest"] == images["docker-ce@two"]["digest"]
    assert images["docker-ce@one"]["detail"] == "no image yet (base ubuntu-24.04)"
    assert sca.summary_of(document) == {"build": 3, "copy": 3}
    diffs = sca.diff_of(document)
    assert [d["before_header"] for d in diffs] == KEYS
    first = diffs[0]
    assert first["before"] == "docker-ce@one\n"                          # no image there yet
    digest = images["docker-ce@one"]["digest"][:12]
    assert first["after"] == (f"docker-ce@one\n  new image: built from base ubuntu-24.04, digest {digest} "
                              "(no image yet (base ubuntu-24.04))\n")
    assert diffs[1]["after"].endswith(f"  new image: copy from target one, digest {digest} "
                                      "(streamed from one once built)\n")
    assert fake.built == []                                               # a dry run builds nothing


def test_a_run_reports_the_current_image_per_entry_and_target_and_the_next_changes_nothing(
        fake: FakeBuilder, regions: Regions, tmp_path: Path) -> None:
    path = write(tmp_path)
    document = answer(path, dry_run=False)
    assert sca.done_changes(document) is True
    assert sca.summary_of(document) == {"built": 3, "copied": 3}
    images = sca.images_of(document)
    for key, image in images.items():
        region = "RegionOne" if key.endswith("@one") else "RegionTwo"
        assert image["action"] == ("built" if region == "RegionOne" else "copied")
        held = regions.glances[region].images[image["image_id"]]
        assert held["snapbuild_content_digest"] == image["digest"]
        assert held["snapbuild_catalogue_entry"] == image["entry"]
    assert [d["before_header"] for d in sca.diff_of(document)] == KEYS
    assert sca.diff_of(document)[0]["after"] == (f"docker-ce@one\n  image {images['docker-ce@one']['image_id']} - "
                                                 f"built: {images['docker-ce@one']['detail']}\n")
    # again: the plan skips every pair, naming the image that is current, and so does the run
    again = answer(path, dry_run=True)
    assert sca.plan_changes(again) is False and sca.diff_of(again) == []
    assert {k: (i["action"], i["image_id"]) for k, i in sca.images_of(again).items()} == {
        k: ("skip", i["image_id"]) for k, i in images.items()}
    second = answer(path, dry_run=False)
    assert sca.done_changes(second) is False and sca.summary_of(second) == {"skipped": 6}
    assert {k: i["image_id"] for k, i in sca.images_of(second).items()} == {k: i["image_id"] for k, i in images.items()}


def test_a_changed_entry_plans_its_rebuild_copy_and_the_old_images_retirement_in_the_diff(
        fake: FakeBuilder, regions: Regions, tmp_path: Path) -> None:
    first = sca.images_of(answer(write(tmp_path), dry_run=False))
    old = first["docker-ce@one"]["image_id"]
    name = regions.glances["RegionOne"].images[old]["name"]
    path = write(tmp_path, CHANGED)
    plan = answer(path, dry_run=True)
    assert sca.plan_changes(plan) is True
    assert sca.summary_of(plan) == {"build": 1, "copy": 1, "skip": 4, "hide": 2}
    diffs = {d["before_header"]: d for d in sca.diff_of(plan)}
    assert list(diffs) == ["docker-ce@one", "docker-ce@two"]              # the k8s entries do not change
    assert diffs["docker-ce@one"]["before"] == f"docker-ce@one\n  image {old} {name}\n"
    after = diffs["docker-ce@one"]["after"].splitlines()
    assert after[1] == f"  image {old} {name} - hidden: older than the newest 1"
    assert after[2].startswith("  new image: built from base ubuntu-24.04, digest ")
    run = answer(path, dry_run=False)
    assert sca.done_changes(run) is True
    assert {k: i["action"] for k, i in sca.images_of(run).items() if k.startswith("docker-ce")} == {
        "docker-ce@one": "built", "docker-ce@two": "copied"}
    assert sca.summary_of(run) == {"built": 1, "copied": 1, "skipped": 4, "hidden": 2}
    lines = {d["before_header"]: d["after"].splitlines() for d in sca.diff_of(run)}
    assert lines["docker-ce@one"][1] == f"  image {old} {name} - hidden: older than the newest 1"
    assert lines["docker-ce@one"][2].endswith("- built: " + sca.images_of(run)["docker-ce@one"]["detail"])


def test_a_failed_build_names_each_failed_job_and_keeps_what_succeeded(
        fake: FakeBuilder, tmp_path: Path) -> None:
    fake.fail.add("k8s")
    ran = snapbuild(sca.apply_argv("snapbuild", {}, str(write(tmp_path)), False))
    assert ran.rc == 3
    document = sc.parse_json_document(ran.stdout, "snapbuild apply")      # stdout still has the run's answer
    assert sorted(sca.failures_of(document)) == [
        "k8s-full@one: k8s: provisioning failed", "k8s-full@two: not copied: k8s-full@one has no image",
        "k8s-slim@one: k8s: provisioning failed", "k8s-slim@two: not copied: k8s-slim@one has no image"]
    assert sca.done_changes(document) is True                             # docker-ce was built and copied
    images = sca.images_of(document)
    assert images["docker-ce@two"]["action"] == "copied" and images["docker-ce@two"]["image_id"]
    assert images["k8s-full@one"] == {**images["k8s-full@one"], "action": "failed", "image_id": None}


def test_bad_input_exits_2_with_nothing_on_stdout_and_the_message_on_stderr(fake: FakeBuilder, tmp_path: Path) -> None:
    ran = snapbuild(sca.apply_argv("snapbuild", {"only": ["docker-ce@tow"]}, str(write(tmp_path)), True))
    assert ran.rc == 2 and ran.stdout == ""
    message = sc.failure_message("apply --dry-run", ran.rc, ran.stderr, None)
    first, second = message.splitlines()[:2]
    assert first == "snapbuild apply --dry-run refused its input (exit 2, nothing was created)"
    assert "--only docker-ce@tow: no target 'tow' in the catalogue" in second


# ---- the module ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModuleResult:
    result: dict[str, Any]
    calls: list[list[str]]
    files: list[tuple[str, int, str]]       # the catalogue each call named: path, mode, text (read during the call)


def run_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: dict[str, Any], *, check: bool = False,
               diff: bool = False) -> ModuleResult:
    """The module's main() as Ansible runs it (its arguments, check and diff mode), with `snapbuild` run in this
    process; the JSON it exits with."""
    from ansible.module_utils import basic

    from ansible_collections.snapbuild.cloud.plugins.modules import catalogue as module

    calls: list[list[str]] = []
    files: list[tuple[str, int, str]] = []

    def run_command(self: Any, argv: list[str], **_: Any) -> tuple[int, str, str]:
        calls.append(list(argv))
        named = Path(argv[argv.index("apply") + 1])
        files.append((str(named), stat.S_IMODE(named.stat().st_mode), named.read_text()))
        ran = snapbuild(argv)
        return ran.rc, ran.stdout, ran.stderr

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, *a, **k: name)
    module_tmp = tmp_path / "module-tmp"
    module_tmp.mkdir(exist_ok=True)
    full = {**args, "_ansible_check_mode": check, "_ansible_diff": diff, "_ansible_tmpdir": str(module_tmp),
            "_ansible_remote_tmp": str(module_tmp), "_ansible_keep_remote_files": False}
    out = io.StringIO()
    with patched_args(monkeypatch, full), contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        module.main()
    return ModuleResult(json.loads(out.getvalue()), calls, files)


@contextlib.contextmanager
def patched_args(monkeypatch: pytest.MonkeyPatch, args: dict[str, Any]) -> Iterator[None]:
    try:
        # ansible-core 2.19 and later; earlier ones read the variable it patches
        from ansible.module_utils.testing import patch_module_args
    except ImportError:
        from ansible.module_utils import basic

        monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
        yield
        return
    with patch_module_args(args):
        yield


def test_the_module_in_check_mode_plans_shows_the_diff_and_sets_no_fact(
        fake: FakeBuilder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path)
    run = run_module(tmp_path, monkeypatch, {"catalogue": str(path), "only": ["docker-ce@one"]}, check=True,
                     diff=True)
    result = run.result
    assert run.calls == [["snapbuild", "apply", str(path), "--only", "docker-ce@one", "--dry-run", "-f", "json"]]
    assert result["changed"] is True and not result.get("failed"), result
    assert result["summary"] == {"build": 1} and result["images"]["docker-ce@one"]["action"] == "build"
    assert [d["before_header"] for d in result["diff"]] == ["docker-ce@one"]
    assert "ansible_facts" not in result and "done" not in result
    assert fake.built == []


def test_the_module_applies_sets_the_fact_and_a_second_run_is_unchanged(
        fake: FakeBuilder, regions: Regions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path)
    first = run_module(tmp_path, monkeypatch, {"catalogue": str(path)}).result
    assert first["changed"] is True and first["rc"] == 0 and "diff" not in first      # no --diff asked
    fact = first["ansible_facts"]["snapbuild_catalogue"]
    assert fact["images"] == first["images"] and fact["done"] == first["done"]
    assert regions.glances["RegionTwo"].images[fact["images"]["k8s-slim@two"]["image_id"]]["status"] == "active"
    second = run_module(tmp_path, monkeypatch, {"catalogue": str(path)}, diff=True).result
    assert second["changed"] is False and second["diff"] == []
    assert second["summary"] == {"skipped": 6}
    assert {k: i["image_id"] for k, i in second["images"].items()} == {
        k: i["image_id"] for k, i in fact["images"].items()}
    assert len(fake.built) == 3


def test_inline_content_is_a_0600_file_for_the_run_only(
        fake: FakeBuilder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = yaml.safe_load(TWO_REGIONS)
    run = run_module(tmp_path, monkeypatch, {"content": content}, check=True)
    ((named, mode, text),) = run.files
    assert mode == 0o600 and json.loads(text) == content
    assert not Path(named).exists() and not Path(named).parent.exists()   # removed after the run
    assert run.result["changed"] is True and len(run.result["images"]) == 6


def test_the_module_fails_with_snapbuild_s_message_on_bad_input_and_on_a_failed_job(
        fake: FakeBuilder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = yaml.safe_load(TWO_REGIONS)
    content["images"]["docker-ce"]["recipe"] = "docker-cee"
    bad = run_module(tmp_path, monkeypatch, {"content": content}, check=True).result
    assert bad["failed"] is True and bad["rc"] == 2
    head, *rest = bad["msg"].splitlines()
    assert head == "snapbuild apply --dry-run refused its input (exit 2, nothing was created)"
    assert any("docker-cee" in line for line in rest), bad["msg"]
    fake.fail.add("k8s")
    failed = run_module(tmp_path, monkeypatch, {"catalogue": str(write(tmp_path))}).result
    assert failed["failed"] is True and failed["rc"] == 3 and failed["changed"] is True
    assert failed["msg"].startswith("snapbuild apply: 4 of the catalogue's jobs failed (exit 3): ")
    assert "k8s-full@one: k8s: provisioning failed" in failed["failures"]
    assert failed["images"]["docker-ce@one"]["action"] == "built"
    assert "ansible_facts" not in failed


def test_the_module_s_options_are_documented_and_the_shared_ones_come_from_module_utils() -> None:
    """validate-modules checks documentation against the argument spec; this checks the shared options are
    module_utils' (one definition) and documented once, in the doc fragment both modules extend."""
    from ansible_collections.snapbuild.cloud.plugins.modules import catalogue as module

    fragment = (Path(sc.__file__).parents[1] / "doc_fragments" / "snapbuild.py").read_text()
    text = Path(module.__file__).read_text()
    for name in sc.COMMON_OPTIONS:
        assert module.ARGUMENT_SPEC[name] is sc.COMMON_OPTIONS[name]
        assert f"\n  {name}:\n" in fragment and f"\n  {name}:\n" not in text, name
    for name in ("catalogue", "content", "only"):
        assert name in module.ARGUMENT_SPEC and f"\n  {name}:\n" in text, name
    assert "  - snapbuild.cloud.snapbuild\n" in text


def test_the_readme_s_kubernetes_playbook_holds_a_catalogue_apply_accepts(tmp_path: Path) -> None:
    """The README's build-k8s.yaml passes its catalogue inline: once Ansible filled in the variables, it is one
    snapbuild's loader takes (recipes, variants, variables, build keys, durations)."""
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    block = readme[readme.index("```yaml\n# build-k8s.yaml") + len("```yaml\n"):]
    (play,) = yaml.safe_load(block[:block.index("```")])
    (task, *_) = play["tasks"]
    text = sca.catalogue_text(task["snapbuild.cloud.catalogue"]["content"])
    for template, value in (("{{ playbook_dir }}/my-mirrors.yaml", "upstream"), ("{{ cloud }}", "fake"),
                            ("{{ kubernetes_version }}", play["vars"]["kubernetes_version"])):
        text = text.replace(template, value)
    catalogue = load_catalogue(write(tmp_path, text), library=LIBRARY, known_clouds=["fake"])
    assert [(e.name, e.variant) for e in catalogue.entries] == [("k8s-full", "full"), ("k8s-slim", "slim")]
    assert [(t.name, t.role) for t in catalogue.targets] == [("one", "build"), ("two", "receive")]
    assert catalogue.target("one").build["timeout_provision"] == 1800.0
