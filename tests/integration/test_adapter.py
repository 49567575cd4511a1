"""The Cloud adapter against a real cloud: lookups with close matches, real auth errors, real quotas,
and finish_image's JSON-patch on real (multi-store) Glance."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudnames import FLAVOR
from openstack.connection import Connection

from snapbuild.errors import UserError
from snapbuild.openstack.cloud import Cloud


@pytest.fixture(scope="module")
def cloud(conn: Connection, cloud_names: Any) -> Iterator[Cloud]:
    adapter = Cloud.connect(cloud_names.member, os.environ.get("OS_REGION_NAME"), poll_interval=1.0)
    yield adapter
    adapter.close()


def test_lookups_resolve_names_and_ids(cloud: Cloud, conn: Connection) -> None:
    flavor = cloud.resolve_flavor(FLAVOR)
    assert cloud.resolve_flavor(flavor.id).name == FLAVOR
    net = next(iter(conn.network.networks(is_router_external=False)))
    assert cloud.resolve_network(net.name).id == net.id
    assert cloud.resolve_network(net.id).name == net.name
    image = next(iter(conn.image.images(status="active")))
    assert cloud.resolve_image(image.name).status == "active"
    assert cloud.resolve_image(image.id).name == image.name


def test_unknown_inputs_name_close_matches(cloud: Cloud, conn: Connection) -> None:
    with pytest.raises(UserError) as err:
        cloud.resolve_flavor(FLAVOR[:-1])
    assert FLAVOR in (err.value.hint or "")
    net = next(iter(conn.network.networks(is_router_external=False)))
    with pytest.raises(UserError) as err:
        cloud.resolve_network(net.name + "x")
    assert net.name in (err.value.hint or "")
    image = next(iter(conn.image.images(status="active")))
    with pytest.raises(UserError) as err:
        cloud.resolve_image(image.name + "-nope")
    assert image.name in (err.value.hint or "")


def test_wrong_password_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conn: Connection) -> None:
    auth = conn.config.config["auth"]
    path = tmp_path / "clouds.yaml"
    path.write_text(f"""clouds:
  wrong:
    auth: {{auth_url: "{auth['auth_url']}", username: "{auth['username']}", password: "not-the-password",
            project_name: "{auth['project_name']}", user_domain_name: Default, project_domain_name: Default}}
""")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    with pytest.raises(UserError, match="authentication failed"):
        Cloud.connect("wrong", conn.config.region_name)


def test_quotas_read_compute_and_network(cloud: Cloud) -> None:
    quotas = cloud.quotas()
    for key in ("instances", "cores", "ram", "floatingip", "security_group"):
        assert key in quotas, key
        assert quotas[key].in_use >= 0


def test_finish_image_patches_by_id_on_real_glance(cloud: Cloud, conn: Connection, unique_name: str,
                                                    cleanup: Callable[..., Any]) -> None:
    image = conn.image.create_image(name=unique_name, disk_format="qcow2", container_format="bare",
                                    visibility="private", image_type="snapshot", instance_uuid="x",
                                    owner_project_name="demo", keep_me="1")
    cleanup(conn.image.delete_image, image.id, ignore_missing=True)
    ops = cloud.finish_image(image.id, properties={"image_type": "image", "os_distro": "debian", "keep_me": "1"},
                             remove=["instance_uuid", "owner_project_name", "absent_key"], tags=["sbtest"],
                             min_disk=3, min_ram=512)
    assert {"op": "remove", "path": "/instance_uuid"} in ops
    assert {"op": "remove", "path": "/absent_key"} not in ops         # removing a missing key is a Glance 409
    after = cloud.get_image(image.id)
    assert after.properties.get("image_type") == "image"
    assert after.properties.get("os_distro") == "debian"
    assert after.properties.get("keep_me") == "1"
    assert "instance_uuid" not in after.properties and "owner_project_name" not in after.properties
    assert (after.min_disk, after.min_ram, after.tags) == (3, 512, ("sbtest",))


def test_quota_exhaustion_is_refused_before_anything_is_made(admin_conn: Connection, conn: Connection,
                                                              cleanup: Callable[..., Any]) -> None:
    """A throw-away project whose instances quota is 0 (so no one else's tests are squeezed)."""
    suffix = uuid.uuid4().hex[:8]
    project = admin_conn.identity.create_project(name=f"sbtest-quota-{suffix}", domain_id="default")
    cleanup(admin_conn.identity.delete_project, project)
    password = uuid.uuid4().hex
    user = admin_conn.identity.create_user(name=f"sbtest-quota-{suffix}", password=password, domain_id="default")
    cleanup(admin_conn.identity.delete_user, user)
    role = admin_conn.identity.find_role("member", ignore_missing=False)
    admin_conn.identity.assign_project_role_to_user(project, user, role)
    admin_conn.compute.update_quota_set(project.id, instances=0)
    auth = conn.config.config["auth"]
    from openstack import connection

    from snapbuild.openstack.cloud import NO_HIDDEN_RETRIES

    # Connection(), not openstack.connect(): the latter would merge in OS_CLOUD's credentials
    member = connection.Connection(auth_url=auth["auth_url"], username=user.name, password=password,
                               project_id=project.id, user_domain_id="default",
                               region_name=conn.config.region_name, **NO_HIDDEN_RETRIES)
    cleanup(member.close)
    limited = Cloud(member, name="quota-test")
    with pytest.raises(UserError, match="instances: need 1, 0 free"):
        limited.check_fits(limited.resolve_flavor(FLAVOR))
