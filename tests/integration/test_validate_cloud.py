"""`snapbuild validate` against a real cloud: good inputs resolve to the cloud's ids, every bad input is named with
its hint in one run (exit 2), and nothing is created: the member project's servers, ports, security groups,
floating IPs, volumes and images are the same before and after.

(Named test_validate_cloud.py: tests/unit/test_validate.py holds the unit tests, and two test modules may not
share a basename in this tree, which has no __init__.py below tests/.)"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudnames import BASE, DISTRO, EXTERNAL, FLAVOR, NETWORK
from openstack.connection import Connection

from snapbuild import cli

RECIPE = ["docker-ce", "--distro", DISTRO, "--mirrors", "upstream"]


def run(capsys: pytest.CaptureFixture[str], cloud: str, *args: str) -> tuple[int, str, str]:
    try:
        cli.main(["--os-cloud", cloud, "validate", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def problem_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("snapbuild: error:")]


def project_resources(admin: Connection, project_id: str) -> dict[str, set[str]]:
    """What validate could have made in the project it runs in, as admin sees it. Neutron's own `default` group
    is left out: Neutron makes it on a project's first network call, snapbuild never does."""
    found = {
        "server": {s.id for s in admin.compute.servers(all_projects=True, project_id=project_id)},
        "port": {p.id for p in admin.network.ports(project_id=project_id)},
        "security group": {g.id for g in admin.network.security_groups(project_id=project_id)
                           if g.name != "default"},
        "floating IP": {ip.id for ip in admin.network.ips(project_id=project_id)},
        "image": {i.id for i in admin.image.images(owner=project_id)},
    }
    if admin.has_service("block-storage") or admin.has_service("volumev3"):
        found["volume"] = {v.id for v in admin.block_storage.volumes(all_projects=True, project_id=project_id)}
    return found


def test_good_inputs_resolve_to_the_cloud_s_ids_and_nothing_is_created(
        conn: Connection, admin_conn: Connection, cloud_names: Any, capsys: pytest.CaptureFixture[str]) -> None:
    before = project_resources(admin_conn, conn.current_project_id)
    code, out, err = run(capsys, cloud_names.member, *RECIPE, "--flavor", FLAVOR, "--base-image", BASE,
                         "--network", NETWORK, "--floating-network", EXTERNAL, "--json")
    assert code == 0, err
    verdict = json.loads(out)
    assert verdict["ok"] is True and verdict["cloud"]["checked"] is True
    resolved = verdict["resolved"]
    assert resolved["flavor"]["id"] == conn.compute.find_flavor(FLAVOR, ignore_missing=False).id
    assert resolved["base_image"]["id"] == conn.image.find_image(BASE, ignore_missing=False).id
    assert resolved["networks"] == [{"name": NETWORK,
                                     "id": conn.network.find_network(NETWORK, ignore_missing=False).id}]
    assert resolved["floating_network"]["id"] == conn.network.find_network(EXTERNAL, ignore_missing=False).id
    assert resolved["security_groups"] == {"temporary": True, "ssh_cidr": "0.0.0.0/0"}
    assert resolved["quota"] == "fits"
    assert project_resources(admin_conn, conn.current_project_id) == before


def test_every_bad_cloud_input_is_named_with_its_hint_and_nothing_is_created(
        conn: Connection, admin_conn: Connection, cloud_names: Any, unique_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = project_resources(admin_conn, conn.current_project_id)
    code, out, err = run(capsys, cloud_names.member, *RECIPE, "--flavor", "m1.smal", "--base-image", "debian-13",
                         "--network", "privat", "--floating-network", "publik", "--port", f"{unique_name}-port",
                         "--security-group", f"{unique_name}-group")
    assert code == 2 and out == ""
    lines = problem_lines(err)
    expected = {"flavor 'm1.smal' not found": FLAVOR,
                "image 'debian-13' not found": BASE,
                "network 'privat' not found": NETWORK,
                "external network 'publik' not found": EXTERNAL,
                f"port '{unique_name}-port' not found": "",
                f"security group '{unique_name}-group' not found": ""}
    assert len(lines) == len(expected), err
    for message, near in expected.items():
        (line,) = [line for line in lines if message in line]
        assert "(hint: " in line and near in line.split("(hint: ", 1)[1], line
    assert "6 problems; nothing was created" in err
    assert project_resources(admin_conn, conn.current_project_id) == before


def test_a_flavor_disk_smaller_than_the_recipe_is_named_beside_other_problems(
        conn: Connection, admin_conn: Connection, cloud_names: Any, unique_name: str, cleanup: Callable[..., Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    tiny = admin_conn.compute.create_flavor(name=unique_name, vcpus=1, ram=512, disk=2, is_public=True)
    cleanup(admin_conn.compute.delete_flavor, tiny)
    before = project_resources(admin_conn, conn.current_project_id)
    code, out, err = run(capsys, cloud_names.member, *RECIPE, "--flavor", unique_name, "--base-image", BASE,
                         "--network", "privat", "--json")
    assert code == 2, err
    problems = {p["message"]: p["hint"] for p in json.loads(out)["problems"]}
    assert len(problems) == 2, problems
    disk = f"flavor {unique_name} has a 2 GB disk; the build needs 8 GB (recipe 'docker-ce' disk_size_gb)"
    assert problems[disk] == "pick a flavor with a disk of 8 GB or more, or pass --volume-size 8"
    assert NETWORK in problems["network 'privat' not found"]
    assert project_resources(admin_conn, conn.current_project_id) == before


def test_a_project_without_quota_for_the_builder_is_named(
        conn: Connection, admin_conn: Connection, cleanup: Callable[..., Any], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A throw-away project whose instances quota is 0 (so no one else's tests are squeezed), named in a
    clouds.yaml of its own, as a user would name it."""
    suffix = uuid.uuid4().hex[:8]
    project = admin_conn.identity.create_project(name=f"sbtest-quota-{suffix}", domain_id="default")
    cleanup(admin_conn.identity.delete_project, project)
    password = uuid.uuid4().hex
    user = admin_conn.identity.create_user(name=f"sbtest-quota-{suffix}", password=password, domain_id="default")
    cleanup(admin_conn.identity.delete_user, user)
    admin_conn.identity.assign_project_role_to_user(project, user,
                                                    admin_conn.identity.find_role("member", ignore_missing=False))
    admin_conn.compute.update_quota_set(project.id, instances=0)
    auth = conn.config.config["auth"]
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(json.dumps({"clouds": {"quota": {
        "auth": {"auth_url": auth["auth_url"], "username": user.name, "password": password,
                 "project_id": project.id, "user_domain_id": "default"},
        "region_name": conn.config.region_name}}}))          # JSON is YAML
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    before = project_resources(admin_conn, project.id)
    code, _, err = run(capsys, "quota", *RECIPE, "--flavor", FLAVOR, "--base-image", BASE)
    assert code == 2, err
    (line,) = problem_lines(err)
    assert "instances: need 1, 0 free (0 of 0 used)" in line and "(hint: " in line
    assert project_resources(admin_conn, project.id) == before
