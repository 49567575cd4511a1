"""A k8s-shaped recipe built by `snapbuild local` with everything through host-side mirrors on 127.0.0.1:
apt through a forwarding proxy to the Debian archive, container images from Debian's docker-registry holding an
image this test made. Both reach the guest only through QEMU guestfwd (restrict=on). The image is pre-pulled
into k8s.io with ctr (the prepull step), and a second tag through containerd's CRI plugin (kubelet's path), so
the hosts.toml mirror and config.toml's config_path are both proven. `verify` then boots the result with no
mirrors at all and finds both images, containerd, the modules, the sysctl and no swap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import imagecache
from tests.aptproxy import ProxyStats, apt_proxy
from tests.manifestcheck import check_manifest
from tests.mirrorprofile import write_mirror_profile
from tests.ociregistry import oci_layout, push, registry

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "k8s-mirror-demo"
PREPULLED = "registry.k8s.io/snapbuild-test/hello:1.0"
CRI_PULLED = "registry.k8s.io/snapbuild-test/hello:cri"
APT_GUEST, REGISTRY_GUEST = "10.0.2.100:3142", "10.0.2.101:5000"

# In `tox -e full`: .ci/run builds the shipped recipes instead (docker-ce through `local`, both through `chroot`),
# and a CRI pull through the mirror runs there on a server booted from the shipped k8s image
# (test_real_guest_shipped_recipes). On debian-12, the full run's `local` build and `verify` of Debian's classic
# layout (cloud-init 22.4 told to keep the sources; .ci/run's guests are all debian-13).
DISTRO = "debian-12"
pytestmark = [pytest.mark.vm, pytest.mark.full]


@dataclass
class MirroredBuild:
    output: Path
    manifest: dict[str, Any]
    digest: str
    proxy: ProxyStats
    env: dict[str, str]
    log: str


def _snapbuild(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snapbuild", "--recipes-dir", str(ROOT / "tests" / "recipes"), *args],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MirroredBuild]:
    base = imagecache.base_image(DISTRO)
    work = tmp_path_factory.mktemp("mirror-demo")
    digest = oci_layout(work / "layout", {"hello.txt": b"hello from the test registry\n"}, "1.0")
    env = {**os.environ, "TMPDIR": str(work), "SNAPBUILD_STATE_DIR": str(work / "state"),
           "SNAPBUILD_CACHE_DIR": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with apt_proxy() as (proxy_port, stats), registry(work / "registry") as reg:
        for tag in ("1.0", "cri"):
            push(work / "layout", "1.0", f"{reg.address}/snapbuild-test/hello:{tag}")
        profile = write_mirror_profile(
            work / "test-mirrors.yaml", apt_guest=APT_GUEST, registry_guest=REGISTRY_GUEST,
            description="host-side test mirrors, reached through QEMU guestfwd",
            forwards=[{"guest": APT_GUEST, "host": f"127.0.0.1:{proxy_port}"},
                      {"guest": REGISTRY_GUEST, "host": reg.address}])
        output = work / "out" / "k8s-mirror-demo.qcow2"
        output.parent.mkdir()
        done = _snapbuild(env, "local", RECIPE, "--network", "isolated", "--distro", DISTRO,
                          "--mirrors", str(profile), "--base", str(base), "-o", str(output), "--memory", "1536",
                          "--events", "-",
                          timeout=3600)
        assert done.returncode == 0, f"build failed ({done.returncode}):\n{done.stderr[-6000:]}"
    # --events -: stdout is the build's JSON-lines stream alone, ending with its result.
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "build_started" and events[0]["builder"] == "local"
    pulls = [e for e in events if e["event"] == "progress" and e["what"] == "pre-pull"]
    assert pulls and pulls[-1]["done"] == pulls[-1]["total"] > 0
    assert events[-1]["event"] == "result" and events[-1]["ok"] is True
    manifest = check_manifest(Path(events[-1]["manifest"]), builder="local")
    # What the guest printed goes to the build's log file (the terminal shows steps, not every line).
    logs = "".join(path.read_text(errors="replace") for path in (work / "state" / "logs").glob("*.log"))
    yield MirroredBuild(output=output, manifest=manifest, digest=digest, proxy=stats, env=env,
                        log=done.stderr + logs)


def test_packages_came_through_the_proxy_and_nothing_else_was_asked_of_it(mirrored: MirroredBuild) -> None:
    debs = [url.rsplit("/", 1)[-1] for url in mirrored.proxy.served if url.endswith(".deb")]
    assert any(name.startswith("containerd_") for name in debs), debs
    assert any(name.startswith("python3-grpcio_") for name in debs), debs
    assert mirrored.proxy.refused == []


def test_both_images_are_pulled_from_the_test_registry_into_k8s_io(mirrored: MirroredBuild) -> None:
    pulled = mirrored.manifest["pulled_images"]
    # The digest ctr recorded is the one of the manifest this test wrote: it came from our registry.
    assert pulled == {PREPULLED: mirrored.digest}
    assert f"CRI pulled {CRI_PULLED}" in mirrored.log


def test_inspect_finds_the_mirrored_build_sealed(mirrored: MirroredBuild) -> None:
    if os.geteuid() != 0:
        pytest.skip("offline inspection mounts the image: needs root")
    done = _snapbuild(mirrored.env, "inspect", "--json", str(mirrored.output), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["violations"] == []    # the build's apt proxy setting is gone too


def test_verify_finds_the_images_containerd_modules_and_sysctls_without_any_mirror(mirrored: MirroredBuild) -> None:
    done = _snapbuild(mirrored.env, "verify", str(mirrored.output), "--network", "isolated", "--recipe", RECIPE,
                      "--distro", DISTRO, "--json", timeout=3600)
    report = json.loads(done.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert done.returncode == 0 and not failed, json.dumps(failed, indent=2) + done.stderr[-3000:]
    names = " ".join(c["name"] for c in report["checks"])
    assert PREPULLED in names and CRI_PULLED in names and "br_netfilter" in names
