"""OpenStack's HTTP edge for unit tests: requests-mock answers shaped like the API reference.

Real openstacksdk and keystoneauth run on top (token, catalog, discovery, microversions); only the
services' answers are scripted here, with just enough state to walk a build: servers go BUILD → ACTIVE,
stop → SHUTOFF, createImage makes a queued image that turns active, deletes make things 404.
`fault()` injects what a real cloud cannot produce on demand: 5xx, connection resets, ERROR, killed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
import requests_mock
from openstack import connection
from openstack.fixture import connection as fixture_connection

from snapbuild.openstack.cloud import NO_HIDDEN_RETRIES

IDENTITY = "https://identity.example.com"
COMPUTE = "https://compute.example.com/v2.1"
IMAGE = "https://image.example.com/v2"
NETWORK = "https://network.example.com/v2.0"
NOVA_MAX = "2.96"


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    times: int
    status: int = 500
    body: Any = None
    reset: bool = False
    after: bool = False     # the service did the work, then the connection dropped
    hits: int = 0


@dataclass
class FakeClock:
    """Time that moves only when the code under test sleeps."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class HTTPCloud:
    def __init__(self, mocker: requests_mock.Mocker) -> None:
        self.m = mocker
        self.fx = fixture_connection.ConnectionFixture()
        self.fx.setUp()
        self.project_id = self.fx.project_id
        self.faults: list[Fault] = []
        # behaviour switches
        self.boot_result = "ACTIVE"          # or "ERROR"
        self.boot_fault = {"code": 500, "message": "No valid host was found. There are not enough hosts available.",
                           "created": "2026-11-22T01:00:00Z"}
        self.snapshot_result = "active"     # or "killed" / "stuck"
        self.stop_result = "SHUTOFF"        # or "stuck"
        self.quota = {"instances": (10, 0), "cores": (20, 0), "ram": (51200, 0)}
        self.net_quota = {"floatingip": (50, 0), "security_group": (10, 1), "security_group_rule": (100, 4)}
        self.flavors = [{"id": "f1", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
                        {"id": "f2", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40}]
        self.images: dict[str, dict[str, Any]] = {}
        self.add_image("base-1", "ubuntu-24.04", os_distro="ubuntu", os_version="24.04", hw_firmware_type="uefi",
                       created_at="2026-10-01T00:00:00Z")
        self.add_image("base-2", "ubuntu-24.04", os_distro="ubuntu", os_version="24.04", hw_firmware_type="uefi",
                       created_at="2026-11-01T00:00:00Z")
        self.add_image("deb-1", "debian-12", os_distro="debian", os_version="12")
        self.networks = [{"id": "net-1", "name": "private", "router:external": False},
                         {"id": "ext-1", "name": "public", "router:external": True}]
        self.security_groups: dict[str, dict[str, Any]] = {
            "sg-default": {"id": "sg-default", "name": "default", "tags": [], "description": ""}}
        self.servers: dict[str, dict[str, Any]] = {}
        self.floating_ips: dict[str, dict[str, Any]] = {}
        self.ports: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.ports["port-free"] = {"id": "port-free", "name": "builder-port", "network_id": "net-1", "device_id": ""}
        self.uploads: list[dict[str, Any]] = []
        self.console = "cloud-init: boot done\nlogin: "
        self.server_address = "10.0.0.5"
        mocker.register_uri(requests_mock.ANY, re.compile(r"https://.*"), text=self._dispatch)

    # ---- test helpers ------------------------------------------------------------------------------------

    def connect(self) -> connection.Connection:
        return connection.Connection(auth_url=IDENTITY + "/v3", username="u", password="p", project_name="p",
                                     user_domain_name="Default", project_domain_name="Default",
                                     region_name="RegionOne", **NO_HIDDEN_RETRIES)

    def fault(self, method: str, path: str, *, times: int = 1, status: int = 500, body: Any = None,
              reset: bool = False, after: bool = False) -> Fault:
        f = Fault(method=method, path=re.compile(path), times=times, status=status, body=body, reset=reset,
                  after=after)
        self.faults.append(f)
        return f

    def add_image(self, image_id: str, name: str, **props: Any) -> dict[str, Any]:
        created = props.pop("created_at", "2026-11-01T00:00:00Z")
        image = {"id": image_id, "name": name, "status": "active", "visibility": "public", "size": 1024,
                 "checksum": "abc", "os_hash_algo": "sha512", "os_hash_value": "def", "min_disk": 0, "min_ram": 0,
                 "created_at": created, "updated_at": created, "tags": [], "disk_format": "qcow2",
                 "container_format": "bare", "owner": "admin", "protected": False, "os_hidden": False,
                 "self": f"/v2/images/{image_id}", "file": f"/v2/images/{image_id}/file", "schema": "/v2/schemas/image",
                 "stores": "ceph,file", **props}
        self.images[image_id] = image
        return image

    def calls(self, method: str | None = None, pattern: str = "") -> list[str]:
        out = []
        for r in self.m.request_history:
            line = f"{r.method} {urlparse(r.url).path}"
            if (method is None or r.method == method) and re.search(pattern, line):
                out.append(line)
        return out

    def deletes(self) -> list[str]:
        return self.calls("DELETE")

    def last_json(self, method: str, pattern: str) -> Any:
        for r in reversed(self.m.request_history):
            if r.method == method and re.search(pattern, urlparse(r.url).path):
                return r.json()
        raise AssertionError(f"no {method} {pattern}")

    # ---- dispatch ------------------------------------------------------------------------------------------

    def _dispatch(self, request: Any, context: Any) -> str:
        url = urlparse(request.url)
        path = url.path
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = request.json() if request.body and request.headers.get("Content-Type", "").find("json") >= 0 else None
        for f in self.faults:
            if f.hits < f.times and request.method == f.method and f.path.search(f"{url.netloc}{path}"):
                f.hits += 1
                if f.after:
                    getattr(self, f"_{url.netloc.split('.')[0]}")(request.method, path, query, body, context)
                if f.reset:
                    raise requests.exceptions.ConnectionError("Connection reset by peer")
                context.status_code = f.status
                return json.dumps(f.body if f.body is not None else {"error": {"message": "boom", "code": f.status}})
        host = url.netloc.split(".")[0]
        handler: Callable[..., Any] = getattr(self, f"_{host.replace('-', '_')}")
        status, payload = handler(request.method, path, query, body, context)
        context.status_code = status
        return "" if payload is None else json.dumps(payload)

    def _identity(self, method: str, path: str, query: dict[str, str], body: Any, context: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/v3/auth/tokens":
            context.headers["X-Subject-Token"] = "tok"
            return 201, self.fx.v3_token
        link = [{"rel": "self", "href": IDENTITY + "/v3/"}]
        return 200, {"version": {"id": "v3.14", "status": "stable", "links": link}}

    # -- compute
    def _compute(self, method: str, path: str, query: dict[str, str], body: Any, context: Any) -> tuple[int, Any]:
        p = path[len("/v2.1"):]
        if p in ("", "/"):
            return 200, {"version": {"id": "v2.1", "status": "CURRENT", "min_version": "2.1", "version": NOVA_MAX,
                                     "links": [{"rel": "self", "href": COMPUTE + "/"}]}}
        if p == "/flavors/detail":
            return 200, {"flavors": [dict(f, links=[]) for f in self.flavors]}
        m = re.fullmatch(r"/flavors/([^/]+)", p)
        if m:
            for f in self.flavors:
                if f["id"] == m.group(1):
                    return 200, {"flavor": dict(f, links=[])}
            return 404, {"itemNotFound": {"code": 404, "message": "Flavor could not be found."}}
        m = re.fullmatch(r"/os-quota-sets/([^/]+)/detail", p)
        if m:
            qs: dict[str, Any] = {"id": m.group(1)}
            for key, (limit, used) in self.quota.items():
                qs[key] = {"limit": limit, "in_use": used, "reserved": 0}
            return 200, {"quota_set": qs}
        if p == "/servers" and method == "POST":
            return self._create_server(body["server"])
        if p in ("/servers/detail", "/servers"):
            found = [s for s in self.servers.values() if s["status"] != "DELETED"]
            if "name" in query:
                found = [s for s in found if re.search(query["name"], s["name"])]
            if "tags" in query:
                found = [s for s in found if query["tags"] in s["tags"]]
            return 200, {"servers": [self._server_view(s) for s in found]}
        m = re.fullmatch(r"/servers/([^/]+)(/action)?", p)
        if m:
            server = self.servers.get(m.group(1))
            if server is None or server["status"] == "DELETED":
                return 404, {"itemNotFound": {"code": 404, "message": f"Instance {m.group(1)} could not be found."}}
            if method == "DELETE":
                server["status"] = "DELETED"
                for port_id in [k for k, v in self.ports.items() if v["device_id"] == server["id"]]:
                    del self.ports[port_id]
                return 204, None
            if m.group(2):
                return self._server_action(server, body)
            self._advance(server)
            return 200, {"server": self._server_view(server)}
        raise AssertionError(f"unexpected compute call {method} {path}")

    def _create_server(self, spec: dict[str, Any]) -> tuple[int, Any]:
        sid = "srv-" + uuid.uuid4().hex[:8]
        server = {"id": sid, "name": spec["name"], "status": "BUILD", "task_state": "spawning", "spec": spec,
                  "metadata": spec.get("metadata", {}), "tags": spec.get("tags", []), "polls": 0}
        self.servers[sid] = server
        port_id = "port-" + sid
        self.ports[port_id] = {"id": port_id, "network_id": "net-1", "device_id": sid}
        return 202, {"server": {"id": sid, "links": [], "adminPass": "x", "OS-DCF:diskConfig": "MANUAL",
                                "security_groups": spec.get("security_groups", [])}}

    def _advance(self, server: dict[str, Any]) -> None:
        server["polls"] += 1
        if server["status"] == "BUILD" and server["polls"] >= 2:
            server["status"] = self.boot_result
            server["task_state"] = None
        elif server.get("stopping") and self.stop_result == "SHUTOFF":
            server["status"], server["task_state"], server["stopping"] = "SHUTOFF", None, False
        elif server["task_state"] == "image_uploading":
            server["task_state"] = None

    def _server_view(self, server: dict[str, Any]) -> dict[str, Any]:
        view = {"id": server["id"], "name": server["name"], "status": server["status"],
                "OS-EXT-STS:task_state": server["task_state"], "OS-EXT-STS:vm_state": server["status"].lower(),
                "metadata": server["metadata"], "tags": server["tags"], "links": [],
                "flavor": {"original_name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
                "image": {"id": server["spec"].get("imageRef", "")},
                "addresses": {"private": [{"addr": self.server_address, "version": 4,
                                           "OS-EXT-IPS:type": "fixed"}]} if server["status"] != "BUILD" else {}}
        if server["status"] == "ERROR":
            view["fault"] = self.boot_fault
        return view

    def _server_action(self, server: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        if "os-stop" in body:
            if server["status"] == "SHUTOFF":
                return 409, {"conflictingRequest": {"code": 409, "message": "Cannot 'stop' instance while it is "
                                                    "in vm_state stopped"}}
            server["stopping"] = True
            server["task_state"] = "powering-off"
            return 202, None
        if "os-getConsoleOutput" in body:
            return 200, {"output": self.console}
        if "createImage" in body:
            req = body["createImage"]
            image_id = "img-" + uuid.uuid4().hex[:8]
            base: dict[str, Any] = self.images.get(server["spec"].get("imageRef", "")) or {}
            inherited = {k: v for k, v in base.items() if k in ("os_distro", "os_version", "hw_firmware_type")}
            image = self.add_image(image_id, req["name"], **inherited, **req.get("metadata", {}),
                                   image_type="snapshot", instance_uuid=server["id"],
                                   base_image_ref=server["spec"].get("imageRef", ""), owner_project_name="demo",
                                   owner_user_name="demo", user_id="u1", boot_roles="member,reader",
                                   image_location="snapshot", image_state="available", owner_id=self.project_id)
            image.update(status="queued", size=None, checksum=None, os_hash_value=None, visibility="private",
                         polls=0)
            server["task_state"] = "image_uploading"
            return 202, {"image_id": image_id}
        raise AssertionError(f"unexpected server action {body}")

    # -- image
    def _image(self, method: str, path: str, query: dict[str, str], body: Any, context: Any) -> tuple[int, Any]:
        if path == "/":
            return 200, {"versions": [{"id": "v2.16", "status": "CURRENT",
                                       "links": [{"rel": "self", "href": IMAGE + "/"}]}]}
        p = path[len("/v2"):]
        if p == "/images" and method == "GET":
            found = [i for i in self.images.values() if i["status"] != "deleted"]
            for key in ("name", "status"):
                if key in query:
                    found = [i for i in found if i.get(key) == query[key]]
            if "tag" in query:
                found = [i for i in found if query["tag"] in i["tags"]]
            return 200, {"images": [self._image_view(i) for i in found], "first": "/v2/images",
                         "schema": "/v2/schemas/images"}
        m = re.fullmatch(r"/images/([^/]+)(/tags/([^/]+)|/members)?", p)
        if m:
            image = self.images.get(m.group(1))
            if image is None or image["status"] == "deleted":
                return 404, {"message": "No image found", "code": "404 Not Found", "title": "Not Found"}
            if m.group(3) and method == "PUT":
                image["tags"] = sorted(set(image["tags"]) | {m.group(3)})
                return 204, None
            if m.group(2) == "/members" and method == "POST":
                return 200, {"image_id": image["id"], "member_id": body["member"], "status": "pending"}
            if method == "DELETE":
                if image.get("protected"):
                    return 403, {"message": f"Image {image['id']} is protected and cannot be deleted.",
                                 "code": "403 Forbidden", "title": "Forbidden"}
                image["status"] = "deleted"
                return 204, None
            if method == "PATCH":
                for op in body:
                    key = op["path"].lstrip("/")
                    if op["op"] == "remove":
                        if key not in image:
                            return 409, {"message": f"Property {key} does not exist."}
                        del image[key]
                    else:
                        image[key] = op["value"]
                return 200, self._image_view(image)
            self._advance_image(image)
            return 200, self._image_view(image)
        raise AssertionError(f"unexpected image call {method} {path}")

    def _advance_image(self, image: dict[str, Any]) -> None:
        if "polls" not in image:
            return
        image["polls"] += 1
        if image["status"] == "queued" and image["polls"] >= 1:
            image["status"] = "saving"
        elif image["status"] == "saving" and self.snapshot_result == "active":
            image.update(status="active", size=4096, checksum="0123", os_hash_value="4567")
        elif image["status"] == "saving" and self.snapshot_result == "killed":
            image["status"] = "killed"

    @staticmethod
    def _image_view(image: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in image.items() if k != "polls"}

    # -- block storage (Cinder v3)
    def _block_storage(self, method: str, path: str, query: dict[str, str], body: Any,
                       context: Any) -> tuple[int, Any]:
        if path in ("/", ""):
            return 200, {"versions": [{"id": "v3.0", "status": "CURRENT", "version": "3.70", "min_version": "3.0",
                                       "links": [{"rel": "self", "href": "https://block-storage.example.com/v3/"}]}]}
        m = re.fullmatch(r"/v3/[^/]+/volumes(/detail)?", path)
        if m:
            if method == "POST":
                vid = "vol-" + uuid.uuid4().hex[:8]
                spec = body["volume"]
                self.volumes[vid] = {"id": vid, "name": spec.get("name"), "size": spec["size"], "status": "creating",
                                     "metadata": spec.get("metadata", {}), "imageRef": spec.get("imageRef"),
                                     "attachments": [], "bootable": "true"}
                return 202, {"volume": self.volumes[vid]}
            found = [v for v in self.volumes.values() if query.get("name", v["name"]) == v["name"]]
            return 200, {"volumes": found}
        m = re.fullmatch(r"/v3/[^/]+/volumes/([^/]+)(/action)?", path)
        if not m:
            raise AssertionError(f"unexpected block-storage call {method} {path}")
        vol = self.volumes.get(m.group(1))
        if vol is None:
            return 404, {"itemNotFound": {"code": 404, "message": f"Volume {m.group(1)} could not be found."}}
        if method == "DELETE":
            del self.volumes[vol["id"]]
            return 202, None
        if m.group(2):
            req = body["os-volume_upload_image"]
            image_id = "img-" + uuid.uuid4().hex[:8]
            image = self.add_image(image_id, req["image_name"], polls=0)
            image.update(status="queued", size=None, checksum=None, visibility="private",
                         disk_format=req.get("disk_format", "raw"))
            self.uploads.append(req)
            return 202, {"os-volume_upload_image": {"id": vol["id"], "image_id": image_id,
                                                    "image_name": req["image_name"], "status": "uploading",
                                                    "disk_format": req.get("disk_format"), "size": vol["size"]}}
        if vol["status"] == "creating":
            vol["status"] = "available"
        in_use = any(s["status"] != "DELETED" and vol["id"] in json.dumps(s["spec"]) for s in self.servers.values())
        vol["status"] = "in-use" if in_use else "available"
        return 200, {"volume": vol}

    # -- network
    def _network(self, method: str, path: str, query: dict[str, str], body: Any, context: Any) -> tuple[int, Any]:
        if path == "/":
            return 200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                       "links": [{"rel": "self", "href": NETWORK + "/"}]}]}
        p = path[len("/v2.0"):]
        m = re.fullmatch(r"/quotas/([^/]+)/details(\.json)?", p)
        if m:
            return 200, {"quota": {k: {"limit": lim, "used": used, "reserved": 0}
                                   for k, (lim, used) in self.net_quota.items()}}
        if p == "/networks":
            found = self.networks
            if "name" in query:
                found = [n for n in found if n["name"] == query["name"]]
            if "router:external" in query:
                found = [n for n in found if n["router:external"]]
            return 200, {"networks": found}
        m = re.fullmatch(r"/networks/([^/]+)", p)
        if m:
            for n in self.networks:
                if n["id"] == m.group(1):
                    return 200, {"network": n}
            return 404, {"NeutronError": {"type": "NetworkNotFound", "message": "Network could not be found."}}
        if p == "/ports":
            return 200, {"ports": [dict(pt, name=pt.get("name", "")) for pt in self.ports.values()
                                   if pt["device_id"] == query.get("device_id", pt["device_id"])
                                   and pt.get("name", "") == query.get("name", pt.get("name", ""))]}
        m = re.fullmatch(r"/ports/([^/]+)", p)
        if m:
            if m.group(1) in self.ports:
                return 200, {"port": self.ports[m.group(1)]}
            return 404, {"NeutronError": {"type": "PortNotFound", "message": f"Port {m.group(1)} could not be found."}}
        return self._network_objects(method, p, query, body)

    def _network_objects(self, method: str, p: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        kinds = {"security-groups": ("security_group", self.security_groups),
                 "floatingips": ("floatingip", self.floating_ips)}
        m = re.fullmatch(r"/(security-groups|floatingips|security-group-rules)(/([^/]+))?(/tags)?", p)
        if not m:
            raise AssertionError(f"unexpected network call {method} {p}")
        if m.group(1) == "security-group-rules":
            rule = dict(body["security_group_rule"], id="rule-" + uuid.uuid4().hex[:6])
            return 201, {"security_group_rule": rule}
        singular, store = kinds[m.group(1)]
        if m.group(2) is None:
            if method == "POST":
                oid = singular[:2] + "-" + uuid.uuid4().hex[:8]
                obj = dict(body[singular], id=oid, tags=[])
                if singular == "floatingip":
                    obj["floating_ip_address"] = "203.0.113.7"
                store[oid] = obj
                return 201, {singular: obj}
            found = list(store.values())
            for key in ("name", "description"):
                if key in query:
                    found = [o for o in found if o.get(key) == query[key]]
            if "tags" in query:
                found = [o for o in found if query["tags"] in o["tags"]]
            return 200, {singular + "s": found}
        existing = store.get(m.group(3))
        if existing is None:
            return 404, {"NeutronError": {"type": "NotFound", "message": f"{singular} {m.group(3)} not found"}}
        obj = existing
        if m.group(4):
            obj["tags"] = list(body["tags"])
            return 200, {"tags": obj["tags"]}
        if method == "DELETE":
            del store[m.group(3)]
            return 204, None
        return 200, {singular: obj}
