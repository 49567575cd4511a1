"""snapbuild.yaml's `build:` section: per-site defaults for `snapbuild build`, `k8s` and `docker-ce`. They reach the
SnapshotSettings, the command line wins, and a bad section is refused (exit 2) naming the file, the line and the key.
The accepted keys are snapbuild.config.BUILD_KEYS; the tests here prove that list cannot drift from the click options
or from config.schema.json."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest

import snapbuild
from snapbuild import cli
from snapbuild.cli.cloud_options import long_name
from snapbuild.config import BUILD_KEYS, BUILD_REFUSED
from snapbuild.openstack.settings import SnapshotSettings
from tests.clirun import capture_snapshot_builds, run

SCHEMA = Path(snapbuild.__file__).resolve().parent / "schemas" / "config.schema.json"
EXAMPLE = """\
build:
  flavor: m1.large
  network: [private]
  floating-network: public
  security_group: [builders]
  ssh_user: ubuntu
  property: {hw_qemu_guest_agent: "yes", hw_disk_bus: scsi}
  timeout_ssh: 900
  config_drive: true
  ssh_ip_version: 4
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No config file but the test's own; build logs in tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[SnapshotSettings]:
    """What `build_snapshot` is handed; nothing contacts a cloud."""
    return capture_snapshot_builds(monkeypatch, image_name="base-test")


def write_config(tmp_path: Path, text: str, name: str = "snapbuild.yaml") -> Path:
    path = tmp_path / "site" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("mirrors: upstream\n" + textwrap.dedent(text))
    return path


def the_error(code: int, err: str) -> str:
    """The one error line (plus its hint) a refused config gives."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("snapbuild: error:")] == lines[:1], err
    assert all(line.startswith(("snapbuild: error:", "snapbuild: hint:")) for line in lines), err
    return err


# -- the list of keys: one place, and it matches the commands' options and the schema -------------------------

def command(name: str) -> click.Command:
    found = cli.cli.commands[name]
    return found


def test_every_option_of_the_build_commands_is_a_site_default_or_refused_with_a_reason() -> None:
    assert not set(BUILD_KEYS) & set(BUILD_REFUSED)
    assert len(set(BUILD_KEYS)) == len(BUILD_KEYS)
    assert all(len(reason) > 20 for reason in BUILD_REFUSED.values())
    for name in cli.BUILD_COMMANDS:
        options = {long_name(p) for p in command(name).params if isinstance(p, click.Option)}
        streamless = {"events"} if name == "validate" else set()    # validate runs no build: no event stream
        assert options == (set(BUILD_KEYS) | set(BUILD_REFUSED)) - streamless, name


def test_the_build_commands_are_exactly_those_with_the_snapshot_options() -> None:
    with_flavor = {name for name, cmd in cli.cli.commands.items()
                   if any(long_name(p) == "flavor" for p in cmd.params)}
    assert with_flavor == set(cli.BUILD_COMMANDS)


def schema_of(param: click.Option) -> dict[str, Any]:
    """The JSON Schema of a value the loader takes for this option (what site_defaults shapes and click converts)."""
    kind = param.type
    one: dict[str, Any]
    if isinstance(kind, click.types.BoolParamType):
        one = {"type": "boolean"}
    elif isinstance(kind, click.Choice):
        choices = [str(c) for c in kind.choices]
        one = {"enum": [*choices, *(int(c) for c in choices if c.isdigit())]}   # YAML's 4 is click's "4"
    elif isinstance(kind, click.types.IntParamType):
        one = {"type": "integer"}
        if isinstance(kind, click.IntRange) and kind.min is not None:
            one["minimum"] = kind.min
    elif isinstance(kind, click.types.FloatParamType):
        one = {"type": "number"}
    else:
        one = {"type": ["string", "number"]}
    if not param.multiple:
        return one
    assert one == {"type": ["string", "number"]}, "a repeatable option of another type: extend the schema"
    if long_name(param) == "property":
        return {"type": ["object", "array", "string"], "items": {"type": "string"},
                "additionalProperties": {"type": ["string", "number", "boolean"]}}
    return {"type": ["string", "number", "array"], "items": one}


def test_the_schema_s_build_object_lists_exactly_the_keys_with_click_s_types() -> None:
    build = json.loads(SCHEMA.read_text())["properties"]["build"]
    assert build["additionalProperties"] is False
    options = {long_name(p): p for p in command("build").params if isinstance(p, click.Option)}
    dashed = {key.replace("_", "-"): key for key in BUILD_KEYS if "_" in key}
    assert set(build["properties"]) == set(BUILD_KEYS) | set(dashed)
    for key in BUILD_KEYS:
        prop = dict(build["properties"][key])
        assert f"--{key.replace('_', '-')}" in prop.pop("description"), key
        assert prop == schema_of(options[key]), key
    for alias, key in dashed.items():
        assert build["properties"][alias] == {"$ref": f"#/properties/build/properties/{key}",
                                              "description": f"Same as {key}."}


# -- the defaults reach the build, the command line wins ------------------------------------------------------

@pytest.mark.parametrize("args", [["build", "base"], ["k8s", "--allow-blocked"], ["docker-ce", "--allow-blocked"]],
                         ids=["build", "k8s", "docker-ce"])
def test_the_file_s_defaults_reach_the_snapshot_settings(args: list[str], tmp_path: Path,
                                                         captured: list[SnapshotSettings],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, EXAMPLE)
    code, out, err = run(capsys, "--config", str(config), *args)   # no --flavor: the file's satisfies required=True
    assert code == 0, err
    assert out.strip() == "image-1"
    (s,) = captured
    assert (s.flavor, s.networks, s.floating_network, s.security_groups) == (
        "m1.large", ("private",), "public", ("builders",))
    assert (s.ssh_user, s.timeout_ssh, s.config_drive, s.ssh_ip_version) == ("ubuntu", 900.0, True, 4)
    assert dict(s.properties) == {"hw_qemu_guest_agent": "yes", "hw_disk_bus": "scsi"}
    assert (s.ssh_port, s.visibility, s.timeout_boot) == (22, "private", 900.0)   # what the file leaves alone


def test_the_command_line_wins_over_the_file(tmp_path: Path, captured: list[SnapshotSettings],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, EXAMPLE)
    code, _, err = run(capsys, "--config", str(config), "build", "base", "--flavor", "m1.small", "--network", "a",
                       "--network", "b", "--floating-network", "none", "--timeout-ssh", "30", "--no-config-drive",
                       "--property", "os_admin_user=debian", "--ssh-ip-version", "6")
    assert code == 0, err
    (s,) = captured
    assert (s.flavor, s.networks, s.floating_network, s.timeout_ssh) == ("m1.small", ("a", "b"), None, 30.0)
    assert (s.config_drive, s.ssh_ip_version) == (False, 6)
    assert dict(s.properties) == {"os_admin_user": "debian"}     # a list option given replaces the file's list
    assert (s.ssh_user, s.security_groups) == ("ubuntu", ("builders",))   # the rest still from the file


def test_single_values_lists_and_key_value_items_take_the_option_s_shape(tmp_path: Path,
                                                                         captured: list[SnapshotSettings],
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "site" / "keys").mkdir(parents=True)
    (tmp_path / "site" / "keys" / "jump").write_text("not really a key")
    config = write_config(tmp_path, """\
        build:
          flavor: 42
          network: private
          security-group: [a, b]
          property: [hw_disk_bus=scsi, note=a=b]
          tag: golden
          share_with: [p1]
          volume_size: 20
          visibility: shared
          ssh_bastion: jump@bastion.example
          ssh-bastion-key: keys/jump
          timeout_provision: 7200.5
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = run(capsys, "--config", str(config), "build", "base")
    assert code == 0, err
    (s,) = captured
    assert (s.flavor, s.networks, s.security_groups, s.tags, s.share_with) == (
        "42", ("private",), ("a", "b"), ("golden",), ("p1",))
    assert dict(s.properties) == {"hw_disk_bus": "scsi", "note": "a=b"}
    assert (s.volume_size_gb, s.visibility, s.ssh_bastion, s.timeout_provision) == (
        20, "shared", "jump@bastion.example", 7200.5)
    assert s.ssh_bastion_key == tmp_path / "site" / "keys" / "jump"   # relative to the config file, not the cwd


def test_without_a_file_flavor_is_still_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "base")
    assert code == 2 and "Missing option '--flavor'" in err


def test_build_help_shows_the_file_s_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "build:\n  ssh_user: ubuntu\n")
    code, out, _ = run(capsys, "--config", str(config), "k8s", "--help")
    assert code == 0 and "[default: ubuntu]" in out


# -- a bad section: exit 2, file, line, key -------------------------------------------------------------------

@pytest.mark.parametrize(("line", "needles"), [
    ("flavour: m1.large", ("unknown key 'flavour' in build", "did you mean 'flavor'?")),
    ("floating-netwrok: public", ("unknown key 'floating-netwrok' in build", "did you mean 'floating-network'?")),
    ("ssh_usr: ubuntu", ("unknown key 'ssh_usr' in build", "did you mean 'ssh_user'?")),
])
def test_an_unknown_key_names_file_line_and_the_closest_key(line: str, needles: tuple[str, ...], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, f"build:\n  flavor: m1.large\n  {line}\n")
    err = the_error(*run(capsys, "--config", str(config), "k8s")[::2])
    assert "snapbuild.yaml:4: " in err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("key", sorted(BUILD_REFUSED))
@pytest.mark.parametrize("spelling", ["underscores", "dashes"])
def test_an_option_that_is_no_site_default_is_refused_with_the_reason(key: str, spelling: str, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    written = key.replace("_", "-") if spelling == "dashes" else key
    config = write_config(tmp_path, f"build:\n  {written}: x\n")
    err = the_error(*run(capsys, "--config", str(config), "build", "base")[::2])
    assert f"snapbuild.yaml:3: build: --{key.replace('_', '-')} cannot have a default in the config file" in err
    assert f"snapbuild: hint: {BUILD_REFUSED[key]}" in err


@pytest.mark.parametrize(("body", "needle"), [
    ("timeout_ssh: soon", "snapbuild.yaml:3: build.timeout_ssh must be a number, not a string"),
    ("ssh_port: 22.5", "snapbuild.yaml:3: build.ssh_port must be a whole number, not 22.5"),
    ("volume_size: 0", "snapbuild.yaml:3: build.volume_size: 0 is not in the range x>=1"),
    ("visibility: secret", "snapbuild.yaml:3: build.visibility: 'secret' is not one of"),
    ("ssh_ip_version: 5", "snapbuild.yaml:3: build.ssh_ip_version: 5 is not one of '4', '6'"),
    ("config_drive: sometimes", "snapbuild.yaml:3: build.config_drive must be true or false, not a string"),
    ("flavor: [m1.large]", "snapbuild.yaml:3: build.flavor must be a string, not a list"),
    ("ssh_user: yes", "snapbuild.yaml:3: build.ssh_user must be a string, not a boolean"),
    ("network: {private: 1}", "snapbuild.yaml:3: build.network must be a string, or a list of them, not a mapping"),
    ("network:\n    - private\n    - [public]", "snapbuild.yaml:5: build.network[1] must be a string, not a list"),
    ("property: {hw_disk_bus: [scsi]}", "snapbuild.yaml:3: build.property.hw_disk_bus must be a string or number"),
    ("property: [hw_disk_bus]", "snapbuild.yaml:3: build.property: 'hw_disk_bus' is not KEY=VALUE"),
    ("ssh_bastion_key: keys/nope", "snapbuild.yaml:3: build.ssh_bastion_key: File "),
    ("flavor:", "snapbuild.yaml:3: build.flavor has no value"),
    ("ssh_user: a\n  ssh-user: b", "snapbuild.yaml:4: build: 'ssh-user' and 'ssh_user' are the same option"),
])
@pytest.mark.parametrize("name", cli.BUILD_COMMANDS)
def test_a_wrong_value_names_file_line_and_key(name: str, body: str, needle: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               captured: list[SnapshotSettings]) -> None:
    config = write_config(tmp_path, f"build:\n  {body}\n")
    args = ["build", "base"] if name == "build" else [name]
    err = the_error(*run(capsys, "--config", str(config), *args, "--flavor", "f", "--allow-blocked")[::2])
    assert needle in err
    assert str(config.parent) in err     # the file, by the path it was given
    assert captured == []


def test_the_build_section_must_be_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "build: [flavor]\n")
    err = the_error(*run(capsys, "--config", str(config), "k8s")[::2])
    assert "snapbuild.yaml:2: build must be a mapping of option: value, not a list" in err


# -- commands that do not build are not held up by the section ------------------------------------------------

def test_help_and_recipes_do_not_convert_the_build_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "build:\n  timeout_ssh: soon\n")   # a value only a build command converts
    code, out, _ = run(capsys, "--config", str(config), "--help")
    assert code == 0 and "Commands:" in out
    code, out, err = run(capsys, "--config", str(config), "recipes")
    assert code == 0 and "docker-ce" in out, err
    code, _, err = run(capsys, "--config", str(config), "build", "base", "--flavor", "f")
    assert code == 2 and "build.timeout_ssh" in err


# -- per cloud and per region: `clouds: NAME: build:` and `clouds: NAME: regions: REGION: build:` ---------------

CLOUDS = """\
build:
  flavor: m1.large
  network: [private]
  ssh_user: ubuntu
clouds:
  east:
    build:
      flavor: e1.medium
      floating_network: ext-east
    regions:
      RegionTwo:
        build:
          network: [builders-two]
  west:
    build:
      flavor: w.large
"""


@pytest.mark.parametrize(("where", "expected"), [
    ([], ("m1.large", ("private",), None)),
    (["--os-cloud", "east"], ("e1.medium", ("private",), "ext-east")),
    (["--os-cloud", "east", "--os-region-name", "RegionOne"], ("e1.medium", ("private",), "ext-east")),
    (["--os-cloud", "east", "--os-region-name", "RegionTwo"], ("e1.medium", ("builders-two",), "ext-east")),
    (["--os-cloud", "west", "--os-region-name", "RegionTwo"], ("w.large", ("private",), None)),
    (["--os-cloud", "south"], ("m1.large", ("private",), None)),    # a cloud with no section: the top-level build:
], ids=["no-cloud", "east", "east-RegionOne", "east-RegionTwo", "west-RegionTwo", "unlisted"])
def test_the_chosen_cloud_s_and_region_s_defaults_win_over_the_top_level_ones(
        where: list[str], expected: tuple[Any, ...], tmp_path: Path, captured: list[SnapshotSettings],
        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, CLOUDS)
    code, _, err = run(capsys, "--config", str(config), *where, "build", "base")
    assert code == 0, err
    (s,) = captured
    assert (s.flavor, s.networks, s.floating_network) == expected
    assert s.ssh_user == "ubuntu"       # keys no cloud section sets stay the top-level ones


def test_the_cloud_from_os_cloud_in_the_environment_chooses_the_section(
        tmp_path: Path, captured: list[SnapshotSettings], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_CLOUD", "east")
    monkeypatch.setenv("OS_REGION_NAME", "RegionTwo")
    config = write_config(tmp_path, CLOUDS)
    code, _, err = run(capsys, "--config", str(config), "build", "base", "--flavor", "cli.flavor")
    assert code == 0, err
    (s,) = captured
    assert (s.flavor, s.networks, s.floating_network) == ("cli.flavor", ("builders-two",), "ext-east")


def test_help_shows_the_cloud_s_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, CLOUDS)
    code, out, _ = run(capsys, "--config", str(config), "--os-cloud", "east", "k8s", "--help")
    assert code == 0 and "[default: ext-east]" in " ".join(out.split())   # help wraps lines


@pytest.mark.parametrize(("body", "needle", "hint"), [
    ("clouds:\n  east:\n    build:\n      flavour: x\n",
     "snapbuild.yaml:5: unknown key 'flavour' in clouds.east.build", "did you mean 'flavor'?"),
    ("clouds:\n  east:\n    bulid:\n      flavor: x\n",
     "snapbuild.yaml:4: unknown key 'bulid' in clouds.east", "did you mean 'build'?"),
    ("clouds:\n  east:\n    regions:\n      r1:\n        build:\n          name: x\n",
     "snapbuild.yaml:7: clouds.east.regions.r1.build: --name cannot have a default in the config file",
     BUILD_REFUSED["name"]),
    ("clouds: [east]\n", "snapbuild.yaml:2: clouds must be a mapping of cloud name", None),
    ("clouds:\n  east:\n    regions: [r1]\n", "snapbuild.yaml:4: clouds.east.regions must be a mapping", None),
])
def test_a_bad_clouds_section_names_file_line_and_path(body: str, needle: str, hint: str | None, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, body)
    err = the_error(*run(capsys, "--config", str(config), "build", "base", "--flavor", "f")[::2])
    assert needle in err, err
    if hint:
        assert hint in err, err


def test_a_bad_value_in_a_cloud_section_names_its_full_path(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "clouds:\n  east:\n    regions:\n      r1:\n        build:\n"
                                    "          timeout_ssh: soon\n")
    err = the_error(*run(capsys, "--config", str(config), "--os-cloud", "east", "--os-region-name", "r1",
                         "build", "base", "--flavor", "f")[::2])
    assert "snapbuild.yaml:7: clouds.east.regions.r1.build.timeout_ssh must be a number, not a string" in err, err
