"""The cloud behind the integration tier is real and shows real behaviour (openstacksdk used directly).

These pin down what snapbuild relies on: member (not admin) credentials, servers that boot, stop, start, show a
console log and snapshot into an `active` image, floating IPs from Neutron, tags, quotas that refuse, and the
multi-store Glance behaviour that a hand-made fake hides.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import openstack
import pytest
from cloudnames import BASE, EXTERNAL, FLAVOR, NETWORK
from openstack import exceptions
from openstack.connection import Connection

WAIT = 180  # seconds: generous for a loaded CI machine, never "forever"
IMAGE = BASE


def _wait_server(conn: Connection, server: Any, status: str) -> Any:
    try:
        return conn.compute.wait_for_server(server, status=status, failures=["ERROR"], interval=1, wait=WAIT)
    except exceptions.ResourceFailure:
        # wait_for_server drops the reason: show Nova's fault.
        fault = conn.compute.get_server(server.id).fault
        raise AssertionError(f"server {server.id} went to ERROR: {fault}") from None


def _delete_server(conn: Connection, server: Any) -> None:
    conn.compute.delete_server(server, ignore_missing=True)
    conn.compute.wait_for_delete(server, interval=1, wait=WAIT)


def _delete_image(conn: Connection, image_id: str) -> None:
    conn.image.delete_image(image_id, ignore_missing=True)


def _wait_image_active(conn: Connection, image_id: str) -> Any:
    image = conn.image.get_image(image_id)
    return conn.image.wait_for_status(image, "active", failures=["killed", "deleted", "deactivated"],
                                      interval=1, wait=WAIT)


@pytest.fixture(scope="module")
def server(conn: Connection, session_tag: str) -> Iterator[Any]:
    """One tagged server on `private`, shared by the lifecycle tests of this module, deleted at the end."""
    image = conn.image.find_image(IMAGE, ignore_missing=False)
    flavor = conn.compute.find_flavor(FLAVOR, ignore_missing=False)
    network = conn.network.find_network(NETWORK, ignore_missing=False)
    created = conn.compute.create_server(name=f"{session_tag}-smoke-server", image_id=image.id, flavor_id=flavor.id,
                                         networks=[{"uuid": network.id}], tags=[session_tag])
    try:
        yield _wait_server(conn, created, "ACTIVE")
    finally:
        _delete_server(conn, created)


def test_member_authorizes_and_is_not_admin(conn: Connection) -> None:
    assert conn.authorize()
    with pytest.raises(exceptions.ForbiddenException):
        list(conn.compute.hypervisors())  # admin-only in Nova's default policy


def test_wrong_password_is_a_clear_401(conn: Connection, cloud_names: Any) -> None:
    assert conn.authorize()  # the right password works: the 401 below is about the password alone
    bad = openstack.connect(cloud=cloud_names.member, auth={"password": "not-the-password"})
    with pytest.raises(exceptions.SDKException) as caught:
        bad.authorize()
    assert "401" in str(caught.value)
    assert "requires authentication" in str(caught.value)


def test_server_boots_active_with_tags_on_private(conn: Connection, server: Any, session_tag: str) -> None:
    assert server.status == "ACTIVE"
    assert session_tag in conn.compute.get_server(server.id).tags  # tags need microversion >= 2.52
    assert NETWORK in server.addresses and server.addresses[NETWORK][0]["addr"]
    assert [s.id for s in conn.compute.servers(tags=session_tag)] == [server.id]


def test_server_stops_starts_and_has_a_console_log(conn: Connection, server: Any) -> None:
    conn.compute.stop_server(server)
    _wait_server(conn, server, "SHUTOFF")
    conn.compute.start_server(server)
    _wait_server(conn, server, "ACTIVE")
    console = conn.compute.get_server_console_output(server)["output"]
    assert console.strip()


def test_snapshot_becomes_an_active_image_with_bytes(conn: Connection, server: Any, unique_name: str,
                                                     cleanup: Callable[..., Any]) -> None:
    image_id = conn.compute.create_server_image(server, unique_name, metadata={"snapbuild_test": "1"}, wait=False)
    cleanup(_delete_image, conn, image_id)
    image = _wait_image_active(conn, image_id)
    assert image.size and image.size > 0
    assert image.checksum and image.hash_value
    # Nova's task state clears once the upload is done: only then may a builder delete the server.
    deadline = time.monotonic() + WAIT
    while conn.compute.get_server(server.id).task_state is not None:
        assert time.monotonic() < deadline, "server task_state did not clear after the snapshot"
        time.sleep(0.5)


def test_floating_ip_from_public(conn: Connection, server: Any, session_tag: str,
                                 cleanup: Callable[..., Any]) -> None:
    public = conn.network.find_network(EXTERNAL, ignore_missing=False)
    port = next(conn.network.ports(device_id=server.id))
    fip = conn.network.create_ip(floating_network_id=public.id, port_id=port.id, description=f"{session_tag}-smoke-fip")
    cleanup(conn.network.delete_ip, fip, ignore_missing=True)
    conn.network.set_tags(fip, [session_tag])
    fetched = conn.network.get_ip(fip.id)
    assert fetched.port_id == port.id
    assert fetched.fixed_ip_address == port.fixed_ips[0]["ip_address"]
    assert session_tag in fetched.tags
    assert fetched.floating_ip_address


def test_security_group_with_tags(conn: Connection, unique_name: str, session_tag: str,
                                  cleanup: Callable[..., Any]) -> None:
    group = conn.network.create_security_group(name=unique_name, description="snapbuild integration test")
    cleanup(conn.network.delete_security_group, group, ignore_missing=True)
    conn.network.set_tags(group, [session_tag])
    assert session_tag in conn.network.get_security_group(group.id).tags
    assert any(g.id == group.id for g in conn.network.security_groups(tags=session_tag))


def test_quota_lowered_by_admin_refuses_create(conn: Connection, admin_conn: Connection, cloud_names: Any,
                                                unique_name: str, cleanup: Callable[..., Any]) -> None:
    # A project of its own, so servers other tests are still deleting cannot change the count.
    project = admin_conn.identity.create_project(name=unique_name, domain_id=conn.current_project.domain_id
                                                 or "default", description="snapbuild quota test")
    cleanup(admin_conn.identity.delete_project, project, ignore_missing=True)
    member_role = admin_conn.identity.find_role("member", ignore_missing=False)
    admin_conn.identity.assign_project_role_to_user(project, conn.current_user_id, member_role)
    member = openstack.connect(cloud=cloud_names.member, auth={"project_name": unique_name})
    cleanup(member.close)
    assert member.current_project_id == project.id
    quota = member.compute.get_quota_set(project.id)  # the member can read its own quota
    assert quota.instances > 0
    admin_conn.compute.update_quota_set(project.id, instances=0)
    image = member.image.find_image(IMAGE, ignore_missing=False)
    flavor = member.compute.find_flavor(FLAVOR, ignore_missing=False)
    with pytest.raises(exceptions.ForbiddenException) as caught:
        leaked = member.compute.create_server(name=unique_name, image_id=image.id, flavor_id=flavor.id,
                                              networks="none")
        cleanup(_delete_server, member, leaked)
    assert "Quota exceeded" in str(caught.value)


def test_multistore_glance_rejects_update_with_image_object(conn: Connection, unique_name: str,
                                                            cleanup: Callable[..., Any]) -> None:
    """The documented catch: on multi-store Glance, update_image(<Image>) sends `stores` back and gets 409."""
    image = conn.image.create_image(name=unique_name, data=b"\0" * 65536, disk_format="raw",
                                    container_format="bare", visibility="private")
    cleanup(_delete_image, conn, image.id)
    image = _wait_image_active(conn, image.id)
    # Multi-store Glance reports where the data lives; openstacksdk keeps that unknown field as a property.
    assert image.properties.get("stores"), "this tier expects a multi-store Glance (enabled_backends)"
    with pytest.raises(exceptions.ConflictException) as caught:
        conn.image.update_image(image, snapbuild_test="object")
    assert caught.value.response is not None
    assert "Property stores does not exist" in caught.value.response.text  # Glance's reason is in the body
    conn.image.update_image(image.id, snapbuild_test="id")
    assert conn.image.get_image(image.id).properties.get("snapbuild_test") == "id"
