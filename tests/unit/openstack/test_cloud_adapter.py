"""The Cloud adapter against openstacksdk's real HTTP layer, with faults a real cloud cannot make on demand."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from httpcloud import FakeClock, HTTPCloud

from snapbuild.errors import CloudError, UserError
from snapbuild.openstack.cloud import Cloud, WaitTimeout
from snapbuild.openstack.faults import QuotaExceeded, may_still_be_made
from snapbuild.openstack.model import ServerSpec


def _spec(**kw: object) -> ServerSpec:
    values: dict[str, Any] = {"name": "snapbuild-t-1", "flavor_id": "f1", "image_id": "base-2", "network_ids": ("net-1",),
                    "security_group_ids": ("sg-default",), "user_data": "I2Nsb3VkLWNvbmZpZwo=",
                    "tags": ("snapbuild",), "metadata": {"snapbuild_build_id": "b1"}}
    values.update(kw)
    return ServerSpec(**values)


# ---- connecting ------------------------------------------------------------------------------------------

def _clouds_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth_url: str) -> None:
    path = tmp_path / "clouds.yaml"
    path.write_text(f"""clouds:
  devstack:
    auth: {{auth_url: "{auth_url}", username: u, password: p, project_name: p,
            user_domain_name: Default, project_domain_name: Default}}
    region_name: RegionOne
""")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    for var in ("OS_CLOUD", "OS_AUTH_URL", "OS_PASSWORD", "OS_USERNAME"):
        monkeypatch.delenv(var, raising=False)


def test_unknown_cloud_is_a_user_error_with_close_matches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clouds_yaml(tmp_path, monkeypatch, "http://127.0.0.1:1/v3")
    with pytest.raises(UserError) as err:
        Cloud.connect("devstak", "RegionOne")
    assert "devstak" in err.value.message
    assert err.value.hint and "devstack" in err.value.hint


def test_identity_endpoint_refusing_connections_is_a_user_error_naming_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # refused at the very first request: the cloud's configuration (auth_url) is wrong, or names a cloud
    # that is down; either way the user's to fix (exit 2), in one line without keystoneauth's 350 characters
    with socket.socket() as sock:   # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _clouds_yaml(tmp_path, monkeypatch, f"http://127.0.0.1:{port}/v3")
    with pytest.raises(UserError) as err:
        Cloud.connect("devstack", "RegionOne")
    assert err.value.message == (f"cloud 'devstack': cannot reach its identity endpoint http://127.0.0.1:{port}/v3: "
                                 "connection refused")
    assert err.value.hint and "auth_url" in err.value.hint and "--os-cloud" in err.value.hint


def test_wrong_password_is_a_user_error(api: HTTPCloud) -> None:
    api.fault("POST", r"/v3/auth/tokens", status=401,
              body={"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires "
                                                                               "authentication."}})
    cloud = Cloud(api.connect(), name="devstack")
    with pytest.raises(UserError) as err:
        cloud.authorize()
    assert "authentication failed" in err.value.message


# ---- looking things up ------------------------------------------------------------------------------------

def test_unknown_flavor_names_close_matches(cloud: Cloud) -> None:
    with pytest.raises(UserError) as err:
        cloud.resolve_flavor("m1.smal")
    assert err.value.message == "flavor 'm1.smal' not found"
    assert err.value.hint and "m1.small" in err.value.hint


def test_image_by_name_takes_the_most_recent(cloud: Cloud) -> None:
    assert cloud.resolve_image("ubuntu-24.04").id == "base-2"
    assert cloud.resolve_image("base-1").id == "base-1"


def test_unknown_image_and_network_name_close_matches(cloud: Cloud) -> None:
    with pytest.raises(UserError) as err:
        cloud.resolve_image("ubuntu-24.4")
    assert "ubuntu-24.04" in (err.value.hint or "")
    with pytest.raises(UserError) as err:
        cloud.resolve_network("privat")
    assert "private" in (err.value.hint or "")
    with pytest.raises(UserError):
        cloud.resolve_network("private", external=True)


def test_default_image_matches_distro_properties(cloud: Cloud) -> None:
    assert cloud.default_image("ubuntu", "24.04").id == "base-2"
    assert cloud.default_image("debian", "12").id == "deb-1"
    with pytest.raises(UserError):
        cloud.default_image("fedora", "41")


def test_default_image_is_never_one_snapbuild_built_from_a_recipe(cloud: Cloud, api: HTTPCloud) -> None:
    # A finished build has the base's os_distro/os_version, is newer, and has lost the `snapbuild` tag: only its
    # provenance tells it apart. A rebuild must start from the base, not from the last build.
    api.add_image("built-1", "Ubuntu 24.04 - Docker CE", os_distro="ubuntu", os_version="24.04",
                  snapbuild_content_digest="d" * 64, snapbuild_recipe_digest="r" * 64,
                  created_at="2026-12-01T00:00:00Z")
    api.add_image("uploaded-base", "ubuntu-24.04 uploaded by snapbuild upload", os_distro="ubuntu",
                  os_version="24.04", snapbuild_build_id="u1", created_at="2026-12-02T00:00:00Z")
    assert cloud.default_image("ubuntu", "24.04").id == "uploaded-base"   # a plain upload is still a base
    api.images.pop("uploaded-base")
    assert cloud.default_image("ubuntu", "24.04").id == "base-2"
    assert cloud.resolve_image("Ubuntu 24.04 - Docker CE").id == "built-1"   # named, it may still be the base


def test_quota_check_names_what_is_short(cloud: Cloud, api: HTTPCloud) -> None:
    api.quota["instances"] = (5, 5)
    api.net_quota["floatingip"] = (2, 2)
    flavor = cloud.resolve_flavor("m1.small")
    with pytest.raises(UserError) as err:
        cloud.check_fits(flavor, floating_ips=1, security_groups=1)
    assert "instances: need 1, 0 free (5 of 5 used)" in err.value.message
    assert "floatingip: need 1, 0 free" in err.value.message
    api.quota["instances"] = (-1, 5)
    api.net_quota["floatingip"] = (3, 2)
    cloud.check_fits(flavor, floating_ips=1, security_groups=1)


# ---- boot and waits -------------------------------------------------------------------------------------------

def test_boot_sends_tags_metadata_and_user_data_at_microversion_2_52_or_later(cloud: Cloud, api: HTTPCloud) -> None:
    server = cloud.boot(_spec())
    body = api.last_json("POST", r"/servers$")["server"]
    assert body["tags"] == ["snapbuild"]
    assert body["metadata"] == {"snapbuild_build_id": "b1"}
    assert body["user_data"] == "I2Nsb3VkLWNvbmZpZwo="
    assert body["networks"] == [{"uuid": "net-1"}]
    assert body["security_groups"] == [{"name": "sg-default"}]
    post = next(r for r in api.m.request_history if r.method == "POST" and r.url.endswith("/servers"))
    version = post.headers["OpenStack-API-Version"].split()[1]
    assert tuple(map(int, version.split("."))) >= (2, 52)
    assert server.id.startswith("srv-")


def test_server_error_surfaces_nova_fault_message(cloud: Cloud, api: HTTPCloud) -> None:
    api.boot_result = "ERROR"
    server = cloud.boot(_spec())
    with pytest.raises(CloudError) as err:
        cloud.wait_active(server.id, 600)
    assert str(err.value) == "server ERROR: No valid host was found. There are not enough hosts available."


def test_server_404_inside_a_wait_is_a_cloud_error(cloud: Cloud, api: HTTPCloud) -> None:
    server = cloud.boot(_spec())
    api.servers[server.id]["status"] = "DELETED"
    with pytest.raises(CloudError, match="disappeared"):
        cloud.wait_active(server.id, 600)


@pytest.mark.parametrize("wait", ["active", "shutoff", "task_idle", "image", "deleted"])
def test_every_wait_ends_at_its_deadline(cloud: Cloud, api: HTTPCloud, clock: FakeClock, wait: str) -> None:
    api.boot_result = "BUILD"           # never leaves BUILD
    api.stop_result = "stuck"
    api.snapshot_result = "stuck"
    server = cloud.boot(_spec())
    start = clock.now
    with pytest.raises(WaitTimeout, match="timed out after 30 s"):
        if wait == "active":
            cloud.wait_active(server.id, 30)
        elif wait == "shutoff":
            cloud.wait_shutoff(server.id, 30)
        elif wait == "task_idle":
            api.servers[server.id]["task_state"] = "image_pending_upload"
            api.servers[server.id]["status"] = "ACTIVE"
            api.servers[server.id]["polls"] = -10**6
            cloud.wait_task_idle(server.id, 30)
        elif wait == "image":
            api.add_image("img-q", "x", polls=0).update(status="queued")
            cloud.wait_image_active("img-q", 30)
        else:
            api.fault("DELETE", r"/servers/", status=204, body={}, times=1)   # accepted, but never goes
            cloud.delete_server(server.id, 30)
    assert 30 <= clock.now - start < 35
    assert min(clock.sleeps) >= 1.0            # never polls faster than once a second


def test_killed_image_fails_at_once(cloud: Cloud, api: HTTPCloud, clock: FakeClock) -> None:
    api.add_image("img-k", "x", polls=0).update(status="saving")
    api.snapshot_result = "killed"
    with pytest.raises(CloudError, match="went killed"):
        cloud.wait_image_active("img-k", 3600)
    assert clock.now - 1000.0 < 10


def test_image_deleted_by_nova_fails_at_once(cloud: Cloud) -> None:
    with pytest.raises(CloudError, match="deleted by the cloud"):
        cloud.wait_image_active("img-gone", 3600)


def test_image_active_needs_size_and_checksum(cloud: Cloud, api: HTTPCloud) -> None:
    api.add_image("img-0", "x").update(size=0)
    with pytest.raises(WaitTimeout):
        cloud.wait_image_active("img-0", 30)


# ---- retries: reads and deletes yes, creates never ----------------------------------------------------------

@pytest.mark.parametrize("how", ["503", "reset"])
def test_reads_are_retried_on_transient_faults(cloud: Cloud, api: HTTPCloud, how: str) -> None:
    kw = {"reset": True} if how == "reset" else {"status": 503}
    api.fault("GET", r"/v2.1/flavors/m1.small$", times=2, **kw)
    assert cloud.resolve_flavor("m1.small").id == "f1"
    assert len(api.calls("GET", r"/flavors/m1.small$")) == 3


@pytest.mark.parametrize("how", ["503", "reset"])
def test_deletes_are_retried_on_transient_faults(cloud: Cloud, api: HTTPCloud, how: str) -> None:
    kw = {"reset": True} if how == "reset" else {"status": 502}
    server = cloud.boot(_spec())
    api.fault("DELETE", r"/servers/", times=1, **kw)
    cloud.delete_server(server.id, 60)
    assert len(api.calls("DELETE", r"/servers/")) == 2


def test_a_delete_outlasts_a_service_restart(cloud: Cloud, api: HTTPCloud, clock: FakeClock) -> None:
    """Neutron restarting in the middle of an undo (seen on the test cloud) must not leak the floating IP."""
    ip = cloud.create_floating_ip(floating_network_id="ext-1", port_id="p", tags=[])
    api.fault("DELETE", r"/floatingips/", times=6, reset=True)
    start = clock.now
    cloud.delete_floating_ip(ip.id)
    assert api.floating_ips == {}
    assert len(api.calls("DELETE", r"/floatingips/")) == 7
    assert clock.now - start >= 20           # it waited for the service to come back


@pytest.mark.parametrize("how", ["500", "reset"])
def test_server_create_is_never_retried(cloud: Cloud, api: HTTPCloud, how: str) -> None:
    kw = {"reset": True} if how == "reset" else {"status": 500}
    api.fault("POST", r"/v2.1/servers$", times=5, **kw)
    with pytest.raises(CloudError, match="create server"):
        cloud.boot(_spec())
    assert api.calls("POST", r"/servers$") == ["POST /v2.1/servers"]


@pytest.mark.parametrize("call", ["security_group", "floating_ip", "snapshot", "patch"])
def test_other_creates_are_never_retried(cloud: Cloud, api: HTTPCloud, call: str) -> None:
    if call == "security_group":
        api.fault("POST", r"/security-groups$", times=5, status=503)
        with pytest.raises(CloudError):
            cloud.create_security_group("g", ssh_cidr="10.0.0.0/8", tags=["snapbuild"])
        assert len(api.calls("POST", r"/security-groups$")) == 1
    elif call == "floating_ip":
        api.fault("POST", r"/floatingips$", times=5, reset=True)
        with pytest.raises(CloudError):
            cloud.create_floating_ip(floating_network_id="ext-1", port_id="p", tags=["snapbuild"])
        assert len(api.calls("POST", r"/floatingips$")) == 1
    elif call == "snapshot":
        server = cloud.boot(_spec())
        api.fault("POST", r"/action$", times=5, status=503)
        with pytest.raises(CloudError):
            cloud.snapshot(server.id, "img", {})
        assert len(api.calls("POST", r"/action$")) == 1
    else:
        api.fault("PATCH", r"/images/", times=5, status=503)
        with pytest.raises(CloudError):
            cloud.finish_image("base-1", properties={"a": "b"})
        assert len(api.calls("PATCH")) == 1


@pytest.mark.parametrize(("fault", "open_"), [({"status": 400}, False), ({"status": 409}, False),
                                               ({"status": 503}, True), ({"status": 504}, True),
                                               ({"reset": True}, True)])
def test_a_failed_snapshot_may_still_be_made_unless_nova_refused_it(cloud: Cloud, api: HTTPCloud,
                                                                   fault: dict[str, Any], open_: bool) -> None:
    """What capture's settle window keys on: Nova's own 4xx made nothing; no answer or a gateway's 5xx may have."""
    server = cloud.boot(_spec())
    api.fault("POST", r"/action$", times=1, **fault)
    with pytest.raises(CloudError) as err:
        cloud.snapshot(server.id, "img", {})
    assert may_still_be_made(err.value) is open_
    assert may_still_be_made(KeyboardInterrupt()) is True


@pytest.mark.parametrize(("method", "path", "status", "message"), [
    ("POST", r"/v2.1/servers$", 403, "Quota exceeded for instances: Requested 1, but already used 10 of 10 "
                                     "instances"),
    ("POST", r"/floatingips$", 409, "Quota exceeded for resources: ['floatingip']."),
])
def test_over_quota_is_reported_with_details_and_not_retried(cloud: Cloud, api: HTTPCloud, method: str, path: str,
                                                             status: int, message: str) -> None:
    kind = "forbidden" if status == 403 else "NeutronError"
    body = {kind: {"code": status, "message": message}} if status == 403 else \
        {"NeutronError": {"type": "OverQuota", "message": message, "detail": ""}}
    api.fault(method, path, times=5, status=status, body=body)
    with pytest.raises(QuotaExceeded) as err:
        if "servers" in path:
            cloud.boot(_spec())
        else:
            cloud.create_floating_ip(floating_network_id="ext-1", port_id="p", tags=[])
    assert message in str(err.value)
    assert len(api.calls(method, path)) == 1


# ---- finishing an image -----------------------------------------------------------------------------------

def test_finish_image_sends_one_exact_json_patch_on_the_id(cloud: Cloud, api: HTTPCloud) -> None:
    api.add_image("img-s", "snap", image_type="snapshot", instance_uuid="srv-1", os_distro="ubuntu",
                  hw_firmware_type="uefi", owner_project_name="demo").update(visibility="private", tags=["snapbuild"])
    ops = cloud.finish_image("img-s", properties={"image_type": "image", "os_distro": "ubuntu", "hw_disk_bus": "virtio"},
                             remove=["instance_uuid", "owner_project_name", "hw_firmware_type", "not_there",
                                     "stores"],
                             tags=["marketplace"], visibility="shared", min_disk=8, min_ram=1024)
    expected = [
        {"op": "remove", "path": "/hw_firmware_type"},
        {"op": "remove", "path": "/instance_uuid"},
        {"op": "remove", "path": "/owner_project_name"},
        {"op": "add", "path": "/hw_disk_bus", "value": "virtio"},
        {"op": "replace", "path": "/image_type", "value": "image"},
        {"op": "replace", "path": "/min_disk", "value": 8},
        {"op": "replace", "path": "/min_ram", "value": 1024},
        {"op": "replace", "path": "/tags", "value": ["marketplace"]},
        {"op": "replace", "path": "/visibility", "value": "shared"},
    ]
    assert ops == expected
    patch = [r for r in api.m.request_history if r.method == "PATCH"]
    assert len(patch) == 1
    assert patch[0].url.endswith("/v2/images/img-s")
    assert patch[0].headers["Content-Type"] == "application/openstack-images-v2.1-json-patch"
    assert patch[0].json() == expected
    image = cloud.get_image("img-s")
    assert "instance_uuid" not in image.properties and image.properties["image_type"] == "image"


def test_finish_image_sets_protected_and_os_hidden_in_the_same_patch(cloud: Cloud, api: HTTPCloud) -> None:
    api.add_image("img-p", "snap").update(visibility="private")
    ops = cloud.finish_image("img-p", properties={}, protected=True, hidden=True, visibility="public")
    assert ops == [{"op": "replace", "path": "/os_hidden", "value": True},
                   {"op": "replace", "path": "/protected", "value": True},
                   {"op": "replace", "path": "/visibility", "value": "public"}]
    assert [r.json() for r in api.m.request_history if r.method == "PATCH"] == [ops]
    assert cloud.finish_image("img-p", properties={}, protected=False, hidden=False) == [
        {"op": "replace", "path": "/os_hidden", "value": False}, {"op": "replace", "path": "/protected", "value": False}]


def test_finish_image_sends_no_os_hidden_false_to_a_glance_without_the_field(cloud: Cloud, api: HTTPCloud) -> None:
    del api.add_image("img-old", "snap")["os_hidden"]      # image API before 2.7: it would become a property
    assert cloud.finish_image("img-old", properties={}, hidden=False) == []
    assert cloud.finish_image("img-old", properties={}, hidden=True) == [
        {"op": "add", "path": "/os_hidden", "value": True}]


def test_deleting_a_protected_image_unprotects_it_first(cloud: Cloud, api: HTTPCloud) -> None:
    api.add_image("img-guarded", "snap", protected=True)
    cloud.delete_image("img-guarded")
    assert api.images["img-guarded"]["status"] == "deleted"
    assert api.calls(pattern="/v2/images/img-guarded") == [
        "DELETE /v2/images/img-guarded", "GET /v2/images/img-guarded", "PATCH /v2/images/img-guarded",
        "DELETE /v2/images/img-guarded"]
    assert api.last_json("PATCH", "img-guarded") == [{"op": "replace", "path": "/protected", "value": False}]


def test_a_refused_delete_of_an_unprotected_image_is_still_an_error(cloud: Cloud, api: HTTPCloud) -> None:
    api.add_image("img-theirs", "snap")
    api.fault("DELETE", r"/images/img-theirs", status=403, body={"message": "You are not permitted"})
    with pytest.raises(CloudError, match="not permitted"):
        cloud.delete_image("img-theirs")
    assert api.calls("PATCH") == []


def test_marked_resources_are_found_with_their_marks(cloud: Cloud, api: HTTPCloud) -> None:
    from snapbuild.openstack.marks import Marks

    m = Marks.new(build_id="b7", installation_id="i1", recipe="k8s", host="h")
    cloud.boot(_spec(metadata=m.metadata()))
    cloud.create_security_group("g", ssh_cidr="::/0", tags=m.tags())
    servers = cloud.find_marked("server")
    groups = cloud.find_marked("security_group")
    assert [(s.kind, s.build_id, s.installation_id) for s in servers] == [("server", "b7", "i1")]
    assert [(g.name, g.build_id, g.expires_at) for g in groups] == [("g", "b7", m.expires_at)]
    rule = api.last_json("POST", r"/security-group-rules$")["security_group_rule"]
    assert (rule["ethertype"], rule["port_range_min"], rule["remote_ip_prefix"]) == ("IPv6", 22, "::/0")


def test_images_with_keeps_only_matching_images_even_when_glance_ignores_the_filter(cloud: Cloud,
                                                                                    api: HTTPCloud) -> None:
    # This fake, like a Glance or proxy that does not know a filter, answers every image to
    # ?snapbuild_catalogue_entry=…: the adapter must not hand another entry's images to the catalogue's rotation.
    api.add_image("a-1", "docker", snapbuild_catalogue_entry="docker-ce")
    api.add_image("b-1", "k8s", snapbuild_catalogue_entry="k8s-full")
    api.add_image("c-1", "claim", tags=["snapbuild", "snapbuild-claim"])
    assert [i.id for i in cloud.images_with(snapbuild_catalogue_entry="docker-ce")] == ["a-1"]
    assert [i.id for i in cloud.images_with(tag="snapbuild-claim")] == ["c-1"]
    asked = [r.url for r in api.m.request_history if r.method == "GET" and "/v2/images?" in r.url]
    assert any("snapbuild_catalogue_entry=docker-ce" in url for url in asked)     # the server is asked to filter
