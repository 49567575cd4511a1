"""The snapbuild.cloud.image module's half that needs no Ansible (plugins/module_utils/snapbuild_command.py): the
argument lists it runs, parsed by snapbuild's own click commands, and snapbuild's real answers (the build result
as `-f json` prints it, validate's verdict, the --events stream) read back. `tox -e ansible-sanity` checks the
module itself; tests/integration/test_ansible_collection.py runs it in a playbook."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest

from ansible_collections.snapbuild.cloud.plugins.module_utils import snapbuild_command as sc
from snapbuild import cli
from snapbuild.cli.output import Output
from snapbuild.cli.validate import Verdict
from snapbuild.errors import RecipeError, UserError
from snapbuild.openstack.settings import SnapshotResult
from snapbuild.run.monitor import EventStream

# What Ansible hands the module for a task that sets these (every other option None, the defaults as documented).
PARAMS: dict[str, Any] = {
    "recipe": "k8s", "cloud": "mycloud", "region": "RegionTwo", "config": None, "recipes_dirs": ["/site/recipes"],
    "distro": "debian-12", "mirrors": "./my-mirrors.yaml", "variant": "slim",
    "variables": {"kubernetes_version": "1.32.12", "extra_images": ["a:1", "b:2"], "debug": False, "count": 3},
    "flavor": "m1.large", "base_image": None, "networks": ["private", "storage"], "port": None,
    "floating_network": "public", "security_groups": None, "ssh_cidr": None, "availability_zone": None,
    "config_drive": False, "volume_size": None, "ssh_user": None, "ssh_interface": None, "ssh_bastion": None,
    "ssh_bastion_key": None, "name": "k8s-slim", "min_disk": 20, "min_ram": 4096, "visibility": "public",
    "protected": True, "hidden": None, "properties": {"hw_qemu_guest_agent": "yes", "os_admin_user": "ubuntu"},
    "tags": ["golden"], "share_with": None, "timeouts": {"boot": None, "ssh": 900.0, "provision": None,
                                                        "snapshot": None},
    "allow_blocked": False, "manifest": None, "executable": "snapbuild", "extra_args": ["--volume-disk-format", "raw"],
}


def params(**changes: Any) -> dict[str, Any]:
    return {**PARAMS, **changes}


def parsed(argv: list[str], command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The global options and the subcommand's options as snapbuild's click commands parse them (no callback
    runs: nothing is built or validated)."""
    assert argv[0] == "snapbuild"
    where = argv.index(command)
    group = cli.cli.make_context("snapbuild", argv[1:where + 1])
    sub = cli.cli.get_command(group, command)
    assert sub is not None
    return group.params, sub.make_context(command, argv[where + 1:], parent=group).params


def test_the_build_argv_is_snapbuild_build_with_every_option_as_snapbuild_parses_it() -> None:
    argv = sc.build_argv("snapbuild", PARAMS, "/tmp/x/events.jsonl")
    globals_, options = parsed(argv, "build")
    assert globals_["os_cloud"] == "mycloud" and globals_["os_region_name"] == "RegionTwo"
    assert globals_["recipes_dir"] == ("/site/recipes",)
    assert options["recipe"] == "k8s" and options["flavor"] == "m1.large"
    assert options["networks"] == ("private", "storage") and options["floating_network"] == "public"
    assert options["distro"] == "debian-12" and options["mirrors"] == "./my-mirrors.yaml"
    assert "--variant" in argv and argv[argv.index("--variant") + 1] == "slim"
    assert options["sets"] == ("count=3", "debug=false", "extra_images=a:1,b:2", "kubernetes_version=1.32.12")
    assert options["properties"] == ("hw_qemu_guest_agent=yes", "os_admin_user=ubuntu")
    assert options["image_name"] == "k8s-slim" and options["min_disk_gb"] == 20 and options["min_ram_mb"] == 4096
    assert options["visibility"] == "public" and options["protected"] is True
    assert options["hidden"] is False                     # not given: snapbuild's default (or snapbuild.yaml's)
    assert options["config_drive"] is False and "--no-config-drive" in argv
    assert options["tags"] == ("golden",) and options["timeout_ssh"] == 900.0
    assert options["volume_disk_format"] == "raw"         # extra_args
    # What the module owns: a failure is cleaned up, the answer is JSON, the events go to its file.
    assert options["on_error"] == "cleanup" and options["keep_on_failure"] is False
    assert options["fmt"] == "json" and options["events"] == "/tmp/x/events.jsonl"


def test_check_mode_runs_validate_with_the_same_options_and_asks_for_its_json_verdict() -> None:
    build = sc.build_argv("snapbuild", PARAMS, "/tmp/x/events.jsonl")
    argv = sc.validate_argv("snapbuild", PARAMS)
    assert argv[-1] == "--json" and "--events" not in argv and "--on-error" not in argv
    assert argv[:argv.index("validate")] == build[:build.index("build")]
    assert argv[argv.index("validate") + 1:-1] == build[build.index("build") + 1:build.index("--on-error")]
    _, options = parsed(argv, "validate")
    assert options["as_json"] is True and options["flavor"] == "m1.large"


def test_options_not_given_are_left_to_snapbuild_and_its_config_file() -> None:
    bare = {name: None for name in PARAMS} | {"recipe": "docker-ce", "allow_blocked": False, "extra_args": []}
    assert sc.build_argv("/opt/sb/bin/snapbuild", bare, "/e") == [
        "/opt/sb/bin/snapbuild", "build", "docker-ce", "--on-error", "cleanup", "-f", "json", "--events", "/e"]
    assert "--allow-blocked" in sc.build_argv("snapbuild", params(allow_blocked=True), "/e")
    assert "--unprotected" in sc.build_argv("snapbuild", params(protected=False), "/e")


@pytest.mark.parametrize("owned", ["--on-error", "--keep-on-failure", "-f", "--format=yaml", "--json", "--events",
                                   "-c"])
def test_extra_args_may_not_take_what_the_module_decides(owned: str) -> None:
    with pytest.raises(sc.ArgvError, match="extra_args may not contain") as err:
        sc.build_argv("snapbuild", params(extra_args=["--tag", "x", owned, "ask"]), "/e")
    assert owned in str(err.value)


@pytest.mark.parametrize(("value", "why"), [(["a,b", "c"], "contains a comma"), ({"k": "v"}, "not a mapping"),
                                            (None, "not null")])
def test_a_variable_set_cannot_express_is_refused_naming_it(value: Any, why: str) -> None:
    with pytest.raises(sc.ArgvError, match=f"variables.images: .*{why}"):
        sc.build_argv("snapbuild", params(variables={"images": value}), "/e")


def test_the_build_result_snapbuild_prints_with_f_json_becomes_the_image_fact() -> None:
    result = SnapshotResult(image_id="6f7d", image_name="Ubuntu 24.04 - Kubernetes (slim)", build_id="b-42",
                            properties={"snapbuild_content_digest": "sha256:abc", "snapbuild_variant": "slim"},
                            seconds=321.04, manifest={}, manifest_path=Path("/state/manifests/m.json"))
    stdout = Output(format="json").render(cli.build_result(result)) + "\n"
    image = sc.image_facts(sc.parse_json_document(stdout, "snapbuild build"), PARAMS)
    assert image == {"id": "6f7d", "name": "Ubuntu 24.04 - Kubernetes (slim)", "build_id": "b-42",
                     "manifest": "/state/manifests/m.json", "seconds": 321.0,
                     "properties": {"snapbuild_content_digest": "sha256:abc", "snapbuild_variant": "slim"},
                     "content_digest": "sha256:abc", "recipe": "k8s", "variant": "slim", "cloud": "mycloud",
                     "region": "RegionTwo"}


@pytest.mark.parametrize(("stdout", "why"), [("", "printed nothing"), ("6f7d\n", "not JSON"), ("[1]", "JSON object")])
def test_a_result_that_is_not_snapbuild_s_json_is_an_error_that_shows_it(stdout: str, why: str) -> None:
    with pytest.raises(sc.ArgvError, match=why):
        sc.parse_json_document(stdout, "snapbuild build")


def test_validate_s_verdict_lists_every_problem_with_its_hint_and_where() -> None:
    verdict = Verdict(recipe="k8s", problems=[
        UserError("flavor 'm1.larg' not found", hint="close matches: m1.large"),
        RecipeError("unknown key 'stpes'", path="/r/k8s/recipe.yaml", line=7, hint="did you mean 'steps'?"),
        UserError("instances: need 1, 0 free (0 of 0 used)")])
    document = json.dumps(verdict.as_json())
    assert sc.validation_problems(sc.parse_json_document(document, "snapbuild validate")) == [
        "flavor 'm1.larg' not found (hint: close matches: m1.large)",
        "/r/k8s/recipe.yaml:7: unknown key 'stpes' (hint: did you mean 'steps'?)",
        "instances: need 1, 0 free (0 of 0 used)"]


def test_check_mode_describes_the_image_the_cloud_resolved() -> None:
    verdict = Verdict(recipe="k8s", recipe_checked={"recipe": "k8s", "distro": "debian-12", "mirrors": "mine",
                                                    "variant": "slim"},
                      cloud={"checked": True, "name": "mycloud", "region": None},
                      resolved={"image_name": "Debian 12 - Kubernetes (slim) 2026-05-09",
                                "flavor": {"name": "m1.large", "id": "f1"}, "base_image": {"name": "debian-12"}})
    image = sc.planned_image(json.loads(json.dumps(verdict.as_json())), PARAMS)
    assert image["id"] is None and image["cloud_checked"] is True
    assert image["name"] == "Debian 12 - Kubernetes (slim) 2026-05-09" and image["region"] == "RegionTwo"
    text = sc.describe(image)
    assert text.splitlines()[0] == "image Debian 12 - Kubernetes (slim) 2026-05-09 from recipe k8s on cloud mycloud"
    assert "  flavor: m1.large\n" in text and "  base_image: debian-12\n" in text and "  variant: slim\n" in text
    assert "id:" not in text                              # nothing exists yet


def test_without_a_cloud_check_mode_still_names_what_it_would_build() -> None:
    verdict = Verdict(recipe="docker-ce", recipe_checked={"recipe": "docker-ce", "distro": "ubuntu-24.04",
                                                          "mirrors": "cloudinative", "variant": None},
                      cloud={"checked": False, "reason": "no cloud selected"})
    bare = {name: None for name in PARAMS} | {"recipe": "docker-ce"}
    image = sc.planned_image(verdict.as_json(), bare)
    assert image["cloud_checked"] is False and image["name"] is None
    assert sc.describe(image).startswith("image (the recipe's default name) from recipe docker-ce on cloud "
                                         "(OS_CLOUD / clouds.yaml)\n")


def event_stream(*events: tuple[str, dict[str, Any]]) -> str:
    """JSON lines as snapbuild's own --events writer produces them."""
    import io

    out = io.StringIO()
    stream = EventStream(out)
    stream.build_started(build_id="b-1", builder="openstack-snapshot", recipe="k8s", variant=None)
    stream.step_started("provision")
    stream.progress("pre-pull", 1, 3)
    stream.line("Reading package lists...")
    for name, fields in events:
        if name == "result":
            stream.result(bool(fields.pop("ok")), fields)
    return out.getvalue()


def test_a_failed_build_names_its_step_error_and_snapbuild_s_last_lines() -> None:
    text = event_stream(("result", {"ok": False, "step": "provision", "error": "apt-get exited 100",
                                    "kept": False, "leftovers": []})) + '{"event": "resul'   # killed mid-write
    events = sc.read_events(text)
    assert [e["event"] for e in events] == ["build_started", "step_started", "result"]   # no progress, no output
    stderr = "\n".join(f"line {n}" for n in range(30)) + "\nsnapbuild: full log: /state/logs/x.log\n"
    message = sc.failure_message("build", 3, stderr, sc.last_result(events))
    first, *rest = message.splitlines()
    assert first == "snapbuild build failed at step 'provision' (exit 3): apt-get exited 100"
    assert rest[-1] == "snapbuild: full log: /state/logs/x.log" and len(rest) == 10


def test_bad_input_says_nothing_was_created_and_a_crash_says_the_exit_code() -> None:
    assert sc.failure_message("build", 2, "snapbuild: error: flavor 'x' not found\n", None) == (
        "snapbuild build refused its input (exit 2, nothing was created)\nsnapbuild: error: flavor 'x' not found")
    assert sc.last_result(sc.read_events("")) is None
    assert sc.failure_message("build", 130, "", None) == "snapbuild build failed (exit 130)"


def test_snapbuild_s_warnings_become_ansible_warnings() -> None:
    assert sc.warnings_of("▸ preflight\nWARNING: quay.io is unreliable where the image is used\nWARNING: b\n") == [
        "quay.io is unreliable where the image is used", "b"]


def test_the_module_s_options_are_documented_and_match_what_argv_reads() -> None:
    """Every parameter the argv builder reads is an option of the module (validate-modules checks the module's
    documentation against its argument spec)."""
    module = Path(sc.__file__).parents[1] / "modules" / "image.py"
    text = module.read_text()
    spec = text.split("ARGUMENT_SPEC = dict(", 1)[1]
    read = {name for name, _ in sc.SINGLE_VALUED} | {name for name, _ in sc.REPEATED} | {
        name for name, _, _ in sc.SWITCHES} | {"variables", "properties", "timeouts", "allow_blocked", "extra_args",
                                              "cloud", "region", "recipe"}
    for name in read:
        assert f"\n    {name}=dict(" in spec, name
        assert f"\n  {name}:\n" in text, name             # in DOCUMENTATION's options
    # config, recipes_dirs, executable: shared with the catalogue module, documented in the doc fragment
    fragment = (Path(sc.__file__).parents[1] / "doc_fragments" / "snapbuild.py").read_text()
    assert "\n    **COMMON_OPTIONS\n" in spec and "  - snapbuild.cloud.snapbuild\n" in text
    for name in ("config", "recipes_dirs", "executable"):
        assert name in sc.COMMON_OPTIONS and f"\n  {name}:\n" in fragment, name


def test_click_rejects_what_the_module_never_sends() -> None:
    """The parse above is real: a misspelt option fails it (so a renamed snapbuild option fails these tests)."""
    with pytest.raises(click.NoSuchOption):
        parsed(["snapbuild", "build", "k8s", "--flavour", "x"], "build")
