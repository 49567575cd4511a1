"""Interrupting a real build on real guests leaves nothing: `snapbuild build base` on flavor r1.small (a TCG
guest per server), stopped with SIGINT at three points (while the guest boots, while it is provisioned, while
its disk is captured), and once with `kill -9` followed by `snapbuild cleanup`. After each, as admin: nothing in
the cloud carries the build's id, and no QEMU process of its server is left on this host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudnames import REAL_DISTRO
from openstack.connection import Connection
from realguests import FLAVOR, IMAGE, NETWORK, left_by_build, needs_real_guests, wait_build_gone

ROOT = Path(__file__).resolve().parents[2]
pytestmark = needs_real_guests
# The step heading the build prints when it reaches each point (snapbuild/openstack/snapshot.py).
POINTS = {"booting": "▸ connect", "provisioning": "▸ provision", "capturing": "▸ capture"}


def _start(tmp_path: Path, image_name: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SNAPBUILD_STATE_DIR": str(tmp_path / "state")}
    return subprocess.Popen(
        [sys.executable, "-m", "snapbuild", "build", "base", "--distro", REAL_DISTRO, "--mirrors", "upstream",
         "--flavor", FLAVOR, "--network", NETWORK, "--base-image", IMAGE, "--timeout-ssh", "600",
         "--image-name", image_name],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _read_until(proc: subprocess.Popen[str], marker: str, seen: list[str], timeout: float = 1500) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"build ended before {marker!r}:\n{''.join(seen[-40:])}")
        seen.append(line)
        if line.strip().startswith(marker):
            return
    raise AssertionError(f"no {marker!r} within {timeout:.0f} s")


def _build_id(tmp_path: Path, seen: list[str]) -> str:
    for path in (tmp_path / "state" / "builds").glob("*.json"):
        return str(json.loads(path.read_text())["build_id"])
    raise AssertionError("no ledger for the running build:\n" + "".join(seen[-20:]))


def _server_of(admin: Connection, build_id: str) -> str:
    for server in admin.compute.servers(all_projects=True, tags="snapbuild"):
        if (server.metadata or {}).get("snapbuild_build_id") == build_id:
            return str(server.id)
    raise AssertionError(f"no server of build {build_id}")


@pytest.mark.parametrize("point", list(POINTS))
def test_sigint_of_a_real_build_leaves_nothing(point: str, admin_conn: Connection, unique_name: str,
                                               tmp_path: Path, cleanup: Callable[..., Any]) -> None:
    proc = _start(tmp_path, f"{unique_name}-img")
    cleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
    seen: list[str] = []
    _read_until(proc, "▸ boot builder", seen)
    build_id = _build_id(tmp_path, seen)
    _read_until(proc, POINTS[point], seen)
    server_id = _server_of(admin_conn, build_id)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=900)
    assert proc.returncode == 130, "".join(seen[-20:]) + rest[-3000:]
    wait_build_gone(admin_conn, build_id, server_id)
    assert not list((tmp_path / "state" / "builds").glob("*.json")), "the ledger outlived a clean undo"


def test_kill_9_of_a_real_build_then_cleanup_leaves_nothing(admin_conn: Connection, unique_name: str,
                                                            tmp_path: Path, cleanup: Callable[..., Any]) -> None:
    proc = _start(tmp_path, f"{unique_name}-img")
    cleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
    seen: list[str] = []
    _read_until(proc, "▸ connect", seen)          # the guest exists and is booting
    build_id = _build_id(tmp_path, seen)
    server_id = _server_of(admin_conn, build_id)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert left_by_build(admin_conn, build_id), "kill -9 ran no undo: the build's resources must still be there"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SNAPBUILD_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([sys.executable, "-m", "snapbuild", "cleanup", "--json"], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {row["action"] for row in json.loads(done.stdout)["cloud"]} == {"deleted"}
    wait_build_gone(admin_conn, build_id, server_id)
