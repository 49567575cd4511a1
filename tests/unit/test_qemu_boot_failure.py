"""A guest that cannot boot fails at once with the firmware's words and the console's tail, leaving no QEMU,
ledger entry or socket; and the one console classifier (qemu.boot_failure) on the texts this QEMU's firmware and
kernels really print."""

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
from snapbuild.run.context import BuildContext, Reporter, running_build
from snapbuild.sshkeys import KeyPair
from tests import fakeqemu

needs_qemu = pytest.mark.skipif(shutil.which(qemu.QEMU) is None or shutil.which("qemu-img") is None,
                                reason="qemu not installed")


@needs_qemu
def test_guest_that_never_boots_shows_serial_tail_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPBUILD_ACCEL", "tcg")
    monkeypatch.setattr(qemu, "_accel_cache", None)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    ledger = Ledger.create(build_id="t-noboot", builder="local", recipe="base", directory=tmp_path / "ledgers")
    ctx = BuildContext(build_id="t-noboot", ledger=ledger, monitor=Reporter())
    spec = qemu.VMSpec(disk=disk, serial_log=tmp_path / "serial.log", memory_mb=128, cpus=1, name="snapbuild-t-noboot",
                       network="isolated")
    vms: list[qemu.VM] = []
    with pytest.raises(BuildError) as caught, running_build(ctx):
        vm = start_vm(ctx, spec, workdir=tmp_path)
        vms.append(vm)
        assert [e.kind for e in ledger.entries()] == ["process"]
        assert ledger.entries()[0].info["pid"] == vm.pid
        key = KeyPair.generate()
        # A deadline far away: only the console's verdict can end this wait early (SeaBIOS says so in ~0.2 s).
        ssh_connect(vm, user="snapbuild", key=key, host_keys=[KeyPair.generate().public_openssh],
                    deadline=time.monotonic() + 600)
    message = str(caught.value)
    assert "guest never booted: the firmware cannot boot the disk (Boot failed: not a bootable disk)" in message
    assert "SeaBIOS (version" in message      # the console's tail comes with it
    assert caught.value.hint and "bootable disk" in caught.value.hint
    (vm,) = vms
    assert vm.proc.returncode is not None and not os.path.exists(f"/proc/{vm.pid}")
    assert not ledger.path.exists()   # every entry undone, so the ledger is gone
    assert qemu.port_is_free(vm.ssh_port)


# ---------------------------------------------------------------- the classifier, on real console texts

# QEMU 7.2 / OVMF (edk2 2022.11, Debian 12) with an empty qcow2, under TCG: the disk's entry fails ~4 s after
# launch; PXE and HTTP boot then take minutes before the UEFI shell.
OVMF_EMPTY_DISK = ('\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01HBdsDxe: failed to load Boot0001 "UEFI Misc Device" '
                   'from PciRoot(0x0)/Pci(0x3,0x0): Not Found\r\n\r\n>>Start PXE over IPv4.\r\n')
OVMF_SHELL = ('BdsDxe: starting Boot0006 "EFI Internal Shell" from Fv(7CB8BDC9-F8EB-4F34-AAEA-3EE4AF6516A1)/'
              'FvFile(7C04A583-9E3E-4F1C-AD65-E05268D0B4D1)\r\nUEFI Interactive Shell v2.2\r\nEDK II\r\n')
# The same SeaBIOS with iPXE still in the NIC (before romfile=): the disk's failure comes first as well.
SEABIOS_WITH_IPXE = ("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n\n\n"
                     "iPXE (http://ipxe.org) 00:01.0 C000 PCI2.10 PnP PMM+0EFCEEA0+0EF0EEA0 C000\r\n"
                     "Press Ctrl-B to configure iPXE (PCI 00:01.0)...\r      \r\n\n\n"
                     "Booting from Hard Disk...\r\nBoot failed: not a bootable disk\r\n\nBooting from ROM...\r\n")
PANIC = ("[    2.51] VFS: Unable to mount root fs on unknown-block(0,0)\r\n"
         "[    2.52] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---\r\n")


@pytest.mark.parametrize(("console", "verdict"), [
    (fakeqemu.SEABIOS_EMPTY_DISK, "the firmware cannot boot the disk (Boot failed: not a bootable disk)"),
    (SEABIOS_WITH_IPXE, "the firmware cannot boot the disk (Boot failed: not a bootable disk)"),
    (OVMF_EMPTY_DISK, 'the firmware cannot boot the disk (BdsDxe: failed to load Boot0001 "UEFI Misc Device"'),
    (OVMF_SHELL, "the firmware found nothing to boot (UEFI Interactive Shell)"),
    ("SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nNo bootable device.\r\n",
     "the firmware found nothing to boot (No bootable device)"),
    (PANIC, "the guest kernel panicked ([    2.52] ---[ end Kernel panic - not syncing: VFS"),
])
def test_boot_failure_names_what_the_console_shows(console: str, verdict: str) -> None:
    found = qemu.boot_failure(console)
    assert found is not None and found.startswith(verdict)


@pytest.mark.parametrize("console", [
    fakeqemu.GRUB_THEN_NOTHING,             # still booting: no verdict yet (the userspace bound covers a hang)
    fakeqemu.USERSPACE,
    # A CD-ROM SeaBIOS tries before the disk may fail without the image being at fault.
    "SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from DVD/CD...\r\nBoot failed: Could not read from CDROM "
    "(code 0003)\r\nBooting from Hard Disk...\r\nGRUB loading.\r\n",
    # Read while SeaBIOS was still writing the line (seen here): judged once the line is whole.
    "SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from Hard Disk...\r\nBoot failed: not a bootable dis",
    "",
])
def test_boot_failure_stays_silent_while_the_boot_may_still_succeed(console: str) -> None:
    assert qemu.boot_failure(console) is None
