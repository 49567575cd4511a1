"""A download source the build cannot reach stops `snapbuild chroot` and `snapbuild local` in their preflight:
exit 2, one line naming the URL and the profile key to change, and nothing attached, copied or booted.

The sources are mirrors on 127.0.0.1: one really serving the Debian archive's layout (a signed local repository),
and one on a port nothing listens on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

SNAPBUILD = Path(sys.executable).with_name("snapbuild")
TEST_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _snapbuild(args: list[str], state: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SNAPBUILD_STATE_DIR": str(state)}
    return subprocess.run([str(SNAPBUILD), "--recipes-dir", str(TEST_RECIPES), *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("builder", ["chroot", "local-nat", "local-isolated"])
def test_an_unreachable_archive_mirror_stops_the_build_before_anything_exists(builder: str, tmp_path: Path,
                                                                              tier_base_image: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the system tier runs as root")
    port = _closed_port()
    profile = tmp_path / "dead-mirror.yaml"
    profile.write_text(json.dumps({"apt": {"debian": {"archive": f"http://127.0.0.1:{port}/debian",
                                                      "security": f"http://127.0.0.1:{port}/debian-security"}}}))
    out = tmp_path / "out.qcow2"
    command, *network = builder.split("-")
    args = [command, "apt-demo", "--distro", "debian-13", "--mirrors", str(profile), "--base",
            str(tier_base_image), "-o", str(out)]
    if network:
        args += ["--network", network[0]]
    done = _snapbuild(args, tmp_path / "state")
    assert done.returncode == 2, done.stderr
    assert "2 download sources of recipe 'apt-demo' cannot be reached" in done.stderr
    assert f"http://127.0.0.1:{port}/debian:" in done.stderr
    assert "apt.debian.archive" in done.stderr           # the fix names the profile key to change
    # Why, as seen from where the build runs: a VM's 127.0.0.1 is its own (under NAT this host's loopback is
    # 10.0.2.2); an isolated VM reaches the profile's forwards only.
    why = {"chroot": "connection refused", "local-nat": "the VM's own, not this host's",
           "local-isolated": "no forward for it"}[builder]
    assert why in done.stderr
    assert not out.exists()
    assert not list((tmp_path / "state").glob("builds/*.json"))  # no ledger: nothing was ever created
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text()
