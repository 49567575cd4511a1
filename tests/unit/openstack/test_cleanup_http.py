"""The cloud sweep at the HTTP edge: what is found, what is left alone, and the order of the deletes."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests_mock
from httpcloud import FakeClock, HTTPCloud

from snapbuild.errors import CloudError
from snapbuild.ledger import Ledger, installation_id
from snapbuild.openstack import marks
from snapbuild.openstack.cleanup import CleanupSettings, Sweep, _Local, parse_duration, read_ledgers, table
from snapbuild.openstack.cloud import Cloud

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ME = "inst-me"
OTHER = "inst-other"


class SweepCloud(HTTPCloud):
    """HTTPCloud plus tagged Neutron ports (list by tag, delete) and Nova keypairs."""

    def __init__(self, mocker: requests_mock.Mocker) -> None:
        super().__init__(mocker)
        self.keypairs: dict[str, dict[str, Any]] = {}

    def _network(self, method: str, path: str, query: dict[str, str], body: Any, context: Any) -> tuple[int, Any]:
        p = path[len("/v2.0"):]
        if p == "/ports" and "tags" in query:
            return 200, {"ports": [pt for pt in self.ports.values() if query["tags"] in pt.get("tags", [])]}
        m = re.fullmatch(r"/ports/([^/]+)", p)
        if m and method == "DELETE":
            if self.ports.pop(m.group(1), None) is None:
                return 404, {"NeutronError": {"type": "PortNotFound", "message": "Port not found"}}
            return 204, None
        return super()._network(method, path, query, body, context)

    def _compute(self, method: str, path: str, query: dict[str, str], body: Any, context: Any) -> tuple[int, Any]:
        p = path[len("/v2.1"):]
        if p == "/os-keypairs":
            return 200, {"keypairs": [{"keypair": k} for k in self.keypairs.values()]}
        m = re.fullmatch(r"/os-keypairs/([^/]+)", p)
        if m and method == "DELETE":
            return (202, None) if self.keypairs.pop(m.group(1), None) else (404, {"itemNotFound": {"code": 404}})
        return super()._compute(method, path, query, body, context)

    # -- scenario helpers
    def leftover_build(self, build_id: str, *, owner: str = ME, age: timedelta = timedelta(hours=8),
                       lifetime: timedelta = timedelta(hours=6), with_port: bool = False) -> marks.Marks:
        mk = marks.Marks.new(build_id=build_id, installation_id=owner, recipe="docker-ce", host="h",
                             lifetime=lifetime, now=NOW - age)
        sid = f"srv-{build_id[-8:]}"
        self.servers[sid] = {"id": sid, "name": f"snapbuild-docker-ce-{build_id}", "status": "ACTIVE",
                             "task_state": None, "spec": {"imageRef": "base-1"}, "metadata": mk.metadata(),
                             "tags": [marks.TAG], "polls": 5}
        self.ports[f"port-{sid}"] = {"id": f"port-{sid}", "network_id": "net-1", "device_id": sid}
        self.floating_ips[f"fl-{build_id[-8:]}"] = {"id": f"fl-{build_id[-8:]}", "floating_ip_address": "203.0.113.9",
                                                   "description": f"snapbuild build {build_id}", "tags": mk.tags()}
        self.security_groups[f"sg-{build_id[-8:]}"] = {"id": f"sg-{build_id[-8:]}", "tags": mk.tags(),
                                                      "name": f"snapbuild-docker-ce-{build_id}-ssh", "description": ""}
        image = self.add_image(f"img-{build_id[-8:]}", "docker-ce-partial", **mk.metadata())
        image.update(status="queued", tags=[marks.TAG], visibility="private")
        if with_port:
            self.ports[f"tp-{build_id[-8:]}"] = {"id": f"tp-{build_id[-8:]}", "network_id": "net-1",
                                                 "device_id": "", "name": "", "tags": mk.tags()}
        return mk


@pytest.fixture
def api() -> Iterator[SweepCloud]:
    with requests_mock.Mocker() as mocker:
        yield SweepCloud(mocker)


def _sweep(cloud: Cloud, local: _Local | None = None, **kw: Any) -> Sweep:
    return Sweep(cloud, CleanupSettings(**kw), local=local or _Local(live_builds=frozenset(), abandoned={}),
                 me=ME, now=NOW)


def _kinds(api: HTTPCloud) -> list[str]:
    out = []
    for call in api.deletes():
        m = re.search(r"/(servers|floatingips|ports|security-groups|volumes|images|os-keypairs)/", call)
        assert m, call
        out.append(m.group(1))
    return out


B1 = "20261122020000-aaaaaaaa"
B2 = "20261122020000-bbbbbbbb"
B3 = "20261122020000-cccccccc"


def test_deletes_in_dependency_order_with_waits(cloud: Cloud, api: SweepCloud) -> None:
    api.leftover_build(B1, with_port=True)
    api.keypairs[f"snapbuild-{B1}"] = {"name": f"snapbuild-{B1}", "fingerprint": "x", "public_key": "ssh-ed25519 A"}
    ledger_local = _Local(live_builds=frozenset(), abandoned={B1: _FakeLedger(B1)})   # owns the keypair
    report = _sweep(cloud, ledger_local).run()

    assert _kinds(api) == ["servers", "floatingips", "ports", "security-groups", "images", "os-keypairs"]
    assert all(o.action == "deleted" for o in report.outcomes)
    # the server delete is waited for: a GET after the DELETE that answered 404
    calls = [c for c in api.calls() if "/servers/srv-" in c]
    assert calls[0].startswith("DELETE") and calls[-1].startswith("GET")
    assert api.servers[f"srv-{B1[-8:]}"]["status"] == "DELETED" and not api.security_groups.keys() - {"sg-default"}


def test_security_group_in_use_is_retried_until_the_port_is_gone(cloud: Cloud, api: SweepCloud,
                                                                  clock: FakeClock) -> None:
    api.leftover_build(B1)
    in_use = {"NeutronError": {"type": "SecurityGroupInUse", "message": f"Security Group sg-{B1[-8:]} in use."}}
    fault = api.fault("DELETE", r"security-groups/sg-", times=3, status=409, body=in_use)
    report = _sweep(cloud).run()
    assert fault.hits == 3
    assert len(api.calls("DELETE", r"security-groups")) == 4
    assert all(o.action == "deleted" for o in report.outcomes)
    assert f"sg-{B1[-8:]}" not in api.security_groups
    assert clock.sleeps and all(s >= 1.0 for s in clock.sleeps)    # polled, never hammered


def test_security_group_still_in_use_at_the_deadline_fails_that_row_only(cloud: Cloud, api: SweepCloud) -> None:
    api.leftover_build(B1)
    api.fault("DELETE", r"security-groups/sg-", times=1000, status=409,
              body={"NeutronError": {"type": "SecurityGroupInUse", "message": "in use"}})
    report = _sweep(cloud, group_timeout=30).run()
    failed = [o for o in report.outcomes if o.action.startswith("failed")]
    assert [o.candidate.kind for o in failed] == ["security_group"] and "409" in failed[0].action
    assert "images" in _kinds(api)      # the sweep went on after the failure


def test_filters_by_installation_expiry_and_build_id(cloud: Cloud, api: SweepCloud) -> None:
    api.leftover_build(B1)                                               # mine, expired
    api.leftover_build(B2, owner=OTHER)                                  # another installation's, expired
    api.leftover_build(B3, age=timedelta(minutes=30))                    # mine, running, not expired
    api.servers["srv-plain"] = {"id": "srv-plain", "name": f"snapbuild-docker-ce-{B1}x", "status": "ACTIVE",
                                "task_state": None, "spec": {}, "metadata": {}, "tags": [], "polls": 5}
    api.security_groups["sg-user"] = {"id": "sg-user", "name": "snapbuild-look-alike", "tags": [], "description": ""}

    def ids(sweep: Sweep) -> set[str]:
        return {c.id[-8:] for c in sweep.find()}

    assert ids(_sweep(cloud)) == {B1[-8:]}
    assert ids(_sweep(cloud, all_owners=True)) == {B1[-8:], B2[-8:]}
    assert ids(_sweep(cloud, older_than=timedelta(minutes=20))) == {B1[-8:], B3[-8:]}
    assert ids(_sweep(cloud, older_than=timedelta(hours=1))) == {B1[-8:]}
    assert ids(_sweep(cloud, build_id=B3)) == {B3[-8:]}                     # named: whatever its age
    assert ids(_sweep(cloud, build_id=B2)) == set()                          # not ours
    assert ids(_sweep(cloud, all_owners=True, older_than=timedelta(0))) == {B1[-8:], B2[-8:], B3[-8:]}
    # a build this host still runs is never touched
    live = _Local(live_builds=frozenset({B3}), abandoned={})
    assert ids(_sweep(cloud, live, build_id=B3)) == set()


def test_dry_run_lists_exactly_what_a_run_deletes_and_changes_nothing(cloud: Cloud, api: SweepCloud) -> None:
    api.leftover_build(B1)
    api.leftover_build(B2, owner=OTHER)
    dry = _sweep(cloud, dry_run=True).run()
    assert api.deletes() == []
    listed = {(o.candidate.kind, o.candidate.id) for o in dry.outcomes}
    assert all(o.action == "would delete" for o in dry.outcomes)
    real = _sweep(cloud).run()
    assert {(o.candidate.kind, o.candidate.id) for o in real.outcomes} == listed
    assert len(api.deletes()) == len(listed) == 4
    text = table(dry, dry_run=True)
    assert "would be removed (dry run)" in text and B1 in text and B2 not in text


def test_active_images_and_untagged_things_are_left_alone(cloud: Cloud, api: SweepCloud) -> None:
    mk = api.leftover_build(B1)
    api.add_image("img-done", "finished-but-tagged", **mk.metadata()).update(tags=[marks.TAG])   # active
    report = _sweep(cloud, all_owners=True, older_than=timedelta(0)).run()
    assert "img-done" not in {o.candidate.id for o in report.outcomes}
    assert api.images["base-1"]["status"] == "active" and "sg-default" in api.security_groups
    assert any("img-done" in s for s in report.skipped)


class _FakeLedger(Ledger):
    def __init__(self, build_id: str) -> None:
        super().__init__(Path("/nonexistent") / f"{build_id}.json",
                         {"build_id": build_id, "installation_id": ME, "status": "failed", "pid": 1,
                          "host": socket.gethostname(), "resources": []})

    def _save(self) -> None:
        pass


def test_abandoned_ledger_adds_pending_resources_resolved_by_name(cloud: Cloud, api: SweepCloud,
                                                                   isolated_state: Path) -> None:
    # A build killed between "create security group" and its ledger update: only `pending:<name>` is known,
    # and the group never got its tags. It is young (not expired), but its build is dead.
    name = f"snapbuild-docker-ce-{B1}-ssh"
    api.security_groups["sg-half"] = {"id": "sg-half", "name": name, "tags": [], "description": ""}
    api.security_groups["sg-same-name-other-build"] = {"id": "sg-x", "name": "snapbuild-docker-ce-ssh", "tags": [],
                                                       "description": ""}
    ledger = Ledger.create(build_id=B1, builder="openstack-snapshot", recipe="docker-ce")
    ledger.record("security_group", f"pending:{name}", name=name)
    ledger.finish("running")   # the process is gone: pid below is not alive
    data = json.loads(ledger.path.read_text())
    data["pid"] = 2 ** 22 + 7
    ledger.path.write_text(json.dumps(data))

    local = read_ledgers()
    assert B1 in local.abandoned
    report = Sweep(cloud, CleanupSettings(), local=local, me=installation_id(), now=NOW).run()
    assert [(o.candidate.id, o.candidate.reason, o.action) for o in report.outcomes] == [
        ("sg-half", "abandoned build (ledger)", "deleted")]
    assert "sg-same-name-other-build" in api.security_groups
    assert not ledger.path.exists()        # nothing left in it: the ledger goes too


def test_parse_duration() -> None:
    assert parse_duration("2h") == timedelta(hours=2) and parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("1.5d") == timedelta(hours=36)
    with pytest.raises(CloudError.__mro__[1]):   # SnapbuildError (UserError)
        parse_duration("soon")
