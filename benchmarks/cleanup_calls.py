"""API calls `snapbuild cleanup` makes for a big project: 500 servers, of which 20 are this installation's expired
leftovers (each with a floating IP and a security group), 10 a build still in progress, 10 another
installation's, and the rest not snapbuild's at all.

Real openstacksdk and keystoneauth run against requests-mock at the HTTP boundary; every list answers in pages
(like Nova's `max_limit`, Neutron's and Glance's page sizes) with next links, so the counts show whether the
sweep lists by tag server-side and follows pages, and that it makes one delete per leftover plus its waits.

    PYTHONPATH=. python benchmarks/cleanup_calls.py [--servers 500 --leftovers 20 --page 25]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import requests_mock
from openstack import connection
from openstack.fixture import connection as fixture_connection

from snapbuild.openstack import marks
from snapbuild.openstack.cleanup import CleanupSettings, Sweep, _Local, table
from snapbuild.openstack.cloud import NO_HIDDEN_RETRIES, Cloud

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ME, OTHER = "inst-me", "inst-other"
IDENTITY = "https://identity.example.com"


class Project:
    def __init__(self, servers: int, leftovers: int, page: int) -> None:
        self.page = page
        self.servers: dict[str, dict[str, Any]] = {}
        self.fips: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.gets_after_delete: collections.Counter[str] = collections.Counter()
        kinds = ["left"] * leftovers + ["running"] * 10 + ["other"] * 10
        for i in range(servers):
            sid = f"srv-{i:04d}"
            kind = kinds[i] if i < len(kinds) else "user"
            server: dict[str, Any] = {"id": sid, "name": f"vm-{i}", "status": "ACTIVE", "metadata": {}, "tags": [],
                                      "links": [], "OS-EXT-STS:task_state": None}
            if kind != "user":
                build = f"20261122{i:06d}-{i:08x}"
                mk = marks.Marks.new(build_id=build, installation_id=OTHER if kind == "other" else ME,
                                     recipe="k8s", host="h", now=NOW - (timedelta(minutes=5) if kind == "running"
                                                                       else timedelta(hours=8)))
                server.update(name=f"snapbuild-k8s-{build}", metadata=mk.metadata(), tags=[marks.TAG])
                self.fips[f"fip-{i}"] = {"id": f"fip-{i}", "floating_ip_address": "203.0.113.1",
                                         "description": f"snapbuild build {build}", "tags": mk.tags()}
                self.groups[f"sg-{i}"] = {"id": f"sg-{i}", "name": f"snapbuild-k8s-{build}-ssh", "tags": mk.tags()}
            self.servers[sid] = server

    def paged(self, items: list[dict[str, Any]], query: dict[str, str], base: str, key: str,
              link_key: str) -> dict[str, Any]:
        items = sorted(items, key=lambda x: x["id"])
        marker = query.pop("marker", None)
        if marker:
            items = [x for x in items if x["id"] > marker]
        limit = min(int(query.pop("limit", self.page)), self.page)
        page, more = items[:limit], len(items) > limit
        body: dict[str, Any] = {key: page}
        if more:
            href = f"{base}?{urlencode({**query, 'marker': page[-1]['id'], 'limit': limit})}"
            if link_key == "next":
                body["next"] = href[href.index("/v2/"):]
            else:
                body[link_key] = [{"rel": "next", "href": href}]
        return body

    def handle(self, request: Any, context: Any) -> str:
        url = urlparse(request.url)
        host, path = url.netloc.split(".")[0], url.path
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        status, body = self.route(request.method, host, path, query, context)
        context.status_code = status
        return "" if body is None else json.dumps(body)

    def route(self, method: str, host: str, path: str, query: dict[str, str], context: Any) -> tuple[int, Any]:
        if host == "identity":
            if path == "/v3/auth/tokens":
                context.headers["X-Subject-Token"] = "tok"
                return 201, FX.v3_token
            return 200, {"version": {"id": "v3.14", "status": "stable", "links": [
                {"rel": "self", "href": IDENTITY + "/v3/"}]}}
        if host == "compute":
            return self.compute(method, path[len("/v2.1"):], query)
        if host == "network":
            return self.network(method, path[len("/v2.0"):], query)
        if host == "image":
            if path == "/":
                return 200, {"versions": [{"id": "v2.16", "status": "CURRENT",
                                           "links": [{"rel": "self", "href": "https://image.example.com/v2/"}]}]}
            return 200, self.paged([], query, "https://image.example.com/v2/images", "images", "next")
        if host == "block-storage":
            if path in ("", "/"):
                return 200, {"versions": [{"id": "v3.0", "status": "CURRENT", "version": "3.70",
                                           "min_version": "3.0", "links": [
                                               {"rel": "self", "href": "https://block-storage.example.com/v3/"}]}]}
            return 200, {"volumes": []}
        raise AssertionError(f"{method} {host} {path}")

    def compute(self, method: str, p: str, query: dict[str, str]) -> tuple[int, Any]:
        if p in ("", "/"):
            return 200, {"version": {"id": "v2.1", "status": "CURRENT", "min_version": "2.1", "version": "2.96",
                                     "links": [{"rel": "self", "href": "https://compute.example.com/v2.1/"}]}}
        if p == "/servers/detail":
            found = list(self.servers.values())
            if "tags" in query:
                found = [s for s in found if query["tags"] in s["tags"]]
            return 200, self.paged(found, query, "https://compute.example.com/v2.1/servers/detail", "servers",
                                   "servers_links")
        if p == "/os-keypairs":
            return 200, {"keypairs": []}
        m = re.fullmatch(r"/servers/([^/]+)", p)
        if m:
            server = self.servers.get(m.group(1))
            if server is None:
                return 404, {"itemNotFound": {"code": 404, "message": "not found"}}
            if method == "DELETE":
                server["deleting"] = 2        # gone after two more GETs, like a real delete
                return 204, None
            if "deleting" in server:
                server["deleting"] -= 1
                if server["deleting"] <= 0:
                    del self.servers[m.group(1)]
                    return 404, {"itemNotFound": {"code": 404, "message": "not found"}}
                return 200, {"server": dict(server, status="ACTIVE", **{"OS-EXT-STS:task_state": "deleting"})}
            return 200, {"server": server}
        raise AssertionError(f"compute {method} {p}")

    def network(self, method: str, p: str, query: dict[str, str]) -> tuple[int, Any]:
        if p in ("", "/"):
            return 200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                       "links": [{"rel": "self", "href": "https://network.example.com/v2.0/"}]}]}
        stores = {"floatingips": self.fips, "security-groups": self.groups, "ports": {}}
        m = re.fullmatch(r"/(floatingips|security-groups|ports)(/([^/]+))?", p)
        if not m:
            raise AssertionError(f"network {method} {p}")
        store = stores[m.group(1)]
        key = {"floatingips": "floatingips", "security-groups": "security_groups", "ports": "ports"}[m.group(1)]
        if m.group(3):
            if method == "DELETE" and store.pop(m.group(3), None) is not None:
                return 204, None
            return 404, {"NeutronError": {"type": "NotFound", "message": "not found"}}
        found = [x for x in store.values() if "tags" not in query or query["tags"] in x["tags"]]
        return 200, self.paged(found, query, f"https://network.example.com/v2.0/{m.group(1)}", key, key + "_links")


FX = fixture_connection.ConnectionFixture()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=500)
    parser.add_argument("--leftovers", type=int, default=20)
    parser.add_argument("--page", type=int, default=25, help="server-side page size of every list")
    args = parser.parse_args()
    FX.setUp()
    project = Project(args.servers, args.leftovers, args.page)
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    with requests_mock.Mocker() as mocker:
        mocker.register_uri(requests_mock.ANY, re.compile(r"https://.*"), text=project.handle)
        conn = connection.Connection(auth_url=IDENTITY + "/v3", username="u", password="p", project_name="p",
                                     user_domain_name="Default", project_domain_name="Default",
                                     region_name="RegionOne", **NO_HIDDEN_RETRIES)
        cloud = Cloud(conn, name="bench", clock=lambda: clock[0], sleep=sleep)
        cloud.authorize()
        start = len(mocker.request_history)
        report = Sweep(cloud, CleanupSettings(), local=_Local(live_builds=frozenset(), abandoned={}), me=ME,
                       now=NOW).run()
        history = mocker.request_history[start:]

    counts: collections.Counter[str] = collections.Counter()
    for r in history:
        path = urlparse(r.url).path
        path = re.sub(r"/(srv|fip|sg)-\d+", r"/{\1}", path)
        path = re.sub(r"/v3/[0-9a-f]{32}", "/v3/{project}", path)
        counts[f"{r.method:<6} {urlparse(r.url).netloc.split('.')[0]:<13} {path}"] += 1
    print(table(report, dry_run=False).splitlines()[-1])
    print(f"project: {args.servers} servers ({args.leftovers} leftovers of this installation, 10 running builds, "
          f"10 another installation's), page size {args.page}")
    for line, n in sorted(counts.items(), key=lambda kv: (kv[0].split()[0] != "GET", kv[0])):
        print(f"{n:5d}  {line}")
    lists = sum(n for k, n in counts.items() if k.startswith("GET") and "{" not in k.split()[-1])
    deletes = sum(n for k, n in counts.items() if k.startswith("DELETE"))
    waits = sum(n for k, n in counts.items() if k.startswith("GET") and "{srv}" in k)
    print(f"total {len(history)} calls: {lists} list/discovery GETs, {deletes} DELETEs "
          f"({deletes / max(args.leftovers, 1):.1f} per leftover build: server, floating IP, security group), "
          f"{waits} GETs waiting for servers to go ({waits / max(args.leftovers, 1):.1f} per server), "
          f"{clock[0]:.0f} s of (simulated) polling sleeps")
    tagged = args.leftovers + 20
    print(f"servers listed by tag: {tagged} of {args.servers} → {-(-tagged // args.page)} page(s) "
          f"(listing all would take {-(-args.servers // args.page)})")


if __name__ == "__main__":
    main()
