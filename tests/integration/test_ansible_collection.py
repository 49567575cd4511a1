"""The snapbuild.cloud collection (ansible_collections/snapbuild/cloud in this repository) in real `ansible-playbook`
runs against the cloud: check mode validates and creates nothing (the diff names the image; a bad flavor and
network fail the task, each named); a build's image id comes back as the `snapbuild_image` fact and the image is
in Glance; a build that fails names its step and leaves nothing behind. The catalogue module on a one-target
catalogue: check mode plans the build and creates nothing; a run builds, its fact names the image in Glance, and
the next run changes nothing.

ansible-playbook runs on localhost (connection local) with this interpreter, from ansible-core in the test extras;
the collection is the repository's own (ANSIBLE_COLLECTIONS_PATH), and the module runs the snapbuild installed
beside this interpreter. The API-level builds use `--no-provision` on the fake machines (m1.small), as
test_snapshot_build.py does; with real guests, the `base` recipe is built end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cloudnames import BASE, DISTRO, EXTERNAL, FLAVOR, NETWORK, REAL_DISTRO
from glanceimages import entry_images
from openstack.connection import Connection
from realguests import FLAVOR as REAL_FLAVOR
from realguests import IMAGE as REAL_IMAGE
from realguests import needs_real_guests
from test_validate_cloud import project_resources

REPO = Path(__file__).resolve().parents[2]


def tool(name: str) -> str:
    """A console script of this environment (ansible-core and snapbuild are installed in it), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found beside {sys.executable} or in PATH: the test extras install ansible-core "
                    "(pip install '.[test]'), snapbuild is this repository", pytrace=False)
    return found


@dataclass(frozen=True)
class Run:
    rc: int
    stdout: str
    stderr: str
    result: dict[str, Any]          # the module's registered result
    fact: dict[str, Any] | None     # snapbuild_image (snapbuild_catalogue), if the module set it


def playbook(tmp_path: Path, module_args: dict[str, Any], *, check: bool = False,
             env: dict[str, str] | None = None, module: str = "snapbuild.cloud.image",
             fact: str = "snapbuild_image") -> Run:
    """One play on localhost: the module with these arguments (its failure does not stop the play), then its
    result and the fact written to a file (also in check mode)."""
    out = tmp_path / "out.json"
    play = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "tasks": [
            {"name": "snapbuild", module: module_args, "register": "built", "ignore_errors": True},
            {"name": "keep what came back", "check_mode": False, "ansible.builtin.copy": {
                "dest": str(out), "mode": "0600",
                "content": "{{ {'result': built, 'fact': " + fact + " | default(None)} | to_json }}"}},
        ],
    }]
    book = tmp_path / "play.yaml"
    book.write_text(json.dumps(play, indent=2))          # JSON is YAML
    for folder in ("ansible-local", "ansible-remote"):
        (tmp_path / folder).mkdir(exist_ok=True)
    environment = {**os.environ, **(env or {}),
                   "ANSIBLE_COLLECTIONS_PATH": str(REPO),   # holds ansible_collections/snapbuild/cloud
                   "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
                   "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
                   "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"}
    argv = [tool("ansible-playbook"), "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}",
            str(book), "--diff", *(["--check"] if check else [])]
    done = subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=3600, check=False)
    assert out.exists(), f"the play did not finish (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr}"
    kept = json.loads(out.read_text())
    return Run(done.returncode, done.stdout, done.stderr, kept["result"], kept["fact"])


def build_args(cloud: str, name: str, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "recipe": "docker-ce", "cloud": cloud, "distro": DISTRO, "mirrors": "upstream", "flavor": FLAVOR,
        "base_image": BASE, "networks": [NETWORK], "floating_network": EXTERNAL, "name": name,
        "properties": {"sbtest": "1"}, "tags": ["sbtest"], "timeouts": {"boot": 180, "snapshot": 300},
        "executable": tool("snapbuild"),
    }
    args.update(changes)
    region = os.environ.get("OS_REGION_NAME")
    return {**args, **({"region": region} if region else {})}


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    """snapbuild's state (ledgers, manifests, logs) in the test's own directory."""
    return {"SNAPBUILD_STATE_DIR": str(tmp_path / "state")}


def test_check_mode_validates_names_the_image_in_the_diff_and_creates_nothing(
        conn: Connection, admin_conn: Connection, cloud_names: Any, unique_name: str, tmp_path: Path,
        state_env: dict[str, str]) -> None:
    before = project_resources(admin_conn, conn.current_project_id)
    run = playbook(tmp_path, build_args(cloud_names.member, unique_name), check=True, env=state_env)
    assert run.rc == 0, run.stdout[-4000:]
    result = run.result
    assert result["changed"] is True and not result.get("failed")
    assert result["cmd"][1:3] == ["--os-cloud", cloud_names.member] and "validate" in result["cmd"]
    verdict = result["validation"]
    assert verdict["ok"] is True and verdict["cloud"]["checked"] is True
    assert verdict["resolved"]["flavor"]["id"] == conn.compute.find_flavor(FLAVOR, ignore_missing=False).id
    image = result["image"]
    assert image["id"] is None and image["name"] == unique_name and image["cloud_checked"] is True
    assert f"+image {unique_name} from recipe docker-ce on cloud {cloud_names.member}" in run.stdout   # --diff
    assert run.fact is None                                   # no image, no fact
    assert project_resources(admin_conn, conn.current_project_id) == before
    assert conn.image.find_image(unique_name) is None


def test_check_mode_fails_naming_every_bad_input_and_creates_nothing(
        conn: Connection, admin_conn: Connection, cloud_names: Any, unique_name: str, tmp_path: Path,
        state_env: dict[str, str]) -> None:
    before = project_resources(admin_conn, conn.current_project_id)
    run = playbook(tmp_path, build_args(cloud_names.member, unique_name, flavor="m1.smal", networks=["privat"]),
                   check=True, env=state_env)
    result = run.result
    assert result["failed"] is True and result["rc"] == 2, result
    assert result["msg"].startswith("snapbuild validate found 2 problems (nothing was created):")
    (flavor,) = [p for p in result["problems"] if "flavor 'm1.smal' not found" in p]
    (network,) = [p for p in result["problems"] if "network 'privat' not found" in p]
    assert FLAVOR in flavor and NETWORK in network                 # the hints' close matches
    assert run.fact is None
    assert project_resources(admin_conn, conn.current_project_id) == before


def assert_built(conn: Connection, run: Run, name: str, recipe: str) -> str:
    """The fact carries the image id, and Glance has that image, active, with the build's marks."""
    assert run.rc == 0, run.stdout[-4000:]
    result, fact = run.result, run.fact
    assert result["changed"] is True and fact is not None
    assert fact == result["image"] and fact["name"] == name and fact["recipe"] == recipe
    image = conn.image.get(f"/images/{fact['id']}").json()     # the raw record, every property as Glance has it
    assert image["status"] == "active" and image["size"] and image["checksum"]
    assert image["name"] == name
    assert image["snapbuild_recipe"] == recipe and image["snapbuild_build_id"] == fact["build_id"]
    assert image["snapbuild_content_digest"] == fact["content_digest"]
    events = result["events"]
    assert events[-1]["event"] == "result" and events[-1]["ok"] is True and events[-1]["image_id"] == fact["id"]
    assert Path(fact["manifest"]).is_file()
    return str(fact["id"])


def test_a_build_returns_its_image_as_a_fact_and_the_image_is_in_glance(
        conn: Connection, cloud_names: Any, unique_name: str, tmp_path: Path, state_env: dict[str, str],
        cleanup: Callable[..., Any]) -> None:
    """The API-level build (boot, stop, snapshot, properties: --no-provision, as the fake machines have no SSH)."""
    args = build_args(cloud_names.member, unique_name, extra_args=["--no-provision"])
    run = playbook(tmp_path, args, env=state_env)
    found = conn.image.find_image(unique_name)
    if found is not None:
        cleanup(conn.image.delete_image, found.id, ignore_missing=True)
    image_id = assert_built(conn, run, unique_name, "docker-ce")
    assert found is not None and found.id == image_id
    image = conn.image.get(f"/images/{image_id}").json()
    assert image["sbtest"] == "1" and image["tags"] == ["sbtest"]
    conn.image.delete_image(image_id)
    assert conn.image.find_image(image_id) is None


def test_a_failed_build_names_its_step_and_leaves_nothing(
        conn: Connection, admin_conn: Connection, cloud_names: Any, unique_name: str, tmp_path: Path,
        state_env: dict[str, str]) -> None:
    """This cloud's fake machines never answer SSH: the build fails at `connect`, and the module's --on-error
    cleanup removes what it made."""
    before = project_resources(admin_conn, conn.current_project_id)
    run = playbook(tmp_path, build_args(cloud_names.member, unique_name, timeouts={"boot": 180, "ssh": 15}),
                   env=state_env)
    result = run.result
    assert result["failed"] is True and result["rc"] == 3, result
    assert result["step"] == "connect"
    assert result["msg"].startswith("snapbuild build failed at step 'connect' (exit 3): ")
    assert "snapbuild: full log:" in result["msg"]
    assert run.fact is None
    assert conn.image.find_image(unique_name) is None
    assert project_resources(admin_conn, conn.current_project_id) == before


# In `tox -e full`: the same real-guest build as test_real_guest.py's (166 s of .ci/run); the module's wiring is
# proven in .ci/run by the API-level build above.
@needs_real_guests
@pytest.mark.full
def test_a_real_build_through_a_playbook(conn: Connection, cloud_names: Any, unique_name: str, tmp_path: Path,
                                         state_env: dict[str, str], cleanup: Callable[..., Any]) -> None:
    """`base` end to end on a real guest (provision, seal, snapshot), as test_real_guest.py builds it by hand."""
    name = f"{unique_name}-base"
    args = build_args(cloud_names.member, name, recipe="base", distro=REAL_DISTRO, flavor=REAL_FLAVOR,
                      base_image=REAL_IMAGE, floating_network="none", timeouts={"ssh": 600})
    run = playbook(tmp_path, args, env=state_env)
    found = conn.image.find_image(name)
    if found is not None:
        cleanup(conn.image.delete_image, found.id, ignore_missing=True)
    image_id = assert_built(conn, run, name, "base")
    steps = [e["step"] for e in run.result["events"] if e["event"] == "step_finished" and e["level"] == "step"]
    assert "provision" in steps and "seal" in steps, steps
    conn.image.delete_image(image_id)
    assert conn.image.find_image(image_id) is None


# ---- snapbuild.cloud.catalogue -------------------------------------------------------------------------------

def catalogue_content(cloud: str, entry: str) -> dict[str, Any]:
    """One entry (Docker CE on Debian 12, named after the test) on one target, built on the fake machines without
    provisioning, as tests/integration/test_catalogue.py builds; the image is named `<entry> <date>`."""
    region = os.environ.get("OS_REGION_NAME")
    return {
        "images": {entry: {"recipe": "docker-ce", "distro": DISTRO, "mirrors": "upstream", "base_image": BASE,
                           "image_name": entry}},
        "targets": {"one": {"cloud": cloud, **({"region": region} if region else {}),
                            "build": {"flavor": FLAVOR, "network": NETWORK, "floating_network": EXTERNAL,
                                      "no_provision": True, "timeout_boot": "5m", "timeout_snapshot": "10m"}}},
        "policy": {"keep": 1, "grace_period": "1h", "claim_settle": "2s"},
    }


@pytest.fixture
def entry(conn: Connection, unique_name: str) -> Iterator[str]:
    """The catalogue entry's name; every image made for it (by its entry property) and its claims go afterwards."""
    yield unique_name
    for image in entry_images(conn, unique_name):
        if image.is_protected:
            conn.image.update_image(image, is_protected=False)
        conn.image.delete_image(image, ignore_missing=True)
    for claim in conn.image.images(tag="snapbuild-claim"):
        if claim.properties.get("snapbuild_claim_target") == "one" and unique_name in (claim.name or ""):
            conn.image.delete_image(claim, ignore_missing=True)


def catalogue_playbook(tmp_path: Path, args: dict[str, Any], *, check: bool = False,
                       env: dict[str, str] | None = None) -> Run:
    return playbook(tmp_path, {**args, "executable": tool("snapbuild")}, check=check, env=env,
                    module="snapbuild.cloud.catalogue", fact="snapbuild_catalogue")


def test_catalogue_check_mode_plans_the_build_shows_it_and_creates_nothing(
        conn: Connection, admin_conn: Connection, cloud_names: Any, entry: str, tmp_path: Path,
        state_env: dict[str, str]) -> None:
    before = project_resources(admin_conn, conn.current_project_id)
    run = catalogue_playbook(tmp_path, {"content": catalogue_content(cloud_names.member, entry)}, check=True,
                             env=state_env)
    assert run.rc == 0, run.stdout[-4000:]
    result = run.result
    assert result["changed"] is True and not result.get("failed"), result
    assert "apply" in result["cmd"] and "--dry-run" in result["cmd"]
    planned = result["images"][f"{entry}@one"]
    assert planned["action"] == "build" and planned["image_id"] is None and planned["digest"]
    assert result["summary"] == {"build": 1}
    assert f"+  new image: built from base {BASE}, digest {planned['digest'][:12]}" in run.stdout   # --diff
    assert run.fact is None                                   # check mode sets no fact
    assert entry_images(conn, entry) == []
    assert project_resources(admin_conn, conn.current_project_id) == before   # no image, no claim, no server


def test_catalogue_apply_builds_returns_the_image_as_a_fact_and_a_second_run_changes_nothing(
        conn: Connection, cloud_names: Any, entry: str, tmp_path: Path, state_env: dict[str, str]) -> None:
    args = {"content": catalogue_content(cloud_names.member, entry)}
    first = catalogue_playbook(tmp_path, args, env=state_env)
    assert first.rc == 0, first.stdout[-4000:]
    result, fact = first.result, first.fact
    assert result["changed"] is True and fact is not None, result
    built = fact["images"][f"{entry}@one"]
    assert built["action"] == "built" and built["image_id"] and fact["summary"] == {"built": 1}
    image = conn.image.get(f"/images/{built['image_id']}").json()     # the raw record, as Glance has it
    assert image["status"] == "active" and image["size"] and image["checksum"]
    assert image["name"].startswith(f"{entry} ")
    assert image["snapbuild_catalogue_entry"] == entry and image["snapbuild_content_digest"] == built["digest"]
    assert [i.id for i in entry_images(conn, entry)] == [built["image_id"]]
    # again: up to date, nothing built, the same image current
    second = catalogue_playbook(tmp_path, args, env=state_env)
    assert second.rc == 0, second.stdout[-4000:]
    assert second.result["changed"] is False, second.result
    assert second.fact is not None and second.fact["summary"] == {"skipped": 1}
    again = second.fact["images"][f"{entry}@one"]
    assert again["action"] == "skipped" and again["image_id"] == built["image_id"]
    assert [i.id for i in entry_images(conn, entry)] == [built["image_id"]]
