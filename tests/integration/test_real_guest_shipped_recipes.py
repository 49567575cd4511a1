"""The user story on a real cloud with real guests: the shipped `k8s` and `docker-ce` recipes, unedited, built by
`snapbuild k8s` / `snapbuild docker-ce` through the test cloud on the Ubuntu-shaped debian-13 base, everything they
download through host-side mirrors, then a server booted from the result with every mirror stopped and checked as
`snapbuild verify` checks a first boot.

The builder is a real TCG guest (flavor r1.medium for k8s: its image asks for 2 GB; r1.small for docker-ce). It reaches the host's loopback
only through the test cloud's QEMU guestfwd entries (SNAPBUILD_TESTCLOUD_GUESTFWD, given to tests/cloud/start),
each to a server this test runs on 127.77.0.1:

    10.0.2.100:3142 -> tests/aptproxy.py, a mirror of the Debian archive (containerd and the rest are trixie's)
    10.0.2.101:5000 -> the registry stand-in (tests/standins.py): every image kubeadm lists, one image the test
                       made, with a static busybox that a pod sandbox can run
    10.0.2.102:8080 -> the pkgs.k8s.io and download.docker.com stand-ins, signed with a key made for the run, which
                       the profile passes as an operator passes their re-signing mirror's key

The server booted from the image must show: the sources the build wrote survived cloud-init's apt module and no
legacy sources.list; resolv.conf is resolved's stub symlink; the root filesystem grew; a fresh machine (id, keys,
no builder); the default user in the recipe's groups; the recipe's own checks. For k8s also: every image kubeadm lists in `k8s.io` with the digest the registry served;
containerd's CRI starting a pod sandbox from the pre-pulled pause image with no network (tests/cri_client.py); then,
with a registry at the mirror's address again, a new image pulled through the CRI (kubelet's path: config_path's
hosts.toml). The captured disk passes the offline seal check.

.ci/run builds k8s over the console on a network this host has no route into (NoRouteWatch proves it while the
build runs); `tox -e full` builds k8s over SSH on the cloud's usual network and docker-ce over both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudnames import K8S_BASE, K8S_DISTRO, K8S_FLAVOR, REAL_FLAVOR
from openstack.connection import Connection
from realguests import (
    NETWORK,
    NoRouteWatch,
    assert_console_steps,
    assert_fresh_machine,
    assert_nothing_of_the_runner,
    boot_and_connect,
    make_unrouted_network,
    needs_real_guests,
)

from snapbuild.distros import get_distro
from snapbuild.guest.ssh import SSHGuest
from snapbuild.local.verify import first_boot_checks
from snapbuild.openstack.properties import NOVA_COPIES
from snapbuild.plan import Plan, make_plan
from snapbuild.profiles import load_profile
from snapbuild.recipes import load_recipe, resolve_variables
from snapbuild.sealing.offline import inspect_image
from snapbuild.sshkeys import KeyPair
from tests.aptproxy import apt_proxy
from tests.cri_client import guest_check, guest_pull
from tests.firstboot import assert_first_boot_as_on_ubuntu
from tests.manifestcheck import check_manifest
from tests.ociregistry import oci_layout, push, registry
from tests.standins import K8S, K8S_IMAGES, K8S_REVISION, docker_version, standins

ROOT = Path(__file__).resolve().parents[2]
CRI_PULLED = "registry.k8s.io/snapbuild-test/cri-pulled:1.0"
ARCHIVE_PORT, REGISTRY_PORT, STANDIN_PORT = 3142, 5000, 8080
SUGGESTED = "10.0.2.100:3142=127.77.0.1:3142,10.0.2.101:5000=127.77.0.1:5000,10.0.2.102:8080=127.77.0.1:8080"
GIB = 1024**3

pytestmark = needs_real_guests


@dataclasses.dataclass(frozen=True)
class Forward:
    guest: str      # address:port the builder uses
    host: str       # address on this host where the test serves it
    port: int


def _forwards() -> dict[int, Forward]:
    """guest port -> the cloud's guest forward for it."""
    found = {}
    for item in os.environ.get("SNAPBUILD_TESTCLOUD_GUESTFWD", "").replace(" ", ",").split(","):
        guest, _, host = item.partition("=")
        if guest and host:
            address, _, port = host.rpartition(":")
            found[int(guest.rpartition(":")[2])] = Forward(guest=guest, host=address, port=int(port))
    return found


def _mirrors_or_skip() -> tuple[Forward, Forward, Forward]:
    forwards = _forwards()
    if all(port in forwards for port in (ARCHIVE_PORT, REGISTRY_PORT, STANDIN_PORT)):
        return forwards[ARCHIVE_PORT], forwards[REGISTRY_PORT], forwards[STANDIN_PORT]
    reason = (f"the test cloud's guests reach no mirrors: start it with SNAPBUILD_TESTCLOUD_GUESTFWD={SUGGESTED} "
              f"(a Debian archive mirror on guest port {ARCHIVE_PORT}, a registry on {REGISTRY_PORT}, the "
              f"pkgs.k8s.io stand-in on {STANDIN_PORT})")
    if os.environ.get("SNAPBUILD_REQUIRE_CLOUD") == "1":   # CI starts the cloud with them: missing is a fault
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _plan(name: str, profile: Path) -> Plan:
    """The plan the build made (same recipe, distro, profile): what verify compares the first boot with."""
    recipe = load_recipe(ROOT / "recipes" / name)
    return make_plan(recipe, distro=get_distro(K8S_DISTRO), profile=load_profile(profile),
                     variables=resolve_variables(recipe, config_values={}, set_values={}))


# .ci/run builds k8s once, over the console (no route to the builder); SSH's cloud path is the base build's and the
# interrupt drills'. The other combinations are in `tox -e full`.
@pytest.mark.parametrize(("recipe", "transport"), [
    ("k8s", "console"),
    pytest.param("k8s", "ssh", marks=pytest.mark.full),
    pytest.param("docker-ce", "console", marks=pytest.mark.full),
    pytest.param("docker-ce", "ssh", marks=pytest.mark.full),
])
def test_shipped_recipe_through_the_cloud_boots_and_passes_the_first_boot_checks(
        recipe: str, transport: str, conn: Connection, unique_name: str, cleanup: Callable[..., Any],
        tmp_path: Path) -> None:
    archive_fwd, registry_fwd, standin_fwd = _mirrors_or_skip()
    distro = get_distro(K8S_DISTRO)
    k8s = recipe == "k8s"
    flavor_name = K8S_FLAVOR if k8s else REAL_FLAVOR
    network = NETWORK if transport == "ssh" else make_unrouted_network(conn, f"{unique_name}-net", cleanup)
    image_name = f"{unique_name}-{recipe}"
    work = tmp_path / "standins"
    work.mkdir()
    env = {**os.environ, "SNAPBUILD_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    events_file = tmp_path / "events.jsonl"
    t0 = time.monotonic()
    with apt_proxy(archive_fwd.host, archive_fwd.port) as (_port, archive), \
            standins(work, distro, apt_host=standin_fwd.host, apt_port=standin_fwd.port,
                     registry_host=registry_fwd.host, registry_port=registry_fwd.port) as served, \
            NoRouteWatch(conn, network) as watch:
        profile = served.profile(
            tmp_path / "cloud-test-mirrors.yaml", apt_base=f"http://{standin_fwd.guest}",
            registry_base=f"http://{registry_fwd.guest}", archive_base=f"http://{archive_fwd.guest}",
            description="stand-ins and a Debian archive mirror on 127.77.0.1, reached through the test cloud's "
                        "guestfwd")
        # `snapbuild k8s` / `snapbuild docker-ce`: the shipped recipe (no --recipes-dir) through its own command.
        proc = subprocess.run(
            [sys.executable, "-m", "snapbuild", recipe, "--distro", distro.name, "--mirrors", str(profile),
             "--flavor", flavor_name, "--network", network, "--base-image", K8S_BASE, "--timeout-ssh", "900",
             "--image-name", image_name, "--json", "--transport", transport, "--events", str(events_file)],
            capture_output=True, text=True, timeout=3600, check=False, env=env, cwd=ROOT)
        digest = served.image_digest
    built = time.monotonic() - t0
    image = conn.image.find_image(image_name)
    if image is not None:
        cleanup(lambda: conn.image.delete_image(image.id, ignore_missing=True))
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads(proc.stdout)
    assert image is not None and result["image_id"] == image.id, proc.stdout
    manifest = check_manifest(Path(result["manifest"]), builder="openstack-snapshot")
    assert manifest["details"]["transport"] == transport
    if transport == "console":
        watch.check()
        assert_console_steps([json.loads(line) for line in events_file.read_text().splitlines() if line.strip()])
    assert manifest["seal"]["in_guest"] == "clean", manifest["seal"]
    if k8s:
        assert manifest["packages"].get("kubeadm") == f"{K8S}-{K8S_REVISION}", manifest["packages"]
        assert set(K8S_IMAGES) <= set(manifest["pulled_images"]), manifest["pulled_images"]
        assert set(manifest["pulled_images"].values()) == {digest}, manifest["pulled_images"]
    else:
        assert manifest["packages"].get("docker-ce") == docker_version(distro), manifest["packages"]

    # Debian's own packages came through the archive mirror, and nothing else was asked of it.
    debs = [path.rsplit("/", 1)[-1] for path in archive.served if path.endswith(".deb")]
    assert any(name.startswith("containerd_") for name in debs), debs
    assert archive.refused == []

    # A published image, not a snapshot of someone's server (raw record: openstacksdk maps some keys away).
    props = conn.image.get(f"/images/{image.id}").json()
    assert props["status"] == "active" and props["size"] > 100 * 1024**2, (props["status"], props["size"])
    assert props["snapbuild_recipe"] == recipe and props["snapbuild_base_image_name"] == K8S_BASE
    assert props["os_distro"] == distro.id and props.get("image_type") == "image"
    assert props["min_ram"] == (2048 if k8s else 1024), props["min_ram"]
    assert [key for key in NOVA_COPIES if key in props] == []
    assert not [key for key in props if key.startswith(("snapbuild_installation", "snapbuild_expires"))]

    # The captured disk, read offline: nothing the sealing policy forbids.
    disk = tmp_path / "captured.img"
    conn.image.download_image(conn.image.get_image(image.id), output=str(disk))
    assert inspect_image(disk) == []
    disk.unlink()

    # The mirrors are gone: what a server from the image has, the image carries.
    plan = _plan(recipe, profile)
    if k8s:
        images = tuple(("sh", "-c", f"ctr -n k8s.io images ls | grep -Eq '^{re.escape(ref)} +[^ ]+ +{digest} '")
                       for ref in K8S_IMAGES)
        plan = dataclasses.replace(plan, verify_checks=(*plan.verify_checks, *images, guest_check()))
    key = KeyPair.generate(comment=unique_name)
    flavor = conn.compute.find_flavor(flavor_name, ignore_missing=False)
    server, guest = boot_and_connect(conn, f"{unique_name}-{recipe}-fresh", image.id, cleanup, key,
                                     flavor_name=flavor_name)
    pulled, listed, cri_digest = None, None, ""
    try:
        assert_fresh_machine(guest, server)
        if transport == "console":
            assert_nothing_of_the_runner(guest)
        checks = first_boot_checks(guest, plan, user_key=key, grown_size=int(flavor.disk) * GIB)
        if k8s:
            pulled, listed, cri_digest = _pull_through_the_cri(guest, registry_fwd, tmp_path)
    finally:
        guest.close()
    failed = [dataclasses.asdict(c) for c in checks if not c.ok]
    assert failed == [], json.dumps(failed, indent=1)
    named = {c.name: c.ok for c in checks}
    assert_first_boot_as_on_ubuntu(named, booted_twice=False)
    assert named[f"default user '{distro.default_user}' exists with the recipe's groups"] is True
    if k8s:
        assert sum(1 for name in named if digest in name) == len(K8S_IMAGES)
        assert "recipe check: systemctl is-active containerd" in named
        assert pulled is not None and listed is not None
        assert pulled.returncode == 0, f"the CRI pull of {CRI_PULLED} through the mirror failed: {pulled.tail()}"
        assert re.search(rf"^{re.escape(CRI_PULLED)} +\S+ +{cri_digest} ", listed, re.M), listed
    else:
        assert "recipe check: systemctl is-active docker" in named
        assert any(name.startswith("recipe check: sh -c 'docker version") for name in named)
    print(f"\nfigure: snapbuild {recipe} --transport {transport} through real guests = {built:.1f} s; "
          f"{len(debs)} .debs through the archive mirror")


def _pull_through_the_cri(guest: SSHGuest, registry_fwd: Forward, tmp_path: Path) -> tuple[Any, str, str]:
    """kubelet's pulls once the node runs: through the CRI, which finds the mirror in the hosts.toml that config_path
    names. A new image, on a registry at the mirror's address again (the build's stand-ins are gone).
    (the pull's result, `ctr images ls` afterwards, the image's manifest digest)"""
    cri_digest = oci_layout(tmp_path / "cri-layout", {"cri.txt": b"pulled through containerd's CRI\n"}, "1.0")
    with registry(tmp_path / "cri-registry", registry_fwd.host, registry_fwd.port) as reg:
        push(tmp_path / "cri-layout", "1.0", f"{reg.address}/{CRI_PULLED.removeprefix('registry.k8s.io/')}")
        pulled = guest.run(list(guest_pull(CRI_PULLED)), check=False, timeout=360)
    listed = guest.run(["ctr", "-n", "k8s.io", "images", "ls"]).stdout
    return pulled, listed, cri_digest
