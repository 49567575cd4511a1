"""`verify` must fail an image that was booted and captured without sealing (the classic snapshot mistake)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from snapbuild.ledger import Ledger
from snapbuild.local import qemu
from snapbuild.local.build import ssh_connect, start_vm
from snapbuild.local.seed import SeedSpec, write_seed
from snapbuild.local.verify import VerifySettings, verify_image, verify_userdata, wait_console_host_keys
from snapbuild.run.context import BuildContext, Reporter, running_build
from snapbuild.sshkeys import KeyPair

pytestmark = pytest.mark.vm


@pytest.fixture
def unsealed_image(tier_base_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The base image after one ordinary first boot (a key for `debian`, a machine-id, host keys), not sealed."""
    monkeypatch.setenv("SNAPBUILD_STATE_DIR", str(tmp_path / "state"))
    image = tmp_path / "unsealed.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(tier_base_image), str(image)], check=True)
    ledger = Ledger.create(build_id="t-unsealed", builder="local", recipe="-", directory=tmp_path / "state" / "builds")
    ctx = BuildContext(build_id="t-unsealed", ledger=ledger, monitor=Reporter())
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    with running_build(ctx):
        key = KeyPair.generate()
        seed = write_seed(SeedSpec(user_data=verify_userdata(key.public_openssh), hostname="once"), work / "seed.iso")
        vm = start_vm(ctx, qemu.VMSpec(disk=image, seed=seed, serial_log=work / "serial.log", memory_mb=1024,
                                       name="snapbuild-t-unsealed", network="isolated"), workdir=work)
        deadline = time.monotonic() + 900
        guest = ssh_connect(vm, user="debian", key=key, host_keys=wait_console_host_keys(vm, deadline),
                            deadline=deadline)
        ctx.add_undo("close SSH", guest.close)
        guest.run(["cloud-init", "status", "--wait"], check=False, timeout=600)
        guest.run(["systemctl", "poweroff", "--no-block"], check=False)
        guest.close()
        assert vm.wait_exit(time.monotonic() + 180) is not None
    shutil.rmtree(work)
    return image


def test_verify_fails_an_unsealed_image_on_machine_id_and_stale_keys(
        unsealed_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    # No plan: finds the default user by trying debian/ubuntu. Isolated: no test VM reaches out.
    result = verify_image(unsealed_image, settings=VerifySettings(network="isolated"))
    print("\n" + result.render())
    failed = {c.name for c in result.failed()}
    assert not result.ok
    assert "machine-id is new on every first boot" in failed
    assert "no builder user, key or sudo rule" in failed        # the earlier boot's key is still authorized
    assert any("cloud-init finished" in c.name and c.ok for c in result.checks)
    assert [p for p in tmp_path.iterdir() if p.name.startswith("snapbuild-verify-")] == []
