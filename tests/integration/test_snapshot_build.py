"""The snapshot build against a real cloud: preflight refusals, a build whose SSH never comes up, and the
no-provision build (boot → stop → snapshot → properties). Every check of "nothing left" is made as admin."""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudnames import BASE, DISTRO, EXTERNAL, FLAVOR, LARGE_FLAVOR, NETWORK
from openstack.connection import Connection

from snapbuild.errors import BuildError, UserError
from snapbuild.openstack.cloud import NO_HIDDEN_RETRIES, Cloud
from snapbuild.openstack.properties import NOVA_COPIES
from snapbuild.openstack.settings import SnapshotSettings
from snapbuild.openstack.snapshot import build_snapshot
from snapbuild.plan import Plan
from snapbuild.run.context import Reporter


@pytest.fixture(scope="module")
def plan() -> Plan:
    from snapbuild.distros import get_distro
    from snapbuild.plan import make_plan
    from snapbuild.profiles import load_profile
    from snapbuild.recipes import load_recipe, resolve_variables

    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "recipes" / "docker-ce")
    return make_plan(recipe, distro=get_distro(DISTRO),
                     profile=load_profile(root / "recipes" / "profiles" / "upstream.yaml"),
                     variables=resolve_variables(recipe, config_values={}, set_values={}))


@pytest.fixture(scope="module")
def cloud(conn: Connection, cloud_names: Any) -> Iterator[Cloud]:
    adapter = Cloud.connect(cloud_names.member, os.environ.get("OS_REGION_NAME"), poll_interval=1.0)
    yield adapter
    adapter.close()


def _settings(name: str, **kw: Any) -> SnapshotSettings:
    values: dict[str, Any] = {"flavor": FLAVOR, "base_image": BASE, "networks": (NETWORK,),
                              "floating_network": EXTERNAL, "image_name": name, "timeout_boot": 180,
                              "timeout_snapshot": 300, "properties": {"sbtest": "1"}}
    values.update(kw)
    return SnapshotSettings(**values)


def _snapbuild_leftovers(admin: Connection, since_marker: str | None = None) -> list[str]:
    """Everything carrying snapbuild's tag (any project), optionally only one build's."""
    found = []
    for s in admin.compute.servers(all_projects=True, tags="snapbuild"):
        if since_marker is None or (s.metadata or {}).get("snapbuild_build_id") == since_marker:
            found.append(f"server {s.id} {s.name} {s.status}")
    for ip in admin.network.ips(tags="snapbuild"):
        if since_marker is None or f"snapbuild:build_id={since_marker}" in (ip.tags or []):
            found.append(f"floating IP {ip.id}")
    for g in admin.network.security_groups(tags="snapbuild"):
        if since_marker is None or f"snapbuild:build_id={since_marker}" in (g.tags or []):
            found.append(f"security group {g.id} {g.name}")
    for i in admin.image.images(tag="snapbuild"):
        if since_marker is None or i.properties.get("snapbuild_build_id") == since_marker:
            found.append(f"image {i.id} {i.name}")
    return found


def _build_id_from(out: str) -> str:
    for word in out.split():
        if word.startswith("snapbuild-docker-ce-"):
            return word[len("snapbuild-docker-ce-"):].removesuffix("-ssh")
    raise AssertionError(f"no build id in output:\n{out}")


def test_preflight_refuses_bad_inputs_and_creates_nothing(cloud: Cloud, admin_conn: Connection, plan: Plan,
                                                          unique_name: str) -> None:
    before = _snapbuild_leftovers(admin_conn)
    for bad, expect, near in ((dict(flavor="m1.smal"), "flavor 'm1.smal' not found", FLAVOR),
                              (dict(base_image="debian-13"), "image 'debian-13' not found", BASE),
                              (dict(networks=("privat",)), "network 'privat' not found", NETWORK),
                              (dict(floating_network="publik"), "external network 'publik' not found", EXTERNAL)):
        with pytest.raises(UserError) as err:
            build_snapshot(_settings(unique_name, **bad), plan, Reporter(io.StringIO()), cloud=cloud)
        assert expect in err.value.message
        assert near in (err.value.hint or ""), err.value.hint
        assert err.value.exit_code == 2
    assert _snapbuild_leftovers(admin_conn) == before


def test_quota_exhaustion_is_refused_with_a_clear_message_and_nothing_left(
        admin_conn: Connection, conn: Connection, cleanup: Callable[..., Any], plan: Plan, unique_name: str) -> None:
    """A throw-away project whose instances quota the admin sets to 0 (so no one else's tests are squeezed)."""
    from openstack import connection

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
    member = connection.Connection(auth_url=auth["auth_url"], username=user.name, password=password,
                                   project_id=project.id, user_domain_id="default",
                                   region_name=conn.config.region_name, **NO_HIDDEN_RETRIES)
    cleanup(member.close)
    before = _snapbuild_leftovers(admin_conn)
    with pytest.raises(UserError) as err:
        build_snapshot(_settings(unique_name, networks=(), floating_network=None), plan,
                       Reporter(io.StringIO()), cloud=Cloud(member, name="quota-test"))
    assert "instances: need 1, 0 free (0 of 0 used)" in err.value.message
    assert _snapbuild_leftovers(admin_conn) == before


def test_ssh_that_never_comes_up_fails_within_its_deadline_and_leaves_nothing(
        cloud: Cloud, admin_conn: Connection, plan: Plan, unique_name: str) -> None:
    out = io.StringIO()
    start = time.monotonic()
    with pytest.raises(BuildError) as err:
        build_snapshot(_settings(unique_name, timeout_ssh=15), plan, Reporter(out), cloud=cloud)
    elapsed = time.monotonic() - start
    assert "SSH to" in str(err.value)
    assert "step 'connect' failed" in out.getvalue()
    build_id = _build_id_from(out.getvalue())
    assert _snapbuild_leftovers(admin_conn, build_id) == []
    assert elapsed < 180 + 15 + 120       # boot + SSH deadline + cleanup, never "forever"


def test_no_provision_build_makes_an_active_image_with_clean_properties(
        cloud: Cloud, conn: Connection, admin_conn: Connection, plan: Plan, unique_name: str,
        cleanup: Callable[..., Any]) -> None:
    out = io.StringIO()
    result = build_snapshot(_settings(unique_name, no_provision=True, tags=("sbtest",)), plan, Reporter(out),
                            cloud=cloud)
    cleanup(conn.image.delete_image, result.image_id, ignore_missing=True)
    # the raw record: openstacksdk's Image maps well-known keys (instance_uuid, os_distro …) to attributes
    props = conn.image.get(f"/images/{result.image_id}").json()
    assert props["status"] == "active" and props["size"] and props["checksum"]
    assert props["name"] == unique_name
    assert props.get("image_type") == "image"
    for key in NOVA_COPIES:
        assert key not in props, key
    for key in ("snapbuild_installation_id", "snapbuild_expires_at", "snapbuild_host"):
        assert key not in props, key
    assert props["snapbuild_recipe"] == "docker-ce"
    assert props["snapbuild_base_image_name"] == BASE
    assert props["snapbuild_build_id"] == result.build_id
    assert props["os_distro"] == "debian" and props["sbtest"] == "1"
    assert props["tags"] == ["sbtest"]
    assert (props["min_disk"], props["min_ram"]) == (plan.image.min_disk_gb, plan.image.min_ram_mb)
    assert not [k for k in props if k.startswith("owner_specified.")]     # the base image's own, inherited
    leftovers = [x for x in _snapbuild_leftovers(admin_conn, result.build_id) if not x.startswith("image")]
    assert leftovers == []


def test_cli_k8s_m1_large_passes_preflight_tags_everything_and_fails_cleanly_at_ssh(
        admin_conn: Connection, unique_name: str, tmp_path: Path) -> None:
    """The user story as typed: `snapbuild k8s --flavor m1.large` (this cloud's servers never run sshd)."""
    import subprocess
    import sys

    seen: dict[str, list[str]] = {}

    def watch() -> None:
        # Everything the build made carries snapbuild's marks while it exists.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "server" not in seen:
            for s in admin_conn.compute.servers(all_projects=True, tags="snapbuild"):
                if s.name.startswith("snapbuild-k8s-"):
                    meta = s.metadata or {}
                    seen["server"] = [s.id, meta.get("snapbuild_build_id", ""), meta.get("snapbuild_recipe", "")]
            time.sleep(1)

    import threading

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    env = {**os.environ, "SNAPBUILD_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "snapbuild", "k8s", "--flavor", LARGE_FLAVOR, "--distro", DISTRO,
                           "--mirrors", "upstream", "--base-image", BASE, "--network", NETWORK,
                           "--floating-network", EXTERNAL, "--timeout-ssh", "20", "--image-name", unique_name],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    watcher.join(timeout=5)
    assert done.returncode == 3, done.stderr
    assert "SSH to" in done.stderr and "snapbuild: full log:" in done.stderr
    assert "server" in seen, "the builder server was never seen with snapbuild's tag"
    server_id, build_id, recipe = seen["server"]
    assert recipe == "k8s" and build_id
    assert _snapbuild_leftovers(admin_conn, build_id) == []
    assert admin_conn.compute.find_server(server_id, ignore_missing=True, all_projects=True) is None
    assert not list((tmp_path / "state" / "builds").glob("*.json"))   # the ledger is closed and removed
