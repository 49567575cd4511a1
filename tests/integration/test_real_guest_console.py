"""`--transport console` on the test cloud's real guests, on a network this host has no route into.

The builder (flavor r1.small: a TCG guest per server) sits on a tenant network of 10.231.0.0/24: the test cloud's
QEMU backend forwards no port of a non-loopback address, so nothing on this host can open a connection to it, and
NoRouteWatch reads each builder's QEMU command line while the build runs to prove it. The runner in the user-data
applies the plan, seals, checks, reports on the console and powers the builder off; snapbuild reads the console
through Nova's console-output API only.

    - `base` builds; the captured disk passes the offline seal check; a server from it is a fresh machine with
      nothing of the runner (`tox -e full`: .ci/run's console build is the shipped k8s recipe's, with the same
      checks, in test_real_guest_shipped_recipes.py)
    - a failing recipe step stops the build with the step's name and output, and nothing is left
    - SIGINT while the runner works leaves nothing

The shipped k8s recipe through the console (mirrors, pre-pulls with digests) is in test_real_guest_shipped_recipes.py.
"""

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
from realguests import (
    FLAVOR,
    IMAGE,
    NoRouteWatch,
    assert_console_steps,
    assert_fresh_machine,
    assert_nothing_of_the_runner,
    boot_and_connect,
    left_by_build,
    make_unrouted_network,
    needs_real_guests,
    wait_build_gone,
)

from snapbuild.sealing.offline import inspect_image
from snapbuild.sshkeys import KeyPair
from tests.manifestcheck import check_manifest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = needs_real_guests
FAILING_RECIPE = """\
description: console transport test - a step that fails with output
distros: [debian-12, debian-13]
image:
  name: "{{ distro.pretty }} - failing console test"
  category: test
  min_disk_gb: 3
  disk_size_gb: 3
steps:
  - command: [sh, -c, "echo first-line-of-output; echo boom-from-the-failing-step >&2; exit 3"]
  - command: [touch, /root/never-reached]
"""


def _argv(recipe: str, network: str, image_name: str, events: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snapbuild", *extra, "build", recipe, "--distro", REAL_DISTRO,
            "--mirrors", "upstream", "--transport", "console", "--flavor", FLAVOR, "--network", network,
            "--base-image", IMAGE, "--image-name", image_name, "--events", str(events)]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SNAPBUILD_STATE_DIR": str(tmp_path / "state")}


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _build_id(events: list[dict[str, Any]]) -> str:
    return str(next(e["build_id"] for e in events if e["event"] == "build_started"))


def _server_id(events: list[dict[str, Any]]) -> str:
    return str(next(e["ref"] for e in events if e["event"] == "resource_created" and e["kind"] == "server"))


# .ci/run builds over the console once, the shipped k8s recipe (test_real_guest_shipped_recipes.py), with these
# same checks of the steps, the captured disk and a server booted from it; `base` over the console is in full.
@pytest.mark.full
def test_console_build_of_base_with_no_route_to_the_builder(conn: Connection, unique_name: str,
                                                             cleanup: Callable[..., Any], tmp_path: Path) -> None:
    network = make_unrouted_network(conn, f"{unique_name}-net", cleanup)
    image_name = f"{unique_name}-base"
    events_file = tmp_path / "events.jsonl"
    t0 = time.monotonic()
    with NoRouteWatch(conn, network) as watch:
        proc = subprocess.run(_argv("base", network, image_name, events_file), capture_output=True, text=True,
                              timeout=3600, check=False, env=_env(tmp_path), cwd=ROOT)
    built = time.monotonic() - t0
    image = conn.image.find_image(image_name)
    if image is not None:
        cleanup(lambda: conn.image.delete_image(image.id, ignore_missing=True))
    assert proc.returncode == 0, proc.stderr[-5000:]
    watch.check()
    assert image is not None and proc.stdout.strip().splitlines()[-1] == image.id

    events = _events(events_file)
    assert_console_steps(events)
    manifest = check_manifest(Path(events[-1]["manifest"]), builder="openstack-snapshot")
    assert manifest["seal"]["in_guest"] == "clean", manifest["seal"]
    assert manifest["details"]["transport"] == "console"

    # The captured disk, read offline: nothing the policy forbids, and nothing of the runner or its user-data.
    disk = tmp_path / "captured.img"
    conn.image.download_image(conn.image.get_image(image.id), output=str(disk))
    assert inspect_image(disk) == []

    key = KeyPair.generate(comment=unique_name)
    server, guest = boot_and_connect(conn, f"{unique_name}-fresh", image.id, cleanup, key)
    try:
        assert_fresh_machine(guest, server)
        assert_nothing_of_the_runner(guest)
    finally:
        guest.close()
    print(f"\nfigure: snapbuild build base --transport console through real guests = {built:.1f} s")


def test_console_build_failing_step_reports_it_and_leaves_nothing(conn: Connection, admin_conn: Connection,
                                                                   unique_name: str, cleanup: Callable[..., Any],
                                                                   tmp_path: Path) -> None:
    network = make_unrouted_network(conn, f"{unique_name}-net", cleanup)
    recipes = tmp_path / "recipes"
    (recipes / "fails").mkdir(parents=True)
    (recipes / "fails" / "recipe.yaml").write_text(FAILING_RECIPE)
    events_file = tmp_path / "events.jsonl"
    proc = subprocess.run(_argv("fails", network, f"{unique_name}-img", events_file, "--recipes-dir", str(recipes)),
                          capture_output=True, text=True, timeout=3600, check=False, env=_env(tmp_path), cwd=ROOT)
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-5000:])      # a build error
    # The failing step by name, with its output; the step after it never ran.
    assert "sh -c" in proc.stderr and "boom-from-the-failing-step" in proc.stderr, proc.stderr[-5000:]
    assert "console build failed in step" in proc.stderr, proc.stderr[-5000:]
    events = _events(events_file)
    failed = [e["step"] for e in events if e["event"] == "step_finished" and not e["ok"]]
    assert any("sh -c" in step for step in failed), failed
    assert not any("never-reached" in e.get("step", "") for e in events if e["event"] == "step_started")
    wait_build_gone(admin_conn, _build_id(events), _server_id(events))
    assert not list((tmp_path / "state" / "builds").glob("*.json")), "the ledger outlived a clean undo"
    assert conn.image.find_image(f"{unique_name}-img") is None


def test_console_build_sigint_while_the_runner_works_leaves_nothing(
        conn: Connection, admin_conn: Connection, unique_name: str, cleanup: Callable[..., Any],
        tmp_path: Path) -> None:
    network = make_unrouted_network(conn, f"{unique_name}-net", cleanup)
    events_file = tmp_path / "events.jsonl"
    proc = subprocess.Popen(_argv("base", network, f"{unique_name}-img", events_file), env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    cleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
    deadline = time.monotonic() + 1500
    # The runner has started its work once its first step's start came through the console.
    while not any(e["event"] == "step_started" and e["step"] == "wait for cloud-init"
                  for e in _events(events_file)):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the runner's first step never showed on the console"
        time.sleep(2)
    build_id, server_id = _build_id(_events(events_file)), _server_id(_events(events_file))
    assert left_by_build(admin_conn, build_id), "the builder must exist while the runner works"
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=900)
    assert proc.returncode == 130, rest[-4000:]
    wait_build_gone(admin_conn, build_id, server_id)
    assert not list((tmp_path / "state" / "builds").glob("*.json")), "the ledger outlived a clean undo"
