"""Two OpenStack regions at the HTTP edge, for the catalogue's unit tests: requests-mock answers shaped like the
Keystone v3, Glance v2 and Nova v2.1 API references, on http://127.0.0.1 endpoints listed in a fake Keystone
catalog. Real keystoneauth and openstacksdk run on top (token, catalog, discovery); nothing leaves the process.

Each region has its own Glance (images with properties, `os_hidden`, data, stores) and Nova (servers booted from
images), unless `shared_glance` puts both regions behind one multi-store Glance. Time is a counter: every
created image is one second younger than the one before, so "newest" never depends on the host's clock.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests
import requests_mock
from keystoneauth1 import fixture
from openstack import connection

from snapbuild.openstack.cloud import NO_HIDDEN_RETRIES, Cloud

IDENTITY = "http://127.0.0.1:35357"
REGIONS = {"RegionOne": {"image": "http://127.0.0.1:9292", "compute": "http://127.0.0.1:8774/v2.1"},
           "RegionTwo": {"image": "http://127.0.0.1:9293", "compute": "http://127.0.0.1:8775/v2.1"}}
CORE_FIELDS = {"id", "name", "status", "visibility", "protected", "checksum", "os_hash_algo", "os_hash_value",
               "owner", "size", "virtual_size", "min_ram", "min_disk", "created_at", "updated_at", "tags", "self",
               "file", "schema", "disk_format", "container_format", "os_hidden", "stores", "direct_url"}


@dataclass
class Glance:
    name: str
    stores: tuple[str, ...] = ("file",)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)
    corrupt_next_upload: bool = False       # store different bytes than were sent (a broken store)
    fail_next_upload: bool = False          # answer 500 to the next PUT /file after reading it


@dataclass
class Nova:
    servers: list[dict[str, Any]] = field(default_factory=list)


class Regions:
    """The fake; `cloud(region)` gives a snapbuild Cloud adapter connected through real openstacksdk."""

    def __init__(self, mocker: requests_mock.Mocker, *, shared_glance: bool = False,
                 start: datetime = datetime(2026, 11, 1, tzinfo=UTC)) -> None:
        self.m = mocker
        self.clock = start
        self.token = fixture.V3Token(project_id="p" * 32, project_name="demo")
        self.token.set_project_scope(id="p" * 32, name="demo")
        self.project_id = "p" * 32
        ident = self.token.add_service("identity")
        ident.add_standard_endpoints(public=IDENTITY + "/v3", region="RegionOne")
        one = Glance("RegionOne", stores=("ceph-one", "ceph-two") if shared_glance else ("file",))
        self.glances = {"RegionOne": one, "RegionTwo": one if shared_glance else Glance("RegionTwo")}
        self.novas = {"RegionOne": Nova(), "RegionTwo": Nova()}
        self.endpoints: dict[str, tuple[str, str]] = {}
        for region, urls in REGIONS.items():
            image_url = REGIONS["RegionOne"]["image"] if shared_glance else urls["image"]
            self.token.add_service("image").add_standard_endpoints(public=image_url, region=region)
            self.token.add_service("compute").add_standard_endpoints(public=urls["compute"], region=region)
            self.endpoints[urlparse(image_url).netloc] = ("image", region)
            self.endpoints[urlparse(urls["compute"]).netloc] = ("compute", region)
        self.endpoints[urlparse(IDENTITY).netloc] = ("identity", "")
        mocker.register_uri(requests_mock.ANY, re.compile(r"http://127\.0\.0\.1:\d+/.*"), content=self._dispatch)

    # ---- test helpers ----------------------------------------------------------------------------------

    def cloud(self, region: str) -> Cloud:
        conn = connection.Connection(auth_url=IDENTITY + "/v3", username="u", password="p", project_name="demo",
                                     user_domain_name="Default", project_domain_name="Default", region_name=region,
                                     **NO_HIDDEN_RETRIES)
        return Cloud(conn, name=f"test-{region}", sleep=lambda s: None, clock=lambda: 0.0)

    def tick(self) -> str:
        self.clock += timedelta(seconds=1)
        return self.clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    def add_image(self, region: str, name: str, *, data: bytes = b"", hidden: bool = False, owner: str | None = None,
                  tags: Iterable[str] = (), status: str = "active", **props: Any) -> dict[str, Any]:
        glance = self.glances[region]
        image_id = str(uuid.uuid4())
        image = {"id": image_id, "name": name, "status": "queued", "visibility": "private", "protected": False,
                 "checksum": None, "os_hash_algo": None, "os_hash_value": None, "owner": owner or self.project_id,
                 "size": None, "min_disk": 0, "min_ram": 0, "created_at": self.tick(), "tags": list(tags),
                 "disk_format": "qcow2", "container_format": "bare", "os_hidden": hidden, **props}
        image["updated_at"] = image["created_at"]
        glance.images[image_id] = image
        if status == "active":
            self._store(glance, image, data or name.encode())
        else:
            image["status"] = status
        return image

    def requests(self) -> list[str]:
        return [f"{r.method} {r.netloc}{urlparse(r.url).path}" for r in self.m.request_history]

    def count(self, method: str | None = None, pattern: str = "") -> int:
        return len([line for line in self.requests() if (method is None or line.startswith(method + " "))
                    and re.search(pattern, line)])

    def active(self, region: str, **props: str) -> list[dict[str, Any]]:
        return [i for i in self.glances[region].images.values() if i["status"] == "active"
                and all(str(i.get(k)) == v for k, v in props.items())]

    def boot(self, region: str, image_id: str, name: str = "app-1") -> None:
        self.novas[region].servers.append({"id": str(uuid.uuid4()), "name": name, "status": "ACTIVE",
                                           "image": {"id": image_id, "links": []}})

    # ---- dispatch --------------------------------------------------------------------------------------

    def _dispatch(self, request: Any, context: Any) -> bytes:
        url = urlparse(request.url)
        service, region = self.endpoints[url.netloc]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = request.body
        if hasattr(body, "read"):       # a file-like reader: snapbuild upload's stream
            body = b"".join(iter(lambda: body.read(1 << 20), b""))
        elif body is not None and not isinstance(body, bytes | str):
            body = b"".join(body)        # a generator: the streamed copy
        elif body and "json" in request.headers.get("Content-Type", ""):
            body = json.loads(body)
        status, payload = getattr(self, f"_{service}")(region, request.method, url.path, query, body, context)
        context.status_code = status
        if isinstance(payload, bytes):
            context.headers["Content-Type"] = "application/octet-stream"
            return payload
        context.headers["Content-Type"] = "application/json"
        return b"" if payload is None else json.dumps(payload).encode()

    def _identity(self, region: str, method: str, path: str, query: dict[str, str], body: Any,
                  context: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/v3/auth/tokens":
            context.headers["X-Subject-Token"] = "tok"
            return 201, self.token
        return 200, {"version": {"id": "v3.14", "status": "stable",
                                 "links": [{"rel": "self", "href": IDENTITY + "/v3/"}]}}

    def _compute(self, region: str, method: str, path: str, query: dict[str, str], body: Any,
                 context: Any) -> tuple[int, Any]:
        p = path[len("/v2.1"):]
        if p in ("", "/"):
            return 200, {"version": {"id": "v2.1", "status": "CURRENT", "min_version": "2.1", "version": "2.96",
                                     "links": [{"rel": "self", "href": REGIONS[region]["compute"] + "/"}]}}
        if p in ("/servers/detail", "/servers") and method == "GET":
            return 200, {"servers": [dict(s, links=[]) for s in self.novas[region].servers]}
        raise AssertionError(f"unexpected compute call {method} {path}")

    def _image(self, region: str, method: str, path: str, query: dict[str, str], body: Any,
               context: Any) -> tuple[int, Any]:
        glance = self.glances[region]
        if path in ("/", ""):
            href = next(u["image"] for r, u in REGIONS.items() if r == region) + "/v2/"
            return 200, {"versions": [{"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": href}]}]}
        p = path[len("/v2"):]
        if p == "/info/import":
            return 200, {"import-methods": {"value": ["glance-direct", "web-download", "copy-image"]}}
        if p == "/info/stores/detail":     # admin only in a real Glance: a member is refused
            return 403, {"message": "Access was denied to this resource.", "code": "403 Forbidden"}
        if p == "/info/stores":
            return 200, {"stores": [{"id": "file1", "default": True}]}
        if p == "/images" and method == "GET":
            return 200, {"images": self._list(glance, query), "first": "/v2/images", "schema": "/v2/schemas/images"}
        if p == "/images" and method == "POST":
            image = self.add_image(region, body.pop("name"), status="queued", tags=body.pop("tags", []), **body)
            return 201, image
        m = re.fullmatch(r"/images/([^/]+)(/file|/import|/tags/[^/]+)?", p)
        if not m:
            raise AssertionError(f"unexpected image call {method} {path}")
        image = glance.images.get(m.group(1))
        if image is None:
            return 404, {"message": "No image found", "code": "404 Not Found", "title": "Not Found"}
        sub = m.group(2) or ""
        if sub == "/file" and method == "PUT":
            data = body.encode() if isinstance(body, str) else (body or b"")
            if glance.fail_next_upload:
                glance.fail_next_upload = False
                image["status"] = "killed"
                return 500, {"message": "store failed", "code": 500}
            if glance.corrupt_next_upload:
                glance.corrupt_next_upload = False
                data = data[::-1] + b"x"
            self._store(glance, image, data)
            return 204, None
        if sub == "/file":
            return 200, glance.data[image["id"]]
        if sub == "/import":
            image["stores"] = ",".join(sorted(set(filter(None, image.get("stores", "").split(","))) |
                                              set(body["stores"])))
            return 202, None
        if sub.startswith("/tags/"):
            image["tags"] = sorted(set(image["tags"]) | {sub[len("/tags/"):]})
            return 204, None
        if method == "DELETE":
            if image["protected"]:
                return 403, {"message": "protected", "code": "403 Forbidden"}
            del glance.images[image["id"]]
            glance.data.pop(image["id"], None)
            return 204, None
        if method == "PATCH":
            for op in body:
                key = op["path"].lstrip("/")
                if op["op"] == "remove":
                    image.pop(key, None)
                else:
                    image[key] = op["value"]
            return 200, image
        return 200, image

    def _list(self, glance: Glance, query: dict[str, str]) -> list[dict[str, Any]]:
        # Glance: hidden images only when asked for (os_hidden=true lists the hidden ones); any other key that is
        # not a core filter is a property filter.
        hidden = query.pop("os_hidden", "false") == "true"
        query.pop("limit", None)
        found = [i for i in glance.images.values() if bool(i.get("os_hidden")) == hidden]
        for key, value in query.items():
            if key == "tag":
                found = [i for i in found if value in i["tags"]]
            else:
                found = [i for i in found if str(i.get(key)) == value]
        return found

    def _store(self, glance: Glance, image: dict[str, Any], data: bytes) -> None:
        glance.data[image["id"]] = data
        image.update(status="active", size=len(data), checksum=hashlib.md5(data).hexdigest(),
                     os_hash_algo="sha512", os_hash_value=hashlib.sha512(data).hexdigest(),
                     stores=image.get("stores") or glance.stores[0])


def properties_of(image: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in image.items() if k not in CORE_FIELDS}


__all__ = ["Regions", "properties_of", "requests"]
