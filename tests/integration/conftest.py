"""Integration tier: real OpenStack named by OS_CLOUD (the project's test cloud, DevStack, or any cloud).

Every test here is marked `integration`. Without a reachable cloud the tests skip and say how to get one;
SNAPBUILD_REQUIRE_CLOUD=1 (CI) turns that skip into a failure. At the end of the session anything the tests
named or tagged with this session's marker (`sbtest-<session id>`, see `unique_name` and `session_tag`) that is
still in the cloud fails the run; other sessions' `sbtest-` leftovers (a concurrent run on a shared cloud, an old
crash) are only reported, since they may still be in use.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest
from openstack.connection import Connection

log = logging.getLogger(__name__)

PREFIX = "sbtest-"
TAG = "sbtest"
LEAK_GRACE = 60.0  # seconds
SESSION = f"{PREFIX}{uuid.uuid4().hex[:8]}"  # this pytest run's marker: names start with it, tags contain it
HERE = Path(__file__).resolve().parent
_reached: list[CloudNames] = []  # set once a connection succeeded: then the leak check runs
HOW_TO = (
    "point the integration tier at a cloud: OS_CLOUD=<cloud> OS_CLIENT_CONFIG_FILE=<clouds.yaml> "
    "(admin cloud: SNAPBUILD_ADMIN_CLOUD, default <OS_CLOUD>-admin), or start the project's test cloud with "
    "`tests/cloud/start` and `source /var/lib/snapbuild-testcloud/env`"
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the marker must already be there
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True, kw_only=True)
class CloudNames:
    member: str
    admin: str


def _unavailable(reason: str) -> None:
    if os.environ.get("SNAPBUILD_REQUIRE_CLOUD") == "1":
        pytest.fail(f"SNAPBUILD_REQUIRE_CLOUD=1 but {reason}; {HOW_TO}", pytrace=False)
    pytest.skip(f"{reason}; {HOW_TO}")


def _connect(name: str) -> Connection:
    region = os.environ.get("OS_REGION_NAME")
    # With a clouds.yaml cloud, OS_REGION_NAME alone does not select the region: pass it.
    # connect_retries: the tests' own polls reuse keep-alive connections, and an API server may close an idle one
    # just as the next request goes out (gunicorn's keep-alive is 2 s, the polls' interval too: a CI run lost a
    # test to one "Remote end closed connection"). snapbuild retries that itself; the checks' client must too.
    conn = openstack.connect(cloud=name, connect_retries=3, **({"region_name": region} if region else {}))
    conn.authorize()
    return conn


@pytest.fixture(scope="session")
def cloud_names() -> CloudNames:
    member = os.environ.get("OS_CLOUD", "")
    if not member:
        _unavailable("no cloud configured (OS_CLOUD is not set)")
    return CloudNames(member=member, admin=os.environ.get("SNAPBUILD_ADMIN_CLOUD") or f"{member}-admin")


@pytest.fixture(scope="session")
def conn(cloud_names: CloudNames) -> Iterator[Connection]:
    """Connection as the member user of OS_CLOUD (what snapbuild itself runs as)."""
    try:
        connection = _connect(cloud_names.member)
    except Exception as exc:
        _unavailable(f"cloud {cloud_names.member!r} is not reachable: {exc}")
    _reached[:] = [cloud_names]
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def admin_conn(cloud_names: CloudNames) -> Iterator[Connection]:
    """Connection as admin, for checks and for changing the member's quotas."""
    try:
        connection = _connect(cloud_names.admin)
    except Exception as exc:
        _unavailable(f"admin cloud {cloud_names.admin!r} is not reachable: {exc}")
    _reached[:] = [cloud_names]
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def session_tag() -> str:
    """Tag (and name prefix) of everything this run creates: sbtest-<session id>."""
    return SESSION


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name the leak check recognises: sbtest-<session id>-<test>-<random>."""
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30]
    return f"{SESSION}-{test}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def cleanup() -> Iterator[Callable[..., Any]]:
    """Register an undo the moment a resource exists: `cleanup(conn.network.delete_port, port)`. LIFO."""
    with ExitStack() as stack:
        yield stack.callback


def _marked(resource: Any, marker: str) -> bool:
    name = getattr(resource, "name", None) or getattr(resource, "description", None) or ""
    tags = getattr(resource, "tags", None) or []
    generic = marker == PREFIX  # any run's resources: the bare `sbtest` tag counts too
    return name.startswith(marker) or any(tag.startswith(marker) or (generic and tag == TAG) for tag in tags)


def find_leftovers(admin: Connection, marker: str = PREFIX) -> list[str]:
    """Everything named or tagged with marker, in every project, as admin sees it."""
    found: list[str] = []

    def check(kind: str, resources: Any) -> None:
        found.extend(f"{kind} {r.id} ({getattr(r, 'name', '') or ''})" for r in resources if _marked(r, marker))

    check("server", admin.compute.servers(all_projects=True))
    check("port", admin.network.ports())
    check("floating IP", admin.network.ips())
    check("security group", admin.network.security_groups())
    check("image", admin.image.images())
    check("project", admin.identity.projects())
    if admin.has_service("block-storage") or admin.has_service("volumev3"):
        check("volume", admin.block_storage.volumes(all_projects=True))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail the run if the tests left anything of theirs in the cloud (checked only if a cloud was reached)."""
    yield
    if not _reached:
        return
    admin = _connect(_reached[0].admin)
    # Deletes finish asynchronously (Nova shows a server as DELETED for a moment after a waited-for delete):
    # only what is still there after a grace period counts as left behind.
    deadline = time.monotonic() + LEAK_GRACE
    while (ours := find_leftovers(admin, SESSION)) and time.monotonic() < deadline:
        time.sleep(2)
    others = [item for item in find_leftovers(admin, PREFIX) if item not in ours]
    if others:
        log.warning("sbtest- resources of other test runs are in the cloud:\n  %s", "\n  ".join(others))
    if ours:
        pytest.fail(f"integration tests ({SESSION}) left resources in the cloud:\n  " + "\n  ".join(ours),
                    pytrace=False)
