"""The user story on a real cloud with real guests: a k8s-shaped recipe built by `snapbuild build` through the
test cloud, everything through host-side mirrors, and the images it pre-pulled present in a server booted from
the result.

The recipe (tests/recipes/k8s-mirror-demo) installs containerd from Debian, configures registry mirrors, loads
kernel modules, sets sysctls, turns swap off, pre-pulls an image into containerd's `k8s.io` namespace with ctr
and a second one through containerd's CRI plugin (kubelet's path). The builder server is a real TCG guest
(flavor r1.small); it reaches the host's loopback only through the test cloud's QEMU guestfwd entries
(SNAPBUILD_TESTCLOUD_GUESTFWD, given to tests/cloud/start):

    10.0.2.100:3142 -> an apt proxy to the Debian archive, started here
    10.0.2.101:5000 -> Debian's docker-registry holding an image this test made, started here

Both are stopped before the result boots, so what the booted server has, the image carried.

It runs over both transports: `ssh` on the cloud's usual network, and `console` on a network this host has no
route into (a console build: the runner in the user-data applies the same plan, snapbuild reads the console).
"""

from __future__ import annotations

import json
import os
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
    NETWORK,
    NoRouteWatch,
    assert_fresh_machine,
    boot_and_connect,
    make_unrouted_network,
    needs_real_guests,
)

from snapbuild.distros import get_distro
from snapbuild.openstack.properties import NOVA_COPIES
from snapbuild.plan import make_plan
from snapbuild.profiles import load_profile
from snapbuild.recipes import load_recipe, resolve_variables
from snapbuild.sshkeys import KeyPair
from tests.aptproxy import apt_proxy
from tests.manifestcheck import check_manifest
from tests.mirrorprofile import write_mirror_profile
from tests.ociregistry import oci_layout, push, registry

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "tests" / "recipes"
RECIPE = "k8s-mirror-demo"
PREPULLED = "registry.k8s.io/snapbuild-test/hello:1.0"
CRI_PULLED = "registry.k8s.io/snapbuild-test/hello:cri"
APT_GUEST_PORT, REGISTRY_GUEST_PORT = 3142, 5000
SUGGESTED = "10.0.2.100:3142=127.77.0.1:3142,10.0.2.101:5000=127.77.0.1:5000"

pytestmark = needs_real_guests


def _forwards() -> dict[int, tuple[str, str]]:
    """guest port -> (guest address, host address) of the cloud's guest forwards."""
    found = {}
    for item in os.environ.get("SNAPBUILD_TESTCLOUD_GUESTFWD", "").replace(" ", ",").split(","):
        guest, _, host = item.partition("=")
        if guest and host:
            found[int(guest.rpartition(":")[2])] = (guest, host)
    return found


def _mirrors_or_skip() -> tuple[tuple[str, str], tuple[str, str]]:
    forwards = _forwards()
    if APT_GUEST_PORT in forwards and REGISTRY_GUEST_PORT in forwards:
        return forwards[APT_GUEST_PORT], forwards[REGISTRY_GUEST_PORT]
    reason = (f"the test cloud's guests reach no mirrors: start it with SNAPBUILD_TESTCLOUD_GUESTFWD={SUGGESTED} "
              f"(an apt proxy on guest port {APT_GUEST_PORT}, a registry on {REGISTRY_GUEST_PORT})")
    if os.environ.get("SNAPBUILD_REQUIRE_CLOUD") == "1":   # CI starts the cloud with them: missing is a fault
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# .ci/run builds it once, over the console (no route to the builder); SSH's cloud path is the base build's and the
# interrupt drills', and the SSH k8s-shaped build is in `tox -e full`.
@pytest.mark.parametrize("transport", [pytest.param("ssh", marks=pytest.mark.full), "console"])
def test_k8s_shaped_recipe_through_the_cloud_boots_with_its_images(
        transport: str, conn: Connection, unique_name: str, cleanup: Callable[..., Any], tmp_path: Path) -> None:
    """Over SSH on the cloud's usual network; with --transport console on a network this host has no route into
    (the builder's QEMU has no port forwarded here, NoRouteWatch proves it while the build runs)."""
    (apt_guest, apt_host), (registry_guest, registry_host) = _mirrors_or_skip()
    network = NETWORK if transport == "ssh" else make_unrouted_network(conn, f"{unique_name}-net", cleanup)
    profile = write_mirror_profile(
        tmp_path / "cloud-test-mirrors.yaml", apt_guest=apt_guest, registry_guest=registry_guest,
        description="the test cloud's host-side mirrors, reached through its guestfwd entries")
    digest = oci_layout(tmp_path / "layout", {"hello.txt": b"hello from the test registry\n"}, "1.0")
    image_name = f"{unique_name}-k8s"
    env = {**os.environ, "SNAPBUILD_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.monotonic()
    with apt_proxy(*_split(apt_host)) as (_port, proxy), registry(tmp_path / "registry", *_split(registry_host)) as reg, \
            NoRouteWatch(conn, network) as watch:
        for tag in ("1.0", "cri"):
            push(tmp_path / "layout", "1.0", f"{reg.address}/snapbuild-test/hello:{tag}")
        proc = subprocess.run(
            [sys.executable, "-m", "snapbuild", "--recipes-dir", str(RECIPES), "build", RECIPE,
             "--distro", REAL_DISTRO, "--mirrors", str(profile), "--flavor", FLAVOR, "--network", network,
             "--base-image", IMAGE, "--timeout-ssh", "600", "--image-name", image_name, "--json",
             "--transport", transport],
            capture_output=True, text=True, timeout=3600, check=False, env=env, cwd=ROOT)
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
    assert digest in manifest["pulled_images"].values(), manifest["pulled_images"]

    # Every package came through the proxy, which forwarded nothing but the Debian archive.
    debs = [url.rsplit("/", 1)[-1] for url in proxy.served if url.endswith(".deb")]
    assert any(name.startswith("containerd_") for name in debs), debs
    assert any(name.startswith("python3-grpcio_") for name in debs), debs
    assert proxy.refused == []

    # A published image, not a snapshot of someone's server (raw record: openstacksdk maps some keys away).
    props = conn.image.get(f"/images/{image.id}").json()
    assert props["status"] == "active" and props["size"] > 100 * 1024**2, (props["status"], props["size"])
    assert props["snapbuild_recipe"] == RECIPE and props["snapbuild_base_image_name"] == IMAGE
    assert props["os_distro"] == "debian" and props.get("image_type") == "image"
    assert [key for key in NOVA_COPIES if key in props] == []
    assert not [key for key in props if key.startswith(("snapbuild_installation", "snapbuild_expires"))]

    # The mirrors are gone: a server from the image has the images because the image carries them.
    key = KeyPair.generate(comment=unique_name)
    server, guest = boot_and_connect(conn, f"{unique_name}-k8s-fresh", image.id, cleanup, key)
    try:
        assert_fresh_machine(guest, server)
        images = guest.run(["ctr", "-n", "k8s.io", "images", "ls"]).stdout
        assert PREPULLED in images and CRI_PULLED in images, images
        assert digest in images, images                   # the very manifest this test pushed
        assert "/etc/containerd/certs.d/registry.k8s.io" in guest.run(
            ["sh", "-c", "ls -d /etc/containerd/certs.d/*"]).stdout
        for argv in _recipe_checks():
            done = guest.run(list(argv), check=False, timeout=120)
            assert done.returncode == 0, f"recipe check {argv} failed on the booted image: {done.tail()}"
        # The build's apt proxy setting left with the builder.
        assert guest.run(["sh", "-c", "grep -rIl 10.0.2.100 /etc/apt || true"]).stdout.strip() == ""
    finally:
        guest.close()
    print(f"\nfigure: snapbuild build {RECIPE} --transport {transport} through real guests = {built:.1f} s; "
          f"{len(debs)} .debs through the proxy")


def _recipe_checks() -> tuple[tuple[str, ...], ...]:
    recipe = load_recipe(RECIPES / RECIPE)
    plan = make_plan(recipe, distro=get_distro(REAL_DISTRO),
                     profile=load_profile(ROOT / "recipes" / "profiles" / "upstream.yaml"),
                     variables=resolve_variables(recipe, config_values={}, set_values={}))
    assert len(plan.verify_checks) >= 6
    return plan.verify_checks
