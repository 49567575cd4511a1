"""A guest that never boots fails with its serial console's tail, and leaves no QEMU, ledger entry or socket."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from snapbuild.errors import BuildError
from snapbuild.ledger import Ledger
from snapbuild.local import qemu
from snapbuild.local.build import ssh_connect, start_vm
from snapbuild.pipeline import BuildContext, Reporter, running_build
from snapbuild.sshkeys import KeyPair

pytestmark = pytest.mark.skipif(shutil.which(qemu.QEMU) is None or shutil.which("qemu-img") is None,
                                reason="qemu not installed")


def test_guest_that_never_boots_shows_serial_tail_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPBUILD_ACCEL", "tcg")
    monkeypatch.setattr(qemu, "_accel_cache", None)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    ledger = Ledger.create(build_id="t-noboot", builder="local", recipe="base", directory=tmp_path / "ledgers")
    ctx = BuildContext(build_id="t-noboot", ledger=ledger, reporter=Reporter())
    spec = qemu.VMSpec(disk=disk, serial_log=tmp_path / "serial.log", memory_mb=128, cpus=1, name="snapbuild-t-noboot")
    vms: list[qemu.VM] = []
    with pytest.raises(BuildError) as caught, running_build(ctx):
        vm = start_vm(ctx, spec, workdir=tmp_path)
        vms.append(vm)
        assert [e.kind for e in ledger.entries()] == ["process"]
        assert ledger.entries()[0].info["pid"] == vm.pid
        key = KeyPair.generate()
        ssh_connect(ctx, vm, user="snapbuild", key=key, host_keys=[KeyPair.generate().public_openssh],
                    deadline=time.monotonic() + 8)
    message = str(caught.value)
    assert "guest never booted" in message
    assert "No bootable device" in message or "Boot failed" in message   # SeaBIOS on the serial console
    (vm,) = vms
    assert vm.proc.returncode is not None and not os.path.exists(f"/proc/{vm.pid}")
    assert not ledger.path.exists()   # every entry undone, so the ledger is gone
    assert qemu.port_is_free(vm.ssh_port)
