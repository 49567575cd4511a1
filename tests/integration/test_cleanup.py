"""`snapbuild cleanup` against a real project holding a mix: leftovers of really interrupted builds
(`kill -9` of `snapbuild build --no-provision` at several points), another installation's leftovers, a build
that is still running, and things without snapbuild's marks. Only the right ones go; --dry-run lists exactly
those. Every check of what exists is made as admin."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cloudnames import BASE, DISTRO, EXTERNAL, FLAVOR, NETWORK
from openstack.connection import Connection

ROOT = Path(__file__).resolve().parents[2]
BUILD_ARGS = ["build", "docker-ce", "--distro", DISTRO, "--flavor", FLAVOR, "--base-image", BASE,
              "--network", NETWORK, "--floating-network", EXTERNAL, "--no-provision", "--allow-blocked",
              "--timeout-boot", "180", "--timeout-snapshot", "180"]
WAIT = 240.0


@dataclass
class Build:
    label: str
    state: Path
    proc: subprocess.Popen[bytes]
    build_id: str = ""
    refs: dict[str, str] = field(default_factory=dict)


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SNAPBUILD_STATE_DIR": str(state)}


def _start(label: str, state: Path, image_name: str) -> Build:
    state.mkdir(parents=True, exist_ok=True)
    log = (state / f"{label}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "snapbuild", *BUILD_ARGS, "--image-name", image_name],
                            env=_env(state), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return Build(label=label, state=state, proc=proc)


def _ledger_of(build: Build) -> dict[str, Any] | None:
    for path in (build.state / "builds").glob("*.json"):
        data = json.loads(path.read_text())
        if data.get("pid") == build.proc.pid:
            return dict(data)
    return None


def _wait_for(build: Build, kind: str) -> None:
    """Poll the build's ledger until `kind` has a real id (not `pending:`), then confirm it as admin later."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        data = _ledger_of(build)
        if data:
            build.build_id = data["build_id"]
            for item in data["resources"]:
                if not item["ref"].startswith("pending:"):
                    build.refs[item["kind"]] = item["ref"]
            if kind in build.refs or kind == "installation-id":
                return
        if build.proc.poll() is not None:
            log = (build.state / f"{build.label}.log").read_text(errors="replace")
            pytest.fail(f"build {build.label} ended before its {kind} existed:\n{log[-3000:]}")
        time.sleep(0.3)
    pytest.fail(f"build {build.label}: no {kind} within {WAIT:.0f} s")


def _kill9(build: Build) -> None:
    build.proc.send_signal(signal.SIGKILL)
    build.proc.wait(timeout=30)


def _marked_by_build(admin: Connection, build_ids: set[str]) -> set[tuple[str, str]]:
    """Every resource (any project) whose marks name one of these builds, as admin sees it."""
    found: set[tuple[str, str]] = set()
    for s in admin.compute.servers(all_projects=True, tags="snapbuild"):
        if (s.metadata or {}).get("snapbuild_build_id") in build_ids and s.status != "DELETED":
            found.add(("server", s.id))
    for kind, items in (("floating_ip", admin.network.ips(tags="snapbuild")),
                        ("security_group", admin.network.security_groups(tags="snapbuild")),
                        ("port", admin.network.ports(tags="snapbuild"))):
        for item in items:
            if any(f"snapbuild:build_id={b}" in (item.tags or []) for b in build_ids):
                found.add((kind, item.id))
    for image in admin.image.images(tag="snapbuild"):
        if image.properties.get("snapbuild_build_id") in build_ids:
            found.add(("image", image.id))
    return found


def _cleanup_cli(state: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "snapbuild", "cleanup", "--json", *args], env=_env(state),
                          capture_output=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return dict(json.loads(done.stdout))


def _listed(result: dict[str, Any]) -> set[tuple[str, str]]:
    return {(row["kind"], row["id"]) for row in result["cloud"]}


@pytest.fixture
def builds(conn: Connection, cloud_names: Any) -> Iterator[list[Build]]:
    """The builds this test starts; afterwards every one is stopped and its resources swept by build id."""
    started: list[Build] = []
    yield started
    for build in started:
        if build.proc.poll() is None:
            build.proc.send_signal(signal.SIGCONT)
            build.proc.send_signal(signal.SIGTERM)       # a live build undoes its own resources
            try:
                build.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                build.proc.kill()
                build.proc.wait()
    for build in started:
        if build.build_id:
            subprocess.run([sys.executable, "-m", "snapbuild", "cleanup", "--build-id", build.build_id,
                            "--all-owners"], env=_env(build.state), capture_output=True, timeout=900, cwd=ROOT)


def test_cleanup_removes_exactly_this_installations_abandoned_and_old_leftovers(
        conn: Connection, admin_conn: Connection, builds: list[Build], tmp_path: Path, unique_name: str,
        cleanup: Callable[..., Any]) -> None:
    mine, elsewhere, other = tmp_path / "mine", tmp_path / "elsewhere", tmp_path / "other"
    # Things without snapbuild's marks (a plain group, and one carrying only the bare tag): never touched.
    plain = conn.network.create_security_group(name=f"{unique_name}-plain")
    cleanup(conn.network.delete_security_group, plain.id)
    tag_only = conn.network.create_security_group(name=f"{unique_name}-tagonly")
    cleanup(conn.network.delete_security_group, tag_only.id)
    conn.network.set_tags(tag_only, ["snapbuild"])

    k1 = _start("k1", mine, f"{unique_name}-k1")          # killed once its server exists
    k2 = _start("k2", mine, f"{unique_name}-k2")          # killed once its floating IP exists
    builds += [k1, k2]
    # k3 shares this installation's id, so it may only start once k1 and k2 have one (preflight makes it).
    _wait_for(k1, "installation-id")
    elsewhere.mkdir()
    shutil.copy(mine / "installation-id", elsewhere / "installation-id")   # same installation, ledger unseen
    k3 = _start("k3", elsewhere, f"{unique_name}-k3")     # killed: found by its marks only
    o1 = _start("o1", other, f"{unique_name}-o1")          # another installation's, killed
    r1 = _start("r1", mine, f"{unique_name}-r1")           # still running (paused) during the sweep
    builds += [k3, o1, r1]

    _wait_for(k1, "server")
    _kill9(k1)
    _wait_for(r1, "server")
    r1.proc.send_signal(signal.SIGSTOP)
    _wait_for(k3, "server")
    _kill9(k3)
    _wait_for(o1, "server")
    _kill9(o1)
    _wait_for(k2, "floating_ip")
    _kill9(k2)

    assert admin_conn.compute.get_server(k1.refs["server"]).id        # really there, as admin sees it
    assert admin_conn.network.get_ip(k2.refs["floating_ip"]).id
    abandoned = _marked_by_build(admin_conn, {k1.build_id, k2.build_id})
    only_marks = _marked_by_build(admin_conn, {k3.build_id})
    keep = _marked_by_build(admin_conn, {o1.build_id, r1.build_id})
    assert ("server", k1.refs["server"]) in abandoned and ("floating_ip", k2.refs["floating_ip"]) in abandoned
    assert ("server", k3.refs["server"]) in only_marks and ("server", o1.refs["server"]) in keep

    # Default: expired only, plus what this host's abandoned ledgers name (k1, k2 are young but dead).
    dry = _cleanup_cli(mine, "--dry-run")
    assert _listed(dry) == abandoned
    # --older-than 0s: k3's too (ours by installation id); never the other installation's or the running build's.
    dry_all = _cleanup_cli(mine, "--dry-run", "--older-than", "0s")
    assert _listed(dry_all) == abandoned | only_marks
    assert _marked_by_build(admin_conn, {k1.build_id, k2.build_id, k3.build_id}) == abandoned | only_marks

    done = _cleanup_cli(mine, "--older-than", "0s")
    assert _listed(done) == abandoned | only_marks
    assert {row["action"] for row in done["cloud"]} == {"deleted"}
    order = [row["kind"] for row in done["cloud"]]
    assert order == sorted(order, key=["server", "floating_ip", "port", "security_group", "volume", "image",
                                       "keypair"].index)
    assert _marked_by_build(admin_conn, {k1.build_id, k2.build_id, k3.build_id}) == set()
    assert _marked_by_build(admin_conn, {o1.build_id, r1.build_id}) == keep
    groups = {g.id for g in admin_conn.network.security_groups()}
    assert plain.id in groups and tag_only.id in groups
    assert not list((mine / "builds").glob(f"{k1.build_id}.json"))    # the swept ledgers are gone
    assert r1.proc.poll() is None                                       # the running build was left alone


def test_cleanup_removes_the_partial_image_of_a_killed_upload(conn: Connection, admin_conn: Connection,
                                                              tmp_path: Path, unique_name: str,
                                                              cleanup: Callable[..., Any]) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(8 << 20))
    state = tmp_path / "state"

    def images() -> list[Any]:
        return list(admin_conn.image.images(name=unique_name))

    def remove_all() -> None:
        for image in conn.image.images(name=unique_name):
            conn.image.delete_image(image.id, ignore_missing=True)

    cleanup(remove_all)
    proc = subprocess.Popen([sys.executable, "-m", "tests.slowupload", str(raw), unique_name], env=_env(state),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert b"STREAMING" in proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)            # no undo runs: only the marks and the ledger remain
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (partial,) = images()
    assert partial.status != "active" and "snapbuild" in (partial.tags or [])
    dry = _cleanup_cli(state, "--dry-run")
    assert _listed(dry) == {("image", partial.id)}
    done = _cleanup_cli(state)
    assert [(row["id"], row["action"]) for row in done["cloud"]] == [(partial.id, "deleted")]
    assert images() == []
