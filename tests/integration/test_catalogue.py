"""`snapbuild apply` on a real cloud: the issue's drills with two entries × two targets.

Builds use the fake guests (`no_provision: true`: boot → stop → snapshot → properties, no SSH), since these
drills are about the catalogue's API behaviour; the image content is the real-guest tier's business.

Needs a second region in the same Keystone with its own Glance: SNAPBUILD_SECOND_REGION names it (the project's
test cloud has RegionTwo and its env file sets it; on another cloud without one these tests skip and say so).
Servers are made in the first region only: the test cloud's RegionTwo shares RegionOne's Nova. Everything made is named `sbtest-<session>-…` (the session's leak
check sees it) and carries the entry property this module removes at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudnames import BASE, DISTRO, EXTERNAL, FLAVOR, NETWORK, REAL_BASE, REAL_DISTRO
from glanceimages import entry_images
from openstack.connection import Connection

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def regions() -> tuple[str, str]:
    first = os.environ.get("OS_REGION_NAME", "RegionOne")
    second = os.environ.get("SNAPBUILD_SECOND_REGION")
    if not second:
        pytest.skip("the catalogue drills need a second region in the same Keystone: set SNAPBUILD_SECOND_REGION "
                    "(the project's test cloud has RegionTwo)")
    return first, second


@pytest.fixture
def names(unique_name: str) -> dict[str, str]:
    return {"docker": f"{unique_name}-docker", "k8s": f"{unique_name}-k8s"}


def catalogue_text(names: dict[str, str], regions: tuple[str, str], *, cloud: str, docker_version: str = "29.2.1",
                   keep: int = 1, grace: str = "1h", extra_policy: str = "", base: str = BASE,
                   distro: str = DISTRO) -> str:
    return f"""\
images:
  {names['docker']}:
    recipe: docker-ce
    distro: {distro}
    mirrors: upstream
    base_image: {base}
    image_name: {names['docker']}
    variables: {{docker_version: "{docker_version}"}}
  {names['k8s']}:
    recipe: k8s
    variant: slim
    distro: {distro}
    mirrors: upstream
    base_image: {base}
    image_name: {names['k8s']}
targets:
  one:
    cloud: {cloud}
    region: {regions[0]}
    build: {{flavor: {FLAVOR}, network: {NETWORK}, floating_network: {EXTERNAL}, no_provision: true,
             timeout_boot: 5m, timeout_snapshot: 10m}}
  two:
    cloud: {cloud}
    region: {regions[1]}
    role: receive
policy:
  keep: {keep}
  grace_period: {grace}
  claim_settle: 2s
{extra_policy}"""


def apply(path: Path, *args: str, check: bool = True) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "snapbuild", "apply", str(path), "-f", "json", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"apply exited {proc.returncode}:\n{proc.stderr}")
    return dict(json.loads(proc.stdout or "{}"))


def done(result: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(row["entry"], row["target"], row["action"]) for row in result["done"]}


def images(conn: Connection, entry: str, *, hidden: bool | None = None) -> list[Any]:
    return entry_images(conn, entry, hidden=hidden)


@pytest.fixture
def two(conn: Connection, cloud_names: Any, regions: tuple[str, str]) -> Iterator[tuple[Connection, Connection]]:
    import openstack

    second = openstack.connect(cloud=cloud_names.member, region_name=regions[1])
    yield conn, second
    second.close()


@pytest.fixture
def catalogue(tmp_path: Path, names: dict[str, str], regions: tuple[str, str], cloud_names: Any,
              two: tuple[Connection, Connection]) -> Iterator[Path]:
    path = tmp_path / "catalogue.yaml"
    path.write_text(catalogue_text(names, regions, cloud=cloud_names.member))
    yield path
    for conn in two:
        for entry in names.values():
            for image in images(conn, entry):
                if image.is_protected:
                    conn.image.update_image(image, is_protected=False)
                conn.image.delete_image(image, ignore_missing=True)
        for claim in conn.image.images(tag="snapbuild-claim"):
            if claim.properties.get("snapbuild_claim_target") in ("one", "two") and any(
                    n in claim.name for n in names.values()):
                conn.image.delete_image(claim, ignore_missing=True)


def test_dry_run_creates_nothing(catalogue: Path, names: dict[str, str], two: Any) -> None:
    result = apply(catalogue, "--dry-run")
    assert [i["action"] for i in result["items"]] == ["build", "copy", "build", "copy"]
    for conn in two:
        assert all(images(conn, entry) == [] for entry in names.values())
        assert [c for c in conn.image.images(tag="snapbuild-claim")] == []


def test_apply_then_again_builds_nothing_then_one_change_rebuilds_only_that_entry(
        catalogue: Path, names: dict[str, str], regions: tuple[str, str], cloud_names: Any, two: Any) -> None:
    first = apply(catalogue)
    assert done(first) == {(names["docker"], "one", "built"), (names["docker"], "two", "copied"),
                           (names["k8s"], "one", "built"), (names["k8s"], "two", "copied")}
    for conn in two:
        for entry in names.values():
            (image,) = images(conn, entry)
            assert image.status == "active" and image.properties["snapbuild_content_digest"]
    started = time.monotonic()
    second = apply(catalogue)
    assert {a for _, _, a in done(second)} == {"skipped"}
    assert time.monotonic() - started < 30
    (old,) = images(two[0], names["docker"])
    catalogue.write_text(catalogue_text(names, regions, cloud=cloud_names.member, docker_version="29.2.2"))
    third = apply(catalogue)
    assert {(e, t, a) for e, t, a in done(third) if a in ("built", "copied")} == {
        (names["docker"], "one", "built"), (names["docker"], "two", "copied")}
    assert (names["docker"], "one", "hidden") in done(third)
    assert [i.id for i in images(two[0], names["docker"], hidden=True)] == [old.id]


def test_rotation_keep_1_hides_then_deletes_but_keeps_in_use_and_never_touches_foreign_images(
        catalogue: Path, names: dict[str, str], regions: tuple[str, str], cloud_names: Any, two: Any,
        unique_name: str, cleanup: Any, tmp_path: Path) -> None:
    conn, conn_two = two
    apply(catalogue)
    (old,) = images(conn, names["docker"])
    (old_two,) = images(conn_two, names["docker"])
    # a server still boots from the old image where it was built
    flavor = conn.compute.find_flavor(FLAVOR)
    server = conn.compute.create_server(name=f"{unique_name}-user", image_id=old.id, flavor_id=flavor.id,
                                        networks="none")
    cleanup(conn.compute.delete_server, server)
    conn.compute.wait_for_server(server, wait=300)
    # an image snapbuild did not make, with the same name and even the entry property
    blob = tmp_path / "foreign.img"
    blob.write_bytes(b"x" * 512)
    foreign = conn.image.create_image(name=old.name, filename=str(blob), disk_format="raw", container_format="bare",
                                      snapbuild_catalogue_entry=names["docker"], wait=True)
    cleanup(conn.image.delete_image, foreign)
    catalogue.write_text(catalogue_text(names, regions, cloud=cloud_names.member, docker_version="29.2.2",
                                        grace="5s"))
    apply(catalogue)
    assert conn.image.get_image(old.id).is_hidden and conn_two.image.get_image(old_two.id).is_hidden
    time.sleep(6)
    result = apply(catalogue)
    rows = {row["image_id"]: row for row in result["done"]}
    assert rows[old_two.id]["action"] == "deleted"
    assert rows[old.id]["action"] == "kept" and "in use" in rows[old.id]["detail"]
    assert rows[foreign.id]["action"] == "untouched"
    assert conn.image.get_image(foreign.id).status == "active" and not conn.image.get_image(foreign.id).is_hidden
    assert conn.image.get_image(old.id).status == "active"


def test_two_applies_at_once_build_each_digest_once(catalogue: Path, names: dict[str, str], two: Any) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "snapbuild", "apply", str(catalogue), "-f", "json"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=3600)[0]) for p in procs]
    built = [row for r in results for row in r["done"] if row["action"] == "built"]
    assert sorted(row["entry"] for row in built) == sorted(names.values())
    for conn in two:
        for entry in names.values():
            assert len(images(conn, entry)) == 1


@pytest.mark.parametrize("moment", ["build", "copy"])
def test_sigint_during_a_build_or_copy_leaves_nothing_and_the_next_apply_completes(
        catalogue: Path, names: dict[str, str], regions: tuple[str, str], cloud_names: Any, two: Any,
        moment: str) -> None:
    if moment == "copy" and os.environ.get("SNAPBUILD_TESTCLOUD_REAL_GUESTS") == "1":
        # The test cloud's fake guests snapshot their base: from the real base (200 MB, not the placeholder's few
        # KiB) the copy lasts long enough to be interrupted while it streams.
        catalogue.write_text(catalogue_text(names, regions, cloud=cloud_names.member, base=REAL_BASE,
                                                distro=REAL_DISTRO))
    proc = subprocess.Popen([sys.executable, "-m", "snapbuild", "apply", str(catalogue)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()

    def copying() -> bool:   # a partial copy: the record exists, with the temporary marks of work in progress
        return any("snapbuild_expires_at" in (i.properties or {}) for entry in names.values()
                   for i in images(two[1], entry))

    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if copying() if moment == "copy" else any("▸ capture" in line for line in list(lines)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=600)
    reader.join(timeout=10)
    assert proc.returncode != 0, "the signal must land while it works: " + "".join(lines)[-3000:]
    for conn in two:
        leftovers = [i for i in conn.image.images(tag="snapbuild") if i.properties.get("snapbuild_expires_at")]
        assert leftovers == [], leftovers
        assert list(conn.compute.servers(tags="snapbuild")) == []
    result = apply(catalogue)
    assert {a for _, _, a in done(result)} <= {"built", "copied", "skipped"}
    for conn in two:
        for entry in names.values():
            assert len([i for i in images(conn, entry) if i.status == "active"]) == 1


def test_a_bad_catalogue_exits_2_with_one_line_and_creates_nothing(tmp_path: Path, names: dict[str, str],
                                                                    regions: tuple[str, str], cloud_names: Any,
                                                                    two: Any) -> None:
    text = catalogue_text(names, regions, cloud=cloud_names.member).replace("recipe: k8s", "recipe: k9s")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "snapbuild", "apply", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith(f"snapbuild: error: {path}:")
    for conn in two:
        assert all(images(conn, entry) == [] for entry in names.values())


def test_a_chroot_target_builds_on_this_host_uploads_and_the_copy_follows(
        catalogue: Path, names: dict[str, str], regions: tuple[str, str], cloud_names: Any, two: Any) -> None:
    """`builder: chroot`: the real chroot builder on this host from the tiers' base file (debian-13), the real upload to
    RegionOne's Glance, the streamed copy to RegionTwo; then nothing to do."""
    if os.geteuid() != 0:
        pytest.skip("a chroot build needs root (the CI runs this tier as root)")
    from tests import imagecache

    base = imagecache.tier_base_image()
    entry = names["docker"]        # an entry name the fixture cleans up; the recipe is `base` (mirrors, sealing)
    catalogue.write_text(f"""\
images:
  {entry}:
    recipe: base
    distro: {imagecache.TIER_DISTRO}
    mirrors: upstream
    image_name: {entry}
targets:
  here:
    cloud: {cloud_names.member}
    region: {regions[0]}
    builder: chroot
    base: {base}
  two:
    cloud: {cloud_names.member}
    region: {regions[1]}
    role: receive
policy:
  keep: 1
  claim_settle: 1s
""")
    planned = apply(catalogue, "--dry-run")
    (build_item,) = [i for i in planned["items"] if i["target"] == "here"]
    assert build_item["action"] == "build" and build_item["base"]["name"] == str(base)
    result = apply(catalogue)
    assert done(result) == {(entry, "here", "built"), (entry, "two", "copied")}
    conn, conn_two = two
    (built,) = images(conn, entry)
    (copied,) = images(conn_two, entry)
    assert built.properties["snapbuild_builder"] == "chroot"
    assert built.properties["snapbuild_content_digest"] == build_item["digest"]
    assert copied.properties["snapbuild_content_digest"] == build_item["digest"]
    assert copied.hash_value == built.hash_value and built.status == copied.status == "active"
    assert not list(Path("/tmp").glob("snapbuild-base-*/image.qcow2"))     # the local files went
    again = apply(catalogue)
    assert {a for _, _, a in done(again)} == {"skipped"}
