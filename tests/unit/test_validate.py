"""`snapbuild validate`: the recipe's checks and, with a cloud, build's whole preflight; nothing is created, and every
problem is listed (one line each, with its hint). The cloud is openstacksdk over requests-mock answers shaped like
the API reference (tests/unit/openstack/httpcloud.py); only `Cloud.connect` is replaced, to hand that cloud over."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests_mock

from snapbuild.openstack.cloud import Cloud
from tests.clirun import run
from tests.unit.openstack.httpcloud import FakeClock, HTTPCloud

GOOD = ["--mirrors", "upstream", "--flavor", "m1.small", "--network", "private", "--floating-network", "public"]
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(autouse=True)
def _no_site_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No snapbuild.yaml but the test's own, no cloud from the environment."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("OS_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def api() -> Iterator[HTTPCloud]:
    with requests_mock.Mocker() as mocker:
        yield HTTPCloud(mocker)


@pytest.fixture
def connects(api: HTTPCloud, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None]]:
    """Cloud.connect hands out the fake-backed Cloud (credentials proven, as the real one does); records its args."""
    seen: list[tuple[str | None, str | None]] = []
    clock = FakeClock()

    def connect(cls: type[Cloud], cloud: str | None, region: str | None = None, **kwargs: Any) -> Cloud:
        seen.append((cloud, region))
        adapter = Cloud(api.connect(), name=cloud or "default", clock=clock, sleep=clock.sleep)
        adapter.authorize()
        return adapter

    monkeypatch.setattr(Cloud, "connect", classmethod(connect))
    return seen


def changes(api: HTTPCloud) -> list[str]:
    """Every request that could have made, changed or removed something (signing in aside)."""
    return [call for call in api.calls() if call.split()[0] in MUTATING and call != "POST /v3/auth/tokens"]


def problem_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("snapbuild: error:")]


# -- with a cloud ----------------------------------------------------------------------------------------------

def test_good_inputs_exit_0_with_what_was_resolved_and_nothing_created(
        api: HTTPCloud, connects: list[tuple[str | None, str | None]], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--os-cloud", "test", "--os-region-name", "RegionOne", "validate", "docker-ce", *GOOD)
    assert code == 0, err
    assert connects == [("test", "RegionOne")]
    assert "cloud test (region RegionOne): OK, nothing created" in out
    assert "m1.small (f1): 1 vCPU, 2048 MiB, 20 GB disk" in out
    assert "ubuntu-24.04 (base-2)" in out                     # the newest image of the recipe's distro
    assert "private (net-1)" in out and "from public (ext-1)" in out
    assert "20 GB from the flavor; needs 8 GB" in out
    assert "a temporary group, SSH from 0.0.0.0/0" in out
    assert "not checked:" in out
    assert problem_lines(err) == []
    assert api.calls("GET", r"/os-quota-sets/") and api.calls("GET", r"/quotas/")   # the quota was read
    assert changes(api) == []
    assert api.servers == {} and api.floating_ips == {} and set(api.security_groups) == {"sg-default"}


def test_json_gives_the_resolved_inputs(api: HTTPCloud, connects: list[tuple[str | None, str | None]],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--os-cloud", "test", "validate", "docker-ce", *GOOD, "--port", "builder-port",
                         "--json")
    assert code == 0, err
    verdict = json.loads(out)
    assert verdict["ok"] is True and verdict["problems"] == []
    assert verdict["cloud"] == {"checked": True, "name": "test", "region": None}
    resolved = verdict["resolved"]
    assert resolved["flavor"]["id"] == "f1" and resolved["base_image"]["id"] == "base-2"
    assert resolved["networks"] == [{"name": "private", "id": "net-1"}]
    assert resolved["port"] == "port-free"
    assert resolved["security_groups"] == []                  # a port brings its own groups: no temporary one
    assert resolved["floating_network"] == {"name": "public", "id": "ext-1"}
    assert resolved["root_disk"] == {"gb": 20, "from": "flavor", "needs_gb": 8,
                                     "because": "recipe 'docker-ce' disk_size_gb"}
    assert 0 < resolved["user_data_chars"] <= 65535
    assert verdict["checked"]["distro"] == "ubuntu-24.04" and verdict["checked"]["mirrors"] == "upstream"
    assert changes(api) == []


def test_every_bad_cloud_input_is_listed_with_its_hint(api: HTTPCloud, connects: list[tuple[str | None, str | None]],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--os-cloud", "test", "validate", "docker-ce", "--mirrors", "upstream",
                         "--flavor", "m1.smal", "--network", "privte", "--security-group", "defualt",
                         "--floating-network", "publik", "--base-image", "ubuntu-24.4")
    assert code == 2
    assert out == ""
    lines = problem_lines(err)
    expected = {"flavor 'm1.smal' not found": "did you mean: m1.small",
                "network 'privte' not found": "private",
                "security group 'defualt' not found": "default",
                "external network 'publik' not found": "public",
                "image 'ubuntu-24.4' not found": "ubuntu-24.04"}
    assert len(lines) == len(expected), err
    for message, hint in expected.items():
        (line,) = [line for line in lines if message in line]
        assert "(hint: " in line and hint in line.split("(hint: ", 1)[1], line
    assert "snapbuild: validate docker-ce: 5 problems; nothing was created" in err
    assert changes(api) == []


def test_a_small_flavor_disk_the_quota_and_a_bad_cidr_are_listed_beside_other_problems(
        api: HTTPCloud, connects: list[tuple[str | None, str | None]], capsys: pytest.CaptureFixture[str]) -> None:
    api.flavors[0]["disk"] = 4
    api.quota["instances"] = (2, 2)
    code, _, err = run(capsys, "--os-cloud", "test", "validate", "docker-ce", "--mirrors", "upstream",
                       "--flavor", "m1.small", "--network", "nowhere", "--ssh-cidr", "10.0.0/33")
    assert code == 2
    lines = problem_lines(err)
    assert len(lines) == 4, err
    (cidr,) = [line for line in lines if "--ssh-cidr '10.0.0/33' is not a network" in line]
    assert "(hint: give an address range such as 203.0.113.0/24" in cidr
    (disk,) = [line for line in lines if "flavor m1.small has a 4 GB disk; the build needs 8 GB" in line]
    assert "(hint: pick a flavor with a disk of 8 GB or more, or pass --volume-size 8)" in disk
    assert any("network 'nowhere' not found (hint: " in line for line in lines)
    (quota,) = [line for line in lines if "does not fit the project's quota" in line]
    assert "instances: need 1, 0 free" in quota and "(hint: free resources" in quota
    assert changes(api) == []


def test_with_a_cloud_a_missing_flavor_is_one_of_the_problems(api: HTTPCloud,
                                                                connects: list[tuple[str | None, str | None]],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--os-cloud", "test", "validate", "docker-ce", "--mirrors", "upstream",
                       "--network", "privte", "--json")
    assert code == 2
    problems = json.loads(out)["problems"]
    assert [p["message"] for p in problems] == ["no flavor for the builder server", "network 'privte' not found"]
    assert "--flavor" in problems[0]["hint"] and "m1.medium, m1.small" in problems[0]["hint"]
    assert changes(api) == []


def test_the_site_s_build_defaults_reach_validate(api: HTTPCloud, connects: list[tuple[str | None, str | None]],
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "snapbuild.yaml"
    config.write_text(textwrap.dedent("""\
        mirrors: upstream
        build:
          flavor: m1.medium
          network: [private]
        """))
    code, out, err = run(capsys, "--os-cloud", "test", "validate", "docker-ce", "--json")
    assert code == 0, err
    resolved = json.loads(out)["resolved"]
    assert resolved["flavor"]["name"] == "m1.medium" and resolved["networks"] == [{"name": "private", "id": "net-1"}]


def test_blocked_hosts_are_a_problem_unless_allowed_and_listed_once(
        api: HTTPCloud, connects: list[tuple[str | None, str | None]], capsys: pytest.CaptureFixture[str]) -> None:
    # k8s with the default profile (cloudinative) pulls from registry.k8s.io, which it marks blocked.
    code, _, err = run(capsys, "--os-cloud", "test", "validate", "k8s", "--flavor", "m1.medium")
    assert code == 2
    (line,) = problem_lines(err)                     # the recipe's problem, not again from the cloud's preflight
    assert "blocked hosts without a mirror" in line and "registry.k8s.io" in line and "--allow-blocked" in line
    code, out, err = run(capsys, "--os-cloud", "test", "validate", "k8s", "--flavor", "m1.medium", "--allow-blocked")
    assert code == 0, err
    assert "cloud test: OK, nothing created" in out
    assert "WARNING: blocked without a mirror (allowed by --allow-blocked)" in err
    assert changes(api) == []


# -- without a cloud ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_clouds_yaml(monkeypatch: pytest.MonkeyPatch) -> Iterator[requests_mock.Mocker]:
    """openstacksdk finds no clouds.yaml (whatever this host has) and no OS_* variable; no HTTP request may leave."""
    import openstack.config.loader

    monkeypatch.setattr(openstack.config.loader, "CONFIG_FILES", [])
    with requests_mock.Mocker() as nothing_answers:
        yield nothing_answers


def test_without_a_cloud_only_the_recipe_is_checked_and_it_says_so(no_clouds_yaml: requests_mock.Mocker,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "docker-ce", "--mirrors", "upstream")    # no --flavor needed
    assert code == 0, err
    assert "recipe docker-ce" in out and "OK on ubuntu-24.04, mirror profile upstream" in out
    assert "cloud: not checked: no cloud selected (pass --os-cloud NAME or set OS_CLOUD)" in out
    assert "only the recipe was validated" in out
    code, out, err = run(capsys, "validate", "docker-ce", "--mirrors", "upstream", "--flavor", "m1.smal", "--json")
    assert code == 0, err                              # the flavor is not looked at without a cloud
    verdict = json.loads(out)
    assert verdict["ok"] is True and verdict["resolved"] is None
    assert verdict["cloud"]["checked"] is False and "no cloud selected" in verdict["cloud"]["reason"]
    assert verdict["checked"]["user_data_chars"] > 0
    assert no_clouds_yaml.request_history == []


def test_without_a_cloud_recipe_problems_still_exit_2(no_clouds_yaml: requests_mock.Mocker,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "validate", "k8s")
    assert code == 2
    (line,) = problem_lines(err)
    assert "registry.k8s.io" in line and "(hint: " in line
    assert "(cloud not checked: no cloud selected" in err


def test_a_named_cloud_that_is_not_in_clouds_yaml_is_a_problem(no_clouds_yaml: requests_mock.Mocker, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  mycloud:\n    auth:\n      auth_url: https://identity.example.com/v3\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    code, _, err = run(capsys, "--os-cloud", "mycloude", "validate", "docker-ce", "--mirrors", "upstream")
    assert code == 2
    (line,) = problem_lines(err)
    assert "cloud 'mycloude' not found in clouds.yaml" in line and "mycloud" in line.split("(hint: ", 1)[1]
    assert no_clouds_yaml.request_history == []


def test_a_recipe_error_exits_2_with_file_and_line(connects: list[tuple[str | None, str | None]], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipes" / "broken" / "recipe.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(textwrap.dedent("""\
        description: a recipe with a mistake
        distros: [ubuntu-24.04]
        image:
          name: broken
          category: base
          min_disk_gb: four
          min_ram_mb: 512
          disk_size_gb: 4
        steps: []
        """))
    args = ("--os-cloud", "test", "--recipes-dir", str(recipe.parent.parent), "validate", "broken",
            "--flavor", "m1.small")
    code, _, err = run(capsys, *args)
    assert code == 2
    (line,) = problem_lines(err)
    assert f"{recipe}:6: image.min_disk_gb must be an integer, not a string" in line
    assert "(cloud not checked: the recipe must load first)" in err
    code, out, _ = run(capsys, *args, "--json")
    assert code == 2
    (problem,) = json.loads(out)["problems"]
    assert (problem["file"], problem["line"]) == (str(recipe), 6)
    assert connects == []                              # without a plan there is nothing to check the cloud against


# -- output formats ------------------------------------------------------------------------------------------------

def test_format_and_columns_print_the_verdict_as_the_openstack_cli_would(
        no_clouds_yaml: requests_mock.Mocker, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "docker-ce", "--mirrors", "upstream", "-f", "json")
    assert code == 0, err
    assert json.loads(out)["ok"] is True and json.loads(out)["not_checked"]     # the object --json prints
    code, out, _ = run(capsys, "validate", "docker-ce", "--mirrors", "upstream", "-f", "value", "-c", "ok",
                       "-c", "recipe")
    assert (code, out) == (0, "true\ndocker-ce\n")
    import yaml

    code, out, _ = run(capsys, "validate", "docker-ce", "--mirrors", "upstream", "-f", "yaml", "-c", "cloud")
    assert code == 0 and yaml.safe_load(out)["cloud"]["checked"] is False
    code, out, err = run(capsys, "validate", "k8s", "-f", "json")                # a problem: still exit 2
    assert code == 2 and json.loads(out)["ok"] is False
    assert "registry.k8s.io" in json.loads(out)["problems"][0]["message"]


def test_columns_are_validate_s_own(no_clouds_yaml: requests_mock.Mocker, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "docker-ce", "-c", "seconds")     # a build column, not validate's
    assert code == 2 and out == ""
    assert "'seconds' is not one of 'ok', 'recipe'" in err


# -- --transport console -----------------------------------------------------------------------------------------

def test_console_transport_checks_its_own_user_data_and_refuses_ssh_options_without_a_cloud(
        no_clouds_yaml: requests_mock.Mocker, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "docker-ce", "--mirrors", "upstream", "--transport", "console", "--json")
    assert code == 0, err
    console_chars = json.loads(out)["checked"]["user_data_chars"]
    code, out, err = run(capsys, "validate", "docker-ce", "--mirrors", "upstream", "--json")
    ssh_chars = json.loads(out)["checked"]["user_data_chars"]
    assert console_chars > ssh_chars + 20_000          # the runner travels with it
    code, _, err = run(capsys, "validate", "docker-ce", "--mirrors", "upstream", "--transport", "console",
                       "--floating-network", "public", "--ssh-bastion", "jump")
    assert code == 2
    (line,) = problem_lines(err)
    assert "--floating-network, --ssh-bastion cannot apply" in line and "--transport ssh" in line
    assert no_clouds_yaml.request_history == []


def test_console_transport_refuses_a_recipe_carrying_credentials_before_any_cloud_call(
        no_clouds_yaml: requests_mock.Mocker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "recipes" / "leaky"
    recipe.mkdir(parents=True)
    (recipe / "recipe.yaml").write_text(textwrap.dedent("""\
        description: a recipe with a password in it
        distros: [debian-12]
        image: {name: leaky, category: test, min_disk_gb: 3, disk_size_gb: 3}
        steps:
          - file: {path: /etc/app.conf, content: "password=hunter2-not-for-user-data\\n"}
        """))
    code, _, err = run(capsys, "--recipes-dir", str(tmp_path / "recipes"), "validate", "leaky", "--mirrors",
                       "upstream", "--transport", "console")
    assert code == 2, err
    assert "credential" in err.lower() and "/etc/app.conf" in err, err
    code, _, err = run(capsys, "--recipes-dir", str(tmp_path / "recipes"), "validate", "leaky", "--mirrors",
                       "upstream")
    assert code == 0, err       # over SSH the file travels in the session, not in the user-data
