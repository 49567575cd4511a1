"""The snapshot build end to end at the HTTP edge: what is created, what is undone, what the image carries."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from httpcloud import FakeClock, HTTPCloud

from snapbuild.errors import BuildError, CloudError, UserError
from snapbuild.openstack.cloud import Cloud
from snapbuild.openstack.model import Address, FloatingIP, Server
from snapbuild.openstack.settings import SnapshotSettings
from snapbuild.openstack.snapshot import PreflightFailed, build_snapshot, ssh_address
from snapbuild.run.context import Reporter

if TYPE_CHECKING:
    from snapbuild.plan import Plan

STEPS = ["preflight", "boot builder", "power off (no provisioning)", "capture", "finish image", "manifest", "clean up"]
BUILDER = ["floating_ip", "server", "security_group"]        # reverse order of creation


def _settings(**kw: object) -> SnapshotSettings:
    values: dict[str, Any] = {"flavor": "m1.small", "networks": ("private",), "floating_network": "public",
                    "no_provision": True, "properties": {"os_admin_user": "admin", "extra": "1"},
                    "tags": ("marketplace",)}
    values.update(kw)
    return SnapshotSettings(**values)


def _deleted(api: HTTPCloud) -> list[str]:
    kinds = {"floatingips": "floating_ip", "servers": "server", "security-groups": "security_group",
             "images": "image", "volumes": "volume"}
    out = []
    for call in api.deletes():
        match = re.search(r"/(floatingips|servers|security-groups|images|volumes)/", call)
        assert match, call
        out.append(kinds[match.group(1)])
    return out


def _ledgers(state: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state / "builds").glob("*.json"))] \
        if (state / "builds").is_dir() else []


class InterruptAt(Reporter):
    """Ctrl-C right before (step started) or right after (step finished) one named step."""

    def __init__(self, when: str, step: str) -> None:
        super().__init__(io.StringIO())
        self.when, self.step, self.fired = when, step, False

    def step_started(self, name: str, *, level: Any = "step") -> None:
        if self.when == "before" and name == self.step and not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        super().step_started(name, level=level)

    def step_finished(self, name: str, seconds: float, ok: bool, *, level: Any = "step") -> None:
        super().step_finished(name, seconds, ok, level=level)
        if self.when == "after" and name == self.step and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


# ---- the good path -------------------------------------------------------------------------------------------

def test_no_provision_build_gives_active_image_with_clean_properties(cloud: Cloud, api: HTTPCloud, plan: Plan,
                                                                    isolated_state: Path) -> None:
    out = io.StringIO()
    result = build_snapshot(_settings(), plan, Reporter(out), cloud=cloud)
    image = api.images[result.image_id]
    assert image["status"] == "active" and image["size"] and image["checksum"]
    for key in ("instance_uuid", "base_image_ref", "owner_project_name", "owner_user_name", "owner_id", "user_id",
                "boot_roles", "image_location", "image_state", "hw_firmware_type", "snapbuild_expires_at",
                "snapbuild_installation_id", "snapbuild_host"):
        assert key not in image, key
    assert image["owner"] == "admin"                    # the owner field itself is untouched
    assert image["image_type"] == "image"
    assert image["os_admin_user"] == "admin"            # --property wins over the recipe
    assert image["hw_disk_bus"] == "virtio"             # the recipe's
    assert image["snapbuild_recipe"] == "docker-ce"
    assert image["snapbuild_base_image_id"] == "base-2"
    assert image["snapbuild_component_docker_ce"] == plan.components["docker-ce"]
    assert image["tags"] == ["marketplace"]
    assert (image["min_disk"], image["min_ram"]) == (plan.image.min_disk_gb, plan.image.min_ram_mb)
    assert _deleted(api) == BUILDER                     # the builder is gone, the image is not
    server_post = api.last_json("POST", r"/v2.1/servers$")["server"]
    assert server_post["tags"] == ["snapbuild"]
    assert server_post["metadata"]["snapbuild_build_id"] == result.build_id
    assert server_post["user_data"] and "keypair" not in json.dumps(server_post)
    assert _ledgers(isolated_state) == []              # a clean build leaves no ledger
    assert result.image_id in out.getvalue()
    assert json.loads(result.to_json())["image_id"] == result.image_id
    assert min(cloud_sleeps(cloud)) >= 1.0


def cloud_sleeps(cloud: Cloud) -> list[float]:
    sleeps: list[float] = cloud._sleep.__self__.sleeps  # type: ignore[attr-defined]
    return sleeps


def test_share_with_makes_the_image_shared_and_adds_members(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    result = build_snapshot(_settings(share_with=("proj-a", "proj-b")), plan, Reporter(io.StringIO()), cloud=cloud)
    assert api.images[result.image_id]["visibility"] == "shared"
    members = [r.json()["member"] for r in api.m.request_history if r.method == "POST" and r.url.endswith("/members")]
    assert members == ["proj-a", "proj-b"]


# ---- preflight: nothing is created ---------------------------------------------------------------------------

def test_bad_inputs_fail_in_preflight_with_close_matches_and_nothing_created(cloud: Cloud, api: HTTPCloud, plan: Plan,
                                                                            isolated_state: Path) -> None:
    with pytest.raises(UserError) as err:
        build_snapshot(_settings(flavor="m1.smal", networks=("privte",), base_image="ubuntu-24.4"), plan,
                       Reporter(io.StringIO()), cloud=cloud)
    assert "flavor 'm1.smal' not found" in err.value.message
    assert "network 'privte' not found" in err.value.message
    assert "image 'ubuntu-24.4' not found" in err.value.message
    assert "m1.small" in (err.value.hint or "") and "private" in (err.value.hint or "")
    assert err.value.exit_code == 2
    assert api.calls("POST", r"/v2") == [] and api.deletes() == []
    assert _ledgers(isolated_state) == []


def test_preflight_hands_over_every_problem_as_its_own_error(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    api.quota["instances"] = (2, 2)
    with pytest.raises(PreflightFailed) as err:
        build_snapshot(_settings(networks=("privte",), port="builder-prot"), plan, Reporter(io.StringIO()),
                       cloud=cloud)
    problems = err.value.problems
    assert [p.message.split(":")[0] for p in problems] == [
        "network 'privte' not found", "port 'builder-prot' not found",
        "the build does not fit the project's quota"]       # the quota is read even when other inputs are wrong
    assert all(p.hint for p in problems)
    assert err.value.message == "; ".join(p.message for p in problems)


def test_unknown_port_fails_in_preflight_with_close_matches(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    with pytest.raises(UserError) as err:
        build_snapshot(_settings(port="builder-prot", networks=()), plan, Reporter(io.StringIO()), cloud=cloud)
    assert "port 'builder-prot' not found" in err.value.message
    assert "builder-port" in (err.value.hint or "")
    assert api.calls("POST", r"/v2") == []


def test_a_given_port_is_used_instead_of_networks_and_a_temporary_group(cloud: Cloud, api: HTTPCloud,
                                                                       plan: Plan) -> None:
    build_snapshot(_settings(port="builder-port", networks=(), floating_network=None), plan,
                   Reporter(io.StringIO()), cloud=cloud)
    server_post = api.last_json("POST", r"/v2.1/servers$")["server"]
    assert server_post["networks"] == [{"port": "port-free"}]
    assert "security_groups" not in server_post
    assert api.calls("POST", r"/security-groups") == []


@pytest.mark.parametrize(("flavor_disk", "volume", "expect"), [
    (4, None, "flavor m1.small has a 4 GB disk; the build needs 8 GB (recipe 'docker-ce' disk_size_gb)"),
    (0, None, "flavor m1.small has no root disk of its own (disk 0); the build needs 8 GB"),
    (20, 6, "--volume-size 6 GB is smaller than the 8 GB the build needs"),
])
def test_a_root_disk_smaller_than_the_recipe_needs_fails_in_preflight(cloud: Cloud, api: HTTPCloud, plan: Plan,
                                                                      flavor_disk: int, volume: int | None,
                                                                      expect: str) -> None:
    api.flavors[0]["disk"] = flavor_disk
    with pytest.raises(UserError) as err:
        build_snapshot(_settings(volume_size_gb=volume), plan, Reporter(io.StringIO()), cloud=cloud)
    assert expect in err.value.message
    assert "8" in (err.value.hint or "") and err.value.exit_code == 2
    assert api.calls("POST", r"/v2") == [] and api.deletes() == []


def test_the_base_images_min_disk_counts_when_it_is_larger_than_the_recipes(cloud: Cloud, api: HTTPCloud,
                                                                          plan: Plan) -> None:
    for image in api.images.values():
        image["min_disk"] = 30
    with pytest.raises(UserError, match=r"the build needs 30 GB \(image .* min_disk\)"):
        build_snapshot(_settings(), plan, Reporter(io.StringIO()), cloud=cloud)
    assert api.calls("POST", r"/v2") == []


def test_quota_that_does_not_fit_fails_before_anything_exists(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    api.quota["instances"] = (2, 2)
    with pytest.raises(UserError, match="instances: need 1, 0 free"):
        build_snapshot(_settings(), plan, Reporter(io.StringIO()), cloud=cloud)
    assert api.calls("POST", r"/v2") == []


def test_blocked_hosts_without_mirror_refuse_unless_allowed(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    blocked = dataclasses.replace(plan, blocked_without_mirror=("registry.k8s.io/pause:3.10",))
    with pytest.raises(UserError, match=r"registry\.k8s\.io/pause"):
        build_snapshot(_settings(), blocked, Reporter(io.StringIO()), cloud=cloud)
    assert api.calls("POST", r"/v2") == []
    result = build_snapshot(_settings(allow_blocked=True), blocked, Reporter(io.StringIO()), cloud=cloud)
    assert api.images[result.image_id]["status"] == "active"


# ---- Ctrl-C before and after every step -----------------------------------------------------------------------

def _expected_after_interrupt(when: str, step: str) -> list[str]:
    index = STEPS.index(step) + (1 if when == "after" else 0)   # steps completed when the interrupt lands
    if index <= 1:
        return []
    if index <= 3:
        return BUILDER
    if index == 4:
        return ["image", *BUILDER]
    return BUILDER                                            # image finished and handed over


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", STEPS)
def test_interrupt_undoes_exactly_what_exists(cloud: Cloud, api: HTTPCloud, plan: Plan, isolated_state: Path,
                                              when: str, step: str) -> None:
    reporter = InterruptAt(when, step)
    with pytest.raises(KeyboardInterrupt):
        build_snapshot(_settings(), plan, reporter, cloud=cloud)
    assert reporter.fired
    assert _deleted(api) == _expected_after_interrupt(when, step)
    assert [s["status"] for s in api.servers.values()] in ([], ["DELETED"])
    assert api.floating_ips == {} and set(api.security_groups) == {"sg-default"}
    assert all(ledger["resources"] == [] for ledger in _ledgers(isolated_state))


# ---- failures ---------------------------------------------------------------------------------------------------

def test_server_error_fails_with_fault_console_tail_and_cleans_up(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    api.boot_result = "ERROR"
    out = io.StringIO()
    with pytest.raises(CloudError, match="server ERROR: No valid host was found"):
        build_snapshot(_settings(), plan, Reporter(out), cloud=cloud)
    assert _deleted(api) == ["server", "security_group"]
    text = out.getvalue()
    assert "step 'boot builder' failed" in text
    assert "| cloud-init: boot done" in text


def test_killed_snapshot_fails_at_once_and_deletes_partial_image(cloud: Cloud, api: HTTPCloud, plan: Plan,
                                                                 clock: FakeClock) -> None:
    api.snapshot_result = "killed"
    with pytest.raises(CloudError, match="went killed"):
        build_snapshot(_settings(), plan, Reporter(io.StringIO()), cloud=cloud)
    assert _deleted(api) == ["image", *BUILDER]
    assert clock.now - 1000.0 < 60


def test_failed_patch_deletes_the_partial_image(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    api.fault("PATCH", r"/images/", status=403, body={"message": "Forbidden to publicize"})
    with pytest.raises(CloudError, match="update image"):
        build_snapshot(_settings(visibility="public"), plan, Reporter(io.StringIO()), cloud=cloud)
    assert _deleted(api) == ["image", *BUILDER]
    assert len(api.calls("PATCH")) == 1


def test_server_create_reset_is_not_retried_and_a_half_made_server_is_swept(cloud: Cloud, api: HTTPCloud,
                                                                            plan: Plan) -> None:
    api.fault("POST", r"/v2.1/servers$", reset=True, after=True)    # Nova made it, the answer got lost
    with pytest.raises(CloudError, match="create server"):
        build_snapshot(_settings(), plan, Reporter(io.StringIO()), cloud=cloud)
    assert api.calls("POST", r"/v2.1/servers$") == ["POST /v2.1/servers"]
    assert _deleted(api) == ["server", "security_group"]
    assert [s["status"] for s in api.servers.values()] == ["DELETED"]


def test_keep_on_failure_keeps_everything_and_says_how_to_remove_it(cloud: Cloud, api: HTTPCloud, plan: Plan,
                                                                    isolated_state: Path) -> None:
    api.snapshot_result = "killed"
    out = io.StringIO()
    with pytest.raises(CloudError):
        build_snapshot(_settings(on_error="abort"), plan, Reporter(out), cloud=cloud)
    assert api.deletes() == []
    (ledger,) = _ledgers(isolated_state)
    assert ledger["status"] == "failed-kept"
    assert sorted(r["kind"] for r in ledger["resources"]) == ["floating_ip", "image", "security_group", "server"]
    text = out.getvalue()
    assert f"snapbuild cleanup --build-id {ledger['build_id']}" in text
    for resource in ledger["resources"]:
        assert resource["ref"] in text


def test_ssh_that_never_answers_fails_within_its_deadline_and_cleans_up(cloud: Cloud, api: HTTPCloud,
                                                                        plan: Plan) -> None:
    with socket.socket() as sock:                      # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api.server_address = "127.0.0.1"
    start = time.monotonic()
    with pytest.raises(BuildError) as err:
        build_snapshot(_settings(no_provision=False, floating_network=None, timeout_ssh=3, ssh_port=port), plan,
                       Reporter(io.StringIO()), cloud=cloud)
    assert time.monotonic() - start < 3 + 20          # its deadline, plus boot and cleanup at HTTP speed
    assert f"127.0.0.1:{port}" in str(err.value)
    assert _deleted(api) == ["server", "security_group"]


# ---- address choice ----------------------------------------------------------------------------------------------

def test_ssh_address_prefers_floating_then_named_network_and_ip_version() -> None:
    server = Server(id="s", name="s", status="ACTIVE", addresses=(
        Address(network="v6net", ip="2001:db8::5", version=6, kind="fixed"),
        Address(network="private", ip="10.0.0.5", version=4, kind="fixed"),
        Address(network="private", ip="fd00::5", version=6, kind="fixed")))
    assert ssh_address(server, FloatingIP(id="f", address="203.0.113.9"), network=None, ip_version=None) \
        == "203.0.113.9"
    assert ssh_address(server, None, network=None, ip_version=None) == "10.0.0.5"
    assert ssh_address(server, None, network="private", ip_version=6) == "fd00::5"
    assert ssh_address(server, None, network="v6net", ip_version=None) == "2001:db8::5"
    with pytest.raises(BuildError, match="no address"):
        ssh_address(server, None, network="v6net", ip_version=4)


# ---- boot from volume (tested at the HTTP layer only: the test cloud has no Cinder) -------------------------------

def test_volume_build_uploads_the_volume_instead_of_a_zero_byte_snapshot(cloud: Cloud, api: HTTPCloud,
                                                                          plan: Plan) -> None:
    result = build_snapshot(_settings(volume_size_gb=10), plan, Reporter(io.StringIO()), cloud=cloud)
    server_post = api.last_json("POST", r"/v2.1/servers$")["server"]
    (bdm,) = server_post["block_device_mapping_v2"]
    assert bdm["source_type"] == "volume" and bdm["delete_on_termination"] is False
    assert "imageRef" not in server_post or not server_post["imageRef"]
    assert [u["image_name"] for u in api.uploads] == [result.image_name]
    assert api.uploads[0]["disk_format"] == "qcow2"
    assert not any("createImage" in json.dumps(r.json()) for r in api.m.request_history
                   if r.method == "POST" and r.url.endswith("/action") and r.body)
    assert api.images[result.image_id]["status"] == "active"
    assert api.volumes == {}
    assert _deleted(api) == ["server", "floating_ip", "volume", "security_group"]


def test_volume_build_interrupted_after_capture_deletes_volume_and_image(cloud: Cloud, api: HTTPCloud,
                                                                          plan: Plan) -> None:
    with pytest.raises(KeyboardInterrupt):
        build_snapshot(_settings(volume_size_gb=10), plan, InterruptAt("after", "capture"), cloud=cloud)
    assert api.volumes == {}
    assert _deleted(api) == ["server", "image", "floating_ip", "volume", "security_group"]


# ---- API economy ---------------------------------------------------------------------------------------------------

def test_a_no_provision_build_makes_few_api_calls_and_polls_no_faster_than_1s(cloud: Cloud, api: HTTPCloud,
                                                                                plan: Plan, clock: FakeClock) -> None:
    build_snapshot(_settings(), plan, Reporter(io.StringIO()), cloud=cloud)
    calls = [c for c in api.calls() if not c.startswith(("GET /v3", "POST /v3", "GET /v2.1/ ", "GET / "))]
    writes = [c for c in calls if not c.startswith("GET")]
    # creates: group, its tag, its rule, server, floating IP + tag, stop, createImage, image tag, patch;
    # deletes: floating IP, server, group
    assert len(writes) == 13, writes
    assert len(calls) <= 45, calls
    assert clock.sleeps and min(clock.sleeps) >= 1.0


def test_a_kept_ssh_builder_can_be_logged_into(cloud: Cloud, api: HTTPCloud, plan: Plan,
                                               isolated_state: Path) -> None:
    # The builder's key lived only in memory: a kept builder was unreachable. Now it is written 0600.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api.server_address = "127.0.0.1"
    out = io.StringIO()
    with pytest.raises(BuildError):
        build_snapshot(_settings(no_provision=False, floating_network=None, timeout_ssh=2, ssh_port=port,
                                 on_error="abort"), plan, Reporter(out), cloud=cloud)
    (ledger,) = _ledgers(isolated_state)
    key = isolated_state / "builds" / f"{ledger['build_id']}.key"
    assert (key.stat().st_mode & 0o777) == 0o600 and "OPENSSH PRIVATE KEY" in key.read_text()
    assert f"log in with: ssh -i {key} -p {port} snapbuild@127.0.0.1" in out.getvalue()
    assert api.deletes() == []


def test_events_stream_a_snapshot_build(cloud: Cloud, api: HTTPCloud, plan: Plan, isolated_state: Path) -> None:
    from snapbuild.run.monitor import EventStream, Monitors

    events = io.StringIO()
    result = build_snapshot(_settings(), plan, Monitors(Reporter(io.StringIO()), EventStream(events)), cloud=cloud)
    stream = [json.loads(line) for line in events.getvalue().splitlines()]
    assert stream[0]["event"] == "build_started" and stream[0]["builder"] == "openstack-snapshot"
    finished = [e["step"] for e in stream if e["event"] == "step_finished"]
    assert finished == ["preflight", "boot builder", "power off (no provisioning)", "capture", "finish image",
                        "manifest", "clean up"]
    created = {e["kind"] for e in stream if e["event"] == "resource_created"}
    assert created == {"security_group", "server", "floating_ip", "image"}
    assert [e["ref"] for e in stream if e["event"] == "resource_released"] == [result.image_id]
    assert stream[-1]["event"] == "result" and stream[-1]["ok"] and stream[-1]["image_id"] == result.image_id


def test_on_error_ask_shows_how_to_log_in_then_cleans_up_as_told(cloud: Cloud, api: HTTPCloud, plan: Plan,
                                                                 isolated_state: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api.server_address = "127.0.0.1"
    out = io.StringIO()
    asked: list[tuple[str, bool, bool]] = []
    key_files: list[Path] = []

    def ask(step: str, can_retry: bool) -> Any:
        key_files.extend((isolated_state / "builds").glob("*.key"))
        asked.append((step, can_retry, all(k.exists() for k in key_files)))
        return "cleanup"

    with pytest.raises(BuildError):
        build_snapshot(_settings(no_provision=False, floating_network=None, timeout_ssh=2, ssh_port=port,
                                 on_error="ask"), plan, Reporter(out), cloud=cloud, ask=ask)
    assert asked == [("connect", True, True)] and len(key_files) == 1
    assert f"log in with: ssh -i {key_files[0]} -p {port} snapbuild@127.0.0.1" in out.getvalue()
    assert not key_files[0].exists()                     # cleaned up with the builder, as chosen
    assert _deleted(api) == ["server", "security_group"]


# ---- the image options (named as `openstack image create` names them) --------------------------------------------

def test_image_options_reach_the_finishing_patch(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    settings = _settings(image_name="golden-docker", min_disk_gb=12, min_ram_mb=4096, protected=True, hidden=True,
                         visibility="community")
    result = build_snapshot(settings, plan, Reporter(io.StringIO()), cloud=cloud)
    assert result.image_name == "golden-docker"
    patches = [r.json() for r in api.m.request_history if r.method == "PATCH"]
    assert len(patches) == 1                                       # one JSON-patch finishes the image
    fields = {op["path"]: (op["op"], op["value"]) for op in patches[0] if op["op"] != "remove"}
    assert fields["/min_disk"] == ("replace", 12) and fields["/min_ram"] == ("replace", 4096)
    assert fields["/protected"] == ("replace", True) and fields["/os_hidden"] == ("replace", True)
    assert fields["/visibility"] == ("replace", "community")
    image = api.images[result.image_id]
    assert (image["min_disk"], image["min_ram"], image["protected"], image["os_hidden"], image["visibility"]) == (
        12, 4096, True, True, "community")


def test_without_the_options_the_recipe_s_minimums_and_no_protection(cloud: Cloud, api: HTTPCloud, plan: Plan) -> None:
    build_snapshot(_settings(), plan, Reporter(io.StringIO()), cloud=cloud)
    (patch,) = [r.json() for r in api.m.request_history if r.method == "PATCH"]
    paths = {op["path"] for op in patch}
    assert "/protected" not in paths and "/os_hidden" not in paths   # already false: nothing to change
    fields = {op["path"]: op["value"] for op in patch if op["op"] != "remove"}
    assert (fields["/min_disk"], fields["/min_ram"]) == (plan.image.min_disk_gb, plan.image.min_ram_mb)


def test_a_min_disk_larger_than_the_builder_s_disk_fails_in_preflight(cloud: Cloud, api: HTTPCloud,
                                                                     plan: Plan) -> None:
    with pytest.raises(UserError, match=r"has a 20 GB disk; the build needs 30 GB \(--min-disk\)"):
        build_snapshot(_settings(min_disk_gb=30), plan, Reporter(io.StringIO()), cloud=cloud)
    assert api.calls("POST", r"/v2") == []


def test_a_protected_image_is_still_undone_when_the_build_fails_after_the_patch(cloud: Cloud, api: HTTPCloud,
                                                                               plan: Plan,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    read = cloud.get_image

    def fails_once_patched(image_id: str) -> Any:
        if api.calls("PATCH", rf"/images/{image_id}$"):
            raise CloudError(f"image {image_id}: 503 Service Unavailable")
        return read(image_id)

    monkeypatch.setattr(cloud, "get_image", fails_once_patched)
    with pytest.raises(CloudError, match="503"):
        build_snapshot(_settings(protected=True), plan, Reporter(io.StringIO()), cloud=cloud)
    (image_id,) = [i for i, image in api.images.items() if image.get("image_type") == "image"]
    assert api.images[image_id]["status"] == "deleted"
    # Glance refused the first DELETE (protected), so the undo unprotected the image and deleted it.
    assert len(api.calls("DELETE", rf"/v2/images/{image_id}$")) == 2
    assert api.calls(pattern=rf"/v2/images/{image_id}$")[-3:] == [
        f"GET /v2/images/{image_id}", f"PATCH /v2/images/{image_id}", f"DELETE /v2/images/{image_id}"]
    assert api.last_json("PATCH", rf"/images/{image_id}$") == [{"op": "replace", "path": "/protected", "value": False}]
