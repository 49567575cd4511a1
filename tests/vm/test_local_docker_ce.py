"""The shipped `docker-ce` recipe, unedited, through `snapbuild local` on the Ubuntu-shaped debian-13 base, then
booted by `snapbuild verify` with every mirror stopped.

The builder VM is `isolated` (restrict=on): it reaches only the profile's guest forwards, each to a server this
test runs on 127.0.0.1 and stops before verify boots the result:

    10.0.2.100:3142 -> tests/aptproxy.py, a mirror of the Debian archive (trixie: containerd and the rest are real)
    10.0.2.101:8080 -> the download.docker.com stand-in (tests/standins.py), signed with a key made for the run,
                       which the profile passes as an operator passes their re-signing mirror's key
    10.0.2.102:5000 -> the registry stand-in (the profile maps registry.k8s.io and docker.io onto it)

So the build's apt saw only mirrors, as in an air-gapped cloud, and what the booted image has, it carried: the
sources the build wrote (cloud-init's apt module did not rewrite them; the legacy sources.list is gone), resolved's
stub symlink, a grown root, the default user in `docker`, the recipe's own checks and a clean seal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snapbuild.distros import get_distro
from tests import imagecache
from tests.aptproxy import apt_proxy
from tests.firstboot import assert_first_boot_as_on_ubuntu, snapbuild_env, verify_isolated
from tests.manifestcheck import check_manifest
from tests.qemuprocs import qemu_pids_mentioning
from tests.standins import docker_version, standins

ROOT = Path(__file__).resolve().parents[2]
DISTRO = get_distro("debian-13")
ARCHIVE_GUEST, STANDIN_GUEST, REGISTRY_GUEST = "10.0.2.100:3142", "10.0.2.101:8080", "10.0.2.102:5000"

pytestmark = pytest.mark.vm


def test_docker_ce_through_local_boots_and_passes_verify_with_no_mirror(tmp_path: Path) -> None:
    base = imagecache.base_image(DISTRO.name)          # built (and cached) by the system tier
    work = tmp_path / "standins"
    work.mkdir()
    output = tmp_path / "out" / "docker-ce.qcow2"
    output.parent.mkdir()
    env = snapbuild_env(tmp_path)
    with apt_proxy() as (proxy_port, archive), standins(work, DISTRO) as served:
        profile = served.profile(
            work / "test-mirrors.yaml", apt_base=f"http://{STANDIN_GUEST}", registry_base=f"http://{REGISTRY_GUEST}",
            description="stand-ins and a Debian archive mirror on 127.0.0.1, reached through QEMU guestfwd",
            forwards=[{"guest": ARCHIVE_GUEST, "host": f"127.0.0.1:{proxy_port}"},
                      {"guest": STANDIN_GUEST, "host": f"{served.apt_host}:{served.apt_port}"},
                      {"guest": REGISTRY_GUEST, "host": served.registry_address}])
        doc = json.loads(profile.read_text())
        doc["apt"] = {"debian": {"archive": f"http://{ARCHIVE_GUEST}/debian",
                                 "security": f"http://{ARCHIVE_GUEST}/debian-security"}}
        profile.write_text(json.dumps(doc, indent=1))
        # No --recipes-dir: the shipped recipe (ROOT/recipes) as it is.
        built = subprocess.run([sys.executable, "-m", "snapbuild", "local", "docker-ce", "--distro", DISTRO.name,
                                "--network", "isolated", "--mirrors", str(profile), "--base", str(base),
                                "--memory", "1536", "-o", str(output), "--json"],
                               env=env, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    assert built.returncode == 0, built.stderr[-6000:]
    result = json.loads(built.stdout)
    assert Path(result["output"]) == output and output.is_file()
    manifest = check_manifest(Path(result["manifest"]), builder="local")
    assert manifest["recipe"]["name"] == "docker-ce" and manifest["recipe"]["distro"] == DISTRO.name
    assert manifest["details"]["guest_os"].startswith("Debian GNU/Linux 13")
    assert manifest["seal"]["in_guest"] == "clean"
    assert manifest["packages"].get("docker-ce") == docker_version(DISTRO), manifest["packages"]

    # Debian's own packages came through the archive mirror, and nothing else was asked of it.
    debs = [path.rsplit("/", 1)[-1] for path in archive.served if path.endswith(".deb")]
    assert any(name.startswith("containerd_") for name in debs), debs
    assert archive.refused == []
    assert qemu_pids_mentioning(str(tmp_path)) == [], "a QEMU process outlived the build"

    checks = verify_isolated(DISTRO, "docker-ce", output, profile, tmp_path)
    assert_first_boot_as_on_ubuntu(checks)
    assert checks["default user 'debian' exists with the recipe's groups"] is True
    assert "recipe check: systemctl is-active docker" in checks
    assert any(name.startswith("recipe check: sh -c 'docker version") for name in checks)
