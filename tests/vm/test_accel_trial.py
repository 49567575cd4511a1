"""The KVM trial on this host's real /dev/kvm: whatever it decides, the guest it launches must reach userspace.

A CI build once lost 870 s here: KVM got the guest as far as GRUB ("Welcome to GRUB!" on the serial console),
the trial took that for a booted guest, and the kernel then hung before userspace.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from snapbuild.local import qemu

pytestmark = pytest.mark.vm


def test_the_accel_chosen_by_a_fresh_trial_boots_the_base_image_to_userspace(
        tier_base_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SNAPBUILD_ACCEL", raising=False)
    monkeypatch.setenv("SNAPBUILD_CACHE_DIR", str(tmp_path / "cache"))   # no verdict from earlier runs
    monkeypatch.setattr(qemu, "_accel_cache", None)
    disk = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(tier_base_image),
                    str(disk)], check=True)
    spec = qemu.VMSpec(disk=disk, serial_log=tmp_path / "serial.log", memory_mb=1024, name="snapbuild-t-accel",
                       network="isolated")
    vm = qemu.launch(spec, workdir=tmp_path, on_started=lambda v: None, on_stopped=lambda v: None)
    try:
        print(f"\n{vm.accel.describe()}")
        if vm.accel.accel == "kvm":
            # The trial may only accept a guest that is already in userspace, and not failing there.
            assert qemu.reached_userspace(vm.serial_text()), vm.serial_tail()
            assert qemu.boot_failure(vm.serial_text()) is None, vm.serial_tail()
        else:
            second_opinion = vm.accel.reason.startswith("the boot under kvm failed")
            assert second_opinion or vm.accel.reason.startswith(("kvm unusable", "SNAPBUILD_ACCEL")), \
                vm.accel.reason
            if second_opinion:
                # The console showed the KVM boot failing: TCG for this guest, and nothing cached against KVM.
                assert not list((tmp_path / "cache").glob("accel-*.json"))
            elif qemu.kvm_available() is None:   # KVM was tried and rejected: later runs on this kernel skip it
                cached = json.loads(next((tmp_path / "cache").glob("accel-*.json")).read_text())
                assert cached["kvm_unusable"]
            # TCG boots this image in about a minute on 2 cores; give a loaded CI host plenty.
            assert vm.wait_for_boot_progress(time.monotonic() + 600), vm.serial_tail()
        assert vm.alive()
    finally:
        vm.kill()
    assert vm.proc.returncode is not None
